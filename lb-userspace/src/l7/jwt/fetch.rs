//! Key-set fetches: one HTTP/1.1 GET over TCP or TLS, body bounded, `Cache-Control: max-age`
//! read; OIDC discovery is two of them.
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::net::TcpStream;

/// Larger key-set or discovery documents are refused.
const MAX_BODY: usize = 1 << 20;

/// A fetched document and how long its server says it may be cached.
pub struct Fetched {
    pub body: Bytes,
    pub max_age: Option<Duration>,
}

/// GETs `url` within `timeout`; anything but a 200 is an error.
pub async fn get(
    url: &str,
    tls: Option<&Arc<ClientConfig>>,
    timeout: Duration,
) -> Result<Fetched, String> {
    tokio::time::timeout(timeout, get_inner(url, tls))
        .await
        .map_err(|_| format!("GET {url}: no answer within {timeout:?}"))?
}

async fn get_inner(url: &str, tls: Option<&Arc<ClientConfig>>) -> Result<Fetched, String> {
    let uri: Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url:?} is not an http(s) URL")),
    };
    let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare_host, port))
        .await
        .map_err(|e| format!("GET {url}: connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let request = Request::get(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("GET {url}: {e}"))?;
    let response = if https {
        let config = tls.ok_or_else(|| format!("GET {url}: no TLS configuration"))?;
        let name = ServerName::try_from(bare_host.to_owned())
            .map_err(|e| format!("GET {url}: server name: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("GET {url}: TLS: {e}"))?;
        send(TokioIo::new(stream), request, url).await?
    } else {
        send(TokioIo::new(tcp), request, url).await?
    };
    Ok(response)
}

async fn send<I>(io: I, request: Request<Empty<Bytes>>, url: &str) -> Result<Fetched, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if response.status() != StatusCode::OK {
        return Err(format!("GET {url}: status {}", response.status().as_u16()));
    }
    let max_age = response
        .headers()
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(max_age);
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("GET {url}: body: {e}"))?
        .to_bytes();
    Ok(Fetched { body, max_age })
}

/// `max-age=N` of a Cache-Control value (`no-store`/`no-cache`: 0).
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|directive| {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        let n = lower.strip_prefix("max-age=")?;
        n.trim_matches('"').parse().ok().map(Duration::from_secs)
    })
}

/// The `jwks_uri` of an OIDC discovery document.
pub fn jwks_uri(discovery: &[u8]) -> Result<String, String> {
    let doc: serde_json::Value = serde_json::from_slice(discovery)
        .map_err(|e| format!("discovery document is not JSON: {e}"))?;
    doc.get("jwks_uri")
        .and_then(|u| u.as_str())
        .map(str::to_owned)
        .ok_or_else(|| "discovery document has no jwks_uri".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("Max-Age=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=x"), None);
    }
}
