//! The flow hash, shared by the datapath and userspace (tests predict which real a flow gets).
//!
//! MurmurHash3's 32-bit body and finaliser over whole words: no loops over variable lengths,
//! so the BPF compiler unrolls it and the verifier sees straight-line code.
use crate::l4::FlowKey;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix(h: u32, word: u32) -> u32 {
    let k = word.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len_bytes: u32) -> u32 {
    h ^= len_bytes;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn word(bytes: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]])
}

/// Hash of a flow's 5-tuple (with ports zero for fragments). Words are taken as the maps
/// hold them (little-endian hosts and `bpfel`: the datapath and userspace agree).
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let mut h = seed;
    h = mix(h, key.src[0]);
    h = mix(h, key.src[1]);
    h = mix(h, key.src[2]);
    h = mix(h, key.src[3]);
    h = mix(h, key.dst[0]);
    h = mix(h, key.dst[1]);
    h = mix(h, key.dst[2]);
    h = mix(h, key.dst[3]);
    h = mix(h, u32::from(key.src_port) << 16 | u32::from(key.dst_port));
    h = mix(h, u32::from(key.proto) << 8 | u32::from(key.family));
    finish(h, 40)
}

/// Hash of 16 address bytes (Maglev permutations of reals, in userspace).
pub fn addr_hash(addr: &[u8; 16], seed: u32) -> u32 {
    let mut h = seed;
    h = mix(h, word(addr, 0));
    h = mix(h, word(addr, 4));
    h = mix(h, word(addr, 8));
    h = mix(h, word(addr, 12));
    finish(h, 16)
}

/// MurmurHash3 x86_32 of `bytes` of any length (userspace only: it loops over the input).
/// A fixed algorithm, so every lb node and build maps a key to the same value (Rust's
/// `DefaultHasher` promises neither).
pub fn bytes_hash(bytes: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let mut chunks = bytes.chunks_exact(4);
    for c in &mut chunks {
        h = mix(h, u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        h ^= k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    }
    finish(h, bytes.len() as u32)
}

/// A 64-bit selection key from `bytes`: two `bytes_hash`es with different seeds (the L7
/// tier's consistent hashing and the stream listeners' client keys).
pub fn key_hash(bytes: &[u8]) -> u64 {
    (u64::from(bytes_hash(bytes, KEY_HASH_SEED)) << 32)
        | u64::from(bytes_hash(bytes, KEY_HASH_SEED ^ 0x9e37_79b9))
}

/// Seed of `key_hash`.
pub const KEY_HASH_SEED: u32 = 0x6c62_4c37; // "lbL7"

/// Seed of the datapath's flow hash (Maglev slot choice).
pub const FLOW_HASH_SEED: u32 = 0x6c62_4c34; // "lbL4"

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_hash_is_murmur3_x86_32() {
        // Reference vectors of MurmurHash3_x86_32.
        assert_eq!(bytes_hash(b"", 0), 0);
        assert_eq!(bytes_hash(b"", 1), 0x514e_28b7);
        assert_eq!(bytes_hash(b"hello", 0), 0x248b_fa47);
        assert_eq!(
            bytes_hash(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    #[test]
    fn key_hash_is_stable() {
        // Pinned: a change here moves every consistent-hash key of every node.
        assert_eq!(key_hash(b"10.0.0.1"), key_hash(b"10.0.0.1"));
        assert_ne!(key_hash(b"10.0.0.1"), key_hash(b"10.0.0.2"));
        assert_eq!(key_hash(b"user-42"), 0xa6aa_c3c8_824b_83b4);
    }
}
