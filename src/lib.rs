//! # vmkit
//!
//! An embeddable hypervisor library: create VMs, map memory, run vCPUs and answer their exits,
//! on KVM and on Xen (cargo feature `xen`) through one object-safe API.
//!
//! ```toml
//! [dependencies]
//! vmkit = "0.1"
//! # With the Xen backend as well (links Xen's C libraries; Debian: libxen-dev):
//! # vmkit = { version = "0.1", features = ["xen"] }
//! ```
//!
//! The cargo features are `kvm` (the default) and `xen`; [`open`] tries every backend that is
//! compiled in. vmkit re-exports [`vm_memory`], whose types appear in its API, so a VMM
//! needs no `vm-memory` dependency of its own.
//!
//! The pieces are:
//! - [`Hypervisor`]: the host's hypervisor, from [`open`] (or a backend type such as
//!   [`kvm::Kvm`]); it reports [`Capabilities`] and creates VMs.
//! - [`Vm`]: guest memory ([`MemoryRegion`]s, owned by the VM while mapped) and vCPUs.
//! - [`Vcpu`]: `run()` returns a [`VcpuExit`]; register and state access uses the
//!   backend-neutral types of [`arch::x86_64`].
//! - [`snapshot`]: saving a VM to disk and restoring it; [`dirty`]: dirty-page tracking;
//!   [`migration`]: moving a running VM to another process or host over a stream.
//! - [`pool`]: VMs built from a template and kept ready, for VMMs that run many short-lived
//!   guests; a VM given back is reset so that nothing of its last guest reaches the next.
//!
//! Optional features of a hypervisor (irqfd, dirty logging, guest debugging…) are listed in
//! its [`Capabilities`]; a call that needs one the backend lacks returns
//! [`VmError::Unsupported`] or [`VcpuError::Unsupported`]. Errors show each cause once:
//! print one with its `source()` chain, for example with [`ErrorChain`].
//!
//! ## Companion crates
//!
//! vmkit is the hypervisor layer only. These crates of the same workspace build a VMM on
//! it; none of the device crates depends on a hypervisor backend:
//!
//! - `vmkit-boot`: loading Linux (vmlinux, bzImage, initrd), boot parameters, ACPI and MP
//!   tables, and x86-64 entry state (long mode, PVH).
//! - `vmkit-bus`: port-I/O and MMIO dispatch of exits to devices.
//! - `vmkit-devices`: legacy devices: serial port, i8042, CMOS/RTC, debug exit port.
//! - `vmkit-virtio`: virtqueues (split and packed), the virtio-mmio transport, virtio-blk,
//!   virtio-console and virtio-net.
//! - `vmkit-machine`: MMIO window and GSI allocation, and the wiring of virtio-mmio devices
//!   onto a VM and a bus (irqfd, ioeventfds, a queue worker thread).
//! - `vmkit-net`: TAP interfaces and isolated, bridged and NAT networks for virtio-net.
//! - `vmkit-snapshot`: the snapshot file formats that [`snapshot`] writes.
//!
//! They live in the repository's `crates/` directory and are not on crates.io yet;
//! `cargo doc --workspace --no-deps --open` in a checkout documents all of them with vmkit.
//!
//! ## Example
//!
//! Run four bytes of guest code that write to a port and halt:
//!
//! ```
//! use vmkit::vm_memory::{Bytes, GuestAddress, MemoryRegionAddress};
//! use vmkit::{MemoryFlags, MemoryRegion, VcpuExit, VmConfig};
//!
//! # fn main() -> vmkit::Result<()> {
//! let hypervisor = vmkit::open()?;
//! let vm = hypervisor.create_vm(&VmConfig::default())?;
//! let ram = MemoryRegion::anonymous(GuestAddress(0), 0x1000, MemoryFlags::empty())?;
//! // mov al, 0x42; out 0x80, al; hlt
//! let code = [0xb0, 0x42, 0xe6, 0x80, 0xf4];
//! ram.mapping().write_slice(&code, MemoryRegionAddress(0)).unwrap();
//! vm.add_memory_region(ram)?;
//!
//! let mut vcpu = vm.create_vcpu(0)?;
//! let mut sregs = vcpu.sregs()?;
//! sregs.cs.base = 0;
//! sregs.cs.selector = 0;
//! vcpu.set_sregs(&sregs)?;
//! let mut regs = vcpu.regs()?;
//! regs.rip = 0;
//! regs.rflags = 0x2;
//! vcpu.set_regs(&regs)?;
//!
//! loop {
//!     match vcpu.run()? {
//!         VcpuExit::IoOut { port: 0x80, data, .. } => println!("guest wrote {:#x}", data[0]),
//!         VcpuExit::Hlt => break,
//!         other => panic!("unexpected exit: {other:?}"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! To start a vCPU directly in 64-bit mode, or to boot Linux, see the `vmkit-boot` crate.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod arch;
pub mod dirty;
pub mod error;
pub mod hypervisor;
pub mod interrupt;
#[cfg(feature = "kvm")]
#[cfg_attr(docsrs, doc(cfg(feature = "kvm")))]
pub mod kvm;
pub mod memory;
#[cfg(target_arch = "x86_64")]
pub mod migration;
pub mod pci;
pub mod pool;
pub mod reserved;
pub mod runner;
#[cfg(feature = "seccomp")]
#[cfg_attr(docsrs, doc(cfg(feature = "seccomp")))]
pub mod seccomp;
#[cfg(target_arch = "x86_64")]
pub mod snapshot;
pub mod vcpu;
pub mod vm;
#[cfg(feature = "xen")]
#[cfg_attr(docsrs, doc(cfg(feature = "xen")))]
pub mod xen;

