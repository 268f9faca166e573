//! The VM clock on Xen: guest time as the guest's TSC reads it.
//!
//! KVM's VM clock is kvmclock's time base, nanoseconds since the VM was created, which a
//! VMM moves with `KVM_SET_CLOCK`. A Xen HVM guest's own time source is its TSC: Xen's PV
//! clock for HVM guests is the host's system time (one for every domain, which no domctl
//! moves), and `XEN_DOMCTL_gettscinfo`'s `elapsed_nsec` is the host's TSC in nanoseconds
//! unless the TSC is emulated. So vmkit's clock is the guest TSC in nanoseconds at the
//! domain's TSC frequency (`gtsc_khz` of the HVM context header):
//!
//! - reading it takes the whole HVM context (Xen stamps every CPU record's `tsc` at the
//!   moment of a whole save; a single record read returns the value of the last whole save
//!   or load) and converts the TSC of the lowest created vCPU;
//! - setting it loads one TSC into every created vCPU in one load (Xen applies all CPU
//!   records of a load at the same instant), so they stay in step;
//! - a vCPU created later starts at the clock's current value instead of 0, and a VM without
//!   vCPUs keeps the clock as a base (the value last set, or 0 at creation) plus the time
//!   since.

use std::time::Instant;

use super::context::{self, Record};
use super::control::StateError;
use super::sys::abi::{
    HvmHwCpu, HvmSaveHeader, Pod, HVM_SAVE_CODE_CPU, HVM_SAVE_CODE_CPU_XSAVE, HVM_SAVE_CODE_HEADER,
};
use super::vm::VmShared;

/// A clock value and when it held, for a VM without vCPUs and for vCPUs created later.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClockBase {
    at: Instant,
    ns: u64,
}

impl ClockBase {
    /// A clock at 0 now (a new VM).
    pub(crate) fn new() -> Self {
        ClockBase::at(0)
    }

    /// A clock at `ns` now.
    pub(crate) fn at(ns: u64) -> Self {
        ClockBase {
            at: Instant::now(),
            ns,
        }
    }

