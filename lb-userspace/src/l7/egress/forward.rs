//! Absolute-form requests, and requests inside an inspected tunnel (over TLS): sent to the
//! origin lb has dialed (one connection per request) in origin form, with `Host` set from the
//! target, hop-by-hop and `Proxy-*` headers removed both ways (so `Proxy-Authorization` never
//! leaves lb) and `Via: 1.1 lb` added both ways. An origin that sends no response head within
//! 60 s is answered 502.
use http_body_util::BodyExt;
use hyper::{
    HeaderMap, Request, Response, Version,
    header::{self, HeaderValue},
};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{super::headers::remove_hop_by_hop, super::pool::ProxyBody, target::Target};

const VIA: HeaderValue = HeaderValue::from_static("1.1 lb");

/// Time the origin gets to answer with a response head (then 502).
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Sends `req` to `target` over `upstream` (origin-form `path`); the origin's response, ready
/// for the client. `Host` is the target, its port left out when it is the scheme's
/// `default_port` (80 for http, 443 inside an inspected tunnel).
pub(super) async fn send<B, S>(
    mut req: Request<B>,
    upstream: S,
    target: &Target,
    path: &str,
    default_port: u16,
) -> Result<Response<ProxyBody>, Box<dyn std::error::Error + Send + Sync>>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%err, "egress upstream connection");
        }
    });
    *req.uri_mut() = path.parse()?;
    *req.version_mut() = Version::HTTP_11;
    let host = if target.port == default_port {
        match target.ip {
            Some(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => target.host.clone(),
        }
    } else {
        target.authority()
    };
    let headers = req.headers_mut();
    clean(headers);
    headers.insert(header::HOST, HeaderValue::from_str(&host)?);
    let response = tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| "no response head in time")??;
    let (mut parts, body) = response.into_parts();
    clean(&mut parts.headers);
    Ok(Response::from_parts(parts, body.boxed()))
}

/// Hop-by-hop and `Proxy-*` headers out, our `Via` in.
fn clean(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    let proxy_headers: Vec<_> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy_headers {
        headers.remove(name);
    }
    headers.append(header::VIA, VIA);
}
