//! The REST API server as a client reaches it: the input is the raw byte
//! stream of one connection to the API socket.
//!
//! The HTTP framer (`api_server`'s `http::frame`) is crate-private, so the
//! real server is driven: `start_server_with_options` runs once per process
//! on a socket in the scratch directory, with a stand-in VMM thread that
//! answers every routed `ApiRequest`. Each input is written to a fresh
//! connection, the write side is shut down, and everything the server sends
//! is read until it closes the connection (5 s at most, else a hang is
//! reported). The reply must be a clean sequence of HTTP/1.1 responses:
//! parseable, a status the server may send, `Content-Length` matching the
//! body, nothing trailing. Every `PING_EVERY` inputs the server must still
//! answer `GET /api/v1/vmm.ping`, so a wedged or dead api thread is caught.
//!
//! The stand-in VMM picks its answer from the request body, so response
//! serialization is covered too: empty body or first byte % 4 == 0: 204;
//! 1: 200 echoing the body as JSON text; 2: the status in body bytes 1..3
//! (LE, may be out of range) with a text body; 3: the request is dropped
//! unanswered (the server answers 500).
//!
//! `CHV_FUZZ_STATS=1` prints the status codes answered per input.
//!
//! The limits are smaller than the defaults (2 KiB header, 4 KiB body) so
//! the 431/413 paths are within reach of short inputs.

#![no_main]

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use api_server::{start_server_with_options, ApiRequest, ApiResponse, ServerOptions};
use chv_fuzz::scratch_dir;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Longest header section the server under test accepts.
const MAX_HEADER: usize = 2048;
/// Longest body it accepts.
const MAX_BODY: usize = 4096;
/// How long one connection may take before the server counts as hung.
const DEADLINE: Duration = Duration::from_secs(5);
/// Inputs between two liveness pings.
const PING_EVERY: u64 = 256;
/// The liveness probe.
const PING: &[u8] = b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// The stand-in VMM's answer to one request (see the module doc).
fn answer(req: ApiRequest) {
    let resp = match req.body.first().map(|b| b % 4) {
        None | Some(0) => ApiResponse::no_content(),
        Some(1) => ApiResponse::ok_json(String::from_utf8_lossy(&req.body).into_owned()),
        Some(2) => {
            let lo = req.body.get(1).copied().unwrap_or(0);
            let hi = req.body.get(2).copied().unwrap_or(0);
            ApiResponse::error(u16::from_le_bytes([lo, hi]), "refused by the fuzz VMM")
        }
        _ => return,
    };
    let _ = req.respond.send(resp);
}

/// Starts the server and the stand-in VMM once; returns the socket path.
fn server() -> &'static Path {
    static SOCKET: OnceLock<PathBuf> = OnceLock::new();
    SOCKET.get_or_init(|| {
        // Harness setup failures are not findings: fail loudly.
        let path = scratch_dir().join("api.sock");
        let listener = UnixListener::bind(&path).expect("bind API socket");
        let (tx, rx) = mpsc::channel::<ApiRequest>();
        let wake = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let drain = wake.try_clone().expect("eventfd clone");
        std::thread::Builder::new()
            .name("fuzz-vmm".into())
            .spawn(move || {
                for req in rx {
                    let _ = drain.read();
                    answer(req);
                }
            })
            .expect("stand-in VMM thread");
        let options = ServerOptions {
            max_header: MAX_HEADER,
            max_body: MAX_BODY,
            response_timeout: Duration::from_secs(2),
            ..ServerOptions::default()
        };
        // The api thread runs for the life of the process.
        start_server_with_options(listener, tx, wake, None, options).expect("start API server");
        path
    })
}

