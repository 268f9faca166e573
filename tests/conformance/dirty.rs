//! Dirty-page tracking on the real hypervisor, in bitmap and ring mode: the guest writes a
//! known set of pages and the host must report exactly that set, then only the next set.

use vmkit::Hypervisor;

use crate::common;

use std::collections::BTreeSet;
use std::ops::Range;

use crate::common::long_mode_vm_with;
use vm_memory::{Bytes, GuestAddress};
use vmkit::{DirtyLogMode, MemoryFlags, MemoryRegion, Vcpu, VcpuExit, Vm, VmConfig};
// The guest: DIRTY_WRITER writes a byte to each page listed at DIRTY_TABLE (a count, then
// addresses), then reports to BYTE_REPORT_PORT and starts again.
use vmkit_guests::snippets::{BYTE_REPORT_PORT, DIRTY_TABLE, DIRTY_WRITER};

/// Tracked region: 2 MiB at 1 GiB, away from the code, tables and page tables in RAM.
const TRACKED: u64 = 0x4000_0000;
const TRACKED_PAGES: u64 = 512;

fn tracked_vm(hv: &dyn Hypervisor, config: VmConfig) -> common::TestVm {
    let t = long_mode_vm_with(hv, config, DIRTY_WRITER);
    let region = MemoryRegion::anonymous(
        GuestAddress(TRACKED),
        (TRACKED_PAGES * 0x1000) as usize,
        MemoryFlags::LOG_DIRTY,
    )
    .unwrap();
    t.vm.add_memory_region(region).unwrap();
    t
}

/// What the host learned while the guest wrote: pages harvested because a ring filled up, and
/// whether any harvest reported an overflow.
#[derive(Default)]
struct Harvested {
    pages: BTreeSet<u64>,
    /// The tracked region's runs of dirty pages (`DirtyRegion::dirty_runs`), harvest after
    /// harvest.
    runs: Vec<Range<u64>>,
    overflowed: bool,
    /// How many times the vCPU stopped with `DirtyRingFull`.
    full_exits: usize,
}

impl Harvested {
    fn add(&mut self, vm: &dyn Vm) {
        let log = vm.harvest_dirty_log().unwrap();
        assert_eq!(
            log.regions.len(),
            1,
            "only the tracked region logs dirty pages"
        );
        self.overflowed |= log.overflowed;
        let pages: Vec<u64> = log
            .dirty_pages()
            .map(|addr| (addr.0 - TRACKED) / 0x1000)
            .collect();
        // The region's other views of the same harvest: indices, and runs covering them.
        let region = &log.regions[0];
        let indices: Vec<u64> = region.dirty_page_indices().collect();
        assert_eq!(indices, pages, "dirty_page_indices against dirty_pages");
        let runs: Vec<Range<u64>> = region.dirty_runs().collect();
        let covered: Vec<u64> = runs.iter().cloned().flatten().collect();
        assert_eq!(covered, pages, "dirty_runs {runs:?} against dirty_pages");
        self.runs.extend(runs);
        self.pages.extend(pages);
    }
}

