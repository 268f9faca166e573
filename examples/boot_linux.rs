//! Boots an unmodified Linux kernel and streams its serial console to stdout.
//!
//! ```text
//! cargo run --release --example boot_linux -- --kernel IMAGE [--initrd FILE]
//!     [--cmdline "..."] [--mem MIB [--mem-overcommit]] [--vcpus N] [--disk FILE[,ro]]
//!     [--net MODE[,vhost] [--tap NAME] [--mac MAC]] [--balloon] [--balloon-control FILE]
//!     [--balloon-no-reporting] [--mergeable] [--exit-stats] [--map-kernel]
//!     [--split-rings] [--seccomp] [--s3-wake-after MS] [--save DIR] [--restore DIR] [--pci]
//!     [--split-irqchip] [--migrate-to ADDR] [--incoming ADDR]
//! ```
//!
//! `IMAGE` is an ELF `vmlinux` (entered through PVH when it has the PVH note, which is the
//! fastest: nothing to decompress) or a `bzImage`. The VM gets `--mem` MiB of RAM (default
//! 256, at least 16, at most the host's RAM unless `--mem-overcommit` is given), `--vcpus`
//! vCPUs (default 1) and these devices:
//!
//! - a 16550 serial port at `0x3f8` on IRQ 4 (console: add `console=ttyS0`), the i8042 whose
//!   reset command ends the run (`reboot=k` makes the kernel use it) and a CMOS clock at
//!   `0x70` (vmkit-devices; left out where the hypervisor serves the RTC itself, as Xen does:
//!   `Capabilities::reserved`), with the in-kernel irqchip and PIT, or, with `--split-irqchip`,
//!   KVM's local APICs only, vmkit-devices' userspace IOAPIC at the same address (wired by
//!   vmkit-machine's `attach_ioapic`: the devices' irqfds follow its redirection table
//!   through GSI routes) and no PIT (Linux calibrates with kvmclock);
//! - an ACPI PM block at `0x600..=0x60f` (vmkit-devices' `PmBlock`, described in the FADT
//!   with a FACS and `\_S5` in the DSDT; SCI on IRQ 9): the ACPI PM timer, which Linux
//!   takes as a clocksource candidate (`acpi_pm`), soft off through PM1a_CNT, so `poweroff`
//!   ends the run, and the FADT's reset register (`0x06` to port `0x60c`), which `reboot`
//!   uses without `reboot=k`. With `--s3-wake-after MS` the DSDT also offers `\_S3`
//!   (suspend to RAM: `echo deep > /sys/power/mem_sleep; echo mem > /sys/power/state`), and
//!   boot_linux wakes a suspended guest MS milliseconds later at the waking vector it left in
//!   the FACS, as firmware would (vmkit-boot's `wake`); without it S3 is not offered;
//!   each vCPU gets the TSC-deadline timer in CPUID when KVM has it, and 10 machine-check
//!   banks (fewer if the host allows fewer);
//! - with `--disk FILE`, FILE (a regular file or a block device, whole 512-byte sectors) as
//!   a virtio-blk disk (`/dev/vda`; `--disk FILE,ro` opens it read-only and the guest sees a
//!   read-only disk), and always a virtio-console
//!   (`/dev/hvc0`) whose output goes to stdout, both on virtio-mmio, announced to the kernel
//!   in the ACPI tables (Debian's kernels do not take `virtio_mmio.device=` arguments);
//! - with `--net MODE`, a virtio-net card (`eth0`, MAC `--mac`, default `52:54:00:12:34:56`)
//!   on a TAP interface (`--tap`, default `vmktap%d`; needs `CAP_NET_ADMIN`) that vmkit-net
//!   puts into a network: `isolated:BRIDGE` (a private bridge shared by the VMs that name
//!   it), `bridged:BRIDGE` (an existing host bridge), `nat:BRIDGE:GATEWAY/PREFIX:UPLINK`
//!   (a private subnet masqueraded out of UPLINK; the guest is configured statically), or
//!   `tap` (the TAP alone, for the host to configure). Its own thread moves the frames, or,
//!   with `--net MODE,vhost`, the host kernel's vhost-net (`/dev/vhost-net`: `modprobe
//!   vhost_net`; the card then offers split rings only); at
//!   exit the TAP leaves the bridge and the network is torn down, unless other VMs are
//!   still on it (the last one out removes it). The guest needs the `virtio_net` driver.
//! - with `--balloon`, a virtio-balloon (vmkit-virtio's `Balloon`, with statistics,
//!   deflate-on-OOM and free page reporting) whose inflated and reported pages leave the RAM
//!   mappings (`vmkit::memory::discard`); the guest needs the `virtio_balloon` driver. Its
//!   target starts at 0 (a VMM changes it with `MmioTransport::set_balloon_target`); SIGUSR1
//!   prints the guest's latest memory statistics on one line of stderr. With
//!   `--balloon-control FILE` (which implies `--balloon`), SIGUSR2 sets the target to the
//!   number of MiB that FILE holds then (`echo 64 >FILE; kill -USR2 PID`; at most `--mem`).
//!   `--balloon-no-reporting` withholds free page reporting (the balloon then gives memory
//!   back only when inflated);
//! - with `--mergeable`, guest RAM is marked for KSM (`MemoryFlags::MERGEABLE`,
//!   `MADV_MERGEABLE`): the host kernel's `ksmd` merges identical pages across VMs when
//!   `/sys/kernel/mm/ksm/run` is 1. Off by default: merged pages are a timing side channel
//!   between guests (a write to a shared page takes a copy-on-write fault).
//! - with `--pci`, a PCI host bridge (vmkit-pci: ports `0xcf8`/`0xcfc`, ECAM at
//!   `0xe0000000` in the ACPI MCFG, `PCI0` in the DSDT with `_PRT` routing INTA of each slot
//!   to a GSI from 16 up) and the disk, the network card and the console on virtio-pci
//!   (vmkit-virtio's `PciTransport`, BARs from `0xc0000000`, MSI-X through `KVM_SIGNAL_MSI`)
//!   instead of virtio-mmio; the balloon stays on virtio-mmio, the vhost datapath needs
//!   virtio-mmio, and `--save`/`--restore` refuse `--pci` (virtio-pci has no saved state yet).
//!
//! The default command line is `console=ttyS0 earlyprintk=serial,ttyS0 reboot=k panic=-1`
//! (`earlyprintk` shows the kernel's first lines even when it dies before its console
//! starts); `--cmdline` takes printable ASCII, at most 4095 bytes and no more than a bzImage's
//! setup header allows (`cmdline_size`). `--exit-stats` prints, at the
//! end, how many exits each port and MMIO address caused on each vCPU (to find what a guest
//! probes). `--map-kernel` maps a vmlinux's pages into guest RAM copy-on-write instead of
//! copying them (`vmkit_boot::linux::load_kernel_file`): loading is nearly free and VMs booting
//! the same file share its pages, but those pages are small pages of the page cache, not
//! the huge pages that back the rest of RAM.
//!
//! The virtio devices offer packed virtqueues (`VIRTIO_F_RING_PACKED`), which Linux's
//! driver takes; `--split-rings` withholds them, so the guest uses split rings.
//!
//! `--seccomp` confines every thread that serves the guest with a seccomp filter: the vCPU
//! threads (their backend's rules, and `TUNSETOFFLOAD` when there is a network card, which its
//! activation sets on a vCPU thread, and with vhost-net the vhost ioctls that start and stop
//! its rings there), the disk's worker (`blk_seccomp_rules`), the network
//! card's worker (vmkit-net's rules), the balloon's statistics thread (the base rules and
//! `recvfrom`), and, once the VM runs, the main thread
//! (`vmkit::seccomp::vmm_rules`, and what its own teardown does). The main thread stays
//! unconfined with a network mode that builds a network (`isolated`, `bridged`, `nat`): tearing
//! that down at the end takes netlink sockets, sysctl files and running `nft`, which no
//! useful filter allows; boot_linux says so when it starts. A forbidden call ends the process
//! with a line naming the thread and the call.
//!
//! `--save DIR`: SIGUSR2 saves the running VM into the snapshot directory DIR: the vCPUs
//! pause, the device threads stop (each finishing what the guest had asked), and
//! `vmkit::snapshot::save` writes the vCPUs (with their machine-check banks), the VM-wide state
//! (kvmclock, irqchip and IOAPIC, PIT), guest memory, the machine's shape and each device's
//! state through `vmkit_snapshot::Persist` (serial, i8042, CMOS, PM block, the virtio-mmio
//! transports of the disk, the network card and the console); then the VM stops and
//! boot_linux exits 0 (`boot_linux: saved the VM to DIR in N ms; it stopped`). It does not
//! resume: the guest goes on in whichever process restores it. With `--seccomp` the main
//! thread, which writes the snapshot, stays unconfined.
//!
//! `--restore DIR` resumes such a snapshot instead of booting: give it the flags the guest was
//! saved with (`--mem`, `--vcpus`, `--disk`, `--net`, `--mac`, `--split-rings`; `--kernel`,
//! `--initrd` and `--cmdline` are not needed, they are in guest memory). A machine those flags
//! build differently is refused, naming the flag, before any VM is made. vmkit checks the
//! snapshot's files against each other and this host, maps guest memory lazily from DIR (keep
//! it unchanged while the guest runs), and loads the vCPUs and the VM-wide state: the guest's
//! clock goes on from the saved kvmclock value, so it never goes back. Each device is built as
//! for a boot, on this run's host resources (the disk file `--disk` names, a new TAP on the
//! network `--net` names), and takes its saved state before the vCPUs run. `--balloon` and
//! `--net MODE,vhost` are refused with either flag: snapshots do not cover them yet.
//!
//! `--migrate-to ADDR`: SIGPWR migrates the running VM live (`vmkit::migration`) to a
//! boot_linux run with `--incoming ADDR` and the same flags as a `--restore` takes. ADDR is a
//! Unix socket path if it contains a `/`, else a TCP `host:port` (the destination listens
//! there for one connection). RAM is added with `MemoryFlags::LOG_DIRTY`; pre-copy rounds run
//! while the guest does (each reported on stderr), then the vCPUs pause, the device threads
//! stop and the same device sections and shape as a snapshot's are sent. The destination
//! refuses a machine its flags build differently before it confirms; until it confirms, any
//! failure (refusal, lost or corrupt stream) leaves the VM running here: boot_linux says why
//! and restarts the device threads. Once confirmed it prints vmkit's summary (rounds, pages,
//! bytes, downtime, total), stops the VM and exits 0; its TAP leaves the network. The
//! destination builds its devices from the received sections as `--restore` does, on its own
//! disk file and a new TAP on the network `--net` names, and asks the guest to announce
//! itself (`VIRTIO_NET_F_GUEST_ANNOUNCE`: Linux's driver sends a gratuitous ARP), as does a
//! restored one. A run that came in with `--incoming` can move on with `--migrate-to` too: its
//! RAM keeps the source's dirty logging. The same devices as for snapshots are refused
//! (`--balloon`, `,vhost`, `--pci`).
//!
//! SIGINT (Ctrl-C) and SIGTERM stop the VM rather than kill the process: boot_linux says
//! `boot_linux: SIGINT: stopping the VM`, stops the vCPUs, ends the device threads and
//! leaves the network as at any other end (the last VM out tears it down). A network that a
//! killed boot_linux left behind (SIGKILL cannot be caught) is reported by the next run on
//! it (`boot_linux: net: network BRIDGE was left behind by process PID, ...`), which takes
//! it over and tears it down at its own end.
//!
//! Every input is checked before the guest starts: the kernel image's headers against the
//! file's length and the RAM the kernel needs against `--mem` (vmkit-boot), the initrd is a
//! non-empty regular file that fits, and the flags' values are in range.
//!
//! Exit status: 0 once the guest powers off through ACPI (boot_linux says `the guest powered
//! off`) or resets the machine (through the i8042, which `reboot=k` selects, or the ACPI
//! reset register; a panic with `panic=-1` ends the same way; or through the hypervisor: a
//! Linux guest that detects Xen resets and powers off with Xen's calls); 130 after SIGINT and 143
//! after SIGTERM (128 plus the signal's number, as a shell reports a process the signal
//! killed); 1, with the reason on stderr (naming the flag or file and the limit), on any
//! failure.
//!
//! Which hosts boot Linux at full speed: any KVM with hardware virtualization. On a software
//! KVM that emulates ring-0 guest code (like this project's CI host), a distribution kernel
//! takes seconds to print its banner and may die on an instruction the emulator lacks.

