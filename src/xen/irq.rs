//! Interrupts into a Xen domain with Xen's emulated platform ([`VmConfig::irqchip`]): IRQ
//! lines, MSIs, the GSI routing vmkit can offer on top of Xen's fixed wiring, and irqfds.
//!
//! Xen's device-model operations reach its interrupt controllers two ways: an ISA IRQ
//! (0-15) drives PIC input `n` and IOAPIC pin `n` — except ISA IRQ 0, which Xen wires to
//! pin 2 as a PC's ACPI tables describe the PIT — and PCI INTx pin `i` of device `d` on bus
//! 0 drives IOAPIC pin `16 + 4d + i` (for `d` < 8), so GSIs 16-47 (Xen's IOAPIC has 48
//! pins) each have exactly one INTx that reaches them and no other. So GSI `g` is ISA IRQ
//! `g` for 1-15 and an INTx for 16-47; GSI 0 (IOAPIC pin 0) has no input a device model
//! can drive, and [`Vm::set_irq_line`](crate::Vm::set_irq_line) refuses it, naming why.
//!
//! That wiring is fixed, so [`Vm::set_gsi_routing`](crate::Vm::set_gsi_routing) accepts
//! irqchip routes only where they describe it (`IrqRoute::pc_defaults` does) and
//! refuses any other with the reason; MSI routes are vmkit's own table: raising a GSI with
//! one sends the message (`xendevicemodel_inject_msi`) instead.
//!
//! With a split irqchip Xen has no IOAPIC or PIC: only MSI routes are accepted, a GSI
//! reaches the guest through its route or not at all, and a level-triggered MSI is followed
//! to its EOI in the local APICs (`eoi.rs`).
//!
//! An irqfd is served by a reactor thread per VM (started by the first registration): it
//! waits in `epoll` on the registered eventfds and pulses the GSI, as KVM does for an
//! irqfd without resample. A level-triggered irqfd (with a resample eventfd) is held high
//! until the guest's EOI, which the reactor learns from the IOAPIC's HVM record (Xen sends
//! a device model no EOI notice); see `resample.rs` for how, and what that costs. The thread is
//! spawned by the thread that registers the first irqfd (a VMM does so while it sets the
//! machine up, before it confines its threads with seccomp) and inherits its filter; it
//! stops when the VM goes.
//!
//! [`VmConfig::irqchip`]: crate::VmConfig::irqchip

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::eoi::{self, EoiWatch};
use super::libs::XenCallError;
use super::resample::{self, Stage, Step};
use super::sys::abi::{
    DomId, HvmHwVioapic, Pod, HVM_LAPIC_REGS_SIZE, HVM_SAVE_CODE_IOAPIC, HVM_SAVE_CODE_LAPIC_REGS,
};
use super::Handles;
use crate::interrupt::{IrqChip, IrqRoute, MsiMessage};
use crate::vm::VmError;

/// Pins of Xen's IOAPIC (`VIOAPIC_NUM_PINS` for a domain other than dom0).
pub(crate) const IOAPIC_PINS: u32 = 48;

/// The most routes, and the highest GSI plus one, a routing table may have (KVM's
/// `KVM_MAX_IRQ_ROUTES`).
const MAX_ROUTES: u32 = 4096;

/// The most irqfds one VM may have.
const MAX_IRQFDS: usize = 1024;

/// The epoll token of the reactor's stop eventfd; irqfds count up from 1.
const STOP: u64 = 0;

/// What drives a GSI in Xen's platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    Isa(u8),
    Intx { device: u8, intx: u8 },
}

/// The input that drives `gsi`, or why there is none.
fn line_of(gsi: u32) -> Result<Line, &'static str> {
    match gsi {
        0 => Err(
            "Xen's IOAPIC pin 0 has no input a device model can drive (Xen wires ISA \
                  IRQ 0 to pin 2; GSIs 1-47 can be raised)",
        ),
        1..=15 => Ok(Line::Isa(gsi as u8)),
        16..IOAPIC_PINS => Ok(Line::Intx {
            device: ((gsi - 16) / 4) as u8,
            intx: ((gsi - 16) % 4) as u8,
        }),
        _ => Err("Xen's IOAPIC has 48 pins (GSIs 0-47); higher GSIs need an MSI route"),
    }
}

