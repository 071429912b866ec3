//! `cargo xtask test`: unit tests, the integration suites on this kernel,
//! the container image, and the suites in Debian kernels under QEMU; and
//! `cargo xtask fuzz`.

use std::process::Command;

use crate::{
    build, cargo, ensure_apt, image, mmapwatch_release, output, privileged, run, stack, step, vm,
    workspace_root,
};
use anyhow::Result;

/// What the integration tests drive besides mmapwatch: a real Prometheus
/// server (and its promtool) for the exporter, tmux for the dashboard,
/// bpftool to check nothing stays loaded, jq for the event stream, yq for
/// the shipped Kubernetes manifests, xfsprogs for an xfs scratch filesystem,
/// openssl and curl for the exporter's TLS and client certificates, sudo
/// for a writer's login uid kept across it; gcc, liblmdb-dev and python3
/// for the call-site tests' writers.
const TEST_PACKAGES: &[&str] = &[
    "prometheus",
    "tmux",
    "bpftool",
    "jq",
    "yq",
    "xfsprogs",
    "openssl",
    "curl",
    "sudo",
    // The containers suite runs a real container (runc: see image.rs).
    "podman",
    "runc",
    // The call-site tests' writers: C built by tests/build.rs, LMDB with
    // MDB_WRITEMAP, Python's mmap.
    "gcc",
    "liblmdb-dev",
    "python3",
];

pub(crate) fn test() -> Result<()> {
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

pub(crate) fn fuzz(seconds: u64) -> Result<()> {
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
