//! `[api_keys]`: where the API-key consumers come from. The consumers live in a file of their
//! own (secrets apart from the routing file), read whenever the backend file is (start,
//! `lb check-config`, every reload), so an edited consumers file takes effect on the next
//! reload. Routes use them with their `api_key` key (`crate::l7::policy::api_key`).
//!
//! ```toml
//! [api_keys]
//! file = "/etc/lb/consumers.toml"
//! ```
//!
//! The consumers file:
//!
//! ```toml
//! [[consumer]]
//! name = "acme"             # letters, digits, '-', '_', '.', '@', ':'; up to 128
//! key_sha256 = "9f86d08..." # hex SHA-256 of the key: the file holds no usable secret
//! [[consumer]]
//! name = "globex"
//! key = "plain key"         # or the key itself, hashed when read (never logged)
//! ```
//!
//! A consumer may appear more than once (one entry per key: rotation); two entries with the
//! same key are an error. Errors are the backend file's `FILE:LINE` (the `file` key), with
//! the consumers file's own `FILE:LINE` in the reason.
use std::{
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
};

use hyper::header::HeaderValue;
use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;

/// One key of one consumer.
#[derive(Clone, PartialEq, Eq)]
pub struct Consumer {
    pub name: Arc<str>,
    /// `name` as a header value (what the consumer header carries upstream).
    pub value: HeaderValue,
    digest: [u8; 32],
}

/// The consumers of the `[api_keys]` file, compared by content (names and key digests), so a
/// reload with a changed file is a change.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Consumers {
    /// Where they were read from.
    pub file: PathBuf,
    entries: Vec<Consumer>,
}

