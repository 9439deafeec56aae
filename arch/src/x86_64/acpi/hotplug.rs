//! AML for the Generic Event Device (`\_SB_.GED_`), the power button
//! (`\_SB_.PWRB`) and ACPI PCI hotplug of bus 0 (`\_SB_.PCI0.Sxx_`).
//!
//! ```text
//! Device (PWRB) { _HID PNP0C0C }
//! Device (GED_) {                    // ACPI0013, Interrupt {GED_IRQ}, edge, high
//!     OperationRegion (GDST, SystemIO, GED_PORT, 4)   Field { GDAT, 32 }
//!     Method (_EVT, 1) {
//!         Local0 = GDAT                                // read-to-clear
//!         If (Local0 & 1) { \_SB_.PCI0.PCNT () }       // PCI hotplug
//!         If (Local0 & 2) { Notify (PWRB, 0x80) }      // power button
//!         If (Local0 & 8) { Notify (\_SB_.VGEN, 0x80) } // new VM generation ID
//!         If (Local0 & 4) { \_SB_.CPUS.CSCN () }       // CPU hotplug (if any)
//!         If (Local0 & 8) { \_SB_.MHPC.MSCN () }       // memory hotplug (if any)
//!     }
//! }
//! Scope (PCI0) {
//!     OperationRegion (PCST, SystemIO, PCI_HOTPLUG_PORT, 12)
//!     Field { PCIU, 32, PCID, 32, B0EJ, 32 }
//!     Method (PCEJ, 1) { B0EJ = 1 << Arg0 }
//!     Method (NTFY, 2) { If (Arg0 == 1) { Notify (S01_, Arg1) } ... }
//!     Method (PCNT) {   // device check for new slots, eject request for old
//!         Local0 = PCIU; Local1 = PCID; Local2 = 0
//!         While (Local0 | Local1) {
//!             If (Local0 & 1) { NTFY (Local2, 1) }
//!             If (Local1 & 1) { NTFY (Local2, 3) }
//!             Local0 >>= 1; Local1 >>= 1; Local2++
//!         }
//!     }
//!     Device (S01_) { _ADR 0x10000, _SUN 1, Method (_EJ0, 1) { PCEJ (_SUN) } }
//!     ...                                              // up to S1F_
//! }
//! ```
//!
//! Every slot device shares `PCEJ`/`NTFY`, so each costs about 30 bytes;
//! the guest parses all of it at boot, but runs the methods only on events.

use acpi_tables::{aml, Aml};

use super::cpu::{CPU_SCAN_METHOD, GED_EVENT_CPU_HOTPLUG};
use super::layout;
use super::memory::{GED_EVENT_MEMORY_HOTPLUG, MEMORY_SCAN_METHOD};
use super::RawAml;

/// GED event bit for PCI hotplug (matches the VMM's GED device).
pub const GED_EVENT_PCI_HOTPLUG: u32 = 1 << 0;
/// GED event bit for the power button (matches the VMM's GED device).
pub const GED_EVENT_POWER_BUTTON: u32 = 1 << 1;
/// First hotpluggable slot (slot 0 is the host bridge).
pub const FIRST_HOTPLUG_SLOT: u8 = 1;
/// Last hotpluggable slot on bus 0.
pub const LAST_HOTPLUG_SLOT: u8 = 31;
/// `Notify` values (ACPI 6.5, table 5.166).
const NOTIFY_DEVICE_CHECK: u8 = 1;
const NOTIFY_EJECT_REQUEST: u8 = 3;
/// Power button `Notify` value: "button pressed" (ACPI 6.5, 4.8.3.1.1).
const NOTIFY_BUTTON_PRESSED: u8 = 0x80;

/// Name of the slot device for `slot` (`S01_` … `S1F_`).
pub fn slot_name(slot: u8) -> String {
    format!("S{slot:02X}_")
}

/// An `OperationRegion` over `len` I/O ports at `port` with 32-bit fields
/// `names`, accessed as whole dwords.
fn io_fields(region: &str, port: u16, len: u16, names: &[&str]) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml::OpRegion::new(region.into(), aml::OpRegionSpace::SystemIO, &port, &len)
        .to_aml_bytes(&mut bytes);
    let fields = names
        .iter()
        .map(|n| {
            let mut name = [0u8; 4];
            name.copy_from_slice(n.as_bytes());
            aml::FieldEntry::Named(name, 32)
        })
        .collect();
    aml::Field::new(
        region.into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        fields,
    )
    .to_aml_bytes(&mut bytes);
    bytes
}

