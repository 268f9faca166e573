//! Control queue commands (virtio 1.2, section 5.1.6.5): parsing.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::Descriptor;

/// Command class: receive mode (`PROMISC`, `ALLMULTI`).
pub const VIRTIO_NET_CTRL_RX: u8 = 0;
/// `VIRTIO_NET_CTRL_RX` command: promiscuous mode on or off.
pub const VIRTIO_NET_CTRL_RX_PROMISC: u8 = 0;
/// `VIRTIO_NET_CTRL_RX` command: all-multicast mode on or off.
pub const VIRTIO_NET_CTRL_RX_ALLMULTI: u8 = 1;
/// Command class: MAC address filtering.
pub const VIRTIO_NET_CTRL_MAC: u8 = 1;
/// `VIRTIO_NET_CTRL_MAC` command: set the unicast and multicast filter tables.
pub const VIRTIO_NET_CTRL_MAC_TABLE_SET: u8 = 0;
/// `VIRTIO_NET_CTRL_MAC` command: set the device's MAC address.
pub const VIRTIO_NET_CTRL_MAC_ADDR_SET: u8 = 1;
/// Command class: announcing the guest on the network (`VIRTIO_NET_F_GUEST_ANNOUNCE`).
pub const VIRTIO_NET_CTRL_ANNOUNCE: u8 = 3;
/// `VIRTIO_NET_CTRL_ANNOUNCE` command: the driver has announced itself (gratuitous ARP and
/// the like) as the configuration's `VIRTIO_NET_S_ANNOUNCE` status asked.
pub const VIRTIO_NET_CTRL_ANNOUNCE_ACK: u8 = 0;
/// Command class: receive offloads.
pub const VIRTIO_NET_CTRL_GUEST_OFFLOADS: u8 = 5;
/// `VIRTIO_NET_CTRL_GUEST_OFFLOADS` command: set the receive offloads.
pub const VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET: u8 = 0;

/// Acknowledgement: the command succeeded.
pub const VIRTIO_NET_OK: u8 = 0;
/// Acknowledgement: the command failed or is not supported.
pub const VIRTIO_NET_ERR: u8 = 1;

/// The most device-readable bytes a command may carry (class, command
/// and data). A MAC table of this size holds about 10900 addresses.
pub const MAX_CTRL_LEN: usize = 64 * 1024;
/// The most addresses each filter table holds; a larger table makes the
/// device accept every address of that kind (unicast or multicast).
pub const MAC_TABLE_ENTRIES: usize = 64;

/// A MAC address.
pub type MacAddr = [u8; 6];

