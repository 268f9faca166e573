//! vCPU and VM state moves to a fresh VM: the minimal kernel counts, the host stops it
//! mid-count, captures every vCPU register set, the interrupt controllers, the PIT, the clock
//! and guest memory, builds a new VM from them, and the count goes on where it was.

use std::io::Cursor;
use std::sync::Arc;

use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_memory::{Bytes, GuestAddress};
use vmkit::arch::x86_64::msr_index;
use vmkit::runner::{self, ExitAction, ExitHandler, VmRunner};
use vmkit::snapshot::{self, Features};
use vmkit::{EventFd, Hypervisor, MemoryFlags, MemoryRegion, Vcpu, Vm, VmConfig};
use vmkit_boot::entry;
use vmkit_bus::Bus;
use vmkit_devices::{Persist, Serial, COM1, I8042, SERIAL_PORTS};
use vmkit_guests::minimal;
use vmkit_virtio::blk::{Block, BlockOptions};
use vmkit_virtio::mmio::{MmioTransport, MMIO_REGION_SIZE};

const RAM_SIZE: usize = 4 << 20;

/// The virtio-blk disk on virtio-mmio, as the tests wire it.
type Disk = MmioTransport<Arc<vmkit::GuestMemoryMmap>, Block>;

struct Machine {
    vm: Box<dyn Vm>,
    /// Away on its runner thread during `run`.
    vcpu: Option<Box<dyn Vcpu>>,
    serial: Arc<Serial<Vec<u8>>>,
    i8042: Arc<I8042>,
    disk: Option<Arc<Disk>>,
    bus: Arc<Bus>,
}

fn machine(hv: &dyn Hypervisor, config: &VmConfig) -> Machine {
    machine_with(hv, config, MemoryFlags::empty())
}

fn machine_with(hv: &dyn Hypervisor, config: &VmConfig, ram_flags: MemoryFlags) -> Machine {
    let vm = hv.create_vm(config).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, ram_flags).unwrap();
    vm.add_memory_region(ram).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    Machine::around(vm, vcpu)
}

impl Machine {
    /// Serial and i8042 on a bus, around a VM and its vCPU.
    fn around(vm: Box<dyn Vm>, vcpu: Box<dyn Vcpu>) -> Machine {
        let serial = Arc::new(Serial::new(Vec::new()).unwrap());
        let i8042 = Arc::new(I8042::new().unwrap());
        Machine::with_devices(vm, vcpu, serial, i8042, None)
    }

    /// The given devices on a bus, around a VM and its vCPU.
    fn with_devices(
        vm: Box<dyn Vm>,
        vcpu: Box<dyn Vcpu>,
        serial: Arc<Serial<Vec<u8>>>,
        i8042: Arc<I8042>,
        disk: Option<Arc<Disk>>,
    ) -> Machine {
        let mut bus = Bus::new();
        if let Some(disk) = &disk {
            bus.register_mmio(
                MmioAddress(minimal::VIRTIO_MMIO_BASE),
                MMIO_REGION_SIZE,
                disk.clone(),
            )
            .unwrap();
        }
        bus.register_pio(PioAddress(COM1), SERIAL_PORTS, serial.clone())
            .unwrap();
        bus.register_pio(PioAddress(I8042::BASE), I8042::PORTS, i8042.clone())
            .unwrap();
        Machine {
            vm,
            vcpu: Some(vcpu),
            serial,
            i8042,
            disk,
            bus: Arc::new(bus),
        }
    }

    fn output(&self) -> String {
        output(&self.serial)
    }

    /// Runs the vCPU on a `VmRunner` thread until `until` returns true after an exit (the
    /// vCPU pauses there), or the guest powers off; then takes the vCPU back.
    fn run(&mut self, until: impl Fn(&str) -> bool + Send + Sync + 'static) {
        let give_up = crate::common::guest::GIVE_UP;
        let vcpu = self.vcpu.take().expect("the vCPU is here between runs");
        let (bus, i8042, serial) = (self.bus.clone(), self.i8042.clone(), self.serial.clone());
        let (reached, at_point) = std::sync::mpsc::channel();
        let handler = runner::from_fn(move |id, exit| match bus.handle(id, exit) {
            ExitAction::Continue if i8042.take_reset_request() => ExitAction::PowerOff,
            ExitAction::Continue if until(&output(&serial)) => {
                let _ = reached.send(());
                ExitAction::Pause
            }
            action => action,
        });
        let options = crate::common::runner_options().command_timeout(give_up);
        let running = VmRunner::start_with(vec![vcpu], handler, options).unwrap();
        let start = std::time::Instant::now();
        while at_point
            .recv_timeout(std::time::Duration::from_millis(10))
            .is_err()
            && !running.is_stopping()
        {
            assert!(start.elapsed() < give_up, "{}", self.output());
        }
        running.stop_all();
        let finished = running.join_timeout(give_up).unwrap().pop().unwrap();
        finished.outcome.unwrap();
        self.vcpu = finished.vcpu;
    }