use std::collections::BTreeMap;
use std::error::Error;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use linux_loader::cmdline::Cmdline;
use vm_device::bus::PioAddress;
use vmkit::reserved::IoSpace;
use vmkit::runner::{self, ExitAction, ExitHandler, RunnerOptions, VmRunner};
use vmkit::snapshot::{self, format::Snapshot, MemoryRestore};
use vmkit::{ErrorChain, MemoryFlags, MemoryRegion, SystemEventKind, VcpuExit, VmConfig};
use vmkit_boot::linux::{self, layout};
use vmkit_bus::Bus;
use vmkit_devices::{
    Cmos, Persist, PmBlock, Serial, SleepState, COM1, COM1_GSI, I8042, IOAPIC_PINS, SERIAL_PORTS,
};
use vmkit_machine::worker::{self, WorkerOptions};
use vmkit_machine::{
    GsiAllocator, MmioAllocator, MmioWindow, QueueWorker, VirtioMmioWiring, VirtioPciWiring, VmMsi,
    WiredDevice,
};
use vmkit_net::vhost::{Datapath, VhostNet};
use vmkit_net::worker::NetWorkerOptions;
use vmkit_net::{Attachment, NetWorker, QueueKicks, TapMode};
use vmkit_virtio::balloon::{Balloon, BalloonOptions};
use vmkit_virtio::blk::{Block, BlockOptions};
use vmkit_virtio::console::Console;
use vmkit_virtio::mmio::MmioTransport;
use vmkit_virtio::net::{Net, NetOptions, RXQ, TXQ};
use vmkit_virtio::VirtioDevice;

#[path = "boot_linux/balloon.rs"]
mod balloon;
#[path = "boot_linux/migrate.rs"]
mod migrate;
#[path = "boot_linux/net.rs"]
mod net;
#[path = "boot_linux/options.rs"]
mod options;
#[path = "boot_linux/signals.rs"]
mod signals;
#[path = "boot_linux/sleep.rs"]
mod sleep;
#[path = "boot_linux/snap.rs"]
mod snap;

use options::CMDLINE_CAPACITY;

