//! `--migrate-to ADDR` and `--incoming ADDR`: live migration of the running guest to another
//! boot_linux process, over vmkit's migration stream (`vmkit::migration`).
//!
//! ADDR is a Unix socket path when it contains a `/` (`/run/vm.sock`, `./vm.sock`), else a
//! TCP `host:port`. The destination listens there, takes one connection and receives; the
//! source connects when SIGPWR comes (`kill -PWR PID`; SIGUSR2 stays `--save`'s and
//! `--balloon-control`'s). The machine's [`Shape`] travels in the state frame as in a
//! snapshot, and the destination refuses a machine its flags build differently before it
//! confirms, so the source runs on.

use std::error::Error;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmkit::migration::{self, Incoming, IncomingOptions, MigrationOptions, Source, Summary};

use crate::snap::{self, Shape};

/// Where a migration goes or comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A TCP `host:port`.
    Tcp(String),
    /// A Unix socket's path.
    Unix(PathBuf),
}

impl Address {
    /// A path when `text` has a `/`, else a TCP address (resolved when used).
    pub fn parse(text: String) -> Address {
        match text.contains('/') {
            true => Address::Unix(text.into()),
            false => Address::Tcp(text),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(addr) => f.write_str(addr),
            Address::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A connected migration stream.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// Waits at `addr` for the source's one connection.
fn accept(addr: &Address) -> Result<Stream, Box<dyn Error>> {
    let failed = |what: &str, err: io::Error| format!("--incoming {addr}: cannot {what}: {err}");
    Ok(match addr {
        Address::Tcp(at) => {
            let listener = TcpListener::bind(at).map_err(|err| failed("listen", err))?;
            let (stream, _) = listener.accept().map_err(|err| failed("accept", err))?;
            // Small frames (the handshake, the confirmation) must not wait for more.
            stream
                .set_nodelay(true)
                .map_err(|err| failed("set TCP_NODELAY", err))?;
            Stream::Tcp(stream)
        }
        Address::Unix(path) => {
            let listener = UnixListener::bind(path).map_err(|err| failed("listen", err))?;
            let accepted = listener.accept();
            // The socket file served its purpose once a source connected (or failed to).
            let _ = std::fs::remove_file(path);
            Stream::Unix(accepted.map_err(|err| failed("accept", err))?.0)
        }
    })
}

/// Connects to the destination at `addr`.
fn connect(addr: &Address) -> Result<Stream, Box<dyn Error>> {
    let failed = |err: io::Error| format!("--migrate-to {addr}: cannot connect: {err}");
    Ok(match addr {
        Address::Tcp(at) => {
            let stream = TcpStream::connect(at).map_err(failed)?;
            stream.set_nodelay(true).map_err(failed)?;
            Stream::Tcp(stream)
        }
        Address::Unix(path) => Stream::Unix(UnixStream::connect(path).map_err(failed)?),
    })
}

/// `--incoming`: receives the VM at `addr` on `hypervisor`, refusing (before it confirms) a
/// machine whose shape is not `given`. `prepare` builds what it can of the devices on the
/// empty VM before the source pauses anything (a failure refuses the VM, and the source runs
/// on); the rest is built from the returned state's sections after this returns, as for
/// `--restore`.
pub fn receive<P>(
    addr: &Address,
    hypervisor: &dyn vmkit::Hypervisor,
    given: &Shape,
    prepare: impl FnOnce(&dyn vmkit::Vm) -> Result<P, Box<dyn Error + Send + Sync>>,
) -> Result<(Incoming, P), Box<dyn Error>> {
    eprintln!(
        "boot_linux: waiting for a migrating VM at {addr} (frame checksums: {:?})",
        migration::checksum::Implementation::fastest()
    );
    let stream = accept(addr)?;
    migration::receive_prepared(
        stream,
        hypervisor,
        &IncomingOptions::default(),
        prepare,
        |incoming, prepared| {
            let saved: Shape = incoming.state.read_section(
                snap::SHAPE,
                0,
                snap::SHAPE_VERSION..=snap::SHAPE_VERSION,
            )?;
            match snap::difference(&saved, given) {
                None => Ok(prepared),
                Some((what, saved, given)) => Err(format!(
                    "the source's machine has {what} {saved}, this run's flags give {given}"
                )
                .into()),
            }
        },
    )
    .map_err(|err| format!("--incoming {addr}: {}", vmkit::ErrorChain(&err)).into())
}

/// `--migrate-to`: migrates the VM `source` describes to `addr`; `devices` stops the device
/// threads and writes the device sections once the vCPUs are paused. Each pre-copy round is
/// reported on stderr. On failure the VM runs on here (vmkit resumes its vCPUs) and the error
/// says which side and phase failed; restarting the device threads is the caller's.
pub fn send(
    addr: &Address,
    source: &Source<'_>,
    devices: impl FnOnce(
        &mut vmkit::snapshot::format::Writer<Vec<u8>>,
    ) -> Result<(), vmkit::snapshot::format::StateError>,
) -> Result<Summary, Box<dyn Error>> {
    eprintln!(
        "boot_linux: migrate: frame checksums: {:?}",
        migration::checksum::Implementation::fastest()
    );
    let stream = connect(addr)?;
    migration::migrate(stream, source, &MigrationOptions::default(), devices, |p| {
        eprintln!(
            "boot_linux: migrate: round {}{}: {} pages sent, {} dirty ({:.0} pages/s), \
                 {:.1} MB/s, ~{} ms to send them",
            p.round,
            if p.stopped { " (stopped)" } else { "" },
            p.pages_sent,
            p.dirty_pages,
            p.dirty_rate,
            p.bandwidth / 1e6,
            p.expected_downtime.as_millis()
        )
    })
    .map_err(|err| format!("--migrate-to {addr}: {}", vmkit::ErrorChain(&err)).into())
}

/// `--incoming`: how long each step of building the machine took once the VM came in, for
/// the report (a run that did not come in records nothing).
pub struct Laps {
    last: Option<Instant>,
    laps: Vec<(&'static str, Duration)>,
}

impl Laps {
    /// Laps from `arrived`, when the VM came in.
    pub fn new(arrived: Option<Instant>) -> Laps {
        Laps {
            last: arrived,
            laps: Vec::new(),
        }
    }

    /// Ends the step `what` now.
    pub fn lap(&mut self, what: &'static str) {
        if let Some(last) = self.last {
            let now = Instant::now();
            self.laps.push((what, now - last));
            self.last = Some(now);
        }
    }

    /// "what N ms, ..." for each step, or `None` with none recorded.
    pub fn describe(&self) -> Option<String> {
        (!self.laps.is_empty()).then(|| {
            self.laps
                .iter()
                .map(|(what, took)| format!("{what} {} ms", took.as_millis()))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slash_makes_a_unix_socket() {
        assert_eq!(
            Address::parse("./m.sock".into()),
            Address::Unix("./m.sock".into())
        );
        assert_eq!(
            Address::parse("[::1]:7".into()),
            Address::Tcp("[::1]:7".into())
        );
        assert_eq!(Address::parse("h:7".into()).to_string(), "h:7");
    }

    #[test]
    fn laps_are_kept_only_for_a_vm_that_came_in() {
        let mut none = Laps::new(None);
        none.lap("disk");
        assert_eq!(none.describe(), None);
        let mut laps = Laps::new(Some(Instant::now()));
        laps.lap("disk");
        laps.lap("net");
        let text = laps.describe().unwrap();
        assert!(text.starts_with("disk ") && text.contains(" ms, net ") && text.ends_with(" ms"));
    }
}
