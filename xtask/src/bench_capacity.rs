//! What `cargo xtask bench` measures besides the fault path: start-up,
//! userspace decoding throughput, memory per tracked page, and losses at a
//! million first writes a second.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{
    bench::{json_output, median},
    cargo, mmapwatch_release, workspace_root,
};

/// Start of the process to its "tracing" line, and its own attach time.
pub(crate) fn attach_times(runs: usize) -> Result<(f64, f64)> {
    let mut total = Vec::new();
    let mut attach = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let mut child = Command::new(mmapwatch_release())
            .args(["trace", "--comm", "nothing-matches"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stderr.as_mut().context("stderr")?).read_line(&mut line)?;
        total.push(started.elapsed().as_secs_f64() * 1000.0);
        // "... (9 programs attached in 23 ms)"
        let ms = line
            .rsplit("attached in ")
            .next()
            .and_then(|rest| rest.split(' ').next())
            .and_then(|ms| ms.parse::<f64>().ok())
            .context("attach time")?;
        attach.push(ms);
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok((median(&mut total), median(&mut attach)))
}

/// Events per second from criterion's estimate for 100,000 events.
pub(crate) fn userspace_throughput() -> Result<(f64, f64)> {
    crate::run(cargo().args([
        "bench",
        "--package",
        "probe-user",
        "--bench",
        "aggregate",
        "--",
        "--noplot",
    ]))?;
    let read = |name: &str| -> Result<f64> {
        let path = workspace_root().join(format!(
            "target/criterion/userspace/{name}/new/estimates.json"
        ));
        let estimates: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        let ns = estimates["median"]["point_estimate"]
            .as_f64()
            .context("median")?;
        Ok(100_000.0 / (ns / 1e9))
    };
    Ok((read("decode_and_aggregate")?, read("decode_only")?))
}

pub(crate) fn pageset_memory(pages: u64) -> Result<f64> {
    let value = json_output(
        cargo()
            .args([
                "run",
                "--quiet",
                "--release",
                "--package",
                "probe-user",
                "--example",
                "pageset_memory",
                "--",
            ])
            .arg(pages.to_string()),
    )?;
    Ok(value["rss_growth_kib"].as_f64().context("rss")? / 1024.0)
}

pub(crate) struct DropResult {
    pub(crate) first_writes: f64,
    pub(crate) seconds: f64,
    pub(crate) lost: u64,
    pub(crate) reported_pages: u64,
}

/// Two writers creating, filling and unlinking files on tmpfs for 10 s,
/// with mmapwatch tracing system-wide.
pub(crate) fn drops(workload: &Path) -> Result<DropResult> {
    let dir = PathBuf::from("/dev/shm/mmapwatch-bench-churn");
    std::fs::create_dir_all(&dir)?;
    let mut trace = Command::new(mmapwatch_release())
        .args([
            "trace",
            "--json",
            "--path-prefix",
            "/dev/shm/mmapwatch-bench-churn",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(trace.stderr.as_mut().context("stderr")?).read_line(&mut line)?;
    let writers: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(workload)
                .args(["churn", "--dir"])
                .arg(&dir)
                .args(["--pages", "256", "--seconds", "10"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    let mut first_writes = 0.0;
    let mut seconds: f64 = 0.0;
    for writer in writers {
        let output = writer.wait_with_output()?;
        let value: Value = serde_json::from_slice(&output.stdout)?;
        first_writes += value["first_writes"].as_f64().unwrap_or(0.0);
        seconds = seconds.max(value["seconds"].as_f64().unwrap_or(0.0));
    }
    // SAFETY: signals our own child.
    unsafe { libc::kill(trace.id() as i32, libc::SIGINT) };
    let output = trace.wait_with_output()?;
    let report: Value = serde_json::from_slice(&output.stdout).context("mmapwatch report")?;
    let reported_pages = report["files"]
        .as_array()
        .map(|files| {
            files
                .iter()
                .filter_map(|f| f["pages_written_count"].as_u64())
                .sum()
        })
        .unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(DropResult {
        first_writes,
        seconds,
        lost: report["lost_events"].as_u64().unwrap_or(0),
        reported_pages,
    })
}
