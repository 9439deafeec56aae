//! The vsock device's queue handler, run on its worker thread: feeds guest
//! TX packets to the [`Muxer`] and fills the RX queue with the packets it
//! produces. The event queue only carries the transport reset sent after a
//! snapshot restore (host connections do not survive one).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use log::{error, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddressSpace;

use super::muxer::{Muxer, MAX_PKT_PAYLOAD};
use super::packet::{Header, HDR_LEN};
use crate::device::{GuestMemory, VirtioInterrupt, VirtioInterruptType};
use crate::worker::chain::ChainBuffers;
use crate::worker::{drain_queue, notify_queue, HandlerError, QueueHandler};

/// Queue indices (virtio 1.2 §5.10.2).
pub(super) const RX_QUEUE: u16 = 0;
pub(super) const TX_QUEUE: u16 = 1;
pub(super) const EVENT_QUEUE: u16 = 2;
/// `virtio_vsock_event.id` of a transport reset (virtio 1.2 §5.10.6.7).
pub(super) const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
/// Bytes of `struct virtio_vsock_event`.
const EVENT_LEN: u32 = 4;

/// Owns the queues and the backend while the device is active.
pub(super) struct VsockHandler {
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    rx: Option<Queue>,
    tx: Option<Queue>,
    /// Holds the driver's event buffers until one is needed.
    event: Option<Queue>,
    /// Send a transport reset event when the worker starts.
    reset_event: bool,
    pub(super) mux: Muxer,
    /// The guest has no RX buffers: wait for its kick.
    rx_blocked: bool,
    payload: Vec<u8>,
    broken: Arc<AtomicBool>,
}

impl VsockHandler {
    /// `slots` are the rx, tx and event queues.
    pub(super) fn new(
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        slots: Vec<Option<Queue>>,
        mux: Muxer,
        broken: Arc<AtomicBool>,
    ) -> Self {
        let mut it = slots.into_iter();
        VsockHandler {
            mem,
            interrupt,
            rx: it.next().flatten(),
            tx: it.next().flatten(),
            event: it.next().flatten(),
            reset_event: false,
            mux,
            rx_blocked: false,
            payload: vec![0u8; MAX_PKT_PAYLOAD],
            broken,
        }
    }

    /// Takes the handler apart at a pause: the rx, tx and event queues and
    /// the backend (whose connections survive the pause).
    pub(super) fn into_parts(self) -> (Vec<Option<Queue>>, Muxer) {
        (vec![self.rx, self.tx, self.event], self.mux)
    }

    /// Asks for a transport reset event once the worker starts.
    pub(super) fn request_reset_event(&mut self) {
        self.reset_event = true;
    }

