//! Request and response header rules of the proxy.
use std::net::IpAddr;

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

/// X-Forwarded-For gets the client appended; X-Real-IP, X-Forwarded-Proto and
/// X-Forwarded-Host are set; X-Request-Id is kept or generated. Returns the request id.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<&str>,
    new_request_id: impl FnOnce() -> String,
) -> String {
    let client_text = client.to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {client_text}"),
        _ => client_text.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    if let Ok(v) = HeaderValue::from_str(&client_text) {
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
            "http",
            None,
            || "other".into(),
        );
        assert_eq!(id, "gen", "an incoming request id is passed on");
    }
}
