//! Seccomp filters for the threads of a VMM built on vmkit.
//!
//! A hostile guest that takes over a device emulation or an exit handler takes over the
//! thread it runs on. A seccomp filter bounds what that thread can then ask of the host
//! kernel: each kind of thread a vmkit VMM runs (vCPU threads, virtio device workers, the
//! main thread once the VM is set up) gets an allow-list of the system calls it makes, down to
//! the ioctl numbers and, where it helps, argument values.
//!
//! - [`Rules`] is such a list, as data; [`Rules::base`] is what every thread of a Rust
//!   process needs, and each thread kind adds its own: vmkit's `vmkit::seccomp` (vCPU threads,
//!   per backend), `vmkit_machine::worker::blk_seccomp_rules` (`QueueWorker`),
//!   `vmkit_net::worker::seccomp_rules` (`NetWorker`).
//! - [`Rules::compile`] turns it into a [`Filter`] (a BPF program, built with rust-vmm's
//!   `seccompiler`), once, before the threads start.
//! - [`Filter::install`] confines the calling thread, and only it; a filter cannot be lifted.
//!
//! # Violations
//!
//! A call that the filter does not allow traps (`SECCOMP_RET_TRAP`): the kernel raises
//! `SIGSYS` in the thread, and the handler [`Filter::install`] sets up writes one line to
//! stderr, e.g.
//!
//! ```text
//! vmkit-seccomp: thread vcpu0 made a forbidden system call: execve (59); the process ends
//! ```
//!
//! (with the request number for an `ioctl`), then ends the process with `SIGSYS`, as
//! `SECCOMP_RET_KILL_PROCESS` would. A trap rather than an outright kill, because the line
//! is what tells the VMM's operator which thread and which call, and thus which allow-list
//! to extend; the process still dies, so a confined thread never goes on after a forbidden
//! call. A VMM that installs its own `SIGSYS` handler afterwards replaces this report (the
//! process then does whatever that handler does); without any handler, `SIGSYS` kills the
//! process silently.
//!
//! # Panics on confined threads
//!
//! Printing a panic's backtrace (`RUST_BACKTRACE=1`) opens the executable to symbolize it,
//! which no filter here allows. So the first [`Filter::install`] also wraps the process's
//! panic hook: on a confined thread a panic prints its message and location only, and then
//! unwinds as usual (the vmkit runner catches a panicking exit handler and stops the VM); on
//! every other thread the previous hook runs unchanged.
//!
//! Only x86-64's system call numbers are listed by the thread kinds' rules.
//!
//! ```no_run
//! let mut rules = vmkit_seccomp::Rules::base();
//! rules.allow(libc::SYS_pread64);
//! let filter = rules.compile()?;
//! std::thread::spawn(move || {
//!     filter.install()?;
//!     // From here on, this thread may only make the calls in `rules`.
//!     Ok::<(), vmkit_seccomp::SeccompError>(())
//! });
//! # Ok::<(), vmkit_seccomp::SeccompError>(())
//! ```

mod names;
mod report;
mod rules;
mod spawn;

use std::sync::Arc;

pub use rules::Rules;
use seccompiler::BpfProgram;
pub use spawn::{spawn, SpawnError};

/// The errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeccompError {
    /// The rules could not be compiled into a BPF program (e.g. too many for one program, or
    /// an architecture seccompiler does not know).
    #[error("cannot compile the seccomp rules")]
    Compile(#[source] seccompiler::Error),
    /// The `SIGSYS` handler that reports violations could not be installed.
    #[error("cannot install the SIGSYS handler that reports seccomp violations")]
    Handler(#[source] std::io::Error),
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter on thread {thread:?}")]
    Install {
        /// The thread's name.
        thread: String,
        /// seccompiler's error (it wraps the system's).
        #[source]
        source: seccompiler::Error,
    },
}

/// Whether the calling thread has installed a filter with [`Filter::install`].
pub fn is_confined() -> bool {
    report::is_confined()
}

/// A compiled filter: cheap to clone, installed by each thread that it confines.
#[derive(Clone)]
pub struct Filter {
    program: Arc<BpfProgram>,
    syscalls: usize,
    ioctls: usize,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("instructions", &self.program.len())
            .field("syscalls", &self.syscalls)
            .field("ioctls", &self.ioctls)
            .finish()
    }
}

