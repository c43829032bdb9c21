//! Frame parsing: Ethernet (up to two VLAN tags) -> IPv4 / IPv6 (extension headers) -> TCP / UDP.
//!
//! Every header read goes through [`header`], which checks `data + off + size <= data_end`
//! first: that comparison is what the verifier needs to see before any packet access. Offsets
//! that depend on packet contents (VLAN tags, IHL, extension headers) are bounded by
//! construction (fixed tag count, 4-bit IHL, fixed number of extension headers walked).
use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    Malformed, PacketClass,
    l4::{FAMILY_V4, FAMILY_V6},
    stats::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::headers::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS, IPPROTO_ROUTING, Ipv4Hdr, Ipv6FragHdr, Ipv6Hdr, Ipv6OptHdr, TcpHdr, UdpHdr,
    VlanHdr,
};

/// VLAN tags we walk: 802.1ad outer + 802.1Q inner (QinQ).
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers we walk before giving up on finding the L4 header.
const MAX_IPV6_EXT_HEADERS: usize = 6;

pub enum Frame {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NonIp,
    Ip(Packet),
}

/// Addresses as the L4 maps hold them: bytes in memory order, a word at a time.
#[derive(Clone, Copy)]
pub enum Addrs {
    V4 { src: u32, dst: u32 },
    V6 { src: [u32; 4], dst: [u32; 4] },
}

#[derive(Clone, Copy)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

pub struct Packet {
    pub addrs: Addrs,
    /// Offset of the IP header in the frame (after Ethernet and VLAN tags).
    pub l3_off: usize,
    /// Offset of the L4 header (after IPv4 options / IPv6 extension headers).
    pub l4_off: usize,
    /// Length of the IP packet as its header declares it (header included); the frame may
    /// hold Ethernet padding after it.
    pub ip_len: usize,
    /// L4 protocol number (after IPv6 extension headers).
    pub proto: u8,
    /// TCP/UDP ports; `None` for other protocols and non-first fragments.
    pub ports: Option<Ports>,
    /// TCP flags byte; zero for anything else.
    pub tcp_flags: u8,
    /// Part of a fragmented datagram.
    pub fragment: bool,
}

impl Packet {
    pub fn class(&self) -> PacketClass {
        let has_ports = self.ports.is_some();
        match (self.addrs, self.proto) {
            (Addrs::V4 { .. }, IPPROTO_TCP) if has_ports => PacketClass::Ipv4Tcp,
            (Addrs::V4 { .. }, IPPROTO_UDP) if has_ports => PacketClass::Ipv4Udp,
            (Addrs::V4 { .. }, _) => PacketClass::Ipv4Other,
            (Addrs::V6 { .. }, IPPROTO_TCP) if has_ports => PacketClass::Ipv6Tcp,
            (Addrs::V6 { .. }, IPPROTO_UDP) if has_ports => PacketClass::Ipv6Udp,
            (Addrs::V6 { .. }, _) => PacketClass::Ipv6Other,
        }
    }

    /// Source, destination (IPv4 in the first word) and family (4 or 6).
    #[inline(always)]
    pub fn addrs16(&self) -> ([u32; 4], [u32; 4], u8) {
        match self.addrs {
            Addrs::V4 { src, dst } => (widen(src), widen(dst), FAMILY_V4),
            Addrs::V6 { src, dst } => (src, dst, FAMILY_V6),
        }
    }

    pub fn is_tcp_syn(&self) -> bool {
        self.proto == IPPROTO_TCP
            && self.ports.is_some()
            && self.tcp_flags & (TcpHdr::SYN | TcpHdr::ACK) == TcpHdr::SYN
    }
}

/// IPv4 address in the 16-byte layout the L4 maps use.
#[inline(always)]
pub fn widen(v4: u32) -> [u32; 4] {
    [v4, 0, 0, 0]
}

