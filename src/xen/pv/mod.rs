//! Linux (or any kernel with Xen's ELF notes) as a 64-bit PV domain: libxenguest's domain
//! builder loads it, vmkit serves its console ring, and dom0's xenstored serves its
//! xenstore, with the nodes a PV kernel reads at boot written as the toolstack writes
//! them. See [`Xen::boot_pv_linux`].
//!
//! The domain runs on its own once started: there are no exits (a PV guest has no
//! emulated devices; it talks to Xen by hypercall and to dom0 through rings), so the
//! caller serves the console and watches for the shutdown
//! ([`PvDomain::state`]). Dropping the [`PvDomain`] destroys the domain and takes back
//! everything this process set up for it (xenstore nodes, the xenstored connection,
//! the console mapping and event channel).

mod builder;
mod console;
mod ring;
mod store;

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::libs::XenCallError;
use super::sys::abi::{
    ArchDomainConfig, CreateDomain, SHUTDOWN_CRASH, SHUTDOWN_POWEROFF, SHUTDOWN_REBOOT,
    SHUTDOWN_SOFT_RESET, SHUTDOWN_SUSPEND, SHUTDOWN_WATCHDOG, XEN_DOMCTL_GRANT_VERSION_1,
    XEN_DOMINF_DYING, XEN_DOMINF_SHUTDOWN, XEN_DOMINF_SHUTDOWNMASK, XEN_DOMINF_SHUTDOWNSHIFT,
    XEN_SYSCTL_PHYSCAP_PV,
};
use super::sys::abi_pv::{XsPermissions, XS_PERM_NONE, XS_PERM_READ};
use super::sys::ffi_pv;
use super::{Handles, Xen};

pub use console::PvConsole;
pub use ring::RingError;
pub use store::StoreError;

/// The largest kernel image accepted (Debian's uncompressed `vmlinux` is ~66 MB).
pub const PV_MAX_KERNEL_BYTES: u64 = 512 << 20;
/// The largest initramfs accepted (it must also be smaller than the guest's memory).
pub const PV_MAX_INITRD_BYTES: u64 = 1 << 30;
/// The longest command line (`MAX_GUEST_CMDLINE` of `start_info`, less its NUL).
pub const PV_MAX_CMDLINE_BYTES: usize = 1023;
/// The least memory a PV Linux guest is given, in MiB.
pub const PV_MIN_MEM_MIB: u32 = 32;
/// The most memory, in MiB (1 TiB; Xen refuses what it does not have).
pub const PV_MAX_MEM_MIB: u32 = 1 << 20;
/// The most vCPUs (Xen's limit for a PV domain's `start_info` is higher; vmkit's xenstore
/// nodes and tests go this far).
pub const PV_MAX_VCPUS: u32 = 64;

/// Memory Xen may allocate for the domain beyond its RAM, in KiB (as libxl allows).
const MAXMEM_SLACK_KB: u64 = 1024;
/// Event channel ports the domain may use.
const MAX_EVTCHN_PORT: u32 = 1023;
/// How often a xenstore transaction is retried when another writer interferes.
const STORE_RETRIES: u32 = 8;

