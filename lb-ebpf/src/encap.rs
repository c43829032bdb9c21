//! IPIP / IP6IP6 encapsulation toward a real (direct server return): the client's packet is
//! kept byte for byte behind a new outer IP header addressed to the real; the real strips it
//! (`lb_decap`) and answers the client directly from the VIP.
use core::mem::size_of;

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::l4::{EncapConfig, FAMILY_V4, Real};

use crate::{
    csum::ipv4_header_checksum,
    headers::{ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_IPIP, IPPROTO_IPV6, Ipv4Hdr, Ipv6Hdr},
    maps::ENCAP_CONFIG,
    parse::{Addrs, Packet, header_mut},
};

/// Where the encapsulated packet goes next (for the FIB lookup).
pub struct Outer {
    pub family: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub total_len: u16,
}

/// Wraps the IP packet in an outer header to `real`, dropping any VLAN tags (the FIB lookup
/// decides the egress). Returns `None` if the frame could not be grown.
#[inline(always)]
pub fn encapsulate(ctx: &XdpContext, pkt: &Packet, real: &Real, hash: u32) -> Option<Outer> {
    let eth: &mut EthHdr = header_mut(ctx, 0)?;
    let (orig_dst_mac, orig_src_mac) = (eth.dst, eth.src);
    let inner_proto = match pkt.addrs {
        Addrs::V4 { .. } => IPPROTO_IPIP,
        Addrs::V6 { .. } => IPPROTO_IPV6,
    };
    let config = ENCAP_CONFIG.get(0).copied().unwrap_or(EncapConfig {
        src_v4: [172, 16, 0, 0],
        src_v6: [0; 16],
    });
    let hash_bytes = hash.to_be_bytes();
    let outer_len = if real.family == FAMILY_V4 {
        size_of::<Ipv4Hdr>()
    } else {
        size_of::<Ipv6Hdr>()
    };
    let total_len = pkt.ip_len + outer_len;
    if total_len > 0xffff {
        return None;
    }
    let delta = pkt.l3_off as i32 - (size_of::<EthHdr>() + outer_len) as i32;
    // SAFETY: helper call on the context the kernel gave us.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return None;
    }

    // Every pointer is re-derived after adjust_head. The original MACs stay until the FIB
    // lookup replaces them: if the packet is passed to the stack instead, it must still look
    // addressed to this host.
    let eth: &mut EthHdr = header_mut(ctx, 0)?;
    eth.dst = orig_dst_mac;
    eth.src = orig_src_mac;
    let mut src = [0u8; 16];
    if real.family == FAMILY_V4 {
        eth.ether_type = ETH_P_IPV4.to_be_bytes();
        let ip: &mut Ipv4Hdr = header_mut(ctx, size_of::<EthHdr>())?;
        src[0] = config.src_v4[0];
        src[1] = config.src_v4[1];
        src[2] = hash_bytes[2];
        src[3] = hash_bytes[3];
        ip.version_ihl = 0x45;
        ip.tos = 0;
        ip.total_len = (total_len as u16).to_be_bytes();
        ip.id = [0, 0];
        ip.frag_off = [0, 0];
        ip.ttl = 64;
        ip.protocol = inner_proto;
        ip.check = [0, 0];
        ip.src = [src[0], src[1], src[2], src[3]];
        ip.dst = [real.addr[0], real.addr[1], real.addr[2], real.addr[3]];
        ip.check = ipv4_header_checksum(ip);
    } else {
        eth.ether_type = ETH_P_IPV6.to_be_bytes();
        let ip: &mut Ipv6Hdr = header_mut(ctx, size_of::<EthHdr>())?;
        src = config.src_v6;
        src[12] = hash_bytes[0];
        src[13] = hash_bytes[1];
        src[14] = hash_bytes[2];
        src[15] = hash_bytes[3];
        ip.version_tc_flow = [0x60, 0, 0, 0];
        ip.payload_len = (pkt.ip_len as u16).to_be_bytes();
        ip.next_header = inner_proto;
        ip.hop_limit = 64;
        ip.src = src;
        ip.dst = real.addr;
    }
    Some(Outer {
        family: real.family,
        src,
        dst: real.addr,
        total_len: total_len as u16,
    })
}
