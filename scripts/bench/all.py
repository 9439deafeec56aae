#!/usr/bin/env python3
"""All chv benchmarks against QEMU microvm, one command.

Runs every benchmark for chv and for QEMU microvm on the same guest kit,
alternating chv, QEMU, chv, QEMU, ... (--pairs N), then prints a table of
medians and chv/QEMU ratios and writes all runs and medians as JSON.

  boot       exec -> GUEST-READY on the serial console, exec -> VMM exit after
             the guest powers off, exec -> first control-socket answer
             (chv: vmm.ping; QEMU: the QMP qmp_capabilities reply)
  footprint  at GUEST-READY (1 vCPU, 128 MiB, same run as boot): RSS, PSS,
             guest RAM touched (Rss of the RAM mapping), VMM overhead
             (PSS - guest RAM touched), threads
  block      in the guest, chvblk (scripts/bench/chvblk.c) on a raw image with
             O_DIRECT: 1 MiB sequential read and write, 4 KiB random-read IOPS;
             host dd (and chvblk) on the same file as the ceiling
  net        guest<->host TCP over a tap in a network namespace, both ways
  api        vmm.ping p50/p99 over 1,000 requests, exec -> first vmm.ping (chv)
  snapshot   vm.snapshot time and restore exec -> running (chv, only when
             `chv --help` offers --restore)
  density    N clones of one snapshot started at once, and N cold boots,
             chv and QEMU (scripts/bench/density.py; --quick: N=10, chv)
  vhost      sequential and 4 KiB random reads on virtio-fs (virtiofsd) and
             vhost-user-blk (qemu-storage-daemon) against the in-process
             virtio-blk, chv and QEMU (scripts/bench/vhost.py; own table)
  memory     the guest touches and frees 64 MiB: host VmRSS/PSS before, at
             the peak and after, balloon free page reporting and virtio-mem,
             chv and QEMU (scripts/bench/memory.py; own table)

block and net share one boot per VMM and pair (disk + NIC attached).

Usage: scripts/bench/all.py [--pairs N] [--quick] [--only boot,api,...] [--json PATH]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import api_ping  # noqa: E402
import benchlib as B  # noqa: E402
from block import host_dd  # noqa: E402
from net import GUEST_IP, HOST_IP  # noqa: E402

BENCHES = ("boot", "footprint", "block", "net", "api", "snapshot", "density", "vhost", "memory")
BOOT_CMDLINE = "console=ttyS0 quiet panic=-1 -- echo hello"
MEM_MIB = 128
QTAP, CTAP = "qtap0", "btap0"

# (benchmark, label, key, unit, scale, decimals); values are stored in the
# key's own unit (s, ms, KiB, ...) and shown as value * scale.
ROWS = [
    ("boot", "exec -> GUEST-READY", "ready_s", "s", 1, 2),
    ("boot", "exec -> VMM exit after guest poweroff", "total_s", "s", 1, 2),
    ("boot", "exec -> first control answer (chv vmm.ping / QEMU QMP qmp_capabilities)",
     "first_ctl_ms", "ms", 1, 1),
    ("footprint", "RSS at GUEST-READY", "rss_kib", "MiB", 1 / 1024, 1),
    ("footprint", "PSS at GUEST-READY", "pss_kib", "MiB", 1 / 1024, 1),
    ("footprint", "guest RAM touched (Rss of the RAM mapping)", "guest_ram_rss_kib", "MiB", 1 / 1024, 1),
    ("footprint", "VMM overhead = PSS - guest RAM touched", "overhead_kib", "MiB", 1 / 1024, 1),
    ("footprint", "threads at GUEST-READY", "threads", "", 1, 0),
    ("block", "sequential read, 1 MiB O_DIRECT", "seqread_mib_s", "MiB/s", 1, 2),
    ("block", "sequential write, 1 MiB O_DIRECT", "seqwrite_mib_s", "MiB/s", 1, 2),
    ("block", "4 KiB random read, O_DIRECT", "randread_iops", "IOPS", 1, 0),
    ("net", "TCP host -> guest", "h2g_kib_s", "KiB/s", 1, 1),
    ("net", "TCP guest -> host", "g2h_kib_s", "KiB/s", 1, 1),
    ("io", "VMM CPU outside vCPU threads during the guest I/O command", "io_vmm_cpu_ms", "ms", 1, 0),
    ("io", "vCPU thread CPU during the guest I/O command", "io_vcpu_cpu_s", "s", 1, 1),
    ("api", "vmm.ping round trip p50 (1,000 requests)", "ping_p50_us", "us", 1, 0),
    ("api", "vmm.ping round trip p99 (1,000 requests)", "ping_p99_us", "us", 1, 0),
    ("api", "exec -> first vmm.ping, no VM", "bare_first_ping_ms", "ms", 1, 2),
    ("snapshot", "vm.snapshot of the paused VM", "snapshot_s", "s", 1, 3),
    ("snapshot", "restore: exec -> VM running", "restore_s", "s", 1, 3),
]
parse_chvblk = B.parse_chvblk


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.split("\n")[4:]))
    ap.add_argument("--pairs", type=int, default=5, help="chv/QEMU run pairs (default 5)")
    ap.add_argument("--quick", action="store_true",
                    help="1 pair and the smallest sizes (CI smoke run)")
    ap.add_argument("--only", default=",".join(BENCHES),
                    help=f"comma-separated subset of {','.join(BENCHES)}")
    ap.add_argument("--json", default="bench-results.json", help="output file")
    ap.add_argument("--chv", default=os.path.join(B.REPO, "target/release/chv"))
    ap.add_argument("--read-mib", type=int, default=8, help="guest sequential read size")
    ap.add_argument("--write-mib", type=int, default=4, help="guest sequential write size")
    ap.add_argument("--rand-ops", type=int, default=500, help="guest 4 KiB random reads")
    ap.add_argument("--image-mib", type=int, default=32, help="raw image size")
    ap.add_argument("--net-kib", type=int, default=128, help="TCP bytes each way, KiB")
    ap.add_argument("--timeout", type=int, default=900, help="per VM run, seconds")
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.read_mib, args.write_mib = 1, 2, 1
        args.rand_ops, args.image_mib, args.net_kib = 100, 8, 32
    args.only = [b.strip() for b in args.only.split(",") if b.strip()]
    bad = [b for b in args.only if b not in BENCHES]
    if bad:
        ap.error(f"unknown benchmark(s) {bad}; known: {', '.join(BENCHES)}")
    args.image_mib = max(args.image_mib, args.read_mib, args.write_mib, 1)
    return args


def log(msg):
    print(msg, flush=True)


def boot_run(vmm, exe, kit, work):
    """One plain boot (1 vCPU, 128 MiB, control socket): boot times and footprint."""
    sock = os.path.join(work, f"{vmm}-boot.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    kernel, initrd = os.path.join(kit, "vmlinux"), os.path.join(kit, "initramfs.cpio")
    if vmm == "chv":
        argv, probe = B.chv_argv(exe, kernel, initrd, BOOT_CMDLINE, MEM_MIB, api=sock), B.ping_ok
    else:
        argv, probe = B.qemu_argv(exe, kernel, initrd, BOOT_CMDLINE, MEM_MIB, qmp=sock), B.qmp_ok
    first = {}

    def start(t0, _proc):
        th = threading.Thread(target=lambda: first.update(s=B.wait_first(lambda: probe(sock), t0)),
                              daemon=True)
        th.start()
        first["thread"] = th

    def at_ready(marker, proc):
        return B.footprint(proc.pid, vmm, MEM_MIB) if marker == b"GUEST-READY" else {}

    r = B.run_serial(argv, 300, on_marker=at_ready, on_start=start)
    first["thread"].join(timeout=30)
    if "GUEST-READY" not in r["marks"]:
        raise RuntimeError(f"no GUEST-READY (exit {r['exit']}):\n{B.tail(r['output'])}")
    out = {k: v for k, v in r.items() if k not in ("marks", "output")}
    out["ready_s"] = r["marks"]["GUEST-READY"]
    out["first_ctl_ms"] = first["s"] * 1e3 if first.get("s") is not None else None
    return out


def io_cmd(args, want_block, want_net):
    """Guest command of the I/O run: network first (the host peer polls until the
    guest listens), then chvblk, so no ARP/TCP traffic lands during the disk test."""
    parts = []
    if want_net:
        n = args.net_kib * 1024
        parts += [f"ip addr add {GUEST_IP}/24 dev eth0", "ip link set eth0 up",
                  "echo NET-UP", "nc -l -p 5000 > /dev/null", f"head -c {n} /dev/zero | nc {HOST_IP} 5001"]
    if want_block:
        parts.append(f"/chvblk /dev/vda {args.read_mib} {args.write_mib} {args.rand_ops}")
    return "; ".join(parts)


def io_run(vmm, exe, kit, initrd, img, ns, args, want_block, want_net):
    """One boot with disk and/or NIC; returns block and net figures."""
    kernel = os.path.join(kit, "vmlinux")
    cmdline = f'console=ttyS0 quiet panic=-1 guest_cmd="{io_cmd(args, want_block, want_net)}"'
    disk = img if want_block else None
    if vmm == "chv":
        argv = B.chv_argv(exe, kernel, initrd, cmdline, MEM_MIB, disk=disk,
                          tap=(CTAP, HOST_IP) if want_net else None)
    else:
        argv = B.qemu_argv(exe, kernel, initrd, cmdline, MEM_MIB, disk=disk,
                           tap=(QTAP, HOST_IP) if want_net else None)
    peer = None
    if want_net:
        argv = ["ip", "netns", "exec", ns, *argv]
        if vmm == "qemu":
            subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", QTAP, "up"], check=True)
        peer = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable,
                                 os.path.join(HERE, "net.py"), "--peer", str(args.net_kib * 1024),
                                 "--wait-go"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        cpu = {}

        def at_marker(marker, proc):
            if marker == b"NET-UP":
                peer.stdin.write("go\n")
                peer.stdin.flush()
                return
            # GUEST-UPTIME comes right before the command, GUEST-CMD-EXIT right after.
            cpu[marker] = B.cpu_split(proc.pid)

        def peer_died():
            # The peer exits 0 after the TCP part, before the disk test ends.
            if peer and peer.poll() not in (None, 0):
                return f"{vmm}: the host TCP peer failed:\n{peer.stdout.read()[-2000:]}"
            return None

        r = B.run_serial(argv, args.timeout, on_marker=at_marker, abort_if=peer_died,
                         markers=(b"GUEST-READY", b"GUEST-UPTIME", b"NET-UP", b"GUEST-CMD-EXIT"))
        out = {}
        if b"GUEST-UPTIME" in cpu and b"GUEST-CMD-EXIT" in cpu:
            (v0, o0), (v1, o1) = cpu[b"GUEST-UPTIME"], cpu[b"GUEST-CMD-EXIT"]
            out["io_vcpu_cpu_s"], out["io_vmm_cpu_ms"] = v1 - v0, (o1 - o0) * 1e3
        if want_block:
            out.update(parse_chvblk(r["output"], vmm))
            if "randread_iops" not in out:
                raise RuntimeError(f"{vmm}: no chvblk figures:\n{B.tail(r['output'])}")
        if peer:
            text = peer.communicate(timeout=120)[0]
            rates = [ln.split()[1:] for ln in text.splitlines() if ln.startswith("RATES")]
            if not rates:
                raise RuntimeError(f"{vmm}: no TCP rates from the host peer:\n{text[-1000:]}\n"
                                   f"guest:\n{B.tail(r['output'])}")
            out["h2g_kib_s"], out["g2h_kib_s"] = (float(x) for x in rates[0])
        return out
    finally:
        if peer and peer.poll() is None:
            peer.kill()
            peer.wait()
        if want_net and vmm == "qemu":
            # Down removes qtap0's route, so chv's tap owns 10.0.2.0/24 alone.
            subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", QTAP, "down"])


def host_block(img, chvblk, args):
    """Ceiling: host dd (1 MiB O_DIRECT) and chvblk random reads on the same file."""
    rd, wr = host_dd(img, args.write_mib)
    out = subprocess.run([chvblk, img, "0", "0", str(max(args.rand_ops, 2000))],
                         capture_output=True, text=True, check=True).stdout
    return {"seqread_mib_s": rd, "seqwrite_mib_s": wr, **parse_chvblk(out, "host")}


def api_run(chv):
    """Bare chv (no VM): exec -> first vmm.ping, p50/p99 over 1,000 pings."""
    first, p50, p99 = api_ping.one_run(chv)
    return {"bare_first_ping_ms": first * 1e3 if first is not None else None,
            "ping_p50_us": p50 * 1e6, "ping_p99_us": p99 * 1e6}


def snapshot_supported(chv):
    """True when this chv build offers --restore (snapshot/restore is built)."""
    h = subprocess.run([chv, "--help"], capture_output=True, text=True)
    return "--restore" in h.stdout


def snapshot_run(chv, kit, work):
    """Boots chv, pauses at GUEST-UPTIME, times vm.snapshot; then times a
    `chv --restore` from exec until vm.info reports the VM running."""
    sock = os.path.join(work, "snap-src.sock")
    snap = tempfile.mkdtemp(prefix="snap-", dir=work)
    for p in (sock,):
        if os.path.exists(p):
            os.unlink(p)
    cmdline = "console=ttyS0 quiet panic=-1 -- sleep 3600"
    argv = B.chv_argv(chv, os.path.join(kit, "vmlinux"), os.path.join(kit, "initramfs.cpio"),
                      cmdline, MEM_MIB, api=sock)

    def at_uptime(marker, _proc):
        if marker != b"GUEST-UPTIME":
            return {}
        st, body = B.http_unix(sock, "PUT", "vm.pause")
        if st // 100 != 2:
            raise RuntimeError(f"vm.pause: HTTP {st} {body[:200]!r}")
        t = time.monotonic()
        st, body = B.http_unix(sock, "PUT", "vm.snapshot", {"destination_url": f"file://{snap}"},
                               timeout=300)
        if st // 100 != 2:
            raise RuntimeError(f"vm.snapshot: HTTP {st} {body[:200]!r}")
        return {"snapshot_s": time.monotonic() - t}

    r = B.run_serial(argv, 300, on_marker=at_uptime, markers=(b"GUEST-READY", b"GUEST-UPTIME"),
                     kill_after=b"GUEST-UPTIME")
    if "snapshot_s" not in r:
        raise RuntimeError(f"snapshot not taken:\n{B.tail(r['output'])}")
    files = [os.stat(os.path.join(d, f)) for d, _, fs in os.walk(snap) for f in fs]
    size = sum(st.st_size for st in files)
    alloc = sum(st.st_blocks * 512 for st in files)  # the memory file is sparse
    rsock = os.path.join(work, "snap-dst.sock")
    if os.path.exists(rsock):
        os.unlink(rsock)
    t0 = time.monotonic()
    p = subprocess.Popen([chv, "--api-socket", f"path={rsock}", "--restore", f"source_url=file://{snap}"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        resumed = False
        while time.monotonic() - t0 < 120:
            if p.poll() is not None:
                raise RuntimeError(f"restore: chv exited {p.returncode}: {p.stderr.read()[-500:]!r}")
            try:
                st, body = B.http_unix(rsock, "GET", "vm.info", timeout=5)
            except OSError:
                time.sleep(0.001)
                continue
            state = json.loads(body or b"{}").get("state") if st == 200 else None
            if state == "Running":
                return {"snapshot_s": r["snapshot_s"], "restore_s": time.monotonic() - t0,
                        "snapshot_mib": size / B.MIB, "snapshot_alloc_mib": alloc / B.MIB}
            if state == "Paused" and not resumed:
                B.http_unix(rsock, "PUT", "vm.resume")
                resumed = True
            time.sleep(0.001)
        raise RuntimeError("restore: VM not running after 120 s")
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(snap, ignore_errors=True)


def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summarize(runs):
    """{column: {key: median}} and {key: chv/qemu ratio}."""
    med = {col: {k: median(r.get(k) for r in rs)
                 for k in sorted({k for r in rs for k, v in r.items() if isinstance(v, (int, float))})
                 if k not in ("pair", "exit")}
           for col, rs in runs.items() if rs}
    ratios = {}
    if "chv" in med and "qemu" in med:
        for k, v in med["chv"].items():
            q = med["qemu"].get(k)
            if v is not None and q:
                ratios[k] = v / q
    return med, ratios


def table(med, ratios, only):
    """Markdown table of the medians (also fine as plain text)."""
    def fmt(v, scale, dec):
        return "" if v is None else f"{v * scale:,.{dec}f}"
    lines = ["| benchmark | metric | unit | chv | QEMU microvm | chv/QEMU | host |",
             "|---|---|---|---|---|---|---|"]
    for bench, label, key, unit, scale, dec in ROWS:
        if bench not in only:
            continue
        cells = [fmt(med.get(c, {}).get(key), scale, dec) for c in ("chv", "qemu")]
        if not any(cells):
            continue
        ratio = f"{ratios[key]:.2f}" if key in ratios else ""
        host = fmt(med.get("host", {}).get(key), scale, dec)
        lines.append(f"| {bench} | {label} | {unit} | {cells[0]} | {cells[1]} | {ratio} | {host} |")
    return "\n".join(lines)


def main():
    args = parse_args()
    t_start = time.monotonic()
    only = set(args.only)
    if "footprint" in only:
        only.add("boot")  # same run
    if "block" in only or "net" in only:
        only.add("io")  # the VMM CPU rows come from the block/net run
    notes = []
    vmms, note = B.vmms_to_compare(args.chv)
    qemu = vmms.get("qemu")
    notes += [note] if note else []
    snap_ok = "snapshot" in only and snapshot_supported(args.chv)
    if "snapshot" in only and not snap_ok:
        notes.append("snapshot: not supported by this chv build (no --restore in chv --help)")
    for n in notes:
        log(n)
    kit = B.kit_dir()
    os.makedirs(os.path.join(B.REPO, "target"), exist_ok=True)
    work = tempfile.mkdtemp(prefix="chv-bench-all-", dir=os.path.join(B.REPO, "target"))
    want_block, want_net = "block" in only, "net" in only
    runs = {"chv": [], "qemu": [], "host": []}
    failures = []
    ns = None
    try:
        initrd = chvblk = img = None
        if want_block:
            chvblk = B.build_chvblk(os.path.join(work, "chvblk"))
            initrd = B.bench_initramfs(os.path.join(kit, "initramfs.cpio"), {"/chvblk": chvblk},
                                       os.path.join(work, "initramfs-bench.cpio"))
            img = os.path.join(work, "disk.raw")
            subprocess.run(["dd", "if=/dev/urandom", f"of={img}", "bs=1M", f"count={args.image_mib}"],
                           check=True, capture_output=True)
        elif want_net:
            initrd = os.path.join(kit, "initramfs.cpio")
        if want_net:
            ns = f"chvbench-{os.getpid()}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            sh = lambda *c: subprocess.run(["ip", "netns", "exec", ns, *c], check=True)  # noqa: E731
            sh("ip", "link", "set", "lo", "up")
            if qemu:
                sh("ip", "tuntap", "add", QTAP, "mode", "tap")
                sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", QTAP)
        log(f"kit {kit}; {args.pairs} pair(s); benchmarks: {', '.join(b for b in BENCHES if b in only)}")

        def attempt(col, what, fn):
            try:
                r = fn()
                runs[col].append({"pair": pair + 1, "what": what, **r})
                shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()
                         if k not in ("exit",)}
                log(f"pair {pair + 1} {col:5} {what:9} {shown}")
            except Exception as e:  # keep going: one failed run must not lose the others
                failures.append(f"pair {pair + 1} {col} {what}: {e}")
                log(f"pair {pair + 1} {col:5} {what:9} FAILED: {str(e)[:3000]}")

        for pair in range(args.pairs):
            if "boot" in only:
                for name, exe in vmms.items():
                    attempt(name, "boot", lambda: boot_run(name, exe, kit, work))
            if want_block:
                attempt("host", "block", lambda: host_block(img, chvblk, args))
            if want_block or want_net:
                for name, exe in vmms.items():
                    attempt(name, "io", lambda: io_run(name, exe, kit, initrd, img, ns, args,
                                                       want_block, want_net))
            if "api" in only:
                attempt("chv", "api", lambda: api_run(args.chv))
            if snap_ok:
                attempt("chv", "snapshot", lambda: snapshot_run(args.chv, kit, work))
        # These print their own tables (not paired runs of one VM each).
        own = {"density": ["--quick"] if args.quick else [],
               "vhost": ["--quick"] if args.quick else ["--pairs", str(args.pairs)],
               "memory": ["--quick"] if args.quick else ["--pairs", str(args.pairs)]}
        for bench, extra in own.items():
            if bench not in only:
                continue
            rc = subprocess.run([sys.executable, os.path.join(HERE, f"{bench}.py"), "--chv",
                                 args.chv, "--json", f"{args.json}.{bench}.json", *extra]).returncode
            if rc:
                failures.append(f"{bench}: {bench}.py exited with {rc}")
    finally:
        if ns:
            subprocess.run(["ip", "netns", "del", ns])
        shutil.rmtree(work, ignore_errors=True)

    med, ratios = summarize(runs)
    wall = time.monotonic() - t_start
    load = open("/proc/loadavg").read().split()[:3]
    log(f"\nmedians over {args.pairs} pair(s); 1 vCPU, {MEM_MIB} MiB; wall time {wall / 60:.1f} min; "
        f"host load avg {' '.join(load)}")
    if want_block or want_net:
        log(f"sizes: read {args.read_mib} MiB, write {args.write_mib} MiB, {args.rand_ops} random "
            f"reads on a {args.image_mib} MiB image; TCP {args.net_kib} KiB each way")
    rows = table(med, ratios, only)
    if rows.count("\n") > 1:  # more than the header (vhost, density and memory print their own)
        log(rows)
    for n in notes:
        log(n)
    for f in failures:
        log(f"FAILED: {f.splitlines()[0]}")
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "config": vars(args),
              "wall_s": wall, "loadavg": load, "notes": notes, "failures": failures,
              "runs": runs, "medians": med, "ratios_chv_qemu": ratios}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    log(f"written: {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
