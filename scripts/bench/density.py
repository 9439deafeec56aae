#!/usr/bin/env python3
"""Serverless startup and density: many clones of one snapshot, chv and QEMU.

1. Boots the guest kit once as a template (1 vCPU, 128 MiB). Its /init
   command initializes the guest RNG (a read of /dev/random), turns the
   console echo off, prints DENSITY-READY and then answers every line read
   from the serial console with DENSITY-ANSWER-<line>, using shell
   builtins only. The template is paused and snapshotted (QEMU: `stop`,
   `migrate "exec:cat > FILE"`).
2. For each N of --clones, starts N clones at once, each with its own
   serial socket (chv: `--restore ...,serial="socket=PATH"`; QEMU:
   `-serial unix:PATH,server=on,wait=off -incoming "exec:cat FILE"`), sends
   each a line and waits for each guest's answer. Reports the time from
   the first exec to each answer (p50, p99, all), clones per core-second
   (N / (time until all answered x online CPUs)), PSS per clone and in
   total once all idle, host MemAvailable before and after, and the CPU
   time per clone (all threads; the vCPU threads' part separately).
   N = 1 runs --single-runs times in a row (default 5) and its row pools
   the answers, as one sample is too noisy for a p50.
3. The same N (up to --cold-max) as cold boots, answer = DENSITY-READY.

Usage: scripts/bench/density.py [--clones 1,10,50,100] [--no-qemu] [--cold-max 10]
         [--quick] [--json PATH] [--plot PNG]
--quick (CI guard rail): chv clones only, N=10, no cold boots, no QEMU; exits
non-zero unless every clone's guest answered and no VMM died or panicked.
It makes no timing asserts.
"""
import argparse
import json
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import benchlib as B  # noqa: E402

MEM_MIB = 128
GUEST_CMD = ("head -c 1 /dev/random >/dev/null; stty -echo; echo DENSITY-READY; "
             "while read -r l; do echo DENSITY-ANSWER-$l; done")
CMDLINE = f'console=ttyS0 quiet panic=-1 guest_cmd="{GUEST_CMD}"'
READY, ANSWER = b"DENSITY-READY", b"DENSITY-ANSWER-1"


def log(msg):
    print(msg, flush=True)


def mem_available_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return None


