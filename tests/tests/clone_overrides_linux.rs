//! A clone restored through the REST API gets its own serial port, virtio
//! console and vsock identity (chv's `serial`, `console` and `vsock`
//! fields of `vm.restore`, see `vmm/src/snapshot/overrides.rs`).
//!
//! The template is one boot of the guest kit with the serial port on
//! stdio, the virtio console in a file (`orig.console`), a vsock device
//! (CID 3, socket `a.vsock`) and a read-only ext4 disk holding the static
//! `vsock` tool (`tests/guest-linux/vsock.c`; busybox has no AF_VSOCK
//! tool). Before the snapshot the guest writes `/dev/hvc0` and connects to
//! the host through `a.vsock_5000`, so the template's devices are known
//! to work. An API-only chv then restores it with `PUT vm.restore`:
//! serial `Socket` at `clone.serial`, console `File` at `clone.console`,
//! vsock CID 7 at `clone.vsock`, and `PUT vm.resume`. Checked:
//!
//! 1. `vm.info` reports the three overrides (`config.serial`,
//!    `config.console`, `config.vsock.cid` 7 and the new socket);
//! 2. the guest's shell answers commands typed on `clone.serial`, and
//!    nothing reaches the clone's stdout;
//! 3. what the guest writes to hvc0 lands in `clone.console`, not in
//!    `orig.console`;
//! 4. vsock goes through the new socket with the new CID: the guest's
//!    connection to the host (CID 2) port 5000 reaches the listener on
//!    `clone.vsock_5000` (not the one still bound on `a.vsock_5000`) —
//!    chv's muxer drops guest packets whose `src_cid` is not the
//!    configured CID, so this only works once the guest took CID 7 from
//!    the transport reset; and the host's `CONNECT 1234` through
//!    `clone.vsock` reaches a guest listener and is echoed.
//!
//! Needs /dev/kvm, the guest kit, `gcc` with a static libc and
//! `mkfs.ext4`; a missing kit fails unless `CHV_SKIP_LINUX=1`.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chv_tests::api_client::http;
use chv_tests::base_snapshot::{LOOP, READY};
use chv_tests::{require_guest_kit, Chv, Scratch};

/// Boots take 40-60 s here, more beside a CI run.
const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
/// One guest command line (each fork+exec costs 1-2 s in this guest).
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
const ABORT: &[&str] = &["Kernel panic"];
/// The host vsock port the guest connects to.
const HOST_PORT: u32 = 5000;
/// The guest vsock port the host connects to.
const GUEST_PORT: u32 = 1234;
/// The clone's new guest CID.
const NEW_CID: u32 = 7;

/// `tools.ext4` in `dir`, holding the static `vsock` tool.
fn tools_disk(dir: &Scratch) -> PathBuf {
    chv_tests::host_tools::vsock_tools_disk(&dir.0, &[], 8 << 20)
}

/// Accepts one connection on `listener` (until `deadline`), reads one
/// line, answers `reply` and returns the line.
fn serve_one(
    listener: UnixListener,
    deadline: Instant,
    reply: &'static str,
) -> Result<String, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(STEP_TIMEOUT)))
        .map_err(|e| format!("socket options: {e}"))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') && line.len() < 256 {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    stream
        .write_all(reply.as_bytes())
        .map_err(|e| format!("write reply: {e}"))?;
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

/// A listener on `<socket>_<port>` served on a thread by [`serve_one`].
fn host_port(socket: &Path, reply: &'static str) -> JoinHandle<Result<String, String>> {
    let path = format!("{}_{HOST_PORT}", socket.display());
    let listener = UnixListener::bind(&path).unwrap_or_else(|e| panic!("bind {path}: {e}"));
    let deadline = Instant::now() + BOOT_TIMEOUT;
    std::thread::spawn(move || serve_one(listener, deadline, reply))
}

/// The guest's serial port through the clone's `Socket` mode: a reader
/// thread collects everything the guest prints.
struct SerialSocket {
    stream: UnixStream,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl SerialSocket {
    fn open(chv: &Chv, path: &Path) -> SerialSocket {
        let stream = chv.connect_unix(path, STEP_TIMEOUT);
        let mut reader = stream.try_clone().expect("clone the serial socket");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        SerialSocket { stream, seen }
    }

    fn send_line(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to the serial socket");
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    /// Waits up to `timeout` for `needle`; false if it never came.
    fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let text = self.text();
            if text.contains(needle) || ABORT.iter().any(|a| text.contains(a)) {
                return text.contains(needle);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

/// `CONNECT port` through the hybrid vsock `socket`, sends `data`, closes
/// the write side and returns (the `OK` line, the echo).
fn host_to_guest(socket: &Path, data: &[u8]) -> Result<(String, Vec<u8>), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(STEP_TIMEOUT))
        .map_err(|e| format!("socket options: {e}"))?;
    stream
        .write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())
        .map_err(|e| format!("write CONNECT: {e}"))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') && line.len() < 64 {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(format!("read OK line: {e}")),
        }
    }
    let ok = String::from_utf8_lossy(&line).trim_end().to_string();
    if !ok.starts_with("OK ") {
        return Err(format!("reply to CONNECT is {ok:?}"));
    }
    stream
        .write_all(data)
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write))
        .map_err(|e| format!("send: {e}"))?;
    let mut echo = Vec::new();
    stream
        .read_to_end(&mut echo)
        .map_err(|e| format!("read echo after {} bytes: {e}", echo.len()))?;
    Ok((ok, echo))
}

