//! Seccomp filters for the threads vmkit runs, per backend (cargo feature `seccomp`, on by
//! default).
//!
//! The rule builder, the base every thread needs and the violation report are the
//! `vmkit-seccomp` crate, re-exported here ([`Rules`], [`Filter`]); this module adds what
//! vmkit's own threads do on each backend:
//!
//! - [`vcpu_rules`]: a vCPU thread under the [runner](crate::runner): the base, the runner's
//!   channels, and the backend's `run()` and state ioctls. Also
//!   [`Hypervisor::vcpu_seccomp_rules`](crate::Hypervisor::vcpu_seccomp_rules), for a VMM that
//!   holds a `Box<dyn Hypervisor>`. The runner installs it with
//!   [`RunnerOptions::seccomp`](crate::runner::RunnerOptions::seccomp).
//! - [`vmm_rules`]: the VMM's main thread once the VM is set up and running: commands to the
//!   vCPUs, joining them, the dirty log, and tearing the VM down. The VMM installs it itself
//!   (`vmm_rules(kind).compile()?.install()?`), after the last thread is spawned and the last
//!   file is opened.
//!
//! - [`discard_rules`]: what [`memory::discard`](crate::memory::discard) needs, for the thread
//!   that serves a balloon's queues (often a vCPU thread, through the exit handler).
//! - [`interrupt_rules`]: what [`Vm::set_irq_line`](crate::Vm::set_irq_line) and
//!   [`Vm::signal_msi`](crate::Vm::signal_msi) need, for a device thread that raises its
//!   interrupts itself rather than through an irqfd (e.g. a virtio-pci device's MSI-X).
//!
//! The exit handler runs on the vCPU thread, so the vCPU filter must allow what it does. The
//! rules allow what the handlers of vmkit's companion crates do (the bus's locks, serial
//! and console output to an already-open stdout, eventfd writes to irqfds, `virtio` queue
//! processing on guest memory); a VMM whose handlers do more (write a file, talk to a
//! socket) adds those calls: `vcpu_rules(kind).extend(&extra)`.
//!
//! ```no_run
//! use vmkit::runner::{self, ExitAction, RunnerOptions, VmRunner};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hypervisor = vmkit::open()?;
//! let vm = hypervisor.create_vm(&vmkit::VmConfig::default())?;
//! let vcpus = vec![vm.create_vcpu(0)?];
//! // The backend's vCPU rules, and what this VMM's handler adds (none here).
//! let filter = hypervisor.vcpu_seccomp_rules().compile()?;
//! let options = RunnerOptions::default().seccomp(filter);
//! let handler = runner::from_fn(|_, _| ExitAction::PowerOff);
//! let running = VmRunner::start_with(vcpus, handler, options)?;
//! // Once nothing is left to set up, the main thread confines itself too.
//! vmkit::seccomp::vmm_rules(hypervisor.kind()).compile()?.install()?;
//! running.join();
//! # Ok(()) }
//! ```

pub use vmkit_seccomp::{Filter, Rules, SeccompError};

use crate::HypervisorKind;

/// The rules of a vCPU thread run by the [runner](crate::runner) on `kind`: [`Rules::base`]
/// (the runner's channels and locks are futexes) and the backend's calls. For a backend not
/// compiled in, the base alone (such a thread cannot exist).
pub fn vcpu_rules(kind: HypervisorKind) -> Rules {
    let mut rules = Rules::base();
    match kind {
        #[cfg(feature = "kvm")]
        HypervisorKind::Kvm => {
            rules.extend(&crate::kvm::seccomp::vcpu_rules());
        }
        #[cfg(feature = "xen")]
        HypervisorKind::Xen => {
            rules.extend(&crate::xen::seccomp::vcpu_rules());
        }
        #[allow(unreachable_patterns)]
        _ => {}
    }
    rules
}

/// The rules of the VMM's main thread on `kind` while the VM runs: [`Rules::base`] and what
/// vmkit does there (the runner's commands and join, the dirty log, the VM's teardown). What
/// the VMM itself does on that thread (signals, its own files) it adds.
pub fn vmm_rules(kind: HypervisorKind) -> Rules {
    let mut rules = Rules::base();
    match kind {
        #[cfg(feature = "kvm")]
        HypervisorKind::Kvm => {
            rules.extend(&crate::kvm::seccomp::vmm_rules());
        }
        #[cfg(feature = "xen")]
        HypervisorKind::Xen => {
            rules.extend(&crate::xen::seccomp::vmm_rules());
        }
        #[allow(unreachable_patterns)]
        _ => {}
    }
    rules
}

/// What [`memory::discard`](crate::memory::discard) (and [`MemoryRegion::discard`](crate::MemoryRegion::discard))
/// calls: `madvise` with `MADV_DONTNEED` (private RAM, which [`Rules::base`] allows already)
/// or `MADV_REMOVE` (shared RAM: a memfd or a file, which the base does not allow). Add it to
/// the rules of the thread that serves a balloon's queues, e.g.
/// `vcpu_rules(kind).extend(&discard_rules())` when the queues are notified through exits.
///
/// ```
/// let mut rules = vmkit::seccomp::Rules::base();
/// rules.extend(&vmkit::seccomp::discard_rules());
/// let filter = rules.compile()?;
/// # Ok::<(), vmkit::seccomp::SeccompError>(())
/// ```
pub fn discard_rules() -> Rules {
    let mut rules = Rules::new();
    rules.allow_args(
        libc::SYS_madvise,
        2,
        &[libc::MADV_DONTNEED as u64, libc::MADV_REMOVE as u64],
    );
    rules
}

/// What raising an interrupt takes on `kind`: [`Vm::set_irq_line`](crate::Vm::set_irq_line)
/// and [`Vm::signal_msi`](crate::Vm::signal_msi) (KVM: `KVM_IRQ_LINE` and `KVM_SIGNAL_MSI` on
/// the VM's descriptor; Xen: the device-model operation with libxencall's hypercall
/// buffers). Add it to a device thread's rules when its device signals through the VM
/// rather than an irqfd; the vCPU and VMM lists have it already. For a backend not compiled
/// in, nothing.
///
/// ```
/// let mut rules = vmkit::seccomp::Rules::base();
/// rules.extend(&vmkit::seccomp::interrupt_rules(vmkit::HypervisorKind::Kvm));
/// let filter = rules.compile()?;
/// # Ok::<(), vmkit::seccomp::SeccompError>(())
/// ```
pub fn interrupt_rules(kind: HypervisorKind) -> Rules {
    let mut rules = Rules::new();
    match kind {
        #[cfg(feature = "kvm")]
        HypervisorKind::Kvm => {
            rules.extend(&crate::kvm::seccomp::interrupt_rules());
        }
        #[cfg(feature = "xen")]
        HypervisorKind::Xen => {
            rules.extend(&crate::xen::seccomp::interrupt_rules());
        }
        #[allow(unreachable_patterns)]
        _ => {}
    }
    rules
}
