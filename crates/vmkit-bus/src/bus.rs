//! The [`Bus`]: device registration and exit dispatch.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioRange};
use vm_device::{DeviceMmio, DevicePio};
#[cfg(feature = "vmkit")]
use vmkit::VcpuExit;

use crate::map::{Lookup, RangeMap};
use crate::{Access, BusError, ExitOutcome, Malformed, Space, Span, UnmappedCounts};

/// A port I/O device as the bus holds it: shared, callable from any vCPU thread.
pub type SharedPioDevice = Arc<dyn DevicePio + Send + Sync>;

/// An MMIO device as the bus holds it: shared, callable from any vCPU thread.
pub type SharedMmioDevice = Arc<dyn DeviceMmio + Send + Sync>;

/// The widest MMIO access the bus passes to a device, in bytes (one `kvm_run` MMIO exit).
pub const MAX_MMIO_WIDTH: usize = 8;

/// The last port of the I/O space.
const PIO_LAST: u64 = u16::MAX as u64;

/// The value a read returns where no device answers: every bit set, as on an open bus.
const OPEN_BUS: u8 = 0xff;

/// Port I/O and MMIO devices registered by address range, and the dispatch of vCPU exits to
/// them.
///
/// See the [crate documentation](crate) for the dispatch rules. Registration takes `&mut self`
/// (set the bus up before the vCPUs run, or wrap it in a lock); dispatch takes `&self`, so one
/// bus, in an `Arc`, serves every vCPU thread at once.
#[derive(Default)]
pub struct Bus {
    pio: RangeMap<(PioRange, SharedPioDevice)>,
    mmio: RangeMap<(MmioRange, SharedMmioDevice)>,
    pio_unmapped_reads: AtomicU64,
    pio_unmapped_writes: AtomicU64,
    mmio_unmapped_reads: AtomicU64,
    mmio_unmapped_writes: AtomicU64,
    malformed: AtomicU64,
    eoi: Option<SharedEoiListener>,
}

/// Who hears of the guest's EOIs of level-triggered vectors ([`Bus::set_eoi_listener`]): the
/// VMM's IOAPIC when the VM has a split irqchip. Any `Fn(u8) + Send + Sync` closure is one.
pub trait EoiListener: Send + Sync {
    /// The guest ended an interrupt of `vector` at its local APIC.
    fn end_of_interrupt(&self, vector: u8);
}

impl<F: Fn(u8) + Send + Sync> EoiListener for F {
    fn end_of_interrupt(&self, vector: u8) {
        self(vector)
    }
}

/// An [`EoiListener`] shared with the vCPU threads.
pub type SharedEoiListener = Arc<dyn EoiListener>;

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("pio", &self.pio.ranges().collect::<Vec<_>>())
            .field("mmio", &self.mmio.ranges().collect::<Vec<_>>())
            .field("unmapped", &self.unmapped())
            .field("malformed", &self.malformed_exits())
            .field("eoi_listener", &self.eoi.is_some())
            .finish()
    }
}

/// `first..=first + size - 1` if that is a non-empty range within `0..=max`.
fn checked_span(space: Space, first: u64, size: u64, max: u64) -> Result<Span, BusError> {
    if size == 0 {
        return Err(BusError::EmptyRange { space, base: first });
    }
    match first.checked_add(size - 1) {
        Some(last) if last <= max => Ok(Span { first, last }),
        _ => Err(BusError::RangeWraps {
            space,
            base: first,
            size,
        }),
    }
}

impl Bus {
    /// An empty bus: every access is unmapped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets who hears of [`VcpuExit::IoapicEoi`](vmkit::VcpuExit::IoapicEoi) exits (a split
    /// irqchip's userspace IOAPIC); without one, [`Bus::handle_exit`] leaves those exits alone
    /// ([`ExitOutcome::NotBusExit`]). Replaces any listener set before.
    pub fn set_eoi_listener(&mut self, listener: Option<SharedEoiListener>) {
        self.eoi = listener;
    }

    /// Registers `device` for the `size` ports from `base` on.
    ///
    /// Returns the range. Fails if `size` is 0, if the range would run past port `0xffff`,
    /// or if it overlaps a registered port range (the error names both). Ranges that touch
    /// (one ends at `p`, the other starts at `p + 1`) do not overlap.
    pub fn register_pio(
        &mut self,
        base: PioAddress,
        size: u16,
        device: SharedPioDevice,
    ) -> Result<PioRange, BusError> {
        let span = checked_span(Space::Pio, u64::from(base.0), u64::from(size), PIO_LAST)?;
        let range = PioRange::new(base, size).map_err(|_| BusError::RangeWraps {
            space: Space::Pio,
            base: span.first,
            size: u64::from(size),
        })?;
        self.pio
            .insert(span, (range, device))
            .map_err(|existing| BusError::Overlap {
                space: Space::Pio,
                new: span,
                existing,
            })?;
        Ok(range)
    }

