//! The net device's queue handler, run on its worker thread: moves frames
//! between the tap queues and the guest's RX/TX queues and serves the
//! control queue.
//!
//! Queue layout: pair `i` is RX queue `2i` and TX queue `2i+1`; the control
//! queue (multi-queue only) comes last. Tap queue `i` serves pair `i` and is
//! polled only while the guest has RX buffers, so frames wait in the tap
//! (not in the VMM) when the guest is slow.

use std::fmt;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::warn;
use virtio_queue::Queue;
use vm_memory::GuestAddressSpace;

use super::ctrl::{self, CtrlAction};
use super::rx::{arm_rx_notification, deliver, RxOutcome};
use super::state::NetResume;
use super::tap::{Tap, VNET_HDR_LEN};
use super::{NetCounters, MAX_FRAME_LEN};
use crate::device::{GuestMemory, VirtioInterrupt, VirtioInterruptType};
use crate::rate_limiter::{drain_queue_limited, RateLimiter};
use crate::worker::chain::{ChainBuffers, ChainError};
use crate::worker::{drain_queue, notify_queue, HandlerError, QueueHandler};

/// Frames moved from one tap queue per call before yielding to other
/// events (the fd stays readable, so the worker comes back).
const RX_BATCH: usize = 256;
/// Size of the host buffer a tap frame is read into (a 64 KiB GSO frame
/// with headers fits; anything longer is truncated by the tap).
const RX_BUF_LEN: usize = MAX_FRAME_LEN + 4096;

