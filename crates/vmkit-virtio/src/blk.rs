//! virtio-blk (virtio 1.2, section 5.2) backed by a host file.
//!
//! [`Block`] serves one request queue. Requests are read (`IN`), write
//! (`OUT`), `FLUSH` and `GET_ID`; any other type is answered with
//! [`VIRTIO_BLK_S_UNSUPP`]. [`Request::parse`] validates a descriptor chain
//! before anything touches the disk:
//!
//! - the device-readable bytes start with the 16-byte header (the header may
//!   span descriptors: virtio 1.x devices make no framing assumptions);
//! - the last descriptor is device-writable and at least 1 byte long; its
//!   last byte is the status;
//! - the data is device-writable for `IN` and `GET_ID`, device-readable for
//!   `OUT`, absent for `FLUSH`;
//! - `IN`/`OUT` lengths are multiples of 512, and `sector * 512 + length`
//!   lies inside the disk (checked without overflow);
//! - a chain holds at most [`MAX_DESCRIPTORS`] descriptors.
//!
//! A request that fails these checks is answered with
//! [`VIRTIO_BLK_S_IOERR`] when its status byte is usable, and returned with
//! used length 0 when it is not (no writable last descriptor, or a chain the
//! queue itself rejected, e.g. a buffer outside guest memory). Host I/O
//! errors become `VIRTIO_BLK_S_IOERR`. The used length is the number of
//! bytes written to the guest, status byte included.
//!
//! One call of `process_queue` completes at most
//! [`crate::device::PROCESS_BUDGET`] requests.
//!
//! Without `VIRTIO_BLK_F_FLUSH` negotiated, every write is followed by a
//! flush of the backend (write-through), as the specification asks.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::device::{
    read_config_bytes, DeviceError, StateError, VirtioDevice, PROCESS_BUDGET, VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK,
};
use crate::{Descriptor, Persist, Queue};

/// Feature bit 2: `seg_max` in the configuration space is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// Feature bit 5: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature bit 6: `blk_size` in the configuration space is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// Feature bit 9: the device supports the `FLUSH` request.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Request type: read from the disk.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write to the disk.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush the disk's write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: read the device id string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Request status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Request status: the request failed (malformed, or a host I/O error).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Request status: the request type is not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// The sector size of virtio-blk addressing.
pub const SECTOR_SIZE: u64 = 512;
/// The length of the id string of `GET_ID`.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
/// The size of the request header (`type`, `reserved`, `sector`).
pub const HEADER_SIZE: usize = 16;
/// The maximum size of the request queue.
pub const QUEUE_MAX_SIZE: u16 = 256;
/// The `seg_max` the device advertises: data segments per request.
pub const SEG_MAX: u32 = QUEUE_MAX_SIZE as u32 - 2;
/// The most descriptors a request chain may have; longer chains fail with
/// [`RequestError::TooManyDescriptors`].
pub const MAX_DESCRIPTORS: usize = 1024;

/// Bytes moved between the disk and guest memory per step.
const CHUNK: usize = 64 * 1024;
/// Size of the configuration space: capacity, size_max, seg_max, geometry, blk_size.
const CONFIG_LEN: usize = 24;

/// The storage behind a [`Block`] device. Implemented for [`File`]
/// (positional I/O); tests and fuzzers can supply their own.
pub trait BlockBackend {
    /// Fills `buf` from the disk at byte `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` to the disk at byte `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes earlier writes durable.
    fn flush(&mut self) -> io::Result<()>;
}

