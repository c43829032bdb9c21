//! `lb check-config FILE`: validates the backend file (both tiers, cross references, health
//! checks, CA files, certificates and keys loaded as a listener loads them) without starting
//! anything. Refuses what `lb run` refuses (the same parse and TLS loading), as
//! `FILE:LINE: reason`; warnings (a pool with no backends) go to stderr with exit 0.
use std::path::Path;

use lb::config::Config;

pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::from_file(path)?;
    for l in &config.l7.listeners {
        for cert in &l.tls {
            let ocsp = cert.ocsp.as_ref().map(|o| (o, cert.ocsp_line));
            let files = [(&cert.cert, cert.cert_line), (&cert.key, cert.key_line)];
            for (file, line) in files.into_iter().chain(ocsp) {
                std::fs::File::open(file).map_err(|e| {
                    anyhow::anyhow!(
                        "{}:{line}: listener {:?}: cannot read {}: {e}",
                        path.display(),
                        l.name,
                        file.display()
                    )
                })?;
            }
            // What a listener start (or reload) does with them: a key file without a private
            // key, or a key that does not match its certificate, is refused there too.
            lb::l7::check_certificate(cert).map_err(|e| {
                let line = if matches!(e, lb::l7::TlsError::Ocsp { .. }) {
                    cert.ocsp_line
                } else if e.is_about_key(cert) {
                    cert.key_line
                } else {
                    cert.cert_line
                };
                anyhow::anyhow!("{}:{line}: listener {:?}: {e}", path.display(), l.name)
            })?;
        }
    }
    if let Some(bgp) = &config.bgp {
        check_bird(path, bgp)?;
    }
    // The file was just read whole; a second read only feeds the warnings.
    if let Ok(text) = std::fs::read_to_string(path) {
        for warning in lb::config::checks::warnings(&text, path) {
            eprintln!("{warning}");
        }
    }
    let backends: usize = config.l7.pools.iter().map(|p| p.backends.len()).sum();
    println!(
        "{}: ok: {} vips, {} listeners, {} routes, {} pools, {} backends",
        path.display(),
        config.l4.vips.len(),
        config.l7.listeners.len(),
        config.l7.routes.len(),
        config.l7.pools.len(),
        backends
    );
    Ok(())
}

/// BIRD's own parse of the configuration `lb run` would start it with (`bird -p`); its
/// message names the BIRD file and line. The routes file it includes is written by `lb run`,
/// so without one there is nothing BIRD could parse yet: a warning says so.
fn check_bird(path: &Path, bgp: &lb::config::bgp::BgpConfig) -> anyhow::Result<()> {
    let Some(bird_config) = &bgp.bird_config else {
        return Ok(());
    };
    if !bgp.routes_file.exists() {
        eprintln!(
            "{}: warning: [bgp] bird_config {} not checked: it includes {}, which lb run writes at start",
            path.display(),
            bird_config.display(),
            bgp.routes_file.display()
        );
        return Ok(());
    }
    let out = std::process::Command::new(&bgp.bird)
        .arg("-p")
        .arg("-c")
        .arg(bird_config)
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: [bgp] cannot run {} to check {}: {e}",
                path.display(),
                bgp.bird.display(),
                bird_config.display()
            )
        })?;
    if !out.status.success() {
        anyhow::bail!(
            "{}: [bgp] BIRD refuses {}: {}",
            path.display(),
            bird_config.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
