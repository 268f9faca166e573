//! A snapshot taken with an inflated virtio-balloon restores: vmkit-virtio's balloon on
//! virtio-mmio over a real VM's RAM, discarding through `vmkit::memory::discard`, driven from
//! this side through its registers and a split ring in guest memory (as a guest's driver
//! would), saved with `vmkit::snapshot::save` and restored with `vmkit::snapshot::restore`.
//! No guest code runs: the pages and the device state are what is checked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vmkit::snapshot::{self, Features, MemoryRestore};
use vmkit::{EventFd, GuestMemoryMmap, Hypervisor, MemoryFlags, MemoryRegion, VmConfig};
use vmkit_virtio::balloon::{Balloon, DiscardError, VIRTIO_BALLOON_F_DEFLATE_ON_OOM};
use vmkit_virtio::mmio::{
    MmioTransport, NOTIFY_OFFSET, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
};
use vmkit_virtio::Persist;

const RAM_SIZE: usize = 4 << 20;
const PAGE: u64 = 4096;
/// The pages the balloon takes: 16 from 1 MiB.
const FIRST_PFN: u32 = 0x100;
const PFNS: u32 = 16;
/// The queues' rings (inflateq at 0x10000, deflateq at 0x20000) and the frame arrays.
const RING: u64 = 0x1_0000;
const PFN_ARRAY: u64 = 0x3_0000;
const QUEUE_SIZE: u16 = 8;
const VERSION_1: u64 = 1 << 32;
const BALLOON_SECTION: u32 = 0;

type Discard = Box<dyn FnMut(GuestAddress, u64) -> Result<(), DiscardError> + Send>;
type Device = MmioTransport<Arc<GuestMemoryMmap>, Balloon<Discard>>;

