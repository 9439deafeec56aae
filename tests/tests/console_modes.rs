//! The `Pty` and `Socket` console modes.
//!
//! - The serial port (`--serial`), with the tiny test guest: the guest's
//!   output reaches the host end, and a line typed there comes back from
//!   the guest (`test=echo` reads COM1 and answers `ECHO <line>`).
//! - The virtio console (`--console`): with the tiny test guest
//!   (`test=virtio-console` sends one line on the transmit queue, then
//!   powers off) and no client on its `socket=`, the transmit still
//!   completes (the output is dropped; the guest never stalls). The guest
//!   kit's Linux (one boot per mode; the tiny guest powers off before a
//!   host end could be opened) writes `HVC-OUT` to `/dev/hvc0` every
//!   second and reads a line from it: output reaches a `socket=` client
//!   and the `pty`, a line typed there reaches the guest's shell, and
//!   `vm.info` reports `config.console` as `Socket` with its socket or
//!   `Pty` with the pty's path in `file`.

use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use chv_tests::api_client::http;
use chv_tests::{require_guest_kit, testguest, Chv, Scratch};

const TIMEOUT: Duration = Duration::from_secs(30);

fn args(serial: &str, api: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = [
        "--kernel",
        &testguest().display().to_string(),
        "--cmdline",
        "test=echo",
        "--memory",
        "size=64M",
        "--serial",
        serial,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(api) = api {
        a.extend(["--api-socket".into(), api.into()]);
    }
    a
}

/// Reads from `r` until `needle` has been seen; returns all text read.
fn read_until(chv: &Chv, r: &mut impl BufRead, needle: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    let mut text = String::new();
    while !text.contains(needle) {
        if Instant::now() > deadline {
            chv.fail(&format!("no {needle:?} from the console; got {text:?}"));
        }
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => std::thread::sleep(Duration::from_millis(20)),
            Ok(_) => text.push_str(&line),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => chv.fail(&format!("console read: {e}")),
        }
    }
    text
}

#[test]
fn serial_socket_mode_carries_output_and_input() {
    let dir = Scratch::new("console-socket");
    let sock = dir.path("serial.sock");
    let mut chv = Chv::spawn(&args(&format!("socket={}", sock.display()), None));
    let stream = chv.connect_unix(&sock, TIMEOUT);
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    // The guest may have printed its first lines before we connected (they
    // are dropped then); ECHO-READY repeats nothing, so poke until it reads.
    let mut writer = stream;
    writer.write_all(b"hello-socket\n").unwrap();
    let text = read_until(&chv, &mut reader, "ECHO ");
    let text = text + &read_until(&chv, &mut reader, "\n");
    chv.check(
        text.contains("ECHO hello-socket"),
        &format!("echo missing: {text:?}"),
    );
    chv.check(
        chv.stdout().is_empty(),
        "socket-mode output leaked to stdout",
    );
    chv.kill();
    chv.assert_no_panic();
}

