"""Shared helpers of the chv benchmarks (scripts/bench/*.py).

VMM command lines for chv and QEMU microvm on the guest kit, a serial-console
runner that timestamps markers, /proc/PID/smaps footprint parsing, HTTP over
a Unix socket (chv API), the QMP handshake, and the bench initramfs (the kit's
initramfs plus the chvblk tool, appended as a second cpio archive).
"""
import json
import os
import re
import select
import shutil
import socket
import subprocess
import time

from boot import REPO, kit_dir  # noqa: F401  (re-exported)

HERE = os.path.dirname(os.path.abspath(__file__))
QEMU_CPU = "host,-arch-capabilities,-cx16,-xsave"
MIB = 1 << 20
GAP_START = 0xC000_0000  # arch/src/x86_64/layout.rs MEM_32BIT_GAP_START


def which_qemu():
    """Path of qemu-system-x86_64, or None when it is not installed."""
    return shutil.which("qemu-system-x86_64")


def vmms_to_compare(chv):
    """Builds chv if needed; ({"chv": path[, "qemu": path]}, a note when QEMU is missing)."""
    ensure_chv(chv)
    qemu = which_qemu()
    if qemu:
        return {"chv": chv, "qemu": qemu}, None
    return {"chv": chv}, "QEMU: not installed (qemu-system-x86_64 not found), ratios skipped"


def ensure_chv(chv):
    """Builds the release chv if the binary is missing."""
    if not os.path.exists(chv):
        subprocess.run(["cargo", "build", "--release", "-p", "vmm", "--bin", "chv"], cwd=REPO, check=True)


def chv_argv(chv, kernel, initrd, cmdline, mem_mib, api=None, disk=None, tap=None, cpus=1,
             shared=False, memory_opts=""):
    """chv command line: serial console on stdout, optional API socket, disk, tap;
    shared=True backs guest RAM with a shared memfd (vhost-user backends map it);
    memory_opts is appended to --memory (e.g. "hotplug_method=virtio-mem,...")."""
    memory = f"size={mem_mib}M" + (",shared=on" if shared else "") + (
        f",{memory_opts}" if memory_opts else "")
    argv = [chv, "--kernel", kernel, "--initramfs", initrd, "--cmdline", cmdline,
            "--cpus", f"boot={cpus}", "--memory", memory,
            "--serial", "tty", "--console", "off"]
    if api:
        argv += ["--api-socket", f"path={api}"]
    if disk:
        argv += ["--disk", f"path={disk},direct=on"]
    if tap:
        argv += ["--net", f"tap={tap[0]},ip={tap[1]},mask=255.255.255.0"]
    return argv


def qemu_argv(qemu, kernel, initrd, cmdline, mem_mib, qmp=None, disk=None, tap=None, cpus=1,
              shared=False, machine=None, maxmem_mib=None):
    """QEMU microvm command line as in the kit README; PCIe only when devices are added
    (or shared=True, which also backs guest RAM with a shared memfd for vhost-user).
    machine replaces the -M value (e.g. "q35,acpi=on"); maxmem_mib adds -m ...,maxmem=."""
    machine = machine or "microvm,acpi=on" + (",pcie=on" if disk or tap or shared else "")
    if shared:
        machine += ",memory-backend=ram0"
    # debug-threads names the vCPU threads "CPU N/KVM" (see cpu_split).
    argv = [qemu, "-M", machine, "-name", "qemu,debug-threads=on", "-enable-kvm", "-cpu", QEMU_CPU,
            "-smp", str(cpus),
            "-m", f"{mem_mib}M" + (f",maxmem={maxmem_mib}M" if maxmem_mib else ""), "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", "stdio", "-kernel", kernel, "-initrd", initrd, "-append", cmdline]
    if shared:
        argv += ["-object", f"memory-backend-memfd,id=ram0,size={mem_mib}M,share=on"]
    if qmp:
        argv += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    if disk:
        argv += ["-drive", f"file={disk},format=raw,if=none,id=d0,cache=none,aio=threads",
                 "-device", "virtio-blk-pci,drive=d0"]
    if tap:
        argv += ["-netdev", f"tap,id=n0,ifname={tap[0]},script=no,downscript=no",
                 "-device", "virtio-net-pci,netdev=n0"]
    return argv


