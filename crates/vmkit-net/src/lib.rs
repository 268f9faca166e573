//! Networking for vmkit VMs on Linux hosts.
//!
//! - [`Tap`] ([`tap`]): a TAP interface as the [`NetBackend`] of a
//!   `vmkit_virtio::net::Net` device, non-blocking, with the virtio-net
//!   header and the offloads the kernel can honour.
//! - [`Network`] ([`mode`]): puts TAP devices into an isolated bridge,
//!   an existing host bridge, or a NAT subnet behind the host; idempotent
//!   setup, exact teardown from a [`NetworkRecord`].
//! - [`Attachment`] ([`attach`]): a VM's TAP in a network for the VM's
//!   lifetime (a lone TAP, or one of the modes above): set up and attached
//!   together, detached and torn down (by the last VM out) together.
//!   A network left behind by a VMM that was killed is recognized and taken over
//!   ([`Leftover`], [`owners`]).
//!   [`TapMode`], [`NetworkMode`] and MAC addresses ([`parse_mac`]) have
//!   text forms for command lines ([`parse`]).
//! - [`NetWorker`] ([`worker`]): the thread that serves a virtio-net
//!   device's receive and transmit queues on their notification eventfds
//!   and its TAP on its readiness, started and stopped by the VMM.
//! - [`VhostNet`](vhost::VhostNet) ([`vhost`]): the kernel's vhost-net as
//!   the card's datapath instead of [`NetWorker`], chosen per card
//!   ([`vhost::Datapath`]).
//! - [`persistent`]: a persistent TAP made for a VMM's user by an operator
//!   with `CAP_NET_ADMIN`, and put into a network, so that the VMM opens it
//!   with no capabilities; removed again by the operator. The
//!   `vmkit-tap` command does both.
//! - [`netlink::Rtnl`]: the small blocking rtnetlink client underneath.
//!
//! # Dependencies, and why
//!
//! Links and addresses are configured through rtnetlink with
//! `netlink-packet-route` and `netlink-sys` (the message types and socket
//! that the `rtnetlink` crate is built on, maintained by the same
//! rust-netlink project), used synchronously: a VMM that embeds vmkit need
//! not run an async runtime for a handful of configuration requests, which
//! `rtnetlink` itself would impose (tokio). `neli` would also do, but
//! models rtnetlink attributes less completely (bridge kinds, master,
//! alias), so more of it would be hand-written here.
//!
//! nftables rules use the `nftables` crate: typed JSON objects applied by
//! the `nft` binary in one atomic transaction (`nft -j -f -`), the
//! interface the nftables project documents as stable. `rustables` talks
//! netlink directly but is younger, covers fewer expressions, and its
//! wire format follows kernel internals that `nft` hides. The cost is a
//! runtime dependency on `nft` (Debian package `nftables`), needed only by
//! the NAT mode.
//!
//! # Example
//!
//! A VM on a NAT network (needs `CAP_NET_ADMIN`; everything happens in the
//! calling thread's network namespace):
//!
//! ```no_run
//! use vmkit_net::{NatConfig, Network, NetworkMode, Tap};
//! use vmkit_virtio::net::{Net, NetOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut network = Network::setup(NetworkMode::Nat(NatConfig {
//!     bridge: "vmkbr0".into(),
//!     gateway: "10.0.2.1".parse()?,
//!     prefix_len: 24,
//!     uplink: "eth0".into(),
//! }))?;
//! let tap = Tap::open("vmtap%d")?;
//! network.attach(tap.name())?;
//! let device = Net::new(tap, NetOptions::default())?;
//! // Wrap `device` in a vmkit_virtio::mmio::MmioTransport, start a
//! // vmkit_net::NetWorker on it (see the `worker` module), run the VM.
//! # let _ = device;
//! network.teardown()?;
//! # Ok(())
//! # }
//! ```

pub mod attach;
pub mod mode;
pub mod netlink;
pub mod nft;
pub mod owners;
pub mod parse;
pub mod persistent;
mod sysctl;
pub mod tap;
pub mod vhost;
pub mod worker;

pub use attach::{AttachError, Attachment, Closed, Departure, TapMode};
pub use mode::{ModeError, NatConfig, Network, NetworkMode, NetworkRecord, Port};
pub use owners::Leftover;
pub use parse::{parse_mac, ParseError};
pub use tap::{Tap, TapError, TapOptions};
pub use vmkit_virtio::net::NetBackend;
pub use worker::{NetWorker, NetWorkerOptions, QueueKicks, WorkerError};
