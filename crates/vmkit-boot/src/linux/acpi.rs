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
//! With a [`PciHostBridge`] the XSDT also points at an MCFG (the bridge's ECAM window), and
//! the DSDT gets `\_SB.PCI0` (`PNP0A08`/`PNP0A03`: bus range, the configuration ports, the
//! I/O and memory windows in `_CRS`, INTx routing to GSIs in `_PRT`) and a `PNP0C02` device
//! reserving the ECAM window.
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
use acpi_tables::mcfg::MCFG;
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

/// A PCI host bridge to describe to the guest: an MCFG entry for its ECAM window, and a
/// `PCI0` device (`PNP0A08`, compatible with `PNP0A03`) in the DSDT with its bus range, I/O
/// and memory windows and INTx routing (`_PRT`), plus a `PNP0C02` motherboard device that
/// reserves the ECAM window (Linux uses ECAM only where it is reserved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciHostBridge {
    /// The ECAM window's base (bus 0; 1 MiB per bus).
    pub ecam_base: u64,
    /// The last bus number behind the bridge (the ECAM window holds `last_bus + 1` MiB).
    pub last_bus: u8,
    /// The memory window BARs are placed in: first and last address, below 4 GiB.
    pub mmio: (u32, u32),
    /// INTx routing: each device slot whose INTA–INTD are wired to a GSI (level-triggered,
    /// active low, as PCI interrupts are).
    pub intx: Vec<PciIntx>,
}

/// The GSI a slot's interrupt pins are wired to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIntx {
    /// The device's slot on bus 0.
    pub slot: u8,
    /// The GSI (an IOAPIC input).
    pub gsi: u32,
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
    /// A PCI host bridge, if the machine has one (see [`PciHostBridge`]).
    pub pci: Option<PciHostBridge>,
}

/// The conventional configuration ports of a PCI host bridge (0xCF8–0xCFF).
const PCI_CONFIG_PORT: u16 = 0xcf8;

/// Appends `Device (\_SB.PCI0)` and the motherboard device reserving its ECAM window.
fn pci_host_bridge(body: &mut Vec<u8>, pci: &PciHostBridge) {
    let buses = aml::AddressSpace::<u16>::new_bus_number(0, u16::from(pci.last_bus));
    let config = aml::IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, 8);
    // Every port but the configuration ports is open to the bus.
    let io_low = aml::AddressSpace::<u16>::new_io(0, PCI_CONFIG_PORT - 1, None);
    let io_high = aml::AddressSpace::<u16>::new_io(0x0d00, 0xffff, None);
    let mmio = aml::AddressSpace::<u32>::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        pci.mmio.0,
        pci.mmio.1,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&buses, &config, &io_low, &io_high, &mmio]);
    // _PRT: { address (slot << 16 | 0xffff), pin, source (none: a GSI), GSI }.
    let entries: Vec<(u32, u8, u8, u32)> = pci
        .intx
        .iter()
        .flat_map(|i| {
            (0..4u8).map(move |pin| ((u32::from(i.slot) << 16) | 0xffff, pin, 0u8, i.gsi))
        })
        .collect();
    let packages: Vec<aml::Package> = entries
        .iter()
        .map(|(addr, pin, source, gsi)| aml::Package::new(vec![addr, pin, source, gsi]))
        .collect();
    let prt = aml::Package::new(packages.iter().map(|p| p as &dyn Aml).collect());
    let hid = aml::EISAName::new("PNP0A08");
    let cid = aml::EISAName::new("PNP0A03");
    aml::Device::new(
        "_SB_.PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &hid),
            &aml::Name::new("_CID".into(), &cid),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new("_SEG".into(), &0u8),
            &aml::Name::new("_BBN".into(), &0u8),
            &aml::Name::new("_ADR".into(), &0u8),
            &aml::Name::new("_CRS".into(), &crs),
            &aml::Name::new("_PRT".into(), &prt),
        ],
    )
    .to_aml_bytes(body);
    let ecam_size = (u64::from(pci.last_bus) + 1) << 20;
    let ecam = aml::AddressSpace::<u64>::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        pci.ecam_base,
        pci.ecam_base + ecam_size - 1,
        None,
    );
    let hid = aml::EISAName::new("PNP0C02");
    device(body, "MRES", &hid, 0, &[&ecam]);
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
    if let Some(pci) = &devices.pci {
        pci_host_bridge(&mut body, pci);
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
fn tables(vcpus: u8, stride: u8, devices: &AcpiDevices) -> Vec<(u64, Vec<u8>)> {
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
        madt.add_structure(ProcessorLocalApic::new(
            id,
            id * stride,
            EnabledStatus::Enabled,
        ));
    }
    // The IOAPIC's ID follows the last local APIC's (`vcpus` with stride 1).
    madt.add_structure(IoApic::new((vcpus - 1) * stride + 1, IOAPIC_ADDR, 0));
    let mut madt_bytes = Vec::new();
    madt.to_aml_bytes(&mut madt_bytes);
    if let Some(pm) = &devices.pm {
        add_interrupt_override(&mut madt_bytes, pm.sci);
    }

    let xsdt_addr = align(rsdp_addr + std::mem::size_of::<Rsdp>() as u64);
    let xsdt_len = 36 + 8 * if devices.pci.is_some() { 3 } else { 2 };
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

    // The MCFG, with a PCI host bridge, follows the DSDT.
    let mcfg = devices.pci.as_ref().map(|pci| {
        let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
        mcfg.add_ecam(pci.ecam_base, 0, 0, pci.last_bus);
        let mut bytes = Vec::new();
        mcfg.to_aml_bytes(&mut bytes);
        (align(dsdt_addr + dsdt_bytes.len() as u64), bytes)
    });
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    if let Some((addr, _)) = &mcfg {
        xsdt.add_entry(*addr);
    }
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
    tables.extend(mcfg);
    tables
}

