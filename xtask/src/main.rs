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

mod bench;
mod bench_memory;
mod bench_new_files;
mod image;
mod soak;
mod stack;
mod vm;
use clap::{Parser, Subcommand};

/// The LLVM major of the nightly toolchain's rustc; bpf-linker must be built
/// against the same one.
const LLVM_MAJOR: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13.0";

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

fn apt_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.contains("install ok installed"))
}

/// Installs Debian packages that are missing; `apt-get update` only if needed.
pub(crate) fn ensure_apt(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !apt_installed(p))
        .collect();
    if missing.is_empty() {
        step(&format!("apt packages present: {}", packages.join(" ")));
        return Ok(());
    }
    step(&format!("installing apt packages: {}", missing.join(" ")));
    run(privileged("apt-get").arg("update").arg("-qq"))?;
    run(privileged("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn nightly_llvm_major() -> Option<String> {
    let version = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))?;
    version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .map(str::to_string)
}

fn ensure_nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("installing the nightly toolchain (eBPF programs need -Z build-std)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if components.lines().any(|l| l.starts_with("rust-src")) {
        step("nightly rust-src present");
    } else {
        step("adding rust-src to nightly (build-std=core for bpfel-unknown-none)");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    match nightly_llvm_major() {
        Some(major) if major == LLVM_MAJOR => {
            step(&format!("nightly rustc uses LLVM {major}"));
            Ok(())
        }
        Some(major) => bail!(
            "nightly rustc uses LLVM {major}, but bpf-linker is built against LLVM {LLVM_MAJOR}: they must match (pin a nightly with LLVM {LLVM_MAJOR})"
        ),
        None => bail!("cannot run `rustup run nightly rustc -vV`"),
    }
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin").join(name)
}

/// bpf-linker built against the nightly's LLVM (it links libLLVM dynamically).
fn bpf_linker_matches() -> bool {
    let linker = cargo_bin("bpf-linker");
    linker.exists()
        && output(Command::new("ldd").arg(&linker))
            .is_some_and(|libs| libs.contains(&format!("libLLVM.so.{LLVM_MAJOR}")))
}

