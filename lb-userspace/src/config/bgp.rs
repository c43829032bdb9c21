//! The `[bgp]` section: this node announces its VIPs to the routers through BIRD 2.
//!
//! ```toml
//! [bgp]
//! bird_config = "/etc/lb/bird.conf"    # lb runs `bird -f -c FILE -s SOCKET` and stops it with
//!                                      # itself; the file holds the sessions (neighbors, ASNs)
//!                                      # and includes routes_file
//! # bird_config left out: a BIRD run by someone else, reached at control_socket
//! routes_file = "/run/lb/bird-vips.conf"  # lb writes the VIPs to announce here (protocols
//!                                      # lb_vips4 and lb_vips6), then tells BIRD to re-read
//! control_socket = "/run/lb/bird.ctl"  # default: /run/lb/bird.ctl when lb runs BIRD,
//!                                      # /run/bird/bird.ctl (Debian's) when it does not
//! bird = "bird"                        # the BIRD binary lb runs (PATH is searched)
//! drain_wait = "2s"                    # on SIGTERM: after withdrawing, keep forwarding this
//!                                      # long (routers move the flows away), then stop
//! ```
use std::{ops::Range, path::Path, path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, value::duration};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpConfig {
    /// The BIRD configuration lb runs BIRD with (None: BIRD runs on its own).
    pub bird_config: Option<PathBuf>,
    pub bird: PathBuf,
    pub control_socket: PathBuf,
    pub routes_file: PathBuf,
    pub drain_wait: Duration,
}

const DEFAULT_ROUTES_FILE: &str = "/run/lb/bird-vips.conf";
/// Where lb puts the control socket of the BIRD it runs.
const OWN_CONTROL_SOCKET: &str = "/run/lb/bird.ctl";
/// Where Debian's bird2 service puts its control socket.
const SYSTEM_CONTROL_SOCKET: &str = "/run/bird/bird.ctl";
const DEFAULT_DRAIN_WAIT: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBgp {
    bird_config: Option<Spanned<String>>,
    bird: Option<Spanned<String>>,
    control_socket: Option<Spanned<String>>,
    routes_file: Option<Spanned<String>>,
    drain_wait: Option<Spanned<String>>,
}

impl BgpConfig {
    pub(crate) fn from_raw(
        raw: Spanned<RawBgp>,
        text: &str,
        path: &Path,
    ) -> Result<Self, ConfigError> {
        let err = |span: Range<usize>, message: String| ConfigError::at(path, text, span, message);
        let raw = raw.into_inner();
        let file = |value: &Option<Spanned<String>>, what: &str| {
            value
                .as_ref()
                .map(|v| {
                    if v.get_ref().is_empty() {
                        Err(err(v.span(), format!("{what} must not be empty")))
                    } else {
                        Ok(PathBuf::from(v.get_ref()))
                    }
                })
                .transpose()
        };
        let bird_config = file(&raw.bird_config, "bird_config")?;
        if let (Some(value), Some(bird_config)) = (&raw.bird_config, &bird_config)
            && !bird_config.is_file()
        {
            return Err(err(
                value.span(),
                format!("bird_config {}: no such file", bird_config.display()),
            ));
        }
        if let (Some(value), None) = (&raw.bird, &bird_config) {
            return Err(err(
                value.span(),
                "bird names the binary lb runs, and lb runs BIRD only with bird_config".to_owned(),
            ));
        }
        let control_socket = file(&raw.control_socket, "control_socket")?.unwrap_or_else(|| {
            PathBuf::from(if bird_config.is_some() {
                OWN_CONTROL_SOCKET
            } else {
                SYSTEM_CONTROL_SOCKET
            })
        });
        Ok(Self {
            bird: file(&raw.bird, "bird")?.unwrap_or_else(|| PathBuf::from("bird")),
            routes_file: file(&raw.routes_file, "routes_file")?
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ROUTES_FILE)),
            control_socket,
            drain_wait: duration(&raw.drain_wait, DEFAULT_DRAIN_WAIT, "drain_wait", &err)?,
            bird_config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BgpConfig, String> {
        let raw: crate::config::RawFile =
            crate::config::RawFile::parse(text, Path::new("lb.toml")).map_err(|e| e.to_string())?;
        BgpConfig::from_raw(raw.bgp.expect("[bgp]"), text, Path::new("lb.toml"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_external_bird_is_reached_at_debians_socket() {
        let bgp = parse("[bgp]\n").expect("valid");
        assert_eq!(bgp.bird_config, None);
        assert_eq!(bgp.control_socket, PathBuf::from(SYSTEM_CONTROL_SOCKET));
        assert_eq!(bgp.routes_file, PathBuf::from(DEFAULT_ROUTES_FILE));
        assert_eq!(bgp.drain_wait, DEFAULT_DRAIN_WAIT);
    }

    #[test]
    fn a_bird_lb_runs_gets_lbs_socket() {
        let dir = std::env::temp_dir().join(format!("lb-bgp-config-{}", std::process::id()));
        std::fs::write(&dir, "router id 10.0.0.1;\n").expect("write");
        let text = format!(
            "[bgp]\nbird_config = \"{}\"\ndrain_wait = \"500ms\"\n",
            dir.display()
        );
        let bgp = parse(&text);
        let _ = std::fs::remove_file(&dir);
        let bgp = bgp.expect("valid");
        assert_eq!(bgp.bird_config, Some(dir));
        assert_eq!(bgp.control_socket, PathBuf::from(OWN_CONTROL_SOCKET));
        assert_eq!(bgp.drain_wait, Duration::from_millis(500));
    }

    #[test]
    fn mistakes_name_their_line() {
        let e = parse("[bgp]\nbird_config = \"/nonexistent/bird.conf\"\n").expect_err("refused");
        assert!(e.contains("lb.toml:2") && e.contains("no such file"), "{e}");
        let e = parse("[bgp]\nbird = \"/usr/sbin/bird\"\n").expect_err("refused");
        assert!(
            e.contains("lb.toml:2") && e.contains("only with bird_config"),
            "{e}"
        );
        let e = parse("[bgp]\ndrain_wait = \"soon\"\n").expect_err("refused");
        assert!(e.contains("lb.toml:2") && e.contains("drain_wait"), "{e}");
        let e = parse("[bgp]\npeer = \"10.0.0.1\"\n").expect_err("refused");
        assert!(e.contains("peer"), "{e}");
    }
}
