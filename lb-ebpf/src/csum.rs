//! Internet checksum of a 20-byte IPv4 header (options never appear in headers we build).
use crate::headers::Ipv4Hdr;

#[inline(always)]
fn word(b: [u8; 2]) -> u32 {
    u32::from(u16::from_be_bytes(b))
}

/// Checksum of `ip` with its `check` field taken as zero.
#[inline(always)]
pub fn ipv4_header_checksum(ip: &Ipv4Hdr) -> [u8; 2] {
    let mut sum = word([ip.version_ihl, ip.tos])
        + word(ip.total_len)
        + word(ip.id)
        + word(ip.frag_off)
        + word([ip.ttl, ip.protocol])
        + word([ip.src[0], ip.src[1]])
        + word([ip.src[2], ip.src[3]])
        + word([ip.dst[0], ip.dst[1]])
        + word([ip.dst[2], ip.dst[3]]);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}