fn ensure_bpf_linker() -> Result<()> {
    if bpf_linker_matches() {
        step(&format!(
            "bpf-linker present, linked against LLVM {LLVM_MAJOR}"
        ));
        return Ok(());
    }
    step(&format!(
        "building bpf-linker against LLVM {LLVM_MAJOR} (about 80 s)"
    ));
    run(Command::new("cargo")
        // The version verified with this nightly; --force replaces one built
        // against another LLVM.
        .args([
            "install",
            "--force",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{LLVM_MAJOR}"))
        // Without it, llvm-sys picks the system's default LLVM (14) and fails.
        .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}")))?;
    if !bpf_linker_matches() {
        bail!("bpf-linker was built, but not against LLVM {LLVM_MAJOR}");
    }
    Ok(())
}

fn setup() -> Result<()> {
    ensure_apt(&[&format!("llvm-{LLVM_MAJOR}-dev")])?;
    ensure_nightly()?;
    ensure_bpf_linker()?;
    step("setup complete");
    Ok(())
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

/// What the integration tests drive besides mmapwatch: a real Prometheus
/// server (and its promtool) for the exporter, tmux for the dashboard,
/// bpftool to check nothing stays loaded, jq for the event stream, yq for
/// the shipped Kubernetes manifests, xfsprogs for an xfs scratch filesystem,
/// openssl and curl for the exporter's TLS and client certificates.
const TEST_PACKAGES: &[&str] = &[
    "prometheus",
    "tmux",
    "bpftool",
    "jq",
    "yq",
    "xfsprogs",
    "openssl",
    "curl",
];

fn test() -> Result<()> {
    ensure_apt(TEST_PACKAGES)?;
    step("unit tests");
    run(cargo().args([
        "test",
        "--package",
        "probe-user",
        "--package",
        "probe-common",
        "--package",
        "xtask",
    ]))?;
    build()?;
    step("eBPF call chains within Linux 6.1's stack limit");
    stack::check(&stack::probes_object()?)?;
    step("integration tests against the running kernel (root, one at a time)");
    let mut integration = privileged("env");
    integration
        .arg(format!("MMAPWATCH_BIN={}", mmapwatch_release().display()))
        .arg(format!(
            "PATH={}",
            std::env::var("PATH").unwrap_or_default()
        ))
        .arg("cargo")
        .args([
            "test",
            "--package",
            "integration-tests",
            "--",
            "--test-threads=1",
        ])
        .current_dir(workspace_root());
    run(&mut integration)?;
    step("the container image, built and run as the DaemonSet runs it");
    let tag = image::default_tag();
    image::build(&tag)?;
    image::smoke(&tag)?;
    step("the integration suites in Debian kernels under QEMU, a guest per kernel and backend");
    let plan = |kernel: &str, suites: &[&str]| vm::VmTest {
        kernel: kernel.into(),
        backends: vm::BACKENDS.iter().map(|b| b.to_string()).collect(),
        suites: suites.iter().map(|s| s.to_string()).collect(),
        filter: None,
        show_output: false,
        timeout: std::time::Duration::from_secs(40 * 60),
        command: None,
        random_seeds: Some(VM_RANDOM_SEEDS),
        arch: vm::Arch::X86_64,
    };
    // Longest guests first: the queue then ends with short ones on both
    // cores.
    vm::run_vm_tests(
        &[
            plan("debian-6.1", VM_SUITES),
            plan(vm::BULLSEYE_KERNEL, VM_SUITES_OLDEST_KERNEL),
            vm::VmTest {
                backends: ARM64_BACKENDS.iter().map(|b| b.to_string()).collect(),
                arch: vm::Arch::Arm64,
                ..plan("debian-6.1", ARM64_SUITES)
            },
            plan("debian-6.12", VM_SUITES_NEWER_KERNEL),
        ],
        vm::PARALLEL_GUESTS,
    )
}

/// What runs in the VM on every `cargo xtask test`: the suites that
/// exercise the probes. The exporter and dashboard suites only read what
/// the backend records, and run on the host.
const VM_SUITES: &[&str] = &["trace", "reliability", "truth"];

/// On Debian's 6.12 (large folios on ext4, other fault-around and folio
/// code than 6.1) the suite whose answers depend on them, within CI's time:
/// under TCG the trace suite alone takes ~11 minutes a backend.
const VM_SUITES_NEWER_KERNEL: &[&str] = &["truth"];

/// On Debian 11's 5.10, the oldest kernel supported (no folios, no maple
/// tree, no bpf_find_vma): the trace suite and the truth suite.
const VM_SUITES_OLDEST_KERNEL: &[&str] = &["trace", "truth"];

/// arm64 (Debian 12's 6.1 under qemu-system-aarch64): the trace suite,
/// with the backends arm64 allows (no exceptions:page_fault_user there).
const ARM64_SUITES: &[&str] = &["trace"];
const ARM64_BACKENDS: &[&str] = &["kprobe"];

/// Seeds of the randomized differential test per guest (the host runs 20):
/// under TCG each costs ~30 s.
const VM_RANDOM_SEEDS: u32 = 4;

/// The cargo-fuzz targets in fuzz/: what the kernel hands us (ring records,
/// BTF) must never panic the parser.
const FUZZ_TARGETS: &[&str] = &["decode", "btf"];

fn fuzz(seconds: u64) -> Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        step("cargo-fuzz present");
    } else {
        step("installing cargo-fuzz");
        run(Command::new("cargo").args(["install", "cargo-fuzz"]))?;
    }
    for target in FUZZ_TARGETS {
        step(&format!("fuzzing {target} for {seconds} s"));
        run(cargo()
            .args([
                "+nightly",
                "fuzz",
                "run",
                "--fuzz-dir",
                "fuzz",
                target,
                "--",
            ])
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=4096"))?;
    }
    Ok(())
}
