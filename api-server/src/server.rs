//! The "api" thread: an epoll loop over the listener and every client
//! connection (non-blocking sockets, per-connection buffers), handing routed
//! requests to the VMM one at a time.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::http::{self, Framed, Limits};
use crate::{ApiError, ApiRequest, ApiResponse, Endpoint, Method};

/// Epoll token of the listening socket; connections get 1, 2, ... (never reused).
const LISTENER_TOKEN: u64 = 0;
/// Unsent response bytes above which a connection's further pipelined
/// requests wait until the client reads (bounds memory per connection).
const OUTPUT_HIGH_WATER: usize = 64 * 1024;
/// Bytes read from a socket per `read` call.
const READ_CHUNK: usize = 16 * 1024;
/// How often a paused listener (connection limit or accept error) is retried.
const LISTENER_RETRY_MS: i32 = 100;
/// Most file descriptors accepted with one `recvmsg` (SCM_RIGHTS); a client
/// sending more in one message has its connection closed.
const MAX_FDS_PER_READ: usize = 16;
/// Most received descriptors a connection may hold for requests not yet
/// framed (beyond: the connection is closed).
const MAX_PENDING_FDS: usize = 64;

/// Work run on the api thread before it serves anything (the VMM installs the
/// thread's seccomp filter); an `Err` stops the server from starting.
pub type ThreadSetup = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// Limits and timeouts of the API server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Longest request line plus headers (beyond: 431 and close).
    pub max_header: usize,
    /// Longest request body (beyond: 413 and close, nothing more is read).
    pub max_body: usize,
    /// How long a request waits for the VMM's answer before it gets 500.
    pub response_timeout: Duration,
    /// Most simultaneous connections; further clients wait in the listen
    /// backlog until one closes.
    pub max_connections: usize,
    /// `vmm.ping`'s JSON body, when the API thread should answer pings
    /// itself. Its content never changes, and answering here lets a client
    /// see the VMM up while the VMM thread is still building a VM.
    pub ping_body: Option<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_header: 8 * 1024,
            max_body: 64 * 1024,
            response_timeout: Duration::from_secs(120),
            max_connections: 256,
            ping_body: None,
        }
    }
}

/// Spawns the "api" thread with the default [`ServerOptions`].
///
/// The thread first runs `thread_setup` (the VMM installs the thread's
/// seccomp filter there); this function returns only once that has run, with
/// [`ApiError::ThreadSetup`] if it failed (the thread has then exited). The
/// thread then serves connections forever: each routed request is sent to
/// `tx`, `1` is written to `wake` so the VMM's epoll loop picks it up, and the
/// thread blocks on the request's own response channel (at most
/// `response_timeout`, then 500) before writing the HTTP response. Requests
/// are therefore handled one at a time, in order per connection. The thread
/// exits when the receiving end of `tx` has been dropped and a request comes
/// in (that request gets 503).
pub fn start_server(
    listener: UnixListener,
    tx: Sender<ApiRequest>,
    wake: EventFd,
    thread_setup: Option<ThreadSetup>,
) -> Result<JoinHandle<()>, ApiError> {
    start_server_with_options(listener, tx, wake, thread_setup, ServerOptions::default())
}

/// [`start_server`] with explicit limits and timeouts.
pub fn start_server_with_options(
    listener: UnixListener,
    tx: Sender<ApiRequest>,
    wake: EventFd,
    thread_setup: Option<ThreadSetup>,
    options: ServerOptions,
) -> Result<JoinHandle<()>, ApiError> {
    listener.set_nonblocking(true).map_err(ApiError::Io)?;
    let epoll = Epoll::new().map_err(ApiError::Io)?;
    epoll
        .ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )
        .map_err(ApiError::Io)?;
    let mut server = Server {
        listener,
        epoll,
        listener_registered: true,
        conns: HashMap::new(),
        next_token: LISTENER_TOKEN + 1,
        tx,
        wake,
        limits: Limits {
            max_header: options.max_header,
            max_body: options.max_body,
        },
        input_cap: options.max_header.saturating_add(options.max_body).max(1),
        options,
        vmm_gone: false,
        answer_written: None,
    };

    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let handle = thread::Builder::new()
        .name("api".to_string())
        .spawn(move || {
            if let Some(setup) = thread_setup {
                if let Err(e) = setup() {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            }
            let _ = ready_tx.send(Ok(()));
            server.run();
        })
        .map_err(ApiError::Io)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(ApiError::ThreadSetup(e))
        }
        Err(_) => {
            let _ = handle.join();
            Err(ApiError::ThreadSetup(
                "the api thread ended during setup".to_string(),
            ))
        }
    }
}

