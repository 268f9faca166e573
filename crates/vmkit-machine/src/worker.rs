//! A device thread serving virtio queues on their notifications:
//! [`QueueWorker`].
//!
//! When a queue's `QueueNotify` write is an ioeventfd (see
//! [`VirtioMmioWiring::attach`](crate::VirtioMmioWiring::attach)), the
//! guest's notification signals an eventfd instead of exiting to a vCPU
//! thread, and someone must then process the queue. [`QueueWorker`] is
//! that someone for any device whose work is driven by its queues alone
//! (virtio-blk, the console's transmit queue, …): one thread waits on the
//! notification eventfds of one or more queues of one transport ([`Transport`]:
//! virtio-mmio's [`MmioTransport`](vmkit_virtio::mmio::MmioTransport) or virtio-pci's),
//! and for each that fired reads it and calls
//! [`MmioTransport::process_queue`](vmkit_virtio::mmio::MmioTransport::process_queue) for that queue. The transport
//! interrupts the guest through its interrupt eventfd (an irqfd, if wired
//! by `attach`).
//!
//! A device that also waits on a backend (a TAP, a socket) needs a worker
//! that polls the backend too, e.g. `vmkit_net::NetWorker`.
//!
//! # Stopping
//!
//! The thread also waits on an eventfd of its own, which
//! [`QueueWorker::stop`] (or dropping the worker) signals, so a stop is
//! prompt whatever the guest does. Every notification signalled before the
//! stop is served: the thread takes all the ready eventfds of a wait before
//! it looks at the stop. `stop` returns what the thread did
//! ([`WorkerStats`]).
//!
//! # Errors
//!
//! A failed queue pass does not stop the worker: it goes to the `on_error`
//! callback given to [`QueueWorker::start`] and is counted in the queue's
//! [`QueueStats::errors`]. A device's own failure is not one: the transport
//! records it, sets `DEVICE_NEEDS_RESET` and lets the pass succeed (see
//! `MmioTransport::take_error`), so a VMM that wants to know looks there. A
//! failed wait ends the thread: `on_error` sees it, and
//! [`QueueWorker::stop`] returns it.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use vmkit::{MemoryFlags, MemoryRegion, VmConfig};
//! use vmkit_bus::Bus;
//! use vmkit_machine::{GsiAllocator, MmioAllocator, QueueWorker, VirtioMmioWiring};
//! use vmkit_virtio::blk::{Block, BlockOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let vm = vmkit::open()?.create_vm(&VmConfig::default().irqchip(true))?;
//! vm.add_memory_region(MemoryRegion::anonymous(
//!     vm_memory::GuestAddress(0), 64 << 20, MemoryFlags::empty())?)?;
//! let mut bus = Bus::new();
//! let mut wiring = VirtioMmioWiring::new(
//!     Arc::new(vm.memory()),
//!     MmioAllocator::new(0xd000_0000, 0xd100_0000)?,
//!     GsiAllocator::new(5, 23)?,
//! );
//! let disk = std::fs::OpenOptions::new().read(true).write(true).open("disk.img")?;
//! // The request queue (0) notifies through an ioeventfd, served by the worker.
//! let mut blk = wiring.attach(vm.as_ref(), &mut bus, Block::new(disk, BlockOptions::default())?, &[0])?;
//! let notifiers = std::mem::take(&mut blk.notifiers);
//! let worker = QueueWorker::start(blk.transport.clone(), notifiers, |err| eprintln!("blk: {err}"))?;
//! // … run the vCPUs with the bus as their exit handler …
//! let stats = worker.stop()?;
//! println!("{} notifications of queue 0", stats.notifications(0));
//! # Ok(())
//! # }
//! ```

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use vmkit_seccomp::SpawnError;
use vmkit_virtio::mmio::MmioError;
use vmkit_virtio::Transport;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::virtio_mmio::QueueNotifier;

/// The name of the worker thread unless [`QueueWorker::start_named`] gives
/// another.
pub const THREAD_NAME: &str = "virtio-queues";

/// The epoll token of the stop eventfd; a notifier's token is its position
/// in the worker's list plus one.
const TOKEN_STOP: u64 = 0;

