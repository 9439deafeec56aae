//! End-to-end checks of chv's virtio-net device with the real Linux guest
//! kit (see /work/shared/guest/README.md), plus fast `--net` error cases
//! that need no Linux boot.
//!
//! All traffic stays inside a network namespace each test creates
//! (`ip netns add chvtest-<pid>-<n>`, deleted on drop even when the test
//! fails): chv runs in it (its tap and the tap's address live there) and
//! the host side of every transfer is a socket created in it. Nothing is
//! sent anywhere else.
//!
//! Two Linux guests, one after another in a single test. Each starts from
//! the shared base snapshot (`chv_tests::base_snapshot`: the kit booted to
//! a command loop, restored in well under a second instead of a 20-60 s
//! boot); the host hot-adds the network device through the API and sends
//! the guest's script over the serial console:
//!
//! 1. One vCPU, one queue pair, a MAC given in `vm.add-net`: the guest
//!    sees that MAC and one RX/TX queue pair, pings the tap's address with
//!    no loss, receives host-generated data over TCP (busybox `nc` into
//!    tmpfs) and prints its sha256, flips the top bit of every byte and
//!    sends the result back, printing its sha256 too. The host checks both
//!    hashes and every byte it got back, and logs the throughput of each
//!    direction (no timing asserts).
//! 2. Two vCPUs (the second hot-added with `vm.resize` and onlined by the
//!    guest), `num_queues=4` (two queue pairs), `queue_size=512` and no
//!    MAC: the guest sees rx-0 rx-1 tx-0 tx-1 and a random unicast, locally
//!    administered MAC, pings, and the same transfers work.
//!
//! The transfer size is [`XFER_LEN`] (256 KiB each way; `CHV_NET_XFER_KIB`
//! changes it): the guest kernel on this PVM host moves about 50 KiB/s.
//!
//! Needs /dev/kvm, the guest kit, root (network namespaces, tap devices)
//! and `ip` and `sha256sum` on the host. A missing kit fails the boot test
//! unless `CHV_SKIP_LINUX=1`.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chv_tests::api_client::http;
use chv_tests::netns::NetNs;
use chv_tests::{expect_startup_error, halted_guest_args, Chv, Scratch};