/// Names only: digests stay out of logs and debug output.
impl std::fmt::Debug for Consumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumers")
            .field("file", &self.file)
            .field(
                "names",
                &self.entries.iter().map(|c| &*c.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

impl Consumers {
    /// The entry whose key is `key` (its index and the consumer). Every entry's digest is
    /// compared in constant time, without stopping at a match, so the time taken says
    /// nothing about which digest (or which part of one) matched.
    pub fn find(&self, key: &[u8]) -> Option<(usize, &Consumer)> {
        use subtle::{ConditionallySelectable, ConstantTimeEq};
        let digest = sha256(key);
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, c) in self.entries.iter().enumerate() {
            let hit = c.digest.ct_eq(&digest);
            index.conditional_assign(&(i as u64), hit);
            found |= hit;
        }
        if bool::from(found) {
            let i = usize::try_from(index).ok()?;
            self.entries.get(i).map(|c| (i, c))
        } else {
            None
        }
    }

    /// Entries (one per key), in file order.
    pub fn entries(&self) -> &[Consumer] {
        &self.entries
    }

    pub fn knows(&self, name: &str) -> bool {
        self.entries.iter().any(|c| &*c.name == name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApiKeys {
    pub(crate) file: Spanned<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsumersFile {
    #[serde(default, rename = "consumer")]
    consumers: Vec<Spanned<RawConsumer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsumer {
    name: Spanned<String>,
    key: Option<Spanned<String>>,
    key_sha256: Option<Spanned<String>>,
}

/// Reads the `[api_keys]` section's consumers file.
pub(crate) fn load(
    raw: &RawApiKeys,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Consumers, ConfigError> {
    let file = raw.file.get_ref();
    let fail = |reason: String| err(raw.file.span(), format!("api_keys file: {reason}"));
    let text = std::fs::read_to_string(file)
        .map_err(|e| fail(format!("cannot read {}: {e}", file.display())))?;
    parse(&text, file).map_err(|e| fail(e.to_string()))
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.@:".contains(&b)
}

/// Parses a consumers file (errors: that file's `FILE:LINE`).
pub(crate) fn parse(text: &str, path: &Path) -> Result<Consumers, ConfigError> {
    let at = |span: Range<usize>, message: String| ConfigError::at(path, text, span, message);
    // toml's message names the problem, never the value (a plain key stays out of errors).
    let raw: RawConsumersFile =
        toml::from_str(text).map_err(|e| ConfigError::from_toml(path, text, &e))?;
    let mut entries: Vec<Consumer> = Vec::new();
    for c in raw.consumers {
        let c = c.into_inner();
        let name = c.name.get_ref();
        if name.is_empty() || name.len() > 128 || !name.bytes().all(is_name_char) {
            return Err(at(
                c.name.span(),
                format!(
                    "consumer name {name:?}: use 1 to 128 letters, digits, '-', '_', '.', '@', ':'"
                ),
            ));
        }
        let digest = match (&c.key, &c.key_sha256) {
            (Some(key), None) if key.get_ref().is_empty() => {
                return Err(at(key.span(), format!("consumer {name:?}: empty key")));
            }
            (Some(key), None) => sha256(key.get_ref().as_bytes()),
            (None, Some(hex)) => from_hex(hex.get_ref()).ok_or_else(|| {
                at(
                    hex.span(),
                    format!("consumer {name:?}: key_sha256 is not 64 hex digits"),
                )
            })?,
            (Some(key), Some(_)) => {
                return Err(at(
                    key.span(),
                    format!("consumer {name:?}: give key or key_sha256, not both"),
                ));
            }
            (None, None) => {
                return Err(at(
                    c.name.span(),
                    format!("consumer {name:?}: no key or key_sha256"),
                ));
            }
        };
        if let Some(other) = entries.iter().find(|e| e.digest == digest) {
            return Err(at(
                c.name.span(),
                format!(
                    "consumer {name:?} has the same key as consumer {:?}",
                    &*other.name
                ),
            ));
        }
        // Checked above: visible ASCII only.
        let value = HeaderValue::from_str(name)
            .map_err(|_| at(c.name.span(), format!("consumer name {name:?}")))?;
        entries.push(Consumer {
            name: Arc::from(name.as_str()),
            value,
            digest,
        });
    }
    Ok(Consumers {
        file: path.to_owned(),
        entries,
    })
}

fn from_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.trim().as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16);
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let high = digit(pair[0])?;
        let low = digit(pair[1])?;
        out[i] = u8::try_from(high * 16 + low).ok()?;
    }
    Some(out)
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumers(text: &str) -> Result<Consumers, ConfigError> {
        parse(text, Path::new("consumers.toml"))
    }

    #[test]
    fn plain_and_hashed_keys_find_their_consumer() {
        let hashed = to_hex(&sha256(b"globex-key"));
        let set = consumers(&format!(
            "[[consumer]]\nname = \"acme\"\nkey = \"acme-key\"\n\
             [[consumer]]\nname = \"globex\"\nkey_sha256 = \"{}\"\n\
             [[consumer]]\nname = \"acme\"\nkey = \"acme-next\"\n",
            hashed.to_uppercase()
        ))
        .expect("valid");
        let name = |key: &[u8]| set.find(key).map(|(_, c)| c.name.to_string());
        assert_eq!(name(b"acme-key").as_deref(), Some("acme"));
        assert_eq!(name(b"acme-next").as_deref(), Some("acme"));
        assert_eq!(name(b"globex-key").as_deref(), Some("globex"));
        assert_eq!(name(b"nobody"), None);
        assert_eq!(name(b""), None);
        assert!(set.knows("globex") && !set.knows("nobody"));
        assert!(!format!("{set:?}").contains(&hashed), "no digests in debug");
    }

    #[test]
    fn bad_files_name_their_line_and_never_the_key() {
        for (text, line, reason) in [
            ("[[consumer]]\nname = \"a\"\n", 2, "no key or key_sha256"),
            (
                "[[consumer]]\nname = \"a\"\nkey_sha256 = \"abc\"\n",
                3,
                "not 64 hex digits",
            ),
            (
                "[[consumer]]\nname = \"a b\"\nkey = \"k\"\n",
                2,
                "consumer name",
            ),
            (
                "[[consumer]]\nname = \"a\"\nkey = \"secret-1\"\n[[consumer]]\nname = \"b\"\nkey = \"secret-1\"\n",
                5,
                "same key as consumer \"a\"",
            ),
            (
                "[[consumer]]\nname = \"a\"\nkey = \"secret-1\"\nsecret = 1\n",
                4,
                "unknown field",
            ),
            ("[[consumer]]\nname = \"a\"\nkey = \"\"\n", 3, "empty key"),
        ] {
            let e = consumers(text).expect_err(text);
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.to_string().contains(reason), "{text}: {e}");
            assert!(!e.to_string().contains("secret-1"), "{e}");
        }
    }
}
