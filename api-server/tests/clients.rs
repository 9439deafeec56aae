//! The API server driven with the framing of the real clients: Cloud
//! Hypervisor's `api_client` crate (used by `ch-remote` and Kata 3's
//! runtime-rs) and Go's `net/http` (Kata's generated `clh` client).
//!
//! Each client is reproduced at the byte level: how it splits a request
//! over `write`/`sendmsg` calls, where the SCM_RIGHTS descriptors ride, and
//! how it reads the answer. The checks on the answers are the clients' own
//! parsing rules, so a server change that would break a client fails here.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use api_server::{listener_from_arg, start_server, ApiRequest, ApiResponse, Endpoint};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use vmm_sys_util::tempdir::TempDir;

/// What the test VMM saw of each request: endpoint, body and the inode of
/// each descriptor that came with it.
type Seen = Arc<Mutex<Vec<(Endpoint, Vec<u8>, Vec<u64>)>>>;

struct Harness {
    _dir: TempDir,
    path: PathBuf,
    seen: Seen,
}

fn inode(fd: &OwnedFd) -> u64 {
    std::fs::File::from(fd.try_clone().unwrap())
        .metadata()
        .unwrap()
        .ino()
}

fn vmm_loop(rx: Receiver<ApiRequest>, seen: Seen) {
    for req in rx {
        let inodes = req.fds.iter().map(inode).collect();
        seen.lock()
            .unwrap()
            .push((req.endpoint, req.body.clone(), inodes));
        let resp = match req.endpoint {
            Endpoint::VmmPing => ApiResponse::ok_json(r#"{"version":"test"}"#.to_string()),
            Endpoint::VmAddNet => {
                ApiResponse::ok_json(r#"{"id":"net0","bdf":"0000:00:05.0"}"#.to_string())
            }
            Endpoint::VmBoot | Endpoint::VmCreate => ApiResponse::no_content(),
            _ => ApiResponse::error_chain(400, &["outer error", "inner cause"]),
        };
        let _ = req.respond.send(resp);
    }
}

fn start() -> Harness {
    let dir = TempDir::new_with_prefix("/tmp/chv-clients").unwrap();
    let path = dir.as_path().join("api.sock");
    let listener = listener_from_arg(&format!("path={}", path.display())).unwrap();
    let (tx, rx) = mpsc::channel();
    let wake = EventFd::new(EFD_NONBLOCK).unwrap();
    let seen: Seen = Arc::default();
    // The server thread lives until the process ends.
    start_server(listener, tx, wake, None).unwrap();
    let vmm_seen = seen.clone();
    thread::spawn(move || vmm_loop(rx, vmm_seen));
    Harness {
        _dir: dir,
        path,
        seen,
    }
}

fn connect(h: &Harness) -> UnixStream {
    let s = UnixStream::connect(&h.path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// A descriptor to send, with its inode to check it arrived.
fn temp_fd(dir: &TempDir, name: &str) -> (std::fs::File, u64) {
    let f = std::fs::File::create(dir.as_path().join(name)).unwrap();
    let ino = f.metadata().unwrap().ino();
    (f, ino)
}

/// One response as Cloud Hypervisor's `api_client` reads it: the status code
/// is everything between `HTTP/1.1 ` and the first `\r`, trimmed, parsed as
/// a number; the body is what follows the blank line, `Content-Length`
/// bytes of it.
struct ChResponse {
    status: u16,
    body: Option<String>,
}

fn ch_read_response(s: &mut UnixStream) -> ChResponse {
    let mut pending = Vec::new();
    let r = ch_read_next(s, &mut pending);
    assert!(pending.is_empty(), "bytes after the body: {pending:?}");
    r
}

/// Reads the next response of a pipelined connection: `pending` holds the
/// bytes already read past the previous response and keeps those past this
/// one, since one read may return several responses.
fn ch_read_next(s: &mut UnixStream, pending: &mut Vec<u8>) -> ChResponse {
    let mut buf = std::mem::take(pending);
    let mut chunk = [0u8; 4096];
    let (head_end, content_length) = loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            break (end + 4, len);
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed before a full response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    while buf.len() < head_end + content_length {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed inside the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    *pending = buf.split_off(head_end + content_length);
    let text = String::from_utf8(buf).unwrap();
    let code = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.split('\r').next())
        .expect("status line");
    let status = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("api_client cannot parse the status code {code:?}"));
    let body = text[head_end..].to_string();
    ChResponse {
        status,
        body: (!body.is_empty()).then_some(body),
    }
}

/// A request the way `api_client::simple_api_full_command_with_fds_and_response`
/// writes it: the request line and fixed headers in one `sendmsg` carrying
/// the descriptors, then `Content-Length` and the blank line, then the body,
/// each its own write.
fn ch_request(s: &mut UnixStream, method: &str, endpoint: &str, body: Option<&str>, fds: &[i32]) {
    let head =
        format!("{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n");
    s.send_with_fds(&[head.as_bytes()], fds).unwrap();
    match body {
        Some(body) => {
            s.write_all(b"Content-Type: application/json\r\n").unwrap();
            s.write_all(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes())
                .unwrap();
            s.write_all(body.as_bytes()).unwrap();
        }
        None => s.write_all(b"\r\n").unwrap(),
    }
}

#[test]
fn ch_api_client_keeps_one_connection_and_passes_fds() {
    let h = start();
    let dir = TempDir::new_with_prefix("/tmp/chv-clients-fds").unwrap();
    let (tap_a, ino_a) = temp_fd(&dir, "a");
    let (tap_b, ino_b) = temp_fd(&dir, "b");
    let mut s = connect(&h);

    ch_request(&mut s, "GET", "vmm.ping", None, &[]);
    let r = ch_read_response(&mut s);
    assert_eq!(
        (r.status, r.body.as_deref()),
        (200, Some(r#"{"version":"test"}"#))
    );

    let body = r#"{"num_queues":4,"queue_size":256}"#;
    ch_request(
        &mut s,
        "PUT",
        "vm.add-net",
        Some(body),
        &[tap_a.as_raw_fd(), tap_b.as_raw_fd()],
    );
    let r = ch_read_response(&mut s);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body.as_deref(),
        Some(r#"{"id":"net0","bdf":"0000:00:05.0"}"#)
    );

    // 204: no body at all, and the connection goes on.
    ch_request(&mut s, "PUT", "vm.boot", None, &[]);
    let r = ch_read_response(&mut s);
    assert_eq!((r.status, r.body), (204, None));

    // Errors: a JSON array of strings, outermost first.
    ch_request(&mut s, "PUT", "vm.pause", None, &[]);
    let r = ch_read_response(&mut s);
    assert_eq!(r.status, 400);
    let chain: Vec<String> = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(chain, ["outer error", "inner cause"]);

    let seen = h.seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[1].0, Endpoint::VmAddNet);
    assert_eq!(seen[1].1, body.as_bytes());
    assert_eq!(
        seen[1].2,
        [ino_a, ino_b],
        "the tap fds reach the VMM in order"
    );
    assert!(seen[0].2.is_empty() && seen[2].2.is_empty() && seen[3].2.is_empty());
}

/// Go's `net/http` over a Unix socket as Kata's client uses it: the whole
/// request in one write; Kata's `clh.go` sends fds with its own `sendmsg`
/// of the complete request.
#[test]
fn go_client_single_sendmsg_and_status_line() {
    let h = start();
    let dir = TempDir::new_with_prefix("/tmp/chv-clients-go").unwrap();
    let (tap, ino) = temp_fd(&dir, "tap");
    let mut s = connect(&h);
    let body = r#"{"mac":"12:34:56:78:9a:bc","num_queues":2}"#;
    let req = format!(
        "PUT /api/v1/vm.add-net HTTP/1.1\r\nHost: localhost\r\nUser-Agent: OpenAPI-Generator/1.0.0/go\r\n\
         Content-Length: {}\r\nAccept: application/json\r\nContent-Type: application/json\r\n\
         Accept-Encoding: gzip\r\n\r\n{body}",
        body.len()
    );
    s.send_with_fds(&[req.as_bytes()], &[tap.as_raw_fd()])
        .unwrap();
    // Go's http.ReadResponse: "HTTP/1.1 " + three digits, then the
    // optional reason; Content-Length frames the body.
    let r = ch_read_response(&mut s);
    assert_eq!(r.status, 200);
    // A 204 followed by a GET on the same connection: Go reuses it.
    s.write_all(
        b"PUT /api/v1/vm.create HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}",
    )
    .unwrap();
    let r = ch_read_response(&mut s);
    assert_eq!((r.status, r.body), (204, None));
    s.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!(ch_read_response(&mut s).status, 200);
    let seen = h.seen.lock().unwrap();
    assert_eq!(seen[0].2, [ino]);
}

/// The status line carries an empty reason phrase, exactly as Cloud
/// Hypervisor's server writes it.
#[test]
fn status_line_has_no_reason_phrase() {
    let h = start();
    let mut s = connect(&h);
    s.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200 \r\n"),
        "{:?}",
        &buf[..n]
    );
}

/// Descriptors belong to the request whose bytes they came with, even when
/// requests are pipelined on one connection.
#[test]
fn fds_go_to_the_request_they_came_with() {
    let h = start();
    let dir = TempDir::new_with_prefix("/tmp/chv-clients-pipe").unwrap();
    let (f, ino) = temp_fd(&dir, "x");
    let mut s = connect(&h);
    let ping = b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n";
    s.write_all(ping).unwrap();
    let body = "{}";
    let add = format!(
        "PUT /api/v1/vm.add-net HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.send_with_fds(&[add.as_bytes()], &[f.as_raw_fd()])
        .unwrap();
    s.write_all(ping).unwrap();
    // The three responses may come back in one read.
    let mut pending = Vec::new();
    for _ in 0..3 {
        assert_eq!(ch_read_next(&mut s, &mut pending).status, 200);
    }
    assert!(pending.is_empty(), "bytes after the third response");
    let seen = h.seen.lock().unwrap();
    let fds: Vec<_> = seen.iter().map(|(_, _, f)| f.clone()).collect();
    assert_eq!(fds, [vec![], vec![ino], vec![]]);
}

/// A client flooding descriptors loses its connection; the server goes on.
#[test]
fn too_many_fds_close_the_connection() {
    let h = start();
    let dir = TempDir::new_with_prefix("/tmp/chv-clients-many").unwrap();
    let (f, _) = temp_fd(&dir, "x");
    let mut s = connect(&h);
    let fds = vec![f.as_raw_fd(); 10];
    // No complete request: the descriptors pile up unclaimed.
    for _ in 0..8 {
        if s.send_with_fds(&[b"X".as_slice()], &fds).is_err() {
            break;
        }
    }
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let mut c = connect(&h);
    c.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(ch_read_response(&mut c).status, 200);
}
