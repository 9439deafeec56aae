//! I/O rate limiting for virtio devices, with Cloud Hypervisor/Firecracker
//! semantics: a bandwidth bucket (bytes) and an operations bucket (requests
//! or frames), each a [`TokenBucket`].
//!
//! The buckets live in a [`RateLimitGroup`], shared (`Arc`) by every device
//! queue it limits: a disk's own limit is a private group, a
//! `--rate-limit-group` is one group given to several disks, which then
//! share its budget. Each worker wraps the group in a [`RateLimiter`] that
//! owns a timerfd: when a request does not fit, the timer is armed for the
//! moment it will, the worker stops taking requests (they stay in the
//! avail ring) and resumes when the timer fd becomes readable. Workers of
//! one group thus need no cross-thread wakeups; each waits for its own
//! next request.
//!
//! A device without a limit has no `RateLimiter` at all, so its hot path
//! is unchanged. With one, an unthrottled request costs a mutex
//! lock/unlock and a vDSO clock read: no system call.

mod bucket;
mod queue;

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::error;
use vmm_sys_util::timerfd::TimerFd;

pub use bucket::{TokenBucket, MAX_REFILL_TIME_MS};
pub use queue::drain_queue_limited;

/// Shortest timer armed when throttled, so a tiny deficit does not cost a
/// wakeup per token.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// Why a rate limiter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RateLimiterError {
    /// A bucket of zero tokens would block forever.
    #[error("token bucket size must be at least 1")]
    ZeroSize,
    /// A refill time of zero or above [`MAX_REFILL_TIME_MS`].
    #[error("token bucket refill_time={0} ms: must be between 1 and {MAX_REFILL_TIME_MS}")]
    RefillTime(u64),
    /// The timerfd could not be created.
    #[error("rate limiter timer: {0}")]
    Timer(std::io::Error),
}

/// Parameters of one token bucket (as Cloud Hypervisor's
/// `TokenBucketConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketConfig {
    /// Tokens per refill period (bytes or operations).
    pub size: u64,
    /// Extra tokens available once, spent before the regular budget.
    pub one_time_burst: u64,
    /// Milliseconds to refill `size` tokens.
    pub refill_time_ms: u64,
}

impl BucketConfig {
    /// A fresh, full bucket with these parameters.
    pub fn build(&self) -> Result<TokenBucket, RateLimiterError> {
        TokenBucket::new(self.size, self.one_time_burst, self.refill_time_ms)
    }
}

/// The limits of one limiter: either bucket may be absent (unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Bytes per period.
    pub bandwidth: Option<BucketConfig>,
    /// Operations (requests, frames) per period.
    pub ops: Option<BucketConfig>,
}

/// What a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// Payload bytes.
    Bytes,
    /// Operations.
    Ops,
}

/// The mutable state of a group.
#[derive(Debug)]
struct Buckets {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
}

impl Buckets {
    fn get(&mut self, kind: TokenType) -> Option<&mut TokenBucket> {
        match kind {
            TokenType::Bytes => self.bandwidth.as_mut(),
            TokenType::Ops => self.ops.as_mut(),
        }
    }
}

/// Token buckets shared by every device queue they limit.
pub struct RateLimitGroup {
    id: String,
    limits: RateLimits,
    buckets: Mutex<Buckets>,
}

impl RateLimitGroup {
    /// A group called `id` (for logs) with full buckets for `limits`.
    pub fn new(id: &str, limits: RateLimits) -> Result<Arc<Self>, RateLimiterError> {
        let bandwidth = limits.bandwidth.map(|c| c.build()).transpose()?;
        let ops = limits.ops.map(|c| c.build()).transpose()?;
        Ok(Arc::new(RateLimitGroup {
            id: id.to_string(),
            limits,
            buckets: Mutex::new(Buckets { bandwidth, ops }),
        }))
    }

    /// The group's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The limits the group was created with.
    pub fn limits(&self) -> RateLimits {
        self.limits
    }

