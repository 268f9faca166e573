//! Live migration of the counting guest (serial port, virtio-blk) between two processes on
//! the real hypervisor: this test process is the source, and re-executes itself (the
//! `destination_process` test, with `VMKIT_MIGRATION_CHILD` set) as the destination.
//!
//! Success: over a Unix socket and over TCP on localhost, while the guest counts; the count
//! goes on at the destination without a gap or a repeat (the source's and the destination's
//! serial output together are exactly one run's), and the shared disk holds the last count.
//!
//! Failure: a destination that refuses on capabilities (fewer vCPUs, a CPUID feature held
//! back), one killed mid-stream, a stream truncated, a stream with a flipped byte. Each time
//! the source's error names the side and phase, the destination never runs the VM, and the
//! source's guest goes on counting to the end with its disk working.
//!
//! The destination connects to a listener of the source's before the source boots its guest,
//! and the source's console waits a little after each line, so the guest is still counting
//! while the migration runs and after it fails. Every wait is bounded by a generous limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/migrate/machine.rs"]
#[allow(dead_code)]
mod machine;

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use machine::{Booted, BoxError};
use vmkit::migration::{
    self, IncomingOptions, MigrationError, MigrationOptions, Phase, Progress, Reason, Refusal,
    Side, Source, Summary,
};
use vmkit::runner::VmRunner;
use vmkit::vm_memory::GuestMemoryBackend as _;
use vmkit::{Hypervisor, VmConfig};
use vmkit_guests::minimal;
use vmm_sys_util::tempdir::TempDir;

/// Set in the destination process: the address to connect to.
const CHILD: &str = "VMKIT_MIGRATION_CHILD";
/// The destination's directory: the shared disk, its serial output, its error.
const CHILD_DIR: &str = "VMKIT_MIGRATION_DIR";
/// What the destination holds back: `fewer-vcpus` or `no-fpu` from its capabilities, or
/// `disk` (it cannot open the disk, so restoring the devices fails).
const CHILD_HOLD_BACK: &str = "VMKIT_MIGRATION_HOLD_BACK";
/// A liveness bound on every wait, far above what any step takes.
const GIVE_UP: Duration = Duration::from_secs(120);

/// Either kind of stream.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn connect(addr: &str) -> io::Result<Stream> {
        let stream = match addr.split_once(':') {
            Some(("unix", path)) => Stream::Unix(UnixStream::connect(path)?),
            Some(("tcp", host)) => Stream::Tcp(TcpStream::connect(host)?),
            _ => return Err(io::Error::other(format!("bad address {addr}"))),
        };
        stream.set_timeouts()?;
        Ok(stream)
    }

    fn set_timeouts(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_read_timeout(Some(GIVE_UP))?;
                s.set_write_timeout(Some(GIVE_UP))
            }
            Stream::Tcp(s) => {
                // Small frames (the state, the confirmation) must not wait on Nagle.
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(GIVE_UP))?;
                s.set_write_timeout(Some(GIVE_UP))
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---- The destination process ----

/// The destination, when this binary runs as one; a no-op test otherwise.
#[test]
fn destination_process() {
    let Ok(addr) = std::env::var(CHILD) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(CHILD_DIR).unwrap());
    match destination(&addr, &dir) {
        Ok(()) => std::process::exit(0),
        Err(err) => {
            let message = vmkit::ErrorChain(err.as_ref()).to_string();
            eprintln!("destination: {message}");
            std::fs::write(dir.join("dest-error"), message).unwrap();
            std::process::exit(1);
        }
    }
}

fn destination(addr: &str, dir: &Path) -> Result<(), BoxError> {
    let hv = vmkit::open()?;
    let mut capabilities = hv.capabilities().clone();
    match std::env::var(CHILD_HOLD_BACK).as_deref() {
        Ok("fewer-vcpus") => capabilities.max_vcpus -= 1,
        Ok("no-fpu") => {
            let leaf = capabilities
                .cpuid
                .iter_mut()
                .find(|e| e.function == 1 && e.index == 0)
                .ok_or("no CPUID leaf 1")?;
            leaf.edx &= !1; // FPU
        }
        _ => {}
    }
    let options = IncomingOptions::default().capabilities(capabilities);
    let disk = match std::env::var(CHILD_HOLD_BACK).as_deref() {
        // Its devices cannot be rebuilt: the restore fails after all memory came.
        Ok("disk") => dir.join("no-such-disk.img"),
        _ => dir.join("disk.img"),
    };
    let mut stream = Stream::connect(addr)?;
    // The devices' first step runs on the empty VM before the offer is accepted; what it
    // returns reaches the restore.
    let hold_back_prepare = std::env::var(CHILD_HOLD_BACK).as_deref() == Ok("prepare");
    let (incoming, devices) = migration::receive_prepared(
        &mut stream,
        hv.as_ref(),
        &options,
        |vm| match hold_back_prepare {
            true => Err("the devices' host resources are missing".into()),
            false => Ok(vm.memory().num_regions()),
        },
        |i, regions| {
            assert_eq!(regions, i.vm.memory().num_regions());
            machine::restore_devices(i, &disk, File::create(dir.join("dest-serial"))?)
        },
    )?;
    let running = machine::start(incoming.vcpus, &devices, Duration::ZERO)?;
    machine::finish(running, GIVE_UP)
}

