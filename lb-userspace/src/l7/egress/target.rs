//! Request targets of a forward proxy, parsed strictly (as NGINX's tunnel module): CONNECT
//! takes `host:port` only (no scheme, userinfo, path, query or fragment; a port in 1..=65535);
//! other methods take the absolute form `http://host[:port]/path`.
use std::net::{IpAddr, Ipv6Addr};

use hyper::{Method, Uri, Version};

/// Where a request wants to go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Lowercased name, or an IP address without brackets.
    pub host: String,
    pub port: u16,
    /// The host is a literal address.
    pub ip: Option<IpAddr>,
}

impl Target {
    /// `host:port`, IPv6 addresses in brackets.
    pub fn authority(&self) -> String {
        match self.ip {
            Some(IpAddr::V6(v6)) => format!("[{v6}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// Why a target was refused: the status (400, 405) and a reason for the log and body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct BadTarget {
    pub status: u16,
    pub reason: &'static str,
}

fn bad(reason: &'static str) -> BadTarget {
    BadTarget {
        status: 400,
        reason,
    }
}

/// A CONNECT request's target; over HTTP/1.0 only when `http10` allows it.
pub fn connect(version: Version, uri: &Uri, http10: bool) -> Result<Target, BadTarget> {
    if version != Version::HTTP_11 && !(http10 && version == Version::HTTP_10) {
        return Err(BadTarget {
            status: 405,
            reason: "CONNECT needs HTTP/1.1",
        });
    }
    if uri.scheme().is_some() || uri.path_and_query().is_some_and(|p| !p.as_str().is_empty()) {
        return Err(bad("CONNECT target must be host:port"));
    }
    let authority = uri
        .authority()
        .ok_or(bad("CONNECT target must be host:port"))?;
    let (host, port) = authority_parts(authority.as_str())?;
    let port = port.ok_or(bad("CONNECT target has no port"))?;
    target(host, port)
}

/// An absolute-form request's target and the origin-form path (with query) to send on.
pub fn absolute(method: &Method, uri: &Uri) -> Result<(Target, String), BadTarget> {
    if *method == Method::CONNECT {
        return Err(bad("CONNECT is not absolute-form"));
    }
    let Some(scheme) = uri.scheme_str() else {
        return Err(bad(
            "a proxy request needs an absolute URI (http://host/path)",
        ));
    };
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(bad("only http:// URIs are proxied (use CONNECT for https)"));
    }
    let authority = uri.authority().ok_or(bad("the URI has no host"))?;
    let (host, port) = authority_parts(authority.as_str())?;
    let target = target(host, port.unwrap_or("80"))?;
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    Ok((target, path))
}

/// Host and port text of an authority; userinfo refused.
fn authority_parts(authority: &str) -> Result<(&str, Option<&str>), BadTarget> {
    if authority.contains('@') {
        return Err(bad("userinfo in the target"));
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(bad("unclosed IPv6 address"))?;
        // An IP-literal (RFC 3986 3.2.2): `[example.com]` is not a way to write a name.
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(bad("no IPv6 address in the brackets"));
        }
        return match after {
            "" => Ok((host, None)),
            _ => after
                .strip_prefix(':')
                .map(|port| (host, Some(port)))
                .ok_or(bad("bad text after the IPv6 address")),
        };
    }
    Ok(match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

fn target(host: &str, port: &str) -> Result<Target, BadTarget> {
    if host.is_empty() {
        return Err(bad("the target has no host"));
    }
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the target port is not a number"));
    }
    let port = match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(bad("the target port is not in 1..=65535")),
        Ok(p) => p,
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Target {
            host: ip.to_string(),
            port,
            ip: Some(ip),
        });
    }
    let valid = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(bad("the target host is not a valid name"));
    }
    Ok(Target {
        host: host.to_ascii_lowercase(),
        port,
        ip: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_text(text: &str) -> Result<Target, u16> {
        let uri: Uri = text.parse().map_err(|_| 400u16)?;
        connect(Version::HTTP_11, &uri, false).map_err(|e| e.status)
    }

    #[test]
    fn connect_targets_as_nginx_tunnel_tests() {
        let ok = connect_text("Example.com:443").expect("valid");
        assert_eq!(
            (ok.host.as_str(), ok.port, ok.ip),
            ("example.com", 443, None)
        );
        let v6 = connect_text("[::1]:8443").expect("valid");
        assert_eq!(v6.authority(), "[::1]:8443");
        assert!(v6.ip.is_some());
        for bad in [
            "example.com:443/",
            "example.com:443?",
            "example.com:443#",
            "user@example.com:443",
            "http://example.com:443",
            "example.com",
            ":443",
            "example.com:65536",
            "example.com:0",
            "example.com:abc",
            "example.com:",
            "exa mple.com:443",
            "[::1:443",
            // Found by the forward_target fuzz target: names and IPv4 in brackets.
            "[mm]:21",
            "[1.2.3.4]:443",
        ] {
            assert_eq!(connect_text(bad), Err(400), "{bad}");
        }
        let uri: Uri = "example.com:443".parse().expect("uri");
        assert_eq!(
            connect(Version::HTTP_10, &uri, false).map_err(|e| e.status),
            Err(405)
        );
        assert!(
            connect(Version::HTTP_10, &uri, true).is_ok(),
            "connect_http10"
        );
    }

    #[test]
    fn absolute_form() {
        let uri: Uri = "http://Example.com:8080/a?b=1".parse().expect("uri");
        let (t, path) = absolute(&Method::GET, &uri).expect("valid");
        assert_eq!(
            (t.host.as_str(), t.port, path.as_str()),
            ("example.com", 8080, "/a?b=1")
        );
        let uri: Uri = "http://example.com".parse().expect("uri");
        let (t, path) = absolute(&Method::GET, &uri).expect("valid");
        assert_eq!((t.port, path.as_str()), (80, "/"));
        for bad in [
            "/path",
            "https://example.com/",
            "http://u@example.com/",
            "http://[example.com]/",
        ] {
            let uri: Uri = bad.parse().expect("uri");
            assert!(absolute(&Method::GET, &uri).is_err(), "{bad}");
        }
    }
}
