//! The balloon device model: features, config space, queue roles,
//! activation and its snapshot state.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;

use super::worker::{BalloonHandler, QueueRole};
use super::{
    lock, BalloonControl, BalloonOptions, QUEUE_SIZE, VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
    VIRTIO_BALLOON_F_PAGE_REPORTING, VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::device::{
    state_from_value, state_to_value, ActivateError, ActivatedQueue, GuestMemory, PausedQueue,
    VirtioDevice, VirtioInterrupt,
};
use crate::worker::{
    paused_queues, prepare_queues, spawn_worker, stop_for_pause, worker_broken, ThreadSetup,
    WorkerHandle,
};

/// Version of [`BalloonState`] this code writes and reads.
pub const BALLOON_STATE_VERSION: u32 = 1;

/// Config space: `num_pages` (le32, device-written), `actual` (le32,
/// driver-written); the free page hint and poison fields read as zero.
const CONFIG_SIZE: usize = 16;
const CONFIG_ACTUAL: u64 = 4;

/// The saved state of a balloon device.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BalloonState {
    /// Format version ([`BALLOON_STATE_VERSION`]).
    pub version: u32,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// Target in 4 KiB pages.
    pub target_pages: u32,
    /// Pages the driver reported in the balloon.
    pub actual_pages: u32,
    /// Head of the statistics buffer the device holds (to be returned
    /// when it wants fresh statistics).
    pub held_stats: Option<u16>,
}

/// The virtio memory balloon.
pub struct VirtioBalloon {
    options: BalloonOptions,
    queue_sizes: Vec<u16>,
    acked: u64,
    control: Arc<BalloonControl>,
    setup: Option<ThreadSetup>,
    worker: Option<WorkerHandle<BalloonHandler>>,
    /// The statistics buffer held across a pause.
    held_stats: Option<u16>,
    broken: bool,
}

impl VirtioBalloon {
    /// A balloon with `options`; its target starts at `options.size`.
    pub fn new(options: BalloonOptions) -> std::io::Result<Self> {
        let pages = u32::try_from(options.size / super::BALLOON_PAGE_SIZE).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "balloon size too large")
        })?;
        let control = Arc::new(BalloonControl::new(pages)?);
        // inflateq, deflateq, statsq, then reporting_vq when offered.
        let queues = if options.free_page_reporting { 4 } else { 3 };
        Ok(Self {
            options,
            queue_sizes: vec![QUEUE_SIZE; queues],
            acked: 0,
            control,
            setup: None,
            worker: None,
            held_stats: None,
            broken: false,
        })
    }

    /// The VMM's handle (target, actual size, statistics, counters).
    pub fn control(&self) -> Arc<BalloonControl> {
        self.control.clone()
    }

    /// Hook run first on every worker thread (seccomp filter install).
    pub fn set_thread_setup(&mut self, setup: ThreadSetup) {
        self.setup = Some(setup);
    }

    /// What each queue index is for, given the accepted features: queues
    /// of features the driver did not accept do not exist, and the later
    /// ones move down (as Linux and QEMU number them).
    fn roles(&self) -> Vec<QueueRole> {
        let mut roles = vec![QueueRole::Inflate, QueueRole::Deflate];
        if self.acked & (1 << VIRTIO_BALLOON_F_STATS_VQ) != 0 {
            roles.push(QueueRole::Stats);
        }
        if self.acked & (1 << VIRTIO_BALLOON_F_PAGE_REPORTING) != 0 {
            roles.push(QueueRole::Reporting);
        }
        roles
    }
}

impl VirtioDevice for VirtioBalloon {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let mut f = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_BALLOON_F_STATS_VQ);
        if self.options.deflate_on_oom {
            f |= 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        if self.options.free_page_reporting {
            f |= 1 << VIRTIO_BALLOON_F_PAGE_REPORTING;
        }
        f
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_SIZE];
        config[0..4].copy_from_slice(
            &self
                .control
                .target_pages
                .load(Ordering::Acquire)
                .to_le_bytes(),
        );
        config[4..8].copy_from_slice(
            &self
                .control
                .actual_pages
                .load(Ordering::Acquire)
                .to_le_bytes(),
        );
        crate::device::copy_config(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is driver-writable; accept whole-field writes.
        if offset == CONFIG_ACTUAL && data.len() == 4 {
            let pages = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.control.actual_pages.store(pages, Ordering::Release);
        } else {
            log::debug!(
                "virtio-balloon: ignored config write at {offset} ({} bytes)",
                data.len()
            );
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::Device("already active".into()));
        }
        let roles = self.roles();
        let event_idx = self.acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let (slots, notifies) = prepare_queues(queues, roles.len(), &mem, event_idx)?;
        if slots[0].is_none() || slots[1].is_none() {
            return Err(ActivateError::BadQueues(
                "inflate or deflate queue missing".into(),
            ));
        }
        let stats_request = self
            .control
            .stats_request
            .try_clone()
            .map_err(ActivateError::Worker)?;
        let handler = BalloonHandler {
            mem,
            interrupt: interrupt.clone(),
            queues: slots,
            roles,
            control: self.control.clone(),
            stats_request,
            held_stats: self.held_stats.take(),
            huge_page: self.options.huge_page_size,
        };
        let worker =
            spawn_worker(self.name(), self.setup.clone(), notifies, handler).map_err(|e| {
                if let Some(h) = e.handler {
                    self.held_stats = h.held_stats;
                }
                ActivateError::Device(e.error.to_string())
            })?;
        *lock(&self.control.interrupt) = Some(interrupt);
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        let ok = crate::worker::stop_worker(&mut self.worker);
        *lock(&self.control.interrupt) = None;
        self.acked = 0;
        self.held_stats = None;
        self.broken = false;
        // A reset driver starts from an empty balloon.
        self.control.actual_pages.store(0, Ordering::Release);
        ok
    }

    fn name(&self) -> &str {
        "virtio-balloon"
    }

    fn needs_reset(&self) -> bool {
        worker_broken(self.broken, &self.worker)
    }

    fn pause(&mut self) -> Result<Vec<PausedQueue>, ActivateError> {
        let Some((h, broken)) = stop_for_pause(&mut self.worker, "virtio-balloon")? else {
            return Ok(Vec::new());
        };
        self.broken |= broken;
        self.held_stats = h.held_stats;
        Ok(paused_queues(h.queues))
    }

    fn snapshot_state(&self) -> serde_json::Value {
        state_to_value(&BalloonState {
            version: BALLOON_STATE_VERSION,
            acked_features: self.acked,
            target_pages: self.control.target_pages.load(Ordering::Acquire),
            actual_pages: self.control.actual_pages.load(Ordering::Acquire),
            held_stats: self.held_stats,
        })
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), ActivateError> {
        let s = state_from_value(
            "virtio-balloon",
            state,
            BALLOON_STATE_VERSION,
            |s: &BalloonState| s.version,
        )?;
        if s.acked_features & !self.features() != 0 {
            return Err(ActivateError::State(format!(
                "virtio-balloon: features {:#x} not offered (deflate_on_oom or \
                 free_page_reporting differ from the snapshot's)",
                s.acked_features
            )));
        }
        if s.held_stats.is_some_and(|h| h >= QUEUE_SIZE) {
            return Err(ActivateError::State(
                "virtio-balloon: held statistics buffer out of range".into(),
            ));
        }
        self.acked = s.acked_features;
        self.held_stats = s.held_stats;
        self.control
            .target_pages
            .store(s.target_pages, Ordering::Release);
        self.control
            .actual_pages
            .store(s.actual_pages, Ordering::Release);
        Ok(())
    }
}
