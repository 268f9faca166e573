//! boot_linux's command line: what it asks for, and every limit checked before a VM is made,
//! each refusal naming the flag, the value and the limit.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use vmkit_boot::linux::{self, layout, LinuxBootError};
use vmkit_net::vhost::Datapath;
use vmkit_net::TapMode;
use vmkit_virtio::blk::SECTOR_SIZE;
use vmkit_virtio::net::{MacAddr, NetOptions};

/// The usage line, shown with `--help` and with most mistakes.
pub const USAGE: &str = "usage: boot_linux --kernel IMAGE [--initrd FILE] [--cmdline STRING] \
                         [--mem MIB [--mem-overcommit]] [--vcpus N] [--disk FILE[,ro]] \
                         [--net tap|isolated:BRIDGE|bridged:BRIDGE|nat:BRIDGE:GATEWAY/PREFIX:UPLINK[,vhost] \
                         [--tap NAME] [--mac MAC]] [--balloon] [--balloon-control FILE] \
                         [--balloon-no-reporting] [--mergeable] [--exit-stats] [--map-kernel] \
                         [--split-rings] [--seccomp] [--s3-wake-after MS] \
                         [--save DIR] [--restore DIR] [--pci] [--split-irqchip] \
                         [--migrate-to ADDR] [--incoming ADDR]";
/// The command line when `--cmdline` is not given. `earlyprintk` shows the kernel's first
/// lines (its banner) on the serial port before the console driver starts, which a kernel
/// that dies early never reaches.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0 reboot=k panic=-1";
/// Room for the command line, the NUL included (linux-loader's `Cmdline` capacity).
pub const CMDLINE_CAPACITY: usize = 4096;
/// RAM when `--mem` is not given, in MiB.
const DEFAULT_MEM_MIB: u64 = 256;
/// The least `--mem` the guest layout boots, in MiB.
const MIN_MEM_MIB: u64 = layout::MIN_RAM >> 20;
const MIB: u64 = 1 << 20;
/// The longest `--s3-wake-after`: ten minutes.
const MAX_S3_WAKE_MS: u64 = 600_000;

/// A refused command line or input file.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// `--help`.
    #[error("{USAGE}")]
    Help,
    /// No `--kernel`.
    #[error("--kernel is required; {USAGE}")]
    NoKernel,
    /// `--save` or `--restore` with a device that snapshots do not cover yet.
    #[error("{flag} cannot be combined with {with}: {why}")]
    NotWithSnapshots {
        /// `--save` or `--restore`.
        flag: &'static str,
        /// The other flag.
        with: &'static str,
        /// Why not.
        why: &'static str,
    },
    /// A flag is last, without its value.
    #[error("{flag} needs a value; {USAGE}")]
    MissingValue {
        /// The flag.
        flag: String,
    },
    /// Not a flag boot_linux knows.
    #[error("unexpected argument {arg:?}; {USAGE}")]
    Unexpected {
        /// The argument.
        arg: String,
    },
    /// A value that does not parse, or is out of range.
    #[error("{flag} takes {takes}, not {value:?}")]
    BadValue {
        /// The flag.
        flag: &'static str,
        /// What it takes.
        takes: String,
        /// What it got.
        value: String,
    },
    /// `--mem` below what the layout boots.
    #[error("--mem {mib}: booting Linux needs at least {MIN_MEM_MIB} MiB")]
    MemTooSmall {
        /// The value.
        mib: u64,
    },
    /// `--mem` above the host's RAM.
    #[error(
        "--mem {mib} MiB is more than this host's RAM ({host_mib} MiB, MemTotal in \
         /proc/meminfo); add --mem-overcommit to start anyway"
    )]
    MemAboveHost {
        /// The value.
        mib: u64,
        /// The host's RAM in MiB.
        host_mib: u64,
    },
    /// The host's RAM could not be read.
    #[error(
        "cannot read this host's RAM (MemTotal in /proc/meminfo) to check --mem against it; \
         add --mem-overcommit to skip the check"
    )]
    HostMemory(#[source] io::Error),
    /// `--cmdline` longer than boot_linux or the kernel takes.
    #[error("--cmdline is {len} bytes; {limit} takes at most {max}")]
    CmdlineTooLong {
        /// Its length (without surrounding spaces).
        len: usize,
        /// The most taken.
        max: usize,
        /// Whose limit it is.
        limit: &'static str,
    },
    /// `--cmdline` with a character a kernel command line cannot hold.
    #[error(
        "--cmdline has {ch:?} (U+{code:04X}) at byte {at}; a kernel command line takes \
         printable ASCII only (' ' to '~')",
        code = u32::from(*ch)
    )]
    CmdlineChar {
        /// The character.
        ch: char,
        /// Its byte offset in the value.
        at: usize,
    },
    /// The disk file could not be opened.
    #[error("--disk {}: cannot open it", path.display())]
    DiskOpen {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The disk is not a regular file or a block device.
    #[error("--disk {}: it is {kind}; a disk is a regular file or a block device", path.display())]
    DiskKind {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The disk is empty.
    #[error("--disk {}: it is empty (0 bytes); a disk holds at least one {SECTOR_SIZE}-byte sector", path.display())]
    DiskEmpty {
        /// The file.
        path: PathBuf,
    },
    /// The disk's size is not whole sectors.
    #[error(
        "--disk {}: its size, {size} bytes, is not a multiple of the {SECTOR_SIZE}-byte \
         sector, so its last {} bytes would be out of the guest's reach; pad it (truncate -s \
         %{SECTOR_SIZE} FILE)",
        path.display(), size % SECTOR_SIZE
    )]
    DiskPartialSector {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The kernel image was refused.
    #[error("--kernel {}: {}", path.display(), vmkit::ErrorChain(error))]
    Kernel {
        /// The file.
        path: PathBuf,
        /// Why (its chain is in the message, so it is not a `source()`).
        error: LinuxBootError,
    },
    /// The initrd was refused.
    #[error("--initrd {}: {}", path.display(), vmkit::ErrorChain(error))]
    Initrd {
        /// The file.
        path: PathBuf,
        /// Why (in the message).
        error: LinuxBootError,
    },
    /// The kernel (or the kernel and the initrd) does not fit in `--mem`.
    #[error("--mem {mib} MiB is too small: {}{}", vmkit::ErrorChain(error), at_least(*need))]
    MemTooSmallFor {
        /// The value.
        mib: u64,
        /// The least `--mem` that holds it, when known.
        need: Option<u64>,
        /// What did not fit (in the message).
        error: LinuxBootError,
    },
}

