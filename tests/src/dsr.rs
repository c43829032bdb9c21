//! The direct-server-return topology the L4 end-to-end test and the pps benchmark share:
//!
//! ```text
//! client ns --- lb ns (forwarding; XDP on l0 when asked) --- real ns 1..3
//!  c0 10.S.0.1    l0 10.S.0.2 | ti 10.S.i.1                    e0 10.S.i.2, VIP 10.S.100.100 on lo
//! ```
//! Callers attach programs and start servers; this module only builds the network.
use std::{net::IpAddr, process::Stdio};

use crate::{
    NETNS_PREFIX,
    netns::{Netns, VethEnd, sweep_stale, veth_pair},
};

pub const REALS: usize = 3;

pub struct DsrTopology {
    pub subnet: u8,
    pub client: Netns,
    pub lb: Netns,
    pub reals: Vec<Netns>,
}

/// Runs a command inside `ns`, panicking (a broken rig is a failed test) if it fails.
pub fn run_in(ns: &Netns, args: &[&str]) {
    let status = ns
        .command(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(status.success(), "{args:?} in {}", ns.name());
}

impl DsrTopology {
    pub fn build(subnet: u8) -> Self {
        sweep_stale(NETNS_PREFIX);
        let s = subnet;
        let client = Netns::new(NETNS_PREFIX, "cli").expect("netns");
        let lb = Netns::new(NETNS_PREFIX, "lb").expect("netns");
        veth_pair(
            VethEnd {
                ns: &client,
                name: "c0",
                addrs: &[&format!("10.{s}.0.1/24")],
            },
            VethEnd {
                ns: &lb,
                name: "l0",
                addrs: &[&format!("10.{s}.0.2/24")],
            },
        )
        .expect("veth");
        client
            .ip(&["route", "add", "default", "via", &format!("10.{s}.0.2")])
            .expect("route");
        // veth hands CHECKSUM_PARTIAL skbs to native XDP, which cannot finish them; real NICs
        // have checksummed before XDP runs (see ../shared/ebpf-toolchain.md).
        run_in(&client, &["ethtool", "-K", "c0", "tx", "off"]);
        run_in(&lb, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let vip = format!("10.{s}.100.100/32");
        let mut reals = Vec::new();
        for i in 1..=REALS as u8 {
            let real = Netns::new(NETNS_PREFIX, &format!("r{i}")).expect("netns");
            veth_pair(
                VethEnd {
                    ns: &lb,
                    name: &format!("t{i}"),
                    addrs: &[&format!("10.{s}.{i}.1/24")],
                },
                VethEnd {
                    ns: &real,
                    name: "e0",
                    addrs: &[&format!("10.{s}.{i}.2/24")],
                },
            )
            .expect("veth");
            real.ip(&["addr", "add", &vip, "dev", "lo"]).expect("vip");
            real.ip(&["route", "add", "default", "via", &format!("10.{s}.{i}.1")])
                .expect("route");
            for knob in [
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.e0.rp_filter=0",
            ] {
                run_in(&real, &["sysctl", "-qw", knob]);
            }
            reals.push(real);
        }
        Self {
            subnet,
            client,
            lb,
            reals,
        }
    }

    pub fn vip_ip(&self) -> IpAddr {
        IpAddr::from([10, self.subnet, 100, 100])
    }

    pub fn client_ip(&self) -> IpAddr {
        IpAddr::from([10, self.subnet, 0, 1])
    }

    /// Address of real `i` (0-based).
    pub fn real_ip(&self, i: usize) -> IpAddr {
        IpAddr::from([10, self.subnet, i as u8 + 1, 2])
    }
}

/// An HTTP/1.1 keep-alive server answering every request with `name` (which real answered).
pub fn serve_name(listener: std::net::TcpListener, name: String) {
    use std::io::{BufRead, BufReader, Write};
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let name = name.clone();
        std::thread::spawn(move || {
            let Ok(mut writer) = conn.try_clone() else {
                return;
            };
            let mut reader = BufReader::new(conn);
            loop {
                // Request line and headers, up to the blank line.
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line == "\r\n" => {}
                    Ok(_) => continue,
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

/// GET / on an open connection to a [`serve_name`] server; returns the body.
pub fn get_name(conn: &mut std::net::TcpStream) -> std::io::Result<String> {
    use std::io::{Read, Write};
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

/// A TCP connection from `client_ip:port` (call inside the client namespace).
pub fn connect_from(
    client_ip: IpAddr,
    port: u16,
    to: std::net::SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&std::net::SocketAddr::new(client_ip, port).into())?;
    socket.connect_timeout(&to.into(), std::time::Duration::from_secs(3))?;
    let stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
    Ok(stream)
}
