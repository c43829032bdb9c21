//! Forward-proxy listeners (`mode = "forward_proxy"`): an egress gateway for clients that send
//! their outbound traffic through lb. Plain HTTP/1.1; `CONNECT host:port` opens a tunnel (lb
//! answers 200 and splices bytes both ways), an absolute-form request (`GET http://host/p`) is
//! sent on to the origin with `Via: 1.1 lb` and without hop-by-hop and `Proxy-*` headers.
//!
//! Each request, in order: its target is parsed strictly (`target.rs`: 400, or 405 for
//! CONNECT over HTTP/1.0); with `proxy_auth_file` or `proxy_jwt_provider`, its
//! `Proxy-Authorization` (Basic or Bearer) is verified (`identity.rs`: 407); a name the rules
//! deny whatever its addresses is refused (403) without being resolved; otherwise lb resolves
//! it itself and every address gets a decision from the listener's egress rules and the SSRF
//! guard (`policy.rs`, `guard.rs`: 403 when none may be dialed). A CONNECT then dials exactly
//! the allowed addresses (`dial.rs`: Happy Eyeballs, never resolving again; 502 when none
//! answers), and goes to
//! `tunnel.rs`; an absolute-form request goes to `exchange.rs` with its allowed addresses
//! (the listener's cache, else a kept origin connection to one of them or a new one). Each
//! decision is logged (tracing at info, the access log's `egress` line) and counted
//! (`lb_egress_decisions`). A CONNECT to a name in `inspect_hosts` goes to `inspect.rs`
//! instead of `tunnel.rs`: lb terminates its TLS with a leaf from `mint.rs` and each request
//! in it takes the steps of `inspected` (its path decided, logged like an absolute-form
//! request, sent on by `exchange.rs` over TLS).
pub mod auth;
mod dial;
mod exchange;
mod forward;
pub mod guard;
mod identity;
pub mod inspect;
pub mod mint;
mod origins;
pub mod policy;
pub mod target;
mod tunnel;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use prometheus_client::metrics::counter::Counter;
use tokio::{net::TcpListener, task::JoinHandle};

use self::{
    dial::dial,
    identity::Identities,
    origins::Origins,
    policy::{Decision, EgressSettings},
    target::Target,
};
use super::{
    access_log::LoggedBody,
    config::ListenerConfig,
    http_conn::{HttpBuilders, Protocol},
    lifecycle::{ListenerGate, Tracker},
    pool::ProxyBody,
    proxy::Proxy,
};
use crate::admin::metrics::EgressLabels;

/// What every connection of one forward-proxy listener needs.
struct EgressListener {
    name: Arc<str>,
    settings: Arc<EgressSettings>,
    /// `proxy_auth_file`, `proxy_jwt_provider`: who requests must prove they are.
    identities: Identities,
    /// Kept connections to origins (absolute-form and inspected requests).
    origins: Arc<Origins>,
    /// `lb_egress_cache_requests_total` by `CacheStatus::ALL` order, with a cache and metrics.
    cache_counters: Vec<Counter>,
    /// `lb_egress_decisions_total` of this listener.
    decisions: Arc<DecisionMeters>,
    /// Tunnels with no byte either way for this long are closed.
    idle_timeout: Duration,
    trust: Option<(Vec<ipnet::IpNet>, Duration)>,
    per_client: Option<Arc<super::client_limit::ClientConnections>>,
    /// The HTTP server settings every connection is served with (HTTP/1.1 only here; made
    /// once: a builder per connection allocated its timer each time).
    http: HttpBuilders,
    proxy: Arc<ArcSwap<Proxy>>,
    /// Counts tunnels (which outlive their CONNECT's connection) into the graceful stop.
    tunnels: Tracker,
}

