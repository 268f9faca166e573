//! Minimal ACPI tables (with rust-vmm's `acpi_tables`), for kernels that learn the machine
//! from ACPI only: Debian's cloud kernel, for one, is built without MP-table parsing and
//! without `virtio_mmio.device=` command-line devices, so its processors, its IOAPIC and its
//! virtio-mmio devices must be in ACPI.
//!
//! The tables, from [`ACPI_TABLES`] (in the legacy BIOS area, where a kernel also scans for
//! the RSDP): RSDP → XSDT → FADT, MADT (a local APIC per vCPU and the IOAPIC), and a DSDT
//! with a `PNP0501` device for each serial port and an `LNRO0005` device for each
//! virtio-mmio transport.
//!
//! Without a PM block ([`AcpiDevices::pm`] `None`) the FADT describes hardware-reduced ACPI:
//! no PM timer, GPE or SCI; its reset register is the i8042's command port with value
//! `0xfe`, so `reboot` resets through the VMM's i8042 even without `reboot=k`.
//!
//! With a [`PmBlock`] the FADT describes fixed-hardware ACPI: PM1a event and control blocks,
//! the 32-bit PM timer (TMR_VAL_EXT), the SCI on an ISA IRQ (with an interrupt source
//! override in the MADT: level-triggered, active high), no SMI command port (the machine
//! is always in ACPI mode), the block's reset register, a FACS (64-byte aligned, after the
//! FADT), and the DSDT gets `\_S5` (and, if asked, `\_S3`) with the block's SLP_TYP
//! values, so the guest can power off (S5) through PM1a_CNT.

use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{ACPI_TABLES, ACPI_TABLES_END, IOAPIC_ADDR, LAPIC_ADDR};
use super::LinuxBootError;

const OEM_ID: [u8; 6] = *b"VMKIT ";
const OEM_TABLE_ID: [u8; 8] = *b"VMKITVM ";
const OEM_REVISION: u32 = 1;
/// The i8042's command port and its pulse-reset command.
const RESET_PORT: u64 = 0x64;
const RESET_VALUE: u8 = 0xfe;

/// A virtio-mmio transport to describe to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    /// Its MMIO base address (below 4 GiB).
    pub base: u32,
    /// The size of its register window.
    pub size: u32,
    /// Its interrupt (a GSI, edge-triggered).
    pub irq: u32,
}

/// A 16550 serial port to describe to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SerialPort {
    /// Its first I/O port.
    pub port: u16,
    /// Its interrupt (a GSI, edge-triggered).
    pub irq: u32,
}

/// An ACPI power-management block to describe in the FADT (e.g. vmkit-devices' `PmBlock`,
/// whose constants give each field), which makes the tables fixed-hardware ACPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmBlock {
    /// The I/O port of PM1a_EVT_BLK: PM1a_STS (16 bits), then PM1a_EN (16 bits).
    pub pm1a_evt: u16,
    /// The I/O port of PM1a_CNT_BLK (16 bits).
    pub pm1a_cnt: u16,
    /// The I/O port of the 32-bit PM timer.
    pub pm_tmr: u16,
    /// The I/O port of the reset register (one byte).
    pub reset: u16,
    /// What to write to the reset register to reset the machine.
    pub reset_value: u8,
    /// The SCI's ISA IRQ (and GSI), below 16; level-triggered, active high.
    pub sci: u8,
    /// The SLP_TYP value of S5 (soft off), for `\_S5`.
    pub s5_type: u8,
    /// The SLP_TYP value of S3 (suspend to RAM), for `\_S3`; `None` offers no S3 (a VMM that
    /// cannot wake a suspended guest should not offer it).
    pub s3_type: Option<u8>,
}

/// The devices the ACPI tables announce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcpiDevices {
    /// Serial ports.
    pub serial: Vec<SerialPort>,
    /// virtio-mmio transports.
    pub virtio_mmio: Vec<VirtioMmioDevice>,
    /// The ACPI PM block, if the machine has one (see the [module documentation](self)).
    pub pm: Option<PmBlock>,
}

