//! `cargo xtask vm-test`: the integration suite inside a QEMU guest, once per
//! backend.
//!
//! This machine's kernel refuses fentry (lockdown) and has no kprobes, so
//! those backends are proven on a Debian kernel booted under QEMU, the way
//! aya's `xtask integration-test vm` does it: a small initramfs (busybox,
//! the few modules the guest needs to reach its root, a script), and the
//! host's root shared read-only over virtio-9p so the guest runs the very
//! binaries built here. The guest writes its results to the serial console;
//! there is no other channel out of it.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

pub mod arm64;
mod bullseye;
mod guest;
mod initramfs;
mod kernels;

use guest::{boot, choose_accelerator, guest_script, Accel, GuestRun};
use initramfs::build_initramfs;
use kernels::Kernel;
pub use kernels::BULLSEYE_KERNEL;

use crate::{cargo, ensure_apt, output, step, workspace_root};

/// What the guest needs: QEMU, a static busybox for the initramfs, depmod
/// (kmod) for the module dependency list, e2fsprogs for the guest's ext4,
/// xz for compressed modules.
pub(super) const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "e2fsprogs",
    "xz-utils",
];

/// Printed by the guest: one result line per test binary and backend, and a
/// last line when it is done.
pub(super) const RESULT_MARK: &str = "MMAPWATCH-VM-RESULT";
pub(super) const DONE_MARK: &str = "MMAPWATCH-VM-DONE";

pub const BACKENDS: &[&str] = &["fentry", "kprobe", "tracepoint"];

/// One kernel's share of a VM run: each of its backends gets a guest of
/// its own, which runs every suite in turn.
pub struct VmTest {
    pub kernel: String,
    pub backends: Vec<String>,
    /// Test binaries to run (integration-tests `--test` names); empty: all.
    pub suites: Vec<String>,
    /// libtest filter passed to every suite.
    pub filter: Option<String>,
    /// libtest's --show-output: what passing tests printed.
    pub show_output: bool,
    /// The limit for each guest.
    pub timeout: Duration,
    /// A shell command to run in the guest instead of the suites
    /// (debugging); its exit code is reported.
    pub command: Option<String>,
    /// The randomized test's seed count in the guest (`MW_RANDOM_SEEDS`);
    /// None: the host's own setting, or the test's default.
    pub random_seeds: Option<u32>,
    pub arch: Arch,
}

/// The guest's architecture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// The host's own: the guest shares the host root.
    #[default]
    X86_64,
    /// Cross-built, on an arm64 root of its own (see `arm64`).
    Arm64,
}

pub(super) fn cache_dir() -> PathBuf {
    workspace_root().join("target/vm-cache")
}

/// One guest: a kernel (a plan) and a backend, or the plan's command.
struct Job {
    plan: usize,
    backend: Option<String>,
}

impl Job {
    fn label(&self, kernels: &[Kernel]) -> String {
        format!(
            "{} {}",
            kernels[self.plan].release,
            self.backend.as_deref().unwrap_or("command")
        )
    }
}

/// Runs every plan, one guest per kernel and backend, `guests` at a time:
/// a TCG guest keeps one host core busy, so on two cores two guests halve
/// the wall time of the long pole of `cargo xtask test`.
pub fn run_vm_tests(plans: &[VmTest], guests: usize) -> Result<()> {
    for plan in plans {
        for backend in &plan.backends {
            if !BACKENDS.contains(&backend.as_str()) {
                bail!("unknown backend {backend}: one of {}", BACKENDS.join(", "));
            }
        }
    }
    ensure_apt(VM_PACKAGES)?;
    let arm64 = plans.iter().any(|plan| plan.arch == Arch::Arm64);
    if arm64 {
        arm64::prepare_host()?;
    }
    let kernels = plans
        .iter()
        .map(|plan| {
            let kernel = Kernel::resolve(&plan.kernel, plan.arch)?;
            println!(
                "xtask: guest kernel {} ({})",
                kernel.release,
                kernel.vmlinuz.display()
            );
            Ok(kernel)
        })
        .collect::<Result<Vec<_>>>()?;

    step("building mmapwatch and the integration tests for the guest");
    if plans.iter().any(|plan| plan.arch == Arch::X86_64) {
        crate::build()?;
    }
    if arm64 {
        arm64::build()?;
    }
    let suites = plans
        .iter()
        .map(|plan| test_binaries(&plan.suites, plan.arch))
        .collect::<Result<Vec<_>>>()?;
    let scratch = workspace_root().join("target/itest-scratch");
    fs::create_dir_all(&scratch)?;
    // KVM only runs the host's own architecture.
    let accel = match kernels.iter().find(|k| k.arch == Arch::X86_64) {
        Some(kernel) => choose_accelerator(kernel)?,
        None => Accel::Tcg,
    };

    let jobs: Vec<Job> = plans
        .iter()
        .enumerate()
        .flat_map(|(index, plan)| -> Vec<Job> {
            if plan.command.is_some() {
                vec![Job {
                    plan: index,
                    backend: None,
                }]
            } else {
                plan.backends
                    .iter()
                    .map(|backend| Job {
                        plan: index,
                        backend: Some(backend.clone()),
                    })
                    .collect()
            }
        })
        .collect();
    let queue = std::sync::Mutex::new(jobs.iter().collect::<std::collections::VecDeque<_>>());
    let outcomes = std::sync::Mutex::new(Vec::new());
    let started = Instant::now();
    let (kernels, suites, scratch, shared_outcomes) = (&kernels, &suites, &scratch, &outcomes);
    std::thread::scope(|scope| {
        for _ in 0..guests.clamp(1, jobs.len().max(1)) {
            // The queue's lock is taken and released in `next`, not held
            // over a guest's run.
            let next = || queue.lock().ok().and_then(|mut q| q.pop_front());
            scope.spawn(move || {
                while let Some(job) = next() {
                    let plan = &plans[job.plan];
                    let outcome = run_job(job, plan, kernels, &suites[job.plan], scratch, accel);
                    if let Ok(mut all) = shared_outcomes.lock() {
                        all.push((job.label(kernels), outcome));
                    }
                }
            });
        }
    });
    let outcomes = outcomes
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a guest thread panicked"))?;
    println!(
        "xtask: {} guests, {} at a time, in {:.0?}",
        jobs.len(),
        guests.clamp(1, jobs.len().max(1)),
        started.elapsed()
    );
    let failures: Vec<String> = outcomes
        .into_iter()
        .filter_map(|(label, outcome)| outcome.err().map(|err| format!("{label}: {err:#}")))
        .collect();
    if !failures.is_empty() {
        bail!("in the VM: {}", failures.join("; "));
    }
    Ok(())
}

