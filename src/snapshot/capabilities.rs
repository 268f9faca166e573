//! The capabilities section of a state file: the writing host's [`Capabilities`] as a list
//! of named entries.
//!
//! `Capabilities` grows a field whenever a backend learns to say something new. Encoded as
//! the struct itself (postcard is not self-describing), every new field would change the
//! section's layout and make every existing snapshot unreadable. As named entries it
//! does not:
//! - an entry this version does not know is skipped when it asks for nothing (`false`, 0,
//!   an empty list) and refused otherwise, naming it: the writer's host offered something
//!   this version cannot check for;
//! - a field the file has no entry for keeps its default (`false`, 0, empty): the writer
//!   predates it, so its VM did not rely on it.
//!
//! The values of the list-valued entries (reserved ranges, CPUID, MSR indices) are encoded
//! as their types are; changing those types needs a new entry name.

use serde::{Deserialize, Serialize};

#[cfg(target_arch = "x86_64")]
use crate::arch::x86_64::{CpuidEntry, VcpuEventFields};
use crate::hypervisor::Capabilities;
use crate::reserved::ReservedRange;

/// The payload of the capabilities section ([`CAPABILITIES`](super::CAPABILITIES)): a
/// host's [`Capabilities`] as named entries.
///
/// ```
/// use vmkit::snapshot::CapabilitiesSection;
/// let caps = vmkit::Capabilities::default();
/// let section = CapabilitiesSection::new(&caps);
/// assert_eq!(section.capabilities()?, caps);
/// # Ok::<(), vmkit::snapshot::CapabilitiesError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapabilitiesSection(Vec<Entry>);

impl CapabilitiesSection {
    /// The entries of `caps`.
    pub fn new(caps: &Capabilities) -> Self {
        CapabilitiesSection(encode(caps))
    }

    /// The capabilities the entries describe, checked as the module's documentation says.
    pub fn capabilities(&self) -> Result<Capabilities, CapabilitiesError> {
        decode(self.0.clone())
    }
}

/// One capability's value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Value {
    /// A feature that is there or not.
    Flag(bool),
    /// A limit or count.
    Count(u32),
    /// The ranges the hypervisor keeps.
    Reserved(Vec<ReservedRange>),
    /// CPUID leaves.
    #[cfg(target_arch = "x86_64")]
    Cpuid(Vec<CpuidEntry>),
    /// MSR indices.
    Msrs(Vec<u32>),
}

impl Value {
    /// Whether the value offers nothing: what a host without the capability has.
    fn is_empty(&self) -> bool {
        match self {
            Value::Flag(flag) => !flag,
            Value::Count(count) => *count == 0,
            Value::Reserved(ranges) => ranges.is_empty(),
            #[cfg(target_arch = "x86_64")]
            Value::Cpuid(entries) => entries.is_empty(),
            Value::Msrs(msrs) => msrs.is_empty(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::Flag(_) => "flag",
            Value::Count(_) => "count",
            Value::Reserved(_) => "list of reserved ranges",
            #[cfg(target_arch = "x86_64")]
            Value::Cpuid(_) => "list of CPUID leaves",
            Value::Msrs(_) => "list of MSR indices",
        }
    }
}

/// One named entry of the section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    /// The capability's name: its field's name in [`Capabilities`], or
    /// `vcpu_event_fields.FIELD` for the parts of the vCPU-event fields.
    name: String,
    /// Its value.
    value: Value,
}

/// Why a capabilities section cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CapabilitiesError {
    /// The writer's host had a capability this version of vmkit does not know, so it cannot
    /// tell whether this host has it too.
    #[error("the writing host had capability `{name}`, which this version of vmkit does not know")]
    Unknown {
        /// The entry's name.
        name: String,
    },
    /// An entry has another kind of value than its capability.
    #[error("capability `{name}` holds a {found}, expected a {expected}")]
    Kind {
        /// The entry's name.
        name: String,
        /// The kind of value the capability has.
        expected: &'static str,
        /// The kind the entry holds.
        found: &'static str,
    },
    /// The same capability appears twice.
    #[error("capability `{name}` appears twice")]
    Repeated {
        /// The entry's name.
        name: String,
    },
}

fn flag(name: &str, value: bool) -> Entry {
    Entry {
        name: name.to_owned(),
        value: Value::Flag(value),
    }
}

