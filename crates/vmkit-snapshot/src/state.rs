//! The state file: a fixed header, then typed, versioned, checksummed sections.
//!
//! # Byte layout
//!
//! All integers are little-endian. Checksums are CRC-64/NVME ([`checksum`]).
//!
//! File header, [`HEADER_LEN`] = 88 bytes:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8  | magic, [`STATE_MAGIC`] = `VMKITSNP` |
//! | 8  | 2  | format major version ([`FORMAT_MAJOR`]) |
//! | 10 | 2  | format minor version ([`FORMAT_MINOR`]) |
//! | 12 | 2  | architecture ([`Arch`]) |
//! | 14 | 2  | backend ([`Backend`]) |
//! | 16 | 4  | flags ([`Flags`]) |
//! | 20 | 4  | section count (at most [`MAX_SECTIONS`]) |
//! | 24 | 8  | payload length: bytes after the header, i.e. all section headers and payloads (at most [`MAX_STATE_PAYLOAD`]) |
//! | 32 | 32 | capabilities digest of the host that wrote the file (opaque) |
//! | 64 | 16 | snapshot identity ([`SnapshotId`]), repeated in the memory file saved with it |
//! | 80 | 8  | checksum of bytes 0..80 |
//!
//! Then `section count` sections, back to back. Each is a section header,
//! [`SECTION_HEADER_LEN`] = 40 bytes:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 4 | tag ([`SectionTag`], a four-character code) |
//! | 4  | 4 | instance index (vCPU number, device number…) |
//! | 8  | 2 | section version (the component's own schema version) |
//! | 10 | 6 | reserved: written as zero, ignored by 1.x readers |
//! | 16 | 8 | payload length (at most [`MAX_SECTION_PAYLOAD`]) |
//! | 24 | 8 | checksum of the payload |
//! | 32 | 8 | checksum of section-header bytes 0..32 |
//!
//! followed by the payload: one value encoded with postcard.
//!
//! # Compatibility rules
//!
//! - A reader refuses a file whose major version is not [`FORMAT_MAJOR`]
//!   (format 1 had no snapshot identity, so its files are refused too), and
//!   accepts any minor version: a minor version may only add section tags,
//!   section versions and flag bits outside [`Flags::MUST_UNDERSTAND_MASK`].
//!   The header layout is fixed for major 2.
//! - Flag bits inside [`Flags::MUST_UNDERSTAND_MASK`] that this reader does
//!   not know make it refuse the file; unknown bits outside it are ignored.
//! - Each section carries its own version; a component reads it with
//!   [`Section::decode`] and the range of versions it understands.
//! - A reader skips sections it does not know simply by not decoding them.
//!
//! # Limits
//!
//! Every length and count is checked before anything is allocated:
//! [`MAX_SECTIONS`], [`MAX_SECTION_PAYLOAD`] and [`MAX_STATE_PAYLOAD`].
//! Payload buffers grow with the bytes actually read, so a short file that
//! claims a large section never causes a large allocation either.
//!
//! # Writing
//!
//! [`Writer`] buffers the encoded sections in memory and writes header and
//! sections in one pass in [`Writer::finish`], so it needs only [`Write`], not
//! `Seek`. This is cheap because a state file holds only device and CPU state
//! (bounded by [`MAX_STATE_PAYLOAD`]); guest memory goes in the separate
//! [memory file](crate::memory).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::ops::RangeInclusive;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::bytes::{arr, put, read_full, read_up_to, u16_at, u32_at, u64_at};
use crate::{checksum, AtomicWriteError, Persist, SnapshotId};

/// Magic bytes at the start of every state file.
pub const STATE_MAGIC: [u8; 8] = *b"VMKITSNP";
/// Format major version this crate writes; readers refuse any other major.
pub const FORMAT_MAJOR: u16 = 2;
/// Format minor version this crate writes; readers accept any minor.
pub const FORMAT_MINOR: u16 = 0;
/// Size of the file header in bytes.
pub const HEADER_LEN: usize = 88;
/// Size of each section header in bytes.
pub const SECTION_HEADER_LEN: usize = 40;
/// Largest section payload, in bytes, that is written or read (64 MiB).
pub const MAX_SECTION_PAYLOAD: u64 = 64 << 20;
/// Largest number of sections in one state file.
pub const MAX_SECTIONS: u32 = 16_384;
/// Largest total payload (all section headers and payloads) of one state
/// file, in bytes (256 MiB).
pub const MAX_STATE_PAYLOAD: u64 = 256 << 20;

/// Length of the capabilities digest stored in the header.
pub const CAPABILITIES_DIGEST_LEN: usize = 32;

const HEADER_CRC_OFF: usize = 80;
const SNAPSHOT_ID_OFF: usize = 64;
const SECTION_CRC_OFF: usize = 32;

/// The guest architecture a state file was written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u16)]
pub enum Arch {
    /// x86-64 (value 1).
    X86_64 = 1,
    /// 64-bit Arm (value 2); reserved for a future backend.
    Aarch64 = 2,
}

impl Arch {
    /// The architecture's value in the header.
    pub const fn to_u16(self) -> u16 {
        self as u16
    }

