//! DNS rebinding against the forward proxy's SSRF guard (issue 14), in a network namespace
//! with a DNS server of the test's own: `rebind.test` answers a public address, then a private
//! one, alternately, with TTL 0 (the classic rebinding name). An egress rule allows the name;
//! the guard checks every address lb resolved and lb dials only what it checked, so requests
//! that resolved public reach the public origin and those that resolved private are refused
//! (403): the private origin never sees a connection, for CONNECT and absolute-form alike.
//!
//! lb and curl run under `ip netns exec`, which puts `/etc/netns/NS/resolv.conf` (ours: the
//! test's DNS server) in place of `/etc/resolv.conf` for them.
use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    path::PathBuf,
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use lb_tests::{
    lb_bin,
    netns::{Netns, require_root},
};

const PUBLIC: Ipv4Addr = Ipv4Addr::new(20, 0, 0, 10);
const PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const PORT: u16 = 8080;
const NAME: &str = "rebind.test";

/// `/etc/netns/NS/`, removed on drop.
struct EtcNetns(PathBuf);

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// lb (under `ip netns exec`), killed on drop.
struct Lb(Child);

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The DNS answer to `query`: for `NAME`'s A record the next address of the alternation
/// (TTL 0), no record for its other types, NXDOMAIN for other names.
fn answer(query: &[u8], a_queries: &AtomicU64) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    // The question: labels up to the root, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question = query.get(12..at + 4)?;
    let ours = labels.join(".") == NAME;
    let record = (ours && qtype == 1).then(|| {
        if a_queries.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
            PUBLIC
        } else {
            PRIVATE
        }
    });
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&header[..2]);
    // QR, RD, RA; NXDOMAIN for names not ours.
    out.extend_from_slice(&[0x81, if ours { 0x80 } else { 0x83 }]);
    out.extend_from_slice(&[0, 1, 0, u8::from(record.is_some()), 0, 0, 0, 0]);
    out.extend_from_slice(question);
    if let Some(ip) = record {
        // The question's name (pointer to offset 12), A, IN, TTL 0, 4 bytes.
        out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

/// An origin on `addr` counting the connections it accepted; answers each with a tiny 200.
fn origin(addr: SocketAddr, accepted: Arc<AtomicU64>) {
    use std::io::{Read, Write};
    let listener = TcpListener::bind(addr).expect("bind origin");
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        accepted.fetch_add(1, Ordering::SeqCst);
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf);
        let body = format!("origin {addr}\n");
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

/// curl in `ns` through the proxy (`tunnel`: with CONNECT): the proxy's answer to the CONNECT
/// (tunnel), else the final status.
fn curl(ns: &Netns, proxy: SocketAddr, tunnel: bool) -> u16 {
    let out = ns
        .command("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "20"])
        .args([
            "-w",
            if tunnel {
                "%{http_connect}"
            } else {
                "%{http_code}"
            },
        ])
        .args(["-x", &format!("http://{proxy}")])
        .args(if tunnel {
            &["--proxytunnel"][..]
        } else {
            &[][..]
        })
        .arg(format!("http://{NAME}:{PORT}/"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn a_rebinding_name_never_reaches_the_private_address() {
    if !require_root("a_rebinding_name_never_reaches_the_private_address") {
        return;
    }
    let ns = Netns::new("lbt", "rebind").expect("netns");
    for ip in [PUBLIC, PRIVATE] {
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])
            .expect("address");
    }
    let etc = EtcNetns(PathBuf::from("/etc/netns").join(ns.name()));
    std::fs::create_dir_all(&etc.0).expect("/etc/netns/NS");
    std::fs::write(
        etc.0.join("resolv.conf"),
        "nameserver 127.0.0.1\noptions attempts:1 timeout:5\n",
    )
    .expect("resolv.conf");

    let a_queries = Arc::new(AtomicU64::new(0));
    let queries = a_queries.clone();
    ns.spawn(move || {
        let socket = UdpSocket::bind("127.0.0.1:53").expect("bind DNS");
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if let Some(reply) = answer(&buf[..n], &queries) {
                let _ = socket.send_to(&reply, from);
            }
        }
    })
    .expect("DNS server");
    let (public_hits, private_hits) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    for (ip, hits) in [
        (PUBLIC, public_hits.clone()),
        (PRIVATE, private_hits.clone()),
    ] {
        ns.spawn(move || origin(SocketAddr::from((ip, PORT)), hits))
            .expect("origin");
    }

    let config = std::env::temp_dir().join(format!("lb-rebind-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"fwd\"\naddress = \"127.0.0.1:0\"\nmode = \"forward_proxy\"\n\
             [[listener.egress_rule]]\nname = \"rebind-by-name\"\naction = \"allow\"\n\
             hosts = [\"{NAME}\"]\nports = [{PORT}]\n"
        ),
    )
    .expect("config");
    let mut child = ns
        .command(lb_bin())
        .args(["run", "--config"])
        .arg(&config)
        .args(["--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("lb run");
    let stdout = child.stdout.take().expect("stdout");
    let _lb = Lb(child);
    let mut proxy = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("lb output");
        if let Some(addr) = line.strip_prefix("listening name=fwd address=") {
            proxy = Some(addr.parse::<SocketAddr>().expect("address"));
        }
        if line.starts_with("admin ") {
            break;
        }
    }
    let _ = std::fs::remove_file(&config);
    let proxy = proxy.expect("the fwd listener");

    // Each request resolves once: public (allowed, served), then private (refused), ...
    let mut statuses = Vec::new();
    for tunnel in [false, false, true, true] {
        statuses.push(curl(&ns, proxy, tunnel));
    }
    assert_eq!(statuses, [200, 403, 200, 403]);
    assert_eq!(public_hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        private_hits.load(Ordering::SeqCst),
        0,
        "the private origin was reached"
    );
    assert!(
        a_queries.load(Ordering::SeqCst) >= 4,
        "lb resolved through our server"
    );
}
