//! Live-migrates the counting guest (serial port and virtio-blk) between two processes.
//!
//! ```text
//! cargo run --example migrate                                   # both ends, over a Unix socket
//! cargo run --example migrate -- --incoming unix:/tmp/m.sock DIR   # destination: listen, receive, run
//! cargo run --example migrate -- --migrate-to unix:/tmp/m.sock DIR # source: boot, count, migrate
//! ```
//!
//! Addresses are `unix:PATH` or `tcp:HOST:PORT`. `DIR` holds the disk image (`disk.img`),
//! shared by both ends as a network disk would be. The source boots the minimal kernel in
//! counting mode, migrates once the guest printed `count 5`, and reports each pre-copy round;
//! the destination goes on counting from there to 40 and powers off. If the migration fails,
//! the source says why and its guest counts on to the end.

#[path = "migrate/machine.rs"]
mod machine;

use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use machine::BoxError;
use vmkit::migration::{self, IncomingOptions, MigrationOptions, Source};
use vmkit::ErrorChain;
use vmkit_guests::minimal;

/// How long the vCPU thread waits after each line, so that the guest counts for seconds.
const LINE_DELAY: Duration = Duration::from_millis(50);
/// Bound on every wait.
const GIVE_UP: Duration = Duration::from_secs(120);

/// Serial output to stdout, also kept to see how far the guest counted.
#[derive(Clone, Default)]
struct Tee(Arc<Mutex<Vec<u8>>>);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        io::stdout().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

impl Tee {
    fn last_count(&self) -> u64 {
        let out = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        minimal::check_count_serial(&String::from_utf8_lossy(&out)).map_or(0, |(_, last)| last)
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

fn connect(addr: &str) -> io::Result<Stream> {
    match addr.split_once(':') {
        Some(("unix", path)) => UnixStream::connect(path).map(Stream::Unix),
        Some(("tcp", host)) => {
            let stream = TcpStream::connect(host)?;
            stream.set_nodelay(true)?;
            Ok(Stream::Tcp(stream))
        }
        _ => Err(io::Error::other(format!(
            "bad address {addr}: unix:PATH or tcp:HOST:PORT"
        ))),
    }
}

fn accept(addr: &str) -> io::Result<Stream> {
    match addr.split_once(':') {
        Some(("unix", path)) => {
            let _ = std::fs::remove_file(path);
            UnixListener::bind(path)?
                .accept()
                .map(|(s, _)| Stream::Unix(s))
        }
        Some(("tcp", host)) => TcpListener::bind(host)?
            .accept()
            .map(|(s, _)| Stream::Tcp(s)),
        _ => Err(io::Error::other(format!(
            "bad address {addr}: unix:PATH or tcp:HOST:PORT"
        ))),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        [] => demo(),
        ["--incoming", addr, dir] => incoming(addr, Path::new(dir)),
        ["--migrate-to", addr, dir] => migrate_to(addr, Path::new(dir)),
        _ => Err("usage: migrate [--incoming ADDR DIR | --migrate-to ADDR DIR]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("migrate: {}", ErrorChain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Both ends: the destination in a child process, the source here.
fn demo() -> Result<(), BoxError> {
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-migrate-example-")?;
    let addr = format!("unix:{}", dir.as_path().join("sock").display());
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--incoming", &addr])
        .arg(dir.as_path())
        .spawn()?;
    let result = migrate_to(&addr, dir.as_path());
    let status = child.wait()?;
    result?;
    if !status.success() {
        return Err(format!("the destination failed: {status}").into());
    }
    Ok(())
}

/// The destination: accept one stream, receive the VM, run it to the end.
fn incoming(addr: &str, dir: &Path) -> Result<(), BoxError> {
    let hv = vmkit::open()?;
    let disk = dir.join("disk.img");
    let started = Instant::now();
    let (incoming, devices) = match accept(addr)? {
        Stream::Unix(s) => migration::receive(&s, hv.as_ref(), &IncomingOptions::default(), |i| {
            machine::restore_devices(i, &disk, io::stdout())
        }),
        Stream::Tcp(s) => migration::receive(&s, hv.as_ref(), &IncomingOptions::default(), |i| {
            machine::restore_devices(i, &disk, io::stdout())
        }),
    }?;
    eprintln!(
        "migrate: received {} pages in {} rounds, {:?} after accepting",
        incoming.pages,
        incoming.rounds,
        started.elapsed()
    );
    let running = machine::start(incoming.vcpus, &devices, Duration::ZERO)?;
    machine::finish(running, GIVE_UP)
}

/// The source: boot, count to 5, migrate; on failure, go on counting here.
fn migrate_to(addr: &str, dir: &Path) -> Result<(), BoxError> {
    let hv = vmkit::open()?;
    let disk: PathBuf = dir.join("disk.img");
    machine::create_disk(&disk)?;
    let config = machine::config(hv.as_ref(), true);
    let tee = Tee::default();
    let mut booted = machine::boot(hv.as_ref(), &config, &disk, tee.clone())?;
    let vcpus = std::mem::take(&mut booted.vcpus);
    let running = machine::start(vcpus, &booted.devices, LINE_DELAY)?;
    let deadline = Instant::now() + GIVE_UP;
    while tee.last_count() < 5 {
        if Instant::now() > deadline || running.is_stopping() {
            return Err("the guest did not count to 5".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The destination may still be starting: retry the connection for a while.
    let stream = loop {
        match connect(addr) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(err) => return Err(err.into()),
        }
    };
    let source = Source {
        hypervisor: hv.as_ref(),
        config: &config,
        vm: booted.vm.as_ref(),
        runner: &running,
        msrs: &booted.msrs,
        marked: None,
    };
    let options = MigrationOptions::default();
    let report = |p: &migration::Progress| {
        eprintln!(
            "migrate: round {}{}: {} pages sent, {} dirty ({:.0}/s), ~{:?} downtime",
            p.round,
            if p.stopped { " (paused)" } else { "" },
            p.pages_sent,
            p.dirty_pages,
            p.dirty_rate,
            p.expected_downtime
        )
    };
    let devices = |w: &mut _| booted.devices.save(w);
    let result = match &stream {
        Stream::Unix(s) => migration::migrate(s, &source, &options, devices, report),
        Stream::Tcp(s) => migration::migrate(s, &source, &options, devices, report),
    };
    match result {
        Ok(summary) => {
            eprintln!(
                "\nmigrate: done: {} rounds, {} pages ({} while paused), {} bytes, downtime {:?}, total {:?}",
                summary.rounds,
                summary.pages_sent,
                summary.final_pages,
                summary.bytes_sent,
                summary.downtime,
                summary.total
            );
            running.stop_all();
            running.join();
            Ok(())
        }
        Err(err) => {
            eprintln!("\nmigrate: {}; the guest goes on here", ErrorChain(&err));
            machine::finish(running, GIVE_UP)
        }
    }
}