/// MADT interrupt source override (type 2) flags: active high (bits 0–1 = 01),
/// level-triggered (bits 2–3 = 11).
const ISO_LEVEL_ACTIVE_HIGH: u16 = 0b1101;
/// FADT IAPC_BOOT_ARCH is left 0; FADT flags of the fixed-hardware tables: a 32-bit PM
/// timer, the reset register, and no fixed-feature sleep button (the power button is the
/// block's PWRBTN).
const FIXED_HARDWARE_FLAGS: [Flags; 3] = [Flags::TmrValExt, Flags::ResetRegSup, Flags::SlpButton];
/// The FACS must be 64-byte aligned.
const FACS_ALIGN: u64 = 64;

/// Appends an interrupt source override (ISA `irq` → GSI `irq`, level, active high) to a
/// MADT, fixing its length and checksum.
fn add_interrupt_override(madt: &mut Vec<u8>, irq: u8) {
    let mut entry = vec![2, 10, 0, irq];
    entry.extend_from_slice(&u32::from(irq).to_le_bytes());
    entry.extend_from_slice(&ISO_LEVEL_ACTIVE_HIGH.to_le_bytes());
    madt.extend_from_slice(&entry);
    set_length_and_checksum(madt);
}

/// Rewrites an ACPI table header's length (bytes 4–7) and checksum (byte 9).
fn set_length_and_checksum(table: &mut [u8]) {
    let len = table.len() as u32;
    table[4..8].copy_from_slice(&len.to_le_bytes());
    table[9] = 0;
    let sum = table.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    table[9] = sum.wrapping_neg();
}

/// Appends `Name (\_Sx, Package { typ, typ, 0, 0 })`: SLP_TYP for PM1a and PM1b.
fn sleep_package(body: &mut Vec<u8>, name: &str, typ: u8) {
    aml::Name::new(
        name.into(),
        &aml::Package::new(vec![&typ, &typ, &0u8, &0u8]),
    )
    .to_aml_bytes(body);
}

/// Appends `Device (\_SB.name) { _HID, _UID, _CRS }` to `body`.
fn device(body: &mut Vec<u8>, name: &str, hid: &dyn Aml, uid: u32, resources: &[&dyn Aml]) {
    let resources = aml::ResourceTemplate::new(resources.to_vec());
    aml::Device::new(
        format!("_SB_.{name}").as_str().into(),
        vec![
            &aml::Name::new("_HID".into(), hid),
            &aml::Name::new("_UID".into(), &uid),
            &aml::Name::new("_CRS".into(), &resources),
        ],
    )
    .to_aml_bytes(body);
}

/// AML for the DSDT's device list.
fn dsdt_body(devices: &AcpiDevices) -> Vec<u8> {
    let mut body = Vec::new();
    for (uid, serial) in devices.serial.iter().enumerate() {
        let io = aml::IO::new(serial.port, serial.port, 1, 8);
        let irq = aml::Interrupt::new(true, true, false, false, serial.irq);
        let name = format!("COM{}", uid + 1);
        let hid = aml::EISAName::new("PNP0501");
        device(&mut body, &name, &hid, uid as u32, &[&io, &irq]);
    }
    for (uid, virtio) in devices.virtio_mmio.iter().enumerate() {
        let window = aml::Memory32Fixed::new(true, virtio.base, virtio.size);
        let irq = aml::Interrupt::new(true, true, false, false, virtio.irq);
        let name = format!("V{uid:03X}");
        let hid: aml::AmlStr = "LNRO0005";
        device(&mut body, &name, &hid, uid as u32, &[&window, &irq]);
    }
    if let Some(pm) = &devices.pm {
        if let Some(s3) = pm.s3_type {
            sleep_package(&mut body, "_S3_", s3);
        }
        sleep_package(&mut body, "_S5_", pm.s5_type);
    }
    body
}

/// The FADT's PM fields for `pm`, with the FACS at `facs_addr`.
fn fixed_hardware(mut fadt: FADTBuilder, pm: &PmBlock, facs_addr: u64) -> FADTBuilder {
    fadt = fadt.firmware_ctrl_64(facs_addr);
    for flag in FIXED_HARDWARE_FLAGS {
        fadt = fadt.flag(flag);
    }
    fadt.sci_int = u16::from(pm.sci).into();
    fadt.pm1a_evt_blk = u32::from(pm.pm1a_evt).into();
    fadt.pm1_evt_len = 4;
    fadt.pm1a_cnt_blk = u32::from(pm.pm1a_cnt).into();
    fadt.pm1_cnt_len = 2;
    fadt.pm_tmr_blk = u32::from(pm.pm_tmr).into();
    fadt.pm_tmr_len = 4;
    fadt.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(pm.reset),
    );
    fadt.reset_value = pm.reset_value;
    fadt
}

