//! End-to-end tests of chv's REST API: real HTTP/1.1 requests over the real
//! `--api-socket` Unix socket of a real `chv` process (no mocks).
//!
//! Covers:
//! - the VM lifecycle with the tiny test guest (`test=ticker` prints
//!   `TICK <n>` every ~20 ms to a serial file): ping, create, boot, info,
//!   pause (the console stops), resume (it goes on where it stopped),
//!   counters, reboot, shutdown, boot again, delete, vmm.shutdown (exit 0),
//!   plus the state errors in between (409 boot twice, 405 pause twice...);
//! - the same lifecycle through the `chv-remote` client binary, and every
//!   command it shares with ch-remote in ch-remote's syntax;
//! - one real Linux boot (guest kit) created, paused and resumed over the API;
//! - bad requests (malformed, wrong types, too big, chunked, unknown paths,
//!   wrong methods, out-of-order actions) answered 4xx while chv keeps
//!   serving, and unknown keys ignored (as Cloud Hypervisor does); 200 clients connecting and dropping at once; clients
//!   vanishing mid-request;
//! - a schema-driven run of `api-server/openapi/chv.yaml` (every property
//!   of Cloud Hypervisor's schema) with schemathesis (`pip install
//!   schemathesis==4.32.5`) through a TCP-to-Unix forwarder, with the hooks
//!   of `tests/schemathesis/hooks.py`: every valid (positive) case is
//!   accepted, or refused naming a field of docs/compatibility.md's table;
//!   no server error except 501; chv survives. Skipped with a loud note
//!   only when the `st` command is missing (`CHV_ST` names it).
//!
//! `CHV_REMOTE_BIN` overrides the chv-remote binary (otherwise it is built
//! next to chv with `cargo build -p vmm --bin chv-remote` unless
//! `CHV_NO_BUILD=1`).

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use chv_tests::{chv_bin, count_occurrences, require_guest_kit, testguest, workspace_dir, Chv};

/// Limit for anything the test guest should do.
const GUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped console must stay unchanged.
const STALL: Duration = Duration::from_millis(500);

// ---- scratch directories -------------------------------------------------

/// A per-test scratch directory under /tmp, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/chv-api-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("test failed: kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ---- a minimal HTTP/1.1 client -------------------------------------------

/// One parsed HTTP response.
#[derive(Debug, Clone)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Json {
        parse_json(&self.body).unwrap_or_else(|e| panic!("bad JSON {:?}: {e}", self.body))
    }
}

/// Cuts one response off the front of `buf`: `(response, bytes used)`, or
/// `None` if it is incomplete. Bodies are framed by Content-Length only
/// (chv never sends chunked responses).
fn parse_response(buf: &[u8]) -> Option<(Response, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end - 4]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    if buf.len() < end + len {
        return None;
    }
    let body = String::from_utf8_lossy(&buf[end..end + len]).into_owned();
    Some((
        Response {
            status,
            headers,
            body,
        },
        end + len,
    ))
}

/// Reads until EOF. A reset after data was received counts as EOF: Linux
/// resets a Unix socket whose peer closed with unread input (which is what a
/// server refusing an oversized request does).
fn read_all(stream: &mut UnixStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset && !buf.is_empty() => return buf,
            Err(e) => panic!("reading the API response failed: {e} (got {buf:?})"),
        }
    }
}

/// Sends `raw` bytes on a new connection (write errors ignored: the server
/// may refuse early and close) and returns every response until EOF.
fn exchange(sock: &Path, raw: &[u8]) -> Vec<Response> {
    let mut s = UnixStream::connect(sock).expect("connect to the API socket");
    s.set_write_timeout(Some(Duration::from_secs(30)))
        .expect("write timeout");
    let _ = s.write_all(raw);
    let buf = read_all(&mut s);
    let mut out = Vec::new();
    let mut rest = &buf[..];
    while let Some((r, used)) = parse_response(rest) {
        out.push(r);
        rest = &rest[used..];
    }
    assert!(rest.is_empty(), "unparsable response bytes: {rest:?}");
    out
}

/// One request with `Connection: close`; exactly one response expected.
fn raw_one(sock: &Path, raw: &[u8]) -> Response {
    let mut rs = exchange(sock, raw);
    assert_eq!(rs.len(), 1, "want one response to {raw:?}, got {rs:?}");
    rs.remove(0)
}

fn request(sock: &Path, method: &str, endpoint: &str, body: Option<&str>) -> Response {
    let body = body.unwrap_or("");
    let mut raw =
        format!("{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if !body.is_empty() {
        raw.push_str("Content-Type: application/json\r\n");
    }
    raw.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    raw_one(sock, raw.as_bytes())
}

fn get(sock: &Path, endpoint: &str) -> Response {
    request(sock, "GET", endpoint, None)
}

fn put(sock: &Path, endpoint: &str, body: Option<&str>) -> Response {
    request(sock, "PUT", endpoint, body)
}

/// Asserts the status of `r`, failing with chv's output on a mismatch.
fn expect_status(chv: &Chv, what: &str, r: &Response, status: u16) {
    chv.check(
        r.status == status,
        &format!("{what}: got {} {:?}, want {status}", r.status, r.body),
    );
}

/// `vm.info`'s state field.
fn vm_state(chv: &Chv, sock: &Path) -> String {
    let r = get(sock, "vm.info");
    expect_status(chv, "vm.info", &r, 200);
    match r.json().get("state") {
        Some(Json::Str(s)) => s.clone(),
        other => chv.fail(&format!("vm.info state is {other:?}: {}", r.body)),
    }
}

// ---- a minimal JSON reader (no serde_json in this crate) ---------------

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

fn parse_json(text: &str) -> Result<Json, String> {
    let b = text.as_bytes();
    let mut i = 0;
    let v = json_value(b, &mut i)?;
    json_ws(b, &mut i);
    if i != b.len() {
        return Err(format!("trailing data at {i}"));
    }
    Ok(v)
}

fn json_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

fn json_lit(b: &[u8], i: &mut usize, lit: &str, v: Json) -> Result<Json, String> {
    if b[*i..].starts_with(lit.as_bytes()) {
        *i += lit.len();
        Ok(v)
    } else {
        Err(format!("bad literal at {i}"))
    }
}

