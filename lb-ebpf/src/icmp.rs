//! ICMP "fragmentation needed" (v4) and "packet too big" (v6) about VIP flows.
//!
//! With direct server return the real's replies leave from the VIP address, so a router that
//! cannot forward them sends its ICMP error to the VIP, which lands here, not on the real. The
//! error quotes the real's packet (VIP:port -> client:port); reversing that gives the client's
//! flow, whose real is found exactly as for the flow's own packets, and the ICMP message is
//! encapsulated to it so its TCP stack lowers the path MTU. Without this, PMTU discovery for
//! VIP traffic would be black-holed.
use core::mem::size_of;

use lb_common::l4::{FAMILY_V4, FAMILY_V6, FlowKey, VipKey, VipMeta};

use crate::{
    headers::{Ipv4Hdr, Ipv6Hdr},
    maps::VIPS,
    parse::{Addrs, Packet, header, widen},
};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// Type, code, checksum, and 4 bytes (unused / next-hop MTU) before the quoted packet.
const ICMP_HEADER_LEN: usize = 8;

#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
}

/// Source and destination ports: the first 4 bytes of a quoted TCP or UDP header.
#[repr(C)]
struct QuotedPorts {
    src: u16,
    dst: u16,
}

/// If `pkt` is a PMTU error about a VIP flow: that VIP and the client's flow key.
#[inline(always)]
pub fn ptb_flow(ctx: &aya_ebpf::programs::XdpContext, pkt: &Packet) -> Option<(VipMeta, FlowKey)> {
    let is_ptb = match pkt.addrs {
        Addrs::V4 { .. } => pkt.proto == IPPROTO_ICMP,
        Addrs::V6 { .. } => pkt.proto == IPPROTO_ICMPV6,
    };
    if !is_ptb || pkt.fragment {
        return None;
    }
    let icmp: &IcmpHdr = header(ctx, pkt.l4_off)?;
    let quoted_off = pkt.l4_off + ICMP_HEADER_LEN;
    // The quoted packet: (VIP, VIP port) -> (client, client port), from the real.
    let (vip_addr, client_addr, proto, family, ports_off) = match pkt.addrs {
        Addrs::V4 { .. } => {
            if icmp.kind != ICMP_DEST_UNREACH || icmp.code != ICMP_FRAG_NEEDED {
                return None;
            }
            let inner: &Ipv4Hdr = header(ctx, quoted_off)?;
            let inner_len = ((inner.version_ihl & 0x0f) as usize) * 4;
            if inner.version_ihl >> 4 != 4 || inner_len < size_of::<Ipv4Hdr>() {
                return None;
            }
            (
                widen(inner.src),
                widen(inner.dst),
                inner.protocol,
                FAMILY_V4,
                quoted_off + inner_len,
            )
        }
        Addrs::V6 { .. } => {
            if icmp.kind != ICMPV6_PACKET_TOO_BIG {
                return None;
            }
            let inner: &Ipv6Hdr = header(ctx, quoted_off)?;
            (
                inner.src,
                inner.dst,
                inner.next_header,
                FAMILY_V6,
                quoted_off + size_of::<Ipv6Hdr>(),
            )
        }
    };
    let ports: &QuotedPorts = header(ctx, ports_off)?;
    let vip_port = u16::from_be(ports.src);
    let client_port = u16::from_be(ports.dst);
    let key = VipKey {
        addr: vip_addr,
        port: vip_port,
        proto,
        family,
    };
    // SAFETY: copied out at once.
    let meta = *unsafe { VIPS.get(key) }?;
    Some((
        meta,
        FlowKey {
            src: client_addr,
            dst: vip_addr,
            src_port: client_port,
            dst_port: vip_port,
            proto,
            family,
            _pad: [0; 2],
        },
    ))
}
