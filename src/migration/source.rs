//! The source side: offer, pre-copy rounds, stop-and-copy, and waiting for the
//! destination's confirmation, resuming the VM on any failure.

use std::io::{Read, Write};
use std::ops::Range;
use std::time::{Duration, Instant};

use vm_memory::bitmap::BS;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, VolatileSlice};
use vmkit_snapshot::{Arch, SectionTag, StateError, Writer};

use super::check::backend_code;
use super::error::{MigrationError, Phase, Reason, Side};
use super::frame::{FrameError, FrameReader, FrameWriter};
use super::progress::{converged, send_time, MigrationOptions, Progress, Summary};
use super::track::{MarkedPages, Owed};
use super::wire::{
    self, Message, Offer, PageBatch, Region, RoundEnd, MAX_PAGES_PER_FRAME, PAGES_HEADER_LEN,
    RUN_DATA, RUN_ENTRY_LEN, RUN_ZERO,
};
use super::SECTION_VERSION;
use crate::hypervisor::{Hypervisor, VmConfig};
use crate::memory::{DirtyBitmap, GuestMemoryMmap, PAGE_SIZE};
use crate::runner::VmRunner;
use crate::snapshot::{save_vm, Features, VM_STATE, VM_STATE_VERSION};
use crate::vm::Vm;

/// The VM a source migrates, and what it runs on.
///
/// Add the VM's regions with [`MemoryFlags::LOG_DIRTY`](crate::MemoryFlags::LOG_DIRTY): a
/// region without it cannot be tracked, so every round sends it whole (the migration still
/// completes, after [`MigrationOptions::max_rounds`]).
#[derive(Clone, Copy)]
pub struct Source<'a> {
    /// The source host's hypervisor.
    pub hypervisor: &'a dyn Hypervisor,
    /// The configuration the VM was created with.
    pub config: &'a VmConfig,
    /// The VM.
    pub vm: &'a dyn Vm,
    /// The runner its vCPUs run on; the source pauses them through it, and resumes them if
    /// the migration fails.
    pub runner: &'a VmRunner,
    /// The MSRs to carry (see [`readable_msrs`](crate::snapshot::readable_msrs)).
    pub msrs: &'a [u32],
    /// Pages the VMM wrote itself, if it marks any.
    pub marked: Option<&'a MarkedPages>,
}

/// The source's end of the stream.
struct Link<S> {
    stream: S,
    out: FrameWriter,
    input: FrameReader,
    /// The page frame being filled.
    batch: Batch,
}

/// The page frame being filled: its region, its data so far (in the frame writer's buffer,
/// after the header) and its run table.
#[derive(Default)]
struct Batch {
    region: u32,
    /// Pages covered, data and zero runs.
    pages: u32,
    /// Bytes of page data in the buffer.
    data: usize,
    /// The finished runs' table entries.
    table: Vec<u8>,
    /// The run being extended: first page, count, kind.
    run: Option<(u64, u32, u32)>,
}

impl Batch {
    /// The frame buffer's size: header, the most data, the largest table.
    const BUFFER: usize =
        PAGES_HEADER_LEN + MAX_PAGES_PER_FRAME as usize * (PAGE_SIZE + RUN_ENTRY_LEN);

    /// Adds `page` of `kind` (its data, if any, is already in the buffer).
    fn add(&mut self, page: u64, kind: u32) {
        match &mut self.run {
            Some((first, count, k)) if *k == kind && *first + u64::from(*count) == page => {
                *count += 1
            }
            _ => {
                self.end_run();
                self.run = Some((page, 1, kind));
            }
        }
        self.pages += 1;
        if kind == RUN_DATA {
            self.data += PAGE_SIZE;
        }
    }

    fn end_run(&mut self) {
        if let Some((first, count, kind)) = self.run.take() {
            let at = self.table.len();
            self.table.resize(at + RUN_ENTRY_LEN, 0);
            PageBatch::write_run(&mut self.table[at..], first, count, kind);
        }
    }
}