/// A bounds-checked pointer to a `T` at byte offset `off` of the frame.
///
/// `data` and `data_end` are re-read with volatile loads so LLVM cannot prove this check
/// redundant from earlier length checks (e.g. "the IPv4 total length fits, so the TCP header
/// does") and drop it: the verifier only accepts an access after a pointer comparison it sees.
#[inline(always)]
fn header_ptr<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    // SAFETY: `ctx.ctx` is the xdp_md the kernel passed in; reading its fields is always valid.
    let (data, data_end) = unsafe {
        (
            core::ptr::read_volatile(&(*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize,
        )
    };
    let start = data + off;
    if start + size_of::<T>() > data_end {
        return None;
    }
    Some(start as *mut T)
}

/// A bounds-checked view of the header of type `T` at byte offset `off` of the frame.
#[inline(always)]
pub fn header<T>(ctx: &XdpContext, off: usize) -> Option<&T> {
    // SAFETY: in bounds (checked by header_ptr). The address may be less aligned than `T`;
    // packet memory tolerates that on the targets lb supports (see headers.rs).
    header_ptr(ctx, off).map(|p| unsafe { &*p })
}

/// Like [`header`], for writing (XDP frames are writable).
#[inline(always)]
#[allow(clippy::mut_from_ref)] // the frame is not Rust memory; the context only locates it
pub fn header_mut<T>(ctx: &XdpContext, off: usize) -> Option<&mut T> {
    // SAFETY: as for `header`.
    header_ptr(ctx, off).map(|p| unsafe { &mut *p })
}

/// True when `len` bytes from `off` are inside the frame.
#[inline(always)]
fn fits(ctx: &XdpContext, off: usize, len: usize) -> bool {
    ctx.data() + off + len <= ctx.data_end()
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Frame, Malformed> {
    let eth: &EthHdr = header(ctx, 0).ok_or(Malformed::EthTruncated)?;
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut off = size_of::<EthHdr>();

    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let tag: &VlanHdr = header(ctx, off).ok_or(Malformed::VlanTruncated)?;
        ether_type = u16::from_be(tag.ether_type);
        off += size_of::<VlanHdr>();
    }
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        return Err(Malformed::VlanTruncated);
    }

    match ether_type {
        ETH_P_IPV4 => parse_ipv4(ctx, off).map(Frame::Ip),
        ETH_P_IPV6 => parse_ipv6(ctx, off).map(Frame::Ip),
        _ => Ok(Frame::NonIp),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize) -> Result<Packet, Malformed> {
    let ip: &Ipv4Hdr = header(ctx, off).ok_or(Malformed::Ipv4Truncated)?;
    if ip.version_ihl >> 4 != 4 {
        return Err(Malformed::Ipv4BadVersion);
    }
    let header_len = ((ip.version_ihl & 0x0f) as usize) * 4;
    if header_len < size_of::<Ipv4Hdr>() {
        return Err(Malformed::Ipv4BadIhl);
    }
    if !fits(ctx, off, header_len) {
        return Err(Malformed::Ipv4OptionsTruncated);
    }
    let total_len = u16::from_be(ip.total_len) as usize;
    if total_len < header_len || !fits(ctx, off, total_len) {
        return Err(Malformed::Ipv4BadTotalLength);
    }

    let frag = u16::from_be(ip.frag_off);
    let fragment_offset = frag & Ipv4Hdr::OFFSET_MASK;
    let fragment = fragment_offset != 0 || frag & Ipv4Hdr::MORE_FRAGMENTS != 0;

    let mut pkt = Packet {
        addrs: Addrs::V4 {
            src: ip.src,
            dst: ip.dst,
        },
        l3_off: off,
        l4_off: off + header_len,
        ip_len: total_len,
        proto: ip.protocol,
        ports: None,
        tcp_flags: 0,
        fragment,
    };
    if fragment_offset == 0 {
        let payload_len = total_len - header_len;
        parse_l4(ctx, off + header_len, payload_len, &mut pkt)?;
    }
    Ok(pkt)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize) -> Result<Packet, Malformed> {
    let ip: &Ipv6Hdr = header(ctx, off).ok_or(Malformed::Ipv6Truncated)?;
    if u32::from_be(ip.version_tc_flow) >> 28 != 6 {
        return Err(Malformed::Ipv6BadVersion);
    }
    let payload_len = u16::from_be(ip.payload_len) as usize;
    let payload_off = off + size_of::<Ipv6Hdr>();
    if !fits(ctx, payload_off, payload_len) {
        return Err(Malformed::Ipv6BadPayloadLength);
    }

    let mut next = ip.next_header;
    let mut l4_off = payload_off;
    let mut fragment = false;
    let mut first_fragment = true;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let ext: &Ipv6OptHdr = header(ctx, l4_off).ok_or(Malformed::Ipv6ExtTruncated)?;
                next = ext.next_header;
                l4_off += (ext.len as usize + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let frag: &Ipv6FragHdr = header(ctx, l4_off).ok_or(Malformed::Ipv6ExtTruncated)?;
                next = frag.next_header;
                fragment = true;
                if u16::from_be(frag.offset_flags) & Ipv6FragHdr::OFFSET_MASK != 0 {
                    first_fragment = false;
                }
                l4_off += size_of::<Ipv6FragHdr>();
            }
            _ => break,
        }
    }
    // A chain longer than we walk is legal IPv6: report the extension header as the protocol
    // (no ports), so it is passed as `Ipv6Other` rather than dropped as malformed.
    let chain_too_long = matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT
    );
    let ext_len = l4_off - payload_off;
    if ext_len > payload_len {
        return Err(Malformed::Ipv6ExtTruncated);
    }

    let mut pkt = Packet {
        addrs: Addrs::V6 {
            src: ip.src,
            dst: ip.dst,
        },
        l3_off: off,
        l4_off,
        ip_len: size_of::<Ipv6Hdr>() + payload_len,
        proto: next,
        ports: None,
        tcp_flags: 0,
        fragment,
    };
    if first_fragment && !chain_too_long {
        parse_l4(ctx, l4_off, payload_len - ext_len, &mut pkt)?;
    }
    Ok(pkt)
}