    /// The architecture with header value `v`, if this crate knows it.
    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::X86_64),
            2 => Some(Self::Aarch64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::X86_64 => f.write_str("x86_64"),
            Self::Aarch64 => f.write_str("aarch64"),
        }
    }
}

/// The hypervisor backend that wrote a state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u16)]
pub enum Backend {
    /// Linux KVM (value 1).
    Kvm = 1,
    /// Xen (value 2).
    Xen = 2,
}

impl Backend {
    /// The backend's value in the header.
    pub const fn to_u16(self) -> u16 {
        self as u16
    }

    /// The backend with header value `v`, if this crate knows it.
    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::Kvm),
            2 => Some(Self::Xen),
            _ => None,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kvm => f.write_str("KVM"),
            Self::Xen => f.write_str("Xen"),
        }
    }
}

/// Header flags.
///
/// Bits inside [`Flags::MUST_UNDERSTAND_MASK`] change how a file must be read:
/// a reader refuses a file carrying such a bit it does not know (see
/// [`Flags::KNOWN`]). Bits outside the mask are hints a reader may ignore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(u32);

impl Flags {
    /// The guest memory of this snapshot is a diff memory file that must be
    /// applied on top of a base (must-understand bit 0).
    pub const DIFF_MEMORY: Flags = Flags(1);
    /// Bits a reader must understand to read the file (the low 16 bits).
    pub const MUST_UNDERSTAND_MASK: u32 = 0x0000_ffff;
    /// Must-understand bits this version of the crate knows.
    pub const KNOWN: u32 = Self::DIFF_MEMORY.0;

    /// No flags.
    pub const fn empty() -> Self {
        Flags(0)
    }

    /// Flags with exactly these bits, known or not.
    pub const fn from_bits_retain(bits: u32) -> Self {
        Flags(bits)
    }

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Must-understand bits set in `self` that this crate does not know.
    pub const fn unknown_must_understand(self) -> u32 {
        self.0 & Self::MUST_UNDERSTAND_MASK & !Self::KNOWN
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// A section's type, a four-character code stored as a little-endian `u32`
/// (so the code reads as text in a hex dump).
///
/// The crate defines the container, not the components: the constants below
/// are conventional tags for vmkit's components, and any other code can be
/// used with [`SectionTag::new`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SectionTag(pub u32);

impl SectionTag {
    /// One vCPU's state; the index is the vCPU number.
    pub const VCPU: SectionTag = SectionTag::new(*b"VCPU");
    /// The VM's interrupt controllers.
    pub const IRQCHIP: SectionTag = SectionTag::new(*b"IRQC");
    /// The VM's clock.
    pub const CLOCK: SectionTag = SectionTag::new(*b"CLCK");
    /// The programmable interval timer.
    pub const PIT: SectionTag = SectionTag::new(*b"PIT ");
    /// One device's state; the index is the device number. Written by
    /// [`Writer::write_device`]: the payload starts with the device kind.
    pub const DEVICE: SectionTag = SectionTag::new(*b"DEVC");
    /// One virtqueue's state; the index identifies the queue.
    pub const QUEUE: SectionTag = SectionTag::new(*b"VQUE");
    /// The guest memory layout (the regions the memory file holds).
    pub const MEMORY_LAYOUT: SectionTag = SectionTag::new(*b"MEML");
    /// The capabilities of the host that wrote the snapshot, in full.
    pub const CAPABILITIES: SectionTag = SectionTag::new(*b"CAPS");

    /// The tag with this four-character code.
    pub const fn new(code: [u8; 4]) -> Self {
        SectionTag(u32::from_le_bytes(code))
    }

    /// The four-character code.
    pub const fn code(self) -> [u8; 4] {
        self.0.to_le_bytes()
    }
}

impl fmt::Display for SectionTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code();
        if code.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            for b in code {
                write!(f, "{}", char::from(b))?;
            }
            Ok(())
        } else {
            write!(f, "{:#010x}", self.0)
        }
    }
}

impl fmt::Debug for SectionTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SectionTag({self})")
    }
}

/// Names one section in errors: its position in the file (0-based) and the
/// tag and instance index its header gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SectionId {
    /// 0-based position of the section in the file.
    pub position: u32,
    /// The section's tag.
    pub tag: SectionTag,
    /// The section's instance index.
    pub index: u32,
}

impl fmt::Display for SectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "section #{} ({}[{}])",
            self.position, self.tag, self.index
        )
    }
}

/// Which part of a state file an I/O error or truncation hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The file header.
    Header,
    /// The header of the section at this 0-based position.
    SectionHeader {
        /// 0-based position of the section.
        position: u32,
    },
    /// The payload of this section.
    Payload(SectionId),
    /// The end of the file, checked for trailing bytes.
    End,
    /// The output of a writer.
    Output,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Header => f.write_str("file header"),
            Part::SectionHeader { position } => write!(f, "header of section #{position}"),
            Part::Payload(id) => write!(f, "payload of {id}"),
            Part::End => f.write_str("end of file"),
            Part::Output => f.write_str("output"),
        }
    }
}

