//! Admission control of `/receive`: how many requests of one api may wait
//! for the database at once.
//!
//! A fixed bound cannot serve both ends: the 1 000/s the machine carries
//! keeps 26–33 requests in flight, while at 5 000/s on SQLite a bound of
//! 128 lets the writer lock queue them for 130–210 ms (BENCHMARKS.md, the
//! `receive_limit` sweep). So the bound moves: `receive_limit` is its
//! ceiling, and the limit in force follows the time admitted requests hold
//! their place (admission to commit), the queueing delay the limit exists to
//! bound. It is adjusted once per [`WINDOW`] in which requests finished,
//! from the mean of their times:
//!
//! - **above `receive_latency_target`** in two windows in a row, requests
//!   queue behind each other (one slow window alone may be a stall, such
//!   as a checkpoint, which refusing would not shorten, and is let pass):
//!   the limit is scaled by `target / mean` (at most halved per window, and
//!   not below [`MIN_LIMIT`]), so it settles where the database commits
//!   what it admits within the target, and what it cannot take is refused
//!   at once with `503 overloaded`;
//! - **at or below it**, while the limit is in use (requests held three
//!   quarters of it, or were refused), it grows by an eighth (at least
//!   one) up to `receive_limit`, so a load the database keeps up with is
//!   never refused for long after a burst; while it is not, it decays
//!   towards [`HEADROOM`] times the use, so that a sudden overload starts
//!   from what the load needed rather than from the ceiling, and a light
//!   load's own moments of pile-up (a stall of a few milliseconds on a
//!   busy machine) still fit.
//!
//! This is the additive-increase, multiplicative-decrease of TCP's
//! congestion control with a delay signal (as TCP Vegas, or Netflix's
//! concurrency-limits), on the mean rather than a percentile: a window
//! holds tens to hundreds of requests, and one slow commit among them (a
//! checkpoint) must not halve the limit. A `receive_latency_target` of `0`
//! turns it off: the limit is then `receive_limit`, fixed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use metrics::Gauge;

/// How often the limit is adjusted, at most.
pub const WINDOW: Duration = Duration::from_millis(100);
/// The limit never drops below this (`receive_limit` if that is smaller).
/// At 16 requests in flight SQLite's accepted requests stayed at 38 ms p99
/// at 5 000/s offered (BENCHMARKS.md); and a database whose commits are
/// slower than the target even at light load (a starved machine, a distant
/// server) still gets batches of 16, rather than a trickle.
pub const MIN_LIMIT: usize = 16;

/// An unused limit decays towards this many times the most places held at
/// once in a window. At twice, 1 000/s offered on PostgreSQL (5–12 held)
/// left the limit at 16–24, and a stall of 10–20 ms queued past it: a few
/// requests in a thousand refused with a `503` at a load the api carries
/// five times over (BENCHMARKS.md, the eleventh section).
pub const HEADROOM: usize = 4;

/// The limit and who holds a place; shared by every `/receive` request.
#[derive(Debug)]
pub struct Admission {
    state: Mutex<Limiter>,
    waiting: Gauge,
    limit: Gauge,
}

impl Admission {
    /// `ceiling` is `receive_limit`; `target` is `receive_latency_target`
    /// (zero: the limit stays at `ceiling`).
    pub fn new(ceiling: usize, target: Duration) -> Arc<Self> {
        let limit = ferry_core::metrics::receive_limit();
        let limiter = Limiter::new(ceiling, target, Instant::now());
        limit.set(limiter.limit as f64);
        Arc::new(Self {
            state: Mutex::new(limiter),
            waiting: ferry_core::metrics::receive_waiting(),
            limit,
        })
    }

    /// A place, held until the returned guard is dropped; `None` while the
    /// limit in force is taken.
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        self.lock().admit()?;
        self.waiting.increment(1);
        Some(Admitted {
            admission: self.clone(),
            since: Instant::now(),
        })
    }

    /// The limit in force now.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Limiter> {
        // The limiter's state is a few numbers, consistent after every
        // call: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A `/receive` request's place ([`Admission::admit`]): given back when
