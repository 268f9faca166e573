//! A thread's allow-list as data: [`Rules`].

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::{Filter, SeccompError};

/// When a system call is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Allow {
    /// With any arguments.
    Always,
    /// When one of these conditions holds.
    When(Vec<Condition>),
}

/// A condition on one argument of a system call (compared as 32 bits: every argument vmkit
/// restricts, ioctl requests included, is an `int` or fits one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Condition {
    arg: u8,
    /// Compare `arg & mask` with `value`.
    mask: u64,
    value: u64,
}

/// The system calls a thread may make: unconditionally, or only with given argument values.
///
/// Rules are data: built up (usually from [`Rules::base`]), merged with
/// [`extend`](Rules::extend), counted, and compiled once into a [`Filter`] that a thread
/// installs on itself. A system call allowed both unconditionally and with conditions is
/// allowed unconditionally.
///
/// ```
/// use vmkit_seccomp::Rules;
///
/// let mut rules = Rules::base();
/// rules.allow(libc::SYS_pread64).allow_ioctls(&[0xae80]);
/// assert!(rules.allows(libc::SYS_pread64));
/// assert!(!rules.allows(libc::SYS_execve));
/// assert_eq!(rules.ioctl_count(), 1);
/// let filter = rules.compile()?;
/// # let _ = filter;
/// # Ok::<(), vmkit_seccomp::SeccompError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    calls: BTreeMap<i64, Allow>,
}

impl Rules {
    /// No system call at all.
    pub fn new() -> Rules {
        Rules::default()
    }

    /// Allows `syscall` (a `libc::SYS_*` number) with any arguments.
    pub fn allow(&mut self, syscall: i64) -> &mut Rules {
        self.calls.insert(syscall, Allow::Always);
        self
    }

    /// Allows each of `syscalls` with any arguments.
    pub fn allow_all(&mut self, syscalls: &[i64]) -> &mut Rules {
        for &syscall in syscalls {
            self.allow(syscall);
        }
        self
    }

    /// Allows `syscall` when its argument `arg` (0-based) is one of `values`.
    pub fn allow_args(&mut self, syscall: i64, arg: u8, values: &[u64]) -> &mut Rules {
        for &value in values {
            self.add(
                syscall,
                Condition {
                    arg,
                    mask: u64::from(u32::MAX),
                    value,
                },
            );
        }
        self
    }

    /// Allows `syscall` when `arg & mask == value`.
    pub fn allow_masked(&mut self, syscall: i64, arg: u8, mask: u64, value: u64) -> &mut Rules {
        self.add(syscall, Condition { arg, mask, value });
        self
    }

    /// Allows `ioctl` with each of these request numbers, on any descriptor.
    pub fn allow_ioctls(&mut self, requests: &[u64]) -> &mut Rules {
        self.allow_args(libc::SYS_ioctl, 1, requests)
    }

    fn add(&mut self, syscall: i64, condition: Condition) {
        match self
            .calls
            .entry(syscall)
            .or_insert_with(|| Allow::When(Vec::new()))
        {
            Allow::Always => {}
            Allow::When(conditions) => {
                if !conditions.contains(&condition) {
                    conditions.push(condition);
                }
            }
        }
    }

    /// Adds everything `other` allows.
    pub fn extend(&mut self, other: &Rules) -> &mut Rules {
        for (&syscall, allow) in &other.calls {
            match allow {
                Allow::Always => {
                    self.allow(syscall);
                }
                Allow::When(conditions) => {
                    for &condition in conditions {
                        self.add(syscall, condition);
                    }
                }
            }
        }
        self
    }

    /// Whether `syscall` is allowed, with some arguments at least.
    pub fn allows(&self, syscall: i64) -> bool {
        self.calls.contains_key(&syscall)
    }

    /// Whether `ioctl` is allowed with request `request`.
    pub fn allows_ioctl(&self, request: u64) -> bool {
        match self.calls.get(&libc::SYS_ioctl) {
            None => false,
            Some(Allow::Always) => true,
            Some(Allow::When(conditions)) => conditions
                .iter()
                .any(|c| c.arg == 1 && (request & c.mask) == c.value),
        }
    }

    /// How many system calls are allowed (with any arguments or with some).
    pub fn syscall_count(&self) -> usize {
        self.calls.len()
    }

    /// How many ioctl request numbers are allowed (0 if ioctl is not allowed, or allowed
    /// with any request).
    pub fn ioctl_count(&self) -> usize {
        match self.calls.get(&libc::SYS_ioctl) {
            Some(Allow::When(conditions)) => conditions.iter().filter(|c| c.arg == 1).count(),
            _ => 0,
        }
    }

    /// Compiles the rules into a BPF program for this machine's architecture: an allowed
    /// call goes through, any other call traps (`SIGSYS`, see the [crate docs](crate)).
    pub fn compile(&self) -> Result<Filter, SeccompError> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|err| SeccompError::Compile(err.into()))?;
        let mut rules = BTreeMap::new();
        for (&syscall, allow) in &self.calls {
            let chain = match allow {
                Allow::Always => Vec::new(),
                Allow::When(conditions) => conditions
                    .iter()
                    .map(|c| {
                        let op = if c.mask == u64::from(u32::MAX) {
                            SeccompCmpOp::Eq
                        } else {
                            SeccompCmpOp::MaskedEq(c.mask)
                        };
                        SeccompCondition::new(c.arg, SeccompCmpArgLen::Dword, op, c.value)
                            .and_then(|condition| SeccompRule::new(vec![condition]))
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|err| SeccompError::Compile(err.into()))?,
            };
            rules.insert(syscall, chain);
        }
        let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)
            .map_err(|err| SeccompError::Compile(err.into()))?;
        let program =
            BpfProgram::try_from(filter).map_err(|err| SeccompError::Compile(err.into()))?;
        Ok(Filter::new(
            program,
            self.syscall_count(),
            self.ioctl_count(),
        ))
    }
}
