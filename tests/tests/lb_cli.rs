//! The `lb` binary itself: attach from the command line inside a namespace, count real
//! datagrams, print them, and detach cleanly on SIGINT and on SIGTERM.
use std::{
    io::{BufRead, BufReader, Read},
    net::UdpSocket,
    process::{Child, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use lb_tests::{
    NETNS_PREFIX, lb_bin,
    netns::{Netns, VethEnd, require_root, sweep_stale, veth_pair},
};

struct Rig {
    // Field order: the child is killed by the namespace drop if the test fails midway.
    client: Netns,
    lb_ns: Netns,
}

fn rig(subnet: u8) -> Rig {
    sweep_stale(NETNS_PREFIX);
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
    Rig { client, lb_ns }
}

/// Waits for the line that says the program is attached; returns the rest of stdout as it
/// arrives.
fn wait_attached(child: &mut Child) -> (String, mpsc::Receiver<String>) {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("lb printed nothing within 30 s");
    (first, rx)
}

fn attach_count_detach(mode: &str, signal: nix::sys::signal::Signal, subnet: u8) {
    let rig = rig(subnet);
    let mut child = rig
        .lb_ns
        .command(lb_bin())
        .args(["xdp", "attach", "--iface", "l0", "--xdp-mode", mode])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lb");
    let (first, rest) = wait_attached(&mut child);
    let expected_mode = if mode == "skb" { "skb" } else { "native" };
    assert_eq!(first, format!("attached iface=l0 mode={expected_mode}"));
    let link = rig
        .lb_ns
        .ip(&["link", "show", "dev", "l0"])
        .expect("ip link");
    let flag = if mode == "skb" { "xdpgeneric" } else { "xdp" };
    assert!(
        link.contains(&format!("{flag}/id:")) || link.contains(&format!("{flag} ")),
        "{link}"
    );

    let target = format!("10.{subnet}.0.2:7777");
    rig.client
        .run(move || {
            let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
            for _ in 0..5 {
                sock.send_to(b"hello", target.as_str()).expect("send");
            }
        })
        .expect("client");
    thread::sleep(Duration::from_millis(100));

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).expect("kill");
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    assert!(status.success(), "lb exited with {status}: {stderr}");
    let out: Vec<String> = rest.try_iter().collect();
    let frame_bytes = 5 * (14 + 20 + 8 + 5);
    let row = out
        .iter()
        .find(|l| l.starts_with("udp") && l.split_whitespace().nth(1) == Some("7777"))
        .unwrap_or_else(|| panic!("no udp/7777 row in {out:#?}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        vec!["udp", "7777", "5", &frame_bytes.to_string()]
    );
    assert_eq!(out.last().map(String::as_str), Some("detached iface=l0"));
    assert!(stderr.contains(&format!("signal=\"{signal}\"")), "{stderr}");
    let link = rig
        .lb_ns
        .ip(&["link", "show", "dev", "l0"])
        .expect("ip link");
    assert!(
        !link.contains("prog/xdp"),
        "still attached after exit: {link}"
    );
}

#[test]
fn sigint_detaches_native() {
    if require_root("sigint_detaches_native") {
        attach_count_detach("native", nix::sys::signal::Signal::SIGINT, 93);
    }
}

#[test]
fn sigterm_detaches_generic() {
    if require_root("sigterm_detaches_generic") {
        attach_count_detach("skb", nix::sys::signal::Signal::SIGTERM, 94);
    }
}

#[test]
fn unknown_interface_is_a_clear_error() {
    if !require_root("unknown_interface_is_a_clear_error") {
        return;
    }
    let rig = rig(95);
    let out = rig
        .lb_ns
        .command(lb_bin())
        .args(["xdp", "attach", "--iface", "nosuch0"])
        .output()
        .expect("run lb");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("attaching the XDP datapath to nosuch0") && stderr.contains("nosuch0"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
