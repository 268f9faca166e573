//! vCPU state on Xen: conversions between vmkit's register types and Xen's HVM CPU record
//! (`struct hvm_hw_cpu`) and vCPU context (`struct vcpu_guest_context`), and the HVM context
//! buffer format (a header record, typed records, an end marker).

use super::sys::abi::{
    CpuUserRegs, CpuidLeaf, HvmHwCpu, HvmSaveDescriptor, HvmSaveHeader, Pod,
    HVM_CPU_XSAVE_HEADER_SIZE, HVM_FILE_MAGIC, HVM_SAVE_CODE_END, HVM_SAVE_CODE_HEADER,
};
use crate::arch::x86_64::{
    msr_index, DescriptorTable, Fpu, Msr, Regs, Segment, SpecialRegs, VcpuEventField, VcpuEvents,
};

/// One record of an HVM context buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) typecode: u16,
    pub(crate) instance: u16,
    pub(crate) data: Vec<u8>,
}

/// Why a context buffer could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ContextError {
    /// A record claims more bytes than the buffer has.
    #[error("HVM context record {typecode} at byte {offset} overruns the buffer")]
    Truncated { typecode: u16, offset: usize },
    /// The buffer does not start with a valid header record.
    #[error("HVM context does not start with a header record")]
    NoHeader,
}

/// Splits an HVM context buffer into its records, up to (not including) the end marker.
/// The header comes first.
pub(crate) fn parse(buf: &[u8]) -> Result<Vec<Record>, ContextError> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    let desc_len = std::mem::size_of::<HvmSaveDescriptor>();
    while let Some(desc) = buf.get(offset..).and_then(HvmSaveDescriptor::from_bytes) {
        if desc.typecode == HVM_SAVE_CODE_END {
            break;
        }
        let start = offset + desc_len;
        let end = start
            .checked_add(desc.length as usize)
            .filter(|&end| end <= buf.len())
            .ok_or(ContextError::Truncated {
                typecode: desc.typecode,
                offset,
            })?;
        records.push(Record {
            typecode: desc.typecode,
            instance: desc.instance,
            data: buf[start..end].to_vec(),
        });
        offset = end;
    }
    let header_ok = records.first().is_some_and(|r| {
        r.typecode == HVM_SAVE_CODE_HEADER
            && HvmSaveHeader::from_bytes(&r.data).is_some_and(|h| h.magic == HVM_FILE_MAGIC)
    });
    if !header_ok {
        return Err(ContextError::NoHeader);
    }
    Ok(records)
}

/// Builds a context buffer from `records` (the header first) and an end marker.
pub(crate) fn build<'a>(records: impl IntoIterator<Item = &'a Record>) -> Vec<u8> {
    let mut buf = Vec::new();
    for record in records {
        let desc = HvmSaveDescriptor {
            typecode: record.typecode,
            instance: record.instance,
            length: record.data.len() as u32,
        };
        buf.extend(desc.to_bytes());
        buf.extend(&record.data);
    }
    buf.extend(HvmSaveDescriptor::default().to_bytes());
    buf
}

/// Segment attributes as Xen packs them (`segment_attributes`): type in bits 0–3, then S,
/// DPL (2 bits), P, AVL, L, D/B, G.
fn attributes(s: &Segment) -> u32 {
    u32::from(s.type_ & 0xf)
        | u32::from(s.s) << 4
        | u32::from(s.dpl & 3) << 5
        | u32::from(s.present) << 7
        | u32::from(s.avl) << 8
        | u32::from(s.l) << 9
        | u32::from(s.db) << 10
        | u32::from(s.g) << 11
}

fn segment(selector: u32, base: u64, limit: u32, attr: u32) -> Segment {
    let present = attr >> 7 & 1 == 1;
    Segment {
        base,
        limit,
        selector: selector as u16,
        type_: (attr & 0xf) as u8,
        present,
        dpl: (attr >> 5 & 3) as u8,
        db: attr >> 10 & 1 == 1,
        s: attr >> 4 & 1 == 1,
        l: attr >> 9 & 1 == 1,
        g: attr >> 11 & 1 == 1,
        avl: attr >> 8 & 1 == 1,
        // Xen (like SVM) has no "unusable" flag: a segment that is not present is unusable.
        unusable: !present,
    }
}

macro_rules! segments {
    ($cpu:ident, $sregs:ident, get) => {
        $sregs.cs = segment($cpu.cs_sel, $cpu.cs_base, $cpu.cs_limit, $cpu.cs_arbytes);
        $sregs.ds = segment($cpu.ds_sel, $cpu.ds_base, $cpu.ds_limit, $cpu.ds_arbytes);
        $sregs.es = segment($cpu.es_sel, $cpu.es_base, $cpu.es_limit, $cpu.es_arbytes);
        $sregs.fs = segment($cpu.fs_sel, $cpu.fs_base, $cpu.fs_limit, $cpu.fs_arbytes);
        $sregs.gs = segment($cpu.gs_sel, $cpu.gs_base, $cpu.gs_limit, $cpu.gs_arbytes);
        $sregs.ss = segment($cpu.ss_sel, $cpu.ss_base, $cpu.ss_limit, $cpu.ss_arbytes);
        $sregs.tr = segment($cpu.tr_sel, $cpu.tr_base, $cpu.tr_limit, $cpu.tr_arbytes);
        $sregs.ldt = segment(
            $cpu.ldtr_sel,
            $cpu.ldtr_base,
            $cpu.ldtr_limit,
            $cpu.ldtr_arbytes,
        );
    };
}

