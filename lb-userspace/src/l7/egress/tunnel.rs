//! CONNECT tunnels: lb has dialed the target; the client gets `200 Connection established`,
//! then bytes are spliced both ways (half-close passed on, closed after the listener's
//! `idle_timeout` without traffic) until both sides are done.
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::TokioIo;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use super::super::{pool::ProxyBody, stream::relay};

/// The 200 answer to `req`; once hyper hands the connection over, the splice runs in its own
/// task and `done(bytes up, bytes down)` is called when it ends.
pub(super) fn open(
    req: Request<Incoming>,
    mut upstream: TcpStream,
    idle: Duration,
    done: impl FnOnce(u64, u64) + Send + 'static,
) -> Response<ProxyBody> {
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return done(0, 0);
        };
        // The listener serves plain TCP streams: the client socket comes back whole, with any
        // bytes the client sent after its request head.
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            return done(0, 0);
        };
        let early = parts.read_buf.len() as u64;
        if early > 0 && upstream.write_all(&parts.read_buf).await.is_err() {
            return done(0, 0);
        }
        match relay::relay(parts.io.into_inner(), upstream, idle).await {
            relay::RelayEnd::Done(up, down) => done(up + early, down),
            relay::RelayEnd::Idle => done(early, 0),
            relay::RelayEnd::Error(err) => {
                tracing::debug!(%err, "egress tunnel ended with an error");
                done(early, 0);
            }
        }
    });
    let mut response = Response::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    response
        .extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(
            b"Connection established",
        ));
    response
}
