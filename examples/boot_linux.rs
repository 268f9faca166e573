//! Boots an unmodified Linux kernel and streams its serial console to stdout.
//!
//! ```text
//! cargo run --release --example boot_linux -- --kernel IMAGE [--initrd FILE]
//!     [--cmdline "..."] [--mem MIB] [--vcpus N] [--disk FILE]
//!     [--net MODE [--tap NAME] [--mac MAC]] [--exit-stats] [--map-kernel] [--split-rings]
//! ```
//!
//! `IMAGE` is an ELF `vmlinux` (entered through PVH when it has the PVH note, which is the
//! fastest: nothing to decompress) or a `bzImage`. The VM gets `--mem` MiB of RAM (default
//! 256), `--vcpus` vCPUs (default 1) and these devices:
//!
//! - a 16550 serial port at `0x3f8` on IRQ 4 (console: add `console=ttyS0`), the i8042 whose
//!   reset command ends the run (`reboot=k` makes the kernel use it) and a CMOS clock at
//!   `0x70` (vmkit-devices), with the in-kernel irqchip and PIT;
//! - with `--disk FILE`, FILE as a virtio-blk disk (`/dev/vda`), and always a virtio-console
//!   (`/dev/hvc0`) whose output goes to stdout, both on virtio-mmio, announced to the kernel
//!   in the ACPI tables (Debian's kernels do not take `virtio_mmio.device=` arguments);
//! - with `--net MODE`, a virtio-net card (`eth0`, MAC `--mac`, default `52:54:00:12:34:56`)
//!   on a TAP interface (`--tap`, default `vmktap%d`; needs `CAP_NET_ADMIN`) that vmkit-net
//!   puts into a network: `isolated:BRIDGE` (a private bridge shared by the VMs that name
//!   it), `bridged:BRIDGE` (an existing host bridge), `nat:BRIDGE:GATEWAY/PREFIX:UPLINK`
//!   (a private subnet masqueraded out of UPLINK; the guest is configured statically), or
//!   `tap` (the TAP alone, for the host to configure). Its own thread moves the frames; at
//!   exit the TAP leaves the bridge and the network is torn down, unless other VMs are
//!   still on it (the last one out removes it). The guest needs the `virtio_net` driver.
//!
//! The default command line is `console=ttyS0 reboot=k panic=-1`. `--exit-stats` prints, at the
//! end, how many exits each port and MMIO address caused on each vCPU (to find what a guest
//! probes). `--map-kernel` maps a vmlinux's pages into guest RAM copy-on-write instead of
//! copying them (`vmkit::linux::load_kernel_file`): loading is nearly free and VMs booting
//! the same file share its pages, but those pages are small pages of the page cache, not
//! the huge pages that back the rest of RAM.
//!
//! The virtio devices offer packed virtqueues (`VIRTIO_F_RING_PACKED`), which Linux's
//! driver takes; `--split-rings` withholds them, so the guest uses split rings.
//!
//! Exit status: 0 once the guest resets the machine (which is how `reboot` and `poweroff`
//! end on a PC without ACPI when `reboot=k` is set; a panic with `panic=-1` ends the same
//! way); 1, with the reason on stderr, on any failure.
//!
//! Which hosts boot Linux at full speed: any KVM with hardware virtualization. On a software
//! KVM that emulates ring-0 guest code (like this project's CI host), a distribution kernel
//! takes seconds to print its banner and may die on an instruction the emulator lacks.

use std::collections::BTreeMap;
use std::error::Error;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use linux_loader::cmdline::Cmdline;
use vm_device::bus::{MmioAddress, PioAddress};
use vmkit::linux::{self, layout};
use vmkit::{EventFd, KickHandle, MemoryFlags, MemoryRegion, Vcpu, VcpuExit, VmConfig};
use vmkit_bus::{Bus, ExitOutcome};
use vmkit_devices::{Cmos, Serial, COM1, COM1_GSI, I8042, SERIAL_PORTS};
use vmkit_virtio::blk::{Block, BlockOptions};
use vmkit_virtio::console::Console;
use vmkit_virtio::mmio::{MmioTransport, MMIO_REGION_SIZE};
use vmkit_virtio::net::{MacAddr, Net, NetOptions};

#[path = "boot_linux/net.rs"]
mod net;

