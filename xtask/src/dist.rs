//! `cargo xtask dist`: the Debian package of lb, and the checks `cargo xtask test` runs on it.
//!
//! The package: `/usr/bin/lb`, the systemd unit `dist/lb.service` (Type=notify, SIGHUP
//! reload, a capability bounding set instead of full root), the default backend file
//! `dist/lb.toml` as `/etc/lb/lb.toml` (a conffile: upgrades keep the operator's edits), the
//! man page and shell completions lb prints itself (clap_mangen, clap_complete), and the docs.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

use super::{output, run};

#[derive(clap::Args)]
pub struct DistArgs {
    /// The lb binary to package (default: a release build of this tree, built now).
    #[arg(long)]
    pub lb: Option<PathBuf>,
    /// Where the package goes (default: target/dist).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// dpkg-deb compression (xz for releases; gzip is faster for checks).
    #[arg(long, default_value = "xz")]
    pub compression: String,
}

/// Builds the .deb and returns its path.
pub fn dist(ws: &Path, args: &DistArgs) -> Result<PathBuf> {
    let lb = match &args.lb {
        Some(lb) => lb.clone(),
        None => {
            // A fresh clone has no bpf-linker yet (the XDP object needs it).
            super::setup::build_tools(ws)?;
            run(Command::new(env!("CARGO")).current_dir(ws).args([
                "build",
                "--release",
                "-p",
                "lb-userspace",
                "--bin",
                "lb",
            ]))?;
            ws.join("target/release/lb")
        }
    };
    let out = args.out.clone().unwrap_or_else(|| ws.join("target/dist"));
    let version = output(Command::new(&lb).arg("--version"))?
        .trim()
        .strip_prefix("lb ")
        .map(str::to_owned)
        .context("lb --version: no version")?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let name = format!("lb_{version}_{arch}");
    let root = out.join(&name);
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
    }
    let put = |path: &str, bytes: &[u8], mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let file = root.join(path);
        if let Some(dir) = file.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(&file, bytes).with_context(|| format!("writing {}", file.display()))?;
        fs::set_permissions(&file, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", file.display()))
    };
    let binary = fs::read(&lb).with_context(|| format!("reading {}", lb.display()))?;
    put("usr/bin/lb", &binary, 0o755)?;
    put(
        "lib/systemd/system/lb.service",
        &fs::read(ws.join("dist/lb.service"))?,
        0o644,
    )?;
    put("etc/lb/lb.toml", &fs::read(ws.join("dist/lb.toml"))?, 0o644)?;
    let man = Command::new(&lb).arg("man").output().context("lb man")?;
    ensure!(man.status.success(), "lb man failed");
    put("usr/share/man/man1/lb.1.gz", &gzip(&man.stdout)?, 0o644)?;
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/lb"),
        ("zsh", "usr/share/zsh/vendor-completions/_lb"),
        ("fish", "usr/share/fish/vendor_completions.d/lb.fish"),
    ] {
        let text = output(Command::new(&lb).args(["completions", shell]))?;
        put(path, text.as_bytes(), 0o644)?;
    }
    for doc in ["README.md", "docs/CONFIG.md", "docs/ARCHITECTURE.md"] {
        let file = Path::new(doc)
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or(doc);
        put(
            &format!("usr/share/doc/lb/{file}.gz"),
            &gzip(&fs::read(ws.join(doc))?)?,
            0o644,
        )?;
    }
    put(
        "usr/share/doc/lb/examples/full.toml",
        &fs::read(ws.join("docs/examples/full.toml"))?,
        0o644,
    )?;
    let control = format!(
        "Package: lb\nVersion: {version}\nArchitecture: {arch}\nMaintainer: lb developers <lb@example.invalid>\n\
         Depends: libc6 (>= 2.34)\nSection: net\nPriority: optional\nHomepage: https://example.invalid/lb\n\
         Description: layered L4 (XDP) / L7 load balancer, reverse proxy and API gateway\n \
         One binary: an XDP fast path with Maglev and direct server return, and an HTTP/1.1 +\n \
         HTTP/2 reverse proxy with TLS, routing, health checks, caching, rate limits and\n \
         authentication. Start it with `systemctl enable --now lb` after editing\n \
         /etc/lb/lb.toml.\n"
    );
    put("DEBIAN/control", control.as_bytes(), 0o644)?;
    put("DEBIAN/conffiles", b"/etc/lb/lb.toml\n", 0o644)?;
    let deb = out.join(format!("{name}.deb"));
    run(Command::new("dpkg-deb")
        .arg("--root-owner-group")
        .arg(format!("-Z{}", args.compression))
        .arg("--build")
        .arg(&root)
        .arg(&deb))?;
    fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    eprintln!("dist: {}", deb.display());
    Ok(deb)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = Command::new("gzip")
        .args(["-9n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("gzip")?;
    child
        .stdin
        .take()
        .context("gzip stdin")?
        .write_all(bytes)
        .context("feeding gzip")?;
    let out = child.wait_with_output().context("gzip")?;
    ensure!(out.status.success(), "gzip failed");
    Ok(out.stdout)
}

/// What `cargo xtask test` checks of a package: its contents, that the unit passes
/// `systemd-analyze verify`, that the man page renders, that bash loads the completions, and
/// that the packaged binary and default file work together.
pub fn check(deb: &Path) -> Result<()> {
    let listing = output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    for path in [
        "./usr/bin/lb",
        "./lib/systemd/system/lb.service",
        "./etc/lb/lb.toml",
        "./usr/share/man/man1/lb.1.gz",
        "./usr/share/bash-completion/completions/lb",
        "./usr/share/doc/lb/CONFIG.md.gz",
    ] {
        ensure!(
            listing.lines().any(|l| l.ends_with(path)),
            "{} lacks {path}:\n{listing}",
            deb.display()
        );
    }
    let conffiles = output(Command::new("dpkg-deb").args(["--ctrl-tarfile"]).arg(deb))?;
    ensure!(!conffiles.is_empty(), "no control archive");
    let root = deb.with_extension("check");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    let lb = root.join("usr/bin/lb");
    // The unit as packaged, pointed at the extracted binary (verify checks that ExecStart
    // exists); the man page is the package's own, so systemd's man check is off.
    let unit = fs::read_to_string(root.join("lib/systemd/system/lb.service"))?;
    let checked_unit = root.join("lb.service");
    fs::write(
        &checked_unit,
        unit.replace("/usr/bin/lb", &lb.to_string_lossy()),
    )?;
    run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&checked_unit))?;
    ensure!(
        unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "the unit lost Type=notify or its reload"
    );
    let man = output(
        Command::new("man")
            .arg("-l")
            .arg(root.join("usr/share/man/man1/lb.1.gz"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80"),
    )?;
    ensure!(
        man.contains("NAME") && man.contains("SYNOPSIS") && man.contains("lb"),
        "the man page does not render:\n{man}"
    );
    let completion = root.join("usr/share/bash-completion/completions/lb");
    let complete = output(Command::new("bash").arg("-c").arg(format!(
        "source '{}' && complete -p lb",
        completion.display()
    )))?;
    ensure!(complete.contains("lb"), "bash did not load the completions");
    output(
        Command::new(&lb)
            .arg("check-config")
            .arg(root.join("etc/lb/lb.toml")),
    )
    .context("the packaged lb refuses the packaged /etc/lb/lb.toml")?;
    fs::remove_dir_all(&root)?;
    eprintln!("dist: {} checked", deb.display());
    Ok(())
}
