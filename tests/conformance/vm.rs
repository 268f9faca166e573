//! VM and vCPU lifecycle and memory regions on the real hypervisor, including every way a
//! caller can get them wrong.

use vmkit::Hypervisor;

use crate::common::{long_mode_vm, next_exit, RAM_SIZE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryRegion, MemoryRegionAddress};
use vmkit::{
    HypervisorError, MemoryError, MemoryFlags, MemoryRegion, MemorySlot, VcpuExit, VmConfig,
    VmError,
};
use vmkit_guests::snippets;

fn region(addr: u64, size: usize) -> MemoryRegion {
    MemoryRegion::anonymous(GuestAddress(addr), size, MemoryFlags::empty()).unwrap()
}

pub fn many_vms_and_vcpus_come_and_go(hv: &dyn Hypervisor) {
    for _ in 0..8 {
        let vm = hv.create_vm(&VmConfig::default().max_vcpus(4)).unwrap();
        let vcpus: Vec<_> = (0..4).map(|id| vm.create_vcpu(id).unwrap()).collect();
        assert_eq!(
            vcpus.iter().map(|v| v.id()).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
    }
}

pub fn vcpu_ids_are_checked(hv: &dyn Hypervisor) {
    let vm = hv.create_vm(&VmConfig::default().max_vcpus(2)).unwrap();
    let _first = vm.create_vcpu(1).unwrap();
    match vm.create_vcpu(1) {
        Err(VmError::VcpuExists { id: 1 }) => {}
        other => panic!("expected VcpuExists, got {:?}", other.map(|v| v.id())),
    }
    let err = vm.create_vcpu(2).map(|v| v.id()).unwrap_err();
    assert!(matches!(
        err,
        VmError::VcpuIdOutOfRange {
            id: 2,
            max_vcpus: 2
        }
    ));
    assert_eq!(
        err.to_string(),
        "vCPU id 2 is out of range: this VM allows ids 0 to 1"
    );
    let err = vm.create_vcpu(u32::MAX).map(|v| v.id()).unwrap_err();
    assert!(matches!(err, VmError::VcpuIdOutOfRange { .. }));

    let max = hv.capabilities().max_vcpus;
    match hv.create_vm(&VmConfig::default().max_vcpus(max + 1)) {
        Err(HypervisorError::TooManyVcpus { requested, max: m }) => {
            assert_eq!((requested, m), (max + 1, max))
        }
        other => panic!("expected TooManyVcpus, got {:?}", other.map(|_| ())),
    }
    match hv.create_vm(&VmConfig::default().max_vcpus(0)) {
        Err(err @ HypervisorError::InvalidConfig { .. }) => {
            assert_eq!(
                err.to_string(),
                "invalid VM configuration: max_vcpus must be at least 1"
            )
        }
        other => panic!("expected InvalidConfig, got {:?}", other.map(|_| ())),
    }
}

pub fn overlapping_regions_are_refused_with_both_ranges(hv: &dyn Hypervisor) {
    let vm = hv.create_vm(&VmConfig::default()).unwrap();
    let slot = vm.add_memory_region(region(0x10_0000, 0x10_0000)).unwrap();
    let err = vm.add_memory_region(region(0x1f_f000, 0x2000)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("memory region 0x1ff000..0x201000 overlaps region 0x100000..0x200000 in {slot}")
    );
    // Adjacent is fine, and a refused region did not use up a slot.
    let next = vm.add_memory_region(region(0x20_0000, 0x1000)).unwrap();
    assert_eq!(next, MemorySlot(slot.0 + 1));
}

pub fn zero_and_unaligned_regions_are_refused(hv: &dyn Hypervisor) {
    let err = MemoryRegion::anonymous(GuestAddress(0x1000), 0, MemoryFlags::empty()).unwrap_err();
    assert!(matches!(err, MemoryError::ZeroSize { guest_addr: 0x1000 }));
    let err =
        MemoryRegion::anonymous(GuestAddress(0x1234), 0x1000, MemoryFlags::empty()).unwrap_err();
    assert!(matches!(err, MemoryError::Unaligned { .. }), "{err}");
    // A caller-built mapping is checked when it is added.
    let vm = hv.create_vm(&VmConfig::default()).unwrap();
    let mmap = vm_memory::mmap::MmapRegionBuilder::new_with_bitmap(0x1000, None)
        .build()
        .unwrap();
    let odd = vmkit::GuestRegionMmap::new(mmap, GuestAddress(0x800)).unwrap();
    let err = vm
        .add_memory_region(MemoryRegion::from_mapping(odd, MemoryFlags::empty()))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "memory region 0x800..0x1800 is not aligned to the 4096-byte page size"
    );
}

