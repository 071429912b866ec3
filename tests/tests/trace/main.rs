//! `mmapwatch trace` against the real kernel. Every test generates real
//! faults with `mw-workload` and asserts the exact files and pages reported.
//! Run as root, one at a time: `cargo xtask test`.
//!
//! One test target (`--test trace`, as the VM runs it), a module per concern.

mod cli;
mod doctor;
mod durability;
mod folios;
mod pages;
mod replay;
mod stacks;
mod users;
mod writers;

use integration_tests::{trace_command, TraceRun, Workload};

pub(crate) const COMM: &str = "mw-workload";
pub(crate) const WORKLOAD: &str = env!("CARGO_BIN_EXE_mw-workload");

/// `mmapwatch trace --json [extra] -- mw-workload ...`.
pub(crate) fn trace_workload(extra: &[&str], workload: &Workload) -> TraceRun {
    trace_command(WORKLOAD, extra, &workload.args())
}
