//! virtio-net (virtio 1.2, section 5.1): one receive and one transmit
//! queue, and a control queue, over a [`NetBackend`] (a TAP device in
//! `vmkit-net`, or anything else that moves Ethernet frames).
//!
//! # Queues
//!
//! Queue [`RXQ`] (0) receives (host to guest), [`TXQ`] (1) transmits,
//! [`CTRLQ`] (2) carries control commands when `VIRTIO_NET_F_CTRL_VQ` is
//! offered ([`NetOptions::ctrl_queue`]). A VMM calls the transport's
//! `process_queue(RXQ)` when the backend has frames (its file descriptor is
//! readable) and when the driver notifies `RXQ`; `process_queue(TXQ)` when
//! the driver notifies `TXQ` (and, if [`Net::tx_blocked`], when the backend
//! can take frames again).
//!
//! # Features
//!
//! Offered: `VERSION_1`, `INDIRECT_DESC`, `EVENT_IDX`, `MAC`, `STATUS`,
//! `MRG_RXBUF` (unless disabled), `MTU` (if set), `CTRL_VQ` with `CTRL_RX`,
//! `CTRL_MAC_ADDR` and `GUEST_ANNOUNCE` (unless disabled; [`Net::announce`]
//! asks the driver to announce the guest after a migration). Checksum and segmentation
//! offloads are offered only as far as the backend says it honours them
//! ([`BackendCapabilities`]): transmit offloads (`CSUM`, `HOST_TSO4`,
//! `HOST_TSO6`, `HOST_ECN`, `HOST_UFO`) need a backend that takes a
//! virtio-net header with each frame; receive offloads (`GUEST_CSUM`,
//! `GUEST_TSO4`, …) need one that can be told which offloads the guest
//! accepts ([`NetBackend::set_rx_offloads`], called on activation and on
//! `VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET`); then `CTRL_GUEST_OFFLOADS` is
//! offered too. A feature set that breaks the specification's dependencies
//! (e.g. `HOST_TSO4` without `CSUM`) fails activation.
//!
//! # Validation
//!
//! Every guest-controlled value is checked; nothing the driver does makes
//! the device panic, and each bad request costs at most its own frame:
//!
//! - transmit: [`TxPacket::parse`] (device-readable buffers only; a 12-byte
//!   header and at least a 14-byte Ethernet header, at most
//!   [`MAX_FRAME_LEN`]; the header as in [`NetHeader::validate_tx`]), plus
//!   the MTU when `VIRTIO_NET_F_MTU` was negotiated. A refused frame is
//!   dropped and counted ([`NetStats::tx_malformed`]); its chain is still
//!   returned.
//! - receive: chains must be device-writable only (and, with
//!   `MRG_RXBUF`, hold at least a header each); others are returned with
//!   length 0 and counted ([`NetStats::bad_chains`]). A frame that does not
//!   fit the buffers the driver offers is dropped
//!   ([`NetStats::rx_dropped_too_big`]). The backend's own header is
//!   checked against the offloads the guest accepted
//!   ([`NetHeader::validate_rx`]).
//! - control: [`CtrlRequest::parse`]; unknown or malformed commands are
//!   answered `VIRTIO_NET_ERR`.
//!
//! # Data path
//!
//! A backend that says [`NetBackend::vectored`] (the TAP in `vmkit-net`)
//! gets frames in place: a transmit chain's buffers go to
//! [`NetBackend::send_vectored`] as slices of guest memory (one `writev`),
//! and received frames land straight in the driver's receive chains
//! ([`NetBackend::recv_vectored`], one `readv`). Only the virtio-net header
//! is copied, so that the device validates the bytes it passes on. For
//! receiving in place the device pops chains for the largest packet first
//! and gives back the unused ones at the end of the pass; a driver whose
//! buffers cannot hold the largest packet or are small (more than 7 pieces
//! for it), and any other backend, go through a buffer of the device's own. Both paths make the same checks
//! and give the driver the same used entries.
//!
//! Transmit chains are taken in batches of up to 64: the batch is popped
//! and checked first, then its frames are sent one after the other and
//! their chains returned. When the backend would block, the chain it
//! refused and the rest of the batch go back on the queue unprocessed.
//!
//! # Receive flow control
//!
//! When the driver has no receive buffers, the device keeps the frame it
//! already read and stops reading the backend ([`Net::rx_waiting_for_buffers`]
//! is then true); it asks the driver for a notification, and delivers on
//! the next `process_queue(RXQ)`. A VMM polling the backend level-triggered
//! stops polling it while this is true, and resumes when the driver
//! notifies `RXQ`.
//!
//! # Example
//!
//! ```
//! use std::collections::VecDeque;
//! use std::io;
//! use vmkit_virtio::net::{BackendCapabilities, Net, NetBackend, NetOptions};
//! use vmkit_virtio::VirtioDevice;
//!
//! /// Frames in memory; no offloads, no header.
//! #[derive(Default)]
//! struct Loop(VecDeque<Vec<u8>>);
//!
//! impl NetBackend for Loop {
//!     fn capabilities(&self) -> BackendCapabilities {
//!         BackendCapabilities::default()
//!     }
//!     fn set_rx_offloads(&mut self, _: u64) -> io::Result<()> {
//!         Ok(())
//!     }
//!     fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
//!         let f = self.0.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
//!         let n = f.len().min(buf.len());
//!         buf[..n].copy_from_slice(&f[..n]);
//!         Ok(n)
//!     }
//!     fn send(&mut self, frame: &[u8]) -> io::Result<()> {
//!         self.0.push_back(frame.to_vec());
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let opts = NetOptions { mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56], ..NetOptions::default() };
//! let net = Net::new(Loop::default(), opts)?;
//! assert_eq!(VirtioDevice::<vm_memory::GuestMemoryMmap>::device_type(&net), 1);
//! let mut mac = [0u8; 6];
//! VirtioDevice::<vm_memory::GuestMemoryMmap>::read_config(&net, 0, &mut mac);
//! assert_eq!(mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
//! # Ok(())
//! # }
//! ```

mod ctrl;
mod header;
mod iov;
mod rx_direct;
mod state;

use std::io;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{GuestMemory, VolatileSlice};

pub use ctrl::{
    decode as decode_ctrl, CtrlCommand, CtrlError, CtrlRequest, InvalidCtrl, MacAddr, MacTable,
    MAC_TABLE_ENTRIES, MAX_CTRL_LEN, VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK,
    VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET, VIRTIO_NET_CTRL_MAC,
    VIRTIO_NET_CTRL_MAC_ADDR_SET, VIRTIO_NET_CTRL_MAC_TABLE_SET, VIRTIO_NET_CTRL_RX,
    VIRTIO_NET_CTRL_RX_ALLMULTI, VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_ERR, VIRTIO_NET_OK,
};
pub use header::{
    HeaderError, NetHeader, TxError, TxPacket, NET_HDR_LEN, VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_F_RSC_INFO, VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_HDR_GSO_UDP_L4,
};

