//! Keeping a Xen vCPU out of the guest while its thread is outside `run()`, and changing
//! vCPU state without disturbing the other vCPUs.
//!
//! # Keeping vCPUs still outside `run()`
//!
//! On KVM a vCPU executes only inside `KVM_RUN`. On Xen a vCPU runs whenever the domain is
//! unpaused, so vmkit takes a vCPU *offline* (`VPF_down`, by setting its vCPU context
//! without `VGCF_online`) whenever its thread is outside `run()` without an I/O access in
//! flight: after creation, after a kick, after a `hlt`. Xen has no per-vCPU pause for a
//! toolstack (the gdbsx domctls are not built into release hypervisors), and taking a vCPU
//! offline is what Xen itself does to a vCPU that halts with interrupts disabled. Every
//! such transition happens with the whole domain paused, under one lock ([`Control`]), so
//! no vCPU moves while vmkit looks at it.
//!
//! Two consequences:
//! - Xen saves no CPU record for an offline vCPU, so reading or writing its registers
//!   brings it online for the moment, with the domain paused.
//! - When every vCPU is offline because the guest halted them (`cli; hlt`), Xen powers the
//!   domain off. That shutdown is vmkit's doing, not the guest's: it is recognised (a
//!   power-off with no vCPU online) and undone (`XEN_DOMCTL_resumedomain`) before a vCPU
//!   runs again. A guest that powers off by hypercall does so from an online vCPU.
//!
//! Loading HVM records (`xc_domain_hvm_setcontext`) takes every vCPU offline and brings back
//! those whose CPU record the load contains, so a load carries the CPU record of every online
//! vCPU. It also cancels each loaded vCPU's instruction emulation: a vCPU waiting for the
//! answer to an I/O request takes the answer, but then executes the instruction again and
//! sends the same request once more. vmkit recognises that repeat ([`Replay`]) and answers
//! it with the answer already given, without an exit, so the VMM sees each access once.
//! A port write (`out`) is the exception: Xen retired it before sending it and takes nothing
//! back from the answer, so it is never sent again, and the vCPU whose state changes may be
//! in the middle of one ([`retired_port_write`]). Otherwise the vCPU whose state changes must
//! not be in the middle of an I/O access itself.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use super::context::{self, Record, XsaveRecord};
use super::ioreq::RawRequest;
use super::libs::{PolicySource, XenCallError};
use super::sys::abi::{
    CpuidLeaf, DomainInfo, HvmHwCpu, Pod, VcpuGuestContext, HVM_CPU_XSAVE_HEADER_SIZE,
    HVM_SAVE_CODE_CPU, HVM_SAVE_CODE_CPU_XSAVE, IOREQ_TYPE_PIO, SHUTDOWN_POWEROFF,
    STATE_IOREQ_INPROCESS, STATE_IOREQ_NONE, STATE_IOREQ_READY, STATE_IORESP_READY,
    VGCF_I387_VALID, VGCF_ONLINE, XEN_DOMINF_DYING, XEN_DOMINF_SHUTDOWN, XEN_DOMINF_SHUTDOWNMASK,
    XEN_DOMINF_SHUTDOWNSHIFT, XEN_X86_FPU_INITIALISED,
};
use super::vm::{lock, Shutdown, VmShared};

/// What [`VmShared::park`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Parked {
    /// The vCPU is offline. `blocked`: it was halted in Xen (`hlt` with interrupts
    /// enabled) when taken offline, and stays so when it comes back online (Xen keeps the
    /// block: an interrupt ends it).
    Offline { blocked: bool },
    /// The vCPU waits for an I/O request vmkit has not answered: it cannot run anyway.
    InIo,
    /// The guest had halted the vCPU already.
    Halted,
    /// The domain is shutting down: its vCPUs are paused by Xen.
    ShuttingDown,
}

/// What [`VmShared::status`] found about a running vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Running,
    /// The guest halted the vCPU (`hlt` with interrupts disabled).
    Halted,
    /// The domain shut down.
    Shutdown(Shutdown),
}