pub use dirty::{DirtyLog, DirtyLogMode, DirtyRegion};
pub use error::{Error, ErrorChain, OpenAttempt, OpenFailure, Result};
pub use hypervisor::{
    Capabilities, Hypervisor, HypervisorError, HypervisorKind, IrqchipKind, MissingCapability,
    VmConfig,
};
pub use interrupt::{DataMatch, IoEventAddress, IrqChip, IrqRoute, MsiMessage};
pub use memory::{
    GuestMemoryMmap, GuestRegionMmap, HugePages, MemoryError, MemoryFlags, MemoryRegion, MemorySlot,
};
pub use vcpu::{
    DebugExit, GuestDebug, Kick, KickHandle, SystemEventKind, Vcpu, VcpuError, VcpuExit,
};
pub use vm::{ClockState, Vm, VmError};
pub use vmm_sys_util::eventfd::EventFd;

/// The `vm-memory` crate, re-exported: guest addresses and memory access
/// ([`GuestAddress`](vm_memory::GuestAddress), [`Bytes`](vm_memory::Bytes)) appear in vmkit's
/// API, so a VMM can use them without depending on a matching `vm-memory` version itself.
pub use vm_memory;

/// Opens the hypervisor this host has: KVM when `/dev/kvm` opens, else Xen when this is a
/// Xen dom0 (`/dev/xen/privcmd`; a dom0 has no `/dev/kvm`).
///
/// Every compiled-in backend is tried in turn, KVM first; if none can be used, the error
/// lists each one with the reason (not compiled in, device missing, permission denied…).
// One push per backend, each behind its own cfg: with no backend compiled in, clippy sees only
// pushes.
#[cfg_attr(
    not(any(feature = "kvm", feature = "xen")),
    allow(clippy::vec_init_then_push)
)]
pub fn open() -> Result<Box<dyn Hypervisor>> {
    let mut tried = Vec::new();

    #[cfg(feature = "kvm")]
    match kvm::Kvm::new() {
        Ok(kvm) => return Ok(Box::new(kvm)),
        Err(err) => tried.push(OpenAttempt {
            kind: HypervisorKind::Kvm,
            reason: OpenFailure::Failed(err),
        }),
    }
    #[cfg(not(feature = "kvm"))]
    tried.push(OpenAttempt {
        kind: HypervisorKind::Kvm,
        reason: OpenFailure::NotCompiled { feature: "kvm" },
    });

    #[cfg(feature = "xen")]
    match xen::Xen::new() {
        Ok(xen) => return Ok(Box::new(xen)),
        Err(err) => tried.push(OpenAttempt {
            kind: HypervisorKind::Xen,
            reason: OpenFailure::Failed(err),
        }),
    }
    #[cfg(not(feature = "xen"))]
    tried.push(OpenAttempt {
        kind: HypervisorKind::Xen,
        reason: OpenFailure::NotCompiled { feature: "xen" },
    });

    Err(Error::NoHypervisor { tried })
}

// Compile and run the README's example as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
