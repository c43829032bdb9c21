//! Byte-exact frame builders for BPF_PROG_TEST_RUN tests and benchmarks, with valid IPv4 header
//! and TCP/UDP checksums. Layout knobs (VLAN tags, IPv4 options and fragment fields, IPv6
//! extension headers, TCP data offset) are explicit so tests can build malformed variants.

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_DSTOPTS: u8 = 60;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_PSH: u8 = 0x08;

/// Offsets of each header in a built frame, for tests that cut or patch at boundaries.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    /// Start of the IP header (after Ethernet and VLAN tags).
    pub l3: usize,
    /// Start of the TCP/UDP header (after IPv4 options or IPv6 extension headers).
    pub l4: usize,
    /// Start of the L4 payload.
    pub payload: usize,
}

/// An L4 segment before it is wrapped in IP: protocol number, header length and bytes.
#[derive(Clone, Debug)]
pub struct L4 {
    pub proto: u8,
    pub header_len: usize,
    pub bytes: Vec<u8>,
}

/// Options padded with zeros to a whole number of 32-bit words (IPv4 and TCP both need it).
fn pad_to_words(options: &[u8]) -> Vec<u8> {
    let mut padded = options.to_vec();
    padded.resize(options.len().div_ceil(4) * 4, 0);
    padded
}

/// TCP header with `options` (padded to 4 bytes) then `payload`.
pub fn tcp(sport: u16, dport: u16, flags: u8, options: &[u8], payload: &[u8]) -> L4 {
    let opts = pad_to_words(options);
    let header_len = 20 + opts.len();
    let mut b = Vec::with_capacity(header_len + payload.len());
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&dport.to_be_bytes());
    b.extend_from_slice(&1000u32.to_be_bytes()); // seq
    b.extend_from_slice(&(if flags & TCP_ACK != 0 { 2000u32 } else { 0 }).to_be_bytes());
    b.push(((header_len / 4) as u8) << 4);
    b.push(flags);
    b.extend_from_slice(&64240u16.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    b.extend_from_slice(&opts);
    b.extend_from_slice(payload);
    L4 {
        proto: IPPROTO_TCP,
        header_len,
        bytes: b,
    }
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> L4 {
    let len = (8 + payload.len()) as u16;
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&dport.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(payload);
    L4 {
        proto: IPPROTO_UDP,
        header_len: 8,
        bytes: b,
    }
}

/// Any other protocol: bytes carried as they are.
pub fn raw(proto: u8, bytes: &[u8]) -> L4 {
    L4 {
        proto,
        header_len: 0,
        bytes: bytes.to_vec(),
    }
}

/// Internet checksum (RFC 1071) over `chunks` concatenated.
pub fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let mut carry: Option<u8> = None;
    for chunk in chunks {
        for &byte in *chunk {
            match carry.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, byte])),
                None => carry = Some(byte),
            }
        }
    }
    if let Some(hi) = carry {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn l4_checksum_offset(proto: u8) -> Option<usize> {
    match proto {
        IPPROTO_TCP => Some(16),
        IPPROTO_UDP => Some(6),
        _ => None,
    }
}

fn fill_l4_checksum(l4: &mut L4, pseudo: &[u8]) {
    if let Some(off) = l4_checksum_offset(l4.proto) {
        if l4.bytes.len() < off + 2 {
            return;
        }
        l4.bytes[off..off + 2].copy_from_slice(&[0, 0]);
        let mut sum = checksum(&[pseudo, &l4.bytes]);
        if sum == 0 && l4.proto == IPPROTO_UDP {
            sum = 0xffff;
        }
        l4.bytes[off..off + 2].copy_from_slice(&sum.to_be_bytes());
    }
}

/// IPv4 header fields a test may want to vary.
#[derive(Clone, Debug)]
pub struct Ipv4Opts {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Raw option bytes, padded to 4 with zeros (IHL grows accordingly).
    pub options: Vec<u8>,
    /// Flags + fragment offset field as on the wire (0x2000 = more fragments).
    pub frag_field: u16,
}

impl Ipv4Opts {
    pub fn new(src: [u8; 4], dst: [u8; 4]) -> Self {
        Self {
            src,
            dst,
            options: Vec::new(),
            frag_field: 0x4000, // DF
        }
    }
}

/// IPv4 packet (header + options + L4), with header and L4 checksums.
pub fn ipv4(o: &Ipv4Opts, mut l4: L4) -> (Vec<u8>, usize) {
    let opts = pad_to_words(&o.options);
    let header_len = 20 + opts.len();
    let total = header_len + l4.bytes.len();
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&o.src);
    pseudo.extend_from_slice(&o.dst);
    pseudo.extend_from_slice(&[0, l4.proto]);
    pseudo.extend_from_slice(&(l4.bytes.len() as u16).to_be_bytes());
    fill_l4_checksum(&mut l4, &pseudo);

    let mut b = Vec::with_capacity(total);
    b.push(0x40 | (header_len / 4) as u8);
    b.push(0);
    b.extend_from_slice(&(total as u16).to_be_bytes());
    b.extend_from_slice(&0x1234u16.to_be_bytes());
    b.extend_from_slice(&o.frag_field.to_be_bytes());
    b.push(64);
    b.push(l4.proto);
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&o.src);
    b.extend_from_slice(&o.dst);
    b.extend_from_slice(&opts);
    let sum = checksum(&[&b]);
    b[10..12].copy_from_slice(&sum.to_be_bytes());
    b.extend_from_slice(&l4.bytes);
    (b, header_len)
}