/// A request a state load made vCPU `n` send again (see the module docs): the next request
/// it sends once it has been answered `after` times, if equal to `request`, gets the
/// previous answer without an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Replay {
    pub(crate) request: RawRequest,
    pub(crate) after: u64,
}

/// Whether Xen has retired the instruction of `request` already and takes nothing back
/// from its answer: a port write that is not a string instruction. Xen moves `rip` past an
/// `out` before it sends the request (`handle_pio`, on AMD SVM and Intel VMX alike), and
/// completes nothing when the vCPU consumes the answer (`ioreq_needs_completion` is false
/// for it). So neither a register write nor a state load (both cancel the vCPU's emulation,
/// `hvmemul_cancel`) disturbs it, and a load never makes the vCPU send it again. Any other
/// access has Xen write its answer into the vCPU (a port read's `rax`) or emulate the
/// instruction again (MMIO).
pub(crate) fn retired_port_write(request: &RawRequest) -> bool {
    request.kind == IOREQ_TYPE_PIO
        && !request.dir_read
        && !request.data_is_ptr
        && request.count == 1
}

/// Whether `again` is `first` sent a second time (same access, same data).
pub(crate) fn same_request(first: &RawRequest, again: &RawRequest) -> bool {
    first.kind == again.kind
        && first.addr == again.addr
        && first.size == again.size
        && first.count == again.count
        && first.dir_read == again.dir_read
        && first.df == again.df
        && first.data_is_ptr == again.data_is_ptr
        && (first.dir_read && !first.data_is_ptr || first.data == again.data)
}

/// State guarded by the control lock.
#[derive(Debug)]
pub(crate) struct Control {
    /// The domain has been unpaused once (Xen creates it paused).
    pub(crate) started: bool,
    /// Which vCPUs exist on vmkit's side.
    pub(crate) created: Vec<bool>,
    /// The VM clock's base (see the `clock` module).
    pub(crate) clock: super::clock::ClockBase,
}

/// Why reading or writing vCPU state failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error(transparent)]
    Xen(#[from] XenCallError),
    /// Another (or this) vCPU has an I/O access in flight that a load would cancel.
    #[error(
        "vCPU {vcpu} has an I/O access in flight; finish it (run()) before changing this state"
    )]
    IoInFlight { vcpu: u32 },
    /// Xen returned a context vmkit cannot parse.
    #[error("Xen returned an unusable HVM context: {0}")]
    Context(String),
    /// The state asked for cannot be made on Xen.
    #[error("{0}")]
    Refused(String),
}

impl From<StateError> for XenCallError {
    /// A state error where only a Xen call's is expected (the offline and online moves,
    /// which now also keep XSAVE state).
    fn from(err: StateError) -> Self {
        match err {
            StateError::Xen(err) => err,
            other => XenCallError {
                op: "keeping a vCPU's XSAVE state across a vCPU context set",
                source: io::Error::other(other.to_string()),
            },
        }
    }
}

impl VmShared {
    /// Whether Xen has vCPU `id` online.
    pub(crate) fn is_online(&self, id: u32) -> Result<bool, XenCallError> {
        Ok(self.xc().vcpu_info(self.domid, id)?.online != 0)
    }

    /// Makes the CPU records Xen hands out one by one carry each vCPU's TSC as of now. Xen
    /// stamps a CPU record's `tsc` at the instant of the last whole save or load of the
    /// domain's context (`sync_tsc`), and a single-record read does not move that instant:
    /// without this a read returns the TSC of that moment, and loading it back would set the
    /// guest's TSC back by the time since. A whole save moves it. The domain must be paused.
    pub(crate) fn stamp_tsc(&self) -> Result<(), XenCallError> {
        self.xc().hvm_context(self.domid).map(drop)
    }