    /// Puts a TRANSPORT_RESET event in the driver's first event buffer, if
    /// it posted one (otherwise there is no way to tell it; logged).
    fn send_reset_event(&mut self) -> Result<(), HandlerError> {
        let Some(queue) = self.event.as_mut() else {
            warn!("virtio-vsock: no event queue for the transport reset");
            return Ok(());
        };
        let guard = self.mem.memory();
        let mem = &*guard;
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            warn!("virtio-vsock: no event buffer for the transport reset");
            return Ok(());
        };
        let head = chain.head_index();
        let len = match ChainBuffers::parse(chain) {
            Ok(b) if b.writable_len() >= u64::from(EVENT_LEN) => {
                let id = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes();
                match b.write_at(mem, 0, &id) {
                    Ok(()) => EVENT_LEN,
                    Err(e) => {
                        warn!("virtio-vsock: event buffer: {e}");
                        0
                    }
                }
            }
            _ => {
                warn!("virtio-vsock: unusable event buffer");
                0
            }
        };
        queue.add_used(mem, head, len)?;
        notify_queue(queue, mem, &*self.interrupt, EVENT_QUEUE)
    }

    /// Processes every packet the guest queued for transmission.
    fn process_tx(&mut self) -> Result<(), HandlerError> {
        let Some(queue) = self.tx.as_mut() else {
            return Ok(());
        };
        let guard = self.mem.memory();
        let mem = &*guard;
        let (mux, payload) = (&mut self.mux, &mut self.payload);
        drain_queue(queue, mem, &*self.interrupt, TX_QUEUE, |chain| {
            let Ok(bufs) = ChainBuffers::parse(chain) else {
                return 0;
            };
            let mut raw = [0u8; HDR_LEN];
            if bufs.readable_len() < HDR_LEN as u64 || bufs.read_at(mem, 0, &mut raw).is_err() {
                return 0;
            }
            let hdr = Header::from_bytes(&raw);
            let len = hdr.len as usize;
            let room = bufs.readable_len() - HDR_LEN as u64;
            if len > MAX_PKT_PAYLOAD || len as u64 > room {
                mux.handle_bad_packet(&hdr);
                return 0;
            }
            let data = &mut payload[..len];
            if bufs.read_at(mem, HDR_LEN as u64, data).is_err() {
                mux.handle_bad_packet(&hdr);
                return 0;
            }
            mux.handle_guest_packet(&hdr, data);
            0
        })
    }

    /// Pops the next RX chain; when none is available, re-arms the
    /// notification and retries once (so no kick is missed).
    fn pop_rx<'m, M: vm_memory::GuestMemory>(
        queue: &mut Queue,
        mem: &'m M,
    ) -> Result<Option<virtio_queue::DescriptorChain<&'m M>>, HandlerError> {
        if let Some(c) = queue.pop_descriptor_chain(mem) {
            return Ok(Some(c));
        }
        if queue.enable_notification(mem)? {
            return Ok(queue.pop_descriptor_chain(mem));
        }
        Ok(None)
    }

    /// Moves pending packets into the guest's RX buffers until either runs
    /// out.
    fn process_rx(&mut self) -> Result<(), HandlerError> {
        let Some(queue) = self.rx.as_mut() else {
            return Ok(());
        };
        if self.rx_blocked {
            return Ok(());
        }
        let guard = self.mem.memory();
        let mem = &*guard;
        let mut used = false;
        while self.mux.has_rx() {
            let Some(chain) = Self::pop_rx(queue, mem)? else {
                self.rx_blocked = true;
                break;
            };
            let head = chain.head_index();
            let bufs = match ChainBuffers::parse(chain) {
                Ok(b) if b.writable_len() >= HDR_LEN as u64 => b,
                _ => {
                    // Unusable buffer: give it back empty.
                    queue.add_used(mem, head, 0)?;
                    used = true;
                    continue;
                }
            };
            match self.mux.fill_rx(mem, &bufs) {
                Some(len) => {
                    queue.add_used(mem, head, len)?;
                    used = true;
                }
                None => {
                    // Nothing to send after all: the chain stays available.
                    queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                    break;
                }
            }
        }
        if used {
            notify_queue(queue, mem, &*self.interrupt, RX_QUEUE)?;
        }
        Ok(())
    }
}

impl QueueHandler for VsockHandler {
    fn start(&mut self) -> Result<(), HandlerError> {
        if std::mem::take(&mut self.reset_event) {
            self.send_reset_event()?;
        }
        self.process_tx()?;
        self.process_rx()
    }

    fn handle_queue(&mut self, index: u16) -> Result<(), HandlerError> {
        match index {
            RX_QUEUE => {
                self.rx_blocked = false;
                self.process_rx()
            }
            TX_QUEUE => {
                self.process_tx()?;
                self.process_rx()
            }
            // Nothing is ever sent on the event queue.
            EVENT_QUEUE => Ok(()),
            _ => Ok(()),
        }
    }

    fn extra_fds(&self) -> Vec<RawFd> {
        vec![self.mux.epoll_fd()]
    }

    fn handle_fd(&mut self, _id: usize) -> Result<(), HandlerError> {
        self.mux.handle_events();
        if let Err(e) = self.process_rx() {
            // A broken RX ring must stop the device, not just the fd.
            error!("virtio-vsock: rx queue: {e}; device needs reset");
            self.rx = None;
            self.broken.store(true, Ordering::Release);
            self.on_broken();
        }
        Ok(())
    }

    fn on_broken(&mut self) {
        if let Err(e) = self.interrupt.trigger(VirtioInterruptType::Config) {
            warn!("virtio-vsock: config interrupt lost: {e}");
        }
    }
}
