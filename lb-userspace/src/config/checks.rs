//! Checks across `[[listener]]` and `[[route]]` sections that `lb run` and `lb check-config`
//! share (both parse through here): two listeners on one address, glob characters in
//! `path_prefix`; and the warnings only `lb check-config` prints (a pool with no backends
//! and no discovery).
use std::{net::SocketAddr, path::Path};

use toml::Spanned;

use super::{ConfigError, RawFile, listener::RawListener, stream::ListenerMode};

/// Whether sockets bound to `a` and `b` would clash: same port (not 0, which the kernel
/// picks), and the same address or a wildcard covering the other (`[::]` covers IPv4 too:
/// Linux binds it dual-stack).
pub fn addresses_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let covers = |w: SocketAddr, o: SocketAddr| {
        w.ip().is_unspecified() && (w.is_ipv6() || w.is_ipv4() == o.is_ipv4())
    };
    a.ip() == b.ip() || covers(a, b) || covers(b, a)
}

/// Refuses a listener whose socket would clash with an earlier one's (`seen`: name, address,
/// udp), then records it. udp listeners only clash with udp ones, http and tcp ones with each
/// other.
pub(super) fn listener_address(
    l: &RawListener,
    addr: SocketAddr,
    seen: &mut Vec<(String, SocketAddr, bool)>,
    path: &Path,
    text: &str,
) -> Result<(), ConfigError> {
    let udp = l
        .mode
        .as_ref()
        .is_some_and(|m| *m.get_ref() == ListenerMode::Udp);
    if let Some((other, other_addr, _)) = seen
        .iter()
        .find(|(_, a, u)| *u == udp && addresses_overlap(*a, addr))
    {
        let how = if *other_addr == addr {
            "is also".to_owned()
        } else {
            format!("overlaps {other_addr}, the address of")
        };
        return Err(ConfigError::at(
            path,
            text,
            l.address.span(),
            format!(
                "listener {:?}: address {addr} {how} listener {other:?} (one socket per address)",
                l.name.get_ref()
            ),
        ));
    }
    seen.push((l.name.get_ref().clone(), addr, udp));
    Ok(())
}

/// The first glob character (`*`, `?`, `[`) in a `path_prefix`, if any: path_prefix matches
/// literally (on segment boundaries), so such a prefix is almost certainly meant as a pattern
/// and would silently never match.
pub(super) fn glob_char(prefix: &str) -> Option<char> {
    prefix.chars().find(|c| matches!(c, '*' | '?' | '['))
}

/// The error for a `path_prefix` holding a glob character.
pub(super) fn glob_prefix(prefix: &Spanned<String>, path: &Path, text: &str) -> ConfigError {
    let c = glob_char(prefix.get_ref()).unwrap_or('*');
    ConfigError::at(
        path,
        text,
        prefix.span(),
        format!(
            "path_prefix {:?} holds the glob character {c:?}, but path_prefix is matched literally; use path_regex for patterns (e.g. path_regex = \"^/api/\")",
            prefix.get_ref()
        ),
    )
}

/// What `lb check-config` warns about in a file that parses: `FILE:LINE: warning: ...` lines.
pub fn warnings(text: &str, path: &Path) -> Vec<String> {
    let Ok(raw) = RawFile::parse(text, path) else {
        return Vec::new();
    };
    raw.pools
        .iter()
        .map(Spanned::get_ref)
        // A discovered pool's backends come from DNS.
        .filter(|p| p.backends.is_empty() && p.discovery.is_none())
        .map(|p| {
            let at = ConfigError::at(path, text, p.name.span(), String::new());
            format!(
                "{}:{}: warning: pool {:?} has no backends (requests routed to it fail)",
                path.display(),
                at.line,
                p.name.get_ref()
            )
        })
        .collect()
}
