//! The rise/fall state machine of one backend (HAProxy's semantics): a backend that is up goes
//! down after `fall` failed checks in a row; one that is down comes back after `rise`
//! successful checks in a row. A backend starts up (so a fresh start serves at once, as nginx
//! does) unless the caller says otherwise.
use std::time::{Duration, Instant};

/// What one observation did to the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    WentDown,
    CameUp,
    /// The first passing check of a backend that started up: no change of state, but now
    /// it is known to work (what announcing a VIP by BGP waits for).
    FirstPass,
}

#[derive(Clone, Debug)]
pub struct HealthState {
    up: bool,
    /// Consecutive results against the current state (failures while up, successes while down).
    streak: u32,
    rise: u32,
    fall: u32,
    /// When the backend last came up (for slow start); `None` if it has been up since start.
    up_since: Option<Instant>,
    pub last_error: Option<String>,
    pub checks: u64,
    pub failures: u64,
    /// The latest check: passed or not, its error, how long it took.
    last_check: Option<(bool, Option<String>, Duration)>,
    /// When the state last changed (or was created).
    changed_at: Instant,
    /// Time spent down before the current period, and when the current down period began.
    downtime: Duration,
    down_since: Option<Instant>,
}

/// One backend's check history as the status page shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckDetail {
    /// The latest check passed (None: not checked yet).
    pub passed: Option<bool>,
    /// Why the latest check failed.
    pub reason: Option<String>,
    pub duration: Duration,
    pub since_change: Duration,
    /// Down time in total, the current down period included.
    pub downtime: Duration,
    pub checks: u64,
    pub failures: u64,
}

impl HealthState {
    pub fn new(rise: u32, fall: u32, up: bool) -> Self {
        Self {
            up,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
            up_since: None,
            last_error: None,
            checks: 0,
            failures: 0,
            last_check: None,
            changed_at: Instant::now(),
            downtime: Duration::ZERO,
            down_since: (!up).then(Instant::now),
        }
    }

    /// Records one check result that took `took` at `now`.
    pub fn observe_timed(
        &mut self,
        result: Result<(), String>,
        took: Duration,
        now: Instant,
    ) -> Transition {
        self.last_check = Some((result.is_ok(), result.as_ref().err().cloned(), took));
        self.observe(result, now)
    }