/// Why a PV domain could not be built or served.
#[derive(Debug, thiserror::Error)]
pub enum PvError {
    /// A file (the kernel or initramfs) cannot be read.
    #[error("cannot read the {what} {path}")]
    File {
        /// `"kernel"` or `"initramfs"`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file is empty or too large.
    #[error("the {what} {path} is {size} bytes; it must be 1 to {limit} bytes")]
    FileSize {
        /// `"kernel"` or `"initramfs"`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its size (at least this many bytes, if it grew while read).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A setting is out of range.
    #[error("invalid PV domain setting {field}: {reason}")]
    Config {
        /// The setting ([`PvLinuxConfig`]'s field).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// This Xen cannot run PV guests.
    #[error("this Xen runs no PV guests (its physinfo lacks pv)")]
    NoPv,
    /// A call into Xen's libraries failed.
    #[error(transparent)]
    Xen(XenCallError),
    /// A xenstore call failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The guest broke the console ring's protocol.
    #[error(transparent)]
    ConsoleRing(#[from] RingError),
}

impl From<XenCallError> for PvError {
    fn from(err: XenCallError) -> Self {
        PvError::Xen(err)
    }
}

/// What to boot: a kernel with Xen's ELF notes (an uncompressed `vmlinux`, or a bzImage
/// libxenguest can unpack), an optional initramfs, the command line, memory and vCPUs.
#[derive(Clone, Debug)]
pub struct PvLinuxConfig {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// The kernel command line (at most [`PV_MAX_CMDLINE_BYTES`], no NUL). Its console is
    /// `hvc0`: pass `console=hvc0` to see the kernel's messages.
    pub cmdline: String,
    /// Memory in MiB ([`PV_MIN_MEM_MIB`] to [`PV_MAX_MEM_MIB`]).
    pub mem_mib: u32,
    /// vCPUs (1 to [`PV_MAX_VCPUS`]), all online at boot.
    pub vcpus: u32,
    /// The domain's name in xenstore (1 to 64 of `A-Z a-z 0-9 . _ -`).
    pub name: String,
}

impl PvLinuxConfig {
    /// A configuration with 256 MiB, 1 vCPU, no initramfs, the command line
    /// `console=hvc0` and the name `vmkit-pv`.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        PvLinuxConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: "console=hvc0".to_string(),
            mem_mib: 256,
            vcpus: 1,
            name: "vmkit-pv".to_string(),
        }
    }

    /// Checks every setting but the files.
    fn validate(&self) -> Result<CString, PvError> {
        let bad = |field, reason: String| Err(PvError::Config { field, reason });
        if !(PV_MIN_MEM_MIB..=PV_MAX_MEM_MIB).contains(&self.mem_mib) {
            return bad(
                "mem_mib",
                format!(
                    "{} MiB is outside {PV_MIN_MEM_MIB}..={PV_MAX_MEM_MIB}",
                    self.mem_mib
                ),
            );
        }
        if !(1..=PV_MAX_VCPUS).contains(&self.vcpus) {
            return bad(
                "vcpus",
                format!("{} is outside 1..={PV_MAX_VCPUS}", self.vcpus),
            );
        }
        if self.cmdline.len() > PV_MAX_CMDLINE_BYTES {
            return bad(
                "cmdline",
                format!(
                    "{} bytes, more than {PV_MAX_CMDLINE_BYTES}",
                    self.cmdline.len()
                ),
            );
        }
        let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if self.name.is_empty() || self.name.len() > 64 || !self.name.chars().all(name_ok) {
            return bad(
                "name",
                format!(
                    "{:?}: 1 to 64 of A-Z a-z 0-9 . _ - wanted",
                    self.name.escape_debug().to_string()
                ),
            );
        }
        CString::new(self.cmdline.as_str())
            .or_else(|_| bad("cmdline", "it holds a NUL byte".into()))
    }
}

/// Reads a whole input file of at most `limit` bytes.
fn read_file(what: &'static str, path: &Path, limit: u64) -> Result<Vec<u8>, PvError> {
    let file_err = |source| PvError::File {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(file_err)?;
    let meta = file.metadata().map_err(file_err)?;
    if !meta.is_file() {
        return Err(file_err(io::Error::other("not a regular file")));
    }
    let too_big = |size| PvError::FileSize {
        what,
        path: path.to_path_buf(),
        size,
        limit,
    };
    if meta.len() == 0 || meta.len() > limit {
        return Err(too_big(meta.len()));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    // One byte past the limit tells a file that grew while read.
    file.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(file_err)?;
    if data.is_empty() || data.len() as u64 > limit {
        return Err(too_big(data.len() as u64));
    }
    Ok(data)
}

/// How a PV domain stopped (its `SCHEDOP_shutdown` reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvShutdown {
    /// `SHUTDOWN_poweroff`.
    Poweroff,
    /// `SHUTDOWN_reboot` (Linux's `reboot`).
    Reboot,
    /// `SHUTDOWN_suspend`.
    Suspend,
    /// `SHUTDOWN_crash` (Linux's panic).
    Crash,
    /// `SHUTDOWN_watchdog`.
    Watchdog,
    /// `SHUTDOWN_soft_reset`.
    SoftReset,
    /// A reason Xen 4.17 does not define.
    Other(u32),
}

impl PvShutdown {
    fn from_reason(reason: u32) -> Self {
        match reason {
            SHUTDOWN_POWEROFF => PvShutdown::Poweroff,
            SHUTDOWN_REBOOT => PvShutdown::Reboot,
            SHUTDOWN_SUSPEND => PvShutdown::Suspend,
            SHUTDOWN_CRASH => PvShutdown::Crash,
            SHUTDOWN_WATCHDOG => PvShutdown::Watchdog,
            SHUTDOWN_SOFT_RESET => PvShutdown::SoftReset,
            other => PvShutdown::Other(other),
        }
    }
}

/// Where a PV domain is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvState {
    /// Built and not started yet ([`PvDomain::start`]).
    Built,
    /// Running (or blocked, waiting for an event).
    Running,
    /// Shut down with this reason; its memory is still there until the drop.
    Shutdown(PvShutdown),
    /// Gone (destroyed by someone else, or dying).
    Gone,
}

/// A PV domain built by [`Xen::boot_pv_linux`]; destroyed on drop.
#[derive(Debug)]
pub struct PvDomain {
    handles: Arc<Handles>,
    domid: u32,
    store: store::Store,
    path: String,
    console: Option<PvConsole>,
    started: bool,
}

impl PvDomain {
    /// The domain's id.
    pub fn domid(&self) -> u32 {
        self.domid
    }

    /// Its xenstore directory (`/local/domain/<domid>`).
    pub fn xenstore_path(&self) -> &str {
        &self.path
    }

    /// Its console (`hvc0` in the guest).
    pub fn console(&mut self) -> Option<&mut PvConsole> {
        self.console.as_mut()
    }

    /// Starts the guest (unpauses the domain). Once only.
    pub fn start(&mut self) -> Result<(), PvError> {
        if !self.started {
            self.handles.xc.unpause(self.domid)?;
            self.started = true;
        }
        Ok(())
    }

    /// Where the domain is now.
    pub fn state(&self) -> Result<PvState, PvError> {
        let Some(info) = self.handles.xc.domain_info(self.domid)? else {
            return Ok(PvState::Gone);
        };
        if info.flags & XEN_DOMINF_SHUTDOWN != 0 {
            let reason = (info.flags >> XEN_DOMINF_SHUTDOWNSHIFT) & XEN_DOMINF_SHUTDOWNMASK;
            return Ok(PvState::Shutdown(PvShutdown::from_reason(reason)));
        }
        if info.flags & XEN_DOMINF_DYING != 0 {
            return Ok(PvState::Gone);
        }
        Ok(if self.started {
            PvState::Running
        } else {
            PvState::Built
        })
    }

    /// Reads a node of the domain's xenstore directory (`rel` below it, e.g.
    /// `control/feature-poweroff`), `None` if it does not exist.
    pub fn xenstore_read(&self, rel: &str) -> Result<Option<Vec<u8>>, PvError> {
        Ok(self.store.read(&format!("{}/{rel}", self.path))?)
    }
}

impl Drop for PvDomain {
    fn drop(&mut self) {
        // The console first: its mapping and event channel are this process's.
        self.console = None;
        let _ = self.store.remove(&self.path);
        let _ = self.store.release(self.domid);
        let _ = self.handles.xc.destroy(self.domid);
    }
}

/// Destroys a half-built domain.
struct Cleanup<'a> {
    handles: &'a Handles,
    domid: u32,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.handles.xc.destroy(self.domid);
    }
}

