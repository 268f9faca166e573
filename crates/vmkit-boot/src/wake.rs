//! Waking a guest from ACPI S3 (suspend to RAM), as firmware would: the guest left the
//! address to resume at in its FACS; on wake, the vCPU that suspended starts there.
//!
//! A guest suspends by writing SLP_TYP S3 with SLP_EN to PM1a_CNT (see
//! `vmkit_devices::PmBlock`), then spins until the machine sleeps. The VMM pauses that vCPU
//! (and keeps it outside `run()`) until something wakes the machine, then calls [`read_waking_vector`] on the FACS the boot layer wrote (its address:
//! [`linux::acpi::facs_address`](crate::linux::acpi::facs_address)), loads the vCPU with
//! [`enter_waking_vector`], marks the wake in the PM block (`PmBlock::wake`) and runs the vCPU
//! again. Other vCPUs need nothing: an OS takes them offline before it suspends and starts them
//! again with INIT and SIPI (the in-kernel local APIC's work) once it runs.
//!
//! Everything read from the FACS is the guest's and is checked: the table must still say
//! `FACS`, and the vector must lie in guest RAM and suit the mode it asks for.
//!
//! ```no_run
//! # fn f(vm: &dyn vmkit::Vm, vcpu: &dyn vmkit::Vcpu, facs: u64) -> Result<(), vmkit_boot::wake::WakeError> {
//! use vmkit::vm_memory::GuestAddress;
//! use vmkit_boot::wake;
//!
//! let vector = wake::read_waking_vector(&vm.memory(), GuestAddress(facs))?;
//! wake::enter_waking_vector(vcpu, vector)?;
//! # Ok(()) }
//! ```

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmkit::arch::x86_64::{DescriptorTable, Regs, Segment, SpecialRegs};
use vmkit::{Vcpu, VcpuError};

/// Offsets and flags of the FACS fields this module reads (ACPI 6.5, table 5.14).
mod facs {
    /// "FACS".
    pub const SIGNATURE: [u8; 4] = *b"FACS";
    /// The 32-bit Firmware_Waking_Vector: a real-mode entry.
    pub const FIRMWARE_WAKING_VECTOR: u64 = 12;
    /// The 64-bit X_Firmware_Waking_Vector: a protected-mode entry when non-zero.
    pub const X_FIRMWARE_WAKING_VECTOR: u64 = 24;
    /// OSPM Flags.
    pub const OSPM_FLAGS: u64 = 36;
    /// OSPM Flags bit 0: the OS asks to wake in 64-bit mode (only if the firmware offers it,
    /// which vmkit's FACS does not).
    pub const OSPM_64BIT_WAKE: u32 = 1 << 0;
    /// The bytes read: up to the end of OSPM Flags.
    pub const READ_LEN: usize = 40;
}

/// Where and in which mode the guest wants to resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakingVector {
    /// Real mode at this physical address (below 1 MiB): `CS:IP` is `addr >> 4 : addr & 0xf`.
    /// What Linux and most OSes ask for.
    RealMode(u32),
    /// 32-bit protected mode, paging off, flat 4 GiB segments, at this physical address.
    Protected32(u32),
}

/// Errors from waking a guest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WakeError {
    /// The FACS is not in guest memory.
    #[error("cannot read the FACS at guest address {addr:#x}")]
    FacsUnreadable {
        /// Where it should be.
        addr: u64,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The bytes at the FACS's address no longer start with `FACS` (the guest overwrote them).
    #[error(
        "the table at guest address {addr:#x} is not a FACS (its signature is {signature:02x?})"
    )]
    NotAFacs {
        /// The FACS's address.
        addr: u64,
        /// The first four bytes found there.
        signature: [u8; 4],
    },
    /// The guest left no waking vector (both are zero): it did not prepare to resume.
    #[error("the guest left no waking vector in its FACS at {addr:#x}")]
    NoWakingVector {
        /// The FACS's address.
        addr: u64,
    },
    /// The guest asked to wake in 64-bit mode, which vmkit's FACS does not offer.
    #[error("the guest asked to wake in 64-bit mode (OSPM flags {ospm_flags:#x}), which this FACS does not offer")]
    LongModeWake {
        /// The FACS's OSPM flags.
        ospm_flags: u32,
    },
    /// The waking vector cannot be entered in its mode, or is not in guest RAM.
    #[error("the waking vector {vector:#x} ({mode}) is not {why}")]
    BadVector {
        /// The vector.
        vector: u64,
        /// "real mode" or "protected mode".
        mode: &'static str,
        /// What it should be, e.g. "below 1 MiB".
        why: &'static str,
    },
    /// Loading the vCPU's registers failed.
    #[error("cannot load the vCPU for the waking vector")]
    Vcpu(#[source] VcpuError),
}

