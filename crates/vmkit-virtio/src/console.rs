//! virtio-console (virtio 1.2, section 5.3) with a single port and no
//! `VIRTIO_CONSOLE_F_MULTIPORT`: queue 0 receives (host to guest), queue 1
//! transmits (guest to host).
//!
//! Guest output (transmit buffers) goes to any [`Write`]. Host input is
//! queued with [`Console::enqueue_input`] into a bounded buffer and handed
//! to the guest whenever the driver has receive buffers available (on its
//! notification of queue 0, or when the host calls the transport's
//! `process_queue(0)` after queuing input).
//!
//! # Input policy
//!
//! The input buffer holds at most `input_limit` bytes (default
//! [`DEFAULT_INPUT_LIMIT`]). [`Console::enqueue_input`] accepts what fits
//! and returns how many bytes it took; the caller keeps the rest and
//! retries later (backpressure: nothing is dropped silently). Input stays
//! buffered across a device reset. Bytes are removed from the buffer only
//! once they are in guest memory.
//!
//! One call of `process_queue` handles at most
//! [`crate::device::PROCESS_BUDGET`] chains.
//!
//! # Malformed buffers
//!
//! A receive chain with a device-readable buffer, or any chain the queue
//! rejects, is returned with used length 0 and consumes no input. Writable
//! buffers in a transmit chain are skipped. If the output `Write` fails,
//! the bytes of that chain are counted in [`ConsoleStats::tx_lost`] (there
//! is nowhere else to put them) and the chain is still returned, so the
//! guest never stalls on a broken host output.

use std::collections::VecDeque;
use std::io::Write;

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::device::{
    read_config_bytes, DeviceError, StateError, VirtioDevice, PROCESS_BUDGET, VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_ID_CONSOLE,
};
use crate::{Descriptor, Persist, Queue};

/// The receive queue (host to guest).
pub const RECEIVEQ: u16 = 0;
/// The transmit queue (guest to host).
pub const TRANSMITQ: u16 = 1;
/// The maximum size of each queue.
pub const QUEUE_MAX_SIZE: u16 = 256;
/// The default bound of buffered host input, in bytes.
pub const DEFAULT_INPUT_LIMIT: usize = 64 * 1024;
/// The size of the configuration space (`cols`, `rows`, `max_nr_ports`, `emerg_wr`).
const CONFIG_LEN: usize = 12;
/// Bytes copied per step.
const CHUNK: usize = 4096;

/// Counters of a [`Console`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsoleStats {
    /// Bytes written to the output.
    pub tx_bytes: u64,
    /// Bytes the output refused (its `write` failed).
    pub tx_lost: u64,
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Chains returned unused because they were malformed.
    pub bad_chains: u64,
}

/// The saved state of a [`Console`] ([`Persist::State`]): host input not
/// yet delivered to the guest, and the counters. The output writer is the
/// VMM's to reattach, by building the fresh console on it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsoleState {
    /// Buffered host input, oldest byte first. On restore it must fit the
    /// fresh console's input limit.
    pub input: Vec<u8>,
    /// The counters.
    pub stats: ConsoleStats,
}

/// A single-port virtio console writing guest output to `W`.
#[derive(Debug)]
pub struct Console<W: Write> {
    out: W,
    input: VecDeque<u8>,
    input_limit: usize,
    config: [u8; CONFIG_LEN],
    queue_sizes: [u16; 2],
    stats: ConsoleStats,
    buf: Vec<u8>,
}

impl<W: Write> Console<W> {
    /// A console writing guest output to `out`, buffering at most
    /// [`DEFAULT_INPUT_LIMIT`] bytes of input.
    pub fn new(out: W) -> Self {
        Self::with_input_limit(out, DEFAULT_INPUT_LIMIT)
    }

    /// A console buffering at most `input_limit` bytes of host input.
    pub fn with_input_limit(out: W, input_limit: usize) -> Self {
        Console {
            out,
            input: VecDeque::new(),
            input_limit,
            config: [0; CONFIG_LEN],
            queue_sizes: [QUEUE_MAX_SIZE; 2],
            stats: ConsoleStats::default(),
            buf: Vec::new(),
        }
    }

    /// Queues host input for the guest; returns how many bytes of `data`
    /// were taken (fewer than `data.len()` when the buffer is full: keep the
    /// rest and retry). Call the transport's `process_queue(RECEIVEQ)`
    /// afterwards to deliver it.
    pub fn enqueue_input(&mut self, data: &[u8]) -> usize {
        let room = self.input_limit.saturating_sub(self.input.len());
        let n = room.min(data.len());
        self.input.extend(&data[..n]);
        n
    }

    /// Bytes of input not yet delivered to the guest.
    pub fn pending_input(&self) -> usize {
        self.input.len()
    }

    /// The counters.
    pub fn stats(&self) -> ConsoleStats {
        self.stats
    }

    /// The output.
    pub fn output(&self) -> &W {
        &self.out
    }

    /// The output, mutably.
    pub fn output_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Collects a chain's descriptors; `None` if the queue rejected it.
    fn collect<I>(chain: I) -> Option<Vec<Descriptor>>
    where
        I: IntoIterator<Item = crate::Result<Descriptor>>,
    {
        chain.into_iter().collect::<crate::Result<Vec<_>>>().ok()
    }

