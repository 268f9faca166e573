//! The conformance suite: one set of guest scenarios, written once against the public traits
//! and run against every backend compiled in and usable on this host.
//!
//! Each scenario prints one line (`ok`, `FAILED` or `skipped` with the reason); the run ends
//! with `N passed, M failed, K skipped` and fails if any scenario failed.
//!
//! ```text
//! cargo test --test conformance                     # every scenario, every backend
//! cargo test --test conformance -- pause            # scenarios whose name contains `pause`
//! cargo test --test conformance -- --exact runner::a_panicking_handler_stops_the_vm
//! cargo test --test conformance -- --list           # the names, libtest style; runs nothing
//! ```
//!
//! The binary has its own `main` (`harness = false`) and takes the libtest options a runner
//! of the whole workspace passes: `--list` (with `--ignored`, an empty list: no scenario is
//! ignored), a name filter, `--exact`; `--ignored` alone runs nothing.
//!
//! Each scenario runs on a thread of its own; one still running after
//! `VMKIT_CONFORMANCE_TIMEOUT` seconds (default 600, a liveness bound) fails the run, which
//! ends there, instead of hanging it.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod balloon;
mod dirty;
mod exits;
mod interrupts;
mod kick;
mod minimal_kernel;
mod pause;
mod platform;
mod pool;
mod runner;
mod smp;
mod snapshot;
mod snapshot_files;
mod state;
mod virtio;
mod vm;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmkit::{Capabilities, Hypervisor};

/// Why a backend cannot run a scenario, if it cannot.
type Requirement = fn(&Capabilities) -> Option<&'static str>;

/// One guest scenario.
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) run: fn(&dyn Hypervisor),
    pub(crate) requires: Requirement,
}

/// Every scenario can run.
pub(crate) fn anything(_: &Capabilities) -> Option<&'static str> {
    None
}

pub(crate) fn irqchip(caps: &Capabilities) -> Option<&'static str> {
    let all = caps.irqchip && caps.irqfd && caps.msi && caps.gsi_routing;
    (!all).then_some("needs an in-kernel irqchip with irqfd, MSI and GSI routing")
}

pub(crate) fn split_irqchip(caps: &Capabilities) -> Option<&'static str> {
    let all = caps.split_irqchip && caps.irqfd && caps.msi && caps.gsi_routing;
    (!all)
        .then_some("needs a split irqchip (KVM_CAP_SPLIT_IRQCHIP) with irqfd, MSI and GSI routing")
}

/// An irqchip whose PIC and IOAPIC state can be read and written.
pub(crate) fn irqchip_state(caps: &Capabilities) -> Option<&'static str> {
    irqchip(caps).or_else(|| {
        (!caps.irqchip_state).then_some("needs the irqchip's PIC and IOAPIC state access")
    })
}

/// An irqchip with level-triggered irqfds (resample).
pub(crate) fn irqfd_resample(caps: &Capabilities) -> Option<&'static str> {
    irqchip(caps).or_else(|| {
        (!caps.irqfd_resample).then_some("needs level-triggered irqfds (resample on EOI)")
    })
}

pub(crate) fn pit(caps: &Capabilities) -> Option<&'static str> {
    (!(caps.irqchip && caps.pit)).then_some("needs an in-kernel irqchip and PIT")
}

pub(crate) fn ioeventfd(caps: &Capabilities) -> Option<&'static str> {
    (!caps.ioeventfd).then_some("needs ioeventfd")
}

pub(crate) fn guest_debug(caps: &Capabilities) -> Option<&'static str> {
    (!caps.guest_debug).then_some("needs single-stepping and hardware breakpoints")
}

pub(crate) fn read_only_memory(caps: &Capabilities) -> Option<&'static str> {
    (!caps.read_only_memory).then_some("needs read-only memory regions")
}

pub(crate) fn dirty_log(caps: &Capabilities) -> Option<&'static str> {
    (!caps.dirty_log).then_some("needs dirty-page logging")
}

pub(crate) fn dirty_ring(caps: &Capabilities) -> Option<&'static str> {
    (caps.dirty_ring_max_entries < 4096).then_some("needs dirty rings of 4096 entries")
}

pub(crate) fn xsave(caps: &Capabilities) -> Option<&'static str> {
    (!(caps.xsave && caps.xcrs)).then_some("needs XSAVE and XCR state access")
}

pub(crate) fn clock(caps: &Capabilities) -> Option<&'static str> {
    (!caps.clock).then_some("needs the VM clock")
}

pub(crate) fn vcpu_events(caps: &Capabilities) -> Option<&'static str> {
    (!caps.vcpu_events).then_some("needs pending-event (vCPU events) state")
}

/// What `vmkit::snapshot::save` captures besides registers: pending events and the VM
/// clock. XSAVE state goes along where the host has it; without, the guest's CPUID offers
/// none and the legacy FPU state is all there is (`snapshot::Features::xsave`).
pub(crate) fn snapshots(caps: &Capabilities) -> Option<&'static str> {
    vcpu_events(caps).or_else(|| clock(caps))
}

