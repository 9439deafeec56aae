//! HTTP/1.1 message framing: cutting requests out of a connection's input
//! buffer and writing responses.
//!
//! Only what the API needs: `Content-Length` bodies (no chunked transfer
//! coding), keep-alive and `Connection: close`, `Expect: 100-continue`. Any
//! request that cannot be framed is refused with a status and the connection
//! closed, because the position of the next request is then unknown.

use crate::ApiResponse;

/// Most header lines accepted in one request (beyond: 431).
const MAX_HEADERS: usize = 64;

/// Size limits applied while framing a request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Longest request line plus header section, in bytes (beyond: 431).
    pub max_header: usize,
    /// Longest body, in bytes (beyond: 413).
    pub max_body: usize,
}

/// One framed request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// The method token as sent (validated as an HTTP token by httparse).
    pub method: String,
    /// The request target without its query string.
    pub path: String,
    /// The body, exactly `Content-Length` bytes.
    pub body: Vec<u8>,
    /// Whether the connection ends after the response (`Connection: close`,
    /// or HTTP/1.0 without `Connection: keep-alive`).
    pub close: bool,
}

/// What the framer found at the start of the input buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Framed {
    /// More bytes are needed; `expect_continue` when the headers are complete
    /// and the client waits for `100 Continue` before sending the body.
    Incomplete { expect_continue: bool },
    /// A whole request that occupied the first `len` bytes of the buffer.
    Request { request: Request, len: usize },
    /// The request is refused with this status and message; the connection
    /// must be closed after the answer.
    Reject { status: u16, message: &'static str },
}

/// Frames the first request in `buf`.
pub(crate) fn frame(buf: &[u8], limits: Limits) -> Framed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let header_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= limits.max_header => n,
        Ok(httparse::Status::Partial) if buf.len() <= limits.max_header => {
            return Framed::Incomplete {
                expect_continue: false,
            }
        }
        Ok(_) => return reject(431, "request header section too large"),
        Err(httparse::Error::TooManyHeaders) => return reject(431, "too many request headers"),
        Err(_) => return reject(400, "malformed HTTP request"),
    };
    // A complete parse always fills these in.
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return reject(400, "malformed HTTP request");
    };

    let mut content_length: Option<usize> = None;
    let mut close = version == 0;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let value = match std::str::from_utf8(h.value) {
            Ok(v) => v.trim(),
            Err(_) => "",
        };
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = parse_content_length(value) else {
                return reject(400, "invalid Content-Length");
            };
            if content_length.is_some_and(|old| old != n) {
                return reject(400, "conflicting Content-Length headers");
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if value
                .split(',')
                .any(|c| c.trim().eq_ignore_ascii_case("chunked"))
            {
                return reject(
                    411,
                    "chunked request bodies are not supported; send Content-Length",
                );
            }
            return reject(501, "unsupported Transfer-Encoding");
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && version == 0 {
                    close = false;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case("100-continue") {
                return reject(417, "unsupported Expect");
            }
            expect_continue = version == 1;
        }
    }

    let body_len = content_length.unwrap_or(0);
    if body_len > limits.max_body {
        return reject(413, "request body too large");
    }
    let Some(total) = header_len.checked_add(body_len) else {
        return reject(413, "request body too large");
    };
    if buf.len() < total {
        return Framed::Incomplete { expect_continue };
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Framed::Request {
        request: Request {
            method: method.to_string(),
            path: path.to_string(),
            body: buf[header_len..total].to_vec(),
            close,
        },
        len: total,
    }
}

fn reject(status: u16, message: &'static str) -> Framed {
    Framed::Reject { status, message }
}

/// Parses a `Content-Length` value: decimal digits only (no sign, no spaces
/// inside), without overflow.
fn parse_content_length(value: &str) -> Option<usize> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// The interim answer to `Expect: 100-continue`.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 \r\n\r\n";

