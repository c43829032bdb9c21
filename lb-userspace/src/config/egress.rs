//! The forward-proxy keys of `[[listener]]` (`mode = "forward_proxy"`): `egress_mode`,
//! `[[listener.egress_rule]]`, `proxy_auth_file`, `connect_http10`, `sni_ports`,
//! `allow_missing_sni`, the TLS inspection keys (`inspect_hosts`, `inspect_ca_cert`,
//! `inspect_ca_key`, `inspect_ca_file`), `[listener.cache]`, `proxy_jwt_provider` and
//! `proxy_jwt_claim`, compiled into the listener's `EgressSettings` (semantics in
//! `crate::l7::egress::policy`).
use std::{collections::HashSet, ops::Range, path::Path, sync::Arc};

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, HostMatch, ListenerMode, listener::RawListener};
use crate::l7::{
    egress::{
        auth,
        inspect::{Inspection, InspectionInputs},
        mint::Minter,
        policy::{Action, EgressMode, EgressRule, EgressSettings, PathMatch, ProxyJwt},
    },
    upstream::tls::{UpstreamProtocol, client_config},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEgressRule {
    name: Option<String>,
    action: Spanned<String>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    ports: Vec<Spanned<i64>>,
    #[serde(default)]
    cidrs: Vec<Spanned<String>>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    paths: Vec<Spanned<String>>,
}

/// The listener's egress settings: Some for forward-proxy listeners (no rules: everything is
/// denied), and the egress keys refused on other listeners.
pub(super) fn listener_keys(
    l: &RawListener,
    mode: ListenerMode,
    jwt_providers: &HashSet<String>,
    path: &Path,
    text: &str,
) -> Result<Option<Arc<EgressSettings>>, ConfigError> {
    let err = |span: Range<usize>, message: String| ConfigError::at(path, text, span, message);
    if mode != ListenerMode::ForwardProxy {
        let keys = [
            ("egress_mode", l.egress_mode.as_ref().map(|v| v.span())),
            ("egress_rule", l.egress_rule.first().map(|v| v.span())),
            (
                "proxy_auth_file",
                l.proxy_auth_file.as_ref().map(|v| v.span()),
            ),
            (
                "connect_http10",
                l.connect_http10.as_ref().map(|v| v.span()),
            ),
            ("sni_ports", l.sni_ports.as_ref().map(|v| v.span())),
            (
                "allow_missing_sni",
                l.allow_missing_sni.as_ref().map(|v| v.span()),
            ),
            ("inspect_hosts", l.inspect_hosts.as_ref().map(|v| v.span())),
            ("cache", l.cache.as_ref().map(|v| v.span())),
            (
                "proxy_jwt_provider",
                l.proxy_jwt_provider.as_ref().map(|v| v.span()),
            ),
            (
                "proxy_jwt_claim",
                l.proxy_jwt_claim.as_ref().map(|v| v.span()),
            ),
        ];
        if let Some((key, span)) = keys
            .into_iter()
            .chain(inspect_ca_keys(l))
            .find_map(|(k, s)| Some((k, s?)))
        {
            return Err(err(
                span,
                format!("{key} applies to forward_proxy listeners only"),
            ));
        }
        return Ok(None);
    }
    let mode = match l.egress_mode.as_ref() {
        None => EgressMode::Enforce,
        Some(m) if m.get_ref() == "enforce" => EgressMode::Enforce,
        Some(m) if m.get_ref() == "report" => EgressMode::Report,
        Some(m) => {
            return Err(err(
                m.span(),
                format!(
                    "egress_mode {:?}: expected \"enforce\" or \"report\"",
                    m.get_ref()
                ),
            ));
        }
    };
    let rules = l
        .egress_rule
        .iter()
        .enumerate()
        .map(|(i, r)| rule(i, r, &err))
        .collect::<Result<_, _>>()?;
    let auth = l
        .proxy_auth_file
        .as_ref()
        .map(|file| auth::load(file.get_ref()).map(Arc::new))
        .transpose()?;
    Ok(Some(Arc::new(EgressSettings {
        mode,
        rules,
        auth,
        connect_http10: l.connect_http10.as_ref().is_some_and(|v| *v.get_ref()),
        sni_ports: match &l.sni_ports {
            None => vec![443],
            Some(ports) => {
                if let Some(zero) = ports.get_ref().iter().find(|p| **p == 0) {
                    return Err(err(
                        ports.span(),
                        format!("sni_ports: port {zero} is not a port"),
                    ));
                }
                ports.get_ref().clone()
            }
        },
        allow_missing_sni: l.allow_missing_sni.as_ref().is_some_and(|v| *v.get_ref()),
        inspect: inspection(l, &err)?.map(Arc::new),
        cache: l
            .cache
            .as_ref()
            .map(|raw| crate::l7::cache::settings::compile(raw, &err))
            .transpose()?
            .map(crate::l7::cache::RouteCache::new),
        jwt: proxy_jwt(l, jwt_providers, &err)?,
    })))
}

/// `proxy_jwt_provider` (a `[[jwt_provider]]` name) and `proxy_jwt_claim` (default `sub`;
/// needs the provider).
fn proxy_jwt(
    l: &RawListener,
    providers: &HashSet<String>,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Option<ProxyJwt>, ConfigError> {
    let Some(provider) = &l.proxy_jwt_provider else {
        if let Some(claim) = &l.proxy_jwt_claim {
            return Err(err(
                claim.span(),
                "proxy_jwt_claim needs proxy_jwt_provider".to_owned(),
            ));
        }
        return Ok(None);
    };
    if !providers.contains(provider.get_ref()) {
        return Err(err(
            provider.span(),
            format!(
                "proxy_jwt_provider {:?}: no [[jwt_provider]] has that name",
                provider.get_ref()
            ),
        ));
    }
    let claim = match &l.proxy_jwt_claim {
        None => vec!["sub".to_owned()],
        Some(c) => {
            let parts: Vec<String> = c.get_ref().split('.').map(str::to_owned).collect();
            if parts.iter().any(String::is_empty) {
                return Err(err(
                    c.span(),
                    format!(
                        "proxy_jwt_claim {:?}: expected a claim name or dotted path",
                        c.get_ref()
                    ),
                ));
            }
            parts
        }
    };
    Ok(Some(ProxyJwt {
        provider: provider.get_ref().clone(),
        claim,
    }))
}

/// `inspect_hosts` with the CA that mints their certificates and the roots origins are
/// verified against. The hosts need the CA; the CA and roots keys need hosts.
fn inspection(
    l: &RawListener,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Option<Inspection>, ConfigError> {
    let Some(hosts) = &l.inspect_hosts else {
        if let Some((key, span)) = inspect_ca_keys(l)
            .into_iter()
            .find_map(|(k, s)| Some((k, s?)))
        {
            return Err(err(
                span,
                format!("{key} is for TLS inspection, which needs inspect_hosts"),
            ));
        }
        return Ok(None);
    };
    let hosts = hosts
        .get_ref()
        .iter()
        .map(|h| {
            let text = h.get_ref();
            let name = text.strip_prefix("*.").unwrap_or(text);
            if name.is_empty()
                || name.contains(['*', ':', '/', ' ', '[', ']'])
                || name.parse::<std::net::IpAddr>().is_ok()
            {
                return Err(err(
                    h.span(),
                    format!("inspect_hosts {text:?}: expected a name or *.suffix (addresses are not inspected)"),
                ));
            }
            Ok(HostMatch::parse(text))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (Some(cert), Some(key)) = (&l.inspect_ca_cert, &l.inspect_ca_key) else {
        return Err(err(
            hosts_span(l),
            "inspect_hosts needs inspect_ca_cert and inspect_ca_key (the CA that signs the certificates lb shows clients)".to_owned(),
        ));
    };
    let minter = Minter::load(cert.get_ref(), key.get_ref()).map_err(|e| {
        let span = match &e {
            crate::l7::egress::mint::MintError::File { path, .. }
                if std::path::Path::new(path) == cert.get_ref().as_path() =>
            {
                cert.span()
            }
            _ => key.span(),
        };
        err(span, format!("TLS inspection CA: {e}"))
    })?;
    let ca_file = l.inspect_ca_file.as_ref();
    let (config, origin_roots) = client_config(
        UpstreamProtocol::Http1,
        ca_file.map(|f| f.get_ref().as_path()),
        false,
        None,
    )
    .map_err(|e| {
        err(
            ca_file.map_or_else(|| hosts_span(l), |f| f.span()),
            format!("inspect_{e}"),
        )
    })?;
    Ok(Some(Inspection {
        hosts,
        origins: tokio_rustls::TlsConnector::from(config),
        inputs: InspectionInputs {
            ca_cert: cert.get_ref().clone(),
            ca_key: key.get_ref().clone(),
            ca_digest: minter.digest(),
            origin_roots,
        },
        minter,
    }))
}

fn hosts_span(l: &RawListener) -> Range<usize> {
    l.inspect_hosts.as_ref().map_or(0..0, |h| h.span())
}

fn rule(
    i: usize,
    raw: &Spanned<RawEgressRule>,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<EgressRule, ConfigError> {
    let r = raw.get_ref();
    let action = match r.action.get_ref().as_str() {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        other => {
            return Err(err(
                r.action.span(),
                format!("egress_rule action {other:?}: expected \"allow\" or \"deny\""),
            ));
        }
    };
    let hosts = r
        .hosts
        .iter()
        .map(|h| {
            let text = h.get_ref();
            // A literal address matches a literal target (as lb prints it: IPv6 unbracketed).
            if let Ok(ip) = text.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
                return Ok(HostMatch::Exact(ip.to_string()));
            }
            let name = text.strip_prefix("*.").unwrap_or(text);
            if name.is_empty() || name.contains(['*', ':', '/', ' ']) {
                return Err(err(
                    h.span(),
                    format!("egress_rule host {text:?}: expected a name or *.suffix"),
                ));
            }
            Ok(HostMatch::parse(text))
        })
        .collect::<Result<_, _>>()?;
    let ports = r
        .ports
        .iter()
        .map(|p| match u16::try_from(*p.get_ref()) {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(err(
                p.span(),
                format!("egress_rule port {} is not in 1..=65535", p.get_ref()),
            )),
        })
        .collect::<Result<_, _>>()?;
    let cidrs = r
        .cidrs
        .iter()
        .map(|net| {
            let text = net.get_ref();
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    err(
                        net.span(),
                        format!("egress_rule cidr {text:?} is not a network (ADDRESS/PREFIX)"),
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    let paths = r
        .paths
        .iter()
        .map(|p| {
            let text = p.get_ref();
            let body = text.strip_suffix('*').unwrap_or(text);
            if !body.starts_with('/') || body.contains(['*', '?', '#', ' ']) {
                return Err(err(
                    p.span(),
                    format!("egress_rule path {text:?}: expected /exact or /prefix* (no query)"),
                ));
            }
            Ok(PathMatch::parse(text))
        })
        .collect::<Result<_, _>>()?;
    Ok(EgressRule {
        label: r.name.clone().unwrap_or_else(|| format!("rule#{}", i + 1)),
        action,
        hosts,
        ports,
        cidrs,
        users: r.users.clone(),
        paths,
    })
}

/// The inspection CA keys a listener has: (key, where it is written).
fn inspect_ca_keys(l: &RawListener) -> [(&'static str, Option<Range<usize>>); 3] {
    [
        (
            "inspect_ca_cert",
            l.inspect_ca_cert.as_ref().map(|v| v.span()),
        ),
        (
            "inspect_ca_key",
            l.inspect_ca_key.as_ref().map(|v| v.span()),
        ),
        (
            "inspect_ca_file",
            l.inspect_ca_file.as_ref().map(|v| v.span()),
        ),
    ]
}
