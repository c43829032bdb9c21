//! The L4 flow id reaches L7: `lb run` with the XDP tier on a veth in a namespace, a local VIP
//! served by its own L7 listener; the access log line of each request carries the flow id the
//! datapath tagged the connection with (one per connection, none for a connection that did
//! not come through the XDP tier).
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use lb_tests::{
    NETNS_PREFIX, lb_bin,
    netns::{Netns, VethEnd, require_root, sweep_stale, veth_pair},
};

struct Rig {
    client: Netns,
    lb_ns: Netns,
    dir: std::path::PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills `lb run` (before the namespaces go).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A backend inside the namespace: answers every request on a connection with "ok".
fn backend(listener: TcpListener) {
    std::thread::spawn(move || {
        for tcp in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(tcp.try_clone().expect("clone"));
                let mut tcp = tcp;
                loop {
                    let mut line = String::new();
                    // Request line and headers, up to the blank line (GETs without bodies).
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    if tcp
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
}

/// `n` keep-alive requests on one connection from the client namespace.
fn requests(client: &Netns, vip: SocketAddr, n: usize) {
    client
        .run(move || {
            let mut tcp =
                TcpStream::connect_timeout(&vip, Duration::from_secs(5)).expect("connect");
            tcp.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            for i in 0..n {
                let close = if i + 1 == n {
                    "Connection: close\r\n"
                } else {
                    ""
                };
                write!(tcp, "GET /r{i} HTTP/1.1\r\nHost: vip.test\r\n{close}\r\n").expect("write");
                let mut got = Vec::new();
                let mut buf = [0u8; 512];
                while !got.ends_with(b"ok\n") {
                    let k = tcp.read(&mut buf).expect("read");
                    assert!(k > 0, "connection closed early");
                    got.extend_from_slice(&buf[..k]);
                }
                assert!(
                    got.starts_with(b"HTTP/1.1 200"),
                    "{}",
                    String::from_utf8_lossy(&got)
                );
            }
        })
        .expect("client");
}

#[test]
fn access_log_carries_the_xdp_flow_id() {
    if !require_root("access_log_carries_the_xdp_flow_id") {
        return;
    }
    sweep_stale(NETNS_PREFIX);
    let subnet = 97;
    let client = Netns::new(NETNS_PREFIX, "cli").expect("netns");
    let lb_ns = Netns::new(NETNS_PREFIX, "lb").expect("netns");
    veth_pair(
        VethEnd {
            ns: &client,
            name: "c0",
            addrs: &[&format!("10.{subnet}.0.1/24")],
        },
        VethEnd {
            ns: &lb_ns,
            name: "l0",
            addrs: &[&format!("10.{subnet}.0.2/24")],
        },
    )
    .expect("veth");
    let dir = std::env::temp_dir().join(format!("lbt-{}-flowid", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let rig = Rig { client, lb_ns, dir };

    // The socket is made in the namespace and stays there; it is served from here.
    let listener = rig
        .lb_ns
        .run(|| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .expect("backend socket");
    let backend_addr = listener.local_addr().expect("addr");
    backend(listener);
    std::fs::write(
        rig.dir.join("lb.toml"),
        format!("[[pool]]\nname = \"default\"\n[[pool.backend]]\naddress = \"{backend_addr}\"\n"),
    )
    .expect("write");
    let vip: SocketAddr = format!("10.{subnet}.0.2:8080").parse().expect("vip");
    let log = rig.dir.join("access.log");
    let mut child = rig
        .lb_ns
        .command(lb_bin())
        .args(["run", "--backends"])
        .arg(rig.dir.join("lb.toml"))
        .args(["--iface", "l0", "--xdp-mode", "skb"])
        .args(["--vip", &vip.to_string(), "--listen", &vip.to_string()])
        .args(["--admin", "127.0.0.1:0", "--access-log"])
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lb run");
    let stdout = child.stdout.take().expect("stdout");
    let mut running = Running(child);
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("admin ") => break,
            Some(Ok(_)) => {}
            _ => {
                let mut err = String::new();
                if let Some(mut e) = running.0.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("lb run exited: {err}");
            }
        }
    }

    requests(&rig.client, vip, 3);
    requests(&rig.client, vip, 2);
    // From inside the lb namespace to the listener: not through l0, so no tag.
    requests(&rig.lb_ns, vip, 1);

    let start = Instant::now();
    let parsed = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        if parsed.len() >= 6 {
            break parsed;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "log: {text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let ids: Vec<Option<&str>> = parsed.iter().map(|l| l["flow_id"].as_str()).collect();
    println!("flow ids: {ids:?}");
    let first = ids[0].expect("first connection tagged");
    assert_eq!(first.len(), 16, "64-bit hex");
    assert_eq!(ids[1], Some(first), "same connection, same flow");
    assert_eq!(ids[2], Some(first));
    let second = ids[3].expect("second connection tagged");
    assert_ne!(second, first, "a new connection is a new flow");
    assert_eq!(ids[4], Some(second));
    assert_eq!(ids[5], None, "local connection, no XDP tag");
    assert_eq!(parsed[0]["backend"], backend_addr.to_string());
    drop(running);
}
