//! The state of Xen's emulated PIT, PICs and IOAPIC as vmkit's backend-neutral
//! [`PitState`] and [`IrqchipState`](crate::arch::x86_64::IrqchipState): conversions between those and Xen's HVM records
//! (`PIT`, two `PIC`, `IOAPIC`, with the `ISA_IRQ` wires and the HPET's legacy bit), and the
//! PIT's lost-tick policy as `HVM_PARAM_TIMER_MODE`.
//!
//! Every field maps to its counterpart; a value one side cannot hold is refused with
//! [`Unrepresentable`], naming the field, never dropped. Where the two models differ:
//!
//! - **PIT `count_load_time`**: Xen's record has none; loading a PIT record restarts each
//!   channel's count at that moment, as `KVM_SET_PIT2` also does (it sets the load time to
//!   the host's current time, whatever the state says). The field is in the source
//!   hypervisor's clock and means nothing to another VM, so it is accepted and not applied
//!   on Xen, as on KVM, and reads as 0 on Xen (Xen does not expose it).
//! - **PIT flags** are KVM's: `KVM_PIT_FLAGS_SPEAKER_DATA_ON` is the record's
//!   `speaker_data_on`; `KVM_PIT_FLAGS_HPET_LEGACY` reads the HPET's legacy-replacement bit
//!   (the guest's HPET configuration, which a PIT load cannot change: a different value is
//!   refused). Other bits are refused.
//! - **PIC `init_state`/`init4`**: Xen's 4-bit `init_state` is KVM's `init_state` (which
//!   ICW comes next, 0 when none) plus ICW1's IC4 (KVM's `init4`) and SNGL bits while an
//!   initialisation is under way. SNGL (a single 8259, no ICW3) has no counterpart in KVM's
//!   model and is refused when read. Outside an initialisation `init4` has no effect on
//!   either side (the next ICW1 sets it) and Xen keeps none: it reads as 0.
//! - **PIC `last_irr`** (the input lines' levels, for edge detection) is Xen's `ISA_IRQ`
//!   wires; bit 2 of the master's is the slave's output (the cascade), derived from the
//!   slave's registers on both sides. Xen adds each loaded wire to its line's count, so the
//!   wires can be loaded only while all are low (a VM that was just created); a different
//!   value otherwise is refused.
//! - **PIC `elcr_mask`** is fixed in Xen (0xF8 master, 0xDE slave, as in KVM): another
//!   value is refused, and so are ELCR bits outside it. Xen's `int_output` is derived from
//!   the other registers as the 8259 does; vmkit computes it on a load. Xen's master ELCR
//!   also has bit 2 (the cascade input level-triggered, from reset until the guest first
//!   writes the ELCR, which masks it away): it is part of `elcr`, read and loaded as it is.
//! - **IOAPIC**: Xen's has 48 pins, vmkit's type 24; a read with a pin above 23 programmed
//!   (anything but Xen's reset value, masked) is refused, naming the pin, and a load resets
//!   those pins. Xen keeps no IRR (an edge is delivered at once; a level pin follows its
//!   line): `irr` reads as 0 and a nonzero one is refused.

use super::sys::abi::{
    HvmHwIsaIrqs, HvmHwPit, HvmHwPitChannel, HvmHwVioapic, HvmHwVpic, HPET_CFG_LEGACY,
    HVMPTM_NO_DELAY_FOR_MISSED_TICKS, HVMPTM_ONE_MISSED_TICK_PENDING, VIOAPIC_NUM_PINS,
    VPIC_AUTO_EOI, VPIC_IS_MASTER, VPIC_POLL, VPIC_READSEL_ISR, VPIC_ROTATE_ON_AUTO_EOI,
    VPIC_SPECIAL_FULLY_NESTED_MODE, VPIC_SPECIAL_MASK_MODE,
};
use crate::arch::x86_64::{IoapicState, PicState, PitChannel, PitState};

/// `KVM_PIT_FLAGS_HPET_LEGACY`: the HPET drives IRQ 0 instead of the PIT.
pub(crate) const PIT_FLAG_HPET_LEGACY: u32 = 1;
/// `KVM_PIT_FLAGS_SPEAKER_DATA_ON`: port 0x61's speaker data bit.
pub(crate) const PIT_FLAG_SPEAKER_DATA_ON: u32 = 2;

