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
    match humantime::parse_duration(raw.get_ref()) {
        Ok(d) if d.is_zero() => Err(err(raw.span(), "timeout must be above 0".to_owned())),
        Ok(d) => Ok(d),
        Err(e) => Err(err(raw.span(), format!("timeout {:?}: {e}", raw.get_ref()))),
    }
}
