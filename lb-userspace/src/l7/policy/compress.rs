//! `compress`: per-route response compression (gzip, brotli, zstd), the first response-body
//! policy (pipeline phase 6).
//!
//! ```toml
//! [route.compress]
//! algorithms = ["zstd", "br", "gzip"]  # server preference order (ties in q); default all three
//! min_size = 1024                      # bytes; a smaller Content-Length is left alone
//! types = ["text/*", "application/json"]   # default: DEFAULT_TYPES
//! level = "default"                    # fastest / default / best
//! ```
//!
//! The request phase negotiates the encoding from Accept-Encoding (`negotiate`, kept in
//! `RequestCtx::compress`); the response phase decides whether this response may be
//! compressed (`Compress::apply`) and wraps its body in `body::CompressedBody`, which streams
//! (no whole-body buffering). Never compressed: a response with Content-Encoding or
//! Content-Range, 206, the answer to a Range request, 1xx/204/304, `text/event-stream`,
//! `Cache-Control: no-transform`, a type not in `types`, a Content-Length under `min_size`.
//! A compressed response loses Content-Length and Accept-Ranges, gains Content-Encoding,
//! `Vary: Accept-Encoding` (merged, once) and has a strong ETag weakened (`W/`): its bytes
//! are no longer the backend's. A compressible response that is sent uncompressed (the client
//! accepted no configured encoding) still gets the Vary. HEAD answers get the same headers
//! as GET would, without body work.
use std::ops::Range;

use hyper::{
    HeaderMap, Method, Request, Response, StatusCode,
    body::Body as _,
    header::{self, HeaderValue},
};
use serde::Deserialize;
use toml::Spanned;

use crate::{
    config::ConfigError,
    l7::{headers::add_vary, pool::ProxyBody},
};

pub mod body;

/// A content coding lb can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    Gzip,
    Brotli,
    Zstd,
}

impl Encoding {
    /// The Content-Encoding token.
    pub fn token(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Brotli => "br",
            Self::Zstd => "zstd",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "gzip" => Some(Self::Gzip),
            "br" => Some(Self::Brotli),
            "zstd" => Some(Self::Zstd),
            _ => None,
        }
    }

    /// Whether an Accept-Encoding coding names this one (`x-gzip` is gzip, RFC 9110 8.4.1.3).
    fn named_by(self, coding: &str) -> bool {
        coding.eq_ignore_ascii_case(self.token())
            || (self == Self::Gzip && coding.eq_ignore_ascii_case("x-gzip"))
    }
}

/// Speed against size, per codec (`body::encoder` maps it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Level {
    Fastest,
    /// gzip 6, brotli 4 (brotli's own default, 11, is too slow for live responses), zstd 3.
    #[default]
    Default,
    Best,
}

/// A media-type pattern: `type/subtype` or `type/*` (lowercase).
#[derive(Clone, Debug, PartialEq, Eq)]
enum TypePattern {
    Exact(String),
    /// `text/*`: the type, with its slash (`text/`).
    Prefix(String),
}

impl TypePattern {
    fn matches(&self, essence: &str) -> bool {
        match self {
            Self::Exact(t) => essence == t,
            Self::Prefix(p) => essence.starts_with(p.as_str()),
        }
    }
}

/// The types compressed when `types` is not given (tower-http / NGINX-style text formats).
pub const DEFAULT_TYPES: [&str; 11] = [
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/ld+json",
    "application/manifest+json",
    "application/wasm",
    "image/svg+xml",
];

/// The default `min_size`, in bytes.
pub const DEFAULT_MIN_SIZE: u64 = 1024;

/// One route's compression, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compress {
    /// Server preference order, no duplicates.
    algorithms: Vec<Encoding>,
    min_size: u64,
    types: Vec<TypePattern>,
    level: Level,
}

/// What the request phase found for a route with `compress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The encoding the client accepts best (None: uncompressed).
    pub encoding: Option<Encoding>,
    /// A HEAD request: headers as for GET, no body work.
    pub head: bool,
    /// A Range request: its answer is never compressed.
    pub range: bool,
}

impl Compress {
    pub fn algorithms(&self) -> &[Encoding] {
        &self.algorithms
    }