    /// The vCPU, between runs.
    fn vcpu(&self) -> &dyn Vcpu {
        self.vcpu.as_deref().expect("the vCPU is here between runs")
    }
}

fn output(serial: &Serial<Vec<u8>>) -> String {
    String::from_utf8(serial.with_output(|out| out.clone())).unwrap()
}

fn state_moves(hv: &dyn Hypervisor, config: VmConfig) {
    let features = Features::for_vm(&config, hv.capabilities());
    let mut first = machine(hv, &config);
    let memory = first.vm.memory();
    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None).unwrap();
    first.vcpu().set_cpuid(&hv.supported_cpuid()).unwrap();
    entry::configure_long_mode(first.vcpu(), &memory, kernel.kernel_load.0).unwrap();
    let mut regs = first.vcpu().regs().unwrap();
    regs.rdx = minimal::ENTRY_FLAG_COUNT;
    first.vcpu().set_regs(&regs).unwrap();

    // Stop right after the guest printed "count 10" and a few bytes more, mid-line.
    first.run(|out| out.contains(&format!("{}\nco", minimal::count_line(10))));
    let msrs = snapshot::readable_msrs(first.vcpu(), &hv.msr_index_list());
    let vcpu_state = snapshot::save_vcpu(first.vcpu(), &msrs, features).unwrap();
    let vm_state = snapshot::save_vm(first.vm.as_ref(), features).unwrap();
    let mut ram = vec![0u8; RAM_SIZE];
    memory.read_slice(&mut ram, GuestAddress(0)).unwrap();
    let serial_before = first.output();
    drop(first);

    // A new VM, new devices, the saved state; the serial port's own state is the device
    // crates' business and is not under test here, so the new port starts fresh.
    let mut second = machine(hv, &config);
    second
        .vm
        .memory()
        .write_slice(&ram, GuestAddress(0))
        .unwrap();
    snapshot::restore_vm(second.vm.as_ref(), &vm_state).unwrap();
    snapshot::restore_vcpu(second.vcpu(), &vcpu_state).unwrap();
    // The restored vCPU reads back as saved, but for the MSRs that count time: the TSC, and
    // two Hyper-V MSRs KVM lists on AMD, the vCPU's run time (0x4000_0010) and the reference
    // time counter (0x4000_0020).
    let without_counters = |mut state: snapshot::VcpuState| {
        const COUNTERS: [u32; 3] = [msr_index::TSC, 0x4000_0010, 0x4000_0020];
        state.msrs.retain(|m| !COUNTERS.contains(&m.index));
        state
    };
    let reread = snapshot::save_vcpu(second.vcpu(), &msrs, features).unwrap();
    let (reread, saved) = (
        without_counters(reread),
        without_counters(vcpu_state.clone()),
    );
    assert!(
        reread == saved,
        "the restored vCPU does not read back as saved: {}",
        differences(&saved, &reread)
    );
    second.run(|_| false);

    let (first_n, last_n) = minimal::check_count_serial(&serial_before).unwrap();
    let (resumed, end) = minimal::check_count_serial(&second.output()).unwrap();
    assert_eq!((first_n, last_n), (1, 10));
    assert_eq!(
        resumed,
        11,
        "the count continues, it does not restart:\n{}",
        second.output()
    );
    assert_eq!(end, minimal::COUNT_LIMIT);
    minimal::check_count_serial(&(serial_before + &second.output())).unwrap();
}

pub fn vcpu_and_memory_move_to_a_fresh_vm(hv: &dyn Hypervisor) {
    state_moves(hv, VmConfig::default());
}

pub fn with_irqchip_and_pit_state_too(hv: &dyn Hypervisor) {
    state_moves(hv, VmConfig::default().irqchip(true).pit(true));
}

