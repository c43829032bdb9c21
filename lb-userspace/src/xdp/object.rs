//! The XDP object built by `build.rs`, embedded in the binary so `lb` ships as one file.
use aya::{Ebpf, EbpfLoader, programs::Xdp};

use super::XdpError;

/// The ELF object of `lb-ebpf`, 8-byte aligned as the ELF parser wants it.
pub fn object_bytes() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"))
}

/// Loads the object and the named XDP program into the kernel (this is where the verifier runs),
/// without attaching it anywhere.
pub fn load(program: &'static str) -> Result<Ebpf, XdpError> {
    let mut ebpf = EbpfLoader::new()
        .load(object_bytes())
        .map_err(XdpError::Load)?;
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