    /// Takes vCPU `id` offline or brings it online, keeping its registers and XSAVE state
    /// (see [`Self::set_context`]). The caller holds the control lock and has paused the
    /// domain.
    pub(crate) fn set_online(&self, id: u32, online: bool) -> Result<(), StateError> {
        let mut ctx = self.xc().vcpu_context(self.domid, id)?;
        trace!(
            "d{} vCPU {id}: online -> {online}, rip {:#x}",
            self.domid,
            ctx.user_regs.rip
        );
        if online {
            ctx.flags |= VGCF_ONLINE;
        } else {
            ctx.flags &= !VGCF_ONLINE;
        }
        match self.xsave_policy()? {
            // There already: a context set would only cost a load (which a vCPU in the
            // middle of an I/O access refuses).
            Some(_) if self.is_online(id)? == online => Ok(()),
            Some(leaves) => self.set_context_keeping_xsave(id, &mut ctx, &leaves),
            None => Ok(self.xc().set_vcpu_context(self.domid, id, &mut ctx)?),
        }
    }

    /// The domain's CPUID policy if a vCPU context set can lose XSAVE state: a PVH domain
    /// whose policy has XSAVE. `None` otherwise (nothing to keep).
    fn xsave_policy(&self) -> Result<Option<Vec<CpuidLeaf>>, XenCallError> {
        if self.hvm.is_none() {
            return Ok(None);
        }
        let leaves = self.xc().cpuid_policy(PolicySource::Domain(self.domid))?;
        Ok(context::has_xsave(&leaves).then_some(leaves))
    }

    /// Sets vCPU `id`'s context (`xc_vcpu_setcontext`) to `ctx`, keeping its XSAVE state.
    /// Xen's context set resets XSTATE_BV to x87 and SSE (`vcpu_setup_fpu`), dropping the
    /// components above SSE (AVX's upper halves, PKRU…); in a domain whose CPUID policy has
    /// XSAVE the vCPU's XSAVE record is read before and loaded back after (pausing the
    /// domain for that), with the x87 and SSE state of `ctx`. `control` is the control lock,
    /// which the caller holds.
    pub(crate) fn set_context(
        &self,
        control: &MutexGuard<'_, Control>,
        id: u32,
        ctx: &mut VcpuGuestContext,
    ) -> Result<(), StateError> {
        match self.xsave_policy()? {
            Some(leaves) => {
                self.with_paused(control, |vm| vm.set_context_keeping_xsave(id, ctx, &leaves))
            }
            None => Ok(self.xc().set_vcpu_context(self.domid, id, ctx)?),
        }
    }

    /// [`Self::set_context`] in a domain whose CPUID policy (`leaves`) has XSAVE. The vCPU's
    /// XSAVE record is read before the set, or, if vmkit took it offline, is the record kept
    /// then (that set reset Xen's). The record is loaded back if the vCPU is online after the set,
    /// and kept for its next online move otherwise (a load would bring it online). The
    /// caller holds the control lock and has paused the domain.
    fn set_context_keeping_xsave(
        &self,
        id: u32,
        ctx: &mut VcpuGuestContext,
        leaves: &[CpuidLeaf],
    ) -> Result<(), StateError> {
        let stashed = match self.is_online(id)? {
            true => None,
            false => lock(&self.offline_xsave)
                .get_mut(id as usize)
                .and_then(Option::take),
        };
        // Not taken offline by vmkit (online, or halted by the guest, which sets no
        // context): Xen's record is the state, readable online or not.
        let kept = match stashed {
            Some(record) => Some(record),
            None => self.xsave_record(id, leaves)?,
        };
        self.xc().set_vcpu_context(self.domid, id, ctx)?;
        let Some(mut kept) = kept else {
            // Xen keeps no record (XCR0 never set): nothing above SSE to keep.
            return Ok(());
        };
        if ctx.flags & VGCF_I387_VALID != 0 {
            // The x87 and SSE state are those just set.
            kept.set_fxsave_image(&ctx.fpu_ctxt);
        }
        if ctx.flags & VGCF_ONLINE == 0 {
            if let Some(slot) = lock(&self.offline_xsave).get_mut(id as usize) {
                *slot = Some(kept);
            }
            return Ok(());
        }
        let record = Record {
            typecode: HVM_SAVE_CODE_CPU_XSAVE,
            instance: id as u16,
            data: kept.to_bytes(),
        };
        self.load_records(id, None, |_| {}, &[record])
    }