/// Why raising a GSI failed.
#[derive(Debug)]
enum RaiseError {
    /// Xen's platform has no such input.
    Refused(&'static str),
    /// Xen refused the operation.
    Xen(XenCallError),
    /// Xen refused the MSI of the GSI's route.
    Msi(MsiMessage, XenCallError),
}

impl RaiseError {
    fn into_vm_error(self, gsi: u32) -> VmError {
        match self {
            RaiseError::Refused(reason) => VmError::InvalidRoute { gsi, reason },
            RaiseError::Xen(err) => VmError::Irq {
                op: err.op,
                gsi,
                source: err.source,
            },
            RaiseError::Msi(msi, err) => VmError::Msi {
                msi,
                source: err.source,
            },
        }
    }
}

/// A split irqchip ([`VmConfig::split_irqchip`](crate::VmConfig::split_irqchip)): Xen's
/// local APICs only, the VMM's IOAPIC sending MSIs (see `eoi.rs`).
#[derive(Debug)]
pub(crate) struct Split {
    /// The level-triggered vectors the vCPUs watch for the guest's EOI.
    pub(crate) eoi: Arc<EoiWatch>,
    /// The VM's vCPUs (`VmConfig::max_vcpus`).
    pub(crate) vcpus: u32,
}

/// Why a GSI without an MSI route cannot be raised with a split irqchip.
const SPLIT_UNROUTED: &str = "with a split irqchip Xen has no IOAPIC or PIC: a GSI reaches the \
                              guest only through its MSI route (the VMM's IOAPIC sets them)";

/// What the VM and its reactor thread share.
#[derive(Debug)]
struct State {
    handles: Arc<Handles>,
    domid: DomId,
    /// With a split irqchip.
    split: Option<Split>,
    /// vmkit's MSI routes, by GSI.
    msi_routes: RwLock<HashMap<u32, MsiMessage>>,
    /// Registered irqfds, by epoll token.
    irqfds: Mutex<HashMap<u64, Irqfd>>,
}

#[derive(Debug)]
struct Irqfd {
    gsi: u32,
    /// The caller's descriptor number, which identifies the registration on unregister.
    raw_fd: i32,
    /// Our own duplicate, which the reactor waits on and reads.
    fd: EventFd,
    /// A level-triggered irqfd's line: its resample eventfd and where it is.
    resample: Option<ResampleLine>,
}

#[derive(Debug)]
struct ResampleLine {
    /// Our duplicate of the caller's resample eventfd, signalled at the guest's EOI.
    fd: EventFd,
    /// The line Xen sees pulsed, and its IOAPIC pin (GSI `n` is pin `n`).
    line: Line,
    pin: usize,
    stage: Stage,
}

/// The `REMOTE_IRR` bit of a redirection entry.
const REMOTE_IRR: u64 = 1 << 14;

impl State {
    /// Sets `gsi` to `level`: through its MSI route (a rising level sends the message), or
    /// the ISA IRQ or INTx that drives it.
    fn set_level(&self, gsi: u32, level: bool) -> Result<(), RaiseError> {
        let route = self
            .msi_routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&gsi)
            .copied();
        if let Some(msi) = route {
            if !level {
                return Ok(());
            }
            return self.send_msi(msi).map_err(|e| RaiseError::Msi(msi, e));
        }
        if self.split.is_some() {
            return Err(RaiseError::Refused(SPLIT_UNROUTED));
        }
        let line = line_of(gsi).map_err(RaiseError::Refused)?;
        self.drive(line, level).map_err(RaiseError::Xen)
    }

