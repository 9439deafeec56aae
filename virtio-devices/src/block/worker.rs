//! The block device's queue handler, run on its worker thread.

use std::sync::Arc;

use log::warn;
use virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES;
use virtio_queue::Queue;
use vm_memory::GuestAddressSpace;

use super::disk::DiskImage;
use super::request::{process, RequestContext};
use super::BlockCounters;
use crate::device::{GuestMemory, VirtioInterrupt};
use crate::worker::chain::ChainBuffers;
use crate::worker::{drain_queue, HandlerError, QueueHandler};

/// Owns the disk and queues while the device is active.
pub(super) struct BlockHandler {
    pub mem: GuestMemory,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// `queues[i]` is queue `i` if the driver activated it.
    pub queues: Vec<Option<Queue>>,
    pub disk: Box<dyn DiskImage>,
    pub readonly: bool,
    pub discard: bool,
    pub capacity: u64,
    pub id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    pub counters: Arc<BlockCounters>,
    pub name: String,
}

impl QueueHandler for BlockHandler {
    fn on_broken(&mut self) {
        if let Err(e) = self.interrupt.trigger(crate::VirtioInterruptType::Config) {
            log::warn!("config interrupt lost: {e}");
        }
    }

    fn start(&mut self) -> Result<(), HandlerError> {
        // Serve anything posted before the driver's first kick.
        for i in 0..self.queues.len() {
            // Queue counts come from a u16, so this cannot truncate.
            self.handle_queue(i as u16)?;
        }
        Ok(())
    }

    fn handle_queue(&mut self, index: u16) -> Result<(), HandlerError> {
        let Some(Some(queue)) = self.queues.get_mut(usize::from(index)) else {
            return Ok(());
        };
        let guard = self.mem.memory();
        let mem = &*guard;
        let name = self.name.as_str();
        let mut ctx = RequestContext {
            disk: self.disk.as_mut(),
            readonly: self.readonly,
            discard: self.discard,
            capacity: self.capacity,
            id: &self.id,
            counters: &self.counters,
            name,
        };
        drain_queue(
            queue,
            mem,
            &*self.interrupt,
            index,
            |chain| match ChainBuffers::parse(chain) {
                Ok(bufs) => process(mem, &bufs, &mut ctx),
                Err(e) => {
                    warn!("{name}: dropping request: {e}");
                    0
                }
            },
        )
    }
}
