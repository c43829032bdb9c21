//! `benches/compare`: the same backends behind NGINX, HAProxy and lb, loaded by `lb bench`, in
//! one run. (nginx runs with `master_process off` so that stopping it stops everything.) Proxies (and backends) are pinned to CPU 0, the load generator to CPU 1. Each
//! scenario runs `ROUNDS` times per proxy; the table shows median req/s (min-max), p99, the
//! ratio to the best of NGINX and HAProxy, and the CPU time per request of the proxy and of
//! the backends behind it (utime + stime from /proc over the round, divided by its requests).
//!
//! lb runs as an operator starts it: `lb run --backends FILE` (no tuning flags; pinned to one
//! CPU it serves on one thread). The "L4" rows go through a `mode = "tcp"` listener (the stream
//! relay of the L7 tier, like NGINX's stream module and HAProxy's `mode tcp`): HTTP relayed
//! byte for byte, TLS passed through to backends that terminate it, and bare connections reset
//! by the client at once (a connection flood).
use std::{
    fmt::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

const ROUNDS: usize = 3;
const SECONDS: u64 = 5;
const BACKEND_PORTS: [u16; 3] = [19101, 19102, 19103];
/// The same backends' TLS ports are these plus this.
const BACKEND_TLS_OFFSET: u16 = 10;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proxy {
    Nginx,
    Haproxy,
    Lb,
}

impl Proxy {
    fn name(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
            Self::Haproxy => "haproxy",
            Self::Lb => "lb",
        }
    }

    fn http_port(self) -> u16 {
        match self {
            Self::Nginx => 19201,
            Self::Haproxy => 19202,
            Self::Lb => 19203,
        }
    }

    fn tls_port(self) -> u16 {
        self.http_port() + 100
    }

    fn tcp_port(self) -> u16 {
        self.http_port() + 200
    }

    /// The `mode tcp` listener in front of the backends' TLS ports.
    fn passthrough_port(self) -> u16 {
        self.http_port() + 300
    }
}

/// Which of a proxy's listeners a scenario loads, and how.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Front {
    /// HTTP proxying.
    Http,
    /// TLS terminated by the proxy, HTTP to the backends.
    Https,
    /// HTTP through the tcp listener.
    TcpRelay,
    /// HTTPS through the tcp listener to the backends' TLS ports.
    TlsPassthrough,
    /// Connect to the tcp listener, reset at once.
    TcpConnect,
}

impl Front {
    fn url(self, proxy: Proxy, path: &str) -> String {
        match self {
            Self::Http => format!("http://127.0.0.1:{}{path}", proxy.http_port()),
            Self::Https => format!("https://localhost:{}{path}", proxy.tls_port()),
            Self::TcpRelay => format!("http://127.0.0.1:{}{path}", proxy.tcp_port()),
            Self::TlsPassthrough => {
                format!("https://localhost:{}{path}", proxy.passthrough_port())
            }
            Self::TcpConnect => format!("tcp://127.0.0.1:{}", proxy.tcp_port()),
        }
    }

    fn is_stream(self) -> bool {
        matches!(
            self,
            Self::TcpRelay | Self::TlsPassthrough | Self::TcpConnect
        )
    }
}

struct Scenario {
    name: &'static str,
    path: &'static str,
    front: Front,
    args: &'static [&'static str],
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "keep-alive, small body",
        path: "/small",
        front: Front::Http,
        args: &["-c", "50"],
    },
    Scenario {
        name: "new connection per request",
        path: "/small",
        front: Front::Http,
        args: &["-c", "50", "--no-keepalive"],
    },
    Scenario {
        name: "1 MiB body",
        path: "/big",
        front: Front::Http,
        args: &["-c", "10"],
    },
    Scenario {
        name: "TLS keep-alive",
        path: "/small",
        front: Front::Https,
        args: &["-c", "50"],
    },
    Scenario {
        name: "TLS handshake per request",
        path: "/small",
        front: Front::Https,
        args: &["-c", "50", "--no-keepalive", "--no-resumption"],
    },
    Scenario {
        name: "L4 relay, keep-alive",
        path: "/small",
        front: Front::TcpRelay,
        args: &["-c", "50"],
    },
    Scenario {
        name: "L4 relay, new connection",
        path: "/small",
        front: Front::TcpRelay,
        args: &["-c", "50", "--no-keepalive"],
    },
    Scenario {
        name: "L4 TLS passthrough",
        path: "/small",
        front: Front::TlsPassthrough,
        args: &["-c", "50"],
    },
    Scenario {
        name: "L4 connect + reset",
        path: "",
        front: Front::TcpConnect,
        args: &["-c", "50"],
    },
];