macro_rules! set_segment {
    ($cpu:ident, $seg:expr, $sel:ident, $base:ident, $limit:ident, $attr:ident) => {
        $cpu.$sel = u32::from($seg.selector);
        $cpu.$base = $seg.base;
        $cpu.$limit = $seg.limit;
        $cpu.$attr = attributes(&$seg);
    };
}

/// The special registers of a CPU record. `apic_base` comes from the local APIC, which
/// the CPU record does not hold; CR8 and the interrupt bitmap are not part of Xen's vCPU
/// state (the TPR lives in the APIC page; pending interrupts in the APIC's IRR).
pub(crate) fn sregs_from(cpu: &HvmHwCpu, apic_base: u64) -> SpecialRegs {
    let mut sregs = SpecialRegs::default();
    segments!(cpu, sregs, get);
    sregs.gdt = DescriptorTable {
        base: cpu.gdtr_base,
        limit: cpu.gdtr_limit as u16,
    };
    sregs.idt = DescriptorTable {
        base: cpu.idtr_base,
        limit: cpu.idtr_limit as u16,
    };
    sregs.cr0 = cpu.cr0;
    sregs.cr2 = cpu.cr2;
    sregs.cr3 = cpu.cr3;
    sregs.cr4 = cpu.cr4;
    sregs.efer = cpu.msr_efer;
    sregs.apic_base = apic_base;
    sregs
}

/// Writes `sregs` into a CPU record (all but `apic_base`, CR8 and the interrupt bitmap).
pub(crate) fn set_sregs(cpu: &mut HvmHwCpu, sregs: &SpecialRegs) {
    set_segment!(cpu, sregs.cs, cs_sel, cs_base, cs_limit, cs_arbytes);
    set_segment!(cpu, sregs.ds, ds_sel, ds_base, ds_limit, ds_arbytes);
    set_segment!(cpu, sregs.es, es_sel, es_base, es_limit, es_arbytes);
    set_segment!(cpu, sregs.fs, fs_sel, fs_base, fs_limit, fs_arbytes);
    set_segment!(cpu, sregs.gs, gs_sel, gs_base, gs_limit, gs_arbytes);
    set_segment!(cpu, sregs.ss, ss_sel, ss_base, ss_limit, ss_arbytes);
    set_segment!(cpu, sregs.tr, tr_sel, tr_base, tr_limit, tr_arbytes);
    set_segment!(
        cpu,
        sregs.ldt,
        ldtr_sel,
        ldtr_base,
        ldtr_limit,
        ldtr_arbytes
    );
    cpu.gdtr_base = sregs.gdt.base;
    cpu.gdtr_limit = u32::from(sregs.gdt.limit);
    cpu.idtr_base = sregs.idt.base;
    cpu.idtr_limit = u32::from(sregs.idt.limit);
    cpu.cr0 = sregs.cr0;
    cpu.cr2 = sregs.cr2;
    cpu.cr3 = sregs.cr3;
    cpu.cr4 = sregs.cr4;
    cpu.msr_efer = sregs.efer;
}

/// The general-purpose registers of a vCPU context.
pub(crate) fn regs_from(r: &CpuUserRegs) -> Regs {
    Regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

/// Writes `regs` into a vCPU context's registers, keeping its other fields.
pub(crate) fn set_regs(r: &mut CpuUserRegs, regs: &Regs) {
    r.rax = regs.rax;
    r.rbx = regs.rbx;
    r.rcx = regs.rcx;
    r.rdx = regs.rdx;
    r.rsi = regs.rsi;
    r.rdi = regs.rdi;
    r.rsp = regs.rsp;
    r.rbp = regs.rbp;
    r.r8 = regs.r8;
    r.r9 = regs.r9;
    r.r10 = regs.r10;
    r.r11 = regs.r11;
    r.r12 = regs.r12;
    r.r13 = regs.r13;
    r.r14 = regs.r14;
    r.r15 = regs.r15;
    r.rip = regs.rip;
    r.rflags = regs.rflags;
}

/// Offsets in the 512-byte FXSAVE image (64-bit format).
mod fxsave {
    pub const FCW: usize = 0;
    pub const FSW: usize = 2;
    pub const FTW: usize = 4;
    pub const FOP: usize = 6;
    pub const FIP: usize = 8;
    pub const FDP: usize = 16;
    pub const MXCSR: usize = 24;
    pub const ST: usize = 32;
    pub const XMM: usize = 160;
}

fn u16_at(b: &[u8; 512], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8; 512], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; 512], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// The FPU state of an FXSAVE image.
pub(crate) fn fpu_from(image: &[u8; 512]) -> Fpu {
    let mut fpu = Fpu {
        fcw: u16_at(image, fxsave::FCW),
        fsw: u16_at(image, fxsave::FSW),
        ftwx: image[fxsave::FTW],
        last_opcode: u16_at(image, fxsave::FOP),
        last_ip: u64_at(image, fxsave::FIP),
        last_dp: u64_at(image, fxsave::FDP),
        mxcsr: u32_at(image, fxsave::MXCSR),
        ..Fpu::default()
    };
    for (i, reg) in fpu.fpr.iter_mut().enumerate() {
        reg.copy_from_slice(&image[fxsave::ST + i * 16..fxsave::ST + (i + 1) * 16]);
    }
    for (i, reg) in fpu.xmm.iter_mut().enumerate() {
        reg.copy_from_slice(&image[fxsave::XMM + i * 16..fxsave::XMM + (i + 1) * 16]);
    }
    fpu
}

