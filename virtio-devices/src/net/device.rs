//! The virtio-net device: options, features, config space and worker
//! lifecycle.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use super::state::{NetResume, NetState, NET_STATE_VERSION};
use super::tap::{Tap, TapError};
use super::worker::NetHandler;
use super::{MacAddr, NetCounters};
use crate::device::{
    state_from_value, state_to_value, ActivateError, ActivatedQueue, GuestMemory, PausedQueue,
    VirtioDevice, VirtioInterrupt,
};
use crate::rate_limiter::{RateLimiter, RateLimits};
use crate::worker::{
    paused_queues, prepare_queues, spawn_worker, stop_for_pause, worker_broken, ThreadSetup,
    WorkerHandle,
};

/// Default size of each queue (as Cloud Hypervisor).
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Largest queue size the split ring allows.
const MAX_QUEUE_SIZE: u16 = 32768;
/// Most queue pairs (the tap multi-queue limit is 256; keep it modest).
const MAX_QUEUE_PAIRS: u16 = 16;
/// Size of the config space exposed: mac, status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;
/// Smallest MTU a virtio-net driver accepts (IPv4 minimum).
const MIN_MTU: u16 = 68;

/// Where the tap comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// Open (and create if missing) the tap with this name; a pattern such
    /// as `vmtap%d` lets the kernel pick the number.
    Name(String),
    /// Adopt already opened tap queue fds, one per queue pair (duplicated;
    /// the caller keeps and may close the originals).
    Fds(Vec<RawFd>),
}

/// How the net device is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetOptions {
    /// The tap to use.
    pub backend: NetBackend,
    /// Guest MAC address; a random locally administered one when `None`.
    pub mac: Option<MacAddr>,
    /// IPv4 address for the host side of the tap.
    pub ip: Option<Ipv4Addr>,
    /// Netmask for `ip`.
    pub mask: Option<Ipv4Addr>,
    /// MTU offered to the guest (VIRTIO_NET_F_MTU) and set on the tap.
    pub mtu: Option<u16>,
    /// Total RX+TX queues: an even number; more than 2 enables multi-queue
    /// (and a control queue).
    pub num_queues: u16,
    /// Size of each queue (power of two).
    pub queue_size: u16,
    /// Offer TCP segmentation offload both ways (needs `offload_csum`).
    pub offload_tso: bool,
    /// Offer checksum offload both ways.
    pub offload_csum: bool,
    /// Device id for logs and the thread name.
    pub id: String,
    /// Limits applied separately to receive and to transmit (each gets
    /// its own buckets, as in Cloud Hypervisor): one operation and the
    /// Ethernet bytes per frame.
    pub rate_limit: Option<RateLimits>,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            backend: NetBackend::Name("vmtap%d".into()),
            mac: None,
            ip: None,
            mask: None,
            mtu: None,
            num_queues: 2,
            queue_size: DEFAULT_QUEUE_SIZE,
            offload_tso: true,
            offload_csum: true,
            id: String::from("net0"),
            rate_limit: None,
        }
    }
}

/// Errors creating a net device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The options are unusable.
    #[error("invalid virtio-net options for {id}: {reason}")]
    InvalidOptions {
        /// Device id.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// The tap could not be opened or configured.
    #[error("virtio-net {id}: {source}")]
    Tap {
        /// Device id.
        id: String,
        /// The tap error.
        source: TapError,
    },
}

/// The virtio network device.
pub struct VirtioNet {
    taps: Vec<Tap>,
    opts: NetOptions,
    mac: MacAddr,
    queue_sizes: Vec<u16>,
    acked: u64,
    setup: Option<ThreadSetup>,
    worker: Option<WorkerHandle<NetHandler>>,
    counters: Arc<NetCounters>,
    rx_broken: Arc<AtomicBool>,
    /// What the next activation takes over (after a pause or a restore).
    resume: Option<NetResume>,
}

