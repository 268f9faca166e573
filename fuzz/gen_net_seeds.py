#!/usr/bin/env python3
"""Seed corpora for fuzz/corpus/virtio_net_tx and virtio_net_ctrl (run from fuzz/)."""
import os
import struct

NEXT, WRITE, INDIRECT = 1, 2, 4


def image(size=0x5000):
    return bytearray(size)


def desc(img, table, i, addr, ln, flags, nxt):
    struct.pack_into("<QIHH", img, table + 16 * i, addr, ln, flags, nxt)


def avail(img, base, heads):
    struct.pack_into("<HH", img, base + 0x200, 0, len(heads))
    for k, h in enumerate(heads):
        struct.pack_into("<H", img, base + 0x204 + 2 * k, h)


def save(target, name, header, img):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(bytes(header) + bytes(img).rstrip(b"\0"))


def frame(dst=b"\xff" * 6, ln=60):
    f = dst + b"\x52\x54\x00\x00\x00\x02" + b"\x08\x00"
    return f + bytes((i * 7 + 1) & 0xFF for i in range(ln - len(f)))


def hdr(flags=0, gso=0, hdr_len=0, gso_size=0, cs=0, co=0):
    return struct.pack("<BBHHHHH", flags, gso, hdr_len, gso_size, cs, co, 0)


RX, TX = 0x0, 0x800
# tx: header [size_log, flags, offloads, 4 frame lengths / 16]

img = image()
img[0x1000:0x1000 + 72] = hdr() + frame()
desc(img, TX, 0, 0x1000, 72, 0, 0)
avail(img, TX, [0])
desc(img, RX, 0, 0x2000, 2048, WRITE, 0)
avail(img, RX, [0])
img[0x4000:0x4000 + 64] = frame(ln=64)
save("virtio_net_tx", "one_frame_each_way", [4, 0, 0, 4, 0, 0, 0], img)

img = image()
f = frame(b"\x52\x54\x00\x12\x34\x56", 200)
h = hdr(1, 1, 54, 100, 34, 16)
img[0x1000:0x1000 + 5] = h[:5]
img[0x1100:0x1100 + 7 + len(f)] = h[5:] + f
desc(img, TX, 0, 0x1000, 5, NEXT, 1)
desc(img, TX, 1, 0x1100, 7 + len(f), 0, 0)
avail(img, TX, [0])
for k in range(3):
    desc(img, RX, k, 0x2000 + 0x100 * k, 64, WRITE, 0)
avail(img, RX, [0, 1, 2])
img[0x4000:0x4000 + 160] = frame(ln=160)
save("virtio_net_tx", "tso_split_header_merged_rx", [4, 1 | 4 | 8, 0xFF, 10, 1, 0, 0], img)

img = image()
img[0x1000:0x1000 + 72] = hdr() + frame()
desc(img, 0x3000, 0, 0x1000, 12, NEXT, 1)
desc(img, 0x3000, 1, 0x100C, 60, 0, 0)
desc(img, TX, 0, 0x3000, 32, INDIRECT, 0)
avail(img, TX, [0])
desc(img, 0x3100, 0, 0x2000, 12, WRITE, 1)
desc(img, 0x3100, 1, 0x2100, 2000, WRITE, 0)
desc(img, RX, 0, 0x3100, 32, INDIRECT, 0)
avail(img, RX, [0])
img[0x4000:0x4000 + 96] = frame(ln=96)
save("virtio_net_tx", "indirect_tables", [3, 2, 0, 6, 0, 0, 0], img)

img = image()
img[0x1000:0x1000 + 72] = hdr(2) + frame()
desc(img, TX, 0, 0x1000, 72, 0, 0)
desc(img, TX, 1, 0x1000, 20, NEXT, 2)
desc(img, TX, 2, 0x1100, 8, WRITE, 0)
desc(img, TX, 3, 0x1000, 25, 0, 0)
avail(img, TX, [0, 1, 3])
desc(img, RX, 0, 0x2000, 64, 0, 0)
desc(img, RX, 1, 0x2100, 8, WRITE, 0)
avail(img, RX, [0, 1])
img[0x4000:0x4000 + 48] = frame(ln=48)
save("virtio_net_tx", "malformed_mix", [3, 4 | 8 | 64, 0x11, 3, 3, 0, 0], img)

# ctrl: header [size_log, flags(1 event_idx, 2 indirect, 4 CTRL_RX, 8 CTRL_MAC_ADDR, 16 GUEST_OFFLOADS)]


def ctrl(name, flags, commands):
    img = image(0x3000)
    heads = []
    d = 0
    for k, cmd in enumerate(commands):
        at = 0x1000 + 0x100 * k
        img[at:at + len(cmd)] = cmd
        desc(img, 0, d, at, len(cmd), NEXT, d + 1)
        desc(img, 0, d + 1, 0x2000 + k, 1, WRITE, 0)
        heads.append(d)
        d += 2
    avail(img, 0, heads)
    save("virtio_net_ctrl", name, [4, flags], img)


table = struct.pack("<I", 1) + b"\x52\x54\x00\x00\x00\x09" + struct.pack("<I", 1) + b"\x01\x00\x5e\x00\x00\xfb"
ctrl("rx_mode_and_tables", 4, [b"\x00\x00\x00", b"\x00\x01\x01", b"\x01\x00" + table])
ctrl("mac_addr_set", 8, [b"\x01\x01\x02\x00\x00\x00\x00\x42"])
ctrl("guest_offloads_set", 16, [b"\x05\x00" + struct.pack("<Q", 2), b"\x05\x00" + struct.pack("<Q", 0x80)])
ctrl("malformed", 4 | 8 | 16, [b"\x00", b"\x00\x00\x02", b"\x01\x00" + struct.pack("<I", 0xFFFFFFFF), b"\x09\x09"])
