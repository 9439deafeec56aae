#!/usr/bin/env python3
"""Turns a chv guest profile into a table of guest kernel functions.

chv writes the profile when run with CHV_GUEST_PROFILE=<file> and
--seccomp false: one "<ms since start> <vcpu> <rip hex>" line per sample,
about one sample per millisecond of vCPU CPU time. Symbols come from the
System.map of the guest kernel's build tree (the kit's vmlinux is stripped).

  python3 scripts/bench/guest_profile.py PROFILE --map System.map [--from-ms A] [--to-ms B]
      [--top 40] [--timeline 1000]

--timeline N also prints, for every N ms of wall time, the sample count and
the three hottest functions, which shows the boot's phases in order.
"""
import argparse
import bisect
import collections
import sys


def load_map(path):
    """Sorted (address, name) pairs of the text symbols in a System.map."""
    syms = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] in "tTwW":
                syms.append((int(parts[0], 16), parts[2]))
    syms.sort()
    return syms


def load_samples(path):
    """List of (ms, vcpu, rip) tuples."""
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                out.append((int(parts[0]), int(parts[1]), int(parts[2], 16)))
    return out


def symbolize(rip, addrs, names):
    """Name of the function holding rip, or a user/unknown bucket."""
    if rip < 0xFFFF_8000_0000_0000:
        return "[guest user space]"
    i = bisect.bisect_right(addrs, rip) - 1
    return names[i] if i >= 0 else "[unknown kernel]"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile")
    ap.add_argument("--map", required=True, help="System.map of the guest kernel")
    ap.add_argument("--from-ms", type=int, default=0)
    ap.add_argument("--to-ms", type=int, default=1 << 62)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--timeline", type=int, default=0, help="bucket width in ms (0: off)")
    args = ap.parse_args()

    syms = load_map(args.map)
    addrs = [a for a, _ in syms]
    names = [n for _, n in syms]
    samples = [s for s in load_samples(args.profile) if args.from_ms <= s[0] < args.to_ms]
    if not samples:
        sys.exit("no samples in that range")
    counts = collections.Counter(symbolize(rip, addrs, names) for _, _, rip in samples)
    total = len(samples)
    print(f"{total} samples from {samples[0][0]} to {samples[-1][0]} ms")
    print(f"{'share':>6} {'samples':>8}  function")
    for name, n in counts.most_common(args.top):
        print(f"{100.0 * n / total:5.1f}% {n:8d}  {name}")
    if args.timeline:
        print(f"\ntimeline, {args.timeline} ms buckets: samples, top functions")
        buckets = collections.defaultdict(collections.Counter)
        for ms, _, rip in samples:
            buckets[ms // args.timeline][symbolize(rip, addrs, names)] += 1
        for b in sorted(buckets):
            c = buckets[b]
            top = ", ".join(f"{n} {k}" for n, k in ((name, k) for name, k in c.most_common(3)))
            print(f"{b * args.timeline / 1000:7.1f}s {sum(c.values()):5d}  {top}")


if __name__ == "__main__":
    main()
