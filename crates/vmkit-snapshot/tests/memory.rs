//! Memory-file round trips (holes, diffs, chains) and corrupt-input cases.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::Cursor;
use std::os::unix::fs::MetadataExt;

use vmkit_snapshot::memory::{MEMORY_HEADER_LEN, REGION_ENTRY_LEN};
use vmkit_snapshot::{
    checksum, write_atomically, DiffRegion, MemoryError, MemoryFile, MemoryKind, MemoryWriter,
    RegionSource, SnapshotId, DEFAULT_CHUNK_SIZE, MAX_REGIONS, PAGE_SIZE,
};

const PAGE: usize = PAGE_SIZE as usize;
const HIGH: u64 = 0x1_0000_0000;

/// 3 MiB with a few non-zero pages (so 2 MiB chunks: one full, one half).
fn ram0() -> Vec<u8> {
    let mut m = vec![0u8; 3 << 20];
    for (i, p) in [0usize, 1, 2, 100, 600, 767].iter().enumerate() {
        m[p * PAGE..(p + 1) * PAGE].fill(i as u8 + 1);
    }
    m[12345] = 0xee; // inside page 3
    m
}

fn ram1() -> Vec<u8> {
    (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect()
}

fn write_full(regions: &[(u64, &[u8])]) -> (tempfile::TempDir, std::path::PathBuf, MemoryFile) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem");
    let hdr = write_atomically(&path, |f| MemoryWriter::new().write_full(f, regions)).unwrap();
    (dir, path, hdr)
}

fn sample_bytes() -> Vec<u8> {
    let (r0, r1) = (ram0(), ram1());
    let (_dir, path, _) = write_full(&[(0, &r0), (HIGH, &r1)]);
    std::fs::read(path).unwrap()
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn set_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Offset of field `field` (0 guest, 1 size, 2 file offset, 3 data len) of
/// region `i` in the region table.
fn entry(i: usize, field: usize) -> usize {
    MEMORY_HEADER_LEN + i * REGION_ENTRY_LEN + field * 8
}

/// Recomputes both header checksums after a deliberate edit.
fn refix(b: &mut [u8]) {
    let header_len = u64_at(b, 32) as usize;
    let t = checksum(&b[MEMORY_HEADER_LEN..header_len.clamp(MEMORY_HEADER_LEN, b.len())]);
    set_u64(b, 48, t);
    let h = checksum(&b[..88]);
    set_u64(b, 88, h);
}

fn parse_patched(f: impl FnOnce(&mut Vec<u8>)) -> Result<MemoryFile, MemoryError> {
    let mut b = sample_bytes();
    f(&mut b);
    refix(&mut b);
    MemoryFile::from_bytes(&b)
}

#[test]
fn full_round_trip_with_holes() {
    let (r0, r1) = (ram0(), ram1());
    let (_dir, path, written) = write_full(&[(0, &r0), (HIGH, &r1)]);
    let mut file = File::open(&path).unwrap();
    let mem = MemoryFile::read_header(&mut file).unwrap();
    assert_eq!(mem, written);
    assert_eq!(mem.kind(), MemoryKind::Full);
    assert_eq!(mem.chunk_size(), 2 << 20);
    let regs = mem.regions();
    assert_eq!(regs.len(), 2);
    assert_eq!((regs[0].guest_addr, regs[0].size), (0, 3 << 20));
    assert_eq!((regs[1].guest_addr, regs[1].size), (HIGH, 64 << 10));
    for r in regs {
        assert_eq!(r.file_offset % PAGE_SIZE, 0);
        assert_eq!(r.data_len, r.size);
        assert!(r.file_offset >= mem.header_len());
    }
    mem.verify_all(&mut file).unwrap();

    // Data lies verbatim at its page-aligned offset (what an mmap sees).
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, mem.file_len());
    let o = regs[0].file_offset as usize;
    assert_eq!(&bytes[o..o + r0.len()], &r0[..]);
    let o = regs[1].file_offset as usize;
    assert_eq!(&bytes[o..o + r1.len()], &r1[..]);

    let mut out0 = vec![0xffu8; r0.len()];
    mem.read_region(&mut file, 0, &mut out0).unwrap();
    assert_eq!(out0, r0);
    let mut out1 = vec![0u8; r1.len()];
    mem.read_region(&mut file, 1, &mut out1).unwrap();
    assert_eq!(out1, r1);

    // Zero pages are holes: far fewer blocks than the file's length (about
    // 7 data pages of region 0, 16 of region 1, one header page).
    let meta = std::fs::metadata(&path).unwrap();
    let allocated = meta.blocks() * 512;
    assert!(
        allocated < 1 << 20,
        "{allocated} bytes allocated for a {}-byte file",
        meta.len()
    );
}

