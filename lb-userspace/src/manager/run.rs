//! `lb run`'s moving parts in one place: the current configuration, the running tiers, the
//! health state of every backend (one state feeds both tiers), drains, reloads and the status
//! snapshot. The binary's event loop (`cli/run.rs`) calls into it.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use super::discovered::{Discoveries, FIRST_ANSWER_WAIT};
use super::flags::{self, ServiceFlags};
use super::history::{AttemptTotals, Histories, PacketKey, PacketTotals, TrafficKey};
use crate::{
    admin::{
        metrics::Metrics,
        status::{
            AnnouncedAddress, BackendStatus, BgpSessionStatus, BgpStatus, CheckStatus,
            ConfigStatus, ListenerStatus, PoolStatus, RealStatus, RouteStatus, Status, VipStatus,
            XdpStatus,
        },
    },
    announce::{
        Announcer,
        decide::{self, Decision, NodeState, VipReadiness},
    },
    config::Config,
    discovery::Discovered,
    health::{HealthEvent, HealthState, HealthTarget, spawn_checker},
    l4::{FlowTags, Forward, L4Dataplane, VipConfig, read_l4_stats},
    l7::{self, RunningL7},
    xdp::{self, AttachMode, AttachedXdp},
};

/// One backend of one pool.
type BackendKey = (String, SocketAddr);

/// How long a drain-node or a stop waits for BIRD to take the withdrawal.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// What the manager's event loop feeds back in: health transitions (`on_health`) and
/// discovery reports (`on_discovered`).
pub struct Receivers {
    pub health: mpsc::UnboundedReceiver<HealthEvent>,
    pub discovery: mpsc::UnboundedReceiver<Discovered>,
}

pub struct RunOptions {
    pub backends: PathBuf,
    pub flags: ServiceFlags,
    pub iface: Option<String>,
    pub xdp_mode: AttachMode,
    /// JSON access log: a file, or `-` for standard output.
    pub access_log: Option<PathBuf>,
    /// The access log's fields (empty: all).
    pub access_log_fields: Vec<String>,
    /// Where the XDP tier's maps and link are pinned (default: `/sys/fs/bpf/lb/<iface>`).
    pub pin_dir: Option<PathBuf>,
    /// On shutdown, leave the XDP program attached and pinned (L7 still drains).
    pub keep_fast_path: bool,
    /// The L7 tier's global guard (`--max-connections`, `--max-memory`).
    pub global: l7::GlobalLimits,
    /// Drains and down backends of the lb this one replaces (an upgrade).
    pub carried: crate::handover::ManagerState,
}

struct XdpTier {
    attached: AttachedXdp,
    dataplane: L4Dataplane,
    logs: tokio::task::JoinHandle<()>,
}

pub struct Manager {
    options: RunOptions,
    /// The backend file (and flags) as parsed ...
    file_config: Config,
    /// ... and what the tiers run: the file's with the discovered backends added.
    config: Config,
    discoveries: Discoveries,
    l7: RunningL7,
    xdp: Option<XdpTier>,
    /// The L7 tier's handle on the flow tags (with the XDP tier): told which addresses are
    /// local VIPs whenever the VIPs are applied.
    flow_tags: Option<Arc<FlowTags>>,
    health: HashMap<BackendKey, Arc<Mutex<HealthState>>>,
    drained: HashSet<BackendKey>,
    checkers: Vec<tokio::task::JoinHandle<()>>,
    health_events: mpsc::UnboundedSender<HealthEvent>,
    pub status: Arc<ArcSwap<Status>>,
    pub metrics: Arc<Metrics>,
    config_status: ConfigStatus,
    started: Instant,
    /// The last minute of samples behind the status page's rates, trends and percentiles.
    histories: Mutex<Histories>,
    /// The BGP speaker (`[bgp]`), told which VIP addresses to announce.
    announcer: Option<Announcer>,
    /// After an upgrade: `[bgp]`'s speaker waits for the old process's BIRD (its pid) to stop.
    deferred_bgp: Option<(crate::config::bgp::BgpConfig, u32)>,
    /// `lb ctl drain-node`, or stopping: every VIP withdrawn.
    node: NodeState,
    /// The last announcement decision, per VIP address.
    announcement: Vec<Decision>,
}

