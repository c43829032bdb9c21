//! Egress policy of a forward-proxy listener: its rules in file order, first match wins,
//! default deny. A rule matches when every condition it has holds: `hosts` (the requested
//! name, exact or `*.suffix`), `ports` (without: 443 for CONNECT, 80 for plain http, for
//! allow rules; any port for deny rules), `cidrs` (the resolved address), `users` (the
//! authenticated proxy user), `paths` (the request's path: see `PathMatch`; known for plain
//! http requests and for requests inside an inspected tunnel; a tunnel, before any request,
//! is matched by an allow rule with `paths` only when it will be inspected, so every request
//! in it is checked again, and by no deny rule with `paths`). The decision is made per
//! resolved address: an address the SSRF guard classifies as non-public is matched only by
//! allow rules whose `cidrs` contain it (and by any deny rule); one no rule matches is refused
//! as `ssrf:CLASS`. `report` mode lets through what the rules would deny (logged as
//! `report`), except non-public addresses no allow rule's `cidrs` name: the SSRF guard is
//! enforced in both modes.
use std::{net::IpAddr, sync::Arc};

use super::{guard, target::Target};
use crate::config::HostMatch;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EgressMode {
    /// Denials are answered 403.
    #[default]
    Enforce,
    /// Denials by rules are logged and counted, and let through.
    Report,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressRule {
    /// Its `name`, or `rule#N` (1-based, in file order): what logs and metrics call it.
    pub label: String,
    pub action: Action,
    pub hosts: Vec<HostMatch>,
    pub ports: Vec<u16>,
    pub cidrs: Vec<ipnet::IpNet>,
    pub users: Vec<String>,
    pub paths: Vec<PathMatch>,
}

/// A `paths` entry: an exact path, or with a trailing `*` a prefix (`/api/*`, `/v1*`). Matched
/// against the request's path without its query, as sent (not decoded or normalised: a rule
/// for `/admin/*` does not see `/%61dmin/`; list deny rules for both or prefer allow lists).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

impl PathMatch {
    pub fn parse(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.to_owned()),
            None => Self::Exact(text.to_owned()),
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(exact) => path == exact,
            Self::Prefix(prefix) => path.starts_with(prefix.as_str()),
        }
    }
}

/// A forward-proxy listener's settings (compared on reload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressSettings {
    pub mode: EgressMode,
    pub rules: Vec<EgressRule>,
    /// `proxy_auth_file`: Basic credentials every request must carry.
    pub auth: Option<Arc<super::auth::Credentials>>,
    /// `connect_http10`: CONNECT over HTTP/1.0 is served (Python's http.client before 3.12
    /// sends it) instead of 405 (NGINX's tunnel module).
    pub connect_http10: bool,
    /// `sni_ports` (default 443): tunnels to these ports must carry a TLS ClientHello whose
    /// server name is the CONNECT host or a name the rules allow (domain fronting refused).
    pub sni_ports: Vec<u16>,
    /// `allow_missing_sni`: a ClientHello without a server name passes (else the tunnel closes).
    pub allow_missing_sni: bool,
    /// `inspect_hosts` and the inspection CA: CONNECT tunnels to these names are terminated
    /// and their requests checked one by one (`inspect.rs`).
    pub inspect: Option<Arc<super::inspect::Inspection>>,
    /// `[listener.cache]`: cacheable GETs through the proxy answered from the shared
    /// response cache (after the egress decision).
    pub cache: Option<crate::l7::cache::RouteCache>,
    /// `proxy_jwt_provider`: `Proxy-Authorization: Bearer` tokens of this provider, the
    /// identity read from `claim`.
    pub jwt: Option<ProxyJwt>,
}

/// Proxy identities from JWTs: the `[[jwt_provider]]` that verifies them and the claim that
/// names the user (a dotted path, e.g. `["sub"]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyJwt {
    pub provider: String,
    pub claim: Vec<String>,
}

/// What is asked: a target, by whom, how.
pub struct Request<'a> {
    pub target: &'a Target,
    pub user: Option<&'a str>,
    /// CONNECT (else a plain http request).
    pub connect: bool,
    /// The request's path (no query), when there is one: plain http, or a request inside an
    /// inspected tunnel; None for the CONNECT itself.
    pub path: Option<&'a str>,
    /// The tunnel will be inspected (each request in it decided with its path).
    pub inspected: bool,
}

