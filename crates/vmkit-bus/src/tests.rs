use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use vm_device::bus::{
    MmioAddress, MmioAddressOffset, MmioRange, PioAddress, PioAddressOffset, PioRange,
};
use vm_device::{DeviceMmio, DevicePio};
use vmkit::VcpuExit;

use crate::{
    Access, Bus, BusError, ExitOutcome, Malformed, SharedMmioDevice, SharedPioDevice, Space, Span,
    UnmappedCounts,
};

/// One call a test device received: (write?, base, offset, bytes written or read length).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Call {
    write: bool,
    base: u64,
    offset: u64,
    data: Vec<u8>,
}

/// Records every call; reads answer `tag, tag+1, …` and bump `tag`, so successive accesses
/// of a `rep ins` read different values.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
    tag: AtomicU8,
}

impl Recorder {
    fn with_tag(tag: u8) -> Arc<Self> {
        Arc::new(Recorder {
            calls: Mutex::default(),
            tag: AtomicU8::new(tag),
        })
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, write: bool, base: u64, offset: u64, data: &[u8]) {
        self.calls.lock().unwrap().push(Call {
            write,
            base,
            offset,
            data: data.to_vec(),
        });
    }

    fn answer(&self, data: &mut [u8]) {
        let tag = self.tag.fetch_add(1, Ordering::Relaxed);
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = tag.wrapping_add(i as u8);
        }
    }
}

impl DevicePio for Recorder {
    fn pio_read(&self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        self.record(false, base.0.into(), offset.into(), data);
        self.answer(data);
    }

    fn pio_write(&self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        self.record(true, base.0.into(), offset.into(), data);
    }
}

impl DeviceMmio for Recorder {
    fn mmio_read(&self, base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.record(false, base.0, offset, data);
        self.answer(data);
    }

    fn mmio_write(&self, base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.record(true, base.0, offset, data);
    }
}

/// A device that ignores every access.
struct Silent;

impl DevicePio for Silent {
    fn pio_read(&self, _: PioAddress, _: PioAddressOffset, _: &mut [u8]) {}
    fn pio_write(&self, _: PioAddress, _: PioAddressOffset, _: &[u8]) {}
}

impl DeviceMmio for Silent {
    fn mmio_read(&self, _: MmioAddress, _: MmioAddressOffset, _: &mut [u8]) {}
    fn mmio_write(&self, _: MmioAddress, _: MmioAddressOffset, _: &[u8]) {}
}

fn span(first: u64, last: u64) -> Span {
    Span { first, last }
}

fn silent_pio() -> SharedPioDevice {
    Arc::new(Silent)
}

fn silent_mmio() -> SharedMmioDevice {
    Arc::new(Silent)
}

fn read_call(base: u64, offset: u64, len: usize) -> Call {
    // The bus pre-fills reads with all-ones, so that is what the device sees.
    Call {
        write: false,
        base,
        offset,
        data: vec![0xff; len],
    }
}

fn write_call(base: u64, offset: u64, data: &[u8]) -> Call {
    Call {
        write: true,
        base,
        offset,
        data: data.to_vec(),
    }
}

#[test]
fn bus_is_shareable_between_vcpu_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Bus>();
}

#[test]
fn register_returns_the_vm_device_range_and_lookups_find_it() {
    let mut bus = Bus::new();
    assert!(bus.is_empty());
    let range = bus
        .register_pio(PioAddress(0x3f8), 8, silent_pio())
        .unwrap();
    assert_eq!((range.base().0, range.size()), (0x3f8, 8));
    let mmio = bus
        .register_mmio(MmioAddress(0xd000_0000), 0x1000, silent_mmio())
        .unwrap();
    assert_eq!((mmio.base().0, mmio.size()), (0xd000_0000, 0x1000));
    assert_eq!(bus.len(), 2);

    assert_eq!(bus.pio_device(0x3ff).unwrap().0.base().0, 0x3f8);
    assert!(bus.pio_device(0x3f7).is_none());
    assert!(bus.pio_device(0x400).is_none());
    assert_eq!(
        bus.mmio_device(0xd000_0fff).unwrap().0.base().0,
        0xd000_0000
    );
    assert!(bus.mmio_device(0xd000_1000).is_none());
}

