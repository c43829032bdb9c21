//! Client certificates (mTLS) on HTTPS listeners: the verifier a listener's `client_ca` and
//! `client_auth` keys describe (built while the file is read, so a bad CA file is a
//! configuration error with its line), and what a verified certificate says about the client
//! (`PeerCert`: one per connection, in every request's `ctx.identity.client_cert`).
//!
//! Upstream, a verified certificate travels in `X-Forwarded-Client-Cert`, in Envoy's format:
//! `Hash=<hex SHA-256 of the DER>;Subject="CN=client,O=Acme";URI=spiffe://...;DNS=a.example`.
//! When any listener verifies client certificates, every request's own copy of that header
//! is removed (`Proxy::identity_headers`), so a client cannot forge one on any listener.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use hyper::{
    Response, StatusCode,
    header::{HeaderName, HeaderValue},
};
use rustls::{
    RootCertStore,
    pki_types::CertificateDer,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};

use super::{
    answer::plain,
    context::{AuthResult, RequestCtx},
    pool::ProxyBody,
    upstream::tls::content_digest,
};
use crate::config::api_keys::{sha256, to_hex};

/// The header that carries a verified client certificate upstream.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// A listener's client-certificate verification.
#[derive(Clone)]
pub struct ClientAuth {
    /// `client_auth = "required"` (default): no certificate, no handshake. Optional: a
    /// client may send none, but one it sends must verify.
    pub required: bool,
    pub ca_file: PathBuf,
    /// Hash of the CA file's bytes: a reload with a rewritten file is a change.
    pub ca_digest: u64,
    pub verifier: Arc<dyn ClientCertVerifier>,
}

/// By the settings the verifier was built from.
impl PartialEq for ClientAuth {
    fn eq(&self, other: &Self) -> bool {
        self.required == other.required
            && self.ca_file == other.ca_file
            && self.ca_digest == other.ca_digest
    }
}

impl Eq for ClientAuth {}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("required", &self.required)
            .field("ca_file", &self.ca_file)
            .field("ca_digest", &self.ca_digest)
            .finish_non_exhaustive()
    }
}

