//! Decoding `kvm_run` after `KVM_RUN` into a [`VcpuExit`].
//!
//! kvm-ioctls decodes exits too, but drops the I/O access width and the internal-error details
//! that vmkit reports, and decoding twice costs measurably on the exit path; so vmkit reads
//! `kvm_run` itself. Values the kernel put there are still bounds-checked before they become
//! slices.

use std::mem::size_of;
use std::ptr::NonNull;

use kvm_bindings::{
    kvm_run, KVM_EXIT_DEBUG, KVM_EXIT_DIRTY_RING_FULL, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_HLT,
    KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_INTR, KVM_EXIT_IO, KVM_EXIT_IOAPIC_EOI, KVM_EXIT_IO_IN,
    KVM_EXIT_MMIO, KVM_EXIT_SHUTDOWN, KVM_EXIT_SYSTEM_EVENT,
};

use super::convert::system_event_kind;
use crate::vcpu::{DebugExit, VcpuExit};

/// Decodes the exit KVM left in the kvm_run mapping at `base`, `size` bytes long.
///
/// # Safety
///
/// `base` must point to a vCPU's live kvm_run mapping of `size` bytes, after `KVM_RUN`
/// returned successfully, and nothing else may access the mapping for `'a`.
pub(super) unsafe fn decode<'a>(base: NonNull<u8>, size: usize) -> VcpuExit<'a> {
    // SAFETY: the caller guarantees a live, exclusive kvm_run mapping at `base`.
    let run: &'a mut kvm_run = unsafe { base.cast::<kvm_run>().as_mut() };
    let code = run.exit_reason;
    match code {
        KVM_EXIT_IO => {
            // SAFETY: the exit reason says `io` is the active union member.
            let io = unsafe { run.__bindgen_anon_1.io };
            let len = usize::from(io.size) * io.count as usize;
            let offset = io.data_offset as usize;
            // The data lies in the mapping, after the kvm_run structure itself.
            if offset < size_of::<kvm_run>() || offset.checked_add(len).is_none_or(|end| end > size)
            {
                return VcpuExit::Unknown { code };
            }
            // SAFETY: `offset` was checked to lie inside the mapping.
            let start = unsafe { base.as_ptr().add(offset) };
            // SAFETY: `offset..offset + len` was checked to lie inside the mapping and after
            // the kvm_run structure, so it overlaps no reference made above.
            let data = unsafe { std::slice::from_raw_parts_mut(start, len) };
            let (port, size) = (io.port, io.size);
            if u32::from(io.direction) == KVM_EXIT_IO_IN {
                VcpuExit::IoIn { port, size, data }
            } else {
                VcpuExit::IoOut { port, size, data }
            }
        }
        KVM_EXIT_MMIO => {
            // SAFETY: the exit reason says `mmio` is the active union member.
            let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
            let len = (mmio.len as usize).min(mmio.data.len());
            let addr = mmio.phys_addr;
            if mmio.is_write != 0 {
                VcpuExit::MmioWrite {
                    addr,
                    data: &mmio.data[..len],
                }
            } else {
                VcpuExit::MmioRead {
                    addr,
                    data: &mut mmio.data[..len],
                }
            }
        }
        KVM_EXIT_HLT => VcpuExit::Hlt,
        KVM_EXIT_SHUTDOWN => VcpuExit::Shutdown,
        KVM_EXIT_INTR => VcpuExit::Interrupted,
        KVM_EXIT_DIRTY_RING_FULL => VcpuExit::DirtyRingFull,
        KVM_EXIT_IOAPIC_EOI => {
            // SAFETY: the exit reason says `eoi` is the active union member.
            let vector = unsafe { run.__bindgen_anon_1.eoi.vector };
            VcpuExit::IoapicEoi { vector }
        }
        KVM_EXIT_SYSTEM_EVENT => {
            // SAFETY: the exit reason says `system_event` is the active union member.
            let event = unsafe { &run.__bindgen_anon_1.system_event };
            // SAFETY: `data` is the union member KVM fills for every event type.
            let data = unsafe { &event.__bindgen_anon_1.data };
            let ndata = (event.ndata as usize).min(data.len());
            VcpuExit::SystemEvent {
                kind: system_event_kind(event.type_),
                data: &data[..ndata],
            }
        }
        KVM_EXIT_DEBUG => {
            // SAFETY: the exit reason says `debug` is the active union member.
            let arch = unsafe { run.__bindgen_anon_1.debug.arch };
            VcpuExit::Debug(DebugExit {
                pc: arch.pc,
                exception: arch.exception,
                dr6: arch.dr6,
                dr7: arch.dr7,
            })
        }
        KVM_EXIT_FAIL_ENTRY => {
            // SAFETY: the exit reason says `fail_entry` is the active union member.
            let fail = unsafe { run.__bindgen_anon_1.fail_entry };
            VcpuExit::FailEntry {
                reason: fail.hardware_entry_failure_reason,
                cpu: fail.cpu,
            }
        }
        KVM_EXIT_INTERNAL_ERROR => {
            // SAFETY: the exit reason says `internal` is the active union member.
            let internal = unsafe { &run.__bindgen_anon_1.internal };
            let ndata = (internal.ndata as usize).min(internal.data.len());
            VcpuExit::InternalError {
                suberror: internal.suberror,
                data: &internal.data[..ndata],
            }
        }
        _ => VcpuExit::Unknown { code },
    }
}