/// Why a control chain is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CtrlError {
    /// The queue rejected the chain.
    #[error("invalid descriptor chain")]
    Chain(#[from] crate::Error),
    /// No device-writable buffer for the acknowledgement byte.
    #[error("control command has no writable acknowledgement byte")]
    NoAck,
    /// Fewer than 2 readable bytes (class and command).
    #[error("control command has {len} readable bytes, 2 needed")]
    TooShort {
        /// The readable bytes.
        len: usize,
    },
    /// More readable bytes than [`MAX_CTRL_LEN`].
    #[error("control command has more than {max} readable bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// The command data has the wrong length.
    #[error("command {class}.{command} carries {len} data bytes, {expected} expected")]
    BadLength {
        /// The class.
        class: u8,
        /// The command.
        command: u8,
        /// The data length.
        len: usize,
        /// The expected length.
        expected: usize,
    },
    /// The data of `MAC_TABLE_SET` does not match its two entry counts.
    #[error("MAC table data of {len} bytes does not hold two tables with their entry counts")]
    BadMacTable {
        /// The data length.
        len: usize,
    },
    /// An on/off value other than 0 or 1.
    #[error("command {class}.{command}: on/off value {value} is neither 0 nor 1")]
    BadSwitch {
        /// The class.
        class: u8,
        /// The command.
        command: u8,
        /// The value.
        value: u8,
    },
    /// Guest memory could not be read.
    #[error("cannot read control buffer at {addr:#x}")]
    Read {
        /// The guest address.
        addr: u64,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// A refused control chain, with the acknowledgement byte's location when
/// the chain has one (the device answers [`VIRTIO_NET_ERR`] there).
#[derive(Debug, thiserror::Error)]
#[error("invalid control-queue request")]
pub struct InvalidCtrl {
    /// What is wrong.
    #[source]
    pub error: CtrlError,
    /// The acknowledgement byte, if usable.
    pub ack: Option<GuestAddress>,
}

/// A filter table of `VIRTIO_NET_CTRL_MAC_TABLE_SET`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MacTable {
    /// The addresses (empty when `overflow`).
    pub entries: Vec<MacAddr>,
    /// The driver sent more than [`MAC_TABLE_ENTRIES`] addresses: the
    /// device accepts every address of this kind.
    pub overflow: bool,
}

/// A decoded control command.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CtrlCommand {
    /// `VIRTIO_NET_CTRL_RX_PROMISC`.
    Promisc(bool),
    /// `VIRTIO_NET_CTRL_RX_ALLMULTI`.
    AllMulti(bool),
    /// `VIRTIO_NET_CTRL_MAC_TABLE_SET`.
    MacTableSet {
        /// The unicast table.
        unicast: MacTable,
        /// The multicast table.
        multicast: MacTable,
    },
    /// `VIRTIO_NET_CTRL_MAC_ADDR_SET`.
    MacAddrSet(MacAddr),
    /// `VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET`, with the offload feature bits.
    GuestOffloadsSet(u64),
    /// `VIRTIO_NET_CTRL_ANNOUNCE_ACK`: the driver announced itself.
    AnnounceAck,
    /// A class or command this device does not implement (answered
    /// [`VIRTIO_NET_ERR`]).
    Unsupported {
        /// The class.
        class: u8,
        /// The command.
        command: u8,
    },
}

/// A validated control request: the command and where its acknowledgement goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtrlRequest {
    /// The command.
    pub command: CtrlCommand,
    /// The guest address of the acknowledgement byte.
    pub ack: GuestAddress,
}

impl CtrlRequest {
    /// Parses a control chain: device-readable bytes are the class, the
    /// command and its data (at most [`MAX_CTRL_LEN`] bytes in all, in any
    /// number of buffers); the first byte of the first non-empty
    /// device-writable buffer is the acknowledgement. `buf` is scratch
    /// space, reused between calls.
    ///
    /// ```
    /// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    /// use vmkit_virtio::net::{CtrlCommand, CtrlRequest};
    /// use vmkit_virtio::{SplitQueue, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)])?;
    /// // A PROMISC-on command: [class 0, command 0, on 1], then the ack byte.
    /// mem.write_slice(&[0u8, 0, 1], GuestAddress(0x4000))?;
    /// for (i, (addr, len, flags)) in [(0x4000u64, 3u32, VIRTQ_DESC_F_NEXT), (0x5000, 1, VIRTQ_DESC_F_WRITE)]
    ///     .into_iter()
    ///     .enumerate()
    /// {
    ///     let at = 0x1000 + 16 * i as u64;
    ///     mem.write_obj(addr, GuestAddress(at))?;
    ///     mem.write_obj(len, GuestAddress(at + 8))?;
    ///     mem.write_obj(flags, GuestAddress(at + 12))?;
    ///     mem.write_obj(1u16, GuestAddress(at + 14))?;
    /// }
    /// mem.write_obj(1u16, GuestAddress(0x2002))?; // avail.idx = 1, ring[0] = head 0
    /// let mut q = SplitQueue::new(16)?;
    /// q.set_desc_table(GuestAddress(0x1000))?;
    /// q.set_avail_ring(GuestAddress(0x2000))?;
    /// q.set_used_ring(GuestAddress(0x3000))?;
    /// q.set_ready(true);
    /// let chain = q.pop(&mem)?.expect("a chain");
    /// let req = CtrlRequest::parse(chain, &mem, &mut Vec::new())?;
    /// assert_eq!(req.command, CtrlCommand::Promisc(true));
    /// assert_eq!(req.ack, GuestAddress(0x5000));
    /// # Ok(())
    /// # }
    /// ```
    pub fn parse<M, I>(chain: I, mem: &M, buf: &mut Vec<u8>) -> Result<CtrlRequest, InvalidCtrl>
    where
        M: GuestMemory + ?Sized,
        I: IntoIterator<Item = crate::Result<Descriptor>>,
    {
        let bad = |error, ack| InvalidCtrl { error, ack };
        buf.clear();
        let mut ack = None;
        let mut too_long = false;
        let mut read_err = None;
        for d in chain {
            let d = d.map_err(|e| bad(CtrlError::Chain(e), None))?;
            if d.is_write_only() {
                if ack.is_none() && !d.is_empty() {
                    ack = Some(d.addr());
                }
                continue;
            }
            let len = d.len() as usize;
            if too_long || len > MAX_CTRL_LEN - buf.len() {
                too_long = true;
                continue;
            }
            let start = buf.len();
            buf.resize(start + len, 0);
            if let Some(dst) = buf.get_mut(start..) {
                if let Err(source) = mem.read_slice(dst, d.addr()) {
                    read_err.get_or_insert(CtrlError::Read {
                        addr: d.addr().0,
                        source,
                    });
                }
            }
        }
        let Some(ack) = ack else {
            return Err(bad(CtrlError::NoAck, None));
        };
        if let Some(e) = read_err {
            return Err(bad(e, Some(ack)));
        }
        if too_long {
            let error = CtrlError::TooLong { max: MAX_CTRL_LEN };
            return Err(bad(error, Some(ack)));
        }
        let command = decode(buf).map_err(|e| bad(e, Some(ack)))?;
        Ok(CtrlRequest { command, ack })
    }
}

