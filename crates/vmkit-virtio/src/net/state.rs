//! The saved state of a virtio-net device, and its validation.

use super::{MacAddr, MacTable, NetStats, GUEST_OFFLOAD_FEATURES, MAC_TABLE_ENTRIES};

/// The saved state of a [`super::Net`] device ([`crate::Persist::State`]):
/// what the driver set up (MAC address, receive filter, receive offloads),
/// the link state and the counters. Negotiated features and queues are the
/// transport's; the backend (a TAP device) is the VMM's to reattach. A
/// received frame held for want of buffers is not saved (frames can be lost
/// on a network).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

impl NetState {
    /// Checks what the device itself would have accepted from the driver:
    /// a unicast, non-zero MAC address; filter tables of at most
    /// [`MAC_TABLE_ENTRIES`] addresses, and none when the table overflowed;
    /// receive offloads among [`GUEST_OFFLOAD_FEATURES`]. The error names
    /// the field and its value.
    pub fn validate(&self) -> Result<(), String> {
        let mac = &self.mac;
        if mac[0] & 1 != 0 || *mac == [0; 6] {
            return Err(format!("mac {} is not unicast", super::fmt_mac(mac)));
        }
        for (what, table) in [("unicast", &self.unicast), ("multicast", &self.multicast)] {
            let n = table.entries.len();
            if n > MAC_TABLE_ENTRIES || (table.overflow && n != 0) {
                return Err(format!(
                    "{what} table holds {n} entries (overflow {}); at most {MAC_TABLE_ENTRIES}, none on overflow",
                    table.overflow
                ));
            }
        }
        let rx_offloads = self.rx_offloads;
        if rx_offloads & !GUEST_OFFLOAD_FEATURES != 0 {
            return Err(format!(
                "rx_offloads {rx_offloads:#x} has bits beyond the receive offloads"
            ));
        }
        Ok(())
    }
}