/// Starts serving a forward-proxy listener on its bound socket; aborting the task stops it.
pub(super) fn spawn(
    l: &ListenerConfig,
    socket: Arc<TcpListener>,
    proxy: Arc<ArcSwap<Proxy>>,
    gate: ListenerGate,
) -> JoinHandle<()> {
    let settings = l.egress.clone().unwrap_or_else(|| {
        Arc::new(EgressSettings {
            mode: policy::EgressMode::Enforce,
            rules: Vec::new(),
            auth: None,
            connect_http10: false,
            sni_ports: vec![443],
            allow_missing_sni: false,
            inspect: None,
            cache: None,
            jwt: None,
        })
    });
    let cache_counters = exchange::cache_meters(&l.name, &settings, &proxy);
    let decisions = Arc::new(DecisionMeters::new(&l.name, &proxy));
    let listener = Arc::new(EgressListener {
        name: Arc::from(l.name.as_str()),
        identities: identity::identities(&settings),
        origins: Arc::default(),
        cache_counters,
        decisions,
        settings,
        idle_timeout: l.stream.idle_timeout,
        trust: (!l.proxy_protocol_from.is_empty())
            .then(|| (l.proxy_protocol_from.clone(), l.proxy_protocol_timeout)),
        per_client: l
            .max_connections_per_client
            .map(super::client_limit::ClientConnections::new),
        http: HttpBuilders::new(l.max_header_bytes, l.header_timeout),
        proxy,
        tunnels: gate.tracker(),
    });
    tokio::spawn(accept_loop(socket, listener, gate))
}

async fn accept_loop(socket: Arc<TcpListener>, listener: Arc<EgressListener>, gate: ListenerGate) {
    // Set once on the listening socket, TCP_NODELAY is inherited by every accepted one
    // (Linux): one system call per tunnel fewer. Set per connection only if this failed.
    let inherited = socket2::SockRef::from(&*socket).set_nodelay(true).is_ok();
    loop {
        let admission = gate.admit().await;
        let (mut tcp, socket_peer) = match socket.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(listener = %listener.name, %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !inherited {
            let _ = tcp.set_nodelay(true);
        }
        let listener = listener.clone();
        let phase = admission.phase();
        tokio::spawn(
            admission.run(async move {
                let mut peer = socket_peer;
                if let Some((nets, timeout)) = listener
                    .trust
                    .as_ref()
                    .filter(|t| t.0.iter().any(|n| n.contains(&socket_peer.ip())))
                {
                    match super::proxy_header::read(&mut tcp, *timeout).await {
                        Ok(Some(client)) => peer = client,
                        Ok(None) => {}
                        Err(err) => {
                            let errors = &listener.proxy.load().proxy_header_errors;
                            errors.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%socket_peer, %err, ?nets, "PROXY header rejected");
                            return;
                        }
                    }
                }
                // The generation's meters only for this check (a load guard is not for holding).
                let admitted = {
                    let proxy = listener.proxy.load();
                    super::client_limit::admit_on(
                        listener.per_client.as_ref(),
                        peer.ip(),
                        &listener.name,
                        proxy.meters(),
                    )
                };
                let Ok(_slot) = admitted else { return };
                let service = {
                    let listener = listener.clone();
                    service_fn(move |req| {
                        let listener = listener.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(listener.handle(req, peer).await)
                        }
                    })
                };
                listener
                    .http
                    .serve(Protocol::Http1, tcp, service, phase)
                    .await;
            }),
        );
    }
}

/// What the log and the access log say about one request.
struct Record<'a> {
    client: SocketAddr,
    user: Option<&'a str>,
    method: &'a str,
    target: Option<&'a Target>,
    /// The request's path (absolute-form and inspected requests).
    path: Option<&'a str>,
    /// An inspected tunnel, or a request inside one (the line says `"inspected":true`).
    inspected: bool,
    address: Option<SocketAddr>,
    decision: Option<&'a Decision>,
    /// What the listener's cache did (with `[listener.cache]`, absolute-form and inspected
    /// requests).
    cache: Option<super::cache::CacheStatus>,
    started: Instant,
}