#[test]
fn empty_and_wrapping_ranges_are_rejected() {
    let mut bus = Bus::new();
    assert_eq!(
        bus.register_pio(PioAddress(0x10), 0, silent_pio())
            .unwrap_err(),
        BusError::EmptyRange {
            space: Space::Pio,
            base: 0x10
        }
    );
    assert_eq!(
        bus.register_pio(PioAddress(0xffff), 2, silent_pio())
            .unwrap_err(),
        BusError::RangeWraps {
            space: Space::Pio,
            base: 0xffff,
            size: 2
        }
    );
    assert_eq!(
        bus.register_mmio(MmioAddress(0x1000), 0, silent_mmio())
            .unwrap_err(),
        BusError::EmptyRange {
            space: Space::Mmio,
            base: 0x1000
        }
    );
    let err = bus
        .register_mmio(MmioAddress(u64::MAX - 3), 5, silent_mmio())
        .unwrap_err();
    assert_eq!(
        err,
        BusError::RangeWraps {
            space: Space::Mmio,
            base: u64::MAX - 3,
            size: 5
        }
    );
    assert_eq!(
        err.to_string(),
        "MMIO range at 0xfffffffffffffffc of size 0x5 runs past the end of the MMIO space"
    );
    assert!(bus.is_empty());

    // The very ends of each space are fine.
    bus.register_pio(PioAddress(0xffff), 1, silent_pio())
        .unwrap();
    bus.register_pio(PioAddress(0), 0xffff, silent_pio())
        .unwrap();
    bus.register_mmio(MmioAddress(u64::MAX - 3), 4, silent_mmio())
        .unwrap();
    bus.register_mmio(MmioAddress(0), u64::MAX - 3, silent_mmio())
        .unwrap();
    assert_eq!(
        bus.pio_ranges().collect::<Vec<_>>(),
        [span(0, 0xfffe), span(0xffff, 0xffff)]
    );
    assert_eq!(
        bus.mmio_ranges().collect::<Vec<_>>(),
        [span(0, u64::MAX - 4), span(u64::MAX - 3, u64::MAX)]
    );
}

#[test]
fn overlaps_on_either_side_are_rejected_naming_both_ranges() {
    let mut bus = Bus::new();
    bus.register_pio(PioAddress(0x10), 0x10, silent_pio())
        .unwrap();
    let existing = span(0x10, 0x1f);
    for (base, size) in [
        (0x08, 0x09), // ends on the first port
        (0x1f, 0x04), // starts on the last port
        (0x00, 0x40), // covers it
        (0x14, 0x02), // inside it
        (0x10, 0x10), // the same range
    ] {
        let err = bus
            .register_pio(PioAddress(base), size, silent_pio())
            .unwrap_err();
        let new = span(u64::from(base), u64::from(base + size - 1));
        assert_eq!(
            err,
            BusError::Overlap {
                space: Space::Pio,
                new,
                existing
            }
        );
        assert_eq!(
            err.to_string(),
            format!("port range {new} overlaps the registered port range {existing}")
        );
    }
    // Exact adjacency on both sides is allowed.
    bus.register_pio(PioAddress(0x00), 0x10, silent_pio())
        .unwrap();
    bus.register_pio(PioAddress(0x20), 0x10, silent_pio())
        .unwrap();
    assert_eq!(bus.len(), 3);

    let mut bus = Bus::new();
    bus.register_mmio(MmioAddress(0x1000), 0x1000, silent_mmio())
        .unwrap();
    let err = bus
        .register_mmio(MmioAddress(0x1fff), 0x1000, silent_mmio())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "MMIO range 0x1fff..=0x2ffe overlaps the registered MMIO range 0x1000..=0x1fff"
    );
    let err = bus
        .register_mmio(MmioAddress(0x0), 0x1001, silent_mmio())
        .unwrap_err();
    assert_eq!(
        err,
        BusError::Overlap {
            space: Space::Mmio,
            new: span(0, 0x1000),
            existing: span(0x1000, 0x1fff)
        }
    );
    bus.register_mmio(MmioAddress(0x0), 0x1000, silent_mmio())
        .unwrap();
    bus.register_mmio(MmioAddress(0x2000), 0x1000, silent_mmio())
        .unwrap();
}

