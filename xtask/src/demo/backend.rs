//! `xtask demo-backend`: the demo's HTTP backend, a process of its own so that the demo can
//! stop it (as a crash would) and start it again. HTTP/1.1 with keep-alive (lb's pools reuse
//! upstream connections), a thread per connection, every path answered 200 with a body that
//! names the backend. Built into xtask so a fresh machine needs no web server package.
//!
//! `GET /count` answers how many requests it served, health checks (`/healthz`) and `/count`
//! itself not included: the demo's ground truth for where the traffic went.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Args;

#[derive(Args)]
pub struct BackendArgs {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Name put in every response body.
    #[arg(long)]
    name: String,
}

/// Request heads larger than this are refused (the connection is closed).
const MAX_HEAD: usize = 16 * 1024;
/// Idle keep-alive connections are closed after this long.
const IDLE: Duration = Duration::from_secs(60);
/// The health-check path: answered, not counted.
pub const HEALTH_PATH: &str = "/healthz";
/// Answers the count of served requests.
pub const COUNT_PATH: &str = "/count";

/// Requests served, health checks and count queries not included.
static SERVED: AtomicU64 = AtomicU64::new(0);

pub fn serve(args: &BackendArgs) -> Result<()> {
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    println!("listening {}", args.listen);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let name = args.name.clone();
        thread::spawn(move || {
            // A broken connection only ends that connection.
            let _ = serve_connection(conn, &name);
        });
    }
    Ok(())
}

fn serve_connection(mut conn: TcpStream, name: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IDLE))?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // Read until a whole head is buffered (a client may pipeline several).
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > MAX_HEAD {
                return Ok(());
            }
            match conn.read(&mut chunk)? {
                0 => return Ok(()),
                n => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let path = head
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let body = match path.as_str() {
            COUNT_PATH => format!("{}\n", SERVED.load(Ordering::Relaxed)),
            HEALTH_PATH => "ok\n".to_owned(),
            _ => {
                SERVED.fetch_add(1, Ordering::Relaxed);
                format!("{name}\n")
            }
        };
        let header = |name: &str| {
            head.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.trim() == name)
                .map(|(_, v)| v.trim().to_owned())
        };
        let Some(body_len) = header("content-length")
            .map(|v| v.parse::<usize>())
            .transpose()
            .ok()
            .map(Option::unwrap_or_default)
        else {
            return Ok(()); // unparseable Content-Length: not worth an error page here
        };
        if header("transfer-encoding").is_some() {
            return Ok(()); // chunked request bodies are not needed by the demo
        }
        let http10 = head
            .lines()
            .next()
            .is_some_and(|l| l.trim_end().ends_with("http/1.0"));
        let connection = header("connection").unwrap_or_default();
        let close = connection.contains("close") || (http10 && !connection.contains("keep-alive"));
        // Discard the request body.
        while buf.len() < head_end + body_len {
            match conn.read(&mut chunk)? {
                0 => return Ok(()),
                n => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + body_len);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        conn.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}