/// Reads the waking vector the guest left in the FACS at `facs` (the X_Firmware_Waking_Vector
/// when it is non-zero, else the Firmware_Waking_Vector) and checks it against guest RAM.
pub fn read_waking_vector<M: GuestMemoryBackend>(
    memory: &M,
    facs: GuestAddress,
) -> Result<WakingVector, WakeError> {
    let mut table = [0u8; facs::READ_LEN];
    memory
        .read_slice(&mut table, facs)
        .map_err(|source| WakeError::FacsUnreadable {
            addr: facs.0,
            source,
        })?;
    let field = |at: u64, len: usize| {
        let at = at as usize;
        let mut bytes = [0u8; 8];
        bytes[..len].copy_from_slice(&table[at..at + len]);
        u64::from_le_bytes(bytes)
    };
    let signature = [table[0], table[1], table[2], table[3]];
    if signature != facs::SIGNATURE {
        return Err(WakeError::NotAFacs {
            addr: facs.0,
            signature,
        });
    }
    let real = field(facs::FIRMWARE_WAKING_VECTOR, 4);
    let extended = field(facs::X_FIRMWARE_WAKING_VECTOR, 8);
    // A 32-bit field: the cast keeps all of it.
    let ospm_flags = field(facs::OSPM_FLAGS, 4) as u32;
    let in_ram = |vector: u64| memory.address_in_range(GuestAddress(vector));
    if extended != 0 {
        if ospm_flags & facs::OSPM_64BIT_WAKE != 0 {
            return Err(WakeError::LongModeWake { ospm_flags });
        }
        let bad = |why| WakeError::BadVector {
            vector: extended,
            mode: "protected mode",
            why,
        };
        let vector = u32::try_from(extended).map_err(|_| bad("below 4 GiB"))?;
        return match in_ram(extended) {
            true => Ok(WakingVector::Protected32(vector)),
            false => Err(bad("in guest RAM")),
        };
    }
    let bad = |why| WakeError::BadVector {
        vector: real,
        mode: "real mode",
        why,
    };
    match real {
        0 => Err(WakeError::NoWakingVector { addr: facs.0 }),
        0x10_0000.. => Err(bad("below 1 MiB")),
        _ if !in_ram(real) => Err(bad("in guest RAM")),
        // Below 1 MiB: fits a u32.
        _ => Ok(WakingVector::RealMode(real as u32)),
    }
}

/// The access-rights type of a code segment (execute/read, accessed) and of a data segment
/// (read/write, accessed).
const CODE_TYPE: u8 = 0xb;
const DATA_TYPE: u8 = 0x3;
/// A busy TSS and an LDT, as the processor's reset state has them.
const TSS_BUSY_TYPE: u8 = 0xb;
const LDT_TYPE: u8 = 0x2;
/// CR0.ET (always 1 on modern processors) and CR0.PE.
const CR0_ET: u64 = 1 << 4;
const CR0_PE: u64 = 1 << 0;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;

/// A present, usable segment of `type_` with `base`, `limit` (bytes) and the default size
/// `db`, granularity `g`.
fn segment(selector: u16, type_: u8, base: u64, limit: u32, big: bool) -> Segment {
    Segment {
        base,
        limit,
        selector,
        type_,
        present: true,
        dpl: 0,
        db: big,
        s: true,
        l: false,
        g: big,
        avl: false,
        unusable: false,
    }
}

