//! The library's vCPU runner: commands reach vCPUs inside `run()`, paused vCPUs save and
//! restore their state, and a vCPU that fails, panics, powers off or halts stops the VM
//! without leaving anyone waiting.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use vmkit::runner::{
    self, ExitAction, RunnerError, RunnerOptions, StopReason, VcpuOutcome, VmRunner,
};
use vmkit::snapshot::{self, Features};
use vmkit::vm_memory::{Bytes, GuestAddress};
use vmkit::{Hypervisor, HypervisorKind, VcpuExit, VmConfig};

use crate::common;
use crate::common::guest::GIVE_UP;
use crate::pause::{counting, totals, vm_running, wait_all_ran};
// SPIN: `jmp` to itself. PIO_LOOP: `out` to BYTE_REPORT_PORT and back, forever.
// TRIPLE_FAULT: an empty IDT, then ud2.
use vmkit_guests::snippets::{PIO_LOOP, SPIN, TRIPLE_FAULT};

fn options() -> RunnerOptions {
    crate::common::runner_options().command_timeout(GIVE_UP)
}

fn outcomes(running: VmRunner) -> Vec<Result<VcpuOutcome, RunnerError>> {
    let finished = running.join_timeout(GIVE_UP).unwrap();
    finished.into_iter().map(|f| f.outcome).collect()
}

pub fn commands_reach_vcpus_that_never_exit(hv: &dyn Hypervisor) {
    let (_vm, vcpus) = vm_running(hv, 2, SPIN);
    let handler = runner::from_fn(|_, exit| ExitAction::unhandled(exit));
    let running = VmRunner::start_with(vcpus, handler, options()).unwrap();
    for vcpu in running.vcpus() {
        // Each answer comes from the vCPU's own thread, which had to be kicked out of run().
        let rip = vcpu.with_vcpu(|v| v.regs().unwrap().rip).unwrap();
        assert_eq!(rip, common::CODE_ADDR, "vCPU {}", vcpu.id());
    }
    // Resuming a vCPU that is not paused is answered too.
    running.resume_all().unwrap();
    running.pause_all().unwrap();
    running.resume_all().unwrap();
    running.vcpus()[1].stop().unwrap();
    running.stop_all();
    for outcome in outcomes(running) {
        assert_eq!(outcome.unwrap(), VcpuOutcome::Stopped);
    }
}

pub fn a_runner_started_paused_runs_nothing_until_resumed(hv: &dyn Hypervisor) {
    const VCPUS: u32 = 2;
    let (_vm, vcpus) = vm_running(hv, VCPUS, PIO_LOOP);
    let (counters, handler) = counting(VCPUS);
    let running = VmRunner::start_with(vcpus, handler, options().start_paused(true)).unwrap();
    // Not a performance bound: a paused vCPU must not run at all, for however long.
    thread::sleep(Duration::from_millis(30));
    assert_eq!(totals(&counters), [0, 0]);
    for vcpu in running.vcpus() {
        let rip = vcpu.with_vcpu(|v| v.regs().unwrap().rip).unwrap();
        assert_eq!(rip, common::CODE_ADDR, "vCPU {} never ran", vcpu.id());
    }
    running.resume_all().unwrap();
    wait_all_ran(&counters, &[0, 0]);
    running.stop_all();
    for outcome in outcomes(running) {
        assert_eq!(outcome.unwrap(), VcpuOutcome::Stopped);
    }
}

