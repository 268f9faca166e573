//! The PC's CMOS memory and its MC146818 real-time clock, at ports `0x70`/`0x71`.
//!
//! A Linux guest reads the wall-clock time here at boot; without a device at these ports its
//! `rtc_cmos` probe waits for an update cycle that never ends and stalls for seconds.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::DevicePio;
use vmkit_snapshot::Persist;

use crate::RestoreError;

/// Where the clock's registers live in CMOS memory.
mod reg {
    pub const SECONDS: u8 = 0x00;
    pub const MINUTES: u8 = 0x02;
    pub const HOURS: u8 = 0x04;
    pub const WEEKDAY: u8 = 0x06;
    pub const DAY_OF_MONTH: u8 = 0x07;
    pub const MONTH: u8 = 0x08;
    pub const YEAR: u8 = 0x09;
    pub const STATUS_A: u8 = 0x0a;
    pub const STATUS_B: u8 = 0x0b;
    pub const STATUS_C: u8 = 0x0c;
    pub const STATUS_D: u8 = 0x0d;
    pub const CENTURY: u8 = 0x32;
}

/// Status A: 32.768 kHz time base, 1024 Hz periodic rate; the update-in-progress bit (7) is
/// never set, because every read computes the time afresh.
const STATUS_A_DEFAULT: u8 = 0x26;
/// Status B: 24-hour mode; BCD (bit 2 clear), as a PC BIOS leaves it.
const STATUS_B_DEFAULT: u8 = 0x02;
const STATUS_B_BINARY: u8 = 1 << 2;
const STATUS_B_24_HOUR: u8 = 1 << 1;
/// Status B bits the guest may change: the interrupt enables (4–6), binary mode and 24-hour
/// mode. Bit 7 (halt updates) and bit 3 (square wave) are accepted and have no effect, as
/// this clock raises no interrupts.
const STATUS_B_WRITABLE: u8 = 0xfe;
/// Status D: the valid-RAM-and-time bit.
const STATUS_D_VALID: u8 = 0x80;
/// Bit 7 of the index port masks NMIs on a PC; it is not part of the index.
const INDEX_MASK: u8 = 0x7f;
/// Bytes of CMOS memory.
const CMOS_SIZE: usize = 128;

/// What reads of the clock registers see: the current time, as calendar fields (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DateTime {
    year: u32,
    month: u8,
    day: u8,
    weekday: u8,
    hours: u8,
    minutes: u8,
    seconds: u8,
}

impl DateTime {
    /// The calendar date and time `unix_seconds` after 1970-01-01 00:00:00 UTC.
    fn from_unix(unix_seconds: u64) -> Self {
        let days = unix_seconds / 86_400;
        let of_day = unix_seconds % 86_400;
        // Days since 0000-03-01 in the proleptic Gregorian calendar, so that the leap day is
        // the last day of each year and 400-year eras repeat exactly.
        let shifted = days + 719_468;
        let era = shifted / 146_097;
        let day_of_era = shifted % 146_097;
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_from_march = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
        let month = if month_from_march < 10 {
            month_from_march + 3
        } else {
            month_from_march - 9
        };
        let year = era * 400 + year_of_era + u64::from(month <= 2);
        DateTime {
            year: u32::try_from(year).unwrap_or(u32::MAX),
            month: month as u8,
            day: day as u8,
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            weekday: ((days + 4) % 7 + 1) as u8,
            hours: (of_day / 3600) as u8,
            minutes: (of_day % 3600 / 60) as u8,
            seconds: (of_day % 60) as u8,
        }
    }
}

/// Encodes `value` (below 100) as the clock does in the mode status B selects.
fn encode(value: u8, status_b: u8) -> u8 {
    if status_b & STATUS_B_BINARY != 0 {
        value
    } else {
        ((value / 10) << 4) | (value % 10)
    }
}

