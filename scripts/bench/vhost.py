#!/usr/bin/env python3
"""vhost-user read benchmark: virtio-fs (virtiofsd) and vhost-user-blk
(qemu-storage-daemon) against the VMM's in-process virtio-blk, chv and QEMU.

Each run boots the guest kit (1 vCPU, 128 MiB of shared memfd RAM, which
vhost-user needs) with three devices at once:
  - an in-process virtio-blk disk (chv `--disk path=…,direct=on`; QEMU
    `virtio-blk-pci` with cache=none,aio=threads),
  - a vhost-user-blk disk served by qemu-storage-daemon (`cache.direct=on`;
    chv `--disk vhost_user=on,socket=…`; QEMU `vhost-user-blk-pci`),
  - a virtio-fs share served by virtiofsd (`--allow-direct-io`, default
    cache policy; chv `--fs`; QEMU `vhost-user-fs-pci`),
three raw images of random bytes (the second one 1 MiB larger, so the guest
tells /dev/vda from /dev/vdb by size). In the guest, chvblk (chvblk.c) reads
each with O_DIRECT: READ_MIB sequential 1 MiB reads, then RAND_OPS 4 KiB
preads at random offsets, all in one process per device (a guest fork+exec
costs 1-2 s here, a syscall ~0.65 ms). Every read reaches the host file with
O_DIRECT, whichever the path. Both VMMs get fresh backends per run.

QEMU runs `-M microvm,acpi=on,pcie=on,memory-backend=ram0`: vhost-user-fs
and vhost-user-blk exist only as PCI devices in QEMU (no -device
vhost-user-*-device on the microvm's virtio-mmio bus for blk), so
microvm's PCIe host (pcie=on) carries all three, as chv's PCI bus does.

Runs alternate chv, QEMU, chv, QEMU, ... (--pairs N); the host column is
chvblk on the same files on the host (the ceiling). Prints medians, chv/QEMU
ratios and each path's ratio to the same VMM's in-process virtio-blk.

Usage: scripts/bench/vhost.py [--pairs N] [--quick] [--json FILE]
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
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import benchlib as B  # noqa: E402

MEM_MIB = 128
PATHS = ("virtio-blk", "vhost-user-blk", "virtio-fs")
METRICS = (("seqread_mib_s", "sequential read, 1 MiB O_DIRECT", "MiB/s", 2),
           ("randread_iops", "4 KiB random read, O_DIRECT", "IOPS", 0))
DEV = re.compile(r"^DEV (\S+) ?(\d*)", re.M)
FS_TAG = "bench"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3, help="chv/QEMU run pairs (default 3)")
    ap.add_argument("--quick", action="store_true", help="1 pair, small sizes (smoke run)")
    ap.add_argument("--read-mib", type=int, default=8, help="sequential read per device, MiB")
    ap.add_argument("--rand-ops", type=int, default=500, help="4 KiB random reads per device")
    ap.add_argument("--image-mib", type=int, default=32, help="size of each raw image")
    ap.add_argument("--json", default=os.path.join(B.REPO, "target/bench-vhost.json"))
    ap.add_argument("--chv", default=os.path.join(B.REPO, "target/release/chv"))
    ap.add_argument("--timeout", type=int, default=600, help="per VM run, seconds")
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.read_mib, args.rand_ops, args.image_mib = 1, 2, 100, 8
    args.image_mib = max(args.image_mib, args.read_mib, 1)
    return args


def log(msg):
    print(msg, flush=True)


def guest_cmd(args):
    """Both disks (told apart by size), then the file on the virtio-fs share."""
    run = f"{args.read_mib} 0 {args.rand_ops}"
    return (f"for d in vda vdb; do read s < /sys/block/$d/size; echo DEV $d $s; /chvblk /dev/$d {run}; done; "
            f"mkdir -p /tmp/fs; mount -t virtiofs {FS_TAG} /tmp/fs && echo DEV fs && /chvblk /tmp/fs/fs.raw {run}")


def parse_guest(output, sizes, where):
    """{path: {metric: value}} from the console: a DEV line opens each device's section."""
    marks = list(DEV.finditer(output))
    res = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(output)
        if m.group(1) == "fs":
            path = "virtio-fs"
        else:
            sectors = int(m.group(2) or 0)
            path = sizes.get(sectors * 512)
            if path is None:
                raise RuntimeError(f"{where}: /dev/{m.group(1)} has an unexpected size of {sectors} sectors")
        res[path] = B.parse_chvblk(output[m.end():end], f"{where} {path}")
    missing = [p for p in PATHS if len(res.get(p, {})) < 2]
    if missing:
        raise RuntimeError(f"{where}: no figures for {missing}:\n{B.tail(output)}")
    return res


