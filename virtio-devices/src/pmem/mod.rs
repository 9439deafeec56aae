//! virtio-pmem (virtio 1.2 §5.19): a host file mapped into a guest-physical
//! range the guest uses as persistent memory (`/dev/pmem0`, DAX-capable),
//! plus one request queue on which the guest asks for its writes to be
//! made durable (flush → `fsync` of the file).
//!
//! [`PmemMapping`] maps the file (shared, or private with
//! `discard_writes=on` so the file never changes); the VMM gives KVM that
//! mapping as a memory slot at the address in the config space.

mod mapping;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::sync::Arc;

use log::{error, warn};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::Queue;
use vm_memory::GuestAddressSpace;

pub use mapping::{PmemError, PmemMapping, PMEM_ALIGNMENT};

use crate::device::{
    features_state, restore_features_state, ActivateError, ActivatedQueue, GuestMemory,
    PausedQueue, VirtioDevice, VirtioInterrupt,
};
use crate::worker::chain::ChainBuffers;
use crate::worker::{
    drain_queue, pause_one_queue, prepare_one_queue, spawn_worker, worker_broken, HandlerError,
    QueueHandler, ThreadSetup, WorkerHandle,
};

/// Virtio device type of virtio-pmem.
pub const VIRTIO_ID_PMEM: u32 = 27;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The one request type: make earlier writes durable.
pub const VIRTIO_PMEM_REQ_TYPE_FLUSH: u32 = 0;
/// Response: success.
pub const VIRTIO_PMEM_RESP_OK: u32 = 0;
/// Response: the flush failed (or the request was not understood).
pub const VIRTIO_PMEM_RESP_EIO: u32 = 1;

/// Version of [`PmemState`] this code writes and reads.
pub const PMEM_STATE_VERSION: u32 = 1;

/// The saved state of a virtio-pmem device (the data is in the file).
pub type PmemState = crate::device::FeaturesState;

/// The virtio-pmem device model.
pub struct VirtioPmem {
    file: File,
    /// Guest-physical start and size of the mapped range.
    start: u64,
    size: u64,
    /// Writes go to a private copy: nothing to flush.
    discard_writes: bool,
    acked: u64,
    setup: Option<ThreadSetup>,
    worker: Option<WorkerHandle<PmemHandler>>,
    broken: bool,
}

impl VirtioPmem {
    /// A device for `mapping`, which the VMM maps at guest address `start`.
    pub fn new(mapping: &PmemMapping, start: u64) -> Result<Self, PmemError> {
        Ok(VirtioPmem {
            file: mapping.file().try_clone().map_err(PmemError::Io)?,
            start,
            size: mapping.size(),
            discard_writes: mapping.discard_writes(),
            acked: 0,
            setup: None,
            worker: None,
            broken: false,
        })
    }

    /// Hook run first on every worker thread (seccomp filter install).
    pub fn set_thread_setup(&mut self, setup: ThreadSetup) {
        self.setup = Some(setup);
    }
}

impl VirtioDevice for VirtioPmem {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_PMEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX)
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    /// `struct virtio_pmem_config { le64 start; le64 size; }`.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; 16];
        c[..8].copy_from_slice(&self.start.to_le_bytes());
        c[8..].copy_from_slice(&self.size.to_le_bytes());
        crate::device::copy_config(&c, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

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
        let handler = PmemHandler {
            mem,
            interrupt,
            queue,
            file: self.file.try_clone().map_err(ActivateError::Worker)?,
            discard_writes: self.discard_writes,
        };
        let worker = spawn_worker("virtio-pmem", self.setup.clone(), notifies, handler)
            .map_err(|e| ActivateError::Device(e.error.to_string()))?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        let ok = crate::worker::stop_worker(&mut self.worker);
        self.acked = 0;
        self.broken = false;
        ok
    }

    fn name(&self) -> &str {
        "virtio-pmem"
    }

    fn needs_reset(&self) -> bool {
        worker_broken(self.broken, &self.worker)
    }

    fn pause(&mut self) -> Result<Vec<PausedQueue>, ActivateError> {
        pause_one_queue(&mut self.worker, "virtio-pmem", &mut self.broken, |h| {
            h.queue
        })
    }

    fn snapshot_state(&self) -> serde_json::Value {
        features_state(PMEM_STATE_VERSION, self.acked)
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), ActivateError> {
        self.acked =
            restore_features_state("virtio-pmem", state, PMEM_STATE_VERSION, self.features())?;
        Ok(())
    }
}

/// The worker side: answers flush requests.
struct PmemHandler {
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    queue: Queue,
    file: File,
    discard_writes: bool,
}

/// Serves one request of type `kind` on `file`; the status to write back.
fn serve(file: &File, discard_writes: bool, kind: u32) -> u32 {
    if kind != VIRTIO_PMEM_REQ_TYPE_FLUSH {
        warn!("virtio-pmem: unknown request type {kind}");
        return VIRTIO_PMEM_RESP_EIO;
    }
    if discard_writes {
        // Writes live in a private copy that is dropped with the VM.
        return VIRTIO_PMEM_RESP_OK;
    }
    // The guest's stores went to the shared mapping, i.e. the file's page
    // cache: fsync writes them back.
    match file.sync_all() {
        Ok(()) => VIRTIO_PMEM_RESP_OK,
        Err(e) => {
            error!("virtio-pmem: flush failed: {e}");
            VIRTIO_PMEM_RESP_EIO
        }
    }
}

impl QueueHandler for PmemHandler {
    fn on_broken(&mut self) {
        if let Err(e) = self.interrupt.trigger(crate::VirtioInterruptType::Config) {
            warn!("config interrupt lost: {e}");
        }
    }

    fn start(&mut self) -> Result<(), HandlerError> {
        self.handle_queue(0)
    }

    fn handle_queue(&mut self, index: u16) -> Result<(), HandlerError> {
        let guard = self.mem.memory();
        let mem = &*guard;
        let (file, discard) = (&self.file, self.discard_writes);
        drain_queue(&mut self.queue, mem, &*self.interrupt, index, |chain| {
            let bufs = match ChainBuffers::parse(chain) {
                Ok(b) => b,
                Err(e) => {
                    warn!("virtio-pmem: dropping request: {e}");
                    return 0;
                }
            };
            let mut req = [0u8; 4];
            if bufs.readable_len() < 4 || bufs.writable_len() < 4 {
                warn!("virtio-pmem: request without room for type and status");
                return 0;
            }
            if let Err(e) = bufs.read_at(mem, 0, &mut req) {
                warn!("virtio-pmem: {e}");
                return 0;
            }
            let status = serve(file, discard, u32::from_le_bytes(req));
            match bufs.write_at(mem, 0, &status.to_le_bytes()) {
                Ok(()) => 4,
                Err(e) => {
                    warn!("virtio-pmem: {e}");
                    0
                }
            }
        })
    }
}
