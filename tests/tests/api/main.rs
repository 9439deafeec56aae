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

mod bad_requests;
mod harness;
mod http;
mod lifecycle;
mod remote;
mod schemathesis;