    /// If the domain is shut down only because every vCPU went offline (see the module
    /// docs), undoes that. The domain must be paused (so no vCPU goes offline meanwhile).
    fn undo_all_offline_shutdown(&self) -> Result<(), XenCallError> {
        let info = self.domain_info()?;
        let shutdown = shutdown_of(&info);
        if shutdown.is_some_and(|s| s.reason == SHUTDOWN_POWEROFF) && info.nr_online_vcpus == 0 {
            trace!(
                "d{}: every vCPU is offline; undoing Xen's power-off",
                self.domid
            );
            self.xc().resume(self.domid)?;
        }
        Ok(())
    }

    /// Lets vCPU `id` run: brings it online and, the first time, unpauses the domain.
    pub(crate) fn unpark(&self, id: u32) -> Result<(), XenCallError> {
        let mut control = self.control();
        self.with_paused(&control, |vm| {
            vm.undo_all_offline_shutdown()?;
            vm.set_online(id, true)
        })?;
        if !control.started {
            self.xc().unpause(self.domid)?;
            control.started = true;
        }
        Ok(())
    }

    /// Stops vCPU `id` from running (a kick): takes it offline unless it cannot run anyway.
    pub(crate) fn park(&self, id: u32) -> Result<Parked, XenCallError> {
        let slot_state = || self.slot(id).map(|s| s.state());
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            // A vCPU waiting for vmkit's answer stays waiting: no need to stop it.
            if let Some(STATE_IOREQ_READY | STATE_IOREQ_INPROCESS) = slot_state() {
                return Ok(Parked::InIo);
            }
            let control = self.control();
            let parked = self.with_paused(&control, |vm| {
                let info = vm.domain_info()?;
                let vcpu = vm.xc().vcpu_info(vm.domid, id)?;
                let online = vcpu.online != 0;
                if shutdown_of(&info).is_some() && online {
                    return Ok(Some(Parked::ShuttingDown));
                }
                match slot_state() {
                    Some(STATE_IOREQ_READY | STATE_IOREQ_INPROCESS) => {
                        return Ok(Some(Parked::InIo))
                    }
                    // Xen has not taken the answer yet: let it, then look again. (If it
                    // does not within a second, the vCPU is not running guest code
                    // anyway.)
                    Some(STATE_IORESP_READY) if std::time::Instant::now() < give_up => {
                        return Ok(None)
                    }
                    Some(STATE_IORESP_READY) => return Ok(Some(Parked::InIo)),
                    _ => {}
                }
                if !online {
                    return Ok(Some(Parked::Halted));
                }
                vm.set_online(id, false)?;
                Ok::<_, XenCallError>(Some(Parked::Offline {
                    blocked: vcpu.blocked != 0,
                }))
            })?;
            drop(control);
            match parked {
                Some(parked) => return Ok(parked),
                None => std::thread::sleep(std::time::Duration::from_micros(50)),
            }
        }
    }

    /// Looks at a vCPU that should be running: has the guest halted it, or shut down?
    pub(crate) fn status(&self, id: u32) -> Result<Status, XenCallError> {
        let _control = self.control();
        // The domain first: a vCPU that halts between the two looks is reported halted, so a
        // power-off caused by that halt is never taken for the guest's.
        let info = self.domain_info()?;
        if info.flags & XEN_DOMINF_DYING != 0 {
            return Err(XenCallError {
                op: "the domain is being destroyed",
                source: io::Error::from_raw_os_error(libc::ESRCH),
            });
        }
        if !self.is_online(id)? {
            return Ok(Status::Halted);
        }
        Ok(match shutdown_of(&info) {
            Some(shutdown) => Status::Shutdown(shutdown),
            None => Status::Running,
        })
    }

    /// Reads HVM records of vCPU `id`, `(typecode, length)` each, bringing the vCPU online
    /// for the moment if it is offline. Takes the control lock and pauses the domain.
    pub(crate) fn read_records(
        &self,
        id: u32,
        records: &[(u16, usize)],
    ) -> Result<Vec<Vec<u8>>, XenCallError> {
        let control = self.control();
        self.with_paused(&control, |vm| {
            let online = vm.is_online(id)?;
            if !online {
                vm.set_online(id, true)?;
            }
            if records
                .iter()
                .any(|&(typecode, _)| typecode == HVM_SAVE_CODE_CPU)
            {
                vm.stamp_tsc()?;
            }
            let read: Result<Vec<Vec<u8>>, XenCallError> = records
                .iter()
                .map(|&(typecode, len)| {
                    let mut buf = vec![0u8; len];
                    vm.xc()
                        .hvm_record(vm.domid, typecode, id as u16, &mut buf)
                        .map(|()| buf)
                })
                .collect();
            if !online {
                vm.set_online(id, false)?;
            }
            read
        })
    }

    /// vCPU `id`'s XSAVE record (see [`Self::xsave_record`]) and the domain's CPUID policy,
    /// bringing the vCPU online for the moment if it is offline. Takes the control lock and
    /// pauses the domain.
    pub(crate) fn read_xsave(
        &self,
        id: u32,
    ) -> Result<(Option<XsaveRecord>, Vec<CpuidLeaf>), StateError> {
        let control = self.control();
        self.with_paused(&control, |vm| {
            let leaves = vm.xc().cpuid_policy(PolicySource::Domain(vm.domid))?;
            let online = vm.is_online(id)?;
            if !online {
                // The record kept when vmkit took the vCPU offline is its state.
                let kept = lock(&vm.offline_xsave).get(id as usize).cloned().flatten();
                if kept.is_some() {
                    return Ok((kept, leaves));
                }
                vm.set_online(id, true)?;
            }
            let record = vm.xsave_record(id, &leaves);
            if !online {
                vm.set_online(id, false)?;
            }
            Ok((record?, leaves))
        })
    }

    /// Counts an answer given to vCPU `id`.
    pub(crate) fn count_answer(&self, id: u32) {
        if let Some(n) = self.answered.get(id as usize) {
            n.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Whether vCPU `id` has an I/O access in flight that a write of its state would
    /// disturb: any but a port write that vmkit has taken (`STATE_IOREQ_INPROCESS`: handed
    /// to the VMM as an exit, not answered yet; see [`retired_port_write`]). A request still
    /// `STATE_IOREQ_READY` blocks too: the VMM has not seen it, and would only see it after
    /// the write, in the new state's timeline. An answer Xen has not consumed
    /// (`STATE_IORESP_READY`) blocks as well: the vCPU may be running again by the time
    /// the request is read.
    pub(crate) fn io_blocks_state_writes(&self, id: u32) -> bool {
        let Some(slot) = self.slot(id) else {
            return false;
        };
        match slot.state() {
            STATE_IOREQ_NONE => false,
            STATE_IOREQ_INPROCESS => !retired_port_write(&slot.read()),
            _ => true,
        }
    }

    /// What vCPU `id` will send again after a load of its CPU record, to be answered as
    /// before: a load makes a vCPU in the middle of an I/O access send it again once
    /// answered (answered already, with `STATE_IORESP_READY`); not a port write, which Xen
    /// retired before sending it (a repeat of it is the guest's own). Read it with the
    /// domain paused, before the load; then hand it to [`Self::expect_replays`].
    pub(crate) fn replay_after_load(&self, id: u32) -> Option<Replay> {
        let slot = self.slot(id)?;
        let state = slot.state();
        if state == STATE_IOREQ_NONE || retired_port_write(&slot.read()) {
            return None;
        }
        let answered = self.answered.get(id as usize)?.load(Ordering::SeqCst);
        Some(Replay {
            request: slot.read(),
            after: answered + u64::from(state != STATE_IORESP_READY),
        })
    }

    /// Records, after a load, the accesses it makes vCPUs send again (from
    /// [`Self::replay_after_load`]), so that each repeat is answered as before.
    pub(crate) fn expect_replays(&self, replays: Vec<(u32, Replay)>) {
        let mut pending = lock(&self.replays);
        for (vcpu, replay) in replays {
            trace!(
                "d{} vCPU {vcpu}: will answer {} again",
                self.domid,
                replay.request
            );
            if let Some(slot) = pending.get_mut(vcpu as usize) {
                *slot = Some(replay);
            }
        }
    }

    /// If `request` from vCPU `id` repeats one a load made it send again, forgets the
    /// repeat and returns true: the caller answers it as before.
    pub(crate) fn take_replay(&self, id: u32, request: &RawRequest) -> bool {
        let answered = self
            .answered
            .get(id as usize)
            .map_or(0, |n| n.load(Ordering::SeqCst));
        let mut replays = lock(&self.replays);
        let Some(entry) = replays.get_mut(id as usize) else {
            return false;
        };
        match *entry {
            Some(replay) if answered >= replay.after => {
                *entry = None;
                same_request(&replay.request, request)
            }
            _ => false,
        }
    }
    /// Changes vCPU `id`'s CPU record (and loads `extra`, its other records, e.g. local APIC
    /// registers or XSAVE state), keeping it online or offline as it was. Takes the control
    /// lock and pauses the domain.
    pub(crate) fn edit_cpu(
        &self,
        id: u32,
        edit: impl FnOnce(&mut HvmHwCpu),
        extra: &[Record],
    ) -> Result<(), StateError> {
        let control = self.control();
        self.with_paused(&control, |vm| {
            let online = vm.is_online(id)?;
            vm.load_records(id, None, edit, extra)?;
            if !online {
                vm.set_online(id, false)?;
            }
            Ok(())
        })
    }

    /// Reads vCPU `vcpu`'s XSAVE record, its area cut to the components it holds; `None`
    /// if Xen keeps none (the host has no XSAVE, or the vCPU never had XCR0 set). `leaves`
    /// is the domain's CPUID policy, which sizes the areas. The caller holds the control
    /// lock and has paused the domain, with the vCPU online.
    pub(crate) fn xsave_record(
        &self,
        vcpu: u32,
        leaves: &[CpuidLeaf],
    ) -> Result<Option<XsaveRecord>, StateError> {
        if !context::has_xsave(leaves) {
            return Ok(None);
        }
        let max = context::xsave_area_size(context::xcr0_max(leaves), leaves).ok_or_else(|| {
            StateError::Context("the CPUID policy does not size every XSAVE component".into())
        })?;
        let mut buf = vec![0u8; HVM_CPU_XSAVE_HEADER_SIZE + max];
        match self
            .xc()
            .hvm_record(self.domid, HVM_SAVE_CODE_CPU_XSAVE, vcpu as u16, &mut buf)
        {
            Ok(()) => {}
            // No record of this type for the vCPU.
            Err(err)
                if matches!(
                    err.source.raw_os_error(),
                    Some(libc::ENOENT | libc::ENODATA)
                ) =>
            {
                return Ok(None)
            }
            Err(err) => return Err(err.into()),
        }
        let mut record = XsaveRecord::from_bytes(&buf)
            .ok_or_else(|| StateError::Context("a short XSAVE record".into()))?;
        // The buffer was sized for every component; the record holds those of xcr0_accum.
        let size = context::xsave_area_size(record.xcr0_accum, leaves).ok_or_else(|| {
            StateError::Context(format!(
                "XCR0_ACCUM {:#x} names a component the CPUID policy does not size",
                record.xcr0_accum
            ))
        })?;
        record.area.truncate(size);
        Ok(Some(record))
    }

    /// Loads vCPU `id`'s CPU record — `base` or its current one — changed by `edit`, plus
    /// `extra` (other records of `id`), together with the CPU record of every other online
    /// vCPU (a load takes every vCPU it has no record for offline). Each loaded vCPU's XSAVE
    /// record goes along unless `extra` has one: loading a CPU record resets the XSAVE
    /// components above SSE. `id` ends up online. The caller holds the control lock and has
    /// paused the domain.
    pub(crate) fn load_records(
        &self,
        id: u32,
        base: Option<HvmHwCpu>,
        edit: impl FnOnce(&mut HvmHwCpu),
        extra: &[Record],
    ) -> Result<(), StateError> {
        self.load_records_and(id, base, edit, extra, &[], false)
    }

    /// [`Self::load_records`], also loading `domain`: domain-wide records, kept as they are.
    /// With `id_unchanged` (the caller's `edit` leaves `id`'s record as it is), an access in
    /// flight on `id` is answered again like the other vCPUs' instead of refusing the load.
    fn load_records_and(
        &self,
        id: u32,
        base: Option<HvmHwCpu>,
        edit: impl FnOnce(&mut HvmHwCpu),
        extra: &[Record],
        domain: &[Record],
        id_unchanged: bool,
    ) -> Result<(), StateError> {
        if !id_unchanged && self.io_blocks_state_writes(id) {
            return Err(StateError::IoInFlight { vcpu: id });
        }
        let cpu_len = std::mem::size_of::<HvmHwCpu>();
        let record = |vcpu: u32| -> Result<Vec<u8>, XenCallError> {
            let mut buf = vec![0u8; cpu_len];
            self.xc()
                .hvm_record(self.domid, HVM_SAVE_CODE_CPU, vcpu as u16, &mut buf)
                .map(|()| buf)
        };
        let Some(hvm) = &self.hvm else {
            return Err(StateError::Context(
                "a PV vCPU has no HVM state records".to_string(),
            ));
        };
        // The records read below carry each vCPU's TSC as of now, which the load then
        // applies (rather than as of the last whole save or load).
        self.stamp_tsc()?;
        let mut load = vec![hvm.header.clone()];
        let mut replays = Vec::new();
        let leaves = self.xc().cpuid_policy(PolicySource::Domain(self.domid))?;
        let xsave = |vcpu: u32| -> Result<Option<Record>, StateError> {
            Ok(self.xsave_record(vcpu, &leaves)?.map(|r| Record {
                typecode: HVM_SAVE_CODE_CPU_XSAVE,
                instance: vcpu as u16,
                data: r.to_bytes(),
            }))
        };
        for vcpu in (0..self.config.max_vcpus).filter(|&v| v != id) {
            if !self.is_online(vcpu)? {
                continue;
            }
            load.push(Record {
                typecode: HVM_SAVE_CODE_CPU,
                instance: vcpu as u16,
                data: record(vcpu)?,
            });
            load.extend(xsave(vcpu)?);
            replays.extend(self.replay_after_load(vcpu).map(|r| (vcpu, r)));
        }
        if id_unchanged {
            replays.extend(self.replay_after_load(id).map(|r| (id, r)));
        }
        let mut cpu = match base {
            Some(cpu) => cpu,
            None => {
                if !self.is_online(id)? {
                    // An offline vCPU has no CPU record to start from.
                    self.set_online(id, true)?;
                }
                let bytes = record(id)?;
                HvmHwCpu::from_bytes(&bytes).ok_or_else(|| {
                    StateError::Context(format!("a CPU record of {} bytes", bytes.len()))
                })?
            }
        };
        edit(&mut cpu);
        if let Some(area) = extra
            .iter()
            .find(|r| r.typecode == HVM_SAVE_CODE_CPU_XSAVE)
            .and_then(|r| {
                r.data
                    .get(HVM_CPU_XSAVE_HEADER_SIZE..HVM_CPU_XSAVE_HEADER_SIZE + 512)
            })
        {
            // The FPU state is the XSAVE area's, and initialised: a CPU record without
            // XEN_X86_FPU_INITIALISED leaves Xen's `fpu_initialised` clear, and the next
            // vCPU context set (`set_online`) would then reset the loaded area to its initial
            // state (`vcpu_setup_fpu`: XSTATE_BV 0, MXCSR default).
            cpu.flags |= XEN_X86_FPU_INITIALISED;
            cpu.fpu_regs.copy_from_slice(area);
        }
        load.push(Record {
            typecode: HVM_SAVE_CODE_CPU,
            instance: id as u16,
            data: cpu.to_bytes(),
        });
        // Records load in order: the XSAVE record after the CPU record that resets it.
        if !extra.iter().any(|r| r.typecode == HVM_SAVE_CODE_CPU_XSAVE) && base.is_none() {
            load.extend(xsave(id)?);
        }
        load.extend(extra.iter().map(|r| Record {
            instance: id as u16,
            ..r.clone()
        }));
        load.extend(domain.iter().cloned());
        let mut buf = context::build(&load);
        self.xc().set_hvm_context(self.domid, &mut buf)?;
        self.expect_replays(replays);
        Ok(())
    }
}

impl VmShared {
    /// Loads domain-wide records (`records`, e.g. the PIT's) together with the CPU and
    /// XSAVE records of every online vCPU, since a load takes every vCPU it has no CPU record
    /// for offline; each vCPU stays as it was. The caller holds the control lock and has
    /// paused the domain.
    pub(crate) fn load_domain_records(&self, records: &[Record]) -> Result<(), StateError> {
        let online: Vec<u32> = (0..self.config.max_vcpus)
            .filter_map(|vcpu| match self.is_online(vcpu) {
                Ok(true) => Some(Ok(vcpu)),
                Ok(false) => None,
                Err(err) => Some(Err(err)),
            })
            .collect::<Result<_, _>>()?;
        // One without an I/O access in flight, if any (the others' accesses are answered
        // again after the load, see `replay_after_load`); else the first, whose record the
        // load keeps as it is, so its access is answered again too.
        let first = online
            .iter()
            .find(|&&v| self.slot(v).is_none_or(|s| s.state() == STATE_IOREQ_NONE))
            .or(online.first());
        match first {
            Some(&first) => self.load_records_and(first, None, |_| {}, &[], records, true),
            None => {
                let Some(hvm) = &self.hvm else {
                    return Err(StateError::Context(
                        "a PV domain has no HVM state records".to_string(),
                    ));
                };
                let mut load = vec![hvm.header.clone()];
                load.extend(records.iter().cloned());
                let mut buf = context::build(&load);
                self.xc().set_hvm_context(self.domid, &mut buf)?;
                Ok(())
            }
        }
    }
}

/// The shutdown in a domain's information, if it is shutting down.
fn shutdown_of(info: &DomainInfo) -> Option<Shutdown> {
    (info.flags & XEN_DOMINF_SHUTDOWN != 0).then_some(Shutdown {
        reason: info.flags >> XEN_DOMINF_SHUTDOWNSHIFT & XEN_DOMINF_SHUTDOWNMASK,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::sys::abi::{IOREQ_TYPE_COPY, IOREQ_TYPE_PIO};

    #[test]
    fn only_a_plain_port_write_counts_as_retired() {
        let out = RawRequest {
            kind: IOREQ_TYPE_PIO,
            addr: 0x81,
            size: 1,
            count: 1,
            ..RawRequest::default()
        };
        assert!(retired_port_write(&out));
        // A port read gets its answer written into rax by Xen.
        assert!(!retired_port_write(&RawRequest {
            dir_read: true,
            ..out
        }));
        // A string access (`outs`): its data is in guest memory.
        assert!(!retired_port_write(&RawRequest {
            data_is_ptr: true,
            count: 4,
            ..out
        }));
        // An MMIO write: Xen emulates the instruction again once answered.
        assert!(!retired_port_write(&RawRequest {
            kind: IOREQ_TYPE_COPY,
            ..out
        }));
    }

    #[test]
    fn a_repeated_request_is_recognised_and_a_different_one_is_not() {
        let out = RawRequest {
            kind: IOREQ_TYPE_PIO,
            addr: 0x81,
            size: 4,
            count: 1,
            data: 7,
            ..RawRequest::default()
        };
        assert!(same_request(&out, &out));
        // A write with other data is another access.
        assert!(!same_request(&out, &RawRequest { data: 8, ..out }));
        assert!(!same_request(&out, &RawRequest { addr: 0x82, ..out }));
        // A read's data field carries nothing: it may differ.
        let read = RawRequest {
            kind: IOREQ_TYPE_COPY,
            dir_read: true,
            ..out
        };
        assert!(same_request(&read, &RawRequest { data: 99, ..read }));
        assert!(!same_request(
            &read,
            &RawRequest {
                dir_read: false,
                ..read
            }
        ));
    }
}