#[test]
fn an_overlap_spanning_several_ranges_names_one_of_them() {
    let mut bus = Bus::new();
    bus.register_mmio(MmioAddress(0x100), 0x10, silent_mmio())
        .unwrap();
    bus.register_mmio(MmioAddress(0x200), 0x10, silent_mmio())
        .unwrap();
    let BusError::Overlap { existing, .. } = bus
        .register_mmio(MmioAddress(0), 0x1000, silent_mmio())
        .unwrap_err()
    else {
        panic!("expected an overlap");
    };
    assert!(existing == span(0x100, 0x10f) || existing == span(0x200, 0x20f));
}

#[test]
fn deregistration_by_base_hands_the_device_back() {
    let mut bus = Bus::new();
    let device = Recorder::with_tag(0);
    bus.register_pio(PioAddress(0x60), 5, device.clone())
        .unwrap();
    let mmio = Recorder::with_tag(0);
    bus.register_mmio(MmioAddress(0xfee0_0000), 0x1000, mmio.clone())
        .unwrap();

    // Only the exact base deregisters.
    assert_eq!(
        bus.deregister_pio(PioAddress(0x61)).err().unwrap(),
        BusError::NotRegistered {
            space: Space::Pio,
            base: 0x61
        }
    );
    let (range, back) = bus.deregister_pio(PioAddress(0x60)).unwrap();
    assert_eq!((range.base().0, range.size()), (0x60, 5));
    let device_dyn: SharedPioDevice = device.clone();
    assert!(Arc::ptr_eq(&back, &device_dyn));
    assert!(bus.deregister_pio(PioAddress(0x60)).is_err());

    assert_eq!(
        bus.deregister_mmio(MmioAddress(0xfee0_0001))
            .err()
            .unwrap()
            .to_string(),
        "no MMIO device is registered at base 0xfee00001"
    );
    let (range, _): (MmioRange, _) = bus.deregister_mmio(MmioAddress(0xfee0_0000)).unwrap();
    assert_eq!(range.size(), 0x1000);
    assert!(bus.is_empty());

    // Once gone, the device sees nothing more.
    let outcome = bus.handle_exit(&mut VcpuExit::IoOut {
        port: 0x64,
        size: 1,
        data: &[0xfe],
    });
    assert!(matches!(outcome, ExitOutcome::Unmapped { .. }));
    assert!(device.calls().is_empty());
    // And the range is free again.
    let _: PioRange = bus.register_pio(PioAddress(0x60), 5, silent_pio()).unwrap();
}