    /// Sets the level of one of Xen's interrupt inputs.
    fn drive(&self, line: Line, level: bool) -> Result<(), XenCallError> {
        let dm = &self.handles.dm;
        match line {
            Line::Isa(irq) => dm.set_isa_irq_level(self.domid, irq, level),
            Line::Intx { device, intx } => dm.set_pci_intx_level(self.domid, device, intx, level),
        }
    }

    /// Xen's IOAPIC record (the domctl pauses the domain while it copies it).
    fn ioapic(&self) -> Result<HvmHwVioapic, XenCallError> {
        let mut buf = vec![0u8; std::mem::size_of::<HvmHwVioapic>()];
        self.handles
            .xc
            .hvm_record(u32::from(self.domid), HVM_SAVE_CODE_IOAPIC, 0, &mut buf)?;
        // The buffer has the record's size, so this always succeeds.
        Ok(HvmHwVioapic::from_bytes(&buf).unwrap_or_default())
    }

    /// Moves the resample lines on (see `resample.rs`): signals those whose EOI the IOAPIC
    /// record shows, and pulses, with the domain paused, those Xen would now deliver.
    fn track_resample_lines(&self) {
        let mut irqfds = self.irqfds.lock().unwrap_or_else(|e| e.into_inner());
        let high = |i: &Irqfd| i.resample.as_ref().is_some_and(|r| r.stage != Stage::Low);
        if !irqfds.values().any(high) {
            return;
        }
        let ioapic = match self.ioapic() {
            Ok(ioapic) => ioapic,
            Err(err) => {
                trace!("d{}: resample: reading the IOAPIC: {err}", self.domid);
                return;
            }
        };
        let mut pulse = false;
        for line in irqfds.values_mut().filter_map(|i| i.resample.as_mut()) {
            match resample::step(line.stage, entry(&ioapic, line.pin)) {
                Step::Eoi => {
                    line.stage = Stage::Low;
                    // Xen's line is already low; the device checks whether it still needs
                    // the interrupt and writes the irqfd again if so.
                    let _ = line.fd.write(1);
                }
                Step::Pulse => pulse = true,
                Step::Wait => {}
            }
        }
        if !pulse {
            return;
        }
        // Paused, the guest cannot mask the pin or EOI between the read and the pulse, so a
        // pulse on an unmasked idle level pin is delivered and in service when it returns.
        let domid = u32::from(self.domid);
        if let Err(err) = self.handles.xc.pause(domid) {
            trace!("d{}: resample: pausing: {err}", self.domid);
            return;
        }
        let pulsed = self.ioapic().and_then(|mut ioapic| {
            for line in irqfds.values_mut().filter_map(|i| i.resample.as_mut()) {
                let step = resample::step(line.stage, entry(&ioapic, line.pin));
                if step == Step::Pulse {
                    self.drive(line.line, true)?;
                    self.drive(line.line, false)?;
                    // Xen latched it: another line on the pin waits for this one's EOI.
                    if let Some(e) = ioapic.redirtbl.get_mut(line.pin) {
                        *e |= REMOTE_IRR;
                    }
                    line.stage = resample::after(line.stage, step);
                }
            }
            Ok(())
        });
        let unpaused = self.handles.xc.unpause(domid);
        if let Err(err) = pulsed.and(unpaused) {
            trace!("d{}: resample: pulsing: {err}", self.domid);
        }
    }

