//! Backend discovery from DNS (`[pool.discovery]`, issue 17) against a real DNS server:
//! Debian's dnsmasq answering from a hosts file of the test's own (TTL 1 s) and an SRV record.
//! `lb run` starts with the first answer already in its pool, follows a new address when
//! dnsmasq re-reads the file (SIGHUP), takes SRV ports and weights, and keeps the last good
//! set when the DNS server goes away.
use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, UdpSocket},
    path::Path,
    process::{Child, ChildStderr, Command, Stdio},
    sync::atomic::Ordering,
    sync::mpsc,
    time::Duration,
};

use lb_tests::{
    http_server::{self, Behaviour},
    lb_run::{LbRun, http, wait_for},
    temp_dir::TempDir,
};

/// dnsmasq in the foreground on 127.0.0.1:`port`, killed on drop; its log lines on a channel.
struct Dnsmasq {
    child: Child,
    port: u16,
    log: mpsc::Receiver<String>,
}

impl Dnsmasq {
    fn start(hosts: &Path, srv: &str) -> Self {
        let found = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .iter()
            .any(|p| Path::new(p).is_file());
        assert!(
            found,
            "dnsmasq is needed (Debian's dnsmasq-base; cargo xtask setup installs it)"
        );
        // dnsmasq serves UDP and TCP on its port: a few tries at ports free for both (another
        // test may take one between the check and dnsmasq's bind).
        for _ in 0..5 {
            if let Some(dns) = Self::try_start(hosts, srv, free_port()) {
                return dns;
            }
        }
        panic!("dnsmasq did not start on any of 5 ports");
    }