#[test]
fn all_zero_memory_is_one_big_hole() {
    let zero = vec![0u8; 8 << 20];
    let (_dir, path, _) = write_full(&[(0, &zero)]);
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.len() > 8 << 20);
    assert!(meta.blocks() * 512 <= 64 << 10, "{} blocks", meta.blocks());
    let mut file = File::open(&path).unwrap();
    let mem = MemoryFile::read_header(&mut file).unwrap();
    mem.verify_all(&mut file).unwrap();
}

#[test]
fn writer_replaces_previous_contents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m");
    std::fs::write(&path, vec![0xaa; 1 << 20]).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let zero = vec![0u8; 64 << 10];
    let mem = MemoryWriter::new()
        .write_full(&mut f, &[(0, &zero)])
        .unwrap();
    let mut got = vec![1u8; zero.len()];
    mem.read_region(&mut f, 0, &mut got).unwrap();
    assert_eq!(got, zero);
}

fn set_page(m: &mut [u8], page: usize, v: u8) {
    m[page * PAGE..(page + 1) * PAGE].fill(v);
}

/// A diff's dirty pages are scattered in the guest but back to back in the file, so they go
/// out in vectored writes of at most 1024 slices each: 1500 of them, every other page (some
/// zero, which break a batch), and two adjacent ones, must all land where they belong.
#[test]
fn scattered_diff_pages_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let pages = 3200usize;
    let mut ram = vec![0u8; pages * PAGE];
    let base = dir.path().join("base");
    write_atomically(&base, |f| MemoryWriter::new().write_full(f, &[(0, &ram)])).unwrap();
    let mut dirty: Vec<u64> = (0..1500u64).map(|k| 2 * k).collect();
    dirty.push(3001);
    for &p in &dirty {
        // Every seventh dirty page written back to zero.
        let fill = if p % 7 == 0 { 0 } else { (p % 251) as u8 + 1 };
        set_page(&mut ram, p as usize, fill);
    }
    let diff = dir.path().join("diff");
    let written = write_atomically(&diff, |f| {
        MemoryWriter::new().write_diff(
            f,
            &[DiffRegion {
                guest_addr: 0,
                contents: &ram,
                dirty_pages: &dirty,
            }],
        )
    })
    .unwrap();
    assert_eq!(written.dirty_pages(0).unwrap().len(), dirty.len());

    let mut f = File::open(&base).unwrap();
    let b = MemoryFile::read_header(&mut f).unwrap();
    let mut restored = vec![0u8; pages * PAGE];
    b.read_region(&mut f, 0, &mut restored).unwrap();
    let mut f = File::open(&diff).unwrap();
    let d = MemoryFile::read_header(&mut f).unwrap();
    d.verify_all(&mut f).unwrap();
    d.apply_diff(&mut f, &mut [(0, &mut restored[..])]).unwrap();
    assert!(restored == ram, "the diff did not restore every dirty page");
}

