//! virtio-balloon (virtio 1.2 §5.5): the host asks the guest to give back
//! memory (inflate) or lets it take memory again (deflate); the guest also
//! reports pages it freed (free page reporting) and its memory statistics.
//!
//! Inflated and reported pages are returned to the host at once
//! ([`crate::discard`]). The VMM steers the device through a
//! [`BalloonControl`]: the target size (`vm.resize desired_balloon`), the
//! size the guest reached, statistics and counters for `vm.counters`.

mod device;
pub mod request;
mod worker;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use device::{BalloonState, VirtioBalloon, BALLOON_STATE_VERSION};
pub use request::{BalloonStats, BALLOON_PAGE_SIZE};

use crate::device::{VirtioInterrupt, VirtioInterruptType};

/// Feature: the driver must tell the host before using deflated pages.
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u32 = 0;
/// Feature: a statistics queue.
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
/// Feature: the guest deflates the balloon when it runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// Feature: free page reporting queue.
pub const VIRTIO_BALLOON_F_PAGE_REPORTING: u32 = 5;

/// Size of every balloon queue.
pub const QUEUE_SIZE: u16 = 128;

/// What the VMM asks of a balloon device (Cloud Hypervisor's
/// `BalloonConfig`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BalloonOptions {
    /// Initial target size in bytes.
    pub size: u64,
    /// Offer `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`.
    pub deflate_on_oom: bool,
    /// Offer `VIRTIO_BALLOON_F_PAGE_REPORTING`.
    pub free_page_reporting: bool,
    /// Huge page size of hugetlb-backed guest RAM (such RAM is given back
    /// in whole huge pages only).
    pub huge_page_size: u64,
}

/// Why a balloon request was refused.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// The size is not a whole number of 4 KiB pages or too large.
    #[error("desired_balloon={0}: must be a multiple of 4 KiB and below 16 TiB")]
    BadSize(u64),
    /// The size exceeds guest RAM.
    #[error("desired_balloon={size}: must not exceed the guest's {ram} bytes of RAM")]
    TooLarge {
        /// Requested size.
        size: u64,
        /// Guest RAM.
        ram: u64,
    },
}

/// Counters of what the balloon did, for `vm.counters`.
#[derive(Default)]
pub struct BalloonCounters {
    /// Bytes given back to the host on inflate.
    pub inflated_bytes: AtomicU64,
    /// Bytes the guest took back on deflate.
    pub deflated_bytes: AtomicU64,
    /// Bytes of free pages the guest reported and the host freed.
    pub reported_bytes: AtomicU64,
    /// Page frame numbers or ranges outside guest RAM (ignored).
    pub invalid_requests: AtomicU64,
    /// Ranges the host failed to free.
    pub discard_errors: AtomicU64,
}

/// The VMM's handle on a balloon device, shared with its worker.
pub struct BalloonControl {
    /// Target in 4 KiB pages (config `num_pages`).
    target_pages: AtomicU32,
    /// Pages the driver says are in the balloon (config `actual`).
    actual_pages: AtomicU32,
    /// The transport's interrupt, once the driver started the device.
    interrupt: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
    /// Latest statistics and how many samples have arrived.
    stats: Mutex<(BalloonStats, u64)>,
    stats_arrived: Condvar,
    /// Written to ask the worker for fresh statistics.
    stats_request: EventFd,
    /// What the device did.
    pub counters: BalloonCounters,
}

impl BalloonControl {
    fn new(target_pages: u32) -> std::io::Result<Self> {
        Ok(Self {
            target_pages: AtomicU32::new(target_pages),
            actual_pages: AtomicU32::new(0),
            interrupt: Mutex::new(None),
            stats: Mutex::new((BalloonStats::default(), 0)),
            stats_arrived: Condvar::new(),
            stats_request: EventFd::new(EFD_NONBLOCK)?,
            counters: BalloonCounters::default(),
        })
    }

    /// Sets the size the guest should shrink its memory by
    /// (`desired_balloon`, bytes) and tells the driver. `ram` is the
    /// guest's RAM size, the upper bound.
    pub fn set_target(&self, bytes: u64, ram: u64) -> Result<(), BalloonError> {
        if !bytes.is_multiple_of(BALLOON_PAGE_SIZE) {
            return Err(BalloonError::BadSize(bytes));
        }
        if bytes > ram {
            return Err(BalloonError::TooLarge { size: bytes, ram });
        }
        let pages =
            u32::try_from(bytes / BALLOON_PAGE_SIZE).map_err(|_| BalloonError::BadSize(bytes))?;
        self.target_pages.store(pages, Ordering::Release);
        if let Some(irq) = lock(&self.interrupt).as_ref() {
            if let Err(e) = irq.trigger(VirtioInterruptType::Config) {
                log::warn!("virtio-balloon: config interrupt lost: {e}");
            }
        }
        Ok(())
    }

    /// The target in bytes.
    pub fn target_bytes(&self) -> u64 {
        u64::from(self.target_pages.load(Ordering::Acquire)) * BALLOON_PAGE_SIZE
    }

    /// Bytes the driver says the balloon holds.
    pub fn actual_bytes(&self) -> u64 {
        u64::from(self.actual_pages.load(Ordering::Acquire)) * BALLOON_PAGE_SIZE
    }

    /// The latest statistics, after asking the guest for fresh ones and
    /// waiting up to `wait` for them (a guest that does not answer gets
    /// the previous sample).
    pub fn stats(&self, wait: Duration) -> BalloonStats {
        let guard = lock(&self.stats);
        let seen = guard.1;
        drop(guard);
        if let Err(e) = self.stats_request.write(1) {
            log::debug!("virtio-balloon: stats request: {e}");
        }
        let deadline = Instant::now() + wait;
        let mut guard = lock(&self.stats);
        while guard.1 == seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            guard = match self.stats_arrived.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        guard.0
    }

    /// Everything for `vm.counters`.
    pub fn counter_values(&self, wait: Duration) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let mut v = vec![
            ("target_bytes", self.target_bytes()),
            ("actual_bytes", self.actual_bytes()),
            ("inflated_bytes", c.inflated_bytes.load(Ordering::Relaxed)),
            ("deflated_bytes", c.deflated_bytes.load(Ordering::Relaxed)),
            ("reported_bytes", c.reported_bytes.load(Ordering::Relaxed)),
            (
                "invalid_requests",
                c.invalid_requests.load(Ordering::Relaxed),
            ),
            ("discard_errors", c.discard_errors.load(Ordering::Relaxed)),
        ];
        v.extend(self.stats(wait).entries());
        v
    }

    /// The latest statistics, without asking for fresh ones.
    pub fn latest_stats(&self) -> BalloonStats {
        lock(&self.stats).0
    }

    fn store_stats(&self, stats: BalloonStats) {
        let mut guard = lock(&self.stats);
        guard.0 = stats;
        guard.1 += 1;
        self.stats_arrived.notify_all();
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
