//! The aarch64 side of the arch interface: the platform description, the
//! in-kernel GICv3 and ITS ([`Machine`]), vCPU setup ([`CpuConfig`]) and
//! payload loading ([`load_payload`]).

use kvm_bindings::kvm_vcpu_init;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::fdt::{FdtConfig, MsiController};
use super::gic::{its_disabled_by_env, Gic};
use super::layout;
use super::regs;
use super::vcpu_state::{StateError, VcpuState};
use crate::{
    ArchError, CpuOptions, DeviceBus, IrqchipRoute, MsiDelivery, MsiFrame, Payload, PayloadError,
    PciLayout, Platform, PlatformDevice, PlatformDeviceKind,
};

pub use super::boot::BootEntry;
pub use super::gic_state::GicState as VmState;

/// SPIs below this GSI are platform-device pins; MSI routes start here.
const FIRST_MSI_GSI: u32 = layout::GIC_NR_IRQS - layout::GIC_SPI_BASE;

const fn mmio(kind: PlatformDeviceKind, base: u64, irq: u32) -> PlatformDevice {
    PlatformDevice {
        kind,
        bus: DeviceBus::Mmio,
        base,
        len: layout::PLATFORM_DEVICE_SIZE,
        irq: Some(irq),
    }
}

/// The aarch64 platform: PL011 and PL031 on MMIO, generic ECAM PCI with
/// MSIs through the GICv3 ITS (or, without one, an MSI frame), no ACPI.
pub const PLATFORM: Platform = Platform {
    name: "aarch64",
    pci: PciLayout {
        ecam: (layout::PCI_ECAM_START, layout::PCI_ECAM_SIZE),
        config_io_port: None,
        mmio32: (layout::PCI_MMIO32_START, layout::PCI_MMIO32_END),
        mmio64: (
            layout::PCI_MMIO64_START,
            layout::PCI_MMIO64_START + layout::PCI_MMIO64_SIZE,
        ),
        // The device tree describes one host bridge.
        max_segments: 1,
    },
    devices: &[
        mmio(
            PlatformDeviceKind::Pl011,
            layout::UART_START,
            layout::UART_IRQ,
        ),
        mmio(
            PlatformDeviceKind::Pl031,
            layout::RTC_START,
            layout::RTC_IRQ,
        ),
    ],
    acpi_hotplug: None,
    first_msi_gsi: FIRST_MSI_GSI,
    msi_device_id: true,
    smbios: false,
    // No ACPI here; the device tree binding (`microsoft,vmgenid`, Linux
    // 6.10+) is not implemented.
    generation_id: None,
};

/// GSI n is SPI n of the GIC (irqchip 0, pin n), for every SPI below the
/// MSI GSIs; kept when MSI routes are added.
pub fn irqchip_routes() -> Vec<IrqchipRoute> {
    (0..FIRST_MSI_GSI)
        .map(|gsi| IrqchipRoute {
            gsi,
            chip: 0,
            pin: gsi,
        })
        .collect()
}

/// Guest RAM: one region from 1 GiB.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, usize)> {
    vec![(GuestAddress(layout::RAM_START), size as usize)]
}

/// The MSI frame that stands in for a missing ITS: GICv2m's registers at
/// [`layout::GIC_V2M_START`], its SPIs on irqchip 0, whose pin n is SPI n
/// (INTID 32 + n) and the default route of GSI n.
pub const MSI_FRAME: MsiFrame = MsiFrame {
    base: layout::GIC_V2M_START,
    len: layout::GIC_V2M_SIZE,
    doorbell: layout::GIC_V2M_START + MSI_SETSPI_NS,
    first_intid: layout::GIC_V2M_FIRST_SPI,
    count: layout::GIC_V2M_SPIS,
    chip: 0,
    first_pin: layout::GIC_V2M_FIRST_SPI - layout::GIC_SPI_BASE,
};

/// Offset of the doorbell register (`MSI_SETSPI_NS`) in a GICv2m frame.
const MSI_SETSPI_NS: u64 = 0x40;

const _: () = assert!(MSI_FRAME.first_pin + MSI_FRAME.count <= FIRST_MSI_GSI);

/// The in-kernel GICv3 and ITS of one VM.
pub struct Machine {
    gic: Gic,
    /// vCPUs the GIC was initialised for.
    vcpus: u8,
}