/// Builds the verifier: client certificates must chain to a certificate of `ca_file` (PEM).
/// Errors are reasons for the configuration error.
pub fn client_auth(ca_file: &Path, required: bool) -> Result<ClientAuth, String> {
    let shown = || ca_file.display().to_string();
    let bytes = std::fs::read(ca_file).map_err(|e| format!("client_ca {:?}: {e}", shown()))?;
    let mut roots = RootCertStore::empty();
    let certs = crate::pem::certs(&bytes).map_err(|e| format!("client_ca {:?}: {e}", shown()))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("client_ca {:?}: {e}", shown()))?;
    }
    if roots.is_empty() {
        return Err(format!("client_ca {:?} holds no PEM certificate", shown()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    let verifier = builder
        .build()
        .map_err(|e| format!("client_ca {:?}: {e}", shown()))?;
    Ok(ClientAuth {
        required,
        ca_file: ca_file.to_owned(),
        ca_digest: content_digest(&bytes),
        verifier,
    })
}

/// What a verified client certificate says about the client.
#[derive(Debug)]
pub struct PeerCert {
    /// The subject's common name; without one, the first DNS name, then the first URI of
    /// the subject alternative names; else the subject as text.
    pub name: Arc<str>,
    /// The subject, RFC 4514 text (`CN=client,O=Acme`).
    pub subject: String,
    /// The `X-Forwarded-Client-Cert` value.
    pub header: HeaderValue,
}

impl PeerCert {
    /// Reads `der`, the end-entity certificate rustls verified (None: unparseable, which a
    /// verified certificate is not).
    pub fn from_der(der: &CertificateDer<'_>) -> Option<Self> {
        let cert = webpki::EndEntityCert::try_from(der).ok()?;
        let rdns = name_attributes(cert.subject())?;
        let subject = rfc4514(&rdns);
        let dns: Vec<&str> = cert.valid_dns_names().collect();
        let uris: Vec<&str> = cert.valid_uri_names().collect();
        let cn = rdns
            .iter()
            .flatten()
            .rev()
            .find(|a| a.oid == CN)
            .and_then(|a| a.text());
        let name = cn
            .or_else(|| dns.first().map(|s| (*s).to_owned()))
            .or_else(|| uris.first().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| subject.clone());
        let mut header = format!("Hash={}", to_hex(&sha256(der.as_ref())));
        header.push_str(";Subject=");
        header.push_str(&quoted(&subject));
        for uri in &uris {
            header.push_str(";URI=");
            header.push_str(&xfcc_value(uri));
        }
        for dns in &dns {
            header.push_str(";DNS=");
            header.push_str(&xfcc_value(dns));
        }
        let header = HeaderValue::from_str(&header).ok()?;
        Some(Self {
            name: Arc::from(name.as_str()),
            subject,
            header,
        })
    }
}

/// `client_cert = true` on a route: a verified client certificate, or 403.
pub(super) fn require(ctx: &mut RequestCtx<'_>) -> Option<Response<ProxyBody>> {
    let result = if ctx.identity.client_cert.is_some() {
        "allowed"
    } else {
        "missing"
    };
    ctx.auth = Some(AuthResult {
        policy: "client_cert",
        result,
    });
    if ctx.identity.client_cert.is_some() {
        return None;
    }
    Some(plain(
        StatusCode::FORBIDDEN,
        "client certificate required\n",
    ))
}

/// An XFCC value, quoted when it holds a separator.
fn xfcc_value(value: &str) -> String {
    if value.contains([',', ';', '=', '"']) {
        quoted(value)
    } else {
        value.to_owned()
    }
}

fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

// --- Reading a certificate's subject (DER) ---------------------------------------------

/// 2.5.4.3, commonName.
const CN: &[u8] = &[0x55, 0x04, 0x03];

/// Short names of the usual attribute types (RFC 4514 section 3, plus emailAddress).
const SHORT_NAMES: [(&[u8], &str); 11] = [
    (CN, "CN"),
    (&[0x55, 0x04, 0x05], "serialNumber"),
    (&[0x55, 0x04, 0x06], "C"),
    (&[0x55, 0x04, 0x07], "L"),
    (&[0x55, 0x04, 0x08], "ST"),
    (&[0x55, 0x04, 0x09], "STREET"),
    (&[0x55, 0x04, 0x0a], "O"),
    (&[0x55, 0x04, 0x0b], "OU"),
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
        "DC",
    ),
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01],
        "UID",
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
        "emailAddress",
    ),
];

/// One attribute of a name: its type (OID content bytes) and value (tag, content).
struct Attribute<'a> {
    oid: &'a [u8],
    tag: u8,
    value: &'a [u8],
    /// The whole value TLV (for `#hex` of values that are not strings).
    encoded: &'a [u8],
}

impl Attribute<'_> {
    /// The value as text, when it is one of the string types.
    fn text(&self) -> Option<String> {
        match self.tag {
            // UTF8String, PrintableString, IA5String, (Numeric, Visible)String.
            0x0c | 0x13 | 0x16 | 0x12 | 0x1a => {
                std::str::from_utf8(self.value).ok().map(str::to_owned)
            }
            // TeletexString: in practice Latin-1.
            0x14 => Some(self.value.iter().map(|&b| char::from(b)).collect()),
            // BMPString: UTF-16BE.
            0x1e => {
                let units: Vec<u16> = self
                    .value
                    .chunks_exact(2)
                    .map(|p| u16::from_be_bytes([p[0], p[1]]))
                    .collect();
                String::from_utf16(&units).ok()
            }
            _ => None,
        }
    }
}

/// One DER element: tag, content, what follows it, and the whole element.
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// The first DER element of `input`. Only what names use: one-byte tags, definite lengths
/// up to 4 bytes.
fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some((tag, &rest[..len], &rest[len..], &input[..header + len]))
}

