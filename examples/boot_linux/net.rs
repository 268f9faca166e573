//! boot_linux's network card: a virtio-net device on a TAP interface, the TAP put into one of
//! vmkit-net's network modes, and the thread that moves frames between the two.
//!
//! The guest's notifications of the receive and transmit queues are ioeventfds, so they
//! reach the device thread without an exit to the vCPU thread; the device interrupts the
//! guest through the transport's irqfd. The control queue, rare, goes through the ordinary
//! MMIO exit.

use std::error::Error;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use vmkit::{DataMatch, EventFd, IoEventAddress, Vm};
use vmkit_net::{NatConfig, Network, NetworkMode, Tap};
use vmkit_virtio::mmio::{
    MmioTransport, NOTIFY_OFFSET, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_NEEDS_RESET,
};
use vmkit_virtio::net::{fmt_mac, MacAddr, Net, RXQ, TXQ};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// The transport the device thread serves.
pub type NetTransport = MmioTransport<Arc<vmkit::GuestMemoryMmap>, Net<Tap>>;

/// Where the VM's TAP goes (`--net`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetMode {
    /// `tap`: the TAP alone; the host configures it.
    TapOnly,
    /// `isolated:BRIDGE`, `bridged:BRIDGE` or `nat:BRIDGE:GATEWAY/PREFIX:UPLINK`.
    Network(NetworkMode),
}

impl NetMode {
    /// Parses the value of `--net`.
    pub fn parse(text: &str) -> Result<NetMode, String> {
        let usage = || {
            format!(
                "--net takes tap, isolated:BRIDGE, bridged:BRIDGE or \
                 nat:BRIDGE:GATEWAY/PREFIX:UPLINK, not {text:?}"
            )
        };
        let parts: Vec<&str> = text.split(':').collect();
        let mode = match parts.as_slice() {
            ["tap"] => return Ok(NetMode::TapOnly),
            ["isolated", bridge] => NetworkMode::Isolated {
                bridge: bridge.to_string(),
            },
            ["bridged", bridge] => NetworkMode::Bridged {
                bridge: bridge.to_string(),
            },
            ["nat", bridge, subnet, uplink] => {
                let (gateway, prefix) = subnet.split_once('/').ok_or_else(usage)?;
                NetworkMode::Nat(NatConfig {
                    bridge: bridge.to_string(),
                    gateway: gateway.parse::<Ipv4Addr>().map_err(|_| usage())?,
                    prefix_len: prefix.parse().map_err(|_| usage())?,
                    uplink: uplink.to_string(),
                })
            }
            _ => return Err(usage()),
        };
        // Names and the subnet are checked by Network::setup, with their own errors.
        Ok(NetMode::Network(mode))
    }
}

