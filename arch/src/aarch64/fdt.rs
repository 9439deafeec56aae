//! The device tree an aarch64 guest boots with: memory, CPUs, PSCI, the
//! architected timer, the GICv3 and its ITS (or MSI frame), the PL011 UART,
//! the PL031 RTC
//! and the generic ECAM PCI host bridge, plus `/chosen` (command line,
//! initramfs, console).

use vm_fdt::{FdtWriter, FdtWriterResult};

use super::layout::*;

/// Phandles of the nodes other nodes point at.
const PHANDLE_GIC: u32 = 1;
const PHANDLE_ITS: u32 = 2;
const PHANDLE_CLOCK: u32 = 3;
const PHANDLE_V2M: u32 = 4;

/// Interrupt specifier cells (GIC binding): type, number, flags.
const GIC_FDT_IRQ_TYPE_SPI: u32 = 0;
const GIC_FDT_IRQ_TYPE_PPI: u32 = 1;
const IRQ_TYPE_EDGE_RISING: u32 = 1;
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;

/// Architected timer PPIs: secure and non-secure physical, virtual,
/// hypervisor (the GIC binding numbers PPIs from 0 = INTID 16).
const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
/// GIC maintenance interrupt (PPI 9).
const GIC_MAINTENANCE_PPI: u32 = 9;

/// PCI address-space codes of the `ranges` property (bits 24-25 of the
/// first cell): 32-bit and 64-bit memory.
const PCI_RANGE_MMIO32: u32 = 0x0200_0000;
const PCI_RANGE_MMIO64: u32 = 0x0300_0000;

/// What the device tree describes that is not fixed by the layout.
pub struct FdtConfig<'a> {
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Guest RAM in bytes (from [`RAM_START`]).
    pub ram_size: u64,
    /// vCPUs at boot.
    pub vcpus: u8,
    /// Guest-physical start and end (exclusive) of the initramfs.
    pub initrd: Option<(u64, u64)>,
    /// Where PCI MSIs go.
    pub msi: MsiController,
}

/// The MSI controller the PCI host bridge names as its MSI parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsiController {
    /// The GICv3 ITS (`msi-map`: requester id = ITS device id).
    Its,
    /// A GICv2m-style MSI frame under the GIC node (`msi-parent`); Linux's
    /// GICv3 driver probes it when the distributor has no LPIs.
    V2m,
}

/// The MPIDR KVM gives vCPU `id` (affinity 0 holds 16 CPUs, affinity 1 the
/// rest): the `reg` of its `cpu` node.
pub fn vcpu_mpidr(id: u8) -> u64 {
    let id = u64::from(id);
    ((id >> 4) << 8) | (id & 0xf)
}

fn high(v: u64) -> u32 {
    (v >> 32) as u32
}

fn low(v: u64) -> u32 {
    v as u32
}

/// Builds the flattened device tree for `cfg`.
pub fn create_fdt(cfg: &FdtConfig<'_>) -> FdtWriterResult<Vec<u8>> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_string("model", "chv")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", PHANDLE_GIC)?;

    chosen(&mut fdt, cfg)?;
    memory(&mut fdt, cfg.ram_size)?;
    cpus(&mut fdt, cfg.vcpus)?;
    psci(&mut fdt)?;
    timer(&mut fdt)?;
    gic(&mut fdt, cfg.vcpus, cfg.msi)?;
    clock(&mut fdt)?;
    uart(&mut fdt)?;
    rtc(&mut fdt)?;
    pci(&mut fdt, cfg.msi)?;

    fdt.end_node(root)?;
    fdt.finish()
}

fn chosen(fdt: &mut FdtWriter, cfg: &FdtConfig<'_>) -> FdtWriterResult<()> {
    let node = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", cfg.cmdline)?;
    fdt.property_string("stdout-path", &format!("/pl011@{UART_START:x}"))?;
    if let Some((start, end)) = cfg.initrd {
        fdt.property_u64("linux,initrd-start", start)?;
        fdt.property_u64("linux,initrd-end", end)?;
    }
    // Keep the BARs chv assigned: Linux need not re-program them.
    fdt.property_u32("linux,pci-probe-only", 1)?;
    fdt.end_node(node)
}

fn memory(fdt: &mut FdtWriter, ram_size: u64) -> FdtWriterResult<()> {
    let node = fdt.begin_node(&format!("memory@{RAM_START:x}"))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &[RAM_START, ram_size])?;
    fdt.end_node(node)
}

