//! Second chance for flows that opened before a change of reals (GLB's and Unimog's idea,
//! without state shared between nodes).
//!
//! Every node behind the same ECMP holds the same rings, so when the reals change every node
//! changes ring the same way, and keeps the previous one (`PREV_RINGS`, the VIP's idle ring
//! half) for `[l4] previous_ring_window`. A TCP segment without SYN whose flow is in no entry
//! of this node's table either belongs to a flow this node never saw (moved here by ECMP
//! after a node failed or left), or to one whose entry expired or was evicted. When such a
//! flow's previous-ring real differs from its current-ring real and is still up, the flow most
//! likely opened on the previous ring, but it may also have opened after the change on
//! another node and moved here since. So it is sent to the previous ring's real wrapped twice
//! (GLB's second chance): the outer header to the previous ring's real, the one inside to the
//! current ring's. The previous ring's real (`lb_decap`, `decap.rs`) delivers it when the
//! connection is its own, else forwards it, one header less, to the current ring's real. Such
//! a flow is not remembered (this node cannot know which of the two has it): each of its
//! packets takes this path until the window ends. SYNs and other protocols always take the
//! current ring. Outside the window, flows from before the change that move nodes take the
//! current ring.
use lb_common::l4::{REAL_DOWN, VipMeta, ring_index};

use crate::{
    maps::{MAGLEV_RINGS, PREV_RINGS},
    select::{self, Selected},
};

/// The flow's real on the VIP's previous ring, when that ring is still kept and names another
/// live real of this VIP than `current` (the current ring's pick, whose hash it reuses), with
/// `current`'s real as its fallback.
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
    Some(Selected {
        fallback: Some(current.real),
        ..picked
    })
}
