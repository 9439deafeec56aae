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
    /// Most PCI segments (host bridges) the platform can describe; segment
    /// `n`'s ECAM window follows segment `n - 1`'s.
    pub max_segments: u16,
}

/// One PCI segment (host bridge, bus 0 only): its ECAM window and its
/// shares of the platform's BAR windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciSegmentLayout {
    /// Segment number (`_SEG`, the MCFG entry's segment group).
    pub segment: u16,
    /// ECAM base and size.
    pub ecam: (u64, u64),
    /// 32-bit BAR window: start, end (exclusive).
    pub mmio32: (u64, u64),
    /// 64-bit BAR window: start, end (exclusive).
    pub mmio64: (u64, u64),
}

/// Granule of the 32-bit window split between segments.
const MMIO32_GRANULE: u64 = 2 << 20;
/// Granule of the 64-bit window split between segments.
const MMIO64_GRANULE: u64 = 2 << 20;

/// Splits `[start, end)` by `weights` (none zero) at `granule` boundaries;
/// the last part ends at `end`.
fn split_window(
    (start, end): (u64, u64),
    weights: impl Iterator<Item = u32> + Clone,
    granule: u64,
) -> Vec<(u64, u64)> {
    let total: u128 = weights.clone().map(u128::from).sum();
    let len = u128::from(end - start);
    let mut out = Vec::new();
    let mut cumulative = 0u128;
    let mut from = start;
    let count = weights.clone().count();
    for (i, w) in weights.enumerate() {
        cumulative += u128::from(w);
        let to = if i + 1 == count {
            end
        } else {
            // `cumulative <= total`, so the offset fits the window.
            let offset = (len * cumulative / total) as u64;
            start + offset / granule * granule
        };
        out.push((from, to));
        from = to;
    }
    out
}

impl PciLayout {
    /// The layout of each of `weights.len()` segments, where
    /// `weights[i] = (mmio32 weight, mmio64 weight)` of segment `i`: ECAM
    /// windows one after another, BAR windows split by weight. One segment
    /// with any weights gets the whole windows.
    pub fn segments(&self, weights: &[(u32, u32)]) -> Result<Vec<PciSegmentLayout>, String> {
        let count = weights.len();
        if count == 0 || count > usize::from(self.max_segments) {
            return Err(format!(
                "{count} PCI segments: this platform has 1 to {}",
                self.max_segments
            ));
        }
        if let Some(i) = weights.iter().position(|&(a, b)| a == 0 || b == 0) {
            return Err(format!(
                "PCI segment {i}: aperture weights must be at least 1"
            ));
        }
        let mmio32 = split_window(self.mmio32, weights.iter().map(|w| w.0), MMIO32_GRANULE);
        let mmio64 = split_window(self.mmio64, weights.iter().map(|w| w.1), MMIO64_GRANULE);
        if let Some(i) =
            (0..count).find(|&i| mmio32[i].0 >= mmio32[i].1 || mmio64[i].0 >= mmio64[i].1)
        {
            return Err(format!(
                "PCI segment {i}: its aperture weight leaves it no BAR window"
            ));
        }
        Ok((0..count)
            .map(|i| PciSegmentLayout {
                // `count <= max_segments`, a u16.
                segment: i as u16,
                ecam: (self.ecam.0 + i as u64 * self.ecam.1, self.ecam.1),
                mmio32: mmio32[i],
                mmio64: mmio64[i],
            })
            .collect())
    }
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
    /// Memory hotplug controller port and size.
    pub memory_hotplug_port: u16,
    /// Bytes of the memory hotplug registers.
    pub memory_hotplug_port_size: u16,
    /// GED event bit of a memory hotplug.
    pub event_memory_hotplug: u32,
    /// Memory hotplug slots the tables describe (one per hot-add).
    pub memory_hotplug_slots: u8,
    /// Guest-physical window hot-added RAM may use: start, end (exclusive);
    /// it starts after the boot RAM when that ends higher.
    pub memory_hotplug_window: (u64, u64),
    /// Alignment (and granule) of hot-added RAM ranges.
    pub memory_hotplug_align: u64,
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

/// How a VM's MSI messages (the address and data a PCI device's MSI-X
/// vector holds) reach its interrupt controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsiDelivery {
    /// KVM decodes the message itself (`KVM_IRQ_ROUTING_MSI`): the x86
    /// LAPIC, the GICv3 ITS.
    Kvm,
    /// An MSI frame in the VMM (GICv2m-style): a message writes the number
    /// of one of the frame's SPIs to its doorbell, so it becomes an irqchip
    /// route to that SPI's pin.
    Frame(MsiFrame),
}

