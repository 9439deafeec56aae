//! The root PCI bus (bus 0, 32 slots, function 0 only) and the two ways a
//! guest reaches its config space: the 0xCF8/0xCFC port pair
//! ([`PciConfigIo`]) and ECAM ([`PciConfigMmio`]).
//!
//! BARs are mapped on the VMM's MMIO [`Bus`] as [`PciBarRegion`]s. When a
//! config write moves a BAR, the bus moves the region and then calls the
//! reprogram callback so the VMM can move what KVM holds (ioeventfds).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::allocator::{AllocatorError, PciBarAllocator};
use super::configuration::{PciConfiguration, PciHeaderIds, EXTENDED_CONFIG_SPACE_SIZE};
use super::{BarReprogram, PciDevice, SharedPciDevice};
use crate::bus::{Bus, BusDevice, BusError};

/// Slots on bus 0.
pub const NUM_SLOTS: usize = 32;
/// Enable bit of the 0xCF8 address register.
const CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;
/// Bytes of ECAM space per bus.
pub const ECAM_BUS_SIZE: u64 = 1 << 20;

/// Called after a BAR moved, with the slot of the device and the move; the
/// VMM moves the device's ioeventfds. Runs with the PCI bus locked, so it
/// must not access the [`PciBus`] itself (locking the device is fine).
pub type BarReprogramCallback = Box<dyn Fn(u8, &BarReprogram) + Send>;

/// Errors from adding a device to the bus.
#[derive(Debug, thiserror::Error)]
pub enum PciBusError {
    /// All 32 slots are taken.
    #[error("no free PCI slot")]
    NoFreeSlot,
    /// A BAR could not be placed.
    #[error("allocating BAR {index}: {source}")]
    Allocate {
        /// BAR index.
        index: u8,
        /// Why.
        #[source]
        source: AllocatorError,
    },
    /// A BAR could not be mapped on the MMIO bus.
    #[error("mapping BAR {index}: {source}")]
    Map {
        /// BAR index.
        index: u8,
        /// Why.
        #[source]
        source: BusError,
    },
}

/// A BAR as placed by [`PciBus::add_device`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AssignedBar {
    /// BAR index.
    pub index: u8,
    /// Guest-physical base.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Where a device landed on the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDeviceInfo {
    /// Slot (device number) on bus 0.
    pub slot: u8,
    /// Its BARs.
    pub bars: Vec<AssignedBar>,
}

/// The host bridge in slot 0 (class 0x06/0x00), which lets guests that
/// sanity-check the bus (Linux's type-1 probe) find it.
pub struct PciHostBridge {
    config: PciConfiguration,
}

impl PciHostBridge {
    /// A host bridge with Intel vendor ID and a generic device ID.
    pub fn new() -> Self {
        Self {
            config: PciConfiguration::new(PciHeaderIds {
                vendor_id: 0x8086,
                device_id: 0x0d57,
                revision_id: 0,
                class_code: 0x06,
                subclass: 0x00,
                prog_if: 0,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
            }),
        }
    }
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for PciHostBridge {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn config_write(&mut self, offset: u64, data: &[u8]) -> Vec<BarReprogram> {
        self.config.write(offset, data)
    }
    fn bar_read(&mut self, _index: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _index: u8, _offset: u64, _data: &[u8]) {}
}

/// Puts one BAR of a PCI device on the MMIO bus.
pub struct PciBarRegion {
    device: SharedPciDevice,
    index: u8,
}

impl PciBarRegion {
    /// The region of BAR `index` of `device`.
    pub fn new(device: SharedPciDevice, index: u8) -> Self {
        Self { device, index }
    }
}

impl BusDevice for PciBarRegion {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar_read(self.index, offset, data);
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar_write(self.index, offset, data);
    }
}

/// PCI bus 0: devices by slot, and where their BARs are mapped.
pub struct PciBus {
    slots: Vec<Option<SharedPciDevice>>,
    mmio_bus: Arc<Bus>,
    /// (slot, BAR index) → base the region is inserted at on `mmio_bus`.
    mapped: HashMap<(u8, u8), u64>,
    on_reprogram: Option<BarReprogramCallback>,
}

