//! Where a limit keeps its per-key state. `Local` is this process's memory (exact per
//! process, N times the limit over N lb processes); `Redis` (`shared.rs`) is one TAT per key
//! in Redis shared by every lb process configured alike (one script round trip per decision,
//! a local pre-check, and a local limit at rate/nodes while Redis is unreachable), which is
//! why `acquire` is async and takes the key itself rather than its local hash.
//!
//! `LocalStore`: a TAT per key in a bounded LRU map behind one mutex (held for a map lookup
//! and a few arithmetic operations). Keys are 64-bit SipHash values with a per-store random
//! key, so a client cannot choose keys that collide, and a long header value costs no memory.
//! At `max_keys` the least recently used key is dropped (and counted): it comes back as a new
//! key with a full burst, which for a key idle long enough is what it had anyway.
use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState},
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use super::gcra::{Decision, Gcra};
use super::shared::SharedStore;

/// What a limit counts by, taken from one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key<'a> {
    Ip(IpAddr),
    Bytes(std::borrow::Cow<'a, [u8]>),
    /// The route as a whole: one key.
    Route,
}

/// The state behind one limit.
#[derive(Clone, Debug)]
pub enum Store {
    Local(Arc<LocalStore>),
    Redis(Arc<SharedStore>),
}

/// Who made a decision (metrics; and where a refund must go).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// This process's memory (`store = "local"`).
    Local,
    /// The Redis script.
    Redis,
    /// A redis-backed limit's local pre-check: the key's last TAT from Redis says it is
    /// over the limit; Redis was not asked.
    PreCheck,
    /// A redis-backed limit decided locally at rate/nodes because Redis is unreachable;
    /// `error`: this decision's own Redis call failed or timed out (else Redis was already
    /// known to be down and was not asked).
    Fallback { error: bool },
}

/// One request's decision on one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acquired {
    pub decision: Decision,
    /// The key's TAT after the decision (unchanged when denied).
    pub tat: u64,
    /// The store's clock when it decided.
    pub now: u64,
    /// A key was evicted to make room for this one.
    pub evicted: bool,
    /// The parameters that decided (the limit's own; rate/nodes in a fallback), for the
    /// RateLimit field's remaining and reset.
    pub gcra: Gcra,
    pub via: Via,
}

impl Store {
    pub fn local(max_keys: usize) -> Self {
        Self::Local(Arc::new(LocalStore::new(max_keys)))
    }

    pub async fn acquire(&self, key: &Key<'_>, gcra: &Gcra) -> Acquired {
        match self {
            Self::Local(s) => s.acquire(s.hash(key), s.now(), gcra),
            Self::Redis(s) => s.acquire(key).await,
        }
    }

    /// Gives back one allowed request of `key` (another limit rejected it) to whoever
    /// allowed it (`acquired`): the new TAT and the clock it is on, (tat, now).
    pub async fn refund(&self, key: &Key<'_>, acquired: &Acquired) -> Option<(u64, u64)> {
        match self {
            Self::Local(s) => s
                .refund(s.hash(key), &acquired.gcra)
                .map(|tat| (tat, s.now())),
            Self::Redis(s) => s.refund(key, acquired).await,
        }
    }

