//! The block device's queue handler, run on its worker thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use log::warn;
use virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES;
use virtio_queue::Queue;
use vm_memory::GuestAddressSpace;

use super::disk::DiskImage;
use super::request::{process, rate_limit_bytes, RequestContext};
use super::BlockCounters;
use crate::device::{GuestMemory, VirtioInterrupt};
use crate::rate_limiter::{drain_queue_limited, RateLimiter};
use crate::worker::chain::ChainBuffers;
use crate::worker::{drain_queue, HandlerError, QueueHandler};

/// Owns the disk and queues while the device is active.
pub(super) struct BlockHandler {
    pub mem: GuestMemory,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// `queues[i]` is queue `i` if the driver activated it.
    pub queues: Vec<Option<Queue>>,
    pub disk: Box<dyn DiskImage>,
    pub readonly: bool,
    pub discard: bool,
    pub capacity: u64,
    pub id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    pub counters: Arc<BlockCounters>,
    pub name: String,
    /// Charges requests when the disk is rate limited; its timer fd is the
    /// worker's only extra fd.
    pub rate_limiter: Option<RateLimiter>,
    /// Set when a queue broke while resumed by the limiter's timer (the
    /// worker's own flag only covers queue notifications).
    pub broken: Arc<AtomicBool>,
    /// Queue served first on the next timer wakeup (round robin).
    pub next_queue: usize,
}

impl QueueHandler for BlockHandler {
    fn on_broken(&mut self) {
        if let Err(e) = self.interrupt.trigger(crate::VirtioInterruptType::Config) {
            log::warn!("config interrupt lost: {e}");
        }
    }

    fn start(&mut self) -> Result<(), HandlerError> {
        // Serve anything posted before the driver's first kick.
        for i in 0..self.queues.len() {
            // Queue counts come from a u16, so this cannot truncate.
            self.handle_queue(i as u16)?;
        }
        Ok(())
    }

    fn handle_queue(&mut self, index: u16) -> Result<(), HandlerError> {
        let Some(Some(queue)) = self.queues.get_mut(usize::from(index)) else {
            return Ok(());
        };
        let guard = self.mem.memory();
        let mem = &*guard;
        let name = self.name.as_str();
        let mut ctx = RequestContext {
            disk: self.disk.as_mut(),
            readonly: self.readonly,
            discard: self.discard,
            capacity: self.capacity,
            id: &self.id,
            counters: &self.counters,
            name,
        };
        if let Some(limiter) = self.rate_limiter.as_mut() {
            return drain_queue_limited(
                queue,
                mem,
                &*self.interrupt,
                index,
                limiter,
                |bufs| rate_limit_bytes(mem, bufs),
                |parsed| match parsed {
                    Ok(bufs) => process(mem, &bufs, &mut ctx),
                    Err(e) => {
                        warn!("{name}: dropping request: {e}");
                        0
                    }
                },
            );
        }
        drain_queue(
            queue,
            mem,
            &*self.interrupt,
            index,
            |chain| match ChainBuffers::parse(chain) {
                Ok(bufs) => process(mem, &bufs, &mut ctx),
                Err(e) => {
                    warn!("{name}: dropping request: {e}");
                    0
                }
            },
        )
    }

    fn extra_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.rate_limiter.iter().map(|l| l.as_raw_fd()).collect()
    }

    fn handle_fd(&mut self, _id: usize) -> Result<(), HandlerError> {
        // The limiter's timer: the budget allows the next request again.
        let Some(limiter) = self.rate_limiter.as_mut() else {
            return Ok(());
        };
        limiter.event_handler();
        let n = self.queues.len();
        let first = self.next_queue % n.max(1);
        self.next_queue = first + 1;
        for i in (first..n).chain(0..first) {
            // Queue counts come from a u16, so this cannot truncate.
            if let Err(e) = self.handle_queue(i as u16) {
                log::error!("{}: queue {i}: {e}; device needs reset", self.name);
                self.queues[i] = None;
                self.broken.store(true, Ordering::Release);
                self.on_broken();
            }
        }
        Ok(())
    }
}