/// Whether a page is all zero; OR-folded in blocks, which the compiler vectorizes.
fn is_zero(page: &[u8]) -> bool {
    page.chunks(256)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

impl<S: Read + Write> Link<S> {
    /// Reads the destination's next frame.
    fn recv(
        &mut self,
        phase: Phase,
        expected: &'static str,
    ) -> Result<Message<'_>, MigrationError> {
        let lost = |e| MigrationError::new(Side::Destination, phase, Reason::Stream(e));
        let seq = self.input.next_seq();
        let (tag, payload) = self.input.read(&mut self.stream).map_err(lost)?;
        let message = Message::decode(seq, tag, payload).map_err(lost)?;
        match message {
            Message::Refuse(refusal) => Err(MigrationError::new(
                Side::Destination,
                phase,
                Reason::Refused(refusal),
            )),
            Message::Accept | Message::Confirm => Ok(message),
            other => Err(MigrationError::new(
                Side::Destination,
                phase,
                Reason::Unexpected {
                    expected,
                    found: other.kind(),
                },
            )),
        }
    }

    /// Turns a failed write into the destination's refusal when it sent one before it
    /// closed the stream (it refuses, then hangs up), else into a lost destination.
    fn write_failed(&mut self, phase: Phase, error: FrameError) -> MigrationError {
        if matches!(error, FrameError::Io { .. }) {
            if let Err(
                refused @ MigrationError {
                    reason: Reason::Refused(_),
                    ..
                },
            ) = self.recv(phase, "nothing")
            {
                return refused;
            }
        }
        MigrationError::new(Side::Destination, phase, Reason::Stream(error))
    }

    fn send(
        &mut self,
        phase: Phase,
        tag: SectionTag,
        payload: &[u8],
    ) -> Result<(), MigrationError> {
        match self.out.send(&mut self.stream, tag, payload) {
            Ok(()) => Ok(()),
            Err(error) => Err(self.write_failed(phase, error)),
        }
    }

    fn encode_and_send<T: serde::Serialize + ?Sized>(
        &mut self,
        phase: Phase,
        tag: SectionTag,
        kind: &'static str,
        value: &T,
    ) -> Result<(), MigrationError> {
        let payload = wire::encode(kind, value)
            .map_err(|e| MigrationError::new(Side::Source, phase, Reason::Stream(e)))?;
        self.send(phase, tag, &payload)
    }

    /// Sends `pages` of region `index` (guest address `addr`) in page frames of at most
    /// [`MAX_PAGES_PER_FRAME`] pages, each page copied once from guest memory into the frame;
    /// all-zero pages go as zero runs without their contents, or with `skip_zero` not at all
    /// (the destination's fresh memory is zero). Frames fill across calls: [`flush`](Self::flush)
    /// sends the last one. Returns the pages sent or announced.
    fn send_run(
        &mut self,
        phase: Phase,
        memory: &GuestMemoryMmap,
        (index, addr): (u32, u64),
        pages: Range<u64>,
        skip_zero: bool,
    ) -> Result<u64, MigrationError> {
        let local = |reason| MigrationError::new(Side::Source, phase, reason);
        let guest = guest_slice(memory, addr).map_err(local)?;
        let mut sent = 0;
        for page in pages {
            if self.batch.region != index || self.batch.pages >= MAX_PAGES_PER_FRAME {
                self.flush(phase)?;
                self.batch.region = index;
            }
            let at = PAGES_HEADER_LEN + self.batch.data;
            let buf = &mut self.out.buffer(Batch::BUFFER)[at..at + PAGE_SIZE];
            // The guest may write the page meanwhile: it is dirty again then, and goes in a
            // later round; the frame's checksum covers this copy.
            let offset = page as usize * PAGE_SIZE;
            let copied = guest
                .subslice(offset, PAGE_SIZE)
                .map(|s| s.copy_to(buf))
                .map_err(|e| {
                    local(Reason::GuestMemory {
                        addr: addr + offset as u64,
                        source: e.into(),
                    })
                })?;
            if copied != PAGE_SIZE {
                return Err(local(Reason::GuestMemory {
                    addr: addr + offset as u64,
                    source: vm_memory::GuestMemoryError::PartialBuffer {
                        expected: PAGE_SIZE,
                        completed: copied,
                    },
                }));
            }
            let kind = match is_zero(buf) {
                true if skip_zero => continue,
                true => RUN_ZERO,
                false => RUN_DATA,
            };
            self.batch.add(page, kind);
            sent += 1;
        }
        Ok(sent)
    }

    /// Sends the page frame being filled, if it has any page. Control frames share the frame
    /// writer's buffer: they go only after this.
    fn flush(&mut self, phase: Phase) -> Result<(), MigrationError> {
        self.batch.end_run();
        if self.batch.table.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let runs = (batch.table.len() / RUN_ENTRY_LEN) as u32;
        let len = PAGES_HEADER_LEN + batch.data + batch.table.len();
        let buf = self.out.buffer(Batch::BUFFER);
        PageBatch::write_header(buf, batch.region, runs);
        buf[PAGES_HEADER_LEN + batch.data..len].copy_from_slice(&batch.table);
        // The table's allocation is reused.
        let mut table = batch.table;
        table.clear();
        self.batch.table = table;
        match self
            .out
            .send_buffer_part(&mut self.stream, wire::PAGES, len)
        {
            Ok(()) => Ok(()),
            Err(error) => Err(self.write_failed(phase, error)),
        }
    }
}