    /// Whether some resample line is high (the reactor then polls).
    fn resample_pending(&self) -> bool {
        self.irqfds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|i| i.resample.as_ref().is_some_and(|r| r.stage != Stage::Low))
    }

    fn send_msi(&self, msi: MsiMessage) -> Result<(), XenCallError> {
        match &self.split {
            Some(split) if msi.data & eoi::MSI_DATA_LEVEL != 0 => self.send_level_msi(split, msi),
            _ => self
                .handles
                .dm
                .inject_msi(self.domid, msi.address, msi.data),
        }
    }

    /// Sends a split irqchip's level-triggered MSI and has the vCPUs it reached watch for
    /// its EOI (see `eoi.rs`): with the domain paused, so that none can end it before vmkit
    /// has seen where it went.
    fn send_level_msi(&self, split: &Split, msi: MsiMessage) -> Result<(), XenCallError> {
        let domid = u32::from(self.domid);
        let xc = &self.handles.xc;
        xc.pause(domid)?;
        let sent = self
            .handles
            .dm
            .inject_msi(self.domid, msi.address, msi.data)
            .map(|()| {
                let vector = (msi.data & 0xff) as u8;
                let mut regs = vec![0u8; HVM_LAPIC_REGS_SIZE];
                for vcpu in 0..split.vcpus {
                    // A vCPU whose record cannot be read (none yet) was sent nothing.
                    let read = u16::try_from(vcpu).map(|instance| {
                        xc.hvm_record(domid, HVM_SAVE_CODE_LAPIC_REGS, instance, &mut regs)
                    });
                    if matches!(read, Ok(Ok(()))) && eoi::holds(&regs, vector) {
                        split.eoi.watch(vcpu, vector);
                    }
                }
            });
        let unpaused = xc.unpause(domid);
        sent.and(unpaused)
    }

    /// Whether an irqfd on `gsi` can work: now, or with a split irqchip once the VMM's
    /// IOAPIC routes it (until then its writes are dropped, as on KVM).
    fn check_gsi(&self, gsi: u32) -> Result<(), &'static str> {
        let routed = self
            .msi_routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&gsi);
        if routed {
            Ok(())
        } else if self.split.is_some() {
            if gsi < MAX_ROUTES {
                Ok(())
            } else {
                Err("GSIs run from 0 to 4095")
            }
        } else {
            line_of(gsi).map(drop)
        }
    }
}

