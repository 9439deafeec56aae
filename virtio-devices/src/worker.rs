//! The worker thread that serves a device's queues.
//!
//! Each activated device gets one thread. It first runs the VMM-supplied
//! [`ThreadSetup`] hook (typically installing the thread's seccomp filter),
//! then waits with epoll on the queues' notify eventfds, a kill eventfd and
//! any device-specific fds, and dispatches them to a [`QueueHandler`].
//! A handler error (guest broke the ring) stops that queue only; the VMM
//! never panics on guest data.

pub mod chain;
#[cfg(test)]
pub(crate) mod testutil;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use log::{error, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemory as GuestMemoryT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{
    ActivateError, ActivatedQueue, GuestMemory, PausedQueue, VirtioInterrupt, VirtioInterruptType,
};

/// Hook the VMM gives a device, run first thing on each worker thread it
/// starts (e.g. `|| devices::seccomp::apply_current_thread(&filter)`). It is
/// shared and reusable because a device may be reset and re-activated.
pub type ThreadSetup = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Why a worker could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// epoll or eventfd setup failed.
    #[error("worker event setup: {0}")]
    Event(std::io::Error),
    /// The OS refused to create the thread.
    #[error("cannot spawn worker thread: {0}")]
    Spawn(std::io::Error),
    /// The thread setup hook (seccomp) failed.
    #[error("worker thread setup failed: {0}")]
    Setup(String),
    /// The thread panicked; its handler state is lost.
    #[error("worker thread panicked")]
    Panicked,
}

/// A failed [`spawn_worker`]: the error and, when it could be recovered,
/// the handler (so the device keeps its disk/output for a later retry).
pub struct SpawnError<H> {
    /// What went wrong.
    pub error: WorkerError,
    /// The handler, if the thread gave it back.
    pub handler: Option<H>,
}

impl<H> std::fmt::Debug for SpawnError<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SpawnError({:?})", self.error)
    }
}

/// An error a handler reports: the queue cannot be served any more.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Ring access failed (bad addresses or indices written by the guest).
    #[error("queue error: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// Anything else that makes the queue or fd unusable.
    #[error("{0}")]
    Other(String),
    /// The queue still has work after a full pass: the worker kicks it
    /// again after checking for a stop request (so a driver that keeps the
    /// ring full, or rings laid over each other, cannot starve the worker).
    #[error("queue {0} has more work")]
    Requeue(u16),
}

/// Most chains one `drain_queue` pass completes before yielding back to
/// the worker's event loop, per queue-size unit.
pub const PASSES_PER_DRAIN: usize = 2;

/// The chain budget of one drain pass of `queue`.
pub fn drain_budget(queue: &Queue) -> usize {
    usize::from(queue.size().max(1)) * PASSES_PER_DRAIN
}

/// Device-specific logic the worker thread drives.
pub trait QueueHandler: Send + 'static {
    /// Called once on the worker thread before waiting, e.g. to process
    /// buffers already posted or input already buffered.
    fn start(&mut self) -> Result<(), HandlerError> {
        Ok(())
    }
    /// The driver notified queue `index` (or it must be re-examined).
    fn handle_queue(&mut self, index: u16) -> Result<(), HandlerError>;
    /// Extra fds to poll for input; their position is the id passed to
    /// [`Self::handle_fd`]. Queried once at spawn.
    fn extra_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// A new list of extra fds, when the handler replaced one (a
    /// reconnected socket); polled after every event.
    fn take_new_fds(&mut self) -> Option<Vec<RawFd>> {
        None
    }
    /// Whether fd `id` should be polled right now (false e.g. while an
    /// input buffer is full, or after EOF). Queried after every event.
    fn fd_wanted(&self, _id: usize) -> bool {
        true
    }
    /// Extra fd `id` is readable (or hung up).
    fn handle_fd(&mut self, _id: usize) -> Result<(), HandlerError> {
        Ok(())
    }
    /// The device just became broken (a queue stopped on bad guest data):
    /// devices send the driver a configuration-change interrupt so it
    /// notices DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2).
    fn on_broken(&mut self) {}
}