impl XdpTier {
    /// Attaches with pins, taking over what a previous `lb` left pinned: its maps (the
    /// connection table keeps established flows on their reals) and its link (the program is
    /// replaced in place). The dataplane's ids are rebuilt from the reused maps, so the
    /// connection table's real ids keep meaning the same reals.
    fn start(iface: &str, options: &RunOptions, config: &Config) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let dir = options
            .pin_dir
            .clone()
            .unwrap_or_else(|| xdp::pin::default_pin_dir(iface));
        let mut attached = xdp::attach_pinned(iface, options.xdp_mode, &dir)
            .with_context(|| format!("attaching the XDP datapath to {iface}"))?;
        tracing::info!(
            %iface,
            pins = %dir.display(),
            reused_link = attached.reused_link(),
            reused_maps = attached.reused_maps(),
            "XDP datapath attached"
        );
        let dataplane = if attached.reused_maps() {
            L4Dataplane::recover(attached.ebpf_mut())
                .context("rebuilding the VIP and real ids from the pinned maps")
        } else {
            Ok(L4Dataplane::new())
        };
        let installed = dataplane.and_then(|mut dataplane| {
            dataplane
                .apply(attached.ebpf_mut(), &config.l4)
                .context("installing the VIPs")?;
            let logs = xdp::forward_logs(attached.ebpf_mut())?;
            Ok((dataplane, logs))
        });
        match installed {
            Ok((dataplane, logs)) => Ok(Self {
                attached,
                dataplane,
                logs,
            }),
            Err(err) => {
                if !attached.reused_link() {
                    let _ = attached.detach();
                }
                Err(err)
            }
        }
    }

    /// Start-up failed after the attach: a fast path this process created goes again; one it
    /// took over stays as it was found (pinned, still forwarding).
    fn abandon_start(self) {
        self.logs.abort();
        if self.attached.reused_link() {
            self.attached.leave_pinned();
        } else if let Err(err) = self.attached.detach() {
            tracing::warn!(error = %anyhow::Error::from(err), "detaching after a failed start");
        }
    }
}

impl Manager {
    /// Reads the backend file (refusing a bad one), attaches the XDP tier when asked, starts
    /// the L7 listeners and the health checks. Health transitions arrive on the returned
    /// receiver; pass them to `on_health`.
    pub async fn start(options: RunOptions) -> anyhow::Result<(Self, Receivers)> {
        use anyhow::Context as _;
        let file_config = flags::load(&options.backends, &options.flags)?;
        // Discovered pools are filled before anything serves (bounded: a silent DNS server
        // must not keep lb from starting; its pools fill when it answers).
        let (discovery_tx, mut discovery_rx) = mpsc::unbounded_channel();
        let mut discoveries = Discoveries::new(discovery_tx);
        discoveries.sync(&file_config);
        let deadline = tokio::time::Instant::now() + FIRST_ANSWER_WAIT;
        while discoveries.waiting() > 0 {
            match tokio::time::timeout_at(deadline, discovery_rx.recv()).await {
                Ok(Some(found)) => {
                    discoveries.record(found);
                }
                _ => break,
            }
        }
        let config = discoveries.apply(&file_config);
        let xdp = match &options.iface {
            None => None,
            Some(iface) => Some(XdpTier::start(iface, &options, &config)?),
        };
        let status = Arc::new(ArcSwap::from_pointee(Status::default()));
        let metrics = Arc::new(Metrics::new(status.clone()));
        let access_log = match options.access_log.as_ref().map(|path| {
            let log = l7::AccessLog::open(path)
                .with_context(|| format!("opening the access log {}", path.display()))?;
            if options.access_log_fields.is_empty() {
                return Ok(log);
            }
            log.with_fields(&options.access_log_fields)
                .map_err(|e| anyhow::anyhow!("--access-log-fields: {e}"))
        }) {
            None => None,
            Some(Ok(log)) => Some(log),
            Some(Err(err)) => {
                if let Some(x) = xdp {
                    x.abandon_start();
                }
                return Err(err);
            }
        };
        // Connections to local VIPs learn the flow id the XDP tier tagged them with.
        let flow_tags = xdp
            .as_ref()
            .and_then(|x| match FlowTags::open(x.attached.ebpf()) {
                Ok(tags) => {
                    tags.set_local_vips(&config.l4);
                    Some(Arc::new(tags))
                }
                Err(err) => {
                    tracing::warn!(error = %anyhow::Error::from(err), "no L4 flow ids for the L7 tier");
                    None
                }
            });
        let flow_ids = flow_tags.clone().map(|tags| {
            Box::new(move |peer, local| tags.tcp_flow_id(peer, local)) as l7::observe::FlowIdLookup
        });
        let observer = l7::Observer::with_flow_ids(Some(metrics.l7.clone()), access_log, flow_ids);
        let l7 = match l7::serve_guarded(config.l7.clone(), observer, options.global).await {
            Ok(l7) => l7,
            Err(err) => {
                if let Some(x) = xdp {
                    x.abandon_start();
                }
                return Err(anyhow::Error::from(err).context("starting the L7 listeners"));
            }
        };
        // Started last (nothing else can fail after it), announcing nothing until the health
        // checks say what this node can serve. After an upgrade the old process's BIRD still
        // holds the control socket and the BGP session: this one's starts when that one is
        // gone (`start_deferred_bgp`).
        let previous_bird = options.carried.bird_pid;
        let deferred_bgp = config
            .bgp
            .clone()
            .filter(|b| b.bird_config.is_some())
            .zip(previous_bird);
        let announcer = match &config.bgp {
            None => None,
            Some(_) if deferred_bgp.is_some() => None,
            Some(bgp) => match Announcer::start(bgp).await {
                Ok(announcer) => Some(announcer),
                Err(err) => {
                    l7.shutdown(Duration::ZERO).await;
                    if let Some(x) = xdp {
                        x.abandon_start();
                    }
                    return Err(anyhow::Error::from(err).context("starting BIRD for [bgp]"));
                }
            },
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut manager = Self {
            config_status: ConfigStatus {
                path: options.backends.display().to_string(),
                ..ConfigStatus::default()
            },
            options,
            file_config,
            config,
            discoveries,
            l7,
            xdp,
            flow_tags,
            health: HashMap::new(),
            drained: HashSet::new(),
            checkers: Vec::new(),
            health_events: tx,
            status,
            metrics,
            started: Instant::now(),
            histories: Mutex::new(Histories::default()),
            announcer,
            deferred_bgp,
            node: NodeState::Serving,
            announcement: Vec::new(),
        };
        let carried = std::mem::take(&mut manager.options.carried);
        manager.drained = carried.drained.into_iter().collect();
        if carried.node_drained {
            manager.node = NodeState::Drained;
        }
        manager.start_checks_from(&carried.down);
        if !manager.drained.is_empty() || !carried.down.is_empty() {
            tracing::info!(
                drained = manager.drained.len(),
                down = carried.down.len(),
                "carried over from the previous lb"
            );
            manager.apply_health().await;
        }
        manager.update_announcement();
        manager.publish();
        Ok((
            manager,
            Receivers {
                health: rx,
                discovery: discovery_rx,
            },
        ))
    }

    /// A pool's discovery reported: a changed set is applied like a reload (pools rebuilt
    /// with the new backends, health checks, drains, VIP reals), all or nothing.
    pub async fn on_discovered(&mut self, found: Discovered) {
        if self.discoveries.record(found) {
            let config = self.discoveries.apply(&self.file_config);
            if let Err(err) = self.run_config(config).await {
                tracing::error!(error = %format!("{err:#}"), "applying discovered backends");
            }
        }
        self.publish();
    }

    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.l7.listeners
    }

