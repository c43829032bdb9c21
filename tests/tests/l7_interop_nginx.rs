//! lb in front of a real nginx: the PROXY header lb's pool sends (v1 and v2) names the true
//! client in nginx's `$proxy_protocol_addr`.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use lb::l7::{self, L7Config};
use tokio::net::TcpSocket;

const NGINX: &str = "/usr/sbin/nginx";

/// An nginx (no daemon, no master process) with its files in a temp dir; killed and cleaned
/// up on drop, panics included.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nginx {
    /// Starts nginx listening on `addr` with `proxy_protocol`, logging
    /// `$proxy_protocol_addr $remote_addr "$request"` per request.
    fn start(tag: &str, addr: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("lbt-nginx-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let d = dir.display();
        let conf = format!(
            "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n\
             client_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
             log_format pp '$proxy_protocol_addr $remote_addr \"$request\"';\n\
             server {{\nlisten {addr} proxy_protocol;\naccess_log {d}/access.log pp;\n\
             location / {{ return 200 \"nginx ok\\n\"; }}\n}}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("write conf");
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off; master_process off;"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let nginx = Self { child, dir };
        // The pid file is written after the listening socket is open.
        let started = Instant::now();
        while !nginx.dir.join("nginx.pid").exists() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "nginx did not start: {}",
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// The access log once it has `lines` lines (waits up to 2 s).
    fn access_log(&self, lines: usize) -> String {
        let started = Instant::now();
        loop {
            let log = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
            if log.lines().count() >= lines || started.elapsed() > Duration::from_secs(2) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// nginx present, or: fail under CI, skip (with a message) elsewhere.
fn nginx_available(test: &str) -> bool {
    if Path::new(NGINX).is_file() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs {NGINX} (apt-get install nginx-light) and CI=true: refusing to skip");
    }
    eprintln!("skipping {test}: {NGINX} not found (apt-get install nginx-light)");
    false
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_sees_the_client_lb_names_in_its_proxy_header() {
    if !nginx_available("nginx_sees_the_client_lb_names_in_its_proxy_header") {
        return;
    }
    for version in ["v1", "v2"] {
        let nginx_addr = free_port();
        let nginx = Nginx::start(version, nginx_addr);
        let config = L7Config::parse(
            &format!(
                "[[pool]]\nname = \"nginx\"\nproxy_protocol = \"{version}\"\n\
                 [[pool.backend]]\naddress = \"{nginx_addr}\"\n\
                 [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
                 [[route]]\nlistener = \"l\"\npool = \"nginx\"\n"
            ),
            Path::new("l7.toml"),
        )
        .expect("config");
        let running = l7::serve(config).await.expect("serve");
        let lb_addr = running.listeners[0].1;

        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.66:0".parse().expect("addr"))
            .expect("bind 127.0.0.66");
        let tcp = socket.connect(lb_addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let path = format!("/{version}");
        let response = sender
            .send_request(
                Request::get(path.as_str())
                    .header("host", "nginx.test")
                    .body(Empty::<Bytes>::new())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(response.status(), 200, "{}", nginx.error_log());
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"nginx ok\n");

        let log = nginx.access_log(1);
        assert_eq!(
            log.trim(),
            format!("127.0.0.66 127.0.0.1 \"GET {path} HTTP/1.1\""),
            "{version}: {}",
            nginx.error_log()
        );
    }
}