impl PciBus {
    /// A bus with the host bridge in slot 0; BARs go on `mmio_bus`.
    pub fn new(mmio_bus: Arc<Bus>) -> Self {
        let mut slots: Vec<Option<SharedPciDevice>> = vec![None; NUM_SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(PciHostBridge::new())));
        Self {
            slots,
            mmio_bus,
            mapped: HashMap::new(),
            on_reprogram: None,
        }
    }

    /// Sets the callback run after each BAR move.
    pub fn set_reprogram_callback(&mut self, cb: BarReprogramCallback) {
        self.on_reprogram = Some(cb);
    }

    /// Puts `device` in the first free slot, allocates its BARs from
    /// `allocator`, programs them and maps them on the MMIO bus.
    pub fn add_device(
        &mut self,
        device: SharedPciDevice,
        allocator: &mut PciBarAllocator,
    ) -> Result<PciDeviceInfo, PciBusError> {
        self.add_device_at(None, device, allocator)
    }

    /// As [`Self::add_device`], but into `slot` when given (a restored VM
    /// puts each device back where the guest saw it); fails if it is taken.
    pub fn add_device_at(
        &mut self,
        slot: Option<u8>,
        device: SharedPciDevice,
        allocator: &mut PciBarAllocator,
    ) -> Result<PciDeviceInfo, PciBusError> {
        let slot = match slot {
            Some(s) => {
                let s = usize::from(s);
                match self.slots.get(s) {
                    Some(None) => s,
                    _ => return Err(PciBusError::NoFreeSlot),
                }
            }
            None => self
                .slots
                .iter()
                .position(Option::is_none)
                .ok_or(PciBusError::NoFreeSlot)?,
        };
        let requests = device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar_requests();
        let mut bars = Vec::with_capacity(requests.len());
        for req in &requests {
            let base = allocator
                .allocate(req)
                .map_err(|source| PciBusError::Allocate {
                    index: req.index,
                    source,
                })?;
            bars.push(AssignedBar {
                index: req.index,
                base,
                size: req.size,
            });
        }
        for (i, bar) in bars.iter().enumerate() {
            let region = Arc::new(Mutex::new(PciBarRegion::new(device.clone(), bar.index)));
            if let Err(source) = self.mmio_bus.insert(region, bar.base, bar.size) {
                for b in &bars[..i] {
                    let _ = self.mmio_bus.remove(b.base);
                }
                return Err(PciBusError::Map {
                    index: bar.index,
                    source,
                });
            }
        }
        {
            let mut dev = device.lock().unwrap_or_else(|e| e.into_inner());
            for bar in &bars {
                dev.set_bar_base(bar.index, bar.base);
            }
        }
        for bar in &bars {
            self.mapped.insert((slot as u8, bar.index), bar.base);
        }
        self.slots[slot] = Some(device);
        Ok(PciDeviceInfo {
            slot: slot as u8,
            bars,
        })
    }

    /// Takes the device out of `slot` and unmaps its BARs from the MMIO bus
    /// (hot-unplug). The host bridge in slot 0 stays; `None` when the slot
    /// is empty or out of range. BAR address space is not reused.
    pub fn remove_device(&mut self, slot: u8) -> Option<SharedPciDevice> {
        if slot == 0 {
            return None;
        }
        let device = self.slots.get_mut(usize::from(slot))?.take()?;
        let bars: Vec<(u8, u8)> = self
            .mapped
            .keys()
            .filter(|(s, _)| *s == slot)
            .copied()
            .collect();
        for key in bars {
            if let Some(base) = self.mapped.remove(&key) {
                if let Err(e) = self.mmio_bus.remove(base) {
                    log::warn!("PCI {slot:02x}: BAR {} not mapped at {base:#x}: {e}", key.1);
                }
            }
        }
        Some(device)
    }

    /// The device at `bus:dev.func`, if any (bus 0, function 0 only).
    fn device(&self, bus: u8, dev: u8, func: u8) -> Option<SharedPciDevice> {
        if bus != 0 || func != 0 {
            return None;
        }
        self.slots.get(usize::from(dev))?.clone()
    }

    /// Config read; absent functions read all-ones.
    pub fn config_read(&self, bus: u8, dev: u8, func: u8, offset: u64, data: &mut [u8]) {
        match self.device(bus, dev, func) {
            Some(d) if offset < EXTENDED_CONFIG_SPACE_SIZE => d
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_read(offset, data),
            _ => data.fill(0xff),
        }
    }

    /// Config write; moves the MMIO mapping of any BAR it reprograms and
    /// runs the reprogram callback.
    pub fn config_write(&mut self, bus: u8, dev: u8, func: u8, offset: u64, data: &[u8]) {
        let Some(d) = self.device(bus, dev, func) else {
            return;
        };
        if offset >= EXTENDED_CONFIG_SPACE_SIZE {
            return;
        }
        let moved = d
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_write(offset, data);
        for m in moved {
            self.move_bar(dev, &d, &m);
        }
    }

    fn move_bar(&mut self, slot: u8, device: &SharedPciDevice, m: &BarReprogram) {
        if let Some(old) = self.mapped.remove(&(slot, m.index)) {
            if let Err(e) = self.mmio_bus.remove(old) {
                log::warn!(
                    "PCI {slot:02x}: BAR {} not mapped at {old:#x}: {e}",
                    m.index
                );
            }
        }
        let region = Arc::new(Mutex::new(PciBarRegion::new(device.clone(), m.index)));
        match self.mmio_bus.insert(region, m.new_base, m.len) {
            Ok(()) => {
                self.mapped.insert((slot, m.index), m.new_base);
            }
            Err(e) => log::warn!(
                "PCI {slot:02x}: cannot map BAR {} at {:#x}: {e}",
                m.index,
                m.new_base
            ),
        }
        if let Some(cb) = &self.on_reprogram {
            cb(slot, m);
        }
    }
}

