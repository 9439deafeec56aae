//! vhost-user-net against a real backend: DPDK's vhost PMD in
//! `dpdk-testpmd` (Debian `dpdk-dev`), forwarding each frame back to the
//! port it came from with the MACs swapped (`--port-topology=loop
//! --forward-mode=macswap`), so a frame the "driver" transmits comes back
//! on its receive queue.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;
use crate::device::VirtioDevice;
use crate::worker::testutil::{TestVm, DATA};

struct Testpmd {
    child: Child,
    log: PathBuf,
}

impl Testpmd {
    /// Waits until testpmd forwards (its ports are started). DPDK 22.11
    /// in client mode connects during start-up; vrings handed over before
    /// its port started stay unused for transmitting to the guest.
    fn wait_forwarding(&self) {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains("packet forwarding - ports=") {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "dpdk-testpmd did not start forwarding:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts testpmd with one vhost-user port on `socket`: DPDK listens
/// there (`client=false`) or connects to chv's socket (`client=true`).
fn testpmd(dir: &Path, socket: &Path, client: bool) -> Testpmd {
    let vdev = format!(
        "net_vhost0,iface={},queues=1,client={}",
        socket.display(),
        u8::from(client)
    );
    // --no-huge: plain memory (the machine has no hugepages); its own
    // runtime directory so parallel runs do not share /var/run/dpdk/rte.
    let log = dir.join(if client { "client.log" } else { "server.log" });
    // Line-buffered, so wait_forwarding sees the lines as they come.
    let child = Command::new("stdbuf")
        .args(["-oL", "dpdk-testpmd"])
        .args([
            "-l",
            "0-1",
            "--no-huge",
            "-m",
            "128",
            "--no-pci",
            "--log-level",
            "4",
        ])
        .arg(format!("--file-prefix=chv{}", std::process::id()))
        .env("XDG_RUNTIME_DIR", dir)
        .arg("--vdev")
        .arg(vdev)
        .args([
            "--",
            "--total-num-mbufs=2048",
            "--port-topology=loop",
            "--forward-mode=macswap",
            "--auto-start",
            "--stats-period=1000",
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("dpdk-testpmd must be installed (Debian dpdk-dev; .ci/run does it)");
    let t = Testpmd { child, log };
    if !client {
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "dpdk-testpmd did not create {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    t
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("chv-vunet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const HDR_LEN: usize = 12;
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];
const PEER_MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

/// Activates `dev`, sends one frame on TX and checks it comes back on RX
/// with source and destination swapped; then runs `between` (a backend
/// restart) and does it again.
fn frame_comes_back(dev: &mut VhostUserDevice, between: impl FnOnce(&mut VhostUserDevice)) {
    let features = dev.features();
    assert_ne!(features & (1 << VIRTIO_NET_F_MAC), 0, "MAC offered by chv");
    assert_ne!(features & (1 << VIRTIO_F_VERSION_1), 0);
    dev.ack_features(features);
    let mut mac = [0u8; 6];
    dev.read_config(0, &mut mac);
    assert_eq!(mac, GUEST_MAC);
    let mut status = [0u8; 2];
    dev.read_config(6, &mut status);
    assert_eq!(u16::from_le_bytes(status), VIRTIO_NET_S_LINK_UP as u16);

    let vm = TestVm::shared();
    let (mut tq, aq) = vm.queues(2, 64);
    dev.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .expect("activate against dpdk-testpmd");
    let mut round_trip = |n: u16| {
        let base = DATA + u64::from(n) * 0x2000;
        let rx_buf = base + 0x1000;
        vm.write(rx_buf, &[0u8; 2048]);
        tq[0].add_chain(&[(rx_buf, 2048, true)]);
        tq[0].notify();
        let mut frame = vec![0u8; HDR_LEN];
        frame.extend_from_slice(&PEER_MAC);
        frame.extend_from_slice(&GUEST_MAC);
        frame.extend_from_slice(&[0x88, 0xb5]); // local experimental EtherType
        frame.extend((0..100u8).map(|i| i.wrapping_mul(3).wrapping_add(n as u8)));
        vm.write(base, &frame);
        tq[1].add_chain(&[(base, frame.len() as u32, false)]);
        tq[1].notify();
        assert!(tq[1].wait_used(n), "frame {n}: TX not consumed");
        assert!(tq[0].wait_used(n), "frame {n}: did not come back on RX");
        let (_, len) = tq[0].used(n - 1);
        assert_eq!(len as usize, frame.len(), "received length");
        let got = vm.read(rx_buf, frame.len());
        assert_eq!(
            &got[HDR_LEN..HDR_LEN + 6],
            &GUEST_MAC,
            "destination swapped"
        );
        assert_eq!(&got[HDR_LEN + 6..HDR_LEN + 12], &PEER_MAC, "source swapped");
        assert_eq!(&got[HDR_LEN + 12..], &frame[HDR_LEN + 12..], "payload");
    };
    round_trip(1);
    assert!(!dev.needs_reset());
    between(dev);
    round_trip(2);
    assert!(!dev.needs_reset());
    assert_eq!(dev.pause().unwrap().len(), 2);
    assert!(dev.reset());
}

/// Waits until `dev.needs_reset()` is `broken`.
fn wait_broken(dev: &VhostUserDevice, broken: bool) {
    let t = Instant::now();
    while dev.needs_reset() != broken {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "needs_reset never became {broken}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn options(socket: &Path, role: SocketRole) -> VhostUserNetOptions {
    VhostUserNetOptions {
        socket: socket.to_path_buf(),
        role,
        mac: Some(MacAddr(GUEST_MAC)),
        queue_size: 64,
        offload_csum: true,
        offload_tso: true,
    }
}

#[test]
fn testpmd_loops_a_frame_back_with_chv_as_client_and_as_server() {
    let dir = scratch("loop");
    let sock = dir.join("net.sock");
    let backend = testpmd(&dir, &sock, false);
    backend.wait_forwarding();
    let mut dev = new_vhost_user_net(&options(&sock, SocketRole::Client), None)
        .expect("connect to dpdk-testpmd");
    // Client mode reconnects: testpmd dies and a new one listens on the
    // same socket; the relay hands it the running vrings.
    let mut second = None;
    frame_comes_back(&mut dev, |dev| {
        drop(backend);
        wait_broken(dev, true);
        // A killed testpmd leaves its socket file behind.
        let _ = std::fs::remove_file(&sock);
        let again = testpmd(&dir, &sock, false);
        again.wait_forwarding();
        wait_broken(dev, false);
        second = Some(again);
    });
    drop(dev);
    drop(second);

    // Server: chv creates the socket and DPDK connects to it.
    let sock = dir.join("server.sock");
    let backend = testpmd(&dir, &sock, true);
    let mut dev = new_vhost_user_net_with(
        &options(&sock, SocketRole::Server),
        None,
        Duration::from_secs(30),
    )
    .expect("dpdk-testpmd connects to chv's socket");
    assert!(!sock.exists(), "the listening socket is removed once used");
    backend.wait_forwarding();
    frame_comes_back(&mut dev, |_| {});
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn server_mode_gives_up_when_no_backend_connects() {
    let dir = scratch("alone");
    let sock = dir.join("net.sock");
    let t = Instant::now();
    let err = new_vhost_user_net_with(
        &options(&sock, SocketRole::Server),
        None,
        Duration::from_millis(200),
    )
    .err()
    .expect("no backend");
    assert!(err.to_string().contains("no backend connected"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!sock.exists());
    // A path that exists already is not taken over.
    std::fs::write(&sock, b"not a socket").unwrap();
    let err = new_vhost_user_net_with(
        &options(&sock, SocketRole::Server),
        None,
        Duration::from_millis(200),
    )
    .err()
    .expect("path in use");
    assert!(err.to_string().contains("in use"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn offloads_follow_the_options() {
    let mut o = options(Path::new("/x"), SocketRole::Client);
    assert_ne!(allowed_features(&o) & (1 << VIRTIO_NET_F_HOST_TSO4), 0);
    o.offload_tso = false;
    assert_eq!(allowed_features(&o) & (1 << VIRTIO_NET_F_HOST_TSO4), 0);
    assert_ne!(allowed_features(&o) & (1 << VIRTIO_NET_F_CSUM), 0);
    o.offload_csum = false;
    assert_eq!(allowed_features(&o) & (1 << VIRTIO_NET_F_CSUM), 0);
    assert_eq!(allowed_features(&o) & FRONTEND_FEATURES, 0);
    assert_eq!(config_space(MacAddr(GUEST_MAC)).len(), 12);
}