def run_serial(argv, timeout, on_marker=None, markers=(b"GUEST-READY",), kill_after=None,
               on_start=None, abort_if=None, feed_stdin=False):
    """Runs a VMM whose serial console is its stdout.

    Returns {"marks": {marker: seconds since exec}, "total_s", "exit", "output"}.
    on_start(start, proc) runs right after the exec (start: its monotonic time).
    on_marker(marker, proc) is called as soon as a marker appears (e.g. to read
    /proc/PID/smaps at GUEST-READY); a dict it returns is merged into the
    result. kill_after=marker stops the VMM after that marker. feed_stdin=True gives
    the VMM a pipe as stdin (the guest's console input: proc.stdin in on_marker).
    Raises RuntimeError on a timeout or a guest kernel panic.
    """
    start = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.PIPE if feed_stdin else subprocess.DEVNULL,
                         stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    if on_start:
        on_start(start, p)
    fd = p.stdout.fileno()
    buf, marks, extra = b"", {}, {}
    try:
        while True:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                raise RuntimeError(f"timeout after {timeout} s: {argv[0]}\n{tail(buf)}")
            why = abort_if() if abort_if else None
            if why:
                p.kill()
                raise RuntimeError(f"{why}\n{tail(buf)}")
            r, _, _ = select.select([fd], [], [], min(left, 1.0))
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buf += chunk
                for m in markers:
                    if m not in marks and m in buf:
                        marks[m] = time.monotonic() - start
                        if on_marker:
                            extra.update(on_marker(m, p) or {})
                if b"Kernel panic" in buf:
                    raise RuntimeError(f"guest kernel panic under {argv[0]}\n{tail(buf)}")
                if kill_after and kill_after in marks:
                    break
    finally:
        if p.poll() is None and (kill_after or time.monotonic() - start >= timeout or
                                 b"Kernel panic" in buf):
            p.kill()
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return {"marks": {k.decode(): v for k, v in marks.items()}, "total_s": time.monotonic() - start,
            "exit": p.returncode, "output": buf.decode(errors="replace"), **extra}


def tail(buf, n=2000):
    """Last n characters of console output, for error messages."""
    return buf[-n:].decode(errors="replace") if isinstance(buf, bytes) else buf[-n:]


# --- memory footprint -------------------------------------------------------

def smaps_rollup(pid):
    """Rss and Pss of the whole process in KiB (from /proc/PID/smaps_rollup)."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Rss", "Pss"):
                out[k.lower() + "_kib"] = int(v.split()[0])
    return out


MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")


def anon_mappings(pid):
    """[(size_bytes, rss_kib)] of the anonymous (unnamed) mappings in /proc/PID/smaps."""
    maps, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = MAPPING.match(line)
            if m:
                name = m.group(3).strip()
                size = int(m.group(2), 16) - int(m.group(1), 16)
                cur = [size, 0] if not name else None
                if cur is not None:
                    maps.append(cur)
            elif cur is not None and line.startswith("Rss:"):
                cur[1] = int(line.split()[1])
    return [tuple(x) for x in maps]


def guest_ram_sizes(mem_mib):
    """Sizes of chv's guest RAM regions (one below the 32-bit gap, the rest above 4 GiB)."""
    ram = mem_mib * MIB
    return [ram] if ram <= GAP_START else [GAP_START, ram - GAP_START]


def guest_ram_rss_kib(maps, vmm, mem_mib):
    """Rss of the guest RAM mapping(s) in KiB, or None if they cannot be told apart.

    chv: one anonymous mapping per RAM region (guest_ram_sizes). QEMU: one
    anonymous mapping of the whole RAM size (its pc.ram/microvm.ram block).
    A mapping may be up to 1 MiB larger than the region, because the host
    kernel merges it with an adjacent anonymous mapping of the same flags (seen
    with chv: 128 MiB + 132 KiB); the few merged-in pages are counted as guest RAM.
    """
    sizes = guest_ram_sizes(mem_mib) if vmm == "chv" else [mem_mib * MIB]
    total = 0
    for want in sizes:
        rss = mapping_rss_kib(maps, want)
        if rss is None:
            return None
        total += rss
    return total


def mapping_rss_kib(maps, want):
    """Rss in KiB of the one anonymous mapping of `want` bytes (up to 1 MiB more,
    see guest_ram_rss_kib), or None when there is none or more than one."""
    cands = [rss for size, rss in maps if want <= size <= want + MIB]
    return cands[0] if len(cands) == 1 else None


