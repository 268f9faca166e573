//! The memory file: guest memory in a separate, page-aligned, sparse raw
//! file that a restore can `mmap` directly.
//!
//! # Byte layout
//!
//! All integers are little-endian; checksums are CRC-64/NVME
//! ([`checksum`]). The file starts with a header area of `header_len` bytes
//! (a multiple of [`PAGE_SIZE`]), then each region's data at a page-aligned
//! file offset. Zero pages are holes (never written), so the file is sparse.
//!
//! Fixed header, [`MEMORY_HEADER_LEN`] = 96 bytes:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8 | magic, [`MEMORY_MAGIC`] = `VMKITMEM` |
//! | 8  | 2 | major version ([`MEMORY_MAJOR`]; any other major is refused) |
//! | 10 | 2 | minor version ([`MEMORY_MINOR`]; any is accepted) |
//! | 12 | 2 | kind ([`MemoryKind`]: 1 full, 2 diff) |
//! | 14 | 2 | reserved, zero |
//! | 16 | 4 | page size, must be [`PAGE_SIZE`] |
//! | 20 | 4 | chunk size: a power of two from [`PAGE_SIZE`] to [`MAX_CHUNK_SIZE`] |
//! | 24 | 4 | region count (at most [`MAX_REGIONS`]) |
//! | 28 | 4 | reserved, zero |
//! | 32 | 8 | `header_len`: length of the header area, a page multiple, at most [`MAX_MEMORY_HEADER_LEN`] |
//! | 40 | 8 | file length, a page multiple; must equal the actual length |
//! | 48 | 8 | checksum of the tables: bytes 96..`header_len` |
//! | 56 | 16 | snapshot identity ([`SnapshotId`]): the one in the state file saved with this file |
//! | 72 | 16 | base identity: for a diff, the identity of the snapshot it applies to; zero for a full file |
//! | 88 | 8 | checksum of bytes 0..88 |
//!
//! Tables, from offset 96, in this order, then zero padding up to
//! `header_len`:
//!
//! 1. Region table: `region count` entries of [`REGION_ENTRY_LEN`] = 32 bytes:
//!    guest address (u64, page-aligned), size (u64, a non-zero page multiple),
//!    file offset of the data (u64, page-aligned, at or after `header_len`),
//!    data length in the file (u64, a page multiple). For a full file the data
//!    length equals the size; for a diff it is the number of recorded pages
//!    times [`PAGE_SIZE`]. Regions overlap neither in the guest address space
//!    nor in the file, and each one's data lies inside the file.
//! 2. Diff files only: page index table: for each region in order, one u64
//!    page index (relative to the region's guest address) per recorded page,
//!    strictly increasing and below `size / PAGE_SIZE`. Recorded page `k` of a
//!    region is at `file offset + k * PAGE_SIZE`.
//! 3. Chunk checksum table: for each region in order, one u64 checksum per
//!    chunk of its file data (`ceil(data length / chunk size)` chunks; the last
//!    one may be short).
//!
//! # Verification and lazy restore
//!
//! [`MemoryFile::read_header`] validates the header and every table entry;
//! it does not read region data. Chunk checksums are verified on demand:
//! [`MemoryFile::verify_region`] checks one region, and
//! [`MemoryFile::read_region`] / [`MemoryFile::apply_diff`] verify each chunk
//! before copying it. A lazy restore that maps a full region directly (`mmap`
//! of `file_offset..file_offset + size`, `MAP_PRIVATE`) skips verification and
//! so trusts the data: it is then only as good as the file system's own
//! integrity. Call `verify_region` first when that is not acceptable. The
//! mapping also stays tied to the file: truncated while mapped, the file
//! raises `SIGBUS` on a touch past its new end. [`MemoryFile::stream_region`]
//! copies a region out instead, verified, in bounded chunks, skipping holes.
//!
//! # Identity
//!
//! The snapshot identity ties a memory file to the state file saved with it
//! (the same [`SnapshotId`] in both headers), and a diff to its base (the
//! base identity is the identity of the snapshot the diff applies on top of).
//! The reader only reports them; comparing them is the restorer's job, since
//! only it has both files.
//!
//! # Writing
//!
//! [`MemoryWriter`] writes into a [`File`] with positioned writes, leaves zero
//! pages as holes and sets the final length with `set_len`. It does not
//! `fsync`; wrap it in [`write_atomically`](crate::write_atomically), or in
//! [`AtomicFiles`](crate::AtomicFiles) with the files saved beside it. It reads
//! each region from a [`RegionSource`] 32 KiB at a time into a small buffer of
//! its own, checksums and scans that copy while it is in the CPU's cache, and
//! copies only the non-zero pages on into a chunk-sized buffer the writes go
//! out from. So the source can be memory something else may write meanwhile
//! (guest memory read through volatile copies), and each byte of it is read
//! once.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use thiserror::Error;

use crate::bytes::{arr, put, read_full, u16_at, u32_at, u64_at};
use crate::{checksum, AtomicWriteError, Checksum, SnapshotId};

/// Magic bytes at the start of every memory file.
pub const MEMORY_MAGIC: [u8; 8] = *b"VMKITMEM";
/// Memory-file major version this crate writes; readers refuse any other
/// (format 1 had no snapshot identity).
pub const MEMORY_MAJOR: u16 = 2;
/// Memory-file minor version this crate writes; readers accept any.
pub const MEMORY_MINOR: u16 = 0;
/// The page size of memory files, and the alignment of every region.
pub const PAGE_SIZE: u64 = 4096;
/// Chunk size [`MemoryWriter::new`] uses (2 MiB).
pub const DEFAULT_CHUNK_SIZE: u32 = 2 << 20;
/// Largest chunk size (16 MiB); also bounds the buffer a verification uses.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Largest number of regions in one memory file.
pub const MAX_REGIONS: u32 = 1024;
/// Largest header area (32 MiB). It bounds the tables: with 2 MiB chunks, a
/// full file of up to about 8 TiB, or a diff of up to about 4 million pages
/// (16 GiB of dirty memory).
pub const MAX_MEMORY_HEADER_LEN: u64 = 32 << 20;
/// Size of the fixed part of the header.
pub const MEMORY_HEADER_LEN: usize = 96;
/// Size of one region-table entry.
pub const REGION_ENTRY_LEN: usize = 32;