    pub fn detail(&self, now: Instant) -> CheckDetail {
        let current_down = self
            .down_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        CheckDetail {
            passed: self.last_check.as_ref().map(|c| c.0),
            reason: self.last_check.as_ref().and_then(|c| c.1.clone()),
            duration: self.last_check.as_ref().map_or(Duration::ZERO, |c| c.2),
            since_change: now.saturating_duration_since(self.changed_at),
            downtime: self.downtime + current_down,
            checks: self.checks,
            failures: self.failures,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Up, and a check has passed (not just assumed up at start).
    pub fn is_up_and_checked(&self) -> bool {
        self.up && self.checks > self.failures
    }

    /// When the backend last came back up (`None`: up since start, or down).
    pub fn up_since(&self) -> Option<Instant> {
        self.up_since.filter(|_| self.up)
    }

    /// Records one check result at `now`.
    pub fn observe(&mut self, result: Result<(), String>, now: Instant) -> Transition {
        self.checks += 1;
        let ok = result.is_ok();
        if let Err(e) = result {
            self.failures += 1;
            self.last_error = Some(e);
        }
        if ok == self.up {
            self.streak = 0;
            if ok && self.checks - self.failures == 1 {
                return Transition::FirstPass;
            }
            return Transition::None;
        }
        self.streak += 1;
        if self.up && self.streak >= self.fall {
            self.up = false;
            self.streak = 0;
            self.changed_at = now;
            self.down_since = Some(now);
            Transition::WentDown
        } else if !self.up && self.streak >= self.rise {
            self.up = true;
            self.streak = 0;
            self.up_since = Some(now);
            self.last_error = None;
            self.changed_at = now;
            if let Some(since) = self.down_since.take() {
                self.downtime += now.saturating_duration_since(since);
            }
            Transition::CameUp
        } else {
            Transition::None
        }
    }

    /// The share of its configured weight a backend gets at `now` (slow start: ramps linearly
    /// from 10% to 100% over `slow_start` after it came back up; 0 while down).
    pub fn weight_factor(&self, now: Instant, slow_start: Duration) -> f64 {
        if !self.up {
            return 0.0;
        }
        match self.up_since {
            Some(since) if !slow_start.is_zero() => {
                let elapsed = now.saturating_duration_since(since).as_secs_f64();
                (0.1 + 0.9 * elapsed / slow_start.as_secs_f64()).min(1.0)
            }
            _ => 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_keeps_the_last_check_and_the_downtime() {
        let start = Instant::now();
        let mut s = HealthState::new(1, 1, true);
        let took = Duration::from_millis(3);
        s.observe_timed(Err("refused".into()), took, start);
        let later = start + Duration::from_secs(5);
        let d = s.detail(later);
        assert_eq!(d.passed, Some(false));
        assert_eq!(d.reason.as_deref(), Some("refused"));
        assert_eq!(d.duration, took);
        assert_eq!(d.downtime, Duration::from_secs(5));
        assert_eq!(d.since_change, Duration::from_secs(5));
        s.observe_timed(Ok(()), took, later);
        let d = s.detail(later + Duration::from_secs(10));
        assert_eq!((d.passed, d.reason), (Some(true), None));
        assert_eq!(d.downtime, Duration::from_secs(5), "closed period only");
        assert_eq!(d.since_change, Duration::from_secs(10));
        assert_eq!((d.checks, d.failures), (2, 1));
    }

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let now = Instant::now();
        let mut s = HealthState::new(2, 3, true);
        let fail = || Err("refused".to_owned());
        assert_eq!(s.observe(fail(), now), Transition::None);
        assert_eq!(s.observe(fail(), now), Transition::None);
        // A success in between resets the streak (and, the first one, confirms the backend).
        assert_eq!(s.observe(Ok(()), now), Transition::FirstPass);
        assert!(s.is_up_and_checked());
        assert_eq!(s.observe(fail(), now), Transition::None);
        assert_eq!(s.observe(fail(), now), Transition::None);
        assert_eq!(s.observe(fail(), now), Transition::WentDown);
        assert!(!s.is_up());
        assert_eq!(s.last_error.as_deref(), Some("refused"));
        assert_eq!(s.observe(Ok(()), now), Transition::None);
        assert_eq!(s.observe(fail(), now), Transition::None);
        assert_eq!(s.observe(Ok(()), now), Transition::None);
        assert_eq!(s.observe(Ok(()), now), Transition::CameUp);
        assert!(s.is_up());
        assert_eq!((s.checks, s.failures), (10, 6));
    }

    #[test]
    fn slow_start_ramps_the_weight_after_recovery() {
        let t0 = Instant::now();
        let ramp = Duration::from_secs(10);
        let mut s = HealthState::new(1, 1, true);
        assert_eq!(
            s.weight_factor(t0, ramp),
            1.0,
            "up since start: full weight"
        );
        s.observe(Err("x".into()), t0);
        assert_eq!(s.weight_factor(t0, ramp), 0.0);
        s.observe(Ok(()), t0);
        assert!((s.weight_factor(t0, ramp) - 0.1).abs() < 1e-9);
        let half = s.weight_factor(t0 + Duration::from_secs(5), ramp);
        assert!((half - 0.55).abs() < 1e-9, "{half}");
        assert_eq!(s.weight_factor(t0 + Duration::from_secs(11), ramp), 1.0);
        assert_eq!(s.weight_factor(t0, Duration::ZERO), 1.0);
    }
}
