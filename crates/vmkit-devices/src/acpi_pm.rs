//! The ACPI power-management block of a PC chipset (fixed-hardware ACPI, as a PIIX4 or ICH
//! has it): PM1a event and control registers, the ACPI PM timer and a reset register.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::DevicePio;
use vmkit_snapshot::Persist;
use vmm_sys_util::eventfd::EventFd;

use crate::error::eventfd_pair;
use crate::{DeviceError, RestoreError};

/// Register offsets from the block's base.
mod offset {
    /// PM1a_STS (16 bits), the first half of PM1a_EVT_BLK.
    pub const STATUS: u16 = 0;
    /// PM1a_EN (16 bits), the second half of PM1a_EVT_BLK.
    pub const ENABLE: u16 = 2;
    /// PM1a_CNT_BLK (16 bits).
    pub const CONTROL: u16 = 4;
    /// PM_TMR_BLK (32 bits, read-only).
    pub const TIMER: u16 = 8;
    /// The reset register (8 bits, write-only).
    pub const RESET: u16 = 12;
}

/// PM1_STS: the power button was pressed.
const PWRBTN_STS: u16 = 1 << 8;
/// PM1_STS: the machine woke from a sleep state.
const WAK_STS: u16 = 1 << 15;
/// The status bits this block can set; the others read as 0.
const STATUS_BITS: u16 = PWRBTN_STS | WAK_STS;

/// PM1_EN: timer carry (TMR_EN), global lock (GBL_EN), power button, sleep button and RTC
/// alarm enables. The guest may set each; only PWRBTN_EN has an effect here.
const ENABLE_BITS: u16 = (1 << 0) | (1 << 5) | PWRBTN_EN | (1 << 9) | (1 << 10);
const PWRBTN_EN: u16 = 1 << 8;

/// PM1_CNT: SCI_EN, interrupts of this block go to the SCI (set from reset: with no SMI
/// command port in the FADT the machine is always in ACPI mode).
const SCI_EN: u16 = 1 << 0;
/// PM1_CNT: BM_RLS, held and otherwise ignored.
const BM_RLS: u16 = 1 << 1;
/// PM1_CNT: SLP_TYP, bits 10–12.
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0b111 << SLP_TYP_SHIFT;
/// PM1_CNT: SLP_EN, write-only: enter the sleep state SLP_TYP names.
const SLP_EN: u16 = 1 << 13;
/// The PM1_CNT bits that are held (GBL_RLS and SLP_EN are write-only and read as 0).
const CONTROL_BITS: u16 = SCI_EN | BM_RLS | SLP_TYP_MASK;

/// The ACPI PM timer's rate.
const TIMER_HZ: u128 = 3_579_545;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A sleep state the guest asked for by writing SLP_EN to PM1a_CNT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SleepState {
    /// S3, suspend to RAM: the guest expects to resume where it stopped when woken.
    S3,
    /// S5, soft off: the guest has shut down.
    S5,
}

impl SleepState {
    /// The SLP_TYP value that names this state to this block (what the DSDT's `\_S3` and
    /// `\_S5` packages give the guest): 3 for S3, 5 for S5.
    pub const fn slp_typ(self) -> u8 {
        match self {
            SleepState::S3 => 3,
            SleepState::S5 => 5,
        }
    }

    /// The state SLP_TYP `typ` names, if any.
    pub const fn from_slp_typ(typ: u8) -> Option<SleepState> {
        match typ {
            3 => Some(SleepState::S3),
            5 => Some(SleepState::S5),
            _ => None,
        }
    }
}

/// The saved state of a [`PmBlock`] ([`Persist::State`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PmState {
    /// PM1a_STS.
    pub status: u16,
    /// PM1a_EN.
    pub enable: u16,
    /// PM1a_CNT (the held bits).
    pub control: u16,
    /// The PM timer's count when the state was saved; the restored timer goes on from it.
    pub timer: u32,
    /// A sleep request the VMM had not yet taken ([`PmBlock::take_sleep_request`]).
    pub sleep_request: Option<SleepState>,
    /// Whether a reset request was not yet taken ([`PmBlock::take_reset_request`]).
    pub reset_requested: bool,
}

