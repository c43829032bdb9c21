//! `timeout`: the route's own time to the upstream response head, instead of its pool's
//! `request_timeout` (Envoy's route `timeout`; NGINX's `proxy_read_timeout` per location).
//!
//! ```toml
//! [[route]]
//! timeout = "5s"     # above 0; each attempt (retries included) gets this long
//! ```
use std::{ops::Range, time::Duration};

use toml::Spanned;

use crate::config::ConfigError;

pub(crate) fn compile(
    raw: &Spanned<String>,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Duration, ConfigError> {
    crate::config::value::parse_positive_duration(raw, "timeout", err)
}
