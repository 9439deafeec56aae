#!/usr/bin/env python3
"""Guest memory returned to the host: balloon free page reporting and virtio-mem, chv and QEMU.

The guest touches TOUCH_MIB (64) MiB and frees them again (chvmem.c, one
process stepped from the host over the serial console), and the host reads
the VMM process's VmRSS (/proc/PID/status) and Pss (smaps_rollup) before
the touch, at the peak (while the guest holds the memory), after the free
(polled until it stays within 1 MiB for QUIET_S seconds, at most SETTLE_S)
and, for virtio-mem, after the device was shrunk again. The drop is given
as a fraction of TOUCH_MIB.

  balloon     256 MiB guest with a balloon of size 0 and free page reporting
              (chv `--balloon size=0,free_page_reporting=on`; QEMU
              `-device virtio-balloon-device,free-page-reporting=on` on
              `-M microvm,acpi=on`, a virtio-mmio device). The guest reports
              freed 2 MiB blocks; the VMM discards them.
  virtio-mem  128 MiB guest with a 256 MiB virtio-mem region (chv `--memory
              size=128M,hotplug_method=virtio-mem,hotplug_size=256M`; QEMU
              `-M q35,acpi=on -m 128M,maxmem=384M` + memory-backend-ram +
              `virtio-mem-pci`: QEMU's microvm gives virtio-mem no address
              range, the guest driver fails with "could not reserve device
              region"). After boot the host plugs PLUG_MIB (128) MiB (chv
              `vm.resize desired_ram`, QEMU `qom-set requested-size`), the
              guest waits until its MemTotal grew, touches and frees, then the
              host unplugs everything again and waits until the device
              reports 0 plugged. Without a balloon, nothing returns memory
              on the free itself; the unplug does.

The touch (chvmem `ring`, default) is an AF_PACKET receive ring of 4 MiB
blocks: the guest kernel zeroes high-order pages, the cheapest way found to
make the guest write 64 MiB on this PVM host (`--mode anon`:
mmap(MAP_POPULATE) instead; about twice as slow). GFP_KERNEL allocations
come from ZONE_NORMAL first, which is the plugged virtio-mem memory (above
4 GiB) when there is one; the Rss of the region's own mapping is reported
to show where the touch landed.

Runs alternate chv, QEMU per case (--pairs N, default 1: one run takes
1.5-4 minutes here). Prints medians and writes all runs as JSON.

Usage: scripts/bench/memory.py [--pairs N] [--quick] [--cases balloon,virtio-mem]
         [--touch-mib 64] [--mode ring|anon] [--json PATH]
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import benchlib as B  # noqa: E402

CASES = ("balloon", "virtio-mem")
BALLOON_MEM_MIB = 256
VMEM_BOOT_MIB, VMEM_REGION_MIB, VMEM_PLUG_MIB = 128, 256, 128
TOL_KIB = 1024
STAGES = ("before", "peak", "free", "shrink")
# (case or None for both, label, key, unit, scale, decimals)
ROWS = [
    (None, "VmRSS before the touch", "rss_before_kib", "MiB", 1 / 1024, 1),
    (None, "VmRSS at the peak (guest holds the memory)", "rss_peak_kib", "MiB", 1 / 1024, 1),
    (None, "VmRSS after the free (settled)", "rss_free_kib", "MiB", 1 / 1024, 1),
    ("virtio-mem", "VmRSS after the unplug (settled)", "rss_shrink_kib", "MiB", 1 / 1024, 1),
    (None, "PSS before the touch", "pss_before_kib", "MiB", 1 / 1024, 1),
    (None, "PSS at the peak", "pss_peak_kib", "MiB", 1 / 1024, 1),
    (None, "PSS after the free", "pss_free_kib", "MiB", 1 / 1024, 1),
    ("virtio-mem", "PSS after the unplug", "pss_shrink_kib", "MiB", 1 / 1024, 1),
    (None, "touch raised VmRSS by (peak - before), of the touch size", "rise_frac", "", 1, 2),
    (None, "returned on the free (peak - after free), of the touch size", "drop_free_frac", "", 1, 2),
    ("virtio-mem", "returned after the unplug (peak - after unplug), of the touch size",
     "drop_shrink_frac", "", 1, 2),
    (None, "free -> VmRSS settled", "release_s", "s", 1, 1),
    ("virtio-mem", "unplug request -> device reports 0 plugged", "unplug_s", "s", 1, 1),
    ("virtio-mem", "plugged after the unplug", "plugged_after_kib", "MiB", 1 / 1024, 0),
    ("virtio-mem", "region mapping Rss at the peak", "region_peak_kib", "MiB", 1 / 1024, 1),
    ("balloon", "chv: free pages reported by the guest (vm.counters)", "reported_kib", "MiB",
     1 / 1024, 1),
    (None, "guest: touch took", "touch_s", "s", 1, 1),
]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.split("\n")[2:]))
    ap.add_argument("--pairs", type=int, default=1, help="chv/QEMU run pairs per case (default 1)")
    ap.add_argument("--quick", action="store_true", help="1 pair, 16 MiB, shorter settling (smoke run)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"subset of {','.join(CASES)}")
    ap.add_argument("--touch-mib", type=int, default=64, help="memory the guest touches (multiple of 4)")
    ap.add_argument("--mode", choices=("ring", "anon"), default="ring", help="how the guest touches")
    ap.add_argument("--settle-s", type=float, default=180, help="longest wait for VmRSS to settle")
    ap.add_argument("--quiet-s", type=float, default=10,
                    help="VmRSS within 1 MiB for this long counts as settled")
    ap.add_argument("--json", default=os.path.join(B.REPO, "target/bench-memory.json"))
    ap.add_argument("--chv", default=os.path.join(B.REPO, "target/release/chv"))
    ap.add_argument("--timeout", type=int, default=1200, help="per VM run, seconds")
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.touch_mib, args.settle_s, args.quiet_s = 1, 16, 60, 5
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in args.cases if c not in CASES]
    if bad:
        ap.error(f"unknown case(s) {bad}; known: {', '.join(CASES)}")
    if args.touch_mib <= 0 or args.touch_mib % 4:
        ap.error("--touch-mib must be a positive multiple of 4 (4 MiB ring blocks)")
    return args


def log(msg):
    print(msg, flush=True)


# --- bookkeeping (pure; test_bench.py) ---------------------------------------

def stable_since(samples, tol_kib=TOL_KIB):
    """Time of the first sample of the trailing run of (t, kib) samples that all
    lie within tol_kib of the last one (when the value reached its final level)."""
    if not samples:
        return None
    last = samples[-1][1]
    since = samples[-1][0]
    for t, v in reversed(samples):
        if abs(v - last) > tol_kib:
            break
        since = t
    return since


def is_settled(samples, quiet_s, tol_kib=TOL_KIB):
    """True when the samples stayed within tol_kib of the last for quiet_s seconds."""
    since = stable_since(samples, tol_kib)
    return since is not None and samples[-1][0] - since >= quiet_s


def figures(stages, touch_kib):
    """Flat figures of one run from its {stage: {"rss_kib", "pss_kib"}} readings:
    rss_/pss_<stage>_kib, and the rise and drops as fractions of touch_kib."""
    out = {}
    for stage, fp in stages.items():
        for k in ("rss_kib", "pss_kib"):
            if fp.get(k) is not None:
                out[f"{k[:3]}_{stage}_kib"] = fp[k]
    peak = out.get("rss_peak_kib")
    if peak is not None and touch_kib:
        if "rss_before_kib" in out:
            out["rise_frac"] = (peak - out["rss_before_kib"]) / touch_kib
        for stage in ("free", "shrink"):
            if f"rss_{stage}_kib" in out:
                out[f"drop_{stage}_frac"] = (peak - out[f"rss_{stage}_kib"]) / touch_kib
    return out


def parse_touched(text):
    """(bytes, seconds) from the guest's CHVMEM-TOUCHED line, or None."""
    for line in text.splitlines():
        if line.startswith("CHVMEM-TOUCHED "):
            parts = line.split()
            if len(parts) >= 3 and parts[1].isdigit() and parts[2].isdigit():
                return int(parts[1]), int(parts[2]) / 1e9
    return None


