//! What a device thread needs of a transport, whichever it is: [`Transport`].

use vm_memory::GuestAddressSpace;

use crate::device::VirtioDevice;
use crate::mmio::{MmioError, MmioTransport};
use crate::pci::PciTransport;

/// What a device thread needs of a transport, whichever it is: virtio-mmio's
/// [`MmioTransport`] or virtio-pci's [`PciTransport`].
pub trait Transport: Send + Sync + 'static {
    /// The device behind the transport.
    type Device;
    /// Processes queue `index` (see `MmioTransport::process_queue`).
    fn process_queue(&self, index: u16) -> Result<bool, MmioError>;
    /// Runs `f` on the device, under the transport's lock.
    fn with_device<R>(&self, f: impl FnOnce(&mut Self::Device) -> R) -> R;
    /// The device status.
    fn status(&self) -> u32;
    /// The number of queues of the device.
    fn queue_count(&self) -> usize;
}

impl<S, D> Transport for PciTransport<S, D>
where
    S: GuestAddressSpace + Send + Sync + 'static,
    D: VirtioDevice<S::M> + Send + 'static,
{
    type Device = D;
    fn process_queue(&self, index: u16) -> Result<bool, MmioError> {
        PciTransport::process_queue(self, index)
    }
    fn with_device<R>(&self, f: impl FnOnce(&mut D) -> R) -> R {
        PciTransport::with_device(self, f)
    }
    fn status(&self) -> u32 {
        PciTransport::status(self)
    }
    fn queue_count(&self) -> usize {
        PciTransport::queue_count(self)
    }
}

impl<S, D> Transport for MmioTransport<S, D>
where
    S: GuestAddressSpace + Send + Sync + 'static,
    D: VirtioDevice<S::M> + Send + 'static,
{
    type Device = D;
    fn process_queue(&self, index: u16) -> Result<bool, MmioError> {
        MmioTransport::process_queue(self, index)
    }
    fn with_device<R>(&self, f: impl FnOnce(&mut D) -> R) -> R {
        MmioTransport::with_device(self, f)
    }
    fn status(&self) -> u32 {
        MmioTransport::status(self)
    }
    fn queue_count(&self) -> usize {
        self.with_device(|d| d.queue_max_sizes().len())
    }
}