/// The IOAPIC pins vmkit's [`IoapicState`] holds.
const VMKIT_PINS: usize = 24;
/// A redirection entry after reset in Xen: masked, everything else 0.
pub(crate) const REDIR_RESET: u64 = 1 << 16;
/// Xen's (and KVM's) fixed ELCR masks: IRQs 0-2 of the master, 8 and 13 of the slave are
/// always edge-triggered.
const ELCR_MASK: [u8; 2] = [0xf8, 0xde];
/// ICW1's SNGL bit in Xen's `init_state`.
const INIT_SNGL: u8 = 1 << 3;
/// ICW1's IC4 bit in Xen's `init_state`.
const INIT_IC4: u8 = 1 << 2;

/// A value that has no counterpart on the other side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unrepresentable {
    pub(crate) field: String,
    pub(crate) value: u64,
    pub(crate) reason: &'static str,
}

fn refuse(field: impl Into<String>, value: u64, reason: &'static str) -> Unrepresentable {
    Unrepresentable {
        field: field.into(),
        value,
        reason,
    }
}

fn channel_from(c: &HvmHwPitChannel) -> PitChannel {
    PitChannel {
        count: c.count,
        latched_count: c.latched_count,
        count_latched: c.count_latched,
        status_latched: c.status_latched,
        status: c.status,
        read_state: c.read_state,
        write_state: c.write_state,
        write_latch: c.write_latch,
        rw_mode: c.rw_mode,
        mode: c.mode,
        bcd: c.bcd,
        gate: c.gate,
        // Not in Xen's record (see the module docs).
        count_load_time: 0,
    }
}

fn channel_record(c: &PitChannel) -> HvmHwPitChannel {
    HvmHwPitChannel {
        count: c.count,
        latched_count: c.latched_count,
        count_latched: c.count_latched,
        status_latched: c.status_latched,
        status: c.status,
        read_state: c.read_state,
        write_state: c.write_state,
        write_latch: c.write_latch,
        rw_mode: c.rw_mode,
        mode: c.mode,
        bcd: c.bcd,
        gate: c.gate,
    }
}

/// The PIT state of a `PIT` record; `hpet_legacy` is the HPET's legacy-replacement bit.
pub(crate) fn pit_from(record: &HvmHwPit, hpet_legacy: bool) -> PitState {
    let mut flags = 0;
    if record.speaker_data_on != 0 {
        flags |= PIT_FLAG_SPEAKER_DATA_ON;
    }
    if hpet_legacy {
        flags |= PIT_FLAG_HPET_LEGACY;
    }
    PitState {
        channels: [
            channel_from(&record.channels[0]),
            channel_from(&record.channels[1]),
            channel_from(&record.channels[2]),
        ],
        flags,
    }
}

/// The `PIT` record of `state`, for a domain whose HPET legacy bit is `hpet_legacy`.
pub(crate) fn pit_record(state: &PitState, hpet_legacy: bool) -> Result<HvmHwPit, Unrepresentable> {
    let unknown = state.flags & !(PIT_FLAG_HPET_LEGACY | PIT_FLAG_SPEAKER_DATA_ON);
    if unknown != 0 {
        return Err(refuse(
            "pit.flags",
            u64::from(state.flags),
            "Xen's PIT knows only the speaker-data and HPET-legacy flags",
        ));
    }
    if (state.flags & PIT_FLAG_HPET_LEGACY != 0) != hpet_legacy {
        return Err(refuse(
            "pit.flags (HPET legacy)",
            u64::from(state.flags),
            "on Xen the HPET's legacy-replacement mode is the guest's HPET configuration, \
             which loading the PIT cannot change",
        ));
    }
    Ok(HvmHwPit {
        channels: [
            channel_record(&state.channels[0]),
            channel_record(&state.channels[1]),
            channel_record(&state.channels[2]),
        ],
        speaker_data_on: u32::from(state.flags & PIT_FLAG_SPEAKER_DATA_ON != 0),
        pad0: 0,
    })
}

/// Whether an HPET configuration register routes the legacy IRQs to the HPET.
pub(crate) fn hpet_legacy(config: u64) -> bool {
    config & HPET_CFG_LEGACY != 0
}

