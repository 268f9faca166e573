//! Seccomp filters on the runner's vCPU threads (`RunnerOptions::seccomp`), on this host's
//! hypervisor: the runner's work (running, commands that save and restore the vCPU's state,
//! the state read when a guest stops) goes through the backend's filter, and a forbidden
//! call in an exit handler ends the process with SIGSYS and one line. The forbidden call
//! runs in a child process: this test binary again, running that test alone with
//! `VMKIT_SECCOMP_CHILD` naming the file it must not create.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use vmkit::runner::{
    self, ExitAction, RunnerError, RunnerOptions, StopReason, VcpuOutcome, VmRunner,
};
use vmkit::snapshot::{self, Features};
use vmkit::{Hypervisor, VcpuExit, VmConfig};
use vmkit_guests::snippets;

const GIVE_UP: Duration = Duration::from_secs(60);
const CHILD: &str = "VMKIT_SECCOMP_CHILD";

fn hypervisor() -> Option<Box<dyn Hypervisor>> {
    match vmkit::open() {
        Ok(h) => Some(h),
        Err(err) => {
            eprintln!("SKIP: no hypervisor here: {err}");
            None
        }
    }
}

fn confined(hv: &dyn Hypervisor) -> RunnerOptions {
    let filter = hv.vcpu_seccomp_rules().compile().unwrap();
    RunnerOptions::default()
        .command_timeout(GIVE_UP)
        .seccomp(filter)
}

/// The guest writes a port and halts; meanwhile the main thread pauses the vCPU, saves its
/// state and restores it (the snapshot ioctls, on the confined vCPU thread), then lets it go.
#[test]
fn a_confined_vcpu_runs_and_answers_state_commands() {
    let Some(hv) = hypervisor() else { return };
    let config = VmConfig::default();
    let test = common::long_mode_vm_with(hv.as_ref(), config.clone(), snippets::PIO_OUT_HLT);
    let msrs = snapshot::readable_msrs(test.vcpu.as_ref(), &hv.msr_index_list());
    let features = Features::for_vm(&config, hv.capabilities());
    let handler = runner::from_fn(|_, exit| match exit {
        VcpuExit::IoOut { port, .. } if *port == snippets::BYTE_REPORT_PORT => {
            println!("the guest wrote port {port:#x}");
            ExitAction::Continue
        }
        VcpuExit::Hlt => ExitAction::PowerOff,
        other => ExitAction::unhandled(other),
    });
    let options = confined(hv.as_ref()).start_paused(true);
    let running = VmRunner::start_with(vec![test.vcpu], handler, options).unwrap();
    let states = running.save_all(&msrs, features).unwrap();
    running.vcpus()[0].restore_state(&states[0]).unwrap();
    running.resume_all().unwrap();
    let finished = running.join_timeout(GIVE_UP).unwrap();
    assert_eq!(
        finished[0].outcome.as_ref().unwrap(),
        &VcpuOutcome::PowerOff
    );
}

/// A guest that stops (a triple fault): the runner reads its registers and instruction bytes
/// on the confined thread, and reports the stop as an error, not as a killed process.
#[test]
fn a_confined_vcpu_reports_a_stopped_guest() {
    let Some(hv) = hypervisor() else { return };
    let test = common::long_mode_vm(hv.as_ref(), snippets::TRIPLE_FAULT);
    let handler = runner::from_fn(|_, exit| ExitAction::unhandled(exit));
    let running = VmRunner::start_with(vec![test.vcpu], handler, confined(hv.as_ref())).unwrap();
    let finished = running.join_timeout(GIVE_UP).unwrap();
    match &finished[0].outcome {
        // (On AMD SVM, KVM resets the vCPU on a shutdown: rip is not asserted here.)
        Err(RunnerError::GuestStopped { stop, .. }) => {
            assert_eq!(stop.reason, StopReason::Shutdown, "{stop}");
        }
        other => panic!("expected a stopped guest, got {other:?}"),
    }
}

