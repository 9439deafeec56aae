//! The DSDT: power-off, COM1, the RTC, the PCI host bridges, the Generic
//! Event Device and the hotplug devices.

use acpi_tables::aml;
use acpi_tables::sdt::Sdt;

use super::pci::pci_devices_aml;
use super::{cpu, hotplug, layout, memory, to_bytes, vmgenid, Cpus, RawAml};
use super::{ACPI_S5_SLEEP_TYPE, OEM_ID, OEM_REVISION};
use crate::PciSegmentLayout;

/// DSDT: `\_S5_` (so Linux offers power-off) and the two legacy devices a
/// hardware-reduced platform must describe for Linux to use them: COM1 (its
/// IRQ is only mapped when a PNP0501 device names it) and the CMOS RTC;
/// the PCI host bridge; the Generic Event Device with the power button and
/// the PCI hotplug slots (see [`super::hotplug`]); the processor devices when
/// vCPUs can be hot-plugged (see [`super::cpu`]); the memory devices when RAM
/// can be hot-added (see [`super::memory`]); the VM generation ID device (see
/// [`super::vmgenid`]).
/// Kept minimal because guest kernels on PVM hosts interpret AML slowly.
pub(super) fn create_dsdt(
    cpus: Cpus,
    hotplug_slots: u8,
    memory_slots: u8,
    pci_segments: &[PciSegmentLayout],
) -> Sdt {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"CHVDSDT ", OEM_REVISION);
    let s5_type = ACPI_S5_SLEEP_TYPE;
    // Package {SLP_TYPa, SLP_TYPb, reserved, reserved}.
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&s5_type, &s5_type, &0u8, &0u8]),
    );
    dsdt.append_slice(&to_bytes(&s5));

    let com1_io = aml::IO::new(layout::COM1_PORT, layout::COM1_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, layout::COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com1_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let com1_crs = aml::Name::new("_CRS".into(), &com1_crs);
    let com1 = aml::Device::new("COM1".into(), vec![&com1_hid, &com1_uid, &com1_crs]);
    let rtc_io = aml::IO::new(layout::CMOS_PORT, layout::CMOS_PORT, 1, 2);
    let rtc_crs = aml::ResourceTemplate::new(vec![&rtc_io]);
    let rtc_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0B00"));
    let rtc_crs = aml::Name::new("_CRS".into(), &rtc_crs);
    let rtc = aml::Device::new("RTC_".into(), vec![&rtc_hid, &rtc_crs]);
    let pci = pci_devices_aml(pci_segments);
    let ged = hotplug::ged_aml(cpus.hotplug(), memory_slots > 0);
    let pci_hotplug = hotplug::pci_hotplug_aml(hotplug_slots);
    let cpu_hotplug = if cpus.hotplug() {
        cpu::cpu_hotplug_aml(cpus.max)
    } else {
        RawAml(Vec::new())
    };
    let memory_hotplug = memory::memory_hotplug_aml(memory_slots);
    let vmgenid = vmgenid::vmgenid_aml(layout::VMGENID_START);
    let sb = aml::Scope::new(
        "\\_SB_".into(),
        vec![
            &com1,
            &rtc,
            &pci,
            &ged,
            &pci_hotplug,
            &cpu_hotplug,
            &memory_hotplug,
            &vmgenid,
        ],
    );
    dsdt.append_slice(&to_bytes(&sb));
    dsdt
}