// ---- The source ----

/// Serial output kept in memory.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// The last number the guest printed whole (0 before the first).
    fn last_count(&self) -> u64 {
        let text = self.text();
        // Whole lines only: the guest may be in the middle of one.
        let text = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        match text.find("count ") {
            None => 0,
            Some(_) => minimal::check_count_serial(text).unwrap().1,
        }
    }
}

/// The serial output of one whole run with a working disk.
fn expected_serial() -> String {
    minimal::expected_count_serial(&[
        &minimal::blk_signature_line(minimal::BLK_SIGNATURE),
        minimal::BLK_OK,
    ])
}

/// The count sector of the disk.
fn disk_count(disk: &Path) -> Vec<u8> {
    let image = std::fs::read(disk).unwrap();
    let at = minimal::COUNT_SECTOR as usize * 512;
    image[at..at + 512].to_vec()
}

/// A listener for the destination to connect to, and its address.
enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Unix,
    Tcp,
}

fn listen(transport: Transport, dir: &Path) -> (Listener, String) {
    match transport {
        Transport::Unix => {
            let path = dir.join("sock");
            let listener = UnixListener::bind(&path).unwrap();
            (Listener::Unix(listener), format!("unix:{}", path.display()))
        }
        Transport::Tcp => {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            (Listener::Tcp(listener), format!("tcp:{addr}"))
        }
    }
}

/// Starts the destination process.
fn spawn_destination(addr: &str, dir: &Path, hold_back: Option<&str>) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "destination_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, addr)
        .env(CHILD_DIR, dir);
    if let Some(what) = hold_back {
        command.env(CHILD_HOLD_BACK, what);
    }
    command.spawn().unwrap()
}