/// The irqfd reactor thread.
#[derive(Debug)]
struct Reactor {
    epoll: Arc<Epoll>,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Reactor {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A Xen VM's interrupt plumbing (only a VM with an irqchip has one).
#[derive(Debug)]
pub(crate) struct Interrupts {
    state: Arc<State>,
    reactor: Mutex<Option<Reactor>>,
    next_token: AtomicU64,
}

impl Interrupts {
    /// The plumbing of domain `domid`; `split` with a split irqchip.
    pub(crate) fn new(handles: Arc<Handles>, domid: DomId, split: Option<Split>) -> Self {
        Interrupts {
            state: Arc::new(State {
                handles,
                domid,
                split,
                msi_routes: RwLock::new(HashMap::new()),
                irqfds: Mutex::new(HashMap::new()),
            }),
            reactor: Mutex::new(None),
            next_token: AtomicU64::new(STOP + 1),
        }
    }

    /// With a split irqchip, the vectors its vCPUs watch for the guest's EOI.
    pub(crate) fn eoi_watch(&self) -> Option<&EoiWatch> {
        self.state.split.as_ref().map(|split| &*split.eoi)
    }

    /// Whether the VM has a split irqchip.
    pub(crate) fn is_split(&self) -> bool {
        self.state.split.is_some()
    }

    /// [`Vm::set_irq_line`](crate::Vm::set_irq_line).
    pub(crate) fn set_irq_line(&self, gsi: u32, level: bool) -> Result<(), VmError> {
        self.state
            .set_level(gsi, level)
            .map_err(|e| e.into_vm_error(gsi))
    }

    /// [`Vm::signal_msi`](crate::Vm::signal_msi).
    pub(crate) fn signal_msi(&self, msi: MsiMessage) -> Result<(), VmError> {
        self.state.send_msi(msi).map_err(|err| VmError::Msi {
            msi,
            source: err.source,
        })
    }

    /// [`Vm::set_gsi_routing`](crate::Vm::set_gsi_routing): checks the table against Xen's
    /// wiring and keeps its MSI routes.
    pub(crate) fn set_gsi_routing(&self, routes: &[IrqRoute]) -> Result<(), VmError> {
        let msi_routes = check_routes(routes, self.state.split.is_some())?;
        *self
            .state
            .msi_routes
            .write()
            .unwrap_or_else(|e| e.into_inner()) = msi_routes;
        Ok(())
    }

    /// [`Vm::register_irqfd`](crate::Vm::register_irqfd).
    pub(crate) fn register_irqfd(
        &self,
        fd: &EventFd,
        gsi: u32,
        resample: Option<&EventFd>,
    ) -> Result<(), VmError> {
        self.state
            .check_gsi(gsi)
            .map_err(|reason| VmError::InvalidRoute { gsi, reason })?;
        let irq_err = |op, source| VmError::Irq { op, gsi, source };
        let own = fd
            .try_clone()
            .map_err(|e| irq_err("duplicating the irqfd", e))?;
        let resample = match resample {
            None => None,
            Some(resample) => Some(ResampleLine {
                fd: resample
                    .try_clone()
                    .map_err(|e| irq_err("duplicating the resample eventfd", e))?,
                line: self.resample_line(gsi)?,
                pin: gsi as usize,
                stage: Stage::Low,
            }),
        };
        let mut irqfds = self.state.irqfds.lock().unwrap_or_else(|e| e.into_inner());
        if irqfds
            .values()
            .any(|i| i.raw_fd == fd.as_raw_fd() && i.gsi == gsi)
        {
            return Err(irq_err(
                "registering an irqfd",
                io::Error::from_raw_os_error(libc::EEXIST),
            ));
        }
        if irqfds.len() >= MAX_IRQFDS {
            return Err(irq_err(
                "registering an irqfd",
                io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        let epoll = self
            .reactor_epoll()
            .map_err(|e| irq_err("starting the irqfd thread", e))?;
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        epoll
            .ctl(
                ControlOperation::Add,
                own.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(|e| irq_err("epoll_ctl(EPOLL_CTL_ADD) for the irqfd", e))?;
        irqfds.insert(
            token,
            Irqfd {
                gsi,
                raw_fd: fd.as_raw_fd(),
                fd: own,
                resample,
            },
        );
        Ok(())
    }

    /// The IOAPIC-wired input a level-triggered irqfd on `gsi` drives: it is followed on its
    /// IOAPIC pin, so it cannot be an MSI.
    fn resample_line(&self, gsi: u32) -> Result<Line, VmError> {
        if self.state.split.is_some() {
            return Err(VmError::Unsupported {
                op: "registering a level-triggered irqfd (resample)",
                reason: "with a split irqchip the VMM's IOAPIC keeps the line's level and \
                         hears the EOI (VcpuExit::IoapicEoi); Xen has no IOAPIC pin to follow",
            });
        }
        let routed = self
            .state
            .msi_routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&gsi);
        if routed {
            return Err(VmError::InvalidRoute {
                gsi,
                reason: "a level-triggered irqfd (resample) needs an IOAPIC pin, and this GSI \
                         is routed to an MSI, which has no EOI to wait for",
            });
        }
        line_of(gsi).map_err(|reason| VmError::InvalidRoute { gsi, reason })
    }

    /// [`Vm::unregister_irqfd`](crate::Vm::unregister_irqfd).
    pub(crate) fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), VmError> {
        let mut irqfds = self.state.irqfds.lock().unwrap_or_else(|e| e.into_inner());
        let token = irqfds
            .iter()
            .find(|(_, i)| i.raw_fd == fd.as_raw_fd() && i.gsi == gsi)
            .map(|(&token, _)| token)
            .ok_or_else(|| VmError::Irq {
                op: "unregistering an irqfd",
                gsi,
                source: io::Error::from_raw_os_error(libc::ENOENT),
            })?;
        if let Some(irqfd) = irqfds.remove(&token) {
            if let Some(reactor) = &*self.reactor.lock().unwrap_or_else(|e| e.into_inner()) {
                // Closing our duplicate would remove it from the epoll set too; say so first.
                let _ = reactor.epoll.ctl(
                    ControlOperation::Delete,
                    irqfd.fd.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
        }
        Ok(())
    }

    /// The reactor's epoll set, starting the reactor the first time.
    fn reactor_epoll(&self) -> io::Result<Arc<Epoll>> {
        let mut reactor = self.reactor.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = &*reactor {
            return Ok(Arc::clone(&r.epoll));
        }
        let epoll = Arc::new(Epoll::new()?);
        let stop = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        let thread = std::thread::Builder::new()
            .name(format!("vmkit-xen-irqfd-d{}", self.state.domid))
            .spawn({
                let (epoll, state) = (Arc::clone(&epoll), Arc::clone(&self.state));
                move || serve(&epoll, &state)
            })?;
        *reactor = Some(Reactor {
            epoll: Arc::clone(&epoll),
            stop,
            thread: Some(thread),
        });
        Ok(epoll)
    }
}

/// The reactor: pulses the GSI of each irqfd written, and follows level-triggered ones to
/// their EOI, until the stop eventfd is written.
fn serve(epoll: &Epoll, state: &State) {
    let mut events = vec![EpollEvent::default(); 32];
    let poll_ms = i32::try_from(resample::EOI_POLL.as_millis()).unwrap_or(1);
    loop {
        // While a resample line is high, wake to read the IOAPIC for its EOI.
        let timeout = if state.resample_pending() {
            poll_ms
        } else {
            -1
        };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                trace!("d{}: irqfd thread: epoll_wait: {err}", state.domid);
                return;
            }
        };
        for event in &events[..n] {
            let token = event.data();
            if token == STOP {
                return;
            }
            let gsi = {
                let mut irqfds = state.irqfds.lock().unwrap_or_else(|e| e.into_inner());
                let Some(irqfd) = irqfds.get_mut(&token) else {
                    continue; // Unregistered meanwhile.
                };
                // The caller may have made it blocking: read only what poll says is there.
                if !readable(&irqfd.fd) || irqfd.fd.read().is_err() {
                    continue;
                }
                if let Some(line) = &mut irqfd.resample {
                    // Raised (if it was high already, it stays so until the EOI, as on KVM).
                    if line.stage == Stage::Low {
                        line.stage = Stage::Waiting;
                    }
                    continue;
                }
                irqfd.gsi
            };
            let pulse = state
                .set_level(gsi, true)
                .and_then(|()| state.set_level(gsi, false));
            if let Err(err) = pulse {
                trace!("d{}: irqfd on GSI {gsi}: {err:?}", state.domid);
            }
        }
        state.track_resample_lines();
    }
}

/// Pin `pin`'s redirection entry in `ioapic` (a masked idle entry if there is no such pin).
fn entry(ioapic: &HvmHwVioapic, pin: usize) -> u64 {
    ioapic.redirtbl.get(pin).copied().unwrap_or(1 << 16)
}

/// Whether `fd` can be read without blocking.
fn readable(fd: &EventFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    rc == 1 && pfd.revents & libc::POLLIN != 0
}

/// Checks a routing table against Xen's fixed wiring (none with a `split` irqchip); returns
/// its MSI routes.
fn check_routes(routes: &[IrqRoute], split: bool) -> Result<HashMap<u32, MsiMessage>, VmError> {
    let invalid = |gsi, reason| Err(VmError::InvalidRoute { gsi, reason });
    if routes.len() > MAX_ROUTES as usize {
        let gsi = routes.last().map_or(0, IrqRoute::gsi);
        return invalid(gsi, "more than 4096 routes");
    }
    let mut msi_routes = HashMap::new();
    let mut wired = std::collections::HashSet::new();
    for route in routes {
        let gsi = route.gsi();
        if gsi >= MAX_ROUTES {
            return invalid(gsi, "GSIs run from 0 to 4095");
        }
        match *route {
            IrqRoute::Msi { msi, .. } => {
                if msi_routes.insert(gsi, msi).is_some() {
                    return invalid(gsi, "Xen's platform sends a GSI to at most one MSI");
                }
            }
            IrqRoute::Irqchip { .. } if split => {
                return invalid(
                    gsi,
                    "with a split irqchip Xen has no IOAPIC or PIC to route to: only MSI routes",
                );
            }
            IrqRoute::Irqchip { chip, pin, .. } => {
                let fixed = match chip {
                    IrqChip::PicMaster => pin < 8 && gsi == pin,
                    IrqChip::PicSlave => pin < 8 && gsi == pin + 8,
                    IrqChip::IoApic => pin < IOAPIC_PINS && gsi == pin,
                };
                if !fixed {
                    return invalid(
                        gsi,
                        "Xen's interrupt wiring is fixed: GSI n is IOAPIC pin n (n < 48) and \
                         PIC input n (n < 16); other irqchip routes cannot be made",
                    );
                }
                wired.insert(gsi);
            }
        }
    }
    if let Some(&gsi) = msi_routes.keys().find(|gsi| wired.contains(gsi)) {
        return invalid(
            gsi,
            "Xen cannot send one GSI both to an MSI and to its interrupt controllers",
        );
    }
    Ok(msi_routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsis_map_to_xens_inputs() {
        assert!(line_of(0).is_err());
        assert_eq!(line_of(2), Ok(Line::Isa(2)));
        assert_eq!(line_of(15), Ok(Line::Isa(15)));
        assert_eq!(line_of(16), Ok(Line::Intx { device: 0, intx: 0 }));
        assert_eq!(line_of(17), Ok(Line::Intx { device: 0, intx: 1 }));
        assert_eq!(line_of(47), Ok(Line::Intx { device: 7, intx: 3 }));
        assert!(line_of(48).is_err());
        // Xen's wiring of INTx to GSIs for devices 0-7: 16 + 4 * device + intx (its
        // hvm_pci_intx_gsi, with device >> 3 being 0), each GSI reached by exactly one INTx.
        let mut seen = std::collections::HashSet::new();
        for gsi in 16..IOAPIC_PINS {
            let Ok(Line::Intx { device, intx }) = line_of(gsi) else {
                panic!("GSI {gsi}");
            };
            let (d, i) = (u32::from(device), u32::from(intx));
            assert_eq!((((d << 2) + (d >> 3) + i) & 31) + 16, gsi);
            assert!(seen.insert((device, intx)));
        }
    }

    #[test]
    fn the_pc_defaults_and_msi_routes_are_accepted() {
        let mut routes = IrqRoute::pc_defaults();
        let msi = MsiMessage::x86(0, 0x3a);
        routes.push(IrqRoute::Msi { gsi: 30, msi });
        let table = check_routes(&routes, false).unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(table.get(&30), Some(&msi));
    }

    #[test]
    fn other_wiring_is_refused_with_the_reason() {
        let moved = [IrqRoute::Irqchip {
            gsi: 5,
            chip: IrqChip::IoApic,
            pin: 6,
        }];
        let err = check_routes(&moved, false).unwrap_err();
        assert!(err.to_string().contains("GSI 5"), "{err}");
        assert!(err.to_string().contains("fixed"), "{err}");
        let both = [
            IrqRoute::Irqchip {
                gsi: 20,
                chip: IrqChip::IoApic,
                pin: 20,
            },
            IrqRoute::Msi {
                gsi: 20,
                msi: MsiMessage::x86(0, 0x30),
            },
        ];
        assert!(check_routes(&both, false).is_err());
        let high = [IrqRoute::Msi {
            gsi: 5000,
            msi: MsiMessage::x86(0, 0x30),
        }];
        assert!(check_routes(&high, false).is_err());
    }

    #[test]
    fn a_split_irqchip_takes_msi_routes_only() {
        // The VMM's IOAPIC routes its pins, GSI 0 included, to MSIs.
        let pins: Vec<IrqRoute> = (0u8..24)
            .map(|pin| IrqRoute::Msi {
                gsi: u32::from(pin),
                msi: MsiMessage::x86(0, 0x20 + pin),
            })
            .collect();
        assert_eq!(check_routes(&pins, true).unwrap().len(), 24);
        let err = check_routes(&IrqRoute::pc_defaults(), true).unwrap_err();
        assert!(err.to_string().contains("split irqchip"), "{err}");
    }
}