#[test]
fn serial_pty_mode_is_reported_in_vm_info_and_echoes() {
    let dir = Scratch::new("console-pty");
    let api = dir.path("api.sock");
    let mut chv = Chv::spawn(&args("pty", Some(&api.display().to_string())));
    let deadline = Instant::now() + TIMEOUT;
    let info = loop {
        if api.exists() {
            let (status, body) = http(&api, "GET", "vm.info", None);
            if status == 200 {
                break body;
            }
        }
        if Instant::now() > deadline {
            chv.fail("vm.info never answered");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    chv.check(v["config"]["serial"]["mode"] == "Pty", &info);
    let Some(path) = v["config"]["serial"]["file"].as_str() else {
        chv.fail(&format!("no pty path in vm.info: {info}"));
    };
    chv.check(path.starts_with("/dev/pts/"), &format!("pty path {path}"));
    let pty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut writer = pty.try_clone().unwrap();
    // Read on a thread: a pty has no read timeout.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut pty = pty;
        let mut buf = [0u8; 256];
        while let Ok(n) = pty.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    writer.write_all(b"hello-pty\n").unwrap();
    let mut text = Vec::new();
    while !String::from_utf8_lossy(&text).contains("ECHO hello-pty\n") {
        match rx.recv_timeout(TIMEOUT) {
            Ok(bytes) => text.extend(bytes),
            Err(_) => chv.fail(&format!(
                "no echo on the pty; got {:?}",
                String::from_utf8_lossy(&text)
            )),
        }
    }
    chv.kill();
    chv.assert_no_panic();
}

/// The tiny guest's line on the virtio console (`test=virtio-console`).
const VIRTIO_HELLO: &str = "VIRTIO-CONSOLE-HELLO from the test guest";

#[test]
fn virtio_console_socket_mode_without_a_client_never_stalls_the_guest() {
    let dir = Scratch::new("vcon-sock");
    let sock = dir.path("console.sock");
    let mut chv = Chv::spawn(&[
        "--kernel",
        &testguest().display().to_string(),
        "--cmdline",
        "test=virtio-console",
        "--memory",
        "size=64M",
        "--serial",
        "tty",
        "--console",
        &format!("socket={}", sock.display()),
    ]);
    // Nobody connects: the transmit completes all the same (the output is
    // dropped), the guest passes and powers off.
    let st = chv.expect_exit(TIMEOUT);
    chv.check(
        chv.stdout().contains("TESTGUEST-PASS virtio-console"),
        "the console transmit did not complete without a client",
    );
    chv.check(
        !chv.stdout().contains(VIRTIO_HELLO),
        "virtio console output leaked to stdout",
    );
    chv.assert_no_panic();
    chv.check(st.success(), &format!("chv exited with {st}"));
}

/// `vm.info` once it answers 200, parsed.
fn vm_info(chv: &Chv, api: &std::path::Path) -> serde_json::Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if api.exists() {
            let (status, body) = http(api, "GET", "vm.info", None);
            if status == 200 {
                return serde_json::from_str(&body).unwrap();
            }
        }
        if Instant::now() > deadline {
            chv.fail("vm.info never answered");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Linux side of the hvc0 tests: a background loop writes `HVC-OUT`
/// to hvc0 every second while the shell reads one line from hvc0 and
/// answers `HVC-GOT-<line>` on both the serial port and hvc0. No double
/// quotes: it is one kernel parameter.
const HVC_SCRIPT: &str = "while :; do echo HVC-OUT > /dev/hvc0; sleep 1; done & \
read -r l < /dev/hvc0; echo HVC-GOT-$l; echo HVC-GOT-$l > /dev/hvc0; sleep 1";

/// Boots the guest kit with the virtio console in `console` mode (`pty`
/// or `socket=PATH`) and the serial port on stdout, checks `vm.info`
/// (`check_info`), opens the host end (`open`: reader and writer), then
/// checks both directions through it against [`HVC_SCRIPT`].
fn linux_hvc0(
    dir: &Scratch,
    console: &str,
    check_info: impl FnOnce(&Chv, &serde_json::Value),
    open: impl FnOnce(&Chv, &serde_json::Value) -> (Box<dyn Read + Send>, Box<dyn Write>),
) {
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let api = dir.path("api.sock");
    let api_arg = api.display().to_string();
    let mut chv = Chv::spawn(&kit.args(
        HVC_SCRIPT,
        &[
            "--memory",
            "size=256M",
            "--serial",
            "tty",
            "--console",
            console,
            "--api-socket",
            &api_arg,
        ],
    ));
    let v = vm_info(&chv, &api);
    check_info(&chv, &v);
    let (reader, mut writer) = open(&chv, &v);
    // Read on a thread: a pty has no read timeout.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = reader;
        let mut buf = [0u8; 1024];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    // Linux boots in 40-60 s here.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut text = Vec::new();
    let mut last_sent: Option<Instant> = None;
    loop {
        let seen = String::from_utf8_lossy(&text).into_owned();
        if seen.contains("HVC-GOT-hello-hvc") && chv.stdout().contains("HVC-GOT-hello-hvc") {
            break;
        }
        if Instant::now() > deadline || chv.stdout().contains("Kernel panic") {
            chv.fail(&format!("no HVC-GOT-hello-hvc; the console got {seen:?}"));
        }
        // Once the guest writes, type a line; again every 2 s in case the
        // first one came before the shell opened hvc0 for reading.
        if seen.contains("HVC-OUT")
            && last_sent.is_none_or(|t| t.elapsed() > Duration::from_secs(2))
        {
            writer.write_all(b"hello-hvc\n").unwrap();
            last_sent = Some(Instant::now());
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(bytes) => text.extend(bytes),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => chv.fail(&format!("the console's host end closed; got {seen:?}")),
        }
    }
    let seen = String::from_utf8_lossy(&text).into_owned();
    // hvc0 is a tty: its default `onlcr` turns \n into \r\n.
    chv.check(
        seen.contains("HVC-OUT\r\n"),
        &format!("console got {seen:?}"),
    );
    chv.check(
        !chv.stdout().contains("HVC-OUT"),
        "hvc0 output leaked to stdout",
    );
    let st = chv.expect_exit(Duration::from_secs(60));
    chv.assert_no_panic();
    chv.check(st.success(), &format!("chv exited with {st}"));
}

#[test]
fn virtio_console_socket_mode_carries_linux_hvc0() {
    let dir = Scratch::new("vcon-sock-linux");
    let path = dir.path("hvc0.sock");
    linux_hvc0(
        &dir,
        &format!("socket={}", path.display()),
        |chv, v| {
            let want = path.display().to_string();
            chv.check(
                v["config"]["console"]["mode"] == "Socket"
                    && v["config"]["console"]["socket"] == want.as_str(),
                &format!("console in vm.info: {v}"),
            );
            chv.check(v["config"]["serial"]["mode"] == "Tty", &v.to_string());
        },
        |chv, _| {
            let stream = chv.connect_unix(&path, TIMEOUT);
            (Box::new(stream.try_clone().unwrap()), Box::new(stream))
        },
    );
}

#[test]
fn virtio_console_pty_mode_is_reported_in_vm_info_and_carries_linux_hvc0() {
    linux_hvc0(
        &Scratch::new("vcon-pty-linux"),
        "pty",
        |chv, v| {
            chv.check(v["config"]["console"]["mode"] == "Pty", &v.to_string());
            let path = v["config"]["console"]["file"].as_str().unwrap_or("");
            chv.check(path.starts_with("/dev/pts/"), &format!("pty path: {v}"));
            // The serial port keeps its own mode and has no pty.
            chv.check(
                v["config"]["serial"]["mode"] == "Tty" && v["config"]["serial"]["file"].is_null(),
                &format!("serial in vm.info: {v}"),
            );
        },
        |_, v| {
            let path = v["config"]["console"]["file"].as_str().unwrap();
            let pty = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            (Box::new(pty.try_clone().unwrap()), Box::new(pty))
        },
    );
}
