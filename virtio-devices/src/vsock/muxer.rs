//! The hybrid Unix-socket backend (as Cloud Hypervisor and Firecracker):
//! routes guest packets to host connections and produces the packets the
//! guest receives.
//!
//! Host-initiated: a client connects to the listening socket `<socket>` and
//! writes `CONNECT <port>\n`; the guest gets a REQUEST for `<port>`; on its
//! RESPONSE the client reads `OK <local_port>\n` and bytes flow both ways.
//! Guest-initiated: a REQUEST for host port P connects to `<socket>_P`.
//!
//! All host sockets live in one epoll set owned here (connections come and
//! go, while the worker's extra fds are fixed at spawn); the worker polls
//! that epoll fd, which is readable whenever any socket is ready.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use log::warn;
use vm_memory::GuestMemory as GuestMemoryT;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::conn::{Conn, ConnKey, RxStep, Verdict, EV_IN};
use super::packet::*;
use crate::worker::chain::{ChainBuffers, ChainError};

/// Most open connections per device (each holds a host socket).
pub(super) const MAX_CONNECTIONS: usize = 256;
/// Most host clients still sending their `CONNECT` line.
const MAX_HANDSHAKES: usize = 64;
/// Longest `CONNECT <port>` line accepted.
const MAX_LINE: usize = 32;
/// Most RST packets waiting for guest receive buffers.
const MAX_PENDING_RST: usize = 1024;
/// Largest payload per packet (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub(super) const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// First host port handed to host-initiated connections (as Firecracker).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// epoll events handled per wakeup.
const EVENT_BATCH: usize = 64;
const LISTENER_TOKEN: u64 = 0;

/// What an epoll token stands for.
#[derive(Clone, Copy)]
enum Target {
    Handshake,
    Conn(ConnKey),
}

/// A host client that has not finished its `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// Host sockets and connections of one vsock device.
pub(super) struct Muxer {
    guest_cid: u64,
    socket: PathBuf,
    listener: UnixListener,
    listener_paused: bool,
    epoll: Epoll,
    conns: HashMap<ConnKey, Conn>,
    handshakes: HashMap<u64, Handshake>,
    tokens: HashMap<u64, Target>,
    next_token: u64,
    next_local_port: u32,
    /// Connections with packets for the guest, served round-robin.
    work: VecDeque<ConnKey>,
    /// RSTs for connections already closed or unknown.
    rsts: VecDeque<Header>,
    scratch: Vec<u8>,
    /// Published connection count (read by the device).
    open: Arc<AtomicUsize>,
}

/// Parses `CONNECT <port>` (an optional trailing `\r` allowed).
pub(super) fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let mut words = s.trim_end_matches('\r').split_ascii_whitespace();
    if words.next()? != "CONNECT" {
        return None;
    }
    let port = words.next()?.parse().ok()?;
    words.next().is_none().then_some(port)
}

/// Connects to the Unix socket `path` without blocking: a full backlog
/// fails (EAGAIN) instead of stalling the worker.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ErrorKind::InvalidInput.into());
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain syscall without pointers.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un that outlives the call and
    // `len` does not exceed its size.
    let ret = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(sock))
}

impl Muxer {
    /// A multiplexer for guest `guest_cid` accepting host clients on
    /// `listener` (bound to `socket`); it keeps `open` equal to its number
    /// of connections.
    pub(super) fn new(
        guest_cid: u64,
        socket: PathBuf,
        listener: UnixListener,
        open: Arc<AtomicUsize>,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        Ok(Muxer {
            guest_cid,
            socket,
            listener,
            listener_paused: false,
            epoll,
            conns: HashMap::new(),
            handshakes: HashMap::new(),
            tokens: HashMap::new(),
            next_token: LISTENER_TOKEN + 1,
            next_local_port: FIRST_LOCAL_PORT,
            work: VecDeque::new(),
            rsts: VecDeque::new(),
            scratch: vec![0u8; MAX_PKT_PAYLOAD],
            open,
        })
    }

    /// The epoll fd the worker polls.
    pub(super) fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn insert(&mut self, key: ConnKey, conn: Conn) {
        self.tokens.insert(conn.token, Target::Conn(key));
        self.conns.insert(key, conn);
        self.open.store(self.conns.len(), Ordering::Relaxed);
        self.refresh(key);
    }

    /// True if a packet is waiting for a guest receive buffer.
    pub(super) fn has_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.work.is_empty()
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn push_rst(&mut self, local_port: u32, peer_port: u32) {
        if self.rsts.len() >= MAX_PENDING_RST {
            return;
        }
        let h = Header::to_guest(self.guest_cid, local_port, peer_port, OP_RST);
        self.rsts.push_back(h);
    }