const PAGE: usize = PAGE_SIZE as usize;
const TABLES_CRC_OFF: usize = 48;
const SNAPSHOT_ID_OFF: usize = 56;
const BASE_ID_OFF: usize = 72;
const HEADER_CRC_OFF: usize = 88;

/// What a memory file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MemoryKind {
    /// Every page of every region (value 1).
    Full = 1,
    /// Only recorded (dirty) pages, to apply on top of a base (value 2).
    Diff = 2,
}

impl MemoryKind {
    fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::Full),
            2 => Some(Self::Diff),
            _ => None,
        }
    }
}

/// One region of a memory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RegionInfo {
    /// Guest physical address (page-aligned).
    pub guest_addr: u64,
    /// Size in the guest (a non-zero page multiple).
    pub size: u64,
    /// File offset of the region's data (page-aligned).
    pub file_offset: u64,
    /// Bytes of data in the file: `size` for a full file, recorded pages
    /// times [`PAGE_SIZE`] for a diff.
    pub data_len: u64,
}

/// Errors of reading or writing a memory file. `region` fields are 0-based
/// positions in the region table.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// An I/O error.
    #[error("I/O error while {what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is shorter than its fixed header.
    #[error("memory file truncated: {got} bytes, the header alone needs {needed}")]
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        got: u64,
    },
    /// The file does not start with [`MEMORY_MAGIC`].
    #[error("not a vmkit memory file: magic {found:02x?}")]
    BadMagic {
        /// The first eight bytes.
        found: [u8; 8],
    },
    /// The major version is not this reader's.
    #[error("memory file format {found}.x is not supported: this reader reads format {supported}.x only")]
    UnsupportedMajor {
        /// The file's major version.
        found: u16,
        /// The newest this reader reads.
        supported: u16,
    },
    /// The fixed header's checksum does not match.
    #[error(
        "memory file header checksum mismatch: stored {stored:#018x}, computed {computed:#018x}"
    )]
    HeaderChecksum {
        /// Stored checksum.
        stored: u64,
        /// Computed checksum.
        computed: u64,
    },
    /// The tables' checksum does not match.
    #[error(
        "memory file table checksum mismatch: stored {stored:#018x}, computed {computed:#018x}"
    )]
    TablesChecksum {
        /// Stored checksum.
        stored: u64,
        /// Computed checksum.
        computed: u64,
    },
    /// Unknown file kind.
    #[error("unknown memory file kind {0}")]
    UnknownKind(u16),
    /// The page size is not [`PAGE_SIZE`].
    #[error("unsupported page size {0} (only 4096)")]
    BadPageSize(u32),
    /// The chunk size is not a power of two in range.
    #[error("bad chunk size {0}: must be a power of two from 4096 to {MAX_CHUNK_SIZE}")]
    BadChunkSize(u32),
    /// More regions than [`MAX_REGIONS`].
    #[error("too many regions: {count} (at most {max})")]
    TooManyRegions {
        /// Region count.
        count: u64,
        /// The limit.
        max: u32,
    },
    /// `header_len` is not a page multiple, too small for the tables, larger
    /// than [`MAX_MEMORY_HEADER_LEN`] or larger than the file.
    #[error("bad header length {header_len}: needs a page multiple from {min} to {max}")]
    BadHeaderLen {
        /// The header length.
        header_len: u64,
        /// Smallest acceptable value here.
        min: u64,
        /// Largest acceptable value here.
        max: u64,
    },
    /// The file length differs from the one the header records, or is not a
    /// page multiple.
    #[error("file is {actual} bytes long but its header records {declared}")]
    FileLenMismatch {
        /// Length in the header.
        declared: u64,
        /// Actual length.
        actual: u64,
    },
    /// A region field is not page-aligned (or, for sizes, not a page
    /// multiple).
    #[error("region #{region}: {field} {value:#x} is not page-aligned")]
    RegionUnaligned {
        /// Region position.
        region: u32,
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A region is empty or its guest range wraps around.
    #[error("region #{region}: bad guest range {guest_addr:#x} + {size:#x}")]
    RegionRange {
        /// Region position.
        region: u32,
        /// Guest address.
        guest_addr: u64,
        /// Size.
        size: u64,
    },
    /// A region's data length does not fit its kind and size.
    #[error(
        "region #{region}: {data_len} data bytes do not fit a {kind:?} region of {size} bytes"
    )]
    RegionDataLen {
        /// Region position.
        region: u32,
        /// File kind.
        kind: MemoryKind,
        /// Data length.
        data_len: u64,
        /// Region size.
        size: u64,
    },
    /// A region's data starts inside the header area.
    #[error("region #{region}: data at {file_offset:#x} overlaps the header area (ends at {header_len:#x})")]
    RegionInHeader {
        /// Region position.
        region: u32,
        /// Its file offset.
        file_offset: u64,
        /// The header length.
        header_len: u64,
    },
    /// A region's data extends past the end of the file.
    #[error(
        "region #{region}: data ends at {end:#x}, past the end of the {file_len:#x}-byte file"
    )]
    RegionOutsideFile {
        /// Region position.
        region: u32,
        /// End of its data (saturated).
        end: u64,
        /// File length.
        file_len: u64,
    },
    /// Two regions' data overlap in the file.
    #[error("regions #{first} and #{second} overlap in the file")]
    RegionsOverlapInFile {
        /// One region.
        first: u32,
        /// The other.
        second: u32,
    },
    /// Two regions overlap in the guest address space.
    #[error("regions #{first} and #{second} overlap in guest memory")]
    RegionsOverlapInGuest {
        /// One region.
        first: u32,
        /// The other.
        second: u32,
    },
    /// A diff's page index is out of range or out of order.
    #[error("region #{region}: recorded page #{position} has index {page}, not increasing or not below {pages}")]
    BadPageIndex {
        /// Region position.
        region: u32,
        /// Position in the region's page list.
        position: u64,
        /// The index.
        page: u64,
        /// Pages in the region.
        pages: u64,
    },
    /// The tables need more room than the header area has.
    #[error("tables need {needed} bytes but the header area holds {available}")]
    TablesTooLong {
        /// Bytes the tables need.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// A chunk's data does not match its checksum.
    #[error("region #{region} (guest {guest_addr:#x}): chunk #{chunk} checksum mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    ChunkChecksum {
        /// Region position.
        region: u32,
        /// Region guest address.
        guest_addr: u64,
        /// Chunk number within the region.
        chunk: u64,
        /// Stored checksum.
        stored: u64,
        /// Computed checksum.
        computed: u64,
    },
    /// No region with this position.
    #[error("no region #{region} (the file has {count})")]
    NoSuchRegion {
        /// Requested position.
        region: usize,
        /// Regions in the file.
        count: usize,
    },
    /// A buffer does not have the region's size.
    #[error("region #{region}: buffer of {actual} bytes for a region of {expected}")]
    BufferSize {
        /// Region position.
        region: u32,
        /// Region size.
        expected: u64,
        /// Buffer size.
        actual: u64,
    },
    /// The operation needs the other kind of file.
    #[error("operation needs a {expected:?} memory file, this one is {found:?}")]
    KindMismatch {
        /// Kind needed.
        expected: MemoryKind,
        /// Kind of the file.
        found: MemoryKind,
    },
    /// A diff region has no base region with the same address and size.
    #[error(
        "diff region #{region} ({guest_addr:#x}, {size:#x} bytes) has no matching base region"
    )]
    NoBaseRegion {
        /// Region position in the diff.
        region: u32,
        /// Its guest address.
        guest_addr: u64,
        /// Its size.
        size: u64,
    },
    /// Writing the file atomically failed.
    #[error(transparent)]
    AtomicWrite(#[from] AtomicWriteError),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> MemoryError {
    move |source| MemoryError::Io { what, source }
}

