//! The conformance suite: one set of guest scenarios, written once against the public traits
//! and run against every backend compiled in and usable on this host.
//!
//! Each scenario prints one line (`ok`, `FAILED` or `skipped` with the reason); the run ends
//! with `N passed, M failed, K skipped` and fails if any scenario failed.
//!
//! ```text
//! cargo test --test conformance
//! ```

#[path = "../common/mod.rs"]
mod common;

mod dirty;
mod exits;
mod interrupts;
mod kick;
mod minimal_kernel;
mod pause;
mod runner;
mod smp;
mod snapshot;
mod state;
mod virtio;
mod vm;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::Instant;

use vmkit::{Capabilities, Hypervisor};

/// Why a backend cannot run a scenario, if it cannot.
type Requirement = fn(&Capabilities) -> Option<&'static str>;

/// One guest scenario.
pub struct Scenario {
    pub name: &'static str,
    pub run: fn(&dyn Hypervisor),
    pub requires: Requirement,
}

/// Every scenario can run.
pub fn anything(_: &Capabilities) -> Option<&'static str> {
    None
}

pub fn irqchip(caps: &Capabilities) -> Option<&'static str> {
    let all = caps.irqchip && caps.irqfd && caps.msi && caps.gsi_routing;
    (!all).then_some("needs an in-kernel irqchip with irqfd, MSI and GSI routing")
}

pub fn pit(caps: &Capabilities) -> Option<&'static str> {
    (!(caps.irqchip && caps.pit)).then_some("needs an in-kernel irqchip and PIT")
}

pub fn ioeventfd(caps: &Capabilities) -> Option<&'static str> {
    (!caps.ioeventfd).then_some("needs ioeventfd")
}

pub fn guest_debug(caps: &Capabilities) -> Option<&'static str> {
    (!caps.guest_debug).then_some("needs single-stepping and hardware breakpoints")
}

pub fn read_only_memory(caps: &Capabilities) -> Option<&'static str> {
    (!caps.read_only_memory).then_some("needs read-only memory regions")
}

pub fn dirty_log(caps: &Capabilities) -> Option<&'static str> {
    (!caps.dirty_log).then_some("needs dirty-page logging")
}

pub fn dirty_ring(caps: &Capabilities) -> Option<&'static str> {
    (caps.dirty_ring_max_entries < 4096).then_some("needs dirty rings of 4096 entries")
}

pub fn xsave(caps: &Capabilities) -> Option<&'static str> {
    (!(caps.xsave && caps.xcrs)).then_some("needs XSAVE and XCR state access")
}

pub fn clock(caps: &Capabilities) -> Option<&'static str> {
    (!caps.clock).then_some("needs the VM clock")
}

pub fn vcpu_events(caps: &Capabilities) -> Option<&'static str> {
    (!caps.vcpu_events).then_some("needs pending-event (vCPU events) state")
}

/// The capabilities that `vm::capabilities_serialize_and_compare` takes away from a host to
/// compare it with a lesser one.
pub fn interrupt_plumbing_and_clock(caps: &Capabilities) -> Option<&'static str> {
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
type Backend = (&'static str, Result<Box<dyn Hypervisor>, String>);

/// Every backend this build has.
fn backends() -> Vec<Backend> {
    #[allow(unused_mut)] // Without the `xen` feature there is nothing to add.
    let mut backends: Vec<Backend> = vec![(
        "kvm",
        vmkit::kvm::Kvm::new()
            .map(|kvm| Box::new(kvm) as Box<dyn Hypervisor>)
            .map_err(|err| err.to_string()),
    )];
    #[cfg(feature = "xen")]
    backends.push((
        "xen",
        vmkit::xen::Xen::new()
            .map(|xen| Box::new(xen) as Box<dyn Hypervisor>)
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
    ];
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let skips = skip_list();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (backend, hypervisor) in backends() {
        for scenario in groups.iter().flat_map(|group| group.iter()) {
            if filter
                .as_ref()
                .is_some_and(|f| !scenario.name.contains(f.as_str()))
            {
                continue;
            }
            let name = scenario.name.trim_start_matches("conformance::");
            let label = format!("conformance {backend} {name}");
            let hv = match &hypervisor {
                Ok(hv) => hv.as_ref(),
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
            match catch_unwind(AssertUnwindSafe(|| (scenario.run)(hv))) {
                Ok(()) => {
                    println!("{label} ... ok ({} ms)", start.elapsed().as_millis());
                    passed += 1;
                }
                Err(_) => {
                    println!("{label} ... FAILED");
                    failed += 1;
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