/// An IPv6 extension header: its type and body (after next-header and length bytes).
#[derive(Clone, Debug)]
pub struct Ext {
    pub kind: u8,
    pub body: Vec<u8>,
}

impl Ext {
    /// Hop-by-Hop / Routing / Destination Options with `len` 8-byte units beyond the first
    /// (PadN-filled).
    pub fn opts(kind: u8, len: u8) -> Self {
        let mut body = vec![0u8; 6 + 8 * len as usize];
        body[0] = 1; // PadN
        body[1] = (body.len() - 2) as u8;
        Self { kind, body }
    }

    /// Fragment header with offset (in 8-byte units) and the M flag.
    pub fn fragment(offset_units: u16, more: bool) -> Self {
        let field = (offset_units << 3) | u16::from(more);
        let mut body = vec![0u8; 6];
        body[0..2].copy_from_slice(&field.to_be_bytes());
        body[2..6].copy_from_slice(&0xabcd_0001u32.to_be_bytes());
        Self {
            kind: IPPROTO_FRAGMENT,
            body,
        }
    }

    fn wire_len(&self) -> usize {
        2 + self.body.len()
    }
}

/// IPv6 packet with the extension headers in order, then L4; L4 checksum filled.
pub fn ipv6(src: [u8; 16], dst: [u8; 16], exts: &[Ext], mut l4: L4) -> (Vec<u8>, usize) {
    let ext_len: usize = exts.iter().map(Ext::wire_len).sum();
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(l4.bytes.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, l4.proto]);
    fill_l4_checksum(&mut l4, &pseudo);

    let payload_len = ext_len + l4.bytes.len();
    let first_next = exts.first().map_or(l4.proto, |e| e.kind);
    let mut b = Vec::with_capacity(40 + payload_len);
    b.extend_from_slice(&[0x60, 0, 0, 0]);
    b.extend_from_slice(&(payload_len as u16).to_be_bytes());
    b.push(first_next);
    b.push(64);
    b.extend_from_slice(&src);
    b.extend_from_slice(&dst);
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(l4.proto, |e| e.kind);
        b.push(next);
        // Fragment headers have a reserved byte here; the others a length in 8-byte units.
        b.push(if ext.kind == IPPROTO_FRAGMENT {
            0
        } else {
            (ext.wire_len() / 8 - 1) as u8
        });
        b.extend_from_slice(&ext.body);
    }
    b.extend_from_slice(&l4.bytes);
    (b, 40 + ext_len)
}