/// Writes `input` on a new connection, half-closes it and reads until the
/// server closes. Panics if that takes longer than `DEADLINE`.
fn exchange(path: &Path, input: &[u8]) -> Vec<u8> {
    let stream = UnixStream::connect(path).expect("connect to the API socket");
    stream.set_nonblocking(true).expect("non-blocking client");
    let fd = stream.as_raw_fd();
    let start = Instant::now();
    let mut sent = 0;
    let mut write_open = true;
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if write_open && sent == input.len() {
            let _ = stream.shutdown(std::net::Shutdown::Write);
            write_open = false;
        }
        let left = DEADLINE.saturating_sub(start.elapsed());
        if left.is_zero() {
            panic!(
                "API server hang: connection not finished after {DEADLINE:?} \
                 ({sent}/{} bytes taken, {} bytes answered)",
                input.len(),
                out.len()
            );
        }
        let mut events = libc::POLLIN;
        if write_open {
            events |= libc::POLLOUT;
        }
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, 1000) as libc::c_int;
        // SAFETY: `pfd` is one valid pollfd for the duration of the call and
        // `fd` is owned by `stream`, which outlives it.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            continue;
        }
        if write_open && pfd.revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0 {
            let rest = &input[sent..];
            // SAFETY: `rest` is a valid initialized buffer of `rest.len()`
            // bytes; MSG_NOSIGNAL turns a closed peer into EPIPE, not
            // SIGPIPE (no Rust runtime set SIGPIPE to ignored here).
            let w = unsafe {
                libc::send(
                    fd,
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if w >= 0 {
                sent += w as usize;
            } else {
                let e = io::Error::last_os_error();
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    // The server closed after refusing the request: the
                    // rest is not wanted.
                    write_open = false;
                }
            }
        }
        if pfd.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
            match (&stream).read(&mut chunk) {
                Ok(0) => return out,
                Ok(k) => out.extend_from_slice(&chunk[..k]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                // ECONNRESET: the server closed with our bytes unread,
                // after everything it sent was read.
                Err(_) => return out,
            }
        }
    }
}

/// Checks that `out` is a clean sequence of HTTP responses; returns the
/// final (non-100) status codes.
fn check_responses(out: &[u8]) -> Vec<u16> {
    let mut rest = out;
    let mut codes = Vec::new();
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "unparseable API response ({other:?}): {:?}",
                String::from_utf8_lossy(rest)
            ),
        };
        let code = resp.code.unwrap_or(0);
        assert_eq!(resp.version, Some(1), "response not HTTP/1.1");
        assert!(
            code == 100 || (200..=599).contains(&code),
            "status {code} sent"
        );
        let lengths: Vec<&[u8]> = resp
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| h.value)
            .collect();
        let body = if code == 100 || code == 204 {
            assert!(lengths.is_empty(), "{code} with a Content-Length");
            0
        } else {
            assert_eq!(
                lengths.len(),
                1,
                "{code} without exactly one Content-Length"
            );
            let text = std::str::from_utf8(lengths[0]).unwrap_or("");
            match text.parse::<usize>() {
                Ok(n) => n,
                Err(_) => panic!("bad Content-Length {text:?}"),
            }
        };
        let Some(end) = head.checked_add(body).filter(|&e| e <= rest.len()) else {
            panic!(
                "response body truncated: {:?}",
                String::from_utf8_lossy(rest)
            );
        };
        if code != 100 {
            codes.push(code);
        }
        rest = &rest[end..];
    }
    codes
}

fuzz_target!(|data: &[u8]| {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let path = server();
    let out = exchange(path, data);
    let codes = check_responses(&out);
    if std::env::var_os("CHV_FUZZ_STATS").is_some() {
        eprintln!(
            "http_request stats: {} bytes in, answered {codes:?}",
            data.len()
        );
    }
    if RUNS.fetch_add(1, Ordering::Relaxed) % PING_EVERY == 0 {
        let pong = exchange(path, PING);
        assert_eq!(
            check_responses(&pong),
            [204],
            "API server no longer answers vmm.ping: {:?}",
            String::from_utf8_lossy(&pong)
        );
    }
});
