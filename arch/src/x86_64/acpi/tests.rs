//! Tests of the tables as a guest reads them: headers, checksums, MADT
//! entries, DSDT devices.

use super::madt::{MADT_HEADER_LEN, MADT_PCAT_COMPAT};
use super::*;

fn segments(n: usize) -> Vec<PciSegmentLayout> {
    super::super::PLATFORM
        .pci
        .segments(&vec![(1, 1); n])
        .unwrap()
}

fn one_segment() -> Vec<PciSegmentLayout> {
    segments(1)
}

#[test]
fn mcfg_has_one_ecam_entry_per_segment() {
    let mem = guest_mem();
    let rsdp = create_acpi_tables(&mem, 1, 1, 31, 0, &segments(3)).unwrap();
    let (_, _, mcfg) = walk_all(&mem, rsdp);
    assert_eq!(mcfg.len(), 36 + 8 + 3 * 16);
    for seg in 0..3u16 {
        let e = 44 + 16 * usize::from(seg);
        assert_eq!(
            u64_at(&mcfg, e),
            layout::PCI_MMCONFIG_START + u64::from(seg) * layout::PCI_MMCONFIG_SIZE
        );
        assert_eq!(u16::from_le_bytes([mcfg[e + 8], mcfg[e + 9]]), seg);
        assert_eq!(&mcfg[e + 10..e + 12], &[0, 0], "bus 0 only");
    }
}

#[test]
fn dsdt_has_a_host_bridge_per_segment_with_its_own_windows() {
    let mem = guest_mem();
    let segs = segments(2);
    let rsdp = create_acpi_tables(&mem, 1, 1, 31, 0, &segs).unwrap();
    let (fadt, _) = walk(&mem, rsdp);
    let dsdt = read_table(&mem, u64_at(&fadt, 140), b"DSDT");
    let aml = &dsdt[36..];
    let pci0 = find_once(aml, b"PCI0\x08_HID");
    let pc01 = find_once(aml, b"PC01\x08_HID");
    let mbrd = find_once(aml, b"MBRD");
    assert!(pci0 < pc01 && pc01 < mbrd);
    // _SEG 1 and _UID 1 (OneOp) inside PC01; _SEG/_UID 0 (ZeroOp) in PCI0.
    let seg1 = pc01 + find_once(&aml[pc01..mbrd], b"_SEG");
    assert_eq!(aml[seg1 + 4], 0x01, "OneOp");
    let uid1 = pc01 + find_once(&aml[pc01..mbrd], b"_UID");
    assert_eq!(aml[uid1 + 4], 0x01, "OneOp");
    let seg0 = pci0 + find_once(&aml[pci0..pc01], b"_SEG");
    assert_eq!(aml[seg0 + 4], 0x00, "ZeroOp");
    // Each bridge's 32- and 64-bit windows, disjoint and in its own device.
    assert!(segs[0].mmio32.1 <= segs[1].mmio32.0 && segs[0].mmio64.1 <= segs[1].mmio64.0);
    for (seg, (from, to)) in segs.iter().zip([(pci0, pc01), (pc01, mbrd)]) {
        let mut d = vec![0x87, 0x17, 0x00, 0x00, 0x0c, 0x01, 0, 0, 0, 0];
        d.extend_from_slice(&(seg.mmio32.0 as u32).to_le_bytes());
        d.extend_from_slice(&((seg.mmio32.1 - 1) as u32).to_le_bytes());
        find_once(&aml[from..to], &d);
        let mut q = vec![0x8a, 0x2b, 0x00, 0x00, 0x0c, 0x01];
        q.extend_from_slice(&0u64.to_le_bytes());
        q.extend_from_slice(&seg.mmio64.0.to_le_bytes());
        q.extend_from_slice(&(seg.mmio64.1 - 1).to_le_bytes());
        find_once(&aml[from..to], &q);
    }
    // Only segment 0 decodes the 0xCF8 ports.
    find_once(aml, &[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]);
    // MBRD reserves both ECAM windows.
    let mut m = vec![0x86, 0x09, 0x00, 0x01];
    m.extend_from_slice(&(layout::PCI_MMCONFIG_START as u32).to_le_bytes());
    m.extend_from_slice(&(2 * layout::PCI_MMCONFIG_SIZE as u32).to_le_bytes());
    find_once(aml, &m);
}

