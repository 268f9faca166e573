//! The ioreq protocol, without Xen: decoding the request a vCPU left in its slot of the
//! ioreq page, turning it into the exits a VMM sees, and producing the response.
//!
//! Xen writes a `struct ioreq` (32 bytes) into the vCPU's slot, sets its state to
//! `STATE_IOREQ_READY` and signals the vCPU's event channel; the device model reads it,
//! marks it `STATE_IOREQ_INPROCESS`, performs the access, writes the data of a read back,
//! sets `STATE_IORESP_READY` and signals back. This module is the middle part: an
//! [`Exchange`] holds one request and yields one or more [`Step`]s (the exits), then the
//! response value. Barriers and the shared page itself live in the vCPU code.
//!
//! Requests with `count` > 1 come from string instructions (`rep ins/outs/movs/stos`). Port
//! I/O is batched: one exit carries up to a page of consecutive accesses, as
//! [`VcpuExit::IoIn`](crate::VcpuExit::IoIn) allows. MMIO exits carry one access each, so a
//! repeated MMIO access becomes one exit per element, all answered before Xen hears back.
//! With `data_is_ptr` the data lives in guest memory at the guest-physical address in
//! `data`, one element after the other (downwards with `df`); this module reads and writes
//! it through [`GuestAccess`].
//!
//! A configuration cycle on ports 0xCFC-0xCFF for a PCI function vmkit claimed comes as an
//! `IOREQ_TYPE_PCI_CONFIG` request (see [`pci_config_port`]); it becomes the port access the
//! guest made, so the VMM sees the same exits as on KVM.
//!
//! Every field comes from the hypervisor on behalf of the guest; nothing here trusts it:
//! sizes, counts and addresses are checked, and a request that makes no sense becomes an
//! [`Invalid`] the vCPU reports instead of acting on.

use std::fmt;

use super::sys::abi::{
    ioreq_offset, IOREQ_BITS_DATA_IS_PTR, IOREQ_BITS_DF, IOREQ_BITS_DIR_READ,
    IOREQ_BITS_STATE_MASK, IOREQ_SIZE, IOREQ_TYPE_COPY, IOREQ_TYPE_INVALIDATE,
    IOREQ_TYPE_PCI_CONFIG, IOREQ_TYPE_PIO, IOREQ_TYPE_TIMEOFFSET,
};

/// The most bytes one port I/O exit carries: a page, as KVM batches `rep ins`.
pub(crate) const MAX_BATCH_BYTES: usize = 4096;

/// The most elements one request may have. Xen limits a string instruction's repetitions
/// to what fits in a page; anything beyond this is not a request Xen would send.
const MAX_COUNT: u32 = 1 << 16;

/// The configuration data port (0xCFC-0xCFF) a PCI configuration access went to.
const PCI_CONFIG_DATA_PORT: u64 = 0xcfc;

/// What an `IOREQ_TYPE_PCI_CONFIG` request is for the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PciConfig {
    /// The guest's access to this data port (0xCFC-0xCFF).
    Port(u64),
    /// A register the VMM's latch cannot address: answered here, without an exit.
    Unreachable,
}

/// Decodes a configuration request's address: segment, bus, device and function in bits
/// 63-32, the register in bits 31-0. Xen forms the register from the latched 0xCF8 value
/// (bits 7-2) and the data port the guest used (bits 1-0); on the AMD families whose
/// northbridge allows it, bits 27-24 of 0xCF8 add bits 11-8.
///
/// The VMM answers the guest's own data-port access from its latch of 0xCF8, which saw the
/// same 4-byte writes Xen latched (Xen passes them on to vmkit): that selects the same
/// function and register, and the VMM sees the exits it would see on KVM. A register above
/// 0xFF (the AMD extension) is one a latch of the conventional mechanism drops the bits
/// of, so that access is refused here as a device would refuse it. A segment other than 0
/// or a register beyond 4 KiB is nothing Xen sends.
fn pci_config_port(addr: u64) -> Result<PciConfig, &'static str> {
    if addr >> 48 != 0 {
        return Err("PCI segment other than 0");
    }
    let register = addr & 0xffff_ffff;
    if register > 0xfff {
        return Err("PCI register beyond the 4 KiB configuration space");
    }
    if register > 0xff {
        return Ok(PciConfig::Unreachable);
    }
    Ok(PciConfig::Port(PCI_CONFIG_DATA_PORT | (register & 3)))
}

