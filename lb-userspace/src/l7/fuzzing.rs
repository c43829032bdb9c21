//! What the fuzz targets in `fuzz/` run: one function per parser that reads client (or
//! network) input, each feeding it the fuzzer's bytes and panicking when an invariant breaks
//! (a panic of the parser itself is the first such failure). Here rather than in `fuzz/` so
//! the checks see the crate's internals without making them public, and so `cargo test`
//! replays the committed seed corpora through them (the test at the end).
//!
//! Several targets take their first byte as a "shape" byte (how to split the rest into reads,
//! which options to use): the seed corpora start with one.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, Waker},
};

use hyper::{
    HeaderMap, Method, Uri, Version,
    header::{HeaderName, HeaderValue},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{
    egress::{auth, target},
    headers,
    hygiene::{BAD_REQUEST, HeadGuard, HeadScanner},
    policy::{api_key, jwt as jwt_policy},
    proxy_header::{self, ProxyVersion},
    stream::sni::{ClientHelloError, ClientHelloReader, MAX_CLIENT_HELLO},
};
use crate::config::{
    Config,
    api_keys::{self, Consumers},
    checks,
    jwt_provider::{JwtProviderConfig, KeySource},
};

/// Splits `data` into reads whose lengths follow from `shape` (1 to 64 bytes, varying).
fn reads(shape: u8, data: &[u8]) -> Vec<&[u8]> {
    let mut state = u32::from(shape) | 1;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // A small LCG: the same shape byte always gives the same split.
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let len = usize::try_from((state >> 16) % 64 + 1)
            .unwrap_or(1)
            .min(rest.len());
        let (read, after) = rest.split_at(len);
        out.push(read);
        rest = after;
    }
    out
}

/// PROXY v1/v2 headers (`proxy_header`): the length is "need more" for every shorter prefix
/// of a header it accepts, and a parsed header's addresses round-trip through `encode` (v1
/// and v2, with and without the flow id TLV).
pub fn proxy_header(data: &[u8]) {
    let Ok(Some(len)) = proxy_header::header_len(data) else {
        return;
    };
    assert!(len <= data.len(), "header longer than the bytes");
    for shorter in 0..len {
        assert_eq!(
            proxy_header::header_len(&data[..shorter]),
            Ok(None),
            "a prefix of an accepted header ({shorter} of {len} bytes) was not 'need more'"
        );
    }
    let Ok(Some(addresses)) = proxy_header::parse(&data[..len]) else {
        return;
    };
    assert_eq!(
        addresses.source.is_ipv4(),
        addresses.destination.is_ipv4(),
        "one header, two address families"
    );
    for (version, flow_id) in [
        (ProxyVersion::V1, None),
        (ProxyVersion::V2, None),
        (ProxyVersion::V2, Some(0x0102_0304_0506_0708)),
    ] {
        let encoded =
            proxy_header::encode(version, addresses.source, addresses.destination, flow_id);
        assert_eq!(
            proxy_header::header_len(&encoded),
            Ok(Some(encoded.len())),
            "{version:?}: encoded length"
        );
        assert_eq!(
            proxy_header::parse(&encoded),
            Ok(Some(addresses)),
            "{version:?}: addresses do not round-trip"
        );
    }
}

/// A client stream that hands out scripted reads and keeps what is written to it.
struct ScriptedClient<'a> {
    reads: std::vec::IntoIter<&'a [u8]>,
    /// The rest of a read larger than the reader's buffer.
    pending: &'a [u8],
    written: Vec<u8>,
}

impl AsyncRead for ScriptedClient<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            self.pending = self.reads.next().unwrap_or_default();
        }
        let n = self.pending.len().min(buf.remaining());
        let (now, later) = self.pending.split_at(n);
        buf.put_slice(now);
        self.pending = later;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ScriptedClient<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The request-head guard (`hygiene`): what it passes on is the client's bytes in order, up
