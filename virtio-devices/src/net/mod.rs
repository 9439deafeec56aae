//! virtio-net over a host tap interface (virtio 1.2 §5.1).
//!
//! [`VirtioNet`] exposes one or more queue pairs (plus a control queue when
//! multi-queue) and moves frames between them and [`tap::Tap`] queues on
//! one worker thread, keeping [`NetCounters`] for the VMM's statistics API.

mod ctrl;
mod device;
mod rx;
mod state;
pub mod tap;
mod worker;

use std::fmt;
use std::io::Read;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

pub use device::{NetBackend, NetError, NetOptions, VirtioNet, DEFAULT_QUEUE_SIZE};
pub use state::{NetState, NET_STATE_VERSION};
pub use tap::{Tap, TapError, TAP_RUNTIME_IOCTLS, VNET_HDR_LEN};

/// Largest frame a guest may transmit, virtio header included (64 KiB GSO
/// frame plus Ethernet and VLAN headers plus the 12-byte header).
pub const MAX_FRAME_LEN: usize = 65562;

/// Traffic statistics of one net device, updated by its worker.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Bytes delivered to the guest (Ethernet frames, header excluded).
    pub rx_bytes: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Frames read from the tap that could not be delivered (too large for
    /// the guest's buffers).
    pub rx_dropped: AtomicU64,
    /// Bytes the guest sent to the tap (header excluded).
    pub tx_bytes: AtomicU64,
    /// Frames the guest sent to the tap.
    pub tx_frames: AtomicU64,
    /// Guest frames dropped (malformed chain, oversized, tap write error).
    pub tx_dropped: AtomicU64,
}

/// A point-in-time copy of [`NetCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCountersSnapshot {
    /// See [`NetCounters::rx_bytes`].
    pub rx_bytes: u64,
    /// See [`NetCounters::rx_frames`].
    pub rx_frames: u64,
    /// See [`NetCounters::rx_dropped`].
    pub rx_dropped: u64,
    /// See [`NetCounters::tx_bytes`].
    pub tx_bytes: u64,
    /// See [`NetCounters::tx_frames`].
    pub tx_frames: u64,
    /// See [`NetCounters::tx_dropped`].
    pub tx_dropped: u64,
}

impl NetCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> NetCountersSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetCountersSnapshot {
            rx_bytes: r(&self.rx_bytes),
            rx_frames: r(&self.rx_frames),
            rx_dropped: r(&self.rx_dropped),
            tx_bytes: r(&self.tx_bytes),
            tx_frames: r(&self.tx_frames),
            tx_dropped: r(&self.tx_dropped),
        }
    }
}

/// An Ethernet MAC address, written `12:34:56:78:9a:bc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a MAC address (expected six hex bytes like 12:34:56:78:9a:bc)")]
pub struct MacParseError(pub String);

impl MacAddr {
    /// A random, locally administered, unicast address (as Cloud
    /// Hypervisor's default), from `/dev/urandom`; a fixed fallback with the
    /// same bits set if that cannot be read.
    pub fn random_local() -> MacAddr {
        let mut b = [0u8; 6];
        let ok = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .is_ok();
        if !ok {
            b = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        }
        // Locally administered (bit 1), unicast (bit 0 clear).
        b[0] = (b[0] | 0x02) & !0x01;
        MacAddr(b)
    }

    /// The six bytes.
    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[cfg(test)]
mod tests;
