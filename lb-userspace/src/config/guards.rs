//! A pool's overload guards (documented with the other pool keys in `l7.rs`):
//! `[pool.circuit_breaker]`, `[pool.outlier_detection]` and `[pool.adaptive_concurrency]`.
//! Each section is optional; without it that guard does not exist (nothing on the request
//! path). Values are checked here, with FILE:LINE errors.
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{
    ConfigError,
    pool::{PoolConfig, RawPool},
    value::{ErrAt, duration, positive_duration},
};
use crate::l7::upstream::{AdaptiveSettings, BreakerSettings, OutlierSettings};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBreaker {
    max_connections: Option<Spanned<u32>>,
    max_pending_requests: Option<Spanned<u32>>,
    max_requests: Option<Spanned<u32>>,
    max_retries: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    consecutive_5xx: Option<u32>,
    consecutive_gateway_errors: Option<u32>,
    base_ejection_time: Option<Spanned<String>>,
    max_ejection_time: Option<Spanned<String>>,
    max_ejected_percent: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdaptive {
    min_limit: Option<Spanned<u32>>,
    max_limit: Option<Spanned<u32>>,
    window: Option<Spanned<String>>,
}

/// Fills `pool`'s guards from `raw`.
pub fn apply(raw: &RawPool, pool: &mut PoolConfig, err: ErrAt<'_>) -> Result<(), ConfigError> {
    pool.breaker = raw
        .circuit_breaker
        .as_ref()
        .map(|b| breaker(b.get_ref(), err))
        .transpose()?;
    pool.outlier = raw
        .outlier_detection
        .as_ref()
        .map(|o| outlier(o, err))
        .transpose()?;
    if pool.outlier.is_some() {
        if let Some(max_fails) = &raw.max_fails {
            return Err(err(
                max_fails.span(),
                "max_fails and [pool.outlier_detection] both eject backends: use \
                 outlier_detection's consecutive_5xx / consecutive_gateway_errors"
                    .into(),
            ));
        }
        // outlier_detection replaces nginx-style passive ejection.
        pool.max_fails = 0;
    }
    pool.adaptive = raw
        .adaptive_concurrency
        .as_ref()
        .map(|a| adaptive(a, err))
        .transpose()?;
    Ok(())
}

fn at_least_one(
    value: &Option<Spanned<u32>>,
    what: &str,
    err: ErrAt<'_>,
) -> Result<Option<u32>, ConfigError> {
    match value {
        Some(v) if *v.get_ref() == 0 => Err(err(
            v.span(),
            format!("{what} must be at least 1 (leave it out for no limit)"),
        )),
        Some(v) => Ok(Some(*v.get_ref())),
        None => Ok(None),
    }
}

fn breaker(raw: &RawBreaker, err: ErrAt<'_>) -> Result<BreakerSettings, ConfigError> {
    Ok(BreakerSettings {
        max_connections: at_least_one(&raw.max_connections, "max_connections", err)?,
        max_pending_requests: at_least_one(&raw.max_pending_requests, "max_pending_requests", err)?,
        max_requests: at_least_one(&raw.max_requests, "max_requests", err)?,
        // Zero retries is a meaningful cap: no retries at all.
        max_retries: raw.max_retries.as_ref().map(|v| *v.get_ref()),
    })
}

fn outlier(raw: &Spanned<RawOutlier>, err: ErrAt<'_>) -> Result<OutlierSettings, ConfigError> {
    let d = OutlierSettings::default();
    let o = raw.get_ref();
    let settings = OutlierSettings {
        consecutive_5xx: o.consecutive_5xx.unwrap_or(d.consecutive_5xx),
        consecutive_gateway_errors: o
            .consecutive_gateway_errors
            .unwrap_or(d.consecutive_gateway_errors),
        base_ejection_time: positive_duration(
            &o.base_ejection_time,
            d.base_ejection_time,
            "base_ejection_time",
            err,
        )?,
        max_ejection_time: duration(
            &o.max_ejection_time,
            d.max_ejection_time,
            "max_ejection_time",
            err,
        )?,
        max_ejected_percent: match &o.max_ejected_percent {
            Some(p) if *p.get_ref() > 100 => {
                return Err(err(
                    p.span(),
                    format!("max_ejected_percent {} is above 100", p.get_ref()),
                ));
            }
            Some(p) => *p.get_ref(),
            None => d.max_ejected_percent,
        },
    };
    if settings.consecutive_5xx == 0 && settings.consecutive_gateway_errors == 0 {
        return Err(err(
            raw.span(),
            "outlier_detection with consecutive_5xx = 0 and consecutive_gateway_errors = 0 \
             never ejects: remove the section instead"
                .into(),
        ));
    }
    if let Some(max) = &o.max_ejection_time
        && settings.max_ejection_time < settings.base_ejection_time
    {
        return Err(err(
            max.span(),
            format!(
                "max_ejection_time {:?} is below base_ejection_time ({:?})",
                max.get_ref(),
                settings.base_ejection_time
            ),
        ));
    }
    Ok(settings)
}

fn adaptive(raw: &Spanned<RawAdaptive>, err: ErrAt<'_>) -> Result<AdaptiveSettings, ConfigError> {
    let d = AdaptiveSettings::default();
    let a = raw.get_ref();
    let min_limit = at_least_one(&a.min_limit, "min_limit", err)?.unwrap_or(d.min_limit);
    let max_limit = match &a.max_limit {
        Some(m) if *m.get_ref() < min_limit => {
            return Err(err(
                m.span(),
                format!("max_limit {} is below min_limit ({min_limit})", m.get_ref()),
            ));
        }
        Some(m) => *m.get_ref(),
        None => d.max_limit.max(min_limit),
    };
    let window: Duration = positive_duration(&a.window, d.window, "window", err)?;
    Ok(AdaptiveSettings {
        min_limit,
        max_limit,
        window,
    })
}
