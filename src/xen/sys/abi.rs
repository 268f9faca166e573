//! Xen 4.17's public ABI as far as vmkit uses it: the structures the C libraries and the
//! privcmd driver exchange, and their constants.
//!
//! The domctl/sysctl structures (and the HVM save records) change between Xen releases;
//! these are Xen 4.17's (`XEN_DOMCTL_INTERFACE_VERSION` 0x15). `layout_tests` compiles a C
//! program against the installed headers and checks every size and offset here against it.

#![allow(missing_docs)]
// Mirrors of C structures; the C headers document the fields.
// Some constants are here for the layout test's sake, or name values vmkit checks for.
#![allow(dead_code)]

/// A domain id (`domid_t`).
pub type DomId = u16;
/// A guest frame number (`xen_pfn_t`, an `unsigned long`).
pub type XenPfn = u64;
/// An event channel port (`evtchn_port_t`).
pub type EvtchnPort = u32;
/// An ioreq server id (`ioservid_t`).
pub type IoServId = u16;

/// The domctl interface version these structures belong to.
pub const XEN_DOMCTL_INTERFACE_VERSION: u32 = 0x15;

// --- domain creation (xen/domctl.h, xen/arch-x86/xen.h) ---

pub const XEN_DOMCTL_CDF_HVM: u32 = 1 << 0;
pub const XEN_DOMCTL_CDF_HAP: u32 = 1 << 1;
pub const XEN_X86_EMU_LAPIC: u32 = 1 << 0;
pub const XEN_X86_EMU_HPET: u32 = 1 << 1;
pub const XEN_X86_EMU_PM: u32 = 1 << 2;
pub const XEN_X86_EMU_RTC: u32 = 1 << 3;
pub const XEN_X86_EMU_IOAPIC: u32 = 1 << 4;
pub const XEN_X86_EMU_PIC: u32 = 1 << 5;
pub const XEN_X86_EMU_VGA: u32 = 1 << 6;
pub const XEN_X86_EMU_IOMMU: u32 = 1 << 7;
pub const XEN_X86_EMU_PIT: u32 = 1 << 8;
pub const XEN_X86_EMU_USE_PIRQ: u32 = 1 << 9;
pub const XEN_X86_EMU_VPCI: u32 = 1 << 10;
pub const XEN_X86_EMU_ALL: u32 = XEN_X86_EMU_LAPIC
    | XEN_X86_EMU_HPET
    | XEN_X86_EMU_PM
    | XEN_X86_EMU_RTC
    | XEN_X86_EMU_IOAPIC
    | XEN_X86_EMU_PIC
    | XEN_X86_EMU_VGA
    | XEN_X86_EMU_IOMMU
    | XEN_X86_EMU_PIT
    | XEN_X86_EMU_USE_PIRQ
    | XEN_X86_EMU_VPCI;
pub const XEN_DOMCTL_GRANT_VERSION_1: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ArchDomainConfig {
    pub emulation_flags: u32,
    pub misc_flags: u32,
}

/// `struct xen_domctl_createdomain`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CreateDomain {
    pub ssidref: u32,
    pub handle: [u8; 16],
    pub flags: u32,
    pub iommu_opts: u32,
    pub max_vcpus: u32,
    pub max_evtchn_port: u32,
    pub max_grant_frames: i32,
    pub max_maptrack_frames: i32,
    pub grant_opts: u32,
    pub vmtrace_size: u32,
    pub cpupool_id: u32,
    pub arch: ArchDomainConfig,
}

// --- domain and vCPU information ---

pub const XEN_DOMINF_DYING: u32 = 1 << 0;
pub const XEN_DOMINF_HVM_GUEST: u32 = 1 << 1;
pub const XEN_DOMINF_SHUTDOWN: u32 = 1 << 2;
pub const XEN_DOMINF_PAUSED: u32 = 1 << 3;
pub const XEN_DOMINF_SHUTDOWNMASK: u32 = 255;
pub const XEN_DOMINF_SHUTDOWNSHIFT: u32 = 16;

/// `struct xen_domctl_getdomaininfo` (libxenctrl's `xc_domaininfo_t`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DomainInfo {
    pub domain: DomId,
    pub pad1: u16,
    pub flags: u32,
    pub tot_pages: u64,
    pub max_pages: u64,
    pub outstanding_pages: u64,
    pub shr_pages: u64,
    pub paged_pages: u64,
    pub shared_info_frame: u64,
    pub cpu_time: u64,
    pub nr_online_vcpus: u32,
    pub max_vcpu_id: u32,
    pub ssidref: u32,
    pub handle: [u8; 16],
    pub cpupool: u32,
    pub gpaddr_bits: u8,
    pub pad2: [u8; 7],
    pub arch_config: ArchDomainConfig,
}

