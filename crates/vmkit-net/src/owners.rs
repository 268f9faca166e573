//! Who is using a vmkit-made network: one owner record per [`Network`](crate::Network),
//! so that a network whose processes are all gone (killed before they could tear it down)
//! is recognized as left behind rather than silently joined.
//!
//! A record is an empty file `/run/vmkit-net/net-<ns>/<bridge>/<pid>.<start>.<seq>`:
//! `<ns>` is the inode of the calling thread's network namespace (bridges are per
//! namespace), `<pid>` and `<start>` name the process (its start time in clock ticks since
//! boot, from `/proc/<pid>/stat`, tells a reused pid from the original), and `<seq>`
//! tells apart several networks of one process. A setup writes its record *before* it
//! creates or looks for the bridge, and a teardown removes it *after* deleting the bridge,
//! so a bridge that some live process is setting up or tearing down always has a live
//! record. `/run` is a tmpfs: records vanish at reboot, with the bridges.

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where owner records live.
const STATE_DIR: &str = "/run/vmkit-net";

/// One process, named so that a reused pid is a different process: its pid and its start
/// time (clock ticks after boot, field 22 of `/proc/<pid>/stat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Process {
    /// The process id.
    pub pid: u32,
    /// When it started, in clock ticks after boot.
    pub start_time: u64,
}

impl Process {
    /// The calling process.
    pub fn current() -> io::Result<Process> {
        let pid = std::process::id();
        Process::of(pid).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/stat has no start time"),
            )
        })
    }

    /// The process `pid` as it runs now, if it does.
    pub fn of(pid: u32) -> Option<Process> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(Process {
            pid,
            start_time: start_time(&stat)?,
        })
    }

    /// Whether this very process still runs (not merely some process with its pid).
    pub fn is_running(&self) -> bool {
        Process::of(self.pid) == Some(*self)
    }
}

/// The start time in the text of `/proc/<pid>/stat`. The command name (field 2, in
/// parentheses) may hold anything, spaces and parentheses included: the fields after it
/// are counted from its last `)`.
fn start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts with field 3 (the state); the start time is field 22.
    rest.split_ascii_whitespace().nth(22 - 3)?.parse().ok()
}

/// A network found left behind by processes that no longer exist, and taken over by this
/// setup (it is the new owner: its teardown removes the network when it is the last one
/// out). See [`Network::leftover`](crate::Network::leftover).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leftover {
    /// The bridge.
    pub bridge: String,
    /// The processes recorded as its owners, all gone; empty when the bridge carried vmkit's
    /// label but no owner record (made by a vmkit without records, or records lost).
    pub owners: Vec<Process>,
}

impl fmt::Display for Leftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pids: Vec<String> = self.owners.iter().map(|p| p.pid.to_string()).collect();
        match pids.as_slice() {
            [] => write!(
                f,
                "network {} was left behind by a process that left no record; taking it over",
                self.bridge
            ),
            [pid] => write!(
                f,
                "network {} was left behind by process {pid}, which no longer exists; \
                 taking it over",
                self.bridge
            ),
            _ => write!(
                f,
                "network {} was left behind by processes {}, which no longer exist; \
                 taking it over",
                self.bridge,
                pids.join(", ")
            ),
        }
    }
}

/// The calling thread's network namespace.
const NETNS: &str = "/proc/thread-self/ns/net";

/// Tells apart the records of several networks in one process.
static NEXT_SEQ: AtomicU64 = AtomicU64::new(0);

/// The directory of `bridge`'s records in the calling thread's network namespace.
fn bridge_dir(bridge: &str) -> io::Result<PathBuf> {
    let ns = std::fs::metadata(NETNS)?.ino();
    Ok(Path::new(STATE_DIR).join(format!("net-{ns}")).join(bridge))
}

/// One network's owner record, removed by [`OwnerRecord::remove`].
#[derive(Debug)]
pub(crate) struct OwnerRecord {
    path: PathBuf,
    me: Process,
    seq: u64,
}

