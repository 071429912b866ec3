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
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{
    bench_capacity::{attach_times, drops, pageset_memory, userspace_throughput},
    bench_report::{plot, render},
    ensure_apt, mmapwatch_release, step, workspace_root,
};

/// The bpftrace side of the comparison: the same events, the same
/// write-bit filter, one hash update per fault keyed by (pid, page) and one
/// per dirtied folio keyed by (inode, index). It cannot look the mapping up
/// (no bpf_find_vma in bpftrace), so it does less work than mmapwatch.
pub(crate) const BPFTRACE_SCRIPT: &str = "tracepoint:exceptions:page_fault_user /args->error_code & 2/ { @pages[pid, args->address >> 12] = count(); } tracepoint:writeback:writeback_dirty_folio { @dirty[args->ino, args->index] = count(); } END { clear(@pages); clear(@dirty); }";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Bare,
    Mmapwatch,
    Bpftrace,
    /// Empty programs on mmapwatch's own fault-path attach points.
    Floor,
}

pub(crate) const MODES: [Mode; 4] = [Mode::Bare, Mode::Mmapwatch, Mode::Bpftrace, Mode::Floor];

impl Mode {
    pub(crate) fn label(self) -> &'static str {
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
pub(crate) fn spawn_until_ready(command: &mut Command, ready: &str) -> Result<Child> {
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

pub(crate) fn json_output(command: &mut Command) -> Result<Value> {
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
pub(crate) struct Added {
    pub(crate) median: f64,
    pub(crate) low: f64,
    pub(crate) high: f64,
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
    pub(crate) fn show(&self) -> String {
        format!("{:.0} ({:.0} to {:.0})", self.median, self.low, self.high)
    }
}

pub(crate) struct FaultResult {
    pub(crate) workload: &'static str,
    /// Median ns per fault under each of [`MODES`].
    pub(crate) ns: [f64; 4],
    /// Added per fault under each of [`MODES`] (bare: 0).
    pub(crate) added: [Added; 4],
    /// ns per call of mmapwatch's fault program and its dirty-folio
    /// program (bpf_stats, in a separate run).
    pub(crate) fault_program_ns: f64,
    pub(crate) dirty_program_ns: f64,
    /// ns per call of the empty program on the fault tracepoint, measured
    /// the same way: what any program there costs with the stats on.
    pub(crate) floor_program_ns: f64,
}

impl FaultResult {
    pub(crate) fn added(&self, mode: Mode) -> Added {
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
pub(crate) fn program_stats() -> Result<std::collections::HashMap<String, (u64, u64)>> {
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
    let stacks = crate::bench_stacks::run(rounds.clamp(1, 5))?;

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
        &stacks,
    );
    let root = workspace_root();
    std::fs::write(root.join("BENCHMARKS.md"), &markdown)?;
    plot(&root.join("benchmarks.svg"), &faults)?;
    print!("{markdown}");
    step("wrote BENCHMARKS.md and benchmarks.svg");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_report::ratio_verdict;

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