/// `struct xen_domctl_getvcpuinfo` (`xc_vcpuinfo_t`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuInfo {
    pub vcpu: u32,
    pub online: u8,
    pub blocked: u8,
    pub running: u8,
    pub cpu_time: u64,
    pub cpu: u32,
}

// --- host information (xen/sysctl.h) ---

pub const XEN_SYSCTL_PHYSCAP_HVM: u32 = 1 << 0;
pub const XEN_SYSCTL_PHYSCAP_PV: u32 = 1 << 1;
pub const XEN_SYSCTL_PHYSCAP_HAP: u32 = 1 << 3;
pub const XEN_SYSCTL_CPU_POLICY_HVM_DEFAULT: u32 = 5;

/// `struct xen_sysctl_physinfo` (`xc_physinfo_t`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Physinfo {
    pub threads_per_core: u32,
    pub cores_per_socket: u32,
    pub nr_cpus: u32,
    pub max_cpu_id: u32,
    pub nr_nodes: u32,
    pub max_node_id: u32,
    pub cpu_khz: u32,
    pub capabilities: u32,
    pub arch_capabilities: u32,
    pub pad: u32,
    pub total_pages: u64,
    pub free_pages: u64,
    pub scrub_pages: u64,
    pub outstanding_pages: u64,
    pub max_mfn: u64,
    pub hw_cap: [u32; 8],
}

// --- CPU policy (xen/arch-x86/xen.h) ---

pub const XEN_CPUID_NO_SUBLEAF: u32 = 0xffff_ffff;

/// `xen_cpuid_leaf_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidLeaf {
    pub leaf: u32,
    pub subleaf: u32,
    pub a: u32,
    pub b: u32,
    pub c: u32,
    pub d: u32,
}

/// `xen_msr_entry_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MsrEntry {
    pub idx: u32,
    pub flags: u32,
    pub val: u64,
}

// --- vCPU context (xen/arch-x86/xen.h, xen-x86_64.h) ---

pub const VGCF_I387_VALID: u64 = 1 << 0;
pub const FLAT_KERNEL_CS64: u16 = 0xe033;
pub const FLAT_KERNEL_SS64: u16 = 0xe02b;
pub const FLAT_KERNEL_DS64: u16 = 0;
pub const VGCF_IN_KERNEL: u64 = 1 << 2;
pub const VGCF_ONLINE: u64 = 1 << 5;

/// `struct cpu_user_regs` of x86-64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub error_code: u32,
    pub entry_vector: u32,
    pub rip: u64,
    pub cs: u16,
    pub pad0: u16,
    pub saved_upcall_mask: u8,
    pub pad1: [u8; 3],
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u16,
    pub pad2: [u16; 3],
    pub es: u16,
    pub pad3: [u16; 3],
    pub ds: u16,
    pub pad4: [u16; 3],
    pub fs: u16,
    pub pad5: [u16; 3],
    pub gs: u16,
    pub pad6: [u16; 3],
}

/// `struct trap_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapInfo {
    pub vector: u8,
    pub flags: u8,
    pub cs: u16,
    pub address: u64,
}

/// `struct vcpu_guest_context` of x86-64 (`vcpu_guest_context_x86_64_t`), the largest member
/// of libxenctrl's `vcpu_guest_context_any_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VcpuGuestContext {
    pub fpu_ctxt: [u8; 512],
    pub flags: u64,
    pub user_regs: CpuUserRegs,
    pub trap_ctxt: [TrapInfo; 256],
    pub ldt_base: u64,
    pub ldt_ents: u64,
    pub gdt_frames: [u64; 16],
    pub gdt_ents: u64,
    pub kernel_ss: u64,
    pub kernel_sp: u64,
    pub ctrlreg: [u64; 8],
    pub debugreg: [u64; 8],
    pub event_callback_eip: u64,
    pub failsafe_callback_eip: u64,
    pub syscall_callback_eip: u64,
    pub vm_assist: u64,
    pub fs_base: u64,
    pub gs_base_kernel: u64,
    pub gs_base_user: u64,
}

