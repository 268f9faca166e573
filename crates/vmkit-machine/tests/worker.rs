//! `QueueWorker` serving a real guest: the minimal kernel's virtio-blk
//! driver on a disk wired by `VirtioMmioWiring::attach` with queue 0's
//! notification on an ioeventfd. Every request reaches the worker (none
//! exits to the vCPU thread), the guest reads and writes the disk through
//! it, and `stop` reports what it served. Also: what `start` refuses.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_device::bus::PioAddress;
use vm_memory::GuestAddress;
use vmkit::runner::{self, ExitAction, ExitHandler, RunnerOptions, VcpuOutcome, VmRunner};
use vmkit::{Hypervisor, MemoryFlags, MemoryRegion, VmConfig};
use vmkit_boot::entry;
use vmkit_bus::Bus;
use vmkit_devices::{Serial, COM1, I8042, SERIAL_PORTS};
use vmkit_guests::minimal;
use vmkit_machine::resources::{GsiAllocator, MmioAllocator};
use vmkit_machine::virtio_mmio::{QueueNotifier, VirtioMmioWiring};
use vmkit_machine::worker::{
    self, QueueStats, QueueWorker, WorkerError, WorkerOptions, THREAD_NAME,
};
use vmkit_virtio::blk::{Block, BlockBackend, BlockOptions};
use vmkit_virtio::mmio::{MmioTransport, MMIO_REGION_SIZE};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

const DISK_SECTORS: u64 = 64;
/// A liveness bound: reaching it means the guest is stuck, not slow.
const GIVE_UP: Duration = Duration::from_secs(60);

fn hypervisor() -> Option<Box<dyn Hypervisor>> {
    match vmkit::open() {
        Ok(h) => Some(h),
        Err(err) => {
            eprintln!("SKIP: no hypervisor here: {err}");
            None
        }
    }
}

fn vendor(hv: &dyn Hypervisor) -> [u8; 12] {
    let leaf0 = hv
        .supported_cpuid()
        .into_iter()
        .find(|e| e.function == 0)
        .expect("CPUID leaf 0");
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
    vendor
}

/// A disk whose first sector starts with the driver's signature and whose
/// other bytes are 0xee, so a stray write anywhere shows.
fn disk() -> (std::fs::File, Vec<u8>) {
    let mut disk = TempFile::new().unwrap().into_file();
    let mut image = vec![0xeeu8; (DISK_SECTORS * 512) as usize];
    image[..8].copy_from_slice(minimal::BLK_SIGNATURE);
    disk.write_all(&image).unwrap();
    (disk, image)
}

/// How the test confines its threads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Confined {
    /// Not at all.
    No,
    /// The vCPU thread with the backend's vCPU filter, the worker with the
    /// virtio-blk filter.
    Yes,
    /// As `Yes`, and the disk's backend opens a socket on its first read,
    /// in the worker thread.
    ForbiddenRead,
}

/// The disk behind the device: the file, and a forbidden call if asked.
struct Disk {
    file: std::fs::File,
    forbidden: bool,
}

