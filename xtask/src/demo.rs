//! `cargo xtask demo`: lb's XDP tier on real traffic in a throw-away topology.
//!
//! ```text
//!  client ns            lb ns (XDP on l0, forwarding)          backend ns x3
//!  c0 10.200.0.1 ---- l0 10.200.0.2
//!                       b1 10.201.1.1 ----------------- e0 10.201.1.2  HTTP :8080
//!                       b2 10.201.2.1 ----------------- e0 10.201.2.2  HTTP :8080
//!                       b3 10.201.3.1 ----------------- e0 10.201.3.2  HTTP :8080
//! ```
//! The client sends HTTP requests and UDP datagrams to the backends through the lb namespace;
//! `lb xdp attach` on l0 logs each new TCP connection (aya-log) and prints per-port counters
//! when it is stopped. Namespaces are removed at the end, on failure, and on Ctrl-C.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::{Command, Stdio},
    sync::{Mutex, mpsc},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};

#[path = "../../tests/src/netns.rs"]
#[allow(dead_code)]
mod netns;

use netns::{Netns, VethEnd, delete_netns, sweep_stale, veth_pair};

use crate::{is_root, run, setup};

const PREFIX: &str = "lbdemo";
const BACKENDS: u8 = 3;
const ROUNDS: usize = 4;
const UDP_DATAGRAMS: usize = 20;

/// Namespaces to delete if the user presses Ctrl-C (Drop does it on every other path).
static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub fn demo(ws: &Path) -> Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces and attaches XDP: run it as root");
    }
    setup::setup(ws)?;
    run(Command::new("cargo").current_dir(ws).args([
        "build",
        "--package",
        "lb-userspace",
        "--bin",
        "lb",
    ]))?;
    let lb = ws.join("target/debug/lb");

    ctrlc::set_handler(|| {
        eprintln!("\ndemo: interrupted, removing namespaces");
        if let Ok(names) = CREATED.lock() {
            names.iter().for_each(|n| delete_netns(n));
        }
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;
    sweep_stale(PREFIX);

    let topo = Topology::build()?;
    println!("demo: topology up: client -> lb (XDP on l0) -> {BACKENDS} backends");
    for (i, backend) in topo.backends.iter().enumerate() {
        let id = i as u8 + 1;
        let listener = backend
            .run(move || TcpListener::bind((format!("10.201.{id}.2"), 8080)))?
            .context("binding a backend")?;
        thread::spawn(move || serve_http(listener, id));
    }

    let mut child = topo
        .lb
        .command(&lb)
        .args(["xdp", "attach", "--iface", "l0", "--xdp-mode", "auto"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", lb.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, attached) = mpsc::channel();
    let printer = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("attached ") {
                let _ = tx.send(());
            }
            println!("lb | {line}");
        }
    });
    attached
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| anyhow!("lb did not attach within 30 s"))?;

    let report = topo.client.run(client_traffic)??;
    println!("{report}");
    // Give aya-log a moment to print the last connection lines, then stop lb: it prints its
    // counters and detaches.
    thread::sleep(Duration::from_millis(300));
    // SAFETY: plain syscall on our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().context("waiting for lb")?;
    let _ = printer.join();
    if !status.success() {
        bail!("lb exited with {status}");
    }
    println!("demo: done; removing namespaces");
    Ok(())
}

struct Topology {
    client: Netns,
    lb: Netns,
    backends: Vec<Netns>,
}

impl Topology {
    fn build() -> Result<Self> {
        let client = track(Netns::new(PREFIX, "client")?);
        let lb = track(Netns::new(PREFIX, "lb")?);
        veth_pair(
            VethEnd {
                ns: &client,
                name: "c0",
                addrs: &["10.200.0.1/24"],
            },
            VethEnd {
                ns: &lb,
                name: "l0",
                addrs: &["10.200.0.2/24"],
            },
        )?;
        client.ip(&["route", "add", "default", "via", "10.200.0.2"])?;
        // veth hands CHECKSUM_PARTIAL skbs to native XDP, which loses the "finish the checksum
        // later" mark; forwarded TCP would then leave the lb namespace with a bad checksum.
        // Real NICs compute checksums before XDP sees anything (see ../shared/ebpf-toolchain.md).
        run(client
            .command("ethtool")
            .args(["-K", "c0", "tx", "off"])
            .stdout(Stdio::null()))?;
        lb.command("sysctl")
            .args(["-qw", "net.ipv4.ip_forward=1"])
            .status()
            .context("enabling forwarding")?;
        let mut backends = Vec::new();
        for id in 1..=BACKENDS {
            let be = track(Netns::new(PREFIX, &format!("be{id}"))?);
            let lb_side = format!("10.201.{id}.1/24");
            let be_side = format!("10.201.{id}.2/24");
            veth_pair(
                VethEnd {
                    ns: &lb,
                    name: &format!("b{id}"),
                    addrs: &[&lb_side],
                },
                VethEnd {
                    ns: &be,
                    name: "e0",
                    addrs: &[&be_side],
                },
            )?;
            be.ip(&["route", "add", "default", "via", &format!("10.201.{id}.1")])?;
            backends.push(be);
        }
        Ok(Self {
            client,
            lb,
            backends,
        })
    }
}

fn track(ns: Netns) -> Netns {
    if let Ok(mut names) = CREATED.lock() {
        names.push(ns.name().to_owned());
    }
    ns
}

/// A tiny HTTP/1.1 server: one response per connection.
fn serve_http(listener: TcpListener, id: u8) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        // Read the whole request head before answering: closing with unread data would reset.
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let body = format!("hello from backend {id}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(response.as_bytes());
    }
}

/// Runs in the client namespace: HTTP GETs to every backend, then UDP datagrams.
fn client_traffic() -> Result<String> {
    let mut report = String::new();
    for round in 0..ROUNDS {
        for id in 1..=BACKENDS {
            let addr = format!("10.201.{id}.2:8080");
            let mut conn =
                TcpStream::connect(&addr).with_context(|| format!("connecting {addr}"))?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            conn.write_all(request.as_bytes())?;
            let mut response = String::new();
            conn.read_to_string(&mut response)?;
            if round == 0 {
                let status = response.lines().next().unwrap_or_default();
                let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
                report.push_str(&format!(
                    "client | GET http://{addr}/ -> {status} \"{body}\"\n"
                ));
            }
        }
    }
    report.push_str(&format!(
        "client | {} HTTP requests sent ({ROUNDS} per backend)\n",
        ROUNDS * BACKENDS as usize
    ));
    let sock = UdpSocket::bind("10.200.0.1:0")?;
    for _ in 0..UDP_DATAGRAMS {
        sock.send_to(b"demo datagram", "10.201.1.2:5353")?;
    }
    report.push_str(&format!(
        "client | {UDP_DATAGRAMS} UDP datagrams sent to 10.201.1.2:5353"
    ));
    Ok(report)
}