    /// Fills one receive chain; returns the bytes written.
    fn fill<M: GuestMemory + ?Sized>(&mut self, descs: &[Descriptor], mem: &M) -> u32 {
        let mut written = 0u32;
        for d in descs {
            let mut at = 0u32;
            while at < d.len() && !self.input.is_empty() {
                let n = ((d.len() - at) as usize).min(CHUNK).min(self.input.len());
                self.buf.clear();
                self.buf.extend(self.input.iter().take(n));
                // In guest memory (checked by the queue): addr + len does not wrap.
                let addr = GuestAddress(d.addr().0 + u64::from(at));
                if mem.write_slice(&self.buf, addr).is_err() {
                    return written;
                }
                self.input.drain(..n);
                // n <= d.len() - at, so neither sum overflows.
                at += n as u32;
                written += n as u32;
                self.stats.rx_bytes += n as u64;
            }
        }
        written
    }

    fn receive<M: GuestMemory + ?Sized>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<(), DeviceError> {
        let err = |source| DeviceError::Queue {
            index: RECEIVEQ,
            source,
        };
        let mut budget = PROCESS_BUDGET;
        loop {
            while !self.input.is_empty() && budget > 0 {
                let Some(chain) = queue.pop(mem).map_err(err)? else {
                    break;
                };
                budget -= 1;
                let head = chain.head();
                let len = match Self::collect(chain) {
                    Some(descs) if descs.iter().all(Descriptor::is_write_only) => {
                        self.fill(&descs, mem)
                    }
                    _ => {
                        self.stats.bad_chains += 1;
                        0
                    }
                };
                queue.add_used(mem, head, len).map_err(err)?;
            }
            if self.input.is_empty()
                || budget == 0
                || !queue.enable_notification(mem).map_err(err)?
            {
                return Ok(());
            }
        }
    }

    fn transmit<M: GuestMemory + ?Sized>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<(), DeviceError> {
        let err = |source| DeviceError::Queue {
            index: TRANSMITQ,
            source,
        };
        let mut budget = PROCESS_BUDGET;
        loop {
            while budget > 0 {
                let Some(chain) = queue.pop(mem).map_err(err)? else {
                    break;
                };
                budget -= 1;
                let head = chain.head();
                match Self::collect(chain) {
                    Some(descs) => self.send(&descs, mem),
                    None => self.stats.bad_chains += 1,
                }
                queue.add_used(mem, head, 0).map_err(err)?;
            }
            if budget == 0 || !queue.enable_notification(mem).map_err(err)? {
                break;
            }
        }
        // The bytes were handed to the writer (and counted) already; a
        // failing flush has nothing left to report.
        let _ = self.out.flush();
        Ok(())
    }

    fn send<M: GuestMemory + ?Sized>(&mut self, descs: &[Descriptor], mem: &M) {
        let mut failed = false;
        for d in descs.iter().filter(|d| !d.is_write_only()) {
            let mut at = 0u32;
            while at < d.len() {
                let n = ((d.len() - at) as usize).min(CHUNK);
                self.buf.resize(n, 0);
                let addr = GuestAddress(d.addr().0 + u64::from(at));
                let ok = !failed
                    && mem.read_slice(&mut self.buf, addr).is_ok()
                    && self.out.write_all(&self.buf).is_ok();
                if ok {
                    self.stats.tx_bytes += n as u64;
                } else {
                    failed = true;
                    self.stats.tx_lost += n as u64;
                }
                at += n as u32;
            }
        }
    }
}

impl<M: GuestMemory + ?Sized, W: Write> VirtioDevice<M> for Console<W> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | VIRTIO_F_RING_PACKED
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, _features: u64) -> Result<(), DeviceError> {
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<bool, DeviceError> {
        match index {
            RECEIVEQ => self.receive(queue, mem)?,
            TRANSMITQ => self.transmit(queue, mem)?,
            _ => return Err(DeviceError::NoSuchQueue { index, count: 2 }),
        }
        queue
            .needs_notification(mem)
            .map_err(|source| DeviceError::Queue { index, source })
    }

    fn reset(&mut self) {}
}

/// Buffered host input and the counters ([`ConsoleState`]).
impl<W: Write> Persist for Console<W> {
    const KIND: &'static str = "virtio-console";
    const VERSION: u16 = 1;
    type State = ConsoleState;
    type Error = StateError;

    fn save_state(&self) -> ConsoleState {
        ConsoleState {
            input: self.input.iter().copied().collect(),
            stats: self.stats,
        }
    }

    /// Replaces the buffered input and the counters; input longer than
    /// this console's input limit is refused ([`StateError::TooLarge`]).
    fn restore_state(&mut self, saved: &ConsoleState) -> Result<(), StateError> {
        if saved.input.len() > self.input_limit {
            return Err(StateError::TooLarge {
                field: "input",
                len: saved.input.len(),
                limit: self.input_limit,
            });
        }
        self.input.clear();
        self.input.extend(&saved.input);
        self.stats = saved.stats;
        Ok(())
    }
}
