//! Linux boot time: vmkit's `boot_linux` example against QEMU's microvm machine, on the same
//! kernel, initramfs and command line, timed from process spawn to the moment the child's
//! stdout shows `VMKIT-L2-USERSPACE` (the first line that the guest's `/init`,
//! `ci/svm/l2-init`, prints).
//!
//! It needs a hardware-virtualization KVM and the guest assets, so it runs inside the SVM
//! harness (`ci/svm/run.sh`, inside L1), which sets:
//!
//! | variable | meaning |
//! |---|---|
//! | `VMKIT_BENCH_BOOT_LINUX` | the `boot_linux` example (optional: without it only QEMU is timed) |
//! | `VMKIT_BENCH_QEMU` | `qemu-system-x86_64` |
//! | `VMKIT_BENCH_QEMU_FIRMWARE` | directory with `bios-microvm.bin` (QEMU's `-L`) |
//! | `VMKIT_BENCH_VMLINUX`, `VMKIT_BENCH_BZIMAGE` | the guest kernel, as ELF (PVH entry) and as bzImage |
//! | `VMKIT_BENCH_INITRD`, `VMKIT_BENCH_CMDLINE` | initramfs and kernel command line |
//! | `VMKIT_BENCH_ROUNDS` | timed rounds (default 7) |
//! | `VMKIT_BENCH_BOOT_TIMEOUT` | seconds one boot may take to reach the marker (default 120) |
//!
//! Without them (e.g. under a plain `cargo bench`) it says so and exits successfully.
//!
//! The commands, with `$X` for `VMKIT_BENCH_X`:
//!
//! ```text
//! vmkit-vmlinux: $BOOT_LINUX --kernel $VMLINUX --initrd $INITRD --cmdline "$CMDLINE"
//!                --mem 256 --vcpus 1
//! qemu-bzImage:  $QEMU -M microvm,x-option-roms=off,isa-serial=on,rtc=on -enable-kvm
//!                -cpu host -smp 1 -m 256 -nodefaults -no-user-config -display none
//!                -serial stdio -no-reboot -L $QEMU_FIRMWARE
//!                -kernel $BZIMAGE -initrd $INITRD -append "$CMDLINE"
//! qemu-vmlinux:  the same with -kernel $VMLINUX (QEMU boots an ELF kernel through its PVH note)
//! ```
//!
//! `qemu-bzImage` is the baseline; `qemu-vmlinux` shows how much of the difference is the
//! entry path alone. Each command boots once untimed (the first boots after L1 starts can
//! wait for entropy), then the rounds interleave the commands so that drift in the emulator
//! hits all alike. Once the marker is seen, the child is killed (SIGKILL) and reaped, the same
//! way for every command: what happens after userspace is reached is not timed and need not
//! run. The result is each command's median and the ratio of vmkit's median to each QEMU one.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// What the guest prints first in userspace.
const MARKER: &[u8] = b"VMKIT-L2-USERSPACE";
/// How much of a child's output is kept to explain a failed boot.
const KEEP_OUTPUT: usize = 4096;

/// One command that boots the guest.
struct Candidate {
    label: &'static str,
    program: PathBuf,
    args: Vec<OsString>,
}

/// The harness's settings.
struct Config {
    candidates: Vec<Candidate>,
    rounds: usize,
    boot_timeout: Duration,
}

fn env_path(name: &str) -> Result<PathBuf, String> {
    std::env::var_os(name)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| format!("{name} is not set"))
}

fn env_number(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|_| format!("{name}={value}: not a number")),
        Err(_) => Ok(default),
    }
}

