//! Why the guest stopped, in words: [`GuestStop`], which the runner gathers when a vCPU
//! fails on an exit that means the guest cannot go on (an internal error of the
//! hypervisor, a failed entry, a triple fault), with the guest's `rip` and the instruction
//! bytes there.

use std::fmt;

use crate::vcpu::{internal_error_name, Vcpu, VcpuExit};

/// The longest x86 instruction.
const MAX_INSTRUCTION_LEN: usize = 15;

/// `KVM_INTERNAL_ERROR_EMULATION`.
const EMULATION_FAILURE: u32 = 1;

/// `KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES`: the emulation-failure data holds
/// the instruction's bytes.
const FLAG_INSTRUCTION_BYTES: u64 = 1;

/// The exits after which the guest cannot go on, as [`GuestStop::reason`] keeps them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// [`VcpuExit::InternalError`].
    InternalError {
        /// The hypervisor's sub-error code.
        suberror: u32,
        /// Its data.
        data: Vec<u64>,
    },
    /// [`VcpuExit::FailEntry`].
    FailEntry {
        /// Hardware reason code.
        reason: u64,
        /// Host CPU the entry failed on.
        cpu: u32,
    },
    /// [`VcpuExit::Shutdown`]: a triple fault.
    Shutdown,
}

impl StopReason {
    /// The reason `exit` stands for, if it is one of these exits.
    pub fn of(exit: &VcpuExit<'_>) -> Option<StopReason> {
        match exit {
            VcpuExit::InternalError { suberror, data } => Some(StopReason::InternalError {
                suberror: *suberror,
                data: data.to_vec(),
            }),
            VcpuExit::FailEntry { reason, cpu } => Some(StopReason::FailEntry {
                reason: *reason,
                cpu: *cpu,
            }),
            VcpuExit::Shutdown => Some(StopReason::Shutdown),
            _ => None,
        }
    }

    /// The instruction bytes KVM attaches to an emulation failure (when its data has the
    /// flag for them: `flags`, then a length byte and 15 bytes), if any.
    pub fn instruction_bytes(&self) -> Option<Vec<u8>> {
        let StopReason::InternalError {
            suberror: EMULATION_FAILURE,
            data,
        } = self
        else {
            return None;
        };
        let (flags, words) = data.split_first()?;
        if flags & FLAG_INSTRUCTION_BYTES == 0 {
            return None;
        }
        let bytes: Vec<u8> = words.iter().take(2).flat_map(|w| w.to_le_bytes()).collect();
        let (len, code) = bytes.split_first()?;
        let len = usize::from(*len).min(MAX_INSTRUCTION_LEN);
        let code = code.get(..len)?;
        (!code.is_empty()).then(|| code.to_vec())
    }

    /// What happened, for a sentence: "the hypervisor could not emulate the instruction".
    fn what(&self) -> &'static str {
        match self {
            StopReason::InternalError { suberror, .. } => match suberror {
                1 => "the hypervisor could not emulate the instruction",
                2 => "the hypervisor met an exception while delivering another",
                3 => "the hypervisor could not deliver an exception or interrupt",
                4 => "the vCPU exited for a reason the hypervisor does not handle",
                _ => "the hypervisor could not go on",
            },
            StopReason::FailEntry { .. } => {
                "the hypervisor could not enter the guest (invalid vCPU state)"
            }
            StopReason::Shutdown => "the guest triple-faulted",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::InternalError { suberror, .. } => match internal_error_name(*suberror) {
                Some(name) => write!(f, "internal error {suberror} ({name})"),
                None => write!(f, "internal error {suberror}"),
            },
            StopReason::FailEntry { reason, cpu } => {
                write!(
                    f,
                    "entry failure, hardware reason {reason:#x} on host CPU {cpu}"
                )
            }
            StopReason::Shutdown => f.write_str("shutdown"),
        }
    }
}

/// Why a vCPU stopped the guest, in words, with where it was: the error of
/// [`RunnerError::GuestStopped`](super::RunnerError::GuestStopped).
///
/// ```
/// use vmkit::runner::{GuestStop, StopReason};
///
/// let stop = GuestStop {
///     reason: StopReason::InternalError { suberror: 1, data: vec![] },
///     rip: Some(0xffff_ffff_8123_4567),
///     bytes: vec![0x0f, 0x01, 0xd9],
///     registers_reset: false,
/// };
/// assert_eq!(
///     stop.to_string(),
///     "the hypervisor could not emulate the instruction at rip 0xffffffff81234567 \
///      (bytes 0f 01 d9): internal error 1 (emulation failure)"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestStop {
    /// The exit.
    pub reason: StopReason,
    /// The guest's `rip`, if it could be read.
    pub rip: Option<u64>,
    /// Up to 15 bytes of code at `rip` (from the hypervisor's report, or read from guest
    /// memory through the vCPU's page tables); empty if neither had them.
    pub bytes: Vec<u8>,
    /// After a triple fault the vCPU holds the reset state rather than the state it
    /// faulted in: AMD SVM leaves the guest's state undefined after a shutdown, and KVM
    /// resets the vCPU there. Then where the guest faulted is unknown, and `rip` and
    /// `bytes` are left out rather than pointing at the reset vector.
    pub registers_reset: bool,
}