fn json_value(b: &[u8], i: &mut usize) -> Result<Json, String> {
    json_ws(b, i);
    match b.get(*i).copied() {
        Some(b'{') => {
            *i += 1;
            let mut m = Vec::new();
            json_ws(b, i);
            if b.get(*i) == Some(&b'}') {
                *i += 1;
                return Ok(Json::Obj(m));
            }
            loop {
                json_ws(b, i);
                let Json::Str(k) = json_value(b, i)? else {
                    return Err(format!("object key expected at {i}"));
                };
                json_ws(b, i);
                if b.get(*i) != Some(&b':') {
                    return Err(format!("':' expected at {i}"));
                }
                *i += 1;
                m.push((k, json_value(b, i)?));
                json_ws(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b'}') => {
                        *i += 1;
                        return Ok(Json::Obj(m));
                    }
                    _ => return Err(format!("',' or '}}' expected at {i}")),
                }
            }
        }
        Some(b'[') => {
            *i += 1;
            let mut a = Vec::new();
            json_ws(b, i);
            if b.get(*i) == Some(&b']') {
                *i += 1;
                return Ok(Json::Arr(a));
            }
            loop {
                a.push(json_value(b, i)?);
                json_ws(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b']') => {
                        *i += 1;
                        return Ok(Json::Arr(a));
                    }
                    _ => return Err(format!("',' or ']' expected at {i}")),
                }
            }
        }
        Some(b'"') => {
            *i += 1;
            let mut s = String::new();
            loop {
                let c = *b.get(*i).ok_or("unterminated string")?;
                *i += 1;
                match c {
                    b'"' => return Ok(Json::Str(s)),
                    b'\\' => {
                        let e = *b.get(*i).ok_or("unterminated escape")?;
                        *i += 1;
                        match e {
                            b'u' => {
                                let hex = b.get(*i..*i + 4).ok_or("short \\u")?;
                                let hex = std::str::from_utf8(hex).map_err(|e| e.to_string())?;
                                let cp = u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                                *i += 4;
                                s.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
                            }
                            b'n' => s.push('\n'),
                            b't' => s.push('\t'),
                            b'r' => s.push('\r'),
                            b'b' => s.push('\u{8}'),
                            b'f' => s.push('\u{c}'),
                            b'"' | b'\\' | b'/' => s.push(e as char),
                            _ => return Err(format!("bad escape at {i}")),
                        }
                    }
                    _ => {
                        // Copy one whole UTF-8 sequence.
                        let start = *i - 1;
                        let mut end = *i;
                        while end < b.len() && (b[end] & 0xc0) == 0x80 {
                            end += 1;
                        }
                        s.push_str(&String::from_utf8_lossy(&b[start..end]));
                        *i = end;
                    }
                }
            }
        }
        Some(b't') => json_lit(b, i, "true", Json::Bool(true)),
        Some(b'f') => json_lit(b, i, "false", Json::Bool(false)),
        Some(b'n') => json_lit(b, i, "null", Json::Null),
        Some(c) if c == b'-' || c.is_ascii_digit() => {
            let start = *i;
            while *i < b.len() && matches!(b[*i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                *i += 1;
            }
            let t = std::str::from_utf8(&b[start..*i]).map_err(|e| e.to_string())?;
            t.parse().map(Json::Num).map_err(|e| format!("{t:?}: {e}"))
        }
        _ => Err(format!("value expected at {i}")),
    }
}

/// `s` as a JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---- chv processes, the serial file, chv-remote --------------------------

/// Starts an API-only chv (no VM) and waits until its socket accepts.
fn start_vmm(dir: &Scratch) -> (Chv, PathBuf) {
    let sock = dir.join("api.sock");
    let chv = Chv::spawn(&["--api-socket", &format!("path={}", sock.display()), "-v"]);
    wait_for_socket(&chv, &sock);
    (chv, sock)
}

