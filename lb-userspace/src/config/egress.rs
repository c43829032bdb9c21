//! The forward-proxy keys of `[[listener]]` (`mode = "forward_proxy"`): `egress_mode`,
//! `[[listener.egress_rule]]`, `proxy_auth_file`, `connect_http10`, `sni_ports` and
//! `allow_missing_sni`, compiled into the listener's
//! `EgressSettings` (semantics in `crate::l7::egress::policy`).
use std::{ops::Range, path::Path, sync::Arc};

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, HostMatch, ListenerMode, listener::RawListener};
use crate::l7::egress::{
    auth,
    policy::{Action, EgressMode, EgressRule, EgressSettings},
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
}

/// The listener's egress settings: Some for forward-proxy listeners (no rules: everything is
/// denied), and the egress keys refused on other listeners.
pub(super) fn listener_keys(
    l: &RawListener,
    mode: ListenerMode,
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
        ];
        if let Some((key, span)) = keys.into_iter().find_map(|(k, s)| Some((k, s?))) {
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
    })))
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
    Ok(EgressRule {
        label: r.name.clone().unwrap_or_else(|| format!("rule#{}", i + 1)),
        action,
        hosts,
        ports,
        cidrs,
        users: r.users.clone(),
    })
}
