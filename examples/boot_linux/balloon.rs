//! `--balloon`: a virtio-balloon whose discarded pages leave boot_linux's RAM mappings, and
//! SIGUSR1 to print the guest's memory statistics.
//!
//! The balloon's queues are notified through MMIO exits, so inflation and free page
//! reporting run on the vCPU thread that notified (with `--seccomp` its filter gains
//! `vmkit::seccomp::discard_rules`, the `madvise` that `vmkit::memory::discard` makes on
//! private or shared RAM). On SIGUSR1 a thread of its own asks the guest for new statistics,
//! waits up to a second for them, and prints one line to stderr with the latest figures and
//! their age. That thread reads the guest's
//! statistics buffer, so with `--seccomp` it is confined too ([`stats_thread_rules`]).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use signal_hook::consts::SIGUSR1;
use signal_hook::iterator::{Handle, Signals};
use vm_memory::{GuestAddress, GuestAddressSpace};
use vmkit::MemoryRegion;
use vmkit_virtio::balloon::{Balloon, BalloonStats, DiscardError, DiscardPages, BALLOON_PAGE_SIZE};
use vmkit_virtio::mmio::MmioTransport;

/// Discards from the VM's RAM regions, and nothing else (`vmkit::memory::discard` refuses
/// a range outside them or in a read-only one).
pub struct Discarder(pub Vec<MemoryRegion>);

impl DiscardPages for Discarder {
    fn discard(&mut self, addr: GuestAddress, len: u64) -> Result<(), DiscardError> {
        vmkit::memory::discard(&self.0, addr, len).map_err(|err| DiscardError {
            addr: addr.0,
            len,
            source: Box::new(err),
        })
    }
}

/// The printer of statistics on SIGUSR1, from [`StatsOnSignal::start`] to its drop.
pub struct StatsOnSignal {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

/// How long a SIGUSR1 waits for the guest's fresh statistics.
const WAIT: Duration = Duration::from_secs(1);

impl StatsOnSignal {
    /// Catches SIGUSR1 from now on, in a thread confined by `filter` if there is one.
    pub fn start<S>(
        transport: Arc<MmioTransport<S, Balloon<Discarder>>>,
        filter: Option<vmkit::seccomp::Filter>,
    ) -> Result<Self, Box<dyn std::error::Error>>
    where
        S: GuestAddressSpace + Send + Sync + 'static,
    {
        let mut signals =
            Signals::new([SIGUSR1]).map_err(|err| format!("cannot catch SIGUSR1: {err}"))?;
        let handle = signals.handle();
        let builder = std::thread::Builder::new().name("balloon-stats".into());
        let thread = vmkit_seccomp::spawn(
            builder,
            filter,
            || (),
            move || {
                for _ in signals.forever() {
                    let before = transport.with_device(|b| b.counters().stats_updates);
                    if let Err(err) = transport.request_balloon_stats() {
                        eprintln!("boot_linux: balloon: {}", vmkit::ErrorChain(&err));
                    }
                    let asked = Instant::now();
                    while asked.elapsed() < WAIT
                        && transport.with_device(|b| b.counters().stats_updates) == before
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let text = transport.with_device(|b| {
                        line(
                            b.target_pages(),
                            b.actual_pages(),
                            b.stats().map(|(s, at)| (s, at.elapsed())),
                        )
                    });
                    eprintln!("{text}");
                }
            },
        )?;
        Ok(StatsOnSignal {
            handle,
            thread: Some(thread),
        })
    }
}

/// The statistics thread's seccomp rules: the base set, and what waiting for a signal takes
/// (signal-hook's iterator reads a socket pair that its handler writes).
pub fn stats_thread_rules() -> vmkit::seccomp::Rules {
    let mut rules = vmkit::seccomp::Rules::base();
    rules.allow_all(&[
        libc::SYS_recvfrom,
        libc::SYS_read,
        libc::SYS_poll,
        libc::SYS_ppoll,
    ]);
    rules
}

impl Drop for StatsOnSignal {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The line SIGUSR1 prints.
pub fn line(target: u32, actual: u32, stats: Option<(&BalloonStats, Duration)>) -> String {
    let mib = |pages: u32| (u64::from(pages) * BALLOON_PAGE_SIZE) >> 20;
    let mut text = format!(
        "boot_linux: balloon: target {} MiB, actual {} MiB",
        mib(target),
        mib(actual)
    );
    match stats {
        None => text.push_str(", no statistics from the guest yet"),
        Some((s, age)) => {
            for (name, value) in [
                ("free", s.free_memory()),
                ("available", s.available_memory()),
                ("caches", s.disk_caches()),
                ("total", s.total_memory()),
            ] {
                if let Some(bytes) = value {
                    text.push_str(&format!(", {name} {} MiB", bytes >> 20));
                }
            }
            text.push_str(&format!(" ({:.1} s old)", age.as_secs_f64()));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmkit_virtio::balloon::{STAT_AVAILABLE_MEMORY, STAT_FREE_MEMORY};

    #[test]
    fn the_stats_line() {
        assert_eq!(
            line(256, 0, None),
            "boot_linux: balloon: target 1 MiB, actual 0 MiB, no statistics from the guest yet"
        );
        let stats = BalloonStats {
            values: vec![
                (STAT_FREE_MEMORY, 3 << 20),
                (STAT_AVAILABLE_MEMORY, 5 << 20),
            ],
        };
        assert_eq!(
            line(512, 256, Some((&stats, Duration::from_millis(1500)))),
            "boot_linux: balloon: target 2 MiB, actual 1 MiB, free 3 MiB, available 5 MiB \
             (1.5 s old)"
        );
    }
}
