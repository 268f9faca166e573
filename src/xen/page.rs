//! The ioreq server's shared page: one 32-byte `struct ioreq` slot per vCPU, written by Xen
//! on one CPU and by vmkit on another.
//!
//! Every access goes through atomics: the state byte is loaded with acquire ordering before
//! the other fields are read, and the response data is stored before the state byte is
//! released, which is the ordering Xen's side (`smp_rmb`/`smp_wmb` around `state`) expects.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::ioreq::RawRequest;
use super::libs::Resource;
use super::sys::abi::{ioreq_offset, IOREQ_BITS_STATE_MASK, IOREQ_SIZE};

/// The mapped ioreq page of an ioreq server.
#[derive(Debug)]
pub(crate) struct IoreqPage {
    resource: Resource,
}

impl IoreqPage {
    /// Wraps a mapping of the server's synchronous ioreq frame (one page).
    pub(crate) fn new(resource: Resource) -> Self {
        IoreqPage { resource }
    }

    /// How many vCPU slots the page holds.
    pub(crate) fn slots(&self) -> u32 {
        (self.resource.len() / IOREQ_SIZE) as u32
    }

    /// The slot of vCPU `vcpu`, if the page has one.
    pub(crate) fn slot(&self, vcpu: u32) -> Option<Slot<'_>> {
        (vcpu < self.slots()).then_some(Slot {
            page: self,
            offset: vcpu as usize * IOREQ_SIZE,
        })
    }

    /// The address of byte `at` of the page, which must lie inside it.
    fn at(&self, at: usize) -> *mut u8 {
        debug_assert!(at < self.resource.len());
        // SAFETY: callers pass an offset inside the mapping, so the result stays inside the
        // same allocation.
        unsafe { self.resource.addr().as_ptr().add(at) }
    }

    fn byte(&self, at: usize) -> &AtomicU8 {
        let ptr = self.at(at);
        // SAFETY: `ptr` lies inside the mapping, which lives as long as `self`; the byte is
        // only ever accessed atomically by this process (Xen writes it from another CPU,
        // which is what the atomic access is for).
        unsafe { AtomicU8::from_ptr(ptr) }
    }

    fn word(&self, at: usize) -> &AtomicU32 {
        debug_assert!(at.is_multiple_of(4) && at + 4 <= self.resource.len());
        let ptr = self.at(at).cast();
        // SAFETY: as for `byte`; `at` is 4-aligned within the page-aligned mapping.
        unsafe { AtomicU32::from_ptr(ptr) }
    }

    fn dword(&self, at: usize) -> &AtomicU64 {
        debug_assert!(at.is_multiple_of(8) && at + 8 <= self.resource.len());
        let ptr = self.at(at).cast();
        // SAFETY: as for `byte`; `at` is 8-aligned within the page-aligned mapping.
        unsafe { AtomicU64::from_ptr(ptr) }
    }
}

/// One vCPU's ioreq slot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot<'a> {
    page: &'a IoreqPage,
    offset: usize,
}

impl Slot<'_> {
    /// The request state (`STATE_IOREQ_*`), with acquire ordering: fields read after it see
    /// what Xen wrote before it set the state.
    pub(crate) fn state(&self) -> u8 {
        self.page
            .byte(self.offset + ioreq_offset::BITS)
            .load(Ordering::Acquire)
            & IOREQ_BITS_STATE_MASK
    }

    /// Sets the state, keeping the other bit fields of its byte, with release ordering.
    pub(crate) fn set_state(&self, state: u8) {
        let bits = self.page.byte(self.offset + ioreq_offset::BITS);
        let old = bits.load(Ordering::Relaxed);
        bits.store(
            (old & !IOREQ_BITS_STATE_MASK) | (state & IOREQ_BITS_STATE_MASK),
            Ordering::Release,
        );
    }

    /// The whole request (read after [`Slot::state`] said it is ready).
    pub(crate) fn read(&self) -> RawRequest {
        RawRequest::from_bytes(&self.bytes())
    }

    /// The slot's 32 bytes as they are now.
    pub(crate) fn bytes(&self) -> [u8; IOREQ_SIZE] {
        let mut bytes = [0u8; IOREQ_SIZE];
        for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
            let word = self.page.word(self.offset + i * 4).load(Ordering::Relaxed);
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        bytes
    }

    /// Writes the response data (ordered before a later [`Slot::set_state`]).
    pub(crate) fn set_data(&self, data: u64) {
        self.page
            .dword(self.offset + ioreq_offset::DATA)
            .store(data, Ordering::Relaxed);
    }

    /// The event channel Xen signals for this vCPU (valid once the server is enabled).
    pub(crate) fn vp_eport(&self) -> u32 {
        self.page
            .word(self.offset + ioreq_offset::VP_EPORT)
            .load(Ordering::Acquire)
    }
}
