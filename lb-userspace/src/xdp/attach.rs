//! Attaching the datapath to an interface, and detaching it again.
use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lb_common::{map_names, program_names};

use super::{XdpError, load, load_pinned, pin};

/// How to attach, as the operator asks for it on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) mode when the driver supports it, otherwise generic.
    Auto,
    /// Native (driver) mode only: fails if the driver has no XDP support.
    Native,
    /// Generic (skb) mode: works on every interface, slower.
    Skb,
}

/// The datapath loaded and attached to one interface. Dropping it closes the program's link:
/// an unpinned attachment is then gone, so a process that exits, even by panic, leaves nothing
/// behind. A pinned one ([`attach_pinned`]) stays attached until its pins are removed
/// ([`AttachedXdp::detach`] does both).
pub struct AttachedXdp {
    ebpf: Ebpf,
    program: &'static str,
    iface: String,
    mode: &'static str,
    link: Option<XdpLinkId>,
    pin_dir: Option<PathBuf>,
    reused_link: bool,
    reused_maps: bool,
}

/// Loads `lb_xdp` (the verifier runs here) and attaches it to `iface` in the calling thread's
/// network namespace.
pub fn attach(iface: &str, mode: AttachMode) -> Result<AttachedXdp, XdpError> {
    attach_program(program_names::LB_XDP, iface, mode)
}

/// Like [`attach`], for any XDP program of the object (e.g. `lb_decap` on real servers).
pub fn attach_program(
    program: &'static str,
    iface: &str,
    mode: AttachMode,
) -> Result<AttachedXdp, XdpError> {
    let mut ebpf = load(program)?;
    let prog = xdp_program(&mut ebpf, program)?;
    let (link, mode) = attach_new(prog, iface, mode)?;
    Ok(AttachedXdp {
        ebpf,
        program,
        iface: iface.to_owned(),
        mode,
        link: Some(link),
        pin_dir: None,
        reused_link: false,
        reused_maps: false,
    })
}