#[test]
fn diff_chain_applies_on_base() {
    let dir = tempfile::tempdir().unwrap();
    let w = MemoryWriter::with_chunk_size(16 * 1024).unwrap(); // 4 pages a chunk
    let mut ram = vec![0u8; 1 << 20];
    let mut hi = vec![0u8; 64 << 10];
    set_page(&mut ram, 3, 1);
    set_page(&mut ram, 17, 2);
    hi[5] = 9;
    let base = dir.path().join("base");
    write_atomically(&base, |f| w.write_full(f, &[(0, &ram), (HIGH, &hi)])).unwrap();

    // First interval: pages 3, 17, 200 written (17 to zero); hi page 1.
    set_page(&mut ram, 3, 0x33);
    set_page(&mut ram, 17, 0);
    set_page(&mut ram, 200, 0x44);
    hi[PAGE + 1] = 0x55;
    let d1 = dir.path().join("d1");
    let diff1 = write_atomically(&d1, |f| {
        w.write_diff(
            f,
            &[
                DiffRegion {
                    guest_addr: 0,
                    contents: &ram,
                    dirty_pages: &[200, 3, 17, 3],
                },
                DiffRegion {
                    guest_addr: HIGH,
                    contents: &hi,
                    dirty_pages: &[1],
                },
            ],
        )
    })
    .unwrap();
    assert_eq!(diff1.kind(), MemoryKind::Diff);
    assert_eq!(diff1.dirty_pages(0).unwrap(), &[3, 17, 200]);
    assert_eq!(diff1.dirty_pages(1).unwrap(), &[1]);
    assert_eq!(diff1.regions()[0].data_len, 3 * PAGE_SIZE);

    // Second interval: only the low region.
    set_page(&mut ram, 200, 0x66);
    set_page(&mut ram, 255, 0x77);
    let d2 = dir.path().join("d2");
    write_atomically(&d2, |f| {
        w.write_diff(
            f,
            &[DiffRegion {
                guest_addr: 0,
                contents: &ram,
                dirty_pages: &[255, 200],
            }],
        )
    })
    .unwrap();

    // Restore the chain: base, then each diff in order.
    let mut f = File::open(&base).unwrap();
    let b = MemoryFile::read_header(&mut f).unwrap();
    let mut r_ram = vec![0u8; b.regions()[0].size as usize];
    let mut r_hi = vec![0u8; b.regions()[1].size as usize];
    b.read_region(&mut f, 0, &mut r_ram).unwrap();
    b.read_region(&mut f, 1, &mut r_hi).unwrap();
    for path in [&d1, &d2] {
        let mut f = File::open(path).unwrap();
        let d = MemoryFile::read_header(&mut f).unwrap();
        d.verify_all(&mut f).unwrap();
        d.apply_diff(&mut f, &mut [(HIGH, &mut r_hi[..]), (0, &mut r_ram[..])])
            .unwrap();
    }
    assert!(r_ram == ram, "low region differs after the chain");
    assert!(r_hi == hi, "high region differs after the chain");

    // A diff cannot be applied to a base that lacks its region.
    let mut f = File::open(&d1).unwrap();
    let d = MemoryFile::read_header(&mut f).unwrap();
    assert!(matches!(
        d.apply_diff(&mut f, &mut [(0, &mut r_ram[..])]),
        Err(MemoryError::NoBaseRegion {
            region: 1,
            guest_addr: HIGH,
            ..
        })
    ));
    // And a full file is not a diff.
    let mut f = File::open(&base).unwrap();
    assert!(matches!(
        b.apply_diff(&mut f, &mut []),
        Err(MemoryError::KindMismatch {
            expected: MemoryKind::Diff,
            found: MemoryKind::Full
        })
    ));
}

#[test]
fn empty_diff_region() {
    let dir = tempfile::tempdir().unwrap();
    let ram = vec![1u8; 64 << 10];
    let path = dir.path().join("d");
    let d = write_atomically(&path, |f| {
        MemoryWriter::new().write_diff(
            f,
            &[DiffRegion {
                guest_addr: 0,
                contents: &ram,
                dirty_pages: &[],
            }],
        )
    })
    .unwrap();
    assert_eq!(d.regions()[0].data_len, 0);
    let mut f = File::open(&path).unwrap();
    let mut base = vec![0u8; ram.len()];
    MemoryFile::read_header(&mut f)
        .unwrap()
        .apply_diff(&mut f, &mut [(0, &mut base[..])])
        .unwrap();
    assert!(base.iter().all(|&b| b == 0));
}

#[test]
fn region_table_overlapping_in_file() {
    let err = parse_patched(|b| {
        let off0 = u64_at(b, entry(0, 2));
        set_u64(b, entry(1, 2), off0);
    });
    assert!(matches!(
        err,
        Err(MemoryError::RegionsOverlapInFile {
            first: 0,
            second: 1
        })
    ));
}

#[test]
fn region_table_overlapping_in_guest() {
    let err = parse_patched(|b| set_u64(b, entry(1, 0), 0x10_0000));
    assert!(matches!(
        err,
        Err(MemoryError::RegionsOverlapInGuest {
            first: 0,
            second: 1
        })
    ));
}

