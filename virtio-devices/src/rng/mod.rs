//! virtio-rng: entropy from a host source (virtio 1.2 §5.4).
//!
//! One request queue; every device-writable buffer the driver posts is
//! filled from the source file (default `/dev/urandom`), at most
//! [`MAX_REQUEST_BYTES`] per chain to bound the work a guest can ask for.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{error, warn};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::Queue;
use vm_memory::GuestAddressSpace;

use crate::device::{
    features_state, restore_features_state, ActivateError, ActivatedQueue, GuestMemory,
    PausedQueue, VirtioDevice, VirtioInterrupt,
};
use crate::worker::chain::ChainBuffers;
use crate::worker::{
    drain_queue, pause_one_queue, prepare_one_queue, spawn_worker, worker_broken, HandlerError,
    QueueHandler, ThreadSetup, WorkerHandle,
};

/// Default entropy source.
pub const DEFAULT_SOURCE: &str = "/dev/urandom";
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes produced for one request.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Version of [`RngState`] this code writes and reads.
pub const RNG_STATE_VERSION: u32 = 1;

/// The saved state of a virtio-rng device: only the accepted features.
pub type RngState = crate::device::FeaturesState;

/// Errors creating a virtio-rng device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The entropy source could not be opened.
    #[error("cannot open entropy source {path}: {source}")]
    Open {
        /// The source path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The virtio entropy device.
pub struct VirtioRng {
    source: File,
    acked: u64,
    setup: Option<ThreadSetup>,
    worker: Option<WorkerHandle<RngHandler>>,
    /// The queue broke before a pause (the worker's flag goes with it).
    broken: bool,
}

impl VirtioRng {
    /// Opens `source` (e.g. [`DEFAULT_SOURCE`]) now, so a bad path is a
    /// startup error rather than a guest-visible failure.
    pub fn new(source: &Path) -> Result<Self, RngError> {
        let file = File::open(source).map_err(|e| RngError::Open {
            path: source.to_path_buf(),
            source: e,
        })?;
        Ok(VirtioRng {
            source: file,
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

    fn stop_worker(&mut self) -> bool {
        crate::worker::stop_worker(&mut self.worker)
    }
}

impl VirtioDevice for VirtioRng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
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

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // No device-specific configuration.
        data.fill(0);
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
        let source = self.source.try_clone().map_err(ActivateError::Worker)?;
        let handler = RngHandler {
            mem,
            interrupt,
            queue,
            source,
        };
        let worker = spawn_worker(self.name(), self.setup.clone(), notifies, handler)
            .map_err(|e| ActivateError::Device(e.error.to_string()))?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        let ok = self.stop_worker();
        self.acked = 0;
        self.broken = false;
        ok
    }

    fn name(&self) -> &str {
        "virtio-rng"
    }

    fn needs_reset(&self) -> bool {
        worker_broken(self.broken, &self.worker)
    }

    fn pause(&mut self) -> Result<Vec<PausedQueue>, ActivateError> {
        pause_one_queue(&mut self.worker, "virtio-rng", &mut self.broken, |h| {
            h.queue
        })
    }

    fn snapshot_state(&self) -> serde_json::Value {
        features_state(RNG_STATE_VERSION, self.acked)
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), ActivateError> {
        self.acked =
            restore_features_state("virtio-rng", state, RNG_STATE_VERSION, self.features())?;
        Ok(())
    }
}

/// The worker side: fills request buffers.
struct RngHandler {
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    queue: Queue,
    source: File,
}

impl RngHandler {
    /// Reads up to `buf.len()` bytes; fewer at end of a file source.
    fn fill(source: &mut File, buf: &mut [u8]) -> usize {
        let mut got = 0;
        while got < buf.len() {
            match source.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error!("virtio-rng: reading entropy source: {e}");
                    break;
                }
            }
        }
        got
    }
}

impl QueueHandler for RngHandler {
    fn on_broken(&mut self) {
        if let Err(e) = self.interrupt.trigger(crate::VirtioInterruptType::Config) {
            log::warn!("config interrupt lost: {e}");
        }
    }

    fn start(&mut self) -> Result<(), HandlerError> {
        self.handle_queue(0)
    }

    fn handle_queue(&mut self, index: u16) -> Result<(), HandlerError> {
        let guard = self.mem.memory();
        let mem = &*guard;
        let source = &mut self.source;
        let mut buf = vec![0u8; MAX_REQUEST_BYTES];
        drain_queue(&mut self.queue, mem, &*self.interrupt, index, |chain| {
            let bufs = match ChainBuffers::parse(chain) {
                Ok(b) => b,
                Err(e) => {
                    warn!("virtio-rng: dropping request: {e}");
                    return 0;
                }
            };
            let want = bufs.writable_len().min(MAX_REQUEST_BYTES as u64) as usize;
            let got = Self::fill(source, &mut buf[..want]);
            match bufs.write_at(mem, 0, &buf[..got]) {
                // `got` is at most MAX_REQUEST_BYTES, so it fits a u32.
                Ok(()) => got as u32,
                Err(e) => {
                    warn!("virtio-rng: {e}");
                    0
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::testutil::{TestVm, DATA};

    #[test]
    fn open_failure_is_reported() {
        let err = VirtioRng::new(Path::new("/nonexistent/entropy"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/entropy"));
    }

    #[test]
    fn fills_buffers_and_reactivates() {
        let vm = TestVm::new();
        let mut rng = VirtioRng::new(Path::new(DEFAULT_SOURCE)).unwrap();
        assert_eq!(rng.device_type(), 4);
        rng.ack_features(rng.features());
        for round in 0..2 {
            let (mut tq, aq) = vm.queues(1, 16);
            vm.write(DATA, &[0u8; 256]);
            rng.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
                .unwrap();
            // Split across two writable buffers.
            let head = tq[0].add_chain(&[(DATA, 100, true), (DATA + 0x1000, 156, true)]);
            tq[0].notify();
            assert!(tq[0].wait_used(1), "round {round}");
            assert_eq!(tq[0].used(0), (u32::from(head), 256));
            let mut bytes = vm.read(DATA, 100);
            bytes.extend(vm.read(DATA + 0x1000, 156));
            assert!(bytes.iter().any(|&b| b != bytes[0]), "constant output");
            // A readable-only chain yields nothing but is completed.
            tq[0].add_chain(&[(DATA + 0x2000, 16, false)]);
            tq[0].notify();
            assert!(tq[0].wait_used(2));
            assert_eq!(tq[0].used(1).1, 0);
            assert!(rng.reset());
        }
    }

    #[test]
    fn caps_large_requests() {
        let vm = TestVm::new();
        let mut rng = VirtioRng::new(Path::new(DEFAULT_SOURCE)).unwrap();
        let (mut tq, aq) = vm.queues(1, 16);
        rng.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
            .unwrap();
        tq[0].add_chain(&[(DATA, 1 << 20, true)]);
        tq[0].notify();
        assert!(tq[0].wait_used(1));
        assert_eq!(tq[0].used(0).1, MAX_REQUEST_BYTES as u32);
        assert!(vm.interrupt.wait_for(|_| true));
        assert!(rng.reset());
    }
}
