//! The one convention by which a device saves and restores its state.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A device whose state goes into a snapshot and comes back out of one.
///
/// Every device of vmkit's device crates implements it (the legacy PC
/// devices of `vmkit-devices`, the virtio devices of `vmkit-virtio` and the
/// virtio-mmio transport around them); a VMM's own devices can too. It lives
/// in this format crate so that a device crate can implement it without
/// depending on a hypervisor backend.
///
/// # The convention
///
/// - **Saving** ([`Persist::save_state`]) returns a plain serde value,
///   [`Persist::State`]. The VMM calls it with the device quiescent: its
///   vCPUs stopped, and any thread that drives the device (an ioeventfd
///   worker, an input thread) stopped too, so that device state and guest
///   memory are taken at the same instant.
/// - **Restoring** ([`Persist::restore_state`]) happens *in place*, on a
///   fresh device: the VMM builds the device exactly as for a first boot,
///   on the same host resources (it reopens the disk file, gives the serial
///   port its output, creates the transport around the fresh virtio device),
///   restores the state into it, and only then shares it (registers it on a
///   bus, hands it to vCPU threads). Host resources keep working as they
///   were built: an eventfd the VMM already registered as an irqfd stays the
///   device's, and an interrupt that was pending at save time is signalled
///   on it again.
/// - **What the state covers**: what the guest set up and the device holds
///   on the guest's behalf (registers, buffered input, negotiated queues,
///   counters), plus, where the device can check it, a record of how the
///   device was built (a disk's capacity, its id), so that a restore onto
///   other resources is refused instead of served silently.
/// - **What it does not cover**: guest memory (the VMM saves it with the
///   VM), host resources (files and their contents, output writers,
///   eventfds, sockets, TAP devices) and host-side diagnostics. The VMM
///   reattaches those by building the fresh device on them.
/// - **Untrusted input**: a state read from a file may be corrupt or
///   hostile. `restore_state` validates every value at least as strictly as
///   the device's register interface and constructor would, and refuses a
///   state the device could not have reached with a [`Persist::Error`] that
///   names the field and its value. It never panics. A refused restore may
///   leave the device half-restored: the VMM discards it.
///
/// # On disk
///
/// [`crate::Writer::write_device`] writes a device's state as a
/// [`crate::SectionTag::DEVICE`] section: the section's index is the
/// device's number in the VMM, its version is [`Persist::VERSION`], and its
/// payload is [`Persist::KIND`] followed by the state.
/// [`crate::Section::decode_device`] and [`crate::Snapshot::read_device`]
/// refuse a section of another kind, then one of another version, before
/// decoding the state. The kind leads the payload in every version, so a
/// reader can always tell which device a section belongs to.
///
/// # Example
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use vmkit_snapshot::Persist;
///
/// /// A scratch register that holds only even values.
/// struct Scratch(u8);
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// struct ScratchState { value: u8 }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("scratch value {0:#x} is odd")]
/// struct OddValue(u8);
///
/// impl Persist for Scratch {
///     const KIND: &'static str = "scratch";
///     const VERSION: u16 = 1;
///     type State = ScratchState;
///     type Error = OddValue;
///
///     fn save_state(&self) -> ScratchState {
///         ScratchState { value: self.0 }
///     }
///
///     fn restore_state(&mut self, state: &ScratchState) -> Result<(), OddValue> {
///         if state.value % 2 != 0 {
///             return Err(OddValue(state.value));
///         }
///         self.0 = state.value;
///         Ok(())
///     }
/// }
///
/// let mut fresh = Scratch(0);
/// fresh.restore_state(&Scratch(4).save_state()).unwrap();
/// assert_eq!(fresh.0, 4);
/// assert!(fresh.restore_state(&ScratchState { value: 3 }).is_err());
/// ```
pub trait Persist {
    /// The kind of device, stored with each saved state and checked when
    /// one is read back: a short, stable, lower-case name such as
    /// `"serial"` or `"virtio-mmio"`. Two implementations whose states
    /// differ must not share a kind.
    const KIND: &'static str;

    /// The version of [`Persist::State`]'s encoding, stored as the section
    /// version. Change it whenever the serialized form of the state changes
    /// (a field added, removed or reordered, or one of the state's own
    /// parts changing); a reader refuses any other version.
    const VERSION: u16;

    /// The saved state: plain data, with no host resources in it.
    type State: Serialize + DeserializeOwned + Clone + Debug + PartialEq;

    /// Why a state cannot be restored: names the field and its value.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The device's state for a snapshot. See the trait documentation for
    /// when to call it and what it covers.
    fn save_state(&self) -> Self::State;

    /// Restores `state`, saved by [`Persist::save_state`] of a device of the
    /// same kind and possibly read from an untrusted file, into this fresh
    /// device, built on the same host resources as the saved one.
    fn restore_state(&mut self, state: &Self::State) -> Result<(), Self::Error>;
}

impl<P: Persist + ?Sized> Persist for Box<P> {
    const KIND: &'static str = P::KIND;
    const VERSION: u16 = P::VERSION;
    type State = P::State;
    type Error = P::Error;

    fn save_state(&self) -> P::State {
        (**self).save_state()
    }

    fn restore_state(&mut self, state: &P::State) -> Result<(), P::Error> {
        (**self).restore_state(state)
    }
}