const KILL_TOKEN: u64 = u64::MAX;
const FD_TOKEN_BASE: u64 = 1 << 32;

/// A running worker thread; stop it with [`WorkerHandle::stop`]. Dropping
/// the handle also stops and joins the thread.
pub struct WorkerHandle<H: QueueHandler> {
    kill: EventFd,
    thread: Option<JoinHandle<H>>,
    broken: Arc<AtomicBool>,
}

impl<H: QueueHandler> WorkerHandle<H> {
    /// True once a handler error stopped a queue (the device needs reset).
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Asks the thread to exit, joins it and returns the handler (which
    /// owns the queues and device state).
    pub fn stop(mut self) -> Result<H, WorkerError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<H, WorkerError> {
        let thread = self.thread.take().ok_or(WorkerError::Panicked)?;
        if let Err(e) = self.kill.write(1) {
            // Without the kill event the join below would hang forever.
            error!("cannot signal worker to stop: {e}");
            return Err(WorkerError::Event(e));
        }
        thread.join().map_err(|_| WorkerError::Panicked)
    }
}

impl<H: QueueHandler> Drop for WorkerHandle<H> {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop_inner();
        }
    }
}

/// Stops `worker`, if one runs, for a device pause. Returns the handler
/// (which owns the queues) and whether a queue had broken, or `None` when
/// nothing was running; `what` names the device in errors.
pub fn stop_for_pause<H: QueueHandler>(
    worker: &mut Option<WorkerHandle<H>>,
    what: &str,
) -> Result<Option<(H, bool)>, ActivateError> {
    let Some(w) = worker.take() else {
        return Ok(None);
    };
    let broken = w.is_broken();
    let handler = w
        .stop()
        .map_err(|e| ActivateError::Device(format!("{what}: {e}")))?;
    Ok(Some((handler, broken)))
}

/// Whether a device needs a reset: it marked itself `broken`, or a
/// handler error stopped one of its worker's queues.
pub fn worker_broken<H: QueueHandler>(broken: bool, worker: &Option<WorkerHandle<H>>) -> bool {
    broken || worker.as_ref().is_some_and(|w| w.is_broken())
}

/// Stops `worker` if one runs (device reset); false if it would not stop.
pub fn stop_worker<H: QueueHandler>(worker: &mut Option<WorkerHandle<H>>) -> bool {
    match worker.take() {
        Some(w) => w.stop().is_ok(),
        None => true,
    }
}

/// Pauses a one-queue device: stops `worker` (if one runs), marks the
/// device `broken` if its queue was, and gives back the queue that
/// `queue_of` takes out of the stopped handler.
pub fn pause_one_queue<H: QueueHandler>(
    worker: &mut Option<WorkerHandle<H>>,
    what: &str,
    broken: &mut bool,
    queue_of: impl FnOnce(H) -> Queue,
) -> Result<Vec<PausedQueue>, ActivateError> {
    let Some((handler, was_broken)) = stop_for_pause(worker, what)? else {
        return Ok(Vec::new());
    };
    *broken |= was_broken;
    Ok(vec![PausedQueue {
        index: 0,
        queue: queue_of(handler),
    }])
}

/// The queues a stopped handler gave back, numbered by their position
/// (`None` marks a queue the driver never enabled).
pub fn paused_queues(queues: Vec<Option<Queue>>) -> Vec<PausedQueue> {
    queues
        .into_iter()
        .enumerate()
        .filter_map(|(i, q)| {
            q.map(|queue| PausedQueue {
                // Devices have at most MAX_QUEUES (256) queues.
                index: u16::try_from(i).unwrap_or(u16::MAX),
                queue,
            })
        })
        .collect()
}

