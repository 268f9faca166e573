//! State of the emulated interrupt controllers (two 8259 PICs, the IOAPIC) and the 8254 PIT,
//! to carry across a snapshot and restore.

use serde::{Deserialize, Serialize};

/// One 8259 PIC's registers and internal state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // The fields are the 8259's internal registers of the same name.
pub struct PicState {
    pub last_irr: u8,
    pub irr: u8,
    pub imr: u8,
    pub isr: u8,
    pub priority_add: u8,
    pub irq_base: u8,
    pub read_reg_select: u8,
    pub poll: u8,
    pub special_mask: u8,
    pub init_state: u8,
    pub auto_eoi: u8,
    pub rotate_on_auto_eoi: u8,
    pub special_fully_nested_mode: u8,
    pub init4: u8,
    pub elcr: u8,
    pub elcr_mask: u8,
}

/// The IOAPIC's registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoapicState {
    /// Guest-physical base of its MMIO window.
    pub base_address: u64,
    /// The register-select register.
    pub ioregsel: u32,
    /// The IOAPIC id.
    pub id: u32,
    /// Interrupt request register (one bit per pin).
    pub irr: u32,
    /// The 24 redirection-table entries, as the 64-bit values the guest programs.
    pub redirection_table: [u64; 24],
}

/// The interrupt controllers of a PC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrqchipState {
    /// The first PIC (IRQs 0–7).
    pub pic_master: PicState,
    /// The second PIC (IRQs 8–15).
    pub pic_slave: PicState,
    /// The IOAPIC.
    pub ioapic: IoapicState,
}

/// One PIT channel's counter and latches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // The fields are the 8254's internal state of the same name.
pub struct PitChannel {
    pub count: u32,
    pub latched_count: u16,
    pub count_latched: u8,
    pub status_latched: u8,
    pub status: u8,
    pub read_state: u8,
    pub write_state: u8,
    pub write_latch: u8,
    pub rw_mode: u8,
    pub mode: u8,
    pub bcd: u8,
    pub gate: u8,
    /// When the count was loaded, in the hypervisor's clock (nanoseconds).
    pub count_load_time: i64,
}

/// The 8254 PIT's three channels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitState {
    /// Channels 0 (timer interrupt), 1 and 2 (speaker).
    pub channels: [PitChannel; 3],
    /// Backend flags (for KVM, `KVM_PIT_FLAGS_*`).
    pub flags: u32,
}