/// Loads `vcpu` to start at `vector` in its mode, as firmware leaves a processor on wake:
/// paging, long mode and the OS's descriptor tables off (the OS's wake code loads its own),
/// general registers zero, interrupts disabled. Writes nothing to guest memory.
///
/// The vCPU must be outside `run()`: paused through the runner, say. An I/O access still in
/// flight (the vCPU stopped at the guest's write of SLP_EN) is completed first
/// ([`Vcpu::complete_pending_io`]); a backend that can only complete it by running the guest
/// refuses the load, so pause such a vCPU with a kick rather than at that exit.
pub fn enter_waking_vector(vcpu: &dyn Vcpu, vector: WakingVector) -> Result<(), WakeError> {
    vcpu.complete_pending_io().map_err(WakeError::Vcpu)?;
    let old = vcpu.sregs().map_err(WakeError::Vcpu)?;
    let (cs, data, cr0, rip) = match vector {
        WakingVector::RealMode(addr) => {
            // Below 1 MiB (read_waking_vector checks it), so the selector fits 16 bits.
            let selector = (addr >> 4) as u16;
            let cs = segment(selector, CODE_TYPE, u64::from(selector) << 4, 0xffff, false);
            (
                cs,
                segment(0, DATA_TYPE, 0, 0xffff, false),
                CR0_ET,
                addr & 0xf,
            )
        }
        WakingVector::Protected32(addr) => {
            // Flat 4 GiB segments, loaded straight into the registers' hidden parts: there is
            // no GDT of the firmware's in guest memory to load them from (the OS loads its own).
            let cs = segment(0x10, CODE_TYPE, 0, 0xffff_ffff, true);
            let data = segment(0x18, DATA_TYPE, 0, 0xffff_ffff, true);
            (cs, data, CR0_ET | CR0_PE, addr)
        }
    };
    let system = |type_| Segment {
        s: false,
        ..segment(0, type_, 0, 0xffff, false)
    };
    let sregs = SpecialRegs {
        cs,
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: system(TSS_BUSY_TYPE),
        ldt: system(LDT_TYPE),
        gdt: DescriptorTable {
            base: 0,
            limit: 0xffff,
        },
        idt: DescriptorTable {
            base: 0,
            limit: 0x3ff,
        },
        cr0,
        cr2: 0,
        cr3: 0,
        cr4: 0,
        efer: 0,
        ..old
    };
    vcpu.set_sregs(&sregs).map_err(WakeError::Vcpu)?;
    vcpu.set_regs(&Regs {
        rip: u64::from(rip),
        rflags: RFLAGS_RESERVED,
        ..Regs::default()
    })
    .map_err(WakeError::Vcpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn memory_with_facs(real: u32, extended: u64, ospm: u32) -> GuestMemoryMmap {
        let memory: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let mut table = [0u8; 64];
        table[..4].copy_from_slice(b"FACS");
        table[4..8].copy_from_slice(&64u32.to_le_bytes());
        table[12..16].copy_from_slice(&real.to_le_bytes());
        table[24..32].copy_from_slice(&extended.to_le_bytes());
        table[36..40].copy_from_slice(&ospm.to_le_bytes());
        memory.write_slice(&table, GuestAddress(0xe_0000)).unwrap();
        memory
    }

    fn read(memory: &GuestMemoryMmap) -> Result<WakingVector, WakeError> {
        read_waking_vector(memory, GuestAddress(0xe_0000))
    }

    #[test]
    fn the_real_mode_vector_is_read_and_checked() {
        assert_eq!(
            read(&memory_with_facs(0x9_a000, 0, 0)).unwrap(),
            WakingVector::RealMode(0x9_a000)
        );
        assert!(matches!(
            read(&memory_with_facs(0, 0, 0)),
            Err(WakeError::NoWakingVector { addr: 0xe_0000 })
        ));
        assert!(matches!(
            read(&memory_with_facs(0x10_0000, 0, 0)),
            Err(WakeError::BadVector {
                why: "below 1 MiB",
                ..
            })
        ));
    }

    #[test]
    fn the_extended_vector_wins_and_must_be_32_bit_ram() {
        assert_eq!(
            read(&memory_with_facs(0x9_a000, 0x10_0000, 0)).unwrap(),
            WakingVector::Protected32(0x10_0000)
        );
        assert!(matches!(
            read(&memory_with_facs(0, 0x30_0000, 0)),
            Err(WakeError::BadVector {
                why: "in guest RAM",
                ..
            })
        ));
        assert!(matches!(
            read(&memory_with_facs(0, 1 << 32, 0)),
            Err(WakeError::BadVector {
                why: "below 4 GiB",
                ..
            })
        ));
        assert!(matches!(
            read(&memory_with_facs(0, 0x10_0000, 1)),
            Err(WakeError::LongModeWake { ospm_flags: 1 })
        ));
    }

    #[test]
    fn a_table_that_is_not_a_facs_or_not_in_memory_is_refused() {
        let memory = memory_with_facs(0x9_a000, 0, 0);
        memory.write_slice(b"XXXX", GuestAddress(0xe_0000)).unwrap();
        assert!(matches!(read(&memory), Err(WakeError::NotAFacs { .. })));
        assert!(matches!(
            read_waking_vector(&memory, GuestAddress(0x1f_fff0)),
            Err(WakeError::FacsUnreadable {
                addr: 0x1f_fff0,
                ..
            })
        ));
    }
}
