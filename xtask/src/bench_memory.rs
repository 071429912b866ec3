//! The memory scenarios of `cargo xtask bench`: what mmapwatch keeps while
//! it traces what users actually do to it, read from /proc (peak and
//! current RSS of the tracer itself, not of its children).
//! - `trace` of one file written at 300,000 random pages of a sparse
//!   1 TiB shared mapping (a large memory-mapped index), report included;
//! - `export` through 300,000 new files at full speed, then after
//!   `--retain` has forgotten them and one more interval. System-wide, as
//!   a node's exporter runs: with `--path-prefix` over the new files each
//!   of them would have series of its own, as asked.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::{bench_new_files::wait_attached, mmapwatch_release, step};

const DIR: &str = "/dev/shm/mmapwatch-bench-memory";
pub const SPARSE_PAGES: u64 = 300_000;
pub const EXPORT_FILES: u64 = 300_000;
const RETAIN_SECS: u64 = 5;
const INTERVAL_SECS: u64 = 1;

pub struct MemoryResult {
    /// `trace`'s peak RSS over the sparse run, report included (KiB), and
    /// the pages its report gave the file.
    pub sparse_trace_peak_kib: u64,
    pub sparse_pages_reported: u64,
    /// `export`'s RSS once attached, at its peak through the new files,
    /// and after `--retain` plus an interval (KiB).
    pub export_start_kib: u64,
    pub export_peak_kib: u64,
    pub export_after_kib: u64,
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// mmapwatch with `args`, once it says it is attached.
fn start(args: &[&str]) -> Result<Child> {
    let mut child = Command::new(mmapwatch_release())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting mmapwatch")?;
    wait_attached(&mut child, &args.join(" "))?;
    Ok(child)
}

fn run_workload(workload: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(workload)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running mw-workload")?;
    if !status.success() {
        bail!("mw-workload {args:?} failed: {status}");
    }
    Ok(())
}

/// Stops `child` with SIGINT and returns its peak RSS, read until it is
/// gone (the report is made after the signal), and its standard output.
fn stop_reading_peak(mut child: Child) -> Result<(u64, Vec<u8>)> {
    let pid = child.id();
    // Read meanwhile: a report larger than the pipe would stall it.
    let mut stdout = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut bytes).map(|_| bytes)
    });
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let mut peak = 0;
    while child.try_wait()?.is_none() {
        if let Ok(kib) = status_kib(pid, "VmHWM") {
            peak = kib;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the output reader panicked"))??;
    Ok((peak, output))
}

pub fn run(workload: &Path) -> Result<MemoryResult> {
    let _ = std::fs::remove_dir_all(DIR);
    std::fs::create_dir_all(DIR)?;
    let sparse_file = Path::new(DIR).join("sparse");
    let tracer = start(&["trace", "--json", "--path-prefix", DIR])?;
    run_workload(
        workload,
        &[
            "sparse-pages",
            "--file",
            sparse_file.to_str().context("path")?,
            "--pages",
            &SPARSE_PAGES.to_string(),
        ],
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let (sparse_trace_peak_kib, report) = stop_reading_peak(tracer)?;
    std::fs::remove_file(&sparse_file)?;
    let report: serde_json::Value = serde_json::from_slice(&report).context("the trace report")?;
    let sparse_pages_reported = report["files"][0]["pages_written_count"]
        .as_u64()
        .context("no file in the sparse trace's report")?;
    step(&format!(
        "memory: trace of {SPARSE_PAGES} sparse pages peaked at {sparse_trace_peak_kib} KiB"
    ));

    let (retain, interval) = (format!("{RETAIN_SECS}s"), format!("{INTERVAL_SECS}s"));
    let exporter = start(&[
        "export",
        "--listen",
        "127.0.0.1:0",
        "--retain",
        &retain,
        "--interval",
        &interval,
    ])?;
    let pid = exporter.id();
    std::thread::sleep(Duration::from_secs(2));
    let export_start_kib = status_kib(pid, "VmRSS")?;
    let files = Path::new(DIR).join("files");
    run_workload(
        workload,
        &[
            "many-files",
            "--dir",
            files.to_str().context("path")?,
            "--files",
            &EXPORT_FILES.to_string(),
            "--per-second",
            "1000000000",
            "--sync-every",
            "1000000000",
        ],
    )?;
    std::thread::sleep(Duration::from_secs(INTERVAL_SECS + 1));
    let export_peak_kib = status_kib(pid, "VmHWM")?;
    std::fs::remove_dir_all(&files)?;
    std::thread::sleep(Duration::from_secs(RETAIN_SECS + 2 * INTERVAL_SECS + 1));
    let export_after_kib = status_kib(pid, "VmRSS")?;
    stop_reading_peak(exporter)?;
    let _ = std::fs::remove_dir_all(DIR);
    Ok(MemoryResult {
        sparse_trace_peak_kib,
        sparse_pages_reported,
        export_start_kib,
        export_peak_kib,
        export_after_kib,
    })
}

impl MemoryResult {
    pub fn sparse_trace_mib(&self) -> f64 {
        self.sparse_trace_peak_kib as f64 / 1024.0
    }

    pub fn export_peak_mib(&self) -> f64 {
        self.export_peak_kib as f64 / 1024.0
    }

    /// RSS after the forget over RSS at start.
    pub fn export_return_ratio(&self) -> f64 {
        self.export_after_kib as f64 / self.export_start_kib.max(1) as f64
    }

    pub fn render(&self) -> String {
        format!(
            "\n## Memory under churn\n\nThe tracer's own RSS (/proc), not its children's. `trace` of one file on tmpfs written at {SPARSE_PAGES} random pages of a sparse 1 TiB shared mapping (a large memory-mapped index), its report included: peak {:.1} MiB, {} pages reported. `export --retain {RETAIN_SECS}s --interval {INTERVAL_SECS}s` (system-wide, the default `--per-file-top`) through {EXPORT_FILES} new files at full speed (one page each, tmpfs): {:.1} MiB attached, {:.1} MiB at the peak, {:.1} MiB once `--retain` forgot them and an interval passed ({:.2}× the start).\n",
            self.sparse_trace_mib(),
            self.sparse_pages_reported,
            self.export_start_kib as f64 / 1024.0,
            self.export_peak_mib(),
            self.export_after_kib as f64 / 1024.0,
            self.export_return_ratio(),
        )
    }
}
