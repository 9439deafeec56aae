//! The `Pty` and `Socket` console modes with the tiny test guest: the
//! guest's serial output reaches the host end, and a line typed there comes
//! back from the guest (`test=echo` reads COM1 and answers `ECHO <line>`).

use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use chv_tests::api_client::http;
use chv_tests::{testguest, Chv, Scratch};

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