impl VirtioNet {
    /// Opens the tap(s) described by `opts.backend`, applies `ip`, `mask`
    /// and `mtu` and (for a named tap) brings the interface up.
    pub fn new(opts: NetOptions) -> Result<Self, NetError> {
        check_options(&opts)?;
        let pairs = usize::from(opts.num_queues / 2);
        let tap_err = |source| NetError::Tap {
            id: opts.id.clone(),
            source,
        };
        let taps = match &opts.backend {
            NetBackend::Name(name) => Tap::open_queues(name, pairs).map_err(tap_err)?,
            NetBackend::Fds(fds) => {
                if fds.len() != pairs {
                    return Err(invalid(
                        &opts,
                        &format!("{} tap fds for {pairs} queue pairs", fds.len()),
                    ));
                }
                fds.iter()
                    .map(|&fd| Tap::from_raw_fd_dup(fd))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(tap_err)?
            }
        };
        let first = &taps[0];
        if let Some(ip) = opts.ip {
            first.set_ip(ip).map_err(tap_err)?;
        }
        if let Some(mask) = opts.mask {
            first.set_netmask(mask).map_err(tap_err)?;
        }
        if let Some(mtu) = opts.mtu {
            first.set_mtu(mtu).map_err(tap_err)?;
        }
        if matches!(opts.backend, NetBackend::Name(_)) || opts.ip.is_some() {
            first.set_up().map_err(tap_err)?;
        }
        Self::with_taps(taps, opts)
    }

    /// Uses already opened `taps` (one per queue pair); `opts.backend` is
    /// only recorded. No interface configuration is done.
    pub fn with_taps(taps: Vec<Tap>, opts: NetOptions) -> Result<Self, NetError> {
        check_options(&opts)?;
        if taps.len() != usize::from(opts.num_queues / 2) {
            return Err(invalid(&opts, "one tap queue per queue pair needed"));
        }
        let pairs = opts.num_queues / 2;
        let total = opts.num_queues + u16::from(pairs > 1);
        Ok(VirtioNet {
            taps,
            mac: opts.mac.unwrap_or_else(MacAddr::random_local),
            queue_sizes: vec![opts.queue_size; usize::from(total)],
            opts,
            acked: 0,
            setup: None,
            worker: None,
            counters: Arc::new(NetCounters::default()),
            rx_broken: Arc::new(AtomicBool::new(false)),
            resume: None,
        })
    }

    /// Hook run first on every worker thread (seccomp filter install).
    pub fn set_thread_setup(&mut self, setup: ThreadSetup) {
        self.setup = Some(setup);
    }

    /// The device's traffic statistics (shared, live).
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    /// The guest MAC address (chosen at creation when not given).
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The tap interface name (the actual one when a pattern was given).
    pub fn tap_name(&self) -> &str {
        self.taps.first().map_or("", |t| t.name())
    }

    /// The options the device was created with.
    pub fn options(&self) -> &NetOptions {
        &self.opts
    }

    fn pairs(&self) -> u16 {
        self.opts.num_queues / 2
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&self.mac.0);
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&self.pairs().to_le_bytes());
        c[10..12].copy_from_slice(&self.opts.mtu.unwrap_or(0).to_le_bytes());
        c
    }

    /// TUN_F_* flags matching the offloads the driver accepted for RX.
    fn tap_offloads(&self) -> u32 {
        let has = |bit: u32| self.acked & (1u64 << bit) != 0;
        let mut flags = 0;
        if has(VIRTIO_NET_F_GUEST_CSUM) {
            flags |= libc::TUN_F_CSUM;
            if has(VIRTIO_NET_F_GUEST_TSO4) {
                flags |= libc::TUN_F_TSO4;
            }
            if has(VIRTIO_NET_F_GUEST_TSO6) {
                flags |= libc::TUN_F_TSO6;
            }
        }
        flags
    }
}

fn invalid(opts: &NetOptions, reason: &str) -> NetError {
    NetError::InvalidOptions {
        id: opts.id.clone(),
        reason: reason.to_string(),
    }
}

