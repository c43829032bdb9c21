//! Leaf certificates for TLS inspection, minted on the fly with rcgen and signed by the
//! listener's inspection CA (`inspect_ca_cert`, `inspect_ca_key`). Every leaf shares one key
//! pair made at load (one ECDSA P-256 key: what mitmproxy does too; a fresh key per name would
//! cost a key generation per new name for nothing a client can check). Leaves are cached per
//! name (bounded, expiring long before they do), so a name costs one signature a day.
use std::{path::Path, sync::Arc, time::Duration};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::{
    client::danger::ServerCertVerifier,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    sign::CertifiedKey,
};

/// Names whose leaves are kept at once (each a few hundred bytes plus a parsed certificate).
const CACHED_NAMES: u64 = 10_000;
/// A leaf is valid from a day before it was made (clients with a slow clock) ...
const BACKDATE: Duration = Duration::from_secs(24 * 3600);
/// ... for a week; the cache drops it after a day, long before it expires.
const VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
const CACHE_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("{path:?}: {reason}")]
    File { path: String, reason: String },
    #[error("the inspection CA cannot sign: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("the minted key is not usable by rustls: {0}")]
    Key(#[from] rustls::Error),
    #[error("{0:?} is not a name a certificate can be made for")]
    Name(String),
    #[error("no random serial number: the system's random source failed")]
    Random,
}

/// The inspection CA and what it has minted.
pub struct Minter {
    issuer: rcgen::Certificate,
    issuer_key: KeyPair,
    /// The key every leaf certifies, and its rustls signing form.
    leaf_key: KeyPair,
    signing_key: Arc<dyn rustls::sign::SigningKey>,
    /// The CA certificate as read, sent after each leaf (so a client that trusts it sees the
    /// whole chain).
    ca_der: CertificateDer<'static>,
    cache: moka::sync::Cache<String, Arc<CertifiedKey>>,
    random: SystemRandom,
    /// Of the certificate and key files as read (a reload that rewrote them is a change).
    digest: u64,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter").finish_non_exhaustive()
    }
}

impl Minter {
    /// Reads the CA certificate and key (PEM) and mints one leaf to prove the pair signs.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, MintError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| MintError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let bad = |path: &Path, reason: String| MintError::File {
            path: path.display().to_string(),
            reason,
        };
        let cert_pem = read(cert_file)?;
        let key_pem = read(key_file)?;
        let ca_der = crate::pem::certs(cert_pem.as_bytes())
            .map_err(|e| bad(cert_file, e.to_string()))?
            .into_iter()
            .next()
            .ok_or_else(|| bad(cert_file, "holds no PEM certificate".to_owned()))?;
        let params = CertificateParams::from_ca_cert_der(&ca_der).map_err(|e| {
            bad(
                cert_file,
                format!("not a CA certificate rcgen can read: {e}"),
            )
        })?;
        if matches!(params.is_ca, rcgen::IsCa::NoCa | rcgen::IsCa::ExplicitNoCa) {
            return Err(bad(
                cert_file,
                "is not a CA certificate (basicConstraints CA:TRUE)".to_owned(),
            ));
        }
        let issuer_key = KeyPair::from_pem(&key_pem).map_err(|e| {
            bad(
                key_file,
                format!("not a PEM private key rcgen can use: {e}"),
            )
        })?;
        // The issuer as rcgen needs it: the CA's own name and key identifier, re-signed by the
        // key (only its parameters are used when signing leaves; clients see `ca_der`).
        let issuer = params.self_signed(&issuer_key)?;
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&der)?;
        let minter = Self {
            issuer,
            issuer_key,
            leaf_key,
            signing_key,
            ca_der,
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHED_NAMES)
                .time_to_live(CACHE_TTL)
                .build(),
            random: SystemRandom::new(),
            digest: crate::l7::upstream::tls::content_digest(
                format!("{cert_pem}{key_pem}").as_bytes(),
            ),
        };
        // A leaf that verifies against the CA certificate proves the key is the CA's.
        let probe = minter.make("lb-inspect.invalid")?;
        if !chains_to(&probe, &minter.ca_der) {
            return Err(bad(
                key_file,
                format!(
                    "is not the key of the certificate in {:?}",
                    cert_file.display().to_string()
                ),
            ));
        }
        Ok(minter)
    }

    /// A digest of the CA certificate and key files as read.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// The certificate for `name` (lowercase DNS name), from the cache or minted now.
    pub fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>, MintError> {
        if let Some(cached) = self.cache.get(name) {
            return Ok(cached);
        }
        let leaf = Arc::new(self.make(name)?);
        self.cache.insert(name.to_owned(), leaf.clone());
        Ok(leaf)
    }

    fn make(&self, name: &str) -> Result<CertifiedKey, MintError> {
        let mut params = CertificateParams::default();
        let dns = name
            .try_into()
            .map_err(|_| MintError::Name(name.to_owned()))?;
        params.subject_alt_names = vec![SanType::DnsName(dns)];
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, name);
        params.distinguished_name = subject;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + VALIDITY;
        // Random serials: leaves for different names share a key, and an issuer must never
        // reuse a serial (Firefox refuses a second certificate with the same one).
        let mut serial = [0u8; 16];
        self.random
            .fill(&mut serial)
            .map_err(|_| MintError::Random)?;
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(&self.leaf_key, &self.issuer, &self.issuer_key)?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.ca_der.clone()],
            self.signing_key.clone(),
        ))
    }
}

/// Whether `leaf` verifies for its name with `ca` as the only root.
fn chains_to(leaf: &CertifiedKey, ca: &CertificateDer<'static>) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    if roots.add(ca.clone()).is_err() {
        return false;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(verifier) =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
    else {
        return false;
    };
    let Some(end_entity) = leaf.cert.first() else {
        return false;
    };
    let Ok(name) = rustls::pki_types::ServerName::try_from("lb-inspect.invalid") else {
        return false;
    };
    verifier
        .verify_server_cert(
            end_entity,
            &[],
            &name,
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_chain_to_the_ca_are_cached_and_a_wrong_key_is_refused() {
        let dir = std::env::temp_dir().join(format!("lb-mint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "mint test CA");
        let ca = params.self_signed(&key).expect("ca");
        let other = KeyPair::generate().expect("key");
        let (cert, good, bad) = (dir.join("ca.pem"), dir.join("ca.key"), dir.join("o.key"));
        std::fs::write(&cert, ca.pem()).expect("write");
        std::fs::write(&good, key.serialize_pem()).expect("write");
        std::fs::write(&bad, other.serialize_pem()).expect("write");
        let minter = Minter::load(&cert, &good);
        let wrong = Minter::load(&cert, &bad);
        let _ = std::fs::remove_dir_all(&dir);
        let minter = minter.expect("the CA and its key");
        assert!(matches!(wrong, Err(MintError::File { .. })), "{wrong:?}");
        let leaf = minter.leaf("www.example.com").expect("leaf");
        assert_eq!(leaf.cert.len(), 2, "the leaf, then the CA");
        assert_eq!(leaf.cert[1], minter.ca_der);
        // Verified for its own name against the CA alone.
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new({
                let mut roots = rustls::RootCertStore::empty();
                roots.add(minter.ca_der.clone()).expect("root");
                roots
            }),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let name = rustls::pki_types::ServerName::try_from("www.example.com").expect("name");
        verifier
            .verify_server_cert(
                &leaf.cert[0],
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("the leaf verifies for its name");
        let again = minter.leaf("www.example.com").expect("leaf");
        assert!(Arc::ptr_eq(&leaf, &again), "cached per name");
    }
}