fn at_least(need: Option<u64>) -> String {
    need.map(|mib| format!("; this needs --mem {mib} or more"))
        .unwrap_or_default()
}

/// `--disk FILE[,ro]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskArg {
    /// The file.
    pub path: PathBuf,
    /// Attach it read-only (and open it so).
    pub read_only: bool,
}

/// What the command line asks for.
#[derive(Debug)]
pub struct Options {
    /// `--kernel`.
    pub kernel: PathBuf,
    /// `--initrd`.
    pub initrd: Option<PathBuf>,
    /// `--cmdline`, checked to fit [`CMDLINE_CAPACITY`] with printable ASCII only.
    pub cmdline: String,
    /// `--mem`, at least the layout's minimum; `mem_mib << 20` fits a `usize`.
    pub mem_mib: u64,
    /// `--mem-overcommit`.
    pub mem_overcommit: bool,
    /// `--vcpus`.
    pub vcpus: u32,
    /// `--disk`.
    pub disk: Option<DiskArg>,
    /// `--net`.
    pub net: Option<TapMode>,
    /// `--net MODE,vhost` (or `,userspace`, the default): the card's datapath.
    pub datapath: Datapath,
    /// `--tap`.
    pub tap: String,
    /// `--mac`.
    pub mac: MacAddr,
    /// `--balloon` (also implied by the other `--balloon-` flags).
    pub balloon: bool,
    /// `--balloon-control FILE`: SIGUSR2 reads the balloon's target (MiB) from FILE.
    pub balloon_control: Option<PathBuf>,
    /// Not `--balloon-no-reporting`: the balloon offers free page reporting.
    pub balloon_reporting: bool,
    /// `--mergeable`: guest RAM is marked for KSM (`MemoryFlags::MERGEABLE`).
    pub mergeable: bool,
    /// `--exit-stats`.
    pub exit_stats: bool,
    /// `--map-kernel`.
    pub map_kernel: bool,
    /// `--split-rings`.
    pub split_rings: bool,
    /// `--seccomp`.
    pub seccomp: bool,
    /// `--s3-wake-after MS`: offer S3, and wake a suspended guest after this long.
    pub s3_wake_after: Option<std::time::Duration>,
    /// `--save DIR`: where SIGUSR2 saves the VM.
    pub save: Option<PathBuf>,
    /// `--restore DIR`: the snapshot to resume instead of booting `--kernel`.
    pub restore: Option<PathBuf>,
    /// `--pci`: the disk, the network card and the console on virtio-pci.
    pub pci: bool,
    /// `--split-irqchip`: local APICs in KVM, the IOAPIC in this process, no PIT.
    pub split_irqchip: bool,
    /// `--migrate-to ADDR`: where SIGPWR migrates the running VM to.
    pub migrate_to: Option<crate::migrate::Address>,
    /// `--incoming ADDR`: receive a migrating VM there instead of booting `--kernel`.
    pub incoming: Option<crate::migrate::Address>,
}

