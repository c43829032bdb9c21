//! HTTPS upstreams: the rustls client configuration a pool's `tls`, `protocol`, `ca_file`,
//! `tls_server_name`, `tls_insecure`, `tls_client_cert` and `tls_client_key` keys describe (built while the file is read, so a bad
//! CA file is a configuration error with its line).
use std::{
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
    /// `tls_client_cert` and `tls_client_key` as given, and the hash of their bytes.
    pub client_cert: Option<(PathBuf, PathBuf, u64)>,
}

/// The certificate (chain) and key a pool presents to backends that ask for one.
pub struct ClientIdentity {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    digest: u64,
}

/// Which file a `ClientIdentity` error is about.
#[derive(Debug, PartialEq, Eq)]
pub enum IdentityFile {
    Cert,
    Key,
}

/// Reads `tls_client_cert` (PEM chain) and `tls_client_key` (PEM private key) and checks
/// that the key belongs to the certificate. Errors: which file, and why.
pub fn client_identity(
    cert_file: &Path,
    key_file: &Path,
) -> Result<ClientIdentity, (IdentityFile, String)> {
    let read = |path: &Path, which| {
        std::fs::read(path).map_err(|e| (which, format!("{:?}: {e}", path.display().to_string())))
    };
    let cert_bytes = read(cert_file, IdentityFile::Cert)?;
    let key_bytes = read(key_file, IdentityFile::Key)?;
    let chain = crate::pem::certs(&cert_bytes).map_err(|e| {
        (
            IdentityFile::Cert,
            format!("{:?}: {e}", cert_file.display().to_string()),
        )
    })?;
    if chain.is_empty() {
        return Err((
            IdentityFile::Cert,
            format!(
                "{:?} holds no PEM certificate",
                cert_file.display().to_string()
            ),
        ));
    }
    let key = crate::pem::private_key(&key_bytes)
        .map_err(|e| {
            (
                IdentityFile::Key,
                format!("{:?}: {e}", key_file.display().to_string()),
            )
        })?
        .ok_or_else(|| {
            (
                IdentityFile::Key,
                format!(
                    "{:?} holds no PEM private key",
                    key_file.display().to_string()
                ),
            )
        })?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
        |e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => (
                IdentityFile::Key,
                format!(
                    "{:?} is not the key of the certificate in {:?}",
                    key_file.display().to_string(),
                    cert_file.display().to_string()
                ),
            ),
            e => (
                IdentityFile::Key,
                format!("{:?}: {e}", key_file.display().to_string()),
            ),
        },
    )?;
    let mut both = cert_bytes;
    both.extend_from_slice(&key_bytes);
    Ok(ClientIdentity {
        cert_file: cert_file.to_owned(),
        key_file: key_file.to_owned(),
        chain,
        key,
        digest: content_digest(&both),
    })
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
    identity: Option<ClientIdentity>,
) -> Result<(Arc<ClientConfig>, UpstreamTlsSettings), String> {
    let mut settings = UpstreamTlsSettings {
        protocol,
        insecure,
        ca_file: ca_file.map(Path::to_path_buf),
        ca_digest: None,
        client_cert: identity
            .as_ref()
            .map(|i| (i.cert_file.clone(), i.key_file.clone(), i.digest)),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert::new(provider)))
    } else {
        let path = ca_file.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
        let bytes = std::fs::read(path)
            .map_err(|e| format!("ca_file {:?}: {e}", path.display().to_string()))?;
        settings.ca_digest = Some(content_digest(&bytes));
        let mut roots = RootCertStore::empty();
        let certs = crate::pem::certs(&bytes)
            .map_err(|e| format!("ca_file {:?}: {e}", path.display().to_string()))?;
        for cert in certs {
            // The system bundle has the odd certificate rustls cannot parse; skip those.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(format!(
                "ca_file {:?} holds no usable PEM certificate",
                path.display().to_string()
            ));
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain, identity.key)
            .map_err(|e| format!("tls_client_key: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match protocol {
        UpstreamProtocol::H2 => vec![b"h2".to_vec()],
        _ => vec![b"http/1.1".to_vec()],
    };
    Ok((Arc::new(config), settings))
}
