//! A test-side virtio-mmio driver: talks to the transport only through its
//! registers and guest memory, as a guest would.
#![allow(dead_code)]

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_virtio::mmio::*;
use vmkit_virtio::{Persist, VirtioDevice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub type Mem = GuestMemoryMmap<()>;
pub type Transport<D> = MmioTransport<Arc<Mem>, D>;

/// Guest memory: 4 MiB at 0.
pub const MEM_SIZE: usize = 0x40_0000;
/// Where buffers live.
pub const BUF: u64 = 0x20_0000;

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
/// Packed descriptor flags: AVAIL and USED.
pub const DESC_F_AVAIL: u16 = 1 << 7;
pub const DESC_F_USED: u16 = 1 << 15;
/// Feature bit 34.
pub const RING_PACKED: u64 = 1 << 34;

pub fn mem() -> Arc<Mem> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap())
}

pub fn transport<D: VirtioDevice<Mem>>(dev: D, mem: &Arc<Mem>) -> Transport<D> {
    MmioTransport::new(dev, mem.clone(), EventFd::new(EFD_NONBLOCK).unwrap()).unwrap()
}

/// A buffer of a chain: address, length, device-writable.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

pub fn r(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: false,
    }
}

pub fn w(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: true,
    }
}

/// Driver side of one queue, split or packed.
///
/// Split: `desc`, `avail` and `used` are the descriptor table, available
/// and used rings. Packed: `desc` is the descriptor ring, `avail` the
/// driver event suppression structure and `used` the device's; a buffer's
/// ID is the ring slot of its first descriptor.
#[derive(Debug)]
pub struct Vq {
    pub index: u32,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub avail_idx: u16,
    /// Split: free-running used index. Packed: ring slot of the next used
    /// descriptor.
    pub last_used: u16,
    next_desc: u16,
    /// Packed layout, with the driver's wrap counters and each buffer ID's
    /// descriptor count.
    pub packed: bool,
    pub avail_wrap: bool,
    pub used_wrap: bool,
    counts: Vec<u16>,
}

impl Vq {
    /// Split queue `index` laid out at 0x10000 * (index + 1).
    pub fn new(index: u32, size: u16) -> Self {
        let base = 0x1_0000 * (u64::from(index) + 1);
        Vq {
            index,
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            avail_idx: 0,
            last_used: 0,
            next_desc: 0,
            packed: false,
            avail_wrap: true,
            used_wrap: true,
            counts: vec![0; usize::from(size)],
        }
    }

    /// Packed queue `index` laid out at 0x10000 * (index + 1); `size` need
    /// not be a power of two (at most 256, so the ring fits in 4 KiB).
    pub fn packed(index: u32, size: u16) -> Self {
        assert!(size <= 256);
        Vq {
            packed: true,
            ..Vq::new(index, size)
        }
    }

    /// A queue of the layout `features` selects (packed with RING_PACKED).
    pub fn for_features(index: u32, size: u16, features: u64) -> Self {
        if features & RING_PACKED != 0 {
            Vq::packed(index, size)
        } else {
            Vq::new(index, size)
        }
    }

