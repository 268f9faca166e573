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

/// Why a device snapshot cannot be restored. A snapshot is untrusted input: every value is
/// checked as strictly as the device's own register interface would allow, and each error
/// names the field and its value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The device could not be created.
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
    let dup = evt.try_clone().map_err(|source| DeviceError::EventFd {
        device,
        purpose,
        source,
    })?;
    Ok((evt, dup))
}
