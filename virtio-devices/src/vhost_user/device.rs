//! A virtio device whose queues a vhost-user backend serves: the model
//! every vhost-user device (virtio-fs, vhost-user-blk) is built from. The
//! device model holds the config space and the features; the backend gets
//! the memory table and the vrings at activation, and gives the ring
//! positions back on pause and reset.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use log::{error, info, warn};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::connection::{Inflight, VhostUserConnection};
use super::relay::{Rejoin, Relay};
use super::rings::{connect_again, start_backend, RingBase, RingPlan};
use super::VhostUserError;
use crate::device::{
    state_from_value, state_to_value, ActivateError, ActivatedQueue, GuestMemory, PausedQueue,
    VirtioDevice, VirtioInterrupt,
};
use crate::worker::{spawn_worker, ThreadSetup, WorkerHandle};

/// Version of [`VhostUserDeviceState`] this code writes and reads.
pub const VHOST_USER_STATE_VERSION: u32 = 1;

/// What a vhost-user device model presents to the driver.
#[derive(Clone, Debug)]
pub struct VhostUserSpec {
    /// Name for logs and the worker thread ("virtio-fs", …).
    pub name: String,
    /// Virtio device type.
    pub device_type: u32,
    /// Maximum size of each queue.
    pub queue_sizes: Vec<u16>,
    /// Feature bits the model allows; the driver is offered those the
    /// backend offers too.
    pub features: u64,
    /// Feature bits the frontend itself implements (virtio-net's MAC in
    /// the config space): offered whatever the backend offers, and never
    /// sent to it (a backend refuses bits it did not offer).
    pub frontend_features: u64,
    /// Device configuration space.
    pub config: Vec<u8>,
    /// Reconnect while running when the backend goes away and comes back
    /// on the same socket (vhost-user-blk; a restarted virtiofsd has lost
    /// the guest's inodes, so virtio-fs does not).
    pub reconnect: bool,
}

/// The saved state of a vhost-user device.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VhostUserDeviceState {
    /// Format version ([`VHOST_USER_STATE_VERSION`]).
    pub version: u32,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// The backend's own state (`SET_DEVICE_STATE_FD`), hex-encoded, if
    /// it was saved.
    #[serde(default)]
    pub backend_state: Option<String>,
}

struct ActiveVring {
    index: u16,
    queue: Queue,
    /// The transport's notify eventfd (the backend's kick).
    kick: EventFd,
}

/// A virtio device served by a vhost-user backend.
pub struct VhostUserDevice {
    spec: VhostUserSpec,
    conn: VhostUserConnection,
    offered: u64,
    acked: u64,
    setup: Option<ThreadSetup>,
    relay: Option<WorkerHandle<Relay>>,
    vrings: Vec<ActiveVring>,
    mem: Option<GuestMemory>,
    broken: Arc<AtomicBool>,
    /// Backend state to load at the next activation (after a restore).
    pending_backend_state: Option<Vec<u8>>,
    /// Backend state saved by the last `prepare_snapshot`.
    saved_backend_state: Option<Vec<u8>>,
    /// The backend's in-flight record, kept across reconnects and pauses,
    /// dropped at a device reset.
    inflight: Option<Arc<Inflight>>,
    /// A connection the relay made to a restarted backend, adopted here
    /// when the relay stops.
    replacement: Arc<Mutex<Option<VhostUserConnection>>>,
    /// Held while the device talks to a running backend, so the relay
    /// does not take the reply for unsolicited data.
    exchange: Arc<Mutex<()>>,
}

impl VhostUserDevice {
    /// A device model over an established connection.
    pub fn new(spec: VhostUserSpec, conn: VhostUserConnection) -> Self {
        let offered = (spec.features & conn.backend_features()) | spec.frontend_features;
        VhostUserDevice {
            spec,
            conn,
            offered,
            acked: 0,
            setup: None,
            relay: None,
            vrings: Vec::new(),
            mem: None,
            broken: Arc::new(AtomicBool::new(false)),
            pending_backend_state: None,
            saved_backend_state: None,
            inflight: None,
            replacement: Arc::new(Mutex::new(None)),
            exchange: Arc::new(Mutex::new(())),
        }
    }

    /// The accepted features the backend is told about.
    fn backend_acked(&self) -> u64 {
        self.acked & !self.spec.frontend_features
    }

    /// Hook run first on the device's worker thread (seccomp filter).
    pub fn set_thread_setup(&mut self, setup: ThreadSetup) {
        self.setup = Some(setup);
    }

    /// The connection (for tests and state transfer).
    pub fn connection(&mut self) -> &mut VhostUserConnection {
        self.adopt_replacement();
        &mut self.conn
    }

    /// True while the backend serves the queues.
    pub fn is_active(&self) -> bool {
        !self.vrings.is_empty()
    }

