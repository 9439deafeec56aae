#!/usr/bin/env python3
"""Writes seed inputs for the virtio_blk_request target (format in its doc
comment) into seeds/virtio_blk_request/, plus the ring-aliasing hang
reproducer into regressions/virtio_blk_request/."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "virtio_blk_request")
REG = os.path.join(HERE, "..", "regressions", "virtio_blk_request")

NEXT, WRITE, INDIRECT = 1, 2, 4
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WZ = 0, 1, 4, 8, 11, 13
DATA = 0x10000  # buffers live from here on


def header(kind, sector=0):
    return struct.pack("<IIQ", kind, 0, sector)


def desc(addr, length, flags, nxt, payload=b""):
    return struct.pack("<QIHHH", addr, length, flags, nxt, len(payload)) + payload


def make(descs, count, flags=0, log2=8, disk=64 * 1024, next_avail=0,
         next_used=0, layout=None, ring=(), blobs=b""):
    b = struct.pack("<BBIHHHHH", flags | (0x40 if layout else 0), log2, disk,
                    next_avail, next_used, count, 0, 0)
    if layout:
        b += struct.pack("<QQQ", *layout)
    b += struct.pack("<B", len(descs)) + b"".join(descs)
    b += struct.pack("<B", len(ring)) + b"".join(struct.pack("<H", r) for r in ring)
    return b + blobs


def request(kind, data_len, writable_data, base, sector=0, first=0, payload=b""):
    """A 3-descriptor request: header, data, status at table index first.."""
    h = base
    d = base + 0x100
    s = base + 0x100 + max(data_len, 1) + 0x10
    dflags = NEXT | (WRITE if writable_data else 0)
    return [
        desc(h, 16, NEXT, first + 1, header(kind, sector)),
        desc(d, data_len, dflags, first + 2, payload),
        desc(s, 1, WRITE, 0),
    ]


def main():
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(REG, exist_ok=True)
    seeds = {}
    seeds["read"] = make(request(T_IN, 1024, True, DATA), 1)
    seeds["write"] = make(request(T_OUT, 512, False, DATA, 3, payload=b"\xaa" * 512), 1)
    seeds["write-ro"] = make(request(T_OUT, 512, False, DATA, 3), 1, flags=0x04)
    seeds["read-rawfile"] = make(request(T_IN, 512, True, DATA, 1), 1, flags=0x01)
    seeds["write-rawfile"] = make(request(T_OUT, 512, False, DATA, 2), 1, flags=0x01)
    seeds["flush"] = make([desc(DATA, 16, NEXT, 1, header(T_FLUSH)),
                           desc(DATA + 0x100, 1, WRITE, 0)], 1)
    seeds["get-id"] = make(request(T_GET_ID, 20, True, DATA), 1)
    seg = struct.pack("<QII", 1, 4, 0)
    seeds["discard"] = make(request(T_DISCARD, 16, False, DATA, payload=seg), 1, flags=0x02)
    segu = struct.pack("<QII", 2, 8, 1)
    seeds["write-zeroes"] = make(request(T_WZ, 16, False, DATA, payload=segu), 1, flags=0x02)
    seeds["write-zeroes-rawfile"] = make(
        request(T_WZ, 16, False, DATA, payload=segu), 1, flags=0x03)
    # Two chains, EVENT_IDX, wrapping indices.
    two = request(T_IN, 512, True, DATA) + request(T_OUT, 512, False, DATA + 0x1000, 5, first=3)
    seeds["two-chains-eventidx"] = make(two, 2, flags=0x90, log2=3,
                                        next_avail=0xffff, next_used=0xffff, ring=(0, 3))
    # Header and status in one chain split over several small descriptors.
    parts = [desc(DATA, 8, NEXT, 1, header(T_IN)[:8]),
             desc(DATA + 0x20, 8, NEXT, 2, header(T_IN)[8:]),
             desc(DATA + 0x40, 256, NEXT | WRITE, 3),
             desc(DATA + 0x200, 257, WRITE, 0)]
    seeds["split-descs"] = make(parts, 1)
    # Indirect table holding a full request.
    table = b"".join([
        struct.pack("<QIHH", DATA + 0x1000, 16, NEXT, 1),
        struct.pack("<QIHH", DATA + 0x1100, 512, NEXT | WRITE, 2),
        struct.pack("<QIHH", DATA + 0x1400, 1, WRITE, 0),
    ])
    blobs = struct.pack("<IH", DATA + 0x1000, 16) + header(T_IN, 7)
    seeds["indirect"] = make([desc(DATA, 48, INDIRECT, 0, table)], 1, blobs=blobs)
    # Buffer straddling the hole of the split layout (0x80000..0x81000).
    seeds["straddle-hole"] = make(request(T_IN, 512, True, 0x7ff00), 1, flags=0x08)
    # Past the end of the disk, and a zero-sized disk.
    seeds["read-past-end"] = make(request(T_IN, 1024, True, DATA, 127), 1)
    seeds["read-empty-disk"] = make(request(T_IN, 512, True, DATA), 1, disk=0)
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    # Open finding: the used ring placed over the avail ring; each used
    # entry bumps avail.idx, so the worker never stops draining.
    hang = make([], 0, log2=0, next_avail=0xffff, next_used=0,
                layout=(0x3000, 0x4000, 0x4000))
    with open(os.path.join(REG, "hang-used-ring-aliases-avail-idx"), "wb") as f:
        f.write(hang)


if __name__ == "__main__":
    main()
