//! MSI-X: the capability, the vector table and the pending bits ([`Msix`]).
//!
//! The table and the pending-bit array live in a BAR of the function; the
//! guest programs each vector's message address and data there, and masks
//! vectors one by one (vector control) or all at once (the function mask
//! in the capability's message control). A vector the device raises while
//! masked is remembered as pending and sent when it is unmasked. Messages
//! leave through an [`MsiSink`], which a VMM connects to its hypervisor
//! (e.g. `vmkit::Vm::signal_msi`).

use std::fmt;

/// The capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// The most vectors a function may have.
pub const MAX_VECTORS: u16 = 2048;
/// The size of one table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enable.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const CONTROL_MASK: u16 = 1 << 14;
/// Vector control: the vector is masked.
const VECTOR_MASKED: u32 = 1;

/// A message-signalled interrupt: what a device writes, where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsiMessage {
    /// The message address.
    pub address: u64,
    /// The message data.
    pub data: u32,
}

/// Where MSI-X messages go: the VMM's connection to its hypervisor.
pub trait MsiSink: Send + Sync + fmt::Debug {
    /// Delivers `msg` to the guest.
    fn send(&self, msg: MsiMessage) -> std::io::Result<()>;
}

/// Errors building an MSI-X structure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MsixError {
    /// The vector count is 0 or above [`MAX_VECTORS`].
    #[error("{count} MSI-X vectors asked for; a function has 1 to {MAX_VECTORS}")]
    VectorCount {
        /// The count asked for.
        count: u16,
    },
    /// A table or PBA offset that is not 8-byte aligned (the low 3 bits hold the BAR index).
    #[error("MSI-X {what} offset {offset:#x} in BAR {bar} is not 8-byte aligned, or the BAR index is above 5")]
    Placement {
        /// "table" or "PBA".
        what: &'static str,
        /// The BAR index.
        bar: u8,
        /// The offset.
        offset: u32,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
}

/// The MSI-X state of a function; see the [module documentation](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<u64>,
}

impl Msix {
    /// `count` vectors, all masked, none pending.
    pub fn new(count: u16) -> Result<Msix, MsixError> {
        if count == 0 || count > MAX_VECTORS {
            return Err(MsixError::VectorCount { count });
        }
        let entry = Entry {
            control: VECTOR_MASKED,
            ..Entry::default()
        };
        Ok(Msix {
            entries: vec![entry; usize::from(count)],
            pending: vec![0; usize::from(count).div_ceil(64)],
        })
    }

    /// The number of vectors.
    pub fn count(&self) -> u16 {
        self.entries.len() as u16
    }

    /// The table's size in bytes.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    /// The pending-bit array's size in bytes (whole quadwords).
    pub fn pba_size(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// The capability's body (after id and next) and its write mask, for a table at
    /// `table_offset` in BAR `table_bar` and the pending bits at `pba_offset` in BAR `pba_bar`
    /// (see `ConfigSpace::add_capability`): message control (enable and function mask
    /// writable), table offset/BIR, PBA offset/BIR.
    pub fn capability(
        &self,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> Result<([u8; 10], [u8; 2]), MsixError> {
        for (what, bar, offset) in [
            ("table", table_bar, table_offset),
            ("PBA", pba_bar, pba_offset),
        ] {
            if bar > 5 || offset & 7 != 0 {
                return Err(MsixError::Placement { what, bar, offset });
            }
        }
        let mut body = [0u8; 10];
        body[..2].copy_from_slice(&(self.count() - 1).to_le_bytes());
        body[2..6].copy_from_slice(&(table_offset | u32::from(table_bar)).to_le_bytes());
        body[6..].copy_from_slice(&(pba_offset | u32::from(pba_bar)).to_le_bytes());
        Ok((body, (CONTROL_ENABLE | CONTROL_MASK).to_le_bytes()))
    }

    /// The guest's read of the table: aligned 4- or 8-byte accesses inside it; `false` (and
    /// all ones) otherwise.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) -> bool {
        let Some((entry, field)) = self.locate(offset, data.len()) else {
            data.fill(0xff);
            return false;
        };
        let e = self.entries[entry];
        let words = [
            e.address as u32,
            (e.address >> 32) as u32,
            e.data,
            e.control,
        ];
        let first = (field / 4) as usize;
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            chunk.copy_from_slice(&words[first + i].to_le_bytes());
        }
        true
    }

