//! End-to-end checks of chv's virtio-vsock device (Cloud Hypervisor's
//! hybrid Unix-socket model) and of the disk rate limiters with the real
//! Linux guest kit (see /work/shared/guest/README.md), plus fast `--vsock`
//! and rate-limit option errors that need no Linux boot.
//!
//! One Linux boot (initramfs root, 2 vCPUs) with a vsock device, a NIC and
//! four disks: `/dev/vda` is an ext4
//! image this test builds with `mkfs.ext4 -d`, holding `vsock` (a static
//! AF_VSOCK tool compiled from `tests/guest-linux/vsock.c`) and a payload
//! file; `/dev/vdb` is limited to 128 KiB/s on its own; `/dev/vdc` and
//! `/dev/vdd` share one 128 KiB/s `--rate-limit-group`. In the guest:
//!
//! 1. host→guest: `vsock listen 1234 16` echoes 16 connections; the host
//!    opens all 16 at once through the Unix socket (`CONNECT 1234\n`,
//!    `OK <port>\n`), sends 128 KiB of distinct data on each and compares
//!    the echo.
//! 2. guest→host: `vsock connect 2 5000` sends the 256 KiB payload to the
//!    test's listener on `<socket>_5000`, which compares it and answers
//!    `HOST-OK`.
//! 3. Disk limits (128 KiB/s: the guest reads only about 0.4 MiB/s here,
//!    so 10 MiB/s would not be observable): reading 2 MiB from `/dev/vdb`,
//!    and 1 MiB from each of `/dev/vdc` and `/dev/vdd` at the same time,
//!    must each take at least 14 s of guest time (the first 128 KiB come
//!    from the full bucket). Only a lower bound is checked; the measured
//!    rates are logged with an unlimited read of `/dev/vda` for comparison.
//! 4. NIC limit: the NIC is limited to 16 KiB/s each way; 256 KiB from
//!    the host to the guest's `nc` and 256 KiB back must each take at
//!    least 14 s of host time (unlimited: about 6 s here). chv runs in a network namespace the test creates
//!    (`ip netns add chvrl-<pid>`, deleted afterwards, even on failure):
//!    its tap and the host's TCP peers live there, so no traffic leaves it.
//!    The vsock Unix sockets are path-based and work across namespaces.
//!
//! Needs /dev/kvm, root (namespaces, taps), the guest kit, `gcc` with a
//! static libc, `ip` and `mkfs.ext4`. A missing kit fails the boot test unless
//! `CHV_SKIP_LINUX=1`.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chv_tests::netns::NetNs;
use chv_tests::{chv_bin, expect_option_error, require_guest_kit, Chv, GuestKit};

/// Time to `GUEST-READY`; boots take 40-60 s here, more with a busy host.
const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
/// Time from `GUEST-READY` to the last check line (forks cost 1-2 s each,
/// every guest system call about 0.65 ms).
const CMD_TIMEOUT: Duration = Duration::from_secs(900);
/// Longest stall of one host-side socket read or write (then the
/// connection is closed, which also ends the guest side).
const IO_TIMEOUT: Duration = Duration::from_secs(180);
/// Console text that ends a wait early as a failure.
const ABORT: &[&str] = &["Kernel panic"];

const MIB: usize = 1 << 20;
/// Guest vsock port of the echo listener.
const ECHO_PORT: u32 = 1234;
/// Concurrent host→guest connections.
const CONNS: usize = 16;
/// Bytes echoed on the single probe connection made first.
const PROBE_LEN: usize = 4096;
/// Bytes sent (and echoed) on each of the [`CONNS`] parallel connections.
const ECHO_LEN: usize = 128 * 1024;
/// Host vsock port the guest connects to.
const HOST_PORT: u32 = 5000;
/// Bytes the guest sends to the host.
const G2H_LEN: usize = 256 * 1024;
/// The rate limit of every limited disk:
/// 128 KiB/s. This guest reads a virtio disk at only about 0.4 MiB/s here
/// (its kernel runs through KVM's instruction emulator), so Cloud
/// Hypervisor's usual 10 MiB/s example (`bw_size=10485760`) could not be
/// observed; the syntax is the same.
const BW_LIMIT: &str = "bw_size=131072,bw_refill_time=1000";
/// MiB read from `/dev/vdb` (and in total from `/dev/vdc` + `/dev/vdd`).
const DISK_READ_MIB: usize = 2;
/// Size of every rate-limited disk image.
const DISK_LEN: u64 = 64 * MIB as u64;
/// Least guest time (s) for 2 MiB through a full 128 KiB bucket refilled at
/// 128 KiB/s: 15 s.
const MIN_SECONDS: f64 = 14.0;

