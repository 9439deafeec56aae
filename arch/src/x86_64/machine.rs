//! The x86_64 side of the arch interface: the platform description, the
//! in-kernel irqchip and PIT ([`Machine`]), vCPU setup ([`CpuConfig`]) and
//! payload loading ([`load_payload`]).

use kvm_bindings::{
    kvm_pit_config, CpuId, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use super::acpi::cpu::GED_EVENT_CPU_HOTPLUG;
use super::acpi::hotplug::{GED_EVENT_PCI_HOTPLUG, GED_EVENT_POWER_BUTTON, LAST_HOTPLUG_SLOT};
use super::acpi::memory::{GED_EVENT_MEMORY_HOTPLUG, MAX_MEMORY_SLOTS};
use super::acpi::vmgenid::{GED_EVENT_VM_GENERATION, VMGENID_SIZE};
use super::boot::KernelEntry;
use super::cpuid::{self, CpuidPolicy};
use super::layout;
use super::vcpu_state::{StateError, VcpuState};
use super::vm_state::VmKvmState;
use crate::{
    AcpiHotplugLayout, ArchError, CpuOptions, CpuTopology, DeviceBus, GenerationIdLayout,
    IrqchipRoute, Payload, PayloadError, PciLayout, Platform, PlatformDevice, PlatformDeviceKind,
};

/// Where the boot vCPU starts.
pub type BootEntry = KernelEntry;

/// The VM-wide KVM state a snapshot keeps.
pub type VmState = VmKvmState;

/// IOAPIC pins of KVM's in-kernel IOAPIC; MSI GSIs are allocated above them.
const IOAPIC_PINS: u32 = 24;

const fn pio(kind: PlatformDeviceKind, port: u16, len: u64, irq: Option<u32>) -> PlatformDevice {
    PlatformDevice {
        kind,
        bus: DeviceBus::Pio,
        base: port as u64,
        len,
        irq,
    }
}

/// The x86_64 platform: COM1, the i8042 reset line, CMOS/RTC and the ACPI
/// PM registers on port I/O; PCI through 0xCF8 and ECAM; ACPI hotplug.
pub const PLATFORM: Platform = Platform {
    name: "x86_64",
    pci: PciLayout {
        ecam: (layout::PCI_MMCONFIG_START, layout::PCI_MMCONFIG_SIZE),
        config_io_port: Some(layout::PCI_CONFIG_IO_PORT),
        mmio32: (layout::PCI_MMIO32_START, layout::PCI_MMIO32_END),
        mmio64: (
            layout::PCI_MMIO64_START,
            layout::PCI_MMIO64_START + layout::PCI_MMIO64_SIZE,
        ),
        max_segments: layout::PCI_MAX_SEGMENTS,
    },
    devices: &[
        pio(
            PlatformDeviceKind::Uart16550,
            layout::COM1_PORT,
            8,
            Some(layout::COM1_IRQ),
        ),
        pio(PlatformDeviceKind::I8042, layout::I8042_PORT, 5, None),
        pio(PlatformDeviceKind::Cmos, layout::CMOS_PORT, 2, None),
        pio(PlatformDeviceKind::AcpiPm, layout::ACPI_PM_PORT, 1, None),
        pio(
            PlatformDeviceKind::AcpiPmTimer,
            layout::ACPI_PM_TIMER_PORT,
            4,
            None,
        ),
    ],
    acpi_hotplug: Some(AcpiHotplugLayout {
        ged_port: layout::GED_PORT,
        ged_port_size: layout::GED_PORT_SIZE,
        ged_irq: layout::GED_IRQ,
        pci_hotplug_port: layout::PCI_HOTPLUG_PORT,
        pci_hotplug_port_size: layout::PCI_HOTPLUG_PORT_SIZE,
        cpu_hotplug_port: layout::CPU_HOTPLUG_PORT,
        cpu_hotplug_port_size: layout::CPU_HOTPLUG_PORT_SIZE,
        event_pci_hotplug: GED_EVENT_PCI_HOTPLUG,
        event_power_button: GED_EVENT_POWER_BUTTON,
        event_cpu_hotplug: GED_EVENT_CPU_HOTPLUG,
        memory_hotplug_port: layout::MEMORY_HOTPLUG_PORT,
        memory_hotplug_port_size: layout::MEMORY_HOTPLUG_PORT_SIZE,
        event_memory_hotplug: GED_EVENT_MEMORY_HOTPLUG,
        memory_hotplug_slots: MAX_MEMORY_SLOTS,
        memory_hotplug_window: (layout::RAM_64BIT_START, layout::PCI_MMIO64_START),
        memory_hotplug_align: layout::MEMORY_HOTPLUG_ALIGN,
        last_hotplug_slot: LAST_HOTPLUG_SLOT,
    }),
    first_msi_gsi: IOAPIC_PINS,
    msi_device_id: false,
    smbios: true,
    generation_id: Some(GenerationIdLayout {
        addr: layout::VMGENID_START,
        ged_event: GED_EVENT_VM_GENERATION,
    }),
};

const _: () = assert!(VMGENID_SIZE as usize == crate::GENERATION_ID_SIZE);

/// KVM's default legacy routes (PIC pins 0-15, IOAPIC pins 0-23, GSI n to
/// pin n), kept when MSI routes are added so the serial port and the PIT
/// keep working.
pub fn irqchip_routes() -> Vec<IrqchipRoute> {
    let mut routes = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        let route = |chip, pin| IrqchipRoute { gsi, chip, pin };
        routes.push(route(KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 8 {
            routes.push(route(KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            routes.push(route(KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
    }
    routes
}

/// The in-kernel PICs, IOAPIC and PIT of one VM.
pub struct Machine {
    _private: (),
}

impl Machine {
    /// Sets the TSS and identity-map addresses and creates the in-kernel
    /// irqchip and PIT; before any vCPU exists.
    pub fn create(vm: &VmFd) -> Result<Self, ArchError> {
        vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
            .map_err(ArchError::kvm("KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(ArchError::kvm("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(ArchError::kvm("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit)
            .map_err(ArchError::kvm("KVM_CREATE_PIT2"))?;
        Ok(Self { _private: () })
    }

    /// MSIs go to the LAPICs through KVM's MSI routes.
    pub fn msi_delivery(&self) -> crate::MsiDelivery {
        crate::MsiDelivery::Kvm
    }

    /// Nothing left to do once the vCPUs exist on x86_64.
    pub fn finalize(&mut self, _vm: &VmFd, _vcpus: u8) -> Result<(), ArchError> {
        Ok(())
    }

    /// Captures the irqchip, PIT and clock of the paused VM.
    pub fn save_state(&self, vm: &VmFd) -> Result<VmState, StateError> {
        VmKvmState::save(vm)
    }

    /// Loads a saved irqchip, PIT and clock.
    pub fn restore_state(&self, vm: &VmFd, state: &VmState) -> Result<(), StateError> {
        state.restore(vm)
    }
}

/// Builds each vCPU's CPUID and initial registers.
pub struct CpuConfig {
    supported: CpuId,
    policy: CpuidPolicy,
    topology: CpuTopology,
}

impl CpuConfig {
    /// Reads KVM's supported CPUID once for all vCPUs of the VM.
    pub fn new(kvm: &Kvm, _vm: &VmFd, opts: &CpuOptions) -> Result<Self, ArchError> {
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ArchError::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        log_nested(&supported, opts.nested);
        Ok(Self {
            supported,
            policy: CpuidPolicy {
                hide_pvm_unsupported: cpuid::is_pvm_host(),
                keep: opts.keep_features.clone(),
                nested: opts.nested,
                max_phys_bits: opts.max_phys_bits,
            },
            topology: opts
                .topology
                .unwrap_or_else(|| CpuTopology::flat(opts.max_vcpus)),
        })
    }

    /// Gives vCPU `id` its CPUID (topology of all possible vCPUs, so
    /// hot-added ones match), MSRs, FPU and LAPIC; the boot vCPU
    /// (`boot = Some`) also gets the registers of the kernel entry. A
    /// hot-added vCPU waits for INIT/SIPI in its LAPIC.
    pub fn configure(
        &self,
        vcpu: &VcpuFd,
        id: u8,
        boot: Option<(&GuestMemoryMmap, &BootEntry)>,
    ) -> Result<(), ArchError> {
        let cpuid = cpuid::vcpu_cpuid(&self.supported, id, &self.topology, &self.policy)
            .map_err(|e| ArchError::Setup(e.to_string()))?;
        super::regs::configure_vcpu(vcpu, &cpuid, boot)
            .map_err(|e| ArchError::Setup(e.to_string()))?;
        if id == 0 && boot.is_some() {
            self.warn_reexposed_features(vcpu);
        }
        Ok(())
    }

    /// Loads a saved state into a freshly created vCPU.
    pub fn restore(&self, vcpu: &VcpuFd, _id: u8, state: &VcpuState) -> Result<(), ArchError> {
        state
            .restore(vcpu)
            .map_err(|e| ArchError::Setup(e.to_string()))
    }

    /// Warns when the host put back CPU features chv hid (PVM merges the
    /// host's leaf-1 bits into the guest CPUID): the guest kernel must then
    /// avoid those instructions itself, as the guest kit's kernel does.
    fn warn_reexposed_features(&self, vcpu: &VcpuFd) {
        if !self.policy.hide_pvm_unsupported {
            return;
        }
        match vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES) {
            Ok(effective) => {
                let back = cpuid::reexposed_features(&effective, &self.policy);
                if !back.is_empty() {
                    log::warn!(
                        "this host's KVM re-exposes CPU features chv hid from the guest: {}; \
                         the guest kernel must avoid them itself",
                        back.join(", ")
                    );
                }
            }
            Err(e) => log::debug!("cannot read back the vCPU CPUID: {e}"),
        }
    }
}

/// Says what `cpus.nested` means on this host: whether KVM offers VMX or
/// SVM to guests at all.
fn log_nested(supported: &CpuId, nested: bool) {
    let offered = supported.as_slice().iter().any(|e| {
        (e.function == 1 && e.ecx & cpuid::LEAF1_ECX_VMX != 0)
            || (e.function == 0x8000_0001 && e.ecx & cpuid::EXT1_ECX_SVM != 0)
    });
    match (nested, offered) {
        (true, true) => log::info!("cpus.nested=true: the guest sees VMX/SVM and may run KVM"),
        (true, false) => log::info!(
            "cpus.nested=true: this host's KVM offers no nested virtualization (no VMX/SVM in \
             KVM_GET_SUPPORTED_CPUID{}), so the guest gets none",
            if cpuid::is_pvm_host() { ", PVM" } else { "" }
        ),
        (false, _) => log::info!("cpus.nested=false: VMX/SVM hidden from the guest"),
    }
}

/// Checks the `--cpus features=` names.
pub fn validate_cpu_features(names: &[String]) -> Result<(), String> {
    cpuid::validate_feature_names(names).map_err(|e| e.to_string())
}

/// The guest instruction pointer (RIP) of a vCPU outside `KVM_RUN`.
pub fn instruction_pointer(vcpu: &VcpuFd) -> Result<u64, kvm_ioctls::Error> {
    vcpu.get_regs().map(|r| r.rip)
}

/// What to add to a KVM internal-error report on this host.
pub fn internal_error_hint() -> Option<String> {
    cpuid::is_pvm_host().then(|| {
        format!(
            "This host's KVM is PVM (kvm_pvm): guest kernel code runs through KVM's \
             instruction emulator, which cannot execute {}; use a guest kernel that avoids \
             them (see scripts/guest-kit)",
            cpuid::PVM_UNSUPPORTED_INSTRUCTIONS.join(", ")
        )
    })
}

/// Loads the kernel (ELF vmlinux or bzImage) and initramfs, writes the
/// ACPI tables, the MP table, the SMBIOS tables and the boot parameters of the kernel's entry
/// protocol; returns where the kernel starts.
pub fn load_payload(
    memory: &GuestMemoryMmap,
    _machine: &Machine,
    payload: Payload<'_>,
) -> Result<BootEntry, PayloadError> {
    let kernel = super::boot::load_kernel(memory, payload.kernel)
        .map_err(|e| PayloadError::Kernel(e.to_string()))?;
    let initramfs = match payload.initramfs {
        Some(f) => Some(
            super::boot::load_initramfs(memory, f)
                .map_err(|e| PayloadError::Initramfs(e.to_string()))?,
        ),
        None => None,
    };
    let rsdp = super::acpi::create_acpi_tables(
        memory,
        payload.boot_vcpus,
        payload.max_vcpus,
        payload.hotplug_slots,
        if payload.memory_hotplug {
            MAX_MEMORY_SLOTS
        } else {
            0
        },
        payload.pci_segments,
    )
    .map_err(|e| PayloadError::Firmware(format!("ACPI tables: {e}")))?;
    super::mptable::setup_mptable(
        memory,
        payload.boot_vcpus,
        super::acpi::ioapic_id(payload.max_vcpus),
    )
    .map_err(|e| PayloadError::Firmware(e.to_string()))?;
    super::smbios::setup_smbios(memory, payload.identity)
        .map_err(|e| PayloadError::Firmware(e.to_string()))?;
    super::boot::configure_system(
        memory,
        &kernel,
        payload.cmdline,
        initramfs.as_ref(),
        Some(rsdp),
        payload.ram_size,
    )
    .map_err(|e| PayloadError::Boot(e.to_string()))?;
    Ok(kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_cover_every_ioapic_and_pic_pin() {
        let routes = irqchip_routes();
        assert_eq!(routes.len(), 24 + 16);
        assert!(routes.iter().all(|r| r.gsi < PLATFORM.first_msi_gsi));
        assert!(routes
            .iter()
            .any(|r| r.chip == KVM_IRQCHIP_PIC_SLAVE && r.gsi == 15 && r.pin == 7));
    }

    #[test]
    fn the_serial_port_is_com1() {
        let com1 = PLATFORM.device(PlatformDeviceKind::Uart16550).unwrap();
        assert_eq!(
            (com1.bus, com1.base, com1.irq),
            (DeviceBus::Pio, 0x3f8, Some(4))
        );
        assert!(PLATFORM.device(PlatformDeviceKind::Pl011).is_none());
    }
}
