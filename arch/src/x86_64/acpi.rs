//! ACPI tables (RSDP, XSDT, FADT, DSDT, MADT, MCFG) that describe the
//! guest's hardware to the kernel.
//!
//! The platform is "hardware-reduced" ACPI: there are no PM1 event/control
//! blocks, no SCI and no GPEs. Power-off and reset go through the FADT's
//! sleep-control and reset registers, both a single I/O byte at
//! [`layout::ACPI_PM_PORT`]. ACPI events (PCI hotplug, the power button)
//! arrive through a Generic Event Device on [`layout::GED_IRQ`] instead of
//! the SCI ([`hotplug`]). The DSDT is kept small because the guest kernel
//! interprets AML very slowly here.
//!
//! Interrupt routing: KVM's in-kernel irqchip starts with identity GSI
//! routing (GSI n drives IOAPIC pin n and, below 16, PIC pin n) and its PIT
//! raises GSI 0. The MADT therefore carries **no** ISA IRQ 0 → GSI 2
//! override: that override would make Linux program IOAPIC pin 2 for the
//! timer while KVM raises pin 0. No IRQ 9 (SCI) override is needed either,
//! since a hardware-reduced platform has no SCI. Should the VMM ever install
//! QEMU-style routing (GSI 0 → pin 2), [`ISA_IRQ_OVERRIDES`] is the single
//! place to describe it.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout;
use crate::PciSegmentLayout;

#[path = "acpi_cpu.rs"]
pub mod cpu;
#[path = "acpi_hotplug.rs"]
pub mod hotplug;
#[path = "acpi_memory.rs"]
pub mod memory;
#[path = "acpi_vmgenid.rs"]
pub mod vmgenid;

/// OEM id written into every table header.
const OEM_ID: [u8; 6] = *b"CHVVMM";
/// OEM revision written into every table header.
const OEM_REVISION: u32 = 1;
/// Alignment of each table after the RSDP.
const TABLE_ALIGN: u64 = 16;

/// FADT IA-PC boot architecture flag: no VGA hardware (ACPI 6.5, 5.2.9.3).
/// The "8042" and "legacy devices" bits stay clear so Linux skips probing
/// PS/2; the i8042 reset port still works for `reboot=k`.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// Value the guest writes to the reset register to reset the machine.
pub const ACPI_RESET_VALUE: u8 = 1;
/// CMOS index of the RTC century byte, advertised in the FADT so the guest
/// reads the full year from the RTC.
pub const CMOS_CENTURY_REGISTER: u8 = 0x32;
/// `SLP_TYPx` value of the `\_S5_` (soft-off) package in the DSDT.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;

/// MADT flag: dual 8259 PICs are present. KVM_CREATE_IRQCHIP does emulate
/// them, so this is truthful; it tells the OS to mask the 8259s before it
/// switches to the IOAPIC (Linux 6.1 probes the PIC anyway, newer kernels
/// skip the probe when this flag is set).
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT local APIC flag: processor enabled.
const MADT_LAPIC_ENABLED: u32 = 1;
/// MADT local APIC flag: not enabled at boot but can be hot-added (ACPI
/// 6.3+; Linux counts such CPUs as possible).
const MADT_LAPIC_ONLINE_CAPABLE: u32 = 1 << 1;
/// MADT structure types (ACPI 6.5, table 5.21).
const MADT_TYPE_LOCAL_APIC: u8 = 0;
const MADT_TYPE_IOAPIC: u8 = 1;
const MADT_TYPE_INT_SRC_OVERRIDE: u8 = 2;
const MADT_TYPE_LOCAL_APIC_NMI: u8 = 4;
/// Byte length of the MADT header (standard header + local APIC address + flags).
const MADT_HEADER_LEN: usize = 44;
/// Byte lengths of the MADT entries we emit.
const MADT_LOCAL_APIC_LEN: usize = 8;
const MADT_IOAPIC_LEN: usize = 12;
const MADT_INT_SRC_OVERRIDE_LEN: usize = 10;
const MADT_LOCAL_APIC_NMI_LEN: usize = 6;
/// ACPI processor UID meaning "all processors" in a local APIC NMI entry.
const ALL_PROCESSORS: u8 = 0xff;
/// MPS INTI flags: polarity and trigger mode conform to the bus (ISA: edge, high).
const MPS_INTI_CONFORMS: u16 = 0;