/// A port in domain `domid`, unbound, for dom0 to bind.
fn alloc_unbound(handles: &Handles, domid: u32) -> Result<u32, XenCallError> {
    // SAFETY: a live handle and plain values.
    let port = unsafe { ffi_pv::xc_evtchn_alloc_unbound(handles.xc.xch(), domid, 0) };
    u32::try_from(port).map_err(|_| XenCallError {
        op: "xc_evtchn_alloc_unbound",
        source: io::Error::last_os_error(),
    })
}

/// The nodes of `/local/domain/<domid>` a PV kernel reads, or writes, at boot.
struct Nodes<'a> {
    config: &'a PvLinuxConfig,
    domid: u32,
    console_mfn: u64,
    console_port: u32,
}

impl Nodes<'_> {
    /// (relative path, value, whether the guest may write it). Empty values are
    /// directories.
    fn list(&self) -> Vec<(String, String, bool)> {
        let mem_kb = u64::from(self.config.mem_mib) * 1024;
        let mut nodes = vec![
            (String::new(), String::new(), false),
            ("name".into(), self.config.name.clone(), false),
            ("domid".into(), self.domid.to_string(), false),
            ("memory/static-max".into(), mem_kb.to_string(), false),
            ("memory/target".into(), mem_kb.to_string(), false),
            // The primary console comes from start_info; these say who serves it, and
            // a type other than xenconsoled keeps xenconsoled off the ring.
            (
                "console/ring-ref".into(),
                self.console_mfn.to_string(),
                false,
            ),
            ("console/port".into(), self.console_port.to_string(), false),
            ("console/type".into(), "vmkit".into(), false),
            ("console/limit".into(), "1048576".into(), false),
            ("device".into(), String::new(), false),
            ("control".into(), String::new(), false),
        ];
        for i in 0..self.config.vcpus {
            nodes.push((format!("cpu/{i}/availability"), "online".into(), false));
        }
        // What the guest writes: its answers to shutdown requests and feature flags.
        for rw in [
            "control/shutdown",
            "control/sysrq",
            "control/feature-poweroff",
            "control/feature-reboot",
            "control/feature-suspend",
            "control/feature-s3",
            "control/feature-s4",
            "data",
            "drivers",
            "feature",
            "attr",
            "error",
        ] {
            nodes.push((rw.into(), String::new(), true));
        }
        nodes
    }
}