/// Where the virtio-mmio devices go, one page each, in the MMIO hole.
const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// The first virtio-mmio device's IRQ (GSI); the next ones follow. 5 is the first ISA IRQ
/// nothing else here uses.
const VIRTIO_FIRST_IRQ: u32 = 5;
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";
/// Room for the command line.
const CMDLINE_CAPACITY: usize = 4096;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut message = format!("boot_linux: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// What the command line asks for.
struct Options {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
    mem_mib: u64,
    vcpus: u32,
    disk: Option<PathBuf>,
    net: Option<net::NetMode>,
    tap: String,
    mac: MacAddr,
    exit_stats: bool,
    map_kernel: bool,
    split_rings: bool,
}

fn options() -> Result<Options, Box<dyn Error>> {
    const USAGE: &str = "usage: boot_linux --kernel IMAGE [--initrd FILE] [--cmdline STRING] \
                         [--mem MIB] [--vcpus N] [--disk FILE] \
                         [--net tap|isolated:BRIDGE|bridged:BRIDGE|nat:BRIDGE:GATEWAY/PREFIX:UPLINK \
                         [--tap NAME] [--mac MAC]] [--exit-stats] [--map-kernel] [--split-rings]";
    let mut args = std::env::args().skip(1);
    let mut kernel = None;
    let mut options = Options {
        kernel: PathBuf::new(),
        initrd: None,
        cmdline: DEFAULT_CMDLINE.to_owned(),
        mem_mib: 256,
        vcpus: 1,
        disk: None,
        net: None,
        tap: "vmktap%d".to_owned(),
        mac: NetOptions::default().mac,
        exit_stats: false,
        map_kernel: false,
        split_rings: false,
    };
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{arg} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--initrd" => options.initrd = Some(value()?.into()),
            "--cmdline" => options.cmdline = value()?,
            "--disk" => options.disk = Some(value()?.into()),
            "--net" => options.net = Some(net::NetMode::parse(&value()?)?),
            "--tap" => options.tap = value()?,
            "--mac" => options.mac = net::parse_mac(&value()?)?,
            "--mem" => {
                let text = value()?;
                options.mem_mib = text
                    .parse()
                    .map_err(|_| format!("--mem takes a size in MiB, not {text:?}"))?;
            }
            "--vcpus" => {
                let text = value()?;
                options.vcpus = text
                    .parse()
                    .ok()
                    .filter(|&n| (1..=linux::mptable::MAX_VCPUS).contains(&n))
                    .ok_or_else(|| {
                        format!(
                            "--vcpus takes a number from 1 to {}, not {text:?}",
                            linux::mptable::MAX_VCPUS
                        )
                    })?;
            }
            "--exit-stats" => options.exit_stats = true,
            "--map-kernel" => options.map_kernel = true,
            "--split-rings" => options.split_rings = true,
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unexpected argument {other:?}; {USAGE}").into()),
        }
    }
    options.kernel = kernel.ok_or(USAGE)?;
    Ok(options)
}

fn open(path: &PathBuf, what: &str, write: bool) -> Result<File, Box<dyn Error>> {
    File::options()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|err| format!("cannot open the {what} {}: {err}", path.display()).into())
}