    /// Connects again to the same socket (a restarted backend): the
    /// device must be inactive. Features the driver already accepted must
    /// still be offered.
    pub fn reconnect(&mut self) -> Result<(), VhostUserError> {
        self.adopt_replacement();
        let conn = connect_again(
            self.conn.socket(),
            self.spec.queue_sizes.len(),
            self.setup.clone(),
            self.backend_acked(),
        )?;
        info!(
            "{}: reconnected to {}",
            self.spec.name,
            conn.socket().display()
        );
        self.conn = conn;
        self.broken.store(false, Ordering::Release);
        Ok(())
    }

    /// Takes over the connection the relay made to a restarted backend.
    fn adopt_replacement(&mut self) {
        let taken = match self.replacement.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(conn) = taken {
            self.conn = conn;
        }
    }

    fn start(
        &mut self,
        mem: &GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), VhostUserError> {
        self.adopt_replacement();
        if self.conn.is_broken() {
            self.reconnect()?;
        }
        if self.inflight.is_none() && self.conn.supports_inflight() {
            let max = self.spec.queue_sizes.iter().copied().max().unwrap_or(0);
            let n = u16::try_from(self.spec.queue_sizes.len()).unwrap_or(u16::MAX);
            self.inflight = Some(Arc::new(self.conn.get_inflight(n, max)?));
        }
        let mut calls = Vec::with_capacity(queues.len());
        let mut vrings = Vec::with_capacity(queues.len());
        let mut plans = Vec::with_capacity(queues.len());
        for aq in queues {
            if usize::from(aq.index) >= self.spec.queue_sizes.len() {
                return Err(VhostUserError::BadRing(u64::from(aq.index)));
            }
            let call = EventFd::new(EFD_NONBLOCK).map_err(VhostUserError::Io)?;
            let q = &aq.queue;
            plans.push(RingPlan {
                index: aq.index,
                size: q.size(),
                desc: GuestAddress(q.desc_table()),
                avail: GuestAddress(q.avail_ring()),
                used: GuestAddress(q.used_ring()),
                base: q.next_avail(),
                kick: aq.notify.try_clone().map_err(VhostUserError::Io)?,
                call: call.try_clone().map_err(VhostUserError::Io)?,
            });
            calls.push((aq.index, call));
            vrings.push(ActiveVring {
                index: aq.index,
                queue: aq.queue,
                kick: aq.notify,
            });
        }
        let state = self.pending_backend_state.take();
        let acked = self.backend_acked();
        start_backend(
            &mut self.conn,
            acked,
            &mem.memory(),
            state.as_deref(),
            self.inflight.as_deref(),
            &plans,
            RingBase::Activation,
        )?;
        let rejoin = self.spec.reconnect.then(|| Rejoin {
            socket: self.conn.socket().to_path_buf(),
            num_queues: self.spec.queue_sizes.len(),
            setup: self.setup.clone(),
            acked: self.backend_acked(),
            mem: mem.clone(),
            plans,
            inflight: self.inflight.clone(),
            replacement: self.replacement.clone(),
        });
        let relay = Relay::new(
            self.spec.name.clone(),
            interrupt,
            &self.conn,
            self.broken.clone(),
            self.exchange.clone(),
            rejoin,
        )?;
        let name = format!("vu-{}", self.spec.name);
        let worker = spawn_worker(&name, self.setup.clone(), calls, relay)
            .map_err(|e| VhostUserError::Worker(e.error.to_string()))?;
        self.relay = Some(worker);
        self.vrings = vrings;
        self.mem = Some(mem.clone());
        Ok(())
    }

