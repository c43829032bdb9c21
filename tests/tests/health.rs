//! Active health checks against real sockets: TCP connect, HTTP status and body, HTTPS, and the
//! checker's rise/fall transitions as a backend stops and comes back.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use lb::health::{
    CheckKind, HealthCheckConfig, HealthState, HealthTarget, ProbeError, probe, spawn_checker,
};
use tokio::net::TcpListener;

/// A backend answering `/ok` with 200 "all healthy" and anything else with 503; with `tls`, it
/// speaks HTTPS with a self-signed certificate.
async fn backend_on(listener: TcpListener, tls: bool) -> tokio::task::JoinHandle<()> {
    let acceptor = tls.then(|| {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let (status, body) = if req.uri().path() == "/ok" {
                        (200, "all healthy")
                    } else {
                        (503, "sick")
                    };
                    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                    Ok::<_, Infallible>(r)
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(a) => {
                        if let Ok(s) = a.accept(tcp).await {
                            let _ = builder.serve_connection(TokioIo::new(s), service).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                    }
                }
            });
        }
    })
}

async fn backend(tls: bool) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (addr, backend_on(listener, tls).await)
}

fn http(tls: bool, path: &str, body: Option<&str>) -> CheckKind {
    CheckKind::Http {
        tls,
        path: path.into(),
        host: None,
        expect_status: (200, 299),
        expect_body: body.map(str::to_owned),
    }
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

const T: Duration = Duration::from_secs(2);

#[tokio::test]
async fn probes_check_connect_status_and_body() {
    let (plain, _p) = backend(false).await;
    let (secure, _s) = backend(true).await;
    let dead = closed_port().await;

    assert!(probe(&CheckKind::Tcp, plain, T).await.is_ok());
    assert!(matches!(
        probe(&CheckKind::Tcp, dead, T).await,
        Err(ProbeError::Connect(_))
    ));
    assert!(
        probe(&http(false, "/ok", Some("healthy")), plain, T)
            .await
            .is_ok()
    );
    assert!(matches!(
        probe(&http(false, "/nope", None), plain, T).await,
        Err(ProbeError::Status(503, 200, 299))
    ));
    assert!(matches!(
        probe(&http(false, "/ok", Some("missing")), plain, T).await,
        Err(ProbeError::Body(_))
    ));
    assert!(
        probe(&http(true, "/ok", Some("healthy")), secure, T)
            .await
            .is_ok()
    );
    assert!(
        matches!(
            probe(&http(true, "/ok", None), plain, T).await,
            Err(ProbeError::Tls(_))
        ),
        "HTTPS check of a plain-HTTP backend fails in the handshake"
    );

    // A backend that accepts but never answers: the timeout bounds the check.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    // A Timeout (not a hang, not another error) shows the probe's own deadline ended it.
    assert!(matches!(
        probe(
            &http(false, "/ok", None),
            silent_addr,
            Duration::from_millis(200)
        )
        .await,
        Err(ProbeError::Timeout)
    ));
    drop(silent);
}

#[tokio::test]
async fn checker_marks_a_stopped_backend_down_and_a_restarted_one_up() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = backend_on(listener, false).await;
    let config = Arc::new(HealthCheckConfig {
        kind: http(false, "/ok", None),
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(40),
        rise: 2,
        fall: 3,
        slow_start: Duration::ZERO,
    });
    let state = Arc::new(Mutex::new(HealthState::new(2, 3, true)));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _checks = spawn_checker(
        config,
        vec![HealthTarget {
            pool: "web".into(),
            index: 0,
            addr,
            state: state.clone(),
        }],
        tx,
    );
    // Healthy: its first passing check is reported (no change of state: it started up, but
    // now it is known to work), then no event for a while, checks counted.
    let first = rx.recv().await.expect("first pass");
    assert!(first.up && first.first_pass, "{first:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err()
    );
    assert!(state.lock().expect("state").checks >= 3);

    server.abort();
    let _ = server.await;
    let down = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("down event in time")
        .expect("event");
    assert_eq!((down.pool.as_str(), down.index, down.up), ("web", 0, false));
    assert!(down.reason.is_some_and(|r| r.contains("connect")));
    assert!(!state.lock().expect("state").is_up());

    let listener = TcpListener::bind(addr).await.expect("rebind the same port");
    let _server = backend_on(listener, false).await;
    let up = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("up event in time")
        .expect("event");
    assert!(up.up);
    assert!(state.lock().expect("state").is_up());
}
