//! A split virtqueue driven from the driver side, for the vsock tests.

use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::tests::TIMEOUT;
use crate::device::ActivatedQueue;

/// A split queue seen from the driver side. (The shared mock places the
/// used ring over the second half of the available ring, which breaks once
/// more than half a ring of buffers has been posted, so this test keeps
/// its own correct layout.)
pub(super) struct DriverQueue {
    mem: &'static GuestMemoryMmap,
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    kick: EventFd,
}

impl DriverQueue {
    /// A zeroed queue of `size` at `base` and the device's view of it.
    pub(super) fn new(
        mem: &'static GuestMemoryMmap,
        index: u16,
        size: u16,
    ) -> (Self, ActivatedQueue) {
        let base = 0x1000 + u64::from(index) * 0x1_0000;
        mem.write_slice(&[0u8; 0x1_0000], GuestAddress(base))
            .unwrap();
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        let mut q = Queue::new(size).unwrap();
        q.set_size(size);
        q.set_desc_table_address(Some(desc as u32), Some(0));
        q.set_avail_ring_address(Some(avail as u32), Some(0));
        q.set_used_ring_address(Some(used as u32), Some(0));
        q.set_ready(true);
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        let dq = DriverQueue {
            mem,
            desc,
            avail,
            used,
            size,
            kick: notify.try_clone().unwrap(),
        };
        (
            dq,
            ActivatedQueue {
                index,
                queue: q,
                notify,
            },
        )
    }

    pub(super) fn store_raw(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.desc + 16 * u64::from(i));
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&d, at).unwrap();
    }

    pub(super) fn publish(&self, head: u16) {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.avail + 2)).unwrap();
        let slot = self.avail + 4 + 2 * u64::from(idx % self.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(self.avail + 2))
            .unwrap();
    }

    pub(super) fn notify(&self) {
        self.kick.write(1).unwrap();
    }

    pub(super) fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    pub(super) fn used(&self, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    pub(super) fn wait_used(&self, n: u16) -> bool {
        let start = Instant::now();
        while start.elapsed() < TIMEOUT {
            if self.used_idx() == n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }
}
