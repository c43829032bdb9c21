//! Request and response header rules of the proxy, and who the client is when trusted
//! proxies stand in front (X-Forwarded-For walked as NGINX's realip module does).
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use hyper::{
    HeaderMap,
    header::{self, HeaderName, HeaderValue},
};

// Names built once (standard names are enum values; these custom ones are static bytes), so
// no request parses a header name.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The fixed hop-by-hop headers (RFC 9110 7.6.1, plus the de facto Keep-Alive and
/// Proxy-Connection).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers that describe one hop's connection and never go further (RFC 9110 7.6.1), plus any
/// the `Connection` header names.
///
/// Cheap in the common case: Connection is looked at first (one lookup), then one pass over
/// the names present decides whether any fixed hop-by-hop header is there at all; the names
/// Connection lists are removed by `&str` lookup (no header name is built).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    match headers.get_all(header::CONNECTION).iter().count() {
        0 => {}
        1 => {
            if let Some(connection) = headers.remove(header::CONNECTION) {
                remove_named(headers, &connection);
            }
        }
        _ => {
            let lines: Vec<HeaderValue> = headers
                .get_all(header::CONNECTION)
                .iter()
                .cloned()
                .collect();
            headers.remove(header::CONNECTION);
            for line in &lines {
                remove_named(headers, line);
            }
        }
    }
    if headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
    }
}

/// Removes the headers a Connection line names (invalid names name nothing).
fn remove_named(headers: &mut HeaderMap, connection: &HeaderValue) {
    let Ok(line) = connection.to_str() else {
        return;
    };
    for name in line.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        headers.remove(name);
    }
}

/// Adds `names` to Vary, each once, merged into the existing values (one line); `Vary: *`
/// is left alone.
pub fn add_vary(headers: &mut HeaderMap, names: &[&str]) {
    let mut tokens: Vec<&str> = Vec::new();
    let mut opaque = false;
    for value in headers.get_all(header::VARY) {
        match value.to_str() {
            Ok(v) => tokens.extend(v.split(',').map(str::trim).filter(|t| !t.is_empty())),
            Err(_) => opaque = true,
        }
    }
    if tokens.contains(&"*") {
        return;
    }
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !tokens.iter().any(|t| t.eq_ignore_ascii_case(n)))
        .collect();
    if missing.is_empty() {
        return;
    }
    if opaque {
        if let Ok(v) = HeaderValue::from_str(&missing.join(", ")) {
            headers.append(header::VARY, v);
        }
        return;
    }
    let merged = tokens
        .iter()
        .chain(missing.iter())
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(v) = HeaderValue::from_str(&merged) {
        headers.insert(header::VARY, v);
    }
}

/// The client's address. A `peer` (the socket peer, or the client a PROXY header named) that
/// is not in `trusted` is the client, whatever its X-Forwarded-For says. A trusted peer's
/// X-Forwarded-For is walked right to left (the hop nearest to us first), skipping trusted
/// addresses: the first untrusted one is the client; if all are trusted, the leftmost. A
/// malformed entry stops the walk at the last good hop (an attacker can write anything to the
/// left of what our trusted proxies appended, so nothing beyond it is believed).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() {
        return peer;
    }
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

/// An X-Forwarded-For entry: an address, or address:port as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// An address and its text as a header value, made once per downstream connection.
#[derive(Clone, Debug)]
pub struct AddrText {
    pub ip: IpAddr,
    pub text: HeaderValue,
}

impl AddrText {
    pub fn new(ip: IpAddr) -> Self {
        Self {
            ip,
            text: ip_value(ip),
        }
    }
}

/// An IP address as a header value (an address's text is always a valid value).
fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(ip.to_string()))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// X-Forwarded-For gets `peer` (the address that connected to us, or the client its PROXY
/// header named) appended; X-Real-IP gets `client` (see `client_ip`); X-Forwarded-Proto and
/// X-Forwarded-Host (`host`, when known) are set; X-Request-Id is kept or generated. Returns
/// the request id.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &AddrText,
    client: IpAddr,
    proto: &'static str,
    host: Option<HeaderValue>,
    new_request_id: impl FnOnce() -> HeaderValue,
) -> HeaderValue {
    if headers.contains_key(X_FORWARDED_FOR) {
        append_forwarded_for(headers, peer);
    } else {
        headers.insert(X_FORWARDED_FOR, peer.text.clone());
    }
    let real_ip = if client == peer.ip {
        peer.text.clone()
    } else {
        ip_value(client)
    };
    headers.insert(X_REAL_IP, real_ip);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
    match headers.get(X_REQUEST_ID) {
        Some(id) if id.to_str().is_ok() => id.clone(),
        _ => {
            let id = new_request_id();
            headers.insert(X_REQUEST_ID, id.clone());
            id
        }
    }
}