/// The lost-tick policy (`HVMPTM_*`) closest to KVM's PIT reinjection on or off: with it,
/// every missed tick is delivered later while guest time follows real time; without it,
/// the missed ticks collapse into one late tick (as KVM, which leaves the one interrupt
/// pending, drops the rest).
pub(crate) fn timer_mode(reinject: bool) -> u64 {
    if reinject {
        HVMPTM_NO_DELAY_FOR_MISSED_TICKS
    } else {
        HVMPTM_ONE_MISSED_TICK_PENDING
    }
}

/// Priority of the highest bit of `mask` rotated by `priority_add` (0 highest), 8 if none.
fn priority(mask: u8, priority_add: u8) -> u8 {
    if mask == 0 {
        8
    } else {
        mask.rotate_right(u32::from(priority_add & 7))
            .trailing_zeros() as u8
    }
}

/// Whether an 8259 with these registers asserts its output: an unmasked request of higher
/// priority than anything in service, outside an initialisation.
fn int_output(r: &HvmHwVpic, master: bool) -> bool {
    let priority_add = r.init_priority >> 4;
    let special_mask = r.flags & VPIC_SPECIAL_MASK_MODE != 0;
    let pending = priority(r.irr & !r.imr, priority_add);
    if pending == 8 || r.init_priority & 0xf != 0 {
        return false;
    }
    let irq = (pending + priority_add) & 7;
    let mut in_service = r.isr;
    if r.flags & VPIC_SPECIAL_FULLY_NESTED_MODE != 0 && master && irq == 2 {
        in_service &= !(1 << 2);
    }
    if special_mask {
        in_service &= !r.imr;
    }
    pending < priority(in_service, priority_add)
}

fn flag(flags: u8, bit: u8) -> u8 {
    u8::from(flags & bit != 0)
}

/// PIC `chip` (0 master, 1 slave) of a pair of `PIC` records; `wires` are the ISA IRQ
/// wires (bit `n`: IRQ `n`).
pub(crate) fn pic_from(
    records: &[HvmHwVpic; 2],
    chip: usize,
    wires: u16,
) -> Result<PicState, Unrepresentable> {
    let r = &records[chip & 1];
    let name = if chip == 0 { "pic_master" } else { "pic_slave" };
    let init = r.init_priority & 0xf;
    if init & INIT_SNGL != 0 {
        return Err(refuse(
            format!("{name}.init_state (Xen's, with ICW1's SNGL bit)"),
            u64::from(init),
            "the guest is initialising the PIC as a single 8259 (no ICW3), which KVM's \
             model and vmkit's PicState do not have",
        ));
    }
    let mut last_irr = (wires >> (8 * (chip & 1))) as u8;
    if chip == 0 {
        // The cascade input is the slave's output, not a wire.
        last_irr &= !(1 << 2);
        last_irr |= u8::from(int_output(&records[1], false)) << 2;
    }
    Ok(PicState {
        last_irr,
        irr: r.irr,
        imr: r.imr,
        isr: r.isr,
        priority_add: r.init_priority >> 4,
        irq_base: r.irq_base,
        read_reg_select: flag(r.flags, VPIC_READSEL_ISR),
        poll: flag(r.flags, VPIC_POLL),
        special_mask: flag(r.flags, VPIC_SPECIAL_MASK_MODE),
        init_state: init & 3,
        auto_eoi: flag(r.flags, VPIC_AUTO_EOI),
        rotate_on_auto_eoi: flag(r.flags, VPIC_ROTATE_ON_AUTO_EOI),
        special_fully_nested_mode: flag(r.flags, VPIC_SPECIAL_FULLY_NESTED_MODE),
        init4: u8::from(init & 3 != 0 && init & INIT_IC4 != 0),
        elcr: r.elcr,
        elcr_mask: ELCR_MASK[chip & 1],
    })
}