impl Machine {
    /// Creates the GICv3 (and ITS, unless the host's KVM has none or
    /// `CHV_AARCH64_NO_ITS` is set) and places their frames; before any
    /// vCPU runs.
    pub fn create(vm: &VmFd) -> Result<Self, ArchError> {
        Self::with_its(vm, !its_disabled_by_env())
    }

    /// [`Self::create`], with an ITS only if `want_its`.
    pub fn with_its(vm: &VmFd, want_its: bool) -> Result<Self, ArchError> {
        Ok(Self {
            gic: Gic::create(vm, want_its)?,
            vcpus: 0,
        })
    }

    /// How PCI MSIs reach the GIC: through the ITS (KVM routes the
    /// messages), or else through the MSI frame the VMM puts on the MMIO bus.
    pub fn msi_delivery(&self) -> MsiDelivery {
        if self.gic.has_its() {
            MsiDelivery::Kvm
        } else {
            MsiDelivery::Frame(MSI_FRAME)
        }
    }

    /// Initialises the GIC once every vCPU exists.
    pub fn finalize(&mut self, _vm: &VmFd, vcpus: u8) -> Result<(), ArchError> {
        if vcpus > layout::MAX_VCPUS {
            return Err(ArchError::Setup(format!(
                "{vcpus} vCPUs: the GICv3 redistributor area holds {}",
                layout::MAX_VCPUS
            )));
        }
        self.vcpus = vcpus;
        self.gic.finalize()
    }

    /// Whether the GIC has an ITS.
    pub fn has_its(&self) -> bool {
        self.gic.has_its()
    }

    /// Captures the GIC and ITS state of the paused VM (the ITS tables go
    /// into guest RAM, so call this before saving memory).
    pub fn save_state(&self, _vm: &VmFd) -> Result<VmState, StateError> {
        VmState::save(&self.gic, self.vcpus)
    }

    /// Loads a saved GIC and ITS state (guest RAM must be in place).
    pub fn restore_state(&self, _vm: &VmFd, state: &VmState) -> Result<(), StateError> {
        if state.redist.len() != usize::from(self.vcpus) {
            return Err(StateError::Invalid(format!(
                "the GIC state has {} redistributors, this VM {} vCPUs",
                state.redist.len(),
                self.vcpus
            )));
        }
        state.restore(&self.gic)
    }
}

/// Initialises each vCPU (`KVM_ARM_VCPU_INIT` with PSCI 0.2) and sets the
/// boot vCPU's entry registers.
pub struct CpuConfig {
    init: kvm_vcpu_init,
}

impl CpuConfig {
    /// Reads the host's preferred vCPU target once for the VM.
    pub fn new(_kvm: &Kvm, vm: &VmFd, opts: &CpuOptions) -> Result<Self, ArchError> {
        if opts.max_vcpus > layout::MAX_VCPUS {
            return Err(ArchError::Setup(format!(
                "max_vcpus={}: aarch64 guests can have at most {} vCPUs",
                opts.max_vcpus,
                layout::MAX_VCPUS
            )));
        }
        check_topology(opts)?;
        if opts.max_phys_bits != 0 && opts.max_phys_bits < IPA_BITS {
            return Err(ArchError::Setup(format!(
                "cpus.max_phys_bits={}: the aarch64 memory map needs {IPA_BITS} bits",
                opts.max_phys_bits
            )));
        }
        if opts.nested {
            log::info!(
                "cpus.nested=true: chv offers no nested virtualization (FEAT_NV) to aarch64 \
                 guests; they run at EL1"
            );
        }
        Ok(Self {
            init: regs::vcpu_init_template(vm)?,
        })
    }

    /// Initialises vCPU `id`; the boot vCPU (`boot = Some`) starts at the
    /// kernel with x0 at the device tree, the others powered off.
    pub fn configure(
        &self,
        vcpu: &VcpuFd,
        id: u8,
        boot: Option<(&GuestMemoryMmap, &BootEntry)>,
    ) -> Result<(), ArchError> {
        regs::init_vcpu(vcpu, &self.init, id)?;
        if let Some((_, entry)) = boot {
            regs::set_boot_registers(vcpu, entry.pc, entry.fdt)?;
        }
        Ok(())
    }

    /// Initialises a fresh vCPU and loads a saved state into it.
    pub fn restore(&self, vcpu: &VcpuFd, id: u8, state: &VcpuState) -> Result<(), ArchError> {
        regs::init_vcpu(vcpu, &self.init, id)?;
        state
            .restore(vcpu)
            .map_err(|e| ArchError::Setup(e.to_string()))
    }
}