/// An MSI frame that turns doorbell writes into SPIs (the Arm GICv2m
/// `arm,gic-v2m-frame` programming model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiFrame {
    /// Guest-physical base of the frame's registers.
    pub base: u64,
    /// Bytes the frame decodes.
    pub len: u64,
    /// The doorbell address MSI messages name (`MSI_SETSPI_NS`).
    pub doorbell: u64,
    /// Interrupt number (GIC INTID) of the frame's first SPI; messages carry
    /// INTIDs as data.
    pub first_intid: u32,
    /// SPIs the frame hands out.
    pub count: u32,
    /// KVM irqchip of the SPIs.
    pub chip: u32,
    /// Irqchip pin of the first SPI; it is also the GSI whose default route
    /// ([`IrqchipRoute`]) goes to that pin, and so on for the others.
    pub first_pin: u32,
}

impl MsiFrame {
    /// The irqchip pin an MSI message raises, if it is a write of one of the
    /// frame's SPIs to its doorbell.
    pub fn pin(&self, address: u64, data: u32) -> Option<u32> {
        let index = data.checked_sub(self.first_intid)?;
        (address == self.doorbell && index < self.count).then(|| self.first_pin + index)
    }
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
    /// MSI routes carry the PCI requester id as device id
    /// (`KVM_MSI_VALID_DEVID`): the GICv3 ITS translates by it.
    pub msi_device_id: bool,
    /// Whether the firmware tables carry SMBIOS ([`MachineIdentity`]).
    pub smbios: bool,
    /// The VM generation ID device (`None`: the platform has none, so
    /// restored clones cannot be told to reseed their RNG).
    pub generation_id: Option<GenerationIdLayout>,
}

impl AcpiHotplugLayout {
    /// Where the next hot-added range of `len` bytes goes, after the boot
    /// RAM that ends at `ram_end` and the ranges already added (`added`
    /// bytes); `None` when it does not fit the window.
    pub fn hotplug_range(&self, ram_end: u64, added: u64, len: u64) -> Option<(u64, u64)> {
        let align = self.memory_hotplug_align;
        let start = ram_end
            .max(self.memory_hotplug_window.0)
            .checked_next_multiple_of(align)?
            .checked_add(added)?;
        let end = start.checked_add(len)?;
        (end <= self.memory_hotplug_window.1).then_some((start, len))
    }
}

/// Where the firmware tables tell the guest its 16-byte VM generation ID
/// is, and the GED event that makes it re-read the ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenerationIdLayout {
    /// Guest-physical address of the ID (in reserved guest memory).
    pub addr: u64,
    /// The GED event bit ([`AcpiHotplugLayout`]'s GED) announcing a new ID.
    pub ged_event: u32,
}

/// Bytes of a VM generation ID.
pub const GENERATION_ID_SIZE: usize = 16;

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
    /// The PCI segments the firmware tables describe (from
    /// [`PciLayout::segments`]).
    pub pci_segments: &'a [PciSegmentLayout],
    /// Describe the memory hotplug slots ([`AcpiHotplugLayout`]); only
    /// on platforms with ACPI hotplug.
    pub memory_hotplug: bool,
    /// The machine identity for the SMBIOS tables.
    pub identity: &'a MachineIdentity,
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

