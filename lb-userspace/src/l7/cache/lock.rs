//! Request coalescing: the first miss for a key fills it; concurrent misses wait (up to the
//! route's `lock_timeout`) for that fill to end, then look again (NGINX `proxy_cache_lock`,
//! Pingora's cache lock). A fill ends when its guard drops: stored, found uncacheable, or
//! abandoned (client gone, backend failed); waiters that then still miss go to the backend
//! themselves, uncached, rather than electing another writer in a chain.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::watch;

use super::key::CacheKey;

#[derive(Default)]
pub struct Locks {
    fills: Mutex<HashMap<CacheKey, watch::Receiver<()>>>,
}

/// The right to fill a key; others wait until it drops.
pub struct FillGuard {
    locks: Arc<Locks>,
    key: CacheKey,
    /// Dropped after the map entry is gone: waiters wake to a settled store.
    _done: watch::Sender<()>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        let mut fills = self
            .locks
            .fills
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        fills.remove(&self.key);
    }
}

/// Whose turn it is.
pub enum Turn {
    Fill(FillGuard),
    Wait(watch::Receiver<()>),
}

impl Locks {
    /// Fill `key` if nobody is filling it, else wait for the one who is.
    pub fn enter(self: &Arc<Self>, key: &CacheKey) -> Turn {
        let mut fills = self.fills.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = fills.get(key) {
            return Turn::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        fills.insert(key.clone(), rx);
        Turn::Fill(FillGuard {
            locks: self.clone(),
            key: key.clone(),
            _done: tx,
        })
    }

    /// Fill `key` only if nobody is (a background refresh never waits).
    pub fn try_fill(self: &Arc<Self>, key: &CacheKey) -> Option<FillGuard> {
        match self.enter(key) {
            Turn::Fill(guard) => Some(guard),
            Turn::Wait(_) => None,
        }
    }
}

/// Waits for the fill behind `rx` to end, at most `timeout`. False: timed out.
pub async fn wait(mut rx: watch::Receiver<()>, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, async {
        // Nothing is ever sent: `changed` fails once the sender (the guard) is gone.
        while rx.changed().await.is_ok() {}
    })
    .await
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(url: &str) -> CacheKey {
        CacheKey {
            url: url.to_owned(),
            extra: Vec::new(),
        }
    }

    #[tokio::test]
    async fn one_fills_others_wait_until_it_is_done() {
        let locks = Arc::new(Locks::default());
        let Turn::Fill(guard) = locks.enter(&key("a")) else {
            panic!("the first miss fills");
        };
        let Turn::Wait(rx) = locks.enter(&key("a")) else {
            panic!("the second waits");
        };
        // Another key is independent.
        assert!(locks.try_fill(&key("b")).is_some());
        assert!(locks.try_fill(&key("a")).is_none());
        let waiter = tokio::spawn(wait(rx, Duration::from_secs(3600)));
        drop(guard);
        assert!(waiter.await.expect("join"), "woken when the fill ended");
        assert!(locks.try_fill(&key("a")).is_some(), "free again");
    }

    #[tokio::test]
    async fn waiting_gives_up_at_the_timeout() {
        let locks = Arc::new(Locks::default());
        let _guard = locks.try_fill(&key("a"));
        let Turn::Wait(rx) = locks.enter(&key("a")) else {
            panic!("waits");
        };
        // The fill never ends while `_guard` lives: the wait can only time out.
        assert!(!wait(rx, Duration::from_millis(1)).await);
    }
}
