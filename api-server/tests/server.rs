//! End-to-end tests of the API server over real Unix sockets, with a test
//! "VMM" thread answering the routed requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use api_server::{
    listener_from_arg, start_server, start_server_with_options, ApiError, ApiRequest, ApiResponse,
    Endpoint, ServerOptions, ThreadSetup,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempdir::TempDir;

/// Endpoints and bodies the test VMM received, in order.
type Seen = Arc<Mutex<Vec<(Endpoint, Vec<u8>)>>>;

/// A running server, its socket and the test VMM.
struct Harness {
    _dir: TempDir,
    path: PathBuf,
    /// The VMM's end of the wake-up EventFd.
    wake: EventFd,
    seen: Seen,
    server: JoinHandle<()>,
    vmm: JoinHandle<()>,
}

fn tempdir() -> TempDir {
    TempDir::new_with_prefix("/tmp/chv-api-test").unwrap()
}

/// The test VMM: answers by endpoint.
fn vmm_loop(rx: Receiver<ApiRequest>, seen: Seen) {
    for req in rx {
        seen.lock().unwrap().push((req.endpoint, req.body.clone()));
        let resp = match req.endpoint {
            Endpoint::VmmPing => ApiResponse::ok_json(r#"{"version":"test"}"#.to_string()),
            // Echo the body so tests can check it arrived intact.
            Endpoint::VmCreate => ApiResponse::ok_json(String::from_utf8_lossy(&req.body).into()),
            Endpoint::VmBoot => ApiResponse::no_content(),
            Endpoint::VmPause => ApiResponse::error(409, "VM is not running"),
            // Dropping the responder without an answer.
            Endpoint::VmShutdown => continue,
            // Answering too late for a short timeout.
            Endpoint::VmReboot => {
                thread::sleep(Duration::from_millis(600));
                ApiResponse::no_content()
            }
            Endpoint::VmmShutdown => {
                let _ = req.respond.send(ApiResponse::no_content());
                return;
            }
            _ => ApiResponse::error(500, "unexpected in test"),
        };
        let _ = req.respond.send(resp);
    }
}

fn start_on(dir: TempDir, path: PathBuf, listener: UnixListener, opts: ServerOptions) -> Harness {
    let (tx, rx) = mpsc::channel();
    let wake = EventFd::new(EFD_NONBLOCK).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server =
        start_server_with_options(listener, tx, wake.try_clone().unwrap(), None, opts).unwrap();
    let vmm_seen = seen.clone();
    let vmm = thread::spawn(move || vmm_loop(rx, vmm_seen));
    Harness {
        _dir: dir,
        path,
        wake,
        seen,
        server,
        vmm,
    }
}

fn start_with(opts: ServerOptions) -> Harness {
    let dir = tempdir();
    let path = dir.as_path().join("api.sock");
    let listener = listener_from_arg(&format!("path={}", path.display())).unwrap();
    start_on(dir, path, listener, opts)
}

fn start() -> Harness {
    start_with(ServerOptions::default())
}

/// A parsed HTTP response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A test client on one connection.
struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    fn connect(h: &Harness) -> Client {
        Client::connect_path(&h.path)
    }

    fn connect_path(path: &std::path::Path) -> Client {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    fn response(&mut self) -> Resp {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let mut parts = line.trim_end().splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "status line {line:?}");
        let status: u16 = parts.next().unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':').unwrap();
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: String::new(),
        };
        if let Some(len) = resp.header("Content-Length") {
            let mut body = vec![0; len.parse().unwrap()];
            self.reader.read_exact(&mut body).unwrap();
            resp.body = String::from_utf8(body).unwrap();
        }
        resp
    }

    fn request(&mut self, raw: &[u8]) -> Resp {
        self.send(raw);
        self.response()
    }

    /// Asserts the server closed the connection (EOF or reset, no more data).
    fn assert_closed(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "unexpected bytes {rest:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
}

const PING: &[u8] = b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n\r\n";

fn ping_ok(h: &Harness) {
    let r = Client::connect(h).request(PING);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, r#"{"version":"test"}"#);
}