/// Where [`write_acpi_tables`] puts the FACS for `vcpus` processors and `devices`: the table
/// a guest leaves its waking vector in before it suspends to RAM (see
/// [`wake`](crate::wake)). `None` without a PM block (no FACS then).
pub fn facs_address(vcpus: u32, devices: &AcpiDevices) -> Option<u64> {
    let count = u8::try_from(vcpus).ok().filter(|&n| n >= 1)?;
    // The tables' sizes do not depend on the APIC IDs.
    tables(count, 1, devices)
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
    write_acpi_tables_with_stride(memory, vcpus, 1, devices)
}

/// [`write_acpi_tables`] for a hypervisor that gives vCPU `n` APIC ID `n * apic_id_stride`
/// ([`Capabilities::apic_id_stride`](vmkit::Capabilities::apic_id_stride); 0 counts as 1).
pub fn write_acpi_tables_with_stride<M: GuestMemoryBackend>(
    memory: &M,
    vcpus: u32,
    apic_id_stride: u32,
    devices: &AcpiDevices,
) -> Result<u64, LinuxBootError> {
    let (count, stride) = super::mptable::apic_ids(vcpus, apic_id_stride)?;
    let tables = tables(count, stride, devices);
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
            pci: None,
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
            1,
            &AcpiDevices {
                pm: Some(PM),
                pci: None,
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
            pci: None,
            ..devices()
        });
        assert!(body.windows(4).any(|w| w == b"_S5_"));
        assert!(!body.windows(4).any(|w| w == b"_S3_"));
        let body = dsdt_body(&devices());
        assert!(!body.windows(4).any(|w| w == b"_S5_"));
    }

    #[test]
    fn every_table_checksums_and_the_pointers_chain() {
        let tables = tables(2, 1, &devices());
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
            pci: Some(bridge()),
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

    fn bridge() -> PciHostBridge {
        PciHostBridge {
            ecam_base: 0xe000_0000,
            last_bus: 0,
            mmio: (0xc000_0000, 0xcfff_ffff),
            intx: vec![PciIntx { slot: 1, gsi: 10 }, PciIntx { slot: 2, gsi: 11 }],
        }
    }

    #[test]
    fn a_pci_host_bridge_gets_an_mcfg_and_a_pci0_with_its_windows_and_routing() {
        let with_pci = AcpiDevices {
            pci: Some(bridge()),
            ..devices()
        };
        let all = tables(2, 1, &with_pci);
        let (mcfg_addr, mcfg) = all.iter().find(|(_, t)| t.starts_with(b"MCFG")).unwrap();
        assert_eq!(sum(mcfg), 0);
        // One allocation entry after the header and 8 reserved bytes: base, segment, buses.
        assert_eq!(mcfg.len(), 44 + 16);
        assert_eq!(
            u64::from_le_bytes(mcfg[44..52].try_into().unwrap()),
            0xe000_0000
        );
        assert_eq!(mcfg[54..56], [0, 0]);
        let (_, xsdt) = all.iter().find(|(_, t)| t.starts_with(b"XSDT")).unwrap();
        assert_eq!(sum(xsdt), 0);
        assert!(xsdt[36..].chunks(8).any(|e| e == mcfg_addr.to_le_bytes()));
        let (_, dsdt) = all.iter().find(|(_, t)| t.starts_with(b"DSDT")).unwrap();
        assert_eq!(sum(dsdt), 0);
        let text = String::from_utf8_lossy(dsdt);
        for name in ["PCI0", "_PRT", "_CID", "_SEG", "MRES"] {
            assert!(text.contains(name), "{name}");
        }
        // PNP0A08 and PNP0A03 as EISA IDs; the memory window's bounds; slot 2's _PRT address.
        for needle in [
            aml_bytes(&aml::EISAName::new("PNP0A08")),
            aml_bytes(&aml::EISAName::new("PNP0A03")),
            0xc000_0000u32.to_le_bytes().to_vec(),
            0xcfff_ffffu32.to_le_bytes().to_vec(),
            0x0002_ffffu32.to_le_bytes().to_vec(),
        ] {
            assert!(
                dsdt.windows(needle.len()).any(|w| w == needle),
                "{needle:x?}"
            );
        }
        // Without a bridge: neither.
        let plain = tables(2, 1, &devices());
        assert!(!plain.iter().any(|(_, t)| t.starts_with(b"MCFG")));
        assert!(!String::from_utf8_lossy(&dsdt_body(&devices())).contains("PCI0"));
    }

    fn aml_bytes(item: &dyn Aml) -> Vec<u8> {
        let mut bytes = Vec::new();
        item.to_aml_bytes(&mut bytes);
        bytes
    }
}