impl EgressListener {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let method = req.method().as_str().to_owned();
        let mut record = Record {
            client,
            user: None,
            method: &method,
            target: None,
            path: None,
            inspected: false,
            address: None,
            decision: None,
            cache: None,
            started,
        };
        let connect = req.method() == hyper::Method::CONNECT;
        let parsed = if connect {
            target::connect(req.version(), req.uri(), self.settings.connect_http10)
                .map(|t| (t, String::new()))
        } else {
            target::absolute(req.method(), req.uri())
        };
        let (target, path) = match parsed {
            Ok(parsed) => parsed,
            Err(bad) => {
                let status = StatusCode::from_u16(bad.status).unwrap_or(StatusCode::BAD_REQUEST);
                tracing::debug!(listener = %self.name, %client, uri = %req.uri(), reason = bad.reason, "bad proxy request");
                return self.answer(&record, status, bad.reason);
            }
        };
        record.target = Some(&target);
        // The path rules see the path without its query.
        let rule_path = (!connect).then(|| path.split('?').next().unwrap_or_default());
        if !connect {
            record.path = Some(&path);
        }
        let inspection = self
            .settings
            .inspect
            .clone()
            .filter(|i| connect && i.covers(&target));
        let user = if self.identities.required() {
            let header = req.headers().get(header::PROXY_AUTHORIZATION);
            // Boxed for the same reason (argon2 or a JWT key fetch inside).
            match Box::pin(self.identities.check(header, &self.proxy)).await {
                Ok(user) => Some(user),
                Err(refused) => {
                    self.count("unauthenticated", refused.rule);
                    let mut response = self.answer(
                        &record,
                        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                        "proxy authentication required",
                    );
                    for challenge in self.identities.challenges(refused) {
                        response
                            .headers_mut()
                            .append(header::PROXY_AUTHENTICATE, challenge);
                    }
                    return response;
                }
            }
        } else {
            None
        };
        record.user = user.as_deref();
        let ask = policy::Request {
            target: &target,
            user: record.user,
            connect,
            path: rule_path,
            inspected: inspection.is_some(),
        };
        if let Some(decision) = self.settings.decide_before_resolving(&ask) {
            record.decision = Some(&decision);
            self.decided(&record, None, &decision);
            return self.answer(&record, StatusCode::FORBIDDEN, "egress denied by policy");
        }
        let addresses = match resolve(&target).await {
            Ok(addresses) => addresses,
            Err(err) => {
                tracing::info!(listener = %self.name, %client, target = %target.authority(), %err, "egress: cannot resolve");
                return self.answer(
                    &record,
                    StatusCode::BAD_GATEWAY,
                    "cannot resolve the target",
                );
            }
        };
        let decisions: Vec<(IpAddr, Decision)> = addresses
            .iter()
            .map(|&ip| (ip, self.settings.decide(&ask, ip)))
            .collect();
        // What the log says: the first allowed address's decision, else the first refusal.
        let Some(shown) = decisions
            .iter()
            .find(|(_, d)| d.allowed)
            .or_else(|| decisions.first())
        else {
            return self.answer(
                &record,
                StatusCode::BAD_GATEWAY,
                "cannot resolve the target",
            );
        };
        let (shown_ip, shown) = (shown.0, &shown.1);
        record.decision = Some(shown);
        self.decided(&record, Some(shown_ip), shown);
        if !shown.allowed {
            record.address = Some(SocketAddr::new(shown_ip, target.port));
            return self.answer(&record, StatusCode::FORBIDDEN, "egress denied by policy");
        }
        let allowed = decisions
            .iter()
            .filter(|(_, d)| d.allowed)
            .map(|(ip, _)| *ip);
        if !connect {
            let origin = exchange::Origin::plain(&target, &path, allowed);
            // Boxed: its state (cache, origin pool, forwarding) would otherwise sit in every
            // request's future, and be moved with it, CONNECT tunnels' included.
            return Box::pin(self.exchange(req, record, origin, None)).await;
        }
        let Some((upstream, address)) = dial(allowed, target.port).await else {
            return self.answer(
                &record,
                StatusCode::BAD_GATEWAY,
                "the target did not accept the connection",
            );
        };
        record.address = Some(address);
        if let Some(inspection) = inspection {
            record.inspected = true;
            let line = self.opening_line(&record);
            let (meters, proxy) = (self.decisions.clone(), self.proxy.clone());
            let logged_target = target.clone();
            let tunnel = inspect::Tunnel {
                client,
                user: user.clone(),
                target: target.clone(),
                address,
                dialed: tokio::sync::Mutex::new(Some(upstream)),
            };
            let tunnels = &self.tunnels;
            return inspect::open(req, self.clone(), tunnel, inspection, tunnels, move |sni| {
                let line = sni_outcome(&meters, Some(&logged_target), line, &sni);
                if let (Some(line), Some(log)) = (line, proxy.load().observer().access_log()) {
                    log.write_json(&finish(line, 0, 0, started));
                }
            });
        }
        // The tunnel's access log line, made now (what the CONNECT was) only when it will be
        // written: a tunnel without an access log builds no JSON.
        let line = self.opening_line(&record);
        let (proxy, idle) = (self.proxy.clone(), self.idle_timeout);
        let checks_sni = self.settings.sni_ports.contains(&target.port);
        // Named in the log when the ClientHello check refuses the tunnel.
        let logged_target = checks_sni.then(|| target.clone());
        let sni_check: Option<tunnel::SniCheck> = checks_sni.then(|| {
            let settings = self.settings.clone();
            let (target, user) = (target.clone(), user.clone());
            Box::new(move |sni: Option<&str>| {
                let ask = policy::Request {
                    target: &target,
                    user: user.as_deref(),
                    connect: true,
                    path: None,
                    inspected: false,
                };
                settings.sni_allowed(&ask, sni)
            }) as tunnel::SniCheck
        });
        let meters = self.decisions.clone();
        let tunnels = &self.tunnels;
        tunnel::open(
            req,
            upstream,
            idle,
            tunnels,
            sni_check,
            move |up, down, sni| {
                let line = sni_outcome(&meters, logged_target.as_ref(), line, &sni);
                if let (Some(line), Some(log)) = (line, proxy.load().observer().access_log()) {
                    log.write_json(&finish(line, up, down, started));
                }
            },
        )
    }

    /// A request inside an inspected tunnel: decided again with its path for the address the
    /// CONNECT reached, then answered by `exchange` (over TLS to that address); logged like an
    /// absolute-form request, with its path.
    async fn inspected(
        self: Arc<Self>,
        req: Request<Incoming>,
        tunnel: &inspect::Tunnel,
    ) -> Response<ProxyBody> {
        let method = req.method().as_str().to_owned();
        let path = req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let mut record = Record {
            client: tunnel.client,
            user: tunnel.user.as_deref(),
            method: &method,
            target: Some(&tunnel.target),
            path: Some(&path),
            inspected: true,
            address: Some(tunnel.address),
            decision: None,
            cache: None,
            started: Instant::now(),
        };
        // Origin form only: the tunnel's host is the only one it may reach.
        if req.method() == hyper::Method::CONNECT
            || req.uri().scheme().is_some()
            || req.uri().authority().is_some()
        {
            return self.answer(
                &record,
                StatusCode::BAD_REQUEST,
                "an inspected tunnel carries origin-form requests",
            );
        }
        let ask = policy::Request {
            target: &tunnel.target,
            user: record.user,
            connect: true,
            path: Some(req.uri().path()),
            inspected: true,
        };
        let decision = self.settings.decide(&ask, tunnel.address.ip());
        record.decision = Some(&decision);
        self.decided(&record, Some(tunnel.address.ip()), &decision);
        if !decision.allowed {
            return self.answer(&record, StatusCode::FORBIDDEN, "egress denied by policy");
        }
        let origin = exchange::Origin::inspected(&tunnel.target, &path, tunnel.address);
        self.exchange(req, record, origin, Some(&tunnel.dialed))
            .await
    }

    /// `response`, whose access log line is written once it is over, with the request body
    /// bytes `up` counted and the response body bytes sent.
    fn logged_at_end(
        &self,
        record: &Record<'_>,
        response: Response<ProxyBody>,
        up: Arc<AtomicU64>,
    ) -> Response<ProxyBody> {
        if self.proxy.load().observer().access_log().is_none() {
            return response;
        }
        let line = self.line(record, response.status().as_u16());
        let (proxy, started) = (self.proxy.clone(), record.started);
        response.map(|body| {
            LoggedBody::on_end(body, move |down| {
                if let Some(log) = proxy.load().observer().access_log() {
                    let up = up.load(Ordering::Relaxed);
                    log.write_json(&finish(line, up, down, started));
                }
            })
        })
    }

    /// A local answer (text body, connection kept), logged.
    fn answer(&self, record: &Record<'_>, status: StatusCode, reason: &str) -> Response<ProxyBody> {
        self.log(record, status.as_u16());
        super::answer::text_answer(status, Bytes::from(format!("{reason}\n")))
    }

    fn count(&self, decision: &str, rule: &str) {
        self.decisions.count(decision, rule);
    }

    /// A policy decision counted and logged (`address`: the one it was made for, when the
    /// name was resolved first). Denials (and report-mode "would deny") always reach lb's
    /// log; routine allows only at debug level (a formatted stderr write per tunnel is a
    /// cost on the hot path, and the access log records every decision anyway).
    fn decided(&self, record: &Record<'_>, address: Option<IpAddr>, decision: &Decision) {
        self.count(decision.verdict, &decision.rule);
        if decision.verdict == "allow" && !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        tracing::info!(
            listener = %self.name,
            client = %record.client,
            user = record.user.unwrap_or("-"),
            method = %record.method,
            target = %record.target.map_or_else(String::new, Target::authority),
            path = record.path.unwrap_or("-"),
            address = %address.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            decision = decision.verdict,
            rule = %decision.rule,
            "egress decision"
        );
    }

    /// A tunnel's line (status 200) when the access log is on.
    fn opening_line(&self, record: &Record<'_>) -> Option<serde_json::Value> {
        self.proxy
            .load()
            .observer()
            .access_log()
            .is_some()
            .then(|| self.line(record, 200))
    }

    fn line(&self, record: &Record<'_>, status: u16) -> serde_json::Value {
        let mut line = serde_json::json!({
            "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            "kind": "egress",
            "listener": &*self.name,
            "client": record.client,
            "user": record.user,
            "method": record.method,
            "target": record.target.map(Target::authority),
            "path": record.path,
            "address": record.address,
            "decision": record.decision.map(|d| d.verdict),
            "rule": record.decision.map(|d| d.rule.as_str()),
            "status": status,
        });
        if let Some(map) = line.as_object_mut() {
            if record.inspected {
                map.insert("inspected".into(), true.into());
            }
            if let Some(cache) = record.cache {
                map.insert("cache".into(), cache.as_str().into());
            }
        }
        line
    }

    fn log(&self, record: &Record<'_>, status: u16) {
        if let Some(log) = self.proxy.load().observer().access_log() {
            let line = self.line(record, status);
            log.write_json(&finish(line, 0, 0, record.started));
        }
    }
}

