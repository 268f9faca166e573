//! Boots a Linux kernel as a 64-bit PV domain on Xen (`vmkit::xen`, libxenguest's domain
//! builder) and streams its PV console (`hvc0`) to stdout until the guest shuts down.
//!
//! ```text
//! cargo run --release --features xen --example boot_linux_pv -- --kernel VMLINUX
//!     [--initrd FILE] [--cmdline "..."] [--mem MIB] [--vcpus N] [--name NAME]
//!     [--marker TEXT] [--timeout SECS] [--check-xenstore]
//! ```
//!
//! Runs in a Xen dom0 with xenstored (the domain's xenstore nodes go there). The kernel
//! needs Xen's ELF notes (Debian's `vmlinux` has them); its console is `hvc0`, so the
//! command line (default `console=hvc0`) should keep `console=hvc0`. Defaults: 256 MiB,
//! 1 vCPU, name `vmkit-pv`, timeout 600 s.
//!
//! With `--marker TEXT`, the first console line containing TEXT is reported on stderr with
//! the milliseconds since the start (`boot_linux_pv: marker after N ms`). At the shutdown it
//! reports whether the guest wrote `control/feature-poweroff` to its xenstore directory
//! (Linux's xenbus does once connected); with `--check-xenstore` a guest that did not fails
//! the run. Exits 0 when the
//! guest powers off or reboots (Linux's `reboot -f` is a reboot), 1 on a crash, another
//! shutdown reason, a timeout or an error. There are no other devices: a PV guest's block
//! and network devices would be backends in dom0, which this example does not set up.

#[cfg(feature = "xen")]
fn main() -> std::process::ExitCode {
    pv::main()
}

#[cfg(not(feature = "xen"))]
fn main() {
    eprintln!("boot_linux_pv needs the xen feature");
    std::process::exit(2);
}

#[cfg(feature = "xen")]
mod pv {
    use std::io::Write;
    use std::path::PathBuf;
    use std::process::ExitCode;
    use std::time::{Duration, Instant};

    use vmkit::xen::{PvError, PvLinuxConfig, PvShutdown, PvState, Xen};
    use vmkit::ErrorChain;

    const USAGE: &str =
        "usage: boot_linux_pv --kernel VMLINUX [--initrd FILE] [--cmdline \"...\"] \
                         [--mem MIB] [--vcpus N] [--name NAME] [--marker TEXT] [--timeout SECS] \
                         [--check-xenstore]";

    /// A bad command line.
    #[derive(Debug, thiserror::Error)]
    enum ArgError {
        #[error("{flag} needs a value\n{USAGE}")]
        Missing { flag: String },
        #[error("{flag} {value:?}: not a number in {min}..={max}")]
        Number {
            flag: &'static str,
            value: String,
            min: u64,
            max: u64,
        },
        #[error("unknown argument {0:?}\n{USAGE}")]
        Unknown(String),
        #[error("--kernel is required\n{USAGE}")]
        NoKernel,
    }

    /// Why the run failed.
    #[derive(Debug, thiserror::Error)]
    enum RunError {
        #[error(transparent)]
        Args(#[from] ArgError),
        #[error("cannot open Xen")]
        Open(#[source] vmkit::HypervisorError),
        #[error(transparent)]
        Pv(#[from] PvError),
        #[error("writing the console to stdout failed")]
        Stdout(#[source] std::io::Error),
        #[error("the guest ran {0} s without shutting down")]
        Timeout(u64),
        #[error("domain {0} vanished (destroyed by someone else?)")]
        Gone(u32),
        #[error("the guest never wrote control/feature-poweroff: its xenbus did not connect")]
        NoXenbus,
    }

    struct Options {
        config: PvLinuxConfig,
        marker: Option<String>,
        timeout: Duration,
        check_xenstore: bool,
    }

    fn number(flag: &'static str, value: &str, min: u64, max: u64) -> Result<u64, ArgError> {
        value
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| ArgError::Number {
                flag,
                value: value.to_string(),
                min,
                max,
            })
    }

    fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, ArgError> {
        let mut args = args.into_iter();
        let mut kernel = None;
        let mut config = PvLinuxConfig::new("");
        let mut marker = None;
        let mut timeout = 600;
        let mut check_xenstore = false;
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| ArgError::Missing { flag: flag.clone() })
            };
            match flag.as_str() {
                "--kernel" => kernel = Some(PathBuf::from(value()?)),
                "--initrd" => config.initrd = Some(PathBuf::from(value()?)),
                "--cmdline" => config.cmdline = value()?,
                "--name" => config.name = value()?,
                "--marker" => marker = Some(value()?),
                // The library checks the ranges again, with its own limits.
                "--mem" => {
                    config.mem_mib = number("--mem", &value()?, 1, u64::from(u32::MAX))? as u32
                }
                "--vcpus" => {
                    config.vcpus = number("--vcpus", &value()?, 1, u64::from(u32::MAX))? as u32
                }
                "--timeout" => timeout = number("--timeout", &value()?, 1, 86_400)?,
                "--check-xenstore" => check_xenstore = true,
                _ => return Err(ArgError::Unknown(flag)),
            }
        }
        config.kernel = kernel.ok_or(ArgError::NoKernel)?;
        Ok(Options {
            config,
            marker,
            timeout: Duration::from_secs(timeout),
            check_xenstore,
        })
    }

