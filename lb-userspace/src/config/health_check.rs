//! The `[pool.health_check]` section of the backend file.
//!
//! ```toml
//! [pool.health_check]
//! type = "http"            # tcp (connect only) | http | https (certificate not verified)
//! path = "/healthz"        # http/https: request path (default "/")
//! host = "example.com"     # http/https: Host header (default: the backend address)
//! expect_status = "200-399"   # a code or a range (default 200-399)
//! expect_body = "ok"       # optional: the body must contain this
//! interval = "2s"          # between checks of one backend (default 2s)
//! timeout = "1s"           # per check (default 1s, at most the interval)
//! rise = 2                 # successes in a row to come back up (default 2)
//! fall = 3                 # failures in a row to go down (default 3)
//! slow_start = "10s"       # after coming back, ramp the weight from 10% over this (default 0)
//! ```
use std::{ops::Range, path::Path, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, value::duration};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    Tcp,
    Http {
        tls: bool,
        path: String,
        host: Option<String>,
        expect_status: (u16, u16),
        expect_body: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub slow_start: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    path: Option<Spanned<String>>,
    host: Option<String>,
    expect_status: Option<Spanned<toml::Value>>,
    expect_body: Option<String>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
    slow_start: Option<Spanned<String>>,
}

impl HealthCheckConfig {
    pub(crate) fn from_raw(
        raw: RawHealthCheck,
        text: &str,
        path: &Path,
    ) -> Result<Self, ConfigError> {
        let err = |span: Range<usize>, message: String| ConfigError::at(path, text, span, message);
        let http = |tls: bool| -> Result<CheckKind, ConfigError> {
            let check_path = match &raw.path {
                Some(p) if !p.get_ref().starts_with('/') => {
                    return Err(err(
                        p.span(),
                        format!("health_check path {:?} must start with /", p.get_ref()),
                    ));
                }
                Some(p) => p.get_ref().clone(),
                None => "/".to_owned(),
            };
            let expect_status = match &raw.expect_status {
                None => (200, 399),
                Some(v) => parse_status(v.get_ref()).ok_or_else(|| {
                    err(
                        v.span(),
                        format!(
                            "expect_status {}: expected a status code (100-599) or a range \"200-399\"",
                            v.get_ref()
                        ),
                    )
                })?,
            };
            Ok(CheckKind::Http {
                tls,
                path: check_path,
                host: raw.host.clone(),
                expect_status,
                expect_body: raw.expect_body.clone(),
            })
        };
        let kind = match raw.kind.get_ref().as_str() {
            "tcp" => {
                if let Some(p) = &raw.path {
                    return Err(err(
                        p.span(),
                        "path needs an http or https health check".to_owned(),
                    ));
                }
                CheckKind::Tcp
            }
            "http" => http(false)?,
            "https" => http(true)?,
            other => {
                return Err(err(
                    raw.kind.span(),
                    format!("health_check type {other:?}: expected tcp, http or https"),
                ));
            }
        };
        let interval = duration(&raw.interval, Duration::from_secs(2), "interval", &err)?;
        if interval < Duration::from_millis(10) {
            let span = raw.interval.as_ref().map_or(0..0, Spanned::span);
            return Err(err(span, "interval must be at least 10ms".to_owned()));
        }
        let timeout = duration(&raw.timeout, Duration::from_secs(1), "timeout", &err)?;
        if timeout > interval || timeout.is_zero() {
            let span = raw
                .timeout
                .as_ref()
                .or(raw.interval.as_ref())
                .map_or(0..0, Spanned::span);
            return Err(err(
                span,
                format!(
                    "timeout {} must be above zero and at most the interval {}",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
            ));
        }
        let count = |v: &Option<Spanned<u32>>, default: u32, what: &str| match v {
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > 100 => Err(err(
                n.span(),
                format!("{what} {} is out of range 1-100", n.get_ref()),
            )),
            Some(n) => Ok(*n.get_ref()),
            None => Ok(default),
        };
        Ok(Self {
            kind,
            interval,
            timeout,
            rise: count(&raw.rise, 2, "rise")?,
            fall: count(&raw.fall, 3, "fall")?,
            slow_start: duration(&raw.slow_start, Duration::ZERO, "slow_start", &err)?,
        })
    }
}

fn parse_status(value: &toml::Value) -> Option<(u16, u16)> {
    let (lo, hi) = match value {
        toml::Value::Integer(n) => (u16::try_from(*n).ok()?, u16::try_from(*n).ok()?),
        toml::Value::String(s) => match s.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let n = s.trim().parse().ok()?;
                (n, n)
            }
        },
        _ => return None,
    };
    ((100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HealthCheckConfig, String> {
        let raw: RawHealthCheck = toml::from_str(text).map_err(|e| e.to_string())?;
        HealthCheckConfig::from_raw(raw, text, Path::new("b.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn every_key_parses() {
        let c = parse(
            "type = \"https\"\npath = \"/hz\"\nhost = \"a.example\"\nexpect_status = \"200-204\"\n\
             expect_body = \"ok\"\ninterval = \"500ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 2\n\
             slow_start = \"5s\"\n",
        )
        .expect("valid");
        assert_eq!(
            c,
            HealthCheckConfig {
                kind: CheckKind::Http {
                    tls: true,
                    path: "/hz".into(),
                    host: Some("a.example".into()),
                    expect_status: (200, 204),
                    expect_body: Some("ok".into()),
                },
                interval: Duration::from_millis(500),
                timeout: Duration::from_millis(200),
                rise: 1,
                fall: 2,
                slow_start: Duration::from_secs(5),
            }
        );
        let tcp = parse("type = \"tcp\"\n").expect("valid");
        assert_eq!(tcp.kind, CheckKind::Tcp);
        assert_eq!((tcp.rise, tcp.fall), (2, 3));
        let code = parse("type = \"http\"\nexpect_status = 204\n").expect("valid");
        assert!(matches!(
            code.kind,
            CheckKind::Http {
                expect_status: (204, 204),
                ..
            }
        ));
    }

    #[test]
    fn bad_values_name_the_line() {
        for (text, expected) in [
            (
                "type = \"icmp\"\n",
                "b.toml:1: health_check type \"icmp\": expected tcp, http or https",
            ),
            (
                "type = \"http\"\nexpect_status = \"299-200\"\n",
                "b.toml:2: expect_status \"299-200\": expected a status code (100-599) or a range \"200-399\"",
            ),
            (
                "type = \"http\"\ninterval = \"1s\"\ntimeout = \"2s\"\n",
                "b.toml:3: timeout 2s must be above zero and at most the interval 1s",
            ),
            (
                "type = \"tcp\"\nfall = 0\n",
                "b.toml:2: fall 0 is out of range 1-100",
            ),
            (
                "type = \"tcp\"\npath = \"/x\"\n",
                "b.toml:2: path needs an http or https health check",
            ),
            (
                "type = \"http\"\npath = \"x\"\n",
                "b.toml:2: health_check path \"x\" must start with /",
            ),
        ] {
            assert_eq!(parse(text).expect_err(text), expected);
        }
    }
}
