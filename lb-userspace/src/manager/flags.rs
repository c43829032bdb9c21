//! `lb run`'s single-service flags (`--listen`, `--vip`, `--tls-cert/--tls-key`,
//! `--proxy-protocol`, `--algorithm`) turned into backend-file sections, so a service started
//! from flags is validated, reloaded and shown exactly like one written in the file.
//!
//! The flags serve the file's pool named `default`, or its only pool. They become:
//! - per `--listen ADDR:PORT`: a `[[listener]]` named `listen-N` (HTTPS with the `--tls-cert`
//!   certificates that follow it on the command line, the first being the default; PROXY
//!   headers accepted from any source with
//!   `--proxy-protocol`) and a catch-all `[[route]]` to the pool, after the file's own routes;
//! - per `--vip ADDR:PORT[/tcp|udp]`: a `[[vip]]` taking its reals from the pool, forwarded to
//!   this host's stack (`local`) when lb also listens here, else encapsulated to the backends.
use std::{net::SocketAddr, path::Path, path::PathBuf};

use crate::{
    config::{Config, ConfigError, RawFile},
    l7::Algorithm,
};

#[derive(Clone, Debug, Default)]
pub struct ServiceFlags {
    pub listen: Vec<SocketAddr>,
    /// `ADDR:PORT` or `ADDR:PORT/tcp|udp`.
    pub vips: Vec<String>,
    /// (index of the --listen it follows, certificate, key).
    pub tls: Vec<(usize, PathBuf, PathBuf)>,
    pub proxy_protocol: bool,
    pub algorithm: Option<Algorithm>,
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

impl ServiceFlags {
    pub fn is_empty(&self) -> bool {
        self.listen.is_empty() && self.vips.is_empty()
    }

