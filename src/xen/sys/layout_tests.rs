//! Checks every structure and constant of [`super::abi`] against the C headers installed on
//! this machine (Debian's libxen-dev 4.17): a small C program prints each size, offset and
//! constant, and each must equal what the Rust definition gives.
//!
//! Needs a C compiler (`$CC`, else `cc`) and the headers; both are build requirements of the
//! `xen` feature anyway (the guest kernels are built with the same compiler).

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use super::abi::*;
use super::abi_pv::*;

/// One check: a C expression and the value Rust computes for it.
struct Check {
    c: String,
    rust: i128,
}

macro_rules! size {
    ($checks:ident, $c:literal, $rust:ty) => {
        $checks.push(Check {
            c: format!("sizeof({})", $c),
            rust: size_of::<$rust>() as i128,
        });
    };
}

macro_rules! offsets {
    ($checks:ident, $c:literal, $rust:ty, [$($field:ident $(. $sub:ident)*),* $(,)?]) => {
        $(
            $checks.push(Check {
                c: format!("offsetof({}, {})", $c, stringify!($field $(. $sub)*).replace(' ', "")),
                rust: offset_of!($rust, $field $(. $sub)*) as i128,
            });
        )*
    };
}

macro_rules! constant {
    ($checks:ident, $c:literal, $rust:expr) => {
        $checks.push(Check {
            c: $c.to_string(),
            rust: $rust as i128,
        });
    };
}