/// Starts a worker thread called `name` serving `notifies` (queue index and
/// its notify eventfd) with `handler`. Runs `setup` first on the thread and
/// reports its failure here (the thread then exits without serving).
pub fn spawn_worker<H: QueueHandler>(
    name: &str,
    setup: Option<ThreadSetup>,
    notifies: Vec<(u16, EventFd)>,
    handler: H,
) -> Result<WorkerHandle<H>, SpawnError<H>> {
    let fail = |error, handler| SpawnError { error, handler };
    let kill = match EventFd::new(EFD_NONBLOCK) {
        Ok(k) => k,
        Err(e) => return Err(fail(WorkerError::Event(e), Some(handler))),
    };
    let kill_thread = match kill.try_clone() {
        Ok(k) => k,
        Err(e) => return Err(fail(WorkerError::Event(e), Some(handler))),
    };
    let broken = Arc::new(AtomicBool::new(false));
    let broken_thread = broken.clone();
    let (tx, rx) = mpsc::sync_channel::<Result<(), String>>(1);
    let spawned = std::thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(move || {
            let mut handler = handler;
            if let Some(setup) = setup {
                if let Err(e) = setup() {
                    let _ = tx.send(Err(e));
                    return handler;
                }
            }
            let mut lp = match EventLoop::new(&kill_thread, &notifies, &handler) {
                Ok(lp) => lp,
                Err(e) => {
                    let _ = tx.send(Err(format!("epoll: {e}")));
                    return handler;
                }
            };
            let _ = tx.send(Ok(()));
            lp.run(&mut handler, &broken_thread);
            handler
        });
    let thread = match spawned {
        Ok(t) => t,
        // The closure (and the handler in it) is gone with the error.
        Err(e) => return Err(fail(WorkerError::Spawn(e), None)),
    };
    match rx.recv() {
        Ok(Ok(())) => Ok(WorkerHandle {
            kill,
            thread: Some(thread),
            broken,
        }),
        Ok(Err(msg)) => Err(fail(WorkerError::Setup(msg), thread.join().ok())),
        Err(_) => Err(fail(WorkerError::Panicked, None)),
    }
}

/// The epoll state of one worker thread.
struct EventLoop<'a> {
    epoll: Epoll,
    notifies: &'a [(u16, EventFd)],
    queue_live: Vec<bool>,
    fds: Vec<RawFd>,
    fd_registered: Vec<bool>,
    fd_dead: Vec<bool>,
}

