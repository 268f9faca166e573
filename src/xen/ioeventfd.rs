//! ioeventfds on Xen: guest writes that signal an eventfd instead of exiting.
//!
//! Xen has no ioeventfd of its own: every access vmkit serves arrives as an ioreq. So the
//! vCPU's ioreq path looks each single, direct write (not a string instruction, not data
//! in guest memory) up here before it makes an exit of it; a match signals the eventfd and
//! answers the ioreq at once, without returning from `run()`. Matching follows KVM: the
//! address is exact, [`DataMatch::Any`] takes a write of any width, a sized match takes
//! only writes of that width and value.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::RwLock;

use vmm_sys_util::eventfd::EventFd;

use super::ioreq::RawRequest;
use super::sys::abi::{IOREQ_TYPE_COPY, IOREQ_TYPE_PIO};
use crate::interrupt::{DataMatch, IoEventAddress};
use crate::vm::VmError;

/// The most ioeventfds one VM may have (KVM allows 1000 per bus).
const MAX_IOEVENTFDS: usize = 1000;

/// One registration.
#[derive(Debug)]
struct Entry {
    addr: IoEventAddress,
    datamatch: DataMatch,
    /// The caller's descriptor number, which identifies the registration on unregister.
    raw_fd: i32,
    /// Our own duplicate, written on a match.
    fd: EventFd,
}

/// A VM's ioeventfds.
#[derive(Debug, Default)]
pub(crate) struct IoEventFds {
    entries: RwLock<Vec<Entry>>,
}

fn io_error(op: &'static str, addr: IoEventAddress, errno: i32) -> VmError {
    VmError::IoEvent {
        op,
        addr,
        source: io::Error::from_raw_os_error(errno),
    }
}

/// The access width a data match takes, if it takes only one.
fn match_len(datamatch: DataMatch) -> Option<u32> {
    match datamatch {
        DataMatch::Any => None,
        DataMatch::U8(_) => Some(1),
        DataMatch::U16(_) => Some(2),
        DataMatch::U32(_) => Some(4),
        DataMatch::U64(_) => Some(8),
    }
}

fn match_value(datamatch: DataMatch) -> u64 {
    match datamatch {
        DataMatch::Any => 0,
        DataMatch::U8(v) => u64::from(v),
        DataMatch::U16(v) => u64::from(v),
        DataMatch::U32(v) => u64::from(v),
        DataMatch::U64(v) => v,
    }
}

/// Whether the write `request` is one `addr` with `datamatch` reacts to.
fn matches(addr: IoEventAddress, datamatch: DataMatch, request: &RawRequest) -> bool {
    if request.dir_read || request.data_is_ptr || request.count != 1 {
        return false;
    }
    let at = match (addr, request.kind) {
        (IoEventAddress::Pio(port), IOREQ_TYPE_PIO) => u64::from(port) == request.addr,
        (IoEventAddress::Mmio(mmio), IOREQ_TYPE_COPY) => mmio == request.addr,
        _ => false,
    };
    if !at {
        return false;
    }
    match match_len(datamatch) {
        None => true,
        Some(len) => {
            let mask = if len >= 8 {
                u64::MAX
            } else {
                (1u64 << (len * 8)) - 1
            };
            request.size == len && request.data & mask == match_value(datamatch)
        }
    }
}

