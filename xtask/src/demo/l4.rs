//! `cargo xtask demo --l4`: lb's L4 tier alone (`lb l4`, direct server return) on real traffic.
//!
//! ```text
//!  client ns            lb ns: `lb l4` (XDP on l0)                backend ns x3: `lb decap` on e0
//!  c0 10.200.0.1 ---- l0 10.200.0.2                                VIP 10.200.100.100 on lo,
//!                       b1 10.201.1.1 ----------------- e0 10.201.1.2  HTTP on VIP:80
//!                       b2 10.201.2.1 ----------------- e0 10.201.2.2
//!                       b3 10.201.3.1 ----------------- e0 10.201.3.2
//! ```
//! 1. The client opens connections to the VIP; XDP picks a backend by weighted Maglev and
//!    sends the packets IPIP-encapsulated; the backend answers the client directly (DSR).
//! 2. A few requests go straight to backend addresses (ordinary routed traffic): the datapath
//!    passes them to the stack, counts them per port and logs each new TCP connection.
//! 3. The backend file loses backend 3; `lb` notices the change and swaps the Maglev table.
//! 4. `lb` is stopped and prints its counters. Namespaces are removed at the end, on
//!    failure, and on Ctrl-C.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{PREFIX, track};
use crate::{
    netns::{Netns, VethEnd, veth_pair},
    run,
};

const BACKENDS: u8 = 3;
const WEIGHTS: [u32; 3] = [1, 2, 1];
const VIP: &str = "10.200.100.100";
const REQUESTS: usize = 120;

pub fn demo(ws: &Path, lb: &Path) -> Result<()> {
    let topo = Topology::build()?;
    println!("demo: topology up: client -> lb (XDP on l0) -> {BACKENDS} backends, VIP {VIP}:80");
    let mut children = Vec::new();
    for (i, backend) in topo.backends.iter().enumerate() {
        let id = i as u8 + 1;
        let listener = backend
            .run(|| TcpListener::bind((VIP, 80)))?
            .context("binding the VIP on a backend")?;
        thread::spawn(move || serve_http(listener, id));
        let own = backend
            .run(move || TcpListener::bind((format!("10.201.{id}.2"), 8080)))?
            .context("binding a backend's own address")?;
        thread::spawn(move || serve_http(own, id));
        let (child, _) = spawn_lb(
            backend,
            lb,
            &["decap", "--iface", "e0"],
            &format!("backend{id} decap"),
        )?;
        children.push(child);
    }

    let config_dir = ws.join("target/demo");
    std::fs::create_dir_all(&config_dir).context("creating target/demo")?;
    let config = config_dir.join("lb.toml");
    write_config(&config, &[1, 2, 3])?;
    println!(
        "demo: backend file {}:\n{}",
        config.display(),
        std::fs::read_to_string(&config)?
    );
    let config_arg = config.to_string_lossy().into_owned();
    let (mut lb_child, lb_lines) = spawn_lb(
        &topo.lb,
        lb,
        &[
            "l4",
            "--iface",
            "l0",
            "--xdp-mode",
            "auto",
            "--config",
            &config_arg,
        ],
        "lb",
    )?;

    println!("demo: {REQUESTS} HTTP requests to http://{VIP}/ (a new connection each)");
    let tally = topo.client.run(|| requests_to_vip(REQUESTS))??;
    print_tally(&tally);

    println!("demo: 3 requests straight to backend addresses (ordinary routed traffic)");
    let direct = topo.client.run(|| {
        (1..=3u8)
            .map(|id| http_get(&format!("10.201.{id}.2:8080")))
            .collect::<Result<Vec<_>>>()
    })??;
    println!("client | answered by {}", direct.join(", "));

    println!("demo: removing backend 3 from the backend file");
    write_config(&config, &[1, 2])?;
    lb_lines
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow!("lb did not reload within 10 s"))?;
    let tally = topo.client.run(|| requests_to_vip(REQUESTS))??;
    print_tally(&tally);

    // Stop lb first: it prints its counters and detaches.
    thread::sleep(Duration::from_millis(300));
    stop(&mut lb_child, "lb")?;
    for mut child in children {
        stop(&mut child, "decap")?;
    }
    println!("demo: done; removing namespaces");
    Ok(())
}