    /// Finds the marker in whole lines of console output.
    struct MarkerScan {
        marker: Option<String>,
        line: Vec<u8>,
        found: bool,
    }

    impl MarkerScan {
        fn feed(&mut self, bytes: &[u8], start: Instant) {
            let Some(marker) = &self.marker else { return };
            for &b in bytes {
                if b != b'\n' {
                    // A line longer than this cannot matter for a marker.
                    if self.line.len() < 4096 {
                        self.line.push(b);
                    }
                    continue;
                }
                if !self.found && String::from_utf8_lossy(&self.line).contains(marker.as_str()) {
                    self.found = true;
                    eprintln!(
                        "boot_linux_pv: marker after {} ms",
                        start.elapsed().as_millis()
                    );
                }
                self.line.clear();
            }
        }
    }

    fn run() -> Result<ExitCode, RunError> {
        let options = parse(std::env::args().skip(1))?;
        let start = Instant::now();
        let xen = Xen::new().map_err(RunError::Open)?;
        let mut domain = xen.boot_pv_linux(&options.config)?;
        eprintln!(
            "boot_linux_pv: domain {} built in {} ms ({} MiB, {} vCPUs)",
            domain.domid(),
            start.elapsed().as_millis(),
            options.config.mem_mib,
            options.config.vcpus
        );
        domain.start()?;
        let mut scan = MarkerScan {
            marker: options.marker,
            line: Vec::new(),
            found: false,
        };
        let mut stdout = std::io::stdout().lock();
        let mut buf = [0u8; 2048];
        let mut drain = |domain: &mut vmkit::xen::PvDomain| -> Result<(), RunError> {
            let Some(console) = domain.console() else {
                return Ok(());
            };
            loop {
                let n = console.read(&mut buf)?;
                if n == 0 {
                    return stdout.flush().map_err(RunError::Stdout);
                }
                stdout.write_all(&buf[..n]).map_err(RunError::Stdout)?;
                scan.feed(&buf[..n], start);
            }
        };
        loop {
            if let Some(console) = domain.console() {
                console.wait(Duration::from_millis(100))?;
            }
            drain(&mut domain)?;
            match domain.state()? {
                PvState::Built | PvState::Running => {}
                PvState::Shutdown(reason) => {
                    drain(&mut domain)?;
                    eprintln!(
                        "boot_linux_pv: domain {} shut down ({reason:?}) after {} ms",
                        domain.domid(),
                        start.elapsed().as_millis()
                    );
                    let feature = domain.xenstore_read("control/feature-poweroff")?;
                    eprintln!(
                        "boot_linux_pv: xenstore {}/control/feature-poweroff: {}",
                        domain.xenstore_path(),
                        feature
                            .as_deref()
                            .map_or("absent".into(), String::from_utf8_lossy)
                    );
                    if options.check_xenstore && feature.is_none() {
                        return Err(RunError::NoXenbus);
                    }
                    let clean = matches!(reason, PvShutdown::Poweroff | PvShutdown::Reboot);
                    return Ok(if clean {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    });
                }
                PvState::Gone => return Err(RunError::Gone(domain.domid())),
            }
            if start.elapsed() > options.timeout {
                return Err(RunError::Timeout(options.timeout.as_secs()));
            }
        }
    }

    pub fn main() -> ExitCode {
        match run() {
            Ok(code) => code,
            Err(err) => {
                eprintln!("boot_linux_pv: {}", ErrorChain(&err));
                ExitCode::FAILURE
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn args(list: &[&str]) -> Vec<String> {
            list.iter().map(|s| s.to_string()).collect()
        }

        #[test]
        fn flags_are_parsed_and_bad_values_named() {
            let o = parse(args(&[
                "--kernel",
                "k",
                "--mem",
                "128",
                "--vcpus",
                "2",
                "--marker",
                "M",
                "--check-xenstore",
            ]))
            .unwrap();
            assert!(o.check_xenstore);
            assert_eq!(o.config.kernel, PathBuf::from("k"));
            assert_eq!((o.config.mem_mib, o.config.vcpus), (128, 2));
            assert_eq!(o.marker.as_deref(), Some("M"));
            assert!(matches!(
                parse(args(&["--kernel", "k", "--mem", "x"])),
                Err(ArgError::Number { flag: "--mem", .. })
            ));
            assert!(matches!(
                parse(args(&["--mem", "64"])),
                Err(ArgError::NoKernel)
            ));
            assert!(matches!(
                parse(args(&["--kernel"])),
                Err(ArgError::Missing { .. })
            ));
            assert!(matches!(
                parse(args(&["--bogus"])),
                Err(ArgError::Unknown(_))
            ));
        }
    }
}
