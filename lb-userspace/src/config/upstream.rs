//! The upstream keys of a `[[pool]]` section (documented with the others in `l7.rs`):
//! defaults and validation.
use std::time::Duration;

use toml::Spanned;

use super::{
    ConfigError,
    pool::{PoolConfig, RawBackend, RawPool},
    value::{ErrAt, duration},
};
use crate::l7::upstream::tls::{
    IdentityFile, UpstreamProtocol, UpstreamTls, client_config, client_identity,
};

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
    pool.max_fails = raw.max_fails.as_ref().map_or(3, |m| *m.get_ref());
    pool.fail_timeout = duration(
        &raw.fail_timeout,
        Duration::from_secs(10),
        "fail_timeout",
        err,
    )?;
    pool.idle_per_backend = raw.idle_per_backend.unwrap_or(256);
    pool.idle_timeout = duration(
        &raw.idle_timeout,
        Duration::from_secs(60),
        "idle_timeout",
        err,
    )?;
    pool.protocol = raw
        .protocol
        .as_ref()
        .map_or(UpstreamProtocol::Http1, |p| *p.get_ref());
    pool.tls = tls(raw, err)?;
    Ok(())
}

/// Each backend's `max_connections` (None: no cap), in backend order.
pub fn backend_caps(
    backends: &[Spanned<RawBackend>],
    err: ErrAt<'_>,
) -> Result<Vec<Option<u32>>, ConfigError> {
    backends
        .iter()
        .map(|b| match &b.get_ref().max_connections {
            Some(n) if *n.get_ref() == 0 => Err(err(
                n.span(),
                "max_connections must be at least 1 (weight = 0 takes a backend out)".into(),
            )),
            Some(n) => Ok(Some(*n.get_ref())),
            None => Ok(None),
        })
        .collect()
}

/// The pool's TLS client side, if it speaks HTTPS.
fn tls(raw: &RawPool, err: ErrAt<'_>) -> Result<Option<UpstreamTls>, ConfigError> {
    let protocol = raw
        .protocol
        .as_ref()
        .map_or(UpstreamProtocol::Http1, |p| *p.get_ref());
    let tls = match (&raw.tls, protocol) {
        (Some(t), UpstreamProtocol::H2c) if *t.get_ref() => {
            return Err(err(
                t.span(),
                "protocol h2c is cleartext HTTP/2; HTTP/2 over TLS is protocol = \"h2\"".into(),
            ));
        }
        (Some(t), UpstreamProtocol::H2) if !*t.get_ref() => {
            return Err(err(
                t.span(),
                "protocol h2 is HTTP/2 over TLS: tls = false contradicts it".into(),
            ));
        }
        (_, UpstreamProtocol::H2) => true,
        (t, _) => t.as_ref().is_some_and(|t| *t.get_ref()),
    };
    if !tls {
        if let Some(span) = raw
            .ca_file
            .as_ref()
            .map(Spanned::span)
            .or(raw.tls_server_name.as_ref().map(Spanned::span))
        {
            return Err(err(
                span,
                "ca_file and tls_server_name need tls = true (or protocol = \"h2\")".into(),
            ));
        }
        if let Some(span) = raw
            .tls_client_cert
            .as_ref()
            .map(Spanned::span)
            .or(raw.tls_client_key.as_ref().map(Spanned::span))
        {
            return Err(err(
                span,
                "tls_client_cert and tls_client_key need tls = true (or protocol = \"h2\")".into(),
            ));
        }
        return Ok(None);
    }
    let identity = match (&raw.tls_client_cert, &raw.tls_client_key) {
        (None, None) => None,
        (Some(cert), None) => {
            return Err(err(
                cert.span(),
                "tls_client_cert needs tls_client_key".into(),
            ));
        }
        (None, Some(key)) => {
            return Err(err(
                key.span(),
                "tls_client_key needs tls_client_cert".into(),
            ));
        }
        (Some(cert), Some(key)) => Some(client_identity(cert.get_ref(), key.get_ref()).map_err(
            |(which, reason)| {
                let (span, key_name) = match which {
                    IdentityFile::Cert => (cert.span(), "tls_client_cert"),
                    IdentityFile::Key => (key.span(), "tls_client_key"),
                };
                err(span, format!("{key_name} {reason}"))
            },
        )?),
    };
    let server_name = match &raw.tls_server_name {
        None => None,
        Some(name) => Some(
            rustls::pki_types::ServerName::try_from(name.get_ref().clone()).map_err(|_| {
                err(
                    name.span(),
                    format!(
                        "tls_server_name {:?} is not a DNS name or IP address",
                        name.get_ref()
                    ),
                )
            })?,
        ),
    };
    // Errors from here are about the CA file (or the system bundle standing in for it).
    let span = raw
        .ca_file
        .as_ref()
        .map(Spanned::span)
        .or(raw.tls.as_ref().map(Spanned::span))
        .or(raw.protocol.as_ref().map(Spanned::span))
        .unwrap_or(0..0);
    let (config, settings) = client_config(
        protocol,
        raw.ca_file.as_ref().map(|p| p.get_ref().as_path()),
        raw.tls_insecure,
        identity,
    )
    .map_err(|reason| err(span, reason))?;
    Ok(Some(UpstreamTls {
        connector: tokio_rustls::TlsConnector::from(config),
        server_name,
        settings,
    }))
}