fn wait_for_socket(chv: &Chv, sock: &Path) {
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
fn ticker_config(serial: &Path) -> String {
    format!(
        r#"{{"cpus":{{"boot_vcpus":1,"max_vcpus":1}},"memory":{{"size":67108864}},"payload":{{"kernel":{},"cmdline":"test=ticker"}},"serial":{{"mode":"File","file":{}}},"console":{{"mode":"Off"}}}}"#,
        json_str(&testguest().display().to_string()),
        json_str(&serial.display().to_string())
    )
}

fn read_text(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

/// Waits until the text of `file` satisfies `pred`.
fn wait_file(chv: &Chv, file: &Path, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) {
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
fn expect_stalled(chv: &Chv, file: &Path, window: Duration, what: &str) {
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
fn expect_growing(chv: &Chv, file: &Path, bytes: usize, what: &str) {
    let start = read_text(file).len();
    wait_file(chv, file, what, GUEST_TIMEOUT, |t| t.len() >= start + bytes);
}

/// The numbers of the `TICK <n>` lines after the last `TESTGUEST-START`.
fn ticks(text: &str) -> Vec<u64> {
    let run = text.rsplit("TESTGUEST-START").next().unwrap_or("");
    run.lines()
        .filter_map(|l| l.strip_prefix("TICK "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// `n` ticks in a row after the last start, numbered 0, 1, 2... exactly.
fn has_run_of_ticks(text: &str, n: usize) -> bool {
    let t = ticks(text);
    t.len() >= n && t.iter().enumerate().all(|(i, v)| *v == i as u64)
}

fn starts(text: &str) -> usize {
    count_occurrences(text.as_bytes(), b"TESTGUEST-START")
}

/// Waits for chv to exit after vmm.shutdown and checks it exited 0 cleanly.
fn expect_clean_exit(mut chv: Chv) {
    let st = chv.expect_exit(Duration::from_secs(20));
    chv.assert_no_panic();
    chv.check(
        st.code() == Some(0),
        &format!("chv exit status {st}, want 0"),
    );
}

/// The chv-remote binary (built next to chv once per test process).
fn remote_bin() -> PathBuf {
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
fn remote(sock: &Path, args: &[&str]) -> (i32, String, String) {
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
fn remote_ok(chv: &Chv, sock: &Path, args: &[&str]) -> String {
    let (code, out, err) = remote(sock, args);
    chv.check(
        code == 0 && err.is_empty(),
        &format!("chv-remote {args:?}: exit {code}, stdout {out:?}, stderr {err:?}"),
    );
    out
}

/// Runs chv-remote and checks that it fails (exit 1) mentioning `status`.
fn remote_err(chv: &Chv, sock: &Path, args: &[&str], status: &str) {
    let (code, out, err) = remote(sock, args);
    chv.check(
        code == 1 && out.is_empty() && err.contains(status),
        &format!("chv-remote {args:?}: exit {code}, stdout {out:?}, stderr {err:?}; want exit 1 and {status:?}"),
    );
}

// ---- the tests -----------------------------------------------------------

#[test]
fn lifecycle_with_test_guest() {
    let dir = Scratch::new("life");
    let serial = dir.join("serial.log");
    let (chv, sock) = start_vmm(&dir);

    let r = get(&sock, "vmm.ping");
    expect_status(&chv, "vmm.ping", &r, 200);
    chv.check(
        r.header("content-type") == Some("application/json"),
        &format!("vmm.ping content type {:?}", r.header("content-type")),
    );
    let ping = r.json();
    chv.check(
        matches!(ping.get("version"), Some(Json::Str(v)) if !v.is_empty()),
        &format!("vmm.ping has no version: {}", r.body),
    );
    chv.check(
        ping.get("pid") == Some(&Json::Num(f64::from(chv.pid()))),
        &format!("vmm.ping pid is not {}: {}", chv.pid(), r.body),
    );
    expect_status(&chv, "vm.info before create", &get(&sock, "vm.info"), 404);

    let config = ticker_config(&serial);
    expect_status(
        &chv,
        "vm.create",
        &put(&sock, "vm.create", Some(&config)),
        204,
    );
    chv.check(vm_state(&chv, &sock) == "Created", "state after create");
    chv.check(!serial.exists(), "the guest must not run before vm.boot");
    expect_status(&chv, "vm.boot", &put(&sock, "vm.boot", None), 204);
    wait_file(&chv, &serial, "5 ticks", GUEST_TIMEOUT, |t| {
        has_run_of_ticks(t, 5)
    });
    chv.check(vm_state(&chv, &sock) == "Running", "state after boot");
    expect_status(
        &chv,
        "vm.boot while running",
        &put(&sock, "vm.boot", None),
        409,
    );
    expect_status(
        &chv,
        "vm.resume while running",
        &put(&sock, "vm.resume", None),
        405,
    );

    // Pause: nothing more reaches the console; resume continues the count.
    expect_status(&chv, "vm.pause", &put(&sock, "vm.pause", None), 204);
    expect_stalled(&chv, &serial, STALL, "after vm.pause");
    chv.check(vm_state(&chv, &sock) == "Paused", "state after pause");
    expect_status(&chv, "vm.pause twice", &put(&sock, "vm.pause", None), 405);
    expect_stalled(&chv, &serial, Duration::from_millis(100), "still paused");
    let last = ticks(&read_text(&serial)).last().copied().unwrap_or(0);
    expect_status(&chv, "vm.resume", &put(&sock, "vm.resume", None), 204);
    chv.check(vm_state(&chv, &sock) == "Running", "state after resume");
    wait_file(&chv, &serial, "ticks after resume", GUEST_TIMEOUT, |t| {
        ticks(t).last().is_some_and(|n| *n >= last + 3)
    });
    let text = read_text(&serial);
    chv.check(
        starts(&text) == 1,
        "the guest restarted across pause/resume",
    );
    chv.check(
        ticks(&text).windows(2).all(|w| w[1] == w[0] + 1),
        "ticks are not consecutive across pause/resume",
    );

    let r = get(&sock, "vm.counters");
    expect_status(&chv, "vm.counters", &r, 200);
    chv.check(
        matches!(r.json(), Json::Obj(_)),
        &format!("vm.counters: {}", r.body),
    );

    // Reboot: the guest starts over.
    expect_status(&chv, "vm.reboot", &put(&sock, "vm.reboot", None), 204);
    wait_file(&chv, &serial, "second start", GUEST_TIMEOUT, |t| {
        starts(t) == 2 && has_run_of_ticks(t, 3)
    });
    chv.check(vm_state(&chv, &sock) == "Running", "state after reboot");

    // Shutdown: the VM stops, the VMM stays; it can boot again.
    expect_status(&chv, "vm.shutdown", &put(&sock, "vm.shutdown", None), 204);
    expect_stalled(&chv, &serial, STALL, "after vm.shutdown");
    chv.check(vm_state(&chv, &sock) == "Created", "state after shutdown");
    expect_status(
        &chv,
        "vm.pause when shut down",
        &put(&sock, "vm.pause", None),
        405,
    );
    expect_status(&chv, "vm.boot again", &put(&sock, "vm.boot", None), 204);
    wait_file(&chv, &serial, "third start", GUEST_TIMEOUT, |t| {
        starts(t) == 3 && has_run_of_ticks(t, 3)
    });
    chv.check(
        vm_state(&chv, &sock) == "Running",
        "state after second boot",
    );

    // Delete (while running) stops the guest and forgets the config.
    expect_status(&chv, "vm.delete", &put(&sock, "vm.delete", None), 204);
    expect_stalled(&chv, &serial, STALL, "after vm.delete");
    expect_status(&chv, "vm.info after delete", &get(&sock, "vm.info"), 404);
    expect_status(
        &chv,
        "vm.boot after delete",
        &put(&sock, "vm.boot", None),
        404,
    );
    expect_status(
        &chv,
        "vm.counters after delete",
        &get(&sock, "vm.counters"),
        404,
    );
    expect_status(&chv, "ping after delete", &get(&sock, "vmm.ping"), 200);

    expect_status(&chv, "vmm.shutdown", &put(&sock, "vmm.shutdown", None), 204);
    expect_clean_exit(chv);
}

#[test]
fn lifecycle_with_chv_remote() {
    let dir = Scratch::new("remote");
    let serial = dir.join("serial.log");
    let config_file = dir.join("vm.json");
    std::fs::write(&config_file, ticker_config(&serial)).expect("write config");
    let config_arg = config_file.display().to_string();
    let (chv, sock) = start_vmm(&dir);

    let out = remote_ok(&chv, &sock, &["ping"]);
    let ping = parse_json(out.trim()).unwrap_or_else(|e| chv.fail(&format!("ping {out:?}: {e}")));
    chv.check(
        ping.get("pid") == Some(&Json::Num(f64::from(chv.pid()))),
        &format!("chv-remote ping: {out}"),
    );
    remote_err(&chv, &sock, &["info"], "404");
    remote_err(&chv, &sock, &["boot"], "404");
    remote_err(
        &chv,
        &sock,
        &["create", "/nonexistent/vm.json"],
        "cannot read",
    );

    chv.check(
        remote_ok(&chv, &sock, &["create", &config_arg]).is_empty(),
        "create prints nothing",
    );
    remote_err(&chv, &sock, &["create", &config_arg], "409");
    chv.check(
        remote_ok(&chv, &sock, &["boot"]).is_empty(),
        "boot prints nothing",
    );
    wait_file(&chv, &serial, "5 ticks", GUEST_TIMEOUT, |t| {
        has_run_of_ticks(t, 5)
    });
    let info = |chv: &Chv| {
        let out = remote_ok(chv, &sock, &["info"]);
        match parse_json(out.trim())
            .ok()
            .and_then(|j| j.get("state").cloned())
        {
            Some(Json::Str(s)) => s,
            _ => chv.fail(&format!("chv-remote info printed {out:?}")),
        }
    };
    chv.check(info(&chv) == "Running", "info after boot");

    remote_ok(&chv, &sock, &["pause"]);
    expect_stalled(&chv, &serial, STALL, "after chv-remote pause");
    chv.check(info(&chv) == "Paused", "info after pause");
    remote_err(&chv, &sock, &["pause"], "405");
    remote_ok(&chv, &sock, &["resume"]);
    expect_growing(&chv, &serial, 20, "ticks after chv-remote resume");
    remote_err(&chv, &sock, &["resume"], "405");

    let out = remote_ok(&chv, &sock, &["counters"]);
    chv.check(
        matches!(parse_json(out.trim()), Ok(Json::Obj(_))),
        &format!("chv-remote counters printed {out:?}"),
    );

    remote_ok(&chv, &sock, &["reboot"]);
    wait_file(&chv, &serial, "second start", GUEST_TIMEOUT, |t| {
        starts(t) == 2 && has_run_of_ticks(t, 3)
    });
    remote_ok(&chv, &sock, &["shutdown"]);
    expect_stalled(&chv, &serial, STALL, "after chv-remote shutdown");
    chv.check(info(&chv) == "Created", "info after shutdown");
    remote_ok(&chv, &sock, &["delete"]);
    remote_err(&chv, &sock, &["info"], "404");
    remote_ok(&chv, &sock, &["ping"]);

    chv.check(
        remote_ok(&chv, &sock, &["shutdown-vmm"]).is_empty(),
        "shutdown-vmm prints nothing",
    );
    expect_clean_exit(chv);
    let (code, _, err) = remote(&sock, &["ping"]);
    assert!(
        code == 1 && err.contains("cannot connect"),
        "ping after exit: {code} {err:?}"
    );
}

#[test]
fn linux_lifecycle() {
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let dir = Scratch::new("linux");
    let serial = dir.join("serial.log");
    let (chv, sock) = start_vmm(&dir);
    let guest_cmd = "i=0; while [ $i -lt 3000 ]; do echo LOOP $i; i=$((i+1)); sleep 0.2; done";
    let cmdline = format!("console=ttyS0 quiet panic=-1 guest_cmd=\"{guest_cmd}\"");
    let config = format!(
        r#"{{"cpus":{{"boot_vcpus":1,"max_vcpus":1}},"memory":{{"size":134217728}},"payload":{{"kernel":{},"initramfs":{},"cmdline":{}}},"serial":{{"mode":"File","file":{}}},"console":{{"mode":"Off"}}}}"#,
        json_str(&kit.kernel.display().to_string()),
        json_str(&kit.initramfs.display().to_string()),
        json_str(&cmdline),
        json_str(&serial.display().to_string())
    );
    expect_status(
        &chv,
        "vm.create",
        &put(&sock, "vm.create", Some(&config)),
        204,
    );
    expect_status(&chv, "vm.boot", &put(&sock, "vm.boot", None), 204);
    let loop_lines = |t: &str| t.lines().filter(|l| l.starts_with("LOOP ")).count();
    wait_file(&chv, &serial, "LOOP 2", Duration::from_secs(240), |t| {
        assert!(!t.contains("Kernel panic"), "guest panicked:\n{t}");
        loop_lines(t) >= 3
    });
    eprintln!("linux: loop running after {:.1?}", chv.elapsed());
    expect_status(&chv, "ping while Linux runs", &get(&sock, "vmm.ping"), 200);

    expect_status(&chv, "vm.pause", &put(&sock, "vm.pause", None), 204);
    chv.check(vm_state(&chv, &sock) == "Paused", "state after pause");
    expect_stalled(&chv, &serial, Duration::from_secs(2), "paused Linux");
    let before = loop_lines(&read_text(&serial));
    expect_status(&chv, "vm.resume", &put(&sock, "vm.resume", None), 204);
    wait_file(
        &chv,
        &serial,
        "LOOP lines after resume",
        Duration::from_secs(60),
        |t| loop_lines(t) >= before + 3,
    );
    chv.check(vm_state(&chv, &sock) == "Running", "state after resume");
    let r = get(&sock, "vm.counters");
    expect_status(&chv, "vm.counters", &r, 200);

    expect_status(&chv, "vm.shutdown", &put(&sock, "vm.shutdown", None), 204);
    chv.check(vm_state(&chv, &sock) == "Created", "state after shutdown");
    expect_stalled(&chv, &serial, Duration::from_secs(1), "shut-down Linux");
    let text = read_text(&serial);
    chv.check(
        count_occurrences(text.as_bytes(), b"GUEST-READY") == 1,
        "Linux booted more than once",
    );
    expect_status(&chv, "vmm.shutdown", &put(&sock, "vmm.shutdown", None), 204);
    eprintln!("linux: chv stopped after {:.1?}", chv.elapsed());
    expect_clean_exit(chv);
}

#[test]
fn bad_requests_keep_the_vmm_serving() {
    let dir = Scratch::new("bad");
    let (chv, sock) = start_vmm(&dir);
    let ping_ok = |what: &str| {
        expect_status(
            &chv,
            &format!("ping after {what}"),
            &get(&sock, "vmm.ping"),
            200,
        )
    };
    let serial = dir.join("serial.log");
    let good = ticker_config(&serial);

    // Bodies the VMM must refuse.
    let bodies = [
        ("malformed JSON", "{\"payload\": {\"kernel\": "),
        ("not JSON", "kernel=/x"),
        ("empty body", ""),
        ("JSON array", "[1,2,3]"),
        (
            "memory size as string",
            r#"{"payload":{"kernel":"/k"},"memory":{"size":"64M"}}"#,
        ),
        (
            "negative vcpus",
            r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":-1,"max_vcpus":1}}"#,
        ),
        (
            "vcpus overflow",
            r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":300,"max_vcpus":300}}"#,
        ),
        (
            "zero vcpus",
            r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":0,"max_vcpus":1}}"#,
        ),
        (
            "bad serial mode",
            r#"{"payload":{"kernel":"/k"},"serial":{"mode":"Loud"}}"#,
        ),
        ("payload missing", r#"{"memory":{"size":67108864}}"#),
        ("trailing NUL", "{\"payload\":{\"kernel\":\"/k\"}}\u{0}"),
    ];
    for (what, body) in bodies {
        let r = put(&sock, "vm.create", Some(body));
        expect_status(&chv, &format!("vm.create with {what}"), &r, 400);
        chv.check(
            !r.body.is_empty(),
            &format!("{what}: 400 without a message"),
        );
    }
    let r = raw_one(
        &sock,
        b"PUT /api/v1/vm.create HTTP/1.1\r\nConnection: close\r\nContent-Length: 6\r\n\r\n{\xff\xfe}\x00\x01",
    );
    expect_status(&chv, "vm.create with binary body", &r, 400);
    expect_status(
        &chv,
        "vm.info after refused creates",
        &get(&sock, "vm.info"),
        404,
    );
    ping_ok("bad bodies");

    // Keys outside the schema are ignored, as Cloud Hypervisor ignores them.
    let mut unknown: serde_json::Value = serde_json::from_str(&good).expect("good config");
    unknown["frobnicate"] = 1.into();
    unknown["payload"]["bogus"] = true.into();
    expect_status(
        &chv,
        "vm.create with unknown keys",
        &put(&sock, "vm.create", Some(&unknown.to_string())),
        204,
    );
    let info = get(&sock, "vm.info");
    chv.check(
        info.status == 200 && !info.body.contains("frobnicate") && !info.body.contains("bogus"),
        &format!("vm.info after unknown keys: {} {}", info.status, info.body),
    );
    expect_status(&chv, "vm.delete", &put(&sock, "vm.delete", None), 204);

    // Actions in the wrong order.
    expect_status(
        &chv,
        "vm.boot before create",
        &put(&sock, "vm.boot", None),
        404,
    );
    expect_status(
        &chv,
        "vm.pause before create",
        &put(&sock, "vm.pause", None),
        404,
    );
    expect_status(
        &chv,
        "vm.resume before create",
        &put(&sock, "vm.resume", None),
        404,
    );
    expect_status(
        &chv,
        "vm.shutdown before create",
        &put(&sock, "vm.shutdown", None),
        404,
    );
    expect_status(
        &chv,
        "vm.reboot before create",
        &put(&sock, "vm.reboot", None),
        404,
    );
    expect_status(
        &chv,
        "vm.counters before create",
        &get(&sock, "vm.counters"),
        404,
    );
    expect_status(
        &chv,
        "vm.delete without a VM",
        &put(&sock, "vm.delete", None),
        204,
    );
    expect_status(
        &chv,
        "vm.create",
        &put(&sock, "vm.create", Some(&good)),
        204,
    );
    expect_status(
        &chv,
        "vm.create twice",
        &put(&sock, "vm.create", Some(&good)),
        409,
    );
    let r = put(&sock, "vm.pause", None);
    chv.check(
        matches!(r.status, 404 | 405),
        &format!(
            "vm.pause of a created, not booted VM: {} {:?}",
            r.status, r.body
        ),
    );
    expect_status(
        &chv,
        "vm.resume when not booted",
        &put(&sock, "vm.resume", None),
        r.status,
    );
    chv.check(
        vm_state(&chv, &sock) == "Created",
        "state after refused actions",
    );
    expect_status(&chv, "vm.delete", &put(&sock, "vm.delete", None), 204);
    chv.check(!serial.exists(), "no guest may have run");

    // Routing and methods.
    for path in [
        "/api/v1/vm.bogus",
        "/api/v1/",
        "/",
        "/api/v2/vmm.ping",
        "/api/v1/vmm.ping/x",
    ] {
        let r = raw_one(
            &sock,
            format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        expect_status(&chv, &format!("GET {path}"), &r, 404);
    }
    for (method, endpoint, allow) in [
        ("GET", "vm.create", "PUT"),
        ("POST", "vm.boot", "PUT"),
        ("PUT", "vmm.ping", "GET"),
        ("DELETE", "vm.info", "GET"),
        ("BREW", "vm.info", "GET"),
    ] {
        let r = request(&sock, method, endpoint, None);
        expect_status(&chv, &format!("{method} {endpoint}"), &r, 405);
        chv.check(
            r.header("allow") == Some(allow),
            &format!("{method} {endpoint}: Allow {:?}", r.header("allow")),
        );
    }
    expect_status(&chv, "vm.nmi", &put(&sock, "vm.nmi", Some("{}")), 501);
    // Served endpoints whose body misses a required field: 400 naming it.
    for (endpoint, field) in [("vm.coredump", "destination_url"), ("vm.add-vdpa", "path")] {
        let r = put(&sock, endpoint, Some("{}"));
        expect_status(&chv, endpoint, &r, 400);
        chv.check(
            r.body.contains(field),
            &format!("{endpoint}: {} does not name {field}", r.body),
        );
    }
    ping_ok("routing errors");

    // Framing errors.
    let mut big = b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n".to_vec();
    big.extend((0..1usize << 20).map(|i| (i * 7919 % 251) as u8));
    expect_status(&chv, "1 MiB body", &raw_one(&sock, &big), 413);
    let garbage: Vec<u8> = (0..1usize << 20).map(|i| (i * 31 % 256) as u8).collect();
    let r = raw_one(&sock, &garbage);
    chv.check(
        matches!(r.status, 400 | 431),
        &format!("1 MiB of garbage: {}", r.status),
    );
    let r = raw_one(
        &sock,
        b"PUT /api/v1/vm.create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    );
    expect_status(&chv, "chunked body", &r, 411);
    let r = raw_one(
        &sock,
        b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    );
    expect_status(&chv, "negative Content-Length", &r, 400);
    let mut long = b"GET /api/v1/vmm.ping HTTP/1.1\r\nX-Long: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 100_000));
    long.extend_from_slice(b"\r\n\r\n");
    expect_status(&chv, "100 kB header", &raw_one(&sock, &long), 431);
    ping_ok("framing errors");

    // Keep-alive: pipelined requests are answered in order on one connection.
    let rs = exchange(
        &sock,
        b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\nGET /api/v1/vm.info HTTP/1.1\r\n\r\nGET /api/v1/vmm.ping HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    chv.check(
        statuses == [200, 404, 200],
        &format!("pipelined statuses {statuses:?}"),
    );

    // A client stalled mid-request does not block the others.
    let mut stalled = UnixStream::connect(&sock).expect("connect");
    stalled
        .write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    ping_ok("a stalled client");
    stalled
        .write_all(b"Connection: close\r\n\r\n")
        .expect("write");
    let rs = read_all(&mut stalled);
    chv.check(
        rs.starts_with(b"HTTP/1.1 200 "),
        "the stalled client got its answer",
    );

    // Clients that disconnect mid-request or without reading the answer.
    for raw in [
        &b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"payload\""[..],
        b"PUT /api/v1/vm.cre",
        b"GET /api/v1/vm.info HTTP/1.1\r\n\r\n",
        b"PUT /api/v1/vm.boot HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    ] {
        let mut s = UnixStream::connect(&sock).expect("connect");
        s.write_all(raw).expect("write");
        if raw.ends_with(b"\r\n\r\n") {
            let _ = s.shutdown(Shutdown::Write);
        }
        drop(s);
    }
    ping_ok("clients vanishing mid-request");

    // 200 clients connecting at once, some sending part of a request, all
    // dropped together; then 50 concurrent pings.
    let mut conns = Vec::new();
    for i in 0..200 {
        let mut s = UnixStream::connect(&sock).expect("connect");
        if i % 3 == 0 {
            let _ = s.write_all(b"GET /api/v1/vmm.pi");
        } else if i % 3 == 1 {
            let _ = s.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n");
        }
        conns.push(s);
    }
    drop(conns);
    let pingers: Vec<_> = (0..50)
        .map(|_| {
            let sock = sock.clone();
            thread::spawn(move || get(&sock, "vmm.ping").status)
        })
        .collect();
    let statuses: Vec<u16> = pingers
        .into_iter()
        .map(|h| h.join().expect("pinger"))
        .collect();
    chv.check(
        statuses.iter().all(|s| *s == 200),
        &format!("concurrent pings: {statuses:?}"),
    );
    ping_ok("200 dropped clients");

    expect_status(&chv, "vmm.shutdown", &put(&sock, "vmm.shutdown", None), 204);
    expect_clean_exit(chv);
}

/// Many clients sending large (valid-size) bodies at once, then closing:
/// the api thread's allocator returns the freed memory to the system, which
/// must not trip its seccomp filter (glibc's heap trimming reads
/// /proc/sys/vm/overcommit_memory the first time it shrinks a heap).
#[test]
fn many_large_bodies_then_disconnect() {
    let dir = Scratch::new("bodies");
    let (chv, sock) = start_vmm(&dir);
    for round in 0..3 {
        let mut conns = Vec::new();
        for i in 0..30 {
            let n = 2000 * (i + 1);
            let mut s = UnixStream::connect(&sock).expect("connect");
            let mut req = format!("PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: {n}\r\n\r\n")
                .into_bytes();
            req.extend(std::iter::repeat_n(b'x', n));
            s.write_all(&req).expect("write");
            conns.push(s);
        }
        thread::sleep(Duration::from_millis(100));
        let r = get(&sock, "vmm.ping");
        expect_status(
            &chv,
            &format!("ping with 30 big requests (round {round})"),
            &r,
            200,
        );
        drop(conns);
        thread::sleep(Duration::from_millis(100));
        if UnixStream::connect(&sock).is_err() {
            chv.fail(&format!(
                "chv died after 30 clients with big bodies closed (round {round})"
            ));
        }
        let r = get(&sock, "vmm.ping");
        expect_status(
            &chv,
            &format!("ping after the clients left (round {round})"),
            &r,
            200,
        );
    }
    expect_status(&chv, "vmm.shutdown", &put(&sock, "vmm.shutdown", None), 204);
    expect_clean_exit(chv);
}

// ---- schema-driven fuzzing with schemathesis ------------------------------

/// One request/response pair seen by the forwarder.
#[derive(Debug, Clone)]
struct Seen {
    request: String,
    status: u16,
    body: String,
}

/// Splits complete HTTP messages off `buf`; returns their first lines
/// (requests) or parsed responses, framing bodies by Content-Length.
fn next_head(buf: &[u8]) -> Option<(String, usize, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0usize);
    Some((head.lines().next().unwrap_or("").to_string(), end, len))
}

/// Accepts TCP clients on 127.0.0.1 and pipes each to a new connection to
/// the Unix socket, recording every request line and the response status.
fn forwarder(sock: PathBuf, log: Arc<Mutex<Vec<Seen>>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind forwarder");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let Ok(unix) = UnixStream::connect(&sock) else {
                continue;
            };
            let pending = Arc::new(Mutex::new(VecDeque::new()));
            let (mut tcp_in, mut unix_out) = (
                tcp.try_clone().expect("clone"),
                unix.try_clone().expect("clone"),
            );
            let p = pending.clone();
            thread::spawn(move || {
                pipe(&mut tcp_in, &mut unix_out, |line, _| {
                    p.lock().unwrap().push_back(line)
                })
            });
            let (mut unix_in, mut tcp_out): (UnixStream, TcpStream) = (unix, tcp);
            let log = log.clone();
            thread::spawn(move || {
                pipe(&mut unix_in, &mut tcp_out, |line, body| {
                    let status = line
                        .split(' ')
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    if status != 100 {
                        let request = pending
                            .lock()
                            .unwrap()
                            .pop_front()
                            .unwrap_or_else(|| "(unframed request)".to_string());
                        log.lock().unwrap().push(Seen {
                            request,
                            status,
                            body,
                        });
                    }
                })
            });
        }
    });
    port
}

/// Copies `from` to `to` until EOF, calling `seen` with the first line and
/// body of every complete HTTP message that passes.
fn pipe<R: Read, W: Write + ShutdownWrite>(
    from: &mut R,
    to: &mut W,
    mut seen: impl FnMut(String, String),
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Record before forwarding, so a request is always logged before
        // the other direction can see its response.
        buf.extend_from_slice(&chunk[..n]);
        while let Some((line, head, len)) = next_head(&buf) {
            let status = line
                .starts_with("HTTP/")
                .then(|| line.split(' ').nth(1))
                .flatten();
            let len = if matches!(status, Some("100" | "204")) {
                0
            } else {
                len
            };
            if buf.len() < head + len {
                break;
            }
            seen(
                line,
                String::from_utf8_lossy(&buf[head..head + len]).into_owned(),
            );
            buf.drain(..head + len);
        }
        if to.write_all(&chunk[..n]).is_err() {
            break;
        }
    }
    to.shutdown_write();
}

/// Half-closing the write side of either socket type.
trait ShutdownWrite {
    fn shutdown_write(&mut self);
}
impl ShutdownWrite for UnixStream {
    fn shutdown_write(&mut self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}
impl ShutdownWrite for TcpStream {
    fn shutdown_write(&mut self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

#[test]
fn openapi_schema_fuzzing() {
    let st = std::env::var("CHV_ST").unwrap_or_else(|_| "st".to_string());
    if Command::new(&st).arg("--version").output().is_err() {
        eprintln!(
            "\n!!!!!!!!!!\n!!! SKIPPED openapi_schema_fuzzing: no `{st}` command. Install it with \
             `pip install schemathesis` (or set CHV_ST).\n!!!!!!!!!!\n"
        );
        return;
    }
    let dir = Scratch::new("schema");
    let sock = dir.join("api.sock");
    // chv runs in the scratch directory: fuzzed configs name relative files.
    let mut child = Command::new(chv_bin())
        .args(["--api-socket", &format!("path={}", sock.display()), "-vv"])
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("chv.out")).expect("out"))
        .stderr(std::fs::File::create(dir.join("chv.err")).expect("err"))
        .spawn()
        .expect("start chv");
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "chv's API socket never came up");
        thread::sleep(Duration::from_millis(20));
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let port = forwarder(sock.clone(), log.clone());
    let spec = workspace_dir().join("api-server/openapi/chv.yaml");
    // Files the hooks point the bodies' paths at.
    std::fs::File::create(dir.join("disk.img"))
        .and_then(|f| f.set_len(8 << 20))
        .expect("disk image");
    std::fs::File::create(dir.join("pmem.img"))
        .and_then(|f| f.set_len(4 << 20))
        .expect("pmem image");
    std::fs::write(dir.join("initrd"), b"initrd").expect("initrd");
    let refusals = dir.join("refusals.txt");
    let mut st_child = Command::new(&st)
        .arg("run")
        .arg(&spec)
        .args(["--url", &format!("http://127.0.0.1:{port}/api/v1")])
        // Positive cases must be accepted (chv_accepts_positive_cases, in
        // tests/schemathesis/hooks.py); no case may get a server error.
        .args([
            "--checks",
            "not_a_server_error,chv_accepts_positive_cases",
            "--max-examples",
            "20",
            "--seed",
            "1",
        ])
        .args([
            "--workers",
            "1",
            "--max-time",
            "120",
            "--request-timeout",
            "60",
        ])
        .args(["--exclude-path", "/vmm.shutdown"])
        // Receiving waits for a sending VMM (up to minutes), and sending
        // ends the VMM on success: neither suits random requests (the
        // golden-body tests drive both).
        .args(["--exclude-path", "/vm.receive-migration"])
        .args(["--exclude-path", "/vm.send-migration"])
        .arg("--report-dir")
        .arg(dir.join("report"))
        .env(
            "SCHEMATHESIS_HOOKS",
            workspace_dir().join("tests/schemathesis/hooks.py"),
        )
        .env("CHV_ST_SOCK", &sock)
        .env("CHV_ST_DIR", &dir.0)
        .env("CHV_ST_KERNEL", testguest())
        .env(
            "CHV_ST_COMPAT",
            workspace_dir().join("docs/compatibility.md"),
        )
        .env("CHV_ST_LOG", &refusals)
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("st.out")).expect("st out"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start schemathesis");
    let deadline = Instant::now() + Duration::from_secs(240);
    let st_status = loop {
        if let Some(s) = st_child.try_wait().expect("wait st") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = st_child.kill();
            let _ = st_child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let st_out = read_text(&dir.join("st.out"));
    let tail: String = st_out
        .lines()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("schemathesis exited {st_status:?}; output ends:\n{tail}");

    let seen = log.lock().unwrap().clone();
    let mut by_endpoint: BTreeMap<String, BTreeMap<u16, usize>> = BTreeMap::new();
    for s in &seen {
        let key = s.request.split(' ').take(2).collect::<Vec<_>>().join(" ");
        let key = key.split('?').next().unwrap_or("").to_string();
        *by_endpoint
            .entry(key)
            .or_default()
            .entry(s.status)
            .or_default() += 1;
    }
    eprintln!("{} requests through the forwarder:", seen.len());
    for (k, v) in &by_endpoint {
        eprintln!("  {k}: {v:?}");
    }
    let mut trace = String::new();
    for s in &seen {
        trace.push_str(&format!(
            "{} -> {} {}\n",
            s.request,
            s.status,
            s.body.trim()
        ));
    }
    std::fs::write(dir.join("seen.txt"), trace).expect("write seen.txt");
    if let Some(st) = child.try_wait().expect("wait chv") {
        let err = read_text(&dir.join("chv.err"));
        let last: Vec<_> = seen.iter().rev().take(10).collect();
        panic!("chv exited ({st}) during fuzzing; stderr:\n{err}\nlast requests: {last:#?}");
    }
    let alive = get(&sock, "vmm.ping").status;
    let server_errors: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.status >= 500 && s.status != 501)
        .collect();
    let unanswered: Vec<&Seen> = seen.iter().filter(|s| s.status == 0).collect();
    let shutdown = put(&sock, "vmm.shutdown", None).status;
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait chv") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let err = read_text(&dir.join("chv.err"));
    assert!(st_status.is_some(), "schemathesis did not finish in time");
    let mut accepted_refusals: BTreeMap<String, usize> = BTreeMap::new();
    for line in read_text(&refusals).lines() {
        *accepted_refusals.entry(line.to_string()).or_default() += 1;
    }
    eprintln!("valid cases refused by a documented field: {accepted_refusals:?}");
    assert!(
        st_status.is_some_and(|s| s.success()),
        "schemathesis found failures (a valid request refused, or a server error); \
         see the output above and {}",
        dir.join("st.out").display()
    );
    assert!(
        seen.len() >= 50,
        "too few fuzzed requests reached chv ({})",
        seen.len()
    );
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "chv stderr: {err}"
    );
    assert_eq!(
        alive, 200,
        "chv stopped answering ping after fuzzing; stderr: {err}"
    );
    assert!(
        unanswered.is_empty(),
        "malformed responses: {unanswered:#?}"
    );
    assert!(
        server_errors.is_empty(),
        "5xx other than 501: {server_errors:#?}"
    );
    assert_eq!(shutdown, 204, "vmm.shutdown after fuzzing");
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(0),
        "chv exit after fuzzing; stderr: {err}"
    );
}

/// Every command chv-remote shares with Cloud Hypervisor's ch-remote, in
/// ch-remote's syntax, against a real chv running the test guest: cold
/// adds (a tap fd passed as `fd=[N]` travels as SCM_RIGHTS), the refusals
/// naming their field, resize flags with sizes, boot, snapshot, restore
/// with `memory_restore_mode`, and a migration between two chv processes
/// with `destination_url=…,downtime_ms=…` / `receiver_url=…`.
#[test]
fn ch_remote_syntax_with_chv_remote() {
    use std::os::fd::AsRawFd;
    let dir = Scratch::new("chsyntax");
    let serial = dir.join("serial.log");
    let config_file = dir.join("vm.json");
    let config = ticker_config(&serial).replace(r#""max_vcpus":1"#, r#""max_vcpus":2"#);
    std::fs::write(&config_file, &config).expect("write config");
    let config_arg = config_file.display().to_string();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let (chv, sock) = start_vmm(&dir);
    let file = |name: &str| dir.join(name).display().to_string();

    // A created VM takes cold adds; what chv cannot honour is refused by name.
    remote_ok(&chv, &sock, &["create", &config_arg]);
    let tap = chv_tests::open_tap(&format!("chvr{}", std::process::id() % 100_000));
    remote_ok(
        &chv,
        &sock,
        &[
            "add-net",
            &format!("fd=[{}],mac=12:34:56:78:9a:bc", tap.as_raw_fd()),
        ],
    );
    let info = remote_ok(&chv, &sock, &["info"]);
    chv.check(
        info.contains("12:34:56:78:9a:bc"),
        &format!("the cold-added NIC is not in vm.info: {info}"),
    );
    remote_ok(&chv, &sock, &["delete"]);
    drop(tap);

    remote_ok(&chv, &sock, &["create", &config_arg]);
    remote_ok(
        &chv,
        &sock,
        &["add-disk", &format!("path={}", disk.display())],
    );
    remote_ok(
        &chv,
        &sock,
        &["add-vsock", &format!("cid=3,socket={}", file("vsock.sock"))],
    );
    for (args, field) in [
        (
            vec![
                "add-fs".to_string(),
                format!("tag=myfs,socket={}", file("fs.sock")),
            ],
            "fs",
        ),
        (
            vec![
                "add-pmem".into(),
                format!("file={},size=1M", disk.display()),
            ],
            "pmem",
        ),
        (
            vec![
                "add-device".into(),
                "path=/sys/bus/pci/devices/0000:01:00.0".into(),
            ],
            "devices",
        ),
        (
            vec![
                "add-user-device".into(),
                format!("socket={}", file("u.sock")),
            ],
            "user_devices",
        ),
        (
            vec![
                "add-vdpa".into(),
                "path=/dev/vhost-vdpa-0,num_queues=1".into(),
            ],
            "vdpa",
        ),
        (
            vec!["resize".into(), "--balloon".into(), "16M".into()],
            "desired_balloon",
        ),
        (
            vec![
                "resize-zone".into(),
                "--id".into(),
                "mem0".into(),
                "--size".into(),
                "1G".into(),
            ],
            "mem0",
        ),
        (
            vec![
                "resize-disk".into(),
                "--disk".into(),
                "_disk0".into(),
                "--size".into(),
                "2G".into(),
            ],
            "desired_size",
        ),
        (
            vec!["coredump".into(), format!("file://{}", file("core"))],
            "destination_url",
        ),
        (vec!["nmi".into()], "501"),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        remote_err(&chv, &sock, &args, field);
    }
    remote_ok(
        &chv,
        &sock,
        &["resize", "--cpus", "2", "--memory", "64M", "--balloon", "0"],
    );
    let info = remote_ok(&chv, &sock, &["info"]);
    chv.check(
        info.contains(r#""boot_vcpus":2"#),
        &format!("resize --cpus 2 did not reach vm.info: {info}"),
    );
    remote_ok(&chv, &sock, &["resize", "--cpus", "1"]);
    remote_ok(&chv, &sock, &["remove-device", "_disk0"]);
    remote_err(&chv, &sock, &["remove-device", "_disk7"], "_disk7");

    remote_ok(&chv, &sock, &["boot"]);
    wait_file(&chv, &serial, "ticks", GUEST_TIMEOUT, |t| {
        has_run_of_ticks(t, 3)
    });
    remote_ok(&chv, &sock, &["power-button"]);
    remote_ok(&chv, &sock, &["counters"]);
    remote_ok(&chv, &sock, &["pause"]);
    let snap = dir.join("snap");
    std::fs::create_dir_all(&snap).expect("snap dir");
    let snap_url = format!("file://{}", snap.display());
    remote_ok(&chv, &sock, &["snapshot", &snap_url]);
    remote_ok(&chv, &sock, &["delete"]);
    remote_err(
        &chv,
        &sock,
        &[
            "restore",
            &format!("source_url={snap_url},memory_restore_mode=Sometimes"),
        ],
        "Sometimes",
    );
    remote_ok(
        &chv,
        &sock,
        &[
            "restore",
            &format!("source_url={snap_url},memory_restore_mode=ondemand"),
        ],
    );
    remote_ok(&chv, &sock, &["resume"]);
    expect_growing(&chv, &serial, 20, "ticks after restore");

    // Migration in ch-remote's key=value syntax.
    let dir2 = Scratch::new("chsyntax-recv");
    let (chv2, sock2) = start_vmm(&dir2);
    let mig = dir.join("mig.sock");
    let receiver = {
        let (sock2, url) = (
            sock2.clone(),
            format!("receiver_url=unix:{}", mig.display()),
        );
        thread::spawn(move || remote(&sock2, &["receive-migration", &url]))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !mig.exists() {
        if Instant::now() > deadline {
            chv2.fail("the receiver never listened");
        }
        thread::sleep(Duration::from_millis(20));
    }
    remote_err(
        &chv,
        &sock,
        &[
            "send-migration",
            &format!("destination_url=unix:{},connections=2", mig.display()),
        ],
        "connections",
    );
    remote_ok(
        &chv,
        &sock,
        &[
            "send-migration",
            &format!(
                "destination_url=unix:{},downtime_ms=200,timeout_s=60,timeout_strategy=Cancel",
                mig.display()
            ),
        ],
    );
    let (code, out, err) = receiver.join().expect("receiver");
    chv2.check(
        code == 0,
        &format!("receive-migration: {code} {out:?} {err:?}"),
    );
    let info = remote_ok(&chv2, &sock2, &["info"]);
    chv2.check(
        info.contains(r#""state":"Running""#),
        &format!("receiver: {info}"),
    );
    remote_ok(&chv2, &sock2, &["shutdown"]);
    remote_ok(&chv2, &sock2, &["shutdown-vmm"]);
    expect_clean_exit(chv2);
    let mut chv = chv;
    let st = chv.expect_exit(Duration::from_secs(20));
    chv.assert_no_panic();
    chv.check(st.code() == Some(0), &format!("sender exit {st}"));
}
