//! The source's settings, its progress reports, and the estimate that decides when to stop
//! the guest.

use std::time::Duration;

use crate::memory::PAGE_SIZE;

/// How the source migrates.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationOptions {
    /// The longest pause the guest should see: the source stops the vCPUs once the pages
    /// still dirty would take at most this long to send at the bandwidth measured so far;
    /// while a round still halves the dirty set, it goes on until they would take at most
    /// half of it (another short round costs less than the pause it saves).
    pub downtime_budget: Duration,
    /// After this many pre-copy rounds (round 0 included) the source stops the vCPUs however
    /// much is still dirty, so that a guest that dirties memory faster than the stream
    /// carries it still migrates.
    pub max_rounds: u32,
}

impl Default for MigrationOptions {
    /// A 300 ms budget (QEMU's default) and 30 rounds.
    fn default() -> Self {
        MigrationOptions {
            downtime_budget: Duration::from_millis(300),
            max_rounds: 30,
        }
    }
}

impl MigrationOptions {
    /// Sets [`downtime_budget`](Self::downtime_budget).
    pub fn downtime_budget(mut self, budget: Duration) -> Self {
        self.downtime_budget = budget;
        self
    }

    /// Sets [`max_rounds`](Self::max_rounds) (at least 1).
    pub fn max_rounds(mut self, rounds: u32) -> Self {
        self.max_rounds = rounds.max(1);
        self
    }
}

/// Where a migration stands, reported to the source's progress callback after each
/// pre-copy round and once the vCPUs are paused.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// The pre-copy round just sent (0 is the full copy); in the stop-and-copy report, the
    /// number of pre-copy rounds.
    pub round: u32,
    /// Whether the vCPUs are paused: this is the stop-and-copy report.
    pub stopped: bool,
    /// Pages sent so far, in all rounds.
    pub pages_sent: u64,
    /// Bytes written to the stream so far (frame headers included).
    pub bytes_sent: u64,
    /// Pages dirtied during this round, still to send.
    pub dirty_pages: u64,
    /// How fast the guest dirtied pages during this round, in pages per second.
    pub dirty_rate: f64,
    /// The stream's bandwidth measured over the whole migration, in bytes per second.
    pub bandwidth: f64,
    /// How long sending `dirty_pages` with the vCPUs paused would take at `bandwidth`.
    pub expected_downtime: Duration,
}

/// What a completed migration took, from the source's side.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Pre-copy rounds, round 0 included.
    pub rounds: u32,
    /// Pages sent, in all rounds and the stop-and-copy.
    pub pages_sent: u64,
    /// Pages sent while the vCPUs were paused.
    pub final_pages: u64,
    /// Bytes written to the stream.
    pub bytes_sent: u64,
    /// From the moment every vCPU is paused to the destination's confirmation. The guest's
    /// pause is this, plus how long the vCPUs took to stop (a kick, unless an exit handler
    /// is busy), plus how long the destination's VMM takes to start its vCPUs after
    /// [`receive`](super::receive) returns.
    pub downtime: Duration,
    /// From the offer to the confirmation.
    pub total: Duration,
    /// How long pausing the vCPUs took (before `downtime` starts).
    pub pausing: Duration,
    /// The part of `downtime` spent capturing the devices', vCPUs' and VM's state.
    pub capture: Duration,
    /// The part of `downtime` spent harvesting and sending the last dirty pages and the state.
    pub final_copy: Duration,
    /// The part of `downtime` spent waiting for the destination to restore and confirm.
    pub confirmation: Duration,
}

/// Whether pre-copy ends after a round that left `dirty` pages (`expected` to send), the
/// round before having left `previous`.
pub(super) fn converged(
    options: &MigrationOptions,
    expected: Duration,
    dirty: u64,
    previous: Option<u64>,
) -> bool {
    let halving = previous.is_some_and(|p| dirty.saturating_mul(2) <= p);
    match halving {
        true => expected <= options.downtime_budget / 2,
        false => expected <= options.downtime_budget,
    }
}

/// The time sending `pages` takes at `bandwidth` bytes per second.
pub(super) fn send_time(pages: u64, bandwidth: f64) -> Duration {
    if bandwidth <= 0.0 {
        return Duration::MAX;
    }
    let secs = (pages * PAGE_SIZE as u64) as f64 / bandwidth;
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_copy_goes_on_while_rounds_halve_the_dirty_set() {
        let options = MigrationOptions::default();
        let ms = Duration::from_millis;
        assert!(!converged(&options, ms(301), 10, None));
        assert!(converged(&options, ms(300), 10, None));
        // Halved, and above half the budget: one more round.
        assert!(!converged(&options, ms(200), 100, Some(200)));
        assert!(converged(&options, ms(150), 100, Some(200)));
        // Not halved: the budget alone.
        assert!(converged(&options, ms(200), 101, Some(200)));
    }
}