use crate::device::{
    read_config_bytes, DeviceError, StateError, VirtioDevice, PROCESS_BUDGET, VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_ID_NET,
};
use crate::{ChainHead, Descriptor, Persist, Queue, QueueAccess};

/// Feature bit 0: the device takes packets with a partial checksum.
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
/// Feature bit 1: the driver takes packets with a partial checksum.
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
/// Feature bit 2: receive offloads can be changed on the control queue.
pub const VIRTIO_NET_F_CTRL_GUEST_OFFLOADS: u64 = 1 << 2;
/// Feature bit 3: `mtu` in the configuration space is valid.
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
/// Feature bit 5: `mac` in the configuration space is valid.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Feature bit 7: the driver takes TSOv4 packets.
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
/// Feature bit 8: the driver takes TSOv6 packets.
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
/// Feature bit 9: the driver takes TSO packets with ECN.
pub const VIRTIO_NET_F_GUEST_ECN: u64 = 1 << 9;
/// Feature bit 10: the driver takes UFO packets.
pub const VIRTIO_NET_F_GUEST_UFO: u64 = 1 << 10;
/// Feature bit 11: the device takes TSOv4 packets.
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
/// Feature bit 12: the device takes TSOv6 packets.
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
/// Feature bit 13: the device takes TSO packets with ECN.
pub const VIRTIO_NET_F_HOST_ECN: u64 = 1 << 13;
/// Feature bit 14: the device takes UFO packets.
pub const VIRTIO_NET_F_HOST_UFO: u64 = 1 << 14;
/// Feature bit 15: the driver can merge receive buffers.
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
/// Feature bit 16: `status` in the configuration space is valid.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// Feature bit 17: the control queue exists.
pub const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
/// Feature bit 18: receive mode and MAC filter commands.
pub const VIRTIO_NET_F_CTRL_RX: u64 = 1 << 18;
/// Feature bit 19: VLAN filter commands (not offered).
pub const VIRTIO_NET_F_CTRL_VLAN: u64 = 1 << 19;
/// Feature bit 21: the driver can send gratuitous packets (not offered).
pub const VIRTIO_NET_F_GUEST_ANNOUNCE: u64 = 1 << 21;
/// Feature bit 22: multiqueue (not offered).
pub const VIRTIO_NET_F_MQ: u64 = 1 << 22;
/// Feature bit 23: the MAC address can be set on the control queue.
pub const VIRTIO_NET_F_CTRL_MAC_ADDR: u64 = 1 << 23;

/// The receive offload features (`GUEST_*`) a backend may honour.
pub const GUEST_OFFLOAD_FEATURES: u64 = VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_ECN
    | VIRTIO_NET_F_GUEST_UFO;
/// The transmit offload features (`CSUM`, `HOST_*`) a backend may honour.
pub const HOST_OFFLOAD_FEATURES: u64 = VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6
    | VIRTIO_NET_F_HOST_ECN
    | VIRTIO_NET_F_HOST_UFO;

/// `status` bit: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// `status` bit: the device asks the driver to announce itself (`VIRTIO_NET_F_GUEST_ANNOUNCE`).
pub const VIRTIO_NET_S_ANNOUNCE: u16 = 2;

/// The receive queue.
pub const RXQ: u16 = 0;
/// The transmit queue.
pub const TXQ: u16 = 1;
/// The control queue (present when [`NetOptions::ctrl_queue`]).
pub const CTRLQ: u16 = 2;
/// The default maximum size of each queue.
pub const QUEUE_MAX_SIZE: u16 = 256;
/// The shortest frame: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;
/// The longest frame (without the virtio-net header): a 64 KiB IP packet
/// (the largest GSO packet) behind an Ethernet header with a VLAN tag.
pub const MAX_FRAME_LEN: usize = 65535 + 14 + 4;
/// The size of a packet buffer: header and largest frame. A backend's
/// [`NetBackend::recv`] gets a buffer of this size (or of
/// `MAX_FRAME_LEN` without a header).
pub const MAX_PACKET_LEN: usize = NET_HDR_LEN + MAX_FRAME_LEN;

/// Size of the configuration space: `mac`, `status`, `max_virtqueue_pairs`, `mtu`.
const CONFIG_LEN: usize = 12;

/// What a [`NetBackend`] can do, which bounds the features the device
/// offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendCapabilities {
    /// Frames are sent and received with the 12-byte virtio-net header in
    /// front ([`NET_HDR_LEN`]); without it, no offload is offered.
    pub vnet_hdr: bool,
    /// The transmit offloads ([`HOST_OFFLOAD_FEATURES`] bits) the backend
    /// accepts in the header of frames it sends.
    pub tx_offloads: u64,
    /// The receive offloads ([`GUEST_OFFLOAD_FEATURES`] bits) the backend
    /// can produce when told to by [`NetBackend::set_rx_offloads`].
    pub rx_offloads: u64,
}

/// Where frames go and come from: a TAP device, a socket, a test queue.
///
/// Every method is non-blocking: a backend with nothing to give returns
/// [`io::ErrorKind::WouldBlock`].
pub trait NetBackend {
    /// What the backend can do (constant for its lifetime).
    fn capabilities(&self) -> BackendCapabilities;

    /// Sets the receive offloads the guest accepts: `GUEST_*` feature bits,
    /// a subset of [`BackendCapabilities::rx_offloads`]. The backend must
    /// not produce frames with offloads outside this set afterwards (the
    /// device drops such frames).
    fn set_rx_offloads(&mut self, offloads: u64) -> io::Result<()>;

    /// Reads one packet into `buf` (the header first when
    /// [`BackendCapabilities::vnet_hdr`], then the frame) and returns its
    /// length; [`io::ErrorKind::WouldBlock`] when there is none.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Sends one packet (header first when
    /// [`BackendCapabilities::vnet_hdr`], then the frame).
    /// [`io::ErrorKind::WouldBlock`] means "try again later": the device
    /// keeps the frame's chain and stops transmitting until the next
    /// `process_queue(TXQ)`.
    fn send(&mut self, packet: &[u8]) -> io::Result<()>;

    /// Whether [`NetBackend::send_vectored`] and
    /// [`NetBackend::recv_vectored`] move packets straight to and from
    /// guest memory (one `writev`/`readv`); the device then uses them
    /// instead of copying through a buffer of its own. `false` by default
    /// (and for a `Box`ed backend).
    fn vectored(&self) -> bool {
        false
    }