/// Loads `lb_xdp` with its state maps pinned in `dir` and its link pinned there too, so the
/// fast path outlives this process. Pins a previous `lb` left are picked up: its maps are
/// reused as they are (connection table, flow tags, tables, counters), and the program behind
/// its link is replaced atomically (`bpf_link_update`), so no packet meets a detached
/// interface. bpffs is mounted on `/sys/fs/bpf` if `dir` is below it and it is missing.
pub fn attach_pinned(iface: &str, mode: AttachMode, dir: &Path) -> Result<AttachedXdp, XdpError> {
    let program = program_names::LB_XDP;
    pin::ensure_pin_dir(dir)?;
    let existing = pin::find_link_pin(dir);
    if let Some((_, pinned)) = &existing {
        let asked = match mode {
            AttachMode::Auto => None,
            AttachMode::Native => Some("native"),
            AttachMode::Skb => Some("skb"),
        };
        if let Some(asked) = asked.filter(|a| a != pinned) {
            return Err(XdpError::PinnedMode {
                dir: dir.to_owned(),
                pinned,
                asked,
            });
        }
    }
    pin::check_pinned_maps(dir)?;
    let reused_maps = dir.join(map_names::VIPS).exists();
    let mut ebpf = load_pinned(program, dir)?;
    let prog = xdp_program(&mut ebpf, program)?;

    let mut reused = None;
    if let Some((path, pinned_mode)) = existing {
        match replace_pinned_program(prog, &path) {
            Ok(link) => reused = Some((link, pinned_mode)),
            Err(err) => {
                // E.g. the interface was deleted since (the link is defunct): start over.
                tracing::warn!(pin = %path.display(), error = %error_chain(&err), "pinned XDP link unusable; attaching anew");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let reused_link = reused.is_some();
    let (link, mode) = match reused {
        Some(found) => found,
        None => {
            let (link, mode) = attach_new(prog, iface, mode)?;
            (
                pin_link(prog, link, iface, &pin::link_pin(dir, mode))?,
                mode,
            )
        }
    };
    Ok(AttachedXdp {
        ebpf,
        program,
        iface: iface.to_owned(),
        mode,
        link: Some(link),
        pin_dir: Some(dir.to_owned()),
        reused_link,
        reused_maps,
    })
}

/// Points the pinned link at `prog` (atomic: the interface always has one program or the
/// other); the link then belongs to `prog`'s link set.
fn replace_pinned_program(prog: &mut Xdp, path: &Path) -> Result<XdpLinkId, XdpError> {
    let program_err = |source| XdpError::Program {
        name: program_names::LB_XDP,
        source,
    };
    let pinned = PinnedLink::from_pin(path).map_err(|source| XdpError::NotALink {
        iface: path.display().to_string(),
        source,
    })?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|source| XdpError::NotALink {
        iface: path.display().to_string(),
        source,
    })?;
    prog.attach_to_link(link).map_err(program_err)
}

/// Pins a freshly made link at `path`, keeping it in `prog`'s link set.
fn pin_link(
    prog: &mut Xdp,
    link: XdpLinkId,
    iface: &str,
    path: &Path,
) -> Result<XdpLinkId, XdpError> {
    let program_err = |source| XdpError::Program {
        name: program_names::LB_XDP,
        source,
    };
    let owned = prog.take_link(link).map_err(program_err)?;
    let fd_link = FdLink::try_from(owned).map_err(|source| XdpError::NotALink {
        iface: iface.to_owned(),
        source,
    })?;
    let pinned = fd_link.pin(path).map_err(|source| XdpError::PinLink {
        path: path.to_owned(),
        source,
    })?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|source| XdpError::NotALink {
        iface: iface.to_owned(),
        source,
    })?;
    // Same program: the update is a no-op that hands the link back to the program's set.
    prog.attach_to_link(link).map_err(program_err)
}

/// Attaches in the asked mode (auto: native, else generic); returns the link and the mode used.
fn attach_new(
    prog: &mut Xdp,
    iface: &str,
    mode: AttachMode,
) -> Result<(XdpLinkId, &'static str), XdpError> {
    let mut try_attach = |kernel_mode: XdpMode, name: &'static str| {
        prog.attach(iface, kernel_mode)
            .map(|link| (link, name))
            .map_err(|source| XdpError::Attach {
                iface: iface.to_owned(),
                mode: name,
                source,
            })
    };
    match mode {
        AttachMode::Native => try_attach(XdpMode::Driver, "native"),
        AttachMode::Skb => try_attach(XdpMode::Skb, "skb"),
        AttachMode::Auto => match try_attach(XdpMode::Driver, "native") {
            Ok(attached) => Ok(attached),
            Err(native_err) => {
                tracing::info!(%iface, error = %error_chain(&native_err), "native XDP unavailable, using generic (skb) mode");
                try_attach(XdpMode::Skb, "skb")
            }
        },
    }
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, XdpError> {
    ebpf.program_mut(name)
        .ok_or(XdpError::MissingProgram(name))?
        .try_into()
        .map_err(|source| XdpError::Program { name, source })
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

impl AttachedXdp {
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The mode actually in use: "native" or "skb".
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    /// The pin directory, for a pinned attachment.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Whether a previous `lb`'s pinned link was taken over (its program replaced in place).
    pub fn reused_link(&self) -> bool {
        self.reused_link
    }

    /// Whether a previous `lb`'s pinned maps were reused (their contents survive).
    pub fn reused_maps(&self) -> bool {
        self.reused_maps
    }

    /// Lets go of a pinned attachment without detaching: program, link and maps stay in the
    /// kernel, held by the pins, for the next `lb` to take over. (Unpinned: detaches.)
    pub fn leave_pinned(self) {
        if let Some(dir) = &self.pin_dir {
            tracing::info!(dir = %dir.display(), iface = %self.iface, "fast path left running, pinned");
        }
    }

    /// Removes the pins (if any), then detaches now and reports failure (dropping an unpinned
    /// attachment detaches too, but silently).
    pub fn detach(mut self) -> Result<(), XdpError> {
        if let Some(dir) = &self.pin_dir {
            pin::remove_pins(dir)?;
        }
        if let Some(link) = self.link.take() {
            xdp_program(&mut self.ebpf, self.program)?
                .detach(link)
                .map_err(|source| XdpError::Program {
                    name: self.program,
                    source,
                })?;
        }
        Ok(())
    }
}
