//! The VM-wide state a snapshot keeps on aarch64: the GICv3 distributor,
//! each vCPU's redistributor and CPU interface, and the ITS, read and
//! written through the vGIC's device attributes
//! (Documentation/virt/kvm/devices/arm-vgic-v3.rst and arm-vgic-its.rst).
//!
//! Saving first makes KVM write the LPI pending bits and the ITS tables
//! (devices, collections, translations) into guest RAM, so the snapshot
//! must save guest memory after this state. Restoring writes the
//! redistributors' LPI tables before enabling LPIs, and the ITS registers
//! in the documented order around `KVM_DEV_ARM_ITS_RESTORE_TABLES`.

use kvm_bindings::{
    kvm_device_attr, KVM_DEV_ARM_ITS_RESTORE_TABLES, KVM_DEV_ARM_ITS_SAVE_TABLES,
    KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_DIST_REGS,
    KVM_DEV_ARM_VGIC_GRP_ITS_REGS, KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
    KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES,
};
use kvm_ioctls::DeviceFd;
use serde::{Deserialize, Serialize};

use super::fdt::vcpu_mpidr;
use super::gic::Gic;
use super::layout::{GIC_NR_IRQS, GIC_SPI_BASE};
use super::vcpu_state::StateError;

/// Distributor registers with one bit per interrupt (SPIs only: the
/// private interrupts live in the redistributors): group, set-enable,
/// set-pending, set-active, group modifier.
const DIST_BIT_REGS: [u64; 5] = [0x0080, 0x0100, 0x0200, 0x0300, 0x0d00];
/// Priorities (8 bits per interrupt).
const GICD_IPRIORITYR: u64 = 0x0400;
/// Configuration, edge or level (2 bits per interrupt).
const GICD_ICFGR: u64 = 0x0c00;
/// Routing, 64 bits per SPI.
const GICD_IROUTER: u64 = 0x6000;
const GICD_CTLR: u64 = 0x0000;

/// Redistributor RD frame: control, wake, LPI property and pending tables.
const GICR_CTLR: u64 = 0x0000;
const GICR_WAKER: u64 = 0x0014;
const GICR_PROPBASER: u64 = 0x0070;
const GICR_PENDBASER: u64 = 0x0078;
/// The SGI frame's registers of the private interrupts (SGIs and PPIs).
const GICR_SGI: u64 = 0x1_0000;
const GICR_SGI_REGS: [u64; 6] = [0x0080, 0x0100, 0x0200, 0x0300, 0x0c00, 0x0c04];
const GICR_IGRPMODR0: u64 = 0x0d00;
const GICR_IPRIORITYR: u64 = 0x0400;

/// CPU interface system registers (op0, op1, CRn, CRm, op2), in restore
/// order: SRE and CTLR before the rest.
const ICC_SRE_EL1: (u64, u64, u64, u64, u64) = (3, 0, 12, 12, 5);
const ICC_REGS: [(u64, u64, u64, u64, u64); 6] = [
    ICC_SRE_EL1,
    (3, 0, 12, 12, 4), // ICC_CTLR_EL1
    (3, 0, 12, 12, 6), // ICC_IGRPEN0_EL1
    (3, 0, 12, 12, 7), // ICC_IGRPEN1_EL1
    (3, 0, 4, 6, 0),   // ICC_PMR_EL1
    (3, 0, 12, 8, 3),  // ICC_BPR0_EL1
];
const ICC_BPR1_EL1: (u64, u64, u64, u64, u64) = (3, 0, 12, 12, 3);

/// ITS registers (64-bit accesses), in restore order before and after
/// the tables.
const GITS_CTLR: u64 = 0x0000;
const GITS_IIDR: u64 = 0x0004;
const GITS_CBASER: u64 = 0x0080;
const GITS_CWRITER: u64 = 0x0088;
const GITS_CREADR: u64 = 0x0090;
const GITS_BASER: u64 = 0x0100;
const GITS_BASER_COUNT: u64 = 8;

fn sysreg(r: (u64, u64, u64, u64, u64)) -> u64 {
    let (op0, op1, crn, crm, op2) = r;
    (op0 << 14) | (op1 << 11) | (crn << 7) | (crm << 3) | op2
}

/// The `mpidr` field of a redistributor or CPU-interface attribute.
fn cpu_attr(vcpu: u8, offset: u64) -> u64 {
    (vcpu_mpidr(vcpu) << 32) | offset
}

fn get<T: Default>(dev: &DeviceFd, group: u32, attr: u64) -> Result<T, StateError> {
    let mut value = T::default();
    let mut a = kvm_device_attr {
        flags: 0,
        group,
        attr,
        addr: &mut value as *mut T as u64,
    };
    // SAFETY: `addr` points at `value`, a live T of the size the attribute
    // group transfers (u32 for distributor and redistributor registers,
    // u64 for CPU-interface and ITS registers).
    unsafe { dev.get_device_attr(&mut a) }.map_err(|source| StateError::Kvm {
        what: format!("KVM_GET_DEVICE_ATTR group {group} attr {attr:#x}"),
        source,
    })?;
    Ok(value)
}

