//! Per-CPU counter updates. Per-CPU maps need no atomics: each CPU owns its slot, userspace sums.
use aya_ebpf::{bindings::BPF_NOEXIST, maps::PerCpuArray};
use lb_common::{
    Malformed, PacketClass, PortKey, TrafficCounters,
    l4::{FlowCounters, L4Event},
};

use crate::maps::{L4_EVENTS, MALFORMED, PACKET_CLASSES, PORT_STATS, REAL_STATS, VIP_STATS};

#[inline(always)]
fn bump(array: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = array.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn count_class(class: PacketClass) {
    bump(&PACKET_CLASSES, class as u32);
}

#[inline(always)]
pub fn count_malformed(reason: Malformed) {
    bump(&MALFORMED, reason as u32);
}

#[inline(always)]
pub fn count_port(proto: u8, dst_port: u16, frame_len: u64) {
    let key = PortKey::new(proto, dst_port);
    if add_to_existing(&key, frame_len) {
        return;
    }
    let first = TrafficCounters {
        packets: 1,
        bytes: frame_len,
    };
    if PORT_STATS.insert(key, first, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // Either another CPU created the key between our lookup and insert (then add to it), or
    // the map is full (then the packet is counted only by class).
    if !add_to_existing(&key, frame_len) {
        count_class(PacketClass::PortStatsFull);
    }
}

#[inline(always)]
fn add_to_existing(key: &PortKey, frame_len: u64) -> bool {
    match PORT_STATS.get_ptr_mut(key) {
        Some(counters) => {
            // SAFETY: this CPU's value of a per-CPU hash element.
            unsafe {
                (*counters).packets += 1;
                (*counters).bytes += frame_len;
            }
            true
        }
        None => false,
    }
}

#[inline(always)]
pub fn count_event(event: L4Event) {
    bump(&L4_EVENTS, event as u32);
}

/// Adds one packet (and maybe one new flow) to a VIP's and a real's counters.
#[inline(always)]
pub fn count_flow(vip_index: u32, real_id: u32, frame_len: u64, new_flow: bool) {
    for (array, index) in [(&VIP_STATS, vip_index), (&REAL_STATS, real_id)] {
        if let Some(c) = array.get_ptr_mut(index) {
            // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
            unsafe { add_flow(c, frame_len, new_flow) };
        }
    }
}

#[inline(always)]
unsafe fn add_flow(c: *mut FlowCounters, frame_len: u64, new_flow: bool) {
    unsafe {
        (*c).packets += 1;
        (*c).bytes += frame_len;
        if new_flow {
            (*c).new_flows += 1;
        }
    }
}
