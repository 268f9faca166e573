//! The kernel's vhost-net as a virtio-net card's datapath: [`VhostNet`].
//!
//! The userspace datapath ([`crate::NetWorker`]) copies every frame
//! between the guest's rings and the TAP in a thread of this process. With
//! vhost-net a kernel thread does it: it is told where guest memory is
//! mapped in this process (the memory table), where the driver put the
//! receive and transmit rings, which eventfd the guest's notifications
//! signal (the queues' ioeventfds, "kick") and which to signal when it used
//! buffers (the transport's interrupt eventfd, an irqfd: "call"), and it
//! moves frames between the rings and the TAP without this process.
//!
//! [`VhostNet`] is a [`QueueOffload`] of the card's virtio-mmio transport:
//! the transport keeps the registers, feature negotiation, configuration
//! space and control queue (and the `vmkit_virtio::net::Net` device still
//! sets the TAP's offloads when the driver activates it); at `DRIVER_OK` it
//! hands [`VhostNet`] the receive and transmit queues, and on reset takes
//! them back. The transport must not offer packed rings (vhost-net serves
//! split rings only): build it `with_packed_rings(false)`.
//!
//! The TAP must carry the 12-byte virtio-net header (`IFF_VNET_HDR`,
//! `TUNSETVNETHDRSZ` 12, as [`crate::Tap::open`] sets it): vhost-net
//! passes the guest's header through to the TAP unchanged.
//!
//! # Seccomp
//!
//! The vhost ioctls that start and stop the rings run where the transport
//! handles the driver's status writes, a vCPU thread: add
//! [`vcpu_seccomp_rules`] to the vCPU threads' rules. Opening
//! `/dev/vhost-net` and the memory table happen in [`VhostNet::open`].
//!
//! # What it does not do
//!
//! Guest memory that vhost-net writes is not marked in vmkit's dirty
//! bitmaps, and a snapshot does not capture vhost-net's ring positions:
//! snapshots and dirty tracking need the userspace datapath.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};

use vhost::net::VhostNet as _;
use vhost::vhost_kern::net::Net as KernNet;
use vhost::vhost_kern::{PhysicalGuestAddressSpace, VhostKernBackend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmkit_virtio::device::VIRTIO_F_RING_PACKED;
use vmkit_virtio::mmio::{OffloadError, OffloadQueue, QueueOffload};
use vmkit_virtio::net::{RXQ, TXQ};
use vmm_sys_util::eventfd::EventFd;

use crate::worker::QueueKicks;

/// The vhost-net device node.
pub const VHOST_NET_PATH: &str = "/dev/vhost-net";

/// The most guest memory regions the memory table takes (the kernel's
/// default `max_mem_regions` of the vhost module).
pub const MAX_REGIONS: usize = 64;

/// Which datapath moves a card's frames, chosen per card.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Datapath {
    /// A thread of this process ([`crate::NetWorker`]).
    #[default]
    Userspace,
    /// The kernel's vhost-net ([`VhostNet`]).
    Vhost,
}

impl std::str::FromStr for Datapath {
    type Err = UnknownDatapath;

    /// `userspace` or `vhost`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "userspace" => Ok(Datapath::Userspace),
            "vhost" => Ok(Datapath::Vhost),
            _ => Err(UnknownDatapath(text.to_owned())),
        }
    }
}

/// A datapath name other than `userspace` and `vhost`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown datapath {0:?}: userspace or vhost")]
pub struct UnknownDatapath(pub String);