    /// (pin directory, reused link, reused maps) of the XDP tier.
    pub fn xdp_pins(&self) -> Option<(&std::path::Path, bool, bool)> {
        let x = self.xdp.as_ref()?;
        let dir = x.attached.pin_dir()?;
        Some((dir, x.attached.reused_link(), x.attached.reused_maps()))
    }

    pub fn xdp_mode(&self) -> Option<(&str, &'static str)> {
        self.xdp
            .as_ref()
            .map(|x| (x.attached.iface(), x.attached.mode()))
    }

    /// (Re)starts the active checks of every pool that has them. States of backends that
    /// are still configured are kept, so a reload does not forget who is down.
    fn start_checks(&mut self) {
        self.start_checks_from(&[]);
    }

    /// As `start_checks`; a backend with no state yet starts down when `down` lists it (the
    /// previous lb's checks held it down), up otherwise.
    fn start_checks_from(&mut self, down: &[BackendKey]) {
        for c in self.checkers.drain(..) {
            c.abort();
        }
        let mut states = HashMap::new();
        for pool in &self.config.l7.pools {
            let Some(check) = &pool.health_check else {
                continue;
            };
            let check = Arc::new(check.clone());
            let mut targets = Vec::new();
            for (index, backend) in pool.backends.iter().enumerate() {
                let key = (pool.name.clone(), backend.addr);
                let state = self.health.get(&key).cloned().unwrap_or_else(|| {
                    let up = !down.contains(&key);
                    Arc::new(Mutex::new(HealthState::new(check.rise, check.fall, up)))
                });
                states.insert(key, state.clone());
                targets.push(HealthTarget {
                    pool: pool.name.clone(),
                    index,
                    addr: backend.addr,
                    state,
                });
            }
            self.checkers
                .extend(spawn_checker(check, targets, self.health_events.clone()));
        }
        self.health = states;
        self.drained.retain(|(pool, addr)| {
            self.config
                .l7
                .pool(pool)
                .is_some_and(|p| p.backends.iter().any(|b| b.addr == *addr))
        });
    }

    fn is_up(&self, key: &BackendKey) -> bool {
        self.health
            .get(key)
            .is_none_or(|s| s.lock().map(|s| s.is_up()).unwrap_or(true))
    }

