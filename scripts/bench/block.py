#!/usr/bin/env python3
"""Block benchmark: guest sequential read/write throughput on a raw image.

Boots the guest kit with the image as /dev/vda under chv and under QEMU
microvm (virtio-blk-pci on its PCIe host), runs busybox `dd` with O_DIRECT
(bs=1M) in the guest, and compares with the host's own `dd` on the same file.
Runs are alternated chv, QEMU, chv, QEMU, ...; medians are printed and
written as JSON.

Usage: scripts/bench/block.py [--pairs N] [--size-mib N] [--json FILE]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from boot import REPO, kit_dir  # noqa: E402

RATE = re.compile(r"copied, ([0-9.]+) ?s(?:econds)?, ([0-9.]+) ?([KMG])B/s")
# Busybox dd prints no rate: the guest brackets each dd with /proc/uptime.
GUEST = re.compile(r"BENCH-(READ|WRITE) ([0-9.]+) ([0-9.]+)")


def mib_per_s(dd_output, which, size_mib=None):
    rates = []
    for m in RATE.finditer(dd_output):
        value, unit = float(m.group(2)), m.group(3)
        rates.append(value * {"K": 1 / 1024, "M": 1, "G": 1024}[unit] * 1e6 / 2**20)
    if len(rates) < 2 and size_mib:
        rates = [size_mib / max(float(m.group(3)) - float(m.group(2)), 1e-3)
                 for m in GUEST.finditer(dd_output)]
    if len(rates) < 2:
        raise RuntimeError(f"{which}: no dd rates in output:\n{dd_output[-3000:]}")
    return rates[0], rates[1]


def host_dd(img, size_mib):
    r = subprocess.run(["dd", f"if={img}", "of=/dev/null", "bs=1M", "iflag=direct"],
                       capture_output=True, text=True)
    w = subprocess.run(["dd", "if=/dev/zero", f"of={img}", "bs=1M", f"count={size_mib}",
                        "oflag=direct", "conv=notrunc"], capture_output=True, text=True)
    return mib_per_s(r.stderr + w.stderr, "host")


def guest_cmd(size_mib):
    return ("read a x < /proc/uptime; dd if=/dev/vda of=/dev/null bs=1M iflag=direct; "
            "read b x < /proc/uptime; echo BENCH-READ $a $b; "
            f"read a x < /proc/uptime; dd if=/dev/zero of=/dev/vda bs=1M count={size_mib} oflag=direct; "
            "read b x < /proc/uptime; echo BENCH-WRITE $a $b")


def run_vmm(argv, size_mib):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    return mib_per_s(p.stdout + p.stderr, argv[0], size_mib)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--json", default=os.path.join(REPO, "target/bench-block.json"))
    ap.add_argument("--chv", default=os.path.join(REPO, "target/release/chv"))
    args = ap.parse_args()
    kit = kit_dir()
    kernel, initrd = os.path.join(kit, "vmlinux"), os.path.join(kit, "initramfs.cpio")
    if not os.path.exists(args.chv):
        subprocess.run(["cargo", "build", "--release", "-p", "vmm", "--bin", "chv"], cwd=REPO, check=True)
    work = tempfile.mkdtemp(prefix="chv-bench-block-", dir=os.path.join(REPO, "target"))
    img = os.path.join(work, "disk.raw")
    subprocess.run(["dd", "if=/dev/urandom", f"of={img}", "bs=1M", f"count={args.size_mib}"],
                   check=True, capture_output=True)
    cmdline = f'console=ttyS0 quiet panic=-1 guest_cmd="{guest_cmd(args.size_mib)}"'
    vmms = {"chv": [args.chv, "--kernel", kernel, "--initramfs", initrd, "--cmdline", cmdline,
                    "--cpus", "boot=1", "--memory", "size=256M", "--serial", "tty",
                    "--disk", f"path={img}"]}
    qemu = shutil.which("qemu-system-x86_64")
    if qemu:
        vmms["qemu"] = [qemu, "-M", "microvm,acpi=on,pcie=on", "-enable-kvm",
                        "-cpu", "host,-arch-capabilities,-cx16,-xsave", "-smp", "1", "-m", "256M",
                        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
                        "-serial", "stdio", "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
                        "-drive", f"file={img},format=raw,if=none,id=d0,cache=none,aio=threads",
                        "-device", "virtio-blk-pci,drive=d0"]
    else:
        print("peer missing: qemu-system-x86_64 (apt-get install qemu-system-x86); chv and host only")
    results = {name: [] for name in ["host", *vmms]}
    for i in range(args.pairs):
        results["host"].append(host_dd(img, args.size_mib))
        for name, argv in vmms.items():
            r = run_vmm(argv, args.size_mib)
            results[name].append(r)
            print(f"pair {i + 1} {name:5} read {r[0]:8.1f} MiB/s  write {r[1]:8.1f} MiB/s", flush=True)
        print(f"pair {i + 1} host  read {results['host'][-1][0]:8.1f} MiB/s  write {results['host'][-1][1]:8.1f} MiB/s")
    med = {n: {"read_mib_s": statistics.median(r[0] for r in rs),
               "write_mib_s": statistics.median(r[1] for r in rs)} for n, rs in results.items()}
    print(f"\nmedians over {args.pairs} runs, {args.size_mib} MiB raw image, bs=1M O_DIRECT")
    for n, m in med.items():
        extra = ""
        if n != "host":
            extra = (f"  ({m['read_mib_s'] / med['host']['read_mib_s']:.2f} / "
                     f"{m['write_mib_s'] / med['host']['write_mib_s']:.2f} of host)")
        print(f"{n:6} read {m['read_mib_s']:8.1f}  write {m['write_mib_s']:8.1f} MiB/s{extra}")
    if "qemu" in med:
        print(f"chv/qemu read {med['chv']['read_mib_s'] / med['qemu']['read_mib_s']:.2f}  "
              f"write {med['chv']['write_mib_s'] / med['qemu']['write_mib_s']:.2f}")
    with open(args.json, "w") as f:
        json.dump({"config": vars(args), "runs": results, "medians": med}, f, indent=2)
    shutil.rmtree(work, ignore_errors=True)
    print(f"written: {args.json}")


if __name__ == "__main__":
    sys.exit(main())
