//! `lb run`: the manager, the L7 tier and (with `--iface`) the XDP tier in one process, with
//! the admin surface, until SIGINT/SIGTERM. Reloads on SIGHUP and when the backend file changes.
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use lb::{
    admin::{AdminCommand, AdminState, serve_admin, server::AdminServer},
    handover::{self, Successor},
    l7::Algorithm,
    manager::{
        flags::ServiceFlags,
        run::{Manager, RunOptions},
        watch::FileWatcher,
    },
    xdp::AttachMode,
};

use tokio::sync::{mpsc, oneshot};

use super::signals::{Event, Signals};

#[derive(Args)]
pub struct RunArgs {
    /// Backend file (TOML): pools and backends, and any further listeners, routes and VIPs.
    #[arg(
        long = "config",
        visible_alias = "backends",
        value_name = "FILE",
        default_value = "/etc/lb/lb.toml"
    )]
    backends: PathBuf,
    /// Ingress interface for the XDP tier (none: L7 only).
    #[arg(long)]
    iface: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: AttachMode,
    /// Where the XDP tier pins its maps and link (default /sys/fs/bpf/lb/IFACE). A restarted
    /// lb takes over what it finds there: established L4 flows keep their reals.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// On SIGTERM/SIGINT, leave the XDP program attached and pinned (L4 flows keep flowing
    /// while no lb runs); L7 still drains. Default: detach and remove the pins.
    #[arg(long)]
    keep_fast_path: bool,
    /// A VIP for the XDP tier, ADDR:PORT[/tcp|udp] (repeatable; needs --iface).
    #[arg(long = "vip")]
    vips: Vec<String>,
    /// An HTTP(S) listener for the pool named "default" (or the file's only pool) (repeatable).
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Certificate chain (PEM) making the --listen it follows HTTPS (repeatable: several on
    /// one listener are chosen by SNI, the first is the default; with --tls-key).
    #[arg(long = "tls-cert")]
    tls_certs: Vec<PathBuf>,
    /// Private key (PEM) for the --tls-cert of the same position.
    #[arg(long = "tls-key")]
    tls_keys: Vec<PathBuf>,
    /// For each --tls-cert, the --listen it follows on the command line (None: none before it).
    #[arg(skip)]
    cert_listeners: Vec<Option<usize>>,
    /// The --listen listeners expect a PROXY v1/v2 header from every client.
    #[arg(long)]
    proxy_protocol: bool,
    /// Balancing algorithm of the flags' pool (overrides the file).
    #[arg(long, value_enum)]
    algorithm: Option<AlgorithmArg>,
    /// Admin address: status page at /, /metrics, /api/status, /api/drain.
    #[arg(long, default_value = "127.0.0.1:9900")]
    admin: SocketAddr,
    /// Require `Authorization: Bearer TOKEN` on the admin API's mutating endpoints (drain,
    /// undrain, purge); TOKEN is the file's first line. Reads (status, metrics) stay open.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// On SIGTERM/SIGINT, and after handing over to a new lb (upgrade), time in-flight
    /// requests, WebSockets and tunnels get to finish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Upgrade (`lb upgrade`, SIGUSR2): how long the new lb may take to be ready before it is
    /// killed and this one keeps serving.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    upgrade_timeout: Duration,
    /// Worker threads (default: the CPUs this process may use).
    #[arg(long)]
    threads: Option<usize>,
    /// Write a JSON access log line per request to this file (`-`: standard output).
    #[arg(long)]
    access_log: Option<PathBuf>,
    /// Only these access log fields, comma-separated, in the log's own order (default: all:
    /// time, client, listener, route, pool, backend, status, method, host, path, bytes_in,
    /// bytes_out, duration_ms, upstream_ms, retries, request_id, flow_id, consumer,
    /// client_cert, cache, shed, user_agent, referer, protocol, tls_version, sni,
    /// upstream_status).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "FIELDS",
        requires = "access_log"
    )]
    access_log_fields: Vec<String>,
    /// Global guard: client connections on all HTTP listeners together; beyond it lb stops
    /// accepting (they wait in the kernel's queue). The admin listener is not counted.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// Global guard: resident memory (e.g. 2GiB); above it every new request gets a 503
    /// (Retry-After, x-lb-overloaded: memory) while the admin listener keeps answering.
    #[arg(long, value_parser = lb::l7::overload::parse_size)]
    max_memory: Option<u64>,
}

