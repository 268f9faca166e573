//! Arbitrary and mutated bytes never make the readers panic.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use vmkit_snapshot::{
    checksum, write_atomically, Arch, Backend, DiffRegion, Expected, MemoryFile, MemoryWriter,
    Reader, SectionTag, Snapshot, Writer,
};

const EXPECTED: Expected = Expected {
    arch: Arch::X86_64,
    backend: Backend::Kvm,
};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Sample {
    A { x: u64, name: String, data: Vec<u8> },
    B(Vec<(u32, Option<i64>)>),
}

fn state_file() -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), Arch::X86_64, Backend::Kvm, [1; 32]);
    w.write_section(
        SectionTag::VCPU,
        0,
        1,
        &Sample::A {
            x: 5,
            name: "cpu0".into(),
            data: vec![1, 2, 3],
        },
    )
    .unwrap();
    w.write_section(
        SectionTag::DEVICE,
        2,
        1,
        &Sample::B(vec![(1, Some(-3)), (2, None)]),
    )
    .unwrap();
    w.finish().unwrap()
}

fn memory_files() -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let w = MemoryWriter::with_chunk_size(8192).unwrap();
    let mut ram = vec![0u8; 32 << 10];
    ram[5000] = 1;
    ram[20000] = 2;
    let full = dir.path().join("full");
    write_atomically(&full, |f| {
        w.write_full(f, &[(0, &ram[..]), (1 << 20, &ram[..8192])])
    })
    .unwrap();
    let diff = dir.path().join("diff");
    write_atomically(&diff, |f| {
        w.write_diff(
            f,
            &[DiffRegion {
                guest_addr: 0,
                contents: &ram,
                dirty_pages: &[1, 4, 6],
            }],
        )
    })
    .unwrap();
    (std::fs::read(full).unwrap(), std::fs::read(diff).unwrap())
}

fn exercise_state(bytes: &[u8]) {
    if let Ok(reader) = Reader::new(bytes, EXPECTED) {
        for section in reader {
            match section {
                Ok(s) => {
                    let _ = s.decode::<Sample>(0..=u16::MAX);
                }
                Err(_) => break,
            }
        }
    }
    let _ = Snapshot::from_bytes(bytes, EXPECTED);
}

fn exercise_memory(bytes: &[u8]) {
    if let Ok(m) = MemoryFile::from_bytes(bytes) {
        let mut cur = Cursor::new(bytes);
        for (i, r) in m.regions().iter().enumerate() {
            let _ = m.verify_region(&mut cur, i);
            if r.size <= 1 << 20 {
                let mut buf = vec![0u8; r.size as usize];
                let _ = m.read_region(&mut cur, i, &mut buf);
            }
        }
    }
    let _ = MemoryFile::read_header(&mut Cursor::new(bytes));
}

fn set_u64(b: &mut [u8], off: usize, v: u64) {
    if let Some(d) = b.get_mut(off..off + 8) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

fn get_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Recomputes every checksum of a (mutated) state file, so that mutations
/// reach the checks behind them.
fn repair_state(b: &mut [u8]) {
    if b.len() < 88 {
        return;
    }
    let crc = checksum(&b[..80]);
    set_u64(b, 80, crc);
    let mut off = 88usize;
    while off.checked_add(40).is_some_and(|e| e <= b.len()) {
        let Some(len) = get_u64(b, off + 16) else {
            return;
        };
        let start = off + 40;
        let end = usize::try_from(len).ok().and_then(|l| start.checked_add(l));
        if let Some(payload) = end.and_then(|e| b.get(start..e)) {
            let crc = checksum(payload);
            set_u64(b, off + 24, crc);
        }
        let crc = checksum(&b[off..off + 32]);
        set_u64(b, off + 32, crc);
        match end {
            Some(e) => off = e,
            None => return,
        }
    }
}

fn repair_memory(b: &mut [u8]) {
    if b.len() < 96 {
        return;
    }
    let header_len = get_u64(b, 32).unwrap_or(0);
    let end = usize::try_from(header_len)
        .unwrap_or(usize::MAX)
        .clamp(96, b.len());
    let crc = checksum(&b[96..end]);
    set_u64(b, 48, crc);
    let crc = checksum(&b[..88]);
    set_u64(b, 88, crc);
}

fn mutate(mut base: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    for &(pos, x) in edits {
        if !base.is_empty() {
            let n = base.len();
            base[pos % n] ^= x;
        }
    }
    if let Some(c) = cut {
        base.truncate(c % (base.len() + 1));
    }
    base
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        exercise_state(&bytes);
        exercise_memory(&bytes);
    }

    #[test]
    fn mutated_state_files_never_panic(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in proptest::option::of(any::<usize>()),
        repair in any::<bool>(),
    ) {
        let mut b = mutate(state_file(), &edits, cut);
        if repair {
            repair_state(&mut b);
        }
        exercise_state(&b);
    }

    #[test]
    fn mutated_memory_files_never_panic(
        edits in proptest::collection::vec((0usize..8192, any::<u8>()), 0..8),
        cut in proptest::option::of(any::<usize>()),
        diff in any::<bool>(),
        repair in any::<bool>(),
    ) {
        let (full, d) = memory_files();
        let mut b = mutate(if diff { d } else { full }, &edits, cut);
        if repair {
            repair_memory(&mut b);
        }
        exercise_memory(&b);
    }
}