/// The validated header and tables of a memory file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryFile {
    kind: MemoryKind,
    minor: u16,
    chunk_size: u32,
    header_len: u64,
    file_len: u64,
    snapshot_id: SnapshotId,
    base_id: SnapshotId,
    regions: Vec<RegionInfo>,
    /// Per region: first entry in `pages` and in `chunk_sums`.
    starts: Vec<(usize, usize)>,
    pages: Vec<u64>,
    chunk_sums: Vec<u64>,
}

fn div_ceil(a: u64, b: u64) -> u64 {
    if b == 0 {
        0
    } else {
        a.div_ceil(b)
    }
}

impl MemoryFile {
    /// Reads and validates the header area of a memory file (not the region
    /// data). The source's length, found by seeking to its end, must equal
    /// the one recorded in the header.
    pub fn read_header<R: Read + Seek + ?Sized>(r: &mut R) -> Result<Self, MemoryError> {
        let actual = r
            .seek(SeekFrom::End(0))
            .map_err(io_err("finding the file length"))?;
        r.seek(SeekFrom::Start(0))
            .map_err(io_err("seeking to the header"))?;
        let mut fixed = [0u8; MEMORY_HEADER_LEN];
        let got = read_full(r, &mut fixed).map_err(io_err("reading the header"))?;
        let hdr = Fixed::decode(&fixed, got, actual)?;
        // header_len <= actual file length and <= MAX_MEMORY_HEADER_LEN, so
        // this allocation is bounded by both the limit and the real data.
        let mut area = vec![0u8; usize::try_from(hdr.header_len).unwrap_or(0)];
        put(&mut area, 0, &fixed);
        let rest = area.get_mut(MEMORY_HEADER_LEN..).unwrap_or_default();
        let need = rest.len();
        let got = read_full(r, rest).map_err(io_err("reading the tables"))?;
        if got < need {
            return Err(MemoryError::FileLenMismatch {
                declared: hdr.file_len,
                actual: (MEMORY_HEADER_LEN + got) as u64,
            });
        }
        Self::parse_tables(&hdr, &area)
    }

    /// Validates a memory file held in memory (header area and tables; the
    /// data is only checked by [`MemoryFile::verify_region`] and friends, to
    /// which a `std::io::Cursor` over the same bytes can be passed).
    pub fn from_bytes(file: &[u8]) -> Result<Self, MemoryError> {
        let got = file.len().min(MEMORY_HEADER_LEN);
        let mut fixed = [0u8; MEMORY_HEADER_LEN];
        put(&mut fixed, 0, file.get(..got).unwrap_or_default());
        let hdr = Fixed::decode(&fixed, got, file.len() as u64)?;
        let area = file
            .get(..usize::try_from(hdr.header_len).unwrap_or(usize::MAX))
            .ok_or(MemoryError::FileLenMismatch {
                declared: hdr.file_len,
                actual: file.len() as u64,
            })?;
        Self::parse_tables(&hdr, area)
    }

    fn parse_tables(hdr: &Fixed, area: &[u8]) -> Result<Self, MemoryError> {
        let tables = area.get(MEMORY_HEADER_LEN..).unwrap_or_default();
        let computed = checksum(tables);
        if computed != hdr.tables_crc {
            return Err(MemoryError::TablesChecksum {
                stored: hdr.tables_crc,
                computed,
            });
        }
        let count = hdr.region_count as usize;
        let mut regions = Vec::with_capacity(count);
        let mut total_pages: u64 = 0;
        let mut total_chunks: u64 = 0;
        for i in 0..hdr.region_count {
            let off = MEMORY_HEADER_LEN + i as usize * REGION_ENTRY_LEN;
            let reg = RegionInfo {
                guest_addr: u64_at(area, off),
                size: u64_at(area, off + 8),
                file_offset: u64_at(area, off + 16),
                data_len: u64_at(area, off + 24),
            };
            check_region(i, &reg, hdr)?;
            if hdr.kind == MemoryKind::Diff {
                total_pages = total_pages.saturating_add(reg.data_len / PAGE_SIZE);
            }
            total_chunks =
                total_chunks.saturating_add(div_ceil(reg.data_len, u64::from(hdr.chunk_size)));
            regions.push(reg);
        }
        check_overlaps(&regions)?;
        let table_start = (MEMORY_HEADER_LEN + count * REGION_ENTRY_LEN) as u64;
        let needed = total_pages
            .saturating_add(total_chunks)
            .saturating_mul(8)
            .saturating_add(table_start);
        if needed > hdr.header_len {
            return Err(MemoryError::TablesTooLong {
                needed,
                available: hdr.header_len,
            });
        }
        // Both counts are now bounded by header_len / 8.
        let mut off = table_start as usize;
        let mut pages = Vec::with_capacity(total_pages as usize);
        let mut starts = Vec::with_capacity(count);
        let mut chunk_start = 0usize;
        for (i, reg) in regions.iter().enumerate() {
            let page_start = pages.len();
            starts.push((page_start, chunk_start));
            chunk_start += div_ceil(reg.data_len, u64::from(hdr.chunk_size)) as usize;
            if hdr.kind != MemoryKind::Diff {
                continue;
            }
            let limit = reg.size / PAGE_SIZE;
            let mut prev: Option<u64> = None;
            for position in 0..reg.data_len / PAGE_SIZE {
                let page = u64_at(area, off);
                off += 8;
                if page >= limit || prev.is_some_and(|p| page <= p) {
                    return Err(MemoryError::BadPageIndex {
                        region: i as u32,
                        position,
                        page,
                        pages: limit,
                    });
                }
                prev = Some(page);
                pages.push(page);
            }
        }
        let chunk_sums = (0..total_chunks as usize)
            .map(|k| u64_at(area, off + 8 * k))
            .collect();
        Ok(MemoryFile {
            kind: hdr.kind,
            minor: hdr.minor,
            chunk_size: hdr.chunk_size,
            header_len: hdr.header_len,
            file_len: hdr.file_len,
            snapshot_id: hdr.snapshot_id,
            base_id: hdr.base_id,
            regions,
            starts,
            pages,
            chunk_sums,
        })
    }

