//! TLS termination for HTTPS listeners: certificates chosen by SNI (exact names, then
//! `*.suffix` wildcards, then the listener's first certificate), ALPN h2 and http/1.1, session
//! resumption by cache and tickets. The certificate set can be re-read from its files and
//! swapped in while serving (`CertReloader`): new handshakes get the new certificates,
//! established connections keep theirs.
use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use arc_swap::ArcSwap;

use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache},
    sign::CertifiedKey,
};

use super::config::TlsCertConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no private key found")]
    NoKey { path: String },
    #[error("{path}: no certificate found")]
    NoCert { path: String },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("a TLS listener needs at least one certificate")]
    NoCertificates,
    #[error("{key}: the private key does not match the certificate in {cert}")]
    KeyMismatch { key: String, cert: String },
    #[error("{path}: not an OCSP response lb can staple: {reason}")]
    Ocsp { path: String, reason: &'static str },
    /// The key (at `path`) is unusable.
    #[error("{path}: {source}")]
    Certificate {
        path: String,
        #[source]
        source: rustls::Error,
    },
}

impl TlsError {
    /// Whether the error is about the key (file, or its match with the certificate) rather
    /// than the certificate.
    pub fn is_about_key(&self, cert: &TlsCertConfig) -> bool {
        match self {
            Self::NoKey { .. } | Self::KeyMismatch { .. } | Self::Certificate { .. } => true,
            Self::Read { path, .. } => *path == cert.key.display().to_string(),
            _ => false,
        }
    }
}

/// Reads one certificate and its key (and OCSP response) as a listener would, checking that
/// the key file holds a private key that matches the certificate and that the OCSP file is a
/// successful response (what `lb check-config` runs).
pub fn check_certificate(cert: &TlsCertConfig) -> Result<(), TlsError> {
    load(cert, &rustls::crypto::ring::default_provider()).map(|_| ())
}

/// The certificates of one listener, by SNI name.
#[derive(Debug)]
struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// (".example.com", key) for `*.example.com`.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

#[derive(Debug)]
struct SniResolver {
    certs: ArcSwap<CertSet>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certs.load().resolve(hello.server_name())
    }
}

impl CertSet {
    fn resolve(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return Some(self.default.clone());
        };
        if let Some(key) = self.exact.get(&name) {
            return Some(key.clone());
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.ends_with(suffix.as_str()) && name.len() > suffix.len())
            .map(|(_, key)| key.clone())
            .or_else(|| Some(self.default.clone()))
    }
}

fn load(
    cert: &TlsCertConfig,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let open = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let chain = crate::pem::certs(&open(&cert.cert)?).map_err(|source| TlsError::Read {
        path: cert.cert.display().to_string(),
        source,
    })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: cert.cert.display().to_string(),
        });
    }
    let key = crate::pem::private_key(&open(&cert.key)?)
        .map_err(|source| TlsError::Read {
            path: cert.key.display().to_string(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: cert.key.display().to_string(),
        })?;
    let ocsp = match &cert.ocsp {
        None => None,
        Some(path) => {
            let response = open(path)?;
            check_ocsp_response(&response).map_err(|reason| TlsError::Ocsp {
                path: path.display().to_string(),
                reason,
            })?;
            Some(response)
        }
    };
    let certified =
        CertifiedKey::from_der(chain, key, provider).map_err(|source| match source {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsError::KeyMismatch {
                    key: cert.key.display().to_string(),
                    cert: cert.cert.display().to_string(),
                }
            }
            source => TlsError::Certificate {
                path: cert.key.display().to_string(),
                source,
            },
        })?;
    Ok(CertifiedKey { ocsp, ..certified })
}

/// Checks the outer frame of a DER `OCSPResponse` (RFC 6960 §4.2.1: `SEQUENCE {
/// responseStatus ENUMERATED, ... }`) and that its status is `successful` (0): stapling
/// anything else (an error status, a PEM file, a certificate) would only make clients fail.
/// The signature and the certificate it covers are the client's to check.
fn check_ocsp_response(der: &[u8]) -> Result<(), &'static str> {
    let [0x30, first, rest @ ..] = der else {
        return Err("not DER (expected a SEQUENCE)");
    };
    // Definite length, short or long form.
    let (length, body) = if *first < 0x80 {
        (usize::from(*first), rest)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return Err("bad DER length");
        }
        let (len, body) = rest.split_at(octets);
        let length = len.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
        (length, body)
    };
    if length != body.len() {
        return Err("truncated or trailing bytes");
    }
    match body {
        [0x0a, 0x01, 0, ..] => Ok(()),
        [0x0a, 0x01, _, ..] => Err("its status is not successful"),
        _ => Err("no response status"),
    }
}

/// Re-reads a listener's certificate files and swaps them in.
#[derive(Debug)]
pub struct CertReloader {
    files: Vec<TlsCertConfig>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    resolver: Arc<SniResolver>,
}

