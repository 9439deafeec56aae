//! The virtio-blk device: features, config space and worker lifecycle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use super::disk::DiskImage;
use super::request::{MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, SECTOR_SIZE};
use super::state::{BlockState, BLOCK_STATE_VERSION};
use super::worker::BlockHandler;
use super::BlockCounters;
use crate::device::{
    state_from_value, state_to_value, ActivateError, ActivatedQueue, GuestMemory, PausedQueue,
    VirtioDevice, VirtioInterrupt,
};
use crate::rate_limiter::{RateLimitGroup, RateLimiter};
use crate::worker::{
    paused_queues, prepare_queues, spawn_worker, stop_for_pause, worker_broken, ThreadSetup,
    WorkerHandle,
};

/// Default size of each request queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Largest queue size the split ring allows.
const MAX_QUEUE_SIZE: u16 = 32768;
/// Cap on `seg_max` (data descriptors per request).
const MAX_SEGMENTS: u16 = 254;
/// Size of the config space we expose (up to `write_zeroes_may_unmap`).
const CONFIG_LEN: usize = 60;

/// Errors creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The options are unusable.
    #[error("invalid virtio-blk options for {id}: {reason}")]
    InvalidOptions {
        /// Device id.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

/// How the block device is presented to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockOptions {
    /// Offer VIRTIO_BLK_F_RO and refuse writes.
    pub readonly: bool,
    /// GET_ID answer (at most 20 bytes); derived from the image if `None`.
    pub serial: Option<String>,
    /// Number of request queues (MQ when > 1).
    pub num_queues: u16,
    /// Size of each queue (power of two, at most 32768).
    pub queue_size: u16,
    /// Device id for logs and the thread name.
    pub id: String,
    /// Token buckets charged by this disk's requests (one operation each,
    /// plus the data bytes of reads and writes): a group of its own for a
    /// per-disk limit, or one shared with other disks.
    pub rate_limit: Option<Arc<RateLimitGroup>>,
}

impl Default for BlockOptions {
    fn default() -> Self {
        BlockOptions {
            readonly: false,
            serial: None,
            num_queues: 1,
            queue_size: DEFAULT_QUEUE_SIZE,
            id: String::from("blk0"),
            rate_limit: None,
        }
    }
}

/// The virtio block device.
pub struct VirtioBlock {
    disk: Option<Box<dyn DiskImage>>,
    opts: BlockOptions,
    capacity: u64,
    discard: bool,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    queue_sizes: Vec<u16>,
    acked: u64,
    setup: Option<ThreadSetup>,
    worker: Option<WorkerHandle<BlockHandler>>,
    counters: Arc<BlockCounters>,
    /// A queue broke while resumed by the rate limiter's timer.
    broken: Arc<AtomicBool>,
}

