//! What boot_linux prints about its network card: where the TAP went, and, when the run
//! ends however it ends, what leaving the network did (the ci/svm harness checks these
//! lines). The card itself is vmkit-net's: `Attachment`, `NetWorker`.

use vmkit::ErrorChain;
use vmkit_net::{Attachment, Departure, NetworkMode};
use vmkit_virtio::net::{fmt_mac, MacAddr};

/// Describes the attachment for the start-up line.
pub fn describe(attachment: &Attachment, mac: &MacAddr) -> String {
    describe_tap(attachment.tap_name(), attachment.mode(), mac)
}

fn describe_tap(tap: &str, mode: Option<&NetworkMode>, mac: &MacAddr) -> String {
    let place = match mode {
        Some(NetworkMode::Isolated { bridge }) => format!("on {bridge} (isolated)"),
        Some(NetworkMode::Bridged { bridge }) => format!("on {bridge} (bridged)"),
        Some(NetworkMode::Nat(c)) => format!(
            "on {} (nat {}/{} via {})",
            c.bridge, c.gateway, c.prefix_len, c.uplink
        ),
        None => "(tap only)".to_string(),
    };
    format!("tap {tap} mac {} {place}", fmt_mac(mac))
}

/// The VM's attachment; dropping it closes it and prints what became of the network.
pub struct Leaving(pub Option<Attachment>);

impl Drop for Leaving {
    fn drop(&mut self) {
        let Some(attachment) = self.0.take() else {
            return;
        };
        let closed = attachment.close();
        if let Err(err) = closed.detach {
            eprintln!("boot_linux: net: {}", ErrorChain(&err));
        }
        match closed.network {
            Ok(Departure::Left { bridge }) => eprintln!("boot_linux: net: left {bridge}"),
            Ok(Departure::TornDown { bridge }) => eprintln!("boot_linux: net: tore down {bridge}"),
            Ok(Departure::LeftToOthers { bridge, ports }) => eprintln!(
                "boot_linux: net: left {bridge} to its other ports: {}",
                ports.join(", ")
            ),
            Ok(_) => {}
            Err(err) => eprintln!("boot_linux: net: {}", ErrorChain(&err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start-up lines ci/svm/l1-tests.sh looks for.
    #[test]
    fn start_up_lines() {
        let mac = [0x52, 0x54, 0, 0x0a, 0, 0x02];
        let mode = |text: &str| text.parse::<NetworkMode>().unwrap();
        assert_eq!(
            describe_tap("vmktapa", Some(&mode("isolated:vmkiso0")), &mac),
            "tap vmktapa mac 52:54:00:0a:00:02 on vmkiso0 (isolated)"
        );
        assert_eq!(
            describe_tap("vmktapl", Some(&mode("bridged:lanbr0")), &mac),
            "tap vmktapl mac 52:54:00:0a:00:02 on lanbr0 (bridged)"
        );
        assert_eq!(
            describe_tap("vmktapn", Some(&mode("nat:vmknat0:10.0.2.1/24:eth0")), &mac),
            "tap vmktapn mac 52:54:00:0a:00:02 on vmknat0 (nat 10.0.2.1/24 via eth0)"
        );
        assert_eq!(
            describe_tap("vmktap0", None, &mac),
            "tap vmktap0 mac 52:54:00:0a:00:02 (tap only)"
        );
    }
}