/// A request as Xen wrote it into the ioreq slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawRequest {
    pub(crate) addr: u64,
    pub(crate) data: u64,
    pub(crate) count: u32,
    pub(crate) size: u32,
    pub(crate) vp_eport: u32,
    pub(crate) state: u8,
    pub(crate) data_is_ptr: bool,
    pub(crate) dir_read: bool,
    pub(crate) df: bool,
    pub(crate) kind: u8,
}

impl RawRequest {
    /// Decodes the 32 bytes of a `struct ioreq`.
    pub(crate) fn from_bytes(bytes: &[u8; IOREQ_SIZE]) -> Self {
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[at..at + 4]);
            u32::from_le_bytes(b)
        };
        let bits = bytes[ioreq_offset::BITS];
        RawRequest {
            addr: u64_at(ioreq_offset::ADDR),
            data: u64_at(ioreq_offset::DATA),
            count: u32_at(ioreq_offset::COUNT),
            size: u32_at(ioreq_offset::SIZE),
            vp_eport: u32_at(ioreq_offset::VP_EPORT),
            state: bits & IOREQ_BITS_STATE_MASK,
            data_is_ptr: bits & IOREQ_BITS_DATA_IS_PTR != 0,
            dir_read: bits & IOREQ_BITS_DIR_READ != 0,
            df: bits & IOREQ_BITS_DF != 0,
            kind: bytes[ioreq_offset::TYPE],
        }
    }
}

impl fmt::Display for RawRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {} {} addr {:#x} size {} count {} data {:#x}{}{}",
            self.kind,
            if self.dir_read { "read" } else { "write" },
            self.addr,
            self.size,
            self.count,
            self.data,
            if self.data_is_ptr { " (pointer)" } else { "" },
            if self.df { " df" } else { "" },
        )
    }
}

/// Reads and writes guest memory for requests whose data lives there.
pub(crate) trait GuestAccess {
    /// Fills `buf` from guest-physical `addr`; false if that is not guest RAM.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
    /// Writes `data` at guest-physical `addr`; false if that is not guest RAM.
    fn write(&self, addr: u64, data: &[u8]) -> bool;
}

impl GuestAccess for crate::memory::GuestMemoryMmap {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        use vm_memory::Bytes;
        self.read_slice(buf, vm_memory::GuestAddress(addr)).is_ok()
    }

    fn write(&self, addr: u64, data: &[u8]) -> bool {
        use vm_memory::Bytes;
        self.write_slice(data, vm_memory::GuestAddress(addr))
            .is_ok()
    }
}

/// A request that cannot be carried out, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub(crate) request: RawRequest,
    pub(crate) reason: &'static str,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid ioreq ({}): {}", self.request, self.reason)
    }
}

/// What one exit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitKind {
    /// Port read(s): the VMM fills the data.
    PioIn { port: u16, size: u8 },
    /// Port write(s).
    PioOut { port: u16, size: u8 },
    /// An MMIO read: the VMM fills the data.
    MmioRead { addr: u64 },
    /// An MMIO write.
    MmioWrite { addr: u64 },
}

/// One exit of an exchange: its kind and how many bytes of the exchange buffer it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) kind: ExitKind,
    pub(crate) len: usize,
}

/// What comes next in an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Present this exit to the VMM; its data is the first `len` bytes of the buffer (for a
    /// write, already filled).
    Exit(Step),
    /// The request is done: write `data` into the slot and signal `STATE_IORESP_READY`.
    Respond { data: u64 },
}

/// One request being served.
#[derive(Clone, Debug)]
pub(crate) struct Exchange {
    request: RawRequest,
    mmio: bool,
    size: usize,
    count: u32,
    /// Elements already served.
    done: u32,
    /// Elements in the exit presented last (0: none outstanding).
    pending: u32,
    /// The value to answer with (for reads without a pointer: the last value read).
    response: u64,
}

