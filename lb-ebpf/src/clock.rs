//! The coarse monotonic clock (`bpf_ktime_get_coarse_ns`), read at most once a jiffy per CPU.
//!
//! The coarse clock only moves when the timer tick updates the timekeeper, which is also when
//! jiffies moves; `bpf_jiffies64` is inlined by the verifier into one load, while the clock
//! is a helper call. So each CPU keeps the last reading with the jiffy it was taken in, and a
//! packet in the same jiffy reuses it. A reading taken between the tick's jiffies update and
//! its timekeeper update lags by one more tick (a few ms), far below every use: next-hop
//! cache TTL (100 ms), connection-table ticks (~1.07 s), previous-ring windows (seconds).
use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

use crate::maps::{COARSE_CLOCK, CoarseClock};

/// Monotonic time in ns (`CLOCK_MONOTONIC_COARSE`), at most a few ticks old.
#[inline(always)]
pub fn coarse_now() -> u64 {
    // SAFETY: plain helper call (inlined by the verifier).
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(cached) = COARSE_CLOCK.get_ptr_mut(0) else {
        // SAFETY: plain helper call.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's slot; only this program run touches it. (Its first reading: jiffies
    // 0, which the kernel's 64-bit jiffies never is, so it is taken fresh.)
    unsafe {
        if (*cached).jiffies != jiffies {
            *cached = CoarseClock {
                jiffies,
                ns: bpf_ktime_get_coarse_ns(),
            };
        }
        (*cached).ns
    }
}
