//! BIRD 2 as lb's BGP speaker: the file of VIP routes lb writes, the control socket lb tells
//! BIRD to re-read its configuration through (and reads the sessions' state from), and the
//! BIRD process lb runs when `[bgp] bird_config` is set.
//!
//! The control socket speaks lines: BIRD greets (`0001 BIRD 2.0.12 ready.`), then answers each
//! command with lines `CODE-text` (more follow), ` text` (continuation of the previous code)
//! and a last `CODE text`. Codes 8xxx and 9xxx are errors (`8002 FILE:LINE:COL syntax error`).
use std::{
    collections::VecDeque,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use ipnet::IpNet;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
    process::{Child, Command},
};

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("BIRD's control socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("BIRD's control socket {path} did not answer within {limit:?}")]
    Silent { path: PathBuf, limit: Duration },
    #[error("BIRD refused `{command}`: {reply}")]
    Refused { command: String, reply: String },
    #[error("writing the routes file {path}: {source}")]
    RoutesFile { path: PathBuf, source: io::Error },
    #[error("BIRD exited ({status}): {words}")]
    Exited { status: String, words: String },
    #[error("running {bird}: {source}")]
    Spawn { bird: PathBuf, source: io::Error },
}

/// The static protocols lb's routes file defines; the operator's BGP sessions export them
/// (`export where proto = "lb_vips4";`).
pub const PROTOCOL_V4: &str = "lb_vips4";
pub const PROTOCOL_V6: &str = "lb_vips6";

/// How many of BIRD's last lines of standard error a start-up failure quotes.
const LAST_WORDS: usize = 4;

/// One command's answer may take this long (a reconfiguration included).
const REPLY_LIMIT: Duration = Duration::from_secs(5);

/// The routes file for `prefixes`: one static protocol per family, always both (so the
/// operator's filters naming them stay valid when a family has no VIPs).
pub fn render_routes(prefixes: &[IpNet]) -> String {
    let mut text = String::from(
        "# Written by lb: the VIPs this node announces now. Included by BIRD's configuration;\n\
         # lb rewrites it and tells BIRD to re-read it whenever the set changes.\n",
    );
    for (protocol, family, v4) in [(PROTOCOL_V4, "ipv4", true), (PROTOCOL_V6, "ipv6", false)] {
        text.push_str(&format!("protocol static {protocol} {{\n\t{family};\n"));
        for prefix in prefixes.iter().filter(|p| matches!(p, IpNet::V4(_)) == v4) {
            text.push_str(&format!("\troute {prefix} blackhole;\n"));
        }
        text.push_str("}\n");
    }
    text
}

/// Replaces the routes file in one step (BIRD never reads half of it).
pub async fn write_routes(path: &Path, prefixes: &[IpNet]) -> Result<(), BirdError> {
    let failed = |source| BirdError::RoutesFile {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(failed)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    tokio::fs::write(&tmp, render_routes(prefixes))
        .await
        .map_err(failed)?;
    tokio::fs::rename(&tmp, path).await.map_err(failed)
}

/// A VIP address as the prefix announced for it (a host route).
pub fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// One BGP session as `show protocols` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub name: String,
    /// BIRD's protocol state: up, start, down...
    pub state: String,
    /// BGP's: Established, Active, Connect... with the last error, if any.
    pub info: String,
}

/// Sends `command` over the control socket at `path`; the answer's lines without their codes.
pub async fn command(path: &Path, command: &str) -> Result<Vec<String>, BirdError> {
    match tokio::time::timeout(REPLY_LIMIT, exchange(path, command)).await {
        Ok(result) => result,
        Err(_) => Err(BirdError::Silent {
            path: path.to_owned(),
            limit: REPLY_LIMIT,
        }),
    }
}

async fn exchange(path: &Path, command: &str) -> Result<Vec<String>, BirdError> {
    let failed = |source| BirdError::Socket {
        path: path.to_owned(),
        source,
    };
    let stream = UnixStream::connect(path).await.map_err(failed)?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    // The greeting.
    lines.next_line().await.map_err(failed)?;
    write
        .write_all(format!("{command}\n").as_bytes())
        .await
        .map_err(failed)?;
    let mut reply = Vec::new();
    loop {
        let Some(line) = lines.next_line().await.map_err(failed)? else {
            return Err(failed(io::ErrorKind::UnexpectedEof.into()));
        };
        let (code, last, text) = split_line(&line);
        if code.is_some_and(|c| c.starts_with('8') || c.starts_with('9')) {
            return Err(BirdError::Refused {
                command: command.to_owned(),
                reply: text.to_owned(),
            });
        }
        if !text.is_empty() {
            reply.push(text.to_owned());
        }
        if last {
            return Ok(reply);
        }
    }
}