impl Default for VcpuGuestContext {
    fn default() -> Self {
        VcpuGuestContext {
            fpu_ctxt: [0; 512],
            flags: 0,
            user_regs: CpuUserRegs::default(),
            trap_ctxt: [TrapInfo::default(); 256],
            ldt_base: 0,
            ldt_ents: 0,
            gdt_frames: [0; 16],
            gdt_ents: 0,
            kernel_ss: 0,
            kernel_sp: 0,
            ctrlreg: [0; 8],
            debugreg: [0; 8],
            event_callback_eip: 0,
            failsafe_callback_eip: 0,
            syscall_callback_eip: 0,
            vm_assist: 0,
            fs_base: 0,
            gs_base_kernel: 0,
            gs_base_user: 0,
        }
    }
}

// --- HVM save records (xen/hvm/save.h, xen/arch-x86/hvm/save.h) ---

pub const HVM_FILE_MAGIC: u32 = 0x5438_1286;
pub const HVM_FILE_VERSION: u32 = 1;
pub const HVM_SAVE_CODE_END: u16 = 0;
pub const HVM_SAVE_CODE_HEADER: u16 = 1;
pub const HVM_SAVE_CODE_CPU: u16 = 2;
pub const HVM_SAVE_CODE_LAPIC_REGS: u16 = 6;
/// `CPU_XSAVE_CODE`: a vCPU's XCR0, XCR0_ACCUM and XSAVE area (variable length).
pub const HVM_SAVE_CODE_CPU_XSAVE: u16 = 16;
/// The bytes of `struct hvm_hw_cpu_xsave` before its XSAVE area: `xfeature_mask`, `xcr0`,
/// `xcr0_accum`.
pub const HVM_CPU_XSAVE_HEADER_SIZE: usize = 24;
pub const XEN_X86_FPU_INITIALISED: u32 = 1 << 0;

// The platform's device records (one instance each, but two PICs).
pub const HVM_SAVE_CODE_PIC: u16 = 3;
pub const HVM_SAVE_CODE_IOAPIC: u16 = 4;
pub const HVM_SAVE_CODE_ISA_IRQ: u16 = 8;
pub const HVM_SAVE_CODE_PIT: u16 = 10;
pub const HVM_SAVE_CODE_HPET: u16 = 12;
/// `HVM_SAVE_LENGTH(HPET)`: vmkit reads only its configuration register.
pub const HVM_HPET_SIZE: usize = 1048;
/// Byte offset of the configuration register in `struct hvm_hw_hpet`.
pub const HVM_HPET_CONFIG_OFFSET: usize = 16;
/// The HPET configuration's legacy-replacement bit (`HPET_CFG_LEGACY`): the HPET, not the
/// PIT, drives IRQ 0.
pub const HPET_CFG_LEGACY: u64 = 1 << 1;
/// `VIOAPIC_NUM_PINS` of a domain other than dom0.
pub const VIOAPIC_NUM_PINS: usize = 48;

/// `struct hvm_hw_pit_channel`: one 8254 channel. Xen keeps no load time in it: a load
/// restarts each channel's count at the moment of the load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmHwPitChannel {
    pub count: u32,
    pub latched_count: u16,
    pub count_latched: u8,
    pub status_latched: u8,
    pub status: u8,
    pub read_state: u8,
    pub write_state: u8,
    pub write_latch: u8,
    pub rw_mode: u8,
    pub mode: u8,
    pub bcd: u8,
    pub gate: u8,
}

/// `struct hvm_hw_pit`: the PIT's three channels and the speaker port's data bit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmHwPit {
    pub channels: [HvmHwPitChannel; 3],
    pub speaker_data_on: u32,
    pub pad0: u32,
}

/// `struct hvm_hw_vpic`: one 8259. Bytes 4 and 5 hold C bit-fields (allocated from bit 0
/// up on x86): byte 4 is `init_state` (bits 0-3) and `priority_add` (bits 4-7); byte 5 is
/// the one-bit flags of the `VPIC_*` constants.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmHwVpic {
    pub irr: u8,
    pub imr: u8,
    pub isr: u8,
    pub irq_base: u8,
    pub init_priority: u8,
    pub flags: u8,
    pub elcr: u8,
    pub int_output: u8,
}

