//! A provider's key set: the JWKS parsed once into decoding keys, found per token by `kid`
//! (and the token's algorithm family).
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{Jwk, KeyAlgorithm},
};

struct Key {
    kid: Option<String>,
    /// The algorithm the JWK pins (`alg`), if any.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// The usable keys of a JWKS: asymmetric, of an allowed algorithm family. Symmetric (`oct`)
/// keys and keys of other types are left out, never an error: an IdP's set may hold them.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// Parses a JWKS document. Errors: not JSON, no `keys` list, or no usable key.
    pub fn parse(json: &str, allowed: &[Algorithm]) -> Result<Self, String> {
        let doc: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("not a JWKS: {e}"))?;
        let list = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or("not a JWKS: no \"keys\" list")?;
        let families: Vec<_> = allowed.iter().map(|a| a.family()).collect();
        let mut keys = Vec::new();
        for value in list {
            // One key we cannot read does not spoil the others.
            let Ok(jwk) = serde_json::from_value::<Jwk>(value.clone()) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            if !families.contains(&key.family()) {
                continue;
            }
            let alg = match jwk.common.key_algorithm {
                None => None,
                Some(a) => match algorithm(a) {
                    Some(a) if allowed.contains(&a) => Some(a),
                    // Pinned to an algorithm this provider does not allow (or an encryption
                    // algorithm): never usable.
                    _ => continue,
                },
            };
            keys.push(Key {
                kid: jwk.common.key_id,
                alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err("no usable key (RSA, EC or OKP of an allowed algorithm)".to_owned());
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The keys a token with `kid` and `alg` may be verified with: the one with that kid, or
    /// without a kid every key of the algorithm's family.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| match kid {
                Some(kid) => k.kid.as_deref() == Some(kid),
                None => true,
            })
            .filter(move |k| k.key.family() == alg.family() && k.alg.is_none_or(|a| a == alg))
            .map(|k| &k.key)
    }

    /// Whether a key with this id is in the set.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The key ids, for telling whether a fetch changed the set.
    pub fn kids(&self) -> Vec<Option<&str>> {
        self.keys.iter().map(|k| k.kid.as_deref()).collect()
    }
}

fn algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
