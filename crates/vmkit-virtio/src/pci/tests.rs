use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_pci::config::COMMAND_MEMORY;
use vmkit_pci::msix::CONTROL_ENABLE;
use vmkit_pci::{MsiMessage, MsiSink, PciDevice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::console::Console;
use crate::mmio::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK};

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<MsiMessage>>);

impl MsiSink for Recorder {
    fn send(&self, msg: MsiMessage) -> std::io::Result<()> {
        self.0.lock().unwrap().push(msg);
        Ok(())
    }
}

type Mem = Arc<GuestMemoryMmap<()>>;

fn transport() -> (PciTransport<Mem, Console<Vec<u8>>>, Mem, Arc<Recorder>) {
    let mem: Mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
    let sink = Arc::new(Recorder::default());
    let t = PciTransport::new(
        Console::new(Vec::new()),
        mem.clone(),
        sink.clone(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    )
    .unwrap();
    t.set_bar_address(0xe000_0000).unwrap();
    (t, mem, sink)
}

fn cfg32(t: &impl PciDevice, offset: u16) -> u32 {
    let mut b = [0u8; 4];
    t.config_read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &PciTransport<Mem, Console<Vec<u8>>>, offset: u64, v: u64, len: usize) {
    t.write_bar(offset, &v.to_le_bytes()[..len]);
}

fn r(t: &PciTransport<Mem, Console<Vec<u8>>>, offset: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    t.read_bar(offset, &mut b[..len]);
    u64::from_le_bytes(b)
}

/// The capabilities, as (id, offset) in list order.
fn capabilities(t: &impl PciDevice) -> Vec<(u8, u16)> {
    let mut caps = Vec::new();
    let mut at = (cfg32(t, 0x34) & 0xff) as u16;
    while at != 0 && caps.len() < 48 {
        let head = cfg32(t, at);
        caps.push(((head & 0xff) as u8, at));
        at = ((head >> 8) & 0xff) as u16;
    }
    caps
}

#[test]
fn config_space_announces_every_structure_in_bar_0() {
    let (t, _, _) = transport();
    assert_eq!(cfg32(&t, 0), 0x1043_1af4, "console: 0x1040 + 3");
    assert_eq!(cfg32(&t, 8) >> 8, 0x07_80_00);
    let caps = capabilities(&t);
    let mut types = Vec::new();
    for &(id, at) in &caps {
        if id == VENDOR_CAP_ID {
            let word = cfg32(&t, at);
            let (cfg_type, bar) = ((word >> 24) as u8, cfg32(&t, at + 4) & 0xff);
            assert_eq!(bar, 0);
            let offset = u64::from(cfg32(&t, at + 8));
            let length = u64::from(cfg32(&t, at + 12));
            assert!(offset + length <= BAR_SIZE);
            types.push(cfg_type);
            if cfg_type == CAP_NOTIFY {
                assert_eq!(cfg32(&t, at + 16), NOTIFY_MULTIPLIER);
            }
        }
    }
    types.sort();
    assert_eq!(types, [CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE]);
    assert!(caps.iter().any(|&(id, _)| id == MSIX_CAP_ID));
    // BAR sizing.
    t.config_write(0x10, &u32::MAX.to_le_bytes());
    assert_eq!(cfg32(&t, 0x10), !(BAR_SIZE as u32 - 1));
}

/// Sets the console's transmit queue (1) up and sends "hi" through it.
fn drive_transmit(t: &PciTransport<Mem, Console<Vec<u8>>>, mem: &Mem) {
    w(t, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
    w(t, 0x00, 1, 4);
    assert_eq!(r(t, 0x04, 4) & 1, 1, "VIRTIO_F_VERSION_1");
    w(t, 0x08, 1, 4);
    w(t, 0x0c, 1, 4);
    w(
        t,
        0x14,
        u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK),
        1,
    );
    assert_ne!(r(t, 0x14, 1) as u32 & STATUS_FEATURES_OK, 0);
    assert_eq!(r(t, 0x12, 2), 2, "two queues");
    w(t, 0x16, 1, 2);
    w(t, 0x18, 16, 2);
    assert_eq!(r(t, 0x18, 2), 16);
    w(t, 0x1a, 1, 2);
    w(t, 0x20, 0x1000, 8);
    // The driver area as two halves.
    w(t, 0x28, 0x2000, 4);
    w(t, 0x2c, 0, 4);
    w(t, 0x30, 0x3000, 8);
    assert_eq!(r(t, 0x28, 8), 0x2000);
    w(t, 0x1c, 1, 2);
    assert_eq!(r(t, 0x1c, 2), 1);
    assert_eq!(r(t, 0x1e, 2), 1, "queue_notify_off");
    w(
        t,
        0x14,
        u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK),
        1,
    );
    assert_eq!(t.take_error().map(|e| e.to_string()), None);
    mem.write_obj(0x4000u64, GuestAddress(0x1000)).unwrap();
    mem.write_obj(2u32, GuestAddress(0x1008)).unwrap();
    mem.write_slice(b"hi", GuestAddress(0x4000)).unwrap();
    mem.write_obj(0u16, GuestAddress(0x2004)).unwrap();
    mem.write_obj(1u16, GuestAddress(0x2002)).unwrap();
    w(
        t,
        PciTransport::<Mem, Console<Vec<u8>>>::notify_offset(1),
        1,
        2,
    );
    assert_eq!(
        mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap(),
        1,
        "used.idx"
    );
}