/// The errors of [`QueueWorker`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The worker was given no queue to serve.
    #[error("no queue to serve")]
    NoQueues,
    /// A queue to serve is not one of the device's.
    #[error("queue {queue} is not one of the device's {count} queues")]
    NoSuchQueue {
        /// The queue index.
        queue: u16,
        /// How many queues the device has.
        count: usize,
    },
    /// A queue was given twice.
    #[error("queue {queue} is given twice")]
    DuplicateQueue {
        /// The queue index.
        queue: u16,
    },
    /// The stop eventfd or the epoll set could not be created.
    #[error("cannot create the worker's {what}")]
    Create {
        /// What: `"epoll set"` or `"stop eventfd"`.
        what: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// A descriptor could not be added to the epoll set.
    #[error("cannot poll descriptor {fd} (the {what})")]
    Poll {
        /// What the descriptor is: `"stop eventfd"` or `"notification of
        /// queue N"`.
        what: String,
        /// The descriptor.
        fd: RawFd,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The thread could not be started.
    #[error("cannot start the thread {name:?}")]
    Spawn {
        /// The thread's name.
        name: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The thread could not install its seccomp filter
    /// ([`WorkerOptions::seccomp`]); it ended without serving anything.
    #[error("the thread {name:?} cannot install its seccomp filter")]
    Seccomp {
        /// The thread's name.
        name: String,
        /// vmkit-seccomp's error.
        #[source]
        source: vmkit_seccomp::SeccompError,
    },
    /// Waiting on the epoll set failed; the thread stopped.
    #[error("waiting for notifications failed; the thread {name:?} stopped")]
    Wait {
        /// The thread's name.
        name: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// Processing a queue failed; the worker goes on.
    #[error("processing queue {queue} failed")]
    Queue {
        /// The queue index.
        queue: u16,
        /// The transport's error.
        #[source]
        source: MmioError,
    },
    /// The thread could not be told to stop (it keeps running).
    #[error("cannot signal the thread {name:?} to stop")]
    Stop {
        /// The thread's name.
        name: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The thread panicked (in the device or the `on_error` callback).
    #[error("the thread {name:?} panicked")]
    Panicked {
        /// The thread's name.
        name: String,
    },
}

/// What the worker did for one queue.
///
/// ```
/// use vmkit_machine::worker::QueueStats;
///
/// let stats = QueueStats { queue: 0, notifications: 4, passes: 4, errors: 0 };
/// assert_eq!(stats.notifications, stats.passes);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// The queue index.
    pub queue: u16,
    /// The guest's notifications read from the queue's eventfd (an eventfd
    /// adds up the notifications signalled before a read, so this counts
    /// each one, even when one pass served several).
    pub notifications: u64,
    /// The passes over the queue ([`MmioTransport::process_queue`](vmkit_virtio::mmio::MmioTransport::process_queue) calls).
    pub passes: u64,
    /// The passes that failed (each went to the `on_error` callback).
    pub errors: u64,
}

/// What the worker did, per queue, in the order the queues were given to
/// [`QueueWorker::start`]; returned by [`QueueWorker::stop`].
///
/// ```
/// use vmkit_machine::worker::{QueueStats, WorkerStats};
///
/// let stats = WorkerStats {
///     queues: vec![QueueStats { queue: 1, notifications: 3, passes: 2, errors: 0 }],
/// };
/// assert_eq!((stats.notifications(1), stats.notifications(0)), (3, 0));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// One entry per queue served.
    pub queues: Vec<QueueStats>,
}

impl WorkerStats {
    /// The notifications of `queue` that the worker read (0 for a queue it
    /// did not serve).
    ///
    /// ```
    /// assert_eq!(vmkit_machine::worker::WorkerStats::default().notifications(0), 0);
    /// ```
    pub fn notifications(&self, queue: u16) -> u64 {
        self.queues
            .iter()
            .filter(|q| q.queue == queue)
            .map(|q| q.notifications)
            .sum()
    }

    /// The failed passes over all queues.
    ///
    /// ```
    /// assert_eq!(vmkit_machine::worker::WorkerStats::default().errors(), 0);
    /// ```
    pub fn errors(&self) -> u64 {
        self.queues.iter().map(|q| q.errors).sum()
    }
}

/// Settings of a [`QueueWorker`], for [`QueueWorker::start_with`].
///
/// ```
/// let options = vmkit_machine::worker::WorkerOptions::named("virtio-blk")
///     .seccomp(vmkit_machine::worker::blk_seccomp_rules().compile()?);
/// # let _ = options;
/// # Ok::<(), vmkit_seccomp::SeccompError>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// The thread's name ([`THREAD_NAME`] by default).
    pub name: String,
    /// A seccomp filter the thread installs on itself before it serves
    /// anything; `None` (the default) confines nothing. For a virtio-blk
    /// device on a file, [`blk_seccomp_rules`]; for a device whose queue
    /// work makes no system call of its own, [`queue_seccomp_rules`];
    /// either extended with what the device's backend does. A forbidden
    /// call ends the process with a line naming the thread and the call
    /// (see `vmkit_seccomp`).
    pub seccomp: Option<vmkit_seccomp::Filter>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions::named(THREAD_NAME)
    }
}

