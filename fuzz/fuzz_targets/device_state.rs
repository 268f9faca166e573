//! Device-state fuzzing: every device's saved state, as a snapshot section read from an
//! untrusted file, decoded and restored into a fresh device. Neither step may panic; a
//! state that restores must save back unchanged, and the device must keep working.
//!
//! Input: one selector byte, then the rest. Selector bits 0-6, modulo 10, pick the device
//! (serial, i8042, debug-exit, CMOS, virtio-blk, virtio-console, virtio-net, then each
//! virtio device in its virtio-mmio transport, over guest memory filled from the rest).
//! With bit 7 set, the rest is the section payload as is (kind first, then the state).
//! With bit 7 clear, the payload is the one a fresh device of that kind saves, patched: the
//! rest is a list of 3-byte patches (a little-endian position modulo the payload length plus
//! one, and a byte that replaces the payload's byte there, or is appended at the end), so
//! that mutations reach every field of a well-formed state. The seeds need no generator:
//! each is a selector byte, alone or with a few patches (see fuzz/corpus/device_state).
#![no_main]

use std::io;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmkit_devices::{Cmos, DebugExit, Serial, I8042};
use vmkit_snapshot::{Arch, Backend, Expected, Persist, SectionTag, Snapshot, Writer};
use vmkit_virtio::blk::{Block, BlockBackend, BlockOptions};
use vmkit_virtio::console::Console;
use vmkit_virtio::mmio::MmioTransport;
use vmkit_virtio::net::*;
use vmkit_virtio::VirtioDevice;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[allow(dead_code)]
mod common;

const EXPECTED: Expected = Expected {
    arch: Arch::X86_64,
    backend: Backend::Kvm,
};

/// A disk in memory.
struct MemDisk(Vec<u8>);

impl BlockBackend for MemDisk {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let dst = start
            .checked_add(buf.len())
            .and_then(|end| self.0.get_mut(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        dst.copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A network backend that offers every offload and carries nothing.
struct Quiet;

impl NetBackend for Quiet {
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities {
            vnet_hdr: true,
            tx_offloads: HOST_OFFLOAD_FEATURES,
            rx_offloads: GUEST_OFFLOAD_FEATURES,
        }
    }
    fn set_rx_offloads(&mut self, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn recv(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn send(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

fn block() -> Block<MemDisk> {
    Block::with_backend(
        MemDisk(vec![0; 16 * 512]),
        16 * 512,
        BlockOptions::default(),
    )
    .expect("valid options")
}

fn net() -> Net<Quiet> {
    Net::new(Quiet, NetOptions::default()).expect("valid options")
}

fn irq() -> EventFd {
    EventFd::new(EFD_NONBLOCK).expect("eventfd")
}

/// Reads device section 0 of a state file holding `payload`, as a VMM reads it: the state,
/// if the section decodes as `P`'s.
fn read<P: Persist>(payload: &[u8]) -> Option<P::State> {
    let mut file = Vec::new();
    let mut w = Writer::new(&mut file, Arch::X86_64, Backend::Kvm, [0; 32]);
    w.write_raw_section(SectionTag::DEVICE, 0, P::VERSION, payload)
        .ok()?;
    w.finish().expect("an in-memory file");
    let snapshot = Snapshot::from_bytes(&file, EXPECTED).expect("a file just written");
    snapshot.read_device::<P>(0).ok()
}

/// The section payload `fresh` writes, with `patches` applied (see the module docs).
fn patched<P: Persist>(fresh: &P, patches: &[u8]) -> Vec<u8> {
    let mut file = Vec::new();
    let mut w = Writer::new(&mut file, Arch::X86_64, Backend::Kvm, [0; 32]);
    w.write_device(0, fresh)
        .expect("a fresh device's state encodes");
    w.finish().expect("an in-memory file");
    let snapshot = Snapshot::from_bytes(&file, EXPECTED).expect("a file just written");
    let mut payload = snapshot
        .get(SectionTag::DEVICE, 0)
        .expect("the section just written")
        .payload()
        .to_vec();
    for patch in patches.chunks_exact(3) {
        let position = usize::from(u16::from_le_bytes([patch[0], patch[1]])) % (payload.len() + 1);
        match payload.get_mut(position) {
            Some(byte) => *byte = patch[2],
            None => payload.push(patch[2]),
        }
    }
    payload
}

/// Restores the state that `rest` describes (see the module docs) into `fresh`; a state
/// that restores saves back unchanged. Returns the restored device.
fn restore<P: Persist>(mut fresh: P, rest: &[u8], raw: bool) -> Option<P> {
    let payload = if raw {
        rest.to_vec()
    } else {
        patched(&fresh, rest)
    };
    let state = read::<P>(&payload)?;
    fresh.restore_state(&state).ok()?;
    assert_eq!(
        fresh.save_state(),
        state,
        "a restored state saves back unchanged"
    );
    Some(fresh)
}

/// A transport around `device` over guest memory filled from `rest`, restored; then
/// driven as a guest would after a restore.
fn transport<D>(device: D, rest: &[u8], raw: bool)
where
    D: VirtioDevice<common::Mem> + Persist,
{
    let mem = Arc::new(common::memory(rest));
    let fresh = MmioTransport::new(device, mem, irq()).expect("a device with queues");
    let Some(t) = restore(fresh, rest, raw) else {
        return;
    };
    let _ = t.resume();
    for queue in 0..3 {
        let _ = t.process_queue(queue);
    }
    let mut word = [0u8; 4];
    t.read(0x70, &mut word);
    t.write(0x70, &0u32.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let raw = selector & 0x80 != 0;
    match (selector & 0x7f) % 10 {
        0 => {
            if let Some(serial) = restore(Serial::new(io::sink()).expect("eventfd"), rest, raw) {
                let mut byte = [0];
                for offset in 0..8 {
                    serial.read(offset, &mut byte);
                }
                serial.write(0, b"x");
                serial.enqueue_input(b"y");
            }
        }
        1 => {
            if let Some(i8042) = restore(I8042::new().expect("eventfd"), rest, raw) {
                i8042.write(4, &[I8042::RESET_COMMAND]);
                assert!(i8042.reset_requested());
            }
        }
        2 => {
            if let Some(port) = restore(DebugExit::new().expect("eventfd"), rest, raw) {
                port.write(0, &[7]);
                assert_eq!(port.exit_code(), Some(7));
            }
        }
        3 => {
            if let Some(cmos) = restore(Cmos::with_clock(|| 0), rest, raw) {
                let mut byte = [0];
                for index in 0..0x80u8 {
                    cmos.write(0, &[index]);
                    cmos.read(1, &mut byte);
                }
            }
        }
        4 => {
            let _ = restore(block(), rest, raw);
        }
        5 => {
            let _ = restore(Console::new(io::sink()), rest, raw);
        }
        6 => {
            if let Some(mut net) = restore(net(), rest, raw) {
                let features = VirtioDevice::<common::Mem>::features(&net);
                let _ = VirtioDevice::<common::Mem>::activate(&mut net, features);
            }
        }
        7 => transport(block(), rest, raw),
        8 => transport(Console::new(io::sink()), rest, raw),
        _ => transport(net(), rest, raw),
    }
});