def percentile(values, p):
    v = sorted(values)
    if not v:
        return None
    k = (len(v) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def wait_file(path, pattern, timeout, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with open(path, "rb") as f:
                if pattern in f.read():
                    return True
        except FileNotFoundError:
            pass
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


# --- templates --------------------------------------------------------------

def chv_template(chv, kit, work):
    """Boots the chv template, snapshots it; returns (snapshot dir, boot s)."""
    log_path, api = os.path.join(work, "chv-template.log"), os.path.join(work, "chv-template.api")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [chv, "--kernel", os.path.join(kit, "vmlinux"), "--initramfs",
         os.path.join(kit, "initramfs.cpio"), "--cmdline", CMDLINE, "--cpus", "boot=1",
         "--memory", f"size={MEM_MIB}M", "--serial", f"file={log_path}", "--console", "off",
         "--api-socket", api],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if not wait_file(log_path, READY, 600, proc):
            raise RuntimeError(f"chv template did not boot: {proc.stderr.read().decode()[-2000:] if proc.poll() is not None else 'timeout'}")
        boot_s = time.monotonic() - t0
        time.sleep(0.5)  # let the shell reach its read()
        st, body = B.http_unix(api, "PUT", "vm.pause")
        if st != 204:
            raise RuntimeError(f"vm.pause: {st} {body}")
        snap = os.path.join(work, "chv-snapshot")
        st, body = B.http_unix(api, "PUT", "vm.snapshot",
                               {"destination_url": f"file://{snap}"})
        if st != 204:
            raise RuntimeError(f"vm.snapshot: {st} {body}")
        return snap, boot_s
    finally:
        proc.kill()
        proc.wait()


def qemu_base_argv(qemu, kit, serial):
    return [qemu, "-M", "microvm,acpi=on", "-name", "qemu,debug-threads=on", "-enable-kvm",
            "-cpu", B.QEMU_CPU, "-smp", "1", "-m", f"{MEM_MIB}M", "-nodefaults", "-no-user-config",
            "-nographic", "-no-reboot", "-serial", serial, "-kernel", os.path.join(kit, "vmlinux"),
            "-initrd", os.path.join(kit, "initramfs.cpio"), "-append", CMDLINE]


def qemu_template(qemu, kit, work):
    """Boots the QEMU template and saves it; returns (state file, boot s)."""
    log_path, q = os.path.join(work, "qemu-template.log"), os.path.join(work, "qemu-template.qmp")
    t0 = time.monotonic()
    proc = subprocess.Popen(qemu_base_argv(qemu, kit, f"file:{log_path}")
                            + ["-qmp", f"unix:{q},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        if not wait_file(log_path, READY, 600, proc):
            raise RuntimeError("QEMU template did not boot")
        boot_s = time.monotonic() - t0
        time.sleep(0.5)
        state = os.path.join(work, "qemu-state")
        B.qmp(q, {"execute": "stop"},
            {"execute": "migrate", "arguments": {"uri": f"exec:cat > {state}"}})
        for _ in range(1200):
            r = B.qmp(q, {"execute": "query-migrate"})[0]["return"]
            if r.get("status") == "completed":
                break
            if r.get("status") == "failed":
                raise RuntimeError(f"QEMU migrate failed: {r}")
            time.sleep(0.05)
        else:
            raise RuntimeError("QEMU migrate did not complete")
        return state, boot_s
    finally:
        proc.kill()
        proc.wait()


# --- one wave of N VMs ------------------------------------------------------

class Guest:
    def __init__(self, idx, argv, serial, err_path, marker, send, qmp_sock=None):
        self.idx, self.argv, self.serial, self.err_path = idx, argv, serial, err_path
        self.marker, self.send = marker, send
        # QEMU: the line is sent once QMP says the VM runs (QEMU loses what
        # reaches the UART while its incoming migration is still loading).
        self.qmp, self.polled = qmp_sock, 0.0
        self.proc = self.conn = None
        self.buf = b""
        self.t_exec = self.t_answer = None


def start(g):
    g.err = open(g.err_path, "wb")
    g.t_exec = time.monotonic()
    g.proc = subprocess.Popen(g.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=g.err)


def qemu_running(path):
    """True once the clone runs. The template was saved stopped, so a
    loaded clone stays paused ("inmigrate" while loading) until `cont`,
    as chv's resume=true resumes it."""
    try:
        status = B.qmp(path, {"execute": "query-status"})[0].get("return", {}).get("status")
        if status == "paused":
            B.qmp(path, {"execute": "cont"})
            return True
    except (OSError, ValueError):
        return False
    return status == "running"


def ready_to_send(g, now):
    if g.qmp is None:
        return True
    if now - g.polled < 0.01:
        return False
    g.polled = now
    return qemu_running(g.qmp)


def wave(guests, timeout):
    """Starts every guest at once and waits until each answered; returns
    (first exec, failures)."""
    sel = selectors.DefaultSelector()
    for g in guests:
        start(g)
    t_first = min(g.t_exec for g in guests)
    failures = []
    end = time.monotonic() + timeout
    pending = set(range(len(guests)))
    while pending and time.monotonic() < end:
        now = time.monotonic()
        for i in list(pending):
            g = guests[i]
            if g.proc.poll() is not None:
                failures.append(f"vm {i}: exited with {g.proc.returncode} before answering")
                pending.discard(i)
                continue
            if g.conn is None and os.path.exists(g.serial):
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.connect(g.serial)
                except OSError:
                    s.close()
                    continue
                s.setblocking(False)
                g.conn = s
                sel.register(s, selectors.EVENT_READ, g)
            # Sent once: a clone that loses its first line fails the wave
            # (the guard rail exists to catch that).
            if g.conn is not None and g.send and ready_to_send(g, now):
                g.conn.sendall(b"1\n")
                g.send = False
        for key, _ in sel.select(timeout=0.002):
            g = key.data
            try:
                data = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                continue
            g.buf = (g.buf + data)[-4096:]
            if g.t_answer is None and g.marker in g.buf:
                g.t_answer = time.monotonic()
                pending.discard(g.idx)
    for i in pending:
        failures.append(f"vm {i}: no answer within {timeout} s")
    sel.close()
    return t_first, failures


def measure(guests, t_first, vmm, n_cpus):
    answered = [g for g in guests if g.t_answer is not None]
    times = [(g.t_answer - t_first) * 1000 for g in answered]
    t_all = max(times) / 1000 if times else None
    time.sleep(1.0)  # let the clones settle to idle
    pss, cpu, vcpu = [], [], []
    for g in guests:
        if g.proc.poll() is not None:
            continue
        try:
            pss.append(B.smaps_rollup(g.proc.pid)["pss_kib"])
            v, other = B.cpu_split(g.proc.pid)
            cpu.append(v + other)
            vcpu.append(v)
        except (FileNotFoundError, ProcessLookupError):
            continue
    r = {
        "vmm": vmm, "n": len(guests), "answered": len(answered),
        "answer_ms_p50": percentile(times, 50), "answer_ms_p99": percentile(times, 99),
        "answer_ms_all": max(times) if times else None,
        "clones_per_core_s": len(answered) / (t_all * n_cpus) if t_all else None,
        "pss_mib_per_vm": statistics.mean(pss) / 1024 if pss else None,
        "pss_mib_total": sum(pss) / 1024 if pss else None,
        "cpu_ms_per_vm": statistics.mean(cpu) * 1000 if cpu else None,
        "vcpu_ms_per_vm": statistics.mean(vcpu) * 1000 if vcpu else None,
        "answer_ms": times,
    }
    return r


def merge_runs(rs):
    """One row from runs of the same wave in a row: the answers pooled for
    p50/p99, the per-wave figures (time until all answered, clones per
    core-second) their median, memory and CPU their mean."""
    if len(rs) == 1:
        return rs[0]
    times = [t for r in rs for t in r["answer_ms"]]

    def median(key):
        v = [r[key] for r in rs if r[key] is not None]
        return statistics.median(v) if v else None

    def mean(key):
        v = [r[key] for r in rs if r[key] is not None]
        return statistics.mean(v) if v else None

    m = dict(rs[0])
    m.update(runs=len(rs), answered=sum(r["answered"] for r in rs), answer_ms=times,
             answer_ms_p50=percentile(times, 50), answer_ms_p99=percentile(times, 99),
             answer_ms_all=median("answer_ms_all"), clones_per_core_s=median("clones_per_core_s"),
             mem_available_mib_after=rs[-1]["mem_available_mib_after"],
             failures=[f for r in rs for f in r["failures"]])
    for key in ("pss_mib_per_vm", "pss_mib_total", "cpu_ms_per_vm", "vcpu_ms_per_vm"):
        m[key] = mean(key)
    return m


def stop_all(guests):
    """Stops every VMM; lists those that panicked, or that died by
    themselves after their guest answered (e.g. killed by a seccomp
    filter): a VM that answered must still run when the wave ends. One that
    died before answering is already a failure of the wave."""
    crashed = []
    for g in guests:
        died = g.proc.poll() if g.proc is not None else None
        if g.conn is not None:
            g.conn.close()
        if g.proc is not None and died is None:
            g.proc.kill()
        if g.proc is not None:
            g.proc.wait()
        g.err.close()
        with open(g.err_path, "rb") as f:
            err = f.read()
        tail = err.decode(errors="replace")[-500:]
        if b"panicked" in err:
            crashed.append(f"vm {g.idx}: {tail}")
        elif died is not None and g.t_answer is not None:
            crashed.append(f"vm {g.idx}: exited with status {died} after answering: {tail}")
    return crashed


def run_wave(kind, vmm, n, exe, kit, snap, work, timeout, n_cpus):
    d = tempfile.mkdtemp(prefix=f"{vmm}-{kind}-{n}-", dir=work)
    guests = []
    for i in range(n):
        ser, err = os.path.join(d, f"{i}.ser"), os.path.join(d, f"{i}.err")
        if vmm == "chv" and kind == "clone":
            argv = [exe, "--api-socket", os.path.join(d, f"{i}.api"), "--restore",
                    f'source_url=file://{snap},resume=true,serial="socket={ser}"']
        elif vmm == "chv":
            argv = [exe, "--kernel", os.path.join(kit, "vmlinux"), "--initramfs",
                    os.path.join(kit, "initramfs.cpio"), "--cmdline", CMDLINE, "--cpus", "boot=1",
                    "--memory", f"size={MEM_MIB}M", "--serial", f"socket={ser}", "--console", "off",
                    "--api-socket", os.path.join(d, f"{i}.api")]
        else:
            argv = qemu_base_argv(exe, kit, f"unix:{ser},server=on,wait=off")
            if kind == "clone":
                argv += ["-incoming", f"exec:cat {snap}",
                         "-qmp", f"unix:{os.path.join(d, f'{i}.qmp')},server=on,wait=off"]
        clone = kind == "clone"
        qmp_sock = os.path.join(d, f"{i}.qmp") if clone and vmm == "qemu" else None
        guests.append(Guest(i, argv, ser, err, ANSWER if clone else READY, clone, qmp_sock))
    mem_before = mem_available_kib()
    try:
        t_first, failures = wave(guests, timeout)
        r = measure(guests, t_first, vmm, n_cpus)
        r["mem_available_mib_before"] = mem_before / 1024
        r["mem_available_mib_after"] = mem_available_kib() / 1024
    finally:
        crashed = stop_all(guests)
        shutil.rmtree(d, ignore_errors=True)
    r["kind"], r["failures"] = kind, failures + crashed
    return r


# --- report -----------------------------------------------------------------

def fmt(v, d=1):
    return "-" if v is None else f"{v:,.{d}f}"


def n_label(r):
    """N, with the number of runs a row pools (`1 ×5`)."""
    runs = r.get("runs", 1)
    return f"{r['n']} ×{runs}" if runs > 1 else f"{r['n']}"


def table(results):
    lines = ["| VMM | start | N | answered | p50 ms | p99 ms | all ms | clones/core-s | "
             "PSS/VM MiB | PSS total MiB | MemAvail before→after MiB | CPU/VM ms (vCPU) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['vmm']} | {r['kind']} | {n_label(r)} | {r['answered']} | {fmt(r['answer_ms_p50'])} | "
            f"{fmt(r['answer_ms_p99'])} | {fmt(r['answer_ms_all'])} | {fmt(r['clones_per_core_s'], 2)} | "
            f"{fmt(r['pss_mib_per_vm'], 2)} | {fmt(r['pss_mib_total'])} | "
            f"{fmt(r['mem_available_mib_before'], 0)}→{fmt(r['mem_available_mib_after'], 0)} | "
            f"{fmt(r['cpu_ms_per_vm'], 0)} ({fmt(r['vcpu_ms_per_vm'], 0)}) |")
    return "\n".join(lines)


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("plot: matplotlib is not installed (pip install matplotlib); no PNG written")
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for vmm, kind, style in (("chv", "clone", "o-"), ("qemu", "clone", "s-"),
                             ("chv", "cold", "o--"), ("qemu", "cold", "s--")):
        rs = sorted((r for r in results if r["vmm"] == vmm and r["kind"] == kind
                     and r["answered"]), key=lambda r: r["n"])
        if not rs:
            continue
        label = f"{vmm} {'clones' if kind == 'clone' else 'cold boots'}"
        a.plot([r["n"] for r in rs], [r["answer_ms_p50"] for r in rs], style, label=f"{label} p50")
        a.plot([r["n"] for r in rs], [r["answer_ms_all"] for r in rs], style, alpha=0.4,
               label=f"{label} all")
        b.plot([r["n"] for r in rs], [r["pss_mib_per_vm"] for r in rs], style, label=label)
    a.set(xlabel="VMs started at once (N)", ylabel="exec → guest answer (ms)", xscale="log",
          yscale="log", title="Time to answer")
    b.set(xlabel="VMs started at once (N)", ylabel="PSS per VM (MiB)", xscale="log",
          yscale="log", title="Memory per idle VM")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"plot: {path}")
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.split("\n")[2:]))
    ap.add_argument("--clones", default="1,10,50,100")
    ap.add_argument("--cold-max", type=int, default=10,
                    help="largest N also run as cold boots (each boot costs ~20 s of CPU)")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--qemu-max", type=int, default=100, help="largest N for QEMU")
    ap.add_argument("--quick", action="store_true", help="CI guard rail: chv clones, N=10")
    ap.add_argument("--chv", default=os.environ.get("CHV_BIN") or os.path.join(B.REPO, "target/release/chv"),
                    help="chv binary (default: $CHV_BIN, else target/release/chv)")
    ap.add_argument("--single-runs", type=int, default=5,
                    help="N=1 clone waves run this many times in a row, pooled in one row")
    ap.add_argument("--timeout", type=int, default=600, help="per wave, seconds")
    ap.add_argument("--json", default="density-results.json")
    ap.add_argument("--plot", help="write a PNG plot here (needs matplotlib)")
    args = ap.parse_args(argv)
    if args.quick:
        args.clones, args.cold_max, args.no_qemu = "10", 0, True
    ns = [int(n) for n in args.clones.split(",") if n.strip()]
    B.ensure_chv(args.chv)
    qemu = None if args.no_qemu else B.which_qemu()
    notes = []
    if not args.no_qemu and not qemu:
        notes.append("QEMU: not installed (qemu-system-x86_64 not found)")
    kit = B.kit_dir()
    n_cpus = os.cpu_count() or 1
    os.makedirs(os.path.join(B.REPO, "target"), exist_ok=True)
    # Short paths: a socket path must fit in 108 bytes.
    work = tempfile.mkdtemp(prefix="chv-density-")
    results, failures = [], []
    t_start = time.monotonic()
    try:
        snap, boot_s = chv_template(args.chv, kit, work)
        log(f"chv template booted in {boot_s:.1f} s, snapshot {snap}")
        qstate = None
        if qemu:
            try:
                qstate, qboot = qemu_template(qemu, kit, work)
                log(f"QEMU template booted in {qboot:.1f} s, state {os.path.getsize(qstate) >> 20} MiB")
            except Exception as e:  # measure chv alone rather than nothing
                notes.append(f"QEMU template failed: {e}")
        plan = []
        for n in ns:
            plan.append(("clone", "chv", n, args.chv, snap))
            if qstate and n <= args.qemu_max:
                plan.append(("clone", "qemu", n, qemu, qstate))
        for n in ns:
            if n <= args.cold_max:
                plan.append(("cold", "chv", n, args.chv, None))
                if qemu and n <= args.qemu_max:
                    plan.append(("cold", "qemu", n, qemu, None))
        if args.cold_max < max(ns) and args.cold_max > 0:
            notes.append(f"cold boots only up to N={args.cold_max} (--cold-max): each costs ~20 s of "
                         "guest CPU on this host")
        for kind, vmm, n, exe, src in plan:
            runs = max(1, args.single_runs) if (kind, n) == ("clone", 1) else 1
            r = merge_runs([run_wave(kind, vmm, n, exe, kit, src, work, args.timeout, n_cpus)
                            for _ in range(runs)])
            results.append(r)
            failures += [f"{vmm} {kind} N={n}: {f}" for f in r["failures"]]
            log(f"{vmm:4} {kind:5} N={n_label(r):<3} answered {r['answered']}/{n * runs} p50 {fmt(r['answer_ms_p50'])} ms "
                f"p99 {fmt(r['answer_ms_p99'])} ms all {fmt(r['answer_ms_all'])} ms; "
                f"{fmt(r['clones_per_core_s'], 2)} per core-s; PSS {fmt(r['pss_mib_per_vm'], 2)} MiB/VM "
                f"({fmt(r['pss_mib_total'])} total); CPU {fmt(r['cpu_ms_per_vm'], 0)} ms/VM")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = open("/proc/loadavg").read().split()[:3]
    log(f"\n{n_cpus} CPUs; wall time {(time.monotonic() - t_start) / 60:.1f} min; "
        f"load avg {' '.join(load)}")
    log(table(results))
    for n in notes:
        log(n)
    for f in failures:
        log(f"FAILED: {f.splitlines()[0]}")
    with open(args.json, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "config": vars(args),
                   "cpus": n_cpus, "loadavg": load, "notes": notes, "failures": failures,
                   "results": results}, f, indent=2)
    log(f"written: {args.json}")
    if args.plot:
        plot(results, args.plot)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
