//! `lb ctl` against a running `lb run`: the status table lists both backends up; a drain sends
//! every new request to the other backend while an in-flight slow request to the drained one
//! completes; undrain restores it; API errors (unknown pool or backend, no lb) print
//! `lb ctl: ...` and exit non-zero.
use std::{
    net::SocketAddr,
    process::{Command, Output},
    sync::atomic::Ordering,
    time::Duration,
};

use lb_tests::{
    lb_bin,
    lb_run::{LbRun, RefusedPort, http, wait_for},
    named_backend,
};

fn ctl(admin: SocketAddr, args: &[&str]) -> Output {
    Command::new(lb_bin())
        .args(["ctl", "--admin", &admin.to_string()])
        .args(args)
        .output()
        .expect("run lb ctl")
}

/// `lb ctl status` rows of pool `web`: backend address -> the row's words.
fn backend_rows(admin: SocketAddr) -> Vec<Vec<String>> {
    let out = ctl(admin, &["status"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("web "))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

fn health(admin: SocketAddr, backend: SocketAddr) -> String {
    backend_rows(admin)
        .into_iter()
        .find(|row| row[1] == backend.to_string())
        .map(|row| row[2].clone())
        .unwrap_or_default()
}

#[test]
fn ctl_status_drain_undrain_and_errors() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let slow = Duration::from_millis(2500);
    let a = runtime.block_on(named_backend::start("a", slow));
    let b = runtime.block_on(named_backend::start("b", slow));
    let file = format!(
        "[[pool]]\nname = \"web\"\n\
         [pool.health_check]\ntype = \"http\"\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"80ms\"\n\
         [[pool.backend]]\naddress = \"{}\"\n[[pool.backend]]\naddress = \"{}\"\n",
        a.addr, b.addr
    );
    let lb = LbRun::start("ctl", &file, &["--listen", "127.0.0.1:0"]);
    let listen = lb.listener("listen-1");
    let admin = lb.admin;

    wait_for("both up in lb ctl status", Duration::from_secs(5), || {
        health(admin, a.addr) == "up" && health(admin, b.addr) == "up"
    });
    let rows = backend_rows(admin);
    assert_eq!(rows.len(), 2, "{rows:?}");
    // POOL BACKEND HEALTH WEIGHT IN-FLIGHT REQUESTS ERRORS REQ/S ERR%
    for row in &rows {
        assert_eq!(row.len(), 9, "{row:?}");
        assert_eq!(row[3], "1", "weight: {row:?}");
    }
    let pools = ctl(admin, &["pools"]);
    assert_eq!(
        String::from_utf8_lossy(&pools.stdout),
        "POOL  ALGORITHM    BACKENDS  SERVING  DISCOVERY\nweb   round_robin  2         2        -\n"
    );
    let json = ctl(admin, &["--json", "status"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("--json is JSON");
    assert_eq!(json["pools"][0]["name"], "web");

    // Slow requests, one at a time, until one is in progress on a (round robin alternates).
    let mut slow_requests = Vec::new();
    while a.counts.slow_in_progress.load(Ordering::Relaxed) == 0 {
        assert!(slow_requests.len() < 4, "no slow request reached a");
        let before =
            a.counts.requests.load(Ordering::Relaxed) + b.counts.requests.load(Ordering::Relaxed);
        slow_requests.push(std::thread::spawn(move || http("GET", listen, "/slow")));
        wait_for(
            "the slow request reached a backend",
            Duration::from_secs(2),
            || {
                a.counts.requests.load(Ordering::Relaxed)
                    + b.counts.requests.load(Ordering::Relaxed)
                    > before
            },
        );
    }

    let out = ctl(admin, &["drain", "web", &a.addr.to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("draining {} of pool web\n", a.addr)
    );
    assert_eq!(health(admin, a.addr), "draining");
    assert_eq!(
        a.counts.slow_in_progress.load(Ordering::Relaxed),
        1,
        "the slow request to a is still in flight after the drain"
    );
    let a_before = a.counts.requests.load(Ordering::Relaxed);
    for _ in 0..10 {
        assert_eq!(http("GET", listen, "/x"), (200, "b /x\n".to_owned()));
    }
    assert_eq!(
        a.counts.requests.load(Ordering::Relaxed),
        a_before,
        "a drained"
    );
    // The in-flight request to the drained backend finishes normally.
    let answers: Vec<(u16, String)> = slow_requests
        .into_iter()
        .map(|t| t.join().expect("slow request thread"))
        .collect();
    assert!(
        answers.contains(&(200, "a /slow\n".to_owned())),
        "{answers:?}"
    );
    assert!(answers.iter().all(|(code, _)| *code == 200), "{answers:?}");
    assert_eq!(a.counts.slow_done.load(Ordering::Relaxed), 1);

    let out = ctl(admin, &["undrain", "web", &a.addr.to_string()]);
    assert!(out.status.success(), "{out:?}");
    wait_for("a up again", Duration::from_secs(2), || {
        health(admin, a.addr) == "up"
    });
    let bodies: Vec<String> = (0..10).map(|_| http("GET", listen, "/y").1).collect();
    assert_eq!(
        bodies.iter().filter(|b| *b == "a /y\n").count(),
        5,
        "round robin over both again: {bodies:?}"
    );

    // Errors from the API: the manager's words, exit status 1.
    for (args, expected) in [
        (
            vec!["drain", "nope", "127.0.0.1:1"],
            "lb ctl: no pool \"nope\"\n".to_owned(),
        ),
        (
            vec!["undrain", "web", "10.9.9.9:80"],
            "lb ctl: pool \"web\" has no backend 10.9.9.9:80\n".to_owned(),
        ),
    ] {
        let out = ctl(admin, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), expected, "{args:?}");
        assert!(out.stdout.is_empty());
    }
    drop(lb);
    let refused = RefusedPort::new();
    let gone = refused.addr;
    let out = ctl(gone, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "lb ctl: cannot reach the admin API at {gone} (is `lb run` running?): "
        )),
        "{stderr}"
    );
}
