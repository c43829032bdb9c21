//! The SSRF guard: which destination addresses are not publicly routable (Smokescreen's
//! `classifyAddr`, with IPv4 embedded in IPv6 checked as IPv4). A forward proxy refuses these
//! unless an allow rule names a CIDR that contains the address (`policy.rs`).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What kind of non-public address this is; None: public (globally routable unicast).
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        // 169.254.0.0/16, with the cloud metadata address 169.254.169.254.
        Some("link_local")
    } else if a == 100 && (64..128).contains(&b) {
        Some("cgnat")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if a >= 240
        // IETF protocol assignments, benchmarking.
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
    {
        Some("reserved")
    } else if ip.is_documentation() {
        Some("documentation")
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = embedded_v4(ip) {
        // An embedding of an IPv4 address is as public as that address.
        return classify_v4(v4);
    }
    // Teredo (2001::/32): server address in bits 32..64, client address (inverted) in the
    // last 32; both must be public.
    if s[0] == 0x2001 && s[1] == 0 {
        let server = Ipv4Addr::from((u32::from(s[2]) << 16) | u32::from(s[3]));
        let client = Ipv4Addr::from(!((u32::from(s[6]) << 16) | u32::from(s[7])));
        return classify_v4(server).or(classify_v4(client));
    }
    match s[0] {
        x if x & 0xfe00 == 0xfc00 => Some("unique_local"),
        x if x & 0xffc0 == 0xfe80 => Some("link_local"),
        // Deprecated site-local.
        x if x & 0xffc0 == 0xfec0 => Some("private"),
        x if x & 0xff00 == 0xff00 => Some("multicast"),
        0x2001 if s[1] == 0x0db8 => Some("documentation"),
        // Discard-only 100::/64; NAT64 local-use 64:ff9b:1::/48 (translates to anything).
        0x0100 if s[1] == 0 && s[2] == 0 && s[3] == 0 => Some("reserved"),
        0x0064 if s[1] == 0xff9b && s[2] == 1 => Some("reserved"),
        // Outside 2000::/3 (global unicast), nothing is routable on the internet.
        x if x & 0xe000 != 0x2000 => Some("reserved"),
        _ => None,
    }
}

/// The IPv4 address an IPv6 address carries: IPv4-mapped ::ffff:0:0/96, IPv4-compatible
/// ::/96 (deprecated), NAT64 64:ff9b::/96, 6to4 2002::/16.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> Option<&'static str> {
        classify(text.parse().expect("address literal"))
    }

    #[test]
    fn ipv4_boundaries() {
        let cases = [
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("100.63.255.254", None),
            ("100.64.0.1", Some("cgnat")),
            ("100.127.255.255", Some("cgnat")),
            ("100.128.0.0", None),
            ("127.0.0.1", Some("loopback")),
            ("127.255.255.254", Some("loopback")),
            ("10.0.0.1", Some("private")),
            ("9.255.255.255", None),
            ("11.0.0.0", None),
            ("172.15.255.255", None),
            ("172.16.0.0", Some("private")),
            ("172.31.255.255", Some("private")),
            ("172.32.0.0", None),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link_local")),
            ("169.253.255.255", None),
            ("0.0.0.0", Some("unspecified")),
            ("0.1.2.3", Some("unspecified")),
            ("255.255.255.255", Some("broadcast")),
            ("224.0.0.1", Some("multicast")),
            ("239.255.255.255", Some("multicast")),
            ("240.0.0.1", Some("reserved")),
            ("198.18.0.1", Some("reserved")),
            ("198.20.0.1", None),
            ("192.0.0.8", Some("reserved")),
            ("192.0.2.1", Some("documentation")),
            ("203.0.113.9", Some("documentation")),
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn ipv6_and_embedded_ipv4() {
        let cases = [
            ("2606:4700:4700::1111", None),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("fe80::1", Some("link_local")),
            ("febf::1", Some("link_local")),
            ("fc00::1", Some("unique_local")),
            ("fdff:ffff::1", Some("unique_local")),
            ("fec0::1", Some("private")),
            ("ff02::1", Some("multicast")),
            ("2001:db8::1", Some("documentation")),
            ("100::1", Some("reserved")),
            ("4000::1", Some("reserved")),
            // IPv4-mapped and -compatible.
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:10.1.2.3", Some("private")),
            ("::ffff:169.254.169.254", Some("link_local")),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some("loopback")),
            // NAT64.
            ("64:ff9b::808:808", None),
            ("64:ff9b::a00:1", Some("private")),
            ("64:ff9b::7f00:1", Some("loopback")),
            ("64:ff9b::6440:1", Some("cgnat")),
            ("64:ff9b:1::1", Some("reserved")),
            // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
            ("2002:808:808::1", None),
            ("2002:7f00:1::1", Some("loopback")),
            ("2002:c0a8:101::1", Some("private")),
            // Teredo: server 65.54.227.120, client inverted in the last 32 bits (8.8.8.8;
            // RFC 4380's own example client is 192.0.2.45, documentation).
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", None),
            (
                "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                Some("documentation"),
            ),
            // client !(0xf5ff_fffe) = 10.0.0.1
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", Some("private")),
            // server 127.0.0.1
            ("2001:0:7f00:1:8000:63bf:f7f7:f7f7", Some("loopback")),
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), want, "{ip}");
        }
    }
}