#[test]
fn region_table_unaligned() {
    let cases: [(usize, u64, &str); 4] = [
        (0, HIGH + 0x800, "guest address"),
        (1, (64 << 10) + 1, "size"),
        (2, 0, "file offset"), // replaced below by offset + 0x800
        (3, 0x1001, "data length"),
    ];
    for (field, value, name) in cases {
        let err = parse_patched(|b| {
            let v = if field == 2 {
                u64_at(b, entry(1, 2)) + 0x800
            } else {
                value
            };
            set_u64(b, entry(1, field), v);
        });
        match err {
            Err(MemoryError::RegionUnaligned { region, field, .. }) => {
                assert_eq!((region, field), (1, name))
            }
            other => panic!("{name}: unexpected {other:?}"),
        }
    }
}

#[test]
fn region_table_outside_the_file() {
    let b = sample_bytes();
    let len = b.len() as u64;
    let err = parse_patched(|b| set_u64(b, entry(1, 2), len));
    assert!(matches!(
        err,
        Err(MemoryError::RegionOutsideFile { region: 1, end, file_len })
            if file_len == len && end == len + (64 << 10)
    ));
    // Huge offset: saturates instead of wrapping.
    let err = parse_patched(|b| set_u64(b, entry(1, 2), !0xfffu64));
    assert!(matches!(
        err,
        Err(MemoryError::RegionOutsideFile {
            region: 1,
            end: u64::MAX,
            ..
        })
    ));
    let err = parse_patched(|b| set_u64(b, entry(0, 2), 0));
    assert!(matches!(
        err,
        Err(MemoryError::RegionInHeader {
            region: 0,
            file_offset: 0,
            ..
        })
    ));
}

#[test]
fn region_table_bad_sizes() {
    assert!(matches!(
        parse_patched(|b| set_u64(b, entry(1, 1), 0)),
        Err(MemoryError::RegionRange {
            region: 1,
            size: 0,
            ..
        })
    ));
    assert!(matches!(
        parse_patched(|b| set_u64(b, entry(1, 0), !0xfffu64)),
        Err(MemoryError::RegionRange { region: 1, .. })
    ));
    assert!(matches!(
        parse_patched(|b| set_u64(b, entry(1, 3), 4096)),
        Err(MemoryError::RegionDataLen {
            region: 1,
            kind: MemoryKind::Full,
            data_len: 4096,
            ..
        })
    ));
}

#[test]
fn chunk_checksum_mismatch() {
    let (r0, r1) = (ram0(), ram1());
    let (_dir, path, mem) = write_full(&[(0, &r0), (HIGH, &r1)]);
    let mut bytes = std::fs::read(&path).unwrap();
    // Page 600 of region 0 is in its second 2 MiB chunk.
    let pos = mem.regions()[0].file_offset as usize + 600 * PAGE + 17;
    bytes[pos] ^= 0x01;
    let mut cur = Cursor::new(bytes);
    let m = MemoryFile::read_header(&mut cur).unwrap(); // headers are fine
    let err = m.verify_region(&mut cur, 0).unwrap_err();
    assert!(matches!(
        err,
        MemoryError::ChunkChecksum {
            region: 0,
            guest_addr: 0,
            chunk: 1,
            ..
        }
    ));
    assert!(err.to_string().contains("chunk #1"), "{err}");
    m.verify_region(&mut cur, 1).unwrap();
    let mut out = vec![0u8; r0.len()];
    assert!(matches!(
        m.read_region(&mut cur, 0, &mut out),
        Err(MemoryError::ChunkChecksum { chunk: 1, .. })
    ));
    // A flipped bit in a hole also counts: the hole reads as zero no more.
    let mut bytes = cur.into_inner();
    bytes[pos] ^= 0x01;
    let hole = mem.regions()[0].file_offset as usize + 300 * PAGE;
    bytes[hole] = 1;
    let mut cur = Cursor::new(bytes);
    assert!(matches!(
        m.verify_region(&mut cur, 0),
        Err(MemoryError::ChunkChecksum { chunk: 0, .. })
    ));
}

#[test]
fn header_and_table_checksums() {
    let good = sample_bytes();
    for byte in 8..88 {
        let mut b = good.clone();
        b[byte] ^= 0x04;
        let r = MemoryFile::from_bytes(&b);
        // Bytes 8..10 (major) may read as a newer version instead.
        let ok = matches!(r, Err(MemoryError::HeaderChecksum { .. }))
            || (byte < 10 && matches!(r, Err(MemoryError::UnsupportedMajor { .. })));
        assert!(ok, "byte {byte}: {r:?}");
    }
    let mut b = good.clone();
    b[88] ^= 1;
    assert!(matches!(
        MemoryFile::from_bytes(&b),
        Err(MemoryError::HeaderChecksum { .. })
    ));
    let header_len = u64_at(&good, 32) as usize;
    for byte in [96, 102, header_len - 1] {
        let mut b = good.clone();
        b[byte] ^= 0x80;
        assert!(
            matches!(
                MemoryFile::from_bytes(&b),
                Err(MemoryError::TablesChecksum { .. })
            ),
            "byte {byte}"
        );
    }
}