/// Parses this process's arguments and checks `--mem` against the host's RAM.
pub fn from_env() -> Result<Options, OptionsError> {
    let options = parse(std::env::args().skip(1))?;
    options.check_host_memory(host_mem_total())?;
    Ok(options)
}

/// Parses boot_linux's arguments (without the program name).
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, OptionsError> {
    let mut args = args.into_iter();
    let mut kernel = None;
    let mut options = Options {
        kernel: PathBuf::new(),
        initrd: None,
        cmdline: DEFAULT_CMDLINE.to_owned(),
        mem_mib: DEFAULT_MEM_MIB,
        mem_overcommit: false,
        vcpus: 1,
        disk: None,
        net: None,
        datapath: Datapath::Userspace,
        tap: "vmktap%d".to_owned(),
        mac: NetOptions::default().mac,
        balloon: false,
        balloon_control: None,
        balloon_reporting: true,
        mergeable: false,
        exit_stats: false,
        map_kernel: false,
        split_rings: false,
        seccomp: false,
        s3_wake_after: None,
        save: None,
        restore: None,
        pci: false,
        split_irqchip: false,
        migrate_to: None,
        incoming: None,
    };
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| OptionsError::MissingValue { flag: arg.clone() })
        };
        match arg.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--initrd" => options.initrd = Some(value()?.into()),
            "--cmdline" => options.cmdline = check_cmdline(value()?)?,
            "--disk" => options.disk = Some(parse_disk(value()?)),
            "--net" => {
                let text = value()?;
                let (mode, datapath) =
                    parse_net(&text).map_err(|takes| OptionsError::BadValue {
                        flag: "--net",
                        takes,
                        value: text.clone(),
                    })?;
                options.net = Some(mode);
                options.datapath = datapath;
            }
            "--tap" => options.tap = value()?,
            "--mac" => {
                let text = value()?;
                options.mac =
                    vmkit_net::parse_mac(&text).map_err(|err| OptionsError::BadValue {
                        flag: "--mac",
                        takes: format!("a MAC address ({err})"),
                        value: text,
                    })?;
            }
            "--mem" => options.mem_mib = parse_mem(value()?)?,
            "--mem-overcommit" => options.mem_overcommit = true,
            "--vcpus" => {
                let text = value()?;
                let max = linux::mptable::MAX_VCPUS;
                options.vcpus = text
                    .parse()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| OptionsError::BadValue {
                        flag: "--vcpus",
                        takes: format!("a number from 1 to {max}"),
                        value: text,
                    })?;
            }
            "--balloon" => options.balloon = true,
            "--balloon-control" => {
                options.balloon_control = Some(value()?.into());
                options.balloon = true;
            }
            "--balloon-no-reporting" => {
                options.balloon_reporting = false;
                options.balloon = true;
            }
            "--mergeable" => options.mergeable = true,
            "--exit-stats" => options.exit_stats = true,
            "--map-kernel" => options.map_kernel = true,
            "--split-rings" => options.split_rings = true,
            "--seccomp" => options.seccomp = true,
            "--split-irqchip" => options.split_irqchip = true,
            "--s3-wake-after" => {
                let text = value()?;
                let ms: u64 = text
                    .parse()
                    .ok()
                    .filter(|ms| (1..=MAX_S3_WAKE_MS).contains(ms))
                    .ok_or_else(|| OptionsError::BadValue {
                        flag: "--s3-wake-after",
                        takes: format!("milliseconds, from 1 to {MAX_S3_WAKE_MS}"),
                        value: text,
                    })?;
                options.s3_wake_after = Some(std::time::Duration::from_millis(ms));
            }
            "--save" => options.save = Some(value()?.into()),
            "--restore" => options.restore = Some(value()?.into()),
            "--pci" => options.pci = true,
            "--migrate-to" => options.migrate_to = Some(crate::migrate::Address::parse(value()?)),
            "--incoming" => options.incoming = Some(crate::migrate::Address::parse(value()?)),
            "--help" | "-h" => return Err(OptionsError::Help),
            _ => return Err(OptionsError::Unexpected { arg }),
        }
    }
    // A restore takes the guest's kernel from the snapshot's memory.
    match kernel {
        Some(kernel) => options.kernel = kernel,
        None if options.restore.is_some() || options.incoming.is_some() => {}
        None => return Err(OptionsError::NoKernel),
    }
    if options.restore.is_some() && options.incoming.is_some() {
        return Err(OptionsError::NotWithSnapshots {
            flag: "--incoming",
            with: "--restore",
            why: "the guest comes from one of them",
        });
    }
    check_snapshot_flags(&options)?;
    Ok(options)
}