/// Bits of [`HvmHwVpic::flags`], in the order `struct hvm_hw_vpic` declares them.
pub const VPIC_READSEL_ISR: u8 = 1 << 0;
pub const VPIC_POLL: u8 = 1 << 1;
pub const VPIC_AUTO_EOI: u8 = 1 << 2;
pub const VPIC_ROTATE_ON_AUTO_EOI: u8 = 1 << 3;
pub const VPIC_SPECIAL_FULLY_NESTED_MODE: u8 = 1 << 4;
pub const VPIC_SPECIAL_MASK_MODE: u8 = 1 << 5;
pub const VPIC_IS_MASTER: u8 = 1 << 6;

/// `struct hvm_hw_vioapic` with a domain's 48 pins: each entry is the 64-bit value of
/// `union vioapic_redir_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HvmHwVioapic {
    pub base_address: u64,
    pub ioregsel: u32,
    pub id: u32,
    pub redirtbl: [u64; VIOAPIC_NUM_PINS],
}

impl Default for HvmHwVioapic {
    fn default() -> Self {
        HvmHwVioapic {
            base_address: 0,
            ioregsel: 0,
            id: 0,
            redirtbl: [0; VIOAPIC_NUM_PINS],
        }
    }
}

/// `struct hvm_hw_isa_irqs`: the levels of the ISA IRQ wires (bit `n`: IRQ `n`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmHwIsaIrqs {
    pub bits: u64,
}

/// `struct hvm_save_descriptor`: precedes every record in a context buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HvmSaveDescriptor {
    pub typecode: u16,
    pub instance: u16,
    pub length: u32,
}

/// `struct hvm_save_header`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HvmSaveHeader {
    pub magic: u32,
    pub version: u32,
    pub changeset: u64,
    pub cpuid: u32,
    pub gtsc_khz: u32,
}

/// `struct hvm_hw_cpu`: one vCPU's architectural state.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HvmHwCpu {
    pub fpu_regs: [u8; 512],
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rbp: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub dr0: u64,
    pub dr1: u64,
    pub dr2: u64,
    pub dr3: u64,
    pub dr6: u64,
    pub dr7: u64,
    pub cs_sel: u32,
    pub ds_sel: u32,
    pub es_sel: u32,
    pub fs_sel: u32,
    pub gs_sel: u32,
    pub ss_sel: u32,
    pub tr_sel: u32,
    pub ldtr_sel: u32,
    pub cs_limit: u32,
    pub ds_limit: u32,
    pub es_limit: u32,
    pub fs_limit: u32,
    pub gs_limit: u32,
    pub ss_limit: u32,
    pub tr_limit: u32,
    pub ldtr_limit: u32,
    pub idtr_limit: u32,
    pub gdtr_limit: u32,
    pub cs_base: u64,
    pub ds_base: u64,
    pub es_base: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ss_base: u64,
    pub tr_base: u64,
    pub ldtr_base: u64,
    pub idtr_base: u64,
    pub gdtr_base: u64,
    pub cs_arbytes: u32,
    pub ds_arbytes: u32,
    pub es_arbytes: u32,
    pub fs_arbytes: u32,
    pub gs_arbytes: u32,
    pub ss_arbytes: u32,
    pub tr_arbytes: u32,
    pub ldtr_arbytes: u32,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub shadow_gs: u64,
    pub msr_flags: u64,
    pub msr_lstar: u64,
    pub msr_star: u64,
    pub msr_cstar: u64,
    pub msr_syscall_mask: u64,
    pub msr_efer: u64,
    pub msr_tsc_aux: u64,
    pub tsc: u64,
    pub pending_event: u32,
    pub error_code: u32,
    pub flags: u32,
    pub pad0: u32,
}

impl Default for HvmHwCpu {
    fn default() -> Self {
        // SAFETY: HvmHwCpu is plain old data (integers and byte arrays): all zeroes is valid.
        unsafe { std::mem::zeroed() }
    }
}

/// `struct hvm_hw_lapic_regs`: the local APIC's register page.
pub const HVM_LAPIC_REGS_SIZE: usize = 1024;

/// `HVM_SAVE_CODE(MTRR)`: a vCPU's PAT and MTRRs (`struct hvm_hw_mtrr`).
pub const HVM_SAVE_CODE_MTRR: u16 = 14;
/// `struct hvm_hw_mtrr`: PAT, 8 variable ranges (base and mask), 11 fixed ranges, MTRRcap,
/// MTRRdefType, 64 bits each.
pub const HVM_MTRR_SIZE: usize = 240;
/// Byte offset of `msr_mtrr_def_type` in `struct hvm_hw_mtrr`.
pub const HVM_MTRR_DEF_TYPE_OFFSET: usize = 232;