/// Writes `fpu` into an FXSAVE image, keeping the bytes it does not describe (MXCSR_MASK).
pub(crate) fn set_fpu(image: &mut [u8; 512], fpu: &Fpu) {
    image[fxsave::FCW..fxsave::FCW + 2].copy_from_slice(&fpu.fcw.to_le_bytes());
    image[fxsave::FSW..fxsave::FSW + 2].copy_from_slice(&fpu.fsw.to_le_bytes());
    image[fxsave::FTW] = fpu.ftwx;
    image[fxsave::FOP..fxsave::FOP + 2].copy_from_slice(&fpu.last_opcode.to_le_bytes());
    image[fxsave::FIP..fxsave::FIP + 8].copy_from_slice(&fpu.last_ip.to_le_bytes());
    image[fxsave::FDP..fxsave::FDP + 8].copy_from_slice(&fpu.last_dp.to_le_bytes());
    image[fxsave::MXCSR..fxsave::MXCSR + 4].copy_from_slice(&fpu.mxcsr.to_le_bytes());
    for (i, reg) in fpu.fpr.iter().enumerate() {
        image[fxsave::ST + i * 16..fxsave::ST + (i + 1) * 16].copy_from_slice(reg);
    }
    for (i, reg) in fpu.xmm.iter().enumerate() {
        image[fxsave::XMM + i * 16..fxsave::XMM + (i + 1) * 16].copy_from_slice(reg);
    }
}

/// The MSRs a CPU record holds, in the order [`Hypervisor::msr_index_list`](crate::Hypervisor::msr_index_list) reports them.
pub(crate) const MSRS: [u32; 16] = [
    msr_index::EFER,
    msr_index::STAR,
    msr_index::LSTAR,
    msr_index::CSTAR,
    msr_index::SYSCALL_MASK,
    msr_index::KERNEL_GS_BASE,
    msr_index::SYSENTER_CS,
    msr_index::SYSENTER_ESP,
    msr_index::SYSENTER_EIP,
    msr_index::TSC,
    MSR_TSC_AUX,
    MSR_FS_BASE,
    MSR_GS_BASE,
    // Listed last: not in the CPU record but in the MTRR record, the local APIC's and the
    // machine-check record (see `mce`).
    MSR_MTRR_DEF_TYPE,
    MSR_APIC_BASE,
    super::mce::MSR_MCG_CTL,
];

/// MTRRdefType: MTRRs enabled and their default memory type; in the MTRR record.
pub(crate) const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

const MSR_TSC_AUX: u32 = 0xc000_0103;
const MSR_FS_BASE: u32 = 0xc000_0100;
const MSR_GS_BASE: u32 = 0xc000_0101;
/// `IA32_APIC_BASE`: read from the local APIC record; a write must give the value it holds.
pub(crate) const MSR_APIC_BASE: u32 = 0x1b;

/// The field of a CPU record that holds MSR `index`, if it is one.
fn msr_field(cpu: &mut HvmHwCpu, index: u32) -> Option<&mut u64> {
    Some(match index {
        msr_index::EFER => &mut cpu.msr_efer,
        msr_index::STAR => &mut cpu.msr_star,
        msr_index::LSTAR => &mut cpu.msr_lstar,
        msr_index::CSTAR => &mut cpu.msr_cstar,
        msr_index::SYSCALL_MASK => &mut cpu.msr_syscall_mask,
        msr_index::KERNEL_GS_BASE => &mut cpu.shadow_gs,
        msr_index::SYSENTER_CS => &mut cpu.sysenter_cs,
        msr_index::SYSENTER_ESP => &mut cpu.sysenter_esp,
        msr_index::SYSENTER_EIP => &mut cpu.sysenter_eip,
        msr_index::TSC => &mut cpu.tsc,
        MSR_TSC_AUX => &mut cpu.msr_tsc_aux,
        MSR_FS_BASE => &mut cpu.fs_base,
        MSR_GS_BASE => &mut cpu.gs_base,
        _ => return None,
    })
}

/// Reads MSR `index` from a CPU record.
pub(crate) fn msr(cpu: &HvmHwCpu, index: u32) -> Option<u64> {
    let mut copy = *cpu;
    msr_field(&mut copy, index).map(|v| *v)
}

