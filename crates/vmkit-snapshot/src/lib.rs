//! The vmkit snapshot format: a versioned, checksummed container for a VM's
//! state, a sparse page-aligned file for its memory, and crash-safe writes.
//!
//! The crate is backend-neutral and does not depend on vmkit: it defines the
//! container, and each component (vCPU, irqchip, clock, device, queue…)
//! brings its own serde type and its own section version.
//!
//! - [`state`]: the **state file**. A fixed 88-byte header (magic, format
//!   version, architecture, backend, flags, capabilities digest, section
//!   count, payload length, snapshot identity, header checksum), readable without decoding
//!   anything else, then typed sections: tag, instance index, section
//!   version, payload length and checksum, then a postcard-encoded payload.
//!   [`Writer`] writes one; [`Reader`] and [`Snapshot`] read one, checking
//!   every length, count and checksum before using it.
//! - [`memory`]: the **memory file**. A header area (region table, diff page
//!   lists, per-chunk checksums), then each region's contents at a
//!   page-aligned offset, with zero pages left as holes so that a restore can
//!   `mmap` a region `MAP_PRIVATE` straight from the file. Diff files hold only
//!   the pages written since the previous snapshot.
//! - [`SnapshotId`]: the identity of one snapshot, in both of its files'
//!   headers; a diff memory file also carries its base's. A restore compares
//!   them, so that a state file is never combined with another snapshot's
//!   memory, nor a diff with another base.
//! - [`open_regular`]: opens a snapshot file without blocking on a FIFO, and
//!   refuses anything but a regular file.
//! - [`write_atomically`]: write to a temporary file, fsync, rename over the
//!   target, fsync the directory; [`AtomicFiles`] does the same for files
//!   that belong together, with their syncs overlapped and one directory
//!   sync.
//! - [`Persist`]: the one trait through which every device saves its state
//!   (a serde type of its own) and restores it into a fresh device;
//!   [`Writer::write_device`] and [`Snapshot::read_device`] store it as a
//!   device section that names the device's kind and state version.
//!
//! Byte layouts, compatibility rules and limits are documented in the
//! [`state`] and [`memory`] modules.
//!
//! # Untrusted input
//!
//! A memory file mapped for a lazy restore stays in use while the VM runs:
//! truncating it then makes a touch past its new end raise `SIGBUS`. That is
//! inherent to mapping a file; keep snapshot files read-only, on a file system
//! that does not change under the VM, or copy memory in instead
//! ([`MemoryFile::stream_region`]).
//!
//! Snapshot files are treated as hostile: readers never panic and never
//! allocate more than the documented limits ([`MAX_SECTION_PAYLOAD`],
//! [`MAX_SECTIONS`], [`MAX_STATE_PAYLOAD`], [`MAX_REGIONS`],
//! [`MAX_MEMORY_HEADER_LEN`], [`MAX_CHUNK_SIZE`]), nor more than the input
//! actually holds. Errors ([`StateError`], [`MemoryError`]) name the section
//! (position, tag and index) or region and the reason.
//!
//! # Dependencies, and why
//!
//! - **serde + postcard** encode section payloads. postcard is actively
//!   maintained, has a stable, documented wire format (1.x), is compact
//!   (varints) and decodes without trusting length prefixes for allocation.
//!   bincode is not used: it is unmaintained.
//! - **crc-fast** computes the checksums: CRC-64/NVME (the polynomial NVMe
//!   and object stores use), dual-licensed like this crate, with
//!   run-time-detected SIMD (PCLMULQDQ, and AVX-512 VPCLMULQDQ on stable Rust)
//!   and a table fallback, so checksumming gigabytes of guest memory is fast:
//!   about four times crc64fast-nvme's speed on an AVX-512 host (whose
//!   VPCLMULQDQ path needs a nightly compiler), which made the checksum a
//!   tenth of a full save's cost. A CRC, unlike a plain hash, guarantees
//!   detection of all burst errors up to 64 bits.
//! - **thiserror** for the error enums, as in the rest of vmkit.
//!
//! # Example
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use vmkit_snapshot::{
//!     write_atomically, Arch, Backend, Expected, MemoryFile, MemoryWriter, SectionTag,
//!     Snapshot, SnapshotId, StateError, Writer,
//! };
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct VcpuState { rip: u64, rflags: u64 }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let state_path = dir.path().join("vm.state");
//! let caps = [0xab; 32]; // digest of this host's capabilities
//! let id = SnapshotId::random()?; // written into both files
//!
//! // Save: one section per vCPU, written crash-safely.
//! write_atomically(&state_path, |file| -> Result<(), StateError> {
//!     let mut w = Writer::new(file, Arch::X86_64, Backend::Kvm, caps);
//!     w.set_snapshot_id(id);
//!     for cpu in 0..2u32 {
//!         let state = VcpuState { rip: 0x1000 + u64::from(cpu), rflags: 2 };
//!         w.write_section(SectionTag::VCPU, cpu, 1, &state)?;
//!     }
//!     w.finish()?;
//!     Ok(())
//! })?;
//!
//! // Guest memory: one 64 KiB region, mostly zero (holes in the file).
//! let mut ram = vec![0u8; 64 * 1024];
//! ram[8192] = 0x90;
//! let mem_path = dir.path().join("vm.mem");
//! write_atomically(&mem_path, |file| {
//!     MemoryWriter::new()
//!         .with_identity(id, SnapshotId::NONE)
//!         .write_full(file, &[(0, &ram)])
//! })?;
//!
//! // Restore: check the header against this host, then read each section.
//! let expected = Expected { arch: Arch::X86_64, backend: Backend::Kvm };
//! let snap = Snapshot::open(&state_path, expected)?;
//! assert_eq!(snap.header().capabilities, caps);
//! let cpu1: VcpuState = snap.read_section(SectionTag::VCPU, 1, 1..=1)?;
//! assert_eq!(cpu1, VcpuState { rip: 0x1001, rflags: 2 });
//!
//! let mut file = vmkit_snapshot::open_regular(&mem_path)?;
//! let mem = MemoryFile::read_header(&mut file)?;
//! assert_eq!(mem.snapshot_id(), snap.header().snapshot_id); // saved together
//! let mut restored = vec![0u8; mem.regions()[0].size as usize];
//! mem.read_region(&mut file, 0, &mut restored)?; // verifies chunk checksums
//! assert_eq!(restored, ram);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod atomic;
mod bytes;
mod id;
pub mod memory;
mod open;
mod persist;
pub mod state;

pub use atomic::{write_atomically, AtomicFiles, AtomicWriteError};
pub use id::SnapshotId;
pub use memory::{
    DiffRegion, MemoryError, MemoryFile, MemoryKind, MemoryWriter, RegionInfo, RegionSource,
    DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_MEMORY_HEADER_LEN, MAX_REGIONS, PAGE_SIZE,
};
pub use open::{open_regular, OpenError};
pub use persist::Persist;
pub use state::{
    Arch, Backend, Expected, Flags, Header, Part, Reader, Section, SectionHeader, SectionId,
    SectionTag, Snapshot, StateError, Writer, MAX_SECTIONS, MAX_SECTION_PAYLOAD, MAX_STATE_PAYLOAD,
};

/// The checksum used throughout both file formats: CRC-64/NVME of `bytes`.
pub fn checksum(bytes: &[u8]) -> u64 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, bytes)
}

/// [`checksum`] of bytes that arrive in pieces: the checksum of their concatenation.
pub(crate) struct Checksum(crc_fast::Digest);

impl Checksum {
    /// The checksum of nothing yet.
    pub(crate) fn new() -> Self {
        Checksum(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme))
    }

    /// Appends `bytes`.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The checksum of everything appended.
    pub(crate) fn finish(&self) -> u64 {
        self.0.finalize()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn checksum_is_crc64_nvme() {
        // The CRC-64/NVME check value of "123456789".
        assert_eq!(super::checksum(b"123456789"), 0xae8b_1486_0a79_9888);
    }
}
