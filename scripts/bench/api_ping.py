#!/usr/bin/env python3
"""API benchmark: time from `chv --api-socket` exec to the first answered
vmm.ping, and vmm.ping round-trip latency (p50/p99) over 1,000 requests on
one keep-alive connection.

Usage: scripts/bench/api_ping.py [--chv PATH] [--runs N]
"""
import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REQUEST = b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n\r\n"


def one_run(chv):
    sock = os.path.join(tempfile.mkdtemp(prefix="chv-ping-"), "api.sock")
    start = time.monotonic()
    proc = subprocess.Popen([chv, "--api-socket", f"path={sock}"], stderr=subprocess.DEVNULL)
    first = None
    deadline = start + 10
    while first is None and time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(sock)
                s.sendall(REQUEST)
                if s.recv(4096).startswith(b"HTTP/1.1 200"):
                    first = time.monotonic() - start
        except OSError:
            time.sleep(0.0002)
    lat = []
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        for _ in range(1000):
            t = time.perf_counter()
            s.sendall(REQUEST)
            s.recv(4096)
            lat.append(time.perf_counter() - t)
    proc.terminate()
    proc.wait()
    lat.sort()
    return first, statistics.median(lat), lat[int(len(lat) * 0.99) - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chv", default=os.path.join(REPO, "target/release/chv"))
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if not os.path.exists(args.chv):
        subprocess.run(["cargo", "build", "--release", "-p", "vmm", "--bin", "chv"], cwd=REPO, check=True)
    runs = [one_run(args.chv) for _ in range(args.runs)]
    print(f"exec -> first ping: median {statistics.median(r[0] for r in runs) * 1e3:.2f} ms")
    print(f"vmm.ping p50 {statistics.median(r[1] for r in runs) * 1e6:.0f} us, "
          f"p99 {statistics.median(r[2] for r in runs) * 1e6:.0f} us (median over {args.runs} runs)")


if __name__ == "__main__":
    main()
