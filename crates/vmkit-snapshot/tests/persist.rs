//! Device sections: a [`Persist`] device's state written with its kind and version, read
//! back, and refused when the kind, the version or the payload is wrong.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde::{Deserialize, Serialize};
use vmkit_snapshot::{Arch, Backend, Expected, Persist, SectionTag, Snapshot, StateError, Writer};

const KVM_X86: Expected = Expected {
    arch: Arch::X86_64,
    backend: Backend::Kvm,
};

/// A device with a 16-byte FIFO of which it saves the contents.
#[derive(Default)]
struct Fifo(Vec<u8>);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct FifoState {
    bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("fifo holds {0} bytes, more than 16")]
struct TooLong(usize);

impl Persist for Fifo {
    const KIND: &'static str = "fifo";
    const VERSION: u16 = 3;
    type State = FifoState;
    type Error = TooLong;

    fn save_state(&self) -> FifoState {
        FifoState {
            bytes: self.0.clone(),
        }
    }

    fn restore_state(&mut self, state: &FifoState) -> Result<(), TooLong> {
        if state.bytes.len() > 16 {
            return Err(TooLong(state.bytes.len()));
        }
        self.0.clone_from(&state.bytes);
        Ok(())
    }
}

/// Another kind whose state has the same shape as the FIFO's.
struct Latch;

impl Persist for Latch {
    const KIND: &'static str = "latch";
    const VERSION: u16 = 3;
    type State = FifoState;
    type Error = TooLong;

    fn save_state(&self) -> FifoState {
        FifoState { bytes: vec![1] }
    }

    fn restore_state(&mut self, _: &FifoState) -> Result<(), TooLong> {
        Ok(())
    }
}

/// The FIFO's state in a newer encoding.
struct FifoV4;

impl Persist for FifoV4 {
    const KIND: &'static str = "fifo";
    const VERSION: u16 = 4;
    type State = FifoState;
    type Error = TooLong;

    fn save_state(&self) -> FifoState {
        FifoState { bytes: Vec::new() }
    }

    fn restore_state(&mut self, _: &FifoState) -> Result<(), TooLong> {
        Ok(())
    }
}

fn file(write: impl FnOnce(&mut Writer<&mut Vec<u8>>)) -> Snapshot {
    let mut bytes = Vec::new();
    let mut w = Writer::new(&mut bytes, Arch::X86_64, Backend::Kvm, [0; 32]);
    write(&mut w);
    w.finish().unwrap();
    Snapshot::from_bytes(&bytes, KVM_X86).unwrap()
}

#[test]
fn a_device_section_round_trips_with_its_kind_and_version() {
    let device = Fifo(b"queued".to_vec());
    let snap = file(|w| {
        w.write_device(0, &device).unwrap();
        w.write_device(7, &Box::new(Latch)).unwrap();
    });
    let section = snap.get(SectionTag::DEVICE, 0).unwrap();
    assert_eq!(section.version(), Fifo::VERSION);
    // The payload names the kind first (a postcard string: length, then bytes).
    assert_eq!(&section.payload()[..5], b"\x04fifo");
    let state = snap.read_device::<Fifo>(0).unwrap();
    assert_eq!(state, device.save_state());
    let mut fresh = Fifo::default();
    fresh.restore_state(&state).unwrap();
    assert_eq!(fresh.0, b"queued");
    // A boxed device is the same kind.
    assert_eq!(
        snap.read_device::<Box<Latch>>(7).unwrap(),
        FifoState { bytes: vec![1] }
    );
}

#[test]
fn a_section_of_another_kind_is_refused_by_name() {
    let snap = file(|w| w.write_device(2, &Latch).unwrap());
    let err = snap.read_device::<Fifo>(2).unwrap_err();
    assert!(
        matches!(&err, StateError::WrongDeviceKind { section, expected: "fifo", found }
            if found == "latch" && section.index == 2),
        "{err}"
    );
    assert!(err.to_string().contains("\"latch\""), "{err}");
}

#[test]
fn another_version_missing_sections_and_trailing_bytes_are_refused() {
    let snap = file(|w| {
        w.write_device(0, &FifoV4).unwrap();
        w.write_section(
            SectionTag::DEVICE,
            1,
            3,
            &("fifo", FifoState { bytes: vec![] }, 9u8),
        )
        .unwrap();
        w.write_section(SectionTag::DEVICE, 2, 3, &[0xffu8; 3])
            .unwrap();
        w.write_section(SectionTag::DEVICE, 3, 3, &"fifo").unwrap();
    });
    assert!(matches!(
        snap.read_device::<Fifo>(0),
        Err(StateError::UnsupportedSectionVersion { version: 4, .. })
    ));
    assert!(matches!(
        snap.read_device::<Fifo>(1),
        Err(StateError::TrailingPayload { unused: 1, .. })
    ));
    // A kind whose length runs past the payload, and a kind with no state after it.
    assert!(matches!(
        snap.read_device::<Fifo>(2),
        Err(StateError::Decode { .. })
    ));
    assert!(matches!(
        snap.read_device::<Fifo>(3),
        Err(StateError::Decode { .. })
    ));
    assert!(matches!(
        snap.read_device::<Fifo>(4),
        Err(StateError::MissingSection {
            tag: SectionTag::DEVICE,
            index: 4
        })
    ));
}

#[test]
fn a_decoded_state_is_still_validated_by_the_device() {
    let snap = file(|w| {
        w.write_device(
            0,
            &Fifo(vec![0; 17]), // saved by a device that broke its own limit
        )
        .unwrap()
    });
    let state = snap.read_device::<Fifo>(0).unwrap();
    let mut fresh = Fifo::default();
    assert_eq!(
        fresh.restore_state(&state).unwrap_err().to_string(),
        "fifo holds 17 bytes, more than 16"
    );
}
