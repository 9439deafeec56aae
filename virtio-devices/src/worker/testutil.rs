//! Test harness: guest memory, driver-side mock queues and a recording
//! interrupt, to drive devices in-process.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{ActivatedQueue, GuestMemory, VirtioInterrupt, VirtioInterruptType};

/// Size of the test guest memory.
pub const MEM_SIZE: u64 = 0x100_0000;
/// First address free for data buffers.
pub const DATA: u64 = 0x10_0000;

/// `len` bytes of guest RAM at `base` backed by a fresh memfd.
fn memfd_region(base: u64, len: u64) -> vm_memory::GuestRegionMmap {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a NUL-terminated name; the fd is new.
    let fd = unsafe { libc::memfd_create(c"chv-test-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: the fd was just created and nothing else owns it.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(len).unwrap();
    vm_memory::GuestRegionMmap::from_range(
        GuestAddress(base),
        len as usize,
        Some(vm_memory::FileOffset::new(file, 0)),
    )
    .unwrap()
}

/// Records every interrupt raised.
#[derive(Default)]
pub struct TestInterrupt {
    pub seen: Mutex<Vec<VirtioInterruptType>>,
}

impl TestInterrupt {
    /// Waits (up to 60 s: emulated runs are slow) until an interrupt that
    /// `matches` has been raised. The device publishes a used buffer before
    /// it signals, so a test that saw the buffer must wait for the signal.
    pub fn wait_for(&self, matches: impl Fn(&VirtioInterruptType) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if self.seen.lock().unwrap().iter().any(&matches) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }
}

impl VirtioInterrupt for TestInterrupt {
    fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()> {
        self.seen.lock().unwrap().push(kind);
        Ok(())
    }
}

/// Where the used ring of a split queue whose available ring starts at
/// `avail` begins: after the flags, index, `size` entries and used_event,
/// aligned to 4 (virtio 1.2 §2.7). virtio-queue's mock puts it `size`
/// *bytes* after the available ring's entries start, so from entry 8 on
/// the two rings overlap; [`TestQueue`] uses this address instead.
fn used_ring_after(avail: GuestAddress, size: u16) -> GuestAddress {
    let end = avail.0 + 4 + 2 * u64::from(size) + 2;
    GuestAddress(end.next_multiple_of(4))
}

/// One queue seen from the driver side.
pub struct TestQueue {
    /// Descriptor table and available ring (its used ring is not used).
    pub mock: MockSplitQueue<'static, GuestMemoryMmap>,
    pub kick: EventFd,
    mem: &'static GuestMemoryMmap,
    used_ring: GuestAddress,
    next_desc: u16,
    size: u16,
}

impl TestQueue {
    /// A zeroed queue of `size` at `base` in `mem`, kicked through `kick`.
    pub fn at(mem: &'static GuestMemoryMmap, base: u64, size: u16, kick: EventFd) -> Self {
        mem.write_slice(&[0u8; 0x1_0000], GuestAddress(base))
            .unwrap();
        let mock = MockSplitQueue::create(mem, GuestAddress(base), size);
        TestQueue {
            used_ring: used_ring_after(mock.avail_addr(), size),
            mock,
            kick,
            mem,
            next_desc: 0,
            size,
        }
    }

    /// Guest address of the used ring.
    pub fn used_addr(&self) -> u64 {
        self.used_ring.0
    }

    /// The device-side queue over these rings, ready as a driver leaves it.
    fn device_queue(&self) -> Queue {
        use virtio_queue::QueueT;
        let mut queue: Queue = self.mock.create_queue().unwrap();
        let used = self.used_ring.0;
        queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        assert!(queue.is_valid(self.mem));
        queue
    }

    /// Adds a chain of `(addr, len, device_writable)` buffers; returns its head.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let n = bufs.len() as u16;
        if self.next_desc + n > self.size {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let i = i as u16;
                let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < n {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, head + i + 1))
            })
            .collect();
        self.mock.add_desc_chains(&descs, head).unwrap();
        self.next_desc += n;
        head
    }

    /// Stores raw descriptors at table index `at` without publishing them.
    pub fn store_raw(&self, at: u16, desc: SplitDescriptor) {
        self.mock
            .desc_table()
            .store(at, RawDescriptor::from(desc))
            .unwrap();
    }

    /// Publishes descriptor `head` in the available ring.
    pub fn publish(&self, head: u16) {
        let avail = self.mock.avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx % self.size))
            .unwrap()
            .store(head);
        avail.idx().store(idx.wrapping_add(1));
    }

    /// Notifies the device.
    pub fn notify(&self) {
        self.kick.write(1).unwrap();
    }

    /// Used ring index.
    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj::<u16>(self.used_ring.unchecked_add(2))
            .unwrap()
    }

    /// Used element `i`: (descriptor head, written length).
    pub fn used(&self, i: u16) -> (u32, u32) {
        let at = self
            .used_ring
            .unchecked_add(4 + 8 * u64::from(i % self.size));
        let id = self.mem.read_obj::<u32>(at).unwrap();
        let len = self.mem.read_obj::<u32>(at.unchecked_add(4)).unwrap();
        (u32::from_le(id), u32::from_le(len))
    }

    /// Waits until the used index reaches `n`: polls, so a passing test
    /// returns as soon as the device is done; the 60 s bound only ends a
    /// failing one (emulated CI machines, e.g. aarch64 under QEMU, can
    /// stall a worker thread for seconds).
    pub fn wait_used(&self, n: u16) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if self.used_idx() == n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }
}