    /// Registers `device` for the `size` MMIO addresses from `base` on.
    ///
    /// Returns the range. Fails if `size` is 0, if the range would run past `u64::MAX`, or if
    /// it overlaps a registered MMIO range (the error names both). Ranges that touch do not
    /// overlap.
    pub fn register_mmio(
        &mut self,
        base: MmioAddress,
        size: u64,
        device: SharedMmioDevice,
    ) -> Result<MmioRange, BusError> {
        let span = checked_span(Space::Mmio, base.0, size, u64::MAX)?;
        let range = MmioRange::new(base, size).map_err(|_| BusError::RangeWraps {
            space: Space::Mmio,
            base: base.0,
            size,
        })?;
        self.mmio
            .insert(span, (range, device))
            .map_err(|existing| BusError::Overlap {
                space: Space::Mmio,
                new: span,
                existing,
            })?;
        Ok(range)
    }

    /// Removes the port device registered at exactly `base` and hands it back with its range.
    ///
    /// A port inside a range but not its base is [`BusError::NotRegistered`].
    pub fn deregister_pio(
        &mut self,
        base: PioAddress,
    ) -> Result<(PioRange, SharedPioDevice), BusError> {
        self.pio
            .remove(u64::from(base.0))
            .map(|(_, entry)| entry)
            .ok_or(BusError::NotRegistered {
                space: Space::Pio,
                base: u64::from(base.0),
            })
    }

    /// Removes the MMIO device registered at exactly `base` and hands it back with its range.
    ///
    /// An address inside a range but not its base is [`BusError::NotRegistered`].
    pub fn deregister_mmio(
        &mut self,
        base: MmioAddress,
    ) -> Result<(MmioRange, SharedMmioDevice), BusError> {
        self.mmio
            .remove(base.0)
            .map(|(_, entry)| entry)
            .ok_or(BusError::NotRegistered {
                space: Space::Mmio,
                base: base.0,
            })
    }

    /// The port device whose range holds `port`, with that range.
    pub fn pio_device(&self, port: u16) -> Option<(PioRange, &SharedPioDevice)> {
        self.pio
            .get(u64::from(port))
            .map(|(_, (range, device))| (*range, device))
    }

    /// The MMIO device whose range holds `addr`, with that range.
    pub fn mmio_device(&self, addr: u64) -> Option<(MmioRange, &SharedMmioDevice)> {
        self.mmio
            .get(addr)
            .map(|(_, (range, device))| (*range, device))
    }

