//! `cache`: a route's response cache, in memory, bounded in bytes (RFC 9111).
//!
//! It runs in the pipeline between the request policies (so only requests they let through
//! ever see a stored response) and upstream selection (`phase.rs`), and in forward-proxy
//! listeners after the egress decision (`crate::l7::egress`); both drive `flow.rs`, which
//! decides and never fetches. A GET or HEAD without a body is looked up by its key
//! (`key.rs`: scheme, host, port, path, query, `key_headers`) and `Vary` (`entry.rs`). Fresh: answered from the store (HIT; the client's own
//! If-None-Match may get a 304). Stale within `stale-while-revalidate`: answered (STALE)
//! while one background fetch refreshes it. Otherwise fetched: concurrent misses for a key
//! coalesce behind the first (`lock.rs`), a stale entry with validators is revalidated
//! (If-None-Match / If-Modified-Since; a 304 refreshes it: REVALIDATED), a failed fetch is
//! answered with the stale entry within `stale-if-error` (STALE), and a storable answer
//! streams to its client while it fills the store (`fill.rs`: MISS, or EXPIRED when it
//! replaced a stale entry). Anything else passes through (BYPASS). Every answer of the route
//! carries `X-Cache-Status`; the access log and `lb_http_cache_requests` count the same.
//!
//! The response stored is the backend's (after its hop-by-hop headers go): the route's
//! response policies and compression run on each answer, cached or not, after this phase.
//! Stored responses survive a reload that leaves the route's label and cache settings alone,
//! and go by purge (`lb ctl purge URL [--prefix]`, `POST /api/purge`).
use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use prometheus_client::metrics::gauge::Gauge;

use crate::config::RouteConfig;

pub mod entry;
mod fill;
pub(in crate::l7) mod flow;
pub mod key;
pub mod lock;
mod phase;
pub mod settings;
pub mod store;

pub(in crate::l7) use phase::CacheRequest;
pub use settings::CacheSettings;

/// What the cache did for a request (`X-Cache-Status`, the access log's `cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Answered from the store, fresh.
    Hit,
    /// Fetched (no entry); stored when storable.
    Miss,
    /// A stale entry was replaced by a new answer.
    Expired,
    /// A stale entry served: within stale-while-revalidate (refreshing in the background) or
    /// stale-if-error (the backend failed).
    Stale,
    /// A stale entry the backend confirmed (304) and served.
    Revalidated,
    /// Not a request the cache serves (method, body, upgrade): passed through.
    Bypass,
}

impl CacheStatus {
    pub const ALL: [Self; 6] = [
        Self::Hit,
        Self::Miss,
        Self::Expired,
        Self::Stale,
        Self::Revalidated,
        Self::Bypass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Expired => "EXPIRED",
            Self::Stale => "STALE",
            Self::Revalidated => "REVALIDATED",
            Self::Bypass => "BYPASS",
        }
    }
}

/// One route's cache: its settings and its store (shared with the next generation when a
/// reload keeps them).
#[derive(Clone)]
pub struct RouteCache {
    pub settings: CacheSettings,
    state: Arc<CacheState>,
}

struct CacheState {
    store: Arc<store::Store>,
    locks: Arc<lock::Locks>,
    /// `lb_http_cache_bytes` / `lb_http_cache_entries` of the route, when metrics are on.
    gauges: OnceLock<(Gauge, Gauge)>,
}

impl RouteCache {
    pub fn new(settings: CacheSettings) -> Self {
        Self {
            state: Arc::new(CacheState {
                store: Arc::new(store::Store::new(settings.max_bytes)),
                locks: Arc::default(),
                gauges: OnceLock::new(),
            }),
            settings,
        }
    }

    pub(crate) fn store(&self) -> &Arc<store::Store> {
        &self.state.store
    }

    pub(crate) fn locks(&self) -> &Arc<lock::Locks> {
        &self.state.locks
    }

    /// Gives the cache its size gauges (the first generation that has metrics does).
    pub fn attach_gauges(&self, bytes: Gauge, entries: Gauge) {
        let _ = self.state.gauges.set((bytes, entries));
        self.update_gauges();
    }

    /// Sets the size gauges from the store.
    pub fn update_gauges(&self) {
        if let Some((bytes, entries)) = self.state.gauges.get() {
            let (b, e) = self.state.store.usage();
            bytes.set(i64::try_from(b).unwrap_or(i64::MAX));
            entries.set(i64::try_from(e).unwrap_or(i64::MAX));
        }
    }

    /// Takes `previous`'s store when the settings are the same (a reload that left them alone
    /// keeps what was stored). Whether it did.
    pub fn keep_from(&mut self, previous: &RouteCache) -> bool {
        let same = self.settings == previous.settings;
        if same {
            self.state = previous.state.clone();
        }
        same
    }

    /// Removes the entries for `url` (`prefix`: every URL starting with it).
    pub fn purge(&self, url: &str, prefix: bool) -> u64 {
        let n = self.state.store.purge(url, prefix);
        self.update_gauges();
        n
    }
}

/// Settings decide equality: a reload compares configurations, not stores.
impl PartialEq for RouteCache {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings
    }
}

impl Eq for RouteCache {}

impl fmt::Debug for RouteCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteCache")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Gives each cached route of `routes` the store of the route of `previous` with the same
/// label and cache settings (a reload that left them alone keeps what was stored). Returns
/// how many kept theirs.
pub fn keep_state<'p>(
    routes: &mut [RouteConfig],
    previous: impl Iterator<Item = (usize, &'p RouteConfig)>,
) -> usize {
    let old: Vec<(String, &RouteCache)> = previous
        .filter_map(|(i, r)| Some((r.label(i), r.chain.cache.as_ref()?)))
        .collect();
    if old.is_empty() {
        return 0;
    }
    let mut kept = 0;
    for (i, route) in routes.iter_mut().enumerate() {
        let label = route.label(i);
        if let Some(cache) = route.chain.cache.as_mut()
            && let Some((_, prev)) = old.iter().find(|(l, _)| *l == label)
            && cache.keep_from(prev)
        {
            kept += 1;
        }
    }
    kept
}
