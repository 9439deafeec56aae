//! The balloon's worker: serves inflate, deflate, statistics and free
//! page reporting, giving pages back to the host as they arrive.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::request::{self, PageRun, MAX_PFNS_PER_REQUEST, MAX_STATS, STAT_SIZE};
use super::BalloonControl;
use crate::device::{GuestMemory, VirtioInterrupt, VirtioInterruptType};
use crate::discard::{self, DiscardError};
use crate::worker::chain::ChainBuffers;
use crate::worker::{drain_queue, notify_queue, HandlerError, QueueHandler};

/// What a queue of the balloon carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRole {
    /// PFNs the guest gives up.
    Inflate,
    /// PFNs the guest takes back.
    Deflate,
    /// The statistics buffer.
    Stats,
    /// Free page reports.
    Reporting,
}

/// The worker side of a balloon.
pub struct BalloonHandler {
    pub(super) mem: GuestMemory,
    pub(super) interrupt: Arc<dyn VirtioInterrupt>,
    /// Queue `i` serves `roles[i]`.
    pub(super) queues: Vec<Option<Queue>>,
    pub(super) roles: Vec<QueueRole>,
    pub(super) control: Arc<BalloonControl>,
    /// The VMM writes it when it wants fresh statistics.
    pub(super) stats_request: EventFd,
    /// Head of the statistics buffer the device holds.
    pub(super) held_stats: Option<u16>,
    /// Huge page size of hugetlb-backed RAM.
    pub(super) huge_page: u64,
}

/// Reads at most `max` readable bytes of `bufs`.
fn readable_bytes(bufs: &ChainBuffers, mem: &GuestMemoryMmap, max: usize) -> Vec<u8> {
    let len = usize::try_from(bufs.readable_len())
        .unwrap_or(usize::MAX)
        .min(max);
    let mut bytes = vec![0u8; len];
    if let Err(e) = bufs.read_at(mem, 0, &mut bytes) {
        log::warn!("virtio-balloon: reading a request: {e}");
        bytes.clear();
    }
    bytes
}

impl BalloonHandler {
    /// Gives `runs` back to the host; returns the bytes of runs that were
    /// RAM. Runs outside RAM are counted and skipped.
    fn discard_runs(&self, mem: &GuestMemoryMmap, runs: &[PageRun]) -> u64 {
        let counters = &self.control.counters;
        let mut valid = 0;
        for run in runs {
            match discard::discard(mem, run.gpa, run.len, self.huge_page) {
                Ok(_) => valid += run.len,
                Err(DiscardError::NotRam { gpa, len }) => {
                    counters.invalid_requests.fetch_add(1, Ordering::Relaxed);
                    log::debug!("virtio-balloon: {gpa:#x}+{len:#x} is not guest RAM; ignored");
                }
                Err(e) => {
                    counters.discard_errors.fetch_add(1, Ordering::Relaxed);
                    // The range was RAM: the guest gave it up all the same.
                    valid += run.len;
                    log::warn!("virtio-balloon: {e}");
                }
            }
        }
        valid
    }

