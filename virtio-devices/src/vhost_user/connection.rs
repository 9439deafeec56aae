//! One frontend connection to a vhost-user backend: negotiation, memory
//! table, vring setup and teardown, on the `vhost` crate's [`Frontend`].
//!
//! Every exchange is bounded by a [`watchdog`](super::watchdog) deadline,
//! and the first failed exchange marks the connection broken: the stream
//! may be out of step with the backend, so nothing more is sent on it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::info;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags,
    VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures, MAX_ATTACHED_FD_ENTRIES,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};
use vmm_sys_util::eventfd::EventFd;

use super::watchdog;
use super::VhostUserError;
use crate::worker::ThreadSetup;

/// `VHOST_USER_F_PROTOCOL_FEATURES`: the backend speaks protocol features
/// (a vhost-user bit, never offered to the guest).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// How long one exchange with the backend may take before it is taken
/// for hung and disconnected. Generous: a backend maps the whole memory
/// table on `SET_MEM_TABLE`, and a niced or busy-polling backend (DPDK) on
/// a loaded host has been seen to need more than 5 s for it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Protocol features the frontend can use.
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::RESET_DEVICE
        | VhostUserProtocolFeatures::DEVICE_STATE
        | VhostUserProtocolFeatures::STATUS
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
}

/// The backend's shared record of requests in flight
/// (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`): the frontend keeps the fd so
/// a restarted backend can pick up what its predecessor had not finished.
pub struct Inflight {
    info: VhostUserInflight,
    file: std::fs::File,
}

/// `VHOST_USER_SET_STATUS` (the `vhost` crate's frontend does not send it).
const SET_STATUS: u32 = 39;
/// Header flags: protocol version 1, and "needs a reply".
const HDR_VERSION: u32 = 0x1;
const HDR_NEED_REPLY: u32 = 0x8;
const HDR_REPLY: u32 = 0x4;

/// Virtio device status bits the frontend reports with `SET_STATUS`.
pub mod status {
    /// ACKNOWLEDGE | DRIVER | FEATURES_OK: features are settled.
    pub const FEATURES_OK: u8 = 0x1 | 0x2 | 0x8;
    /// ... and DRIVER_OK: the vrings are live.
    pub const DRIVER_OK: u8 = FEATURES_OK | 0x4;
}

/// Where a vring lives and how it is signalled, for [`VhostUserConnection::start_vring`].
pub struct VringSetup<'a> {
    /// Queue index.
    pub index: usize,
    /// Queue size the driver chose.
    pub size: u16,
    /// Descriptor table, available ring and used ring (guest addresses).
    pub desc: GuestAddress,
    /// Available ring.
    pub avail: GuestAddress,
    /// Used ring.
    pub used: GuestAddress,
    /// Next available index the backend starts from.
    pub base: u16,
    /// The driver's notify eventfd (the backend waits on it).
    pub kick: &'a EventFd,
    /// The eventfd the backend signals for used buffers.
    pub call: &'a EventFd,
}

/// A connected, negotiated vhost-user frontend.
pub struct VhostUserConnection {
    frontend: Frontend,
    socket: PathBuf,
    num_queues: usize,
    timeout: Duration,
    setup: Option<ThreadSetup>,
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
    broken: bool,
    /// The guest regions (start, length) the backend was given, in the
    /// order it got them; empty until the first memory table.
    mapped: Vec<(u64, u64)>,
    /// `GET_MAX_MEM_SLOTS`, asked the first time a region is added.
    max_mem_slots: Option<u64>,
}

impl VhostUserConnection {
    /// Connects to the backend listening on `socket`, takes ownership of
    /// it and negotiates protocol features for `num_queues` queues.
    /// `setup` runs on the watchdog thread if this starts it.
    pub fn connect(
        socket: &Path,
        num_queues: usize,
        timeout: Duration,
        setup: Option<ThreadSetup>,
    ) -> Result<Self, VhostUserError> {
        let stream = UnixStream::connect(socket).map_err(|e| VhostUserError::Connect {
            path: socket.to_path_buf(),
            source: e,
        })?;
        Self::from_stream(stream, socket, num_queues, timeout, setup)
    }

