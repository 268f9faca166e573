#!/usr/bin/env python3
"""Writes the seed corpora in corpus/<target>/ (run from fuzz/)."""
import os
import struct

NEXT, WRITE, INDIRECT = 1, 2, 4
AVAIL_F, USED_F = 1 << 7, 1 << 15


def image(size=0x1000):
    return bytearray(size)


def split_desc(img, table, i, addr, ln, flags, nxt):
    struct.pack_into("<QIHH", img, table + 16 * i, addr, ln, flags, nxt)


def packed_desc(img, i, addr, ln, bid, flags, table=0):
    struct.pack_into("<QIHH", img, table + 16 * i, addr, ln, bid, flags)


def avail(img, heads):
    struct.pack_into("<HH", img, 0x200, 0, len(heads))
    for k, h in enumerate(heads):
        struct.pack_into("<H", img, 0x204 + 2 * k, h)


def save(target, name, header, img):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(bytes(header) + bytes(img).rstrip(b"\0"))


# Split: header [size_log, flags(1 event_idx, 2 indirect, 4 access, 8 interleave), start_lo, start_hi]
img = image()
split_desc(img, 0, 0, 0x1000, 16, NEXT, 1)
split_desc(img, 0, 1, 0x2000, 64, WRITE, 0)
avail(img, [0])
save("split_queue", "valid_two_descriptors", [4, 0, 0, 0], img)

img = image()
for k in range(3):
    split_desc(img, 0, k, 0x1000 + 0x100 * k, 32, WRITE, 0)
avail(img, [0, 1, 2])
save("split_queue", "three_single_chains_event_idx", [4, 1 | 4 | 8, 0, 0], img)

img = image()
split_desc(img, 0x800, 0, 0x1000, 16, NEXT, 1)
split_desc(img, 0x800, 1, 0x2000, 64, WRITE, 0)
split_desc(img, 0, 0, 0x800, 32, INDIRECT, 0)
avail(img, [0])
save("split_queue", "indirect_table", [4, 2, 0, 0], img)

img = image()
split_desc(img, 0, 0, 0x1000, 16, NEXT, 1)
split_desc(img, 0, 1, 0x1000, 16, NEXT, 0)
avail(img, [0])
save("split_queue", "loop", [3, 0, 0, 0], img)

img = image()
struct.pack_into("<HH", img, 0x200, 0, 40)
save("split_queue", "avail_jump", [4, 0, 0, 0], img)

# Packed: header [size, flags]
img = image()
packed_desc(img, 0, 0x1000, 16, 7, AVAIL_F | NEXT)
packed_desc(img, 1, 0x2000, 64, 7, AVAIL_F | WRITE)
save("packed_queue", "valid_two_descriptors", [16, 0], img)

img = image()
packed_desc(img, 0, 0x1000, 16, 0, NEXT, table=0x800)
packed_desc(img, 1, 0x2000, 64, 0, WRITE, table=0x800)
packed_desc(img, 0, 0x800, 32, 3, AVAIL_F | INDIRECT)
struct.pack_into("<HH", img, 0x400, 0x8001, 2)
save("packed_queue", "indirect_event_idx", [16, 1 | 2 | 8], img)

img = image()
for k in range(4):
    packed_desc(img, k, 0x1000, 16, k, AVAIL_F | NEXT)
save("packed_queue", "list_longer_than_ring", [3, 0], img)

# virtio-blk: header [size_log, flags(1 event_idx, 2 indirect, 4 read-only,
# 8 flush negotiated, 16 failing disk), sectors]; request header at 0x1000,
# data at 0x1100, status at 0x2000.
T_IN, T_OUT, T_FLUSH, T_GET_ID = 0, 1, 4, 8


def blk_header(img, at, t, sector):
    struct.pack_into("<IIQ", img, at, t, 0, sector)


def blk_chain(img, first, bufs):
    """bufs: (addr, len, writable); descriptors first, first+1, ..."""
    for k, (a, ln, wr) in enumerate(bufs):
        flags = (WRITE if wr else 0) | (NEXT if k + 1 < len(bufs) else 0)
        split_desc(img, 0, first + k, a, ln, flags, first + k + 1)


img = image(0x1400)
blk_header(img, 0x1000, T_OUT, 2)
img[0x1100:0x1300] = bytes(range(256)) * 2
blk_chain(img, 0, [(0x1000, 16, False), (0x1100, 512, False), (0x2000, 1, True)])
avail(img, [0])
save("virtio_blk_request", "write_one_sector", [4, 0, 16], img)

img = image(0x1400)
blk_header(img, 0x1000, T_IN, 15)
blk_header(img, 0x1010, T_FLUSH, 0)
blk_chain(img, 0, [(0x1000, 16, False), (0x1100, 512, True), (0x2000, 1, True)])
blk_chain(img, 3, [(0x1010, 16, False), (0x2001, 1, True)])
avail(img, [0, 3])
save("virtio_blk_request", "read_last_sector_then_flush", [4, 8, 16], img)

img = image(0x1400)
blk_header(img, 0x1000, T_GET_ID, 0)
blk_chain(img, 0, [(0x1000, 16, False), (0x1100, 20, True), (0x2000, 1, True)])
avail(img, [0])
save("virtio_blk_request", "get_id", [3, 0, 1], img)

