//! `api_key`: the route admits only requests carrying a known consumer's API key (Envoy's
//! `api_key_auth`, Kong's `key-auth`). Consumers come from the `[api_keys]` file
//! (`config/api_keys.rs`).
//!
//! ```toml
//! [[route]]
//! api_key = { header = "x-api-key", allow = ["acme", "globex"] }
//! # header = "x-api-key"         # where the key is (default, when no query is given)
//! # query = "apikey"             # or a query parameter (with header: the header first)
//! # allow = [...]                # consumers admitted (default: every known consumer)
//! # consumer_header = "x-consumer"  # carries the consumer's name upstream
//! # forward = false              # true: the key goes upstream too
//! ```
//!
//! Missing, ambiguous (given twice) or unknown key: 401 with `WWW-Authenticate: ApiKey`; a
//! known consumer not in `allow`: 403. Admitted: the consumer's name goes to
//! `ctx.identity.consumer` (for the policies after this one and the access log) and to
//! `consumer_header` upstream (a client's own copy of that header never reaches the backend,
//! on any route: `Proxy` strips every route's consumer header); the key is taken off the
//! request. Keys are compared as SHA-256 digests, in constant time.
use std::{ops::Range, sync::Arc};

use bytes::Bytes;
use hyper::{
    HeaderMap, Request, Response, StatusCode, Uri,
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
    http::uri::PathAndQuery,
};
use serde::Deserialize;
use toml::Spanned;

use crate::l7::answer::plain;
use crate::{
    config::{ConfigError, api_keys::Consumers},
    l7::{
        context::{AuthResult, RequestCtx},
        pool::ProxyBody,
    },
};

/// The default `consumer_header`.
pub const CONSUMER_HEADER: &str = "x-consumer";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    consumers: Arc<Consumers>,
    header: Option<HeaderName>,
    query: Option<String>,
    /// By consumer entry index: admitted (None: every known consumer).
    allowed: Option<Vec<bool>>,
    consumer_header: HeaderName,
    forward: bool,
}

/// Where the key was found.
pub(crate) enum Found<'a> {
    Header(&'a [u8]),
    /// The decoded value.
    Query(Vec<u8>),
}

impl ApiKey {
    /// The header that carries the consumer upstream (stripped from client requests).
    pub fn consumer_header(&self) -> &HeaderName {
        &self.consumer_header
    }

    /// The header the key is read from.
    pub fn header(&self) -> Option<&HeaderName> {
        self.header.as_ref()
    }

    /// The query parameter the key is read from.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The consumers admitted (None: every known one), in consumers-file order.
    pub fn allowed(&self) -> Option<Vec<&str>> {
        let allowed = self.allowed.as_ref()?;
        let mut names: Vec<&str> = self
            .consumers
            .entries()
            .iter()
            .zip(allowed)
            .filter(|(_, a)| **a)
            .map(|(c, _)| &*c.name)
            .collect();
        names.dedup();
        Some(names)
    }

    /// Whether the key goes upstream too.
    pub fn forwards_key(&self) -> bool {
        self.forward
    }

    /// None: admitted (the request edited, `ctx` told who it is); else lb's 401 or 403.
    pub fn check(
        &self,
        req: &mut Request<Incoming>,
        ctx: &mut RequestCtx<'_>,
    ) -> Option<Response<ProxyBody>> {
        let outcome = |result| AuthResult {
            policy: "api_key",
            result,
        };
        let found = match credential(
            req.headers(),
            self.header.as_ref(),
            req.uri().query(),
            self.query.as_deref(),
        ) {
            Ok(Some(found)) => found,
            Ok(None) => {
                ctx.auth = Some(outcome("missing"));
                return Some(unauthorized("API key missing\n"));
            }
            Err(()) => {
                ctx.auth = Some(outcome("invalid"));
                return Some(unauthorized("API key given more than once\n"));
            }
        };
        let key = match &found {
            Found::Header(bytes) => bytes,
            Found::Query(bytes) => bytes.as_slice(),
        };
        let Some((index, consumer)) = self.consumers.find(key) else {
            ctx.auth = Some(outcome("invalid"));
            return Some(unauthorized("API key invalid\n"));
        };
        ctx.identity.consumer = Some(consumer.name.clone());
        let admitted = self
            .allowed
            .as_ref()
            .is_none_or(|a| a.get(index).copied().unwrap_or(false));
        if !admitted {
            ctx.auth = Some(outcome("forbidden"));
            return Some(answer(StatusCode::FORBIDDEN, "consumer not allowed\n"));
        }
        ctx.auth = Some(outcome("allowed"));
        let value = consumer.value.clone();
        if !self.forward {
            match found {
                Found::Header(_) => {
                    if let Some(name) = &self.header {
                        req.headers_mut().remove(name);
                    }
                }
                Found::Query(_) => self.remove_query(req),
            }
        }
        req.headers_mut()
            .insert(self.consumer_header.clone(), value);
        None
    }