/// The two `PIC` records of `master` and `slave`, and the ISA wires their `last_irr` give
/// (bit 2, the cascade, excluded).
pub(crate) fn pic_records(
    master: &PicState,
    slave: &PicState,
) -> Result<([HvmHwVpic; 2], u16), Unrepresentable> {
    let mut records = [HvmHwVpic::default(); 2];
    for (chip, (state, name)) in [(master, "pic_master"), (slave, "pic_slave")]
        .into_iter()
        .enumerate()
    {
        let field = |f: &str| format!("{name}.{f}");
        let mut flags = if chip == 0 { VPIC_IS_MASTER } else { 0 };
        for (value, bit, f) in [
            (state.read_reg_select, VPIC_READSEL_ISR, "read_reg_select"),
            (state.poll, VPIC_POLL, "poll"),
            (state.special_mask, VPIC_SPECIAL_MASK_MODE, "special_mask"),
            (state.auto_eoi, VPIC_AUTO_EOI, "auto_eoi"),
            (
                state.rotate_on_auto_eoi,
                VPIC_ROTATE_ON_AUTO_EOI,
                "rotate_on_auto_eoi",
            ),
            (
                state.special_fully_nested_mode,
                VPIC_SPECIAL_FULLY_NESTED_MODE,
                "special_fully_nested_mode",
            ),
        ] {
            match value {
                0 => {}
                1 => flags |= bit,
                _ => return Err(refuse(field(f), u64::from(value), "a flag is 0 or 1")),
            }
        }
        if state.priority_add > 7 {
            return Err(refuse(
                field("priority_add"),
                u64::from(state.priority_add),
                "an 8259's lowest priority is one of its IRQs 0-7",
            ));
        }
        if state.init_state > 3 {
            return Err(refuse(
                field("init_state"),
                u64::from(state.init_state),
                "the next ICW is 1-3 (0: none)",
            ));
        }
        if state.init4 > 1 {
            return Err(refuse(
                field("init4"),
                u64::from(state.init4),
                "a flag is 0 or 1",
            ));
        }
        let mask = ELCR_MASK[chip];
        if state.elcr_mask != mask {
            return Err(refuse(
                field("elcr_mask"),
                u64::from(state.elcr_mask),
                "Xen's ELCR mask is fixed: 0xf8 for the master, 0xde for the slave",
            ));
        }
        // Xen's master also has bit 2, the cascade input's mode: level from reset until the
        // guest writes the ELCR (the write is masked). It is state like the others.
        let cascade = if chip == 0 { 1 << 2 } else { 0 };
        if state.elcr & !(mask | cascade) != 0 {
            return Err(refuse(
                field("elcr"),
                u64::from(state.elcr),
                "these IRQs are always edge-triggered (outside the ELCR mask)",
            ));
        }
        // IC4 matters only during an initialisation; Xen keeps none outside one.
        let init = if state.init_state == 0 {
            0
        } else {
            state.init_state | state.init4 << 2
        };
        records[chip] = HvmHwVpic {
            irr: state.irr,
            imr: state.imr,
            isr: state.isr,
            irq_base: state.irq_base,
            init_priority: init | state.priority_add << 4,
            flags,
            elcr: state.elcr,
            int_output: 0,
        };
    }
    // The slave's output first: it is the master's cascade input.
    records[1].int_output = u8::from(int_output(&records[1], false));
    records[0].int_output = u8::from(int_output(&records[0], true));
    let wires = u16::from(master.last_irr & !(1 << 2)) | u16::from(slave.last_irr) << 8;
    Ok((records, wires))
}

/// What the `ISA_IRQ` record must become for `wanted` wires when Xen has `current`: `None`
/// if they are the same.
pub(crate) fn isa_wires_record(
    current: &HvmHwIsaIrqs,
    wanted: u16,
) -> Result<Option<HvmHwIsaIrqs>, Unrepresentable> {
    let current_wires = (current.bits & 0xffff) as u16;
    if current_wires == wanted {
        return Ok(None);
    }
    if current_wires != 0 {
        return Err(refuse(
            "pic last_irr (ISA IRQ line levels)",
            u64::from(wanted),
            "Xen adds loaded lines to its line counts, so vmkit can set them only while all \
             are low; lower the lines with Vm::set_irq_line first",
        ));
    }
    Ok(Some(HvmHwIsaIrqs {
        bits: (current.bits & !0xffff) | u64::from(wanted),
    }))
}

/// The IOAPIC state of an `IOAPIC` record.
pub(crate) fn ioapic_from(record: &HvmHwVioapic) -> Result<IoapicState, Unrepresentable> {
    for (pin, &entry) in record.redirtbl.iter().enumerate().skip(VMKIT_PINS) {
        if entry != REDIR_RESET {
            return Err(refuse(
                format!("ioapic pin {pin} redirection entry"),
                entry,
                "vmkit's IoapicState holds pins 0-23; the guest programmed one of the pins \
                 24-47 of Xen's IOAPIC",
            ));
        }
    }
    let mut redirection_table = [0u64; VMKIT_PINS];
    redirection_table.copy_from_slice(&record.redirtbl[..VMKIT_PINS]);
    Ok(IoapicState {
        base_address: record.base_address,
        ioregsel: record.ioregsel,
        id: record.id,
        irr: 0,
        redirection_table,
    })
}

