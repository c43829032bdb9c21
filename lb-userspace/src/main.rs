//! `lb`: command-line entry point.
mod cli;

use std::{io::IsTerminal as _, path::PathBuf};

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use lb::xdp::AttachMode;
use tracing_subscriber::EnvFilter;

/// The L7 tier allocates many small, short-lived objects per request on one thread; mimalloc
/// serves them from thread-local pages (glibc malloc cost ~8% of a keep-alive request).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "lb", version, about = "Layered L4 (XDP) / L7 load balancer")]
struct Cli {
    /// lb's own log lines (stderr): `text` for people, `json` (one object per line) for log
    /// collectors. Verbosity from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// The XDP tier on its own.
    #[command(subcommand)]
    Xdp(XdpCommand),
    /// The L4 tier: VIPs from the backend file, Maglev + connection table, IPIP DSR or local
    /// hand-off. Follows the file (on change and SIGHUP) until SIGINT/SIGTERM.
    L4 {
        /// Ingress interface for VIP traffic.
        #[arg(long)]
        iface: String,
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: AttachMode,
        /// Backend file (TOML) with the [[vip]] sections.
        #[arg(long, visible_alias = "backends", value_name = "FILE")]
        config: PathBuf,
        /// Print the L4 counters every this many seconds (0: only on exit).
        #[arg(long, default_value_t = 0)]
        stats_interval: u64,
    },
    /// The L7 tier: HTTP listeners, routes and upstream pools from the backend file.
    L7 {
        /// Backend file (TOML) with [[listener]], [[route]] and [[pool]] sections.
        #[arg(long, visible_alias = "backends", value_name = "FILE")]
        config: PathBuf,
        /// Worker threads (default: the CPUs this process may use). 1: a single thread does
        /// everything (tokio's current-thread scheduler).
        #[arg(long)]
        threads: Option<usize>,
        /// On SIGTERM/SIGINT: time in-flight requests get to finish before connections are cut.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        /// Write a JSON access log line per request to this file (`-`: standard output).
        #[arg(long)]
        access_log: Option<PathBuf>,
    },
    /// The whole load balancer: manager, L7 tier, XDP tier (with --iface), health checks,
    /// admin surface. Reloads on SIGHUP and when the backend file changes.
    Run(Box<cli::run::RunArgs>),
    /// Validate a backend file without starting anything: prints a summary, or FILE:LINE:
    /// reason and exits non-zero.
    CheckConfig {
        /// Backend file (TOML).
        file: PathBuf,
    },
    /// Talk to a running `lb run` through its admin API: status, pools, drain, undrain, purge, upgrade.
    Ctl(cli::ctl::CtlArgs),
    /// Hitless upgrade of a running `lb run` (as `lb ctl upgrade`): it starts the binary on
    /// disk and hands it its listening sockets, then drains and exits once the new one is ready.
    Upgrade(cli::ctl::UpgradeArgs),
    /// Load generator: throughput and latency of an HTTP(S) target, closed or open loop.
    Bench(Box<cli::bench::BenchCli>),
    /// Print shell completions for SHELL (bash, zsh, fish, ...) to standard output.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to standard output.
    #[command(hide = true)]
    Man,
    /// Run on a real server: strip the IPIP/IP6IP6 header lb adds, so packets reach the VIP
    /// (configured on the server's `lo`).
    Decap {
        #[arg(long)]
        iface: String,
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: AttachMode,
    },
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

/// Errors are printed as one line with their causes (`lb: FILE:LINE: reason`), without a
/// backtrace even when RUST_BACKTRACE is set: they describe the operator's input, not a bug.
fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Which --listen each --tls-cert follows is a matter of position, which clap's derived
    // fields do not keep.
    if let (Command::Run(args), Some(("run", run))) = (&mut cli.command, matches.subcommand()) {
        args.bind_certs_to_listeners(run);
    }
    let who = match cli.command {
        Command::Ctl(_) => "lb ctl",
        Command::Upgrade(_) => "lb upgrade",
        _ => "lb",
    };
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{who}: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Logs go to stderr (colour only on a terminal); stdout carries the command's output.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
    // These two size their own multi-threaded runtimes.
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "lb", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man => {
            return clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("writing the man page");
        }
        Command::Bench(args) => return cli::bench::main(*args),
        Command::L7 {
            config,
            threads,
            grace,
            access_log,
        } => return cli::l7::run(&config, threads, grace, access_log.as_deref()),
        Command::CheckConfig { file } => return cli::check_config::run(&file),
        Command::Run(args) => return cli::run::run(*args),
        _ => {}
    }
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
            }) => cli::xdp::attach(&iface, xdp_mode, stats_interval).await,
            Command::L4 {
                iface,
                xdp_mode,
                config,
                stats_interval,
            } => cli::l4::run(&iface, xdp_mode, &config, stats_interval).await,
            Command::Decap { iface, xdp_mode } => cli::decap::run(&iface, xdp_mode).await,
            Command::Ctl(args) => cli::ctl::run(args).await,
            Command::Upgrade(args) => cli::ctl::upgrade(args).await,
            Command::Bench(_)
            | Command::L7 { .. }
            | Command::CheckConfig { .. }
            | Command::Completions { .. }
            | Command::Man
            | Command::Run(_) => Err(anyhow::anyhow!("this command runs on its own runtime")),
        }
    })
}
