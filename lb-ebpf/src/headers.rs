//! Wire layouts of the headers the datapath reads.
//!
//! Multi-byte fields are byte arrays: after a 14-byte Ethernet header nothing is aligned, and
//! byte arrays keep every struct at alignment 1 so a reference into the packet is always valid.
//! Read them with `u16::from_be_bytes` and friends.

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_DSTOPTS: u8 = 60;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

/// 802.1Q / 802.1ad tag, as it follows the outer EtherType.
#[repr(C)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub ether_type: [u8; 2],
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: [u8; 2],
    pub id: [u8; 2],
    /// Flags (3 bits) and fragment offset (13 bits, in 8-byte units).
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv4Hdr {
    pub const MORE_FRAGMENTS: u16 = 0x2000;
    pub const OFFSET_MASK: u16 = 0x1fff;
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_tc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// Common start of Hop-by-Hop, Routing and Destination Options headers:
/// total length is `(len + 1) * 8` bytes.
#[repr(C)]
pub struct Ipv6OptHdr {
    pub next_header: u8,
    pub len: u8,
}

#[repr(C)]
pub struct Ipv6FragHdr {
    pub next_header: u8,
    pub reserved: u8,
    /// Offset (13 bits, in 8-byte units), 2 reserved bits, M flag.
    pub offset_flags: [u8; 2],
    pub id: [u8; 4],
}

impl Ipv6FragHdr {
    pub const OFFSET_MASK: u16 = 0xfff8;
}

#[repr(C)]
pub struct TcpHdr {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub seq: [u8; 4],
    pub ack_seq: [u8; 4],
    /// Data offset in the high nibble (32-bit words).
    pub data_offset: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg_ptr: [u8; 2],
}

impl TcpHdr {
    pub const SYN: u8 = 0x02;
    pub const ACK: u8 = 0x10;
}

#[repr(C)]
pub struct UdpHdr {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

/// IPv4-in-IP (outer protocol number for an inner IPv4 packet).
pub const IPPROTO_IPIP: u8 = 4;
/// IPv6-in-IP (outer protocol number for an inner IPv6 packet).
pub const IPPROTO_IPV6: u8 = 41;
