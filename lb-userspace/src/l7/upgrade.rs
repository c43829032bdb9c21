//! HTTP/1.1 Upgrade (WebSocket and the like): the Upgrade and Connection headers, hop-by-hop
//! otherwise, are passed on for a request that asks to upgrade; only when the backend answers
//! 101 are the client's and the backend's connections taken over from hyper (its upgrade
//! API) and spliced byte for byte. Any other answer is an ordinary response.
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{
    HeaderMap, Request, Response, StatusCode, Version,
    body::Incoming,
    header::{self, HeaderValue},
    upgrade::OnUpgrade,
};
use hyper_util::rt::TokioIo;

use super::{headers::remove_hop_by_hop, lifecycle::Tracker, pool::ProxyBody};

/// A client request that asked to upgrade, and the client side of the upgrade.
pub struct UpgradeRequest {
    protocol: HeaderValue,
    client: OnUpgrade,
}

/// Takes the upgrade out of `req` if it asks for one (HTTP/1.1, `Connection: upgrade` and an
/// `Upgrade` header); call before removing hop-by-hop headers.
pub fn take(req: &mut Request<Incoming>) -> Option<UpgradeRequest> {
    if req.version() != Version::HTTP_11 || !connection_has_upgrade(req.headers()) {
        return None;
    }
    let protocol = req.headers().get(header::UPGRADE)?.clone();
    Some(UpgradeRequest {
        protocol,
        client: hyper::upgrade::on(req),
    })
}

fn connection_has_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

fn set_upgrade_headers(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

impl UpgradeRequest {
    /// Puts the upgrade headers back on the upstream request (after hop-by-hop removal).
    pub fn restore_headers(&self, headers: &mut HeaderMap) {
        set_upgrade_headers(headers, self.protocol.clone());
    }

    /// For the backend's 101: the answer for the client; once both sides have switched, a
    /// task copies bytes both ways until either closes (or, counted by `tracker`, the graceful
    /// stop's grace ends).
    pub fn splice(
        self,
        mut response: Response<Incoming>,
        tracker: Option<&Tracker>,
    ) -> Response<ProxyBody> {
        debug_assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let backend = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        let protocol = parts
            .headers
            .get(header::UPGRADE)
            .cloned()
            .unwrap_or(self.protocol);
        remove_hop_by_hop(&mut parts.headers);
        set_upgrade_headers(&mut parts.headers, protocol);
        let client = self.client;
        let spliced = async move {
            let (client, backend) = match tokio::try_join!(client, backend) {
                Ok(both) => both,
                Err(err) => {
                    tracing::debug!(%err, "upgrade did not complete");
                    return;
                }
            };
            let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
            match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                Ok((up, down)) => tracing::debug!(up, down, "upgraded connection ended"),
                Err(err) => tracing::debug!(%err, "upgraded connection failed"),
            }
        };
        match tracker {
            Some(tracker) => tokio::spawn(tracker.admit().run(spliced)),
            None => tokio::spawn(spliced),
        };
        Response::from_parts(
            parts,
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        )
    }
}