/// Spelled as in the backend file (`round_robin`); the kebab-case forms are aliases.
#[derive(Clone, Copy, clap::ValueEnum)]
enum AlgorithmArg {
    #[value(name = "round_robin", alias = "round-robin")]
    RoundRobin,
    #[value(name = "least_conn", alias = "least-conn")]
    LeastConn,
    P2c,
    #[value(name = "consistent_hash", alias = "consistent-hash")]
    ConsistentHash,
}

impl From<AlgorithmArg> for Algorithm {
    fn from(arg: AlgorithmArg) -> Self {
        match arg {
            AlgorithmArg::RoundRobin => Self::RoundRobin,
            AlgorithmArg::LeastConn => Self::LeastConn,
            AlgorithmArg::P2c => Self::P2c,
            AlgorithmArg::ConsistentHash => Self::ConsistentHash,
        }
    }
}

/// How often the backend file is checked for changes, and the status snapshot refreshed.
const WATCH_PERIOD: Duration = Duration::from_millis(200);
const STATUS_PERIOD: Duration = Duration::from_secs(1);

impl RunArgs {
    /// Binds each --tls-cert to the --listen before it on the command line (`matches`: this
    /// subcommand's), as NGINX binds `ssl_certificate` to its server.
    pub fn bind_certs_to_listeners(&mut self, matches: &clap::ArgMatches) {
        let positions = |id: &str| -> Vec<usize> {
            matches
                .indices_of(id)
                .map(|i| i.collect())
                .unwrap_or_default()
        };
        let listens = positions("listen");
        self.cert_listeners = positions("tls_certs")
            .into_iter()
            .map(|cert| listens.iter().rposition(|listen| *listen < cert))
            .collect();
    }

