//! Project tasks: `cargo xtask setup | build | run | test`.
//!
//! `setup` makes a fresh machine able to build the eBPF side, idempotently,
//! saying what it checks and what it changes.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
pub(crate) use setup::ensure_apt;
use setup::setup;
use test_plan::{fuzz, test};

mod bench;
mod bench_capacity;
mod bench_memory;
mod bench_new_files;
mod bench_report;
mod bench_stacks;
mod image;
mod setup;
mod soak;
mod stack;
mod test_plan;
mod vm;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the eBPF programs needs (idempotent).
    Setup,
    /// Build mmapwatch (release).
    Build,
    /// Set up, build, and run `mmapwatch ARGS` as root.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, then run unit tests and the root integration tests (serially).
    Test,
    /// Run the exporter and the dashboard under a steady mmap write load;
    /// fail if their memory or open files grow.
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// New files all the time (2,000 a second, each written through a
        /// mapping and deleted) instead of a steady set.
        #[arg(long)]
        churn: bool,
    },
    /// Measure probe overhead, userspace throughput and memory, drops and
    /// attach time; write BENCHMARKS.md and benchmarks.svg.
    Bench {
        /// Interleaved rounds of the fault loop (medians are reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Boot a Debian kernel under QEMU and run the integration suite inside
    /// it once per backend (fentry, kprobe, tracepoint).
    VmTest {
        /// `debian-5.10`, `debian-6.1` or `debian-6.12` (downloaded and cached), a kernel
        /// .deb, or an unpacked kernel package directory (repeatable: the
        /// guests of all kernels share the queue).
        #[arg(long = "kernel", default_value = "debian-6.1")]
        kernels: Vec<String>,
        /// Backends to run the suite with (repeatable; default: all three).
        #[arg(long = "backend")]
        backends: Vec<String>,
        /// Integration test binaries to run (repeatable; default: all).
        #[arg(long = "suite")]
        suites: Vec<String>,
        /// Only tests whose names contain this.
        #[arg(long)]
        filter: Option<String>,
        /// Print what passing tests wrote too (libtest's --show-output),
        /// e.g. the randomized test's figures.
        #[arg(long)]
        show_output: bool,
        /// Hard limit for one guest run.
        #[arg(long, default_value_t = 40)]
        timeout_minutes: u64,
        /// Run this shell command in the guest instead (debugging).
        #[arg(long)]
        command: Option<String>,
        /// The guest's architecture: arm64 cross-builds and boots Debian
        /// 12's arm64 kernel under qemu-system-aarch64 (TCG).
        #[arg(long, value_enum, default_value_t)]
        arch: vm::Arch,
    },
    /// Build, then check that every eBPF program's deepest call chain fits
    /// Linux 6.1's stack limit (part of `test`; seconds instead of the VM).
    StackCheck {
        /// Check this object instead of building (e.g. an older build's).
        #[arg(long)]
        object: Option<PathBuf>,
    },
    /// Write the man page and shell completions (bash, zsh, fish) into
    /// target/dist, generated from mmapwatch's own command line.
    Docs,
    /// Build the container image (a static musl binary in an empty image,
    /// deploy/Containerfile, with podman; nothing is pulled).
    Image {
        /// The image's tag (default localhost/mmapwatch:VERSION).
        #[arg(long)]
        tag: Option<String>,
        /// Then run `doctor` inside it with the DaemonSet's capabilities.
        #[arg(long)]
        smoke: bool,
    },
    /// Fuzz the event decoder and the BTF parser (cargo-fuzz, nightly).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Build => {
            setup()?;
            build()
        }
        Task::Run { args } => {
            setup()?;
            build()?;
            run_mmapwatch(&args)
        }
        Task::Test => {
            setup()?;
            test()
        }
        Task::Soak { minutes, churn } => {
            setup()?;
            soak::run(minutes, churn)
        }
        Task::Bench { rounds } => {
            setup()?;
            bench::run(rounds)
        }
        Task::VmTest {
            kernels,
            backends,
            suites,
            filter,
            show_output,
            timeout_minutes,
            command,
            arch,
        } => {
            setup()?;
            let backends = if backends.is_empty() {
                vm::BACKENDS.iter().map(|b| b.to_string()).collect()
            } else {
                backends
            };
            let plans: Vec<vm::VmTest> = kernels
                .into_iter()
                .map(|kernel| vm::VmTest {
                    kernel,
                    backends: backends.clone(),
                    suites: suites.clone(),
                    filter: filter.clone(),
                    show_output,
                    timeout: std::time::Duration::from_secs(timeout_minutes * 60),
                    random_seeds: None,
                    command: command.clone(),
                    arch,
                })
                .collect();
            vm::run_vm_tests(&plans, vm::PARALLEL_GUESTS)
        }
        Task::Image { tag, smoke } => {
            setup()?;
            let tag = tag.unwrap_or_else(image::default_tag);
            image::build(&tag)?;
            if smoke {
                image::smoke(&tag)?;
            }
            Ok(())
        }
        Task::Fuzz { seconds } => {
            setup()?;
            fuzz(seconds)
        }
        Task::StackCheck { object } => match object {
            Some(object) => stack::check(&object),
            None => {
                setup()?;
                build()?;
                stack::check(&stack::probes_object()?)
            }
        },
        Task::Docs => {
            setup()?;
            build()?;
            docs()
        }
    }
}

