//! The control virtqueue (virtio 1.2 §5.1.6.5): each chain carries a
//! class/command header and data, and one device-writable ack byte.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_CTRL_RX, VIRTIO_NET_ERR, VIRTIO_NET_OK,
};
use vm_memory::GuestMemory as GuestMemoryT;

use crate::worker::chain::ChainBuffers;

/// What a control command asks of the device beyond its ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CtrlAction {
    /// Nothing.
    None,
    /// Use this many queue pairs from now on.
    SetPairs(u16),
}

/// Decodes one control command; returns the ack byte and the action.
/// `max_pairs` bounds VQ_PAIRS_SET.
fn decode<M: GuestMemoryT>(bufs: &ChainBuffers, mem: &M, max_pairs: u16) -> (u8, CtrlAction) {
    let mut hdr = [0u8; 2];
    if bufs.read_at(mem, 0, &mut hdr).is_err() {
        return (VIRTIO_NET_ERR as u8, CtrlAction::None);
    }
    let (class, cmd) = (u32::from(hdr[0]), u32::from(hdr[1]));
    match class {
        VIRTIO_NET_CTRL_MQ if cmd == VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET => {
            let mut n = [0u8; 2];
            if bufs.read_at(mem, 2, &mut n).is_err() {
                return (VIRTIO_NET_ERR as u8, CtrlAction::None);
            }
            let pairs = u16::from_le_bytes(n);
            if u32::from(pairs) < VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN || pairs > max_pairs {
                return (VIRTIO_NET_ERR as u8, CtrlAction::None);
            }
            (VIRTIO_NET_OK as u8, CtrlAction::SetPairs(pairs))
        }
        // RX mode and MAC filter commands: accepted, every frame is
        // delivered anyway (the tap is the filter).
        VIRTIO_NET_CTRL_RX | VIRTIO_NET_CTRL_MAC => (VIRTIO_NET_OK as u8, CtrlAction::None),
        _ => (VIRTIO_NET_ERR as u8, CtrlAction::None),
    }
}

/// Handles one control chain: writes the ack into its first writable byte.
/// Returns the used length (1, or 0 for a chain with no room for the ack)
/// and the action to take.
pub(super) fn handle<M: GuestMemoryT>(
    bufs: &ChainBuffers,
    mem: &M,
    max_pairs: u16,
) -> (u32, CtrlAction) {
    if bufs.writable_len() == 0 {
        return (0, CtrlAction::None);
    }
    let (ack, action) = decode(bufs, mem, max_pairs);
    match bufs.write_at(mem, 0, &[ack]) {
        Ok(()) => (1, action),
        Err(_) => (0, CtrlAction::None),
    }
}