/// ISA interrupt source overrides as `(isa_irq, gsi, mps_inti_flags)`.
///
/// Empty: KVM's default routing is the identity, which is also what the OS
/// assumes for ISA IRQs without an override (see the module docs).
const ISA_IRQ_OVERRIDES: &[(u8, u32, u16)] = &[];

/// Errors from building the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// A guest needs at least one vCPU to describe.
    #[error("cannot build ACPI tables for zero vCPUs")]
    NoCpus,
    /// The possible vCPUs must include the boot vCPUs.
    #[error("max_vcpus ({max}) is below boot_vcpus ({boot})")]
    MaxBelowBoot {
        /// vCPUs enabled at boot.
        boot: u8,
        /// Possible vCPUs.
        max: u8,
    },
    /// The tables do not fit in the reserved guest range.
    #[error("ACPI tables need {needed:#x} bytes but only {available:#x} are reserved")]
    TooLarge {
        /// Bytes the tables would occupy (from the start of the range).
        needed: u64,
        /// Bytes reserved for them.
        available: u64,
    },
    /// Writing a table into guest memory failed (range not backed by RAM).
    #[error("writing the {table} table to guest memory: {source}")]
    GuestMemory {
        /// Signature of the table being written.
        table: &'static str,
        /// The underlying memory error.
        #[source]
        source: GuestMemoryError,
    },
}

/// Writes RSDP, XSDT, FADT, DSDT, MADT and MCFG into guest memory starting
/// at `layout::ACPI_START`; returns the RSDP address.
///
/// `boot_cpus` vCPUs are enabled; up to `max_cpus` are possible. When
/// `max_cpus > boot_cpus` the others are described as hot-addable (MADT
/// "online capable", processor devices in the DSDT, see [`cpu`]) and every
/// vCPU but the first can be hot-removed.
///
/// Each of `pci_segments` is a host bridge (`PCI0`, `PC01`, …) with its
/// own MCFG entry; PCI slots `1..=hotplug_slots` (at most 31) of segment 0
/// are described as hotpluggable.
/// Each one costs the guest boot time (Linux creates an ACPI device and a
/// hotplug slot for it: about 0.2 s each on PVM hosts), so the VMM passes
/// what it needs rather than all 31.
///
/// The RSDP sits at the (16-byte aligned) start of the BIOS area so a guest
/// that scans for it finds it too; PVH guests get its address from the VMM.
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap,
    boot_cpus: u8,
    max_cpus: u8,
    hotplug_slots: u8,
    memory_slots: u8,
    pci_segments: &[PciSegmentLayout],
) -> Result<GuestAddress, AcpiError> {
    write_tables(
        mem,
        Cpus {
            boot: boot_cpus,
            max: max_cpus,
        },
        hotplug_slots,
        memory_slots,
        pci_segments,
        layout::ACPI_START,
        layout::ACPI_END,
    )
}

/// Hands out consecutive aligned addresses inside `[start, end)`.
struct Placer {
    next: u64,
    start: u64,
    end: u64,
}

impl Placer {
    /// Reserves `len` bytes at the next aligned address.
    fn place(&mut self, len: usize) -> Result<GuestAddress, AcpiError> {
        let addr = self.next.checked_next_multiple_of(TABLE_ALIGN);
        let after = addr.and_then(|a| a.checked_add(len as u64));
        match (addr, after) {
            (Some(addr), Some(after)) if after <= self.end => {
                self.next = after;
                Ok(GuestAddress(addr))
            }
            _ => Err(AcpiError::TooLarge {
                needed: after.map_or(u64::MAX, |a| a.saturating_sub(self.start)),
                available: self.end.saturating_sub(self.start),
            }),
        }
    }
}

/// The IO-APIC's id for a VM with up to `max_cpus` vCPUs: one past the
/// last local APIC id, so distinct from all of them.
pub fn ioapic_id(max_cpus: u8) -> u8 {
    max_cpus
}

/// Boot and possible vCPU counts.
#[derive(Clone, Copy)]
struct Cpus {
    boot: u8,
    max: u8,
}

impl Cpus {
    /// Whether vCPUs can be hot-added or removed.
    fn hotplug(self) -> bool {
        self.max > self.boot
    }
}