    /// (listener index, certificate, key) of every --tls-cert.
    fn listener_certs(&self) -> anyhow::Result<Vec<(usize, PathBuf, PathBuf)>> {
        anyhow::ensure!(
            self.tls_certs.len() == self.tls_keys.len(),
            "--tls-cert and --tls-key come in pairs ({} certificates, {} keys)",
            self.tls_certs.len(),
            self.tls_keys.len()
        );
        self.tls_certs
            .iter()
            .zip(&self.tls_keys)
            .enumerate()
            .map(|(n, (cert, key))| {
                let listener = self.cert_listeners.get(n).copied().flatten();
                let listener = listener.with_context(|| {
                    format!(
                        "--tls-cert {} comes before any --listen: put it after the --listen it is for",
                        cert.display()
                    )
                })?;
                Ok((listener, cert.clone(), key.clone()))
            })
            .collect()
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let tls = args.listener_certs()?;
    anyhow::ensure!(
        args.vips.is_empty() || args.iface.is_some(),
        "--vip needs --iface (the interface the XDP tier attaches to)"
    );
    anyhow::ensure!(
        args.iface.is_some() || (args.pin_dir.is_none() && !args.keep_fast_path),
        "--pin-dir and --keep-fast-path are about the XDP tier: they need --iface"
    );
    // Started by `lb upgrade`: the previous lb's listening sockets, before anything binds.
    let handed_over = lb::handover::inherited::adopt_from_env()
        .context("taking over the sockets of the previous lb")?;
    if handed_over {
        tracing::info!("started by an upgrade: serving on the previous lb's sockets");
    }
    let flags = ServiceFlags {
        listen: args.listen.clone(),
        vips: args.vips.clone(),
        tls,
        proxy_protocol: args.proxy_protocol,
        algorithm: args.algorithm.map(Algorithm::from),
    };
    let mut runtime = super::serving_runtime(args.threads);
    runtime
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(serve(args, flags))
}

async fn serve(args: RunArgs, flags: ServiceFlags) -> anyhow::Result<()> {
    // Stamped before the first read, so a change during start-up is seen.
    let mut watcher = FileWatcher::new(args.backends.clone());
    let (mut manager, mut events) = Manager::start(RunOptions {
        backends: args.backends.clone(),
        flags,
        iface: args.iface.clone(),
        xdp_mode: args.xdp_mode,
        access_log: args.access_log.clone(),
        access_log_fields: args.access_log_fields.clone(),
        pin_dir: args.pin_dir.clone(),
        keep_fast_path: args.keep_fast_path,
        carried: handover::inherited::take_state(),
        global: lb::l7::GlobalLimits {
            max_connections: args
                .max_connections
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            max_memory: args.max_memory,
        },
    })
    .await?;
    let token = match &args.admin_token_file {
        None => None,
        Some(path) => Some(read_token(path)?),
    };
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (commands_tx, mut commands) = tokio::sync::mpsc::channel(16);
    let admin = serve_admin(
        args.admin,
        Arc::new(AdminState {
            status: manager.status.clone(),
            metrics: manager.metrics.clone(),
            commands: commands_tx,
            ready: ready.clone(),
            token,
        }),
    )
    .await
    .with_context(|| format!("binding the admin address {}", args.admin))?;
    for (name, addr) in manager.listeners() {
        println!("listening name={name} address={addr}");
    }
    if let Some((iface, mode)) = manager.xdp_mode() {
        println!("attached iface={iface} mode={mode}");
    }
    if let Some((dir, reused_link, reused_maps)) = manager.xdp_pins() {
        println!(
            "pinned dir={} reused_link={reused_link} reused_maps={reused_maps}",
            dir.display()
        );
    }
    println!("admin http://{}/", admin.addr);
    tracing::info!(admin = %admin.addr, "lb running");
    // Listeners bound, configuration loaded, XDP attached: the lb that started this one (an
    // upgrade) is told, and tells systemd this is its main process now; otherwise systemd
    // (Type=notify) is told directly.
    if !lb::handover::inherited::report_ready()
        && let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready])
    {
        tracing::warn!(%e, "telling systemd lb is ready");
    }

    let mut signals = Signals::install()?;
    let mut watch_tick = tokio::time::interval(WATCH_PERIOD);
    let mut status_tick = tokio::time::interval(STATUS_PERIOD);
    let mut upgrade = Upgrade::new(args.upgrade_timeout);
    let stop = loop {
        tokio::select! {
            event = signals.next() => match event {
                Event::Stop(name) => break Stop::Signal(name),
                Event::Reload => manager.reload("SIGHUP").await,
                Event::ReopenLogs => manager.reopen_logs(),
                Event::Upgrade => upgrade.start(&manager, &admin, None),
            },
            Some(outcome) = upgrade.outcome() => {
                if let Some(pid) = upgrade.finish(outcome) {
                    break Stop::Upgraded(pid);
                }
            }
            _ = watch_tick.tick() => {
                if watcher.changed() {
                    manager.reload("file changed").await;
                }
            }
            Some(event) = events.health.recv() => manager.on_health(&event).await,
            Some(found) = events.discovery.recv() => manager.on_discovered(found).await,
            Some(command) = commands.recv() => match command {
                AdminCommand::Drain { pool, backend, drain, reply } => {
                    let _ = reply.send(manager.drain(&pool, &backend, drain).await);
                }
                AdminCommand::DrainNode { drain, reply } => {
                    let _ = reply.send(manager.drain_node(drain).await);
                }
                AdminCommand::Purge { url, prefix, reply } => {
                    let _ = reply.send(manager.purge(&url, prefix));
                }
                AdminCommand::Upgrade { reply } => upgrade.start(&manager, &admin, Some(reply)),
            },
            _ = status_tick.tick() => {
                manager.start_deferred_bgp().await;
                manager.publish();
            }
        }
    };
    ready.store(false, std::sync::atomic::Ordering::Relaxed);
    let cut = match stop {
        Stop::Signal(name) => {
            tracing::info!(signal = name, grace = ?args.grace, "stopping");
            // The admin API stays up through the drain: /readyz says 503, changes are refused.
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            // Withdrawn first (the routers move the flows to the other nodes), then drained,
            // then stopped.
            manager.withdraw_for_stop().await;
            let cut = manager.shutdown(args.grace, false).await;
            admin.stop(Duration::ZERO).await;
            cut
        }
        Stop::Upgraded(pid) => {
            tracing::info!(pid, grace = ?args.grace, "upgrade: the new lb is ready; this one stops accepting and drains");
            println!("upgraded pid={pid}");
            // systemd follows the new process (accepted from the main process only).
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::MainPid(pid)]) {
                tracing::warn!(%e, "telling systemd the new main process");
            }
            // Both stop accepting now (the new lb serves the same sockets), the XDP tier is
            // left to the new lb through its pins.
            let (cut, ()) =
                tokio::join!(manager.shutdown(args.grace, true), admin.stop(args.grace));
            cut
        }
    };
    let cut = cut?;
    if cut > 0 {
        tracing::warn!(
            connections = cut,
            "cut connections still busy after the grace"
        );
    }
    println!("stopped");
    Ok(())
}

