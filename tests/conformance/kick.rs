//! Kicking vCPUs out of `run()`: before, during and between runs, from other threads, with no
//! kick lost.

use vmkit::Hypervisor;

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::long_mode_vm;
use vmkit::VcpuExit;
// SPIN: `jmp` to itself. PIO_LOOP: `out` to port 0x81 and back, forever (not port 0x80: by
// default Xen lets HVM guests reach the real port 0x80, so byte accesses to it never exit).
use vmkit_guests::snippets::{BYTE_REPORT_PORT, HLT, PIO_LOOP, SPIN};

/// A liveness bound, not a performance threshold: a lost kick would wait forever.
const GIVE_UP: Duration = Duration::from_secs(20);

pub fn a_kick_before_run_returns_without_entering_the_guest(hv: &dyn Hypervisor) {
    let mut t = long_mode_vm(hv, HLT);
    t.vcpu.kick_handle().kick();
    assert!(matches!(t.vcpu.run().unwrap(), VcpuExit::Kicked));
    // The kick was consumed: the guest now runs to its hlt.
    assert!(matches!(t.vcpu.run().unwrap(), VcpuExit::Hlt));
    assert_eq!(
        t.vcpu.regs().unwrap().rip,
        common::CODE_ADDR + HLT.len() as u64
    );
}

pub fn a_kick_stops_a_guest_that_never_exits(hv: &dyn Hypervisor) {
    let mut t = long_mode_vm(hv, SPIN);
    let kick = t.vcpu.kick_handle();
    let kicker = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        kick.kick();
    });
    assert!(matches!(t.vcpu.run().unwrap(), VcpuExit::Kicked));
    kicker.join().unwrap();
    let rip = t.vcpu.regs().unwrap().rip;
    assert_eq!(
        rip,
        common::CODE_ADDR,
        "the guest was spinning at its only instruction"
    );
}

