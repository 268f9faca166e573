//! Errors of device creation.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// Why a device could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The kernel refused an eventfd (for example: too many open files).
    #[error("cannot create the {purpose} eventfd of the {device}")]
    EventFd {
        /// The device being created.
        device: &'static str,
        /// What the eventfd signals.
        purpose: &'static str,
        /// The error from `eventfd(2)`.
        #[source]
        source: io::Error,
    },
}

/// Why a device's saved state cannot be restored ([`Persist::restore_state`]). A saved state
/// is untrusted input: every value is checked as strictly as the device's own register
/// interface would allow, and each error names the field and its value.
///
/// [`Persist::restore_state`]: vmkit_snapshot::Persist::restore_state
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The device could not get what it needs to run again (an eventfd).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The serial receive buffer holds more bytes than the FIFO.
    #[error("serial in_buffer holds {len} bytes, more than the {max}-byte FIFO")]
    InBufferTooLong {
        /// The saved length.
        len: usize,
        /// The FIFO size.
        max: usize,
    },
    /// A register value the device could never hold.
    #[error("serial {register} = {value:#04x} is unreachable: {reason}")]
    Register {
        /// The register's name (`"IER"`, `"IIR"`, `"LSR"`, `"MSR"`).
        register: &'static str,
        /// The saved value.
        value: u8,
        /// Why it is unreachable.
        reason: &'static str,
    },
    /// The CMOS memory does not have its 128 bytes.
    #[error("CMOS ram holds {len} bytes, not {expected}")]
    CmosRamLength {
        /// The saved length.
        len: usize,
        /// The CMOS size.
        expected: usize,
    },
    /// A CMOS index beyond the 128 bytes (bit 7 is the NMI mask, never stored).
    #[error("CMOS index {index:#04x} is beyond the 128 bytes of CMOS memory")]
    CmosIndex {
        /// The saved index.
        index: u8,
    },
    /// A CMOS byte that the guest cannot have written.
    #[error("CMOS byte {index:#04x} = {value:#04x} is unreachable: {reason}")]
    CmosByte {
        /// Where it is in CMOS memory.
        index: u8,
        /// The saved value.
        value: u8,
        /// Why it is unreachable.
        reason: &'static str,
    },
    /// An ACPI PM register value with bits the block never holds.
    #[error("{register} = {value:#06x} has bits outside {bits:#06x}, the ones it can hold")]
    PmRegister {
        /// The register's name (`"PM1a_STS"`, `"PM1a_EN"`, `"PM1a_CNT"`).
        register: &'static str,
        /// The saved value.
        value: u16,
        /// The bits the register holds.
        bits: u16,
    },
    /// An IOAPIC state value the device could never hold.
    #[error("IOAPIC {field} = {value:#x} is unreachable: {reason}")]
    IoApic {
        /// The field (`"id"`, `"lines"`, `"redirection"`; for the entries' count, `value` is
        /// the count).
        field: &'static str,
        /// The saved value.
        value: u64,
        /// Why it is unreachable.
        reason: &'static str,
    },
}

/// A new non-blocking eventfd for `device`.
pub(crate) fn eventfd(device: &'static str, purpose: &'static str) -> Result<EventFd, DeviceError> {
    EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).map_err(|source| DeviceError::EventFd {
        device,
        purpose,
        source,
    })
}

/// A non-blocking eventfd and a duplicate of it (the device keeps one, the VMM gets the other).
pub(crate) fn eventfd_pair(
    device: &'static str,
    purpose: &'static str,
) -> Result<(EventFd, EventFd), DeviceError> {
    let evt = eventfd(device, purpose)?;
    let dup = duplicate(&evt, device, purpose)?;
    Ok((evt, dup))
}

/// A duplicate of `evt`, the `purpose` eventfd of `device`.
pub(crate) fn duplicate(
    evt: &EventFd,
    device: &'static str,
    purpose: &'static str,
) -> Result<EventFd, DeviceError> {
    evt.try_clone().map_err(|source| DeviceError::EventFd {
        device,
        purpose,
        source,
    })
}
