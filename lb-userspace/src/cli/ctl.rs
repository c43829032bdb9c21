//! `lb ctl`: the operator's side of the admin API of a running `lb run`: status tables, pools,
//! drain / undrain, cache purge, upgrade. Speaks HTTP/1.1 to `--admin` (the same default as `lb run --admin`).
//! The status JSON is read by field name and missing numbers count as zero, so the tables keep
//! working when the snapshot gains or loses fields.
use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt as _, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

#[derive(Args)]
pub struct CtlArgs {
    /// Admin address of the `lb run` to talk to.
    #[arg(long, global = true, default_value = "127.0.0.1:9900")]
    admin: SocketAddr,
    /// The admin token (the file's first line), sent as `Authorization: Bearer TOKEN`; needed
    /// for drain, undrain and purge when `lb run` has `--admin-token-file`.
    #[arg(long, global = true, value_name = "FILE")]
    admin_token_file: Option<std::path::PathBuf>,
    /// Print the API's raw answer (JSON for status and pools) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Listeners, pools and backends (health, weight, in-flight, requests, errors), VIPs and
    /// their reals, XDP counters, and the configuration's reload counts.
    Status,
    /// One line per pool: algorithm, backends, how many take new requests.
    Pools,
    /// Stop new requests and flows to BACKEND (ADDRESS:PORT) of POOL; existing ones finish.
    Drain { pool: String, backend: String },
    /// Let BACKEND of POOL take new requests and flows again.
    Undrain { pool: String, backend: String },
    /// Withdraw every VIP this node announces by BGP (`[bgp]`): the routers move its flows
    /// to the other nodes, which send them to the same reals. lb keeps running and forwarding
    /// what still arrives; `undrain-node` announces again.
    DrainNode,
    /// Announce this node's VIPs again (where it can serve them).
    UndrainNode,
    /// Remove cached responses for URL (as the cache keys it: SCHEME://HOST:PORT/PATH?QUERY,
    /// the port the client connected to) from every route's cache.
    Purge {
        url: String,
        /// Remove every URL that starts with URL instead.
        #[arg(long)]
        prefix: bool,
    },
    /// Hitless upgrade: `lb run` starts the binary on disk with its arguments and hands it
    /// its listening sockets; once the new process is ready the old one drains and exits.
    /// Prints the new pid; on failure the old process keeps serving and the reason is printed.
    Upgrade {
        /// How long to wait for the answer (the new process's start-up included).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// `lb upgrade`: `lb ctl upgrade` under the name operators look for.
#[derive(Args)]
pub struct UpgradeArgs {
    /// Admin address of the `lb run` to upgrade.
    #[arg(long, default_value = "127.0.0.1:9900")]
    admin: SocketAddr,
    /// The admin token (the file's first line), when `lb run` has `--admin-token-file`.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<std::path::PathBuf>,
    /// Print `{"pid": N}` instead of a sentence.
    #[arg(long)]
    json: bool,
    /// How long to wait for the answer (the new process's start-up included).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub async fn upgrade(args: UpgradeArgs) -> anyhow::Result<()> {
    run(CtlArgs {
        admin: args.admin,
        admin_token_file: args.admin_token_file,
        json: args.json,
        command: CtlCommand::Upgrade {
            timeout: args.timeout,
        },
    })
    .await
}

/// How long one API call may take (connect, request, answer).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let token = args
        .admin_token_file
        .as_deref()
        .map(super::run::read_token)
        .transpose()?;
    let call = |method: Method, path: String| {
        let token = token.clone();
        async move { call_admin(args.admin, method, &path, token.as_deref(), CALL_TIMEOUT).await }
    };
    match &args.command {
        CtlCommand::Status | CtlCommand::Pools => {
            let body = call(Method::GET, "/api/status".to_owned()).await?;
            if args.json {
                println!("{body}");
                return Ok(());
            }
            let status: Value = serde_json::from_str(&body)
                .with_context(|| format!("{}: /api/status is not JSON", args.admin))?;
            let text = match args.command {
                CtlCommand::Pools => pools_table(&status),
                _ => status_text(&status),
            };
            print!("{text}");
        }
        CtlCommand::Purge { url, prefix } => {
            let path = format!(
                "/api/purge?url={}{}",
                percent_encode(url),
                if *prefix { "&prefix=1" } else { "" }
            );
            let body = call(Method::POST, path).await?;
            let purged: u64 = body
                .trim()
                .strip_prefix("purged ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_default();
            if args.json {
                println!("{}", serde_json::json!({ "purged": purged }));
            } else {
                println!("purged {purged} cached key(s)");
            }
        }
        CtlCommand::Upgrade { timeout } => {
            let body = call_admin(
                args.admin,
                Method::POST,
                "/api/upgrade",
                token.as_deref(),
                *timeout,
            )
            .await?;
            let pid: u32 = body
                .trim()
                .strip_prefix("upgraded pid ")
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("{}: unexpected answer {body:?}", args.admin))?;
            if args.json {
                println!("{}", serde_json::json!({ "pid": pid }));
            } else {
                println!("upgraded: the new lb is pid {pid}; the old one drains and exits");
            }
        }
        CtlCommand::DrainNode | CtlCommand::UndrainNode => {
            let drain = matches!(args.command, CtlCommand::DrainNode);
            let path = if drain {
                "/api/node/drain"
            } else {
                "/api/node/undrain"
            };
            let body = call(Method::POST, path.to_owned()).await?;
            if args.json {
                println!("{}", serde_json::json!({ "result": body.trim() }));
            } else if drain {
                println!("node drained: every VIP withdrawn");
            } else {
                println!("node undrained: VIPs announced where this node can serve them");
            }
        }
        CtlCommand::Drain { pool, backend } | CtlCommand::Undrain { pool, backend } => {
            let drain = matches!(args.command, CtlCommand::Drain { .. });
            let path = format!(
                "/api/{}?pool={}&backend={}",
                if drain { "drain" } else { "undrain" },
                percent_encode(pool),
                percent_encode(backend)
            );
            let body = call(Method::POST, path).await?;
            if args.json {
                println!("{}", serde_json::json!({ "result": body.trim() }));
            } else {
                println!(
                    "{} {backend} of pool {pool}",
                    if drain { "draining" } else { "undrained" }
                );
            }
        }
    }
    Ok(())
}

/// One request to the admin API; the body of a 2xx answer, else the API's message as error.
async fn call_admin(
    admin: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<String> {
    tokio::time::timeout(timeout, exchange(admin, method, path, token))
        .await
        .map_err(|_| anyhow::anyhow!("{admin}: no answer within {timeout:?}"))?
}

async fn exchange(
    admin: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<String> {
    let tcp = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("cannot reach the admin API at {admin} (is `lb run` running?)"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .with_context(|| format!("{admin}: HTTP handshake"))?;
    let driver = tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, admin.to_string());
    if let Some(token) = token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .with_context(|| format!("building the request for {path}"))?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("{admin}{path}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("{admin}{path}: reading the answer"))?
        .to_bytes();
    driver.abort();
    let body = String::from_utf8_lossy(&body).into_owned();
    if status.is_success() {
        return Ok(body);
    }
    let reason = body.trim();
    match status {
        // The manager's own words: "no pool \"x\"", "pool \"web\" has no backend ...".
        StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::INTERNAL_SERVER_ERROR
            if !reason.is_empty() =>
        {
            anyhow::bail!("{reason}")
        }
        _ => anyhow::bail!("{admin}{path}: {status}: {reason}"),
    }
}

/// Query-string encoding: unreserved characters and `:` as they are, the rest as %XX
/// (IPv6 backends are written `[::1]:80`).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("-")
}

fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map_or(&[], Vec::as_slice)
}

/// Left-aligned columns, two spaces apart, header first.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<w$}  ");
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

fn pools_table(status: &Value) -> String {
    let rows: Vec<Vec<String>> = list(status, "pools")
        .iter()
        .map(|p| {
            let backends = list(p, "backends");
            let serving = backends
                .iter()
                .filter(|b| matches!(b["health"].as_str(), Some("up" | "unchecked")))
                .count();
            let discovery = &p["discovery"];
            let discovery = match (
                discovery["source"].as_str(),
                discovery["last_error"].as_str(),
            ) {
                (None, _) => "-".to_owned(),
                (Some(source), None) => source.to_owned(),
                (Some(source), Some(err)) => {
                    format!("{source} (failing, last good set kept: {err})")
                }
            };
            vec![
                text(p, "name").to_owned(),
                text(p, "algorithm").to_owned(),
                backends.len().to_string(),
                serving.to_string(),
                discovery,
            ]
        })
        .collect();
    table(
        &["POOL", "ALGORITHM", "BACKENDS", "SERVING", "DISCOVERY"],
        &rows,
    )
}

fn status_text(status: &Value) -> String {
    let mut out = String::new();
    let config = &status["config"];
    let _ = writeln!(
        out,
        "lb {}  pid {}  up {:.0}s  config {}  reloads ok {}, rejected {}",
        text(status, "version"),
        count(status, "pid"),
        status["uptime_seconds"].as_f64().unwrap_or(0.0),
        text(config, "path"),
        count(config, "reloads_ok"),
        count(config, "reloads_failed"),
    );
    if let Some(e) = config["last_error"].as_str() {
        let _ = writeln!(out, "last reload rejected: {e}");
    }

    let listeners: Vec<Vec<String>> = list(status, "listeners")
        .iter()
        .map(|l| {
            vec![
                text(l, "name").to_owned(),
                text(l, "address").to_owned(),
                text(l, "kind").to_owned(),
            ]
        })
        .collect();
    out.push('\n');
    out += &table(&["LISTENER", "ADDRESS", "KIND"], &listeners);

    let mut backends = Vec::new();
    for p in list(status, "pools") {
        for b in list(p, "backends") {
            let mut health = text(b, "health").to_owned();
            if b["backup"].as_bool() == Some(true) {
                health += " (backup)";
            }
            backends.push(vec![
                text(p, "name").to_owned(),
                text(b, "address").to_owned(),
                health,
                count(b, "weight").to_string(),
                count(b, "in_flight").to_string(),
                count(b, "requests").to_string(),
                count(b, "errors").to_string(),
                format!("{:.1}", b["requests_per_second"].as_f64().unwrap_or(0.0)),
                format!("{:.1}%", b["error_rate"].as_f64().unwrap_or(0.0) * 100.0),
                b["last_error"].as_str().unwrap_or_default().to_owned(),
            ]);
        }
    }
    out.push('\n');
    out += &table(
        &[
            "POOL",
            "BACKEND",
            "HEALTH",
            "WEIGHT",
            "IN-FLIGHT",
            "REQUESTS",
            "ERRORS",
            "REQ/S",
            "ERR%",
            "LAST-ERROR",
        ],
        &backends,
    );

    let vips = list(status, "vips");
    if !vips.is_empty() {
        let mut rows = Vec::new();
        for v in vips {
            rows.push(vec![
                format!("{}/{}", text(v, "address"), text(v, "protocol")),
                text(v, "forward").to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                count(v, "packets").to_string(),
                count(v, "bytes").to_string(),
                count(v, "new_flows").to_string(),
                v["ring_hash"].as_str().unwrap_or("-").to_owned(),
            ]);
            for r in list(v, "reals") {
                rows.push(vec![
                    String::new(),
                    format!("real {}", text(r, "address")),
                    count(r, "weight").to_string(),
                    if r["up"].as_bool() == Some(false) {
                        "down"
                    } else {
                        "up"
                    }
                    .to_owned(),
                    count(r, "packets").to_string(),
                    count(r, "bytes").to_string(),
                    count(r, "new_flows").to_string(),
                    String::new(),
                ]);
            }
        }
        out.push('\n');
        out += &table(
            &[
                "VIP",
                "FORWARD",
                "WEIGHT",
                "STATE",
                "PACKETS",
                "BYTES",
                "NEW-FLOWS",
                "RING-HASH",
            ],
            &rows,
        );
    }

    let bgp = &status["bgp"];
    if bgp.is_object() {
        let _ = writeln!(
            out,
            "\nbgp: bird {}{}",
            if bgp["speaker_running"].as_bool() == Some(true) {
                "running"
            } else {
                "NOT RUNNING"
            },
            if bgp["node_drained"].as_bool() == Some(true) {
                ", node drained"
            } else {
                ""
            }
        );
        if let Some(e) = bgp["last_error"].as_str() {
            let _ = writeln!(out, "last BIRD error: {e}");
        }
        let mut rows: Vec<Vec<String>> = list(bgp, "sessions")
            .iter()
            .map(|s| {
                vec![
                    format!("session {}", text(s, "name")),
                    text(s, "state").to_owned(),
                    text(s, "info").to_owned(),
                ]
            })
            .collect();
        rows.extend(list(bgp, "addresses").iter().map(|a| {
            let announced =
                a["announce"].as_bool() == Some(true) && a["in_bird"].as_bool() == Some(true);
            vec![
                text(a, "address").to_owned(),
                if announced { "announced" } else { "withdrawn" }.to_owned(),
                text(a, "reason").to_owned(),
            ]
        }));
        out += &table(&["BGP", "STATE", "WHY"], &rows);
    }

    let xdp = &status["xdp"];
    if xdp.is_object() {
        let _ = writeln!(
            out,
            "\nxdp on {} ({} mode)",
            text(xdp, "iface"),
            text(xdp, "mode")
        );
        for (title, key) in [
            ("packets", "classes"),
            ("dropped", "drops"),
            ("events", "events"),
        ] {
            let pairs: Vec<String> = list(xdp, key)
                .iter()
                .filter_map(|pair| Some(format!("{} {}", pair[0].as_str()?, pair[1].as_u64()?)))
                .collect();
            if !pairs.is_empty() {
                let _ = writeln!(out, "  {title}: {}", pairs.join(", "));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_encoded_for_the_query_string() {
        assert_eq!(percent_encode("127.0.0.1:80"), "127.0.0.1:80");
        assert_eq!(percent_encode("[::1]:80"), "%5B::1%5D:80");
        assert_eq!(percent_encode("a b&c"), "a%20b%26c");
    }

    #[test]
    fn status_tables_read_fields_by_name_and_tolerate_missing_ones() {
        let status = serde_json::json!({
            "version": "0.1.0",
            "config": { "path": "lb.toml", "reloads_ok": 2, "reloads_failed": 1,
                        "last_error": "lb.toml:3: bad" },
            "listeners": [{ "name": "public", "address": "127.0.0.1:8080", "kind": "http" }],
            "pools": [{ "name": "web", "algorithm": "round_robin", "backends": [
                { "address": "10.0.0.1:80", "health": "up", "weight": 1, "requests": 7 },
                { "address": "10.0.0.2:80", "health": "draining", "backup": true }
            ]}],
            "vips": [{ "address": "10.100.0.1:80", "protocol": "tcp", "forward": "local",
                       "packets": 5, "ring_hash": "c602dd0c36d3a5dc",
                       "reals": [{ "address": "10.0.0.1", "weight": 1, "up": true }] }],
            "xdp": { "iface": "eth0", "mode": "skb", "classes": [["passed", 3]], "drops": [],
                     "events": [] }
        });
        let text = status_text(&status);
        assert!(text.contains("reloads ok 2, rejected 1"), "{text}");
        assert!(
            text.contains("last reload rejected: lb.toml:3: bad"),
            "{text}"
        );
        let web: Vec<&str> = text.lines().filter(|l| l.starts_with("web ")).collect();
        assert_eq!(web.len(), 2, "{text}");
        assert_eq!(
            web[0].split_whitespace().collect::<Vec<_>>(),
            [
                "web",
                "10.0.0.1:80",
                "up",
                "1",
                "0",
                "7",
                "0",
                "0.0",
                "0.0%"
            ]
        );
        assert!(web[1].contains("draining (backup)"), "{text}");
        assert!(text.contains("real 10.0.0.1"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("10.100.0.1:80/tcp") && l.ends_with("c602dd0c36d3a5dc")),
            "{text}"
        );
        assert!(text.contains("xdp on eth0 (skb mode)"), "{text}");
        assert!(text.contains("packets: passed 3"), "{text}");
        assert_eq!(
            pools_table(&status),
            "POOL  ALGORITHM    BACKENDS  SERVING  DISCOVERY\nweb   round_robin  2         1        -\n"
        );
    }
}