# --- the host side -----------------------------------------------------------

def reading(pid, region_bytes=None):
    """VmRSS and Pss of the VMM in KiB (and the Rss of the virtio-mem region's mapping)."""
    fp = {"rss_kib": B.status_value(pid, "VmRSS"), "pss_kib": B.smaps_rollup(pid)["pss_kib"]}
    if region_bytes:
        fp["region_kib"] = B.mapping_rss_kib(B.anon_mappings(pid), region_bytes)
    return fp


def settle(pid, settle_s, quiet_s, region_bytes=None, until=None):
    """Polls VmRSS every 0.5 s until it is settled and until() (if given) is true,
    for at most settle_s; returns (last reading, seconds until VmRSS reached its
    final level, or None if it did not settle)."""
    t0 = time.monotonic()
    samples = []
    while True:
        fp = reading(pid, region_bytes)
        now = time.monotonic() - t0
        samples.append((now, fp["rss_kib"]))
        done = until is None or until()
        if done and is_settled(samples, quiet_s):
            return fp, stable_since(samples)
        if now >= settle_s:
            return fp, None
        time.sleep(0.5)


class Control:
    """The VMM's control socket: virtio-mem size and chv's device counters."""

    def __init__(self, vmm, sock):
        self.vmm, self.sock = vmm, sock

    def counters(self):
        st, body = B.http_unix(self.sock, "GET", "vm.counters")
        if st != 200:
            raise RuntimeError(f"vm.counters: HTTP {st} {body[:200]!r}")
        return json.loads(body)

    def request_plugged(self, plug_bytes):
        if self.vmm == "chv":
            st, body = B.http_unix(self.sock, "PUT", "vm.resize",
                                   {"desired_ram": VMEM_BOOT_MIB * B.MIB + plug_bytes})
            if st // 100 != 2:
                raise RuntimeError(f"vm.resize: HTTP {st} {body[:200]!r}")
            return
        r = B.qmp(self.sock, {"execute": "qom-set", "arguments": {
            "path": "/machine/peripheral/vm0", "property": "requested-size", "value": plug_bytes}})
        if "return" not in r[0]:
            raise RuntimeError(f"qom-set requested-size: {r[0]}")

    def plugged(self):
        if self.vmm == "chv":
            return self.counters()["virtio-mem"]["plugged_size"]
        r = B.qmp(self.sock, {"execute": "qom-get",
                              "arguments": {"path": "/machine/peripheral/vm0", "property": "size"}})
        return r[0]["return"]