#[test]
fn segment_layouts_split_the_windows_by_weight() {
    let pci = super::super::PLATFORM.pci;
    assert_eq!(
        pci.segments(&[(5, 7)]).unwrap()[0],
        PciSegmentLayout {
            segment: 0,
            ecam: pci.ecam,
            mmio32: pci.mmio32,
            mmio64: pci.mmio64
        },
        "one segment keeps the whole windows"
    );
    let s = pci.segments(&[(3, 1), (1, 1)]).unwrap();
    assert_eq!(s[0].mmio32.0, pci.mmio32.0);
    assert_eq!(s[1].mmio32.1, pci.mmio32.1);
    assert_eq!(s[0].mmio32.1, s[1].mmio32.0);
    assert_eq!((s[0].mmio32.1 - s[0].mmio32.0) % (2 << 20), 0);
    assert_eq!(
        s[0].mmio32.1 - s[0].mmio32.0,
        3 * (s[1].mmio32.1 - s[1].mmio32.0)
    );
    assert_eq!(s[0].mmio64.1 - s[0].mmio64.0, s[1].mmio64.1 - s[1].mmio64.0);
    assert_eq!(pci.segments(&vec![(1, 1); 96]).unwrap().len(), 96);
    assert!(pci.segments(&vec![(1, 1); 97]).is_err());
    assert!(pci.segments(&[]).is_err());
    assert!(pci.segments(&[(1, 0)]).is_err());
    // A weight so small that the granule rounds its window away.
    assert!(pci.segments(&[(1, 1), (u32::MAX, 1)]).is_err());
}

fn guest_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

fn read_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// Reads a whole SDT, checking its length field and checksum.
fn read_table(mem: &GuestMemoryMmap, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
    let header = read_bytes(mem, addr, 36);
    assert_eq!(&header[0..4], sig, "signature at {addr:#x}");
    let len = u32_at(&header, 4) as usize;
    assert!(len >= 36);
    let t = read_bytes(mem, addr, len);
    assert_eq!(sum(&t), 0, "checksum of {}", String::from_utf8_lossy(sig));
    assert!(addr >= layout::ACPI_START && addr + len as u64 <= layout::ACPI_END);
    t
}

/// Follows RSDP → XSDT and returns (FADT, MADT) bytes.
fn walk(mem: &GuestMemoryMmap, rsdp_addr: GuestAddress) -> (Vec<u8>, Vec<u8>) {
    let (fadt, madt, _) = walk_all(mem, rsdp_addr);
    (fadt, madt)
}

/// Follows RSDP → XSDT and returns (FADT, MADT, MCFG) bytes.
fn walk_all(mem: &GuestMemoryMmap, rsdp_addr: GuestAddress) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    assert_eq!(rsdp_addr.0, layout::ACPI_START);
    let rsdp = read_bytes(mem, rsdp_addr.0, 36);
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[0..20]), 0);
    assert_eq!(sum(&rsdp), 0);
    assert_eq!(rsdp[15], 2, "ACPI 2.0+ RSDP");
    assert_eq!(u32_at(&rsdp, 20), 36);
    let xsdt = read_table(mem, u64_at(&rsdp, 24), b"XSDT");
    assert_eq!(xsdt.len(), 36 + 3 * 8);
    let fadt = read_table(mem, u64_at(&xsdt, 36), b"FACP");
    let madt = read_table(mem, u64_at(&xsdt, 44), b"APIC");
    let mcfg = read_table(mem, u64_at(&xsdt, 52), b"MCFG");
    (fadt, madt, mcfg)
}

#[test]
fn mcfg_describes_bus0_ecam() {
    let mem = guest_mem();
    let rsdp = create_acpi_tables(&mem, 1, 1, 31, 0, &one_segment()).unwrap();
    let (_, _, mcfg) = walk_all(&mem, rsdp);
    // Header + 8 reserved bytes + one 16-byte allocation.
    assert_eq!(mcfg.len(), 36 + 8 + 16);
    assert_eq!(u64_at(&mcfg, 44), layout::PCI_MMCONFIG_START);
    assert_eq!(&mcfg[52..56], &[0, 0, 0, 0], "segment 0, buses 0..=0");
}

/// Offset of `needle` in `hay`, which must occur exactly once.
fn find_once(hay: &[u8], needle: &[u8]) -> usize {
    let hits: Vec<usize> = hay
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "{needle:02x?} occurs {} times", hits.len());
    hits[0]
}

