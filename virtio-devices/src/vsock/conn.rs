//! One stream connection between a guest port and a host Unix socket: its
//! state, the credit accounting of both directions (virtio 1.2 §5.10.6.3)
//! and the control packets it owes the guest.
//!
//! Guest-to-host bytes the host socket cannot take at once wait in a
//! buffer of [`CONN_BUF_ALLOC`] bytes, which is exactly the credit the
//! device advertises: `fwd_cnt` only counts bytes the host socket accepted,
//! so a guest that honours credit stops sending while the host is slow,
//! and one that does not gets the connection reset (never a drop).
//! Host-to-guest bytes stay in the host socket until the guest has both
//! credit and a receive buffer for them.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use super::packet::*;

/// Receive buffer advertised to the guest per connection (`buf_alloc`).
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Below this much credit in the guest's view, a CREDIT_UPDATE is sent.
const CREDIT_LOW: u32 = 64 * 1024;

/// epoll interest bits (as in `epoll_event.events`).
pub(super) const EV_IN: u32 = libc::EPOLLIN as u32;
/// See [`EV_IN`].
pub(super) const EV_OUT: u32 = libc::EPOLLOUT as u32;

/// Identifies a connection: host-side port and guest-side port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct ConnKey {
    /// Port on the host (CID 2) side.
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent (or pending), waiting for RESPONSE.
    LocalInit,
    /// Data may flow.
    Established,
}

/// Control packets owed to the guest.
const P_REQUEST: u8 = 1;
const P_RESPONSE: u8 = 2;
const P_CREDIT_UPDATE: u8 = 4;

/// What the multiplexer must do with a connection after an event.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Keep it (its poll interest or pending packets may have changed).
    Keep,
    /// Close it silently (the guest reset it).
    Remove,
    /// Close it and send the guest a RST.
    Reset,
}

/// The next host-to-guest packet of a connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RxStep {
    /// Send `hdr` (with `hdr.len` payload bytes from the buffer given);
    /// close the connection afterwards if `then_remove`.
    Send {
        /// Header to send.
        hdr: Header,
        /// The connection is finished once this packet is sent.
        then_remove: bool,
    },
    /// Nothing to send now.
    Idle,
    /// The host side failed: close it and send a RST.
    Reset,
}

/// A connection and its host stream.
pub(super) struct Conn {
    pub(super) stream: UnixStream,
    pub(super) key: ConnKey,
    /// Token of the stream in the multiplexer's epoll.
    pub(super) token: u64,
    /// Events the stream is registered for; `None` when not registered.
    pub(super) interest: Option<u32>,
    /// Queued in the multiplexer's receive work list.
    pub(super) in_work: bool,
    /// The host stream may have data (EPOLLIN seen, not yet drained).
    pub(super) readable: bool,
    state: State,
    pending: u8,
    /// Guest-to-host bytes not yet written to the host stream.
    tx_buf: VecDeque<u8>,
    /// Leading bytes of `tx_buf` that are not guest data (the `OK` line).
    uncounted: usize,
    /// Guest bytes received, forwarded, and forwarded as last told.
    rx_cnt: u32,
    fwd_cnt: u32,
    last_fwd_sent: u32,
    /// Bytes sent to the guest and the guest's credit.
    sent_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    credit_requested: bool,
    /// SHUTDOWN flags the guest sent.
    peer_shut: u32,
    /// The host stream reached end of file.
    host_eof: bool,
    /// The host stream hung up (no longer polled).
    hup: bool,
    host_write_shut: bool,
}

impl Conn {
    fn new(stream: UnixStream, key: ConnKey, token: u64, state: State, pending: u8) -> Self {
        Conn {
            stream,
            key,
            token,
            interest: None,
            in_work: false,
            readable: false,
            state,
            pending,
            tx_buf: VecDeque::new(),
            uncounted: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_sent: 0,
            sent_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            credit_requested: false,
            peer_shut: 0,
            host_eof: false,
            hup: false,
            host_write_shut: false,
        }
    }