pub fn paused_vcpus_save_and_restore_their_state(hv: &dyn Hypervisor) {
    const VCPUS: u32 = 2;
    let config = VmConfig::default().max_vcpus(VCPUS);
    let (_vm, vcpus) = vm_running(hv, VCPUS, PIO_LOOP);
    let msrs = snapshot::readable_msrs(vcpus[0].as_ref(), &hv.msr_index_list());
    let features = Features::for_vm(&config, hv.capabilities());
    let (counters, handler) = counting(VCPUS);
    let running = VmRunner::start_with(vcpus, handler, options()).unwrap();
    wait_all_ran(&counters, &[0; VCPUS as usize]);

    let saved = running.save_all(&msrs, features).unwrap();
    let frozen = totals(&counters);
    assert_eq!(saved.iter().map(|s| s.id).collect::<Vec<_>>(), [0, 1]);
    for state in &saved {
        let rip = state.regs.rip;
        assert!(
            (common::CODE_ADDR..common::CODE_ADDR + PIO_LOOP.len() as u64).contains(&rip),
            "vCPU {} is in its loop: {rip:#x}",
            state.id
        );
    }
    // Still paused: saving again (all at once, and one vCPU alone) reads the same registers.
    let again = running.save_states(&msrs, features).unwrap();
    assert_eq!(again.iter().map(|s| s.id).collect::<Vec<_>>(), [0, 1]);
    for (first, second) in saved.iter().zip(&again) {
        assert_eq!(first.regs, second.regs, "vCPU {}", first.id);
    }
    let alone = running.vcpus()[1].save_state(&msrs, features).unwrap();
    assert_eq!(alone.regs, saved[1].regs);
    assert_eq!(
        totals(&counters),
        frozen,
        "save_all leaves the vCPUs paused"
    );

    // Mark vCPU 0's rax, let both run, and load the saved state back: the mark is gone.
    let vcpu0 = &running.vcpus()[0];
    vcpu0
        .with_vcpu(|v| {
            let mut regs = v.regs().unwrap();
            regs.rax = 0x5eed;
            v.set_regs(&regs).unwrap();
        })
        .unwrap();
    running.resume_all().unwrap();
    wait_all_ran(&counters, &frozen);
    vcpu0.pause().unwrap();
    let cpuid_now = vcpu0.with_vcpu(|v| v.cpuid().unwrap()).unwrap();
    let changed: Vec<_> = cpuid_now
        .iter()
        .zip(&saved[0].cpuid)
        .filter(|(now, then)| now != then)
        .collect();
    assert!(
        changed.is_empty() && cpuid_now.len() == saved[0].cpuid.len(),
        "the CPUID of vCPU 0 changed while it ran ({} entries, {} saved): {changed:x?}",
        cpuid_now.len(),
        saved[0].cpuid.len()
    );
    vcpu0.restore_state(&saved[0]).unwrap();
    let regs = vcpu0.with_vcpu(|v| v.regs().unwrap()).unwrap();
    assert_eq!(regs.rax, saved[0].regs.rax);
    assert_eq!(regs.rip, saved[0].regs.rip);
    vcpu0.resume().unwrap();
    wait_all_ran(&counters, &totals(&counters));

    running.stop_all();
    for outcome in outcomes(running) {
        assert_eq!(outcome.unwrap(), VcpuOutcome::Stopped);
    }
}

pub fn a_failing_handler_stops_the_vm_and_names_its_vcpu(hv: &dyn Hypervisor) {
    let (_vm, vcpus) = vm_running(hv, 3, PIO_LOOP);
    let exits = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&exits);
    let handler = runner::from_fn(move |id, exit| {
        if id == 1 && seen.fetch_add(1, Ordering::SeqCst) == 50 {
            return ExitAction::unhandled(exit);
        }
        ExitAction::Continue
    });
    let running = VmRunner::start_with(vcpus, handler, options()).unwrap();
    let failed = running.vcpus()[1].clone();
    assert!(running.wait_stopping(GIVE_UP), "the VM never stopped");
    let ended = outcomes(running);
    match &ended[1] {
        Err(RunnerError::Handler { vcpu: 1, source }) => {
            assert!(source.to_string().contains("IoOut"), "{source}");
        }
        other => panic!("vCPU 1 should have failed in its handler: {other:?}"),
    }
    for i in [0, 2] {
        assert_eq!(
            ended[i].as_ref().unwrap(),
            &VcpuOutcome::Stopped,
            "vCPU {i}"
        );
    }
    match failed.pause() {
        Err(RunnerError::Ended {
            vcpu: 1,
            command: "pause",
        }) => {}
        other => panic!("a command to an ended vCPU must fail: {other:?}"),
    }
}

pub fn a_triple_fault_is_reported_with_rip_and_code(hv: &dyn Hypervisor) {
    // lidt of an empty IDT, then ud2: the #UD cannot be delivered, the vCPU shuts down.
    let code = TRIPLE_FAULT;
    let (vm, vcpus) = vm_running(hv, 1, code);
    let handler = runner::from_fn(|_, exit| ExitAction::unhandled(exit));
    let running = VmRunner::start_with(vcpus, handler, options()).unwrap();
    let (stop, source) = match outcomes(running).pop().unwrap() {
        Err(RunnerError::GuestStopped {
            vcpu: 0,
            stop,
            source,
        }) => (stop, source),
        other => panic!("the triple fault should stop the guest: {other:?}"),
    };
    assert_eq!(stop.reason, StopReason::Shutdown);
    assert!(source.to_string().contains("Shutdown"), "{source}");
    if stop.registers_reset {
        // AMD SVM: KVM resets the vCPU after a shutdown, so where it faulted is gone; the
        // error says so rather than naming the reset vector.
        assert_eq!((stop.rip, stop.bytes.len()), (None, 0));
        let message = stop.to_string();
        assert!(message.contains("reset the vCPU"), "{message}");
        return;
    }
    // The fault is the ud2's, which did not complete.
    let ud2 = code.windows(2).position(|w| w == [0x0f, 0x0b]).unwrap();
    let rip = common::CODE_ADDR + u64::try_from(ud2).unwrap();
    assert_eq!(stop.rip, Some(rip));
    // The bytes are the guest's own at rip (identity-mapped), when the backend reads them.
    if hv.kind() == HypervisorKind::Kvm || !stop.bytes.is_empty() {
        let mut memory = vec![0u8; stop.bytes.len().max(2)];
        vm.memory()
            .read_slice(&mut memory, GuestAddress(rip))
            .unwrap();
        assert_eq!(stop.bytes, memory);
        assert_eq!(
            stop.bytes.len(),
            15,
            "a full instruction's worth: {:02x?}",
            stop.bytes
        );
    }
    let message = RunnerError::GuestStopped {
        vcpu: 0,
        stop,
        source,
    }
    .to_string();
    assert!(
        message.starts_with(&format!(
            "vCPU 0 stopped: the guest triple-faulted at rip {rip:#x}"
        )),
        "{message}"
    );
}