fn cpus(fdt: &mut FdtWriter, vcpus: u8) -> FdtWriterResult<()> {
    let node = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for id in 0..vcpus {
        let mpidr = vcpu_mpidr(id);
        let cpu = fdt.begin_node(&format!("cpu@{mpidr:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_u32("reg", mpidr as u32)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(node)
}

fn psci(fdt: &mut FdtWriter) -> FdtWriterResult<()> {
    let node = fdt.begin_node("psci")?;
    fdt.property_string_list("compatible", vec!["arm,psci-0.2".into(), "arm,psci".into()])?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(node)
}

fn timer(fdt: &mut FdtWriter) -> FdtWriterResult<()> {
    let node = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    fdt.property_null("always-on")?;
    let mut irqs = Vec::with_capacity(12);
    for ppi in TIMER_PPIS {
        irqs.extend_from_slice(&[GIC_FDT_IRQ_TYPE_PPI, ppi, IRQ_TYPE_LEVEL_HIGH]);
    }
    fdt.property_array_u32("interrupts", &irqs)?;
    fdt.end_node(node)
}

fn gic(fdt: &mut FdtWriter, vcpus: u8, msi: MsiController) -> FdtWriterResult<()> {
    let node = fdt.begin_node(&format!("intc@{GIC_DIST_START:x}"))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    let redist_size = GIC_REDIST_SIZE * u64::from(vcpus);
    fdt.property_array_u64(
        "reg",
        &[GIC_DIST_START, GIC_DIST_SIZE, GIC_REDIST_START, redist_size],
    )?;
    fdt.property_array_u32(
        "interrupts",
        &[
            GIC_FDT_IRQ_TYPE_PPI,
            GIC_MAINTENANCE_PPI,
            IRQ_TYPE_LEVEL_HIGH,
        ],
    )?;
    fdt.property_phandle(PHANDLE_GIC)?;
    match msi {
        MsiController::Its => {
            let its_node = fdt.begin_node(&format!("msic@{GIC_ITS_START:x}"))?;
            fdt.property_string("compatible", "arm,gic-v3-its")?;
            fdt.property_null("msi-controller")?;
            fdt.property_u32("#msi-cells", 1)?;
            fdt.property_array_u64("reg", &[GIC_ITS_START, GIC_ITS_SIZE])?;
            fdt.property_phandle(PHANDLE_ITS)?;
            fdt.end_node(its_node)?;
        }
        MsiController::V2m => {
            // The frame's MSI_TYPER register gives its SPIs.
            let v2m = fdt.begin_node(&format!("v2m@{GIC_V2M_START:x}"))?;
            fdt.property_string("compatible", "arm,gic-v2m-frame")?;
            fdt.property_null("msi-controller")?;
            fdt.property_array_u64("reg", &[GIC_V2M_START, GIC_V2M_SIZE])?;
            fdt.property_phandle(PHANDLE_V2M)?;
            fdt.end_node(v2m)?;
        }
    }
    fdt.end_node(node)
}

/// The APB clock the PrimeCell devices (PL011, PL031) name.
fn clock(fdt: &mut FdtWriter) -> FdtWriterResult<()> {
    let node = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", 24_000_000)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_phandle(PHANDLE_CLOCK)?;
    fdt.end_node(node)
}

fn uart(fdt: &mut FdtWriter) -> FdtWriterResult<()> {
    let node = fdt.begin_node(&format!("pl011@{UART_START:x}"))?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl011".into(), "arm,primecell".into()],
    )?;
    fdt.property_array_u64("reg", &[UART_START, PLATFORM_DEVICE_SIZE])?;
    fdt.property_array_u32(
        "interrupts",
        &[GIC_FDT_IRQ_TYPE_SPI, UART_IRQ, IRQ_TYPE_EDGE_RISING],
    )?;
    fdt.property_array_u32("clocks", &[PHANDLE_CLOCK, PHANDLE_CLOCK])?;
    fdt.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
    fdt.end_node(node)
}

fn rtc(fdt: &mut FdtWriter) -> FdtWriterResult<()> {
    let node = fdt.begin_node(&format!("pl031@{RTC_START:x}"))?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl031".into(), "arm,primecell".into()],
    )?;
    fdt.property_array_u64("reg", &[RTC_START, PLATFORM_DEVICE_SIZE])?;
    fdt.property_array_u32(
        "interrupts",
        &[GIC_FDT_IRQ_TYPE_SPI, RTC_IRQ, IRQ_TYPE_LEVEL_HIGH],
    )?;
    fdt.property_u32("clocks", PHANDLE_CLOCK)?;
    fdt.property_string("clock-names", "apb_pclk")?;
    fdt.end_node(node)
}

fn pci(fdt: &mut FdtWriter, msi: MsiController) -> FdtWriterResult<()> {
    let node = fdt.begin_node(&format!("pcie@{PCI_ECAM_START:x}"))?;
    fdt.property_string("compatible", "pci-host-ecam-generic")?;
    fdt.property_string("device_type", "pci")?;
    fdt.property_u32("#address-cells", 3)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_array_u32("bus-range", &[0, 0])?;
    fdt.property_u32("linux,pci-domain", 0)?;
    fdt.property_array_u64("reg", &[PCI_ECAM_START, PCI_ECAM_SIZE])?;
    let mmio32_size = PCI_MMIO32_END - PCI_MMIO32_START;
    fdt.property_array_u32(
        "ranges",
        &[
            PCI_RANGE_MMIO32,
            high(PCI_MMIO32_START),
            low(PCI_MMIO32_START),
            high(PCI_MMIO32_START),
            low(PCI_MMIO32_START),
            high(mmio32_size),
            low(mmio32_size),
            PCI_RANGE_MMIO64,
            high(PCI_MMIO64_START),
            low(PCI_MMIO64_START),
            high(PCI_MMIO64_START),
            low(PCI_MMIO64_START),
            high(PCI_MMIO64_SIZE),
            low(PCI_MMIO64_SIZE),
        ],
    )?;
    match msi {
        // Requester ids 0-0xffff map 1:1 onto ITS device ids.
        MsiController::Its => fdt.property_array_u32("msi-map", &[0, PHANDLE_ITS, 0, 0x1_0000])?,
        MsiController::V2m => fdt.property_u32("msi-parent", PHANDLE_V2M)?,
    }
    fdt.property_null("dma-coherent")?;
    fdt.end_node(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(msi: MsiController) -> Vec<u8> {
        create_fdt(&FdtConfig {
            cmdline: "console=ttyAMA0",
            ram_size: 256 << 20,
            vcpus: 2,
            initrd: Some((0x4200_0000, 0x4210_0000)),
            msi,
        })
        .unwrap()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn the_tree_is_a_valid_blob_with_every_node() {
        let blob = config(MsiController::Its);
        assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed], "FDT magic");
        let total = u32::from_be_bytes(blob[4..8].try_into().unwrap()) as usize;
        assert_eq!(total, blob.len());
        assert!(blob.len() as u64 <= FDT_MAX_SIZE);
        for name in [
            &b"memory@40000000"[..],
            b"cpu@0",
            b"cpu@1",
            b"arm,psci-0.2",
            b"arm,armv8-timer",
            b"arm,gic-v3",
            b"arm,gic-v3-its",
            b"arm,pl011",
            b"arm,pl031",
            b"pci-host-ecam-generic",
            b"msi-map",
            b"console=ttyAMA0",
            b"linux,initrd-start",
        ] {
            assert!(contains(&blob, name), "{}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn without_an_its_pci_msis_go_to_the_v2m_frame() {
        let blob = config(MsiController::V2m);
        assert!(!contains(&blob, b"arm,gic-v3-its"));
        assert!(!contains(&blob, b"msi-map"));
        assert!(!contains(&blob, b"#msi-cells"));
        assert!(contains(&blob, b"v2m@8080000"));
        assert!(contains(&blob, b"arm,gic-v2m-frame"));
        assert!(contains(&blob, b"msi-parent"));
        assert!(contains(&blob, b"msi-controller"));
        let its = config(MsiController::Its);
        assert!(!contains(&its, b"arm,gic-v2m-frame"));
        assert!(!contains(&its, b"msi-parent"));
    }

    #[test]
    fn mpidrs_follow_kvms_affinity_split() {
        assert_eq!(vcpu_mpidr(0), 0);
        assert_eq!(vcpu_mpidr(15), 0xf);
        assert_eq!(vcpu_mpidr(16), 0x100);
        assert_eq!(vcpu_mpidr(33), 0x201);
    }
}