/// The environment variable that makes the conformance binary act as the restoring process.
pub const RESTORE_DIR_ENV: &str = "VMKIT_CONFORMANCE_RESTORE_DIR";
/// `lazy` or `eager`, for the restoring process.
pub const RESTORE_MODE_ENV: &str = "VMKIT_CONFORMANCE_RESTORE_MODE";

/// The restoring process: rebuilds the VM from the snapshot directory, runs the guest to its
/// power-off and prints what it wrote on the serial port.
/// The disk file the restoring process reopens.
pub const DISK_ENV: &str = "VMKIT_CONFORMANCE_DISK";

/// Device sections: the serial port, the i8042 and the disk's transport.
const SERIAL_SECTION: u32 = 0;
const I8042_SECTION: u32 = 1;
const DISK_SECTION: u32 = 2;

/// The restoring process: rebuilds the VM and its devices from the snapshot directory, runs
/// the guest to its power-off and prints what it wrote on the serial port after the restore.
pub fn restore_child(dir: &str) {
    let hv = vmkit::open().unwrap();
    let mode = match std::env::var(RESTORE_MODE_ENV).as_deref() {
        Ok("eager") => snapshot::MemoryRestore::Eager,
        _ => snapshot::MemoryRestore::Lazy,
    };
    let restored = snapshot::restore(std::path::Path::new(dir), hv.as_ref(), mode).unwrap();
    let mut serial = Serial::new(Vec::new()).unwrap();
    let serial_state = restored
        .snapshot
        .read_device::<Serial<Vec<u8>>>(SERIAL_SECTION);
    serial.restore_state(&serial_state.unwrap()).unwrap();
    let mut i8042 = I8042::new().unwrap();
    let i8042_state = restored.snapshot.read_device::<I8042>(I8042_SECTION);
    i8042.restore_state(&i8042_state.unwrap()).unwrap();
    let disk_state = restored.snapshot.read_device::<Disk>(DISK_SECTION).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(std::env::var(DISK_ENV).unwrap())
        .unwrap();
    let block = Block::new(file, BlockOptions::default()).unwrap();
    let memory = Arc::new(restored.vm.memory());
    let mut disk = MmioTransport::new(block, memory, EventFd::new(0).unwrap()).unwrap();
    disk.restore_state(&disk_state).unwrap();
    disk.resume().unwrap();
    let mut vcpus = restored.vcpus;
    let mut machine = Machine::with_devices(
        restored.vm,
        vcpus.remove(0),
        Arc::new(serial),
        Arc::new(i8042),
        Some(Arc::new(disk)),
    );
    machine.run(|_| false);
    print!("{}", machine.output());
}

pub fn continues_in_a_new_process(hv: &dyn Hypervisor) {
    continues_in_a_new_process_with(hv, VmConfig::default().irqchip(true).pit(true), false);
}

/// The same without an in-kernel irqchip or PIT (the counting guest polls its devices): the
/// configuration both KVM and Xen (a PVH domain without emulated interrupt controllers) save.
pub fn continues_in_a_new_process_without_irqchip(hv: &dyn Hypervisor) {
    continues_in_a_new_process_with(hv, VmConfig::default(), false);
}

/// A snapshot whose state file names the other backend (KVM for Xen, Xen for KVM) goes
/// through the cross-backend check, against what the VM used rather than what its host
/// offered: restored on this host it counts on; with an MSR and a CPUID feature bit this host
/// lacks in its vCPU section it is refused, listing both, before anything is created.
pub fn a_snapshot_of_the_other_backend_restores(hv: &dyn Hypervisor) {
    continues_in_a_new_process_with(hv, VmConfig::default(), true);
}

fn backend_of(hv: &dyn Hypervisor) -> snapshot::format::Backend {
    if hv.kind() == vmkit::HypervisorKind::Xen {
        snapshot::format::Backend::Xen
    } else {
        snapshot::format::Backend::Kvm
    }
}

