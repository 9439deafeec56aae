//! PCI: the root bus, config-space access (0xCF8/0xCFC and ECAM), the
//! type-0 configuration header with its BARs and capabilities, and MSI-X.
//!
//! Devices implement [`PciDevice`]; the bus routes config accesses to them by
//! slot and BAR accesses arrive through the MMIO [`crate::Bus`] where the
//! VMM placed each BAR.

use std::sync::{Arc, Mutex};

pub mod allocator;
pub mod bus;
pub mod configuration;
pub mod msix;

pub use allocator::{AddressAllocator, AllocatorError, PciBarAllocator};
pub use bus::{
    AssignedBar, BarReprogramCallback, PciBarRegion, PciBus, PciBusError, PciConfigIo,
    PciConfigMmio, PciDeviceInfo, PciHostBridge,
};
pub use configuration::{
    ConfigError, PciBarState, PciConfiguration, PciConfigurationState, PciHeaderIds,
};
pub use msix::{MsixEntryState, MsixError, MsixTable, MsixTableState};

/// A BAR the device asks for when it is added to the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRequest {
    /// BAR index (0..=5; a 64-bit BAR uses `index` and `index + 1`).
    pub index: u8,
    /// Size in bytes (power of two, at least 4 KiB for memory BARs).
    pub size: u64,
    /// 64-bit memory BAR (placed above 4 GiB when possible) or 32-bit.
    pub is_64bit: bool,
    /// Prefetchable memory.
    pub prefetchable: bool,
}

/// A BAR the guest moved by reprogramming its address register; the VMM
/// moves the device's MMIO range (and anything registered on it, such as
/// ioeventfds) from `old_base` to `new_base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarReprogram {
    /// BAR index.
    pub index: u8,
    /// Address the BAR was decoded at.
    pub old_base: u64,
    /// Address the guest wrote.
    pub new_base: u64,
    /// BAR size.
    pub len: u64,
}

/// A device on the PCI bus.
///
/// Config offsets are byte offsets into the 4 KiB extended config space;
/// accesses are 1, 2 or 4 bytes wide and never cross a dword. Everything
/// here is guest-controlled: out-of-range or odd accesses must be ignored
/// (reads return all-ones), never panic.
pub trait PciDevice: Send {
    /// Reads `data.len()` bytes of config space at `offset`.
    fn config_read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes config space; returns the BARs the write moved.
    fn config_write(&mut self, offset: u64, data: &[u8]) -> Vec<BarReprogram>;
    /// Guest read inside BAR `index` at `offset`.
    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]);
    /// Guest write inside BAR `index` at `offset`.
    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]);
    /// BARs the device needs; [`PciBus::add_device`] allocates and maps
    /// them. Default: none.
    fn bar_requests(&self) -> Vec<BarRequest> {
        Vec::new()
    }
    /// Programs BAR `index` to its initial address (called by
    /// [`PciBus::add_device`] with a size-aligned address). Default: no-op.
    fn set_bar_base(&mut self, index: u8, base: u64) {
        let _ = (index, base);
    }
}

/// Shared handle to a PCI device.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Where MSI messages go: implemented by the VMM on top of KVM (GSI routes +
/// irqfds), by tests with a recorder.
pub trait MsiInterruptGroup: Send + Sync {
    /// The guest programmed (or masked/unmasked) MSI-X vector `vector`.
    fn update(&self, vector: u16, address: u64, data: u32, masked: bool) -> std::io::Result<()>;
    /// Delivers the message programmed for `vector`.
    fn trigger(&self, vector: u16) -> std::io::Result<()>;
}