/// Parses a MAC address written `52:54:00:12:34:56`.
pub fn parse_mac(text: &str) -> Result<MacAddr, String> {
    let bad = || format!("--mac takes an address like 52:54:00:12:34:56, not {text:?}");
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// The VM's TAP and the network it joined; dropping it takes the TAP off the bridge and
/// tears the network down, unless other VMs' ports are still on it (the last VM out
/// removes it).
pub struct Attachment {
    network: Option<Network>,
    tap_name: String,
}

impl Attachment {
    /// Sets `mode` up (idempotent: a second VM joins the first one's isolated or NAT
    /// bridge), opens the TAP `tap_template` (`%d` is filled in by the kernel) and attaches it.
    pub fn new(mode: &NetMode, tap_template: &str) -> Result<(Attachment, Tap), Box<dyn Error>> {
        let network = match mode {
            NetMode::TapOnly => None,
            NetMode::Network(mode) => Some(Network::setup(mode.clone())?),
        };
        // From here on, a failure drops `attachment`, which undoes the setup.
        let mut attachment = Attachment {
            network,
            tap_name: String::new(),
        };
        let tap = Tap::open(tap_template)?;
        attachment.tap_name = tap.name().to_string();
        if let Some(network) = attachment.network.as_mut() {
            network.attach(tap.name())?;
        }
        Ok((attachment, tap))
    }

    /// The bridge, or `None` for a lone TAP.
    pub fn bridge(&self) -> Option<&str> {
        self.network.as_ref().map(Network::bridge)
    }

    /// The TAP's name.
    pub fn tap_name(&self) -> &str {
        &self.tap_name
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let Some(network) = self.network.as_mut() else {
            return;
        };
        let bridge = network.bridge().to_string();
        // Detach first: then a VM leaving at the same moment as another cannot see the
        // other's port and leave the bridge behind for it; at least one of them removes it.
        if let Err(err) = network.detach(&self.tap_name) {
            eprintln!("boot_linux: net: cannot detach {}: {err}", self.tap_name);
        }
        let bridged = matches!(network.mode(), NetworkMode::Bridged { .. });
        match network.teardown() {
            // Not vmkit's bridge: detaching was all there was to undo.
            Ok(()) if bridged => eprintln!("boot_linux: net: left {bridge}"),
            Ok(()) => eprintln!("boot_linux: net: tore down {bridge}"),
            Err(vmkit_net::ModeError::BridgeBusy { ports, .. }) => eprintln!(
                "boot_linux: net: left {bridge} to its other ports: {}",
                ports.join(", ")
            ),
            Err(err) => eprintln!("boot_linux: net: cannot tear down {bridge}: {err}"),
        }
    }
}

/// The device thread: serves the receive and transmit queues on their ioeventfds and the
/// TAP on its readiness, until stopped.
pub struct NetWorker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

/// How often the thread looks whether the driver has made the device live, while it is not:
/// nothing else tells it, and until then it leaves the TAP alone.
const NOT_LIVE_POLL_MS: i32 = 100;

/// Epoll tokens.
const TOKEN_STOP: u64 = 0;
const TOKEN_RX_KICK: u64 = 1;
const TOKEN_TX_KICK: u64 = 2;
const TOKEN_TAP: u64 = 3;

impl NetWorker {
    /// Registers an ioeventfd for the receive and the transmit queue of the transport at
    /// `base`, and starts the thread. `tap` is the TAP's descriptor (owned by the device).
    pub fn start(
        vm: &dyn Vm,
        transport: Arc<NetTransport>,
        base: u64,
        tap: RawFd,
    ) -> Result<NetWorker, Box<dyn Error>> {
        let notify = IoEventAddress::Mmio(base + NOTIFY_OFFSET);
        let rx_kick = EventFd::new(libc::EFD_NONBLOCK)?;
        let tx_kick = EventFd::new(libc::EFD_NONBLOCK)?;
        vm.register_ioeventfd(&rx_kick, notify, DataMatch::U32(u32::from(RXQ)))?;
        vm.register_ioeventfd(&tx_kick, notify, DataMatch::U32(u32::from(TXQ)))?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        for (fd, token) in [
            (stop.as_raw_fd(), TOKEN_STOP),
            (rx_kick.as_raw_fd(), TOKEN_RX_KICK),
            (tx_kick.as_raw_fd(), TOKEN_TX_KICK),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        // The TAP is polled for nothing until the device is live.
        epoll.ctl(
            ControlOperation::Add,
            tap,
            EpollEvent::new(EventSet::empty(), TOKEN_TAP),
        )?;
        let worker = Worker {
            transport,
            epoll,
            tap,
            tap_events: EventSet::empty(),
            live: false,
            rx_kick,
            tx_kick,
            stop: stop.try_clone()?,
        };
        let thread = thread::Builder::new()
            .name("virtio-net".into())
            .spawn(move || worker.run())?;
        Ok(NetWorker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for NetWorker {
    fn drop(&mut self) {
        // A failed write leaves the thread blocked in epoll_wait; it dies with the process.
        if self.stop.write(1).is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

struct Worker {
    transport: Arc<NetTransport>,
    epoll: Epoll,
    tap: RawFd,
    /// What the TAP is polled for now.
    tap_events: EventSet,
    /// The driver has made the device live (and it has not failed).
    live: bool,
    rx_kick: EventFd,
    tx_kick: EventFd,
    stop: EventFd,
}

impl Worker {
    fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 4];
        loop {
            let timeout = if self.live { -1 } else { NOT_LIVE_POLL_MS };
            let ready = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    eprintln!("boot_linux: net: epoll_wait failed, the device stops: {err}");
                    return;
                }
            };
            let (mut rx, mut tx) = (false, false);
            for event in events.iter().take(ready) {
                match event.data() {
                    TOKEN_STOP => {
                        let _ = self.stop.read();
                        return;
                    }
                    TOKEN_RX_KICK => {
                        let _ = self.rx_kick.read();
                        rx = true;
                    }
                    TOKEN_TX_KICK => {
                        let _ = self.tx_kick.read();
                        tx = true;
                    }
                    _ => {
                        let set = event.event_set();
                        rx |= set.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP);
                        tx |= set.contains(EventSet::OUT);
                    }
                }
            }
            // Transmit first: it frees the guest's buffers sooner and may answer what the
            // guest is waiting on.
            if tx {
                self.process(TXQ);
            }
            if rx {
                self.process(RXQ);
            }
            self.repoll_tap();
        }
    }

    fn process(&self, queue: u16) {
        if let Err(err) = self.transport.process_queue(queue) {
            eprintln!("boot_linux: net: queue {queue}: {err}");
        }
    }

    /// Polls the TAP for input only while the device can take it (it is live and the
    /// guest has receive buffers), and for output only while transmission waits on it:
    /// level-triggered polling would otherwise spin, since the device leaves frames in the
    /// TAP when it cannot deliver them.
    fn repoll_tap(&mut self) {
        let status = self.transport.status();
        let live =
            status & STATUS_DRIVER_OK != 0 && status & (STATUS_FAILED | STATUS_NEEDS_RESET) == 0;
        if live && !self.live {
            // Frames may have waited in the TAP since before the driver was ready.
            self.process(RXQ);
        }
        self.live = live;
        let (rx_waiting, tx_blocked) = self
            .transport
            .with_device(|net| (net.rx_waiting_for_buffers(), net.tx_blocked()));
        let mut want = EventSet::empty();
        if live && !rx_waiting {
            want |= EventSet::IN;
        }
        if live && tx_blocked {
            want |= EventSet::OUT;
        }
        if want != self.tap_events {
            let event = EpollEvent::new(want, TOKEN_TAP);
            match self.epoll.ctl(ControlOperation::Modify, self.tap, event) {
                Ok(()) => self.tap_events = want,
                Err(err) => eprintln!("boot_linux: net: cannot repoll the TAP: {err}"),
            }
        }
    }
}

/// Describes the attachment for the start-up line.
pub fn describe(attachment: &Attachment, mac: &MacAddr, mode: &NetMode) -> String {
    let place = match (attachment.bridge(), mode) {
        (Some(bridge), NetMode::Network(NetworkMode::Isolated { .. })) => {
            format!("on {bridge} (isolated)")
        }
        (Some(bridge), NetMode::Network(NetworkMode::Bridged { .. })) => {
            format!("on {bridge} (bridged)")
        }
        (Some(bridge), NetMode::Network(NetworkMode::Nat(c))) => format!(
            "on {bridge} (nat {}/{} via {})",
            c.gateway, c.prefix_len, c.uplink
        ),
        _ => "(tap only)".to_string(),
    };
    format!("tap {} mac {} {place}", attachment.tap_name(), fmt_mac(mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(NetMode::parse("tap"), Ok(NetMode::TapOnly));
        assert_eq!(
            NetMode::parse("isolated:br0"),
            Ok(NetMode::Network(NetworkMode::Isolated {
                bridge: "br0".into()
            }))
        );
        let Ok(NetMode::Network(NetworkMode::Nat(c))) =
            NetMode::parse("nat:vmknat0:10.0.2.1/24:eth0")
        else {
            panic!("nat did not parse");
        };
        assert_eq!(c.gateway, Ipv4Addr::new(10, 0, 2, 1));
        assert_eq!((c.prefix_len, c.uplink.as_str()), (24, "eth0"));
        for bad in [
            "",
            "bridge:br0",
            "nat:br:10.0.2.1:eth0",
            "nat:br:x/24:eth0",
            "isolated",
        ] {
            assert!(NetMode::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("52:54:00:ab:CD:0f"),
            Ok([0x52, 0x54, 0, 0xab, 0xcd, 0x0f])
        );
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad:?} parsed");
        }
    }
}