    /// Takes new requests and flows: healthy and not drained.
    fn serves(&self, key: &BackendKey) -> bool {
        self.is_up(key) && !self.drained.contains(key)
    }

    /// Pushes health and drains into both tiers: the L7 pools' down flags and slow-start
    /// ramps, and the VIPs' reals (a real is down when every backend of its pool on that
    /// address is).
    async fn apply_health(&mut self) {
        for pool in &self.config.l7.pools {
            let Some(state) = self.l7.pool_state(&pool.name) else {
                continue;
            };
            let slow_start = pool
                .health_check
                .as_ref()
                .map_or(Duration::ZERO, |c| c.slow_start);
            for (i, b) in pool.backends.iter().enumerate() {
                let key = (pool.name.clone(), b.addr);
                state.health.set_down(i, !self.serves(&key));
                let came_up = self
                    .health
                    .get(&key)
                    .and_then(|s| s.lock().ok().and_then(|s| s.up_since()));
                match came_up {
                    Some(since) => state.health.set_ramp(i, since, slow_start),
                    None => state.health.set_ramp(i, Instant::now(), Duration::ZERO),
                }
            }
        }
        let mut l4 = self.config.l4.clone();
        for vip in &mut l4.vips {
            let Some(pool) = vip.pool.as_ref().and_then(|p| self.config.l7.pool(p)) else {
                continue;
            };
            for real in &mut vip.reals {
                real.down = !pool
                    .backends
                    .iter()
                    .filter(|b| b.addr.ip() == real.addr)
                    .any(|b| self.serves(&(pool.name.clone(), b.addr)));
            }
        }
        if let Some(tags) = &self.flow_tags {
            tags.set_local_vips(&l4);
        }
        if let Some(x) = &mut self.xdp
            && let Err(err) = x.dataplane.apply_async(x.attached.ebpf_mut(), &l4).await
        {
            tracing::error!(error = %anyhow::Error::from(err), "updating the VIPs' reals");
        }
        self.update_announcement();
    }

    /// Decides which VIP addresses this node announces (`announce::decide`) and tells the
    /// speaker. A change is logged with its reasons.
    fn update_announcement(&mut self) {
        let Some(announcer) = &self.announcer else {
            return;
        };
        let readiness: Vec<VipReadiness> = self
            .config
            .l4
            .vips
            .iter()
            .map(|v| VipReadiness {
                vip: v.addr,
                unready: match v.forward {
                    Forward::Local => {
                        (!self.listens_on(v.addr)).then(|| "no L7 listener takes it".to_owned())
                    }
                    Forward::Encap => self.reals_unready(v),
                },
            })
            .collect();
        let decisions = decide::decide(self.node, self.xdp.is_some(), &readiness);
        if decisions != self.announcement {
            for d in &decisions {
                tracing::info!(address = %d.address, announce = d.announce, reason = %d.reason, "BGP announcement");
            }
        }
        announcer.announce(
            decisions
                .iter()
                .filter(|d| d.announce)
                .map(|d| crate::announce::bird::host_prefix(d.address))
                .collect(),
        );
        self.announcement = decisions;
    }

    /// Why no real of `vip` can take flows from this node, if none can: with a pool, a real
    /// counts once its health check has passed (a node that just started waits for that);
    /// reals listed without a pool count unless marked down.
    fn reals_unready(&self, vip: &VipConfig) -> Option<String> {
        if vip.reals.is_empty() {
            return Some("no reals".to_owned());
        }
        let Some(pool) = vip.pool.as_ref().and_then(|p| self.config.l7.pool(p)) else {
            return vip
                .reals
                .iter()
                .all(|r| r.down)
                .then(|| "every real is down".to_owned());
        };
        let ready = pool.backends.iter().filter(|b| !b.backup).any(|b| {
            let key = (pool.name.clone(), b.addr);
            !self.drained.contains(&key)
                && self
                    .health
                    .get(&key)
                    .is_none_or(|s| s.lock().map(|s| s.is_up_and_checked()).unwrap_or(false))
        });
        (!ready).then(|| {
            if pool.health_check.is_some() {
                format!("no backend of pool {} is up and checked", pool.name)
            } else {
                format!("every backend of pool {} is drained", pool.name)
            }
        })
    }

    /// An L7 listener is bound to `vip` (or to the unspecified address on its port).
    fn listens_on(&self, vip: SocketAddr) -> bool {
        self.l7.listeners.iter().any(|(_, addr)| {
            addr.port() == vip.port() && (addr.ip() == vip.ip() || addr.ip().is_unspecified())
        })
    }

