//! The thread that serves a virtio-net device: [`NetWorker`].
//!
//! A virtio-net device on a TAP has two sources of work besides the
//! vCPUs' register accesses: the guest's notifications of the receive and
//! transmit queues, and the TAP becoming readable (a frame for the guest)
//! or writable again (room for frames the guest sent while it was full).
//! [`NetWorker`] waits for both on one epoll set in a thread of its own and
//! calls the transport's [`Transport::process_queue`]; the transport
//! interrupts the guest through its interrupt `EventFd` (an irqfd, if the
//! VMM registered it so).
//!
//! # What the VMM provides
//!
//! - The transport, shared (`Arc`): the vCPU threads keep answering its
//!   register accesses (through a bus) while the worker processes queues.
//! - One [`EventFd`] per data queue ([`QueueKicks`]) that the guest's
//!   `QueueNotify` writes signal: the VMM registers them with the VM as
//!   ioeventfds at the transport's `base + NOTIFY_OFFSET`, 4 bytes, with
//!   the queue index ([`RXQ`], [`TXQ`]) as datamatch (KVM:
//!   `Vm::register_ioeventfd`). This crate depends on no hypervisor, so it
//!   only reads the eventfds; whoever registered them unregisters them.
//!   Non-blocking eventfds (`EFD_NONBLOCK`) are best; the worker reads one
//!   only when epoll reports it readable.
//!
//! The control queue, if the device has one, is rare and is left to the
//! ordinary MMIO exit, which processes it in the vCPU thread.
//!
//! # When the TAP is polled
//!
//! Polling is level-triggered, and the device leaves a frame in the TAP
//! when the guest has no buffer for it, or a frame in the guest's ring
//! when the TAP would block: polling the TAP for what the device cannot
//! act on would spin. So the worker polls the TAP for input only while the
//! device is live (`DRIVER_OK`, not `FAILED` nor `DEVICE_NEEDS_RESET`) and
//! the guest has receive buffers ([`Net::rx_waiting_for_buffers`] is
//! false), and for output only while transmission waits on the TAP
//! ([`Net::tx_blocked`]). It re-decides after every round of work. The
//! receive-queue notification (the guest added buffers) is what resumes
//! input. Until the driver makes the device live nothing tells the worker,
//! so it looks every [`NOT_LIVE_POLL`] meanwhile; on going live it
//! delivers what waited in the TAP.
//!
//! # Errors
//!
//! A failed queue pass or a failed change of the TAP's polling does not
//! stop the worker: it goes to the `on_error` callback given to
//! [`NetWorker::start`] (to log it; the transport also records device
//! failures, see `MmioTransport::take_error`). A failed wait on the epoll
//! set ends the thread: `on_error` sees it, and [`NetWorker::stop`]
//! returns it.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vmkit_net::worker::{NetWorker, QueueKicks};
//! use vmkit_net::Tap;
//! use vmkit_virtio::mmio::MmioTransport;
//! use vmkit_virtio::net::{Net, NetOptions};
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let memory = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])?);
//! let device = Net::new(Tap::open("vmtap%d")?, NetOptions::default())?;
//! let transport = Arc::new(MmioTransport::new(device, memory, EventFd::new(EFD_NONBLOCK)?)?);
//! // Register `transport.interrupt_evt()` as an irqfd, and these two as
//! // ioeventfds on the transport's QueueNotify register (datamatch 0 and 1).
//! let kicks = QueueKicks {
//!     rx: EventFd::new(EFD_NONBLOCK)?,
//!     tx: EventFd::new(EFD_NONBLOCK)?,
//! };
//! let worker = NetWorker::start(transport.clone(), kicks, |err| eprintln!("net: {err}"))?;
//! // … run the VM; the bus hands the transport the guest's register accesses …
//! worker.stop()?;
//! # Ok(())
//! # }
//! ```

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use vmkit_seccomp::SpawnError;
use vmkit_virtio::mmio::{MmioError, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_NEEDS_RESET};
use vmkit_virtio::net::{Net, NetBackend, RXQ, TXQ};
use vmkit_virtio::Transport;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// How often the worker looks whether the driver has made the device live,
/// while it is not: nothing else tells it, and until then it leaves the TAP
/// alone.
pub const NOT_LIVE_POLL: Duration = Duration::from_millis(100);

/// The name of the worker thread.
pub const THREAD_NAME: &str = "virtio-net";

