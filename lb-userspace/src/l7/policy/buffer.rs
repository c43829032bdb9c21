//! Request and response buffering per route (NGINX `proxy_request_buffering` with
//! `client_body_buffer_size`, and `proxy_buffering`).
//!
//! ```toml
//! [[route]]
//! buffer_request = true              # read the whole body before a backend is chosen
//! buffer_request_memory = "64KiB"    # kept in memory up to this (default); the rest goes to
//!                                    # an unlinked temporary file
//! buffer_request_temp_dir = "/var/lib/lb/tmp"   # default: the system's ($TMPDIR or /tmp)
//! buffer_response = "1MiB"           # read the backend's body up to this far ahead of the client
//! ```
//!
//! Request buffering (`request.rs`) runs between the upstream-request phase and the upstream
//! phase: the body, within the listener's `max_body_bytes` (413) and `body_timeout` (408),
//! is read completely before a backend is picked, so a slow upload holds neither a backend
//! connection nor an in-flight slot, and a client that breaks off never causes an upstream
//! request. It goes upstream with a `Content-Length` (chunked framing, trailers and
//! `Expect: 100-continue`, which lb has answered, are dropped). A buffered body can be sent
//! again, so an idempotent request with one is retried like a bodyless one.
//!
//! Response buffering (`response.rs`) is a response-body transform (pipeline phase 6): a task
//! reads the backend's body ahead of the client, at most `buffer_response` bytes ahead, so a
//! response that fits is read to its end (and the pooled connection goes back) while the
//! client is still reading; a longer one streams with that much read ahead and backpressure
//! beyond. Without the key the body streams as it always does.
use std::{ops::Range, path::PathBuf};

use toml::Spanned;

use crate::config::{ConfigError, route::RawRoute, value::parse_size};

pub mod request;
pub mod response;

/// `buffer_request_memory` when not given.
pub const DEFAULT_REQUEST_MEMORY: usize = 64 << 10;

/// A route's `buffer_request` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestBuffering {
    /// Bytes of a body kept in memory; the rest goes to a temporary file.
    pub memory: usize,
    /// Where temporary files are made (None: `std::env::temp_dir()`).
    pub temp_dir: Option<PathBuf>,
}

/// A route's buffering; the default buffers nothing (a body streams both ways).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Buffering {
    pub request: Option<RequestBuffering>,
    /// `buffer_response`: how many bytes of a response body are read ahead of the client.
    pub response: Option<usize>,
}

/// Compiles the route's `buffer_*` keys.
pub(crate) fn compile(
    r: &RawRoute,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Buffering, ConfigError> {
    let size = |value: &Spanned<String>, what: &str| -> Result<usize, ConfigError> {
        let size = parse_size(value, what, err)?;
        usize::try_from(size).map_err(|_| {
            err(
                value.span(),
                format!("{what} {:?}: too large", value.get_ref()),
            )
        })
    };
    let on = r.buffer_request.as_ref().is_some_and(|b| *b.get_ref());
    let request = if on {
        let memory = match &r.buffer_request_memory {
            Some(m) => size(m, "buffer_request_memory")?,
            None => DEFAULT_REQUEST_MEMORY,
        };
        let temp_dir = match &r.buffer_request_temp_dir {
            Some(d) => {
                let dir = PathBuf::from(d.get_ref());
                if !dir.is_absolute() || !dir.is_dir() {
                    return Err(err(
                        d.span(),
                        format!(
                            "buffer_request_temp_dir {:?}: not an absolute path to a directory",
                            d.get_ref()
                        ),
                    ));
                }
                Some(dir)
            }
            None => None,
        };
        Some(RequestBuffering { memory, temp_dir })
    } else {
        // The settings of request buffering without it: a mistake, not a silent no-op.
        let orphan = [
            (
                "buffer_request_memory",
                r.buffer_request_memory.as_ref().map(Spanned::span),
            ),
            (
                "buffer_request_temp_dir",
                r.buffer_request_temp_dir.as_ref().map(Spanned::span),
            ),
        ];
        if let Some((key, Some(span))) = orphan.into_iter().find(|(_, s)| s.is_some()) {
            return Err(err(
                span,
                format!("{key} without buffer_request = true: add it or remove {key}"),
            ));
        }
        None
    };
    let response = r
        .buffer_response
        .as_ref()
        .map(|v| size(v, "buffer_response"))
        .transpose()?;
    Ok(Buffering { request, response })
}
