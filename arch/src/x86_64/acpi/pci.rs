//! PCI in ACPI: the MCFG (ECAM windows) and the host bridge devices of
//! the DSDT.

use acpi_tables::mcfg::MCFG;
use acpi_tables::{aml, Aml};

use super::{layout, to_bytes, RawAml, OEM_ID, OEM_REVISION};
use crate::PciSegmentLayout;

/// MCFG: one ECAM allocation per segment, bus 0 only.
pub(super) fn create_mcfg(pci_segments: &[PciSegmentLayout]) -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, *b"CHVMCFG ", OEM_REVISION);
    for seg in pci_segments {
        mcfg.add_ecam(seg.ecam.0, seg.segment, 0, 0);
    }
    to_bytes(&mcfg)
}

/// ACPI name of segment `segment`'s host bridge: `PCI0` for segment 0 (the
/// hotplug AML's scope), `PC01`… for the others.
pub fn host_bridge_name(segment: u16) -> String {
    if segment == 0 {
        "PCI0".into()
    } else {
        format!("PC{segment:02X}")
    }
}

/// One PCIe host bridge (bus 0 of `seg`) with its resource windows; the
/// 0xCF8 ports and the I/O window belong to segment 0 only.
pub(super) fn host_bridge_aml(seg: &PciSegmentLayout) -> Vec<u8> {
    let bus = aml::AddressSpace::<u16>::new_bus_number(0, 0);
    let cfg_io = aml::IO::new(
        layout::PCI_CONFIG_IO_PORT,
        layout::PCI_CONFIG_IO_PORT,
        1,
        layout::PCI_CONFIG_IO_PORT_SIZE as u8,
    );
    let io_window = aml::AddressSpace::<u16>::new_io(layout::PCI_IO_WINDOW_START, 0xffff, None);
    // The 32-bit window lies below 4 GiB (layout asserts).
    let mmio32 = aml::AddressSpace::<u32>::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        seg.mmio32.0 as u32,
        (seg.mmio32.1 - 1) as u32,
        None,
    );
    let mmio64 = aml::AddressSpace::<u64>::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        seg.mmio64.0,
        seg.mmio64.1 - 1,
        None,
    );
    let resources: Vec<&dyn Aml> = if seg.segment == 0 {
        vec![&bus, &cfg_io, &io_window, &mmio32, &mmio64]
    } else {
        vec![&bus, &mmio32, &mmio64]
    };
    let crs = aml::ResourceTemplate::new(resources);
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08"));
    let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03"));
    let seg_no = u32::from(seg.segment);
    let seg_name = aml::Name::new("_SEG".into(), &seg_no);
    let bbn = aml::Name::new("_BBN".into(), &aml::ZERO);
    let uid = aml::Name::new("_UID".into(), &seg_no);
    let crs = aml::Name::new("_CRS".into(), &crs);
    let name = host_bridge_name(seg.segment);
    let dev = aml::Device::new(
        name.as_str().into(),
        vec![&hid, &cid, &seg_name, &bbn, &uid, &crs],
    );
    to_bytes(&dev)
}

/// The host bridges of `pci_segments` and `MBRD`, a motherboard resource
/// reserving their ECAM windows (Linux only trusts an MCFG region that is
/// reserved, in e820 or here). No `_PRT`: PCI devices here use MSI-X only.
pub(super) fn pci_devices_aml(pci_segments: &[PciSegmentLayout]) -> RawAml {
    let mut bytes = Vec::new();
    for seg in pci_segments {
        bytes.extend(host_bridge_aml(seg));
    }
    // ECAM windows are contiguous (`PciLayout::segments`) and below 4 GiB.
    let ecam_start = pci_segments.first().map_or(0, |s| s.ecam.0);
    let ecam_end = pci_segments.last().map_or(0, |s| s.ecam.0 + s.ecam.1);
    let ecam = aml::Memory32Fixed::new(true, ecam_start as u32, (ecam_end - ecam_start) as u32);
    let mbrd_crs = aml::ResourceTemplate::new(vec![&ecam]);
    let mbrd_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02"));
    let mbrd_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let mbrd_crs = aml::Name::new("_CRS".into(), &mbrd_crs);
    let mbrd = aml::Device::new("MBRD".into(), vec![&mbrd_hid, &mbrd_uid, &mbrd_crs]);
    mbrd.to_aml_bytes(&mut bytes);
    RawAml(bytes)
}