/// A listener's `lb_egress_decisions_total` counters, each found in the family once: the
/// family's lookup builds three owned labels and hashes them, which every tunnel would
/// otherwise pay. Few (decision, rule) pairs exist per listener (its rules, the SSRF classes,
/// the authentication failures); past `MAX_KNOWN` they are looked up each time.
struct DecisionMeters {
    listener: String,
    /// None: no metrics.
    family: Option<prometheus_client::metrics::family::Family<EgressLabels, Counter>>,
    known: std::sync::RwLock<Vec<(String, String, Counter)>>,
}

const MAX_KNOWN: usize = 256;

impl DecisionMeters {
    fn new(listener: &str, proxy: &ArcSwap<Proxy>) -> Self {
        Self {
            listener: listener.to_owned(),
            family: proxy
                .load()
                .observer()
                .metrics()
                .map(|m| m.egress_decisions.clone()),
            known: std::sync::RwLock::default(),
        }
    }

    /// Counts one decision.
    fn count(&self, decision: &str, rule: &str) {
        let Some(family) = &self.family else {
            return;
        };
        let found = self.known.read().ok().and_then(|known| {
            known
                .iter()
                .find(|(d, r, _)| d == decision && r == rule)
                .map(|(_, _, c)| c.inc())
        });
        if found.is_some() {
            return;
        }
        let counter = family
            .get_or_create(&EgressLabels {
                listener: self.listener.clone(),
                decision: decision.to_owned(),
                rule: rule.to_owned(),
            })
            .clone();
        counter.inc();
        if let Ok(mut known) = self.known.write()
            && known.len() < MAX_KNOWN
        {
            known.push((decision.to_owned(), rule.to_owned(), counter));
        }
    }
}