    pub fn min_size(&self) -> u64 {
        self.min_size
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// Whether `types` lists the media type `essence` (lowercase `type/subtype`).
    pub fn lists_type(&self, essence: &str) -> bool {
        self.types.iter().any(|t| t.matches(essence))
    }

    /// Request phase: what the request's Accept-Encoding, method and Range allow.
    pub fn negotiate<B>(&self, req: &Request<B>) -> Negotiated {
        Negotiated {
            encoding: negotiate(&self.algorithms, req.headers()),
            head: req.method() == Method::HEAD,
            range: req.headers().contains_key(header::RANGE),
        }
    }

    /// Whether this response's head allows compression at all (independent of the client).
    fn eligible(&self, response: &Response<ProxyBody>, head: bool) -> bool {
        let status = response.status();
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status == StatusCode::PARTIAL_CONTENT
        {
            return false;
        }
        let headers = response.headers();
        if headers.contains_key(header::CONTENT_ENCODING)
            || headers.contains_key(header::CONTENT_RANGE)
        {
            return false;
        }
        let no_transform = headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
            })
        });
        if no_transform {
            return false;
        }
        let Some(essence) = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim())
        else {
            return false;
        };
        let essence = essence.to_ascii_lowercase();
        if essence == "text/event-stream" || !self.types.iter().any(|t| t.matches(&essence)) {
            return false;
        }
        // The size: the declared length, else (a body lb made) the body's exact length;
        // unknown: compressed. A HEAD answer's body is empty whatever the length it declares.
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let size = match declared {
            Some(n) => Some(n),
            None if head => None,
            None => response.body().size_hint().exact(),
        };
        size.is_none_or(|n| n >= self.min_size)
    }

    /// Phase 6: compresses `response` when `negotiated` and the response allow it.
    pub fn apply(
        &self,
        mut response: Response<ProxyBody>,
        negotiated: Negotiated,
    ) -> Response<ProxyBody> {
        if negotiated.range || !self.eligible(&response, negotiated.head) {
            return response;
        }
        let headers = response.headers_mut();
        add_vary(headers, &["Accept-Encoding"]);
        let Some(encoding) = negotiated.encoding else {
            return response;
        };
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(encoding.token()),
        );
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::ACCEPT_RANGES);
        weaken_etag(headers);
        if negotiated.head {
            return response;
        }
        let level = self.level;
        response.map(|b| body::CompressedBody::wrap(b, encoding, level))
    }
}

/// A strong ETag names these exact bytes: the compressed body gets a weak one (`W/"x"`).
fn weaken_etag(headers: &mut HeaderMap) {
    let Some(etag) = headers.get(header::ETAG) else {
        return;
    };
    let bytes = etag.as_bytes();
    if bytes.starts_with(b"W/") {
        return;
    }
    let mut weak = Vec::with_capacity(bytes.len() + 2);
    weak.extend_from_slice(b"W/");
    weak.extend_from_slice(bytes);
    if let Ok(v) = HeaderValue::from_bytes(&weak) {
        headers.insert(header::ETAG, v);
    }
}