pub fn slot_exhaustion_is_an_error_naming_the_region(hv: &dyn Hypervisor) {
    let max = hv.capabilities().max_memory_slots;
    let vm = hv.create_vm(&VmConfig::default()).unwrap();
    for i in 0..u64::from(max) {
        vm.add_memory_region(region(i * 0x1000, 0x1000))
            .unwrap_or_else(|err| panic!("region {i} of {max}: {err}"));
    }
    let addr = u64::from(max) * 0x1000;
    let err = vm.add_memory_region(region(addr, 0x1000)).unwrap_err();
    assert!(matches!(
        err,
        VmError::Memory(MemoryError::SlotsExhausted { .. })
    ));
    assert_eq!(
        err.to_string(),
        format!(
            "no free memory slot for region {addr:#x}..{:#x}: all {max} slots are in use",
            addr + 0x1000
        )
    );
    // Freeing one makes room again.
    vm.remove_memory_region(MemorySlot(7)).unwrap();
    assert_eq!(
        vm.add_memory_region(region(addr, 0x1000)).unwrap(),
        MemorySlot(7)
    );
}

pub fn removed_region_comes_back_with_what_the_guest_wrote(hv: &dyn Hypervisor) {
    // mov dword [0x200000], 0x600df00d; hlt
    let mut t = long_mode_vm(hv, snippets::RAM_WRITE);
    assert_eq!(next_exit(t.vcpu.as_mut()), "Hlt");
    let ram = t.vm.remove_memory_region(MemorySlot(0)).unwrap();
    assert_eq!(ram.size(), RAM_SIZE as u64);
    let value: u32 = ram
        .mapping()
        .read_obj(MemoryRegionAddress(snippets::RAM_WRITE_ADDR))
        .unwrap();
    assert_eq!(value, snippets::MARKER);
    assert!(t.vm.memory().find_region(GuestAddress(0)).is_none());
    match t.vm.remove_memory_region(MemorySlot(0)) {
        Err(VmError::Memory(MemoryError::NoSuchSlot(MemorySlot(0)))) => {}
        other => panic!("expected NoSuchSlot, got {other:?}"),
    }
    assert_eq!(ram.mapping().len(), RAM_SIZE as u64);
}

pub fn read_only_region_turns_guest_writes_into_mmio_exits(hv: &dyn Hypervisor) {
    // Reads the dword at 0x500000 and echoes it to port 0x80, then writes 0xabcdef01 there; hlt
    let mut t = long_mode_vm(hv, snippets::ROM_READ_WRITE);
    assert!(hv.capabilities().read_only_memory);
    let rom_addr = GuestAddress(snippets::ROM_ADDR);
    let rom = MemoryRegion::anonymous(rom_addr, 0x1000, MemoryFlags::READ_ONLY).unwrap();
    rom.mapping()
        .write_obj(0x1234_5678u32, MemoryRegionAddress(0))
        .unwrap();
    t.vm.add_memory_region(rom).unwrap();
    match t.vcpu.run().unwrap() {
        VcpuExit::IoOut { port, data, .. } => {
            assert_eq!(port, snippets::REPORT_PORT);
            assert_eq!(data, 0x1234_5678u32.to_le_bytes())
        }
        other => panic!("expected the guest to echo the ROM word, got {other:?}"),
    }
    match t.vcpu.run().unwrap() {
        VcpuExit::MmioWrite { addr, data } => {
            let value = snippets::ROM_WRITE_VALUE.to_le_bytes();
            assert_eq!((addr, data), (snippets::ROM_ADDR, &value[..]))
        }
        other => panic!("expected an MMIO write exit, got {other:?}"),
    }
    assert_eq!(next_exit(t.vcpu.as_mut()), "Hlt");
    let word: u32 = t.vm.memory().read_obj(rom_addr).unwrap();
    assert_eq!(word, 0x1234_5678, "the ROM is unchanged");
}

pub fn dirty_logging_regions_track_vmm_writes(hv: &dyn Hypervisor) {
    let vm = hv.create_vm(&VmConfig::default()).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), 0x10000, MemoryFlags::LOG_DIRTY).unwrap();
    vm.add_memory_region(ram).unwrap();
    let memory = vm.memory();
    memory.write_obj(1u8, GuestAddress(0x3000)).unwrap();
    let region = memory.find_region(GuestAddress(0)).unwrap();
    let bitmap = GuestMemoryRegion::bitmap(region);
    assert!(bitmap.dirty_at(0x3000));
    assert!(!bitmap.dirty_at(0x4000));
}

use vm_memory::bitmap::Bitmap;
use vm_memory::GuestMemoryBackend;

