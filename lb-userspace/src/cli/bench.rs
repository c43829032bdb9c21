//! `lb bench`: load an HTTP target and report throughput and latency.
use std::{io::IsTerminal as _, path::PathBuf, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use lb::loadgen::{
    self, BenchConfig, HttpVersion, L4Config, L4Protocol, LoadMode, ProxyHeaderVersion, Target,
};

/// `lb bench URL...` runs a load; `lb bench compare A.json B.json` compares two saved runs.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchCli {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    run: BenchArgs,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// Two saved `--json` reports side by side: throughput, outcomes, latency percentiles and
    /// B/A ratios; with --html, both runs in each plot.
    Compare {
        a: PathBuf,
        b: PathBuf,
        /// Also write the comparison as a self-contained HTML page.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
}

pub fn main(cli: BenchCli) -> anyhow::Result<()> {
    match cli.command {
        Some(BenchCommand::Compare { a, b, html }) => compare(&a, &b, html.as_deref()),
        None => run(cli.run),
    }
}

fn compare(
    a: &std::path::Path,
    b: &std::path::Path,
    html: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use lb::loadgen::compare::{SavedRun, table};
    let (run_a, run_b) = (SavedRun::load(a)?, SavedRun::load(b)?);
    let (name_a, name_b) = (a.display().to_string(), b.display().to_string());
    let text = table((&name_a, &run_a), (&name_b, &run_b));
    emit(&text);
    if let Some(path) = html {
        let page = lb::loadgen::render_comparison_html((&name_a, &run_a), (&name_b, &run_b), &text);
        std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// URL(s) to request, in rotation (same scheme, host and port). `tcp://HOST:PORT` or
    /// `udp://HOST:PORT` switch to L4 mode: connection rate or datagram rate.
    #[arg(required = true)]
    urls: Vec<String>,
    /// L4 mode: wait for a reply (TCP: one byte before closing; UDP: count echoed datagrams).
    #[arg(long)]
    expect_reply: bool,
    /// Concurrent connections.
    #[arg(short = 'c', long, default_value_t = 16, value_name = "N")]
    connections: usize,
    /// Measured duration (after warm-up): seconds (`10`, as wrk and oha read it) or with a
    /// unit (10s, 500ms, 1m). [default: 10s, unless -n is given]
    #[arg(short = 'd', long, value_parser = parse_duration, value_name = "DURATION")]
    duration: Option<Duration>,
    /// Stop after this many requests instead of a duration (warm-up requests included).
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Open loop: send at this many requests per second in total, measuring latency from each
    /// request's intended send time. Without it: closed loop, as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    /// Run this long before measuring.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    warmup: Duration,
    /// HTTP version.
    #[arg(long = "http", value_enum, default_value = "1.1")]
    http: HttpVersion,
    /// A new connection for every request (no keep-alive).
    #[arg(long)]
    no_keepalive: bool,
    /// Request method.
    #[arg(short = 'm', long, default_value = "GET")]
    method: String,
    /// Extra header, "Name: value" (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Request body.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// Request body from a file.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Reach the target through this forward proxy (http://HOST:PORT), one CONNECT tunnel
    /// per connection (as curl -x with --proxytunnel): with --no-keepalive, tunnels per second.
    #[arg(short = 'x', long, value_name = "URL")]
    proxy: Option<String>,
    /// Basic credentials for the forward proxy, NAME:PASSWORD (as curl's --proxy-user).
    #[arg(long, value_name = "NAME:PASSWORD", requires = "proxy")]
    proxy_user: Option<String>,
    /// Send a PROXY protocol header (v1 or v2) at the start of each connection.
    #[arg(long, value_enum)]
    proxy_protocol: Option<ProxyHeaderVersion>,
    /// https: trust the CA certificates in this PEM file.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// https: accept any server certificate.
    #[arg(long)]
    insecure: bool,
    /// https: full handshake on every connection (no session resumption).
    #[arg(long)]
    no_resumption: bool,
    /// Timeout for connect, TLS handshake and each request.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Print the result as JSON (stable schema) instead of text.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML report (percentile and req/s plots) to this file.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Exit with status 1 when more than this percentage of requests failed (no response or
    /// a non-2xx one). Whatever this is, a run where every request failed exits 1.
    #[arg(long, value_name = "PERCENT")]
    max_error_rate: Option<f64>,
}

/// A duration as `-d` takes it: a bare number is seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.trim().parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"));
    }
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

/// Whether a run with `failed` of `total` requests failed passes `max_error_rate` (percent);
/// Err says why not.
fn check_errors(total: u64, failed: u64, max_error_rate: Option<f64>) -> anyhow::Result<()> {
    anyhow::ensure!(
        total == 0 || failed < total,
        "every request failed ({failed} of {total})"
    );
    if let Some(max) = max_error_rate {
        let rate = if total == 0 {
            0.0
        } else {
            failed as f64 * 100.0 / total as f64
        };
        anyhow::ensure!(
            rate <= max,
            "{rate:.2}% of requests failed ({failed} of {total}), above --max-error-rate {max}%"
        );
    }
    Ok(())
}

fn run(args: BenchArgs) -> anyhow::Result<()> {
    let body = match (&args.body, &args.body_file) {
        (Some(b), _) => Bytes::from(b.clone()),
        (None, Some(path)) => {
            Bytes::from(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        (None, None) => Bytes::new(),
    };
    if let Some(max) = args.max_error_rate {
        anyhow::ensure!(
            (0.0..=100.0).contains(&max),
            "--max-error-rate is a percentage (0 to 100)"
        );
    }
    if let Some(rate) = args.rate {
        anyhow::ensure!(
            rate > 0.0 && rate.is_finite(),
            "--rate must be a positive number"
        );
    }
    if let Some(l4) = l4_target(&args.urls)? {
        return run_l4(&args, l4, body);
    }
    let mut target = Target::parse(&args.urls, &args.method, &args.headers, body)?;
    target.tunnel = args
        .proxy
        .as_deref()
        .map(|url| lb::loadgen::Tunnel::parse(url, args.proxy_user.as_deref()))
        .transpose()?;
    let config = BenchConfig {
        target,
        connections: args.connections,
        duration: args.duration,
        requests: args.requests,
        warmup: args.warmup,
        mode: args
            .rate
            .map_or(LoadMode::Closed, |rate| LoadMode::Open { rate }),
        version: args.http,
        keep_alive: !args.no_keepalive,
        proxy: args.proxy_protocol,
        insecure: args.insecure,
        ca_file: args.cacert,
        resumption: !args.no_resumption,
        timeout: args.timeout,
        progress: std::io::stderr().is_terminal(),
    };
    let mut runtime = match args.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(threads);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let mut report = runtime
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(loadgen::run(config))?;
    report.meta = vec![
        ("target".to_owned(), args.urls.join(" ")),
        (
            "command".to_owned(),
            std::env::args().collect::<Vec<_>>().join(" "),
        ),
        (
            "date".to_owned(),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        ),
        (
            "lb version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        ),
    ];
    if let Some(path) = &args.html {
        std::fs::write(path, loadgen::render_html(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    } else {
        emit(&report.to_string());
    }
    check_errors(
        report.requests,
        report.errors + report.non_2xx,
        args.max_error_rate,
    )
}

/// `tcp://` or `udp://` target, if that is what was asked for.
fn l4_target(urls: &[String]) -> anyhow::Result<Option<(L4Protocol, std::net::SocketAddr)>> {
    let Some(first) = urls.first() else {
        return Ok(None);
    };
    let (protocol, rest) = if let Some(rest) = first.strip_prefix("tcp://") {
        (L4Protocol::Tcp, rest)
    } else if let Some(rest) = first.strip_prefix("udp://") {
        (L4Protocol::Udp, rest)
    } else {
        return Ok(None);
    };
    anyhow::ensure!(urls.len() == 1, "L4 mode takes one target");
    let addr = std::net::ToSocketAddrs::to_socket_addrs(rest.trim_end_matches('/'))
        .with_context(|| format!("resolving {rest}"))?
        .next()
        .with_context(|| format!("{rest} resolves to nothing"))?;
    Ok(Some((protocol, addr)))
}

fn run_l4(
    args: &BenchArgs,
    (protocol, addr): (L4Protocol, std::net::SocketAddr),
    payload: Bytes,
) -> anyhow::Result<()> {
    let config = L4Config {
        protocol,
        addr,
        concurrency: args.connections,
        duration: args.duration.unwrap_or(Duration::from_secs(10)),
        payload,
        expect_reply: args.expect_reply,
        rate: args.rate,
        timeout: args.timeout,
    };
    let report = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(loadgen::run_l4(config))?;
    if args.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    } else {
        emit(&report.to_string());
    }
    check_errors(report.attempts, report.errors, args.max_error_rate)
}

/// Writes the result to standard output. A reader that went away (`lb bench ... | head`) is
/// no error of the run's: the rest is dropped quietly instead of panicking as `print!` does.
fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(err) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && err.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("lb bench: writing the result: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_error_checks() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(check_errors(0, 0, None).is_ok());
        assert!(check_errors(10, 9, None).is_ok());
        assert!(check_errors(10, 10, None).is_err());
        assert!(check_errors(100, 1, Some(1.0)).is_ok());
        assert!(check_errors(100, 2, Some(1.0)).is_err());
    }
}
