//! OCSP stapling on TLS listeners (`ocsp` in `[[listener.tls]]`, issue 16): a CA, a leaf and
//! an OCSP response for it made by openssl here; `openssl s_client -status` sees the response
//! lb staples, and a reload staples the file's new content. A file that is not a successful
//! DER OCSP response is refused with FILE:LINE by `lb check-config`.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use lb_tests::{
    lb_bin,
    lb_run::{LbRun, wait_for},
};

const LIMIT: Duration = Duration::from_secs(30);

/// A private directory, removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A CA, a leaf for localhost signed by it, and `resp.der`: the CA's "good" OCSP answer for
/// the leaf (`openssl ocsp` as a responder over an index file), valid `days`.
fn pki(tag: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("lb-ocsp-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let d = Dir(dir);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=lb test CA",
    ]);
    openssl(&d.0, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&d.0, &csr);
    std::fs::write(d.0.join("ext"), "subjectAltName=DNS:localhost\n").expect("ext");
    openssl(
        &d.0,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "30",
            "-extfile",
            "ext",
        ],
    );
    d
}

/// Writes `name`: an OCSP response from the CA saying the leaf is good (`revoked`: revoked).
fn ocsp_response(d: &Dir, name: &str, revoked: bool) {
    let out = Command::new("openssl")
        .current_dir(&d.0)
        .args(["x509", "-in", "leaf.pem", "-noout", "-serial"])
        .output()
        .expect("serial");
    let serial = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_owned();
    let (status, when) = if revoked {
        ("R", "261201000000Z")
    } else {
        ("V", "")
    };
    std::fs::write(
        d.0.join("index.txt"),
        format!("{status}\t301231235959Z\t{when}\t{serial}\tunknown\t/CN=localhost\n"),
    )
    .expect("index");
    openssl(
        &d.0,
        &[
            "ocsp",
            "-issuer",
            "ca.pem",
            "-cert",
            "leaf.pem",
            "-reqout",
            "req.der",
            "-no_nonce",
        ],
    );
    openssl(
        &d.0,
        &[
            "ocsp",
            "-index",
            "index.txt",
            "-rsigner",
            "ca.pem",
            "-rkey",
            "ca.key",
            "-CA",
            "ca.pem",
            "-reqin",
            "req.der",
            "-respout",
            name,
            "-ndays",
            "7",
        ],
    );
}

fn file(d: &Dir, ocsp: &str) -> String {
    let p = |f: &str| d.0.join(f).display().to_string();
    format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"127.0.0.1:9\"\n\
         [[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\n\
         [[listener.tls]]\ncert = \"{}\"\nkey = \"{}\"\nocsp = \"{}\"\n\
         [[route]]\nlistener = \"tls\"\npool = \"web\"\n",
        p("leaf.pem"),
        p("leaf.key"),
        p(ocsp)
    )
}

/// What `openssl s_client -status` prints about the stapled response.
fn stapled(addr: std::net::SocketAddr, ca: &Path) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .args(["-status", "-CAfile"])
        .arg(ca)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_ocsp_response_is_stapled_and_a_reload_staples_the_new_one() {
    let d = pki("staple");
    ocsp_response(&d, "resp.der", false);
    let lb = LbRun::start("ocsp", &file(&d, "resp.der"), &[]);
    let addr = lb.listener("tls");
    let seen = stapled(addr, &d.0.join("ca.pem"));
    assert!(seen.contains("OCSP Response Status: successful"), "{seen}");
    assert!(seen.contains("Cert Status: good"), "{seen}");
    assert!(seen.contains("Verify return code: 0 (ok)"), "{seen}");

    // The responder now says revoked: a reload (the file changed in place, so the backend
    // file is touched to trigger it) staples that.
    ocsp_response(&d, "resp.der", true);
    let reloads = || lb.status()["config"]["reloads_ok"].as_u64().unwrap_or(0);
    let before = reloads();
    std::fs::write(&lb.file, file(&d, "resp.der") + "# touched\n").expect("touch");
    wait_for("the reload", LIMIT, || reloads() > before);
    let addr = lb.listener_now("tls").expect("tls listener");
    let seen = stapled(addr, &d.0.join("ca.pem"));
    assert!(seen.contains("Cert Status: revoked"), "{seen}");
}

#[test]
fn check_config_refuses_a_file_that_is_not_an_ocsp_response() {
    let d = pki("refuse");
    // A PEM certificate where the DER response should be.
    let config = d.0.join("lb.toml");
    let text = file(&d, "ca.pem");
    std::fs::write(&config, &text).expect("write");
    let out = Command::new(lb_bin())
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("lb check-config");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .position(|l| l.starts_with("ocsp = "))
        .expect("ocsp line")
        + 1;
    assert!(
        err.contains(&format!("lb.toml:{line}: listener \"tls\": "))
            && err.contains("not an OCSP response lb can staple: not DER"),
        "{err}"
    );
}