pub fn a_panicking_handler_stops_the_vm(hv: &dyn Hypervisor) {
    let (_vm, vcpus) = vm_running(hv, 3, PIO_LOOP);
    let handler = runner::from_fn(|id, _| {
        if id == 2 {
            panic!("the device model of vCPU 2 broke");
        }
        ExitAction::Continue
    });
    let running = VmRunner::start_with(vcpus, handler, options()).unwrap();
    let finished = running.join_timeout(GIVE_UP).unwrap();
    match &finished[2].outcome {
        Err(RunnerError::Panicked { vcpu: 2, message }) => {
            assert!(message.contains("broke"), "{message}");
        }
        other => panic!("vCPU 2 should have panicked: {other:?}"),
    }
    assert!(finished[2].vcpu.is_none());
    for i in [0, 1] {
        assert_eq!(finished[i].outcome.as_ref().unwrap(), &VcpuOutcome::Stopped);
        assert!(finished[i].vcpu.is_some(), "vCPU {i} is handed back");
    }
}

pub fn power_off_and_halt_end_the_vm(hv: &dyn Hypervisor) {
    // vCPUs 1 and 2 halt at their first exit, vCPU 0 powers off once both have: halted vCPUs
    // wait for the end.
    let (_vm, vcpus) = vm_running(hv, 3, PIO_LOOP);
    let halted = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&halted);
    let handler = runner::from_fn(move |id, _| match id {
        0 if seen.load(Ordering::SeqCst) == 2 => ExitAction::PowerOff,
        0 => ExitAction::Continue,
        _ => {
            seen.fetch_add(1, Ordering::SeqCst);
            ExitAction::Halt
        }
    });
    let running = VmRunner::start_with(vcpus, handler, options()).unwrap();
    let ended: Vec<_> = outcomes(running).into_iter().map(Result::unwrap).collect();
    assert_eq!(
        ended,
        [
            VcpuOutcome::PowerOff,
            VcpuOutcome::Halted,
            VcpuOutcome::Halted
        ]
    );

    // When every vCPU halts, the VM stops by itself.
    let (_vm, vcpus) = vm_running(hv, 2, PIO_LOOP);
    let handler = runner::from_fn(|_, exit| match exit {
        VcpuExit::IoOut { .. } => ExitAction::Halt,
        other => ExitAction::unhandled(other),
    });
    let running = VmRunner::start_with(vcpus, handler, options()).unwrap();
    let ended: Vec<_> = outcomes(running).into_iter().map(Result::unwrap).collect();
    assert_eq!(ended, [VcpuOutcome::Halted, VcpuOutcome::Halted]);
}

pub fn a_command_to_a_stuck_handler_times_out(hv: &dyn Hypervisor) {
    let (_vm, vcpus) = vm_running(hv, 1, PIO_LOOP);
    let release = Arc::new(AtomicBool::new(false));
    let entered = Arc::new(AtomicBool::new(false));
    let (wait, mark) = (Arc::clone(&release), Arc::clone(&entered));
    let handler = runner::from_fn(move |_, _| {
        mark.store(true, Ordering::SeqCst);
        // Stuck until the test lets go (bounded, so a failed test cannot hang).
        let start = std::time::Instant::now();
        while !wait.load(Ordering::SeqCst) && start.elapsed() < GIVE_UP {
            thread::sleep(Duration::from_millis(1));
        }
        ExitAction::Continue
    });
    // The handler is held for as long as the test wants: this timeout must expire.
    let timeout = Duration::from_millis(100);
    let options = crate::common::runner_options().command_timeout(timeout);
    let running = VmRunner::start_with(vcpus, handler, options).unwrap();
    while !entered.load(Ordering::SeqCst) {
        thread::yield_now();
    }
    match running.vcpus()[0].pause() {
        Err(RunnerError::Timeout {
            vcpu: 0,
            command: "pause",
            ..
        }) => {}
        other => panic!("expected a timeout: {other:?}"),
    }
    release.store(true, Ordering::SeqCst);
    running.stop_all();
    assert_eq!(
        outcomes(running).pop().unwrap().unwrap(),
        VcpuOutcome::Stopped
    );
}

crate::scenarios![
    commands_reach_vcpus_that_never_exit,
    a_runner_started_paused_runs_nothing_until_resumed,
    paused_vcpus_save_and_restore_their_state => crate::state_writes_mid_io,
    a_failing_handler_stops_the_vm_and_names_its_vcpu,
    a_triple_fault_is_reported_with_rip_and_code,
    a_panicking_handler_stops_the_vm,
    power_off_and_halt_end_the_vm,
    a_command_to_a_stuck_handler_times_out,
];
