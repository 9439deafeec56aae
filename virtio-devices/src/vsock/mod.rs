//! virtio-vsock (virtio 1.2 §5.10) with the hybrid Unix-socket backend of
//! Cloud Hypervisor and Firecracker.
//!
//! [`VirtioVsock`] offers the guest a CID and stream sockets to the host
//! (CID 2). Host programs reach guest port N by connecting to the device's
//! Unix socket and writing `CONNECT N\n` (answered `OK <host port>\n`);
//! guest connections to host port P reach the Unix socket `<socket>_P`.
//! `packet` is the wire header, `conn` one connection with its credit
//! accounting, `muxer` the socket side and `worker` the queue side.

mod conn;
mod device;
mod muxer;
pub mod packet;
mod worker;

pub use device::{
    VirtioVsock, VsockError, VsockState, MAX_GUEST_CID, MIN_GUEST_CID, QUEUE_SIZE, VIRTIO_ID_VSOCK,
    VSOCK_STATE_VERSION,
};

#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod test_queue;
#[cfg(test)]
mod tests;