    /// The buckets; a poisoned lock (a panicking worker) is still usable
    /// since every update leaves the buckets consistent.
    fn lock(&self) -> MutexGuard<'_, Buckets> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for RateLimitGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitGroup")
            .field("id", &self.id)
            .field("limits", &self.limits)
            .finish()
    }
}

/// Groups compare by id and limits (their configuration), not state.
impl PartialEq for RateLimitGroup {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.limits == other.limits
    }
}

impl Eq for RateLimitGroup {}

/// One worker's view of a [`RateLimitGroup`]: charges its requests and
/// owns the timer that wakes the worker once throttling is over.
pub struct RateLimiter {
    group: Arc<RateLimitGroup>,
    timer: TimerFd,
    blocked: bool,
}

impl RateLimiter {
    /// A limiter charging `group`, with a new non-blocking timerfd.
    pub fn new(group: Arc<RateLimitGroup>) -> Result<Self, RateLimiterError> {
        // SAFETY: plain syscall with constant flags; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(RateLimiterError::Timer(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh timerfd nobody else owns.
        let timer = unsafe { TimerFd::from_raw_fd(fd) };
        Ok(RateLimiter {
            group,
            timer,
            blocked: false,
        })
    }

    /// A limiter with its own private group (a single device's limit).
    pub fn private(id: &str, limits: RateLimits) -> Result<Self, RateLimiterError> {
        Self::new(RateLimitGroup::new(id, limits)?)
    }

    /// The group charged.
    pub fn group(&self) -> &Arc<RateLimitGroup> {
        &self.group
    }

    /// True while waiting for the timer: every consume fails at once,
    /// without looking at the buckets.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Takes `tokens` of `kind`; false (and the timer armed) if they are
    /// not available yet. A missing bucket never limits.
    pub fn consume(&mut self, tokens: u64, kind: TokenType) -> bool {
        if self.blocked {
            return false;
        }
        let wait = {
            let mut b = self.group.lock();
            let Some(bucket) = b.get(kind) else {
                return true;
            };
            let now = Instant::now();
            if bucket.consume_at(tokens, now) {
                return true;
            }
            bucket.wait_time(tokens, now)
        };
        self.block_for(wait)
    }

    /// Charges one request: one operation and `bytes` payload bytes, both
    /// or neither (the operation is given back if the bytes do not fit).
    pub fn consume_request(&mut self, bytes: u64) -> bool {
        if self.blocked {
            return false;
        }
        let wait = {
            let mut b = self.group.lock();
            let now = Instant::now();
            let mut wait = Duration::ZERO;
            let mut ops_taken = false;
            if let Some(ops) = b.ops.as_mut() {
                if ops.consume_at(1, now) {
                    ops_taken = true;
                } else {
                    wait = ops.wait_time(1, now);
                }
            }
            if wait.is_zero() && bytes > 0 {
                if let Some(bw) = b.bandwidth.as_mut() {
                    if !bw.consume_at(bytes, now) {
                        wait = bw.wait_time(bytes, now);
                        if ops_taken {
                            if let Some(ops) = b.ops.as_mut() {
                                ops.replenish(1);
                            }
                        }
                    }
                }
            }
            if wait.is_zero() {
                return true;
            }
            wait
        };
        self.block_for(wait)
    }

    /// Gives back tokens charged for work that was not done after all
    /// (Firecracker's manual replenish).
    pub fn manual_replenish(&mut self, tokens: u64, kind: TokenType) {
        if let Some(bucket) = self.group.lock().get(kind) {
            bucket.replenish(tokens);
        }
    }

    /// Gives back a whole request charged by [`Self::consume_request`].
    pub fn replenish_request(&mut self, bytes: u64) {
        let mut b = self.group.lock();
        if let Some(ops) = b.ops.as_mut() {
            ops.replenish(1);
        }
        if let Some(bw) = b.bandwidth.as_mut() {
            bw.replenish(bytes);
        }
    }

    /// Arms the timer for `wait` and blocks; if the timer cannot be armed
    /// the request is let through rather than stalling the device forever.
    fn block_for(&mut self, wait: Duration) -> bool {
        match self.timer.reset(wait.max(MIN_WAIT), None) {
            Ok(()) => {
                self.blocked = true;
                false
            }
            Err(e) => {
                error!("rate limiter {}: cannot arm timer: {e}", self.group.id);
                true
            }
        }
    }