/// (code, whether it is the answer's last line, text) of one reply line.
fn split_line(line: &str) -> (Option<&str>, bool, &str) {
    let code = line
        .get(..4)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()));
    match (code, line.as_bytes().get(4)) {
        (Some(code), Some(b'-')) => (Some(code), false, &line[5..]),
        (Some(code), Some(b' ')) => (Some(code), true, &line[5..]),
        (Some(code), None) => (Some(code), true, ""),
        _ => (None, false, line.strip_prefix(' ').unwrap_or(line)),
    }
}

/// Makes BIRD re-read its configuration (and so the routes file).
pub async fn configure(socket: &Path) -> Result<(), BirdError> {
    command(socket, "configure").await.map(drop)
}

/// The BGP sessions and their states.
pub async fn sessions(socket: &Path) -> Result<Vec<Session>, BirdError> {
    let lines = command(socket, "show protocols").await?;
    Ok(parse_sessions(&lines))
}

fn parse_sessions(lines: &[String]) -> Vec<Session> {
    lines
        .iter()
        .filter_map(|line| {
            // name proto table state since [info...]; since may be one or two words.
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() < 5 || words[1] != "BGP" {
                return None;
            }
            let info_from = if words.get(5).is_some_and(|w| w.contains(':')) {
                6
            } else {
                5
            };
            Some(Session {
                name: words[0].to_owned(),
                state: words[3].to_owned(),
                info: words.get(info_from..).unwrap_or_default().join(" "),
            })
        })
        .collect()
}

/// Starts `bird -f -c CONFIG -s SOCKET`. It dies with lb: on lb's exit, and should lb be
/// killed, by the signal the kernel sends it when its parent goes (so a dead lb never leaves
/// its VIPs announced). Its standard error goes to lb's log, the last lines also to
/// `last_words` (why it stopped, when it does).
pub fn spawn(
    bird: &Path,
    config: &Path,
    socket: &Path,
    last_words: Arc<Mutex<VecDeque<String>>>,
) -> Result<Child, BirdError> {
    let mut command = Command::new(bird);
    command
        .arg("-f")
        .arg("-c")
        .arg(config)
        .arg("-s")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and calls only prctl and
    // getppid, both async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have gone between the fork and the prctl.
            if libc::getppid() == 1 {
                return Err(io::Error::other("lb exited while BIRD was starting"));
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|source| BirdError::Spawn {
        bird: bird.to_owned(),
        source,
    })?;
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!(bird = %line, "BIRD");
                if let Ok(mut words) = last_words.lock() {
                    if words.len() == LAST_WORDS {
                        words.pop_front();
                    }
                    words.push_back(line);
                }
            }
        });
    }
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routes_file_has_both_families_always() {
        let text = render_routes(&[
            "10.0.0.1/32".parse().expect("net"),
            "2001:db8::1/128".parse().expect("net"),
            "10.0.0.2/32".parse().expect("net"),
        ]);
        assert!(text.contains(
            "protocol static lb_vips4 {\n\tipv4;\n\troute 10.0.0.1/32 blackhole;\n\troute 10.0.0.2/32 blackhole;\n}\n"
        ), "{text}");
        assert!(
            text.contains(
                "protocol static lb_vips6 {\n\tipv6;\n\troute 2001:db8::1/128 blackhole;\n}\n"
            ),
            "{text}"
        );
        let empty = render_routes(&[]);
        assert!(
            empty.contains("protocol static lb_vips4 {\n\tipv4;\n}\n"),
            "{empty}"
        );
    }

    #[test]
    fn reply_lines_split_into_code_and_text() {
        assert_eq!(
            split_line("0002-Reading configuration from x"),
            (Some("0002"), false, "Reading configuration from x")
        );
        assert_eq!(
            split_line("0003 Reconfigured"),
            (Some("0003"), true, "Reconfigured")
        );
        assert_eq!(split_line(" uplink BGP"), (None, false, "uplink BGP"));
        assert_eq!(split_line("0000"), (Some("0000"), true, ""));
    }

    #[test]
    fn sessions_are_the_bgp_protocols() {
        let lines: Vec<String> = [
            "Name       Proto      Table      State  Since         Info",
            "lb_vips4   Static     master4    up     20:24:40.938",
            "uplink     BGP        ---        up     20:24:44.699  Established",
            "backup     BGP        ---        start  2026-12-07 20:24:44  Active        Socket: Connection refused",
        ]
        .map(str::to_owned)
        .into();
        assert_eq!(
            parse_sessions(&lines),
            [
                Session {
                    name: "uplink".into(),
                    state: "up".into(),
                    info: "Established".into()
                },
                Session {
                    name: "backup".into(),
                    state: "start".into(),
                    info: "Active Socket: Connection refused".into()
                }
            ]
        );
    }
}
