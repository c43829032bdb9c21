//! `lb run` as a child process for tests: a backend file in a private directory, the process
//! killed and the directory removed on drop; plain HTTP/1.1 requests and the status JSON.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
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

/// A port on 127.0.0.1 where connections are refused for as long as this value lives: a TCP
/// socket bound to it that never listens. (Binding a port and closing it again races with
/// anything else on the machine that binds port 0 meanwhile.) `listen` turns it into a
/// listener on that same port, for a backend that "comes back".
pub struct RefusedPort {
    socket: socket2::Socket,
    pub addr: SocketAddr,
}

impl RefusedPort {
    pub fn new() -> Self {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("literal");
        socket.bind(&any.into()).expect("bind");
        let addr = socket
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet");
        Self { socket, addr }
    }

    /// Starts listening on the reserved port.
    pub fn listen(self) -> TcpListener {
        self.socket.listen(1024).expect("listen");
        self.socket.into()
    }
}

impl Default for RefusedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// A private directory name for one `lb run` of this test process.
fn unique_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "lb-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

impl LbRun {
    /// Writes `file_text` as the backend file and starts `lb run --backends FILE --admin
    /// 127.0.0.1:0` plus `extra` arguments; returns once the admin surface is up, with the
    /// addresses lb reports it bound (listeners on port 0 and the admin server get theirs from
    /// the kernel, so tests never pick ports themselves).
    pub fn start(tag: &str, file_text: &str, extra: &[&str]) -> Self {
        let dir = unique_dir(tag);
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("lb.toml");
        std::fs::write(&file, file_text).expect("write the backend file");
        let mut child = Command::new(lb_bin())
            .arg("run")
            .arg("--backends")
            .arg(&file)
            .args(["--admin", "127.0.0.1:0"])
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
            admin: "0.0.0.0:0".parse().expect("literal"),
            listeners: Vec::new(),
        };
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = lines.next().expect("lb run exited").expect("read");
            if let Some(url) = line.strip_prefix("admin ") {
                lb.admin = admin_address(url);
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

    /// A listener's bound address as the status API reports it now (follows reloads).
    pub fn listener_now(&self, name: &str) -> Option<SocketAddr> {
        self.status()["listeners"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)?["address"]
            .as_str()?
            .parse()
            .ok()
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = http("GET", self.admin, "/api/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Sends signal `name` (`TERM`, `STOP`, ...) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -s {name}");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit on its own (after an upgrade handed over, say).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for lb run")
    }
}

/// The address in lb's `admin http://ADDR/` line.
pub fn admin_address(url: &str) -> SocketAddr {
    url.trim()
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("admin line {url:?}"))
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

/// The value of `lb`'s metrics line that starts with `line` (0 when absent).
pub fn metric(lb: &LbRun, line: &str) -> f64 {
    http("GET", lb.admin, "/metrics")
        .1
        .lines()
        .find(|l| l.starts_with(line))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `done` every 20 ms; panics naming `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what} not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
