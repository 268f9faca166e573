//! A pool of ready VMs, for VMMs that run many short-lived guests (sandboxes, functions).
//!
//! A [`VmPool`] keeps VMs built from one [`VmTemplate`] ready: created, memory mapped, vCPUs
//! created, the template's bytes loaded and its registers set (or a snapshot restored). A
//! thread of the pool builds VMs in the background until `target` are ready.
//!
//! - [`VmPool::take`] hands out a ready VM at once; when none is ready it builds one on the
//!   calling thread (as long as creating a VM from scratch), so it never waits for the refill
//!   thread.
//! - [`VmPool::give_back`] resets a used VM on the calling thread and keeps it for the next
//!   `take`: its memory is dropped (`MADV_DONTNEED`, so it reads zeros again, or the snapshot's
//!   memory file) and the template's bytes loaded again; every vCPU's state (registers, special
//!   registers, FPU/XSAVE, XCRs, every readable MSR, pending events, multiprocessing state,
//!   LAPIC) and the VM's (in-kernel PIC/IOAPIC, PIT, clock) and dirty logs return to what they
//!   were when the template built the pool's first VM; then the template's setup runs again.
//!   A VM that cannot be reset safely is dropped instead (and the refill thread builds another):
//!   one from another pool, with vCPUs missing or memory regions added or removed, with memory
//!   that is not a private mapping (Xen's guest memory is the hypervisor's, so on Xen every
//!   returned VM is replaced), or whose state the hypervisor refuses to load.
//!   [`Returned`] says which happened.
//!
//! What the pool cannot see, the VMM undoes before giving a VM back: irqfds, ioeventfds and
//! GSI routes it registered, guest debugging it enabled, and its own devices (their threads
//! must no longer touch guest memory).
//!
//! A pooled VM is an ordinary [`Vm`] with its [`Vcpu`]s, so it runs like any other: move the
//! vCPUs into a [`VmRunner`](crate::runner::VmRunner), and after `join` put them back, in id
//! order, before giving the VM back.
//!
//! ```no_run
//! use std::sync::Arc;
//! use vmkit::pool::{Returned, VmPool, VmTemplate};
//! use vmkit::vm_memory::GuestAddress;
//! use vmkit::{MemoryFlags, VcpuExit, VmConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hypervisor: Arc<dyn vmkit::Hypervisor> = Arc::from(vmkit::open()?);
//! // Real mode at 0x1000: mov al, 0x42; out 0x80, al; hlt
//! let template = VmTemplate::new(VmConfig::default())
//!     .memory(GuestAddress(0), 2 << 20, MemoryFlags::empty())
//!     .load(GuestAddress(0x1000), vec![0xb0, 0x42, 0xe6, 0x80, 0xf4])
//!     .setup(|_vm, vcpus| {
//!         let mut sregs = vcpus[0].sregs()?;
//!         sregs.cs.base = 0;
//!         sregs.cs.selector = 0;
//!         vcpus[0].set_sregs(&sregs)?;
//!         let mut regs = vcpus[0].regs()?;
//!         regs.rip = 0x1000;
//!         regs.rflags = 2;
//!         vcpus[0].set_regs(&regs)?;
//!         Ok(())
//!     });
//! // Keep four VMs ready.
//! let pool = VmPool::new(hypervisor, template, 4)?;
//!
//! let mut sandbox = pool.take()?;
//! loop {
//!     match sandbox.vcpus[0].run()? {
//!         VcpuExit::IoOut { port: 0x80, data, .. } => println!("guest wrote {:#x}", data[0]),
//!         VcpuExit::Hlt => break,
//!         other => panic!("unexpected exit: {other:?}"),
//!     }
//! }
//! match pool.give_back(sandbox) {
//!     Returned::Reset => {}
//!     Returned::Replaced(why) => eprintln!("VM dropped, not reused: {why}"),
//! }
//! # Ok(()) }
//! ```

mod error;
mod reset;
mod template;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

pub use error::{PoolError, SetupError};
pub use template::VmTemplate;

use crate::hypervisor::Hypervisor;
use crate::vcpu::Vcpu;
use crate::vm::Vm;
use reset::Baseline;

/// A VM handed out by a [`VmPool`], with its vCPUs (ids `0..n`, in order).
pub struct PooledVm {
    /// The VM.
    pub vm: Box<dyn Vm>,
    /// Its vCPUs, in id order; give them all back with the VM.
    pub vcpus: Vec<Box<dyn Vcpu>>,
    /// The pool that built it.
    pool: u64,
}

impl fmt::Debug for PooledVm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledVm")
            .field("vcpus", &self.vcpus.len())
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// What [`VmPool::give_back`] did with a VM.
#[derive(Debug)]
#[must_use]
pub enum Returned {
    /// It was reset to the template's state and will be handed out again.
    Reset,
    /// It could not be reset safely, so it was dropped; the error says why.
    Replaced(PoolError),
}

/// Counters of a pool's work, for tests and monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// VMs the refill thread built.
    pub built_in_background: u64,
    /// VMs built on a caller's thread: the first one, in [`VmPool::new`], and those `take`
    /// built because none was ready.
    pub built_on_take: u64,
    /// VMs `take` handed out ready.
    pub taken_ready: u64,
    /// Returned VMs reset for reuse.
    pub reset: u64,
    /// Returned VMs dropped instead.
    pub replaced: u64,
}

