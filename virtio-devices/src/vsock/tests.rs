//! virtio-vsock driven in-process: the test plays the guest driver on mock
//! queues and the host programs on real Unix sockets in a temp directory.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use super::packet::*;
use super::test_queue::DriverQueue;
use super::*;
use crate::device::VirtioDevice;
use crate::worker::testutil::{TestVm, DATA};

const CID: u64 = 3;
const RX_CHAINS: u16 = 64;
const RX_PAYLOAD: u32 = 4096;
const TX_SLOTS: u16 = 64;
/// Descriptor index of deliberately bad RX buffers.
const BAD_RX: u16 = 200;
const TX_BASE: u64 = DATA + 0x10_0000;
const TX_SLOT_LEN: u64 = 0x1_1000;
/// Longest wait for an event (a used buffer, a host read); passing tests
/// never wait this long, and emulated runs (qemu-user, TCG) need the slack.
pub(super) const TIMEOUT: Duration = Duration::from_secs(60);

fn rx_addr(i: u16) -> u64 {
    DATA + u64::from(i) * 0x2000
}

/// A temp directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("chv-vsock-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The simulated guest driver plus the device under test.
struct Guest {
    vm: TestVm,
    rxq: DriverQueue,
    txq: DriverQueue,
    _evq: DriverQueue,
    rx_seen: u16,
    bad_rx: usize,
    tx_posted: u16,
    dev: VirtioVsock,
    sock: PathBuf,
    _dir: TempDir,
}

fn pkt(src_port: u32, dst_port: u32, op: u16) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 256 * 1024,
        ..Header::default()
    }
}

