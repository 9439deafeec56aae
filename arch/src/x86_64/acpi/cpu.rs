//! AML for ACPI processor hotplug: the processor container `\_SB_.CPUS`
//! with one `ACPI0007` processor device per possible vCPU, backed by the
//! VMM's CPU hotplug registers at [`layout::CPU_HOTPLUG_PORT`].
//!
//! ```text
//! Device (CPUS) {                          // ACPI0010 processor container
//!     OperationRegion (CPST, SystemIO, CPU_HOTPLUG_PORT, 8)
//!     Field (CPST, DWordAcc) { CSEL, 32 }  // selected CPU
//!     Field (CPST, ByteAcc)  { Offset (4), CPEN, 1, CINS, 1, CRMV, 1, CEJ0, 1 }
//!     Mutex (CPLK, 0)
//!     Method (CSTA, 1) { Acquire; CSEL = Arg0; Local0 = CPEN ? 0xF : 0; Release; Return (Local0) }
//!     Method (CEJX, 1) { Acquire; CSEL = Arg0; CEJ0 = 1; Release }
//!     Method (CTFY, 2) { If (Arg0 == 0) { Notify (C000, Arg1) } ... }
//!     Method (CSCN) {                      // called by the GED's _EVT
//!         Acquire
//!         For (Local0 = 0; Local0 < max; Local0++) {
//!             CSEL = Local0
//!             If (CINS) { CTFY (Local0, 1); CINS = 1 }           // device check, ack
//!             Else { If (CRMV) { CTFY (Local0, 3); CRMV = 1 } }  // eject request, ack
//!         }
//!         Release
//!     }
//!     Device (C000) {
//!         Name (_HID, "ACPI0007")  Name (_UID, 0)
//!         Method (_STA) { Return (CSTA (0)) }
//!         Method (_MAT) { If (CSTA (0) == 0xF) { Return (LAPIC entry, enabled) }
//!                         Return (LAPIC entry, not enabled) }
//!         Method (_EJ0, 1) { CEJX (0) }
//!     }
//!     ...
//! }
//! ```
//!
//! `_UID` and the APIC id of vCPU `n` are both `n`, as in the MADT.

use acpi_tables::{aml, Aml};

use super::layout;
use super::RawAml;

/// GED event bit for CPU hotplug (matches the VMM's CPU hotplug device).
pub const GED_EVENT_CPU_HOTPLUG: u32 = 1 << 2;
/// Absolute path of the scan method the GED's `_EVT` calls.
pub const CPU_SCAN_METHOD: &str = "\\_SB_.CPUS.CSCN";
/// `_STA` of an enabled CPU: present, enabled, shown, functioning.
const STA_ENABLED: u8 = 0x0f;
/// `Notify` values (ACPI 6.5, table 5.166).
const NOTIFY_DEVICE_CHECK: u8 = 1;
const NOTIFY_EJECT_REQUEST: u8 = 3;
/// MADT Processor Local APIC structure: type 0, length 8.
const MADT_LOCAL_APIC: [u8; 2] = [0, 8];

/// Name of the processor device of vCPU `cpu` (`C000` … `C0FE`).
pub fn cpu_device_name(cpu: u8) -> String {
    format!("C{cpu:03X}")
}

/// The MADT local APIC entry `_MAT` returns for `cpu`.
pub fn lapic_entry(cpu: u8, enabled: bool) -> [u8; 8] {
    let mut e = [0u8; 8];
    e[..2].copy_from_slice(&MADT_LOCAL_APIC);
    e[2] = cpu; // ACPI processor UID
    e[3] = cpu; // APIC id
    e[4] = u8::from(enabled);
    e
}

/// A named one-bit field.
fn bit(name: &str) -> aml::FieldEntry {
    let mut n = [0u8; 4];
    n.copy_from_slice(name.as_bytes());
    aml::FieldEntry::Named(n, 1)
}

/// The register block: region, `CSEL` (dword) and the `CSTS` bits (byte).
fn registers() -> Vec<u8> {
    let mut bytes = Vec::new();
    let port = layout::CPU_HOTPLUG_PORT;
    let len = layout::CPU_HOTPLUG_PORT_SIZE;
    aml::OpRegion::new("CPST".into(), aml::OpRegionSpace::SystemIO, &port, &len)
        .to_aml_bytes(&mut bytes);
    aml::Field::new(
        "CPST".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![aml::FieldEntry::Named(*b"CSEL", 32)],
    )
    .to_aml_bytes(&mut bytes);
    // Byte access, write-as-zeros: setting one bit writes exactly that
    // command bit (no read-modify-write).
    aml::Field::new(
        "CPST".into(),
        aml::FieldAccessType::Byte,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![
            aml::FieldEntry::Reserved(32),
            bit("CPEN"),
            bit("CINS"),
            bit("CRMV"),
            bit("CEJ0"),
        ],
    )
    .to_aml_bytes(&mut bytes);
    aml::Mutex::new("CPLK".into(), 0).to_aml_bytes(&mut bytes);
    bytes
}

