//! The MADT: local APICs (boot and hot-pluggable), the IOAPIC, ISA
//! overrides and the LINT1 NMI.

use acpi_tables::sdt::Sdt;

use super::{ioapic_id, layout, Cpus, OEM_ID, OEM_REVISION};

/// MADT flag: dual 8259 PICs are present. KVM_CREATE_IRQCHIP does emulate
/// them, so this is truthful; it tells the OS to mask the 8259s before it
/// switches to the IOAPIC (Linux 6.1 probes the PIC anyway, newer kernels
/// skip the probe when this flag is set).
pub(super) const MADT_PCAT_COMPAT: u32 = 1;
/// MADT local APIC flag: processor enabled.
pub(super) const MADT_LAPIC_ENABLED: u32 = 1;
/// MADT local APIC flag: not enabled at boot but can be hot-added (ACPI
/// 6.3+; Linux counts such CPUs as possible).
pub(super) const MADT_LAPIC_ONLINE_CAPABLE: u32 = 1 << 1;
/// MADT structure types (ACPI 6.5, table 5.21).
pub(super) const MADT_TYPE_LOCAL_APIC: u8 = 0;
pub(super) const MADT_TYPE_IOAPIC: u8 = 1;
pub(super) const MADT_TYPE_INT_SRC_OVERRIDE: u8 = 2;
pub(super) const MADT_TYPE_LOCAL_APIC_NMI: u8 = 4;
/// Byte length of the MADT header (standard header + local APIC address + flags).
pub(super) const MADT_HEADER_LEN: usize = 44;
/// Byte lengths of the MADT entries we emit.
pub(super) const MADT_LOCAL_APIC_LEN: usize = 8;
pub(super) const MADT_IOAPIC_LEN: usize = 12;
pub(super) const MADT_INT_SRC_OVERRIDE_LEN: usize = 10;
pub(super) const MADT_LOCAL_APIC_NMI_LEN: usize = 6;
/// ACPI processor UID meaning "all processors" in a local APIC NMI entry.
pub(super) const ALL_PROCESSORS: u8 = 0xff;
/// MPS INTI flags: polarity and trigger mode conform to the bus (ISA: edge, high).
pub(super) const MPS_INTI_CONFORMS: u16 = 0;

/// ISA interrupt source overrides as `(isa_irq, gsi, mps_inti_flags)`.
///
/// Empty: KVM's default routing is the identity, which is also what the OS
/// assumes for ISA IRQs without an override (see the module docs).
pub(super) const ISA_IRQ_OVERRIDES: &[(u8, u32, u16)] = &[];

/// MADT: one local APIC per possible vCPU (those beyond the boot vCPUs
/// "online capable" rather than enabled), the IOAPIC, overrides and the
/// LINT1 NMI.
pub(super) fn create_madt(cpus: Cpus) -> Sdt {
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
