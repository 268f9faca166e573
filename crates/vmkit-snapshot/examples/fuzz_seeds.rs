//! Writes the seed corpus of the `snapshot_reader` fuzz target.
//!
//! Usage: `cargo run -p vmkit-snapshot --example fuzz_seeds -- DIR`
//! (DIR is normally `fuzz/corpus/snapshot_reader`). Each seed is a mode byte
//! (0/1 state file, 2/3 memory file; see the fuzz target) then a valid file.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmkit_snapshot::{
    write_atomically, Arch, Backend, DiffRegion, Flags, MemoryWriter, SectionTag, SnapshotId,
    Writer,
};

/// The type the fuzz target decodes every section as.
#[derive(Serialize, Deserialize, Debug)]
enum Sample {
    Cpu {
        regs: Vec<u64>,
        name: String,
        halted: bool,
    },
    Dev(Vec<(u32, Option<i64>)>, [u8; 4]),
}

fn state_file(flags: Flags) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut w = Writer::new(Vec::new(), Arch::X86_64, Backend::Kvm, [0x11; 32]);
    w.set_flags(flags)?;
    w.set_snapshot_id(SnapshotId([0x22; 16]));
    for cpu in 0..2 {
        w.write_section(
            SectionTag::VCPU,
            cpu,
            1,
            &Sample::Cpu {
                regs: vec![0x1000, 2, u64::from(cpu)],
                name: format!("cpu{cpu}"),
                halted: cpu == 1,
            },
        )?;
    }
    w.write_section(
        SectionTag::DEVICE,
        0,
        3,
        &Sample::Dev(vec![(1, Some(-1)), (7, None)], *b"blk0"),
    )?;
    w.write_raw_section(SectionTag::new(*b"UNKN"), 0, 1, b"opaque")?;
    Ok(w.finish()?)
}

/// A full or diff memory file of two small regions (`empty`: no regions,
/// just the header page).
fn memory_file(dir: &Path, diff: bool, empty: bool) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let w = MemoryWriter::with_chunk_size(8192)?
        .with_identity(SnapshotId([0x22; 16]), SnapshotId([0x33; 16]));
    let mut ram = vec![0u8; 16 << 10];
    ram[4096] = 0x90;
    ram[12300] = 0xcc;
    let hi = vec![0x5au8; 4096];
    let path = dir.join(if diff { "diff.tmp" } else { "full.tmp" });
    write_atomically(&path, |f| {
        if empty {
            w.write_full::<&[u8]>(f, &[])
        } else if diff {
            w.write_diff(
                f,
                &[
                    DiffRegion {
                        guest_addr: 0,
                        contents: &ram,
                        dirty_pages: &[1, 3],
                    },
                    DiffRegion {
                        guest_addr: 1 << 20,
                        contents: &hi,
                        dirty_pages: &[0],
                    },
                ],
            )
        } else {
            w.write_full(f, &[(0, &ram), (1 << 20, &hi)])
        }
    })?;
    let bytes = std::fs::read(&path)?;
    std::fs::remove_file(&path)?;
    Ok(bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args_os().nth(1).ok_or("usage: fuzz_seeds DIR")?);
    std::fs::create_dir_all(&dir)?;
    let seeds: Vec<(&str, u8, Vec<u8>)> = vec![
        ("state", 0, state_file(Flags::empty())?),
        ("state_repair", 1, state_file(Flags::DIFF_MEMORY)?),
        ("memory_header", 2, memory_file(&dir, false, true)?),
        ("memory_full", 2, memory_file(&dir, false, false)?),
        ("memory_full_repair", 3, memory_file(&dir, false, false)?),
        ("memory_diff", 2, memory_file(&dir, true, false)?),
        ("memory_diff_repair", 3, memory_file(&dir, true, false)?),
        // The high bits of the mode byte tell the streaming reader of (false) holes.
        (
            "memory_full_holes",
            2 | 0b1010_1000,
            memory_file(&dir, false, false)?,
        ),
        (
            "memory_diff_holes",
            3 | 0b0101_0100,
            memory_file(&dir, true, false)?,
        ),
    ];
    for (name, mode, bytes) in seeds {
        let mut seed = vec![mode];
        seed.extend_from_slice(&bytes);
        std::fs::write(dir.join(name), &seed)?;
        println!("{name}: {} bytes", seed.len());
    }
    Ok(())
}