/// dropped, reporting how long it was held.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    since: Instant,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let now = Instant::now();
        let changed = self.admission.lock().release(now - self.since, now);
        self.admission.waiting.decrement(1);
        if let Some(limit) = changed {
            self.admission.limit.set(limit as f64);
        }
    }
}

/// The arithmetic of [`Admission`], with time passed in.
#[derive(Debug)]
struct Limiter {
    ceiling: usize,
    floor: usize,
    target: Duration,
    limit: usize,
    in_flight: usize,
    window_start: Instant,
    /// Places given back in this window, and how long they were held.
    released: u32,
    held: Duration,
    /// The most places held at once in this window.
    peak: usize,
    /// Whether the last window's mean was above the target.
    queued: bool,
}

impl Limiter {
    fn new(ceiling: usize, target: Duration, now: Instant) -> Self {
        Self {
            ceiling,
            floor: MIN_LIMIT.min(ceiling),
            target,
            limit: ceiling,
            in_flight: 0,
            window_start: now,
            released: 0,
            held: Duration::ZERO,
            peak: 0,
            queued: false,
        }
    }

    fn admit(&mut self) -> Option<()> {
        if self.in_flight >= self.limit {
            // Refused: the limit was in use.
            self.peak = self.limit;
            return None;
        }
        self.in_flight += 1;
        self.peak = self.peak.max(self.in_flight);
        Some(())
    }

