//! Machine-check banks on Xen: its virtual MCE for HVM guests (`vmce.c` in Xen 4.17), which
//! keeps each vCPU's state in the `VMCE_VCPU` HVM record.
//!
//! Xen emulates `GUEST_MC_BANK_NUM` (2) banks per vCPU with state behind them, and starts a
//! vCPU with MCG_CAP = the bank count plus, on Intel hosts, `MCG_SER_P | MCG_TES_P |
//! MCG_CMCI_P` (AMD: the count alone), without MCG_CTL_P. The record holds MCG_CAP, MCi_CTL2
//! of banks 0 and 1 and MCG_EXT_CTL; on load Xen takes any bank count and MCG_CTL_P besides
//! its own bits. The guest's bank MSRs are those below MCG_CAP's count: Xen keeps
//! MCi_STATUS/ADDR/MISC for banks 0 and 1 only (a bank above reads zero), so vmkit offers
//! 1 to 2 banks ([`GUEST_MC_BANKS`]). MCG_CTL is not state in Xen: it reads all ones when
//! MCG_CAP has MCG_CTL_P and zero otherwise, and Xen ignores the guest's writes; vmkit
//! reads it so and takes a write of that value only. MCG_STATUS lives outside the record
//! (Xen's own save loses it), so it is not offered.

use super::sys::abi::HVM_VMCE_VCPU_SIZE;
use crate::arch::x86_64::Msr;

/// The banks Xen keeps state for (`GUEST_MC_BANK_NUM`).
pub(crate) const GUEST_MC_BANKS: u8 = 2;

/// MCG_CAP: bank count in bits 0-7, MCG_CTL present in bit 8. Read-only to a guest.
pub(crate) const MSR_MCG_CAP: u32 = 0x179;
/// MCG_CTL: global enable of the banks' error reporting.
pub(crate) const MSR_MCG_CTL: u32 = 0x17b;

const MCG_CAP_COUNT: u64 = 0xff;
const MCG_CTL_P: u64 = 1 << 8;

/// A vCPU's `VMCE_VCPU` record (`struct hvm_vmce_vcpu`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct VmceRecord {
    /// MCG_CAP.
    pub(crate) caps: u64,
    /// MCi_CTL2 of banks 0 and 1 (Intel's CMCI control).
    pub(crate) mci_ctl2: [u64; 2],
    /// MCG_EXT_CTL (Intel's local machine-check enable).
    pub(crate) mcg_ext_ctl: u64,
}

impl VmceRecord {
    /// Parses a record; `None` unless it has exactly `HVM_SAVE_LENGTH(VMCE_VCPU)` bytes.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != HVM_VMCE_VCPU_SIZE {
            return None;
        }
        let word = |i: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(v)
        };
        Some(VmceRecord {
            caps: word(0),
            mci_ctl2: [word(1), word(2)],
            mcg_ext_ctl: word(3),
        })
    }

    /// The record's bytes.
    pub(crate) fn to_bytes(self) -> Vec<u8> {
        [
            self.caps,
            self.mci_ctl2[0],
            self.mci_ctl2[1],
            self.mcg_ext_ctl,
        ]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
    }

    /// The record with `banks` banks and MCG_CTL present, as `Vcpu::setup_mce` gives them
    /// (on KVM too), keeping Xen's vendor bits. Xen's load takes exactly these changes.
    pub(crate) fn with_banks(self, banks: u8) -> Self {
        VmceRecord {
            caps: self.caps & !MCG_CAP_COUNT | u64::from(banks) | MCG_CTL_P,
            ..self
        }
    }

    /// The value of MSR `index` as the guest reads it, if the record decides it.
    pub(crate) fn msr(&self, index: u32) -> Option<u64> {
        match index {
            MSR_MCG_CAP => Some(self.caps),
            MSR_MCG_CTL => Some(if self.caps & MCG_CTL_P != 0 {
                u64::MAX
            } else {
                0
            }),
            _ => None,
        }
    }

    /// Whether a VMM's write of `msr` can stand: Xen holds these values fixed (MCG_CAP
    /// changes only through `setup_mce`), so only the value the vCPU has already is taken.
    /// `None` for an MSR the record does not decide.
    pub(crate) fn accepts(&self, msr: &Msr) -> Option<bool> {
        self.msr(msr.index).map(|held| held == msr.data)
    }
}

/// Whether `index` is one of the machine-check MSRs the `VMCE_VCPU` record decides.
pub(crate) fn is_mce_msr(index: u32) -> bool {
    matches!(index, MSR_MCG_CAP | MSR_MCG_CTL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_takes_a_bank_count() {
        // An Intel host's default: SER_P | TES_P | CMCI_P | 2 banks.
        let intel = VmceRecord {
            caps: 1 << 24 | 1 << 11 | 1 << 10 | 2,
            mci_ctl2: [5, 6],
            mcg_ext_ctl: 1,
        };
        assert_eq!(VmceRecord::from_bytes(&intel.to_bytes()), Some(intel));
        assert_eq!(VmceRecord::from_bytes(&[0; 31]), None);
        assert_eq!(VmceRecord::from_bytes(&[0; 33]), None);
        assert_eq!(intel.msr(MSR_MCG_CTL), Some(0), "no MCG_CTL_P yet");
        let one = intel.with_banks(1);
        assert_eq!(one.caps, 1 << 24 | 1 << 11 | 1 << 10 | MCG_CTL_P | 1);
        assert_eq!((one.mci_ctl2, one.mcg_ext_ctl), ([5, 6], 1));
        assert_eq!(one.msr(MSR_MCG_CAP), Some(one.caps));
        assert_eq!(one.msr(MSR_MCG_CTL), Some(u64::MAX));
        assert_eq!(one.msr(0x17a), None, "MCG_STATUS is not in the record");
    }

    #[test]
    fn only_the_values_xen_holds_are_accepted() {
        let amd = VmceRecord {
            caps: 2,
            ..VmceRecord::default()
        }
        .with_banks(2);
        let write = |index, data| amd.accepts(&Msr { index, data });
        assert_eq!(write(MSR_MCG_CTL, u64::MAX), Some(true));
        assert_eq!(write(MSR_MCG_CTL, 0), Some(false));
        assert_eq!(write(MSR_MCG_CAP, amd.caps), Some(true));
        assert_eq!(write(MSR_MCG_CAP, 10 | MCG_CTL_P), Some(false));
        assert_eq!(write(0x10, 0), None);
        assert!(is_mce_msr(MSR_MCG_CAP) && is_mce_msr(MSR_MCG_CTL) && !is_mce_msr(0x17a));
    }
}
