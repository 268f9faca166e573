//! KVM interrupt plumbing: IRQ lines, MSIs, GSI routing, irqfd and ioeventfd.

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irqchip, kvm_msi, kvm_pit_state2, KvmIrqRouting, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress as KvmIoEventAddress, NoDatamatch};
use vmm_sys_util::eventfd::EventFd;

use super::os_error;
use super::vm::KvmVm;
use crate::arch::x86_64::{IoapicState, IrqchipState, PicState, PitState};
use crate::interrupt::{DataMatch, IoEventAddress, IrqChip, IrqRoute, MsiMessage};
use crate::vm::VmError;

/// Pins per interrupt controller: 8 for each PIC, 24 for the IOAPIC.
fn pins(chip: IrqChip) -> u32 {
    match chip {
        IrqChip::PicMaster | IrqChip::PicSlave => 8,
        IrqChip::IoApic => 24,
    }
}

fn raw_msi(msi: MsiMessage) -> kvm_msi {
    kvm_msi {
        address_lo: msi.address as u32,
        address_hi: (msi.address >> 32) as u32,
        data: msi.data,
        ..Default::default()
    }
}

fn raw_route(route: &IrqRoute) -> Result<kvm_irq_routing_entry, VmError> {
    let mut entry = kvm_irq_routing_entry {
        gsi: route.gsi(),
        ..Default::default()
    };
    match *route {
        IrqRoute::Irqchip { gsi, chip, pin } => {
            if pin >= pins(chip) {
                return Err(VmError::InvalidRoute {
                    gsi,
                    reason: "the pin does not exist on that interrupt controller",
                });
            }
            entry.type_ = KVM_IRQ_ROUTING_IRQCHIP;
            entry.u.irqchip.irqchip = match chip {
                IrqChip::PicMaster => KVM_IRQCHIP_PIC_MASTER,
                IrqChip::PicSlave => KVM_IRQCHIP_PIC_SLAVE,
                IrqChip::IoApic => KVM_IRQCHIP_IOAPIC,
            };
            entry.u.irqchip.pin = pin;
        }
        IrqRoute::Msi { msi, .. } => {
            let raw = raw_msi(msi);
            entry.type_ = KVM_IRQ_ROUTING_MSI;
            entry.u.msi.address_lo = raw.address_lo;
            entry.u.msi.address_hi = raw.address_hi;
            entry.u.msi.data = raw.data;
        }
    }
    Ok(entry)
}

impl KvmVm {
    fn irqchip_os(op: &'static str) -> impl Fn(vmm_sys_util::errno::Error) -> VmError {
        move |err| VmError::Os {
            op,
            source: os_error(err),
        }
    }

    fn read_chip(&self, chip_id: u32) -> Result<kvm_irqchip, VmError> {
        let mut raw = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        self.shared
            .fd
            .get_irqchip(&mut raw)
            .map_err(Self::irqchip_os("KVM_GET_IRQCHIP"))?;
        Ok(raw)
    }

    /// The PICs' and IOAPIC's state lives in the kernel only with the full irqchip.
    fn require_full_irqchip(&self, op: &'static str) -> Result<(), VmError> {
        self.require_irqchip(op)?;
        if self.shared.config.split_ioapic_routes().is_some() {
            return Err(VmError::SplitIrqchip { op });
        }
        Ok(())
    }

    pub(super) fn irqchip_get(&self) -> Result<IrqchipState, VmError> {
        self.require_full_irqchip("KVM_GET_IRQCHIP")?;
        let (master, slave, ioapic) = (
            self.read_chip(KVM_IRQCHIP_PIC_MASTER)?,
            self.read_chip(KVM_IRQCHIP_PIC_SLAVE)?,
            self.read_chip(KVM_IRQCHIP_IOAPIC)?,
        );
        // SAFETY: KVM filled the union member that `chip_id` selects: a PIC.
        let pic_master = PicState::from(unsafe { master.chip.pic });
        // SAFETY: as above, a PIC.
        let pic_slave = PicState::from(unsafe { slave.chip.pic });
        // SAFETY: as above, the IOAPIC.
        let ioapic = IoapicState::from(unsafe { &ioapic.chip.ioapic });
        Ok(IrqchipState {
            pic_master,
            pic_slave,
            ioapic,
        })
    }

