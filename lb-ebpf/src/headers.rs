//! Wire layouts of the headers the datapath reads and writes.
//!
//! Multi-byte fields are native integers holding the wire bytes as they are (network order):
//! read them with `u16::from_be` / `u32::from_be`, or compare and copy them raw. Native widths
//! let LLVM load a field in one instruction instead of assembling it byte by byte.
//!
//! Alignment: these structs have their natural alignment, but in a frame they sit wherever the
//! headers before them end (an IPv4 header usually starts at offset 14). The kernel accepts
//! misaligned packet loads and stores on the architectures lb supports (x86-64, arm64: no
//! strict alignment for packet pointers), and only packet memory is ever viewed through them;
//! copies on the stack are aligned by the compiler.

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_DSTOPTS: u8 = 60;
/// IPv4-in-IP (outer protocol number for an inner IPv4 packet).
pub const IPPROTO_IPIP: u8 = 4;
/// IPv6-in-IP (outer protocol number for an inner IPv6 packet).
pub const IPPROTO_IPV6: u8 = 41;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network order.
    pub ether_type: u16,
}

/// 802.1Q / 802.1ad tag, as it follows the outer EtherType.
#[repr(C)]
pub struct VlanHdr {
    pub tci: u16,
    pub ether_type: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: u16,
    pub id: u16,
    /// Flags (3 bits) and fragment offset (13 bits, in 8-byte units), network order.
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    /// Address bytes in memory order (the L4 maps' word layout).
    pub src: u32,
    pub dst: u32,
}

impl Ipv4Hdr {
    pub const MORE_FRAGMENTS: u16 = 0x2000;
    pub const OFFSET_MASK: u16 = 0x1fff;
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_tc_flow: u32,
    pub payload_len: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
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
    /// Offset (13 bits, in 8-byte units), 2 reserved bits, M flag; network order.
    pub offset_flags: u16,
    pub id: u32,
}

impl Ipv6FragHdr {
    pub const OFFSET_MASK: u16 = 0xfff8;
}

#[repr(C)]
pub struct TcpHdr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack_seq: u32,
    /// Data offset in the high nibble (32-bit words).
    pub data_offset: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg_ptr: u16,
}

impl TcpHdr {
    pub const SYN: u8 = 0x02;
    pub const ACK: u8 = 0x10;
}

#[repr(C)]
pub struct UdpHdr {
    pub src_port: u16,
    pub dst_port: u16,
    pub len: u16,
    pub check: u16,
}