/// Splits a config address into (bus, device, function).
fn decode_bdf(bus: u64, dev: u64, func: u64) -> (u8, u8, u8) {
    ((bus & 0xff) as u8, (dev & 0x1f) as u8, (func & 0x7) as u8)
}

/// Configuration mechanism #1: address register at 0xCF8 (4 bytes), data
/// window at 0xCFC (4 bytes). Insert it at port 0xCF8 with length 8.
pub struct PciConfigIo {
    bus: Arc<Mutex<PciBus>>,
    address: u32,
}

impl PciConfigIo {
    /// The port pair for `bus`.
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        Self { bus, address: 0 }
    }

    /// (bus, dev, func, register) selected by the address register, or
    /// `None` when the enable bit is clear or the access leaves the dword.
    fn target(&self, data_offset: u64, len: usize) -> Option<(u8, u8, u8, u64)> {
        if self.address & CONFIG_ADDRESS_ENABLE == 0 || data_offset + len as u64 > 4 {
            return None;
        }
        let a = u64::from(self.address);
        let (b, d, f) = decode_bdf(a >> 16, a >> 11, a >> 8);
        Some((b, d, f, (a & 0xfc) + data_offset))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if offset < 4 {
            let bytes = self.address.to_le_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                *b = bytes.get(offset as usize + i).copied().unwrap_or(0xff);
            }
            return;
        }
        match self.target(offset - 4, data.len()) {
            Some((b, d, f, reg)) => self
                .bus
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_read(b, d, f, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset < 4 {
            let mut bytes = self.address.to_le_bytes();
            for (i, &v) in data.iter().enumerate() {
                if let Some(b) = bytes.get_mut(offset as usize + i) {
                    *b = v;
                }
            }
            // Bits 1:0 are reserved and read as zero.
            self.address = u32::from_le_bytes(bytes) & !3;
            return;
        }
        if let Some((b, d, f, reg)) = self.target(offset - 4, data.len()) {
            self.bus
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_write(b, d, f, reg, data);
        }
    }
}

/// ECAM (PCIe enhanced configuration access) for bus 0: insert it on the
/// MMIO bus at the MCFG base with length [`ECAM_BUS_SIZE`].
pub struct PciConfigMmio {
    bus: Arc<Mutex<PciBus>>,
}

impl PciConfigMmio {
    /// The ECAM window for `bus`.
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        Self { bus }
    }

    /// (bus, dev, func, register) of an access, if it is 1, 2 or 4 bytes
    /// and stays inside one dword.
    fn target(offset: u64, len: usize) -> Option<(u8, u8, u8, u64)> {
        if !matches!(len, 1 | 2 | 4) || (offset & 3) + len as u64 > 4 {
            return None;
        }
        if offset >> 20 > 0xff {
            return None;
        }
        let (b, d, f) = decode_bdf(offset >> 20, offset >> 15, offset >> 12);
        Some((b, d, f, offset & 0xfff))
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match Self::target(offset, data.len()) {
            Some((b, d, f, reg)) => self
                .bus
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_read(b, d, f, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let Some((b, d, f, reg)) = Self::target(offset, data.len()) {
            self.bus
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_write(b, d, f, reg, data);
        }
    }
}

#[cfg(test)]
#[path = "bus_tests.rs"]
mod tests;
