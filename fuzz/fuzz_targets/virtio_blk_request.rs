//! virtio-blk request fuzzing: the real `Block` device processes a split
//! queue built from the input, over an in-memory disk.
//!
//! Input: `[size_log, flags, sectors]` (flags: 1 EVENT_IDX, 2 INDIRECT_DESC,
//! 4 read-only disk, 8 FLUSH negotiated, 16 every disk operation fails;
//! sectors: the disk capacity), then a guest memory image: descriptor table
//! at 0x0, available ring at 0x200, used ring at 0x300; headers, data,
//! status bytes and indirect tables wherever the image says.
#![no_main]

use std::io;

use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;
use vmkit_virtio::blk::{Block, BlockBackend, BlockOptions, Request, VIRTIO_BLK_F_FLUSH};
use vmkit_virtio::device::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use vmkit_virtio::{Queue, SplitQueue, VirtioDevice};

#[path = "common.rs"]
#[allow(dead_code)] // `touch` is for the queue targets
mod common;

/// A disk in a vector, optionally failing every operation.
struct MemDisk {
    bytes: Vec<u8>,
    fail: bool,
}

fn range(len: usize, offset: u64, n: usize) -> io::Result<std::ops::Range<usize>> {
    let start = usize::try_from(offset).map_err(|_| io::Error::other("offset"))?;
    let end = start
        .checked_add(n)
        .ok_or_else(|| io::Error::other("overflow"))?;
    // The device must never go past the end of the disk.
    assert!(end <= len, "disk access {start}..{end} beyond {len} bytes");
    Ok(start..end)
}

impl BlockBackend for MemDisk {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let r = range(self.bytes.len(), offset, buf.len())?;
        if self.fail {
            return Err(io::Error::other("injected"));
        }
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let r = range(self.bytes.len(), offset, buf.len())?;
        if self.fail {
            return Err(io::Error::other("injected"));
        }
        self.bytes[r].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.fail {
            return Err(io::Error::other("injected"));
        }
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let size = 1u16 << (data[0] % 6); // 1..=32: rings fit below 0x400
    let flags = data[1];
    let sectors = u64::from(data[2]);
    let mem = common::memory(&data[3..]);

    let disk = MemDisk {
        bytes: vec![0x5a; sectors as usize * 512],
        fail: flags & 16 != 0,
    };
    let opts = BlockOptions {
        read_only: flags & 4 != 0,
        ..BlockOptions::default()
    };
    let mut blk = Block::with_backend(disk, sectors * 512, opts).expect("valid options");
    let mut features = VIRTIO_F_VERSION_1;
    if flags & 1 != 0 {
        features |= VIRTIO_F_EVENT_IDX;
    }
    if flags & 2 != 0 {
        features |= VIRTIO_F_INDIRECT_DESC;
    }
    if flags & 8 != 0 {
        features |= VIRTIO_BLK_F_FLUSH;
    }
    VirtioDevice::<common::Mem>::activate(&mut blk, features).expect("activates");

    let mut q = SplitQueue::new(256).expect("valid max");
    q.set_size(size).expect("valid size");
    q.set_desc_table(GuestAddress(0)).expect("aligned");
    q.set_avail_ring(GuestAddress(0x200)).expect("aligned");
    q.set_used_ring(GuestAddress(0x300)).expect("aligned");
    q.set_event_idx(flags & 1 != 0);
    q.set_indirect(flags & 2 != 0);
    q.set_ready(true);

    // Parse the first chain on a copy of the queue: parsing alone must hold
    // its invariants.
    let mut probe = q.clone();
    if let Ok(Some(chain)) = probe.pop(&mem) {
        if let Ok(req) = Request::parse(chain, &mem, sectors) {
            let sum: u64 = req.data().iter().map(|&(_, l)| u64::from(l)).sum();
            assert_eq!(sum, req.data_len());
        }
    }

    // Then the real processing path, as a transport calls it.
    // (Requests may write into the rings themselves; the guest's own
    // business, so only the device's view is checked.)
    let mut q = Queue::Split(q);
    let result = blk.process_queue(0, &mut q, &mem);
    let Queue::Split(q) = q else {
        unreachable!("a split queue stays split")
    };
    if result.is_ok() {
        assert_eq!(q.next_used(), q.next_avail(), "every popped chain returned");
    } else {
        assert!(q.is_broken() || q.next_used() == q.next_avail());
    }
    let stats = blk.stats();
    let total = stats.ok + stats.io_errors + stats.unsupported + stats.dropped;
    assert!(total <= u64::from(vmkit_virtio::device::PROCESS_BUDGET));
    // The disk kept its size (accesses beyond it panic in `MemDisk`).
    assert_eq!(blk.backend().bytes.len(), sectors as usize * 512);
});