impl WorkerOptions {
    /// The defaults, with the thread named `name`.
    pub fn named(name: impl Into<String>) -> WorkerOptions {
        WorkerOptions {
            name: name.into(),
            seccomp: None,
        }
    }

    /// Sets [`seccomp`](Self::seccomp).
    pub fn seccomp(mut self, filter: vmkit_seccomp::Filter) -> WorkerOptions {
        self.seccomp = Some(filter);
        self
    }
}

/// The seccomp rules of a worker thread whose device makes no system call
/// of its own: `vmkit_seccomp::Rules::base` (which has `write`, for the
/// interrupt eventfd and for a console writing to an open stdout), waiting
/// on the epoll set, and reading the notification eventfds.
pub fn queue_seccomp_rules() -> vmkit_seccomp::Rules {
    let mut rules = vmkit_seccomp::Rules::base();
    rules.allow_all(&[libc::SYS_epoll_wait, libc::SYS_epoll_pwait, libc::SYS_read]);
    rules
}

/// The seccomp rules of a worker serving a virtio-blk device on a file
/// (`vmkit_virtio::blk::Block` over `std::fs::File`):
/// [`queue_seccomp_rules`] and the file's positional reads and writes and
/// `fdatasync` (a flush request).
pub fn blk_seccomp_rules() -> vmkit_seccomp::Rules {
    let mut rules = queue_seccomp_rules();
    rules.allow_all(&[libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_fdatasync]);
    rules
}

/// A thread serving queues of one virtio-mmio transport on their
/// notification eventfds; see the [module documentation](self).
///
/// Dropping it stops and joins the thread, as [`QueueWorker::stop`] does,
/// discarding what the thread returns.
#[derive(Debug)]
pub struct QueueWorker {
    name: String,
    stop: EventFd,
    thread: Option<JoinHandle<Result<WorkerStats, WorkerError>>>,
}

impl QueueWorker {
    /// Starts a thread named [`THREAD_NAME`] serving `transport`'s queues
    /// on `notifiers` (e.g. [`WiredDevice::notifiers`](crate::WiredDevice)),
    /// which it keeps until it stops. `on_error` receives, in the worker
    /// thread, each failed queue pass and the failed wait that ends the
    /// thread.
    ///
    /// Fails if `notifiers` is empty, names a queue twice or a queue the
    /// device does not have, or the thread cannot be set up.
    ///
    /// See the [module documentation](self) for an example.
    pub fn start<T, F>(
        transport: Arc<T>,
        notifiers: Vec<QueueNotifier>,
        on_error: F,
    ) -> Result<QueueWorker, WorkerError>
    where
        T: Transport,
        F: FnMut(&WorkerError) + Send + 'static,
    {
        QueueWorker::start_named(THREAD_NAME, transport, notifiers, on_error)
    }

