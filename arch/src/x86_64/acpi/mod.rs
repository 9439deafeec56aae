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

use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout;
use crate::PciSegmentLayout;

pub mod cpu;
mod dsdt;
mod fadt;
pub mod hotplug;
mod madt;
pub mod memory;
mod pci;
pub mod vmgenid;

use dsdt::create_dsdt;
use fadt::create_fadt;
use madt::create_madt;
use pci::create_mcfg;
pub use pci::host_bridge_name;

/// OEM id written into every table header.
const OEM_ID: [u8; 6] = *b"CHVVMM";
/// OEM revision written into every table header.
const OEM_REVISION: u32 = 1;
/// Alignment of each table after the RSDP.
const TABLE_ALIGN: u64 = 16;

/// Value the guest writes to the reset register to reset the machine.
pub const ACPI_RESET_VALUE: u8 = 1;
/// CMOS index of the RTC century byte, advertised in the FADT so the guest
/// reads the full year from the RTC.
pub const CMOS_CENTURY_REGISTER: u8 = 0x32;
/// `SLP_TYPx` value of the `\_S5_` (soft-off) package in the DSDT.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;

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

#[cfg(test)]
mod tests;