/// Rewrites the state file in `snap`: as written by `backend`, each section's payload passed
/// through `edit` (its tag and index, the payload; `None` keeps it).
fn rewrite_state(
    snap: &std::path::Path,
    backend: snapshot::format::Backend,
    mut edit: impl FnMut(snapshot::format::SectionTag, u32, &[u8]) -> Option<Vec<u8>>,
) {
    let path = snap.join(snapshot::STATE_FILE);
    let bytes = std::fs::read(&path).unwrap();
    let original = [
        snapshot::format::Backend::Kvm,
        snapshot::format::Backend::Xen,
    ]
    .into_iter()
    .find_map(|backend| {
        snapshot::format::Snapshot::from_bytes(
            &bytes,
            snapshot::format::Expected {
                arch: snapshot::format::Arch::X86_64,
                backend,
            },
        )
        .ok()
    })
    .unwrap();
    let header = original.header().clone();
    let mut file = std::fs::File::create(&path).unwrap();
    let mut writer =
        snapshot::format::Writer::new(&mut file, header.arch, backend, header.capabilities);
    writer.set_snapshot_id(header.snapshot_id);
    writer.set_flags(header.flags).unwrap();
    for section in original.iter() {
        let h = section.header();
        let payload = edit(h.tag, h.index, section.payload());
        writer
            .write_raw_section(
                h.tag,
                h.index,
                h.version,
                payload.as_deref().unwrap_or(section.payload()),
            )
            .unwrap();
    }
    writer.finish().unwrap();
}

