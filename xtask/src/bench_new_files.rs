//! The new-files scenario of `cargo xtask bench`: one process creating
//! files at full speed on tmpfs, one page of each written through a
//! shared mapping (open, ftruncate, mmap, store, munmap, close), bare and
//! under each front end tracing system-wide (`trace`, `top --batch`,
//! `export`). What it costs the writer, whether every file is reported
//! with its page, and what the tracer spends per file (syscalls, ring
//! bytes).

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{mmapwatch_release, step};

/// Files per run: enough that start-up and the final report are small
/// beside the churn itself.
pub const FILES: u64 = 50_000;
const DIR: &str = "/dev/shm/mmapwatch-bench-new-files";

#[derive(Clone, Copy, PartialEq)]
enum Under {
    Bare,
    Trace,
    Top,
    Export,
}

const UNDER: [Under; 4] = [Under::Bare, Under::Trace, Under::Top, Under::Export];

impl Under {
    fn name(self) -> &'static str {
        match self {
            Under::Bare => "bare",
            Under::Trace => "trace",
            Under::Top => "top --batch",
            Under::Export => "export",
        }
    }

    /// The front end, tracing system-wide, once its probes are attached.
    fn start(self) -> Result<Option<Child>> {
        let args: &[&str] = match self {
            Under::Bare => return Ok(None),
            Under::Trace => &["trace", "--json", "--path-prefix", DIR],
            Under::Top => &["top", "--batch", "--interval", "1s", "--path-prefix", DIR],
            Under::Export => &["export", "--listen", "127.0.0.1:0", "--path-prefix", DIR],
        };
        let mut child = Command::new(mmapwatch_release())
            .args(args)
            .stdout(if self == Under::Trace {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(if self == Under::Top {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .spawn()
            .context("starting mmapwatch")?;
        if self == Under::Top {
            // top --batch says nothing when it is attached (its tables go
            // to stdout, one an interval): past its start-up, with margin.
            std::thread::sleep(Duration::from_secs(2));
            return Ok(Some(child));
        }
        wait_attached(&mut child, self.name())?;
        Ok(Some(child))
    }
}

/// Waits for the line `trace` and `export` print on stderr once their
/// probes are attached.
pub(crate) fn wait_attached(child: &mut Child, what: &str) -> Result<()> {
    let mut line = String::new();
    BufReader::new(child.stderr.as_mut().context("stderr")?).read_line(&mut line)?;
    if !line.contains("tracing") && !line.contains("serving") {
        bail!("mmapwatch {what} did not start: {line}");
    }
    Ok(())
}

/// The writer's own time for `FILES` new files, in seconds.
fn write_files(workload: &Path, dir: &Path) -> Result<f64> {
    let output = Command::new(workload)
        .args(["many-files", "--dir"])
        .arg(dir)
        .args(["--files", &FILES.to_string()])
        .args(["--per-second", "1000000000", "--sync-every", "1000000000"])
        .stdout(Stdio::null())
        .output()
        .context("running mw-workload many-files")?;
    if !output.status.success() {
        bail!("mw-workload many-files failed: {}", output.status);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr
        .split_whitespace()
        .find_map(|word| word.strip_prefix("seconds="))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no seconds in: {stderr}"))
}

fn stop(child: Option<Child>) -> Result<Option<Value>> {
    let Some(child) = child else {
        return Ok(None);
    };
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output()?;
    if output.stdout.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        serde_json::from_slice(&output.stdout).context("the trace report")?,
    ))
}

pub struct NewFilesResult {
    /// Median writer seconds per front end, in `UNDER`'s order.
    pub seconds: [f64; 4],
    pub rounds: usize,
    /// From the last `trace` round: files reported with exactly their
    /// page, and events lost.
    pub exact_files: u64,
    pub lost: u64,
    pub records_per_file: f64,
    pub ring_bytes_per_file: f64,
    /// From a separate counting run (counting every syscall slows all).
    pub tracer_syscalls_per_file: f64,
}

/// Whether a report entry is file `many-i` with exactly page `i % 2`.
fn exact(file: &Value) -> bool {
    let Some(index) = file["path"]
        .as_str()
        .and_then(|p| p.rsplit_once("/many-"))
        .and_then(|(_, i)| i.parse::<u64>().ok())
    else {
        return false;
    };
    let page = index % 2;
    file["pages_written_count"] == 1 && file["pages_written"] == serde_json::json!([[page, page]])
}

pub fn run(workload: &Path, rounds: usize) -> Result<NewFilesResult> {
    let mut times: [Vec<f64>; 4] = Default::default();
    let (mut exact_files, mut lost, mut records_per_file, mut ring_bytes_per_file) =
        (0, 0, 0.0, 0.0);
    for round in 0..rounds {
        for under in UNDER {
            let dir = PathBuf::from(DIR).join(format!("r{round}"));
            let _ = std::fs::remove_dir_all(DIR);
            std::fs::create_dir_all(DIR)?;
            let tracer = under.start()?;
            let seconds = write_files(workload, &dir)?;
            // What is still in the ring is read before the report.
            std::thread::sleep(Duration::from_millis(1500));
            if let Some(report) = stop(tracer)? {
                let files = report["files"].as_array().map_or(&[][..], Vec::as_slice);
                exact_files = files.iter().filter(|f| exact(f)).count() as u64;
                lost = report["lost_events"].as_u64().unwrap_or(u64::MAX);
                records_per_file =
                    report["probe"]["records_submitted"].as_f64().unwrap_or(0.0) / FILES as f64;
                ring_bytes_per_file = report["probe"]["ring_bytes_submitted"]
                    .as_f64()
                    .unwrap_or(0.0)
                    / FILES as f64;
            }
            times[under as usize].push(seconds);
        }
        step(&format!("new files: round {}/{rounds}", round + 1));
    }
    let tracer_syscalls_per_file = count_tracer_syscalls(workload)? / FILES as f64;
    let _ = std::fs::remove_dir_all(DIR);
    Ok(NewFilesResult {
        seconds: times.map(|mut t| crate::bench::median(&mut t)),
        rounds,
        exact_files,
        lost,
        records_per_file,
        ring_bytes_per_file,
        tracer_syscalls_per_file,
    })
}

/// Syscalls `trace` makes from start to report over one run, counted by
/// bpftrace on the tracer's pid.
fn count_tracer_syscalls(workload: &Path) -> Result<f64> {
    let _ = std::fs::remove_dir_all(DIR);
    std::fs::create_dir_all(DIR)?;
    let tracer = Under::Trace.start()?.context("trace")?;
    let pid = tracer.id();
    let mut counter = Command::new("bpftrace")
        .args([
            "-e",
            &format!("tracepoint:raw_syscalls:sys_enter /pid == {pid}/ {{ @n = count(); }}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bpftrace")?;
    let mut line = String::new();
    let mut out = BufReader::new(counter.stdout.take().context("stdout")?);
    out.read_line(&mut line)?;
    std::thread::sleep(Duration::from_millis(500));
    write_files(workload, &PathBuf::from(DIR).join("count"))?;
    std::thread::sleep(Duration::from_millis(1500));
    stop(Some(tracer))?;
    // SAFETY: signals our own child.
    unsafe { libc::kill(counter.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest)?;
    counter.wait()?;
    rest.lines()
        .find_map(|l| l.trim().strip_prefix("@n:"))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no count from bpftrace: {rest}"))
}

impl NewFilesResult {
    pub fn ratio(&self, under: usize) -> f64 {
        self.seconds[under] / self.seconds[0]
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "\n## New files\n\nOne process creates {FILES} files on tmpfs at full speed, writing one page of each through a shared mapping (open, ftruncate, mmap, store, munmap, close), bare and with each front end tracing system-wide; the writer's own time, median of {} rounds, interleaved:\n\n| | bare | trace | top --batch | export |\n|---|---|---|---|---|\n| seconds | {:.2} | {:.2} | {:.2} | {:.2} |\n| / bare | 1.00 | {:.2}× | {:.2}× | {:.2}× |\n",
            self.rounds,
            self.seconds[0],
            self.seconds[1],
            self.seconds[2],
            self.seconds[3],
            self.ratio(1),
            self.ratio(2),
            self.ratio(3),
        );
        out.push_str(&format!(
            "\nBare rate: {:.0} files/s. Under `trace`: {} of {FILES} files reported with exactly their page, {} events lost; {:.2} ring records and {:.0} ring bytes per new file; {:.1} tracer syscalls per new file (bpftrace counting the tracer's, start to report, in a separate run).\n",
            FILES as f64 / self.seconds[0],
            self.exact_files,
            self.lost,
            self.records_per_file,
            self.ring_bytes_per_file,
            self.tracer_syscalls_per_file,
        ));
        out
    }
}