/// Logs at most one message per second per site, counting the rest.
#[derive(Default)]
pub(super) struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    pub(super) fn warn(&mut self, args: fmt::Arguments) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            warn!("{args} ({} similar messages suppressed)", self.suppressed);
        } else {
            warn!("{args}");
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Receive state of one queue pair.
struct RxState {
    /// Host buffer for the frame read from the tap.
    buf: Vec<u8>,
    /// Length of a frame in `buf` not yet delivered (delivered first).
    pending: Option<usize>,
    /// The guest has no buffers: the tap is not polled until it kicks.
    blocked: bool,
    /// The tap returned a hard error: no longer read.
    dead: bool,
}

/// Owns the queues and tap handles while the device is active.
pub(super) struct NetHandler {
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    rx: Vec<Option<Queue>>,
    tx: Vec<Option<Queue>>,
    ctrl: Option<Queue>,
    taps: Vec<Tap>,
    rx_state: Vec<RxState>,
    /// Attach state last requested per tap queue (multi-queue taps only).
    attached: Vec<Option<bool>>,
    active_pairs: u16,
    mergeable: bool,
    tx_buf: Vec<u8>,
    counters: Arc<NetCounters>,
    name: String,
    rx_log: LogLimit,
    tx_log: LogLimit,
    /// Set when an RX ring broke while polling the tap (the worker's own
    /// flag only covers queue notifications).
    broken: Arc<AtomicBool>,
    /// Charges frames delivered to the guest (all pairs); while it is
    /// throttled the taps are not read.
    rx_limiter: Option<RateLimiter>,
    /// Charges frames the guest sends (all pairs).
    tx_limiter: Option<RateLimiter>,
}

impl NetHandler {
    /// `slots` are the device's queues in layout order (see the module
    /// docs); `taps` has one entry per pair.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        slots: Vec<Option<Queue>>,
        taps: Vec<Tap>,
        mergeable: bool,
        counters: Arc<NetCounters>,
        name: String,
        broken: Arc<AtomicBool>,
    ) -> Self {
        let pairs = taps.len();
        let mut rx = Vec::with_capacity(pairs);
        let mut tx = Vec::with_capacity(pairs);
        let mut ctrl = None;
        for (i, q) in slots.into_iter().enumerate() {
            if i < 2 * pairs {
                if i % 2 == 0 {
                    rx.push(q);
                } else {
                    tx.push(q);
                }
            } else {
                ctrl = q;
            }
        }
        rx.resize_with(pairs, || None);
        tx.resize_with(pairs, || None);
        NetHandler {
            mem,
            interrupt,
            rx,
            tx,
            ctrl,
            rx_state: (0..pairs)
                .map(|_| RxState {
                    buf: vec![0u8; RX_BUF_LEN],
                    pending: None,
                    blocked: false,
                    dead: false,
                })
                .collect(),
            attached: vec![None; pairs],
            active_pairs: pairs as u16,
            taps,
            mergeable,
            tx_buf: vec![0u8; MAX_FRAME_LEN],
            counters,
            name,
            rx_log: LogLimit::default(),
            tx_log: LogLimit::default(),
            broken,
            rx_limiter: None,
            tx_limiter: None,
        }
    }

    /// Limits receive and transmit (each with its own buckets); their
    /// timer fds follow the taps in [`QueueHandler::extra_fds`].
    pub(super) fn set_rate_limiters(&mut self, rx: RateLimiter, tx: RateLimiter) {
        self.rx_limiter = Some(rx);
        self.tx_limiter = Some(tx);
    }

    /// Extra fd ids of the RX and TX limiter timers.
    fn timer_ids(&self) -> (Option<usize>, Option<usize>) {
        let n = self.taps.len();
        let rx = self.rx_limiter.as_ref().map(|_| n);
        let tx = self
            .tx_limiter
            .as_ref()
            .map(|_| n + usize::from(rx.is_some()));
        (rx, tx)
    }

    /// A limiter's timer fired: serve what it held back on every pair. A
    /// ring broken meanwhile stops that queue and flags the device.
    fn resume(&mut self, rx: bool) {
        for pair in 0..self.taps.len() {
            let res = if rx {
                self.process_rx(pair)
            } else {
                self.process_tx(pair)
            };
            if let Err(e) = res {
                log::error!("{}: pair {pair}: {e}; device needs reset", self.name);
                if rx {
                    if let Some(st) = self.rx_state.get_mut(pair) {
                        st.dead = true;
                    }
                } else if let Some(q) = self.tx.get_mut(pair) {
                    *q = None;
                }
                self.broken.store(true, Ordering::Release);
                self.on_broken();
            }
        }
    }

    /// Uses the first `n` pairs: the other tap queues are detached so the
    /// host steers no traffic to queues the guest does not serve.
    pub(super) fn set_active_pairs(&mut self, n: u16) {
        self.active_pairs = n;
        if self.taps.len() < 2 {
            return;
        }
        for (i, tap) in self.taps.iter().enumerate() {
            let want = i < usize::from(n);
            if self.attached[i] == Some(want) {
                continue;
            }
            // EINVAL means the queue already was in that state (e.g. after
            // a device reset); anything else is logged.
            if let Err(e) = tap.set_queue_attached(want) {
                if !matches!(&e, super::TapError::Ioctl { source, .. }
                    if source.raw_os_error() == Some(libc::EINVAL))
                {
                    warn!("{}: {e}", self.name);
                }
            }
            self.attached[i] = Some(want);
        }
    }

    /// Takes the handler apart at a pause: the queues in layout order
    /// (see the module docs) and the state to hand the next handler.
    pub(super) fn into_resume(self) -> (Vec<Option<Queue>>, NetResume) {
        let pending = self
            .rx_state
            .iter()
            .map(|st| st.pending.and_then(|n| st.buf.get(..n)).map(<[u8]>::to_vec))
            .collect();
        let mut queues = Vec::with_capacity(2 * self.rx.len() + 1);
        for (rx, tx) in self.rx.into_iter().zip(self.tx) {
            queues.push(rx);
            queues.push(tx);
        }
        queues.push(self.ctrl);
        let resume = NetResume {
            active_pairs: self.active_pairs,
            pending,
        };
        (queues, resume)
    }

    /// Takes over what a paused handler left (undelivered frames first).
    pub(super) fn apply_resume(&mut self, resume: NetResume) {
        for (st, frame) in self.rx_state.iter_mut().zip(resume.pending) {
            if let Some(f) = frame.filter(|f| f.len() <= st.buf.len()) {
                st.buf[..f.len()].copy_from_slice(&f);
                st.pending = Some(f.len());
            }
        }
        let max = self.taps.len() as u16;
        self.set_active_pairs(resume.active_pairs.clamp(1, max.max(1)));
    }

    fn ctrl_index(&self) -> u16 {
        // At most 16 pairs (checked at creation).
        2 * self.taps.len() as u16
    }

    /// Moves frames from tap queue `pair` to its RX queue until the tap is
    /// empty, the guest runs out of buffers or a batch is done.
    fn process_rx(&mut self, pair: usize) -> Result<(), HandlerError> {
        let (Some(Some(queue)), Some(st), Some(tap)) = (
            self.rx.get_mut(pair),
            self.rx_state.get_mut(pair),
            self.taps.get(pair),
        ) else {
            return Ok(());
        };
        if st.dead {
            return Ok(());
        }
        let guard = self.mem.memory();
        let mem = &*guard;
        let mut notify = false;
        let mut rearmed = 0;
        let mut moved = 0;
        while moved < RX_BATCH {
            let len = match st.pending {
                Some(n) => n,
                None => match tap.read_frame(&mut st.buf) {
                    Ok(n) if n <= VNET_HDR_LEN => {
                        NetCounters::add(&self.counters.rx_dropped, 1);
                        moved += 1;
                        continue;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        warn!("{}: tap read failed: {e}; receive stopped", self.name);
                        st.dead = true;
                        break;
                    }
                },
            };
            // A frame held back by the limiter stays pending, uncharged.
            st.pending = Some(len);
            let bytes = (len - VNET_HDR_LEN) as u64;
            if let Some(limiter) = self.rx_limiter.as_mut() {
                if !limiter.consume_request(bytes) {
                    break;
                }
            }
            let res = deliver(queue, mem, &mut st.buf[..len], self.mergeable)?;
            if !matches!(res.outcome, RxOutcome::Delivered(_)) {
                if let Some(limiter) = self.rx_limiter.as_mut() {
                    limiter.replenish_request(bytes);
                }
            }
            notify |= res.used_added;
            if res.bad_chains > 0 {
                self.rx_log.warn(format_args!(
                    "{}: {} malformed rx chain(s) returned empty",
                    self.name, res.bad_chains
                ));
            }
            match res.outcome {
                RxOutcome::Delivered(_) => {
                    st.pending = None;
                    moved += 1;
                    NetCounters::add(&self.counters.rx_frames, 1);
                    NetCounters::add(&self.counters.rx_bytes, (len - VNET_HDR_LEN) as u64);
                }
                RxOutcome::Dropped => {
                    st.pending = None;
                    NetCounters::add(&self.counters.rx_dropped, 1);
                    self.rx_log.warn(format_args!(
                        "{}: {len}-byte frame does not fit the guest's rx buffers; dropped",
                        self.name
                    ));
                }
                RxOutcome::NoBuffers => {
                    // Bounded: a guest moving its avail index without valid
                    // buffers must not keep the worker spinning.
                    if rearmed < 2 && arm_rx_notification(queue, mem)? {
                        rearmed += 1;
                        continue;
                    }
                    st.blocked = true;
                    break;
                }
            }
        }
        if notify {
            // Pair counts are at most 16, so the index fits a u16.
            notify_queue(queue, mem, &*self.interrupt, (2 * pair) as u16)?;
        }
        Ok(())
    }

    /// Sends every frame the guest queued on TX queue `pair` to its tap.
    fn process_tx(&mut self, pair: usize) -> Result<(), HandlerError> {
        let (Some(Some(queue)), Some(tap)) = (self.tx.get_mut(pair), self.taps.get(pair)) else {
            return Ok(());
        };
        let guard = self.mem.memory();
        let mem = &*guard;
        let (buf, counters, log, name) = (
            &mut self.tx_buf,
            &self.counters,
            &mut self.tx_log,
            self.name.as_str(),
        );
        let index = (2 * pair + 1) as u16;
        let mut send = |parsed: Result<ChainBuffers, ChainError>| {
            let mut drop = |why: fmt::Arguments| {
                NetCounters::add(&counters.tx_dropped, 1);
                log.warn(format_args!("{name}: tx frame dropped: {why}"));
                0
            };
            let bufs = match parsed {
                Ok(b) => b,
                Err(e) => return drop(format_args!("{e}")),
            };
            let len = bufs.readable_len();
            if len <= VNET_HDR_LEN as u64 || len > MAX_FRAME_LEN as u64 {
                return drop(format_args!("bad length {len}"));
            }
            // len <= MAX_FRAME_LEN, the buffer's size.
            let frame = &mut buf[..len as usize];
            if let Err(e) = bufs.read_at(mem, 0, frame) {
                return drop(format_args!("{e}"));
            }
            match tap.write_frame(frame) {
                Ok(_) => {
                    NetCounters::add(&counters.tx_frames, 1);
                    NetCounters::add(&counters.tx_bytes, len - VNET_HDR_LEN as u64);
                    0
                }
                Err(e) => drop(format_args!("tap write: {e}")),
            }
        };
        match self.tx_limiter.as_mut() {
            // One operation and the Ethernet bytes per frame.
            Some(limiter) => drain_queue_limited(
                queue,
                mem,
                &*self.interrupt,
                index,
                limiter,
                |bufs| bufs.readable_len().saturating_sub(VNET_HDR_LEN as u64),
                &mut send,
            ),
            None => drain_queue(queue, mem, &*self.interrupt, index, |chain| {
                send(ChainBuffers::parse(chain))
            }),
        }
    }

    /// Serves the control queue.
    fn process_ctrl(&mut self) -> Result<(), HandlerError> {
        let index = self.ctrl_index();
        let max_pairs = self.taps.len() as u16;
        let Some(queue) = self.ctrl.as_mut() else {
            return Ok(());
        };
        let guard = self.mem.memory();
        let mem = &*guard;
        let mut actions = Vec::new();
        drain_queue(
            queue,
            mem,
            &*self.interrupt,
            index,
            |chain| match ChainBuffers::parse(chain) {
                Ok(bufs) => {
                    let (len, action) = ctrl::handle(&bufs, mem, max_pairs);
                    actions.push(action);
                    len
                }
                Err(_) => 0,
            },
        )?;
        for action in actions {
            if let CtrlAction::SetPairs(n) = action {
                self.set_active_pairs(n);
            }
        }
        Ok(())
    }
}