fn run() -> Result<(), Box<dyn Error>> {
    let options = options()?;
    let vcpus = options.vcpus;
    let ram_size = options
        .mem_mib
        .checked_mul(1 << 20)
        .ok_or("--mem is too large")?;
    let hypervisor = vmkit::open()?;
    let config = VmConfig::default().max_vcpus(vcpus).irqchip(true).pit(true);
    let vm = hypervisor.create_vm(&config)?;
    for (start, size) in layout::ram_ranges(ram_size) {
        let size = usize::try_from(size).map_err(|_| "--mem is too large for this host")?;
        vm.add_memory_region(MemoryRegion::anonymous(start, size, MemoryFlags::empty())?)?;
    }
    let memory = vm.memory();

    let mut kernel_file = open(&options.kernel, "kernel", false)?;
    let kernel = if options.map_kernel {
        linux::load_kernel_file(&memory, &kernel_file)?
    } else {
        linux::load_kernel(&memory, &mut kernel_file)?
    };
    let initrd = match &options.initrd {
        Some(path) => {
            let low_ram_end = ram_size.min(layout::MMIO_HOLE_START);
            let mut file = open(path, "initrd", false)?;
            Some(linux::load_initrd(
                &memory,
                &mut file,
                &kernel,
                low_ram_end,
            )?)
        }
        None => None,
    };

    // The devices. Each interrupt is an irqfd: the device signals an eventfd and the
    // hypervisor raises the GSI without a trip through this process.
    let mut bus = Bus::new();
    let serial = Arc::new(Serial::new(io::stdout())?);
    vm.register_irqfd(serial.interrupt_evt(), COM1_GSI, None)?;
    bus.register_pio(PioAddress(COM1), SERIAL_PORTS, serial)?;
    let i8042 = Arc::new(I8042::new()?);
    bus.register_pio(PioAddress(I8042::BASE), I8042::PORTS, i8042.clone())?;
    bus.register_pio(PioAddress(Cmos::BASE), Cmos::PORTS, Arc::new(Cmos::new()))?;

    let mut virtio_mmio = Vec::new();
    let mut slots = VirtioSlots {
        next_addr: VIRTIO_MMIO_BASE,
        next_irq: VIRTIO_FIRST_IRQ,
        memory: Arc::new(memory.clone()),
        packed_rings: !options.split_rings,
    };
    if let Some(path) = &options.disk {
        let block = Block::new(open(path, "disk", true)?, BlockOptions::default())?;
        slots.add(vm.as_ref(), &mut bus, &mut virtio_mmio, block)?;
    }
    // Declared before the worker so that it is dropped after it: the device stops before
    // its TAP leaves the network.
    let mut _net_attachment = None;
    let mut _net_worker = None;
    if let Some(mode) = &options.net {
        let (attachment, tap) = net::Attachment::new(mode, &options.tap)?;
        eprintln!(
            "boot_linux: net: {}",
            net::describe(&attachment, &options.mac, mode)
        );
        _net_attachment = Some(attachment);
        let tap_fd = tap.as_raw_fd();
        let device = Net::new(
            tap,
            NetOptions {
                mac: options.mac,
                ..NetOptions::default()
            },
        )?;
        let (transport, base) = slots.add(vm.as_ref(), &mut bus, &mut virtio_mmio, device)?;
        _net_worker = Some(net::NetWorker::start(vm.as_ref(), transport, base, tap_fd)?);
    }
    slots.add(
        vm.as_ref(),
        &mut bus,
        &mut virtio_mmio,
        Console::new(io::stdout()),
    )?;

    let mut cmdline = Cmdline::new(CMDLINE_CAPACITY)?;
    cmdline.insert_str(&options.cmdline)?;
    let machine = linux::MachineConfig {
        ram_size,
        vcpus,
        devices: linux::AcpiDevices {
            serial: vec![linux::SerialPort {
                port: COM1,
                irq: COM1_GSI,
            }],
            virtio_mmio,
        },
    };
    linux::write_boot_info(&memory, &kernel, &cmdline, initrd, &machine)?;
    let supported_cpuid = hypervisor.supported_cpuid();
    let mut vcpu_handles = Vec::new();
    for index in 0..vcpus {
        let vcpu = vm.create_vcpu(index)?;
        linux::configure_vcpu(
            vcpu.as_ref(),
            &memory,
            &kernel,
            (index, vcpus),
            &supported_cpuid,
            true,
        )?;
        vcpu_handles.push(vcpu);
    }
    eprintln!(
        "boot_linux: {:?} kernel, {:?} entry, {} MiB, {vcpus} vCPU(s), on {}",
        kernel.format,
        kernel.entry,
        options.mem_mib,
        hypervisor.kind()
    );

    let machine = Arc::new(Machine {
        bus,
        exit_stats: options.exit_stats,
        i8042,
        stopping: AtomicBool::new(false),
        kicks: vcpu_handles.iter().map(|v| v.kick_handle()).collect(),
    });
    let threads: Vec<_> = vcpu_handles
        .into_iter()
        .map(|vcpu| {
            let machine = Arc::clone(&machine);
            thread::spawn(move || machine.run_vcpu(vcpu))
        })
        .collect();
    let mut result = Ok(());
    for thread in threads {
        let outcome = thread
            .join()
            .map_err(|_| "a vCPU thread panicked".to_string())?;
        if let (Err(err), Ok(())) = (outcome, &result) {
            result = Err(err);
        }
    }
    result?;
    eprintln!("boot_linux: the guest reset the machine");
    Ok(())
}

