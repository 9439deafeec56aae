//! virtio-net against mock driver queues and a real tap interface (needs
//! root): frames are injected into and captured from the tap with an
//! AF_PACKET socket bound to it.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use virtio_bindings::virtio_net::*;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;

use super::*;
use crate::device::VirtioDevice;
use crate::worker::testutil::{TestQueue, TestVm, DATA};

/// Experimental EtherType: only test frames reach the packet socket.
const ETH_TEST: u16 = 0x88b5;

/// A tap interface name unique to this process and test.
fn tap_name(tag: &str) -> String {
    format!("chvt{}{tag}", std::process::id() % 100_000)
}

/// Opens `pairs` queues of a fresh tap, without IPv6 (so the host stack
/// sends nothing on its own), up, with `mtu`.
fn test_taps(tag: &str, pairs: usize, mtu: u16) -> Vec<Tap> {
    let taps = Tap::open_queues(&tap_name(tag), pairs).unwrap();
    let sysctl = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", taps[0].name());
    let _ = std::fs::write(sysctl, "1");
    taps[0].set_mtu(mtu).unwrap();
    taps[0].set_up().unwrap();
    taps
}

/// An AF_PACKET socket bound to one interface, for ETH_TEST frames.
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn bind(ifname: &str) -> Self {
        let proto = ETH_TEST.to_be();
        // SAFETY: plain syscalls on memory owned by this function.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            );
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let sock = OwnedFd::from_raw_fd(fd);
            let name = CString::new(ifname).unwrap();
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            assert!(sll.sll_ifindex > 0);
            let ret = libc::bind(
                fd,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(ret, 0, "bind: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 3,
                tv_usec: 0,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            PacketSocket(sock)
        }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is valid for its length during the call.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame, or None after the 3 s timeout.
    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70000];
        // SAFETY: `buf` is valid for its length during the call.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        (n > 0).then(|| buf[..n as usize].to_vec())
    }
}

/// A broadcast ETH_TEST frame of `len` bytes carrying `seq`.
fn frame(seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&ETH_TEST.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    let body = len - f.len();
    f.extend((0..body).map(|i| (seq as usize + i) as u8));
    f
}

struct Rig {
    vm: TestVm,
    net: VirtioNet,
    tq: Vec<TestQueue>,
    sock: PacketSocket,
}

/// A device on a fresh tap, activated with `features` (masked by what the
/// device offers) and queues of `qsize`.
fn rig(tag: &str, opts: NetOptions, features: u64, qsize: u16, mtu: u16) -> Rig {
    let taps = test_taps(tag, usize::from(opts.num_queues / 2), mtu);
    let sock = PacketSocket::bind(taps[0].name());
    let mut net = VirtioNet::with_taps(taps, opts).unwrap();
    net.ack_features(features);
    let vm = TestVm::new();
    let n = net.queue_max_sizes().len() as u16;
    let (tq, aq) = vm.queues(n, qsize);
    net.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap();
    Rig { vm, net, tq, sock }
}

const ALL: u64 = u64::MAX;
const NO_MRG: u64 = !(1 << VIRTIO_NET_F_MRG_RXBUF);

#[test]
fn features_and_config_space() {
    let taps = test_taps("cfg", 2, 1500);
    let opts = NetOptions {
        mac: Some("52:54:00:ab:cd:ef".parse().unwrap()),
        mtu: Some(1400),
        num_queues: 4,
        ..NetOptions::default()
    };
    let net = VirtioNet::with_taps(taps, opts.clone()).unwrap();
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.queue_max_sizes(), &[256; 5]);
    let f = net.features();
    for bit in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_MQ,
        VIRTIO_NET_F_CTRL_VQ,
    ] {
        assert!(f & (1 << bit) != 0, "bit {bit}");
    }
    let mut cfg = [0xaau8; 16];
    net.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &[0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1);
    assert_eq!(u16::from_le_bytes([cfg[8], cfg[9]]), 2);
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 1400);
    assert_eq!(&cfg[12..], &[0; 4]);
    let mut far = [0xaau8; 2];
    net.read_config(u64::MAX, &mut far);
    assert_eq!(far, [0, 0]);
    drop(net);

    // Offloads off, one pair: no TSO/CSUM, no MQ; random local MAC.
    let opts = NetOptions {
        offload_csum: false,
        ..NetOptions::default()
    };
    let net = VirtioNet::with_taps(test_taps("cfg2", 1, 1500), opts).unwrap();
    let f = net.features();
    assert_eq!(f & (1 << VIRTIO_NET_F_HOST_TSO4), 0);
    assert_eq!(f & (1 << VIRTIO_NET_F_CSUM), 0);
    assert_eq!(f & (1 << VIRTIO_NET_F_MQ), 0);
    assert_eq!(f & (1 << VIRTIO_NET_F_MTU), 0);
    assert_eq!(net.queue_max_sizes().len(), 2);
    assert_eq!(net.mac().0[0] & 0x03, 0x02);
    let bad = NetOptions {
        num_queues: 3,
        ..NetOptions::default()
    };
    assert!(VirtioNet::with_taps(test_taps("cfg3", 1, 1500), bad).is_err());
}