#[test]
fn dsdt_has_pci_host_bridge_and_ecam_reservation() {
    let mem = guest_mem();
    let rsdp = create_acpi_tables(&mem, 1, 1, 31, 0, &one_segment()).unwrap();
    let (fadt, _) = walk(&mem, rsdp);
    let dsdt = read_table(&mem, u64_at(&fadt, 140), b"DSDT");
    let aml = &dsdt[36..];
    // The PCI0 device itself (a `Scope (PCI0)` for hotplug and calls
    // into it follow later).
    let pci0 = find_once(aml, b"PCI0\x08_HID");
    let mbrd = find_once(aml, b"MBRD");
    assert!(pci0 < mbrd);
    // _HID PNP0A08 and _CID PNP0A03 (compressed EISA IDs, DWordPrefix).
    let hid = find_once(aml, &[b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0a, 0x08]);
    let cid = find_once(aml, &[b'_', b'C', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0a, 0x03]);
    assert!(pci0 < hid && hid < cid && cid < mbrd);
    for name in [b"_SEG", b"_BBN"] {
        let at = find_once(aml, name);
        assert_eq!(aml[at + 4], 0x00, "ZeroOp");
    }
    find_once(aml, &[b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0c, 0x02]);
    // Bus numbers 0..=0 (word descriptor, type 2).
    find_once(aml, &[0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00, 0, 0, 0, 0, 0, 0]);
    // IO 0xcf8, length 8.
    find_once(aml, &[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]);
    // IO window 0x0d00..=0xffff.
    find_once(
        aml,
        &[
            0x88, 0x0d, 0x00, 0x01, 0x0c, 0x03, 0, 0, 0x00, 0x0d, 0xff, 0xff,
        ],
    );
    // 32-bit window.
    let mut d = vec![0x87, 0x17, 0x00, 0x00, 0x0c, 0x01, 0, 0, 0, 0];
    d.extend_from_slice(&(layout::PCI_MMIO32_START as u32).to_le_bytes());
    d.extend_from_slice(&((layout::PCI_MMIO32_END - 1) as u32).to_le_bytes());
    find_once(aml, &d);
    // 64-bit window.
    let mut q = vec![0x8a, 0x2b, 0x00, 0x00, 0x0c, 0x01];
    q.extend_from_slice(&0u64.to_le_bytes());
    q.extend_from_slice(&layout::PCI_MMIO64_START.to_le_bytes());
    q.extend_from_slice(&(layout::PCI_MMIO64_START + layout::PCI_MMIO64_SIZE - 1).to_le_bytes());
    find_once(aml, &q);
    // ECAM reserved as a fixed 32-bit memory range.
    let mut m = vec![0x86, 0x09, 0x00, 0x01];
    m.extend_from_slice(&(layout::PCI_MMCONFIG_START as u32).to_le_bytes());
    m.extend_from_slice(&(layout::PCI_MMCONFIG_SIZE as u32).to_le_bytes());
    find_once(aml, &m);
    // Keep the DSDT small: guests interpret it slowly. Without the GED
    // and the 31 hotplug slots it is under 512 bytes.
    let hotplug = to_bytes(&hotplug::ged_aml(false, false)).len()
        + to_bytes(&hotplug::pci_hotplug_aml(31)).len();
    eprintln!(
        "DSDT {} bytes, {hotplug} of them GED + PCI hotplug",
        dsdt.len()
    );
    assert!(dsdt.len() - hotplug < 512, "DSDT is {} bytes", dsdt.len());
    assert!(dsdt.len() < 2560, "DSDT is {} bytes", dsdt.len());
}

#[test]
fn dsdt_has_ged_power_button_and_hotplug_slots() {
    let mem = guest_mem();
    let rsdp = create_acpi_tables(&mem, 2, 2, 31, 0, &one_segment()).unwrap();
    let (fadt, _) = walk(&mem, rsdp);
    // read_table checks the length and the checksum.
    let dsdt = read_table(&mem, u64_at(&fadt, 140), b"DSDT");
    let aml = &dsdt[36..];
    find_once(aml, b"_S5_");
    let pci0 = find_once(aml, b"PCI0\x08_HID");
    let ged = find_once(aml, b"GED_\x08_HID");
    let pwrb = find_once(aml, b"PWRB\x08_HID");
    find_once(aml, b"VGEN\x08_HID");
    // `Scope (PCI0)` (ScopeOp, 1-byte length, name) with the slots
    // comes after the device it extends.
    let scope = aml
        .windows(6)
        .position(|w| w[0] == 0x10 && &w[2..6] == b"PCI0")
        .or_else(|| {
            aml.windows(7)
                .position(|w| w[0] == 0x10 && &w[3..7] == b"PCI0")
        })
        .expect("Scope (PCI0)");
    assert!(pci0 < scope && pwrb < ged);
    for slot in 1..=31u8 {
        let name = hotplug::slot_name(slot);
        let dev = find_once(aml, format!("{name}\x08_ADR").as_bytes());
        assert!(dev > scope, "slot {slot} inside Scope (PCI0)");
    }
    assert!(!aml.windows(4).any(|w| w == b"S00_"));
}

