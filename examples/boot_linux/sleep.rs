//! `--s3-wake-after MS`: the guest may suspend to RAM (ACPI S3), and boot_linux wakes it MS
//! milliseconds later, as if an alarm had fired.
//!
//! The guest's write of SLP_EN completes and it spins until the machine sleeps, so the exit
//! handler only reports the suspend. A thread of its own (the "waker") then pauses the vCPU
//! that suspended (a kick: no I/O is in flight), waits, starts it at the waking vector the
//! guest left in the FACS (vmkit-boot's `wake`), sets WAK_STS in the PM block and resumes
//! it. The guest's other vCPUs were taken offline before it suspended; it starts them again
//! itself. The waker is not confined by `--seccomp` (it only sends the runner's commands).

use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vm_memory::GuestAddress;
use vmkit::runner::VcpuHandle;
use vmkit::GuestMemoryMmap;
use vmkit_boot::wake;
use vmkit_devices::PmBlock;

/// Starts the waker: each vCPU id received on `suspends` is woken `after` its suspend, at the
/// waking vector in the FACS at `facs`. It ends when the exit handler (the sender) is gone;
/// nothing waits for it.
pub fn spawn_waker(
    suspends: Receiver<u32>,
    vcpus: Vec<VcpuHandle>,
    pm: Arc<PmBlock>,
    memory: GuestMemoryMmap,
    facs: u64,
    after: Duration,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("s3-waker".into())
        .spawn(move || {
            for id in suspends {
                let Some(vcpu) = vcpus.iter().find(|v| v.id() == id) else {
                    continue;
                };
                eprintln!(
                    "boot_linux: vCPU {id}: the guest suspended to RAM (S3); waking it in {} ms",
                    after.as_millis()
                );
                if let Err(err) = wake_one(vcpu, &pm, &memory, facs, after) {
                    eprintln!("boot_linux: vCPU {id}: cannot wake the guest: {err}; stopping");
                    for vcpu in &vcpus {
                        let _ = vcpu.stop();
                    }
                }
            }
        })
}

/// Pauses `vcpu`, waits `after`, loads it for the waking vector and lets it run.
fn wake_one(
    vcpu: &VcpuHandle,
    pm: &PmBlock,
    memory: &GuestMemoryMmap,
    facs: u64,
    after: Duration,
) -> Result<(), String> {
    let error = |err: &dyn std::error::Error| vmkit::ErrorChain(err).to_string();
    vcpu.pause().map_err(|err| error(&err))?;
    std::thread::sleep(after);
    let memory = memory.clone();
    let vector = vcpu
        .with_vcpu(move |vcpu| {
            let vector = wake::read_waking_vector(&memory, GuestAddress(facs))?;
            wake::enter_waking_vector(vcpu, vector)?;
            Ok::<_, wake::WakeError>(vector)
        })
        .map_err(|err| error(&err))?
        .map_err(|err| error(&err))?;
    pm.wake();
    vcpu.resume().map_err(|err| error(&err))?;
    eprintln!(
        "boot_linux: vCPU {}: woke the guest at its waking vector ({vector:x?})",
        vcpu.id()
    );
    Ok(())
}
