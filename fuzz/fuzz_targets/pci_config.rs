//! PCI configuration and virtio-pci fuzzing: a root bus (vmkit-pci) with a
//! virtio-pci console (vmkit-virtio's `PciTransport`) in slot 1, driven by a
//! sequence of guest accesses through every path a guest has: ports
//! `0xCF8`–`0xCFF`, the ECAM window, the BAR window (so BAR sizing and
//! moving BARs are covered) and BAR 0 directly (common configuration, ISR,
//! notify, device configuration, MSI-X table and pending bits).
//!
//! Input: 14-byte operations `[path, width, offset: u32 le, value: u64 le]`.
//! `path` bit 0: write (else read); bits 1-2: 0 ports, 1 ECAM, 2 BAR window
//! at 0xc000_0000, 3 BAR 0. `width`: 1 to 8 bytes (`width % 8 + 1`), so
//! widths the rules refuse come too. Guest memory (64 KiB) starts zeroed;
//! queues the driver sets up point into it. After the sequence, the
//! identifiers must be as built: the guest can never change them.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmkit_pci::{MsiMessage, MsiSink, PciRoot};
use vmkit_virtio::console::Console;
use vmkit_virtio::pci::PciTransport;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Debug)]
struct Sink;

impl MsiSink for Sink {
    fn send(&self, msg: MsiMessage) -> std::io::Result<()> {
        // Any address and data the guest programmed; nothing to check but that it came.
        let _ = msg;
        Ok(())
    }
}

const BARS: u64 = 0xc000_0000;

fuzz_target!(|data: &[u8]| {
    let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
    let transport = Arc::new(
        PciTransport::new(
            Console::new(std::io::sink()),
            mem,
            Arc::new(Sink),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        )
        .unwrap(),
    );
    transport.set_bar_address(BARS).unwrap();
    let mut root = PciRoot::new();
    assert_eq!(root.add_device(transport.clone()).unwrap(), 1);
    let mut buf = [0u8; 8];
    for op in data.chunks_exact(14).take(4096) {
        let write = op[0] & 1 != 0;
        let path = (op[0] >> 1) & 3;
        let len = usize::from(op[1] % 8) + 1;
        let offset = u64::from(u32::from_le_bytes([op[2], op[3], op[4], op[5]]));
        buf.copy_from_slice(&op[6..14]);
        let bytes = &mut buf[..len];
        match (path, write) {
            (0, false) => root.port_read(offset % 8, bytes),
            (0, true) => root.port_write(offset % 8, bytes),
            // Slots 0 to 3 of bus 0 mostly, and anything else now and then.
            (1, false) => root.ecam_read(offset % (4 << 15), bytes),
            (1, true) => root.ecam_write(offset % (4 << 15), bytes),
            (2, false) => root.bar_read(BARS + offset % 0x1_0000, bytes),
            (2, true) => root.bar_write(BARS + offset % 0x1_0000, bytes),
            (_, false) => transport.read_bar(offset % 0x8000, bytes),
            (_, true) => transport.write_bar(offset % 0x8000, bytes),
        }
    }
    let mut id = [0u8; 4];
    root.ecam_read(1 << 15, &mut id);
    assert_eq!(u32::from_le_bytes(id), 0x1043_1af4);
    root.ecam_read(0, &mut id);
    assert_eq!(u32::from_le_bytes(id), 0x0008_1b36);
    root.ecam_read((1 << 15) | 8, &mut id);
    assert_eq!(u32::from_le_bytes(id) >> 8, 0x07_80_00);
});
