//! vmkit's KVM layer against bare kvm-ioctls, side by side in one run:
//!
//! - `pio_exit_round_trip`: one guest `out` to a port and back, as `run()` sees it;
//! - `vm_ready`: create a VM, map 4 MiB, create a vCPU, set its registers, run to the first exit.
//!
//! ```text
//! cargo bench --bench kvm_overhead
//! ```
//!
//! Both sides run the same guest code in the same kind of VM (long mode, identical page
//! tables written by the same helper); only the layer that drives KVM differs.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmkit::arch::x86_64::boot;
use vmkit::kvm::Kvm;
use vmkit::{Hypervisor, MemoryFlags, MemoryRegion, Vcpu, VcpuExit, Vm, VmConfig};

const CODE_ADDR: u64 = 0x10_0000;
const RAM_SIZE: usize = 4 << 20;
/// out 0x80, al; jmp back to the out
const PIO_LOOP: [u8; 4] = [0xe6, 0x80, 0xeb, 0xfc];
/// The same address the vmkit layer uses for the TSS (Intel VMX needs one).
const TSS_ADDRESS: usize = 0xfffb_d000;

fn vmkit_vm(kvm: &Kvm) -> (Box<dyn Vm>, Box<dyn Vcpu>) {
    let vm = kvm.create_vm(&VmConfig::default()).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let memory = vm.memory();
    memory
        .write_slice(&PIO_LOOP, GuestAddress(CODE_ADDR))
        .unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    boot::configure_long_mode(vcpu.as_ref(), &memory, CODE_ADDR).unwrap();
    (vm, vcpu)
}

fn bare_vm(kvm: &kvm_ioctls::Kvm) -> (VmFd, VcpuFd, GuestMemoryMmap) {
    let vm = kvm.create_vm().unwrap();
    vm.set_tss_address(TSS_ADDRESS).unwrap();
    let memory: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE)]).unwrap();
    let host_addr = memory.find_region(GuestAddress(0)).unwrap().as_ptr() as u64;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: RAM_SIZE as u64,
        userspace_addr: host_addr,
    };
    // SAFETY: the mapping lives in `memory`, returned with (and dropped after) the VM fd.
    unsafe { vm.set_user_memory_region(region) }.unwrap();
    memory
        .write_slice(&PIO_LOOP, GuestAddress(CODE_ADDR))
        .unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let cr3 = boot::write_identity_page_tables(&memory).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.l = 1;
    sregs.cs.db = 0;
    sregs.cs.s = 1;
    sregs.cs.type_ = 0xb;
    sregs.cs.present = 1;
    sregs.cs.base = 0;
    sregs.cs.selector = boot::selector::CODE64;
    sregs.cr0 |= 0x8000_0001;
    sregs.cr3 = cr3;
    sregs.cr4 |= 0x20;
    sregs.efer |= 0x500;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = CODE_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    (vm, vcpu, memory)
}

fn pio_exit_round_trip(c: &mut Criterion) {
    let kvm = Kvm::new().unwrap();
    let mut group = c.benchmark_group("pio_exit_round_trip");

    let (_vm, mut vcpu) = vmkit_vm(&kvm);
    group.bench_function("vmkit", |b| {
        b.iter(|| match vcpu.run().unwrap() {
            VcpuExit::IoOut { port, data, .. } => black_box((port, data[0])),
            other => panic!("unexpected exit {other:?}"),
        })
    });

    let (_bare_vm, mut bare_vcpu, _memory) = bare_vm(kvm.as_kvm_ioctls());
    group.bench_function("kvm-ioctls", |b| {
        b.iter(|| match bare_vcpu.run().unwrap() {
            KvmExit::IoOut(port, data) => black_box((port, data[0])),
            other => panic!("unexpected exit {other:?}"),
        })
    });
    group.finish();
}

fn vm_ready(c: &mut Criterion) {
    let kvm = Kvm::new().unwrap();
    let mut group = c.benchmark_group("vm_ready");
    group.sample_size(30);
    group.bench_function("vmkit", |b| {
        b.iter(|| {
            let (vm, mut vcpu) = vmkit_vm(&kvm);
            assert!(matches!(
                vcpu.run().unwrap(),
                VcpuExit::IoOut { port: 0x80, .. }
            ));
            drop(vcpu);
            drop(vm);
        })
    });
    group.bench_function("kvm-ioctls", |b| {
        b.iter(|| {
            let (vm, mut vcpu, memory) = bare_vm(kvm.as_kvm_ioctls());
            assert!(matches!(vcpu.run().unwrap(), KvmExit::IoOut(0x80, _)));
            drop(vcpu);
            drop(vm);
            drop(memory);
        })
    });
    group.finish();
}

criterion_group!(benches, pio_exit_round_trip, vm_ready);
criterion_main!(benches);