/// Builds all tables and writes them into `[start, end)`.
fn write_tables(
    mem: &GuestMemoryMmap,
    cpus: Cpus,
    hotplug_slots: u8,
    memory_slots: u8,
    pci_segments: &[PciSegmentLayout],
    start: u64,
    end: u64,
) -> Result<GuestAddress, AcpiError> {
    if cpus.boot == 0 {
        return Err(AcpiError::NoCpus);
    }
    if cpus.max < cpus.boot {
        return Err(AcpiError::MaxBelowBoot {
            boot: cpus.boot,
            max: cpus.max,
        });
    }
    let mut placer = Placer {
        next: start,
        start,
        end,
    };
    let rsdp_addr = placer.place(Rsdp::len())?;

    let dsdt = create_dsdt(cpus, hotplug_slots, memory_slots, pci_segments);
    let dsdt_addr = placer.place(dsdt.len())?;

    let fadt = to_bytes(&create_fadt(dsdt_addr.0));
    let fadt_addr = placer.place(fadt.len())?;

    let madt = create_madt(cpus);
    let madt_addr = placer.place(madt.len())?;

    let mcfg = create_mcfg(pci_segments);
    let mcfg_addr = placer.place(mcfg.len())?;

    let mut xsdt = XSDT::new(OEM_ID, *b"CHVXSDT ", OEM_REVISION);
    xsdt.add_entry(fadt_addr.0);
    xsdt.add_entry(madt_addr.0);
    xsdt.add_entry(mcfg_addr.0);
    let xsdt = to_bytes(&xsdt);
    let xsdt_addr = placer.place(xsdt.len())?;

    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr.0));

    write(mem, "DSDT", dsdt.as_slice(), dsdt_addr)?;
    write(mem, "FACP", &fadt, fadt_addr)?;
    write(mem, "APIC", madt.as_slice(), madt_addr)?;
    write(mem, "MCFG", &mcfg, mcfg_addr)?;
    write(mem, "XSDT", &xsdt, xsdt_addr)?;
    write(mem, "RSDP", &rsdp, rsdp_addr)?;
    Ok(rsdp_addr)
}

/// Serializes any table from the `acpi_tables` crate.
fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Copies one table into guest memory.
fn write(
    mem: &GuestMemoryMmap,
    table: &'static str,
    bytes: &[u8],
    addr: GuestAddress,
) -> Result<(), AcpiError> {
    mem.write_slice(bytes, addr)
        .map_err(|source| AcpiError::GuestMemory { table, source })
}

/// DSDT: `\_S5_` (so Linux offers power-off) and the two legacy devices a
/// hardware-reduced platform must describe for Linux to use them: COM1 (its
/// IRQ is only mapped when a PNP0501 device names it) and the CMOS RTC;
/// the PCI host bridge; the Generic Event Device with the power button and
/// the PCI hotplug slots (see [`hotplug`]); the processor devices when
/// vCPUs can be hot-plugged (see [`cpu`]); the memory devices when RAM
/// can be hot-added (see [`memory`]).
/// vCPUs can be hot-plugged (see [`cpu`]); the VM generation ID device
/// (see [`vmgenid`]).
/// Kept minimal because guest kernels on PVM hosts interpret AML slowly.
fn create_dsdt(
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

/// Appends `Method (name, 2) { If (Arg0 == i) { Notify (device_i, Arg1) } ... }`
/// for each `(i, device_i)` of `devices`: the dispatch the hotplug scans
/// use to notify a device chosen at run time.
fn notify_method(name: &str, devices: &[(u8, String)], sink: &mut Vec<u8>) {
    let paths: Vec<aml::Path> = devices.iter().map(|(_, n)| aml::Path::new(n)).collect();
    let notifies: Vec<aml::Notify> = paths
        .iter()
        .map(|p| aml::Notify::new(p, &aml::Arg(1)))
        .collect();
    let tests: Vec<aml::Equal> = devices
        .iter()
        .map(|(i, _)| aml::Equal::new(&aml::Arg(0), i))
        .collect();
    let ifs: Vec<aml::If> = tests
        .iter()
        .zip(&notifies)
        .map(|(t, n)| aml::If::new(t, vec![n]))
        .collect();
    aml::Method::new(
        name.into(),
        2,
        false,
        ifs.iter().map(|i| i as &dyn Aml).collect(),
    )
    .to_aml_bytes(sink);
}

/// Helpers of the AML tests.
#[cfg(test)]
mod aml_test_util {
    use acpi_tables::Aml;

    /// The bytes of `a`.
    pub fn bytes(a: &dyn Aml) -> Vec<u8> {
        let mut v = Vec::new();
        a.to_aml_bytes(&mut v);
        v
    }

    /// How often `needle` occurs in `hay`.
    pub fn count(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).filter(|w| *w == needle).count()
    }
}

