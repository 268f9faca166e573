//! Shared setup for the integration tests: a VM with RAM at 0 and a vCPU in long mode at a
//! few bytes of code (usually a `vmkit_guests::snippets` constant).
#![allow(dead_code)] // Each test binary uses a different subset.

use vm_memory::{Bytes, GuestAddress};
use vmkit::{Hypervisor, MemoryFlags, MemoryRegion, Vcpu, VcpuExit, Vm, VmConfig};
use vmkit_boot::entry;

/// Where test code is placed and entered.
pub const CODE_ADDR: u64 = 0x10_0000;
/// Guest RAM size of a test VM (starting at 0).
pub const RAM_SIZE: usize = 4 << 20;
/// An address with no memory behind it: accesses become MMIO exits.
pub const MMIO_ADDR: u64 = 0xd000_0000;

/// The runner's options for a test: the defaults, and with `VMKIT_SECCOMP=1` in the
/// environment every vCPU thread confined by the seccomp filter of the host's backend (the
/// one `vmkit::open` finds: the backend under test on every host the suites run on, since a
/// Xen dom0 has no `/dev/kvm`). A call the filter forbids ends the test process with a line
/// naming the thread and the call. Some scenarios serve a virtio-blk disk from the exit
/// handler: the disk's calls join the backend's rules.
pub fn runner_options() -> vmkit::runner::RunnerOptions {
    let options = vmkit::runner::RunnerOptions::default();
    #[cfg(feature = "seccomp")]
    if std::env::var("VMKIT_SECCOMP").is_ok_and(|v| v == "1") {
        static FILTER: std::sync::OnceLock<vmkit::seccomp::Filter> = std::sync::OnceLock::new();
        let filter = FILTER.get_or_init(|| {
            let mut rules = hypervisor().vcpu_seccomp_rules();
            rules.allow_all(&[libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_fdatasync]);
            rules.compile().unwrap()
        });
        return options.seccomp(filter.clone());
    }
    options
}

pub fn hypervisor() -> Box<dyn Hypervisor> {
    vmkit::open().expect("these tests need a hypervisor (/dev/kvm)")
}

pub struct TestVm {
    pub vm: Box<dyn Vm>,
    pub vcpu: Box<dyn Vcpu>,
}

/// A VM with `RAM_SIZE` bytes of RAM at 0 and vCPU 0 about to run `code` in long mode.
pub fn long_mode_vm(hypervisor: &dyn Hypervisor, code: &[u8]) -> TestVm {
    long_mode_vm_with(hypervisor, VmConfig::default(), code)
}

pub fn long_mode_vm_with(hypervisor: &dyn Hypervisor, config: VmConfig, code: &[u8]) -> TestVm {
    let vm = hypervisor.create_vm(&config).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let memory = vm.memory();
    memory.write_slice(code, GuestAddress(CODE_ADDR)).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_cpuid(&hypervisor.supported_cpuid()).unwrap();
    entry::configure_long_mode(vcpu.as_ref(), &memory, CODE_ADDR).unwrap();
    TestVm { vm, vcpu }
}

/// Runs `vcpu`, about to run `vmkit_guests::snippets::MMIO_ACCESSES`, to the guest's dword
/// read at [`MMIO_ADDR`] and answers it with `answer`. The guest gets the answer on the next
/// `run()`; until then the read is in flight.
pub fn answer_the_mmio_read(vcpu: &mut dyn Vcpu, answer: u32) {
    match vcpu.run().unwrap() {
        VcpuExit::MmioRead { addr, data } => {
            assert_eq!((addr, data.len()), (MMIO_ADDR, 4));
            data.copy_from_slice(&answer.to_le_bytes());
        }
        other => panic!("expected an MMIO read, got {other:?}"),
    }
}

/// Runs `vcpu`, after [`answer_the_mmio_read`], to the guest's echo of the value it read on
/// `snippets::REPORT_PORT`, and checks that the echo is `answer`.
pub fn expect_the_echo(vcpu: &mut dyn Vcpu, answer: u32) {
    match vcpu.run().unwrap() {
        VcpuExit::IoOut {
            port: vmkit_guests::snippets::REPORT_PORT,
            data,
            ..
        } => assert_eq!(
            data,
            answer.to_le_bytes(),
            "the guest read what the host answered"
        ),
        other => panic!("expected the guest to echo the MMIO value, got {other:?}"),
    }
}

/// The CPU vendor string the guest sees in CPUID leaf 0 (EBX, EDX, ECX).
pub fn cpu_vendor(hypervisor: &dyn Hypervisor) -> [u8; 12] {
    let leaf0 = hypervisor
        .supported_cpuid()
        .into_iter()
        .find(|e| e.function == 0)
        .expect("CPUID leaf 0 is always supported");
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
    vendor
}

/// Runs until the next exit that is not `Interrupted`, and returns a printable form of it.
pub fn next_exit(vcpu: &mut dyn Vcpu) -> String {
    loop {
        match vcpu.run().unwrap() {
            VcpuExit::Interrupted => continue,
            exit => return format!("{exit:?}"),
        }
    }
}
pub mod guest;
