//! KVM vCPUs: `KVM_RUN` and the register and state ioctls.

use std::ptr::NonNull;
use std::sync::Arc;

use kvm_bindings::{
    kvm_guest_debug, kvm_mp_state, kvm_xcrs, CpuId, Msrs, Xsave as KvmXsave, KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, KVM_MAX_CPUID_ENTRIES, KVM_MAX_XCRS,
};
use kvm_ioctls::{Cap, VcpuFd};
use vmm_sys_util::errno;
use vmm_sys_util::ioctl::ioctl;
use vmm_sys_util::ioctl_io_nr;

use super::exit;
use super::kick::KickState;
use super::os_error;
use super::vm::VmShared;
use crate::arch::x86_64::{
    CpuidEntry, Fpu, LapicState, MpState, Msr, Regs, SpecialRegs, VcpuEvents, Xcr, Xsave,
};
use crate::vcpu::{GuestDebug, KickHandle, Vcpu, VcpuError, VcpuExit};

ioctl_io_nr!(KVM_RUN, kvm_bindings::KVMIO, 0x80);

/// Size in bytes of the fixed part of `struct kvm_xsave`.
const LEGACY_XSAVE_BYTES: usize = std::mem::size_of::<kvm_bindings::kvm_xsave>();

/// A KVM vCPU.
#[derive(Debug)]
pub struct KvmVcpu {
    fd: VcpuFd,
    id: u32,
    // Keeps the VM, and so guest memory, alive while this vCPU exists.
    vm: Arc<VmShared>,
    kick: Arc<KickState>,
    /// Start and size of the vCPU's kvm_run mapping (owned by `fd`).
    run: NonNull<u8>,
    run_size: usize,
}

// SAFETY: `run` points into the kvm_run mapping owned by `fd`, which moves with the vCPU; it
// is only dereferenced through `&mut self` in `run()`. Everything else is Send.
unsafe impl Send for KvmVcpu {}

impl Drop for KvmVcpu {
    fn drop(&mut self) {
        // Kick handles may outlive the vCPU: stop them touching its kvm_run before it is
        // unmapped with `fd`.
        self.kick.detach();
    }
}

impl KvmVcpu {
    pub(crate) fn new(mut fd: VcpuFd, id: u32, vm: Arc<VmShared>) -> Self {
        let run_struct = fd.get_kvm_run();
        let immediate_exit = std::ptr::addr_of_mut!(run_struct.immediate_exit);
        let run = NonNull::from(run_struct).cast::<u8>();
        let kick = Arc::new(KickState::new(immediate_exit));
        let run_size = vm.vcpu_mmap_size;
        KvmVcpu {
            fd,
            id,
            vm,
            kick,
            run,
            run_size,
        }
    }

    /// The underlying `kvm-ioctls` vCPU, for what vmkit does not wrap.
    pub fn as_vcpu_fd(&self) -> &VcpuFd {
        &self.fd
    }

    fn os(&self, op: &'static str) -> impl FnOnce(errno::Error) -> VcpuError {
        let vcpu = self.id;
        move |err| VcpuError::Os {
            vcpu,
            op,
            source: os_error(err),
        }
    }

    fn invalid(&self, what: &'static str, reason: String) -> VcpuError {
        VcpuError::InvalidState {
            vcpu: self.id,
            what,
            reason,
        }
    }

    fn require(
        &self,
        present: bool,
        feature: &'static str,
        reason: &'static str,
    ) -> Result<(), VcpuError> {
        if present {
            Ok(())
        } else {
            Err(VcpuError::Unsupported {
                vcpu: self.id,
                op: feature,
                reason,
            })
        }
    }

    fn require_irqchip(&self) -> Result<(), VcpuError> {
        self.require(
            self.vm.config.irqchip,
            "local APIC state",
            "the VM was created without an in-kernel irqchip (VmConfig::irqchip)",
        )
    }

    /// Bytes KVM exchanges for the XSAVE area: `KVM_CAP_XSAVE2` when the kernel has it.
    fn xsave_size(&self) -> usize {
        let size = self.vm.fd.check_extension_int(Cap::Xsave2);
        usize::try_from(size).unwrap_or(0).max(LEGACY_XSAVE_BYTES)
    }

    /// A zeroed `kvm_xsave2` big enough for `bytes` bytes of XSAVE area.
    fn xsave_buffer(&self, bytes: usize) -> Result<KvmXsave, VcpuError> {
        let extra_words = bytes.saturating_sub(LEGACY_XSAVE_BYTES).div_ceil(4);
        KvmXsave::new(extra_words).map_err(|err| {
            self.invalid(
                "XSAVE area",
                format!("cannot allocate {bytes} bytes: {err:?}"),
            )
        })
    }
}

