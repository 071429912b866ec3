//! The call-site scenario of `cargo xtask bench`: what `trace --stacks`
//! adds to a first write. The C writer of the call-site tests (built here
//! with frame pointers) writes every page of a new file once, so every
//! fault is a first write that takes a stack; bare, under `trace` and
//! under `trace --stacks`. The kernel's cost per fault program call comes
//! from bpf_stats; the writer's from its run time. Repeated faults never
//! take a stack: the fault loops (above) measure them with stacks off,
//! which is the same program.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    bench::{median, program_stats, spawn_until_ready},
    mmapwatch_release, step, workspace_root,
};

/// Pages written per run: every one a first write.
pub const PAGES: u64 = 32_768;

#[derive(Clone, Copy, PartialEq)]
enum Under {
    Bare,
    Trace,
    TraceStacks,
}

const UNDER: [Under; 3] = [Under::Bare, Under::Trace, Under::TraceStacks];

pub struct StacksResult {
    pub rounds: usize,
    /// The writer's ns per page, bare, `trace`, `trace --stacks`.
    pub writer_ns_per_page: [f64; 3],
    /// The fault program's ns per call, `trace` and `trace --stacks`.
    pub program_ns: [f64; 2],
    /// Frames in the writer's stacks.
    pub frames: usize,
}

/// The C writer, with frame pointers (tests/c/stacks.c).
fn writer() -> Result<PathBuf> {
    let out = workspace_root().join("target/bench/stacks-fp");
    std::fs::create_dir_all(out.parent().context("bench dir")?)?;
    let status = Command::new("cc")
        .args([
            "-g",
            "-O0",
            "-fno-omit-frame-pointer",
            "-mno-omit-leaf-frame-pointer",
            "-o",
        ])
        .arg(&out)
        .arg(workspace_root().join("tests/c/stacks.c"))
        .status()
        .context("cc")?;
    if !status.success() {
        bail!("cc tests/c/stacks.c failed");
    }
    Ok(out)
}

/// One run of the writer under `under`: its ns per page, and the fault
/// program's (run time, calls) over it when traced.
fn one_run(writer: &Path, file: &Path, under: Under) -> Result<(f64, (u64, u64))> {
    let tracer = match under {
        Under::Bare => None,
        Under::Trace | Under::TraceStacks => {
            let mut command = Command::new(mmapwatch_release());
            command.args(["trace", "--json", "--path-prefix"]).arg(file);
            if under == Under::TraceStacks {
                command.arg("--stacks");
            }
            Some(spawn_until_ready(&mut command, "tracing")?)
        }
    };
    let _ = std::fs::remove_file(file);
    let before = program_stats()?;
    let started = Instant::now();
    let status = Command::new(writer)
        .arg(file)
        .arg(PAGES.to_string())
        .status()
        .context("the writer")?;
    let seconds = started.elapsed().as_secs_f64();
    let after = program_stats()?;
    if let Some(mut child) = tracer {
        // SAFETY: signals our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        child.wait()?;
    }
    if !status.success() {
        bail!("the writer failed: {status}");
    }
    let find = |stats: &std::collections::HashMap<String, (u64, u64)>| {
        [
            "mw_page_fault_user",
            "mw_page_fault_user_stacks",
            "mw_page_fault_u",
        ]
        .iter()
        .find_map(|name| stats.get(*name).copied())
        .unwrap_or((0, 0))
    };
    let ((t0, c0), (t1, c1)) = (find(&before), find(&after));
    Ok((
        seconds * 1e9 / PAGES as f64,
        (t1.saturating_sub(t0), c1.saturating_sub(c0)),
    ))
}

pub fn run(rounds: usize) -> Result<StacksResult> {
    let writer = writer()?;
    let file = workspace_root().join("target/bench/stacks.bin");
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").context("bpf_stats")?;
    let mut ns: [Vec<f64>; 3] = Default::default();
    let mut program: [(u64, u64); 2] = [(0, 0); 2];
    let result = (|| -> Result<()> {
        for round in 0..rounds {
            let mut order = UNDER;
            order.rotate_left(round % UNDER.len());
            for under in order {
                let (per_page, (time, calls)) = one_run(&writer, &file, under)?;
                ns[under as usize].push(per_page);
                if under != Under::Bare {
                    let slot = &mut program[under as usize - 1];
                    slot.0 += time;
                    slot.1 += calls;
                }
            }
            step(&format!(
                "first writes with stacks: round {}/{rounds}",
                round + 1
            ));
        }
        Ok(())
    })();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0").context("bpf_stats")?;
    let _ = std::fs::remove_file(&file);
    result?;
    let per_call = |(time, calls): (u64, u64)| {
        if calls == 0 {
            f64::NAN
        } else {
            time as f64 / calls as f64
        }
    };
    Ok(StacksResult {
        rounds,
        writer_ns_per_page: ns.map(|mut values| median(&mut values)),
        program_ns: program.map(per_call),
        // store_page < write_even < main < __libc_start_call_main (the
        // stacks tests check these frames).
        frames: 4,
    })
}

impl StacksResult {
    pub fn render(&self) -> String {
        let [bare, trace, stacks] = self.writer_ns_per_page;
        format!(
            "\n## Call-site stacks (`trace --stacks`)\n\nA C writer built with frame pointers (tests/c/stacks.c: {} frames a stack) writes each page of a new {PAGES}-page ext4 file once: every fault is a first write, and with `--stacks` takes the writer's stack. Bare, under `trace` and under `trace --stacks` (system-wide, `--path-prefix` the file), interleaved, {} rounds, medians.\n\n| | bare | trace | trace --stacks |\n|---|---|---|---|\n| writer ns per page | {bare:.0} | {trace:.0} | {stacks:.0} |\n| fault program ns per call (bpf_stats) | - | {:.0} | {:.0} |\n\nThe stack adds {:.0} ns to the fault program per first write here. Repeated faults never take one: the fault loops above measure the program loaded without `--stacks`, which holds no stack call at all; its `--stacks` twin runs the same code on a repeated fault.\n",
            self.frames,
            self.rounds,
            self.program_ns[0],
            self.program_ns[1],
            self.program_ns[1] - self.program_ns[0],
        )
    }
}