/// Encodes the hour: in 12-hour mode 1–12 with bit 7 for PM.
fn encode_hours(hours: u8, status_b: u8) -> u8 {
    if status_b & STATUS_B_24_HOUR != 0 {
        return encode(hours, status_b);
    }
    let pm = if hours >= 12 { 0x80 } else { 0 };
    let twelve = match hours % 12 {
        0 => 12,
        h => h,
    };
    encode(twelve, status_b) | pm
}

#[derive(Debug)]
struct State {
    index: u8,
    ram: [u8; CMOS_SIZE],
}

/// The CMOS memory with its real-time clock, a port device for a PC's `0x70` (index) and
/// `0x71` (data).
///
/// Register it on a port bus at [`Cmos::BASE`] with [`Cmos::PORTS`] ports; it implements
/// [`DevicePio`].
///
/// - Port `0x70` selects a register (bits 0–6; bit 7, the PC's NMI mask, is ignored). Reads
///   of it return all-ones, as on most chipsets.
/// - Port `0x71` reads or writes the selected register. The clock registers (seconds to year,
///   and the century at `0x32`) read the host's current UTC time in the mode that status B
///   selects (BCD or binary, 12- or 24-hour); writes to them are ignored, so the guest cannot
///   move the clock. Status A never shows an update in progress, status C reads 0 (this
///   clock raises no interrupts) and status D reads "valid". Status B keeps its writable
///   bits. Every other byte is plain CMOS memory that keeps what the guest writes.
/// - An access wider than a byte is split as an ISA bus does: byte `i` goes to port
///   `0x70 + offset + i`; bytes past `0x71` read all-ones and their writes are dropped.
#[derive(Debug)]
pub struct Cmos {
    state: Mutex<State>,
    now: fn() -> u64,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

impl Cmos {
    /// The index port.
    pub const BASE: u16 = 0x70;
    /// How many ports the device decodes (index and data).
    pub const PORTS: u16 = 2;

    /// A CMOS whose clock reads the host's system time.
    pub fn new() -> Self {
        Self::with_clock(host_unix_seconds)
    }

    /// A CMOS whose clock reads `now()`, in seconds since the Unix epoch (for tests, or a VMM
    /// that keeps guest time apart from the host's).
    pub fn with_clock(now: fn() -> u64) -> Self {
        Cmos {
            state: Mutex::new(State {
                index: 0,
                ram: power_on_ram(),
            }),
            now,
        }
    }