    /// After an upgrade: starts `[bgp]`'s BIRD once the old process's has stopped (called on
    /// the status tick; until then this node announces through the old one, whose process
    /// withdraws when it stops).
    pub async fn start_deferred_bgp(&mut self) {
        let Some((bgp, pid)) = &self.deferred_bgp else {
            return;
        };
        if process_alive(*pid) {
            return;
        }
        match Announcer::start(bgp).await {
            Ok(announcer) => {
                tracing::info!(
                    previous = pid,
                    "BGP: the previous lb's BIRD stopped; ours started"
                );
                self.announcer = Some(announcer);
                self.deferred_bgp = None;
                self.announcement.clear();
                self.update_announcement();
            }
            Err(err) => {
                tracing::error!(error = %err, "BGP: starting BIRD after the upgrade; retrying");
            }
        }
    }

    /// `lb ctl drain-node` (`drained`) and `undrain-node`: every VIP withdrawn (flows move to
    /// the other nodes, which hash them alike) or announced again where this node can serve
    /// it. Answers once BIRD has taken the change.
    pub async fn drain_node(&mut self, drained: bool) -> Result<(), String> {
        if self.announcer.is_none() && self.deferred_bgp.is_none() {
            return Err("this lb announces nothing (no [bgp] section)".to_owned());
        }
        if self.node == NodeState::Stopping {
            return Err("lb is stopping".to_owned());
        }
        self.node = if drained {
            NodeState::Drained
        } else {
            NodeState::Serving
        };
        tracing::info!(drained, "node drain changed");
        self.update_announcement();
        self.publish();
        match &self.announcer {
            Some(a) if !a.settled(SETTLE_LIMIT).await => Err(format!(
                "BIRD has not taken the change yet: {}",
                a.state().last_error.unwrap_or_default()
            )),
            _ => Ok(()),
        }
    }

    /// First step of stopping: withdraw every VIP, wait for BIRD to have taken it, then keep
    /// forwarding for `[bgp] drain_wait` while the routers move the flows to other nodes.
    pub async fn withdraw_for_stop(&mut self) {
        let Some(announcer) = &self.announcer else {
            return;
        };
        let was_announcing = !announcer.state().announced.is_empty();
        let wait = announcer.config().drain_wait;
        self.node = NodeState::Stopping;
        self.update_announcement();
        self.publish();
        if let Some(a) = &self.announcer
            && !a.settled(SETTLE_LIMIT).await
        {
            tracing::warn!("BIRD did not confirm the withdrawal; stopping anyway");
        }
        if was_announcing {
            tracing::info!(
                ?wait,
                "VIPs withdrawn; waiting for the routers before draining"
            );
            tokio::time::sleep(wait).await;
        }
    }

    pub async fn on_health(&mut self, event: &HealthEvent) {
        if !event.first_pass {
            tracing::info!(pool = %event.pool, backend = %event.addr, up = event.up, "backend health");
        }
        self.apply_health().await;
        self.publish();
    }

    /// Drains (or undrains) `backend` of `pool`: no new requests or flows; existing ones finish.
    pub async fn drain(&mut self, pool: &str, backend: &str, drain: bool) -> Result<(), String> {
        let p = self
            .config
            .l7
            .pool(pool)
            .ok_or_else(|| format!("no pool {pool:?}"))?;
        let addr = p
            .backends
            .iter()
            .map(|b| b.addr)
            .find(|a| a.to_string() == backend)
            .ok_or_else(|| format!("pool {pool:?} has no backend {backend}"))?;
        let key = (pool.to_owned(), addr);
        if drain {
            self.drained.insert(key);
        } else {
            self.drained.remove(&key);
        }
        tracing::info!(pool, backend, drain, "drain changed");
        self.apply_health().await;
        self.publish();
        Ok(())
    }

    /// Reopens the access log at its path (SIGUSR1, after logrotate moved it).
    pub fn reopen_logs(&self) {
        self.l7.reopen_logs();
        tracing::info!("log files reopened");
    }

    /// Removes cached responses for `url` (`prefix`: every URL starting with it) from every
    /// route's cache. Returns how many keys went; an error when no route has a cache.
    pub fn purge(&self, url: &str, prefix: bool) -> Result<u64, String> {
        self.l7
            .purge(url, prefix)
            .ok_or_else(|| "no route has a cache".to_owned())
    }

    /// Re-reads the backend file and applies it in place; a bad file (or a failed apply)
    /// keeps the running configuration, says why, and counts it.
    pub async fn reload(&mut self, why: &str) {
        let result = self.try_reload().await;
        match result {
            Ok(()) => {
                self.config_status.reloads_ok += 1;
                self.config_status.last_error = None;
                tracing::info!(why, "configuration reloaded");
            }
            Err(err) => {
                self.config_status.reloads_failed += 1;
                self.config_status.last_error = Some(format!("{err:#}"));
                tracing::error!(why, error = %format!("{err:#}"), "reload rejected; keeping the running configuration");
            }
        }
        self.publish();
    }