fn put(path: &str, body: &str) -> Vec<u8> {
    format!(
        "PUT {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn keep_alive_several_requests() {
    let h = start();
    let mut c = Client::connect(&h);
    for _ in 0..3 {
        let r = c.request(PING);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.header("Server"), Some("chv"));
        assert_eq!(r.header("Content-Length"), Some("18"));
        assert_eq!(r.header("Connection"), None);
    }
    let r = c.request(&put("/api/v1/vm.create", r#"{"cpus":{"boot_vcpus":2}}"#));
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, r#"{"cpus":{"boot_vcpus":2}}"#)
    );
    let r = c.request(&put("/api/v1/vm.boot", ""));
    assert_eq!(r.status, 204);
    assert_eq!(r.header("Content-Length"), None);
    let r = c.request(&put("/api/v1/vm.pause", ""));
    assert_eq!(
        (r.status, r.body.as_str()),
        (409, r#"["VM is not running"]"#)
    );
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let r = c.request(b"GET /api/v1/vmm.ping HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Connection"), Some("close"));
    c.assert_closed();

    let seen = h.seen.lock().unwrap();
    assert_eq!(seen.len(), 7);
    assert_eq!(seen[3].0, Endpoint::VmCreate);
    assert_eq!(seen[3].1, br#"{"cpus":{"boot_vcpus":2}}"#);
    drop(seen);
    // Every routed request woke the VMM.
    assert_eq!(h.wake.read().unwrap(), 7);
}

#[test]
fn pipelined_requests_in_order() {
    let h = start();
    let mut c = Client::connect(&h);
    let mut batch = Vec::new();
    batch.extend_from_slice(&put("/api/v1/vm.create", "first"));
    batch.extend_from_slice(PING);
    batch.extend_from_slice(&put("/api/v1/vm.create", "second"));
    batch.extend_from_slice(b"GET /api/v1/nope HTTP/1.1\r\n\r\n");
    batch.extend_from_slice(&put("/api/v1/vm.boot", ""));
    c.send(&batch);
    assert_eq!(c.response().body, "first");
    assert_eq!(c.response().status, 200);
    assert_eq!(c.response().body, "second");
    assert_eq!(c.response().status, 404);
    assert_eq!(c.response().status, 204);
}

#[test]
fn pipelined_burst_with_slow_reader() {
    // Far more output than the per-connection high-water mark, sent while
    // the client is not reading yet.
    let h = start();
    let mut c = Client::connect(&h);
    const N: usize = 3000;
    let mut writer = c.stream.try_clone().unwrap();
    let w = thread::spawn(move || {
        for _ in 0..N {
            writer.write_all(PING).unwrap();
        }
    });
    thread::sleep(Duration::from_millis(200));
    for _ in 0..N {
        assert_eq!(c.response().status, 200);
    }
    w.join().unwrap();
    assert_eq!(h.seen.lock().unwrap().len(), N);
}

#[test]
fn routing_errors() {
    let h = start();
    let mut c = Client::connect(&h);
    let r = c.request(b"GET /api/v1/vm.nope HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 404);
    assert!(r.body.contains("/api/v1/vm.nope"));
    let r = c.request(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 404);
    let r = c.request(&put("/api/v1/vmm.ping", "{}"));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("GET"));
    let r = c.request(b"GET /api/v1/vm.boot HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("PUT"));
    let r = c.request(b"BREW /api/v1/vm.boot HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 405);
    let r = c.request(&put("/api/v1/vm.nmi", ""));
    assert_eq!(r.status, 501);
    // The connection survived all of these, and nothing reached the VMM.
    assert_eq!(c.request(PING).status, 200);
    assert_eq!(h.seen.lock().unwrap().len(), 1);
}

/// Sends `raw` on a new connection and expects `status` then a close.
fn refused(h: &Harness, raw: &[u8], status: u16) {
    let mut c = Client::connect(h);
    let r = c.request(raw);
    assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(raw));
    assert_eq!(r.header("Connection"), Some("close"));
    c.assert_closed();
}

#[test]
fn framing_errors_close_the_connection() {
    let h = start();
    refused(&h, b"this is not http\r\n\r\n", 400);
    refused(
        &h,
        b"GET /api/v1/vmm.ping HTTP/1.1\r\nBad Header\r\n\r\n",
        400,
    );
    refused(
        &h,
        b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        400,
    );
    refused(
        &h,
        b"PUT /api/v1/vm.create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        411,
    );
    refused(
        &h,
        b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 65537\r\n\r\n",
        413,
    );
    let mut big = b"GET /api/v1/vmm.ping HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 9000));
    big.extend_from_slice(b"\r\n\r\n");
    refused(&h, &big, 431);
    // A body of exactly the limit is fine.
    let body = "x".repeat(64 * 1024);
    let r = Client::connect(&h).request(&put("/api/v1/vm.create", &body));
    assert_eq!((r.status, r.body.len()), (200, body.len()));
    ping_ok(&h);
}

#[test]
fn one_mib_garbage_body() {
    let h = start();
    let mut c = Client::connect(&h);
    let mut writer = c.stream.try_clone().unwrap();
    let w = thread::spawn(move || {
        let head = b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n";
        let garbage: Vec<u8> = (0..1024 * 1024u64)
            .map(|i| (i * 7919 % 251) as u8)
            .collect();
        // The server stops reading after the head: this write fails (EPIPE).
        let _ = writer
            .write_all(head)
            .and_then(|_| writer.write_all(&garbage));
    });
    let r = c.response();
    assert_eq!(r.status, 413);
    c.assert_closed();
    w.join().unwrap();

    // Plain 1 MiB of garbage, no HTTP at all.
    let mut c = Client::connect(&h);
    let mut writer = c.stream.try_clone().unwrap();
    let w = thread::spawn(move || {
        let garbage: Vec<u8> = (0..1024 * 1024u64).map(|i| (i * 31 % 256) as u8).collect();
        let _ = writer.write_all(&garbage);
    });
    let r = c.response();
    assert!(r.status == 400 || r.status == 431, "{r:?}");
    w.join().unwrap();
    ping_ok(&h);
    assert!(h
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|(e, _)| *e == Endpoint::VmmPing));
}

#[test]
fn two_hundred_clients_connect_and_drop() {
    let h = start();
    let mut clients: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(&h.path).unwrap())
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        match i % 4 {
            0 => {}
            1 => c
                .write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost:")
                .unwrap(),
            2 => c
                .write_all(b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
                .unwrap(),
            _ => c.write_all(PING).unwrap(), // never reads the answer
        }
    }
    drop(clients);
    ping_ok(&h);
    // Many clients each doing a full request at the same time.
    let workers: Vec<_> = (0..50)
        .map(|_| {
            let path = h.path.clone();
            thread::spawn(move || {
                let mut c = Client::connect_path(&path);
                for _ in 0..4 {
                    assert_eq!(c.request(PING).status, 200);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    ping_ok(&h);
}

#[test]
fn client_disconnects_mid_body() {
    let h = start();
    let mut c = Client::connect(&h);
    c.send(b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"cpus\":");
    drop(c);
    let mut c = Client::connect(&h);
    c.send(b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"cpus\":");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    c.assert_closed();
    ping_ok(&h);
    let seen = h.seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "the partial requests reached the VMM");
}

#[test]
fn half_closed_client_still_gets_its_answers() {
    let h = start();
    let mut c = Client::connect(&h);
    let mut batch = PING.to_vec();
    batch.extend_from_slice(&put("/api/v1/vm.create", "{}"));
    c.send(&batch);
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.response().status, 200);
    assert_eq!(c.response().body, "{}");
    c.assert_closed();
}

#[test]
fn http10_and_expect_continue() {
    let h = start();
    let mut c = Client::connect(&h);
    let r = c.request(b"GET /api/v1/vmm.ping HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    c.assert_closed();

    let mut c = Client::connect(&h);
    c.send(b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.response();
    assert_eq!(interim.status, 100);
    let r = c.request(b"{}");
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));
}

#[test]
fn vmm_timeout_and_dropped_request() {
    let h = start_with(ServerOptions {
        response_timeout: Duration::from_millis(150),
        ..ServerOptions::default()
    });
    let mut c = Client::connect(&h);
    let r = c.request(&put("/api/v1/vm.shutdown", ""));
    assert_eq!(r.status, 500);
    assert!(r.body.contains("dropped"), "{}", r.body);
    let r = c.request(&put("/api/v1/vm.reboot", ""));
    assert_eq!(r.status, 500);
    assert!(r.body.contains("in time"), "{}", r.body);
    // Let the test VMM finish with vm.reboot; its late answer must not be
    // mistaken for a later request's.
    thread::sleep(Duration::from_millis(700));
    assert_eq!(c.request(PING).body, r#"{"version":"test"}"#);
}

#[test]
fn server_stops_when_vmm_goes_away() {
    let h = start();
    let mut c = Client::connect(&h);
    assert_eq!(c.request(&put("/api/v1/vmm.shutdown", "")).status, 204);
    h.vmm.join().unwrap();
    let r = c.request(PING);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("Connection"), Some("close"));
    h.server.join().unwrap();
    assert!(UnixStream::connect(&h.path).is_err());
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = tempdir();
    let path = dir.as_path().join("stale.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let listener = listener_from_arg(path.to_str().unwrap()).unwrap();
    let h = start_on(dir, path, listener, ServerOptions::default());
    ping_ok(&h);
}

#[test]
fn adopts_inherited_fd() {
    let dir = tempdir();
    let path = dir.as_path().join("fd.sock");
    let fd = UnixListener::bind(&path).unwrap().into_raw_fd();
    let listener = listener_from_arg(&format!("fd={fd}")).unwrap();
    let h = start_on(dir, path, listener, ServerOptions::default());
    ping_ok(&h);
}

#[test]
fn thread_setup_runs_on_the_api_thread() {
    let dir = tempdir();
    let path = dir.as_path().join("setup.sock");
    let (tx, _rx) = mpsc::channel();
    let wake = EventFd::new(EFD_NONBLOCK).unwrap();
    let (name_tx, name_rx) = mpsc::channel();
    let setup: ThreadSetup = Box::new(move || {
        name_tx
            .send(thread::current().name().map(str::to_string))
            .unwrap();
        Ok(())
    });
    let listener = listener_from_arg(path.to_str().unwrap()).unwrap();
    start_server(listener, tx, wake, Some(setup)).unwrap();
    assert_eq!(name_rx.recv().unwrap().as_deref(), Some("api"));

    let (tx, _rx) = mpsc::channel();
    let wake = EventFd::new(EFD_NONBLOCK).unwrap();
    let path2 = dir.as_path().join("fail.sock");
    let listener = listener_from_arg(path2.to_str().unwrap()).unwrap();
    let failing: ThreadSetup = Box::new(|| Err("seccomp refused".to_string()));
    let err = start_server(listener, tx, wake, Some(failing)).unwrap_err();
    assert!(
        matches!(err, ApiError::ThreadSetup(ref m) if m == "seccomp refused"),
        "{err}"
    );
    // The listener was dropped with the thread: nobody accepts any more.
    assert!(UnixStream::connect(&path2).is_err());
}

#[test]
fn ping_body_is_answered_by_the_api_thread_while_the_vmm_is_busy() {
    let dir = tempdir();
    let path = dir.as_path().join("api.sock");
    let listener = listener_from_arg(&format!("path={}", path.display())).unwrap();
    // A VMM that never takes requests, as while it builds a VM.
    let (tx, _busy_vmm) = mpsc::channel();
    let wake = EventFd::new(EFD_NONBLOCK).unwrap();
    let opts = ServerOptions {
        ping_body: Some(r#"{"version":"own"}"#.to_string()),
        response_timeout: Duration::from_millis(150),
        ..ServerOptions::default()
    };
    start_server_with_options(listener, tx, wake, None, opts).unwrap();
    let mut c = Client::connect_path(&path);
    let r = c.request(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, r#"{"version":"own"}"#);
    // Everything else still waits for the VMM.
    let r = c.request(b"GET /api/v1/vm.info HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 500, "{}", r.body);
    // A wrong method on ping is still refused.
    let r = c.request(b"PUT /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, 405);
}
