//! virtio-mem (virtio 1.2 §5.15): a region of guest-physical memory the
//! device plugs and unplugs block by block. The host sets the size it
//! wants plugged (`requested_size`, from `vm.resize desired_ram`); the
//! driver plugs or unplugs blocks until `plugged_size` reaches it, and
//! unplugged blocks are given back to the host ([`crate::discard`]).
//!
//! The region is guest RAM the VMM mapped and registered with KVM up
//! front, but left out of the firmware memory map: the guest sees it only
//! through this device. A guest that cannot unplug enough (its memory is
//! in use) leaves `plugged_size` above `requested_size`; the VMM reports
//! that size and does not wait for it.

mod device;
mod plug;
pub mod request;
mod worker;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use device::{MemState, VirtioMem, MEM_STATE_VERSION};
pub use plug::PlugMap;

use crate::device::{VirtioInterrupt, VirtioInterruptType};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 128;
/// Smallest block size: the guest's page block (2 MiB on x86_64 Linux).
pub const MIN_BLOCK_SIZE: u64 = 2 << 20;

/// Where the device region is and how it is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOptions {
    /// Guest-physical start of the region (block-aligned).
    pub addr: u64,
    /// Bytes of the region (a multiple of `block_size`).
    pub region_size: u64,
    /// Bytes of a block (a power of two, at least [`MIN_BLOCK_SIZE`] in
    /// production; tests use smaller).
    pub block_size: u64,
    /// Bytes to ask the driver to plug at start.
    pub requested_size: u64,
    /// Huge page size of hugetlb-backed memory (freed in whole huge pages).
    pub huge_page_size: u64,
}

/// Why a size or layout was refused.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// The layout is not usable.
    #[error("virtio-mem: {0}")]
    Layout(String),
    /// The requested size is not a whole number of blocks.
    #[error("must be a multiple of the virtio-mem block size ({} MiB)", .0 >> 20)]
    Unaligned(u64),
    /// The requested size exceeds the region.
    #[error("must not exceed the virtio-mem region ({0} bytes, memory.hotplug_size)")]
    TooLarge(u64),
}

/// Counters of what the device did, for `vm.counters`.
#[derive(Default)]
pub struct MemCounters {
    /// PLUG requests acknowledged.
    pub plugs: AtomicU64,
    /// UNPLUG and UNPLUG_ALL requests acknowledged.
    pub unplugs: AtomicU64,
    /// Requests refused with NACK.
    pub nacks: AtomicU64,
    /// Requests answered ERROR, or dropped as malformed.
    pub errors: AtomicU64,
    /// Ranges the host failed to free.
    pub discard_errors: AtomicU64,
}

/// The VMM's handle on a virtio-mem device, shared with its worker.
pub struct MemControl {
    options: MemOptions,
    requested: AtomicU64,
    map: Mutex<PlugMap>,
    interrupt: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
    /// What the device did.
    pub counters: MemCounters,
}

impl MemControl {
    fn new(options: MemOptions) -> Result<Self, MemError> {
        let bs = options.block_size;
        if !bs.is_power_of_two() || !options.addr.is_multiple_of(bs) {
            return Err(MemError::Layout(format!(
                "block size {bs:#x} is not a power of two or the region at {:#x} is not aligned \
                 to it",
                options.addr
            )));
        }
        if options.region_size == 0
            || !options.region_size.is_multiple_of(bs)
            || options.addr.checked_add(options.region_size).is_none()
        {
            return Err(MemError::Layout(format!(
                "region size {:#x} is not a non-zero multiple of the block size",
                options.region_size
            )));
        }
        let blocks = usize::try_from(options.region_size / bs)
            .map_err(|_| MemError::Layout("too many blocks".into()))?;
        let control = Self {
            options,
            requested: AtomicU64::new(0),
            map: Mutex::new(PlugMap::new(options.addr, bs, blocks)),
            interrupt: Mutex::new(None),
            counters: MemCounters::default(),
        };
        control.check_size(options.requested_size)?;
        control
            .requested
            .store(options.requested_size, Ordering::Release);
        Ok(control)
    }

    fn check_size(&self, bytes: u64) -> Result<(), MemError> {
        if !bytes.is_multiple_of(self.options.block_size) {
            return Err(MemError::Unaligned(self.options.block_size));
        }
        if bytes > self.options.region_size {
            return Err(MemError::TooLarge(self.options.region_size));
        }
        Ok(())
    }

    /// Asks the driver to plug or unplug blocks until `bytes` are plugged,
    /// and tells it. Returns at once: the driver works asynchronously and
    /// may stop short of a shrink ([`Self::plugged_bytes`] tells).
    pub fn set_requested(&self, bytes: u64) -> Result<(), MemError> {
        self.check_size(bytes)?;
        self.requested.store(bytes, Ordering::Release);
        if let Some(irq) = lock(&self.interrupt).as_ref() {
            if let Err(e) = irq.trigger(VirtioInterruptType::Config) {
                log::warn!("virtio-mem: config interrupt lost: {e}");
            }
        }
        Ok(())
    }

    /// The size the driver is asked to plug.
    pub fn requested_bytes(&self) -> u64 {
        self.requested.load(Ordering::Acquire)
    }

    /// The size the driver has plugged.
    pub fn plugged_bytes(&self) -> u64 {
        lock(&self.map).plugged_bytes()
    }

    /// The region and block layout.
    pub fn options(&self) -> MemOptions {
        self.options
    }

    /// Everything for `vm.counters`.
    pub fn counter_values(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            ("requested_size", self.requested_bytes()),
            ("plugged_size", self.plugged_bytes()),
            ("region_size", self.options.region_size),
            ("block_size", self.options.block_size),
            ("plugs", c.plugs.load(Ordering::Relaxed)),
            ("unplugs", c.unplugs.load(Ordering::Relaxed)),
            ("nacks", c.nacks.load(Ordering::Relaxed)),
            ("errors", c.errors.load(Ordering::Relaxed)),
            ("discard_errors", c.discard_errors.load(Ordering::Relaxed)),
        ]
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
