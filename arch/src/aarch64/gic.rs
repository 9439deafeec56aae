//! The in-kernel GICv3 (`KVM_DEV_TYPE_ARM_VGIC_V3`) and its ITS
//! (`KVM_DEV_TYPE_ARM_VGIC_ITS`), which translates virtio-pci MSI-X writes
//! into LPIs. Where KVM has no ITS (or [`NO_ITS_ENV`] asks for none), MSIs
//! go through a GICv2m-style MSI frame chv emulates instead: each MSI-X
//! vector then raises one of the frame's SPIs.

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_ITS,
    kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, KVM_DEV_ARM_VGIC_CTRL_INIT,
    KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
    KVM_VGIC_ITS_ADDR_TYPE, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, VmFd};

use super::layout::{
    GIC_DIST_START, GIC_ITS_START, GIC_NR_IRQS, GIC_REDIST_START, GIC_V2M_FIRST_SPI, GIC_V2M_SPIS,
    GIC_V2M_START,
};
use crate::ArchError;

/// The VM's GICv3 and, where KVM offers one, its ITS.
pub struct Gic {
    /// The distributor and redistributors.
    pub(super) gic: DeviceFd,
    /// The interrupt translation service.
    pub(super) its: Option<DeviceFd>,
}

fn create_device(vm: &VmFd, type_: u32, what: &'static str) -> Result<DeviceFd, ArchError> {
    let mut dev = kvm_create_device {
        type_,
        fd: 0,
        flags: 0,
    };
    vm.create_device(&mut dev).map_err(ArchError::kvm(what))
}

/// Sets attribute `attr` of `group` to the value at `value` (the kernel
/// reads a u32 or u64 from that address, as the attribute defines).
fn set_attr<T>(
    dev: &DeviceFd,
    group: u32,
    attr: u64,
    value: Option<&T>,
    what: &'static str,
) -> Result<(), ArchError> {
    let attr = kvm_device_attr {
        flags: 0,
        group,
        attr,
        addr: value.map_or(0, |v| v as *const T as u64),
    };
    dev.set_device_attr(&attr).map_err(ArchError::kvm(what))
}

/// Environment variable that, set to anything but `0` or empty, builds the
/// GICv3 without an ITS, as on a host whose KVM has none: PCI MSIs then take
/// the MSI-frame path. For tests of that path on hosts with an ITS.
pub const NO_ITS_ENV: &str = "CHV_AARCH64_NO_ITS";

/// Whether [`NO_ITS_ENV`] asks for a GICv3 without ITS.
pub fn its_disabled_by_env() -> bool {
    std::env::var_os(NO_ITS_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

impl Gic {
    /// Creates the GICv3 and places its distributor and redistributors;
    /// creates the ITS when `want_its` and KVM has one. Without it, PCI
    /// MSIs go through the MSI frame, and this says so.
    pub fn create(vm: &VmFd, want_its: bool) -> Result<Self, ArchError> {
        let gic = create_device(
            vm,
            kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
            "KVM_CREATE_DEVICE(VGIC_V3)",
        )
        .map_err(|e| {
            ArchError::Setup(format!(
                "{e}: this host's KVM has no in-kernel GICv3, which chv needs on aarch64"
            ))
        })?;
        set_attr(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            u64::from(KVM_VGIC_V3_ADDR_TYPE_DIST),
            Some(&GIC_DIST_START),
            "GICv3 distributor address",
        )?;
        set_attr(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            u64::from(KVM_VGIC_V3_ADDR_TYPE_REDIST),
            Some(&GIC_REDIST_START),
            "GICv3 redistributor address",
        )?;
        let frame = format!(
            "PCI MSIs go through a GICv2m-style MSI frame at {GIC_V2M_START:#x} instead \
             (SPIs {GIC_V2M_FIRST_SPI}-{}: {GIC_V2M_SPIS} MSI-X vectors for all devices)",
            GIC_V2M_FIRST_SPI + GIC_V2M_SPIS - 1
        );
        if !want_its {
            log::warn!("GICv3 without ITS ({NO_ITS_ENV} is set): {frame}");
            return Ok(Self { gic, its: None });
        }
        let its = match create_device(
            vm,
            kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_ITS,
            "KVM_CREATE_DEVICE(VGIC_ITS)",
        ) {
            Ok(its) => {
                set_attr(
                    &its,
                    KVM_DEV_ARM_VGIC_GRP_ADDR,
                    u64::from(KVM_VGIC_ITS_ADDR_TYPE),
                    Some(&GIC_ITS_START),
                    "GICv3 ITS address",
                )?;
                Some(its)
            }
            Err(e) => {
                log::warn!("{e}: this host's KVM has no GICv3 ITS; {frame}");
                None
            }
        };
        Ok(Self { gic, its })
    }

    /// Whether the GIC has an ITS (otherwise MSIs take the MSI frame).
    pub fn has_its(&self) -> bool {
        self.its.is_some()
    }

    /// Sets the number of interrupts and initialises the GIC and ITS; once
    /// every vCPU exists and before any runs.
    pub fn finalize(&self) -> Result<(), ArchError> {
        set_attr(
            &self.gic,
            KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
            0,
            Some(&GIC_NR_IRQS),
            "GICv3 number of interrupts",
        )?;
        set_attr::<u64>(
            &self.gic,
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
            None,
            "GICv3 init",
        )?;
        if let Some(its) = &self.its {
            set_attr::<u64>(
                its,
                KVM_DEV_ARM_VGIC_GRP_CTRL,
                u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
                None,
                "GICv3 ITS init",
            )?;
        }
        Ok(())
    }
}