/// A snapshot of a sparse region larger than the host's memory: RAM backed on first touch
/// and everything a full snapshot needs.
pub(crate) fn sparse_snapshots(caps: &Capabilities) -> Option<&'static str> {
    snapshots(caps).or_else(|| {
        (!caps.ram_on_demand).then_some(
            "needs guest RAM backed on first touch (Xen allocates every frame of a region)",
        )
    })
}

/// A snapshot of a VM without an irqchip on a host without XSAVE (its vCPUs' legacy FPU
/// state is saved instead) or a VM clock (Xen: the TSC MSR carries the guest's time):
/// pending events.
pub(crate) fn register_snapshots(caps: &Capabilities) -> Option<&'static str> {
    vcpu_events(caps)
}

/// Diff snapshots: dirty-page logging and everything a full snapshot needs.
pub(crate) fn diff_snapshots(caps: &Capabilities) -> Option<&'static str> {
    dirty_log(caps).or_else(|| snapshots(caps))
}

/// Loading a vCPU's state while it is paused in the middle of a port access, and what a
/// snapshot of it needs.
pub(crate) fn state_writes_mid_io(caps: &Capabilities) -> Option<&'static str> {
    snapshots(caps).or_else(|| {
        (!caps.state_writes_mid_io).then_some(
            "needs state writes to a vCPU paused inside an I/O access (a Xen vCPU keeps the \
             access in flight until it runs again)",
        )
    })
}

/// A balloon that gives RAM back (`vmkit::memory::discard` on the VMM's mapping), and what
/// a snapshot needs.
pub(crate) fn balloon_snapshots(caps: &Capabilities) -> Option<&'static str> {
    snapshots(caps).or_else(|| {
        (!caps.ram_on_demand).then_some(
            "needs guest RAM the VMM's mapping backs, to give back (Xen's guest frames are \
             Xen's own, which vmkit::memory::discard does not reach)",
        )
    })
}

/// The capabilities that `vm::capabilities_serialize_and_compare` takes away from a host to
/// compare it with a lesser one.
pub(crate) fn interrupt_plumbing_and_clock(caps: &Capabilities) -> Option<&'static str> {
    let all = caps.irqfd && caps.ioeventfd && caps.msi && caps.gsi_routing && caps.clock;
    (!all).then_some("needs irqfd, ioeventfd, MSI, GSI routing and the VM clock to compare")
}

/// Declares a module's scenarios: `scenarios![name, other => requirement, …]`.
#[macro_export]
macro_rules! scenarios {
    ($($name:ident $(=> $requires:path)?),* $(,)?) => {
        pub const SCENARIOS: &[$crate::Scenario] = &[$(
            $crate::Scenario {
                name: concat!(module_path!(), "::", stringify!($name)),
                run: $name,
                requires: $crate::scenarios!(@requires $($requires)?),
            },
        )*];
    };
    (@requires) => { $crate::anything };
    (@requires $requires:path) => { $requires };
}

/// A backend's name, and the backend or why it cannot be used here.
type Backend = (&'static str, Result<Arc<dyn Hypervisor>, String>);

/// Every backend this build has.
fn backends() -> Vec<Backend> {
    #[allow(unused_mut)] // Without the `xen` feature there is nothing to add.
    let mut backends: Vec<Backend> = vec![(
        "kvm",
        vmkit::kvm::Kvm::new()
            .map(|kvm| Arc::new(kvm) as Arc<dyn Hypervisor>)
            .map_err(|err| err.to_string()),
    )];
    #[cfg(feature = "xen")]
    backends.push((
        "xen",
        vmkit::xen::Xen::new()
            .map(|xen| Arc::new(xen) as Arc<dyn Hypervisor>)
            .map_err(|err| err.to_string()),
    ));
    backends
}

/// Names scenarios to skip on this host, with the reason: `name=reason;name=reason`. For a
/// host whose own limits a scenario runs into (the harness that sets it says which and why);
/// every skip is printed with its reason.
const SKIP_ENV: &str = "VMKIT_CONFORMANCE_SKIP";

fn skip_list() -> Vec<(String, String)> {
    std::env::var(SKIP_ENV)
        .unwrap_or_default()
        .split(';')
        .filter_map(|entry| entry.split_once('='))
        .map(|(name, reason)| (name.trim().to_owned(), reason.trim().to_owned()))
        .collect()
}

/// How long one scenario may run before the run fails as hung: a liveness bound, far above
/// what any scenario needs even under an emulator. `VMKIT_CONFORMANCE_TIMEOUT` (seconds)
/// overrides it.
const TIMEOUT_ENV: &str = "VMKIT_CONFORMANCE_TIMEOUT";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

fn scenario_timeout() -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
}