fn set<T>(dev: &DeviceFd, group: u32, attr: u64, value: &T) -> Result<(), StateError> {
    let a = kvm_device_attr {
        flags: 0,
        group,
        attr,
        addr: value as *const T as u64,
    };
    dev.set_device_attr(&a).map_err(|source| StateError::Kvm {
        what: format!("KVM_SET_DEVICE_ATTR group {group} attr {attr:#x}"),
        source,
    })
}

fn ctrl(dev: &DeviceFd, attr: u32) -> Result<(), StateError> {
    set(dev, KVM_DEV_ARM_VGIC_GRP_CTRL, u64::from(attr), &0u64)
}

/// A register offset and its value.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg<T> {
    /// Offset in its frame, or the system register encoding.
    pub offset: u64,
    /// The value.
    pub value: T,
}

/// One vCPU's redistributor and CPU interface.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedistState {
    /// RD and SGI frame registers (32-bit accesses), GICR_CTLR last.
    pub regs: Vec<Reg<u32>>,
    /// CPU interface system registers (ICC_*_EL1).
    pub sysregs: Vec<Reg<u64>>,
}

/// Saved GICv3 and ITS registers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GicState {
    /// Distributor registers (32-bit accesses), GICD_CTLR last.
    pub dist: Vec<Reg<u32>>,
    /// One entry per vCPU, in vCPU id order.
    pub redist: Vec<RedistState>,
    /// ITS registers, in restore order (GITS_CTLR last); empty without an ITS.
    pub its: Vec<Reg<u64>>,
}

/// Distributor register offsets, in restore order.
fn dist_offsets() -> Vec<u64> {
    let words = |bits_per_irq: u32| {
        let first = GIC_SPI_BASE * bits_per_irq / 32;
        let last = GIC_NR_IRQS * bits_per_irq / 32;
        (first..last).map(|w| u64::from(w) * 4)
    };
    let mut offsets = Vec::new();
    for base in DIST_BIT_REGS {
        offsets.extend(words(1).map(|o| base + o));
    }
    offsets.extend(words(8).map(|o| GICD_IPRIORITYR + o));
    offsets.extend(words(2).map(|o| GICD_ICFGR + o));
    for irq in GIC_SPI_BASE..GIC_NR_IRQS {
        let o = GICD_IROUTER + 8 * u64::from(irq);
        offsets.extend([o, o + 4]);
    }
    offsets.push(GICD_CTLR);
    offsets
}

/// Redistributor register offsets, in restore order: the LPI tables
/// before GICR_CTLR (which enables LPIs).
fn redist_offsets() -> Vec<u64> {
    let mut offsets = vec![
        GICR_PROPBASER,
        GICR_PROPBASER + 4,
        GICR_PENDBASER,
        GICR_PENDBASER + 4,
        GICR_WAKER,
    ];
    offsets.extend(GICR_SGI_REGS.iter().map(|o| GICR_SGI + o));
    offsets.push(GICR_SGI + GICR_IGRPMODR0);
    offsets.extend((0..8).map(|w| GICR_SGI + GICR_IPRIORITYR + 4 * w));
    offsets.push(GICR_CTLR);
    offsets
}

/// CPU-interface registers, in restore order (the active-priority
/// registers a host lacks are left out when saving).
fn icc_regs() -> Vec<u64> {
    let mut regs: Vec<u64> = ICC_REGS.iter().map(|&r| sysreg(r)).collect();
    regs.push(sysreg(ICC_BPR1_EL1));
    regs.extend((0..4).map(|n| sysreg((3, 0, 12, 8, 4 + n)))); // ICC_AP0R<n>_EL1
    regs.extend((0..4).map(|n| sysreg((3, 0, 12, 9, n)))); // ICC_AP1R<n>_EL1
    regs
}

/// ITS register offsets, in restore order up to the tables.
fn its_offsets() -> Vec<u64> {
    let mut offsets = vec![GITS_IIDR];
    offsets.extend((0..GITS_BASER_COUNT).map(|n| GITS_BASER + 8 * n));
    offsets.extend([GITS_CBASER, GITS_CREADR, GITS_CWRITER]);
    offsets
}