#[test]
fn port_accesses_reach_the_device_at_their_offset_in_every_width() {
    let mut bus = Bus::new();
    let device = Recorder::with_tag(0x10);
    bus.register_pio(PioAddress(0x3f8), 8, device.clone())
        .unwrap();

    for (port, size, data) in [
        (0x3f8u16, 1u8, &[0x41u8][..]),
        (0x3fa, 2, &[1, 2][..]),
        (0x3fc, 4, &[1, 2, 3, 4][..]),
    ] {
        let outcome = bus.handle_exit(&mut VcpuExit::IoOut { port, size, data });
        assert_eq!(
            outcome,
            ExitOutcome::Handled {
                space: Space::Pio,
                access: Access::Write,
                range: span(0x3f8, 0x3ff),
                offset: u64::from(port - 0x3f8),
                accesses: 1
            }
        );
    }
    let mut data = [0u8; 4];
    let outcome = bus.handle_exit(&mut VcpuExit::IoIn {
        port: 0x3fc,
        size: 4,
        data: &mut data,
    });
    assert_eq!(data, [0x10, 0x11, 0x12, 0x13]);
    assert_eq!(
        outcome,
        ExitOutcome::Handled {
            space: Space::Pio,
            access: Access::Read,
            range: span(0x3f8, 0x3ff),
            offset: 4,
            accesses: 1
        }
    );
    assert_eq!(
        device.calls(),
        [
            write_call(0x3f8, 0, &[0x41]),
            write_call(0x3f8, 2, &[1, 2]),
            write_call(0x3f8, 4, &[1, 2, 3, 4]),
            read_call(0x3f8, 4, 4),
        ]
    );
    assert_eq!(bus.unmapped(), UnmappedCounts::default());
}

#[test]
fn rep_port_exits_are_split_into_single_accesses() {
    let mut bus = Bus::new();
    let device = Recorder::with_tag(0xa0);
    bus.register_pio(PioAddress(0x1f0), 8, device.clone())
        .unwrap();

    // `rep outsw` of three words.
    let outcome = bus.handle_exit(&mut VcpuExit::IoOut {
        port: 0x1f0,
        size: 2,
        data: &[1, 2, 3, 4, 5, 6],
    });
    assert!(matches!(
        outcome,
        ExitOutcome::Handled {
            access: Access::Write,
            accesses: 3,
            ..
        }
    ));
    // `rep insb` of four bytes: four reads, each answered separately.
    let mut data = [0u8; 4];
    let outcome = bus.handle_exit(&mut VcpuExit::IoIn {
        port: 0x1f1,
        size: 1,
        data: &mut data,
    });
    assert!(matches!(
        outcome,
        ExitOutcome::Handled {
            access: Access::Read,
            offset: 1,
            accesses: 4,
            ..
        }
    ));
    assert_eq!(data, [0xa0, 0xa1, 0xa2, 0xa3]);
    // `rep insd` of two dwords.
    let mut data = [0u8; 8];
    bus.handle_exit(&mut VcpuExit::IoIn {
        port: 0x1f4,
        size: 4,
        data: &mut data,
    });
    assert_eq!(data, [0xa4, 0xa5, 0xa6, 0xa7, 0xa5, 0xa6, 0xa7, 0xa8]);

    let calls = device.calls();
    assert_eq!(
        calls[..3],
        [
            write_call(0x1f0, 0, &[1, 2]),
            write_call(0x1f0, 0, &[3, 4]),
            write_call(0x1f0, 0, &[5, 6]),
        ]
    );
    assert_eq!(calls[3..7], vec![read_call(0x1f0, 1, 1); 4][..]);
    assert_eq!(calls[7..], vec![read_call(0x1f0, 4, 4); 2][..]);
}

#[test]
fn mmio_accesses_reach_the_device_whole() {
    let mut bus = Bus::new();
    let device = Recorder::with_tag(0x20);
    bus.register_mmio(MmioAddress(0xd000_0000), 0x100, device.clone())
        .unwrap();
    let outcome = bus.handle_exit(&mut VcpuExit::MmioWrite {
        addr: 0xd000_0010,
        data: &[1, 2, 3, 4, 5, 6, 7, 8],
    });
    assert_eq!(
        outcome,
        ExitOutcome::Handled {
            space: Space::Mmio,
            access: Access::Write,
            range: span(0xd000_0000, 0xd000_00ff),
            offset: 0x10,
            accesses: 1
        }
    );
    let mut data = [0u8; 3]; // an odd width, as a page-split access can give
    let outcome = bus.handle_exit(&mut VcpuExit::MmioRead {
        addr: 0xd000_00fd,
        data: &mut data,
    });
    assert_eq!(data, [0x20, 0x21, 0x22]);
    assert!(matches!(
        outcome,
        ExitOutcome::Handled {
            access: Access::Read,
            offset: 0xfd,
            ..
        }
    ));
    assert_eq!(
        device.calls(),
        [
            write_call(0xd000_0000, 0x10, &[1, 2, 3, 4, 5, 6, 7, 8]),
            read_call(0xd000_0000, 0xfd, 3),
        ]
    );
}