/// The tables, each with the guest address it goes to, RSDP first.
fn tables(vcpus: u8, devices: &AcpiDevices) -> Vec<(u64, Vec<u8>)> {
    let align = |addr: u64| (addr + 15) & !15;
    let rsdp_addr = ACPI_TABLES;

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_body(devices));
    let dsdt_bytes = dsdt.as_slice().to_vec();

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(vcpus, IOAPIC_ADDR, 0));
    let mut madt_bytes = Vec::new();
    madt.to_aml_bytes(&mut madt_bytes);
    if let Some(pm) = &devices.pm {
        add_interrupt_override(&mut madt_bytes, pm.sci);
    }

    let xsdt_addr = align(rsdp_addr + std::mem::size_of::<Rsdp>() as u64);
    let xsdt_len = 36 + 2 * 8;
    let fadt_addr = align(xsdt_addr + xsdt_len);
    let fadt_len = acpi_tables::fadt::FADT::len() as u64;
    // The FACS, when there is one, follows the FADT at the next 64-byte boundary.
    let facs_addr = (fadt_addr + fadt_len).next_multiple_of(FACS_ALIGN);
    let fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let (mut fadt, facs) = match &devices.pm {
        Some(pm) => {
            let mut facs = Vec::new();
            FACS::new().to_aml_bytes(&mut facs);
            (fixed_hardware(fadt, pm, facs_addr), Some((facs_addr, facs)))
        }
        None => {
            let mut fadt = fadt.flag(Flags::HwReducedAcpi).flag(Flags::ResetRegSup);
            fadt.reset_reg = GAS::new(
                AddressSpace::SystemIo,
                8,
                0,
                AccessSize::ByteAccess,
                RESET_PORT,
            );
            fadt.reset_value = RESET_VALUE;
            (fadt, None)
        }
    };
    let after_fadt = facs.as_ref().map_or(fadt_addr + fadt_len, |(addr, bytes)| {
        addr + bytes.len() as u64
    });
    let madt_addr = align(after_fadt);
    let dsdt_addr = align(madt_addr + madt_bytes.len() as u64);
    fadt = fadt.dsdt_64(dsdt_addr);
    let mut fadt_bytes = Vec::new();
    fadt.finalize().to_aml_bytes(&mut fadt_bytes);

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    debug_assert_eq!(xsdt_bytes.len() as u64, xsdt_len);

    let mut rsdp_bytes = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp_bytes);

    let mut tables = vec![
        (rsdp_addr, rsdp_bytes),
        (xsdt_addr, xsdt_bytes),
        (fadt_addr, fadt_bytes),
    ];
    tables.extend(facs);
    tables.extend([(madt_addr, madt_bytes), (dsdt_addr, dsdt_bytes)]);
    tables
}

/// Where [`write_acpi_tables`] puts the FACS for `vcpus` processors and `devices`: the table
/// a guest leaves its waking vector in before it suspends to RAM (see
/// [`wake`](crate::wake)). `None` without a PM block (no FACS then).
pub fn facs_address(vcpus: u32, devices: &AcpiDevices) -> Option<u64> {
    let count = u8::try_from(vcpus).ok().filter(|&n| n >= 1)?;
    tables(count, devices)
        .into_iter()
        .find(|(_, bytes)| bytes.starts_with(b"FACS"))
        .map(|(addr, _)| addr)
}