    /// As [`Self::connect`], on a stream already connected to `socket`.
    pub fn from_stream(
        stream: UnixStream,
        socket: &Path,
        num_queues: usize,
        timeout: Duration,
        setup: Option<ThreadSetup>,
    ) -> Result<Self, VhostUserError> {
        // Writes time out on their own (sendmsg returns EAGAIN, which the
        // crate retries); the watchdog bounds the whole exchange.
        let _ = stream.set_write_timeout(Some(timeout));
        let mut conn = VhostUserConnection {
            frontend: Frontend::from_stream(stream, num_queues as u64),
            socket: socket.to_path_buf(),
            num_queues,
            timeout,
            setup,
            backend_features: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            broken: false,
            mapped: Vec::new(),
            max_mem_slots: None,
        };
        conn.negotiate(num_queues)?;
        Ok(conn)
    }

    fn negotiate(&mut self, num_queues: usize) -> Result<(), VhostUserError> {
        self.call("SET_OWNER", |f| f.set_owner())?;
        self.backend_features = self.call("GET_FEATURES", |f| f.get_features())?;
        if self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let offered = self.call("GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
            let acked = offered & wanted_protocol_features();
            self.call("SET_PROTOCOL_FEATURES", |f| f.set_protocol_features(acked))?;
            self.protocol = acked;
            if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every request then gets an answer, so a backend's refusal
                // is an error here instead of a silent failure later.
                self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        // Without MQ the device type fixes the queue count (virtio-fs has
        // two); with it the backend says how many it serves.
        if num_queues > 1 && self.protocol.contains(VhostUserProtocolFeatures::MQ) {
            let max = self.call("GET_QUEUE_NUM", |f| f.get_queue_num())?;
            if max < num_queues as u64 {
                return Err(VhostUserError::QueueCount {
                    asked: num_queues,
                    max,
                });
            }
        }
        info!(
            "vhost-user {}: features {:#x}, protocol features {:#x}",
            self.socket.display(),
            self.backend_features,
            self.protocol.bits()
        );
        Ok(())
    }

    /// Runs one exchange under a deadline; any failure breaks the
    /// connection.
    fn call<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T, VhostUserError> {
        if self.broken {
            return Err(VhostUserError::Broken(self.socket.clone()));
        }
        let deadline = watchdog::arm(self.frontend.as_raw_fd(), self.timeout, self.setup.as_ref());
        let result = f(&mut self.frontend);
        let timed_out = deadline.fired();
        drop(deadline);
        result.map_err(|e| {
            self.broken = true;
            if timed_out {
                VhostUserError::Timeout {
                    op,
                    after: self.timeout,
                }
            } else {
                VhostUserError::Request { op, source: e }
            }
        })
    }

    /// A new connection to the same socket with the same parameters (a
    /// restarted backend).
    pub fn reopen(&self) -> Result<Self, VhostUserError> {
        Self::connect(
            &self.socket,
            self.num_queues,
            self.timeout,
            self.setup.clone(),
        )
    }

    /// Socket path of the backend.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The raw socket fd (polled for hang-ups while the device runs).
    pub fn socket_fd(&self) -> std::os::fd::RawFd {
        self.frontend.as_raw_fd()
    }

    /// A handle on the same frontend (it keeps the socket open).
    pub(crate) fn frontend_handle(&self) -> Frontend {
        self.frontend.clone()
    }

    /// True once an exchange failed; only a new connection helps then.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Marks the connection dead (the backend hung up).
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Virtio feature bits the backend offers (without the vhost-user bit).
    pub fn backend_features(&self) -> u64 {
        self.backend_features & !VHOST_USER_F_PROTOCOL_FEATURES
    }

    /// Protocol features both sides use.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// Reads `len` bytes of the device config space from the backend
    /// (needs `VHOST_USER_PROTOCOL_F_CONFIG`).
    pub fn get_config(&mut self, len: usize) -> Result<Vec<u8>, VhostUserError> {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(VhostUserError::Unsupported {
                what: "reading the device configuration".into(),
                feature: "VHOST_USER_PROTOCOL_F_CONFIG",
            });
        }
        let buf = vec![0u8; len];
        let (_, payload) = self.call("GET_CONFIG", |f| {
            f.get_config(0, len as u32, VhostUserConfigFlags::WRITABLE, &buf)
        })?;
        Ok(payload)
    }

