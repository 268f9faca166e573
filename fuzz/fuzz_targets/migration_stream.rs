//! Migration stream fuzzing, from the destination's side. Input: one mode byte, then the
//! bytes a source sends. Mode bit 0 set: each frame's header and payload checksums are
//! recomputed first, so that mutations reach the decoders and checks behind them. Every
//! frame is read with `FrameReader`, decoded as a `Message` and checked with `StreamCheck`
//! as `migration::receive` does; a state frame is parsed as a state file and its VM-state,
//! vCPU and capabilities sections decoded.
//! Seeds: `VMKIT_MIGRATION_SEEDS=$PWD/fuzz/corpus/migration_stream cargo test --lib migration::check::tests::fuzz_seeds`.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use vmkit::migration::wire::Message;
use vmkit::migration::{FrameReader, Limits, StreamCheck};
use vmkit::snapshot::{
    CapabilitiesSection, VcpuState, VmState, CAPABILITIES, CAPABILITIES_VERSION, VCPU_VERSION,
    VM_STATE,
};
use vmkit::{Capabilities, HypervisorKind};
use vmkit_snapshot::state::SECTION_HEADER_LEN;
use vmkit_snapshot::{checksum, Arch, Backend, Expected, SectionTag, Snapshot};

/// Recomputes each frame's payload and header checksums in place.
fn repair(bytes: &mut [u8]) {
    let mut at = 0usize;
    while at + SECTION_HEADER_LEN <= bytes.len() {
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[at + 16..at + 24]);
        let start = at + SECTION_HEADER_LEN;
        let end = start.saturating_add(u64::from_le_bytes(len).min(usize::MAX as u64) as usize);
        let end = end.min(bytes.len());
        let sum = checksum(&bytes[start..end]);
        bytes[at + 24..at + 32].copy_from_slice(&sum.to_le_bytes());
        let header = checksum(&bytes[at..at + 32]);
        bytes[at + 32..at + 40].copy_from_slice(&header.to_le_bytes());
        at = end;
    }
}

/// The host the seeds' offers fit (as in the library's unit tests).
fn host() -> Capabilities {
    let mut host = Capabilities::default();
    host.max_vcpus = 64;
    host.max_memory_slots = 32;
    host.irqchip = true;
    host.pit = true;
    host.dirty_log = true;
    host
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 != 0 {
        repair(&mut bytes);
    }
    let host = host();
    let mut check = StreamCheck::new(Limits::default().max_memory(1 << 30).max_rounds(16));
    let mut reader = FrameReader::new();
    let mut cursor = Cursor::new(&bytes[..]);
    loop {
        let seq = reader.next_seq();
        let Ok((tag, payload)) = reader.read(&mut cursor) else {
            return;
        };
        let Ok(message) = Message::decode(seq, tag, payload) else {
            return;
        };
        match check.message(&message, HypervisorKind::Kvm, &host) {
            Ok(true) => {}
            Ok(false) => {
                if let Message::State(state) = message {
                    let expected = Expected {
                        arch: Arch::X86_64,
                        backend: Backend::Kvm,
                    };
                    if let Ok(snapshot) = Snapshot::from_bytes(state, expected) {
                        let _ = snapshot.read_section::<VmState>(VM_STATE, 0, 1..=2);
                        for section in snapshot.instances(SectionTag::VCPU) {
                            let _ = section.decode::<VcpuState>(VCPU_VERSION..=VCPU_VERSION);
                        }
                        let range = CAPABILITIES_VERSION..=CAPABILITIES_VERSION;
                        if let Ok(caps) =
                            snapshot.read_section::<CapabilitiesSection>(CAPABILITIES, 0, range)
                        {
                            let _ = caps.capabilities();
                        }
                    }
                }
                return;
            }
            Err(_) => return,
        }
    }
});