fn continues_in_a_new_process_with(hv: &dyn Hypervisor, config: VmConfig, other_backend: bool) {
    let vm = hv.create_vm(&config).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let memory = vm.memory();

    // A disk with the driver's signature; the counting guest writes each count to a sector.
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-snapshot-").unwrap();
    let disk_path = dir.as_path().join("disk.img");
    let mut image = vec![0u8; 64 * 512];
    image[..8].copy_from_slice(minimal::BLK_SIGNATURE);
    std::fs::write(&disk_path, &image).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk_path)
        .unwrap();
    let block = Block::new(file, BlockOptions::default()).unwrap();
    let disk =
        MmioTransport::new(block, Arc::new(memory.clone()), EventFd::new(0).unwrap()).unwrap();
    let serial = Arc::new(Serial::new(Vec::new()).unwrap());
    let i8042 = Arc::new(I8042::new().unwrap());
    let mut first = Machine::with_devices(vm, vcpu, serial, i8042, Some(Arc::new(disk)));

    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None).unwrap();
    first.vcpu().set_cpuid(&hv.supported_cpuid()).unwrap();
    entry::configure_long_mode(first.vcpu(), &memory, kernel.kernel_load.0).unwrap();
    let mut regs = first.vcpu().regs().unwrap();
    regs.rdx = minimal::ENTRY_FLAG_COUNT | minimal::ENTRY_FLAG_VIRTIO_BLK;
    first.vcpu().set_regs(&regs).unwrap();
    first.run(|out| out.contains(&format!("{}\n", minimal::count_line(10))));

    let snap = dir.as_path().join("snap");
    let msrs = snapshot::readable_msrs(first.vcpu(), &hv.msr_index_list());
    let features = Features::for_vm(&config, hv.capabilities());
    let vcpu_state = snapshot::save_vcpu(first.vcpu(), &msrs, features).unwrap();
    let disk = first.disk.clone().unwrap();
    snapshot::save(
        &snap,
        hv,
        &config,
        first.vm.as_ref(),
        &[vcpu_state],
        |devices| {
            devices.write_device(SERIAL_SECTION, first.serial.as_ref())?;
            devices.write_device(I8042_SECTION, first.i8042.as_ref())?;
            devices.write_device(DISK_SECTION, disk.as_ref())
        },
    )
    .unwrap();
    let before = first.output();
    assert_eq!(minimal::check_count_serial(&before).unwrap(), (1, 10));
    drop(first);
    let other = match backend_of(hv) {
        snapshot::format::Backend::Kvm => snapshot::format::Backend::Xen,
        _ => snapshot::format::Backend::Kvm,
    };
    if other_backend {
        // The vCPU section carries the CPUID the VMM gave: a nested KVM (as on the CI host)
        // reports more feature bits through KVM_GET_CPUID2 than it supports, which the
        // cross-backend check, held to the vCPU's table, would rightly refuse.
        let given = hv.supported_cpuid();
        rewrite_state(&snap, other, |tag, _, payload| {
            if tag != snapshot::format::SectionTag::VCPU {
                return None;
            }
            let mut state: snapshot::VcpuState = postcard::from_bytes(payload).unwrap();
            state.cpuid = given.clone();
            Some(postcard::to_allocvec(&state).unwrap())
        });
    }

    for mode in ["lazy", "eager"] {
        // Each restore starts from the disk as it was at the snapshot.
        let at_snapshot = std::fs::read(&disk_path).unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .env(RESTORE_DIR_ENV, &snap)
            .env(RESTORE_MODE_ENV, mode)
            .env(DISK_ENV, &disk_path)
            .output()
            .unwrap();
        assert!(
            child.status.success(),
            "{mode} restore failed: {}",
            String::from_utf8_lossy(&child.stderr)
        );
        let after = String::from_utf8(child.stdout).unwrap();
        assert_eq!(
            minimal::check_count_serial(&after).unwrap(),
            (11, minimal::COUNT_LIMIT),
            "{mode}: the count goes on in the new process:\n{after}"
        );
        // The disk kept working after the restore: the last count is on it.
        let disk = std::fs::read(&disk_path).unwrap();
        let sector = (minimal::COUNT_SECTOR * 512) as usize;
        assert_eq!(
            disk[sector..sector + 512],
            minimal::count_sector_bytes(minimal::COUNT_LIMIT),
            "{mode}"
        );
        std::fs::write(&disk_path, at_snapshot).unwrap();
    }

    if other_backend {
        // What the vCPU used and this host lacks: an MSR holding a value, a CPUID feature bit.
        let host_leaf1 = hv
            .capabilities()
            .cpuid
            .iter()
            .find(|e| e.function == 1 && e.index == 0)
            .copied()
            .unwrap();
        let lacking = (0..32)
            .map(|bit| 1u32 << bit)
            .find(|bit| host_leaf1.ecx & bit == 0);
        rewrite_state(&snap, other, |tag, _, payload| {
            if tag != snapshot::format::SectionTag::VCPU {
                return None;
            }
            let mut state: snapshot::VcpuState = postcard::from_bytes(payload).unwrap();
            state.msrs.push(vmkit::arch::x86_64::Msr {
                index: 0x4242_4242,
                data: 1,
            });
            let leaf = state
                .cpuid
                .iter_mut()
                .find(|e| e.function == 1 && e.index == 0)
                .unwrap();
            leaf.ecx |= lacking.unwrap_or(0);
            Some(postcard::to_allocvec(&state).unwrap())
        });
        match snapshot::restore(&snap, hv, snapshot::MemoryRestore::Lazy) {
            Err(err @ snapshot::SnapshotError::MissingCapabilities { .. }) => {
                let text = err.to_string();
                assert!(text.contains("MSR 0x42424242 is not available"), "{text}");
                if let Some(bit) = lacking {
                    let bits = format!("CPUID leaf 0x1.0 ecx lacks feature bits {bit:#010x}");
                    assert!(text.contains(&bits), "{text}");
                }
            }
            other => panic!("expected MissingCapabilities, got {:?}", other.map(|_| ())),
        }
        return;
    }

    // A snapshot from a host with more than this one is refused, listing what is missing:
    // rewrite the capabilities section as if the writer had offered more vCPUs and an MSR.
    let original = snapshot::format::Snapshot::open(
        snap.join(snapshot::STATE_FILE),
        snapshot::format::Expected {
            arch: snapshot::format::Arch::X86_64,
            backend: if hv.kind() == vmkit::HypervisorKind::Xen {
                snapshot::format::Backend::Xen
            } else {
                snapshot::format::Backend::Kvm
            },
        },
    )
    .unwrap();
    let mut richer = original
        .read_section::<snapshot::CapabilitiesSection>(
            snapshot::CAPABILITIES,
            0,
            snapshot::CAPABILITIES_VERSION..=snapshot::CAPABILITIES_VERSION,
        )
        .unwrap()
        .capabilities()
        .unwrap();
    richer.max_vcpus = u32::MAX;
    richer.msrs.push(0x4242_4242);
    let header = original.header().clone();
    let forged = snap.join(snapshot::STATE_FILE);
    let mut file = std::fs::File::create(&forged).unwrap();
    let mut writer =
        snapshot::format::Writer::new(&mut file, header.arch, header.backend, header.capabilities);
    for section in original.iter() {
        let h = section.header();
        if h.tag == snapshot::CAPABILITIES {
            writer
                .write_section(
                    h.tag,
                    h.index,
                    h.version,
                    &snapshot::CapabilitiesSection::new(&richer),
                )
                .unwrap();
        } else {
            writer
                .write_raw_section(h.tag, h.index, h.version, section.payload())
                .unwrap();
        }
    }
    writer.finish().unwrap();
    drop(file);
    match snapshot::restore(&snap, hv, snapshot::MemoryRestore::Lazy) {
        Err(err @ snapshot::SnapshotError::MissingCapabilities { .. }) => {
            let text = err.to_string();
            assert!(text.contains("max vCPUs: 4294967295 required"), "{text}");
            assert!(text.contains("MSR 0x42424242 is not available"), "{text}");
        }
        other => panic!("expected MissingCapabilities, got {:?}", other.map(|_| ())),
    }

    // A corrupted state file is refused, naming the file, before anything is mapped.
    let state = snap.join(snapshot::STATE_FILE);
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&state, bytes).unwrap();
    let err = snapshot::restore(&snap, hv, snapshot::MemoryRestore::Lazy)
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, snapshot::SnapshotError::State { .. }),
        "{err}"
    );
    let chain = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    assert!(chain.contains("checksum"), "{chain}");
}

