//! Counter keys and values written by the datapath and read by userspace.

/// IANA protocol numbers used as [`PortKey::proto`].
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Key of the per-(protocol, destination port) traffic counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub proto: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
    /// Destination port, host byte order.
    pub port: u16,
}

impl PortKey {
    pub const fn new(proto: u8, port: u16) -> Self {
        Self {
            proto,
            _pad: 0,
            port,
        }
    }
}

/// Packets and bytes (whole frame, Ethernet header included, as XDP sees it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
}

impl TrafficCounters {
    /// Sum of per-CPU values (userspace reads one value per possible CPU).
    pub fn sum<'a>(values: impl IntoIterator<Item = &'a TrafficCounters>) -> Self {
        values.into_iter().fold(Self::default(), |acc, v| Self {
            packets: acc.packets + v.packets,
            bytes: acc.bytes + v.bytes,
        })
    }
}

/// What a well-formed packet turned out to be. Index into the `PACKET_CLASSES` per-CPU array.
///
/// Every frame the program sees lands in exactly one of the classes from `NonIp` to
/// `Ipv6Other`, or in one [`Malformed`] reason. `TcpSyn`, `Ipv4Fragment`, `Ipv6Fragment` and
/// `PortStatsFull` are extra marks on top of that.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketClass {
    /// ARP, LLDP, ...: anything whose (inner) EtherType is neither IPv4 nor IPv6.
    NonIp = 0,
    Ipv4Tcp = 1,
    Ipv4Udp = 2,
    /// IPv4 with another L4 protocol (ICMP, ...), or a non-first fragment (no L4 header).
    Ipv4Other = 3,
    Ipv6Tcp = 4,
    Ipv6Udp = 5,
    /// IPv6 with another L4 protocol (ICMPv6, ...), a non-first fragment, or an extension
    /// header chain longer than the parser walks.
    Ipv6Other = 6,
    /// TCP segment with SYN set and ACK clear: a connection attempt.
    TcpSyn = 7,
    /// IPv4 packet that is part of a fragmented datagram (first or not).
    Ipv4Fragment = 8,
    /// IPv6 packet with a Fragment extension header.
    Ipv6Fragment = 9,
    /// A (proto, port) key could not be added because `PORT_STATS` is full.
    PortStatsFull = 10,
}

impl PacketClass {
    pub const COUNT: u32 = 11;
    pub const ALL: [PacketClass; Self::COUNT as usize] = [
        Self::NonIp,
        Self::Ipv4Tcp,
        Self::Ipv4Udp,
        Self::Ipv4Other,
        Self::Ipv6Tcp,
        Self::Ipv6Udp,
        Self::Ipv6Other,
        Self::TcpSyn,
        Self::Ipv4Fragment,
        Self::Ipv6Fragment,
        Self::PortStatsFull,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::NonIp => "non_ip",
            Self::Ipv4Tcp => "ipv4_tcp",
            Self::Ipv4Udp => "ipv4_udp",
            Self::Ipv4Other => "ipv4_other",
            Self::Ipv6Tcp => "ipv6_tcp",
            Self::Ipv6Udp => "ipv6_udp",
            Self::Ipv6Other => "ipv6_other",
            Self::TcpSyn => "tcp_syn",
            Self::Ipv4Fragment => "ipv4_fragment",
            Self::Ipv6Fragment => "ipv6_fragment",
            Self::PortStatsFull => "port_stats_full",
        }
    }
}

/// Why a frame could not be parsed. Index into the `MALFORMED` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than an Ethernet header.
    EthTruncated = 0,
    /// An 802.1Q/802.1ad tag announced but cut off, or more tags than we walk.
    VlanTruncated = 1,
    /// Shorter than the fixed 20-byte IPv4 header.
    Ipv4Truncated = 2,
    /// IPv4 version field is not 4.
    Ipv4BadVersion = 3,
    /// IHL below 5 (20 bytes).
    Ipv4BadIhl = 4,
    /// IPv4 options (IHL > 5) run past the end of the frame.
    Ipv4OptionsTruncated = 5,
    /// IPv4 total length smaller than the header or larger than the frame.
    Ipv4BadTotalLength = 6,
    /// Shorter than the fixed 40-byte IPv6 header.
    Ipv6Truncated = 7,
    /// IPv6 version field is not 6.
    Ipv6BadVersion = 8,
    /// IPv6 payload length larger than the frame.
    Ipv6BadPayloadLength = 9,
    /// An IPv6 extension header cut off or longer than the payload. (A chain longer than the
    /// parser walks is not malformed: it is classed `Ipv6Other`, without ports.)
    Ipv6ExtTruncated = 10,
    /// TCP header (20 bytes) cut off.
    TcpTruncated = 11,
    /// TCP data offset below 5 or past the end of the frame.
    TcpBadDataOffset = 12,
    /// UDP header (8 bytes) cut off.
    UdpTruncated = 13,
    /// UDP length field smaller than 8 or larger than the IP payload (unfragmented datagrams).
    UdpBadLength = 14,
}

impl Malformed {
    pub const COUNT: u32 = 15;
    pub const ALL: [Malformed; Self::COUNT as usize] = [
        Self::EthTruncated,
        Self::VlanTruncated,
        Self::Ipv4Truncated,
        Self::Ipv4BadVersion,
        Self::Ipv4BadIhl,
        Self::Ipv4OptionsTruncated,
        Self::Ipv4BadTotalLength,
        Self::Ipv6Truncated,
        Self::Ipv6BadVersion,
        Self::Ipv6BadPayloadLength,
        Self::Ipv6ExtTruncated,
        Self::TcpTruncated,
        Self::TcpBadDataOffset,
        Self::UdpTruncated,
        Self::UdpBadLength,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::EthTruncated => "eth_truncated",
            Self::VlanTruncated => "vlan_truncated",
            Self::Ipv4Truncated => "ipv4_truncated",
            Self::Ipv4BadVersion => "ipv4_bad_version",
            Self::Ipv4BadIhl => "ipv4_bad_ihl",
            Self::Ipv4OptionsTruncated => "ipv4_options_truncated",
            Self::Ipv4BadTotalLength => "ipv4_bad_total_length",
            Self::Ipv6Truncated => "ipv6_truncated",
            Self::Ipv6BadVersion => "ipv6_bad_version",
            Self::Ipv6BadPayloadLength => "ipv6_bad_payload_length",
            Self::Ipv6ExtTruncated => "ipv6_ext_truncated",
            Self::TcpTruncated => "tcp_truncated",
            Self::TcpBadDataOffset => "tcp_bad_data_offset",
            Self::UdpTruncated => "udp_truncated",
            Self::UdpBadLength => "udp_bad_length",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, #[repr(C)], no padding bytes left implicit.
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::TrafficCounters {}
}
