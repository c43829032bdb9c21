//! Sending an encapsulated packet: the kernel's FIB picks egress interface and next-hop MAC
//! (bpf_fib_lookup), so routes and neighbours are managed the usual way, not by lb.
use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::l4::{FAMILY_V4, L4Event};

use crate::{counters::count_event, encap::Outer, headers::EthHdr, parse::header_mut};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}

/// Returns the XDP verdict for an encapsulated frame.
#[inline(always)]
pub fn send(ctx: &XdpContext, outer: &Outer) -> u32 {
    // SAFETY: all-zero is a valid bpf_fib_lookup (plain integers and unions of them).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    let ingress = ctx.ingress_ifindex() as u32;
    params.ifindex = ingress;
    params.__bindgen_anon_1.tot_len = outer.total_len;
    let (src, dst) = (words(&outer.src), words(&outer.dst));
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
        // No neighbour entry yet, MTU exceeded, no route...: the stack routes the encapsulated
        // packet itself (resolving ARP/ND, or answering with ICMP), and the next packets of the
        // flow take the fast path once the neighbour is known.
        count_event(L4Event::EncapFibPassed);
        return xdp_action::XDP_PASS;
    }
    let Some(eth) = header_mut::<EthHdr>(ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    eth.dst = params.dmac;
    eth.src = params.smac;
    if params.ifindex == ingress {
        count_event(L4Event::EncapTx);
        xdp_action::XDP_TX
    } else {
        count_event(L4Event::EncapRedirect);
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(params.ifindex, 0) as u32 }
    }
}
