//! PROXY protocol (v1 and v2) both ways.
//!
//! In: a listener that expects it reads one header from each connection whose source is a
//! trusted proxy, within a deadline, and then uses the client address it names. A trusted
//! source that sends no valid header in time has its connection closed (and counted);
//! untrusted sources are served as they are.
//!
//! Out: `encode` builds the header a pool sends first on each new upstream connection, naming
//! the true client and the address it connected to; v2 can carry the L4 flow id (from the XDP
//! flow tag) as a PP2_TYPE_UNIQUE_ID TLV. The proxy-protocol crate has no TLV support, so the
//! TLV is appended to its encoding and the v2 length field raised to match.
use std::{
    net::{SocketAddr, SocketAddrV6},
    time::Duration,
};

use proxy_protocol::{ProxyHeader, version1, version2};
use tokio::{io::AsyncReadExt, net::TcpStream};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header (spec: 107 bytes); v2 headers we accept are at most this long too
/// (addresses and a few TLVs).
const MAX_HEADER: usize = 536;

/// PP2_TYPE_UNIQUE_ID (PROXY protocol spec 2.2.5): an opaque id of up to 128 bytes.
pub const PP2_TYPE_UNIQUE_ID: u8 = 0x05;

/// Which PROXY protocol version a pool sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub enum ProxyVersion {
    #[serde(rename = "v1")]
    V1,
    #[serde(rename = "v2")]
    V2,
}

/// The PROXY header naming `client` -> `destination` for a stream connection; v2 adds the
/// flow id as a UNIQUE_ID TLV (8 bytes, big endian) when there is one. Mixed families (an
/// IPv4 client reaching an IPv6 address) are sent as IPv6 with the IPv4 address mapped.
pub fn encode(
    version: ProxyVersion,
    client: SocketAddr,
    destination: SocketAddr,
    flow_id: Option<u64>,
) -> Vec<u8> {
    let (client, destination) = match (client, destination) {
        (SocketAddr::V4(c), SocketAddr::V4(d)) => (SocketAddr::V4(c), SocketAddr::V4(d)),
        (c, d) => (SocketAddr::V6(v6(c)), SocketAddr::V6(v6(d))),
    };
    let header = match (version, client, destination) {
        (ProxyVersion::V1, SocketAddr::V4(source), SocketAddr::V4(destination)) => {
            ProxyHeader::Version1 {
                addresses: version1::ProxyAddresses::Ipv4 {
                    source,
                    destination,
                },
            }
        }
        (ProxyVersion::V1, SocketAddr::V6(source), SocketAddr::V6(destination)) => {
            ProxyHeader::Version1 {
                addresses: version1::ProxyAddresses::Ipv6 {
                    source,
                    destination,
                },
            }
        }
        (ProxyVersion::V2, SocketAddr::V4(source), SocketAddr::V4(destination)) => {
            ProxyHeader::Version2 {
                command: version2::ProxyCommand::Proxy,
                transport_protocol: version2::ProxyTransportProtocol::Stream,
                addresses: version2::ProxyAddresses::Ipv4 {
                    source,
                    destination,
                },
            }
        }
        (ProxyVersion::V2, SocketAddr::V6(source), SocketAddr::V6(destination)) => {
            ProxyHeader::Version2 {
                command: version2::ProxyCommand::Proxy,
                transport_protocol: version2::ProxyTransportProtocol::Stream,
                addresses: version2::ProxyAddresses::Ipv6 {
                    source,
                    destination,
                },
            }
        }
        // Both sides were made the same family above.
        _ => unreachable!("mixed address families"),
    };
    // Encoding only fails for address kinds built above never (unix sockets in v1).
    let mut out = proxy_protocol::encode(header)
        .map(|b| b.to_vec())
        .unwrap_or_default();
    if let (ProxyVersion::V2, Some(id), true) = (version, flow_id, out.len() >= 16) {
        out.push(PP2_TYPE_UNIQUE_ID);
        out.extend_from_slice(&8u16.to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
        let len = u16::from_be_bytes([out[14], out[15]]) + 11;
        out[14..16].copy_from_slice(&len.to_be_bytes());
    }
    out
}

fn v6(addr: SocketAddr) -> SocketAddrV6 {
    match addr {
        SocketAddr::V6(a) => a,
        SocketAddr::V4(a) => SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0),
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY header before the deadline")]
    Timeout,
    #[error("connection closed before a complete PROXY header")]
    Closed,
    #[error("not a valid PROXY header")]
    Invalid,
}

/// How many bytes the header at the start of `buf` takes, once enough has arrived; `Ok(None)`
/// means "need more".
pub fn header_len(buf: &[u8]) -> Result<Option<usize>, ProxyHeaderError> {
    if buf.len() >= 12 && buf[..12] == V2_SIGNATURE[..] {
        if buf.len() < 16 {
            return Ok(None);
        }
        let total = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if total > MAX_HEADER {
            return Err(ProxyHeaderError::Invalid);
        }
        return Ok((buf.len() >= total).then_some(total));
    }
    let prefix = &b"PROXY "[..buf.len().min(6)];
    if buf.len() < 12 && V2_SIGNATURE.starts_with(buf) {
        return Ok(None);
    }
    if buf[..prefix.len()] != *prefix {
        return Err(ProxyHeaderError::Invalid);
    }
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end + 2 <= 107 => Ok(Some(end + 2)),
        Some(_) => Err(ProxyHeaderError::Invalid),
        None if buf.len() >= 107 => Err(ProxyHeaderError::Invalid),
        None => Ok(None),
    }
}

