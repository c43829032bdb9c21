//! PEM files, read with rustls-pki-types' own parser (rustls-pemfile, used before, is
//! unmaintained: RUSTSEC-2025-0134). Sections of other kinds are skipped, as before.
use std::io;

use rustls::pki_types::{
    CertificateDer, PrivateKeyDer,
    pem::{self, PemObject},
};

/// Every certificate in `bytes`, in order (none: an empty list).
pub fn certs(bytes: &[u8]) -> io::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)
}

/// The first private key in `bytes` (PKCS#8, PKCS#1 or SEC1); None: there is none.
pub fn private_key(bytes: &[u8]) -> io::Result<Option<PrivateKeyDer<'static>>> {
    match PrivateKeyDer::from_pem_slice(bytes) {
        Ok(key) => Ok(Some(key)),
        Err(pem::Error::NoItemsFound) => Ok(None),
        Err(e) => Err(invalid(e)),
    }
}

fn invalid(e: pem::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_and_keys_from_pem_and_their_absence() {
        let text = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/jwt/rsa1.pem"
        ))
        .expect("fixture");
        assert!(private_key(&text).expect("parses").is_some());
        assert!(
            certs(&text).expect("parses").is_empty(),
            "a key file holds no certificate"
        );
        assert!(private_key(b"no pem here").expect("nothing").is_none());
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(
            certs(broken).is_err(),
            "bad base64 is an error, not silence"
        );
    }
}
