#!/usr/bin/env python3
"""Net benchmark: guest<->host TCP throughput over a tap, chv vs QEMU microvm.

Everything runs inside a network namespace this script creates (and deletes):
the VMM, its tap (10.0.2.1/24) and the host-side TCP peer; the guest is
10.0.2.15. Per run the host sends N bytes to the guest's `nc -l` (host→guest),
then the guest sends N bytes to the host (guest→host); both are timed on the
host from connect/accept to EOF. Runs alternate chv, QEMU, …; medians printed.

Usage: scripts/bench/net.py [--pairs N] [--kib N]
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from boot import REPO, kit_dir  # noqa: E402

HOST_IP, GUEST_IP = "10.0.2.1", "10.0.2.15"


def peer(nbytes, wait_go=False):
    """Host side, run inside the namespace: prints two rates in KiB/s.

    wait_go: first read a line from stdin, sent once the guest's network is
    up. Probing a guest that was still booting made about one QEMU run in
    three fail with "No route to host" mid-transfer; waiting avoids it.
    """
    if wait_go:
        sys.stdin.readline()
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((HOST_IP, 5001))
    lst.listen(1)
    deadline = time.monotonic() + 600
    while True:  # the guest's listener comes up after boot
        try:
            s = socket.create_connection((GUEST_IP, 5000), timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    s.settimeout(600)
    t = time.monotonic()
    s.sendall(b"\0" * nbytes)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # EOF once the guest's nc is done
    h2g = nbytes / 1024 / (time.monotonic() - t)
    s.close()
    lst.settimeout(600)
    c, _ = lst.accept()
    t = time.monotonic()
    got = 0
    while True:
        d = c.recv(65536)
        if not d:
            break
        got += len(d)
    g2h = got / 1024 / (time.monotonic() - t)
    print(f"RATES {h2g:.1f} {g2h:.1f}", flush=True)


def run(ns, argv, nbytes):
    p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--peer",
                              str(nbytes)], capture_output=True, text=True, timeout=900).stdout
    finally:
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
    rates = [ln.split()[1:] for ln in out.splitlines() if ln.startswith("RATES")]
    if not rates:
        raise RuntimeError(f"no rates from the peer: {out}")
    return tuple(float(x) for x in rates[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--kib", type=int, default=512)
    ap.add_argument("--peer", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--wait-go", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--chv", default=os.path.join(REPO, "target/release/chv"))
    args = ap.parse_args()
    if args.peer:
        return peer(args.peer, args.wait_go)
    nbytes = args.kib * 1024
    kit = kit_dir()
    kernel, initrd = os.path.join(kit, "vmlinux"), os.path.join(kit, "initramfs.cpio")
    cmd = (f"ip addr add {GUEST_IP}/24 dev eth0; ip link set eth0 up; nc -l -p 5000 > /dev/null; "
           f"head -c {nbytes} /dev/zero | nc {HOST_IP} 5001")
    cmdline = f'console=ttyS0 quiet panic=-1 guest_cmd="{cmd}"'
    ns = f"chvbench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        vmms = {"chv": [args.chv, "--kernel", kernel, "--initramfs", initrd, "--cmdline", cmdline,
                        "--memory", "size=256M", "--serial", "null",
                        "--net", f"tap=btap0,ip={HOST_IP},mask=255.255.255.0"]}
        qemu = shutil.which("qemu-system-x86_64")
        if qemu:
            for c in (["ip", "tuntap", "add", "qtap0", "mode", "tap"],
                      ["ip", "addr", "add", f"{HOST_IP}/24", "dev", "qtap0"]):
                subprocess.run(["ip", "netns", "exec", ns, *c], check=True)
            vmms["qemu"] = [qemu, "-M", "microvm,acpi=on,pcie=on", "-enable-kvm",
                            "-cpu", "host,-arch-capabilities,-cx16,-xsave", "-smp", "1", "-m", "256M",
                            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                            "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
                            "-netdev", "tap,id=n0,ifname=qtap0,script=no,downscript=no",
                            "-device", "virtio-net-pci,netdev=n0"]
        else:
            print("peer missing: qemu-system-x86_64 (apt-get install qemu-system-x86); chv only")
        res = {n: [] for n in vmms}
        for i in range(args.pairs):
            for name, argv in vmms.items():
                if name == "qemu":
                    subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "qtap0", "up"])
                r = run(ns, argv, nbytes)
                res[name].append(r)
                print(f"pair {i + 1} {name:5} host->guest {r[0]:8.1f} KiB/s  guest->host {r[1]:8.1f} KiB/s",
                      flush=True)
        med = {n: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
               for n, rs in res.items()}
        print(f"\nmedians, {args.kib} KiB each way")
        for n, m in med.items():
            print(f"{n:5} host->guest {m[0]:8.1f} KiB/s  guest->host {m[1]:8.1f} KiB/s")
        if "qemu" in med:
            print(f"chv/qemu host->guest {med['chv'][0] / med['qemu'][0]:.2f}  "
                  f"guest->host {med['chv'][1] / med['qemu'][1]:.2f}")
    finally:
        subprocess.run(["ip", "netns", "del", ns])


if __name__ == "__main__":
    sys.exit(main())
