//! What split and packed queues have in common: the driver-set
//! configuration (size, three area addresses, ready) and its validation,
//! the negotiated flags, and the broken mark. [`crate::SplitQueue`] and
//! [`crate::PackedQueue`] each hold one [`RingConfig`] and differ only in
//! the layout rules it applies ([`QueueLayout`]).

use vm_memory::GuestAddress;

use crate::check_max_size;
use crate::error::{Error, Result, RingArea};

/// The layout of a virtqueue in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum QueueLayout {
    /// The split layout (virtio 1.2, 2.7): descriptor table, available
    /// ring, used ring.
    Split,
    /// The packed layout (virtio 1.2, 2.8; `VIRTIO_F_RING_PACKED`):
    /// descriptor ring, driver and device event suppression structures.
    Packed,
}

impl QueueLayout {
    /// The three areas a driver places, in transport order (descriptor
    /// area, driver area, device area), with their required alignments.
    pub const fn areas(self) -> [(RingArea, u64); 3] {
        match self {
            QueueLayout::Split => [
                (RingArea::DescriptorTable, crate::split::DESC_TABLE_ALIGN),
                (RingArea::AvailRing, crate::split::AVAIL_RING_ALIGN),
                (RingArea::UsedRing, crate::split::USED_RING_ALIGN),
            ],
            QueueLayout::Packed => [
                (RingArea::DescriptorRing, crate::packed::DESC_RING_ALIGN),
                (RingArea::DriverArea, crate::packed::EVENT_AREA_ALIGN),
                (RingArea::DeviceArea, crate::packed::EVENT_AREA_ALIGN),
            ],
        }
    }

    /// Whether the queue size must be a power of two (split queues only).
    pub const fn power_of_two(self) -> bool {
        matches!(self, QueueLayout::Split)
    }

    /// The size of a fresh queue with maximum `max` (at least 1): the
    /// largest power of two not above it for split, `max` for packed.
    pub const fn initial_size(self, max: u16) -> u16 {
        match self {
            QueueLayout::Split => {
                let lz = max.leading_zeros();
                1 << (15 - if lz > 15 { 15 } else { lz })
            }
            QueueLayout::Packed => max,
        }
    }
}

impl std::fmt::Display for QueueLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QueueLayout::Split => "split",
            QueueLayout::Packed => "packed",
        })
    }
}

/// The configuration and flags of a queue of either layout.
#[derive(Clone, Debug)]
pub(crate) struct RingConfig {
    pub(crate) layout: QueueLayout,
    pub(crate) max_size: u16,
    pub(crate) size: u16,
    pub(crate) ready: bool,
    /// Descriptor table (split) or ring (packed).
    pub(crate) desc: GuestAddress,
    /// Available ring (split) or driver event suppression area (packed).
    pub(crate) driver: GuestAddress,
    /// Used ring (split) or device event suppression area (packed).
    pub(crate) device: GuestAddress,
    pub(crate) event_idx: bool,
    pub(crate) indirect: bool,
    pub(crate) broken: bool,
}

/// The saved values of a [`RingConfig`], to be validated.
pub(crate) struct SavedConfig {
    pub(crate) max_size: u16,
    pub(crate) size: u16,
    pub(crate) ready: bool,
    pub(crate) areas: [u64; 3],
    pub(crate) event_idx: bool,
    pub(crate) indirect: bool,
    pub(crate) broken: bool,
}

impl RingConfig {
    /// A fresh configuration; `max` must be between 1 and 32768.
    pub(crate) fn new(layout: QueueLayout, max: u16) -> Result<Self> {
        check_max_size(max)?;
        Ok(RingConfig::fresh(layout, max))
    }

    /// A fresh configuration for an already checked maximum.
    pub(crate) fn fresh(layout: QueueLayout, max: u16) -> Self {
        RingConfig {
            layout,
            max_size: max,
            size: layout.initial_size(max),
            ready: false,
            desc: GuestAddress(0),
            driver: GuestAddress(0),
            device: GuestAddress(0),
            event_idx: false,
            indirect: false,
            broken: false,
        }
    }

    /// Back to the state right after `new` (same layout and maximum).
    pub(crate) fn reset(&mut self) {
        *self = RingConfig::fresh(self.layout, self.max_size);
    }

    fn check_not_ready(&self) -> Result<()> {
        if self.ready {
            Err(Error::ConfigWhileReady)
        } else {
            Ok(())
        }
    }

    pub(crate) fn check_usable(&self) -> Result<()> {
        if !self.ready {
            return Err(Error::NotReady);
        }
        if self.broken {
            return Err(Error::Broken);
        }
        Ok(())
    }

    pub(crate) fn check_ready(&self) -> Result<()> {
        if self.ready {
            Ok(())
        } else {
            Err(Error::NotReady)
        }
    }

    pub(crate) fn set_size(&mut self, size: u16) -> Result<()> {
        self.check_not_ready()?;
        let power_of_two = self.layout.power_of_two();
        if size == 0 || size > self.max_size || (power_of_two && !size.is_power_of_two()) {
            return Err(Error::InvalidQueueSize {
                size,
                max: self.max_size,
                power_of_two,
            });
        }
        self.size = size;
        Ok(())
    }

    /// Sets area `which` (0 descriptor, 1 driver, 2 device), checking its
    /// alignment for this layout.
    fn set_area(&mut self, which: usize, addr: GuestAddress) -> Result<()> {
        self.check_not_ready()?;
        let [desc, driver, device] = self.layout.areas();
        let (area, align, slot) = match which {
            0 => (desc.0, desc.1, &mut self.desc),
            1 => (driver.0, driver.1, &mut self.driver),
            _ => (device.0, device.1, &mut self.device),
        };
        if !addr.0.is_multiple_of(align) {
            return Err(Error::MisalignedAddress {
                area,
                addr: addr.0,
                align,
            });
        }
        *slot = addr;
        Ok(())
    }

    pub(crate) fn set_desc(&mut self, addr: GuestAddress) -> Result<()> {
        self.set_area(0, addr)
    }

    pub(crate) fn set_driver(&mut self, addr: GuestAddress) -> Result<()> {
        self.set_area(1, addr)
    }

    pub(crate) fn set_device(&mut self, addr: GuestAddress) -> Result<()> {
        self.set_area(2, addr)
    }

    /// The saved values, in [`SavedConfig`] form.
    pub(crate) fn saved(&self) -> SavedConfig {
        SavedConfig {
            max_size: self.max_size,
            size: self.size,
            ready: self.ready,
            areas: [self.desc.0, self.driver.0, self.device.0],
            event_idx: self.event_idx,
            indirect: self.indirect,
            broken: self.broken,
        }
    }

    /// Rebuilds a configuration from saved values, validating each as if
    /// the driver had set it.
    pub(crate) fn restore(layout: QueueLayout, s: &SavedConfig) -> Result<Self> {
        let mut c = RingConfig::new(layout, s.max_size)?;
        c.set_size(s.size)?;
        c.set_desc(GuestAddress(s.areas[0]))?;
        c.set_driver(GuestAddress(s.areas[1]))?;
        c.set_device(GuestAddress(s.areas[2]))?;
        c.event_idx = s.event_idx;
        c.indirect = s.indirect;
        c.broken = s.broken;
        c.ready = s.ready;
        Ok(c)
    }
}
