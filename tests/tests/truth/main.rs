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

use integration_tests::{mmapwatch, ranges, run, TraceRun};
use serde_json::Value;

/// The scripted workload, built with this test.
pub(crate) const SCRIPTED_WORKLOAD: &str = env!("CARGO_BIN_EXE_mw-workload");

/// The seeded random workload, built with this test.
pub(crate) const RANDOM_WORKLOAD: &str = env!("CARGO_BIN_EXE_mw-random");

pub(crate) fn trace(extra: &[&str], command: &[&str]) -> TraceRun {
    let output = run(mmapwatch(&["trace", "--json"])
        .args(extra)
        .arg("--")
        .args(command));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|err| panic!("no JSON ({err}):\n{stdout}\n{stderr}"));
    TraceRun {
        status: output.status,
        json,
        stderr,
    }
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
