//! Why probes could not be loaded or attached (exit codes are the
//! command line's: `crate::error`).

use super::btf::BtfError;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("must run as root, or with CAP_BPF and CAP_PERFMON (try sudo)")]
    NotPrivileged,
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("tracefs is not mounted and could not be mounted at /sys/kernel/tracing: {0}")]
    NoTracefs(String),
    #[error("this kernel has no tracepoint {0}, which mmapwatch needs for {1}")]
    MissingTracepoint(String, &'static str),
    #[error("the tracepoint backend does not work on this kernel: it has no tracepoint {tracepoint} (x86 only), needed for {purpose}; {why}")]
    NoFaultHook {
        tracepoint: String,
        purpose: &'static str,
        why: String,
    },
    /// The kernel's interfaces differ from what the programs read
    /// (`probe::platform`).
    #[error("{0}")]
    Platform(String),
    #[error("the kernel rejected program {program}: {reason}")]
    Rejected { program: String, reason: String },
    #[error("could not attach {program}: {reason}")]
    Attach { program: String, reason: String },
    #[error("eBPF object: {0}")]
    Object(String),
    #[error("{map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{0}: missing from the eBPF object, or not of its kind")]
    MissingMap(&'static str),
    /// A map operation aya does not wrap (batch lookups, lookup-and-delete).
    #[error("{map}: {operation}: {source}")]
    MapSyscall {
        map: &'static str,
        operation: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("--backend {backend} does not work on this kernel: {reason}")]
    Backend {
        backend: &'static str,
        reason: String,
    },
}

impl LoadError {
    /// For `map_err` on an operation on the map `map`.
    pub(crate) fn on_map(map: &'static str) -> impl Fn(aya::maps::MapError) -> Self {
        move |source| Self::Map { map, source }
    }
}

/// One line of a load or attach error, without the verifier log's heading.
pub(crate) fn short_error(text: &str) -> String {
    first_line(text)
        .trim_end()
        .trim_end_matches("Verifier output:")
        .trim_end()
        .to_string()
}

/// The verifier log can run to thousands of lines; the error keeps the first
/// (full logs: RUST_LOG=debug).
pub(crate) fn first_line(text: &str) -> String {
    log::debug!("{text}");
    let line = text.lines().next().unwrap_or(text);
    if line.len() > 300 {
        format!("{}…", &line[..line.floor_char_boundary(300)])
    } else {
        line.to_string()
    }
}
