//! PROXY protocol (v1 and v2) on the way in: a listener that expects it reads one header from
//! each connection whose source is a trusted proxy, within a deadline, and then uses the
//! client address it names. A trusted source that sends no valid header in time has its
//! connection closed (and counted); untrusted sources are served as they are.
use std::{
    net::{SocketAddr, SocketAddrV4, SocketAddrV6},
    time::Duration,
};

use proxy_protocol::{ProxyHeader, version1, version2};
use tokio::{io::AsyncReadExt, net::TcpStream};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header (spec: 107 bytes); v2 headers we accept are at most this long too
/// (addresses and a few TLVs).
const MAX_HEADER: usize = 536;

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
fn header_len(buf: &[u8]) -> Result<Option<usize>, ProxyHeaderError> {
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
        let parsed =
            proxy_protocol::parse(&mut header.as_slice()).map_err(|_| ProxyHeaderError::Invalid)?;
        Ok(match parsed {
            ProxyHeader::Version1 {
                addresses: version1::ProxyAddresses::Ipv4 { source, .. },
            }
            | ProxyHeader::Version2 {
                addresses: version2::ProxyAddresses::Ipv4 { source, .. },
                ..
            } => Some(SocketAddr::V4(SocketAddrV4::new(
                *source.ip(),
                source.port(),
            ))),
            ProxyHeader::Version1 {
                addresses: version1::ProxyAddresses::Ipv6 { source, .. },
            }
            | ProxyHeader::Version2 {
                addresses: version2::ProxyAddresses::Ipv6 { source, .. },
                ..
            } => Some(SocketAddr::V6(SocketAddrV6::new(
                *source.ip(),
                source.port(),
                0,
                0,
            ))),
            _ => None,
        })
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
}