#[test]
fn fixed_header_fields() {
    let mut b = sample_bytes();
    b[0..8].copy_from_slice(b"VMKITSNP");
    assert!(
        matches!(MemoryFile::from_bytes(&b), Err(MemoryError::BadMagic { found }) if &found == b"VMKITSNP")
    );
    assert!(matches!(
        parse_patched(|b| b[8..10].copy_from_slice(&3u16.to_le_bytes())),
        Err(MemoryError::UnsupportedMajor {
            found: 3,
            supported: 2
        })
    ));
    assert!(parse_patched(|b| b[10..12].copy_from_slice(&5u16.to_le_bytes())).is_ok());
    assert!(matches!(
        parse_patched(|b| b[12..14].copy_from_slice(&3u16.to_le_bytes())),
        Err(MemoryError::UnknownKind(3))
    ));
    assert!(matches!(
        parse_patched(|b| b[16..20].copy_from_slice(&65536u32.to_le_bytes())),
        Err(MemoryError::BadPageSize(65536))
    ));
    for bad in [0u32, 2048, 3 << 20, 32 << 20] {
        assert!(matches!(
            parse_patched(|b| b[20..24].copy_from_slice(&bad.to_le_bytes())),
            Err(MemoryError::BadChunkSize(v)) if v == bad
        ));
    }
    assert!(matches!(
        parse_patched(|b| b[24..28].copy_from_slice(&(MAX_REGIONS + 1).to_le_bytes())),
        Err(MemoryError::TooManyRegions { count, max: MAX_REGIONS }) if count == u64::from(MAX_REGIONS) + 1
    ));
    // A smaller chunk size makes the checksum table outgrow the header area.
    assert!(matches!(
        parse_patched(|b| b[20..24].copy_from_slice(&4096u32.to_le_bytes())),
        Err(MemoryError::TablesTooLong { .. })
    ));
}

#[test]
fn header_length_checks() {
    let good = sample_bytes();
    let file_len = good.len() as u64;
    for bad in [0u64, 100, 4096 + 8, file_len + 4096] {
        match parse_patched(|b| set_u64(b, 32, bad)) {
            Err(MemoryError::BadHeaderLen { header_len, .. }) => assert_eq!(header_len, bad),
            other => panic!("header_len {bad}: unexpected {other:?}"),
        }
    }
}

#[test]
fn file_length_checks() {
    let mut b = sample_bytes();
    let len = b.len() as u64;
    b.extend_from_slice(&[0; PAGE]);
    assert!(matches!(
        MemoryFile::from_bytes(&b),
        Err(MemoryError::FileLenMismatch { declared, actual }) if declared == len && actual == len + 4096
    ));
    // Every truncation of the header area.
    let good = sample_bytes();
    for cut in 0..2 * PAGE {
        let r = MemoryFile::from_bytes(&good[..cut]);
        if cut < MEMORY_HEADER_LEN {
            assert!(
                matches!(r, Err(MemoryError::Truncated { needed: 96, got }) if got == cut as u64),
                "cut {cut}: {r:?}"
            );
        } else {
            assert!(
                matches!(r, Err(MemoryError::FileLenMismatch { declared, actual }) if declared == len && actual == cut as u64),
                "cut {cut}: {r:?}"
            );
        }
    }
    // The same through a reader over a short source.
    let r = MemoryFile::read_header(&mut Cursor::new(&good[..len as usize - 1]));
    assert!(matches!(r, Err(MemoryError::FileLenMismatch { .. })));
}

fn diff_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d");
    let ram = vec![3u8; 64 << 10];
    write_atomically(&path, |f| {
        MemoryWriter::new().write_diff(
            f,
            &[DiffRegion {
                guest_addr: 0,
                contents: &ram,
                dirty_pages: &[1, 4, 9],
            }],
        )
    })
    .unwrap();
    std::fs::read(&path).unwrap()
}