impl Config {
    /// Reads the settings; `None` when this is not the harness's environment.
    fn from_env() -> Result<Option<Config>, String> {
        if std::env::var_os("VMKIT_BENCH_QEMU").is_none()
            && std::env::var_os("VMKIT_BENCH_BOOT_LINUX").is_none()
        {
            return Ok(None);
        }
        let vmlinux = env_path("VMKIT_BENCH_VMLINUX")?;
        let bzimage = env_path("VMKIT_BENCH_BZIMAGE")?;
        let initrd = env_path("VMKIT_BENCH_INITRD")?;
        let cmdline = std::env::var_os("VMKIT_BENCH_CMDLINE")
            .ok_or_else(|| "VMKIT_BENCH_CMDLINE is not set".to_string())?;
        let rounds = env_number("VMKIT_BENCH_ROUNDS", 7)?;
        let rounds = usize::try_from(rounds)
            .ok()
            .filter(|&r| (1..=1000).contains(&r))
            .ok_or_else(|| format!("VMKIT_BENCH_ROUNDS={rounds}: must be 1 to 1000"))?;
        let boot_timeout = Duration::from_secs(env_number("VMKIT_BENCH_BOOT_TIMEOUT", 120)?);

        let mut candidates = Vec::new();
        if let Ok(boot_linux) = env_path("VMKIT_BENCH_BOOT_LINUX") {
            candidates.push(Candidate {
                label: "vmkit-vmlinux",
                program: boot_linux,
                args: vec![
                    "--kernel".into(),
                    vmlinux.clone().into(),
                    "--initrd".into(),
                    initrd.clone().into(),
                    "--cmdline".into(),
                    cmdline.clone(),
                    "--mem".into(),
                    "256".into(),
                    "--vcpus".into(),
                    "1".into(),
                ],
            });
        }
        let qemu = env_path("VMKIT_BENCH_QEMU")?;
        let firmware = env_path("VMKIT_BENCH_QEMU_FIRMWARE")?;
        let qemu_args = |kernel: &PathBuf| -> Vec<OsString> {
            let mut args: Vec<OsString> = [
                "-M",
                "microvm,x-option-roms=off,isa-serial=on,rtc=on",
                "-enable-kvm",
                "-cpu",
                "host",
                "-smp",
                "1",
                "-m",
                "256",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
                "-L",
            ]
            .iter()
            .map(OsString::from)
            .collect();
            args.push(firmware.clone().into());
            args.push("-kernel".into());
            args.push(kernel.clone().into());
            args.push("-initrd".into());
            args.push(initrd.clone().into());
            args.push("-append".into());
            args.push(cmdline.clone());
            args
        };
        candidates.push(Candidate {
            label: "qemu-bzImage",
            program: qemu.clone(),
            args: qemu_args(&bzimage),
        });
        candidates.push(Candidate {
            label: "qemu-vmlinux",
            program: qemu,
            args: qemu_args(&vmlinux),
        });
        Ok(Some(Config {
            candidates,
            rounds,
            boot_timeout,
        }))
    }
}

/// What a reader thread saw on one of the child's streams.
enum Seen {
    Marker(Instant),
    End,
}

/// Appends `data` to `tail`, keeping its last `KEEP_OUTPUT` bytes.
fn keep_tail(tail: &mut VecDeque<u8>, data: &[u8]) {
    tail.extend(data);
    let excess = tail.len().saturating_sub(KEEP_OUTPUT);
    tail.drain(..excess);
}

/// Reads `stream` to its end; reports on `seen` when the marker shows up (if `watch`) and
/// when the stream ends. Returns the stream's last bytes.
fn read_stream(mut stream: impl Read, watch: bool, seen: mpsc::Sender<Seen>) -> VecDeque<u8> {
    let mut tail = VecDeque::new();
    // The marker may straddle two reads: search the previous read's end with the new one.
    let mut window: Vec<u8> = Vec::new();
    let mut found = false;
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if watch && !found {
            window.extend_from_slice(&buf[..n]);
            if window.windows(MARKER.len()).any(|w| w == MARKER) {
                found = true;
                // The receiver may be gone after a timeout; nothing to do then.
                let _ = seen.send(Seen::Marker(Instant::now()));
            } else {
                let keep = window.len().min(MARKER.len() - 1);
                window.drain(..window.len() - keep);
            }
        }
        keep_tail(&mut tail, &buf[..n]);
    }
    let _ = seen.send(Seen::End);
    tail
}

/// Kills and reaps `child`; the error (if any) explains that it could not.
fn stop(child: &mut Child) -> String {
    // Killing a child that already exited fails harmlessly; wait() reaps it either way.
    let _ = child.kill();
    match child.wait() {
        Ok(status) => status.to_string(),
        Err(err) => format!("could not be waited for: {err}"),
    }
}

