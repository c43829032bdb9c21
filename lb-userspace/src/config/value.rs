//! Value parsers the sections share, reporting through `ConfigError` with the value's line.
use std::{ops::Range, time::Duration};

use toml::Spanned;

use super::ConfigError;

/// Builds `FILE:LINE: reason` errors from a span.
pub type ErrAt<'a> = &'a dyn Fn(Range<usize>, String) -> ConfigError;

/// The duration `what` (humantime: "2s", "500ms", "1h 30m").
pub fn parse_duration(
    value: &Spanned<String>,
    what: &str,
    err: ErrAt<'_>,
) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.get_ref())
        .map_err(|e| err(value.span(), format!("{what} {:?}: {e}", value.get_ref())))
}

/// As `parse_duration`, refusing zero (`WHAT must be above 0`).
pub fn parse_positive_duration(
    value: &Spanned<String>,
    what: &str,
    err: ErrAt<'_>,
) -> Result<Duration, ConfigError> {
    match parse_duration(value, what, err)? {
        d if d.is_zero() => Err(err(value.span(), format!("{what} must be above 0"))),
        d => Ok(d),
    }
}

/// The optional duration `what`, or `default` when not given.
pub fn duration(
    value: &Option<Spanned<String>>,
    default: Duration,
    what: &str,
    err: ErrAt<'_>,
) -> Result<Duration, ConfigError> {
    value
        .as_ref()
        .map_or(Ok(default), |v| parse_duration(v, what, err))
}

/// The optional duration `what`, above zero, or `default` when not given.
pub fn positive_duration(
    value: &Option<Spanned<String>>,
    default: Duration,
    what: &str,
    err: ErrAt<'_>,
) -> Result<Duration, ConfigError> {
    value
        .as_ref()
        .map_or(Ok(default), |v| parse_positive_duration(v, what, err))
}