/// Why the event loop ended.
enum Stop {
    /// SIGINT or SIGTERM.
    Signal(&'static str),
    /// A new lb (this pid) is ready on the handed-over sockets.
    Upgraded(u32),
}

/// Where an `lb upgrade` call waits for the new process's pid, or why it failed.
type UpgradeReply = oneshot::Sender<Result<u32, String>>;

/// The upgrade in progress, if any: one at a time; everyone who asked while it ran gets its
/// outcome.
struct Upgrade {
    timeout: Duration,
    /// The new process's pid, and who waits for its outcome (the admin API's callers).
    running: Option<(u32, Vec<UpgradeReply>)>,
    outcome_tx: mpsc::Sender<Result<u32, String>>,
    outcome_rx: mpsc::Receiver<Result<u32, String>>,
}

impl Upgrade {
    fn new(timeout: Duration) -> Self {
        let (outcome_tx, outcome_rx) = mpsc::channel(1);
        Self {
            timeout,
            running: None,
            outcome_tx,
            outcome_rx,
        }
    }

    /// Starts the new lb with this one's listening sockets (the admin server's too); its
    /// readiness arrives through `outcome`. `reply` (an `lb upgrade` call) gets the outcome.
    fn start(&mut self, manager: &Manager, admin: &AdminServer, reply: Option<UpgradeReply>) {
        if let Some((pid, waiting)) = &mut self.running {
            tracing::warn!(
                pid,
                "upgrade asked while one is in progress: waiting for that one"
            );
            waiting.extend(reply);
            return;
        }
        let started = manager
            .handover_sockets()
            .and_then(|mut sockets| {
                sockets.push(admin.handover_socket()?);
                Ok(sockets)
            })
            .map_err(handover::HandoverError::Descriptors)
            .and_then(|sockets| Successor::start(sockets, &manager.handover_state()));
        let successor = match started {
            Ok(successor) => successor,
            Err(e) => {
                let why = format!("{:#}", anyhow::Error::from(e));
                tracing::error!(error = %why, "upgrade failed; this lb keeps serving");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(why));
                }
                return;
            }
        };
        let pid = successor.pid();
        tracing::info!(pid, timeout = ?self.timeout, "upgrade: new lb started, waiting for it to be ready");
        let (timeout, tx) = (self.timeout, self.outcome_tx.clone());
        tokio::spawn(async move {
            let outcome = successor
                .ready(timeout)
                .await
                .map_err(|e| format!("{:#}", anyhow::Error::from(e)));
            let _ = tx.send(outcome).await;
        });
        self.running = Some((pid, reply.into_iter().collect()));
    }

    /// The outcome of the upgrade in progress (pending while none is).
    async fn outcome(&mut self) -> Option<Result<u32, String>> {
        self.outcome_rx.recv().await
    }

    /// Tells everyone waiting; Some(pid) when the new lb is ready and this one must go.
    fn finish(&mut self, outcome: Result<u32, String>) -> Option<u32> {
        let (_, waiting) = self.running.take()?;
        match &outcome {
            Ok(_) => {}
            Err(why) => tracing::error!(error = %why, "upgrade failed; this lb keeps serving"),
        }
        for reply in waiting {
            let _ = reply.send(outcome.clone());
        }
        outcome.ok()
    }
}

/// The admin token in `path`: its first line, trimmed; empty is an error (an empty token
/// would protect nothing).
pub(super) fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the admin token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    anyhow::ensure!(
        !token.is_empty(),
        "the admin token file {} is empty",
        path.display()
    );
    Ok(token)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn algorithms_are_spelled_as_in_the_file_and_the_old_way() {
        for (flag, want) in [
            ("round_robin", Algorithm::RoundRobin),
            ("least_conn", Algorithm::LeastConn),
            ("least-conn", Algorithm::LeastConn),
            ("consistent_hash", Algorithm::ConsistentHash),
            ("p2c", Algorithm::P2c),
        ] {
            let args = Wrapper::try_parse_from(["lb", "--algorithm", flag]).expect(flag);
            let got = args.run.algorithm.map(Algorithm::from);
            assert_eq!(got, Some(want), "{flag}");
        }
    }
}