/// Has the guest write one byte to each of `pages` (page numbers in the tracked region),
/// harvesting whenever a dirty ring fills up on the way.
fn guest_writes(vm: &dyn Vm, vcpu: &mut dyn Vcpu, pages: &[u64]) -> Harvested {
    let memory = vm.memory();
    memory
        .write_obj(pages.len() as u64, GuestAddress(DIRTY_TABLE))
        .unwrap();
    for (i, page) in pages.iter().enumerate() {
        let addr = TRACKED + page * 0x1000 + (page % 7) * 8;
        memory
            .write_obj(addr, GuestAddress(DIRTY_TABLE + 8 + 8 * i as u64))
            .unwrap();
    }
    let mut harvested = Harvested::default();
    loop {
        match vcpu.run().unwrap() {
            VcpuExit::IoOut {
                port: BYTE_REPORT_PORT,
                ..
            } => return harvested,
            VcpuExit::DirtyRingFull => {
                harvested.full_exits += 1;
                harvested.add(vm);
            }
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

fn harvest(vm: &dyn Vm) -> Harvested {
    let mut harvested = Harvested::default();
    harvested.add(vm);
    assert!(!harvested.overflowed);
    harvested
}

fn dirty_pages(vm: &dyn Vm) -> BTreeSet<u64> {
    harvest(vm).pages
}

fn exact_sets(hv: &dyn Hypervisor, config: VmConfig) {
    let mut t = tracked_vm(hv, config);
    let first = [0, 5, 63, 64, 200, 255];
    guest_writes(t.vm.as_ref(), t.vcpu.as_mut(), &first);
    let harvested = harvest(t.vm.as_ref());
    assert_eq!(harvested.pages, first.into_iter().collect());
    // 63 and 64 make one run across two bitmap words.
    assert_eq!(harvested.runs, [0..1, 5..6, 63..65, 200..201, 255..256]);
    // Nothing written since: nothing reported.
    assert_eq!(dirty_pages(t.vm.as_ref()), BTreeSet::new());
    let second = [1, 5, 100];
    guest_writes(t.vm.as_ref(), t.vcpu.as_mut(), &second);
    assert_eq!(dirty_pages(t.vm.as_ref()), second.into_iter().collect());
}

pub fn bitmap_reports_exactly_the_written_pages(hv: &dyn Hypervisor) {
    let t = tracked_vm(hv, VmConfig::default());
    assert_eq!(t.vm.dirty_log_mode(), DirtyLogMode::Bitmap);
    drop(t);
    exact_sets(hv, VmConfig::default());
}

pub fn ring_reports_exactly_the_written_pages(hv: &dyn Hypervisor) {
    let caps = hv.capabilities().clone();
    assert!(caps.dirty_ring_max_entries >= 4096, "{caps:?}");
    let config = VmConfig::default().dirty_ring(Some(4096));
    let t = tracked_vm(hv, config.clone());
    assert_eq!(t.vm.dirty_log_mode(), DirtyLogMode::Ring { entries: 4096 });
    drop(t);
    exact_sets(hv, config);
}

pub fn a_full_ring_never_loses_pages_silently(hv: &dyn Hypervisor) {
    // The smallest ring KVM accepts (one page of entries: 256) holds fewer pages than the
    // guest writes. KVM should stop the vCPU with DirtyRingFull before the ring overflows, and
    // then nothing is lost; a host that does not (this project's nested software KVM emulates
    // the whole write loop without stopping) must at least have the harvest say so.
    // Emulated rings (Xen) never fill: every page is in the harvest, without an exit.
    let emulated = hv.capabilities().dirty_ring_emulated;
    let mut t = tracked_vm(hv, VmConfig::default().dirty_ring(Some(256)));
    assert_eq!(t.vm.dirty_log_mode(), DirtyLogMode::Ring { entries: 256 });
    let pages: Vec<u64> = (0..300).collect();
    let mut harvested = guest_writes(t.vm.as_ref(), t.vcpu.as_mut(), &pages);
    harvested.add(t.vm.as_ref());
    if emulated {
        assert_eq!(harvested.full_exits, 0, "an emulated ring stopped the vCPU");
        assert!(!harvested.overflowed, "an emulated ring overflowed");
    }
    if harvested.overflowed {
        eprintln!(
            "note: the dirty ring overflowed on this host ({} of {} pages logged) and the \
             harvest reported it",
            harvested.pages.len(),
            pages.len()
        );
    } else {
        assert_eq!(harvested.pages, pages.into_iter().collect());
    }
}

pub fn dirty_ring_sizes_are_checked(hv: &dyn Hypervisor) {
    // 128: a power of two under one page of entries, which KVM itself refuses with a bare
    // EINVAL; every backend says why before creating anything.
    for bad in [0, 128, 1000, hv.capabilities().dirty_ring_max_entries * 2] {
        let err = hv
            .create_vm(&VmConfig::default().dirty_ring(Some(bad)))
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("power of two"), "{bad}: {err}");
    }
}

pub fn vmm_writes_do_not_count_as_guest_writes_but_are_in_the_vm_memory_bitmap(
    hv: &dyn Hypervisor,
) {
    let t = tracked_vm(hv, VmConfig::default());
    t.vm.memory()
        .write_obj(7u8, GuestAddress(TRACKED + 3 * 0x1000))
        .unwrap();
    // KVM's log is about the guest; vm-memory's bitmap is about the VMM.
    assert_eq!(dirty_pages(t.vm.as_ref()), BTreeSet::new());
    let memory = t.vm.memory();
    let region =
        vm_memory::GuestMemoryBackend::find_region(&memory, GuestAddress(TRACKED)).unwrap();
    let bitmap = vm_memory::GuestMemoryRegion::bitmap(region);
    use vm_memory::bitmap::Bitmap;
    assert!(
        bitmap.dirty_at(3 * 0x1000),
        "the VMM's write is in the bitmap"
    );
    assert!(!bitmap.dirty_at(4 * 0x1000));
}

/// Dirty logging with a read-only region as well.
fn dirty_log_and_read_only_memory(caps: &vmkit::Capabilities) -> Option<&'static str> {
    crate::dirty_log(caps).or_else(|| crate::read_only_memory(caps))
}

/// A read-only region that exists before the first logging region keeps turning guest
/// writes into MMIO exits once logging starts, and the log stays exact. (Xen refuses its
/// log-dirty mode while read-only pages exist; vmkit has to lift and restore their
/// protection around it.)
pub fn a_read_only_region_added_before_logging_stays_read_only(hv: &dyn Hypervisor) {
    const ROM: u64 = TRACKED + 4 * 0x10_0000;
    let mut t = long_mode_vm_with(hv, VmConfig::default(), DIRTY_WRITER);
    let rom = MemoryRegion::anonymous(GuestAddress(ROM), 0x2000, MemoryFlags::READ_ONLY).unwrap();
    t.vm.add_memory_region(rom).unwrap();
    let logged = MemoryRegion::anonymous(
        GuestAddress(TRACKED),
        (TRACKED_PAGES * 0x1000) as usize,
        MemoryFlags::LOG_DIRTY,
    )
    .unwrap();
    t.vm.add_memory_region(logged).unwrap();

    let memory = t.vm.memory();
    let targets = [
        TRACKED + 3 * 0x1000,
        ROM + 0x1008,
        TRACKED + 9 * 0x1000 + 16,
    ];
    memory
        .write_obj(targets.len() as u64, GuestAddress(DIRTY_TABLE))
        .unwrap();
    for (i, addr) in targets.iter().enumerate() {
        memory
            .write_obj(*addr, GuestAddress(DIRTY_TABLE + 8 + 8 * i as u64))
            .unwrap();
    }
    let mut mmio_writes = Vec::new();
    loop {
        match t.vcpu.run().unwrap() {
            VcpuExit::IoOut {
                port: BYTE_REPORT_PORT,
                ..
            } => break,
            VcpuExit::MmioWrite { addr, .. } => mmio_writes.push(addr),
            other => panic!("unexpected exit {other:?}"),
        }
    }
    assert_eq!(
        mmio_writes,
        [ROM + 0x1008],
        "the guest's write to read-only memory"
    );
    let mut rom_bytes = [0xffu8; 0x2000];
    memory
        .read_slice(&mut rom_bytes, GuestAddress(ROM))
        .unwrap();
    assert!(
        rom_bytes.iter().all(|&b| b == 0),
        "read-only memory kept its contents"
    );
    assert_eq!(dirty_pages(t.vm.as_ref()), BTreeSet::from([3, 9]));
}

crate::scenarios![
    bitmap_reports_exactly_the_written_pages => crate::dirty_log,
    ring_reports_exactly_the_written_pages => crate::dirty_ring,
    a_full_ring_never_loses_pages_silently => crate::dirty_ring,
    dirty_ring_sizes_are_checked => crate::dirty_ring,
    vmm_writes_do_not_count_as_guest_writes_but_are_in_the_vm_memory_bitmap => crate::dirty_log,
    a_read_only_region_added_before_logging_stays_read_only => dirty_log_and_read_only_memory,
];