/// Writes an MSR into a CPU record; false if the record does not hold it.
pub(crate) fn set_msr(cpu: &mut HvmHwCpu, msr: &Msr) -> bool {
    match msr_field(cpu, msr.index) {
        Some(field) => {
            *field = msr.data;
            true
        }
        None => false,
    }
}

/// x87 and SSE state: the XSAVE components every x86-64 vCPU has (XCR0 bits 0 and 1).
pub(crate) const XSTATE_FP_SSE: u64 = 0b11;
/// The legacy (FXSAVE) region and the XSAVE header: the smallest XSAVE area.
pub(crate) const XSAVE_MIN_SIZE: usize = 576;
/// Byte offset of `XSTATE_BV` in an XSAVE area.
pub(crate) const XSTATE_BV: usize = 512;

/// A vCPU's `HVM_SAVE_CODE(CPU_XSAVE)` record (`struct hvm_hw_cpu_xsave`): the extended
/// control register and the XSAVE area in the standard (uncompacted) format, as long as
/// the components ever enabled (`xcr0_accum`) need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct XsaveRecord {
    /// The host's XSAVE features (informational: Xen ignores it on load).
    pub(crate) xfeature_mask: u64,
    pub(crate) xcr0: u64,
    /// Every component XCR0 has enabled since the vCPU started; the area holds these.
    pub(crate) xcr0_accum: u64,
    pub(crate) area: Vec<u8>,
}

impl XsaveRecord {
    /// Parses a record; `None` if it is shorter than its header and the smallest area.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < HVM_CPU_XSAVE_HEADER_SIZE + XSAVE_MIN_SIZE {
            return None;
        }
        let word = |i: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(v)
        };
        Some(XsaveRecord {
            xfeature_mask: word(0),
            xcr0: word(1),
            xcr0_accum: word(2),
            area: bytes[HVM_CPU_XSAVE_HEADER_SIZE..].to_vec(),
        })
    }

    /// Puts `image` (an FXSAVE image, 512 bytes) into the area's legacy region as the x87
    /// and SSE state, marking them in XSTATE_BV (as far as `xcr0_accum` allows) so a load
    /// takes them rather than their initial state.
    pub(crate) fn set_fxsave_image(&mut self, image: &[u8]) {
        let n = image.len().min(512).min(self.area.len());
        self.area[..n].copy_from_slice(&image[..n]);
        if let Some(bv) = self.area.get_mut(XSTATE_BV..XSTATE_BV + 8) {
            let mut v = [0u8; 8];
            v.copy_from_slice(bv);
            let marked = u64::from_le_bytes(v) | XSTATE_FP_SSE & self.xcr0_accum;
            bv.copy_from_slice(&marked.to_le_bytes());
        }
    }

    /// The record's bytes.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HVM_CPU_XSAVE_HEADER_SIZE + self.area.len());
        for word in [self.xfeature_mask, self.xcr0, self.xcr0_accum] {
            bytes.extend(word.to_le_bytes());
        }
        bytes.extend(&self.area);
        bytes
    }
}

/// `XSTATE_BV` of an XSAVE area (0 if the area is too short to have a header).
pub(crate) fn xstate_bv(area: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    match area.get(XSTATE_BV..XSTATE_BV + 8) {
        Some(bytes) => {
            v.copy_from_slice(bytes);
            u64::from_le_bytes(v)
        }
        None => 0,
    }
}

/// The size of a standard-format XSAVE area holding the components of `mask`, from the
/// offsets and sizes CPUID leaf 0xD reports for them (sub-leaf `i`: EAX size, EBX
/// offset), as Xen sizes a CPU_XSAVE record. `None` if a component of `mask` above SSE has
/// no sub-leaf in `leaves`.
pub(crate) fn xsave_area_size(mask: u64, leaves: &[CpuidLeaf]) -> Option<usize> {
    let mut size = XSAVE_MIN_SIZE;
    for bit in (2..64).filter(|bit| mask >> bit & 1 == 1) {
        let leaf = leaves
            .iter()
            .find(|l| l.leaf == 0xd && l.subleaf == bit && l.a != 0)?;
        size = size.max(leaf.b as usize + leaf.a as usize);
    }
    Some(size)
}

/// Whether a CPUID policy offers XSAVE (leaf 1, ECX bit 26): only then does Xen keep
/// CPU_XSAVE records.
pub(crate) fn has_xsave(leaves: &[CpuidLeaf]) -> bool {
    leaves.iter().any(|l| l.leaf == 1 && l.c >> 26 & 1 == 1)
}

/// The XSAVE features a domain's CPUID policy allows in XCR0 (leaf 0xD sub-leaf 0, EDX:EAX).
pub(crate) fn xcr0_max(leaves: &[CpuidLeaf]) -> u64 {
    leaves
        .iter()
        .find(|l| l.leaf == 0xd && l.subleaf == 0)
        .map_or(XSTATE_FP_SSE, |l| u64::from(l.d) << 32 | u64::from(l.a))
}