/// Raw AML bytes, so already-built objects can sit in a `Vec<&dyn Aml>`.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// MCFG: one ECAM allocation per segment, bus 0 only.
fn create_mcfg(pci_segments: &[PciSegmentLayout]) -> Vec<u8> {
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
fn host_bridge_aml(seg: &PciSegmentLayout) -> Vec<u8> {
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
fn pci_devices_aml(pci_segments: &[PciSegmentLayout]) -> RawAml {
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

/// A one-byte system-I/O register description.
fn io_byte_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

/// Revision 6 FADT for a hardware-reduced platform.
fn create_fadt(dsdt_addr: u64) -> acpi_tables::fadt::FADT {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"CHVFACP ", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH_VGA_NOT_PRESENT.into();
    fadt.century = CMOS_CENTURY_REGISTER;
    fadt.reset_reg = io_byte_register(layout::ACPI_PM_PORT);
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_byte_register(layout::ACPI_PM_PORT);
    fadt.sleep_status_reg = io_byte_register(layout::ACPI_PM_PORT);
    // 24-bit PM timer (TMR_VAL_EXT clear): a cheap, exit-only clock source
    // Linux can calibrate against and use as its TSC watchdog.
    fadt.pm_tmr_len = 4;
    fadt.x_pm_tmr_blk = GAS::new(
        AddressSpace::SystemIo,
        32,
        0,
        AccessSize::DwordAccess,
        layout::ACPI_PM_TIMER_PORT.into(),
    );
    fadt.finalize()
}

/// MADT: one local APIC per possible vCPU (those beyond the boot vCPUs
/// "online capable" rather than enabled), the IOAPIC, overrides and the
/// LINT1 NMI.
fn create_madt(cpus: Cpus) -> Sdt {
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN as u32,
        // Revision 5 matches ACPI 6.x; nothing we emit depends on it.
        5,
        OEM_ID,
        *b"CHVMADT ",
        OEM_REVISION,
    );
    // Both addresses are below 4 GiB by construction of the layout.
    madt.write_u32(36, layout::APIC_START as u32);
    madt.write_u32(40, MADT_PCAT_COMPAT);

    for id in 0..cpus.max {
        let mut e = [0u8; MADT_LOCAL_APIC_LEN];
        e[0] = MADT_TYPE_LOCAL_APIC;
        e[1] = MADT_LOCAL_APIC_LEN as u8;
        e[2] = id; // ACPI processor UID
        e[3] = id; // APIC ID
        let flags = if id < cpus.boot {
            MADT_LAPIC_ENABLED
        } else {
            MADT_LAPIC_ONLINE_CAPABLE
        };
        e[4..8].copy_from_slice(&flags.to_le_bytes());
        madt.append_slice(&e);
    }

    let mut ioapic = [0u8; MADT_IOAPIC_LEN];
    ioapic[0] = MADT_TYPE_IOAPIC;
    ioapic[1] = MADT_IOAPIC_LEN as u8;
    ioapic[2] = ioapic_id(cpus.max);
    ioapic[4..8].copy_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    ioapic[8..12].copy_from_slice(&0u32.to_le_bytes()); // GSI base
    madt.append_slice(&ioapic);

    for &(irq, gsi, flags) in ISA_IRQ_OVERRIDES {
        let mut e = [0u8; MADT_INT_SRC_OVERRIDE_LEN];
        e[0] = MADT_TYPE_INT_SRC_OVERRIDE;
        e[1] = MADT_INT_SRC_OVERRIDE_LEN as u8;
        e[2] = 0; // bus: ISA
        e[3] = irq;
        e[4..8].copy_from_slice(&gsi.to_le_bytes());
        e[8..10].copy_from_slice(&flags.to_le_bytes());
        madt.append_slice(&e);
    }

    let mut nmi = [0u8; MADT_LOCAL_APIC_NMI_LEN];
    nmi[0] = MADT_TYPE_LOCAL_APIC_NMI;
    nmi[1] = MADT_LOCAL_APIC_NMI_LEN as u8;
    nmi[2] = ALL_PROCESSORS;
    nmi[3..5].copy_from_slice(&MPS_INTI_CONFORMS.to_le_bytes());
    nmi[5] = 1; // LINT1
    madt.append_slice(&nmi);
    madt
}

#[cfg(test)]
mod tests {
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
        q.extend_from_slice(
            &(layout::PCI_MMIO64_START + layout::PCI_MMIO64_SIZE - 1).to_le_bytes(),
        );
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
}