/// Guest-physical address bits of the memory map (KVM's default IPA size,
/// which every arm64 KVM host offers).
const IPA_BITS: u8 = 40;

/// Refuses a topology the device tree cannot describe (it has no
/// `cpu-map`: every vCPU is a core of one cluster).
fn check_topology(opts: &CpuOptions) -> Result<(), ArchError> {
    match opts.topology {
        Some(t) if t.threads_per_core > 1 || t.dies_per_package > 1 || t.packages > 1 => {
            Err(ArchError::Setup(format!(
                "cpus.topology {}:{}:{}:{}: only one package of single-threaded cores is \
                 supported on aarch64",
                t.threads_per_core, t.cores_per_die, t.dies_per_package, t.packages
            )))
        }
        _ => Ok(()),
    }
}

/// Checks the `--cpus features=` names: aarch64 has none to select.
pub fn validate_cpu_features(names: &[String]) -> Result<(), String> {
    match names.first() {
        None => Ok(()),
        Some(name) => Err(format!(
            "{name}: selecting CPU features is not supported on aarch64"
        )),
    }
}

/// The guest program counter of a vCPU outside `KVM_RUN`.
pub fn instruction_pointer(vcpu: &VcpuFd) -> Result<u64, kvm_ioctls::Error> {
    regs::get_u64(vcpu, regs::PC)
}

/// Nothing host-specific to add to a KVM internal-error report here.
pub fn internal_error_hint() -> Option<String> {
    None
}