/// The registers, behind the device's lock.
#[derive(Debug)]
struct Registers {
    status: u16,
    enable: u16,
    control: u16,
    /// The timer counts from this count at `timer_start`.
    timer_base: u32,
    timer_start: Instant,
    sleep_request: Option<SleepState>,
    reset_requested: bool,
}

impl Registers {
    fn new() -> Self {
        Registers {
            status: 0,
            enable: 0,
            control: SCI_EN,
            timer_base: 0,
            timer_start: Instant::now(),
            sleep_request: None,
            reset_requested: false,
        }
    }

    fn timer_at(&self, now: Instant) -> u32 {
        ticks(now.saturating_duration_since(self.timer_start)).wrapping_add(self.timer_base)
    }

    /// Whether the SCI is asserted: an enabled status bit is set, and SCI_EN routes it.
    fn sci(&self) -> bool {
        self.control & SCI_EN != 0 && self.status & self.enable & PWRBTN_EN != 0
    }

    /// The byte at `offset` as a read sees it.
    fn read_byte(&self, offset: u16, now: Instant) -> u8 {
        let byte = |value: u32, first: u16| (value >> (8 * (offset - first))) as u8;
        match offset {
            0..=1 => byte(self.status.into(), offset::STATUS),
            2..=3 => byte(self.enable.into(), offset::ENABLE),
            4..=5 => byte(self.control.into(), offset::CONTROL),
            8..=11 => byte(self.timer_at(now), offset::TIMER),
            // The reset register is write-only; the gaps hold nothing.
            _ => 0,
        }
    }

    /// Applies one byte written at `offset`.
    fn write_byte(&mut self, offset: u16, value: u8) -> Effect {
        let shift = |first: u16| 8 * (offset - first);
        match offset {
            0..=1 => {
                // Write 1 to clear.
                let clear = u16::from(value) << shift(offset::STATUS);
                self.status &= !clear;
            }
            2..=3 => {
                let shift = shift(offset::ENABLE);
                let bits = (u16::from(value) << shift) & ENABLE_BITS;
                self.enable = (self.enable & !(0xff << shift)) | bits;
            }
            4..=5 => {
                let shift = shift(offset::CONTROL);
                let written = u16::from(value) << shift;
                self.control = (self.control & !(0xff << shift)) | (written & CONTROL_BITS);
                if written & SLP_EN != 0 {
                    let typ = ((self.control & SLP_TYP_MASK) >> SLP_TYP_SHIFT) as u8;
                    if let Some(state) = SleepState::from_slp_typ(typ) {
                        self.sleep_request = Some(state);
                        return Effect::Sleep;
                    }
                }
            }
            offset::RESET if value == PmBlock::RESET_VALUE => {
                self.reset_requested = true;
                return Effect::Reset;
            }
            // The timer is read-only; other values to the reset register and the gaps
            // are ignored.
            _ => {}
        }
        Effect::None
    }
}

/// What a written byte asks of the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    None,
    Sleep,
    Reset,
}

/// PM timer ticks in `elapsed`, modulo 2^32 (the counter wraps).
fn ticks(elapsed: Duration) -> u32 {
    (elapsed.as_nanos() * TIMER_HZ / NANOS_PER_SEC) as u32
}

