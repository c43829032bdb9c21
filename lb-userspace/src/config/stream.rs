//! The stream (tcp/udp) keys of `[[listener]]` and `[[route]]`: listener mode, idle timeout,
//! ClientHello deadline, UDP session cap, and `sni` routes; with the checks that keep HTTP-only
//! keys off stream listeners and stream-only keys off HTTP ones.
use std::{ops::Range, path::Path, time::Duration};

use serde::Deserialize;

use super::{
    ConfigError,
    listener::{ListenerConfig, RawListener},
    pool::{HashKey, PoolConfig},
    route::{HostMatch, RawRoute},
    value::duration,
};

/// What a listener speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerMode {
    /// HTTP/1.1 + HTTP/2 (TLS when it has certificates): the reverse proxy.
    #[default]
    Http,
    /// Each connection forwarded as a byte stream (TLS passed through, routed by SNI).
    Tcp,
    /// Datagrams relayed per client session.
    Udp,
    /// A forward proxy (egress gateway): CONNECT tunnels and absolute-form http requests,
    /// checked against the listener's egress rules.
    ForwardProxy,
}

impl ListenerMode {
    fn name(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::ForwardProxy => "forward_proxy",
        }
    }
}

/// Settings of tcp/udp listeners (unused by http listeners).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamSettings {
    /// A connection (tcp) or session (udp) with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// tcp listeners with `sni` routes: the time a client gets to send its whole ClientHello.
    pub client_hello_timeout: Duration,
    /// udp: most client sessions at once; datagrams from further clients are dropped.
    pub max_sessions: usize,
}

const TCP_IDLE: Duration = Duration::from_secs(600);
const UDP_IDLE: Duration = Duration::from_secs(30);

fn err(path: &Path, text: &str, span: Range<usize>, message: String) -> ConfigError {
    ConfigError::at(path, text, span, message)
}

/// The listener's mode and stream settings, checked against its other keys.
pub(super) fn listener_keys(
    l: &RawListener,
    path: &Path,
    text: &str,
) -> Result<(ListenerMode, StreamSettings), ConfigError> {
    let mode = l.mode.as_ref().map_or(ListenerMode::Http, |m| *m.get_ref());
    let mode_span = || l.mode.as_ref().map_or(l.name.span(), |m| m.span());
    let at = |span: Range<usize>, message: String| err(path, text, span, message);
    if mode == ListenerMode::ForwardProxy && !l.tls.is_empty() {
        return Err(err(
            path,
            text,
            mode_span(),
            "a forward_proxy listener is plain HTTP/1.1 (no [[listener.tls]]; clients use CONNECT for TLS)".to_owned(),
        ));
    }
    if mode != ListenerMode::Http && !l.tls.is_empty() {
        return Err(err(
            path,
            text,
            mode_span(),
            format!(
                "a {} listener cannot have [[listener.tls]] certificates (TLS is passed through; route it by sni)",
                mode.name()
            ),
        ));
    }
    if let Some(n) = l
        .max_connections_per_client
        .as_ref()
        .filter(|_| mode == ListenerMode::Udp)
    {
        return Err(err(
            path,
            text,
            n.span(),
            "max_connections_per_client applies to http and tcp listeners (udp: max_sessions)"
                .to_owned(),
        ));
    }
    if mode == ListenerMode::Udp && !l.proxy_protocol_from.is_empty() {
        return Err(err(
            path,
            text,
            mode_span(),
            "a udp listener cannot take proxy_protocol_from (PROXY headers come on streams)"
                .to_owned(),
        ));
    }
    // (key, its span, whether forward_proxy listeners take it too)
    let http_only = [
        (
            "max_header_bytes",
            l.max_header_bytes.as_ref().map(|v| v.span()),
            true,
        ),
        (
            "max_body_bytes",
            l.max_body_bytes.map(|_| mode_span()),
            false,
        ),
        (
            "header_timeout",
            l.header_timeout.as_ref().map(|v| v.span()),
            true,
        ),
        // Stream listeners neither cap connections nor read X-Forwarded-For: refused rather
        // than silently ignored.
        (
            "max_connections",
            l.max_connections.as_ref().map(|v| v.span()),
            true,
        ),
        (
            "trusted_proxies",
            l.trusted_proxies.first().map(|v| v.span()),
            false,
        ),
    ];
    for (key, span, proxy_too) in http_only {
        let refused = match mode {
            ListenerMode::Http => false,
            ListenerMode::ForwardProxy => !proxy_too,
            ListenerMode::Tcp | ListenerMode::Udp => true,
        };
        if let (true, Some(span)) = (refused, span) {
            let also = if proxy_too {
                " (and forward_proxy)"
            } else {
                ""
            };
            return Err(err(
                path,
                text,
                span,
                format!("{key} applies to http{also} listeners only"),
            ));
        }
    }
    let stream_only = [
        ("idle_timeout", l.idle_timeout.as_ref().map(|v| v.span())),
        (
            "client_hello_timeout",
            l.client_hello_timeout.as_ref().map(|v| v.span()),
        ),
        ("max_sessions", l.max_sessions.as_ref().map(|v| v.span())),
    ];
    for (key, span) in stream_only {
        // Forward-proxy tunnels have an idle timeout too.
        let proxy_too = key == "idle_timeout";
        let refused =
            mode == ListenerMode::Http || (mode == ListenerMode::ForwardProxy && !proxy_too);
        if let (true, Some(span)) = (refused, span) {
            let modes = if proxy_too {
                "tcp, udp and forward_proxy"
            } else {
                "tcp and udp"
            };
            return Err(err(
                path,
                text,
                span,
                format!("{key} applies to {modes} listeners only"),
            ));
        }
    }
    let max_sessions = match &l.max_sessions {
        Some(n) if *n.get_ref() == 0 => {
            return Err(err(
                path,
                text,
                n.span(),
                "max_sessions must be at least 1".to_owned(),
            ));
        }
        Some(n) => *n.get_ref(),
        None => 10_000,
    };
    let default_idle = if mode == ListenerMode::Udp {
        UDP_IDLE
    } else {
        TCP_IDLE
    };
    let settings = StreamSettings {
        idle_timeout: duration(&l.idle_timeout, default_idle, "idle_timeout", &at)?,
        client_hello_timeout: duration(
            &l.client_hello_timeout,
            Duration::from_secs(5),
            "client_hello_timeout",
            &at,
        )?,
        max_sessions,
    };
    if let Some(v) = l
        .idle_timeout
        .as_ref()
        .filter(|_| settings.idle_timeout.is_zero())
    {
        return Err(err(
            path,
            text,
            v.span(),
            "idle_timeout must be above zero".to_owned(),
        ));
    }
    Ok((mode, settings))
}

