//! VM pools: a VM handed back is reset so that nothing of the last guest reaches the next
//! one, and a VM the pool cannot reset is replaced instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmkit::arch::x86_64::{msr_index, Fpu, Msr, Regs, SpecialRegs};
use vmkit::pool::{PoolError, Returned, VmPool, VmTemplate};
use vmkit::snapshot::{self, Features};
use vmkit::{Hypervisor, HypervisorKind, MemoryFlags, MemoryRegion, Vcpu, VcpuExit, VmConfig};
use vmkit_boot::entry;
use vmm_sys_util::tempdir::TempDir;

use crate::common::{CODE_ADDR, RAM_SIZE};

/// Where the guest writes its secret.
const SECRET_ADDR: u64 = 0x20_0000;
/// Where the template puts bytes of its own, which every guest must read.
const TEMPLATE_DATA_ADDR: u64 = 0x18_0000;
const TEMPLATE_DATA: u64 = 0x7e3d_1a7e_0000_0001;
/// The guest loads this and inverts it, so the secret itself is nowhere in the template.
const SECRET_COMPLEMENT: u64 = 0x0f0e_0d0c_0b0a_0908;
const SECRET: u64 = !SECRET_COMPLEMENT;
/// The high half the guest writes to KERNEL_GS_BASE (the low half is the secret's).
const MSR_HIGH: u32 = 0x5ec2;

/// What this guest finds, then the secret it leaves behind in memory, registers and an MSR:
///
/// ```text
/// mov rax, [SECRET_ADDR]; mov rdx, [TEMPLATE_DATA_ADDR]; mov r13, rax; mov r14, rdx
/// mov rbx, SECRET_COMPLEMENT; not rbx; mov [SECRET_ADDR], rbx; mov r12, rbx
/// mov ecx, KERNEL_GS_BASE; mov eax, ebx; mov edx, MSR_HIGH; wrmsr; hlt
/// ```
fn guest_code() -> Vec<u8> {
    let mut code = Vec::new();
    let disp = |addr: u64| (addr as u32).to_le_bytes();
    code.extend([0x48, 0x8b, 0x04, 0x25]);
    code.extend(disp(SECRET_ADDR));
    code.extend([0x48, 0x8b, 0x14, 0x25]);
    code.extend(disp(TEMPLATE_DATA_ADDR));
    code.extend([0x49, 0x89, 0xc5, 0x49, 0x89, 0xd6]);
    code.extend([0x48, 0xbb]);
    code.extend(SECRET_COMPLEMENT.to_le_bytes());
    code.extend([0x48, 0xf7, 0xd3]);
    code.extend([0x48, 0x89, 0x1c, 0x25]);
    code.extend(disp(SECRET_ADDR));
    code.extend([0x49, 0x89, 0xdc]);
    code.push(0xb9);
    code.extend(msr_index::KERNEL_GS_BASE.to_le_bytes());
    code.extend([0x89, 0xd8, 0xba]);
    code.extend(MSR_HIGH.to_le_bytes());
    code.extend([0x0f, 0x30, 0xf4]);
    code
}

fn template(hv: &dyn Hypervisor) -> VmTemplate {
    VmTemplate::new(VmConfig::default())
        .cpuid(hv.supported_cpuid())
        .memory(GuestAddress(0), RAM_SIZE, MemoryFlags::empty())
        .load(GuestAddress(CODE_ADDR), guest_code())
        .load(
            GuestAddress(TEMPLATE_DATA_ADDR),
            TEMPLATE_DATA.to_le_bytes().to_vec(),
        )
        .setup(|vm, vcpus| {
            entry::configure_long_mode(vcpus[0].as_ref(), &vm.memory(), CODE_ADDR)?;
            Ok(())
        })
}

/// The pool shares its hypervisor with its refill thread: open the backend under test again.
fn shared(hv: &dyn Hypervisor) -> Arc<dyn Hypervisor> {
    match hv.kind() {
        HypervisorKind::Kvm => Arc::new(vmkit::kvm::Kvm::new().unwrap()),
        #[cfg(feature = "xen")]
        HypervisorKind::Xen => Arc::new(vmkit::xen::Xen::new().unwrap()),
        #[allow(unreachable_patterns)]
        other => panic!("no way to open {other} here"),
    }
}

/// Everything the test compares between a fresh VM and a reused one.
#[derive(Debug, PartialEq)]
struct Seen {
    memory: Vec<u8>,
    regs: Regs,
    sregs: SpecialRegs,
    xmm0: [u8; 16],
    kernel_gs_base: Vec<Msr>,
}

