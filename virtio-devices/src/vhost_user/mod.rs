//! The vhost-user frontend shared by every vhost-user device.
//!
//! A backend process (virtiofsd, qemu-storage-daemon, …) serves the
//! device's virtqueues directly from guest memory: chv sends it the memory
//! table (the memfds of `memory.shared=on` RAM), each vring's addresses and
//! its kick/call eventfds, and relays the call eventfds to the transport's
//! MSI-X vectors. `connection` is the protocol (on the `vhost` crate's
//! frontend), `device` the virtio device model over it, `relay` the worker
//! thread, `state` the backend state transfer for snapshots, `watchdog`
//! the deadline on every exchange. The backend is not trusted: a reply
//! that does not parse, a hang-up or a stall breaks the device, never the
//! VMM.

pub mod connection;
pub mod device;
mod relay;
mod rings;
pub mod state;
#[cfg(test)]
mod tests;
mod watchdog;

use std::path::PathBuf;
use std::time::Duration;

pub use connection::{Inflight, VhostUserConnection, VringSetup, DEFAULT_TIMEOUT};
pub use device::{VhostUserDevice, VhostUserDeviceState, VhostUserSpec};

/// Errors of the vhost-user frontend.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// The backend's socket could not be reached.
    #[error("cannot connect to vhost-user backend {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A request failed: the backend refused it, answered garbage or
    /// went away.
    #[error("vhost-user {op} failed: {source}")]
    Request {
        /// The request.
        op: &'static str,
        /// The crate's error.
        source: vhost::Error,
    },
    /// The backend did not answer in time (its socket was shut down).
    #[error("vhost-user backend did not answer {op} within {after:?}")]
    Timeout {
        /// The request.
        op: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// A reply that parsed but makes no sense.
    #[error("vhost-user {op}: bad reply: {what}")]
    BadReply {
        /// The request.
        op: &'static str,
        /// What was wrong.
        what: String,
    },
    /// An earlier failure broke this connection.
    #[error("the connection to vhost-user backend {} is broken", .0.display())]
    Broken(PathBuf),
    /// The backend lacks a feature this needs.
    #[error("{what} needs the backend to support {feature}")]
    Unsupported {
        /// What was asked.
        what: String,
        /// The missing (protocol) feature.
        feature: &'static str,
    },
    /// More queues than the backend has.
    #[error("{asked} queues asked, the backend has {max}")]
    QueueCount {
        /// Queues configured.
        asked: usize,
        /// Queues the backend serves.
        max: u64,
    },
    /// A guest RAM region is not file-backed, so the backend cannot map it.
    #[error("guest memory at {0:#x} is not shared: vhost-user devices need memory.shared=on")]
    NotShared(u64),
    /// Hot-added RAM would need more memory regions than the backend maps.
    #[error("guest memory needs {regions} regions, the vhost-user backend maps at most {max}")]
    MemSlots {
        /// Regions the guest memory has.
        regions: usize,
        /// The backend's limit (`GET_MAX_MEM_SLOTS`, or the 32 fds one
        /// `SET_MEM_TABLE` carries).
        max: u64,
    },
    /// A ring the driver set up is not inside one guest RAM region.
    #[error("vring at {0:#x} is not inside guest memory")]
    BadRing(u64),
    /// A restarted backend no longer offers features the driver accepted.
    #[error("the backend no longer offers features {0:#x} the driver accepted")]
    FeaturesLost(u64),
    /// The relay thread could not start.
    #[error("vhost-user worker: {0}")]
    Worker(String),
    /// `num_queues` is 0 or too large.
    #[error("num_queues must be 1 to 255, got {0}")]
    NumQueues(usize),
    /// `queue_size` is not a power of two in 2..=32768.
    #[error("queue_size must be a power of two from 2 to 32768, got {0}")]
    QueueSize(u16),
    /// A local resource (eventfd, pipe) failed.
    #[error("{0}")]
    Io(std::io::Error),
}

/// Checks a device's `num_queues` and `queue_size` options.
pub fn check_queue_options(num_queues: usize, queue_size: u16) -> Result<(), VhostUserError> {
    if num_queues == 0 || num_queues > 255 {
        return Err(VhostUserError::NumQueues(num_queues));
    }
    if !queue_size.is_power_of_two() || queue_size < 2 {
        return Err(VhostUserError::QueueSize(queue_size));
    }
    Ok(())
}
