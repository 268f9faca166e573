//! How long vmkit takes on Xen from "create the domain" to the minimal kernel's first I/O
//! exit, against `xl create` of the same kernel (`/xen/minimal.elf`, `/xen/minimal.cfg`:
//! a PVH domain with 16 MiB and one vCPU) until `xl` has the domain built and running.
//!
//! ```text
//! cargo bench --features xen --bench xen_boot [-- --runs N]
//! ```
//!
//! Runs in a Xen dom0 (`ci/xen/run.sh` runs it there); anywhere else it says why and exits
//! successfully. The two are interleaved (vmkit, xl, vmkit, xl, …) so that a slow patch of
//! the host affects both, and the medians are reported with their ratio.
//!
//! End points. vmkit: the clock starts before `create_vm` and stops when `run()` returns the
//! kernel's first exit (its first poll of the serial port): domain created, RAM populated
//! and mapped, ELF loaded, vCPU set up in the PVH entry state, domain unpaused, and the
//! guest's first instructions executed. xl: the clock starts before `xl create` and stops
//! when that command exits, which it does once the domain is built and unpaused; the
//! guest's first instructions are not included, which favours xl slightly. xl also runs a
//! new process (parsing the config, talking to xenstored), which is part of what a user of
//! `xl` pays. Without `--bench` (as `cargo test --benches` runs it) it makes one run of
//! each.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::GuestAddress;
use vmkit::xen::Xen;
use vmkit::{Hypervisor, MemoryFlags, MemoryRegion, VcpuExit, VmConfig};
use vmkit_boot::entry;
use vmkit_guests::minimal;

const XL_CONFIG: &str = "/xen/minimal.cfg";
const XL_DOMAIN: &str = "vmkit-minimal";
/// The RAM `minimal.cfg` gives the domain.
const RAM_SIZE: usize = 16 << 20;

/// The phases of one vmkit run, measured from the start.
#[derive(Clone, Copy, Debug, Default)]
struct VmkitRun {
    created: Duration,
    memory: Duration,
    loaded: Duration,
    vcpu: Duration,
    first_exit: Duration,
}

fn vmkit_run(xen: &Xen) -> Result<VmkitRun, String> {
    fn err(what: &'static str) -> impl Fn(vmkit::Error) -> String {
        move |e| format!("{what}: {e}")
    }
    let start = Instant::now();
    let mut run = VmkitRun::default();
    let vm = xen
        .create_vm(&VmConfig::default())
        .map_err(|e| err("create_vm")(e.into()))?;
    run.created = start.elapsed();
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, MemoryFlags::empty())
        .map_err(|e| err("RAM")(e.into()))?;
    vm.add_memory_region(ram)
        .map_err(|e| err("add_memory_region")(e.into()))?;
    run.memory = start.elapsed();
    let memory = vm.memory();
    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None)
        .map_err(|e| format!("loading the kernel: {e}"))?;
    let PvhBootCapability::PvhEntryPresent(entry) = kernel.pvh_boot_cap else {
        return Err("the minimal kernel has no PVH note".into());
    };
    let entry = u32::try_from(entry.0).map_err(|_| "the PVH entry is above 4 GiB")?;
    run.loaded = start.elapsed();
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| err("create_vcpu")(e.into()))?;
    entry::configure_pvh(vcpu.as_ref(), &memory, entry, 0)
        .map_err(|e| format!("configure_pvh: {e}"))?;
    run.vcpu = start.elapsed();
    match vcpu.run().map_err(|e| err("run")(e.into()))? {
        VcpuExit::IoIn { port, .. } if port == minimal::SERIAL_LSR_PORT => {}
        other => return Err(format!("unexpected first exit {other:?}")),
    }
    run.first_exit = start.elapsed();
    Ok(run)
}

fn xl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("xl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run xl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "xl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn xl_run() -> Result<Duration, String> {
    let start = Instant::now();
    xl(&["create", "-q", XL_CONFIG])?;
    let elapsed = start.elapsed();
    xl(&["destroy", XL_DOMAIN])?;
    Ok(elapsed)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = if args.iter().any(|a| a == "--bench") {
        9
    } else {
        1
    };
    if let Some(i) = args.iter().position(|a| a == "--runs") {
        match args.get(i + 1).and_then(|n| n.parse().ok()) {
            Some(n) if n > 0 => runs = n,
            _ => {
                eprintln!("xen_boot: --runs takes a positive number");
                return ExitCode::FAILURE;
            }
        }
    }
    if !Path::new(vmkit::xen::PRIVCMD_PATH).exists() {
        println!(
            "xen_boot: skipped: not a Xen dom0 ({} is missing)",
            vmkit::xen::PRIVCMD_PATH
        );
        return ExitCode::SUCCESS;
    }
    let xen = match Xen::new() {
        Ok(xen) => xen,
        Err(err) => {
            eprintln!("xen_boot: this is a Xen dom0 but Xen does not open: {err}");
            return ExitCode::FAILURE;
        }
    };
    let baseline = if Path::new(XL_CONFIG).exists() {
        Ok(())
    } else {
        Err(format!("{XL_CONFIG} is missing"))
    };
    if let Err(reason) = &baseline {
        println!("xen_boot: the xl baseline is skipped: {reason}");
    }

    // One untimed round of each: the first domain of a kind costs Xen and xl extra.
    let warm = vmkit_run(&xen).and_then(|_| baseline.clone().and_then(|()| xl_run().map(drop)));
    if let Err(err) = warm {
        eprintln!("xen_boot: {err}");
        return ExitCode::FAILURE;
    }
    let (mut vmkit_runs, mut xl_runs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        match vmkit_run(&xen) {
            Ok(run) => vmkit_runs.push(run),
            Err(err) => {
                eprintln!("xen_boot: vmkit: {err}");
                return ExitCode::FAILURE;
            }
        }
        if baseline.is_ok() {
            match xl_run() {
                Ok(t) => xl_runs.push(t),
                Err(err) => {
                    eprintln!("xen_boot: {err}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }

    let phase = |f: fn(&VmkitRun) -> Duration| median(vmkit_runs.iter().map(f).collect());
    let vmkit = phase(|r| r.first_exit);
    println!("xen_boot: {runs} interleaved runs each, medians");
    println!(
        "xen_boot: vmkit, create_vm to the first I/O exit: {} (domain {}, +16 MiB RAM {}, \
         +ELF {}, +vCPU {})",
        ms(vmkit),
        ms(phase(|r| r.created)),
        ms(phase(|r| r.memory)),
        ms(phase(|r| r.loaded)),
        ms(phase(|r| r.vcpu)),
    );
    if !xl_runs.is_empty() {
        let xl = median(xl_runs);
        println!("xen_boot: xl create, to the domain running: {}", ms(xl));
        println!(
            "xen_boot: ratio vmkit / xl = {:.2}",
            vmkit.as_secs_f64() / xl.as_secs_f64()
        );
    }
    ExitCode::SUCCESS
}