    /// [`QueueWorker::start`] with the thread named `name` (e.g. after the
    /// device, when a VMM runs several workers).
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use vmkit_machine::{QueueWorker, WiredDevice};
    /// # fn f(blk: WiredDevice<Arc<vm_memory::GuestMemoryMmap>, vmkit_virtio::blk::Block>)
    /// # -> Result<(), vmkit_machine::WorkerError> {
    /// let WiredDevice { transport, notifiers, .. } = blk;
    /// let worker = QueueWorker::start_named("virtio-blk", transport, notifiers, |_| {})?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_named<T, F>(
        name: impl Into<String>,
        transport: Arc<T>,
        notifiers: Vec<QueueNotifier>,
        on_error: F,
    ) -> Result<QueueWorker, WorkerError>
    where
        T: Transport,
        F: FnMut(&WorkerError) + Send + 'static,
    {
        QueueWorker::start_with(transport, notifiers, WorkerOptions::named(name), on_error)
    }

    /// [`QueueWorker::start`] with options: the thread's name, and a
    /// seccomp filter it installs before it serves anything (this returns
    /// once it has, or with the error that kept it out).
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use vmkit_machine::worker::{blk_seccomp_rules, QueueWorker, WorkerOptions};
    /// # fn f(blk: vmkit_machine::WiredDevice<Arc<vm_memory::GuestMemoryMmap>, vmkit_virtio::blk::Block>)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// let options = WorkerOptions::named("virtio-blk").seccomp(blk_seccomp_rules().compile()?);
    /// let worker = QueueWorker::start_with(blk.transport, blk.notifiers, options, |_| {})?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_with<T, F>(
        transport: Arc<T>,
        notifiers: Vec<QueueNotifier>,
        options: WorkerOptions,
        on_error: F,
    ) -> Result<QueueWorker, WorkerError>
    where
        T: Transport,
        F: FnMut(&WorkerError) + Send + 'static,
    {
        let WorkerOptions { name, seccomp } = options;
        if notifiers.is_empty() {
            return Err(WorkerError::NoQueues);
        }
        let count = transport.queue_count();
        for (i, notifier) in notifiers.iter().enumerate() {
            let queue = notifier.queue;
            if usize::from(queue) >= count {
                return Err(WorkerError::NoSuchQueue { queue, count });
            }
            if notifiers[..i].iter().any(|n| n.queue == queue) {
                return Err(WorkerError::DuplicateQueue { queue });
            }
        }

        let create = |what| move |source| WorkerError::Create { what, source };
        let stop = EventFd::new(EFD_NONBLOCK).map_err(create("stop eventfd"))?;
        let stop_seen = stop.try_clone().map_err(create("stop eventfd"))?;
        let epoll = Epoll::new().map_err(create("epoll set"))?;
        let poll = |fd: RawFd, token: u64, what: &dyn Fn() -> String| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(|source| WorkerError::Poll {
                    what: what(),
                    fd,
                    source,
                })
        };
        poll(stop.as_raw_fd(), TOKEN_STOP, &|| "stop eventfd".into())?;
        for (token, notifier) in (1..).zip(&notifiers) {
            let what = || format!("notification of queue {}", notifier.queue);
            poll(notifier.event.as_raw_fd(), token, &what)?;
        }

        let worker = Worker {
            name: name.clone(),
            transport,
            epoll,
            stats: notifiers
                .iter()
                .map(|n| QueueStats {
                    queue: n.queue,
                    ..QueueStats::default()
                })
                .collect(),
            notifiers,
            stop: stop_seen,
            on_error,
        };
        let builder = thread::Builder::new().name(name.clone());
        let spawned = vmkit_seccomp::spawn(
            builder,
            seccomp,
            || Ok(WorkerStats::default()),
            move || worker.run(),
        );
        let thread = match spawned {
            Ok(thread) => thread,
            Err(SpawnError::Thread(source)) => return Err(WorkerError::Spawn { name, source }),
            Err(SpawnError::Seccomp(source)) => return Err(WorkerError::Seccomp { name, source }),
        };
        Ok(QueueWorker {
            name,
            stop,
            thread: Some(thread),
        })
    }

    /// The thread's name.
    ///
    /// ```no_run
    /// # fn f(worker: vmkit_machine::QueueWorker) {
    /// assert_eq!(worker.name(), vmkit_machine::worker::THREAD_NAME);
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the thread has ended (it does so on its own only after a
    /// failed wait, which [`QueueWorker::stop`] then returns).
    ///
    /// ```no_run
    /// # fn f(worker: vmkit_machine::QueueWorker) {
    /// assert!(!worker.is_finished());
    /// # }
    /// ```
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Tells the thread to stop, without waiting for it: [`QueueWorker::stop`]
    /// then only joins. Telling several workers first and joining them after
    /// lets them wind down together rather than one after the other.
    ///
    /// ```no_run
    /// # fn f(disk: vmkit_machine::QueueWorker, other: vmkit_machine::QueueWorker)
    /// # -> Result<(), vmkit_machine::WorkerError> {
    /// disk.request_stop()?;
    /// other.request_stop()?;
    /// disk.stop()?;
    /// other.stop()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn request_stop(&self) -> Result<(), WorkerError> {
        if self.thread.is_none() {
            return Ok(());
        }
        self.stop.write(1).map_err(|source| WorkerError::Stop {
            name: self.name.clone(),
            source,
        })
    }

    /// Stops the thread and waits for it; every notification signalled
    /// before this call is served first. Returns what the thread did, or
    /// the error that ended it early, or why it could not be stopped.
    ///
    /// ```no_run
    /// # fn f(worker: vmkit_machine::QueueWorker) -> Result<(), vmkit_machine::WorkerError> {
    /// let stats = worker.stop()?;
    /// assert_eq!(stats.errors(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn stop(mut self) -> Result<WorkerStats, WorkerError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<WorkerStats, WorkerError> {
        let Some(thread) = self.thread.take() else {
            return Ok(WorkerStats::default());
        };
        if let Err(source) = self.stop.write(1) {
            // Joining now would wait forever; a later call may try again.
            self.thread = Some(thread);
            return Err(WorkerError::Stop {
                name: self.name.clone(),
                source,
            });
        }
        thread.join().map_err(|_| WorkerError::Panicked {
            name: self.name.clone(),
        })?
    }
}

