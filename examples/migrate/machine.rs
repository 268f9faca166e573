//! The counting guest's machine, shared by the `migrate` example and the migration tests:
//! the minimal kernel in counting mode with a serial port, an i8042 (its reset line powers
//! the guest off) and a virtio-blk disk, on a VM whose memory logs dirty pages.

use std::error::Error;
use std::io::{Cursor, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_memory::GuestAddress;
use vmkit::migration::Incoming;
use vmkit::runner::{self, ExitAction, ExitHandler, RunnerOptions, VcpuOutcome, VmRunner};
use vmkit::snapshot::format::{StateError, Writer};
use vmkit::{EventFd, Hypervisor, MemoryFlags, MemoryRegion, Vcpu, VcpuExit, Vm, VmConfig};
use vmkit_boot::entry;
use vmkit_bus::Bus;
use vmkit_devices::{Persist, Serial, COM1, I8042, SERIAL_PORTS};
use vmkit_guests::minimal;
use vmkit_virtio::blk::{Block, BlockOptions};
use vmkit_virtio::mmio::{MmioTransport, MMIO_REGION_SIZE};

/// Errors that cross threads (the destination's device closure needs `Send + Sync`).
pub type BoxError = Box<dyn Error + Send + Sync>;

/// Guest memory.
pub const RAM_SIZE: usize = 4 << 20;
/// Device section indices in the state frame.
const SERIAL: u32 = 0;
const RESET: u32 = 1;
const DISK: u32 = 2;

/// The disk's virtio-mmio transport.
pub type Disk = MmioTransport<Arc<vmkit::GuestMemoryMmap>, Block>;

/// The machine's devices; serial output goes to `W`.
pub struct Devices<W: Write + Send + 'static> {
    /// COM1.
    pub serial: Arc<Serial<W>>,
    /// The keyboard controller, whose reset command powers the guest off.
    pub i8042: Arc<I8042>,
    /// The virtio-blk disk.
    pub disk: Arc<Disk>,
}

impl<W: Write + Send + 'static> Devices<W> {
    /// Writes each device's state (through `Persist`) into the migration's state frame.
    pub fn save(&self, writer: &mut Writer<Vec<u8>>) -> Result<(), StateError> {
        writer.write_device(SERIAL, self.serial.as_ref())?;
        writer.write_device(RESET, self.i8042.as_ref())?;
        writer.write_device(DISK, self.disk.as_ref())
    }
}

/// A fresh disk image of 64 sectors that starts with the driver's signature.
pub fn create_disk(path: &Path) -> std::io::Result<()> {
    let mut image = vec![0u8; 64 * 512];
    image[..8].copy_from_slice(minimal::BLK_SIGNATURE);
    std::fs::write(path, image)
}

fn open_disk(path: &Path) -> Result<Block, BoxError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    Ok(Block::new(file, BlockOptions::default())?)
}

/// The VM's configuration: in-kernel irqchip and PIT where the host can save their state
/// (the guest polls its devices, so it runs without them too), and dirty rings when asked
/// for and the host has them.
pub fn config(hypervisor: &dyn Hypervisor, dirty_ring: bool) -> VmConfig {
    let caps = hypervisor.capabilities();
    let platform = caps.irqchip && caps.irqchip_state && caps.pit;
    let config = VmConfig::default().irqchip(platform).pit(platform);
    let max = hypervisor.capabilities().dirty_ring_max_entries;
    if dirty_ring && max >= 4096 {
        config.dirty_ring(Some(4096))
    } else {
        config
    }
}

/// A VM booted into the counting guest, not yet running.
pub struct Booted<W: Write + Send + 'static> {
    /// The VM.
    pub vm: Box<dyn Vm>,
    /// Its one vCPU (taken by [`start`]).
    pub vcpus: Vec<Box<dyn Vcpu>>,
    /// Its devices.
    pub devices: Devices<W>,
    /// The MSRs a migration carries.
    pub msrs: Vec<u32>,
}

