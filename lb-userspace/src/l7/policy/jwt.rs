//! `jwt`: the route accepts only requests with a valid token of a `[[jwt_provider]]`.
//!
//! ```toml
//! [[route]]
//! jwt = { provider = "idp" }           # token from Authorization: Bearer
//! # jwt = { provider = "idp", from = ["header:x-token", "cookie:session", "query:access_token"],
//! #         scopes = ["read"], required_claims = ["email"], forward = false,
//! #         claims_to_headers = { "x-user" = "sub", "x-org" = "org.id", "x-roles" = "roles" },
//! #         allow_preflight = true }
//! ```
//!
//! No token: 401 `WWW-Authenticate: Bearer`. An invalid token, or two different tokens in one
//! request: 401 `Bearer error="invalid_token"` (RFC 6750). A valid token lacking a scope
//! (`scope` claim, space-separated, or `scp` list; all of `scopes` needed) or a required
//! claim: 403 `Bearer error="insufficient_scope"`. The verified claims go to
//! `ctx.identity.claims`; `claims_to_headers` sets upstream headers from claims (dotted names
//! into nested objects, arrays joined with ","), replacing any the client sent. A token read
//! from a header is removed before forwarding unless `forward = true`. `allow_preflight`: a
//! CORS preflight (OPTIONS with Origin and Access-Control-Request-Method) passes without one.
use std::{collections::HashSet, ops::Range, sync::Arc};

use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
};
use serde::Deserialize;
use toml::Spanned;

use super::PolicyState;
use crate::l7::answer::plain;
use crate::{
    config::ConfigError,
    l7::{
        context::RequestCtx,
        jwt::{Claims, JwtProvider},
        pool::ProxyBody,
    },
};