/// A tunnel's ClientHello check in its log line, when there is one (`sni`; a refusal also
/// as its decision and rule), a refusal counted and logged.
fn sni_outcome(
    meters: &DecisionMeters,
    target: Option<&Target>,
    mut line: Option<serde_json::Value>,
    sni: &tunnel::Sni,
) -> Option<serde_json::Value> {
    let (name, refused) = match sni {
        tunnel::Sni::Unchecked => return line,
        tunnel::Sni::Passed(name) => (name.as_deref(), None),
        tunnel::Sni::Refused(None) => (None, Some("sni_missing")),
        tunnel::Sni::Refused(Some(name)) => (Some(name.as_str()), Some("sni_mismatch")),
        tunnel::Sni::NoClientHello => (None, Some("no_client_hello")),
    };
    if let Some(map) = line.as_mut().and_then(|l| l.as_object_mut()) {
        map.insert("sni".into(), name.into());
        if let Some(rule) = refused {
            map.insert("decision".into(), "deny".into());
            map.insert("rule".into(), rule.into());
        }
    }
    if let Some(rule) = refused {
        meters.count("deny", rule);
        tracing::info!(
            listener = %meters.listener,
            target = %target.map_or_else(|| "-".to_owned(), Target::authority),
            sni = name.unwrap_or("-"),
            rule,
            "egress tunnel closed by its ClientHello check"
        );
    }
    line
}

/// The line with its byte counts and duration.
fn finish(mut line: serde_json::Value, up: u64, down: u64, started: Instant) -> serde_json::Value {
    if let Some(map) = line.as_object_mut() {
        map.insert("bytes_up".into(), up.into());
        map.insert("bytes_down".into(), down.into());
        map.insert(
            "duration_ms".into(),
            (started.elapsed().as_secs_f64() * 1e3).into(),
        );
    }
    line
}

/// The target's addresses: the literal one, or what the system resolver answers (each
/// address once, in its order).
async fn resolve(target: &Target) -> std::io::Result<Vec<IpAddr>> {
    if let Some(ip) = target.ip {
        return Ok(vec![ip]);
    }
    let mut out = Vec::new();
    for addr in tokio::net::lookup_host((target.host.as_str(), target.port)).await? {
        if !out.contains(&addr.ip()) {
            out.push(addr.ip());
        }
    }
    Ok(out)
}
