//! A token bucket with Firecracker/Cloud Hypervisor semantics: `size`
//! tokens refilled evenly over `refill_time` milliseconds, starting full,
//! plus a `one_time_burst` of extra tokens spent first and never refilled.
//!
//! The budget is kept in "scaled" units (tokens × refill nanoseconds) so
//! refills are exact integer arithmetic: every elapsed nanosecond adds
//! `size` scaled units and a token costs `refill_ns` of them, with no
//! rounding drift however often the bucket is refilled.
//!
//! A request larger than the bucket can never fit; it passes as soon as
//! the bucket is out of debt and leaves the budget negative (an
//! overdraft), so later requests wait until the debt is paid back. The
//! average rate is therefore honoured even for oversized requests.

use std::time::{Duration, Instant};

use super::RateLimiterError;

/// Longest refill period accepted (about 49 days); keeps the scaled
/// arithmetic far from `i128` overflow.
pub const MAX_REFILL_TIME_MS: u64 = u32::MAX as u64;

const NS_PER_MS: u128 = 1_000_000;

/// One token bucket. Methods take the current monotonic time so that
/// tests can inject it.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    size: u64,
    refill_time_ms: u64,
    /// Nanoseconds to refill a whole bucket (the scale of a token).
    refill_ns: i128,
    /// Current budget in scaled units; negative while in overdraft.
    budget: i128,
    /// `size * refill_ns`: the full-bucket budget.
    max: i128,
    /// Remaining one-time burst tokens.
    burst: u64,
    /// Time up to which refills were accounted.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `size` tokens refilled over `refill_time_ms`, with
    /// `one_time_burst` extra tokens, starting now.
    pub fn new(
        size: u64,
        one_time_burst: u64,
        refill_time_ms: u64,
    ) -> Result<Self, RateLimiterError> {
        Self::new_at(size, one_time_burst, refill_time_ms, Instant::now())
    }

    /// As [`Self::new`], with the creation time given (deterministic tests).
    pub fn new_at(
        size: u64,
        one_time_burst: u64,
        refill_time_ms: u64,
        now: Instant,
    ) -> Result<Self, RateLimiterError> {
        if size == 0 {
            return Err(RateLimiterError::ZeroSize);
        }
        if refill_time_ms == 0 || refill_time_ms > MAX_REFILL_TIME_MS {
            return Err(RateLimiterError::RefillTime(refill_time_ms));
        }
        // refill_ns < 2^53 and size < 2^64: the product fits in 2^117.
        let refill_ns = (u128::from(refill_time_ms) * NS_PER_MS) as i128;
        let max = i128::from(size) * refill_ns;
        Ok(TokenBucket {
            size,
            refill_time_ms,
            refill_ns,
            budget: max,
            max,
            burst: one_time_burst,
            last: now,
        })
    }

    /// Tokens per refill period.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The refill period in milliseconds.
    pub fn refill_time_ms(&self) -> u64 {
        self.refill_time_ms
    }

    /// Remaining one-time burst tokens.
    pub fn one_time_burst(&self) -> u64 {
        self.burst
    }

    /// Whole tokens in the regular budget at `now` (negative in overdraft).
    pub fn budget_at(&mut self, now: Instant) -> i128 {
        self.refill(now);
        self.budget.div_euclid(self.refill_ns)
    }

    /// Adds the tokens earned since the last refill, up to a full bucket.
    fn refill(&mut self, now: Instant) {
        if now <= self.last {
            return;
        }
        let ns = now.duration_since(self.last).as_nanos();
        self.last = now;
        let room = (self.max - self.budget) as u128;
        let earned = ns.saturating_mul(u128::from(self.size)).min(room);
        // earned <= room <= 2^118: fits.
        self.budget += earned as i128;
    }

    /// Scaled cost of `tokens` (saturating; a `u64` count times `refill_ns`
    /// stays below 2^117).
    fn scaled(&self, tokens: u64) -> i128 {
        i128::from(tokens).saturating_mul(self.refill_ns)
    }

    /// Takes `tokens` at `now` if available (burst first, then budget); an
    /// oversized request (more than `size` beyond the burst) is taken as an
    /// overdraft once the bucket is out of debt. False leaves the bucket
    /// unchanged.
    pub fn consume_at(&mut self, tokens: u64, now: Instant) -> bool {
        if tokens <= self.burst {
            self.burst -= tokens;
            return true;
        }
        self.refill(now);
        let rest = tokens - self.burst;
        let ok = if rest > self.size {
            self.budget >= 0
        } else {
            self.budget >= self.scaled(rest)
        };
        if ok {
            self.burst = 0;
            self.budget = self.budget.saturating_sub(self.scaled(rest));
        }
        ok
    }

    /// How long after `now` a [`Self::consume_at`] of `tokens` will succeed
    /// (zero if it would now), assuming nobody else consumes meanwhile.
    pub fn wait_time(&mut self, tokens: u64, now: Instant) -> Duration {
        if tokens <= self.burst {
            return Duration::ZERO;
        }
        self.refill(now);
        let rest = tokens - self.burst;
        let need = if rest > self.size {
            0
        } else {
            self.scaled(rest)
        };
        let deficit = need - self.budget;
        if deficit <= 0 {
            return Duration::ZERO;
        }
        // Each nanosecond earns `size` scaled units; round up.
        let size = i128::from(self.size);
        let ns = (deficit + size - 1) / size;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Gives back `tokens` taken for work that was then not done (up to a
    /// full bucket; the one-time burst is not restored).
    pub fn replenish(&mut self, tokens: u64) {
        self.budget = self
            .budget
            .saturating_add(self.scaled(tokens))
            .min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rejects_unusable_parameters() {
        assert!(matches!(
            TokenBucket::new(0, 0, 100),
            Err(RateLimiterError::ZeroSize)
        ));
        assert!(matches!(
            TokenBucket::new(10, 0, 0),
            Err(RateLimiterError::RefillTime(0))
        ));
        assert!(TokenBucket::new(u64::MAX, u64::MAX, MAX_REFILL_TIME_MS).is_ok());
        assert!(TokenBucket::new(1, 0, MAX_REFILL_TIME_MS + 1).is_err());
    }

    #[test]
    fn starts_full_and_refills_linearly() {
        let t0 = Instant::now();
        // 1000 tokens per second.
        let mut b = TokenBucket::new_at(1000, 0, 1000, t0).unwrap();
        assert!(b.consume_at(600, t0));
        assert!(b.consume_at(400, t0));
        assert!(!b.consume_at(1, t0));
        assert_eq!(b.wait_time(1, t0), ms(1));
        assert_eq!(b.wait_time(250, t0), ms(250));
        // 249 ms earn 249 tokens: 250 is still refused, 249 passes.
        assert!(!b.consume_at(250, t0 + ms(249)));
        assert!(b.consume_at(249, t0 + ms(249)));
        assert_eq!(b.budget_at(t0 + ms(249)), 0);
        // Sub-token remainders are kept: 1.5 ms + 1.5 ms = 3 tokens.
        let t = t0 + ms(249);
        assert_eq!(b.budget_at(t + Duration::from_micros(1500)), 1);
        assert_eq!(b.budget_at(t + Duration::from_micros(3000)), 3);
        // Refill stops at a full bucket however long the pause.
        assert_eq!(b.budget_at(t0 + Duration::from_secs(3600)), 1000);
        // Time going backwards is ignored.
        assert_eq!(b.budget_at(t0), 1000);
    }

    #[test]
    fn one_time_burst_is_spent_first_and_not_refilled() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new_at(100, 50, 1000, t0).unwrap();
        assert!(b.consume_at(30, t0));
        assert_eq!((b.one_time_burst(), b.budget_at(t0)), (20, 100));
        // 20 from the burst, 80 from the budget.
        assert!(b.consume_at(100, t0));
        assert_eq!((b.one_time_burst(), b.budget_at(t0)), (0, 20));
        // A burst covering a request needs no wait and no budget.
        let mut c = TokenBucket::new_at(100, 500, 1000, t0).unwrap();
        assert_eq!(c.wait_time(400, t0), Duration::ZERO);
        assert!(c.consume_at(400, t0));
        assert_eq!((c.one_time_burst(), c.budget_at(t0)), (100, 100));
        assert_eq!(b.budget_at(t0 + ms(10_000)), 100);
        assert_eq!(b.one_time_burst(), 0);
    }

    #[test]
    fn oversized_requests_overdraw_and_pay_back() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new_at(100, 0, 1000, t0).unwrap();
        assert!(b.consume_at(10, t0));
        // 250 > size: passes (bucket not in debt), leaving 90 - 250.
        assert!(b.consume_at(250, t0));
        assert_eq!(b.budget_at(t0), -160);
        // Nothing passes until the debt is paid: 1.6 s, then 10 ms more
        // for one more token; an oversized request only waits for zero.
        assert_eq!(b.wait_time(1, t0), ms(1610));
        assert_eq!(b.wait_time(500, t0), ms(1600));
        assert!(!b.consume_at(500, t0 + ms(1599)));
        assert!(!b.consume_at(1, t0 + ms(1600)));
        assert!(b.consume_at(500, t0 + ms(1600)));
        assert_eq!(b.budget_at(t0 + ms(1600)), -500);
        // The average rate holds: 760 tokens took 6.6 s at 100/s with
        // a full bucket at the start.
        assert!(b.consume_at(1, t0 + ms(6610)));
    }

    #[test]
    fn replenish_caps_at_full() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new_at(100, 0, 1000, t0).unwrap();
        assert!(b.consume_at(70, t0));
        b.replenish(80);
        assert_eq!(b.budget_at(t0), 100);
        assert!(b.consume_at(100, t0));
        b.replenish(u64::MAX);
        assert_eq!(b.budget_at(t0), 100);
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new_at(u64::MAX, 0, MAX_REFILL_TIME_MS, t0).unwrap();
        assert!(b.consume_at(u64::MAX, t0));
        assert!(!b.consume_at(u64::MAX, t0));
        assert!(b.wait_time(u64::MAX, t0) > Duration::ZERO);
        assert!(b.consume_at(
            u64::MAX,
            t0 + Duration::from_secs(MAX_REFILL_TIME_MS / 1000 + 1)
        ));
        let mut s = TokenBucket::new_at(1, 0, 1, t0).unwrap();
        assert!(s.consume_at(u64::MAX, t0));
        assert!(!s.consume_at(1, t0 + Duration::from_secs(1)));
        assert!(s.wait_time(1, t0) > Duration::from_secs(1 << 30));
    }
}