impl Exchange {
    /// Checks `request` and starts serving it. Requests of kinds a device model has nothing
    /// to do for (time offsets, map-cache invalidation) are answered at once.
    pub(crate) fn start(request: RawRequest) -> Result<Exchange, Invalid> {
        let invalid = |reason| Invalid { request, reason };
        let answered = |response| Exchange {
            request,
            mmio: false,
            size: 0,
            count: 0,
            done: 0,
            pending: 0,
            response,
        };
        // A configuration cycle is the data-port access the guest made (see pci_config_port).
        let request = if request.kind == IOREQ_TYPE_PCI_CONFIG {
            match pci_config_port(request.addr).map_err(invalid)? {
                PciConfig::Port(port) => RawRequest {
                    kind: IOREQ_TYPE_PIO,
                    addr: port,
                    ..request
                },
                // Reads get all ones (a pointer's destination keeps what it held), writes
                // are dropped.
                PciConfig::Unreachable => {
                    if !matches!(request.size, 1 | 2 | 4) {
                        return Err(invalid("unsupported access size"));
                    }
                    let response = if request.dir_read && !request.data_is_ptr {
                        u64::MAX
                    } else {
                        request.data
                    };
                    return Ok(answered(response));
                }
            }
        } else {
            request
        };
        let mmio = match request.kind {
            IOREQ_TYPE_PIO => false,
            IOREQ_TYPE_COPY => true,
            IOREQ_TYPE_TIMEOFFSET | IOREQ_TYPE_INVALIDATE => return Ok(answered(request.data)),
            _ => return Err(invalid("unknown request type")),
        };
        let size = request.size as usize;
        let sizes: &[usize] = if mmio { &[1, 2, 4, 8] } else { &[1, 2, 4] };
        if !sizes.contains(&size) {
            return Err(invalid("unsupported access size"));
        }
        if !mmio && request.addr > u64::from(u16::MAX) {
            return Err(invalid("port number above 0xffff"));
        }
        if request.count > MAX_COUNT {
            return Err(invalid("repeat count too large"));
        }
        // Port I/O without a pointer is a single access whatever `count` says.
        let count = if !mmio && !request.data_is_ptr {
            1
        } else {
            request.count
        };
        Ok(Exchange {
            request,
            mmio,
            size,
            count,
            done: 0,
            pending: 0,
            // A read that never completes answers all-ones, as an absent device would.
            response: if request.dir_read && !request.data_is_ptr {
                u64::MAX
            } else {
                request.data
            },
        })
    }

    /// The width of this exchange if it is a single port read into a register (`in`, not
    /// `ins`): the access whose answer Xen puts into `rax` only when the vCPU next runs.
    pub(crate) fn register_port_read(&self) -> Option<usize> {
        let r = &self.request;
        (!self.mmio && r.kind == IOREQ_TYPE_PIO && r.dir_read && !r.data_is_ptr && self.size > 0)
            .then_some(self.size)
    }

    /// Guest-physical or MMIO address of element `index`, stepping by the element size,
    /// downwards with `df`. `None` if it wraps.
    fn element_addr(&self, base: u64, index: u32) -> Option<u64> {
        let offset = u64::from(index).checked_mul(self.size as u64)?;
        if self.request.df {
            base.checked_sub(offset)
        } else {
            base.checked_add(offset)
        }
    }