/// `pending_event` of a CPU record (Xen's `pending_vector`, `pending_type`,
/// `pending_error_valid` and `pending_valid` bits, the layout of VMX's VM-entry
/// interruption information and SVM's EVENTINJ).
mod pending {
    pub const VECTOR: u32 = 0xff;
    pub const TYPE_SHIFT: u32 = 8;
    pub const TYPE_MASK: u32 = 0x7;
    pub const ERROR_VALID: u32 = 1 << 11;
    pub const VALID: u32 = 1 << 31;
    /// `X86_EVENTTYPE_*`.
    pub const EXT_INTR: u32 = 0;
    pub const NMI: u32 = 2;
    pub const HW_EXCEPTION: u32 = 3;
    pub const SW_INTERRUPT: u32 = 4;
}

/// The NMI vector.
const NMI_VECTOR: u8 = 2;

/// The pending-event state of a CPU record: the one event being injected. Xen saves only an
/// event it would re-inject (an external interrupt, an NMI, a hardware exception other than
/// `#BP` and `#OF`); everything else [`VcpuEvents`] describes reads as clear.
pub(crate) fn events_from(cpu: &HvmHwCpu) -> VcpuEvents {
    let mut events = VcpuEvents::default();
    let raw = cpu.pending_event;
    if raw & pending::VALID == 0 {
        return events;
    }
    let vector = (raw & pending::VECTOR) as u8;
    match raw >> pending::TYPE_SHIFT & pending::TYPE_MASK {
        pending::EXT_INTR | pending::SW_INTERRUPT => {
            events.interrupt.injected = true;
            events.interrupt.nr = vector;
            events.interrupt.soft =
                raw >> pending::TYPE_SHIFT & pending::TYPE_MASK == pending::SW_INTERRUPT;
        }
        pending::NMI => events.nmi.injected = true,
        // Hardware and software exceptions.
        _ => {
            events.exception.injected = true;
            events.exception.nr = vector;
            events.exception.has_error_code = raw & pending::ERROR_VALID != 0;
            events.exception.error_code = if events.exception.has_error_code {
                cpu.error_code
            } else {
                0
            };
        }
    }
    events
}

/// Why a CPU record cannot hold a vCPU's pending events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EventRefusal {
    /// A field Xen's record has no room for.
    Field(VcpuEventField, &'static str),
    /// A combination or value the record cannot express.
    Invalid(String),
}

/// Why each field Xen cannot hold is refused.
fn refusal(field: VcpuEventField) -> &'static str {
    match field {
        VcpuEventField::NmiPending | VcpuEventField::NmiMasked => {
            "Xen's HVM CPU record has no pending or masked NMI (only an NMI being injected)"
        }
        VcpuEventField::InterruptShadow => "Xen's HVM CPU record has no interrupt shadow",
        VcpuEventField::Smm => "Xen does not emulate system-management mode",
        VcpuEventField::PendingException => {
            "Xen's HVM CPU record holds an exception being injected, not one waiting to be"
        }
        _ => {
            "Xen drops an injected software interrupt, #BP or #OF on load and expects the guest \
             to execute the instruction again"
        }
    }
}

/// Writes `events` into a CPU record as its pending event. `sipi_vector` is not kept: it
/// matters only with `MpState::SipiReceived`, which a Xen vCPU cannot be set to.
pub(crate) fn set_events(cpu: &mut HvmHwCpu, events: &VcpuEvents) -> Result<(), EventRefusal> {
    if let Some(&field) = events
        .unsupported_in(crate::arch::x86_64::VcpuEventFields::default())
        .first()
    {
        return Err(EventRefusal::Field(field, refusal(field)));
    }
    let injected = [
        events.exception.injected,
        events.interrupt.injected,
        events.nmi.injected,
    ];
    if injected.iter().filter(|&&i| i).count() > 1 {
        return Err(EventRefusal::Invalid(
            "more than one of exception, interrupt and NMI is being injected; \
             Xen's CPU record holds one event"
                .into(),
        ));
    }
    let event = if events.exception.injected {
        let e = &events.exception;
        if e.nr > 31 {
            return Err(EventRefusal::Invalid(format!(
                "exception vector {} is above 31",
                e.nr
            )));
        }
        if e.has_error_code && e.error_code > 0xffff {
            return Err(EventRefusal::Invalid(format!(
                "error code {:#x} of exception {} is wider than the 16 bits Xen accepts",
                e.error_code, e.nr
            )));
        }
        let error = if e.has_error_code {
            pending::ERROR_VALID
        } else {
            0
        };
        Some((
            pending::HW_EXCEPTION << pending::TYPE_SHIFT | error | u32::from(e.nr),
            if e.has_error_code { e.error_code } else { 0 },
        ))
    } else if events.interrupt.injected {
        Some((
            pending::EXT_INTR << pending::TYPE_SHIFT | u32::from(events.interrupt.nr),
            0,
        ))
    } else if events.nmi.injected {
        Some((
            pending::NMI << pending::TYPE_SHIFT | u32::from(NMI_VECTOR),
            0,
        ))
    } else {
        None
    };
    let (raw, error_code) = event.map_or((0, 0), |(raw, code)| (raw | pending::VALID, code));
    cpu.pending_event = raw;
    cpu.error_code = error_code;
    Ok(())
}