impl BlockBackend for Disk {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if self.forbidden {
            // SAFETY: socket takes plain integers; the descriptor is leaked.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        }
        BlockBackend::read_at(&mut self.file, buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        BlockBackend::write_at(&mut self.file, buf, offset)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        BlockBackend::flush(&mut self.file)
    }
}

#[test]
fn the_worker_serves_the_minimal_kernels_virtio_blk_driver() {
    serve_the_minimal_kernel(Confined::No);
}

/// The same run with every thread confined: the vCPU thread by its
/// backend's filter, the worker by `blk_seccomp_rules`. Filters are per
/// thread, so this process's other threads are not affected.
#[test]
fn the_minimal_kernel_runs_with_every_filter_on() {
    serve_the_minimal_kernel(Confined::Yes);
}

/// A forbidden call in the worker thread (the disk's backend opens a
/// socket) ends the process with SIGSYS and one line naming the thread and
/// the call. The confined run happens in a child process: this test binary
/// again, running only this test with `VMKIT_SECCOMP_CHILD` set.
#[test]
fn a_forbidden_call_in_the_worker_ends_the_process() {
    use std::os::unix::process::ExitStatusExt;
    const NAME: &str = "a_forbidden_call_in_the_worker_ends_the_process";
    if std::env::var_os("VMKIT_SECCOMP_CHILD").is_some() {
        serve_the_minimal_kernel(Confined::ForbiddenRead);
        return;
    }
    if hypervisor().is_none() {
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads", "1"])
        .env("VMKIT_SECCOMP_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.signal(), Some(libc::SIGSYS), "{stderr}");
    let line = format!(
        "vmkit-seccomp: thread blk-confined made a forbidden system call: socket ({}); the process ends",
        libc::SYS_socket
    );
    assert!(stderr.lines().any(|l| l == line), "{stderr}");
}

fn serve_the_minimal_kernel(confined: Confined) {
    let Some(hv) = hypervisor() else { return };
    // `attach` registers the interrupt as an irqfd: an in-kernel irqchip.
    // The driver polls with interrupts disabled, so the interrupt is never
    // taken.
    let vm = hv.create_vm(&VmConfig::default().irqchip(true)).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), 4 << 20, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let memory = vm.memory();
    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None).unwrap();

    let serial = Arc::new(Serial::new(Vec::new()).unwrap());
    let i8042 = Arc::new(I8042::new().unwrap());
    let mut bus = Bus::new();
    bus.register_pio(PioAddress(COM1), SERIAL_PORTS, serial.clone())
        .unwrap();
    bus.register_pio(PioAddress(I8042::BASE), I8042::PORTS, i8042.clone())
        .unwrap();
    // The driver looks for its device at a fixed address: the first window.
    let mut wiring = VirtioMmioWiring::new(
        Arc::new(memory.clone()),
        MmioAllocator::new(
            minimal::VIRTIO_MMIO_BASE,
            minimal::VIRTIO_MMIO_BASE + MMIO_REGION_SIZE,
        )
        .unwrap(),
        GsiAllocator::new(5, 23).unwrap(),
    );
    let (mut disk, image) = disk();
    let backend = Disk {
        file: disk.try_clone().unwrap(),
        forbidden: confined == Confined::ForbiddenRead,
    };
    let block = Block::with_backend(backend, DISK_SECTORS * 512, BlockOptions::default()).unwrap();
    let mut blk = wiring.attach(vm.as_ref(), &mut bus, block, &[0]).unwrap();
    assert_eq!(blk.window.base, minimal::VIRTIO_MMIO_BASE);
    let transport = blk.transport.clone();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&errors);
    let mut options = WorkerOptions::default();
    if confined != Confined::No {
        options = WorkerOptions::named("blk-confined")
            .seccomp(worker::blk_seccomp_rules().compile().unwrap());
    }
    let worker = QueueWorker::start_with(
        transport.clone(),
        std::mem::take(&mut blk.notifiers),
        options,
        move |err: &WorkerError| seen.lock().unwrap().push(err.to_string()),
    )
    .unwrap();
    let name = if confined == Confined::No {
        THREAD_NAME
    } else {
        "blk-confined"
    };
    assert_eq!(worker.name(), name);
    assert!(!worker.is_finished());

    let vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_cpuid(&hv.supported_cpuid()).unwrap();
    entry::configure_long_mode(vcpu.as_ref(), &memory, kernel.kernel_load.0).unwrap();
    let mut regs = vcpu.regs().unwrap();
    regs.rdx = minimal::ENTRY_FLAG_VIRTIO_BLK;
    vcpu.set_regs(&regs).unwrap();

    // The vCPU on its thread, its exits on the bus; the i8042's reset
    // command powers off.
    let handler = runner::from_fn(move |id, exit| match bus.handle(id, exit) {
        ExitAction::Continue if i8042.take_reset_request() => ExitAction::PowerOff,
        action => action,
    });
    let mut options = RunnerOptions::default().command_timeout(GIVE_UP);
    if confined != Confined::No {
        options = options.seccomp(hv.vcpu_seccomp_rules().compile().unwrap());
    }
    let running = VmRunner::start_with(vec![vcpu], handler, options).unwrap();
    let finished = running.join_timeout(GIVE_UP).unwrap();
    assert!(
        confined != Confined::ForbiddenRead,
        "the forbidden read did not end the process"
    );
    assert_eq!(
        finished[0].outcome.as_ref().unwrap(),
        &VcpuOutcome::PowerOff
    );

