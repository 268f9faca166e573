//! The destination's checks of everything the source announces and sends: an offer against
//! this host and the destination's limits, each page run against the announced layout, the
//! number of rounds. Pure (no VM), so that a fuzz target drives it as the destination does.

use vmkit_snapshot::{Arch, Backend, MAX_REGIONS};

use super::error::Refusal;
use super::wire::{Message, Offer, PageBatch, PageRun};
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
        let end = run.first_page.saturating_add(u64::from(run.count));
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

    /// Checks every run of a page frame against the accepted offer's layout.
    pub fn page_batch(&self, batch: &PageBatch<'_>) -> Result<(), CheckError> {
        batch.runs().try_for_each(|run| self.page_run(&run))
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
            (Message::Pages(batch), Some(_)) => self.page_batch(batch).map(|()| true),
            (Message::RoundEnd(end), Some(_)) => self.round_end(end.round).map(|()| true),
            (Message::State(_) | Message::Abort(_), Some(_)) => Ok(false),
            (other, _) => Err(Refusal::Stream(format!("unexpected {} frame", other.kind())).into()),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::hypervisor::VmConfig;
    use crate::migration::frame::FrameWriter;
    use crate::migration::wire::{self, Region, RoundEnd, PAGES_HEADER_LEN, RUN_DATA, RUN_ZERO};

    /// The host the fuzz target and these tests check against.
    pub(crate) fn host() -> Capabilities {
        Capabilities {
            max_vcpus: 64,
            max_memory_slots: 32,
            irqchip: true,
            pit: true,
            dirty_log: true,
            ..Capabilities::default()
        }
    }

    pub(crate) fn offer() -> Offer {
        Offer {
            arch: Arch::X86_64.to_u16(),
            backend: Backend::Kvm.to_u16(),
            capabilities: Capabilities {
                max_vcpus: 2,
                ..Capabilities::default()
            },
            config: VmConfig::default().max_vcpus(2),
            regions: vec![
                Region {
                    guest_addr: 0,
                    size: 0x10_000,
                    flags: MemoryFlags::LOG_DIRTY.bits(),
                },
                Region {
                    guest_addr: 0x100_000,
                    size: 0x2000,
                    flags: 0,
                },
            ],
            vcpus: vec![1, 0],
        }
    }

    fn refused(offer: &Offer) -> Refusal {
        check_offer(offer, HypervisorKind::Kvm, &host(), &Limits::default()).unwrap_err()
    }

    #[test]
    fn a_fitting_offer_passes() {
        check_offer(&offer(), HypervisorKind::Kvm, &host(), &Limits::default()).unwrap();
    }

    #[test]
    fn offers_beyond_the_host_or_limits_are_refused() {
        let xen = check_offer(&offer(), HypervisorKind::Xen, &host(), &Limits::default());
        assert!(matches!(xen, Err(Refusal::Platform { .. })), "{xen:?}");

        let mut big = offer();
        big.capabilities.max_vcpus = 65;
        let Refusal::MissingCapabilities(missing) = refused(&big) else {
            panic!()
        };
        assert_eq!(missing, ["max vCPUs: 65 required, 64 available"]);

        let mut twice = offer();
        twice.vcpus = vec![0, 0];
        assert!(matches!(refused(&twice), Refusal::Config(m) if m.contains("twice")));
        let mut out_of_range = offer();
        out_of_range.vcpus = vec![2];
        assert!(matches!(refused(&out_of_range), Refusal::Config(m) if m.contains("vCPU 2")));

        let mut overlap = offer();
        overlap.regions[1].guest_addr = 0x8000;
        assert!(matches!(refused(&overlap), Refusal::Layout(m) if m.contains("overlaps")));
        let mut unaligned = offer();
        unaligned.regions[0].size = 0x10_001;
        assert!(matches!(refused(&unaligned), Refusal::Layout(m) if m.contains("unaligned")));
        let mut wraps = offer();
        wraps.regions[1].guest_addr = u64::MAX - 0xfff;
        assert!(matches!(refused(&wraps), Refusal::Layout(_)));
        let mut flags = offer();
        flags.regions[0].flags = 1 << 31;
        assert!(matches!(refused(&flags), Refusal::Layout(m) if m.contains("flags")));
        let small = Limits::default().max_memory(0x10_000);
        assert!(matches!(
            check_offer(&offer(), HypervisorKind::Kvm, &host(), &small),
            Err(Refusal::Layout(m)) if m.contains("more than")
        ));
    }

    #[test]
    fn page_runs_and_rounds_stay_within_the_offer() {
        let mut check = StreamCheck::new(Limits::default().max_rounds(2));
        let page = [0u8; PAGE_SIZE];
        let run = |region, first_page| PageRun {
            region,
            first_page,
            count: 1,
            data: Some(&page[..]),
        };
        // Nothing before the offer.
        assert!(check.page_run(&run(0, 0)).is_err());
        check
            .message(
                &Message::Offer(Box::new(offer())),
                HypervisorKind::Kvm,
                &host(),
            )
            .unwrap();
        check.page_run(&run(0, 15)).unwrap();
        check.page_run(&run(1, 1)).unwrap();
        assert!(matches!(
            check.page_run(&run(1, 2)),
            Err(CheckError::OutOfRegion {
                end: 3,
                pages: 2,
                ..
            })
        ));
        assert!(matches!(
            check.page_run(&run(0, u64::MAX)),
            Err(CheckError::OutOfRegion { .. })
        ));
        assert!(matches!(
            check.page_run(&run(2, 0)),
            Err(CheckError::NoSuchRegion {
                region: 2,
                regions: 2
            })
        ));
        assert!(matches!(
            check.round_end(1),
            Err(CheckError::Round { expected: 0, .. })
        ));
        check.round_end(0).unwrap();
        check.round_end(1).unwrap();
        assert!(matches!(
            check.round_end(2),
            Err(CheckError::TooManyRounds { max: 2 })
        ));
        // A second offer is out of place.
        let again = check.message(
            &Message::Offer(Box::new(offer())),
            HypervisorKind::Kvm,
            &host(),
        );
        assert!(again.is_err());
    }

    /// A source's stream: offer, pages, round end, a state frame.
    pub(crate) fn source_stream(pages: &[(u32, u64)], state: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut writer = FrameWriter::new();
        let offer = wire::encode("offer", &offer()).unwrap();
        writer.send(&mut out, wire::OFFER, &offer).unwrap();
        // Each frame: a data page, and the page after it as a zero run.
        for &(region, first) in pages {
            let buf = writer.buffer(PAGES_HEADER_LEN + PAGE_SIZE + 2 * wire::RUN_ENTRY_LEN);
            PageBatch::write_header(buf, region, 2);
            let (data, table) = buf[PAGES_HEADER_LEN..].split_at_mut(PAGE_SIZE);
            data.fill(first as u8 | 1);
            PageBatch::write_run(table, first, 1, RUN_DATA);
            PageBatch::write_run(&mut table[wire::RUN_ENTRY_LEN..], first + 1, 1, RUN_ZERO);
            writer.send_buffer(&mut out, wire::PAGES).unwrap();
        }
        let end = wire::encode("round end", &RoundEnd { round: 0, pages: 1 }).unwrap();
        writer.send(&mut out, wire::ROUND_END, &end).unwrap();
        writer.send(&mut out, wire::STATE, state).unwrap();
        out
    }

    /// Writes the fuzz target's seeds into `$VMKIT_MIGRATION_SEEDS` (nothing without it).
    #[test]
    fn fuzz_seeds() {
        let Some(dir) = std::env::var_os("VMKIT_MIGRATION_SEEDS") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut state = Vec::new();
        {
            let mut writer =
                vmkit_snapshot::Writer::new(&mut state, Arch::X86_64, Backend::Kvm, [0; 32]);
            writer
                .write_section(vmkit_snapshot::SectionTag::new(*b"VMST"), 0, 1, &7u32)
                .unwrap();
            writer.finish().unwrap();
        }
        let seeds: [(&str, Vec<u8>); 4] = [
            ("whole", source_stream(&[(0, 0), (0, 14), (1, 0)], &state)),
            ("no_pages", source_stream(&[], &state)),
            ("out_of_region", source_stream(&[(1, 2)], &state)),
            ("empty_state", source_stream(&[(0, 3)], &[])),
        ];
        for (name, bytes) in seeds {
            for mode in [0u8, 1] {
                let mut seed = vec![mode];
                seed.extend_from_slice(&bytes);
                std::fs::write(dir.join(format!("{name}_{mode}")), seed).unwrap();
            }
        }
    }
}