/// Accepts the destination's connection (bounded; fails if the destination exits first).
fn accept(listener: &Listener, child: &mut Child) -> Stream {
    let deadline = Instant::now() + GIVE_UP;
    loop {
        let accepted = match listener {
            Listener::Unix(l) => {
                l.set_nonblocking(true).unwrap();
                l.accept().map(|(s, _)| Stream::Unix(s))
            }
            Listener::Tcp(l) => {
                l.set_nonblocking(true).unwrap();
                l.accept().map(|(s, _)| Stream::Tcp(s))
            }
        };
        match accepted {
            Ok(stream) => {
                match &stream {
                    Stream::Unix(s) => s.set_nonblocking(false).unwrap(),
                    Stream::Tcp(s) => s.set_nonblocking(false).unwrap(),
                }
                stream.set_timeouts().unwrap();
                return stream;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => panic!("accepting the destination: {err}"),
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the destination exited before connecting: {status}");
        }
        assert!(Instant::now() < deadline, "the destination never connected");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for the destination process to end (bounded).
fn wait_child(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + GIVE_UP;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the destination did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The source's running VM.
struct SourceVm {
    hv: Box<dyn Hypervisor>,
    config: VmConfig,
    booted: Booted<Sink>,
    running: VmRunner,
    sink: Sink,
    disk: PathBuf,
}

/// Boots the counting guest with a console that waits `line_delay` after each line, and
/// waits until it counted to 2.
fn start_source(dir: &Path, dirty_ring: bool, line_delay: Duration) -> SourceVm {
    let hv = vmkit::open().expect("these tests need /dev/kvm");
    let disk = dir.join("disk.img");
    machine::create_disk(&disk).unwrap();
    let config = machine::config(hv.as_ref(), dirty_ring);
    let sink = Sink::default();
    let mut booted = machine::boot(hv.as_ref(), &config, &disk, sink.clone()).unwrap();
    let vcpus = std::mem::take(&mut booted.vcpus);
    let running = machine::start(vcpus, &booted.devices, line_delay).unwrap();
    let source = SourceVm {
        hv,
        config,
        booted,
        running,
        sink,
        disk,
    };
    let deadline = Instant::now() + GIVE_UP;
    while source.sink.last_count() < 2 && !source.running.is_stopping() {
        assert!(
            Instant::now() < deadline,
            "no count 2:\n{}",
            source.sink.text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    if source.sink.last_count() < 2 {
        // Say why the vCPU stopped before the guest counted.
        let text = source.sink.text();
        let outcomes: Vec<String> = source
            .running
            .join()
            .into_iter()
            .map(|f| match f.outcome {
                Ok(outcome) => format!("vCPU {}: {outcome:?}", f.id),
                Err(err) => format!("vCPU {}: {}", f.id, vmkit::ErrorChain(&err)),
            })
            .collect();
        panic!("the guest stopped before count 2: {outcomes:?}\n{text}");
    }
    source
}

impl SourceVm {
    /// Waits until the guest printed `count n` (bounded).
    fn wait_count(&self, n: u64) {
        let deadline = Instant::now() + GIVE_UP;
        while self.sink.last_count() < n {
            assert!(
                !self.running.is_stopping(),
                "the guest stopped before count {n}:\n{}",
                self.sink.text()
            );
            assert!(
                Instant::now() < deadline,
                "no count {n}:\n{}",
                self.sink.text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn migrate(
        &self,
        stream: impl Read + Write,
        options: &MigrationOptions,
        progress: impl FnMut(&Progress),
    ) -> Result<Summary, MigrationError> {
        let source = Source {
            hypervisor: self.hv.as_ref(),
            config: &self.config,
            vm: self.booted.vm.as_ref(),
            runner: &self.running,
            msrs: &self.booted.msrs,
            marked: None,
        };
        migration::migrate(
            stream,
            &source,
            options,
            |w| self.booted.devices.save(w),
            progress,
        )
    }

    /// After a failed migration: the guest is still counting here, and runs to the end with
    /// its disk working.
    fn still_runs(self, error: &MigrationError) {
        let at = self.sink.last_count();
        assert!(
            at < minimal::COUNT_LIMIT,
            "the guest finished before the failure ({error:?}) came back"
        );
        self.wait_count(at + 1);
        machine::finish(self.running, GIVE_UP).unwrap();
        assert_eq!(self.sink.text(), expected_serial());
        assert_eq!(
            disk_count(&self.disk),
            minimal::count_sector_bytes(minimal::COUNT_LIMIT)
        );
    }
}

// ---- Success ----

fn migrates(transport: Transport, dirty_ring: bool, options: MigrationOptions) {
    let dir = TempDir::new_with_prefix("/tmp/vmkit-migration-").unwrap();
    let (listener, addr) = listen(transport, dir.as_path());
    let mut child = spawn_destination(&addr, dir.as_path(), None);
    let stream = accept(&listener, &mut child);
    let source = start_source(dir.as_path(), dirty_ring, Duration::from_millis(20));
    let mut reports = Vec::new();
    let summary = source
        .migrate(stream, &options, |p| reports.push(p.clone()))
        .unwrap_or_else(|err| panic!("{}", vmkit::ErrorChain(&err)));
    let migrated_at = source.sink.last_count();
    // Before the assertions, so that a failed run shows how the rounds went.
    let per_round: Vec<u64> = reports.iter().map(|p| p.dirty_pages).collect();
    eprintln!(
        "{transport:?} (dirty {}): count {migrated_at} at the switch; {} rounds, {} pages ({} paused; dirtied per round {per_round:?}), {} bytes, downtime {:?}, total {:?}",
        if source.config.dirty_ring.is_some() {
            "ring"
        } else {
            "bitmap"
        },
        summary.rounds,
        summary.pages_sent,
        summary.final_pages,
        summary.bytes_sent,
        summary.downtime,
        summary.total
    );
    source.running.stop_all();
    source.running.join();
    let status = wait_child(&mut child);
    assert!(status.success(), "the destination failed: {status}");

    let here = source.sink.text();
    let there = std::fs::read_to_string(dir.as_path().join("dest-serial")).unwrap();
    // One run's output, cut in two: no number lost, none repeated.
    assert_eq!(format!("{here}{there}"), expected_serial());
    let (_, last_here) = minimal::check_count_serial(&here).unwrap();
    let (first_there, last_there) = minimal::check_count_serial(&there).unwrap();
    assert!(last_here >= 2 && last_here == migrated_at, "{here}");
    assert!(
        first_there >= last_here && first_there <= last_here + 1,
        "{there}"
    );
    assert_eq!(last_there, minimal::COUNT_LIMIT);
    assert_eq!(
        disk_count(&source.disk),
        minimal::count_sector_bytes(minimal::COUNT_LIMIT)
    );

    // Round 0, each later round, and the stop-and-copy report.
    assert!(summary.rounds >= 1 && summary.rounds <= options.max_rounds);
    assert_eq!(reports.len(), summary.rounds as usize + 1);
    assert!(reports.last().unwrap().stopped);
    // Pages go as runs; a zero page dirtied after round 0 costs no contents, so the bytes
    // are not a multiple of the pages.
    assert!(summary.pages_sent > 0 && summary.bytes_sent > 0);
}

#[test]
fn migrates_over_a_unix_socket() {
    migrates(Transport::Unix, false, MigrationOptions::default());
}

/// With the dirty ring where the host has one (the bitmap otherwise), and no downtime
/// budget: pre-copy goes on until a round leaves nothing dirty or the fourth round.
#[test]
fn migrates_over_tcp() {
    let options = MigrationOptions::default()
        .downtime_budget(Duration::ZERO)
        .max_rounds(4);
    migrates(Transport::Tcp, true, options);
}

// ---- Failures ----

/// What happens to the bytes from the source to the destination.
#[derive(Clone, Copy, Debug)]
enum Mangle {
    /// Forwarded whole.
    None,
    /// Cut after this many bytes: both ends are closed.
    Truncate(u64),
    /// The byte at this offset is flipped.
    Flip(u64),
}

/// Bridges the source's end of a socket pair to the destination's stream, mangling what
/// the source sends. A side that closes or fails closes the other.
fn proxy(destination: UnixStream, mangle: Mangle) -> UnixStream {
    let (source_end, ours) = UnixStream::pair().unwrap();
    source_end.set_read_timeout(Some(GIVE_UP)).unwrap();
    source_end.set_write_timeout(Some(GIVE_UP)).unwrap();
    let (mut from_source, mut to_source) = (ours.try_clone().unwrap(), ours);
    let (mut to_dest, mut from_dest) = (destination.try_clone().unwrap(), destination);
    std::thread::spawn(move || {
        let mut at = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from_source.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &mut buf[..n];
            let end = at + n as u64;
            match mangle {
                Mangle::Truncate(limit) if end >= limit => {
                    let keep = (limit - at) as usize;
                    let _ = to_dest.write_all(&chunk[..keep]);
                    break;
                }
                Mangle::Flip(offset) if (at..end).contains(&offset) => {
                    chunk[(offset - at) as usize] ^= 0x55;
                }
                _ => {}
            }
            if to_dest.write_all(chunk).is_err() {
                break;
            }
            at = end;
        }
        let _ = to_dest.shutdown(Shutdown::Both);
        let _ = from_source.shutdown(Shutdown::Both);
    });
    std::thread::spawn(move || {
        let _ = io::copy(&mut from_dest, &mut to_source);
        let _ = to_source.shutdown(Shutdown::Write);
    });
    source_end
}

/// Whether the destination's guest printed nothing.
fn never_ran(dir: &Path) -> bool {
    std::fs::read(dir.join("dest-serial")).map_or(true, |out| out.is_empty())
}

/// A failed migration through `mangle`, against a destination holding back `hold_back`:
/// returns the source's error and the destination's, after checking that the source's
/// guest runs on and the destination never ran it.
fn fails(mangle: Mangle, hold_back: Option<&str>) -> (MigrationError, String) {
    let dir = TempDir::new_with_prefix("/tmp/vmkit-migration-").unwrap();
    let (listener, addr) = listen(Transport::Unix, dir.as_path());
    let mut child = spawn_destination(&addr, dir.as_path(), hold_back);
    let Stream::Unix(destination) = accept(&listener, &mut child) else {
        unreachable!()
    };
    let stream = match mangle {
        Mangle::None => destination,
        _ => proxy(destination, mangle),
    };
    let source = start_source(dir.as_path(), false, Duration::from_millis(150));
    let error = source
        .migrate(stream, &MigrationOptions::default(), |_| {})
        .unwrap_err();
    eprintln!("source: {}", vmkit::ErrorChain(&error));
    let status = wait_child(&mut child);
    assert!(!status.success(), "the destination succeeded");
    let dest_error = std::fs::read_to_string(dir.as_path().join("dest-error")).unwrap();
    assert!(
        never_ran(dir.as_path()),
        "the destination ran a VM it did not receive whole"
    );
    source.still_runs(&error);
    (error, dest_error)
}

#[test]
fn refused_for_fewer_vcpus() {
    let (error, dest_error) = fails(Mangle::None, Some("fewer-vcpus"));
    assert_eq!(
        (error.side, error.phase),
        (Side::Destination, Phase::Handshake)
    );
    let Some(Refusal::MissingCapabilities(missing)) = error.refusal() else {
        panic!("{error:?}");
    };
    assert!(
        missing.iter().any(|m| m.starts_with("max vCPUs")),
        "{missing:?}"
    );
    assert!(dest_error.contains("max vCPUs"), "{dest_error}");
}

#[test]
fn refused_for_a_missing_cpuid_feature() {
    let (error, dest_error) = fails(Mangle::None, Some("no-fpu"));
    assert_eq!(
        (error.side, error.phase),
        (Side::Destination, Phase::Handshake)
    );
    let Some(Refusal::MissingCapabilities(missing)) = error.refusal() else {
        panic!("{error:?}");
    };
    assert!(
        missing.iter().any(|m| m.contains("CPUID leaf 0x1.0 edx")),
        "{missing:?}"
    );
    assert!(dest_error.contains("CPUID leaf 0x1.0 edx"), "{dest_error}");
}

/// The destination cannot prepare its devices on the empty VM: it refuses before the source
/// pauses anything.
#[test]
fn refused_when_the_devices_cannot_be_prepared() {
    let (error, dest_error) = fails(Mangle::None, Some("prepare"));
    assert_eq!(
        (error.side, error.phase),
        (Side::Destination, Phase::Handshake)
    );
    let Some(Refusal::Restore(why)) = error.refusal() else {
        panic!("{error:?}");
    };
    assert!(why.contains("host resources are missing"), "{why}");
    assert!(
        dest_error.contains("handshake phase: preparing the devices"),
        "{dest_error}"
    );
}

/// The destination has everything but cannot rebuild the devices: it refuses after the
/// source paused the vCPUs, and the source resumes them.
#[test]
fn refused_at_restore() {
    let (error, dest_error) = fails(Mangle::None, Some("disk"));
    assert_eq!(
        (error.side, error.phase),
        (Side::Destination, Phase::Confirm)
    );
    let Some(Refusal::Restore(why)) = error.refusal() else {
        panic!("{error:?}");
    };
    assert!(why.contains("No such file"), "{why}");
    assert!(dest_error.contains("restore phase"), "{dest_error}");
}

/// Cut inside round 0's pages. Round 0 of this small guest is a few page frames, which may
/// all fit in the sockets' buffers before the cut: the source then notices in a later round.
#[test]
fn truncated_stream() {
    let (error, dest_error) = fails(Mangle::Truncate(20_000), None);
    assert_eq!(error.side, Side::Destination);
    assert!(
        matches!(error.phase, Phase::PreCopy { .. } | Phase::StopAndCopy),
        "{error:?}"
    );
    assert!(dest_error.contains("ended inside frame"), "{dest_error}");
}

/// A flipped byte in round 0's page data.
#[test]
fn flipped_byte_in_pages() {
    let (error, dest_error) = fails(Mangle::Flip(20_000), None);
    assert_eq!(error.side, Side::Destination);
    assert!(
        matches!(
            error.reason,
            Reason::Refused(Refusal::Stream(_)) | Reason::Stream(_)
        ),
        "{error:?}"
    );
    assert!(dest_error.contains("checksum mismatch"), "{dest_error}");
}

/// A flipped byte in the first frame's header.
#[test]
fn flipped_byte_in_a_frame_header() {
    let (error, dest_error) = fails(Mangle::Flip(5), None);
    assert_eq!(error.side, Side::Destination);
    assert!(dest_error.contains("corrupt header"), "{dest_error}");
}

/// The destination is killed after round 0: the source finds it gone when it sends the
/// next frame (usually after pausing for the stop-and-copy, which it undoes).
#[test]
fn destination_killed_mid_stream() {
    let dir = TempDir::new_with_prefix("/tmp/vmkit-migration-").unwrap();
    let (listener, addr) = listen(Transport::Unix, dir.as_path());
    let mut child = spawn_destination(&addr, dir.as_path(), None);
    let stream = accept(&listener, &mut child);
    let source = start_source(dir.as_path(), false, Duration::from_millis(150));
    let mut killed = false;
    let error = source
        .migrate(stream, &MigrationOptions::default(), |p| {
            if !killed {
                child.kill().unwrap();
                child.wait().unwrap();
                killed = true;
            }
            let _ = p;
        })
        .unwrap_err();
    eprintln!("source: {}", vmkit::ErrorChain(&error));
    assert!(killed);
    assert_eq!(error.side, Side::Destination);
    assert!(matches!(error.reason, Reason::Stream(_)), "{error:?}");
    assert!(!matches!(error.phase, Phase::Handshake), "{error:?}");
    assert!(never_ran(dir.as_path()));
    source.still_runs(&error);
}