/// `HVM_SAVE_CODE(VMCE_VCPU)`: a vCPU's virtual machine-check state (`struct hvm_vmce_vcpu`).
pub const HVM_SAVE_CODE_VMCE_VCPU: u16 = 18;
/// `struct hvm_vmce_vcpu`: MCG_CAP, MCi_CTL2 of banks 0 and 1, MCG_EXT_CTL, 64 bits each.
pub const HVM_VMCE_VCPU_SIZE: usize = 32;

// --- ioreq servers (xen/hvm/ioreq.h, xen/hvm/hvm_op.h, xen/memory.h) ---

pub const HVM_IOREQSRV_BUFIOREQ_OFF: i32 = 0;
pub const XENMEM_RESOURCE_IOREQ_SERVER: u32 = 0;
/// `XENMEM_resource_ioreq_server_frame_ioreq(0)`: the synchronous ioreq page.
pub const XENMEM_RESOURCE_IOREQ_SERVER_FRAME_IOREQ0: u64 = 1;
pub const XEN_DMOP_IO_RANGE_PORT: i32 = 0;
pub const XEN_DMOP_IO_RANGE_MEMORY: i32 = 1;

pub const STATE_IOREQ_NONE: u8 = 0;
pub const STATE_IOREQ_READY: u8 = 1;
pub const STATE_IOREQ_INPROCESS: u8 = 2;
pub const STATE_IORESP_READY: u8 = 3;
pub const IOREQ_TYPE_PIO: u8 = 0;
pub const IOREQ_TYPE_COPY: u8 = 1;
pub const IOREQ_TYPE_PCI_CONFIG: u8 = 2;
pub const IOREQ_TYPE_TIMEOFFSET: u8 = 7;
pub const IOREQ_TYPE_INVALIDATE: u8 = 8;

/// Size of one `struct ioreq` in the shared page; vCPU `n`'s slot is at `n * IOREQ_SIZE`.
pub const IOREQ_SIZE: usize = 32;
/// Offsets of `struct ioreq`'s fields. Byte 30 holds the bit fields `state:4`,
/// `data_is_ptr:1`, `dir:1`, `df:1` (least significant first, as GCC allocates them on
/// x86); byte 31 is `type`.
pub mod ioreq_offset {
    pub const ADDR: usize = 0;
    pub const DATA: usize = 8;
    pub const COUNT: usize = 16;
    pub const SIZE: usize = 20;
    pub const VP_EPORT: usize = 24;
    pub const BITS: usize = 30;
    pub const TYPE: usize = 31;
}
pub const IOREQ_BITS_STATE_MASK: u8 = 0x0f;
pub const IOREQ_BITS_DATA_IS_PTR: u8 = 1 << 4;
pub const IOREQ_BITS_DIR_READ: u8 = 1 << 5;
pub const IOREQ_BITS_DF: u8 = 1 << 6;

// --- shutdown reasons (xen/sched.h) and HVM parameters (xen/hvm/params.h) ---

pub const SHUTDOWN_POWEROFF: u32 = 0;
pub const SHUTDOWN_REBOOT: u32 = 1;
pub const SHUTDOWN_SUSPEND: u32 = 2;
pub const SHUTDOWN_CRASH: u32 = 3;
pub const SHUTDOWN_WATCHDOG: u32 = 4;
pub const SHUTDOWN_SOFT_RESET: u32 = 5;
pub const HVM_PARAM_TRIPLE_FAULT_REASON: u32 = 31;
pub const HVM_PARAM_HPET_ENABLED: u32 = 11;
/// The gfn of the monitor vm_event ring's page (`xc_monitor_enable` populates it).
pub const HVM_PARAM_MONITOR_RING_PFN: u32 = 28;
/// The platform timers' policy for ticks a vCPU missed while descheduled (`HVMPTM_*`).
pub const HVM_PARAM_TIMER_MODE: u32 = 10;
pub const HVMPTM_DELAY_FOR_MISSED_TICKS: u64 = 0;
pub const HVMPTM_NO_DELAY_FOR_MISSED_TICKS: u64 = 1;
pub const HVMPTM_NO_MISSED_TICKS_PENDING: u64 = 2;
pub const HVMPTM_ONE_MISSED_TICK_PENDING: u64 = 3;