/// The `IOAPIC` record of `state`; pins 24-47 at their reset value.
pub(crate) fn ioapic_record(state: &IoapicState) -> Result<HvmHwVioapic, Unrepresentable> {
    if state.irr != 0 {
        return Err(refuse(
            "ioapic.irr",
            u64::from(state.irr),
            "Xen's IOAPIC keeps no IRR (an edge is delivered at once, a level pin follows \
             its line): raise the lines with Vm::set_irq_line instead",
        ));
    }
    let mut redirtbl = [REDIR_RESET; VIOAPIC_NUM_PINS];
    redirtbl[..VMKIT_PINS].copy_from_slice(&state.redirection_table);
    Ok(HvmHwVioapic {
        base_address: state.base_address,
        ioregsel: state.ioregsel,
        id: state.id,
        redirtbl,
    })
}

/// Reading and loading the records of a domain with Xen's platform. Each takes the control
/// lock and pauses the domain, so the records are read (or loaded) together.
mod io {
    use std::io;

    use super::super::context::Record;
    use super::super::control::StateError;
    use super::super::libs::XenCallError;
    use super::super::sys::abi::{
        HvmHwIsaIrqs, HvmHwPit, HvmHwVioapic, HvmHwVpic, Pod, HVM_HPET_CONFIG_OFFSET,
        HVM_HPET_SIZE, HVM_PARAM_TIMER_MODE, HVM_SAVE_CODE_HPET, HVM_SAVE_CODE_IOAPIC,
        HVM_SAVE_CODE_ISA_IRQ, HVM_SAVE_CODE_PIC, HVM_SAVE_CODE_PIT,
    };
    use super::super::vm::VmShared;
    use super::Unrepresentable;
    use crate::arch::x86_64::{IrqchipState, PitState};
    use crate::vm::VmError;

    /// Why reading or loading failed, before it becomes a [`VmError`] for `op`.
    enum Failure {
        Xen(XenCallError),
        State(StateError),
        Short { typecode: u16, len: usize },
        Unrepresentable(Unrepresentable),
    }

    impl From<XenCallError> for Failure {
        fn from(err: XenCallError) -> Self {
            Failure::Xen(err)
        }
    }

    impl From<StateError> for Failure {
        fn from(err: StateError) -> Self {
            match err {
                StateError::Xen(err) => Failure::Xen(err),
                other => Failure::State(other),
            }
        }
    }

    impl From<Unrepresentable> for Failure {
        fn from(err: Unrepresentable) -> Self {
            Failure::Unrepresentable(err)
        }
    }

    impl Failure {
        fn into_vm_error(self, op: &'static str) -> VmError {
            match self {
                Failure::Xen(err) => VmError::Os {
                    op: err.op,
                    source: err.source,
                },
                Failure::State(err) => VmError::Os {
                    op,
                    source: io::Error::other(err.to_string()),
                },
                Failure::Short { typecode, len } => VmError::Os {
                    op,
                    source: io::Error::other(format!(
                        "Xen returned {len} bytes for HVM record type {typecode}, too few"
                    )),
                },
                Failure::Unrepresentable(u) => VmError::StateNotRepresentable {
                    op,
                    field: u.field,
                    value: u.value,
                    reason: u.reason,
                },
            }
        }
    }

    /// One record of type `T` (its size is the record's length in Xen 4.17).
    fn record<T: Pod>(vm: &VmShared, typecode: u16, instance: u16) -> Result<T, Failure> {
        let mut buf = vec![0u8; std::mem::size_of::<T>()];
        vm.xc().hvm_record(vm.domid, typecode, instance, &mut buf)?;
        T::from_bytes(&buf).ok_or(Failure::Short {
            typecode,
            len: buf.len(),
        })
    }

