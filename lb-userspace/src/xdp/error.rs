use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong between the embedded object and a running XDP program.
#[derive(Debug, Error)]
pub enum XdpError {
    #[error(
        "the XDP tier needs CAP_BPF and CAP_NET_ADMIN (or root); this process lacks {}",
        .0.join(" and ")
    )]
    Privilege(Vec<&'static str>),
    #[error("loading the XDP object into the kernel")]
    Load(#[source] aya::EbpfError),
    #[error("program {0} is missing from the XDP object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the XDP object")]
    MissingMap(&'static str),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching to interface {iface} in {mode} mode")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("reading map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("setting up the aya-log reader")]
    Log(#[source] aya_log::Error),
    #[error("watching the aya-log ring buffer")]
    LogPoll(#[source] std::io::Error),
    #[error("parsing the embedded XDP object")]
    Object(#[source] aya_obj::ParseError),
    #[error("pin directory {dir}")]
    PinDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading pinned map {path}")]
    PinnedMap {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "pinned map {path} does not fit this lb ({detail}); remove the pins (see README) and start again"
    )]
    IncompatiblePin { path: PathBuf, detail: String },
    #[error(
        "the datapath pinned in {dir} is attached in {pinned} mode, not {asked}; ask for {pinned} (or auto), or remove the pins"
    )]
    PinnedMode {
        dir: PathBuf,
        pinned: &'static str,
        asked: &'static str,
    },
    #[error("pinning the XDP link at {path}")]
    PinLink {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error(
        "the XDP attachment on {iface} is not a bpf_link (kernel too old?), so it cannot be pinned"
    )]
    NotALink {
        iface: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
}