/// Errors of reading or writing a state file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StateError {
    /// An I/O error other than end of file.
    #[error("I/O error on {part}")]
    Io {
        /// Where the error happened.
        part: Part,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file ended inside `part`.
    #[error("file truncated in {part}: needed {needed} bytes, got {got}")]
    Truncated {
        /// Where the file ended.
        part: Part,
        /// Bytes that part needs.
        needed: u64,
        /// Bytes that were there.
        got: u64,
    },
    /// The file does not start with [`STATE_MAGIC`].
    #[error("not a vmkit state file: magic {found:02x?}")]
    BadMagic {
        /// The first eight bytes.
        found: [u8; 8],
    },
    /// The file's major version is not this reader's (older files lack the
    /// snapshot identity; newer ones are unknown).
    #[error(
        "state file format {found}.x is not supported: this reader reads format {supported}.x only"
    )]
    UnsupportedMajor {
        /// The file's major version.
        found: u16,
        /// The newest major version this reader reads.
        supported: u16,
    },
    /// The header checksum does not match.
    #[error("file header checksum mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    HeaderChecksum {
        /// Checksum stored in the file.
        stored: u64,
        /// Checksum of the bytes read.
        computed: u64,
    },
    /// The header names an architecture this crate does not know.
    #[error("unknown architecture {0} in file header")]
    UnknownArch(u16),
    /// The header names a backend this crate does not know.
    #[error("unknown backend {0} in file header")]
    UnknownBackend(u16),
    /// The file was written for another architecture.
    #[error("architecture mismatch: expected {expected}, file is {found}")]
    ArchMismatch {
        /// What the caller expects.
        expected: Arch,
        /// What the file holds.
        found: Arch,
    },
    /// The file was written by another backend.
    #[error("backend mismatch: expected {expected}, file is {found}")]
    BackendMismatch {
        /// What the caller expects.
        expected: Backend,
        /// What the file holds.
        found: Backend,
    },
    /// Must-understand flag bits this reader does not know.
    #[error("unknown must-understand flags {bits:#010x}")]
    UnknownFlags {
        /// The unknown bits.
        bits: u32,
    },
    /// More sections than [`MAX_SECTIONS`].
    #[error("too many sections: {count} (at most {max})")]
    TooManySections {
        /// The count in the header (or being written).
        count: u64,
        /// The limit.
        max: u32,
    },
    /// The total payload is larger than [`MAX_STATE_PAYLOAD`].
    #[error("state payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// The payload length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The payload length cannot even hold the section headers.
    #[error("payload length {payload_len} cannot hold {section_count} section headers")]
    PayloadTooShort {
        /// Sections in the header.
        section_count: u32,
        /// Payload length in the header.
        payload_len: u64,
    },
    /// A section header would extend past the declared payload length.
    #[error("header of section #{position} needs {needed} bytes but only {remaining} remain in the payload")]
    SectionHeaderOutsidePayload {
        /// 0-based position of the section.
        position: u32,
        /// Bytes the section header needs.
        needed: u64,
        /// Payload bytes left.
        remaining: u64,
    },
    /// A section header's checksum does not match; its tag and index may be
    /// corrupt too.
    #[error("{section}: section header checksum mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    SectionHeaderChecksum {
        /// The section as its (unreliable) header names it.
        section: SectionId,
        /// Checksum stored in the file.
        stored: u64,
        /// Checksum of the bytes read.
        computed: u64,
    },
    /// A section's payload is larger than [`MAX_SECTION_PAYLOAD`].
    #[error("{section}: payload of {len} bytes exceeds the limit of {max}")]
    SectionTooLarge {
        /// The section.
        section: SectionId,
        /// Its payload length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A section's payload extends past the declared payload length.
    #[error("{section}: payload of {len} bytes extends past the end of the state payload ({remaining} bytes left)")]
    SectionBeyondPayload {
        /// The section.
        section: SectionId,
        /// Its payload length.
        len: u64,
        /// Payload bytes left.
        remaining: u64,
    },
    /// A section's payload checksum does not match.
    #[error(
        "{section}: payload checksum mismatch: stored {stored:#018x}, computed {computed:#018x}"
    )]
    SectionChecksum {
        /// The section.
        section: SectionId,
        /// Checksum stored in the file.
        stored: u64,
        /// Checksum of the bytes read.
        computed: u64,
    },
    /// Two sections have the same tag and index.
    #[error("{section}: duplicate section {}[{}]", .section.tag, .section.index)]
    DuplicateSection {
        /// The second section.
        section: SectionId,
    },
    /// The sections end before the declared payload length.
    #[error("sections use {used} bytes of a declared payload of {declared}")]
    PayloadLenMismatch {
        /// Payload length in the header.
        declared: u64,
        /// Bytes the sections use.
        used: u64,
    },
    /// Bytes follow the last section.
    #[error("trailing data after the last section (file offset {offset})")]
    TrailingData {
        /// File offset of the first trailing byte.
        offset: u64,
    },
    /// The file's length differs from the one its header implies.
    #[error("file is {actual} bytes long but its header implies {declared}")]
    LengthMismatch {
        /// Length implied by the header.
        declared: u64,
        /// Actual length.
        actual: u64,
    },
    /// A section's version is outside the range the caller reads.
    #[error("{section}: section version {version} is not in the supported range {}..={}", .supported.start(), .supported.end())]
    UnsupportedSectionVersion {
        /// The section.
        section: SectionId,
        /// Its version.
        version: u16,
        /// Versions the caller reads.
        supported: RangeInclusive<u16>,
    },
    /// A section's payload does not decode as the requested type.
    #[error("{section}: payload does not decode")]
    Decode {
        /// The section.
        section: SectionId,
        /// The decoder's error.
        #[source]
        source: postcard::Error,
    },
    /// A section's payload decoded but left bytes over.
    #[error("{section}: {unused} payload bytes left over after decoding")]
    TrailingPayload {
        /// The section.
        section: SectionId,
        /// Bytes not consumed.
        unused: usize,
    },
    /// A device section holds the state of another kind of device than the
    /// one asked for ([`Section::decode_device`]).
    #[error("{section}: holds the state of a {found:?} device, not of a {expected:?} device")]
    WrongDeviceKind {
        /// The section.
        section: SectionId,
        /// The kind asked for ([`Persist::KIND`]).
        expected: &'static str,
        /// The kind the section names.
        found: String,
    },
    /// A section was not found.
    #[error("missing section {tag}[{index}]")]
    MissingSection {
        /// The tag asked for.
        tag: SectionTag,
        /// The index asked for.
        index: u32,
    },
    /// A value could not be encoded.
    #[error("section {tag}[{index}]: cannot encode")]
    Encode {
        /// The tag being written.
        tag: SectionTag,
        /// The index being written.
        index: u32,
        /// The encoder's error.
        #[source]
        source: postcard::Error,
    },
    /// The file could not be opened, or is not a regular file.
    #[error(transparent)]
    Open(#[from] crate::OpenError),
    /// An earlier error stopped this reader.
    #[error("an earlier error stopped this reader")]
    Poisoned,
    /// Writing the file atomically failed.
    #[error(transparent)]
    AtomicWrite(#[from] AtomicWriteError),
}

/// The decoded file header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format major version.
    pub major: u16,
    /// Format minor version.
    pub minor: u16,
    /// Guest architecture.
    pub arch: Arch,
    /// Backend that wrote the file.
    pub backend: Backend,
    /// Header flags.
    pub flags: Flags,
    /// Capabilities digest of the host that wrote the file (opaque bytes).
    pub capabilities: [u8; CAPABILITIES_DIGEST_LEN],
    /// The snapshot's identity, repeated in its memory file.
    pub snapshot_id: SnapshotId,
    /// Number of sections.
    pub section_count: u32,
    /// Bytes after the header: all section headers and payloads.
    pub payload_len: u64,
}

