//! The virtio-vsock device: config space, features and worker lifecycle.
//! The listening socket is bound at creation, so host clients may connect
//! before the guest driver is up (they wait in the backlog).

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use super::muxer::Muxer;
use super::worker::VsockHandler;
use serde::{Deserialize, Serialize};

use crate::device::{
    state_from_value, state_to_value, ActivateError, ActivatedQueue, GuestMemory, PausedQueue,
    VirtioDevice, VirtioInterrupt,
};
use crate::worker::{
    paused_queues, prepare_queues, spawn_worker, stop_for_pause, worker_broken, ThreadSetup,
    WorkerHandle,
};

/// virtio device id of vsock.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Size of each of the three queues (as Cloud Hypervisor).
pub const QUEUE_SIZE: u16 = 256;
/// Lowest CID a guest may have (0-2 are reserved for the hypervisor,
/// local and host).
pub const MIN_GUEST_CID: u64 = 3;
/// Highest usable CID: only the low 32 bits are used and `u32::MAX` is
/// `VMADDR_CID_ANY`.
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// Version of [`VsockState`] this code writes and reads.
pub const VSOCK_STATE_VERSION: u32 = 1;

/// The saved state of a vsock device. Host connections are not saved: the
/// restored device sends the guest a transport reset instead.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VsockState {
    /// Format version ([`VSOCK_STATE_VERSION`]).
    pub version: u32,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// The guest's CID (the restored device must have the same).
    pub cid: u64,
}

/// Errors creating a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved or too large.
    #[error("vsock cid {0}: must be between {MIN_GUEST_CID} and {MAX_GUEST_CID}")]
    InvalidCid(u64),
    /// The path exists and is not a socket (it is not replaced).
    #[error("vsock socket {0}: exists and is not a Unix socket")]
    PathInUse(PathBuf),
    /// Binding the listening socket failed.
    #[error("vsock socket {path}: cannot listen: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The virtio socket device with a hybrid Unix-socket backend.
pub struct VirtioVsock {
    cid: u64,
    socket: PathBuf,
    listener: UnixListener,
    id: String,
    acked: u64,
    queue_sizes: [u16; 3],
    setup: Option<ThreadSetup>,
    worker: Option<WorkerHandle<VsockHandler>>,
    broken: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    /// The backend a paused worker left (its connections stay open).
    paused_mux: Option<Muxer>,
    /// Restored from a snapshot: tell the driver its connections are gone.
    reset_event: bool,
}

impl VirtioVsock {
    /// A device giving the guest `cid` whose host side listens on `socket`
    /// (a stale socket file there is replaced; any other file is an
    /// error). `id` names the device in logs and its worker thread.
    pub fn new(cid: u64, socket: &Path, id: &str) -> Result<Self, VsockError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cid) {
            return Err(VsockError::InvalidCid(cid));
        }
        if let Ok(meta) = std::fs::symlink_metadata(socket) {
            if !meta.file_type().is_socket() {
                return Err(VsockError::PathInUse(socket.to_path_buf()));
            }
            let _ = std::fs::remove_file(socket);
        }
        let listener = UnixListener::bind(socket).map_err(|source| VsockError::Bind {
            path: socket.to_path_buf(),
            source,
        })?;
        Ok(VirtioVsock {
            cid,
            socket: socket.to_path_buf(),
            listener,
            id: id.to_string(),
            acked: 0,
            queue_sizes: [QUEUE_SIZE; 3],
            setup: None,
            worker: None,
            broken: Arc::new(AtomicBool::new(false)),
            open: Arc::new(AtomicUsize::new(0)),
            paused_mux: None,
            reset_event: false,
        })
    }

    /// Hook run first on every worker thread (seccomp filter install).
    pub fn set_thread_setup(&mut self, setup: ThreadSetup) {
        self.setup = Some(setup);
    }

    /// The guest's context id.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The host listening socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Number of open guest connections (0 while not active).
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Drop for VirtioVsock {
    fn drop(&mut self) {
        // Stop the worker (closing every connection) before the socket
        // file goes away.
        self.worker.take();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl VirtioDevice for VirtioVsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX)
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        let cfg = self.cid.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| cfg.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // guest_cid is read-only.
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
        let mux = match self.paused_mux.take() {
            Some(mux) => mux,
            None => {
                let listener = self.listener.try_clone().map_err(ActivateError::Worker)?;
                Muxer::new(self.cid, self.socket.clone(), listener, self.open.clone())
                    .map_err(ActivateError::Worker)?
            }
        };
        let mut handler = VsockHandler::new(mem, interrupt, slots, mux, self.broken.clone());
        if std::mem::take(&mut self.reset_event) {
            handler.request_reset_event();
        }
        let thread = format!("vsock-{}", self.id);
        match spawn_worker(&thread, self.setup.clone(), notifies, handler) {
            Ok(w) => {
                self.worker = Some(w);
                Ok(())
            }
            Err(e) => Err(ActivateError::Device(e.error.to_string())),
        }
    }

    fn reset(&mut self) -> bool {
        self.acked = 0;
        self.paused_mux = None;
        self.reset_event = false;
        self.broken.store(false, Ordering::Release);
        let stopped = self.worker.take().map(|w| w.stop());
        self.open.store(0, Ordering::Relaxed);
        match stopped {
            Some(res) => match res {
                Ok(_) => true,
                Err(e) => {
                    log::error!("virtio-vsock {}: {e}", self.id);
                    false
                }
            },
            None => true,
        }
    }

    fn name(&self) -> &str {
        "virtio-vsock"
    }

    fn needs_reset(&self) -> bool {
        worker_broken(self.broken.load(Ordering::Acquire), &self.worker)
    }

    fn pause(&mut self) -> Result<Vec<PausedQueue>, ActivateError> {
        let what = format!("virtio-vsock {}", self.id);
        let Some((h, broken)) = stop_for_pause(&mut self.worker, &what)? else {
            return Ok(Vec::new());
        };
        if broken {
            self.broken.store(true, Ordering::Release);
        }
        let (queues, mux) = h.into_parts();
        self.paused_mux = Some(mux);
        Ok(paused_queues(queues))
    }

    fn snapshot_state(&self) -> serde_json::Value {
        state_to_value(&VsockState {
            version: VSOCK_STATE_VERSION,
            acked_features: self.acked,
            cid: self.cid,
        })
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), ActivateError> {
        let s = state_from_value(
            "virtio-vsock",
            state,
            VSOCK_STATE_VERSION,
            |s: &VsockState| s.version,
        )?;
        let bad = |m: String| {
            Err(ActivateError::State(format!(
                "virtio-vsock {}: {m}",
                self.id
            )))
        };
        if s.cid != self.cid {
            // A clone with its own CID: the transport reset sent on
            // activation makes the driver read the new one.
            log::info!(
                "virtio-vsock {}: guest CID {} in the snapshot, now {}",
                self.id,
                s.cid,
                self.cid
            );
        }
        if s.acked_features & !self.features() != 0 {
            return bad(format!("features {:#x} not offered", s.acked_features));
        }
        self.acked = s.acked_features;
        self.paused_mux = None;
        self.reset_event = true;
        Ok(())
    }
}
