//! Guest debugging on Xen: the debug exceptions of single-stepping and hardware breakpoints,
//! taken from Xen's monitor vm_event ring.
//!
//! Xen 4.17 offers three ways to learn of a guest's debug exceptions, and two are closed on
//! the hosts vmkit targets:
//! - `XEN_DOMCTL_debug_op`'s single-step needs VMX's monitor trap flag: on AMD SVM it fails.
//! - With a debugger attached (`XEN_DOMCTL_setdebugging`) Xen swallows #DB and #BP and calls
//!   `domain_pause_for_debugger`, which pauses the domain and raises `VIRQ_DEBUGGER` only
//!   when Xen is built with `CONFIG_GDBSX`. That option sits behind `CONFIG_DEBUG` or
//!   `CONFIG_EXPERT`: release builds such as Debian's do without it, and there the guest's
//!   #DB would simply vanish.
//! - The monitor ring (`CONFIG_MEM_ACCESS`, on in release builds): with debug-exception
//!   monitoring on, Xen, which always intercepts #DB on both SVM and VMX, sends each one as
//!   a `VM_EVENT_REASON_DEBUG_EXCEPTION` request and, in the synchronous mode vmkit uses,
//!   keeps the vCPU paused until vmkit answers it. The exception does not reach the guest.
//!
//! vmkit uses the third. Single-stepping works as KVM's does on AMD: the vCPU runs with
//! `RFLAGS.TF` set, which vmkit hides from the guest's registers as the VMM sees them (see
//! the vCPU's debug state); hardware breakpoints are the vCPU's DR0-DR3 and DR7 in its HVM
//! CPU record. The ring is one page of the domain's (`HVM_PARAM_MONITOR_RING_PFN`, which
//! vmkit points at a frame outside guest RAM; `xc_monitor_enable` maps it here and takes it
//! out of the guest's physical map) with an event channel; every vCPU thread in `run()`
//! drains it, keeping each event for the vCPU it belongs to. A vCPU whose event another
//! thread took finds it at its next look at the vCPU (within `MAX_CHECK_INTERVAL`), unless
//! the event channel wakes it first. A debug exception of a vCPU that is not debugging,
//! while another one is, is the guest's own: it is injected back into the guest.
//!
//! The guest's own debug registers are kept aside while breakpoints are set and put back
//! when they are cleared; what the guest writes to them meanwhile is lost then (KVM keeps
//! the two sets apart; Xen's CPU record has one).

use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Mutex;

use super::libs::{Evtchn, XenCallError};
use super::sys::abi::{EvtchnPort, HVM_PARAM_MONITOR_RING_PFN};
use super::vm::{lock, VmShared};

/// `VM_EVENT_INTERFACE_VERSION` of Xen 4.17.
pub(crate) const INTERFACE_VERSION: u32 = 7;
/// `VM_EVENT_FLAG_VCPU_PAUSED`: in a request, the vCPU waits; in a response, unpause it.
pub(crate) const FLAG_VCPU_PAUSED: u32 = 1;
/// `VM_EVENT_REASON_DEBUG_EXCEPTION`.
pub(crate) const REASON_DEBUG_EXCEPTION: u32 = 9;
/// The #DB vector.
const DEBUG_VECTOR: u8 = 1;
const PAGE_SIZE: usize = 4096;

/// The ring's layout (`struct vm_event_sring` of `vm_event_request_t`, as Xen 4.17's
/// `xen/vm_event.h` and `io/ring.h` define it on x86-64): the producer and consumer
/// indexes, 64 bytes of header, then entries of 400 bytes, as many as a page holds rounded
/// down to a power of two.
pub(crate) mod layout {
    #![allow(missing_docs)] // Named as in the C structures; `sys::layout_tests` checks them.
    pub const REQ_PROD: usize = 0;
    pub const REQ_EVENT: usize = 4;
    pub const RSP_PROD: usize = 8;
    pub const RSP_EVENT: usize = 12;
    pub const HEADER: usize = 64;
    pub const ENTRY: usize = 400;
    pub const ENTRIES: u32 = 8;
    // Offsets in an entry.
    pub const VERSION: usize = 0;
    pub const FLAGS: usize = 4;
    pub const REASON: usize = 8;
    pub const VCPU_ID: usize = 12;
    pub const ALTP2M_IDX: usize = 16;
    pub const RIP: usize = 56 + 152;
    pub const DR7: usize = 56 + 144;
    pub const CS_BASE: usize = 56 + 264;
}