/// An exit handler that creates a file (`openat`) on its `out`: the process dies of SIGSYS
/// before the file exists, after a line naming the vCPU thread and the call.
#[test]
fn a_forbidden_call_in_an_exit_handler_ends_the_process() {
    const NAME: &str = "a_forbidden_call_in_an_exit_handler_ends_the_process";
    if let Some(path) = std::env::var_os(CHILD) {
        let hv = hypervisor().unwrap();
        let test = common::long_mode_vm(hv.as_ref(), snippets::PIO_OUT_HLT);
        let path = CString::new(path.as_bytes()).unwrap();
        let handler = runner::from_fn(move |_, exit| match exit {
            VcpuExit::IoOut { .. } => {
                // SAFETY: `path` is a NUL-terminated string; the descriptor is leaked.
                unsafe {
                    libc::openat(
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY,
                        0o600,
                    )
                };
                ExitAction::Continue
            }
            VcpuExit::Hlt => ExitAction::PowerOff,
            other => ExitAction::unhandled(other),
        });
        let running =
            VmRunner::start_with(vec![test.vcpu], handler, confined(hv.as_ref())).unwrap();
        let finished = running.join_timeout(GIVE_UP).unwrap();
        panic!("the handler's openat did not end the process: {finished:?}");
    }
    if hypervisor().is_none() {
        return;
    }
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let path: PathBuf = dir.as_path().join("made-by-a-confined-vcpu");
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads", "1"])
        .env(CHILD, &path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.signal(), Some(libc::SIGSYS), "{stderr}");
    let line = format!(
        "vmkit-seccomp: thread vcpu0 made a forbidden system call: openat ({}); the process ends",
        libc::SYS_openat
    );
    assert!(stderr.lines().any(|l| l == line), "{stderr}");
    assert!(!path.exists(), "the confined handler created {path:?}");
}

/// No thread's list lets a confined thread leave the process's confinement: run a program,
/// make a process, open a file or a socket, change namespaces, load kernel code or touch
/// another process. Prints each list's size (`-- --nocapture`), the figures the threat
/// model compares with Firecracker's.
#[test]
fn no_list_allows_a_way_out() {
    let forbidden = [
        ("execve", libc::SYS_execve),
        ("execveat", libc::SYS_execveat),
        ("fork", libc::SYS_fork),
        ("vfork", libc::SYS_vfork),
        ("clone3", libc::SYS_clone3),
        ("open", libc::SYS_open),
        ("openat", libc::SYS_openat),
        ("openat2", libc::SYS_openat2),
        ("socket", libc::SYS_socket),
        ("connect", libc::SYS_connect),
        ("bind", libc::SYS_bind),
        ("ptrace", libc::SYS_ptrace),
        ("process_vm_writev", libc::SYS_process_vm_writev),
        ("mount", libc::SYS_mount),
        ("setns", libc::SYS_setns),
        ("unshare", libc::SYS_unshare),
        ("bpf", libc::SYS_bpf),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("kexec_load", libc::SYS_kexec_load),
    ];
    let mut lists = vec![
        (
            "KVM vCPU",
            vmkit::seccomp::vcpu_rules(vmkit::HypervisorKind::Kvm),
        ),
        (
            "KVM main thread",
            vmkit::seccomp::vmm_rules(vmkit::HypervisorKind::Kvm),
        ),
        (
            "virtio-blk worker",
            vmkit_machine::worker::blk_seccomp_rules(),
        ),
        ("queue worker", vmkit_machine::worker::queue_seccomp_rules()),
        ("virtio-net worker", vmkit_net::worker::seccomp_rules()),
    ];
    #[cfg(feature = "xen")]
    {
        lists.push((
            "Xen vCPU",
            vmkit::seccomp::vcpu_rules(vmkit::HypervisorKind::Xen),
        ));
        lists.push((
            "Xen main thread",
            vmkit::seccomp::vmm_rules(vmkit::HypervisorKind::Xen),
        ));
    }
    let mut pci_worker = vmkit_machine::worker::queue_seccomp_rules();
    pci_worker.extend(&vmkit::seccomp::interrupt_rules(vmkit::HypervisorKind::Kvm));
    lists.push(("KVM virtio-pci worker", pci_worker));
    #[cfg(feature = "xen")]
    {
        let mut pci_worker = vmkit_machine::worker::queue_seccomp_rules();
        pci_worker.extend(&vmkit::seccomp::interrupt_rules(vmkit::HypervisorKind::Xen));
        lists.push(("Xen virtio-pci worker", pci_worker));
    }
    let mut net_vcpu = vmkit::seccomp::vcpu_rules(vmkit::HypervisorKind::Kvm);
    net_vcpu.extend(&vmkit_net::worker::vcpu_seccomp_rules());
    lists.push(("KVM vCPU with a network card", net_vcpu));
    for (thread, rules) in &lists {
        for (name, number) in forbidden.iter().filter(|(_, n)| *n >= 0) {
            assert!(!rules.allows(*number), "the {thread} list allows {name}");
        }
        let filter = rules.compile().unwrap();
        println!(
            "{thread:<30} {:>3} system calls, {:>3} ioctl numbers, {:>4} BPF instructions",
            rules.syscall_count(),
            rules.ioctl_count(),
            filter.instructions()
        );
    }
}