#[test]
fn diff_page_index_checks() {
    let good = diff_bytes();
    let mem = MemoryFile::from_bytes(&good).unwrap();
    assert_eq!(mem.dirty_pages(0).unwrap(), &[1, 4, 9]);
    let pages_at = MEMORY_HEADER_LEN + REGION_ENTRY_LEN;
    for (k, v, pos) in [
        (1usize, 1u64, 1u64),
        (2, 2, 2),
        (2, 16, 2),
        (0, u64::MAX, 0),
    ] {
        let mut b = good.clone();
        set_u64(&mut b, pages_at + 8 * k, v);
        refix(&mut b);
        match MemoryFile::from_bytes(&b) {
            Err(MemoryError::BadPageIndex {
                region: 0,
                position,
                page,
                pages: 16,
            }) => assert_eq!((position, page), (pos, v)),
            other => panic!("page {k} = {v}: unexpected {other:?}"),
        }
    }
    // More data than the region's size.
    let mut b = good.clone();
    set_u64(&mut b, entry(0, 1), 8192);
    refix(&mut b);
    assert!(matches!(
        MemoryFile::from_bytes(&b),
        Err(MemoryError::RegionDataLen {
            kind: MemoryKind::Diff,
            ..
        })
    ));
}

#[test]
fn writer_refuses_bad_regions() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = File::create(dir.path().join("x")).unwrap();
    let w = MemoryWriter::new();
    let page = vec![0u8; PAGE];
    let odd = vec![0u8; PAGE + 1];
    assert!(matches!(
        w.write_full(&mut f, &[(0x800, &page)]),
        Err(MemoryError::RegionUnaligned {
            region: 0,
            field: "guest address",
            ..
        })
    ));
    assert!(matches!(
        w.write_full(&mut f, &[(0, &page), (0x1000, &odd)]),
        Err(MemoryError::RegionUnaligned {
            region: 1,
            field: "size",
            ..
        })
    ));
    assert!(matches!(
        w.write_full(&mut f, &[(0, &[])]),
        Err(MemoryError::RegionRange { region: 0, .. })
    ));
    let two = vec![0u8; 2 * PAGE];
    assert!(matches!(
        w.write_full(&mut f, &[(0x1000, &page), (0, &two)]),
        Err(MemoryError::RegionsOverlapInGuest {
            first: 0,
            second: 1
        })
    ));
    assert!(matches!(
        w.write_diff(
            &mut f,
            &[DiffRegion {
                guest_addr: 0,
                contents: &two,
                dirty_pages: &[0, 2]
            }]
        ),
        Err(MemoryError::BadPageIndex {
            region: 0,
            position: 1,
            page: 2,
            pages: 2
        })
    ));
    let many: Vec<(u64, &[u8])> = (0..=u64::from(MAX_REGIONS))
        .map(|i| (i * PAGE_SIZE, &page[..]))
        .collect();
    assert!(matches!(
        w.write_full(&mut f, &many),
        Err(MemoryError::TooManyRegions { .. })
    ));
    assert!(matches!(
        MemoryWriter::with_chunk_size(3 << 20),
        Err(MemoryError::BadChunkSize(_))
    ));
}

#[test]
fn caller_errors_on_valid_files() {
    let b = sample_bytes();
    let m = MemoryFile::from_bytes(&b).unwrap();
    let mut cur = Cursor::new(&b[..]);
    assert!(matches!(
        m.verify_region(&mut cur, 2),
        Err(MemoryError::NoSuchRegion {
            region: 2,
            count: 2
        })
    ));
    let mut small = vec![0u8; PAGE];
    assert!(matches!(
        m.read_region(&mut cur, 1, &mut small),
        Err(MemoryError::BufferSize {
            region: 1,
            expected: 65536,
            actual: 4096
        })
    ));
    assert_eq!(m.dirty_pages(0).unwrap(), &[] as &[u64]);
}