/// A scratch directory, removed on drop unless the test failed.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("chv-vsock-rl-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), distinct per `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The first offset where `got` and `want` differ, or a length mismatch.
fn first_difference(got: &[u8], want: &[u8]) -> Option<String> {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        return Some(format!(
            "first difference at byte {i:#x} (got {:#04x}, want {:#04x})",
            got[i], want[i]
        ));
    }
    (got.len() != want.len()).then(|| format!("got {} bytes, want {}", got.len(), want.len()))
}

/// Builds `tools.ext4`: the static `vsock` tool and the guest→host payload.
fn build_tools_disk(dir: &Scratch) {
    let payload = pattern(5000, G2H_LEN);
    chv_tests::host_tools::vsock_tools_disk(&dir.0, &[("payload.bin", &payload)], 16 * MIB as u64);
}

/// Creates a sparse raw image of [`DISK_LEN`] bytes.
fn sparse_disk(dir: &Scratch, name: &str) -> String {
    let path = dir.path(name);
    fs::File::create(&path)
        .and_then(|f| f.set_len(DISK_LEN))
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    path.display().to_string()
}

/// Accepts one guest connection on `listener` (until `deadline`), reads
/// [`G2H_LEN`] bytes, answers `HOST-OK\n` and returns what it read.
fn serve_guest_to_host(listener: UnixListener, deadline: Instant) -> Result<Vec<u8>, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err("the guest never connected to host port 5000".into());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("accept on the _{HOST_PORT} socket: {e}")),
        }
    };
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("socket options: {e}"))?;
    let mut got = Vec::with_capacity(G2H_LEN);
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < G2H_LEN {
        let want = (G2H_LEN - got.len()).min(buf.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read after {} bytes: {e}", got.len())),
        }
    }
    stream
        .write_all(b"HOST-OK\n")
        .map_err(|e| format!("write HOST-OK: {e}"))?;
    Ok(got)
}

/// One host→guest connection: `CONNECT`, then send `len` bytes of
/// `pattern(seed)` while reading the echo; returns the `OK` line and an
/// error text if the echo differs.
fn echo_connection(socket: &Path, seed: u64, len: usize) -> Result<String, String> {
    let mut stream =
        UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("socket options: {e}"))?;
    stream
        .write_all(format!("CONNECT {ECHO_PORT}\n").as_bytes())
        .map_err(|e| format!("write CONNECT: {e}"))?;
    // Read the reply byte by byte so no echo data is swallowed.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(format!(
                    "EOF after {:?} instead of an OK line",
                    String::from_utf8_lossy(&line)
                ))
            }
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(format!("read OK line: {e}")),
        }
        if line.len() > 64 {
            return Err(format!(
                "overlong reply {:?}",
                String::from_utf8_lossy(&line)
            ));
        }
    }
    let ok = String::from_utf8_lossy(&line).trim_end().to_string();
    let port_ok = ok
        .strip_prefix("OK ")
        .is_some_and(|p| p.parse::<u32>().is_ok());
    if !port_ok {
        return Err(format!("reply to CONNECT is {ok:?}, want `OK <port>`"));
    }
    let data = pattern(seed, len);
    let mut writer = stream.try_clone().map_err(|e| format!("try_clone: {e}"))?;
    let to_send = data.clone();
    let sender = std::thread::spawn(move || {
        let mut sent = 0;
        for chunk in to_send.chunks(16 * 1024) {
            if let Err(e) = writer.write_all(chunk) {
                return Err(format!("send failed after {sent} bytes: {e}"));
            }
            sent += chunk.len();
        }
        Ok(())
    });
    let mut echo = Vec::with_capacity(len);
    let mut buf = vec![0u8; 64 * 1024];
    let mut read_err = None;
    while echo.len() < len {
        let want = (len - echo.len()).min(buf.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => {
                read_err = Some(format!("EOF after {} echoed bytes", echo.len()));
                break;
            }
            Ok(n) => echo.extend_from_slice(&buf[..n]),
            Err(e) => {
                read_err = Some(format!(
                    "read failed after {} echoed bytes: {e}",
                    echo.len()
                ));
                break;
            }
        }
    }
    if read_err.is_some() {
        // Unblock the sender (it may wait for credit that never comes).
        let _ = stream.shutdown(Shutdown::Both);
    }
    let sent = sender
        .join()
        .unwrap_or_else(|_| Err("sender thread panicked".into()));
    if let Some(e) = read_err {
        return Err(match sent {
            Ok(()) => format!("all {len} bytes sent; {e}"),
            Err(s) => format!("{s}; {e}"),
        });
    }
    sent?;
    match first_difference(&echo, &data) {
        Some(diff) => Err(format!("echo differs: {diff}")),
        None => Ok(ok),
    }
}

