#!/usr/bin/env python3
"""Extract the uncompressed ELF vmlinux from an x86 bzImage.

The compressed kernel's place is read from the boot protocol header (setup_sects at 0x1f1,
payload_offset/payload_length at 0x248/0x24c, protocol 2.08+) rather than guessed; the
payload's magic then names the compression, and the matching standard tool decompresses it.
Kbuild appends the uncompressed size (4 bytes, little endian) to LZ4, XZ, LZMA and zstd
payloads; it is checked against the output.

    extract-vmlinux.py BZIMAGE OUTPUT
"""

import struct
import subprocess
import sys

# magic prefix -> (name, decompress command, kbuild appended the size)
FORMATS = [
    (b"\x02\x21\x4c\x18", "lz4", ["lz4", "-d", "-c"], True),
    (b"\xfd7zXZ\x00", "xz", ["xz", "-d", "-c"], True),
    (b"\x28\xb5\x2f\xfd", "zstd", ["zstd", "-d", "-c"], True),
    (b"\x5d\x00\x00", "lzma", ["xz", "--format=lzma", "-d", "-c"], True),
    (b"\x1f\x8b", "gzip", ["gzip", "-d", "-c"], False),
]


def fail(msg):
    print(f"extract-vmlinux: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        fail("usage: extract-vmlinux.py BZIMAGE OUTPUT")
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        image = f.read()
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        fail(f"{src}: no x86 boot protocol header (HdrS)")
    version = struct.unpack_from("<H", image, 0x206)[0]
    if version < 0x208:
        fail(f"{src}: boot protocol {version:#x} has no payload fields (needs 2.08+)")
    setup_sects = image[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = image[start : start + payload_length]
    if len(payload) != payload_length:
        fail(f"{src}: payload {start:#x}+{payload_length:#x} runs past the file end")
    for magic, name, cmd, sized in FORMATS:
        if payload.startswith(magic):
            break
    else:
        fail(f"{src}: unknown compression, payload starts {payload[:8].hex()}")
    data = payload[:-4] if sized else payload
    out = subprocess.run(cmd, input=data, stdout=subprocess.PIPE, check=False)
    if out.returncode != 0:
        fail(f"{src}: {' '.join(cmd)} failed with status {out.returncode}")
    vmlinux = out.stdout
    if sized:
        expected = struct.unpack("<I", payload[-4:])[0]
        if expected != len(vmlinux):
            fail(f"{src}: {name} output is {len(vmlinux)} bytes, header says {expected}")
    if not vmlinux.startswith(b"\x7fELF"):
        fail(f"{src}: decompressed {name} payload is not an ELF file")
    with open(dst, "wb") as f:
        f.write(vmlinux)
    print(f"extract-vmlinux: {src}: {name} payload, {len(vmlinux)} bytes of ELF -> {dst}")


main()