/// Refuses `--save` and `--restore` with the devices whose state snapshots do not cover: the
/// balloon (its discards would read a lazily restored region back from the memory file, not
/// zeros), vhost-net (the kernel's rings are not saved), virtio-pci (no `Persist` yet) and a
/// split irqchip (snapshots take the in-kernel irqchip's state). Migration (`--migrate-to`,
/// `--incoming`) carries the same state, so it refuses the same.
fn check_snapshot_flags(options: &Options) -> Result<(), OptionsError> {
    for (flag, given) in [
        ("--save", options.save.is_some()),
        ("--restore", options.restore.is_some()),
        ("--migrate-to", options.migrate_to.is_some()),
        ("--incoming", options.incoming.is_some()),
    ] {
        if !given {
            continue;
        }
        if options.balloon {
            return Err(OptionsError::NotWithSnapshots {
                flag,
                with: "--balloon",
                why: "the balloon's discards are not snapshot-aware yet",
            });
        }
        if options.net.is_some() && options.datapath == Datapath::Vhost {
            return Err(OptionsError::NotWithSnapshots {
                flag,
                with: "--net MODE,vhost",
                why: "vhost-net's ring state is in the kernel, which snapshots do not save",
            });
        }
        if options.pci {
            return Err(OptionsError::NotWithSnapshots {
                flag,
                with: "--pci",
                why: "the virtio-pci transport has no saved state yet",
            });
        }
        if options.split_irqchip {
            return Err(OptionsError::NotWithSnapshots {
                flag,
                with: "--split-irqchip",
                why: "snapshots save the in-kernel irqchip, not the userspace IOAPIC, yet",
            });
        }
    }
    Ok(())
}

/// `--net MODE[,DATAPATH]`: a network mode, and `vhost` or `userspace` after the last comma
/// (no mode has a comma). The error says what the flag takes.
fn parse_net(text: &str) -> Result<(TapMode, Datapath), String> {
    let (mode, datapath) = match text.rsplit_once(',') {
        Some((mode, datapath)) => (
            mode,
            datapath
                .parse()
                .map_err(|err| format!("a network mode, then ,vhost or ,userspace ({err})"))?,
        ),
        None => (text, Datapath::Userspace),
    };
    let mode = mode
        .parse()
        .map_err(|err| format!("a network mode ({err})"))?;
    Ok((mode, datapath))
}

fn parse_mem(text: String) -> Result<u64, OptionsError> {
    // The most whose byte count is a usize (a memory region's size).
    let max = (usize::MAX as u64) >> 20;
    let mib: u64 = text.parse().map_err(|_| OptionsError::BadValue {
        flag: "--mem",
        takes: format!("a size in MiB ({MIN_MEM_MIB} to {max})"),
        value: text.clone(),
    })?;
    if mib < MIN_MEM_MIB {
        return Err(OptionsError::MemTooSmall { mib });
    }
    if mib > max {
        return Err(OptionsError::BadValue {
            flag: "--mem",
            takes: format!("a size in MiB ({MIN_MEM_MIB} to {max})"),
            value: text,
        });
    }
    Ok(mib)
}

/// Checks `--cmdline` as linux-loader's `Cmdline` would, but says which limit or character.
fn check_cmdline(text: String) -> Result<String, OptionsError> {
    if let Some((at, ch)) = text.char_indices().find(|(_, ch)| !matches!(ch, ' '..='~')) {
        return Err(OptionsError::CmdlineChar { ch, at });
    }
    // linux-loader trims the value and adds a NUL.
    let len = text.trim().len();
    if len >= CMDLINE_CAPACITY {
        return Err(OptionsError::CmdlineTooLong {
            len,
            max: CMDLINE_CAPACITY - 1,
            limit: "boot_linux",
        });
    }
    Ok(text)
}

/// `FILE` or `FILE,ro` (`FILE,rw` is `FILE`); a comma followed by anything else is part of
/// the file name.
fn parse_disk(text: String) -> DiskArg {
    match text.rsplit_once(',') {
        Some((path, "ro")) => DiskArg {
            path: path.into(),
            read_only: true,
        },
        Some((path, "rw")) => DiskArg {
            path: path.into(),
            read_only: false,
        },
        _ => DiskArg {
            path: text.into(),
            read_only: false,
        },
    }
}