pub fn a_chain_of_diffs_restores_like_a_full_snapshot(hv: &dyn Hypervisor) {
    let config = VmConfig::default();
    let mut vm = machine_with(hv, &config, MemoryFlags::LOG_DIRTY);
    let memory = vm.vm.memory();
    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None).unwrap();
    vm.vcpu().set_cpuid(&hv.supported_cpuid()).unwrap();
    entry::configure_long_mode(vm.vcpu(), &memory, kernel.kernel_load.0).unwrap();
    let mut regs = vm.vcpu().regs().unwrap();
    regs.rdx = minimal::ENTRY_FLAG_COUNT;
    vm.vcpu().set_regs(&regs).unwrap();
    let msrs = snapshot::readable_msrs(vm.vcpu(), &hv.msr_index_list());
    let root = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-diff-").unwrap();
    let dirs: Vec<_> = (0..3)
        .map(|i| root.as_path().join(format!("snap{i}")))
        .collect();
    let at = |n: u64| format!("{}\n", minimal::count_line(n));

    let features = Features::for_vm(&config, hv.capabilities());
    let state = |vm: &Machine| [snapshot::save_vcpu(vm.vcpu(), &msrs, features).unwrap()];
    vm.run(move |out| out.contains(&at(5)));
    snapshot::save(&dirs[0], hv, &config, vm.vm.as_ref(), &state(&vm), |_| {
        Ok(())
    })
    .unwrap();
    let mut tracker = snapshot::DiffTracker::start(vm.vm.as_ref()).unwrap();
    for (i, n) in [(1, 10), (2, 15)] {
        vm.run(move |out| out.contains(&at(n)));
        if i == 1 {
            // A save whose memory file cannot be written (a directory is in its way) keeps
            // the pages it harvested for the next attempt: nothing is lost.
            let blocked = root.as_path().join("blocked");
            std::fs::create_dir_all(blocked.join(snapshot::MEMORY_FILE)).unwrap();
            tracker
                .save_diff(
                    &blocked,
                    &dirs[0],
                    hv,
                    &config,
                    vm.vm.as_ref(),
                    &state(&vm),
                    |_| Ok(()),
                )
                .unwrap_err();
            assert!(
                tracker.pending_pages() > 0,
                "the failed diff's pages are still owed"
            );
        }
        tracker
            .save_diff(
                &dirs[i],
                &dirs[i - 1],
                hv,
                &config,
                vm.vm.as_ref(),
                &state(&vm),
                |_| Ok(()),
            )
            .unwrap();
        assert_eq!(tracker.pending_pages(), 0, "written diffs owe nothing");
    }
    // The guest touches a handful of pages (stack, counter, page-table accessed bits) while
    // counting: each diff is a small part of the 4 MiB.
    for dir in &dirs[1..] {
        let full = std::fs::metadata(dirs[0].join(snapshot::MEMORY_FILE))
            .unwrap()
            .len();
        let diff = std::fs::metadata(dir.join(snapshot::MEMORY_FILE))
            .unwrap()
            .len();
        assert!(diff * 4 < full, "diff {diff} bytes vs full {full} bytes");
    }
    drop(vm);

    // Each link of the chain restores to the point it was taken at.
    for (dir, first) in dirs.iter().zip([6, 11, 16]) {
        let restored = snapshot::restore(dir, hv, snapshot::MemoryRestore::Lazy).unwrap();
        let mut vcpus = restored.vcpus;
        let mut again = Machine::around(restored.vm, vcpus.remove(0));
        again.run(|_| false);
        assert_eq!(
            minimal::check_count_serial(&again.output()).unwrap(),
            (first, minimal::COUNT_LIMIT),
            "{}",
            dir.display()
        );
    }
}

