//! HTTPS upstreams: the rustls client configuration a pool's `tls`, `protocol`, `ca_file`,
//! `tls_server_name` and `tls_insecure` keys describe (built while the file is read, so a bad
//! CA file is a configuration error with its line).
use std::{
    io::BufReader,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use tokio_rustls::TlsConnector;

use crate::tls_client::AcceptAnyCert;

/// Where verification looks when no `ca_file` is given (Debian's ca-certificates bundle).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The HTTP version spoken to a pool's backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 over cleartext TCP (prior knowledge).
    H2c,
    /// HTTP/2 over TLS (ALPN h2).
    H2,
}

/// A pool's TLS client side.
#[derive(Clone)]
pub struct UpstreamTls {
    pub connector: TlsConnector,
    /// SNI and the name verified; None: the backend's IP address.
    pub server_name: Option<ServerName<'static>>,
    /// What the connector was built from (compared on reload instead of the connector).
    pub settings: UpstreamTlsSettings,
}

/// The inputs of a pool's TLS client configuration: equal settings build equal connectors.
/// The CA file is compared by its content, read when the configuration was built, so a
/// reload that rewrote the file at the same path is a change.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamTlsSettings {
    pub protocol: UpstreamProtocol,
    pub insecure: bool,
    /// `ca_file` as given (None: the system bundle, or nothing when `insecure`).
    pub ca_file: Option<PathBuf>,
    /// Hash of the CA bytes verification uses (`ca_file` or the system bundle); None when
    /// `insecure` (nothing read).
    pub ca_digest: Option<u64>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.server_name == other.server_name && self.settings == other.settings
    }
}

impl Eq for UpstreamTls {}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A 64-bit digest of file contents, to tell whether a file changed between two reads (not
/// a security hash: it only decides whether a reload rebuilds something).
pub fn content_digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    // DefaultHasher::new() has fixed keys: equal bytes give equal digests within the process.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// Builds the client configuration: verification against `ca_file` (PEM) or the system
/// bundle, or none at all when `insecure`; ALPN per `protocol`. Also returns the settings it
/// was built from (with the digest of the CA bytes read). Errors are reasons for the
/// configuration error.
pub fn client_config(
    protocol: UpstreamProtocol,
    ca_file: Option<&Path>,
    insecure: bool,
) -> Result<(Arc<ClientConfig>, UpstreamTlsSettings), String> {
    let mut settings = UpstreamTlsSettings {
        protocol,
        insecure,
        ca_file: ca_file.map(Path::to_path_buf),
        ca_digest: None,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert::new(provider)))
            .with_no_client_auth()
    } else {
        let path = ca_file.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
        let bytes = std::fs::read(path)
            .map_err(|e| format!("ca_file {:?}: {e}", path.display().to_string()))?;
        settings.ca_digest = Some(content_digest(&bytes));
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut BufReader::new(bytes.as_slice())) {
            let cert =
                cert.map_err(|e| format!("ca_file {:?}: {e}", path.display().to_string()))?;
            // The system bundle has the odd certificate rustls cannot parse; skip those.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(format!(
                "ca_file {:?} holds no usable PEM certificate",
                path.display().to_string()
            ));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = match protocol {
        UpstreamProtocol::H2 => vec![b"h2".to_vec()],
        _ => vec![b"http/1.1".to_vec()],
    };
    Ok((Arc::new(config), settings))
}
