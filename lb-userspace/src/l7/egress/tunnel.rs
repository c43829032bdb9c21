//! CONNECT tunnels: lb has dialed the target; the client gets `200 Connection established`,
//! then bytes are spliced both ways (half-close passed on, closed after the listener's
//! `idle_timeout` without traffic) until both sides are done. A tunnel to one of the
//! listener's `sni_ports` first reads the client's TLS ClientHello (not terminated, passed on
//! as read) and closes both sides when its server name is not one the tunnel may carry:
//! the domain-fronting defence.
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::TokioIo;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use super::super::{
    lifecycle::Tracker,
    pool::ProxyBody,
    stream::{relay, sni},
};

/// How long a tunnel that must show its ClientHello waits for it.
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Which server names a tunnel may carry (see `EgressSettings::sni_allowed`).
pub(super) type SniCheck = Box<dyn FnOnce(Option<&str>) -> bool + Send>;

/// What the ClientHello check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Sni {
    /// Not a port that is checked.
    Unchecked,
    /// The server name (None: the ClientHello had none) was allowed.
    Passed(Option<String>),
    /// Refused: the server name (None: none was sent).
    Refused(Option<String>),
    /// No ClientHello came (not TLS, cut off, too slow): closed.
    NoClientHello,
}

/// The 200 answer to `req`; once hyper hands the connection over, the splice runs in its own
/// task (counted by `tracker` into the graceful stop) and `done(bytes up, bytes down, sni)`
/// is called when it ends.
pub(super) fn open(
    req: Request<Incoming>,
    mut upstream: TcpStream,
    idle: Duration,
    tracker: &Tracker,
    sni_check: Option<SniCheck>,
    done: impl FnOnce(u64, u64, Sni) + Send + 'static,
) -> Response<ProxyBody> {
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(tracker.admit().run(async move {
        let Ok(upgraded) = upgrade.await else {
            return done(0, 0, Sni::Unchecked);
        };
        // The listener serves plain TCP streams: the client socket comes back whole, with any
        // bytes the client sent after its request head.
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            return done(0, 0, Sni::Unchecked);
        };
        let mut client = parts.io.into_inner();
        let (early, sni) = match sni_check {
            None => (parts.read_buf.to_vec(), Sni::Unchecked),
            Some(check) => {
                // Boxed: the reader's state (kilobytes) would otherwise be in every tunnel's
                // task, checked or not.
                let hello = Box::pin(sni::read_after(
                    &mut client,
                    parts.read_buf.to_vec(),
                    CLIENT_HELLO_TIMEOUT,
                ))
                .await;
                let Ok(hello) = hello else {
                    return done(0, 0, Sni::NoClientHello);
                };
                if !check(hello.server_name.as_deref()) {
                    return done(0, 0, Sni::Refused(hello.server_name));
                }
                (hello.bytes, Sni::Passed(hello.server_name))
            }
        };
        let sent = early.len() as u64;
        if sent > 0 && upstream.write_all(&early).await.is_err() {
            return done(0, 0, sni);
        }
        match relay::relay(client, upstream, idle).await {
            relay::RelayEnd::Done(up, down) => done(up + sent, down, sni),
            relay::RelayEnd::Idle => done(sent, 0, sni),
            relay::RelayEnd::Error(err) => {
                tracing::debug!(%err, "egress tunnel ended with an error");
                done(sent, 0, sni);
            }
        }
    }));
    established()
}

/// The answer that opens a tunnel: 200 with NGINX's and Squid's reason phrase, no body.
pub(super) fn established() -> Response<ProxyBody> {
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