impl Header {
    /// Decodes and validates a header: magic, major version, checksum,
    /// flags, architecture and backend values, section count and payload
    /// length limits. Checks in that order, so that a file of a newer major
    /// version is reported as such even if its header layout changed.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, StateError> {
        let magic: [u8; 8] = arr(b, 0);
        if magic != STATE_MAGIC {
            return Err(StateError::BadMagic { found: magic });
        }
        let major = u16_at(b, 8);
        if major != FORMAT_MAJOR {
            return Err(StateError::UnsupportedMajor {
                found: major,
                supported: FORMAT_MAJOR,
            });
        }
        let stored = u64_at(b, HEADER_CRC_OFF);
        let computed = checksum(b.get(..HEADER_CRC_OFF).unwrap_or_default());
        if stored != computed {
            return Err(StateError::HeaderChecksum { stored, computed });
        }
        let flags = Flags(u32_at(b, 16));
        let unknown = flags.unknown_must_understand();
        if unknown != 0 {
            return Err(StateError::UnknownFlags { bits: unknown });
        }
        let arch_raw = u16_at(b, 12);
        let arch = Arch::from_u16(arch_raw).ok_or(StateError::UnknownArch(arch_raw))?;
        let backend_raw = u16_at(b, 14);
        let backend =
            Backend::from_u16(backend_raw).ok_or(StateError::UnknownBackend(backend_raw))?;
        let section_count = u32_at(b, 20);
        if section_count > MAX_SECTIONS {
            return Err(StateError::TooManySections {
                count: section_count.into(),
                max: MAX_SECTIONS,
            });
        }
        let payload_len = u64_at(b, 24);
        if payload_len > MAX_STATE_PAYLOAD {
            return Err(StateError::PayloadTooLarge {
                len: payload_len,
                max: MAX_STATE_PAYLOAD,
            });
        }
        if payload_len < u64::from(section_count) * SECTION_HEADER_LEN as u64 {
            return Err(StateError::PayloadTooShort {
                section_count,
                payload_len,
            });
        }
        Ok(Header {
            major,
            minor: u16_at(b, 10),
            arch,
            backend,
            flags,
            capabilities: arr(b, 32),
            snapshot_id: SnapshotId(arr(b, SNAPSHOT_ID_OFF)),
            section_count,
            payload_len,
        })
    }

    /// Encodes the header, computing its checksum.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        put(&mut b, 0, &STATE_MAGIC);
        put(&mut b, 8, &self.major.to_le_bytes());
        put(&mut b, 10, &self.minor.to_le_bytes());
        put(&mut b, 12, &self.arch.to_u16().to_le_bytes());
        put(&mut b, 14, &self.backend.to_u16().to_le_bytes());
        put(&mut b, 16, &self.flags.bits().to_le_bytes());
        put(&mut b, 20, &self.section_count.to_le_bytes());
        put(&mut b, 24, &self.payload_len.to_le_bytes());
        put(&mut b, 32, &self.capabilities);
        put(&mut b, SNAPSHOT_ID_OFF, &self.snapshot_id.0);
        let crc = checksum(b.get(..HEADER_CRC_OFF).unwrap_or_default());
        put(&mut b, HEADER_CRC_OFF, &crc.to_le_bytes());
        b
    }

    /// Total file length the header implies.
    pub fn file_len(&self) -> u64 {
        HEADER_LEN as u64 + self.payload_len
    }
}

