//! Failures the user can act on, each with its own exit code.

use crate::probe::LoadError;

/// Exit codes of mmapwatch's own failures. A traced `-- CMD` that runs
/// passes its own exit code through instead.
pub mod exit_code {
    /// Something failed at run time.
    pub const RUNTIME: u8 = 1;
    /// Bad flags or values (clap's convention).
    pub const USAGE: u8 = 2;
    /// Not root, and without CAP_BPF + CAP_PERFMON.
    pub const PRIVILEGES: u8 = 3;
    /// The kernel lacks something mmapwatch needs (BTF, tracefs, a tracepoint,
    /// a BPF feature).
    pub const KERNEL: u8 = 4;
    /// A `--pid` that does not exist.
    pub const NO_SUCH_PROCESS: u8 = 5;
    /// A listen address already in use.
    pub const ADDRESS_IN_USE: u8 = 6;
    /// `-- CMD` is not executable (the shell's convention).
    pub const COMMAND_NOT_EXECUTABLE: u8 = 126;
    /// `-- CMD` was not found (the shell's convention).
    pub const COMMAND_NOT_FOUND: u8 = 127;
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    #[error("command not found: {0}")]
    CommandNotFound(String),
    #[error("cannot execute {0}: {1}")]
    CommandNotExecutable(String, String),
    #[error("{0}")]
    Usage(String),
    #[error("cannot listen on {0}: the address is already in use")]
    AddressInUse(std::net::SocketAddr),
}

impl UserError {
    pub fn exit_code(&self) -> u8 {
        match self {
            UserError::NoSuchProcess(_) => exit_code::NO_SUCH_PROCESS,
            UserError::CommandNotFound(_) => exit_code::COMMAND_NOT_FOUND,
            UserError::CommandNotExecutable(..) => exit_code::COMMAND_NOT_EXECUTABLE,
            UserError::Usage(_) => exit_code::USAGE,
            UserError::AddressInUse(_) => exit_code::ADDRESS_IN_USE,
        }
    }
}

/// The exit code for a failure to load or attach the probes.
fn load_exit_code(error: &LoadError) -> u8 {
    match error {
        LoadError::NotPrivileged => exit_code::PRIVILEGES,
        LoadError::Btf(_)
        | LoadError::NoTracefs(_)
        | LoadError::MissingTracepoint(..)
        | LoadError::NoFaultHook { .. }
        | LoadError::Platform(_)
        | LoadError::Rejected { .. }
        | LoadError::Attach { .. }
        | LoadError::Backend { .. } => exit_code::KERNEL,
        LoadError::Object(_)
        | LoadError::Map { .. }
        | LoadError::MissingMap(_)
        | LoadError::MapSyscall { .. } => exit_code::RUNTIME,
    }
}

/// The exit code for an error chain: the first error in it that has one.
pub fn exit_code_for(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(user) = cause.downcast_ref::<UserError>() {
            return user.exit_code();
        }
        if let Some(load) = cause.downcast_ref::<LoadError>() {
            return load_exit_code(load);
        }
    }
    exit_code::RUNTIME
}