pub fn every_kick_is_observed_under_stress(hv: &dyn Hypervisor) {
    const KICKS: u64 = 2000;
    let mut t = long_mode_vm(hv, PIO_LOOP);
    let kick = t.vcpu.kick_handle();
    let observed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let kicker = {
        let observed = Arc::clone(&observed);
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            for i in 1..=KICKS {
                // xorshift: a pseudo-random pause so kicks land before, during and between runs.
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let pause = Instant::now();
                while pause.elapsed() < Duration::from_micros(seed % 40) {
                    std::hint::spin_loop();
                }
                kick.kick();
                let start = Instant::now();
                while observed.load(Ordering::SeqCst) < i {
                    assert!(start.elapsed() < GIVE_UP, "kick {i} was never observed");
                    thread::yield_now();
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    let mut exits = 0u64;
    while !done.load(Ordering::SeqCst) {
        match t.vcpu.run().unwrap() {
            VcpuExit::Kicked => {
                observed.fetch_add(1, Ordering::SeqCst);
            }
            VcpuExit::IoOut {
                port: BYTE_REPORT_PORT,
                ..
            } => exits += 1,
            VcpuExit::Interrupted => {}
            other => panic!("unexpected exit {other:?}"),
        }
        // Sometimes linger between runs, where a kick must be kept for the next run().
        if exits % 16 == 3 {
            thread::yield_now();
        }
    }
    kicker.join().unwrap();
    assert_eq!(observed.load(Ordering::SeqCst), KICKS);
    assert!(exits > 0, "the guest ran between kicks");
}

/// Several threads kick one running vCPU at once, so kicks land while the vCPU is consuming
/// another one (the window of the race where a kick's late `immediate_exit` or signal ended
/// the next `KVM_RUN` as `Interrupted`). Nothing else signals the vCPU thread, so every early
/// return must be `Kicked`, and every kick must be followed by a `Kicked` report.
pub fn kicks_are_always_reported_as_kicked(hv: &dyn Hypervisor) {
    const KICKERS: u64 = 3;
    const KICKS: u64 = 1000;
    let mut t = long_mode_vm(hv, PIO_LOOP);
    let observed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let kickers: Vec<_> = (0..KICKERS)
        .map(|k| {
            let (kick, observed, done) = (
                t.vcpu.kick_handle(),
                Arc::clone(&observed),
                Arc::clone(&done),
            );
            thread::spawn(move || {
                let mut seed = 0x2545_f491_4f6c_dd1du64 ^ k;
                for i in 0..KICKS {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if seed.is_multiple_of(4) {
                        thread::yield_now();
                    }
                    let before = observed.load(Ordering::SeqCst);
                    kick.kick();
                    // Kicks merge, but one made after `before` must be reported after it.
                    let start = Instant::now();
                    while observed.load(Ordering::SeqCst) == before {
                        assert!(start.elapsed() < GIVE_UP, "kicker {k}: kick {i} never seen");
                        thread::yield_now();
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    let (mut interrupted, mut exits) = (0u64, 0u64);
    // Liveness, not speed: the run fails only if no kick is reported for GIVE_UP (3000 kicks
    // take seconds on a loaded host, each a round trip through the hypervisor).
    let mut progress = (0u64, Instant::now());
    while done.load(Ordering::SeqCst) < KICKERS {
        let seen = observed.load(Ordering::SeqCst);
        if seen != progress.0 {
            progress = (seen, Instant::now());
        }
        assert!(
            progress.1.elapsed() < GIVE_UP,
            "no kick reported for {GIVE_UP:?} after {seen} of them"
        );
        match t.vcpu.run().unwrap() {
            VcpuExit::Kicked => {
                observed.fetch_add(1, Ordering::SeqCst);
                // Linger sometimes, as a paused vCPU does, so late steps of a kick land here.
                if observed.load(Ordering::SeqCst).is_multiple_of(8) {
                    thread::yield_now();
                }
            }
            VcpuExit::Interrupted => interrupted += 1,
            VcpuExit::IoOut { port: 0x81, .. } => exits += 1,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    for kicker in kickers {
        kicker.join().unwrap();
    }
    assert_eq!(interrupted, 0, "kicks were reported as Interrupted");
    assert!(exits > 0, "the guest ran between kicks");
}

pub fn a_kick_handle_outliving_its_vcpu_is_harmless(hv: &dyn Hypervisor) {
    let t = long_mode_vm(hv, SPIN);
    let kick = t.vcpu.kick_handle();
    let clone = kick.clone();
    drop(t);
    kick.kick();
    clone.kick();
}

pub fn kicks_follow_the_vcpu_to_another_thread(hv: &dyn Hypervisor) {
    let mut t = long_mode_vm(hv, SPIN);
    let kick = t.vcpu.kick_handle();
    // The vCPU first runs (and is kicked) on this thread, then moves to another one.
    kick.kick();
    assert!(matches!(t.vcpu.run().unwrap(), VcpuExit::Kicked));
    let mut vcpu = t.vcpu;
    let runner = thread::spawn(move || matches!(vcpu.run().unwrap(), VcpuExit::Kicked));
    thread::sleep(Duration::from_millis(50));
    kick.kick();
    assert!(runner.join().unwrap());
}

/// The kick handle a signal handler uses in `a_signal_handler_can_kick`.
static SIGNAL_KICK: std::sync::OnceLock<vmkit::KickHandle> = std::sync::OnceLock::new();

extern "C" fn kick_from_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    if let Some(kick) = SIGNAL_KICK.get() {
        kick.kick();
    }
}

pub fn a_signal_handler_can_kick(hv: &dyn Hypervisor) {
    let mut t = long_mode_vm(hv, SPIN);
    if SIGNAL_KICK.set(t.vcpu.kick_handle()).is_err() {
        panic!("this scenario runs once per process");
    }
    vmm_sys_util::signal::register_signal_handler(libc::SIGUSR2, kick_from_handler).unwrap();
    let sender = thread::spawn(|| {
        thread::sleep(Duration::from_millis(50));
        // A process-directed signal: whichever thread takes it runs the handler.
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGUSR2) };
    });
    loop {
        match t.vcpu.run().unwrap() {
            VcpuExit::Kicked => break,
            // The signal may land on this thread and interrupt KVM_RUN before the kick.
            VcpuExit::Interrupted => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
    sender.join().unwrap();
}

crate::scenarios![
    a_signal_handler_can_kick,
    a_kick_before_run_returns_without_entering_the_guest,
    a_kick_stops_a_guest_that_never_exits,
    every_kick_is_observed_under_stress,
    kicks_are_always_reported_as_kicked,
    a_kick_handle_outliving_its_vcpu_is_harmless,
    kicks_follow_the_vcpu_to_another_thread,
];