/// A debug exception Xen reported, its vCPU paused until [`Monitor::resume`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    /// The linear address of the next instruction to run (`cs.base + rip`).
    pub(crate) pc: u64,
    /// Xen's DR7 for the vCPU.
    pub(crate) dr7: u64,
    /// The request's header, echoed in the response.
    flags: u32,
    reason: u32,
    altp2m_idx: u16,
}

/// The back end's ring indexes and the events taken off the ring, by vCPU.
#[derive(Debug)]
struct Ring {
    evtchn: Evtchn,
    port: EvtchnPort,
    req_cons: u32,
    rsp_prod: u32,
    /// Per vCPU: its event, taken and not yet answered; and whether it is debugging.
    held: Vec<Option<Event>>,
    /// Per vCPU: events taken and not yet returned by `take`.
    fresh: Vec<bool>,
    debugging: Vec<bool>,
    /// Whether Xen sends debug exceptions to the ring now.
    monitoring: bool,
}

/// The domain's monitor ring, set up the first time a vCPU turns debugging on.
#[derive(Debug)]
pub(crate) struct Monitor {
    page: NonNull<u8>,
    fd: RawFd,
    domid: u32,
    ring: Mutex<Ring>,
}

// SAFETY: the page is a mapping owned by the Monitor; the ring indexes on it are accessed
// atomically and the entries only under the `ring` lock.
unsafe impl Send for Monitor {}
// SAFETY: as above.
unsafe impl Sync for Monitor {}

impl Drop for Monitor {
    fn drop(&mut self) {
        // (The event channel closes with its handle, in `ring`.)
        // SAFETY: the page was mapped by xc_monitor_enable (an mmap of one page) and is
        // unmapped once; nothing else points into it after this.
        unsafe { libc::munmap(self.page.as_ptr().cast(), PAGE_SIZE) };
    }
}

impl Monitor {
    /// Enables the ring of `vm`'s domain, its page at guest frame `gfn` for the moment of
    /// setting up (a frame outside guest RAM), for `vcpus` vCPUs.
    pub(crate) fn enable(vm: &VmShared, gfn: u64, vcpus: usize) -> Result<Self, XenCallError> {
        let xc = vm.xc();
        xc.set_hvm_param(vm.domid, HVM_PARAM_MONITOR_RING_PFN, gfn)?;
        let (page, remote) = xc.monitor_enable(vm.domid)?;
        let monitor = Monitor {
            page,
            fd: -1,
            domid: vm.domid,
            ring: Mutex::new(Ring {
                evtchn: Evtchn::open()?,
                port: 0,
                req_cons: 0,
                rsp_prod: 0,
                held: vec![None; vcpus],
                fresh: vec![false; vcpus],
                debugging: vec![false; vcpus],
                monitoring: false,
            }),
        };
        // Xen produced nothing yet (nothing is monitored): the shared ring starts empty,
        // as SHARED_RING_INIT leaves it.
        // SAFETY: the page is PAGE_SIZE bytes, mapped read-write.
        unsafe { std::ptr::write_bytes(page.as_ptr(), 0, layout::HEADER) };
        monitor.index(layout::REQ_EVENT).store(1, Ordering::SeqCst);
        monitor.index(layout::RSP_EVENT).store(1, Ordering::SeqCst);
        let mut monitor = monitor;
        {
            let ring = monitor.ring.get_mut().unwrap_or_else(|e| e.into_inner());
            ring.port = ring.evtchn.bind_interdomain(vm.domid, remote)?;
            monitor.fd = ring.evtchn.fd();
        }
        Ok(monitor)
    }