    /// Sends one packet given in pieces: `header` (the virtio-net header
    /// when [`BackendCapabilities::vnet_hdr`], else empty), then `frame`,
    /// slices of guest memory (with their dirty bitmap `S`), in order. Errors as [`NetBackend::send`].
    /// The default gathers the pieces into one buffer for `send`.
    fn send_vectored<S: BitmapSlice>(
        &mut self,
        header: &[u8],
        frame: &[VolatileSlice<'_, S>],
    ) -> io::Result<()>
    where
        Self: Sized,
    {
        let total = header.len() + frame.iter().map(VolatileSlice::len).sum::<usize>();
        let mut packet = Vec::with_capacity(total);
        packet.extend_from_slice(header);
        for s in frame {
            let at = packet.len();
            packet.resize(at + s.len(), 0);
            if let Some(dst) = packet.get_mut(at..) {
                s.copy_to(dst);
            }
        }
        self.send(&packet)
    }

    /// Reads one packet into pieces: the header (when
    /// [`BackendCapabilities::vnet_hdr`]) into `header`, then the frame
    /// into `frame`, slices of guest memory, in order; returns the number
    /// of bytes read, header included. The device marks what was written
    /// dirty in the slices' bitmaps afterwards. Errors as [`NetBackend::recv`]; a
    /// packet longer than the pieces is truncated. The default reads into
    /// one buffer with `recv` and copies it out.
    fn recv_vectored<S: BitmapSlice>(
        &mut self,
        header: &mut [u8],
        frame: &[VolatileSlice<'_, S>],
    ) -> io::Result<usize>
    where
        Self: Sized,
    {
        let total = header.len() + frame.iter().map(VolatileSlice::len).sum::<usize>();
        let mut packet = vec![0u8; total];
        let n = self.recv(&mut packet)?.min(total);
        let (h, mut rest) = packet.split_at(header.len().min(n));
        header
            .get_mut(..h.len())
            .unwrap_or(&mut [])
            .copy_from_slice(h);
        rest = rest.get(..n - h.len()).unwrap_or(&[]);
        for s in frame {
            if rest.is_empty() {
                break;
            }
            let k = s.len().min(rest.len());
            let (now, later) = rest.split_at(k);
            s.copy_from(now);
            rest = later;
        }
        Ok(n)
    }
}

impl<B: NetBackend + ?Sized> NetBackend for Box<B> {
    fn capabilities(&self) -> BackendCapabilities {
        (**self).capabilities()
    }
    fn set_rx_offloads(&mut self, offloads: u64) -> io::Result<()> {
        (**self).set_rx_offloads(offloads)
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (**self).recv(buf)
    }
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        (**self).send(packet)
    }
    // `vectored` stays false: the vectored methods are generic, so a
    // boxed (possibly unsized) backend cannot forward them.
}

/// Options of a [`Net`] device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetOptions {
    /// The MAC address (unicast, not all zeros).
    pub mac: MacAddr,
    /// The MTU to advertise (`VIRTIO_NET_F_MTU`), 68 to 65535; `None`
    /// offers no MTU and the driver uses 1500.
    pub mtu: Option<u16>,
    /// Offer `VIRTIO_NET_F_MRG_RXBUF`.
    pub mrg_rxbuf: bool,
    /// Offer the control queue (`CTRL_VQ`, `CTRL_RX`, `CTRL_MAC_ADDR`,
    /// and `CTRL_GUEST_OFFLOADS` when receive offloads are offered).
    pub ctrl_queue: bool,
    /// Offer the offloads the backend honours.
    pub offloads: bool,
    /// The maximum size of each queue (1 to 32768).
    pub queue_size: u16,
}

impl Default for NetOptions {
    /// A locally administered MAC `52:54:00:12:34:56`, no MTU, merged
    /// buffers, control queue and offloads on, queues of 256.
    fn default() -> Self {
        NetOptions {
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            mtu: None,
            mrg_rxbuf: true,
            ctrl_queue: true,
            offloads: true,
            queue_size: QUEUE_MAX_SIZE,
        }
    }
}

/// Errors building a [`Net`] device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The MAC address is multicast or all zeros.
    #[error("MAC address {} is not a unicast address", fmt_mac(.mac))]
    InvalidMac {
        /// The rejected address.
        mac: MacAddr,
    },
    /// The MTU is below 68.
    #[error("MTU {mtu} is below the IPv4 minimum of 68")]
    InvalidMtu {
        /// The rejected MTU.
        mtu: u16,
    },
    /// The queue size is 0 or above 32768.
    #[error("queue size {size} is invalid: it must be between 1 and 32768")]
    InvalidQueueSize {
        /// The rejected size.
        size: u16,
    },
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &MacAddr) -> String {
    let [a, b, c, d, e, f] = *mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// Counters of a [`Net`] device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of frames delivered to the guest (headers excluded).
    pub rx_bytes: u64,
    /// Frames dropped by the receive filter (promiscuous mode off, MAC tables).
    pub rx_dropped_filtered: u64,
    /// Frames from the backend that were too short, or whose header asks
    /// for offloads the guest did not accept.
    pub rx_dropped_invalid: u64,
    /// Frames larger than the buffers the driver offered.
    pub rx_dropped_too_big: u64,
    /// Frames read and dropped while the link was down (or dropped at a reset).
    pub rx_dropped_link_down: u64,
    /// Backend read errors (other than "would block").
    pub rx_backend_errors: u64,
    /// Frames sent to the backend.
    pub tx_frames: u64,
    /// Bytes of frames sent to the backend (headers excluded).
    pub tx_bytes: u64,
    /// Transmit chains dropped as malformed (see [`TxError`]), or above the MTU.
    pub tx_malformed: u64,
    /// Frames the backend refused (other than "would block").
    pub tx_backend_errors: u64,
    /// Frames dropped while the link was down.
    pub tx_dropped_link_down: u64,
    /// Chains the queue rejected, or receive chains with readable or too
    /// small buffers: returned with length 0.
    pub bad_chains: u64,
    /// Control commands answered `VIRTIO_NET_OK`.
    pub ctrl_ok: u64,
    /// Control commands answered `VIRTIO_NET_ERR` (malformed, unsupported, refused).
    pub ctrl_err: u64,
}

/// The receive filter set by the control queue.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RxFilter {
    promisc: bool,
    allmulti: bool,
    unicast: MacTable,
    multicast: MacTable,
}

impl Default for RxFilter {
    /// After a reset every frame passes, as if `VIRTIO_NET_F_CTRL_RX` had
    /// not been negotiated; a driver that negotiated it turns promiscuous
    /// mode off.
    fn default() -> Self {
        RxFilter {
            promisc: true,
            allmulti: false,
            unicast: MacTable::default(),
            multicast: MacTable::default(),
        }
    }
}

impl RxFilter {
    fn accepts(&self, mac: &MacAddr, frame: &[u8]) -> bool {
        if self.promisc {
            return true;
        }
        let Some(dst) = frame.first_chunk::<6>() else {
            return false;
        };
        if *dst == [0xff; 6] {
            return true;
        }
        if dst[0] & 1 != 0 {
            self.allmulti || self.multicast.overflow || self.multicast.entries.contains(dst)
        } else {
            dst == mac || self.unicast.overflow || self.unicast.entries.contains(dst)
        }
    }
}