fn count(name: &str, value: u32) -> Entry {
    Entry {
        name: name.to_owned(),
        value: Value::Count(value),
    }
}

/// The entries of `caps`, one per field (the vCPU-event fields one per part).
fn encode(caps: &Capabilities) -> Vec<Entry> {
    // Destructured without `..`, so that a new field does not compile until it has an entry.
    let Capabilities {
        max_vcpus,
        max_memory_slots,
        read_only_memory,
        dirty_log,
        dirty_log_manual_clear,
        dirty_ring_max_entries,
        dirty_ring_emulated,
        irqchip,
        pit,
        irqfd,
        ioeventfd,
        msi,
        gsi_routing,
        guest_debug,
        clock,
        xsave,
        xcrs,
        vcpu_events,
        tsc_deadline_timer,
        mce_banks,
        pit_reinject_control,
        split_irqchip,
        apic_id_stride,
        irqfd_resample,
        irqchip_state,
        reserved,
        pci_config_ports,
        #[cfg(target_arch = "x86_64")]
        vcpu_event_fields,
        ram_on_demand,
        code_runs_in_read_only_memory,
        state_writes_mid_io,
        halted_vcpus,
        #[cfg(target_arch = "x86_64")]
        cpuid,
        #[cfg(target_arch = "x86_64")]
        msrs,
    } = caps;
    #[allow(unused_mut)] // Without x86_64 nothing is added after the list.
    let mut entries = vec![
        count("max_vcpus", *max_vcpus),
        count("max_memory_slots", *max_memory_slots),
        flag("read_only_memory", *read_only_memory),
        flag("dirty_log", *dirty_log),
        flag("dirty_log_manual_clear", *dirty_log_manual_clear),
        count("dirty_ring_max_entries", *dirty_ring_max_entries),
        flag("dirty_ring_emulated", *dirty_ring_emulated),
        flag("irqchip", *irqchip),
        flag("pit", *pit),
        flag("irqfd", *irqfd),
        flag("ioeventfd", *ioeventfd),
        flag("msi", *msi),
        flag("gsi_routing", *gsi_routing),
        flag("guest_debug", *guest_debug),
        flag("clock", *clock),
        flag("xsave", *xsave),
        flag("xcrs", *xcrs),
        flag("vcpu_events", *vcpu_events),
        flag("tsc_deadline_timer", *tsc_deadline_timer),
        count("mce_banks", *mce_banks),
        flag("pit_reinject_control", *pit_reinject_control),
        flag("split_irqchip", *split_irqchip),
        count("apic_id_stride", *apic_id_stride),
        flag("irqfd_resample", *irqfd_resample),
        flag("irqchip_state", *irqchip_state),
        Entry {
            name: "reserved".to_owned(),
            value: Value::Reserved(reserved.clone()),
        },
        flag("pci_config_ports", *pci_config_ports),
        flag("ram_on_demand", *ram_on_demand),
        flag(
            "code_runs_in_read_only_memory",
            *code_runs_in_read_only_memory,
        ),
        flag("state_writes_mid_io", *state_writes_mid_io),
        flag("halted_vcpus", *halted_vcpus),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        let VcpuEventFields {
            nmi_state,
            interrupt_shadow,
            smm,
            pending_exception,
            software_events,
        } = vcpu_event_fields;
        entries.extend([
            flag("vcpu_event_fields.nmi_state", *nmi_state),
            flag("vcpu_event_fields.interrupt_shadow", *interrupt_shadow),
            flag("vcpu_event_fields.smm", *smm),
            flag("vcpu_event_fields.pending_exception", *pending_exception),
            flag("vcpu_event_fields.software_events", *software_events),
            Entry {
                name: "cpuid".to_owned(),
                value: Value::Cpuid(cpuid.clone()),
            },
            Entry {
                name: "msrs".to_owned(),
                value: Value::Msrs(msrs.clone()),
            },
        ]);
    }
    entries
}

