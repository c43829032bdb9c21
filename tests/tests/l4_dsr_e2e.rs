//! The L4 tier end to end, with real TCP through network namespaces:
//!
//! ```text
//! client ns --- lb ns (lb_xdp on l0, forwarding) --- real ns 1..3 (lb_decap on e0,
//!  10.S.0.1      10.S.0.2 | 10.S.i.1                   10.S.i.2, VIP on lo, HTTP on VIP:80)
//! ```
//! The client talks to the VIP; XDP on l0 picks a real by Maglev and encapsulates (IPIP); the
//! real's `lb_decap` strips the outer header; the real answers the client directly from the
//! VIP (its reply is routed back by the kernel, never through XDP: direct server return).
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    thread,
    time::Duration,
};

use lb::{
    l4::{L4Config, L4Dataplane, Protocol, addr16, flow_key, read_l4_stats},
    maglev::{self, Backend},
    xdp::{self, AttachMode, AttachedXdp},
};
use lb_common::{
    hash::{FLOW_HASH_SEED, flow_hash},
    l4::L4Event,
    program_names,
};
use lb_tests::{dsr::DsrTopology, netns::require_root};

const WEIGHTS: [u32; 3] = [1, 2, 3];
const SPREAD_CONNECTIONS: u16 = 900;

struct Rig {
    topo: DsrTopology,
    _decaps: Vec<AttachedXdp>,
    lb: AttachedXdp,
    dataplane: L4Dataplane,
}

impl Rig {
    fn vip(&self) -> SocketAddr {
        SocketAddr::new(self.topo.vip_ip(), 80)
    }

    fn config(&self, reals: &[usize]) -> L4Config {
        let mut text = format!("[[vip]]\naddress = \"{}\"\nring_size = 65537\n", self.vip());
        for &i in reals {
            text.push_str(&format!(
                "[[vip.real]]\naddress = \"{}\"\nweight = {}\n",
                self.topo.real_ip(i),
                WEIGHTS[i]
            ));
        }
        L4Config::parse(&text, Path::new("e2e.toml")).expect("config")
    }
}

/// One HTTP/1.1 keep-alive server per real, answering every request with the real's name.
fn serve(listener: TcpListener, name: String) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let name = name.clone();
        thread::spawn(move || {
            let mut writer = conn.try_clone().expect("clone");
            let mut reader = BufReader::new(conn);
            loop {
                let mut line = String::new();
                // Request line, then headers up to the blank line.
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                loop {
                    let mut header = String::new();
                    match reader.read_line(&mut header) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if header == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                    name.len()
                );
                if writer.write_all(response.as_bytes()).is_err() {
                    return;
                }
            }
        });
    }
}

fn build_rig(mode: AttachMode, subnet: u8) -> Rig {
    let topo = DsrTopology::build(subnet);
    let vip_ip = topo.vip_ip();
    let mut decaps = Vec::new();
    for (i, real) in topo.reals.iter().enumerate() {
        decaps.push(
            real.run(move || xdp::attach_program(program_names::DECAP, "e0", mode).expect("decap"))
                .expect("decap in real netns"),
        );
        let listener = real
            .run(move || TcpListener::bind((vip_ip, 80)).expect("bind VIP"))
            .expect("listener");
        let name = format!("real{}", i + 1);
        thread::spawn(move || serve(listener, name));
    }
    let lb = topo
        .lb
        .run(move || xdp::attach("l0", mode).expect("attach lb_xdp"))
        .expect("attach in lb netns");
    let mut rig = Rig {
        topo,
        _decaps: decaps,
        lb,
        dataplane: L4Dataplane::new(),
    };
    let config = rig.config(&[0, 1, 2]);
    rig.dataplane
        .apply(rig.lb.ebpf_mut(), &config)
        .expect("apply");
    rig
}

/// GET / on an open connection; returns the body (the real's name).
fn get(conn: &mut TcpStream) -> std::io::Result<String> {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn connect_from(client_ip: IpAddr, port: u16, vip: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::new(client_ip, port).into())?;
    socket.connect_timeout(&vip.into(), Duration::from_secs(3))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    Ok(stream)
}