/// This host's RAM in bytes (`MemTotal` in `/proc/meminfo`).
pub fn host_mem_total() -> io::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .and_then(|kib| kib.checked_mul(1024))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no MemTotal line in kB"))
}

impl Options {
    /// The guest's RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        // parse_mem keeps it within a usize.
        self.mem_mib << 20
    }

    /// Refuses more RAM than the host has (`host`: its size in bytes, or why it is not
    /// known), unless `--mem-overcommit` was given.
    pub fn check_host_memory(&self, host: io::Result<u64>) -> Result<(), OptionsError> {
        if self.mem_overcommit {
            return Ok(());
        }
        let host = host.map_err(OptionsError::HostMemory)?;
        if self.ram_size() > host {
            return Err(OptionsError::MemAboveHost {
                mib: self.mem_mib,
                host_mib: host >> 20,
            });
        }
        Ok(())
    }

    /// Refuses a `--cmdline` longer than the kernel takes (`max`, from its setup header).
    pub fn check_cmdline_for_kernel(&self, max: Option<usize>) -> Result<(), OptionsError> {
        let len = self.cmdline.trim().len();
        match max {
            Some(max) if len > max => Err(OptionsError::CmdlineTooLong {
                len,
                max,
                limit: "this kernel (cmdline_size in its setup header)",
            }),
            _ => Ok(()),
        }
    }

    /// Names the flag a kernel loading error is about: `--mem` when the kernel does not fit
    /// in RAM, `--kernel` otherwise.
    pub fn kernel_error(&self, error: LinuxBootError) -> OptionsError {
        match error {
            LinuxBootError::KernelDoesNotFit { end, .. } => OptionsError::MemTooSmallFor {
                mib: self.mem_mib,
                // RAM below the hole is contiguous from 0, so the end is the RAM needed.
                need: (end <= layout::MMIO_HOLE_START).then(|| end.div_ceil(MIB)),
                error,
            },
            error => OptionsError::Kernel {
                path: self.kernel.clone(),
                error,
            },
        }
    }

    /// Names the flag an initrd loading error is about: `--mem` when it does not fit in RAM
    /// above the kernel, `--initrd` otherwise.
    pub fn initrd_error(&self, error: LinuxBootError) -> OptionsError {
        match error {
            LinuxBootError::InitrdTooLarge { .. } => OptionsError::MemTooSmallFor {
                mib: self.mem_mib,
                need: None,
                error,
            },
            error => OptionsError::Initrd {
                path: self.initrd.clone().unwrap_or_default(),
                error,
            },
        }
    }
}