/// Where a token is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    /// `Authorization: Bearer <token>` (scheme case-insensitive).
    Bearer,
    /// The whole value of this header (a `Bearer ` prefix is accepted too).
    Header(HeaderName),
    Cookie(String),
    Query(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtPolicy {
    provider: String,
    sources: Vec<Source>,
    scopes: Vec<String>,
    required_claims: Vec<Vec<String>>,
    claims_to_headers: Vec<(HeaderName, Vec<String>)>,
    forward: bool,
    allow_preflight: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwt {
    provider: String,
    from: Option<Vec<String>>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    required_claims: Vec<String>,
    #[serde(default)]
    claims_to_headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    forward: bool,
    #[serde(default)]
    allow_preflight: bool,
}

pub(crate) fn compile(
    raw: &Spanned<RawJwt>,
    providers: &HashSet<String>,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<JwtPolicy, ConfigError> {
    let fail = |message: String| err(raw.span(), format!("jwt: {message}"));
    let r = raw.get_ref();
    if !providers.contains(&r.provider) {
        return Err(fail(format!("unknown jwt_provider {:?}", r.provider)));
    }
    let sources = match &r.from {
        None => vec![Source::Bearer],
        Some(list) if list.is_empty() => return Err(fail("from is empty".to_owned())),
        Some(list) => list
            .iter()
            .map(|s| {
                let (kind, name) = s.split_once(':').unwrap_or((s.as_str(), ""));
                match (kind, name) {
                    ("bearer", "") => Ok(Source::Bearer),
                    ("header", n) if !n.is_empty() => HeaderName::from_bytes(n.as_bytes())
                        .map(|h| {
                            if h == header::AUTHORIZATION {
                                Source::Bearer
                            } else {
                                Source::Header(h)
                            }
                        })
                        .map_err(|_| fail(format!("from {s:?}: bad header name"))),
                    ("cookie", n) if !n.is_empty() => Ok(Source::Cookie(n.to_owned())),
                    ("query", n) if !n.is_empty() => Ok(Source::Query(n.to_owned())),
                    _ => Err(fail(format!(
                        "from {s:?}: expected bearer, header:NAME, cookie:NAME or query:NAME"
                    ))),
                }
            })
            .collect::<Result<_, _>>()?,
    };
    let claims_to_headers = r
        .claims_to_headers
        .iter()
        .map(|(h, claim)| {
            let name = HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| fail(format!("claims_to_headers: {h:?} is not a header name")))?;
            if claim.is_empty() {
                return Err(fail(format!("claims_to_headers: {h:?} names no claim")));
            }
            Ok((name, claim.split('.').map(str::to_owned).collect()))
        })
        .collect::<Result<_, _>>()?;
    Ok(JwtPolicy {
        provider: r.provider.clone(),
        sources,
        scopes: r.scopes.clone(),
        required_claims: r
            .required_claims
            .iter()
            .map(|c| c.split('.').map(str::to_owned).collect())
            .collect(),
        claims_to_headers,
        forward: r.forward,
        allow_preflight: r.allow_preflight,
    })
}

/// How a request failed the policy.
enum Refusal {
    NoToken,
    /// Why the token is invalid (metrics label).
    Invalid(&'static str),
    Forbidden,
}

impl Refusal {
    fn label(&self) -> &'static str {
        match self {
            Self::NoToken => "missing",
            Self::Invalid(why) => why,
            Self::Forbidden => "forbidden",
        }
    }
}

impl JwtPolicy {
    pub async fn on_request(
        &self,
        req: &mut Request<Incoming>,
        ctx: &mut RequestCtx<'_>,
        state: &PolicyState,
    ) -> Option<Response<ProxyBody>> {
        if self.allow_preflight && is_preflight(req) {
            return None;
        }
        let Some(provider) = state.jwt_provider(&self.provider) else {
            return Some(refuse(Refusal::Invalid("no_provider")));
        };
        let route = ctx.route_index();
        match self.check(req, provider).await {
            Ok(claims) => {
                state.count_auth(route, &self.provider, "ok");
                self.apply(req, &claims);
                ctx.identity.claims = Some(claims);
                None
            }
            Err(refusal) => {
                state.count_auth(route, &self.provider, refusal.label());
                Some(refuse(refusal))
            }
        }
    }

    async fn check(
        &self,
        req: &Request<Incoming>,
        provider: &Arc<JwtProvider>,
    ) -> Result<Claims, Refusal> {
        let token = self.token(req)?;
        let claims = provider.verify(&token).await.map_err(|why| {
            tracing::debug!(provider = %self.provider, reason = %why, "jwt refused");
            Refusal::Invalid(why.label())
        })?;
        let scopes = granted_scopes(&claims);
        let scoped = self.scopes.iter().all(|s| scopes.contains(&s.as_str()));
        let claimed = self
            .required_claims
            .iter()
            .all(|path| lookup(&claims, path).is_some_and(|v| !v.is_null()));
        if scoped && claimed {
            Ok(claims)
        } else {
            Err(Refusal::Forbidden)
        }
    }

    /// The request's token: every configured place looked at; none -> NoToken; two
    /// different ones (or a malformed Authorization) -> Invalid.
    fn token(&self, req: &Request<Incoming>) -> Result<String, Refusal> {
        let mut found: Option<String> = None;
        let mut add = |token: &str| -> Result<(), Refusal> {
            match &found {
                Some(t) if t != token => Err(Refusal::Invalid("two_tokens")),
                Some(_) => Ok(()),
                None => {
                    found = Some(token.to_owned());
                    Ok(())
                }
            }
        };
        for source in &self.sources {
            match source {
                Source::Bearer => {
                    for value in req.headers().get_all(header::AUTHORIZATION) {
                        let text = value.to_str().map_err(|_| Refusal::Invalid("malformed"))?;
                        match bearer(text) {
                            Some(token) => add(token)?,
                            None => return Err(Refusal::Invalid("malformed")),
                        }
                    }
                }
                Source::Header(name) => {
                    for value in req.headers().get_all(name) {
                        let text = value
                            .to_str()
                            .map_err(|_| Refusal::Invalid("malformed"))?
                            .trim();
                        add(bearer(text).unwrap_or(text))?;
                    }
                }
                Source::Cookie(name) => {
                    let cookies = req
                        .headers()
                        .get_all(header::COOKIE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(|v| v.split(';'))
                        .filter_map(|c| c.trim().split_once('='));
                    for (k, v) in cookies {
                        if k == name {
                            add(v)?;
                        }
                    }
                }
                Source::Query(name) => {
                    let pairs = req
                        .uri()
                        .query()
                        .unwrap_or_default()
                        .split('&')
                        .filter_map(|p| p.split_once('='));
                    for (k, v) in pairs {
                        if k == name {
                            add(v)?;
                        }
                    }
                }
            }
        }
        match found {
            Some(t) if !t.is_empty() => Ok(t),
            Some(_) => Err(Refusal::Invalid("malformed")),
            None => Err(Refusal::NoToken),
        }
    }

    /// Upstream view of a verified request: claim headers set (client copies replaced), the
    /// token's header removed unless forwarded.
    fn apply(&self, req: &mut Request<Incoming>, claims: &Claims) {
        let headers = req.headers_mut();
        for (name, path) in &self.claims_to_headers {
            headers.remove(name);
            if let Some(value) = lookup(claims, path)
                .and_then(claim_text)
                .and_then(|t| HeaderValue::from_str(&t).ok())
            {
                headers.insert(name.clone(), value);
            }
        }
        if !self.forward {
            for source in &self.sources {
                match source {
                    Source::Bearer => {
                        headers.remove(header::AUTHORIZATION);
                    }
                    Source::Header(name) => {
                        headers.remove(name);
                    }
                    Source::Cookie(_) | Source::Query(_) => {}
                }
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value.
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty() && !t.contains(' '))
}

fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The value at a dotted path (`org.id`) of the claims.
pub(crate) fn lookup<'a>(claims: &'a Claims, path: &[String]) -> Option<&'a serde_json::Value> {
    let (first, rest) = path.split_first()?;
    let mut value = claims.get(first)?;
    for part in rest {
        value = value.get(part)?;
    }
    Some(value)
}

/// A claim as header text: strings as they are, numbers and booleans printed, arrays joined
/// with ",", objects as JSON.
pub(crate) fn claim_text(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(claim_text)
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => Some(other.to_string()),
    }
}

/// The token's scopes: `scope` (space-separated) and `scp` (a list or a string).
fn granted_scopes(claims: &Claims) -> Vec<&str> {
    let mut scopes = Vec::new();
    for key in ["scope", "scp"] {
        match claims.get(key) {
            Some(serde_json::Value::String(s)) => scopes.extend(s.split_whitespace()),
            Some(serde_json::Value::Array(items)) => {
                scopes.extend(items.iter().filter_map(|v| v.as_str()));
            }
            _ => {}
        }
    }
    scopes
}

fn refuse(refusal: Refusal) -> Response<ProxyBody> {
    let (status, challenge, text): (_, &'static str, &'static str) = match refusal {
        Refusal::NoToken => (StatusCode::UNAUTHORIZED, "Bearer", "token required\n"),
        Refusal::Invalid(_) => (
            StatusCode::UNAUTHORIZED,
            "Bearer error=\"invalid_token\"",
            "invalid token\n",
        ),
        Refusal::Forbidden => (
            StatusCode::FORBIDDEN,
            "Bearer error=\"insufficient_scope\"",
            "insufficient scope\n",
        ),
    };
    let mut response = plain(status, text);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values() {
        assert_eq!(bearer("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer("bearer   abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer a b"), None);
    }

    #[test]
    fn claims_as_header_text() {
        let claims: Claims = Arc::new(
            serde_json::from_str(
                r#"{"sub":"u1","org":{"id":7,"name":"acme"},"roles":["a","b"],"admin":true}"#,
            )
            .expect("json"),
        );
        let text = |path: &str| {
            let path: Vec<String> = path.split('.').map(str::to_owned).collect();
            lookup(&claims, &path).and_then(claim_text)
        };
        assert_eq!(text("sub").as_deref(), Some("u1"));
        assert_eq!(text("org.id").as_deref(), Some("7"));
        assert_eq!(text("org.name").as_deref(), Some("acme"));
        assert_eq!(text("roles").as_deref(), Some("a,b"));
        assert_eq!(text("admin").as_deref(), Some("true"));
        assert_eq!(text("org.missing"), None);
    }
}
