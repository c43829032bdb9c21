//! `lb run` reloading under load: 8 keep-alive client connections send GETs without pause
//! while the backend file is rewritten 50 times (weights, the backend set, added routes; some
//! changes followed by a SIGHUP). Afterwards: no failed request, every client connection
//! still the one it opened (nothing reset or closed), one successful reload per change and
//! SIGHUP, and the last file in effect.
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use lb_tests::{
    lb_run::{LbRun, http, wait_for},
    named_backend,
};

const CLIENTS: usize = 8;
const CHANGES: usize = 50;

/// The backend file of change `i` (0 = the starting file): listener "main" stays the same;
/// pool "web" changes weights (i % 3 == 0), drops or re-adds its third backend (i % 3 == 1),
/// or gains a route (i % 3 == 2); the last change adds pool "final" and its route.
fn file(i: usize, listen: SocketAddr, web: &[SocketAddr; 3], last: SocketAddr) -> String {
    let mut text = format!(
        "# change {i}\n[[listener]]\nname = \"main\"\naddress = \"{listen}\"\n\n\
         [[pool]]\nname = \"web\"\nretries = 0\n"
    );
    let with_third = (i / 3).is_multiple_of(2) || i % 3 != 1;
    for (n, addr) in web.iter().enumerate() {
        if n == 2 && !with_third {
            continue;
        }
        let weight = 1 + (i + n) % 4;
        text += &format!("[[pool.backend]]\naddress = \"{addr}\"\nweight = {weight}\n");
    }
    for r in (2..=i).step_by(3) {
        text += &format!(
            "[[route]]\nlistener = \"main\"\npath_prefix = \"/extra-{r}\"\npool = \"web\"\n"
        );
    }
    if i == CHANGES {
        text += &format!(
            "[[pool]]\nname = \"final\"\n[[pool.backend]]\naddress = \"{last}\"\n\
             [[route]]\nlistener = \"main\"\npath_prefix = \"/final\"\npool = \"final\"\n"
        );
    }
    text + "[[route]]\nlistener = \"main\"\npool = \"web\"\n"
}

/// Replaces the file in one step (a reader never sees it half written).
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failures: AtomicU64,
    first_failure: std::sync::Mutex<Option<String>>,
}

impl Load {
    fn fail(&self, why: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.first_failure.lock() {
            f.get_or_insert(why);
        }
    }
}

/// One keep-alive connection sending GETs until `stop`; any error ends it as a failure.
fn client(addr: SocketAddr, load: &Load, stop: &AtomicBool) {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut writer = tcp.try_clone().expect("clone");
    let mut reader = BufReader::new(tcp);
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = writer.write_all(b"GET /load HTTP/1.1\r\nHost: t\r\n\r\n") {
            return load.fail(format!("write: {e}"));
        }
        let mut status = String::new();
        match reader.read_line(&mut status) {
            Ok(0) => return load.fail("connection closed by lb".into()),
            Err(e) => return load.fail(format!("read: {e}")),
            Ok(_) => {}
        }
        let mut length = None;
        loop {
            let mut line = String::new();
            if let Err(e) = reader.read_line(&mut line) {
                return load.fail(format!("read header: {e}"));
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let Some(length) = length else {
            return load.fail(format!("no Content-Length after {status:?}"));
        };
        let mut body = vec![0; length];
        if let Err(e) = std::io::Read::read_exact(&mut reader, &mut body) {
            return load.fail(format!("read body: {e}"));
        }
        if !status.starts_with("HTTP/1.1 200 ") {
            load.fail(format!(
                "{} {}",
                status.trim(),
                String::from_utf8_lossy(&body)
            ));
        } else {
            load.ok.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn fifty_reloads_under_keep_alive_load_lose_nothing() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let backends: Vec<_> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|name| runtime.block_on(named_backend::start(name, Duration::ZERO)))
        .collect();
    let web = [backends[0].addr, backends[1].addr, backends[2].addr];
    let last = backends[3].addr;
    // The starting file puts "main" on port 0; every change after names the port it got, so
    // the listener is unchanged across all of them.
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("literal");
    let lb = LbRun::start("reload", &file(0, any_port, &web, last), &[]);
    let listen = lb.listener("main");
    assert_ne!(listen.port(), 0);
    let before_final = http("GET", listen, "/final").1;
    assert!(
        before_final.ends_with(" /final\n") && !before_final.starts_with('d'),
        "no /final route yet: {before_final:?}"
    );

    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (load, stop) = (load.clone(), stop.clone());
            std::thread::spawn(move || client(listen, &load, &stop))
        })
        .collect();
    wait_for("load flowing", Duration::from_secs(5), || {
        load.ok.load(Ordering::Relaxed) > 100
    });

    let reloads = |lb: &LbRun| lb.status()["config"]["reloads_ok"].as_u64().unwrap_or(0);
    let mut expected = 0;
    let mut sighups = 0;
    for i in 1..=CHANGES {
        replace(&lb.file, &file(i, listen, &web, last));
        expected += 1;
        wait_for(
            &format!("reload of change {i}"),
            Duration::from_secs(5),
            || reloads(&lb) == expected,
        );
        if i % 5 == 0 {
            // Re-applying the same file must be just as harmless.
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(lb.pid() as i32),
                nix::sys::signal::Signal::SIGHUP,
            )
            .expect("SIGHUP");
            expected += 1;
            sighups += 1;
            wait_for(
                &format!("SIGHUP after change {i}"),
                Duration::from_secs(5),
                || reloads(&lb) == expected,
            );
        }
    }
    // A moment of load on the final configuration, then stop.
    let before = load.ok.load(Ordering::Relaxed);
    wait_for("load after the last reload", Duration::from_secs(5), || {
        load.ok.load(Ordering::Relaxed) > before + 100
    });
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }

    let ok = load.ok.load(Ordering::Relaxed);
    let failures = load.failures.load(Ordering::Relaxed);
    println!(
        "{CHANGES} file changes + {sighups} SIGHUPs under {CLIENTS} keep-alive connections: {ok} requests, {failures} failed"
    );
    assert_eq!(
        failures,
        0,
        "first failure: {:?}",
        load.first_failure.lock().ok().and_then(|f| f.clone())
    );
    let status = lb.status();
    assert_eq!(lb.listener_now("main"), Some(listen), "never moved");
    assert_eq!(status["config"]["reloads_ok"], expected);
    assert_eq!(status["config"]["reloads_failed"], 0);
    // The final file is in effect: the route added last answers from its pool, the third
    // backend is back (change 50 keeps it), and an early added route still routes.
    assert_eq!(http("GET", listen, "/final").1, "d /final\n");
    assert!(http("GET", listen, "/extra-2").1.ends_with(" /extra-2\n"));
    let pools = status["pools"].as_array().expect("pools");
    assert_eq!(pools.len(), 2);
    assert_eq!(pools[0]["backends"].as_array().map(Vec::len), Some(3));
    let served_c = backends[2].counts.requests.load(Ordering::Relaxed);
    assert!(served_c > 0, "c took load");
}