/// What a reader expects of a file; [`Reader::new`] refuses anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The architecture the caller restores on.
    pub arch: Arch,
    /// The backend the caller restores with.
    pub backend: Backend,
}

/// A decoded section header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionHeader {
    /// The section's tag.
    pub tag: SectionTag,
    /// The instance index.
    pub index: u32,
    /// The section's own version.
    pub version: u16,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// Checksum of the payload.
    pub payload_checksum: u64,
}

impl SectionHeader {
    /// Encodes the section header, computing its checksum.
    pub fn encode(&self) -> [u8; SECTION_HEADER_LEN] {
        let mut b = [0u8; SECTION_HEADER_LEN];
        put(&mut b, 0, &self.tag.0.to_le_bytes());
        put(&mut b, 4, &self.index.to_le_bytes());
        put(&mut b, 8, &self.version.to_le_bytes());
        put(&mut b, 16, &self.payload_len.to_le_bytes());
        put(&mut b, 24, &self.payload_checksum.to_le_bytes());
        let crc = checksum(b.get(..SECTION_CRC_OFF).unwrap_or_default());
        put(&mut b, SECTION_CRC_OFF, &crc.to_le_bytes());
        b
    }

    /// Decodes a section header at `position`, checking its checksum (but not
    /// its length against limits; [`Reader`] does that).
    pub fn decode(b: &[u8; SECTION_HEADER_LEN], position: u32) -> Result<Self, StateError> {
        let hdr = SectionHeader {
            tag: SectionTag(u32_at(b, 0)),
            index: u32_at(b, 4),
            version: u16_at(b, 8),
            payload_len: u64_at(b, 16),
            payload_checksum: u64_at(b, 24),
        };
        let stored = u64_at(b, SECTION_CRC_OFF);
        let computed = checksum(b.get(..SECTION_CRC_OFF).unwrap_or_default());
        if stored != computed {
            return Err(StateError::SectionHeaderChecksum {
                section: hdr.id(position),
                stored,
                computed,
            });
        }
        Ok(hdr)
    }

    fn id(&self, position: u32) -> SectionId {
        SectionId {
            position,
            tag: self.tag,
            index: self.index,
        }
    }
}

/// One section read from a file; its checksums have been verified.
#[derive(Clone, Debug)]
pub struct Section {
    id: SectionId,
    header: SectionHeader,
    payload: Vec<u8>,
}

impl Section {
    /// The section's position, tag and index.
    pub fn id(&self) -> SectionId {
        self.id
    }

    /// The section's tag.
    pub fn tag(&self) -> SectionTag {
        self.header.tag
    }

    /// The section's instance index.
    pub fn index(&self) -> u32 {
        self.header.index
    }

    /// The section's version.
    pub fn version(&self) -> u16 {
        self.header.version
    }

    /// The section header.
    pub fn header(&self) -> &SectionHeader {
        &self.header
    }

    /// The raw (verified) payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Decodes the payload as a `T`, refusing a section version outside
    /// `versions` and a payload with bytes left over.
    pub fn decode<T: DeserializeOwned>(
        &self,
        versions: RangeInclusive<u16>,
    ) -> Result<T, StateError> {
        if !versions.contains(&self.header.version) {
            return Err(StateError::UnsupportedSectionVersion {
                section: self.id,
                version: self.header.version,
                supported: versions,
            });
        }
        let (value, rest) =
            postcard::take_from_bytes::<T>(&self.payload).map_err(|source| StateError::Decode {
                section: self.id,
                source,
            })?;
        if !rest.is_empty() {
            return Err(StateError::TrailingPayload {
                section: self.id,
                unused: rest.len(),
            });
        }
        Ok(value)
    }