    /// Full or diff.
    pub fn kind(&self) -> MemoryKind {
        self.kind
    }

    /// The file's minor version.
    pub fn minor(&self) -> u16 {
        self.minor
    }

    /// The chunk size of the checksums.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Length of the header area; region data starts at or after it.
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// The file's length.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The identity of the snapshot this file belongs to (the one in its
    /// state file's header).
    pub fn snapshot_id(&self) -> SnapshotId {
        self.snapshot_id
    }

    /// For a diff, the identity of the snapshot it applies on top of;
    /// [`SnapshotId::NONE`] for a full file.
    pub fn base_id(&self) -> SnapshotId {
        self.base_id
    }

    /// The regions, in table order.
    pub fn regions(&self) -> &[RegionInfo] {
        &self.regions
    }

    fn region(&self, region: usize) -> Result<(&RegionInfo, usize, usize), MemoryError> {
        let info = self.regions.get(region).ok_or(MemoryError::NoSuchRegion {
            region,
            count: self.regions.len(),
        })?;
        let (p, c) = self.starts.get(region).copied().unwrap_or((0, 0));
        Ok((info, p, c))
    }

    /// Page indices recorded for a region of a diff file (empty for a full
    /// file).
    pub fn dirty_pages(&self, region: usize) -> Result<&[u64], MemoryError> {
        let (info, start, _) = self.region(region)?;
        if self.kind != MemoryKind::Diff {
            return Ok(&[]);
        }
        let n = (info.data_len / PAGE_SIZE) as usize;
        Ok(self.pages.get(start..start + n).unwrap_or_default())
    }

    /// Reads a region's data chunk by chunk, verifying each chunk's checksum
    /// before handing it to `sink` with its byte offset within the data.
    /// A chunk that `hole` reports as lying wholly in a hole of the file
    /// (`hole(file_offset, len)`) is not read: it is all zeros, its checksum
    /// is checked against that of zeros, and `sink` gets `None`.
    fn for_each_chunk<R, F>(
        &self,
        r: &mut R,
        region: usize,
        hole: &mut dyn FnMut(u64, u64) -> bool,
        mut sink: F,
    ) -> Result<(), MemoryError>
    where
        R: Read + Seek + ?Sized,
        F: FnMut(u64, Option<&[u8]>) -> Result<(), MemoryError>,
    {
        let (info, _, first_chunk) = self.region(region)?;
        let chunk = u64::from(self.chunk_size);
        let mut buf = vec![0u8; info.data_len.min(chunk) as usize];
        // Checksums of all-zero chunks, by length (a region has at most two).
        let mut zero_sums: Vec<(usize, u64)> = Vec::new();
        let mut done = 0u64;
        let mut k = 0u64;
        while done < info.data_len {
            let n = (info.data_len - done).min(chunk) as usize;
            let offset = info.file_offset + done;
            let in_hole = hole(offset, n as u64);
            let computed = if in_hole {
                match zero_sums.iter().find(|(len, _)| *len == n) {
                    Some(&(_, sum)) => sum,
                    None => {
                        let sum = checksum(&vec![0u8; n]);
                        zero_sums.push((n, sum));
                        sum
                    }
                }
            } else {
                // Seek every time: `hole` may move the file position.
                r.seek(SeekFrom::Start(offset))
                    .map_err(io_err("seeking to region data"))?;
                let part = buf.get_mut(..n).unwrap_or_default();
                let got = read_full(r, part).map_err(io_err("reading region data"))?;
                if got < n {
                    return Err(MemoryError::FileLenMismatch {
                        declared: self.file_len,
                        actual: offset + got as u64,
                    });
                }
                checksum(part)
            };
            let stored = self
                .chunk_sums
                .get(first_chunk + k as usize)
                .copied()
                .unwrap_or(!computed);
            if stored != computed {
                return Err(MemoryError::ChunkChecksum {
                    region: region as u32,
                    guest_addr: info.guest_addr,
                    chunk: k,
                    stored,
                    computed,
                });
            }
            sink(done, (!in_hole).then(|| buf.get(..n).unwrap_or_default()))?;
            done += n as u64;
            k += 1;
        }
        Ok(())
    }

    /// Streams a region's contents to `sink` chunk by chunk (at most
    /// [`MAX_CHUNK_SIZE`] bytes buffered), verifying each chunk's checksum
    /// first: `sink(offset, bytes)` is called with offsets within the region
    /// (guest address minus the region's), in increasing order.
    ///
    /// `hole(file_offset, len)` tells whether a range of the file is wholly a
    /// hole (e.g. from `lseek(SEEK_DATA)`); answer `false` when unsure. Such
    /// ranges are not read. For a full file their pages are not passed to
    /// `sink` at all, so the destination must start zeroed (fresh anonymous
    /// memory); for a diff every recorded page is passed, zero or not, since
    /// it overwrites the base.
    pub fn stream_region<R, F>(
        &self,
        r: &mut R,
        region: usize,
        mut hole: impl FnMut(u64, u64) -> bool,
        mut sink: F,
    ) -> Result<(), MemoryError>
    where
        R: Read + Seek + ?Sized,
        F: FnMut(u64, &[u8]) -> Result<(), MemoryError>,
    {
        let (_, page_start, _) = self.region(region)?;
        let kind = self.kind;
        let pages = &self.pages;
        let zero_page = [0u8; PAGE];
        self.for_each_chunk(r, region, &mut hole, |offset, data| match kind {
            MemoryKind::Full => match data {
                Some(data) => sink(offset, data),
                None => Ok(()),
            },
            MemoryKind::Diff => {
                let first = page_start + (offset / PAGE_SIZE) as usize;
                let count = match data {
                    Some(data) => data.len() / PAGE,
                    None => self.chunk_pages(offset, region),
                };
                for k in 0..count {
                    let page = match data {
                        Some(data) => data.get(k * PAGE..(k + 1) * PAGE).unwrap_or_default(),
                        None => &zero_page,
                    };
                    let idx = pages.get(first + k).copied().unwrap_or(u64::MAX);
                    if let Some(dst) = idx.checked_mul(PAGE_SIZE) {
                        sink(dst, page)?;
                    }
                }
                Ok(())
            }
        })
    }