/// Loads the `Image` and initramfs and writes the device tree of this
/// machine; returns where the boot vCPU starts.
pub fn load_payload(
    memory: &GuestMemoryMmap,
    machine: &Machine,
    payload: Payload<'_>,
) -> Result<BootEntry, PayloadError> {
    if payload.ram_size > layout::MAX_RAM_SIZE {
        return Err(PayloadError::Boot(format!(
            "{} GiB of RAM: aarch64 guests can have at most {} GiB",
            payload.ram_size >> 30,
            layout::MAX_RAM_SIZE >> 30
        )));
    }
    super::boot::load(
        memory,
        payload.kernel,
        payload.initramfs,
        FdtConfig {
            cmdline: payload.cmdline,
            ram_size: payload.ram_size,
            vcpus: payload.boot_vcpus,
            initrd: None,
            msi: if machine.has_its() {
                MsiController::Its
            } else {
                MsiController::V2m
            },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_devices_are_pl011_and_pl031_on_mmio() {
        let uart = PLATFORM.device(PlatformDeviceKind::Pl011).unwrap();
        assert_eq!(
            (uart.bus, uart.base, uart.irq),
            (DeviceBus::Mmio, 0x0900_0000, Some(1))
        );
        assert!(PLATFORM.device(PlatformDeviceKind::Pl031).is_some());
        assert!(PLATFORM.device(PlatformDeviceKind::Uart16550).is_none());
        assert!(PLATFORM.acpi_hotplug.is_none());
        assert_eq!(PLATFORM.pci.config_io_port, None);
    }

    #[test]
    fn routes_cover_the_platform_spis_only() {
        let routes = irqchip_routes();
        assert_eq!(routes.len() as u32, PLATFORM.first_msi_gsi);
        for dev in PLATFORM.devices {
            let irq = dev.irq.unwrap();
            assert!(routes.iter().any(|r| r.gsi == irq && r.pin == irq));
        }
    }

    #[test]
    fn ram_starts_at_1_gib() {
        assert_eq!(ram_regions(1 << 30), vec![(GuestAddress(1 << 30), 1 << 30)]);
    }

    #[test]
    fn only_flat_topologies_are_accepted() {
        let mut opts = CpuOptions {
            topology: Some(crate::CpuTopology::flat(4)),
            ..CpuOptions::default()
        };
        assert!(check_topology(&opts).is_ok());
        opts.topology = Some(crate::CpuTopology {
            threads_per_core: 2,
            cores_per_die: 2,
            dies_per_package: 1,
            packages: 1,
        });
        let err = check_topology(&opts).unwrap_err().to_string();
        assert!(err.contains("cpus.topology 2:2:1:1"), "{err}");
    }

    #[test]
    fn cpu_features_are_refused_by_name() {
        assert!(validate_cpu_features(&[]).is_ok());
        let err = validate_cpu_features(&["amx".into()]).unwrap_err();
        assert!(err.contains("amx") && err.contains("aarch64"), "{err}");
    }
}

/// Against the host's KVM: run inside the aarch64 L1 machine by
/// `scripts/aarch64-ci.sh`; under qemu-user (whose KVM ioctls reach the x86
/// host's /dev/kvm and fail with ENOTTY) they say so and return.
#[cfg(test)]
mod kvm_tests {
    use super::*;
    use kvm_bindings::{KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_STOPPED};

    fn kvm_vm() -> Option<(Kvm, VmFd)> {
        let kvm = Kvm::new().ok()?;
        match kvm.create_vm() {
            Ok(vm) => Some((kvm, vm)),
            Err(e) if e.errno() == libc::ENOTTY => {
                eprintln!("no aarch64 KVM here (qemu-user?): run this test in L1");
                None
            }
            Err(e) => panic!("KVM_CREATE_VM: {e}"),
        }
    }

    fn two_vcpus(kvm: &Kvm, vm: &VmFd) -> (Machine, CpuConfig, VcpuFd, VcpuFd) {
        two_vcpus_with(kvm, vm, true)
    }

    fn two_vcpus_with(kvm: &Kvm, vm: &VmFd, its: bool) -> (Machine, CpuConfig, VcpuFd, VcpuFd) {
        let machine = Machine::with_its(vm, its).unwrap();
        let opts = CpuOptions {
            boot_vcpus: 2,
            max_vcpus: 2,
            ..CpuOptions::default()
        };
        let cfg = CpuConfig::new(kvm, vm, &opts).unwrap();
        (
            machine,
            cfg,
            vm.create_vcpu(0).unwrap(),
            vm.create_vcpu(1).unwrap(),
        )
    }

    #[test]
    fn boot_registers_psci_power_state_and_gic_state_survive_a_round_trip() {
        let Some((kvm, vm)) = kvm_vm() else { return };
        let (mut machine, cfg, v0, v1) = two_vcpus(&kvm, &vm);
        assert!(machine.has_its(), "this host's vGICv3 has an ITS");
        assert_eq!(machine.msi_delivery(), MsiDelivery::Kvm);
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(layout::RAM_START), 4 << 20)]).unwrap();
        let entry = BootEntry {
            pc: layout::RAM_START + 0x1000,
            fdt: layout::RAM_START + 0x20_0000,
        };
        cfg.configure(&v0, 0, Some((&mem, &entry))).unwrap();
        cfg.configure(&v1, 1, None).unwrap();
        machine.finalize(&vm, 2).unwrap();
        assert_eq!(instruction_pointer(&v0).unwrap(), entry.pc);
        assert_eq!(regs::get_u64(&v0, regs::xreg(0)).unwrap(), entry.fdt);
        assert_eq!(regs::get_u64(&v0, regs::PSTATE).unwrap(), regs::PSTATE_BOOT);

        let s0 = VcpuState::save(&v0, &kvm).unwrap();
        let s1 = VcpuState::save(&v1, &kvm).unwrap();
        assert_eq!(s0.mp_state, KVM_MP_STATE_RUNNABLE);
        assert_eq!(s1.mp_state, KVM_MP_STATE_STOPPED, "secondaries start off");
        assert!(s0.registers.iter().any(|r| r.id == regs::PC));
        let gic = machine.save_state(&vm).unwrap();
        assert_eq!(gic.redist.len(), 2);
        assert!(!gic.its.is_empty());

        // A second VM built from the saved state.
        let vm2 = kvm.create_vm().unwrap();
        let (mut machine2, cfg2, w0, w1) = two_vcpus(&kvm, &vm2);
        cfg2.restore(&w0, 0, &s0).unwrap();
        cfg2.restore(&w1, 1, &s1).unwrap();
        machine2.finalize(&vm2, 2).unwrap();
        machine2.restore_state(&vm2, &gic).unwrap();
        assert_eq!(instruction_pointer(&w0).unwrap(), entry.pc);
        assert_eq!(regs::get_u64(&w0, regs::xreg(0)).unwrap(), entry.fdt);
        assert_eq!(
            VcpuState::save(&w1, &kvm).unwrap().mp_state,
            KVM_MP_STATE_STOPPED
        );
        let again = machine2.save_state(&vm2).unwrap();
        assert_eq!(again.dist, gic.dist);
        assert_eq!(again.redist, gic.redist);

        // A state for another vCPU count is refused by name.
        let mut short = gic.clone();
        short.redist.pop();
        let err = machine2.restore_state(&vm2, &short).unwrap_err();
        assert!(err.to_string().contains("redistributors"), "{err}");
    }

    /// Whether SPI `intid` is pending in a saved distributor state.
    fn spi_pending(state: &VmState, intid: u32) -> bool {
        let offset = 0x200 + 4 * u64::from(intid / 32); // GICD_ISPENDR<n>
        let word = state.dist.iter().find(|r| r.offset == offset).unwrap();
        word.value & (1 << (intid % 32)) != 0
    }

    #[test]
    fn without_its_msis_raise_the_frames_spis_through_irqchip_routes() {
        use kvm_bindings::{kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQ_ROUTING_IRQCHIP};
        use vmm_sys_util::eventfd::EventFd;

        let Some((kvm, vm)) = kvm_vm() else { return };
        let (mut machine, cfg, v0, v1) = two_vcpus_with(&kvm, &vm, false);
        assert!(!machine.has_its());
        let MsiDelivery::Frame(frame) = machine.msi_delivery() else {
            panic!("no MSI frame without an ITS");
        };
        assert_eq!(frame, MSI_FRAME);
        cfg.configure(&v0, 0, None).unwrap();
        cfg.configure(&v1, 1, None).unwrap();
        machine.finalize(&vm, 2).unwrap();

        // Make every SPI edge-triggered, as Linux configures the frame's.
        let mut state = machine.save_state(&vm).unwrap();
        assert!(state.its.is_empty());
        for reg in state.dist.iter_mut() {
            if (0xc08..0xd00).contains(&reg.offset) {
                reg.value = 0xaaaa_aaaa; // GICD_ICFGR<n>: edge
            }
        }
        machine.restore_state(&vm, &state).unwrap();

        // The default routes plus one vector's route to the frame's third
        // SPI, as the VMM installs for an MSI-X vector.
        let msi_gsi = FIRST_MSI_GSI + 4;
        let mut entries: Vec<kvm_irq_routing_entry> = irqchip_routes()
            .iter()
            .map(|r| {
                let mut e = kvm_irq_routing_entry {
                    gsi: r.gsi,
                    type_: KVM_IRQ_ROUTING_IRQCHIP,
                    ..Default::default()
                };
                e.u.irqchip.irqchip = r.chip;
                e.u.irqchip.pin = r.pin;
                e
            })
            .collect();
        let pin = frame.pin(frame.doorbell, frame.first_intid + 2).unwrap();
        let mut e = kvm_irq_routing_entry {
            gsi: msi_gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = frame.chip;
        e.u.irqchip.pin = pin;
        entries.push(e);
        vm.set_gsi_routing(&KvmIrqRouting::from_entries(&entries).unwrap())
            .unwrap();
        let vector = EventFd::new(0).unwrap();
        vm.register_irqfd(&vector, msi_gsi).unwrap();
        // The frame's own doorbell path: the irqfd on the SPI's default GSI.
        let doorbell = EventFd::new(0).unwrap();
        vm.register_irqfd(&doorbell, frame.first_pin + 5).unwrap();

        let before = machine.save_state(&vm).unwrap();
        assert!(!spi_pending(&before, frame.first_intid + 2));
        assert!(!spi_pending(&before, frame.first_intid + 5));
        vector.write(1).unwrap();
        doorbell.write(1).unwrap();
        let after = machine.save_state(&vm).unwrap();
        assert!(spi_pending(&after, frame.first_intid + 2), "vector route");
        assert!(spi_pending(&after, frame.first_intid + 5), "doorbell irqfd");
        assert!(!spi_pending(&after, frame.first_intid + 3));

        // A snapshot without ITS does not restore into a VM with one.
        let vm2 = kvm.create_vm().unwrap();
        let (mut other, cfg2, w0, w1) = two_vcpus_with(&kvm, &vm2, true);
        cfg2.configure(&w0, 0, None).unwrap();
        cfg2.configure(&w1, 1, None).unwrap();
        other.finalize(&vm2, 2).unwrap();
        let err = other.restore_state(&vm2, &after).unwrap_err().to_string();
        assert!(
            err.contains("no ITS") && err.contains("CHV_AARCH64_NO_ITS"),
            "{err}"
        );
    }
}
