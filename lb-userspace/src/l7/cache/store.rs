//! One route's store: key -> the variants stored under it (one per set of `Vary` values),
//! bounded in bytes, least recently used out first (moka, with an LRU policy: a new response
//! is always admitted, as in NGINX, rather than TinyLFU's frequency-based admission).
use std::sync::Arc;

use hyper::HeaderMap;
use moka::{policy::EvictionPolicy, sync::Cache};

use super::{entry::Stored, key::CacheKey};

/// Variants kept per key; a new one beyond it replaces the oldest.
const MAX_VARIANTS: usize = 16;

type Variants = Arc<Vec<Arc<Stored>>>;

pub struct Store {
    entries: Cache<CacheKey, Variants>,
}

impl Store {
    pub fn new(max_bytes: u64) -> Self {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .eviction_policy(EvictionPolicy::lru())
            .weigher(|key: &CacheKey, variants: &Variants| {
                let bytes = key.url.len() as u64
                    + key.extra.len() as u64
                    + variants
                        .iter()
                        .map(|v| v.head.weight() + v.body.len() as u64)
                        .sum::<u64>();
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build();
        Self { entries }
    }

    /// The variant under `key` made for a request with `headers`.
    pub fn get(&self, key: &CacheKey, headers: &HeaderMap) -> Option<Arc<Stored>> {
        self.entries
            .get(key)?
            .iter()
            .find(|v| v.head.matches(headers))
            .cloned()
    }

    /// Stores `stored` under `key`, replacing the variant with the same Vary values.
    pub fn insert(&self, key: CacheKey, stored: Stored) {
        let stored = Arc::new(stored);
        let mut variants: Vec<Arc<Stored>> = self
            .entries
            .get(&key)
            .map(|v| {
                v.iter()
                    .filter(|old| !old.head.same_variant(&stored.head))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if variants.len() >= MAX_VARIANTS {
            variants.remove(0);
        }
        variants.push(stored);
        self.entries.insert(key, Arc::new(variants));
    }

    /// Removes every entry whose URL is `url` (`prefix`: starts with it). Returns how many
    /// keys went.
    pub fn purge(&self, url: &str, prefix: bool) -> u64 {
        let doomed: Vec<Arc<CacheKey>> = self
            .entries
            .iter()
            .map(|(key, _)| key)
            .filter(|key| {
                if prefix {
                    key.url.starts_with(url)
                } else {
                    key.url == url
                }
            })
            .collect();
        for key in &doomed {
            self.entries.invalidate(key.as_ref());
        }
        self.entries.run_pending_tasks();
        doomed.len() as u64
    }

    /// (bytes, keys) held now.
    pub fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.weighted_size(), self.entries.entry_count())
    }
}
