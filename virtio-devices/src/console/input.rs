//! The bounded host-input buffer shared by the console worker and whoever
//! feeds it (the polled tty fd, or other threads via [`ConsoleInput`]).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Most host-input bytes held while the guest posts no receive buffer.
pub const INPUT_BUFFER_BYTES: usize = 64 * 1024;

struct Shared {
    data: Mutex<VecDeque<u8>>,
    wake: EventFd,
}

/// A cloneable handle to the console's input buffer.
#[derive(Clone)]
pub struct ConsoleInput {
    shared: Arc<Shared>,
}

impl ConsoleInput {
    pub(super) fn new() -> std::io::Result<Self> {
        Ok(ConsoleInput {
            shared: Arc::new(Shared {
                data: Mutex::new(VecDeque::new()),
                wake: EventFd::new(EFD_NONBLOCK)?,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<u8>> {
        // A panicking holder cannot leave the byte queue inconsistent.
        self.shared
            .data
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `bytes` for the guest and wakes the worker; returns how many
    /// were accepted (fewer than given when the buffer is full).
    pub fn enqueue(&self, bytes: &[u8]) -> usize {
        let n = self.push(bytes);
        if n > 0 {
            // Losing a wake-up only delays delivery to the next event.
            let _ = self.shared.wake.write(1);
        }
        n
    }

    /// Appends what fits, without waking the worker.
    pub(super) fn push(&self, bytes: &[u8]) -> usize {
        let mut q = self.lock();
        let n = bytes.len().min(INPUT_BUFFER_BYTES.saturating_sub(q.len()));
        q.extend(&bytes[..n]);
        n
    }

    /// Free space in the buffer.
    pub(super) fn room(&self) -> usize {
        INPUT_BUFFER_BYTES.saturating_sub(self.lock().len())
    }

    /// Whether bytes are waiting.
    pub(super) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Removes up to `max` bytes from the front.
    pub(super) fn take(&self, max: usize) -> Vec<u8> {
        let mut q = self.lock();
        let n = max.min(q.len());
        q.drain(..n).collect()
    }

    /// A copy of every byte waiting (for a snapshot).
    pub(super) fn peek_all(&self) -> Vec<u8> {
        self.lock().iter().copied().collect()
    }

    /// Puts bytes back at the front (a delivery failed).
    pub(super) fn unget(&self, bytes: &[u8]) {
        let mut q = self.lock();
        for &b in bytes.iter().rev() {
            q.push_front(b);
        }
    }

    /// The eventfd signalled by [`Self::enqueue`].
    pub(super) fn wake_fd(&self) -> RawFd {
        self.shared.wake.as_raw_fd()
    }

    /// Clears the wake-up eventfd.
    pub(super) fn clear_wake(&self) {
        let _ = self.shared.wake.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_fifo() {
        let input = ConsoleInput::new().unwrap();
        assert!(input.is_empty());
        assert_eq!(input.enqueue(b"abc"), 3);
        let big = vec![7u8; INPUT_BUFFER_BYTES];
        assert_eq!(input.enqueue(&big), INPUT_BUFFER_BYTES - 3);
        assert_eq!(input.room(), 0);
        assert_eq!(input.enqueue(b"x"), 0);
        assert_eq!(input.take(2), b"ab");
        input.unget(b"b");
        assert_eq!(input.take(3), vec![b'b', b'c', 7]);
    }
}