    /// Decodes the payload as the state of a device of type `P`, written by
    /// [`Writer::write_device`]: refuses a kind other than [`Persist::KIND`]
    /// ([`StateError::WrongDeviceKind`]), then a section version other than
    /// [`Persist::VERSION`], before decoding the state; then a payload with
    /// bytes left over. The state itself is not validated here: that is
    /// [`Persist::restore_state`]'s job.
    pub fn decode_device<P: Persist + ?Sized>(&self) -> Result<P::State, StateError> {
        let decode = |source| StateError::Decode {
            section: self.id,
            source,
        };
        // The kind leads the payload in every version.
        let (kind, rest) = postcard::take_from_bytes::<&str>(&self.payload).map_err(decode)?;
        if kind != P::KIND {
            return Err(StateError::WrongDeviceKind {
                section: self.id,
                expected: P::KIND,
                found: kind.to_string(),
            });
        }
        let version = self.header.version;
        if version != P::VERSION {
            return Err(StateError::UnsupportedSectionVersion {
                section: self.id,
                version,
                supported: P::VERSION..=P::VERSION,
            });
        }
        let (state, rest) = postcard::take_from_bytes::<P::State>(rest).map_err(decode)?;
        if !rest.is_empty() {
            return Err(StateError::TrailingPayload {
                section: self.id,
                unused: rest.len(),
            });
        }
        Ok(state)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadState {
    Active,
    Finished,
    Failed,
}

/// Reads a state file from any [`Read`] source, one verified section at a
/// time.
///
/// [`Reader::new`] checks the header; [`Reader::next_section`] (or the
/// [`Iterator`] implementation) then yields each section after checking its
/// header checksum, its length against the limits and the remaining payload,
/// its payload checksum and that its (tag, index) is unique. After the last
/// section it checks that the payload length adds up and that nothing
/// follows. After any error the reader is stopped.
#[derive(Debug)]
pub struct Reader<R> {
    inner: R,
    header: Header,
    position: u32,
    remaining: u64,
    seen: HashSet<(SectionTag, u32)>,
    state: ReadState,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header against `expected`.
    pub fn new(mut inner: R, expected: Expected) -> Result<Self, StateError> {
        let mut b = [0u8; HEADER_LEN];
        let got = read_full(&mut inner, &mut b).map_err(|source| StateError::Io {
            part: Part::Header,
            source,
        })?;
        if got < HEADER_LEN {
            // A short file may still show a wrong magic: report that first.
            if got >= STATE_MAGIC.len() && arr::<8>(&b, 0) != STATE_MAGIC {
                return Err(StateError::BadMagic { found: arr(&b, 0) });
            }
            // And a file of another format version, whose header may be shorter.
            if got >= 10 && u16_at(&b, 8) != FORMAT_MAJOR {
                return Err(StateError::UnsupportedMajor {
                    found: u16_at(&b, 8),
                    supported: FORMAT_MAJOR,
                });
            }
            return Err(StateError::Truncated {
                part: Part::Header,
                needed: HEADER_LEN as u64,
                got: got as u64,
            });
        }
        let header = Header::decode(&b)?;
        if header.arch != expected.arch {
            return Err(StateError::ArchMismatch {
                expected: expected.arch,
                found: header.arch,
            });
        }
        if header.backend != expected.backend {
            return Err(StateError::BackendMismatch {
                expected: expected.backend,
                found: header.backend,
            });
        }
        Ok(Reader {
            inner,
            remaining: header.payload_len,
            header,
            position: 0,
            seen: HashSet::new(),
            state: ReadState::Active,
        })
    }

    /// The file header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next section, or `None` after the last one.
    pub fn next_section(&mut self) -> Result<Option<Section>, StateError> {
        match self.state {
            ReadState::Finished => return Ok(None),
            ReadState::Failed => return Err(StateError::Poisoned),
            ReadState::Active => {}
        }
        let result = self.read_one();
        match &result {
            Ok(None) => self.state = ReadState::Finished,
            Err(_) => self.state = ReadState::Failed,
            Ok(Some(_)) => {}
        }
        result
    }

    fn read_one(&mut self) -> Result<Option<Section>, StateError> {
        if self.position >= self.header.section_count {
            return self.finish().map(|()| None);
        }
        let position = self.position;
        let hlen = SECTION_HEADER_LEN as u64;
        if self.remaining < hlen {
            return Err(StateError::SectionHeaderOutsidePayload {
                position,
                needed: hlen,
                remaining: self.remaining,
            });
        }
        let mut b = [0u8; SECTION_HEADER_LEN];
        let part = Part::SectionHeader { position };
        let got =
            read_full(&mut self.inner, &mut b).map_err(|source| StateError::Io { part, source })?;
        if got < SECTION_HEADER_LEN {
            return Err(StateError::Truncated {
                part,
                needed: hlen,
                got: got as u64,
            });
        }
        self.remaining -= hlen;
        let hdr = SectionHeader::decode(&b, position)?;
        let id = hdr.id(position);
        if hdr.payload_len > MAX_SECTION_PAYLOAD {
            return Err(StateError::SectionTooLarge {
                section: id,
                len: hdr.payload_len,
                max: MAX_SECTION_PAYLOAD,
            });
        }
        if hdr.payload_len > self.remaining {
            return Err(StateError::SectionBeyondPayload {
                section: id,
                len: hdr.payload_len,
                remaining: self.remaining,
            });
        }
        if !self.seen.insert((hdr.tag, hdr.index)) {
            return Err(StateError::DuplicateSection { section: id });
        }
        let part = Part::Payload(id);
        let payload = read_up_to(&mut self.inner, hdr.payload_len)
            .map_err(|source| StateError::Io { part, source })?;
        if (payload.len() as u64) < hdr.payload_len {
            return Err(StateError::Truncated {
                part,
                needed: hdr.payload_len,
                got: payload.len() as u64,
            });
        }
        self.remaining -= hdr.payload_len;
        let computed = checksum(&payload);
        if computed != hdr.payload_checksum {
            return Err(StateError::SectionChecksum {
                section: id,
                stored: hdr.payload_checksum,
                computed,
            });
        }
        self.position += 1;
        Ok(Some(Section {
            id,
            header: hdr,
            payload,
        }))
    }

    fn finish(&mut self) -> Result<(), StateError> {
        if self.remaining != 0 {
            return Err(StateError::PayloadLenMismatch {
                declared: self.header.payload_len,
                used: self.header.payload_len - self.remaining,
            });
        }
        let mut one = [0u8; 1];
        let got = read_full(&mut self.inner, &mut one).map_err(|source| StateError::Io {
            part: Part::End,
            source,
        })?;
        if got != 0 {
            return Err(StateError::TrailingData {
                offset: self.header.file_len(),
            });
        }
        Ok(())
    }

    /// Reads every remaining section into a [`Snapshot`].
    pub fn read_all(mut self) -> Result<Snapshot, StateError> {
        let mut sections = BTreeMap::new();
        while let Some(s) = self.next_section()? {
            sections.insert((s.tag(), s.index()), s);
        }
        Ok(Snapshot {
            header: self.header,
            sections,
        })
    }
}

impl Reader<BufReader<File>> {
    /// Opens a state file, checks its header against `expected` and its
    /// length against the one the header implies (so truncation is caught
    /// before any section is read).
    pub fn open(path: impl AsRef<Path>, expected: Expected) -> Result<Self, StateError> {
        let file = crate::open_regular(path.as_ref())?;
        let actual = file
            .metadata()
            .map_err(|source| StateError::Io {
                part: Part::Header,
                source,
            })?
            .len();
        let reader = Reader::new(BufReader::new(file), expected)?;
        let declared = reader.header.file_len();
        if declared != actual {
            return Err(StateError::LengthMismatch { declared, actual });
        }
        Ok(reader)
    }
}

impl<R: Read> Iterator for Reader<R> {
    type Item = Result<Section, StateError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.state {
            ReadState::Active => self.next_section().transpose(),
            ReadState::Finished | ReadState::Failed => None,
        }
    }
}

/// All sections of a state file, verified and indexed by (tag, index).
#[derive(Clone, Debug)]
pub struct Snapshot {
    header: Header,
    sections: BTreeMap<(SectionTag, u32), Section>,
}

impl Snapshot {
    /// Opens and reads a whole state file (see [`Reader::open`]).
    pub fn open(path: impl AsRef<Path>, expected: Expected) -> Result<Self, StateError> {
        Reader::open(path, expected)?.read_all()
    }

