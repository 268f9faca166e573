//! Conversions between vmkit's x86-64 state types and kvm-bindings structures.
//!
//! Each conversion copies every architectural field; padding and reserved fields are zeroed.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_dtable, kvm_fpu, kvm_ioapic_state, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pic_state, kvm_pit_channel_state, kvm_pit_state2, kvm_regs, kvm_segment,
    kvm_sregs, kvm_vcpu_events, kvm_xcr, KVM_MP_STATE_AP_RESET_HOLD, KVM_MP_STATE_HALTED,
    KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_SIPI_RECEIVED,
    KVM_MP_STATE_SUSPENDED, KVM_MP_STATE_UNINITIALIZED, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, KVM_VCPUEVENT_VALID_NMI_PENDING,
    KVM_VCPUEVENT_VALID_SHADOW, KVM_VCPUEVENT_VALID_SIPI_VECTOR, KVM_VCPUEVENT_VALID_SMM,
};

use crate::arch::x86_64::{
    CpuidEntry, DescriptorTable, Fpu, IoapicState, LapicState, MpState, Msr, PendingException,
    PendingInterrupt, PendingNmi, PicState, PitChannel, PitState, Regs, Segment, SmmState,
    SpecialRegs, VcpuEvents, Xcr,
};
use crate::vcpu::SystemEventKind;

/// Builds `$to` from the same-named fields of `$from`; fields not listed (padding) are zeroed.
macro_rules! copy_fields {
    ($from:expr => $to:ident { $($field:ident),* $(,)? }) => {{
        // vmkit's types have no padding, so the update is empty for them.
        #[allow(clippy::needless_update)]
        let value = $to { $($field: $from.$field,)* ..Default::default() };
        value
    }};
}

impl From<kvm_regs> for Regs {
    fn from(r: kvm_regs) -> Self {
        copy_fields!(r => Regs { rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8, r9, r10, r11, r12,
            r13, r14, r15, rip, rflags })
    }
}

impl From<&Regs> for kvm_regs {
    fn from(r: &Regs) -> Self {
        copy_fields!(r => kvm_regs { rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8, r9, r10, r11,
            r12, r13, r14, r15, rip, rflags })
    }
}

impl From<kvm_segment> for Segment {
    fn from(s: kvm_segment) -> Self {
        Segment {
            base: s.base,
            limit: s.limit,
            selector: s.selector,
            type_: s.type_,
            present: s.present != 0,
            dpl: s.dpl,
            db: s.db != 0,
            s: s.s != 0,
            l: s.l != 0,
            g: s.g != 0,
            avl: s.avl != 0,
            unusable: s.unusable != 0,
        }
    }
}

impl From<&Segment> for kvm_segment {
    fn from(s: &Segment) -> Self {
        kvm_segment {
            base: s.base,
            limit: s.limit,
            selector: s.selector,
            type_: s.type_,
            present: s.present.into(),
            dpl: s.dpl,
            db: s.db.into(),
            s: s.s.into(),
            l: s.l.into(),
            g: s.g.into(),
            avl: s.avl.into(),
            unusable: s.unusable.into(),
            padding: 0,
        }
    }
}

impl From<kvm_dtable> for DescriptorTable {
    fn from(t: kvm_dtable) -> Self {
        DescriptorTable {
            base: t.base,
            limit: t.limit,
        }
    }
}

impl From<&DescriptorTable> for kvm_dtable {
    fn from(t: &DescriptorTable) -> Self {
        kvm_dtable {
            base: t.base,
            limit: t.limit,
            padding: [0; 3],
        }
    }
}

impl From<kvm_sregs> for SpecialRegs {
    fn from(s: kvm_sregs) -> Self {
        SpecialRegs {
            cs: s.cs.into(),
            ds: s.ds.into(),
            es: s.es.into(),
            fs: s.fs.into(),
            gs: s.gs.into(),
            ss: s.ss.into(),
            tr: s.tr.into(),
            ldt: s.ldt.into(),
            gdt: s.gdt.into(),
            idt: s.idt.into(),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
            interrupt_bitmap: s.interrupt_bitmap,
        }
    }
}