/// Boots once: the time from spawn to the marker on stdout.
fn time_boot(candidate: &Candidate, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut child = Command::new(&candidate.program)
        .args(&candidate.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot start {}: {err}", candidate.program.display()))?;
    let (tx, rx) = mpsc::channel();
    let (stdout, stderr) = match (child.stdout.take(), child.stderr.take()) {
        (Some(stdout), Some(stderr)) => (stdout, stderr),
        _ => {
            stop(&mut child);
            return Err("the child's output pipes are missing".into());
        }
    };
    let tx_err = tx.clone();
    let out_reader = thread::spawn(move || read_stream(stdout, true, tx));
    let err_reader = thread::spawn(move || read_stream(stderr, false, tx_err));

    let deadline = start + timeout;
    let mut ended = 0;
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Seen::Marker(at)) => break Ok(at.duration_since(start)),
            Ok(Seen::End) => {
                ended += 1;
                if ended == 2 {
                    break Err("the output ended without the marker".to_string());
                }
            }
            Err(_) => break Err(format!("no marker within {} s", timeout.as_secs())),
        }
    };
    let status = stop(&mut child);
    let out_tail = out_reader.join().unwrap_or_default();
    let err_tail = err_reader.join().unwrap_or_default();
    outcome.map_err(|why| {
        let out: Vec<u8> = out_tail.into_iter().collect();
        let err: Vec<u8> = err_tail.into_iter().collect();
        format!(
            "{why} (child: {status})\n--- stdout (end):\n{}\n--- stderr (end):\n{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        )
    })
}

/// The median of `times` (zero if empty).
fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => Duration::ZERO,
        len if len % 2 == 1 => sorted[mid],
        _ => (sorted[mid - 1] + sorted[mid]) / 2,
    }
}

/// Runs the warm-ups and rounds and prints the results. A command whose boot fails is
/// reported and left out from then on; the others carry on. Returns whether all succeeded.
fn run(config: &Config) -> bool {
    let n = config.candidates.len();
    let mut alive = vec![true; n];
    let mut times = vec![Vec::with_capacity(config.rounds); n];
    let boot = |i: usize, alive: &mut [bool]| -> Option<Duration> {
        let candidate = &config.candidates[i];
        match time_boot(candidate, config.boot_timeout) {
            Ok(took) => Some(took),
            Err(err) => {
                println!("linux_boot: FAILED: {}: {err}", candidate.label);
                alive[i] = false;
                None
            }
        }
    };
    for i in 0..n {
        if let Some(took) = boot(i, &mut alive) {
            println!(
                "linux_boot: warm-up {} {:.3} s",
                config.candidates[i].label,
                took.as_secs_f64()
            );
        }
    }
    for round in 1..=config.rounds {
        let mut line = format!("linux_boot: round {round}/{}:", config.rounds);
        for i in 0..n {
            if !alive[i] {
                continue;
            }
            if let Some(took) = boot(i, &mut alive) {
                times[i].push(took);
                line += &format!(
                    " {} {:.3} s",
                    config.candidates[i].label,
                    took.as_secs_f64()
                );
            }
        }
        println!("{line}");
    }
    let mut medians: Vec<Option<Duration>> = vec![None; n];
    for i in (0..n).filter(|&i| alive[i]) {
        let median_time = median(&times[i]);
        medians[i] = Some(median_time);
        let min = times[i].iter().min().copied().unwrap_or_default();
        let max = times[i].iter().max().copied().unwrap_or_default();
        println!(
            "linux_boot: median {} {:.3} s (min {:.3}, max {:.3}, {} rounds)",
            config.candidates[i].label,
            median_time.as_secs_f64(),
            min.as_secs_f64(),
            max.as_secs_f64(),
            times[i].len()
        );
    }
    let label = |i: usize| config.candidates[i].label;
    for v in (0..n).filter(|&i| label(i).starts_with("vmkit")) {
        for q in (0..n).filter(|&i| label(i).starts_with("qemu")) {
            if let (Some(vmkit), Some(qemu)) = (medians[v], medians[q]) {
                println!(
                    "linux_boot: ratio {}/{} {:.2}",
                    label(v),
                    label(q),
                    vmkit.as_secs_f64() / qemu.as_secs_f64()
                );
            }
        }
    }
    alive.iter().all(|&a| a)
}

fn main() -> ExitCode {
    match Config::from_env() {
        Ok(None) => {
            println!(
                "linux_boot: needs the SVM harness's environment (VMKIT_BENCH_*, set by \
                 ci/svm/run.sh inside its L1 guest); nothing to do here"
            );
            ExitCode::SUCCESS
        }
        Ok(Some(config)) => {
            if run(&config) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            println!("linux_boot: FAILED: {err}");
            ExitCode::FAILURE
        }
    }
}
