//! virtio-console: a hvc console on a host tty or file (virtio 1.2 §5.3).
//!
//! Only port 0 (receiveq 0, transmitq 1; no MULTIPORT). Guest output goes to
//! a host writer; host input comes from a polled fd (a tty or pipe) and/or
//! [`ConsoleInput::enqueue`], through a bounded buffer that holds bytes
//! while the guest has no receive buffer posted.

mod input;
mod worker;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use serde::{Deserialize, Serialize};

use crate::device::{
    state_from_value, state_to_value, ActivateError, ActivatedQueue, GuestMemory, PausedQueue,
    VirtioDevice, VirtioInterrupt,
};
use crate::worker::{
    prepare_queues, spawn_worker, stop_for_pause, worker_broken, ThreadSetup, WorkerHandle,
};

pub use input::{ConsoleInput, INPUT_BUFFER_BYTES};
use worker::ConsoleHandler;

/// Feature bit: `cols`/`rows` in config space are valid.
pub const VIRTIO_CONSOLE_F_SIZE: u32 = 0;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue (host to guest).
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue (guest to host).
pub const TX_QUEUE: u16 = 1;

/// Version of [`ConsoleState`] this code writes and reads.
pub const CONSOLE_STATE_VERSION: u32 = 1;

/// The saved state of the console: accepted features and host input not
/// yet delivered to the guest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ConsoleState {
    /// Format version ([`CONSOLE_STATE_VERSION`]).
    pub version: u32,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// Buffered host input (at most [`INPUT_BUFFER_BYTES`]).
    pub pending_input: Vec<u8>,
}

/// Errors creating the console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The input wake-up eventfd could not be created.
    #[error("cannot create console input event: {0}")]
    Event(std::io::Error),
}

/// The virtio console device.
pub struct VirtioConsole {
    output: Option<Box<dyn Write + Send>>,
    input_fd: Option<File>,
    input: ConsoleInput,
    size: Option<(u16, u16)>,
    acked: u64,
    setup: Option<ThreadSetup>,
    worker: Option<WorkerHandle<ConsoleHandler>>,
    /// A queue broke before a pause (the worker's flag goes with it).
    broken: bool,
}

impl VirtioConsole {
    /// A console writing guest output to `output` (dropped if `None`) and
    /// reading host input from `input` (a tty or pipe, polled by the
    /// worker). If `input` is a tty its size is offered (F_SIZE).
    pub fn new(
        output: Option<Box<dyn Write + Send>>,
        input: Option<File>,
    ) -> Result<Self, ConsoleError> {
        let size = input.as_ref().and_then(tty_size);
        Ok(VirtioConsole {
            output,
            input_fd: input,
            input: ConsoleInput::new().map_err(ConsoleError::Event)?,
            size,
            acked: 0,
            setup: None,
            worker: None,
            broken: false,
        })
    }

    /// Hook run first on every worker thread (seccomp filter install).
    pub fn set_thread_setup(&mut self, setup: ThreadSetup) {
        self.setup = Some(setup);
    }

    /// A handle to push host input to the guest from any thread.
    pub fn input(&self) -> ConsoleInput {
        self.input.clone()
    }

    fn config_bytes(&self) -> [u8; 12] {
        let (cols, rows) = self.size.unwrap_or((0, 0));
        let mut c = [0u8; 12];
        c[0..2].copy_from_slice(&cols.to_le_bytes());
        c[2..4].copy_from_slice(&rows.to_le_bytes());
        // max_nr_ports (valid only with MULTIPORT) and emerg_wr stay 0.
        c
    }
}

/// Columns and rows of the terminal behind `file`, if it is one.
fn tty_size(file: &File) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` to the pointer, which points
    // to a live, correctly typed local; the fd is owned by `file`.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (ret == 0 && ws.ws_col != 0).then_some((ws.ws_col, ws.ws_row))
}

impl VirtioDevice for VirtioConsole {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX);
        if self.size.is_some() {
            f |= 1 << VIRTIO_CONSOLE_F_SIZE;
        }
        f
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| cfg.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // emerg_wr needs VIRTIO_CONSOLE_F_EMERG_WRITE, which is not offered.
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::Device("already active".into()));
        }
        let event_idx = self.acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let (mut slots, notifies) = prepare_queues(queues, 2, &mem, event_idx)?;
        let tx = slots.pop().flatten();
        let rx = slots.pop().flatten();
        let input_fd = match &self.input_fd {
            Some(f) => Some(f.try_clone().map_err(ActivateError::Worker)?),
            None => None,
        };
        let handler = ConsoleHandler::new(
            mem,
            interrupt,
            rx,
            tx,
            self.output.take(),
            input_fd,
            self.input.clone(),
        );
        match spawn_worker(self.name(), self.setup.clone(), notifies, handler) {
            Ok(w) => {
                self.worker = Some(w);
                Ok(())
            }
            Err(e) => {
                if let Some(h) = e.handler {
                    self.output = h.into_output();
                }
                Err(ActivateError::Device(e.error.to_string()))
            }
        }
    }

    fn reset(&mut self) -> bool {
        self.acked = 0;
        self.broken = false;
        match self.worker.take() {
            Some(w) => match w.stop() {
                Ok(h) => {
                    self.output = h.into_output();
                    true
                }
                Err(e) => {
                    log::error!("virtio-console: {e}");
                    false
                }
            },
            None => true,
        }
    }

    fn name(&self) -> &str {
        "virtio-console"
    }

    fn needs_reset(&self) -> bool {
        worker_broken(self.broken, &self.worker)
    }

    fn pause(&mut self) -> Result<Vec<PausedQueue>, ActivateError> {
        let Some((h, broken)) = stop_for_pause(&mut self.worker, "virtio-console")? else {
            return Ok(Vec::new());
        };
        self.broken |= broken;
        // Buffered input lives in `self.input`, shared with the handler.
        let (output, rx, tx) = h.into_parts();
        self.output = output;
        let queues = [(RX_QUEUE, rx), (TX_QUEUE, tx)];
        Ok(queues
            .into_iter()
            .filter_map(|(index, q)| q.map(|queue| PausedQueue { index, queue }))
            .collect())
    }

    fn snapshot_state(&self) -> serde_json::Value {
        state_to_value(&ConsoleState {
            version: CONSOLE_STATE_VERSION,
            acked_features: self.acked,
            pending_input: self.input.peek_all(),
        })
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), ActivateError> {
        let s = state_from_value(
            "virtio-console",
            state,
            CONSOLE_STATE_VERSION,
            |s: &ConsoleState| s.version,
        )?;
        let bad = |m: String| Err(ActivateError::State(format!("virtio-console: {m}")));
        if s.acked_features & !self.features() != 0 {
            return bad(format!("features {:#x} not offered", s.acked_features));
        }
        if s.pending_input.len() > self.input.room() {
            return bad(format!(
                "{} bytes of input do not fit the buffer",
                s.pending_input.len()
            ));
        }
        self.acked = s.acked_features;
        self.input.enqueue(&s.pending_input);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
