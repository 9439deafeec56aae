//! Fixed guest-physical addresses used when building an x86_64 guest.
//!
//! Low memory (below 1 MiB) holds the small boot structures; the kernel and
//! initramfs go above 1 MiB; the 32-bit MMIO hole below 4 GiB is left for the
//! interrupt controllers and device BARs, and RAM that does not fit below the
//! hole continues at 4 GiB.

/// Global descriptor table used for the boot vCPU state.
pub const BOOT_GDT_START: u64 = 0x500;
/// Maximum number of GDT entries we write.
pub const BOOT_GDT_MAX: usize = 4;
/// Interrupt descriptor table (empty) loaded at boot.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry per initramfs).
pub const MODLIST_START: u64 = 0x6040;
/// PVH e820-style memory map entries.
pub const MEMMAP_START: u64 = 0x6100;
/// Most memory map entries we describe to the guest.
pub const MEMMAP_MAX_ENTRIES: usize = 128;
/// Linux `boot_params` ("zero page") for the 64-bit boot protocol.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Boot stack top for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page map of the identity page tables.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table of the identity page tables.
pub const PDPTE_START: u64 = 0xa000;
/// First page directory of the identity page tables (four follow, 4 GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we accept, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area; RAM below it is reported usable.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables (RSDP first) live in the BIOS read-only area.
pub const ACPI_START: u64 = 0xe0000;
/// End of the BIOS area reserved for the ACPI tables.
pub const ACPI_END: u64 = VMGENID_START;
/// The 16-byte VM generation ID (`acpi/vmgenid.rs`), alone in the last
/// page before the SMBIOS area, so that rewriting it on a restore copies
/// one page of a clone's memory and no table.
pub const VMGENID_START: u64 = SMBIOS_START - 0x1000;
/// SMBIOS entry point and tables: the F segment, which Linux scans for the
/// `_SM3_` anchor.
pub const SMBIOS_START: u64 = 0xf0000;
/// End of the SMBIOS area (and of the BIOS area).
pub const SMBIOS_END: u64 = 0x100000;
/// First byte of "high" RAM, where kernels are loaded.
pub const HIGH_RAM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole (PCI BARs, IOAPIC, LAPIC).
pub const MEM_32BIT_GAP_START: u64 = 0xc000_0000;
/// Size of the 32-bit MMIO hole.
pub const MEM_32BIT_GAP_SIZE: u64 = 0x4000_0000;
/// Where RAM continues above the hole.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;

/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS placement (three pages) inside the hole, out of the way of RAM.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity map page for real mode emulation, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Legacy COM1 port base and its ISA interrupt line.
pub const COM1_PORT: u16 = 0x3f8;
/// Interrupt line of COM1.
pub const COM1_IRQ: u32 = 4;
/// i8042 controller command/status port.
pub const I8042_PORT: u16 = 0x60;
/// CMOS/RTC index/data ports.
pub const CMOS_PORT: u16 = 0x70;
/// ACPI fixed-hardware replacement: sleep control/status and reset registers
/// (one byte port, as FADT describes it).
pub const ACPI_PM_PORT: u16 = 0x3c0;
/// ACPI PM timer (24-bit, 3.579545 MHz), read through FADT's X_PM_TMR_BLK.
pub const ACPI_PM_TIMER_PORT: u16 = 0x608;

// ACPI Generic Event Device and PCI hotplug (see `acpi.rs`): port-I/O
// register blocks below the PCI I/O window, away from every legacy port.

/// IOAPIC input (GSI) of the ACPI Generic Event Device: ISA IRQ 5, free on
/// this platform, edge-triggered and active-high (the ISA default, so no
/// MADT override is needed). The VMM raises it through a KVM irqfd.
pub const GED_IRQ: u32 = 5;
/// The GED's event register (32 bits, read-to-clear), read by its `_EVT`.
pub const GED_PORT: u16 = 0x0b00;
/// Bytes of the GED register block.
pub const GED_PORT_SIZE: u16 = 4;
/// The PCI hotplug registers `PCIU` (+0), `PCID` (+4) and `B0EJ` (+8).
pub const PCI_HOTPLUG_PORT: u16 = 0x0b10;
/// Bytes of the PCI hotplug register block.
pub const PCI_HOTPLUG_PORT_SIZE: u16 = 12;
/// The CPU hotplug registers `CSEL` (+0) and `CSTS` (+4).
pub const CPU_HOTPLUG_PORT: u16 = 0x0b20;
/// Bytes of the CPU hotplug register block.
pub const CPU_HOTPLUG_PORT_SIZE: u16 = 8;
/// The memory hotplug registers `MSEL`, `MBLO`, `MBHI`, `MLLO`, `MLHI`
/// and `MSTS` (+0 to +0x14).
pub const MEMORY_HOTPLUG_PORT: u16 = 0x0b30;
/// Bytes of the memory hotplug register block.
pub const MEMORY_HOTPLUG_PORT_SIZE: u16 = 24;
/// Hot-added RAM goes above 4 GiB, after the boot RAM, and below the
/// 64-bit PCI window; each range is aligned to Linux's x86_64 memory
/// block size (128 MiB), the granule it can add memory in.
pub const MEMORY_HOTPLUG_ALIGN: u64 = 128 << 20;

