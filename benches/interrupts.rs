//! Interrupt and notification latency on the real hypervisor, each path against its
//! alternative in the same run:
//!
//! - `inject_to_handler`: from the host raising an interrupt until the guest's handler has run
//!   and reported the vector (a port write that exits): through an irqfd, through a direct
//!   `set_irq_line`, and as an MSI.
//! - `guest_write_to_host`: from an MSI injection until the host sees the guest handler's port
//!   write: through an ioeventfd (a host thread blocked on the eventfd wakes, no exit to the
//!   vCPU thread) and through an ordinary exit to the vCPU thread.
//!
//! The measuring thread blocks (a condition variable) while it waits, and every time is taken
//! where the event lands (the handler, the eventfd's reader): a spinning waiter would hold a
//! CPU the guest's vCPU may need (on Xen, a dom0 vCPU the scheduler then keeps from the
//! guest for a whole time slice).
//!
//! ```text
//! cargo bench --bench interrupts
//! cargo build --release --features xen --bench interrupts   # the Xen harness runs it too
//! ```

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::GuestAddress;
use vmkit::runner::{self, ExitAction, VmRunner};
use vmkit::{
    DataMatch, EventFd, IoEventAddress, MemoryFlags, MemoryRegion, MsiMessage, VcpuExit, Vm,
    VmConfig,
};
use vmkit_boot::entry;
use vmkit_guests::minimal;

/// A count of events and the time of the last (ns since an epoch), with a condition variable
/// to wait on: set where the event lands, waited for by the measuring thread.
#[derive(Default)]
struct Landed {
    state: Mutex<(u64, u64)>,
    changed: Condvar,
}

impl Landed {
    /// Records an event at `ns`.
    fn record(&self, ns: u64) {
        let mut state = self.state.lock().unwrap();
        *state = (state.0 + 1, ns);
        self.changed.notify_all();
    }

    /// The number of events so far.
    fn count(&self) -> u64 {
        self.state.lock().unwrap().0
    }

    /// Waits for the event after the `before`th and returns its time.
    fn wait_after(&self, before: u64, what: &str) -> u64 {
        let (state, timeout) = self
            .changed
            .wait_timeout_while(self.state.lock().unwrap(), Duration::from_secs(10), |s| {
                s.0 == before
            })
            .unwrap();
        assert!(!timeout.timed_out(), "{what} was lost");
        state.1
    }
}

/// A booted minimal kernel in interrupt mode, its vCPU on a runner thread whose handler
/// timestamps every vector report that exits.
struct IrqGuest {
    vm: Arc<dyn Vm>,
    epoch: Instant,
    /// Reports seen by the vCPU thread, and the time of the last (ns since `epoch`).
    reports: Arc<Landed>,
    running: Option<VmRunner>,
}

impl IrqGuest {
    fn boot() -> IrqGuest {
        let hv = vmkit::open().unwrap();
        let vm: Arc<dyn Vm> = Arc::from(hv.create_vm(&VmConfig::default().irqchip(true)).unwrap());
        let ram = MemoryRegion::anonymous(GuestAddress(0), 4 << 20, MemoryFlags::empty()).unwrap();
        vm.add_memory_region(ram).unwrap();
        let memory = vm.memory();
        let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None).unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        vcpu.set_cpuid(&hv.supported_cpuid()).unwrap();
        entry::configure_long_mode(vcpu.as_ref(), &memory, kernel.kernel_load.0).unwrap();
        let mut regs = vcpu.regs().unwrap();
        regs.rdx = minimal::ENTRY_FLAG_INTERRUPTS;
        vcpu.set_regs(&regs).unwrap();