/// The man page and completions, from the built binary (xtask cannot link
/// probe-user: that would build the eBPF side before `setup`).
fn docs() -> Result<()> {
    let dist = workspace_root().join("target/dist");
    std::fs::create_dir_all(dist.join("completions"))?;
    let generate = |args: &[&str], out: PathBuf| -> Result<()> {
        let output = Command::new(mmapwatch_release())
            .args(args)
            .output()
            .context("running mmapwatch")?;
        if !output.status.success() || output.stdout.is_empty() {
            bail!(
                "mmapwatch {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::fs::write(&out, &output.stdout)?;
        step(&format!("wrote {}", out.display()));
        Ok(())
    };
    generate(&["manpage"], dist.join("mmapwatch.1"))?;
    // The subcommands with pages of their own, as the binary lists them
    // (xtask cannot link probe-user).
    let list = Command::new(mmapwatch_release())
        .args(["manpage", "--list"])
        .output()
        .context("running mmapwatch")?;
    if !list.status.success() {
        bail!("mmapwatch manpage --list failed");
    }
    for subcommand in String::from_utf8_lossy(&list.stdout).lines() {
        generate(
            &["manpage", subcommand],
            dist.join(format!("mmapwatch-{subcommand}.1")),
        )?;
    }
    for (shell, name) in [
        ("bash", "mmapwatch.bash"),
        ("zsh", "_mmapwatch"),
        ("fish", "mmapwatch.fish"),
    ] {
        generate(&["completions", shell], dist.join("completions").join(name))?;
    }
    Ok(())
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub(crate) fn step(message: &str) {
    println!("xtask: {message}");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command, prefixed with sudo when we are not root.
pub(crate) fn privileged(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut command = Command::new("sudo");
        command.arg(program);
        command
    }
}

pub(crate) fn run(command: &mut Command) -> Result<()> {
    println!("xtask: $ {}", describe(command));
    let status = command
        .status()
        .with_context(|| format!("running {}", describe(command)))?;
    if !status.success() {
        bail!("{} failed: {status}", describe(command));
    }
    Ok(())
}

pub(crate) fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn output(command: &mut Command) -> Option<String> {
    let out = command.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn cargo() -> Command {
    let mut command = Command::new("cargo");
    command.current_dir(workspace_root());
    command
}

pub(crate) fn build() -> Result<()> {
    run(cargo().args(["build", "--release", "--package", "probe-user"]))
}

/// mmapwatch and the test workloads, release builds (soak and bench).
pub(crate) fn build_release_bins() -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "probe-user",
        "--package",
        "integration-tests",
        "--bins",
    ]))
}

pub(crate) fn mmapwatch_release() -> PathBuf {
    workspace_root().join("target/release/mmapwatch")
}

fn run_mmapwatch(args: &[OsString]) -> Result<()> {
    let mut command = privileged(&mmapwatch_release().display().to_string());
    command.args(args);
    println!("xtask: $ {}", describe(&command));
    let status = command.status().context("running mmapwatch")?;
    // Pass mmapwatch's (or its traced command's) exit code through.
    std::process::exit(status.code().unwrap_or(1));
}