/// Guest seconds between two `/proc/uptime` readings printed as
/// `<key>:<start>:<end>`.
fn guest_seconds(chv: &Chv, key: &str) -> f64 {
    let prefix = format!("{key}:");
    let lines = chv.lines();
    let found: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect();
    if found.len() != 1 {
        chv.fail(&format!("want one console line {prefix}<start>:<end>"));
    }
    let times: Vec<f64> = found[0]
        .trim()
        .split(':')
        .filter_map(|t| t.parse().ok())
        .collect();
    if times.len() != 2 {
        chv.fail(&format!("cannot parse {key} line {:?}", found[0]));
    }
    times[1] - times[0]
}

/// The single console line starting with `key:`, without the prefix.
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

fn want(chv: &Chv, key: &str, value: &str) {
    let got = chk(chv, key);
    chv.check(
        got == value,
        &format!("{key}: guest printed {got:?}, want {value:?}"),
    );
}

/// The tap's (host side) address inside the test's network namespace.
const HOST_IP: &str = "10.0.2.1";
/// The guest's address.
const GUEST_IP: &str = "10.0.2.15";
/// Name of the tap chv creates inside the namespace.
const TAP: &str = "chvrl0";
/// The NIC limit (each direction): 16 KiB/s. TCP through this guest only
/// reaches about 40 KB/s here unlimited, so a higher limit would not be
/// observable.
const NET_LIMIT: &str = "bw_size=16384,bw_refill_time=1000";
/// Bytes moved each way through the limited NIC.
const NET_LEN: usize = 256 * 1024;
/// Least host time (s) for [`NET_LEN`] bytes through a full 16 KiB bucket
/// refilled at 16 KiB/s is 15 s (TCP/IP headers only add to it).
const NET_MIN_SECONDS: f64 = 14.0;
/// Host port the guest receives from (host → guest, the RX limit).
const NET_RX_PORT: u16 = 5001;
/// Host port the guest sends to (guest → host, the TX limit).
const NET_TX_PORT: u16 = 5002;

/// Waits (until `deadline`) for one TCP connection on `listener`.
fn accept_tcp(listener: &TcpListener, deadline: Instant) -> Result<TcpStream, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
                    .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
                    .map_err(|e| format!("socket options: {e}"))?;
                return Ok(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err("the guest never connected".into());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

/// Host → guest through the NIC: sends [`NET_LEN`] bytes, half-closes and
/// waits for the guest to close; returns the seconds from accept to that.
fn net_send(listener: TcpListener, deadline: Instant) -> Result<f64, String> {
    let mut stream = accept_tcp(&listener, deadline)?;
    let start = Instant::now();
    stream
        .write_all(&pattern(NET_RX_PORT.into(), NET_LEN))
        .map_err(|e| format!("send: {e}"))?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .map_err(|e| format!("waiting for the guest to close: {e}"))?;
    Ok(start.elapsed().as_secs_f64())
}

/// Guest → host through the NIC: counts bytes until EOF; returns them and
/// the seconds from accept to EOF.
fn net_receive(listener: TcpListener, deadline: Instant) -> Result<(usize, f64), String> {
    let mut stream = accept_tcp(&listener, deadline)?;
    let start = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok((total, start.elapsed().as_secs_f64())),
            Ok(n) => total += n,
            Err(e) => return Err(format!("read after {total} bytes: {e}")),
        }
    }
}

/// The guest's NIC fragment: receive from the host (printing the byte
/// count), then send [`NET_LEN`] zero bytes.
fn guest_net_script() -> String {
    format!(
        "ip addr add {GUEST_IP}/24 dev eth0; ip link set eth0 up; echo CHK-IFUP:$?; \
         echo CHK-NET-RX-BYTES:$(nc {HOST_IP} {NET_RX_PORT} | wc -c); \
         dd if=/dev/zero bs=65536 count={} 2>/dev/null | nc {HOST_IP} {NET_TX_PORT}; \
         echo CHK-NET-TX:$?",
        NET_LEN / 65536
    )
}

