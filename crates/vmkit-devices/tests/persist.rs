//! Every device of the crate through a real state file: each saved as a device section,
//! read back and restored into a fresh device; a section read as another kind of device is
//! refused by name.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;

use vmkit_devices::{Cmos, DebugExit, Persist, Serial, I8042};
use vmkit_snapshot::{Arch, Backend, Expected, SectionTag, Snapshot, StateError, Writer};

const KVM_X86: Expected = Expected {
    arch: Arch::X86_64,
    backend: Backend::Kvm,
};

const SERIAL: u32 = 0;
const I8042_INDEX: u32 = 1;
const DEBUG_EXIT: u32 = 2;
const CMOS: u32 = 3;

#[test]
fn every_device_round_trips_through_a_state_file() {
    // Devices a guest has used.
    let serial = Serial::new(io::sink()).unwrap();
    serial.write(7, &[0x5a]); // scratch
    serial.write(1, &[0x01]); // IER: received data
    assert_eq!(serial.enqueue_input(b"in"), 2);
    let i8042 = I8042::new().unwrap();
    i8042.write(4, &[I8042::RESET_COMMAND]);
    let debug_exit = DebugExit::new().unwrap();
    debug_exit.write(0, &[3]);
    let cmos = Cmos::new();
    cmos.write(0, &[0x40, 0x99]);

    let mut file = Vec::new();
    let mut w = Writer::new(&mut file, Arch::X86_64, Backend::Kvm, [0; 32]);
    w.write_device(SERIAL, &serial).unwrap();
    w.write_device(I8042_INDEX, &i8042).unwrap();
    w.write_device(DEBUG_EXIT, &debug_exit).unwrap();
    w.write_device(CMOS, &cmos).unwrap();
    w.finish().unwrap();
    let snap = Snapshot::from_bytes(&file, KVM_X86).unwrap();
    for (index, kind, version) in [
        (SERIAL, "serial", 2),
        (I8042_INDEX, "i8042", 2),
        (DEBUG_EXIT, "debug-exit", 2),
        (CMOS, "cmos", 1),
    ] {
        let section = snap.get(SectionTag::DEVICE, index).unwrap();
        assert_eq!(section.version(), version, "{kind}");
        assert_eq!(&section.payload()[1..=kind.len()], kind.as_bytes());
    }

    // A new process builds fresh devices and restores into them.
    let mut serial2 = Serial::new(Vec::new()).unwrap();
    serial2
        .restore_state(&snap.read_device::<Serial<Vec<u8>>>(SERIAL).unwrap())
        .unwrap();
    assert_eq!(serial2.save_state(), serial.save_state());
    let mut rbr = [0u8; 1];
    serial2.read(0, &mut rbr);
    assert_eq!(rbr, *b"i");
    assert_eq!(serial2.interrupt_evt().read().unwrap(), 1, "data pending");

    let mut i8042_2 = I8042::new().unwrap();
    i8042_2
        .restore_state(&snap.read_device::<I8042>(I8042_INDEX).unwrap())
        .unwrap();
    assert!(i8042_2.take_reset_request());

    let mut debug_exit2 = DebugExit::new().unwrap();
    debug_exit2
        .restore_state(&snap.read_device::<DebugExit>(DEBUG_EXIT).unwrap())
        .unwrap();
    assert_eq!(debug_exit2.take_exit_code(), Some(3));

    let mut cmos2 = Cmos::new();
    cmos2
        .restore_state(&snap.read_device::<Cmos>(CMOS).unwrap())
        .unwrap();
    cmos2.write(0, &[0x40]);
    let mut byte = [0];
    cmos2.read(1, &mut byte);
    assert_eq!(byte, [0x99]);
}

#[test]
fn a_section_read_as_another_kind_of_device_is_refused() {
    let mut file = Vec::new();
    let mut w = Writer::new(&mut file, Arch::X86_64, Backend::Kvm, [0; 32]);
    w.write_device(0, &I8042::new().unwrap()).unwrap();
    w.write_device(1, &Cmos::new()).unwrap();
    w.finish().unwrap();
    let snap = Snapshot::from_bytes(&file, KVM_X86).unwrap();
    // Same version, other kind.
    let err = snap.read_device::<DebugExit>(0).unwrap_err();
    assert!(
        matches!(&err, StateError::WrongDeviceKind { expected: "debug-exit", found, .. } if found == "i8042"),
        "{err}"
    );
    // Another kind and another version: the kind is what the error names.
    let err = snap.read_device::<Serial<io::Sink>>(1).unwrap_err();
    assert!(
        matches!(&err, StateError::WrongDeviceKind { expected: "serial", found, .. } if found == "cmos"),
        "{err}"
    );
}
