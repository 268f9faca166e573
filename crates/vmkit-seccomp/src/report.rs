//! The `SIGSYS` handler that reports a forbidden system call in one line and ends the process.
//!
//! A filter traps (`SECCOMP_RET_TRAP`) rather than kills outright so that the process can say
//! which thread made which call: a bare `SECCOMP_RET_KILL_PROCESS` leaves only "Bad system
//! call" and an audit record. The handler is installed with `SA_RESETHAND`, so by the time it
//! runs `SIGSYS` is back to its default action (kill, with a core dump); after writing its
//! line with `write(2)` it makes a system call that no allow-list has, whose trap then kills
//! the process with `SIGSYS`, as `SECCOMP_RET_KILL_PROCESS` would have. Everything it does is
//! async-signal-safe: no allocation, no lock, only `write` and a forbidden call.

use std::cell::Cell;
use std::io;
use std::sync::Once;

/// `si_code` of a `SIGSYS` raised by a seccomp trap (`SYS_SECCOMP`).
const SYS_SECCOMP: libc::c_int = 1;

/// No system call has this number, so no allow-list holds it: making it under a filter traps.
const NO_SUCH_CALL: libc::c_long = 1023;

/// The longest thread name Linux keeps (15 bytes and a NUL).
const NAME_MAX: usize = 16;

thread_local! {
    /// The name of this thread, recorded when it installed its filter (a `const` thread-local
    /// of plain bytes: reading it in a signal handler allocates nothing).
    static THREAD_NAME: Cell<([u8; NAME_MAX], usize)> = const { Cell::new(([0; NAME_MAX], 0)) };
}

/// Records the calling thread's name for the report.
pub(crate) fn record_thread_name() {
    let current = std::thread::current();
    let name = current.name().unwrap_or("unnamed").as_bytes();
    let len = name.len().min(NAME_MAX);
    let mut bytes = [0; NAME_MAX];
    bytes[..len].copy_from_slice(&name[..len]);
    THREAD_NAME.with(|cell| cell.set((bytes, len)));
}

/// Whether the calling thread has installed a filter of ours.
pub(crate) fn is_confined() -> bool {
    THREAD_NAME.with(|cell| cell.get().1 > 0)
}

/// Wraps the process's panic hook, once: a panic on a confined thread prints its message
/// and location without a backtrace, because symbolizing one opens the executable and
/// reads `/proc/self/maps`, which the filter forbids (with `RUST_BACKTRACE` set, the panic
/// would otherwise end the process on `openat` instead of reaching whoever catches it, such
/// as the runner). Other threads keep the hook as it was.
pub(crate) fn install_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if is_confined() {
                let name = std::thread::current()
                    .name()
                    .unwrap_or("unnamed")
                    .to_owned();
                eprintln!(
                    "thread '{name}' {info}\n(no backtrace: the thread is confined by seccomp)"
                );
            } else {
                previous(info);
            }
        }));
    });
}

/// Installs the handler once per process.
pub(crate) fn install_handler() -> io::Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: an all-zero sigaction is a valid starting point (empty mask, no flags).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = report as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
        // SAFETY: `action` is initialised and names a handler with the SA_SIGINFO signature.
        if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
            result = Err(io::Error::last_os_error());
        }
    });
    result
}

/// The `_sigsys` member of `siginfo_t` (after `si_signo`, `si_errno`, `si_code` and padding).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// A fixed buffer for the line: formatting allocates nothing.
struct Line {
    bytes: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, text: &[u8]) {
        for &byte in text {
            if let Some(slot) = self.bytes.get_mut(self.len) {
                *slot = byte;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, value: u64, radix: u64) {
        let mut digits = [0u8; 20];
        let mut n = value;
        let mut i = digits.len();
        loop {
            i -= 1;
            let digit = (n % radix) as u8;
            digits[i] = if digit < 10 {
                b'0' + digit
            } else {
                b'a' + digit - 10
            };
            n /= radix;
            if n == 0 || i == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

extern "C" fn report(_signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t, whose layout for SIGSYS is `SigsysInfo`.
    let sigsys = unsafe { &*info.cast::<SigsysInfo>() };
    if sigsys.code != SYS_SECCOMP {
        // Not a filter's trap (someone sent SIGSYS): die of it like the default action would.
        // SAFETY: exit_group takes any status and does not return.
        unsafe { libc::syscall(libc::SYS_exit_group, 128 + libc::SIGSYS) };
        return;
    }
    let mut line = Line {
        bytes: [0; 256],
        len: 0,
    };
    line.push(b"vmkit-seccomp: thread ");
    let (name, len) = THREAD_NAME.with(Cell::get);
    line.push(if len == 0 {
        b"(no filter of ours)"
    } else {
        &name[..len]
    });
    line.push(b" made a forbidden system call: ");
    let number = sigsys.syscall;
    match crate::names::syscall_name(i64::from(number)) {
        Some(name) => line.push(name.as_bytes()),
        None => line.push(b"number"),
    }
    line.push(b" (");
    line.push_number(u64::from(number.unsigned_abs()), 10);
    line.push(b")");
    if i64::from(number) == libc::SYS_ioctl {
        if let Some(request) = ioctl_request(context) {
            line.push(b" request 0x");
            line.push_number(request, 16);
        }
    }
    line.push(b"; the process ends\n");
    // SAFETY: writes `line.len` initialised bytes to stderr; write(2) is async-signal-safe.
    unsafe { libc::write(libc::STDERR_FILENO, line.bytes.as_ptr().cast(), line.len) };
    // SIGSYS is back to its default action (SA_RESETHAND): this call traps and kills the
    // process with SIGSYS. Without a filter it fails with ENOSYS, and the process exits.
    // SAFETY: a system call that does not exist has no effect but its error.
    unsafe { libc::syscall(NO_SUCH_CALL) };
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_exit_group, 128 + libc::SIGSYS) };
}

/// The ioctl request of the trapped call: its second argument, in `rsi`.
#[cfg(target_arch = "x86_64")]
fn ioctl_request(context: *mut libc::c_void) -> Option<u64> {
    if context.is_null() {
        return None;
    }
    // SAFETY: for an SA_SIGINFO handler the third argument is the interrupted ucontext_t.
    let context = unsafe { &*context.cast::<libc::ucontext_t>() };
    let rsi = context.uc_mcontext.gregs[libc::REG_RSI as usize];
    // The kernel reads the request as a 32-bit `unsigned int`.
    Some(u64::from(rsi as u32))
}

#[cfg(not(target_arch = "x86_64"))]
fn ioctl_request(_context: *mut libc::c_void) -> Option<u64> {
    None
}