/// The guest's script (run by the kit's `/init` via `guest_cmd=`).
fn guest_script() -> String {
    [
        "mount -t ext4 -o ro /dev/vda /mnt; echo CHK-MOUNT:$?".to_string(),
        format!("/mnt/vsock listen {ECHO_PORT} {} & L=$!", CONNS + 1),
        format!("/mnt/vsock connect 2 {HOST_PORT} < /mnt/payload.bin; echo CHK-G2H-EXIT:$?"),
        "wait $L; echo CHK-LISTEN-EXIT:$?".into(),
        format!(
            "read a x < /proc/uptime; dd if=/dev/vda of=/dev/null bs=1M count={DISK_READ_MIB} 2>&1; \
             read b x < /proc/uptime; echo CHK-DISK-FREE:$a:$b"
        ),
        format!(
            "read a x < /proc/uptime; dd if=/dev/vdb of=/dev/null bs=1M count={DISK_READ_MIB} 2>&1; \
             read b x < /proc/uptime; echo CHK-DISK-BW:$a:$b"
        ),
        format!(
            "read a x < /proc/uptime; dd if=/dev/vdc of=/dev/null bs=1M count={half} 2>&1 & \
             dd if=/dev/vdd of=/dev/null bs=1M count={half} 2>&1; wait; \
             read b x < /proc/uptime; echo CHK-DISK-GROUP:$a:$b",
            half = DISK_READ_MIB / 2
        ),
        guest_net_script(),
    ]
    .join("; ")
}