fn dsr_end_to_end(mode: AttachMode, subnet: u8) {
    let mut rig = build_rig(mode, subnet);
    let vip = rig.vip();
    let client_ip = rig.topo.client_ip();

    // 1. Spread: connections from known source ports, one request each. The datapath must
    //    put each exactly where the shared Maglev table + flow hash say, and the shares must
    //    follow the weights.
    let backends: Vec<Backend> = (0..3)
        .map(|i| Backend {
            key: addr16(rig.topo.real_ip(i)).0,
            weight: WEIGHTS[i],
        })
        .collect();
    let table = maglev::build(&backends, 65537).expect("maglev");
    let predicted: Vec<String> = (0..SPREAD_CONNECTIONS)
        .map(|n| {
            let flow = flow_key(SocketAddr::new(client_ip, 20000 + n), vip, Protocol::Tcp);
            let slot = flow_hash(&flow, FLOW_HASH_SEED) % 65537;
            format!("real{}", table[slot as usize].expect("owned") + 1)
        })
        .collect();
    let observed: Vec<String> = rig
        .topo
        .client
        .run(move || {
            (0..SPREAD_CONNECTIONS)
                .map(|n| {
                    let mut conn = connect_from(client_ip, 20000 + n, vip).expect("connect");
                    get(&mut conn).unwrap_or_else(|e| format!("failed: {e}"))
                })
                .collect::<Vec<String>>()
        })
        .expect("client");
    let failed = observed.iter().filter(|r| r.starts_with("failed")).count();
    if failed > 0 {
        let stats = read_l4_stats(rig.lb.ebpf(), &rig.dataplane).expect("stats");
        for dev in ["t1", "t2", "t3", "l0"] {
            let out = rig
                .topo
                .lb
                .command("ethtool")
                .args(["-S", dev])
                .output()
                .expect("ethtool");
            eprintln!(
                "{dev}: {}",
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.ends_with(": 0"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        panic!("{failed} requests failed; {stats}");
    }
    assert_eq!(observed, predicted, "each flow lands where Maglev says");
    let total_weight: u32 = WEIGHTS.iter().sum();
    for (i, weight) in WEIGHTS.iter().enumerate() {
        let name = format!("real{}", i + 1);
        let got = observed.iter().filter(|r| **r == name).count() as f64;
        let expected = f64::from(SPREAD_CONNECTIONS) * f64::from(*weight) / f64::from(total_weight);
        assert!(
            (got - expected).abs() <= 0.1 * expected,
            "{name}: {got} connections, expected {expected} (weight {weight}) within 10%"
        );
    }

    // 2. Long-lived connections, then real3 leaves the config.
    let conns: Vec<(TcpStream, String)> = rig
        .topo
        .client
        .run(move || {
            (0..60u16)
                .map(|n| {
                    let mut conn = connect_from(client_ip, 40000 + n, vip).expect("connect");
                    let real = get(&mut conn).expect("first GET");
                    (conn, real)
                })
                .collect()
        })
        .expect("client");
    let on_removed = conns.iter().filter(|(_, r)| r == "real3").count();
    assert!(
        on_removed > 0 && on_removed < conns.len(),
        "rig spreads the 60 connections"
    );
    let config = rig.config(&[0, 1]);
    rig.dataplane
        .apply(rig.lb.ebpf_mut(), &config)
        .expect("remove real3");

    let mut kept = 0;
    let mut moved_and_reset = 0;
    for (mut conn, real) in conns {
        let again = get(&mut conn);
        if real == "real3" {
            // Its packets now reach a real without the connection: reset, never real3.
            assert!(
                again.is_err(),
                "flow of a removed real was re-hashed: {again:?}"
            );
            moved_and_reset += 1;
        } else {
            assert_eq!(again.expect("established flow keeps working"), real);
            kept += 1;
        }
    }
    assert_eq!(kept + moved_and_reset, 60);
    assert_eq!(moved_and_reset, on_removed);

    let fresh: Vec<String> = rig
        .topo
        .client
        .run(move || {
            (0..100u16)
                .map(|n| {
                    let mut conn = connect_from(client_ip, 50000 + n, vip).expect("connect");
                    get(&mut conn).expect("GET")
                })
                .collect()
        })
        .expect("client");
    assert!(
        fresh.iter().all(|r| r != "real3"),
        "no new flow reaches the removed real"
    );

    let stats = read_l4_stats(rig.lb.ebpf(), &rig.dataplane).expect("stats");
    assert!(
        stats.event(L4Event::RealDownRehash) >= on_removed as u64,
        "{stats}"
    );
    assert_eq!(stats.event(L4Event::NoRealDropped), 0);
    let forwarded = stats.event(L4Event::EncapRedirect) + stats.event(L4Event::EncapFibPassed);
    assert!(forwarded > 0, "{stats}");
    let per_real: HashMap<IpAddr, u64> = stats
        .reals
        .iter()
        .map(|r| (r.addr, r.counters.new_flows))
        .collect();
    // Spread + long-lived + fresh connections, each a new flow on exactly one real (plus the
    // re-hashed ones, counted as new flows where they landed).
    let total_new: u64 = per_real.values().sum();
    assert!(
        total_new >= u64::from(SPREAD_CONNECTIONS) + 60 + 100,
        "{stats}"
    );
}

#[test]
fn dsr_native_mode() {
    if require_root("dsr_native_mode") {
        dsr_end_to_end(AttachMode::Native, 81);
    }
}

#[test]
fn dsr_generic_mode() {
    if require_root("dsr_generic_mode") {
        dsr_end_to_end(AttachMode::Skb, 82);
    }
}
