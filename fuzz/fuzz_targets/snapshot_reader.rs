//! Snapshot reader fuzzing. Input: one mode byte, then a file image.
//! Mode (low two bits): 0 state file as is; 1 state file with its header,
//! section-header and payload checksums recomputed first (so mutations reach
//! the code behind the checksums); 2 memory file as is; 3 memory file with
//! its header and table checksums recomputed first. For memory files, the six high bits say
//! which chunks (by page index modulo 8) the streaming reader is told are holes.
//! Seeds: `cargo run -p vmkit-snapshot --example fuzz_seeds -- fuzz/corpus/snapshot_reader`.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use vmkit_snapshot::memory::MEMORY_HEADER_LEN;
use vmkit_snapshot::state::{HEADER_LEN, SECTION_HEADER_LEN};
use vmkit_snapshot::{checksum, Arch, Backend, Expected, MemoryFile, Reader, Snapshot};

/// The type the seeds' sections hold (same as in the seed generator).
#[derive(Serialize, Deserialize, Debug)]
#[allow(dead_code)]
enum Sample {
    Cpu {
        regs: Vec<u64>,
        name: String,
        halted: bool,
    },
    Dev(Vec<(u32, Option<i64>)>, [u8; 4]),
}

const EXPECTED: Expected = Expected {
    arch: Arch::X86_64,
    backend: Backend::Kvm,
};

fn set_u64(b: &mut [u8], off: usize, v: u64) {
    if let Some(d) = b.get_mut(off..off + 8) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

fn get_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

fn repair_state(b: &mut [u8]) {
    if b.len() < HEADER_LEN {
        return;
    }
    // The header checksum is its last eight bytes.
    let crc = checksum(&b[..HEADER_LEN - 8]);
    set_u64(b, HEADER_LEN - 8, crc);
    let mut off = HEADER_LEN;
    while off
        .checked_add(SECTION_HEADER_LEN)
        .is_some_and(|e| e <= b.len())
    {
        let Some(len) = get_u64(b, off + 16) else {
            return;
        };
        let start = off + SECTION_HEADER_LEN;
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
    if b.len() < MEMORY_HEADER_LEN {
        return;
    }
    let header_len = get_u64(b, 32).unwrap_or(0);
    let end = usize::try_from(header_len)
        .unwrap_or(usize::MAX)
        .clamp(MEMORY_HEADER_LEN, b.len());
    let crc = checksum(&b[MEMORY_HEADER_LEN..end]);
    set_u64(b, 48, crc);
    let crc = checksum(&b[..MEMORY_HEADER_LEN - 8]);
    set_u64(b, MEMORY_HEADER_LEN - 8, crc);
}

fn state(bytes: &[u8]) {
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

/// `holes`: a bit pattern telling the streaming reader which chunks are holes (it must then
/// check them against the checksum of zeros, never trust it).
fn memory(bytes: &[u8], holes: u8) {
    let _ = MemoryFile::read_header(&mut Cursor::new(bytes));
    let Ok(m) = MemoryFile::from_bytes(bytes) else {
        return;
    };
    let mut cur = Cursor::new(bytes);
    for (i, r) in m.regions().iter().enumerate() {
        let _ = m.verify_region(&mut cur, i);
        let _ = m.dirty_pages(i);
        let _ = m.stream_region(
            &mut cur,
            i,
            |off, _| holes & (1 << ((off / 4096) % 8)) != 0,
            |off, data| {
                // Offsets stay inside the region.
                assert!(off + data.len() as u64 <= r.size);
                Ok(())
            },
        );
        // Region sizes of a diff are not bounded by the input; cap the buffer.
        if r.size <= 1 << 20 {
            let mut buf = vec![0u8; r.size as usize];
            let _ = m.read_region(&mut cur, i, &mut buf);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    match mode & 3 {
        0 => state(&bytes),
        1 => {
            repair_state(&mut bytes);
            state(&bytes)
        }
        2 => memory(&bytes, mode >> 2),
        _ => {
            repair_memory(&mut bytes);
            memory(&bytes, mode >> 2)
        }
    }
});