/// Builds the VM: memory (logging dirty pages), the minimal kernel in counting mode with
/// its disk driver, the devices on `disk`, serial output to `out`.
pub fn boot<W: Write + Send + 'static>(
    hypervisor: &dyn Hypervisor,
    config: &VmConfig,
    disk: &Path,
    out: W,
) -> Result<Booted<W>, BoxError> {
    let vm = hypervisor.create_vm(config)?;
    // The guest runs from this logged RAM: each pre-copy round sends the pages it wrote.
    let flags = MemoryFlags::LOG_DIRTY;
    vm.add_memory_region(MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, flags)?)?;
    let memory = vm.memory();
    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None)
        .map_err(|err| format!("cannot load the minimal kernel: {err}"))?;
    let vcpu = vm.create_vcpu(0)?;
    vcpu.set_cpuid(&hypervisor.supported_cpuid())?;
    entry::configure_long_mode(vcpu.as_ref(), &memory, kernel.kernel_load.0)?;
    let mut regs = vcpu.regs()?;
    regs.rdx = minimal::ENTRY_FLAG_COUNT | minimal::ENTRY_FLAG_VIRTIO_BLK;
    vcpu.set_regs(&regs)?;
    let msrs = vmkit::snapshot::readable_msrs(vcpu.as_ref(), &hypervisor.msr_index_list());
    let devices = Devices {
        serial: Arc::new(Serial::new(out)?),
        i8042: Arc::new(I8042::new()?),
        disk: Arc::new(MmioTransport::new(
            open_disk(disk)?,
            Arc::new(memory),
            EventFd::new(0)?,
        )?),
    };
    Ok(Booted {
        vm,
        vcpus: vec![vcpu],
        devices,
        msrs,
    })
}

/// The destination's devices: each built as for a first boot on the incoming VM's memory
/// and the same disk, then restored from its section of the state frame.
pub fn restore_devices<W: Write + Send + 'static>(
    incoming: &Incoming,
    disk: &Path,
    out: W,
) -> Result<Devices<W>, BoxError> {
    let state = &incoming.state;
    let serial_state = state.read_device::<Serial<W>>(SERIAL)?;
    let reset_state = state.read_device::<I8042>(RESET)?;
    let disk_state = state.read_device::<Disk>(DISK)?;
    let memory = Arc::new(incoming.vm.memory());
    let mut transport = MmioTransport::new(open_disk(disk)?, memory, EventFd::new(0)?)?;
    transport.restore_state(&disk_state)?;
    transport.resume()?;
    let mut serial = Serial::new(out)?;
    serial.restore_state(&serial_state)?;
    let mut i8042 = I8042::new()?;
    i8042.restore_state(&reset_state)?;
    Ok(Devices {
        serial: Arc::new(serial),
        i8042: Arc::new(i8042),
        disk: Arc::new(transport),
    })
}

/// Runs the vCPUs with the devices on a bus. After each line the guest prints, the vCPU
/// thread waits `line_delay` (a slow console), so that a guest that counts in milliseconds
/// is still counting while a migration runs.
pub fn start<W: Write + Send + 'static>(
    vcpus: Vec<Box<dyn Vcpu>>,
    devices: &Devices<W>,
    line_delay: Duration,
) -> Result<VmRunner, BoxError> {
    let mut bus = Bus::new();
    bus.register_pio(PioAddress(COM1), SERIAL_PORTS, devices.serial.clone())?;
    bus.register_pio(PioAddress(I8042::BASE), I8042::PORTS, devices.i8042.clone())?;
    bus.register_mmio(
        MmioAddress(minimal::VIRTIO_MMIO_BASE),
        MMIO_REGION_SIZE,
        devices.disk.clone(),
    )?;
    let i8042 = devices.i8042.clone();
    let handler = runner::from_fn(move |id, exit| {
        let newline =
            matches!(exit, VcpuExit::IoOut { port: COM1, data, .. } if data.contains(&b'\n'));
        let action = match bus.handle(id, exit) {
            ExitAction::Continue if i8042.take_reset_request() => ExitAction::PowerOff,
            action => action,
        };
        if newline && !line_delay.is_zero() {
            std::thread::sleep(line_delay);
        }
        action
    });
    Ok(VmRunner::start_with(
        vcpus,
        handler,
        RunnerOptions::default().command_timeout(Duration::from_secs(60)),
    )?)
}

/// Waits (at most `limit`) for the guest to power off; reports the first failure.
pub fn finish(running: VmRunner, limit: Duration) -> Result<(), BoxError> {
    for vcpu in running.join_timeout(limit)? {
        match vcpu.outcome? {
            VcpuOutcome::PowerOff => {}
            other => return Err(format!("vCPU {} ended: {other:?}", vcpu.id).into()),
        }
    }
    Ok(())
}