impl QueueHandler for NetHandler {
    fn on_broken(&mut self) {
        if let Err(e) = self.interrupt.trigger(VirtioInterruptType::Config) {
            warn!("config interrupt lost: {e}");
        }
    }

    fn start(&mut self) -> Result<(), HandlerError> {
        for pair in 0..self.taps.len() {
            self.process_tx(pair)?;
            self.process_rx(pair)?;
        }
        self.process_ctrl()
    }

    fn handle_queue(&mut self, index: u16) -> Result<(), HandlerError> {
        if index == self.ctrl_index() {
            return self.process_ctrl();
        }
        let pair = usize::from(index / 2);
        if index % 2 == 1 {
            return self.process_tx(pair);
        }
        if let Some(st) = self.rx_state.get_mut(pair) {
            st.blocked = false;
        }
        self.process_rx(pair)
    }

    fn extra_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        let taps = self.taps.iter().map(|t| t.as_raw_fd());
        let timers = [&self.rx_limiter, &self.tx_limiter]
            .into_iter()
            .flatten()
            .map(|l| l.as_raw_fd());
        taps.chain(timers).collect()
    }

    fn fd_wanted(&self, id: usize) -> bool {
        let (rx_timer, tx_timer) = self.timer_ids();
        if Some(id) == rx_timer || Some(id) == tx_timer {
            return true;
        }
        if self.rx_limiter.as_ref().is_some_and(|l| l.is_blocked()) {
            return false;
        }
        // A detached tap queue polls as an error: never poll those.
        let active = id < usize::from(self.active_pairs);
        let rx_ready = self.rx.get(id).is_some_and(|q| q.is_some());
        let st = self.rx_state.get(id);
        active && rx_ready && st.is_some_and(|s| !s.blocked && !s.dead)
    }

    fn handle_fd(&mut self, id: usize) -> Result<(), HandlerError> {
        let (rx_timer, tx_timer) = self.timer_ids();
        if Some(id) == rx_timer || Some(id) == tx_timer {
            let rx = Some(id) == rx_timer;
            let limiter = if rx {
                &mut self.rx_limiter
            } else {
                &mut self.tx_limiter
            };
            if let Some(l) = limiter.as_mut() {
                l.event_handler();
            }
            self.resume(rx);
            return Ok(());
        }
        match self.process_rx(id) {
            Ok(()) => Ok(()),
            // A broken RX ring must stop the device, not just the fd.
            Err(e) => {
                if let Some(st) = self.rx_state.get_mut(id) {
                    st.dead = true;
                }
                log::error!(
                    "{}: rx queue {}: {e}; device needs reset",
                    self.name,
                    2 * id
                );
                self.broken.store(true, Ordering::Release);
                self.on_broken();
                Ok(())
            }
        }
    }
}
