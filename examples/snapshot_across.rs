//! Moves the counting guest (serial port and virtio-blk) between processes, and between
//! backends, through snapshot directories, checking that the count goes on each time.
//!
//! ```text
//! cargo run --example snapshot_across                       # save, then resume in a child process
//! cargo run --example snapshot_across -- save DIR [--at N]  # boot, count to N (10), save to DIR
//! cargo run --example snapshot_across -- resume DIR [--eager] [--save-at N OUT]
//! ```
//!
//! The VM is the one both KVM and Xen can save: no in-kernel irqchip or PIT (the guest polls
//! its devices), 4 MiB of RAM, a CPUID reduced to the x86-64 baseline (leaves 0, 1 and
//! 0x80000000-0x80000008, feature bits of a `qemu64` CPU), and the MSRs every backend keeps
//! ([`vmkit::snapshot::PORTABLE_MSRS`]). So a directory saved on one backend resumes on the
//! other (`vmkit::snapshot::restore` checks what crosses first).
//!
//! A directory holds `snap/` (the snapshot), `disk.img` (the disk as it was at the
//! snapshot) and `count` (the last count printed before it). `resume` checks that the first
//! count it sees is the next one and that none is missing or repeated; without `--save-at`
//! it runs the guest to its end and checks that the disk holds the last count; with
//! `--save-at N OUT` it pauses the guest after `count N` and saves it to `OUT`. It exits
//! non-zero on any failure.

use std::error::Error;
use std::io::{self, Cursor, Write};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_memory::GuestAddress;
use vmkit::arch::x86_64::CpuidEntry;
use vmkit::runner::{self, ExitAction, ExitHandler, RunnerOptions, VcpuOutcome, VmRunner};
use vmkit::snapshot::{self, MemoryRestore};
use vmkit::{ErrorChain, EventFd, Hypervisor, MemoryFlags, MemoryRegion, Vcpu, VcpuExit, VmConfig};
use vmkit_boot::entry;
use vmkit_bus::Bus;
use vmkit_devices::{Persist, Serial, COM1, I8042, SERIAL_PORTS};
use vmkit_guests::minimal;
use vmkit_virtio::blk::{Block, BlockOptions};
use vmkit_virtio::mmio::{MmioTransport, MMIO_REGION_SIZE};

type BoxError = Box<dyn Error>;

const RAM_SIZE: usize = 4 << 20;
const SERIAL: u32 = 0;
const RESET: u32 = 1;
const DISK: u32 = 2;
/// Where `save` stops by default.
const SAVE_AT: u64 = 10;
/// Bound on waiting for the guest.
const GIVE_UP: Duration = Duration::from_secs(300);

type Disk = MmioTransport<Arc<vmkit::GuestMemoryMmap>, Block>;
type Uart = Serial<Tee>;

/// Serial output to stdout, also kept for the checks.
#[derive(Clone, Default)]
struct Tee(Arc<Mutex<Vec<u8>>>);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        io::stdout().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