    /// Reads a whole state file from a byte slice.
    pub fn from_bytes(bytes: &[u8], expected: Expected) -> Result<Self, StateError> {
        let reader = Reader::new(bytes, expected)?;
        let declared = reader.header().file_len();
        if declared != bytes.len() as u64 {
            return Err(StateError::LengthMismatch {
                declared,
                actual: bytes.len() as u64,
            });
        }
        reader.read_all()
    }

    /// The file header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The section with this tag and index, if present.
    pub fn get(&self, tag: SectionTag, index: u32) -> Option<&Section> {
        self.sections.get(&(tag, index))
    }

    /// Reads the state of device `index`, a device of type `P`, from its
    /// [`SectionTag::DEVICE`] section (see [`Section::decode_device`]); a
    /// missing section is an error.
    pub fn read_device<P: Persist + ?Sized>(&self, index: u32) -> Result<P::State, StateError> {
        self.get(SectionTag::DEVICE, index)
            .ok_or(StateError::MissingSection {
                tag: SectionTag::DEVICE,
                index,
            })?
            .decode_device::<P>()
    }

    /// Decodes the section with this tag and index as a `T`, refusing a
    /// version outside `versions`; a missing section is an error.
    pub fn read_section<T: DeserializeOwned>(
        &self,
        tag: SectionTag,
        index: u32,
        versions: RangeInclusive<u16>,
    ) -> Result<T, StateError> {
        self.get(tag, index)
            .ok_or(StateError::MissingSection { tag, index })?
            .decode(versions)
    }

    /// Every instance of `tag`, by increasing index.
    pub fn instances(&self, tag: SectionTag) -> impl Iterator<Item = &Section> + '_ {
        self.sections
            .range((tag, 0)..=(tag, u32::MAX))
            .map(|(_, s)| s)
    }

    /// Every section, by (tag, index).
    pub fn iter(&self) -> impl Iterator<Item = &Section> + '_ {
        self.sections.values()
    }

    /// Number of sections.
    pub fn len(&self) -> usize {
        self.sections.len()
    }

    /// Whether there are no sections.
    pub fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }
}