    /// The next exit, or the response once every element is served. For writes the
    /// exit's data is put in `buf` (which must hold [`MAX_BATCH_BYTES`]).
    pub(crate) fn next(&mut self, memory: &dyn GuestAccess, buf: &mut [u8]) -> Next {
        debug_assert_eq!(self.pending, 0, "complete() the previous step first");
        if self.done >= self.count {
            return Next::Respond {
                data: self.response,
            };
        }
        let remaining = self.count - self.done;
        let batch = if self.mmio {
            1
        } else {
            remaining.min((MAX_BATCH_BYTES / self.size) as u32)
        };
        let len = batch as usize * self.size;
        let kind = match (self.mmio, self.request.dir_read) {
            // The port number was checked in `start`.
            (false, true) => ExitKind::PioIn {
                port: self.request.addr as u16,
                size: self.size as u8,
            },
            (false, false) => ExitKind::PioOut {
                port: self.request.addr as u16,
                size: self.size as u8,
            },
            (true, read) => {
                let Some(addr) = self.element_addr(self.request.addr, self.done) else {
                    // The MMIO address wrapped: nothing is there; skip the rest.
                    self.done = self.count;
                    return Next::Respond {
                        data: self.response,
                    };
                };
                if read {
                    ExitKind::MmioRead { addr }
                } else {
                    ExitKind::MmioWrite { addr }
                }
            }
        };
        let data = &mut buf[..len];
        if self.request.dir_read {
            // What the VMM leaves unwritten reads as all-ones.
            data.fill(0xff);
        } else if self.request.data_is_ptr {
            for (i, element) in data.chunks_exact_mut(self.size).enumerate() {
                let index = self.done + i as u32;
                let readable = self
                    .element_addr(self.request.data, index)
                    .is_some_and(|addr| memory.read(addr, element));
                if !readable {
                    element.fill(0xff);
                }
            }
        } else {
            // Inline data: the value, repeated for each element (`rep stos`).
            let value = self.request.data.to_le_bytes();
            for element in data.chunks_exact_mut(self.size) {
                element.copy_from_slice(&value[..self.size]);
            }
        }
        self.pending = batch;
        Next::Exit(Step { kind, len })
    }

    /// Records that the VMM handled the exit [`Exchange::next`] returned; `data` is the
    /// exit's data (for a read, what the VMM filled in).
    pub(crate) fn complete(&mut self, memory: &dyn GuestAccess, data: &[u8]) {
        let batch = std::mem::take(&mut self.pending);
        if self.request.dir_read {
            for (i, element) in data
                .chunks_exact(self.size)
                .take(batch as usize)
                .enumerate()
            {
                let index = self.done + i as u32;
                if self.request.data_is_ptr {
                    // A destination outside guest RAM loses the value, as on hardware.
                    if let Some(addr) = self.element_addr(self.request.data, index) {
                        memory.write(addr, element);
                    }
                } else {
                    let mut value = [0u8; 8];
                    value[..self.size].copy_from_slice(element);
                    self.response = u64::from_le_bytes(value);
                }
            }
        }
        self.done += batch;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::xen::sys::abi::{STATE_IOREQ_READY, STATE_IORESP_READY};

    /// Guest RAM at 0..len, for requests with pointers.
    struct Ram(RefCell<Vec<u8>>);

    impl Ram {
        fn new(len: usize) -> Self {
            Ram(RefCell::new(vec![0; len]))
        }
    }

    impl GuestAccess for Ram {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            let ram = self.0.borrow();
            let Some(src) = usize::try_from(addr)
                .ok()
                .and_then(|a| ram.get(a..a.checked_add(buf.len())?))
            else {
                return false;
            };
            buf.copy_from_slice(src);
            true
        }

        fn write(&self, addr: u64, data: &[u8]) -> bool {
            let mut ram = self.0.borrow_mut();
            let Some(dst) = usize::try_from(addr)
                .ok()
                .and_then(|a| ram.get_mut(a..a.checked_add(data.len())?))
            else {
                return false;
            };
            dst.copy_from_slice(data);
            true
        }
    }

    fn hex(s: &str) -> [u8; 32] {
        let bytes: Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        bytes.try_into().unwrap()
    }

    /// Serves one request with a VMM that answers reads from `answers` (in order) and
    /// records what it saw; returns (exits, response).
    fn serve(
        raw: RawRequest,
        ram: &Ram,
        answers: &mut dyn Iterator<Item = u8>,
    ) -> (Vec<(ExitKind, Vec<u8>)>, u64) {
        let mut exchange = Exchange::start(raw).unwrap();
        let mut buf = vec![0u8; MAX_BATCH_BYTES];
        let mut exits = Vec::new();
        loop {
            match exchange.next(ram, &mut buf) {
                Next::Exit(step) => {
                    let data = &mut buf[..step.len];
                    if matches!(
                        step.kind,
                        ExitKind::PioIn { .. } | ExitKind::MmioRead { .. }
                    ) {
                        for byte in data.iter_mut() {
                            *byte = answers.next().unwrap();
                        }
                    }
                    exits.push((step.kind, data.to_vec()));
                    exchange.complete(ram, data);
                }
                Next::Respond { data } => return (exits, data),
            }
        }
    }