    /// Acks the driver's `features` (plus the protocol-features bit if the
    /// backend offered it) and sends the memory table: every region must
    /// be file-backed (`memory.shared=on`) so the backend can map it.
    pub fn set_features_and_memory(
        &mut self,
        features: u64,
        mem: &GuestMemoryMmap,
    ) -> Result<(), VhostUserError> {
        let features = features | (self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES);
        self.call("SET_FEATURES", |f| f.set_features(features))?;
        self.send_mem_table(mem)
    }

    /// `SET_MEM_TABLE` with every region of `mem`.
    fn send_mem_table(&mut self, mem: &GuestMemoryMmap) -> Result<(), VhostUserError> {
        let regions = memory_table(mem)?;
        if regions.len() > MAX_ATTACHED_FD_ENTRIES {
            return Err(VhostUserError::MemSlots {
                regions: regions.len(),
                max: MAX_ATTACHED_FD_ENTRIES as u64,
            });
        }
        self.mapped.clear();
        self.call("SET_MEM_TABLE", |f| f.set_mem_table(&regions))?;
        self.mapped = regions
            .iter()
            .map(|r| (r.guest_phys_addr, r.memory_size))
            .collect();
        Ok(())
    }

    /// Whether hot-added RAM goes to the backend one region at a time
    /// (`ADD_MEM_REG`) rather than in a whole new `SET_MEM_TABLE`.
    pub fn supports_mem_slots(&self) -> bool {
        self.protocol
            .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
    }

    /// Hands the backend the regions of `mem` it has not mapped yet (RAM
    /// hot-added since its memory table went out): `ADD_MEM_REG` for each
    /// with `VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS`, the whole table
    /// again with `SET_MEM_TABLE` without it. Returns how many regions
    /// were new; a connection that has sent no table yet sends nothing
    /// (activation sends the whole table). Regions past the backend's
    /// `GET_MAX_MEM_SLOTS` are refused before anything is sent.
    pub fn add_memory(&mut self, mem: &GuestMemoryMmap) -> Result<usize, VhostUserError> {
        if self.mapped.is_empty() {
            return Ok(0);
        }
        let new: Vec<VhostUserMemoryRegionInfo> = memory_table(mem)?
            .into_iter()
            .filter(|r| !self.mapped.contains(&(r.guest_phys_addr, r.memory_size)))
            .collect();
        if new.is_empty() {
            return Ok(0);
        }
        if !self.supports_mem_slots() {
            self.send_mem_table(mem)?;
            return Ok(new.len());
        }
        let max = match self.max_mem_slots {
            Some(max) => max,
            None => {
                let max = self.call("GET_MAX_MEM_SLOTS", |f| f.get_max_mem_slots())?;
                self.max_mem_slots = Some(max);
                max
            }
        };
        let regions = self.mapped.len() + new.len();
        if regions as u64 > max {
            return Err(VhostUserError::MemSlots { regions, max });
        }
        for r in &new {
            self.call("ADD_MEM_REG", |f| f.add_mem_region(r))?;
            self.mapped.push((r.guest_phys_addr, r.memory_size));
        }
        Ok(new.len())
    }