/// The errors of [`VhostNet`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VhostError {
    /// `/dev/vhost-net` does not exist.
    #[error("{VHOST_NET_PATH} does not exist: the host kernel needs the vhost_net module (modprobe vhost_net)")]
    NoDevice,
    /// `/dev/vhost-net` exists but could not be opened.
    #[error("cannot open {VHOST_NET_PATH}")]
    Open(#[source] io::Error),
    /// A vhost request failed.
    #[error("vhost-net refused {request}")]
    Request {
        /// The request (e.g. `"VHOST_SET_MEM_TABLE"`).
        request: &'static str,
        /// The crate's error (with the system's).
        #[source]
        source: vhost::Error,
    },
    /// A request about one queue failed.
    #[error("vhost-net refused {request} for queue {queue}")]
    QueueRequest {
        /// The request.
        request: &'static str,
        /// The queue index.
        queue: u16,
        /// The crate's error (with the system's).
        #[source]
        source: vhost::Error,
    },
    /// Guest memory has no region, or more than vhost-net takes.
    #[error("guest memory has {count} regions; vhost-net takes 1 to {MAX_REGIONS}")]
    Regions {
        /// The number of regions.
        count: usize,
    },
    /// A guest memory region has no host mapping.
    #[error("guest memory region at {start:#x} has no host address")]
    Unmapped {
        /// The region's guest physical start.
        start: u64,
    },
    /// The TAP's descriptor could not be duplicated.
    #[error("cannot duplicate the TAP's descriptor")]
    DupTap(#[source] io::Error),
    /// The driver negotiated packed rings.
    #[error("the driver negotiated packed rings (features {features:#x}); vhost-net serves split rings only")]
    PackedRings {
        /// The negotiated features.
        features: u64,
    },
    /// A ring of a data queue is not inside one guest memory region.
    #[error("queue {queue}: the {area} at {addr:#x} ({len} bytes) is not inside one guest memory region")]
    RingOutsideMemory {
        /// The queue index.
        queue: u16,
        /// `"descriptor table"`, `"available ring"` or `"used ring"`.
        area: &'static str,
        /// Its guest physical address.
        addr: u64,
        /// Its length for the queue's size.
        len: u64,
    },
    /// The driver did not make a data queue ready.
    #[error("the driver did not make queue {queue} ready")]
    QueueNotReady {
        /// The queue index.
        queue: u16,
    },
}

/// Maps an error opening [`VHOST_NET_PATH`] to [`VhostError`]: a missing
/// node says which module to load.
pub fn open_error(err: io::Error) -> VhostError {
    if err.kind() == io::ErrorKind::NotFound {
        VhostError::NoDevice
    } else {
        VhostError::Open(err)
    }
}

/// The memory table for vhost-net: every region of `mem`, with the host
/// address it is mapped at in this process.
pub fn memory_table<M: GuestMemoryBackend>(
    mem: &M,
) -> Result<Vec<VhostUserMemoryRegionInfo>, VhostError> {
    let count = mem.num_regions();
    if count == 0 || count > MAX_REGIONS {
        return Err(VhostError::Regions { count });
    }
    mem.iter()
        .map(|region| {
            let start = region.start_addr().raw_value();
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| VhostError::Unmapped { start })?;
            Ok(VhostUserMemoryRegionInfo {
                guest_phys_addr: start,
                memory_size: region.len(),
                userspace_addr: host as u64,
                mmap_offset: 0,
                mmap_handle: -1,
            })
        })
        .collect()
}

/// Checks that each ring of split queue `ring` lies inside one region of
/// `mem`. vhost-net reaches the rings through this process's addresses of
/// their starts, so a ring that ran off its region's end (into the next
/// region's guest addresses, mapped elsewhere here) would have the kernel
/// touch whatever this process maps after it.
pub fn check_rings<M: GuestMemoryBackend>(mem: &M, ring: &OffloadQueue) -> Result<(), VhostError> {
    let n = u64::from(ring.size);
    // Split ring sizes (virtio 1.2, 2.7), with the event suppression fields.
    let areas = [
        ("descriptor table", ring.desc, 16 * n),
        ("available ring", ring.driver, 6 + 2 * n),
        ("used ring", ring.device, 6 + 8 * n),
    ];
    for (area, addr, len) in areas {
        let inside = mem.iter().any(|region| {
            let start = region.start_addr().raw_value();
            addr >= start
                && addr
                    .checked_add(len)
                    .is_some_and(|end| end - start <= region.len())
        });
        if !inside {
            return Err(VhostError::RingOutsideMemory {
                queue: ring.index,
                area,
                addr,
                len,
            });
        }
    }
    Ok(())
}

