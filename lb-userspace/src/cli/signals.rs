//! Shutdown, reload, log-reopen and upgrade signals, as one stream of events. Every command installs
//! all of them, so none of these signals ever kills lb (SIGUSR1's default action would).
use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

pub struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
    usr1: Signal,
    usr2: Signal,
}

pub enum Event {
    /// SIGINT or SIGTERM, by name.
    Stop(&'static str),
    /// SIGHUP: reload the configuration.
    Reload,
    /// SIGUSR1: reopen the log files (logrotate moved them away), as NGINX does.
    ReopenLogs,
    /// SIGUSR2: start the binary on disk in this process's place (hitless upgrade), as NGINX
    /// does.
    Upgrade,
}

impl Signals {
    pub fn install() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
            usr1: signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?,
            usr2: signal(SignalKind::user_defined2()).context("installing SIGUSR2 handler")?,
        })
    }

    pub async fn next(&mut self) -> Event {
        tokio::select! {
            _ = self.int.recv() => Event::Stop("SIGINT"),
            _ = self.term.recv() => Event::Stop("SIGTERM"),
            _ = self.hup.recv() => Event::Reload,
            _ = self.usr1.recv() => Event::ReopenLogs,
            _ = self.usr2.recv() => Event::Upgrade,
        }
    }
}
