//! The destination's checks of everything the source announces and sends: an offer against
//! this host and the destination's limits, each page run against the announced layout, the
//! number of rounds. Pure (no VM), so that a fuzz target drives it as the destination does.

use vmkit_snapshot::{Arch, Backend, MAX_REGIONS};

use super::error::Refusal;
use super::wire::{Message, Offer, PageRun};
use crate::hypervisor::{Capabilities, HypervisorKind};
use crate::memory::{MemoryFlags, PAGE_SIZE};

/// The limits a destination holds a source to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The most guest memory, in bytes, the destination maps for an incoming VM.
    pub max_memory: u64,
    /// The most pre-copy rounds it accepts.
    pub max_rounds: u32,
}

impl Default for Limits {
    /// 64 GiB of memory, 1000 rounds.
    fn default() -> Self {
        Limits {
            max_memory: 64 << 30,
            max_rounds: 1000,
        }
    }
}

impl Limits {
    /// Sets [`max_memory`](Self::max_memory).
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.max_memory = bytes;
        self
    }

    /// Sets [`max_rounds`](Self::max_rounds).
    pub fn max_rounds(mut self, rounds: u32) -> Self {
        self.max_rounds = rounds;
        self
    }
}

/// What the source announced or sent that the destination does not accept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The offer is refused; the refusal goes back to the source.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A page run names a region the offer does not have.
    #[error("page run in region #{region}, but the layout has {regions} regions")]
    NoSuchRegion {
        /// The region index.
        region: u32,
        /// Regions in the layout.
        regions: usize,
    },
    /// A page run extends past its region.
    #[error("pages {first}..{end} of region #{region}, which has {pages} pages")]
    OutOfRegion {
        /// The region index.
        region: u32,
        /// The first page.
        first: u64,
        /// One past the last page (saturating).
        end: u64,
        /// Pages in the region.
        pages: u64,
    },
    /// A round ended with a number other than the next one.
    #[error("round {found} ended, round {expected} was expected")]
    Round {
        /// The next round.
        expected: u32,
        /// The round that ended.
        found: u32,
    },
    /// More rounds than [`Limits::max_rounds`].
    #[error("more than {max} pre-copy rounds")]
    TooManyRounds {
        /// The limit.
        max: u32,
    },
}

impl CheckError {
    /// The refusal to send the source for this.
    pub fn refusal(&self) -> Refusal {
        match self {
            CheckError::Refused(refusal) => refusal.clone(),
            other => Refusal::Layout(other.to_string()),
        }
    }
}

/// The vmkit-snapshot backend code of `kind`.
pub(super) fn backend_code(kind: HypervisorKind) -> Backend {
    match kind {
        HypervisorKind::Kvm => Backend::Kvm,
        HypervisorKind::Xen => Backend::Xen,
    }
}

/// Checks an offer against this host (`kind`, `host`) and `limits`, before anything is built.
pub fn check_offer(
    offer: &Offer,
    kind: HypervisorKind,
    host: &Capabilities,
    limits: &Limits,
) -> Result<(), Refusal> {
    let ours = (Arch::X86_64, backend_code(kind));
    let theirs = (Arch::from_u16(offer.arch), Backend::from_u16(offer.backend));
    if theirs != (Some(ours.0), Some(ours.1)) {
        let name = |code: u16, known: Option<String>| known.unwrap_or(format!("unknown ({code})"));
        return Err(Refusal::Platform {
            found: format!(
                "{}/{}",
                name(offer.arch, theirs.0.map(|a| a.to_string())),
                name(offer.backend, theirs.1.map(|b| b.to_string()))
            ),
            expected: format!("{}/{}", ours.0, ours.1),
        });
    }
    let missing = offer.capabilities.missing_in(host);
    if !missing.is_empty() {
        return Err(Refusal::MissingCapabilities(
            missing.iter().map(ToString::to_string).collect(),
        ));
    }
    check_config(offer, host)?;
    check_layout(offer, host, limits)
}

fn check_config(offer: &Offer, host: &Capabilities) -> Result<(), Refusal> {
    let config = &offer.config;
    if config.max_vcpus == 0 || config.max_vcpus > host.max_vcpus {
        return Err(Refusal::Config(format!(
            "max_vcpus {} (this host allows 1 to {})",
            config.max_vcpus, host.max_vcpus
        )));
    }
    if let Some(entries) = config.dirty_ring {
        if entries > host.dirty_ring_max_entries {
            return Err(Refusal::Config(format!(
                "dirty rings of {entries} entries (this host allows {})",
                host.dirty_ring_max_entries
            )));
        }
    }
    if (config.irqchip && !host.irqchip) || (config.pit && !host.pit) {
        return Err(Refusal::Config(
            "an in-kernel irqchip or PIT this host lacks".to_string(),
        ));
    }
    if offer.vcpus.is_empty() {
        return Err(Refusal::Config("no vCPU".to_string()));
    }
    let mut ids = offer.vcpus.clone();
    ids.sort_unstable();
    for pair in ids.windows(2) {
        if pair[0] == pair[1] {
            return Err(Refusal::Config(format!("vCPU {} listed twice", pair[0])));
        }
    }
    if let Some(&id) = ids.iter().find(|&&id| id >= config.max_vcpus) {
        return Err(Refusal::Config(format!(
            "vCPU {id} is out of range: max_vcpus is {}",
            config.max_vcpus
        )));
    }
    Ok(())
}