impl CertReloader {
    /// Reads every file again; nothing changes unless all of them are good.
    pub fn load(&self) -> Result<PreparedCerts, TlsError> {
        Ok(PreparedCerts {
            resolver: self.resolver.clone(),
            certs: cert_set(&self.files, &self.provider)?,
        })
    }
}

/// Certificates read and checked, ready to swap in.
pub struct PreparedCerts {
    resolver: Arc<SniResolver>,
    certs: CertSet,
}

impl PreparedCerts {
    pub fn swap_in(self) {
        self.resolver.certs.store(Arc::new(self.certs));
    }
}

fn cert_set(
    certs: &[TlsCertConfig],
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertSet, TlsError> {
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    let mut default = None;
    for cert in certs {
        let key = Arc::new(load(cert, provider)?);
        default.get_or_insert_with(|| key.clone());
        for name in &cert.server_names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix('*') {
                Some(suffix) => wildcard.push((suffix.to_owned(), key.clone())),
                None => {
                    exact.insert(name, key.clone());
                }
            }
        }
    }
    let default = default.ok_or(TlsError::NoCertificates)?;
    Ok(CertSet {
        exact,
        wildcard,
        default,
    })
}

/// The listener's TLS configuration, and what reloads its certificates.
pub fn server_config(
    certs: &[TlsCertConfig],
    client_auth: Option<&super::client_cert::ClientAuth>,
) -> Result<(Arc<ServerConfig>, CertReloader), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = Arc::new(SniResolver {
        certs: ArcSwap::from_pointee(cert_set(certs, &provider)?),
    });
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_auth {
        Some(auth) => builder.with_client_cert_verifier(auth.verifier.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(16 * 1024);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    let reloader = CertReloader {
        files: certs.to_vec(),
        provider,
        resolver,
    };
    Ok((Arc::new(config), reloader))
}

/// What NGINX says to a plain HTTP request sent to an HTTPS port.
const PLAIN_HTTP_TEXT: &str = "The plain HTTP request was sent to an HTTPS port.\n";

/// Whether the client of a TLS listener started with plain HTTP (its first byte an ASCII
/// capital, a method's, where a TLS record starts with 0x16); if so it has been answered 400
/// and the connection is to be closed. Waits at most `timeout` for the first byte.
pub(super) async fn sent_plain_http(tcp: &mut tokio::net::TcpStream, timeout: Duration) -> bool {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(timeout, tcp.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) || !first[0].is_ascii_uppercase() {
        return false;
    }
    use tokio::io::AsyncWriteExt as _;
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{PLAIN_HTTP_TEXT}",
        PLAIN_HTTP_TEXT.len()
    );
    let _ = tcp.write_all(answer.as_bytes()).await;
    let _ = tcp.shutdown().await;
    linger(tcp, timeout).await;
    true
}

/// What a lingering close reads of a client's unread request at most.
const LINGER_BYTES: usize = 64 * 1024;

/// Reads what the client is still sending (its request) until it closes, `LINGER_BYTES` or
/// `timeout`, as NGINX's lingering close does: closing a socket with unread data makes the
/// kernel send a reset, which can destroy the answer before the client has read it.
async fn linger(tcp: &mut tokio::net::TcpStream, timeout: Duration) {
    use tokio::io::AsyncReadExt as _;
    let drain = async {
        // On the heap: this rare path's buffer would otherwise be in every TLS connection's
        // task (the future awaiting it is part of the accept loop's).
        let mut buf = vec![0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(timeout, drain).await;
}

#[cfg(test)]
mod tests {
    use super::check_ocsp_response;

    #[test]
    fn only_successful_der_ocsp_responses_are_stapled() {
        // SEQUENCE { ENUMERATED 0, [0] {...} } in short and long length forms.
        assert_eq!(
            check_ocsp_response(&[0x30, 0x05, 0x0a, 0x01, 0x00, 0xa0, 0x00]),
            Ok(())
        );
        let mut long = vec![0x30, 0x81, 0x83, 0x0a, 0x01, 0x00, 0xa0, 0x7e];
        long.extend([0u8; 0x7e]);
        assert_eq!(check_ocsp_response(&long), Ok(()));
        // tryLater (3), PEM text, truncated, trailing bytes, empty.
        assert!(check_ocsp_response(&[0x30, 0x03, 0x0a, 0x01, 0x03]).is_err());
        assert!(check_ocsp_response(b"-----BEGIN").is_err());
        assert!(check_ocsp_response(&[0x30, 0x05, 0x0a, 0x01, 0x00]).is_err());
        assert!(check_ocsp_response(&[0x30, 0x03, 0x0a, 0x01, 0x00, 0x00]).is_err());
        assert!(check_ocsp_response(&[]).is_err());
        assert!(check_ocsp_response(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
