//! Consistent hashing with the shared Maglev builder: the same key (client IP, header or
//! cookie value, hashed by the caller) keeps landing on the same backend, and removing one of
//! N backends moves about 1/N of keys. An excluded owner falls through to the next slots'
//! owners (deterministically, so a key's fallback is stable too).
use super::{Backend, BackendSelection, eligible};
use crate::maglev::{self, MaglevError};

/// Ring size for pools: a prime comfortably above 100 x typical pool sizes.
pub const POOL_RING_SIZE: u32 = 65537;

pub struct ConsistentHash {
    backends: Vec<Backend>,
    /// Primary ring, then backup ring.
    rings: [Vec<Option<usize>>; 2],
}

impl ConsistentHash {
    pub fn new(backends: Vec<Backend>) -> Result<Self, MaglevError> {
        let ring = |backup: bool| -> Result<Vec<Option<usize>>, MaglevError> {
            let members: Vec<usize> = (0..backends.len())
                .filter(|&i| backends[i].backup == backup)
                .collect();
            let input: Vec<maglev::Backend> = members
                .iter()
                .map(|&i| maglev::Backend {
                    key: backend_key(&backends[i].addr),
                    weight: backends[i].weight,
                })
                .collect();
            let size = if input.is_empty() { 2 } else { POOL_RING_SIZE };
            Ok(maglev::build(&input, size)?
                .into_iter()
                .map(|slot| slot.map(|m| members[m]))
                .collect())
        };
        let rings = [ring(false)?, ring(true)?];
        Ok(Self { backends, rings })
    }
}

/// A backend's identity on the ring: its address bytes with the port folded in.
fn backend_key(addr: &std::net::SocketAddr) -> [u8; 16] {
    let mut key = match addr.ip() {
        std::net::IpAddr::V4(v4) => {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&v4.octets());
            k
        }
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    let port = addr.port().to_be_bytes();
    key[12] ^= port[0];
    key[13] ^= port[1];
    key
}

impl BackendSelection for ConsistentHash {
    /// Slow start does not apply (`_factor`): a key's owner is its ring slot's.
    fn select_weighted(
        &self,
        key: u64,
        excluded: &dyn Fn(usize) -> bool,
        _factor: &dyn Fn(usize) -> u32,
    ) -> Option<usize> {
        for ring in &self.rings {
            let len = ring.len() as u64;
            let start = key % len;
            // Walk at most the whole ring; in practice the first few slots.
            for step in 0..len {
                let slot = ((start + step) % len) as usize;
                if let Some(i) = ring[slot].filter(|&i| eligible(&self.backends, i, excluded)) {
                    return Some(i);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::selection::test_support::{none, pool};

    fn hash(k: u64) -> u64 {
        k.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
    }

    #[test]
    fn same_key_same_backend_and_removal_moves_about_one_nth() {
        let ch = ConsistentHash::new(pool(&[1, 1, 1, 1, 1], &[])).expect("ring");
        let keys: Vec<u64> = (0..20_000).map(hash).collect();
        let before: Vec<_> = keys.iter().map(|k| ch.select(*k, &none)).collect();
        let again: Vec<_> = keys.iter().map(|k| ch.select(*k, &none)).collect();
        assert_eq!(before, again);
        // Backend 2 excluded: only its keys move.
        let after: Vec<_> = keys.iter().map(|k| ch.select(*k, &|i| i == 2)).collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != Some(2) {
                assert_eq!(a, b, "keys of surviving backends stay put");
            } else {
                assert_ne!(*a, Some(2));
            }
        }
        let moved = before.iter().filter(|b| **b == Some(2)).count() as f64 / 20_000.0;
        assert!((0.17..=0.23).contains(&moved), "{moved}");
    }

    #[test]
    fn weights_and_backups() {
        let ch = ConsistentHash::new(pool(&[3, 1], &[1])).expect("ring");
        let heavy = (0..20_000u64)
            .filter(|k| ch.select(hash(*k), &none) == Some(0))
            .count();
        assert!((14_500..=15_500).contains(&heavy), "{heavy}");
        assert_eq!(ch.select(hash(1), &|i| i < 2), Some(2));
        assert_eq!(ch.select(hash(1), &|_| true), None);
    }
}