/// Writes the domain's nodes in one transaction.
fn write_nodes(store: &store::Store, path: &str, nodes: &Nodes<'_>) -> Result<(), StoreError> {
    let read_only = [
        XsPermissions {
            id: 0,
            perms: XS_PERM_NONE,
        },
        XsPermissions {
            id: nodes.domid,
            perms: XS_PERM_READ,
        },
    ];
    // Owned by the guest: it may write; dom0 may anyway.
    let guest_owned = [XsPermissions {
        id: nodes.domid,
        perms: XS_PERM_NONE,
    }];
    let list = nodes.list();
    let mut tries = 0;
    loop {
        let t = store.transaction()?;
        for (rel, value, writable) in &list {
            let node = if rel.is_empty() {
                path.to_string()
            } else {
                format!("{path}/{rel}")
            };
            if value.is_empty() {
                t.mkdir(&node)?;
            } else {
                t.write(&node, value)?;
            }
            let perms: &[XsPermissions] = if *writable { &guest_owned } else { &read_only };
            t.set_permissions(&node, perms)?;
        }
        // Parents created implicitly (cpu, memory, console) inherit the domain
        // directory's permissions.
        if t.commit()? {
            return Ok(());
        }
        tries += 1;
        if tries == STORE_RETRIES {
            return Err(StoreError {
                op: "xs_transaction_end",
                path: path.to_string(),
                source: io::Error::from_raw_os_error(libc::EAGAIN),
            });
        }
    }
}