    /// Pages in the chunk of `region`'s data that starts at `offset`.
    fn chunk_pages(&self, offset: u64, region: usize) -> usize {
        let data_len = self.regions.get(region).map_or(0, |r| r.data_len);
        (data_len
            .saturating_sub(offset)
            .min(u64::from(self.chunk_size))
            / PAGE_SIZE) as usize
    }

    /// Verifies every chunk checksum of a region.
    pub fn verify_region<R: Read + Seek + ?Sized>(
        &self,
        r: &mut R,
        region: usize,
    ) -> Result<(), MemoryError> {
        self.for_each_chunk(r, region, &mut |_, _| false, |_, _| Ok(()))
    }

    /// Verifies every chunk checksum of every region.
    pub fn verify_all<R: Read + Seek + ?Sized>(&self, r: &mut R) -> Result<(), MemoryError> {
        (0..self.regions.len()).try_for_each(|i| self.verify_region(r, i))
    }

    /// Copies a region's contents out of the file into `dst` (eager restore),
    /// verifying each chunk before copying it. `dst` must be exactly the
    /// region's size. For a full file every byte of `dst` is written; for a
    /// diff only the recorded pages are (that is, the diff is applied on top
    /// of what `dst` holds). On error `dst` may be partly written.
    pub fn read_region<R: Read + Seek + ?Sized>(
        &self,
        r: &mut R,
        region: usize,
        dst: &mut [u8],
    ) -> Result<(), MemoryError> {
        let (info, _, _) = self.region(region)?;
        if dst.len() as u64 != info.size {
            return Err(MemoryError::BufferSize {
                region: region as u32,
                expected: info.size,
                actual: dst.len() as u64,
            });
        }
        self.stream_region(
            r,
            region,
            |_, _| false,
            |offset, data| {
                put(dst, offset as usize, data);
                Ok(())
            },
        )
    }

    /// Applies a diff file on top of base contents: `base` lists regions as
    /// (guest address, contents). Every diff region must match a base region
    /// of the same guest address and size. Each chunk is verified before it
    /// is applied; on error the base may be partly updated (verify with
    /// [`MemoryFile::verify_all`] first to rule that out).
    pub fn apply_diff<R: Read + Seek + ?Sized>(
        &self,
        r: &mut R,
        base: &mut [(u64, &mut [u8])],
    ) -> Result<(), MemoryError> {
        if self.kind != MemoryKind::Diff {
            return Err(MemoryError::KindMismatch {
                expected: MemoryKind::Diff,
                found: self.kind,
            });
        }
        for (i, reg) in self.regions.iter().enumerate() {
            let dst = base
                .iter_mut()
                .find(|(addr, mem)| *addr == reg.guest_addr && mem.len() as u64 == reg.size)
                .ok_or(MemoryError::NoBaseRegion {
                    region: i as u32,
                    guest_addr: reg.guest_addr,
                    size: reg.size,
                })?;
            self.read_region(r, i, dst.1)?;
        }
        Ok(())
    }
}

/// The fixed header, decoded and checked on its own.
struct Fixed {
    kind: MemoryKind,
    minor: u16,
    chunk_size: u32,
    region_count: u32,
    header_len: u64,
    file_len: u64,
    tables_crc: u64,
    snapshot_id: SnapshotId,
    base_id: SnapshotId,
}

impl Fixed {
    /// `got` is how many bytes of `b` came from the file; `actual` the file's
    /// length.
    fn decode(b: &[u8; MEMORY_HEADER_LEN], got: usize, actual: u64) -> Result<Self, MemoryError> {
        let magic: [u8; 8] = arr(b, 0);
        if got >= 8 && magic != MEMORY_MAGIC {
            return Err(MemoryError::BadMagic { found: magic });
        }
        if got < MEMORY_HEADER_LEN {
            return Err(MemoryError::Truncated {
                needed: MEMORY_HEADER_LEN as u64,
                got: got as u64,
            });
        }
        let major = u16_at(b, 8);
        if major != MEMORY_MAJOR {
            return Err(MemoryError::UnsupportedMajor {
                found: major,
                supported: MEMORY_MAJOR,
            });
        }
        let stored = u64_at(b, HEADER_CRC_OFF);
        let computed = checksum(b.get(..HEADER_CRC_OFF).unwrap_or_default());
        if stored != computed {
            return Err(MemoryError::HeaderChecksum { stored, computed });
        }
        let kind_raw = u16_at(b, 12);
        let kind = MemoryKind::from_u16(kind_raw).ok_or(MemoryError::UnknownKind(kind_raw))?;
        let page_size = u32_at(b, 16);
        if u64::from(page_size) != PAGE_SIZE {
            return Err(MemoryError::BadPageSize(page_size));
        }
        let chunk_size = u32_at(b, 20);
        if !chunk_size.is_power_of_two()
            || u64::from(chunk_size) < PAGE_SIZE
            || chunk_size > MAX_CHUNK_SIZE
        {
            return Err(MemoryError::BadChunkSize(chunk_size));
        }
        let region_count = u32_at(b, 24);
        if region_count > MAX_REGIONS {
            return Err(MemoryError::TooManyRegions {
                count: region_count.into(),
                max: MAX_REGIONS,
            });
        }
        let file_len = u64_at(b, 40);
        if file_len != actual || !file_len.is_multiple_of(PAGE_SIZE) {
            return Err(MemoryError::FileLenMismatch {
                declared: file_len,
                actual,
            });
        }
        let header_len = u64_at(b, 32);
        let min = (MEMORY_HEADER_LEN + region_count as usize * REGION_ENTRY_LEN) as u64;
        let max = MAX_MEMORY_HEADER_LEN.min(file_len);
        if !header_len.is_multiple_of(PAGE_SIZE) || header_len < min || header_len > max {
            return Err(MemoryError::BadHeaderLen {
                header_len,
                min,
                max,
            });
        }
        Ok(Fixed {
            kind,
            minor: u16_at(b, 10),
            chunk_size,
            region_count,
            header_len,
            file_len,
            tables_crc: u64_at(b, TABLES_CRC_OFF),
            snapshot_id: SnapshotId(arr(b, SNAPSHOT_ID_OFF)),
            base_id: SnapshotId(arr(b, BASE_ID_OFF)),
        })
    }
}