fn write_config(path: &Path, backends: &[u8]) -> Result<()> {
    let mut text = String::from(
        "# Written by `cargo xtask demo`. One VIP, encapsulated (IPIP) to its backends.\n\
         [[vip]]\n",
    );
    text.push_str(&format!(
        "address = \"{VIP}:80\"\nprotocol = \"tcp\"\nforward = \"encap\"\n"
    ));
    for &id in backends {
        text.push_str(&format!(
            "\n  [[vip.real]]\n  address = \"10.201.{id}.2\"\n  weight = {}\n",
            WEIGHTS[id as usize - 1]
        ));
    }
    // Write-then-rename so lb never reads a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Starts `lb args...` in `ns`, echoing its stdout prefixed with `label`; waits for its
/// "attached" line. The receiver gets every later "reloaded" line.
fn spawn_lb(
    ns: &Netns,
    lb: &Path,
    args: &[&str],
    label: &str,
) -> Result<(Child, mpsc::Receiver<String>)> {
    let mut child = ns
        .command(lb)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", lb.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (attached_tx, attached) = mpsc::channel();
    let (reload_tx, reloads) = mpsc::channel();
    let prefix = label.to_owned();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("attached ") {
                let _ = attached_tx.send(());
            }
            if line.starts_with("reloaded ") {
                let _ = reload_tx.send(line.clone());
            }
            println!("{prefix} | {line}");
        }
    });
    attached
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| anyhow!("{label} did not attach within 30 s"))?;
    Ok((child, reloads))
}

fn stop(child: &mut Child, label: &str) -> Result<()> {
    // SAFETY: plain syscall on our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child
        .wait()
        .with_context(|| format!("waiting for {label}"))?;
    if !status.success() {
        bail!("{label} exited with {status}");
    }
    Ok(())
}

fn print_tally(tally: &BTreeMap<String, usize>) {
    let total: usize = tally.values().sum();
    for (backend, n) in tally {
        println!(
            "client | {backend}: {n:>4} requests ({:.0}%)",
            100.0 * *n as f64 / total as f64
        );
    }
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
        run(lb.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]))?;
        let mut backends = Vec::new();
        for id in 1..=BACKENDS {
            let be = track(Netns::new(PREFIX, &format!("be{id}"))?);
            veth_pair(
                VethEnd {
                    ns: &lb,
                    name: &format!("b{id}"),
                    addrs: &[&format!("10.201.{id}.1/24")],
                },
                VethEnd {
                    ns: &be,
                    name: "e0",
                    addrs: &[&format!("10.201.{id}.2/24")],
                },
            )?;
            be.ip(&["route", "add", "default", "via", &format!("10.201.{id}.1")])?;
            be.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
            for knob in [
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.e0.rp_filter=0",
            ] {
                run(be.command("sysctl").args(["-qw", knob]))?;
            }
            backends.push(be);
        }
        Ok(Self {
            client,
            lb,
            backends,
        })
    }
}

/// A tiny HTTP/1.1 server: one response per connection, naming the backend.
fn serve_http(listener: TcpListener, id: u8) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        thread::spawn(move || {
            // Read the whole request head before answering: closing with unread data resets.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let body = format!("backend{id}");
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes());
        });
    }
}

fn http_get(addr: &str) -> Result<String> {
    let mut conn = TcpStream::connect(addr).with_context(|| format!("connecting {addr}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes())?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    response
        .split("\r\n\r\n")
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no body from {addr}"))
}

/// Runs in the client namespace: `n` requests to the VIP, tallied by answering backend.
fn requests_to_vip(n: usize) -> Result<BTreeMap<String, usize>> {
    let mut tally = BTreeMap::new();
    for _ in 0..n {
        *tally.entry(http_get(&format!("{VIP}:80"))?).or_insert(0) += 1;
    }
    Ok(tally)
}
