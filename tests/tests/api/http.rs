//! Scratch directories, a minimal HTTP/1.1 client and JSON reader for the
//! API tests.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use chv_tests::Chv;

// ---- scratch directories -------------------------------------------------

/// A per-test scratch directory under /tmp, removed on drop.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/chv-api-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
    pub(crate) fn join(&self, name: &str) -> PathBuf {
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
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn json(&self) -> Json {
        parse_json(&self.body).unwrap_or_else(|e| panic!("bad JSON {:?}: {e}", self.body))
    }
}

/// Cuts one response off the front of `buf`: `(response, bytes used)`, or
/// `None` if it is incomplete. Bodies are framed by Content-Length only
/// (chv never sends chunked responses).
pub(crate) fn parse_response(buf: &[u8]) -> Option<(Response, usize)> {
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
pub(crate) fn read_all(stream: &mut UnixStream) -> Vec<u8> {
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
pub(crate) fn exchange(sock: &Path, raw: &[u8]) -> Vec<Response> {
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
pub(crate) fn raw_one(sock: &Path, raw: &[u8]) -> Response {
    let mut rs = exchange(sock, raw);
    assert_eq!(rs.len(), 1, "want one response to {raw:?}, got {rs:?}");
    rs.remove(0)
}

pub(crate) fn request(sock: &Path, method: &str, endpoint: &str, body: Option<&str>) -> Response {
    let body = body.unwrap_or("");
    let mut raw =
        format!("{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if !body.is_empty() {
        raw.push_str("Content-Type: application/json\r\n");
    }
    raw.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    raw_one(sock, raw.as_bytes())
}

pub(crate) fn get(sock: &Path, endpoint: &str) -> Response {
    request(sock, "GET", endpoint, None)
}

pub(crate) fn put(sock: &Path, endpoint: &str, body: Option<&str>) -> Response {
    request(sock, "PUT", endpoint, body)
}

/// Asserts the status of `r`, failing with chv's output on a mismatch.
pub(crate) fn expect_status(chv: &Chv, what: &str, r: &Response, status: u16) {
    chv.check(
        r.status == status,
        &format!("{what}: got {} {:?}, want {status}", r.status, r.body),
    );
}

/// `vm.info`'s state field.
pub(crate) fn vm_state(chv: &Chv, sock: &Path) -> String {
    let r = get(sock, "vm.info");
    expect_status(chv, "vm.info", &r, 200);
    match r.json().get("state") {
        Some(Json::Str(s)) => s.clone(),
        other => chv.fail(&format!("vm.info state is {other:?}: {}", r.body)),
    }
}

// ---- a minimal JSON reader (no serde_json in this crate) ---------------

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub(crate) fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

pub(crate) fn parse_json(text: &str) -> Result<Json, String> {
    let b = text.as_bytes();
    let mut i = 0;
    let v = json_value(b, &mut i)?;
    json_ws(b, &mut i);
    if i != b.len() {
        return Err(format!("trailing data at {i}"));
    }
    Ok(v)
}

pub(crate) fn json_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

pub(crate) fn json_lit(b: &[u8], i: &mut usize, lit: &str, v: Json) -> Result<Json, String> {
    if b[*i..].starts_with(lit.as_bytes()) {
        *i += lit.len();
        Ok(v)
    } else {
        Err(format!("bad literal at {i}"))
    }
}

pub(crate) fn json_value(b: &[u8], i: &mut usize) -> Result<Json, String> {
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
pub(crate) fn json_str(s: &str) -> String {
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