impl BlockBackend for File {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

/// Errors of the block device: construction, and invalid requests.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlkError {
    /// The disk size could not be read.
    #[error("cannot read the disk file's size")]
    DiskSize(#[source] io::Error),
    /// The id string is longer than 20 bytes.
    #[error("device id {id:?} is {} bytes long, more than 20", .id.len())]
    IdTooLong {
        /// The rejected id.
        id: String,
    },
}

/// Why a request chain is malformed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The queue rejected the chain (a loop, a buffer outside guest memory, …).
    #[error("invalid descriptor chain")]
    Chain(#[from] crate::Error),
    /// The chain has more descriptors than [`MAX_DESCRIPTORS`].
    #[error("request has {count} descriptors, more than {max}")]
    TooManyDescriptors {
        /// Descriptors in the chain.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The chain has no device-writable descriptor for the status byte.
    #[error("request has no status descriptor")]
    StatusMissing,
    /// The chain ends with a device-readable descriptor where the status must be.
    #[error("request's last descriptor ({len} bytes at {addr:#x}) is device-readable; the status must be writable")]
    StatusNotWritable {
        /// Its address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The last (status) descriptor has length 0.
    #[error("request's status descriptor at {addr:#x} is empty")]
    StatusEmpty {
        /// Its address.
        addr: u64,
    },
    /// Fewer than 16 device-readable bytes: no complete header.
    #[error("request header has {len} readable bytes, 16 needed")]
    HeaderTooShort {
        /// The device-readable bytes in the chain.
        len: u64,
    },
    /// The header could not be read from guest memory.
    #[error("cannot read the request header at {addr:#x}")]
    HeaderRead {
        /// Guest address of the failing part.
        addr: u64,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// Device-readable data in a request that only writes to the guest.
    #[error("request type {req_type} carries {len} device-readable data bytes; it takes none")]
    UnexpectedReadable {
        /// The request type.
        req_type: u32,
        /// Readable bytes after the header.
        len: u64,
    },
    /// Device-writable data in a request that only reads from the guest.
    #[error("request type {req_type} carries {len} device-writable data bytes; it takes none")]
    UnexpectedWritable {
        /// The request type.
        req_type: u32,
        /// Writable bytes before the status.
        len: u64,
    },
    /// An `IN` or `OUT` data length that is not a multiple of 512.
    #[error("request type {req_type} data length {len} is not a multiple of 512")]
    UnalignedLength {
        /// The request type.
        req_type: u32,
        /// The data length.
        len: u64,
    },
    /// `sector * 512 + len` overflows or lies beyond the disk.
    #[error("request for {len} bytes at sector {sector} is outside a disk of {capacity} sectors")]
    OutOfRange {
        /// The first sector.
        sector: u64,
        /// The data length in bytes.
        len: u64,
        /// The disk capacity in sectors.
        capacity: u64,
    },
}

/// A malformed request, with the status byte's location when it is usable
/// (the device answers [`VIRTIO_BLK_S_IOERR`] there).
#[derive(Debug, thiserror::Error)]
#[error("invalid block request")]
pub struct InvalidRequest {
    /// What is wrong.
    #[source]
    pub error: RequestError,
    /// The guest address of the status byte, if the chain has a usable one.
    pub status: Option<GuestAddress>,
}

/// The kind of a block request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the guest.
    In,
    /// Write sectors from the guest.
    Out,
    /// Flush the write cache.
    Flush,
    /// Read the device id string.
    GetId,
    /// Any other type (answered with [`VIRTIO_BLK_S_UNSUPP`]).
    Unsupported(u32),
}

impl RequestType {
    fn from_raw(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            other => RequestType::Unsupported(other),
        }
    }
}

/// A validated block request: its type, first sector, data buffers and
/// status byte location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    kind: RequestType,
    sector: u64,
    data: Vec<(GuestAddress, u32)>,
    data_len: u64,
    status: GuestAddress,
}

/// Appends the part of `segs` from byte `skip` on to `out`, returning its length.
fn segments_from(
    segs: &[(GuestAddress, u32)],
    mut skip: u64,
    out: &mut Vec<(GuestAddress, u32)>,
) -> u64 {
    let mut total = 0u64;
    for &(addr, len) in segs {
        let len64 = u64::from(len);
        if skip >= len64 {
            skip -= len64;
            continue;
        }
        // `skip < len`: both fit in u32, and addr + len does not wrap
        // (checked by the queue).
        let rest = len - skip as u32;
        out.push((GuestAddress(addr.0 + skip), rest));
        total += u64::from(rest);
        skip = 0;
    }
    total
}

impl Request {
    /// Validates the descriptor chain `chain` (as popped from the queue)
    /// of a request for a disk of `capacity` sectors, reading its header
    /// from `mem`. See the module documentation for the rules.
    pub fn parse<M, I>(chain: I, mem: &M, capacity: u64) -> Result<Request, InvalidRequest>
    where
        M: GuestMemory + ?Sized,
        I: IntoIterator<Item = crate::Result<Descriptor>>,
    {
        let bad = |error, status| InvalidRequest { error, status };
        let mut readable: Vec<(GuestAddress, u32)> = Vec::new();
        let mut writable: Vec<(GuestAddress, u32)> = Vec::new();
        let mut readable_len = 0u64;
        let mut count = 0usize;
        let mut last: Option<Descriptor> = None;
        for d in chain {
            let d = d.map_err(|e| bad(RequestError::Chain(e), None))?;
            count += 1;
            if count <= MAX_DESCRIPTORS {
                if d.is_write_only() {
                    writable.push((d.addr(), d.len()));
                } else {
                    readable.push((d.addr(), d.len()));
                    readable_len += u64::from(d.len());
                }
            }
            last = Some(d);
        }
        // The status byte: the last byte of the last, writable descriptor.
        let status = match last {
            Some(d) if d.is_write_only() && !d.is_empty() => {
                // In guest memory (checked by the queue), so this does not wrap.
                GuestAddress(d.addr().0 + u64::from(d.len() - 1))
            }
            Some(d) if d.is_write_only() => {
                return Err(bad(RequestError::StatusEmpty { addr: d.addr().0 }, None))
            }
            Some(d) if readable_len > HEADER_SIZE as u64 => {
                let error = RequestError::StatusNotWritable {
                    addr: d.addr().0,
                    len: d.len(),
                };
                return Err(bad(error, None));
            }
            _ => return Err(bad(RequestError::StatusMissing, None)),
        };
        let status_ok = Some(status);
        if count > MAX_DESCRIPTORS {
            let error = RequestError::TooManyDescriptors {
                count,
                max: MAX_DESCRIPTORS,
            };
            return Err(bad(error, status_ok));
        }
        if readable_len < HEADER_SIZE as u64 {
            let error = RequestError::HeaderTooShort { len: readable_len };
            return Err(bad(error, status_ok));
        }
        let mut header = [0u8; HEADER_SIZE];
        let mut filled = 0usize;
        for &(addr, len) in &readable {
            if filled == HEADER_SIZE {
                break;
            }
            let n = (HEADER_SIZE - filled).min(len as usize);
            let dst = &mut header[filled..filled + n];
            mem.read_slice(dst, addr).map_err(|source| {
                bad(
                    RequestError::HeaderRead {
                        addr: addr.0,
                        source,
                    },
                    status_ok,
                )
            })?;
            filled += n;
        }
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
        let req_type = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        let kind = RequestType::from_raw(req_type);

        // Data: readable bytes after the header, writable bytes before the status.
        let mut readable_data = Vec::new();
        let readable_data_len = segments_from(&readable, HEADER_SIZE as u64, &mut readable_data);
        let mut writable_data = writable;
        if let Some(l) = writable_data.last_mut() {
            l.1 -= 1; // the status byte; l.1 >= 1 was checked above
            if l.1 == 0 {
                writable_data.pop();
            }
        }
        let writable_data_len: u64 = writable_data.iter().map(|&(_, l)| u64::from(l)).sum();

        let (data, data_len) = match kind {
            RequestType::Unsupported(_) => (Vec::new(), 0),
            RequestType::In | RequestType::GetId | RequestType::Flush if readable_data_len != 0 => {
                let error = RequestError::UnexpectedReadable {
                    req_type,
                    len: readable_data_len,
                };
                return Err(bad(error, status_ok));
            }
            RequestType::Out | RequestType::Flush if writable_data_len != 0 => {
                let error = RequestError::UnexpectedWritable {
                    req_type,
                    len: writable_data_len,
                };
                return Err(bad(error, status_ok));
            }
            RequestType::Flush => (Vec::new(), 0),
            RequestType::In | RequestType::GetId => (writable_data, writable_data_len),
            RequestType::Out => (readable_data, readable_data_len),
        };
        if matches!(kind, RequestType::In | RequestType::Out) {
            if data_len % SECTOR_SIZE != 0 {
                let error = RequestError::UnalignedLength {
                    req_type,
                    len: data_len,
                };
                return Err(bad(error, status_ok));
            }
            let fits = sector
                .checked_mul(SECTOR_SIZE)
                .and_then(|start| start.checked_add(data_len))
                .zip(capacity.checked_mul(SECTOR_SIZE))
                .is_some_and(|(end, size)| end <= size);
            if !fits {
                let error = RequestError::OutOfRange {
                    sector,
                    len: data_len,
                    capacity,
                };
                return Err(bad(error, status_ok));
            }
        }
        Ok(Request {
            kind,
            sector,
            data,
            data_len,
            status,
        })
    }

