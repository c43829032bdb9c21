//! Who a proxy request is, from its `Proxy-Authorization`: `Basic` checked against the
//! listener's credentials file (`auth.rs`), `Bearer` verified by the `[[jwt_provider]]` named in
//! `proxy_jwt_provider`, the user read from its `proxy_jwt_claim` (default `sub`). Either
//! way the user is the one egress rules' `users` match and the logs show (the two name one
//! namespace). A listener with neither configured asks nothing. A missing, unknown-scheme or
//! failed credential is refused; the 407 challenges with every scheme the listener takes.
use arc_swap::ArcSwap;
use hyper::header::HeaderValue;

use super::{
    auth::{AuthFailure, Authenticator},
    policy::ProxyJwt,
};
use crate::l7::proxy::Proxy;

/// A listener's ways of proving who a request is.
pub(super) struct Identities {
    pub basic: Option<Authenticator>,
    pub jwt: Option<ProxyJwt>,
}

/// Why a request was refused: the metric's rule and whether a Bearer token was tried and
/// found invalid (its challenge then says `error="invalid_token"`, RFC 6750).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Refused {
    pub rule: &'static str,
    pub bad_token: bool,
}

impl Identities {
    /// Whether requests must prove who they are.
    pub fn required(&self) -> bool {
        self.basic.is_some() || self.jwt.is_some()
    }

    /// The user `header` (the request's `Proxy-Authorization`) proves.
    pub async fn check(
        &self,
        header: Option<&HeaderValue>,
        proxy: &ArcSwap<Proxy>,
    ) -> Result<String, Refused> {
        let invalid = Refused {
            rule: "invalid",
            bad_token: false,
        };
        let Some(header) = header else {
            return Err(Refused {
                rule: "missing",
                bad_token: false,
            });
        };
        let text = header.to_str().map_err(|_| invalid)?.trim();
        let (scheme, credential) = text.split_once(' ').ok_or(invalid)?;
        if scheme.eq_ignore_ascii_case("basic") {
            let basic = self.basic.as_ref().ok_or(invalid)?;
            return basic
                .check(Some(header.as_bytes()))
                .await
                .map_err(|failure| match failure {
                    AuthFailure::Missing => Refused {
                        rule: "missing",
                        bad_token: false,
                    },
                    AuthFailure::Invalid => invalid,
                });
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            let jwt = self.jwt.as_ref().ok_or(invalid)?;
            let bad_token = Refused {
                rule: "invalid_token",
                bad_token: true,
            };
            // The generation's provider (kept across reloads with its keys and token cache).
            let provider = proxy
                .load()
                .policy_state()
                .jwt_provider(&jwt.provider)
                .cloned()
                .ok_or(bad_token)?;
            let claims = provider.verify(credential.trim()).await.map_err(|why| {
                tracing::debug!(provider = %jwt.provider, reason = %why, "proxy bearer token refused");
                bad_token
            })?;
            return crate::l7::policy::jwt::lookup(&claims, &jwt.claim)
                .and_then(crate::l7::policy::jwt::claim_text)
                .filter(|user| !user.is_empty())
                .ok_or(bad_token);
        }
        Err(invalid)
    }

    /// The `Proxy-Authenticate` challenges of a 407: one per scheme the listener takes.
    pub fn challenges(&self, refused: Refused) -> Vec<HeaderValue> {
        let mut out = Vec::new();
        if self.basic.is_some() {
            out.push(HeaderValue::from_static("Basic realm=\"lb\""));
        }
        if self.jwt.is_some() {
            out.push(HeaderValue::from_static(if refused.bad_token {
                "Bearer realm=\"lb\", error=\"invalid_token\""
            } else {
                "Bearer realm=\"lb\""
            }));
        }
        out
    }
}

/// The identities of a listener's settings.
pub(super) fn identities(settings: &super::policy::EgressSettings) -> Identities {
    Identities {
        basic: settings.auth.clone().map(Authenticator::new),
        jwt: settings.jwt.clone(),
    }
}