/// to the read holding a violation and none of that read; a refused connection gets the 400
/// and nothing more passes. The scanner judges a stream the same whole, byte by byte and in
/// any split, and holds at most its limit plus one read.
pub fn head_guard(data: &[u8]) {
    let Some((&shape, data)) = data.split_first() else {
        return;
    };
    let split = reads(shape, data);

    // The guard, as hyper reads through it.
    let max_head = 64 * 1024;
    let mut guard = HeadGuard::new(
        ScriptedClient {
            reads: split.clone().into_iter(),
            pending: &[],
            written: Vec::new(),
        },
        max_head,
    );
    let mut cx = Context::from_waker(Waker::noop());
    let mut passed = Vec::new();
    let mut refused = false;
    let mut storage = [0u8; 8192];
    loop {
        let mut buf = ReadBuf::new(&mut storage);
        match Pin::new(&mut guard).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
            Poll::Ready(Ok(())) => passed.extend_from_slice(buf.filled()),
            Poll::Ready(Err(_)) => {
                refused = true;
                break;
            }
            Poll::Pending => unreachable!("the scripted client is always ready"),
        }
    }
    assert!(data.starts_with(&passed), "the guard passed bytes not sent");
    let mut whole = HeadScanner::new(max_head);
    let whole_result = whole.feed(data);
    if refused {
        let mut buf = ReadBuf::new(&mut storage);
        assert!(
            matches!(
                Pin::new(&mut guard).poll_read(&mut cx, &mut buf),
                Poll::Ready(Err(_))
            ),
            "a refused connection read on"
        );
        let mut before = HeadScanner::new(max_head);
        assert_eq!(
            before.feed(&passed),
            Ok(()),
            "bytes passed before a refusal hold a violation"
        );
        if data.len() <= max_head {
            assert!(whole_result.is_err(), "refused a stream that is fine whole");
        }
    } else {
        assert_eq!(passed, data, "the guard held bytes back");
        if data.len() <= max_head {
            assert_eq!(whole_result, Ok(()), "passed a stream refused whole");
        }
    }
    let mut client = guard.into_inner();
    let expected: &[u8] = if refused { BAD_REQUEST } else { &[] };
    assert_eq!(
        client.written.as_slice(),
        expected,
        "what the client was told"
    );
    client.written.clear();

    // The scanner alone: whole, byte by byte, in the shape's reads (heads within the limit).
    let mut bytewise = HeadScanner::new(max_head);
    let bytewise_result = data.iter().try_for_each(|b| bytewise.feed(&[*b]));
    let mut in_reads = HeadScanner::new(max_head);
    let reads_result = split.iter().try_for_each(|read| in_reads.feed(read));
    assert_eq!(whole_result, bytewise_result, "whole vs byte by byte");
    assert_eq!(whole_result, reads_result, "whole vs in reads");
    if whole_result.is_ok() {
        let state = format!("{whole:?}");
        assert_eq!(state, format!("{bytewise:?}"), "whole vs byte by byte");
        assert_eq!(state, format!("{in_reads:?}"), "whole vs in reads");
    }

    // A small limit: what the scanner holds stays bounded by it and the last read.
    let small = 64;
    let mut limited = HeadScanner::new(small);
    for read in &split {
        if limited.feed(read).is_err() {
            break;
        }
        assert!(
            limited.buffered() <= small.max(1024) + read.len(),
            "holds {} bytes with a limit of {small}",
            limited.buffered()
        );
    }
}

/// The ClientHello reader of TLS passthrough (`stream/sni.rs`): a hello read whole is read
/// the same in any split (the same server name, at most the same bytes, which start the
/// stream), and the name is lowercase.
pub fn client_hello(data: &[u8]) {
    let Some((&shape, data)) = data.split_first() else {
        return;
    };
    let whole = ClientHelloReader::new(Vec::new()).push(data);
    // The first read as the initial bytes (the forward proxy's CONNECT leftovers).
    let split = reads(shape, data);
    let mut chunks = split.iter();
    let mut reader = ClientHelloReader::new(chunks.next().map(|c| c.to_vec()).unwrap_or_default());
    let mut in_reads = reader.push(&[]);
    for chunk in chunks {
        if !matches!(in_reads, Ok(None)) {
            break;
        }
        in_reads = reader.push(chunk);
    }
    for hello in [&whole, &in_reads].into_iter().flatten().flatten() {
        assert!(
            data.starts_with(&hello.bytes),
            "hello bytes not the stream's start"
        );
        if let Some(name) = &hello.server_name {
            assert_eq!(
                *name,
                name.to_ascii_lowercase(),
                "server name not lowercased"
            );
        }
    }
    if let Ok(Some(whole)) = &whole {
        match &in_reads {
            Ok(Some(split)) => {
                assert_eq!(whole.server_name, split.server_name, "whole vs in reads");
                assert!(split.bytes.len() <= whole.bytes.len());
            }
            other => panic!(
                "a hello read whole was not read in reads: {:?}",
                other.as_ref().map(|h| h.as_ref().map(|h| h.bytes.len()))
            ),
        }
    }
    if data.len() > MAX_CLIENT_HELLO {
        assert!(
            matches!(whole, Err(ClientHelloError::TooLarge)),
            "more than the largest hello, not refused as too large"
        );
    }
}