    /// The request type.
    pub fn kind(&self) -> RequestType {
        self.kind
    }

    /// The first sector (meaningful for `IN` and `OUT`).
    pub fn sector(&self) -> u64 {
        self.sector
    }

    /// The data buffers: device-writable for `IN`/`GET_ID`, device-readable
    /// for `OUT`, none for `FLUSH` and unsupported types.
    pub fn data(&self) -> &[(GuestAddress, u32)] {
        &self.data
    }

    /// The total data length in bytes.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// The guest address of the status byte.
    pub fn status_addr(&self) -> GuestAddress {
        self.status
    }
}

/// Options of a [`Block`] device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockOptions {
    /// Refuse writes (`OUT` answers [`VIRTIO_BLK_S_IOERR`]); offers `VIRTIO_BLK_F_RO`.
    pub read_only: bool,
    /// The id string returned by `GET_ID` (at most 20 bytes).
    pub id: String,
}

impl Default for BlockOptions {
    fn default() -> Self {
        BlockOptions {
            read_only: false,
            id: "vmkit-blk".to_string(),
        }
    }
}

/// Counters of a [`Block`] device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockStats {
    /// Requests completed with [`VIRTIO_BLK_S_OK`].
    pub ok: u64,
    /// Requests failed with [`VIRTIO_BLK_S_IOERR`] (malformed or I/O error).
    pub io_errors: u64,
    /// Requests answered [`VIRTIO_BLK_S_UNSUPP`].
    pub unsupported: u64,
    /// Chains returned with used length 0: no usable status byte.
    pub dropped: u64,
}