/// A q-value (RFC 9110 12.4.2) in thousandths; None: malformed.
fn qvalue(text: &str) -> Option<u16> {
    let text = text.trim();
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for i in 0..3 {
        let digit = frac.as_bytes().get(i).map_or(0, |d| u16::from(d - b'0'));
        thousandths = thousandths * 10 + digit;
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The best of `algorithms` the Accept-Encoding fields accept (RFC 9110 12.5.3): the highest
/// q (an explicit name over `*`; q=0 excludes), ties broken by `algorithms`' order. None: no
/// header, nothing acceptable, or the client rates `identity` above every acceptable one.
pub fn negotiate(algorithms: &[Encoding], headers: &HeaderMap) -> Option<Encoding> {
    // Per algorithm (by index) its explicit q; then `*`'s and identity's.
    let mut explicit = [None::<u16>; 3];
    let mut star = None;
    let mut identity = None;
    let mut any = false;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(text) = value.to_str() else { continue };
        any = true;
        for item in text.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            if coding.is_empty() {
                continue;
            }
            let mut q = Some(1000);
            for param in parts {
                if let Some((name, value)) = param.split_once('=')
                    && name.trim().eq_ignore_ascii_case("q")
                {
                    q = qvalue(value);
                }
            }
            // A malformed q: the item is ignored.
            let Some(q) = q else { continue };
            if coding == "*" {
                star = Some(q);
            } else if coding.eq_ignore_ascii_case("identity") {
                identity = Some(q);
            } else {
                for (i, a) in algorithms.iter().enumerate().take(3) {
                    if a.named_by(coding) {
                        // Listed twice: the higher counts.
                        explicit[i] = Some(explicit[i].map_or(q, |old: u16| old.max(q)));
                    }
                }
            }
        }
    }
    if !any {
        return None;
    }
    let mut best: Option<(Encoding, u16)> = None;
    for (i, a) in algorithms.iter().enumerate().take(3) {
        let q = explicit[i].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((*a, q));
        }
    }
    let (encoding, q) = best?;
    (identity.is_none_or(|i| q >= i)).then_some(encoding)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCompress {
    algorithms: Option<Vec<Spanned<String>>>,
    min_size: Option<Spanned<i64>>,
    types: Option<Vec<Spanned<String>>>,
    level: Option<Spanned<String>>,
}

fn type_pattern(text: &str) -> Option<TypePattern> {
    let text = text.trim().to_ascii_lowercase();
    let (kind, sub) = text.split_once('/')?;
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    if !token(kind) {
        return None;
    }
    if sub == "*" {
        return Some(TypePattern::Prefix(format!("{kind}/")));
    }
    token(sub).then(|| TypePattern::Exact(text.clone()))
}

