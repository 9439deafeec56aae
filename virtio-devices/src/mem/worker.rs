//! The virtio-mem worker: answers the driver's requests and gives
//! unplugged blocks back to the host.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};

use super::plug::Change;
use super::request::{Request, Response, REQUEST_SIZE, RESPONSE_SIZE};
use super::{lock, MemControl};
use crate::device::{GuestMemory, VirtioInterrupt, VirtioInterruptType};
use crate::discard;
use crate::worker::chain::ChainBuffers;
use crate::worker::{drain_queue, HandlerError, QueueHandler};

/// The worker side of a virtio-mem device.
pub struct MemHandler {
    pub(super) mem: GuestMemory,
    pub(super) interrupt: Arc<dyn VirtioInterrupt>,
    pub(super) queue: Queue,
    pub(super) control: Arc<MemControl>,
}

/// Applies `request` to the plug map; frees what was unplugged.
fn answer(control: &MemControl, mem: &GuestMemoryMmap, request: Request) -> Response {
    let counters = &control.counters;
    let change = {
        let mut map = lock(&control.map);
        match request {
            Request::Plug { addr, nb_blocks } => {
                map.plug(addr, nb_blocks, control.requested_bytes())
            }
            Request::Unplug { addr, nb_blocks } => map.unplug(addr, nb_blocks),
            Request::UnplugAll => map.unplug_all(),
            Request::State { addr, nb_blocks } => Change {
                response: map.state(addr, nb_blocks),
                freed: Vec::new(),
            },
            Request::Unknown(kind) => {
                log::debug!("virtio-mem: unknown request type {kind}");
                Change {
                    response: Response::Error,
                    freed: Vec::new(),
                }
            }
        }
    };
    for &(gpa, len) in &change.freed {
        let huge = control.options.huge_page_size;
        if let Err(e) = discard::discard(mem, gpa, len, huge) {
            counters.discard_errors.fetch_add(1, Ordering::Relaxed);
            log::warn!("virtio-mem: {e}");
        }
    }
    let counter = match (change.response, request) {
        (Response::Ack, Request::Plug { .. }) => &counters.plugs,
        (Response::Ack, Request::Unplug { .. } | Request::UnplugAll) => &counters.unplugs,
        (Response::Nack, _) => &counters.nacks,
        (Response::Error, _) => &counters.errors,
        _ => return change.response,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    change.response
}

/// Serves one chain: a request the device reads, a response it writes;
/// returns the bytes written.
fn serve(control: &MemControl, mem: &GuestMemoryMmap, bufs: &ChainBuffers) -> u32 {
    let counters = &control.counters;
    if bufs.writable_len() < RESPONSE_SIZE as u64 {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        log::warn!("virtio-mem: request without room for a response; dropped");
        return 0;
    }
    let mut raw = [0u8; REQUEST_SIZE];
    let response = match bufs.read_at(mem, 0, &mut raw) {
        Ok(()) => match Request::parse(&raw) {
            Some(req) => answer(control, mem, req),
            None => Response::Error,
        },
        Err(e) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            log::warn!("virtio-mem: short or unreadable request: {e}");
            Response::Error
        }
    };
    match bufs.write_at(mem, 0, &response.encode()) {
        Ok(()) => RESPONSE_SIZE as u32,
        Err(e) => {
            log::warn!("virtio-mem: writing a response: {e}");
            0
        }
    }
}

impl QueueHandler for MemHandler {
    fn start(&mut self) -> Result<(), HandlerError> {
        self.handle_queue(0)
    }

    fn handle_queue(&mut self, index: u16) -> Result<(), HandlerError> {
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let control = &*self.control;
        drain_queue(
            &mut self.queue,
            mem,
            &*self.interrupt,
            index,
            |chain| match ChainBuffers::parse(chain) {
                Ok(bufs) => serve(control, mem, &bufs),
                Err(e) => {
                    control.counters.errors.fetch_add(1, Ordering::Relaxed);
                    log::warn!("virtio-mem: dropping request: {e}");
                    0
                }
            },
        )
    }

    fn on_broken(&mut self) {
        if let Err(e) = self.interrupt.trigger(VirtioInterruptType::Config) {
            log::warn!("virtio-mem: config interrupt lost: {e}");
        }
    }
}
