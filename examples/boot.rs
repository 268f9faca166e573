//! Boots vmkit's minimal guest kernel and streams its serial console to stdout.
//!
//! ```text
//! cargo run --release --example boot [-- --vcpus N] [--disk FILE] [--seccomp]
//! ```
//!
//! The VMM side is what any VMM built on vmkit does: open the host's hypervisor, create a VM,
//! map RAM, load the kernel ELF with linux-loader, start each vCPU in long mode on its own
//! thread (the kernel learns the vCPU count and its index from `rdi` and `rsi`; each vCPU
//! prints `cpu N online`), and answer port and MMIO exits from devices on a vmkit-bus: a
//! 16550 serial port at 0x3f8 and the i8042 controller at 0x60 (vmkit-devices, on
//! vm-superio). The i8042 reset command (0xfe on port 0x64) is how the guest powers off.
//! Accesses no device claims read as all-ones and writes to them are dropped, as on a PC with
//! nothing at that address.
//!
//! With `--disk FILE`, FILE becomes a virtio-blk disk (vmkit-virtio, on virtio-mmio at
//! 0xd100_0000) and the kernel's driver reads its first 8 bytes, **overwrites sectors 8–15
//! with a test pattern**, flushes, reads them back and prints `virtio-blk: ok`. The file must
//! hold at least 16 sectors (8 KiB); use a scratch file, e.g.
//! `truncate -s 1M /tmp/disk.img`.
//!
//! With `--seccomp`, every vCPU thread runs under its backend's seccomp filter
//! (`RunnerOptions::seccomp`), extended with the disk's positional reads and writes and
//! `fdatasync` (this example serves the disk on the vCPU thread), and the main thread confines
//! itself with `vmkit::seccomp::vmm_rules` once the vCPUs run. A forbidden call ends the
//! process with a line naming the thread and the call.
//!
//! Exit status: 0 once the guest powers off; 1, with the reason on stderr, on any failure.

use std::error::Error;
use std::io::{self, Cursor};
use std::process::ExitCode;
use std::sync::Arc;

use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_memory::GuestAddress;
use vmkit::runner::{self, ExitAction, ExitHandler, RunnerOptions, VcpuOutcome, VmRunner};
use vmkit::{ErrorChain, EventFd, MemoryFlags, MemoryRegion, VcpuExit, VmConfig};
use vmkit_boot::entry;
use vmkit_bus::Bus;
use vmkit_devices::{Serial, COM1, I8042, SERIAL_PORTS};
use vmkit_guests::minimal;
use vmkit_virtio::blk::{Block, BlockOptions};
use vmkit_virtio::mmio::{MmioTransport, MMIO_REGION_SIZE};

/// Guest RAM: enough for the boot tables below 1 MiB and the kernel above it.
const RAM_SIZE: usize = 4 << 20;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("boot: {}", ErrorChain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// What the command line asks for.
struct Options {
    vcpus: u32,
    disk: Option<std::path::PathBuf>,
    seccomp: bool,
}

/// Parses `--vcpus N` (default 1), `--disk FILE` and `--seccomp`.
fn options() -> Result<Options, Box<dyn Error>> {
    const USAGE: &str = "usage: boot [--vcpus N] [--disk FILE] [--seccomp]";
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        vcpus: 1,
        disk: None,
        seccomp: false,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--vcpus" => {
                let range = format!("--vcpus takes a number from 1 to {}", minimal::MAX_VCPUS);
                let value = args.next().ok_or_else(|| range.clone())?;
                options.vcpus = value
                    .parse()
                    .map_err(|_| format!("{range}, not {value:?}"))?;
                if options.vcpus == 0 || options.vcpus > minimal::MAX_VCPUS {
                    return Err(range.into());
                }
            }
            "--disk" => {
                options.disk = Some(args.next().ok_or("--disk needs a file")?.into());
            }
            "--seccomp" => options.seccomp = true,
            other => return Err(format!("unexpected argument {other:?}; {USAGE}").into()),
        }
    }
    Ok(options)
}

