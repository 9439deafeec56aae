#!/usr/bin/env python3
"""Boot benchmark: chv against QEMU microvm on the same guest kit.

Alternates runs (chv, QEMU, chv, QEMU, ...), measures for each run the host
wall time from VMM exec to the guest's GUEST-READY line and to VMM exit, and
the VMM's resident memory at GUEST-READY (VmRSS) and its peak (VmHWM).
Prints a table of medians and the chv/QEMU ratio, and writes it as JSON.

Usage: scripts/bench/boot.py [--pairs N] [--cpus N] [--memory MiB] [--json FILE]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CMDLINE = "console=ttyS0 quiet panic=-1 -- echo hello"


def kit_dir():
    out = subprocess.run([os.path.join(REPO, "scripts/find-guest-kit.sh")],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def proc_status(pid):
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "Threads"):
                    fields[k] = int(v.split()[0])
    except OSError:
        pass
    return fields


def run_once(argv, timeout=300):
    start = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    ready = None
    status = {}
    buf = b""
    os.set_blocking(p.stdout.fileno(), False)
    while True:
        if time.monotonic() - start > timeout:
            p.kill()
            raise RuntimeError(f"timeout: {' '.join(argv)}")
        try:
            chunk = p.stdout.read()
        except BlockingIOError:
            chunk = None
        if chunk:
            buf += chunk
            if ready is None and b"GUEST-READY" in buf:
                ready = time.monotonic() - start
                status = proc_status(p.pid)
        if p.poll() is not None:
            rest = p.stdout.read() or b""
            buf += rest
            break
        time.sleep(0.005)
    total = time.monotonic() - start
    if ready is None:
        raise RuntimeError(f"no GUEST-READY (exit {p.returncode}):\n{buf.decode(errors='replace')[-2000:]}")
    return {"ready_s": ready, "total_s": total, "rss_kib": status.get("VmRSS"),
            "hwm_kib": status.get("VmHWM"), "threads": status.get("Threads"),
            "exit": p.returncode}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--memory", type=int, default=128, help="MiB")
    ap.add_argument("--json", default=os.path.join(REPO, "target/bench-boot.json"))
    ap.add_argument("--chv", default=os.path.join(REPO, "target/release/chv"))
    args = ap.parse_args()

    kit = kit_dir()
    kernel, initrd = os.path.join(kit, "vmlinux"), os.path.join(kit, "initramfs.cpio")
    if not os.path.exists(args.chv):
        subprocess.run(["cargo", "build", "--release", "-p", "vmm", "--bin", "chv"], cwd=REPO, check=True)
    vmms = {
        "chv": [args.chv, "--kernel", kernel, "--initramfs", initrd, "--cmdline", CMDLINE,
                "--cpus", f"boot={args.cpus}", "--memory", f"size={args.memory}M",
                "--serial", "tty", "--console", "off"],
    }
    qemu = shutil.which("qemu-system-x86_64")
    if qemu:
        vmms["qemu"] = [qemu, "-M", "microvm,acpi=on", "-enable-kvm",
                        "-cpu", "host,-arch-capabilities,-cx16,-xsave",
                        "-smp", str(args.cpus), "-m", f"{args.memory}M", "-nodefaults",
                        "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
                        "-kernel", kernel, "-initrd", initrd, "-append", CMDLINE]
    else:
        print("peer missing: qemu-system-x86_64 not installed (apt-get install qemu-system-x86); chv only")

    runs = {name: [] for name in vmms}
    for i in range(args.pairs):
        for name, argv in vmms.items():
            r = run_once(argv)
            runs[name].append(r)
            print(f"pair {i + 1} {name:5} ready {r['ready_s']:6.2f} s  total {r['total_s']:6.2f} s  "
                  f"rss {r['rss_kib']} KiB  hwm {r['hwm_kib']} KiB  threads {r['threads']}  exit {r['exit']}",
                  flush=True)

    summary = {}
    for name, rs in runs.items():
        summary[name] = {k: statistics.median([r[k] for r in rs if r[k] is not None])
                         for k in ("ready_s", "total_s", "rss_kib", "hwm_kib", "threads")}
    print(f"\nmedians over {args.pairs} runs, {args.cpus} vCPU, {args.memory} MiB, kit {kit}")
    print(f"{'metric':10} " + " ".join(f"{n:>10}" for n in summary) + ("   chv/qemu" if "qemu" in summary else ""))
    for k in ("ready_s", "total_s", "rss_kib", "hwm_kib", "threads"):
        row = f"{k:10} " + " ".join(f"{summary[n][k]:>10.2f}" for n in summary)
        if "qemu" in summary and summary["qemu"][k]:
            row += f"   {summary['chv'][k] / summary['qemu'][k]:.2f}"
        print(row)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"config": vars(args), "runs": runs, "medians": summary}, f, indent=2)
    print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    sys.exit(main())