    // Nothing sits at the kernel's MMIO test address here: all-ones. The
    // console first: a driver's error line says which request went wrong.
    let output = String::from_utf8(serial.with_output(|out| out.clone())).unwrap();
    assert_eq!(
        output,
        minimal::expected_blk_serial(&vendor(hv.as_ref()), 0xffff_ffff)
    );

    // Read, write, flush, read back: four notifications, each served by
    // its own pass, none failed.
    let stats = worker.stop().unwrap();
    assert_eq!(
        stats.queues,
        vec![QueueStats {
            queue: 0,
            notifications: 4,
            passes: 4,
            errors: 0
        }]
    );
    assert!(errors.lock().unwrap().is_empty());
    assert_eq!(transport.invalid_accesses(), 0);
    assert!(transport.take_error().is_none());

    let mut after = Vec::new();
    disk.seek(SeekFrom::Start(0)).unwrap();
    disk.read_to_end(&mut after).unwrap();
    let start = (minimal::BLK_TEST_SECTOR * 512) as usize;
    let test_area = start..start + minimal::BLK_TEST_BYTES;
    for (i, byte) in after.iter().enumerate() {
        let expected = if test_area.contains(&i) {
            minimal::blk_pattern(i - start)
        } else {
            image[i]
        };
        assert_eq!(*byte, expected, "disk byte {i}");
    }
}

/// A transport over a disk, without a VM (for what `start` checks).
fn transport() -> Arc<MmioTransport<Arc<vm_memory::GuestMemoryMmap<()>>, Block<std::fs::File>>> {
    let memory =
        vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
    let block = Block::new(disk().0, BlockOptions::default()).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    Arc::new(MmioTransport::new(block, Arc::new(memory), irq).unwrap())
}

fn notifier(queue: u16) -> QueueNotifier {
    QueueNotifier {
        queue,
        event: EventFd::new(EFD_NONBLOCK).unwrap(),
    }
}

#[test]
fn start_refuses_no_queues_unknown_queues_and_duplicates() {
    let t = transport();
    let err = QueueWorker::start(t.clone(), vec![], |_| {}).unwrap_err();
    assert!(matches!(err, WorkerError::NoQueues), "{err:?}");
    // virtio-blk has one queue.
    let err = QueueWorker::start(t.clone(), vec![notifier(1)], |_| {}).unwrap_err();
    assert!(
        matches!(err, WorkerError::NoSuchQueue { queue: 1, count: 1 }),
        "{err:?}"
    );
    let err = QueueWorker::start(t, vec![notifier(0), notifier(0)], |_| {}).unwrap_err();
    assert!(
        matches!(err, WorkerError::DuplicateQueue { queue: 0 }),
        "{err:?}"
    );
}

#[test]
fn stop_serves_the_notifications_signalled_before_it() {
    // Before the driver is live a pass does nothing, but it is still a pass:
    // the notifications signalled before `stop` are all read.
    let t = transport();
    let n = notifier(0);
    let kick = n.event.try_clone().unwrap();
    let worker = QueueWorker::start_named("blk-test", t, vec![n], |_| {}).unwrap();
    assert_eq!(worker.name(), "blk-test");
    kick.write(2).unwrap();
    kick.write(1).unwrap();
    let stats = worker.stop().unwrap();
    assert_eq!(stats.notifications(0), 3);
    assert_eq!(stats.errors(), 0);
    assert!((1..=2).contains(&stats.queues[0].passes), "{stats:?}");

    // Dropping a worker stops it too (the test would hang otherwise).
    drop(QueueWorker::start(transport(), vec![notifier(0)], |_| {}).unwrap());
}

#[test]
fn requested_stops_are_joined_with_every_notification_served() {
    // Two workers told first, joined after (as a VMM stops its devices together): each
    // serves what was signalled before it was told.
    let (n0, n1) = (notifier(0), notifier(0));
    let (kick0, kick1) = (n0.event.try_clone().unwrap(), n1.event.try_clone().unwrap());
    let first = QueueWorker::start_named("first", transport(), vec![n0], |_| {}).unwrap();
    let second = QueueWorker::start_named("second", transport(), vec![n1], |_| {}).unwrap();
    kick0.write(2).unwrap();
    kick1.write(5).unwrap();
    first.request_stop().unwrap();
    second.request_stop().unwrap();
    // Asking again changes nothing.
    first.request_stop().unwrap();
    assert_eq!(first.stop().unwrap().notifications(0), 2);
    assert_eq!(second.stop().unwrap().notifications(0), 5);
}