impl From<&SpecialRegs> for kvm_sregs {
    fn from(s: &SpecialRegs) -> Self {
        kvm_sregs {
            cs: (&s.cs).into(),
            ds: (&s.ds).into(),
            es: (&s.es).into(),
            fs: (&s.fs).into(),
            gs: (&s.gs).into(),
            ss: (&s.ss).into(),
            tr: (&s.tr).into(),
            ldt: (&s.ldt).into(),
            gdt: (&s.gdt).into(),
            idt: (&s.idt).into(),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
            interrupt_bitmap: s.interrupt_bitmap,
        }
    }
}

impl From<kvm_fpu> for Fpu {
    fn from(f: kvm_fpu) -> Self {
        copy_fields!(f => Fpu { fpr, fcw, fsw, ftwx, last_opcode, last_ip, last_dp, xmm, mxcsr })
    }
}

impl From<&Fpu> for kvm_fpu {
    fn from(f: &Fpu) -> Self {
        copy_fields!(f => kvm_fpu { fpr, fcw, fsw, ftwx, last_opcode, last_ip, last_dp, xmm,
            mxcsr })
    }
}

impl From<kvm_cpuid_entry2> for CpuidEntry {
    fn from(e: kvm_cpuid_entry2) -> Self {
        copy_fields!(e => CpuidEntry { function, index, flags, eax, ebx, ecx, edx })
    }
}

impl From<&CpuidEntry> for kvm_cpuid_entry2 {
    fn from(e: &CpuidEntry) -> Self {
        copy_fields!(e => kvm_cpuid_entry2 { function, index, flags, eax, ebx, ecx, edx })
    }
}

impl From<kvm_msr_entry> for Msr {
    fn from(e: kvm_msr_entry) -> Self {
        Msr {
            index: e.index,
            data: e.data,
        }
    }
}

impl From<&Msr> for kvm_msr_entry {
    fn from(m: &Msr) -> Self {
        kvm_msr_entry {
            index: m.index,
            reserved: 0,
            data: m.data,
        }
    }
}

impl From<kvm_xcr> for Xcr {
    fn from(x: kvm_xcr) -> Self {
        Xcr {
            index: x.xcr,
            value: x.value,
        }
    }
}

impl From<&Xcr> for kvm_xcr {
    fn from(x: &Xcr) -> Self {
        kvm_xcr {
            xcr: x.index,
            reserved: 0,
            value: x.value,
        }
    }
}

impl From<&kvm_lapic_state> for LapicState {
    fn from(l: &kvm_lapic_state) -> Self {
        let mut state = LapicState::default();
        for (to, from) in state.regs.iter_mut().zip(l.regs.iter()) {
            *to = *from as u8;
        }
        state
    }
}

impl From<&LapicState> for kvm_lapic_state {
    fn from(l: &LapicState) -> Self {
        let mut state = kvm_lapic_state::default();
        for (to, from) in state.regs.iter_mut().zip(l.regs.iter()) {
            *to = *from as std::os::raw::c_char;
        }
        state
    }
}

impl From<kvm_vcpu_events> for VcpuEvents {
    fn from(e: kvm_vcpu_events) -> Self {
        VcpuEvents {
            exception: PendingException {
                injected: e.exception.injected != 0,
                pending: e.exception.pending != 0,
                nr: e.exception.nr,
                has_error_code: e.exception.has_error_code != 0,
                error_code: e.exception.error_code,
            },
            interrupt: PendingInterrupt {
                injected: e.interrupt.injected != 0,
                nr: e.interrupt.nr,
                soft: e.interrupt.soft != 0,
                shadow: e.interrupt.shadow,
            },
            nmi: PendingNmi {
                injected: e.nmi.injected != 0,
                pending: e.nmi.pending != 0,
                masked: e.nmi.masked != 0,
            },
            sipi_vector: e.sipi_vector,
            smm: SmmState {
                smm: e.smi.smm != 0,
                pending: e.smi.pending != 0,
                smm_inside_nmi: e.smi.smm_inside_nmi != 0,
                latched_init: e.smi.latched_init != 0,
            },
        }
    }
}

