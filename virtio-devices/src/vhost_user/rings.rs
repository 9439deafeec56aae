//! Handing a backend the device's running state: features, memory table,
//! in-flight record and vrings. The device does it at activation; the
//! relay does it again when a restarted backend comes back (live
//! reconnect), so both use [`start_backend`].

use std::path::Path;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::connection::{status, Inflight, VhostUserConnection, VringSetup, DEFAULT_TIMEOUT};
use super::VhostUserError;
use crate::worker::ThreadSetup;

/// One vring as the driver set it up, with the eventfds the backend uses.
pub(crate) struct RingPlan {
    /// Queue index.
    pub(crate) index: u16,
    /// Size the driver chose.
    pub(crate) size: u16,
    /// Descriptor table.
    pub(crate) desc: GuestAddress,
    /// Available ring.
    pub(crate) avail: GuestAddress,
    /// Used ring.
    pub(crate) used: GuestAddress,
    /// Next available index at activation.
    pub(crate) base: u16,
    /// The transport's notify eventfd (the backend's kick).
    pub(crate) kick: EventFd,
    /// The eventfd the backend signals (the relay polls it).
    pub(crate) call: EventFd,
}

/// Where each ring starts: where the driver left it at activation, or,
/// for a backend that replaces one that died, after the last request the
/// old one completed (the used index in guest memory; a backend with the
/// in-flight record corrects this itself).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum RingBase {
    Activation,
    UsedIndex,
}

/// Sends features, memory table, backend state, in-flight record and
/// every vring to `conn`, with SET_STATUS around them.
pub(crate) fn start_backend(
    conn: &mut VhostUserConnection,
    acked: u64,
    mem: &GuestMemoryMmap,
    backend_state: Option<&[u8]>,
    inflight: Option<&Inflight>,
    rings: &[RingPlan],
    base: RingBase,
) -> Result<(), VhostUserError> {
    conn.set_features_and_memory(acked, mem)?;
    conn.set_status(status::FEATURES_OK)?;
    if let Some(state) = backend_state {
        super::state::load(conn, state)?;
    }
    if let Some(inflight) = inflight {
        conn.set_inflight(inflight)?;
    }
    for r in rings {
        let base = match base {
            RingBase::Activation => r.base,
            RingBase::UsedIndex => mem
                .read_obj::<u16>(GuestAddress(r.used.0.wrapping_add(2)))
                .map_err(|_| VhostUserError::BadRing(r.used.0))?,
        };
        conn.start_vring(
            mem,
            &VringSetup {
                index: usize::from(r.index),
                size: r.size,
                desc: r.desc,
                avail: r.avail,
                used: r.used,
                base,
                kick: &r.kick,
                call: &r.call,
            },
        )?;
    }
    conn.set_status(status::DRIVER_OK)
}

/// Connects to `socket` again (a restarted backend), refusing a backend
/// that no longer offers a feature the driver accepted.
pub(crate) fn connect_again(
    socket: &Path,
    num_queues: usize,
    setup: Option<ThreadSetup>,
    acked: u64,
) -> Result<VhostUserConnection, VhostUserError> {
    let conn = VhostUserConnection::connect(socket, num_queues, DEFAULT_TIMEOUT, setup)?;
    let lost = acked & !conn.backend_features();
    if lost != 0 {
        return Err(VhostUserError::FeaturesLost(lost));
    }
    Ok(conn)
}
