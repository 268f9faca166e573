//! Snapshots a running VM and restores it in another process.
//!
//! ```text
//! cargo run --release --example snapshot                     # both steps, in a temp directory
//! cargo run --release --example snapshot -- save DIR         # boot, count to 10, save to DIR
//! cargo run --release --example snapshot -- restore DIR [--eager]   # continue to 40
//! ```
//!
//! With `--seccomp` (anywhere, and passed on to the restoring process), the vCPU thread runs
//! under its backend's seccomp filter, extended with the disk's positional reads and writes
//! and `fdatasync` (the disk is served on the vCPU thread). The restoring process's main
//! thread also confines itself once the vCPU runs (`vmkit::seccomp::vmm_rules`); the saving
//! process's does not, as it writes the snapshot files after the vCPU has run.
//!
//! The minimal kernel counts (`count N` on the serial port) and writes each count to a
//! virtio-blk disk (`DIR/disk.img`). `save` stops it after `count 10` and writes the VM (vCPU,
//! interrupt controllers, clock, memory) and its devices (serial port, i8042, the disk's
//! virtio-mmio transport) to `DIR/snap`; `restore`, in a new process, rebuilds all of it, maps
//! memory copy-on-write (or copies it with `--eager`) and the count goes on from 11.

use std::error::Error;
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_memory::GuestAddress;
use vmkit::runner::{self, ExitAction, ExitHandler, RunnerOptions, VcpuOutcome, VmRunner};
use vmkit::snapshot::{self, MemoryRestore};
use vmkit::{ErrorChain, EventFd, Hypervisor, MemoryFlags, MemoryRegion, Vcpu, VcpuExit, VmConfig};
use vmkit_boot::entry;
use vmkit_bus::Bus;
use vmkit_devices::{Persist, Serial, COM1, I8042, SERIAL_PORTS};
use vmkit_guests::minimal;
use vmkit_virtio::blk::{Block, BlockOptions};
use vmkit_virtio::mmio::{MmioTransport, MMIO_REGION_SIZE};

const RAM_SIZE: usize = 4 << 20;
const SERIAL: u32 = 0;
const RESET: u32 = 1;
const DISK: u32 = 2;

type Disk = MmioTransport<Arc<vmkit::GuestMemoryMmap>, Block>;

/// Serial output goes to stdout as it is written.
type Uart = Serial<io::Stdout>;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let seccomp = args.iter().any(|arg| arg == "--seccomp");
    args.retain(|arg| arg != "--seccomp");
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => demo(seccomp),
        ["save", dir] => save(Path::new(dir), seccomp),
        ["restore", dir] => restore(Path::new(dir), MemoryRestore::Lazy, seccomp),
        ["restore", dir, "--eager"] => restore(Path::new(dir), MemoryRestore::Eager, seccomp),
        _ => Err("usage: snapshot [save DIR | restore DIR [--eager]] [--seccomp]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("snapshot: {}", ErrorChain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Saves, then restores in a child process.
fn demo(seccomp: bool) -> Result<(), Box<dyn Error>> {
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-snapshot-example-")?;
    save(dir.as_path(), seccomp)?;
    let mut restore = Command::new(std::env::current_exe()?);
    restore.arg("restore").arg(dir.as_path());
    if seccomp {
        restore.arg("--seccomp");
    }
    let status = restore.status()?;
    if !status.success() {
        return Err(format!("the restoring process failed: {status}").into());
    }
    Ok(())
}

fn open_disk(path: &Path) -> Result<Block, Box<dyn Error>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    Ok(Block::new(file, BlockOptions::default())?)
}

/// The vCPU thread's seccomp filter with `--seccomp`: the backend's rules and the disk's
/// calls (served on the vCPU thread here).
fn vcpu_filter(
    hv: &dyn Hypervisor,
    seccomp: bool,
) -> Result<Option<vmkit::seccomp::Filter>, Box<dyn Error>> {
    if !seccomp {
        return Ok(None);
    }
    let mut rules = hv.vcpu_seccomp_rules();
    rules.allow_all(&[libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_fdatasync]);
    Ok(Some(rules.compile()?))
}

/// Starts the vCPU on its own thread (vmkit's runner) with the devices on a bus, under
/// `filter` if given. The i8042's reset command powers the guest off; with `until`, the vCPU
/// pauses once that serial line has been printed, and the returned channel says so.
fn start(
    vcpu: Box<dyn Vcpu>,
    bus: Bus,
    i8042: Arc<I8042>,
    until: Option<String>,
    filter: Option<vmkit::seccomp::Filter>,
) -> Result<(VmRunner, Receiver<()>), Box<dyn Error>> {
    let (reached, at_line) = mpsc::channel();
    let lines = Mutex::new(Vec::new());
    let handler = runner::from_fn(move |id, exit| {
        if let VcpuExit::IoOut {
            port: COM1, data, ..
        } = exit
        {
            lines
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(data);
        }
        match bus.handle(id, exit) {
            ExitAction::Continue if i8042.take_reset_request() => ExitAction::PowerOff,
            ExitAction::Continue
                if until.as_ref().is_some_and(|line| {
                    let lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
                    lines.ends_with(format!("{line}\n").as_bytes())
                }) =>
            {
                let _ = reached.send(());
                ExitAction::Pause
            }
            action => action,
        }
    });
    let mut options = RunnerOptions::default();
    if let Some(filter) = filter {
        options = options.seccomp(filter);
    }
    Ok((VmRunner::start_with(vec![vcpu], handler, options)?, at_line))
}

