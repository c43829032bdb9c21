//! The L7 tier's global guard (`lb run --max-connections N --max-memory SIZE`), after Envoy's
//! overload manager: limits for the tier as a whole, beside each listener's own.
//!
//! - `max_connections`: client connections open on all HTTP listeners together. At the limit
//!   the accept loops wait (new connections queue in the kernel, as with a listener's own
//!   `max_connections`), so lb stops accepting rather than failing connections it took.
//! - `max_memory`: the process's resident memory, sampled every `MEMORY_PERIOD` from
//!   `/proc/self/statm`. Above it, every new request is answered 503 (`Retry-After`,
//!   `x-lb-overloaded: memory`) before routing, until the next sample below it.
//!
//! The admin listener (status, metrics) is served by the manager, outside both guards: it
//! keeps answering while the tier sheds. Without the flags nothing is created: the request
//! path checks one `Option`.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

/// How often resident memory is sampled.
const MEMORY_PERIOD: Duration = Duration::from_millis(100);

/// The global limits (None: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalLimits {
    pub max_connections: Option<usize>,
    pub max_memory: Option<u64>,
}

/// Whether the process is over its memory bound (refreshed by a sampling task).
#[derive(Debug)]
pub struct MemoryGuard {
    limit: u64,
    over: AtomicBool,
    /// The last resident size sampled, bytes.
    resident: AtomicU64,
}

impl MemoryGuard {
    /// Starts sampling on the current tokio runtime; the task ends with the last handle.
    pub fn start(limit: u64) -> Arc<Self> {
        let guard = Arc::new(Self {
            limit,
            over: AtomicBool::new(false),
            resident: AtomicU64::new(0),
        });
        guard.sample();
        let weak = Arc::downgrade(&guard);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(MEMORY_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(guard) = weak.upgrade() else { return };
                guard.sample();
            }
        });
        guard
    }

    fn sample(&self) {
        // Unreadable (not Linux): never over.
        let Some(resident) = resident_bytes() else {
            return;
        };
        self.resident.store(resident, Ordering::Relaxed);
        self.over.store(resident > self.limit, Ordering::Relaxed);
    }

    /// Over the bound at the last sample.
    pub fn is_over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    pub fn resident(&self) -> u64 {
        self.resident.load(Ordering::Relaxed)
    }
}

/// Resident set size of this process (`/proc/self/statm`'s second field, in pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096))
}

/// A byte size: a number with an optional unit (`K`, `M`, `G`, `KiB`, `MiB`, `GiB`: powers of
/// 1024; `KB`, `MB`, `GB`: of 1000), e.g. `512MiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 512MiB)"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (K, M, G, KiB, MB, ...)"
            ));
        }
    };
    number
        .checked_mul(scale)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} must be above 0 and fit in 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[tokio::test]
    async fn a_bound_below_the_resident_size_is_over_and_one_above_is_not() {
        let Some(now) = resident_bytes() else { return };
        assert!(MemoryGuard::start(1).is_over());
        let roomy = MemoryGuard::start(now * 16);
        assert!(!roomy.is_over());
        assert!(roomy.resident() > 0);
    }
}