    // Slots recorded from a PVH guest on Xen 4.17.7 (in the harness's dom0, with
    // VMKIT_XEN_TRACE set), byte for byte as the ioreq page held them when vmkit read them.

    /// `mov al, 0x5a; out 0x81, al`.
    const OUT_BYTE: &str = "81000000000000005a0000000000000001000000010000000100000000000100";
    /// `mov ax, 0x1234; mov dx, 0x3f8; out dx, ax`.
    const OUT_WORD: &str = "f803000000000000341200000000000001000000020000000100000000000100";
    /// `mov eax, 0xdeadbeef; out dx, eax` (dx = 0x3f8).
    const OUT_DWORD: &str = "f803000000000000efbeadde0000000001000000040000000100000000000100";
    /// `in al, 0x61`.
    const IN_BYTE: &str = "6100000000000000000000000000000001000000010000000100000000002100";
    /// `mov dx, 0x71; in eax, dx`.
    const IN_DWORD: &str = "7100000000000000000000000000000001000000040000000100000000002100";
    /// `mov eax, [rbx]` (rbx = 0xd0000000).
    const MMIO_READ: &str = "000000d000000000000000000000000001000000040000000100000000002101";
    /// `mov [rbx + 16], rax` (rax = 0x0102030405060708).
    const MMIO_WRITE: &str = "100000d000000000080706050403020101000000080000000100000000000101";
    /// `mov byte [rbx + 3], 0x99`.
    const MMIO_WRITE_BYTE: &str =
        "030000d000000000990000000000000001000000010000000100000000000101";
    /// `rep insb`, 6 bytes from port 0x90 to 0x200000.
    const REP_INSB: &str = "9000000000000000000020000000000006000000010000000100000000003100";
    /// `rep outsb`, 3 bytes from 0x200000 to port 0x3f8.
    const REP_OUTSB: &str = "f803000000000000000020000000000003000000010000000100000000001100";
    /// `std; rep outsb`, 2 bytes from 0x200005 downwards to port 0x3f8.
    const REP_OUTSB_DOWN: &str = "f803000000000000050020000000000002000000010000000100000000005100";
    /// `rep movsd`, 3 dwords from MMIO at 0xd0000100 to RAM at 0x201000.
    const REP_MOVSD_FROM_MMIO: &str =
        "000100d000000000001020000000000003000000040000000100000000003101";

    fn recorded(s: &str) -> RawRequest {
        RawRequest::from_bytes(&hex(s))
    }

    #[test]
    fn decodes_the_slot_layout() {
        let r = recorded(REP_INSB);
        assert_eq!(r.addr, 0x90);
        assert_eq!(r.data, 0x20_0000);
        assert_eq!((r.count, r.size, r.vp_eport), (6, 1, 1));
        assert_eq!(r.state, STATE_IOREQ_READY);
        assert!(r.data_is_ptr && r.dir_read && !r.df);
        assert_eq!(r.kind, IOREQ_TYPE_PIO);
        let r = recorded(REP_OUTSB_DOWN);
        assert!(r.data_is_ptr && !r.dir_read && r.df);
        let r = recorded(MMIO_READ);
        assert_eq!((r.kind, r.addr, r.size), (IOREQ_TYPE_COPY, 0xd000_0000, 4));
        assert!(r.dir_read && !r.data_is_ptr);
        assert_ne!(STATE_IORESP_READY, r.state);
    }

    #[test]
    fn port_writes_carry_their_value_and_width() {
        let ram = Ram::new(0);
        let none = &mut std::iter::empty();
        assert_eq!(
            serve(recorded(OUT_BYTE), &ram, none).0,
            [(
                ExitKind::PioOut {
                    port: 0x81,
                    size: 1
                },
                vec![0x5a]
            )]
        );
        assert_eq!(
            serve(recorded(OUT_WORD), &ram, none).0,
            [(
                ExitKind::PioOut {
                    port: 0x3f8,
                    size: 2
                },
                vec![0x34, 0x12]
            )]
        );
        assert_eq!(
            serve(recorded(OUT_DWORD), &ram, none).0,
            [(
                ExitKind::PioOut {
                    port: 0x3f8,
                    size: 4
                },
                vec![0xef, 0xbe, 0xad, 0xde]
            )]
        );
    }

