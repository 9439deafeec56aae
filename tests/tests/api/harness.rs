//! chv processes, the serial file and chv-remote for the API tests.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use chv_tests::{chv_bin, count_occurrences, testguest, workspace_dir, Chv};

use crate::http::*;

/// Limit for anything the test guest should do.
pub(crate) const GUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped console must stay unchanged.
pub(crate) const STALL: Duration = Duration::from_millis(500);

// ---- chv processes, the serial file, chv-remote --------------------------

/// Starts an API-only chv (no VM) and waits until its socket accepts.
pub(crate) fn start_vmm(dir: &Scratch) -> (Chv, PathBuf) {
    let sock = dir.join("api.sock");
    let chv = Chv::spawn(&["--api-socket", &format!("path={}", sock.display()), "-v"]);
    wait_for_socket(&chv, &sock);
    (chv, sock)
}

pub(crate) fn wait_for_socket(chv: &Chv, sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(sock).is_err() {
        if Instant::now() > deadline {
            chv.fail(&format!("API socket {} never accepted", sock.display()));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A `VmConfig` booting the test guest's `ticker` scenario (1 vCPU, 64 MiB),
/// its serial console appended to `serial`.
pub(crate) fn ticker_config(serial: &Path) -> String {
    format!(
        r#"{{"cpus":{{"boot_vcpus":1,"max_vcpus":1}},"memory":{{"size":67108864}},"payload":{{"kernel":{},"cmdline":"test=ticker"}},"serial":{{"mode":"File","file":{}}},"console":{{"mode":"Off"}}}}"#,
        json_str(&testguest().display().to_string()),
        json_str(&serial.display().to_string())
    )
}

pub(crate) fn read_text(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

/// Waits until the text of `file` satisfies `pred`.
pub(crate) fn wait_file(
    chv: &Chv,
    file: &Path,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = read_text(file);
        if pred(&text) {
            return;
        }
        if Instant::now() > deadline {
            let tail = &text[text.len().saturating_sub(400)..];
            chv.fail(&format!(
                "timed out waiting for {what}; serial ends {tail:?}"
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that `file` does not change for `window`.
pub(crate) fn expect_stalled(chv: &Chv, file: &Path, window: Duration, what: &str) {
    let before = read_text(file);
    thread::sleep(window);
    let after = read_text(file);
    chv.check(
        before == after,
        &format!(
            "{what}: the serial output grew by {:?} within {window:?}",
            &after[before.len().min(after.len())..]
        ),
    );
}

/// Waits until `file` grows by at least `bytes`.
pub(crate) fn expect_growing(chv: &Chv, file: &Path, bytes: usize, what: &str) {
    let start = read_text(file).len();
    wait_file(chv, file, what, GUEST_TIMEOUT, |t| t.len() >= start + bytes);
}

/// The numbers of the `TICK <n>` lines after the last `TESTGUEST-START`.
pub(crate) fn ticks(text: &str) -> Vec<u64> {
    let run = text.rsplit("TESTGUEST-START").next().unwrap_or("");
    run.lines()
        .filter_map(|l| l.strip_prefix("TICK "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// `n` ticks in a row after the last start, numbered 0, 1, 2... exactly.
pub(crate) fn has_run_of_ticks(text: &str, n: usize) -> bool {
    let t = ticks(text);
    t.len() >= n && t.iter().enumerate().all(|(i, v)| *v == i as u64)
}

pub(crate) fn starts(text: &str) -> usize {
    count_occurrences(text.as_bytes(), b"TESTGUEST-START")
}

/// Waits for chv to exit after vmm.shutdown and checks it exited 0 cleanly.
pub(crate) fn expect_clean_exit(mut chv: Chv) {
    let st = chv.expect_exit(Duration::from_secs(20));
    chv.assert_no_panic();
    chv.check(
        st.code() == Some(0),
        &format!("chv exit status {st}, want 0"),
    );
}

/// The chv-remote binary (built next to chv once per test process).
pub(crate) fn remote_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(b) = std::env::var_os("CHV_REMOTE_BIN") {
            return PathBuf::from(b);
        }
        let chv = chv_bin();
        if std::env::var_os("CHV_NO_BUILD").is_none() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let out = Command::new(cargo)
                .args(["build", "-p", "vmm", "--bin", "chv-remote"])
                .current_dir(workspace_dir())
                .stdin(Stdio::null())
                .output()
                .expect("run cargo");
            assert!(
                out.status.success(),
                "building chv-remote failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let bin = chv.with_file_name("chv-remote");
        assert!(bin.is_file(), "no chv-remote at {}", bin.display());
        bin
    })
    .clone()
}

/// Runs `chv-remote --api-socket SOCK args...`: (exit code, stdout, stderr).
pub(crate) fn remote(sock: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(remote_bin())
        .arg("--api-socket")
        .arg(sock)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run chv-remote");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs chv-remote and checks that it succeeds; returns its stdout.
pub(crate) fn remote_ok(chv: &Chv, sock: &Path, args: &[&str]) -> String {
    let (code, out, err) = remote(sock, args);
    chv.check(
        code == 0 && err.is_empty(),
        &format!("chv-remote {args:?}: exit {code}, stdout {out:?}, stderr {err:?}"),
    );
    out
}

/// Runs chv-remote and checks that it fails (exit 1) mentioning `status`.
pub(crate) fn remote_err(chv: &Chv, sock: &Path, args: &[&str], status: &str) {
    let (code, out, err) = remote(sock, args);
    chv.check(
        code == 1 && out.is_empty() && err.contains(status),
        &format!("chv-remote {args:?}: exit {code}, stdout {out:?}, stderr {err:?}; want exit 1 and {status:?}"),
    );
}