#[test]
fn tx_reaches_the_tap_and_hostile_chains_are_dropped() {
    let mut r = rig("tx", NetOptions::default(), ALL, 16, 1500);
    let f = frame(7, 100);
    r.vm.write(DATA, &[0u8; VNET_HDR_LEN]);
    r.vm.write(DATA + 0x1000, &f[..30]);
    r.vm.write(DATA + 0x2000, &f[30..]);
    let tx = &mut r.tq[1];
    tx.add_chain(&[
        (DATA, 12, false),
        (DATA + 0x1000, 30, false),
        (DATA + 0x2000, 70, false),
    ]);
    tx.notify();
    assert!(tx.wait_used(1));
    assert_eq!(tx.used(0).1, 0);
    assert_eq!(r.sock.recv().unwrap(), f);
    let c = r.net.counters().snapshot();
    assert_eq!((c.tx_frames, c.tx_bytes, c.tx_dropped), (1, 100, 0));

    // Header only; oversized; device-writable only; outside guest memory.
    tx.add_chain(&[(DATA, 12, false)]);
    tx.add_chain(&[(DATA, MAX_FRAME_LEN as u32 + 1, false)]);
    tx.add_chain(&[(DATA, 100, true)]);
    tx.add_chain(&[(crate::worker::testutil::MEM_SIZE - 10, 100, false)]);
    tx.notify();
    assert!(tx.wait_used(5));
    for i in 1..5 {
        assert_eq!(tx.used(i).1, 0);
    }
    assert_eq!(r.net.counters().snapshot().tx_dropped, 4);
    assert!(!r.net.needs_reset());
    // Still working afterwards.
    tx.add_chain(&[(DATA, 12, false), (DATA + 0x1000, 30, false)]);
    r.vm.write(DATA + 0x1000, &frame(8, 30));
    tx.notify();
    assert!(tx.wait_used(6));
    assert_eq!(r.sock.recv().unwrap(), frame(8, 30));
    assert!(r.net.reset());
}

/// The Ethernet frames (headers stripped) of used RX entries `from..to`,
/// RX buffers being 0x1000 apart from DATA in posting order.
fn rx_frames(r: &Rig, from: u16, to: u16) -> Vec<Vec<u8>> {
    (from..to)
        .map(|i| {
            let (head, len) = r.tq[0].used(i);
            assert!(len as usize > VNET_HDR_LEN);
            let data = r.vm.read(DATA + u64::from(head) * 0x1000, len as usize);
            assert_eq!(u16::from_le_bytes([data[10], data[11]]), 1);
            data[VNET_HDR_LEN..].to_vec()
        })
        .filter(|f| f[12..14] == ETH_TEST.to_be_bytes())
        .collect()
}

#[test]
fn rx_waits_for_buffers_without_loss_or_reordering() {
    let mut r = rig("rx", NetOptions::default(), ALL, 256, 1500);
    let sent: Vec<Vec<u8>> = (0..100).map(|i| frame(i, 60 + i as usize)).collect();
    for f in &sent {
        r.sock.send(f);
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(r.tq[0].used_idx(), 0);
    // Descriptor i is buffer DATA + i * 0x1000 (one descriptor per chain).
    for i in 0..30u64 {
        r.tq[0].add_chain(&[(DATA + i * 0x1000, 2048, true)]);
    }
    r.tq[0].notify();
    assert!(r.tq[0].wait_used(30));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.tq[0].used_idx(), 30);
    for i in 30..100u64 {
        r.tq[0].add_chain(&[(DATA + i * 0x1000, 2048, true)]);
    }
    r.tq[0].notify();
    assert!(r.tq[0].wait_used(100));
    assert_eq!(rx_frames(&r, 0, 100), sent);
    let c = r.net.counters().snapshot();
    assert_eq!(c.rx_frames, 100);
    assert_eq!(c.rx_bytes, sent.iter().map(|f| f.len() as u64).sum::<u64>());
    assert!(r.vm.interrupt.wait_for(|_| true));
    assert!(r.net.reset());
}

