//! The console's queue handler: transmit to the host writer, receive from
//! the input buffer (fed by the polled input fd and [`ConsoleInput`]).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use log::warn;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddressSpace;

use super::input::ConsoleInput;
use super::{RX_QUEUE, TX_QUEUE};
use crate::device::{GuestMemory, VirtioInterrupt};
use crate::worker::chain::ChainBuffers;
use crate::worker::{drain_queue, notify_queue, HandlerError, QueueHandler};

/// Bytes copied per step from guest memory to the writer.
const TX_CHUNK: usize = 4096;
/// Extra fd ids.
const FD_WAKE: usize = 0;
const FD_INPUT: usize = 1;

/// Serves the console queues on its worker thread.
pub(super) struct ConsoleHandler {
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    rx: Option<Queue>,
    tx: Option<Queue>,
    output: Option<Box<dyn Write + Send>>,
    input_fd: Option<File>,
    input_closed: bool,
    input: ConsoleInput,
}

impl ConsoleHandler {
    pub(super) fn new(
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        rx: Option<Queue>,
        tx: Option<Queue>,
        output: Option<Box<dyn Write + Send>>,
        input_fd: Option<File>,
        input: ConsoleInput,
    ) -> Self {
        ConsoleHandler {
            mem,
            interrupt,
            rx,
            tx,
            output,
            input_fd,
            input_closed: false,
            input,
        }
    }

    /// Gives the writer back (device reset).
    pub(super) fn into_output(self) -> Option<Box<dyn Write + Send>> {
        self.output
    }

    /// Gives the writer and the receive and transmit queues back (pause).
    #[allow(clippy::type_complexity)]
    pub(super) fn into_parts(
        self,
    ) -> (Option<Box<dyn Write + Send>>, Option<Queue>, Option<Queue>) {
        (self.output, self.rx, self.tx)
    }

    /// Sends every transmit chain's bytes to the output.
    fn transmit(&mut self) -> Result<(), HandlerError> {
        let Some(queue) = self.tx.as_mut() else {
            return Ok(());
        };
        let guard = self.mem.memory();
        let mem = &*guard;
        let output = &mut self.output;
        let mut buf = [0u8; TX_CHUNK];
        drain_queue(queue, mem, &*self.interrupt, TX_QUEUE, |chain| {
            let bufs = match ChainBuffers::parse(chain) {
                Ok(b) => b,
                Err(e) => {
                    warn!("virtio-console: dropping tx chain: {e}");
                    return 0;
                }
            };
            let mut off = 0u64;
            while off < bufs.readable_len() {
                let n = (bufs.readable_len() - off).min(TX_CHUNK as u64) as usize;
                if let Err(e) = bufs.read_at(mem, off, &mut buf[..n]) {
                    warn!("virtio-console: tx: {e}");
                    break;
                }
                if let Some(out) = output.as_mut() {
                    if let Err(e) = out.write_all(&buf[..n]) {
                        warn!("virtio-console: output write failed: {e}");
                        break;
                    }
                }
                off += n as u64;
            }
            if let Some(out) = output.as_mut() {
                let _ = out.flush();
            }
            // Nothing is written to device-writable buffers.
            0
        })
    }

    /// Moves buffered input into posted receive buffers.
    fn receive(&mut self) -> Result<(), HandlerError> {
        let Some(queue) = self.rx.as_mut() else {
            return Ok(());
        };
        let guard = self.mem.memory();
        let mem = &*guard;
        let mut added = false;
        while !self.input.is_empty() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let used = match ChainBuffers::parse(chain) {
                Ok(bufs) => {
                    let cap = bufs.writable_len().min(u64::from(u32::MAX)) as usize;
                    let bytes = self.input.take(cap);
                    match bufs.write_at(mem, 0, &bytes) {
                        // At most u32::MAX bytes were taken.
                        Ok(()) => bytes.len() as u32,
                        Err(e) => {
                            warn!("virtio-console: rx: {e}");
                            self.input.unget(&bytes);
                            0
                        }
                    }
                }
                Err(e) => {
                    warn!("virtio-console: dropping rx chain: {e}");
                    0
                }
            };
            queue.add_used(mem, head, used)?;
            added = true;
        }
        // Re-arm the driver's kicks (EVENT_IDX: avail_event = next_avail).
        queue.enable_notification(mem)?;
        if added {
            notify_queue(queue, mem, &*self.interrupt, RX_QUEUE)?;
        }
        Ok(())
    }

    /// Reads what the input fd has (one read: epoll said it is readable).
    fn read_input(&mut self) -> Result<(), HandlerError> {
        let room = self.input.room();
        let Some(fd) = self.input_fd.as_mut() else {
            return Ok(());
        };
        if room == 0 {
            return Ok(());
        }
        let mut buf = vec![0u8; room.min(4096)];
        match fd.read(&mut buf) {
            Ok(0) => self.input_closed = true,
            Ok(n) => {
                self.input.push(&buf[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => {
                warn!("virtio-console: input read failed: {e}; input closed");
                self.input_closed = true;
            }
        }
        self.receive_or_stop();
        Ok(())
    }

    /// Receives outside a receiveq kick: a ring error stops the receiveq.
    fn receive_or_stop(&mut self) {
        if let Err(e) = self.receive() {
            warn!("virtio-console: receiveq: {e}; stopped until reset");
            self.rx = None;
        }
    }
}

impl QueueHandler for ConsoleHandler {
    fn on_broken(&mut self) {
        if let Err(e) = self.interrupt.trigger(crate::VirtioInterruptType::Config) {
            log::warn!("config interrupt lost: {e}");
        }
    }

    fn start(&mut self) -> Result<(), HandlerError> {
        self.transmit()?;
        self.receive()
    }

    fn handle_queue(&mut self, index: u16) -> Result<(), HandlerError> {
        match index {
            RX_QUEUE => self.receive(),
            TX_QUEUE => self.transmit(),
            _ => Ok(()),
        }
    }

    fn extra_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.input.wake_fd()];
        if let Some(f) = &self.input_fd {
            fds.push(f.as_raw_fd());
        }
        fds
    }

    fn fd_wanted(&self, id: usize) -> bool {
        match id {
            FD_WAKE => true,
            // Back-pressure: leave host input in the tty while full.
            FD_INPUT => !self.input_closed && self.input.room() > 0,
            _ => false,
        }
    }

    fn handle_fd(&mut self, id: usize) -> Result<(), HandlerError> {
        match id {
            FD_WAKE => {
                self.input.clear_wake();
                self.receive_or_stop();
                Ok(())
            }
            FD_INPUT => self.read_input(),
            _ => Ok(()),
        }
    }
}