/// Opens `path` as the guest's virtio-blk disk.
fn open_disk(path: &std::path::Path) -> Result<std::fs::File, Box<dyn Error>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|err| format!("cannot open the disk {}: {err}", path.display()))?;
    let needed = (minimal::BLK_TEST_SECTOR + minimal::BLK_TEST_SECTORS) * 512;
    if file.metadata()?.len() < needed {
        return Err(format!(
            "the disk {} must hold at least {needed} bytes (the guest writes sectors {}-{})",
            path.display(),
            minimal::BLK_TEST_SECTOR,
            minimal::BLK_TEST_SECTOR + minimal::BLK_TEST_SECTORS - 1
        )
        .into());
    }
    Ok(file)
}

fn run() -> Result<(), Box<dyn Error>> {
    let options = options()?;
    let vcpus = options.vcpus;
    let hypervisor = vmkit::open()?;
    eprintln!(
        "boot: running the minimal kernel on {} with {vcpus} vCPU(s)",
        hypervisor.kind()
    );

    let vm = hypervisor.create_vm(&VmConfig::default().max_vcpus(vcpus))?;
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, MemoryFlags::empty())?;
    vm.add_memory_region(ram)?;
    let memory = vm.memory();
    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None)
        .map_err(|err| format!("cannot load the minimal kernel: {err}"))?;

    // The devices: a 16550 whose output is our stdout, and the i8042 whose reset command
    // is the guest's way to power off.
    let i8042 = Arc::new(I8042::new()?);
    let mut bus = Bus::new();
    bus.register_pio(
        PioAddress(COM1),
        SERIAL_PORTS,
        Arc::new(Serial::new(io::stdout())?),
    )?;
    bus.register_pio(PioAddress(I8042::BASE), I8042::PORTS, i8042.clone())?;
    let mut entry_flags = 0;
    if let Some(path) = &options.disk {
        let block = Block::new(open_disk(path)?, BlockOptions::default())?;
        // The kernel's driver polls; a VMM with an irqchip would register this as an irqfd.
        let interrupt = EventFd::new(0)?;
        let transport = MmioTransport::new(block, Arc::new(memory.clone()), interrupt)?;
        bus.register_mmio(
            MmioAddress(minimal::VIRTIO_MMIO_BASE),
            MMIO_REGION_SIZE,
            Arc::new(transport),
        )?;
        entry_flags |= minimal::ENTRY_FLAG_VIRTIO_BLK;
    }

    let mut vcpu_handles = Vec::new();
    for index in 0..vcpus {
        let vcpu = vm.create_vcpu(index)?;
        vcpu.set_cpuid(&hypervisor.supported_cpuid())?;
        entry::configure_long_mode(vcpu.as_ref(), &memory, kernel.kernel_load.0)?;
        let mut regs = vcpu.regs()?;
        regs.rdi = u64::from(vcpus);
        regs.rsi = u64::from(index);
        regs.rdx = entry_flags;
        vcpu.set_regs(&regs)?;
        vcpu_handles.push(vcpu);
    }
    // One thread per vCPU (vmkit's runner). Port and MMIO accesses go to the bus; nothing
    // claims an address: reads are all-ones and writes go nowhere, as on real hardware. An
    // application processor parks in `hlt` once it is online; the i8042's reset command is
    // the guest's power-off.
    let handler = runner::from_fn(move |id, exit| match exit {
        VcpuExit::Hlt if id != 0 => ExitAction::Halt,
        exit => match bus.handle(id, exit) {
            ExitAction::Continue if i8042.take_reset_request() => ExitAction::PowerOff,
            action => action,
        },
    });
    let mut runner_options = RunnerOptions::default();
    if options.seccomp {
        // The disk is served on the vCPU thread here: its calls join the backend's list.
        let mut rules = hypervisor.vcpu_seccomp_rules();
        rules.allow_all(&[libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_fdatasync]);
        runner_options = runner_options.seccomp(rules.compile()?);
    }
    let running = VmRunner::start_with(vcpu_handles, handler, runner_options)?;
    if options.seccomp {
        // Nothing is left to set up: the main thread only waits, reports and tears down.
        vmkit::seccomp::vmm_rules(hypervisor.kind())
            .compile()?
            .install()?;
    }
    let mut powered_off = false;
    for vcpu in running.join() {
        // A failure stopped the other vCPUs too; it is the one to report.
        powered_off |= vcpu.outcome? == VcpuOutcome::PowerOff;
    }
    if !powered_off {
        return Err("every vCPU halted but the guest never powered off".into());
    }
    eprintln!("boot: the guest powered off");
    Ok(())
}