/// A thread confined to the base rules and `discard_rules` gives back pages of shared RAM (a
/// file: `MADV_REMOVE`, which the base rules alone do not allow, so the process would end)
/// and of private RAM (`MADV_DONTNEED`); both read back as zeros.
#[test]
fn a_confined_thread_discards_shared_and_private_ram() {
    use vmkit::vm_memory::{Bytes, FileOffset, GuestAddress};
    use vmkit::{MemoryFlags, MemoryRegion};

    let file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
    file.set_len(0x4000).unwrap();
    let shared = MemoryRegion::from_file(
        GuestAddress(0),
        0x4000,
        FileOffset::new(file, 0),
        MemoryFlags::empty(),
    )
    .unwrap();
    let private =
        MemoryRegion::anonymous(GuestAddress(0x10_0000), 0x4000, MemoryFlags::empty()).unwrap();
    for region in [&shared, &private] {
        region
            .mapping()
            .write_slice(&[0x5a; 0x4000], vmkit::vm_memory::MemoryRegionAddress(0))
            .unwrap();
    }
    let mut rules = vmkit::seccomp::Rules::base();
    rules.extend(&vmkit::seccomp::discard_rules());
    let filter = rules.compile().unwrap();
    let regions = vec![shared, private];
    let regions = std::thread::spawn(move || {
        filter.install().unwrap();
        vmkit::memory::discard(&regions, GuestAddress(0x1000), 0x2000).unwrap();
        vmkit::memory::discard(&regions, GuestAddress(0x10_1000), 0x2000).unwrap();
        regions
    })
    .join()
    .unwrap();
    for region in &regions {
        let mut back = [0u8; 0x4000];
        region
            .mapping()
            .read_slice(&mut back, vmkit::vm_memory::MemoryRegionAddress(0))
            .unwrap();
        assert!(back[0x1000..0x3000].iter().all(|&b| b == 0));
        assert!(back[..0x1000]
            .iter()
            .chain(&back[0x3000..])
            .all(|&b| b == 0x5a));
    }
}

/// A device thread confined to the base rules and `interrupt_rules` raises an IRQ line and
/// sends an MSI through the VM (what a virtio-pci device's MSI-X does).
#[test]
fn a_confined_device_thread_raises_interrupts() {
    let Some(hv) = hypervisor() else { return };
    let vm = match hv.create_vm(&VmConfig::default().irqchip(true)) {
        Ok(vm) => std::sync::Arc::new(vm),
        Err(err) => {
            eprintln!("SKIP: no VM with an irqchip here: {err}");
            return;
        }
    };
    let _vcpu = vm.create_vcpu(0).unwrap();
    let mut rules = vmkit::seccomp::Rules::base();
    rules.extend(&vmkit::seccomp::interrupt_rules(hv.kind()));
    let filter = rules.compile().unwrap();
    let device = std::sync::Arc::clone(&vm);
    std::thread::spawn(move || {
        filter.install().unwrap();
        device.set_irq_line(5, true).unwrap();
        device.set_irq_line(5, false).unwrap();
        device.signal_msi(vmkit::MsiMessage::x86(0, 0x40)).unwrap();
    })
    .join()
    .unwrap();
}