    /// Both handles name the same state (kept across a reload).
    pub fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Local(a), Self::Local(b)) => Arc::ptr_eq(a, b),
            (Self::Redis(a), Self::Redis(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

#[derive(Debug)]
pub struct LocalStore {
    lru: Mutex<Lru>,
    epoch: Instant,
    hasher: RandomState,
}

impl LocalStore {
    pub fn new(max_keys: usize) -> Self {
        Self {
            lru: Mutex::new(Lru::new(max_keys)),
            epoch: Instant::now(),
            hasher: RandomState::new(),
        }
    }

    /// Nanoseconds since the store was made (monotonic).
    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn hash(&self, key: &Key<'_>) -> u64 {
        match key {
            Key::Ip(ip) => self.hasher.hash_one(ip),
            Key::Bytes(b) => self.hasher.hash_one(&**b),
            Key::Route => 0,
        }
    }

    /// The decision for key hash `key` at `now` (the injected clock of the tests).
    pub fn acquire(&self, key: u64, now: u64, gcra: &Gcra) -> Acquired {
        let mut lru = self.lru.lock().unwrap_or_else(PoisonError::into_inner);
        match lru.get(key) {
            Some(tat) => {
                let decision = gcra.decide(Some(*tat), now);
                if let Decision::Allow(new) = decision {
                    *tat = new;
                }
                Acquired {
                    decision,
                    tat: *tat,
                    now,
                    evicted: false,
                    gcra: *gcra,
                    via: Via::Local,
                }
            }
            None => {
                let decision = gcra.decide(None, now);
                // A new key is always allowed (burst >= 1); keep the arm total anyway.
                let (tat, evicted) = match decision {
                    Decision::Allow(new) => (new, lru.insert(key, new)),
                    Decision::Deny(_) => (now, false),
                };
                Acquired {
                    decision,
                    tat,
                    now,
                    evicted,
                    gcra: *gcra,
                    via: Via::Local,
                }
            }
        }
    }

    pub fn refund(&self, key: u64, gcra: &Gcra) -> Option<u64> {
        let mut lru = self.lru.lock().unwrap_or_else(PoisonError::into_inner);
        let tat = lru.get(key)?;
        *tat = gcra.refund(*tat);
        Some(*tat)
    }

    /// The TAT remembered for `key` (marked most recently used).
    pub fn peek(&self, key: u64) -> Option<u64> {
        let mut lru = self.lru.lock().unwrap_or_else(PoisonError::into_inner);
        lru.get(key).copied()
    }

    /// Remembers `tat` for `key`; true when another key was evicted for it.
    pub fn put(&self, key: u64, tat: u64) -> bool {
        let mut lru = self.lru.lock().unwrap_or_else(PoisonError::into_inner);
        match lru.get(key) {
            Some(t) => {
                *t = tat;
                false
            }
            None => lru.insert(key, tat),
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.lru
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The keys are already SipHash values: the map uses them as they are.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Slot {
    key: u64,
    tat: u64,
    /// Toward the most recently used end.
    prev: u32,
    next: u32,
}

/// A TAT per key, at most `cap` keys, least recently used dropped first: slots in a vector
/// linked most recent first, the map from key to slot.
#[derive(Debug)]
struct Lru {
    map: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
    slots: Vec<Slot>,
    head: u32,
    tail: u32,
    cap: usize,
}

impl Lru {
    fn new(cap: usize) -> Self {
        Self {
            map: HashMap::default(),
            slots: Vec::new(),
            head: NIL,
            tail: NIL,
            // Slot indices are u32 (NIL excluded); compile() refuses more anyway.
            cap: cap.clamp(1, NIL as usize - 1),
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = old;
        }
        match old {
            NIL => self.tail = i,
            h => self.slots[h as usize].prev = i,
        }
        self.head = i;
    }

    /// The key's TAT, the key marked most recently used.
    fn get(&mut self, key: u64) -> Option<&mut u64> {
        let i = *self.map.get(&key)?;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        Some(&mut self.slots[i as usize].tat)
    }

    /// Adds a key not held yet; true when another key was evicted for it.
    fn insert(&mut self, key: u64, tat: u64) -> bool {
        let (i, evicted) = if self.slots.len() < self.cap {
            self.slots.push(Slot {
                key,
                tat,
                prev: NIL,
                next: NIL,
            });
            // Below cap, which is below NIL.
            ((self.slots.len() - 1) as u32, false)
        } else {
            let i = self.tail;
            self.unlink(i);
            let slot = &mut self.slots[i as usize];
            self.map.remove(&slot.key);
            slot.key = key;
            slot.tat = tat;
            (i, true)
        };
        self.map.insert(key, i);
        self.push_front(i);
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn allowed(a: Acquired) -> bool {
        matches!(a.decision, Decision::Allow(_))
    }

    #[test]
    fn keys_have_their_own_budget() {
        let store = LocalStore::new(10);
        let g = Gcra::new(SECOND, 1).expect("valid");
        assert!(allowed(store.acquire(1, 0, &g)));
        assert!(!allowed(store.acquire(1, 0, &g)));
        assert!(allowed(store.acquire(2, 0, &g)));
        assert!(allowed(store.acquire(1, SECOND, &g)));
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn the_least_recently_used_key_is_evicted_and_counted() {
        let store = LocalStore::new(2);
        let g = Gcra::new(3600 * SECOND, 1).expect("valid");
        assert!(!store.acquire(1, 0, &g).evicted);
        assert!(!store.acquire(2, 0, &g).evicted);
        // Key 1 used again (denied, still a use): key 2 is now the least recent.
        assert!(!allowed(store.acquire(1, 0, &g)));
        let third = store.acquire(3, 0, &g);
        assert!(allowed(third) && third.evicted);
        assert_eq!(store.len(), 2);
        // Key 1 kept its state, key 2 starts over.
        assert!(!allowed(store.acquire(1, 0, &g)));
        let again = store.acquire(2, 0, &g);
        assert!(allowed(again) && again.evicted, "evicts key 3");
        assert!(allowed(store.acquire(3, 0, &g)), "key 3 was evicted");
    }

    #[test]
    fn a_refund_puts_the_request_back() {
        let store = LocalStore::new(4);
        let g = Gcra::new(SECOND, 1).expect("valid");
        assert!(allowed(store.acquire(7, 0, &g)));
        assert_eq!(store.refund(7, &g), Some(0));
        assert!(allowed(store.acquire(7, 0, &g)));
        assert_eq!(store.refund(8, &g), None);
    }

    #[test]
    fn one_key_store_and_relinking() {
        let mut lru = Lru::new(3);
        for k in 0..3 {
            assert!(!lru.insert(k, k));
        }
        // Order (most recent first): 2 1 0 -> touch 0 -> 0 2 1 -> touch 2 -> 2 0 1.
        assert!(lru.get(0).is_some() && lru.get(2).is_some());
        assert!(lru.insert(9, 9), "evicts 1");
        assert!(lru.get(1).is_none());
        assert!(lru.insert(10, 10), "evicts 0");
        assert!(lru.get(0).is_none());
        assert_eq!(lru.get(2).copied(), Some(2));
        let mut one = Lru::new(1);
        assert!(!one.insert(1, 1));
        assert!(one.insert(2, 2));
        assert!(one.get(1).is_none());
        assert_eq!(one.get(2).copied(), Some(2));
    }
}