/// A snapshot of an SMP VM with an irqchip: the irqchip's state and everything
/// `snapshot::save` captures.
fn smp_snapshots(caps: &vmkit::Capabilities) -> Option<&'static str> {
    crate::irqchip_state(caps)
        .or_else(|| crate::snapshots(caps))
        .or_else(|| {
            (!caps.halted_vcpus).then_some(
                "needs halted vCPUs to be loaded (Xen's HVM records keep no halted state)",
            )
        })
}

/// The PIT and irqchip state and what else these snapshots save: pending events and the
/// clock (XSAVE state only where the host has it, as `Features::for_vm` chooses).
fn pit_snapshots(caps: &vmkit::Capabilities) -> Option<&'static str> {
    crate::pit(caps)
        .or_else(|| crate::irqchip_state(caps))
        .or_else(|| crate::vcpu_events(caps))
        .or_else(|| crate::clock(caps))
}

crate::scenarios![
    a_paused_smp_vm_saves_and_restores => smp_snapshots,
    a_chain_of_diffs_restores_like_a_full_snapshot => crate::diff_snapshots,
    continues_in_a_new_process => pit_snapshots,
    continues_in_a_new_process_without_irqchip => crate::register_snapshots,
    a_snapshot_of_the_other_backend_restores => crate::register_snapshots,
    vcpu_and_memory_move_to_a_fresh_vm => crate::clock,
    with_irqchip_and_pit_state_too => pit_snapshots,
];

/// Every vCPU of a VM on its own thread of a `VmRunner`, with the devices on a bus; the
/// guest's i8042 reset powers it off.
fn start_threaded(vcpus: Vec<Box<dyn Vcpu>>, bus: Arc<Bus>, i8042: Arc<I8042>) -> VmRunner {
    let handler = runner::from_fn(move |id, exit| match bus.handle(id, exit) {
        ExitAction::Continue if i8042.take_reset_request() => ExitAction::PowerOff,
        action => action,
    });
    let options = crate::common::runner_options().command_timeout(crate::common::guest::GIVE_UP);
    VmRunner::start_with(vcpus, handler, options).unwrap()
}

/// Waits for the guest to power off (or stops it), and joins every thread.
fn finish(running: VmRunner, wait: bool) {
    let give_up = crate::common::guest::GIVE_UP;
    if wait {
        assert!(running.wait_stopping(give_up), "the guest never finished");
    }
    running.stop_all();
    for finished in running.join_timeout(give_up).unwrap() {
        finished.outcome.unwrap();
    }
}

fn devices_bus(serial: &Arc<Serial<Vec<u8>>>, i8042: &Arc<I8042>) -> Arc<Bus> {
    let mut bus = Bus::new();
    bus.register_pio(PioAddress(COM1), SERIAL_PORTS, serial.clone())
        .unwrap();
    bus.register_pio(PioAddress(I8042::BASE), I8042::PORTS, i8042.clone())
        .unwrap();
    Arc::new(bus)
}

