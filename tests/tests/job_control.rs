//! chv survives being stopped and continued (SIGSTOP/SIGCONT: a shell's
//! Ctrl-Z and `fg`, a freezer, a debugger attaching). The kernel resumes
//! each thread's interrupted poll or sleep with `restart_syscall`, which
//! every thread's seccomp list must allow.
//!
//! `stop_and_continue_keeps_every_thread_running` (tiny test guest): chv
//! with a socket serial console, a pty virtio console, a disk and the API
//! is stopped and continued three times; it is still running, the guest
//! keeps ticking and the API answers.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use chv_tests::api_client::http;
use chv_tests::{testguest, Chv, Scratch};

/// Reads what the serial socket gives within `window`.
fn read_for(stream: &mut UnixStream, window: Duration) -> String {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    while Instant::now() < deadline {
        if let Ok(n) = stream.read(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn stop_and_continue_keeps_every_thread_running() {
    let dir = Scratch::new("jobctl");
    let sock = dir.path("api.sock");
    let serial = dir.path("serial.sock");
    let disk = dir.path("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(8 << 20))
        .expect("disk image");
    let mut chv = Chv::spawn(&[
        "--kernel".to_string(),
        testguest().display().to_string(),
        "--cmdline".into(),
        "test=ticker".into(),
        "--memory".into(),
        "size=64M".into(),
        "--serial".into(),
        format!("socket={}", serial.display()),
        "--console".into(),
        "pty".into(),
        "--disk".into(),
        format!("path={}", disk.display()),
        "--api-socket".into(),
        sock.display().to_string(),
    ]);
    let (st, _) = http(&sock, "GET", "vmm.ping", None);
    chv.check(st == 200, "vmm.ping");
    let mut console = chv.connect_unix(&serial, Duration::from_secs(30));
    chv.check(
        read_for(&mut console, Duration::from_secs(2)).contains("TICK"),
        "no ticks on the serial socket",
    );
    for round in 1..=3 {
        chv.signal(libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(300));
        chv.signal(libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(1500));
        let exited = chv.wait_exit(Duration::from_millis(10)).is_some();
        chv.check(
            !exited,
            &format!("chv exited after SIGSTOP/SIGCONT (round {round})"),
        );
        let (st, body) = http(&sock, "GET", "vm.info", None);
        chv.check(
            st == 200 && body.contains("Running"),
            &format!("vm.info after round {round}: {st} {body}"),
        );
        chv.check(
            read_for(&mut console, Duration::from_secs(1)).contains("TICK"),
            &format!("the guest stopped ticking after round {round}"),
        );
    }
    let (st, _) = http(&sock, "PUT", "vmm.shutdown", None);
    chv.check(st == 204, "vmm.shutdown");
    let exit = chv.expect_exit(Duration::from_secs(30));
    chv.assert_no_panic();
    chv.check(
        !chv.stderr().contains("seccomp"),
        &format!("a seccomp report: {}", chv.stderr()),
    );
    chv.check(exit.success(), &format!("chv exited with {exit}"));
}