/// X-Forwarded-For lines already there: joined into one line, `peer` appended.
fn append_forwarded_for(headers: &mut HeaderMap, peer: &AddrText) {
    let previous: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let xff = if previous.is_empty() {
        peer.text.clone()
    } else {
        let peer_text = peer.text.to_str().unwrap_or_default();
        match HeaderValue::from_str(&format!("{}, {peer_text}", previous.join(", "))) {
            Ok(v) => v,
            Err(_) => return,
        }
    };
    headers.insert(X_FORWARDED_FOR, xff);
}

/// A request id: 16 hex digits of a per-process prefix, 8 of a counter (24 characters).
pub fn request_id(prefix: u64, counter: u64) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 24];
    for (i, slot) in text[..16].iter_mut().enumerate() {
        *slot = HEX[((prefix >> (60 - 4 * i)) & 0xf) as usize];
    }
    // Always 24 characters: the counter's low 32 bits (it takes 2^32 requests to wrap).
    for (i, slot) in text[16..].iter_mut().enumerate() {
        *slot = HEX[((counter >> (28 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("0"))
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

    fn addr(text: &str) -> AddrText {
        AddrText::new(text.parse().expect("ip"))
    }

    #[test]
    fn forwarded_headers_append_and_keep_request_ids() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        let peer = addr("10.0.0.9");
        let id = set_forwarded(
            &mut h,
            &peer,
            peer.ip,
            "http",
            Some(HeaderValue::from_static("a.example")),
            || HeaderValue::from_static("gen"),
        );
        assert_eq!(id, "gen");
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 10.0.0.9");
        assert_eq!(h["x-real-ip"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
        assert_eq!(h["x-request-id"], "gen");
        let id = set_forwarded(&mut h, &peer, peer.ip, "http", None, || {
            HeaderValue::from_static("other")
        });
        assert_eq!(id, "gen", "an incoming request id is passed on");
        // Without an incoming X-Forwarded-For the peer is the whole list.
        let mut h = HeaderMap::new();
        h.insert(
            "x-request-id",
            HeaderValue::from_bytes(b"\xff").expect("value"),
        );
        let id = set_forwarded(&mut h, &peer, peer.ip, "https", None, || {
            HeaderValue::from_static("fresh")
        });
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(!h.contains_key("x-forwarded-host"));
        assert_eq!(id, "fresh", "an id that is not text is replaced");
        assert_eq!(h["x-request-id"], "fresh");
    }

    #[test]
    fn request_ids_are_24_hex_digits() {
        let id = request_id(0x0123_4567_89ab_cdef, 0x2a);
        assert_eq!(id, "0123456789abcdef0000002a");
        assert_eq!(
            format!("{:016x}{:08x}", 7u64, 0xffff_fffeu64),
            request_id(7, 0xffff_fffe)
        );
        assert_eq!(
            request_id(0, 1 << 32).len(),
            24,
            "the counter wraps, the length stays"
        );
    }

    #[test]
    fn several_connection_lines_and_odd_tokens() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.append(header::CONNECTION, HeaderValue::from_static(" X-A ,, x-b"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-c\xff").expect("value"),
        );
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("2"));
        h.insert("x-c", HeaderValue::from_static("3"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::HOST, HeaderValue::from_static("h"));
        remove_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        // x-c stays: a Connection line that is not text names nothing.
        assert_eq!(left, ["host", "x-c"]);
        // Nothing hop-by-hop: nothing changes.
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("h"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
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
            &addr("10.0.0.1"),
            ip("203.0.113.1"),
            "http",
            None,
            || HeaderValue::from_static("id"),
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 10.2.2.2, 10.0.0.1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-real-ip"], "203.0.113.1");
    }
}