/// Waits for the guest to power off, and reports the first failure.
fn finish(running: VmRunner) -> Result<(), Box<dyn Error>> {
    for vcpu in running.join() {
        match vcpu.outcome? {
            VcpuOutcome::PowerOff | VcpuOutcome::Stopped => {}
            other => return Err(format!("vCPU {} ended: {other:?}", vcpu.id).into()),
        }
    }
    Ok(())
}

fn bus(serial: Arc<Uart>, i8042: Arc<I8042>, disk: Arc<Disk>) -> Result<Bus, Box<dyn Error>> {
    let mut bus = Bus::new();
    bus.register_pio(PioAddress(COM1), SERIAL_PORTS, serial)?;
    bus.register_pio(PioAddress(I8042::BASE), I8042::PORTS, i8042)?;
    bus.register_mmio(
        MmioAddress(minimal::VIRTIO_MMIO_BASE),
        MMIO_REGION_SIZE,
        disk,
    )?;
    Ok(bus)
}

fn save(dir: &Path, seccomp: bool) -> Result<(), Box<dyn Error>> {
    std::fs::create_dir_all(dir)?;
    let disk_path = dir.join("disk.img");
    let mut image = vec![0u8; 64 * 512];
    image[..8].copy_from_slice(minimal::BLK_SIGNATURE);
    std::fs::write(&disk_path, image)?;

    let hv = vmkit::open()?;
    let config = VmConfig::default().irqchip(true).pit(true);
    let vm = hv.create_vm(&config)?;
    vm.add_memory_region(MemoryRegion::anonymous(
        GuestAddress(0),
        RAM_SIZE,
        MemoryFlags::empty(),
    )?)?;
    let memory = vm.memory();
    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None)
        .map_err(|err| format!("cannot load the minimal kernel: {err}"))?;
    let vcpu = vm.create_vcpu(0)?;
    vcpu.set_cpuid(&hv.supported_cpuid())?;
    entry::configure_long_mode(vcpu.as_ref(), &memory, kernel.kernel_load.0)?;
    let mut regs = vcpu.regs()?;
    regs.rdx = minimal::ENTRY_FLAG_COUNT | minimal::ENTRY_FLAG_VIRTIO_BLK;
    vcpu.set_regs(&regs)?;

    let serial = Arc::new(Serial::new(io::stdout())?);
    let i8042 = Arc::new(I8042::new()?);
    let disk = Arc::new(MmioTransport::new(
        open_disk(&disk_path)?,
        Arc::new(memory),
        EventFd::new(0)?,
    )?);
    let bus = bus(serial.clone(), i8042.clone(), disk.clone())?;
    let msrs = snapshot::readable_msrs(vcpu.as_ref(), &hv.msr_index_list());
    let filter = vcpu_filter(hv.as_ref(), seccomp)?;
    let until = Some(minimal::count_line(10));
    let (running, at_line) = start(vcpu, bus, i8042.clone(), until, filter)?;
    // The vCPU pauses itself at the line; if the VM stops first, join says why.
    while at_line.recv_timeout(Duration::from_millis(100)).is_err() {
        if running.is_stopping() {
            finish(running)?;
            return Err("the guest stopped before the snapshot point".into());
        }
    }

    let snap = dir.join("snap");
    let started = Instant::now();
    let features = snapshot::Features::for_vm(&config, hv.capabilities());
    let vcpus = running.save_all(&msrs, features)?;
    snapshot::save(
        &snap,
        hv.as_ref(),
        &config,
        vm.as_ref(),
        &vcpus,
        |devices| {
            devices.write_device(SERIAL, serial.as_ref())?;
            devices.write_device(RESET, i8042.as_ref())?;
            devices.write_device(DISK, disk.as_ref())
        },
    )?;
    running.stop_all();
    finish(running)?;
    io::stdout().flush()?;
    eprintln!(
        "snapshot: saved to {} in {:?}",
        snap.display(),
        started.elapsed()
    );
    Ok(())
}

fn restore(dir: &Path, mode: MemoryRestore, seccomp: bool) -> Result<(), Box<dyn Error>> {
    let snap: PathBuf = dir.join("snap");
    let hv = vmkit::open()?;
    let started = Instant::now();
    let restored = snapshot::restore(&snap, hv.as_ref(), mode)?;
    let serial_state = restored.snapshot.read_device::<Uart>(SERIAL)?;
    let reset_state = restored.snapshot.read_device::<I8042>(RESET)?;
    let disk_state = restored.snapshot.read_device::<Disk>(DISK)?;
    // Each device is built as for a first boot, on the same resources, then its state is
    // restored into it.
    let memory = Arc::new(restored.vm.memory());
    let mut disk = MmioTransport::new(open_disk(&dir.join("disk.img"))?, memory, EventFd::new(0)?)?;
    disk.restore_state(&disk_state)?;
    disk.resume()?;
    let mut serial = Serial::new(io::stdout())?;
    serial.restore_state(&serial_state)?;
    let mut i8042 = I8042::new()?;
    i8042.restore_state(&reset_state)?;
    let (serial, i8042) = (Arc::new(serial), Arc::new(i8042));
    eprintln!("snapshot: restored ({mode:?}) in {:?}", started.elapsed());
    let bus = bus(serial, i8042.clone(), Arc::new(disk))?;
    let mut vcpus = restored.vcpus;
    let vcpu = vcpus.pop().ok_or("the snapshot has no vCPU")?;
    let filter = vcpu_filter(hv.as_ref(), seccomp)?;
    let (running, _) = start(vcpu, bus, i8042, None, filter)?;
    if seccomp {
        // Nothing is left to set up: the main thread only waits and tears down.
        vmkit::seccomp::vmm_rules(hv.kind()).compile()?.install()?;
    }
    finish(running)
}
