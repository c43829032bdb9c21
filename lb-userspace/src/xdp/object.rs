//! The XDP object built by `build.rs`, embedded in the binary so `lb` ships as one file.
use std::path::Path;

use aya::{Ebpf, EbpfLoader, programs::Xdp};

use super::{XdpError, pin::PINNED_MAPS};

/// The ELF object of `lb-ebpf`, 8-byte aligned as the ELF parser wants it.
pub fn object_bytes() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"))
}

/// Loads the object and the named XDP program into the kernel (this is where the verifier runs),
/// without attaching it anywhere.
pub fn load(program: &'static str) -> Result<Ebpf, XdpError> {
    load_with(&mut EbpfLoader::new(), program)
}

/// Like [`load`], with the maps of [`PINNED_MAPS`] taken from pins in `dir` (created and pinned
/// there when absent).
pub fn load_pinned(program: &'static str, dir: &Path) -> Result<Ebpf, XdpError> {
    let mut loader = EbpfLoader::new();
    for name in PINNED_MAPS {
        loader.map_pin_path(name, dir.join(name));
    }
    load_with(&mut loader, program)
}

fn load_with(loader: &mut EbpfLoader<'_>, program: &'static str) -> Result<Ebpf, XdpError> {
    let missing = super::privilege::missing();
    if !missing.is_empty() {
        return Err(XdpError::Privilege(missing));
    }
    let mut ebpf = loader.load(object_bytes()).map_err(XdpError::Load)?;
    let prog: &mut Xdp = ebpf
        .program_mut(program)
        .ok_or(XdpError::MissingProgram(program))?
        .try_into()
        .map_err(|source| XdpError::Program {
            name: program,
            source,
        })?;
    prog.load().map_err(|source| XdpError::Program {
        name: program,
        source,
    })?;
    Ok(ebpf)
}