    /// The guest's write to the table: aligned 4- or 8-byte accesses inside it; only the mask
    /// bit of vector control is writable. Unmasking a pending vector (while MSI-X is enabled
    /// and the function unmasked, per `control`, the capability's message control) sends it.
    /// Returns `false` for a refused access; an error from `sink` is returned too.
    pub fn table_write(
        &mut self,
        offset: u64,
        data: &[u8],
        control: u16,
        sink: &dyn MsiSink,
    ) -> Result<bool, std::io::Error> {
        let Some((entry, field)) = self.locate(offset, data.len()) else {
            return Ok(false);
        };
        for (i, chunk) in data.chunks(4).enumerate() {
            let mut word = [0u8; 4];
            word.copy_from_slice(chunk);
            let v = u32::from_le_bytes(word);
            let e = &mut self.entries[entry];
            match field + 4 * i as u64 {
                0 => e.address = (e.address & !0xffff_ffff) | u64::from(v),
                4 => e.address = (e.address & 0xffff_ffff) | (u64::from(v) << 32),
                8 => e.data = v,
                _ => e.control = v & VECTOR_MASKED,
            }
        }
        self.deliver_pending(control, sink)?;
        Ok(true)
    }

    /// The guest's read of the pending-bit array: aligned 4- or 8-byte accesses inside it.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) -> bool {
        let len = data.len() as u64;
        let inside = offset
            .checked_add(len)
            .is_some_and(|end| end <= self.pba_size());
        if !matches!(len, 4 | 8) || !offset.is_multiple_of(len) || !inside {
            data.fill(0xff);
            return false;
        }
        let word = self.pending[(offset / 8) as usize].to_le_bytes();
        let at = (offset % 8) as usize;
        data.copy_from_slice(&word[at..at + data.len()]);
        true
    }

    /// Raises `vector`: sends its message if MSI-X is enabled (per `control`) and neither the
    /// function nor the vector is masked, else marks it pending. Returns whether it was sent.
    /// A vector beyond the table is ignored.
    pub fn signal(
        &mut self,
        vector: u16,
        control: u16,
        sink: &dyn MsiSink,
    ) -> std::io::Result<bool> {
        let i = usize::from(vector);
        let Some(e) = self.entries.get(i).copied() else {
            return Ok(false);
        };
        if control & CONTROL_ENABLE == 0 {
            return Ok(false);
        }
        if control & CONTROL_MASK != 0 || e.control & VECTOR_MASKED != 0 {
            self.pending[i / 64] |= 1 << (i % 64);
            return Ok(false);
        }
        sink.send(MsiMessage {
            address: e.address,
            data: e.data,
        })?;
        Ok(true)
    }

    /// Sends every pending vector that is no longer masked (after the guest changed the
    /// function mask or a vector's mask): call it when message control changes.
    pub fn deliver_pending(&mut self, control: u16, sink: &dyn MsiSink) -> std::io::Result<()> {
        if control & CONTROL_ENABLE == 0 || control & CONTROL_MASK != 0 {
            return Ok(());
        }
        for (i, e) in self.entries.iter().enumerate() {
            let bit = 1u64 << (i % 64);
            if self.pending[i / 64] & bit != 0 && e.control & VECTOR_MASKED == 0 {
                self.pending[i / 64] &= !bit;
                sink.send(MsiMessage {
                    address: e.address,
                    data: e.data,
                })?;
            }
        }
        Ok(())
    }

    /// The entry and the offset within it of an aligned 4- or 8-byte access inside the table.
    fn locate(&self, offset: u64, len: usize) -> Option<(usize, u64)> {
        let len = len as u64;
        if !matches!(len, 4 | 8) || !offset.is_multiple_of(len) {
            return None;
        }
        let end = offset.checked_add(len)?;
        if end > self.table_size() {
            return None;
        }
        Some(((offset / ENTRY_SIZE) as usize, offset % ENTRY_SIZE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<MsiMessage>>);

    impl MsiSink for Recorder {
        fn send(&self, msg: MsiMessage) -> std::io::Result<()> {
            self.0.lock().unwrap().push(msg);
            Ok(())
        }
    }

    fn program(msix: &mut Msix, vector: u64, address: u64, data: u32, sink: &Recorder) {
        let at = vector * ENTRY_SIZE;
        assert!(msix
            .table_write(at, &address.to_le_bytes(), 0, sink)
            .unwrap());
        assert!(msix
            .table_write(at + 8, &data.to_le_bytes(), 0, sink)
            .unwrap());
    }

    #[test]
    fn masked_vectors_pend_and_are_sent_on_unmask() {
        let sink = Recorder::default();
        let mut msix = Msix::new(3).unwrap();
        program(&mut msix, 1, 0xfee0_0000, 0x41, &sink);
        let on = CONTROL_ENABLE;
        // Masked at reset: pending.
        assert!(!msix.signal(1, on, &sink).unwrap());
        let mut pba = [0u8; 8];
        assert!(msix.pba_read(0, &mut pba));
        assert_eq!(u64::from_le_bytes(pba), 0b10);
        // Unmasking sends it once.
        assert!(msix
            .table_write(16 + 12, &0u32.to_le_bytes(), on, &sink)
            .unwrap());
        assert_eq!(
            *sink.0.lock().unwrap(),
            [MsiMessage {
                address: 0xfee0_0000,
                data: 0x41
            }]
        );
        assert!(msix.pba_read(0, &mut pba));
        assert_eq!(u64::from_le_bytes(pba), 0);
        // Unmasked: sent at once; the function mask makes it pend again.
        assert!(msix.signal(1, on, &sink).unwrap());
        assert!(!msix.signal(1, on | CONTROL_MASK, &sink).unwrap());
        msix.deliver_pending(on, &sink).unwrap();
        assert_eq!(sink.0.lock().unwrap().len(), 3);
        // Disabled: nothing, not even pending.
        assert!(!msix.signal(1, 0, &sink).unwrap());
        // Out of range: ignored.
        assert!(!msix.signal(3, on, &sink).unwrap());
    }

    #[test]
    fn table_accesses_are_checked() {
        let sink = Recorder::default();
        let mut msix = Msix::new(2).unwrap();
        let mut b = [0u8; 4];
        assert!(!msix.table_read(2, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert!(!msix.table_read(32, &mut b));
        assert!(!msix.table_read(u64::MAX - 3, &mut b));
        assert!(!msix.table_read(0, &mut [0u8; 2]));
        assert!(!msix.table_write(4, &[0u8; 8], 0, &sink).unwrap());
        // Only the mask bit of vector control is writable.
        assert!(msix
            .table_write(12, &u32::MAX.to_le_bytes(), 0, &sink)
            .unwrap());
        assert!(msix.table_read(12, &mut b));
        assert_eq!(u32::from_le_bytes(b), 1);
        assert!(!msix.pba_read(8, &mut [0u8; 8]));
        assert!(msix.pba_read(4, &mut b));
        assert!(matches!(
            Msix::new(0),
            Err(MsixError::VectorCount { count: 0 })
        ));
        assert!(Msix::new(MAX_VECTORS + 1).is_err());
        assert!(msix.capability(0, 0x2004, 0, 0x3000).is_err());
        assert!(msix.capability(6, 0x2000, 0, 0x3000).is_err());
        let (body, mask) = msix.capability(1, 0x2000, 1, 0x3000).unwrap();
        assert_eq!(u16::from_le_bytes([body[0], body[1]]), 1);
        assert_eq!(
            u32::from_le_bytes([body[2], body[3], body[4], body[5]]),
            0x2001
        );
        assert_eq!(mask, [0, 0xc0]);
    }
}
