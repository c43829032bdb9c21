//! `local` VIPs: the packet goes to this host's stack (the L7 tier accepts it); new flows leave
//! a tag so the L7 tier can tell backends the true client, VIP and L4 flow id (PROXY v2).
use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::l4::{FlowKey, FlowTag};

use crate::{maps::FLOW_TAGS, select::Selected};

#[inline(always)]
pub fn record_flow_tag(flow: &FlowKey, selected: &Selected) {
    // SAFETY: plain helper calls.
    let flow_id =
        unsafe { (u64::from(bpf_get_prandom_u32()) << 32) | u64::from(bpf_get_prandom_u32()) };
    let tag = FlowTag {
        client: flow.src,
        vip: flow.dst,
        target: selected.real.addr,
        flow_id,
        client_port: flow.src_port,
        vip_port: flow.dst_port,
        family: flow.family,
        target_family: selected.real.family,
        proto: flow.proto,
        _pad: 0,
    };
    // Best effort: an LRU insert only fails on allocation failure; the L7 tier then falls back
    // to the socket's own addresses.
    let _ = FLOW_TAGS.insert(flow, tag, 0);
}
