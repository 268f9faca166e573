//! PCI functions claimed for vmkit's ioreq server, so that Xen sends their configuration
//! cycles on ports 0xCFC-0xCFF to vmkit ([`Vm::claim_pci_config`](crate::Vm::claim_pci_config)).
//!
//! Xen 4.17 (`arch_ioreq_server_get_type_addr` in `xen/arch/x86/hvm/ioreq.c`) keeps the
//! last 4-byte write to port 0xCF8 of the domain (`hvm_access_cf8`, which then lets the
//! write go on to the ioreq server that claims the port: vmkit, so the VMM's latch sees the
//! same writes). An access to 0xCFC-0xCFF while that value has the enable bit set is a
//! configuration cycle: Xen sends it, as an `IOREQ_TYPE_PCI_CONFIG` request, only to the
//! server whose PCI range holds its segment/bus/device/function, and answers it with all
//! ones when none does. The ioreq module turns such a request back into the guest's port
//! access. Xen keeps the ranges in a rangeset of the server, which merges neighbours (a
//! whole bus is one range of 256 functions) and is freed with the server when the VM goes.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::memtype::Server;
use super::sys::ffi_parity as ffi;
use super::vm::lock;
use crate::pci::{PciBdf, PciFunctions};
use crate::VmError;

/// The functions claimed so far, by routing id (claims are idempotent; Xen refuses to map
/// a function twice with `EEXIST`).
#[derive(Debug, Default)]
pub(crate) struct PciClaims {
    claimed: Mutex<BTreeSet<u16>>,
}

impl PciClaims {
    /// Maps every function of `functions` not mapped yet to the server.
    pub(crate) fn claim(&self, server: Server<'_>, functions: PciFunctions) -> Result<(), VmError> {
        let mut claimed = lock(&self.claimed);
        for id in functions.routing_ids() {
            if claimed.contains(&id) {
                continue;
            }
            call(server, id, true)?;
            claimed.insert(id);
        }
        Ok(())
    }

    /// Unmaps every function of `functions` that is mapped.
    pub(crate) fn release(
        &self,
        server: Server<'_>,
        functions: PciFunctions,
    ) -> Result<(), VmError> {
        let mut claimed = lock(&self.claimed);
        for id in functions.routing_ids() {
            if !claimed.contains(&id) {
                continue;
            }
            call(server, id, false)?;
            claimed.remove(&id);
        }
        Ok(())
    }
}

/// Maps (`map`) or unmaps function `id` on segment 0.
fn call(server: Server<'_>, id: u16, map: bool) -> Result<(), VmError> {
    let bdf = PciBdf::from_routing_id(id);
    let (bus, device, function) = (bdf.bus(), bdf.device(), bdf.function());
    let rc = if map {
        // SAFETY: plain values on a live handle.
        unsafe {
            ffi::xendevicemodel_map_pcidev_to_ioreq_server(
                server.dm.raw(),
                server.domid,
                server.id,
                0,
                bus,
                device,
                function,
            )
        }
    } else {
        // SAFETY: plain values on a live handle.
        unsafe {
            ffi::xendevicemodel_unmap_pcidev_from_ioreq_server(
                server.dm.raw(),
                server.domid,
                server.id,
                0,
                bus,
                device,
                function,
            )
        }
    };
    if rc < 0 {
        return Err(VmError::PciConfig {
            op: if map {
                "xendevicemodel_map_pcidev_to_ioreq_server"
            } else {
                "xendevicemodel_unmap_pcidev_from_ioreq_server"
            },
            functions: PciFunctions::Function(bdf),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