/// What the vCPU threads share: the device bus and the way to stop everything.
struct Machine {
    bus: Bus,
    /// Count the exits by kind and address, and print them at the end.
    exit_stats: bool,
    i8042: Arc<I8042>,
    stopping: AtomicBool,
    kicks: Vec<KickHandle>,
}

impl Machine {
    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for kick in &self.kicks {
            kick.kick();
        }
    }

    /// Runs one vCPU until the guest resets the machine or an error, which stops the other
    /// vCPUs too.
    fn run_vcpu(&self, vcpu: Box<dyn Vcpu>) -> Result<(), String> {
        let result = self.vcpu_loop(vcpu);
        self.stop();
        result
    }

    fn vcpu_loop(&self, mut vcpu: Box<dyn Vcpu>) -> Result<(), String> {
        let id = vcpu.id();
        let mut stats = self.exit_stats.then(BTreeMap::new);
        while !self.stopping.load(Ordering::SeqCst) {
            let mut exit = vcpu.run().map_err(|err| format!("vCPU {id}: {err}"))?;
            if let VcpuExit::Kicked | VcpuExit::Interrupted = exit {
                continue;
            }
            if let Some(stats) = stats.as_mut() {
                let key = match exit {
                    VcpuExit::IoIn { port, .. } => format!("pio in  {port:#06x}"),
                    VcpuExit::IoOut { port, .. } => format!("pio out {port:#06x}"),
                    VcpuExit::MmioRead { addr, .. } => format!("mmio rd {addr:#x}"),
                    VcpuExit::MmioWrite { addr, .. } => format!("mmio wr {addr:#x}"),
                    ref other => format!("{other:?}"),
                };
                *stats.entry(key).or_insert(0u64) += 1;
            }
            // Port and MMIO accesses go to the bus; what no device claims reads as all-ones
            // and its writes go nowhere, as on a PC with nothing at that address.
            if let ExitOutcome::NotBusExit = self.bus.handle_exit(&mut exit) {
                return Err(format!("vCPU {id} stopped: {exit:?}"));
            }
            if self.i8042.take_reset_request() {
                self.stop();
            }
        }
        for (exit, count) in stats.into_iter().flatten() {
            eprintln!("boot_linux: vCPU {id}: {count:>7} x {exit}");
        }
        Ok(())
    }
}

/// A virtio device behind its virtio-mmio transport.
type VirtioMmio<D> = MmioTransport<Arc<vmkit::GuestMemoryMmap>, D>;
/// A transport on the bus, and its address.
type Placed<D> = (Arc<VirtioMmio<D>>, u64);

/// Places virtio-mmio devices one page apart from [`VIRTIO_MMIO_BASE`], each on its own IRQ.
struct VirtioSlots {
    next_addr: u64,
    next_irq: u32,
    memory: Arc<vmkit::GuestMemoryMmap>,
    /// Whether the transports offer packed virtqueues (`--split-rings` withholds them).
    packed_rings: bool,
}

impl VirtioSlots {
    /// Puts `device` on the bus behind a virtio-mmio transport, wires its interrupt as an
    /// irqfd and lists it for the ACPI tables. Returns the transport and its address.
    fn add<D>(
        &mut self,
        vm: &dyn vmkit::Vm,
        bus: &mut Bus,
        announced: &mut Vec<linux::VirtioMmioDevice>,
        device: D,
    ) -> Result<Placed<D>, Box<dyn Error>>
    where
        D: vmkit_virtio::VirtioDevice<vmkit::GuestMemoryMmap> + Send + 'static,
    {
        let transport = Arc::new(
            MmioTransport::new(device, self.memory.clone(), EventFd::new(0)?)?
                .with_packed_rings(self.packed_rings),
        );
        vm.register_irqfd(transport.interrupt_evt(), self.next_irq, None)?;
        let base = self.next_addr;
        bus.register_mmio(MmioAddress(base), MMIO_REGION_SIZE, transport.clone())?;
        announced.push(linux::VirtioMmioDevice {
            base: u32::try_from(self.next_addr)?,
            size: MMIO_REGION_SIZE as u32,
            irq: self.next_irq,
        });
        self.next_addr += MMIO_REGION_SIZE;
        self.next_irq += 1;
        Ok((transport, base))
    }
}
