//! Minimal ACPI tables (with rust-vmm's `acpi_tables`), for kernels that learn the machine
//! from ACPI only: Debian's cloud kernel, for one, is built without MP-table parsing and
//! without `virtio_mmio.device=` command-line devices, so its processors, its IOAPIC and its
//! virtio-mmio devices must be in ACPI.
//!
//! The tables, from [`ACPI_TABLES`] (in the legacy BIOS area, where a kernel also scans for
//! the RSDP): RSDP → XSDT → FADT (hardware-reduced ACPI, so no PM timer, GPE or SCI; its
//! reset register is the i8042's command port with value `0xfe`, so `reboot` resets through
//! the VMM's i8042 even without `reboot=k`), MADT (a local APIC per vCPU and the IOAPIC), and
//! a DSDT with a `PNP0501` device for each serial port and an `LNRO0005` device for each
//! virtio-mmio transport.

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

/// The devices the ACPI tables announce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcpiDevices {
    /// Serial ports.
    pub serial: Vec<SerialPort>,
    /// virtio-mmio transports.
    pub virtio_mmio: Vec<VirtioMmioDevice>,
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
    body
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

    let xsdt_addr = align(rsdp_addr + std::mem::size_of::<Rsdp>() as u64);
    let xsdt_len = 36 + 2 * 8;
    let fadt_addr = align(xsdt_addr + xsdt_len);
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup);
    fadt.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        RESET_PORT,
    );
    fadt.reset_value = RESET_VALUE;
    let fadt_len = acpi_tables::fadt::FADT::len() as u64;
    let madt_addr = align(fadt_addr + fadt_len);
    let dsdt_addr = align(madt_addr + madt_bytes.len() as u64);
    let mut fadt_bytes = Vec::new();
    fadt.dsdt_64(dsdt_addr)
        .finalize()
        .to_aml_bytes(&mut fadt_bytes);

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    debug_assert_eq!(xsdt_bytes.len() as u64, xsdt_len);

    let mut rsdp_bytes = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp_bytes);

    vec![
        (rsdp_addr, rsdp_bytes),
        (xsdt_addr, xsdt_bytes),
        (fadt_addr, fadt_bytes),
        (madt_addr, madt_bytes),
        (dsdt_addr, dsdt_bytes),
    ]
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
        }
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
        assert_eq!(
            write_acpi_tables(&memory, max, &devices()).unwrap(),
            ACPI_TABLES
        );
        assert!(matches!(
            write_acpi_tables(&memory, max + 1, &devices()),
            Err(LinuxBootError::VcpuCount { .. })
        ));
    }
}