    /// The registered port ranges, in address order.
    pub fn pio_ranges(&self) -> impl Iterator<Item = Span> + '_ {
        self.pio.ranges()
    }

    /// The registered MMIO ranges, in address order.
    pub fn mmio_ranges(&self) -> impl Iterator<Item = Span> + '_ {
        self.mmio.ranges()
    }

    /// How many devices are registered, ports and MMIO together.
    pub fn len(&self) -> usize {
        self.pio.len() + self.mmio.len()
    }

    /// Whether no device is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many accesses reached no device so far.
    pub fn unmapped(&self) -> UnmappedCounts {
        UnmappedCounts {
            pio_reads: self.pio_unmapped_reads.load(Ordering::Relaxed),
            pio_writes: self.pio_unmapped_writes.load(Ordering::Relaxed),
            mmio_reads: self.mmio_unmapped_reads.load(Ordering::Relaxed),
            mmio_writes: self.mmio_unmapped_writes.load(Ordering::Relaxed),
        }
    }

    /// How many malformed exits the bus refused so far.
    pub fn malformed_exits(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Dispatches a port or MMIO exit to its device and answers reads by filling the exit's
    /// data; any other exit is left alone ([`ExitOutcome::NotBusExit`]).
    ///
    /// Never panics, whatever the exit holds; see the [crate documentation](crate) for what
    /// unmapped, straddling and malformed accesses get.
    #[cfg(feature = "vmkit")]
    pub fn handle_exit(&self, exit: &mut VcpuExit<'_>) -> ExitOutcome {
        match exit {
            VcpuExit::IoIn { port, size, data } => self.pio_read(*port, *size, data),
            VcpuExit::IoOut { port, size, data } => self.pio_write(*port, *size, data),
            VcpuExit::MmioRead { addr, data } => self.mmio_read(*addr, data),
            VcpuExit::MmioWrite { addr, data } => self.mmio_write(*addr, data),
            VcpuExit::IoapicEoi { vector } => match &self.eoi {
                Some(listener) => {
                    listener.end_of_interrupt(*vector);
                    ExitOutcome::Eoi { vector: *vector }
                }
                None => ExitOutcome::NotBusExit,
            },
            _ => ExitOutcome::NotBusExit,
        }
    }

    /// Answers a port read of `data.len() / size` accesses of `size` bytes at `port`.
    pub fn pio_read(&self, port: u16, size: u8, data: &mut [u8]) -> ExitOutcome {
        let accesses = match pio_accesses(size, data.len()) {
            Ok(accesses) => accesses,
            Err(problem) => {
                data.fill(OPEN_BUS);
                return self.malformed(Space::Pio, Access::Read, u64::from(port), problem);
            }
        };
        match self.pio.lookup(pio_span(port, size)) {
            Lookup::Inside {
                range,
                device: (pio_range, device),
            } => {
                let base = pio_range.base();
                // `Inside` means base <= port: no wrap.
                let offset = port.wrapping_sub(base.0);
                for access in data.chunks_exact_mut(usize::from(size)) {
                    access.fill(OPEN_BUS);
                    device.pio_read(base, offset, access);
                }
                ExitOutcome::Handled {
                    space: Space::Pio,
                    access: Access::Read,
                    range,
                    offset: u64::from(offset),
                    accesses,
                }
            }
            lookup => {
                data.fill(OPEN_BUS);
                self.unmapped_access(
                    Space::Pio,
                    Access::Read,
                    u64::from(port),
                    usize::from(size),
                    accesses,
                    straddled(&lookup),
                )
            }
        }
    }

    /// Passes a port write of `data.len() / size` accesses of `size` bytes at `port` to its
    /// device.
    pub fn pio_write(&self, port: u16, size: u8, data: &[u8]) -> ExitOutcome {
        let accesses = match pio_accesses(size, data.len()) {
            Ok(accesses) => accesses,
            Err(problem) => {
                return self.malformed(Space::Pio, Access::Write, u64::from(port), problem)
            }
        };
        match self.pio.lookup(pio_span(port, size)) {
            Lookup::Inside {
                range,
                device: (pio_range, device),
            } => {
                let base = pio_range.base();
                // `Inside` means base <= port: no wrap.
                let offset = port.wrapping_sub(base.0);
                for access in data.chunks_exact(usize::from(size)) {
                    device.pio_write(base, offset, access);
                }
                ExitOutcome::Handled {
                    space: Space::Pio,
                    access: Access::Write,
                    range,
                    offset: u64::from(offset),
                    accesses,
                }
            }
            lookup => self.unmapped_access(
                Space::Pio,
                Access::Write,
                u64::from(port),
                usize::from(size),
                accesses,
                straddled(&lookup),
            ),
        }
    }

    /// Answers an MMIO read of `data.len()` bytes at `addr`.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> ExitOutcome {
        if let Err(problem) = mmio_width(data.len()) {
            data.fill(OPEN_BUS);
            return self.malformed(Space::Mmio, Access::Read, addr, problem);
        }
        match self.mmio_lookup(addr, data.len()) {
            Lookup::Inside {
                range,
                device: (mmio_range, device),
            } => {
                let base = mmio_range.base();
                data.fill(OPEN_BUS);
                // `Inside` means base <= addr: no wrap.
                let offset = addr.wrapping_sub(base.0);
                device.mmio_read(base, offset, data);
                ExitOutcome::Handled {
                    space: Space::Mmio,
                    access: Access::Read,
                    range,
                    offset,
                    accesses: 1,
                }
            }
            lookup => {
                data.fill(OPEN_BUS);
                self.unmapped_access(
                    Space::Mmio,
                    Access::Read,
                    addr,
                    data.len(),
                    1,
                    straddled(&lookup),
                )
            }
        }
    }

    /// Passes an MMIO write of `data.len()` bytes at `addr` to its device.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> ExitOutcome {
        if let Err(problem) = mmio_width(data.len()) {
            return self.malformed(Space::Mmio, Access::Write, addr, problem);
        }
        match self.mmio_lookup(addr, data.len()) {
            Lookup::Inside {
                range,
                device: (mmio_range, device),
            } => {
                let base = mmio_range.base();
                // `Inside` means base <= addr: no wrap.
                let offset = addr.wrapping_sub(base.0);
                device.mmio_write(base, offset, data);
                ExitOutcome::Handled {
                    space: Space::Mmio,
                    access: Access::Write,
                    range,
                    offset,
                    accesses: 1,
                }
            }
            lookup => self.unmapped_access(
                Space::Mmio,
                Access::Write,
                addr,
                data.len(),
                1,
                straddled(&lookup),
            ),
        }
    }

    /// Classifies an MMIO access of `len` (1..=8) bytes at `addr`, including one that would
    /// run past `u64::MAX`: that one is never inside a device.
    fn mmio_lookup(&self, addr: u64, len: usize) -> Lookup<'_, (MmioRange, SharedMmioDevice)> {
        // `len` is 1..=MAX_MMIO_WIDTH here, so the conversion cannot fail.
        let extra = u64::try_from(len.saturating_sub(1)).unwrap_or(u64::MAX);
        match addr.checked_add(extra) {
            Some(last) => self.mmio.lookup(Span { first: addr, last }),
            None => self
                .mmio
                .get(addr)
                .map_or(Lookup::Nothing, |(range, _)| Lookup::Straddles(range)),
        }
    }

    fn malformed(
        &self,
        space: Space,
        access: Access,
        addr: u64,
        problem: Malformed,
    ) -> ExitOutcome {
        self.malformed.fetch_add(1, Ordering::Relaxed);
        ExitOutcome::Malformed {
            space,
            access,
            addr,
            problem,
        }
    }

    fn unmapped_access(
        &self,
        space: Space,
        access: Access,
        addr: u64,
        width: usize,
        accesses: usize,
        straddles: Option<Span>,
    ) -> ExitOutcome {
        let counter = match (space, access) {
            (Space::Pio, Access::Read) => &self.pio_unmapped_reads,
            (Space::Pio, Access::Write) => &self.pio_unmapped_writes,
            (Space::Mmio, Access::Read) => &self.mmio_unmapped_reads,
            (Space::Mmio, Access::Write) => &self.mmio_unmapped_writes,
        };
        counter.fetch_add(
            u64::try_from(accesses).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        ExitOutcome::Unmapped {
            space,
            access,
            addr,
            width,
            accesses,
            straddles,
        }
    }
}