fn check_region(i: u32, reg: &RegionInfo, hdr: &Fixed) -> Result<(), MemoryError> {
    let unaligned = |field, value| MemoryError::RegionUnaligned {
        region: i,
        field,
        value,
    };
    if !reg.guest_addr.is_multiple_of(PAGE_SIZE) {
        return Err(unaligned("guest address", reg.guest_addr));
    }
    if !reg.size.is_multiple_of(PAGE_SIZE) {
        return Err(unaligned("size", reg.size));
    }
    if !reg.file_offset.is_multiple_of(PAGE_SIZE) {
        return Err(unaligned("file offset", reg.file_offset));
    }
    if !reg.data_len.is_multiple_of(PAGE_SIZE) {
        return Err(unaligned("data length", reg.data_len));
    }
    if reg.size == 0 || reg.guest_addr.checked_add(reg.size).is_none() {
        return Err(MemoryError::RegionRange {
            region: i,
            guest_addr: reg.guest_addr,
            size: reg.size,
        });
    }
    let data_ok = match hdr.kind {
        MemoryKind::Full => reg.data_len == reg.size,
        MemoryKind::Diff => reg.data_len <= reg.size,
    };
    if !data_ok {
        return Err(MemoryError::RegionDataLen {
            region: i,
            kind: hdr.kind,
            data_len: reg.data_len,
            size: reg.size,
        });
    }
    if reg.file_offset < hdr.header_len {
        return Err(MemoryError::RegionInHeader {
            region: i,
            file_offset: reg.file_offset,
            header_len: hdr.header_len,
        });
    }
    let end = reg.file_offset.saturating_add(reg.data_len);
    if end > hdr.file_len {
        return Err(MemoryError::RegionOutsideFile {
            region: i,
            end,
            file_len: hdr.file_len,
        });
    }
    Ok(())
}

/// Regions must not overlap in the file (ignoring empty data) nor in the
/// guest. Called after `check_region`, so no range overflows.
fn check_overlaps(regions: &[RegionInfo]) -> Result<(), MemoryError> {
    let mut order: Vec<usize> = (0..regions.len()).collect();
    let ranges =
        |f: fn(&RegionInfo) -> (u64, u64)| move |a: usize| regions.get(a).map(f).unwrap_or((0, 0));
    let file = ranges(|r| (r.file_offset, r.file_offset + r.data_len));
    let guest = ranges(|r| (r.guest_addr, r.guest_addr + r.size));
    order.sort_by_key(|&i| file(i));
    for w in order.windows(2) {
        if let [a, b] = *w {
            let (sa, ea) = file(a);
            let (sb, eb) = file(b);
            if sa < ea && sb < eb && sb < ea {
                return Err(MemoryError::RegionsOverlapInFile {
                    first: a.min(b) as u32,
                    second: a.max(b) as u32,
                });
            }
        }
    }
    order.sort_by_key(|&i| guest(i));
    for w in order.windows(2) {
        if let [a, b] = *w {
            if guest(b).0 < guest(a).1 {
                return Err(MemoryError::RegionsOverlapInGuest {
                    first: a.min(b) as u32,
                    second: a.max(b) as u32,
                });
            }
        }
    }
    Ok(())
}

/// Where a region's contents come from when [`MemoryWriter`] writes them.
///
/// The writer never holds the contents as one `&[u8]`: it copies them out a few pages at a
/// time (never more than a chunk) into a buffer of its own, then checksums, scans for zero
/// pages and writes from that copy.
/// So a source can be memory that something else writes meanwhile (a running guest, a device
/// doing DMA), read through a volatile copy: the file is then torn (pages from different
/// moments) but consistent with its own checksums, and nothing is a data race. Byte slices,
/// arrays and vectors are sources too, and so is a reference to any source.
pub trait RegionSource {
    /// Length of the contents in bytes.
    fn size(&self) -> u64;

    /// Copies the `buf.len()` bytes at `offset` into `buf`. The writer only asks for ranges
    /// within [`size`](Self::size).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl RegionSource for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let from = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = self
            .get(from..)
            .and_then(|rest| rest.get(..buf.len()))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl<const N: usize> RegionSource for [u8; N] {
    fn size(&self) -> u64 {
        self.as_slice().size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.as_slice().read_at(offset, buf)
    }
}

impl RegionSource for Vec<u8> {
    fn size(&self) -> u64 {
        self.as_slice().size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.as_slice().read_at(offset, buf)
    }
}

impl<S: RegionSource + ?Sized> RegionSource for &S {
    fn size(&self) -> u64 {
        (**self).size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

/// A region of a diff memory file: the region's current contents and the
/// indices of the pages to record (e.g. from the dirty log). Indices may be
/// in any order and repeat.
#[derive(Clone, Copy, Debug)]
pub struct DiffRegion<'a, S = &'a [u8]> {
    /// Guest physical address (page-aligned).
    pub guest_addr: u64,
    /// The whole region's current contents (a non-zero page multiple); only the recorded
    /// pages are read.
    pub contents: S,
    /// Page indices (relative to `guest_addr`) to record.
    pub dirty_pages: &'a [u64],
}

/// Writes full and diff memory files.
#[derive(Clone, Copy, Debug)]
pub struct MemoryWriter {
    chunk_size: u32,
    snapshot_id: SnapshotId,
    base_id: SnapshotId,
}

impl Default for MemoryWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// One region to write: its guest placement, its contents and which pages of
/// them go to the file (`None`: all).
struct Plan<'a, S> {
    guest_addr: u64,
    contents: &'a S,
    pages: Option<Vec<u64>>,
}

impl<S: RegionSource> Plan<'_, S> {
    fn page_count(&self) -> u64 {
        match &self.pages {
            Some(p) => p.len() as u64,
            None => self.contents.size() / PAGE_SIZE,
        }
    }