/// The capabilities `entries` describe; see the module's documentation for unknown and
/// missing entries.
fn decode(entries: Vec<Entry>) -> Result<Capabilities, CapabilitiesError> {
    let mut caps = Capabilities::default();
    let mut seen = std::collections::BTreeSet::new();
    for Entry { name, value } in entries {
        if !seen.insert(name.clone()) {
            return Err(CapabilitiesError::Repeated { name });
        }
        let found = value.kind();
        let kind_error = |expected: &'static str| CapabilitiesError::Kind {
            name: name.clone(),
            expected,
            found,
        };
        let flag = |slot: &mut bool| match value {
            Value::Flag(value) => {
                *slot = value;
                Ok(())
            }
            _ => Err(kind_error("flag")),
        };
        match name.as_str() {
            "max_vcpus" => set_count(&mut caps.max_vcpus, &value, kind_error)?,
            "max_memory_slots" => set_count(&mut caps.max_memory_slots, &value, kind_error)?,
            "dirty_ring_max_entries" => {
                set_count(&mut caps.dirty_ring_max_entries, &value, kind_error)?
            }
            "mce_banks" => set_count(&mut caps.mce_banks, &value, kind_error)?,
            "apic_id_stride" => set_count(&mut caps.apic_id_stride, &value, kind_error)?,
            "read_only_memory" => flag(&mut caps.read_only_memory)?,
            "dirty_ring_emulated" => flag(&mut caps.dirty_ring_emulated)?,
            "dirty_log" => flag(&mut caps.dirty_log)?,
            "dirty_log_manual_clear" => flag(&mut caps.dirty_log_manual_clear)?,
            "irqchip" => flag(&mut caps.irqchip)?,
            "pit" => flag(&mut caps.pit)?,
            "irqfd" => flag(&mut caps.irqfd)?,
            "ioeventfd" => flag(&mut caps.ioeventfd)?,
            "msi" => flag(&mut caps.msi)?,
            "gsi_routing" => flag(&mut caps.gsi_routing)?,
            "guest_debug" => flag(&mut caps.guest_debug)?,
            "clock" => flag(&mut caps.clock)?,
            "xsave" => flag(&mut caps.xsave)?,
            "xcrs" => flag(&mut caps.xcrs)?,
            "vcpu_events" => flag(&mut caps.vcpu_events)?,
            "tsc_deadline_timer" => flag(&mut caps.tsc_deadline_timer)?,
            "pit_reinject_control" => flag(&mut caps.pit_reinject_control)?,
            "split_irqchip" => flag(&mut caps.split_irqchip)?,
            "irqfd_resample" => flag(&mut caps.irqfd_resample)?,
            "irqchip_state" => flag(&mut caps.irqchip_state)?,
            "pci_config_ports" => flag(&mut caps.pci_config_ports)?,
            "ram_on_demand" => flag(&mut caps.ram_on_demand)?,
            "code_runs_in_read_only_memory" => flag(&mut caps.code_runs_in_read_only_memory)?,
            "state_writes_mid_io" => flag(&mut caps.state_writes_mid_io)?,
            "halted_vcpus" => flag(&mut caps.halted_vcpus)?,
            #[cfg(target_arch = "x86_64")]
            "vcpu_event_fields.nmi_state" => flag(&mut caps.vcpu_event_fields.nmi_state)?,
            #[cfg(target_arch = "x86_64")]
            "vcpu_event_fields.interrupt_shadow" => {
                flag(&mut caps.vcpu_event_fields.interrupt_shadow)?
            }
            #[cfg(target_arch = "x86_64")]
            "vcpu_event_fields.smm" => flag(&mut caps.vcpu_event_fields.smm)?,
            #[cfg(target_arch = "x86_64")]
            "vcpu_event_fields.pending_exception" => {
                flag(&mut caps.vcpu_event_fields.pending_exception)?
            }
            #[cfg(target_arch = "x86_64")]
            "vcpu_event_fields.software_events" => {
                flag(&mut caps.vcpu_event_fields.software_events)?
            }
            "reserved" => match value {
                Value::Reserved(ranges) => caps.reserved = ranges,
                _ => return Err(kind_error("list of reserved ranges")),
            },
            #[cfg(target_arch = "x86_64")]
            "cpuid" => match value {
                Value::Cpuid(entries) => caps.cpuid = entries,
                _ => return Err(kind_error("list of CPUID leaves")),
            },
            #[cfg(target_arch = "x86_64")]
            "msrs" => match value {
                Value::Msrs(msrs) => caps.msrs = msrs,
                _ => return Err(kind_error("list of MSR indices")),
            },
            _ if value.is_empty() => {}
            _ => return Err(CapabilitiesError::Unknown { name }),
        }
    }
    Ok(caps)
}