#[test]
fn bytes_a_device_does_not_answer_read_as_all_ones() {
    let mut bus = Bus::new();
    bus.register_pio(PioAddress(0x70), 2, silent_pio()).unwrap();
    bus.register_mmio(MmioAddress(0x1000), 0x10, silent_mmio())
        .unwrap();
    let mut data = [0u8; 4];
    bus.handle_exit(&mut VcpuExit::IoIn {
        port: 0x70,
        size: 1,
        data: &mut data,
    });
    assert_eq!(data, [0xff; 4]);
    let mut data = [0u8; 8];
    bus.handle_exit(&mut VcpuExit::MmioRead {
        addr: 0x1008,
        data: &mut data,
    });
    assert_eq!(data, [0xff; 8]);
}

#[test]
fn unmapped_accesses_read_all_ones_drop_writes_and_are_counted() {
    let mut bus = Bus::new();
    let device = Recorder::with_tag(0);
    bus.register_pio(PioAddress(0x3f8), 8, device.clone())
        .unwrap();
    bus.register_mmio(MmioAddress(0x1000), 0x1000, device.clone())
        .unwrap();

    let mut data = [0u8; 2];
    let outcome = bus.handle_exit(&mut VcpuExit::IoIn {
        port: 0x2f8,
        size: 2,
        data: &mut data,
    });
    assert_eq!(data, [0xff, 0xff]);
    assert_eq!(
        outcome,
        ExitOutcome::Unmapped {
            space: Space::Pio,
            access: Access::Read,
            addr: 0x2f8,
            width: 2,
            accesses: 1,
            straddles: None
        }
    );
    // A `rep outsb` of 5 bytes counts 5.
    bus.handle_exit(&mut VcpuExit::IoOut {
        port: 0x80,
        size: 1,
        data: &[1, 2, 3, 4, 5],
    });
    let mut data = [0u8; 4];
    bus.handle_exit(&mut VcpuExit::MmioRead {
        addr: 0x2000,
        data: &mut data,
    });
    assert_eq!(data, [0xff; 4]);
    bus.handle_exit(&mut VcpuExit::MmioWrite {
        addr: 0xfff,
        data: &[1],
    });
    bus.handle_exit(&mut VcpuExit::MmioWrite {
        addr: 0,
        data: &[1, 2],
    });
    assert_eq!(
        bus.unmapped(),
        UnmappedCounts {
            pio_reads: 1,
            pio_writes: 5,
            mmio_reads: 1,
            mmio_writes: 2
        }
    );
    assert!(device.calls().is_empty());
    assert_eq!(bus.malformed_exits(), 0);
}