#[test]
fn a_queue_interrupts_through_its_msix_vector() {
    let (t, mem, sink) = transport();
    // Enable MSI-X and program vector 1, unmasked.
    let msix = capabilities(&t)
        .into_iter()
        .find(|c| c.0 == MSIX_CAP_ID)
        .unwrap()
        .1;
    t.config_write(msix + 2, &CONTROL_ENABLE.to_le_bytes());
    t.config_write(4, &COMMAND_MEMORY.to_le_bytes());
    w(&t, MSIX_TABLE_OFFSET + 16, 0xfee0_0000, 8);
    w(&t, MSIX_TABLE_OFFSET + 24, 0x31, 4);
    w(&t, MSIX_TABLE_OFFSET + 28, 0, 4);
    drive_transmit(&t, &mem);
    assert_eq!(
        *sink.0.lock().unwrap(),
        [MsiMessage {
            address: 0xfee0_0000,
            data: 0x31
        }]
    );
    assert_eq!(t.intx_evt().read().ok(), None, "no INTx with MSI-X on");
    // A vector beyond the table reads back as NO_VECTOR.
    w(&t, 0x1a, 7, 2);
    assert_eq!(r(&t, 0x1a, 2), u64::from(NO_VECTOR));
    // A reset forgets the vectors.
    w(&t, 0x14, 0, 1);
    w(&t, 0x16, 1, 2);
    assert_eq!(r(&t, 0x1a, 2), u64::from(NO_VECTOR));
    assert_eq!(r(&t, 0x14, 1), 0);
}

#[test]
fn without_msix_a_queue_interrupts_through_intx_and_the_isr() {
    let (t, mem, sink) = transport();
    drive_transmit(&t, &mem);
    assert!(sink.0.lock().unwrap().is_empty());
    assert_eq!(t.intx_evt().read().unwrap(), 1);
    assert_eq!(r(&t, ISR_OFFSET, 1), 1);
    assert_eq!(r(&t, ISR_OFFSET, 1), 0, "reading the ISR clears it");
}

#[test]
fn accesses_off_the_fields_are_refused_and_counted() {
    let (t, _, _) = transport();
    let before = t.invalid_accesses();
    assert_eq!(r(&t, 0x01, 1), 0xff, "inside device_feature_select");
    assert_eq!(r(&t, 0x14, 2), 0xffff, "status is one byte");
    assert_eq!(r(&t, 0x22, 2), 0xffff, "queue_desc in 16 bits");
    assert_eq!(r(&t, 0x40, 4), 0xffff_ffff, "past the common structure");
    assert_eq!(r(&t, 0x0800, 4), 0xffff_ffff, "a hole");
    w(&t, 0x04, 0, 4); // device_feature is read-only
    w(&t, 0x12, 0, 2); // num_queues is read-only
    w(&t, NOTIFY_OFFSET + 2, 0, 2); // misaligned notify
    w(&t, NOTIFY_OFFSET + 4 * 2, 0, 2); // no queue 2
    w(&t, MSIX_TABLE_OFFSET + 2, 0, 2);
    assert_eq!(t.invalid_accesses() - before, 10);
    assert_eq!(r(&t, 0x14, 1), 0, "nothing changed");
}
