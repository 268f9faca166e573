//! A connection to dom0's xenstored (libxenstore): writing a domain's nodes, introducing
//! the domain, and taking both back.

use std::ffi::CString;
use std::io;
use std::ptr::NonNull;

use super::super::sys::abi_pv::{XsPermissions, XBT_NULL};
use super::super::sys::ffi_pv as ffi;

/// A xenstore call failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path} failed")]
pub struct StoreError {
    /// The libxenstore function.
    pub op: &'static str,
    /// The node (or domain) it was asked about.
    pub path: String,
    /// The `errno` it left.
    #[source]
    pub source: io::Error,
}

fn fail(op: &'static str, path: &str) -> StoreError {
    StoreError {
        op,
        path: path.to_string(),
        source: io::Error::last_os_error(),
    }
}

/// An open libxenstore handle.
#[derive(Debug)]
pub(crate) struct Store {
    raw: NonNull<ffi::XsHandle>,
}

// SAFETY: libxenstore handles are thread-safe (the library locks its socket); the pointer
// is owned and closed once.
unsafe impl Send for Store {}
// SAFETY: as above.
unsafe impl Sync for Store {}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: from xs_open, closed only here.
        unsafe { ffi::xs_close(self.raw.as_ptr()) };
    }
}

/// A path as C wants it; xenstore paths vmkit builds never hold a NUL.
fn c_path(path: &str) -> Result<CString, StoreError> {
    CString::new(path).map_err(|_| StoreError {
        op: "xenstore path",
        path: path.escape_debug().to_string(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

/// A transaction: everything written in it appears at once on [`Transaction::commit`].
pub(crate) struct Transaction<'a> {
    store: &'a Store,
    id: u32,
    done: bool,
}

impl Store {
    /// Connects to xenstored (its socket, else `/dev/xen/xenbus`).
    pub(crate) fn open() -> Result<Self, StoreError> {
        // SAFETY: no pointers.
        let raw = unsafe { ffi::xs_open(0) };
        NonNull::new(raw)
            .map(|raw| Store { raw })
            .ok_or_else(|| fail("xs_open", "(xenstored)"))
    }

    /// Starts a transaction.
    pub(crate) fn transaction(&self) -> Result<Transaction<'_>, StoreError> {
        // SAFETY: a live handle.
        let id = unsafe { ffi::xs_transaction_start(self.raw.as_ptr()) };
        if id == XBT_NULL {
            return Err(fail("xs_transaction_start", ""));
        }
        Ok(Transaction {
            store: self,
            id,
            done: false,
        })
    }

    /// Removes `path` and everything under it (outside any transaction).
    pub(crate) fn remove(&self, path: &str) -> Result<(), StoreError> {
        let c = c_path(path)?;
        // SAFETY: a live handle and a NUL-terminated path.
        if unsafe { ffi::xs_rm(self.raw.as_ptr(), XBT_NULL, c.as_ptr()) } {
            Ok(())
        } else {
            Err(fail("xs_rm", path))
        }
    }

    /// Tells xenstored about domain `domid`: its store page's machine frame and the
    /// unbound event channel it should bind.
    pub(crate) fn introduce(&self, domid: u32, mfn: u64, port: u32) -> Result<(), StoreError> {
        // SAFETY: plain values.
        let ok = unsafe {
            ffi::xs_introduce_domain(self.raw.as_ptr(), domid, mfn as libc::c_ulong, port)
        };
        ok.then_some(())
            .ok_or_else(|| fail("xs_introduce_domain", &format!("domain {domid}")))
    }

    /// Makes xenstored forget domain `domid` (its connection and watches).
    pub(crate) fn release(&self, domid: u32) -> Result<(), StoreError> {
        // SAFETY: plain values.
        let ok = unsafe { ffi::xs_release_domain(self.raw.as_ptr(), domid) };
        ok.then_some(())
            .ok_or_else(|| fail("xs_release_domain", &format!("domain {domid}")))
    }

    /// The value of `path`, or `None` if it does not exist.
    pub(crate) fn read(&self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let c = c_path(path)?;
        let mut len: libc::c_uint = 0;
        // SAFETY: a live handle, a NUL-terminated path, a writable length.
        let data = unsafe { ffi::xs_read(self.raw.as_ptr(), XBT_NULL, c.as_ptr(), &mut len) };
        if data.is_null() {
            let err = fail("xs_read", path);
            return match err.source.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                _ => Err(err),
            };
        }
        // SAFETY: the library returned `len` bytes at `data`, malloc'ed for the caller.
        let value = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len as usize) }.to_vec();
        // SAFETY: malloc'ed by libxenstore, freed once.
        unsafe { libc::free(data) };
        Ok(Some(value))
    }
}

impl Transaction<'_> {
    /// Writes `value` to `path` (creating its parents).
    pub(crate) fn write(&self, path: &str, value: &str) -> Result<(), StoreError> {
        let c = c_path(path)?;
        let len = libc::c_uint::try_from(value.len()).map_err(|_| StoreError {
            op: "xs_write",
            path: path.to_string(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: a live handle, a NUL-terminated path, `len` readable bytes.
        let ok = unsafe {
            ffi::xs_write(
                self.store.raw.as_ptr(),
                self.id,
                c.as_ptr(),
                value.as_ptr().cast(),
                len,
            )
        };
        ok.then_some(()).ok_or_else(|| fail("xs_write", path))
    }

    /// Creates `path` empty.
    pub(crate) fn mkdir(&self, path: &str) -> Result<(), StoreError> {
        let c = c_path(path)?;
        // SAFETY: a live handle and a NUL-terminated path.
        let ok = unsafe { ffi::xs_mkdir(self.store.raw.as_ptr(), self.id, c.as_ptr()) };
        ok.then_some(()).ok_or_else(|| fail("xs_mkdir", path))
    }

    /// Sets the access list of `path`: the first entry names its owner and what every
    /// domain not listed may do.
    pub(crate) fn set_permissions(
        &self,
        path: &str,
        perms: &[XsPermissions],
    ) -> Result<(), StoreError> {
        let c = c_path(path)?;
        let mut perms = perms.to_vec();
        // SAFETY: a live handle, a NUL-terminated path, `perms.len()` entries (the library
        // only reads them).
        let ok = unsafe {
            ffi::xs_set_permissions(
                self.store.raw.as_ptr(),
                self.id,
                c.as_ptr(),
                perms.as_mut_ptr(),
                perms.len() as libc::c_uint,
            )
        };
        ok.then_some(())
            .ok_or_else(|| fail("xs_set_permissions", path))
    }

    /// Commits. `Ok(false)` if another writer got in the way (`EAGAIN`): start again.
    pub(crate) fn commit(mut self) -> Result<bool, StoreError> {
        self.done = true;
        // SAFETY: a live handle and this transaction, ended once.
        if unsafe { ffi::xs_transaction_end(self.store.raw.as_ptr(), self.id, false) } {
            return Ok(true);
        }
        let err = fail("xs_transaction_end", "");
        match err.source.raw_os_error() {
            Some(libc::EAGAIN) => Ok(false),
            _ => Err(err),
        }
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.done {
            // SAFETY: a live handle and this transaction, ended once (aborted).
            unsafe { ffi::xs_transaction_end(self.store.raw.as_ptr(), self.id, true) };
        }
    }
}