#[test]
fn linux_vsock_both_directions_and_disk_rate_limits() {
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let dir = Scratch::new("boot");
    build_tools_disk(&dir);
    let limited = sparse_disk(&dir, "limited.raw");
    let group_a = sparse_disk(&dir, "group-a.raw");
    let group_b = sparse_disk(&dir, "group-b.raw");
    let socket = dir.path("v.sock");
    let g2h_socket = PathBuf::from(format!("{}_{HOST_PORT}", socket.display()));
    let listener = UnixListener::bind(&g2h_socket)
        .unwrap_or_else(|e| panic!("bind {}: {e}", g2h_socket.display()));
    let deadline = Instant::now() + BOOT_TIMEOUT + CMD_TIMEOUT;
    let g2h: JoinHandle<Result<Vec<u8>, String>> =
        std::thread::spawn(move || serve_guest_to_host(listener, deadline));
    let ns = NetNs::new("rl");
    let (rx_listener, tx_listener) = ns.run(|| {
        let bind = |port: u16| {
            TcpListener::bind(("0.0.0.0", port))
                .unwrap_or_else(|e| panic!("bind port {port} in the namespace: {e}"))
        };
        (bind(NET_RX_PORT), bind(NET_TX_PORT))
    });
    let net_rx = std::thread::spawn(move || net_send(rx_listener, deadline));
    let net_tx = std::thread::spawn(move || net_receive(tx_listener, deadline));

    let cmdline = format!(
        "console=ttyS0 quiet panic=-1 guest_cmd=\"{}\"",
        guest_script()
    );
    assert!(cmdline.len() < 4096, "kernel command line too long");
    let args = run_args(
        &kit,
        &cmdline,
        &[
            "--disk".into(),
            format!("path={},readonly=on", dir.arg("tools.ext4")),
            format!("path={limited},readonly=on,{BW_LIMIT}"),
            format!("path={group_a},readonly=on,rate_limit_group=g0"),
            format!("path={group_b},readonly=on,rate_limit_group=g0"),
            "--rate-limit-group".into(),
            format!("id=g0,{BW_LIMIT}"),
            "--vsock".into(),
            format!("cid=3,socket={}", socket.display()),
            "--net".into(),
            format!("tap={TAP},ip={HOST_IP},mask=255.255.255.0,{NET_LIMIT}"),
        ],
    );
    // Resolve the binary outside the namespace, then start chv inside it.
    let _ = chv_bin();
    let mut chv = ns.run(|| Chv::spawn(&args));
    chv.expect("GUEST-READY", ABORT, BOOT_TIMEOUT);
    eprintln!("GUEST-READY after {:.1?}", chv.elapsed());

    // 1. host→guest: a small probe, then 16 echo connections at once.
    // vsock failures are collected and reported at the end, after the
    // other checks ran.
    let mut vsock_problems: Vec<String> = Vec::new();
    chv.expect(
        &format!("VSOCK-LISTEN-READY {ECHO_PORT}"),
        ABORT,
        CMD_TIMEOUT,
    );
    let started = Instant::now();
    let probe = echo_connection(&socket, 99, PROBE_LEN);
    eprintln!(
        "host->guest probe: {PROBE_LEN} bytes echoed in {:.1?}: {probe:?}",
        started.elapsed()
    );
    if let Err(e) = probe {
        vsock_problems.push(format!("probe connection ({PROBE_LEN} bytes): {e}"));
    }
    let started = Instant::now();
    let workers: Vec<JoinHandle<Result<String, String>>> = (0..CONNS)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || echo_connection(&socket, i as u64 + 1, ECHO_LEN))
        })
        .collect();
    let results: Vec<Result<String, String>> = workers
        .into_iter()
        .map(|w| w.join().unwrap_or_else(|_| Err("worker panicked".into())))
        .collect();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "host->guest: {CONNS} x {ECHO_LEN} bytes in {secs:.1} s ({:.3} MiB/s each way); OK lines: {:?}",
        (CONNS * ECHO_LEN) as f64 / MIB as f64 / secs,
        results.iter().filter_map(|r| r.as_ref().ok()).collect::<Vec<_>>()
    );
    for (i, r) in results.iter().enumerate() {
        if let Err(e) = r {
            eprintln!("host->guest connection {i}: {e}");
            vsock_problems.push(format!("connection {i} ({ECHO_LEN} bytes): {e}"));
        }
    }

    // 2. guest→host (runs concurrently with 1 in the guest).
    chv.expect("CHK-G2H-EXIT:", ABORT, CMD_TIMEOUT);
    let got = g2h
        .join()
        .unwrap_or_else(|_| Err("guest->host thread panicked".into()));
    match got {
        Ok(bytes) => {
            if let Some(diff) = first_difference(&bytes, &pattern(5000, G2H_LEN)) {
                vsock_problems.push(format!("guest->host payload differs: {diff}"));
            }
        }
        Err(e) => vsock_problems.push(format!("guest->host: {e}")),
    }

    // 3. Disk rate limits, then 4. the NIC limit.
    chv.expect("CHK-DISK-GROUP:", ABORT, CMD_TIMEOUT);
    chv.expect("CHK-NET-TX:", ABORT, CMD_TIMEOUT);
    chv.expect("GUEST-POWEROFF", ABORT, Duration::from_secs(120));
    let st = chv.expect_exit(Duration::from_secs(60));
    eprintln!("chv exited ({st}) after {:.1?}", chv.elapsed());
    chv.assert_no_panic();
    let console = chv.stdout();
    for line in console.lines().filter(|l| l.contains("copied")) {
        eprintln!("guest dd: {}", line.trim_end());
    }
    want(&chv, "CHK-MOUNT", "0");
    if !console.contains("HOST-OK") {
        vsock_problems.push("the guest did not print the host's HOST-OK answer".into());
    }
    if chk(&chv, "CHK-G2H-EXIT") != "0" {
        vsock_problems.push("the guest's `vsock connect 2 5000` failed".into());
    }
    let done = format!(
        "VSOCK-LISTEN-DONE conns={} bytes={} errors=0",
        CONNS + 1,
        CONNS * ECHO_LEN + PROBE_LEN
    );
    if !console.contains(&done) || chk(&chv, "CHK-LISTEN-EXIT") != "0" {
        vsock_problems.push(format!(
            "the guest echo listener did not report {done:?} and exit 0 (see VSOCK-CONN lines)"
        ));
    }
    let free = guest_seconds(&chv, "CHK-DISK-FREE");
    let bw = guest_seconds(&chv, "CHK-DISK-BW");
    let group = guest_seconds(&chv, "CHK-DISK-GROUP");
    let mib = DISK_READ_MIB as f64;
    eprintln!(
        "disk, guest time incl. dd exec: unlimited /dev/vda {mib} MiB in {free:.2} s \
         ({:.1} KiB/s); limit {BW_LIMIT}: /dev/vdb {mib} MiB in {bw:.2} s ({:.1} KiB/s); \
         group g0: 2 x {} MiB in {group:.2} s ({:.1} KiB/s)",
        mib * 1024.0 / free,
        mib * 1024.0 / bw,
        mib / 2.0,
        mib * 1024.0 / group
    );
    chv.check(
        bw >= MIN_SECONDS,
        &format!(
            "{mib} MiB through a 128 KiB/s disk took only {bw:.2} s (want >= {MIN_SECONDS} s)"
        ),
    );
    chv.check(
        group >= MIN_SECONDS,
        &format!(
            "{mib} MiB through a shared 128 KiB/s group took only {group:.2} s (want >= {MIN_SECONDS} s)"
        ),
    );
    want(&chv, "CHK-IFUP", "0");
    let rx_secs = match net_rx.join() {
        Ok(Ok(secs)) => secs,
        Ok(Err(e)) => chv.fail(&format!("NIC host->guest: {e}")),
        Err(_) => chv.fail("NIC host->guest thread panicked"),
    };
    let (tx_bytes, tx_secs) = match net_tx.join() {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => chv.fail(&format!("NIC guest->host: {e}")),
        Err(_) => chv.fail("NIC guest->host thread panicked"),
    };
    eprintln!(
        "NIC limit {NET_LIMIT}: host->guest {NET_LEN} bytes in {rx_secs:.2} s ({:.1} KiB/s); \
         guest->host {tx_bytes} bytes in {tx_secs:.2} s ({:.1} KiB/s), host time",
        NET_LEN as f64 / 1024.0 / rx_secs,
        tx_bytes as f64 / 1024.0 / tx_secs
    );
    want(&chv, "CHK-NET-RX-BYTES", &NET_LEN.to_string());
    want(&chv, "CHK-NET-TX", "0");
    chv.check(
        tx_bytes == NET_LEN,
        &format!("NIC guest->host: host got {tx_bytes} bytes, want {NET_LEN}"),
    );
    chv.check(
        rx_secs >= NET_MIN_SECONDS && tx_secs >= NET_MIN_SECONDS,
        &format!(
            "{NET_LEN} bytes through a 16 KiB/s NIC took only {rx_secs:.2} s (host->guest) / \
             {tx_secs:.2} s (guest->host), want >= {NET_MIN_SECONDS} s each"
        ),
    );
    chv.check(
        st.code() == Some(0),
        &format!("chv exit status {st}, want 0"),
    );
    drop(ns);
    if !vsock_problems.is_empty() {
        chv.fail(&format!(
            "VSOCK checks failed:\n{}",
            vsock_problems.join("\n")
        ));
    }
    let stderr = chv.stderr();
    if !stderr.trim().is_empty() {
        eprintln!("chv stderr:\n{stderr}");
    }
}

