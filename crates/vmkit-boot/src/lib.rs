//! # vmkit-boot
//!
//! The guest-OS side of starting a VM built with [`vmkit`]: what firmware and a boot loader
//! would do on a PC. vmkit itself stays a hypervisor abstraction; this crate knows about
//! kernels.
//!
//! - [`entry`]: start a vCPU at a kernel's entry point, in 64-bit long mode (with a GDT and
//!   identity-mapping page tables written into guest memory) or in 32-bit protected mode as
//!   the PVH boot protocol specifies.
//! - [`linux`]: boot an unmodified Linux kernel: load a `vmlinux` or `bzImage` (through
//!   linux-loader), write the command line, the zero page or PVH start info, the E820 map,
//!   ACPI tables (through acpi_tables) and an MP table, and set up each vCPU's CPUID, MSRs
//!   and LAPIC as firmware would.
//! - [`wake`]: wake a guest from ACPI S3 (suspend to RAM) as firmware would, at the waking
//!   vector it left in its FACS.
//!
//! ```toml
//! [dependencies]
//! vmkit = "0.1"
//! vmkit-boot = "0.1"
//! ```
//!
//! Only x86-64 is supported; on other targets the crate is empty.

#[cfg(target_arch = "x86_64")]
pub mod entry;
#[cfg(target_arch = "x86_64")]
pub mod linux;
#[cfg(target_arch = "x86_64")]
pub mod wake;