/// The outcome for one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether lb may dial it.
    pub allowed: bool,
    /// `allow`, `deny`, or `report` (the rules deny, report mode lets it through).
    pub verdict: &'static str,
    /// The rule that decided: its label, `default` (no rule matched) or `ssrf:CLASS` (a
    /// non-public address no rule allows).
    pub rule: String,
}

impl EgressRule {
    /// The conditions that do not depend on the address: host, port, user.
    fn matches_request(&self, req: &Request<'_>) -> bool {
        let host = self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(&req.target.host));
        let port = if self.ports.is_empty() {
            self.action == Action::Deny || req.target.port == if req.connect { 443 } else { 80 }
        } else {
            self.ports.contains(&req.target.port)
        };
        let user = self.users.is_empty()
            || req
                .user
                .is_some_and(|u| self.users.iter().any(|name| name == u));
        host && port && user && self.matches_path(req)
    }

    /// The `paths` condition (see the module comment for a request without a path).
    fn matches_path(&self, req: &Request<'_>) -> bool {
        if self.paths.is_empty() {
            return true;
        }
        match req.path {
            Some(path) => self.paths.iter().any(|p| p.matches(path)),
            None => self.action == Action::Allow && req.inspected,
        }
    }

    fn matches(&self, req: &Request<'_>, addr: IpAddr, special: bool) -> bool {
        let host = self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(&req.target.host));
        let port = if self.ports.is_empty() {
            self.action == Action::Deny || req.target.port == if req.connect { 443 } else { 80 }
        } else {
            self.ports.contains(&req.target.port)
        };
        let cidr = self.cidrs.is_empty() || self.cidrs.iter().any(|n| n.contains(&addr));
        let user = self.users.is_empty()
            || req
                .user
                .is_some_and(|u| self.users.iter().any(|name| name == u));
        // A non-public address takes an allow rule that names it.
        let guarded =
            !special || self.action == Action::Deny || self.cidrs.iter().any(|n| n.contains(&addr));
        host && port && cidr && user && guarded && self.matches_path(req)
    }
}

impl EgressSettings {
    /// Whether an allow rule's `cidrs` contain `addr`.
    fn names(&self, addr: IpAddr) -> bool {
        self.rules
            .iter()
            .any(|r| r.action == Action::Allow && r.cidrs.iter().any(|n| n.contains(&addr)))
    }

    /// The decision when it does not depend on the addresses (enforce mode only): the first
    /// rule whose host, port and user conditions hold is a deny rule without `cidrs`, or no
    /// rule's do. Then lb refuses without resolving the name (a denied name never reaches
    /// the resolver: no DNS lookups as a side channel).
    pub fn decide_before_resolving(&self, req: &Request<'_>) -> Option<Decision> {
        if self.mode != EgressMode::Enforce {
            return None;
        }
        let denied = |rule: String| Decision {
            allowed: false,
            verdict: "deny",
            rule,
        };
        match self.rules.iter().find(|r| r.matches_request(req)) {
            None => Some(denied("default".to_owned())),
            Some(r) if r.action == Action::Deny && r.cidrs.is_empty() => {
                Some(denied(r.label.clone()))
            }
            Some(_) => None,
        }
    }

    /// Whether a tunnel to `req`'s target may carry a ClientHello naming `sni` (None: it named
    /// none): the CONNECT host itself, or a name the rules allow by name (same port and user;
    /// among rules with `hosts`, the first matching one decides). A rule without `hosts`
    /// names no one, so it cannot vouch for another name: that is the fronting defence.
    pub fn sni_allowed(&self, req: &Request<'_>, sni: Option<&str>) -> bool {
        let Some(sni) = sni else {
            return self.allow_missing_sni;
        };
        if req.target.ip.is_none() && sni.eq_ignore_ascii_case(&req.target.host) {
            return true;
        }
        let named = Target {
            host: sni.to_ascii_lowercase(),
            ip: None,
            port: req.target.port,
        };
        let ask = Request {
            target: &named,
            user: req.user,
            connect: req.connect,
            path: None,
            inspected: false,
        };
        self.rules
            .iter()
            .filter(|r| !r.hosts.is_empty())
            .find(|r| r.matches_request(&ask))
            .is_some_and(|r| r.action == Action::Allow)
    }

