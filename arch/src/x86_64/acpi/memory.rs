//! AML for ACPI memory hotplug: the container `\_SB_.MHPC` with one
//! `PNP0C80` memory device per hotplug slot, backed by the VMM's memory
//! hotplug registers at [`layout::MEMORY_HOTPLUG_PORT`] (see
//! `devices::acpi::memory_hotplug` for the register block).
//!
//! ```text
//! Device (MHPC) {                          // PNP0A06 generic container
//!     OperationRegion (MHPR, SystemIO, MEMORY_HOTPLUG_PORT, 24)
//!     Field (MHPR, DWordAcc) { MSEL, 32, MBLO, 32, MBHI, 32, MLLO, 32, MLHI, 32 }
//!     Field (MHPR, ByteAcc)  { Offset (20), MEN_, 1, MINS, 1 }
//!     Mutex (MLCK, 0)
//!     Method (MSTA, 1) { Acquire; MSEL = Arg0; Local0 = MEN_ ? 0xF : 0; Release; Return (Local0) }
//!     Method (MCRS, 1, Serialized) {      // the slot's range as a QWordMemory
//!         Acquire; MSEL = Arg0
//!         Name (MR64, ResourceTemplate () { QWordMemory (...) })
//!         CreateQWordField (MR64, 14, MINL)  ... (22, MAXL), (38, LENL)
//!         MINL = MBHI << 32 | MBLO;  LENL = MLHI << 32 | MLLO;  MAXL = MINL + LENL - 1
//!         Release; Return (MR64)
//!     }
//!     Method (MTFY, 2) { If (Arg0 == 0) { Notify (M000, Arg1) } ... }
//!     Method (MSCN) {                      // called by the GED's _EVT
//!         Acquire
//!         For (Local0 = 0; Local0 < slots; Local0++) {
//!             MSEL = Local0; If (MINS) { MTFY (Local0, 1); MINS = 1 }   // device check, ack
//!         }
//!         Release
//!     }
//!     Device (M000) { _HID PNP0C80, _UID 0, _STA: MSTA (0), _CRS: MCRS (0) }
//!     ...
//! }
//! ```
//!
//! Empty slots answer `_STA` 0, so the guest ignores them at boot.

use acpi_tables::{aml, Aml};

use super::layout;
use super::RawAml;

/// GED event bit for memory hotplug (matches the VMM's controller).
pub const GED_EVENT_MEMORY_HOTPLUG: u32 = 1 << 3;
/// Absolute path of the scan method the GED's `_EVT` calls.
pub const MEMORY_SCAN_METHOD: &str = "\\_SB_.MHPC.MSCN";
/// Most memory hotplug slots the tables describe (as Cloud Hypervisor).
pub const MAX_MEMORY_SLOTS: u8 = 8;
/// `_STA` of a slot holding RAM: present, enabled, shown, functioning.
const STA_ENABLED: u8 = 0x0f;
/// `Notify` value: device check (ACPI 6.5, table 5.166).
const NOTIFY_DEVICE_CHECK: u8 = 1;
/// Byte offsets of the minimum, maximum and length of a QWord address
/// space descriptor (ACPI 6.5, 6.4.3.5.1).
const QWORD_MIN: u8 = 14;
const QWORD_MAX: u8 = 22;
const QWORD_LEN: u8 = 38;

/// Name of the memory device of `slot` (`M000` … `M007`).
pub fn memory_device_name(slot: u8) -> String {
    format!("M{slot:03X}")
}

/// A named field of `bits` bits.
fn field(name: &str, bits: usize) -> aml::FieldEntry {
    let mut n = [0u8; 4];
    n.copy_from_slice(name.as_bytes());
    aml::FieldEntry::Named(n, bits)
}

