//! The architecture-neutral vocabulary of the arch interface: the static
//! description of a platform, the payload to load, and the errors.

use std::fs::File;

/// Which bus a platform device sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceBus {
    /// x86 port I/O.
    Pio,
    /// Memory-mapped I/O.
    Mmio,
}

/// The kinds of fixed platform devices a VMM builds from [`Platform::devices`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformDeviceKind {
    /// 16550A UART (x86 COM1); the serial console.
    Uart16550,
    /// PL011 UART (arm `ttyAMA0`); the serial console.
    Pl011,
    /// i8042 keyboard controller (its reset line only).
    I8042,
    /// CMOS RAM and MC146818 RTC.
    Cmos,
    /// PL031 real-time clock.
    Pl031,
    /// ACPI fixed-hardware PM registers (sleep and reset).
    AcpiPm,
    /// ACPI PM timer.
    AcpiPmTimer,
}

/// One fixed platform device: what it is, where and which interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlatformDevice {
    /// What to build.
    pub kind: PlatformDeviceKind,
    /// Where it is decoded.
    pub bus: DeviceBus,
    /// First port or guest-physical address.
    pub base: u64,
    /// Bytes (or ports) it decodes.
    pub len: u64,
    /// The GSI it interrupts on, if any.
    pub irq: Option<u32>,
}

/// The PCI host bridge's windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciLayout {
    /// ECAM (memory-mapped configuration space) base and size.
    pub ecam: (u64, u64),
    /// Port of the 0xCF8/0xCFC configuration mechanism, where one exists.
    pub config_io_port: Option<u16>,
    /// 32-bit memory window for BARs: start, end (exclusive).
    pub mmio32: (u64, u64),
    /// 64-bit memory window for BARs: start, end (exclusive).
    pub mmio64: (u64, u64),
}

/// Port I/O blocks of the ACPI hotplug devices and the GED events the AML
/// dispatches; only on platforms whose guests read ACPI tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiHotplugLayout {
    /// Generic Event Device: port, size, GSI.
    pub ged_port: u16,
    /// Bytes of the GED register block.
    pub ged_port_size: u16,
    /// Interrupt of the GED.
    pub ged_irq: u32,
    /// PCI hotplug controller port and size.
    pub pci_hotplug_port: u16,
    /// Bytes of the PCI hotplug registers.
    pub pci_hotplug_port_size: u16,
    /// CPU hotplug controller port and size.
    pub cpu_hotplug_port: u16,
    /// Bytes of the CPU hotplug registers.
    pub cpu_hotplug_port_size: u16,
    /// GED event bit of a PCI hotplug.
    pub event_pci_hotplug: u32,
    /// GED event bit of the power button.
    pub event_power_button: u32,
    /// GED event bit of a CPU hotplug.
    pub event_cpu_hotplug: u32,
    /// Highest PCI slot the tables can describe as hotpluggable.
    pub last_hotplug_slot: u8,
}

/// An entry of the VM's default interrupt routing: GSI `gsi` to pin `pin`
/// of in-kernel irqchip `chip` (KVM_IRQ_ROUTING_IRQCHIP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqchipRoute {
    /// The GSI.
    pub gsi: u32,
    /// KVM irqchip number.
    pub chip: u32,
    /// Pin on that chip.
    pub pin: u32,
}

/// The static description of a platform the VMM builds on.
#[derive(Clone, Copy, Debug)]
pub struct Platform {
    /// Architecture name, for messages.
    pub name: &'static str,
    /// PCI host bridge windows.
    pub pci: PciLayout,
    /// Fixed platform devices.
    pub devices: &'static [PlatformDevice],
    /// ACPI hotplug registers (`None`: no ACPI hotplug of PCI devices and
    /// vCPUs, no ACPI power button).
    pub acpi_hotplug: Option<AcpiHotplugLayout>,
    /// First GSI free for MSI routes (those below are irqchip pins).
    pub first_msi_gsi: u32,
}

impl Platform {
    /// The first device of `kind`, if the platform has one.
    pub fn device(&self, kind: PlatformDeviceKind) -> Option<&'static PlatformDevice> {
        self.devices.iter().find(|d| d.kind == kind)
    }

    /// Error message for a feature this platform lacks.
    pub fn unsupported(&self, what: &str) -> String {
        format!("{what} is not supported on {}", self.name)
    }
}

/// What to load into a fresh guest.
pub struct Payload<'a> {
    /// The kernel image.
    pub kernel: &'a mut File,
    /// The initramfs, if any.
    pub initramfs: Option<&'a mut File>,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Guest RAM in bytes.
    pub ram_size: u64,
    /// vCPUs at boot.
    pub boot_vcpus: u8,
    /// vCPUs the guest may ever have.
    pub max_vcpus: u8,
    /// PCI slots `1..=hotplug_slots` the firmware tables describe as
    /// hotpluggable.
    pub hotplug_slots: u8,
}

/// Why the payload could not be loaded; the VMM adds the file names.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The kernel image.
    #[error("{0}")]
    Kernel(String),
    /// The initramfs.
    #[error("{0}")]
    Initramfs(String),
    /// The firmware tables (ACPI, MP table, device tree).
    #[error("{0}")]
    Firmware(String),
    /// The boot parameters (command line, zero page, start info).
    #[error("{0}")]
    Boot(String),
}

/// Failures of the VM- and vCPU-level setup.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// Errno from KVM.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Anything else, described.
    #[error("{0}")]
    Setup(String),
}

impl ArchError {
    /// Maps a kvm-ioctls error to [`ArchError::Kvm`] for ioctl `what`.
    pub fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> ArchError {
        move |source| ArchError::Kvm { what, source }
    }
}

/// The vCPU options the arch layer needs.
#[derive(Clone, Debug, Default)]
pub struct CpuOptions {
    /// vCPUs at boot.
    pub boot_vcpus: u8,
    /// vCPUs the guest may ever have.
    pub max_vcpus: u8,
    /// CPU features to expose even though chv would hide them.
    pub keep_features: Vec<String>,
}
