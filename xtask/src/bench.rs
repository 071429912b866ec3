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

use crate::{
    bench_memory::MemoryResult, bench_new_files::NewFilesResult, cargo, ensure_apt,
    mmapwatch_release, step, workspace_root,
};

/// The bpftrace side of the comparison: the same events, the same
/// write-bit filter, one hash update per fault keyed by (pid, page) and one
/// per dirtied folio keyed by (inode, index). It cannot look the mapping up
/// (no bpf_find_vma in bpftrace), so it does less work than mmapwatch.
const BPFTRACE_SCRIPT: &str = "tracepoint:exceptions:page_fault_user /args->error_code & 2/ { @pages[pid, args->address >> 12] = count(); } tracepoint:writeback:writeback_dirty_folio { @dirty[args->ino, args->index] = count(); } END { clear(@pages); clear(@dirty); }";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Bare,
    Mmapwatch,
    Bpftrace,
    /// Empty programs on mmapwatch's own fault-path attach points.
    Floor,
}

const MODES: [Mode; 4] = [Mode::Bare, Mode::Mmapwatch, Mode::Bpftrace, Mode::Floor];

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Bare => "bare",
            Mode::Mmapwatch => "mmapwatch (tracepoint)",
            Mode::Bpftrace => "bpftrace",
            Mode::Floor => "empty program",
        }
    }
}

/// Where the tracers' own threads run: away from the fault loop's CPU.
const TRACER_CPU: usize = 0;

/// The fault loop's CPU: the last one (the tracers' where there is one).
fn workload_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
}

