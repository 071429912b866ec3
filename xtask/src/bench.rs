//! `cargo xtask bench`: the cost of mmapwatch, measured against running
//! without it and against an equivalent bpftrace script, in one run on one
//! machine. Writes BENCHMARKS.md and benchmarks.svg.
//!
//! Absolute times depend on the machine; the ratios measured side by side
//! (interleaved rounds, medians) are what compare.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{cargo, ensure_apt, mmapwatch_release, step, workspace_root};

/// The bpftrace side of the comparison: the same tracepoint, the same
/// write-bit filter, one hash update per fault keyed by (pid, page), as
/// mmapwatch's dedup is. It cannot look the mapping up (no bpf_find_vma in
/// bpftrace), so it does strictly less work than mmapwatch.
const BPFTRACE_SCRIPT: &str =
    "tracepoint:exceptions:page_fault_user /args->error_code & 2/ { @pages[pid, args->address >> 12] = count(); } END { clear(@pages); }";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Bare,
    Mmapwatch,
    Bpftrace,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Bare => "bare",
            Mode::Mmapwatch => "mmapwatch (tracepoint)",
            Mode::Bpftrace => "bpftrace",
        }
    }
}

struct Tracer(Option<Child>);

impl Tracer {
    /// Starts the tracer and waits until its probes are attached.
    fn start(mode: Mode) -> Result<Self> {
        let child = match mode {
            Mode::Bare => return Ok(Self(None)),
            Mode::Mmapwatch => {
                let mut child = Command::new(mmapwatch_release())
                    .args(["trace", "--json"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("starting mmapwatch")?;
                let mut line = String::new();
                BufReader::new(child.stderr.as_mut().context("stderr")?).read_line(&mut line)?;
                if !line.contains("tracing") {
                    bail!("mmapwatch did not start: {line}");
                }
                child
            }
            Mode::Bpftrace => {
                let mut child = Command::new("bpftrace")
                    .args(["-e", BPFTRACE_SCRIPT])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting bpftrace")?;
                let mut line = String::new();
                BufReader::new(child.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
                if !line.contains("Attaching") {
                    bail!("bpftrace did not start: {line}");
                }
                // It prints before attaching; give the attach a moment.
                std::thread::sleep(Duration::from_millis(500));
                child
            }
        };
        Ok(Self(Some(child)))
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            // SIGINT: both tools stop cleanly on it.
            // SAFETY: signals our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

fn json_output(command: &mut Command) -> Result<Value> {
    let output = command
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("no JSON line")?;
    Ok(serde_json::from_str(line)?)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

struct FaultResult {
    fs: &'static str,
    bare: f64,
    mmapwatch: f64,
    bpftrace: f64,
}

impl FaultResult {
    fn added(&self, traced: f64) -> f64 {
        traced - self.bare
    }
}

fn fault_loop(workload: &Path, rounds: usize) -> Result<Vec<FaultResult>> {
    let scratch = workspace_root().join("target/bench");
    std::fs::create_dir_all(&scratch)?;
    let targets: [(&str, PathBuf, bool); 2] = [
        ("ext4", scratch.join("faultloop.bin"), false),
        (
            "tmpfs",
            PathBuf::from("/dev/shm/mmapwatch-bench-faultloop"),
            true,
        ),
    ];
    let mut results = Vec::new();
    for (fs, file, dontneed) in targets {
        let mut times = [Vec::new(), Vec::new(), Vec::new()];
        for round in 0..rounds {
            // Interleaved, rotating the order each round: drift hits all alike.
            let mut order = [Mode::Bare, Mode::Mmapwatch, Mode::Bpftrace];
            order.rotate_left(round % 3);
            for mode in order {
                let _tracer = Tracer::start(mode)?;
                let mut command = Command::new(workload);
                command
                    .args(["fault-loop", "--file"])
                    .arg(&file)
                    .args(["--pages", "4096", "--rounds", "21"]);
                if dontneed {
                    command.arg("--dontneed");
                }
                let ns = json_output(&mut command)?["ns_per_fault"]
                    .as_f64()
                    .context("ns_per_fault")?;
                times[mode as usize].push(ns);
            }
            step(&format!("fault loop on {fs}: round {}/{rounds}", round + 1));
        }
        let _ = std::fs::remove_file(&file);
        results.push(FaultResult {
            fs,
            bare: median(&mut times[0]),
            mmapwatch: median(&mut times[1]),
            bpftrace: median(&mut times[2]),
        });
    }
    Ok(results)
}

/// Start of the process to its "tracing" line, and its own attach time.
fn attach_times(runs: usize) -> Result<(f64, f64)> {
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
fn userspace_throughput() -> Result<(f64, f64)> {
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

fn pageset_memory(pages: u64) -> Result<f64> {
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

struct DropResult {
    first_writes: f64,
    seconds: f64,
    lost: u64,
    reported_pages: u64,
}

/// Two writers creating, filling and unlinking files on tmpfs for 10 s,
/// with mmapwatch tracing system-wide.
fn drops(workload: &Path) -> Result<DropResult> {
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

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!(
        "{cpu}, {cores} cores, {memory_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**not met**"
    }
}

pub fn run(rounds: usize) -> Result<()> {
    ensure_apt(&["bpftrace"])?;
    crate::build_release_bins()?;
    let workload = workspace_root().join("target/release/mw-workload");
    let machine = machine();
    step(&format!("benchmarking on {machine}"));

    let (start_to_ready_ms, attach_ms) = attach_times(5)?;
    step(&format!(
        "attach: {attach_ms:.0} ms load+attach, {start_to_ready_ms:.0} ms start to ready"
    ));
    let faults = fault_loop(&workload, rounds)?;
    let (events_per_s, decode_per_s) = userspace_throughput()?;
    let memory_1m = pageset_memory(1_000_000)?;
    let memory_10m = pageset_memory(10_000_000)?;
    let drops = drops(&workload)?;

    let markdown = render(
        &machine,
        rounds,
        start_to_ready_ms,
        attach_ms,
        &faults,
        events_per_s,
        decode_per_s,
        memory_1m,
        memory_10m,
        &drops,
    );
    let root = workspace_root();
    std::fs::write(root.join("BENCHMARKS.md"), &markdown)?;
    plot(&root.join("benchmarks.svg"), &faults)?;
    print!("{markdown}");
    step("wrote BENCHMARKS.md and benchmarks.svg");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn render(
    machine: &str,
    rounds: usize,
    start_to_ready_ms: f64,
    attach_ms: f64,
    faults: &[FaultResult],
    events_per_s: f64,
    decode_per_s: f64,
    memory_1m: f64,
    memory_10m: f64,
    drops: &DropResult,
) -> String {
    let mut out = format!(
        "# Benchmarks\n\nMeasured by `cargo xtask bench` on {machine}; backend: tracepoint (the only one this kernel allows).\nAbsolute times vary between machines; the ratios, measured side by side in one run, are what compare.\n\n![ns per write fault](benchmarks.svg)\n\n"
    );
    out.push_str("## Targets\n\n| target | measured | verdict |\n|---|---|---|\n");
    for f in faults {
        let added = f.added(f.mmapwatch);
        let bpftrace_added = f.added(f.bpftrace);
        let ratio = if bpftrace_added > 0.0 {
            added / bpftrace_added
        } else {
            f64::NAN
        };
        out.push_str(&format!(
            "| added cost per write fault ≤ 50 ns ({}) | {added:.0} ns | {} |\n",
            f.fs,
            verdict(added <= 50.0)
        ));
        out.push_str(&format!(
            "| ≤ 0.5× bpftrace's added cost ({}) | {ratio:.2}× ({added:.0} ns vs {bpftrace_added:.0} ns) | {} |\n",
            f.fs,
            verdict(ratio <= 0.5)
        ));
    }
    let rate = drops.first_writes / drops.seconds.max(f64::EPSILON);
    out.push_str(&format!(
        "| decode + aggregate ≥ 5 M events/s on one core | {:.1} M events/s | {} |\n",
        events_per_s / 1e6,
        verdict(events_per_s >= 5e6)
    ));
    out.push_str(&format!(
        "| 0 drops at 1 M first-writes/s for 10 s | {} lost at {:.2} M first-writes/s (the most this machine's 2 writers reach) | {} |\n",
        drops.lost,
        rate / 1e6,
        if drops.lost == 0 && rate >= 1e6 { "met" } else if drops.lost == 0 { "0 drops, rate **not reached**" } else { "**not met**" }
    ));
    out.push_str(&format!(
        "| RSS ≤ 100 MiB tracking 10 M distinct pages | {memory_10m:.1} MiB | {} |\n",
        verdict(memory_10m <= 100.0)
    ));
    out.push_str(&format!(
        "| attach ≤ 300 ms | {start_to_ready_ms:.0} ms from process start to tracing (BTF, maps, verifier, attach; the attach step alone {attach_ms:.0} ms) | {} |\n\n",
        verdict(start_to_ready_ms <= 300.0)
    ));

    out.push_str(&format!(
        "## Write-fault loop\n\nOne process maps a 4096-page file `MAP_SHARED`, writes one byte per page, makes the pages fault again (ext4: `msync`; tmpfs: `MADV_DONTNEED`, since msync does not write-protect there) and repeats 20 times; the figure is the median ns per fault. Bare, mmapwatch and bpftrace runs are interleaved, rotating the order, {rounds} rounds; medians of the rounds.\n\nbpftrace runs `{BPFTRACE_SCRIPT}`: the same tracepoint and filter and a hash update per fault, but no mapping lookup, so it does less than mmapwatch.\n\n| fs | bare ns/fault | mmapwatch ns/fault | bpftrace ns/fault | mmapwatch added | bpftrace added | ratio |\n|---|---|---|---|---|---|---|\n"
    ));
    for f in faults {
        let (added, bpftrace_added) = (f.added(f.mmapwatch), f.added(f.bpftrace));
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {added:.0} | {bpftrace_added:.0} | {:.2}× |\n",
            f.fs,
            f.bare,
            f.mmapwatch,
            f.bpftrace,
            added / bpftrace_added
        ));
    }
    out.push_str(&format!(
        "\n## Userspace\n\ncriterion, one core, 100,000 records per iteration: decode + aggregate {:.1} M events/s; decode alone {:.1} M events/s.\n\nPage-set memory (roaring bitmaps; half the files written in runs, half every third page): {memory_1m:.1} MiB RSS growth for 1 M pages, {memory_10m:.1} MiB for 10 M pages.\n\n## Drops\n\nTwo writers create, fill (256 pages) and unlink tmpfs files for 10 s while `mmapwatch trace` runs system-wide: {:.0} first writes in {:.1} s ({:.2} M/s), {} reported, {} lost.\n",
        events_per_s / 1e6,
        decode_per_s / 1e6,
        drops.first_writes,
        drops.seconds,
        rate / 1e6,
        drops.reported_pages,
        drops.lost,
    ));
    out
}

fn plot(path: &Path, faults: &[FaultResult]) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (720, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = faults
        .iter()
        .flat_map(|f| [f.bare, f.mmapwatch, f.bpftrace])
        .fold(0.0f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption("ns per write fault (median)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..(faults.len() as f64 * 4.0), 0f64..max.max(1.0))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("ns")
        .draw()?;
    let colours = [
        RGBColor(120, 120, 120),
        RGBColor(40, 110, 200),
        RGBColor(220, 120, 40),
    ];
    for (group, f) in faults.iter().enumerate() {
        let base = group as f64 * 4.0 + 0.5;
        for (i, (value, colour)) in [f.bare, f.mmapwatch, f.bpftrace]
            .iter()
            .zip(colours)
            .enumerate()
        {
            let x = base + i as f64;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x, 0.0), (x + 0.9, *value)],
                colour.filled(),
            )))?;
        }
        chart.draw_series(std::iter::once(Text::new(
            f.fs.to_string(),
            (base + 1.0, max * 0.03),
            ("sans-serif", 16).into_font().color(&WHITE),
        )))?;
    }
    for (i, (label, colour)) in ["bare", Mode::Mmapwatch.label(), "bpftrace"]
        .iter()
        .zip(colours)
        .enumerate()
    {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, 0.0), (0.0, 0.0)],
                colour.filled(),
            )))?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
        let _ = i;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