impl Vcpu for KvmVcpu {
    fn id(&self) -> u32 {
        self.id
    }

    fn run(&mut self) -> Result<VcpuExit<'_>, VcpuError> {
        if self.kick.before_run() {
            return Ok(VcpuExit::Kicked);
        }
        // KVM_RUN is issued here rather than through kvm-ioctls so that the exit is decoded
        // once, with the I/O access width kvm-ioctls does not pass on (see exit.rs).
        // SAFETY: KVM_RUN takes no argument and the fd is a vCPU fd; the result is checked.
        let ret = unsafe { ioctl(&self.fd, KVM_RUN()) };
        if ret < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EINTR) | Some(libc::EAGAIN) if self.kick.consume() => {
                    Ok(VcpuExit::Kicked)
                }
                Some(libc::EINTR) | Some(libc::EAGAIN) => Ok(VcpuExit::Interrupted),
                _ => Err(VcpuError::Os {
                    vcpu: self.id,
                    op: "KVM_RUN",
                    source: err,
                }),
            };
        }
        // SAFETY: `run` is this vCPU's kvm_run mapping of `run_size` bytes, alive as long as
        // `self.fd`; KVM finished writing it when KVM_RUN returned, and `&mut self` keeps
        // everything else away from it for the life of the returned exit.
        let exit = unsafe { exit::decode(self.run, self.run_size) };
        Ok(match exit {
            VcpuExit::Interrupted if self.kick.consume() => VcpuExit::Kicked,
            exit => exit,
        })
    }

    fn kick_handle(&self) -> KickHandle {
        KickHandle::new(self.kick.clone())
    }

    fn complete_pending_io(&self) -> Result<(), VcpuError> {
        // KVM completes a port or MMIO access (and moves RIP past it) on the next KVM_RUN;
        // with immediate_exit set, that KVM_RUN does just this and returns EINTR.
        let enter = || {
            // SAFETY: KVM_RUN takes no argument and the fd is a vCPU fd. No exit can be
            // borrowed from this vCPU (exits borrow it mutably), so KVM rewriting kvm_run's
            // exit fields disturbs no reader; the result is checked below.
            unsafe { ioctl(&self.fd, KVM_RUN()) }
        };
        let ret = self.kick.with_immediate_exit(enter);
        let err = std::io::Error::last_os_error();
        match (ret, err.raw_os_error()) {
            (0.., _) | (_, Some(libc::EINTR | libc::EAGAIN)) => Ok(()),
            _ => Err(VcpuError::Os {
                vcpu: self.id,
                op: "KVM_RUN (immediate exit, to complete pending I/O)",
                source: err,
            }),
        }
    }

    fn set_guest_debug(&self, debug: &GuestDebug) -> Result<(), VcpuError> {
        if debug.hw_breakpoints.len() > GuestDebug::MAX_HW_BREAKPOINTS {
            return Err(self.invalid(
                "guest debug",
                format!(
                    "{} hardware breakpoints, x86 has {}",
                    debug.hw_breakpoints.len(),
                    GuestDebug::MAX_HW_BREAKPOINTS
                ),
            ));
        }
        let mut raw = kvm_guest_debug::default();
        if debug.single_step || !debug.hw_breakpoints.is_empty() {
            raw.control = KVM_GUESTDBG_ENABLE;
        }
        if debug.single_step {
            raw.control |= KVM_GUESTDBG_SINGLESTEP;
        }
        if !debug.hw_breakpoints.is_empty() {
            raw.control |= KVM_GUESTDBG_USE_HW_BP;
        }
        for (i, &addr) in debug.hw_breakpoints.iter().enumerate() {
            raw.arch.debugreg[i] = addr;
            // DR7: global-enable bit G<i>; R/W and LEN 0 mean "break on execution".
            raw.arch.debugreg[7] |= 1 << (2 * i + 1);
        }
        self.fd
            .set_guest_debug(&raw)
            .map_err(self.os("KVM_SET_GUEST_DEBUG"))
    }

    fn regs(&self) -> Result<Regs, VcpuError> {
        self.fd
            .get_regs()
            .map(Regs::from)
            .map_err(self.os("KVM_GET_REGS"))
    }

    fn set_regs(&self, regs: &Regs) -> Result<(), VcpuError> {
        self.fd
            .set_regs(&regs.into())
            .map_err(self.os("KVM_SET_REGS"))
    }

    fn read_virtual(&self, gva: u64, buf: &mut [u8]) -> Result<usize, VcpuError> {
        use vm_memory::{Bytes, GuestAddress};
        const PAGE: u64 = 4096;
        let memory = self.vm.regions().memory();
        let mut done = 0;
        while done < buf.len() {
            let addr = gva.wrapping_add(done as u64);
            let translation = self
                .fd
                .translate_gva(addr)
                .map_err(self.os("KVM_TRANSLATE"))?;
            if translation.valid == 0 {
                break;
            }
            // One page at a time: the next one may map elsewhere, or nowhere.
            let in_page = usize::try_from(PAGE - addr % PAGE).unwrap_or(usize::MAX);
            let end = done.saturating_add(in_page).min(buf.len());
            let Some(chunk) = buf.get_mut(done..end) else {
                break;
            };
            if memory
                .read_slice(chunk, GuestAddress(translation.physical_address))
                .is_err()
            {
                break;
            }
            done = end;
        }
        Ok(done)
    }

    fn sregs(&self) -> Result<SpecialRegs, VcpuError> {
        self.fd
            .get_sregs()
            .map(SpecialRegs::from)
            .map_err(self.os("KVM_GET_SREGS"))
    }

    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<(), VcpuError> {
        self.fd
            .set_sregs(&sregs.into())
            .map_err(self.os("KVM_SET_SREGS"))
    }

    fn fpu(&self) -> Result<Fpu, VcpuError> {
        self.fd
            .get_fpu()
            .map(Fpu::from)
            .map_err(self.os("KVM_GET_FPU"))
    }

    fn set_fpu(&self, fpu: &Fpu) -> Result<(), VcpuError> {
        self.fd.set_fpu(&fpu.into()).map_err(self.os("KVM_SET_FPU"))
    }

    fn msrs(&self, indices: &[u32]) -> Result<Vec<Msr>, VcpuError> {
        let entries: Vec<_> = indices
            .iter()
            .map(|&index| kvm_bindings::kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|err| {
            self.invalid("MSR list", format!("{} entries: {err:?}", entries.len()))
        })?;
        let read = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(self.os("KVM_GET_MSRS"))?;
        if let Some(index) = indices.get(read) {
            return Err(self.invalid("MSR list", format!("MSR {index:#x} cannot be read")));
        }
        Ok(msrs.as_slice().iter().copied().map(Msr::from).collect())
    }

    fn set_msrs(&self, msrs: &[Msr]) -> Result<(), VcpuError> {
        let entries: Vec<_> = msrs.iter().map(Into::into).collect();
        let raw = Msrs::from_entries(&entries).map_err(|err| {
            self.invalid("MSR list", format!("{} entries: {err:?}", entries.len()))
        })?;
        let written = self.fd.set_msrs(&raw).map_err(self.os("KVM_SET_MSRS"))?;
        if let Some(msr) = msrs.get(written) {
            return Err(self.invalid(
                "MSR list",
                format!("MSR {:#x} refused the value {:#x}", msr.index, msr.data),
            ));
        }
        Ok(())
    }

    fn cpuid(&self) -> Result<Vec<CpuidEntry>, VcpuError> {
        let cpuid = self
            .fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(self.os("KVM_GET_CPUID2"))?;
        Ok(cpuid
            .as_slice()
            .iter()
            .copied()
            .map(CpuidEntry::from)
            .collect())
    }

    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<(), VcpuError> {
        if entries.len() > KVM_MAX_CPUID_ENTRIES {
            return Err(self.invalid(
                "CPUID",
                format!(
                    "{} entries, KVM takes at most {KVM_MAX_CPUID_ENTRIES}",
                    entries.len()
                ),
            ));
        }
        let raw: Vec<_> = entries.iter().map(Into::into).collect();
        let cpuid = CpuId::from_entries(&raw)
            .map_err(|err| self.invalid("CPUID", format!("{} entries: {err:?}", raw.len())))?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.os("KVM_SET_CPUID2"))
    }

    fn lapic(&self) -> Result<LapicState, VcpuError> {
        self.require_irqchip()?;
        let raw = self.fd.get_lapic().map_err(self.os("KVM_GET_LAPIC"))?;
        Ok(LapicState::from(&raw))
    }

    fn set_lapic(&self, lapic: &LapicState) -> Result<(), VcpuError> {
        self.require_irqchip()?;
        self.fd
            .set_lapic(&lapic.into())
            .map_err(self.os("KVM_SET_LAPIC"))
    }

    fn xsave(&self) -> Result<Xsave, VcpuError> {
        self.require(
            self.vm.capabilities.xsave,
            "XSAVE state",
            "KVM lacks KVM_CAP_XSAVE",
        )?;
        let bytes = self.xsave_size();
        let mut raw = self.xsave_buffer(bytes)?;
        // SAFETY: the buffer was sized just above from KVM_CAP_XSAVE2, the size the kernel
        // copies out; vmkit never enables extra XSTATE features after that query.
        unsafe { self.fd.get_xsave2(&mut raw) }.map_err(self.os("KVM_GET_XSAVE2"))?;
        let mut region = raw.as_fam_struct_ref().xsave.region.to_vec();
        region.extend_from_slice(raw.as_slice());
        region.truncate(bytes / 4);
        Ok(Xsave { region })
    }

    fn set_xsave(&self, xsave: &Xsave) -> Result<(), VcpuError> {
        self.require(
            self.vm.capabilities.xsave,
            "XSAVE state",
            "KVM lacks KVM_CAP_XSAVE",
        )?;
        let bytes = self.xsave_size();
        if xsave.region.len() * 4 != bytes {
            return Err(self.invalid(
                "XSAVE area",
                format!(
                    "{} bytes given, KVM exchanges {bytes}",
                    xsave.region.len() * 4
                ),
            ));
        }
        let mut raw = self.xsave_buffer(bytes)?;
        let (legacy, extra) = xsave.region.split_at(LEGACY_XSAVE_BYTES / 4);
        // SAFETY: only the fixed `region` array is written, not the FAM length field, so the
        // wrapper's length stays consistent with its allocation.
        unsafe { raw.as_mut_fam_struct() }
            .xsave
            .region
            .copy_from_slice(legacy);
        raw.as_mut_slice()[..extra.len()].copy_from_slice(extra);
        // SAFETY: the buffer holds KVM_CAP_XSAVE2 bytes, all the kernel reads.
        unsafe { self.fd.set_xsave2(&raw) }.map_err(self.os("KVM_SET_XSAVE"))
    }

    fn xcrs(&self) -> Result<Vec<Xcr>, VcpuError> {
        self.require(self.vm.capabilities.xcrs, "XCRs", "KVM lacks KVM_CAP_XCRS")?;
        let raw = self.fd.get_xcrs().map_err(self.os("KVM_GET_XCRS"))?;
        let count = (raw.nr_xcrs as usize).min(raw.xcrs.len());
        Ok(raw.xcrs[..count].iter().copied().map(Xcr::from).collect())
    }

    fn set_xcrs(&self, xcrs: &[Xcr]) -> Result<(), VcpuError> {
        self.require(self.vm.capabilities.xcrs, "XCRs", "KVM lacks KVM_CAP_XCRS")?;
        let mut raw = kvm_xcrs::default();
        if xcrs.len() > KVM_MAX_XCRS as usize {
            return Err(self.invalid(
                "XCRs",
                format!("{} given, KVM takes at most {KVM_MAX_XCRS}", xcrs.len()),
            ));
        }
        for (to, from) in raw.xcrs.iter_mut().zip(xcrs) {
            *to = from.into();
        }
        raw.nr_xcrs = xcrs.len() as u32;
        self.fd.set_xcrs(&raw).map_err(self.os("KVM_SET_XCRS"))
    }

    fn vcpu_events(&self) -> Result<VcpuEvents, VcpuError> {
        self.require(
            self.vm.capabilities.vcpu_events,
            "vCPU events",
            "KVM lacks KVM_CAP_VCPU_EVENTS",
        )?;
        self.fd
            .get_vcpu_events()
            .map(VcpuEvents::from)
            .map_err(self.os("KVM_GET_VCPU_EVENTS"))
    }

    fn set_vcpu_events(&self, events: &VcpuEvents) -> Result<(), VcpuError> {
        self.require(
            self.vm.capabilities.vcpu_events,
            "vCPU events",
            "KVM lacks KVM_CAP_VCPU_EVENTS",
        )?;
        self.fd
            .set_vcpu_events(&events.into())
            .map_err(self.os("KVM_SET_VCPU_EVENTS"))
    }

    fn setup_mce(&self, banks: u8) -> Result<(), VcpuError> {
        let max = self.vm.capabilities.mce_banks;
        self.require(
            max != 0,
            "machine-check banks",
            "KVM on this host has no KVM_CAP_MCE",
        )?;
        if banks == 0 || u32::from(banks) > max {
            return Err(self.invalid(
                "machine-check bank count",
                format!("{banks} banks requested, KVM allows 1 to {max}"),
            ));
        }
        super::platform::setup_mce(&self.fd, u64::from(banks) | super::platform::MCG_CTL_P)
            .map_err(self.os("KVM_X86_SETUP_MCE"))
    }

    fn mp_state(&self) -> Result<MpState, VcpuError> {
        self.fd
            .get_mp_state()
            .map(MpState::from)
            .map_err(self.os("KVM_GET_MP_STATE"))
    }

    fn set_mp_state(&self, state: MpState) -> Result<(), VcpuError> {
        self.fd
            .set_mp_state(kvm_mp_state::from(state))
            .map_err(self.os("KVM_SET_MP_STATE"))
    }
}