    /// Hands vring `v` to the backend and enables it.
    pub fn start_vring(
        &mut self,
        mem: &GuestMemoryMmap,
        v: &VringSetup<'_>,
    ) -> Result<(), VhostUserError> {
        let n = u64::from(v.size);
        let config = VringConfigData {
            queue_max_size: v.size,
            queue_size: v.size,
            flags: 0,
            desc_table_addr: host_address(mem, v.desc, 16 * n)?,
            used_ring_addr: host_address(mem, v.used, 6 + 8 * n)?,
            avail_ring_addr: host_address(mem, v.avail, 6 + 2 * n)?,
            log_addr: None,
        };
        let i = v.index;
        self.call("SET_VRING_NUM", |f| f.set_vring_num(i, v.size))?;
        self.call("SET_VRING_ADDR", |f| f.set_vring_addr(i, &config))?;
        self.call("SET_VRING_BASE", |f| f.set_vring_base(i, v.base))?;
        self.call("SET_VRING_CALL", |f| f.set_vring_call(i, v.call))?;
        self.call("SET_VRING_KICK", |f| f.set_vring_kick(i, v.kick))?;
        if self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            // With protocol features, rings start disabled.
            self.call("SET_VRING_ENABLE", |f| f.set_vring_enable(i, true))?;
        }
        Ok(())
    }

    /// Stops vring `index` and returns the next available index the
    /// backend would have processed.
    pub fn stop_vring(&mut self, index: usize) -> Result<u16, VhostUserError> {
        if self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            self.call("SET_VRING_ENABLE", |f| f.set_vring_enable(index, false))?;
        }
        let base = self.call("GET_VRING_BASE", |f| f.get_vring_base(index))?;
        u16::try_from(base).map_err(|_| VhostUserError::BadReply {
            op: "GET_VRING_BASE",
            what: format!("ring index {base} is beyond 16 bits"),
        })
    }

    /// Reports the device status to a backend that negotiated
    /// `VHOST_USER_PROTOCOL_F_STATUS` (a no-op otherwise): FEATURES_OK
    /// after the features, DRIVER_OK once the vrings run, 0 when stopped.
    pub fn set_status(&mut self, status: u8) -> Result<(), VhostUserError> {
        if !self.protocol.contains(VhostUserProtocolFeatures::STATUS) {
            return Ok(());
        }
        let need_reply = self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
        self.call("SET_STATUS", |f| {
            send_set_status(f.as_raw_fd(), status, need_reply)
        })
    }

    /// Whether the backend keeps an in-flight record the frontend holds.
    pub fn supports_inflight(&self) -> bool {
        self.protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    }

    /// Asks the backend for a fresh in-flight record for `num_queues`
    /// rings of up to `queue_size` entries.
    pub fn get_inflight(
        &mut self,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Inflight, VhostUserError> {
        let ask = VhostUserInflight::new(0, 0, num_queues, queue_size);
        let (info, file) = self.call("GET_INFLIGHT_FD", |f| f.get_inflight_fd(&ask))?;
        if info.mmap_size == 0 {
            return Err(VhostUserError::BadReply {
                op: "GET_INFLIGHT_FD",
                what: "an empty in-flight area".into(),
            });
        }
        // The frontend never maps the area; it only hands it back.
        Ok(Inflight {
            info: VhostUserInflight::new(info.mmap_size, info.mmap_offset, num_queues, queue_size),
            file,
        })
    }

    /// Gives the backend the in-flight record (before the vrings start).
    pub fn set_inflight(&mut self, inflight: &Inflight) -> Result<(), VhostUserError> {
        let fd = inflight.file.as_raw_fd();
        self.call("SET_INFLIGHT_FD", |f| f.set_inflight_fd(&inflight.info, fd))
    }

    /// Whether the backend can hand over its internal state.
    pub fn supports_device_state(&self) -> bool {
        self.protocol
            .contains(VhostUserProtocolFeatures::DEVICE_STATE)
    }

    /// Starts a state transfer in `direction` over the pipe end `fd`;
    /// the backend may return a different fd to use instead.
    pub fn set_device_state_fd(
        &mut self,
        direction: VhostTransferStateDirection,
        fd: OwnedFd,
    ) -> Result<Option<std::fs::File>, VhostUserError> {
        if !self.supports_device_state() {
            return Err(VhostUserError::Unsupported {
                what: "transferring the backend's state".into(),
                feature: "VHOST_USER_PROTOCOL_F_DEVICE_STATE",
            });
        }
        self.call("SET_DEVICE_STATE_FD", |f| {
            f.set_device_state_fd(direction, VhostTransferStatePhase::STOPPED, fd)
        })
    }

    /// Asks the backend whether the last state transfer succeeded.
    pub fn check_device_state(&mut self) -> Result<(), VhostUserError> {
        self.call("CHECK_DEVICE_STATE", |f| f.check_device_state())
    }
}