/// The vhost ioctls [`VhostNet`] issues when the driver starts or resets
/// the card, which happens on a vCPU thread: add these to the vCPU
/// threads' seccomp rules.
pub fn vcpu_seccomp_rules() -> vmkit_seccomp::Rules {
    let mut rules = vmkit_seccomp::Rules::new();
    rules.allow_ioctls(&[
        vhost::vhost_kern::vhost_binding::VHOST_SET_FEATURES() as _,
        vhost::vhost_kern::vhost_binding::VHOST_SET_VRING_NUM() as _,
        vhost::vhost_kern::vhost_binding::VHOST_SET_VRING_ADDR() as _,
        vhost::vhost_kern::vhost_binding::VHOST_SET_VRING_BASE() as _,
        vhost::vhost_kern::vhost_binding::VHOST_GET_VRING_BASE() as _,
        vhost::vhost_kern::vhost_binding::VHOST_SET_VRING_KICK() as _,
        vhost::vhost_kern::vhost_binding::VHOST_SET_VRING_CALL() as _,
        vhost::vhost_kern::vhost_binding::VHOST_NET_SET_BACKEND() as _,
    ]);
    rules
}

/// What [`VhostNet::on_error`] calls.
type ErrorReport = dyn Fn(&VhostError) + Send;

/// A virtio-net card's receive and transmit queues served by the kernel's
/// vhost-net; see the [module documentation](self). Dropping it closes
/// `/dev/vhost-net`, which stops the rings.
pub struct VhostNet<AS: PhysicalGuestAddressSpace> {
    net: KernNet<AS>,
    /// Features vhost-net supports (asked once).
    supported: u64,
    tap: File,
    kicks: QueueKicks,
    running: bool,
    /// Told why a start failed (the transport only records it).
    on_error: Option<Box<ErrorReport>>,
}

impl<AS: PhysicalGuestAddressSpace> fmt::Debug for VhostNet<AS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VhostNet")
            .field("vhost", &self.net.as_raw_fd())
            .field("tap", &self.tap.as_raw_fd())
            .field("supported", &format_args!("{:#x}", self.supported))
            .field("running", &self.running)
            .finish()
    }
}

impl<AS: PhysicalGuestAddressSpace> VhostNet<AS> {
    /// Opens `/dev/vhost-net` for the card on TAP `tap` (its descriptor is
    /// duplicated), becomes its owner and gives it guest memory `mem`'s
    /// table. `kicks` are the queues' ioeventfds (see
    /// [`crate::worker::QueueKicks`]); the guest's notifications go to the
    /// kernel through them.
    pub fn open(mem: AS, tap: &impl AsFd, kicks: QueueKicks) -> Result<Self, VhostError> {
        let table = memory_table(&*mem.memory())?;
        let tap = tap
            .as_fd()
            .try_clone_to_owned()
            .map_err(VhostError::DupTap)?;
        let net = KernNet::new(mem).map_err(|err| match err {
            vhost::Error::VhostOpen(e) => open_error(e),
            source => VhostError::Request {
                request: "open",
                source,
            },
        })?;
        let request = |request| move |source| VhostError::Request { request, source };
        net.set_owner().map_err(request("VHOST_SET_OWNER"))?;
        let supported = net.get_features().map_err(request("VHOST_GET_FEATURES"))?;
        net.set_mem_table(&table)
            .map_err(request("VHOST_SET_MEM_TABLE"))?;
        Ok(VhostNet {
            net,
            supported,
            tap: File::from(tap),
            kicks,
            running: false,
            on_error: None,
        })
    }

