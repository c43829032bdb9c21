//! Internet checksum of a 20-byte IPv4 header (options never appear in headers we build).
use crate::headers::Ipv4Hdr;

/// Checksum of `ip` with its `check` field taken as zero, in network order (store as is).
#[inline(always)]
pub fn ipv4_header_checksum(ip: &Ipv4Hdr) -> u16 {
    let (src, dst) = (u32::from_be(ip.src), u32::from_be(ip.dst));
    let mut sum = (u32::from(ip.version_ihl) << 8 | u32::from(ip.tos))
        + u32::from(u16::from_be(ip.total_len))
        + u32::from(u16::from_be(ip.id))
        + u32::from(u16::from_be(ip.frag_off))
        + (u32::from(ip.ttl) << 8 | u32::from(ip.protocol))
        + (src >> 16)
        + (src & 0xffff)
        + (dst >> 16)
        + (dst & 0xffff);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be()
}
