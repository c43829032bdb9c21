//! TLS termination for HTTPS listeners: certificates chosen by SNI (exact names, then
//! `*.suffix` wildcards, then the listener's first certificate), ALPN h2 and http/1.1, session
//! resumption by cache and tickets.
use std::{collections::HashMap, fs::File, io::BufReader, path::Path, sync::Arc};

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
}

#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// (".example.com", key) for `*.example.com`.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name().map(str::to_ascii_lowercase) else {
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
        File::open(path)
            .map(BufReader::new)
            .map_err(|source| TlsError::Read {
                path: path.display().to_string(),
                source,
            })
    };
    let chain = rustls_pemfile::certs(&mut open(&cert.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: cert.cert.display().to_string(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: cert.cert.display().to_string(),
        });
    }
    let key = rustls_pemfile::private_key(&mut open(&cert.key)?)
        .map_err(|source| TlsError::Read {
            path: cert.key.display().to_string(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: cert.key.display().to_string(),
        })?;
    Ok(CertifiedKey::from_der(chain, key, provider)?)
}

pub fn server_config(certs: &[TlsCertConfig]) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    let mut default = None;
    for cert in certs {
        let key = Arc::new(load(cert, &provider)?);
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
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            exact,
            wildcard,
            default,
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(16 * 1024);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}