/// The CPU record of a vCPU after RESET (as the architecture defines it, and as KVM
/// starts a vCPU): real mode at `f000:fff0`, caches disabled, no FPU state yet.
pub(crate) fn reset_cpu() -> HvmHwCpu {
    const CODE: u32 = 0x9b; // present, code, execute/read, accessed
    const DATA: u32 = 0x93; // present, data, read/write, accessed
    let mut cpu = HvmHwCpu {
        rip: 0xfff0,
        rflags: 0x2,
        cr0: 0x6000_0010,
        dr6: 0xffff_0ff0,
        dr7: 0x400,
        cs_sel: 0xf000,
        cs_base: 0xffff_0000,
        cs_arbytes: CODE,
        ds_arbytes: DATA,
        es_arbytes: DATA,
        fs_arbytes: DATA,
        gs_arbytes: DATA,
        ss_arbytes: DATA,
        tr_arbytes: 0x8b,   // present, busy 32-bit TSS
        ldtr_arbytes: 0x82, // present, LDT
        ..HvmHwCpu::default()
    };
    cpu.cs_limit = 0xffff;
    cpu.ds_limit = 0xffff;
    cpu.es_limit = 0xffff;
    cpu.fs_limit = 0xffff;
    cpu.gs_limit = 0xffff;
    cpu.ss_limit = 0xffff;
    cpu.tr_limit = 0xffff;
    cpu.ldtr_limit = 0xffff;
    cpu.gdtr_limit = 0xffff;
    cpu.idtr_limit = 0xffff;
    cpu
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::sys::abi::{HVM_FILE_VERSION, HVM_SAVE_CODE_CPU};

    #[test]
    fn segment_attributes_round_trip() {
        for attr in [0x9b, 0x93, 0xa09b, 0xc093, 0x8b, 0x82, 0x0, 0xcff] {
            let attr = attr & 0xfff;
            let s = segment(0x10, 0x1000, 0xffff, attr);
            assert_eq!(attributes(&s), attr, "{attr:#x}");
        }
        // The long-mode code segment of the boot helpers.
        let cs = segment(0x8, 0, 0xffff_ffff, 0xa9b);
        assert!(cs.l && cs.present && cs.s && cs.g && !cs.db);
        assert_eq!(cs.type_, 0xb);
    }

    #[test]
    fn sregs_round_trip_through_a_cpu_record() {
        let mut cpu = reset_cpu();
        let mut sregs = sregs_from(&cpu, 0xfee0_0900);
        assert_eq!((sregs.cs.selector, sregs.cs.base), (0xf000, 0xffff_0000));
        sregs.fs.base = 0x7fff_0000_1000;
        sregs.cr3 = 0x9000;
        sregs.efer = 0x500;
        sregs.idt = DescriptorTable {
            base: 0x8000,
            limit: 0xfff,
        };
        set_sregs(&mut cpu, &sregs);
        assert_eq!(sregs_from(&cpu, 0xfee0_0900), sregs);
    }

    #[test]
    fn fpu_round_trips_through_an_fxsave_image() {
        let mut image = [0u8; 512];
        image[28] = 0xaa; // MXCSR_MASK is kept
        let mut fpu = Fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Fpu::default()
        };
        fpu.xmm[3] = *b"vmkit xmm3 test!";
        fpu.fpr[1][..8].copy_from_slice(&1.5f64.to_bits().to_le_bytes());
        set_fpu(&mut image, &fpu);
        assert_eq!(fpu_from(&image), fpu);
        assert_eq!(image[28], 0xaa);
        assert_eq!(&image[160 + 48..160 + 64], b"vmkit xmm3 test!");
    }

    #[test]
    fn msrs_map_to_record_fields() {
        let mut cpu = HvmHwCpu::default();
        for (i, &index) in MSRS.iter().enumerate() {
            if [
                MSR_APIC_BASE,
                MSR_MTRR_DEF_TYPE,
                crate::xen::mce::MSR_MCG_CTL,
            ]
            .contains(&index)
            {
                assert!(!set_msr(&mut cpu, &Msr { index, data: 1 }));
                continue;
            }
            assert!(set_msr(
                &mut cpu,
                &Msr {
                    index,
                    data: i as u64 + 1
                }
            ));
        }
        assert_eq!(cpu.msr_lstar, 3);
        assert_eq!(cpu.shadow_gs, 6);
        assert_eq!(msr(&cpu, msr_index::SYSENTER_EIP), Some(9));
        assert_eq!(msr(&cpu, 0x4242_4242), None);
    }

    #[test]
    fn context_buffers_parse_and_build() {
        let header = HvmSaveHeader {
            magic: HVM_FILE_MAGIC,
            version: HVM_FILE_VERSION,
            ..HvmSaveHeader::default()
        };
        let records = [
            Record {
                typecode: HVM_SAVE_CODE_HEADER,
                instance: 0,
                data: header.to_bytes(),
            },
            Record {
                typecode: HVM_SAVE_CODE_CPU,
                instance: 1,
                data: reset_cpu().to_bytes(),
            },
        ];
        let buf = build(&records);
        assert_eq!(parse(&buf).unwrap(), records);
        // A record that claims more than the buffer holds is refused, not read past.
        let mut bad = buf.clone();
        bad.truncate(buf.len() - 20);
        assert!(matches!(parse(&bad), Err(ContextError::Truncated { .. })));
        assert_eq!(parse(&buf[32..]), Err(ContextError::NoHeader));
    }

    #[test]
    fn an_fxsave_image_goes_into_the_legacy_region_keeping_the_upper_components() {
        let mut area = vec![0u8; 832];
        // AVX only: x87 and SSE in their initial state.
        area[XSTATE_BV] = 0b100;
        area[576] = 0xaa;
        let mut record = XsaveRecord {
            xfeature_mask: 0x7,
            xcr0: 0x7,
            xcr0_accum: 0x7,
            area,
        };
        record.set_fxsave_image(&[0x55; 512]);
        assert!(record.area[..512].iter().all(|&b| b == 0x55));
        assert_eq!(xstate_bv(&record.area), 0b111);
        assert_eq!(record.area[576], 0xaa);
        // SSE never enabled: only x87 is marked.
        record.xcr0_accum = 0x1;
        record.area[XSTATE_BV] = 0;
        record.set_fxsave_image(&[0x11; 512]);
        assert_eq!(xstate_bv(&record.area), 0b1);
    }

    #[test]
    fn xsave_records_round_trip_and_size_by_component() {
        let mut area = vec![0u8; XSAVE_MIN_SIZE];
        area[XSTATE_BV] = 0b11;
        let record = XsaveRecord {
            xfeature_mask: 0x7,
            xcr0: 0x3,
            xcr0_accum: 0x7,
            area,
        };
        let bytes = record.to_bytes();
        assert_eq!(bytes.len(), HVM_CPU_XSAVE_HEADER_SIZE + XSAVE_MIN_SIZE);
        assert_eq!(XsaveRecord::from_bytes(&bytes), Some(record.clone()));
        assert_eq!(xstate_bv(&record.area), 0b11);
        // Too short for the legacy region and header: refused, not read past.
        assert_eq!(XsaveRecord::from_bytes(&bytes[..100]), None);

        let avx = CpuidLeaf {
            leaf: 0xd,
            subleaf: 2,
            a: 256,
            b: 576,
            ..CpuidLeaf::default()
        };
        let max = CpuidLeaf {
            leaf: 0xd,
            subleaf: 0,
            a: 0x7,
            ..CpuidLeaf::default()
        };
        assert_eq!(xsave_area_size(0b11, &[]), Some(XSAVE_MIN_SIZE));
        assert_eq!(xsave_area_size(0b111, &[avx, max]), Some(832));
        // A component the policy does not describe cannot be sized.
        assert_eq!(xsave_area_size(0b1011, &[avx, max]), None);
        assert_eq!(xcr0_max(&[avx, max]), 0x7);
        assert_eq!(xcr0_max(&[]), XSTATE_FP_SSE);
    }

    /// The components of the Xen harness's XSAVE CPU (QEMU's `max` under TCG: x87, SSE,
    /// AVX, MPX's two and PKRU, XCR0 0x21f), whose area Xen reports as 0xa88 bytes
    /// (`xstate: size: 0xa88`). A CPU_XSAVE read is sized from the domain's policy: for
    /// every component it allows the area must be Xen's, or Xen refuses the read
    /// (`ENOBUFS`), and a record of fewer components must be cut where Xen ends it.
    #[test]
    fn xsave_areas_of_the_harness_cpu_are_sized_as_xen_sizes_them() {
        let component = |subleaf: u32, size: u32, offset: u32| CpuidLeaf {
            leaf: 0xd,
            subleaf,
            a: size,
            b: offset,
            ..CpuidLeaf::default()
        };
        let leaves = [
            CpuidLeaf {
                leaf: 0xd,
                subleaf: 0,
                a: 0x21f,
                ..CpuidLeaf::default()
            },
            component(2, 256, 576), // AVX: the upper halves of YMM0-15
            component(3, 64, 960),  // MPX: BND0-3
            component(4, 64, 1024), // MPX: BNDCFGU, BNDSTATUS
            component(9, 8, 0xa80), // PKRU
        ];
        assert_eq!(xcr0_max(&leaves), 0x21f);
        assert_eq!(xsave_area_size(0x21f, &leaves), Some(0xa88));
        // A record holds what XCR0 ever enabled: x87 and SSE only, then AVX, then MPX.
        assert_eq!(xsave_area_size(0x3, &leaves), Some(XSAVE_MIN_SIZE));
        assert_eq!(xsave_area_size(0x7, &leaves), Some(832));
        assert_eq!(xsave_area_size(0x1f, &leaves), Some(1088));
        // PKRU without MPX still ends at PKRU's end: the standard format has fixed offsets.
        assert_eq!(xsave_area_size(0x207, &leaves), Some(0xa88));

        // A buffer of every component, holding a record of x87, SSE and AVX: parsed, its
        // area cut to the 832 bytes Xen wrote, and written back at that length.
        let mut buf = vec![0u8; HVM_CPU_XSAVE_HEADER_SIZE + 0xa88];
        buf[..8].copy_from_slice(&0x21fu64.to_le_bytes());
        buf[8..16].copy_from_slice(&0x7u64.to_le_bytes());
        buf[16..24].copy_from_slice(&0x7u64.to_le_bytes());
        let mut record = XsaveRecord::from_bytes(&buf).unwrap();
        assert_eq!(record.area.len(), 0xa88);
        let size = xsave_area_size(record.xcr0_accum, &leaves).unwrap();
        record.area.truncate(size);
        assert_eq!(record.to_bytes().len(), HVM_CPU_XSAVE_HEADER_SIZE + 832);
    }

    #[test]
    fn an_injected_exception_round_trips_through_pending_event() {
        let mut cpu = reset_cpu();
        let mut events = VcpuEvents::default();
        events.exception.injected = true;
        events.exception.nr = 14;
        events.exception.has_error_code = true;
        events.exception.error_code = 0x6;
        set_events(&mut cpu, &events).unwrap();
        // Valid, hardware exception (type 3), error code valid, vector 14.
        assert_eq!(cpu.pending_event, 0x8000_0b0e);
        assert_eq!(cpu.error_code, 6);
        assert_eq!(events_from(&cpu), events);

        let mut nmi = VcpuEvents::default();
        nmi.nmi.injected = true;
        set_events(&mut cpu, &nmi).unwrap();
        assert_eq!((cpu.pending_event, cpu.error_code), (0x8000_0202, 0));
        assert_eq!(events_from(&cpu), nmi);

        let mut irq = VcpuEvents::default();
        irq.interrupt.injected = true;
        irq.interrupt.nr = 0x30;
        set_events(&mut cpu, &irq).unwrap();
        assert_eq!(cpu.pending_event, 0x8000_0030);
        assert_eq!(events_from(&cpu), irq);

        // Nothing injected clears the record's event; sipi_vector is not kept.
        let none = VcpuEvents {
            sipi_vector: 0x9f,
            ..VcpuEvents::default()
        };
        set_events(&mut cpu, &none).unwrap();
        assert_eq!((cpu.pending_event, cpu.error_code), (0, 0));
        assert_eq!(events_from(&cpu), VcpuEvents::default());
    }

    #[test]
    fn what_the_cpu_record_cannot_hold_is_refused_by_field() {
        let mut cpu = reset_cpu();
        let refused = |edit: fn(&mut VcpuEvents)| {
            let mut events = VcpuEvents::default();
            edit(&mut events);
            set_events(&mut reset_cpu(), &events).unwrap_err()
        };
        let field = |r: EventRefusal| match r {
            EventRefusal::Field(field, _) => Some(field),
            EventRefusal::Invalid(_) => None,
        };
        assert_eq!(
            field(refused(|e| e.nmi.pending = true)),
            Some(VcpuEventField::NmiPending)
        );
        assert_eq!(
            field(refused(|e| e.nmi.masked = true)),
            Some(VcpuEventField::NmiMasked)
        );
        assert_eq!(
            field(refused(|e| e.interrupt.shadow = 1)),
            Some(VcpuEventField::InterruptShadow)
        );
        assert_eq!(
            field(refused(|e| e.smm.smm = true)),
            Some(VcpuEventField::Smm)
        );
        assert_eq!(
            field(refused(|e| e.exception.pending = true)),
            Some(VcpuEventField::PendingException)
        );
        assert_eq!(
            field(refused(|e| {
                e.interrupt.injected = true;
                e.interrupt.soft = true;
            })),
            Some(VcpuEventField::SoftwareEvent)
        );
        assert_eq!(
            field(refused(|e| {
                e.exception.injected = true;
                e.exception.nr = 3;
            })),
            Some(VcpuEventField::SoftwareEvent)
        );
        // Values the record cannot express.
        assert_eq!(
            field(refused(|e| {
                e.exception.injected = true;
                e.nmi.injected = true;
            })),
            None
        );
        assert_eq!(
            field(refused(|e| {
                e.exception.injected = true;
                e.exception.nr = 13;
                e.exception.has_error_code = true;
                e.exception.error_code = 0x1_0000;
            })),
            None
        );
        // A refusal leaves the record as it was.
        let before = cpu.pending_event;
        let mut events = VcpuEvents::default();
        events.nmi.pending = true;
        assert!(set_events(&mut cpu, &events).is_err());
        assert_eq!(cpu.pending_event, before);
    }

    #[test]
    fn a_software_interrupt_xen_saved_reads_as_soft() {
        let cpu = HvmHwCpu {
            pending_event: 0x8000_0480,
            ..reset_cpu()
        };
        let events = events_from(&cpu);
        assert!(events.interrupt.injected && events.interrupt.soft);
        assert_eq!(events.interrupt.nr, 0x80);
    }
}