impl<'a> EventLoop<'a> {
    fn new<H: QueueHandler>(
        kill: &EventFd,
        notifies: &'a [(u16, EventFd)],
        handler: &H,
    ) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            kill.as_raw_fd(),
            EpollEvent::new(EventSet::IN, KILL_TOKEN),
        )?;
        for (pos, (_, fd)) in notifies.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, pos as u64),
            )?;
        }
        let fds = handler.extra_fds();
        let n = fds.len();
        Ok(EventLoop {
            epoll,
            notifies,
            queue_live: vec![true; notifies.len()],
            fds,
            fd_registered: vec![false; n],
            fd_dead: vec![false; n],
        })
    }

    /// Registers/unregisters the extra fds as the handler wants them.
    fn sync_fds<H: QueueHandler>(&mut self, handler: &mut H) {
        if let Some(fds) = handler.take_new_fds() {
            for id in 0..self.fds.len() {
                if self.fd_registered[id] {
                    // The old fd may be closed already (then epoll forgot it).
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        self.fds[id],
                        EpollEvent::default(),
                    );
                }
            }
            let n = fds.len();
            self.fds = fds;
            self.fd_registered = vec![false; n];
            self.fd_dead = vec![false; n];
        }
        for id in 0..self.fds.len() {
            let want = !self.fd_dead[id] && handler.fd_wanted(id);
            if want == self.fd_registered[id] {
                continue;
            }
            let (op, ev) = if want {
                (ControlOperation::Add, EventSet::IN)
            } else {
                (ControlOperation::Delete, EventSet::empty())
            };
            let token = FD_TOKEN_BASE + id as u64;
            match self.epoll.ctl(op, self.fds[id], EpollEvent::new(ev, token)) {
                Ok(()) => self.fd_registered[id] = want,
                Err(e) => {
                    // Regular files cannot be polled (EPERM): give up on them.
                    warn!("cannot poll input fd {}: {e}", self.fds[id]);
                    self.fd_dead[id] = true;
                    self.fd_registered[id] = false;
                }
            }
        }
    }

    fn run<H: QueueHandler>(&mut self, handler: &mut H, broken: &AtomicBool) {
        match handler.start() {
            Err(HandlerError::Requeue(_)) => {
                for (_, fd) in self.notifies.iter() {
                    let _ = fd.write(1);
                }
            }
            Err(e) => {
                error!("worker start: {e}; device needs reset");
                broken.store(true, Ordering::Release);
                handler.on_broken();
                self.queue_live.iter_mut().for_each(|l| *l = false);
            }
            Ok(()) => {}
        }
        let mut events = vec![EpollEvent::default(); self.notifies.len() + self.fds.len() + 1];
        loop {
            self.sync_fds(handler);
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!("worker epoll_wait failed: {e}; stopping");
                    broken.store(true, Ordering::Release);
                    return;
                }
            };
            if events[..n].iter().any(|ev| ev.data() == KILL_TOKEN) {
                return;
            }
            for ev in &events[..n] {
                let token = ev.data();
                if token >= FD_TOKEN_BASE {
                    let id = (token - FD_TOKEN_BASE) as usize;
                    if id < self.fds.len() && self.fd_registered[id] {
                        if let Err(e) = handler.handle_fd(id) {
                            warn!("input fd {id}: {e}; no longer polled");
                            self.fd_dead[id] = true;
                        }
                    }
                } else {
                    self.dispatch_queue(token as usize, handler, broken);
                }
            }
        }
    }

    fn dispatch_queue<H: QueueHandler>(&mut self, pos: usize, handler: &mut H, b: &AtomicBool) {
        let Some((index, fd)) = self.notifies.get(pos) else {
            return;
        };
        // Clear the counter; a spurious wakeup (EAGAIN) is harmless.
        let _ = fd.read();
        if !self.queue_live[pos] {
            return;
        }
        let result = handler.handle_queue(*index);
        if let Err(HandlerError::Requeue(_)) = result {
            // Come back to this queue after the next epoll round, which
            // also notices a stop request.
            if let Err(e) = fd.write(1) {
                error!("queue {index}: cannot re-kick: {e}");
            }
            return;
        }
        if let Err(e) = result {
            error!("queue {index}: {e}; queue stopped until device reset");
            b.store(true, Ordering::Release);
            handler.on_broken();
            self.queue_live[pos] = false;
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                fd.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }
}

/// Signals queue `index` used buffers if the driver wants to be notified
/// (honours EVENT_IDX). Interrupt errors are logged, not fatal.
pub fn notify_queue<M: GuestMemoryT>(
    queue: &mut Queue,
    mem: &M,
    interrupt: &dyn VirtioInterrupt,
    index: u16,
) -> Result<(), HandlerError> {
    if queue.needs_notification(mem)? {
        if let Err(e) = interrupt.trigger(VirtioInterruptType::Queue(index)) {
            warn!("queue {index}: interrupt lost: {e}");
        }
    }
    Ok(())
}

/// Pops the next available chain of `queue`, or `None` when the driver has
/// published nothing new. An error when it has but the chain cannot be
/// popped (an avail index more than a queue size ahead, a bad head):
/// retrying would spin forever.
///
/// The avail index is read *before* the second pop, so a chain the driver
/// publishes while the first pop returns `None` is popped, not taken for an
/// unconsumable ring (the driver runs concurrently with the worker).
pub fn pop_available<'m, M: GuestMemoryT>(
    queue: &mut Queue,
    mem: &'m M,
    index: u16,
) -> Result<Option<virtio_queue::DescriptorChain<&'m M>>, HandlerError> {
    if let Some(chain) = queue.pop_descriptor_chain(mem) {
        return Ok(Some(chain));
    }
    let avail = queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire)?;
    if avail.0 == queue.next_avail() {
        return Ok(None);
    }
    match queue.pop_descriptor_chain(mem) {
        Some(chain) => Ok(Some(chain)),
        None => Err(HandlerError::Other(format!(
            "queue {index}: available ring cannot be consumed (avail index {} vs next {})",
            avail.0,
            queue.next_avail()
        ))),
    }
}

