//! GCRA, the generic cell rate algorithm (ATM's; governor's and redis-cell's rate limiter):
//! one number per key, its theoretical arrival time (TAT), in nanoseconds on a clock the caller
//! supplies (so tests inject it). Equivalent to a leaky bucket that holds `burst` requests
//! and drains one every `interval`.
//!
//! A request at `now` is allowed when `now >= TAT - tolerance` (TAT of a new key: `now`);
//! then `TAT = max(TAT, now) + interval`. `tolerance = interval * (burst - 1)`: a fresh key
//! may make `burst` requests at once, then one per `interval`. A denied request leaves the
//! TAT as it was (rejected requests do not use up budget) and learns its exact wait.

/// One limit's parameters, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    /// Emission interval T: the period over the rate's count.
    interval: u64,
    /// tau = T * (burst - 1).
    tolerance: u64,
    burst: u64,
}

/// The outcome for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; the key's new TAT.
    Allow(u64),
    /// Denied; nanoseconds until a request would be allowed (always above 0).
    Deny(u64),
}

impl Gcra {
    /// None when `interval` is 0, `burst` is 0, or tau does not fit in u64 nanoseconds.
    pub fn new(interval: u64, burst: u32) -> Option<Self> {
        if interval == 0 || burst == 0 {
            return None;
        }
        let tolerance = interval.checked_mul(u64::from(burst) - 1)?;
        // A TAT may run one interval past now + tau: keep that representable for centuries.
        tolerance.checked_add(interval)?.checked_mul(4)?;
        Some(Self {
            interval,
            tolerance,
            burst: u64::from(burst),
        })
    }

    pub fn interval(&self) -> u64 {
        self.interval
    }

    /// The decision for a request at `now` on a key whose TAT is `tat` (None: a new key).
    pub fn decide(&self, tat: Option<u64>, now: u64) -> Decision {
        let tat = tat.map_or(now, |t| t.max(now));
        let earliest = tat.saturating_sub(self.tolerance);
        if now < earliest {
            Decision::Deny(earliest - now)
        } else {
            Decision::Allow(tat.saturating_add(self.interval))
        }
    }

    /// The TAT with one allowed request given back (the request was rejected by another
    /// limit). Exact in sequence: a TAT below `now` behaves as `now` does.
    pub fn refund(&self, tat: u64) -> u64 {
        tat.saturating_sub(self.interval)
    }

    /// Requests a key with TAT `tat` may make at `now` (0..=burst).
    pub fn remaining(&self, tat: u64, now: u64) -> u64 {
        let ahead = tat.saturating_sub(now);
        if ahead > self.tolerance {
            0
        } else {
            ((self.tolerance - ahead) / self.interval + 1).min(self.burst)
        }
    }

    /// Nanoseconds until a key with TAT `tat` is back to its whole burst.
    pub fn until_full(&self, tat: u64, now: u64) -> u64 {
        tat.saturating_sub(now)
    }
}

/// Whole seconds, rounded up (Retry-After, the RateLimit field's `t`).
pub fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    /// Runs requests at the given times (ns) against one key; true = allowed.
    fn run(gcra: &Gcra, times: &[u64]) -> Vec<bool> {
        let mut tat = None;
        times
            .iter()
            .map(|&now| match gcra.decide(tat, now) {
                Decision::Allow(t) => {
                    tat = Some(t);
                    true
                }
                Decision::Deny(_) => false,
            })
            .collect()
    }

    #[test]
    fn two_per_second_burst_one() {
        // rate 2/s: T = 500 ms, tau = 0.
        let g = Gcra::new(SECOND / 2, 1).expect("valid");
        assert_eq!(
            run(&g, &[0, 0, SECOND / 2 - 1, SECOND / 2, SECOND / 2]),
            [true, false, false, true, false]
        );
        assert_eq!(g.decide(Some(SECOND / 2), 0), Decision::Deny(SECOND / 2));
        assert_eq!(
            g.decide(Some(SECOND / 2), SECOND / 4),
            Decision::Deny(SECOND / 4)
        );
    }

    #[test]
    fn burst_is_how_many_at_once_then_the_rate() {
        // 1/h, burst 3: three at once, the fourth waits exactly one hour.
        let hour = 3600 * SECOND;
        let g = Gcra::new(hour, 3).expect("valid");
        assert_eq!(
            run(&g, &[0, 0, 0, 0, hour - 1, hour, hour]),
            [true, true, true, false, false, true, false]
        );
        let tat = 3 * hour;
        assert_eq!(g.decide(Some(tat), 0), Decision::Deny(hour));
        assert_eq!((g.remaining(hour, 0), g.remaining(2 * hour, 0)), (2, 1));
        assert_eq!((g.remaining(tat, 0), g.until_full(tat, 0)), (0, tat));
        // An idle key is full, never more.
        assert_eq!(g.remaining(0, 10 * hour), 3);
    }

    #[test]
    fn rejected_requests_do_not_use_up_budget() {
        // Hammering while denied changes nothing: the next allowed time stays put.
        let g = Gcra::new(SECOND, 1).expect("valid");
        let times: Vec<u64> = (0..=10).map(|i| i * SECOND / 10).collect();
        let mut expected = vec![true];
        expected.extend([false; 9]);
        expected.push(true);
        assert_eq!(run(&g, &times), expected);
    }

    #[test]
    fn a_refund_restores_the_budget_exactly() {
        let g = Gcra::new(SECOND, 2).expect("valid");
        let Decision::Allow(tat) = g.decide(None, 5 * SECOND) else {
            panic!("a new key is allowed")
        };
        assert_eq!(g.remaining(tat, 5 * SECOND), 1);
        let back = g.refund(tat);
        assert_eq!(g.remaining(back, 5 * SECOND), 2);
        assert_eq!(g.decide(Some(back), 5 * SECOND), g.decide(None, 5 * SECOND));
    }

    #[test]
    fn nonsense_is_refused_and_seconds_round_up() {
        assert_eq!(Gcra::new(0, 1), None);
        assert_eq!(Gcra::new(SECOND, 0), None);
        assert_eq!(Gcra::new(u64::MAX / 2, 3), None);
        assert_eq!(
            (ceil_secs(1), ceil_secs(SECOND), ceil_secs(SECOND + 1)),
            (1, 1, 2)
        );
    }
}