impl Filter {
    fn new(program: BpfProgram, syscalls: usize, ioctls: usize) -> Filter {
        Filter {
            program: Arc::new(program),
            syscalls,
            ioctls,
        }
    }

    /// Confines the calling thread: from now on it may only make the allowed calls, and a
    /// forbidden one ends the process (see the [crate docs](crate)). Sets `no_new_privs` on
    /// the thread (the kernel requires it of an unprivileged caller), and installs the
    /// reporting `SIGSYS` handler for the process the first time, and wraps the panic hook
    /// so that a panic on a confined thread prints no backtrace (see the [crate docs](crate)).
    pub fn install(&self) -> Result<(), SeccompError> {
        report::install_handler().map_err(SeccompError::Handler)?;
        report::install_panic_hook();
        report::record_thread_name();
        seccompiler::apply_filter(&self.program).map_err(|source| SeccompError::Install {
            thread: std::thread::current()
                .name()
                .unwrap_or("unnamed")
                .to_owned(),
            source,
        })
    }

    /// How many system calls the filter allows.
    pub fn syscall_count(&self) -> usize {
        self.syscalls
    }

    /// How many ioctl request numbers the filter allows.
    pub fn ioctl_count(&self) -> usize {
        self.ioctls
    }

    /// The BPF program's length, in instructions (the kernel takes up to 4096).
    pub fn instructions(&self) -> usize {
        self.program.len()
    }
}

/// `madvise` advice a Rust thread gives: the allocator and thread exit return memory.
const MADVISE_ADVICE: [u64; 2] = [libc::MADV_DONTNEED as u64, libc::MADV_FREE as u64];

/// The futex operations of std's locks, channels and thread joins, and glibc's (the
/// operation without `FUTEX_PRIVATE_FLAG` and `FUTEX_CLOCK_REALTIME`).
const FUTEX_OPS: [u64; 6] = [
    libc::FUTEX_WAIT as u64,
    libc::FUTEX_WAKE as u64,
    libc::FUTEX_CMP_REQUEUE as u64,
    libc::FUTEX_WAKE_OP as u64,
    libc::FUTEX_WAIT_BITSET as u64,
    libc::FUTEX_WAKE_BITSET as u64,
];

/// The bits of a futex operation that name it.
const FUTEX_CMD_MASK: u64 = 0x7f;

