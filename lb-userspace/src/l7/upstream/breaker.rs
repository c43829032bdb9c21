//! Circuit breaking per pool (Envoy's cluster `circuit_breakers` thresholds): static caps on
//! what one pool may have going on at once. Over a cap, lb does not wait: the request gets a
//! 503 at once (`answer::overloaded`), a retry is simply not made.
//!
//! What each cap counts, in lb:
//! - `max_connections`: upstream connections of the pool open or being opened (all backends
//!   together). A request that needs a new connection while the pool has this many is shed.
//! - `max_pending_requests`: requests waiting for a new upstream connection, i.e. whose
//!   connect (TCP, PROXY header, TLS handshake) is in progress. A request that finds an idle
//!   keep-alive connection is never pending.
//! - `max_requests`: requests in flight to the pool, from admission to the response head
//!   (retries included: a request counts once).
//! - `max_retries`: retries in flight to the pool at once.
//!
//! Unset caps cost nothing: a pool without `[pool.circuit_breaker]` has no `Breaker`.
use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

/// The caps of `[pool.circuit_breaker]` (None: no cap). Compared on reload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BreakerSettings {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
}

/// Why lb shed a request (or refused a retry) itself: the access log's `shed` field, the
/// `reason` label of `lb_shed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shed {
    MaxConnections,
    MaxPendingRequests,
    MaxRequests,
    MaxRetries,
    Adaptive,
    Memory,
}

impl Shed {
    pub const ALL: [Shed; 6] = [
        Shed::MaxConnections,
        Shed::MaxPendingRequests,
        Shed::MaxRequests,
        Shed::MaxRetries,
        Shed::Adaptive,
        Shed::Memory,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxPendingRequests => "max_pending_requests",
            Self::MaxRequests => "max_requests",
            Self::MaxRetries => "max_retries",
            Self::Adaptive => "adaptive_concurrency",
            Self::Memory => "memory",
        }
    }

    /// The `x-lb-overloaded` value: which guard (`breaker`, `adaptive`, `memory`).
    pub fn guard(self) -> &'static str {
        match self {
            Self::Adaptive => "adaptive",
            Self::Memory => "memory",
            _ => "breaker",
        }
    }

    /// Position in `ALL` (metrics index).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A connection not tried because the breaker had no room (carried through hyper-util's
/// client as an `io::Error`'s source).
#[derive(Debug, thiserror::Error)]
#[error("pool over its {} cap", .0.reason())]
pub struct Overflow(pub Shed);

/// A pool's live counts against its caps.
#[derive(Debug, Default)]
pub struct Breaker {
    settings: BreakerSettings,
    connections: AtomicU32,
    pending: AtomicU32,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// Takes one unit of `count` if that keeps it within `cap`; the unit is given back by the
/// returned slot's owner.
fn take(count: &AtomicU32, cap: Option<u32>) -> bool {
    let before = count.fetch_add(1, Ordering::AcqRel);
    if cap.is_some_and(|cap| before >= cap) {
        count.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    true
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            ..Self::default()
        }
    }

    /// A request admitted to the pool, or `MaxRequests`.
    pub fn request(&self) -> Result<Slot<'_>, Shed> {
        if take(&self.requests, self.settings.max_requests) {
            Ok(Slot(&self.requests))
        } else {
            Err(Shed::MaxRequests)
        }
    }

    /// A retry allowed, or `MaxRetries`.
    pub fn retry(&self) -> Result<Slot<'_>, Shed> {
        if take(&self.retries, self.settings.max_retries) {
            Ok(Slot(&self.retries))
        } else {
            Err(Shed::MaxRetries)
        }
    }

    /// Room for a new upstream connection: the request is pending until the returned
    /// `Connecting` is dropped (connect done or failed); `Connecting::established` turns it
    /// into a slot the connection holds for its life.
    pub fn connect(self: &Arc<Self>) -> Result<Connecting, Shed> {
        if !take(&self.pending, self.settings.max_pending_requests) {
            return Err(Shed::MaxPendingRequests);
        }
        let pending = Counted(self.clone(), Count::Pending);
        if !take(&self.connections, self.settings.max_connections) {
            return Err(Shed::MaxConnections);
        }
        Ok(Connecting {
            _pending: pending,
            connection: Counted(self.clone(), Count::Connections),
        })
    }

    /// (connections, pending, requests, retries) now.
    pub fn counts(&self) -> (u32, u32, u32, u32) {
        (
            self.connections.load(Ordering::Relaxed),
            self.pending.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        )
    }
}

/// One unit of a count, given back on drop.
pub struct Slot<'a>(&'a AtomicU32);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone, Copy)]
enum Count {
    Pending,
    Connections,
}

/// A unit of an owned breaker's count (outlives the request: connections).
#[derive(Debug)]
pub struct Counted(Arc<Breaker>, Count);

impl Drop for Counted {
    fn drop(&mut self) {
        let count = match self.1 {
            Count::Pending => &self.0.pending,
            Count::Connections => &self.0.connections,
        };
        count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection being opened: pending until dropped.
pub struct Connecting {
    _pending: Counted,
    connection: Counted,
}

impl Connecting {
    /// The connection is up: no longer pending; the returned slot counts it until dropped
    /// with the connection.
    pub fn established(self) -> Counted {
        self.connection
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(settings: BreakerSettings) -> Arc<Breaker> {
        Arc::new(Breaker::new(settings))
    }

    #[test]
    fn requests_and_retries_are_capped_and_slots_come_back() {
        let b = breaker(BreakerSettings {
            max_requests: Some(2),
            max_retries: Some(1),
            ..BreakerSettings::default()
        });
        let first = b.request().expect("1");
        let _second = b.request().expect("2");
        assert_eq!(b.request().err(), Some(Shed::MaxRequests));
        drop(first);
        let _third = b.request().expect("a finished request frees its slot");
        let retry = b.retry().expect("retry");
        assert_eq!(b.retry().err(), Some(Shed::MaxRetries));
        drop(retry);
        assert!(b.retry().is_ok());
        assert_eq!(b.counts(), (0, 0, 2, 0));
    }

    #[test]
    fn connections_count_for_their_life_and_pending_only_while_connecting() {
        let b = breaker(BreakerSettings {
            max_connections: Some(2),
            max_pending_requests: Some(1),
            ..BreakerSettings::default()
        });
        let connecting = b.connect().expect("first connect");
        assert_eq!(b.connect().err(), Some(Shed::MaxPendingRequests));
        assert_eq!(b.counts(), (1, 1, 0, 0));
        let open = connecting.established();
        assert_eq!(b.counts(), (1, 0, 0, 0));
        let second = b.connect().expect("second").established();
        assert_eq!(
            b.connect().err(),
            Some(Shed::MaxConnections),
            "two open: at the cap"
        );
        assert_eq!(b.counts(), (2, 0, 0, 0), "a refused connect leaves nothing");
        drop(open);
        drop(second);
        // A failed connect gives both back.
        drop(b.connect().expect("again"));
        assert_eq!(b.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn no_caps_never_shed() {
        let b = breaker(BreakerSettings::default());
        let slots: Vec<_> = (0..1000).map(|_| b.request().expect("no cap")).collect();
        let conns: Vec<_> = (0..1000).map(|_| b.connect().expect("no cap")).collect();
        assert_eq!(b.counts(), (1000, 1000, 1000, 0));
        drop((slots, conns));
        assert_eq!(Shed::ALL.map(Shed::index), [0, 1, 2, 3, 4, 5]);
    }
}