/// Decodes the readable bytes of a command: class, command, data.
pub fn decode(bytes: &[u8]) -> Result<CtrlCommand, CtrlError> {
    let [class, command, data @ ..] = bytes else {
        return Err(CtrlError::TooShort { len: bytes.len() });
    };
    let (class, command) = (*class, *command);
    let wrong = |expected: usize| CtrlError::BadLength {
        class,
        command,
        len: data.len(),
        expected,
    };
    let switch = || match data {
        [0] => Ok(false),
        [1] => Ok(true),
        &[value] => Err(CtrlError::BadSwitch {
            class,
            command,
            value,
        }),
        _ => Err(wrong(1)),
    };
    Ok(match (class, command) {
        (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC) => CtrlCommand::Promisc(switch()?),
        (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_ALLMULTI) => CtrlCommand::AllMulti(switch()?),
        (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET) => {
            let mac = <MacAddr>::try_from(data).map_err(|_| wrong(6))?;
            CtrlCommand::MacAddrSet(mac)
        }
        (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET) => {
            let bad = || CtrlError::BadMacTable { len: data.len() };
            let (unicast, rest) = mac_table(data).ok_or_else(bad)?;
            let (multicast, rest) = mac_table(rest).ok_or_else(bad)?;
            if !rest.is_empty() {
                return Err(bad());
            }
            CtrlCommand::MacTableSet { unicast, multicast }
        }
        (VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK) => {
            if !data.is_empty() {
                return Err(wrong(0));
            }
            CtrlCommand::AnnounceAck
        }
        (VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET) => {
            let b = <[u8; 8]>::try_from(data).map_err(|_| wrong(8))?;
            CtrlCommand::GuestOffloadsSet(u64::from_le_bytes(b))
        }
        _ => CtrlCommand::Unsupported { class, command },
    })
}

/// One table: `le32 entries`, then `entries` MAC addresses. Returns the
/// table and the bytes after it, or `None` if the data is too short.
fn mac_table(data: &[u8]) -> Option<(MacTable, &[u8])> {
    let (n, rest) = data.split_first_chunk::<4>()?;
    let n = usize::try_from(u32::from_le_bytes(*n)).ok()?;
    let len = n.checked_mul(6)?;
    if len > rest.len() {
        return None;
    }
    let (addrs, rest) = rest.split_at(len);
    let table = if n > MAC_TABLE_ENTRIES {
        MacTable {
            entries: Vec::new(),
            overflow: true,
        }
    } else {
        MacTable {
            entries: addrs
                .chunks_exact(6)
                .filter_map(|c| <MacAddr>::try_from(c).ok())
                .collect(),
            overflow: false,
        }
    };
    Some((table, rest))
}