    /// The file descriptor that becomes readable when Xen puts an event on the ring.
    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    fn index(&self, offset: usize) -> &AtomicU32 {
        let index = self.page.as_ptr().wrapping_add(offset).cast::<AtomicU32>();
        // SAFETY: the four indexes are aligned u32s at the start of the mapped page, which
        // lives as long as `self`; Xen updates them concurrently, hence atomics.
        unsafe { &*index }
    }

    fn entry(&self, index: u32) -> *mut u8 {
        let slot = (index % layout::ENTRIES) as usize;
        // SAFETY: HEADER + ENTRIES * ENTRY is within the page.
        unsafe {
            self.page
                .as_ptr()
                .add(layout::HEADER + slot * layout::ENTRY)
        }
    }

    /// Marks vCPU `vcpu` as debugging or not, and has Xen send debug exceptions to the
    /// ring while any vCPU debugs.
    pub(crate) fn set_debugging(
        &self,
        vm: &VmShared,
        vcpu: u32,
        on: bool,
    ) -> Result<(), XenCallError> {
        let mut ring = lock(&self.ring);
        if let Some(flag) = ring.debugging.get_mut(vcpu as usize) {
            *flag = on;
        }
        let want = ring.debugging.iter().any(|&d| d);
        if want != ring.monitoring {
            vm.xc().monitor_debug_exceptions(self.domid, want)?;
            ring.monitoring = want;
        }
        Ok(())
    }

    /// Takes what Xen put on the ring, then returns vCPU `vcpu`'s new event, if any. An
    /// event of a vCPU that is not debugging is the guest's own #DB: it goes to the guest.
    pub(crate) fn take(&self, vm: &VmShared, vcpu: u32) -> Result<Option<Event>, XenCallError> {
        let mut ring = lock(&self.ring);
        if readable(self.fd) {
            let port = ring.evtchn.pending()?;
            ring.evtchn.unmask(port)?;
        }
        loop {
            let prod = self.index(layout::REQ_PROD).load(Ordering::Acquire);
            if ring.req_cons == prod {
                break;
            }
            let mut raw = [0u8; layout::ENTRY];
            // SAFETY: the entry is within the page; Xen wrote it before moving req_prod
            // (the Acquire load above orders this read after it).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.entry(ring.req_cons),
                    raw.as_mut_ptr(),
                    raw.len(),
                )
            };
            ring.req_cons = ring.req_cons.wrapping_add(1);
            self.index(layout::REQ_EVENT)
                .store(ring.req_cons.wrapping_add(1), Ordering::Release);
            let event = parse(&raw);
            let id = u32_at(&raw, layout::VCPU_ID);
            trace!("d{} vCPU {id}: vm_event {event:?}", self.domid);
            let Some(event) = event else {
                // Not a debug exception (nothing else is monitored): answered as it is.
                self.respond(
                    &mut ring,
                    id,
                    u32_at(&raw, layout::FLAGS),
                    u32_at(&raw, layout::REASON),
                    0,
                )?;
                continue;
            };
            match ring.debugging.get(id as usize) {
                Some(true) => {
                    ring.held[id as usize] = Some(event);
                    ring.fresh[id as usize] = true;
                }
                _ => {
                    // The guest's own debug exception: deliver it, then let the vCPU go.
                    vm.handles
                        .dm
                        .inject_exception(self.domid as u16, id, DEBUG_VECTOR)?;
                    self.respond(&mut ring, id, event.flags, event.reason, event.altp2m_idx)?;
                }
            }
        }
        let i = vcpu as usize;
        if ring.fresh.get(i).copied().unwrap_or(false) {
            ring.fresh[i] = false;
            return Ok(ring.held[i]);
        }
        Ok(None)
    }

    /// Lets vCPU `vcpu` go on after its event, if it has one held.
    pub(crate) fn resume(&self, vcpu: u32) -> Result<(), XenCallError> {
        let mut ring = lock(&self.ring);
        let Some(event) = ring.held.get_mut(vcpu as usize).and_then(Option::take) else {
            return Ok(());
        };
        self.respond(&mut ring, vcpu, event.flags, event.reason, event.altp2m_idx)
    }

    /// Puts a response on the ring and signals Xen.
    fn respond(
        &self,
        ring: &mut Ring,
        vcpu: u32,
        flags: u32,
        reason: u32,
        altp2m_idx: u16,
    ) -> Result<(), XenCallError> {
        let mut raw = [0u8; layout::ENTRY];
        raw[layout::VERSION..][..4].copy_from_slice(&INTERFACE_VERSION.to_le_bytes());
        raw[layout::FLAGS..][..4].copy_from_slice(&(flags & FLAG_VCPU_PAUSED).to_le_bytes());
        raw[layout::REASON..][..4].copy_from_slice(&reason.to_le_bytes());
        raw[layout::VCPU_ID..][..4].copy_from_slice(&vcpu.to_le_bytes());
        raw[layout::ALTP2M_IDX..][..2].copy_from_slice(&altp2m_idx.to_le_bytes());
        // SAFETY: the entry is within the page; its request was consumed (a response slot
        // never runs ahead of the requests taken).
        unsafe {
            std::ptr::copy_nonoverlapping(raw.as_ptr(), self.entry(ring.rsp_prod), raw.len())
        };
        ring.rsp_prod = ring.rsp_prod.wrapping_add(1);
        fence(Ordering::Release);
        self.index(layout::RSP_PROD)
            .store(ring.rsp_prod, Ordering::Release);
        ring.evtchn.notify(ring.port)
    }
}