impl From<&VcpuEvents> for kvm_vcpu_events {
    fn from(e: &VcpuEvents) -> Self {
        let mut k = kvm_vcpu_events {
            sipi_vector: e.sipi_vector,
            // Every field vmkit carries is valid; payload and triple-fault state need
            // capabilities vmkit does not enable, so they are left out.
            flags: KVM_VCPUEVENT_VALID_NMI_PENDING
                | KVM_VCPUEVENT_VALID_SIPI_VECTOR
                | KVM_VCPUEVENT_VALID_SHADOW
                | KVM_VCPUEVENT_VALID_SMM,
            ..Default::default()
        };
        k.exception.injected = e.exception.injected.into();
        k.exception.pending = e.exception.pending.into();
        k.exception.nr = e.exception.nr;
        k.exception.has_error_code = e.exception.has_error_code.into();
        k.exception.error_code = e.exception.error_code;
        k.interrupt.injected = e.interrupt.injected.into();
        k.interrupt.nr = e.interrupt.nr;
        k.interrupt.soft = e.interrupt.soft.into();
        k.interrupt.shadow = e.interrupt.shadow;
        k.nmi.injected = e.nmi.injected.into();
        k.nmi.pending = e.nmi.pending.into();
        k.nmi.masked = e.nmi.masked.into();
        k.smi.smm = e.smm.smm.into();
        k.smi.pending = e.smm.pending.into();
        k.smi.smm_inside_nmi = e.smm.smm_inside_nmi.into();
        k.smi.latched_init = e.smm.latched_init.into();
        k
    }
}

impl From<kvm_mp_state> for MpState {
    fn from(s: kvm_mp_state) -> Self {
        match s.mp_state {
            KVM_MP_STATE_RUNNABLE => MpState::Runnable,
            KVM_MP_STATE_UNINITIALIZED => MpState::Uninitialized,
            KVM_MP_STATE_INIT_RECEIVED => MpState::InitReceived,
            KVM_MP_STATE_HALTED => MpState::Halted,
            KVM_MP_STATE_SIPI_RECEIVED => MpState::SipiReceived,
            KVM_MP_STATE_AP_RESET_HOLD => MpState::ApResetHold,
            KVM_MP_STATE_SUSPENDED => MpState::Suspended,
            other => MpState::Other(other),
        }
    }
}

impl From<MpState> for kvm_mp_state {
    fn from(s: MpState) -> Self {
        let mp_state = match s {
            MpState::Runnable => KVM_MP_STATE_RUNNABLE,
            MpState::Uninitialized => KVM_MP_STATE_UNINITIALIZED,
            MpState::InitReceived => KVM_MP_STATE_INIT_RECEIVED,
            MpState::Halted => KVM_MP_STATE_HALTED,
            MpState::SipiReceived => KVM_MP_STATE_SIPI_RECEIVED,
            MpState::ApResetHold => KVM_MP_STATE_AP_RESET_HOLD,
            MpState::Suspended => KVM_MP_STATE_SUSPENDED,
            MpState::Other(raw) => raw,
        };
        kvm_mp_state { mp_state }
    }
}

impl From<kvm_pic_state> for PicState {
    fn from(p: kvm_pic_state) -> Self {
        copy_fields!(p => PicState { last_irr, irr, imr, isr, priority_add, irq_base,
            read_reg_select, poll, special_mask, init_state, auto_eoi, rotate_on_auto_eoi,
            special_fully_nested_mode, init4, elcr, elcr_mask })
    }
}

impl From<&PicState> for kvm_pic_state {
    fn from(p: &PicState) -> Self {
        copy_fields!(p => kvm_pic_state { last_irr, irr, imr, isr, priority_add, irq_base,
            read_reg_select, poll, special_mask, init_state, auto_eoi, rotate_on_auto_eoi,
            special_fully_nested_mode, init4, elcr, elcr_mask })
    }
}

impl From<&kvm_ioapic_state> for IoapicState {
    fn from(s: &kvm_ioapic_state) -> Self {
        let mut redirection_table = [0u64; 24];
        for (to, from) in redirection_table.iter_mut().zip(s.redirtbl.iter()) {
            // SAFETY: both union members are plain data covering the same 8 bytes; `bits` is
            // the whole entry.
            *to = unsafe { from.bits };
        }
        IoapicState {
            base_address: s.base_address,
            ioregsel: s.ioregsel,
            id: s.id,
            irr: s.irr,
            redirection_table,
        }
    }
}