impl Guest {
    fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let sock = dir.0.join("v.sock");
        let mut dev = VirtioVsock::new(CID, &sock, tag).unwrap();
        let vm = TestVm::new();
        let (rxq, a0) = DriverQueue::new(vm.mem, 0, 256);
        let (txq, a1) = DriverQueue::new(vm.mem, 1, 256);
        let (evq, a2) = DriverQueue::new(vm.mem, 2, 256);
        dev.ack_features(dev.features());
        dev.activate(vm.atomic.clone(), vm.interrupt.clone(), vec![a0, a1, a2])
            .unwrap();
        let g = Guest {
            vm,
            rxq,
            txq,
            _evq: evq,
            rx_seen: 0,
            bad_rx: 0,
            tx_posted: 0,
            dev,
            sock,
            _dir: dir,
        };
        for i in 0..RX_CHAINS {
            g.post_rx(i);
        }
        g.rxq.notify();
        g
    }

    fn post_rx(&self, i: u16) {
        let flags = (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16;
        let d = 2 * i;
        self.rxq
            .store_raw(d, rx_addr(i), HDR_LEN as u32, flags, d + 1);
        let w = VRING_DESC_F_WRITE as u16;
        self.rxq
            .store_raw(d + 1, rx_addr(i) + 0x100, RX_PAYLOAD, w, 0);
        self.rxq.publish(d);
    }

    /// Collects the packets delivered so far (recycling their buffers).
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        while self.rx_seen != self.rxq.used_idx() {
            let (id, len) = self.rxq.used(self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            if id >= u32::from(BAD_RX) {
                assert_eq!(len, 0);
                self.bad_rx += 1;
                continue;
            }
            let i = (id / 2) as u16;
            if (len as usize) < HDR_LEN {
                let mut hist = Vec::new();
                for _ in 0..5 {
                    hist.push(self.rxq.used_idx());
                    std::thread::sleep(Duration::from_millis(20));
                }
                let els: Vec<_> = (0..70).map(|k| self.rxq.used(k)).collect();
                panic!(
                    "short rx packet {len} id {id} seen {} used {hist:?} {els:?}",
                    self.rx_seen
                );
            }
            let raw: [u8; HDR_LEN] = self.vm.read(rx_addr(i), HDR_LEN).try_into().unwrap();
            let hdr = Header::from_bytes(&raw);
            assert_eq!(hdr.len as usize, len as usize - HDR_LEN);
            let data = self.vm.read(rx_addr(i) + 0x100, hdr.len as usize);
            assert_eq!(
                (hdr.src_cid, hdr.dst_cid, hdr.type_),
                (HOST_CID, CID, TYPE_STREAM)
            );
            out.push((hdr, data));
            self.post_rx(i);
        }
        if !out.is_empty() {
            self.rxq.notify();
        }
        out
    }

    /// Waits for at least `n` packets.
    fn recv_n(&mut self, n: usize) -> Vec<(Header, Vec<u8>)> {
        let start = Instant::now();
        let mut out = Vec::new();
        while out.len() < n {
            assert!(start.elapsed() < TIMEOUT, "timeout: got {out:?}");
            out.extend(self.recv());
            std::thread::sleep(Duration::from_millis(1));
        }
        out
    }

    fn recv_one(&mut self) -> (Header, Vec<u8>) {
        let mut v = self.recv_n(1);
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    }

    /// Asserts nothing arrives for a while.
    fn expect_silence(&mut self) {
        std::thread::sleep(Duration::from_millis(100));
        let got = self.recv();
        assert!(got.is_empty(), "unexpected {got:?}");
    }

    /// Posts a raw TX chain of `(addr, len, writable)` and waits for it.
    fn send_chain(&mut self, bufs: &[(u64, u32, bool)]) {
        let slot = self.tx_posted % TX_SLOTS;
        let base = 2 * slot * 2;
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let k = k as u16;
            let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
            if usize::from(k) + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.txq.store_raw(base + k, addr, len, flags, base + k + 1);
        }
        self.txq.publish(base);
        self.tx_posted = self.tx_posted.wrapping_add(1);
        self.txq.notify();
        assert!(self.txq.wait_used(self.tx_posted), "tx not consumed");
    }

    fn send(&mut self, hdr: Header, payload: &[u8]) {
        let slot = u64::from(self.tx_posted % TX_SLOTS);
        let addr = TX_BASE + slot * TX_SLOT_LEN;
        let mut h = hdr;
        h.len = payload.len() as u32;
        self.vm.write(addr, &h.to_bytes());
        self.vm.write(addr + 0x100, payload);
        if payload.is_empty() {
            self.send_chain(&[(addr, HDR_LEN as u32, false)]);
        } else {
            self.send_chain(&[
                (addr, HDR_LEN as u32, false),
                (addr + 0x100, payload.len() as u32, false),
            ]);
        }
    }

    fn wait_connections(&self, n: usize) {
        let start = Instant::now();
        while self.dev.connections() != n {
            assert!(
                start.elapsed() < TIMEOUT,
                "{} connections",
                self.dev.connections()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn client(&self, port: u32) -> UnixStream {
        let mut c = UnixStream::connect(&self.sock).unwrap();
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        c.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        c
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Deterministic test data for stream `seed`.
fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn device_basics() {
    let dir = TempDir::new("basics");
    let sock = dir.0.join("s");
    assert!(matches!(
        VirtioVsock::new(2, &sock, "v"),
        Err(VsockError::InvalidCid(2))
    ));
    assert!(VirtioVsock::new(1 << 32, &sock, "v").is_err());
    std::fs::write(&sock, b"file").unwrap();
    assert!(matches!(
        VirtioVsock::new(3, &sock, "v"),
        Err(VsockError::PathInUse(_))
    ));
    std::fs::remove_file(&sock).unwrap();
    let dev = VirtioVsock::new(0x1_2345, &sock, "v").unwrap();
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    let mut cfg = [0xffu8; 10];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [0x45, 0x23, 1, 0, 0, 0, 0, 0, 0, 0]);
    let mut hi = [0xffu8; 4];
    dev.read_config(u64::MAX, &mut hi);
    assert_eq!(hi, [0; 4]);
    drop(dev);
    assert!(!sock.exists());
    // A stale socket file is replaced.
    let _stale = UnixListener::bind(&sock).unwrap();
    let _dev = VirtioVsock::new(3, &sock, "v").unwrap();
}

#[test]
fn host_initiated_handshake_and_data() {
    let mut g = Guest::new("hostinit");
    let mut client = UnixStream::connect(&g.sock).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    // Bytes after the line belong to the stream.
    client.write_all(b"CONNECT 1234\nearly").unwrap();
    let (req, _) = g.recv_one();
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 1234));
    assert!(req.src_port >= 1 << 30);
    assert_eq!(req.buf_alloc, 256 * 1024);
    let local = req.src_port;
    g.send(pkt(1234, local, OP_RESPONSE), &[]);
    assert_eq!(read_line(&mut client), format!("OK {local}"));
    let (rw, data) = g.recv_one();
    assert_eq!((rw.op, rw.src_port, rw.dst_port), (OP_RW, local, 1234));
    assert_eq!(data, b"early");
    g.send(pkt(1234, local, OP_RW), b"world");
    let mut buf = [0u8; 5];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"world");
    assert_eq!(g.dev.connections(), 1);
    // The guest resets: the client sees the end of the stream.
    g.send(pkt(1234, local, OP_RST), &[]);
    assert_eq!(client.read(&mut buf).unwrap(), 0);
    g.wait_connections(0);
    g.expect_silence();
}