    /// Whether the HPET routes the legacy IRQs; false if the domain has no HPET record.
    fn hpet_legacy(vm: &VmShared) -> Result<bool, Failure> {
        let mut buf = vec![0u8; HVM_HPET_SIZE];
        match vm
            .xc()
            .hvm_record(vm.domid, HVM_SAVE_CODE_HPET, 0, &mut buf)
        {
            Ok(()) => {}
            Err(err)
                if matches!(
                    err.source.raw_os_error(),
                    Some(libc::ENOENT | libc::ENODATA)
                ) =>
            {
                return Ok(false)
            }
            Err(err) => return Err(err.into()),
        }
        let config = buf
            .get(HVM_HPET_CONFIG_OFFSET..HVM_HPET_CONFIG_OFFSET + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
            .ok_or(Failure::Short {
                typecode: HVM_SAVE_CODE_HPET,
                len: buf.len(),
            })?;
        Ok(super::hpet_legacy(config))
    }

    fn domain_record<T: Pod>(typecode: u16, instance: u16, value: &T) -> Record {
        Record {
            typecode,
            instance,
            data: value.to_bytes(),
        }
    }

    /// Runs `f` with the control lock held and the domain paused.
    fn paused<R>(
        vm: &VmShared,
        op: &'static str,
        f: impl FnOnce(&VmShared) -> Result<R, Failure>,
    ) -> Result<R, VmError> {
        let control = vm.control();
        vm.with_paused(&control, f).map_err(|e| e.into_vm_error(op))
    }

    pub(crate) fn pit_state(vm: &VmShared) -> Result<PitState, VmError> {
        paused(vm, "reading the PIT state", |vm| {
            let pit: HvmHwPit = record(vm, HVM_SAVE_CODE_PIT, 0)?;
            Ok(super::pit_from(&pit, hpet_legacy(vm)?))
        })
    }

    pub(crate) fn set_pit_state(vm: &VmShared, state: &PitState) -> Result<(), VmError> {
        paused(vm, "setting the PIT state", |vm| {
            let pit = super::pit_record(state, hpet_legacy(vm)?)?;
            vm.load_domain_records(&[domain_record(HVM_SAVE_CODE_PIT, 0, &pit)])?;
            Ok(())
        })
    }

    pub(crate) fn set_pit_reinject(vm: &VmShared, reinject: bool) -> Result<(), VmError> {
        vm.xc()
            .set_hvm_param(vm.domid, HVM_PARAM_TIMER_MODE, super::timer_mode(reinject))
            .map_err(|err| VmError::Os {
                op: err.op,
                source: err.source,
            })
    }

    pub(crate) fn irqchip_state(vm: &VmShared) -> Result<IrqchipState, VmError> {
        paused(vm, "reading the irqchip state", |vm| {
            let pics: [HvmHwVpic; 2] = [
                record(vm, HVM_SAVE_CODE_PIC, 0)?,
                record(vm, HVM_SAVE_CODE_PIC, 1)?,
            ];
            let wires: HvmHwIsaIrqs = record(vm, HVM_SAVE_CODE_ISA_IRQ, 0)?;
            let wires = (wires.bits & 0xffff) as u16;
            let ioapic: HvmHwVioapic = record(vm, HVM_SAVE_CODE_IOAPIC, 0)?;
            Ok(IrqchipState {
                pic_master: super::pic_from(&pics, 0, wires)?,
                pic_slave: super::pic_from(&pics, 1, wires)?,
                ioapic: super::ioapic_from(&ioapic)?,
            })
        })
    }

    pub(crate) fn set_irqchip_state(vm: &VmShared, state: &IrqchipState) -> Result<(), VmError> {
        paused(vm, "setting the irqchip state", |vm| {
            let (pics, wires) = super::pic_records(&state.pic_master, &state.pic_slave)?;
            let ioapic = super::ioapic_record(&state.ioapic)?;
            let current: HvmHwIsaIrqs = record(vm, HVM_SAVE_CODE_ISA_IRQ, 0)?;
            let mut load = vec![
                domain_record(HVM_SAVE_CODE_PIC, 0, &pics[0]),
                domain_record(HVM_SAVE_CODE_PIC, 1, &pics[1]),
                domain_record(HVM_SAVE_CODE_IOAPIC, 0, &ioapic),
            ];
            if let Some(isa) = super::isa_wires_record(&current, wires)? {
                load.push(domain_record(HVM_SAVE_CODE_ISA_IRQ, 0, &isa));
            }
            vm.load_domain_records(&load)?;
            Ok(())
        })
    }
}

pub(crate) use io::{irqchip_state, pit_state, set_irqchip_state, set_pit_reinject, set_pit_state};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::sys::abi::Pod;