    /// Takes the key's parameter out of the request's query.
    fn remove_query(&self, req: &mut Request<Incoming>) {
        let (Some(param), Some(query)) = (&self.query, req.uri().query()) else {
            return;
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| pair_name(pair) != param.as_str())
            .collect();
        let mut path_and_query = req.uri().path().to_owned();
        if !kept.is_empty() {
            path_and_query.push('?');
            path_and_query.push_str(&kept.join("&"));
        }
        let mut parts = req.uri().clone().into_parts();
        // Pieces of a valid URI stay valid; on the impossible failure the URI is left alone.
        let Ok(pq) = PathAndQuery::from_maybe_shared(Bytes::from(path_and_query)) else {
            return;
        };
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// The key: the `header`'s (one value only), else the `param` of the `query` (one only).
/// Err: given more than once.
pub(crate) fn credential<'a>(
    headers: &'a HeaderMap,
    header: Option<&HeaderName>,
    query: Option<&str>,
    param: Option<&str>,
) -> Result<Option<Found<'a>>, ()> {
    if let Some(name) = header {
        let mut values = headers.get_all(name).iter();
        if let Some(first) = values.next() {
            if values.next().is_some() {
                return Err(());
            }
            let key = first.as_bytes().trim_ascii();
            return Ok((!key.is_empty()).then_some(Found::Header(key)));
        }
    }
    let (Some(param), Some(query)) = (param, query) else {
        return Ok(None);
    };
    let mut values = query_values(query, param);
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(());
    }
    let key = percent_decode(first);
    Ok((!key.is_empty()).then_some(Found::Query(key)))
}

fn pair_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(name, _)| name)
}

/// The raw values of the parameter `name` in `query`.
fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    query
        .split('&')
        .filter(move |pair| pair_name(pair) == name)
        .map(|pair| pair.split_once('=').map_or("", |(_, v)| v))
}

/// `%XX` and `+` decoded (a malformed escape is kept as it is).
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let hex = |j: usize| bytes.get(j).and_then(|&h| (h as char).to_digit(16));
        match b {
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => {
                    out.push(u8::try_from(h * 16 + l).unwrap_or(b'%'));
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    out
}

fn answer(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = plain(status, text);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn unauthorized(text: &'static str) -> Response<ProxyBody> {
    let mut response = answer(StatusCode::UNAUTHORIZED, text);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("ApiKey"));
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApiKey {
    header: Option<Spanned<String>>,
    query: Option<Spanned<String>>,
    allow: Option<Vec<Spanned<String>>>,
    consumer_header: Option<Spanned<String>>,
    #[serde(default)]
    forward: bool,
}

/// Compiles a route's `api_key` against the `[api_keys]` consumers (None: the file has no
/// `[api_keys]` section, an error).
pub(crate) fn compile(
    raw: &Spanned<RawApiKey>,
    consumers: Option<&Arc<Consumers>>,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<ApiKey, ConfigError> {
    let fail = |span: Range<usize>, message: String| err(span, format!("api_key: {message}"));
    let Some(consumers) = consumers else {
        return Err(fail(
            raw.span(),
            "needs the consumers: add [api_keys] file = \"...\"".to_owned(),
        ));
    };
    let r = raw.get_ref();
    let header_name = |value: &Spanned<String>, key: &str| {
        HeaderName::from_bytes(value.get_ref().as_bytes()).map_err(|_| {
            fail(
                value.span(),
                format!("{key} {:?} is not a header name", value.get_ref()),
            )
        })
    };
    let header = match (&r.header, &r.query) {
        (Some(h), _) => Some(header_name(h, "header")?),
        (None, Some(_)) => None,
        (None, None) => Some(HeaderName::from_static("x-api-key")),
    };
    let query = match &r.query {
        Some(q)
            if q.get_ref().is_empty()
                || q.get_ref().contains(['&', '=', '#', '?', '%', '+', ' ']) =>
        {
            return Err(fail(
                q.span(),
                format!("query {:?} is not a parameter name", q.get_ref()),
            ));
        }
        Some(q) => Some(q.get_ref().clone()),
        None => None,
    };
    let consumer_header = match &r.consumer_header {
        Some(h) => header_name(h, "consumer_header")?,
        None => HeaderName::from_static(CONSUMER_HEADER),
    };
    if header.as_ref() == Some(&consumer_header) {
        return Err(fail(
            raw.span(),
            "consumer_header and header are the same header".to_owned(),
        ));
    }
    if super::headers::FORBIDDEN.contains(&consumer_header.as_str()) {
        return Err(fail(
            raw.span(),
            format!("consumer_header {consumer_header:?} cannot be set (hop-by-hop or framing)"),
        ));
    }
    let allowed = match &r.allow {
        None => None,
        Some(names) => {
            for name in names {
                if !consumers.knows(name.get_ref()) {
                    return Err(fail(
                        name.span(),
                        format!(
                            "allow names {:?}, not a consumer of {}",
                            name.get_ref(),
                            consumers.file.display()
                        ),
                    ));
                }
            }
            Some(
                consumers
                    .entries()
                    .iter()
                    .map(|c| names.iter().any(|n| n.get_ref().as_str() == &*c.name))
                    .collect(),
            )
        }
    };
    Ok(ApiKey {
        consumers: consumers.clone(),
        header,
        query,
        allowed,
        consumer_header,
        forward: r.forward,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_and_decoding() {
        let q = "a=1&apikey=k%2By+z&b&apikey";
        let values: Vec<_> = query_values(q, "apikey").collect();
        assert_eq!(values, ["k%2By+z", ""]);
        assert_eq!(percent_decode("k%2By+z"), b"k+y z");
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
        assert_eq!(query_values("b", "b").collect::<Vec<_>>(), [""]);
    }
}