/// `CSTA`, `CEJX`, `CTFY` and `CSCN`.
fn methods(max_cpus: u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    let lock = || aml::Acquire::new("CPLK".into(), 0xffff);
    let unlock = || aml::Release::new("CPLK".into());
    let csel = aml::Path::new("CSEL");

    // CSTA (cpu): the _STA value.
    let (acquire, release) = (lock(), unlock());
    let select = aml::Store::new(&csel, &aml::Arg(0));
    let absent = aml::Store::new(&aml::Local(0), &aml::ZERO);
    let cpen = aml::Path::new("CPEN");
    let is_on = aml::Equal::new(&cpen, &aml::ONE);
    let present = aml::Store::new(&aml::Local(0), &STA_ENABLED);
    let on = aml::If::new(&is_on, vec![&present]);
    let ret = aml::Return::new(&aml::Local(0));
    aml::Method::new(
        "CSTA".into(),
        1,
        false,
        vec![&acquire, &select, &absent, &on, &release, &ret],
    )
    .to_aml_bytes(&mut bytes);

    // CEJX (cpu): eject.
    let (acquire, release) = (lock(), unlock());
    let cej0 = aml::Path::new("CEJ0");
    let eject = aml::Store::new(&cej0, &aml::ONE);
    aml::Method::new(
        "CEJX".into(),
        1,
        false,
        vec![&acquire, &select, &eject, &release],
    )
    .to_aml_bytes(&mut bytes);

    // CTFY (cpu, value): Notify the CPU's device.
    let devices: Vec<(u8, String)> = (0..max_cpus).map(|c| (c, cpu_device_name(c))).collect();
    super::notify_method("CTFY", &devices, &mut bytes);

    // CSCN: notify every CPU being inserted or removed, and acknowledge.
    let (acquire, release) = (lock(), unlock());
    let cpu = aml::Local(0);
    let start = aml::Store::new(&cpu, &aml::ZERO);
    let more = aml::LessThan::new(&cpu, &max_cpus);
    let select = aml::Store::new(&csel, &cpu);
    let (cins, crmv) = (aml::Path::new("CINS"), aml::Path::new("CRMV"));
    let inserting = aml::Equal::new(&cins, &aml::ONE);
    let check = aml::MethodCall::new("CTFY".into(), vec![&cpu, &NOTIFY_DEVICE_CHECK]);
    let ack_ins = aml::Store::new(&cins, &aml::ONE);
    let on_ins = aml::If::new(&inserting, vec![&check, &ack_ins]);
    let removing = aml::Equal::new(&crmv, &aml::ONE);
    let eject_req = aml::MethodCall::new("CTFY".into(), vec![&cpu, &NOTIFY_EJECT_REQUEST]);
    let ack_rmv = aml::Store::new(&crmv, &aml::ONE);
    let on_rmv = aml::If::new(&removing, vec![&eject_req, &ack_rmv]);
    let otherwise = aml::Else::new(vec![&on_rmv]);
    let next = aml::Add::new(&cpu, &cpu, &aml::ONE);
    let walk = aml::While::new(&more, vec![&select, &on_ins, &otherwise, &next]);
    aml::Method::new(
        "CSCN".into(),
        0,
        true,
        vec![&acquire, &start, &walk, &release],
    )
    .to_aml_bytes(&mut bytes);
    bytes
}

/// The processor device of vCPU `cpu`.
fn cpu_device(cpu: u8, sink: &mut Vec<u8>) {
    let hid = aml::Name::new("_HID".into(), &"ACPI0007");
    let uid = aml::Name::new("_UID".into(), &cpu);
    let csta = aml::MethodCall::new("CSTA".into(), vec![&cpu]);
    let ret_sta = aml::Return::new(&csta);
    let sta = aml::Method::new("_STA".into(), 0, false, vec![&ret_sta]);
    let enabled = aml::Equal::new(&csta, &STA_ENABLED);
    let on = aml::BufferData::new(lapic_entry(cpu, true).to_vec());
    let off = aml::BufferData::new(lapic_entry(cpu, false).to_vec());
    let ret_on = aml::Return::new(&on);
    let ret_off = aml::Return::new(&off);
    let if_on = aml::If::new(&enabled, vec![&ret_on]);
    let mat = aml::Method::new("_MAT".into(), 0, false, vec![&if_on, &ret_off]);
    let cejx = aml::MethodCall::new("CEJX".into(), vec![&cpu]);
    let ej0 = aml::Method::new("_EJ0".into(), 1, false, vec![&cejx]);
    aml::Device::new(
        cpu_device_name(cpu).as_str().into(),
        vec![&hid, &uid, &sta, &mat, &ej0],
    )
    .to_aml_bytes(sink);
}