#[test]
fn mergeable_frame_waits_for_enough_buffers() {
    let mut r = rig("mrg", NetOptions::default(), ALL, 16, 9000);
    let big = frame(1, 4000);
    r.sock.send(&big);
    // 2 x 1500 bytes cannot hold 12 + 4000: nothing is consumed.
    r.tq[0].add_chain(&[(DATA, 1500, true)]);
    r.tq[0].add_chain(&[(DATA + 0x1000, 1500, true)]);
    r.tq[0].notify();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(r.tq[0].used_idx(), 0);
    r.tq[0].add_chain(&[(DATA + 0x2000, 1500, true)]);
    r.tq[0].notify();
    assert!(r.tq[0].wait_used(3));
    let lens: Vec<u32> = (0..3).map(|i| r.tq[0].used(i).1).collect();
    assert_eq!(lens, vec![1500, 1500, 1012]);
    let mut got = r.vm.read(DATA, 1500);
    got.extend(r.vm.read(DATA + 0x1000, 1500));
    got.extend(r.vm.read(DATA + 0x2000, 1012));
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3);
    assert_eq!(&got[VNET_HDR_LEN..], &big[..]);
    assert!(r.net.reset());
}

#[test]
fn without_mergeable_too_big_frames_are_dropped_and_bad_chains_skipped() {
    let mut r = rig("nomrg", NetOptions::default(), NO_MRG, 16, 9000);
    r.sock.send(&frame(1, 4000));
    r.sock.send(&frame(2, 100));
    // A device-readable RX chain is returned empty; the frame that does not
    // fit one buffer is dropped; the next one lands in the same buffer.
    r.tq[0].add_chain(&[(DATA + 0x3000, 1500, false)]);
    r.tq[0].add_chain(&[(DATA, 1500, true)]);
    r.tq[0].notify();
    assert!(r.tq[0].wait_used(2));
    assert_eq!(r.tq[0].used(0), (0, 0));
    let (head, len) = r.tq[0].used(1);
    assert_eq!((head, len), (1, 112));
    assert_eq!(r.vm.read(DATA + 12, 100), frame(2, 100));
    let c = r.net.counters().snapshot();
    assert_eq!((c.rx_frames, c.rx_dropped), (1, 1));
    assert!(!r.net.needs_reset());
    assert!(r.net.reset());
}

#[test]
fn control_queue_sets_pairs_and_acks() {
    let opts = NetOptions {
        num_queues: 4,
        ..NetOptions::default()
    };
    let mut r = rig("ctl", opts, ALL, 16, 1500);
    let ctrl = &mut r.tq[4];
    let ack = DATA + 0x800;
    let mut n = 0;
    let mut cmd = |vm: &TestVm, ctrl: &mut TestQueue, bytes: &[u8]| -> (u32, u8) {
        vm.write(DATA, bytes);
        vm.write(ack, &[0xee]);
        ctrl.add_chain(&[(DATA, bytes.len() as u32, false), (ack, 1, true)]);
        ctrl.notify();
        n += 1;
        assert!(ctrl.wait_used(n));
        (ctrl.used(n - 1).1, vm.read(ack, 1)[0])
    };
    let ok = (1, VIRTIO_NET_OK as u8);
    let err = (1, VIRTIO_NET_ERR as u8);
    assert_eq!(cmd(&r.vm, ctrl, &[4, 0, 2, 0]), ok);
    assert_eq!(cmd(&r.vm, ctrl, &[4, 0, 3, 0]), err);
    assert_eq!(cmd(&r.vm, ctrl, &[4, 0, 0, 0]), err);
    assert_eq!(cmd(&r.vm, ctrl, &[4, 0]), err);
    assert_eq!(cmd(&r.vm, ctrl, &[0, 0, 1]), ok);
    assert_eq!(cmd(&r.vm, ctrl, &[9, 9]), err);
    assert_eq!(cmd(&r.vm, ctrl, &[4, 0, 1, 0]), ok);
    // No room for the ack: completed empty.
    ctrl.add_chain(&[(DATA, 4, false)]);
    ctrl.notify();
    assert!(ctrl.wait_used(n + 1));
    assert_eq!(ctrl.used(n).1, 0);
    assert!(!r.net.needs_reset());
    assert!(r.net.reset());
}

#[test]
fn bogus_rx_avail_index_is_harmless() {
    let mut r = rig("brk", NetOptions::default(), ALL, 16, 1500);
    // Publish an avail index far beyond the ring: unusable.
    r.tq[0].mock.avail().idx().store(1000);
    r.tq[0].store_raw(0, SplitDescriptor::new(DATA, 100, 0, 0));
    r.tq[0].notify();
    r.sock.send(&frame(1, 60));
    std::thread::sleep(Duration::from_millis(200));
    // Nothing consumed, nothing panicked; the device still resets cleanly.
    assert_eq!(r.tq[0].used_idx(), 0);
    assert!(r.net.reset());
    assert!(!r.net.needs_reset());
}

