//! Hot reload of the L7 tier: routes and pools swapped in place, listeners started and
//! stopped, unchanged pools kept, a failed bind changing nothing, and 50 reloads under load
//! without a failed request.
use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use lb::l7::{self, L7Config};
use lb_tests::http_server::{self, Behaviour};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn config(text: &str) -> L7Config {
    L7Config::parse(text, Path::new("reload.toml")).expect("config")
}

fn file(backends: &[(SocketAddr, u32)], listeners: &[(&str, &str)]) -> String {
    let mut text = String::from("[[pool]]\nname = \"web\"\nmax_fails = 0\n");
    for (addr, weight) in backends {
        text += &format!("[[pool.backend]]\naddress = \"{addr}\"\nweight = {weight}\n");
    }
    text += "[[pool]]\nname = \"steady\"\n[[pool.backend]]\naddress = \"127.0.0.1:9\"\n";
    for (name, addr) in listeners {
        text += &format!(
            "[[listener]]\nname = \"{name}\"\naddress = \"{addr}\"\n\
             [[route]]\nlistener = \"{name}\"\npool = \"web\"\n"
        );
    }
    text
}

/// One keep-alive request on `tcp`; returns the status.
async fn get(tcp: &mut TcpStream) -> u16 {
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        let n = tcp.read(&mut buf).await.expect("read");
        assert!(n > 0, "connection closed");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if got.len() >= head_end + 4 + len {
                return text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_pools_and_listeners_in_place() {
    let a = http_server::start(Behaviour::default()).await;
    let b = http_server::start(Behaviour::default()).await;
    let mut running = l7::serve(config(&file(&[(a.addr, 1)], &[("one", "127.0.0.1:0")])))
        .await
        .expect("serve");
    let one = running.listeners[0].1;
    let steady = running.pool_state("steady").expect("pool");
    let mut client = TcpStream::connect(one).await.expect("connect");
    assert_eq!(get(&mut client).await, 200);
    assert_eq!(
        a.seen.requests.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Pool web now points at b; listener "one" keeps its port, "two" is new.
    let text = file(
        &[(b.addr, 1)],
        &[("one", &one.to_string()), ("two", "127.0.0.1:0")],
    );
    let report = running.reload(&config(&text)).await.expect("reload");
    assert_eq!(
        (report.listeners_started, report.listeners_stopped),
        (1, 0),
        "one is unchanged (its :0 was bound to this port), two is new"
    );
    assert_eq!(report.pools_rebuilt, 1, "only web changed");
    assert!(
        Arc::ptr_eq(&steady, &running.pool_state("steady").expect("pool")),
        "an unchanged pool is kept, with its state"
    );
    // The connection made before the reload stays open and follows the new routes.
    assert_eq!(get(&mut client).await, 200);
    assert_eq!(
        b.seen.requests.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let two = running.listeners[1].1;
    let mut second = TcpStream::connect(two)
        .await
        .expect("connect to the new listener");
    assert_eq!(get(&mut second).await, 200);

    // A listener whose address is taken: the reload fails and nothing changes.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = squatter.local_addr().expect("addr").to_string();
    let bad = file(
        &[(a.addr, 1)],
        &[
            ("one", &one.to_string()),
            ("two", &two.to_string()),
            ("three", &taken),
        ],
    );
    assert!(running.reload(&config(&bad)).await.is_err());
    assert_eq!(running.listeners.len(), 2);
    assert_eq!(get(&mut second).await, 200);
    assert_eq!(
        b.seen.requests.load(std::sync::atomic::Ordering::Relaxed),
        3,
        "routes unchanged by the failed reload"
    );

    // Removing a listener stops accepting on it.
    let fewer = file(&[(b.addr, 1)], &[("two", &two.to_string())]);
    let report = running.reload(&config(&fewer)).await.expect("reload");
    assert_eq!(report.listeners_stopped, 1);
    assert!(
        TcpStream::connect(one).await.is_err(),
        "listener one is gone"
    );
    assert_eq!(get(&mut second).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_fail_no_request() {
    let a = http_server::start(Behaviour::default()).await;
    let b = http_server::start(Behaviour::default()).await;
    let mut running = l7::serve(config(&file(
        &[(a.addr, 1), (b.addr, 1)],
        &[("l", "127.0.0.1:0")],
    )))
    .await
    .expect("serve");
    let addr = running.listeners[0].1;
    let load = tokio::spawn(lb::loadgen::run(lb::loadgen::BenchConfig {
        target: lb::loadgen::Target::parse(&[format!("http://{addr}/")], "GET", &[], Bytes::new())
            .expect("target"),
        connections: 8,
        duration: Some(Duration::from_secs(3)),
        requests: None,
        warmup: Duration::ZERO,
        mode: lb::loadgen::LoadMode::Closed,
        version: lb::loadgen::HttpVersion::Http1,
        keep_alive: true,
        proxy: None,
        insecure: false,
        ca_file: None,
        resumption: true,
        timeout: Duration::from_secs(5),
        progress: false,
    }));
    for i in 0..50u32 {
        let text = file(
            &[(a.addr, 1 + i % 3), (b.addr, 1)],
            &[("l", &addr.to_string())],
        );
        running.reload(&config(&text)).await.expect("reload");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let report = load.await.expect("join").expect("bench");
    assert!(report.ok > 500, "traffic flowed: {} requests", report.ok);
    assert_eq!(
        (report.non_2xx, report.errors),
        (0, 0),
        "every request succeeded: {:?} {:?}",
        report.status,
        report.error_kinds
    );
}

/// Every upstream TLS setting of a pool takes effect on the next request after a reload:
/// `tls_insecure`, `ca_file`, `tls_server_name`, and the content of the CA file at an
/// unchanged path. A reload that changes nothing (same file, same CA content) keeps the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_every_upstream_tls_setting() {
    let backend = http_server::start(Behaviour {
        tls: true,
        ..Behaviour::default()
    })
    .await;
    let dir = std::env::temp_dir().join(format!("lb-reload-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &backend.cert_pem).expect("write ca");
    // Another self-signed certificate for the same name: not the backend's.
    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("cert")
        .cert
        .pem();
    let text = |tls_keys: &str| {
        format!(
            "[[pool]]\nname = \"web\"\nmax_fails = 0\nretries = 0\ntls = true\n{tls_keys}\
             [[pool.backend]]\naddress = \"{}\"\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
             [[route]]\nlistener = \"l\"\npool = \"web\"\n",
            backend.addr
        )
    };
    let ca_keys = |name: &str| {
        format!(
            "ca_file = \"{}\"\ntls_server_name = \"{name}\"\n",
            ca.display()
        )
    };

    let mut running = l7::serve(config(&text("tls_insecure = true\n")))
        .await
        .expect("serve");
    let addr = running.listeners[0].1;
    // Keeps the listener's port, so only the pool changes from here on.
    let text = |tls_keys: &str| text(tls_keys).replace("127.0.0.1:0", &addr.to_string());
    let status = || async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        get(&mut tcp).await
    };
    assert_eq!(status().await, 200, "insecure: any certificate");

    let mut reload = async |keys: &str| {
        let report = running.reload(&config(&text(keys))).await.expect("reload");
        assert_eq!(report.listeners_started, 0, "{keys}");
        report.pools_rebuilt
    };
    assert_eq!(reload("tls_insecure = false\n").await, 1);
    assert_eq!(
        status().await,
        502,
        "verified against the system bundle, which does not hold the self-signed certificate"
    );
    assert_eq!(reload(&ca_keys("localhost")).await, 1);
    assert_eq!(
        status().await,
        200,
        "ca_file holds the backend's certificate"
    );
    assert_eq!(reload(&ca_keys("localhost")).await, 0, "nothing changed");
    assert_eq!(status().await, 200);

    assert_eq!(reload(&ca_keys("elsewhere.example")).await, 1);
    assert_eq!(status().await, 502, "the certificate is not for this name");
    assert_eq!(reload(&ca_keys("localhost")).await, 1);
    assert_eq!(status().await, 200);

    std::fs::write(&ca, &stranger).expect("write ca");
    assert_eq!(
        reload(&ca_keys("localhost")).await,
        1,
        "same path, new content"
    );
    assert_eq!(
        status().await,
        502,
        "the new CA did not sign the backend's certificate"
    );
    std::fs::write(&ca, &backend.cert_pem).expect("write ca");
    assert_eq!(reload(&ca_keys("localhost")).await, 1);
    assert_eq!(status().await, 200);

    assert_eq!(reload("tls_insecure = true\n").await, 1);
    std::fs::write(&ca, &stranger).expect("write ca");
    assert_eq!(
        status().await,
        200,
        "insecure again: the CA file is not read"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A listener moving from a wildcard address to a specific one on the same port (which the
/// wildcard socket blocks until it closes) is rebound after the old socket closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moves_a_listener_off_a_wildcard_address_on_its_port() {
    let a = http_server::start(Behaviour::default()).await;
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let text = |ip: &str| file(&[(a.addr, 1)], &[("w", &format!("{ip}:{port}"))]);
    let mut running = l7::serve(config(&text("0.0.0.0"))).await.expect("serve");
    let report = running
        .reload(&config(&text("127.0.0.1")))
        .await
        .expect("reload");
    assert_eq!((report.listeners_started, report.listeners_stopped), (1, 1));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    assert_eq!(running.listeners, [("w".to_owned(), addr)]);
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(get(&mut tcp).await, 200);
}