/// A debug-exception request's event, or `None` for another kind of request.
fn parse(raw: &[u8; layout::ENTRY]) -> Option<Event> {
    if u32_at(raw, layout::REASON) != REASON_DEBUG_EXCEPTION {
        return None;
    }
    let cs_base = u64::from(u32_at(raw, layout::CS_BASE));
    Some(Event {
        pc: cs_base.wrapping_add(u64_at(raw, layout::RIP)),
        dr7: u64_at(raw, layout::DR7),
        flags: u32_at(raw, layout::FLAGS),
        reason: REASON_DEBUG_EXCEPTION,
        altp2m_idx: u16::from_le_bytes([raw[layout::ALTP2M_IDX], raw[layout::ALTP2M_IDX + 1]]),
    })
}

fn u32_at(raw: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&raw[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(raw: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&raw[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Whether `fd` is readable now (without waiting).
fn readable(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: one valid pollfd and a valid zero timespec, live for the call; no signal
    // mask. (`ppoll`, which a vCPU thread's seccomp rules allow.)
    let rc = unsafe { libc::ppoll(&mut pfd, 1, &now, std::ptr::null()) };
    rc > 0 && pfd.revents & libc::POLLIN != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debug_request_gives_the_linear_address_of_the_next_instruction() {
        let mut raw = [0u8; layout::ENTRY];
        raw[layout::REASON..][..4].copy_from_slice(&REASON_DEBUG_EXCEPTION.to_le_bytes());
        raw[layout::FLAGS..][..4].copy_from_slice(&FLAG_VCPU_PAUSED.to_le_bytes());
        raw[layout::RIP..][..8].copy_from_slice(&0x1003u64.to_le_bytes());
        raw[layout::CS_BASE..][..4].copy_from_slice(&0x10u32.to_le_bytes());
        raw[layout::DR7..][..8].copy_from_slice(&0x402u64.to_le_bytes());
        let event = parse(&raw).unwrap();
        assert_eq!(event.pc, 0x1013);
        assert_eq!(event.dr7, 0x402);
        assert_eq!(event.flags, FLAG_VCPU_PAUSED);
        // Another reason is not a debug event.
        raw[layout::REASON..][..4].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(parse(&raw), None);
    }

    #[test]
    fn eight_entries_fill_the_page() {
        let n = layout::ENTRIES as usize;
        assert!(layout::HEADER + n * layout::ENTRY <= PAGE_SIZE);
        assert!(layout::HEADER + 2 * n * layout::ENTRY > PAGE_SIZE);
    }
}
