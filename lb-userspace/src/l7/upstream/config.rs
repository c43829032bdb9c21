//! The upstream keys of a `[[pool]]` section (documented with the others in `l7/config.rs`):
//! defaults and validation.
use std::{ops::Range, time::Duration};

use crate::{
    config::ConfigError,
    l7::config::{PoolConfig, RawPool},
};

/// Builds `FILE:LINE: reason` errors from a span.
pub type ErrAt<'a> = &'a dyn Fn(Range<usize>, String) -> ConfigError;

/// Fills `pool`'s upstream settings from `raw`.
pub fn apply(raw: &RawPool, pool: &mut PoolConfig, err: ErrAt<'_>) -> Result<(), ConfigError> {
    pool.retry_budget_percent = match &raw.retry_budget_percent {
        None => 20,
        Some(p) if *p.get_ref() > 100 => {
            return Err(err(
                p.span(),
                format!("retry_budget_percent {} is above 100", p.get_ref()),
            ));
        }
        Some(p) => *p.get_ref(),
    };
    pool.retry_budget_min = raw.retry_budget_min.unwrap_or(3);
    pool.max_fails = raw.max_fails.unwrap_or(3);
    pool.fail_timeout = match &raw.fail_timeout {
        None => Duration::from_secs(10),
        Some(t) => humantime::parse_duration(t.get_ref())
            .map_err(|e| err(t.span(), format!("fail_timeout {:?}: {e}", t.get_ref())))?,
    };
    Ok(())
}