pub(crate) fn compile(
    raw: &Spanned<RawCompress>,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Compress, ConfigError> {
    let r = raw.get_ref();
    let algorithms = match &r.algorithms {
        None => vec![Encoding::Zstd, Encoding::Brotli, Encoding::Gzip],
        Some(list) => {
            let mut out = Vec::new();
            for name in list {
                let Some(e) = Encoding::parse(name.get_ref()) else {
                    return Err(err(
                        name.span(),
                        format!(
                            "compress: unknown algorithm {:?} (use zstd, br, gzip)",
                            name.get_ref()
                        ),
                    ));
                };
                if out.contains(&e) {
                    return Err(err(
                        name.span(),
                        format!("compress: algorithm {:?} listed twice", name.get_ref()),
                    ));
                }
                out.push(e);
            }
            if out.is_empty() {
                return Err(err(
                    raw.span(),
                    "compress: algorithms is empty (remove compress to turn it off)".to_owned(),
                ));
            }
            out
        }
    };
    let min_size = match &r.min_size {
        None => DEFAULT_MIN_SIZE,
        Some(n) => u64::try_from(*n.get_ref()).map_err(|_| {
            err(
                n.span(),
                format!("compress: min_size {} is negative", n.get_ref()),
            )
        })?,
    };
    let types = match &r.types {
        None => DEFAULT_TYPES
            .iter()
            .filter_map(|t| type_pattern(t))
            .collect(),
        Some(list) => {
            let mut out = Vec::new();
            for t in list {
                let Some(p) = type_pattern(t.get_ref()) else {
                    return Err(err(
                        t.span(),
                        format!(
                            "compress: type {:?} is not type/subtype or type/*",
                            t.get_ref()
                        ),
                    ));
                };
                out.push(p);
            }
            if out.is_empty() {
                return Err(err(raw.span(), "compress: types is empty".to_owned()));
            }
            out
        }
    };
    let level = match r.level.as_ref().map(|l| (l, l.get_ref().as_str())) {
        None | Some((_, "default")) => Level::Default,
        Some((_, "fastest")) => Level::Fastest,
        Some((_, "best")) => Level::Best,
        Some((l, other)) => {
            return Err(err(
                l.span(),
                format!("compress: level {other:?} (use fastest, default, best)"),
            ));
        }
    };
    Ok(Compress {
        algorithms,
        min_size,
        types,
        level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn accept(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).expect("value"),
        );
        h
    }

    const ALL: [Encoding; 3] = [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip];

    #[test]
    fn negotiation() {
        use Encoding::*;
        for (header, want) in [
            ("gzip", Some(Gzip)),
            ("gzip, br", Some(Brotli)),
            ("gzip, br, zstd", Some(Zstd)),
            ("gzip;q=1, br;q=0.5", Some(Gzip)),
            ("gzip;q=0.2, br;q=0.2", Some(Brotli)),
            ("*", Some(Zstd)),
            ("*;q=0.5, zstd;q=0", Some(Brotli)),
            ("*;q=0", None),
            ("gzip;q=0", None),
            ("identity;q=0", None),
            ("identity;q=0, gzip", Some(Gzip)),
            ("identity, gzip;q=0.5", None),
            ("deflate, compress", None),
            ("", None),
            ("X-GZIP", Some(Gzip)),
            ("GZip ; Q=0.9", Some(Gzip)),
            ("gzip;q=2, br;q=0.1", Some(Brotli)),
            ("gzip;q=0.0001", None),
        ] {
            assert_eq!(negotiate(&ALL, &accept(header)), want, "{header:?}");
        }
        assert_eq!(negotiate(&ALL, &HeaderMap::new()), None);
        assert_eq!(
            negotiate(&[Gzip, Brotli], &accept("br, gzip, zstd")),
            Some(Gzip)
        );
        assert_eq!(negotiate(&[Gzip], &accept("br, zstd")), None);
    }

    #[test]
    fn vary_is_merged_once() {
        let mut h = HeaderMap::new();
        add_vary(&mut h, &["Accept-Encoding"]);
        add_vary(&mut h, &["Accept-Encoding"]);
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);
        let mut h = HeaderMap::new();
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        h.append(header::VARY, HeaderValue::from_static("Cookie"));
        add_vary(&mut h, &["Accept-Encoding"]);
        let v: Vec<_> = h.get_all(header::VARY).iter().collect();
        assert_eq!(v, ["Origin, Cookie, Accept-Encoding"]);
        let mut h = HeaderMap::new();
        h.insert(
            header::VARY,
            HeaderValue::from_static("origin, accept-encoding"),
        );
        add_vary(&mut h, &["Accept-Encoding"]);
        assert_eq!(h[header::VARY], "origin, accept-encoding");
    }

    #[test]
    fn etag_weakened() {
        let mut h = HeaderMap::new();
        h.insert(header::ETAG, HeaderValue::from_static("\"abc\""));
        weaken_etag(&mut h);
        assert_eq!(h[header::ETAG], "W/\"abc\"");
        weaken_etag(&mut h);
        assert_eq!(h[header::ETAG], "W/\"abc\"");
    }

    fn compiled(text: &str) -> Result<Compress, ConfigError> {
        #[derive(Deserialize)]
        struct Doc {
            c: Spanned<RawCompress>,
        }
        let doc: Doc = toml::from_str(text).expect("toml");
        let err = |span: Range<usize>, m: String| ConfigError::at(Path::new("t"), text, span, m);
        compile(&doc.c, &err)
    }

    #[test]
    fn config_errors_have_the_line() {
        for (text, reason) in [
            (
                "[c]\nalgorithms = [\"gzip\", \"lz4\"]\n",
                "unknown algorithm",
            ),
            ("[c]\nalgorithms = [\"gzip\", \"gzip\"]\n", "listed twice"),
            ("[c]\nmin_size = -1\n", "negative"),
            ("[c]\ntypes = [\"text\"]\n", "not type/subtype"),
            ("[c]\ntypes = [\"*/json\"]\n", "not type/subtype"),
            ("[c]\nlevel = \"max\"\n", "level"),
        ] {
            let e = compiled(text).expect_err(text);
            assert!(e.to_string().contains(reason), "{text}: {e}");
            assert_eq!(e.line, 2, "{text}: {e}");
        }
        let c = compiled("[c]\n").expect("defaults");
        assert_eq!(c.algorithms, ALL);
        assert_eq!(c.min_size, DEFAULT_MIN_SIZE);
        assert!(c.types.iter().any(|t| t.matches("text/html")));
        assert!(!c.types.iter().any(|t| t.matches("image/png")));
    }
}
