//! `lb_decap`, run by real servers: strips the outer IPIP / IP6IP6 header the load balancer
//! added, so the client's original packet (addressed to the VIP, which the real holds on `lo`)
//! continues up the stack. These kernels have no ipip device to do it.
//!
//! A second chance (see lb-ebpf's `second_chance.rs`) arrives wrapped twice: this real is the
//! previous ring's, the header inside is to the current ring's. When this host has the TCP
//! connection (a socket other than a listener), both headers go and the packet is delivered;
//! otherwise the packet goes on, one header less, to the other real (GLB's second chance).
use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_tuple, xdp_action},
    helpers::{bpf_sk_release, bpf_skc_lookup_tcp, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use lb_common::l4::{FAMILY_V4, FAMILY_V6, L4Event};

use crate::{
    counters::count_event,
    encap::Outer,
    forward::send_on,
    headers::{
        ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_IPIP, IPPROTO_IPV6, Ipv4Hdr, Ipv6Hdr, TcpHdr,
    },
    parse::{header, header_mut},
};

/// `TCP_LISTEN` in `bpf_sock::state`.
const TCP_LISTEN: u32 = 10;
/// IP protocol number of TCP.
const IPPROTO_TCP: u8 = 6;

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
    // Wrapped twice: a second chance.
    let middle = if inner_type == ETH_P_IPV4 {
        header::<Ipv4Hdr>(ctx, size_of::<EthHdr>()).map(|ip| {
            let outer = Outer {
                family: FAMILY_V4,
                src: [ip.src, 0, 0, 0],
                dst: [ip.dst, 0, 0, 0],
                total_len: u16::from_be(ip.total_len),
            };
            (
                ip.version_ihl == 0x45,
                ip.protocol,
                size_of::<Ipv4Hdr>(),
                outer,
            )
        })
    } else {
        header::<Ipv6Hdr>(ctx, size_of::<EthHdr>()).map(|ip| {
            let outer = Outer {
                family: FAMILY_V6,
                src: ip.src,
                dst: ip.dst,
                total_len: u16::from_be(ip.payload_len) + size_of::<Ipv6Hdr>() as u16,
            };
            (true, ip.next_header, size_of::<Ipv6Hdr>(), outer)
        })
    };
    let Some((plain, proto, middle_len, onward)) = middle else {
        return xdp_action::XDP_PASS;
    };
    let client_type = match proto {
        IPPROTO_IPIP => ETH_P_IPV4,
        IPPROTO_IPV6 => ETH_P_IPV6,
        _ => return xdp_action::XDP_PASS,
    };
    if !plain {
        return xdp_action::XDP_PASS;
    }
    if owns_connection(ctx, size_of::<EthHdr>() + middle_len, client_type) {
        // SAFETY: helper call on our context.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, middle_len as i32) } != 0 {
            return xdp_action::XDP_PASS;
        }
        let Some(eth) = header_mut::<EthHdr>(ctx, 0) else {
            return xdp_action::XDP_DROP;
        };
        eth.dst = dst_mac;
        eth.src = src_mac;
        eth.ether_type = client_type.to_be();
        return xdp_action::XDP_PASS;
    }
    count_event(L4Event::SecondChanceForwarded);
    send_on(ctx, &onward, src_mac, dst_mac)
}

/// Whether this host has the TCP connection of the client packet at `off` (of ether type
/// `client_type`): a socket for its 4-tuple that is not a listener. Anything not TCP, or not
/// readable, counts as ours (delivered as a plain packet would be).
#[inline(always)]
fn owns_connection(ctx: &XdpContext, off: usize, client_type: u16) -> bool {
    // SAFETY: all-zero is a valid tuple (plain integers).
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if client_type == ETH_P_IPV4 {
        let Some(ip) = header::<Ipv4Hdr>(ctx, off) else {
            return true;
        };
        if ip.protocol != IPPROTO_TCP {
            return true;
        }
        let (src, dst) = (ip.src, ip.dst);
        let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
        let Some(tcp) = header::<TcpHdr>(ctx, off + ihl) else {
            return true;
        };
        tuple.__bindgen_anon_1.ipv4.saddr = src;
        tuple.__bindgen_anon_1.ipv4.daddr = dst;
        tuple.__bindgen_anon_1.ipv4.sport = tcp.src_port;
        tuple.__bindgen_anon_1.ipv4.dport = tcp.dst_port;
        12
    } else {
        let Some(ip) = header::<Ipv6Hdr>(ctx, off) else {
            return true;
        };
        if ip.next_header != IPPROTO_TCP {
            return true;
        }
        let (src, dst) = (ip.src, ip.dst);
        let Some(tcp) = header::<TcpHdr>(ctx, off + size_of::<Ipv6Hdr>()) else {
            return true;
        };
        tuple.__bindgen_anon_1.ipv6.saddr = src;
        tuple.__bindgen_anon_1.ipv6.daddr = dst;
        tuple.__bindgen_anon_1.ipv6.sport = tcp.src_port;
        tuple.__bindgen_anon_1.ipv6.dport = tcp.dst_port;
        36
    };
    // SAFETY: helper call with our context and a tuple on our stack of the size given; a
    // socket it returns is released below before the function returns.
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx as *mut _,
            &mut tuple,
            size,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a non-null socket from the lookup; read before it is released.
    let state = unsafe { (*sk).state };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk as *mut _) };
    state != TCP_LISTEN
}
