//! Second chance for flows that opened before a change of reals (GLB's and Unimog's idea,
//! without state shared between nodes).
//!
//! Every node behind the same ECMP holds the same rings, so when the reals change every node
//! changes ring the same way, and keeps the previous one (`PREV_RINGS`, the VIP's idle ring
//! half) for `[l4] previous_ring_window`. A TCP segment without SYN whose flow is in no entry
//! of this node's table either belongs to a flow this node never saw (moved here by ECMP
//! after a node failed or left), or to one whose entry expired or was evicted. When such a
//! flow's previous-ring real differs from its current-ring real and is still up, the flow most
//! likely opened on the previous ring: it is sent there, over the usual encapsulation, and
//! remembered. SYNs and other protocols always take the current ring.
//!
//! The guess is wrong for a flow that opened after the change on another node and then moved
//! here within the window: that flow would have kept its real only with the backend's help
//! (GLB's real servers forward what they have no socket for to the secondary). Outside the
//! window, flows from before the change that move nodes take the current ring.
use lb_common::l4::{REAL_DOWN, VipMeta, ring_index};

use crate::{
    maps::{MAGLEV_RINGS, PREV_RINGS},
    select::{self, Selected},
};

/// The flow's real on the VIP's previous ring, when that ring is still kept and names another
/// live real of this VIP than `current` (the current ring's pick, whose hash it reuses).
/// `now_ns`: the packet's coarse clock reading.
#[inline(always)]
pub fn previous_real(vip: &VipMeta, current: &Selected, now_ns: u64) -> Option<Selected> {
    let prev = PREV_RINGS.get(vip.index)?;
    if prev.ring_size == 0 {
        return None;
    }
    if now_ns >= prev.until_ns {
        return None;
    }
    let slot = current.hash % prev.ring_size;
    let real_id = *MAGLEV_RINGS.get(ring_index(vip.index, prev.half & 1, slot))?;
    if real_id == current.real_id {
        return None;
    }
    let picked = select::live(real_id, current.hash)?;
    // A real removed or marked down since takes no flows, old or new; and ids are per (VIP,
    // real), so one of another VIP (the half being rewritten, a bug) is never used.
    if picked.real.flags & REAL_DOWN != 0 || u32::from(picked.real.vip) != vip.index {
        return None;
    }
    Some(picked)
}