#[test]
fn adopting_fds() {
    let taps = test_taps("fd", 1, 1500);
    let adopted = Tap::from_raw_fd_dup(taps[0].as_raw_fd()).unwrap();
    assert_eq!(adopted.name(), taps[0].name());
    let null = std::fs::File::open("/dev/null").unwrap();
    assert!(matches!(
        Tap::from_raw_fd_dup(null.as_raw_fd()),
        Err(TapError::NotVnetTap(_))
    ));
    assert!(Tap::from_raw_fd_dup(-1).is_err());
    let opts = NetOptions {
        backend: NetBackend::Fds(vec![taps[0].as_raw_fd()]),
        ..NetOptions::default()
    };
    let net = VirtioNet::new(opts).unwrap();
    assert_eq!(net.tap_name(), taps[0].name());
    let two = NetOptions {
        backend: NetBackend::Fds(vec![taps[0].as_raw_fd()]),
        num_queues: 4,
        ..NetOptions::default()
    };
    assert!(VirtioNet::new(two).is_err());
}

#[test]
fn named_tap_with_address() {
    let opts = NetOptions {
        backend: NetBackend::Name(tap_name("ip")),
        ip: Some("192.168.251.1".parse().unwrap()),
        mask: Some("255.255.255.0".parse().unwrap()),
        mtu: Some(1400),
        ..NetOptions::default()
    };
    let net = VirtioNet::new(opts).unwrap();
    let name = net.tap_name().to_string();
    let mtu = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu")).unwrap();
    assert_eq!(mtu.trim(), "1400");
    let flags = std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).unwrap();
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert!(flags & libc::IFF_UP as u32 != 0);
    drop(net);
    // Not persistent: gone with its last fd.
    assert!(!std::path::Path::new(&format!("/sys/class/net/{name}")).exists());
}

#[test]
fn mac_addresses() {
    let m: MacAddr = "02:AB:cd:00:11:ff".parse().unwrap();
    assert_eq!(m.to_string(), "02:ab:cd:00:11:ff");
    for bad in [
        "",
        "02:ab:cd:00:11",
        "02:ab:cd:00:11:ff:00",
        "2:ab:cd:00:11:ff",
        "zz:ab:cd:00:11:ff",
    ] {
        assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
    }
    let r = MacAddr::random_local();
    assert_eq!(r.0[0] & 0x03, 0x02);
}

mod rate_limit;

#[test]
fn pause_keeps_the_undelivered_frame_and_state() {
    let mut r = rig("pause", NetOptions::default(), ALL, 16, 1500);
    let sent: Vec<Vec<u8>> = (0..5).map(|i| frame(i, 80)).collect();
    for f in &sent {
        r.sock.send(f);
    }
    // The worker has read the first frame from the tap and holds it.
    std::thread::sleep(Duration::from_millis(100));
    let queues = r.net.pause().unwrap();
    assert_eq!(queues.iter().map(|q| q.index).collect::<Vec<_>>(), [0, 1]);
    let saved: NetState = serde_json::from_value(r.net.snapshot_state()).unwrap();
    assert_eq!((saved.mac, saved.active_pairs), (r.net.mac().0, 1));

    let aq = queues
        .into_iter()
        .map(|p| crate::ActivatedQueue {
            index: p.index,
            queue: p.queue,
            notify: r.tq[usize::from(p.index)].kick.try_clone().unwrap(),
        })
        .collect();
    r.net
        .activate(r.vm.atomic.clone(), r.vm.interrupt.clone(), aq)
        .unwrap();
    for i in 0..5u64 {
        r.tq[0].add_chain(&[(DATA + i * 0x1000, 2048, true)]);
    }
    r.tq[0].notify();
    assert!(r.tq[0].wait_used(5), "a frame was lost across the pause");
    assert_eq!(rx_frames(&r, 0, 5), sent);
    assert!(r.net.reset());

    // A restored device takes over the MAC the guest knows.
    let mut other =
        VirtioNet::with_taps(test_taps("pause2", 1, 1500), NetOptions::default()).unwrap();
    other
        .restore_state(&serde_json::to_value(&saved).unwrap())
        .unwrap();
    assert_eq!(other.mac().0, saved.mac);
    let mut bad = saved;
    bad.active_pairs = 2;
    assert!(other
        .restore_state(&serde_json::to_value(&bad).unwrap())
        .is_err());
}