    /// Stops the relay and every vring; returns the queues with the ring
    /// positions the backend reached.
    fn stop(&mut self) -> Result<Vec<PausedQueue>, VhostUserError> {
        if let Some(w) = self.relay.take() {
            if let Err(e) = w.stop() {
                warn!("{}: relay thread: {e}", self.spec.name);
            }
        }
        self.adopt_replacement();
        let vrings = std::mem::take(&mut self.vrings);
        let mem = self.mem.take();
        let mut paused = Vec::with_capacity(vrings.len());
        let mut first_err = None;
        for mut v in vrings {
            match self.conn.stop_vring(usize::from(v.index)) {
                Ok(base) => {
                    v.queue.set_next_avail(base);
                    // The backend completed everything before `base`; the
                    // used index in guest memory says how far it got.
                    if let Some(mem) = &mem {
                        if let Ok(used) = v.queue.used_idx(&*mem.memory(), Ordering::Acquire) {
                            v.queue.set_next_used(used.0);
                        }
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
            drop(v.kick);
            paused.push(PausedQueue {
                index: v.index,
                queue: v.queue,
            });
        }
        if first_err.is_none() && !paused.is_empty() {
            if let Err(e) = self.conn.set_status(0) {
                first_err = Some(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(paused),
        }
    }

    /// Hands a running backend the RAM hot-added to `mem` (see
    /// [`VhostUserConnection::add_memory`]). An inactive or paused device
    /// has nothing to do: its next activation sends the whole table of the
    /// shared map. Neither has a connection the relay is replacing (a
    /// restarted backend): the relay sends the new regions before it hands
    /// that connection over. A backend that refuses or does not answer
    /// breaks the device (DEVICE_NEEDS_RESET; the reset and the next
    /// activation send the whole table to a new connection).
    pub fn add_memory(&mut self, mem: &GuestMemoryMmap) -> Result<usize, VhostUserError> {
        self.adopt_replacement();
        if !self.is_active() || self.conn.is_broken() {
            return Ok(0);
        }
        let _exchange = match self.exchange.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let added = self.conn.add_memory(mem).inspect_err(|e| {
            error!(
                "{}: hot-added memory: {e}; device marked broken",
                self.spec.name
            );
            self.broken.store(true, Ordering::Release);
        })?;
        if added > 0 {
            let how = if self.conn.supports_mem_slots() {
                "ADD_MEM_REG"
            } else {
                "SET_MEM_TABLE"
            };
            info!(
                "{}: {added} hot-added memory region(s) sent to the backend ({how})",
                self.spec.name
            );
        }
        Ok(added)
    }

    /// Saves the stopped backend's state (`SET_DEVICE_STATE_FD`, SAVE):
    /// the device must be paused.
    pub fn save_backend_state(&mut self) -> Result<Vec<u8>, VhostUserError> {
        super::state::save(&mut self.conn)
    }
}

impl VirtioDevice for VhostUserDevice {
    fn device_type(&self) -> u32 {
        self.spec.device_type
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.spec.queue_sizes
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.offered;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = self.spec.config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        if self.relay.is_some() {
            return Err(ActivateError::Device("already active".into()));
        }
        if queues.is_empty() {
            return Err(ActivateError::BadQueues("no queue activated".into()));
        }
        self.start(&mem, interrupt, queues).map_err(|e| {
            error!("{}: {e}", self.spec.name);
            self.broken.store(true, Ordering::Release);
            self.relay = None;
            self.vrings.clear();
            ActivateError::Device(e.to_string())
        })
    }

    fn reset(&mut self) -> bool {
        if let Err(e) = self.stop() {
            warn!("{}: stopping the backend on reset: {e}", self.spec.name);
        }
        self.acked = 0;
        // Entries of the old rings must not be replayed into new ones.
        self.inflight = None;
        self.broken.store(false, Ordering::Release);
        if self.conn.is_broken() {
            if let Err(e) = self.reconnect() {
                warn!("{}: backend still gone: {e}", self.spec.name);
            }
        }
        true
    }

    fn name(&self) -> &str {
        &self.spec.name
    }

    fn needs_reset(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    fn pause(&mut self) -> Result<Vec<PausedQueue>, ActivateError> {
        if self.relay.is_none() && self.vrings.is_empty() {
            return Ok(Vec::new());
        }
        self.stop()
            .map_err(|e| ActivateError::Device(format!("{}: {e}", self.spec.name)))
    }

    fn memory_added(&mut self, mem: &GuestMemoryMmap) -> Result<(), ActivateError> {
        self.add_memory(mem)
            .map(drop)
            .map_err(|e| ActivateError::Device(format!("{}: {e}", self.spec.name)))
    }

    fn prepare_snapshot(&mut self) -> Result<(), ActivateError> {
        self.saved_backend_state = None;
        if !self.conn.supports_device_state() {
            return Err(ActivateError::Device(format!(
                "{}: cannot snapshot: the backend ({}) lacks VHOST_USER_PROTOCOL_F_DEVICE_STATE",
                self.spec.name,
                self.conn.socket().display()
            )));
        }
        let state = self.save_backend_state().map_err(|e| {
            ActivateError::Device(format!("{}: saving backend state: {e}", self.spec.name))
        })?;
        self.saved_backend_state = Some(state);
        Ok(())
    }

    fn snapshot_state(&self) -> serde_json::Value {
        state_to_value(&VhostUserDeviceState {
            version: VHOST_USER_STATE_VERSION,
            acked_features: self.acked,
            backend_state: self
                .saved_backend_state
                .as_deref()
                .map(super::state::to_hex),
        })
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), ActivateError> {
        let s = state_from_value(
            &self.spec.name,
            state,
            VHOST_USER_STATE_VERSION,
            |s: &VhostUserDeviceState| s.version,
        )?;
        if s.acked_features & !self.offered != 0 {
            return Err(ActivateError::State(format!(
                "{}: features {:#x} not offered by the backend",
                self.spec.name, s.acked_features
            )));
        }
        let backend = match &s.backend_state {
            Some(hex) => Some(
                super::state::from_hex(hex)
                    .ok_or_else(|| ActivateError::State("backend_state is not hex".into()))?,
            ),
            None => None,
        };
        if backend.is_some() && !self.conn.supports_device_state() {
            // Refused now, at restore, not later when the device restarts.
            return Err(ActivateError::State(format!(
                "{}: cannot restore the saved backend state: the backend ({}) lacks \
                 VHOST_USER_PROTOCOL_F_DEVICE_STATE",
                self.spec.name,
                self.conn.socket().display()
            )));
        }
        self.acked = s.acked_features;
        self.pending_backend_state = backend;
        Ok(())
    }
}