/// Writes the ACPI tables for `vcpus` processors and `devices` from [`ACPI_TABLES`]; returns
/// the RSDP's address.
pub fn write_acpi_tables<M: GuestMemoryBackend>(
    memory: &M,
    vcpus: u32,
    devices: &AcpiDevices,
) -> Result<u64, LinuxBootError> {
    let count = u8::try_from(vcpus)
        .ok()
        .filter(|&n| n >= 1 && u32::from(n) <= super::mptable::MAX_VCPUS)
        .ok_or(LinuxBootError::VcpuCount {
            vcpus,
            max: super::mptable::MAX_VCPUS,
        })?;
    let tables = tables(count, devices);
    let end = tables
        .last()
        .map_or(ACPI_TABLES, |(addr, bytes)| addr + bytes.len() as u64);
    if end > ACPI_TABLES_END {
        return Err(LinuxBootError::AcpiTooLarge {
            size: end - ACPI_TABLES,
            max: ACPI_TABLES_END - ACPI_TABLES,
        });
    }
    for (addr, bytes) in &tables {
        memory
            .write_slice(bytes, GuestAddress(*addr))
            .map_err(|source| LinuxBootError::GuestMemory {
                what: "ACPI tables",
                addr: *addr,
                source,
            })?;
    }
    Ok(ACPI_TABLES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b))
    }

    fn devices() -> AcpiDevices {
        AcpiDevices {
            serial: vec![SerialPort {
                port: 0x3f8,
                irq: 4,
            }],
            virtio_mmio: vec![
                VirtioMmioDevice {
                    base: 0xd000_0000,
                    size: 0x1000,
                    irq: 5,
                },
                VirtioMmioDevice {
                    base: 0xd000_1000,
                    size: 0x1000,
                    irq: 6,
                },
            ],
            pm: None,
        }
    }

    const PM: PmBlock = PmBlock {
        pm1a_evt: 0x600,
        pm1a_cnt: 0x604,
        pm_tmr: 0x608,
        reset: 0x60c,
        reset_value: 0x06,
        sci: 9,
        s5_type: 5,
        s3_type: Some(3),
    };

    fn u32_at(table: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(table[offset..offset + 4].try_into().unwrap())
    }

    #[test]
    fn a_pm_block_makes_fixed_hardware_tables_that_point_at_its_ports() {
        let tables = tables(
            2,
            &AcpiDevices {
                pm: Some(PM),
                ..devices()
            },
        );
        for (_, table) in &tables[1..] {
            let len = u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, table.len());
            if &table[..4] != b"FACS" {
                assert_eq!(sum(table), 0, "{:?}", std::str::from_utf8(&table[..4]));
            }
        }
        let xsdt = &tables[1].1;
        let (fadt_addr, fadt) = &tables[2];
        assert_eq!(
            u64::from_le_bytes(xsdt[36..44].try_into().unwrap()),
            *fadt_addr
        );
        assert_eq!(&fadt[..4], b"FACP");
        let flags = u32_at(fadt, 112);
        assert_eq!(
            flags & Flags::HwReducedAcpi as u32,
            0,
            "not hardware-reduced"
        );
        assert_ne!(flags & Flags::TmrValExt as u32, 0, "32-bit timer");
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        // SCI_INT, SMI_CMD, PM1a_EVT_BLK, PM1a_CNT_BLK, PM_TMR_BLK and their lengths.
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 9);
        assert_eq!(
            u32_at(fadt, 48),
            0,
            "no SMI command port: always in ACPI mode"
        );
        assert_eq!(u32_at(fadt, 56), 0x600);
        assert_eq!(u32_at(fadt, 64), 0x604);
        assert_eq!(u32_at(fadt, 76), 0x608);
        assert_eq!([fadt[88], fadt[89], fadt[91]], [4, 2, 4]);
        // RESET_REG: system I/O, 8 bits, at the block's reset port; RESET_VALUE.
        assert_eq!(fadt[116], 1);
        assert_eq!(fadt[117], 8);
        assert_eq!(
            u64::from_le_bytes(fadt[120..128].try_into().unwrap()),
            0x60c
        );
        assert_eq!(fadt[128], 0x06);
        // X_FIRMWARE_CTRL points at the FACS, 64-byte aligned, which follows the FADT.
        let facs_addr = u64::from_le_bytes(fadt[132..140].try_into().unwrap());
        assert_eq!(facs_addr % 64, 0);
        let (addr, facs) = &tables[3];
        assert_eq!((*addr, &facs[..4]), (facs_addr, &b"FACS"[..]));
        assert_eq!(u32_at(facs, 4), 64);
        let with_pm = AcpiDevices {
            pm: Some(PM),
            ..devices()
        };
        assert_eq!(facs_address(2, &with_pm), Some(facs_addr));
        assert_eq!(facs_address(2, &devices()), None);
        // Nothing overlaps: each table starts after the previous one ends.
        for pair in tables.windows(2) {
            assert!(pair[0].0 + pair[0].1.len() as u64 <= pair[1].0);
        }
        // The MADT's last entry overrides ISA IRQ 9 to GSI 9, level, active high.
        let madt = &tables.iter().find(|(_, t)| &t[..4] == b"APIC").unwrap().1;
        let iso = &madt[madt.len() - 10..];
        assert_eq!(iso[..4], [2, 10, 0, 9]);
        assert_eq!(u32_at(iso, 4), 9);
        assert_eq!(u16::from_le_bytes([iso[8], iso[9]]), ISO_LEVEL_ACTIVE_HIGH);
        // The DSDT has \_S3 and \_S5 with the block's SLP_TYP values.
        let dsdt = &tables.last().unwrap().1;
        let package = |name: &[u8], typ: u8| {
            // NameOp, the name, PackageOp, its length, 4 elements.
            let at = dsdt.windows(4).position(|w| w == name).unwrap();
            assert_eq!(dsdt[at - 1], 0x08, "NameOp");
            assert_eq!(dsdt[at + 4], 0x12, "PackageOp");
            assert_eq!(dsdt[at + 6], 4, "elements");
            // BytePrefix typ, BytePrefix typ, ZeroOp, ZeroOp.
            assert_eq!(dsdt[at + 7..at + 13], [0x0a, typ, 0x0a, typ, 0, 0]);
        };
        package(b"_S5_", 5);
        package(b"_S3_", 3);
    }

    #[test]
    fn without_s3_the_dsdt_offers_only_s5_and_without_a_block_nothing() {
        let pm = PmBlock {
            s3_type: None,
            ..PM
        };
        let body = dsdt_body(&AcpiDevices {
            pm: Some(pm),
            ..devices()
        });
        assert!(body.windows(4).any(|w| w == b"_S5_"));
        assert!(!body.windows(4).any(|w| w == b"_S3_"));
        let body = dsdt_body(&devices());
        assert!(!body.windows(4).any(|w| w == b"_S5_"));
    }

    #[test]
    fn every_table_checksums_and_the_pointers_chain() {
        let tables = tables(2, &devices());
        let (rsdp_addr, rsdp) = &tables[0];
        assert_eq!(*rsdp_addr, ACPI_TABLES);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(rsdp), 0, "extended checksum");
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let find = |addr: u64| &tables.iter().find(|(a, _)| *a == addr).unwrap().1;
        let xsdt = find(xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        let fadt = find(u64::from_le_bytes(xsdt[36..44].try_into().unwrap()));
        let madt = find(u64::from_le_bytes(xsdt[44..52].try_into().unwrap()));
        assert_eq!((&fadt[..4], &madt[..4]), (&b"FACP"[..], &b"APIC"[..]));
        let dsdt = find(u64::from_le_bytes(fadt[140..148].try_into().unwrap()));
        assert_eq!(&dsdt[..4], b"DSDT");
        for (_, table) in &tables[1..] {
            let len = u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "{:?}", std::str::from_utf8(&table[..4]));
        }
        // FADT: hardware-reduced, reset through the i8042.
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
        assert_eq!(fadt[128], RESET_VALUE);
        // MADT: two local APICs (type 0) and the IOAPIC (type 1) with ID 2.
        assert_eq!(madt[44..46], [0, 8]);
        assert_eq!(madt[52..54], [0, 8]);
        assert_eq!(madt[60..63], [1, 12, 2]);
    }

    #[test]
    fn the_dsdt_names_the_serial_port_and_each_virtio_device() {
        let body = dsdt_body(&devices());
        let text = String::from_utf8_lossy(&body);
        assert_eq!(text.matches("LNRO0005").count(), 2);
        assert!(text.contains("V000") && text.contains("V001") && text.contains("COM1"));
        // The second device's base address appears little-endian in its Memory32Fixed.
        let base = 0xd000_1000u32.to_le_bytes();
        assert!(body.windows(4).any(|w| w == base));
    }

    #[test]
    fn tables_fit_their_area_and_too_many_vcpus_are_refused() {
        let memory =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let max = super::super::mptable::MAX_VCPUS;
        let with_pm = AcpiDevices {
            pm: Some(PM),
            ..devices()
        };
        assert_eq!(
            write_acpi_tables(&memory, max, &with_pm).unwrap(),
            ACPI_TABLES
        );
        assert!(matches!(
            write_acpi_tables(&memory, max + 1, &devices()),
            Err(LinuxBootError::VcpuCount { .. })
        ));
    }
}
