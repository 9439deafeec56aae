//! vhost-user-net: a virtio-net device whose RX and TX queues a vhost-user
//! backend (DPDK's vhost PMD, e.g. `dpdk-testpmd --vdev net_vhost0,…`)
//! serves. chv keeps the config space (MAC, link status); the backend
//! moves the frames. One queue pair: multi-queue needs the control queue,
//! which vhost-user backends leave to the frontend and chv does not have
//! for vhost-user.
//!
//! As in Cloud Hypervisor, chv is the client (connects to the backend's
//! socket, and reconnects when a restarted backend listens again) or the
//! server (creates the socket and waits for the backend to connect).

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::*;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;

use crate::net::MacAddr;
use crate::vhost_user::{
    check_queue_options, VhostUserConnection, VhostUserDevice, VhostUserError, VhostUserSpec,
    DEFAULT_TIMEOUT,
};
use crate::worker::ThreadSetup;

/// Queues of the one RX/TX pair.
pub const NET_QUEUES: usize = 2;
/// How long chv in server mode waits for the backend to connect.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which side of the socket chv is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketRole {
    /// chv connects to the backend's socket.
    Client,
    /// chv creates the socket and the backend connects.
    Server,
}

/// What the user configures for one vhost-user-net device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VhostUserNetOptions {
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// Who connects to whom.
    pub role: SocketRole,
    /// Guest MAC; random locally administered when `None`.
    pub mac: Option<MacAddr>,
    /// Size of each queue.
    pub queue_size: u16,
    /// Offer checksum offload (and, with `offload_tso`, TSO).
    pub offload_csum: bool,
    /// Offer TCP segmentation offload.
    pub offload_tso: bool,
}

/// The backend-served features the model allows.
fn allowed_features(opts: &VhostUserNetOptions) -> u64 {
    let mut bits = vec![
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_RING_F_EVENT_IDX,
    ];
    if opts.offload_csum {
        bits.extend([VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM]);
        if opts.offload_tso {
            bits.extend([
                VIRTIO_NET_F_HOST_TSO4,
                VIRTIO_NET_F_HOST_TSO6,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6,
                VIRTIO_NET_F_HOST_ECN,
                VIRTIO_NET_F_GUEST_ECN,
            ]);
        }
    }
    bits.iter().fold(0u64, |a, &b| a | (1u64 << b))
}

/// Features chv serves itself from the config space.
const FRONTEND_FEATURES: u64 = (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_STATUS);

/// `struct virtio_net_config` up to `mtu`: MAC, status (link up), one
/// queue pair, no MTU.
fn config_space(mac: MacAddr) -> Vec<u8> {
    let mut c = Vec::with_capacity(12);
    c.extend_from_slice(&mac.bytes());
    c.extend_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    c.extend_from_slice(&1u16.to_le_bytes());
    c.extend_from_slice(&0u16.to_le_bytes());
    c
}

/// Creates `socket` and waits up to `timeout` for one backend to connect;
/// the socket file is removed once it has (or on failure). Waits in
/// `ppoll`, which the VMM thread's seccomp filter allows (hotplug).
fn accept_backend(socket: &Path, timeout: Duration) -> Result<UnixStream, VhostUserError> {
    let err = |source: std::io::Error| VhostUserError::Connect {
        path: socket.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(socket).map_err(err)?;
    let result = wait_readable(listener.as_raw_fd(), timeout).and_then(|()| listener.accept());
    let _ = std::fs::remove_file(socket);
    result.map(|(stream, _)| stream).map_err(err)
}

/// Waits until `fd` is readable or `timeout` passed.
fn wait_readable(fd: RawFd, timeout: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = libc::timespec {
            tv_sec: libc::time_t::try_from(left.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(left.subsec_nanos()),
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd and a valid timespec, both on the stack
        // for the duration of the call; no signal mask is passed.
        let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        match n {
            n if n > 0 => return Ok(()),
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no backend connected within {timeout:?}"),
                ))
            }
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Connects to (or waits for) the backend and builds the device.
pub fn new_vhost_user_net(
    opts: &VhostUserNetOptions,
    setup: Option<ThreadSetup>,
) -> Result<VhostUserDevice, VhostUserError> {
    new_vhost_user_net_with(opts, setup, ACCEPT_TIMEOUT)
}

/// As [`new_vhost_user_net`], with the server-mode wait given.
pub fn new_vhost_user_net_with(
    opts: &VhostUserNetOptions,
    setup: Option<ThreadSetup>,
    accept_timeout: Duration,
) -> Result<VhostUserDevice, VhostUserError> {
    check_queue_options(NET_QUEUES, opts.queue_size)?;
    let conn = match opts.role {
        SocketRole::Client => {
            VhostUserConnection::connect(&opts.socket, NET_QUEUES, DEFAULT_TIMEOUT, setup.clone())?
        }
        SocketRole::Server => {
            let stream = accept_backend(&opts.socket, accept_timeout)?;
            VhostUserConnection::from_stream(
                stream,
                &opts.socket,
                NET_QUEUES,
                DEFAULT_TIMEOUT,
                setup.clone(),
            )?
        }
    };
    let mac = opts.mac.unwrap_or_else(MacAddr::random_local);
    let spec = VhostUserSpec {
        name: "vhost-user-net".into(),
        device_type: VIRTIO_ID_NET,
        queue_sizes: vec![opts.queue_size; NET_QUEUES],
        features: allowed_features(opts),
        frontend_features: FRONTEND_FEATURES,
        config: config_space(mac),
        // A server-mode socket is gone once the backend connected.
        reconnect: opts.role == SocketRole::Client,
    };
    let mut dev = VhostUserDevice::new(spec, conn);
    if let Some(s) = setup {
        dev.set_thread_setup(s);
    }
    Ok(dev)
}

#[cfg(test)]
mod tests;
