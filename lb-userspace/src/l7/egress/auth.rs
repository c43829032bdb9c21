//! Proxy authentication: `Proxy-Authorization: Basic` checked against a credentials file of
//! `user:PHC-string` lines (argon2 hashes, e.g. from `argon2` or `lb`'s docs recipe). A failure
//! is answered 407 with `Proxy-Authenticate: Basic realm="lb"`. argon2 is slow on purpose:
//! verified (user, password digest) pairs are remembered (bounded), so a keep-alive client or
//! a tunnel per request costs one verification, not one per request; failures are not.
use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::Mutex,
};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use base64::Engine;

use crate::config::ConfigError;

/// The users of a credentials file and their PHC hash strings (compared on reload: a changed
/// file restarts the listener, with an empty cache).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub path: PathBuf,
    users: BTreeMap<String, String>,
}

/// Without the hashes.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("path", &self.path)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Verified pairs kept before the cache is cleared and starts again.
const CACHE_CAP: usize = 4096;

/// Reads and checks a credentials file: blank lines and `#` comments skipped; every other
/// line `user:hash` with an argon2 PHC string; users unique. Errors name the file's line.
pub fn load(path: &Path) -> Result<Credentials, ConfigError> {
    let text = ConfigError::read_file(path)?;
    parse(&text, path)
}

pub fn parse(text: &str, path: &Path) -> Result<Credentials, ConfigError> {
    let mut users = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let err = |message: String| ConfigError {
            path: path.to_owned(),
            line: i + 1,
            message,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(err("expected user:argon2-hash".to_owned()));
        };
        if user.is_empty() {
            return Err(err("empty user name".to_owned()));
        }
        let parsed = PasswordHash::new(hash)
            .map_err(|e| err(format!("user {user:?}: not a PHC hash string ({e})")))?;
        if !parsed.algorithm.as_str().starts_with("argon2") {
            return Err(err(format!(
                "user {user:?}: hash algorithm {} is not argon2",
                parsed.algorithm
            )));
        }
        if users.insert(user.to_owned(), hash.to_owned()).is_some() {
            return Err(err(format!("duplicate user {user:?}")));
        }
    }
    Ok(Credentials {
        path: path.to_owned(),
        users,
    })
}

/// Why a request was not authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid,
}

/// argon2 verifications running at once per listener: a flood of wrong passwords waits for
/// these instead of taking every blocking thread and core.
const VERIFYING: usize = 4;

/// A listener's credentials with its cache of verified pairs.
pub struct Authenticator {
    credentials: std::sync::Arc<Credentials>,
    verified: Mutex<HashSet<(String, [u8; 32])>>,
    verifying: tokio::sync::Semaphore,
}

impl Authenticator {
    pub fn new(credentials: std::sync::Arc<Credentials>) -> Self {
        Self {
            credentials,
            verified: Mutex::new(HashSet::new()),
            verifying: tokio::sync::Semaphore::new(VERIFYING),
        }
    }

    /// The user a `Proxy-Authorization` value proves, verified off the async threads.
    pub async fn check(&self, header: Option<&[u8]>) -> Result<String, AuthFailure> {
        let header = header.ok_or(AuthFailure::Missing)?;
        let (user, password) = basic(header).ok_or(AuthFailure::Invalid)?;
        let hash = self
            .credentials
            .users
            .get(&user)
            .ok_or(AuthFailure::Invalid)?
            .clone();
        let digest = digest(&user, &password);
        let key = (user, digest);
        if self.verified.lock().is_ok_and(|v| v.contains(&key)) {
            return Ok(key.0);
        }
        // The semaphore is never closed.
        let _permit = self.verifying.acquire().await.ok();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        if !ok {
            return Err(AuthFailure::Invalid);
        }
        if let Ok(mut v) = self.verified.lock() {
            if v.len() >= CACHE_CAP {
                v.clear();
            }
            v.insert(key.clone());
        }
        Ok(key.0)
    }
}

/// SHA-256 of `user:password` (what the cache keeps instead of the password).
fn digest(user: &str, password: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(user.as_bytes());
    ctx.update(b":");
    ctx.update(password.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// `Basic base64(user:password)`.
pub(crate) fn basic(header: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};

    fn hash(password: &str) -> String {
        let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        // Small parameters: the test is about the format, not the cost.
        let params = argon2::Params::new(256, 1, 1, None).expect("params");
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .expect("hash")
            .to_string()
    }

    #[tokio::test]
    async fn basic_credentials_against_argon2_hashes() {
        let text = format!("# users\n\nalice:{}\n", hash("secret"));
        let creds = parse(&text, Path::new("users")).expect("valid");
        let auth = Authenticator::new(std::sync::Arc::new(creds));
        let header = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        assert_eq!(auth.check(None).await, Err(AuthFailure::Missing));
        let good = header("alice", "secret");
        assert_eq!(
            auth.check(Some(good.as_bytes())).await,
            Ok("alice".to_owned())
        );
        // Again, from the cache.
        assert_eq!(
            auth.check(Some(good.as_bytes())).await,
            Ok("alice".to_owned())
        );
        for bad in [
            header("alice", "wrong"),
            header("bob", "secret"),
            "Bearer x".to_owned(),
            "Basic !!".to_owned(),
        ] {
            assert_eq!(
                auth.check(Some(bad.as_bytes())).await,
                Err(AuthFailure::Invalid),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_lines_name_their_line() {
        for (text, want) in [
            ("alice\n", "users:1: expected user:argon2-hash"),
            (
                "# c\nalice:nothash\n",
                "users:2: user \"alice\": not a PHC hash string",
            ),
            (
                ":$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHQ$aGFzaA\n",
                "users:1: empty user name",
            ),
            (
                "a:$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n",
                "users:1: user \"a\": hash algorithm pbkdf2-sha256 is not argon2",
            ),
        ] {
            let e = parse(text, Path::new("users")).expect_err(text).to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }
}