impl Tee {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        [] => demo(),
        ["save", dir] => save(Path::new(dir), SAVE_AT),
        ["save", dir, "--at", n] => parse(n).and_then(|n| save(Path::new(dir), n)),
        ["resume", dir, rest @ ..] => resume_args(Path::new(dir), rest),
        _ => Err(
            "usage: snapshot_across [save DIR [--at N] | resume DIR [--eager] \
                  [--save-at N OUT]]"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("snapshot_across: {}", ErrorChain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn parse(n: &str) -> Result<u64, BoxError> {
    match n.parse() {
        Ok(n) if (1..minimal::COUNT_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!("bad count {n:?}: 1..{} wanted", minimal::COUNT_LIMIT).into()),
    }
}

fn resume_args(dir: &Path, rest: &[&str]) -> Result<(), BoxError> {
    let (mode, rest) = match rest {
        ["--eager", rest @ ..] => (MemoryRestore::Eager, rest),
        rest => (MemoryRestore::Lazy, rest),
    };
    match rest {
        [] => resume(dir, mode, None),
        ["--save-at", n, out] => resume(dir, mode, Some((parse(n)?, Path::new(out)))),
        _ => Err(format!("resume: unexpected arguments {rest:?}").into()),
    }
}

/// Saves, then resumes in a child process, on this host's backend, lazily and eagerly.
fn demo() -> Result<(), BoxError> {
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-snapshot-across-")?;
    save(dir.as_path(), SAVE_AT)?;
    let disk = std::fs::read(dir.as_path().join("disk.img"))?;
    for mode in [None, Some("--eager")] {
        // Each resume starts from the disk as it was at the snapshot.
        std::fs::write(dir.as_path().join("disk.img"), &disk)?;
        let status = Command::new(std::env::current_exe()?)
            .arg("resume")
            .arg(dir.as_path())
            .args(mode)
            .status()?;
        if !status.success() {
            return Err(format!("the resuming process ({mode:?}) failed: {status}").into());
        }
    }
    Ok(())
}

/// The x86-64 baseline of `supported`: leaves 0, 1 and 0x80000000-0x80000008 only, the
/// maximum leaves lowered to match, feature bits limited to a `qemu64` CPU's.
fn baseline_cpuid(supported: &[CpuidEntry]) -> Vec<CpuidEntry> {
    // FPU DE PSE TSC MSR PAE MCE CX8 APIC SEP MTRR PGE MCA CMOV PAT PSE36 CLFSH MMX FXSR SSE SSE2.
    const LEAF1_EDX: u32 = 0x078b_fbfd;
    // SSE3, CX16, hypervisor.
    const LEAF1_ECX: u32 = 0x8000_2001;
    // SYSCALL, NX, LM.
    const EXT1_EDX: u32 = (1 << 11) | (1 << 20) | (1 << 29);
    // LAHF/SAHF in long mode.
    const EXT1_ECX: u32 = 1;
    supported
        .iter()
        .filter(|e| matches!(e.function, 0 | 1 | 0x8000_0000..=0x8000_0008))
        .map(|e| {
            let mut e = *e;
            match e.function {
                0 => e.eax = e.eax.min(1),
                1 => {
                    e.ecx &= LEAF1_ECX;
                    e.edx &= LEAF1_EDX;
                }
                0x8000_0000 => e.eax = e.eax.min(0x8000_0008),
                0x8000_0001 => {
                    e.ecx &= EXT1_ECX;
                    e.edx &= EXT1_EDX;
                }
                _ => {}
            }
            e
        })
        .collect()
}

fn open_disk(path: &Path) -> Result<Block, BoxError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    Ok(Block::new(file, BlockOptions::default())?)
}

fn bus(serial: Arc<Uart>, i8042: Arc<I8042>, disk: Arc<Disk>) -> Result<Bus, BoxError> {
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

/// Runs the vCPU on its own thread; the i8042's reset powers the guest off. With `until`,
/// the vCPU pauses once `count N` has been printed, and the channel says so.
fn start(
    vcpu: Box<dyn Vcpu>,
    bus: Bus,
    i8042: Arc<I8042>,
    tee: Tee,
    until: Option<u64>,
) -> Result<(VmRunner, Receiver<()>), BoxError> {
    let (reached, at_line) = mpsc::channel();
    let line = until.map(|n| format!("{}\n", minimal::count_line(n)));
    let handler = runner::from_fn(move |id, exit| {
        let newline =
            matches!(exit, VcpuExit::IoOut { port: COM1, data, .. } if data.contains(&b'\n'));
        match bus.handle(id, exit) {
            ExitAction::Continue if i8042.take_reset_request() => ExitAction::PowerOff,
            ExitAction::Continue
                if newline && line.as_ref().is_some_and(|l| tee.text().ends_with(l)) =>
            {
                let _ = reached.send(());
                ExitAction::Pause
            }
            action => action,
        }
    });
    let options = RunnerOptions::default().command_timeout(Duration::from_secs(60));
    Ok((VmRunner::start_with(vec![vcpu], handler, options)?, at_line))
}

/// Waits (bounded) until the vCPU paused itself at its line.
fn wait_paused(running: &VmRunner, at_line: &Receiver<()>) -> Result<(), BoxError> {
    match at_line.recv_timeout(GIVE_UP) {
        Ok(()) => Ok(()),
        Err(_) if running.is_stopping() => Err("the guest stopped before the save point".into()),
        Err(_) => Err(format!("the guest did not reach the save point in {GIVE_UP:?}").into()),
    }
}

fn finish(running: VmRunner) -> Result<(), BoxError> {
    for vcpu in running.join_timeout(GIVE_UP)? {
        match vcpu.outcome? {
            VcpuOutcome::PowerOff | VcpuOutcome::Stopped => {}
            other => return Err(format!("vCPU {} ended: {other:?}", vcpu.id).into()),
        }
    }
    Ok(())
}

/// Saves the paused VM to `out`: the snapshot, the disk as it is, the last count.
#[allow(clippy::too_many_arguments)]
fn save_to(
    out: &Path,
    hv: &dyn Hypervisor,
    config: &VmConfig,
    vm: &dyn vmkit::Vm,
    running: &VmRunner,
    devices: (&Uart, &I8042, &Disk),
    disk_path: &Path,
    count: u64,
    given_cpuid: Option<&[CpuidEntry]>,
) -> Result<(), BoxError> {
    std::fs::create_dir_all(out)?;
    let msrs = snapshot::PORTABLE_MSRS;
    let features = snapshot::Features::for_vm(config, hv.capabilities());
    let mut vcpus = running.save_all(&msrs, features)?;
    // The table this process gave the guest: a nested KVM (as on the CI host) reports more
    // feature bits through KVM_GET_CPUID2 than it supports, which a restore on another
    // backend would then (rightly) refuse.
    if let Some(cpuid) = given_cpuid {
        for vcpu in &mut vcpus {
            vcpu.cpuid = cpuid.to_vec();
        }
    }
    let (serial, i8042, disk) = devices;
    snapshot::save(&out.join("snap"), hv, config, vm, &vcpus, |w| {
        w.write_device(SERIAL, serial)?;
        w.write_device(RESET, i8042)?;
        w.write_device(DISK, disk)
    })?;
    // The disk as the guest left it at the pause (no request in flight: the vCPU is out).
    if disk_path != out.join("disk.img") {
        std::fs::copy(disk_path, out.join("disk.img"))?;
    }
    std::fs::write(out.join("count"), format!("{count}\n"))?;
    eprintln!(
        "snapshot_across: saved on {} at count {count} to {}",
        hv.kind(),
        out.display()
    );
    Ok(())
}

fn save(dir: &Path, at: u64) -> Result<(), BoxError> {
    std::fs::create_dir_all(dir)?;
    let disk_path = dir.join("disk.img");
    let mut image = vec![0u8; 64 * 512];
    image[..8].copy_from_slice(minimal::BLK_SIGNATURE);
    std::fs::write(&disk_path, image)?;

    let hv = vmkit::open()?;
    let config = VmConfig::default();
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
    let cpuid = baseline_cpuid(&hv.supported_cpuid());
    vcpu.set_cpuid(&cpuid)?;
    entry::configure_long_mode(vcpu.as_ref(), &memory, kernel.kernel_load.0)?;
    let mut regs = vcpu.regs()?;
    regs.rdx = minimal::ENTRY_FLAG_COUNT | minimal::ENTRY_FLAG_VIRTIO_BLK;
    vcpu.set_regs(&regs)?;

    let tee = Tee::default();
    let serial = Arc::new(Serial::new(tee.clone())?);
    let i8042 = Arc::new(I8042::new()?);
    let disk = Arc::new(MmioTransport::new(
        open_disk(&disk_path)?,
        Arc::new(memory),
        EventFd::new(0)?,
    )?);
    let bus = bus(serial.clone(), i8042.clone(), disk.clone())?;
    let (running, at_line) = start(vcpu, bus, i8042.clone(), tee.clone(), Some(at))?;
    let paused = wait_paused(&running, &at_line).and_then(|()| {
        let seen = minimal::check_count_serial(&tee.text())?;
        if seen != (1, at) {
            return Err(format!("counted {seen:?} before the save, (1, {at}) expected").into());
        }
        save_to(
            dir,
            hv.as_ref(),
            &config,
            vm.as_ref(),
            &running,
            (&serial, &i8042, &disk),
            &disk_path,
            at,
            Some(&cpuid),
        )
    });
    running.stop_all();
    let finished = finish(running);
    paused?;
    finished
}

fn resume(dir: &Path, mode: MemoryRestore, save_at: Option<(u64, &Path)>) -> Result<(), BoxError> {
    let from: u64 = std::fs::read_to_string(dir.join("count"))?
        .trim()
        .parse()
        .map_err(|err| format!("{}: {err}", dir.join("count").display()))?;
    let hv = vmkit::open()?;
    let snap = dir.join("snap");
    let restored = snapshot::restore(&snap, hv.as_ref(), mode)?;
    eprintln!(
        "snapshot_across: restored {} ({mode:?}) on {}",
        snap.display(),
        hv.kind()
    );
    let tee = Tee::default();
    let serial_state = restored.snapshot.read_device::<Uart>(SERIAL)?;
    let reset_state = restored.snapshot.read_device::<I8042>(RESET)?;
    let disk_state = restored.snapshot.read_device::<Disk>(DISK)?;
    let disk_path = dir.join("disk.img");
    let memory = Arc::new(restored.vm.memory());
    let mut disk = MmioTransport::new(open_disk(&disk_path)?, memory, EventFd::new(0)?)?;
    disk.restore_state(&disk_state)?;
    disk.resume()?;
    let mut serial = Serial::new(tee.clone())?;
    serial.restore_state(&serial_state)?;
    let mut i8042 = I8042::new()?;
    i8042.restore_state(&reset_state)?;
    let (serial, i8042, disk) = (Arc::new(serial), Arc::new(i8042), Arc::new(disk));
    let bus = bus(serial.clone(), i8042.clone(), disk.clone())?;
    let mut vcpus = restored.vcpus;
    let vcpu = vcpus.pop().ok_or("the snapshot has no vCPU")?;
    let until = save_at.map(|(n, _)| n);
    let (running, at_line) = start(vcpu, bus, i8042.clone(), tee.clone(), until)?;
    let last = match save_at {
        Some((at, out)) => {
            let saved = wait_paused(&running, &at_line).and_then(|()| {
                save_to(
                    out,
                    hv.as_ref(),
                    &restored.config,
                    restored.vm.as_ref(),
                    &running,
                    (&serial, &i8042, &disk),
                    &disk_path,
                    at,
                    None,
                )
            });
            running.stop_all();
            finish(running)?;
            saved?;
            at
        }
        None => {
            finish(running)?;
            // The disk kept working: the last count is on it.
            let image = std::fs::read(&disk_path)?;
            let at = minimal::COUNT_SECTOR as usize * 512;
            if image.get(at..at + 512)
                != Some(&minimal::count_sector_bytes(minimal::COUNT_LIMIT)[..])
            {
                return Err(format!(
                    "{}: sector {} does not hold the last count",
                    disk_path.display(),
                    minimal::COUNT_SECTOR
                )
                .into());
            }
            minimal::COUNT_LIMIT
        }
    };
    let seen = minimal::check_count_serial(&tee.text())?;
    if seen != (from + 1, last) {
        return Err(format!(
            "after the restore the guest counted {seen:?}, ({}, {last}) expected",
            from + 1
        )
        .into());
    }
    eprintln!(
        "snapshot_across: the count went on from {} to {last} on {}",
        from + 1,
        hv.kind()
    );
    Ok(())
}