    /// Has `report` told, in the thread that starts the rings (a vCPU
    /// thread), why a start failed; the transport then sets
    /// `DEVICE_NEEDS_RESET` and records the error too.
    pub fn on_error(mut self, report: impl Fn(&VhostError) + Send + 'static) -> Self {
        self.on_error = Some(Box::new(report));
        self
    }

    /// The virtio features vhost-net supports (`VHOST_GET_FEATURES`).
    pub fn supported_features(&self) -> u64 {
        self.supported
    }

    fn kick(&self, queue: u16) -> &EventFd {
        if queue == RXQ {
            &self.kicks.rx
        } else {
            &self.kicks.tx
        }
    }

    fn start_queues(
        &mut self,
        features: u64,
        queues: &[OffloadQueue],
        irq: &EventFd,
    ) -> Result<(), VhostError> {
        if features & VIRTIO_F_RING_PACKED != 0 {
            return Err(VhostError::PackedRings { features });
        }
        let mut rings = [None; 2];
        for q in queues {
            if let Some(slot) = rings.get_mut(usize::from(q.index)) {
                *slot = Some(*q);
            }
        }
        // vhost-net sees the ring features; the device features (offloads,
        // merged buffers) are the TAP's business or already in the header.
        self.net
            .set_features(features & self.supported)
            .map_err(|source| VhostError::Request {
                request: "VHOST_SET_FEATURES",
                source,
            })?;
        for (queue, ring) in [RXQ, TXQ].into_iter().zip(rings) {
            let ring = ring.ok_or(VhostError::QueueNotReady { queue })?;
            check_rings(&*self.net.mem().memory(), &ring)?;
            let index = usize::from(queue);
            let failed = |request| {
                move |source| VhostError::QueueRequest {
                    request,
                    queue,
                    source,
                }
            };
            let config = VringConfigData {
                queue_max_size: ring.size,
                queue_size: ring.size,
                flags: 0,
                desc_table_addr: ring.desc,
                used_ring_addr: ring.device,
                avail_ring_addr: ring.driver,
                log_addr: None,
            };
            self.net
                .set_vring_num(index, ring.size)
                .map_err(failed("VHOST_SET_VRING_NUM"))?;
            self.net
                .set_vring_addr(index, &config)
                .map_err(failed("VHOST_SET_VRING_ADDR"))?;
            self.net
                .set_vring_base(index, 0)
                .map_err(failed("VHOST_SET_VRING_BASE"))?;
            self.net
                .set_vring_kick(index, self.kick(queue))
                .map_err(failed("VHOST_SET_VRING_KICK"))?;
            self.net
                .set_vring_call(index, irq)
                .map_err(failed("VHOST_SET_VRING_CALL"))?;
            self.net
                .set_backend(index, Some(&self.tap))
                .map_err(failed("VHOST_NET_SET_BACKEND"))?;
            self.running = true;
        }
        // Receive buffers the driver added before DRIVER_OK: have vhost-net
        // look at the rings once (its own first look only comes with traffic).
        for queue in [RXQ, TXQ] {
            // A failed write leaves the guest's next notification to do it.
            let _ = self.kick(queue).write(1);
        }
        Ok(())
    }
}

impl<AS: PhysicalGuestAddressSpace + Send> QueueOffload for VhostNet<AS> {
    fn queues(&self) -> &[u16] {
        &[RXQ, TXQ]
    }

    fn start(
        &mut self,
        features: u64,
        queues: &[OffloadQueue],
        irq: &EventFd,
    ) -> Result<(), OffloadError> {
        self.stop();
        let result = self.start_queues(features, queues, irq);
        if let Err(err) = &result {
            self.stop();
            if let Some(report) = &self.on_error {
                report(err);
            }
        }
        Ok(result?)
    }