impl From<&IoapicState> for kvm_ioapic_state {
    fn from(s: &IoapicState) -> Self {
        let mut raw = kvm_ioapic_state {
            base_address: s.base_address,
            ioregsel: s.ioregsel,
            id: s.id,
            irr: s.irr,
            ..Default::default()
        };
        for (to, &bits) in raw.redirtbl.iter_mut().zip(s.redirection_table.iter()) {
            to.bits = bits;
        }
        raw
    }
}

impl From<kvm_pit_channel_state> for PitChannel {
    fn from(c: kvm_pit_channel_state) -> Self {
        copy_fields!(c => PitChannel { count, latched_count, count_latched, status_latched,
            status, read_state, write_state, write_latch, rw_mode, mode, bcd, gate,
            count_load_time })
    }
}

impl From<&PitChannel> for kvm_pit_channel_state {
    fn from(c: &PitChannel) -> Self {
        copy_fields!(c => kvm_pit_channel_state { count, latched_count, count_latched,
            status_latched, status, read_state, write_state, write_latch, rw_mode, mode, bcd,
            gate, count_load_time })
    }
}

impl From<&kvm_pit_state2> for PitState {
    fn from(p: &kvm_pit_state2) -> Self {
        PitState {
            channels: p.channels.map(PitChannel::from),
            flags: p.flags,
        }
    }
}

impl From<&PitState> for kvm_pit_state2 {
    fn from(p: &PitState) -> Self {
        kvm_pit_state2 {
            channels: [
                (&p.channels[0]).into(),
                (&p.channels[1]).into(),
                (&p.channels[2]).into(),
            ],
            flags: p.flags,
            ..Default::default()
        }
    }
}

/// Decodes `kvm_run.system_event.type`.
pub(crate) fn system_event_kind(raw: u32) -> SystemEventKind {
    match raw {
        KVM_SYSTEM_EVENT_SHUTDOWN => SystemEventKind::Shutdown,
        KVM_SYSTEM_EVENT_RESET => SystemEventKind::Reset,
        KVM_SYSTEM_EVENT_CRASH => SystemEventKind::Crash,
        other => SystemEventKind::Other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_round_trip_keeps_every_bit() {
        let seg = Segment {
            base: 0x1234_5678_9abc,
            limit: 0xfffff,
            selector: 0x10,
            type_: 0xb,
            present: true,
            dpl: 3,
            db: false,
            s: true,
            l: true,
            g: true,
            avl: true,
            unusable: false,
        };
        assert_eq!(Segment::from(kvm_segment::from(&seg)), seg);
    }

    #[test]
    fn events_round_trip_and_mark_fields_valid() {
        let mut events = VcpuEvents::default();
        events.exception.pending = true;
        events.exception.nr = 14;
        events.exception.has_error_code = true;
        events.exception.error_code = 2;
        events.interrupt.shadow = 1;
        events.nmi.masked = true;
        events.sipi_vector = 0x9a;
        events.smm.latched_init = true;
        let raw = kvm_vcpu_events::from(&events);
        assert_ne!(raw.flags & KVM_VCPUEVENT_VALID_SIPI_VECTOR, 0);
        assert_eq!(VcpuEvents::from(raw), events);
    }

    #[test]
    fn mp_state_keeps_unknown_values() {
        for state in [MpState::Runnable, MpState::Halted, MpState::Other(77)] {
            assert_eq!(MpState::from(kvm_mp_state::from(state)), state);
        }
    }

    #[test]
    fn lapic_round_trip() {
        let mut lapic = LapicState::default();
        assert!(lapic.set_register(LapicState::SPURIOUS_VECTOR, 0x1ff));
        assert!(!lapic.set_register(LapicState::SIZE - 2, 1));
        let back = LapicState::from(&kvm_lapic_state::from(&lapic));
        assert_eq!(back.register(LapicState::SPURIOUS_VECTOR), Some(0x1ff));
        assert_eq!(back, lapic);
    }
}
