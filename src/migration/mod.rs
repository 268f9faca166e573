//! Live migration: moving a running VM to another process or host over any byte stream
//! (`Read + Write`: a TCP connection, a Unix socket, a pair of pipes).
//!
//! The source calls [`migrate`], the destination [`receive`], on the two ends of one stream:
//!
//! 1. **Handshake.** The source offers its capabilities, the VM's configuration, memory
//!    layout and vCPU ids. The destination checks them ([`check_offer`]: platform,
//!    [`Capabilities::missing_in`](crate::Capabilities::missing_in), limits), builds an empty
//!    VM like the source's and accepts, or refuses with a typed [`Refusal`] that the source's
//!    error carries: nothing was paused.
//! 2. **Pre-copy.** Round 0 sends every non-zero page while the guest runs; later rounds send
//!    what was dirtied meanwhile: the hypervisor's dirty log (ring where the VM has one,
//!    bitmap otherwise), vm-memory's bitmaps (the VMM's devices writing through the VM's
//!    memory) and pages the VMM marks itself ([`MarkedPages`]). The source reports each round
//!    to a callback ([`Progress`]: round, pages sent, dirty pages and rate, bandwidth,
//!    expected downtime) and stops when the dirty set fits [`MigrationOptions::downtime_budget`]
//!    at the measured bandwidth, or after [`MigrationOptions::max_rounds`].
//! 3. **Stop-and-copy.** The source pauses the vCPUs through its
//!    [`VmRunner`](crate::runner::VmRunner) and sends the last dirty pages, then the vCPU, VM
//!    and device state as one vmkit-snapshot state file (devices through
//!    [`Persist`](vmkit_snapshot::Persist)).
//! 4. **Confirmation.** The destination restores the vCPUs and VM state, lets the VMM build
//!    and restore its devices, and confirms; only then does [`migrate`] return `Ok` and the
//!    source consider the VM gone.
//!
//! **Nothing is lost on failure.** If the destination refuses, dies, or the stream breaks or
//! is corrupted at any point before the confirmation, [`migrate`] returns an error naming the
//! side and the [`Phase`], and the VM runs on at the source (resumed if it was paused).
//! [`receive`] never returns a half-received VM.
//!
//! **The stream** ([`frame`], [`wire`]) is a sequence of frames, each a vmkit-snapshot
//! section header (tag, sequence number, protocol version, payload length and CRC-64, and a
//! checksum of the header itself) and its payload. Everything the destination reads is
//! untrusted: every frame is checked before its payload is used, every length and count is
//! capped ([`Limits`], [`wire::MAX_PAGES_PER_FRAME`], [`wire::max_payload`]), and every page
//! run must lie inside the announced layout ([`StreamCheck`]).
//!
//! # Example
//!
//! ```no_run
//! use std::net::{TcpListener, TcpStream};
//! use vmkit::migration::{self, IncomingOptions, MigrationOptions, Source};
//! # fn source_side(
//! #     hypervisor: &dyn vmkit::Hypervisor,
//! #     config: &vmkit::VmConfig,
//! #     vm: &dyn vmkit::Vm,
//! #     runner: vmkit::runner::VmRunner,
//! #     msrs: &[u32],
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! // Source: the VM runs on `runner`; its regions were added with MemoryFlags::LOG_DIRTY.
//! let stream = TcpStream::connect("192.0.2.7:4444")?;
//! let source = Source { hypervisor, config, vm, runner: &runner, msrs, marked: None };
//! match migration::migrate(
//!     &stream,
//!     &source,
//!     &MigrationOptions::default(),
//!     |_devices| Ok(()), // write_device(index, &device) for each device
//!     |p| eprintln!("round {}: {} pages dirty, ~{:?} downtime", p.round, p.dirty_pages, p.expected_downtime),
//! ) {
//!     Ok(summary) => {
//!         eprintln!("migrated in {:?}, paused {:?}", summary.total, summary.downtime);
//!         runner.stop_all(); // the VM is the destination's now
//!         runner.join();
//!     }
//!     Err(err) => eprintln!("still running here: {}", vmkit::ErrorChain(&err)),
//! }
//! # Ok(()) }
//!
//! # fn destination_side(hypervisor: &dyn vmkit::Hypervisor) -> Result<(), Box<dyn std::error::Error>> {
//! // Destination: accept one connection and receive.
//! let (stream, _) = TcpListener::bind("0.0.0.0:4444")?.accept()?;
//! let (incoming, ()) = migration::receive(
//!     &stream,
//!     hypervisor,
//!     &IncomingOptions::default(),
//!     |incoming| {
//!         // Build each device on incoming.vm.memory(), then restore it from
//!         // incoming.state.read_device::<Device>(index).
//!         Ok(())
//!     },
//! )?;
//! let runner = vmkit::runner::VmRunner::start(incoming.vcpus, vmkit::runner::from_fn(|_, exit| {
//!     vmkit::runner::ExitAction::unhandled(exit)
//! }))?;
//! # let _ = runner; Ok(()) }
//! ```
//!
//! # What other backends and VMMs need
//!
//! The protocol is backend-neutral. A backend needs [`Vm::harvest_dirty_log`](crate::Vm)
//! (without it every round sends all memory and pre-copy ends after
//! [`MigrationOptions::max_rounds`]) and the state capture of [`crate::snapshot`]; on Xen
//! that is its log-dirty mode, and the offer then names the Xen backend, so a destination
//! refuses a VM from the other backend. A VMM with Linux guests adds its regions with
//! `LOG_DIRTY`, saves every device through `Persist` in the `devices` closure (and quiesces
//! device threads there, e.g. vmkit-machine's queue workers), marks pages written behind
//! vm-memory's back ([`MarkedPages`]: a vhost-net datapath, unless the kernel's vhost dirty
//! log is used), attaches a TAP to the same network on the destination and has the guest
//! announce the move (`VIRTIO_NET_F_GUEST_ANNOUNCE`, a gratuitous ARP). [`Summary`] gives
//! the source's view of total time, downtime and bytes; a guest-visible pause is measured
//! from inside the guest.

mod check;
pub mod checksum;
mod destination;
mod error;
pub mod frame;
mod progress;
mod source;
mod track;
pub mod wire;

pub use check::{check_offer, CheckError, Limits, StreamCheck};
pub use destination::{receive, receive_prepared, Incoming, IncomingOptions};
pub use error::{MigrationError, Phase, Reason, Refusal, Side};
pub use frame::{FrameError, FrameReader, FrameWriter, PROTOCOL_VERSION};
pub use progress::{MigrationOptions, Progress, Summary};
pub use source::{migrate, Source};
pub use track::MarkedPages;

/// Version of the VM-state and vCPU sections inside the state frame.
pub(crate) const SECTION_VERSION: u16 = 1;
