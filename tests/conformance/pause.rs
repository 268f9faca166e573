//! Pausing and resuming all vCPUs of a VM, each running on its own thread of a `VmRunner`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmkit::runner::{self, ExitAction, VcpuOutcome, VmRunner};
use vmkit::{Hypervisor, MemoryFlags, MemoryRegion, Vcpu, VcpuExit, Vm, VmConfig};
use vmkit_boot::entry;
// PIO_LOOP: `out` of `al` to BYTE_REPORT_PORT (0x81, not 0x80: by default Xen lets HVM guests
// reach the real port 0x80, so byte accesses to it never exit) and back, forever.
use vmkit_guests::snippets::{BYTE_REPORT_PORT, PIO_LOOP};

use crate::common;
use crate::common::guest::GIVE_UP;

/// A VM whose `vcpus` vCPUs all run `code` in long mode.
pub fn vm_running(
    hv: &dyn Hypervisor,
    vcpus: u32,
    code: &[u8],
) -> (Box<dyn Vm>, Vec<Box<dyn Vcpu>>) {
    let vm = hv.create_vm(&VmConfig::default().max_vcpus(vcpus)).unwrap();
    let ram =
        MemoryRegion::anonymous(GuestAddress(0), common::RAM_SIZE, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let memory = vm.memory();
    memory
        .write_slice(code, GuestAddress(common::CODE_ADDR))
        .unwrap();
    let vcpus = (0..vcpus)
        .map(|id| {
            let vcpu = vm.create_vcpu(id).unwrap();
            entry::configure_long_mode(vcpu.as_ref(), &memory, common::CODE_ADDR).unwrap();
            vcpu
        })
        .collect();
    (vm, vcpus)
}

/// Per-vCPU counts of [`BYTE_REPORT_PORT`] exits, and a handler that keeps them.
pub fn counting(vcpus: u32) -> (Arc<Vec<AtomicU64>>, Arc<dyn runner::ExitHandler>) {
    let counters: Arc<Vec<AtomicU64>> = Arc::new((0..vcpus).map(|_| AtomicU64::new(0)).collect());
    let counts = Arc::clone(&counters);
    let handler = runner::from_fn(move |id, exit| match exit {
        VcpuExit::IoOut {
            port: BYTE_REPORT_PORT,
            ..
        } => {
            counts[id as usize].fetch_add(1, Ordering::SeqCst);
            ExitAction::Continue
        }
        other => ExitAction::unhandled(other),
    });
    (counters, handler)
}

pub fn totals(counters: &[AtomicU64]) -> Vec<u64> {
    counters.iter().map(|c| c.load(Ordering::SeqCst)).collect()
}

/// Waits (up to `GIVE_UP`) until every counter has moved past `before`.
pub fn wait_all_ran(counters: &[AtomicU64], before: &[u64]) {
    let start = Instant::now();
    while totals(counters)
        .iter()
        .zip(before)
        .any(|(now, then)| now == then)
    {
        assert!(start.elapsed() < GIVE_UP, "a vCPU never ran again");
        thread::yield_now();
    }
}

pub fn pause_stops_every_vcpu_and_resume_restarts_them(hv: &dyn Hypervisor) {
    const VCPUS: u32 = 3;
    let (_vm, vcpus) = vm_running(hv, VCPUS, PIO_LOOP);
    let (counters, handler) = counting(VCPUS);
    let options = crate::common::runner_options().command_timeout(GIVE_UP);
    let running = VmRunner::start_with(vcpus, handler, options).unwrap();

    wait_all_ran(&counters, &[0; VCPUS as usize]);
    for _ in 0..5 {
        running.pause_all().unwrap();
        let frozen = totals(&counters);
        // Not a performance bound: a paused vCPU must not run at all, for however long.
        thread::sleep(Duration::from_millis(30));
        assert_eq!(totals(&counters), frozen, "a paused vCPU ran");
        running.resume_all().unwrap();
        // Every vCPU runs again after the resume.
        wait_all_ran(&counters, &frozen);
    }

    running.stop_all();
    let finished = running.join_timeout(GIVE_UP).unwrap();
    for finished in finished {
        assert_eq!(finished.outcome.unwrap(), VcpuOutcome::Stopped);
    }
}

crate::scenarios![pause_stops_every_vcpu_and_resume_restarts_them];