/// The saved state of a [`Block`] device ([`Persist::State`]).
///
/// The disk contents are not in it: the disk is the VMM's to keep (and to
/// snapshot, if it changes after the save) and to open again. The state
/// records how the device was built so that a restore onto another disk,
/// or with other options, is refused rather than served silently: the
/// fresh device's capacity, read-only flag and id must match. The
/// negotiated features are the transport's and reach the device again
/// through [`VirtioDevice::activate`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockState {
    /// The disk capacity in 512-byte sectors.
    pub capacity: u64,
    /// Whether the device refuses writes.
    pub read_only: bool,
    /// The `GET_ID` string (without its zero padding).
    pub id: String,
    /// The request counters.
    pub stats: BlockStats,
}

/// A virtio-blk device over a [`BlockBackend`] (by default a [`File`]).
#[derive(Debug)]
pub struct Block<B: BlockBackend = File> {
    backend: B,
    capacity: u64,
    read_only: bool,
    id: [u8; VIRTIO_BLK_ID_BYTES],
    config: [u8; CONFIG_LEN],
    queue_sizes: [u16; 1],
    acked: u64,
    stats: BlockStats,
    buf: Vec<u8>,
}

impl Block<File> {
    /// A block device on `file`, a regular file or a host block device; its
    /// capacity is the file size in 512-byte sectors (a trailing partial sector
    /// is not accessible).
    pub fn new(mut file: File, options: BlockOptions) -> Result<Self, BlkError> {
        // Seeking to the end measures a block device too, whose metadata says 0
        // bytes; requests use positional I/O, so the file position is free.
        let size = file.seek(SeekFrom::End(0)).map_err(BlkError::DiskSize)?;
        Self::with_backend(file, size, options)
    }
}