def status_value(pid, field):
    """The number of a /proc/PID/status field (VmRSS is in KiB), or None."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def threads(pid):
    """Thread count of a process (/proc/PID/status)."""
    return status_value(pid, "Threads")


def cpu_split(pid):
    """(vCPU threads, everything else) CPU seconds of a VMM process so far.

    The process total from /proc/PID/stat also counts threads that already
    exited (QEMU's I/O worker threads come and go); vCPU threads are named
    "vcpuN" (chv) or "CPU N/KVM" (QEMU) and live as long as the VM.
    """
    tick = os.sysconf("SC_CLK_TCK")

    def stat_cpu(path):
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    total = stat_cpu(f"/proc/{pid}/stat")
    vcpu = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            if re.fullmatch(r"vcpu\d+|CPU \d+/KVM", name):
                vcpu += stat_cpu(f"/proc/{pid}/task/{tid}/stat")
        except FileNotFoundError:
            continue
    return vcpu, total - vcpu


def footprint(pid, vmm, mem_mib):
    """RSS, PSS, guest RAM Rss, VMM overhead (PSS minus guest RAM Rss), threads; KiB."""
    fp = smaps_rollup(pid)
    ram = guest_ram_rss_kib(anon_mappings(pid), vmm, mem_mib)
    fp["guest_ram_rss_kib"] = ram
    fp["overhead_kib"] = fp["pss_kib"] - ram if ram is not None else None
    fp["threads"] = threads(pid)
    return fp


# --- control sockets --------------------------------------------------------

def http_unix(path, method, url, body=None, timeout=30):
    """One HTTP/1.1 request over a Unix socket; returns (status, body bytes)."""
    data = json.dumps(body).encode() if body is not None else b""
    req = (f"{method} /api/v1/{url} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(req)
        resp = b""
        while True:
            head, sep, rest = resp.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"content-length:\s*(\d+)", head, re.I)
                if m and len(rest) >= int(m.group(1)):
                    break
            chunk = s.recv(65536)
            if not chunk:
                break
            resp += chunk
    head, _, rest = resp.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise RuntimeError(f"bad HTTP answer: {resp[:200]!r}")
    return status, rest


def wait_first(probe, start, deadline_s=30.0):
    """Seconds from `start` (monotonic) until probe() first returns True, or None."""
    while time.monotonic() - start < deadline_s:
        try:
            if probe():
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.0002)
    return None


def ping_ok(sock):
    """True when chv answers vmm.ping with 200."""
    return http_unix(sock, "GET", "vmm.ping", timeout=2)[0] == 200


def qmp(sock, *commands):
    """Runs QMP commands in one session; returns their replies."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(sock)
        f = s.makefile("rwb")
        f.readline()  # greeting
        replies = []
        for cmd in ({"execute": "qmp_capabilities"},) + commands:
            f.write(json.dumps(cmd).encode() + b"\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "event" not in reply:
                    break
            replies.append(reply)
    return replies[1:]


def qmp_ok(sock):
    """True when QEMU's QMP greets and answers qmp_capabilities with a return."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(sock)
        f = s.makefile("rwb")
        if b'"QMP"' not in f.readline():
            return False
        f.write(b'{"execute": "qmp_capabilities"}\r\n')
        f.flush()
        return b'"return"' in f.readline()


# --- chvblk ------------------------------------------------------------------

CHVBLK = re.compile(r"CHVBLK (seqread|seqwrite|randread) (\d+) (\d+)")


def parse_chvblk(text, where):
    """MiB/s and IOPS from chvblk's output lines (seqread_mib_s, seqwrite_mib_s, randread_iops)."""
    if "CHVBLK-ERROR" in text:
        raise RuntimeError(f"{where}: {text[text.index('CHVBLK-ERROR'):][:200]}")
    res = {}
    for what, n, ns in CHVBLK.findall(text):
        secs = max(int(ns), 1) / 1e9
        if what == "randread":
            res["randread_iops"] = int(n) / secs
        else:
            res[f"{what}_mib_s"] = int(n) / MIB / secs
    return res


# --- bench initramfs --------------------------------------------------------

def build_tool(source, out):
    """Compiles a guest tool (chvblk.c, chvmem.c: static, freestanding, a few KiB) to `out`."""
    subprocess.run(["gcc", "-static", "-O2", "-nostdlib", "-ffreestanding", "-fno-stack-protector",
                    "-fno-builtin", "-s", "-o", out, os.path.join(HERE, source)], check=True)
    return out


def build_chvblk(out):
    """Compiles chvblk.c to `out`."""
    return build_tool("chvblk.c", out)


def newc_entry(name, mode, data, ino):
    """One cpio "newc" entry (header, NUL-terminated name, data; 4-byte padded)."""
    nameb = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nameb), 0]
    hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
    pad = lambda n: b"\0" * (-n % 4)  # noqa: E731
    return hdr + nameb + pad(len(hdr) + len(nameb)) + data + pad(len(data))


def bench_initramfs(kit_initrd, files, out):
    """Writes kit_initrd followed by a second cpio archive holding `files`
    ({path in guest: host file}); Linux unpacks concatenated archives in order."""
    with open(kit_initrd, "rb") as f:
        base = f.read()
    base += b"\0" * (-len(base) % 4)
    extra = b""
    for i, (guest_path, host_path) in enumerate(sorted(files.items())):
        with open(host_path, "rb") as f:
            extra += newc_entry(guest_path.lstrip("/"), 0o100755, f.read(), 0x7000 + i)
    extra += newc_entry("TRAILER!!!", 0, b"", 0)
    extra += b"\0" * (-len(extra) % 512)
    with open(out, "wb") as f:
        f.write(base + extra)
    return out
