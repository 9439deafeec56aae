//! Intel MultiProcessor Specification (1.4) table at the start of the EBDA.
//!
//! Two reasons to write one next to the ACPI tables:
//! - Linux looks for the MP floating pointer early in every boot, ACPI or
//!   not. Without one it scans the whole BIOS area (0xf0000-0xfffff) 16
//!   bytes at a time, remapping the rest of the area on every step; with
//!   guest kernel code emulated, that scan alone costs about 1.8 s of boot.
//!   At [`layout::EBDA_START`] it is found by the second of Linux's probes.
//! - Guests booted with `acpi=off` (which saves them all ACPI work) find
//!   their CPUs, the IO-APIC and the ISA interrupt routing in it.
//!
//! With ACPI the guest takes all of this from the MADT instead; the two
//! describe the same machine (APIC ids, IO-APIC id and identity ISA routing,
//! see the `acpi` module).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::error::BootError;
use super::layout;

/// "_MP_": the floating pointer structure's signature.
const FLOATING_SIGNATURE: &[u8; 4] = b"_MP_";
/// "PCMP": the configuration table's signature.
const CONFIG_SIGNATURE: &[u8; 4] = b"PCMP";
/// Specification revision 1.4.
const SPEC_REV: u8 = 4;
const FLOATING_LEN: usize = 16;
const CONFIG_HEADER_LEN: usize = 44;
const PROCESSOR_ENTRY_LEN: usize = 20;
/// Bus, IO-APIC, IO and local interrupt entries are 8 bytes each.
const SHORT_ENTRY_LEN: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Version register values of KVM's local APIC and IO-APIC.
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ENABLED: u8 = 1;
/// Family 6 signature and FPU + APIC feature flags; informational only.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger mode as the bus defines them.
const INT_FLAGS_CONFORMS: u16 = 0;
/// Destination "every local APIC".
const ALL_LAPICS: u8 = 0xff;

/// Bus 0 is PCI (where chv's devices are), bus 1 the ISA legacy devices.
const PCI_BUS_ID: u8 = 0;
const ISA_BUS_ID: u8 = 1;
/// ISA IRQs routed to the IO-APIC pin of the same number.
const ISA_IRQS: u8 = 16;

/// Where the table may go: from the EBDA to the ACPI tables (reserved in
/// the e820 map).
const AREA_END: u64 = layout::ACPI_START;

/// Writes the MP floating pointer and configuration table for `cpus`
/// vCPUs (APIC ids 0..cpus, vCPU 0 the bootstrap processor) and an IO-APIC
/// with id `ioapic_id`.
pub fn setup_mptable(mem: &GuestMemoryMmap, cpus: u8, ioapic_id: u8) -> Result<(), BootError> {
    let table = build(cpus, ioapic_id, layout::EBDA_START);
    let end = layout::EBDA_START + table.len() as u64;
    if end > AREA_END {
        return Err(BootError::MpTableTooLarge {
            size: table.len(),
            available: (AREA_END - layout::EBDA_START) as usize,
        });
    }
    mem.write_slice(&table, GuestAddress(layout::EBDA_START))
        .map_err(|source| BootError::GuestWrite {
            what: "MP table",
            source,
        })
}