impl<B: BlockBackend> Block<B> {
    /// A block device on any backend of `size` bytes.
    pub fn with_backend(backend: B, size: u64, options: BlockOptions) -> Result<Self, BlkError> {
        let bytes = options.id.as_bytes();
        if bytes.len() > VIRTIO_BLK_ID_BYTES {
            return Err(BlkError::IdTooLong { id: options.id });
        }
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
        id[..bytes.len()].copy_from_slice(bytes);
        let capacity = size / SECTOR_SIZE;
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&capacity.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        Ok(Block {
            backend,
            capacity,
            read_only: options.read_only,
            id,
            config,
            queue_sizes: [QUEUE_MAX_SIZE],
            acked: 0,
            stats: BlockStats::default(),
            buf: Vec::new(),
        })
    }

    /// The disk capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The request counters.
    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    /// The id string without its zero padding.
    fn id_string(&self) -> String {
        let end = self.id.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        // The id was a `String`; trailing zero bytes are whole characters.
        String::from_utf8_lossy(&self.id[..end]).into_owned()
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Executes a validated request, writes its status byte, and returns
    /// the used length (bytes written to the guest, status included).
    pub fn execute<M: GuestMemory + ?Sized>(&mut self, req: &Request, mem: &M) -> u32 {
        let (status, written) = match req.kind {
            RequestType::In => match self.read_to_guest(req, mem) {
                Ok(()) => (VIRTIO_BLK_S_OK, req.data_len),
                Err(n) => (VIRTIO_BLK_S_IOERR, n),
            },
            RequestType::Out => (self.write_from_guest(req, mem), 0),
            RequestType::Flush => match self.backend.flush() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            },
            RequestType::GetId => self.get_id(req, mem),
            RequestType::Unsupported(_) => (VIRTIO_BLK_S_UNSUPP, 0),
        };
        match status {
            VIRTIO_BLK_S_OK => self.stats.ok += 1,
            VIRTIO_BLK_S_UNSUPP => self.stats.unsupported += 1,
            _ => self.stats.io_errors += 1,
        }
        let status_len = u64::from(mem.write_obj(status, req.status).is_ok());
        // Data is at most u32::MAX - 1 bytes (a chain's total fits in u32).
        u32::try_from(written + status_len).unwrap_or(u32::MAX)
    }

    /// Reads the request's data from the disk into guest memory; on failure
    /// returns the bytes written to the guest so far.
    fn read_to_guest<M: GuestMemory + ?Sized>(
        &mut self,
        req: &Request,
        mem: &M,
    ) -> Result<(), u64> {
        let mut offset = req.sector * SECTOR_SIZE; // checked in parse
        let mut done = 0u64;
        self.buf.resize(CHUNK, 0);
        for &(addr, len) in &req.data {
            let mut at = 0usize;
            let len = len as usize;
            while at < len {
                let n = (len - at).min(CHUNK);
                let buf = &mut self.buf[..n];
                self.backend.read_at(buf, offset).map_err(|_| done)?;
                mem.write_slice(buf, GuestAddress(addr.0 + at as u64))
                    .map_err(|_| done)?;
                at += n;
                offset += n as u64;
                done += n as u64;
            }
        }
        Ok(())
    }

    fn write_from_guest<M: GuestMemory + ?Sized>(&mut self, req: &Request, mem: &M) -> u8 {
        if self.read_only {
            return VIRTIO_BLK_S_IOERR;
        }
        let mut offset = req.sector * SECTOR_SIZE; // checked in parse
        self.buf.resize(CHUNK, 0);
        for &(addr, len) in &req.data {
            let mut at = 0usize;
            let len = len as usize;
            while at < len {
                let n = (len - at).min(CHUNK);
                let buf = &mut self.buf[..n];
                if mem
                    .read_slice(buf, GuestAddress(addr.0 + at as u64))
                    .is_err()
                    || self.backend.write_at(buf, offset).is_err()
                {
                    return VIRTIO_BLK_S_IOERR;
                }
                at += n;
                offset += n as u64;
            }
        }
        if self.acked & VIRTIO_BLK_F_FLUSH == 0 && self.backend.flush().is_err() {
            return VIRTIO_BLK_S_IOERR;
        }
        VIRTIO_BLK_S_OK
    }