def wait_socket(proc, path, what, timeout=15):
    t0 = time.monotonic()
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {path}")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{what} did not create {path} within {timeout} s")
        time.sleep(0.02)


def start_backends(work, tag, files):
    """Fresh qemu-storage-daemon and virtiofsd for one VM run; returns (procs, sockets)."""
    vub_sock, fs_sock = os.path.join(work, f"{tag}-vub.sock"), os.path.join(work, f"{tag}-fs.sock")
    for s in (vub_sock, fs_sock):
        if os.path.exists(s):
            os.unlink(s)
    qsd = subprocess.Popen(
        ["qemu-storage-daemon", "--blockdev",
         f"driver=file,node-name=disk,filename={files['vhost-user-blk']},cache.direct=on",
         "--export", f"type=vhost-user-blk,id=exp,node-name=disk,writable=off,"
                     f"addr.type=unix,addr.path={vub_sock}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    fsd = subprocess.Popen(
        ["virtiofsd", "--socket-path", fs_sock, "--shared-dir", os.path.dirname(files["virtio-fs"]),
         "--sandbox", "none", "--allow-direct-io", "--log-level", "error"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    procs = [qsd, fsd]
    try:
        wait_socket(qsd, vub_sock, "qemu-storage-daemon")
        wait_socket(fsd, fs_sock, "virtiofsd")
    except Exception:
        stop(procs)
        raise
    return procs, vub_sock, fs_sock


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def vm_argv(vmm, exe, kit, initrd, cmdline, files, vub_sock, fs_sock):
    kernel = os.path.join(kit, "vmlinux")
    if vmm == "chv":
        argv = B.chv_argv(exe, kernel, initrd, cmdline, MEM_MIB, disk=files["virtio-blk"], shared=True)
        # --disk takes several values: the in-process disk stays first (/dev/vda's PCI slot).
        argv.insert(argv.index("--disk") + 2, f"vhost_user=on,socket={vub_sock}")
        return argv + ["--fs", f"tag={FS_TAG},socket={fs_sock},num_queues=1,queue_size=1024"]
    argv = B.qemu_argv(exe, kernel, initrd, cmdline, MEM_MIB, disk=files["virtio-blk"], shared=True)
    return argv + ["-chardev", f"socket,id=vub,path={vub_sock}",
                   "-device", "vhost-user-blk-pci,chardev=vub,num-queues=1",
                   "-chardev", f"socket,id=fs,path={fs_sock}",
                   "-device", f"vhost-user-fs-pci,chardev=fs,tag={FS_TAG},queue-size=1024"]


def vm_run(vmm, exe, kit, initrd, work, files, sizes, args):
    procs, vub_sock, fs_sock = start_backends(work, vmm, files)
    try:
        cmdline = f'console=ttyS0 quiet panic=-1 guest_cmd="{guest_cmd(args)}"'
        argv = vm_argv(vmm, exe, kit, initrd, cmdline, files, vub_sock, fs_sock)
        r = B.run_serial(argv, args.timeout, markers=(b"GUEST-READY", b"GUEST-CMD-EXIT"))
        if "GUEST-CMD-EXIT" not in r["marks"]:
            raise RuntimeError(f"{vmm}: the guest command did not finish (exit {r['exit']}):\n"
                               f"{B.tail(r['output'])}")
        return parse_guest(r["output"], sizes, vmm)
    finally:
        stop(procs)


def host_run(chvblk, files, args):
    out = {}
    for path, f in files.items():
        text = subprocess.run([chvblk, f, str(args.read_mib), "0", str(max(args.rand_ops, 2000))],
                              capture_output=True, text=True, check=True).stdout
        out[path] = B.parse_chvblk(text, f"host {path}")
    return out


def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summarize(runs):
    """{column: {path: {metric: median}}}."""
    return {col: {p: {k: median(r.get(p, {}).get(k) for r in rs) for k, *_ in METRICS} for p in PATHS}
            for col, rs in runs.items() if rs}


def table(med):
    def cell(col, p, k, dec):
        v = med.get(col, {}).get(p, {}).get(k)
        return "" if v is None else f"{v:,.{dec}f}"

    def ratio(a, b):
        return f"{a / b:.2f}" if a is not None and b else ""

    lines = ["| path | metric | unit | chv | QEMU | chv/QEMU | chv: of virtio-blk | QEMU: of virtio-blk | host |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k, label, unit, dec in METRICS:
        for p in PATHS:
            c = med.get("chv", {}).get(p, {}).get(k)
            q = med.get("qemu", {}).get(p, {}).get(k)
            cb = med.get("chv", {}).get("virtio-blk", {}).get(k)
            qb = med.get("qemu", {}).get("virtio-blk", {}).get(k)
            lines.append(f"| {p} | {label} | {unit} | {cell('chv', p, k, dec)} | {cell('qemu', p, k, dec)} "
                         f"| {ratio(c, q)} | {ratio(c, cb)} | {ratio(q, qb)} | {cell('host', p, k, dec)} |")
    return "\n".join(lines)


def main():
    args = parse_args()
    t0 = time.monotonic()
    for tool in ("qemu-storage-daemon", "virtiofsd"):
        if not shutil.which(tool):
            log(f"missing backend: {tool} (.ci/run installs it)")
            return 1
    vmms, note = B.vmms_to_compare(args.chv)
    if note:
        log(note)
    kit = B.kit_dir()
    os.makedirs(os.path.join(B.REPO, "target"), exist_ok=True)
    work = tempfile.mkdtemp(prefix="chv-bench-vhost-", dir=os.path.join(B.REPO, "target"))
    runs = {"chv": [], "qemu": [], "host": []}
    failures = []
    try:
        chvblk = B.build_chvblk(os.path.join(work, "chvblk"))
        initrd = B.bench_initramfs(os.path.join(kit, "initramfs.cpio"), {"/chvblk": chvblk},
                                   os.path.join(work, "initramfs-bench.cpio"))
        os.makedirs(os.path.join(work, "share"))
        files = {"virtio-blk": os.path.join(work, "blk.raw"),
                 "vhost-user-blk": os.path.join(work, "vub.raw"),
                 "virtio-fs": os.path.join(work, "share", "fs.raw")}
        sizes = {}
        for i, (path, f) in enumerate(files.items()):
            mib = args.image_mib + (1 if path == "vhost-user-blk" else 0)
            subprocess.run(["dd", "if=/dev/urandom", f"of={f}", "bs=1M", f"count={mib}"],
                           check=True, capture_output=True)
            if path != "virtio-fs":
                sizes[mib * B.MIB] = path
        log(f"kit {kit}; {args.pairs} pair(s); {args.read_mib} MiB sequential and {args.rand_ops} "
            f"random 4 KiB reads per device on {args.image_mib} MiB images")
        for pair in range(args.pairs):
            cols = [("host", lambda: host_run(chvblk, files, args))]
            cols += [(n, lambda n=n, e=e: vm_run(n, e, kit, initrd, work, files, sizes, args))
                     for n, e in vmms.items()]
            for col, fn in cols:
                try:
                    r = fn()
                    runs[col].append(r)
                    shown = {p: {k: round(v, 1) for k, v in m.items()} for p, m in r.items()}
                    log(f"pair {pair + 1} {col:5} {shown}")
                except Exception as e:  # one failed run must not lose the others
                    failures.append(f"pair {pair + 1} {col}: {e}")
                    log(f"pair {pair + 1} {col:5} FAILED: {str(e)[:3000]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = summarize(runs)
    load = open("/proc/loadavg").read().split()[:3]
    log(f"\nmedians over {args.pairs} pair(s); 1 vCPU, {MEM_MIB} MiB shared RAM; "
        f"wall time {(time.monotonic() - t0) / 60:.1f} min; host load avg {' '.join(load)}")
    log(table(med))
    for f in failures:
        log(f"FAILED: {f.splitlines()[0]}")
    with open(args.json, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "config": vars(args),
                   "loadavg": load, "failures": failures, "runs": runs, "medians": med}, f, indent=2)
    log(f"written: {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