/// The addresses a PROXY header names: the true client and the address it connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxiedAddresses {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// Parses one whole header (`header_len` bytes); `None` for a v2 LOCAL, v1 UNKNOWN or unix
/// socket header (no IP addresses to use).
pub fn parse(header: &[u8]) -> Result<Option<ProxiedAddresses>, ProxyHeaderError> {
    let mut rest = header;
    let parsed = proxy_protocol::parse(&mut rest).map_err(|_| ProxyHeaderError::Invalid)?;
    // Only the address and port travel in a header.
    let ipv6 = |a: SocketAddrV6| SocketAddr::V6(SocketAddrV6::new(*a.ip(), a.port(), 0, 0));
    Ok(match parsed {
        ProxyHeader::Version1 {
            addresses:
                version1::ProxyAddresses::Ipv4 {
                    source,
                    destination,
                },
        }
        | ProxyHeader::Version2 {
            addresses:
                version2::ProxyAddresses::Ipv4 {
                    source,
                    destination,
                },
            ..
        } => Some(ProxiedAddresses {
            source: SocketAddr::V4(source),
            destination: SocketAddr::V4(destination),
        }),
        ProxyHeader::Version1 {
            addresses:
                version1::ProxyAddresses::Ipv6 {
                    source,
                    destination,
                },
        }
        | ProxyHeader::Version2 {
            addresses:
                version2::ProxyAddresses::Ipv6 {
                    source,
                    destination,
                },
            ..
        } => Some(ProxiedAddresses {
            source: ipv6(source),
            destination: ipv6(destination),
        }),
        _ => None,
    })
}

/// Reads exactly one PROXY header from `tcp`; returns the client address it carries (`None`
/// for a v2 LOCAL or v1 UNKNOWN header: use the connection's own address).
pub async fn read(
    tcp: &mut TcpStream,
    deadline: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let read = async {
        let mut buf = [0u8; MAX_HEADER];
        let total = loop {
            let n = tcp
                .peek(&mut buf)
                .await
                .map_err(|_| ProxyHeaderError::Closed)?;
            if n == 0 {
                return Err(ProxyHeaderError::Closed);
            }
            if let Some(total) = header_len(&buf[..n])? {
                break total;
            }
            // More bytes are on their way; peek would return the same ones at once.
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let mut header = vec![0u8; total];
        tcp.read_exact(&mut header)
            .await
            .map_err(|_| ProxyHeaderError::Closed)?;
        Ok(parse(&header)?.map(|addresses| addresses.source))
    };
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| ProxyHeaderError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths() {
        assert_eq!(
            header_len(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET"),
            Ok(Some(32))
        );
        assert_eq!(header_len(b"PROXY TCP4 1.2.3.4"), Ok(None));
        assert_eq!(header_len(b"PRO"), Ok(None));
        assert_eq!(
            header_len(b"GET / HTTP/1.1\r\n"),
            Err(ProxyHeaderError::Invalid)
        );
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12]);
        assert_eq!(header_len(&v2), Ok(None));
        v2.extend_from_slice(&[0; 12]);
        assert_eq!(header_len(&v2), Ok(Some(28)));
        assert_eq!(header_len(&V2_SIGNATURE[..5]), Ok(None));
        assert_eq!(header_len(&[b'P'; 120]), Err(ProxyHeaderError::Invalid));
    }

    #[test]
    fn parse_names_both_addresses_or_none() {
        let parsed = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 443\r\n").expect("valid");
        assert_eq!(
            parsed,
            Some(ProxiedAddresses {
                source: "[2001:db8::1]:40000".parse().expect("addr"),
                destination: "[2001:db8::2]:443".parse().expect("addr"),
            })
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(None));
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local), Ok(None));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4\r\n"),
            Err(ProxyHeaderError::Invalid)
        );
    }

    #[test]
    fn encoded_headers_parse_back_with_the_flow_id_tlv() {
        let client: SocketAddr = "203.0.113.9:40000".parse().expect("addr");
        let dest: SocketAddr = "10.0.0.1:443".parse().expect("addr");
        let v1 = encode(ProxyVersion::V1, client, dest, Some(7));
        assert_eq!(v1, b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 443\r\n");
        let v2 = encode(ProxyVersion::V2, client, dest, Some(0x0102_0304_0506_0708));
        assert_eq!(header_len(&v2), Ok(Some(16 + 12 + 11)));
        assert_eq!(
            &v2[28..],
            &[PP2_TYPE_UNIQUE_ID, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        let parsed = proxy_protocol::parse(&mut v2.as_slice()).expect("parses");
        assert!(matches!(
            parsed,
            ProxyHeader::Version2 { addresses: version2::ProxyAddresses::Ipv4 { source, .. }, .. }
                if SocketAddr::V4(source) == client
        ));
        let mixed = encode(
            ProxyVersion::V1,
            client,
            "[2001:db8::1]:80".parse().expect("addr"),
            None,
        );
        assert_eq!(
            mixed,
            b"PROXY TCP6 ::ffff:203.0.113.9 2001:db8::1 40000 80\r\n"
        );
    }
}