#[test]
fn accesses_partly_inside_a_range_are_unmapped_and_name_it() {
    let mut bus = Bus::new();
    let device = Recorder::with_tag(0);
    bus.register_pio(PioAddress(0x3f8), 8, device.clone())
        .unwrap();
    bus.register_mmio(MmioAddress(0x1000), 0x100, device.clone())
        .unwrap();
    let serial = Some(span(0x3f8, 0x3ff));

    // Starts on the last port and runs past the end.
    let mut data = [0u8; 2];
    let outcome = bus.handle_exit(&mut VcpuExit::IoIn {
        port: 0x3ff,
        size: 2,
        data: &mut data,
    });
    assert_eq!(data, [0xff, 0xff]);
    assert_eq!(
        outcome,
        ExitOutcome::Unmapped {
            space: Space::Pio,
            access: Access::Read,
            addr: 0x3ff,
            width: 2,
            accesses: 1,
            straddles: serial
        }
    );
    // Starts in the hole below and runs into it.
    let outcome = bus.handle_exit(&mut VcpuExit::IoOut {
        port: 0x3f6,
        size: 4,
        data: &[1, 2, 3, 4],
    });
    assert!(matches!(outcome, ExitOutcome::Unmapped { straddles, .. } if straddles == serial));
    // Same for MMIO, on both ends.
    let outcome = bus.handle_exit(&mut VcpuExit::MmioWrite {
        addr: 0x10fc,
        data: &[0; 8],
    });
    assert!(
        matches!(outcome, ExitOutcome::Unmapped { straddles: Some(s), .. } if s == span(0x1000, 0x10ff))
    );
    let mut data = [0u8; 8];
    let outcome = bus.handle_exit(&mut VcpuExit::MmioRead {
        addr: 0xffc,
        data: &mut data,
    });
    assert_eq!(data, [0xff; 8]);
    assert!(
        matches!(outcome, ExitOutcome::Unmapped { straddles: Some(s), .. } if s == span(0x1000, 0x10ff))
    );

    assert!(device.calls().is_empty());
    assert_eq!(
        bus.unmapped(),
        UnmappedCounts {
            pio_reads: 1,
            pio_writes: 1,
            mmio_reads: 1,
            mmio_writes: 1
        }
    );
}

#[test]
fn the_last_port_is_dispatched_and_nothing_runs_past_it() {
    let mut bus = Bus::new();
    let device = Recorder::with_tag(7);
    bus.register_pio(PioAddress(0xffff), 1, device.clone())
        .unwrap();

    let mut data = [0u8; 1];
    let outcome = bus.handle_exit(&mut VcpuExit::IoIn {
        port: 0xffff,
        size: 1,
        data: &mut data,
    });
    assert_eq!(data, [7]);
    assert!(matches!(outcome, ExitOutcome::Handled { offset: 0, .. }));

    // Two and four bytes at 0xffff would cover ports past the end of the space.
    for size in [2u8, 4] {
        let mut data = vec![0u8; usize::from(size) * 3];
        let outcome = bus.handle_exit(&mut VcpuExit::IoIn {
            port: 0xffff,
            size,
            data: &mut data,
        });
        assert!(data.iter().all(|&b| b == 0xff));
        assert_eq!(
            outcome,
            ExitOutcome::Unmapped {
                space: Space::Pio,
                access: Access::Read,
                addr: 0xffff,
                width: usize::from(size),
                accesses: 3,
                straddles: Some(span(0xffff, 0xffff))
            }
        );
    }
    // With nothing there at all, an access running off the end is plain unmapped.
    bus.deregister_pio(PioAddress(0xffff)).unwrap();
    let outcome = bus.handle_exit(&mut VcpuExit::IoOut {
        port: 0xfffe,
        size: 4,
        data: &[0; 4],
    });
    assert!(matches!(
        outcome,
        ExitOutcome::Unmapped {
            straddles: None,
            ..
        }
    ));
    assert_eq!(device.calls().len(), 1);
    assert_eq!(bus.unmapped().pio_reads, 6);
}

