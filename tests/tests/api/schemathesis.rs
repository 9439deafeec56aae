//! Schema-driven fuzzing of the whole API with schemathesis.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chv_tests::{chv_bin, testguest, workspace_dir};

use crate::harness::*;
use crate::http::*;

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