    /// Updates the connection's epoll interest and work-list membership.
    fn refresh(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if !c.hung_up() {
            let want = c.wanted_events();
            if c.interest != Some(want) {
                let op = if c.interest.is_some() {
                    ControlOperation::Modify
                } else {
                    ControlOperation::Add
                };
                let ev = EpollEvent::new(EventSet::from_bits_truncate(want), c.token);
                match self.epoll.ctl(op, c.stream.as_raw_fd(), ev) {
                    Ok(()) => c.interest = Some(want),
                    Err(e) => {
                        warn!("vsock: cannot poll connection {key:?}: {e}");
                        self.remove(key, true);
                        return;
                    }
                }
            }
        }
        if c.has_rx_work() && !c.in_work {
            c.in_work = true;
            self.work.push_back(key);
        }
    }

    /// Closes a connection, optionally telling the guest with a RST.
    fn remove(&mut self, key: ConnKey, rst: bool) {
        let Some(c) = self.conns.remove(&key) else {
            return;
        };
        if c.interest.is_some() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.tokens.remove(&c.token);
        self.open.store(self.conns.len(), Ordering::Relaxed);
        if rst {
            self.push_rst(key.local_port, key.peer_port);
        }
        self.resume_listener();
    }

    fn apply(&mut self, key: ConnKey, verdict: Verdict) {
        match verdict {
            Verdict::Keep => self.refresh(key),
            Verdict::Remove => self.remove(key, false),
            Verdict::Reset => self.remove(key, true),
        }
    }