impl Drop for QueueWorker {
    fn drop(&mut self) {
        // A thread that cannot be signalled is left running: joining it
        // would hang, and it ends with the process.
        let _ = self.stop_and_join();
    }
}

/// The state of the worker thread.
struct Worker<T, F> {
    name: String,
    transport: Arc<T>,
    epoll: Epoll,
    notifiers: Vec<QueueNotifier>,
    /// Parallel to `notifiers`.
    stats: Vec<QueueStats>,
    stop: EventFd,
    on_error: F,
}

impl<T, F> Worker<T, F>
where
    T: Transport,
    F: FnMut(&WorkerError),
{
    fn run(mut self) -> Result<WorkerStats, WorkerError> {
        // Room for every descriptor, so one wait returns all that are ready.
        let mut events = vec![EpollEvent::default(); self.notifiers.len() + 1];
        loop {
            let ready = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    let err = WorkerError::Wait {
                        name: self.name.clone(),
                        source,
                    };
                    (self.on_error)(&err);
                    return Err(err);
                }
            };
            let mut stop = false;
            for event in events.iter().take(ready) {
                match event.data() {
                    TOKEN_STOP => stop = true,
                    token => self.serve(token),
                }
            }
            if stop {
                let _ = self.stop.read();
                return Ok(WorkerStats { queues: self.stats });
            }
        }
    }

    /// Reads the notifier with epoll token `token` and processes its queue.
    fn serve(&mut self, token: u64) {
        let Some(i) = token
            .checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < self.notifiers.len())
        else {
            return;
        };
        let (notifier, stats) = (&self.notifiers[i], &mut self.stats[i]);
        match notifier.event.read() {
            Ok(count) => stats.notifications += count,
            // Only a spurious wake-up leaves it empty (EAGAIN): nothing to do.
            Err(_) => return,
        }
        stats.passes += 1;
        if let Err(source) = self.transport.process_queue(notifier.queue) {
            stats.errors += 1;
            (self.on_error)(&WorkerError::Queue {
                queue: notifier.queue,
                source,
            });
        }
    }
}