    /// The timer fired (its fd is readable): clears it and unblocks. The
    /// worker should then retry the queues it stopped serving.
    pub fn event_handler(&mut self) {
        // Non-blocking: EAGAIN after a spurious wakeup is harmless.
        let _ = self.timer.wait();
        self.blocked = false;
    }
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("group", &self.group)
            .field("blocked", &self.blocked)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, refill_time_ms: u64) -> Option<BucketConfig> {
        Some(BucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms,
        })
    }

    /// Waits (at most `max`) for the limiter's timer fd to become readable.
    fn timer_fires(l: &RateLimiter, max: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, max.as_millis() as i32) };
        n == 1
    }

    #[test]
    fn no_bucket_never_limits_and_needs_no_timer() {
        let mut l = RateLimiter::private("none", RateLimits::default()).unwrap();
        for _ in 0..1000 {
            assert!(l.consume_request(1 << 30));
            assert!(l.consume(u64::MAX, TokenType::Ops));
        }
        assert!(!l.is_blocked());
        assert!(!timer_fires(&l, Duration::ZERO));
    }

    #[test]
    fn throttles_then_wakes_through_the_timer() {
        let limits = RateLimits {
            bandwidth: bucket(1000, 100),
            ops: None,
        };
        let mut l = RateLimiter::private("bw", limits).unwrap();
        let start = Instant::now();
        assert!(l.consume_request(1000));
        assert!(!l.consume_request(500));
        assert!(l.is_blocked());
        // Blocked: even a free request waits for the timer.
        assert!(!l.consume(0, TokenType::Bytes));
        assert!(timer_fires(&l, Duration::from_secs(2)));
        assert!(start.elapsed() >= Duration::from_millis(50));
        l.event_handler();
        assert!(!l.is_blocked());
        assert!(l.consume_request(500));
        // A spurious event_handler call is harmless.
        l.event_handler();
    }

    #[test]
    fn request_charges_ops_and_bytes_atomically() {
        let limits = RateLimits {
            bandwidth: bucket(100, 60_000),
            ops: bucket(3, 60_000),
        };
        let group = RateLimitGroup::new("both", limits).unwrap();
        let mut l = RateLimiter::new(group.clone()).unwrap();
        assert!(l.consume_request(60));
        // The bytes do not fit: the op is given back.
        assert!(!l.consume_request(60));
        l.event_handler();
        let now = Instant::now();
        let mut b = group.lock();
        assert_eq!(b.ops.as_mut().unwrap().budget_at(now), 2);
        assert_eq!(b.bandwidth.as_mut().unwrap().budget_at(now), 40);
        drop(b);
        l.manual_replenish(60, TokenType::Bytes);
        assert!(l.consume_request(100));
        assert!(l.consume_request(0));
        assert!(!l.consume_request(0), "ops bucket empty");
        l.event_handler();
        l.replenish_request(100);
        assert!(l.consume_request(100));
    }

    #[test]
    fn a_group_is_shared_by_its_limiters() {
        let limits = RateLimits {
            bandwidth: None,
            ops: bucket(4, 60_000),
        };
        let group = RateLimitGroup::new("g", limits).unwrap();
        let mut a = RateLimiter::new(group.clone()).unwrap();
        let mut b = RateLimiter::new(group.clone()).unwrap();
        assert!(a.consume(2, TokenType::Ops));
        assert!(b.consume(2, TokenType::Ops));
        assert!(!a.consume(1, TokenType::Ops));
        assert!(!b.consume(1, TokenType::Ops));
        assert!(a.is_blocked() && b.is_blocked());
        assert_ne!(a.as_raw_fd(), b.as_raw_fd());
        assert_eq!(*a.group(), group);
        assert_eq!(group.id(), "g");
        assert!(RateLimitGroup::new(
            "bad",
            RateLimits {
                ops: bucket(0, 1),
                bandwidth: None
            }
        )
        .is_err());
    }
}
