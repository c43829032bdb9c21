//! `lb_decap`, run by real servers: strips the outer IPIP / IP6IP6 header the load balancer
//! added, so the client's original packet (addressed to the VIP, which the real holds on `lo`)
//! continues up the stack. These kernels have no ipip device to do it.
use core::mem::size_of;

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::l4::L4Event;

use crate::{
    counters::count_event,
    headers::{ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_IPIP, IPPROTO_IPV6, Ipv4Hdr, Ipv6Hdr},
    parse::{header, header_mut},
};

#[inline(always)]
pub fn decapsulate(ctx: &XdpContext) -> u32 {
    let Some(eth) = header::<EthHdr>(ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    let (dst_mac, src_mac) = (eth.dst, eth.src);
    let (outer_len, inner_proto) = match u16::from_be(eth.ether_type) {
        ETH_P_IPV4 => {
            let Some(ip) = header::<Ipv4Hdr>(ctx, size_of::<EthHdr>()) else {
                return xdp_action::XDP_PASS;
            };
            // Only plain 20-byte outer headers, as lb builds them; anything else is not ours.
            if ip.version_ihl != 0x45 {
                return xdp_action::XDP_PASS;
            }
            (size_of::<Ipv4Hdr>(), ip.protocol)
        }
        ETH_P_IPV6 => {
            let Some(ip) = header::<Ipv6Hdr>(ctx, size_of::<EthHdr>()) else {
                return xdp_action::XDP_PASS;
            };
            (size_of::<Ipv6Hdr>(), ip.next_header)
        }
        _ => return xdp_action::XDP_PASS,
    };
    let inner_type = match inner_proto {
        IPPROTO_IPIP => ETH_P_IPV4,
        IPPROTO_IPV6 => ETH_P_IPV6,
        _ => return xdp_action::XDP_PASS,
    };
    // SAFETY: helper call on our context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return xdp_action::XDP_PASS;
    }
    let Some(eth) = header_mut::<EthHdr>(ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    eth.dst = dst_mac;
    eth.src = src_mac;
    eth.ether_type = inner_type.to_be();
    count_event(L4Event::Decapsulated);
    xdp_action::XDP_PASS
}