/// The ports one access of `size` bytes at `port` covers; it may end past `0xffff`, where no
/// range can be, so such an access is never inside a device.
fn pio_span(port: u16, size: u8) -> Span {
    let first = u64::from(port);
    Span {
        first,
        last: first + u64::from(size.max(1)) - 1,
    }
}

/// How many accesses of `size` bytes a port exit with `len` data bytes holds, if consistent.
fn pio_accesses(size: u8, len: usize) -> Result<usize, Malformed> {
    if !matches!(size, 1 | 2 | 4) {
        return Err(Malformed::PioWidth { size });
    }
    if len == 0 {
        return Err(Malformed::Empty);
    }
    if !len.is_multiple_of(usize::from(size)) {
        return Err(Malformed::RaggedPioData { size, len });
    }
    Ok(len / usize::from(size))
}

/// Checks the width of an MMIO access.
fn mmio_width(len: usize) -> Result<(), Malformed> {
    match len {
        0 => Err(Malformed::Empty),
        1..=MAX_MMIO_WIDTH => Ok(()),
        _ => Err(Malformed::MmioWidth { len }),
    }
}

/// The range a straddling lookup ran into.
fn straddled<D>(lookup: &Lookup<'_, D>) -> Option<Span> {
    match lookup {
        Lookup::Straddles(range) => Some(*range),
        _ => None,
    }
}

/// The bus as a [`VmRunner`](vmkit::runner::VmRunner)'s exit handler: port and MMIO exits go to
/// [`Bus::handle_exit`] and the vCPU goes on (unmapped and malformed accesses included, as
/// that method answers them); any other exit fails the VM with
/// [`ExitAction::unhandled`](vmkit::runner::ExitAction::unhandled). A VMM that powers off on
/// some device's request wraps the bus in a closure that asks the device after each exit.
///
/// ```
/// use vmkit::runner::{ExitAction, ExitHandler};
/// use vmkit::VcpuExit;
/// use vmkit_bus::Bus;
///
/// let bus = Bus::new();
/// let mut data = [0u8; 1];
/// let mut read = VcpuExit::IoIn { port: 0x60, size: 1, data: &mut data };
/// assert!(matches!(bus.handle(0, &mut read), ExitAction::Continue));
/// assert_eq!(data, [0xff]); // nothing at port 0x60: all-ones
/// assert!(matches!(bus.handle(0, &mut VcpuExit::Hlt), ExitAction::Fail(_)));
/// ```
#[cfg(feature = "vmkit")]
impl vmkit::runner::ExitHandler for Bus {
    fn handle(&self, _vcpu: u32, exit: &mut VcpuExit<'_>) -> vmkit::runner::ExitAction {
        match self.handle_exit(exit) {
            ExitOutcome::NotBusExit => vmkit::runner::ExitAction::unhandled(exit),
            _ => vmkit::runner::ExitAction::Continue,
        }
    }
}