    /// Writes a chain of descriptors and publishes it; returns the head
    /// (split) or buffer ID (packed).
    pub fn push(&mut self, mem: &Mem, bufs: &[Buf]) -> u16 {
        assert!(!bufs.is_empty() && bufs.len() <= usize::from(self.size));
        if self.packed {
            return self.push_packed(mem, bufs);
        }
        let head = self.next_desc;
        for (k, b) in bufs.iter().enumerate() {
            let i = (head + k as u16) % self.size;
            let next = (i + 1) % self.size;
            let mut flags = if b.write { DESC_F_WRITE } else { 0 };
            if k + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            let at = self.desc + 16 * u64::from(i);
            mem.write_obj(b.addr, GuestAddress(at)).unwrap();
            mem.write_obj(b.len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    /// Packed: writes the descriptors from the slot after the head on,
    /// then the head's flags, which make the whole list available.
    fn push_packed(&mut self, mem: &Mem, bufs: &[Buf]) -> u16 {
        let id = self.next_desc;
        let (mut slot, mut wrap) = (self.next_desc, self.avail_wrap);
        let mut head_flags = 0;
        for (k, b) in bufs.iter().enumerate() {
            let mut flags = if b.write { DESC_F_WRITE } else { 0 };
            if k + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            flags |= if wrap { DESC_F_AVAIL } else { DESC_F_USED };
            let at = self.desc + 16 * u64::from(slot);
            mem.write_obj(b.addr, GuestAddress(at)).unwrap();
            mem.write_obj(b.len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(id, GuestAddress(at + 12)).unwrap();
            if k == 0 {
                head_flags = flags;
            } else {
                mem.write_obj(flags, GuestAddress(at + 14)).unwrap();
            }
            slot += 1;
            if slot == self.size {
                slot = 0;
                wrap = !wrap;
            }
        }
        mem.write_obj(
            head_flags,
            GuestAddress(self.desc + 16 * u64::from(id) + 14),
        )
        .unwrap();
        self.counts[usize::from(id)] = bufs.len() as u16;
        self.next_desc = slot;
        self.avail_wrap = wrap;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        id
    }

    /// Marks the descriptor at ring slot `slot` indirect (packed), or the
    /// descriptor `slot` of the table (split).
    pub fn set_indirect(&self, mem: &Mem, slot: u16) {
        let at = self.desc + 16 * u64::from(slot);
        if self.packed {
            let flags: u16 = mem.read_obj(GuestAddress(at + 14)).unwrap();
            mem.write_obj(flags | 4, GuestAddress(at + 14)).unwrap();
        } else {
            mem.write_obj(4u16, GuestAddress(at + 12)).unwrap();
        }
    }

    /// The next used entry, if any: (id, len).
    pub fn pop_used(&mut self, mem: &Mem) -> Option<(u32, u32)> {
        if self.packed {
            let at = self.desc + 16 * u64::from(self.last_used);
            let flags: u16 = mem.read_obj(GuestAddress(at + 14)).unwrap();
            let avail = flags & DESC_F_AVAIL != 0;
            let used = flags & DESC_F_USED != 0;
            if avail != used || used != self.used_wrap {
                return None;
            }
            let id: u16 = mem.read_obj(GuestAddress(at + 12)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 8)).unwrap();
            let n = self.counts[usize::from(id)];
            assert!(n > 0, "used buffer ID {id} was not in flight");
            self.counts[usize::from(id)] = 0;
            let next = self.last_used + n;
            if next >= self.size {
                self.last_used = next - self.size;
                self.used_wrap = !self.used_wrap;
            } else {
                self.last_used = next;
            }
            return Some((u32::from(id), len));
        }
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        if idx == self.last_used {
            return None;
        }
        let slot = u64::from(self.last_used % self.size);
        let at = self.used + 4 + 8 * slot;
        let id = mem.read_obj(GuestAddress(at)).unwrap();
        let len = mem.read_obj(GuestAddress(at + 4)).unwrap();
        self.last_used = self.last_used.wrapping_add(1);
        Some((id, len))
    }
}

/// Register access helpers.
pub trait Regs {
    fn r32(&self, off: u64) -> u32;
    fn w32(&self, off: u64, v: u32);
}

impl<D: VirtioDevice<Mem>> Regs for Transport<D> {
    fn r32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w32(&self, off: u64, v: u32) {
        self.write(off, &v.to_le_bytes());
    }
}

pub fn device_features(t: &impl Regs) -> u64 {
    t.w32(0x14, 0);
    let lo = t.r32(0x10);
    t.w32(0x14, 1);
    let hi = t.r32(0x10);
    u64::from(lo) | (u64::from(hi) << 32)
}

/// ACKNOWLEDGE, DRIVER, write `features`, FEATURES_OK; returns whether
/// FEATURES_OK stuck.
pub fn negotiate(t: &impl Regs, features: u64) -> bool {
    t.w32(0x70, 0);
    t.w32(0x70, STATUS_ACKNOWLEDGE);
    t.w32(0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    t.w32(0x24, 0);
    t.w32(0x20, features as u32);
    t.w32(0x24, 1);
    t.w32(0x20, (features >> 32) as u32);
    t.w32(
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    t.r32(0x70) & STATUS_FEATURES_OK != 0
}

/// Programs queue `vq` and makes it ready; returns QueueReady as read back.
pub fn setup_queue(t: &impl Regs, vq: &Vq) -> bool {
    t.w32(0x30, vq.index);
    t.w32(0x38, u32::from(vq.size));
    for (off, addr) in [(0x80, vq.desc), (0x90, vq.avail), (0xa0, vq.used)] {
        t.w32(off, addr as u32);
        t.w32(off + 4, (addr >> 32) as u32);
    }
    t.w32(0x44, 1);
    t.r32(0x44) == 1
}

pub fn driver_ok(t: &impl Regs) {
    let s = t.r32(0x70);
    t.w32(0x70, s | STATUS_DRIVER_OK);
}

/// Full bring-up with VERSION_1 only (and RING_PACKED if the queues are
/// packed) and the given queues.
pub fn bring_up(t: &impl Regs, queues: &[&Vq]) {
    let packed = if queues.iter().any(|q| q.packed) {
        RING_PACKED
    } else {
        0
    };
    assert!(negotiate(t, (1 << 32) | packed));
    for q in queues {
        assert!(setup_queue(t, q));
    }
    driver_ok(t);
    assert_eq!(
        t.r32(0x70),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK
    );
}

pub fn notify(t: &impl Regs, q: u32) {
    t.w32(NOTIFY_OFFSET, q);
}

/// Puts a virtio-blk write request of one sector filled with `byte` at
/// `sector` on `vq`, in buffers of its own (slot `k`: header, data and
/// status at `BUF + 0x10000 * k`); returns the head or buffer ID.
pub fn push_write(mem: &Mem, vq: &mut Vq, k: u64, sector: u64, byte: u8) -> u16 {
    let base = BUF + 0x1_0000 * k;
    mem.write_obj(vmkit_virtio::blk::VIRTIO_BLK_T_OUT, GuestAddress(base))
        .unwrap();
    mem.write_obj(0u32, GuestAddress(base + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(base + 8)).unwrap();
    mem.write_slice(&[byte; 512], GuestAddress(base + 0x1000))
        .unwrap();
    mem.write_obj(0xeeu8, GuestAddress(base + 0x3000)).unwrap();
    vq.push(
        mem,
        &[r(base, 16), r(base + 0x1000, 512), w(base + 0x3000, 1)],
    )
}

/// The status byte of the request `push_write` put in slot `k`.
pub fn status_of(mem: &Mem, k: u64) -> u8 {
    mem.read_obj(GuestAddress(BUF + 0x1_0000 * k + 0x3000))
        .unwrap()
}

/// What a VMM does on restore: builds the transport around a fresh `device`
/// as for a first boot, then restores `state` into it.
pub fn restore<D: VirtioDevice<Mem> + Persist>(
    device: D,
    mem: Arc<Mem>,
    irq: EventFd,
    state: &MmioTransportState<D::State>,
) -> Result<Transport<D>, RestoreError<D::Error>> {
    let mut t = MmioTransport::new(device, mem, irq).unwrap();
    t.restore_state(state)?;
    Ok(t)
}