/// The floating pointer followed by the configuration table, for `base`.
fn build(cpus: u8, ioapic_id: u8, base: u64) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let mut e = [0u8; PROCESSOR_ENTRY_LEN];
        e[0] = ENTRY_PROCESSOR;
        e[1] = id;
        e[2] = LAPIC_VERSION;
        e[3] = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        e[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&e);
        count += 1;
    }
    for (id, name) in [(PCI_BUS_ID, b"PCI   "), (ISA_BUS_ID, b"ISA   ")] {
        let mut e = [0u8; SHORT_ENTRY_LEN];
        e[0] = ENTRY_BUS;
        e[1] = id;
        e[2..8].copy_from_slice(name);
        entries.extend_from_slice(&e);
        count += 1;
    }
    let mut e = [0u8; SHORT_ENTRY_LEN];
    e[0] = ENTRY_IOAPIC;
    e[1] = ioapic_id;
    e[2] = IOAPIC_VERSION;
    e[3] = IOAPIC_ENABLED;
    e[4..8].copy_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    entries.extend_from_slice(&e);
    count += 1;
    for irq in 0..ISA_IRQS {
        entries.extend_from_slice(&interrupt_entry(
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            irq,
            ioapic_id,
            irq,
        ));
        count += 1;
    }
    // LINT0 takes the 8259's ExtINT, LINT1 the NMI, on every CPU.
    entries.extend_from_slice(&interrupt_entry(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        ALL_LAPICS,
        0,
    ));
    entries.extend_from_slice(&interrupt_entry(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        ALL_LAPICS,
        1,
    ));
    count += 2;

    let config_len = CONFIG_HEADER_LEN + entries.len();
    let mut config = vec![0u8; CONFIG_HEADER_LEN];
    config[0..4].copy_from_slice(CONFIG_SIGNATURE);
    config[4..6].copy_from_slice(&(config_len as u16).to_le_bytes());
    config[6] = SPEC_REV;
    config[8..16].copy_from_slice(b"CHV     ");
    config[16..28].copy_from_slice(b"CHV-MICROVM ");
    config[34..36].copy_from_slice(&count.to_le_bytes());
    config[36..40].copy_from_slice(&(layout::APIC_START as u32).to_le_bytes());
    config.extend_from_slice(&entries);
    config[7] = checksum(&config);

    let mut floating = [0u8; FLOATING_LEN];
    floating[0..4].copy_from_slice(FLOATING_SIGNATURE);
    // The layout keeps the table below 1 MiB, so the address fits 32 bits.
    floating[4..8].copy_from_slice(&((base + FLOATING_LEN as u64) as u32).to_le_bytes());
    floating[8] = 1; // length in 16-byte units
    floating[9] = SPEC_REV;
    floating[10] = checksum(&floating);

    let mut out = floating.to_vec();
    out.extend_from_slice(&config);
    out
}

/// An IO (type 3) or local (type 4) interrupt assignment entry.
fn interrupt_entry(kind: u8, int_type: u8, src_irq: u8, dst_id: u8, dst_pin: u8) -> [u8; 8] {
    let mut e = [0u8; SHORT_ENTRY_LEN];
    e[0] = kind;
    e[1] = int_type;
    e[2..4].copy_from_slice(&INT_FLAGS_CONFORMS.to_le_bytes());
    e[4] = if kind == ENTRY_IO_INTERRUPT {
        ISA_BUS_ID
    } else {
        0
    };
    e[5] = src_irq;
    e[6] = dst_id;
    e[7] = dst_pin;
    e
}

/// The byte that makes `bytes` sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn floating_pointer_and_table_are_valid() {
        let t = build(2, 2, layout::EBDA_START);
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0);
        let physptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
        assert_eq!(u64::from(physptr), layout::EBDA_START + 16);
        let config = &t[16..];
        assert_eq!(&config[0..4], b"PCMP");
        let len = u16::from_le_bytes(config[4..6].try_into().unwrap());
        assert_eq!(usize::from(len), config.len());
        assert_eq!(sum(config), 0);
        // 2 CPUs + 2 buses + 1 IO-APIC + 16 ISA IRQs + 2 local interrupts.
        assert_eq!(u16::from_le_bytes(config[34..36].try_into().unwrap()), 23);
        // First CPU is the enabled bootstrap processor, the second only enabled.
        assert_eq!(config[44], ENTRY_PROCESSOR);
        assert_eq!(config[44 + 3], CPU_ENABLED | CPU_BOOTSTRAP);
        assert_eq!(config[64 + 1], 1);
        assert_eq!(config[64 + 3], CPU_ENABLED);
    }

    #[test]
    fn isa_irqs_route_to_the_same_ioapic_pin() {
        let t = build(1, 7, layout::EBDA_START);
        let entries = &t[16 + CONFIG_HEADER_LEN + PROCESSOR_ENTRY_LEN..];
        let io: Vec<&[u8]> = entries
            .chunks(SHORT_ENTRY_LEN)
            .filter(|e| e[0] == ENTRY_IO_INTERRUPT)
            .collect();
        assert_eq!(io.len(), usize::from(ISA_IRQS));
        for (irq, e) in io.iter().enumerate() {
            assert_eq!(
                (e[4], e[5], e[6], e[7]),
                (ISA_BUS_ID, irq as u8, 7, irq as u8)
            );
        }
    }

    #[test]
    fn the_largest_vm_fits_below_the_acpi_tables() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        setup_mptable(&mem, 254, 254).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(layout::EBDA_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
    }

    #[test]
    fn missing_guest_memory_is_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            setup_mptable(&mem, 1, 1),
            Err(BootError::GuestWrite { .. })
        ));
    }
}
