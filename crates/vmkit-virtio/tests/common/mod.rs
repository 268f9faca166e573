//! Driver-side helpers: build split and packed rings in a `GuestMemoryMmap`.
#![allow(dead_code)]

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_virtio::{PackedQueue, SplitQueue};

pub type Mem = GuestMemoryMmap<()>;

/// 1 MiB of guest memory at address 0.
pub fn mem() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

pub const DESC: u64 = 0x1000;
pub const AVAIL: u64 = 0x9000;
pub const USED: u64 = 0xa000;
pub const BUF: u64 = 0x2_0000;
pub const TABLE: u64 = 0x8_0000;

pub fn write_desc(mem: &Mem, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let at = GuestAddress(table + 16 * u64::from(i));
    mem.write_obj(addr, at).unwrap();
    mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
    mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
}

/// Packed layout: addr, len, id, flags.
pub fn write_pdesc(mem: &Mem, table: u64, i: u16, addr: u64, len: u32, id: u16, flags: u16) {
    let at = GuestAddress(table + 16 * u64::from(i));
    mem.write_obj(addr, at).unwrap();
    mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
    mem.write_obj(id, GuestAddress(at.0 + 12)).unwrap();
    mem.write_obj(flags, GuestAddress(at.0 + 14)).unwrap();
}

pub fn read_u16(mem: &Mem, addr: u64) -> u16 {
    mem.read_obj(GuestAddress(addr)).unwrap()
}

pub fn read_u32(mem: &Mem, addr: u64) -> u32 {
    mem.read_obj(GuestAddress(addr)).unwrap()
}

pub fn write_u16(mem: &Mem, addr: u64, v: u16) {
    mem.write_obj(v, GuestAddress(addr)).unwrap();
}

/// A split queue of `size` at DESC/AVAIL/USED, ready, indirect negotiated.
pub fn split_queue(size: u16) -> SplitQueue {
    let mut q = SplitQueue::new(256).unwrap();
    q.set_size(size).unwrap();
    q.set_desc_table(GuestAddress(DESC)).unwrap();
    q.set_avail_ring(GuestAddress(AVAIL)).unwrap();
    q.set_used_ring(GuestAddress(USED)).unwrap();
    q.set_indirect(true);
    q.set_ready(true);
    q
}

/// Driver side of a split queue: puts `head` in the available ring and bumps avail.idx.
pub struct SplitDriver {
    pub size: u16,
    pub avail_idx: u16,
}

impl SplitDriver {
    pub fn new(size: u16) -> Self {
        SplitDriver { size, avail_idx: 0 }
    }

    pub fn push(&mut self, mem: &Mem, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        write_u16(mem, AVAIL + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        write_u16(mem, AVAIL + 2, self.avail_idx);
    }

    pub fn used_idx(&self, mem: &Mem) -> u16 {
        read_u16(mem, USED + 2)
    }

    /// (id, len) of used ring entry `i` (free-running).
    pub fn used(&self, mem: &Mem, i: u16) -> (u32, u32) {
        let slot = u64::from(i % self.size);
        (
            read_u32(mem, USED + 4 + 8 * slot),
            read_u32(mem, USED + 8 + 8 * slot),
        )
    }
}

pub const PDRIVER: u64 = 0x9000;
pub const PDEVICE: u64 = 0x9100;

/// A packed queue of `size` with its ring at DESC, ready, indirect negotiated.
pub fn packed_queue(size: u16) -> PackedQueue {
    let mut q = PackedQueue::new(256).unwrap();
    q.set_size(size).unwrap();
    q.set_desc_ring(GuestAddress(DESC)).unwrap();
    q.set_driver_area(GuestAddress(PDRIVER)).unwrap();
    q.set_device_area(GuestAddress(PDEVICE)).unwrap();
    q.set_indirect(true);
    q.set_ready(true);
    q
}

pub const F_AVAIL: u16 = 1 << 7;
pub const F_USED: u16 = 1 << 15;

/// Driver side of a packed queue.
pub struct PackedDriver {
    pub size: u16,
    pub next: u16,
    pub wrap: bool,
}

impl PackedDriver {
    pub fn new(size: u16) -> Self {
        PackedDriver {
            size,
            next: 0,
            wrap: true,
        }
    }

    /// AVAIL/USED bits that mark a descriptor available in the current lap.
    pub fn avail_bits(&self) -> u16 {
        if self.wrap {
            F_AVAIL
        } else {
            F_USED
        }
    }

    /// Writes a list of (addr, len, flags-without-NEXT) buffers with buffer `id`.
    /// The first descriptor's flags are written last.
    pub fn push(&mut self, mem: &Mem, id: u16, bufs: &[(u64, u32, u16)]) {
        let first = self.next;
        let first_bits = self.avail_bits();
        let mut first_flags = 0;
        for (k, &(addr, len, flags)) in bufs.iter().enumerate() {
            let mut f = flags | self.avail_bits();
            if k + 1 < bufs.len() {
                f |= 1; // NEXT
            }
            if k == 0 {
                first_flags = f;
                write_pdesc(mem, DESC, self.next, addr, len, id, 0);
            } else {
                write_pdesc(mem, DESC, self.next, addr, len, id, f);
            }
            self.next += 1;
            if self.next == self.size {
                self.next = 0;
                self.wrap = !self.wrap;
            }
        }
        let _ = first_bits;
        write_u16(mem, DESC + 16 * u64::from(first) + 14, first_flags);
    }

    /// (id, len, flags) of the used descriptor at ring slot `slot`.
    pub fn used(&self, mem: &Mem, slot: u16) -> (u16, u32, u16) {
        let at = DESC + 16 * u64::from(slot);
        (
            read_u16(mem, at + 12),
            read_u32(mem, at + 8),
            read_u16(mem, at + 14),
        )
    }
}
