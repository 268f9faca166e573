//! The PV console a guest's `hvc0` writes to: a page with an input and an output ring
//! (`struct xencons_interface`) and an event channel, served by vmkit in place of
//! xenconsoled. The guest writes the output ring's producer and the input ring's consumer:
//! both are checked before any byte is copied (see [`ring`](super::ring)).

use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::super::libs::{Evtchn, ForeignMemory, XenCallError};
use super::super::sys::abi_pv::{
    XENCONS_IN_CONS, XENCONS_IN_OFFSET, XENCONS_IN_PROD, XENCONS_IN_SIZE, XENCONS_OUT_CONS,
    XENCONS_OUT_OFFSET, XENCONS_OUT_PROD, XENCONS_OUT_SIZE,
};
use super::super::sys::ffi_pv as ffi;
use super::ring::{Ring, RingError};
use super::PvError;

const PAGE_SIZE: usize = 4096;

const OUT: Ring = Ring {
    size: XENCONS_OUT_SIZE,
    name: "output",
};
const IN: Ring = Ring {
    size: XENCONS_IN_SIZE,
    name: "input",
};

/// One guest page mapped into this process, unmapped on drop.
#[derive(Debug)]
struct ForeignPage {
    fmem: Arc<ForeignMemory>,
    addr: NonNull<u8>,
}

// SAFETY: process memory; `PvConsole` accesses it from one thread at a time (`&mut self`).
unsafe impl Send for ForeignPage {}

impl Drop for ForeignPage {
    fn drop(&mut self) {
        // SAFETY: one page mapped by xenforeignmemory_map on this handle, unmapped once.
        unsafe { ffi::xenforeignmemory_unmap(self.fmem.raw(), self.addr.as_ptr().cast(), 1) };
    }
}

impl ForeignPage {
    /// Maps machine frame `mfn` of PV domain `domid` read-write.
    fn map(fmem: &Arc<ForeignMemory>, domid: u32, mfn: u64) -> Result<Self, XenCallError> {
        let mut err: libc::c_int = 0;
        // SAFETY: one frame number and one error slot, both valid for the call.
        let addr = unsafe {
            ffi::xenforeignmemory_map(
                fmem.raw(),
                domid,
                libc::PROT_READ | libc::PROT_WRITE,
                1,
                &mfn,
                &mut err,
            )
        };
        let fail = |source| XenCallError {
            op: "xenforeignmemory_map (the PV console page)",
            source,
        };
        let addr =
            NonNull::new(addr.cast::<u8>()).ok_or_else(|| fail(std::io::Error::last_os_error()))?;
        let page = ForeignPage {
            fmem: Arc::clone(fmem),
            addr,
        };
        if err != 0 {
            return Err(fail(std::io::Error::from_raw_os_error(err.abs())));
        }
        Ok(page)
    }

    /// The 32-bit index at `offset`, shared with the guest.
    fn index(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset.is_multiple_of(4) && offset + 4 <= PAGE_SIZE);
        let at = self.addr.as_ptr().wrapping_add(offset).cast::<AtomicU32>();
        // SAFETY: in the page, 4-byte aligned (the page is), and only ever accessed
        // atomically by this process; the guest's concurrent writes are what atomics allow.
        unsafe { &*at }
    }

    /// Copies `len` bytes at `offset` of the page out (volatile: the guest may change them).
    fn read(&self, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= PAGE_SIZE);
        for (i, byte) in out.iter_mut().enumerate() {
            let at = self.addr.as_ptr().wrapping_add(offset + i);
            // SAFETY: inside the mapped page (checked above).
            *byte = unsafe { at.read_volatile() };
        }
    }

    /// Copies `data` into the page at `offset`.
    fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= PAGE_SIZE);
        for (i, &byte) in data.iter().enumerate() {
            let at = self.addr.as_ptr().wrapping_add(offset + i);
            // SAFETY: inside the mapped page (checked above).
            unsafe { at.write_volatile(byte) };
        }
    }
}

/// A PV domain's console, served by vmkit: [`PvConsole::read`] takes what the guest
/// wrote, [`PvConsole::write`] gives it input, [`PvConsole::wait`] waits for it to signal.
#[derive(Debug)]
pub struct PvConsole {
    page: ForeignPage,
    evtchn: Evtchn,
    port: u32,
}

impl PvConsole {
    /// Maps the console page (machine frame `mfn`) of `domid` and binds its event channel
    /// (`remote_port`, unbound in the guest with dom0 as its peer).
    pub(crate) fn connect(
        fmem: &Arc<ForeignMemory>,
        domid: u32,
        mfn: u64,
        remote_port: u32,
    ) -> Result<Self, XenCallError> {
        let page = ForeignPage::map(fmem, domid, mfn)?;
        let evtchn = Evtchn::open()?;
        let port = evtchn.bind_interdomain(domid, remote_port)?;
        Ok(PvConsole { page, evtchn, port })
    }

    /// Moves what the guest has written (at most `buf.len()` bytes) into `buf` and returns
    /// how many; 0 if nothing is waiting. Fails if the guest's indices claim more bytes
    /// than the ring holds (nothing is read then).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, PvError> {
        let cons = self.page.index(XENCONS_OUT_CONS).load(Ordering::Relaxed);
        let prod = self.page.index(XENCONS_OUT_PROD).load(Ordering::Acquire);
        let spans = OUT.readable(cons, prod, buf.len()).map_err(ring_err)?;
        let mut done = 0;
        for span in spans {
            self.page.read(
                XENCONS_OUT_OFFSET + span.start,
                &mut buf[done..done + span.len],
            );
            done += span.len;
        }
        if done > 0 {
            // The bytes are copied before the guest may reuse their slots.
            fence(Ordering::Release);
            self.page
                .index(XENCONS_OUT_CONS)
                .store(cons.wrapping_add(done as u32), Ordering::Release);
            self.notify()?;
        }
        Ok(done)
    }

    /// Puts `data` (as much as fits) on the guest's input ring; returns how many bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, PvError> {
        let cons = self.page.index(XENCONS_IN_CONS).load(Ordering::Acquire);
        let prod = self.page.index(XENCONS_IN_PROD).load(Ordering::Relaxed);
        let spans = IN.writable(cons, prod, data.len()).map_err(ring_err)?;
        let mut done = 0;
        for span in spans {
            self.page
                .write(XENCONS_IN_OFFSET + span.start, &data[done..done + span.len]);
            done += span.len;
        }
        if done > 0 {
            fence(Ordering::Release);
            self.page
                .index(XENCONS_IN_PROD)
                .store(prod.wrapping_add(done as u32), Ordering::Release);
            self.notify()?;
        }
        Ok(done)
    }

    /// Waits at most `timeout` for the guest to signal the console; returns whether it did.
    /// Either way [`PvConsole::read`] may then have bytes (the guest need not signal each
    /// write).
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, PvError> {
        let mut fd = libc::pollfd {
            fd: self.evtchn.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut fd, 1, ms) };
        if n < 0 {
            let source = std::io::Error::last_os_error();
            if source.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(PvError::Xen(XenCallError {
                op: "poll (the PV console's event channel)",
                source,
            }));
        }
        if n == 0 {
            return Ok(false);
        }
        let port = self.evtchn.pending().map_err(PvError::Xen)?;
        self.evtchn.unmask(port).map_err(PvError::Xen)?;
        Ok(true)
    }

    fn notify(&self) -> Result<(), PvError> {
        self.evtchn.notify(self.port).map_err(PvError::Xen)
    }
}

fn ring_err(err: RingError) -> PvError {
    PvError::ConsoleRing(err)
}