/// Guest memory (leaked; shared with the atomic view) plus `n` queues of
/// `size`, and the matching [`ActivatedQueue`]s for the device.
pub struct TestVm {
    pub mem: &'static GuestMemoryMmap,
    pub atomic: GuestMemory,
    pub interrupt: Arc<TestInterrupt>,
}

impl TestVm {
    /// New guest memory.
    pub fn new() -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let atomic = GuestMemoryAtomic::new(mem.clone());
        TestVm {
            mem: Box::leak(Box::new(mem)),
            atomic,
            interrupt: Arc::new(TestInterrupt::default()),
        }
    }

    /// New guest memory backed by a memfd (as `memory.shared=on` makes
    /// it), so a vhost-user backend can map it.
    pub fn shared() -> Self {
        let mem = GuestMemoryMmap::from_regions(vec![memfd_region(0, MEM_SIZE)]).unwrap();
        let atomic = GuestMemoryAtomic::new(mem.clone());
        TestVm {
            mem: Box::leak(Box::new(mem)),
            atomic,
            interrupt: Arc::new(TestInterrupt::default()),
        }
    }

    /// Hot-adds `len` bytes of memfd-backed RAM at `base` to the shared
    /// map (as ACPI memory hotplug does); returns the new map. `mem` keeps
    /// the boot RAM only: [`Self::read`] and [`Self::write`] see both.
    pub fn hot_add(&self, base: u64, len: u64) -> GuestMemoryMmap {
        let grown = self
            .atomic
            .memory()
            .insert_region(Arc::new(memfd_region(base, len)))
            .unwrap();
        self.atomic.lock().unwrap().replace(grown.clone());
        grown
    }

    /// Fresh driver queues (rings zeroed) for `n` queues of `size`.
    pub fn queues(&self, n: u16, size: u16) -> (Vec<TestQueue>, Vec<ActivatedQueue>) {
        let mut tq = Vec::new();
        let mut aq = Vec::new();
        for i in 0..n {
            let base = 0x1000 + u64::from(i) * 0x1_0000;
            let notify = EventFd::new(EFD_NONBLOCK).unwrap();
            let driver = TestQueue::at(self.mem, base, size, notify.try_clone().unwrap());
            let queue = driver.device_queue();
            tq.push(driver);
            aq.push(ActivatedQueue {
                index: i,
                queue,
                notify,
            });
        }
        (tq, aq)
    }

    /// Reads `len` bytes of guest memory at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.atomic
            .memory()
            .read_slice(&mut v, GuestAddress(addr))
            .unwrap();
        v
    }

    /// Writes `data` at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) {
        self.atomic
            .memory()
            .write_slice(data, GuestAddress(addr))
            .unwrap();
    }
}