impl HostMatch {
    /// `name` or `*.suffix`, case-insensitive.
    pub fn parse(pattern: &str) -> Self {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix('*') {
            Some(suffix) => Self::Suffix(suffix.to_owned()),
            None => Self::Exact(pattern),
        }
    }
}

/// The route's `sni` match, checked against its listener's mode: `sni` only on tcp
/// listeners; host, path_prefix and strip_prefix only on http ones; a stream route's pool
/// must hash on the client address (tcp/udp carry no headers or cookies) and a udp route's
/// pool cannot send PROXY headers. The listener and pool are known to exist.
pub(super) fn route_keys(
    r: &RawRoute,
    listeners: &[ListenerConfig],
    pools: &[PoolConfig],
    path: &Path,
    text: &str,
) -> Result<Option<HostMatch>, ConfigError> {
    let mode = listeners
        .iter()
        .find(|l| l.name == *r.listener.get_ref())
        .map_or(ListenerMode::Http, |l| l.mode);
    let listener = r.listener.get_ref();
    if mode == ListenerMode::ForwardProxy {
        return Err(err(
            path,
            text,
            r.listener.span(),
            format!(
                "{listener:?} is a forward_proxy listener, which takes no routes (egress_rule instead)"
            ),
        ));
    }
    if let Some(sni) = r.sni.as_ref().filter(|_| mode != ListenerMode::Tcp) {
        return Err(err(
            path,
            text,
            sni.span(),
            format!(
                "sni routes need a tcp listener ({listener:?} is {})",
                mode.name()
            ),
        ));
    }
    if mode == ListenerMode::Http {
        return Ok(None);
    }
    let http_only = [
        ("host", r.host.as_ref().map(|v| v.span())),
        ("path_prefix", r.path_prefix.as_ref().map(|v| v.span())),
        ("strip_prefix", r.strip_prefix.then(|| r.listener.span())),
        ("timeout", r.timeout.as_ref().map(|v| v.span())),
        (
            "request_headers",
            r.request_headers.as_ref().map(|v| v.span()),
        ),
        (
            "response_headers",
            r.response_headers.as_ref().map(|v| v.span()),
        ),
        ("compress", r.compress.as_ref().map(|v| v.span())),
        ("redirect", r.redirect.as_ref().map(|v| v.span())),
        ("respond", r.respond.as_ref().map(|v| v.span())),
        ("jwt", r.jwt.as_ref().map(|v| v.span())),
        ("cors", r.cors.as_ref().map(|v| v.span())),
        ("api_key", r.api_key.as_ref().map(|v| v.span())),
        ("client_cert", r.client_cert.as_ref().map(|v| v.span())),
        ("rate_limit", r.rate_limit.first().map(|v| v.span())),
        (
            "buffer_request",
            r.buffer_request.as_ref().map(|v| v.span()),
        ),
        (
            "buffer_response",
            r.buffer_response.as_ref().map(|v| v.span()),
        ),
    ];
    for (key, span) in http_only {
        if let Some(span) = span {
            let hint = if mode == ListenerMode::Tcp {
                " (route tcp by sni)"
            } else {
                ""
            };
            return Err(err(
                path,
                text,
                span,
                format!(
                    "{key} applies to http routes; {listener:?} is a {} listener{hint}",
                    mode.name()
                ),
            ));
        }
    }
    if let Some(pool) = r
        .pool
        .as_ref()
        .and_then(|name| pools.iter().find(|p| p.name == *name.get_ref()))
    {
        if pool.hash_key != HashKey::ClientIp {
            return Err(err(
                path,
                text,
                r.pool.as_ref().map_or(r.listener.span(), |p| p.span()),
                format!(
                    "pool {:?} hashes on a header or cookie, which {} connections do not carry (use hash_key = \"client_ip\")",
                    pool.name,
                    mode.name()
                ),
            ));
        }
        if mode == ListenerMode::Udp && pool.proxy_protocol.is_some() {
            return Err(err(
                path,
                text,
                r.pool.as_ref().map_or(r.listener.span(), |p| p.span()),
                format!(
                    "pool {:?} sends PROXY headers, which udp listeners do not",
                    pool.name
                ),
            ));
        }
    }
    Ok(r.sni.as_ref().map(|s| HostMatch::parse(s.get_ref())))
}