    /// The sections these flags add for `pool`.
    fn sections(&self, pool: &str) -> Result<String, String> {
        let mut out = String::from("\n# --- from command-line flags ---\n");
        if let Some((_, cert, _)) = self.tls.iter().find(|t| t.0 >= self.listen.len()) {
            return Err(format!(
                "--tls-cert {} must follow the --listen it is for",
                cert.display()
            ));
        }
        for (i, addr) in self.listen.iter().enumerate() {
            let name = format!("listen-{}", i + 1);
            out += &format!(
                "[[listener]]\nname = {}\naddress = {}\n",
                quoted(&name),
                quoted(&addr.to_string())
            );
            if self.proxy_protocol {
                out += "proxy_protocol_from = [\"0.0.0.0/0\", \"::/0\"]\n";
            }
            for (_, cert, key) in self.tls.iter().filter(|t| t.0 == i) {
                out += &format!(
                    "[[listener.tls]]\ncert = {}\nkey = {}\n",
                    quoted(&cert.to_string_lossy()),
                    quoted(&key.to_string_lossy())
                );
            }
            out += &format!(
                "[[route]]\nlistener = {}\npool = {}\n",
                quoted(&name),
                quoted(pool)
            );
        }
        let forward = if self.listen.is_empty() {
            "encap"
        } else {
            "local"
        };
        for vip in &self.vips {
            let (addr, protocol) = match vip.rsplit_once('/') {
                Some((a, p @ ("tcp" | "udp"))) => (a, p),
                Some((_, p)) => {
                    return Err(format!("--vip {vip}: protocol {p:?} is not tcp or udp"));
                }
                None => (vip.as_str(), "tcp"),
            };
            out += &format!(
                "[[vip]]\naddress = {}\nprotocol = {}\nforward = {}\npool = {}\n",
                quoted(addr),
                quoted(protocol),
                quoted(forward),
                quoted(pool)
            );
        }
        Ok(out)
    }
}

/// Reads the backend file and adds the flags' service. Errors in the file name its lines;
/// errors the flags cause say so.
pub fn load(path: &Path, flags: &ServiceFlags) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_owned(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    if flags.is_empty() {
        return Config::parse(&text, path);
    }
    let flag_error = |message: String| ConfigError {
        path: path.to_owned(),
        line: 0,
        message: format!("command-line flags: {message}"),
    };
    let names = RawFile::parse(&text, path)?.pool_names();
    let pool = if names.contains("default") {
        "default".to_owned()
    } else if names.len() == 1 {
        names.into_iter().next().unwrap_or_default()
    } else {
        return Err(flag_error(format!(
            "--listen/--vip serve the pool named \"default\" or the file's only pool; the file has {} pools and none is named default",
            names.len()
        )));
    };
    let file_lines = text.lines().count();
    let combined = format!("{text}\n{}", flags.sections(&pool).map_err(flag_error)?);
    let mut config = Config::parse(&combined, path).map_err(|e| {
        if e.line > file_lines {
            flag_error(e.message)
        } else {
            e
        }
    })?;
    if let Some(algorithm) = flags.algorithm
        && let Some(p) = config.l7.pools.iter_mut().find(|p| p.name == pool)
    {
        p.algorithm = algorithm;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l4::Forward;

    fn file(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(text)
    }

    /// A file under the system temp dir, removed on drop.
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn with(text: &str) -> Self {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p =
                    std::env::temp_dir().join(format!("lb-flags-{}-{n}.toml", std::process::id()));
                std::fs::write(&p, text).expect("write temp file");
                Self(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    const POOL: &str = "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"10.0.0.1:80\"\n";

    #[test]
    fn flags_add_a_listener_route_and_local_vip_for_the_only_pool() {
        let f = file(POOL);
        let flags = ServiceFlags {
            listen: vec!["0.0.0.0:8080".parse().expect("addr")],
            vips: vec!["10.100.0.1:8080".into(), "10.100.0.1:53/udp".into()],
            proxy_protocol: true,
            algorithm: Some(Algorithm::LeastConn),
            ..ServiceFlags::default()
        };
        let c = load(&f.0, &flags).expect("loads");
        assert_eq!(c.l7.listeners.len(), 1);
        assert_eq!(c.l7.listeners[0].name, "listen-1");
        assert_eq!(c.l7.listeners[0].proxy_protocol_from.len(), 2);
        assert_eq!(c.l7.routes.len(), 1);
        assert_eq!(c.l7.routes[0].listener, "listen-1");
        assert_eq!(c.l7.pools[0].algorithm, Algorithm::LeastConn);
        assert_eq!(c.l4.vips.len(), 2);
        assert_eq!(c.l4.vips[0].forward, Forward::Local);
        assert_eq!(c.l4.vips[1].protocol, crate::l4::Protocol::Udp);
        assert_eq!(c.l4.vips[0].reals.len(), 1, "reals come from the pool");
    }

    #[test]
    fn certificates_go_to_the_listen_they_follow() {
        let flags = ServiceFlags {
            listen: vec![
                "127.0.0.1:80".parse().expect("addr"),
                "127.0.0.1:443".parse().expect("addr"),
            ],
            tls: vec![(1, "c.pem".into(), "k.pem".into())],
            ..ServiceFlags::default()
        };
        let sections = flags.sections("web").expect("sections");
        let (plain, tls) = sections
            .split_once("name = \"listen-2\"")
            .expect("two listeners");
        assert!(!plain.contains("[[listener.tls]]"), "{sections}");
        assert!(tls.contains("cert = \"c.pem\""), "{sections}");
        let orphan = ServiceFlags {
            tls: vec![(0, "c.pem".into(), "k.pem".into())],
            ..ServiceFlags::default()
        };
        assert_eq!(
            orphan.sections("web").expect_err("no listen"),
            "--tls-cert c.pem must follow the --listen it is for"
        );
    }

    #[test]
    fn flag_errors_say_they_come_from_flags_and_file_errors_keep_their_line() {
        let two = file(&format!("{POOL}[[pool]]\nname = \"api\"\n"));
        let flags = ServiceFlags {
            listen: vec!["127.0.0.1:80".parse().expect("addr")],
            ..ServiceFlags::default()
        };
        let err = load(&two.0, &flags)
            .expect_err("ambiguous pool")
            .to_string();
        assert!(err.ends_with(": command-line flags: --listen/--vip serve the pool named \"default\" or the file's only pool; the file has 2 pools and none is named default"), "{err}");

        let f = file(POOL);
        let bad_vip = ServiceFlags {
            vips: vec!["10.0.0.9:80/sctp".into()],
            ..ServiceFlags::default()
        };
        let err = load(&f.0, &bad_vip).expect_err("bad protocol").to_string();
        assert!(
            err.ends_with(
                ": command-line flags: --vip 10.0.0.9:80/sctp: protocol \"sctp\" is not tcp or udp"
            ),
            "{err}"
        );
        let port0 = ServiceFlags {
            vips: vec!["10.0.0.9:0".into()],
            ..ServiceFlags::default()
        };
        let err = load(&f.0, &port0).expect_err("port 0").to_string();
        assert!(
            err.ends_with(".toml: command-line flags: vip port 0 is reserved"),
            "{err}"
        );

        let broken = file(&format!("{POOL}bogus = 1\n"));
        let err = load(&broken.0, &flags)
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains(".toml:5: unknown field `bogus`"), "{err}");
    }
}
