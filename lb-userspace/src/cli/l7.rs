//! `lb l7`: the L7 tier on its own (HTTP listeners, routes, pools from the backend file) until
//! SIGINT/SIGTERM, then a graceful shutdown (in-flight requests get `--grace` to finish).
//! SIGHUP reloads the HTTPS certificates.
use std::{path::Path, time::Duration};

use anyhow::Context as _;
use lb::l7::{self, L7Config};

use super::signals::{Event, Signals};

pub fn run(
    config_path: &Path,
    threads: Option<usize>,
    grace: Duration,
    access_log: Option<&Path>,
) -> anyhow::Result<()> {
    let config = L7Config::from_file(config_path)?;
    // No metrics endpoint here (that is `lb run`'s admin address): only the access log.
    let observer = match access_log {
        None => l7::Observer::none(),
        Some(path) => l7::Observer::new(
            None,
            Some(
                l7::AccessLog::open(path)
                    .with_context(|| format!("opening the access log {}", path.display()))?,
            ),
        ),
    };
    anyhow::ensure!(
        !config.listeners.is_empty(),
        "{}: no [[listener]] sections",
        config_path.display()
    );
    let mut runtime = super::serving_runtime(threads);
    runtime
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(async {
            let mut running = l7::serve_observed(config, observer).await?;
            for (name, addr) in &running.listeners {
                tracing::info!(listener = %name, %addr, "listening");
                println!("listening name={name} address={addr}");
            }
            let mut signals = Signals::install()?;
            loop {
                match signals.next().await {
                    Event::Stop(name) => {
                        tracing::info!(signal = name, "stopping");
                        break;
                    }
                    Event::Reload => reload(&mut running, config_path).await,
                    Event::ReopenLogs => running.reopen_logs(),
                    Event::Upgrade => tracing::warn!(
                        "SIGUSR2: hitless upgrade is an lb run feature; lb l7 ignores it"
                    ),
                }
            }
            let cut = running.shutdown(grace).await;
            if cut > 0 {
                tracing::warn!(
                    connections = cut,
                    ?grace,
                    "cut connections still busy after the grace"
                );
            }
            Ok(())
        })
}

/// SIGHUP: the backend file applied in place (a bad file keeps the running configuration),
/// then the certificate files re-read.
async fn reload(running: &mut l7::RunningL7, path: &Path) {
    match L7Config::from_file(path) {
        Err(err) => tracing::error!(%err, "SIGHUP: configuration kept"),
        Ok(config) => match running.reload(&config).await {
            Ok(report) => tracing::info!(?report, "SIGHUP: configuration reloaded"),
            Err(err) => tracing::error!(error = %anyhow::Error::from(err), "SIGHUP: reload failed"),
        },
    }
    match running.reload_certificates() {
        Ok(n) => tracing::info!(listeners = n, "SIGHUP: certificates reloaded"),
        Err(err) => tracing::error!(%err, "SIGHUP: certificates kept"),
    }
}