/// The ACPI power-management block of a PC chipset, on [`PmBlock::PORTS`] (16) I/O ports
/// from a base the VMM picks ([`PmBlock::DEFAULT_BASE`], `0x600`, as QEMU's PIIX4 and ICH9
/// firmware place theirs; clear of the ports Xen's HVM platform claims and of the legacy
/// devices):
///
/// | offset | register | access |
/// |---|---|---|
/// | `0x0` | PM1a_STS (16 bits): PWRBTN_STS (8), WAK_STS (15); write 1 to clear | read/write |
/// | `0x2` | PM1a_EN (16 bits): TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN held | read/write |
/// | `0x4` | PM1a_CNT (16 bits): SCI_EN (0, set at reset), BM_RLS (1), SLP_TYP (10–12), SLP_EN (13, write-only) | read/write |
/// | `0x8` | PM_TMR (32 bits): the ACPI PM timer, 3.579545 MHz | read-only |
/// | `0xc` | reset register: [`PmBlock::RESET_VALUE`] (`0x06`) requests a reset | write-only |
///
/// Writing SLP_EN with SLP_TYP [`SleepState::S5`] (5) or [`SleepState::S3`] (3) records a
/// sleep request and signals [`PmBlock::sleep_evt`]; the VMM takes it with
/// [`PmBlock::take_sleep_request`], typically right after the port exit, and powers off (S5)
/// or stops the VM until something wakes it (S3: then [`PmBlock::wake`]). Other SLP_TYP
/// values name no state of this machine and are ignored, as is SLP_EN with them.
///
/// The PM timer counts from the host's monotonic clock ([`Instant`]), from 0 when the block
/// is made, 32 bits wide (the FADT's TMR_VAL_EXT): a guest may use it as a clocksource. Its
/// carry interrupt (TMR_STS) is not generated; TMR_EN is held without effect.
///
/// The SCI is asserted while SCI_EN is set and PWRBTN_STS and PWRBTN_EN are both set (the
/// only event this block raises: [`PmBlock::press_power_button`]). [`PmBlock::sci_level`]
/// gives the level, for a VMM that drives a level-triggered line; each rise also signals
/// [`PmBlock::sci_evt`], an eventfd to register as an irqfd.
///
/// Accesses of any width and offset are taken byte by byte: byte `i` of an access at offset
/// `o` reaches byte `o + i` of the block. Bytes outside the registers (the gaps, and beyond
/// offset 15) read as 0 (past the block: `0xff`) and their writes are dropped, so no guest
/// access panics or reaches another register than the one it names.
pub struct PmBlock {
    registers: Mutex<Registers>,
    sci_evt: (EventFd, EventFd),
    sleep_evt: (EventFd, EventFd),
    reset_evt: (EventFd, EventFd),
    signal_failures: AtomicU64,
}

impl std::fmt::Debug for PmBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PmBlock")
            .field("registers", &*self.lock())
            .finish_non_exhaustive()
    }
}

impl PmBlock {
    /// Where the block goes unless the VMM picks another base.
    pub const DEFAULT_BASE: u16 = 0x600;
    /// How many ports the block spans.
    pub const PORTS: u16 = 16;
    /// Offset of PM1a_EVT_BLK (status, then enable), 4 bytes.
    pub const PM1_EVT_OFFSET: u16 = offset::STATUS;
    /// Bytes of PM1a_EVT_BLK.
    pub const PM1_EVT_LEN: u8 = 4;
    /// Offset of PM1a_CNT_BLK, 2 bytes.
    pub const PM1_CNT_OFFSET: u16 = offset::CONTROL;
    /// Bytes of PM1a_CNT_BLK.
    pub const PM1_CNT_LEN: u8 = 2;
    /// Offset of PM_TMR_BLK, 4 bytes.
    pub const PM_TMR_OFFSET: u16 = offset::TIMER;
    /// Bytes of PM_TMR_BLK.
    pub const PM_TMR_LEN: u8 = 4;
    /// Offset of the reset register, 1 byte (the FADT's RESET_REG).
    pub const RESET_OFFSET: u16 = offset::RESET;
    /// The value that resets the machine when written to the reset register (the FADT's
    /// RESET_VALUE): `0x06`, the "reset CPU, system reset" value of a PC's `0xcf9`.
    pub const RESET_VALUE: u8 = 0x06;
    /// The ACPI PM timer's frequency, in Hz.
    pub const TIMER_HZ: u32 = TIMER_HZ as u32;