    /// The clock's value now.
    pub(crate) fn now(&self) -> u64 {
        let elapsed = u64::try_from(self.at.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.ns.saturating_add(elapsed)
    }
}

/// TSC ticks at `khz` in `ns` nanoseconds, rounded up (so that converting back never
/// gives less than `ns`).
pub(crate) fn ns_to_ticks(ns: u64, khz: u32) -> u64 {
    let ticks = (u128::from(ns) * u128::from(khz)).div_ceil(1_000_000);
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// Nanoseconds in `ticks` TSC ticks at `khz`, rounded down; `None` if `khz` is 0.
pub(crate) fn ticks_to_ns(ticks: u64, khz: u32) -> Option<u64> {
    let ns = (u128::from(ticks) * 1_000_000).checked_div(u128::from(khz))?;
    Some(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// The guest's TSC frequency from a context's header record.
fn gtsc_khz(records: &[Record]) -> Result<u32, StateError> {
    records
        .first()
        .filter(|r| r.typecode == HVM_SAVE_CODE_HEADER)
        .and_then(|r| HvmSaveHeader::from_bytes(&r.data))
        .map(|h| h.gtsc_khz)
        .filter(|&khz| khz != 0)
        .ok_or_else(|| StateError::Context("the header gives no guest TSC frequency".into()))
}

impl VmShared {
    /// The guest's TSC frequency (kHz), from the header taken at creation.
    pub(crate) fn gtsc_khz(&self) -> Result<u32, StateError> {
        let header = self
            .hvm
            .as_ref()
            .map(|hvm| hvm.header.clone())
            .ok_or_else(|| StateError::Context("a PV domain has no HVM context".into()))?;
        gtsc_khz(&[header])
    }

    /// Runs `f` on the domain's whole HVM context, taken with `vcpus` online (those offline
    /// are brought online for the moment). Takes the control lock and pauses the domain.
    fn with_context<R>(
        &self,
        vcpus: &[u32],
        f: impl FnOnce(&Self, Vec<Record>) -> Result<R, StateError>,
    ) -> Result<R, StateError> {
        let control = self.control();
        self.with_paused(&control, |vm| {
            let mut offline = Vec::new();
            for &id in vcpus {
                if !vm.is_online(id)? {
                    vm.set_online(id, true)?;
                    offline.push(id);
                }
            }
            let result = vm
                .xc()
                .hvm_context(vm.domid)
                .map_err(StateError::from)
                .and_then(|buf| {
                    context::parse(&buf).map_err(|e| StateError::Context(e.to_string()))
                })
                .and_then(|records| f(vm, records));
            for id in offline {
                vm.set_online(id, false)?;
            }
            result
        })
    }

    /// The TSC of vCPU `id` now, and the guest's TSC frequency (kHz).
    pub(crate) fn guest_tsc(&self, id: u32) -> Result<(u64, u32), StateError> {
        self.with_context(&[id], |_, records| {
            let khz = gtsc_khz(&records)?;
            let tsc = records
                .iter()
                .find(|r| r.typecode == HVM_SAVE_CODE_CPU && u32::from(r.instance) == id)
                .and_then(|r| HvmHwCpu::from_bytes(&r.data))
                .map(|cpu| cpu.tsc)
                .ok_or_else(|| StateError::Context(format!("no CPU record for vCPU {id}")))?;
            Ok((tsc, khz))
        })
    }

    /// Sets the TSC of every vCPU of `vcpus` to `ns` of guest time, in one load. The load
    /// changes nothing else of their records, so a vCPU in the middle of an I/O access (an
    /// MMIO or port read, a string access), which the load makes send it again, gets the
    /// same answer again (`VmShared::replay_after_load`), as for the irqchip's state.
    pub(crate) fn set_guest_time(&self, vcpus: &[u32], ns: u64) -> Result<(), StateError> {
        self.with_context(vcpus, |vm, records| {
            let tsc = ns_to_ticks(ns, gtsc_khz(&records)?);
            let mut load = Vec::new();
            for mut record in records {
                let ours = vcpus.contains(&u32::from(record.instance));
                match record.typecode {
                    HVM_SAVE_CODE_HEADER => load.push(record),
                    HVM_SAVE_CODE_CPU if ours => {
                        let mut cpu = HvmHwCpu::from_bytes(&record.data).ok_or_else(|| {
                            StateError::Context(format!(
                                "a CPU record of {} bytes",
                                record.data.len()
                            ))
                        })?;
                        cpu.tsc = tsc;
                        record.data = cpu.to_bytes();
                        load.push(record);
                    }
                    // Loading a CPU record resets the XSAVE components above SSE; the
                    // whole save lists CPU_XSAVE records after the CPU records.
                    HVM_SAVE_CODE_CPU_XSAVE if ours => load.push(record),
                    _ => {}
                }
            }
            let replays = vcpus
                .iter()
                .filter_map(|&vcpu| vm.replay_after_load(vcpu).map(|r| (vcpu, r)))
                .collect();
            let mut buf = context::build(&load);
            vm.xc().set_hvm_context(vm.domid, &mut buf)?;
            vm.expect_replays(replays);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanoseconds_and_ticks_convert_without_losing_the_set_value() {
        // 2.5 GHz: 2.5 ticks a nanosecond.
        assert_eq!(ns_to_ticks(1_000_000_000, 2_500_000), 2_500_000_000);
        assert_eq!(ticks_to_ns(2_500_000_000, 2_500_000), Some(1_000_000_000));
        // A frequency that does not divide evenly: rounding up, then down, keeps at least
        // the value set.
        for ns in [1, 999, 3_600_000_000_000, u64::MAX / 4_000] {
            let ticks = ns_to_ticks(ns, 2_893_211);
            let back = ticks_to_ns(ticks, 2_893_211).unwrap();
            assert!(back >= ns && back - ns <= 1, "{ns} -> {ticks} -> {back}");
        }
        assert_eq!(ticks_to_ns(1, 0), None);
    }

    #[test]
    fn a_clock_base_runs_on_from_its_value() {
        let base = ClockBase::at(5_000);
        let first = base.now();
        assert!(first >= 5_000);
        assert!(base.now() >= first);
        assert_eq!(ClockBase::at(u64::MAX).now(), u64::MAX);
    }
}
