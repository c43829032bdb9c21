//! TLS inspection (Squid's ssl_bump: peek, then bump or splice): a CONNECT tunnel to a name in
//! `inspect_hosts` is not spliced. After the 200 lb reads the ClientHello (`stream/sni.rs`),
//! which must name the CONNECT host (or none, with `allow_missing_sni`), then terminates the
//! client's TLS itself with a leaf for that host minted by `mint.rs` (ALPN http/1.1 only) and
//! serves HTTP/1.1 on the decrypted stream. Each request is decided again with its path
//! (`EgressListener::inspected` in `mod.rs`) and sent on (`exchange.rs`) over TLS to the
//! address the CONNECT was allowed to reach (a kept connection or a new one, `origin_tls`),
//! the origin's certificate verified for the CONNECT host against `inspect_ca_file` or the
//! system bundle (untrusted: 502 to that request).
//! Everything else, names not listed and literal addresses, is spliced as before.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use rustls::{
    ServerConfig,
    pki_types::ServerName,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    net::TcpStream,
    sync::Mutex,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{
    super::{
        lifecycle::{self, Phase, Tracker},
        pool::ProxyBody,
        stream::sni,
    },
    EgressListener,
    mint::Minter,
    target::Target,
    tunnel::Sni,
};
use crate::config::HostMatch;

/// How long an inspected tunnel waits for the client's ClientHello, and then for its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener's inspection settings (compared on reload by what they were built from).
pub struct Inspection {
    pub hosts: Vec<HostMatch>,
    pub minter: Minter,
    /// Verifies origins (`inspect_ca_file`, else the system bundle); ALPN http/1.1.
    pub origins: TlsConnector,
    /// The files and a digest of their contents: equal inputs, equal settings.
    pub inputs: InspectionInputs,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InspectionInputs {
    pub ca_cert: std::path::PathBuf,
    pub ca_key: std::path::PathBuf,
    pub ca_digest: u64,
    pub origin_roots: crate::l7::upstream::tls::UpstreamTlsSettings,
}

impl PartialEq for Inspection {
    fn eq(&self, other: &Self) -> bool {
        self.hosts == other.hosts && self.inputs == other.inputs
    }
}

impl Eq for Inspection {}

impl std::fmt::Debug for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspection")
            .field("hosts", &self.hosts)
            .field("inputs", &self.inputs)
            .finish_non_exhaustive()
    }
}

impl Inspection {
    /// Whether a tunnel to `target` is inspected: a name (not a literal address) listed.
    pub fn covers(&self, target: &Target) -> bool {
        target.ip.is_none() && self.hosts.iter().any(|h| h.matches(&target.host))
    }
}

/// One inspected tunnel: who opened it, to what, and the connection dialed for the CONNECT
/// (used by the first request that needs a new connection; later ones dial the same address
/// again).
pub(super) struct Tunnel {
    pub client: SocketAddr,
    pub user: Option<String>,
    pub target: Target,
    pub address: SocketAddr,
    pub dialed: Mutex<Option<TcpStream>>,
}