/// Sends `SET_STATUS` on the raw socket and, if asked for, checks the
/// backend's acknowledgement: a reply for another request, a short one or
/// a non-zero code is an error.
fn send_set_status(fd: std::os::fd::RawFd, status: u8, need_reply: bool) -> vhost::Result<()> {
    use std::io::{Read, Write};
    use std::mem::ManuallyDrop;
    use std::os::fd::FromRawFd;
    let proto = |e: vhost::vhost_user::Error| vhost::Error::VhostUserProtocol(e);
    let io = |e: std::io::Error| proto(vhost::vhost_user::Error::SocketError(e));
    // SAFETY: borrows the frontend's open socket for this exchange only;
    // ManuallyDrop keeps it from being closed here.
    let mut sock = ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(fd) });
    let flags = HDR_VERSION | if need_reply { HDR_NEED_REPLY } else { 0 };
    let mut msg = Vec::with_capacity(20);
    msg.extend_from_slice(&SET_STATUS.to_le_bytes());
    msg.extend_from_slice(&flags.to_le_bytes());
    msg.extend_from_slice(&8u32.to_le_bytes());
    msg.extend_from_slice(&u64::from(status).to_le_bytes());
    sock.write_all(&msg).map_err(io)?;
    if !need_reply {
        return Ok(());
    }
    let mut reply = [0u8; 20];
    sock.read_exact(&mut reply).map_err(io)?;
    let word = |i: usize| u32::from_le_bytes([reply[i], reply[i + 1], reply[i + 2], reply[i + 3]]);
    if word(0) != SET_STATUS || word(4) & HDR_REPLY == 0 || word(8) != 8 {
        return Err(proto(vhost::vhost_user::Error::InvalidMessage));
    }
    let mut code = [0u8; 8];
    code.copy_from_slice(&reply[12..]);
    if u64::from_le_bytes(code) != 0 {
        return Err(proto(vhost::vhost_user::Error::BackendInternalError));
    }
    Ok(())
}

/// The memory table for `mem`: one entry per (file-backed) region.
pub fn memory_table(
    mem: &GuestMemoryMmap,
) -> Result<Vec<VhostUserMemoryRegionInfo>, VhostUserError> {
    mem.iter()
        .map(|r| {
            VhostUserMemoryRegionInfo::from_guest_region(r)
                .map_err(|_| VhostUserError::NotShared(r.start_addr().raw_value()))
        })
        .collect()
}

/// The frontend's address of `len` bytes at `addr`, which must lie inside
/// one region (the backend translates through the memory table).
fn host_address(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: u64,
) -> Result<u64, VhostUserError> {
    let bad = || VhostUserError::BadRing(addr.raw_value());
    let region = mem.find_region(addr).ok_or_else(bad)?;
    let offset = addr.raw_value() - region.start_addr().raw_value();
    if offset.checked_add(len).is_none_or(|end| end > region.len()) {
        return Err(bad());
    }
    let host = region
        .get_host_address(MemoryRegionAddress(offset))
        .map_err(|_| bad())?;
    Ok(host as u64)
}