impl GicState {
    /// Reads the GIC state of the paused VM with `vcpus` vCPUs; makes KVM
    /// write the LPI pending and ITS tables into guest RAM first.
    pub fn save(gic: &Gic, vcpus: u8) -> Result<Self, StateError> {
        let mut its = Vec::new();
        if let Some(dev) = &gic.its {
            ctrl(dev, KVM_DEV_ARM_ITS_SAVE_TABLES)?;
            for offset in its_offsets().into_iter().chain([GITS_CTLR]) {
                let value = get(dev, KVM_DEV_ARM_VGIC_GRP_ITS_REGS, offset)?;
                its.push(Reg { offset, value });
            }
        }
        ctrl(&gic.gic, KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES)?;
        let mut dist = Vec::new();
        for offset in dist_offsets() {
            let value = get(&gic.gic, KVM_DEV_ARM_VGIC_GRP_DIST_REGS, offset)?;
            dist.push(Reg { offset, value });
        }
        let mut redist = Vec::with_capacity(usize::from(vcpus));
        for id in 0..vcpus {
            let mut regs = Vec::new();
            for offset in redist_offsets() {
                let attr = cpu_attr(id, offset);
                let value = get(&gic.gic, KVM_DEV_ARM_VGIC_GRP_REDIST_REGS, attr)?;
                regs.push(Reg { offset, value });
            }
            let mut sysregs = Vec::new();
            for offset in icc_regs() {
                let attr = cpu_attr(id, offset);
                match get(&gic.gic, KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, attr) {
                    Ok(value) => sysregs.push(Reg { offset, value }),
                    // Active-priority registers beyond the host's
                    // priority bits do not exist.
                    Err(_) if offset != sysreg(ICC_SRE_EL1) && is_apr(offset) => {}
                    Err(e) => return Err(e),
                }
            }
            redist.push(RedistState { regs, sysregs });
        }
        Ok(Self { dist, redist, its })
    }

    /// Writes a saved GIC state into the initialised GIC of a VM with the
    /// same vCPUs, once guest RAM (which holds the ITS tables) is in place.
    pub fn restore(&self, gic: &Gic) -> Result<(), StateError> {
        if self.its.is_empty() != gic.its.is_none() {
            let has = |its: bool| {
                if its {
                    "an ITS"
                } else {
                    "no ITS (MSIs through the MSI frame)"
                }
            };
            return Err(StateError::Invalid(format!(
                "the snapshot's GIC has {} and this VM's {}: restore where the GIC matches \
                 ({} builds it without ITS)",
                has(!self.its.is_empty()),
                has(gic.its.is_some()),
                super::gic::NO_ITS_ENV
            )));
        }
        for reg in &self.dist {
            set(
                &gic.gic,
                KVM_DEV_ARM_VGIC_GRP_DIST_REGS,
                reg.offset,
                &reg.value,
            )?;
        }
        for (id, cpu) in self.redist.iter().enumerate() {
            let id = u8::try_from(id)
                .map_err(|_| StateError::Invalid("too many redistributors".into()))?;
            for reg in &cpu.regs {
                let attr = cpu_attr(id, reg.offset);
                set(&gic.gic, KVM_DEV_ARM_VGIC_GRP_REDIST_REGS, attr, &reg.value)?;
            }
            for reg in &cpu.sysregs {
                let attr = cpu_attr(id, reg.offset);
                set(&gic.gic, KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, attr, &reg.value)?;
            }
        }
        if let Some(dev) = &gic.its {
            let mut ctlr = None;
            for reg in &self.its {
                if reg.offset == GITS_CTLR {
                    ctlr = Some(reg.value);
                    continue;
                }
                set(dev, KVM_DEV_ARM_VGIC_GRP_ITS_REGS, reg.offset, &reg.value)?;
            }
            ctrl(dev, KVM_DEV_ARM_ITS_RESTORE_TABLES)?;
            if let Some(value) = ctlr {
                set(dev, KVM_DEV_ARM_VGIC_GRP_ITS_REGS, GITS_CTLR, &value)?;
            }
        }
        Ok(())
    }
}

/// Whether `encoding` is one of ICC_AP0R<n>_EL1 / ICC_AP1R<n>_EL1.
fn is_apr(encoding: u64) -> bool {
    let crm = (encoding >> 3) & 0xf;
    let crn = (encoding >> 7) & 0xf;
    crn == 12 && (crm == 8 || crm == 9) && encoding != sysreg((3, 0, 12, 8, 3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysreg_encodings_match_the_architecture() {
        // ICC_SRE_EL1 is S3_0_C12_C12_5; ICC_PMR_EL1 S3_0_C4_C6_0.
        assert_eq!(sysreg(ICC_SRE_EL1), 0xc665);
        assert_eq!(sysreg((3, 0, 4, 6, 0)), 0xc230);
        assert!(is_apr(sysreg((3, 0, 12, 9, 0))));
        assert!(is_apr(sysreg((3, 0, 12, 8, 4))));
        assert!(!is_apr(sysreg((3, 0, 12, 8, 3))), "ICC_BPR0_EL1");
        assert!(!is_apr(sysreg(ICC_SRE_EL1)));
    }

    #[test]
    fn register_lists_cover_the_spis_and_end_with_the_enables() {
        let dist = dist_offsets();
        // 96 SPIs: 3 words per bit register, 24 priority, 6 config, 192 routing halves.
        assert_eq!(dist.len(), 5 * 3 + 24 + 6 + 192 + 1);
        assert_eq!(dist.first(), Some(&0x84), "SPIs start at word 1");
        assert_eq!(dist.last(), Some(&GICD_CTLR));
        let redist = redist_offsets();
        assert_eq!(redist.last(), Some(&GICR_CTLR));
        assert_eq!(redist[0], GICR_PROPBASER);
        assert_eq!(cpu_attr(17, 0x14), (0x101 << 32) | 0x14);
        assert_eq!(its_offsets()[0], GITS_IIDR);
    }
}