/// Where the virtio-mmio devices go, one page each, in the MMIO hole (up to the IOAPIC).
const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// The first virtio-mmio device's IRQ (GSI); the next ones follow. 5 is the first ISA IRQ
/// nothing else here uses.
const VIRTIO_FIRST_IRQ: u32 = 5;
/// The last IOAPIC pin.
const VIRTIO_LAST_IRQ: u32 = 23;
/// The ACPI SCI's IRQ (GSI), where PC chipsets put it.
const SCI_IRQ: u8 = 9;
/// With `--pci`: the ECAM window (bus 0, 1 MiB), the BAR window, and the GSIs INTx goes to
/// (the IOAPIC pins above the ISA IRQs, as on a PC; virtio-mmio keeps those below).
const PCI_ECAM_BASE: u64 = 0xe000_0000;
const PCI_BARS: (u64, u64) = (0xc000_0000, VIRTIO_MMIO_BASE);
const PCI_FIRST_IRQ: u32 = 16;

fn main() -> ExitCode {
    match run() {
        Ok(Ending::Reset | Ending::PowerOff | Ending::Saved | Ending::Migrated) => {
            ExitCode::SUCCESS
        }
        Ok(Ending::Signal(signal)) => ExitCode::from(signals::exit_status(signal)),
        // `--help` is not a failure: the usage goes to stdout.
        Err(err) if matches!(err.downcast_ref(), Some(options::OptionsError::Help)) => {
            println!("{err}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("boot_linux: {}", ErrorChain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Refuses a hypervisor that keeps, for a VM made with `config`, the ports of a device
/// this machine needs (`Capabilities::reserved`): the guest's accesses would never reach it.
fn check_ports(caps: &vmkit::Capabilities, config: &VmConfig) -> Result<(), Box<dyn Error>> {
    let devices = [
        ("the serial port", COM1, SERIAL_PORTS),
        // Its data and command ports; port 0x61 between them is the PIT's speaker gate.
        ("the i8042's data port", I8042::BASE, 1),
        ("the i8042's command port", I8042::BASE + 4, 1),
        ("the ACPI PM block", PmBlock::DEFAULT_BASE, PmBlock::PORTS),
    ];
    for (name, base, ports) in devices {
        let (base, ports) = (u64::from(base), u64::from(ports));
        if let Some(kept) = caps.reserved_conflict(config, IoSpace::Pio, base, ports) {
            return Err(format!(
                "{name} (ports {base:#x}-{:#x}) sits on {kept}, which the hypervisor keeps",
                base + ports - 1
            )
            .into());
        }
    }
    Ok(())
}

/// Opens the file of `flag`.
fn open(path: &PathBuf, flag: &str) -> Result<File, Box<dyn Error>> {
    File::open(path)
        .map_err(|err| format!("{flag} {}: cannot open it: {err}", path.display()).into())
}

/// How a run ended without failing.
enum Ending {
    /// The guest reset the machine.
    Reset,
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// This signal stopped the VM.
    Signal(i32),
    /// The VM was saved (`--save`, SIGUSR2), then stopped.
    Saved,
    /// The VM migrated (`--migrate-to`, SIGPWR) and runs at the destination.
    Migrated,
}

fn run() -> Result<Ending, Box<dyn Error>> {
    let options = options::from_env()?;
    // First in, last out: a signal during the teardown at the end is caught too, so the
    // teardown is never cut short.
    let interrupts = signals::Interrupts::catch()
        .map_err(|err| format!("cannot catch SIGINT and SIGTERM: {err}"))?;
    let vcpus = options.vcpus;
    let ram_size = options.ram_size();
    // Every input file is checked before the VM is made.
    let disk = options.disk.as_ref().map(options::open_disk).transpose()?;
    let hypervisor = vmkit::open()?;
    let started = Instant::now();
    let shape = snap::Shape::of(&options, disk.as_ref().map(|(_, size)| *size));
    // --restore: the VM, its memory (mapped lazily from the snapshot), its vCPUs and its
    // VM-wide state come from the snapshot, once the machine's shape is checked against the
    // flags; the kernel, initrd and boot information are already in that memory.
    // --incoming: the TAP joins its network before the VM comes in, so that the guest's pause
    // after the source hands over does not include it (the card is built on it below).
    // When the migrating VM came in (--incoming).
    let mut arrived = None;
    // With --incoming: the board's devices, built and wired before the VM came in.
    let mut prepared_board = None;
    let mut early_tap = match (&options.incoming, &options.net) {
        (Some(_), Some(mode)) => Some(Attachment::open(mode, &options.tap)?),
        _ => None,
    };
    let restored = match &options.restore {
        Some(dir) => {
            snap::check_shape(dir, hypervisor.kind(), &shape)?;
            Some(
                snapshot::restore(dir, hypervisor.as_ref(), MemoryRestore::Lazy).map_err(
                    |source| snap::RestoreError::Snapshot {
                        dir: dir.clone(),
                        source,
                    },
                )?,
            )
        }
        // --incoming: the same, from the migration stream.
        None => match &options.incoming {
            Some(addr) => {
                // The board's devices are built and their interrupts wired while the
                // memory comes, so that none of it counts in the guest's pause.
                let (incoming, board) =
                    migrate::receive(addr, hypervisor.as_ref(), &shape, |vm| {
                        let board = Board::build()?;
                        board.wire(vm)?;
                        Ok(board)
                    })?;
                prepared_board = Some(board);
                eprintln!(
                    "boot_linux: received the VM from {addr} ({} pre-copy rounds, {} pages)",
                    incoming.rounds, incoming.pages
                );
                arrived = Some(Instant::now());
                Some(snapshot::Restored {
                    vm: incoming.vm,
                    vcpus: incoming.vcpus,
                    config: incoming.config,
                    snapshot: incoming.state,
                })
            }
            None => None,
        },
    };
    if options.pci && options.datapath == Datapath::Vhost {
        return Err("--net ...,vhost needs the card on virtio-mmio: drop --pci or ,vhost".into());
    }
    // The balloon discards from these regions (the same mappings as the VM's).
    let mut ram = Vec::new();
    let (vm, config, mut restored_vcpus, from) = match restored {
        Some(restored) => (
            restored.vm,
            restored.config,
            Some(restored.vcpus),
            Some(restored.snapshot),
        ),
        None => {
            let config = if options.split_irqchip {
                // No PIT with it: Linux calibrates with kvmclock and times with the local APIC.
                VmConfig::default()
                    .max_vcpus(vcpus)
                    .split_irqchip(IOAPIC_PINS as u32)
            } else {
                VmConfig::default().max_vcpus(vcpus).irqchip(true).pit(true)
            };
            let vm = hypervisor.create_vm(&config)?;
            let mut flags = match options.mergeable {
                true => MemoryFlags::MERGEABLE,
                false => MemoryFlags::empty(),
            };
            // A migration's pre-copy rounds send what the dirty log says changed.
            if options.migrate_to.is_some() {
                flags |= MemoryFlags::LOG_DIRTY;
            }
            for (start, size) in layout::ram_ranges(ram_size) {
                let size = usize::try_from(size).map_err(|_| "--mem is too large for this host")?;
                let region = MemoryRegion::anonymous(start, size, flags)?;
                ram.push(region.clone());
                vm.add_memory_region(region)?;
            }
            (vm, config, None, None)
        }
    };
    // Shared: the PCI devices' MSI-X messages go out through it from any thread.
    let vm: Arc<dyn vmkit::Vm> = Arc::from(vm);
    let from = from.as_ref();
    let memory = vm.memory();
    // With --incoming: what each step of building the machine costs the guest's pause.
    let mut laps = migrate::Laps::new(arrived);

    let boot = match from {
        Some(_) => None,
        None => Some(load_guest(&options, &memory, ram_size)?),
    };

    // The devices. Each interrupt is an irqfd: the device signals an eventfd and the
    // hypervisor raises the GSI without a trip through this process.
    check_ports(hypervisor.capabilities(), &config)?;
    let mut bus = Bus::new();
    if options.split_irqchip {
        // The IOAPIC in this process, at the address the MADT gives; the devices' irqfds on
        // their GSIs follow its redirection table through GSI routes.
        vmkit_machine::attach_ioapic(
            Arc::clone(&vm),
            &mut bus,
            Box::new(|err| eprintln!("boot_linux: IOAPIC: {}", ErrorChain(err))),
        )?;
    }
    let board = match prepared_board {
        Some(board) => board,
        None => {
            let board = Board::build().map_err(|err| err as Box<dyn Error>)?;
            board.wire(vm.as_ref())?;
            board
        }
    };
    // A restored device takes its saved state before it is shared (vmkit_snapshot::Persist).
    let serial = Arc::new(restore_into(board.serial, from, snap::SERIAL)?);
    bus.register_pio(PioAddress(COM1), SERIAL_PORTS, serial.clone())?;
    let i8042 = Arc::new(restore_into(board.i8042, from, snap::I8042)?);
    bus.register_pio(PioAddress(I8042::BASE), I8042::PORTS, i8042.clone())?;
    let cmos = Arc::new(restore_into(board.cmos, from, snap::CMOS)?);
    // A hypervisor that emulates the RTC itself (Xen, with its platform) keeps these ports:
    // the guest gets its clock, and this one stays off the bus.
    match hypervisor.capabilities().reserved_conflict(
        &config,
        IoSpace::Pio,
        u64::from(Cmos::BASE),
        u64::from(Cmos::PORTS),
    ) {
        Some(kept) => eprintln!("boot_linux: CMOS: the hypervisor serves {kept} itself"),
        None => {
            bus.register_pio(PioAddress(Cmos::BASE), Cmos::PORTS, cmos.clone())?;
        }
    }
    // The ACPI PM block: its SCI is an irqfd on IRQ 9, kept out of the virtio devices' range.
    let pm = Arc::new(restore_into(board.pm, from, snap::PM)?);
    bus.register_pio(
        PioAddress(PmBlock::DEFAULT_BASE),
        PmBlock::PORTS,
        pm.clone(),
    )?;
    let mmio_last_irq = match options.pci {
        true => PCI_FIRST_IRQ - 1,
        false => VIRTIO_LAST_IRQ,
    };
    let mut gsis = GsiAllocator::new(VIRTIO_FIRST_IRQ, mmio_last_irq)?;
    gsis.reserve(u32::from(SCI_IRQ))?;

    // Each virtio-mmio device gets a page of the MMIO hole, a GSI wired as an irqfd, and a
    // line in the ACPI tables.
    let mut virtio = VirtioMmioWiring::new(
        Arc::new(memory.clone()),
        MmioAllocator::new(VIRTIO_MMIO_BASE, u64::from(layout::IOAPIC_ADDR))?,
        gsis,
    )
    .packed_rings(!options.split_rings);
    let mut virtio_mmio = Vec::new();
    let mut pci = match options.pci {
        true => Some(
            VirtioPciWiring::new(
                Arc::new(memory.clone()),
                PCI_ECAM_BASE,
                MmioAllocator::new(PCI_BARS.0, PCI_BARS.1)?,
                GsiAllocator::new(PCI_FIRST_IRQ, VIRTIO_LAST_IRQ)?,
                Arc::new(VmMsi(vm.clone())),
            )
            .packed_rings(!options.split_rings),
        ),
        false => None,
    };
    // With --pci and --seccomp, device threads send MSIs through the VM: they may raise
    // interrupts, nothing more.
    let pci_worker_rules = |mut rules: vmkit::seccomp::Rules| {
        if options.pci {
            rules.extend(&vmkit::seccomp::interrupt_rules(hypervisor.kind()));
        }
        rules
    };
    // The disk's request queue notifies through an ioeventfd, served by a device thread, so
    // the guest's requests neither exit to nor wait on a vCPU thread.
    let mut disk_worker = None;
    laps.lap("board devices");
    // The transports a save reads (their workers stopped first).
    let mut saved_disk = None;
    let mut saved_card = None;
    // With --migrate-to: what restarts the device threads after a failed migration.
    let mut restart = Restart::default();
    if let (Some((file, size)), Some(arg)) = (disk, &options.disk) {
        let block_options = BlockOptions {
            read_only: arg.read_only,
            ..BlockOptions::default()
        };
        let block = Block::with_backend(file, size, block_options)?;
        let mut worker_options = WorkerOptions::named("virtio-blk");
        if options.seccomp {
            let rules = pci_worker_rules(worker::blk_seccomp_rules());
            worker_options = worker_options.seccomp(rules.compile()?);
        }
        let on_error =
            |err: &vmkit_machine::WorkerError| eprintln!("boot_linux: disk: {}", ErrorChain(err));
        disk_worker = Some(match pci.as_mut() {
            // Not with --save or --restore (refused): nothing to save or restore.
            Some(pci) => {
                let disk = pci.attach(vm.as_ref(), block, &[0])?;
                QueueWorker::start_with(disk.transport, disk.notifiers, worker_options, on_error)?
            }
            None => {
                let mut disk = attach(
                    &mut virtio,
                    vm.as_ref(),
                    &mut bus,
                    block,
                    &[0],
                    from,
                    snap::DISK,
                )?;
                saved_disk = Some(disk.transport.clone());
                virtio_mmio.push(announce(disk.window, disk.gsi)?);
                let notifiers = std::mem::take(&mut disk.notifiers);
                if options.migrate_to.is_some() {
                    restart.disk = Some((disk.transport.clone(), clone_notifiers(&notifiers)?));
                }
                QueueWorker::start_with(disk.transport, notifiers, worker_options, on_error)?
            }
        });
    }
    // Declared before the worker so that it is dropped after it: the device stops before
    // its TAP leaves the network.
    laps.lap("disk");
    let mut net_attachment = net::Leaving(None);
    let mut net_worker = None;
    if let Some(mode) = &options.net {
        let (attachment, tap) = match early_tap.take() {
            Some(opened) => opened,
            None => Attachment::open(mode, &options.tap)?,
        };
        if let Some(leftover) = attachment.leftover() {
            eprintln!("boot_linux: net: {leftover}");
        }
        eprintln!(
            "boot_linux: net: {}",
            net::describe(&attachment, &options.mac)
        );
        net_attachment.0 = Some(attachment);
        let device = Net::new(
            tap,
            NetOptions {
                mac: options.mac,
                ..NetOptions::default()
            },
        )?;
        // The receive and transmit queues' notifications are ioeventfds, so they reach the
        // device thread (or vhost-net) without an exit to a vCPU thread; the rare control
        // queue goes through the ordinary MMIO exit.
        let vhost = options.datapath == Datapath::Vhost;
        if let Some(pci) = pci.as_mut() {
            // Not with --save or --restore (refused), nor with vhost (refused above).
            let mut card = pci.attach(vm.as_ref(), device, &[RXQ, TXQ])?;
            let kicks = QueueKicks {
                rx: card.take_notifier(RXQ).ok_or("no RX notifier")?,
                tx: card.take_notifier(TXQ).ok_or("no TX notifier")?,
            };
            let mut worker_options = NetWorkerOptions::default();
            if options.seccomp {
                let rules = pci_worker_rules(vmkit_net::worker::seccomp_rules());
                worker_options = worker_options.seccomp(rules.compile()?);
            }
            net_worker = Some(NetWorker::start_with(
                card.transport,
                kicks,
                worker_options,
                |err| eprintln!("boot_linux: net: {}", ErrorChain(err)),
            )?);
        } else {
            // vhost-net serves split rings only.
            virtio = virtio.packed_rings(!options.split_rings && !vhost);
            let mut card = attach(
                &mut virtio,
                vm.as_ref(),
                &mut bus,
                device,
                &[RXQ, TXQ],
                from,
                snap::NET,
            )?;
            saved_card = Some(card.transport.clone());
            virtio = virtio.packed_rings(!options.split_rings);
            virtio_mmio.push(announce(card.window, card.gsi)?);
            let kicks = QueueKicks {
                rx: card.take_notifier(RXQ).ok_or("no RX notifier")?,
                tx: card.take_notifier(TXQ).ok_or("no TX notifier")?,
            };
            if vhost {
                // The kernel moves the frames: the queues' ioeventfds are its kicks, the card's
                // irqfd its call.
                let memory = virtio.memory().clone();
                let offload = card
                    .transport
                    .with_device(|net| VhostNet::open(memory, net.backend(), kicks))?
                    .on_error(|err| eprintln!("boot_linux: net: {}", ErrorChain(err)));
                card.transport.set_offload(Some(Box::new(offload)));
                eprintln!("boot_linux: net: datapath vhost-net");
            } else {
                if options.migrate_to.is_some() {
                    let kicks = QueueKicks {
                        rx: kicks.rx.try_clone()?,
                        tx: kicks.tx.try_clone()?,
                    };
                    restart.net = Some((card.transport.clone(), kicks));
                }
                let mut worker_options = NetWorkerOptions::default();
                if options.seccomp {
                    worker_options =
                        worker_options.seccomp(vmkit_net::worker::seccomp_rules().compile()?);
                }
                net_worker = Some(NetWorker::start_with(
                    card.transport,
                    kicks,
                    worker_options,
                    |err| eprintln!("boot_linux: net: {}", ErrorChain(err)),
                )?);
            }
        }
    }
    laps.lap("network card");
    // The balloon's rare notifications go through the ordinary MMIO exit.
    let mut _balloon_stats = None;
    if options.balloon {
        let control = options
            .balloon_control
            .as_deref()
            .map(|path| balloon::Control::open(path, options.mem_mib))
            .transpose()?;
        let balloon_options = BalloonOptions {
            free_page_reporting: options.balloon_reporting,
            ..BalloonOptions::default()
        };
        let device = Balloon::new(balloon::Discarder(ram), balloon_options);
        let wired = virtio.attach(vm.as_ref(), &mut bus, device, &[])?;
        virtio_mmio.push(announce(wired.window, wired.gsi)?);
        let filter = match options.seccomp {
            true => Some(balloon::stats_thread_rules().compile()?),
            false => None,
        };
        _balloon_stats = Some(balloon::StatsOnSignal::start(
            wired.transport,
            control,
            filter,
        )?);
    }
    let console = match pci.as_mut() {
        Some(pci) => {
            pci.attach(vm.as_ref(), Console::new(io::stdout()), &[])?;
            None
        }
        None => {
            let console = attach(
                &mut virtio,
                vm.as_ref(),
                &mut bus,
                Console::new(io::stdout()),
                &[],
                from,
                snap::CONSOLE,
            )?;
            virtio_mmio.push(announce(console.window, console.gsi)?);
            Some(console)
        }
    };
    // The root bus on the bus: configuration ports, ECAM, BARs; and its ACPI description.
    laps.lap("console");
    let pci_bridge = match pci {
        Some(pci) => {
            let platform = pci.finish(&mut bus)?;
            // Linux reads registers below 0x100 through ports 0xcf8/0xcfc: on Xen they reach
            // the root bus only for functions claimed (on KVM this does nothing).
            if hypervisor.capabilities().pci_config_ports {
                vm.claim_pci_config(vmkit::pci::PciFunctions::Bus(0))?;
            }
            eprintln!(
                "boot_linux: PCI: ECAM at {:#x}, BARs in {:#x}..{:#x}, slots {:?}",
                platform.ecam.base,
                platform.bars.base,
                platform.bars.end(),
                platform
                    .intx
                    .iter()
                    .map(|(slot, gsi)| format!("{slot}: GSI {gsi}"))
                    .collect::<Vec<_>>()
            );
            Some(linux::PciHostBridge {
                ecam_base: platform.ecam.base,
                last_bus: 0,
                mmio: (
                    u32::try_from(platform.bars.base)?,
                    u32::try_from(platform.bars.end() - 1)?,
                ),
                intx: platform
                    .intx
                    .iter()
                    .map(|&(slot, gsi)| linux::PciIntx { slot, gsi })
                    .collect(),
            })
        }
        None => None,
    };

    let acpi_devices = linux::AcpiDevices {
        serial: vec![linux::SerialPort {
            port: COM1,
            irq: COM1_GSI,
        }],
        virtio_mmio,
        pm: Some(pm_tables(options.s3_wake_after.is_some())),
        pci: pci_bridge,
    };
    // Where the guest leaves its waking vector before it suspends (for a restored guest too:
    // the same flags lay its tables out the same way).
    let facs = linux::acpi::facs_address(vcpus, &acpi_devices);
    let mut vcpu_handles = Vec::new();
    if let Some((kernel, initrd)) = boot {
        let mut cmdline = Cmdline::new(CMDLINE_CAPACITY)?;
        cmdline.insert_str(&options.cmdline)?;
        let machine = linux::MachineConfig {
            ram_size,
            vcpus,
            apic_id_stride: hypervisor.capabilities().apic_id_stride,
            devices: acpi_devices,
        };
        linux::write_boot_info(&memory, &kernel, &cmdline, initrd, &machine)?;
        for index in 0..vcpus {
            let vcpu = vm.create_vcpu(index)?;
            linux::configure_vcpu(
                vcpu.as_ref(),
                &memory,
                &kernel,
                (index, vcpus),
                hypervisor.capabilities(),
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
    }
    if let Some(vcpus) = restored_vcpus.take() {
        vcpu_handles = vcpus;
        let what = match (&options.restore, &options.incoming) {
            (Some(dir), _) => dir.display().to_string(),
            (None, Some(addr)) => format!("the VM that came in at {addr}"),
            (None, None) => String::new(),
        };
        eprintln!(
            "boot_linux: restored {} ({} MiB, {} vCPU(s), on {}) in {} us",
            what,
            options.mem_mib,
            vcpu_handles.len(),
            hypervisor.kind(),
            started.elapsed().as_micros()
        );
    }
    // What a save needs: the MSRs the vCPUs can read (asked while a vCPU is at hand).
    let msrs = match vcpu_handles.first() {
        Some(vcpu) if options.save.is_some() || options.migrate_to.is_some() => {
            snapshot::readable_msrs(vcpu.as_ref(), &hypervisor.msr_index_list())
        }
        _ => Vec::new(),
    };
    let save = match &options.save {
        Some(dir) => Some(Saving {
            dir: dir.clone(),
            request: snap::SaveRequest::catch()
                .map_err(|err| format!("cannot catch SIGUSR2: {err}"))?,
            msrs: msrs.clone(),
        }),
        None => None,
    };
    let migration = match &options.migrate_to {
        Some(addr) => Some((
            addr.clone(),
            snap::SaveRequest::catch_signal(libc::SIGPWR)
                .map_err(|err| format!("cannot catch SIGPWR: {err}"))?,
        )),
        None => None,
    };

    // One thread per vCPU (vmkit's runner); exits go to the bus; a reset (the i8042's
    // command or the ACPI reset register) or ACPI soft off ends the run.
    // With --s3-wake-after, a suspend goes to the waker (see sleep.rs).
    let (suspended, suspends) = std::sync::mpsc::channel();
    let waking = options.s3_wake_after.is_some();
    let (board_i8042, board_pm) = (i8042.clone(), pm.clone());
    let board = runner::from_fn(move |id, exit| match exit {
        // The hypervisor's own reset or power-off (a Linux guest that knows Xen asks Xen
        // for them, even with reboot=k), as if through the devices here.
        VcpuExit::SystemEvent {
            kind: SystemEventKind::Reset,
            ..
        } => ExitAction::Reset,
        VcpuExit::SystemEvent {
            kind: SystemEventKind::Shutdown,
            ..
        } => ExitAction::PowerOff,
        exit => match bus.handle(id, exit) {
            ExitAction::Continue
                if board_i8042.take_reset_request() || board_pm.take_reset_request() =>
            {
                ExitAction::Reset
            }
            ExitAction::Continue => match board_pm.take_sleep_request() {
                Some(SleepState::S5) => ExitAction::PowerOff,
                Some(SleepState::S3) if waking && suspended.send(id).is_ok() => {
                    ExitAction::Continue
                }
                Some(SleepState::S3) => {
                    eprintln!(
                        "boot_linux: vCPU {id}: the guest asked to suspend (S3), which this VMM \
                         does not offer: the vCPU stays paused (Ctrl-C ends the run)"
                    );
                    ExitAction::Pause
                }
                None => ExitAction::Continue,
            },
            action => action,
        },
    });
    let stats = options.exit_stats.then(|| Arc::new(ExitStats::new(vcpus)));
    let handler = match &stats {
        Some(stats) => stats.wrap(board),
        None => board,
    };
    if let Some(signal) = interrupts.caught() {
        // Caught while the VM was being built: it never runs.
        return Ok(Ending::Signal(signal));
    }
    let mut runner_options = RunnerOptions::default();
    // The main thread's filter, compiled before anything runs (None: it stays unconfined).
    let mut main_filter = None;
    if options.seccomp {
        let mut rules = hypervisor.vcpu_seccomp_rules();
        if options.net.is_some() {
            rules.extend(&vmkit_net::worker::vcpu_seccomp_rules());
        }
        if options.net.is_some() && options.datapath == Datapath::Vhost {
            rules.extend(&vmkit_net::vhost::vcpu_seccomp_rules());
        }
        if options.balloon {
            // The balloon's queues are served on the vCPU thread that notified.
            rules.extend(&vmkit::seccomp::discard_rules());
        }
        runner_options = runner_options.seccomp(rules.compile()?);
        if options.save.is_some() || options.migrate_to.is_some() {
            eprintln!(
                "boot_linux: seccomp: the main thread stays unconfined: --save and \
                 --migrate-to write the VM's state from it"
            );
        } else if matches!(options.net, None | Some(TapMode::Alone)) {
            main_filter = Some(main_thread_rules(hypervisor.kind()).compile()?);
        } else {
            eprintln!(
                "boot_linux: seccomp: the main thread stays unconfined: tearing the network \
                 down takes netlink, sysctl files and nft"
            );
        }
    }
    laps.lap("the rest");
    let running = VmRunner::start_with(vcpu_handles, handler, runner_options)?;
    interrupts.watch(running.vcpus());
    laps.lap("starting the vCPUs");
    // A guest that moved here (--incoming, or --restore, maybe on another host) announces
    // itself on the network, so that switches learn where its MAC address is now
    // (VIRTIO_NET_F_GUEST_ANNOUNCE: a gratuitous ARP from Linux's driver).
    if let (Some(at), Some(laps)) = (arrived, laps.describe()) {
        eprintln!(
            "boot_linux: the vCPUs run {} ms after the VM came in: {laps}",
            at.elapsed().as_millis()
        );
    }
    let mut announcing = None;
    if let (Some(_), Some(card)) = (from, &saved_card) {
        if card.with_device(|net| net.announce()) {
            announcing = Some(card.clone());
            card.notify_config_change();
            eprintln!("boot_linux: net: asked the guest to announce itself");
        }
    }
    if let Some(after) = options.s3_wake_after {
        let facs = facs.ok_or("the ACPI tables have no FACS to wake the guest from")?;
        let vcpus = running.vcpus().to_vec();
        sleep::spawn_waker(
            suspends,
            vcpus,
            Arc::clone(&pm),
            memory.clone(),
            facs,
            after,
        )?;
    }
    if let Some(filter) = main_filter {
        filter.install()?;
    }
    let mut saved_to = None;
    let mut migrated = None;
    let devices = Devices {
        serial: &serial,
        i8042: &i8042,
        cmos: &cmos,
        pm: &pm,
        disk: saved_disk.as_deref(),
        card: saved_card.as_deref(),
        console: console.as_ref().map(|c| &*c.transport),
    };
    let finished = if save.is_none() && migration.is_none() {
        running.join()
    } else {
        // Waits for the VM to stop, or for SIGUSR2 to save it (then it stops), or for SIGPWR
        // to migrate it (then it stops here, or runs on if the migration failed).
        while !running.wait_stopping(Duration::from_millis(20)) {
            if let Some(save) = save.as_ref().filter(|save| save.request.take()) {
                let at = Instant::now();
                let result = save_vm(
                    save,
                    &running,
                    hypervisor.as_ref(),
                    &config,
                    vm.as_ref(),
                    &devices,
                    (&mut disk_worker, &mut net_worker),
                    &shape,
                );
                running.stop_all();
                result?;
                saved_to = Some((save.dir.clone(), at.elapsed()));
                break;
            }
            let Some((addr, _)) = migration.as_ref().filter(|(_, request)| request.take()) else {
                continue;
            };
            eprintln!("boot_linux: SIGPWR: migrating the VM to {addr}");
            let source = vmkit::migration::Source {
                hypervisor: hypervisor.as_ref(),
                config: &config,
                vm: vm.as_ref(),
                runner: &running,
                msrs: &msrs,
                marked: None,
            };
            // How long the devices' part of the state capture took (stopping their threads,
            // then their sections), for the report.
            let mut devices_took = None;
            let result = migrate::send(addr, &source, |w| {
                let started = Instant::now();
                // A device's state is taken with nothing serving it.
                stop_workers((&mut disk_worker, &mut net_worker)).map_err(|err| {
                    snapshot::format::StateError::Io {
                        part: snapshot::format::Part::Output,
                        source: io::Error::other(format!("stopping the device threads: {err}")),
                    }
                })?;
                let stopped = started.elapsed();
                write_devices(w, &devices, &shape)?;
                devices_took = Some((stopped, started.elapsed() - stopped));
                Ok(())
            });
            if let Some((stopped, written)) = devices_took {
                eprintln!(
                    "boot_linux: migration: the device threads stopped in {} ms, their state \
                     written in {} ms",
                    stopped.as_millis(),
                    written.as_millis()
                );
            }
            match result {
                Ok(summary) => {
                    running.stop_all();
                    migrated = Some((addr.clone(), summary));
                    break;
                }
                Err(err) => {
                    eprintln!(
                        "boot_linux: the migration failed; the VM runs on here: {}",
                        ErrorChain(err.as_ref())
                    );
                    restart.start(&options, (&mut disk_worker, &mut net_worker))?;
                }
            }
        }
        running.join()
    };
    if let Some(stats) = stats {
        stats.print();
    }
    if let Some(card) = announcing {
        match card.with_device(|net| net.announcing()) {
            true => eprintln!("boot_linux: net: the guest never acknowledged its announcement"),
            false => eprintln!("boot_linux: net: the guest announced itself (acknowledged)"),
        }
    }
    let mut powered_off = false;
    for vcpu in finished {
        powered_off |= matches!(vcpu.outcome?, runner::VcpuOutcome::PowerOff);
    }
    // Dropping what run() holds on return stops the device threads, then the TAP leaves
    // its network (declared in that order above).
    if let Some((dir, took)) = saved_to {
        eprintln!(
            "boot_linux: saved the VM to {} in {} ms; it stopped",
            dir.display(),
            took.as_millis()
        );
        return Ok(Ending::Saved);
    }
    if let Some((addr, summary)) = migrated {
        eprintln!(
            "boot_linux: migrated the VM to {addr}: {} rounds, {} pages ({} while paused), {} \
             bytes, downtime {} ms, total {} ms; it runs there",
            summary.rounds,
            summary.pages_sent,
            summary.final_pages,
            summary.bytes_sent,
            summary.downtime.as_millis(),
            summary.total.as_millis()
        );
        eprintln!(
            "boot_linux: migration: pausing the vCPUs took {} ms; the downtime: state capture \
             {} ms, last pages and state sent {} ms, the destination's restore and \
             confirmation {} ms",
            summary.pausing.as_millis(),
            summary.capture.as_millis(),
            summary.final_copy.as_millis(),
            summary.confirmation.as_millis()
        );
        return Ok(Ending::Migrated);
    }
    if let Some(signal) = interrupts.caught() {
        eprintln!("boot_linux: {}: the VM stopped", signals::name(signal));
        return Ok(Ending::Signal(signal));
    }
    if powered_off {
        eprintln!("boot_linux: the guest powered off");
        return Ok(Ending::PowerOff);
    }
    eprintln!("boot_linux: the guest reset the machine");
    Ok(Ending::Reset)
}

/// Loads `--kernel` and `--initrd` into guest memory, each checked first.
fn load_guest(
    options: &options::Options,
    memory: &vmkit::GuestMemoryMmap,
    ram_size: u64,
) -> Result<(linux::LoadedKernel, Option<linux::Initrd>), Box<dyn Error>> {
    let mut kernel_file = open(&options.kernel, "--kernel")?;
    let kernel = if options.map_kernel {
        linux::load_kernel_file(memory, &kernel_file)
    } else {
        linux::load_kernel(memory, &mut kernel_file)
    }
    .map_err(|err| options.kernel_error(err))?;
    options.check_cmdline_for_kernel(kernel.cmdline_max())?;
    let initrd = match &options.initrd {
        Some(path) => {
            let low_ram_end = ram_size.min(layout::MMIO_HOLE_START);
            let mut file = open(path, "--initrd")?;
            Some(
                linux::load_initrd(memory, &mut file, &kernel, low_ram_end)
                    .map_err(|err| options.initrd_error(err))?,
            )
        }
        None => None,
    };
    Ok((kernel, initrd))
}

/// `device`, with the state of device section `index` of `from` restored into it when
/// restoring.
fn restore_into<P: Persist>(
    mut device: P,
    from: Option<&Snapshot>,
    index: u32,
) -> Result<P, Box<dyn Error>> {
    if let Some(snapshot) = from {
        let state = snapshot.read_device::<P>(index)?;
        device.restore_state(&state)?;
    }
    Ok(device)
}

/// The board's devices, built fresh (not yet restored or shared).
struct Board {
    serial: Serial<io::Stdout>,
    i8042: I8042,
    cmos: Cmos,
    pm: PmBlock,
}

impl Board {
    fn build() -> Result<Board, Box<dyn Error + Send + Sync>> {
        Ok(Board {
            serial: Serial::new(io::stdout())?,
            i8042: I8042::new()?,
            cmos: Cmos::new(),
            pm: PmBlock::new()?,
        })
    }

    /// Registers the serial port's interrupt and the PM block's SCI on `vm` as irqfds (the
    /// SCI on IRQ 9, kept out of the virtio devices' range).
    fn wire(&self, vm: &dyn vmkit::Vm) -> Result<(), vmkit::VmError> {
        vm.register_irqfd(self.serial.interrupt_evt(), COM1_GSI, None)?;
        vm.register_irqfd(self.pm.sci_evt(), u32::from(SCI_IRQ), None)
    }
}

/// The guest memory the virtio transports use.
type Memory = Arc<vmkit::GuestMemoryMmap>;

/// Puts a virtio device on the VM, restoring its transport's state from device section
/// `index` of `from` when restoring.
fn attach<D>(
    virtio: &mut VirtioMmioWiring<Memory>,
    vm: &dyn vmkit::Vm,
    bus: &mut Bus,
    device: D,
    notify: &[u16],
    from: Option<&Snapshot>,
    index: u32,
) -> Result<WiredDevice<Memory, D>, Box<dyn Error>>
where
    D: VirtioDevice<vmkit::GuestMemoryMmap> + Persist + Send + 'static,
{
    Ok(match from {
        None => virtio.attach(vm, bus, device, notify)?,
        Some(snapshot) => {
            let state = snapshot.read_device::<MmioTransport<Memory, D>>(index)?;
            virtio.attach_restored(vm, bus, device, notify, &state)?
        }
    })
}

/// `--save`: where, the SIGUSR2 catcher, and the MSRs to save.
struct Saving {
    dir: PathBuf,
    request: snap::SaveRequest,
    msrs: Vec<u32>,
}

/// The devices whose state a save writes.
struct Devices<'a> {
    serial: &'a Serial<io::Stdout>,
    i8042: &'a I8042,
    cmos: &'a Cmos,
    pm: &'a PmBlock,
    disk: Option<&'a MmioTransport<Memory, Block>>,
    card: Option<&'a MmioTransport<Memory, Net<vmkit_net::Tap>>>,
    /// `None` with `--pci` (which `--save` refuses).
    console: Option<&'a MmioTransport<Memory, Console<io::Stdout>>>,
}

/// Saves the running VM to `save.dir`: pauses every vCPU, stops the device threads (each
/// finishes what the guest had asked of it), then writes the vCPUs, VM-wide state (clock,
/// irqchip, PIT), memory, the machine's shape and each device's state. The vCPUs stay paused.
#[allow(clippy::too_many_arguments)]
fn save_vm(
    save: &Saving,
    running: &VmRunner,
    hypervisor: &dyn vmkit::Hypervisor,
    config: &VmConfig,
    vm: &dyn vmkit::Vm,
    devices: &Devices<'_>,
    workers: (&mut Option<QueueWorker>, &mut Option<NetWorker>),
    shape: &snap::Shape,
) -> Result<(), Box<dyn Error>> {
    running.pause_all()?;
    // A device's state is taken with nothing serving it.
    stop_workers(workers)?;
    let features = snapshot::Features::for_vm(config, hypervisor.capabilities());
    let vcpus = running.save_all(&save.msrs, features)?;
    snapshot::save(&save.dir, hypervisor, config, vm, &vcpus, |w| {
        write_devices(w, devices, shape)
    })?;
    Ok(())
}

/// Stops the disk's and the network card's threads, each finishing what the guest had asked.
/// Both are told first and joined after, so they wind down together (on a host with one
/// CPU, one after the other costs each its own wake-up and join).
fn stop_workers(
    workers: (&mut Option<QueueWorker>, &mut Option<NetWorker>),
) -> Result<(), Box<dyn Error>> {
    if let Some(worker) = workers.0.as_ref() {
        worker.request_stop()?;
    }
    if let Some(worker) = workers.1.as_ref() {
        worker.request_stop()?;
    }
    if let Some(worker) = workers.0.take() {
        worker.stop()?;
    }
    if let Some(worker) = workers.1.take() {
        worker.stop()?;
    }
    Ok(())
}

/// Writes the machine's shape and each device's state: a snapshot's device sections, and a
/// migration's.
fn write_devices<W: io::Write>(
    w: &mut snapshot::format::Writer<W>,
    devices: &Devices<'_>,
    shape: &snap::Shape,
) -> Result<(), snapshot::format::StateError> {
    w.write_section(snap::SHAPE, 0, snap::SHAPE_VERSION, shape)?;
    w.write_device(snap::SERIAL, devices.serial)?;
    w.write_device(snap::I8042, devices.i8042)?;
    w.write_device(snap::CMOS, devices.cmos)?;
    w.write_device(snap::PM, devices.pm)?;
    if let Some(disk) = devices.disk {
        w.write_device(snap::DISK, disk)?;
    }
    if let Some(card) = devices.card {
        w.write_device(snap::NET, card)?;
    }
    // Always there: --pci, which has no console transport here, is refused with both.
    if let Some(console) = devices.console {
        w.write_device(snap::CONSOLE, console)?;
    }
    Ok(())
}

/// Copies of the queue notifiers' eventfds, to start a device thread on them again.
fn clone_notifiers(
    notifiers: &[vmkit_machine::QueueNotifier],
) -> io::Result<Vec<vmkit_machine::QueueNotifier>> {
    notifiers
        .iter()
        .map(|n| {
            Ok(vmkit_machine::QueueNotifier {
                queue: n.queue,
                event: n.event.try_clone()?,
            })
        })
        .collect()
}

/// `--migrate-to`: what starts the disk's and the network card's threads again after a
/// failed migration stopped them (the transports and copies of their notifiers).
#[derive(Default)]
struct Restart {
    disk: Option<(Arc<DiskTransport>, Vec<vmkit_machine::QueueNotifier>)>,
    net: Option<(Arc<CardTransport>, QueueKicks)>,
}

/// The disk's transport.
type DiskTransport = MmioTransport<Memory, Block>;
/// The network card's.
type CardTransport = MmioTransport<Memory, Net<vmkit_net::Tap>>;

impl Restart {
    /// Starts each thread that is not running, as at boot.
    fn start(
        &self,
        options: &options::Options,
        workers: (&mut Option<QueueWorker>, &mut Option<NetWorker>),
    ) -> Result<(), Box<dyn Error>> {
        if let (None, Some((transport, notifiers))) = (&workers.0, &self.disk) {
            let mut worker_options = WorkerOptions::named("virtio-blk");
            if options.seccomp {
                worker_options = worker_options.seccomp(worker::blk_seccomp_rules().compile()?);
            }
            *workers.0 = Some(QueueWorker::start_with(
                transport.clone(),
                clone_notifiers(notifiers)?,
                worker_options,
                |err: &vmkit_machine::WorkerError| {
                    eprintln!("boot_linux: disk: {}", ErrorChain(err))
                },
            )?);
        }
        if let (None, Some((transport, kicks))) = (&workers.1, &self.net) {
            let mut worker_options = NetWorkerOptions::default();
            if options.seccomp {
                worker_options =
                    worker_options.seccomp(vmkit_net::worker::seccomp_rules().compile()?);
            }
            let kicks = QueueKicks {
                rx: kicks.rx.try_clone()?,
                tx: kicks.tx.try_clone()?,
            };
            *workers.1 = Some(NetWorker::start_with(
                transport.clone(),
                kicks,
                worker_options,
                |err| eprintln!("boot_linux: net: {}", ErrorChain(err)),
            )?);
        }
        Ok(())
    }
}

/// The PM block as the ACPI tables describe it: vmkit-devices' layout at its default base;
/// with `s3`, S3 is offered too.
fn pm_tables(s3: bool) -> linux::PmBlock {
    let base = PmBlock::DEFAULT_BASE;
    linux::PmBlock {
        pm1a_evt: base + PmBlock::PM1_EVT_OFFSET,
        pm1a_cnt: base + PmBlock::PM1_CNT_OFFSET,
        pm_tmr: base + PmBlock::PM_TMR_OFFSET,
        reset: base + PmBlock::RESET_OFFSET,
        reset_value: PmBlock::RESET_VALUE,
        sci: SCI_IRQ,
        s5_type: SleepState::S5.slp_typ(),
        s3_type: s3.then(|| SleepState::S3.slp_typ()),
    }
}

/// The main thread's seccomp rules once the VM runs: vmkit's (the runner's commands and
/// join, the VM's teardown) and boot_linux's own: waking and joining the signal thread at the
/// end (a socket pair: `sendto`) and stopping the device threads (eventfd writes, joins).
fn main_thread_rules(kind: vmkit::HypervisorKind) -> vmkit::seccomp::Rules {
    let mut rules = vmkit::seccomp::vmm_rules(kind);
    rules.allow(libc::SYS_sendto);
    rules
}

/// `--exit-stats`: how many exits each port and MMIO address caused, per vCPU.
struct ExitStats {
    counts: Vec<Mutex<BTreeMap<String, u64>>>,
}

impl ExitStats {
    fn new(vcpus: u32) -> Self {
        ExitStats {
            counts: (0..vcpus).map(|_| Mutex::default()).collect(),
        }
    }

    /// A handler that counts each exit, then passes it to `inner`.
    fn wrap(self: &Arc<Self>, inner: Arc<dyn ExitHandler>) -> Arc<dyn ExitHandler> {
        let stats = Arc::clone(self);
        runner::from_fn(move |id, exit| {
            let key = match &*exit {
                VcpuExit::IoIn { port, .. } => format!("pio in  {port:#06x}"),
                VcpuExit::IoOut { port, .. } => format!("pio out {port:#06x}"),
                VcpuExit::MmioRead { addr, .. } => format!("mmio rd {addr:#x}"),
                VcpuExit::MmioWrite { addr, .. } => format!("mmio wr {addr:#x}"),
                other => format!("{other:?}"),
            };
            if let Some(counts) = stats.counts.get(id as usize) {
                let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
                *counts.entry(key).or_insert(0) += 1;
            }
            inner.handle(id, exit)
        })
    }

    fn print(&self) {
        for (id, counts) in self.counts.iter().enumerate() {
            let counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
            for (exit, count) in counts.iter() {
                eprintln!("boot_linux: vCPU {id}: {count:>7} x {exit}");
            }
        }
    }
}

/// Describes a virtio-mmio device for the ACPI tables.
fn announce(window: MmioWindow, gsi: u32) -> Result<linux::VirtioMmioDevice, Box<dyn Error>> {
    Ok(linux::VirtioMmioDevice {
        base: u32::try_from(window.base)?,
        size: u32::try_from(window.size)?,
        irq: gsi,
    })
}
