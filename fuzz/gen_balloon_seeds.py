#!/usr/bin/env python3
"""Seed corpus for fuzz/corpus/virtio_balloon (run from fuzz/).

Header [flags, queue, size_log]; flags: 1 EVENT_IDX, 2 INDIRECT_DESC,
4 STATS_VQ, 8 REPORTING, 16 request statistics between two passes.
Guest RAM is 64 KiB at 0 (frames 0..15) and 4 KiB at 0x20000 (frame 0x20,
which the fuzz back end refuses as read-only).
"""
import os
import struct

NEXT, WRITE = 1, 2


def desc(img, i, addr, ln, flags, nxt=0):
    struct.pack_into("<QIHH", img, 16 * i, addr, ln, flags, nxt)


def avail(img, heads):
    struct.pack_into("<HH", img, 0x200, 0, len(heads))
    for k, h in enumerate(heads):
        struct.pack_into("<H", img, 0x204 + 2 * k, h)


def save(name, header, img):
    os.makedirs("corpus/virtio_balloon", exist_ok=True)
    with open(f"corpus/virtio_balloon/{name}", "wb") as f:
        f.write(bytes(header) + bytes(img).rstrip(b"\0"))


def pfns(name, queue, frames):
    img = bytearray(0x2000)
    data = b"".join(struct.pack("<I", p) for p in frames)
    img[0x1000:0x1000 + len(data)] = data
    desc(img, 0, 0x1000, len(data), 0)
    avail(img, [0])
    save(name, [0, queue, 2], img)


pfns("inflate_runs", 0, [8, 9, 10, 12])
pfns("inflate_hostile", 0, [0x10, 0x20, 0xFFFFFFFF, 15, 16])
pfns("deflate", 1, [8, 9])

img = bytearray(0x2000)
stats = b"".join(struct.pack("<HQ", t, v) for t, v in [(4, 1 << 20), (6, 2 << 20), (7, 4096)])
img[0x1000:0x1000 + len(stats)] = stats
desc(img, 0, 0x1000, len(stats), 0)
avail(img, [0])
save("stats", [4 | 16, 2, 2], img)

img = bytearray(0x1000)
desc(img, 0, 0x4000, 0x2000, WRITE | NEXT, 1)
desc(img, 1, 0x8800, 0x1000, WRITE | NEXT, 2)
desc(img, 2, 0x20000, 0x1000, WRITE, 0)
avail(img, [0])
save("reporting", [8, 2, 2], img)
save("reporting_after_stats", [4 | 8, 3, 2], img)
