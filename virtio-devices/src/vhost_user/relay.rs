//! The worker of an active vhost-user device (`vu-<name>` thread): relays
//! the backend's call eventfds to the transport's interrupts and watches
//! the socket, so a backend that hangs up (or sends what it must not) marks
//! the device broken at once instead of leaving the guest waiting.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use log::{error, warn};
use vhost::vhost_user::Frontend;

use crate::device::{VirtioInterrupt, VirtioInterruptType};
use crate::worker::{HandlerError, QueueHandler};

/// Relays interrupts and watches the backend's socket.
pub(crate) struct Relay {
    pub(crate) name: String,
    pub(crate) interrupt: Arc<dyn VirtioInterrupt>,
    /// Keeps the socket open while it is polled.
    pub(crate) frontend: Frontend,
    pub(crate) socket_fd: RawFd,
    pub(crate) broken: Arc<AtomicBool>,
}

impl QueueHandler for Relay {
    fn handle_queue(&mut self, index: u16) -> Result<(), HandlerError> {
        if let Err(e) = self.interrupt.trigger(VirtioInterruptType::Queue(index)) {
            warn!("{}: queue {index}: interrupt lost: {e}", self.name);
        }
        Ok(())
    }

    fn extra_fds(&self) -> Vec<RawFd> {
        vec![self.socket_fd]
    }

    fn handle_fd(&mut self, _id: usize) -> Result<(), HandlerError> {
        let mut byte = 0u8;
        // SAFETY: peeks one byte into a local; the fd is the frontend's
        // socket, kept open by `self.frontend`.
        let n = unsafe {
            libc::recv(
                self.socket_fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let why = match n {
            0 => "the backend disconnected".to_string(),
            n if n > 0 => "the backend sent a message nobody asked for".to_string(),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted
                {
                    return Ok(());
                }
                format!("backend socket error: {e}")
            }
        };
        let _ = &self.frontend;
        error!("{}: {why}; device marked broken", self.name);
        self.broken.store(true, Ordering::Release);
        self.on_broken();
        Err(HandlerError::Other(why))
    }

    fn on_broken(&mut self) {
        // The driver reads DEVICE_NEEDS_RESET after a config interrupt.
        let _ = self.interrupt.trigger(VirtioInterruptType::Config);
    }
}