/// `Device (CPUS)` with the registers, methods and `max_cpus` processor
/// devices, to be placed in `\_SB_`.
pub(super) fn cpu_hotplug_aml(max_cpus: u8) -> RawAml {
    let hid = aml::Name::new("_HID".into(), &"ACPI0010");
    let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A05"));
    let mut body = registers();
    body.extend(methods(max_cpus));
    for cpu in 0..max_cpus {
        cpu_device(cpu, &mut body);
    }
    let body = RawAml(body);
    let mut bytes = Vec::new();
    aml::Device::new("CPUS".into(), vec![&hid, &cid, &body]).to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::aml_test_util::{bytes, count};

    #[test]
    fn names_and_lapic_entries() {
        assert_eq!(cpu_device_name(0), "C000");
        assert_eq!(cpu_device_name(0xfe), "C0FE");
        assert_eq!(lapic_entry(3, true), [0, 8, 3, 3, 1, 0, 0, 0]);
        assert_eq!(lapic_entry(3, false), [0, 8, 3, 3, 0, 0, 0, 0]);
    }

    #[test]
    fn one_processor_device_per_possible_cpu() {
        let aml = bytes(&cpu_hotplug_aml(4));
        assert_eq!(count(&aml, b"_HID\x0dACPI0007\x00"), 4);
        assert_eq!(count(&aml, b"_HID\x0dACPI0010\x00"), 1);
        for cpu in 0..4u8 {
            let name = cpu_device_name(cpu);
            // Device name (once) and Notify (Cxxx, Arg1) in CTFY.
            assert_eq!(count(&aml, name.as_bytes()), 2, "{name}");
            let mut notify = vec![0x86];
            notify.extend_from_slice(name.as_bytes());
            notify.push(0x69);
            assert_eq!(count(&aml, &notify), 1, "{name}");
            // _MAT's two buffers: Buffer (8) { entry }.
            for enabled in [true, false] {
                let mut buf = vec![0x11, 0x0b, 0x0a, 0x08];
                buf.extend_from_slice(&lapic_entry(cpu, enabled));
                assert_eq!(count(&aml, &buf), 1, "{name} enabled={enabled}");
            }
        }
        assert_eq!(count(&aml, b"C004"), 0);
        assert_eq!(count(&aml, b"_EJ0"), 4);
        assert_eq!(count(&aml, b"_STA"), 4);
        assert_eq!(count(&aml, b"_MAT"), 4);
    }

    #[test]
    fn registers_match_the_device_model() {
        let aml = bytes(&cpu_hotplug_aml(2));
        // OperationRegion (CPST, SystemIO, port, 8).
        let mut region = vec![0x5b, 0x80];
        region.extend_from_slice(b"CPST\x01\x0b");
        region.extend_from_slice(&layout::CPU_HOTPLUG_PORT.to_le_bytes());
        region.extend_from_slice(&[0x0a, layout::CPU_HOTPLUG_PORT_SIZE as u8]);
        assert_eq!(count(&aml, &region), 1);
        // DWordAcc + WriteAsZeros: CSEL, 32 bits.
        assert_eq!(count(&aml, b"CPST\x43CSEL\x20"), 1);
        // ByteAcc + WriteAsZeros: skip 32 bits, then the four flag bits in
        // the order of the device's CSTS bits 0..3.
        assert_eq!(
            count(&aml, b"CPST\x41\x00\x20CPEN\x01CINS\x01CRMV\x01CEJ0\x01"),
            1
        );
        // CSCN is serialized and takes no argument; the GED calls it by the
        // absolute path in CPU_SCAN_METHOD.
        assert_eq!(count(&aml, b"CSCN\x08"), 1);
        assert_eq!(CPU_SCAN_METHOD, "\\_SB_.CPUS.CSCN");
        // CSCN loops up to max_cpus.
        assert_eq!(count(&aml, &[0x95, 0x60, 0x0a, 2]), 1);
    }

    #[test]
    fn size_stays_reasonable() {
        let small = bytes(&cpu_hotplug_aml(2)).len();
        let big = bytes(&cpu_hotplug_aml(254)).len();
        eprintln!("CPU hotplug AML: 2 CPUs {small} bytes, 254 CPUs {big} bytes");
        assert!(small < 700, "{small}");
        assert!(big < 40 * 1024, "{big}");
    }
}
