//! The destination side: check the offer, build an empty VM, take in memory, restore the
//! state and devices, confirm. Nothing reaches the caller until all of it succeeded.

use std::io::{Read, Write};

use vm_memory::{Bytes, GuestAddress};
use vmkit_snapshot::{Arch, Expected, SectionTag, Snapshot};

use super::check::{backend_code, check_offer, Limits, StreamCheck};
use super::error::{MigrationError, Phase, Reason, Refusal, Side};
use super::frame::{FrameError, FrameReader, FrameWriter};
use super::wire::{self, Message, Offer};
use super::SECTION_VERSION;
use crate::hypervisor::{Capabilities, Hypervisor, VmConfig};
use crate::memory::{GuestMemoryMmap, MemoryFlags, MemoryRegion, PAGE_SIZE};
use crate::snapshot::{read_vm_state, restore_vcpu, restore_vm, VcpuState, VmState};
use crate::vcpu::Vcpu;
use crate::vm::Vm;

/// How a destination receives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IncomingOptions {
    /// What this destination offers the incoming VM; `None` (the default) is the
    /// hypervisor's [`capabilities`](Hypervisor::capabilities). An operator can offer less
    /// (fewer vCPUs, CPUID features held back for a pool of hosts), never more.
    pub capabilities: Option<Capabilities>,
    /// Limits on what the source may announce and send.
    pub limits: Limits,
}

impl IncomingOptions {
    /// Sets [`capabilities`](Self::capabilities).
    pub fn capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = Some(capabilities);
        self
    }

    /// Sets [`limits`](Self::limits).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// A VM received whole: memory, vCPU and VM state loaded; not running yet.
pub struct Incoming {
    /// The VM, with its memory and VM-wide state.
    pub vm: Box<dyn Vm>,
    /// Its vCPUs, in the order the source listed them, with their state loaded.
    pub vcpus: Vec<Box<dyn Vcpu>>,
    /// The configuration the VM was created with.
    pub config: VmConfig,
    /// The final state frame, for the VMM to read its device sections from
    /// ([`Snapshot::read_device`]).
    pub state: Snapshot,
    /// Pre-copy rounds received.
    pub rounds: u32,
    /// Pages received, in all rounds and the stop-and-copy.
    pub pages: u64,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("config", &self.config)
            .field("vcpus", &self.vcpus.len())
            .field("rounds", &self.rounds)
            .field("pages", &self.pages)
            .finish_non_exhaustive()
    }
}

/// The destination's end of the stream.
struct Link<S> {
    stream: S,
    out: FrameWriter,
    input: FrameReader,
}

/// Tells the source why this side gives up, if the stream still carries it, and returns
/// `error`.
fn refuse<S: Write>(
    out: &mut FrameWriter,
    stream: &mut S,
    refusal: Refusal,
    error: MigrationError,
) -> MigrationError {
    if let Ok(payload) = wire::encode("refusal", &refusal) {
        let _ = out.send(stream, wire::REFUSE, &payload);
    }
    error
}

/// Reads and decodes the source's next frame.
fn read_message<'a, S: Read>(
    input: &'a mut FrameReader,
    stream: &mut S,
) -> Result<Message<'a>, FrameError> {
    let seq = input.next_seq();
    let (tag, payload) = input.read(stream)?;
    Message::decode(seq, tag, payload)
}

/// Receives a VM from the source at the other end of `stream`, on `hypervisor`.
///
/// The offer is checked first (platform, capabilities against
/// [`IncomingOptions::capabilities`], configuration, memory layout against
/// [`IncomingOptions::limits`]); an empty VM like the source's is built, and only then is the
/// offer accepted, so a destination that cannot host the VM refuses before the source pauses
/// anything. Every page run is checked against the announced layout before it is written;
/// every frame's checksum, sequence number and length before it is used.
///
/// When the state frame arrives, the vCPUs and VM-wide state are restored, then `devices`
/// builds the VMM's devices from the [`Incoming`] VM (its memory, its state's device
/// sections). Only when that succeeds does the destination confirm, and return the VM with
/// what `devices` returned: start its vCPUs then. On any failure the source is told why
/// (when the stream still works), the half-built VM is dropped, and the error names the side
/// and phase; a VM is never returned half-received.
pub fn receive<S: Read + Write, T>(
    stream: S,
    hypervisor: &dyn Hypervisor,
    options: &IncomingOptions,
    devices: impl FnOnce(&Incoming) -> Result<T, Box<dyn std::error::Error + Send + Sync>>,
) -> Result<(Incoming, T), MigrationError> {
    receive_prepared(
        stream,
        hypervisor,
        options,
        |_| Ok(()),
        |incoming, ()| devices(incoming),
    )
}

