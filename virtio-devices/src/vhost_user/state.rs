//! Moving a stopped backend's internal state in and out
//! (`SET_DEVICE_STATE_FD` + `CHECK_DEVICE_STATE`, vhost-user's device
//! state transfer): the frontend hands the backend one end of a pipe and
//! reads (save) or writes (load) the opaque state on the other, under a
//! deadline, with a size cap on what it accepts.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostTransferStateDirection;

use super::connection::VhostUserConnection;
use super::VhostUserError;

/// Most bytes of backend state accepted.
pub const MAX_BACKEND_STATE: usize = 64 << 20;
/// How long a whole transfer may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30);

fn pipe() -> Result<(File, File), VhostUserError> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(VhostUserError::Io(std::io::Error::last_os_error()));
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Waits until `f` is ready for `events` or the deadline passes.
fn wait(f: &File, events: i16, deadline: Instant) -> Result<(), VhostUserError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(VhostUserError::Timeout {
                op: "device state transfer",
                after: TRANSFER_TIMEOUT,
            });
        }
        let mut p = libc::pollfd {
            fd: f.as_raw_fd(),
            events,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n > 0 {
            return Ok(());
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(VhostUserError::Io(e));
            }
        }
    }
}

/// Reads the backend's state (the device must be stopped).
pub fn save(conn: &mut VhostUserConnection) -> Result<Vec<u8>, VhostUserError> {
    let (mut rd, wr) = pipe()?;
    let theirs = conn.set_device_state_fd(VhostTransferStateDirection::SAVE, OwnedFd::from(wr))?;
    if let Some(f) = theirs {
        rd = f;
    }
    set_nonblocking(&rd)?;
    let deadline = Instant::now() + TRANSFER_TIMEOUT;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        wait(&rd, libc::POLLIN, deadline)?;
        match rd.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if out.len() + n > MAX_BACKEND_STATE {
                    return Err(VhostUserError::BadReply {
                        op: "SET_DEVICE_STATE_FD",
                        what: format!("backend state larger than {MAX_BACKEND_STATE} bytes"),
                    });
                }
                out.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(VhostUserError::Io(e)),
        }
    }
    conn.check_device_state()?;
    Ok(out)
}

/// Gives `state` (from [`save`]) to a stopped backend.
pub fn load(conn: &mut VhostUserConnection, state: &[u8]) -> Result<(), VhostUserError> {
    let (rd, mut wr) = pipe()?;
    let theirs = conn.set_device_state_fd(VhostTransferStateDirection::LOAD, OwnedFd::from(rd))?;
    if let Some(f) = theirs {
        wr = f;
    }
    set_nonblocking(&wr)?;
    let deadline = Instant::now() + TRANSFER_TIMEOUT;
    let mut sent = 0;
    while sent < state.len() {
        wait(&wr, libc::POLLOUT, deadline)?;
        match wr.write(&state[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(VhostUserError::Io(e)),
        }
    }
    drop(wr);
    conn.check_device_state()
}

fn set_nonblocking(f: &File) -> Result<(), VhostUserError> {
    // SAFETY: fcntl on an fd we own, no pointers.
    let ok = unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        flags >= 0 && libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(VhostUserError::Io(std::io::Error::last_os_error()))
    }
}

/// Lower-case hex of `data` (state travels inside the JSON state file).
pub fn to_hex(data: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        s.push(char::from(D[usize::from(b >> 4)]));
        s.push(char::from(D[usize::from(b & 15)]));
    }
    s
}

/// Parses [`to_hex`] output; `None` on anything else.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) || b.len() / 2 > MAX_BACKEND_STATE {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    b.chunks(2)
        .map(|p| Some((nib(p[0])? << 4) | nib(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let d = [0u8, 1, 0x7f, 0x80, 0xff];
        assert_eq!(to_hex(&d), "00017f80ff");
        assert_eq!(from_hex(&to_hex(&d)).unwrap(), d);
        assert!(from_hex("abc").is_none());
        assert!(from_hex("zz").is_none());
        assert!(from_hex("AB").is_none());
    }
}