    /// Handles a read of `data.len()` bytes at `offset` from [`Cmos::BASE`].
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        let mut state = self.lock();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match port_of(offset, i) {
                Some(1) => self.read_register(&mut state),
                _ => 0xff,
            };
        }
    }

    /// Handles a write of `data` at `offset` from [`Cmos::BASE`].
    pub fn write(&self, offset: u16, data: &[u8]) {
        let mut state = self.lock();
        for (i, &byte) in data.iter().enumerate() {
            match port_of(offset, i) {
                Some(0) => state.index = byte & INDEX_MASK,
                Some(1) => write_register(&mut state, byte),
                _ => {}
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is one store.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read_register(&self, state: &mut State) -> u8 {
        let status_b = state.ram[usize::from(reg::STATUS_B)];
        let clock = || DateTime::from_unix((self.now)());
        match state.index {
            reg::SECONDS => encode(clock().seconds, status_b),
            reg::MINUTES => encode(clock().minutes, status_b),
            reg::HOURS => encode_hours(clock().hours, status_b),
            reg::WEEKDAY => encode(clock().weekday, status_b),
            reg::DAY_OF_MONTH => encode(clock().day, status_b),
            reg::MONTH => encode(clock().month, status_b),
            reg::YEAR => encode((clock().year % 100) as u8, status_b),
            reg::CENTURY => encode((clock().year / 100 % 100) as u8, status_b),
            reg::STATUS_A => STATUS_A_DEFAULT,
            reg::STATUS_C => 0,
            reg::STATUS_D => STATUS_D_VALID,
            index => state.ram[usize::from(index)],
        }
    }
}

/// The registers a guest cannot write: the clock (read from the host) and status A, C and D.
/// A write to them is ignored, and a saved state must hold their power-on values.
fn read_only(index: u8) -> bool {
    matches!(
        index,
        reg::SECONDS
            | reg::MINUTES
            | reg::HOURS
            | reg::WEEKDAY
            | reg::DAY_OF_MONTH
            | reg::MONTH
            | reg::YEAR
            | reg::CENTURY
            | reg::STATUS_A
            | reg::STATUS_C
            | reg::STATUS_D
    )
}

fn write_register(state: &mut State, byte: u8) {
    match state.index {
        index if read_only(index) => {}
        reg::STATUS_B => state.ram[usize::from(reg::STATUS_B)] = byte & STATUS_B_WRITABLE,
        index => state.ram[usize::from(index)] = byte,
    }
}

/// The port (0 = index, 1 = data) that byte `i` of an access at `offset` reaches.
fn port_of(offset: u16, i: usize) -> Option<u16> {
    let port = u16::try_from(i).ok().and_then(|i| offset.checked_add(i))?;
    (port < Cmos::PORTS).then_some(port)
}

/// The saved state of a [`Cmos`] ([`Persist::State`]): the selected index and the 128 bytes
/// of CMOS memory. The clock is not in it: it reads the time of the fresh device's clock
/// (the host's, or the one given to [`Cmos::with_clock`]), so a restored guest sees the time
/// of the restore, as after a suspend.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CmosState {
    /// The register the index port selects (0 to `0x7f`).
    pub index: u8,
    /// The CMOS memory, 128 bytes. The bytes behind the clock and status registers A, C and D
    /// hold what a power-on CMOS holds (the guest cannot write them), and status B only its
    /// writable bits.
    pub ram: Vec<u8>,
}

impl CmosState {
    /// Checks the rules listed at [`CmosState`]'s fields.
    pub fn validate(&self) -> Result<(), RestoreError> {
        if self.ram.len() != CMOS_SIZE {
            return Err(RestoreError::CmosRamLength {
                len: self.ram.len(),
                expected: CMOS_SIZE,
            });
        }
        if self.index & !INDEX_MASK != 0 {
            return Err(RestoreError::CmosIndex { index: self.index });
        }
        let power_on = power_on_ram();
        for (index, (&value, &fresh)) in (0u8..).zip(self.ram.iter().zip(&power_on)) {
            let reason = match index {
                reg::STATUS_B if value & !STATUS_B_WRITABLE != 0 => {
                    "bit 0 of status B (daylight saving) is not writable"
                }
                _ if read_only(index) && value != fresh => {
                    "the guest cannot write the clock and status A, C, D registers"
                }
                _ => continue,
            };
            return Err(RestoreError::CmosByte {
                index,
                value,
                reason,
            });
        }
        Ok(())
    }
}

/// CMOS memory as the device powers on.
fn power_on_ram() -> [u8; CMOS_SIZE] {
    let mut ram = [0; CMOS_SIZE];
    ram[usize::from(reg::STATUS_A)] = STATUS_A_DEFAULT;
    ram[usize::from(reg::STATUS_B)] = STATUS_B_DEFAULT;
    ram
}

/// The index and CMOS memory ([`CmosState`]); the clock stays the fresh device's.
impl Persist for Cmos {
    const KIND: &'static str = "cmos";
    const VERSION: u16 = 1;
    type State = CmosState;
    type Error = RestoreError;

    fn save_state(&self) -> CmosState {
        let state = self.lock();
        CmosState {
            index: state.index,
            ram: state.ram.to_vec(),
        }
    }

    /// Refuses a state the guest could not have produced (see [`CmosState`]) with a
    /// [`RestoreError`] naming the byte.
    fn restore_state(&mut self, saved: &CmosState) -> Result<(), RestoreError> {
        saved.validate()?;
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.index = saved.index;
        state.ram.copy_from_slice(&saved.ram);
        Ok(())
    }
}

fn host_unix_seconds() -> u64 {
    // A host clock before 1970 reads as the epoch.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

impl DevicePio for Cmos {
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        self.read(offset, data);
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        self.write(offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-26 14:05:09 UTC, a Thursday.
    const THURSDAY: u64 = 1_795_701_909;

    fn read(cmos: &Cmos, index: u8) -> u8 {
        cmos.write(0, &[index]);
        let mut byte = [0];
        cmos.read(1, &mut byte);
        byte[0]
    }

    #[test]
    fn calendar_conversion_matches_known_dates() {
        let epoch = DateTime::from_unix(0);
        assert_eq!(
            (epoch.year, epoch.month, epoch.day, epoch.weekday),
            (1970, 1, 1, 5)
        );
        let leap = DateTime::from_unix(951_825_600); // 2000-02-29 12:00:00
        assert_eq!(
            (leap.year, leap.month, leap.day, leap.hours),
            (2000, 2, 29, 12)
        );
        let date = DateTime::from_unix(THURSDAY);
        assert_eq!(
            date,
            DateTime {
                year: 2026,
                month: 11,
                day: 26,
                weekday: 5,
                hours: 14,
                minutes: 5,
                seconds: 9,
            }
        );
        let end = DateTime::from_unix(4_102_444_799); // 2099-12-31 23:59:59
        assert_eq!((end.year, end.month, end.day), (2099, 12, 31));
    }

    #[test]
    fn clock_reads_bcd_in_24_hour_mode_by_default() {
        let cmos = Cmos::with_clock(|| THURSDAY);
        let fields: Vec<u8> = [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32]
            .iter()
            .map(|&index| read(&cmos, index))
            .collect();
        assert_eq!(fields, [0x09, 0x05, 0x14, 0x05, 0x26, 0x11, 0x26, 0x20]);
        assert_eq!(read(&cmos, reg::STATUS_A), STATUS_A_DEFAULT);
        assert_eq!(
            read(&cmos, reg::STATUS_A) & 0x80,
            0,
            "never update-in-progress"
        );
        assert_eq!(read(&cmos, reg::STATUS_D), STATUS_D_VALID);
    }

    #[test]
    fn status_b_selects_binary_and_12_hour_modes() {
        let cmos = Cmos::with_clock(|| THURSDAY);
        cmos.write(0, &[reg::STATUS_B]);
        cmos.write(1, &[STATUS_B_BINARY]);
        assert_eq!(
            read(&cmos, reg::HOURS),
            0x80 | 2,
            "2 PM in binary 12-hour mode"
        );
        assert_eq!(read(&cmos, reg::DAY_OF_MONTH), 26);
        cmos.write(0, &[reg::STATUS_B]);
        cmos.write(1, &[0]);
        assert_eq!(read(&cmos, reg::HOURS), 0x82, "2 PM in BCD 12-hour mode");
        assert_eq!(encode_hours(0, 0), 0x12, "midnight is 12 AM");
    }

    #[test]
    fn clock_writes_are_ignored_and_ram_keeps_its_bytes() {
        let cmos = Cmos::with_clock(|| THURSDAY);
        cmos.write(0, &[reg::SECONDS]);
        cmos.write(1, &[0x59]);
        assert_eq!(read(&cmos, reg::SECONDS), 0x09);
        cmos.write(0, &[0x80 | 0x40]); // NMI-mask bit set, index 0x40
        cmos.write(1, &[0xab]);
        assert_eq!(read(&cmos, 0x40), 0xab);
        assert_eq!(read(&cmos, 0x7f), 0);
    }

    #[test]
    fn a_restored_cmos_keeps_its_memory_and_index_and_reads_its_own_clock() {
        let cmos = Cmos::with_clock(|| THURSDAY);
        cmos.write(0, &[reg::STATUS_B]);
        cmos.write(1, &[STATUS_B_BINARY | STATUS_B_24_HOUR | 0x10]);
        cmos.write(0, &[0x40]);
        cmos.write(1, &[0xab]);
        cmos.write(0, &[0x41, 0xcd]);
        cmos.write(0, &[0x80 | 0x41]); // selected, with the NMI-mask bit
        let state = cmos.save_state();
        assert_eq!(state.index, 0x41);
        let bytes = postcard::to_stdvec(&state).unwrap();
        let decoded: CmosState = postcard::from_bytes(&bytes).unwrap();

        // 2000-02-29 12:00:00: the restored clock reads its own time, not the saved one.
        let mut restored = Cmos::with_clock(|| 951_825_600);
        restored.restore_state(&decoded).unwrap();
        assert_eq!(restored.save_state(), state);
        // The index survived: a data read with no index write reads byte 0x41.
        let mut byte = [0];
        restored.read(1, &mut byte);
        assert_eq!(byte, [0xcd]);
        assert_eq!(read(&restored, 0x40), 0xab);
        assert_eq!(
            read(&restored, reg::DAY_OF_MONTH),
            29,
            "binary mode survived"
        );
        assert_eq!(read(&restored, reg::HOURS), 12, "24-hour mode survived");

        // A fresh device's state round-trips too.
        let mut again = Cmos::new();
        again.restore_state(&Cmos::new().save_state()).unwrap();
    }

    #[test]
    fn unreachable_cmos_states_are_refused_by_byte() {
        let good = Cmos::with_clock(|| THURSDAY).save_state();
        let refused = |state: &CmosState| {
            let mut cmos = Cmos::with_clock(|| THURSDAY);
            let err = cmos.restore_state(state).unwrap_err();
            // Nothing was restored.
            assert_eq!(cmos.save_state(), good);
            err
        };
        let mut s = good.clone();
        s.ram.push(0);
        assert!(matches!(
            refused(&s),
            RestoreError::CmosRamLength {
                len: 129,
                expected: 128
            }
        ));
        s.ram.truncate(3);
        assert!(matches!(
            refused(&s),
            RestoreError::CmosRamLength { len: 3, .. }
        ));
        let mut s = good.clone();
        s.index = 0x80;
        assert!(matches!(
            refused(&s),
            RestoreError::CmosIndex { index: 0x80 }
        ));
        for (index, value) in [
            (reg::SECONDS, 0x12),
            (reg::CENTURY, 0x20),
            (reg::STATUS_A, 0xa6),
            (reg::STATUS_C, 0x80),
            (reg::STATUS_D, 0x80),
            (reg::STATUS_B, 0x03),
        ] {
            let mut s = good.clone();
            s.ram[usize::from(index)] = value;
            let err = refused(&s);
            assert!(
                matches!(err, RestoreError::CmosByte { index: i, value: v, .. } if i == index && v == value),
                "{err}"
            );
        }
        // Every other byte is plain memory: any value restores.
        for index in [0x01u8, 0x0e, 0x31, 0x33, 0x7f] {
            let mut s = good.clone();
            s.ram[usize::from(index)] = 0xff;
            Cmos::new().restore_state(&s).unwrap();
        }
    }

    #[test]
    fn odd_widths_and_offsets_are_answered_without_panicking() {
        let cmos = Cmos::with_clock(|| THURSDAY);
        // A 2-byte write at 0x70 sets the index, then writes the data port.
        cmos.write(0, &[0x41, 0x5a]);
        assert_eq!(read(&cmos, 0x41), 0x5a);
        let mut wide = [0u8; 4];
        cmos.write(0, &[0x41]);
        cmos.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0x5a, 0xff, 0xff]);
        let mut far = [0u8; 2];
        cmos.read(u16::MAX, &mut far);
        assert_eq!(far, [0xff, 0xff]);
        cmos.write(u16::MAX, &[1, 2]);
    }
}
