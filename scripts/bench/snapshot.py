#!/usr/bin/env python3
"""Snapshot, restore and live-migration times of chv on the guest kit.

For each guest size (default 256M and 1G): boot the kit to GUEST-READY
with an API socket, pause, time `vm.snapshot`; then, `--runs` times each,
time a restore in a new chv from exec to `vm.info` answering Running, lazy
(memory mapped from the snapshot file) and with `prefault=on`; then
migrate a running guest to a second chv and report the sender's downtime
(pause to the receiver's OK) and total time from its log.

Usage: scripts/bench/snapshot.py [--sizes 256M,1G] [--runs 3] [--json PATH]
Builds the release chv first unless --chv is given.
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def kit_dir():
    for d in (os.environ.get("CHV_GUEST_DIR"), os.path.join(REPO, "..", "shared", "guest"),
              os.path.join(REPO, "target", "guest-kit")):
        if d and os.path.isfile(os.path.join(d, "vmlinux")):
            return d
    sys.exit("no guest kit: set CHV_GUEST_DIR or run scripts/guest-kit/build.sh")


def api(sock, method, endpoint, body=None, timeout=300):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    for _ in range(400):
        try:
            s.connect(sock)
            break
        except OSError:
            time.sleep(0.005)
    data = body.encode() if body else b""
    s.sendall(f"{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    head, _, payload = out.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload.decode(errors="replace")


def wait_for(path, pattern, timeout):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with open(path, "rb") as f:
                if pattern in f.read():
                    return True
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    return False


def boot(chv, kit, work, size, tag):
    sock = os.path.join(work, f"{tag}.sock")
    console = os.path.join(work, f"{tag}.console")
    proc = subprocess.Popen(
        [chv, "--kernel", os.path.join(kit, "vmlinux"), "--initramfs",
         os.path.join(kit, "initramfs.cpio"), "--cmdline",
         'console=ttyS0 quiet panic=-1 guest_cmd="while true; do sleep 1; done"',
         "--memory", f"size={size}", "--serial", f"file={console}", "--console", "off",
         "--api-socket", sock, "-v"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if not wait_for(console, b"GUEST-READY", 300):
        proc.kill()
        sys.exit(f"{tag}: the guest did not boot")
    return proc, sock


def restore_time(chv, snap, work, prefault):
    sock = os.path.join(work, "restore.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    opt = f"source_url=file://{snap},resume=true" + (",prefault=on" if prefault else "")
    t0 = time.perf_counter()
    proc = subprocess.Popen([chv, "--api-socket", sock, "--restore", opt],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    while True:
        try:
            status, body = api(sock, "GET", "vm.info", timeout=30)
            if status == 200 and '"state":"Running"' in body:
                break
        except OSError:
            pass
        if proc.poll() is not None:
            sys.exit(f"restore failed: {proc.stderr.read().decode()}")
        time.sleep(0.001)
    elapsed = time.perf_counter() - t0
    proc.kill()
    proc.wait()
    return elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256M,1G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chv")
    ap.add_argument("--json", default="snapshot-results.json")
    args = ap.parse_args()
    chv = args.chv
    if not chv:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "vmm", "--bin", "chv"],
                       cwd=REPO, check=True)
        chv = os.path.join(REPO, "target", "release", "chv")
    kit = kit_dir()
    results = {}
    for size in args.sizes.split(","):
        work = tempfile.mkdtemp(prefix=f"chv-snapbench-{size}-")
        try:
            proc, sock = boot(chv, kit, work, size, "src")
            assert api(sock, "PUT", "vm.pause")[0] == 204
            snap = os.path.join(work, "snap")
            t0 = time.perf_counter()
            status, body = api(sock, "PUT", "vm.snapshot", json.dumps({"destination_url": f"file://{snap}"}))
            snap_s = time.perf_counter() - t0
            assert status == 204, body
            mem = os.path.join(snap, "memory.bin")
            stored = os.stat(mem).st_blocks * 512
            lazy = [restore_time(chv, snap, work, False) for _ in range(args.runs)]
            eager = [restore_time(chv, snap, work, True) for _ in range(args.runs)]
            # Live migration of the running guest to a second chv.
            assert api(sock, "PUT", "vm.resume")[0] == 204
            dsock = os.path.join(work, "dest.sock")
            dest = subprocess.Popen([chv, "--api-socket", dsock, "-v"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            msock = os.path.join(work, "migration.sock")
            import threading
            recv = {}
            th = threading.Thread(target=lambda: recv.update(
                r=api(dsock, "PUT", "vm.receive-migration", json.dumps({"receiver_url": f"unix:{msock}"}))))
            th.start()
            while not os.path.exists(msock):
                time.sleep(0.01)
            status, body = api(sock, "PUT", "vm.send-migration",
                               json.dumps({"destination_url": f"unix:{msock}"}))
            th.join()
            assert status == 204, body
            proc.wait(timeout=30)
            log = proc.stderr.read().decode()
            m = re.search(r"migrated to .* in ([\d.]+) ms \((\d+) rounds, (\d+) pages, downtime ([\d.]+) ms\)", log)
            api(dsock, "PUT", "vmm.shutdown")
            dest.wait(timeout=30)
            results[size] = {
                "snapshot_s": snap_s,
                "memory_file_allocated_mib": stored / 2**20,
                "restore_lazy_s": statistics.median(lazy),
                "restore_prefault_s": statistics.median(eager),
                "migration_total_ms": float(m.group(1)) if m else None,
                "migration_rounds": int(m.group(2)) if m else None,
                "migration_pages": int(m.group(3)) if m else None,
                "migration_downtime_ms": float(m.group(4)) if m else None,
            }
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'guest':>6} {'snapshot':>9} {'file MiB':>9} {'restore lazy':>13} {'prefault':>9} "
          f"{'migration':>10} {'downtime':>9}")
    for size, r in results.items():
        print(f"{size:>6} {r['snapshot_s']*1000:8.1f}ms {r['memory_file_allocated_mib']:9.1f} "
              f"{r['restore_lazy_s']*1000:11.1f}ms {r['restore_prefault_s']*1000:7.1f}ms "
              f"{(r['migration_total_ms'] or 0):8.1f}ms {(r['migration_downtime_ms'] or 0):7.1f}ms")
    with open(args.json, "w") as f:
        json.dump({"runs": args.runs, "results": results}, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