/// Kills its process on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program` on `cpu`, its output in `log`; fails if it exits within half a second.
fn spawn_pinned(cpu: &str, program: &str, args: &[&str], log: &Path) -> Result<Running> {
    let file = std::fs::File::create(log)?;
    let mut child = Command::new("taskset")
        .args(["-c", cpu, program])
        .args(args)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    std::thread::sleep(Duration::from_millis(500));
    if let Some(status) = child.try_wait()? {
        bail!(
            "{program} exited ({status}): {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    Ok(Running(child))
}

fn nginx_stream_module() -> Option<&'static str> {
    let path = "/usr/lib/nginx/modules/ngx_stream_module.so";
    Path::new(path).exists().then_some(path)
}

fn write_configs(dir: &Path, cert: &Path, key: &Path) -> Result<()> {
    std::fs::write(dir.join("big.bin"), vec![b'x'; 1 << 20])?;
    let backends = BACKEND_PORTS
        .iter()
        .map(|p| {
            format!(
                "  server {{ listen 127.0.0.1:{p}; listen 127.0.0.1:{tls} ssl;\n\
                   ssl_certificate {cert}; ssl_certificate_key {key};\n\
                   location = /small {{ return 200 \"hello\\n\"; }} \
                 location = /big {{ alias {dir}/big.bin; }} }}\n",
                tls = p + BACKEND_TLS_OFFSET,
                cert = cert.display(),
                key = key.display(),
                dir = dir.display()
            )
        })
        .collect::<String>();
    std::fs::write(
        dir.join("backends.conf"),
        format!(
            "worker_processes 1; daemon off; master_process off; pid {d}/backends.pid; error_log {d}/backends.err;\n\
             events {{ worker_connections 8192; }}\n\
             http {{ access_log off; keepalive_requests 1000000;\n{backends}}}\n",
            d = dir.display()
        ),
    )?;
    let upstream: String = BACKEND_PORTS
        .iter()
        .map(|p| format!("server 127.0.0.1:{p};"))
        .collect();
    let tls_upstream: String = BACKEND_PORTS
        .iter()
        .map(|p| format!("server 127.0.0.1:{};", p + BACKEND_TLS_OFFSET))
        .collect();
    let stream = nginx_stream_module()
        .map(|_| {
            format!(
                "stream {{ upstream tcpb {{ {upstream} }} upstream tlsb {{ {tls_upstream} }}\n\
                   server {{ listen 127.0.0.1:{}; proxy_pass tcpb; }}\n\
                   server {{ listen 127.0.0.1:{}; proxy_pass tlsb; }} }}\n",
                Proxy::Nginx.tcp_port(),
                Proxy::Nginx.passthrough_port()
            )
        })
        .unwrap_or_default();
    let load = nginx_stream_module()
        .map(|m| format!("load_module {m};\n"))
        .unwrap_or_default();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "{load}worker_processes 1; daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/nginx.err;\n\
             events {{ worker_connections 8192; }}\n\
             http {{ access_log off; keepalive_requests 1000000;\n\
               upstream b {{ {upstream} keepalive 64; }}\n\
               server {{ listen 127.0.0.1:{http}; listen 127.0.0.1:{tls} ssl;\n\
                 ssl_certificate {cert}; ssl_certificate_key {key};\n\
                 location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n\
             {stream}",
            d = dir.display(),
            http = Proxy::Nginx.http_port(),
            tls = Proxy::Nginx.tls_port(),
            cert = cert.display(),
            key = key.display()
        ),
    )?;
    let servers: String = BACKEND_PORTS
        .iter()
        .enumerate()
        .map(|(i, p)| format!("  server b{i} 127.0.0.1:{p}\n"))
        .collect();
    let tls_servers: String = BACKEND_PORTS
        .iter()
        .enumerate()
        .map(|(i, p)| format!("  server t{i} 127.0.0.1:{}\n", p + BACKEND_TLS_OFFSET))
        .collect();
    let pem = dir.join("haproxy.pem");
    std::fs::write(
        &pem,
        format!(
            "{}{}",
            std::fs::read_to_string(cert)?,
            std::fs::read_to_string(key)?
        ),
    )?;
    let lb_backends: String = BACKEND_PORTS
        .iter()
        .map(|p| format!("[[pool.backend]]\naddress = \"127.0.0.1:{p}\"\n"))
        .collect();
    let lb_tls_backends: String = BACKEND_PORTS
        .iter()
        .map(|p| {
            format!(
                "[[pool.backend]]\naddress = \"127.0.0.1:{}\"\n",
                p + BACKEND_TLS_OFFSET
            )
        })
        .collect();
    std::fs::write(
        dir.join("lb.toml"),
        format!(
            "[[pool]]\nname = \"b\"\nalgorithm = \"round_robin\"\n{lb_backends}\
             [[pool]]\nname = \"t\"\nalgorithm = \"round_robin\"\n{lb_tls_backends}\
             [[listener]]\nname = \"web\"\naddress = \"127.0.0.1:{http}\"\n\
             [[listener]]\nname = \"webtls\"\naddress = \"127.0.0.1:{tls}\"\n\
             [[listener.tls]]\ncert = \"{cert}\"\nkey = \"{key}\"\n\
             [[listener]]\nname = \"tcp\"\naddress = \"127.0.0.1:{tcp}\"\nmode = \"tcp\"\n\
             [[listener]]\nname = \"pass\"\naddress = \"127.0.0.1:{pass}\"\nmode = \"tcp\"\n\
             [[route]]\nlistener = \"web\"\npool = \"b\"\n\
             [[route]]\nlistener = \"webtls\"\npool = \"b\"\n\
             [[route]]\nlistener = \"tcp\"\npool = \"b\"\n\
             [[route]]\nlistener = \"pass\"\npool = \"t\"\n",
            http = Proxy::Lb.http_port(),
            tls = Proxy::Lb.tls_port(),
            tcp = Proxy::Lb.tcp_port(),
            pass = Proxy::Lb.passthrough_port(),
            cert = cert.display(),
            key = key.display()
        ),
    )?;
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!(
            "global\n  nbthread 1\n  maxconn 8000\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  http-reuse always\n\
             frontend web\n  bind 127.0.0.1:{http}\n  bind 127.0.0.1:{tls} ssl crt {pem}\n  default_backend b\n\
             backend b\n  balance roundrobin\n{servers}\
             listen tcp\n  mode tcp\n  bind 127.0.0.1:{tcp}\n  balance roundrobin\n{servers}\
             listen pass\n  mode tcp\n  bind 127.0.0.1:{pass}\n  balance roundrobin\n{tls_servers}",
            http = Proxy::Haproxy.http_port(),
            tls = Proxy::Haproxy.tls_port(),
            tcp = Proxy::Haproxy.tcp_port(),
            pass = Proxy::Haproxy.passthrough_port(),
            pem = pem.display()
        ),
    )?;
    Ok(())
}

