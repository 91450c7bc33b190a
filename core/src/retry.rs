//! One retry vocabulary: how many tries, how long between them. A route's
//! retries and the reconnect loops for the broker and the database all wait
//! by a [`RetryPolicy`].

use std::time::Duration;

use rand::Rng as _;

/// How often to try and how long to wait between tries: `base`, doubled for
/// each later try, at most `cap`, spread by ±`jitter` (a fraction) so that
/// many waiters do not wake together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, the first one included (at least 1).
    pub attempts: u32,
    /// Wait after the first try.
    pub base: Duration,
    /// Longest wait.
    pub cap: Duration,
    /// Spread of each wait, as a fraction of it (0.25 is ±25%).
    pub jitter: f64,
}

impl RetryPolicy {
    /// A route's default: 3 tries, 1 s doubling to at most an hour, ±25%.
    pub const ROUTE_DEFAULT: Self = Self {
        attempts: 3,
        base: Duration::from_secs(1),
        cap: Duration::from_secs(3600),
        jitter: 0.25,
    };

    /// Reconnecting to a service that is down: tries for ever, 200 ms
    /// doubling to 5 s, ±10%.
    pub const RECONNECT: Self = Self {
        attempts: u32::MAX,
        base: Duration::from_millis(200),
        cap: Duration::from_secs(5),
        jitter: 0.1,
    };

    /// Whether another try is allowed after `tried` tries.
    pub fn allows_another(&self, tried: u32) -> bool {
        tried < self.attempts
    }

    /// The wait after try number `tried` (1 for the first), before jitter.
    pub fn base_delay(&self, tried: u32) -> Duration {
        let doublings = tried.saturating_sub(1).min(32);
        self.base
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// The wait after try number `tried` (1 for the first), with jitter.
    pub fn delay(&self, tried: u32) -> Duration {
        let base = self.base_delay(tried);
        if self.jitter <= 0.0 {
            return base;
        }
        let spread = self.jitter.min(1.0);
        base.mul_f64(rand::rng().random_range(1.0 - spread..=1.0 + spread))
    }

    /// A running count of tries under this policy, for a reconnect loop.
    pub fn backoff(self) -> Backoff {
        Backoff {
            policy: self,
            tried: 0,
        }
    }
}

/// The state of one retry loop: each [`Backoff::next`] is the next wait;
/// [`Backoff::reset`] after a success starts again from the base.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    policy: RetryPolicy,
    tried: u32,
}

impl Backoff {
    /// The wait before the next try. A loop bounded by a count rather than
    /// by a deadline asks [`Backoff::spent`] first.
    pub fn next_wait(&mut self) -> Duration {
        self.tried = self.tried.saturating_add(1);
        self.policy.delay(self.tried)
    }

    /// Whether the policy's tries are all used.
    pub fn spent(&self) -> bool {
        // Each wait handed out followed a failed try, and so did this check.
        !self.policy.allows_another(self.tried.saturating_add(1))
    }

    /// Starts again from the base wait.
    pub fn reset(&mut self) {
        self.tried = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_within_the_jitter() {
        let policy = RetryPolicy {
            attempts: 5,
            base: Duration::from_secs(2),
            cap: Duration::from_secs(10),
            jitter: 0.25,
        };
        for (tried, base) in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (40, 10.0)] {
            let d = policy.delay(tried).as_secs_f64();
            assert!((base * 0.75..=base * 1.25).contains(&d), "try {tried}: {d}");
            assert_eq!(policy.base_delay(tried).as_secs_f64(), base, "try {tried}");
        }
    }

    #[test]
    fn a_backoff_is_spent_after_its_tries_and_restarts_on_reset() {
        let mut backoff = RetryPolicy {
            attempts: 3,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            jitter: 0.0,
        }
        .backoff();
        assert_eq!(backoff.next_wait(), Duration::from_millis(100));
        assert!(!backoff.spent());
        assert_eq!(backoff.next_wait(), Duration::from_millis(200));
        assert!(backoff.spent(), "two waits between three tries");
        backoff.reset();
        assert!(!backoff.spent());
        assert_eq!(backoff.next_wait(), Duration::from_millis(100));
    }

    #[test]
    fn reconnecting_never_gives_up() {
        let mut backoff = RetryPolicy::RECONNECT.backoff();
        for _ in 0..1000 {
            assert!(backoff.next_wait() <= Duration::from_millis(5500));
            assert!(!backoff.spent());
        }
    }
}