    /// Nothing is adopted unless the L7 tier took the whole new configuration (its reload
    /// binds, reads certificates and CA files before changing anything, certificates of the
    /// listeners it keeps included), so config, health states and drains stay the running
    /// tier's.
    async fn try_reload(&mut self) -> anyhow::Result<()> {
        let file_config = flags::load(&self.options.backends, &self.options.flags)?;
        if file_config.bgp != self.file_config.bgp {
            // A new speaker would restart the sessions: every VIP withdrawn and announced
            // again. That is a restart's business, not a reload's.
            anyhow::bail!("[bgp] changed: it is read at start; restart lb to change it");
        }
        let config = self.discoveries.apply(&file_config);
        self.run_config(config).await?;
        // Pools whose discovery settings changed get a new task (and their backends when
        // it answers); the others keep theirs.
        self.discoveries.sync(&file_config);
        self.file_config = file_config;
        Ok(())
    }

    /// Puts `config` in force, all or nothing: the L7 tier takes it (or refuses it, and
    /// nothing changes), then health checks and the VIPs' reals follow it.
    async fn run_config(&mut self, config: Config) -> anyhow::Result<()> {
        self.l7.reload(&config.l7).await?;
        self.config = config;
        self.start_checks();
        self.apply_health().await;
        Ok(())
    }