#[test]
fn the_identities_are_in_the_fixed_header() {
    let (a, b) = (SnapshotId([0xa1; 16]), SnapshotId([0xb2; 16]));
    let dir = tempfile::tempdir().unwrap();
    let ram = ram1();
    let full = dir.path().join("full");
    let hdr = write_atomically(&full, |f| {
        MemoryWriter::new()
            .with_identity(a, b)
            .write_full(f, &[(0, &ram)])
    })
    .unwrap();
    // A full file has no base, whatever the writer was given.
    assert_eq!((hdr.snapshot_id(), hdr.base_id()), (a, SnapshotId::NONE));
    let bytes = std::fs::read(&full).unwrap();
    assert_eq!(&bytes[56..72], &a.0);
    assert_eq!(&bytes[72..88], &[0; 16]);
    let diff = dir.path().join("diff");
    write_atomically(&diff, |f| {
        MemoryWriter::new().with_identity(b, a).write_diff(
            f,
            &[DiffRegion {
                guest_addr: 0,
                contents: &ram,
                dirty_pages: &[1],
            }],
        )
    })
    .unwrap();
    let read = MemoryFile::read_header(&mut File::open(&diff).unwrap()).unwrap();
    assert_eq!((read.snapshot_id(), read.base_id()), (b, a));
    // Both are covered by the header checksum.
    let mut bytes = std::fs::read(&diff).unwrap();
    bytes[80] ^= 1;
    assert!(matches!(
        MemoryFile::from_bytes(&bytes),
        Err(MemoryError::HeaderChecksum { .. })
    ));
}

#[test]
fn format_1_files_are_refused_with_their_version() {
    let err = parse_patched(|b| b[8..10].copy_from_slice(&1u16.to_le_bytes())).unwrap_err();
    assert!(matches!(
        err,
        MemoryError::UnsupportedMajor {
            found: 1,
            supported: 2
        }
    ));
    assert_eq!(
        err.to_string(),
        "memory file format 1.x is not supported: this reader reads format 2.x only"
    );
}