fn seen(vm: &dyn vmkit::Vm, vcpu: &dyn Vcpu) -> Seen {
    let mut memory = vec![0; RAM_SIZE];
    vm.memory()
        .read_slice(&mut memory, GuestAddress(0))
        .unwrap();
    Seen {
        memory,
        regs: vcpu.regs().unwrap(),
        sregs: vcpu.sregs().unwrap(),
        xmm0: vcpu.fpu().unwrap().xmm[0],
        kernel_gs_base: vcpu.msrs(&[msr_index::KERNEL_GS_BASE]).unwrap(),
    }
}

fn run_to_hlt(vcpu: &mut dyn Vcpu) {
    loop {
        match vcpu.run().unwrap() {
            VcpuExit::Interrupted => continue,
            VcpuExit::Hlt => return,
            other => panic!("expected hlt, got {other:?}"),
        }
    }
}

pub fn a_returned_vm_keeps_nothing_of_its_last_guest(hv: &dyn Hypervisor) {
    // No background refill: the second take must be the VM given back (when it can be reset).
    let pool = VmPool::new(shared(hv), template(hv), 0).unwrap();
    nothing_of_the_last_guest_reaches_the_next(hv, &pool);
}

pub fn a_snapshot_template_is_restored_on_reset(hv: &dyn Hypervisor) {
    // The snapshot: the same guest, ready to run, saved before it ran.
    let config = VmConfig::default();
    let vm = hv.create_vm(&config).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let memory = vm.memory();
    memory
        .write_slice(&guest_code(), GuestAddress(CODE_ADDR))
        .unwrap();
    memory
        .write_obj(TEMPLATE_DATA, GuestAddress(TEMPLATE_DATA_ADDR))
        .unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_cpuid(&hv.supported_cpuid()).unwrap();
    entry::configure_long_mode(vcpu.as_ref(), &memory, CODE_ADDR).unwrap();
    let msrs = snapshot::readable_msrs(vcpu.as_ref(), &hv.msr_index_list());
    let features = Features::for_vm(&config, hv.capabilities());
    let state = snapshot::save_vcpu(vcpu.as_ref(), &msrs, features).unwrap();
    let dir = TempDir::new_with_prefix("/tmp/vmkit-pool-").unwrap();
    snapshot::save(
        dir.as_path(),
        hv,
        &config,
        vm.as_ref(),
        &[state],
        |_| Ok(()),
    )
    .unwrap();
    drop((vcpu, vm));

    let pool = VmPool::new(shared(hv), VmTemplate::snapshot(dir.as_path()), 0).unwrap();
    nothing_of_the_last_guest_reaches_the_next(hv, &pool);
}

/// Runs the secret-leaving guest in a VM from `pool`, gives it back, and checks that the next
/// VM handed out is the template's.
fn nothing_of_the_last_guest_reaches_the_next(hv: &dyn Hypervisor, pool: &VmPool) {
    let mut first = pool.take().unwrap();
    let fresh = seen(first.vm.as_ref(), first.vcpus[0].as_ref());
    assert_eq!(fresh.regs.rip, CODE_ADDR);
    assert!(
        fresh.memory.windows(8).all(|w| w != SECRET.to_le_bytes()),
        "the secret is not in the template"
    );

    // The first guest reads the template's bytes and zeros, then leaves its secret behind;
    // the VMM leaves some too, in an XMM register.
    run_to_hlt(first.vcpus[0].as_mut());
    let after = first.vcpus[0].regs().unwrap();
    assert_eq!((after.r13, after.r14), (0, TEMPLATE_DATA));
    assert_eq!(after.r12, SECRET);
    let mut secret_slot = [0; 8];
    first
        .vm
        .memory()
        .read_slice(&mut secret_slot, GuestAddress(SECRET_ADDR))
        .unwrap();
    assert_eq!(u64::from_le_bytes(secret_slot), SECRET);
    let gs = first.vcpus[0].msrs(&[msr_index::KERNEL_GS_BASE]).unwrap();
    assert_eq!(
        gs[0].data,
        u64::from(MSR_HIGH) << 32 | (SECRET & 0xffff_ffff)
    );
    let fpu = Fpu {
        xmm: {
            let mut xmm = first.vcpus[0].fpu().unwrap().xmm;
            xmm[0] = SECRET.to_le_bytes().repeat(2).try_into().unwrap();
            xmm
        },
        ..first.vcpus[0].fpu().unwrap()
    };
    first.vcpus[0].set_fpu(&fpu).unwrap();
    let first_vm_addr = first.vm.as_ref() as *const dyn vmkit::Vm as *const ();

    let returned = pool.give_back(first);
    match (hv.kind(), &returned) {
        (HypervisorKind::Kvm, Returned::Reset) => {}
        // Xen's guest memory is not a private mapping of this process: the VM is dropped.
        (HypervisorKind::Xen, Returned::Replaced(PoolError::NotResettable { .. })) => {}
        (kind, other) => panic!("{kind}: unexpected {other:?}"),
    }

    let mut next = pool.take().unwrap();
    if matches!(returned, Returned::Reset) {
        let next_addr = next.vm.as_ref() as *const dyn vmkit::Vm as *const ();
        assert_eq!(next_addr, first_vm_addr, "the reset VM is handed out again");
        assert_eq!(pool.stats().reset, 1);
    }
    // Memory byte for byte, registers, special registers, XMM0 and the MSR: the template's.
    let reused = seen(next.vm.as_ref(), next.vcpus[0].as_ref());
    assert_eq!(reused.regs, fresh.regs);
    assert_eq!(reused.sregs, fresh.sregs);
    assert_eq!(reused.xmm0, fresh.xmm0);
    assert_eq!(reused.kernel_gs_base, fresh.kernel_gs_base);
    assert!(reused.memory == fresh.memory, "memory is the template's");
    // And the next guest, running, finds zeros where the secret was and the template's bytes.
    run_to_hlt(next.vcpus[0].as_mut());
    let after = next.vcpus[0].regs().unwrap();
    assert_eq!((after.r13, after.r14), (0, TEMPLATE_DATA));
}