/// How a receive pass ended.
enum RxStop {
    /// The backend has no more frames.
    Empty,
    /// The processing budget is used up.
    Budget,
    /// The driver has too few buffers: un-pop the chains popped for the
    /// frame (`undo` ring slots, see [`ChainHead::slots`]), keep the frame.
    NoBuffers { undo: u16 },
    /// The frame can never fit the driver's buffers: un-pop the chains
    /// (`undo` ring slots), drop the frame.
    TooBig { undo: u16 },
}

/// What happened to one frame.
enum Delivery {
    Delivered,
    Dropped,
    Stop(RxStop),
}

/// The most transmit chains checked before the first of them is sent
/// (see `Net::transmit`).
const TX_BATCH: usize = 64;

/// A batch also ends once its frames are in this many pieces, so that a
/// driver cutting frames into tiny buffers holds the device's slice list
/// to the size of a few frames (one chain alone may still take up to the
/// queue's limits, as it always could).
const TX_BATCH_SLICES: usize = 4 * iov::MAX_SLICES;

/// What to do with a checked transmit chain.
#[derive(Clone, Copy, Debug)]
enum TxStage {
    /// Send the frame: the header the backend gets, the frame's pieces
    /// (a range of the pass's slices), its length.
    Send {
        header: [u8; NET_HDR_LEN],
        segs: (usize, usize),
        frame_len: usize,
    },
    /// The queue refused the chain ([`NetStats::bad_chains`]).
    BadChain,
    /// A malformed packet, or above the MTU ([`NetStats::tx_malformed`]).
    Malformed,
    /// The link is down ([`NetStats::tx_dropped_link_down`]).
    LinkDown,
}

/// One receive chain: its head, its writable buffers in `descs[start..end]`,
/// its capacity.
#[derive(Clone, Copy, Debug)]
struct RxChain {
    head: ChainHead,
    start: usize,
    end: usize,
    cap: usize,
}

/// A virtio-net device over a [`NetBackend`].
#[derive(Debug)]
pub struct Net<B: NetBackend> {
    backend: B,
    caps: BackendCapabilities,
    default_mac: MacAddr,
    mac: MacAddr,
    mtu: Option<u16>,
    link_up: bool,
    /// `VIRTIO_NET_S_ANNOUNCE` is set: [`Net::announce`] asked, the driver has not acked.
    announcing: bool,
    offered: u64,
    acked: u64,
    rx_offloads: u64,
    restored_offloads: Option<u64>,
    queue_sizes: Vec<u16>,
    filter: RxFilter,
    stats: NetStats,
    rx_buf: Vec<u8>,
    rx_pending: Option<usize>,
    rx_stalled: bool,
    /// Receive passes left that skip the in-place attempt (see
    /// `rx_direct::SKIP_AFTER_SMALL`).
    rx_direct_skip: u16,
    tx_buf: Vec<u8>,
    tx_blocked: bool,
    /// The batch being sent (kept for its allocation).
    tx_staged: Vec<(ChainHead, TxStage)>,
    descs: Vec<Descriptor>,
    chains: Vec<RxChain>,
    ctrl_buf: Vec<u8>,
}

/// Removes offered features whose prerequisites are not offered.
fn sanitize(mut f: u64) -> u64 {
    let needs = |f: u64, feature: u64, any_of: u64| f & feature != 0 && f & any_of == 0;
    for (feature, any_of) in [
        (VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_CSUM),
        (VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_CSUM),
        (VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_GUEST_CSUM),
        (VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_CSUM),
        (VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_CSUM),
        (VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_CSUM),
        (
            VIRTIO_NET_F_GUEST_ECN,
            VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6,
        ),
        (
            VIRTIO_NET_F_HOST_ECN,
            VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6,
        ),
    ] {
        if needs(f, feature, any_of) {
            f &= !feature;
        }
    }
    f
}

/// The first feature dependency (virtio 1.2, 5.1.3.1) that `f` breaks.
fn broken_dependency(f: u64) -> Option<&'static str> {
    let rules: [(u64, u64, &'static str); 14] = [
        (
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_CSUM,
            "GUEST_TSO4 requires GUEST_CSUM",
        ),
        (
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_CSUM,
            "GUEST_TSO6 requires GUEST_CSUM",
        ),
        (
            VIRTIO_NET_F_GUEST_UFO,
            VIRTIO_NET_F_GUEST_CSUM,
            "GUEST_UFO requires GUEST_CSUM",
        ),
        (
            VIRTIO_NET_F_GUEST_ECN,
            VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6,
            "GUEST_ECN requires GUEST_TSO4 or GUEST_TSO6",
        ),
        (
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_CSUM,
            "HOST_TSO4 requires CSUM",
        ),
        (
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_CSUM,
            "HOST_TSO6 requires CSUM",
        ),
        (
            VIRTIO_NET_F_HOST_UFO,
            VIRTIO_NET_F_CSUM,
            "HOST_UFO requires CSUM",
        ),
        (
            VIRTIO_NET_F_HOST_ECN,
            VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6,
            "HOST_ECN requires HOST_TSO4 or HOST_TSO6",
        ),
        (
            VIRTIO_NET_F_CTRL_RX,
            VIRTIO_NET_F_CTRL_VQ,
            "CTRL_RX requires CTRL_VQ",
        ),
        (
            VIRTIO_NET_F_CTRL_VLAN,
            VIRTIO_NET_F_CTRL_VQ,
            "CTRL_VLAN requires CTRL_VQ",
        ),
        (
            VIRTIO_NET_F_CTRL_MAC_ADDR,
            VIRTIO_NET_F_CTRL_VQ,
            "CTRL_MAC_ADDR requires CTRL_VQ",
        ),
        (
            VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
            VIRTIO_NET_F_CTRL_VQ,
            "CTRL_GUEST_OFFLOADS requires CTRL_VQ",
        ),
        (VIRTIO_NET_F_MQ, VIRTIO_NET_F_CTRL_VQ, "MQ requires CTRL_VQ"),
        (
            VIRTIO_NET_F_GUEST_ANNOUNCE,
            VIRTIO_NET_F_CTRL_VQ,
            "GUEST_ANNOUNCE requires CTRL_VQ",
        ),
    ];
    rules
        .iter()
        .find(|(feature, any_of, _)| f & feature != 0 && f & any_of == 0)
        .map(|r| r.2)
}

fn queue_err(index: u16) -> impl Fn(crate::Error) -> DeviceError {
    move |source| DeviceError::Queue { index, source }
}