#[test]
fn the_top_of_the_mmio_space_is_dispatched_and_nothing_wraps() {
    let mut bus = Bus::new();
    let device = Recorder::with_tag(0x30);
    bus.register_mmio(MmioAddress(u64::MAX - 7), 8, device.clone())
        .unwrap();
    let top = Some(span(u64::MAX - 7, u64::MAX));

    let mut data = [0u8; 8];
    let outcome = bus.handle_exit(&mut VcpuExit::MmioRead {
        addr: u64::MAX - 7,
        data: &mut data,
    });
    assert_eq!(data, [0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37]);
    assert!(matches!(outcome, ExitOutcome::Handled { offset: 0, .. }));
    let outcome = bus.handle_exit(&mut VcpuExit::MmioWrite {
        addr: u64::MAX - 3,
        data: &[9, 9, 9, 9],
    });
    assert!(matches!(outcome, ExitOutcome::Handled { offset: 4, .. }));
    let outcome = bus.handle_exit(&mut VcpuExit::MmioWrite {
        addr: u64::MAX,
        data: &[1],
    });
    assert!(matches!(outcome, ExitOutcome::Handled { offset: 7, .. }));

    // Accesses that would wrap past u64::MAX.
    for (addr, len) in [(u64::MAX, 2), (u64::MAX - 3, 8), (u64::MAX - 1, 4)] {
        let mut data = vec![0u8; len];
        let outcome = bus.handle_exit(&mut VcpuExit::MmioRead {
            addr,
            data: &mut data,
        });
        assert_eq!(data, vec![0xff; len]);
        assert_eq!(
            outcome,
            ExitOutcome::Unmapped {
                space: Space::Mmio,
                access: Access::Read,
                addr,
                width: len,
                accesses: 1,
                straddles: top
            }
        );
    }
    assert_eq!(device.calls().len(), 3);

    // And with nothing mapped there.
    let mut bus = Bus::new();
    let mut data = [0u8; 8];
    let outcome = bus.handle_exit(&mut VcpuExit::MmioRead {
        addr: u64::MAX,
        data: &mut data,
    });
    assert_eq!(data, [0xff; 8]);
    assert!(matches!(
        outcome,
        ExitOutcome::Unmapped {
            straddles: None,
            ..
        }
    ));
    // A range ending just below the top is not reached by a wrapping access at the top.
    bus.register_mmio(MmioAddress(0), 16, silent_mmio())
        .unwrap();
    let outcome = bus.handle_exit(&mut VcpuExit::MmioWrite {
        addr: u64::MAX - 1,
        data: &[0; 8],
    });
    assert!(matches!(
        outcome,
        ExitOutcome::Unmapped {
            straddles: None,
            ..
        }
    ));
}

#[test]
fn malformed_exits_reach_no_device_and_reads_get_all_ones() {
    let mut bus = Bus::new();
    let device = Recorder::with_tag(0);
    bus.register_pio(PioAddress(0), 0xffff, device.clone())
        .unwrap();
    bus.register_mmio(MmioAddress(0), u64::MAX, device.clone())
        .unwrap();

    let cases: [(u8, usize, Malformed); 6] = [
        (0, 4, Malformed::PioWidth { size: 0 }),
        (3, 3, Malformed::PioWidth { size: 3 }),
        (8, 8, Malformed::PioWidth { size: 8 }),
        (255, 4, Malformed::PioWidth { size: 255 }),
        (2, 3, Malformed::RaggedPioData { size: 2, len: 3 }),
        (4, 0, Malformed::Empty),
    ];
    for (size, len, problem) in cases {
        let mut data = vec![0u8; len];
        let outcome = bus.handle_exit(&mut VcpuExit::IoIn {
            port: 0x10,
            size,
            data: &mut data,
        });
        assert_eq!(data, vec![0xff; len], "size {size}");
        assert_eq!(
            outcome,
            ExitOutcome::Malformed {
                space: Space::Pio,
                access: Access::Read,
                addr: 0x10,
                problem
            }
        );
        let data = vec![0u8; len];
        let outcome = bus.handle_exit(&mut VcpuExit::IoOut {
            port: 0x10,
            size,
            data: &data,
        });
        assert_eq!(
            outcome,
            ExitOutcome::Malformed {
                space: Space::Pio,
                access: Access::Write,
                addr: 0x10,
                problem
            }
        );
    }
    for (len, problem) in [
        (0, Malformed::Empty),
        (9, Malformed::MmioWidth { len: 9 }),
        (4096, Malformed::MmioWidth { len: 4096 }),
    ] {
        let mut data = vec![0u8; len];
        let outcome = bus.handle_exit(&mut VcpuExit::MmioRead {
            addr: 0x40,
            data: &mut data,
        });
        assert_eq!(data, vec![0xff; len]);
        assert_eq!(
            outcome,
            ExitOutcome::Malformed {
                space: Space::Mmio,
                access: Access::Read,
                addr: 0x40,
                problem
            }
        );
        let outcome = bus.handle_exit(&mut VcpuExit::MmioWrite {
            addr: 0x40,
            data: &data,
        });
        assert!(
            matches!(outcome, ExitOutcome::Malformed { access: Access::Write, problem: p, .. } if p == problem)
        );
    }
    assert!(device.calls().is_empty());
    assert_eq!(bus.malformed_exits(), 18);
    assert_eq!(bus.unmapped(), UnmappedCounts::default());
    assert_eq!(
        Malformed::RaggedPioData { size: 2, len: 3 }.to_string(),
        "3 data bytes are not a whole number of 2-byte port accesses"
    );
}