pub fn a_paused_smp_vm_saves_and_restores(hv: &dyn Hypervisor) {
    let config = VmConfig::default().max_vcpus(2).irqchip(true);
    let vm = hv.create_vm(&config).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let memory = vm.memory();
    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None).unwrap();
    let vcpus: Vec<_> = (0..2)
        .map(|index| {
            let vcpu = vm.create_vcpu(index).unwrap();
            vcpu.set_cpuid(&hv.supported_cpuid()).unwrap();
            entry::configure_long_mode(vcpu.as_ref(), &memory, kernel.kernel_load.0).unwrap();
            let mut regs = vcpu.regs().unwrap();
            regs.rdi = 2;
            regs.rsi = u64::from(index);
            regs.rdx = minimal::ENTRY_FLAG_COUNT;
            vcpu.set_regs(&regs).unwrap();
            if index > 0 {
                vcpu.set_mp_state(vmkit::arch::x86_64::MpState::Runnable)
                    .unwrap();
            }
            vcpu
        })
        .collect();
    let serial = Arc::new(Serial::new(Vec::new()).unwrap());
    let i8042 = Arc::new(I8042::new().unwrap());
    let msrs = snapshot::readable_msrs(vcpus[0].as_ref(), &hv.msr_index_list());
    let running = start_threaded(vcpus, devices_bus(&serial, &i8042), i8042.clone());
    let output = || String::from_utf8(serial.with_output(|out| out.clone())).unwrap();
    let start = std::time::Instant::now();
    while !output().contains(&format!("{}\n", minimal::count_line(10))) {
        assert!(
            start.elapsed() < crate::common::guest::GIVE_UP,
            "{}",
            output()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }

    // Pause both vCPU threads outside run(), gather their state on their threads, save, and
    // stop this VM.
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-smp-snapshot-").unwrap();
    let features = Features::for_vm(&config, hv.capabilities());
    let states = running.save_all(&msrs, features).unwrap();
    snapshot::save(dir.as_path(), hv, &config, vm.as_ref(), &states, |_| Ok(())).unwrap();
    let before = output();
    finish(running, false);
    drop(vm);
    let (first, last) = minimal::check_count_serial(&before).unwrap();
    assert!(before.contains("cpu 1 online"), "{before}");
    assert_eq!(first, 1);

    // Both vCPUs come back: the BSP counts on, the AP stays parked in its hlt.
    let restored = snapshot::restore(dir.as_path(), hv, snapshot::MemoryRestore::Lazy).unwrap();
    assert_eq!(
        restored.vcpus.iter().map(|v| v.id()).collect::<Vec<_>>(),
        [0, 1]
    );
    let serial = Arc::new(Serial::new(Vec::new()).unwrap());
    let i8042 = Arc::new(I8042::new().unwrap());
    let again = start_threaded(restored.vcpus, devices_bus(&serial, &i8042), i8042.clone());
    finish(again, true);
    let after = String::from_utf8(serial.with_output(|out| out.clone())).unwrap();
    assert_eq!(
        minimal::check_count_serial(&after).unwrap(),
        (last + 1, minimal::COUNT_LIMIT),
        "{after}"
    );
    drop(restored.vm);
}

/// The fields in which two vCPU states differ, for a failure message.
fn differences(saved: &snapshot::VcpuState, reread: &snapshot::VcpuState) -> String {
    let mut out = Vec::new();
    let mut field = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name}: saved {a} / read back {b}"));
        }
    };
    field(
        "mp_state",
        format!("{:?}", saved.mp_state),
        format!("{:?}", reread.mp_state),
    );
    field(
        "regs",
        format!("{:?}", saved.regs),
        format!("{:?}", reread.regs),
    );
    field(
        "sregs",
        format!("{:?}", saved.sregs),
        format!("{:?}", reread.sregs),
    );
    field(
        "fpu",
        format!("{:?}", saved.fpu),
        format!("{:?}", reread.fpu),
    );
    field(
        "xsave",
        format!("{:?}", saved.xsave),
        format!("{:?}", reread.xsave),
    );
    field(
        "xcrs",
        format!("{:?}", saved.xcrs),
        format!("{:?}", reread.xcrs),
    );
    field(
        "events",
        format!("{:?}", saved.events),
        format!("{:?}", reread.events),
    );
    field(
        "cpuid",
        format!("{:?}", saved.cpuid.len()),
        format!("{:?}", reread.cpuid.len()),
    );
    if saved.cpuid != reread.cpuid && saved.cpuid.len() == reread.cpuid.len() {
        field("cpuid entries", "...".into(), "differ".into());
    }
    for (a, b) in saved.msrs.iter().zip(&reread.msrs) {
        if a != b {
            field("msr", format!("{a:x?}"), format!("{b:x?}"));
        }
    }
    if let (Some(a), Some(b)) = (&saved.lapic, &reread.lapic) {
        for offset in (0..a.regs.len()).step_by(16) {
            if a.regs[offset..offset + 4] != b.regs[offset..offset + 4] {
                field(
                    &format!("lapic {offset:#x}"),
                    format!("{:x?}", &a.regs[offset..offset + 4]),
                    format!("{:x?}", &b.regs[offset..offset + 4]),
                );
            }
        }
    }
    out.join("; ")
}