/// The whole region of guest memory that starts at `addr`.
fn guest_slice(
    memory: &GuestMemoryMmap,
    addr: u64,
) -> Result<VolatileSlice<'_, BS<'_, DirtyBitmap>>, Reason> {
    let region = memory
        .find_region(GuestAddress(addr))
        .ok_or(Reason::GuestMemory {
            addr,
            source: vm_memory::GuestMemoryError::InvalidGuestAddress(GuestAddress(addr)),
        })?;
    let offset = (addr - region.start_addr().0) as usize;
    region
        .as_volatile_slice()
        .and_then(|s| s.offset(offset).map_err(Into::into))
        .map_err(|source| Reason::GuestMemory { addr, source })
}

/// Migrates the VM in `source` to the destination at the other end of `stream`.
///
/// 1. **Handshake.** The source sends an offer (its capabilities, the VM's configuration,
///    memory layout and vCPU ids) and waits for the destination to accept it (it has built an
///    empty VM like this one) or refuse it, with a reason, before anything is paused.
/// 2. **Pre-copy.** Round 0 sends every non-zero page while the guest runs; each later round
///    sends what the guest (dirty ring or bitmap), the VMM's devices (vm-memory's bitmaps) or
///    the VMM itself ([`Source::marked`]) wrote meanwhile. After each round `progress` gets a
///    [`Progress`]; when the pages still dirty would take at most
///    [`MigrationOptions::downtime_budget`] at the bandwidth measured so far, or after
///    [`MigrationOptions::max_rounds`], pre-copy ends.
/// 3. **Stop-and-copy.** The vCPUs pause through the runner; `devices` adds the device
///    sections (e.g. [`Writer::write_device`] for each device implementing
///    [`Persist`](vmkit_snapshot::Persist)) and the vCPU and VM state are captured, all before
///    the last harvest of dirty pages, so that whatever a device worker or a vCPU's pending
///    access writes meanwhile still goes out; then the last dirty pages, then one state
///    frame (a vmkit-snapshot state file with all of it). A VMM whose devices run on threads
///    of their own quiesces them in `devices` (and lets them go on if this returns `Err`).
/// 4. **Confirmation.** The destination restores and confirms; only then does this return
///    `Ok`, and the VM belongs to the destination: the vCPUs stay paused here, and the caller
///    stops the runner and drops the VM.
///
/// On any error the VM keeps running here: the vCPUs were never paused, or are resumed
/// before this returns (devices saved through `Persist` are only read, never changed). The
/// error names the side, the phase and the reason, including the destination's refusal.
///
/// On TCP, set `TCP_NODELAY` on both ends
/// ([`TcpStream::set_nodelay`](std::net::TcpStream::set_nodelay)): otherwise the state frame
/// and the confirmation can wait on Nagle's algorithm and delayed acknowledgements, tens of
/// milliseconds of downtime. `stream` should have read and write timeouts (e.g.
/// [`TcpStream::set_read_timeout`](std::net::TcpStream::set_read_timeout)) if a destination
/// that stops answering without closing must not block the source for ever.
///
/// A migration harvests the VM's dirty log (and vm-memory's bitmaps) for itself: a VMM that
/// also tracks pages for diff snapshots ([`DiffTracker`](crate::snapshot::DiffTracker))
/// takes a full snapshot after a failed migration before its next diff.
///
/// One gap is inherent to a two-party protocol: if the stream breaks after the destination
/// sent its confirmation but before the source read it, both sides may run the VM. A VMM
/// whose guest shares storage fences the old side (e.g. revokes its disk access) in that case.
pub fn migrate<S: Read + Write>(
    stream: S,
    source: &Source<'_>,
    options: &MigrationOptions,
    devices: impl FnOnce(&mut Writer<Vec<u8>>) -> Result<(), StateError>,
    mut progress: impl FnMut(&Progress),
) -> Result<Summary, MigrationError> {
    let started = Instant::now();
    let mut link = Link {
        stream,
        out: FrameWriter::new(),
        input: FrameReader::new(),
        batch: Batch::default(),
    };
    let vm = source.vm;
    let regions: Vec<Region> = vm
        .memory_layout()
        .into_iter()
        .map(|(_, range, flags)| Region {
            guest_addr: range.start,
            size: range.size,
            flags: flags.bits(),
        })
        .collect();
    let mut regions = regions;
    regions.sort_by_key(|r| r.guest_addr);
    let offer = Offer {
        arch: Arch::X86_64.to_u16(),
        backend: backend_code(source.hypervisor.kind()).to_u16(),
        capabilities: source.hypervisor.capabilities().clone(),
        config: source.config.clone(),
        regions: regions.clone(),
        vcpus: source.runner.vcpus().iter().map(|h| h.id()).collect(),
    };
    let phase = Phase::Handshake;
    link.encode_and_send(phase, wire::OFFER, "offer", &offer)?;
    link.recv(phase, "an accept")?;

    let local = |phase| move |reason: Reason| MigrationError::new(Side::Source, phase, reason);
    let mut owed = Owed::start(vm, &regions, source.marked)
        .map_err(|e| local(Phase::PreCopy { round: 0 })(e.into()))?;
    let memory = vm.memory();
    let mut pages_sent = 0u64;
    let mut round = 0u32;
    // Round 0: everything, zero pages excepted.
    let mut runs: Vec<(u32, Range<u64>)> = regions
        .iter()
        .enumerate()
        .map(|(i, r)| (i as u32, 0..r.pages()))
        .collect();
    let copy_started = Instant::now();
    let mut previous_dirty = None;
    loop {
        let phase = Phase::PreCopy { round };
        if source.runner.is_stopping() {
            let _ = link.encode_and_send(phase, wire::ABORT, "abort", "the guest stopped");
            return Err(local(phase)(Reason::GuestStopped));
        }
        let round_started = Instant::now();
        let mut sent = 0;
        for (index, pages) in runs.drain(..) {
            let addr = regions[index as usize].guest_addr;
            sent += link.send_run(phase, &memory, (index, addr), pages, round == 0)?;
        }
        link.flush(phase)?;
        pages_sent += sent;
        link.encode_and_send(
            phase,
            wire::ROUND_END,
            "round end",
            &RoundEnd { round, pages: sent },
        )?;
        let dirty = owed
            .collect(vm, source.marked)
            .map_err(|e| local(phase)(e.into()))?;
        let elapsed = copy_started.elapsed().as_secs_f64().max(1e-6);
        let bandwidth = link.out.bytes() as f64 / elapsed;
        let expected_downtime = send_time(dirty, bandwidth);
        progress(&Progress {
            round,
            stopped: false,
            pages_sent,
            bytes_sent: link.out.bytes(),
            dirty_pages: dirty,
            dirty_rate: dirty as f64 / round_started.elapsed().as_secs_f64().max(1e-6),
            bandwidth,
            expected_downtime,
        });
        round += 1;
        let done = converged(options, expected_downtime, dirty, previous_dirty);
        if done || round >= options.max_rounds {
            break;
        }
        previous_dirty = Some(dirty);
        runs = owed.take_runs();
    }

    // Stop-and-copy: from here on every failure resumes the vCPUs.
    let result = stop_and_copy(
        &mut link,
        source,
        &mut owed,
        &regions,
        devices,
        &mut progress,
        pages_sent,
        round,
    );
    match result {
        Ok(stopped) => Ok(Summary {
            downtime: stopped.paused.elapsed(),
            rounds: round,
            pages_sent: pages_sent + stopped.final_pages,
            final_pages: stopped.final_pages,
            bytes_sent: link.out.bytes(),
            total: started.elapsed(),
            pausing: stopped.pausing,
            capture: stopped.capture,
            final_copy: stopped.final_copy,
            confirmation: Duration::ZERO,
        })
        .map(|mut summary: Summary| {
            summary.confirmation = summary
                .downtime
                .saturating_sub(summary.capture + summary.final_copy);
            summary
        }),
        Err(error) => Err(match source.runner.resume_all() {
            Ok(()) => error,
            Err(resume) => MigrationError::new(
                Side::Source,
                error.phase,
                Reason::NotResumed {
                    failure: crate::ErrorChain(&error).to_string(),
                    source: resume,
                },
            ),
        }),
    }
}