impl VirtioBlock {
    /// Serves `disk` with `opts`. The capacity is the disk size rounded down
    /// to whole sectors.
    pub fn new(disk: Box<dyn DiskImage>, opts: BlockOptions) -> Result<Self, BlockError> {
        let invalid = |reason: &str| BlockError::InvalidOptions {
            id: opts.id.clone(),
            reason: reason.to_string(),
        };
        if opts.num_queues == 0 {
            return Err(invalid("num_queues must be at least 1"));
        }
        if opts.queue_size < 2 || !opts.queue_size.is_power_of_two() {
            return Err(invalid("queue_size must be a power of two >= 2"));
        }
        if opts.queue_size > MAX_QUEUE_SIZE {
            return Err(invalid("queue_size must be at most 32768"));
        }
        let id_src = match &opts.serial {
            Some(s) if s.len() > VIRTIO_BLK_ID_BYTES as usize => {
                return Err(invalid("serial must be at most 20 bytes"));
            }
            Some(s) => s.clone(),
            None => derive_id(&disk.id_basis()),
        };
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let n = id_src.len().min(id.len());
        id[..n].copy_from_slice(&id_src.as_bytes()[..n]);
        Ok(VirtioBlock {
            capacity: disk.size() / SECTOR_SIZE,
            discard: disk.supports_discard() && !opts.readonly,
            disk: Some(disk),
            id,
            queue_sizes: vec![opts.queue_size; usize::from(opts.num_queues)],
            opts,
            acked: 0,
            setup: None,
            worker: None,
            counters: Arc::new(BlockCounters::default()),
            broken: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Hook run first on every worker thread (seccomp filter install).
    pub fn set_thread_setup(&mut self, setup: ThreadSetup) {
        self.setup = Some(setup);
    }

    /// The device's I/O statistics (shared, live).
    pub fn counters(&self) -> Arc<BlockCounters> {
        self.counters.clone()
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The options the device was created with.
    pub fn options(&self) -> &BlockOptions {
        &self.opts
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
        put(0, &self.capacity.to_le_bytes());
        let seg_max = (self.opts.queue_size - 2).min(MAX_SEGMENTS);
        put(12, &u32::from(seg_max).to_le_bytes());
        put(20, &(SECTOR_SIZE as u32).to_le_bytes());
        put(34, &self.opts.num_queues.to_le_bytes());
        if self.discard {
            put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
            put(40, &MAX_DISCARD_SEG.to_le_bytes());
            put(44, &1u32.to_le_bytes());
            put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
            put(52, &MAX_DISCARD_SEG.to_le_bytes());
            put(56, &[1]);
        }
        c
    }
}

/// A GET_ID string from an image's id basis: itself if it fits, else a
/// 64-bit FNV-1a hash in hex (stable across runs).
fn derive_id(basis: &str) -> String {
    if basis.len() <= VIRTIO_BLK_ID_BYTES as usize {
        return basis.to_string();
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in basis.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl VirtioDevice for VirtioBlock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH);
        if self.opts.readonly {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        if self.opts.num_queues > 1 {
            f |= 1 << VIRTIO_BLK_F_MQ;
        }
        if self.discard {
            f |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| cfg.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Every field is read-only (CONFIG_WCE is not offered).
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
        let event_idx = self.acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let (slots, notifies) = prepare_queues(queues, self.queue_sizes.len(), &mem, event_idx)?;
        // A fresh timer per activation; the buckets live on in the group.
        let rate_limiter = match &self.opts.rate_limit {
            Some(group) => Some(
                RateLimiter::new(group.clone())
                    .map_err(|e| ActivateError::Device(e.to_string()))?,
            ),
            None => None,
        };
        let disk = self
            .disk
            .take()
            .ok_or_else(|| ActivateError::Device("disk lost by an earlier failure".into()))?;
        let handler = BlockHandler {
            mem,
            interrupt,
            queues: slots,
            disk,
            readonly: self.opts.readonly,
            discard: self.discard,
            capacity: self.capacity,
            id: self.id,
            counters: self.counters.clone(),
            name: format!("virtio-blk {}", self.opts.id),
            rate_limiter,
            broken: self.broken.clone(),
            next_queue: 0,
        };
        let thread = format!("blk-{}", self.opts.id);
        match spawn_worker(&thread, self.setup.clone(), notifies, handler) {
            Ok(w) => {
                self.worker = Some(w);
                Ok(())
            }
            Err(e) => {
                self.disk = e.handler.map(|h| h.disk);
                Err(ActivateError::Device(e.error.to_string()))
            }
        }
    }

    fn reset(&mut self) -> bool {
        self.acked = 0;
        self.broken.store(false, Ordering::Release);
        match self.worker.take() {
            Some(w) => match w.stop() {
                Ok(h) => {
                    self.disk = Some(h.disk);
                    true
                }
                Err(e) => {
                    log::error!("virtio-blk {}: {e}", self.opts.id);
                    false
                }
            },
            None => true,
        }
    }

    fn name(&self) -> &str {
        "virtio-blk"
    }

    fn needs_reset(&self) -> bool {
        worker_broken(self.broken.load(Ordering::Acquire), &self.worker)
    }

    fn pause(&mut self) -> Result<Vec<PausedQueue>, ActivateError> {
        let what = format!("virtio-blk {}", self.opts.id);
        let Some((h, broken)) = stop_for_pause(&mut self.worker, &what)? else {
            return Ok(Vec::new());
        };
        if broken {
            self.broken.store(true, Ordering::Release);
        }
        self.disk = Some(h.disk);
        Ok(paused_queues(h.queues))
    }

    fn set_host_locks(&mut self, locked: bool) -> Result<(), ActivateError> {
        let disk = self.disk.as_mut().ok_or_else(|| {
            ActivateError::Device("the disk is held by a running worker (pause first)".into())
        })?;
        disk.set_locked(locked)
            .map_err(|e| ActivateError::Device(format!("disk lock: {e}")))
    }

    fn snapshot_state(&self) -> serde_json::Value {
        state_to_value(&BlockState {
            version: BLOCK_STATE_VERSION,
            acked_features: self.acked,
            capacity: self.capacity,
            num_queues: self.opts.num_queues,
            queue_size: self.opts.queue_size,
            readonly: self.opts.readonly,
        })
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), ActivateError> {
        let s = state_from_value(
            "virtio-blk",
            state,
            BLOCK_STATE_VERSION,
            |s: &BlockState| s.version,
        )?;
        let bad = |m: String| {
            Err(ActivateError::State(format!(
                "virtio-blk {}: {m}",
                self.opts.id
            )))
        };
        if s.capacity != self.capacity {
            return bad(format!(
                "disk has {} sectors, the snapshot expects {}",
                self.capacity, s.capacity
            ));
        }
        if s.num_queues != self.opts.num_queues || s.queue_size != self.opts.queue_size {
            return bad(format!(
                "{} queues of {} saved, device has {} of {}",
                s.num_queues, s.queue_size, self.opts.num_queues, self.opts.queue_size
            ));
        }
        if s.readonly != self.opts.readonly {
            return bad("read-only setting differs".into());
        }
        if s.acked_features & !self.features() != 0 {
            return bad(format!("features {:#x} not offered", s.acked_features));
        }
        self.acked = s.acked_features;
        Ok(())
    }
}