        let epoch = Instant::now();
        let reports = Arc::new(Landed::default());
        let ready = Arc::new(AtomicBool::new(false));
        let handler = {
            let (reports, ready) = (Arc::clone(&reports), Arc::clone(&ready));
            let line = Mutex::new(Vec::new());
            runner::from_fn(move |_, exit| {
                match exit {
                    VcpuExit::IoIn { data, .. } => data.fill(minimal::LSR_THR_EMPTY),
                    VcpuExit::IoOut { port, data, .. } => match *port {
                        minimal::IRQ_REPORT_PORT => {
                            reports.record(epoch.elapsed().as_nanos() as u64)
                        }
                        minimal::SERIAL_PORT => {
                            let mut line = line.lock().unwrap();
                            line.extend_from_slice(data);
                            if line.ends_with(format!("{}\n", minimal::IRQ_READY).as_bytes()) {
                                ready.store(true, Ordering::SeqCst);
                            }
                        }
                        _ => {}
                    },
                    other => return ExitAction::unhandled(other),
                }
                ExitAction::Continue
            })
        };
        // The vCPU on its own thread, as a VMM runs it: the library's runner.
        let running = VmRunner::start(vec![vcpu], handler).unwrap();
        let start = Instant::now();
        while !ready.load(Ordering::SeqCst) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the guest never got ready"
            );
            thread::sleep(Duration::from_millis(1));
        }
        // The UART's THR-empty interrupt is not wired here, so no report is pending.
        IrqGuest {
            vm,
            epoch,
            reports,
            running: Some(running),
        }
    }

    /// Runs `raise`, waits for the report it causes, and returns the latency.
    fn latency(&self, raise: impl FnOnce()) -> Duration {
        let before = self.reports.count();
        let t0 = self.epoch.elapsed();
        raise();
        Duration::from_nanos(self.reports.wait_after(before, "the interrupt")) - t0
    }
}

impl Drop for IrqGuest {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop_all();
            let _ = running.join_timeout(Duration::from_secs(30));
        }
    }
}

fn inject_to_handler(c: &mut Criterion) {
    let guest = IrqGuest::boot();
    let gsi = 5;
    let irqfd = EventFd::new(0).unwrap();
    guest.vm.register_irqfd(&irqfd, gsi, None).unwrap();
    let mut group = c.benchmark_group("inject_to_handler");
    group.bench_function("irqfd", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| guest.latency(|| irqfd.write(1).unwrap()))
                .sum()
        })
    });
    group.bench_function("set_irq_line", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    guest.latency(|| {
                        guest.vm.set_irq_line(gsi, true).unwrap();
                        guest.vm.set_irq_line(gsi, false).unwrap();
                    })
                })
                .sum()
        })
    });
    group.bench_function("msi", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| guest.latency(|| guest.vm.signal_msi(MsiMessage::x86(0, 0x38)).unwrap()))
                .sum()
        })
    });
    group.finish();
}

fn guest_write_to_host(c: &mut Criterion) {
    let guest = IrqGuest::boot();
    let mut group = c.benchmark_group("guest_write_to_host");
    group.bench_function("exit_to_vcpu_thread", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| guest.latency(|| guest.vm.signal_msi(MsiMessage::x86(0, 0x39)).unwrap()))
                .sum()
        })
    });

    // The same report, now caught by an ioeventfd that a host thread blocks on.
    let fd = Arc::new(EventFd::new(0).unwrap());
    let addr = IoEventAddress::Pio(minimal::IRQ_REPORT_PORT);
    guest
        .vm
        .register_ioeventfd(&fd, addr, DataMatch::Any)
        .unwrap();
    let woke = Arc::new(Landed::default());
    let done = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (fd, woke, done, epoch) = (
            Arc::clone(&fd),
            Arc::clone(&woke),
            Arc::clone(&done),
            guest.epoch,
        );
        thread::spawn(move || {
            while fd.read().is_ok() && !done.load(Ordering::SeqCst) {
                woke.record(epoch.elapsed().as_nanos() as u64);
            }
        })
    };
    group.bench_function("ioeventfd", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let before = woke.count();
                let t0 = guest.epoch.elapsed();
                guest.vm.signal_msi(MsiMessage::x86(0, 0x39)).unwrap();
                total += Duration::from_nanos(woke.wait_after(before, "the write")) - t0;
            }
            total
        })
    });
    group.finish();
    done.store(true, Ordering::SeqCst);
    fd.write(1).unwrap();
    waiter.join().unwrap();
}

criterion_group!(benches, inject_to_handler, guest_write_to_host);
criterion_main!(benches);
