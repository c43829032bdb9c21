//! `respond`: the route answers with a fixed response instead of proxying (NGINX's
//! `return 200 "text"`, Envoy's `direct_response`).
//!
//! ```toml
//! [route.respond]
//! status = 200                       # 200..=599, required
//! body = "ok\n"                      # default: empty
//! content_type = "text/plain"        # default: text/plain; charset=utf-8 when there is a body
//! ```
use std::ops::Range;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Response, StatusCode,
    header::{self, HeaderValue},
};
use serde::Deserialize;
use toml::Spanned;

use crate::{config::ConfigError, l7::pool::ProxyBody};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Respond {
    status: StatusCode,
    body: Bytes,
    content_type: Option<HeaderValue>,
}

impl Respond {
    /// The response (its body shared, not copied; hyper leaves it out for HEAD).
    pub fn answer(&self) -> Response<ProxyBody> {
        let mut response = Response::new(
            Full::new(self.body.clone())
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = self.status;
        if let Some(content_type) = &self.content_type {
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type.clone());
        }
        response
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRespond {
    status: u16,
    #[serde(default)]
    body: String,
    content_type: Option<String>,
}

pub(crate) fn compile(
    raw: &Spanned<RawRespond>,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Respond, ConfigError> {
    let fail = |message: String| err(raw.span(), format!("respond: {message}"));
    let r = raw.get_ref();
    let status = StatusCode::from_u16(r.status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .ok_or_else(|| fail(format!("status {} is not in 200..=599", r.status)))?;
    let no_body = matches!(r.status, 204 | 304);
    if no_body && !r.body.is_empty() {
        return Err(fail(format!("status {} has no body", r.status)));
    }
    let content_type = match &r.content_type {
        Some(t) => Some(
            HeaderValue::from_str(t)
                .map_err(|_| fail(format!("content_type {t:?} is not a header value")))?,
        ),
        None if r.body.is_empty() => None,
        None => Some(HeaderValue::from_static("text/plain; charset=utf-8")),
    };
    Ok(Respond {
        status,
        body: Bytes::from(r.body.clone()),
        content_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn respond(text: &str) -> Result<Respond, ConfigError> {
        #[derive(Deserialize)]
        struct Doc {
            r: Spanned<RawRespond>,
        }
        let doc: Doc = toml::from_str(text).expect("toml");
        let err = |span: Range<usize>, m: String| ConfigError::at(Path::new("t"), text, span, m);
        compile(&doc.r, &err)
    }

    #[test]
    fn status_body_and_content_type() {
        let r = respond("r = { status = 503, body = \"maintenance\\n\" }").expect("valid");
        let response = r.answer();
        assert_eq!(response.status(), 503);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        let r = respond("r = { status = 200, body = \"{}\", content_type = \"application/json\" }")
            .expect("valid");
        assert_eq!(
            r.answer().headers()[header::CONTENT_TYPE],
            "application/json"
        );
        let r = respond("r = { status = 204 }").expect("valid");
        assert!(r.answer().headers().get(header::CONTENT_TYPE).is_none());
    }

    #[test]
    fn bad_settings_are_refused() {
        for (text, reason) in [
            ("r = { status = 101 }", "not in 200..=599"),
            ("r = { status = 600 }", "not in 200..=599"),
            ("r = { status = 204, body = \"x\" }", "has no body"),
            (
                "r = { status = 200, content_type = \"a\\nb\" }",
                "not a header value",
            ),
        ] {
            let e = respond(text).expect_err(text);
            assert!(e.to_string().contains(reason), "{text}: {e}");
        }
    }
}
