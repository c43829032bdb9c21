//! IPIP / IP6IP6 encapsulation toward a real (direct server return): the client's packet is
//! kept byte for byte behind a new outer IP header addressed to the real; the real strips it
//! (`lb_decap`) and answers the client directly from the VIP.
use core::mem::size_of;

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::l4::{EncapConfig, FAMILY_V4, Real, addr_words};

use crate::{
    csum::ipv4_header_checksum,
    headers::{ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_IPIP, IPPROTO_IPV6, Ipv4Hdr, Ipv6Hdr},
    maps::ENCAP_CONFIG,
    parse::{Addrs, Packet, header_mut},
};

/// Where the encapsulated packet goes next (for the FIB lookup).
pub struct Outer {
    pub family: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub total_len: u16,
}

/// Wraps the IP packet in an outer header to `real`, dropping any VLAN tags (the FIB lookup
/// decides the egress). Returns `None` if the frame could not be grown.
#[inline(always)]
pub fn encapsulate(ctx: &XdpContext, pkt: &Packet, real: &Real, hash: u32) -> Option<Outer> {
    let inner_v4 = matches!(pkt.addrs, Addrs::V4 { .. });
    wrap_ip(ctx, pkt.l3_off, pkt.ip_len, inner_v4, real, hash)
}

/// Wraps an already encapsulated packet once more, in a header to `real` (a second chance:
/// `real` delivers the packet if the connection is its own, else strips this header and
/// sends the rest on to the real `first` is addressed to; see `decap.rs`).
#[inline(always)]
pub fn wrap_again(ctx: &XdpContext, first: &Outer, real: &Real, hash: u32) -> Option<Outer> {
    wrap_ip(
        ctx,
        size_of::<EthHdr>(),
        usize::from(first.total_len),
        first.family == FAMILY_V4,
        real,
        hash,
    )
}

/// The IP packet at `l3_off` (`ip_len` bytes, IPv4 when `inner_v4`) behind a new outer header
/// to `real`, right after the Ethernet header.
#[inline(always)]
fn wrap_ip(
    ctx: &XdpContext,
    l3_off: usize,
    ip_len: usize,
    inner_v4: bool,
    real: &Real,
    hash: u32,
) -> Option<Outer> {
    let eth: &mut EthHdr = header_mut(ctx, 0)?;
    let (orig_dst_mac, orig_src_mac) = (eth.dst, eth.src);
    let inner_proto = if inner_v4 { IPPROTO_IPIP } else { IPPROTO_IPV6 };
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
    let total_len = ip_len + outer_len;
    if total_len > 0xffff {
        return None;
    }
    let delta = l3_off as i32 - (size_of::<EthHdr>() + outer_len) as i32;
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
    let src;
    if real.family == FAMILY_V4 {
        eth.ether_type = ETH_P_IPV4.to_be();
        let ip: &mut Ipv4Hdr = header_mut(ctx, size_of::<EthHdr>())?;
        let v4 = config.src_v4;
        src = [
            u32::from_ne_bytes([v4[0], v4[1], hash_bytes[2], hash_bytes[3]]),
            0,
            0,
            0,
        ];
        ip.version_ihl = 0x45;
        ip.tos = 0;
        ip.total_len = (total_len as u16).to_be();
        ip.id = 0;
        ip.frag_off = 0;
        ip.ttl = 64;
        ip.protocol = inner_proto;
        ip.src = src[0];
        ip.dst = real.addr[0];
        ip.check = ipv4_header_checksum(ip);
    } else {
        eth.ether_type = ETH_P_IPV6.to_be();
        let ip: &mut Ipv6Hdr = header_mut(ctx, size_of::<EthHdr>())?;
        let prefix = addr_words(config.src_v6);
        src = [
            prefix[0],
            prefix[1],
            prefix[2],
            u32::from_ne_bytes(hash_bytes),
        ];
        ip.version_tc_flow = 0x6000_0000u32.to_be();
        ip.payload_len = (ip_len as u16).to_be();
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