fn check_layout(offer: &Offer, host: &Capabilities, limits: &Limits) -> Result<(), Refusal> {
    let regions = &offer.regions;
    let max_regions = (MAX_REGIONS as usize).min(host.max_memory_slots as usize);
    if regions.is_empty() || regions.len() > max_regions {
        return Err(Refusal::Layout(format!(
            "{} regions (1 to {max_regions} allowed)",
            regions.len()
        )));
    }
    let page = PAGE_SIZE as u64;
    let mut total = 0u64;
    let mut end_of_previous = 0u64;
    for (index, region) in regions.iter().enumerate() {
        let end = region.guest_addr.checked_add(region.size);
        let Some(end) = end.filter(|_| {
            region.size > 0 && region.guest_addr % page == 0 && region.size % page == 0
        }) else {
            return Err(Refusal::Layout(format!(
                "region #{index} at {:#x} (+{:#x} bytes) is empty, unaligned or wraps",
                region.guest_addr, region.size
            )));
        };
        if index > 0 && region.guest_addr < end_of_previous {
            return Err(Refusal::Layout(format!(
                "region #{index} at {:#x} overlaps or precedes the one before it",
                region.guest_addr
            )));
        }
        if MemoryFlags::from_bits(region.flags).is_none() {
            return Err(Refusal::Layout(format!(
                "region #{index} has unknown flags {:#x}",
                region.flags
            )));
        }
        end_of_previous = end;
        total = total.saturating_add(region.size);
    }
    if total > limits.max_memory {
        return Err(Refusal::Layout(format!(
            "{total} bytes of memory, more than the {} this destination accepts",
            limits.max_memory
        )));
    }
    Ok(())
}

/// Follows a stream from the destination's side: the offer first, then page runs and round
/// ends within the offer's layout and the limits, until the state.
#[derive(Debug)]
pub struct StreamCheck {
    offer: Option<Offer>,
    round: u32,
    limits: Limits,
}

impl StreamCheck {
    /// A check that expects an offer first.
    pub fn new(limits: Limits) -> Self {
        StreamCheck {
            offer: None,
            round: 0,
            limits,
        }
    }

    /// The accepted offer, once there is one.
    pub fn offer(&self) -> Option<&Offer> {
        self.offer.as_ref()
    }

    /// Records an offer that passed [`check_offer`].
    pub fn accept(&mut self, offer: Offer) {
        self.offer = Some(offer);
    }

    /// Checks a page run against the accepted offer's layout.
    pub fn page_run(&self, run: &PageRun<'_>) -> Result<(), CheckError> {
        let regions = self.offer.as_ref().map_or(&[][..], |o| &o.regions[..]);
        let region = regions
            .get(run.region as usize)
            .ok_or(CheckError::NoSuchRegion {
                region: run.region,
                regions: regions.len(),
            })?;
        let pages = region.pages();
        let end = run.first_page.saturating_add(run.count());
        if end > pages {
            return Err(CheckError::OutOfRegion {
                region: run.region,
                first: run.first_page,
                end,
                pages,
            });
        }
        Ok(())
    }

    /// Checks the end of a round: the next number, within the limit.
    pub fn round_end(&mut self, round: u32) -> Result<(), CheckError> {
        if round != self.round {
            return Err(CheckError::Round {
                expected: self.round,
                found: round,
            });
        }
        if round >= self.limits.max_rounds {
            return Err(CheckError::TooManyRounds {
                max: self.limits.max_rounds,
            });
        }
        self.round += 1;
        Ok(())
    }

    /// Checks one message of the source as the destination would, without a VM: the offer
    /// against `kind` and `host`, then page runs and round ends. Returns whether the stream
    /// goes on (false at the state or an abort).
    pub fn message(
        &mut self,
        message: &Message<'_>,
        kind: HypervisorKind,
        host: &Capabilities,
    ) -> Result<bool, CheckError> {
        match (message, &self.offer) {
            (Message::Offer(offer), None) => {
                check_offer(offer, kind, host, &self.limits)?;
                self.accept((**offer).clone());
                Ok(true)
            }
            (Message::Pages(run), Some(_)) => self.page_run(run).map(|()| true),
            (Message::RoundEnd(end), Some(_)) => self.round_end(end.round).map(|()| true),
            (Message::State(_) | Message::Abort(_), Some(_)) => Ok(false),
            (other, _) => Err(Refusal::Stream(format!("unexpected {} frame", other.kind())).into()),
        }
    }
}
