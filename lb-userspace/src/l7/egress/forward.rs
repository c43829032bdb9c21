//! Absolute-form requests, and requests inside an inspected tunnel (over TLS): sent to the
//! origin on a kept connection or one dialed for them (`origins.rs`), in origin form, with
//! `Host` set from the target, hop-by-hop and `Proxy-*` headers removed both ways (so
//! `Proxy-Authorization` never leaves lb) and `Via: 1.1 lb` added both ways. An origin that
//! sends no response head within 60 s is answered 502.
use std::net::SocketAddr;

use http_body_util::BodyExt;
use hyper::{
    HeaderMap, Request, Response, Version,
    client::conn::http1::SendRequest,
    header::{self, HeaderValue},
};

use super::{
    super::{headers::remove_hop_by_hop, pool::ProxyBody},
    origins::{BoxError, OriginBody, OriginKey, Origins},
    target::Target,
};

const VIA: HeaderValue = HeaderValue::from_static("1.1 lb");

/// Time the origin gets to answer with a response head (then 502).
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a request did not get the origin's response.
#[derive(Debug, thiserror::Error)]
pub(super) enum ForwardError {
    /// No allowed address accepted a connection (nothing was sent).
    #[error("no allowed address accepted the connection")]
    Unreachable,
    #[error("no response head in time")]
    Timeout,
    #[error("{0}")]
    Failed(BoxError),
}

impl From<hyper::Error> for ForwardError {
    fn from(err: hyper::Error) -> Self {
        Self::Failed(Box::new(err))
    }
}

/// The `Host` a request to `target` carries: the port left out when it is the scheme's
/// `default_port` (80 for http, 443 inside an inspected tunnel).
pub(super) fn host(target: &Target, default_port: u16) -> String {
    if target.port == default_port {
        match target.ip {
            Some(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => target.host.clone(),
        }
    } else {
        target.authority()
    }
}

/// Sends `req` (origin-form `path`, `Host` `host`) on a kept connection for one of `keys`,
/// else on the one `connect` opens; the origin's response, ready for the client, and the
/// address it came from.
pub(super) async fn send<F, Fut>(
    origins: &std::sync::Arc<Origins>,
    keys: &[OriginKey],
    mut req: Request<OriginBody>,
    path: &str,
    host: &str,
    connect: F,
) -> Result<(Response<ProxyBody>, SocketAddr), ForwardError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(OriginKey, SendRequest<OriginBody>), ForwardError>>,
{
    *req.uri_mut() = path
        .parse()
        .map_err(|e| ForwardError::Failed(Box::new(e)))?;
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    clean(headers);
    headers.insert(
        header::HOST,
        HeaderValue::from_str(host).map_err(|e| ForwardError::Failed(Box::new(e)))?,
    );
    let sent = tokio::time::timeout(RESPONSE_TIMEOUT, origins.send(keys, req, connect))
        .await
        .map_err(|_| ForwardError::Timeout)??;
    let addr = sent.addr;
    let (mut parts, body) = sent.into_response().into_parts();
    clean(&mut parts.headers);
    Ok((Response::from_parts(parts, body.boxed()), addr))
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