/// Pins a command to one CPU. Unpinned, a fault loop that migrates
/// mid-loop varied by ±20% between runs here (1,270 to 1,900 ns per
/// anonymous fault, bare); pinned, by ±2%.
fn pin(command: &mut Command, cpu: usize) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: between fork and exec only sched_setaffinity, which is
    // async-signal-safe, on plain stack data.
    unsafe {
        command.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

struct Tracer(Option<Child>);

impl Tracer {
    /// Starts the tracer and waits until its probes are attached.
    fn start(mode: Mode) -> Result<Self> {
        let child = match mode {
            Mode::Bare => return Ok(Self(None)),
            Mode::Mmapwatch => spawn_until_ready(
                pin(
                    Command::new(mmapwatch_release()).args(["trace", "--json"]),
                    TRACER_CPU,
                ),
                "tracing",
            )?,
            Mode::Floor => spawn_until_ready(
                pin(
                    Command::new(mmapwatch_release()).arg("bench-floor"),
                    TRACER_CPU,
                ),
                "floor attached",
            )?,
            Mode::Bpftrace => {
                let mut child = pin(&mut Command::new("bpftrace"), TRACER_CPU)
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

/// Starts mmapwatch and waits for its first line on stderr, which says
/// its probes are attached (it must contain `ready`).
fn spawn_until_ready(command: &mut Command, ready: &str) -> Result<Child> {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let mut line = String::new();
    BufReader::new(child.stderr.as_mut().context("stderr")?).read_line(&mut line)?;
    if !line.contains(ready) {
        bail!("{command:?} did not start: {line}");
    }
    Ok(child)
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

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// What a tracer adds per fault: the median of the per-round differences
/// from the bare run of the same round (paired, so that drift between
/// rounds cancels), with a ~95% interval of that median.
#[derive(Clone, Copy, Default)]
struct Added {
    median: f64,
    low: f64,
    high: f64,
}

impl Added {
    fn paired(runs: &[f64], bare: &[f64]) -> Self {
        let mut differences: Vec<f64> = runs.iter().zip(bare).map(|(r, b)| r - b).collect();
        let median = median(&mut differences);
        // Order statistics around the median: ranks k and n-1-k with
        // k = (n - 1.96 sqrt(n)) / 2 (the sign test's interval; 96% at 15).
        let n = differences.len();
        let k = ((n as f64 - 1.96 * (n as f64).sqrt()) / 2.0)
            .floor()
            .max(0.0) as usize;
        Self {
            median,
            low: differences.get(k).copied().unwrap_or(f64::NAN),
            high: differences
                .get(n.saturating_sub(1 + k))
                .copied()
                .unwrap_or(f64::NAN),
        }
    }

    /// "310 (250 to 370)".
    fn show(&self) -> String {
        format!("{:.0} ({:.0} to {:.0})", self.median, self.low, self.high)
    }
}

struct FaultResult {
    workload: &'static str,
    /// Median ns per fault under each of [`MODES`].
    ns: [f64; 4],
    /// Added per fault under each of [`MODES`] (bare: 0).
    added: [Added; 4],
    /// ns per call of mmapwatch's fault program and its dirty-folio
    /// program (bpf_stats, in a separate run).
    fault_program_ns: f64,
    dirty_program_ns: f64,
    /// ns per call of the empty program on the fault tracepoint, measured
    /// the same way: what any program there costs with the stats on.
    floor_program_ns: f64,
}

impl FaultResult {
    fn added(&self, mode: Mode) -> Added {
        self.added[mode as usize]
    }
}

/// The three loops: (name, file, extra arguments).
fn workloads(scratch: &Path) -> [(&'static str, PathBuf, &'static [&'static str]); 3] {
    [
        ("ext4 shared", scratch.join("faultloop.bin"), &[]),
        (
            "tmpfs shared",
            PathBuf::from("/dev/shm/mmapwatch-bench-faultloop"),
            &["--dontneed"],
        ),
        // The file is not opened: first touches of anonymous memory, the
        // faults every process on a host takes.
        ("anonymous", scratch.join("unused.bin"), &["--anonymous"]),
    ]
}

fn fault_loop_command(workload: &Path, file: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(workload);
    pin(&mut command, workload_cpu())
        .args(["fault-loop", "--file"])
        .arg(file)
        .args(["--pages", "4096", "--rounds", "21"])
        .args(extra);
    command
}

fn fault_loop(workload: &Path, rounds: usize) -> Result<Vec<FaultResult>> {
    let scratch = workspace_root().join("target/bench");
    std::fs::create_dir_all(&scratch)?;
    let mut results = Vec::new();
    for (name, file, extra) in workloads(&scratch) {
        let mut times: [Vec<f64>; 4] = Default::default();
        for round in 0..rounds {
            // Interleaved, rotating the order each round: drift hits all alike.
            let mut order = MODES;
            order.rotate_left(round % MODES.len());
            for mode in order {
                let _tracer = Tracer::start(mode)?;
                let ns = json_output(&mut fault_loop_command(workload, &file, extra))?
                    ["ns_per_fault"]
                    .as_f64()
                    .context("ns_per_fault")?;
                times[mode as usize].push(ns);
            }
            step(&format!("fault loop, {name}: round {}/{rounds}", round + 1));
        }
        let (fault_program_ns, dirty_program_ns) = program_run_times(
            Mode::Mmapwatch,
            &["mw_page_fault_user", "mw_page_fault_u"],
            &["mw_writeback_dirty_folio", "mw_writeback_di"],
            workload,
            &file,
            extra,
        )?;
        let (floor_program_ns, _) = program_run_times(
            Mode::Floor,
            &["mw_floor_page_fault_user", "mw_floor_page_f"],
            &[],
            workload,
            &file,
            extra,
        )?;
        let _ = std::fs::remove_file(&file);
        results.push(FaultResult {
            workload: name,
            added: MODES
                .map(|mode| Added::paired(&times[mode as usize], &times[Mode::Bare as usize])),
            ns: times.map(|mut t| median(&mut t)),
            fault_program_ns,
            dirty_program_ns,
            floor_program_ns,
        });
    }
    Ok(results)
}

/// ns per call of a tracer's fault program and dirty-folio program (each
/// found by any of its names) over one loop, from bpf_stats (on only for
/// this run: it adds a clock read to every program).
fn program_run_times(
    mode: Mode,
    fault_program: &[&str],
    dirty_program: &[&str],
    workload: &Path,
    file: &Path,
    extra: &[&str],
) -> Result<(f64, f64)> {
    let set_stats = |on: bool| {
        std::fs::write(
            "/proc/sys/kernel/bpf_stats_enabled",
            if on { "1" } else { "0" },
        )
        .context("kernel.bpf_stats_enabled")
    };
    let tracer = Tracer::start(mode)?;
    set_stats(true)?;
    let before = program_stats()?;
    let result = json_output(&mut fault_loop_command(workload, file, extra));
    let after = program_stats()?;
    set_stats(false)?;
    drop(tracer);
    result?;
    // The kernel cuts names to 15 bytes; bpftool may show them whole
    // (from BTF). Exact names: page_fault_user_reads is not attached here.
    let per_call = |names: &[&str]| {
        let find = |stats: &std::collections::HashMap<String, (u64, u64)>| {
            names
                .iter()
                .find_map(|name| stats.get(*name).copied())
                .unwrap_or((0, 0))
        };
        let (t1, c1) = find(&after);
        let (t0, c0) = find(&before);
        if c1 > c0 {
            (t1 - t0) as f64 / (c1 - c0) as f64
        } else {
            f64::NAN
        }
    };
    Ok((per_call(fault_program), per_call(dirty_program)))
}

/// Run time (ns) and run count of each BPF program, by name.
fn program_stats() -> Result<std::collections::HashMap<String, (u64, u64)>> {
    let output = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("bpftool")?;
    let programs: Value = serde_json::from_slice(&output.stdout).context("bpftool JSON")?;
    Ok(programs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                (p["run_time_ns"].as_u64()?, p["run_cnt"].as_u64()?),
            ))
        })
        .collect())
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

/// `added / reference <= target`, where both costs rose above the noise:
/// an interval that reaches 0 is no measurement of a ratio.
fn ratio_verdict(added: Added, reference: Added, target: f64) -> &'static str {
    if added.low <= 0.0 || reference.low <= 0.0 {
        "**not measured** (an added cost's interval reaches 0: within noise)"
    } else {
        verdict(added.median / reference.median <= target)
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**not met**"
    }
}

pub fn run(rounds: usize) -> Result<()> {
    ensure_apt(&["bpftrace", "bpftool"])?;
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
    let new_files = crate::bench_new_files::run(&workload, rounds.clamp(1, 3))?;
    let churn_memory = crate::bench_memory::run(&workload)?;

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
        &new_files,
        &churn_memory,
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
    new_files: &NewFilesResult,
    churn_memory: &MemoryResult,
) -> String {
    let mut out = format!(
        "# Benchmarks\n\nMeasured by `cargo xtask bench` on {machine}; backend: tracepoint (the only one this kernel allows).\nAbsolute times vary between machines, and between runs on a small VM (other guests' load): the ratios, measured side by side in one interleaved run, are what compare; `--rounds N` narrows the medians.\n\n![ns per write fault](benchmarks.svg)\n\n"
    );
    out.push_str("## Targets\n\n| target | measured | verdict |\n|---|---|---|\n");
    for f in faults {
        let added = f.added(Mode::Mmapwatch);
        if f.workload == "anonymous" {
            let floor = f.added(Mode::Floor);
            out.push_str(&format!(
                "| anonymous write fault: added cost ≤ 1.5× an empty program's on the same attach point | {:.2}× ({} ns vs {} ns) | {} |\n",
                added.median / floor.median,
                added.show(),
                floor.show(),
                ratio_verdict(added, floor, 1.5)
            ));
            continue;
        }
        let bpftrace_added = f.added(Mode::Bpftrace);
        out.push_str(&format!(
            "| {} write fault: added cost ≤ 0.5× bpftrace's script | {:.2}× ({} ns vs {} ns) | {} |\n",
            f.workload,
            added.median / bpftrace_added.median,
            added.show(),
            bpftrace_added.show(),
            ratio_verdict(added, bpftrace_added, 0.5)
        ));
        out.push_str(&format!(
            "| {} write fault: added cost ≤ 50 ns | {} ns | {} |\n",
            f.workload,
            added.show(),
            verdict(added.high <= 50.0)
        ));
    }
    if let Some(ext4) = faults.iter().find(|f| f.workload == "ext4 shared") {
        out.push_str(&format!(
            "| fault program ≤ 300 ns per call on a repeated shared write fault (bpf_stats, ext4) | {:.0} ns | {} |\n",
            ext4.fault_program_ns,
            verdict(ext4.fault_program_ns <= 300.0)
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
    for (under, name) in [(1, "trace"), (2, "top --batch"), (3, "export")] {
        out.push_str(&format!(
            "| new files under `{name}`: writer's time ≤ 1.5× bare | {:.2}× | {} |\n",
            new_files.ratio(under),
            verdict(new_files.ratio(under) <= 1.5)
        ));
    }
    out.push_str(&format!(
        "| new files: every file reported with its page, 0 lost | {} of {} exact, {} lost | {} |\n",
        new_files.exact_files,
        crate::bench_new_files::FILES,
        new_files.lost,
        verdict(new_files.exact_files == crate::bench_new_files::FILES && new_files.lost == 0)
    ));
    out.push_str(&format!(
        "| tracer syscalls per new file ≤ 3 (amortized) | {:.1} | {} |\n",
        new_files.tracer_syscalls_per_file,
        verdict(new_files.tracer_syscalls_per_file <= 3.0)
    ));
    out.push_str(&format!(
        "| `trace` RSS < 64 MiB, {} random pages of a sparse 1 TiB mapping | {:.1} MiB ({} pages reported) | {} |\n",
        crate::bench_memory::SPARSE_PAGES,
        churn_memory.sparse_trace_mib(),
        churn_memory.sparse_pages_reported,
        verdict(
            churn_memory.sparse_trace_mib() < 64.0
                && churn_memory.sparse_pages_reported == crate::bench_memory::SPARSE_PAGES
        )
    ));
    out.push_str(&format!(
        "| `export` RSS < 200 MiB through {} new files | {:.1} MiB | {} |\n",
        crate::bench_memory::EXPORT_FILES,
        churn_memory.export_peak_mib(),
        verdict(churn_memory.export_peak_mib() < 200.0)
    ));
    out.push_str(&format!(
        "| `export` RSS within 20% of its start after `--retain` and an interval | {:.2}× | {} |\n",
        churn_memory.export_return_ratio(),
        verdict(churn_memory.export_return_ratio() <= 1.2)
    ));
    out.push_str(&format!(
        "| attach ≤ 300 ms | {start_to_ready_ms:.0} ms from process start to tracing (BTF, maps, verifier, attach; the attach step alone {attach_ms:.0} ms) | {} |\n\n",
        verdict(start_to_ready_ms <= 300.0)
    ));

    out.push_str(&format!(
        "## Fault loops\n\nOne process writes one byte to each page of a 4096-page mapping, makes the pages fault again and repeats 20 times; the figure is the median ns per fault. ext4: a `MAP_SHARED` file, re-armed with `msync` (a write-protect fault on a page still mapped, the repeated shared write fault); tmpfs: a `MAP_SHARED` file, re-armed with `MADV_DONTNEED` (msync does not write-protect there); anonymous: private anonymous memory (`MADV_NOHUGEPAGE`), re-armed with `MADV_DONTNEED`, the first-touch faults every process takes. The loop is pinned to the last CPU and the tracers' own threads to CPU 0 (unpinned, migrations mid-loop moved the figures by ±20% between runs). Bare, mmapwatch, bpftrace and empty-program runs are interleaved, rotating the order, {rounds} rounds. ns per fault: medians of the rounds; added: the median of each round's difference from that round's bare run, with its ~95% interval (order statistics).\n\n- mmapwatch: `mmapwatch trace` system-wide, tracepoint backend (raw tracepoints).\n- bpftrace: `{BPFTRACE_SCRIPT}`: the same events and a hash update per fault and per dirtied folio, but no mapping lookup, so it does less than mmapwatch.\n- empty program: `mmapwatch bench-floor`, empty programs on mmapwatch's own attach points (raw tracepoints `page_fault_user` and `writeback_dirty_folio`): the least any program there costs.\n\n| workload | bare ns/fault | mmapwatch | bpftrace | empty program | mmapwatch added | bpftrace added | empty added | mmapwatch / bpftrace | mmapwatch / empty |\n|---|---|---|---|---|---|---|---|---|---|\n"
    ));
    for f in faults {
        let (added, bpftrace_added, floor_added) = (
            f.added(Mode::Mmapwatch),
            f.added(Mode::Bpftrace),
            f.added(Mode::Floor),
        );
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {:.2}× | {:.2}× |\n",
            f.workload,
            f.ns[Mode::Bare as usize],
            f.ns[Mode::Mmapwatch as usize],
            f.ns[Mode::Bpftrace as usize],
            f.ns[Mode::Floor as usize],
            added.show(),
            bpftrace_added.show(),
            floor_added.show(),
            added.median / bpftrace_added.median,
            added.median / floor_added.median,
        ));
    }
    out.push_str("\nPer-program run time (`kernel.bpf_stats_enabled=1`, a separate run per loop and tracer; the stats add two clock reads per call, which the empty program's figure is mostly made of):\n\n| workload | `page_fault_user` ns/call | empty program ns/call | `writeback_dirty_folio` ns/call |\n|---|---|---|---|\n");
    for f in faults {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {} |\n",
            f.workload,
            f.fault_program_ns,
            f.floor_program_ns,
            if f.dirty_program_ns.is_nan() {
                "not run".to_string()
            } else {
                format!("{:.0}", f.dirty_program_ns)
            }
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
    out.push_str(&new_files.render());
    out.push_str(&churn_memory.render());
    out.push_str(FAULT_PATH_NOTES);
    out
}

/// What profiling the fault path found (bpf_stats per program, the
/// program cut off at one stage at a time); kept with the figures it
/// explains.
const FAULT_PATH_NOTES: &str = "
## Fault-path targets: what was tried, what bounds them

Per-call costs from `kernel.bpf_stats_enabled=1`, each found by cutting the program off at one stage (a temporary early return) and comparing pinned runs of 61 loop rounds (fewer first writes in the average than the 20 above):

- `page_fault_user` on a repeated shared write fault (ext4, write-protect): ~55-60 ns to enter a raw tracepoint program with the stats on (the empty program), +~20 ns thread group id, process filter and the mapping-cache check, ~15 ns record header and dedup-cache check, 0-30 ns each for the fault counter and the per-CPU run of counts. At 20 rounds the per-call average also carries the first round's first writes (dedup entry, ring record, page-cache walk: ~2 us each, 5% of the calls): ext4 ~257 ns per call here, ~140-175 ns at 61 rounds.
- Earlier steps (issue 12): classic to raw tracepoints (-70 ns), the VMA cache instead of a maple walk per fault, 512-page dedup chunks with a per-CPU copy, fault counts in per-CPU runs, writer cache per jiffy: 1,410 -> ~270 ns per call.
- Then: the VMA cache first in the per-CPU scratch (an anonymous fault reads one cache line of it and writes none), the thread group id by a direct load from the task (not `bpf_get_current_pid_tgid`), the hot offsets in one `.rodata` line, the full pid/tgid read only for file faults: anonymous ~95 -> ~78 ns per call, ext4 repeated ~165 -> ~138 ns per call.
- Then: a not-present shared write fault (the tmpfs loop, re-armed by `MADV_DONTNEED`) read `file->f_mapping` and the mapping's flags (is a large folio possible?) with two `bpf_probe_read_kernel` calls, ~30 ns each. The page-cache pointer is now kept with the cached VMA and the large-folio answer per CPU for one clock tick (the flag changes without any change to the mappings: ext4 data journalling): tmpfs ~200 -> ~125 ns per call; the tmpfs ratio to bpftrace went from 0.62x to under 0.5x.
- Measuring: unpinned, migrations moved a bare run by up to 50%; the loop is pinned and the tracers kept off its CPU. Added costs are medians of per-round paired differences with their interval: earlier runs compared medians of unpaired runs, and one such run put mmapwatch below the empty program (a 0.11x anonymous ratio), which no program can be.
- `writeback_dirty_folio`: as a raw tracepoint with a `bpf_probe_read_kernel` per field 495 ns per call; as tp_btf with direct loads, reading the clock only when a time is kept, ~145 ns. Left: two hash lookups (the file's stats, its dirty-since time); folding the dirty-since time into the per-file stats would save one, not tried.
- What bounds the rest: on anonymous faults mmapwatch's program runs ~20 ns longer than the empty one (bpf_stats); the wall-clock intervals of both added costs (tens of ns) are wider than that difference on this VM, so the 1.5x ratio is met by the medians but not resolved by the intervals. On ext4 the empty programs already add ~105 ns per fault (dispatch of a raw tracepoint program in this VM), and `bpf_get_current_task_btf` is a helper call, not inlined by the JIT on this kernel. The `<= 50 ns` rows are an earlier, stricter target that the dispatch alone nearly exhausts.
";

fn plot(path: &Path, faults: &[FaultResult]) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (860, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = faults.iter().flat_map(|f| f.ns).fold(0.0f64, f64::max) * 1.15;
    let group_width = MODES.len() as f64 + 1.0;
    let mut chart = ChartBuilder::on(&root)
        .caption("ns per fault (median)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0f64..(faults.len() as f64 * group_width),
            0f64..max.max(1.0),
        )?;
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
        RGBColor(90, 170, 90),
    ];
    for (group, f) in faults.iter().enumerate() {
        let base = group as f64 * group_width + 0.5;
        for (i, (value, colour)) in f.ns.iter().zip(colours).enumerate() {
            let x = base + i as f64;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x, 0.0), (x + 0.9, *value)],
                colour.filled(),
            )))?;
        }
        chart.draw_series(std::iter::once(Text::new(
            f.workload.to_string(),
            (base, max * 0.97),
            ("sans-serif", 15).into_font(),
        )))?;
    }
    for (mode, colour) in MODES.iter().zip(colours) {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, 0.0), (0.0, 0.0)],
                colour.filled(),
            )))?
            .label(mode.label())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_added_cost_is_the_median_of_paired_differences_with_its_interval() {
        // A drift of 100 ns per round hits bare and traced runs alike.
        let bare: Vec<f64> = (0..15).map(|round| 1000.0 + 100.0 * round as f64).collect();
        let traced: Vec<f64> = bare
            .iter()
            .enumerate()
            .map(|(round, ns)| ns + 40.0 + round as f64)
            .collect();
        let added = Added::paired(&traced, &bare);
        assert_eq!(added.median, 47.0);
        // Ranks 3 and 11 of 15.
        assert_eq!((added.low, added.high), (43.0, 51.0));
        assert_eq!(
            ratio_verdict(
                added,
                Added {
                    median: 100.0,
                    low: 90.0,
                    high: 110.0
                },
                0.5
            ),
            "met"
        );
        let noise = Added {
            median: 5.0,
            low: -20.0,
            high: 30.0,
        };
        assert!(ratio_verdict(noise, added, 1.5).contains("not measured"));
    }
}