#[test]
fn other_exits_are_left_to_the_vmm() {
    let bus = Bus::new();
    for mut exit in [
        VcpuExit::Hlt,
        VcpuExit::Shutdown,
        VcpuExit::Kicked,
        VcpuExit::Unknown { code: 99 },
    ] {
        assert_eq!(bus.handle_exit(&mut exit), ExitOutcome::NotBusExit);
    }
    assert_eq!(bus.unmapped(), UnmappedCounts::default());
    assert_eq!(bus.malformed_exits(), 0);
}

#[test]
fn vcpu_threads_share_one_bus() {
    let mut bus = Bus::new();
    let device = Recorder::with_tag(0);
    bus.register_pio(PioAddress(0x80), 1, device.clone())
        .unwrap();
    let bus = Arc::new(bus);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let bus = Arc::clone(&bus);
            thread::spawn(move || {
                for i in 0..250u32 {
                    bus.handle_exit(&mut VcpuExit::IoOut {
                        port: 0x80,
                        size: 1,
                        data: &[i as u8],
                    });
                    bus.handle_exit(&mut VcpuExit::MmioWrite {
                        addr: u64::from(i),
                        data: &[0],
                    });
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(device.calls().len(), 1000);
    assert_eq!(bus.unmapped().mmio_writes, 1000);
}

#[test]
fn debug_output_lists_ranges_and_counters() {
    let mut bus = Bus::new();
    bus.register_pio(PioAddress(0x3f8), 8, silent_pio())
        .unwrap();
    let text = format!("{bus:?}");
    assert!(text.contains("first: 1016, last: 1023"), "{text}");
    assert!(text.contains("malformed: 0"), "{text}");
}

#[test]
fn ioapic_eois_reach_the_listener_only_once_one_is_set() {
    let mut bus = Bus::new();
    // No listener: the exit is left for the VMM.
    let outcome = bus.handle_exit(&mut VcpuExit::IoapicEoi { vector: 0x31 });
    assert_eq!(outcome, ExitOutcome::NotBusExit);
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&heard);
    bus.set_eoi_listener(Some(Arc::new(move |vector| {
        sink.lock().unwrap().push(vector)
    })));
    for vector in [0x31, 0xfe] {
        let outcome = bus.handle_exit(&mut VcpuExit::IoapicEoi { vector });
        assert_eq!(outcome, ExitOutcome::Eoi { vector });
    }
    assert_eq!(*heard.lock().unwrap(), [0x31, 0xfe]);
    bus.set_eoi_listener(None);
    let outcome = bus.handle_exit(&mut VcpuExit::IoapicEoi { vector: 0x40 });
    assert_eq!(outcome, ExitOutcome::NotBusExit);
    assert_eq!(heard.lock().unwrap().len(), 2);
}
