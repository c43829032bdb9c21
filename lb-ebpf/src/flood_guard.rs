//! Flood guard (Katran's "compute only" mode): each CPU counts the new flows it sees per
//! one-second window; past the configured number, further new flows of that window are
//! forwarded by their Maglev hash without a connection-table entry. Maglev is consistent, so
//! those flows still reach the same real packet after packet, while a SYN flood from spoofed
//! sources can no longer push established flows out of the LRU table.
use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::maps::FLOOD_WINDOWS;

const WINDOW_NS: u64 = 1_000_000_000;

/// Counts one new flow on this CPU; true while this window is within `limit` (0: no guard).
#[inline(always)]
pub fn allows_insert(limit: u64) -> bool {
    if limit == 0 {
        return true;
    }
    let Some(window) = FLOOD_WINDOWS.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's slot; only this program run touches it.
    unsafe {
        if now.wrapping_sub((*window).start_ns) >= WINDOW_NS {
            (*window).start_ns = now;
            (*window).new_flows = 0;
        }
        (*window).new_flows += 1;
        (*window).new_flows <= limit
    }
}
