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

/// The lines of `stream` as they arrive; the channel ends when the stream does.
fn lines_of(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for the line that says the program is attached; returns the rest of stdout as it
/// arrives.
fn wait_attached(child: &mut Child) -> (String, mpsc::Receiver<String>) {
    let rx = lines_of(child.stdout.take().expect("stdout"));
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("lb printed nothing within 30 s");
    (first, rx)
}

/// Receives lines until one satisfies `wanted`; returns the lines up to and including it.
/// The deadline only turns a hang into a failure.
fn wait_line(
    rx: &mpsc::Receiver<String>,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("{what}: not seen within 30 s; got {got:#?}"));
        let done = wanted(&line);
        got.push(line);
        if done {
            return got;
        }
    }
}

/// The parser counters' row for udp port `port`, as words.
fn udp_row(line: &str, port: &str) -> Option<Vec<String>> {
    let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    (words.first().map(String::as_str) == Some("udp")
        && words.get(1).map(String::as_str) == Some(port))
    .then_some(words)
}

fn attach_count_detach(mode: &str, signal: nix::sys::signal::Signal, subnet: u8) {
    let rig = rig(subnet);
    let mut child = rig
        .lb_ns
        .command(lb_bin())
        // Counters printed every second too: the test waits for the datagrams to be counted.
        .args([
            "xdp",
            "attach",
            "--iface",
            "l0",
            "--xdp-mode",
            mode,
            "--stats-interval",
            "1",
        ])
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
    let frame_bytes = 5 * (14 + 20 + 8 + 5);
    let counted = vec![
        "udp".to_owned(),
        "7777".to_owned(),
        "5".to_owned(),
        frame_bytes.to_string(),
    ];
    wait_line(&rest, "the 5 datagrams counted", |l| {
        udp_row(l, "7777").as_ref() == Some(&counted)
    });

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
    // Everything printed after that, up to the end of stdout: the counters at exit.
    let out: Vec<String> = rest.iter().collect();
    let row = out
        .iter()
        .rev()
        .find_map(|l| udp_row(l, "7777"))
        .unwrap_or_else(|| panic!("no udp/7777 row in {out:#?}"));
    assert_eq!(row, counted, "the counters at exit");
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

#[test]
fn without_privileges_xdp_commands_name_what_is_missing() {
    // Every capability dropped (still uid 0, so the binary is reachable wherever the tree
    // is): lb says which ones it needs.
    let out = std::process::Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-all"])
        .arg(lb_bin())
        .args(["xdp", "attach", "--iface", "lo"])
        .output()
        .expect("setpriv (util-linux)");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs CAP_BPF and CAP_NET_ADMIN (or root)")
            && stderr.contains("lacks CAP_BPF and CAP_NET_ADMIN"),
        "{stderr}"
    );
}

/// A file under the system temp dir, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("lbt-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write temp file");
        Self(path)
    }

    fn rewrite(&self, text: &str) {
        // Write-then-rename, as editors and config management do.
        let tmp = self.0.with_extension("new");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &self.0).expect("rename");
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn l4_refuses_a_bad_backend_file_with_file_line_and_reason() {
    if !require_root("l4_refuses_a_bad_backend_file_with_file_line_and_reason") {
        return;
    }
    let rig = rig(96);
    let bad = TempFile::new("bad.toml", "[[vip]]\naddress = \"10.96.0.100:0\"\n");
    let out = rig
        .lb_ns
        .command(lb_bin())
        .args(["l4", "--iface", "l0", "--config"])
        .arg(&bad.0)
        .output()
        .expect("run lb");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:2: vip port 0 is reserved", bad.0.display());
    assert!(stderr.contains(&expected), "{stderr}");
    let link = rig
        .lb_ns
        .ip(&["link", "show", "dev", "l0"])
        .expect("ip link");
    assert!(
        !link.contains("prog/xdp"),
        "nothing attached on a bad file: {link}"
    );
}

#[test]
fn l4_follows_the_backend_file_and_keeps_running_on_a_bad_reload() {
    if !require_root("l4_follows_the_backend_file_and_keeps_running_on_a_bad_reload") {
        return;
    }
    let rig = rig(97);
    let one = "[[vip]]\naddress = \"10.97.0.100:80\"\nring_size = 1009\n[[vip.real]]\naddress = \"10.97.0.1\"\n";
    let file = TempFile::new("l4.toml", one);
    let mut child = rig
        .lb_ns
        .command(lb_bin())
        .args(["l4", "--iface", "l0", "--xdp-mode", "skb", "--config"])
        .arg(&file.0)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lb");
    let errors = lines_of(child.stderr.take().expect("stderr"));
    let (first, rest) = wait_attached(&mut child);
    assert_eq!(first, "attached iface=l0 mode=skb vips=1");
    let next_line = || {
        rest.recv_timeout(Duration::from_secs(10))
            .expect("lb printed the reload within 10 s")
    };

    let two = format!(
        "{one}[[vip]]\naddress = \"10.97.0.101:53\"\nprotocol = \"udp\"\nring_size = 1009\n"
    );
    file.rewrite(&two);
    assert_eq!(next_line(), "reloaded vips=2 rings_rebuilt=1");

    // A broken file is refused; the running configuration stays (proved by the next good
    // reload rebuilding nothing: the two VIPs were still installed).
    file.rewrite("[[vip]]\naddress = \"nonsense\"\n");
    let mut stderr = wait_line(&errors, "the rejected reload", |l| {
        l.contains("reload (file changed) rejected; keeping the running configuration")
    });
    file.rewrite(&two);
    assert_eq!(next_line(), "reloaded vips=2 rings_rebuilt=0");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let status = child.wait().expect("wait");
    stderr.extend(errors.iter());
    let stderr = stderr.join("\n");
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("reload (file changed) rejected; keeping the running configuration")
            && stderr.contains("is not ADDRESS:PORT"),
        "{stderr}"
    );
    let out: Vec<String> = rest.iter().collect();
    assert!(
        out.iter().any(|l| l.starts_with("10.97.0.100:80/tcp")),
        "{out:#?}"
    );
    assert!(
        out.iter().any(|l| l.starts_with("10.97.0.101:53/udp")),
        "{out:#?}"
    );
    assert_eq!(out.last().map(String::as_str), Some("detached iface=l0"));
}
