//! The virtio-mem device model: features, config space, activation and
//! its snapshot state (the plug state of every block).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use super::worker::MemHandler;
use super::{lock, MemControl, MemError, MemOptions, QUEUE_SIZE};
use crate::device::{
    copy_config, state_from_value, state_to_value, ActivateError, ActivatedQueue, GuestMemory,
    PausedQueue, VirtioDevice, VirtioInterrupt,
};
use crate::worker::{
    pause_one_queue, prepare_one_queue, spawn_worker, worker_broken, ThreadSetup, WorkerHandle,
};

/// Virtio device ID of virtio-mem.
pub const VIRTIO_ID_MEM: u32 = 24;
/// Version of [`MemState`] this code writes and reads.
pub const MEM_STATE_VERSION: u32 = 1;

/// Config space (`struct virtio_mem_config`): le64 block_size, le16
/// node_id + 6 bytes padding, le64 addr, region_size, usable_region_size,
/// plugged_size, requested_size. All of it is read-only for the driver.
const CONFIG_SIZE: usize = 56;

/// The saved state of a virtio-mem device.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemState {
    /// Format version ([`MEM_STATE_VERSION`]).
    pub version: u32,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// The size the driver is asked to plug.
    pub requested_size: u64,
    /// Plugged blocks as runs `(first block, count)`.
    pub plugged: Vec<(u64, u64)>,
}

/// The virtio-mem device.
pub struct VirtioMem {
    queue_sizes: [u16; 1],
    acked: u64,
    control: Arc<MemControl>,
    setup: Option<ThreadSetup>,
    worker: Option<WorkerHandle<MemHandler>>,
    broken: bool,
}

impl VirtioMem {
    /// A device over the region `options` describes, all blocks unplugged.
    pub fn new(options: MemOptions) -> Result<Self, MemError> {
        Ok(Self {
            queue_sizes: [QUEUE_SIZE],
            acked: 0,
            control: Arc::new(MemControl::new(options)?),
            setup: None,
            worker: None,
            broken: false,
        })
    }

    /// The VMM's handle (requested and plugged size, counters).
    pub fn control(&self) -> Arc<MemControl> {
        self.control.clone()
    }

    /// Hook run first on the worker thread (seccomp filter install).
    pub fn set_thread_setup(&mut self, setup: ThreadSetup) {
        self.setup = Some(setup);
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let o = self.control.options;
        let mut c = [0u8; CONFIG_SIZE];
        c[0..8].copy_from_slice(&o.block_size.to_le_bytes());
        // node_id stays 0: VIRTIO_MEM_F_ACPI_PXM is not offered.
        c[16..24].copy_from_slice(&o.addr.to_le_bytes());
        c[24..32].copy_from_slice(&o.region_size.to_le_bytes());
        c[32..40].copy_from_slice(&o.region_size.to_le_bytes());
        c[40..48].copy_from_slice(&self.control.plugged_bytes().to_le_bytes());
        c[48..56].copy_from_slice(&self.control.requested_bytes().to_le_bytes());
        c
    }
}

impl VirtioDevice for VirtioMem {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_MEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX)
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        copy_config(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio-mem: ignored config write at {offset} ({} bytes): read-only",
            data.len()
        );
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
        let (queue, notifies) = prepare_one_queue(queues, &mem, event_idx, "request queue")?;
        let handler = MemHandler {
            mem,
            interrupt: interrupt.clone(),
            queue,
            control: self.control.clone(),
        };
        let worker = spawn_worker(self.name(), self.setup.clone(), notifies, handler)
            .map_err(|e| ActivateError::Device(e.error.to_string()))?;
        *lock(&self.control.interrupt) = Some(interrupt);
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        let ok = crate::worker::stop_worker(&mut self.worker);
        *lock(&self.control.interrupt) = None;
        self.acked = 0;
        self.broken = false;
        // Blocks keep their state across a reset (the spec forbids changing
        // it); a new driver finds plugged_size > 0 and sends UNPLUG_ALL.
        ok
    }

    fn name(&self) -> &str {
        "virtio-mem"
    }

    fn needs_reset(&self) -> bool {
        worker_broken(self.broken, &self.worker)
    }

    fn pause(&mut self) -> Result<Vec<PausedQueue>, ActivateError> {
        pause_one_queue(&mut self.worker, "virtio-mem", &mut self.broken, |h| {
            h.queue
        })
    }

    fn snapshot_state(&self) -> serde_json::Value {
        let plugged = lock(&self.control.map)
            .plugged_runs()
            .into_iter()
            .map(|r| (r.start as u64, r.len() as u64))
            .collect();
        state_to_value(&MemState {
            version: MEM_STATE_VERSION,
            acked_features: self.acked,
            requested_size: self.control.requested_bytes(),
            plugged,
        })
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), ActivateError> {
        let s = state_from_value("virtio-mem", state, MEM_STATE_VERSION, |s: &MemState| {
            s.version
        })?;
        if s.acked_features & !self.features() != 0 {
            return Err(ActivateError::State(format!(
                "virtio-mem: features {:#x} not offered",
                s.acked_features
            )));
        }
        self.control
            .check_size(s.requested_size)
            .map_err(|e| ActivateError::State(format!("virtio-mem: requested_size: {e}")))?;
        lock(&self.control.map).restore(&s.plugged).ok_or_else(|| {
            ActivateError::State(
                "virtio-mem: plugged blocks outside the region or overlapping (another \
                     memory.hotplug_size?)"
                    .into(),
            )
        })?;
        self.acked = s.acked_features;
        self.control
            .requested
            .store(s.requested_size, Ordering::Release);
        Ok(())
    }
}
