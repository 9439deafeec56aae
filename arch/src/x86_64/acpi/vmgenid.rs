//! The ACPI VM Generation ID device (Microsoft's "Virtual Machine
//! Generation ID" specification, which Linux's `vmgenid` driver reads).
//!
//! ```text
//! Device (VGEN) {
//!     Name (_HID, "VMGENCTR")
//!     Name (_CID, "VM_Gen_Counter")
//!     Name (_DDN, "VM_Gen_Counter")
//!     Name (ADDR, Package { low 32 bits, high 32 bits })  // of the 16-byte ID
//! }
//! ```
//!
//! The 16-byte generation ID lives in reserved guest memory at
//! [`layout::VMGENID_START`]. The VMM writes a fresh random ID there at
//! boot and on every restore of a snapshot, then raises the GED event
//! [`GED_EVENT_VM_GENERATION`], whose `_EVT` branch runs
//! `Notify (\_SB_.VGEN, 0x80)`. Linux then mixes the new ID into its RNG and
//! reseeds it ("crng reseeded due to virtual machine fork"), so clones of
//! one snapshot stop sharing their random state.

use acpi_tables::{aml, Aml};

use super::layout;
use super::RawAml;

/// GED event bit: the VM generation ID changed (a snapshot was restored).
pub const GED_EVENT_VM_GENERATION: u32 = 1 << 4;
/// ACPI path of the device, for the GED's `Notify`.
pub const VMGENID_DEVICE_PATH: &str = "\\_SB_.VGEN";
/// `Notify` value the specification defines for a changed generation ID.
const NOTIFY_GENERATION_CHANGED: u8 = 0x80;
/// Bytes of the generation ID.
pub const VMGENID_SIZE: u64 = 16;

/// `Device (VGEN)`, to be placed in `\_SB_`, pointing at the ID at `addr`.
pub(super) fn vmgenid_aml(addr: u64) -> RawAml {
    let hid = aml::Name::new("_HID".into(), &"VMGENCTR");
    let cid = aml::Name::new("_CID".into(), &"VM_Gen_Counter");
    let ddn = aml::Name::new("_DDN".into(), &"VM_Gen_Counter");
    // The specification asks for two 32-bit integers, low half first.
    let (low, high) = ((addr & 0xffff_ffff) as u32, (addr >> 32) as u32);
    let addr = aml::Name::new("ADDR".into(), &aml::Package::new(vec![&low, &high]));
    let mut bytes = Vec::new();
    aml::Device::new("VGEN".into(), vec![&hid, &cid, &ddn, &addr]).to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

/// The `_EVT` branch of the GED: `If (Local0 & GED_EVENT_VM_GENERATION)
/// { Notify (\_SB_.VGEN, 0x80) }`.
pub(super) fn ged_branch() -> RawAml {
    let bit = aml::And::new(&aml::ZERO, &aml::Local(0), &GED_EVENT_VM_GENERATION);
    let dev = aml::Path::new(VMGENID_DEVICE_PATH);
    let notify = aml::Notify::new(&dev, &NOTIFY_GENERATION_CHANGED);
    let mut bytes = Vec::new();
    aml::If::new(&bit, vec![&notify]).to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

// The ID sits in the reserved BIOS area, after the ACPI tables' range.
const _: () = assert!(layout::VMGENID_START >= layout::ACPI_END);
const _: () = assert!(layout::VMGENID_START + VMGENID_SIZE <= layout::SMBIOS_START);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_the_id_address_low_half_first() {
        let aml = vmgenid_aml(0x1_2345_6780).0;
        let at = |needle: &[u8]| aml.windows(needle.len()).position(|w| w == needle);
        assert!(at(b"VGEN").is_some());
        assert!(at(b"VMGENCTR\0").is_some());
        assert!(at(b"VM_Gen_Counter\0").is_some());
        let addr = at(b"ADDR").expect("ADDR");
        // PackageOp, length, 2 elements, DWordPrefix low, OnePrefix high.
        assert_eq!(&aml[addr + 4..addr + 8], &[0x12, 0x08, 0x02, 0x0c]);
        assert_eq!(&aml[addr + 8..addr + 12], &0x2345_6780u32.to_le_bytes());
        assert_eq!(aml[addr + 12], 0x01, "OneOp: high half 1");
    }

    #[test]
    fn ged_branch_notifies_the_device() {
        let aml = ged_branch().0;
        let path = b"\\._SB_VGEN";
        assert!(aml.windows(path.len()).any(|w| w == path));
        // NotifyOp ... BytePrefix 0x80.
        assert!(aml.windows(2).any(|w| w == [0x0a, 0x80]));
        assert_eq!(aml[0], 0xa0, "IfOp");
    }
}
