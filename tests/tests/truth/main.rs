//! The report's truth: every page a process stored to through a shared
//! mapping is in the report (exactly, or as the kernel's coarser
//! granularity, labelled), no two files share an entry, and nothing else
//! is reported as written. Real faults on the real kernel.
//!
//! One test target (`--test truth`, as the VM runs it), a module per concern.

mod granularity;
mod names;
mod randomized;
mod stream;

use std::collections::BTreeSet;

use integration_tests::{ranges, trace_command, TraceRun};
use serde_json::Value;

/// The scripted workload, built with this test.
pub(crate) const SCRIPTED_WORKLOAD: &str = env!("CARGO_BIN_EXE_mw-workload");

/// The seeded random workload, built with this test.
pub(crate) const RANDOM_WORKLOAD: &str = env!("CARGO_BIN_EXE_mw-random");

pub(crate) fn trace(extra: &[&str], command: &[&str]) -> TraceRun {
    trace_command(command[0], extra, &command[1..])
}

pub(crate) fn pages(value: &Value) -> BTreeSet<u64> {
    ranges(value)
        .into_iter()
        .flat_map(|(first, last)| first..=last)
        .collect()
}

pub(crate) fn python(script: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec!["python3".to_string(), "-c".to_string(), script.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    all
}

pub(crate) fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