fn w32(t: &Device, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fn r32(t: &Device, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// The driver's bring-up: VERSION_1 and DEFLATE_ON_OOM, inflateq and deflateq.
fn bring_up(t: &Device) {
    w32(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    let features = VERSION_1 | VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
    for (select, half) in [(0, features as u32), (1, (features >> 32) as u32)] {
        w32(t, 0x24, select);
        w32(t, 0x20, half);
    }
    w32(
        t,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_ne!(r32(t, 0x70) & STATUS_FEATURES_OK, 0);
    for queue in 0..2u32 {
        let base = ring(queue);
        w32(t, 0x30, queue);
        w32(t, 0x38, u32::from(QUEUE_SIZE));
        for (offset, addr) in [(0x80, base), (0x90, base + 0x1000), (0xa0, base + 0x2000)] {
            w32(t, offset, addr as u32);
            w32(t, offset + 4, (addr >> 32) as u32);
        }
        w32(t, 0x44, 1);
    }
    w32(t, 0x70, r32(t, 0x70) | STATUS_DRIVER_OK);
}

fn ring(queue: u32) -> u64 {
    RING * (u64::from(queue) + 1)
}

/// Puts the balloon's frames on `queue` as the `nth` chain of that queue (one descriptor
/// in slot `nth`), notifies, and checks that the device returned it.
fn send_frames(t: &Device, memory: &GuestMemoryMmap, queue: u32, nth: u16) {
    let base = ring(queue);
    let array = PFN_ARRAY + u64::from(queue) * PAGE;
    let pfns: Vec<u8> = (FIRST_PFN..FIRST_PFN + PFNS)
        .flat_map(u32::to_le_bytes)
        .collect();
    memory.write_slice(&pfns, GuestAddress(array)).unwrap();
    let slot = u64::from(nth % QUEUE_SIZE);
    // Descriptor: addr, len, flags (device-readable), next.
    let desc = base + 16 * slot;
    memory.write_obj(array, GuestAddress(desc)).unwrap();
    memory
        .write_obj(pfns.len() as u32, GuestAddress(desc + 8))
        .unwrap();
    memory.write_obj(0u32, GuestAddress(desc + 12)).unwrap();
    // Available ring: flags, idx, ring[].
    let avail = base + 0x1000;
    memory
        .write_obj(nth % QUEUE_SIZE, GuestAddress(avail + 4 + 2 * slot))
        .unwrap();
    memory
        .write_obj(nth.wrapping_add(1), GuestAddress(avail + 2))
        .unwrap();
    t.write(NOTIFY_OFFSET, &queue.to_le_bytes());
    let used_idx: u16 = memory.read_obj(GuestAddress(base + 0x2000 + 2)).unwrap();
    assert_eq!(
        used_idx,
        nth.wrapping_add(1),
        "queue {queue}: chain {nth} not returned"
    );
}

/// The driver's `actual` field (configuration space offset 4).
fn set_actual(t: &Device, pages: u32) {
    w32(t, 0x100 + 4, pages);
}

fn page_is(memory: &GuestMemoryMmap, pfn: u32, byte: u8) -> bool {
    let mut page = vec![0u8; PAGE as usize];
    memory
        .read_slice(&mut page, GuestAddress(u64::from(pfn) * PAGE))
        .unwrap();
    page.iter().all(|&b| b == byte)
}

pub fn a_snapshot_with_an_inflated_balloon_restores(hv: &dyn Hypervisor) {
    let config = VmConfig::default();
    let vm = hv.create_vm(&config).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram.clone()).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let memory = vm.memory();
    // Every page from 1 MiB to 2 MiB holds 0xab: the ballooned ones must come back as zeros,
    // the others as written.
    memory
        .write_slice(&[0xab; 1 << 20], GuestAddress(u64::from(FIRST_PFN) * PAGE))
        .unwrap();

    let regions = vec![ram];
    let discard: Discard = Box::new(move |addr, len| {
        vmkit::memory::discard(&regions, addr, len).map_err(|err| DiscardError {
            addr: addr.0,
            len,
            source: Box::new(err),
        })
    });
    let device = Balloon::new(discard, Default::default());
    let balloon: Device =
        MmioTransport::new(device, Arc::new(memory.clone()), EventFd::new(0).unwrap()).unwrap();
    bring_up(&balloon);
    balloon.set_balloon_target(PFNS);
    send_frames(&balloon, &memory, 0, 0);
    set_actual(&balloon, PFNS);
    assert!(page_is(&memory, FIRST_PFN, 0) && page_is(&memory, FIRST_PFN + PFNS - 1, 0));
    assert!(page_is(&memory, FIRST_PFN + PFNS, 0xab));
    let before = balloon.with_device(|b| (b.target_pages(), b.actual_pages(), b.counters()));
    assert_eq!(
        (before.0, before.1, before.2.inflated_pages),
        (PFNS, PFNS, 16)
    );

    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-balloon-").unwrap();
    let snap = dir.as_path().join("snap");
    let msrs = snapshot::readable_msrs(vcpu.as_ref(), &hv.msr_index_list());
    let features = Features::for_vm(&config, hv.capabilities());
    let vcpu_state = snapshot::save_vcpu(vcpu.as_ref(), &msrs, features).unwrap();
    snapshot::save(&snap, hv, &config, vm.as_ref(), &[vcpu_state], |devices| {
        devices.write_device(BALLOON_SECTION, &balloon)
    })
    .unwrap();
    drop((balloon, vcpu, vm));

    for mode in [MemoryRestore::Lazy, MemoryRestore::Eager] {
        let restored = snapshot::restore(&snap, hv, mode).unwrap();
        let memory = restored.vm.memory();
        assert!(
            page_is(&memory, FIRST_PFN, 0) && page_is(&memory, FIRST_PFN + PFNS - 1, 0),
            "{mode:?}: a ballooned page is not zero"
        );
        assert!(
            page_is(&memory, FIRST_PFN + PFNS, 0xab),
            "{mode:?}: a page outside the balloon lost its contents"
        );
        let state = restored
            .snapshot
            .read_device::<Device>(BALLOON_SECTION)
            .unwrap();
        // Deflating discards nothing: a back end that counts its calls.
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let discard: Discard = Box::new(move |_, _| {
            counted.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        let mut again: Device = MmioTransport::new(
            Balloon::new(discard, Default::default()),
            Arc::new(memory.clone()),
            EventFd::new(0).unwrap(),
        )
        .unwrap();
        again.restore_state(&state).unwrap();
        again.resume().unwrap();
        let after = again.with_device(|b| (b.target_pages(), b.actual_pages(), b.counters()));
        assert_eq!(
            after, before,
            "{mode:?}: the balloon's state did not come back"
        );
        assert_eq!(r32(&again, 0x100), PFNS, "{mode:?}: num_pages");
        assert_eq!(r32(&again, 0x104), PFNS, "{mode:?}: actual");
        // The driver goes on: the host lowers the target, the guest deflates the same frames
        // on its deflateq (whose first chain this is) and uses the pages again.
        again.set_balloon_target(0);
        send_frames(&again, &memory, 1, 0);
        set_actual(&again, 0);
        let deflated = again.with_device(|b| (b.actual_pages(), b.counters().deflated_pages));
        assert_eq!(deflated, (0, u64::from(PFNS)), "{mode:?}");
        assert_eq!(
            calls.load(Ordering::Relaxed),
            0,
            "{mode:?}: deflating discarded"
        );
        memory
            .write_slice(&[0x5a; 4096], GuestAddress(u64::from(FIRST_PFN) * PAGE))
            .unwrap();
        assert!(page_is(&memory, FIRST_PFN, 0x5a), "{mode:?}");
    }
}

crate::scenarios![a_snapshot_with_an_inflated_balloon_restores => crate::balloon_snapshots];