fn checks() -> Vec<Check> {
    let mut c = Vec::new();

    constant!(
        c,
        "XEN_DOMCTL_INTERFACE_VERSION",
        XEN_DOMCTL_INTERFACE_VERSION
    );
    constant!(c, "XEN_DOMCTL_CDF_hvm", XEN_DOMCTL_CDF_HVM);
    constant!(c, "XEN_DOMCTL_CDF_hap", XEN_DOMCTL_CDF_HAP);
    constant!(c, "XEN_X86_EMU_LAPIC", XEN_X86_EMU_LAPIC);
    constant!(c, "XEN_X86_EMU_VPCI", XEN_X86_EMU_VPCI);
    constant!(c, "XEN_X86_EMU_ALL", XEN_X86_EMU_ALL);
    constant!(c, "HVM_PARAM_HPET_ENABLED", HVM_PARAM_HPET_ENABLED);
    constant!(c, "XEN_DOMCTL_GRANT_version(1)", XEN_DOMCTL_GRANT_VERSION_1);
    size!(c, "struct xen_arch_domainconfig", ArchDomainConfig);
    size!(c, "struct xen_domctl_createdomain", CreateDomain);
    offsets!(
        c,
        "struct xen_domctl_createdomain",
        CreateDomain,
        [
            ssidref,
            handle,
            flags,
            iommu_opts,
            max_vcpus,
            max_evtchn_port,
            max_grant_frames,
            max_maptrack_frames,
            grant_opts,
            vmtrace_size,
            cpupool_id,
            arch.emulation_flags,
            arch.misc_flags,
        ]
    );

    constant!(c, "XEN_DOMCTL_SHADOW_OP_OFF", XEN_DOMCTL_SHADOW_OP_OFF);
    constant!(c, "XEN_DOMCTL_SHADOW_OP_CLEAN", XEN_DOMCTL_SHADOW_OP_CLEAN);
    constant!(
        c,
        "XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY",
        XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY
    );
    size!(c, "xc_hypercall_buffer_t", HypercallBuffer);
    offsets!(
        c,
        "xc_hypercall_buffer_t",
        HypercallBuffer,
        [hbuf, param_shadow, dir, ubuf, sz]
    );
    size!(c, "xc_shadow_op_stats_t", ShadowOpStats);
    offsets!(
        c,
        "xc_shadow_op_stats_t",
        ShadowOpStats,
        [fault_count, dirty_count]
    );
    constant!(c, "XEN_DOMINF_dying", XEN_DOMINF_DYING);
    constant!(c, "XEN_DOMINF_hvm_guest", XEN_DOMINF_HVM_GUEST);
    constant!(c, "XEN_DOMINF_shutdown", XEN_DOMINF_SHUTDOWN);
    constant!(c, "XEN_DOMINF_paused", XEN_DOMINF_PAUSED);
    constant!(c, "XEN_DOMINF_shutdownmask", XEN_DOMINF_SHUTDOWNMASK);
    constant!(c, "XEN_DOMINF_shutdownshift", XEN_DOMINF_SHUTDOWNSHIFT);
    size!(c, "xc_domaininfo_t", DomainInfo);
    offsets!(
        c,
        "xc_domaininfo_t",
        DomainInfo,
        [
            domain,
            flags,
            tot_pages,
            max_pages,
            outstanding_pages,
            shr_pages,
            paged_pages,
            shared_info_frame,
            cpu_time,
            nr_online_vcpus,
            max_vcpu_id,
            ssidref,
            handle,
            cpupool,
            gpaddr_bits,
            arch_config,
        ]
    );
    size!(c, "xc_vcpuinfo_t", VcpuInfo);
    offsets!(
        c,
        "xc_vcpuinfo_t",
        VcpuInfo,
        [vcpu, online, blocked, running, cpu_time, cpu]
    );

    constant!(c, "XEN_SYSCTL_PHYSCAP_hvm", XEN_SYSCTL_PHYSCAP_HVM);
    constant!(c, "XEN_SYSCTL_PHYSCAP_pv", XEN_SYSCTL_PHYSCAP_PV);
    constant!(c, "XEN_SYSCTL_PHYSCAP_hap", XEN_SYSCTL_PHYSCAP_HAP);
    constant!(
        c,
        "XEN_SYSCTL_cpu_policy_hvm_default",
        XEN_SYSCTL_CPU_POLICY_HVM_DEFAULT
    );
    size!(c, "xc_physinfo_t", Physinfo);
    offsets!(
        c,
        "xc_physinfo_t",
        Physinfo,
        [
            threads_per_core,
            nr_cpus,
            cpu_khz,
            capabilities,
            arch_capabilities,
            total_pages,
            free_pages,
            scrub_pages,
            outstanding_pages,
            max_mfn,
            hw_cap,
        ]
    );

    constant!(c, "XEN_CPUID_NO_SUBLEAF", XEN_CPUID_NO_SUBLEAF);
    size!(c, "xen_cpuid_leaf_t", CpuidLeaf);
    offsets!(
        c,
        "xen_cpuid_leaf_t",
        CpuidLeaf,
        [leaf, subleaf, a, b, c, d]
    );
    size!(c, "xen_msr_entry_t", MsrEntry);
    offsets!(c, "xen_msr_entry_t", MsrEntry, [idx, flags, val]);

    constant!(c, "VGCF_i387_valid", VGCF_I387_VALID);
    constant!(c, "VGCF_in_kernel", VGCF_IN_KERNEL);
    constant!(c, "VGCF_online", VGCF_ONLINE);
    constant!(c, "FLAT_KERNEL_CS64", FLAT_KERNEL_CS64);
    constant!(c, "FLAT_KERNEL_SS64", FLAT_KERNEL_SS64);
    constant!(c, "FLAT_KERNEL_DS64", FLAT_KERNEL_DS64);
    size!(c, "vcpu_guest_context_any_t", VcpuGuestContext);
    size!(c, "vcpu_guest_context_x86_64_t", VcpuGuestContext);
    offsets!(
        c,
        "vcpu_guest_context_x86_64_t",
        VcpuGuestContext,
        [
            fpu_ctxt,
            flags,
            user_regs,
            user_regs.r15,
            user_regs.rbp,
            user_regs.rbx,
            user_regs.rax,
            user_regs.rdi,
            user_regs.error_code,
            user_regs.rip,
            user_regs.cs,
            user_regs.saved_upcall_mask,
            user_regs.rflags,
            user_regs.rsp,
            user_regs.ss,
            user_regs.es,
            user_regs.ds,
            user_regs.fs,
            user_regs.gs,
            trap_ctxt,
            ldt_base,
            gdt_frames,
            gdt_ents,
            kernel_ss,
            kernel_sp,
            ctrlreg,
            debugreg,
            event_callback_eip,
            failsafe_callback_eip,
            syscall_callback_eip,
            vm_assist,
            fs_base,
            gs_base_kernel,
            gs_base_user,
        ]
    );
    size!(c, "struct trap_info", TrapInfo);

    constant!(c, "HVM_FILE_MAGIC", HVM_FILE_MAGIC);
    constant!(c, "HVM_FILE_VERSION", HVM_FILE_VERSION);
    constant!(c, "HVM_SAVE_CODE(HEADER)", HVM_SAVE_CODE_HEADER);
    constant!(c, "HVM_SAVE_CODE(CPU)", HVM_SAVE_CODE_CPU);
    constant!(c, "HVM_SAVE_CODE(LAPIC_REGS)", HVM_SAVE_CODE_LAPIC_REGS);
    constant!(c, "CPU_XSAVE_CODE", HVM_SAVE_CODE_CPU_XSAVE);
    constant!(
        c,
        "offsetof(struct hvm_hw_cpu_xsave, save_area)",
        HVM_CPU_XSAVE_HEADER_SIZE
    );
    constant!(c, "HVM_SAVE_CODE(END)", HVM_SAVE_CODE_END);
    constant!(c, "HVM_SAVE_LENGTH(LAPIC_REGS)", HVM_LAPIC_REGS_SIZE);
    constant!(c, "HVM_SAVE_CODE(MTRR)", HVM_SAVE_CODE_MTRR);
    constant!(c, "HVM_SAVE_LENGTH(MTRR)", HVM_MTRR_SIZE);
    constant!(
        c,
        "offsetof(struct hvm_hw_mtrr, msr_mtrr_def_type)",
        HVM_MTRR_DEF_TYPE_OFFSET
    );
    constant!(c, "HVM_SAVE_CODE(VMCE_VCPU)", HVM_SAVE_CODE_VMCE_VCPU);
    constant!(c, "HVM_SAVE_LENGTH(VMCE_VCPU)", HVM_VMCE_VCPU_SIZE);
    constant!(c, "XEN_X86_FPU_INITIALISED", XEN_X86_FPU_INITIALISED);
    size!(c, "struct hvm_save_descriptor", HvmSaveDescriptor);
    offsets!(
        c,
        "struct hvm_save_descriptor",
        HvmSaveDescriptor,
        [typecode, instance, length]
    );
    size!(c, "struct hvm_save_header", HvmSaveHeader);
    offsets!(
        c,
        "struct hvm_save_header",
        HvmSaveHeader,
        [magic, version, changeset, cpuid, gtsc_khz]
    );
    constant!(c, "HVM_SAVE_CODE(PIC)", HVM_SAVE_CODE_PIC);
    constant!(c, "HVM_SAVE_CODE(IOAPIC)", HVM_SAVE_CODE_IOAPIC);
    constant!(c, "HVM_SAVE_CODE(ISA_IRQ)", HVM_SAVE_CODE_ISA_IRQ);
    constant!(c, "HVM_SAVE_CODE(PIT)", HVM_SAVE_CODE_PIT);
    constant!(c, "HVM_SAVE_CODE(HPET)", HVM_SAVE_CODE_HPET);
    constant!(c, "HVM_SAVE_LENGTH(HPET)", HVM_HPET_SIZE);
    constant!(
        c,
        "offsetof(struct hvm_hw_hpet, config)",
        HVM_HPET_CONFIG_OFFSET
    );
    constant!(c, "HVM_PARAM_TIMER_MODE", HVM_PARAM_TIMER_MODE);
    constant!(
        c,
        "HVMPTM_delay_for_missed_ticks",
        HVMPTM_DELAY_FOR_MISSED_TICKS
    );
    constant!(
        c,
        "HVMPTM_no_delay_for_missed_ticks",
        HVMPTM_NO_DELAY_FOR_MISSED_TICKS
    );
    constant!(
        c,
        "HVMPTM_no_missed_ticks_pending",
        HVMPTM_NO_MISSED_TICKS_PENDING
    );
    constant!(
        c,
        "HVMPTM_one_missed_tick_pending",
        HVMPTM_ONE_MISSED_TICK_PENDING
    );
    size!(c, "struct hvm_hw_pit", HvmHwPit);
    offsets!(
        c,
        "struct hvm_hw_pit",
        HvmHwPit,
        [channels, speaker_data_on]
    );
    size!(c, "struct hvm_hw_pit_channel", HvmHwPitChannel);
    offsets!(
        c,
        "struct hvm_hw_pit_channel",
        HvmHwPitChannel,
        [
            count,
            latched_count,
            count_latched,
            status_latched,
            status,
            read_state,
            write_state,
            write_latch,
            rw_mode,
            mode,
            bcd,
            gate,
        ]
    );
    size!(c, "struct hvm_hw_vpic", HvmHwVpic);
    offsets!(
        c,
        "struct hvm_hw_vpic",
        HvmHwVpic,
        [irr, imr, isr, irq_base, elcr, int_output]
    );
    // The bit-fields, from a C structure with one field set.
    for (field, byte, value) in [
        ("init_state", 4, 0xa),
        ("priority_add", 4, 0xa0),
        ("readsel_isr", 5, VPIC_READSEL_ISR),
        ("poll", 5, VPIC_POLL),
        ("auto_eoi", 5, VPIC_AUTO_EOI),
        ("rotate_on_auto_eoi", 5, VPIC_ROTATE_ON_AUTO_EOI),
        (
            "special_fully_nested_mode",
            5,
            VPIC_SPECIAL_FULLY_NESTED_MODE,
        ),
        ("special_mask_mode", 5, VPIC_SPECIAL_MASK_MODE),
        ("is_master", 5, VPIC_IS_MASTER),
    ] {
        let set = if field == "init_state" || field == "priority_add" {
            0xa
        } else {
            1
        };
        c.push(Check {
            c: format!("VPIC_BYTE({field}, {set}, {byte})"),
            rust: i128::from(value),
        });
    }
    size!(c, "struct hvm_hw_vioapic", HvmHwVioapic);
    offsets!(
        c,
        "struct hvm_hw_vioapic",
        HvmHwVioapic,
        [base_address, ioregsel, id, redirtbl]
    );
    size!(c, "struct hvm_hw_isa_irqs", HvmHwIsaIrqs);
    size!(c, "struct hvm_hw_cpu", HvmHwCpu);
    offsets!(
        c,
        "struct hvm_hw_cpu",
        HvmHwCpu,
        [
            fpu_regs,
            rax,
            rbx,
            rcx,
            rdx,
            rbp,
            rsi,
            rdi,
            rsp,
            r8,
            r9,
            r10,
            r11,
            r12,
            r13,
            r14,
            r15,
            rip,
            rflags,
            cr0,
            cr2,
            cr3,
            cr4,
            dr0,
            dr1,
            dr2,
            dr3,
            dr6,
            dr7,
            cs_sel,
            ds_sel,
            es_sel,
            fs_sel,
            gs_sel,
            ss_sel,
            tr_sel,
            ldtr_sel,
            cs_limit,
            ds_limit,
            es_limit,
            fs_limit,
            gs_limit,
            ss_limit,
            tr_limit,
            ldtr_limit,
            idtr_limit,
            gdtr_limit,
            cs_base,
            ds_base,
            es_base,
            fs_base,
            gs_base,
            ss_base,
            tr_base,
            ldtr_base,
            idtr_base,
            gdtr_base,
            cs_arbytes,
            ds_arbytes,
            es_arbytes,
            fs_arbytes,
            gs_arbytes,
            ss_arbytes,
            tr_arbytes,
            ldtr_arbytes,
            sysenter_cs,
            sysenter_esp,
            sysenter_eip,
            shadow_gs,
            msr_flags,
            msr_lstar,
            msr_star,
            msr_cstar,
            msr_syscall_mask,
            msr_efer,
            msr_tsc_aux,
            tsc,
            pending_event,
            error_code,
            flags,
            pad0,
        ]
    );

    constant!(c, "HVM_IOREQSRV_BUFIOREQ_OFF", HVM_IOREQSRV_BUFIOREQ_OFF);
    constant!(
        c,
        "XENMEM_resource_ioreq_server",
        XENMEM_RESOURCE_IOREQ_SERVER
    );
    constant!(
        c,
        "XENMEM_resource_ioreq_server_frame_ioreq(0)",
        XENMEM_RESOURCE_IOREQ_SERVER_FRAME_IOREQ0
    );
    constant!(c, "XEN_DMOP_IO_RANGE_PORT", XEN_DMOP_IO_RANGE_PORT);
    constant!(c, "XEN_DMOP_IO_RANGE_MEMORY", XEN_DMOP_IO_RANGE_MEMORY);
    constant!(c, "STATE_IOREQ_NONE", STATE_IOREQ_NONE);
    constant!(c, "STATE_IOREQ_READY", STATE_IOREQ_READY);
    constant!(c, "STATE_IOREQ_INPROCESS", STATE_IOREQ_INPROCESS);
    constant!(c, "STATE_IORESP_READY", STATE_IORESP_READY);
    constant!(c, "IOREQ_TYPE_PIO", IOREQ_TYPE_PIO);
    constant!(c, "IOREQ_TYPE_COPY", IOREQ_TYPE_COPY);
    constant!(c, "IOREQ_TYPE_PCI_CONFIG", IOREQ_TYPE_PCI_CONFIG);
    constant!(c, "IOREQ_TYPE_TIMEOFFSET", IOREQ_TYPE_TIMEOFFSET);
    constant!(c, "IOREQ_TYPE_INVALIDATE", IOREQ_TYPE_INVALIDATE);
    constant!(c, "sizeof(struct ioreq)", IOREQ_SIZE);
    constant!(c, "offsetof(struct ioreq, addr)", ioreq_offset::ADDR);
    constant!(c, "offsetof(struct ioreq, data)", ioreq_offset::DATA);
    constant!(c, "offsetof(struct ioreq, count)", ioreq_offset::COUNT);
    constant!(c, "offsetof(struct ioreq, size)", ioreq_offset::SIZE);
    constant!(
        c,
        "offsetof(struct ioreq, vp_eport)",
        ioreq_offset::VP_EPORT
    );
    constant!(c, "offsetof(struct ioreq, type)", ioreq_offset::TYPE);
    // The bit fields: set one at a time in C and see which bits of byte 30 change.
    constant!(c, "ioreq_bits(0xf, 0, 0, 0)", IOREQ_BITS_STATE_MASK);
    constant!(
        c,
        "ioreq_bits(STATE_IORESP_READY, 0, 0, 0)",
        STATE_IORESP_READY
    );
    constant!(c, "ioreq_bits(0, 1, 0, 0)", IOREQ_BITS_DATA_IS_PTR);
    constant!(c, "ioreq_bits(0, 0, 1, 0)", IOREQ_BITS_DIR_READ);
    constant!(c, "ioreq_bits(0, 0, 0, 1)", IOREQ_BITS_DF);

    constant!(c, "SHUTDOWN_poweroff", SHUTDOWN_POWEROFF);
    constant!(c, "SHUTDOWN_reboot", SHUTDOWN_REBOOT);
    constant!(c, "SHUTDOWN_suspend", SHUTDOWN_SUSPEND);
    constant!(c, "SHUTDOWN_crash", SHUTDOWN_CRASH);
    constant!(c, "SHUTDOWN_watchdog", SHUTDOWN_WATCHDOG);
    constant!(c, "SHUTDOWN_soft_reset", SHUTDOWN_SOFT_RESET);
    constant!(
        c,
        "HVM_PARAM_TRIPLE_FAULT_REASON",
        HVM_PARAM_TRIPLE_FAULT_REASON
    );

    // The monitor ring (`xen::debug`).
    {
        use crate::xen::debug::{layout as ring, *};
        constant!(c, "HVM_PARAM_MONITOR_RING_PFN", HVM_PARAM_MONITOR_RING_PFN);
        constant!(c, "VM_EVENT_INTERFACE_VERSION", INTERFACE_VERSION);
        constant!(c, "VM_EVENT_FLAG_VCPU_PAUSED", FLAG_VCPU_PAUSED);
        constant!(c, "VM_EVENT_REASON_DEBUG_EXCEPTION", REASON_DEBUG_EXCEPTION);
        constant!(c, "offsetof(vm_event_sring_t, req_prod)", ring::REQ_PROD);
        constant!(c, "offsetof(vm_event_sring_t, req_event)", ring::REQ_EVENT);
        constant!(c, "offsetof(vm_event_sring_t, rsp_prod)", ring::RSP_PROD);
        constant!(c, "offsetof(vm_event_sring_t, rsp_event)", ring::RSP_EVENT);
        constant!(c, "offsetof(vm_event_sring_t, ring)", ring::HEADER);
        constant!(c, "sizeof(union vm_event_sring_entry)", ring::ENTRY);
        constant!(c, "__RING_SIZE((vm_event_sring_t *)0, 4096)", ring::ENTRIES);
        constant!(c, "offsetof(vm_event_request_t, version)", ring::VERSION);
        constant!(c, "offsetof(vm_event_request_t, flags)", ring::FLAGS);
        constant!(c, "offsetof(vm_event_request_t, reason)", ring::REASON);
        constant!(c, "offsetof(vm_event_request_t, vcpu_id)", ring::VCPU_ID);
        constant!(
            c,
            "offsetof(vm_event_request_t, altp2m_idx)",
            ring::ALTP2M_IDX
        );
        constant!(
            c,
            "offsetof(vm_event_request_t, data.regs.x86.rip)",
            ring::RIP
        );
        constant!(
            c,
            "offsetof(vm_event_request_t, data.regs.x86.dr7)",
            ring::DR7
        );
        constant!(
            c,
            "offsetof(vm_event_request_t, data.regs.x86.cs_base)",
            ring::CS_BASE
        );
    }

    size!(c, "struct privcmd_mmapbatch_v2", PrivcmdMmapBatchV2);
    offsets!(
        c,
        "struct privcmd_mmapbatch_v2",
        PrivcmdMmapBatchV2,
        [num, dom, addr, arr, err]
    );
    constant!(c, "IOCTL_PRIVCMD_MMAPBATCH_V2", IOCTL_PRIVCMD_MMAPBATCH_V2);

    size!(c, "struct xentoollog_logger", Logger);
    offsets!(
        c,
        "struct xentoollog_logger",
        Logger,
        [vmessage, progress, destroy]
    );
    // PV Linux (abi_pv): the builder's image, xenstore permissions, the console ring.
    constant!(c, "XG_MAX_MODULES", XG_MAX_MODULES);
    constant!(c, "XENFEAT_NR_SUBMAPS", XENFEAT_NR_SUBMAPS);
    constant!(c, "XS_PERM_NONE", XS_PERM_NONE);
    constant!(c, "XS_PERM_READ", XS_PERM_READ);
    constant!(c, "XS_PERM_WRITE", XS_PERM_WRITE);
    constant!(c, "XBT_NULL", XBT_NULL);
    size!(c, "struct xs_permissions", XsPermissions);
    offsets!(c, "struct xs_permissions", XsPermissions, [id, perms]);
    size!(c, "struct xc_dom_seg", DomSeg);
    size!(c, "struct xc_dom_module", DomModule);
    size!(c, "struct xc_hvm_firmware_module", FirmwareModule);
    size!(c, "struct xc_dom_image", DomImage);
    offsets!(
        c,
        "struct xc_dom_image",
        DomImage,
        [
            modules,
            f_requested,
            kernel_seg,
            console_pfn,
            xenstore_pfn,
            alloc_bootstack,
            f_active,
            pv_p2m,
            p2m_size,
            flags,
            console_evtchn,
            xenstore_evtchn,
            console_domid,
            xenstore_domid,
            xch,
            xen_caps,
            kernel_loader,
            nr_vnodes,
            allocate,
            container_type,
            device_model,
            system_firmware_module,
            e820_entries,
            vuart_gfn,
            max_vcpus,
        ]
    );
    constant!(c, "XC_DOM_PV_CONTAINER", XC_DOM_PV_CONTAINER);
    constant!(
        c,
        "sizeof(((struct xencons_interface *)0)->in)",
        XENCONS_IN_SIZE
    );
    constant!(
        c,
        "sizeof(((struct xencons_interface *)0)->out)",
        XENCONS_OUT_SIZE
    );
    constant!(
        c,
        "offsetof(struct xencons_interface, in)",
        XENCONS_IN_OFFSET
    );
    constant!(
        c,
        "offsetof(struct xencons_interface, out)",
        XENCONS_OUT_OFFSET
    );
    constant!(
        c,
        "offsetof(struct xencons_interface, in_cons)",
        XENCONS_IN_CONS
    );
    constant!(
        c,
        "offsetof(struct xencons_interface, in_prod)",
        XENCONS_IN_PROD
    );
    constant!(
        c,
        "offsetof(struct xencons_interface, out_cons)",
        XENCONS_OUT_CONS
    );
    constant!(
        c,
        "offsetof(struct xencons_interface, out_prod)",
        XENCONS_OUT_PROD
    );
    c
}