    fn serve(&mut self, index: u16, role: QueueRole) -> Result<(), HandlerError> {
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let Some(mut queue) = self
            .queues
            .get_mut(usize::from(index))
            .and_then(Option::take)
        else {
            return Ok(());
        };
        let counters = &self.control.counters;
        let result = drain_queue(&mut queue, mem, &*self.interrupt, index, |chain| {
            let bufs = match ChainBuffers::parse(chain) {
                Ok(b) => b,
                Err(e) => {
                    counters.invalid_requests.fetch_add(1, Ordering::Relaxed);
                    log::warn!("virtio-balloon: dropping request: {e}");
                    return 0;
                }
            };
            match role {
                QueueRole::Inflate => {
                    let runs =
                        request::pfn_runs(&readable_bytes(&bufs, mem, MAX_PFNS_PER_REQUEST * 4));
                    let bytes = self.discard_runs(mem, &runs);
                    counters.inflated_bytes.fetch_add(bytes, Ordering::Relaxed);
                }
                QueueRole::Deflate => {
                    // The pages fault back in when the guest touches them.
                    let runs =
                        request::pfn_runs(&readable_bytes(&bufs, mem, MAX_PFNS_PER_REQUEST * 4));
                    let mut bytes = 0;
                    for run in runs {
                        if discard::is_ram(mem, run.gpa, run.len) {
                            bytes += run.len;
                        } else {
                            counters.invalid_requests.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    counters.deflated_bytes.fetch_add(bytes, Ordering::Relaxed);
                }
                QueueRole::Reporting => {
                    let mut segments = bufs.readable_segments().to_vec();
                    segments.extend_from_slice(bufs.writable_segments());
                    let runs = request::reported_runs(&segments);
                    let bytes = self.discard_runs(mem, &runs);
                    counters.reported_bytes.fetch_add(bytes, Ordering::Relaxed);
                }
                QueueRole::Stats => {}
            }
            0
        });
        self.queues[usize::from(index)] = Some(queue);
        result
    }

    /// Takes the driver's statistics buffer(s): reads the latest and holds
    /// on to it until the VMM asks for fresh statistics.
    fn take_stats(&mut self, index: u16) -> Result<(), HandlerError> {
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let Some(queue) = self
            .queues
            .get_mut(usize::from(index))
            .and_then(Option::as_mut)
        else {
            return Ok(());
        };
        let mut returned = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match ChainBuffers::parse(chain) {
                Ok(bufs) => {
                    let mut stats = self.control.latest_stats();
                    let bytes = readable_bytes(&bufs, mem, MAX_STATS * STAT_SIZE);
                    request::parse_stats(&bytes, &mut stats);
                    self.control.store_stats(stats);
                }
                Err(e) => log::warn!("virtio-balloon: bad statistics buffer: {e}"),
            }
            // Only the newest buffer is held; older ones go back.
            if let Some(old) = self.held_stats.replace(head) {
                queue.add_used(mem, old, 0)?;
                returned = true;
            }
        }
        if returned {
            notify_queue(queue, mem, &*self.interrupt, index)?;
        }
        Ok(())
    }

    /// Returns the held statistics buffer so the driver refills it.
    fn release_stats(&mut self) -> Result<(), HandlerError> {
        let Some(index) = self.roles.iter().position(|&r| r == QueueRole::Stats) else {
            return Ok(());
        };
        let Some(head) = self.held_stats.take() else {
            return Ok(());
        };
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let Some(queue) = self.queues.get_mut(index).and_then(Option::as_mut) else {
            return Ok(());
        };
        // Fewer than 256 queues: the index fits.
        let index = index as u16;
        queue.add_used(mem, head, 0)?;
        // The driver waits for this buffer: always interrupt.
        if let Err(e) = self.interrupt.trigger(VirtioInterruptType::Queue(index)) {
            log::warn!("virtio-balloon: stats interrupt lost: {e}");
        }
        Ok(())
    }
}

impl QueueHandler for BalloonHandler {
    fn start(&mut self) -> Result<(), HandlerError> {
        for index in 0..self.roles.len() {
            // Fewer than 256 queues.
            self.handle_queue(index as u16)?;
        }
        Ok(())
    }

    fn handle_queue(&mut self, index: u16) -> Result<(), HandlerError> {
        match self.roles.get(usize::from(index)).copied() {
            Some(QueueRole::Stats) => self.take_stats(index),
            Some(role) => self.serve(index, role),
            None => Ok(()),
        }
    }

    fn extra_fds(&self) -> Vec<RawFd> {
        vec![self.stats_request.as_raw_fd()]
    }

    fn handle_fd(&mut self, _id: usize) -> Result<(), HandlerError> {
        let _ = self.stats_request.read();
        self.release_stats()
    }

    fn on_broken(&mut self) {
        if let Err(e) = self.interrupt.trigger(VirtioInterruptType::Config) {
            log::warn!("virtio-balloon: config interrupt lost: {e}");
        }
    }
}
