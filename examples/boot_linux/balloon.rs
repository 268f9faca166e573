//! `--balloon`: a virtio-balloon whose discarded pages leave boot_linux's RAM mappings,
//! SIGUSR1 to print the guest's memory statistics, and with `--balloon-control FILE`, SIGUSR2
//! to set the balloon's target from FILE.
//!
//! The balloon's queues are notified through MMIO exits, so inflation and free page
//! reporting run on the vCPU thread that notified (with `--seccomp` its filter gains
//! `vmkit::seccomp::discard_rules`, the `madvise` that `vmkit::memory::discard` makes on
//! private or shared RAM). On SIGUSR1 a thread of its own asks the guest for new statistics,
//! waits up to a second for them, and prints one line to stderr with the latest figures and
//! their age. That thread reads the guest's
//! statistics buffer, so with `--seccomp` it is confined too ([`stats_thread_rules`]).
//!
//! `--balloon-control FILE`: FILE is opened at start (it must exist) and kept open; on
//! SIGUSR2 the same thread reads it from its start (`echo 64 >FILE` rewrites it in place) and
//! takes the decimal number there as the target in MiB, at most the guest's RAM, then raises
//! the configuration change interrupt (`MmioTransport::set_balloon_target`). It prints
//! `boot_linux: balloon: target set to N MiB`, or why the value was refused (the target is
//! then unchanged). No stdin: that is the guest's console.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGUSR1, SIGUSR2};
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
/// The most bytes of a control file read: a number of MiB and a newline.
const CONTROL_MAX: usize = 32;

/// A refused `--balloon-control` file or value.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The file could not be opened or read.
    #[error("--balloon-control {}: cannot {what} it", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// "open" or "read".
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a number of MiB within the guest's RAM.
    #[error(
        "--balloon-control {}: holds {text:?}; it takes a target in MiB, a whole number from 0 \
         to the guest's RAM ({ram_mib} MiB), on at most {CONTROL_MAX} bytes",
        path.display()
    )]
    BadTarget {
        /// The file.
        path: PathBuf,
        /// What it holds (up to [`CONTROL_MAX`] bytes, lossily decoded).
        text: String,
        /// The guest's RAM in MiB.
        ram_mib: u64,
    },
}

/// `--balloon-control FILE`, opened: where SIGUSR2 reads the target from.
pub struct Control {
    path: PathBuf,
    file: File,
    ram_mib: u64,
}

impl Control {
    /// Opens `path` for a guest of `ram_mib` MiB.
    pub fn open(path: &Path, ram_mib: u64) -> Result<Self, ControlError> {
        let file = File::open(path).map_err(|source| ControlError::Io {
            path: path.to_owned(),
            what: "open",
            source,
        })?;
        Ok(Control {
            path: path.to_owned(),
            file,
            ram_mib,
        })
    }

    /// The target the file holds now, in balloon pages.
    pub fn target_pages(&self) -> Result<u32, ControlError> {
        let mut buf = [0u8; CONTROL_MAX + 1];
        let len = self
            .file
            .read_at(&mut buf, 0)
            .map_err(|source| ControlError::Io {
                path: self.path.clone(),
                what: "read",
                source,
            })?;
        let bytes = buf.get(..len).unwrap_or_default();
        parse_target(bytes, self.ram_mib).ok_or_else(|| ControlError::BadTarget {
            path: self.path.clone(),
            text: String::from_utf8_lossy(bytes.get(..CONTROL_MAX).unwrap_or(bytes)).into_owned(),
            ram_mib: self.ram_mib,
        })
    }
}