fn set_count(
    slot: &mut u32,
    value: &Value,
    kind_error: impl Fn(&'static str) -> CapabilitiesError,
) -> Result<(), CapabilitiesError> {
    match value {
        Value::Count(count) => {
            *slot = *count;
            Ok(())
        }
        _ => Err(kind_error("count")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Capabilities with every field away from its default.
    fn everything() -> Capabilities {
        use crate::reserved::{IoSpace, ReservedWhen};
        Capabilities {
            max_vcpus: 7,
            max_memory_slots: 9,
            read_only_memory: true,
            dirty_log: true,
            dirty_log_manual_clear: true,
            dirty_ring_max_entries: 4096,
            dirty_ring_emulated: true,
            irqchip: true,
            pit: true,
            irqfd: true,
            ioeventfd: true,
            msi: true,
            gsi_routing: true,
            guest_debug: true,
            clock: true,
            xsave: true,
            xcrs: true,
            vcpu_events: true,
            tsc_deadline_timer: true,
            mce_banks: 10,
            pit_reinject_control: true,
            split_irqchip: true,
            apic_id_stride: 2,
            irqfd_resample: true,
            irqchip_state: true,
            reserved: vec![ReservedRange::new(
                IoSpace::Pio,
                0x40,
                4,
                ReservedWhen::Pit,
                "PIT",
            )],
            pci_config_ports: true,
            #[cfg(target_arch = "x86_64")]
            vcpu_event_fields: VcpuEventFields::ALL,
            ram_on_demand: true,
            code_runs_in_read_only_memory: true,
            state_writes_mid_io: true,
            halted_vcpus: true,
            #[cfg(target_arch = "x86_64")]
            cpuid: vec![CpuidEntry {
                function: 1,
                ecx: 0x8000_0001,
                ..CpuidEntry::default()
            }],
            #[cfg(target_arch = "x86_64")]
            msrs: vec![0x10, 0x1b],
        }
    }

    fn through_postcard(caps: &Capabilities) -> CapabilitiesSection {
        let section = CapabilitiesSection::new(caps);
        postcard::from_bytes(&postcard::to_stdvec(&section).unwrap()).unwrap()
    }

    #[test]
    fn every_field_round_trips() {
        let caps = everything();
        assert_eq!(through_postcard(&caps).capabilities().unwrap(), caps);
        let plain = Capabilities::default();
        assert_eq!(through_postcard(&plain).capabilities().unwrap(), plain);
    }

    #[test]
    fn a_missing_entry_keeps_its_default() {
        let mut entries = encode(&everything());
        entries.retain(|entry| entry.name != "halted_vcpus" && entry.name != "mce_banks");
        let caps = decode(entries).unwrap();
        assert!(!caps.halted_vcpus);
        assert_eq!(caps.mce_banks, 0);
        assert!(caps.irqchip);
    }

    #[test]
    fn an_unknown_entry_is_skipped_only_when_it_offers_nothing() {
        let mut entries = encode(&everything());
        entries.push(flag("teleportation", false));
        entries.push(count("warp_factor", 0));
        assert_eq!(decode(entries.clone()).unwrap(), everything());
        entries.push(flag("time_travel", true));
        assert_eq!(
            decode(entries),
            Err(CapabilitiesError::Unknown {
                name: "time_travel".to_owned()
            })
        );
    }

    #[test]
    fn a_wrong_kind_or_a_repeat_is_refused() {
        let mut entries = encode(&Capabilities::default());
        entries.push(count("irqchip", 1));
        let err = decode(entries).unwrap_err();
        assert_eq!(
            err,
            CapabilitiesError::Repeated {
                name: "irqchip".to_owned()
            }
        );
        let mut entries = encode(&Capabilities::default());
        entries.retain(|entry| entry.name != "irqchip");
        entries.push(count("irqchip", 1));
        assert_eq!(
            decode(entries),
            Err(CapabilitiesError::Kind {
                name: "irqchip".to_owned(),
                expected: "flag",
                found: "count",
            })
        );
    }
}