/// One client connection and its buffers.
struct Connection {
    stream: UnixStream,
    token: u64,
    /// Received bytes not yet consumed as requests.
    input: Vec<u8>,
    /// Descriptors received (SCM_RIGHTS) not yet handed to a request, each
    /// with the offset in `input` just past the bytes read with it. Linux
    /// ends a stream read at the message that carries descriptors, so they
    /// came with the last byte of that read, and belong to the request that
    /// holds that byte (clients send them with a request's first bytes).
    fds: Vec<(usize, OwnedFd)>,
    /// Serialized responses; `output[written..]` is still to be sent.
    output: Vec<u8>,
    written: usize,
    /// The client shut down its sending side.
    read_closed: bool,
    /// Close once `output` is sent (Connection: close, refusal, EOF).
    closing: bool,
    /// `100 Continue` was sent for the request being received.
    continue_sent: bool,
    /// The epoll interest currently registered.
    interest: EventSet,
}

impl Connection {
    fn pending(&self) -> usize {
        self.output.len() - self.written
    }

    /// Reads what is available, up to `cap` buffered bytes, with any file
    /// descriptors sent along (SCM_RIGHTS, as CH's and Kata's clients pass
    /// tap fds).
    fn fill(&mut self, cap: usize) -> io::Result<()> {
        let mut chunk = [0u8; READ_CHUNK];
        while self.input.len() < cap {
            let want = READ_CHUNK.min(cap - self.input.len());
            let mut iov = [libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: want,
            }];
            let mut raw: [RawFd; MAX_FDS_PER_READ] = [-1; MAX_FDS_PER_READ];
            // SAFETY: the iovec points at `chunk`, valid for `want` bytes
            // for the whole call and written only by the kernel.
            let got = unsafe { self.stream.recv_with_fds(&mut iov, &mut raw) };
            match got {
                Ok((n, nfds)) => {
                    let at = self.input.len() + n;
                    for &fd in &raw[..nfds] {
                        // SAFETY: the kernel just installed `fd` in this
                        // process for us; nothing else owns it.
                        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                        self.fds.push((at, fd));
                    }
                    if self.fds.len() > MAX_PENDING_FDS {
                        return Err(io::Error::other("too many file descriptors sent"));
                    }
                    if n == 0 {
                        // End of stream (a stream socket cannot carry
                        // descriptors without data).
                        self.read_closed = true;
                        break;
                    }
                    self.input.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.errno() == libc::EAGAIN => break,
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
            }
        }
        Ok(())
    }

    /// Removes the first `len` input bytes (one framed request) and returns
    /// the descriptors that arrived with them.
    fn consume(&mut self, len: usize) -> Vec<OwnedFd> {
        self.input.drain(..len);
        let (mine, rest): (Vec<_>, Vec<_>) = self.fds.drain(..).partition(|(at, _)| *at <= len);
        self.fds = rest.into_iter().map(|(at, fd)| (at - len, fd)).collect();
        mine.into_iter().map(|(_, fd)| fd).collect()
    }