/// Time from `GUEST-READY` to the last check line: each transfer is bound
/// by the guest's slow system calls (about 0.65 ms each).
const CMD_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a host peer waits for the guest to connect (the boot plus the
/// guest commands before it); it also gives up once its [`Stop`] drops.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(1200);
/// Longest stall of a single socket read or write on the host side.
const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// Console text that ends a wait early as a failure.
const ABORT: &[&str] = &["Kernel panic"];

/// Serializes the Linux boots: each keeps a host core busy for minutes.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const MIB: usize = 1 << 20;
/// Bytes sent in each direction of each transfer (`CHV_NET_XFER_KIB`
/// overrides it). Small because the guest kernel is: on this PVM host a
/// guest receives about 50 KiB/s (its kernel code runs through KVM's
/// instruction emulator), so 64 MiB would take over 20 minutes.
const XFER_LEN: usize = MIB / 4;

/// The tap's (host side) address inside the namespace.
const HOST_IP: &str = "10.0.2.1";
/// The guest's address.
const GUEST_IP: &str = "10.0.2.15";
/// Name of the tap chv creates inside the namespace.
const TAP: &str = "chvtap0";
/// The MAC boot 1 gives the guest NIC.
const MAC: &str = "52:54:00:12:34:56";

/// Deterministic pseudo-random bytes (xorshift64*), so the host-to-guest
/// data is not trivially compressible or periodic.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The host's `sha256sum` of `data`, as lowercase hex.
fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot run sha256sum");
    let mut stdin = child.stdin.take().expect("sha256sum stdin");
    std::thread::scope(|s| {
        s.spawn(move || stdin.write_all(data).expect("write to sha256sum"));
    });
    let out = child.wait_with_output().expect("sha256sum output");
    assert!(out.status.success(), "sha256sum failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Timing of one host-side transfer.
#[derive(Debug)]
struct Transfer {
    /// Bytes moved.
    bytes: usize,
    /// From the guest's connect to the end of the transfer.
    elapsed: Duration,
}

impl Transfer {
    fn kib_per_s(&self) -> f64 {
        self.bytes as f64 / 1024.0 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Tells the host peers of a boot to stop waiting for a connection when
/// dropped (e.g. when the boot failed).
#[derive(Default)]
struct Stop(Arc<AtomicBool>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Waits (bounded, and until `stop`) for the guest to connect to `listener`.
fn accept(listener: &TcpListener, stop: &AtomicBool) -> Result<TcpStream, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    let deadline = Instant::now() + ACCEPT_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                eprintln!("host peer: connection from {peer}");
                stream
                    .set_nonblocking(false)
                    .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
                    .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
                    .map_err(|e| format!("socket setup: {e}"))?;
                return Ok(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(format!("no connection within {ACCEPT_TIMEOUT:?}"));
                }
                if stop.load(Ordering::Relaxed) {
                    return Err("no connection before the test gave up".into());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

/// Host sender: sends `data` to the first connection, half-closes, and
/// waits for the guest to close its end (its `nc` exits on our EOF).
fn serve_send(
    listener: TcpListener,
    data: Vec<u8>,
    stop: &Stop,
) -> JoinHandle<Result<Transfer, String>> {
    let stop = stop.0.clone();
    std::thread::spawn(move || {
        let mut stream = accept(&listener, &stop)?;
        let start = Instant::now();
        stream
            .write_all(&data)
            .map_err(|e| format!("send after {:.1?}: {e}", start.elapsed()))?;
        stream
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        let mut rest = [0u8; 4096];
        loop {
            match stream.read(&mut rest) {
                Ok(0) => break,
                Ok(n) => return Err(format!("guest sent {n} unexpected bytes")),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("waiting for the guest's close: {e}")),
            }
        }
        Ok(Transfer {
            bytes: data.len(),
            elapsed: start.elapsed(),
        })
    })
}

/// Host receiver: reads everything from the first connection until the
/// guest's EOF (at most `limit` bytes).
fn serve_recv(
    listener: TcpListener,
    limit: usize,
    stop: &Stop,
) -> JoinHandle<Result<(Vec<u8>, Transfer), String>> {
    let stop = stop.0.clone();
    std::thread::spawn(move || {
        let mut stream = accept(&listener, &stop)?;
        let start = Instant::now();
        let mut data = Vec::with_capacity(limit);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) if data.len() + n > limit => {
                    return Err(format!("guest sent more than {limit} bytes"))
                }
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(format!(
                        "receive after {} bytes, {:.1?}: {e}",
                        data.len(),
                        start.elapsed()
                    ))
                }
            }
        }
        let t = Transfer {
            bytes: data.len(),
            elapsed: start.elapsed(),
        };
        Ok((data, t))
    })
}

/// A TCP listener on `port` inside `ns` (any address: the namespace holds
/// only its loopback and the tap).
fn listen(ns: &NetNs, port: u16) -> TcpListener {
    ns.run(|| TcpListener::bind(("0.0.0.0", port)))
        .unwrap_or_else(|e| panic!("bind port {port} in {}: {e}", ns.name()))
}

/// The value of the single console line `<key>:<value>` (trimmed); fails
/// when there is none or more than one.
fn chk(chv: &Chv, key: &str) -> String {
    let prefix = format!("{key}:");
    let lines = chv.lines();
    let found: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect();
    if found.len() != 1 {
        chv.fail(&format!(
            "want exactly one console line starting with {prefix:?}, found {}",
            found.len()
        ));
    }
    found[0].trim().to_string()
}

/// Asserts that console check `key` printed exactly `want`.
fn want(chv: &Chv, key: &str, want: &str) {
    let got = chk(chv, key);
    chv.check(
        got == want,
        &format!("{key}: guest printed {got:?}, want {want:?}"),
    );
}

/// The first word of check `key` (a `sha256sum` line is `<hash>  <name>`).
fn chk_hash(chv: &Chv, key: &str) -> String {
    chk(chv, key)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Joins a host peer thread, failing with the console on error.
fn join<T>(chv: &Chv, what: &str, h: JoinHandle<Result<T, String>>) -> T {
    match h.join() {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => chv.fail(&format!("{what}: {e}")),
        Err(_) => chv.fail(&format!("{what}: host peer thread panicked")),
    }
}

/// Marker the guest prints after its script, before it powers off.
const DONE: &str = "CHK-SCRIPT-DONE";

/// Waits for the script's end, power-off and a clean exit 0.
fn expect_poweroff(chv: &mut Chv, what: &str) {
    chv.expect(DONE, ABORT, CMD_TIMEOUT);
    let st = chv.expect_exit(Duration::from_secs(60));
    eprintln!("{what}: chv exited ({st}) after {:.1?}", chv.elapsed());
    chv.assert_no_panic();
    chv.check(
        st.code() == Some(0),
        &format!("{what}: chv exit status {st}, want 0"),
    );
}

/// Starts chv in `ns` from the shared base snapshot (the kit booted to a
/// command loop: 1 vCPU, up to 2, no PCI device) with an API socket in
/// `dir`; returns chv and the socket. `None`: no kit, skipped.
fn restore_base(ns: &NetNs, dir: &Scratch) -> Option<(Chv, std::path::PathBuf)> {
    let sock = dir.path("api.sock");
    let args = chv_tests::base_snapshot::restore_args(&sock, &[])?;
    let mut chv = ns.spawn_chv(&args);
    chv_tests::base_snapshot::wait_ready(&mut chv);
    Some((chv, sock))
}

/// Hot-adds a network device with `body` (a NetConfig) to the restored VM.
fn add_net(chv: &Chv, sock: &std::path::Path, body: &str) {
    let (status, answer) = http(sock, "PUT", "vm.add-net", Some(body));
    chv.check(
        status == 200,
        &format!("vm.add-net {body}: {status} {answer}"),
    );
}

/// Runs `cmd` (`; `-joined guest shell fragments) in the guest once eth0
/// exists, then prints [`DONE`] and powers off.
fn run_script(chv: &mut Chv, cmd: &str) {
    chv.send_line(&format!(
        "i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done; \
         {cmd}; echo {DONE}; poweroff -f"
    ));
}

/// Guest shell fragment that configures eth0.
fn guest_ifup() -> String {
    format!("ip addr add {GUEST_IP}/24 dev eth0; ip link set eth0 up; echo CHK-IFUP:$?")
}

/// Guest shell fragment: receives the host's data from `port` into
/// `/tmp/rx` and prints `nc`'s exit code and the data's sha256 (as
/// `CHK-RX-NC`, `CHK-RX-SHA`). Then flips the top bit of every byte into
/// `/tmp/tx` (busybox `tr`), prints its sha256 (`CHK-TX-SHA`), sends it to
/// `port + 1` and prints `nc`'s exit code (`CHK-TX-NC`). The guest kernel
/// is too slow here for `/dev/urandom` (about 25 s per MiB), hence a
/// user-space transformation of data the host can predict.
fn guest_transfers(port: u16) -> String {
    format!(
        "nc {HOST_IP} {port} > /tmp/rx; echo CHK-RX-NC:$?; \
         echo CHK-RX-SHA:$(sha256sum < /tmp/rx); \
         tr '\\000-\\377' '\\200-\\377\\000-\\177' < /tmp/rx > /tmp/tx; \
         echo CHK-TX-SHA:$(sha256sum < /tmp/tx); \
         nc {HOST_IP} {} < /tmp/tx; echo CHK-TX-NC:$?; rm /tmp/rx /tmp/tx",
        port + 1
    )
}

/// Host peers of [`guest_transfers`]: a sender on `port` and a receiver on
/// `port + 1`, with the data sent.
struct HostPeers {
    sent_data: Vec<u8>,
    sender: JoinHandle<Result<Transfer, String>>,
    receiver: JoinHandle<Result<(Vec<u8>, Transfer), String>>,
}

impl HostPeers {
    fn start(ns: &NetNs, port: u16, len: usize, stop: &Stop) -> HostPeers {
        let sent_data = pattern(len, 0x5eed_0000 + u64::from(port));
        HostPeers {
            sender: serve_send(listen(ns, port), sent_data.clone(), stop),
            receiver: serve_recv(listen(ns, port + 1), len, stop),
            sent_data,
        }
    }

    /// Joins the peers and checks both directions against the guest's
    /// console; returns the (host -> guest, guest -> host) timings.
    fn check(self, chv: &Chv) -> (Transfer, Transfer) {
        let sent = join(chv, "host -> guest", self.sender);
        let (got, received) = join(chv, "guest -> host", self.receiver);
        want(chv, "CHK-RX-NC", "0");
        let rx_sha = chk_hash(chv, "CHK-RX-SHA");
        let sent_sha = sha256(&self.sent_data);
        chv.check(
            rx_sha == sent_sha,
            &format!("host -> guest: guest got sha256 {rx_sha}, host sent {sent_sha}"),
        );
        want(chv, "CHK-TX-NC", "0");
        let tx_sha = chk_hash(chv, "CHK-TX-SHA");
        let got_sha = sha256(&got);
        chv.check(
            tx_sha == got_sha,
            &format!("guest -> host: guest sent sha256 {tx_sha}, host got {got_sha}"),
        );
        let expected: Vec<u8> = self.sent_data.iter().map(|b| b ^ 0x80).collect();
        chv.check(
            got.len() == expected.len(),
            &format!(
                "guest -> host: got {} bytes, want {}",
                got.len(),
                expected.len()
            ),
        );
        if let Some(i) = got.iter().zip(&expected).position(|(a, b)| a != b) {
            chv.fail(&format!(
                "guest -> host: first wrong byte at offset {i}: {:#04x}, want {:#04x}",
                got[i], expected[i]
            ));
        }
        (sent, received)
    }
}

/// Bytes sent each way: `CHV_NET_XFER_KIB` KiB, default [`XFER_LEN`].
fn xfer_len() -> usize {
    std::env::var("CHV_NET_XFER_KIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&k| k > 0 && k <= 64 * 1024)
        .map_or(XFER_LEN, |k| k * 1024)
}

/// Logs the throughput of both directions.
fn log_throughput(what: &str, (sent, received): (Transfer, Transfer)) {
    eprintln!(
        "{what}: host -> guest {} KiB in {:.1?} = {:.1} KiB/s; \
         guest -> host {} KiB in {:.1?} = {:.1} KiB/s",
        sent.bytes / 1024,
        sent.elapsed,
        sent.kib_per_s(),
        received.bytes / 1024,
        received.elapsed,
        received.kib_per_s()
    );
}

/// Checks the host side of the tap: it exists in the namespace with
/// [`HOST_IP`]/24.
fn check_host_tap(chv: &Chv, ns: &NetNs) {
    let addr = ns.ip(&["-o", "-4", "addr", "show", "dev", TAP]);
    chv.check(
        addr.contains(&format!("inet {HOST_IP}/24")),
        &format!("host side of the tap: want {HOST_IP}/24 on {TAP}, `ip addr` says: {addr}"),
    );
}

/// Checks the `ping -c <n>` summary line the guest printed as `CHK-PING`.
fn check_ping(chv: &Chv, n: u32) {
    let ping = chk(chv, "CHK-PING");
    chv.check(
        ping.starts_with(&format!(
            "{n} packets transmitted, {n} packets received, 0% packet loss"
        )),
        &format!("ping: {ping:?}, want {n} of {n} answered"),
    );
}

/// Boot 1: one vCPU, one queue pair, a given MAC; ping and a transfer
/// each way.
fn boot_one() {
    let ns = NetNs::new("test");
    let dir = Scratch::new("net-one");
    let Some((mut chv, sock)) = restore_base(&ns, &dir) else {
        return;
    };
    let stop = Stop::default();
    let peers = HostPeers::start(&ns, 5001, xfer_len(), &stop);
    let cmd = [
        guest_ifup(),
        "read -r v < /sys/class/net/eth0/address; echo CHK-MAC:$v".into(),
        "echo CHK-QUEUES:$(ls /sys/class/net/eth0/queues)".into(),
        format!("echo CHK-PING:$(ping -c 3 {HOST_IP} | grep 'packet loss')"),
        guest_transfers(5001),
    ]
    .join("; ");
    add_net(
        &chv,
        &sock,
        &format!(r#"{{"tap":"{TAP}","ip":"{HOST_IP}","mask":"255.255.255.0","mac":"{MAC}"}}"#),
    );
    check_host_tap(&chv, &ns);
    run_script(&mut chv, &cmd);
    expect_poweroff(&mut chv, "boot 1");
    want(&chv, "CHK-IFUP", "0");
    want(&chv, "CHK-MAC", MAC);
    want(&chv, "CHK-QUEUES", "rx-0 tx-0");
    check_ping(&chv, 3);
    let timing = peers.check(&chv);
    log_throughput("boot 1 (1 vCPU, 1 queue pair)", timing);
}

/// Boot 2: two vCPUs, two queue pairs (`num_queues=4`), a random MAC; a
/// transfer each way.
fn boot_two() {
    let ns = NetNs::new("test");
    let dir = Scratch::new("net-two");
    let Some((mut chv, sock)) = restore_base(&ns, &dir) else {
        return;
    };
    let stop = Stop::default();
    let peers = HostPeers::start(&ns, 5003, xfer_len(), &stop);
    // The second vCPU comes by hotplug (the base VM boots with one); the
    // guest onlines it before the NIC arrives, as virtio-net sizes its
    // active queue pairs by the CPUs online when it probes.
    let (status, answer) = http(&sock, "PUT", "vm.resize", Some(r#"{"desired_vcpus":2}"#));
    chv.check(status == 204, &format!("vm.resize: {status} {answer}"));
    chv.send_line(
        "c=/sys/devices/system/cpu/cpu1; i=0; while [ ! -e $c/online ] && [ $i -lt 120 ]; \
         do sleep 1; i=$((i+1)); done; echo 1 > $c/online; echo CHK-CPU1:$(cat $c/online); \
         echo CHK-CPU1-DONE",
    );
    // The next line's marker: the CHK-CPU1 line is complete by then.
    chv.expect("CHK-CPU1-DONE", ABORT, CMD_TIMEOUT);
    want(&chv, "CHK-CPU1", "1");
    let cmd = [
        guest_ifup(),
        "read -r v < /sys/class/net/eth0/address; echo CHK-MAC:$v".into(),
        "echo CHK-QUEUES:$(ls /sys/class/net/eth0/queues)".into(),
        "echo CHK-NPROC:$(nproc)".into(),
        format!("echo CHK-PING:$(ping -c 2 {HOST_IP} | grep 'packet loss')"),
        guest_transfers(5003),
    ]
    .join("; ");
    add_net(
        &chv,
        &sock,
        &format!(
            r#"{{"tap":"{TAP}","ip":"{HOST_IP}","mask":"255.255.255.0","num_queues":4,"queue_size":512}}"#
        ),
    );
    check_host_tap(&chv, &ns);
    run_script(&mut chv, &cmd);
    expect_poweroff(&mut chv, "boot 2");
    want(&chv, "CHK-IFUP", "0");
    let mac = chk(&chv, "CHK-MAC");
    let first = mac
        .split(':')
        .next()
        .and_then(|b| u8::from_str_radix(b, 16).ok());
    chv.check(
        mac.len() == 17 && matches!(first, Some(b) if b & 1 == 0 && b & 2 == 2),
        &format!("default MAC {mac:?}: want a unicast, locally administered address"),
    );
    want(&chv, "CHK-QUEUES", "rx-0 rx-1 tx-0 tx-1");
    want(&chv, "CHK-NPROC", "2");
    check_ping(&chv, 2);
    let timing = peers.check(&chv);
    log_throughput("boot 2 (2 vCPUs, 2 queue pairs)", timing);
}

#[test]
fn linux_virtio_net_ping_transfers_and_multiqueue() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    boot_one();
    boot_two();
}

/// Runs chv (test guest, halted) with `--net net` inside a fresh namespace;
/// it must exit 1 at once with exactly one `chv: error:` line on stderr
/// (besides `chv: warn:` lines) containing every one of `needles`, without
/// booting or panicking.
fn expect_net_error(net: &str, needles: &[&str]) {
    let ns = NetNs::new("test");
    let mut args = halted_guest_args();
    args.extend(["--net".to_string(), net.to_string()]);
    let mut chv = ns.spawn_chv(&args);
    let st = chv.wait_exit(Duration::from_secs(20));
    if st.is_none() {
        chv.kill();
    }
    expect_startup_error(&chv, st, &format!("--net {net}"), needles);
    // Nothing was left behind in the namespace.
    let links = ns.ip(&["-o", "link", "show"]);
    chv.check(
        links.lines().count() == 1 && links.contains("lo:"),
        &format!("want only `lo` in the namespace after the failure, got:\n{links}"),
    );
}

#[test]
fn net_tap_name_too_long_is_a_clean_error() {
    expect_net_error(
        "tap=chvtap-name-too-long,ip=10.0.2.1,mask=255.255.255.0",
        &["--net", "tap=chvtap-name-too-long", "15 bytes"],
    );
}

#[test]
fn net_malformed_mac_is_a_clean_error() {
    expect_net_error(
        "tap=chvtap0,mac=52:54:00:zz:00:01",
        &["--net", "mac=52:54:00:zz:00:01", "not a MAC address"],
    );
    expect_net_error(
        "tap=chvtap0,mac=52:54:00:12:34",
        &["--net", "mac=52:54:00:12:34"],
    );
}

#[test]
fn net_tap_that_cannot_be_created_is_a_clean_error() {
    // `lo` exists in every namespace and is not a tun/tap device, so the
    // kernel refuses TUNSETIFF at run time (after option parsing).
    expect_net_error("tap=lo", &["--net", "tap lo", "TUNSETIFF"]);
}

#[test]
fn pattern_is_deterministic_and_varied() {
    let a = pattern(4096, 7);
    assert_eq!(a, pattern(4096, 7));
    assert_ne!(a, pattern(4096, 8));
    assert_eq!(pattern(13, 7), a[..13]);
    let distinct: std::collections::HashSet<u8> = a.iter().copied().collect();
    assert!(distinct.len() > 200, "pattern bytes look too uniform");
}