/// Reads ports (and TCP flags) of a TCP or UDP header at `off`. `ip_payload_len` is what the IP
/// header says follows it (for a fragment, only this fragment's share); the L4 header must fit
/// in it, so Ethernet padding after a short IP packet is never read as a header.
#[inline(always)]
fn parse_l4(
    ctx: &XdpContext,
    off: usize,
    ip_payload_len: usize,
    pkt: &mut Packet,
) -> Result<(), Malformed> {
    match pkt.proto {
        IPPROTO_TCP => {
            if ip_payload_len < size_of::<TcpHdr>() {
                return Err(Malformed::TcpTruncated);
            }
            let tcp: &TcpHdr = header(ctx, off).ok_or(Malformed::TcpTruncated)?;
            let tcp_header_len = ((tcp.data_offset >> 4) as usize) * 4;
            if tcp_header_len < size_of::<TcpHdr>()
                || tcp_header_len > ip_payload_len
                || !fits(ctx, off, tcp_header_len)
            {
                return Err(Malformed::TcpBadDataOffset);
            }
            pkt.ports = Some(Ports {
                src: u16::from_be(tcp.src_port),
                dst: u16::from_be(tcp.dst_port),
            });
            pkt.tcp_flags = tcp.flags;
        }
        IPPROTO_UDP => {
            if ip_payload_len < size_of::<UdpHdr>() {
                return Err(Malformed::UdpTruncated);
            }
            let udp: &UdpHdr = header(ctx, off).ok_or(Malformed::UdpTruncated)?;
            let udp_len = u16::from_be(udp.len) as usize;
            // A first fragment carries the length of the whole datagram, so only unfragmented
            // datagrams can be held to their IP payload length.
            let too_long = !pkt.fragment && udp_len > ip_payload_len;
            if udp_len < size_of::<UdpHdr>() || too_long {
                return Err(Malformed::UdpBadLength);
            }
            pkt.ports = Some(Ports {
                src: u16::from_be(udp.src_port),
                dst: u16::from_be(udp.dst_port),
            });
        }
        _ => {}
    }
    Ok(())
}
