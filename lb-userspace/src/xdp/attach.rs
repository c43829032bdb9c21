//! Attaching the datapath to an interface, and detaching it again.
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use lb_common::program_names;

use super::{XdpError, load};

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

/// The datapath loaded and attached to one interface. Dropping it detaches the program (aya owns
/// the bpf_link and closes it), so a process that exits, even by panic, leaves nothing behind.
pub struct AttachedXdp {
    ebpf: Ebpf,
    program: &'static str,
    iface: String,
    mode: &'static str,
    link: Option<XdpLinkId>,
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
    let try_attach = |prog: &mut Xdp, kernel_mode: XdpMode, name: &'static str| {
        prog.attach(iface, kernel_mode)
            .map(|link| (link, name))
            .map_err(|source| XdpError::Attach {
                iface: iface.to_owned(),
                mode: name,
                source,
            })
    };
    let (link, mode) = match mode {
        AttachMode::Native => try_attach(prog, XdpMode::Driver, "native")?,
        AttachMode::Skb => try_attach(prog, XdpMode::Skb, "skb")?,
        AttachMode::Auto => match try_attach(prog, XdpMode::Driver, "native") {
            Ok(attached) => attached,
            Err(native_err) => {
                tracing::info!(%iface, error = %error_chain(&native_err), "native XDP unavailable, using generic (skb) mode");
                try_attach(prog, XdpMode::Skb, "skb")?
            }
        },
    };
    Ok(AttachedXdp {
        ebpf,
        program,
        iface: iface.to_owned(),
        mode,
        link: Some(link),
    })
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

    /// Detaches now and reports failure (dropping detaches too, but silently).
    pub fn detach(mut self) -> Result<(), XdpError> {
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