/// Runs a scenario on a thread of its own: `Some(passed)`, or `None` if it did not end
/// within `timeout` (a scenario that waits for something that never comes fails the run
/// instead of hanging it).
fn run_with_deadline(
    scenario: &Scenario,
    hv: &Arc<dyn Hypervisor>,
    timeout: Duration,
) -> Option<bool> {
    let (done, result) = mpsc::channel();
    let (run, hv) = (scenario.run, Arc::clone(hv));
    let spawned = std::thread::Builder::new()
        .name(short_name(scenario).to_owned())
        .spawn(move || {
            let passed = catch_unwind(AssertUnwindSafe(|| run(hv.as_ref()))).is_ok();
            let _ = done.send(passed);
        });
    if let Err(err) = spawned {
        println!("cannot start a thread for {}: {err}", scenario.name);
        return Some(false);
    }
    match result.recv_timeout(timeout) {
        Ok(passed) => Some(passed),
        Err(RecvTimeoutError::Disconnected) => Some(false),
        Err(RecvTimeoutError::Timeout) => None,
    }
}

/// A scenario's name without the crate prefix, e.g. `kick::a_signal_handler_can_kick`.
fn short_name(scenario: &Scenario) -> &'static str {
    scenario.name.trim_start_matches("conformance::")
}

/// The libtest command-line options this binary honours; others are ignored.
#[derive(Debug, Default)]
struct Arguments {
    list: bool,
    exact: bool,
    ignored: bool,
    terse: bool,
    filters: Vec<String>,
}

impl Arguments {
    fn parse(args: impl Iterator<Item = String>) -> Arguments {
        let mut parsed = Arguments::default();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--list" => parsed.list = true,
                "--exact" => parsed.exact = true,
                "--ignored" => parsed.ignored = true,
                "--format=terse" => parsed.terse = true,
                "--format" => parsed.terse = args.next().as_deref() == Some("terse"),
                // Options with a value that a runner may pass: skip the value.
                "--skip" | "--test-threads" | "--color" | "-Z" | "--logfile" => {
                    args.next();
                }
                other if other.starts_with('-') => {}
                filter => parsed.filters.push(filter.to_owned()),
            }
        }
        parsed
    }

    /// Whether the filters (any of them; none means all) select the scenario `name`.
    fn selects(&self, name: &str) -> bool {
        self.filters.is_empty()
            || self.filters.iter().any(|f| {
                if self.exact {
                    name == f
                } else {
                    name.contains(f.as_str())
                }
            })
    }
}

fn main() -> ExitCode {
    // The snapshot scenario re-runs this binary as the process that restores.
    if let Ok(dir) = std::env::var(snapshot::RESTORE_DIR_ENV) {
        snapshot::restore_child(&dir);
        return ExitCode::SUCCESS;
    }
    let groups = [
        exits::SCENARIOS,
        state::SCENARIOS,
        vm::SCENARIOS,
        interrupts::SCENARIOS,
        smp::SCENARIOS,
        kick::SCENARIOS,
        pause::SCENARIOS,
        runner::SCENARIOS,
        dirty::SCENARIOS,
        minimal_kernel::SCENARIOS,
        virtio::SCENARIOS,
        snapshot::SCENARIOS,
        snapshot_files::SCENARIOS,
        platform::SCENARIOS,
        pool::SCENARIOS,
        balloon::SCENARIOS,
    ];
    let args = Arguments::parse(std::env::args().skip(1));
    let selected: Vec<&Scenario> = groups
        .iter()
        .flat_map(|group| group.iter())
        .filter(|scenario| !args.ignored && args.selects(short_name(scenario)))
        .collect();
    if args.list {
        for scenario in &selected {
            println!("{}: test", short_name(scenario));
        }
        if !args.terse {
            println!("\n{} tests, 0 benchmarks", selected.len());
        }
        return ExitCode::SUCCESS;
    }
    let skips = skip_list();
    let timeout = scenario_timeout();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (backend, hypervisor) in backends() {
        for scenario in &selected {
            let name = short_name(scenario);
            let label = format!("conformance {backend} {name}");
            let hv = match &hypervisor {
                Ok(hv) => hv,
                Err(reason) => {
                    println!("{label} ... skipped: {backend} is not usable here: {reason}");
                    skipped += 1;
                    continue;
                }
            };
            if let Some((_, reason)) = skips.iter().find(|(skip, _)| skip == name) {
                println!("{label} ... skipped: {reason} ({SKIP_ENV})");
                skipped += 1;
                continue;
            }
            if let Some(reason) = (scenario.requires)(hv.capabilities()) {
                println!("{label} ... skipped: {reason}");
                skipped += 1;
                continue;
            }
            let start = Instant::now();
            match run_with_deadline(scenario, hv, timeout) {
                Some(true) => {
                    println!("{label} ... ok ({} ms)", start.elapsed().as_millis());
                    passed += 1;
                }
                Some(false) => {
                    println!("{label} ... FAILED");
                    failed += 1;
                }
                None => {
                    // The scenario's thread cannot be stopped: end the run here, failed.
                    println!("{label} ... FAILED: still running after {timeout:?} (hung)");
                    failed += 1;
                    println!("{passed} passed, {failed} failed, {skipped} skipped");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