/// Ethernet frame with VLAN tags (outermost first, each a TPID) around `l3`.
pub fn ethernet(vlan_tpids: &[u16], ether_type: u16, l3: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(14 + 4 * vlan_tpids.len() + l3.len());
    b.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst
    b.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src
    for (i, tpid) in vlan_tpids.iter().enumerate() {
        b.extend_from_slice(&tpid.to_be_bytes());
        b.extend_from_slice(&(100 + i as u16).to_be_bytes()); // TCI: VLAN id
    }
    b.extend_from_slice(&ether_type.to_be_bytes());
    b.extend_from_slice(l3);
    b
}

/// A whole frame: Ethernet (+VLANs) / IPv4 / L4, with its layout.
pub fn eth_ipv4(vlans: &[u16], ip: &Ipv4Opts, l4: L4) -> (Vec<u8>, Layout) {
    let l4_header = l4.header_len;
    let (packet, ip_header_len) = ipv4(ip, l4);
    let l3 = 14 + 4 * vlans.len();
    let layout = Layout {
        l3,
        l4: l3 + ip_header_len,
        payload: l3 + ip_header_len + l4_header,
    };
    (ethernet(vlans, ETH_P_IPV4, &packet), layout)
}

/// A whole frame: Ethernet (+VLANs) / IPv6 (+extension headers) / L4, with its layout.
pub fn eth_ipv6(
    vlans: &[u16],
    src: [u8; 16],
    dst: [u8; 16],
    exts: &[Ext],
    l4: L4,
) -> (Vec<u8>, Layout) {
    let l4_header = l4.header_len;
    let (packet, ip_header_len) = ipv6(src, dst, exts, l4);
    let l3 = 14 + 4 * vlans.len();
    let layout = Layout {
        l3,
        l4: l3 + ip_header_len,
        payload: l3 + ip_header_len + l4_header,
    };
    (ethernet(vlans, ETH_P_IPV6, &packet), layout)
}

pub const V4_CLIENT: [u8; 4] = [10, 0, 0, 1];
pub const V4_SERVER: [u8; 4] = [10, 0, 0, 2];
pub const V6_CLIENT: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const V6_SERVER: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies_to_zero() {
        let (frame, layout) = eth_ipv4(
            &[],
            &Ipv4Opts::new(V4_CLIENT, V4_SERVER),
            tcp(1, 2, TCP_SYN, &[], b""),
        );
        assert_eq!(checksum(&[&frame[layout.l3..layout.l4]]), 0);
    }

    #[test]
    fn udp_checksum_verifies_with_pseudo_header() {
        let (frame, layout) = eth_ipv4(
            &[],
            &Ipv4Opts::new(V4_CLIENT, V4_SERVER),
            udp(1, 2, b"hello"),
        );
        let seg = &frame[layout.l4..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&V4_CLIENT);
        pseudo.extend_from_slice(&V4_SERVER);
        pseudo.extend_from_slice(&[0, IPPROTO_UDP]);
        pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        assert_eq!(checksum(&[&pseudo, seg]), 0);
    }

    #[test]
    fn ipv6_extension_lengths_match_layout() {
        let exts = [Ext::opts(IPPROTO_HOPOPTS, 1), Ext::fragment(0, true)];
        let (frame, layout) = eth_ipv6(&[], V6_CLIENT, V6_SERVER, &exts, udp(1, 2, b"x"));
        assert_eq!(layout.l4, 14 + 40 + 16 + 8);
        assert_eq!(frame.len(), layout.payload + 1);
        assert_eq!(frame[14 + 6], IPPROTO_HOPOPTS);
        assert_eq!(frame[14 + 40], IPPROTO_FRAGMENT);
        assert_eq!(frame[14 + 40 + 16], IPPROTO_UDP);
    }
}
