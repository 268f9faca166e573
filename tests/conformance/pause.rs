//! Pausing and resuming all vCPUs of a VM, each running on its own thread.

use vmkit::Hypervisor;

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmkit::pause::VcpuPauser;
use vmkit::{MemoryFlags, MemoryRegion, VcpuExit, VmConfig};
use vmkit_boot::entry;

/// again: out 0x81, al; jmp again  (not port 0x80: by default Xen lets HVM guests reach the
/// real port 0x80, so byte accesses to it never exit)
const PIO_LOOP: [u8; 4] = [0xe6, 0x81, 0xeb, 0xfc];

pub fn pause_stops_every_vcpu_and_resume_restarts_them(hv: &dyn Hypervisor) {
    const VCPUS: u32 = 3;
    let vm = hv.create_vm(&VmConfig::default().max_vcpus(VCPUS)).unwrap();
    let ram =
        MemoryRegion::anonymous(GuestAddress(0), common::RAM_SIZE, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let memory = vm.memory();
    memory
        .write_slice(&PIO_LOOP, GuestAddress(common::CODE_ADDR))
        .unwrap();

    let pauser = VcpuPauser::new();
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = (0..VCPUS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut threads = Vec::new();
    for id in 0..VCPUS {
        let mut vcpu = vm.create_vcpu(id).unwrap();
        entry::configure_long_mode(vcpu.as_ref(), &memory, common::CODE_ADDR).unwrap();
        let registration = pauser.register(vcpu.kick_handle());
        let (pauser, stop, exits) = (
            pauser.clone(),
            Arc::clone(&stop),
            Arc::clone(&counters[id as usize]),
        );
        threads.push(thread::spawn(move || {
            let _registration = registration;
            while !stop.load(Ordering::SeqCst) {
                match vcpu.run().unwrap() {
                    VcpuExit::Kicked => pauser.park_if_paused(),
                    VcpuExit::IoOut { port: 0x81, .. } => {
                        exits.fetch_add(1, Ordering::SeqCst);
                    }
                    other => panic!("unexpected exit {other:?}"),
                }
            }
        }));
    }
    let total = || {
        counters
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    };

    thread::sleep(Duration::from_millis(30));
    for _ in 0..5 {
        pauser.pause();
        let frozen = total();
        thread::sleep(Duration::from_millis(30));
        assert_eq!(total(), frozen, "a paused vCPU ran");
        pauser.resume();
        // Every vCPU runs again after the resume.
        let before = total();
        while total().iter().zip(&before).any(|(now, then)| now == then) {
            thread::yield_now();
        }
    }

    stop.store(true, Ordering::SeqCst);
    pauser.pause(); // kicks everyone out of run(); they see `stop` after resuming
    pauser.resume();
    for t in threads {
        t.join().unwrap();
    }
    // With every thread gone, a pause has nothing to wait for.
    pauser.pause();
    assert!(pauser.is_paused());
}

crate::scenarios![pause_stops_every_vcpu_and_resume_restarts_them];
