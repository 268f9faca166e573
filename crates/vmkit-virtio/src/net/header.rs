//! The virtio-net header (`struct virtio_net_hdr` with `num_buffers`,
//! virtio 1.2 section 5.1.6), and the transmit packet parser.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::{
    GUEST_OFFLOAD_FEATURES, MAX_FRAME_LEN, MIN_FRAME_LEN, VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
};
use crate::mem::SliceCache;
use crate::Descriptor;

/// The size of the header in front of every packet: with
/// `VIRTIO_F_VERSION_1` the header always has its `num_buffers` field.
pub const NET_HDR_LEN: usize = 12;

/// Header flag: the packet needs a checksum at `csum_start + csum_offset`.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// Header flag (device to driver): the checksum was already validated.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// Header flag (device to driver): coalescing information is present.
pub const VIRTIO_NET_HDR_F_RSC_INFO: u8 = 4;

/// GSO type: not a GSO packet.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// GSO type: TCP over IPv4 (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// GSO type: UDP fragmentation (UFO).
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// GSO type: TCP over IPv6 (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// GSO type: UDP segmentation (USO).
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// GSO type bit: the TCP packet has ECN (CWR) set.
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// Why a virtio-net header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Flags other than the ones allowed in this direction are set.
    #[error("header flags {flags:#x} include bits not allowed here ({allowed:#x} allowed)")]
    InvalidFlags {
        /// The flags.
        flags: u8,
        /// The allowed bits.
        allowed: u8,
    },
    /// `NEEDS_CSUM` without the checksum feature for this direction.
    #[error("header asks for checksum offload (flags {flags:#x}) but it was not negotiated")]
    ChecksumNotNegotiated {
        /// The flags.
        flags: u8,
    },
    /// The checksum field lies (partly) outside the frame.
    #[error("checksum at csum_start {csum_start} + csum_offset {csum_offset} does not fit a frame of {frame_len} bytes")]
    ChecksumOutOfFrame {
        /// `csum_start`.
        csum_start: u16,
        /// `csum_offset`.
        csum_offset: u16,
        /// The frame length.
        frame_len: usize,
    },
    /// A GSO type that does not exist.
    #[error("unknown GSO type {gso_type:#x}")]
    UnknownGsoType {
        /// The raw `gso_type`.
        gso_type: u8,
    },
    /// A GSO type (or its ECN bit) whose feature was not negotiated.
    #[error("GSO type {gso_type:#x} was not negotiated")]
    GsoNotNegotiated {
        /// The raw `gso_type`.
        gso_type: u8,
    },
    /// A GSO packet without `NEEDS_CSUM`.
    #[error("GSO type {gso_type:#x} without the NEEDS_CSUM flag")]
    GsoWithoutChecksum {
        /// The raw `gso_type`.
        gso_type: u8,
    },
    /// A GSO packet with `gso_size` 0.
    #[error("GSO type {gso_type:#x} with gso_size 0")]
    ZeroGsoSize {
        /// The raw `gso_type`.
        gso_type: u8,
    },
    /// `hdr_len` is larger than the frame.
    #[error("hdr_len {hdr_len} is larger than the {frame_len}-byte frame")]
    HdrLenBeyondFrame {
        /// `hdr_len`.
        hdr_len: u16,
        /// The frame length.
        frame_len: usize,
    },
}

/// A virtio-net header, fields in host order.
///
/// ```
/// use vmkit_virtio::net::{NetHeader, VIRTIO_NET_F_CSUM, VIRTIO_NET_HDR_F_NEEDS_CSUM};
///
/// let mut bytes = [0u8; 12];
/// bytes[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
/// bytes[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: after IPv4
/// bytes[8..10].copy_from_slice(&6u16.to_le_bytes()); // csum_offset: UDP checksum
/// let hdr = NetHeader::from_bytes(&bytes);
/// assert!(hdr.validate_tx(VIRTIO_NET_F_CSUM, 60).is_ok());
/// assert!(hdr.validate_tx(0, 60).is_err()); // checksum offload not negotiated
/// assert!(hdr.validate_tx(VIRTIO_NET_F_CSUM, 40).is_err()); // checksum beyond the frame
/// assert_eq!(hdr.to_bytes(), bytes);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHeader {
    /// `VIRTIO_NET_HDR_F_*` flags.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*` type, with the ECN bit.
    pub gso_type: u8,
    /// Length of the headers (a hint for the host).
    pub hdr_len: u16,
    /// Segment size for GSO.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
    /// Receive: the number of merged buffers of the packet.
    pub num_buffers: u16,
}

