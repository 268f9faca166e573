//! The virtio-pci modern transport (virtio 1.2, section 4.1) over the same
//! device model as virtio-mmio: [`PciTransport`].
//!
//! The function has one 32-bit memory BAR (BAR 0, [`BAR_SIZE`] bytes) that
//! holds every structure, each announced by a vendor-specific capability
//! in configuration space:
//!
//! | offset | structure |
//! |---|---|
//! | [`COMMON_OFFSET`] | common configuration ([`COMMON_SIZE`] bytes) |
//! | [`ISR_OFFSET`] | ISR status (reading it clears it) |
//! | [`DEVICE_OFFSET`] | device configuration |
//! | [`NOTIFY_OFFSET`] | notifications: queue `n` at `NOTIFY_OFFSET + n * NOTIFY_MULTIPLIER` |
//! | [`MSIX_TABLE_OFFSET`] | MSI-X table (one vector per queue, plus one for configuration changes) |
//! | [`MSIX_PBA_OFFSET`] | MSI-X pending bits |
//!
//! A queue's notify address is a plain write target: a VMM may register an
//! ioeventfd there ([`PciTransport::notify_offset`]) and serve the queue
//! from a device thread ([`crate::Transport`]); a write that reaches the
//! transport processes the queue in the calling thread.
//!
//! Interrupts go through MSI-X once the driver enables it (each queue's
//! and the configuration change's vector, as the driver chose them; a
//! masked vector pends until unmasked), else through INTx: the
//! transport signals its INTx eventfd (which a VMM registers as an irqfd
//! on the GSI the pin is routed to) and the driver reads the ISR.
//!
//! The status machine, feature negotiation and queue setup are virtio-mmio's
//! ([`crate::mmio`]), so the same rules hold and the same
//! [`MmioError`]s record refused driver actions. Every access is checked:
//! common configuration fields only at their offset and width (64-bit
//! fields also as two 32-bit halves), the ISR and notify registers at
//! theirs, the device configuration with 1, 2, 4 or 8 bytes; anything else
//! reads all ones, writes nothing, and is counted
//! ([`PciTransport::invalid_accesses`]).
//!
//! Not provided: the `VIRTIO_PCI_CAP_PCI_CFG` window, shared memory
//! capabilities, queue reset, and queue offloads (vhost), which need the
//! one interrupt eventfd of virtio-mmio.

use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::GuestAddressSpace;
use vmkit_pci::config::{BarRegion, BAR_COUNT, COMMAND_INTX_DISABLE};
use vmkit_pci::msix::{CONTROL_ENABLE, MSIX_CAP_ID};
use vmkit_pci::{BarKind, ConfigError, ConfigSpace, MsiSink, Msix, MsixError, PciDevice, PciIds};
use vmm_sys_util::eventfd::EventFd;

use crate::device::{
    VirtioDevice, VIRTIO_ID_BALLOON, VIRTIO_ID_BLOCK, VIRTIO_ID_CONSOLE, VIRTIO_ID_NET,
};
use crate::interrupt::Interrupt;
use crate::mmio::{reg, Inner, MmioError, INT_CONFIG_CHANGE, INT_USED_BUFFER};

/// The size of BAR 0.
pub const BAR_SIZE: u64 = 0x8000;
/// Where the common configuration structure starts in BAR 0.
pub const COMMON_OFFSET: u64 = 0x0000;
/// The size of the common configuration structure.
pub const COMMON_SIZE: u64 = 0x40;
/// Where the ISR status byte is in BAR 0.
pub const ISR_OFFSET: u64 = 0x1000;
/// Where the device configuration starts in BAR 0.
pub const DEVICE_OFFSET: u64 = 0x2000;
/// The size of the device configuration window.
pub const DEVICE_SIZE: u64 = 0x1000;
/// Where the notification addresses start in BAR 0.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// The distance between two queues' notification addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// Where the MSI-X table starts in BAR 0.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// Where the MSI-X pending bits start in BAR 0.
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
/// The PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
/// The MSI-X vector value that means "no vector".
pub const NO_VECTOR: u16 = 0xffff;