/// How the guest's vCPUs are grouped into cores, dies and packages
/// (Cloud Hypervisor's `cpus.topology`). vCPU `n` gets the `n`th id in
/// thread, core, die, package order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTopology {
    /// Hardware threads per core.
    pub threads_per_core: u8,
    /// Cores per die.
    pub cores_per_die: u8,
    /// Dies per package.
    pub dies_per_package: u8,
    /// Packages (sockets).
    pub packages: u8,
}

impl CpuTopology {
    /// One package of `vcpus` single-threaded cores (the default shape).
    pub fn flat(vcpus: u8) -> Self {
        Self {
            threads_per_core: 1,
            cores_per_die: vcpus.max(1),
            dies_per_package: 1,
            packages: 1,
        }
    }

    /// How many vCPUs the topology describes.
    pub fn vcpus(&self) -> u32 {
        u32::from(self.threads_per_core)
            * u32::from(self.cores_per_die)
            * u32::from(self.dies_per_package)
            * u32::from(self.packages)
    }

    /// Why vCPU ids numbered contiguously cannot express this topology, if
    /// they cannot: a level's count must be a power of two whenever a
    /// higher level has more than one member, or ids would straddle it.
    pub fn contiguity_error(&self) -> Option<String> {
        let levels = [
            ("threads_per_core", self.threads_per_core),
            ("cores_per_die", self.cores_per_die),
            ("dies_per_package", self.dies_per_package),
            ("packages", self.packages),
        ];
        for (i, (name, count)) in levels.iter().enumerate().take(3) {
            let above: u32 = levels[i + 1..].iter().map(|l| u32::from(l.1)).product();
            if above > 1 && !count.is_power_of_two() {
                return Some(format!(
                    "{name}={count} must be a power of two when a higher level has more \
                     than one member (vCPU ids are contiguous)"
                ));
            }
        }
        None
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
    /// The guest topology (`None`: one package of single-threaded cores).
    pub topology: Option<CpuTopology>,
    /// Widest guest-physical address the guest is told of (`0`: the host's).
    pub max_phys_bits: u8,
    /// Offer the host's hardware virtualization extensions to the guest.
    pub nested: bool,
}

/// The machine identity the firmware tables give the guest (SMBIOS on
/// x86_64): Cloud Hypervisor's `platform` serial number, UUID, OEM strings
/// and system fields. `None` or empty: not specified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineIdentity {
    /// System manufacturer (default: the VMM's name).
    pub manufacturer: Option<String>,
    /// Product name (default: the VMM's name).
    pub product_name: Option<String>,
    /// System version.
    pub version: Option<String>,
    /// System serial number.
    pub serial_number: Option<String>,
    /// System UUID, in the order it is written (`00112233-4455-…`).
    pub uuid: Option<[u8; 16]>,
    /// SKU number.
    pub sku_number: Option<String>,
    /// Family.
    pub family: Option<String>,
    /// Chassis asset tag.
    pub chassis_asset_tag: Option<String>,
    /// OEM strings.
    pub oem_strings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_frame_maps_doorbell_writes_of_its_spis_to_pins() {
        let frame = MsiFrame {
            base: 0x1000,
            len: 0x1000,
            doorbell: 0x1040,
            first_intid: 64,
            count: 64,
            chip: 0,
            first_pin: 32,
        };
        assert_eq!(frame.pin(0x1040, 64), Some(32));
        assert_eq!(frame.pin(0x1040, 127), Some(95));
        // Outside the frame's SPIs, at another address, or a hostile value
        // near u32::MAX: no pin.
        assert_eq!(frame.pin(0x1040, 128), None);
        assert_eq!(frame.pin(0x1040, 63), None);
        assert_eq!(frame.pin(0x1044, 64), None);
        assert_eq!(frame.pin(0x1040, u32::MAX), None);
        assert_eq!(frame.pin(0, 0), None);
    }
}