/// [`receive`] with a first step for the VMM's devices: `prepare` runs once the empty VM is
/// built and before the offer is accepted (so before the source pauses anything), and may
/// build what does not depend on the devices' saved state, wired to the VM (interrupt
/// eventfds registered as irqfds, say). Then `devices` gets what `prepare` returned with the
/// [`Incoming`] VM, to load the state into it, as in [`receive`].
///
/// A failing `prepare` refuses the offer: the source runs on, and the VM, with whatever
/// `prepare` registered on it, is dropped.
pub fn receive_prepared<S: Read + Write, P, T>(
    stream: S,
    hypervisor: &dyn Hypervisor,
    options: &IncomingOptions,
    prepare: impl FnOnce(&dyn Vm) -> Result<P, Box<dyn std::error::Error + Send + Sync>>,
    devices: impl FnOnce(&Incoming, P) -> Result<T, Box<dyn std::error::Error + Send + Sync>>,
) -> Result<(Incoming, T), MigrationError> {
    let mut link = Link {
        stream,
        out: FrameWriter::new(),
        input: FrameReader::new(),
    };
    let host = options
        .capabilities
        .as_ref()
        .unwrap_or_else(|| hypervisor.capabilities());
    let mut check = StreamCheck::new(options.limits.clone());

    let mut phase = Phase::Handshake;
    let received = read_message(&mut link.input, &mut link.stream);
    let offer = match received {
        Err(error) => return Err(corrupt(&mut link.out, &mut link.stream, phase, error)),
        Ok(Message::Offer(offer)) => *offer,
        Ok(other) => {
            let found = other.kind();
            let refusal = Refusal::Stream(format!("expected an offer, received {found}"));
            let error = MigrationError::new(
                Side::Source,
                phase,
                Reason::Unexpected {
                    expected: "an offer",
                    found,
                },
            );
            return Err(refuse(&mut link.out, &mut link.stream, refusal, error));
        }
    };
    if let Err(refusal) = check_offer(&offer, hypervisor.kind(), host, &options.limits) {
        let error = MigrationError::new(Side::Destination, phase, Reason::Refused(refusal.clone()));
        return Err(refuse(&mut link.out, &mut link.stream, refusal, error));
    }
    let prepared = build(hypervisor, &offer).and_then(|built| {
        prepare(built.0.as_ref())
            .map(|prepared| (built, prepared))
            .map_err(Reason::PrepareDevices)
    });
    let (built_vm, prepared) = match prepared {
        Ok(built) => built,
        Err(reason) => {
            let refusal = Refusal::Restore(crate::ErrorChain(&reason).to_string());
            return Err(refuse(
                &mut link.out,
                &mut link.stream,
                refusal,
                MigrationError::new(Side::Destination, phase, reason),
            ));
        }
    };
    check.accept(offer);
    link.out
        .send(&mut link.stream, wire::ACCEPT, &[])
        .map_err(|e| MigrationError::new(Side::Source, phase, Reason::Stream(e)))?;

    let memory = built_vm.0.memory();
    let mut pages = 0u64;
    let mut round = 0u32;
    phase = Phase::PreCopy { round };
    let state = loop {
        let message = match read_message(&mut link.input, &mut link.stream) {
            Ok(message) => message,
            Err(error) => return Err(corrupt(&mut link.out, &mut link.stream, phase, error)),
        };
        let checked = check.message(&message, hypervisor.kind(), host);
        match (message, checked) {
            (_, Err(error)) => {
                let refusal = error.refusal();
                let error = MigrationError::new(Side::Source, phase, error);
                return Err(refuse(&mut link.out, &mut link.stream, refusal, error));
            }
            (Message::Pages(batch), Ok(_)) => {
                let regions = check.offer().map_or(&[][..], |o| &o.regions[..]);
                let base = regions
                    .get(batch.region as usize)
                    .map_or(0, |r| r.guest_addr);
                for run in batch.runs() {
                    let addr = base + run.first_page * PAGE_SIZE as u64;
                    if let Err(source) = write_run(&memory, addr, run.count, run.data) {
                        let reason = Reason::GuestMemory { addr, source };
                        let refusal = Refusal::Restore(crate::ErrorChain(&reason).to_string());
                        let error = MigrationError::new(Side::Destination, phase, reason);
                        return Err(refuse(&mut link.out, &mut link.stream, refusal, error));
                    }
                    pages += u64::from(run.count);
                }
            }
            (Message::RoundEnd(_), Ok(_)) => {
                round += 1;
                phase = Phase::PreCopy { round };
            }
            (Message::Abort(why), Ok(_)) => {
                return Err(MigrationError::new(
                    Side::Source,
                    phase,
                    Reason::Aborted(why),
                ))
            }
            (Message::State(bytes), Ok(_)) => break bytes.to_vec(),
            (other, Ok(_)) => {
                let found = other.kind();
                let error = MigrationError::new(
                    Side::Source,
                    phase,
                    Reason::Unexpected {
                        expected: "pages or state",
                        found,
                    },
                );
                return Err(refuse(
                    &mut link.out,
                    &mut link.stream,
                    Refusal::Stream(format!("unexpected {found}")),
                    error,
                ));
            }
        }
    };

    phase = Phase::Restore;
    let offer = check.offer().cloned();
    let restored = offer
        .ok_or(Reason::Unexpected {
            expected: "an offer",
            found: "state",
        })
        .and_then(|offer| restore(built_vm, &offer, &state, hypervisor, round, pages))
        .and_then(|incoming| match devices(&incoming, prepared) {
            Ok(built) => Ok((incoming, built)),
            Err(source) => Err(Reason::Devices(source)),
        });
    let (incoming, built) = match restored {
        Ok(done) => done,
        Err(reason) => {
            let refusal = Refusal::Restore(crate::ErrorChain(&reason).to_string());
            return Err(refuse(
                &mut link.out,
                &mut link.stream,
                refusal,
                MigrationError::new(Side::Destination, phase, reason),
            ));
        }
    };
    // Unconfirmed, the source resumes its VM: this one must not run then.
    link.out
        .send(&mut link.stream, wire::CONFIRM, &[])
        .map_err(|e| MigrationError::new(Side::Source, Phase::Confirm, Reason::Stream(e)))?;
    Ok((incoming, built))
}

