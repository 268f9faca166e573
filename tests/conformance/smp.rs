//! Several vCPUs, each on its own thread, bring up the minimal kernel together: every one of
//! them prints `cpu N online`, and the bootstrap processor powers off once all are up.

use vmkit::Hypervisor;

use crate::common::guest::{Guest, GuestConfig, MMIO_ANSWER};
use vmkit_guests::minimal;

fn boot_smp(hv: &dyn Hypervisor, config: GuestConfig) {
    let guest = Guest::boot(hv, config);
    let (serial, outcomes) = guest.finish(true);
    minimal::check_smp_serial(
        &serial,
        &crate::common::cpu_vendor(hv),
        MMIO_ANSWER,
        config.vcpus,
    )
    .unwrap_or_else(|err| panic!("{err}; output:\n{serial}"));
    assert!(outcomes[0].powered_off, "the BSP powers off");
    assert_eq!(outcomes[0].mmio_written, (MMIO_ANSWER + 1).to_le_bytes());
    for (index, outcome) in outcomes.iter().enumerate().skip(1) {
        assert!(!outcome.powered_off, "AP {index} must not power off");
        // Without an irqchip an AP's final hlt reaches the VMM; with one it waits in KVM
        // until the harness kicks it.
        assert_eq!(outcome.halted, !config.irqchip, "AP {index}");
    }
}

pub fn one_vcpu(hv: &dyn Hypervisor) {
    boot_smp(hv, GuestConfig::smp(1));
}

pub fn two_vcpus(hv: &dyn Hypervisor) {
    boot_smp(hv, GuestConfig::smp(2));
}

pub fn four_vcpus(hv: &dyn Hypervisor) {
    boot_smp(hv, GuestConfig::smp(4));
}

pub fn four_vcpus_with_an_irqchip(hv: &dyn Hypervisor) {
    boot_smp(
        hv,
        GuestConfig {
            irqchip: true,
            ..GuestConfig::smp(4)
        },
    );
}

crate::scenarios![
    one_vcpu,
    two_vcpus,
    four_vcpus,
    four_vcpus_with_an_irqchip => crate::irqchip,
];