    /// Builds and publishes the status snapshot (and so the scrape-time metrics).
    pub fn publish(&self) {
        let now = Instant::now();
        let mut histories = self
            .histories
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let pools = self
            .config
            .l7
            .pools
            .iter()
            .map(|p| {
                let state = self.l7.pool_state(&p.name);
                PoolStatus {
                    name: p.name.clone(),
                    discovery: self.discoveries.status(&p.name, now),
                    algorithm: match p.algorithm {
                        l7::Algorithm::RoundRobin => "round_robin",
                        l7::Algorithm::LeastConn => "least_conn",
                        l7::Algorithm::P2c => "p2c",
                        l7::Algorithm::ConsistentHash => "consistent_hash",
                    }
                    .into(),
                    adaptive_limit: state
                        .as_ref()
                        .and_then(|s| s.adaptive.as_ref())
                        .map(|a| a.limit()),
                    outlier: state.as_ref().and_then(|s| s.health.outlier()).map(|o| {
                        let count = |c: &std::sync::atomic::AtomicU64| {
                            c.load(std::sync::atomic::Ordering::Relaxed)
                        };
                        crate::admin::status::OutlierCounts {
                            ejected_consecutive_5xx: count(&o.ejected_5xx),
                            ejected_gateway_errors: count(&o.ejected_gateway),
                            skipped_max_ejected_percent: count(&o.skipped),
                        }
                    }),
                    backends: p
                        .backends
                        .iter()
                        .enumerate()
                        .map(|(i, b)| {
                            let key = (p.name.clone(), b.addr);
                            let checked = self.health.get(&key);
                            let passive = state.as_ref().and_then(|s| s.health.status(i));
                            let health = if self.drained.contains(&key) {
                                "draining"
                            } else if !self.is_up(&key) {
                                "down"
                            } else if passive.is_some_and(|s| s.ejected_for.is_some()) {
                                "ejected"
                            } else if checked.is_some() {
                                "up"
                            } else {
                                "unchecked"
                            };
                            // Why it is down (a passing backend's old failure is history).
                            let last_error = checked
                                .filter(|_| health == "down")
                                .and_then(|s| s.lock().ok().and_then(|s| s.last_error.clone()));
                            let check = checked
                                .and_then(|s| s.lock().ok().map(|s| s.detail(now)))
                                .map(|d| CheckStatus {
                                    last_result: match d.passed {
                                        None => "pending",
                                        Some(true) => "passed",
                                        Some(false) => "failed",
                                    },
                                    last_reason: d.reason,
                                    last_duration_ms: d.duration.as_secs_f64() * 1000.0,
                                    seconds_since_change: d.since_change.as_secs_f64(),
                                    downtime_seconds: d.downtime.as_secs_f64(),
                                    checks: d.checks,
                                    failures: d.failures,
                                });
                            let in_flight =
                                state.as_ref().map_or(0, |s| u64::from(s.inflight.get(i)));
                            let traffic = histories.traffic_view(
                                TrafficKey::Backend(p.name.clone(), b.addr),
                                now,
                                state
                                    .as_ref()
                                    .map(|s| s.traffic.snapshot(i))
                                    .unwrap_or_default(),
                                Some(in_flight),
                            );
                            let weight = checked
                                .and_then(|s| s.lock().ok())
                                .zip(p.health_check.as_ref())
                                .map_or(f64::from(b.weight), |(s, c)| {
                                    f64::from(b.weight) * s.weight_factor(now, c.slow_start)
                                });
                            let (requests, errors) =
                                state.as_ref().map_or((0, 0), |s| s.traffic.totals(i));
                            let rate = histories.attempt_rates(
                                TrafficKey::Backend(p.name.clone(), b.addr),
                                now,
                                AttemptTotals { requests, errors },
                            );
                            BackendStatus {
                                address: b.addr.to_string(),
                                weight: weight.round() as u32,
                                configured_weight: b.weight,
                                backup: b.backup,
                                health: health.into(),
                                last_error,
                                in_flight,
                                requests,
                                errors,
                                requests_per_second: rate.per_second,
                                error_rate: rate.error_rate,
                                ejections: p.outlier.and(passive).map(|s| s.outlier.ejections),
                                last_ejection_ms: p
                                    .outlier
                                    .and(passive)
                                    .map(|s| s.outlier.last_ejection.as_millis() as u64),
                                check,
                                traffic,
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        let (vips, xdp) = match &self.xdp {
            None => (Vec::new(), None),
            Some(x) => self.xdp_status(x, now, &mut histories),
        };
        let listeners = self
            .l7
            .listeners
            .iter()
            .map(|(name, addr)| {
                let kind = self
                    .config
                    .l7
                    .listeners
                    .iter()
                    .find(|l| l.name == *name)
                    .map_or("http", |l| match l.mode {
                        l7::ListenerMode::Tcp => "tcp",
                        l7::ListenerMode::Udp => "udp",
                        l7::ListenerMode::ForwardProxy => "forward_proxy",
                        l7::ListenerMode::Http if l.tls.is_empty() => "http",
                        l7::ListenerMode::Http => "https",
                    });
                let traffic = matches!(kind, "http" | "https" | "tcp").then(|| {
                    histories.traffic_view(
                        TrafficKey::Listener(name.clone()),
                        now,
                        self.l7.listener_traffic(name).unwrap_or_default(),
                        None,
                    )
                });
                ListenerStatus {
                    name: name.clone(),
                    address: addr.to_string(),
                    kind: kind.into(),
                    traffic,
                }
            })
            .collect();
        let routes = self
            .config
            .l7
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let label = r.label(i);
                RouteStatus {
                    traffic: histories.traffic_view(
                        TrafficKey::Route(label.clone()),
                        now,
                        self.l7.route_traffic(&label).unwrap_or_default(),
                        None,
                    ),
                    name: label,
                    listener: r.listener.clone(),
                    pool: Some(r.pool.clone()).filter(|p| !p.is_empty()),
                }
            })
            .collect();
        histories.forget_unseen();
        drop(histories);
        self.status.store(Arc::new(Status {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            config: self.config_status.clone(),
            listeners,
            l7_connections: self.l7.open_connections(),
            routes,
            pools,
            vips,
            xdp,
            bgp: self.bgp_status(),
        }));
    }

    fn xdp_status(
        &self,
        x: &XdpTier,
        now: Instant,
        histories: &mut Histories,
    ) -> (Vec<VipStatus>, Option<XdpStatus>) {
        let ebpf = x.attached.ebpf();
        let stats = read_l4_stats(ebpf, &x.dataplane).ok();
        let host = xdp::read_stats(ebpf).ok();
        let vips = self
            .config
            .l4
            .vips
            .iter()
            .map(|v| {
                let c = stats.as_ref().map(|s| s.vip(v.addr)).unwrap_or_default();
                let vip_rates = histories.packet_rates(
                    PacketKey {
                        vip: v.addr.to_string(),
                        real: None,
                    },
                    now,
                    PacketTotals {
                        packets: c.packets,
                        bytes: c.bytes,
                    },
                );
                VipStatus {
                    packets_per_second: vip_rates.packets_per_second,
                    bytes_per_second: vip_rates.bytes_per_second,
                    trend: vip_rates.trend,
                    address: v.addr.to_string(),
                    protocol: format!("{:?}", v.protocol).to_lowercase(),
                    forward: format!("{:?}", v.forward).to_lowercase(),
                    packets: c.packets,
                    bytes: c.bytes,
                    new_flows: c.new_flows,
                    ring_hash: x
                        .dataplane
                        .ring_hash(v.addr, v.protocol)
                        .map(|h| format!("{h:016x}")),
                    reals: v
                        .reals
                        .iter()
                        .map(|r| {
                            let rc = stats
                                .as_ref()
                                .map(|s| s.real(v.addr, r.addr))
                                .unwrap_or_default();
                            let up = v.pool.as_ref().and_then(|p| self.config.l7.pool(p)).map_or(
                                !r.down,
                                |pool| {
                                    pool.backends
                                        .iter()
                                        .filter(|b| b.addr.ip() == r.addr)
                                        .any(|b| self.serves(&(pool.name.clone(), b.addr)))
                                },
                            );
                            let real_rates = histories.packet_rates(
                                PacketKey {
                                    vip: v.addr.to_string(),
                                    real: Some(r.addr.to_string()),
                                },
                                now,
                                PacketTotals {
                                    packets: rc.packets,
                                    bytes: rc.bytes,
                                },
                            );
                            RealStatus {
                                packets_per_second: real_rates.packets_per_second,
                                bytes_per_second: real_rates.bytes_per_second,
                                address: r.addr.to_string(),
                                weight: r.weight,
                                up,
                                packets: rc.packets,
                                bytes: rc.bytes,
                                new_flows: rc.new_flows,
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        let named = |m: &std::collections::BTreeMap<&'static str, u64>| {
            m.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
        };
        let xdp = XdpStatus {
            iface: x.attached.iface().to_owned(),
            mode: x.attached.mode().to_owned(),
            classes: host.as_ref().map(|h| named(&h.classes)).unwrap_or_default(),
            drops: host
                .as_ref()
                .map(|h| named(&h.malformed))
                .unwrap_or_default(),
            events: stats.as_ref().map(|s| named(&s.events)).unwrap_or_default(),
        };
        (vips, Some(xdp))
    }

    fn bgp_status(&self) -> Option<BgpStatus> {
        if let (None, Some((bgp, pid))) = (&self.announcer, &self.deferred_bgp) {
            return Some(BgpStatus {
                speaker: "bird",
                control_socket: bgp.control_socket.display().to_string(),
                node_drained: self.node != NodeState::Serving,
                last_error: Some(format!(
                    "waiting for the previous lb's BIRD (pid {pid}) to stop"
                )),
                ..BgpStatus::default()
            });
        }
        let announcer = self.announcer.as_ref()?;
        let speaker = announcer.state();
        Some(BgpStatus {
            speaker: "bird",
            speaker_running: speaker.running,
            control_socket: announcer.config().control_socket.display().to_string(),
            node_drained: self.node != NodeState::Serving,
            sessions: speaker
                .sessions
                .iter()
                .map(|s| BgpSessionStatus {
                    name: s.name.clone(),
                    state: s.state.clone(),
                    info: s.info.clone(),
                })
                .collect(),
            addresses: self
                .announcement
                .iter()
                .map(|d| AnnouncedAddress {
                    address: d.address.to_string(),
                    announce: d.announce,
                    in_bird: speaker
                        .announced
                        .contains(&crate::announce::bird::host_prefix(d.address)),
                    reason: d.reason.clone(),
                })
                .collect(),
            last_error: speaker.last_error,
        })
    }

    /// Drains and down backends, for the next lb of an upgrade.
    pub fn handover_state(&self) -> crate::handover::ManagerState {
        let mut drained: Vec<_> = self.drained.iter().cloned().collect();
        drained.sort();
        let mut down: Vec<_> = self
            .health
            .keys()
            .filter(|key| !self.is_up(key))
            .cloned()
            .collect();
        down.sort();
        crate::handover::ManagerState {
            drained,
            down,
            node_drained: self.node == NodeState::Drained,
            bird_pid: self
                .announcer
                .as_ref()
                .and_then(|a| a.state().pid)
                .or(self.deferred_bgp.as_ref().map(|(_, pid)| *pid)),
        }
    }

    /// Copies of the L7 tier's listening sockets, for the next lb of an upgrade.
    pub fn handover_sockets(
        &self,
    ) -> std::io::Result<Vec<(crate::handover::HandedSocket, std::os::fd::OwnedFd)>> {
        self.l7.handover_sockets()
    }

    /// Stops: health checks end, L7 connections drain for up to `grace`, then the XDP program
    /// is detached and its pins removed, or (`keep_fast_path`, or `handed_over`: a new lb
    /// took it over through the pins) left attached and pinned for the next `lb`. Returns how
    /// many L7 connections were cut.
    pub async fn shutdown(self, grace: Duration, handed_over: bool) -> anyhow::Result<usize> {
        for c in &self.checkers {
            c.abort();
        }
        let mut discoveries = self.discoveries;
        discoveries.stop();
        let mut announcer = self.announcer;
        // Handed over: the new lb starts its BIRD once this one's is gone, so it goes first.
        if handed_over && let Some(announcer) = announcer.take() {
            announcer.stop().await;
        }
        let cut = self.l7.shutdown(grace).await;
        // Stopping: after the drain (the VIPs were withdrawn first, `withdraw_for_stop`).
        if let Some(announcer) = announcer {
            announcer.stop().await;
        }
        if let Some(x) = self.xdp {
            x.logs.abort();
            if self.options.keep_fast_path || handed_over {
                x.attached.leave_pinned();
            } else {
                x.attached.detach()?;
            }
        }
        Ok(cut)
    }
}

/// `pid` names a process that has not exited (a zombie has).
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}
