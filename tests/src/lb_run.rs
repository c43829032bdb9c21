//! `lb run` as a child process for tests: a backend file in a private directory, the process
//! killed and the directory removed on drop; plain HTTP/1.1 requests and the status JSON.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::lb_bin;

pub struct LbRun {
    child: Child,
    pub dir: PathBuf,
    /// The backend file `lb run` follows.
    pub file: PathBuf,
    pub admin: SocketAddr,
    /// `listening name=... address=...` lines: (name, address).
    pub listeners: Vec<(String, SocketAddr)>,
}

impl Drop for LbRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An address on 127.0.0.1 free at the time of the call.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

impl LbRun {
    /// Writes `file_text` as the backend file and starts `lb run --backends FILE --admin ADDR`
    /// plus `extra` arguments; returns once the admin surface is up.
    pub fn start(tag: &str, file_text: &str, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "lb-{tag}-{}-{}",
            std::process::id(),
            free_addr().port()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("lb.toml");
        std::fs::write(&file, file_text).expect("write the backend file");
        let admin = free_addr();
        let mut child = Command::new(lb_bin())
            .arg("run")
            .arg("--backends")
            .arg(&file)
            .args(["--admin", &admin.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn lb run");
        let stdout = child.stdout.take().expect("stdout");
        let mut lb = Self {
            child,
            dir,
            file,
            admin,
            listeners: Vec::new(),
        };
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = lines.next().expect("lb run exited").expect("read");
            if line.starts_with("admin ") {
                break;
            }
            if let Some(rest) = line.strip_prefix("listening name=")
                && let Some((name, addr)) = rest.split_once(" address=")
            {
                lb.listeners
                    .push((name.to_owned(), addr.parse().expect("listener address")));
            }
        }
        // Keep draining stdout so lb never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        lb
    }

    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener {name} in {:?}", self.listeners))
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = http("GET", self.admin, "/api/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`): (status, body).
/// Status 0: no answer.
pub fn http(method: &str, addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned(),
    )
}

/// Polls `done` every 20 ms; panics naming `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what} not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