img = image(0x1400)
blk_header(img, 0x1000, T_OUT, 0)
blk_chain(img, 0, [(0x1000, 8, False), (0x2000, 1, True)])
blk_header(img, 0x1010, T_IN, 1 << 60)
blk_chain(img, 2, [(0x1010, 16, False), (0x1100, 1024, True), (0x2001, 1, True)])
blk_header(img, 0x1020, T_IN, 0)
blk_chain(img, 5, [(0x1020, 16, False), (0x1100, 100, True), (0x2002, 1, True)])
blk_header(img, 0x1030, 11, 0)
blk_chain(img, 8, [(0x1030, 16, False), (0x2003, 1, True)])
avail(img, [0, 2, 5, 8])
save("virtio_blk_request", "malformed_mix", [4, 0, 8], img)

img = image(0x1400)
blk_header(img, 0x1000, T_OUT, 1)
split_desc(img, 0x800, 0, 0x1000, 16, NEXT, 1)
split_desc(img, 0x800, 1, 0x1100, 512, NEXT, 2)
split_desc(img, 0x800, 2, 0x2000, 1, WRITE, 0)
split_desc(img, 0, 0, 0x800, 48, INDIRECT, 0)
avail(img, [0])
save("virtio_blk_request", "indirect_event_idx_read_only", [4, 1 | 2 | 4, 4], img)

img = image(0x1400)
blk_header(img, 0x1000, T_IN, 0)
blk_chain(img, 0, [(0x1000, 16, False), (0x1100, 512, True), (0x2000, 1, True)])
avail(img, [0])
save("virtio_blk_request", "failing_disk", [4, 16, 4], img)

# mmio_restore: [flags, mask_lo, mask_hi, which queue to perturb], then the memory image
# (mask 0: no raw values). A live console; queue 0 (receive) at 0x0/0x1000/0x1100, queue 1
# (transmit) at 0x2000/0x3000/0x3100; 16 entries each; buffers at 0x4000.
for packed in (False, True):
    for extra, name in ((0, "plain"), (2 | 4, "event_idx_indirect")):
        img = image(0x5000)
        img[0x4000:0x4005] = b"hello"
        if packed:
            packed_desc(img, 0, 0x4000, 5, 0, AVAIL_F, table=0x2000)
            packed_desc(img, 0, 0x4800, 64, 0, AVAIL_F | WRITE, table=0x0)
        else:
            split_desc(img, 0x2000, 0, 0x4000, 5, 0, 0)
            struct.pack_into("<HHH", img, 0x3000, 0, 1, 0)
            split_desc(img, 0x0, 0, 0x4800, 64, WRITE, 0)
            struct.pack_into("<HHH", img, 0x1000, 0, 1, 0)
        flags = (1 if packed else 0) | extra
        save("mmio_restore", f"{'packed' if packed else 'split'}_{name}", [flags, 0, 0, 0], img)
# Queue 0 saved in the other layout than the features say, and raw queue values.
save("mmio_restore", "layout_mismatch", [1 | 8, 0, 0, 0], image(0x100))
save("mmio_restore", "packed_raw_positions", [1, 0x40, 0, 1, 3, 0, 0, 2, 1, 1, 1, 0], image(0x100))

# kernel_image: the file as is (no header byte). A minimal bzImage (boot protocol 2.15,
# 4 setup sectors, 4 KiB of kernel) and ELF vmlinux (one PT_LOAD at 16 MiB and a PVH note),
# each whole and truncated.
def save_file(target, name, img):
    """Saves `img` whole: a kernel file's length matters, so no trailing zero is dropped."""
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(bytes(img))


def bzimage(syssize=256, total=5 * 512 + 4096, init_size=0x400000):
    img = bytearray(max(total, 0x26C))
    img[0x1F1] = 4
    struct.pack_into("<I", img, 0x1F4, syssize)
    struct.pack_into("<H", img, 0x1FE, 0xAA55)
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, 0x020F)
    img[0x211] = 1
    struct.pack_into("<I", img, 0x214, 0x100000)
    struct.pack_into("<IBBH", img, 0x230, 0x200000, 1, 0, 0x7F)
    struct.pack_into("<I", img, 0x238, 2047)
    struct.pack_into("<QI", img, 0x258, 0x1000000, init_size)
    return img[:total]


def vmlinux(filesz=0x800, total=0x1800):
    img = bytearray(max(total, 64 + 2 * 56))
    img[0:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<HHI", img, 16, 2, 62, 1)
    struct.pack_into("<QQ", img, 24, 0x1000000, 64)
    struct.pack_into("<HH", img, 54, 56, 2)
    struct.pack_into("<IIQQQQQ", img, 64, 1, 7, 0x1000, 0xFFFFFFFF81000000, 0x1000000,
                     filesz, 0x2000)
    # Note: namesz 4, descsz 4, type 18 ("Xen\0", entry).
    note = struct.pack("<III4sI", 4, 4, 18, b"Xen\0", 0x1000100)
    struct.pack_into("<IIQQQQQ", img, 120, 4, 4, 0x1800 - len(note), 0, 0, len(note), len(note))
    img[0x1800 - len(note):0x1800] = note
    return img[:total]


save_file("kernel_image", "bzimage", bzimage())
save_file("kernel_image", "bzimage_truncated", bzimage(total=3000))
save_file("kernel_image", "bzimage_needs_more_ram", bzimage(init_size=0x4000000))
save_file("kernel_image", "vmlinux_pvh", vmlinux())
save_file("kernel_image", "vmlinux_truncated", vmlinux(total=0x1400))