/// The backend file (`lb check-config`'s parse and warnings): errors name a line of the file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    if let Err(e) = Config::parse(text, path) {
        assert!(
            e.line <= text.lines().count() + 1,
            "error line {} past the end: {e}",
            e.line
        );
    }
    let _ = checks::warnings(text, path);
}

/// The provider the JWT target verifies against: an Ed25519 key in a static JWKS (the
/// private half of which signed the seed corpus's tokens).
const FUZZ_JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"fuzz","alg":"EdDSA","x":"0Bk4XlwzbIJPqP8LFpMCIr---997yDc505PoeMASgV0"}]}"#;
const FUZZ_ISSUER: &str = "https://issuer.fuzz.invalid/";

/// JWTs (`jwt` policy and provider): an Authorization value's bearer token (else the whole
/// text as a token) verified against a static key set; an accepted token has our issuer and
/// an `exp`, and its claims print as header text. The bytes are also read as a JWKS.
pub fn jwt(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::l7::jwt::KeySet::parse(text, &JWT_ALGORITHMS);
    let (runtime, provider) = jwt_provider();
    let token = jwt_policy::bearer(text).unwrap_or(text);
    if let Some(token) = jwt_policy::bearer(text) {
        assert!(
            !token.is_empty() && !token.contains(' '),
            "bearer {token:?}"
        );
    }
    let Ok(claims) = runtime.block_on(provider.verify(token)) else {
        return;
    };
    assert_eq!(
        claims.get("iss").and_then(|v| v.as_str()),
        Some(FUZZ_ISSUER),
        "accepted a token of another issuer"
    );
    assert!(claims.contains_key("exp"), "accepted a token without exp");
    for value in claims.values() {
        let _ = jwt_policy::claim_text(value);
    }
}

const JWT_ALGORITHMS: [jsonwebtoken::Algorithm; 2] = [
    jsonwebtoken::Algorithm::EdDSA,
    jsonwebtoken::Algorithm::ES256,
];

/// The JWT target's provider (`FUZZ_JWKS`) and the runtime its verifications run on.
fn jwt_provider() -> &'static (tokio::runtime::Runtime, Arc<crate::l7::jwt::JwtProvider>) {
    static PROVIDER: OnceLock<(tokio::runtime::Runtime, Arc<crate::l7::jwt::JwtProvider>)> =
        OnceLock::new();
    PROVIDER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        let provider = crate::l7::jwt::JwtProvider::new(
            JwtProviderConfig {
                name: "fuzz".into(),
                issuer: FUZZ_ISSUER.into(),
                audiences: vec!["api".into()],
                algorithms: JWT_ALGORITHMS.to_vec(),
                keys: KeySource::File {
                    path: "fuzz-jwks.json".into(),
                    jwks: FUZZ_JWKS.into(),
                },
                ca_file: None,
                clock_skew: std::time::Duration::from_secs(60),
                cache_min: std::time::Duration::from_secs(60),
                cache_max: std::time::Duration::from_secs(3600),
                refetch_cooldown: std::time::Duration::from_secs(30),
                fetch_timeout: std::time::Duration::from_secs(1),
            },
            None,
        );
        assert_eq!(provider.key_count(), 1, "the fuzz JWKS has one key");
        (runtime, provider)
    })
}

