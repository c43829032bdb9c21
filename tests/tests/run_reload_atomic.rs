//! `lb run` reloads all or nothing: a reload that moves a listener (http or tcp mode) onto a
//! port already in use is rejected and changes nothing (the old listeners and pool keep
//! serving, no request fails while it happens), a reload that changes a listener's settings
//! on the same address restarts it without refusing a connection, the next good reload
//! applies fully, and the status shows each listener's mode.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use lb_tests::{
    lb_run::{LbRun, wait_for},
    named_backend,
};

fn file(backend: SocketAddr, web: SocketAddr, raw: SocketAddr, extra_web: &str) -> String {
    format!(
        "[[pool]]\nname = \"web\"\nmax_fails = 0\n[[pool.backend]]\naddress = \"{backend}\"\n\
         [[listener]]\nname = \"web\"\naddress = \"{web}\"\n{extra_web}\
         [[listener]]\nname = \"raw\"\naddress = \"{raw}\"\nmode = \"tcp\"\n\
         [[listener]]\nname = \"dns\"\naddress = \"127.0.0.1:0\"\nmode = \"udp\"\n\
         [[route]]\nlistener = \"web\"\npool = \"web\"\n\
         [[route]]\nlistener = \"raw\"\npool = \"web\"\n\
         [[route]]\nlistener = \"dns\"\npool = \"web\"\n"
    )
}

/// Replaces the file in one step (a reader never sees it half written).
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// One request on a new connection with `extra` header lines: (status, body), or the error.
fn request(addr: SocketAddr, extra: &str) -> Result<(u16, String), String> {
    let mut tcp = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        tcp,
        "GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n"
    )
    .map_err(|e| format!("write {addr}: {e}"))?;
    let mut out = String::new();
    tcp.read_to_string(&mut out)
        .map_err(|e| format!("read {addr}: {e}"))?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no answer from {addr}: {out:?}"))?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((status, body))
}

#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// New connections to `addr` one after the other until `stop`, each expecting 200 from
/// backend "a".
fn client(addr: SocketAddr, load: &Load, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match request(addr, "") {
            Ok((200, body)) if body.starts_with("a ") => {
                load.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(other) => load
                .failures
                .lock()
                .expect("lock")
                .push(format!("{other:?}")),
            Err(e) => load.failures.lock().expect("lock").push(e),
        }
    }
}

/// Waits until both loads made `more` further successful requests.
fn more_requests(loads: &[Arc<Load>], more: u64) {
    let start: Vec<u64> = loads.iter().map(|l| l.ok.load(Ordering::Relaxed)).collect();
    wait_for("requests after the reload", Duration::from_secs(20), || {
        loads
            .iter()
            .zip(&start)
            .all(|(l, s)| l.ok.load(Ordering::Relaxed) >= s + more)
    });
}

#[test]
fn rejected_reloads_change_nothing_and_good_ones_apply_fully() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let a = runtime.block_on(named_backend::start("a", Duration::ZERO));
    let b = runtime.block_on(named_backend::start("b", Duration::ZERO));
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("literal");
    let lb = LbRun::start("atomic", &file(a.addr, any_port, any_port, ""), &[]);
    // Later files name the ports they got: "the same addresses".
    let (web, raw) = (lb.listener("web"), lb.listener("raw"));
    assert!(web.port() != 0 && raw.port() != 0 && web != raw);
    let kinds: Vec<(String, String)> = lb.status()["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| {
            let field = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
            (field("name"), field("kind"))
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("web".to_owned(), "http".to_owned()),
            ("raw".to_owned(), "tcp".to_owned()),
            ("dns".to_owned(), "udp".to_owned())
        ]
    );
    let config = |lb: &LbRun, key: &str| lb.status()["config"][key].as_u64().unwrap_or(0);

    let stop = Arc::new(AtomicBool::new(false));
    let loads = [Arc::new(Load::default()), Arc::new(Load::default())];
    let clients: Vec<_> = [web, raw]
        .into_iter()
        .zip(&loads)
        .map(|(addr, load)| {
            let (load, stop) = (load.clone(), stop.clone());
            std::thread::spawn(move || client(addr, &load, &stop))
        })
        .collect();
    more_requests(&loads, 20);

    // Same addresses, other settings: both restart on their sockets, nothing refused.
    let big_header = format!("X-Big: {}\r\n", "x".repeat(9000));
    assert_eq!(request(web, &big_header).map(|r| r.0), Ok(200));
    let mut text = file(a.addr, web, raw, "max_header_bytes = 8192\n").replace(
        "mode = \"tcp\"\n",
        "mode = \"tcp\"\nidle_timeout = \"5m\"\n",
    );
    replace(&lb.file, &text);
    wait_for("the settings reload", Duration::from_secs(10), || {
        config(&lb, "reloads_ok") == 1
    });
    assert_eq!(
        request(web, &big_header).map(|r| r.0),
        Ok(431),
        "the restarted listener has the new head limit"
    );
    more_requests(&loads, 20);

    // Moving either listener onto a port in use (and pointing the pool elsewhere): rejected.
    let squatter = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = squatter.local_addr().expect("addr");
    for (n, (moved_web, moved_raw)) in [(taken, raw), (web, taken)].into_iter().enumerate() {
        text = file(b.addr, moved_web, moved_raw, "max_header_bytes = 8192\n");
        replace(&lb.file, &text);
        wait_for("the rejected reload", Duration::from_secs(10), || {
            config(&lb, "reloads_failed") == n as u64 + 1
        });
        let error = lb.status()["config"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = if n == 0 { "web" } else { "raw" };
        assert!(
            error.contains(&format!("binding listener {name} on {taken}")),
            "{error}"
        );
        more_requests(&loads, 20);
    }
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().expect("client"));
    let failures = loads
        .iter()
        .flat_map(|l| l.failures.lock().expect("lock").clone())
        .collect::<Vec<_>>();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(config(&lb, "reloads_ok"), 1);
    assert_eq!(
        b.counts.requests.load(Ordering::Relaxed),
        0,
        "pool unchanged"
    );

    // A good reload: both listeners move (to ports the kernel picks), the pool changes.
    drop(squatter);
    replace(&lb.file, &file(b.addr, any_port, any_port, ""));
    wait_for("the good reload", Duration::from_secs(10), || {
        config(&lb, "reloads_ok") == 2
    });
    let (web2, raw2) = (
        lb.listener_now("web").expect("web listed"),
        lb.listener_now("raw").expect("raw listed"),
    );
    assert!(web2 != web && raw2 != raw && web2.port() != 0 && raw2.port() != 0);
    for addr in [web2, raw2] {
        let (status, body) = request(addr, "").expect("request");
        assert_eq!((status, body.split(' ').next()), (200, Some("b")), "{addr}");
    }
    for addr in [web, raw] {
        assert!(TcpStream::connect(addr).is_err(), "{addr} closed");
    }
}