#[test]
fn streaming_a_full_region_skips_holes_and_still_verifies() {
    let ram = ram0();
    let (_dir, path, hdr) = write_full(&[(0, &ram)]);
    let mut file = File::open(&path).unwrap();
    // Told that the second chunk (2 MiB..3 MiB of data) is a hole: it is not, so its checksum
    // (that of zeros) does not match.
    let data = hdr.regions()[0].file_offset;
    let second = data + (2 << 20);
    let err = hdr
        .stream_region(&mut file, 0, |off, _| off == second, |_, _| Ok(()))
        .unwrap_err();
    assert!(
        matches!(err, MemoryError::ChunkChecksum { chunk: 1, .. }),
        "{err:?}"
    );
    // With a truthful oracle (none), every chunk reaches the sink, at its region offset.
    let mut copy = vec![0u8; ram.len()];
    let mut offsets = Vec::new();
    hdr.stream_region(
        &mut file,
        0,
        |_, _| false,
        |off, bytes| {
            offsets.push(off);
            copy[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(offsets, [0, 2 << 20]);
    assert!(copy == ram);
    // An all-zero region that really is a hole: nothing is read, nothing reaches the sink.
    let zero = vec![0u8; 4 << 20];
    let (_dir, path, hdr) = write_full(&[(0, &zero)]);
    let mut file = File::open(&path).unwrap();
    let mut calls = 0;
    hdr.stream_region(
        &mut file,
        0,
        |_, _| true,
        |_, _| {
            calls += 1;
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(calls, 0);
}

#[test]
fn streaming_a_diff_passes_every_recorded_page_even_zero_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diff");
    let mut ram = ram1();
    ram[3 * PAGE..4 * PAGE].fill(0);
    let hdr = write_atomically(&path, |f| {
        MemoryWriter::new().write_diff(
            f,
            &[DiffRegion {
                guest_addr: 0,
                contents: &ram,
                dirty_pages: &[3, 5],
            }],
        )
    })
    .unwrap();
    let mut file = File::open(&path).unwrap();
    let mut seen = Vec::new();
    // Page 3 is zero, so a hole in the file: the oracle may say so.
    let first = hdr.regions()[0].file_offset;
    hdr.stream_region(
        &mut file,
        0,
        |off, len| off == first && len == PAGE_SIZE,
        |off, bytes| {
            seen.push((off, bytes.to_vec()));
            Ok(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let pages: Vec<u64> = seen.iter().map(|(off, _)| off / PAGE_SIZE).collect();
    assert_eq!(pages, [3, 5]);
    assert!(seen[0].1.iter().all(|&b| b == 0));
    assert_eq!(seen[1].1, ram[5 * PAGE..6 * PAGE]);
}

/// A source that logs every read and can change its contents between reads, as guest memory
/// written by a running vCPU would.
struct Logged {
    bytes: std::cell::RefCell<Vec<u8>>,
    reads: std::cell::RefCell<Vec<(u64, usize)>>,
    /// Added to every byte of the contents after each read.
    drift: u8,
}

impl Logged {
    fn new(bytes: Vec<u8>, drift: u8) -> Self {
        Logged {
            bytes: bytes.into(),
            reads: Vec::new().into(),
            drift,
        }
    }
}

impl RegionSource for Logged {
    fn size(&self) -> u64 {
        self.bytes.borrow().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.reads.borrow_mut().push((offset, buf.len()));
        let mut bytes = self.bytes.borrow_mut();
        let at = offset as usize;
        buf.copy_from_slice(&bytes[at..at + buf.len()]);
        bytes
            .iter_mut()
            .for_each(|b| *b = b.wrapping_add(self.drift));
        Ok(())
    }
}

#[test]
fn a_full_write_reads_each_chunk_once_in_bounded_pieces() {
    let ram = ram0();
    let src = Logged::new(ram.clone(), 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem");
    let hdr = write_atomically(&path, |f| MemoryWriter::new().write_full(f, &[(0, &src)])).unwrap();
    // 3 MiB in 2 MiB chunks: reads of whole pages, in order, covering the region once, none
    // longer than a chunk or crossing into the next chunk.
    let reads = src.reads.borrow();
    let chunk = u64::from(DEFAULT_CHUNK_SIZE);
    let mut next = 0;
    for &(offset, len) in reads.iter() {
        assert_eq!(offset, next, "{reads:?}");
        assert!(
            len > 0 && (len as u64).is_multiple_of(PAGE_SIZE),
            "{reads:?}"
        );
        assert_eq!(
            offset / chunk,
            (offset + len as u64 - 1) / chunk,
            "{reads:?}"
        );
        next = offset + len as u64;
    }
    assert_eq!(next, ram.len() as u64);
    let mut f = File::open(&path).unwrap();
    hdr.verify_all(&mut f).unwrap();
    let mut back = vec![0u8; ram.len()];
    hdr.read_region(&mut f, 0, &mut back).unwrap();
    assert_eq!(back, ram);
}

#[test]
fn a_diff_reads_only_its_pages_a_run_at_a_time() {
    let ram = ram1();
    let src = Logged::new(ram.clone(), 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diff");
    let hdr = write_atomically(&path, |f| {
        MemoryWriter::new().write_diff(
            f,
            &[DiffRegion {
                guest_addr: 0,
                contents: &src,
                dirty_pages: &[9, 2, 3, 4, 12, 3],
            }],
        )
    })
    .unwrap();
    // Sorted and deduplicated: pages 2..=4 in one read, then 9, then 12.
    assert_eq!(
        *src.reads.borrow(),
        vec![
            (2 * PAGE_SIZE, 3 * PAGE),
            (9 * PAGE_SIZE, PAGE),
            (12 * PAGE_SIZE, PAGE)
        ]
    );
    let mut f = File::open(&path).unwrap();
    hdr.verify_all(&mut f).unwrap();
    let mut back = vec![0u8; ram.len()];
    hdr.read_region(&mut f, 0, &mut back).unwrap();
    for page in [2, 3, 4, 9, 12] {
        assert_eq!(back[page * PAGE..][..PAGE], ram[page * PAGE..][..PAGE]);
    }
    assert!(back[..2 * PAGE].iter().all(|&b| b == 0));
}

#[test]
fn contents_changing_during_the_write_give_a_torn_file_that_still_verifies() {
    // Every read sees the contents one step further on: the chunks come from different
    // moments, and each one's checksum matches what was written for it.
    let src = Logged::new(vec![1u8; 4 << 20], 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem");
    let hdr = write_atomically(&path, |f| MemoryWriter::new().write_full(f, &[(0, &src)])).unwrap();
    let mut f = File::open(&path).unwrap();
    hdr.verify_all(&mut f).unwrap();
    let mut back = vec![0u8; 4 << 20];
    hdr.read_region(&mut f, 0, &mut back).unwrap();
    // The `k`th read saw every byte at 1 + k, and the file holds what each read saw.
    let reads = src.reads.borrow();
    assert!(reads.len() > 2, "{reads:?}");
    for (k, &(offset, len)) in reads.iter().enumerate() {
        let at = offset as usize;
        assert!(
            back[at..at + len].iter().all(|&b| b == 1 + k as u8),
            "read {k} at {offset:#x}"
        );
    }
}