// PCI. Bus 0 only; all windows stay clear of the IOAPIC (0xfec0_0000),
// the LAPIC (0xfee0_0000) and KVM's TSS/identity map (0xfffb_c000..).

/// ECAM (MMCONFIG) base for PCI segment 0, described by the MCFG table.
pub const PCI_MMCONFIG_START: u64 = 0xe000_0000;
/// ECAM size: 1 MiB covers bus 0 (32 devices × 8 functions × 4 KiB).
pub const PCI_MMCONFIG_SIZE: u64 = 0x10_0000;
/// Most PCI segments (Cloud Hypervisor's limit); their ECAM windows follow
/// one another from `PCI_MMCONFIG_START`.
pub const PCI_MAX_SEGMENTS: u16 = 96;
/// Start of the 32-bit PCI MMIO window (BARs below 4 GiB).
pub const PCI_MMIO32_START: u64 = MEM_32BIT_GAP_START;
/// End (exclusive) of the 32-bit PCI MMIO window: ECAM follows it.
pub const PCI_MMIO32_END: u64 = PCI_MMCONFIG_START;
/// Start of the 64-bit PCI MMIO window: a fixed 64 GiB base, so the ACPI
/// tables do not depend on the RAM size. RAM above 4 GiB ends at
/// `4 GiB + (ram - 3 GiB)`, so guests with up to 63 GiB of RAM fit below
/// it; the VMM must refuse larger memory sizes (or move this window).
pub const PCI_MMIO64_START: u64 = 0x10_0000_0000;
/// Size of the 64-bit PCI MMIO window (64 GiB, ending at 128 GiB, within
/// the 39-bit physical address width of common hosts).
pub const PCI_MMIO64_SIZE: u64 = 0x10_0000_0000;
/// Start of device memory above the PCI windows (virtio-pmem ranges).
pub const DEVICE_MEMORY_START: u64 = PCI_MMIO64_START + PCI_MMIO64_SIZE;
/// The legacy PCI configuration ports 0xCF8..=0xCFF (mechanism #1).
pub const PCI_CONFIG_IO_PORT: u16 = 0xcf8;
/// Number of configuration ports.
pub const PCI_CONFIG_IO_PORT_SIZE: u16 = 8;
/// Start of the I/O port window forwarded to PCI (up to 0xffff).
pub const PCI_IO_WINDOW_START: u16 = 0x0d00;

// The PCI windows stay inside the 32-bit hole, in order, below the IOAPIC,
// and the 64-bit window starts above the RAM of a 63 GiB guest.
const _: () = assert!(PCI_MMIO32_START >= MEM_32BIT_GAP_START);
const _: () = assert!(PCI_MMIO32_END <= PCI_MMCONFIG_START);
const _: () =
    assert!(PCI_MMCONFIG_START + PCI_MAX_SEGMENTS as u64 * PCI_MMCONFIG_SIZE <= IOAPIC_START);
const _: () = assert!(RAM_64BIT_START + ((63 << 30) - MEM_32BIT_GAP_START) <= PCI_MMIO64_START);
// The GED and hotplug blocks sit between the PM timer and the PCI I/O window.
const _: () = assert!(ACPI_PM_TIMER_PORT as u32 + 4 <= GED_PORT as u32);
const _: () = assert!(GED_PORT as u32 + GED_PORT_SIZE as u32 <= PCI_HOTPLUG_PORT as u32);
const _: () =
    assert!(PCI_HOTPLUG_PORT as u32 + PCI_HOTPLUG_PORT_SIZE as u32 <= CPU_HOTPLUG_PORT as u32);
const _: () =
    assert!(CPU_HOTPLUG_PORT as u32 + CPU_HOTPLUG_PORT_SIZE as u32 <= MEMORY_HOTPLUG_PORT as u32);
const _: () = assert!(
    MEMORY_HOTPLUG_PORT as u32 + MEMORY_HOTPLUG_PORT_SIZE as u32 <= PCI_IO_WINDOW_START as u32
);