    pub(super) fn irqchip_set(&self, state: &IrqchipState) -> Result<(), VmError> {
        self.require_full_irqchip("KVM_SET_IRQCHIP")?;
        let mut chips = [
            kvm_irqchip {
                chip_id: KVM_IRQCHIP_PIC_MASTER,
                ..Default::default()
            },
            kvm_irqchip {
                chip_id: KVM_IRQCHIP_PIC_SLAVE,
                ..Default::default()
            },
            kvm_irqchip {
                chip_id: KVM_IRQCHIP_IOAPIC,
                ..Default::default()
            },
        ];
        chips[0].chip.pic = (&state.pic_master).into();
        chips[1].chip.pic = (&state.pic_slave).into();
        chips[2].chip.ioapic = (&state.ioapic).into();
        for chip in &chips {
            self.shared
                .fd
                .set_irqchip(chip)
                .map_err(Self::irqchip_os("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }

    pub(super) fn pit_get(&self) -> Result<PitState, VmError> {
        if !self.shared.config.pit {
            return Err(VmError::NoPit { op: "KVM_GET_PIT2" });
        }
        let raw = self
            .shared
            .fd
            .get_pit2()
            .map_err(Self::irqchip_os("KVM_GET_PIT2"))?;
        Ok(PitState::from(&raw))
    }

    pub(super) fn pit_set(&self, state: &PitState) -> Result<(), VmError> {
        if !self.shared.config.pit {
            return Err(VmError::NoPit { op: "KVM_SET_PIT2" });
        }
        self.shared
            .fd
            .set_pit2(&kvm_pit_state2::from(state))
            .map_err(Self::irqchip_os("KVM_SET_PIT2"))
    }

    fn require_irqchip(&self, op: &'static str) -> Result<(), VmError> {
        if self.shared.config.irqchip {
            Ok(())
        } else {
            Err(VmError::NoIrqchip { op })
        }
    }

    pub(super) fn irq_line(&self, gsi: u32, level: bool) -> Result<(), VmError> {
        self.require_irqchip("KVM_IRQ_LINE")?;
        self.shared
            .fd
            .set_irq_line(gsi, level)
            .map_err(|err| VmError::Irq {
                op: "KVM_IRQ_LINE",
                gsi,
                source: os_error(err),
            })
    }

    pub(super) fn msi(&self, msi: MsiMessage) -> Result<(), VmError> {
        // KVM returns 0 when the guest blocked the message (e.g. its APIC is disabled): that is
        // the guest's business, not an error.
        self.shared
            .fd
            .signal_msi(raw_msi(msi))
            .map(|_delivered| ())
            .map_err(|err| VmError::Msi {
                msi,
                source: os_error(err),
            })
    }

    pub(super) fn gsi_routing(&self, routes: &[IrqRoute]) -> Result<(), VmError> {
        self.require_irqchip("KVM_SET_GSI_ROUTING")?;
        let entries = routes
            .iter()
            .map(raw_route)
            .collect::<Result<Vec<_>, _>>()?;
        let table = KvmIrqRouting::from_entries(&entries).map_err(|_| VmError::InvalidRoute {
            gsi: routes.last().map_or(0, IrqRoute::gsi),
            reason: "too many routes for one table",
        })?;
        self.shared
            .fd
            .set_gsi_routing(&table)
            .map_err(|err| VmError::Os {
                op: "KVM_SET_GSI_ROUTING",
                source: os_error(err),
            })
    }

    pub(super) fn irqfd(
        &self,
        fd: &EventFd,
        gsi: u32,
        resample: Option<&EventFd>,
    ) -> Result<(), VmError> {
        self.require_irqchip("KVM_IRQFD")?;
        let result = match resample {
            Some(resample) => self
                .shared
                .fd
                .register_irqfd_with_resample(fd, resample, gsi),
            None => self.shared.fd.register_irqfd(fd, gsi),
        };
        result.map_err(|err| VmError::Irq {
            op: "KVM_IRQFD",
            gsi,
            source: os_error(err),
        })
    }

    pub(super) fn irqfd_remove(&self, fd: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.require_irqchip("KVM_IRQFD")?;
        self.shared
            .fd
            .unregister_irqfd(fd, gsi)
            .map_err(|err| VmError::Irq {
                op: "KVM_IRQFD (deassign)",
                gsi,
                source: os_error(err),
            })
    }

    pub(super) fn ioeventfd(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
        register: bool,
    ) -> Result<(), VmError> {
        let raw_addr = match addr {
            IoEventAddress::Pio(port) => KvmIoEventAddress::Pio(u64::from(port)),
            IoEventAddress::Mmio(addr) => KvmIoEventAddress::Mmio(addr),
        };
        let vm = &self.shared.fd;
        // kvm-ioctls encodes the match width in the type of the datamatch argument.
        let result = match (register, datamatch) {
            (true, DataMatch::Any) => vm.register_ioevent(fd, &raw_addr, NoDatamatch),
            (true, DataMatch::U8(v)) => vm.register_ioevent(fd, &raw_addr, v),
            (true, DataMatch::U16(v)) => vm.register_ioevent(fd, &raw_addr, v),
            (true, DataMatch::U32(v)) => vm.register_ioevent(fd, &raw_addr, v),
            (true, DataMatch::U64(v)) => vm.register_ioevent(fd, &raw_addr, v),
            (false, DataMatch::Any) => vm.unregister_ioevent(fd, &raw_addr, NoDatamatch),
            (false, DataMatch::U8(v)) => vm.unregister_ioevent(fd, &raw_addr, v),
            (false, DataMatch::U16(v)) => vm.unregister_ioevent(fd, &raw_addr, v),
            (false, DataMatch::U32(v)) => vm.unregister_ioevent(fd, &raw_addr, v),
            (false, DataMatch::U64(v)) => vm.unregister_ioevent(fd, &raw_addr, v),
        };
        result.map_err(|err| VmError::IoEvent {
            op: if register {
                "KVM_IOEVENTFD"
            } else {
                "KVM_IOEVENTFD (deassign)"
            },
            addr,
            source: os_error(err),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_checked_and_encoded() {
        let route = IrqRoute::Irqchip {
            gsi: 5,
            chip: IrqChip::PicSlave,
            pin: 8,
        };
        assert!(matches!(
            raw_route(&route),
            Err(VmError::InvalidRoute { gsi: 5, .. })
        ));
        let msi = IrqRoute::Msi {
            gsi: 30,
            msi: MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x41,
            },
        };
        let raw = raw_route(&msi).unwrap();
        assert_eq!((raw.gsi, raw.type_), (30, KVM_IRQ_ROUTING_MSI));
        // SAFETY: reading the union member that was just written.
        let msi = unsafe { raw.u.msi };
        let (lo, hi, data) = (msi.address_lo, msi.address_hi, msi.data);
        assert_eq!((lo, hi, data), (0xfee0_1000, 1, 0x41));
        assert_eq!(IrqRoute::pc_defaults().len(), 16 + 24);
    }
}