/// Opens `--disk`'s file (read-only with `,ro`) and returns it with its size, refusing what
/// is not a disk: anything but a regular file or a block device, an empty file, and a size
/// that is not whole sectors.
pub fn open_disk(disk: &DiskArg) -> Result<(File, u64), OptionsError> {
    let path = &disk.path;
    let open_error = |source| OptionsError::DiskOpen {
        path: path.clone(),
        source,
    };
    let mut file = File::options()
        .read(true)
        .write(!disk.read_only)
        .open(path)
        .map_err(open_error)?;
    let kind = file.metadata().map_err(open_error)?.file_type();
    if !kind.is_file() && !kind.is_block_device() {
        return Err(OptionsError::DiskKind {
            path: path.clone(),
            kind: linux::file_kind(&kind),
        });
    }
    // A block device's metadata says 0 bytes; its end says its size.
    let size = file.seek(SeekFrom::End(0)).map_err(open_error)?;
    if size == 0 {
        return Err(OptionsError::DiskEmpty { path: path.clone() });
    }
    if size % SECTOR_SIZE != 0 {
        return Err(OptionsError::DiskPartialSector {
            path: path.clone(),
            size,
        });
    }
    Ok((file, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_owned).collect()
    }

    fn refused(line: &str) -> String {
        parse(args(line)).unwrap_err().to_string()
    }

    #[test]
    fn the_balloon_flags() {
        let options = parse(args("--kernel k")).unwrap();
        assert!(!options.balloon && options.balloon_reporting && !options.mergeable);
        assert_eq!(options.balloon_control, None);
        // Each --balloon- flag adds the balloon.
        let options = parse(args("--kernel k --balloon-control /tmp/target")).unwrap();
        assert!(options.balloon && options.balloon_reporting);
        assert_eq!(options.balloon_control, Some(PathBuf::from("/tmp/target")));
        let options = parse(args("--kernel k --balloon-no-reporting --mergeable")).unwrap();
        assert!(options.balloon && !options.balloon_reporting && options.mergeable);
        assert!(refused("--kernel k --balloon-control").contains("--balloon-control needs a value"));
    }

    #[test]
    fn the_defaults_and_every_flag() {
        let options = parse(args("--kernel k")).unwrap();
        assert_eq!(options.cmdline, DEFAULT_CMDLINE);
        assert!(options.cmdline.contains("earlyprintk=serial,ttyS0"));
        assert_eq!((options.mem_mib, options.vcpus), (256, 1));
        let options = parse(args(
            "--kernel k --initrd i --cmdline quiet --mem 16 --mem-overcommit --vcpus 2 \
             --disk d.img,ro --balloon --exit-stats --map-kernel --split-rings --seccomp --pci",
        ))
        .unwrap();
        assert!(options.pci);
        assert_eq!(options.kernel, PathBuf::from("k"));
        assert_eq!(options.initrd, Some(PathBuf::from("i")));
        assert_eq!(options.cmdline, "quiet");
        assert_eq!((options.mem_mib, options.ram_size()), (16, 16 << 20));
        assert!(options.mem_overcommit && options.exit_stats && options.map_kernel);
        assert!(options.seccomp && options.balloon);
        assert_eq!(
            options.disk,
            Some(DiskArg {
                path: "d.img".into(),
                read_only: true
            })
        );
    }

    #[test]
    fn migration_takes_an_address_and_refuses_what_snapshots_miss() {
        use crate::migrate::Address;
        let options = parse(args("--kernel k --migrate-to 10.0.0.2:4444 --net tap")).unwrap();
        assert_eq!(
            options.migrate_to,
            Some(Address::Tcp("10.0.0.2:4444".into()))
        );
        // An incoming guest needs no kernel; a path is a Unix socket.
        let options = parse(args("--incoming /run/mig.sock --vcpus 2")).unwrap();
        assert_eq!(
            options.incoming,
            Some(Address::Unix(PathBuf::from("/run/mig.sock")))
        );
        assert!(refused("--incoming /s --restore /r")
            .starts_with("--incoming cannot be combined with --restore"));
        assert!(refused("--kernel k --migrate-to h:1 --pci")
            .starts_with("--migrate-to cannot be combined with --pci"));
        assert!(refused("--incoming h:1 --balloon")
            .starts_with("--incoming cannot be combined with --balloon"));
        assert!(refused("--kernel k --migrate-to h:1 --net tap,vhost")
            .starts_with("--migrate-to cannot be combined with --net MODE,vhost"));
    }

    #[test]
    fn save_and_restore_take_a_directory_and_refuse_what_snapshots_miss() {
        let options = parse(args("--kernel k --save /s")).unwrap();
        assert_eq!(options.save, Some(PathBuf::from("/s")));
        // A restore needs no kernel: the guest's memory holds it.
        let options = parse(args("--restore /s --vcpus 2")).unwrap();
        assert_eq!(options.restore, Some(PathBuf::from("/s")));
        assert_eq!(options.kernel, PathBuf::new());
        assert!(refused("--vcpus 2").contains("--kernel is required"));
        assert_eq!(
            refused("--restore /s --balloon"),
            "--restore cannot be combined with --balloon: the balloon's discards are not \
             snapshot-aware yet"
        );
        assert!(refused("--kernel k --save /s --net tap,vhost")
            .starts_with("--save cannot be combined with --net MODE,vhost"));
        assert!(refused("--kernel k --save /s --pci")
            .starts_with("--save cannot be combined with --pci"));
        assert!(refused("--restore /s --split-irqchip")
            .starts_with("--restore cannot be combined with --split-irqchip"));
        assert!(parse(args("--kernel k --save /s --net tap")).is_ok());
    }

    #[test]
    fn net_datapath_follows_the_last_comma() {
        let options = parse(args("--kernel k --net isolated:vmkiso0")).unwrap();
        assert_eq!(options.datapath, Datapath::Userspace);
        let options = parse(args("--kernel k --net isolated:vmkiso0,vhost")).unwrap();
        assert_eq!(options.datapath, Datapath::Vhost);
        assert_eq!(options.net, Some("isolated:vmkiso0".parse().unwrap()));
        let options = parse(args("--kernel k --net tap,userspace")).unwrap();
        assert_eq!(
            (options.net, options.datapath),
            (Some(TapMode::Alone), Datapath::Userspace)
        );
        let text = refused("--kernel k --net tap,kernel");
        assert!(text.contains("--net") && text.contains("vhost"), "{text}");
        assert!(text.contains("\"tap,kernel\""), "{text}");
        let text = refused("--kernel k --net nowhere,vhost");
        assert!(text.contains("a network mode"), "{text}");
    }

    #[test]
    fn split_irqchip_is_a_flag() {
        assert!(
            parse(args("--kernel k --split-irqchip"))
                .unwrap()
                .split_irqchip
        );
        assert!(!parse(args("--kernel k")).unwrap().split_irqchip);
    }

    #[test]
    fn s3_wake_after_takes_milliseconds_within_its_limit() {
        let options = parse(args("--kernel k --s3-wake-after 1500")).unwrap();
        assert_eq!(
            options.s3_wake_after,
            Some(std::time::Duration::from_millis(1500))
        );
        assert_eq!(parse(args("--kernel k")).unwrap().s3_wake_after, None);
        for bad in ["0", "600001", "soon", "-1"] {
            let text = refused(&format!("--kernel k --s3-wake-after {bad}"));
            assert_eq!(
                text,
                format!("--s3-wake-after takes milliseconds, from 1 to 600000, not \"{bad}\"")
            );
        }
    }

    #[test]
    fn disk_options_follow_the_last_comma() {
        let disk = |text: &str| parse_disk(text.to_owned());
        assert!(!disk("a.img").read_only);
        assert!(!disk("a.img,rw").read_only);
        assert_eq!(disk("a,b.img,ro").path, PathBuf::from("a,b.img"));
        assert_eq!(disk("a.img,readonly").path, PathBuf::from("a.img,readonly"));
    }

    #[test]
    fn mem_below_the_minimum_or_not_a_number_is_refused() {
        assert_eq!(
            refused("--kernel k --mem 0"),
            "--mem 0: booting Linux needs at least 16 MiB"
        );
        assert_eq!(
            refused("--kernel k --mem 1"),
            "--mem 1: booting Linux needs at least 16 MiB"
        );
        let max = (usize::MAX as u64) >> 20;
        assert_eq!(
            refused("--kernel k --mem lots"),
            format!("--mem takes a size in MiB (16 to {max}), not \"lots\"")
        );
        assert_eq!(
            refused(&format!("--kernel k --mem {}", max + 1)),
            format!(
                "--mem takes a size in MiB (16 to {max}), not \"{}\"",
                max + 1
            )
        );
    }

    #[test]
    fn mem_above_the_hosts_ram_needs_overcommit() {
        let options = parse(args("--kernel k --mem 1000000")).unwrap();
        let host = 23 << 30;
        assert_eq!(
            options.check_host_memory(Ok(host)).unwrap_err().to_string(),
            "--mem 1000000 MiB is more than this host's RAM (23552 MiB, MemTotal in \
             /proc/meminfo); add --mem-overcommit to start anyway"
        );
        let unknown = io::Error::new(io::ErrorKind::NotFound, "gone");
        assert!(matches!(
            options.check_host_memory(Err(unknown)),
            Err(OptionsError::HostMemory(_))
        ));
        let options = parse(args("--kernel k --mem 1000000 --mem-overcommit")).unwrap();
        options.check_host_memory(Ok(host)).unwrap();
        let options = parse(args("--kernel k --mem 23552")).unwrap();
        options.check_host_memory(Ok(host)).unwrap();
    }

    #[test]
    fn this_hosts_ram_is_read() {
        let total = host_mem_total().unwrap();
        assert!(total > 0);
    }

    #[test]
    fn a_cmdline_over_capacity_or_with_a_control_character_is_refused() {
        let long = "x".repeat(CMDLINE_CAPACITY);
        let err = parse(["--kernel", "k", "--cmdline", &long].map(str::to_owned)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--cmdline is 4096 bytes; boot_linux takes at most 4095"
        );
        let fits = "x".repeat(CMDLINE_CAPACITY - 1);
        parse(["--kernel", "k", "--cmdline", &fits].map(str::to_owned)).unwrap();
        let err = parse(["--kernel", "k", "--cmdline", "quiet\nroot=/dev/vda"].map(str::to_owned))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--cmdline has '\\n' (U+000A) at byte 5; a kernel command line takes printable \
             ASCII only (' ' to '~')"
        );
        let err = parse(["--kernel", "k", "--cmdline", "café"].map(str::to_owned)).unwrap_err();
        assert!(matches!(err, OptionsError::CmdlineChar { ch: 'é', at: 3 }));
    }

    #[test]
    fn a_cmdline_longer_than_the_kernel_takes_is_refused() {
        let long = "x".repeat(2048);
        let options = parse(["--kernel", "k", "--cmdline", &long].map(str::to_owned)).unwrap();
        assert_eq!(
            options
                .check_cmdline_for_kernel(Some(2047))
                .unwrap_err()
                .to_string(),
            "--cmdline is 2048 bytes; this kernel (cmdline_size in its setup header) takes at \
             most 2047"
        );
        options.check_cmdline_for_kernel(Some(2048)).unwrap();
        options.check_cmdline_for_kernel(None).unwrap();
    }

    #[test]
    fn usage_mistakes_name_the_flag() {
        assert!(refused("--kernel").starts_with("--kernel needs a value; usage:"));
        assert!(refused("--mem 64").starts_with("--kernel is required; usage:"));
        assert!(refused("--kernel k --bogus").starts_with("unexpected argument \"--bogus\""));
        assert_eq!(
            refused("--kernel k --vcpus 0"),
            format!(
                "--vcpus takes a number from 1 to {}, not \"0\"",
                linux::mptable::MAX_VCPUS
            )
        );
    }

    #[test]
    fn load_errors_name_mem_when_the_kernel_does_not_fit() {
        let options = parse(args("--kernel /k --initrd /i --mem 20")).unwrap();
        let err = options.kernel_error(LinuxBootError::KernelDoesNotFit {
            start: 0x10_0000,
            end: 0x437_8000,
            detail: "its image".into(),
            ram_end: 0x140_0000,
        });
        assert_eq!(
            err.to_string(),
            "--mem 20 MiB is too small: the kernel does not fit in guest RAM: it needs \
             0x100000..0x4378000 (its image), but the RAM there ends at 0x1400000; this needs \
             --mem 68 or more"
        );
        let err = options.initrd_error(LinuxBootError::InitrdTooLarge { size: 9, room: 8 });
        assert!(err
            .to_string()
            .starts_with("--mem 20 MiB is too small: the initrd (9 bytes)"));
        let err = options.initrd_error(LinuxBootError::InitrdEmpty);
        assert_eq!(
            err.to_string(),
            "--initrd /i: the initrd is empty (0 bytes)"
        );
        let err = options.kernel_error(LinuxBootError::InitrdEmpty);
        assert!(err.to_string().starts_with("--kernel /k: "));
    }

    /// A file of `len` bytes in the temporary directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str, len: usize) -> Self {
            let path =
                std::env::temp_dir().join(format!("boot_linux-test-{}-{name}", std::process::id()));
            std::fs::write(&path, vec![0; len]).unwrap();
            Scratch(path)
        }

        fn disk(&self, read_only: bool) -> DiskArg {
            DiskArg {
                path: self.0.clone(),
                read_only,
            }
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn a_disk_must_be_whole_sectors_of_a_file_or_block_device() {
        let empty = Scratch::new("empty", 0);
        assert_eq!(
            open_disk(&empty.disk(false)).unwrap_err().to_string(),
            format!(
                "--disk {}: it is empty (0 bytes); a disk holds at least one 512-byte sector",
                empty.0.display()
            )
        );
        let null = DiskArg {
            path: "/dev/null".into(),
            read_only: true,
        };
        assert_eq!(
            open_disk(&null).unwrap_err().to_string(),
            "--disk /dev/null: it is a character device; a disk is a regular file or a block \
             device"
        );
        let dir = DiskArg {
            path: std::env::temp_dir(),
            read_only: true,
        };
        assert!(matches!(
            open_disk(&dir),
            Err(OptionsError::DiskKind {
                kind: "a directory",
                ..
            })
        ));
        let partial = Scratch::new("partial", 1000);
        assert_eq!(
            open_disk(&partial.disk(true)).unwrap_err().to_string(),
            format!(
                "--disk {}: its size, 1000 bytes, is not a multiple of the 512-byte sector, \
                 so its last 488 bytes would be out of the guest's reach; pad it (truncate -s \
                 %512 FILE)",
                partial.0.display()
            )
        );
        let missing = DiskArg {
            path: "/nonexistent/disk.img".into(),
            read_only: false,
        };
        assert!(vmkit::ErrorChain(&open_disk(&missing).unwrap_err())
            .to_string()
            .starts_with("--disk /nonexistent/disk.img: cannot open it: "));
        let good = Scratch::new("good", 4096);
        let (_, size) = open_disk(&good.disk(true)).unwrap();
        assert_eq!(size, 4096);
    }
}
