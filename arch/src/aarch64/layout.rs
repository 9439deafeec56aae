//! The aarch64 guest-physical memory map.
//!
//! ```text
//! 0x0800_0000  GICv3 distributor (64 KiB)
//! 0x0808_0000  GICv3 ITS (128 KiB), or in its place, when the host's KVM
//!              has no ITS, a GICv2m-style MSI frame (4 KiB)
//! 0x080a_0000  GICv3 redistributors (128 KiB per vCPU, up to 0x0900_0000)
//! 0x0900_0000  PL011 UART (4 KiB)
//! 0x0901_0000  PL031 RTC (4 KiB)
//! 0x1000_0000  PCI 32-bit MMIO window (512 MiB)
//! 0x3000_0000  PCI ECAM, bus 0 (1 MiB)
//! 0x4000_0000  RAM (1 GiB onwards, as Cloud Hypervisor and Firecracker)
//! 0x80_0000_0000  PCI 64-bit MMIO window (64 GiB), below the 40-bit IPA limit
//! ```
//!
//! In RAM: the kernel `Image` at RAM start plus its text offset, the
//! initramfs after the kernel (2 MiB aligned), the device tree in the last
//! 2 MiB of RAM.

/// GICv3 distributor.
pub const GIC_DIST_START: u64 = 0x0800_0000;
/// Size of the distributor frame.
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// GICv3 ITS (its control frame and translater frame).
pub const GIC_ITS_START: u64 = 0x0808_0000;
/// Size of the ITS frames.
pub const GIC_ITS_SIZE: u64 = 0x2_0000;
/// The GICv2m-style MSI frame chv emulates where the GICv3 has no ITS (in
/// the ITS's place).
pub const GIC_V2M_START: u64 = GIC_ITS_START;
/// Size of the MSI frame.
pub const GIC_V2M_SIZE: u64 = 0x1000;
/// First redistributor (RD and SGI frames of vCPU 0).
pub const GIC_REDIST_START: u64 = 0x080a_0000;
/// Redistributor frames of one vCPU.
pub const GIC_REDIST_SIZE: u64 = 0x2_0000;
/// End of the redistributor area.
pub const GIC_REDIST_END: u64 = 0x0900_0000;
/// The most vCPUs the redistributor area holds.
pub const MAX_VCPUS: u8 = ((GIC_REDIST_END - GIC_REDIST_START) / GIC_REDIST_SIZE) as u8;

/// Interrupts the distributor handles, including the 32 private ones.
pub const GIC_NR_IRQS: u32 = 128;
/// First shared peripheral interrupt (SPI) number; GSI n is SPI n.
pub const GIC_SPI_BASE: u32 = 32;

/// The SPIs the MSI frame hands out (INTIDs): the upper half of the
/// distributor's SPIs; the platform devices' pins are below.
pub const GIC_V2M_FIRST_SPI: u32 = 64;
/// How many SPIs the MSI frame hands out: every MSI-X vector of every PCI
/// device takes one.
pub const GIC_V2M_SPIS: u32 = GIC_NR_IRQS - GIC_V2M_FIRST_SPI;

/// PL011 UART.
pub const UART_START: u64 = 0x0900_0000;
/// GSI (SPI number) of the UART.
pub const UART_IRQ: u32 = 1;
/// PL031 RTC.
pub const RTC_START: u64 = 0x0901_0000;
/// GSI (SPI number) of the RTC.
pub const RTC_IRQ: u32 = 2;
/// Size of each platform device's MMIO frame.
pub const PLATFORM_DEVICE_SIZE: u64 = 0x1000;

/// PCI 32-bit BAR window.
pub const PCI_MMIO32_START: u64 = 0x1000_0000;
/// End (exclusive) of the 32-bit BAR window.
pub const PCI_MMIO32_END: u64 = 0x3000_0000;
/// PCI ECAM for bus 0.
pub const PCI_ECAM_START: u64 = 0x3000_0000;
/// ECAM size: one bus.
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// PCI 64-bit BAR window.
pub const PCI_MMIO64_START: u64 = 0x80_0000_0000;
/// Size of the 64-bit BAR window.
pub const PCI_MMIO64_SIZE: u64 = 0x10_0000_0000;

/// Start of guest RAM.
pub const RAM_START: u64 = 0x4000_0000;
/// Largest guest RAM: up to the 64-bit PCI window.
pub const MAX_RAM_SIZE: u64 = PCI_MMIO64_START - RAM_START;

/// Alignment of the kernel base and of the initramfs.
pub const KERNEL_ALIGN: u64 = 2 << 20;
/// Largest device tree, placed in the last 2 MiB of RAM.
pub const FDT_MAX_SIZE: u64 = 2 << 20;

const _: () = assert!(GIC_DIST_START + GIC_DIST_SIZE <= GIC_ITS_START);
const _: () = assert!(GIC_ITS_START + GIC_ITS_SIZE <= GIC_REDIST_START);
const _: () = assert!(GIC_V2M_START + GIC_V2M_SIZE <= GIC_ITS_START + GIC_ITS_SIZE);
const _: () = assert!(GIC_SPI_BASE + UART_IRQ < GIC_V2M_FIRST_SPI);
const _: () = assert!(GIC_SPI_BASE + RTC_IRQ < GIC_V2M_FIRST_SPI);
const _: () = assert!(GIC_REDIST_END <= UART_START);
const _: () = assert!(RTC_START + PLATFORM_DEVICE_SIZE <= PCI_MMIO32_START);
const _: () = assert!(PCI_MMIO32_END <= PCI_ECAM_START);
const _: () = assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= RAM_START);
const _: () = assert!(PCI_MMIO64_START + PCI_MMIO64_SIZE <= 1 << 40);