// --- privcmd (Linux's include/uapi/xen/privcmd.h) ---

/// `struct privcmd_mmapbatch_v2`.
#[repr(C)]
#[derive(Debug)]
pub struct PrivcmdMmapBatchV2 {
    pub num: u32,
    pub dom: DomId,
    pub addr: u64,
    pub arr: *const XenPfn,
    pub err: *mut i32,
}

/// `IOCTL_PRIVCMD_MMAPBATCH_V2`: `_IOC(_IOC_NONE, 'P', 4, sizeof(privcmd_mmapbatch_v2))`.
pub const IOCTL_PRIVCMD_MMAPBATCH_V2: libc::c_ulong =
    ((std::mem::size_of::<PrivcmdMmapBatchV2>() as libc::c_ulong) << 16) | (0x50 << 8) | 4;

// --- the logger the C libraries write diagnostics to (xentoollog.h) ---

/// `struct xentoollog_logger`: three callbacks; `va_list` is a pointer on x86-64.
#[repr(C)]
pub struct Logger {
    pub vmessage: unsafe extern "C" fn(
        logger: *mut Logger,
        level: libc::c_int,
        errnoval: libc::c_int,
        context: *const libc::c_char,
        format: *const libc::c_char,
        args: *mut libc::c_void,
    ),
    pub progress: unsafe extern "C" fn(
        logger: *mut Logger,
        context: *const libc::c_char,
        doing_what: *const libc::c_char,
        percent: libc::c_int,
        done: libc::c_ulong,
        total: libc::c_ulong,
    ),
    pub destroy: unsafe extern "C" fn(logger: *mut Logger),
}

/// Plain-old-data ABI structures that travel as bytes (HVM save records).
///
/// # Safety
///
/// Implementors must be `repr(C)` structures of integers and byte arrays only, for which
/// every bit pattern is valid.
pub unsafe trait Pod: Copy + Default {
    /// Reads the structure from the first `size_of::<Self>()` bytes of `bytes`, or `None`
    /// if there are fewer.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: `bytes` holds at least size_of::<Self>() bytes, the read is unaligned, and
        // the trait's contract makes any bit pattern a valid `Self`.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// The structure's bytes.
    fn to_bytes(&self) -> Vec<u8> {
        let len = std::mem::size_of::<Self>();
        // SAFETY: `self` is `len` initialized bytes of plain data; the trait's contract rules
        // out padding in implementors, so every byte is initialized.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), len) }.to_vec()
    }
}

// SAFETY: integers and byte arrays only; the layout test confirms there is no padding.
unsafe impl Pod for HvmHwCpu {}
// SAFETY: as above.
unsafe impl Pod for HvmSaveHeader {}
// SAFETY: as above.
unsafe impl Pod for HvmSaveDescriptor {}
// SAFETY: as above.
unsafe impl Pod for HvmHwPit {}
// SAFETY: as above.
unsafe impl Pod for HvmHwVpic {}
// SAFETY: as above.
unsafe impl Pod for HvmHwVioapic {}
// SAFETY: as above.
unsafe impl Pod for HvmHwIsaIrqs {}

// --- log-dirty mode (xen/domctl.h, xenctrl.h) ---

/// `XEN_DOMCTL_SHADOW_OP_OFF`: leave log-dirty (shadow) mode.
pub const XEN_DOMCTL_SHADOW_OP_OFF: u32 = 0;
/// `XEN_DOMCTL_SHADOW_OP_CLEAN`: copy the dirty bitmap out and clear it.
pub const XEN_DOMCTL_SHADOW_OP_CLEAN: u32 = 11;
/// `XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY`: start logging the domain's writes to its RAM.
pub const XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY: u32 = 2;

/// `xc_hypercall_buffer_t`: memory that Xen may access during a hypercall, allocated by
/// libxenctrl (`xc__hypercall_buffer_alloc_pages`).
#[repr(C)]
#[derive(Debug)]
pub struct HypercallBuffer {
    pub hbuf: *mut libc::c_void,
    pub param_shadow: *mut HypercallBuffer,
    pub dir: libc::c_int,
    pub ubuf: *mut libc::c_void,
    pub sz: usize,
}

/// `xc_shadow_op_stats_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ShadowOpStats {
    pub fault_count: u32,
    pub dirty_count: u32,
}