    fn try_start(hosts: &Path, srv: &str, port: u16) -> Option<Self> {
        let mut child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--log-facility=-",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--local-ttl=1",
                "--user=root",
                "--pid-file=",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--srv-host={srv}"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dnsmasq");
        let log = lines(child.stderr.take().expect("stderr"));
        let dns = Self { child, port, log };
        match dns.next_log("started") {
            Ok(_) => Some(dns),
            Err(said) => {
                eprintln!("dnsmasq on port {port} did not start: {said:?}");
                None
            }
        }
    }

    /// The next log line containing `what`; Err: what dnsmasq said before it stopped.
    fn next_log(&self, what: &str) -> Result<String, Vec<String>> {
        let mut said = Vec::new();
        loop {
            match self.log.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains(what) => return Ok(line),
                Ok(line) => said.push(line),
                Err(_) => return Err(said),
            }
        }
    }

    fn wait_log(&self, what: &str) -> String {
        self.next_log(what)
            .unwrap_or_else(|said| panic!("dnsmasq never logged {what:?}: {said:?}"))
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free for both TCP and UDP now.
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn lines(stderr: ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn pool(s: &serde_json::Value, name: &str) -> serde_json::Value {
    s["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("pool {name} in {s}"))
}

/// (address, weight) of a pool's backends, sorted.
fn backends(s: &serde_json::Value, name: &str) -> Vec<(String, u64)> {
    let mut list: Vec<(String, u64)> = pool(s, name)["backends"]
        .as_array()
        .map(|b| {
            b.iter()
                .map(|b| {
                    (
                        b["address"].as_str().unwrap_or_default().to_owned(),
                        b["configured_weight"].as_u64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    list.sort();
    list
}

#[test]
fn dns_discovery_fills_pools_follows_changes_and_keeps_the_last_good_set() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // Two backends on one port, at two loopback addresses the name will list; a third on
    // another port for the SRV record.
    let first = runtime.block_on(http_server::start_on(
        "127.0.0.2:0".parse().expect("addr"),
        Behaviour::default(),
    ));
    let port = first.addr.port();
    let second = runtime.block_on(http_server::start_on(
        SocketAddr::from(([127, 0, 0, 3], port)),
        Behaviour::default(),
    ));
    let srv_backend = runtime.block_on(http_server::start_on(
        "127.0.0.2:0".parse().expect("addr"),
        Behaviour::default(),
    ));
    let srv_port = srv_backend.addr.port();

    let dir = TempDir::new("discovery");
    let hosts = dir.write("hosts", "127.0.0.2 web.test\n");
    let dns = Dnsmasq::start(
        &hosts,
        &format!("_http._tcp.web.test,web.test,{srv_port},0,5"),
    );
    let resolver = format!("127.0.0.1:{}", dns.port);
    let file = format!(
        "[[pool]]\nname = \"web\"\nretries = 0\n\
         [pool.discovery]\ndns = \"web.test:{port}\"\nresolver = \"{resolver}\"\nrefresh = \"1s\"\n\
         [[pool]]\nname = \"srv\"\n\
         [pool.discovery]\ndns_srv = \"_http._tcp.web.test\"\nresolver = \"{resolver}\"\nrefresh = \"1s\"\n\
         [[listener]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = \"web\"\npool = \"web\"\n\
         [[listener]]\nname = \"srv\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = \"srv\"\npool = \"srv\"\n"
    );
    let lb = LbRun::start("discovery", &file, &[]);

    // Start-up waited for the first answers: the pools serve at once.
    let s = lb.status();
    assert_eq!(
        backends(&s, "web"),
        [(format!("127.0.0.2:{port}"), 1)],
        "{s}"
    );
    assert_eq!(
        backends(&s, "srv"),
        [(format!("127.0.0.2:{srv_port}"), 5)],
        "SRV port and weight: {s}"
    );
    assert_eq!(
        pool(&s, "web")["discovery"]["source"],
        format!("dns web.test:{port}")
    );
    assert_eq!(http("GET", lb.listener("web"), "/").0, 200);
    assert_eq!(http("GET", lb.listener("srv"), "/").0, 200);
    assert_eq!(srv_backend.seen.requests.load(Ordering::Relaxed), 1);

    // A second address for the name: lb follows within the TTL and sends it traffic.
    dir.write("hosts", "127.0.0.2 web.test\n127.0.0.3 web.test\n");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dns.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    );
    dns.wait_log("read ");
    wait_for("second backend discovered", Duration::from_secs(15), || {
        backends(&lb.status(), "web").len() == 2
    });
    let before = second.seen.requests.load(Ordering::Relaxed);
    for _ in 0..20 {
        assert_eq!(http("GET", lb.listener("web"), "/").0, 200);
    }
    assert!(
        second.seen.requests.load(Ordering::Relaxed) > before,
        "the discovered backend gets requests"
    );
    let web = pool(&lb.status(), "web");
    assert!(web["discovery"]["updates"].as_u64() >= Some(2), "{web}");

    // The DNS server goes away: the lookups fail, the last good set stays and serves.
    drop(dns);
    wait_for(
        "discovery failure reported",
        Duration::from_secs(40),
        || pool(&lb.status(), "web")["discovery"]["last_error"].is_string(),
    );
    let s = lb.status();
    assert_eq!(backends(&s, "web").len(), 2, "last good set kept: {s}");
    let pools = Command::new(lb_tests::lb_bin())
        .args(["ctl", "--admin", &lb.admin.to_string(), "pools"])
        .output()
        .expect("lb ctl pools");
    let pools = String::from_utf8_lossy(&pools.stdout);
    assert!(
        pools.contains(&format!(
            "dns web.test:{port} (failing, last good set kept:"
        )),
        "{pools}"
    );
    for _ in 0..10 {
        assert_eq!(http("GET", lb.listener("web"), "/").0, 200);
    }
    drop((first, second, srv_backend));
}

/// etcd (Debian's etcd-server) on loopback ports with a data directory of its own; killed
/// and removed on drop.
struct Etcd {
    child: Child,
    client: SocketAddr,
    /// Its data directory (removed after etcd is killed: fields drop after `drop`).
    _dir: TempDir,
}

impl Etcd {
    fn start() -> Self {
        assert!(
            Path::new("/usr/bin/etcd").is_file(),
            "etcd is needed (Debian's etcd-server; cargo xtask setup installs it)"
        );
        let dir = TempDir::new("etcd");
        let (client_port, peer_port) = (free_port(), free_port());
        let client: SocketAddr = ([127, 0, 0, 1], client_port).into();
        let mut child = Command::new("etcd")
            .arg("--data-dir")
            .arg(&dir.0)
            .arg(format!("--listen-client-urls=http://{client}"))
            .arg(format!("--advertise-client-urls=http://{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=default=http://127.0.0.1:{peer_port}"
            ))
            .stderr(Stdio::piped())
            .spawn()
            .expect("start etcd");
        let log = lines(child.stderr.take().expect("stderr"));
        let etcd = Self {
            child,
            client,
            _dir: dir,
        };
        // Ready: etcd says it serves client requests.
        loop {
            let line = log
                .recv_timeout(Duration::from_secs(30))
                .expect("etcd never said it was ready");
            if line.contains("ready to serve client requests") {
                break;
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || while log.recv().is_ok() {});
        etcd
    }

    /// POST to etcd's v3 HTTP API.
    fn call(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        use std::io::{Read, Write};
        let body = body.to_string();
        let mut tcp = std::net::TcpStream::connect(self.client).expect("connect etcd");
        write!(
            tcp,
            "POST {path} HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let json = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(json).unwrap_or_else(|_| panic!("etcd answer: {answer}"))
    }

    fn put(&self, key: &str, value: &str) {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        self.call(
            "/v3/kv/put",
            serde_json::json!({"key": b64(key), "value": b64(value)}),
        );
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn etcd_discovery_watches_a_prefix_and_keeps_the_last_good_set() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let a = runtime.block_on(http_server::start(Behaviour::default()));
    let b = runtime.block_on(http_server::start(Behaviour::default()));
    let etcd = Etcd::start();
    etcd.put("/lb/web/a", &a.addr.to_string());
    // A key outside the prefix is not the pool's.
    etcd.put("/lb/webshop/x", "10.9.9.9:80");
    let file = format!(
        "[[pool]]\nname = \"web\"\nretries = 0\n\
         [pool.discovery]\netcd_prefix = \"/lb/web/\"\netcd_endpoints = [\"http://{}\"]\n\
         [[listener]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = \"web\"\npool = \"web\"\n",
        etcd.client
    );
    let lb = LbRun::start("discovery-etcd", &file, &[]);
    let s = lb.status();
    assert_eq!(backends(&s, "web"), [(a.addr.to_string(), 1)], "{s}");
    assert_eq!(pool(&s, "web")["discovery"]["source"], "etcd /lb/web/");
    assert_eq!(http("GET", lb.listener("web"), "/").0, 200);

    // A new key is watched in: b joins with the weight its value gives.
    etcd.put(
        "/lb/web/b",
        &format!("{{\"address\": \"{}\", \"weight\": 3}}", b.addr),
    );
    wait_for("b discovered from etcd", Duration::from_secs(15), || {
        backends(&lb.status(), "web").len() == 2
    });
    assert!(backends(&lb.status(), "web").contains(&(b.addr.to_string(), 3)));
    let before = b.seen.requests.load(Ordering::Relaxed);
    for _ in 0..20 {
        assert_eq!(http("GET", lb.listener("web"), "/").0, 200);
    }
    assert!(b.seen.requests.load(Ordering::Relaxed) > before);

    // A bad value: the read fails naming the key, the last good set stays.
    etcd.put("/lb/web/c", "not-an-address");
    wait_for("bad value reported", Duration::from_secs(15), || {
        pool(&lb.status(), "web")["discovery"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("key \"/lb/web/c\""))
    });
    assert_eq!(backends(&lb.status(), "web").len(), 2);

    // etcd goes away: still the last good set, still serving.
    drop(etcd);
    for _ in 0..5 {
        assert_eq!(http("GET", lb.listener("web"), "/").0, 200);
    }
    assert_eq!(backends(&lb.status(), "web").len(), 2);
    drop((a, b));
}