impl NetHeader {
    /// Decodes the 12 little-endian header bytes.
    #[inline]
    pub fn from_bytes(b: &[u8; NET_HDR_LEN]) -> Self {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        NetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers: le(10),
        }
    }

    /// Encodes the header in its 12-byte little-endian form.
    #[inline]
    pub fn to_bytes(&self) -> [u8; NET_HDR_LEN] {
        let mut b = [0u8; NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Whether `NEEDS_CSUM` is set.
    pub fn needs_csum(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }

    /// Checks a header the driver put in front of a transmitted frame of
    /// `frame_len` bytes, against the negotiated `features`: only
    /// `NEEDS_CSUM` may be set, and only with `VIRTIO_NET_F_CSUM`; the
    /// checksum field lies inside the frame; a GSO type is known, was
    /// negotiated (`HOST_TSO4`, `HOST_TSO6`, `HOST_UFO`, `HOST_ECN`),
    /// comes with `NEEDS_CSUM` and a non-zero `gso_size`; `hdr_len` is not
    /// beyond the frame. `num_buffers` is ignored.
    pub fn validate_tx(&self, features: u64, frame_len: usize) -> Result<(), HeaderError> {
        self.validate(
            Direction::Tx,
            features,
            frame_len,
            VIRTIO_NET_HDR_F_NEEDS_CSUM,
        )
    }

    /// Checks a header a backend put in front of a received frame against
    /// the receive offloads the guest currently accepts (`GUEST_CSUM`,
    /// `GUEST_TSO4`, … feature bits), and returns it as the device hands it
    /// to the driver: `DATA_VALID` is cleared unless `GUEST_CSUM` is on,
    /// `num_buffers` is zero (the device fills it in). Everything else is
    /// checked as in [`NetHeader::validate_tx`].
    pub fn validate_rx(&self, offloads: u64, frame_len: usize) -> Result<NetHeader, HeaderError> {
        let mut h = *self;
        h.num_buffers = 0;
        if offloads & VIRTIO_NET_F_GUEST_CSUM == 0 {
            h.flags &= !VIRTIO_NET_HDR_F_DATA_VALID;
        }
        h.validate(
            Direction::Rx,
            offloads & GUEST_OFFLOAD_FEATURES,
            frame_len,
            VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID,
        )?;
        Ok(h)
    }

    fn validate(
        &self,
        dir: Direction,
        features: u64,
        frame_len: usize,
        allowed: u8,
    ) -> Result<(), HeaderError> {
        let (csum, tso4, tso6, ufo, ecn) = match dir {
            Direction::Tx => (
                VIRTIO_NET_F_CSUM,
                VIRTIO_NET_F_HOST_TSO4,
                VIRTIO_NET_F_HOST_TSO6,
                VIRTIO_NET_F_HOST_UFO,
                VIRTIO_NET_F_HOST_ECN,
            ),
            Direction::Rx => (
                VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6,
                VIRTIO_NET_F_GUEST_UFO,
                VIRTIO_NET_F_GUEST_ECN,
            ),
        };
        let flags = self.flags;
        if flags & !allowed != 0 {
            return Err(HeaderError::InvalidFlags { flags, allowed });
        }
        if self.needs_csum() {
            if features & csum == 0 {
                return Err(HeaderError::ChecksumNotNegotiated { flags });
            }
            let end = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
            if end > frame_len {
                return Err(HeaderError::ChecksumOutOfFrame {
                    csum_start: self.csum_start,
                    csum_offset: self.csum_offset,
                    frame_len,
                });
            }
        }
        let gso_type = self.gso_type;
        let needed = match gso_type & !VIRTIO_NET_HDR_GSO_ECN {
            VIRTIO_NET_HDR_GSO_NONE if gso_type & VIRTIO_NET_HDR_GSO_ECN != 0 => {
                return Err(HeaderError::UnknownGsoType { gso_type });
            }
            VIRTIO_NET_HDR_GSO_NONE => 0,
            VIRTIO_NET_HDR_GSO_TCPV4 => tso4,
            VIRTIO_NET_HDR_GSO_TCPV6 => tso6,
            VIRTIO_NET_HDR_GSO_UDP => ufo,
            // USO is never offered by this device.
            VIRTIO_NET_HDR_GSO_UDP_L4 => return Err(HeaderError::GsoNotNegotiated { gso_type }),
            _ => return Err(HeaderError::UnknownGsoType { gso_type }),
        };
        if needed != 0 {
            if features & needed == 0 {
                return Err(HeaderError::GsoNotNegotiated { gso_type });
            }
            if gso_type & VIRTIO_NET_HDR_GSO_ECN != 0 && features & ecn == 0 {
                return Err(HeaderError::GsoNotNegotiated { gso_type });
            }
            if !self.needs_csum() {
                return Err(HeaderError::GsoWithoutChecksum { gso_type });
            }
            if self.gso_size == 0 {
                return Err(HeaderError::ZeroGsoSize { gso_type });
            }
        }
        if usize::from(self.hdr_len) > frame_len {
            return Err(HeaderError::HdrLenBeyondFrame {
                hdr_len: self.hdr_len,
                frame_len,
            });
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Tx,
    Rx,
}

/// Why a transmit chain is dropped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    /// The queue rejected the chain (a loop, a buffer outside guest memory, …).
    #[error("invalid descriptor chain")]
    Chain(#[from] crate::Error),
    /// A transmit chain holds a device-writable buffer.
    #[error("transmit chain has a device-writable buffer ({len} bytes at {addr:#x})")]
    WritableBuffer {
        /// Its address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// Fewer bytes than a header and an Ethernet header.
    #[error("transmit chain holds {len} bytes, fewer than the 12-byte header and a 14-byte Ethernet header")]
    TooShort {
        /// The bytes in the chain.
        len: u64,
    },
    /// More bytes than the header and the largest frame.
    #[error("transmit chain holds more than {max} bytes (header and largest frame)")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// The header is not acceptable.
    #[error("invalid transmit header")]
    Header(#[from] HeaderError),
    /// Guest memory could not be read.
    #[error("cannot read transmit buffer at {addr:#x}")]
    Read {
        /// The guest address.
        addr: u64,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// A validated transmit packet: its header, and where its bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxPacket {
    /// The driver's header (validated against the negotiated features).
    pub header: NetHeader,
    /// The length of the Ethernet frame that follows the header.
    pub frame_len: usize,
}

impl TxPacket {
    /// Reads a transmit chain into `buf` (the 12-byte header, then the
    /// frame; `buf` is resized as needed, to at most
    /// `NET_HDR_LEN + MAX_FRAME_LEN` bytes) and validates it against the
    /// negotiated `features`: only device-readable buffers; at least a
    /// header and an Ethernet header, at most a header and
    /// [`MAX_FRAME_LEN`] bytes; the header as in
    /// [`NetHeader::validate_tx`]. The header may span buffers.
    pub fn parse<M, I>(
        chain: I,
        mem: &M,
        features: u64,
        buf: &mut Vec<u8>,
    ) -> Result<TxPacket, TxError>
    where
        M: GuestMemory + ?Sized,
        I: IntoIterator<Item = crate::Result<Descriptor>>,
    {
        const MAX: usize = NET_HDR_LEN + MAX_FRAME_LEN;
        if buf.len() < MAX {
            buf.resize(MAX, 0);
        }
        let mut at = 0usize;
        let mut too_long = false;
        for d in chain {
            let d = d?;
            if d.is_write_only() {
                return Err(TxError::WritableBuffer {
                    addr: d.addr().0,
                    len: d.len(),
                });
            }
            let len = d.len() as usize;
            if too_long || len > MAX - at {
                // Keep walking: a later writable buffer or chain error is
                // the more precise complaint, and the walk is bounded.
                too_long = true;
                continue;
            }
            if let Some(dst) = buf.get_mut(at..at + len) {
                mem.read_slice(dst, d.addr())
                    .map_err(|source| TxError::Read {
                        addr: d.addr().0,
                        source,
                    })?;
            }
            at += len;
        }
        if too_long {
            return Err(TxError::TooLong { max: MAX });
        }
        if at < NET_HDR_LEN + MIN_FRAME_LEN {
            return Err(TxError::TooShort { len: at as u64 });
        }
        let mut hb = [0u8; NET_HDR_LEN];
        hb.copy_from_slice(buf.get(..NET_HDR_LEN).unwrap_or(&[0; NET_HDR_LEN]));
        let header = NetHeader::from_bytes(&hb);
        let frame_len = at - NET_HDR_LEN;
        header.validate_tx(features, frame_len)?;
        Ok(TxPacket { header, frame_len })
    }
}

/// Writes `data` across the device-writable buffers `descs` (in order),
/// skipping the first `skip` bytes of their combined space. Returns the
/// bytes written, or `None` if guest memory refused a write. `cache` keeps
/// the region the last buffer was found in, for the whole receive pass: a
/// buffer in it is written without a region lookup (and marked dirty, as
/// `write_slice` would).
pub(super) fn scatter<'m, M: GuestMemory + ?Sized>(
    mem: &'m M,
    cache: &mut SliceCache<'m, M>,
    descs: &[Descriptor],
    mut skip: usize,
    mut data: &[u8],
) -> Option<usize> {
    let mut written = 0usize;
    for d in descs {
        if data.is_empty() {
            break;
        }
        let len = d.len() as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(data.len());
        let (now, rest) = data.split_at(n);
        // skip < len <= u32::MAX, and addr + len does not wrap (checked by the queue).
        let addr = d.addr().0 + skip as u64;
        match cache.slice(mem, addr, n) {
            Some(s) => s.copy_from(now),
            None => mem.write_slice(now, GuestAddress(addr)).ok()?,
        }
        written += n;
        data = rest;
        skip = 0;
    }
    Some(written)
}