impl Rules {
    /// What every thread of a Rust VMM needs, and nothing that reaches outside the process:
    /// memory (`mmap` and `mprotect` never executable, `madvise` to give memory back),
    /// futexes (locks, channels, joins), clocks and sleeping, `write`/`writev` (log lines,
    /// the serial console, eventfds), `close`, signal return and masks, the thread's and
    /// process's ids, `getcwd` (a panic's message), `getrandom` (std's hash maps), ending the thread or process, and
    /// `tgkill` with `SIGABRT` only (an abort on panic), `fcntl` with `F_GETFD` only (std's
    /// debug checks of descriptors). No `open`, no `socket`, no `exec`,
    /// no `fork`/`clone`, no `ioctl`.
    pub fn base() -> Rules {
        let mut rules = Rules::new();
        rules.allow_all(&[
            libc::SYS_brk,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_close,
            libc::SYS_write,
            libc::SYS_writev,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            libc::SYS_restart_syscall,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_sched_yield,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_getrandom,
            // std's panic message shortens the source path against the working directory.
            libc::SYS_getcwd,
        ]);
        #[cfg(target_arch = "x86_64")]
        rules.allow(libc::SYS_gettimeofday);
        let exec = libc::PROT_EXEC as u64;
        rules
            .allow_masked(libc::SYS_mmap, 2, exec, 0)
            .allow_masked(libc::SYS_mprotect, 2, exec, 0)
            .allow_args(libc::SYS_madvise, 2, &MADVISE_ADVICE)
            .allow_args(libc::SYS_tgkill, 2, &[libc::SIGABRT as u64])
            // std's debug builds check that a descriptor is open before using it.
            .allow_args(libc::SYS_fcntl, 1, &[libc::F_GETFD as u64]);
        for op in FUTEX_OPS {
            rules.allow_masked(libc::SYS_futex, 1, FUTEX_CMD_MASK, op);
        }
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_allows_memory_and_locks_but_not_exec_or_files() {
        let base = Rules::base();
        for call in [
            libc::SYS_mmap,
            libc::SYS_futex,
            libc::SYS_write,
            libc::SYS_exit,
        ] {
            assert!(base.allows(call), "{call}");
        }
        for call in [
            libc::SYS_execve,
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_ioctl,
        ] {
            assert!(!base.allows(call), "{call}");
        }
        assert_eq!(base.ioctl_count(), 0);
    }

    #[test]
    fn ioctls_are_counted_and_merged_once() {
        let mut a = Rules::new();
        a.allow_ioctls(&[1, 2]);
        let mut b = Rules::new();
        b.allow_ioctls(&[2, 3]).allow(libc::SYS_read);
        a.extend(&b);
        assert_eq!(a.ioctl_count(), 3);
        assert_eq!(a.syscall_count(), 2);
        assert!(a.allows_ioctl(3));
        assert!(!a.allows_ioctl(4));
    }

    #[test]
    fn unconditional_wins_over_conditions() {
        let mut rules = Rules::new();
        rules
            .allow_args(libc::SYS_fcntl, 1, &[1])
            .allow(libc::SYS_fcntl);
        rules.allow_args(libc::SYS_fcntl, 1, &[2]);
        let mut expected = Rules::new();
        expected.allow(libc::SYS_fcntl);
        assert_eq!(rules, expected);
    }

    #[test]
    fn a_list_too_long_for_one_program_is_refused() {
        let mut rules = Rules::base();
        let requests: Vec<u64> = (0..5000).collect();
        rules.allow_ioctls(&requests);
        let err = rules.compile().unwrap_err();
        assert!(matches!(err, SeccompError::Compile(_)), "{err:?}");
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("4096"), "{source}");
    }

    #[test]
    fn compiles_and_counts() {
        let mut rules = Rules::base();
        rules.allow_ioctls(&[0xae80, 0x8090_ae81]);
        let filter = rules.compile().unwrap();
        assert_eq!(filter.syscall_count(), rules.syscall_count());
        assert_eq!(filter.ioctl_count(), 2);
        assert!(filter.instructions() > rules.syscall_count());
    }

    /// Runs in a thread of its own: a filter cannot be lifted.
    #[test]
    fn an_allowed_thread_runs_and_a_denied_call_is_not_made_here() {
        let mut rules = Rules::base();
        rules.allow(libc::SYS_getppid);
        let filter = rules.compile().unwrap();
        let ppid = std::thread::Builder::new()
            .name("confined".into())
            .spawn(move || {
                filter.install().unwrap();
                // SAFETY: getppid has no arguments and cannot fail.
                unsafe { libc::getppid() }
            })
            .unwrap()
            .join()
            .unwrap();
        // SAFETY: as above.
        assert_eq!(ppid, unsafe { libc::getppid() });
    }

    /// In a child process (this test binary, run again for this test alone): a thread under
    /// the base filter opens a socket, and the process dies of SIGSYS after one line.
    #[test]
    fn a_forbidden_call_ends_the_process_with_one_line() {
        use std::os::unix::process::ExitStatusExt;
        const CHILD: &str = "VMKIT_SECCOMP_TEST_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let filter = Rules::base().compile().unwrap();
            std::thread::Builder::new()
                .name("confined".into())
                .spawn(move || {
                    filter.install().unwrap();
                    // SAFETY: socket takes plain integers.
                    unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                    unreachable!("the socket call returned");
                })
                .unwrap()
                .join()
                .unwrap();
            return;
        }
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::a_forbidden_call_ends_the_process_with_one_line",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.signal(), Some(libc::SIGSYS), "{stderr}");
        let expected = format!(
            "vmkit-seccomp: thread confined made a forbidden system call: socket ({}); the process ends",
            libc::SYS_socket
        );
        assert!(stderr.lines().any(|line| line == expected), "{stderr}");
    }
}