    fn get_id<M: GuestMemory + ?Sized>(&mut self, req: &Request, mem: &M) -> (u8, u64) {
        let mut src: &[u8] = &self.id;
        let mut written = 0u64;
        for &(addr, len) in &req.data {
            if src.is_empty() {
                break;
            }
            let n = src.len().min(len as usize);
            if mem.write_slice(&src[..n], addr).is_err() {
                return (VIRTIO_BLK_S_IOERR, written);
            }
            src = &src[n..];
            written += n as u64;
        }
        (VIRTIO_BLK_S_OK, written)
    }

    /// Parses and executes one chain; returns the used length.
    fn handle<M, I>(&mut self, chain: I, mem: &M) -> u32
    where
        M: GuestMemory + ?Sized,
        I: IntoIterator<Item = crate::Result<Descriptor>>,
    {
        match Request::parse(chain, mem, self.capacity) {
            Ok(req) => self.execute(&req, mem),
            Err(InvalidRequest {
                status: Some(addr), ..
            }) => {
                self.stats.io_errors += 1;
                u32::from(mem.write_obj(VIRTIO_BLK_S_IOERR, addr).is_ok())
            }
            Err(InvalidRequest { status: None, .. }) => {
                self.stats.dropped += 1;
                0
            }
        }
    }
}

fn queue_err(index: u16) -> impl Fn(crate::Error) -> DeviceError {
    move |source| DeviceError::Queue { index, source }
}

impl<M: GuestMemory + ?Sized, B: BlockBackend> VirtioDevice<M> for Block<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only { VIRTIO_BLK_F_RO } else { 0 };
        VIRTIO_F_VERSION_1
            | VIRTIO_F_INDIRECT_DESC
            | VIRTIO_F_EVENT_IDX
            | VIRTIO_F_RING_PACKED
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | ro
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, features: u64) -> Result<(), DeviceError> {
        self.acked = features;
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<bool, DeviceError> {
        if index != 0 {
            return Err(DeviceError::NoSuchQueue { index, count: 1 });
        }
        let err = queue_err(index);
        let mut budget = PROCESS_BUDGET;
        loop {
            while budget > 0 {
                let Some(chain) = queue.pop(mem).map_err(&err)? else {
                    break;
                };
                budget -= 1;
                let head = chain.head();
                let len = self.handle(chain, mem);
                queue.add_used(mem, head, len).map_err(&err)?;
            }
            if budget == 0 {
                break;
            }
            // Re-enable notifications; if the driver raced us, go again.
            if !queue.enable_notification(mem).map_err(&err)? {
                break;
            }
        }
        queue.needs_notification(mem).map_err(&err)
    }

    fn reset(&mut self) {
        self.acked = 0;
    }
}

/// The counters, and how the device was built ([`BlockState`]); the disk
/// and its contents are the VMM's.
impl<B: BlockBackend> Persist for Block<B> {
    const KIND: &'static str = "virtio-blk";
    const VERSION: u16 = 1;
    type State = BlockState;
    type Error = StateError;

    fn save_state(&self) -> BlockState {
        BlockState {
            capacity: self.capacity,
            read_only: self.read_only,
            id: self.id_string(),
            stats: self.stats,
        }
    }

    /// Checks that the saved capacity, read-only flag and id match this
    /// device ([`StateError::Mismatch`] otherwise: the disk or the options
    /// differ from the saved device's), then restores the counters.
    fn restore_state(&mut self, saved: &BlockState) -> Result<(), StateError> {
        let mismatch = |field, saved: &dyn std::fmt::Display, device: &dyn std::fmt::Display| {
            StateError::Mismatch {
                field,
                saved: saved.to_string(),
                device: device.to_string(),
            }
        };
        if saved.capacity != self.capacity {
            return Err(mismatch(
                "capacity (sectors)",
                &saved.capacity,
                &self.capacity,
            ));
        }
        if saved.read_only != self.read_only {
            return Err(mismatch("read_only", &saved.read_only, &self.read_only));
        }
        let ours = self.id_string();
        if saved.id != ours {
            return Err(mismatch(
                "id",
                &format!("{:?}", saved.id),
                &format!("{ours:?}"),
            ));
        }
        self.stats = saved.stats;
        Ok(())
    }
}
