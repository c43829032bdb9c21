//! Request and response header rules of the proxy, and who the client is when trusted
//! proxies stand in front (X-Forwarded-For walked as NGINX's realip module does).
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use hyper::{
    HeaderMap,
    header::{self, HeaderName, HeaderValue},
};

/// Headers that describe one hop's connection and never go further (RFC 9110 7.6.1), plus any
/// the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// The client's address. A `peer` (the socket peer, or the client a PROXY header named) that
/// is not in `trusted` is the client, whatever its X-Forwarded-For says. A trusted peer's
/// X-Forwarded-For is walked right to left (the hop nearest to us first), skipping trusted
/// addresses: the first untrusted one is the client; if all are trusted, the leftmost. A
/// malformed entry stops the walk at the last good hop (an attacker can write anything to the
/// left of what our trusted proxies appended, so nothing beyond it is believed).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    // IPv4 clients of a dual-stack socket appear as ::ffff:a.b.c.d.
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(&ip.to_canonical()));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    // Several X-Forwarded-For lines are one list, in order.
    for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(line) = line.to_str() else {
            return client;
        };
        for hop in line.rsplit(',') {
            let Some(ip) = parse_hop(hop.trim()) else {
                return client;
            };
            client = ip;
            if !is_trusted(ip) {
                return ip;
            }
        }
    }
    client
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// An X-Forwarded-For entry: an address, or address:port as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// X-Forwarded-For gets `peer` (the address that connected to us, or the client its PROXY
/// header named) appended; X-Real-IP gets `client` (see `client_ip`); X-Forwarded-Proto and
/// X-Forwarded-Host are set; X-Request-Id is kept or generated. Returns the request id.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    client: IpAddr,
    proto: &'static str,
    host: Option<&str>,
    new_request_id: impl FnOnce() -> String,
) -> String {
    let peer_text = peer.to_string();
    // Several incoming lines are joined into one.
    let previous: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let xff = if previous.is_empty() {
        peer_text
    } else {
        format!("{}, {peer_text}", previous.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
        headers.insert("x-real-ip", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    if let Some(v) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert("x-forwarded-host", v);
    }
    match headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    {
        Some(id) => id,
        None => {
            let id = new_request_id();
            if let Ok(v) = HeaderValue::from_str(&id) {
                headers.insert("x-request-id", v);
            }
            id
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_headers_append_and_keep_request_ids() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        let id = set_forwarded(
            &mut h,
            "10.0.0.9".parse().expect("ip"),
            "10.0.0.9".parse().expect("ip"),
            "http",
            Some("a.example"),
            || "gen".into(),
        );
        assert_eq!(id, "gen");
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 10.0.0.9");
        assert_eq!(h["x-real-ip"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
        let id = set_forwarded(
            &mut h,
            "10.0.0.9".parse().expect("ip"),
            "10.0.0.9".parse().expect("ip"),
            "http",
            None,
            || "other".into(),
        );
        assert_eq!(id, "gen", "an incoming request id is passed on");
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("net")).collect()
    }

    fn xff(lines: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append(X_FORWARDED_FOR, HeaderValue::from_static(line));
        }
        h
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_claim() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = xff(&["1.2.3.4"]);
        assert_eq!(client_ip(ip("192.0.2.1"), &h, &trusted), ip("192.0.2.1"));
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &[]), ip("10.0.0.1"));
    }

    #[test]
    fn trusted_peers_walk_right_to_left_skipping_trusted_hops() {
        let trusted = nets(&["10.0.0.0/8", "192.168.0.0/16"]);
        let peer = ip("10.0.0.1");
        // The spoofed leftmost entry is never reached: 198.51.100.2 is the first untrusted.
        let h = xff(&["6.6.6.6, 198.51.100.2, 192.168.1.1, 10.1.1.1"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("198.51.100.2"));
        // Lines are one list: the last line is nearest.
        let h = xff(&["203.0.113.1", "10.2.2.2"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("203.0.113.1"));
        // All trusted: the leftmost.
        let h = xff(&["10.9.9.9, 192.168.5.5"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("10.9.9.9"));
        // No header: the peer.
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
        // Ports and IPv6 forms.
        let h = xff(&["[2001:db8::7]:443, 203.0.113.9:1234"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("203.0.113.9"));
        let h = xff(&["2001:db8::7"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("2001:db8::7"));
        // An IPv4 peer on a dual-stack socket is still recognised as trusted.
        let h = xff(&["203.0.113.4"]);
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &h, &trusted),
            ip("203.0.113.4")
        );
    }

    #[test]
    fn malformed_entries_stop_the_walk_at_the_last_good_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        let h = xff(&["203.0.113.1, garbage, 10.3.3.3"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("10.3.3.3"));
        let h = xff(&["203.0.113.1, unknown"]);
        assert_eq!(client_ip(peer, &h, &trusted), peer);
        let h = xff(&["203.0.113.1,"]);
        assert_eq!(client_ip(peer, &h, &trusted), peer, "empty entry");
    }

    #[test]
    fn xff_gets_the_peer_real_ip_gets_the_client() {
        let mut h = xff(&["203.0.113.1", "10.2.2.2"]);
        set_forwarded(
            &mut h,
            ip("10.0.0.1"),
            ip("203.0.113.1"),
            "http",
            None,
            || "id".into(),
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 10.2.2.2, 10.0.0.1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-real-ip"], "203.0.113.1");
    }
}