/// Boots one job's guest (a second time if it never finished: a test
/// failure is a result, a hung guest is not) and checks its results.
fn run_job(
    job: &Job,
    plan: &VmTest,
    kernels: &[Kernel],
    suites: &[(String, PathBuf)],
    scratch: &Path,
    accel: Accel,
) -> Result<()> {
    let kernel = &kernels[job.plan];
    let accel = if kernel.arch == Arch::X86_64 {
        accel
    } else {
        Accel::Tcg
    };
    let label = job.label(kernels);
    let file_label = label.replace(' ', "-");
    let script = guest_script(plan, job.backend.as_deref(), suites, scratch);
    let initramfs = cache_dir().join(format!("initramfs-{file_label}.cpio"));
    build_initramfs(kernel, &script, &initramfs)?;
    let mut last_error = None;
    for attempt in 1..=2 {
        step(&format!(
            "booting {label} under QEMU ({accel}), attempt {attempt}"
        ));
        match boot(kernel, &initramfs, accel, plan.timeout, &label) {
            Ok(run) => {
                return match &job.backend {
                    None => {
                        let ok = run.log.iter().any(|l| {
                            l.contains(&format!(
                                "{RESULT_MARK} backend=command suite=command exit=0 "
                            ))
                        });
                        if ok {
                            Ok(())
                        } else {
                            bail!("the guest command failed")
                        }
                    }
                    Some(backend) => report(&run, backend, suites, &label),
                };
            }
            Err(err) => {
                eprintln!("xtask: {label}: the guest did not finish: {err:#}");
                last_error = Some(err);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("the guest did not run")))
}

/// Guests run at once: this machine's two cores.
pub const PARALLEL_GUESTS: usize = 2;

/// The integration-test executables cargo builds, by test name.
fn test_binaries(wanted: &[String], arch: Arch) -> Result<Vec<(String, PathBuf)>> {
    let mut command = match arch {
        Arch::X86_64 => cargo(),
        Arch::Arm64 => arm64::cross_cargo(),
    };
    command.args([
        "test",
        "--package",
        "integration-tests",
        "--tests",
        "--no-run",
        "--message-format=json",
    ]);
    if arch == Arch::Arm64 {
        command.args(["--target", arm64::TARGET]);
    }
    let text = output(&mut command).context("building the integration tests")?;
    let mut found = Vec::new();
    for line in text.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let kinds = &message["target"]["kind"];
        if !kinds
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"))
        {
            continue;
        }
        let (Some(name), Some(exe)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) else {
            continue;
        };
        if wanted.is_empty() || wanted.iter().any(|w| w == name) {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    found.sort();
    if found.is_empty() {
        bail!("no integration test binaries matched {wanted:?}");
    }
    Ok(found)
}

/// Every suite must have run under the guest's backend and passed.
fn report(run: &GuestRun, backend: &str, suites: &[(String, PathBuf)], label: &str) -> Result<()> {
    let mut failures = Vec::new();
    for (suite, _) in suites {
        let wanted = format!("{RESULT_MARK} backend={backend} suite={suite} ");
        match run
            .log
            .iter()
            .find_map(|l| l.find(&wanted).map(|at| l[at + wanted.len()..].to_string()))
        {
            Some(rest) if rest.starts_with("exit=0 ") => {
                println!("xtask: {label:>28} {suite:<12} passed ({rest})")
            }
            Some(rest) => {
                println!("xtask: {label:>28} {suite:<12} FAILED ({rest})");
                failures.push(suite.clone());
            }
            None => {
                println!("xtask: {label:>28} {suite:<12} did not run");
                failures.push(format!("{suite} (no result)"));
            }
        }
    }
    // The randomized truth test's figures (it writes them past libtest's
    // capture), for the closing notes of issues and CI's log.
    for line in &run.log {
        if let Some(at) = line.find("randomized (") {
            println!("xtask: {label:>28} {}", &line[at..]);
        }
    }
    println!(
        "xtask: {label}: guest ran {:.0?} in all; first result after {:.0?}",
        run.elapsed,
        run.boot_to_first_result.unwrap_or_default()
    );
    if !failures.is_empty() {
        bail!("failed: {}", failures.join(", "));
    }
    Ok(())
}
