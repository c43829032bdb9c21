//! `lb`: command-line entry point.
use std::{io::IsTerminal as _, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb::xdp::{self, AttachMode};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "lb", version, about = "Layered L4 (XDP) / L7 load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The XDP tier on its own.
    #[command(subcommand)]
    Xdp(XdpCommand),
}

#[derive(Subcommand)]
enum XdpCommand {
    /// Load the datapath, attach it to an interface, print its counters; detach on SIGINT/SIGTERM.
    Attach {
        /// Interface to attach to (in the current network namespace).
        #[arg(long)]
        iface: String,
        /// XDP mode: native (driver), skb (generic), or auto (native if the driver can).
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: AttachMode,
        /// Print the counters every this many seconds (0: only on exit).
        #[arg(long, default_value_t = 0)]
        stats_interval: u64,
    },
}

fn main() -> anyhow::Result<()> {
    // Logs go to stderr (colour only on a terminal); stdout carries the command's output.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Xdp(XdpCommand::Attach {
                iface,
                xdp_mode,
                stats_interval,
            }) => xdp_attach(&iface, xdp_mode, stats_interval).await,
        }
    })
}

async fn xdp_attach(iface: &str, mode: AttachMode, stats_interval: u64) -> anyhow::Result<()> {
    let mut attached = xdp::attach(iface, mode)
        .with_context(|| format!("attaching the XDP datapath to {iface}"))?;
    let log_task = xdp::forward_logs(attached.ebpf_mut())?;
    tracing::info!(iface, mode = attached.mode(), "XDP datapath attached");
    // Tests and scripts wait for this line on stdout before sending traffic.
    println!("attached iface={iface} mode={}", attached.mode());

    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let period = (stats_interval > 0).then(|| Duration::from_secs(stats_interval));
    let mut ticker = tokio::time::interval(period.unwrap_or(Duration::from_secs(3600)));
    ticker.tick().await;
    let signal_name = loop {
        tokio::select! {
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
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
