//! Address-decoded buses that route vCPU port-I/O and MMIO exits to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device that answers guest reads and writes on a bus.
///
/// `base` is the start of the range the device was inserted at and `offset`
/// is relative to it, so one device type can live at any address.
pub trait BusDevice: Send {
    /// Fills `data` with what the guest reads at `base + offset`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let _ = (base, offset);
        data.fill(0xff);
    }
    /// Handles a guest write of `data` at `base + offset`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let _ = (base, offset, data);
    }
}

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range is empty or wraps around the address space.
    #[error("invalid bus range base={base:#x} len={len:#x}")]
    InvalidRange { base: u64, len: u64 },
    /// The new range overlaps a device already on the bus.
    #[error("bus range base={base:#x} len={len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    /// No device starts at the given address.
    #[error("no device at {0:#x}")]
    NotFound(u64),
}

/// Shared handle to a device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping address ranges, each owned by one device.
///
/// Lookups take a read lock only, so vCPU threads exit-handling in parallel
/// do not serialize on the bus itself; each device has its own mutex.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        if let Some((&prev, e)) = ranges.range(..end).next_back() {
            if prev + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Removes the device whose range starts at `base`.
    pub fn remove(&self, base: u64) -> Result<SharedDevice, BusError> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        ranges
            .remove(&base)
            .map(|e| e.device)
            .ok_or(BusError::NotFound(base))
    }

    fn resolve(&self, addr: u64) -> Option<(u64, SharedDevice)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&base, e) = ranges.range(..=addr).next_back()?;
        (addr - base < e.len).then(|| (base, e.device.clone()))
    }

    /// Dispatches a read; returns false (and leaves `data` as all-ones) when
    /// nothing is mapped at `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((base, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(base, addr - base, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when nothing is mapped at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((base, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(base, addr - base, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Echo(10))), 0x100, 0x10)
            .unwrap();
        bus.insert(Arc::new(Mutex::new(Echo(50))), 0x110, 0x10)
            .unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x105, &mut b));
        assert_eq!(b[0], 15);
        assert!(bus.read(0x110, &mut b));
        assert_eq!(b[0], 50);
        assert!(bus.write(0x11f, &[1]));
        assert!(bus.read(0x111, &mut b));
        assert_eq!(b[0], 2);
        assert!(!bus.read(0x120, &mut b));
        assert_eq!(b[0], 0xff);
        assert!(!bus.read(0xff, &mut b));
    }

    #[test]
    fn rejects_overlap_and_bad_ranges() {
        let bus = Bus::new();
        let d = || Arc::new(Mutex::new(Echo(0))) as SharedDevice;
        bus.insert(d(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(d(), 0x10f, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(d(), 0xf0, 0x11),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(d(), 0x200, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(d(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
        bus.insert(d(), 0xf0, 0x10).unwrap();
        bus.remove(0x100).unwrap();
        assert_eq!(bus.remove(0x100).err(), Some(BusError::NotFound(0x100)));
    }
}