def vm_argv(vmm, exe, kit, initrd, case, cmdline, sock):
    kernel = os.path.join(kit, "vmlinux")
    if case == "balloon":
        if vmm == "chv":
            return B.chv_argv(exe, kernel, initrd, cmdline, BALLOON_MEM_MIB, api=sock) + [
                "--balloon", "size=0,free_page_reporting=on"]
        return B.qemu_argv(exe, kernel, initrd, cmdline, BALLOON_MEM_MIB, qmp=sock) + [
            "-device", "virtio-balloon-device,free-page-reporting=on"]
    if vmm == "chv":
        return B.chv_argv(exe, kernel, initrd, cmdline, VMEM_BOOT_MIB, api=sock,
                          memory_opts=f"hotplug_method=virtio-mem,hotplug_size={VMEM_REGION_MIB}M")
    return B.qemu_argv(exe, kernel, initrd, cmdline, VMEM_BOOT_MIB, qmp=sock, machine="q35,acpi=on",
                       maxmem_mib=VMEM_BOOT_MIB + VMEM_REGION_MIB) + [
        "-object", f"memory-backend-ram,id=vmem0,size={VMEM_REGION_MIB}M",
        "-device", "virtio-mem-pci,id=vm0,memdev=vmem0,requested-size=0"]