/// `PWRB` and `GED_`, to be placed in `\_SB_`. With `cpu_hotplug` the
/// `_EVT` also dispatches the CPU hotplug bit to `\_SB_.CPUS.CSCN` (which
/// must then exist, see [`super::cpu`]); with `memory_hotplug` the memory
/// bit to `\_SB_.MHPC.MSCN` (see [`super::memory`]).
pub(super) fn ged_aml(cpu_hotplug: bool, memory_hotplug: bool) -> RawAml {
    let mut bytes = Vec::new();
    let pwrb_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C"));
    let pwrb_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    aml::Device::new("PWRB".into(), vec![&pwrb_hid, &pwrb_uid]).to_aml_bytes(&mut bytes);

    let hid = aml::Name::new("_HID".into(), &"ACPI0013");
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    // Consumer, edge-triggered, active-high, exclusive.
    let irq = aml::Interrupt::new(true, true, false, false, layout::GED_IRQ);
    let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&irq]));
    let regs = RawAml(io_fields(
        "GDST",
        layout::GED_PORT,
        layout::GED_PORT_SIZE,
        &["GDAT"],
    ));
    let gdat = aml::Path::new("GDAT");
    let read = aml::Store::new(&aml::Local(0), &gdat);
    let pci_bit = aml::And::new(&aml::ZERO, &aml::Local(0), &GED_EVENT_PCI_HOTPLUG);
    let pcnt = aml::MethodCall::new("\\_SB_.PCI0.PCNT".into(), vec![]);
    let on_pci = aml::If::new(&pci_bit, vec![&pcnt]);
    let pwr_bit = aml::And::new(&aml::ZERO, &aml::Local(0), &GED_EVENT_POWER_BUTTON);
    let pwrb = aml::Path::new("PWRB");
    let notify = aml::Notify::new(&pwrb, &NOTIFY_BUTTON_PRESSED);
    let on_pwr = aml::If::new(&pwr_bit, vec![&notify]);
    let cpu_bit = aml::And::new(&aml::ZERO, &aml::Local(0), &GED_EVENT_CPU_HOTPLUG);
    let cscn = aml::MethodCall::new(CPU_SCAN_METHOD.into(), vec![]);
    let on_cpu = aml::If::new(&cpu_bit, vec![&cscn]);
    let mem_bit = aml::And::new(&aml::ZERO, &aml::Local(0), &GED_EVENT_MEMORY_HOTPLUG);
    let mscn = aml::MethodCall::new(MEMORY_SCAN_METHOD.into(), vec![]);
    let on_mem = aml::If::new(&mem_bit, vec![&mscn]);
    let on_generation = super::vmgenid::ged_branch();
    let mut body: Vec<&dyn Aml> = vec![&read, &on_pci, &on_pwr, &on_generation];
    if cpu_hotplug {
        body.push(&on_cpu);
    }
    if memory_hotplug {
        body.push(&on_mem);
    }
    let evt = aml::Method::new("_EVT".into(), 1, true, body);
    aml::Device::new("GED_".into(), vec![&hid, &uid, &crs, &regs, &evt]).to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