    fn page(&self, k: u64) -> u64 {
        match &self.pages {
            Some(p) => p.get(k as usize).copied().unwrap_or(0),
            None => k,
        }
    }
}

impl MemoryWriter {
    /// A writer with [`DEFAULT_CHUNK_SIZE`].
    pub const fn new() -> Self {
        MemoryWriter {
            chunk_size: DEFAULT_CHUNK_SIZE,
            snapshot_id: SnapshotId::NONE,
            base_id: SnapshotId::NONE,
        }
    }

    /// A writer with another chunk size (a power of two from [`PAGE_SIZE`]
    /// to [`MAX_CHUNK_SIZE`]).
    pub fn with_chunk_size(chunk_size: u32) -> Result<Self, MemoryError> {
        if !chunk_size.is_power_of_two()
            || u64::from(chunk_size) < PAGE_SIZE
            || chunk_size > MAX_CHUNK_SIZE
        {
            return Err(MemoryError::BadChunkSize(chunk_size));
        }
        Ok(MemoryWriter {
            chunk_size,
            ..Self::new()
        })
    }

    /// Stamps the files this writer writes with the snapshot's identity (the
    /// one its state file carries) and, for a diff, its base's identity
    /// (ignored for a full file, which records [`SnapshotId::NONE`]).
    pub const fn with_identity(mut self, snapshot_id: SnapshotId, base_id: SnapshotId) -> Self {
        self.snapshot_id = snapshot_id;
        self.base_id = base_id;
        self
    }

    /// Writes a full memory file of `regions`, given as (guest address,
    /// contents), replacing whatever `file` held. Returns the file's header as
    /// a reader would see it.
    ///
    /// The contents are copied out 32 KiB at a time into a small buffer,
    /// checksummed and scanned for zero pages there; the non-zero pages are
    /// copied on into one buffer of the chunk size (both allocated once per
    /// call) and written from there.
    pub fn write_full<S: RegionSource>(
        &self,
        file: &mut File,
        regions: &[(u64, S)],
    ) -> Result<MemoryFile, MemoryError> {
        let plans = regions
            .iter()
            .map(|(guest_addr, contents)| Plan {
                guest_addr: *guest_addr,
                contents,
                pages: None,
            })
            .collect::<Vec<_>>();
        self.write(file, MemoryKind::Full, &plans)
    }

