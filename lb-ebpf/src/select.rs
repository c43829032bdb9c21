//! Target selection: the connection table first (flows stay on their real when the ring
//! changes), then the VIP's Maglev ring for new flows and for flows whose real went down.
//! Looking up, picking and remembering are separate steps so the checks that only concern new
//! flows (per-source limit, flood guard) sit between them, off the established-flow path.
//! A TCP SYN never reads the table (Katran's rule): it opens a new connection, which must go
//! where the current ring says on every node, even when its 5-tuple is reused from an earlier
//! connection whose entry is still here.
use lb_common::{
    hash::{FLOW_HASH_SEED, flow_hash},
    l4::{
        FlowEntry, FlowKey, L4Event, NO_REAL, REAL_DOWN, Real, VipMeta, conntrack_expired,
        conntrack_tick, ring_index,
    },
};

use crate::{
    counters::count_event,
    maps::{CONNTRACK, MAGLEV_RINGS, REALS},
};

pub struct Selected {
    pub real_id: u32,
    pub real: Real,
    pub new_flow: bool,
    pub hash: u32,
    /// A second chance's other real: `real` forwards the packet there unless the connection
    /// is its own (see `second_chance.rs`).
    pub fallback: Option<Real>,
}

/// The flow's real from the connection table, when it has one that is still up and the
/// entry has not gone idle past the timeout. `vip_index`: the VIP's `VipMeta::index`;
/// `now_ns`: the packet's coarse clock reading.
#[inline(always)]
pub fn established(flow: &FlowKey, vip_index: u32, now_ns: u64) -> Option<Selected> {
    let slot = CONNTRACK.get_ptr_mut(flow)?;
    // SAFETY: a live element of the table; copied out at once (another CPU may rewrite it,
    // which at worst gives a torn stamp, repaired by the next packet).
    let entry = unsafe { *slot };
    // Real 0 is never assigned; an entry naming it is treated as a miss.
    if entry.real == NO_REAL {
        return None;
    }
    let now = conntrack_tick(now_ns);
    if conntrack_expired(entry.seen, now) {
        count_event(L4Event::ConntrackExpired);
        return None;
    }
    if entry.seen != now {
        // At most one write per flow and tick: the entry's cache line stays shared between
        // CPUs the rest of the time.
        // SAFETY: as above; a plain store into the element.
        unsafe { (*slot).seen = now };
    }
    let live_real = REALS
        .get(entry.real)
        .copied()
        .filter(|real| u32::from(entry.vip) == vip_index && real.flags & REAL_DOWN == 0);
    match live_real {
        Some(real) => {
            count_event(L4Event::ConntrackHit);
            Some(Selected {
                real_id: entry.real,
                real,
                new_flow: false,
                hash: entry.hash,
                fallback: None,
            })
        }
        None => {
            count_event(L4Event::RealDownRehash);
            None
        }
    }
}

/// The real the VIP's Maglev ring gives the flow (not remembered: see [`remember`]).
#[inline(always)]
pub fn by_hash(flow: &FlowKey, vip: &VipMeta) -> Option<Selected> {
    if vip.ring_size == 0 {
        return None;
    }
    let hash = flow_hash(flow, FLOW_HASH_SEED);
    let slot = hash % vip.ring_size;
    let real_id = *MAGLEV_RINGS.get(ring_index(vip.index, vip.active_half & 1, slot))?;
    live(real_id, hash)
}

/// Real `real_id` as a pick for a flow of hash `hash` (`None` for the "no real" slot).
#[inline(always)]
pub fn live(real_id: u32, hash: u32) -> Option<Selected> {
    if real_id == NO_REAL {
        return None;
    }
    let real = *REALS.get(real_id)?;
    Some(Selected {
        real_id,
        real,
        new_flow: true,
        hash,
        fallback: None,
    })
}

/// Enters a flow in the connection table (replacing any entry of the same 5-tuple), so it
/// keeps its real when the ring changes.
#[inline(always)]
pub fn remember(flow: &FlowKey, vip: &VipMeta, selected: &Selected, now_ns: u64) {
    let entry = FlowEntry {
        real: selected.real_id,
        // VIP indices are below MAX_VIPS (32).
        vip: vip.index as u16,
        seen: conntrack_tick(now_ns),
        hash: selected.hash,
    };
    // LRU: inserting evicts the least recently used flow when full, so a full table degrades
    // to pure hashing for the evicted flows, never to drops.
    if CONNTRACK.insert(flow, entry, 0).is_err() {
        count_event(L4Event::ConntrackInsertFailed);
    }
}

/// Drops the flow's entry, if any: a SYN the flood guard keeps out of the table must not
/// leave its 5-tuple's earlier connection steering the new one's next segments.
#[inline(always)]
pub fn forget(flow: &FlowKey) {
    // A missing entry is the usual case, not an error.
    let _ = CONNTRACK.remove(flow);
}
