//! `lb xdp attach`: the datapath alone, printing its parser counters.
use std::time::Duration;

use anyhow::Context as _;
use lb::xdp::{self, AttachMode};

use super::signals::{Event, Signals};

pub async fn attach(iface: &str, mode: AttachMode, stats_interval: u64) -> anyhow::Result<()> {
    let mut attached = xdp::attach(iface, mode)
        .with_context(|| format!("attaching the XDP datapath to {iface}"))?;
    let log_task = xdp::forward_logs(attached.ebpf_mut())?;
    tracing::info!(iface, mode = attached.mode(), "XDP datapath attached");
    // Tests and scripts wait for this line on stdout before sending traffic.
    println!("attached iface={iface} mode={}", attached.mode());

    let mut signals = Signals::install()?;
    let period = (stats_interval > 0).then(|| Duration::from_secs(stats_interval));
    let mut ticker = tokio::time::interval(period.unwrap_or(Duration::from_secs(3600)));
    ticker.tick().await;
    let signal_name = loop {
        tokio::select! {
            event = signals.next() => match event {
                Event::Stop(name) => break name,
                Event::Reload => tracing::info!("SIGHUP: nothing to reload for lb xdp attach"),
                Event::ReopenLogs => tracing::info!("SIGUSR1: lb xdp attach writes no log file"),
                Event::Upgrade => tracing::warn!("SIGUSR2: hitless upgrade is an lb run feature; lb xdp attach ignores it"),
            },
            _ = ticker.tick(), if period.is_some() => {
                println!("{}\n", xdp::read_stats(attached.ebpf())?);
            }
        }
    };
    tracing::info!(signal = signal_name, "detaching");
    // Let the log task drain what the program wrote before we detach.
    tokio::time::sleep(Duration::from_millis(50)).await;
    log_task.abort();
    let stats = xdp::read_stats(attached.ebpf())?;
    attached
        .detach()
        .with_context(|| format!("detaching from {iface}"))?;
    println!("{stats}");
    println!("detached iface={iface}");
    Ok(())
}