    /// The decision for dialing `addr` for `req`.
    pub fn decide(&self, req: &Request<'_>, addr: IpAddr) -> Decision {
        let class = guard::classify(addr);
        let rule = self
            .rules
            .iter()
            .find(|r| r.matches(req, addr, class.is_some()));
        let (allowed, rule) = match (rule, class) {
            (Some(r), _) => (r.action == Action::Allow, r.label.clone()),
            // Nothing allows this non-public address: the guard refuses it, in any mode.
            (None, Some(class)) => {
                return Decision {
                    allowed: false,
                    verdict: "deny",
                    rule: format!("ssrf:{class}"),
                };
            }
            (None, None) => (false, "default".to_owned()),
        };
        match (allowed, self.mode) {
            (true, _) => Decision {
                allowed: true,
                verdict: "allow",
                rule,
            },
            // Report mode lets rule denials through, but never to a non-public address that
            // no allow rule names.
            (false, EgressMode::Report) if class.is_none() || self.names(addr) => Decision {
                allowed: true,
                verdict: "report",
                rule,
            },
            (false, _) => Decision {
                allowed: false,
                verdict: "deny",
                rule,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(label: &str, action: Action) -> EgressRule {
        EgressRule {
            label: label.to_owned(),
            action,
            hosts: Vec::new(),
            ports: Vec::new(),
            cidrs: Vec::new(),
            users: Vec::new(),
            paths: Vec::new(),
        }
    }

    fn target(host: &str, port: u16) -> Target {
        Target {
            host: host.to_owned(),
            port,
            ip: host.parse().ok(),
        }
    }

    fn decide(
        s: &EgressSettings,
        host: &str,
        port: u16,
        addr: &str,
        user: Option<&str>,
    ) -> (bool, &'static str, String) {
        let t = target(host, port);
        let d = s.decide(
            &Request {
                target: &t,
                user,
                connect: true,
                path: None,
                inspected: false,
            },
            addr.parse().expect("address"),
        );
        (d.allowed, d.verdict, d.rule)
    }

    #[test]
    fn sni_is_the_connect_host_or_a_name_allowed_by_name() {
        let mut fronts = rule("fronts", Action::Allow);
        fronts.hosts = vec![HostMatch::parse("*.cdn.test")];
        let mut cidrs = rule("any-name", Action::Allow);
        cidrs.cidrs = vec!["0.0.0.0/0".parse().expect("net")];
        let mut s = EgressSettings {
            mode: EgressMode::Enforce,
            rules: vec![fronts, cidrs],
            auth: None,
            connect_http10: false,
            sni_ports: vec![443],
            allow_missing_sni: false,
            inspect: None,
            cache: None,
            jwt: None,
        };
        let t = target("api.example.com", 443);
        let ask = Request {
            target: &t,
            user: None,
            connect: true,
            path: None,
            inspected: false,
        };
        assert!(
            s.sni_allowed(&ask, Some("API.example.com")),
            "the CONNECT host"
        );
        assert!(s.sni_allowed(&ask, Some("img.cdn.test")), "allowed by name");
        // A CIDR-only rule allows any name to connect, but vouches for none in a ClientHello.
        assert!(!s.sni_allowed(&ask, Some("evil.test")));
        assert!(!s.sni_allowed(&ask, None));
        s.allow_missing_sni = true;
        assert!(s.sni_allowed(&ask, None));
        // A literal address as the CONNECT host: only names the rules allow.
        let ip = target("192.0.2.1", 443);
        let ask = Request {
            target: &ip,
            user: None,
            connect: true,
            path: None,
            inspected: false,
        };
        assert!(!s.sni_allowed(&ask, Some("192.0.2.1")));
        assert!(s.sni_allowed(&ask, Some("x.cdn.test")));
    }

    #[test]
    fn first_match_default_deny_ports_and_guard() {
        let mut allow = rule("web", Action::Allow);
        allow.hosts = vec![HostMatch::parse("*.example.com")];
        let mut deny = rule("no-evil", Action::Deny);
        deny.hosts = vec![HostMatch::parse("evil.example.com")];
        let mut local = rule("local", Action::Allow);
        local.cidrs = vec!["127.0.0.0/8".parse().expect("net")];
        local.ports = vec![8080];
        local.users = vec!["alice".to_owned()];
        let s = EgressSettings {
            mode: EgressMode::Enforce,
            rules: vec![deny, allow, local],
            auth: None,
            connect_http10: false,
            sni_ports: vec![443],
            allow_missing_sni: false,
            inspect: None,
            cache: None,
            jwt: None,
        };
        let public = "93.184.215.14";
        assert_eq!(
            decide(&s, "www.example.com", 443, public, None),
            (true, "allow", "web".into())
        );
        assert_eq!(
            decide(&s, "evil.example.com", 443, public, None),
            (false, "deny", "no-evil".into())
        );
        // Without ports an allow rule admits CONNECT to 443 only.
        assert_eq!(
            decide(&s, "www.example.com", 22, public, None),
            (false, "deny", "default".into())
        );
        assert_eq!(
            decide(&s, "other.org", 443, public, None),
            (false, "deny", "default".into())
        );
        // A name allowed by host that resolves to loopback: refused by the guard.
        assert_eq!(
            decide(&s, "www.example.com", 443, "127.0.0.1", None),
            (false, "deny", "ssrf:loopback".into())
        );
        // Loopback allowed by an explicit CIDR, for alice only.
        assert_eq!(
            decide(&s, "127.0.0.1", 8080, "127.0.0.1", Some("alice")),
            (true, "allow", "local".into())
        );
        assert_eq!(
            decide(&s, "127.0.0.1", 8080, "127.0.0.1", Some("bob")),
            (false, "deny", "ssrf:loopback".into())
        );

        let ask = |host: &str, port: u16, user: Option<&str>| {
            let t = target(host, port);
            s.decide_before_resolving(&Request {
                target: &t,
                user,
                connect: true,
                path: None,
                inspected: false,
            })
            .map(|d| d.rule)
        };
        assert_eq!(ask("evil.example.com", 443, None), Some("no-evil".into()));
        assert_eq!(ask("other.org", 443, None), Some("default".into()));
        assert_eq!(
            ask("www.example.com", 443, None),
            None,
            "depends on the address"
        );
        assert_eq!(
            ask("127.0.0.1", 8080, None),
            Some("default".into()),
            "alice's rule"
        );
        assert_eq!(
            ask("127.0.0.1", 8080, Some("alice")),
            None,
            "the cidr rule may match"
        );

        let report = EgressSettings {
            mode: EgressMode::Report,
            ..s
        };
        assert_eq!(
            decide(&report, "other.org", 443, public, None),
            (true, "report", "default".into())
        );
        assert_eq!(
            decide(&report, "other.org", 443, "10.0.0.1", None),
            (false, "deny", "ssrf:private".into())
        );
        let t = target("other.org", 443);
        let before = report.decide_before_resolving(&Request {
            target: &t,
            user: None,
            connect: true,
            path: None,
            inspected: false,
        });
        assert_eq!(before, None, "report mode resolves to check the guard");
        // A deny rule reported on loopback that an allow rule names: let through.
        assert_eq!(
            decide(&report, "evil.example.com", 8080, "127.0.0.1", None),
            (true, "report", "no-evil".into())
        );
    }

    #[test]
    fn path_rules_bind_requests_and_open_only_inspected_tunnels() {
        let mut secret = rule("no-secret", Action::Deny);
        secret.paths = vec![PathMatch::parse("/secret*")];
        let mut api = rule("api-only", Action::Allow);
        api.hosts = vec![HostMatch::parse("api.example.com")];
        api.paths = vec![PathMatch::parse("/v1/*"), PathMatch::parse("/health")];
        let s = EgressSettings {
            mode: EgressMode::Enforce,
            rules: vec![secret, api],
            auth: None,
            connect_http10: false,
            sni_ports: vec![443],
            allow_missing_sni: false,
            inspect: None,
            cache: None,
            jwt: None,
        };
        let t = target("api.example.com", 443);
        let ask = |path: Option<&'static str>, inspected: bool| {
            let d = s.decide(
                &Request {
                    target: &t,
                    user: None,
                    connect: true,
                    path,
                    inspected,
                },
                "93.184.215.14".parse().expect("address"),
            );
            (d.allowed, d.rule)
        };
        // The tunnel: opened by the path rule only when its requests will be checked.
        assert_eq!(ask(None, true), (true, "api-only".into()));
        assert_eq!(ask(None, false), (false, "default".into()));
        // Its requests.
        assert_eq!(ask(Some("/v1/users"), true), (true, "api-only".into()));
        assert_eq!(ask(Some("/health"), true), (true, "api-only".into()));
        assert_eq!(ask(Some("/healthz"), true), (false, "default".into()));
        assert_eq!(ask(Some("/secret/x"), true), (false, "no-secret".into()));
    }
}
