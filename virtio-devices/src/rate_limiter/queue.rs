//! Serving a queue under a [`RateLimiter`]: like
//! [`crate::worker::drain_queue`], but each chain is charged before it is
//! processed and, when the budget is exhausted, the chain is put back and
//! the remaining ones stay in the avail ring until the limiter's timer
//! fires.

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory as GuestMemoryT;

use super::RateLimiter;
use crate::device::VirtioInterrupt;
use crate::worker::chain::{ChainBuffers, ChainError};
use crate::worker::{notify_queue, HandlerError};

/// Pops, charges and completes chains of `queue` until it is empty or
/// `limiter` runs out of budget, then notifies the driver if anything was
/// used. `cost` gives the payload bytes of a parsed chain (one operation
/// is charged too); chains that do not parse are passed to `process`
/// uncharged. `process` returns the used length.
///
/// While throttled, guest notifications stay disabled (the timer, not
/// the driver, restarts the queue), so a busy guest does not kick in vain.
pub fn drain_queue_limited<M, C, F>(
    queue: &mut Queue,
    mem: &M,
    interrupt: &dyn VirtioInterrupt,
    index: u16,
    limiter: &mut RateLimiter,
    mut cost: C,
    mut process: F,
) -> Result<(), HandlerError>
where
    M: GuestMemoryT,
    C: FnMut(&ChainBuffers) -> u64,
    F: FnMut(Result<ChainBuffers, ChainError>) -> u32,
{
    if limiter.is_blocked() {
        return Ok(());
    }
    let mut added = false;
    let mut budget = crate::worker::drain_budget(queue);
    loop {
        queue.disable_notification(mem)?;
        while let Some(chain) = crate::worker::pop_available(queue, mem, index)? {
            let head = chain.head_index();
            let parsed = ChainBuffers::parse(chain);
            if let Ok(bufs) = &parsed {
                if !limiter.consume_request(cost(bufs)) {
                    // Leave this chain (and those after it) available.
                    queue.go_to_previous_position();
                    if added {
                        notify_queue(queue, mem, interrupt, index)?;
                    }
                    return Ok(());
                }
            }
            let len = process(parsed);
            queue.add_used(mem, head, len)?;
            added = true;
            budget -= 1;
            if budget == 0 {
                notify_queue(queue, mem, interrupt, index)?;
                return Err(HandlerError::Requeue(index));
            }
        }
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    if added {
        notify_queue(queue, mem, interrupt, index)?;
    }
    Ok(())
}