/// API keys (`api_key` policy): from the header (one value) or the query parameter (one,
/// percent-decoded); only the known key finds its consumer. The bytes are the header value,
/// then after the first NUL the query.
pub fn api_key(data: &[u8]) {
    static CONSUMERS: OnceLock<Consumers> = OnceLock::new();
    const KEY: &str = "fuzz-key-1";
    let consumers = CONSUMERS.get_or_init(|| {
        let text = format!("[[consumer]]\nname = \"acme\"\nkey = \"{KEY}\"\n");
        api_keys::parse(&text, Path::new("consumers.toml")).expect("the fuzz consumers parse")
    });
    let (value, query) = match data.iter().position(|b| *b == 0) {
        Some(nul) => (&data[..nul], Some(&data[nul + 1..])),
        None => (data, None),
    };
    let query = query.and_then(|q| std::str::from_utf8(q).ok());
    let name = HeaderName::from_static("x-api-key");
    let mut headers = HeaderMap::new();
    for line in value.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(name.clone(), v);
        }
    }
    let found = api_key::credential(&headers, Some(&name), query, Some("apikey"));
    let key: &[u8] = match &found {
        Ok(Some(api_key::Found::Header(key))) => {
            assert_eq!(headers.get_all(&name).iter().count(), 1);
            assert_eq!(*key, key.trim_ascii(), "header key not trimmed");
            key
        }
        Ok(Some(api_key::Found::Query(key))) => {
            assert!(
                query.is_some_and(|q| key.len() <= q.len()),
                "decoded key longer than the query"
            );
            key
        }
        Ok(None) | Err(()) => return,
    };
    assert!(!key.is_empty(), "an empty key was found");
    let found = consumers.find(key);
    assert_eq!(found.is_some(), key == KEY.as_bytes(), "key {key:?}");
}

/// X-Forwarded-For (`headers`): the client is the peer unless the peer is trusted, and else
/// an address the header names; the list sent on is one line ending with the peer. The first
/// byte picks the peer; the rest are X-Forwarded-For lines (split at LF).
pub fn forwarded(data: &[u8]) {
    let Some((&shape, data)) = data.split_first() else {
        return;
    };
    let trusted: Vec<ipnet::IpNet> = ["10.0.0.0/8", "192.168.0.0/16", "::1/128", "fd00::/8"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    let peers: [IpAddr; 4] = [
        IpAddr::from([10, 0, 0, 1]),
        IpAddr::from([203, 0, 113, 7]),
        IpAddr::from(Ipv6Addr::LOCALHOST),
        IpAddr::from(Ipv4Addr::new(192, 168, 1, 1).to_ipv6_mapped()),
    ];
    let peer = peers[usize::from(shape) % peers.len()];
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(headers::X_FORWARDED_FOR, v);
        }
    }
    let client = headers::client_ip(peer, &headers, &trusted);
    let is_trusted = trusted.iter().any(|n| n.contains(&peer.to_canonical()));
    if !is_trusted {
        assert_eq!(client, peer, "an untrusted peer's header was believed");
    } else if client != peer {
        let named = headers
            .get_all(headers::X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|hop| {
                let hop = hop.trim();
                hop.parse::<IpAddr>().ok() == Some(client)
                    || hop.parse::<SocketAddr>().ok().map(|s| s.ip()) == Some(client)
            });
        assert!(named, "client {client} is not in the header");
    }
    let peer_text = headers::AddrText::new(peer);
    headers::set_forwarded(&mut headers, &peer_text, client, "http", None, || {
        HeaderValue::from_static("fuzz")
    });
    let lines: Vec<&HeaderValue> = headers.get_all(headers::X_FORWARDED_FOR).iter().collect();
    assert_eq!(
        lines.len(),
        1,
        "X-Forwarded-For sent on as {} lines",
        lines.len()
    );
    assert!(
        lines[0].as_bytes().ends_with(peer_text.text.as_bytes()),
        "X-Forwarded-For does not end with the peer: {:?}",
        lines[0]
    );
}