def vm_run(vmm, exe, kit, initrd, work, case, args):
    """One boot: the guest touches and frees; returns the run's figures."""
    sock = os.path.join(work, f"{vmm}-{case}.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    vmem = case == "virtio-mem"
    guest = f"/chvmem {args.touch_mib} {args.mode}" + (f" {VMEM_PLUG_MIB}" if vmem else "")
    cmdline = f'console=ttyS0 quiet panic=-1 guest_cmd="{guest}"'
    ctl = Control(vmm, sock)
    region = VMEM_REGION_MIB * B.MIB if vmem else None
    stages, extra = {}, {}

    def reported_kib():
        return ctl.counters()["balloon"]["reported_bytes"] // 1024 if vmm == "chv" else None

    def go(proc):
        proc.stdin.write(b"go\n")
        proc.stdin.flush()

    def at_marker(marker, proc):
        pid = proc.pid
        if marker == b"GUEST-READY":
            return
        if marker == b"CHVMEM-READY":
            if vmem:
                stages["boot"] = reading(pid, region)
                ctl.request_plugged(VMEM_PLUG_MIB * B.MIB)
            else:
                # Boot frees memory too (initramfs, init sections): let its reports settle.
                stages["before"], _ = settle(pid, args.settle_s, args.quiet_s)
                extra["reported_before"] = reported_kib()
        elif marker == b"CHVMEM-PLUGGED":
            stages["before"], _ = settle(pid, args.settle_s, args.quiet_s, region)
        elif marker == b"CHVMEM-TOUCHED":
            stages["peak"] = reading(pid, region)
        elif marker == b"CHVMEM-FREED":
            stages["free"], extra["release_s"] = settle(pid, args.settle_s, args.quiet_s, region)
            if vmm == "chv" and not vmem:
                extra["reported_kib"] = reported_kib() - extra["reported_before"]
            if vmem:
                t = time.monotonic()
                ctl.request_plugged(0)
                stages["shrink"], _ = settle(pid, args.settle_s, args.quiet_s, region,
                                             until=lambda: ctl.plugged() == 0)
                extra["plugged_after_kib"] = ctl.plugged() // 1024
                if extra["plugged_after_kib"] == 0:
                    extra["unplug_s"] = time.monotonic() - t
            return
        go(proc)

    r = B.run_serial(vm_argv(vmm, exe, kit, initrd, case, cmdline, sock), args.timeout,
                     on_marker=at_marker, feed_stdin=True, kill_after=b"CHVMEM-FREED",
                     markers=(b"GUEST-READY", b"CHVMEM-READY", b"CHVMEM-PLUGGED",
                              b"CHVMEM-TOUCHED", b"CHVMEM-FREED"))
    if "CHVMEM-ERROR" in r["output"]:
        raise RuntimeError(f"{vmm}: {r['output'][r['output'].index('CHVMEM-ERROR'):][:200]}")
    if "free" not in stages:
        raise RuntimeError(f"{vmm} {case}: the guest did not finish (exit {r['exit']}):\n"
                           f"{B.tail(r['output'])}")
    out = figures({s: stages[s] for s in STAGES if s in stages}, args.touch_mib * 1024)
    touched = parse_touched(r["output"])
    if touched:
        out["touch_s"] = touched[1]
    if vmem:
        out["region_peak_kib"] = stages["peak"].get("region_kib")
        out["rss_boot_kib"] = stages["boot"]["rss_kib"]
    for k in ("release_s", "reported_kib", "plugged_after_kib", "unplug_s"):
        if extra.get(k) is not None:
            out[k] = extra[k]
    return out


def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summarize(runs):
    """{case: {vmm: {key: median}}}."""
    return {case: {vmm: {k: median(r.get(k) for r in rs) for k in sorted({k for r in rs for k in r})}
                   for vmm, rs in by_vmm.items() if rs}
            for case, by_vmm in runs.items()}


def table(med):
    def cell(case, vmm, key, scale, dec):
        v = med.get(case, {}).get(vmm, {}).get(key)
        return "" if v is None else f"{v * scale:,.{dec}f}"

    lines = ["| case | metric | unit | chv | QEMU |", "|---|---|---|---|---|"]
    for case in med:
        for only, label, key, unit, scale, dec in ROWS:
            if only not in (None, case):
                continue
            cells = [cell(case, vmm, key, scale, dec) for vmm in ("chv", "qemu")]
            if any(cells):
                lines.append(f"| {case} | {label} | {unit} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main():
    args = parse_args()
    t0 = time.monotonic()
    vmms, note = B.vmms_to_compare(args.chv)
    if note:
        log(note)
    kit = B.kit_dir()
    os.makedirs(os.path.join(B.REPO, "target"), exist_ok=True)
    work = tempfile.mkdtemp(prefix="chv-bench-memory-", dir=os.path.join(B.REPO, "target"))
    runs = {case: {vmm: [] for vmm in vmms} for case in args.cases}
    failures = []
    load0 = open("/proc/loadavg").read().split()[:3]
    try:
        tool = B.build_tool("chvmem.c", os.path.join(work, "chvmem"))
        initrd = B.bench_initramfs(os.path.join(kit, "initramfs.cpio"), {"/chvmem": tool},
                                   os.path.join(work, "initramfs-memory.cpio"))
        log(f"kit {kit}; {args.pairs} pair(s); the guest touches {args.touch_mib} MiB ({args.mode}); "
            f"cases: {', '.join(args.cases)}; host load avg {' '.join(load0)}")
        for pair in range(args.pairs):
            for case in args.cases:
                for vmm, exe in vmms.items():
                    try:
                        r = vm_run(vmm, exe, kit, initrd, work, case, args)
                        runs[case][vmm].append(r)
                        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
                        log(f"pair {pair + 1} {case:10} {vmm:4} {shown}")
                    except Exception as e:  # one failed run must not lose the others
                        failures.append(f"pair {pair + 1} {case} {vmm}: {e}")
                        log(f"pair {pair + 1} {case:10} {vmm:4} FAILED: {str(e)[:3000]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = summarize(runs)
    load = open("/proc/loadavg").read().split()[:3]
    log(f"\nmedians over {args.pairs} pair(s); touch {args.touch_mib} MiB ({args.mode}); "
        f"wall time {(time.monotonic() - t0) / 60:.1f} min; host load avg at start "
        f"{' '.join(load0)}, at end {' '.join(load)}")
    log(table(med))
    for f in failures:
        log(f"FAILED: {f.splitlines()[0]}")
    with open(args.json, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "config": vars(args),
                   "loadavg_start": load0, "loadavg_end": load, "failures": failures,
                   "runs": runs, "medians": med}, f, indent=2)
    log(f"written: {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