    fn pit_record_sample() -> HvmHwPit {
        let mut r = HvmHwPit::default();
        for (i, c) in r.channels.iter_mut().enumerate() {
            *c = HvmHwPitChannel {
                count: 0x10000 - i as u32,
                latched_count: 0x1234 + i as u16,
                count_latched: 1,
                status_latched: 0,
                status: 0x34,
                read_state: 3,
                write_state: 3,
                write_latch: 0x9b,
                rw_mode: 3,
                mode: 2,
                bcd: 0,
                gate: u8::from(i != 2),
            };
        }
        r.speaker_data_on = 1;
        r
    }

    #[test]
    fn pit_records_round_trip_with_their_flags() {
        let record = pit_record_sample();
        let state = pit_from(&record, false);
        assert_eq!(state.flags, PIT_FLAG_SPEAKER_DATA_ON);
        assert_eq!(state.channels[0].count, 0x10000);
        assert_eq!(state.channels[1].latched_count, 0x1235);
        assert_eq!(state.channels[2].gate, 0);
        assert_eq!(pit_record(&state, false).unwrap(), record);
        // The load time is the source's clock: accepted, not kept (Xen restarts the count).
        let mut moved = state;
        moved.channels[0].count_load_time = 123_456_789;
        assert_eq!(pit_record(&moved, false).unwrap(), record);
        // The record's bytes parse back to the same record; a short one does not parse.
        let bytes = record.to_bytes();
        assert_eq!(HvmHwPit::from_bytes(&bytes), Some(record));
        assert_eq!(HvmHwPit::from_bytes(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn pit_flags_xen_cannot_hold_are_refused() {
        let state = pit_from(&pit_record_sample(), true);
        assert_eq!(state.flags & PIT_FLAG_HPET_LEGACY, PIT_FLAG_HPET_LEGACY);
        let err = pit_record(&state, false).unwrap_err();
        assert!(err.field.contains("HPET legacy"), "{err:?}");
        let mut odd = state;
        odd.flags |= 0x80;
        let err = pit_record(&odd, true).unwrap_err();
        assert_eq!((err.field.as_str(), err.value), ("pit.flags", 0x83));
    }

    fn pics() -> [HvmHwVpic; 2] {
        [
            HvmHwVpic {
                irr: 0x11,
                imr: 0xfa,
                isr: 0,
                irq_base: 0x20,
                init_priority: 0x70,
                flags: VPIC_IS_MASTER | VPIC_AUTO_EOI,
                elcr: 0x0c,
                int_output: 1,
            },
            HvmHwVpic {
                irr: 0,
                imr: 0xff,
                isr: 0,
                irq_base: 0x28,
                init_priority: 0x07, // ICW1 with IC4 seen, ICW4 next, priority_add 0
                flags: VPIC_SPECIAL_MASK_MODE,
                elcr: 0x0c,
                int_output: 0,
            },
        ]
    }

    #[test]
    fn pic_records_round_trip_with_the_wires() {
        let records = pics();
        let wires = 0x0011;
        let master = pic_from(&records, 0, wires).unwrap();
        let slave = pic_from(&records, 1, wires).unwrap();
        assert_eq!(
            (master.priority_add, master.auto_eoi, master.elcr_mask),
            (7, 1, 0xf8)
        );
        assert_eq!(
            (slave.init_state, slave.init4, slave.special_mask),
            (3, 1, 1)
        );
        assert_eq!(master.last_irr, 0x11);
        // IRQ 0 is pending, unmasked, nothing in service: the master's output is up.
        let (back, back_wires) = pic_records(&master, &slave).unwrap();
        assert_eq!(back, records);
        assert_eq!(back_wires, wires);
    }

    #[test]
    fn init4_outside_an_initialisation_is_not_kept() {
        let records = pics();
        let mut master = pic_from(&records, 0, 0).unwrap();
        let slave = pic_from(&records, 1, 0).unwrap();
        assert_eq!(master.init4, 0);
        master.init4 = 1; // as KVM reports it after ICW4
        let (back, _) = pic_records(&master, &slave).unwrap();
        assert_eq!(back[0].init_priority & 0xf, 0);
    }

    #[test]
    fn pic_values_xen_cannot_hold_are_refused() {
        let records = pics();
        let master = pic_from(&records, 0, 0).unwrap();
        let slave = pic_from(&records, 1, 0).unwrap();
        for (edit, field) in [
            (
                (|p: &mut PicState| p.poll = 2) as fn(&mut PicState),
                "pic_master.poll",
            ),
            (|p| p.priority_add = 8, "pic_master.priority_add"),
            (|p| p.init_state = 4, "pic_master.init_state"),
            (|p| p.elcr_mask = 0, "pic_master.elcr_mask"),
            (|p| p.elcr = 0x01, "pic_master.elcr"),
            (|p| p.elcr = 0x02, "pic_master.elcr"),
        ] {
            let mut bad = master;
            edit(&mut bad);
            let err = pic_records(&bad, &slave).unwrap_err();
            assert_eq!(err.field, field);
        }
        // Xen's SNGL bit (single 8259) has no counterpart.
        let mut single = records;
        single[1].init_priority = 0x0a;
        let err = pic_from(&single, 1, 0).unwrap_err();
        assert!(err.field.starts_with("pic_slave.init_state"), "{err:?}");
    }

    #[test]
    fn the_cascade_is_the_slaves_output() {
        let mut records = pics();
        records[1].init_priority = 0;
        records[1].imr = 0xfe;
        records[1].irr = 0x01;
        let master = pic_from(&records, 0, 0x0004).unwrap();
        assert_eq!(master.last_irr & 4, 4);
        records[1].imr = 0xff;
        let master = pic_from(&records, 0, 0x0004).unwrap();
        assert_eq!(master.last_irr & 4, 0, "wire 2 is not the cascade");
    }

    #[test]
    fn isa_wires_change_only_from_all_low() {
        let low = HvmHwIsaIrqs { bits: 0 };
        assert_eq!(isa_wires_record(&low, 0).unwrap(), None);
        assert_eq!(
            isa_wires_record(&low, 0x10).unwrap(),
            Some(HvmHwIsaIrqs { bits: 0x10 })
        );
        let high = HvmHwIsaIrqs { bits: 0x1 };
        assert_eq!(isa_wires_record(&high, 0x1).unwrap(), None);
        assert!(isa_wires_record(&high, 0x10).is_err());
    }

    #[test]
    fn ioapic_pins_beyond_24_must_be_at_reset() {
        let mut record = HvmHwVioapic {
            base_address: 0xfec0_0000,
            ioregsel: 0x10,
            id: 1,
            redirtbl: [REDIR_RESET; VIOAPIC_NUM_PINS],
        };
        record.redirtbl[17] = 0x8031;
        let state = ioapic_from(&record).unwrap();
        assert_eq!(state.redirection_table[17], 0x8031);
        assert_eq!(ioapic_record(&state).unwrap(), record);
        record.redirtbl[30] = 0x31;
        let err = ioapic_from(&record).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.value),
            ("ioapic pin 30 redirection entry", 0x31)
        );
        let mut with_irr = state;
        with_irr.irr = 1 << 4;
        assert_eq!(ioapic_record(&with_irr).unwrap_err().field, "ioapic.irr");
    }

    #[test]
    fn records_of_any_bytes_convert_without_panicking() {
        // Bytes from the hypervisor: every pattern parses to some state or a refusal.
        for seed in 0u8..=255 {
            let bytes: Vec<u8> = (0..512)
                .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
                .collect();
            let pit = HvmHwPit::from_bytes(&bytes).unwrap();
            let _ = pit_record(&pit_from(&pit, seed & 1 == 1), seed & 1 == 1);
            let pic = [
                HvmHwVpic::from_bytes(&bytes).unwrap(),
                HvmHwVpic::from_bytes(&bytes[8..]).unwrap(),
            ];
            if let (Ok(m), Ok(s)) = (pic_from(&pic, 0, u16::from(seed)), pic_from(&pic, 1, 0)) {
                let _ = pic_records(&m, &s);
            }
            let ioapic = HvmHwVioapic::from_bytes(&bytes).unwrap();
            if let Ok(state) = ioapic_from(&ioapic) {
                let _ = ioapic_record(&state);
            }
        }
    }
}
