//! `cargo xtask setup`: what a fresh machine needs to build the eBPF side
//! (a nightly with rust-src, bpf-linker against the right LLVM, apt
//! packages), installed idempotently, saying what it checks and changes.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{output, privileged, run, step};
use anyhow::{bail, Result};

/// The LLVM major of the nightly toolchain's rustc; bpf-linker must be built
/// against the same one.
const LLVM_MAJOR: &str = "22";

const BPF_LINKER_VERSION: &str = "0.13.0";

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

pub(crate) fn setup() -> Result<()> {
    ensure_apt(&[&format!("llvm-{LLVM_MAJOR}-dev")])?;
    ensure_nightly()?;
    ensure_bpf_linker()?;
    step("setup complete");
    Ok(())
}