/// A target in MiB (decimal, surrounding white space allowed, at most `ram_mib` and
/// [`CONTROL_MAX`] bytes) as balloon pages.
fn parse_target(bytes: &[u8], ram_mib: u64) -> Option<u32> {
    if bytes.len() > CONTROL_MAX {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mib: u64 = text.parse().ok()?;
    if mib > ram_mib {
        return None;
    }
    u32::try_from(mib.checked_mul((1 << 20) / BALLOON_PAGE_SIZE)?).ok()
}

impl StatsOnSignal {
    /// Catches SIGUSR1 and SIGUSR2 from now on, in a thread confined by `filter` if there is
    /// one. SIGUSR2 sets the target from `control`; without one it is ignored with a line on
    /// stderr (rather than ending the process).
    pub fn start<S>(
        transport: Arc<MmioTransport<S, Balloon<Discarder>>>,
        control: Option<Control>,
        filter: Option<vmkit::seccomp::Filter>,
    ) -> Result<Self, Box<dyn std::error::Error>>
    where
        S: GuestAddressSpace + Send + Sync + 'static,
    {
        let mut signals = Signals::new([SIGUSR1, SIGUSR2])
            .map_err(|err| format!("cannot catch SIGUSR1 and SIGUSR2: {err}"))?;
        let handle = signals.handle();
        let builder = std::thread::Builder::new().name("balloon-stats".into());
        let thread = vmkit_seccomp::spawn(
            builder,
            filter,
            || (),
            move || {
                for signal in signals.forever() {
                    if signal == SIGUSR2 {
                        match control.as_ref().map(Control::target_pages) {
                            None => eprintln!(
                                "boot_linux: balloon: SIGUSR2 ignored: no --balloon-control file"
                            ),
                            Some(Ok(pages)) => {
                                transport.set_balloon_target(pages);
                                eprintln!(
                                    "boot_linux: balloon: target set to {} MiB",
                                    (u64::from(pages) * BALLOON_PAGE_SIZE) >> 20
                                );
                            }
                            Some(Err(err)) => {
                                eprintln!("boot_linux: balloon: {}", vmkit::ErrorChain(&err))
                            }
                        }
                        continue;
                    }
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

/// The statistics thread's seccomp rules: the base set, what waiting for a signal takes
/// (signal-hook's iterator reads a socket pair that its handler writes), and reading the
/// control file it holds open (`pread64`).
pub fn stats_thread_rules() -> vmkit::seccomp::Rules {
    let mut rules = vmkit::seccomp::Rules::base();
    rules.allow_all(&[
        libc::SYS_pread64,
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
    fn control_targets() {
        assert_eq!(parse_target(b"0", 256), Some(0));
        assert_eq!(parse_target(b"64\n", 256), Some(64 * 256));
        assert_eq!(parse_target(b" 256 ", 256), Some(256 * 256));
        for bad in [
            &b""[..],
            b"\n",
            b"257",
            b"-1",
            b"1.5",
            b"0x10",
            b"6 4",
            b"\xff",
        ] {
            assert_eq!(parse_target(bad, 256), None, "{bad:?}");
        }
        assert_eq!(parse_target(&[b'1'; CONTROL_MAX + 1], u64::MAX), None);
        // More MiB than balloon pages can count.
        assert_eq!(parse_target(b"17592186044416", u64::MAX), None);
    }

    #[test]
    fn a_control_file_is_read_again_on_each_signal() {
        let tmp = vmm_sys_util::tempfile::TempFile::new().unwrap();
        std::fs::write(tmp.as_path(), "16\n").unwrap();
        let control = Control::open(tmp.as_path(), 128).unwrap();
        assert_eq!(control.target_pages().unwrap(), 16 * 256);
        std::fs::write(tmp.as_path(), "0\n").unwrap();
        assert_eq!(control.target_pages().unwrap(), 0);
        std::fs::write(tmp.as_path(), "129\n").unwrap();
        let err = control.target_pages().unwrap_err().to_string();
        assert!(
            err.contains("holds \"129\\n\"") && err.contains("(128 MiB)"),
            "{err}"
        );
        let missing = Control::open(Path::new("/nonexistent/target"), 128);
        assert!(matches!(
            missing,
            Err(ControlError::Io { what: "open", .. })
        ));
    }

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