fn check_options(opts: &NetOptions) -> Result<(), NetError> {
    let q = opts.num_queues;
    if q < 2 || !q.is_multiple_of(2) || q / 2 > MAX_QUEUE_PAIRS {
        return Err(invalid(
            opts,
            "num_queues must be an even number between 2 and 32",
        ));
    }
    if opts.queue_size < 2 || !opts.queue_size.is_power_of_two() || opts.queue_size > MAX_QUEUE_SIZE
    {
        return Err(invalid(
            opts,
            "queue_size must be a power of two in 2..=32768",
        ));
    }
    if opts.mtu.is_some_and(|m| m < MIN_MTU) {
        return Err(invalid(opts, "mtu must be at least 68"));
    }
    Ok(())
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_STATUS)
            | (1 << VIRTIO_NET_F_MRG_RXBUF);
        if self.opts.mtu.is_some() {
            f |= 1 << VIRTIO_NET_F_MTU;
        }
        if self.opts.offload_csum {
            f |= (1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_GUEST_CSUM);
            // TSO depends on checksum offload (virtio 1.2 §5.1.3.1).
            if self.opts.offload_tso {
                f |= (1 << VIRTIO_NET_F_HOST_TSO4)
                    | (1 << VIRTIO_NET_F_HOST_TSO6)
                    | (1 << VIRTIO_NET_F_GUEST_TSO4)
                    | (1 << VIRTIO_NET_F_GUEST_TSO6);
            }
        }
        if self.pairs() > 1 {
            f |= (1 << VIRTIO_NET_F_MQ) | (1 << VIRTIO_NET_F_CTRL_VQ);
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
        // The MAC is writable only with VIRTIO_F_VERSION_1 absent (legacy);
        // every field is read-only here.
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
        let offloads = self.tap_offloads();
        let mut taps = Vec::with_capacity(self.taps.len());
        for tap in &self.taps {
            tap.set_offload(offloads)
                .map_err(|e| ActivateError::Device(e.to_string()))?;
            taps.push(tap.try_clone().map_err(ActivateError::Worker)?);
        }
        let mergeable = self.acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let mut handler = NetHandler::new(
            mem,
            interrupt,
            slots,
            taps,
            mergeable,
            self.counters.clone(),
            format!("virtio-net {}", self.opts.id),
            self.rx_broken.clone(),
        );
        if let Some(limits) = self.opts.rate_limit {
            let make = |dir: &str| {
                RateLimiter::private(&format!("{}-{dir}", self.opts.id), limits)
                    .map_err(|e| ActivateError::Device(e.to_string()))
            };
            handler.set_rate_limiters(make("rx")?, make("tx")?);
        }
        match self.resume.take() {
            // Resumed: the pairs the driver enabled and undelivered frames.
            Some(resume) => handler.apply_resume(resume),
            // Until the driver asks for more (MQ), only the first pair is
            // used (virtio 1.2 §5.1.6.5.5): steer all host traffic to it.
            None => handler.set_active_pairs(1),
        }
        let thread = format!("net-{}", self.opts.id);
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
        self.resume = None;
        self.rx_broken.store(false, Ordering::Release);
        match self.worker.take() {
            Some(w) => match w.stop() {
                Ok(_) => true,
                Err(e) => {
                    log::error!("virtio-net {}: {e}", self.opts.id);
                    false
                }
            },
            None => true,
        }
    }

    fn name(&self) -> &str {
        "virtio-net"
    }

    fn needs_reset(&self) -> bool {
        worker_broken(self.rx_broken.load(Ordering::Acquire), &self.worker)
    }

    fn pause(&mut self) -> Result<Vec<PausedQueue>, ActivateError> {
        let what = format!("virtio-net {}", self.opts.id);
        let Some((h, broken)) = stop_for_pause(&mut self.worker, &what)? else {
            return Ok(Vec::new());
        };
        if broken {
            self.rx_broken.store(true, Ordering::Release);
        }
        let (queues, resume) = h.into_resume();
        self.resume = Some(resume);
        Ok(paused_queues(queues))
    }

    fn snapshot_state(&self) -> serde_json::Value {
        let active_pairs = self.resume.as_ref().map_or(1, |r| r.active_pairs);
        state_to_value(&NetState {
            version: NET_STATE_VERSION,
            acked_features: self.acked,
            mac: self.mac.0,
            num_queues: self.opts.num_queues,
            queue_size: self.opts.queue_size,
            active_pairs,
        })
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), ActivateError> {
        let s = state_from_value("virtio-net", state, NET_STATE_VERSION, |s: &NetState| {
            s.version
        })?;
        let bad = |m: String| {
            Err(ActivateError::State(format!(
                "virtio-net {}: {m}",
                self.opts.id
            )))
        };
        if s.num_queues != self.opts.num_queues || s.queue_size != self.opts.queue_size {
            return bad(format!(
                "{} queues of {} saved, device has {} of {}",
                s.num_queues, s.queue_size, self.opts.num_queues, self.opts.queue_size
            ));
        }
        if s.active_pairs == 0 || s.active_pairs > self.pairs() {
            return bad(format!("{} active queue pairs", s.active_pairs));
        }
        if s.acked_features & !self.features() != 0 {
            return bad(format!("features {:#x} not offered", s.acked_features));
        }
        self.acked = s.acked_features;
        self.mac = MacAddr(s.mac);
        self.resume = Some(NetResume {
            active_pairs: s.active_pairs,
            pending: Vec::new(),
        });
        Ok(())
    }
}
