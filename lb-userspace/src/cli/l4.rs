//! `lb l4`: the L4 tier on its own: attach the datapath, install the backend file's VIPs, and
//! follow the file (on change and on SIGHUP) until SIGINT/SIGTERM.
use std::{path::Path, time::Duration};

use anyhow::Context as _;
use lb::{
    config::Config,
    l4::{L4Config, L4Dataplane, read_l4_stats},
    xdp::{self, AttachMode, AttachedXdp},
};

use super::signals::{Event, Signals};
use lb::manager::watch::FileWatcher;

/// How often the backend file's modification time is checked.
const WATCH_PERIOD: Duration = Duration::from_millis(200);

pub async fn run(
    iface: &str,
    mode: AttachMode,
    config_path: &Path,
    stats_interval: u64,
) -> anyhow::Result<()> {
    // Stamp the file before reading it: a change made while we start up is then seen as a
    // change, not taken as the starting point.
    let mut watcher = FileWatcher::new(config_path.to_owned());
    // A bad file stops us before anything is attached.
    let config = Config::from_file(config_path)?.l4;
    let mut attached = xdp::attach(iface, mode)
        .with_context(|| format!("attaching the XDP datapath to {iface}"))?;
    let log_task = xdp::forward_logs(attached.ebpf_mut())?;
    let mut dataplane = L4Dataplane::new();
    let report = dataplane
        .apply(attached.ebpf_mut(), &config)
        .context("installing the VIPs")?;
    tracing::info!(
        iface,
        mode = attached.mode(),
        vips = config.vips.len(),
        ?report,
        rings = ring_hashes(&dataplane, &config),
        "L4 tier running"
    );
    println!(
        "attached iface={iface} mode={} vips={}",
        attached.mode(),
        config.vips.len()
    );

    let mut signals = Signals::install()?;
    let mut watch_tick = tokio::time::interval(WATCH_PERIOD);
    let period = (stats_interval > 0).then(|| Duration::from_secs(stats_interval));
    let mut stats_tick = tokio::time::interval(period.unwrap_or(Duration::from_secs(3600)));
    stats_tick.tick().await;
    let signal_name = loop {
        tokio::select! {
            event = signals.next() => match event {
                Event::Stop(name) => break name,
                Event::Reload => reload(&mut attached, &mut dataplane, config_path, "SIGHUP"),
                Event::ReopenLogs => tracing::info!("SIGUSR1: lb l4 writes no log file"),
                Event::Upgrade => tracing::warn!("SIGUSR2: hitless upgrade is an lb run feature; lb l4 ignores it"),
            },
            _ = watch_tick.tick() => {
                if watcher.changed() {
                    reload(&mut attached, &mut dataplane, config_path, "file changed");
                }
            }
            _ = stats_tick.tick(), if period.is_some() => {
                println!("{}\n", read_l4_stats(attached.ebpf(), &dataplane)?);
            }
        }
    };
    tracing::info!(signal = signal_name, "detaching");
    tokio::time::sleep(Duration::from_millis(50)).await;
    log_task.abort();
    let stats = read_l4_stats(attached.ebpf(), &dataplane)?;
    let host = xdp::read_stats(attached.ebpf())?;
    attached
        .detach()
        .with_context(|| format!("detaching from {iface}"))?;
    println!("{stats}");
    println!("traffic passed to this host:\n{host}");
    println!("detached iface={iface}");
    Ok(())
}

/// Each VIP's ring hash, `ADDR/PROTO=HASH` (compare across nodes: docs/SCALE-OUT.md).
fn ring_hashes(dataplane: &L4Dataplane, config: &L4Config) -> String {
    config
        .vips
        .iter()
        .map(|v| {
            let hash = dataplane
                .ring_hash(v.addr, v.protocol)
                .map_or_else(|| "-".to_owned(), |h| format!("{h:016x}"));
            format!("{}/{:?}={hash}", v.addr, v.protocol).to_lowercase()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Applies the file again; a bad file keeps the running configuration and says why.
fn reload(attached: &mut AttachedXdp, dataplane: &mut L4Dataplane, path: &Path, why: &str) {
    let config = match Config::from_file(path) {
        Ok(config) => config.l4,
        Err(err) => {
            tracing::error!(%err, "reload ({why}) rejected; keeping the running configuration");
            return;
        }
    };
    match dataplane.apply(attached.ebpf_mut(), &config) {
        Ok(report) => {
            tracing::info!(
                why,
                ?report,
                rings = ring_hashes(dataplane, &config),
                "configuration reloaded"
            );
            println!(
                "reloaded vips={} rings_rebuilt={}",
                config.vips.len(),
                report.rings_rebuilt
            );
        }
        Err(err) => tracing::error!(error = %anyhow::Error::from(err), "reload ({why}) failed"),
    }
}