/// A pool of VMs built from one [`VmTemplate`]; see the [module documentation](self).
///
/// Dropping the pool stops its refill thread (after the VM it is building, if any) and drops
/// the ready VMs; VMs handed out stay usable.
pub struct VmPool {
    shared: Arc<Shared>,
    refill: Option<JoinHandle<()>>,
}

impl fmt::Debug for VmPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmPool")
            .field("template", &self.shared.template)
            .field("target", &self.shared.target)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct Shared {
    id: u64,
    hypervisor: Arc<dyn Hypervisor>,
    template: VmTemplate,
    baseline: Baseline,
    target: usize,
    state: Mutex<State>,
    /// Wakes the refill thread: a VM was taken, a refill error was cleared, or the pool is
    /// dropped.
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Ready VMs; the last one pushed is handed out first (its pages are the warmest).
    ready: Vec<PooledVm>,
    stats: PoolStats,
    /// The refill thread's last failure; it stops building until `take` is called again.
    refill_error: Option<PoolError>,
    stopping: bool,
}

/// Pool ids, to recognise a VM from another pool.
static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

impl VmPool {
    /// Creates a pool that keeps `target` VMs ready.
    ///
    /// The template is checked and its first VM built here, on the calling thread, so a bad
    /// template fails now; that VM's state is the baseline every reset returns to. The refill
    /// thread (`vmkit-pool`) then builds the others.
    pub fn new(
        hypervisor: Arc<dyn Hypervisor>,
        template: VmTemplate,
        target: usize,
    ) -> Result<Self, PoolError> {
        template.check(hypervisor.as_ref())?;
        let first = template.build(hypervisor.as_ref())?;
        let baseline = Baseline::capture(
            hypervisor.as_ref(),
            &first.config,
            first.vm.as_ref(),
            &first.vcpus,
        )?;
        let id = NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed);
        let mut state = State::default();
        state.ready.push(PooledVm {
            vm: first.vm,
            vcpus: first.vcpus,
            pool: id,
        });
        state.stats.built_on_take = 1;
        let shared = Arc::new(Shared {
            id,
            hypervisor,
            template,
            baseline,
            target,
            state: Mutex::new(state),
            wake: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        let refill = std::thread::Builder::new()
            .name("vmkit-pool".into())
            .spawn(move || worker.refill())
            .map_err(PoolError::Spawn)?;
        Ok(VmPool {
            shared,
            refill: Some(refill),
        })
    }

    /// A VM in the template's state: a ready one if there is one, else one built now on the
    /// calling thread.
    pub fn take(&self) -> Result<PooledVm, PoolError> {
        let (ready, refill) = {
            let mut state = self.shared.lock();
            let stalled = state.refill_error.take().is_some();
            let vm = state.ready.pop();
            if vm.is_some() {
                state.stats.taken_ready += 1;
            }
            (vm, stalled || state.ready.len() < self.shared.target)
        };
        if refill {
            self.shared.wake.notify_one();
        }
        if let Some(vm) = ready {
            return Ok(vm);
        }
        let vm = self.shared.build()?;
        self.shared.lock().stats.built_on_take += 1;
        Ok(vm)
    }

    /// Resets `vm` to the template's state, on the calling thread, and keeps it for the next
    /// [`take`](Self::take); or drops it if it cannot be reset safely (see the
    /// [module documentation](self)).
    ///
    /// Give a VM back only once nothing uses it any more: its vCPUs out of `run()` (a runner
    /// joined), its devices' threads stopped.
    pub fn give_back(&self, vm: PooledVm) -> Returned {
        let result = if vm.pool == self.shared.id {
            self.shared
                .baseline
                .reset(&self.shared.template, vm.vm.as_ref(), &vm.vcpus)
        } else {
            Err(PoolError::ForeignVm)
        };
        let mut state = self.shared.lock();
        match result {
            Ok(()) => {
                state.stats.reset += 1;
                state.ready.push(vm);
                Returned::Reset
            }
            Err(err) => {
                state.stats.replaced += 1;
                drop(state);
                drop(vm);
                self.shared.wake.notify_one();
                Returned::Replaced(err)
            }
        }
    }

    /// How many VMs are ready now.
    pub fn ready(&self) -> usize {
        self.shared.lock().ready.len()
    }

    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        self.shared.lock().stats
    }

    /// The refill thread's last error, if building a VM failed since the last
    /// [`take`](Self::take); it builds nothing more until `take` is called again.
    pub fn take_refill_error(&self) -> Option<PoolError> {
        self.shared.lock().refill_error.take()
    }
}

impl Drop for VmPool {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_all();
        if let Some(refill) = self.refill.take() {
            // A panic on the refill thread has nothing left to report.
            let _ = refill.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a list and counters, consistent at every unlock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn build(&self) -> Result<PooledVm, PoolError> {
        let built = self.template.build(self.hypervisor.as_ref())?;
        Ok(PooledVm {
            vm: built.vm,
            vcpus: built.vcpus,
            pool: self.id,
        })
    }

    /// The refill thread: builds VMs while fewer than `target` are ready.
    fn refill(&self) {
        loop {
            {
                let mut state = self.lock();
                while !state.stopping
                    && (state.ready.len() >= self.target || state.refill_error.is_some())
                {
                    state = self
                        .wake
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if state.stopping {
                    return;
                }
            }
            let built = self.build();
            let mut state = self.lock();
            match built {
                Ok(vm) => {
                    state.stats.built_in_background += 1;
                    state.ready.push(vm);
                }
                Err(err) => state.refill_error = Some(err),
            }
        }
    }
}
