//! Architecture-specific, backend-neutral state types.
//!
//! These are vmkit's own types: each backend converts them to and from its native structures
//! (kvm-bindings on KVM, HVM save records on Xen), so that saved state does not depend on the
//! backend that produced it.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