    /// Sends as much pending output as the socket takes.
    fn flush(&mut self) -> io::Result<()> {
        while self.written < self.output.len() {
            let rest = &self.output[self.written..];
            // SAFETY: `rest` is a valid, initialized buffer of `rest.len()`
            // bytes for the duration of the call; the descriptor is owned by
            // `self.stream`. MSG_NOSIGNAL turns a closed peer into EPIPE
            // instead of SIGPIPE.
            let n = unsafe {
                libc::send(
                    self.stream.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            self.written += n as usize;
        }
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
        }
        Ok(())
    }

    /// Queues `resp`; `close` adds `Connection: close` and ends the connection
    /// once it is sent.
    fn respond(&mut self, resp: &ApiResponse, allow: Option<&str>, close: bool) {
        http::write_response(&mut self.output, resp, allow, close);
        if close {
            self.closing = true;
        }
    }
}

/// State of the api thread.
struct Server {
    listener: UnixListener,
    epoll: Epoll,
    /// Whether the listener is in the epoll set (removed while at the
    /// connection limit or after an accept error such as EMFILE).
    listener_registered: bool,
    conns: HashMap<u64, Connection>,
    next_token: u64,
    tx: Sender<ApiRequest>,
    wake: EventFd,
    options: ServerOptions,
    limits: Limits,
    /// Most bytes buffered from one connection: a full request always fits.
    input_cap: usize,
    /// The VMM dropped its receiver: stop serving.
    vmm_gone: bool,
    /// Told once the answer the VMM just gave has been written out.
    answer_written: Option<mpsc::Sender<()>>,
}

impl Server {
    fn run(&mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let timeout = if self.listener_registered {
                -1
            } else {
                LISTENER_RETRY_MS
            };
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("API server epoll_wait failed, API stopped: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                if ev.data() == LISTENER_TOKEN {
                    self.accept_all();
                } else {
                    self.service(ev.data());
                }
                if self.vmm_gone {
                    log::info!("the VMM no longer takes API requests; API server stops");
                    return;
                }
            }
            if !self.listener_registered {
                self.set_listener(true);
            }
        }
    }

    /// Adds or removes the listener from the epoll set.
    fn set_listener(&mut self, on: bool) {
        if on == self.listener_registered
            || (on && self.conns.len() >= self.options.max_connections)
        {
            return;
        }
        let op = if on {
            ControlOperation::Add
        } else {
            ControlOperation::Delete
        };
        let fd = self.listener.as_raw_fd();
        match self
            .epoll
            .ctl(op, fd, EpollEvent::new(EventSet::IN, LISTENER_TOKEN))
        {
            Ok(()) => self.listener_registered = on,
            Err(e) => log::warn!("API listener epoll update failed: {e}"),
        }
    }

    fn accept_all(&mut self) {
        loop {
            if self.conns.len() >= self.options.max_connections {
                log::debug!("API connection limit reached; new clients wait");
                self.set_listener(false);
                return;
            }
            match self.listener.accept() {
                Ok((stream, _)) => self.add_connection(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // E.g. EMFILE: stop polling the listener for a while
                    // rather than spin on it.
                    log::warn!("API accept failed: {e}");
                    self.set_listener(false);
                    return;
                }
            }
        }
    }

    fn add_connection(&mut self, stream: UnixStream) {
        if let Err(e) = stream.set_nonblocking(true) {
            log::warn!("API connection dropped: {e}");
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token),
        ) {
            log::warn!("API connection dropped: {e}");
            return;
        }
        self.conns.insert(
            token,
            Connection {
                stream,
                token,
                input: Vec::new(),
                fds: Vec::new(),
                output: Vec::new(),
                written: 0,
                read_closed: false,
                closing: false,
                continue_sent: false,
                interest: EventSet::IN,
            },
        );
    }

    /// Handles readiness of one connection; closes it when it is finished or
    /// broken (dropping the stream removes it from the epoll set).
    fn service(&mut self, token: u64) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        match self.drive(&mut conn) {
            Ok(true) => {
                self.conns.insert(token, conn);
            }
            Ok(false) => {}
            Err(e) => log::debug!("API connection closed: {e}"),
        }
        if !self.listener_registered {
            self.set_listener(true);
        }
    }

    /// Reads, answers complete requests, writes. Returns whether the
    /// connection stays open.
    fn drive(&mut self, conn: &mut Connection) -> io::Result<bool> {
        if conn.interest.contains(EventSet::IN) {
            conn.fill(self.input_cap)?;
        }
        loop {
            let backpressure = self.process(conn)?;
            conn.flush()?;
            if !backpressure || conn.pending() > 0 || self.vmm_gone {
                break;
            }
        }
        if conn.pending() == 0 && (conn.closing || conn.read_closed) {
            return Ok(false);
        }
        let mut want = EventSet::empty();
        if !conn.read_closed
            && !conn.closing
            && conn.input.len() < self.input_cap
            && conn.pending() < OUTPUT_HIGH_WATER
        {
            want |= EventSet::IN;
        }
        if conn.pending() > 0 {
            want |= EventSet::OUT;
        }
        if want.is_empty() {
            return Ok(false);
        }
        if want != conn.interest {
            self.epoll.ctl(
                ControlOperation::Modify,
                conn.stream.as_raw_fd(),
                EpollEvent::new(want, conn.token),
            )?;
            conn.interest = want;
        }
        Ok(true)
    }

    /// Answers the complete requests at the front of the input, in order.
    /// Returns true when it stopped because too much output is unsent.
    fn process(&mut self, conn: &mut Connection) -> io::Result<bool> {
        while !conn.closing {
            if conn.pending() >= OUTPUT_HIGH_WATER {
                return Ok(true);
            }
            match http::frame(&conn.input, self.limits) {
                Framed::Incomplete { expect_continue } => {
                    if conn.read_closed {
                        // The rest of this request will never come.
                        conn.closing = true;
                    } else if expect_continue && !conn.continue_sent {
                        conn.output.extend_from_slice(http::CONTINUE);
                        conn.continue_sent = true;
                    }
                    return Ok(false);
                }
                Framed::Reject { status, message } => {
                    log::debug!("API request refused: {status} {message}");
                    conn.input.clear();
                    conn.fds.clear();
                    conn.respond(&ApiResponse::error(status, message), None, true);
                }
                Framed::Request { request, len } => {
                    let fds = conn.consume(len);
                    conn.continue_sent = false;
                    let (resp, allow) =
                        self.dispatch(&request.method, &request.path, request.body, fds);
                    conn.respond(&resp, allow, request.close || self.vmm_gone);
                    // Send now: later pipelined requests may wait on the VMM.
                    let flushed = conn.flush();
                    if let Some(tx) = self.answer_written.take() {
                        // The VMM may not wait for it; that is fine.
                        let _ = tx.send(());
                    }
                    flushed?;
                }
            }
        }
        Ok(false)
    }

    /// Routes one request and obtains its response (from the VMM when the
    /// endpoint is served), plus the `Allow:` value for a 405.
    fn dispatch(
        &mut self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        fds: Vec<OwnedFd>,
    ) -> (ApiResponse, Option<&'static str>) {
        let Some(endpoint) = Endpoint::from_path(path) else {
            log::debug!("API {method} {path}: unknown endpoint");
            return (
                ApiResponse::error(404, format!("unknown API endpoint {path}")),
                None,
            );
        };
        let allowed = endpoint.allowed_method();
        if Method::from_token(method) != Some(allowed) {
            return (
                ApiResponse::error(405, format!("{} accepts only {allowed}", endpoint.name())),
                Some(allowed.as_str()),
            );
        }
        if !endpoint.is_implemented() {
            return (
                ApiResponse::error(
                    501,
                    format!("{} is not implemented by chv", endpoint.name()),
                ),
                None,
            );
        }
        log::debug!("API {method} {path}");
        if endpoint == Endpoint::VmmPing && !self.vmm_gone {
            if let Some(body) = &self.options.ping_body {
                return (ApiResponse::ok_json(body.clone()), None);
            }
        }
        (self.ask_vmm(endpoint, body, fds), None)
    }

    /// Sends a request to the VMM and waits for its answer.
    fn ask_vmm(&mut self, endpoint: Endpoint, body: Vec<u8>, fds: Vec<OwnedFd>) -> ApiResponse {
        let (respond, answer) = mpsc::channel();
        let (written_tx, written) = mpsc::channel();
        self.answer_written = Some(written_tx);
        let request = ApiRequest {
            endpoint,
            body,
            fds,
            respond,
            written,
        };
        if self.tx.send(request).is_err() {
            self.vmm_gone = true;
            return ApiResponse::error(503, "the VMM is not taking API requests");
        }
        if let Err(e) = self.wake.write(1) {
            log::warn!("cannot wake the VMM for an API request: {e}");
        }
        match answer.recv_timeout(self.options.response_timeout) {
            Ok(resp) => resp,
            Err(RecvTimeoutError::Timeout) => {
                log::warn!("the VMM did not answer {endpoint} in time");
                ApiResponse::error(500, format!("the VMM did not answer {endpoint} in time"))
            }
            Err(RecvTimeoutError::Disconnected) => {
                ApiResponse::error(500, format!("the VMM dropped the {endpoint} request"))
            }
        }
    }
}
