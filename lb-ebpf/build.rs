//! Cargo does not rebuild a bin crate when its linker changes; make a new bpf-linker (e.g. after
//! a toolchain update, see xtask setup) trigger a relink.
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
