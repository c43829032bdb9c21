//! `request_headers` / `response_headers`: header edits per route.
//!
//! ```toml
//! [route.request_headers]            # applied to the request sent upstream, after lb's own
//! set = { "x-env" = "prod" }         #   X-Forwarded-* / X-Real-IP / X-Request-Id, so they can
//! add = { "x-tag" = ["a", "b"] }     #   be overridden (NGINX's proxy_set_header)
//! remove = ["x-debug"]
//! [route.response_headers]           # applied to every response of the route, lb's own
//! set = { "strict-transport-security" = "max-age=63072000" }   # 502/504/redirect/respond
//! remove = ["server"]                #   answers too (NGINX's add_header ... always)
//! ```
//!
//! Order: `remove`, then `set` (replaces every value), then `add` (appends). Names are
//! case-insensitive; hop-by-hop and framing headers (Connection, Transfer-Encoding,
//! Content-Length, ...) are refused at load: editing them would break the message framing.
use std::{collections::BTreeMap, ops::Range};

use hyper::{
    HeaderMap,
    header::{HeaderName, HeaderValue},
};
use serde::Deserialize;
use toml::Spanned;

use crate::config::ConfigError;

/// One route's edits of one direction, compiled (names and values parsed once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdits {
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// A value, or several (each a separate header line).
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderEdits {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    remove: Vec<String>,
}

/// Headers no edit may touch: hop-by-hop ones (RFC 9110 7.6.1) and the body's framing.
pub(super) const FORBIDDEN: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];

/// Checks and compiles `raw` (the `key` table at `span`). `allow_host`: request edits may set
/// Host (what the backend sees as its virtual host, as NGINX's `proxy_set_header Host`).
pub(crate) fn compile(
    raw: &Spanned<RawHeaderEdits>,
    key: &str,
    allow_host: bool,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<HeaderEdits, ConfigError> {
    let span = raw.span();
    let fail = |message: String| err(span.clone(), format!("{key}: {message}"));
    let name = |text: &str| -> Result<HeaderName, ConfigError> {
        let name = HeaderName::from_bytes(text.as_bytes())
            .map_err(|_| fail(format!("{text:?} is not a header name")))?;
        let forbidden = FORBIDDEN.contains(&name.as_str()) && !(allow_host && name == "host");
        if forbidden {
            return Err(fail(format!(
                "{text:?} cannot be edited (hop-by-hop or message framing)"
            )));
        }
        Ok(name)
    };
    let value = |header: &str, text: &str| {
        HeaderValue::from_str(text)
            .map_err(|_| fail(format!("{header}: {text:?} is not a header value")))
    };
    let raw = raw.get_ref();
    let remove = raw
        .remove
        .iter()
        .map(|n| name(n))
        .collect::<Result<_, _>>()?;
    let set = raw
        .set
        .iter()
        .map(|(n, v)| Ok((name(n)?, value(n, v)?)))
        .collect::<Result<_, ConfigError>>()?;
    let mut add = Vec::new();
    for (n, values) in &raw.add {
        let header = name(n)?;
        let values = match values {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v.as_slice(),
        };
        for v in values {
            add.push((header.clone(), value(n, v)?));
        }
    }
    let edits = HeaderEdits { remove, set, add };
    if edits == HeaderEdits::default() {
        return Err(fail("has no set, add or remove".to_owned()));
    }
    Ok(edits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn edits(text: &str, allow_host: bool) -> Result<HeaderEdits, ConfigError> {
        #[derive(Deserialize)]
        struct Doc {
            h: Spanned<RawHeaderEdits>,
        }
        let doc: Doc = toml::from_str(text).expect("toml");
        let err = |span: Range<usize>, m: String| ConfigError::at(Path::new("t"), text, span, m);
        compile(&doc.h, "request_headers", allow_host, &err)
    }

    #[test]
    fn remove_then_set_then_add() {
        let e = edits(
            "[h]\nremove = [\"X-A\"]\nset = { \"x-b\" = \"2\" }\nadd = { \"x-c\" = [\"3\", \"4\"], \"x-b\" = \"5\" }\n",
            false,
        )
        .expect("valid");
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("gone"));
        headers.append("x-b", HeaderValue::from_static("old1"));
        headers.append("x-b", HeaderValue::from_static("old2"));
        e.apply(&mut headers);
        assert!(headers.get("x-a").is_none());
        let b: Vec<_> = headers.get_all("x-b").iter().collect();
        assert_eq!(b, ["2", "5"]);
        let c: Vec<_> = headers.get_all("x-c").iter().collect();
        assert_eq!(c, ["3", "4"]);
    }

    #[test]
    fn framing_and_bad_names_are_refused_with_the_line() {
        for (text, reason) in [
            (
                "[h]\nset = { \"transfer-encoding\" = \"x\" }\n",
                "cannot be edited",
            ),
            ("[h]\nremove = [\"Connection\"]\n", "cannot be edited"),
            (
                "[h]\nset = { \"bad name\" = \"x\" }\n",
                "is not a header name",
            ),
            (
                "[h]\nset = { \"x-a\" = \"a\\nb\" }\n",
                "is not a header value",
            ),
            ("[h]\n", "has no set, add or remove"),
            ("[h]\nset = { \"host\" = \"a\" }\n", "cannot be edited"),
        ] {
            let e = edits(text, false).expect_err(text);
            assert!(e.to_string().contains(reason), "{text}: {e}");
            assert_eq!(e.line, 1, "{text}");
        }
        edits("[h]\nset = { \"host\" = \"a\" }\n", true).expect("request edits may set Host");
    }
}