fn vm_info(chv: &Chv, api: &Path) -> serde_json::Value {
    let (st, body) = http(api, "GET", "vm.info", None);
    chv.check(st == 200, &format!("vm.info: {st} {body}"));
    serde_json::from_str(&body).unwrap_or_else(|e| chv.fail(&format!("vm.info {body}: {e}")))
}

/// Boots the template and snapshots it into `dir/snap`; returns the
/// snapshot and the template's still-bound listener on `a.vsock_5000`
/// (which must see no connection from the clone).
fn template(dir: &Scratch, kit: &chv_tests::GuestKit) -> (PathBuf, UnixListener) {
    let disk = tools_disk(dir);
    let api = dir.path("template.api");
    let vsock = dir.path("a.vsock");
    let cmd = format!("mount -t ext4 -o ro /dev/vda /mnt; echo CHK-MOUNT-$?; {LOOP}");
    let mut chv = Chv::spawn_with_input(&kit.args(
        &cmd,
        &[
            "--cpus",
            "boot=1",
            "--memory",
            "size=128M",
            "--serial",
            "tty",
            "--console",
            &format!("file={}", dir.path("orig.console").display()),
            "--vsock",
            &format!("cid=3,socket={}", vsock.display()),
            "--disk",
            &format!("path={},readonly=on", disk.display()),
            "--api-socket",
            &api.display().to_string(),
        ],
    ));
    // The first connection is served on a thread; the listener stays
    // bound (a second one checks that the clone never uses it).
    let path = format!("{}_{HOST_PORT}", vsock.display());
    let listener = UnixListener::bind(&path).unwrap_or_else(|e| panic!("bind {path}: {e}"));
    let first = listener.try_clone().expect("clone the listener");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let served = std::thread::spawn(move || serve_one(first, deadline, "HOST-OK-A\n"));
    chv.expect(READY, ABORT, BOOT_TIMEOUT);
    eprintln!("template booted in {:.1?}", chv.elapsed());
    chv.check(
        chv.stdout().contains("CHK-MOUNT-0"),
        "the tools disk mounted",
    );
    chv.send_line(&format!(
        "echo HVC-ORIG-$((1+1)) > /dev/hvc0; echo pre-snap | /mnt/vsock connect 2 {HOST_PORT}; \
         echo PRE-G2H-$? PRE-END"
    ));
    chv.expect("PRE-END", ABORT, STEP_TIMEOUT);
    let got = served.join().expect("host listener thread");
    chv.check(
        got.as_deref() == Ok("pre-snap") && chv.stdout().contains("HOST-OK-A"),
        &format!("the template's guest->host vsock through a.vsock_5000: {got:?}"),
    );
    chv.check(
        chv.stdout().contains("PRE-G2H-0"),
        "template vsock connect exit 0",
    );
    // Let the shell reach its read() again before the guest stops.
    std::thread::sleep(Duration::from_millis(500));
    let (st, body) = http(&api, "PUT", "vm.pause", None);
    chv.check(st == 204, &format!("vm.pause: {st} {body}"));
    let snap = dir.path("snap");
    let url = format!("{{\"destination_url\":\"file://{}\"}}", snap.display());
    let (st, body) = http(&api, "PUT", "vm.snapshot", Some(&url));
    chv.check(st == 204, &format!("vm.snapshot: {st} {body}"));
    chv.kill();
    chv.assert_no_panic();
    (snap, listener)
}

