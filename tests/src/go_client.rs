//! An HTTP client over the API socket framed the way Kata's Go clients
//! frame requests: the whole request (headers and body) in one `sendmsg`,
//! tap fds as SCM_RIGHTS on it, one keep-alive connection for many
//! requests, and responses read by Go's `http.ReadResponse` rules (status
//! code from the status line, `Content-Length` bodies, none on 204).

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// One keep-alive connection to chv's API socket.
pub struct GoClient {
    reader: BufReader<UnixStream>,
}

/// A response as Go's client sees it.
#[derive(Debug)]
pub struct GoResponse {
    /// The status code.
    pub status: u16,
    /// Header lines, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// The body (empty for 204).
    pub body: String,
}

impl GoResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl GoClient {
    /// Connects to `sock`.
    pub fn connect(sock: &Path) -> std::io::Result<Self> {
        let stream = UnixStream::connect(sock)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// Sends `method /api/v1/endpoint` with `body` (JSON) and `fds`, in one
    /// `sendmsg` as Kata's `vm.add-net` does, and reads the answer.
    pub fn request(
        &mut self,
        method: &str,
        endpoint: &str,
        body: Option<&str>,
        fds: &[RawFd],
    ) -> std::io::Result<GoResponse> {
        let body = body.unwrap_or("");
        let mut req = format!(
            "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\n\
             User-Agent: OpenAPI-Generator/1.0.0/go\r\nAccept: application/json\r\n"
        );
        if method == "PUT" {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("Accept-Encoding: gzip\r\n\r\n");
        req.push_str(body);
        let stream = self.reader.get_ref();
        let sent = stream
            .send_with_fds(&[req.as_bytes()], fds)
            .map_err(|e| std::io::Error::other(format!("sendmsg: {e}")))?;
        if sent != req.len() {
            // The socket took part of it: send the rest plainly.
            use std::io::Write;
            let mut s = stream;
            s.write_all(&req.as_bytes()[sent..])?;
        }
        self.read_response()
    }

    fn read_response(&mut self) -> std::io::Result<GoResponse> {
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        // Go: "HTTP/1.1 " then a three-digit code, then optional reason.
        let rest = line
            .strip_prefix("HTTP/1.1 ")
            .ok_or_else(|| bad(format!("status line {line:?}")))?;
        let status: u16 = rest
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad(format!("status code in {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end_matches(['\r', '\n']);
            if h.is_empty() {
                break;
            }
            let (n, v) = h
                .split_once(':')
                .ok_or_else(|| bad(format!("header {h:?}")))?;
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let len = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse::<usize>())
            .transpose()
            .map_err(|e| bad(format!("content-length: {e}")))?;
        let body = match (status, len) {
            (204, _) | (_, Some(0)) => String::new(),
            (_, Some(n)) => {
                let mut buf = vec![0; n];
                self.reader.read_exact(&mut buf)?;
                String::from_utf8(buf).map_err(|e| bad(e.to_string()))?
            }
            // No length on a keep-alive connection: Go would read to EOF,
            // which would hang; CH always sends one with a body.
            (_, None) => String::new(),
        };
        Ok(GoResponse {
            status,
            headers,
            body,
        })
    }

    /// The connection's fd (to check it stays open).
    pub fn raw_fd(&self) -> RawFd {
        self.reader.get_ref().as_raw_fd()
    }
}