/// The forward proxy's request targets (`egress/target.rs`): an accepted target has a port
/// and a host (a name lowercase and made of DNS label characters, or an address), and its
/// `authority` (with the origin-form path, for absolute form) parses back to the same target.
/// The first byte picks HTTP/1.0 or 1.1 and whether HTTP/1.0 CONNECT is allowed.
pub fn forward_target(data: &[u8]) {
    let Some((&shape, data)) = data.split_first() else {
        return;
    };
    let Ok(uri) = Uri::try_from(data) else {
        return;
    };
    let version = if shape & 1 == 0 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let http10 = shape & 2 != 0;
    // Brackets hold an IPv6 address (RFC 3986 IP-literal), never a name.
    let bracketed = uri.authority().is_some_and(|a| a.as_str().contains('['));
    if let Ok(t) = target::connect(version, &uri, http10) {
        check_target(&t);
        if bracketed {
            assert!(
                matches!(t.ip, Some(IpAddr::V6(_))),
                "brackets around {:?}",
                t.host
            );
        }
        let again: Uri = t.authority().parse().expect("an authority parses as a URI");
        assert_eq!(
            target::connect(Version::HTTP_11, &again, false),
            Ok(t),
            "CONNECT target does not round-trip"
        );
    }
    if let Ok((t, path)) = target::absolute(&Method::GET, &uri) {
        check_target(&t);
        if bracketed {
            assert!(
                matches!(t.ip, Some(IpAddr::V6(_))),
                "brackets around {:?}",
                t.host
            );
        }
        assert!(path.starts_with('/'), "origin-form path {path:?}");
        let again: Uri = format!("http://{}{path}", t.authority())
            .parse()
            .expect("authority and path parse as a URI");
        assert_eq!(
            target::absolute(&Method::GET, &again),
            Ok((t, path)),
            "absolute-form target does not round-trip"
        );
    }
}

fn check_target(t: &target::Target) {
    assert_ne!(t.port, 0);
    match t.ip {
        Some(ip) => assert_eq!(t.host, ip.to_string()),
        None => {
            assert!(!t.host.is_empty() && t.host.len() <= 253);
            assert!(
                t.host
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)),
                "host {:?}",
                t.host
            );
        }
    }
}

/// `Proxy-Authorization: Basic` (`egress/auth.rs`): accepted credentials encode back to a
/// value that decodes to the same user and password; a user never holds ':'.
pub fn proxy_authorization(data: &[u8]) {
    use base64::Engine;
    let Some((user, password)) = auth::basic(data) else {
        return;
    };
    assert!(!user.contains(':'), "user {user:?}");
    let again = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    assert_eq!(
        auth::basic(again.as_bytes()),
        Some((user, password)),
        "credentials do not round-trip"
    );
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// The JWT seeds reach the accepting path (where the target's claims checks are).
    #[test]
    fn the_signed_seed_token_verifies_and_the_others_do_not() {
        let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/jwt");
        let (runtime, provider) = super::jwt_provider();
        for (seed, valid) in [
            ("seed-valid", true),
            ("seed-nokid", true),
            ("seed-expired", false),
            ("seed-otheriss", false),
            ("seed-none", false),
        ] {
            let token = std::fs::read_to_string(corpus.join(seed)).expect("a seed token");
            let verified = runtime.block_on(provider.verify(token.trim()));
            assert_eq!(verified.is_ok(), valid, "{seed}: {verified:?}");
        }
    }

    /// Every committed seed (and any crash input saved next to them) through its target.
    #[test]
    fn seed_corpora_keep_their_invariants() {
        let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 9] = [
            ("proxy_header", super::proxy_header),
            ("head_guard", super::head_guard),
            ("client_hello", super::client_hello),
            ("config", super::config),
            ("jwt", super::jwt),
            ("api_key", super::api_key),
            ("forwarded", super::forwarded),
            ("forward_target", super::forward_target),
            ("proxy_authorization", super::proxy_authorization),
        ];
        for (name, target) in targets {
            let dir = corpus.join(name);
            let mut seeds = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = entry.expect("a corpus entry").path();
                let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
                target(&data);
                seeds += 1;
            }
            assert!(seeds > 0, "{name}: no seeds in {dir:?}");
        }
    }
}