    /// Writes a diff memory file recording only the listed pages of each
    /// region, replacing whatever `file` held. Only those pages are read
    /// from the contents.
    pub fn write_diff<S: RegionSource>(
        &self,
        file: &mut File,
        regions: &[DiffRegion<'_, S>],
    ) -> Result<MemoryFile, MemoryError> {
        let mut plans = Vec::with_capacity(regions.len());
        for (i, reg) in regions.iter().enumerate() {
            let limit = reg.contents.size() / PAGE_SIZE;
            let mut pages = reg.dirty_pages.to_vec();
            pages.sort_unstable();
            pages.dedup();
            if let Some(&bad) = pages.iter().find(|&&p| p >= limit) {
                return Err(MemoryError::BadPageIndex {
                    region: i as u32,
                    position: reg.dirty_pages.iter().position(|&p| p == bad).unwrap_or(0) as u64,
                    page: bad,
                    pages: limit,
                });
            }
            plans.push(Plan {
                guest_addr: reg.guest_addr,
                contents: &reg.contents,
                pages: Some(pages),
            });
        }
        self.write(file, MemoryKind::Diff, &plans)
    }

    fn write<S: RegionSource>(
        &self,
        file: &mut File,
        kind: MemoryKind,
        plans: &[Plan<'_, S>],
    ) -> Result<MemoryFile, MemoryError> {
        if plans.len() as u64 > u64::from(MAX_REGIONS) {
            return Err(MemoryError::TooManyRegions {
                count: plans.len() as u64,
                max: MAX_REGIONS,
            });
        }
        let chunk = u64::from(self.chunk_size);
        // Layout: tables first, to know header_len, then data back to back.
        let mut infos = Vec::with_capacity(plans.len());
        let mut table_len = (MEMORY_HEADER_LEN + plans.len() * REGION_ENTRY_LEN) as u64;
        for plan in plans {
            let data_len = plan.page_count() * PAGE_SIZE;
            table_len = table_len
                .saturating_add(if kind == MemoryKind::Diff {
                    plan.page_count() * 8
                } else {
                    0
                })
                .saturating_add(div_ceil(data_len, chunk) * 8);
            infos.push(RegionInfo {
                guest_addr: plan.guest_addr,
                size: plan.contents.size(),
                file_offset: 0,
                data_len,
            });
        }
        let header_len = table_len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if header_len > MAX_MEMORY_HEADER_LEN {
            return Err(MemoryError::TablesTooLong {
                needed: table_len,
                available: MAX_MEMORY_HEADER_LEN,
            });
        }
        let mut offset = header_len;
        for info in &mut infos {
            info.file_offset = offset;
            offset = offset.saturating_add(info.data_len);
        }
        let file_len = offset;
        let fixed = Fixed {
            kind,
            minor: MEMORY_MINOR,
            chunk_size: self.chunk_size,
            region_count: plans.len() as u32,
            header_len,
            file_len,
            tables_crc: 0,
            snapshot_id: self.snapshot_id,
            base_id: match kind {
                MemoryKind::Full => SnapshotId::NONE,
                MemoryKind::Diff => self.base_id,
            },
        };
        for (i, info) in infos.iter().enumerate() {
            check_region(i as u32, info, &fixed)?;
        }
        check_overlaps(&infos)?;

        file.set_len(0)
            .map_err(io_err("truncating the memory file"))?;
        let mut page_table = Vec::new();
        let mut chunk_sums = Vec::new();
        // One chunk's worth, no more than the largest region's data needs.
        let most = infos.iter().map(|i| i.data_len).max().unwrap_or(0);
        let mut buf = vec![0u8; chunk.min(most) as usize];
        let mut scratch = Box::new([0u8; (BLOCK_PAGES * PAGE_SIZE) as usize]);
        for (plan, info) in plans.iter().zip(&infos) {
            if let Some(p) = &plan.pages {
                page_table.extend_from_slice(p);
            }
            write_region_data(
                file,
                plan,
                info.file_offset,
                chunk,
                &mut buf,
                &mut scratch,
                &mut chunk_sums,
            )?;
        }

        let mut area = vec![0u8; header_len as usize];
        put(&mut area, 0, &MEMORY_MAGIC);
        put(&mut area, 8, &MEMORY_MAJOR.to_le_bytes());
        put(&mut area, 10, &MEMORY_MINOR.to_le_bytes());
        put(&mut area, 12, &(kind as u16).to_le_bytes());
        put(&mut area, 16, &(PAGE_SIZE as u32).to_le_bytes());
        put(&mut area, 20, &self.chunk_size.to_le_bytes());
        put(&mut area, 24, &(plans.len() as u32).to_le_bytes());
        put(&mut area, 32, &header_len.to_le_bytes());
        put(&mut area, 40, &file_len.to_le_bytes());
        put(&mut area, SNAPSHOT_ID_OFF, &fixed.snapshot_id.0);
        put(&mut area, BASE_ID_OFF, &fixed.base_id.0);
        let mut off = MEMORY_HEADER_LEN;
        for info in &infos {
            for v in [info.guest_addr, info.size, info.file_offset, info.data_len] {
                put(&mut area, off, &v.to_le_bytes());
                off += 8;
            }
        }
        for v in page_table.iter().chain(&chunk_sums) {
            put(&mut area, off, &v.to_le_bytes());
            off += 8;
        }
        let tables_crc = checksum(area.get(MEMORY_HEADER_LEN..).unwrap_or_default());
        put(&mut area, TABLES_CRC_OFF, &tables_crc.to_le_bytes());
        let header_crc = checksum(area.get(..HEADER_CRC_OFF).unwrap_or_default());
        put(&mut area, HEADER_CRC_OFF, &header_crc.to_le_bytes());
        file.write_all_at(&area, 0)
            .map_err(io_err("writing the header"))?;
        file.set_len(file_len)
            .map_err(io_err("setting the file length"))?;
        MemoryFile::parse_tables(
            &Fixed {
                tables_crc,
                ..fixed
            },
            &area,
        )
    }
}

fn is_zero(page: &[u8]) -> bool {
    page.chunks(256)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Pages the writer reads from the source at a time (32 KiB), into a scratch buffer that
/// stays in the CPU's cache: the checksum and the zero-page scan read them there, and only
/// the non-zero pages are copied on into the chunk buffer the writes go out from. Zero pages,
/// most of a typical guest, cost one read each and are never stored anywhere.
const BLOCK_PAGES: u64 = 8;

/// Writes one region's recorded pages at `file_offset`, a chunk at a time. The chunk's pages
/// are read from the source a block of [`BLOCK_PAGES`] at a time into `scratch` (one read per
/// run of consecutive source pages in the block), checksummed there, and scanned for zero
/// pages; each non-zero page is copied to its place in `buf`, and each run of non-zero pages
/// goes out from `buf` in one positioned write (a chunk's pages are bound for consecutive
/// file positions). Zero pages are skipped (left as holes). Checksum and data come from the
/// same copy (a zero page is checksummed as the zeros its hole reads as), so they agree even
/// if the source changes meanwhile. Appends the chunk checksums.
fn write_region_data<S: RegionSource>(
    file: &File,
    plan: &Plan<'_, S>,
    file_offset: u64,
    chunk_size: u64,
    buf: &mut [u8],
    scratch: &mut [u8; (BLOCK_PAGES * PAGE_SIZE) as usize],
    sums: &mut Vec<u64>,
) -> Result<(), MemoryError> {
    // `buf` holds a chunk, or the whole data when that is shorter.
    let pages_per_chunk = chunk_size / PAGE_SIZE;
    let n = plan.page_count();
    let mut first = 0;
    while first < n {
        let end = (first + pages_per_chunk).min(n);
        let chunk = buf
            .get_mut(..((end - first) * PAGE_SIZE) as usize)
            .unwrap_or_default();
        let mut sum = Checksum::new();
        // The first page of the run of non-zero pages not yet written, relative to `first`.
        let mut pending: Option<usize> = None;
        let mut block = first;
        while block < end {
            let block_end = (block + BLOCK_PAGES).min(end);
            let data = scratch
                .get_mut(..((block_end - block) * PAGE_SIZE) as usize)
                .unwrap_or_default();
            // Runs of consecutive source pages: the whole block of a full region, the
            // adjacent dirty pages of a diff.
            let mut k = block;
            while k < block_end {
                let start = plan.page(k);
                let mut run = 1;
                while k + run < block_end && plan.page(k + run) == start + run {
                    run += 1;
                }
                let at = ((k - block) * PAGE_SIZE) as usize;
                let dst = data
                    .get_mut(at..at + (run * PAGE_SIZE) as usize)
                    .unwrap_or_default();
                plan.contents
                    .read_at(start * PAGE_SIZE, dst)
                    .map_err(io_err("reading region contents"))?;
                k += run;
            }
            sum.update(data);
            for (j, page) in data.chunks(PAGE).enumerate() {
                let i = (block - first) as usize + j;
                if is_zero(page) {
                    if let Some(run) = pending.take() {
                        write_run(file, chunk, run, i, file_offset, first)?;
                    }
                } else {
                    if let Some(slot) = chunk.get_mut(i * PAGE..(i + 1) * PAGE) {
                        slot.copy_from_slice(page);
                    }
                    pending.get_or_insert(i);
                }
            }
            block = block_end;
        }
        sums.push(sum.finish());
        if let Some(run) = pending {
            write_run(file, chunk, run, (end - first) as usize, file_offset, first)?;
        }
        first = end;
    }
    Ok(())
}

/// Writes pages `from..to` of `chunk` (a chunk starting at recorded page `first` of a region
/// whose data is at `file_offset`) with one positioned write.
fn write_run(
    file: &File,
    chunk: &[u8],
    from: usize,
    to: usize,
    file_offset: u64,
    first: u64,
) -> Result<(), MemoryError> {
    let data = chunk.get(from * PAGE..to * PAGE).unwrap_or_default();
    file.write_all_at(data, file_offset + (first + from as u64) * PAGE_SIZE)
        .map_err(io_err("writing region data"))
}