    #[test]
    fn port_reads_answer_with_what_the_vmm_filled() {
        let ram = Ram::new(0);
        let (exits, response) = serve(recorded(IN_BYTE), &ram, &mut [0x42].into_iter());
        assert_eq!(
            exits,
            [(
                ExitKind::PioIn {
                    port: 0x61,
                    size: 1
                },
                vec![0x42]
            )]
        );
        assert_eq!(response, 0x42);
        let (exits, response) = serve(recorded(IN_DWORD), &ram, &mut [1, 2, 3, 4].into_iter());
        assert_eq!(
            exits,
            [(
                ExitKind::PioIn {
                    port: 0x71,
                    size: 4
                },
                vec![1, 2, 3, 4]
            )]
        );
        assert_eq!(response, 0x0403_0201);
    }

    #[test]
    fn mmio_reads_and_writes() {
        let ram = Ram::new(0);
        let (exits, response) = serve(
            recorded(MMIO_READ),
            &ram,
            &mut 0xcafe_f00du32.to_le_bytes().into_iter(),
        );
        assert_eq!(
            exits,
            [(
                ExitKind::MmioRead { addr: 0xd000_0000 },
                0xcafe_f00du32.to_le_bytes().to_vec()
            )]
        );
        assert_eq!(response, 0xcafe_f00d);
        let (exits, _) = serve(recorded(MMIO_WRITE), &ram, &mut std::iter::empty());
        assert_eq!(
            exits,
            [(
                ExitKind::MmioWrite { addr: 0xd000_0010 },
                0x0102_0304_0506_0708u64.to_le_bytes().to_vec()
            )]
        );
        let (exits, _) = serve(recorded(MMIO_WRITE_BYTE), &ram, &mut std::iter::empty());
        assert_eq!(
            exits,
            [(ExitKind::MmioWrite { addr: 0xd000_0003 }, vec![0x99])]
        );
    }

    #[test]
    fn rep_ins_is_batched_into_guest_memory() {
        let ram = Ram::new(0x20_1000);
        let (exits, _) = serve(recorded(REP_INSB), &ram, &mut (b'a'..=b'f'));
        assert_eq!(
            exits,
            [(
                ExitKind::PioIn {
                    port: 0x90,
                    size: 1
                },
                b"abcdef".to_vec()
            )]
        );
        assert_eq!(&ram.0.borrow()[0x20_0000..0x20_0006], b"abcdef");
    }

    #[test]
    fn rep_outs_reads_guest_memory_in_access_order() {
        let ram = Ram::new(0x20_1000);
        assert!(ram.write(0x20_0000, b"ABCDEF"));
        let none = &mut std::iter::empty();
        assert_eq!(
            serve(recorded(REP_OUTSB), &ram, none).0,
            [(
                ExitKind::PioOut {
                    port: 0x3f8,
                    size: 1
                },
                b"ABC".to_vec()
            )]
        );
        // Downwards (`std`): the byte at 0x200005 first.
        assert_eq!(
            serve(recorded(REP_OUTSB_DOWN), &ram, none).0,
            [(
                ExitKind::PioOut {
                    port: 0x3f8,
                    size: 1
                },
                b"FE".to_vec()
            )]
        );
    }