/// `Scope (PCI0)` with the hotplug registers, `PCEJ`, `NTFY`, `PCNT` and
/// one device per hotpluggable slot (1 to `last_slot`, at most 31), to be
/// placed in `\_SB_` after `PCI0`.
pub(super) fn pci_hotplug_aml(last_slot: u8) -> RawAml {
    let last_slot = last_slot.min(LAST_HOTPLUG_SLOT);
    let regs = RawAml(io_fields(
        "PCST",
        layout::PCI_HOTPLUG_PORT,
        layout::PCI_HOTPLUG_PORT_SIZE,
        &["PCIU", "PCID", "B0EJ"],
    ));

    // PCEJ (slot): B0EJ = 1 << slot.
    let bit = aml::ShiftLeft::new(&aml::ZERO, &aml::ONE, &aml::Arg(0));
    let b0ej = aml::Path::new("B0EJ");
    let eject = aml::Store::new(&b0ej, &bit);
    let pcej = aml::Method::new("PCEJ".into(), 1, false, vec![&eject]);

    // NTFY (slot, value): Notify the slot's device.
    let names: Vec<String> = (FIRST_HOTPLUG_SLOT..=last_slot).map(slot_name).collect();
    let paths: Vec<aml::Path> = names.iter().map(|n| aml::Path::new(n)).collect();
    let slots: Vec<u8> = (FIRST_HOTPLUG_SLOT..=last_slot).collect();
    let notifies: Vec<aml::Notify> = paths
        .iter()
        .map(|p| aml::Notify::new(p, &aml::Arg(1)))
        .collect();
    let tests: Vec<aml::Equal> = slots
        .iter()
        .map(|s| aml::Equal::new(&aml::Arg(0), s))
        .collect();
    let ifs: Vec<aml::If> = tests
        .iter()
        .zip(&notifies)
        .map(|(t, n)| aml::If::new(t, vec![n]))
        .collect();
    let ntfy = aml::Method::new(
        "NTFY".into(),
        2,
        false,
        ifs.iter().map(|i| i as &dyn Aml).collect(),
    );

    // PCNT: walk the PCIU/PCID bits from slot 0 up to the highest set one.
    let (up, down, slot) = (aml::Local(0), aml::Local(1), aml::Local(2));
    let (pciu, pcid) = (aml::Path::new("PCIU"), aml::Path::new("PCID"));
    let read_up = aml::Store::new(&up, &pciu);
    let read_down = aml::Store::new(&down, &pcid);
    let start = aml::Store::new(&slot, &aml::ZERO);
    let any = aml::Or::new(&aml::ZERO, &up, &down);
    let up_bit = aml::And::new(&aml::ZERO, &up, &aml::ONE);
    let check = aml::MethodCall::new("NTFY".into(), vec![&slot, &NOTIFY_DEVICE_CHECK]);
    let on_up = aml::If::new(&up_bit, vec![&check]);
    let down_bit = aml::And::new(&aml::ZERO, &down, &aml::ONE);
    let eject_req = aml::MethodCall::new("NTFY".into(), vec![&slot, &NOTIFY_EJECT_REQUEST]);
    let on_down = aml::If::new(&down_bit, vec![&eject_req]);
    let shift_up = aml::ShiftRight::new(&up, &up, &aml::ONE);
    let shift_down = aml::ShiftRight::new(&down, &down, &aml::ONE);
    let next = aml::Add::new(&slot, &slot, &aml::ONE);
    let walk = aml::While::new(&any, vec![&on_up, &on_down, &shift_up, &shift_down, &next]);
    let pcnt = aml::Method::new(
        "PCNT".into(),
        0,
        true,
        vec![&read_up, &read_down, &start, &walk],
    );

    // The slot devices.
    let mut slot_devices = Vec::new();
    let sun = aml::Path::new("_SUN");
    let ej0_body = aml::MethodCall::new("PCEJ".into(), vec![&sun]);
    let ej0 = aml::Method::new("_EJ0".into(), 1, false, vec![&ej0_body]);
    for (slot, path) in slots.iter().zip(names.iter()) {
        let adr = aml::Name::new("_ADR".into(), &(u32::from(*slot) << 16));
        let sun = aml::Name::new("_SUN".into(), slot);
        aml::Device::new(path.as_str().into(), vec![&adr, &sun, &ej0])
            .to_aml_bytes(&mut slot_devices);
    }
    let slot_devices = RawAml(slot_devices);

    let mut bytes = Vec::new();
    aml::Scope::new(
        "PCI0".into(),
        vec![&regs, &pcej, &ntfy, &pcnt, &slot_devices],
    )
    .to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::aml_test_util::{bytes, count};

    #[test]
    fn slot_names() {
        assert_eq!(slot_name(1), "S01_");
        assert_eq!(slot_name(0x1f), "S1F_");
    }

    #[test]
    fn ged_has_interrupt_register_and_evt() {
        let aml = bytes(&ged_aml(false, false));
        // _HID "ACPI0013" as a string.
        assert_eq!(count(&aml, b"_HID\x0dACPI0013\x00"), 1);
        // Extended interrupt descriptor: consumer + edge, one GSI.
        let mut irq = vec![0x89, 6, 0, 0b0011, 1];
        irq.extend_from_slice(&layout::GED_IRQ.to_le_bytes());
        assert_eq!(count(&aml, &irq), 1);
        // OperationRegion (GDST, SystemIO, GED_PORT, 4).
        let mut region = vec![0x5b, 0x80];
        region.extend_from_slice(b"GDST\x01\x0b");
        region.extend_from_slice(&layout::GED_PORT.to_le_bytes());
        region.extend_from_slice(&[0x0a, 4]);
        assert_eq!(count(&aml, &region), 1);
        // _EVT takes one argument (serialized).
        assert_eq!(count(&aml, b"_EVT\x09"), 1);
        assert_eq!(count(&aml, b"\\\x2f\x03_SB_PCI0PCNT"), 1);
        assert_eq!(count(&aml, b"CSCN"), 0);
        assert_eq!(count(&aml, b"MSCN"), 0);
        let with_memory = bytes(&ged_aml(false, true));
        assert_eq!(count(&with_memory, b"\\\x2f\x03_SB_MHPCMSCN"), 1);
        let with_cpu = bytes(&ged_aml(true, false));
        assert_eq!(count(&with_cpu, b"\\\x2f\x03_SB_CPUSCSCN"), 1);
        // And (Local0, 4): the CPU bit.
        assert_eq!(count(&with_cpu, &[0x7b, 0x60, 0x0a, 4, 0]), 1);
        // Notify (PWRB, 0x80); PWRB is a PNP0C0C device.
        assert_eq!(count(&aml, b"\x86PWRB\x0a\x80"), 1);
        assert_eq!(
            count(
                &aml,
                &[b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0c, 0x0c]
            ),
            1
        );
    }

    #[test]
    fn slot_count_is_limited() {
        let aml = bytes(&pci_hotplug_aml(4));
        assert_eq!(count(&aml, b"_EJ0"), 4);
        assert_eq!(count(&aml, b"S04_"), 2, "device and its Notify");
        assert_eq!(count(&aml, b"S05_"), 0);
        // No slots: PCNT and NTFY stay (the GED calls PCNT).
        let aml = bytes(&pci_hotplug_aml(0));
        assert_eq!(count(&aml, b"_EJ0"), 0);
        assert_eq!(count(&aml, b"PCNT"), 1);
        assert_eq!(count(&aml, b"NTFY"), 3);
    }

    #[test]
    fn every_slot_has_adr_sun_and_ej0() {
        let aml = bytes(&pci_hotplug_aml(31));
        assert_eq!(aml, bytes(&pci_hotplug_aml(200)), "clamped to 31 slots");
        for slot in FIRST_HOTPLUG_SLOT..=LAST_HOTPLUG_SLOT {
            let name = slot_name(slot);
            // Device (Sxx_) { Name (_ADR, slot << 16) Name (_SUN, slot) ...
            let mut dev = name.as_bytes().to_vec();
            dev.extend_from_slice(b"\x08_ADR\x0c");
            dev.extend_from_slice(&(u32::from(slot) << 16).to_le_bytes());
            dev.extend_from_slice(b"\x08_SUN");
            match slot {
                1 => dev.push(0x01),
                s => dev.extend_from_slice(&[0x0a, s]),
            }
            assert_eq!(count(&aml, &dev), 1, "slot {slot}");
            // Notify (Sxx_, Arg1) in NTFY.
            let mut notify = vec![0x86];
            notify.extend_from_slice(name.as_bytes());
            notify.push(0x69);
            assert_eq!(count(&aml, &notify), 1, "slot {slot}");
        }
        assert_eq!(
            count(&aml, b"S00_"),
            0,
            "the host bridge is not hotpluggable"
        );
        assert_eq!(count(&aml, b"_EJ0\x01PCEJ_SUN"), 31);
        for name in [b"PCIU", b"PCID", b"B0EJ"] {
            // Declared once in the field list, used once in a method.
            assert_eq!(count(&aml, name), 2);
        }
        // Field list: dword access, write as zeros, three 32-bit fields.
        assert_eq!(count(&aml, b"PCST\x43PCIU\x20PCID\x20B0EJ\x20"), 1);
    }
}
