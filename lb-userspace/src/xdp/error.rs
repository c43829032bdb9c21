use thiserror::Error;

/// Everything that can go wrong between the embedded object and a running XDP program.
#[derive(Debug, Error)]
pub enum XdpError {
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
}