/// The vendor-specific capability ID, which virtio's structures use.
const VENDOR_CAP_ID: u8 = 0x09;
/// Virtio structure types (`cfg_type`).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;

/// Why a [`PciTransport`] cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PciTransportError {
    /// The device's queues do not suit the transport.
    #[error("the device does not suit the transport")]
    Device(#[source] MmioError),
    /// The configuration space could not be laid out.
    #[error("cannot lay out the configuration space")]
    Config(#[source] ConfigError),
    /// The MSI-X structure could not be built.
    #[error("cannot build the MSI-X table")]
    Msix(#[source] MsixError),
}

/// The PCI side of the function: configuration space and MSI-X.
#[derive(Debug)]
struct Function {
    config: ConfigSpace,
    msix: Msix,
    msix_cap: usize,
}

impl Function {
    fn msix_control(&self) -> u16 {
        self.config.get_u16(self.msix_cap + 2)
    }
}

/// The virtio side: the transport core and the vectors the driver chose.
#[derive(Debug)]
struct State<D> {
    inner: Inner<D>,
    config_vector: u16,
    queue_vectors: Vec<u16>,
}

/// How the core's interrupts leave a virtio-pci function.
struct PciInterrupt<'a> {
    function: &'a Mutex<Function>,
    config_vector: u16,
    queue_vectors: &'a [u16],
    sink: &'a dyn MsiSink,
    intx: &'a EventFd,
}

impl Interrupt for PciInterrupt<'_> {
    fn signal(&self, queue: Option<u16>) -> std::io::Result<()> {
        let mut f = lock(self.function);
        let control = f.msix_control();
        if control & CONTROL_ENABLE != 0 {
            let vector = match queue {
                Some(q) => self
                    .queue_vectors
                    .get(usize::from(q))
                    .copied()
                    .unwrap_or(NO_VECTOR),
                None => self.config_vector,
            };
            if vector != NO_VECTOR {
                f.msix.signal(vector, control, self.sink)?;
            }
            return Ok(());
        }
        if f.config.command() & COMMAND_INTX_DISABLE == 0 {
            self.intx.write(1)?;
        }
        Ok(())
    }

    fn eventfd(&self) -> Option<&EventFd> {
        None
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a plain store: the state after a panic elsewhere is still consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The PCI identifiers of a virtio device of type `device_type` (modern: device ID
/// 0x1040 + type, revision 1).
pub fn pci_ids(device_type: u32) -> PciIds {
    let class = match device_type {
        VIRTIO_ID_NET => 0x02_00_00,
        VIRTIO_ID_BLOCK => 0x01_80_00,
        VIRTIO_ID_CONSOLE => 0x07_80_00,
        VIRTIO_ID_BALLOON => 0x05_00_00,
        _ => 0xff_00_00,
    };
    PciIds {
        vendor: VIRTIO_PCI_VENDOR,
        device: 0x1040u16.saturating_add(u16::try_from(device_type).unwrap_or(0x3f)),
        revision: 1,
        class,
        subsystem_vendor: VIRTIO_PCI_VENDOR,
        subsystem: 0x40,
    }
}

/// The body (after id and next) of a `virtio_pci_cap` for structure `cfg_type` at
/// `offset`, `length` bytes, in BAR 0; `extra` follows it (the notify multiplier).
fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut body = vec![(16 + extra.len()) as u8, cfg_type, 0, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

/// A virtio device behind the virtio-pci modern transport; see the [module
/// documentation](self). It is a [`PciDevice`]: put it on a `vmkit_pci::PciRoot`.
pub struct PciTransport<S: GuestAddressSpace, D> {
    state: Mutex<State<D>>,
    function: Mutex<Function>,
    mem: S,
    sink: Arc<dyn MsiSink>,
    intx: EventFd,
}

impl<S: GuestAddressSpace, D> std::fmt::Debug for PciTransport<S, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciTransport").finish_non_exhaustive()
    }
}

impl<S, D> PciTransport<S, D>
where
    S: GuestAddressSpace,
    D: VirtioDevice<S::M>,
{
    /// Wraps `device`, with guest memory `mem`, MSI-X messages sent to `sink`, and INTx
    /// signalled on `intx`. BAR 0 sits at address 0 until
    /// [`PciTransport::set_bar_address`]; the interrupt pin is INTA, routed to no line until
    /// [`PciTransport::set_intx_line`].
    pub fn new(
        device: D,
        mem: S,
        sink: Arc<dyn MsiSink>,
        intx: EventFd,
    ) -> Result<Self, PciTransportError> {
        let inner = Inner::new::<S::M>(device).map_err(PciTransportError::Device)?;
        let queues = inner.queues.len();
        let mut config = ConfigSpace::new(pci_ids(inner.device.device_type()));
        config
            .add_bar(0, BAR_SIZE, BarKind::Memory32)
            .map_err(PciTransportError::Config)?;
        config.set_interrupt(1, 0);
        // `queues` is at most MAX_QUEUES (64): one vector each, and one for configuration.
        let msix = Msix::new(queues as u16 + 1).map_err(PciTransportError::Msix)?;
        let notify_len = queues as u64 * u64::from(NOTIFY_MULTIPLIER);
        let caps = [
            virtio_cap(CAP_COMMON, COMMON_OFFSET, COMMON_SIZE, &[]),
            virtio_cap(CAP_ISR, ISR_OFFSET, 4, &[]),
            virtio_cap(CAP_DEVICE, DEVICE_OFFSET, DEVICE_SIZE, &[]),
            virtio_cap(
                CAP_NOTIFY,
                NOTIFY_OFFSET,
                notify_len,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
        ];
        for cap in &caps {
            config
                .add_capability(VENDOR_CAP_ID, cap, &[])
                .map_err(PciTransportError::Config)?;
        }
        let (body, mask) = msix
            .capability(0, MSIX_TABLE_OFFSET as u32, 0, MSIX_PBA_OFFSET as u32)
            .map_err(PciTransportError::Msix)?;
        let msix_cap = config
            .add_capability(MSIX_CAP_ID, &body, &mask)
            .map_err(PciTransportError::Config)?;
        Ok(PciTransport {
            state: Mutex::new(State {
                inner,
                config_vector: NO_VECTOR,
                queue_vectors: vec![NO_VECTOR; queues],
            }),
            function: Mutex::new(Function {
                config,
                msix,
                msix_cap: usize::from(msix_cap),
            }),
            mem,
            sink,
            intx,
        })
    }

    /// Offers `VIRTIO_F_RING_PACKED` (the default, if the device offers it) or withholds it.
    pub fn with_packed_rings(self, offer: bool) -> Self {
        lock(&self.state).inner.offer_packed::<S::M>(offer);
        self
    }

    /// Places BAR 0 at `addr` (aligned to [`BAR_SIZE`], below 4 GiB), as firmware would.
    pub fn set_bar_address(&self, addr: u64) -> Result<(), ConfigError> {
        lock(&self.function).config.set_bar_address(0, addr)
    }

    /// Says which interrupt line INTA is routed to (what the guest reads in the interrupt
    /// line register; the VMM's ACPI tables give the routing).
    pub fn set_intx_line(&self, line: u8) {
        lock(&self.function).config.set_interrupt(1, line);
    }

    /// The offset in BAR 0 of queue `index`'s notification address.
    pub fn notify_offset(index: u16) -> u64 {
        NOTIFY_OFFSET + u64::from(index) * u64::from(NOTIFY_MULTIPLIER)
    }

    /// The INTx eventfd given to [`PciTransport::new`].
    pub fn intx_evt(&self) -> &EventFd {
        &self.intx
    }

    /// Runs `op` on the core with the interrupt routing of this function.
    fn with_core<R>(&self, op: impl FnOnce(&mut Inner<D>, &PciInterrupt<'_>) -> R) -> R {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        let irq = PciInterrupt {
            function: &self.function,
            config_vector: state.config_vector,
            queue_vectors: &state.queue_vectors,
            sink: &*self.sink,
            intx: &self.intx,
        };
        op(&mut state.inner, &irq)
    }

    /// Processes queue `index`, as a write to its notification address would: the entry
    /// point for a device thread.
    pub fn process_queue(&self, index: u16) -> Result<bool, MmioError> {
        let mem = self.mem.memory();
        self.with_core(|inner, irq| inner.process(u32::from(index), &*mem, irq))
    }

    /// Runs `f` on the device, under the transport's lock.
    pub fn with_device<R>(&self, f: impl FnOnce(&mut D) -> R) -> R {
        f(&mut lock(&self.state).inner.device)
    }

    /// Tells the driver that the device configuration changed.
    pub fn notify_config_change(&self) {
        self.with_core(|inner, irq| {
            inner.config_generation = inner.config_generation.wrapping_add(1);
            if inner.status & crate::mmio::STATUS_DRIVER_OK != 0 {
                inner.raise(INT_CONFIG_CHANGE, None, irq);
            }
        });
    }

    /// The device status.
    pub fn status(&self) -> u32 {
        lock(&self.state).inner.status
    }

    /// The features offered to the driver.
    pub fn device_features(&self) -> u64 {
        lock(&self.state).inner.device_features
    }

    /// The features the driver accepted (meaningful once `FEATURES_OK` is set).
    pub fn driver_features(&self) -> u64 {
        lock(&self.state).inner.driver_features
    }

    /// The number of queues of the device.
    pub fn queue_count(&self) -> usize {
        lock(&self.state).inner.queues.len()
    }

    /// How many guest accesses were refused.
    pub fn invalid_accesses(&self) -> u64 {
        lock(&self.state).inner.invalid_accesses
    }

    /// Takes the last refused driver action or device failure, if any.
    pub fn take_error(&self) -> Option<MmioError> {
        lock(&self.state).inner.last_error.take()
    }

    /// A read of BAR 0 at `offset`.
    pub fn read_bar(&self, offset: u64, data: &mut [u8]) {
        let len = data.len();
        let ok = match offset {
            o if o < COMMON_OFFSET + COMMON_SIZE => self.read_common(o, data),
            o if (ISR_OFFSET..ISR_OFFSET + 4).contains(&o) => {
                // Reading the ISR clears it (and so lowers INTx).
                let mut state = lock(&self.state);
                let isr = state.inner.interrupt_status & (INT_USED_BUFFER | INT_CONFIG_CHANGE);
                state.inner.interrupt_status = 0;
                data.fill(0);
                if let Some(b) = data.first_mut() {
                    *b = if o == ISR_OFFSET { isr as u8 } else { 0 };
                }
                len <= 4 && o + len as u64 <= ISR_OFFSET + 4
            }
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o)
                && matches!(len, 1 | 2 | 4 | 8) =>
            {
                lock(&self.state)
                    .inner
                    .device
                    .read_config(o - DEVICE_OFFSET, data);
                true
            }
            o if o >= MSIX_PBA_OFFSET => lock(&self.function)
                .msix
                .pba_read(o - MSIX_PBA_OFFSET, data),
            o if o >= MSIX_TABLE_OFFSET => lock(&self.function)
                .msix
                .table_read(o - MSIX_TABLE_OFFSET, data),
            _ => false,
        };
        if !ok {
            data.fill(0xff);
            lock(&self.state).inner.invalid(offset, len, false);
        }
    }

    /// A write of BAR 0 at `offset`.
    pub fn write_bar(&self, offset: u64, data: &[u8]) {
        let len = data.len();
        let ok = match offset {
            o if o < COMMON_OFFSET + COMMON_SIZE => self.write_common(o, data),
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => {
                let queue = (o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER);
                let aligned =
                    o.is_multiple_of(u64::from(NOTIFY_MULTIPLIER)) && matches!(len, 2 | 4);
                let count = lock(&self.state).inner.queues.len() as u64;
                if aligned && queue < count {
                    if let Err(e) = self.process_queue(queue as u16) {
                        lock(&self.state).inner.record(e);
                    }
                    true
                } else {
                    false
                }
            }
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o)
                && matches!(len, 1 | 2 | 4 | 8) =>
            {
                lock(&self.state)
                    .inner
                    .device
                    .write_config(o - DEVICE_OFFSET, data);
                true
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                let mut f = lock(&self.function);
                let control = f.msix_control();
                match f
                    .msix
                    .table_write(o - MSIX_TABLE_OFFSET, data, control, &*self.sink)
                {
                    Ok(ok) => ok,
                    Err(e) => {
                        drop(f);
                        lock(&self.state).inner.record(MmioError::Interrupt(e));
                        true
                    }
                }
            }
            _ => false,
        };
        if !ok {
            lock(&self.state).inner.invalid(offset, len, true);
        }
    }

    /// The common configuration field at `offset` for an access of `len` bytes: its offset
    /// and whether the access is its upper half (64-bit fields only).
    fn common_field(offset: u64, len: usize) -> Option<(u64, bool)> {
        let width = match offset & !7 {
            0x20 | 0x28 | 0x30 => 8,
            _ => match offset {
                0x00 | 0x04 | 0x08 | 0x0c => 4,
                0x10 | 0x12 | 0x16 | 0x18 | 0x1a | 0x1c | 0x1e | 0x38 | 0x3a => 2,
                0x14 | 0x15 => 1,
                _ => return None,
            },
        };
        match (width, len) {
            (8, 8) if offset.is_multiple_of(8) => Some((offset, false)),
            (8, 4) => Some((offset & !7, !offset.is_multiple_of(8))),
            (w, l) if w == l && width != 8 => Some((offset, false)),
            _ => None,
        }
    }

    fn read_common(&self, offset: u64, data: &mut [u8]) -> bool {
        let Some((field, high)) = Self::common_field(offset, data.len()) else {
            return false;
        };
        let state = lock(&self.state);
        let inner = &state.inner;
        let selected = usize::try_from(inner.queue_sel)
            .ok()
            .and_then(|i| inner.queues.get(i));
        let v: u64 = match field {
            0x00 => u64::from(inner.device_features_sel),
            0x04 => match inner.device_features_sel {
                0 => inner.device_features & 0xffff_ffff,
                1 => inner.device_features >> 32,
                _ => 0,
            },
            0x08 => u64::from(inner.driver_features_sel),
            0x0c => match inner.driver_features_sel {
                0 => inner.driver_features & 0xffff_ffff,
                1 => inner.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(state.config_vector),
            0x12 => inner.queues.len() as u64,
            0x14 => u64::from(inner.status & 0xff),
            0x15 => u64::from(inner.config_generation & 0xff),
            0x16 => u64::from(inner.queue_sel),
            0x18 => selected.map_or(0, |s| u64::from(s.num)),
            0x1a => usize::try_from(inner.queue_sel)
                .ok()
                .and_then(|i| state.queue_vectors.get(i))
                .map_or(u64::from(NO_VECTOR), |&v| u64::from(v)),
            0x1c => selected.map_or(0, |s| u64::from(s.queue.ready())),
            0x1e | 0x38 => selected.map_or(0, |_| u64::from(inner.queue_sel)),
            0x20 => selected.map_or(0, |s| s.desc),
            0x28 => selected.map_or(0, |s| s.driver),
            0x30 => selected.map_or(0, |s| s.device),
            _ => 0,
        };
        let v = if high { v >> 32 } else { v };
        let bytes = v.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
        true
    }

    fn write_common(&self, offset: u64, data: &[u8]) -> bool {
        let Some((field, high)) = Self::common_field(offset, data.len()) else {
            return false;
        };
        let mut bytes = [0u8; 8];
        bytes[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(bytes);
        let mem = self.mem.memory();
        let vectors = lock(&self.function).msix.count();
        let valid_vector = |v: u64| match u16::try_from(v) {
            Ok(v) if v < vectors => v,
            _ => NO_VECTOR,
        };
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        match field {
            0x10 => {
                state.config_vector = valid_vector(v);
                return true;
            }
            0x1a => {
                if let Some(slot) = usize::try_from(state.inner.queue_sel)
                    .ok()
                    .and_then(|i| state.queue_vectors.get_mut(i))
                {
                    *slot = valid_vector(v);
                }
                return true;
            }
            _ => {}
        }
        let irq = PciInterrupt {
            function: &self.function,
            config_vector: state.config_vector,
            queue_vectors: &state.queue_vectors,
            sink: &*self.sink,
            intx: &self.intx,
        };
        let inner = &mut state.inner;
        // The 64-bit fields, as the two 32-bit registers of virtio-mmio.
        let halves = |low: u64, high_reg: u64| (low, high_reg);
        let wide = match field {
            0x20 => Some(halves(reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH)),
            0x28 => Some(halves(reg::QUEUE_DRIVER_LOW, reg::QUEUE_DRIVER_HIGH)),
            0x30 => Some(halves(reg::QUEUE_DEVICE_LOW, reg::QUEUE_DEVICE_HIGH)),
            _ => None,
        };
        if let Some((low, high_reg)) = wide {
            if data.len() == 8 {
                inner.write_reg(low, v as u32, &*mem, &irq);
                inner.write_reg(high_reg, (v >> 32) as u32, &*mem, &irq);
            } else {
                inner.write_reg(if high { high_reg } else { low }, v as u32, &*mem, &irq);
            }
            return true;
        }
        let register = match field {
            0x00 => reg::DEVICE_FEATURES_SEL,
            0x08 => reg::DRIVER_FEATURES_SEL,
            0x0c => reg::DRIVER_FEATURES,
            0x14 => reg::STATUS,
            0x16 => reg::QUEUE_SEL,
            0x18 => reg::QUEUE_NUM,
            0x1c => reg::QUEUE_READY,
            // Read-only fields, and queue reset (not offered): ignored, counted.
            _ => return false,
        };
        inner.write_reg(register, v as u32, &*mem, &irq);
        if field == 0x14 && v == 0 {
            // A reset returns the vectors to "none".
            state.config_vector = NO_VECTOR;
            state.queue_vectors.fill(NO_VECTOR);
        }
        true
    }
}

impl<S, D> PciDevice for PciTransport<S, D>
where
    S: GuestAddressSpace + Send + Sync,
    D: VirtioDevice<S::M> + Send,
{
    fn config_read(&self, offset: u16, data: &mut [u8]) {
        lock(&self.function).config.read(u64::from(offset), data);
    }

    fn config_write(&self, offset: u16, data: &[u8]) {
        let mut f = lock(&self.function);
        f.config.write(u64::from(offset), data);
        let control = f.msix_control();
        // The guest may have enabled MSI-X or cleared the function mask.
        if let Err(e) = f.msix.deliver_pending(control, &*self.sink) {
            drop(f);
            lock(&self.state).inner.record(MmioError::Interrupt(e));
        }
    }

    fn decoded_bars(&self) -> [Option<BarRegion>; BAR_COUNT] {
        lock(&self.function).config.decoded_bars()
    }

    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar == 0 {
            self.read_bar(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) {
        if bar == 0 {
            self.write_bar(offset, data);
        }
    }
}

#[cfg(test)]
mod tests;
