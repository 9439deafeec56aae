//! Bounds every vhost-user exchange in time.
//!
//! The `vhost` crate's frontend blocks in `recvmsg` until the backend
//! answers, and retries on `EAGAIN`, so a socket timeout alone cannot stop
//! a backend that stalls. Each exchange therefore holds a [`Deadline`]: one
//! process-wide `vhost-user-wd` thread shuts the socket down when a
//! deadline passes, which makes the blocked call return an error. The
//! connection is then dead and its device broken, but no VMM thread hangs.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use log::{error, warn};

use crate::worker::ThreadSetup;

struct Watch {
    id: u64,
    fd: RawFd,
    deadline: Instant,
    fired: Arc<AtomicBool>,
}

#[derive(Default)]
struct Watches {
    next_id: u64,
    list: Vec<Watch>,
}

struct Watchdog {
    watches: Mutex<Watches>,
    wake: Condvar,
}

static WATCHDOG: OnceLock<Option<&'static Watchdog>> = OnceLock::new();

/// An armed deadline on one socket; dropping it disarms it.
pub(crate) struct Deadline {
    id: u64,
    fired: Arc<AtomicBool>,
    dog: Option<&'static Watchdog>,
}

impl Deadline {
    /// True if the deadline passed and the socket was shut down.
    pub(crate) fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some(dog) = self.dog {
            if let Ok(mut w) = dog.watches.lock() {
                w.list.retain(|x| x.id != self.id);
            }
        }
    }
}

/// Arms a deadline `timeout` from now on socket `fd`, which must stay open
/// while the returned guard lives. The watchdog thread is started on first
/// use, running `setup` (its seccomp filter) first; if it cannot start,
/// exchanges are unbounded and a warning says so.
pub(crate) fn arm(fd: RawFd, timeout: Duration, setup: Option<&ThreadSetup>) -> Deadline {
    let fired = Arc::new(AtomicBool::new(false));
    let dog = *WATCHDOG.get_or_init(|| start(setup.cloned()));
    if let Some(dog) = dog {
        if let Ok(mut w) = dog.watches.lock() {
            w.next_id += 1;
            let id = w.next_id;
            w.list.push(Watch {
                id,
                fd,
                deadline: Instant::now() + timeout,
                fired: fired.clone(),
            });
            dog.wake.notify_one();
            return Deadline {
                id,
                fired,
                dog: Some(dog),
            };
        }
    }
    Deadline {
        id: 0,
        fired,
        dog: None,
    }
}

fn start(setup: Option<ThreadSetup>) -> Option<&'static Watchdog> {
    let dog: &'static Watchdog = Box::leak(Box::new(Watchdog {
        watches: Mutex::new(Watches::default()),
        wake: Condvar::new(),
    }));
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
    let spawned = std::thread::Builder::new()
        .name("vhost-user-wd".into())
        .spawn(move || {
            if let Some(setup) = setup {
                if let Err(e) = setup() {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
            let _ = tx.send(Ok(()));
            run(dog);
        });
    let started = match spawned {
        Ok(_) => rx.recv().unwrap_or_else(|_| Err("thread exited".into())),
        Err(e) => Err(e.to_string()),
    };
    match started {
        Ok(()) => Some(dog),
        Err(e) => {
            warn!("vhost-user watchdog not started ({e}): a stalled backend can block the VMM");
            None
        }
    }
}

fn run(dog: &'static Watchdog) {
    let Ok(mut w) = dog.watches.lock() else {
        return;
    };
    loop {
        let now = Instant::now();
        for x in w.list.iter().filter(|x| x.deadline <= now) {
            if !x.fired.swap(true, Ordering::AcqRel) {
                error!("vhost-user backend did not answer in time: disconnecting it");
                // SAFETY: the fd stays open while its Deadline is armed
                // (the entry is removed before the socket can close);
                // shutdown does not touch memory.
                unsafe { libc::shutdown(x.fd, libc::SHUT_RDWR) };
            }
        }
        let next = w
            .list
            .iter()
            .filter(|x| !x.fired.load(Ordering::Acquire))
            .map(|x| x.deadline)
            .min();
        let wait = next.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        w = match dog.wake.wait_timeout(w, wait) {
            Ok((g, _)) => g,
            Err(_) => return,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn deadline_unblocks_a_stalled_read() {
        let (mut a, _b) = UnixStream::pair().unwrap();
        let g = arm(a.as_raw_fd(), Duration::from_millis(100), None);
        let t = Instant::now();
        let mut buf = [0u8; 4];
        // Nothing is ever written: only the shutdown ends this read.
        assert_eq!(a.read(&mut buf).unwrap(), 0);
        assert!(g.fired());
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn disarmed_deadline_leaves_the_socket_alone() {
        let (a, mut b) = UnixStream::pair().unwrap();
        drop(arm(a.as_raw_fd(), Duration::from_millis(20), None));
        std::thread::sleep(Duration::from_millis(100));
        use std::io::Write;
        b.write_all(b"ok").unwrap();
        let mut buf = [0u8; 2];
        (&a).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ok");
    }
}