    fn stop(&mut self) {
        if !self.running {
            return;
        }
        for queue in [RXQ, TXQ] {
            let index = usize::from(queue);
            // Detaching the TAP stops the ring; reading the base completes
            // the stop. Failures leave nothing to undo: the next start sets
            // every ring value again.
            let _ = self.net.set_backend(index, None);
            let _ = self.net.get_vring_base(index);
        }
        self.running = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn memory_table_lists_every_region_at_its_host_address() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x1_0000_0000), 0x20_0000),
        ])
        .unwrap();
        let table = memory_table(&mem).unwrap();
        assert_eq!(table.len(), 2);
        for (entry, region) in table.iter().zip(mem.iter()) {
            assert_eq!(entry.guest_phys_addr, region.start_addr().raw_value());
            assert_eq!(entry.memory_size, region.len());
            assert_eq!(entry.userspace_addr, region.as_ptr() as u64);
        }
        assert_eq!(table[1].guest_phys_addr, 0x1_0000_0000);
        assert_eq!(table[1].memory_size, 0x20_0000);
    }

    #[test]
    fn rings_must_stay_inside_one_region() {
        // Two regions adjacent in guest addresses, mapped apart in this process.
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x10_0000), 0x10_0000),
        ])
        .unwrap();
        let ring = OffloadQueue {
            index: TXQ,
            size: 256,
            desc: 0x1000,
            driver: 0x2000,
            device: 0x10_0000,
        };
        check_rings(&mem, &ring).unwrap();
        // The used ring (6 + 8 * 256 bytes) starting 8 bytes before the first region ends.
        let across = OffloadQueue {
            device: 0x10_0000 - 8,
            ..ring
        };
        let err = check_rings(&mem, &across).unwrap_err();
        assert!(
            matches!(
                err,
                VhostError::RingOutsideMemory {
                    queue: TXQ,
                    area: "used ring",
                    addr: 0xf_fff8,
                    len: 2054
                }
            ),
            "{err}"
        );
        // Beyond all memory, and at the top of the address space.
        for desc in [0x20_0000, u64::MAX - 8] {
            let err = check_rings(&mem, &OffloadQueue { desc, ..ring }).unwrap_err();
            assert!(
                matches!(
                    err,
                    VhostError::RingOutsideMemory {
                        area: "descriptor table",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn memory_table_refuses_no_regions() {
        let mem = GuestMemoryMmap::<()>::default();
        assert!(matches!(
            memory_table(&mem),
            Err(VhostError::Regions { count: 0 })
        ));
    }

    #[test]
    fn missing_node_names_the_module() {
        let err = open_error(io::Error::from(io::ErrorKind::NotFound));
        assert!(matches!(err, VhostError::NoDevice));
        let text = err.to_string();
        assert!(text.contains(VHOST_NET_PATH), "{text}");
        assert!(text.contains("modprobe vhost_net"), "{text}");
        let denied = open_error(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(matches!(denied, VhostError::Open(_)));
    }

    /// On a host without the node, opening fails with [`VhostError::NoDevice`].
    #[test]
    fn open_without_the_node_is_typed() {
        if std::path::Path::new(VHOST_NET_PATH).exists() {
            return;
        }
        let mem =
            Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
        let tap = std::fs::File::open("/dev/null").unwrap();
        let kicks = QueueKicks {
            rx: EventFd::new(EFD_NONBLOCK).unwrap(),
            tx: EventFd::new(EFD_NONBLOCK).unwrap(),
        };
        let err = VhostNet::open(mem, &tap, kicks).unwrap_err();
        assert!(matches!(err, VhostError::NoDevice), "{err}");
    }

    #[test]
    fn datapath_names() {
        assert_eq!("vhost".parse::<Datapath>(), Ok(Datapath::Vhost));
        assert_eq!("userspace".parse::<Datapath>(), Ok(Datapath::Userspace));
        assert_eq!(Datapath::default(), Datapath::Userspace);
        assert_eq!(
            "kernel".parse::<Datapath>(),
            Err(UnknownDatapath("kernel".into()))
        );
    }

    #[test]
    fn vcpu_rules_compile() {
        vcpu_seccomp_rules().compile().unwrap();
    }
}
