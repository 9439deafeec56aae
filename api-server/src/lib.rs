//! Cloud Hypervisor-compatible HTTP/1.1 API server on a Unix socket.
//!
//! This crate does HTTP and routing only: it knows nothing of VM types. The
//! "api" thread ([`start_server`]) accepts connections on the API socket
//! ([`listener_from_arg`]), frames requests, maps `/api/v1/<name>` to an
//! [`Endpoint`] and checks the method, then hands an [`ApiRequest`] (endpoint
//! and raw body) to the VMM over a channel, wakes the VMM's epoll loop through
//! an `EventFd`, and waits for the [`ApiResponse`] the VMM sends back on the
//! request's own channel. The VMM decodes the JSON bodies and builds the
//! response bodies. The one exception is `vmm.ping`: when the VMM hands
//! its (constant) body over in [`ServerOptions::ping_body`], the api thread
//! answers pings itself, so they are answered while the VMM is busy
//! building a VM.

mod endpoint;
mod http;
mod listener;
mod server;

use std::path::PathBuf;
use std::sync::mpsc::Sender;

pub use endpoint::{Endpoint, Method, API_PREFIX};
pub use listener::listener_from_arg;
pub use server::{start_server, start_server_with_options, ServerOptions, ThreadSetup};

/// One routed API call, sent from the api thread to the VMM.
#[derive(Debug)]
pub struct ApiRequest {
    /// The endpoint called; its method has already been checked.
    pub endpoint: Endpoint,
    /// The raw request body (JSON for the endpoints that take one; may be
    /// empty). The VMM decodes and validates it.
    pub body: Vec<u8>,
    /// File descriptors the client sent with the request (SCM_RIGHTS), in
    /// order: tap fds for `vm.add-net` and `vm.restore`'s `net_fds`. The VMM
    /// takes what it needs; the rest are closed when the request is dropped.
    pub fds: Vec<std::os::fd::OwnedFd>,
    /// Where the VMM sends the answer. Exactly one answer is expected; if the
    /// sender is dropped unanswered the client gets 500.
    pub respond: Sender<ApiResponse>,
    /// Signalled (or disconnected) once the answer has been written to the
    /// client's socket: the VMM waits for it before exiting after
    /// `vmm.shutdown`, so the client gets its answer.
    pub written: std::sync::mpsc::Receiver<()>,
}

/// The VMM's answer to an [`ApiRequest`].
///
/// Every body is JSON: a 2xx body is the endpoint's answer, an error body
/// is Cloud Hypervisor's error chain, a JSON array of strings with the
/// outermost error first (`ch-remote` prints it that way). A 204 never
/// carries a body. A status outside 200..=599 is sent as 500.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiResponse {
    /// The HTTP status code.
    pub status: u16,
    /// JSON text: the answer (2xx) or the error chain (4xx/5xx).
    pub body: Option<String>,
}

impl ApiResponse {
    /// 200 OK with a JSON body.
    pub fn ok_json(body: String) -> Self {
        ApiResponse {
            status: 200,
            body: Some(body),
        }
    }

    /// 204 No Content: the action succeeded and there is nothing to return.
    pub fn no_content() -> Self {
        ApiResponse {
            status: 204,
            body: None,
        }
    }

    /// An error status with a one-message error chain.
    pub fn error(status: u16, msg: impl Into<String>) -> Self {
        Self::error_chain(status, &[msg.into()])
    }

    /// An error status with an error chain, outermost error first.
    pub fn error_chain<S: AsRef<str>>(status: u16, chain: &[S]) -> Self {
        let chain: Vec<&str> = chain.iter().map(AsRef::as_ref).collect();
        // A list of strings always encodes.
        let body = serde_json::to_string(&chain).unwrap_or_else(|_| "[]".to_string());
        ApiResponse {
            status,
            body: Some(body),
        }
    }

    /// An error status whose chain is `err` followed by its sources.
    pub fn from_error(status: u16, err: &dyn std::error::Error) -> Self {
        let mut chain = vec![err.to_string()];
        let mut source = err.source();
        while let Some(e) = source {
            chain.push(e.to_string());
            source = e.source();
        }
        Self::error_chain(status, &chain)
    }

    /// The messages of an error response's chain (empty for a success or a
    /// body that is not an error chain).
    pub fn error_messages(&self) -> Vec<String> {
        if (200..300).contains(&self.status) {
            return Vec::new();
        }
        self.body
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or_default()
    }
}

/// Errors setting up the API socket or the api thread.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The `--api-socket` value is not `path=PATH`, `PATH` or `fd=N`.
    #[error("invalid API socket argument {0:?}: expected path=PATH, PATH or fd=N")]
    InvalidArg(String),
    /// Another process is listening on the socket path.
    #[error("API socket {0} is in use by another process")]
    InUse(PathBuf),
    /// The path exists and is not a socket; it is left alone.
    #[error("API socket path {0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Checking or removing a stale socket file failed.
    #[error("cannot remove stale API socket {path}: {source}")]
    Stale {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Binding the socket path failed.
    #[error("cannot bind API socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The inherited descriptor is not a listening Unix stream socket.
    #[error("fd {fd} cannot be used as the API socket: {reason}")]
    BadFd {
        /// The descriptor number.
        fd: i32,
        /// Why it was refused.
        reason: String,
    },
    /// Setting up the listener, the epoll instance or the thread failed.
    #[error("API server setup failed: {0}")]
    Io(#[source] std::io::Error),
    /// The thread setup closure (seccomp) failed; the server did not start.
    #[error("API thread setup failed: {0}")]
    ThreadSetup(String),
}