pub fn clock_can_be_read_and_moved_forward(hv: &dyn Hypervisor) {
    let vm = hv.create_vm(&VmConfig::default()).unwrap();
    let before = vm.clock().unwrap();
    let target = before.ns + 3_600_000_000_000; // an hour ahead
    vm.set_clock(&vmkit::ClockState {
        ns: target,
        stable: false,
    })
    .unwrap();
    let after = vm.clock().unwrap();
    assert!(after.ns >= target, "{} < {target}", after.ns);
    assert!(
        after.ns - target < 60_000_000_000,
        "the clock jumped further than asked"
    );

    // With a vCPU, whose time (on Xen, its TSC) moves with the clock.
    let vm = hv.create_vm(&VmConfig::default()).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let tsc =
        |vcpu: &dyn vmkit::Vcpu| vcpu.msrs(&[vmkit::arch::x86_64::msr_index::TSC]).unwrap()[0].data;
    let tsc_before = tsc(&*vcpu);
    let before = vm.clock().unwrap();
    let target = before.ns + 3_600_000_000_000;
    vm.set_clock(&vmkit::ClockState {
        ns: target,
        stable: false,
    })
    .unwrap();
    let after = vm.clock().unwrap();
    assert!(after.ns >= target, "{} < {target}", after.ns);
    assert!(
        after.ns - target < 60_000_000_000,
        "{} vs {target}",
        after.ns
    );
    if hv.kind() == vmkit::HypervisorKind::Xen {
        // The guest's TSC went an hour ahead too: far more than the VM's age before.
        let tsc_after = tsc(&*vcpu);
        assert!(
            tsc_after / 2 > tsc_before,
            "TSC {tsc_before} -> {tsc_after} for an hour"
        );
    }
}

/// Moving the VM's clock between an MMIO-read exit and the next `run()`, while the read is in
/// flight, keeps the read: the guest gets the answer. (On Xen the clock is each vCPU's TSC,
/// set by loading its CPU record, and the load makes the vCPU send its read again.)
pub fn the_clock_moves_while_the_vcpu_waits_for_an_mmio_read(hv: &dyn Hypervisor) {
    // A dword read at MMIO_ADDR echoed to port 0x80, then MMIO writes; hlt
    let mut t = crate::common::long_mode_vm_with(hv, VmConfig::default(), snippets::MMIO_ACCESSES);
    let answer = 0x0c10_c4ed;
    crate::common::answer_the_mmio_read(t.vcpu.as_mut(), answer);
    let target = t.vm.clock().unwrap().ns + 3_600_000_000_000; // an hour ahead
    t.vm.set_clock(&vmkit::ClockState {
        ns: target,
        stable: false,
    })
    .unwrap();
    assert!(t.vm.clock().unwrap().ns >= target);
    crate::common::expect_the_echo(t.vcpu.as_mut(), answer);
}

pub fn capabilities_serialize_and_compare(hv: &dyn Hypervisor) {
    let caps = hv.capabilities().clone();
    assert!(caps.irqfd && caps.ioeventfd && caps.msi && caps.gsi_routing && caps.clock);
    assert!(!caps.cpuid.is_empty() && !caps.msrs.is_empty());
    let json = serde_json::to_string(&caps).unwrap();
    let back: vmkit::Capabilities = serde_json::from_str(&json).unwrap();
    assert_eq!(back, caps);
    assert!(caps.missing_in(&caps).is_empty());

    // A host without irqfd, with fewer vCPUs, without SSE2 and without LSTAR.
    let mut lesser = caps.clone();
    lesser.irqfd = false;
    lesser.max_vcpus = 1;
    let leaf1 = lesser.cpuid.iter_mut().find(|e| e.function == 1).unwrap();
    leaf1.edx &= !(1 << 26);
    lesser
        .msrs
        .retain(|&m| m != vmkit::arch::x86_64::msr_index::LSTAR);
    let missing: Vec<String> = caps
        .missing_in(&lesser)
        .iter()
        .map(|m| m.to_string())
        .collect();
    assert_eq!(
        missing,
        [
            "irqfd is not supported".to_string(),
            format!("max vCPUs: {} required, 1 available", caps.max_vcpus),
            "CPUID leaf 0x1.0 edx lacks feature bits 0x04000000".to_string(),
            "MSR 0xc0000082 is not available".to_string(),
        ]
    );
    // The other way round nothing is missing.
    assert!(lesser.missing_in(&caps).is_empty());
}

crate::scenarios![
    many_vms_and_vcpus_come_and_go,
    vcpu_ids_are_checked,
    overlapping_regions_are_refused_with_both_ranges,
    zero_and_unaligned_regions_are_refused,
    slot_exhaustion_is_an_error_naming_the_region,
    removed_region_comes_back_with_what_the_guest_wrote,
    read_only_region_turns_guest_writes_into_mmio_exits => crate::read_only_memory,
    dirty_logging_regions_track_vmm_writes => crate::dirty_log,
    clock_can_be_read_and_moved_forward => crate::clock,
    the_clock_moves_while_the_vcpu_waits_for_an_mmio_read => crate::clock,
    capabilities_serialize_and_compare => crate::interrupt_plumbing_and_clock,
];