/// Writes a checked run of `count` pages at `addr`: its data, or zeros.
fn write_run(
    memory: &GuestMemoryMmap,
    addr: u64,
    count: u32,
    data: Option<&[u8]>,
) -> Result<(), vm_memory::GuestMemoryError> {
    static ZERO: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
    match data {
        Some(data) => memory.write_slice(data, GuestAddress(addr)),
        None => (0..u64::from(count)).try_for_each(|page| {
            memory.write_slice(&ZERO, GuestAddress(addr + page * PAGE_SIZE as u64))
        }),
    }
}

/// A frame that could not be read or decoded: refused, and blamed on the source.
fn corrupt<S: Write>(
    out: &mut FrameWriter,
    stream: &mut S,
    phase: Phase,
    error: FrameError,
) -> MigrationError {
    let refusal = Refusal::Stream(error.to_string());
    refuse(
        out,
        stream,
        refusal,
        MigrationError::new(Side::Source, phase, Reason::Stream(error)),
    )
}

/// A VM and its vCPUs, not yet loaded with state.
type Built = (Box<dyn Vm>, Vec<Box<dyn Vcpu>>);

/// An empty VM built like the offer's: configuration, memory regions (zeroed) and vCPUs,
/// all before the source pauses anything, so that building them costs no downtime.
fn build(hypervisor: &dyn Hypervisor, offer: &Offer) -> Result<Built, Reason> {
    let vm = hypervisor.create_vm(&offer.config)?;
    for region in &offer.regions {
        let size = usize::try_from(region.size).unwrap_or(usize::MAX);
        let flags = MemoryFlags::from_bits_truncate(region.flags);
        let mapped = MemoryRegion::anonymous(GuestAddress(region.guest_addr), size, flags)?;
        vm.add_memory_region(mapped)?;
    }
    let vcpus = offer
        .vcpus
        .iter()
        .map(|&id| vm.create_vcpu(id))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((vm, vcpus))
}

/// Restores the vCPUs and VM-wide state from the state frame.
fn restore(
    (vm, vcpus): Built,
    offer: &Offer,
    state: &[u8],
    hypervisor: &dyn Hypervisor,
    rounds: u32,
    pages: u64,
) -> Result<Incoming, Reason> {
    let expected = Expected {
        arch: Arch::X86_64,
        backend: backend_code(hypervisor.kind()),
    };
    let snapshot = Snapshot::from_bytes(state, expected).map_err(Reason::State)?;
    let vm_state: VmState = read_vm_state(&snapshot).map_err(Reason::State)?;
    // `build` created them in the offer's order.
    for vcpu in &vcpus {
        let state: VcpuState = snapshot
            .read_section(
                SectionTag::VCPU,
                vcpu.id(),
                SECTION_VERSION..=SECTION_VERSION,
            )
            .map_err(Reason::State)?;
        restore_vcpu(vcpu.as_ref(), &state)?;
    }
    restore_vm(vm.as_ref(), &vm_state)?;
    Ok(Incoming {
        vm,
        vcpus,
        config: offer.config.clone(),
        state: snapshot,
        rounds,
        pages,
    })
}