    #[test]
    fn repeated_mmio_is_one_exit_per_element() {
        let ram = Ram::new(0x20_2000);
        let (exits, _) = serve(recorded(REP_MOVSD_FROM_MMIO), &ram, &mut (1u8..=12));
        let addrs: Vec<_> = exits.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            addrs,
            [
                ExitKind::MmioRead { addr: 0xd000_0100 },
                ExitKind::MmioRead { addr: 0xd000_0104 },
                ExitKind::MmioRead { addr: 0xd000_0108 },
            ]
        );
        assert_eq!(
            &ram.0.borrow()[0x20_1000..0x20_100c],
            &(1u8..=12).collect::<Vec<_>>()[..]
        );
        // rep stosw to MMIO (built, not recorded): the inline value at each element.
        let raw = RawRequest {
            addr: 0xd000_0100,
            data: 0xabcd,
            count: 2,
            size: 2,
            kind: IOREQ_TYPE_COPY,
            ..RawRequest::default()
        };
        let (exits, _) = serve(raw, &ram, &mut std::iter::empty());
        assert_eq!(
            exits,
            [
                (ExitKind::MmioWrite { addr: 0xd000_0100 }, vec![0xcd, 0xab]),
                (ExitKind::MmioWrite { addr: 0xd000_0102 }, vec![0xcd, 0xab]),
            ]
        );
    }

    #[test]
    fn long_port_strings_are_split_into_page_sized_exits() {
        let ram = Ram::new(0x4000);
        let raw = RawRequest {
            addr: 0x1f0,
            data: 0,
            count: 3000,
            size: 2,
            data_is_ptr: true,
            dir_read: true,
            kind: IOREQ_TYPE_PIO,
            ..RawRequest::default()
        };
        let (exits, _) = serve(raw, &ram, &mut std::iter::repeat(7));
        let lens: Vec<usize> = exits.iter().map(|(_, d)| d.len()).collect();
        assert_eq!(lens, [4096, 6000 - 4096]);
        assert!(ram.0.borrow()[..6000].iter().all(|&b| b == 7));
    }

    /// A configuration request as Xen forms it: `sbdf` in bits 63-32, `register` below.
    fn pci_config(sbdf: u32, register: u32, size: u32, read: bool, data: u64) -> RawRequest {
        RawRequest {
            addr: u64::from(sbdf) << 32 | u64::from(register),
            data,
            count: 1,
            size,
            dir_read: read,
            kind: IOREQ_TYPE_PCI_CONFIG,
            ..RawRequest::default()
        }
    }

    #[test]
    fn configuration_cycles_become_the_guests_data_port_access() {
        let ram = Ram::new(0x1000);
        // 00:03.0, register 0x02 (the device id), a word: `in ax, 0xcfe`.
        let (exits, response) = serve(
            pci_config(3 << 3, 0x02, 2, true, 0),
            &ram,
            &mut [0x08, 0x00].into_iter(),
        );
        assert_eq!(
            exits,
            [(
                ExitKind::PioIn {
                    port: 0xcfe,
                    size: 2
                },
                vec![0x08, 0x00]
            )]
        );
        assert_eq!(response, 0x0008);
        // A dword write of BAR 0 of 00:1f.7: `out 0xcfc, eax`.
        let (exits, _) = serve(
            pci_config(0xff, 0x10, 4, false, 0xfebf_0000),
            &ram,
            &mut std::iter::empty(),
        );
        assert_eq!(
            exits,
            [(
                ExitKind::PioOut {
                    port: 0xcfc,
                    size: 4
                },
                0xfebf_0000u32.to_le_bytes().to_vec()
            )]
        );
        // `rep insb` from 0xcfd into RAM: one batched exit, as a port string.
        let raw = RawRequest {
            data: 0x100,
            count: 3,
            data_is_ptr: true,
            ..pci_config(0x0100, 0x41, 1, true, 0)
        };
        let (exits, _) = serve(raw, &ram, &mut [1, 2, 3].into_iter());
        assert_eq!(
            exits[0].0,
            ExitKind::PioIn {
                port: 0xcfd,
                size: 1
            }
        );
        assert_eq!(&ram.0.borrow()[0x100..0x103], [1, 2, 3]);
    }

    #[test]
    fn hostile_configuration_cycles_are_refused_or_answered_as_absent() {
        for (raw, reason) in [
            (
                pci_config(1 << 16, 0, 4, true, 0),
                "PCI segment other than 0",
            ),
            (
                pci_config(0, 0x1000, 4, true, 0),
                "PCI register beyond the 4 KiB configuration space",
            ),
            (
                pci_config(0, u32::MAX, 1, false, 0),
                "PCI register beyond the 4 KiB configuration space",
            ),
            (pci_config(0, 0, 3, true, 0), "unsupported access size"),
            (pci_config(0, 0, 8, true, 0), "unsupported access size"),
            (pci_config(0, 0x100, 0, true, 0), "unsupported access size"),
        ] {
            let err = Exchange::start(raw).unwrap_err();
            assert_eq!(err.reason, reason, "{raw}");
            // The report names what the guest's request was, not what it became.
            assert_eq!(err.request, raw);
        }
        // An AMD extended register (above 0xff): no exit; reads all ones, writes dropped.
        let ram = Ram::new(0x1000);
        let (exits, response) = serve(
            pci_config(0, 0x104, 4, true, 0),
            &ram,
            &mut std::iter::empty(),
        );
        assert!(exits.is_empty());
        assert_eq!(response, u64::MAX);
        let (exits, _) = serve(
            pci_config(0, 0xf00, 2, false, 0x1234),
            &ram,
            &mut std::iter::empty(),
        );
        assert!(exits.is_empty());
    }

    #[test]
    fn any_configuration_request_stays_on_the_data_ports() {
        // A deterministic sweep of hostile field values (xorshift): every request is refused
        // or served through ports 0xcfc-0xcff only, without a panic.
        let ram = Ram::new(0x1000);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let bits = next();
            let raw = RawRequest {
                addr: if bits & 1 == 0 {
                    next()
                } else {
                    next() & 0xffff_ffff_0000_0fff
                },
                data: next(),
                count: if bits & 2 == 0 {
                    next() as u32
                } else {
                    (next() % 5) as u32
                },
                size: (next() % 10) as u32,
                data_is_ptr: bits & 4 != 0,
                dir_read: bits & 8 != 0,
                df: bits & 16 != 0,
                kind: IOREQ_TYPE_PCI_CONFIG,
                ..RawRequest::default()
            };
            let Ok(mut exchange) = Exchange::start(raw) else {
                continue;
            };
            let mut buf = vec![0u8; MAX_BATCH_BYTES];
            let mut exits = 0;
            while let Next::Exit(step) = exchange.next(&ram, &mut buf) {
                match step.kind {
                    ExitKind::PioIn { port, .. } | ExitKind::PioOut { port, .. } => {
                        assert!((0xcfc..=0xcff).contains(&port), "{raw}: port {port:#x}")
                    }
                    other => panic!("{raw}: {other:?}"),
                }
                exchange.complete(&ram, &buf[..step.len]);
                exits += 1;
                assert!(exits <= MAX_COUNT, "{raw}");
            }
        }
    }

    #[test]
    fn hostile_requests_are_refused_or_contained() {
        let base = RawRequest {
            kind: IOREQ_TYPE_PIO,
            size: 1,
            count: 1,
            ..RawRequest::default()
        };
        for (raw, reason) in [
            (RawRequest { size: 3, ..base }, "unsupported access size"),
            (RawRequest { size: 8, ..base }, "unsupported access size"),
            (
                RawRequest {
                    addr: 0x1_0000,
                    ..base
                },
                "port number above 0xffff",
            ),
            (RawRequest { kind: 42, ..base }, "unknown request type"),
            (
                RawRequest {
                    count: u32::MAX,
                    data_is_ptr: true,
                    ..base
                },
                "repeat count too large",
            ),
        ] {
            assert_eq!(Exchange::start(raw).unwrap_err().reason, reason);
        }
        // A pointer outside guest RAM: writes send all-ones, reads are dropped.
        let ram = Ram::new(0x1000);
        let raw = RawRequest {
            data: 0xffff_ffff_ffff_fff0,
            count: 2,
            data_is_ptr: true,
            ..base
        };
        let (exits, _) = serve(raw, &ram, &mut std::iter::empty());
        assert_eq!(exits[0].1, [0xff, 0xff]);
        let raw = RawRequest {
            dir_read: true,
            ..raw
        };
        serve(raw, &ram, &mut std::iter::repeat(1));
        assert!(ram.0.borrow().iter().all(|&b| b == 0));
        // Time-offset and invalidate requests need no exit.
        for kind in [IOREQ_TYPE_TIMEOFFSET, IOREQ_TYPE_INVALIDATE] {
            let (exits, _) = serve(RawRequest { kind, ..base }, &ram, &mut std::iter::empty());
            assert!(exits.is_empty());
        }
    }
}
