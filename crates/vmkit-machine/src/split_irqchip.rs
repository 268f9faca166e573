//! A split irqchip's userspace IOAPIC on a VM: [`attach_ioapic`] makes vmkit-devices'
//! [`IoApic`], puts its registers on the bus at [`IoApic::BASE`] and makes it the bus's EOI
//! listener, with a [`VmIoApicSink`] that delivers its interrupts through the [`Vm`].
//!
//! # Why devices need no change
//!
//! With a split irqchip ([`vmkit::VmConfig::split_irqchip`]) the hypervisor has no IOAPIC:
//! a GSI goes wherever the VM's GSI routing table sends it, and at first nowhere. The sink
//! keeps GSIs `0..24` routed to the MSI that the pin's redirection entry gives, rewriting
//! the table each time the guest reprograms an entry ([`IoApicSink::update_routes`]). So a
//! device that signals an irqfd registered on its legacy GSI (`Vm::register_irqfd(evt,
//! gsi)`, as every vmkit device does) reaches the guest through the hypervisor without a
//! trip through the VMM, exactly as with the in-kernel IOAPIC; lines the VMM raises itself
//! go through [`IoApic::set_irq`] and `Vm::signal_msi`. The same routes tell KVM which
//! vectors are level-triggered, so that their EOIs come back as
//! [`VcpuExit::IoapicEoi`](vmkit::VcpuExit::IoapicEoi), which the bus hands to the IOAPIC.
//!
//! The sink owns the VM's whole GSI routing table (setting routes replaces it): a VMM that
//! also routes MSIs of its own must merge them in, which this module does not do yet.

use std::sync::Arc;

use vm_device::bus::MmioAddress;
use vmkit::{IrqRoute, MsiMessage, Vm, VmError};
use vmkit_bus::{Bus, BusError};
use vmkit_devices::{IoApic, IoApicMsi, IoApicSink, IOAPIC_PINS};

/// What [`VmIoApicSink`] does with a failed interrupt or route update.
pub type ErrorReport = Box<dyn Fn(&VmError) + Send + Sync>;

/// An [`IoApicSink`] over a [`Vm`]: interrupts through `Vm::signal_msi`, pin routes through
/// `Vm::set_gsi_routing` (see the [module documentation](self)).
pub struct VmIoApicSink {
    vm: Arc<dyn Vm>,
    on_error: ErrorReport,
}

impl std::fmt::Debug for VmIoApicSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmIoApicSink").finish_non_exhaustive()
    }
}

impl VmIoApicSink {
    /// A sink for `vm` that reports failures (which drop the interrupt or keep the old
    /// routes) to `on_error`.
    pub fn new(vm: Arc<dyn Vm>, on_error: ErrorReport) -> Self {
        VmIoApicSink { vm, on_error }
    }
}

fn message(msi: IoApicMsi) -> MsiMessage {
    MsiMessage {
        address: msi.address,
        data: msi.data,
    }
}

impl IoApicSink for VmIoApicSink {
    fn send_msi(&self, msi: IoApicMsi) {
        if let Err(err) = self.vm.signal_msi(message(msi)) {
            (self.on_error)(&err);
        }
    }

    fn update_routes(&self, routes: &[Option<IoApicMsi>; IOAPIC_PINS]) {
        let table: Vec<IrqRoute> = (0u32..)
            .zip(routes)
            .filter_map(|(gsi, route)| {
                route.map(|msi| IrqRoute::Msi {
                    gsi,
                    msi: message(msi),
                })
            })
            .collect();
        if let Err(err) = self.vm.set_gsi_routing(&table) {
            (self.on_error)(&err);
        }
    }
}

/// Makes the userspace IOAPIC of `vm` (created with a split irqchip), registers its
/// registers on `bus` at [`IoApic::BASE`] and makes it the bus's EOI listener. Failed
/// interrupts and route updates go to `on_error`.
pub fn attach_ioapic(
    vm: Arc<dyn Vm>,
    bus: &mut Bus,
    on_error: ErrorReport,
) -> Result<Arc<IoApic>, BusError> {
    let ioapic = Arc::new(IoApic::new(Arc::new(VmIoApicSink::new(vm, on_error))));
    bus.register_mmio(MmioAddress(IoApic::BASE), IoApic::SIZE, ioapic.clone())?;
    let listener = Arc::clone(&ioapic);
    bus.set_eoi_listener(Some(Arc::new(move |vector| {
        listener.end_of_interrupt(vector)
    })));
    Ok(ioapic)
}
