//! The raw interface to Xen: the ABI structures and constants (`abi`), the C library
//! functions (`ffi`), and the test that checks the former against the C headers.

pub(crate) mod abi;
pub(crate) mod abi_pv;
pub(crate) mod ffi;
pub(crate) mod ffi_parity;
pub(crate) mod ffi_pv;
#[cfg(test)]
mod layout_tests;