impl IoEventFds {
    /// Registers `fd` for writes to `addr` matching `datamatch`.
    pub(crate) fn register(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<(), VmError> {
        const OP: &str = "registering an ioeventfd";
        let own = fd.try_clone().map_err(|source| VmError::IoEvent {
            op: "duplicating the ioeventfd",
            addr,
            source,
        })?;
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries
            .iter()
            .any(|e| e.addr == addr && e.datamatch == datamatch)
        {
            return Err(io_error(OP, addr, libc::EEXIST));
        }
        if entries.len() >= MAX_IOEVENTFDS {
            return Err(io_error(OP, addr, libc::ENOSPC));
        }
        entries.push(Entry {
            addr,
            datamatch,
            raw_fd: fd.as_raw_fd(),
            fd: own,
        });
        Ok(())
    }

    /// Undoes [`IoEventFds::register`] for the same descriptor, address and match.
    pub(crate) fn unregister(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<(), VmError> {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let at = entries
            .iter()
            .position(|e| e.addr == addr && e.datamatch == datamatch && e.raw_fd == fd.as_raw_fd())
            .ok_or_else(|| io_error("unregistering an ioeventfd", addr, libc::ENOENT))?;
        entries.remove(at);
        Ok(())
    }

    /// If `request` is a write an ioeventfd reacts to, signals it and returns true: the
    /// caller answers the request without an exit.
    pub(crate) fn signal(&self, request: &RawRequest) -> bool {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        if entries.is_empty() {
            return false;
        }
        match entries
            .iter()
            .find(|e| matches(e.addr, e.datamatch, request))
        {
            Some(entry) => {
                // Only an overflowing counter fails a write; the signal is then pending anyway.
                let _ = entry.fd.write(1);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn write(kind: u8, addr: u64, size: u32, data: u64) -> RawRequest {
        RawRequest {
            kind,
            addr,
            size,
            count: 1,
            data,
            ..RawRequest::default()
        }
    }

    #[test]
    fn writes_match_by_address_width_and_value() {
        let fds = IoEventFds::default();
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        fds.register(&fd, IoEventAddress::Pio(0x511), DataMatch::U8(0x25))
            .unwrap();
        assert!(fds.signal(&write(IOREQ_TYPE_PIO, 0x511, 1, 0x25)));
        assert_eq!(fd.read().unwrap(), 1);
        // Other value, other width, other port, MMIO at the same number, a read: no.
        assert!(!fds.signal(&write(IOREQ_TYPE_PIO, 0x511, 1, 0x27)));
        assert!(!fds.signal(&write(IOREQ_TYPE_PIO, 0x511, 2, 0x25)));
        assert!(!fds.signal(&write(IOREQ_TYPE_PIO, 0x512, 1, 0x25)));
        assert!(!fds.signal(&write(IOREQ_TYPE_COPY, 0x511, 1, 0x25)));
        let read = RawRequest {
            dir_read: true,
            ..write(IOREQ_TYPE_PIO, 0x511, 1, 0x25)
        };
        assert!(!fds.signal(&read));
        // A string write is not a single access.
        let rep = RawRequest {
            count: 2,
            ..write(IOREQ_TYPE_PIO, 0x511, 1, 0x25)
        };
        assert!(!fds.signal(&rep));
        assert!(fd.read().is_err(), "nothing else signalled");
    }

    #[test]
    fn any_matches_every_width_and_registrations_are_exact() {
        let fds = IoEventFds::default();
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let addr = IoEventAddress::Mmio(0xd000_0050);
        fds.register(&fd, addr, DataMatch::Any).unwrap();
        assert!(fds.signal(&write(IOREQ_TYPE_COPY, 0xd000_0050, 4, 7)));
        assert!(fds.signal(&write(IOREQ_TYPE_COPY, 0xd000_0050, 8, u64::MAX)));
        assert_eq!(fd.read().unwrap(), 2);
        let err = fds.register(&fd, addr, DataMatch::Any).unwrap_err();
        assert!(err.to_string().contains("MMIO address 0xd0000050"), "{err}");
        let err = fds.unregister(&fd, addr, DataMatch::U32(1)).unwrap_err();
        assert!(err.to_string().contains("MMIO address 0xd0000050"), "{err}");
        fds.unregister(&fd, addr, DataMatch::Any).unwrap();
        assert!(!fds.signal(&write(IOREQ_TYPE_COPY, 0xd000_0050, 4, 7)));
    }

    #[test]
    fn a_u64_match_compares_all_bits() {
        let fds = IoEventFds::default();
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        fds.register(&fd, IoEventAddress::Mmio(0x1000), DataMatch::U64(u64::MAX))
            .unwrap();
        assert!(!fds.signal(&write(IOREQ_TYPE_COPY, 0x1000, 8, u64::MAX - 1)));
        assert!(fds.signal(&write(IOREQ_TYPE_COPY, 0x1000, 8, u64::MAX)));
    }
}
