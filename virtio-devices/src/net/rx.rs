//! Delivering one host frame into the guest's receive queue.
//!
//! Without VIRTIO_NET_F_MRG_RXBUF a frame must fit one chain; with it, the
//! frame is spread over as many chains as needed and `num_buffers` in the
//! header says how many (virtio 1.2 §5.1.6.4). Chains are only completed
//! once the whole frame has a place, so a frame never half-arrives: when
//! the guest has too few buffers, the popped chains are put back and the
//! frame stays pending for the next attempt.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory as GuestMemoryT;

use super::tap::VNET_HDR_LEN;
use crate::worker::chain::ChainBuffers;
use crate::worker::HandlerError;

/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// What happened to a frame offered to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RxOutcome {
    /// Written into this many chains, all completed.
    Delivered(u16),
    /// The frame can never fit the guest's buffers; it was dropped and the
    /// buffers left available.
    Dropped,
    /// Not enough buffers now; nothing consumed, keep the frame.
    NoBuffers,
}

/// Result of [`deliver`]: the outcome and whether used entries were added
/// (so the driver must be notified), including malformed chains returned
/// with length 0.
pub(super) struct RxResult {
    pub outcome: RxOutcome,
    pub used_added: bool,
    /// Malformed chains completed with length 0.
    pub bad_chains: u32,
}

/// Whether a parsed RX chain is usable: device-writable only and large
/// enough for a header when it starts a frame.
fn usable(bufs: &ChainBuffers, first: bool) -> bool {
    let min = if first { VNET_HDR_LEN as u64 } else { 1 };
    bufs.readable_len() == 0 && bufs.writable_len() >= min
}

/// Puts `frame` (virtio header included, `frame.len() >= VNET_HDR_LEN`)
/// into `queue`'s buffers, completing the used chains without notifying.
pub(super) fn deliver<M: GuestMemoryT>(
    queue: &mut Queue,
    mem: &M,
    frame: &mut [u8],
    mergeable: bool,
) -> Result<RxResult, HandlerError> {
    let mut res = RxResult {
        outcome: RxOutcome::NoBuffers,
        used_added: false,
        bad_chains: 0,
    };
    let need = frame.len() as u64;
    let mut start = queue.next_avail();
    let mut chains: Vec<ChainBuffers> = Vec::new();
    let mut cap = 0u64;
    while cap < need {
        if !chains.is_empty() && (!mergeable || chains.len() >= usize::from(queue.size())) {
            // One chain (no MRG_RXBUF), or every buffer of the ring, is not
            // enough: this frame cannot ever be received.
            queue.set_next_avail(start);
            res.outcome = RxOutcome::Dropped;
            return Ok(res);
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            queue.set_next_avail(start);
            return Ok(res);
        };
        let head = chain.head_index();
        match ChainBuffers::parse(chain) {
            Ok(b) if usable(&b, chains.is_empty()) => {
                cap += b.writable_len();
                chains.push(b);
            }
            _ => {
                // A malformed chain: return it empty. Chains collected for
                // this frame go back empty too, since a frame's buffers
                // must be contiguous in the used ring.
                for c in chains.drain(..) {
                    queue.add_used(mem, c.head, 0)?;
                }
                queue.add_used(mem, head, 0)?;
                res.used_added = true;
                res.bad_chains += 1;
                cap = 0;
                start = queue.next_avail();
            }
        }
    }
    // At most a queue size of chains, so the count fits a u16.
    let count = chains.len() as u16;
    frame[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&count.to_le_bytes());
    let mut off = 0usize;
    for c in &chains {
        let n = (c.writable_len() as usize).min(frame.len() - off);
        let len = match c.write_at(mem, 0, &frame[off..off + n]) {
            // n <= writable_len, which is a sum of u32 lengths bounded by
            // the frame size here.
            Ok(()) => n as u32,
            Err(e) => {
                log::warn!("virtio-net: rx buffer write failed: {e}");
                0
            }
        };
        off += n;
        queue.add_used(mem, c.head, len)?;
    }
    res.used_added = true;
    res.outcome = RxOutcome::Delivered(count);
    Ok(res)
}

/// After [`RxOutcome::NoBuffers`]: asks the driver to notify when it adds
/// any buffer beyond those already published (chains put back are still
/// "available", so plain `enable_notification` would point the EVENT_IDX
/// threshold behind them and the driver would never kick). Returns true if
/// buffers were added meanwhile (retry now).
pub(super) fn arm_rx_notification<M: GuestMemoryT>(
    queue: &mut Queue,
    mem: &M,
) -> Result<bool, HandlerError> {
    let saved = queue.next_avail();
    let avail = queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire)?;
    queue.set_next_avail(avail.0);
    let more = queue.enable_notification(mem);
    queue.set_next_avail(saved);
    Ok(more?)
}