const PRELUDE: &str = r#"
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <xenctrl.h>
#include <xenguest.h>
#include <xendevicemodel.h>
#include <xenforeignmemory.h>
#include <xenevtchn.h>
#include <xentoollog.h>
#include <xen/hvm/save.h>
#include <xenstore.h>
#include <xen/io/console.h>
#include <xen/hvm/ioreq.h>
#include <xen/hvm/params.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/dm_op.h>
#include <xen/memory.h>
#include <xen/sched.h>
#include <xen/vm_event.h>
#include <sys/ioctl.h>
#include <linux/types.h>
#define __user
#include <xen/sys/privcmd.h>

static long long ioreq_bits(int state, int ptr, int dir, int df)
{
    struct ioreq r;
    memset(&r, 0, sizeof(r));
    r.state = state;
    r.data_is_ptr = ptr;
    r.dir = dir;
    r.df = df;
    return ((unsigned char *)&r)[30];
}

/* The byte `byte` of a PIC record with only `field` set to `value`. */
#define VPIC_BYTE(field, value, byte) ({ \
    struct hvm_hw_vpic v; \
    memset(&v, 0, sizeof(v)); \
    v.field = value; \
    ((unsigned char *)&v)[byte]; \
})

int main(void)
{
    (void)ioreq_bits;
"#;

fn compile_and_run(checks: &[Check]) -> BTreeMap<String, i128> {
    let mut program = String::from(PRELUDE);
    for (i, check) in checks.iter().enumerate() {
        program.push_str(&format!(
            "    printf(\"{i} %lld\\n\", (long long)({}));\n",
            check.c
        ));
    }
    program.push_str("    return 0;\n}\n");

    let dir = std::env::temp_dir().join(format!("vmkit-xen-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("layout.c");
    let exe: PathBuf = dir.join("layout");
    std::fs::write(&source, &program).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let out = Command::new(&cc)
        .arg("-o")
        .arg(&exe)
        .arg(&source)
        .output()
        .unwrap_or_else(|err| panic!("cannot run the C compiler {cc:?}: {err}"));
    assert!(
        out.status.success(),
        "the layout program does not compile against this machine's Xen headers:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success());
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (index, value) = line.split_once(' ').unwrap();
            let index: usize = index.parse().unwrap();
            (checks[index].c.clone(), value.parse::<i128>().unwrap())
        })
        .collect()
}

#[test]
fn abi_matches_the_installed_xen_headers() {
    let checks = checks();
    let c_values = compile_and_run(&checks);
    let mismatches: Vec<String> = checks
        .iter()
        .filter_map(|check| {
            let c = c_values.get(&check.c).copied();
            // The privcmd ioctl number is an unsigned long; compare it as such.
            let c = c.map(|v| if v < 0 { v + (1i128 << 64) } else { v });
            (c != Some(check.rust))
                .then(|| format!("{}: C says {c:?}, Rust says {}", check.c, check.rust))
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} checks differ:\n{}",
        mismatches.len(),
        checks.len(),
        mismatches.join("\n")
    );
    assert!(checks.len() > 250, "{} checks", checks.len());
}
