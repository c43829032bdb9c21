//! Sending an encapsulated packet: the kernel's FIB picks egress interface and next-hop MAC
//! (bpf_fib_lookup), so routes and neighbours are managed the usual way, not by lb.
//!
//! A FIB lookup costs more than the rest of the forwarding path, so each CPU caches the answer
//! per real for `NEXTHOP_TTL_NS`: route or neighbour changes take effect within that time.
//! Packets longer than any the FIB has accepted for the real always ask the FIB again, so
//! MTU checks are never skipped.
use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::l4::{FAMILY_V4, L4Event};

use crate::{
    counters::count_event,
    encap::Outer,
    headers::EthHdr,
    maps::{NEXTHOPS, NextHop},
    parse::header_mut,
};

/// How long a cached FIB answer is used (100 ms).
const NEXTHOP_TTL_NS: u64 = 100_000_000;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Returns the XDP verdict for an encapsulated frame to real `real_id`. `now`: the packet's
/// coarse clock value (`clock::coarse_now`, taken once per packet by the caller).
#[inline(always)]
pub fn send(ctx: &XdpContext, outer: &Outer, real_id: u32, now: u64) -> u32 {
    let ingress = ctx.ingress_ifindex() as u32;
    let Some(cache) = NEXTHOPS.get_ptr_mut(real_id) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: this CPU's slot; only this program run touches it.
    let cached = unsafe { *cache };
    let hop = if cached.expires_ns > now
        && cached.ingress == ingress
        && outer.total_len <= cached.max_len
    {
        cached
    } else {
        match lookup(ctx, outer, ingress) {
            Some(fresh) => {
                let hop = NextHop {
                    expires_ns: now + NEXTHOP_TTL_NS,
                    ingress,
                    egress: fresh.egress,
                    max_len: if cached.ingress == ingress && cached.expires_ns > now {
                        fresh.max_len.max(cached.max_len)
                    } else {
                        fresh.max_len
                    },
                    smac: fresh.smac,
                    dmac: fresh.dmac,
                    _pad: [0; 2],
                };
                // SAFETY: as above.
                unsafe { *cache = hop };
                hop
            }
            None => {
                // No neighbour entry yet, MTU exceeded, no route...: the stack routes the
                // encapsulated packet itself (resolving ARP/ND, or answering with ICMP), and
                // the flow's next packets take the fast path once the neighbour is known.
                count_event(L4Event::EncapFibPassed);
                return xdp_action::XDP_PASS;
            }
        }
    };
    let Some(eth) = header_mut::<EthHdr>(ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    eth.dst = hop.dmac;
    eth.src = hop.smac;
    if hop.egress == ingress {
        count_event(L4Event::EncapTx);
        xdp_action::XDP_TX
    } else {
        count_event(L4Event::EncapRedirect);
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(hop.egress, 0) as u32 }
    }
}

/// Sends a packet on from a real (a second chance this host has no connection for, see
/// `decap.rs`), without the per-real cache. The FIB answers only where forwarding is enabled
/// on the interface (`bpf_fib_lookup` checks it); otherwise the packet goes back to the
/// neighbour it came from (MACs swapped, XDP_TX): the router or load balancer that reached
/// this real reaches the other one too.
#[inline(always)]
pub fn send_on(ctx: &XdpContext, outer: &Outer, came_from: [u8; 6], to_us: [u8; 6]) -> u32 {
    let ingress = ctx.ingress_ifindex() as u32;
    let hop = lookup(ctx, outer, ingress);
    let Some(eth) = header_mut::<EthHdr>(ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    match hop {
        Some(hop) => {
            eth.dst = hop.dmac;
            eth.src = hop.smac;
            if hop.egress == ingress {
                xdp_action::XDP_TX
            } else {
                // SAFETY: plain helper call.
                unsafe { bpf_redirect(hop.egress, 0) as u32 }
            }
        }
        None => {
            eth.dst = came_from;
            eth.src = to_us;
            xdp_action::XDP_TX
        }
    }
}

/// Asks the kernel FIB for egress and MACs toward the outer destination.
#[inline(always)]
fn lookup(ctx: &XdpContext, outer: &Outer, ingress: u32) -> Option<NextHop> {
    // SAFETY: all-zero is a valid bpf_fib_lookup (plain integers and unions of them).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.ifindex = ingress;
    params.__bindgen_anon_1.tot_len = outer.total_len;
    let (src, dst) = (outer.src, outer.dst);
    if outer.family == FAMILY_V4 {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = src[0];
        params.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = src;
        params.__bindgen_anon_4.ipv6_dst = dst;
    }
    // SAFETY: helper call with a valid context and a params struct on our stack.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    Some(NextHop {
        expires_ns: 0,
        ingress,
        egress: params.ifindex,
        max_len: outer.total_len,
        smac: params.smac,
        dmac: params.dmac,
        _pad: [0; 2],
    })
}