/// Pops and completes every available chain of `queue` with `process`
/// (which returns the used length), re-checking after re-enabling
/// notifications so no kick is missed, then notifies the driver.
pub fn drain_queue<M, F>(
    queue: &mut Queue,
    mem: &M,
    interrupt: &dyn VirtioInterrupt,
    index: u16,
    mut process: F,
) -> Result<(), HandlerError>
where
    M: GuestMemoryT,
    F: FnMut(virtio_queue::DescriptorChain<&M>) -> u32,
{
    let mut added = false;
    let mut budget = drain_budget(queue);
    loop {
        queue.disable_notification(mem)?;
        while let Some(chain) = pop_available(queue, mem, index)? {
            let head = chain.head_index();
            let len = process(chain);
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

/// A device's queues split for its worker: `queues[i]` is queue `i` if the
/// driver activated it, and the notify eventfds go to [`spawn_worker`].
pub type PreparedQueues = (Vec<Option<Queue>>, Vec<(u16, EventFd)>);

/// Checks the driver's queues for a device with `num` queues (index in
/// range, no duplicates, rings inside guest memory, at least one) and
/// applies the negotiated EVENT_IDX setting.
pub fn prepare_queues(
    queues: Vec<ActivatedQueue>,
    num: usize,
    mem: &GuestMemory,
    event_idx: bool,
) -> Result<PreparedQueues, ActivateError> {
    if queues.is_empty() {
        return Err(ActivateError::BadQueues("no queue activated".into()));
    }
    let guard = mem.memory();
    let mut slots: Vec<Option<Queue>> = (0..num).map(|_| None).collect();
    let mut notifies = Vec::with_capacity(queues.len());
    for aq in queues {
        let idx = usize::from(aq.index);
        let slot = slots
            .get_mut(idx)
            .ok_or_else(|| ActivateError::BadQueues(format!("no queue {idx}")))?;
        if slot.is_some() {
            return Err(ActivateError::BadQueues(format!("queue {idx} given twice")));
        }
        let mut queue = aq.queue;
        if !queue.is_valid(&*guard) {
            return Err(ActivateError::BadQueues(format!(
                "queue {idx} is not ready or its rings are outside guest memory"
            )));
        }
        queue.set_event_idx(event_idx);
        *slot = Some(queue);
        notifies.push((aq.index, aq.notify));
    }
    Ok((slots, notifies))
}

/// [`prepare_queues`] for a device with a single queue (named `what` in
/// errors): that queue, and its notify eventfd for [`spawn_worker`].
pub fn prepare_one_queue(
    queues: Vec<ActivatedQueue>,
    mem: &GuestMemory,
    event_idx: bool,
    what: &str,
) -> Result<(Queue, Vec<(u16, EventFd)>), ActivateError> {
    let (mut slots, notifies) = prepare_queues(queues, 1, mem, event_idx)?;
    let queue = slots
        .pop()
        .flatten()
        .ok_or_else(|| ActivateError::BadQueues(format!("{what} missing")))?;
    Ok((queue, notifies))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Recorder {
        seen: Arc<Mutex<Vec<u16>>>,
        fail_on: Option<u16>,
    }

    impl QueueHandler for Recorder {
        fn handle_queue(&mut self, index: u16) -> Result<(), HandlerError> {
            self.seen.lock().unwrap().push(index);
            if self.fail_on == Some(index) {
                return Err(HandlerError::Other("bad".into()));
            }
            Ok(())
        }
    }

    fn wait_for(seen: &Mutex<Vec<u16>>, n: usize) {
        for _ in 0..500 {
            if seen.lock().unwrap().len() >= n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("timeout waiting for {n} events");
    }

    #[test]
    fn dispatches_and_stops() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let q0 = EventFd::new(EFD_NONBLOCK).unwrap();
        let q3 = EventFd::new(EFD_NONBLOCK).unwrap();
        let (k0, k3) = (q0.try_clone().unwrap(), q3.try_clone().unwrap());
        let setup_ran = Arc::new(AtomicBool::new(false));
        let flag = setup_ran.clone();
        let setup: ThreadSetup = Arc::new(move || {
            flag.store(true, Ordering::SeqCst);
            Ok(())
        });
        let h = Recorder {
            seen: seen.clone(),
            fail_on: Some(3),
        };
        let w = spawn_worker("test", Some(setup), vec![(0, q0), (3, q3)], h).unwrap();
        assert!(setup_ran.load(Ordering::SeqCst));
        k0.write(1).unwrap();
        wait_for(&seen, 1);
        k3.write(1).unwrap();
        wait_for(&seen, 2);
        // Queue 3 failed: it is no longer dispatched, queue 0 still is.
        k3.write(1).unwrap();
        k0.write(1).unwrap();
        wait_for(&seen, 3);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(w.is_broken());
        let h = w.stop().unwrap();
        assert_eq!(*h.seen.lock().unwrap(), vec![0, 3, 0]);
    }

    #[test]
    fn setup_failure_returns_handler() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let setup: ThreadSetup = Arc::new(|| Err("no seccomp".into()));
        let h = Recorder {
            seen,
            fail_on: None,
        };
        let err = spawn_worker("test", Some(setup), vec![], h).err().unwrap();
        assert!(matches!(err.error, WorkerError::Setup(ref m) if m == "no seccomp"));
        assert!(err.handler.is_some());
    }

    /// A driver publishing while the device drains (the guest runs beside
    /// the worker) is served: no chain is taken for an unconsumable ring.
    /// This race marked a virtio-rng broken in an aarch64 CI run.
    #[test]
    fn chains_published_during_a_drain_are_served() {
        use testutil::{TestInterrupt, TestVm, DATA};
        const CHAINS: u16 = 3000;
        let vm = TestVm::new();
        let (tq, mut aq) = vm.queues(1, 16);
        let mut queue = aq.remove(0).queue;
        let mem = vm.mem;
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let drainer = std::thread::spawn(move || {
            let interrupt = TestInterrupt::default();
            let mut served = 0u32;
            while !stop.load(Ordering::Acquire) {
                let result = drain_queue(&mut queue, mem, &interrupt, 0, |_| {
                    served += 1;
                    0
                });
                match result {
                    // The pass budget ran out: drain again.
                    Ok(()) | Err(HandlerError::Requeue(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok::<u32, HandlerError>(served)
        });
        for i in 1..=CHAINS {
            // One writable buffer per chain, descriptor slots reused (the
            // mock's add_chain does not wrap the avail ring).
            let slot = i % 16;
            let flags = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
            tq[0].store_raw(
                slot,
                virtio_queue::desc::split::Descriptor::new(DATA, 16, flags, 0),
            );
            tq[0].publish(slot);
            // The ring has 16 entries: wait for the device to catch up.
            let start = std::time::Instant::now();
            while i.wrapping_sub(tq[0].used_idx()) >= 8 {
                if drainer.is_finished() {
                    let r = drainer.join().unwrap();
                    panic!("drain stopped at chain {i}: {r:?}");
                }
                assert!(start.elapsed().as_secs() < 60, "device stalled at {i}");
                std::hint::spin_loop();
            }
        }
        assert!(tq[0].wait_used(CHAINS));
        done.store(true, Ordering::Release);
        let served = drainer.join().unwrap().expect("drain failed");
        assert_eq!(served, u32::from(CHAINS));
    }

    /// An avail index more than a queue size ahead cannot be consumed: an
    /// error (the device is marked broken), not a loop.
    #[test]
    fn unconsumable_avail_index_is_an_error() {
        use testutil::{TestInterrupt, TestVm};
        let vm = TestVm::new();
        let (tq, mut aq) = vm.queues(1, 16);
        let mut queue = aq.remove(0).queue;
        tq[0].mock.avail().idx().store(1000);
        let err = drain_queue(&mut queue, vm.mem, &TestInterrupt::default(), 0, |_| 0).unwrap_err();
        assert!(err.to_string().contains("cannot be consumed"), "{err}");
    }
}