#[test]
fn fadt_is_hw_reduced_and_points_to_dsdt_with_s5() {
    let mem = guest_mem();
    let rsdp = create_acpi_tables(&mem, 1, 1, 31, 0, &one_segment()).unwrap();
    let (fadt, _) = walk(&mem, rsdp);
    assert_eq!(fadt.len(), 276);
    assert_eq!(fadt[8], 6, "FADT revision");
    let flags = u32_at(&fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    assert_eq!(flags & (1 << 8), 0, "TMR_VAL_EXT must be clear");
    assert_eq!(u16::from_le_bytes([fadt[109], fadt[110]]), 1 << 2);
    assert_eq!(fadt[108], 0x32, "RTC century register");
    // RESET_REG: system I/O, 8 bits, at the PM port; RESET_VALUE 1.
    let pm_byte_gas = [1u8, 8, 0, 1];
    assert_eq!(&fadt[116..120], &pm_byte_gas);
    assert_eq!(u64_at(&fadt, 120), u64::from(layout::ACPI_PM_PORT));
    assert_eq!(fadt[128], ACPI_RESET_VALUE);
    // SLEEP_CONTROL_REG and SLEEP_STATUS_REG.
    for off in [244, 256] {
        assert_eq!(&fadt[off..off + 4], &pm_byte_gas);
        assert_eq!(u64_at(&fadt, off + 4), u64::from(layout::ACPI_PM_PORT));
    }
    // X_PM_TMR_BLK: system I/O, 32 bits, dword access.
    assert_eq!(&fadt[208..212], &[1, 32, 0, 3]);
    assert_eq!(u64_at(&fadt, 212), u64::from(layout::ACPI_PM_TIMER_PORT));
    // 32-bit DSDT pointer unused; X_DSDT lands on the DSDT.
    assert_eq!(u32_at(&fadt, 40), 0);
    let dsdt = read_table(&mem, u64_at(&fadt, 140), b"DSDT");
    let aml = &dsdt[36..];
    let s5 = aml.windows(4).position(|w| w == b"_S5_").unwrap();
    // NameOp just before it, then PackageOp with 4 elements: BytePrefix 5, 5, Zero, Zero.
    assert_eq!(aml[s5 - 1], 0x08);
    assert_eq!(
        &aml[s5 + 4..s5 + 13],
        &[0x12, 0x08, 0x04, 0x0a, 5, 0x0a, 5, 0, 0]
    );
}

fn check_madt(num_cpus: u8) {
    check_madt_hotplug(num_cpus, num_cpus);
}

fn check_madt_hotplug(boot: u8, num_cpus: u8) {
    let mem = guest_mem();
    let rsdp = create_acpi_tables(&mem, boot, num_cpus, 31, 0, &one_segment()).unwrap();
    let (_, madt) = walk(&mem, rsdp);
    assert_eq!(u32_at(&madt, 36), layout::APIC_START as u32);
    assert_eq!(u32_at(&madt, 40), MADT_PCAT_COMPAT);
    let mut lapics = Vec::new();
    let (mut ioapics, mut nmis) = (0, 0);
    let mut off = MADT_HEADER_LEN;
    while off < madt.len() {
        let (ty, len) = (madt[off], madt[off + 1] as usize);
        assert!(len >= 2 && off + len <= madt.len(), "entry overruns MADT");
        let e = &madt[off..off + len];
        match ty {
            0 => {
                assert_eq!(len, 8);
                assert_eq!(e[2], e[3], "uid == apic id");
                let flags = if e[3] < boot { 1 } else { 2 };
                assert_eq!(u32_at(e, 4), flags, "enabled or online capable");
                lapics.push(e[3]);
            }
            1 => {
                assert_eq!(len, 12);
                assert_eq!(e[2], num_cpus);
                assert_eq!(u32_at(e, 4), layout::IOAPIC_START as u32);
                assert_eq!(u32_at(e, 8), 0);
                ioapics += 1;
            }
            4 => {
                assert_eq!(e, &[4, 6, 0xff, 0, 0, 1]);
                nmis += 1;
            }
            other => panic!("unexpected MADT entry type {other}"),
        }
        off += len;
    }
    assert_eq!(off, madt.len());
    assert_eq!(lapics, (0..num_cpus).collect::<Vec<_>>());
    assert_eq!((ioapics, nmis), (1, 1));
}

#[test]
fn madt_has_one_local_apic_per_vcpu() {
    for n in [1, 2, 16, 255] {
        check_madt(n);
    }
}

#[test]
fn madt_describes_hot_addable_cpus_as_online_capable() {
    for (boot, max) in [(1, 2), (2, 8), (1, 254)] {
        check_madt_hotplug(boot, max);
    }
    // MADT revision 5 or later: Linux honours "online capable" there.
    let mem = guest_mem();
    let rsdp = create_acpi_tables(&mem, 1, 2, 31, 0, &one_segment()).unwrap();
    let (_, madt) = walk(&mem, rsdp);
    assert!(madt[8] >= 5);
}

fn dsdt_aml(boot: u8, max: u8) -> Vec<u8> {
    let mem = guest_mem();
    let rsdp = create_acpi_tables(&mem, boot, max, 31, 0, &one_segment()).unwrap();
    let (fadt, _) = walk(&mem, rsdp);
    let dsdt = read_table(&mem, u64_at(&fadt, 140), b"DSDT");
    dsdt[36..].to_vec()
}

#[test]
fn dsdt_has_processor_devices_only_with_cpu_hotplug() {
    let count = |aml: &[u8], n: &[u8]| aml.windows(n.len()).filter(|w| *w == n).count();
    // No hotplug: no processor devices, the GED does not call CSCN.
    let aml = dsdt_aml(2, 2);
    assert_eq!(count(&aml, b"ACPI0007"), 0);
    assert_eq!(count(&aml, b"CSCN"), 0);
    // boot=1,max=3: three processor devices and the GED dispatch.
    let aml = dsdt_aml(1, 3);
    assert_eq!(count(&aml, b"ACPI0007"), 3);
    assert_eq!(count(&aml, b"\\/\x03_SB_CPUSCSCN"), 1);
    find_once(&aml, b"CPUS\x08_HID");
    for cpu in 0..3 {
        find_once(
            &aml,
            format!("{}\x08_HID", cpu::cpu_device_name(cpu)).as_bytes(),
        );
    }
}

#[test]
fn rejects_max_below_boot() {
    let mem = guest_mem();
    assert!(matches!(
        create_acpi_tables(&mem, 2, 1, 31, 0, &one_segment()),
        Err(AcpiError::MaxBelowBoot { boot: 2, max: 1 })
    ));
}

#[test]
fn rejects_zero_cpus() {
    let mem = guest_mem();
    assert!(matches!(
        create_acpi_tables(&mem, 0, 0, 31, 0, &one_segment()),
        Err(AcpiError::NoCpus)
    ));
}

#[test]
fn overflowing_the_reserved_range_is_an_error() {
    let mem = guest_mem();
    let start = layout::ACPI_START;
    // Enough for one vCPU but not for 255.
    write_tables(
        &mem,
        Cpus { boot: 1, max: 1 },
        31,
        0,
        &one_segment(),
        start,
        start + 0x1000,
    )
    .unwrap();
    let err = write_tables(
        &mem,
        Cpus {
            boot: 255,
            max: 255,
        },
        31,
        0,
        &one_segment(),
        start,
        start + 0x1000,
    )
    .unwrap_err();
    match err {
        AcpiError::TooLarge { needed, available } => {
            assert_eq!(available, 0x1000);
            assert!(needed > available);
        }
        other => panic!("unexpected {other:?}"),
    }
    // A range at the very top of the address space must not wrap.
    assert!(write_tables(
        &mem,
        Cpus { boot: 1, max: 1 },
        31,
        0,
        &one_segment(),
        u64::MAX - 8,
        u64::MAX
    )
    .is_err());
}

#[test]
fn unbacked_memory_is_an_error() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    assert!(matches!(
        create_acpi_tables(&mem, 1, 1, 31, 0, &one_segment()),
        Err(AcpiError::GuestMemory { .. })
    ));
}
