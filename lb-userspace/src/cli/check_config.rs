//! `lb check-config FILE`: validates the backend file (both tiers, cross references, health
//! checks, certificates readable) without starting anything.
use std::path::Path;

use lb::config::Config;

pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::from_file(path)?;
    for l in &config.l7.listeners {
        for cert in &l.tls {
            for (file, line) in [(&cert.cert, cert.cert_line), (&cert.key, cert.key_line)] {
                std::fs::File::open(file).map_err(|e| {
                    anyhow::anyhow!(
                        "{}:{line}: listener {:?}: cannot read {}: {e}",
                        path.display(),
                        l.name,
                        file.display()
                    )
                })?;
            }
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