#[test]
fn linux_clone_restored_over_rest_uses_its_own_serial_console_and_vsock_cid() {
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let started = Instant::now();
    let dir = Scratch::new("clone-overrides");
    let (snap, old_listener) = template(&dir, &kit);
    let template_done = started.elapsed();

    let api = dir.path("clone.api");
    let serial = dir.path("clone.serial");
    let console = dir.path("clone.console");
    let vsock = dir.path("clone.vsock");
    let mut chv = Chv::spawn(&["-v", "--api-socket", &api.display().to_string()]);
    let g2h = host_port(&vsock, "HOST-OK-CLONE\n");
    let body = serde_json::json!({
        "source_url": format!("file://{}", snap.display()),
        "serial": {"mode": "Socket", "socket": serial},
        "console": {"mode": "File", "file": console},
        "vsock": {"cid": NEW_CID, "socket": vsock},
    })
    .to_string();
    let (st, answer) = http(&api, "PUT", "vm.restore", Some(&body));
    chv.check(st == 204, &format!("vm.restore {body}: {st} {answer}"));

    // (1) vm.info reports every override.
    let v = vm_info(&chv, &api);
    let c = &v["config"];
    let want = |p: &Path| serde_json::Value::from(p.display().to_string());
    chv.check(
        c["serial"]["mode"] == "Socket" && c["serial"]["socket"] == want(&serial),
        &format!("serial in vm.info: {}", c["serial"]),
    );
    chv.check(
        c["console"]["mode"] == "File" && c["console"]["file"] == want(&console),
        &format!("console in vm.info: {}", c["console"]),
    );
    chv.check(
        c["vsock"]["cid"] == NEW_CID && c["vsock"]["socket"] == want(&vsock),
        &format!("vsock in vm.info: {}", c["vsock"]),
    );

    // (2) The guest's shell answers on the new serial socket.
    let mut tty = SerialSocket::open(&chv, &serial);
    let (st, answer) = http(&api, "PUT", "vm.resume", None);
    chv.check(st == 204, &format!("vm.resume: {st} {answer}"));
    let mut ready = false;
    for _ in 0..20 {
        tty.send_line("");
        tty.send_line("echo CMD-PROBE-$((40+2))");
        if tty.wait_for("CMD-PROBE-42", Duration::from_secs(3)) {
            ready = true;
            break;
        }
    }
    chv.check(
        ready,
        &format!("no answer on the clone's serial socket: {:?}", tty.text()),
    );

    // (3) hvc0 and (4) vsock, in one command line: a guest listener in
    // the background, then a guest->host connection.
    tty.send_line(&format!(
        "echo HVC-CLONE-$((1+1)) > /dev/hvc0; /mnt/vsock listen {GUEST_PORT} 1 & \
         echo from-clone | /mnt/vsock connect 2 {HOST_PORT}; echo G2H-EXIT-$? G2H-END"
    ));
    let fail = |what: &str, tty: &SerialSocket| -> ! {
        chv.fail(&format!("{what}; serial socket: {:?}", tty.text()))
    };
    if !tty.wait_for("G2H-END", STEP_TIMEOUT) {
        fail("the guest's vsock connect never ended", &tty);
    }
    let got = g2h.join().expect("host listener thread");
    if got.as_deref() != Ok("from-clone") {
        fail(&format!("clone.vsock_5000 got {got:?}"), &tty);
    }
    if !tty.text().contains("HOST-OK-CLONE") || !tty.text().contains("G2H-EXIT-0") {
        fail("the guest did not get the host's answer", &tty);
    }
    old_listener.set_nonblocking(true).expect("set_nonblocking");
    match old_listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => fail(
            &format!("a.vsock_5000 (the template's) got {other:?}"),
            &tty,
        ),
    }
    if !tty.wait_for(&format!("VSOCK-LISTEN-READY {GUEST_PORT}"), STEP_TIMEOUT) {
        fail("the guest's vsock listener did not start", &tty);
    }
    match host_to_guest(&vsock, b"ping-h2g\n") {
        Ok((_, echo)) if echo == b"ping-h2g\n" => {}
        other => fail(
            &format!("CONNECT {GUEST_PORT} through clone.vsock: {other:?}"),
            &tty,
        ),
    }
    if !tty.wait_for("VSOCK-LISTEN-DONE conns=1 bytes=9 errors=0", STEP_TIMEOUT) {
        fail("the guest's listener did not finish cleanly", &tty);
    }

    let new_console = std::fs::read_to_string(&console).unwrap_or_default();
    let old_console = std::fs::read_to_string(dir.path("orig.console")).unwrap_or_default();
    chv.check(
        new_console.contains("HVC-CLONE-2"),
        &format!("clone.console holds {new_console:?}"),
    );
    chv.check(
        old_console.contains("HVC-ORIG-2") && !old_console.contains("HVC-CLONE"),
        &format!("orig.console holds {old_console:?}"),
    );
    chv.check(
        !chv.stdout().contains("CMD-PROBE") && !chv.stdout().contains("HVC-CLONE"),
        "the clone's guest output leaked to its stdout",
    );
    chv.kill();
    chv.assert_no_panic();
    eprintln!(
        "template (boot + snapshot) {template_done:.1?}, clone checks {:.1?}",
        started.elapsed() - template_done
    );
}
