//! The per-interface sysctls the network modes touch, under
//! `/proc/sys/net`, which shows the network namespace of the calling thread.

use std::io;
use std::path::PathBuf;

/// `net.ipv4.conf.<iface>.forwarding`.
pub(crate) fn forwarding_path(iface: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"))
}

/// Whether IPv4 forwarding is on for packets arriving on `iface`.
pub(crate) fn forwarding(iface: &str) -> io::Result<bool> {
    let v = std::fs::read_to_string(forwarding_path(iface))?;
    Ok(v.trim() != "0")
}

/// Turns IPv4 forwarding on `iface` on or off.
pub(crate) fn set_forwarding(iface: &str, on: bool) -> io::Result<()> {
    std::fs::write(forwarding_path(iface), if on { "1\n" } else { "0\n" })
}

/// `net.ipv4.conf.<iface>.<key>`.
pub(crate) fn ipv4_conf_path(iface: &str, key: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{iface}/{key}")
}

/// The settings that keep the host's IPv4 stack off an interface: strict
/// reverse-path filtering (`rp_filter` 1) drops every packet whose source
/// the host would not route back out of it, which on an interface without
/// addresses or routes is every packet; `arp_ignore` 8 answers no ARP
/// request for any local address. Both go with the interface when it is
/// deleted.
pub(crate) const SHUT_OUT_IPV4: [(&str, &str); 2] = [("rp_filter", "1\n"), ("arp_ignore", "8\n")];

fn ipv6_path(iface: &str) -> String {
    format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6")
}

/// Whether IPv6 is on for `iface` (false if the kernel has no IPv6).
pub(crate) fn ipv6_enabled(iface: &str) -> bool {
    std::fs::read_to_string(ipv6_path(iface)).is_ok_and(|v| v.trim() == "0")
}

/// Turns IPv6 back on for `iface`.
pub(crate) fn enable_ipv6(iface: &str) -> io::Result<()> {
    std::fs::write(ipv6_path(iface), "0\n")
}

/// Turns IPv6 off on `iface` (no link-local address, no IPv6 traffic from
/// the host), if the kernel has IPv6.
pub(crate) fn disable_ipv6(iface: &str) -> io::Result<()> {
    match std::fs::write(ipv6_path(iface), "1\n") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