impl Xen {
    /// Builds a 64-bit PV domain from `config` (paused; [`PvDomain::start`] runs it):
    /// checks the settings and reads the files (typed errors naming them), creates the
    /// domain, has libxenguest's domain builder load the kernel and initramfs, writes its
    /// xenstore nodes and introduces it to dom0's xenstored, and connects its console.
    pub fn boot_pv_linux(&self, config: &PvLinuxConfig) -> Result<PvDomain, PvError> {
        let cmdline = config.validate()?;
        if self.physcaps & XEN_SYSCTL_PHYSCAP_PV == 0 {
            return Err(PvError::NoPv);
        }
        // Xen would refuse it only midway through the build, with a vague errno.
        let free = self.handles.xc.physinfo()?.free_pages * 4096;
        if u64::from(config.mem_mib) << 20 > free {
            return Err(PvError::Config {
                field: "mem_mib",
                reason: format!(
                    "{} MiB is more than Xen's free memory ({} MiB)",
                    config.mem_mib,
                    free >> 20
                ),
            });
        }
        let kernel = read_file("kernel", &config.kernel, PV_MAX_KERNEL_BYTES)?;
        let initrd = match &config.initrd {
            Some(path) => {
                let limit = PV_MAX_INITRD_BYTES.min((u64::from(config.mem_mib) << 20) / 2);
                Some(read_file("initramfs", path, limit)?)
            }
            None => None,
        };
        let handles = &self.handles;
        let mut create = CreateDomain {
            flags: 0,
            max_vcpus: config.vcpus,
            max_evtchn_port: MAX_EVTCHN_PORT,
            max_grant_frames: -1,
            max_maptrack_frames: -1,
            grant_opts: XEN_DOMCTL_GRANT_VERSION_1,
            arch: ArchDomainConfig {
                emulation_flags: 0,
                misc_flags: 0,
            },
            ..CreateDomain::default()
        };
        create.handle[..5].copy_from_slice(b"vmkit");
        let domid = handles.xc.domain_create(&mut create)?;
        let path = format!("/local/domain/{domid}");
        let cleanup = Cleanup { handles, domid };
        let mem_kb = u64::from(config.mem_mib) * 1024;
        handles.xc.max_vcpus(domid, config.vcpus)?;
        handles.xc.set_max_mem_kb(domid, mem_kb + MAXMEM_SLACK_KB)?;
        // SAFETY: a live handle and plain values.
        if unsafe {
            ffi_pv::xc_domain_set_memmap_limit(handles.xc.xch(), domid, mem_kb as libc::c_ulong)
        } < 0
        {
            return Err(XenCallError {
                op: "xc_domain_set_memmap_limit",
                source: io::Error::last_os_error(),
            }
            .into());
        }
        let console_port = alloc_unbound(handles, domid)?;
        let store_port = alloc_unbound(handles, domid)?;
        let built = builder::build(
            &handles.xc,
            &builder::Inputs {
                domid,
                kernel: &kernel,
                initrd: initrd.as_deref(),
                cmdline: &cmdline,
                mem_mib: config.mem_mib,
                vcpus: config.vcpus,
                console_port,
                store_port,
            },
        )?;
        drop((kernel, initrd));
        let store = store::Store::open()?;
        let serve = || -> Result<PvConsole, PvError> {
            let nodes = Nodes {
                config,
                domid,
                console_mfn: built.console_mfn,
                console_port,
            };
            write_nodes(&store, &path, &nodes)?;
            store.introduce(domid, built.store_mfn, store_port)?;
            Ok(PvConsole::connect(
                &handles.fmem,
                domid,
                built.console_mfn,
                console_port,
            )?)
        };
        let console = match serve() {
            Ok(console) => console,
            Err(err) => {
                let _ = store.remove(&path);
                let _ = store.release(domid);
                return Err(err);
            }
        };
        std::mem::forget(cleanup);
        Ok(PvDomain {
            handles: Arc::clone(handles),
            domid,
            store,
            path,
            console: Some(console),
            started: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PvLinuxConfig {
        PvLinuxConfig::new("/nonexistent/vmlinux")
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let field = |c: PvLinuxConfig| match c.validate() {
            Err(PvError::Config { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(PvLinuxConfig {
                mem_mib: 16,
                ..config()
            }),
            "mem_mib"
        );
        assert_eq!(
            field(PvLinuxConfig {
                vcpus: 0,
                ..config()
            }),
            "vcpus"
        );
        assert_eq!(
            field(PvLinuxConfig {
                vcpus: PV_MAX_VCPUS + 1,
                ..config()
            }),
            "vcpus"
        );
        assert_eq!(
            field(PvLinuxConfig {
                cmdline: "x".repeat(PV_MAX_CMDLINE_BYTES + 1),
                ..config()
            }),
            "cmdline"
        );
        assert_eq!(
            field(PvLinuxConfig {
                cmdline: "a\0b".into(),
                ..config()
            }),
            "cmdline"
        );
        assert_eq!(
            field(PvLinuxConfig {
                name: "a/b".into(),
                ..config()
            }),
            "name"
        );
        assert_eq!(
            field(PvLinuxConfig {
                name: String::new(),
                ..config()
            }),
            "name"
        );
        assert!(config().validate().is_ok());
    }

    #[test]
    fn unreadable_empty_and_oversized_files_are_named() {
        let dir = std::env::temp_dir().join(format!("vmkit-pv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing");
        match read_file("kernel", &missing, 10) {
            Err(PvError::File {
                what: "kernel",
                path,
                ..
            }) => assert_eq!(path, missing),
            other => panic!("{other:?}"),
        }
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            read_file("initramfs", &empty, 10),
            Err(PvError::FileSize {
                size: 0,
                limit: 10,
                ..
            })
        ));
        let big = dir.join("big");
        std::fs::write(&big, [0u8; 11]).unwrap();
        let err = read_file("kernel", &big, 10).unwrap_err();
        assert!(matches!(err, PvError::FileSize { size: 11, .. }));
        assert!(err.to_string().contains(&*big.to_string_lossy()), "{err}");
        assert!(matches!(
            read_file("kernel", &dir, 10),
            Err(PvError::File { .. })
        ));
        std::fs::write(&big, [7u8; 10]).unwrap();
        assert_eq!(read_file("kernel", &big, 10).unwrap(), vec![7u8; 10]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_nodes_a_pv_kernel_reads_are_written() {
        let config = PvLinuxConfig {
            vcpus: 2,
            mem_mib: 256,
            name: "guest".into(),
            ..config()
        };
        let nodes = Nodes {
            config: &config,
            domid: 7,
            console_mfn: 0x1234,
            console_port: 3,
        }
        .list();
        let get = |rel: &str| {
            nodes
                .iter()
                .find(|n| n.0 == rel)
                .map(|n| (n.1.as_str(), n.2))
        };
        assert_eq!(get("name"), Some(("guest", false)));
        assert_eq!(get("domid"), Some(("7", false)));
        assert_eq!(get("memory/target"), Some(("262144", false)));
        assert_eq!(get("cpu/0/availability"), Some(("online", false)));
        assert_eq!(get("cpu/1/availability"), Some(("online", false)));
        assert_eq!(get("cpu/2/availability"), None);
        assert_eq!(get("console/ring-ref"), Some(("4660", false)));
        assert_eq!(get("console/port"), Some(("3", false)));
        assert_ne!(get("console/type"), Some(("xenconsoled", false)));
        assert_eq!(get("control/shutdown"), Some(("", true)));
        assert_eq!(get("data"), Some(("", true)));
    }

    #[test]
    fn shutdown_reasons_map_to_their_names() {
        assert_eq!(PvShutdown::from_reason(SHUTDOWN_REBOOT), PvShutdown::Reboot);
        assert_eq!(PvShutdown::from_reason(SHUTDOWN_CRASH), PvShutdown::Crash);
        assert_eq!(
            PvShutdown::from_reason(SHUTDOWN_POWEROFF),
            PvShutdown::Poweroff
        );
        assert_eq!(PvShutdown::from_reason(99), PvShutdown::Other(99));
    }
}