/// chv arguments for a Linux boot from the kit's initramfs.
fn run_args(kit: &GuestKit, cmdline: &str, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--kernel".into(),
        kit.kernel.display().to_string(),
        "--initramfs".into(),
        kit.initramfs.display().to_string(),
        "--cmdline".into(),
        cmdline.into(),
        "--cpus".into(),
        "boot=2".into(),
        "--memory".into(),
        "size=128M".into(),
        "--serial".into(),
        "tty".into(),
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn vsock_socket_in_missing_directory_is_a_clean_error() {
    expect_option_error(
        &[
            "--vsock".into(),
            "cid=3,socket=/nonexistent-dir/v.sock".into(),
        ],
        &["--vsock", "/nonexistent-dir"],
    );
}

#[test]
fn vsock_reserved_cid_is_a_clean_error() {
    let dir = Scratch::new("cid");
    for cid in ["0", "1", "2", "4294967295", "x"] {
        expect_option_error(
            &[
                "--vsock".into(),
                format!("cid={cid},socket={}", dir.arg("v.sock")),
            ],
            &["--vsock", "cid"],
        );
    }
    expect_option_error(
        &["--vsock".into(), format!("socket={}", dir.arg("v.sock"))],
        &["--vsock", "cid"],
    );
}

#[test]
fn rate_limit_options_are_checked() {
    let dir = Scratch::new("rl");
    let disk = sparse_disk(&dir, "d.raw");
    expect_option_error(
        &["--disk".into(), format!("path={disk},bw_size=10485760")],
        &["--disk", "bw_refill_time"],
    );
    expect_option_error(
        &[
            "--disk".into(),
            format!("path={disk},bw_size=0,bw_refill_time=1000"),
        ],
        &["--disk", "bw_size"],
    );
    expect_option_error(
        &[
            "--disk".into(),
            format!("path={disk},rate_limit_group=nope"),
        ],
        &["nope"],
    );
    expect_option_error(
        &["--rate-limit-group".into(), "id=g,bw_size=1M".into()],
        &["--rate-limit-group", "bw_refill_time"],
    );
}