/// Writes a state file to any [`Write`].
///
/// Sections are encoded and buffered in memory as they are added (the limits
/// [`MAX_SECTION_PAYLOAD`], [`MAX_SECTIONS`] and [`MAX_STATE_PAYLOAD`] are
/// enforced at once); [`Writer::finish`] then writes the header, which needs
/// the section count and payload length, followed by the sections.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    arch: Arch,
    backend: Backend,
    flags: Flags,
    capabilities: [u8; CAPABILITIES_DIGEST_LEN],
    snapshot_id: SnapshotId,
    body: Vec<u8>,
    count: u32,
    seen: HashSet<(SectionTag, u32)>,
}

impl<W: Write> Writer<W> {
    /// A writer for a file of this architecture and backend, stamped with the
    /// writing host's capabilities digest.
    pub fn new(
        out: W,
        arch: Arch,
        backend: Backend,
        capabilities: [u8; CAPABILITIES_DIGEST_LEN],
    ) -> Self {
        Writer {
            out,
            arch,
            backend,
            flags: Flags::empty(),
            capabilities,
            snapshot_id: SnapshotId::NONE,
            body: Vec::new(),
            count: 0,
            seen: HashSet::new(),
        }
    }

    /// Sets the snapshot identity the header carries (by default
    /// [`SnapshotId::NONE`]); the memory file saved with this state file
    /// carries the same one.
    pub fn set_snapshot_id(&mut self, id: SnapshotId) {
        self.snapshot_id = id;
    }

    /// Sets the header flags; refuses must-understand bits this crate does
    /// not know (a reader would refuse the file).
    pub fn set_flags(&mut self, flags: Flags) -> Result<(), StateError> {
        let unknown = flags.unknown_must_understand();
        if unknown != 0 {
            return Err(StateError::UnknownFlags { bits: unknown });
        }
        self.flags = flags;
        Ok(())
    }

    /// Encodes `value` with postcard as section `tag[index]` at `version`.
    pub fn write_section<T: Serialize + ?Sized>(
        &mut self,
        tag: SectionTag,
        index: u32,
        version: u16,
        value: &T,
    ) -> Result<(), StateError> {
        let payload = postcard::to_stdvec(value).map_err(|source| StateError::Encode {
            tag,
            index,
            source,
        })?;
        self.write_raw_section(tag, index, version, &payload)
    }

    /// Adds device `index`'s state, taken now with [`Persist::save_state`],
    /// as a [`SectionTag::DEVICE`] section of version [`Persist::VERSION`]
    /// whose payload is [`Persist::KIND`] then the state; read it back with
    /// [`Snapshot::read_device`] or [`Section::decode_device`].
    pub fn write_device<P: Persist + ?Sized>(
        &mut self,
        index: u32,
        device: &P,
    ) -> Result<(), StateError> {
        self.write_section(
            SectionTag::DEVICE,
            index,
            P::VERSION,
            &(P::KIND, device.save_state()),
        )
    }

    /// Adds a section whose payload is already encoded.
    pub fn write_raw_section(
        &mut self,
        tag: SectionTag,
        index: u32,
        version: u16,
        payload: &[u8],
    ) -> Result<(), StateError> {
        let id = SectionId {
            position: self.count,
            tag,
            index,
        };
        if self.count >= MAX_SECTIONS {
            return Err(StateError::TooManySections {
                count: u64::from(self.count) + 1,
                max: MAX_SECTIONS,
            });
        }
        let len = payload.len() as u64;
        if len > MAX_SECTION_PAYLOAD {
            return Err(StateError::SectionTooLarge {
                section: id,
                len,
                max: MAX_SECTION_PAYLOAD,
            });
        }
        let total = self.body.len() as u64 + SECTION_HEADER_LEN as u64 + len;
        if total > MAX_STATE_PAYLOAD {
            return Err(StateError::PayloadTooLarge {
                len: total,
                max: MAX_STATE_PAYLOAD,
            });
        }
        if self.seen.contains(&(tag, index)) {
            return Err(StateError::DuplicateSection { section: id });
        }
        self.seen.insert((tag, index));
        let hdr = SectionHeader {
            tag,
            index,
            version,
            payload_len: len,
            payload_checksum: checksum(payload),
        };
        self.body.extend_from_slice(&hdr.encode());
        self.body.extend_from_slice(payload);
        self.count += 1;
        Ok(())
    }

    /// The header the file will have.
    pub fn header(&self) -> Header {
        Header {
            major: FORMAT_MAJOR,
            minor: FORMAT_MINOR,
            arch: self.arch,
            backend: self.backend,
            flags: self.flags,
            capabilities: self.capabilities,
            snapshot_id: self.snapshot_id,
            section_count: self.count,
            payload_len: self.body.len() as u64,
        }
    }

    /// Writes header and sections, flushes, and returns the output.
    pub fn finish(mut self) -> Result<W, StateError> {
        let io = |source| StateError::Io {
            part: Part::Output,
            source,
        };
        self.out.write_all(&self.header().encode()).map_err(io)?;
        self.out.write_all(&self.body).map_err(io)?;
        self.out.flush().map_err(io)?;
        Ok(self.out)
    }
}