/// Appends the serialized `resp` to `out`.
///
/// The status line is Cloud Hypervisor's: `HTTP/1.1 <code> ` with an empty
/// reason phrase (valid HTTP/1.1). CH's own client takes everything between
/// the version and the first `\r` as the code, so a reason phrase would
/// break it. A status outside 200..=599 becomes 500. Bodies are JSON (an
/// error's is an array of strings, outermost error first). 204 carries
/// neither body nor `Content-Length`. `allow` adds an `Allow:` header (405),
/// `close` a `Connection: close`.
pub(crate) fn write_response(
    out: &mut Vec<u8>,
    resp: &ApiResponse,
    allow: Option<&str>,
    close: bool,
) {
    let status = if (200..=599).contains(&resp.status) {
        resp.status
    } else {
        500
    };
    let body = if status == 204 {
        None
    } else {
        Some(resp.body.as_deref().unwrap_or(""))
    };
    let mut head = format!("HTTP/1.1 {status} \r\nServer: chv\r\n");
    if let Some(body) = body {
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if let Some(allow) = allow {
        head.push_str(&format!("Allow: {allow}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    if let Some(body) = body {
        out.extend_from_slice(body.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_header: 256,
        max_body: 16,
    };

    fn request(buf: &[u8]) -> (Request, usize) {
        match frame(buf, LIMITS) {
            Framed::Request { request, len } => (request, len),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn status(buf: &[u8]) -> u16 {
        match frame(buf, LIMITS) {
            Framed::Reject { status, .. } => status,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn get_without_body() {
        let buf = b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n\r\nNEXT";
        let (r, len) = request(buf);
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/api/v1/vmm.ping");
        assert!(r.body.is_empty());
        assert!(!r.close);
        assert_eq!(&buf[len..], b"NEXT");
    }

    #[test]
    fn put_with_body_and_query() {
        let buf = b"PUT /api/v1/vm.create?x=1 HTTP/1.1\r\ncontent-length: 4\r\nConnection: close\r\n\r\n{}{}rest";
        let (r, len) = request(buf);
        assert_eq!(r.path, "/api/v1/vm.create");
        assert_eq!(r.body, b"{}{}");
        assert!(r.close);
        assert_eq!(&buf[len..], b"rest");
    }

    #[test]
    fn incomplete_until_body_arrives() {
        let full = b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        for cut in 0..full.len() {
            assert_eq!(
                frame(&full[..cut], LIMITS),
                Framed::Incomplete {
                    expect_continue: false
                },
                "cut at {cut}"
            );
        }
        assert_eq!(request(full).1, full.len());
    }

    #[test]
    fn expect_continue() {
        let buf = b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
        assert_eq!(
            frame(buf, LIMITS),
            Framed::Incomplete {
                expect_continue: true
            }
        );
        assert_eq!(status(b"PUT /a HTTP/1.1\r\nExpect: tea\r\n\r\n"), 417);
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        assert!(request(b"GET / HTTP/1.0\r\n\r\n").0.close);
        assert!(
            !request(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .0
                .close
        );
        assert!(
            request(b"GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n")
                .0
                .close
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(status(b"GARBAGE\r\n\r\n"), 400);
        assert_eq!(status(b"\x00\x01\x02 / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n"), 400);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            411
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            501
        );
        assert_eq!(status(b"PUT / HTTP/1.1\r\nContent-Length: 17\r\n\r\n"), 413);
    }

    #[test]
    fn duplicate_equal_content_length_is_fine() {
        let (r, _) = request(b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx");
        assert_eq!(r.body, b"x");
    }

    #[test]
    fn header_limits() {
        // Partial header section longer than the limit.
        let long = vec![b'a'; LIMITS.max_header + 1];
        assert_eq!(status(&long), 431);
        // Complete but too long.
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'v', LIMITS.max_header));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status(&big), 431);
        // Too many header lines.
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            many.extend_from_slice(b"A:b\r\n");
        }
        many.extend_from_slice(b"\r\n");
        let limits = Limits {
            max_header: 4096,
            max_body: 0,
        };
        assert!(matches!(
            frame(&many, limits),
            Framed::Reject { status: 431, .. }
        ));
    }

    #[test]
    fn responses() {
        let mut out = Vec::new();
        write_response(&mut out, &ApiResponse::ok_json("{}".into()), None, false);
        assert_eq!(
            out,
            b"HTTP/1.1 200 \r\nServer: chv\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );

        out.clear();
        write_response(&mut out, &ApiResponse::no_content(), None, true);
        assert_eq!(
            out,
            b"HTTP/1.1 204 \r\nServer: chv\r\nConnection: close\r\n\r\n"
        );

        out.clear();
        write_response(&mut out, &ApiResponse::error(405, "no"), Some("GET"), false);
        assert_eq!(
            out,
            b"HTTP/1.1 405 \r\nServer: chv\r\nContent-Type: application/json\r\nContent-Length: 6\r\nAllow: GET\r\n\r\n[\"no\"]"
        );

        out.clear();
        let odd = ApiResponse {
            status: 42,
            body: None,
        };
        write_response(&mut out, &odd, None, false);
        assert!(out.starts_with(b"HTTP/1.1 500 \r\n"));
        assert!(out.ends_with(b"Content-Length: 0\r\n\r\n"));
    }
}
