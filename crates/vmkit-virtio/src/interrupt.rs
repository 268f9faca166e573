//! How a transport's shared core signals the driver: one eventfd for
//! virtio-mmio, a vector per queue (MSI-X) or INTx for virtio-pci.

use vmm_sys_util::eventfd::EventFd;

/// The interrupt a transport raises for a queue's used buffers or for a
/// configuration change.
pub(crate) trait Interrupt {
    /// Signals the interrupt of `queue`, or the configuration change
    /// interrupt (`None`).
    fn signal(&self, queue: Option<u16>) -> std::io::Result<()>;

    /// The one eventfd behind every interrupt, if there is one: what a
    /// queue offload (vhost) signals itself.
    fn eventfd(&self) -> Option<&EventFd>;
}

impl Interrupt for EventFd {
    fn signal(&self, _queue: Option<u16>) -> std::io::Result<()> {
        self.write(1)
    }

    fn eventfd(&self) -> Option<&EventFd> {
        Some(self)
    }
}
