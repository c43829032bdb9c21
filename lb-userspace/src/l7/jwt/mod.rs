//! JWT verification for the `jwt` route policy: per provider (`[[jwt_provider]]`) a key set
//! kept fresh (JWKS URL, OIDC discovery or a file), refetched once on an unknown `kid` at most
//! once per cooldown, the last good keys kept when a fetch fails; verified tokens cached until
//! they expire, so steady traffic pays no signature check per request.
//!
//! - `keys.rs`: a JWKS parsed into decoding keys, found by kid and algorithm.
//! - `fetch.rs`: the HTTP(S) GET of a key set or discovery document, `Cache-Control` read.
//! - `provider.rs`: `JwtProvider`: keys, fetching, verification, the verified-token cache.
mod fetch;
mod keys;
mod provider;

pub use keys::KeySet;
pub use provider::{Claims, JwtProvider, ProviderCounters, VerifyError};