/// The register block: region, the dword registers, the status bits, the
/// lock.
fn registers() -> Vec<u8> {
    let mut bytes = Vec::new();
    let port = layout::MEMORY_HOTPLUG_PORT;
    let len = layout::MEMORY_HOTPLUG_PORT_SIZE;
    aml::OpRegion::new("MHPR".into(), aml::OpRegionSpace::SystemIO, &port, &len)
        .to_aml_bytes(&mut bytes);
    aml::Field::new(
        "MHPR".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        ["MSEL", "MBLO", "MBHI", "MLLO", "MLHI"]
            .iter()
            .map(|n| field(n, 32))
            .collect(),
    )
    .to_aml_bytes(&mut bytes);
    // Byte access, write-as-zeros: acknowledging writes only that bit.
    aml::Field::new(
        "MHPR".into(),
        aml::FieldAccessType::Byte,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![
            aml::FieldEntry::Reserved(160),
            field("MEN_", 1),
            field("MINS", 1),
        ],
    )
    .to_aml_bytes(&mut bytes);
    aml::Mutex::new("MLCK".into(), 0).to_aml_bytes(&mut bytes);
    bytes
}

/// `MSTA`, `MCRS`, `MTFY` and `MSCN`.
fn methods(slots: u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    let lock = || aml::Acquire::new("MLCK".into(), 0xffff);
    let unlock = || aml::Release::new("MLCK".into());
    let msel = aml::Path::new("MSEL");
    let select = aml::Store::new(&msel, &aml::Arg(0));

    // MSTA (slot): the _STA value.
    let (acquire, release) = (lock(), unlock());
    let absent = aml::Store::new(&aml::Local(0), &aml::ZERO);
    let men = aml::Path::new("MEN_");
    let is_on = aml::Equal::new(&men, &aml::ONE);
    let present = aml::Store::new(&aml::Local(0), &STA_ENABLED);
    let on = aml::If::new(&is_on, vec![&present]);
    let ret = aml::Return::new(&aml::Local(0));
    aml::Method::new(
        "MSTA".into(),
        1,
        false,
        vec![&acquire, &select, &absent, &on, &release, &ret],
    )
    .to_aml_bytes(&mut bytes);

    // MCRS (slot): the _CRS value, built from the slot's registers.
    let (acquire, release) = (lock(), unlock());
    let range = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::Cacheable,
        true,
        0u64,
        0xffff_ffff_ffff_fffe_u64,
        None,
    );
    let template = aml::ResourceTemplate::new(vec![&range]);
    let mr64 = aml::Name::new("MR64".into(), &template);
    let buffer = aml::Path::new("MR64");
    let (minl, maxl, lenl) = (
        aml::Path::new("MINL"),
        aml::Path::new("MAXL"),
        aml::Path::new("LENL"),
    );
    let min_field = aml::CreateQWordField::new(&minl, &buffer, &QWORD_MIN);
    let max_field = aml::CreateQWordField::new(&maxl, &buffer, &QWORD_MAX);
    let len_field = aml::CreateQWordField::new(&lenl, &buffer, &QWORD_LEN);
    let (mbhi, mblo) = (aml::Path::new("MBHI"), aml::Path::new("MBLO"));
    let (mlhi, mllo) = (aml::Path::new("MLHI"), aml::Path::new("MLLO"));
    let high = aml::Local(0);
    let base_hi = aml::ShiftLeft::new(&high, &mbhi, &32u8);
    let base = aml::Or::new(&minl, &high, &mblo);
    let len_hi = aml::ShiftLeft::new(&high, &mlhi, &32u8);
    let len = aml::Or::new(&lenl, &high, &mllo);
    let end = aml::Add::new(&high, &minl, &lenl);
    let max = aml::Subtract::new(&maxl, &high, &aml::ONE);
    let ret = aml::Return::new(&buffer);
    aml::Method::new(
        "MCRS".into(),
        1,
        true,
        vec![
            &acquire, &select, &mr64, &min_field, &max_field, &len_field, &base_hi, &base, &len_hi,
            &len, &end, &max, &release, &ret,
        ],
    )
    .to_aml_bytes(&mut bytes);

    // MTFY (slot, value): Notify the slot's device.
    let devices: Vec<(u8, String)> = (0..slots).map(|i| (i, memory_device_name(i))).collect();
    super::notify_method("MTFY", &devices, &mut bytes);

    // MSCN: notify every slot being inserted, and acknowledge.
    let (acquire, release) = (lock(), unlock());
    let slot = aml::Local(0);
    let start = aml::Store::new(&slot, &aml::ZERO);
    let more = aml::LessThan::new(&slot, &slots);
    let select = aml::Store::new(&msel, &slot);
    let mins = aml::Path::new("MINS");
    let inserting = aml::Equal::new(&mins, &aml::ONE);
    let check = aml::MethodCall::new("MTFY".into(), vec![&slot, &NOTIFY_DEVICE_CHECK]);
    let ack = aml::Store::new(&mins, &aml::ONE);
    let on_ins = aml::If::new(&inserting, vec![&check, &ack]);
    let next = aml::Add::new(&slot, &slot, &aml::ONE);
    let walk = aml::While::new(&more, vec![&select, &on_ins, &next]);
    aml::Method::new(
        "MSCN".into(),
        0,
        true,
        vec![&acquire, &start, &walk, &release],
    )
    .to_aml_bytes(&mut bytes);
    bytes
}