    /// A place held for `held` is given back at `now`; the new limit if
    /// this ended a window and moved it.
    fn release(&mut self, held: Duration, now: Instant) -> Option<usize> {
        self.in_flight -= 1;
        if self.target.is_zero() {
            return None;
        }
        self.released += 1;
        self.held += held;
        if now.duration_since(self.window_start) < WINDOW {
            return None;
        }
        let mean = self.held / self.released;
        let peak = std::mem::replace(&mut self.peak, self.in_flight);
        self.window_start = now;
        self.released = 0;
        self.held = Duration::ZERO;
        let before = self.limit;
        let queued = std::mem::replace(&mut self.queued, mean > self.target);
        self.limit = if mean > self.target && !queued {
            // One slow window may be a stall (a checkpoint): the limit is
            // held, and lowered only if the next one is slow too.
            self.limit
        } else if mean > self.target {
            let scaled = self.limit as f64 * self.target.as_secs_f64() / mean.as_secs_f64();
            (scaled as usize).max(self.limit / 2)
        } else if peak * 4 >= self.limit * 3 {
            self.limit + (self.limit / 8).max(1)
        } else {
            // Not in use: it decays towards HEADROOM times what was, so
            // that a sudden overload starts from what the load needed, not
            // from the ceiling.
            (self.limit - self.limit / 8).max(peak * HEADROOM)
        }
        .clamp(self.floor, self.ceiling);
        (self.limit != before).then_some(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Duration = Duration::from_millis(20);

    /// Admits `n` at `now` and gives them back after `held` each: one
    /// window's worth.
    fn window(l: &mut Limiter, now: &mut Instant, n: usize, held: Duration) -> usize {
        let mut admitted = 0;
        for _ in 0..n {
            if l.admit().is_some() {
                admitted += 1;
            }
        }
        // All but the last before the window ends; the last ends it.
        for _ in 1..admitted {
            l.release(held, *now + WINDOW - Duration::from_nanos(1));
        }
        *now += WINDOW;
        if admitted > 0 {
            l.release(held, *now);
        }
        admitted
    }

    #[test]
    fn queueing_delay_shrinks_the_limit_and_its_absence_restores_it() {
        let mut now = Instant::now();
        let mut l = Limiter::new(128, TARGET, now);
        assert_eq!(window(&mut l, &mut now, 200, TARGET / 4), 128);
        assert_eq!(l.limit, 128, "in use, under the target, at the ceiling");
        // Four times the target: once may be a stall; then halved at most
        // per window, down to where the commits keep within the target.
        window(&mut l, &mut now, 200, TARGET * 4);
        assert_eq!(l.limit, 128);
        window(&mut l, &mut now, 200, TARGET * 4);
        assert_eq!(l.limit, 64);
        window(&mut l, &mut now, 200, TARGET * 4);
        assert_eq!(l.limit, 32);
        // Slightly over: scaled by target / mean.
        window(&mut l, &mut now, 200, TARGET * 5 / 4);
        assert_eq!(l.limit, 25);
        assert_eq!(
            window(&mut l, &mut now, 200, TARGET),
            25,
            "the rest refused"
        );
        // A stall between fast windows does not move it down.
        window(&mut l, &mut now, 200, TARGET * 10);
        window(&mut l, &mut now, 200, TARGET / 2);
        window(&mut l, &mut now, 200, TARGET * 10);
        assert!(l.limit >= 25, "{}", l.limit);
        // Never below the floor.
        for _ in 0..20 {
            window(&mut l, &mut now, 200, TARGET * 100);
        }
        assert_eq!(l.limit, MIN_LIMIT);
        assert_eq!(window(&mut l, &mut now, 200, TARGET * 100), MIN_LIMIT);
        // Fast commits again: it climbs back to the ceiling, and stays.
        let mut windows = 0;
        while l.limit < 128 {
            window(&mut l, &mut now, 200, TARGET / 4);
            windows += 1;
        }
        assert!(windows < 30, "{windows} windows to recover");
        window(&mut l, &mut now, 200, TARGET / 4);
        assert_eq!(l.limit, 128);
        // Unused, it decays towards HEADROOM times the use.
        for _ in 0..20 {
            assert_eq!(window(&mut l, &mut now, 20, TARGET / 4), 20);
        }
        assert_eq!(l.limit, 20 * HEADROOM);
    }

    #[test]
    fn one_slow_commit_among_many_does_not_move_it() {
        let mut now = Instant::now();
        let mut l = Limiter::new(128, TARGET, now);
        for _ in 0..50 {
            l.admit().unwrap();
        }
        now += WINDOW;
        l.release(Duration::from_millis(400), now);
        for _ in 1..50 {
            l.release(Duration::from_millis(4), now);
        }
        assert_eq!(l.limit, 128);
    }

    #[test]
    fn the_limit_moves_once_per_window() {
        let start = Instant::now();
        let mut l = Limiter::new(128, TARGET, start);
        for _ in 0..3 {
            l.admit().unwrap();
        }
        assert_eq!(l.peak, 3);
        // Within the window: counted, not acted on.
        assert_eq!(l.release(TARGET * 10, start + WINDOW / 2), None);
        assert_eq!(
            l.release(TARGET * 10, start + WINDOW),
            None,
            "a first slow window"
        );
        assert_eq!(l.release(TARGET * 10, start + WINDOW * 3 / 2), None);
        l.admit().unwrap();
        assert_eq!(l.release(TARGET * 10, start + WINDOW * 2), Some(64));
        assert_eq!(l.in_flight, 0);
    }

    #[test]
    fn a_zero_target_keeps_the_ceiling() {
        let mut now = Instant::now();
        let mut l = Limiter::new(2, Duration::ZERO, now);
        assert_eq!(window(&mut l, &mut now, 5, Duration::from_secs(5)), 2);
        assert_eq!(l.limit, 2);
        // A ceiling below the floor is the floor.
        let mut l = Limiter::new(1, TARGET, now);
        window(&mut l, &mut now, 5, Duration::from_secs(5));
        window(&mut l, &mut now, 5, Duration::from_secs(5));
        assert_eq!(l.limit, 1);
    }
}