#[test]
fn guest_initiated_connect_and_refusal() {
    let mut g = Guest::new("guestinit");
    let listener = UnixListener::bind(format!("{}_5000", g.sock.display())).unwrap();
    g.send(pkt(777, 5000, OP_REQUEST), &[]);
    let (resp, _) = g.recv_one();
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port),
        (OP_RESPONSE, 5000, 777)
    );
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    host.write_all(b"ping").unwrap();
    let (rw, data) = g.recv_one();
    assert_eq!((rw.op, data.as_slice()), (OP_RW, &b"ping"[..]));
    g.send(pkt(777, 5000, OP_RW), b"pong");
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    // No listener on port 5001: refused.
    g.send(pkt(778, 5001, OP_REQUEST), &[]);
    let (rst, _) = g.recv_one();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 5001, 778));
    // The host program exits: the guest is told both directions are shut.
    drop(host);
    let (sd, _) = g.recv_one();
    assert_eq!((sd.op, sd.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    g.wait_connections(0);
    // Its RST for the gone connection gets no answer.
    g.send(pkt(777, 5000, OP_RST), &[]);
    g.expect_silence();
}

/// Guest-side state of one connection in the concurrency test.
struct Stream {
    out: Vec<u8>,
    sent: usize,
    got: Vec<u8>,
    dev_buf_alloc: u32,
    dev_fwd_cnt: u32,
    credited: usize,
    open: bool,
}

#[test]
fn sixteen_concurrent_connections_keep_data_intact() {
    const LEN: usize = 96 * 1024;
    const GUEST_BUF: u32 = 64 * 1024;
    let mut g = Guest::new("many");
    let mut hosts = Vec::new();
    for i in 0..16u32 {
        let sock = g.sock.clone();
        let listener = (i >= 8)
            .then(|| UnixListener::bind(format!("{}_{}", sock.display(), 6000 + i)).unwrap());
        hosts.push(std::thread::spawn(move || {
            let mut s = match listener {
                Some(l) => l.accept().unwrap().0,
                None => {
                    let mut c = UnixStream::connect(&sock).unwrap();
                    c.write_all(format!("CONNECT {}\n", 100 + i).as_bytes())
                        .unwrap();
                    // Byte by byte: stream data may follow the line.
                    assert!(read_line(&mut c).starts_with("OK "));
                    c
                }
            };
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut w = s.try_clone().unwrap();
            let writer = std::thread::spawn(move || w.write_all(&pattern(i, LEN)).unwrap());
            let mut got = vec![0u8; LEN];
            s.read_exact(&mut got).unwrap();
            writer.join().unwrap();
            assert!(
                got == pattern(1000 + i, LEN),
                "host side of stream {i} corrupted"
            );
            s
        }));
    }
    let mut streams: HashMap<(u32, u32), (u32, Stream)> = HashMap::new();
    let new_stream = |i: u32| Stream {
        out: pattern(1000 + i, LEN),
        sent: 0,
        got: Vec::new(),
        dev_buf_alloc: 0,
        dev_fwd_cnt: 0,
        credited: 0,
        open: false,
    };
    for i in 8..16u32 {
        let mut h = pkt(200 + i, 6000 + i, OP_REQUEST);
        h.buf_alloc = GUEST_BUF;
        g.send(h, &[]);
        streams.insert((6000 + i, 200 + i), (i, new_stream(i)));
    }
    let mut last_progress = Instant::now();
    loop {
        if last_progress.elapsed() > TIMEOUT {
            let states: Vec<_> = streams
                .iter()
                .map(|(k, (_, s))| {
                    (
                        k,
                        s.open,
                        s.sent,
                        s.got.len(),
                        s.dev_buf_alloc,
                        s.dev_fwd_cnt,
                    )
                })
                .collect();
            panic!("stalled: {states:?}");
        }
        let done = streams.len() == 16
            && streams
                .values()
                .all(|(_, s)| s.sent == LEN && s.got.len() == LEN);
        if done {
            break;
        }
        let mut progress = false;
        for (h, data) in g.recv() {
            progress = true;
            let key = (h.src_port, h.dst_port);
            if h.op == OP_REQUEST {
                let i = h.dst_port - 100;
                streams.insert(key, (i, new_stream(i)));
                let mut r = pkt(h.dst_port, h.src_port, OP_RESPONSE);
                r.buf_alloc = GUEST_BUF;
                g.send(r, &[]);
            }
            let (_, s) = streams.get_mut(&key).expect("packet for unknown stream");
            s.dev_buf_alloc = h.buf_alloc;
            s.dev_fwd_cnt = h.fwd_cnt;
            match h.op {
                OP_REQUEST | OP_RESPONSE => s.open = true,
                OP_RW => s.got.extend_from_slice(&data),
                OP_CREDIT_UPDATE => {}
                OP_CREDIT_REQUEST => s.credited = usize::MAX,
                op => panic!("unexpected op {op}"),
            }
        }
        let keys: Vec<_> = streams.keys().copied().collect();
        for key in keys {
            let (_, s) = streams.get_mut(&key).unwrap();
            if !s.open {
                continue;
            }
            let mut hdr = pkt(key.1, key.0, OP_RW);
            hdr.buf_alloc = GUEST_BUF;
            hdr.fwd_cnt = s.got.len() as u32;
            // The guest "consumes" everything at once and says so.
            if s.credited == usize::MAX || s.got.len() - s.credited >= 16 * 1024 {
                s.credited = s.got.len();
                let mut c = hdr;
                c.op = OP_CREDIT_UPDATE;
                g.send(c, &[]);
                progress = true;
            }
            let (_, s) = streams.get_mut(&key).unwrap();
            let in_flight = (s.sent as u32).wrapping_sub(s.dev_fwd_cnt);
            let credit = s.dev_buf_alloc.saturating_sub(in_flight) as usize;
            let n = credit.min(16 * 1024).min(LEN - s.sent);
            if n > 0 {
                let chunk = s.out[s.sent..s.sent + n].to_vec();
                s.sent += n;
                g.send(hdr, &chunk);
                progress = true;
            }
        }
        if progress {
            last_progress = Instant::now();
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for (i, s) in streams.values() {
        assert!(
            s.got == pattern(*i, LEN),
            "guest side of stream {i} corrupted"
        );
    }
    let host_ends: Vec<UnixStream> = hosts.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(g.dev.connections(), 16);
    // The guest closes everything: each gets a RST, hosts see EOF.
    for key in streams.keys() {
        let mut sd = pkt(key.1, key.0, OP_SHUTDOWN);
        sd.flags = SHUTDOWN_BOTH;
        g.send(sd, &[]);
    }
    let rsts = g.recv_n(16);
    assert!(rsts.iter().all(|(h, _)| h.op == OP_RST));
    g.wait_connections(0);
    for mut h in host_ends {
        let mut b = [0u8; 1];
        assert_eq!(h.read(&mut b).unwrap(), 0);
    }
}

#[test]
fn host_to_guest_credit_stalls_and_resumes() {
    let mut g = Guest::new("credit");
    let mut client = g.client(80);
    let (req, _) = g.recv_one();
    let local = req.src_port;
    let mut resp = pkt(80, local, OP_RESPONSE);
    resp.buf_alloc = 4096;
    g.send(resp, &[]);
    assert_eq!(read_line(&mut client), format!("OK {local}"));
    let data = pattern(7, 10_000);
    client.write_all(&data).unwrap();
    let mut got = Vec::new();
    let update = |g: &mut Guest, fwd: u32| {
        let mut u = pkt(80, local, OP_CREDIT_UPDATE);
        u.buf_alloc = 4096;
        u.fwd_cnt = fwd;
        g.send(u, &[]);
    };
    for fwd in [0u32, 4096, 8192] {
        if fwd > 0 {
            update(&mut g, fwd);
        }
        let mut credit_request = false;
        while !credit_request && got.len() < data.len() {
            for (h, d) in g.recv_n(1) {
                match h.op {
                    OP_RW => got.extend_from_slice(&d),
                    OP_CREDIT_REQUEST => credit_request = true,
                    op => panic!("op {op}"),
                }
            }
        }
        // Never more than the guest allowed.
        assert_eq!(got.len(), data.len().min(fwd as usize + 4096));
        g.expect_silence();
    }
    assert_eq!(got, data);
}

#[test]
fn guest_to_host_backpressure_buffers_then_resumes() {
    const CREDIT: usize = 256 * 1024;
    let mut g = Guest::new("backpressure");
    let listener = UnixListener::bind(format!("{}_9", g.sock.display())).unwrap();
    g.send(pkt(40, 9, OP_REQUEST), &[]);
    let (resp, _) = g.recv_one();
    assert_eq!(
        (resp.op, resp.buf_alloc, resp.fwd_cnt),
        (OP_RESPONSE, CREDIT as u32, 0)
    );
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    for round in 0..2u32 {
        // The host does not read: the device accepts the whole credit.
        let data = pattern(round, CREDIT);
        for chunk in data.chunks(32 * 1024) {
            g.send(pkt(40, 9, OP_RW), chunk);
        }
        let stalled: Vec<_> = g.recv();
        assert!(
            stalled.iter().all(|(h, _)| h.op == OP_CREDIT_UPDATE),
            "{stalled:?}"
        );
        assert_eq!(g.dev.connections(), 1);
        let mut got = vec![0u8; CREDIT];
        host.read_exact(&mut got).unwrap();
        assert!(got == data, "round {round} corrupted");
        // Everything is forwarded once the host read it.
        let want = (CREDIT as u32).wrapping_mul(round + 1);
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < TIMEOUT);
            g.send(pkt(40, 9, OP_CREDIT_REQUEST), &[]);
            let pkts = g.recv_n(1);
            assert!(pkts.iter().all(|(h, _)| h.op == OP_CREDIT_UPDATE));
            if pkts.iter().any(|(h, _)| h.fwd_cnt == want) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // A CREDIT_REQUEST is answered.
    g.send(pkt(40, 9, OP_CREDIT_REQUEST), &[]);
    let (u, _) = g.recv_one();
    assert_eq!((u.op, u.fwd_cnt), (OP_CREDIT_UPDATE, 2 * CREDIT as u32));
}

#[test]
fn guest_over_credit_gets_reset() {
    let mut g = Guest::new("overcredit");
    let listener = UnixListener::bind(format!("{}_9", g.sock.display())).unwrap();
    g.send(pkt(41, 9, OP_REQUEST), &[]);
    g.recv_one();
    let (mut host, _) = listener.accept().unwrap();
    // The host never reads; the guest ignores credit and keeps sending.
    let chunk = vec![0x5a; 64 * 1024];
    let mut sent = 0;
    let reset = loop {
        g.send(pkt(41, 9, OP_RW), &chunk);
        sent += chunk.len();
        let p = g.recv();
        if let Some((h, _)) = p.iter().find(|(h, _)| h.op == OP_RST) {
            break *h;
        }
        assert!(sent < 64 << 20, "never reset");
    };
    assert_eq!((reset.src_port, reset.dst_port), (9, 41));
    assert!(sent > 256 * 1024);
    g.wait_connections(0);
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    // Only data within credit was forwarded.
    assert!(rest.len() <= sent - chunk.len());
}

#[test]
fn reset_and_shutdown_paths() {
    let mut g = Guest::new("rst");
    // Data for a connection that does not exist.
    g.send(pkt(10, 20, OP_RW), b"x");
    let (h, _) = g.recv_one();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 20, 10));
    // The guest refuses a host connection.
    let mut c = g.client(30);
    let (req, _) = g.recv_one();
    g.send(pkt(30, req.src_port, OP_RST), &[]);
    let mut b = [0u8; 8];
    assert_eq!(c.read(&mut b).unwrap(), 0);
    // The client leaves before the guest answers.
    let c = g.client(31);
    let (req, _) = g.recv_one();
    drop(c);
    let (h, _) = g.recv_one();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, req.src_port, 31));
    g.wait_connections(0);
    // Guest SHUTDOWN(both) of an established connection: data flushed,
    // then RST, and the host reads EOF.
    let mut c = g.client(32);
    let (req, _) = g.recv_one();
    let local = req.src_port;
    g.send(pkt(32, local, OP_RESPONSE), &[]);
    assert_eq!(read_line(&mut c), format!("OK {local}"));
    g.send(pkt(32, local, OP_RW), b"last");
    let mut sd = pkt(32, local, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_BOTH;
    g.send(sd, &[]);
    let (h, _) = g.recv_one();
    assert_eq!(h.op, OP_RST);
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    assert_eq!(s, "last");
    // A host half-close is a SHUTDOWN(SEND); the guest can still write.
    let mut c = g.client(33);
    let (req, _) = g.recv_one();
    let local = req.src_port;
    g.send(pkt(33, local, OP_RESPONSE), &[]);
    assert_eq!(read_line(&mut c), format!("OK {local}"));
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let (h, _) = g.recv_one();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    g.send(pkt(33, local, OP_RW), b"reply");
    let mut sd = pkt(33, local, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_SEND;
    g.send(sd, &[]);
    let (h, _) = g.recv_one();
    assert_eq!(h.op, OP_RST);
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    assert_eq!(s, "reply");
    g.wait_connections(0);
    // Bad CONNECT lines are closed without bothering the guest.
    for line in [&b"HELLO\n"[..], b"CONNECT x\n", &[b'A'; 100]] {
        let mut c = UnixStream::connect(&g.sock).unwrap();
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        c.write_all(line).unwrap();
        assert_eq!(c.read(&mut b).unwrap_or(0), 0);
    }
    g.expect_silence();
}

#[test]
fn hostile_packets_never_break_the_device() {
    let mut g = Guest::new("hostile");
    let addr = TX_BASE + 0x40_0000;
    // Header shorter than 44 bytes; a chain with no readable part.
    g.send_chain(&[(addr, 10, false)]);
    g.send_chain(&[(addr, 64, true)]);
    // A descriptor outside guest memory.
    g.send_chain(&[(1 << 40, 44, false)]);
    // dst_cid not the host, or src_cid not the guest: dropped silently.
    let mut h = pkt(1, 2, OP_RW);
    h.dst_cid = 5;
    g.send(h, b"a");
    let mut h = pkt(1, 2, OP_REQUEST);
    h.src_cid = 4;
    g.send(h, &[]);
    g.expect_silence();
    // len larger than the buffers, or than any packet: RST.
    let mut h = pkt(11, 12, OP_RW);
    h.len = 1000;
    g.vm.write(addr, &h.to_bytes());
    g.send_chain(&[(addr, 44, false), (addr + 0x100, 10, false)]);
    h.len = u32::MAX;
    g.vm.write(addr, &h.to_bytes());
    g.send_chain(&[(addr, 44, false)]);
    // Unknown socket type and unknown op: RST.
    let mut h = pkt(13, 14, OP_REQUEST);
    h.type_ = 2;
    g.send(h, &[]);
    g.send(pkt(15, 16, 99), &[]);
    let got: Vec<_> = g
        .recv_n(4)
        .into_iter()
        .map(|(h, _)| (h.op, h.dst_port))
        .collect();
    assert_eq!(
        got,
        [(OP_RST, 11), (OP_RST, 11), (OP_RST, 13), (OP_RST, 15)]
    );
    // An unknown op on a live connection resets it.
    let listener = UnixListener::bind(format!("{}_7", g.sock.display())).unwrap();
    g.send(pkt(50, 7, OP_REQUEST), &[]);
    assert_eq!(g.recv_one().0.op, OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    g.send(pkt(50, 7, 42), &[]);
    assert_eq!(g.recv_one().0.op, OP_RST);
    let mut b = [0u8; 1];
    assert_eq!(host.read(&mut b).unwrap(), 0);
    // A duplicate REQUEST kills the live connection.
    g.send(pkt(51, 7, OP_REQUEST), &[]);
    assert_eq!(g.recv_one().0.op, OP_RESPONSE);
    g.send(pkt(51, 7, OP_REQUEST), &[]);
    assert_eq!(g.recv_one().0.op, OP_RST);
    g.wait_connections(0);
    // Unusable RX buffers (read-only, too short) come back empty and the
    // packets go to the next good ones.
    g.rxq.store_raw(BAD_RX, DATA + 0x30_0000, 4096, 0, 0);
    g.rxq.publish(BAD_RX);
    let w = VRING_DESC_F_WRITE as u16;
    g.rxq.store_raw(BAD_RX + 1, DATA + 0x30_0000, 8, w, 0);
    g.rxq.publish(BAD_RX + 1);
    g.rxq.notify();
    for k in 0..u32::from(RX_CHAINS) + 4 {
        g.send(pkt(1000 + k, 61, OP_RW), b"z");
        let (h, _) = g.recv_one();
        assert_eq!((h.op, h.dst_port), (OP_RST, 1000 + k));
    }
    assert_eq!(g.bad_rx, 2);
    assert!(!g.dev.needs_reset());
}
