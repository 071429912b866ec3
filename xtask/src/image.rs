//! The container image: mmapwatch as one static (musl) binary in an empty
//! image, built by podman from deploy/Containerfile without pulling
//! anything, and a smoke test that runs `doctor --json` inside it with
//! the DaemonSet's capabilities instead of privileges.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{cargo, ensure_apt, output, run, step, workspace_root};

/// A static binary needs no libc in the image.
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// podman builds and runs the image; runc runs it, because crun refuses
/// hosts whose cgroups are mixed v1 and v2 (this machine's are); musl-gcc
/// compiles the C of the TLS library (aws-lc) for musl.
const IMAGE_PACKAGES: &[&str] = &["podman", "runc", "musl-tools"];

/// The tag `cargo xtask image` gives the image.
pub fn default_tag() -> String {
    format!("localhost/mmapwatch:{}", env!("CARGO_PKG_VERSION"))
}

/// Builds the static binary, then the image; returns nothing but the tag
/// it was given.
pub fn build(tag: &str) -> Result<()> {
    ensure_apt(IMAGE_PACKAGES)?;
    ensure_musl_target()?;
    run(cargo()
        .args([
            "build",
            "--release",
            "--package",
            "probe-user",
            "--target",
            MUSL_TARGET,
        ])
        // The cc crate looks for x86_64-linux-musl-gcc, which Debian lacks.
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc"))?;
    let binary = workspace_root()
        .join("target")
        .join(MUSL_TARGET)
        .join("release/mmapwatch");
    // The build context holds the binary alone: nothing else of the tree
    // can end up in the image.
    let context = workspace_root().join("target/image-context");
    if context.exists() {
        fs::remove_dir_all(&context)?;
    }
    fs::create_dir_all(&context)?;
    fs::copy(&binary, context.join("mmapwatch"))
        .with_context(|| format!("copying {}", binary.display()))?;
    let revision = output(Command::new("git").args(["rev-parse", "HEAD"]))
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    run(Command::new("podman")
        .args(["build", "--quiet", "--tag", tag])
        .arg(format!(
            "--label=org.opencontainers.image.revision={revision}"
        ))
        .arg(format!(
            "--label=org.opencontainers.image.version={}",
            env!("CARGO_PKG_VERSION")
        ))
        .arg("--file")
        .arg(workspace_root().join("deploy/Containerfile"))
        .arg(&context))?;
    let size =
        output(Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", tag]))
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
    step(&format!(
        "image {tag}: {:.1} MiB",
        size as f64 / (1 << 20) as f64
    ));
    Ok(())
}

fn ensure_musl_target() -> Result<()> {
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if installed.lines().any(|t| t.trim() == MUSL_TARGET) {
        step(&format!("rust target {MUSL_TARGET} present"));
        Ok(())
    } else {
        step(&format!(
            "adding rust target {MUSL_TARGET} (a static binary)"
        ));
        run(Command::new("rustup").args(["target", "add", MUSL_TARGET]))
    }
}

/// Runs `doctor --json` in the image as the DaemonSet would: no privileges,
/// the DaemonSet's capabilities and seccomp setting, a read-only root, the
/// host's PID namespace, and the host's BTF and tracefs mounted read-only.
/// Fails unless doctor says every needed check passed.
pub fn smoke(tag: &str) -> Result<()> {
    let manifest = daemonset()?;
    let capabilities = capabilities_added(&manifest);
    if capabilities.is_empty() {
        bail!("deploy/daemonset.yaml: no capabilities under `add:`");
    }
    let mut command = Command::new("podman");
    command.args([
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--read-only",
        "--pid=host",
    ]);
    if seccomp_unconfined(&manifest) {
        command.args(["--security-opt", "seccomp=unconfined"]);
    }
    // Unset limits would be raised to podman's defaults, which needs
    // CAP_SYS_RESOURCE (root here lacks it); these are within the host's.
    command.args([
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=4096:4096",
    ]);
    command.arg("--cap-drop=ALL");
    for capability in &capabilities {
        command.arg(format!("--cap-add={capability}"));
    }
    for host in ["/sys/kernel/btf", "/sys/kernel/tracing"] {
        command.arg(format!("--volume={host}:{host}:ro"));
    }
    command.args([tag, "doctor", "--json"]);
    step(&format!("$ {}", crate::describe(&command)));
    let out = command.output().context("running podman")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).with_context(|| {
        format!(
            "doctor in the image printed no JSON (exit {}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let failed: Vec<String> = report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|check| check["status"] == "fail")
        .map(|check| format!("{}: {}", check["name"], check["detail"]))
        .collect();
    if report["ok"] != true || !out.status.success() {
        bail!(
            "doctor in the image failed (exit {}): {}",
            out.status,
            failed.join("; ")
        );
    }
    let checks = report["checks"].as_array().map_or(0, Vec::len);
    step(&format!(
        "doctor in the image, with only {}: {checks} checks, none failed",
        capabilities.join(" ")
    ));
    Ok(())
}

/// deploy/daemonset.yaml: the smoke test runs with exactly its
/// capabilities and seccomp setting, so the manifest is what is tested.
fn daemonset() -> Result<String> {
    let path: PathBuf = workspace_root().join("deploy/daemonset.yaml");
    fs::read_to_string(&path).with_context(|| path.display().to_string())
}

/// Whether the manifest's `seccompProfile:` is `type: Unconfined`.
fn seccomp_unconfined(manifest: &str) -> bool {
    manifest
        .lines()
        .skip_while(|l| l.trim() != "seccompProfile:")
        .nth(1)
        .is_some_and(|l| l.trim() == "type: Unconfined")
}

/// The items of the `add:` list of a manifest's `capabilities:`.
fn capabilities_added(manifest: &str) -> Vec<String> {
    let mut lines = manifest.lines().skip_while(|l| l.trim() != "add:").skip(1);
    let mut added = Vec::new();
    for line in lines.by_ref() {
        let Some(item) = line.trim().strip_prefix("- ") else {
            break;
        };
        let name = item.split('#').next().unwrap_or("").trim();
        added.push(name.to_string());
    }
    added
}

#[cfg(test)]
mod tests {
    use super::{capabilities_added, seccomp_unconfined};

    #[test]
    fn the_daemonsets_capabilities_are_read_from_its_add_list() {
        let manifest = include_str!("../../deploy/daemonset.yaml");
        assert!(seccomp_unconfined(manifest));
        assert!(!seccomp_unconfined(
            "seccompProfile:\n  type: RuntimeDefault\n"
        ));
        assert_eq!(
            capabilities_added(manifest),
            [
                "BPF",
                "PERFMON",
                "SYS_PTRACE",
                "CHECKPOINT_RESTORE",
                "DAC_READ_SEARCH"
            ]
        );
    }
}