/// One round's outcome.
struct Run {
    /// Successful requests (HTTP) or connections (L4) per second.
    rate: f64,
    p99_us: f64,
    /// How many (the CPU time of the round is divided by it).
    requests: f64,
}

/// utime + stime of process `pid` so far, in microseconds.
fn cpu_us(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields 14 and 15 of stat(5), counted from 3 after the command name.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks * 1e6 / per_second.max(1.0))
}

/// One `lb bench` run on CPU 1 (no warm-up, so the CPU time measured around it is all spent
/// on the requests it counts).
fn bench_once(lb: &Path, url: &str, args: &[&str], ca: &Path) -> Result<Run> {
    let out = Command::new("taskset")
        .args(["-c", "1"])
        .arg(lb)
        .args(["bench", "--json", "--threads", "1", "-d"])
        .arg(format!("{SECONDS}s"))
        .args(["--warmup", "0s", "--cacert"])
        .arg(ca)
        .args(args)
        .arg(url)
        .output()
        .context("running lb bench")?;
    if !out.status.success() {
        bail!("lb bench {url}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    if json["non_2xx"].as_u64().unwrap_or(0) > 0 || json["errors"].as_u64().unwrap_or(0) > 0 {
        bail!("lb bench {url}: failures: {json}");
    }
    // Successful requests (HTTP) or connections (L4) per second.
    let rate = match json["ok_per_s"].as_f64() {
        Some(rate) => rate,
        None => json["ok"].as_f64().unwrap_or(0.0) / json["duration_s"].as_f64().unwrap_or(1.0),
    };
    let p99_us = json["latency_us"]["p99"].as_f64().unwrap_or(f64::NAN);
    let requests = json["ok"].as_f64().unwrap_or(0.0);
    Ok(Run {
        rate,
        p99_us,
        requests,
    })
}

fn main() -> Result<()> {
    for tool in ["nginx", "haproxy", "taskset"] {
        if Command::new("which").arg(tool).output()?.stdout.is_empty() {
            bail!("{tool} not found: apt-get install nginx haproxy util-linux");
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace")?
        .to_path_buf();
    let status = Command::new("cargo")
        .current_dir(&workspace)
        .args(["build", "--release", "-p", "lb-userspace", "--bin", "lb"])
        .status()?;
    if !status.success() {
        bail!("building lb failed");
    }
    let lb = workspace.join("target/release/lb");
    let dir = std::env::temp_dir().join(format!("lb-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem())?;
    std::fs::write(&key_path, cert.key_pair.serialize_pem())?;
    write_configs(&dir, &cert_path, &key_path)?;

    let conf = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let log = |name: &str| dir.join(format!("{name}.log"));
    let _backends = spawn_pinned(
        "0",
        "nginx",
        &["-c", &conf("backends.conf")],
        &log("backends"),
    )?;
    let _nginx = spawn_pinned("0", "nginx", &["-c", &conf("nginx.conf")], &log("nginx"))?;
    let _haproxy = spawn_pinned(
        "0",
        "haproxy",
        &["-f", &conf("haproxy.cfg"), "-db"],
        &log("haproxy"),
    )?;
    let lb_path = lb.to_string_lossy().into_owned();
    let _lb = spawn_pinned(
        "0",
        &lb_path,
        &[
            "run",
            "--backends",
            &conf("lb.toml"),
            "--admin",
            "127.0.0.1:19990",
        ],
        &log("lb"),
    )?;

    let mut table = String::from(
        "| scenario | nginx req/s | haproxy req/s | lb req/s | lb / best peer | p99 nginx / haproxy / lb | proxy CPU us/req nginx / haproxy / lb | backend CPU us/req behind nginx / haproxy / lb |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let pids = [_nginx.0.id(), _haproxy.0.id(), _lb.0.id()];
    let backend_pid = _backends.0.id();
    for scenario in SCENARIOS {
        let mut cells = Vec::new();
        let mut p99s = Vec::new();
        let mut proxy_cpu = Vec::new();
        let mut backend_cpu = Vec::new();
        for (proxy, pid) in [Proxy::Nginx, Proxy::Haproxy, Proxy::Lb]
            .into_iter()
            .zip(pids)
        {
            if scenario.front.is_stream()
                && proxy == Proxy::Nginx
                && nginx_stream_module().is_none()
            {
                cells.push(None);
                p99s.push("-".to_owned());
                proxy_cpu.push("-".to_owned());
                backend_cpu.push("-".to_owned());
                continue;
            }
            let url = scenario.front.url(proxy, scenario.path);
            let mut runs = Vec::new();
            let mut p99 = Vec::new();
            let mut cpu = Vec::new();
            let mut cpu_behind = Vec::new();
            for _ in 0..ROUNDS {
                let (proxy_before, backend_before) = (cpu_us(pid)?, cpu_us(backend_pid)?);
                let run = bench_once(&lb, &url, scenario.args, &cert_path)?;
                let requests = run.requests.max(1.0);
                cpu.push((cpu_us(pid)? - proxy_before) / requests);
                cpu_behind.push((cpu_us(backend_pid)? - backend_before) / requests);
                runs.push(run.rate);
                p99.push(run.p99_us);
            }
            cpu.sort_by(f64::total_cmp);
            cpu_behind.sort_by(f64::total_cmp);
            proxy_cpu.push(format!("{:.1}", cpu[ROUNDS / 2]));
            backend_cpu.push(format!("{:.1}", cpu_behind[ROUNDS / 2]));
            if runs.iter().any(|r| *r <= 0.0) {
                bail!(
                    "{} through {}: no successful requests",
                    scenario.name,
                    proxy.name()
                );
            }
            runs.sort_by(f64::total_cmp);
            p99.sort_by(f64::total_cmp);
            eprintln!("{:<28} {:<8} {runs:?}", scenario.name, proxy.name());
            p99s.push(if p99[ROUNDS / 2].is_nan() {
                "-".to_owned()
            } else {
                format!("{:.2}ms", p99[ROUNDS / 2] / 1000.0)
            });
            cells.push(Some(runs));
        }
        let median = |r: &Option<Vec<f64>>| r.as_ref().map(|r| r[ROUNDS / 2]);
        let best_peer = median(&cells[0])
            .unwrap_or(0.0)
            .max(median(&cells[1]).unwrap_or(0.0));
        let fmt = |r: &Option<Vec<f64>>| match r {
            Some(r) => format!("{:.0} ({:.0}-{:.0})", r[ROUNDS / 2], r[0], r[ROUNDS - 1]),
            None => "n/a".to_owned(),
        };
        let ratio = median(&cells[2])
            .filter(|_| best_peer > 0.0)
            .map_or("n/a".to_owned(), |lb| format!("{:.2}x", lb / best_peer));
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            scenario.name,
            fmt(&cells[0]),
            fmt(&cells[1]),
            fmt(&cells[2]),
            ratio,
            p99s.join(" / "),
            proxy_cpu.join(" / "),
            backend_cpu.join(" / ")
        );
    }
    println!("{table}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
