//! Target selection: the connection table first (flows stay on their real when the ring
//! changes), then the VIP's Maglev ring for new flows and for flows whose real went down.
//! Looking up, picking and remembering are separate steps so the checks that only concern new
//! flows (per-source limit, flood guard) sit between them, off the established-flow path.
use lb_common::{
    hash::{FLOW_HASH_SEED, flow_hash},
    l4::{FlowEntry, FlowKey, L4Event, NO_REAL, REAL_DOWN, Real, VipMeta, ring_index},
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
}

/// The flow's real from the connection table, when it has one that is still up.
#[inline(always)]
pub fn established(flow: &FlowKey, vip: &VipMeta) -> Option<Selected> {
    // SAFETY: values are copied out immediately.
    let entry = unsafe { CONNTRACK.get(flow) }.copied()?;
    // Real 0 is never assigned; an entry naming it is treated as a miss.
    if entry.real == NO_REAL {
        return None;
    }
    let live_real = REALS
        .get(entry.real)
        .copied()
        .filter(|real| entry.vip == vip.index && real.flags & REAL_DOWN == 0);
    match live_real {
        Some(real) => {
            count_event(L4Event::ConntrackHit);
            Some(Selected {
                real_id: entry.real,
                real,
                new_flow: false,
                hash: entry.hash,
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
    if real_id == NO_REAL {
        return None;
    }
    let real = *REALS.get(real_id)?;
    Some(Selected {
        real_id,
        real,
        new_flow: true,
        hash,
    })
}

/// Enters a new flow in the connection table, so it keeps its real when the ring changes.
#[inline(always)]
pub fn remember(flow: &FlowKey, vip: &VipMeta, selected: &Selected) {
    let entry = FlowEntry {
        real: selected.real_id,
        vip: vip.index,
        hash: selected.hash,
    };
    // LRU: inserting evicts the least recently used flow when full, so a full table degrades
    // to pure hashing for the evicted flows, never to drops.
    if CONNTRACK.insert(flow, entry, 0).is_err() {
        count_event(L4Event::ConntrackInsertFailed);
    }
}