/// The RDNs of a Name's content (webpki's `subject()`: without the outer SEQUENCE), each a
/// list of attributes, in DER order.
fn name_attributes(mut input: &[u8]) -> Option<Vec<Vec<Attribute<'_>>>> {
    let mut rdns = Vec::new();
    while !input.is_empty() {
        let (tag, mut set, rest, _) = tlv(input)?;
        input = rest;
        if tag != 0x31 {
            return None;
        }
        let mut rdn = Vec::new();
        while !set.is_empty() {
            let (tag, seq, rest, _) = tlv(set)?;
            set = rest;
            if tag != 0x30 {
                return None;
            }
            let (oid_tag, oid, after, _) = tlv(seq)?;
            if oid_tag != 0x06 {
                return None;
            }
            let (tag, value, _, encoded) = tlv(after)?;
            rdn.push(Attribute {
                oid,
                tag,
                value,
                encoded,
            });
        }
        rdns.push(rdn);
    }
    Some(rdns)
}

/// RFC 4514 text: RDNs last first, multi-valued ones joined by `+`.
fn rfc4514(rdns: &[Vec<Attribute<'_>>]) -> String {
    let mut out = String::new();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, a) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match SHORT_NAMES.iter().find(|(oid, _)| *oid == a.oid) {
                Some((_, short)) => out.push_str(short),
                None => out.push_str(&dotted(a.oid)),
            }
            out.push('=');
            match a.text() {
                Some(text) => escape_value(&text, &mut out),
                None => {
                    out.push('#');
                    out.push_str(&to_hex(a.encoded));
                }
            }
        }
    }
    out
}

fn escape_value(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
}

/// An OID's dotted text.
fn dotted(oid: &[u8]) -> String {
    let mut parts: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    for &b in oid {
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let first = (value / 40).min(2);
                parts.push(first);
                parts.push(value - first * 40);
            } else {
                parts.push(value);
            }
            value = 0;
        }
    }
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (oid, tag, value)
    type Attr<'a> = (&'a [u8], u8, &'a [u8]);

    /// A Name's content: RDNs of attributes.
    fn name(rdns: &[&[Attr<'_>]]) -> Vec<u8> {
        let wrap = |tag: u8, content: Vec<u8>| {
            let mut out = vec![tag, u8::try_from(content.len()).expect("short")];
            out.extend(content);
            out
        };
        let mut out = Vec::new();
        for rdn in rdns {
            let mut set = Vec::new();
            for (oid, tag, value) in *rdn {
                let mut seq = wrap(0x06, oid.to_vec());
                seq.extend(wrap(*tag, value.to_vec()));
                set.extend(wrap(0x30, seq));
            }
            out.extend(wrap(0x31, set));
        }
        out
    }

    #[test]
    fn subjects_read_as_rfc4514_text() {
        let der = name(&[
            &[(&[0x55, 0x04, 0x06], 0x13, b"DE")],
            &[(&[0x55, 0x04, 0x0a], 0x0c, b"Acme, Inc.")],
            &[
                (CN, 0x0c, b"client one"),
                (&[0x2a, 0x03, 0x04], 0x02, &[0x05]),
            ],
        ]);
        let rdns = name_attributes(&der).expect("parses");
        assert_eq!(
            rfc4514(&rdns),
            "CN=client one+1.2.3.4=#020105,O=Acme\\, Inc.,C=DE"
        );
        assert_eq!(
            dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]),
            "1.2.840.113549"
        );
    }

    #[test]
    fn broken_names_are_refused_not_panicked_on() {
        for bad in [
            &[0x31][..],
            &[0x31, 0x05, 0x30],
            &[0x31, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x00],
            &[0x31, 0x02, 0x30, 0x00],
        ] {
            assert!(name_attributes(bad).is_none(), "{bad:?}");
        }
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(xfcc_value("spiffe://x/y"), "spiffe://x/y");
        assert_eq!(xfcc_value("a;b"), "\"a;b\"");
    }
}