/// What the stop-and-copy did, and how long its parts took.
struct Stopped {
    /// Pages sent while paused.
    final_pages: u64,
    /// When the vCPUs were all paused.
    paused: Instant,
    /// Pausing them.
    pausing: Duration,
    /// Capturing the state.
    capture: Duration,
    /// The last harvest, pages and state frame.
    final_copy: Duration,
}

/// Pauses the vCPUs, sends the last pages and the state, and waits for the confirmation.
#[allow(clippy::too_many_arguments)]
fn stop_and_copy<S: Read + Write>(
    link: &mut Link<S>,
    source: &Source<'_>,
    owed: &mut Owed,
    regions: &[Region],
    devices: impl FnOnce(&mut Writer<Vec<u8>>) -> Result<(), StateError>,
    progress: &mut impl FnMut(&Progress),
    pages_sent: u64,
    round: u32,
) -> Result<Stopped, MigrationError> {
    let phase = Phase::StopAndCopy;
    let local = |reason: Reason| MigrationError::new(Side::Source, phase, reason);
    let pausing = Instant::now();
    source.runner.pause_all().map_err(|e| local(e.into()))?;
    let paused = Instant::now();
    let pausing = paused - pausing;
    if source.runner.is_stopping() {
        let _ = link.encode_and_send(phase, wire::ABORT, "abort", "the guest stopped");
        return Err(local(Reason::GuestStopped));
    }
    // Everything that may still write guest memory comes before the last harvest: the
    // VMM's devices (which it may quiesce in `devices`), and the vCPUs' pending accesses,
    // which saving their state completes.
    let mut writer = Writer::new(
        Vec::new(),
        Arch::X86_64,
        backend_code(source.hypervisor.kind()),
        [0; 32],
    );
    devices(&mut writer).map_err(|e| local(Reason::State(e)))?;
    let features = Features::for_vm(source.config, source.hypervisor.capabilities());
    // Every vCPU saves on its own thread at once: one round trip, not one per vCPU.
    let vcpus = source
        .runner
        .save_states(source.msrs, features)
        .map_err(|e| local(e.into()))?;
    for vcpu in &vcpus {
        writer
            .write_section(SectionTag::VCPU, vcpu.id, SECTION_VERSION, vcpu)
            .map_err(|e| local(Reason::State(e)))?;
    }
    let vm_state = save_vm(source.vm, features).map_err(|e| local(e.into()))?;
    writer
        .write_section(VM_STATE, 0, VM_STATE_VERSION, &vm_state)
        .map_err(|e| local(Reason::State(e)))?;
    let state = writer.finish().map_err(|e| local(Reason::State(e)))?;
    let capture = paused.elapsed();

    let dirty = owed
        .collect(source.vm, source.marked)
        .map_err(|e| local(e.into()))?;
    progress(&Progress {
        round,
        stopped: true,
        pages_sent,
        bytes_sent: link.out.bytes(),
        dirty_pages: dirty,
        dirty_rate: 0.0,
        bandwidth: 0.0,
        expected_downtime: Duration::ZERO,
    });
    let memory = source.vm.memory();
    let mut final_pages = 0;
    for (index, pages) in owed.take_runs() {
        let addr = regions[index as usize].guest_addr;
        final_pages += link.send_run(phase, &memory, (index, addr), pages, false)?;
    }
    link.flush(phase)?;
    link.send(phase, wire::STATE, &state)?;
    let final_copy = paused.elapsed().saturating_sub(capture);
    link.recv(Phase::Confirm, "a confirmation")?;
    Ok(Stopped {
        final_pages,
        paused,
        pausing,
        capture,
        final_copy,
    })
}