    /// A host-initiated connection: a REQUEST is owed to the guest.
    pub(super) fn new_local(stream: UnixStream, key: ConnKey, token: u64) -> Self {
        Conn::new(stream, key, token, State::LocalInit, P_REQUEST)
    }

    /// A guest-initiated connection whose host socket is connected: a
    /// RESPONSE is owed; the guest's credit comes from its REQUEST.
    pub(super) fn new_peer(stream: UnixStream, key: ConnKey, token: u64, req: &Header) -> Self {
        let mut c = Conn::new(stream, key, token, State::Established, P_RESPONSE);
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = req.fwd_cnt;
        c
    }

    /// Bytes the guest can still receive.
    fn peer_free(&self) -> u32 {
        let in_flight = self.sent_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn may_send_data(&self) -> bool {
        self.state == State::Established && self.peer_shut & SHUTDOWN_RECV == 0
    }

    /// epoll events wanted on the host stream now.
    pub(super) fn wanted_events(&self) -> u32 {
        let mut ev = 0;
        if self.may_send_data() && !self.readable && !self.host_eof {
            ev |= EV_IN;
        }
        if !self.tx_buf.is_empty() {
            ev |= EV_OUT;
        }
        ev
    }

    /// True once the stream hung up and was taken out of epoll.
    pub(super) fn hung_up(&self) -> bool {
        self.hup
    }

    /// Whether [`Self::next_rx`] has something to produce.
    pub(super) fn has_rx_work(&self) -> bool {
        self.pending != 0
            || (self.may_send_data()
                && self.readable
                && (self.peer_free() > 0 || !self.credit_requested))
    }

    /// A packet from the guest for this connection.
    pub(super) fn on_guest(&mut self, hdr: &Header, payload: &[u8]) -> Verdict {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        if self.peer_free() > 0 {
            self.credit_requested = false;
        }
        match (self.state, hdr.op) {
            (_, OP_RST) => Verdict::Remove,
            (State::LocalInit, OP_RESPONSE) => {
                self.state = State::Established;
                let line = format!("OK {}\n", self.key.local_port);
                self.uncounted = line.len();
                self.tx_buf.extend(line.as_bytes());
                self.flush_and_check()
            }
            (State::LocalInit, _) => Verdict::Reset,
            (State::Established, OP_RW) => self.guest_data(payload),
            (State::Established, OP_CREDIT_UPDATE) => Verdict::Keep,
            (State::Established, OP_CREDIT_REQUEST) => {
                self.pending |= P_CREDIT_UPDATE;
                Verdict::Keep
            }
            (State::Established, OP_SHUTDOWN) => {
                self.peer_shut |= hdr.flags & SHUTDOWN_BOTH;
                self.flush_and_check()
            }
            // A second REQUEST, a stray RESPONSE or an unknown op.
            (State::Established, _) => Verdict::Reset,
        }
    }

    /// Guest data for the host stream.
    fn guest_data(&mut self, payload: &[u8]) -> Verdict {
        if self.peer_shut & SHUTDOWN_SEND != 0 {
            return Verdict::Reset;
        }
        if payload.is_empty() {
            return Verdict::Keep;
        }
        let buffered = self.rx_cnt.wrapping_sub(self.fwd_cnt) as usize;
        if buffered + payload.len() > CONN_BUF_ALLOC as usize {
            // The guest ignored the credit it was given.
            return Verdict::Reset;
        }
        // payload.len() <= CONN_BUF_ALLOC, so it fits a u32.
        self.rx_cnt = self.rx_cnt.wrapping_add(payload.len() as u32);
        let mut done = 0;
        if self.tx_buf.is_empty() {
            loop {
                match self.stream.write(payload) {
                    Ok(n) => {
                        self.account(n);
                        done = n;
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => return Verdict::Reset,
                }
            }
        }
        self.tx_buf.extend(&payload[done..]);
        self.after_forward();
        Verdict::Keep
    }

    /// Counts `n` bytes written to the host stream.
    fn account(&mut self, n: usize) {
        let skip = n.min(self.uncounted);
        self.uncounted -= skip;
        // n is at most one write of the buffer (<= CONN_BUF_ALLOC + line).
        self.fwd_cnt = self.fwd_cnt.wrapping_add((n - skip) as u32);
    }

    /// Queues a CREDIT_UPDATE when the guest believes it is nearly out of
    /// credit but forwarding has freed space since we last told it.
    fn after_forward(&mut self) {
        let seen_used = self.rx_cnt.wrapping_sub(self.last_fwd_sent);
        let guest_view_free = CONN_BUF_ALLOC.saturating_sub(seen_used);
        if guest_view_free < CREDIT_LOW && self.fwd_cnt != self.last_fwd_sent {
            self.pending |= P_CREDIT_UPDATE;
        }
    }

    /// Writes buffered bytes to the host stream until it would block.
    fn flush(&mut self) -> std::io::Result<()> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.account(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Flushes, propagates a guest SHUTDOWN(SEND) to the host stream once
    /// everything is written, and resets the connection once both
    /// directions are finished (the guest expects a RST to complete its
    /// close).
    fn flush_and_check(&mut self) -> Verdict {
        if self.flush().is_err() {
            return Verdict::Reset;
        }
        self.after_forward();
        let guest_done = self.peer_shut & SHUTDOWN_SEND != 0 && self.tx_buf.is_empty();
        if guest_done && !self.host_write_shut {
            let _ = self.stream.shutdown(Shutdown::Write);
            self.host_write_shut = true;
        }
        if guest_done && (self.peer_shut & SHUTDOWN_RECV != 0 || self.host_eof) {
            return Verdict::Reset;
        }
        Verdict::Keep
    }

    /// The host stream is writable.
    pub(super) fn on_writable(&mut self) -> Verdict {
        self.flush_and_check()
    }

    /// The host stream is readable.
    pub(super) fn on_readable(&mut self) {
        self.readable = true;
    }

    /// The host stream hung up: pending host data is still delivered, then
    /// the guest is told the connection is over.
    pub(super) fn on_hangup(&mut self) -> Verdict {
        self.hup = true;
        self.interest = None;
        if self.state == State::LocalInit || !self.tx_buf.is_empty() {
            return Verdict::Reset;
        }
        self.readable = true;
        if !self.may_send_data() {
            // The guest takes no more data: nothing left to do.
            return Verdict::Reset;
        }
        Verdict::Keep
    }

    fn header(&mut self, guest_cid: u64, op: u16) -> Header {
        let mut h = Header::to_guest(guest_cid, self.key.local_port, self.key.peer_port, op);
        h.buf_alloc = CONN_BUF_ALLOC;
        h.fwd_cnt = self.fwd_cnt;
        self.last_fwd_sent = self.fwd_cnt;
        h
    }

    fn send(&mut self, guest_cid: u64, op: u16) -> RxStep {
        RxStep::Send {
            hdr: self.header(guest_cid, op),
            then_remove: false,
        }
    }

    /// Produces the next packet for the guest; data is read from the host
    /// stream into `buf` (whose length bounds the payload).
    pub(super) fn next_rx(&mut self, guest_cid: u64, buf: &mut [u8]) -> RxStep {
        for (bit, op) in [
            (P_REQUEST, OP_REQUEST),
            (P_RESPONSE, OP_RESPONSE),
            (P_CREDIT_UPDATE, OP_CREDIT_UPDATE),
        ] {
            if self.pending & bit != 0 {
                self.pending &= !bit;
                return self.send(guest_cid, op);
            }
        }
        if !self.may_send_data() || !self.readable {
            return RxStep::Idle;
        }
        let free = self.peer_free();
        if free == 0 {
            if self.credit_requested {
                return RxStep::Idle;
            }
            self.credit_requested = true;
            return self.send(guest_cid, OP_CREDIT_REQUEST);
        }
        let cap = buf.len().min(free as usize);
        if cap == 0 {
            return RxStep::Idle;
        }
        match self.stream.read(&mut buf[..cap]) {
            Ok(0) => {
                self.readable = false;
                self.host_eof = true;
                let mut hdr = self.header(guest_cid, OP_SHUTDOWN);
                if self.hup {
                    hdr.flags = SHUTDOWN_BOTH;
                    return RxStep::Send {
                        hdr,
                        then_remove: true,
                    };
                }
                if self.peer_shut & SHUTDOWN_SEND != 0 && self.tx_buf.is_empty() {
                    return RxStep::Reset;
                }
                hdr.flags = SHUTDOWN_SEND;
                RxStep::Send {
                    hdr,
                    then_remove: false,
                }
            }
            Ok(n) => {
                // n <= cap <= free, a u32.
                self.sent_cnt = self.sent_cnt.wrapping_add(n as u32);
                let mut hdr = self.header(guest_cid, OP_RW);
                hdr.len = n as u32;
                RxStep::Send {
                    hdr,
                    then_remove: false,
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                // Polled again for EPOLLIN.
                self.readable = false;
                RxStep::Idle
            }
            Err(_) => RxStep::Reset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: u64 = 3;

    fn key() -> ConnKey {
        ConnKey {
            local_port: 1000,
            peer_port: 2000,
        }
    }

    fn guest(op: u16, buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: 2000,
            dst_port: 1000,
            type_: TYPE_STREAM,
            op,
            buf_alloc,
            fwd_cnt,
            ..Header::default()
        }
    }

    fn established() -> (Conn, UnixStream) {
        let (ours, host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut c = Conn::new_peer(ours, key(), 1, &guest(OP_REQUEST, 100, 0));
        match c.next_rx(CID, &mut [0u8; 16]) {
            RxStep::Send { hdr, .. } => assert_eq!(hdr.op, OP_RESPONSE),
            s => panic!("{s:?}"),
        }
        (c, host)
    }

    #[test]
    fn host_data_respects_guest_credit() {
        let (mut c, mut host) = established();
        host.write_all(&[7u8; 300]).unwrap();
        c.on_readable();
        let mut buf = [0u8; 4096];
        let RxStep::Send { hdr, .. } = c.next_rx(CID, &mut buf) else {
            panic!()
        };
        assert_eq!((hdr.op, hdr.len), (OP_RW, 100));
        // Out of credit: one CREDIT_REQUEST, then nothing.
        assert!(c.has_rx_work());
        let RxStep::Send { hdr, .. } = c.next_rx(CID, &mut buf) else {
            panic!()
        };
        assert_eq!(hdr.op, OP_CREDIT_REQUEST);
        assert!(!c.has_rx_work());
        assert_eq!(c.next_rx(CID, &mut buf), RxStep::Idle);
        // The guest consumed 50 bytes.
        assert_eq!(
            c.on_guest(&guest(OP_CREDIT_UPDATE, 100, 50), &[]),
            Verdict::Keep
        );
        let RxStep::Send { hdr, .. } = c.next_rx(CID, &mut buf) else {
            panic!()
        };
        assert_eq!(hdr.len, 50);
    }

    #[test]
    fn guest_over_credit_is_reset() {
        let (mut c, _host) = established();
        // The host does not read: what its socket cannot take is buffered
        // (never dropped) until the credit is used up, then the guest's
        // excess resets the connection.
        let chunk = vec![1u8; 32 * 1024];
        for _ in 0..1000 {
            let before = c.rx_cnt.wrapping_sub(c.fwd_cnt) as usize;
            let v = c.on_guest(&guest(OP_RW, 100, 0), &chunk);
            if before + chunk.len() > CONN_BUF_ALLOC as usize {
                assert_eq!(v, Verdict::Reset);
                return;
            }
            assert_eq!(v, Verdict::Keep);
            let buffered = c.rx_cnt.wrapping_sub(c.fwd_cnt) as usize;
            assert_eq!(buffered, c.tx_buf.len());
        }
        panic!("never reset");
    }

    #[test]
    fn buffered_data_flushes_and_credits() {
        let (mut c, mut host) = established();
        let data: Vec<u8> = (0..CONN_BUF_ALLOC).map(|i| (i % 251) as u8).collect();
        assert_eq!(c.on_guest(&guest(OP_RW, 100, 0), &data), Verdict::Keep);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < data.len() {
            let n = host.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            assert_eq!(c.on_writable(), Verdict::Keep);
        }
        assert_eq!(got, data);
        assert_eq!(c.wanted_events() & EV_OUT, 0);
        assert_eq!(c.fwd_cnt, CONN_BUF_ALLOC);
        // The guest saw fwd_cnt 0: a CREDIT_UPDATE is owed.
        let RxStep::Send { hdr, .. } = c.next_rx(CID, &mut buf) else {
            panic!()
        };
        assert_eq!((hdr.op, hdr.fwd_cnt), (OP_CREDIT_UPDATE, CONN_BUF_ALLOC));
    }

    #[test]
    fn shutdown_both_resets_after_flush() {
        let (mut c, mut host) = established();
        assert_eq!(c.on_guest(&guest(OP_RW, 100, 0), b"bye"), Verdict::Keep);
        let mut sd = guest(OP_SHUTDOWN, 100, 0);
        sd.flags = SHUTDOWN_BOTH;
        assert_eq!(c.on_guest(&sd, &[]), Verdict::Reset);
        let mut s = String::new();
        host.read_to_string(&mut s).unwrap();
        assert_eq!(s, "bye");
    }

    #[test]
    fn host_eof_sends_shutdown_and_rw_after_guest_send_shutdown_resets() {
        let (mut c, host) = established();
        host.shutdown(Shutdown::Write).unwrap();
        c.on_readable();
        let RxStep::Send { hdr, then_remove } = c.next_rx(CID, &mut [0u8; 64]) else {
            panic!()
        };
        assert_eq!(
            (hdr.op, hdr.flags, then_remove),
            (OP_SHUTDOWN, SHUTDOWN_SEND, false)
        );
        assert_eq!(c.wanted_events() & EV_IN, 0);
        let mut sd = guest(OP_SHUTDOWN, 100, 0);
        sd.flags = SHUTDOWN_SEND;
        // Both directions are now finished.
        assert_eq!(c.on_guest(&sd, &[]), Verdict::Reset);
    }

    #[test]
    fn local_init_handshake() {
        let (ours, mut host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut c = Conn::new_local(ours, key(), 1);
        assert_eq!(c.wanted_events(), 0);
        let RxStep::Send { hdr, .. } = c.next_rx(CID, &mut [0u8; 8]) else {
            panic!()
        };
        assert_eq!(
            (hdr.op, hdr.src_port, hdr.dst_port, hdr.buf_alloc),
            (OP_REQUEST, 1000, 2000, CONN_BUF_ALLOC)
        );
        // Data before the RESPONSE is a protocol error.
        let mut c2 = Conn::new_local(UnixStream::pair().unwrap().0, key(), 2);
        assert_eq!(c2.on_guest(&guest(OP_RW, 10, 0), b"x"), Verdict::Reset);
        assert_eq!(c.on_guest(&guest(OP_RESPONSE, 10, 0), &[]), Verdict::Keep);
        let mut line = [0u8; 8];
        host.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1000\n");
        // The OK line is not guest data: fwd_cnt stays 0.
        assert_eq!(c.fwd_cnt, 0);
        assert_eq!(c.on_guest(&guest(OP_REQUEST, 10, 0), &[]), Verdict::Reset);
    }
}
