//! Userspace IOAPIC fuzzing: guest MMIO accesses of any width and offset
//! interleaved with the VMM's line changes and EOIs.
//!
//! Input: 6-byte operations `[op, a, b, v0, v1, v2]`. `op % 5`: 0 a guest
//! read at offset `a % 0x80`
//! of `b % 9` bytes; 1 a guest write there of `b % 9` bytes from `v`; 2 a
//! 32-bit write of `a` to IOREGSEL then of `v` (shifted by `b`) to IOWIN,
//! so mutations reach the redirection entries quickly; 3 `set_irq(a % 32,
//! b & 1)` (pins past 23 must be refused); 4 `end_of_interrupt(a)`.
//!
//! Invariants: nothing panics; every sent MSI has the interrupt address
//! and a delivery mode that sends; a masked pin with no interrupt in
//! service has no route; the state restores into a fresh IOAPIC and saves
//! back unchanged.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vmkit_devices::{IoApic, IoApicMsi, IoApicSink, Persist, IOAPIC_PINS};

#[derive(Default)]
struct Sink {
    routes: Mutex<[Option<IoApicMsi>; IOAPIC_PINS]>,
}

impl IoApicSink for Sink {
    fn send_msi(&self, msi: IoApicMsi) {
        assert_eq!(msi.address & !0xff004, 0xfee0_0000, "{msi:?}");
        let mode = (msi.data >> 8) & 7;
        assert!(matches!(mode, 0 | 1 | 2 | 4 | 5), "{msi:?}");
    }
    fn update_routes(&self, routes: &[Option<IoApicMsi>; IOAPIC_PINS]) {
        *self.routes.lock().unwrap() = *routes;
    }
}

fuzz_target!(|input: &[u8]| {
    let sink = Arc::new(Sink::default());
    let ioapic = IoApic::new(sink.clone());
    for op in input.chunks_exact(6) {
        let (a, b) = (op[1], op[2]);
        let value = [op[3], op[4], op[5], op[3] ^ op[5], op[4], op[5], op[3], op[4]];
        let offset = u64::from(a % 0x80);
        let len = usize::from(b % 9);
        match op[0] % 5 {
            0 => {
                let mut data = [0u8; 8];
                ioapic.read(offset, &mut data[..len]);
            }
            1 => ioapic.write(offset, &value[..len]),
            2 => {
                ioapic.write(0, &u32::from(a).to_le_bytes());
                let v = u32::from_le_bytes([op[3], op[4], op[5], b]).rotate_left(u32::from(b));
                ioapic.write(0x10, &v.to_le_bytes());
            }
            3 => {
                let pin = u32::from(a % 32);
                let result = ioapic.set_irq(pin, b & 1 == 1);
                assert_eq!(result.is_ok(), (pin as usize) < IOAPIC_PINS);
            }
            _ => ioapic.end_of_interrupt(a),
        }
    }
    let routes = *sink.routes.lock().unwrap();
    for (pin, route) in routes.iter().enumerate() {
        let entry = ioapic.entry(pin as u32).unwrap();
        let masked = entry & (1 << 16) != 0;
        let in_service = entry & (1 << 14) != 0;
        if masked && !in_service {
            assert!(route.is_none(), "pin {pin} entry {entry:#x} {route:?}");
        }
    }
    let state = ioapic.save_state();
    let mut fresh = IoApic::new(Arc::new(Sink::default()));
    fresh.restore_state(&state).unwrap();
    assert_eq!(fresh.save_state(), state);
});
