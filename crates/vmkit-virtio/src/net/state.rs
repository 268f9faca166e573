//! The saved state of a virtio-net device, in a versioned byte encoding
//! carried by [`crate::DeviceState::Custom`] with kind `"net"`.

use super::{MacAddr, MacTable, NetStats, GUEST_OFFLOAD_FEATURES, MAC_TABLE_ENTRIES};

/// The kind tag of the device state.
pub(super) const KIND: &str = "net";
/// The encoding's version.
const VERSION: u8 = 1;
/// Counters in [`NetStats`], in encoding order.
const STAT_COUNT: usize = 15;

/// The saved state of a [`super::Net`] device: what the driver set up
/// (MAC address, receive filter, receive offloads), the link state and
/// the counters. Negotiated features and queues are the transport's. A
/// received frame held for want of buffers is not saved (frames can be
/// lost on a network).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetState {
    /// The current MAC address.
    pub mac: MacAddr,
    /// The link state.
    pub link_up: bool,
    /// Promiscuous mode.
    pub promisc: bool,
    /// All-multicast mode.
    pub allmulti: bool,
    /// The unicast filter table.
    pub unicast: MacTable,
    /// The multicast filter table.
    pub multicast: MacTable,
    /// The receive offloads in force (`GUEST_*` bits).
    pub rx_offloads: u64,
    /// The counters.
    pub stats: NetStats,
}

fn stats_fields(s: &mut NetStats) -> [&mut u64; STAT_COUNT] {
    [
        &mut s.rx_frames,
        &mut s.rx_bytes,
        &mut s.rx_dropped_filtered,
        &mut s.rx_dropped_invalid,
        &mut s.rx_dropped_too_big,
        &mut s.rx_dropped_link_down,
        &mut s.rx_backend_errors,
        &mut s.tx_frames,
        &mut s.tx_bytes,
        &mut s.tx_malformed,
        &mut s.tx_backend_errors,
        &mut s.tx_dropped_link_down,
        &mut s.bad_chains,
        &mut s.ctrl_ok,
        &mut s.ctrl_err,
    ]
}

/// A cursor over untrusted bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "state ends inside {what} ({} bytes left, {n} needed)",
                self.0.len()
            ));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?.first().copied().unwrap_or(0))
    }

    fn bool(&mut self, what: &str) -> Result<bool, String> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(format!("{what} = {v} is not a boolean")),
        }
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn mac(&mut self, what: &str) -> Result<MacAddr, String> {
        let b = self.take(6, what)?;
        let mut a = [0u8; 6];
        a.copy_from_slice(b);
        Ok(a)
    }

    fn table(&mut self, what: &str) -> Result<MacTable, String> {
        let overflow = self.bool(what)?;
        let n = usize::from(self.u8(what)?);
        if n > MAC_TABLE_ENTRIES || (overflow && n != 0) {
            return Err(format!(
                "{what} holds {n} entries (overflow {overflow}); at most {MAC_TABLE_ENTRIES}, none on overflow"
            ));
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(self.mac(what)?);
        }
        Ok(MacTable { entries, overflow })
    }
}

impl NetState {
    /// Encodes the state (version 1).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![VERSION];
        v.extend_from_slice(&self.mac);
        v.push(u8::from(self.link_up));
        v.push(u8::from(self.promisc));
        v.push(u8::from(self.allmulti));
        for t in [&self.unicast, &self.multicast] {
            v.push(u8::from(t.overflow));
            let n = t.entries.len().min(MAC_TABLE_ENTRIES);
            // n <= 64.
            v.push(n as u8);
            for m in t.entries.iter().take(n) {
                v.extend_from_slice(m);
            }
        }
        v.extend_from_slice(&self.rx_offloads.to_le_bytes());
        let mut stats = self.stats;
        for f in stats_fields(&mut stats) {
            v.extend_from_slice(&f.to_le_bytes());
        }
        v
    }

    /// Decodes and validates an encoded state: version, booleans, a
    /// unicast MAC, table sizes, offload bits, exact length. The error
    /// says what is wrong.
    pub fn decode(data: &[u8]) -> Result<NetState, String> {
        let mut r = Reader(data);
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(format!("version {version} is not {VERSION}"));
        }
        let mac = r.mac("mac")?;
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(format!("mac {} is not unicast", super::fmt_mac(&mac)));
        }
        let link_up = r.bool("link_up")?;
        let promisc = r.bool("promisc")?;
        let allmulti = r.bool("allmulti")?;
        let unicast = r.table("unicast table")?;
        let multicast = r.table("multicast table")?;
        let rx_offloads = r.u64("rx_offloads")?;
        if rx_offloads & !GUEST_OFFLOAD_FEATURES != 0 {
            return Err(format!(
                "rx_offloads {rx_offloads:#x} has bits beyond the receive offloads"
            ));
        }
        let mut stats = NetStats::default();
        for f in stats_fields(&mut stats) {
            *f = r.u64("stats")?;
        }
        if !r.0.is_empty() {
            return Err(format!("{} trailing bytes", r.0.len()));
        }
        Ok(NetState {
            mac,
            link_up,
            promisc,
            allmulti,
            unicast,
            multicast,
            rx_offloads,
            stats,
        })
    }
}
