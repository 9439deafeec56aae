//! The worker of an active vhost-user device (`vu-<name>` thread): relays
//! the backend's call eventfds to the transport's interrupts and watches
//! the socket, so a backend that hangs up (or sends what it must not) marks
//! the device broken at once instead of leaving the guest waiting. For
//! devices that reconnect (vhost-user-blk), it then retries the socket
//! every [`RETRY`] and, once a backend listens again, hands it the running
//! vrings (and the in-flight record) so the guest's I/O carries on.

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{error, info, warn};
use vhost::vhost_user::Frontend;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{Inflight, VhostUserConnection};
use super::rings::{connect_again, start_backend, RingBase, RingPlan};
use super::VhostUserError;
use crate::device::{GuestMemory, VirtioInterrupt, VirtioInterruptType};
use crate::worker::{HandlerError, QueueHandler, ThreadSetup};

/// How often a lost backend's socket is tried again.
pub(crate) const RETRY: Duration = Duration::from_millis(500);

/// Extra fd ids of the relay.
const SOCKET: usize = 0;
const TIMER: usize = 1;

/// What the relay needs to restart a backend that came back.
pub(crate) struct Rejoin {
    pub(crate) socket: PathBuf,
    pub(crate) num_queues: usize,
    pub(crate) setup: Option<ThreadSetup>,
    pub(crate) acked: u64,
    pub(crate) mem: GuestMemory,
    pub(crate) plans: Vec<RingPlan>,
    pub(crate) inflight: Option<Arc<Inflight>>,
    /// Where the new connection goes for the device to adopt.
    pub(crate) replacement: Arc<Mutex<Option<VhostUserConnection>>>,
}

impl Rejoin {
    fn try_once(&self) -> Result<VhostUserConnection, VhostUserError> {
        let mut conn = connect_again(
            &self.socket,
            self.num_queues,
            self.setup.clone(),
            self.acked,
        )?;
        start_backend(
            &mut conn,
            self.acked,
            &self.mem.memory(),
            None,
            self.inflight.as_deref(),
            &self.plans,
            RingBase::UsedIndex,
        )?;
        // Requests posted while no backend listened had their kicks
        // swallowed: kick every ring once (a spurious kick is harmless).
        for r in &self.plans {
            let _ = r.kick.write(1);
        }
        Ok(conn)
    }
}

/// Relays interrupts and watches the backend's socket.
pub(crate) struct Relay {
    name: String,
    interrupt: Arc<dyn VirtioInterrupt>,
    /// Keeps the socket open while it is polled.
    frontend: Frontend,
    socket_fd: RawFd,
    broken: Arc<AtomicBool>,
    /// Held by the device while it talks to the running backend (hot-added
    /// memory): the reply it waits for is not unsolicited data.
    exchange: Arc<Mutex<()>>,
    /// Set for devices that reconnect, with the retry timer.
    rejoin: Option<(Rejoin, TimerFd)>,
    connected: bool,
    retries: u32,
    new_fds: Option<Vec<RawFd>>,
}

impl Relay {
    pub(crate) fn new(
        name: String,
        interrupt: Arc<dyn VirtioInterrupt>,
        conn: &VhostUserConnection,
        broken: Arc<AtomicBool>,
        exchange: Arc<Mutex<()>>,
        rejoin: Option<Rejoin>,
    ) -> Result<Self, VhostUserError> {
        let rejoin = match rejoin {
            Some(r) => Some((
                r,
                TimerFd::new().map_err(|e| {
                    VhostUserError::Io(std::io::Error::from_raw_os_error(e.errno()))
                })?,
            )),
            None => None,
        };
        Ok(Relay {
            name,
            interrupt,
            frontend: conn.frontend_handle(),
            socket_fd: conn.socket_fd(),
            broken,
            exchange,
            rejoin,
            connected: true,
            retries: 0,
            new_fds: None,
        })
    }

    /// The backend hung up or misbehaved (`why`).
    fn lost(&mut self, why: String) -> Result<(), HandlerError> {
        error!("{}: {why}; device marked broken", self.name);
        self.broken.store(true, Ordering::Release);
        self.on_broken();
        let Some((rejoin, timer)) = &mut self.rejoin else {
            return Err(HandlerError::Other(why));
        };
        // SAFETY: shutdown of the socket `self.frontend` keeps open; a
        // backend that sent garbage sees the connection end.
        unsafe { libc::shutdown(self.socket_fd, libc::SHUT_RDWR) };
        if let Err(e) = timer.reset(RETRY, Some(RETRY)) {
            return Err(HandlerError::Other(format!("{why}; no retry timer: {e}")));
        }
        info!(
            "{}: reconnecting to {} every {} ms",
            self.name,
            rejoin.socket.display(),
            RETRY.as_millis()
        );
        self.connected = false;
        self.retries = 0;
        Ok(())
    }

    fn retry(&mut self) {
        let Some((rejoin, timer)) = &mut self.rejoin else {
            return;
        };
        let _ = timer.wait();
        match rejoin.try_once() {
            Ok(mut conn) => {
                // RAM hot-added while this backend was being set up found
                // no live connection to go to: send it now, under the slot
                // lock, so the device's `memory_added` either sees this
                // connection or ran before this looks at the memory.
                let mut slot = match rejoin.replacement.lock() {
                    Ok(slot) => slot,
                    Err(poisoned) => poisoned.into_inner(),
                };
                if let Err(e) = conn.add_memory(&rejoin.mem.memory()) {
                    warn!(
                        "{}: restarted backend refused the guest memory: {e}",
                        self.name
                    );
                    self.retries = self.retries.saturating_add(1);
                    return;
                }
                let _ = timer.clear();
                self.frontend = conn.frontend_handle();
                self.socket_fd = conn.socket_fd();
                info!(
                    "{}: reconnected to {}; vrings handed over",
                    self.name,
                    conn.socket().display()
                );
                *slot = Some(conn);
                drop(slot);
                self.connected = true;
                self.broken.store(false, Ordering::Release);
                self.new_fds = Some(self.extra_fds());
            }
            Err(e) => {
                if self.retries == 0 {
                    warn!("{}: backend not back yet: {e}", self.name);
                }
                self.retries = self.retries.saturating_add(1);
            }
        }
    }
}

impl QueueHandler for Relay {
    fn handle_queue(&mut self, index: u16) -> Result<(), HandlerError> {
        if let Err(e) = self.interrupt.trigger(VirtioInterruptType::Queue(index)) {
            warn!("{}: queue {index}: interrupt lost: {e}", self.name);
        }
        Ok(())
    }

    fn extra_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.socket_fd];
        if let Some((_, timer)) = &self.rejoin {
            fds.push(timer.as_raw_fd());
        }
        fds
    }

    fn take_new_fds(&mut self) -> Option<Vec<RawFd>> {
        self.new_fds.take()
    }

    fn fd_wanted(&self, id: usize) -> bool {
        match id {
            SOCKET => self.connected,
            _ => !self.connected,
        }
    }

    fn handle_fd(&mut self, id: usize) -> Result<(), HandlerError> {
        if id == TIMER {
            self.retry();
            return Ok(());
        }
        // An exchange the device runs consumes its own reply: wait for it
        // to end, then look again.
        let exchange = self.exchange.clone();
        let held = match exchange.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
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
        drop(held);
        self.lost(why)
    }

    fn on_broken(&mut self) {
        // The driver reads DEVICE_NEEDS_RESET after a config interrupt.
        let _ = self.interrupt.trigger(VirtioInterruptType::Config);
    }
}