impl GuestStop {
    /// Gathers what `vcpu` can tell about where it stopped, best effort: what cannot be
    /// read is left out.
    pub fn read(vcpu: &dyn Vcpu, reason: StopReason) -> GuestStop {
        let mut stop = GuestStop {
            bytes: reason.instruction_bytes().unwrap_or_default(),
            reason,
            rip: None,
            registers_reset: false,
        };
        #[cfg(target_arch = "x86_64")]
        {
            stop.rip = vcpu.regs().ok().map(|regs| regs.rip);
            if stop.reason == StopReason::Shutdown {
                let cs = vcpu.sregs().ok().map(|s| (s.cs.selector, s.cs.base));
                if is_reset_state(stop.rip, cs) {
                    stop.rip = None;
                    stop.registers_reset = true;
                    return stop;
                }
            }
            if let (Some(rip), true) = (stop.rip, stop.bytes.is_empty()) {
                // Code is fetched at cs.base + rip (0 in long mode, not in real mode).
                let base = vcpu.sregs().map(|s| s.cs.base).unwrap_or(0);
                let mut code = [0u8; MAX_INSTRUCTION_LEN];
                if let Ok(n) = vcpu.read_virtual(base.wrapping_add(rip), &mut code) {
                    stop.bytes = code.get(..n).unwrap_or_default().to_vec();
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = vcpu;
        stop
    }
}

/// Whether `rip` and `cs` (selector, base) are an x86 vCPU's state at reset: the first
/// instruction fetched from 0xffff_fff0.
fn is_reset_state(rip: Option<u64>, cs: Option<(u16, u64)>) -> bool {
    rip == Some(0xfff0) && cs == Some((0xf000, 0xffff_0000))
}

impl fmt::Display for GuestStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason.what())?;
        if self.registers_reset {
            f.write_str(" (the hypervisor reset the vCPU, so where is unknown)")?;
        }
        if let Some(rip) = self.rip {
            write!(f, " at rip {rip:#x}")?;
        }
        if !self.bytes.is_empty() {
            f.write_str(" (bytes")?;
            for b in &self.bytes {
                write!(f, " {b:02x}")?;
            }
            f.write_str(")")?;
        }
        write!(f, ": {}", self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_in_words() {
        let stop = |reason| GuestStop {
            reason,
            rip: None,
            bytes: Vec::new(),
            registers_reset: false,
        };
        let internal = |suberror| StopReason::InternalError {
            suberror,
            data: vec![],
        };
        assert_eq!(
            stop(internal(3)).to_string(),
            "the hypervisor could not deliver an exception or interrupt: \
             internal error 3 (unexpected exit during event delivery)"
        );
        assert_eq!(
            stop(internal(99)).to_string(),
            "the hypervisor could not go on: internal error 99"
        );
        assert_eq!(
            stop(StopReason::FailEntry { reason: 7, cpu: 2 }).to_string(),
            "the hypervisor could not enter the guest (invalid vCPU state): \
             entry failure, hardware reason 0x7 on host CPU 2"
        );
        let triple = GuestStop {
            reason: StopReason::Shutdown,
            rip: Some(0x1000),
            bytes: vec![0x0f, 0x0b],
            registers_reset: false,
        };
        assert_eq!(
            triple.to_string(),
            "the guest triple-faulted at rip 0x1000 (bytes 0f 0b): shutdown"
        );
        let reset = GuestStop {
            reason: StopReason::Shutdown,
            rip: None,
            bytes: Vec::new(),
            registers_reset: true,
        };
        assert_eq!(
            reset.to_string(),
            "the guest triple-faulted (the hypervisor reset the vCPU, so where is unknown): \
             shutdown"
        );
    }

    #[test]
    fn the_reset_state_is_told_from_a_fault_elsewhere() {
        assert!(is_reset_state(Some(0xfff0), Some((0xf000, 0xffff_0000))));
        // Real mode code at f000:fff0 that is not the reset vector's alias.
        assert!(!is_reset_state(Some(0xfff0), Some((0xf000, 0xf_0000))));
        assert!(!is_reset_state(Some(0x100007), Some((0x8, 0))));
        assert!(!is_reset_state(None, None));
    }

    #[test]
    fn emulation_failure_data_carries_the_bytes() {
        // flags, then the length (3) and the bytes 0f 01 d9, little-endian in two words.
        let word = u64::from_le_bytes([3, 0x0f, 0x01, 0xd9, 0xaa, 0xbb, 0xcc, 0xdd]);
        let with = |flags, suberror| StopReason::InternalError {
            suberror,
            data: vec![flags, word, u64::MAX, 0x1234],
        };
        assert_eq!(
            with(FLAG_INSTRUCTION_BYTES, 1).instruction_bytes(),
            Some(vec![0x0f, 0x01, 0xd9])
        );
        assert_eq!(with(0, 1).instruction_bytes(), None, "no flag");
        assert_eq!(
            with(1, 2).instruction_bytes(),
            None,
            "not an emulation failure"
        );
        // A length past 15 is cut to 15; data too short for the length has no bytes.
        let long = StopReason::InternalError {
            suberror: 1,
            data: vec![1, 0xffff_ffff_ffff_ff40, u64::MAX],
        };
        assert_eq!(long.instruction_bytes().map(|b| b.len()), Some(15));
        let short = StopReason::InternalError {
            suberror: 1,
            data: vec![1, 0x0000_0000_0000_0f09],
        };
        assert_eq!(short.instruction_bytes(), None);
        assert_eq!(StopReason::Shutdown.instruction_bytes(), None);
    }
}