impl OwnerRecord {
    /// Writes a record of the calling process for `bridge` (a name checked by the caller:
    /// a plain path component). A failure names the file it was about.
    pub(crate) fn create(bridge: &str) -> Result<OwnerRecord, (PathBuf, io::Error)> {
        let me = Process::current().map_err(|e| (PathBuf::from("/proc/self/stat"), e))?;
        let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = bridge_dir(bridge).map_err(|e| (PathBuf::from(NETNS), e))?;
        let path = dir.join(format!("{}.{}.{seq}", me.pid, me.start_time));
        let failed = |e| (path.clone(), e);
        // A teardown elsewhere may remove the (empty) directory between the two calls:
        // make it again and retry.
        let mut tries = 0;
        loop {
            std::fs::create_dir_all(&dir).map_err(|e| (dir.clone(), e))?;
            match std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => return Ok(OwnerRecord { path, me, seq }),
                Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 3 => tries += 1,
                Err(e) => return Err(failed(e)),
            }
        }
    }

    /// Where the record is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The processes of the bridge's other records (this one excluded), each once.
    /// Names that are not records are ignored.
    pub(crate) fn others(&self) -> io::Result<Vec<(Process, PathBuf)>> {
        let Some(dir) = self.path.parent() else {
            return Ok(Vec::new());
        };
        let mut others = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some((process, seq)) = name.to_str().and_then(parse_record_name) else {
                continue;
            };
            if process == self.me && seq == self.seq {
                continue;
            }
            others.push((process, entry.path()));
        }
        Ok(others)
    }

    /// Removes the record, then the bridge's directory and the namespace's if they are
    /// empty (`rmdir` fails on a directory another setup has just written to, which is
    /// what keeps its record).
    pub(crate) fn remove(self) -> io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut dir = self.path.parent();
        for _ in 0..2 {
            let Some(d) = dir else { break };
            if std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }
}

/// `<pid>.<start>.<seq>` as a process and a sequence number.
fn parse_record_name(name: &str) -> Option<(Process, u64)> {
    let mut parts = name.split('.');
    let pid = parts.next()?.parse().ok()?;
    let start_time = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((Process { pid, start_time }, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_counts_fields_after_the_last_parenthesis() {
        // Field 22 is 4242; the command name has spaces and a `)`.
        let stat = "77 (a b) c) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 4242 1000 10";
        assert_eq!(start_time(stat), Some(4242));
        assert_eq!(start_time("77 (short) S 1"), None);
        assert_eq!(start_time("no parenthesis"), None);
    }

    #[test]
    fn this_process_runs_and_a_changed_start_time_does_not() {
        let me = Process::current().unwrap();
        assert!(me.is_running());
        let reused = Process {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!reused.is_running());
    }

    #[test]
    fn record_names() {
        let p = Process {
            pid: 12,
            start_time: 34,
        };
        assert_eq!(parse_record_name("12.34.5"), Some((p, 5)));
        for bad in ["12.34", "12.34.5.6", "x.34.5", "12..5", ".tmp", ""] {
            assert_eq!(parse_record_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn leftover_wording() {
        let gone = |pid| Process { pid, start_time: 1 };
        let one = Leftover {
            bridge: "vmkiso0".into(),
            owners: vec![gone(1234)],
        };
        assert_eq!(
            one.to_string(),
            "network vmkiso0 was left behind by process 1234, which no longer exists; \
             taking it over"
        );
        let two = Leftover {
            bridge: "vmkiso0".into(),
            owners: vec![gone(1), gone(2)],
        };
        assert!(two
            .to_string()
            .contains("by processes 1, 2, which no longer exist"));
        let none = Leftover {
            bridge: "vmkiso0".into(),
            owners: vec![],
        };
        assert!(none.to_string().contains("a process that left no record"));
    }
}