pub fn a_vm_the_pool_cannot_reset_is_replaced(hv: &dyn Hypervisor) {
    let hypervisor = shared(hv);
    let pool = VmPool::new(Arc::clone(&hypervisor), template(hv), 0).unwrap();
    let other = VmPool::new(hypervisor, template(hv), 0).unwrap();

    // From another pool.
    let foreign = other.take().unwrap();
    assert!(matches!(
        pool.give_back(foreign),
        Returned::Replaced(PoolError::ForeignVm)
    ));
    // With a region added.
    let grown = pool.take().unwrap();
    let extra =
        MemoryRegion::anonymous(GuestAddress(0x1000_0000), 0x1000, MemoryFlags::empty()).unwrap();
    grown.vm.add_memory_region(extra).unwrap();
    assert!(matches!(
        pool.give_back(grown),
        Returned::Replaced(PoolError::LayoutChanged)
    ));
    // Without its vCPU.
    let mut lost = pool.take().unwrap();
    lost.vcpus.clear();
    let err = match pool.give_back(lost) {
        Returned::Replaced(err) => err,
        Returned::Reset => panic!("a VM without its vCPU was reused"),
    };
    assert_eq!(
        err.to_string(),
        "the VM came back with vCPUs [], not the template's [0]"
    );
    let stats = pool.stats();
    assert_eq!((stats.replaced, stats.reset), (3, 0));
    assert_eq!(pool.ready(), 0, "nothing replaced went back to the pool");
}

pub fn the_refill_thread_keeps_the_target_ready(hv: &dyn Hypervisor) {
    const TARGET: usize = 3;
    let pool = VmPool::new(shared(hv), template(hv), TARGET).unwrap();
    let filled = |want: usize| {
        // A liveness bound, not a timing: building a VM takes milliseconds.
        let deadline = Instant::now() + Duration::from_secs(60);
        while pool.ready() < want {
            assert!(Instant::now() < deadline, "the pool never had {want} ready");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    filled(TARGET);
    let taken: Vec<_> = (0..TARGET).map(|_| pool.take().unwrap()).collect();
    filled(TARGET);
    let stats = pool.stats();
    assert_eq!(stats.taken_ready, TARGET as u64);
    assert_eq!(stats.built_on_take, 1, "only the first VM, in VmPool::new");
    assert_eq!(stats.built_in_background, 2 * TARGET as u64 - 1);
    assert!(pool.take_refill_error().is_none());
    // Every VM handed out is ready to run the template's guest.
    for mut vm in taken {
        run_to_hlt(vm.vcpus[0].as_mut());
        assert_eq!(vm.vcpus[0].regs().unwrap().r14, TEMPLATE_DATA);
    }
}

crate::scenarios![
    a_returned_vm_keeps_nothing_of_its_last_guest => crate::snapshots,
    a_snapshot_template_is_restored_on_reset => crate::snapshots,
    a_vm_the_pool_cannot_reset_is_replaced => crate::snapshots,
    the_refill_thread_keeps_the_target_ready => crate::snapshots,
];