/// Epoll tokens.
const TOKEN_STOP: u64 = 0;
const TOKEN_RX_KICK: u64 = 1;
const TOKEN_TX_KICK: u64 = 2;
const TOKEN_BACKEND: u64 = 3;

/// The errors of [`NetWorker`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// An eventfd or the epoll set could not be created.
    #[error("cannot create the worker's {what}")]
    Create {
        /// What: `"epoll set"` or `"stop eventfd"`.
        what: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// A descriptor could not be added to the epoll set.
    #[error("cannot poll descriptor {fd} ({what})")]
    Poll {
        /// What the descriptor is: `"stop eventfd"`, `"RX notification"`,
        /// `"TX notification"` or `"backend"`.
        what: &'static str,
        /// The descriptor.
        fd: RawFd,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The thread could not be started.
    #[error("cannot start the {THREAD_NAME} thread")]
    Spawn(#[source] io::Error),
    /// The thread could not install its seccomp filter
    /// ([`NetWorkerOptions::seccomp`]); it ended without serving anything.
    #[error("the {THREAD_NAME} thread cannot install its seccomp filter")]
    Seccomp(#[source] vmkit_seccomp::SeccompError),
    /// Waiting on the epoll set failed; the thread stopped.
    #[error("waiting for events failed; the {THREAD_NAME} thread stopped")]
    Wait(#[source] io::Error),
    /// Processing a queue failed; the worker goes on.
    #[error("processing queue {queue} failed")]
    Queue {
        /// The queue index.
        queue: u16,
        /// The transport's error.
        #[source]
        source: MmioError,
    },
    /// The events the backend's descriptor is polled for could not be
    /// changed; the worker goes on and tries again after the next event.
    #[error("cannot change what descriptor {fd} (backend) is polled for")]
    Repoll {
        /// The descriptor.
        fd: RawFd,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The thread could not be told to stop (it keeps running).
    #[error("cannot signal the {THREAD_NAME} thread to stop")]
    Stop(#[source] io::Error),
    /// The thread panicked.
    #[error("the {THREAD_NAME} thread panicked")]
    Panicked,
}

/// The guest's notifications of the data queues, as eventfds the VMM has
/// registered as ioeventfds on the transport's `QueueNotify` register (see
/// the [module documentation](self)).
#[derive(Debug)]
pub struct QueueKicks {
    /// Signalled when the guest notifies the receive queue ([`RXQ`]):
    /// new receive buffers.
    pub rx: EventFd,
    /// Signalled when the guest notifies the transmit queue ([`TXQ`]):
    /// frames to send.
    pub tx: EventFd,
}

/// Settings of a [`NetWorker`], for [`NetWorker::start_with`].
///
/// ```
/// use vmkit_net::worker::{seccomp_rules, NetWorkerOptions};
///
/// let options = NetWorkerOptions::default().seccomp(seccomp_rules().compile()?);
/// # let _ = options;
/// # Ok::<(), vmkit_seccomp::SeccompError>(())
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct NetWorkerOptions {
    /// A seccomp filter the thread installs on itself before it serves
    /// anything; `None` (the default) confines nothing. For a TAP backend,
    /// [`seccomp_rules`]. A forbidden call ends the process with a line
    /// naming the thread and the call (see `vmkit_seccomp`).
    pub seccomp: Option<vmkit_seccomp::Filter>,
}

impl NetWorkerOptions {
    /// Sets [`seccomp`](Self::seccomp).
    pub fn seccomp(mut self, filter: vmkit_seccomp::Filter) -> NetWorkerOptions {
        self.seccomp = Some(filter);
        self
    }
}

/// The seccomp rules of the worker thread on a TAP (or any backend that
/// is a readable, writable descriptor): `vmkit_seccomp::Rules::base`
/// (with `write`: frames to the TAP, the interrupt eventfd), waiting on
/// the epoll set and changing what the backend is polled for
/// (`epoll_ctl` with `EPOLL_CTL_MOD` only), and `read`/`readv` (frames
/// from the TAP, the notification eventfds; `writev` sends frames, and is
/// in the base).
pub fn seccomp_rules() -> vmkit_seccomp::Rules {
    let mut rules = vmkit_seccomp::Rules::base();
    rules
        .allow_all(&[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_read,
            libc::SYS_readv,
        ])
        .allow_args(libc::SYS_epoll_ctl, 1, &[libc::EPOLL_CTL_MOD as u64]);
    rules
}

/// What a TAP-backed virtio-net device makes a vCPU thread do, to add to
/// the vCPU threads' rules: the driver's `DRIVER_OK` write (an MMIO exit)
/// activates the device, which sets the TAP's offloads (`TUNSETOFFLOAD`),
/// and a register access that the transport answers by processing a queue
/// (the control queue, or the data queues when the device goes live) moves
/// frames between the TAP and the guest on that thread (`read`/`readv`;
/// `write`/`writev` are in every thread's base).
pub fn vcpu_seccomp_rules() -> vmkit_seccomp::Rules {
    let mut rules = vmkit_seccomp::Rules::new();
    rules
        .allow_ioctls(&[libc::TUNSETOFFLOAD])
        .allow_all(&[libc::SYS_read, libc::SYS_readv]);
    rules
}

/// A thread serving a virtio-net device's receive and transmit queues on
/// their notifications and its backend on its readiness; see the
/// [module documentation](self).
///
/// Dropping it stops and joins the thread, as [`NetWorker::stop`] does,
/// discarding the thread's error.
#[derive(Debug)]
pub struct NetWorker {
    stop: EventFd,
    thread: Option<JoinHandle<Result<(), WorkerError>>>,
}

impl NetWorker {
    /// Starts the thread serving `transport`'s device, on the notification
    /// eventfds `kicks` (which it keeps until it stops) and the
    /// descriptor of the device's backend (as it is now: replace the
    /// backend only while no worker runs). `on_error` receives, in the
    /// worker thread, the errors that do not stop it and the one that does
    /// (see the [module documentation](self)).
    pub fn start<T, B, F>(
        transport: Arc<T>,
        kicks: QueueKicks,
        on_error: F,
    ) -> Result<NetWorker, WorkerError>
    where
        T: Transport<Device = Net<B>>,
        B: NetBackend + AsRawFd + Send + 'static,
        F: FnMut(&WorkerError) + Send + 'static,
    {
        NetWorker::start_with(transport, kicks, NetWorkerOptions::default(), on_error)
    }

    /// [`NetWorker::start`] with options: a seccomp filter the thread
    /// installs before it serves anything (this returns once it has, or
    /// with the error that kept it out).
    pub fn start_with<T, B, F>(
        transport: Arc<T>,
        kicks: QueueKicks,
        options: NetWorkerOptions,
        on_error: F,
    ) -> Result<NetWorker, WorkerError>
    where
        T: Transport<Device = Net<B>>,
        B: NetBackend + AsRawFd + Send + 'static,
        F: FnMut(&WorkerError) + Send + 'static,
    {
        let NetWorkerOptions { seccomp } = options;
        let create = |what| move |source| WorkerError::Create { what, source };
        let stop = EventFd::new(EFD_NONBLOCK).map_err(create("stop eventfd"))?;
        let epoll = Epoll::new().map_err(create("epoll set"))?;
        let backend = transport.with_device(|net| net.backend().as_raw_fd());
        let stop_clone = stop.try_clone().map_err(create("stop eventfd"))?;
        for (what, fd, token, events) in [
            ("stop eventfd", stop.as_raw_fd(), TOKEN_STOP, EventSet::IN),
            (
                "RX notification",
                kicks.rx.as_raw_fd(),
                TOKEN_RX_KICK,
                EventSet::IN,
            ),
            (
                "TX notification",
                kicks.tx.as_raw_fd(),
                TOKEN_TX_KICK,
                EventSet::IN,
            ),
            // Polled for nothing until the device is live.
            ("backend", backend, TOKEN_BACKEND, EventSet::empty()),
        ] {
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
                .map_err(|source| WorkerError::Poll { what, fd, source })?;
        }
        let worker = Worker {
            transport,
            backend_type: std::marker::PhantomData,
            epoll,
            backend,
            backend_events: EventSet::empty(),
            live: false,
            kicks,
            stop: stop_clone,
            on_error,
        };
        let builder = thread::Builder::new().name(THREAD_NAME.into());
        let thread = vmkit_seccomp::spawn(builder, seccomp, || Ok(()), move || worker.run())
            .map_err(|err| match err {
                SpawnError::Thread(source) => WorkerError::Spawn(source),
                SpawnError::Seccomp(source) => WorkerError::Seccomp(source),
            })?;
        Ok(NetWorker {
            stop,
            thread: Some(thread),
        })
    }

    /// Whether the thread has ended (it does so on its own only after a
    /// failed wait, which [`NetWorker::stop`] then returns).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Tells the thread to stop, without waiting for it: [`NetWorker::stop`]
    /// then only joins, so several device threads can wind down together.
    pub fn request_stop(&self) -> Result<(), WorkerError> {
        if self.thread.is_none() {
            return Ok(());
        }
        self.stop.write(1).map_err(WorkerError::Stop)
    }

    /// Stops the thread and waits for it. Returns the error that ended it
    /// early, if one did, or why it could not be stopped.
    pub fn stop(mut self) -> Result<(), WorkerError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), WorkerError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        if let Err(err) = self.stop.write(1) {
            // Joining now would wait forever; a later call may try again.
            self.thread = Some(thread);
            return Err(WorkerError::Stop(err));
        }
        thread.join().map_err(|_| WorkerError::Panicked)?
    }
}

impl Drop for NetWorker {
    fn drop(&mut self) {
        // A thread that cannot be signalled is left running: joining it
        // would hang, and it ends with the process.
        let _ = self.stop_and_join();
    }
}

/// The state of the worker thread.
struct Worker<T, B: NetBackend, F> {
    transport: Arc<T>,
    // The backend type is fixed by the transport's device.
    backend_type: std::marker::PhantomData<B>,
    epoll: Epoll,
    backend: RawFd,
    /// What the backend is polled for now.
    backend_events: EventSet,
    /// The driver has made the device live (and it has not failed).
    live: bool,
    kicks: QueueKicks,
    stop: EventFd,
    on_error: F,
}

impl<T, B, F> Worker<T, B, F>
where
    T: Transport<Device = Net<B>>,
    B: NetBackend,
    F: FnMut(&WorkerError),
{
    fn run(mut self) -> Result<(), WorkerError> {
        let mut events = vec![EpollEvent::default(); 4];
        let not_live_ms = i32::try_from(NOT_LIVE_POLL.as_millis()).unwrap_or(i32::MAX);
        loop {
            let timeout = if self.live { -1 } else { not_live_ms };
            let ready = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    let err = WorkerError::Wait(err);
                    (self.on_error)(&err);
                    return Err(err);
                }
            };
            let (mut rx, mut tx) = (false, false);
            for event in events.iter().take(ready) {
                match event.data() {
                    TOKEN_STOP => {
                        let _ = self.stop.read();
                        return Ok(());
                    }
                    TOKEN_RX_KICK => {
                        // Only a spurious wake-up leaves it empty (EAGAIN).
                        let _ = self.kicks.rx.read();
                        rx = true;
                    }
                    TOKEN_TX_KICK => {
                        let _ = self.kicks.tx.read();
                        tx = true;
                    }
                    _ => {
                        let set = event.event_set();
                        rx |= set.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP);
                        tx |= set.contains(EventSet::OUT);
                    }
                }
            }
            // Transmit first: it frees the guest's buffers sooner and may
            // answer what the guest is waiting on.
            if tx {
                self.process(TXQ);
            }
            if rx {
                self.process(RXQ);
            }
            self.repoll_backend();
        }
    }

    fn process(&mut self, queue: u16) {
        if let Err(source) = self.transport.process_queue(queue) {
            (self.on_error)(&WorkerError::Queue { queue, source });
        }
    }

    /// Polls the backend for input only while the device can take it, and
    /// for output only while transmission waits on it (see the module
    /// documentation).
    fn repoll_backend(&mut self) {
        let status = self.transport.status();
        let live =
            status & STATUS_DRIVER_OK != 0 && status & (STATUS_FAILED | STATUS_NEEDS_RESET) == 0;
        if live && !self.live {
            // Frames may have waited in the TAP since before the driver was ready.
            self.process(RXQ);
        }
        self.live = live;
        let (rx_waiting, tx_blocked) = self
            .transport
            .with_device(|net| (net.rx_waiting_for_buffers(), net.tx_blocked()));
        let mut want = EventSet::empty();
        if live && !rx_waiting {
            want |= EventSet::IN;
        }
        if live && tx_blocked {
            want |= EventSet::OUT;
        }
        if want != self.backend_events {
            let event = EpollEvent::new(want, TOKEN_BACKEND);
            match self
                .epoll
                .ctl(ControlOperation::Modify, self.backend, event)
            {
                Ok(()) => self.backend_events = want,
                Err(source) => (self.on_error)(&WorkerError::Repoll {
                    fd: self.backend,
                    source,
                }),
            }
        }
    }
}