/// The memory device of `slot`.
fn memory_device(slot: u8, sink: &mut Vec<u8>) {
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C80"));
    let uid = aml::Name::new("_UID".into(), &slot);
    let sta_call = aml::MethodCall::new("MSTA".into(), vec![&slot]);
    let sta_ret = aml::Return::new(&sta_call);
    let sta = aml::Method::new("_STA".into(), 0, false, vec![&sta_ret]);
    let crs_call = aml::MethodCall::new("MCRS".into(), vec![&slot]);
    let crs_ret = aml::Return::new(&crs_call);
    let crs = aml::Method::new("_CRS".into(), 0, false, vec![&crs_ret]);
    aml::Device::new(
        memory_device_name(slot).as_str().into(),
        vec![&hid, &uid, &sta, &crs],
    )
    .to_aml_bytes(sink);
}

/// `Device (MHPC)` with `slots` memory devices (at most
/// [`MAX_MEMORY_SLOTS`]), to be placed in `\_SB_`; nothing for 0 slots.
pub(super) fn memory_hotplug_aml(slots: u8) -> RawAml {
    let slots = slots.min(MAX_MEMORY_SLOTS);
    if slots == 0 {
        return RawAml(Vec::new());
    }
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A06"));
    let uid = aml::Name::new("_UID".into(), &"Memory Hotplug Controller");
    let regs = RawAml(registers());
    let methods = RawAml(methods(slots));
    let mut devices = Vec::new();
    for slot in 0..slots {
        memory_device(slot, &mut devices);
    }
    let devices = RawAml(devices);
    let mut bytes = Vec::new();
    aml::Device::new("MHPC".into(), vec![&hid, &uid, &regs, &methods, &devices])
        .to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::aml_test_util::{bytes, count};

    #[test]
    fn no_slots_no_controller() {
        assert!(bytes(&memory_hotplug_aml(0)).is_empty());
    }

    #[test]
    fn every_slot_is_a_memory_device_with_sta_and_crs() {
        let aml = bytes(&memory_hotplug_aml(200));
        assert_eq!(aml, bytes(&memory_hotplug_aml(MAX_MEMORY_SLOTS)), "clamped");
        // PNP0C80 as an EISA id: 0x41d0 0x0c80.
        assert_eq!(count(&aml, &[0x0c, 0x41, 0xd0, 0x0c, 0x80]), 8);
        for slot in 0..MAX_MEMORY_SLOTS {
            let name = memory_device_name(slot);
            assert_eq!(count(&aml, name.as_bytes()), 2, "device and its Notify");
        }
        assert_eq!(count(&aml, b"_STA"), 8);
        assert_eq!(count(&aml, b"_CRS"), 8);
        // OperationRegion (MHPR, SystemIO, port, 24).
        let mut region = vec![0x5b, 0x80];
        region.extend_from_slice(b"MHPR\x01\x0b");
        region.extend_from_slice(&layout::MEMORY_HOTPLUG_PORT.to_le_bytes());
        region.extend_from_slice(&[0x0a, 24]);
        assert_eq!(count(&aml, &region), 1);
        // The dword fields, in register order.
        assert_eq!(
            count(&aml, b"MHPR\x43MSEL\x20MBLO\x20MBHI\x20MLLO\x20MLHI\x20"),
            1
        );
        // CreateQWordField (MR64, 14, MINL).
        assert_eq!(count(&aml, b"\x8fMR64\x0a\x0eMINL"), 1);
        // QWordMemory descriptor.
        assert_eq!(count(&aml, &[0x8a, 0x2b, 0x00, 0x00]), 1);
    }
}
