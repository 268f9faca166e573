//! The raw interface to Xen: the ABI structures and constants (`abi`), the C library
//! functions (`ffi`), and the test that checks the former against the C headers.

pub(crate) mod abi;
pub(crate) mod ffi;
pub(crate) mod ffi_parity;
#[cfg(test)]
mod layout_tests;