    /// A packet from the guest's TX queue (payload already bounded).
    pub(super) fn handle_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid {
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != OP_RST {
                self.push_rst(key.local_port, key.peer_port);
            }
            return;
        }
        match self.conns.get_mut(&key) {
            // A REQUEST for a live connection: both are dead.
            Some(_) if hdr.op == OP_REQUEST => self.remove(key, true),
            Some(c) => {
                let verdict = c.on_guest(hdr, payload);
                self.apply(key, verdict);
            }
            None if hdr.op == OP_REQUEST => self.guest_connect(key, hdr),
            None if hdr.op == OP_RST => {}
            None => self.push_rst(key.local_port, key.peer_port),
        }
    }

    /// A malformed packet (bad length): its connection, if any, is reset.
    pub(super) fn handle_bad_packet(&mut self, hdr: &Header) {
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid {
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if self.conns.contains_key(&key) {
            self.remove(key, true);
        } else if hdr.op != OP_RST {
            self.push_rst(key.local_port, key.peer_port);
        }
    }

    /// Guest REQUEST to host port `key.local_port`: connect `<socket>_P`.
    fn guest_connect(&mut self, key: ConnKey, hdr: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            self.push_rst(key.local_port, key.peer_port);
            return;
        }
        let mut path = OsString::from(self.socket.as_os_str());
        path.push(format!("_{}", key.local_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let token = self.token();
                self.insert(key, Conn::new_peer(stream, key, token, hdr));
            }
            Err(_) => self.push_rst(key.local_port, key.peer_port),
        }
    }

    /// Handles the host sockets that are ready (a batch; the worker calls
    /// again while the epoll fd stays readable).
    pub(super) fn handle_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENT_BATCH];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != ErrorKind::Interrupted {
                    warn!("vsock: epoll_wait: {e}");
                }
                return;
            }
        };
        for ev in &events[..n] {
            let (token, set) = (ev.data(), ev.event_set());
            if token == LISTENER_TOKEN {
                self.accept_clients();
                continue;
            }
            match self.tokens.get(&token).copied() {
                Some(Target::Handshake) => self.progress_handshake(token),
                Some(Target::Conn(key)) => self.conn_event(key, set),
                None => {}
            }
        }
    }

    fn conn_event(&mut self, key: ConnKey, set: EventSet) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if set.contains(EventSet::ERROR) {
            self.remove(key, true);
            return;
        }
        if set.contains(EventSet::OUT) {
            let v = c.on_writable();
            if v != Verdict::Keep {
                self.apply(key, v);
                return;
            }
        }
        if set.contains(EventSet::IN) {
            c.on_readable();
        }
        if set.contains(EventSet::HANG_UP) {
            // Level-triggered HUP cannot be masked: stop polling the fd.
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            let v = c.on_hangup();
            self.apply(key, v);
            return;
        }
        self.refresh(key);
    }

    fn pause_listener(&mut self) {
        if !self.listener_paused {
            let fd = self.listener.as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.listener_paused = true;
        }
    }

    /// Polls the listener again after [`Self::pause_listener`], once a
    /// connection closed (and freed an fd).
    fn resume_listener(&mut self) {
        if self.listener_paused {
            let ev = EpollEvent::new(EventSet::IN, LISTENER_TOKEN);
            let fd = self.listener.as_raw_fd();
            if self.epoll.ctl(ControlOperation::Add, fd, ev).is_ok() {
                self.listener_paused = false;
            }
        }
    }

    fn accept_clients(&mut self) {
        for _ in 0..EVENT_BATCH {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // E.g. out of fds: level-triggered, it would spin.
                    warn!("vsock: accept on {}: {e}", self.socket.display());
                    self.pause_listener();
                    return;
                }
            };
            if self.handshakes.len() >= MAX_HANDSHAKES || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.token();
            let ev = EpollEvent::new(EventSet::IN, token);
            if self
                .epoll
                .ctl(ControlOperation::Add, stream.as_raw_fd(), ev)
                .is_err()
            {
                continue;
            }
            self.tokens.insert(token, Target::Handshake);
            self.handshakes.insert(
                token,
                Handshake {
                    stream,
                    line: Vec::new(),
                },
            );
        }
    }

    fn drop_handshake(&mut self, token: u64) {
        if let Some(h) = self.handshakes.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                h.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.tokens.remove(&token);
        self.resume_listener();
    }

    /// Reads the client's line byte by byte, so bytes after the newline
    /// stay in the socket for the guest.
    fn progress_handshake(&mut self, token: u64) {
        let Some(h) = self.handshakes.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match h.stream.read(&mut byte) {
                Ok(0) => return self.drop_handshake(token),
                Ok(_) if byte[0] == b'\n' => match parse_connect(&h.line) {
                    Some(port) => break port,
                    None => return self.drop_handshake(token),
                },
                Ok(_) => {
                    if h.line.len() >= MAX_LINE {
                        return self.drop_handshake(token);
                    }
                    h.line.push(byte[0]);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return self.drop_handshake(token),
            }
        };
        let Some(local_port) = self.alloc_local_port(port) else {
            return self.drop_handshake(token);
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            return self.drop_handshake(token);
        }
        let Some(h) = self.handshakes.remove(&token) else {
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let mut conn = Conn::new_local(h.stream, key, token);
        conn.interest = Some(EV_IN);
        self.insert(key, conn);
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        // More tries than connections: a free port is always found.
        for _ in 0..=MAX_CONNECTIONS {
            let p = self.next_local_port;
            self.next_local_port = p.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            let key = ConnKey {
                local_port: p,
                peer_port,
            };
            if !self.conns.contains_key(&key) {
                return Some(p);
            }
        }
        None
    }

    /// Writes the next packet for the guest into `bufs` (a device-writable
    /// chain of at least `HDR_LEN` bytes). Returns the used length, or
    /// `None` when there is nothing to send.
    pub(super) fn fill_rx<M: GuestMemoryT>(&mut self, mem: &M, bufs: &ChainBuffers) -> Option<u32> {
        let room = usize::try_from(bufs.writable_len())
            .unwrap_or(usize::MAX)
            .saturating_sub(HDR_LEN)
            .min(MAX_PKT_PAYLOAD);
        loop {
            if let Some(h) = self.rsts.pop_front() {
                return Some(match bufs.write_at(mem, 0, &h.to_bytes()) {
                    Ok(()) => HDR_LEN as u32,
                    Err(_) => 0,
                });
            }
            let key = self.work.pop_front()?;
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.in_work = false;
            match c.next_rx(self.guest_cid, &mut self.scratch[..room]) {
                RxStep::Idle => self.refresh(key),
                RxStep::Reset => self.remove(key, true),
                RxStep::Send { hdr, then_remove } => {
                    let len = hdr.len as usize;
                    let written = write_packet(mem, bufs, &hdr, &self.scratch[..len]);
                    if written.is_err() {
                        // The bytes read from the host are lost: the
                        // stream cannot continue.
                        self.remove(key, true);
                        return Some(0);
                    }
                    if then_remove {
                        self.remove(key, false);
                    } else {
                        self.refresh(key);
                    }
                    // len <= MAX_PKT_PAYLOAD.
                    return Some((HDR_LEN + len) as u32);
                }
            }
        }
    }
}

fn write_packet<M: GuestMemoryT>(
    mem: &M,
    bufs: &ChainBuffers,
    hdr: &Header,
    payload: &[u8],
) -> Result<(), ChainError> {
    bufs.write_at(mem, 0, &hdr.to_bytes())?;
    bufs.write_at(mem, HDR_LEN as u64, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT  7 "), Some(7));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"CONNECT 1 2"), None);
        assert_eq!(parse_connect(b"connect 1"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
    }

    #[test]
    fn nonblocking_connect_errors() {
        let long = PathBuf::from("/".repeat(200));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let missing = std::env::temp_dir().join(format!("chv-vsock-none-{}", std::process::id()));
        assert!(connect_nonblocking(&missing).is_err());
    }
}
