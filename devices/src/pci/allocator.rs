//! Guest-physical address allocation for BARs: a bump allocator per MMIO
//! window, every BAR naturally aligned (to its size) as PCI requires.

use super::BarRequest;

/// Errors from allocating a BAR.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocatorError {
    /// The size is zero or not a power of two.
    #[error("invalid allocation size {0:#x}")]
    InvalidSize(u64),
    /// The window has no room left for the request.
    #[error("no room for {size:#x} bytes in the MMIO window")]
    Exhausted {
        /// Bytes asked for.
        size: u64,
    },
}

/// Hands out size-aligned ranges of `[start, end)`, lowest first; nothing
/// is ever freed (BARs live as long as the VM).
#[derive(Clone, Debug)]
pub struct AddressAllocator {
    next: u64,
    end: u64,
}

impl AddressAllocator {
    /// An allocator over `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        Self { next: start, end }
    }

    /// Allocates `size` bytes aligned to `size` (a power of two).
    pub fn allocate(&mut self, size: u64) -> Result<u64, AllocatorError> {
        if size == 0 || !size.is_power_of_two() {
            return Err(AllocatorError::InvalidSize(size));
        }
        let base = self
            .next
            .checked_next_multiple_of(size)
            .filter(|b| b.checked_add(size).is_some_and(|e| e <= self.end))
            .ok_or(AllocatorError::Exhausted { size })?;
        self.next = base + size;
        Ok(base)
    }
}

/// The two BAR windows: 32-bit (below 4 GiB) and 64-bit.
#[derive(Clone, Debug)]
pub struct PciBarAllocator {
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
}

impl PciBarAllocator {
    /// Allocators over `[start32, end32)` and `[start64, end64)`.
    pub fn new(start32: u64, end32: u64, start64: u64, end64: u64) -> Self {
        Self {
            mmio32: AddressAllocator::new(start32, end32),
            mmio64: AddressAllocator::new(start64, end64),
        }
    }

    /// Places a BAR: 64-bit BARs in the 64-bit window (falling back to the
    /// 32-bit window when it is full), 32-bit BARs in the 32-bit window.
    pub fn allocate(&mut self, req: &BarRequest) -> Result<u64, AllocatorError> {
        if req.is_64bit {
            match self.mmio64.allocate(req.size) {
                Ok(a) => return Ok(a),
                Err(AllocatorError::Exhausted { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.mmio32.allocate(req.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_bump_allocation() {
        let mut a = AddressAllocator::new(0x1000, 0x10000);
        assert_eq!(a.allocate(0x1000), Ok(0x1000));
        assert_eq!(a.allocate(0x4000), Ok(0x4000));
        assert_eq!(a.allocate(0x1000), Ok(0x8000));
        assert_eq!(
            a.allocate(0x8000),
            Err(AllocatorError::Exhausted { size: 0x8000 })
        );
        assert_eq!(a.allocate(0x3000), Err(AllocatorError::InvalidSize(0x3000)));
        assert_eq!(a.allocate(0), Err(AllocatorError::InvalidSize(0)));
        let mut top = AddressAllocator::new(u64::MAX - 0xfff, u64::MAX);
        assert!(top.allocate(0x1000).is_err());
        assert!(top.allocate(1 << 63).is_err());
    }

    #[test]
    fn windows() {
        let mut a = PciBarAllocator::new(0xc000_0000, 0xc001_0000, 1 << 36, (1 << 36) + 0x8000);
        let req = |size, is_64bit| BarRequest {
            index: 0,
            size,
            is_64bit,
            prefetchable: false,
        };
        assert_eq!(a.allocate(&req(0x8000, true)), Ok(1 << 36));
        // 64-bit window full: fall back below 4 GiB.
        assert_eq!(a.allocate(&req(0x8000, true)), Ok(0xc000_0000));
        assert_eq!(a.allocate(&req(0x1000, false)), Ok(0xc000_8000));
        assert!(a.allocate(&req(0x10000, false)).is_err());
    }
}