/// Why an inspected tunnel ended before serving anything.
#[derive(Debug, thiserror::Error)]
pub(super) enum InspectError {
    #[error("the client's TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("the client's TLS handshake took too long")]
    HandshakeTimeout,
    #[error("cannot mint a certificate: {0}")]
    Mint(#[from] super::mint::MintError),
}

/// The 200 answer to `req`; once hyper hands the connection over, the bumped connection is
/// served in its own task (counted by `tracker` into the graceful stop), and `done(sni)` is
/// called when the ClientHello was checked (or never came) and again never.
pub(super) fn open(
    req: Request<Incoming>,
    listener: Arc<EgressListener>,
    tunnel: Tunnel,
    inspection: Arc<Inspection>,
    tracker: &Tracker,
    done: impl FnOnce(Sni) + Send + 'static,
) -> Response<ProxyBody> {
    let upgrade = hyper::upgrade::on(req);
    let admission = tracker.admit();
    let phase = admission.phase();
    tokio::spawn(admission.run(async move {
        let Ok(upgraded) = upgrade.await else {
            return done(Sni::NoClientHello);
        };
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            return done(Sni::NoClientHello);
        };
        let mut client = parts.io.into_inner();
        let hello = sni::read_after(&mut client, parts.read_buf.to_vec(), HANDSHAKE_TIMEOUT).await;
        let Ok(hello) = hello else {
            return done(Sni::NoClientHello);
        };
        // The leaf is minted for the CONNECT host and the origin verified for it: a
        // ClientHello for another name would be answered by a certificate it did not ask for.
        let name_ok = match hello.server_name.as_deref() {
            Some(name) => name.eq_ignore_ascii_case(&tunnel.target.host),
            None => listener.settings.allow_missing_sni,
        };
        if !name_ok {
            return done(Sni::Refused(hello.server_name));
        }
        done(Sni::Passed(hello.server_name.clone()));
        let (name, client_addr) = (tunnel.target.authority(), tunnel.client);
        if let Err(err) = serve(client, hello.bytes, listener, tunnel, &inspection, phase).await {
            tracing::debug!(target = %name, client = %client_addr, %err, "inspected tunnel ended");
        }
    }));
    super::tunnel::established()
}

/// Terminates the client's TLS (its ClientHello already read into `hello`) and serves its
/// requests until it closes.
async fn serve(
    client: TcpStream,
    hello: Vec<u8>,
    listener: Arc<EgressListener>,
    tunnel: Tunnel,
    inspection: &Inspection,
    phase: tokio::sync::watch::Receiver<Phase>,
) -> Result<(), InspectError> {
    let leaf = inspection.minter.leaf(&tunnel.target.host)?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| InspectError::Handshake(std::io::Error::other(e)))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(OneCert(leaf)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The bytes read while peeking come first, then the socket.
    let (read, write) = client.into_split();
    let replayed: Box<dyn AsyncRead + Send + Unpin> =
        Box::new(std::io::Cursor::new(hello).chain(read));
    let stream = tokio::io::join(replayed, write);
    let tls = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsAcceptor::from(Arc::new(config)).accept(stream),
    )
    .await
    .map_err(|_| InspectError::HandshakeTimeout)?
    .map_err(InspectError::Handshake)?;
    let tunnel = Arc::new(tunnel);
    // The listener's own head limits, as for the requests outside the tunnel.
    let http = listener.http.http1().clone();
    let service = service_fn(move |req| {
        let (listener, tunnel) = (listener.clone(), tunnel.clone());
        async move { Ok::<_, std::convert::Infallible>(listener.inspected(req, &tunnel).await) }
    });
    let connection = http.serve_connection(TokioIo::new(tls), service);
    // A graceful stop lets the request in flight finish, then closes (as outside tunnels).
    lifecycle::drive(connection, phase, |c| c.graceful_shutdown()).await;
    Ok(())
}

/// TLS to an inspected origin over `tcp`, its certificate verified for `host` (the CONNECT
/// host) against `inspect_ca_file` or the system bundle.
pub(super) async fn origin_tls(
    inspection: &Inspection,
    host: &str,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, OriginError> {
    let name =
        ServerName::try_from(host.to_owned()).map_err(|_| OriginError::Name(host.to_owned()))?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, inspection.origins.connect(name, tcp))
        .await
        .map_err(|_| OriginError::Tls(std::io::ErrorKind::TimedOut.into()))?
        .map_err(OriginError::Tls)
}

#[derive(Debug, thiserror::Error)]
pub(super) enum OriginError {
    #[error("TLS to the origin (its certificate verified for the CONNECT host): {0}")]
    Tls(std::io::Error),
    #[error("{0:?} is not a TLS server name")]
    Name(String),
}

/// The minted leaf, whatever the ClientHello asks (its name was checked before).
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}
