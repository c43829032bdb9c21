//! Per-source new-flow rate limit: one GCRA cell (a theoretical arrival time) per client
//! address in an LRU hash. A source may open a new flow when its TAT is no more than the
//! tolerance ahead of now; each new flow pushes its TAT one interval on. One `u64` per source
//! and no division in the datapath (userspace turns the rate and burst into ns).
//!
//! The cell is shared by all CPUs and updated without atomics: two CPUs admitting the same
//! source at the same instant may both pass on one token. The limit is approximate by that
//! much, never stricter.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::l4::{FlowKey, GuardConfig, SourceKey};

use crate::maps::SOURCE_BUCKETS;

/// Whether the flow's source may open one more flow now (and charges it if so).
#[inline(always)]
pub fn admit(flow: &FlowKey, guard: &GuardConfig) -> bool {
    let interval = guard.source_interval_ns;
    if interval == 0 {
        return true;
    }
    let key = SourceKey {
        addr: flow.src,
        family: flow.family,
        _pad: [0; 3],
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    match SOURCE_BUCKETS.get_ptr_mut(key) {
        Some(cell) => {
            // SAFETY: a live element of the map; racing CPUs only make the count approximate
            // (see the module comment).
            let tat = unsafe { *cell }.max(now);
            if tat - now > guard.source_tolerance_ns {
                return false;
            }
            // SAFETY: as above.
            unsafe { *cell = tat + interval };
            true
        }
        None => {
            // A first flow always passes; failing to remember the source (allocation) only
            // makes its next flow count as a first one.
            let _ = SOURCE_BUCKETS.insert(key, now + interval, 0);
            true
        }
    }
}