impl<B: NetBackend> Net<B> {
    /// A device on `backend`. The offered features follow `options` and
    /// the backend's [`BackendCapabilities`] (see the module documentation).
    pub fn new(backend: B, options: NetOptions) -> Result<Self, NetError> {
        let mac = options.mac;
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(NetError::InvalidMac { mac });
        }
        if let Some(mtu) = options.mtu {
            if mtu < 68 {
                return Err(NetError::InvalidMtu { mtu });
            }
        }
        let size = options.queue_size;
        if size == 0 || size > crate::MAX_QUEUE_SIZE {
            return Err(NetError::InvalidQueueSize { size });
        }
        let caps = backend.capabilities();
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_F_INDIRECT_DESC
            | VIRTIO_F_EVENT_IDX
            | VIRTIO_F_RING_PACKED
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS;
        if options.mrg_rxbuf {
            f |= VIRTIO_NET_F_MRG_RXBUF;
        }
        if options.mtu.is_some() {
            f |= VIRTIO_NET_F_MTU;
        }
        if options.ctrl_queue {
            f |= VIRTIO_NET_F_CTRL_VQ
                | VIRTIO_NET_F_CTRL_RX
                | VIRTIO_NET_F_CTRL_MAC_ADDR
                | VIRTIO_NET_F_GUEST_ANNOUNCE;
        }
        if options.offloads && caps.vnet_hdr {
            f |= caps.tx_offloads & HOST_OFFLOAD_FEATURES;
            f |= caps.rx_offloads & GUEST_OFFLOAD_FEATURES;
        }
        let mut f = sanitize(f);
        if options.ctrl_queue && f & GUEST_OFFLOAD_FEATURES != 0 {
            f |= VIRTIO_NET_F_CTRL_GUEST_OFFLOADS;
        }
        let queues = if options.ctrl_queue { 3 } else { 2 };
        Ok(Net {
            backend,
            caps,
            default_mac: mac,
            mac,
            mtu: options.mtu,
            link_up: true,
            announcing: false,
            offered: f,
            acked: 0,
            rx_offloads: 0,
            restored_offloads: None,
            queue_sizes: vec![size; queues],
            filter: RxFilter::default(),
            stats: NetStats::default(),
            rx_buf: vec![0; MAX_PACKET_LEN],
            rx_pending: None,
            rx_stalled: false,
            rx_direct_skip: 0,
            tx_buf: vec![0; MAX_PACKET_LEN],
            tx_blocked: false,
            tx_staged: Vec::new(),
            descs: Vec::new(),
            chains: Vec::new(),
            ctrl_buf: Vec::new(),
        })
    }

    /// The current MAC address (the driver may change it with
    /// `VIRTIO_NET_CTRL_MAC_ADDR_SET`; a reset restores the configured one).
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// Whether the link is up.
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// Sets the link state in the configuration space; returns whether it
    /// changed. Call the transport's `notify_config_change()` afterwards so
    /// that the driver notices. While the link is down, received frames
    /// are read and dropped and transmitted frames are dropped (counted).
    pub fn set_link_up(&mut self, up: bool) -> bool {
        let changed = self.link_up != up;
        self.link_up = up;
        changed
    }

    /// Asks the driver to announce the guest on its network (gratuitous ARP, IPv6 neighbour
    /// advertisements), as after a live migration moved it: sets `VIRTIO_NET_S_ANNOUNCE` in
    /// the configuration's status until the driver acknowledges with
    /// `VIRTIO_NET_CTRL_ANNOUNCE_ACK`. Returns whether it did, i.e. whether the driver
    /// negotiated `VIRTIO_NET_F_GUEST_ANNOUNCE`; then call the transport's
    /// `notify_config_change()` so that the driver notices.
    pub fn announce(&mut self) -> bool {
        self.announcing = self.acked & VIRTIO_NET_F_GUEST_ANNOUNCE != 0;
        self.announcing
    }

    /// Whether an announcement is asked and not yet acknowledged.
    pub fn announcing(&self) -> bool {
        self.announcing
    }

    /// The features the driver accepted (0 before activation).
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    /// The receive offloads currently in force (`GUEST_*` bits).
    pub fn rx_offloads(&self) -> u64 {
        self.rx_offloads
    }

    /// Whether the last receive pass stopped because the driver had no
    /// (or too few) receive buffers; a frame is then held until the driver
    /// adds buffers and notifies [`RXQ`].
    pub fn rx_waiting_for_buffers(&self) -> bool {
        self.rx_stalled
    }

    /// Whether the last transmit pass stopped because the backend would
    /// block; call the transport's `process_queue(TXQ)` when it can take
    /// frames again.
    pub fn tx_blocked(&self) -> bool {
        self.tx_blocked
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&self.mac);
        let mut status = if self.link_up {
            VIRTIO_NET_S_LINK_UP
        } else {
            0
        };
        if self.announcing {
            status |= VIRTIO_NET_S_ANNOUNCE;
        }
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.unwrap_or(0).to_le_bytes());
        c
    }

    /// Reads the next acceptable frame from the backend into `rx_buf`
    /// (header at 0, frame at `NET_HDR_LEN`); returns the packet length.
    fn fetch(&mut self, budget: &mut u32) -> Result<usize, RxStop> {
        let off = if self.caps.vnet_hdr { 0 } else { NET_HDR_LEN };
        loop {
            if *budget == 0 {
                return Err(RxStop::Budget);
            }
            let Some(buf) = self.rx_buf.get_mut(off..) else {
                return Err(RxStop::Empty);
            };
            let n = match self.backend.recv(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(RxStop::Empty),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.stats.rx_backend_errors += 1;
                    return Err(RxStop::Empty);
                }
            };
            *budget -= 1;
            let len = (n + off).min(MAX_PACKET_LEN);
            if !self.link_up {
                self.stats.rx_dropped_link_down += 1;
                continue;
            }
            if len < NET_HDR_LEN + MIN_FRAME_LEN {
                self.stats.rx_dropped_invalid += 1;
                continue;
            }
            let frame_len = len - NET_HDR_LEN;
            let hdr = if self.caps.vnet_hdr {
                let mut hb = [0u8; NET_HDR_LEN];
                if let Some(b) = self.rx_buf.get(..NET_HDR_LEN) {
                    hb.copy_from_slice(b);
                }
                match NetHeader::from_bytes(&hb).validate_rx(self.rx_offloads, frame_len) {
                    Ok(h) => h,
                    Err(_) => {
                        self.stats.rx_dropped_invalid += 1;
                        continue;
                    }
                }
            } else {
                NetHeader::default()
            };
            let frame = self.rx_buf.get(NET_HDR_LEN..len).unwrap_or(&[]);
            if !self.filter.accepts(&self.mac, frame) {
                self.stats.rx_dropped_filtered += 1;
                continue;
            }
            if let Some(b) = self.rx_buf.get_mut(..NET_HDR_LEN) {
                b.copy_from_slice(&hdr.to_bytes());
            }
            return Ok(len);
        }
    }

    /// Collects the writable buffers of a receive chain into `descs`;
    /// `None` if the chain is malformed (or, with merged buffers, smaller
    /// than a header).
    ///
    /// Inlined, and the chain taken by reference: with two callers (the
    /// copying and the in-place path) it was a call per chain that moved
    /// the chain's 200 bytes, 1.5 µs a pass of 64 frames.
    #[inline(always)]
    fn collect_rx<I>(&mut self, head: ChainHead, chain: I, mrg: bool) -> Option<RxChain>
    where
        I: IntoIterator<Item = crate::Result<Descriptor>>,
    {
        let start = self.descs.len();
        let mut cap = 0usize;
        let mut ok = true;
        for d in chain {
            match d {
                Ok(d) if d.is_write_only() => {
                    if !d.is_empty() {
                        cap += d.len() as usize;
                        self.descs.push(d);
                    }
                }
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok || cap == 0 || (mrg && cap < NET_HDR_LEN) {
            self.descs.truncate(start);
            return None;
        }
        Some(RxChain {
            head,
            start,
            end: self.descs.len(),
            cap,
        })
    }

    /// Places the packet of `len` bytes in `rx_buf` into receive chains
    /// (`cache`: the region of the pass's last buffer, see [`header::scatter`]).
    fn deliver<'m, M: GuestMemory + ?Sized>(
        &mut self,
        q: &mut QueueAccess<'_, 'm, M>,
        mem: &'m M,
        cache: &mut iov::SliceCache<'m, M>,
        len: usize,
        budget: &mut u32,
    ) -> Result<Delivery, DeviceError> {
        let err = queue_err(RXQ);
        let mrg = self.acked & VIRTIO_NET_F_MRG_RXBUF != 0;
        let size = q.size();
        self.descs.clear();
        self.chains.clear();
        let mut popped = 0u16;
        let mut cap = 0usize;
        while cap < len {
            if !mrg && !self.chains.is_empty() {
                // One chain must hold the whole packet.
                return Ok(Delivery::Stop(RxStop::TooBig { undo: popped }));
            }
            if popped >= size {
                return Ok(Delivery::Stop(RxStop::TooBig { undo: popped }));
            }
            if *budget == 0 {
                return Ok(Delivery::Stop(RxStop::NoBuffers { undo: popped }));
            }
            let Some(mut chain) = q.pop().map_err(&err)? else {
                return Ok(Delivery::Stop(RxStop::NoBuffers { undo: popped }));
            };
            *budget -= 1;
            let head = chain.head();
            // At most `size` slots are in flight, so this does not overflow.
            popped = popped.saturating_add(head.slots());
            match self.collect_rx(head, &mut chain, mrg) {
                Some(c) => {
                    cap += c.cap;
                    self.chains.push(c);
                }
                None if self.chains.is_empty() => {
                    // Nothing collected yet: return it and take the next.
                    self.stats.bad_chains += 1;
                    q.add_used(head, 0).map_err(&err)?;
                    popped -= head.slots();
                }
                None => {
                    // A bad chain among good ones: the good ones cannot be
                    // un-popped past it. Return them all empty, drop the frame.
                    self.stats.bad_chains += 1;
                    self.stats.rx_dropped_invalid += 1;
                    for c in &self.chains {
                        q.add_used(c.head, 0).map_err(&err)?;
                    }
                    q.add_used(head, 0).map_err(&err)?;
                    return Ok(Delivery::Dropped);
                }
            }
        }
        let num_buffers = u16::try_from(self.chains.len()).unwrap_or(u16::MAX);
        if let Some(b) = self.rx_buf.get_mut(10..12) {
            b.copy_from_slice(&num_buffers.to_le_bytes());
        }
        let mut data = self.rx_buf.get(..len).unwrap_or(&[]);
        let mut failed = false;
        for c in &self.chains {
            let n = c.cap.min(data.len());
            let (now, rest) = data.split_at(n);
            data = rest;
            let descs = self.descs.get(c.start..c.end).unwrap_or(&[]);
            let written = if failed {
                0
            } else {
                header::scatter(mem, cache, descs, 0, now).unwrap_or_else(|| {
                    failed = true;
                    0
                })
            };
            q.add_used(c.head, u32::try_from(written).unwrap_or(u32::MAX))
                .map_err(&err)?;
        }
        if failed {
            // Guest memory refused a write the queue had validated (memory
            // was unplugged under us): the driver sees empty buffers.
            self.stats.bad_chains += 1;
            return Ok(Delivery::Dropped);
        }
        Ok(Delivery::Delivered)
    }

    fn receive_some<M: GuestMemory + ?Sized>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        budget: &mut u32,
    ) -> Result<RxStop, DeviceError> {
        let err = queue_err(RXQ);
        let mut q = queue.access(mem).map_err(&err)?;
        let mut cache = iov::SliceCache::new();
        loop {
            let len = match self.rx_pending.take() {
                Some(len) => len,
                None => match self.fetch(budget) {
                    Ok(len) => len,
                    Err(stop) => return Ok(stop),
                },
            };
            self.rx_pending = Some(len);
            match self.deliver(&mut q, mem, &mut cache, len, budget)? {
                Delivery::Delivered => {
                    self.rx_pending = None;
                    self.rx_stalled = false;
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += (len - NET_HDR_LEN) as u64;
                }
                Delivery::Dropped => self.rx_pending = None,
                Delivery::Stop(stop) => return Ok(stop),
            }
        }
    }

    fn receive<M: GuestMemory + ?Sized>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<(), DeviceError> {
        let err = queue_err(RXQ);
        let mut budget = PROCESS_BUDGET;
        let mut direct = self.backend.vectored();
        if direct && self.rx_direct_skip > 0 {
            // The driver's buffers were too small for it lately.
            self.rx_direct_skip -= 1;
            direct = false;
        }
        loop {
            let stop = if direct && self.rx_pending.is_none() {
                let pass = {
                    let mut q = queue.access(mem).map_err(&err)?;
                    self.receive_direct(&mut q, mem, &mut budget)?
                };
                match pass {
                    rx_direct::Direct::Empty { undo } => {
                        queue.undo_pop(undo);
                        RxStop::Empty
                    }
                    rx_direct::Direct::Budget { undo } => {
                        queue.undo_pop(undo);
                        RxStop::Budget
                    }
                    rx_direct::Direct::Fallback { undo, small } => {
                        queue.undo_pop(undo);
                        if small {
                            self.rx_direct_skip = rx_direct::SKIP_AFTER_SMALL;
                        }
                        direct = false;
                        continue;
                    }
                }
            } else {
                self.receive_some(queue, mem, &mut budget)?
            };
            match stop {
                RxStop::Empty => {
                    self.rx_stalled = false;
                    return Ok(());
                }
                RxStop::Budget => return Ok(()),
                RxStop::TooBig { undo } => {
                    queue.undo_pop(undo);
                    self.rx_pending = None;
                    self.stats.rx_dropped_too_big += 1;
                }
                RxStop::NoBuffers { undo } => {
                    // Ask for a notification while the chains are still
                    // popped: the driver then notifies when it adds buffers
                    // beyond them (with EVENT_IDX, `avail_event` must be
                    // past them), and `more` says whether it already has.
                    let more = queue.enable_notification(mem).map_err(&err)?;
                    queue.undo_pop(undo);
                    self.rx_stalled = true;
                    if budget == 0 || !more {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Sends what the driver put on the transmit queue, in batches of up to
    /// [`TX_BATCH`] chains: each batch's chains are popped and checked
    /// first ([`Net::prepare_tx`]), then sent one after the other
    /// ([`Net::send_tx`]) and returned. Checking a batch in one go keeps
    /// the device's own work together, instead of cut into pieces between
    /// system calls that leave the caches to the kernel (measured with the
    /// `tap` bench of `vmkit-net`: 2 µs less a batch of 64 frames).
    fn transmit<M: GuestMemory + ?Sized>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<(), DeviceError> {
        let err = queue_err(TXQ);
        let mut budget = PROCESS_BUDGET;
        self.tx_blocked = false;
        // The frames' pieces, and the region they were found in; reused
        // for every batch of the pass.
        let mut segs = Vec::new();
        let mut cache = iov::SliceCache::new();
        let mut staged = std::mem::take(&mut self.tx_staged);
        let result = loop {
            // Ring slots of the chains to un-pop when the backend would block.
            let mut blocked = None;
            // A pop that broke the queue: reported once the chains popped
            // before it are sent and returned, as they were one by one.
            let mut broken = None;
            {
                let mut q = queue.access(mem).map_err(&err)?;
                'batches: while budget > 0 {
                    staged.clear();
                    segs.clear();
                    while staged.len() < TX_BATCH && segs.len() < TX_BATCH_SLICES && budget > 0 {
                        let mut chain = match q.pop() {
                            Ok(Some(chain)) => chain,
                            Ok(None) => break,
                            Err(e) => {
                                broken = Some(err(e));
                                break;
                            }
                        };
                        budget -= 1;
                        let head = chain.head();
                        // By reference: the chain is not moved again.
                        let what = self.prepare_tx(&mut chain, mem, &mut cache, &mut segs);
                        staged.push((head, what));
                    }
                    if staged.is_empty() {
                        break;
                    }
                    for (i, (head, what)) in staged.iter().enumerate() {
                        if !self.send_tx(what, &segs) {
                            // The backend will take the frame later: keep its
                            // chain and the ones after it (the last popped).
                            let rest = staged.get(i..).unwrap_or(&[]);
                            blocked = Some(
                                rest.iter()
                                    .fold(0u16, |n, (h, _)| n.saturating_add(h.slots())),
                            );
                            break 'batches;
                        }
                        q.add_used(*head, 0).map_err(&err)?;
                    }
                    if broken.is_some() {
                        break;
                    }
                }
            }
            if let Some(slots) = blocked {
                queue.undo_pop(slots);
                self.tx_blocked = true;
            }
            if let Some(e) = broken {
                break Err(e);
            }
            if blocked.is_some() {
                break Ok(());
            }
            if budget == 0 || !queue.enable_notification(mem).map_err(&err)? {
                break Ok(());
            }
        };
        staged.clear();
        self.tx_staged = staged;
        result
    }

    /// Parses and checks one transmit chain (appending the frame's pieces
    /// to `segs`); says what to do with it.
    #[inline(always)]
    fn prepare_tx<'m, M, I>(
        &mut self,
        chain: I,
        mem: &'m M,
        cache: &mut iov::SliceCache<'m, M>,
        segs: &mut Vec<iov::GuestSlice<'m, M>>,
    ) -> TxStage
    where
        M: GuestMemory + ?Sized,
        I: IntoIterator<Item = crate::Result<Descriptor>>,
    {
        let first = segs.len();
        let packet = match iov::gather_tx(chain, mem, self.acked, cache, segs) {
            Ok(p) => p,
            Err(TxError::Chain(_)) => {
                segs.truncate(first);
                return TxStage::BadChain;
            }
            Err(_) => {
                segs.truncate(first);
                return TxStage::Malformed;
            }
        };
        if let Some(mtu) = self.mtu {
            // MTU plus an Ethernet header with a VLAN tag, for non-GSO frames.
            let limit = usize::from(mtu) + 18;
            if self.acked & VIRTIO_NET_F_MTU != 0
                && packet.header.gso_type == VIRTIO_NET_HDR_GSO_NONE
                && packet.frame_len > limit
            {
                segs.truncate(first);
                return TxStage::Malformed;
            }
        }
        if !self.link_up {
            segs.truncate(first);
            return TxStage::LinkDown;
        }
        // The header the backend gets: the validated copy.
        let mut h = packet.header;
        h.num_buffers = 0;
        TxStage::Send {
            header: h.to_bytes(),
            segs: (first, segs.len()),
            frame_len: packet.frame_len,
        }
    }

    /// Sends (or counts as dropped) one prepared chain; `false` if the
    /// backend would block. A vectored backend gets the frame in place in
    /// guest memory (`segs`, the pieces), anything else a copy in `tx_buf`.
    #[inline(always)]
    fn send_tx<S: vm_memory::bitmap::BitmapSlice>(
        &mut self,
        what: &TxStage,
        segs: &[VolatileSlice<'_, S>],
    ) -> bool {
        let (hb, (lo, hi), frame_len) = match what {
            TxStage::Send {
                header,
                segs,
                frame_len,
            } => (header, *segs, *frame_len),
            TxStage::BadChain => {
                self.stats.bad_chains += 1;
                return true;
            }
            TxStage::Malformed => {
                self.stats.tx_malformed += 1;
                return true;
            }
            TxStage::LinkDown => {
                self.stats.tx_dropped_link_down += 1;
                return true;
            }
        };
        let frame = segs.get(lo..hi).unwrap_or(&[]);
        let header: &[u8] = if self.caps.vnet_hdr { hb } else { &[] };
        let end = NET_HDR_LEN + frame_len;
        // Copied: for a backend that does not take pieces, a frame in more
        // pieces than one system call takes, and a small one (one `write`
        // from a buffer in cache beats a `writev` of the header and the
        // frame's pieces; see `iov::IN_PLACE_MIN`).
        let vectored = self.backend.vectored()
            && frame.len() < iov::MAX_SLICES
            && frame_len >= iov::IN_PLACE_MIN;
        if !vectored {
            iov::copy_out(frame, self.tx_buf.get_mut(NET_HDR_LEN..).unwrap_or(&mut []));
            if let Some(b) = self.tx_buf.get_mut(..NET_HDR_LEN) {
                b.copy_from_slice(hb);
            }
        }
        let start = NET_HDR_LEN - header.len();
        loop {
            let sent = if vectored {
                self.backend.send_vectored(header, frame)
            } else {
                match self.tx_buf.get(start..end) {
                    Some(bytes) => self.backend.send(bytes),
                    None => {
                        self.stats.tx_malformed += 1;
                        return true;
                    }
                }
            };
            match sent {
                Ok(()) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += frame_len as u64;
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.stats.tx_backend_errors += 1;
                    return true;
                }
            }
        }
    }

    fn control<M: GuestMemory + ?Sized>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<(), DeviceError> {
        let err = queue_err(CTRLQ);
        let mut budget = PROCESS_BUDGET;
        loop {
            {
                let mut q = queue.access(mem).map_err(&err)?;
                while budget > 0 {
                    let Some(chain) = q.pop().map_err(&err)? else {
                        break;
                    };
                    budget -= 1;
                    let head = chain.head();
                    let mut buf = std::mem::take(&mut self.ctrl_buf);
                    let parsed = CtrlRequest::parse(chain, mem, &mut buf);
                    self.ctrl_buf = buf;
                    let (ack, addr) = match parsed {
                        Ok(req) => (self.execute(&req.command), Some(req.ack)),
                        Err(InvalidCtrl { ack, error }) => {
                            if matches!(error, CtrlError::Chain(_) | CtrlError::NoAck) {
                                self.stats.bad_chains += 1;
                            }
                            (VIRTIO_NET_ERR, ack)
                        }
                    };
                    let used = match addr {
                        Some(a) => {
                            if ack == VIRTIO_NET_OK {
                                self.stats.ctrl_ok += 1;
                            } else {
                                self.stats.ctrl_err += 1;
                            }
                            u32::from(vm_memory::Bytes::write_obj(mem, ack, a).is_ok())
                        }
                        None => 0,
                    };
                    q.add_used(head, used).map_err(&err)?;
                }
            }
            if budget == 0 || !queue.enable_notification(mem).map_err(&err)? {
                return Ok(());
            }
        }
    }

    /// Carries out a control command; returns the acknowledgement.
    fn execute(&mut self, cmd: &CtrlCommand) -> u8 {
        let has = |f: u64| self.acked & f != 0;
        match cmd {
            CtrlCommand::Promisc(on) if has(VIRTIO_NET_F_CTRL_RX) => {
                self.filter.promisc = *on;
                VIRTIO_NET_OK
            }
            CtrlCommand::AllMulti(on) if has(VIRTIO_NET_F_CTRL_RX) => {
                self.filter.allmulti = *on;
                VIRTIO_NET_OK
            }
            CtrlCommand::MacTableSet { unicast, multicast } if has(VIRTIO_NET_F_CTRL_RX) => {
                self.filter.unicast = unicast.clone();
                self.filter.multicast = multicast.clone();
                VIRTIO_NET_OK
            }
            CtrlCommand::MacAddrSet(mac) if has(VIRTIO_NET_F_CTRL_MAC_ADDR) => {
                if mac[0] & 1 != 0 || *mac == [0; 6] {
                    return VIRTIO_NET_ERR;
                }
                self.mac = *mac;
                VIRTIO_NET_OK
            }
            CtrlCommand::AnnounceAck if has(VIRTIO_NET_F_GUEST_ANNOUNCE) => {
                self.announcing = false;
                VIRTIO_NET_OK
            }
            CtrlCommand::GuestOffloadsSet(v) if has(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS) => {
                let allowed = self.acked & GUEST_OFFLOAD_FEATURES;
                if v & !allowed != 0 || broken_dependency(*v).is_some() {
                    return VIRTIO_NET_ERR;
                }
                match self.backend.set_rx_offloads(*v) {
                    Ok(()) => {
                        self.rx_offloads = *v;
                        VIRTIO_NET_OK
                    }
                    Err(_) => VIRTIO_NET_ERR,
                }
            }
            _ => VIRTIO_NET_ERR,
        }
    }
}

impl<M: GuestMemory + ?Sized, B: NetBackend> VirtioDevice<M> for Net<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    /// Checks the feature dependencies of virtio 1.2, 5.1.3.1, and sets the
    /// backend's receive offloads to the negotiated `GUEST_*` features.
    fn activate(&mut self, features: u64) -> Result<(), DeviceError> {
        if let Some(reason) = broken_dependency(features) {
            return Err(DeviceError::Activation { features, reason });
        }
        let offloads = self
            .restored_offloads
            .take()
            .filter(|o| o & !(features & GUEST_OFFLOAD_FEATURES) == 0)
            .unwrap_or(features & GUEST_OFFLOAD_FEATURES);
        if self.backend.set_rx_offloads(offloads).is_err() {
            return Err(DeviceError::Activation {
                features,
                reason: "the backend refused the negotiated receive offloads",
            });
        }
        self.acked = features;
        self.rx_offloads = offloads;
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<bool, DeviceError> {
        match index {
            RXQ => self.receive(queue, mem)?,
            TXQ => self.transmit(queue, mem)?,
            CTRLQ if self.queue_sizes.len() > 2 => self.control(queue, mem)?,
            _ => {
                return Err(DeviceError::NoSuchQueue {
                    index,
                    count: self.queue_sizes.len(),
                })
            }
        }
        queue
            .needs_notification(mem)
            .map_err(|source| DeviceError::Queue { index, source })
    }

    fn reset(&mut self) {
        self.acked = 0;
        self.announcing = false;
        self.rx_offloads = 0;
        self.restored_offloads = None;
        self.mac = self.default_mac;
        self.filter = RxFilter::default();
        if self.rx_pending.take().is_some() {
            self.stats.rx_dropped_link_down += 1;
        }
        self.rx_stalled = false;
        self.rx_direct_skip = 0;
        self.tx_blocked = false;
        // The guest no longer takes offloaded frames.
        let _ = self.backend.set_rx_offloads(0);
    }
}

pub use state::NetState;

/// What the driver set up, the link state and the counters
/// ([`NetState`]); the backend is the VMM's.
impl<B: NetBackend> Persist for Net<B> {
    const KIND: &'static str = "virtio-net";
    /// Version 1 was a hand-made byte encoding inside the transport's
    /// state; version 2 is [`NetState`] in serde form.
    const VERSION: u16 = 2;
    type State = NetState;
    type Error = StateError;

    fn save_state(&self) -> NetState {
        NetState {
            mac: self.mac,
            link_up: self.link_up,
            promisc: self.filter.promisc,
            allmulti: self.filter.allmulti,
            unicast: self.filter.unicast.clone(),
            multicast: self.filter.multicast.clone(),
            // Restored but not yet activated: the offloads to come.
            rx_offloads: self.restored_offloads.unwrap_or(self.rx_offloads),
            stats: self.stats,
        }
    }

    /// Restores the MAC address, link state, receive filter, receive
    /// offloads and counters; every value is validated
    /// ([`NetState::validate`]), and the receive offloads must be among
    /// those this device offers ([`StateError::Invalid`] otherwise).
    fn restore_state(&mut self, s: &NetState) -> Result<(), StateError> {
        let invalid = |reason| StateError::Invalid {
            kind: Self::KIND,
            reason,
        };
        s.validate().map_err(invalid)?;
        if s.rx_offloads & !(self.offered & GUEST_OFFLOAD_FEATURES) != 0 {
            return Err(invalid(format!(
                "receive offloads {:#x} were not offered ({:#x})",
                s.rx_offloads, self.offered
            )));
        }
        self.mac = s.mac;
        self.link_up = s.link_up;
        self.filter = RxFilter {
            promisc: s.promisc,
            allmulti: s.allmulti,
            unicast: s.unicast.clone(),
            multicast: s.multicast.clone(),
        };
        self.restored_offloads = Some(s.rx_offloads);
        self.stats = s.stats;
        Ok(())
    }
}