    /// A block as after a power-on: no status, nothing enabled, SCI_EN set, the timer at 0;
    /// with new non-blocking eventfds.
    pub fn new() -> Result<Self, DeviceError> {
        const DEVICE: &str = "ACPI PM block";
        Ok(PmBlock {
            registers: Mutex::new(Registers::new()),
            sci_evt: eventfd_pair(DEVICE, "SCI")?,
            sleep_evt: eventfd_pair(DEVICE, "sleep")?,
            reset_evt: eventfd_pair(DEVICE, "reset")?,
            signal_failures: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Registers> {
        // Every register update is a single assignment: a panic elsewhere leaves them whole.
        self.registers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn signal(&self, evt: &(EventFd, EventFd)) {
        // A non-blocking eventfd write fails only when its counter is at the maximum, i.e.
        // the event is pending anyway.
        if evt.0.write(1).is_err() {
            self.signal_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Signals the SCI eventfd if the SCI went from deasserted to asserted.
    fn update_sci(&self, before: bool, after: bool) {
        if after && !before {
            self.signal(&self.sci_evt);
        }
    }

    /// The eventfd signalled each time the SCI is asserted (register it as an irqfd on the
    /// SCI's GSI).
    pub fn sci_evt(&self) -> &EventFd {
        &self.sci_evt.1
    }

    /// Whether the SCI is asserted now.
    pub fn sci_level(&self) -> bool {
        self.lock().sci()
    }

    /// The eventfd signalled by each sleep request.
    pub fn sleep_evt(&self) -> &EventFd {
        &self.sleep_evt.1
    }

    /// The eventfd signalled by each reset request.
    pub fn reset_evt(&self) -> &EventFd {
        &self.reset_evt.1
    }

    /// The sleep state the guest asked for, if any since the last call; clears the request.
    pub fn take_sleep_request(&self) -> Option<SleepState> {
        self.lock().sleep_request.take()
    }

    /// Whether the guest wrote [`PmBlock::RESET_VALUE`] to the reset register since the last
    /// call; clears the request.
    pub fn take_reset_request(&self) -> bool {
        std::mem::take(&mut self.lock().reset_requested)
    }

    /// How many signals found their eventfd's counter already at its maximum.
    pub fn signal_failures(&self) -> u64 {
        self.signal_failures.load(Ordering::Relaxed)
    }

    /// The PM timer's count now.
    pub fn timer(&self) -> u32 {
        self.lock().timer_at(Instant::now())
    }

    /// Presses the power button: sets PWRBTN_STS, which raises the SCI if the guest enabled
    /// it (an ACPI guest then shuts down in order, ending with an S5 request).
    pub fn press_power_button(&self) {
        let (before, after) = {
            let mut registers = self.lock();
            let before = registers.sci();
            registers.status |= PWRBTN_STS;
            (before, registers.sci())
        };
        self.update_sci(before, after);
    }

    /// Marks the end of a sleep state (S3): sets WAK_STS, which the guest's resume path
    /// checks. The VMM calls it before running the vCPUs again.
    pub fn wake(&self) {
        self.lock().status |= WAK_STS;
    }

    /// Reads `data.len()` bytes of the block from `offset` on.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        let registers = self.lock();
        let now = Instant::now();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match byte_offset(offset, i) {
                Some(offset) => registers.read_byte(offset, now),
                None => 0xff,
            };
        }
    }

    /// Writes `data.len()` bytes of the block from `offset` on.
    pub fn write(&self, offset: u16, data: &[u8]) {
        let mut effects = Vec::new();
        let (before, after) = {
            let mut registers = self.lock();
            let before = registers.sci();
            for (i, &value) in data.iter().enumerate() {
                if let Some(offset) = byte_offset(offset, i) {
                    effects.push(registers.write_byte(offset, value));
                }
            }
            (before, registers.sci())
        };
        self.update_sci(before, after);
        for effect in effects {
            match effect {
                Effect::Sleep => self.signal(&self.sleep_evt),
                Effect::Reset => self.signal(&self.reset_evt),
                Effect::None => {}
            }
        }
    }
}

/// The block offset that byte `index` of an access at `offset` reaches, if inside the block.
fn byte_offset(offset: u16, index: usize) -> Option<u16> {
    u16::try_from(index)
        .ok()
        .and_then(|index| offset.checked_add(index))
        .filter(|&offset| offset < PmBlock::PORTS)
}

/// The registers, the timer's count and the pending requests.
impl Persist for PmBlock {
    const KIND: &'static str = "acpi-pm";
    const VERSION: u16 = 1;
    type State = PmState;
    type Error = RestoreError;

    fn save_state(&self) -> PmState {
        let registers = self.lock();
        PmState {
            status: registers.status,
            enable: registers.enable,
            control: registers.control,
            timer: registers.timer_at(Instant::now()),
            sleep_request: registers.sleep_request,
            reset_requested: registers.reset_requested,
        }
    }

    /// Every register value is checked against the bits the guest can set; the timer goes
    /// on from the saved count; pending requests stay pending and their eventfds are
    /// signalled, as is the SCI eventfd if the SCI is asserted.
    fn restore_state(&mut self, state: &PmState) -> Result<(), RestoreError> {
        for (register, value, bits) in [
            ("PM1a_STS", state.status, STATUS_BITS),
            ("PM1a_EN", state.enable, ENABLE_BITS),
            ("PM1a_CNT", state.control, CONTROL_BITS),
        ] {
            if value & !bits != 0 {
                return Err(RestoreError::PmRegister {
                    register,
                    value,
                    bits,
                });
            }
        }
        let sci = {
            let mut registers = self.lock();
            *registers = Registers {
                status: state.status,
                enable: state.enable,
                control: state.control,
                timer_base: state.timer,
                timer_start: Instant::now(),
                sleep_request: state.sleep_request,
                reset_requested: state.reset_requested,
            };
            registers.sci()
        };
        self.update_sci(false, sci);
        if state.sleep_request.is_some() {
            self.signal(&self.sleep_evt);
        }
        if state.reset_requested {
            self.signal(&self.reset_evt);
        }
        Ok(())
    }
}

impl DevicePio for PmBlock {
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        self.read(offset, data);
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        self.write(offset, data);
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn signals(evt: &EventFd) -> u64 {
        match evt.read() {
            Ok(count) => count,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
            Err(err) => panic!("eventfd read failed: {err}"),
        }
    }

    fn read16(pm: &PmBlock, offset: u16) -> u16 {
        let mut data = [0; 2];
        pm.read(offset, &mut data);
        u16::from_le_bytes(data)
    }

    fn read_timer(pm: &PmBlock) -> u32 {
        let mut data = [0; 4];
        pm.read(PmBlock::PM_TMR_OFFSET, &mut data);
        u32::from_le_bytes(data)
    }

    /// The tick count for `elapsed`, rounded down and up.
    fn tick_bounds(elapsed: Duration) -> (u128, u128) {
        let scaled = elapsed.as_nanos() * TIMER_HZ;
        (scaled / NANOS_PER_SEC, scaled.div_ceil(NANOS_PER_SEC))
    }

    #[test]
    fn the_timer_counts_at_3_579545_mhz_of_the_host_clock() {
        let pm = PmBlock::new().unwrap();
        for pause in [
            Duration::ZERO,
            Duration::from_millis(5),
            Duration::from_millis(20),
        ] {
            // Each read happens between the two clock readings around it, so the time between
            // the reads lies between `after_first..before_second` and
            // `before_first..after_second`.
            let before_first = Instant::now();
            let first = read_timer(&pm);
            let after_first = Instant::now();
            std::thread::sleep(pause);
            let before_second = Instant::now();
            let second = read_timer(&pm);
            let after_second = Instant::now();
            let counted = u128::from(second.wrapping_sub(first));
            let (least, _) = tick_bounds(before_second.duration_since(after_first));
            let (_, most) = tick_bounds(after_second.duration_since(before_first));
            // Each read rounds down, which can cost one tick either way.
            assert!(
                least.saturating_sub(1) <= counted && counted <= most + 1,
                "{counted} ticks, expected {least}..={most}"
            );
        }
    }

    #[test]
    fn the_timer_is_monotonic_and_read_only() {
        let pm = PmBlock::new().unwrap();
        let mut last = read_timer(&pm);
        for _ in 0..1000 {
            pm.write(PmBlock::PM_TMR_OFFSET, &0u32.to_le_bytes());
            let now = read_timer(&pm);
            assert!(now >= last, "{now} after {last}");
            last = now;
        }
    }

    #[test]
    fn ticks_wrap_at_32_bits() {
        let period = Duration::from_nanos(((1u128 << 32) * NANOS_PER_SEC / TIMER_HZ) as u64);
        assert!(ticks(period + Duration::from_secs(1)) < PmBlock::TIMER_HZ + 1);
        assert_eq!(ticks(Duration::from_secs(1)), PmBlock::TIMER_HZ);
    }

    #[test]
    fn slp_en_with_s5_or_s3_is_a_sleep_request() {
        let pm = PmBlock::new().unwrap();
        assert_eq!(read16(&pm, PmBlock::PM1_CNT_OFFSET), SCI_EN);
        for state in [SleepState::S5, SleepState::S3] {
            let value = (u16::from(state.slp_typ()) << SLP_TYP_SHIFT) | SLP_EN | SCI_EN;
            pm.write(PmBlock::PM1_CNT_OFFSET, &value.to_le_bytes());
            assert_eq!(pm.take_sleep_request(), Some(state));
            assert_eq!(pm.take_sleep_request(), None);
            assert_eq!(signals(pm.sleep_evt()), 1);
            // SLP_EN reads back as 0; SLP_TYP is held.
            assert_eq!(read16(&pm, PmBlock::PM1_CNT_OFFSET), value & !SLP_EN);
        }
    }

    #[test]
    fn slp_typ_alone_or_an_unknown_type_sleeps_nowhere() {
        let pm = PmBlock::new().unwrap();
        let s5 = u16::from(SleepState::S5.slp_typ()) << SLP_TYP_SHIFT;
        pm.write(PmBlock::PM1_CNT_OFFSET, &s5.to_le_bytes());
        for typ in [0u16, 1, 2, 4, 6, 7] {
            let value = (typ << SLP_TYP_SHIFT) | SLP_EN;
            pm.write(PmBlock::PM1_CNT_OFFSET, &value.to_le_bytes());
        }
        assert_eq!(pm.take_sleep_request(), None);
        assert_eq!(signals(pm.sleep_evt()), 0);
    }

    #[test]
    fn a_byte_write_of_the_high_half_sleeps_with_the_type_it_carries() {
        let pm = PmBlock::new().unwrap();
        let value = (u16::from(SleepState::S5.slp_typ()) << SLP_TYP_SHIFT) | SLP_EN;
        pm.write(PmBlock::PM1_CNT_OFFSET + 1, &[(value >> 8) as u8]);
        assert_eq!(pm.take_sleep_request(), Some(SleepState::S5));
        // The low byte, with SCI_EN, was not touched.
        assert_eq!(read16(&pm, PmBlock::PM1_CNT_OFFSET) & SCI_EN, SCI_EN);
    }

    #[test]
    fn status_bits_clear_on_writing_one_and_drive_the_sci() {
        let pm = PmBlock::new().unwrap();
        pm.press_power_button();
        assert_eq!(read16(&pm, PmBlock::PM1_EVT_OFFSET), PWRBTN_STS);
        assert!(!pm.sci_level(), "not enabled yet");
        assert_eq!(signals(pm.sci_evt()), 0);
        pm.write(offset::ENABLE, &(PWRBTN_EN | 0xf000).to_le_bytes());
        assert_eq!(
            read16(&pm, offset::ENABLE),
            PWRBTN_EN,
            "only defined bits held"
        );
        assert!(pm.sci_level());
        assert_eq!(signals(pm.sci_evt()), 1);
        // Writing 0, or 1 to other bits, clears nothing.
        pm.write(offset::STATUS, &(!PWRBTN_STS).to_le_bytes());
        pm.write(offset::STATUS, &0u16.to_le_bytes());
        assert_eq!(read16(&pm, offset::STATUS), PWRBTN_STS);
        pm.write(offset::STATUS, &PWRBTN_STS.to_le_bytes());
        assert_eq!(read16(&pm, offset::STATUS), 0);
        assert!(!pm.sci_level());
        // With SCI_EN clear, the event does not reach the SCI.
        pm.write(PmBlock::PM1_CNT_OFFSET, &0u16.to_le_bytes());
        pm.press_power_button();
        assert!(!pm.sci_level());
        assert_eq!(signals(pm.sci_evt()), 0);
        pm.wake();
        assert_eq!(read16(&pm, offset::STATUS), PWRBTN_STS | WAK_STS);
    }

    #[test]
    fn the_reset_register_takes_only_its_value() {
        let pm = PmBlock::new().unwrap();
        for value in [0u8, 1, 0x0e, 0xff] {
            pm.write(PmBlock::RESET_OFFSET, &[value]);
        }
        assert!(!pm.take_reset_request());
        pm.write(PmBlock::RESET_OFFSET, &[PmBlock::RESET_VALUE]);
        assert!(pm.take_reset_request());
        assert!(!pm.take_reset_request());
        assert_eq!(signals(pm.reset_evt()), 1);
        let mut data = [0x55];
        pm.read(PmBlock::RESET_OFFSET, &mut data);
        assert_eq!(data, [0], "write-only");
    }

    #[test]
    fn hostile_widths_and_offsets_get_documented_answers() {
        let pm = PmBlock::new().unwrap();
        for offset in [0u16, 3, 6, 11, 12, 13, 15, 16, 0xfff0, u16::MAX] {
            for width in [0usize, 1, 2, 3, 4, 8, 64] {
                let mut data = vec![0x55; width];
                pm.read(offset, &mut data);
                for (i, byte) in data.iter().enumerate() {
                    let inside = usize::from(offset) + i < usize::from(PmBlock::PORTS);
                    if !inside {
                        assert_eq!(*byte, 0xff, "offset {offset} byte {i}");
                    }
                }
                pm.write(offset, &vec![0xff; width]);
            }
        }
        // All-ones writes everywhere: W1C cleared nothing that was not set, no sleep type
        // 7 exists, 0xff is not the reset value.
        assert_eq!(pm.take_sleep_request(), None);
        assert!(!pm.take_reset_request());
        assert_eq!(read16(&pm, offset::ENABLE), ENABLE_BITS);
        assert_eq!(read16(&pm, PmBlock::PM1_CNT_OFFSET), CONTROL_BITS);
        let mut gap = [0x55; 2];
        pm.read(6, &mut gap);
        assert_eq!(gap, [0, 0]);
    }

    #[test]
    fn the_state_survives_a_snapshot() {
        let pm = PmBlock::new().unwrap();
        pm.write(offset::ENABLE, &PWRBTN_EN.to_le_bytes());
        pm.press_power_button();
        let value = (u16::from(SleepState::S3.slp_typ()) << SLP_TYP_SHIFT) | SLP_EN | SCI_EN;
        pm.write(PmBlock::PM1_CNT_OFFSET, &value.to_le_bytes());
        pm.write(PmBlock::RESET_OFFSET, &[PmBlock::RESET_VALUE]);
        let before = pm.timer();
        let state = pm.save_state();
        let after = pm.timer();
        assert!((before..=after).contains(&state.timer));
        let bytes = postcard::to_stdvec(&state).unwrap();
        let decoded: PmState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, state);

        let mut restored = PmBlock::new().unwrap();
        restored.restore_state(&decoded).unwrap();
        assert!(restored.timer() >= state.timer, "the timer goes on");
        assert_eq!(restored.save_state().status, PWRBTN_STS);
        assert!(restored.sci_level());
        assert_eq!(signals(restored.sci_evt()), 1);
        assert_eq!(signals(restored.sleep_evt()), 1);
        assert_eq!(signals(restored.reset_evt()), 1);
        assert_eq!(restored.take_sleep_request(), Some(SleepState::S3));
        assert!(restored.take_reset_request());
    }

    #[test]
    fn unreachable_register_values_are_refused_on_restore() {
        for state in [
            PmState {
                status: 1 << 3,
                ..PmState::default()
            },
            PmState {
                enable: 1 << 15,
                ..PmState::default()
            },
            PmState {
                control: SLP_EN,
                ..PmState::default()
            },
        ] {
            let mut pm = PmBlock::new().unwrap();
            let err = pm.restore_state(&state).unwrap_err();
            assert!(matches!(err, RestoreError::PmRegister { .. }), "{err}");
            assert!(err.to_string().contains("PM1a_"), "{err}");
        }
    }
}
