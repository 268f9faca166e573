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
