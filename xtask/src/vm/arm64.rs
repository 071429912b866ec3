//! arm64 guests: mmapwatch and the integration tests cross-built for
//! aarch64, booted under qemu-system-aarch64 (TCG) with Debian 12's arm64
//! kernel, on a Debian 12 arm64 root of its own (the host's x86 root,
//! which x86 guests share, cannot run there).
//!
//! The root is unpacked with mmdebstrap's `extract` variant: packages
//! unpacked, not configured, so no arm64 code runs on the host (no
//! binfmt or qemu-user needed). It holds the kernel package too.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::{cargo, ensure_apt, run, workspace_root};

pub const TARGET: &str = "aarch64-unknown-linux-gnu";

/// What building and booting arm64 guests needs on the host.
const HOST_PACKAGES: &[&str] = &[
    "qemu-system-arm",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "mmdebstrap",
];

/// The guest root's packages: the kernel, a shell and busybox for the
/// initramfs, and what the tests and the guest script run.
const ROOT_PACKAGES: &str = "linux-image-arm64,busybox-static,dash,bash,coreutils,util-linux,\
     mount,procps,findutils,grep,sed,python3,e2fsprogs,xfsprogs,iproute2,kmod,jq,bpftool,base-passwd";

/// Host packages and the Rust target.
pub fn prepare_host() -> Result<()> {
    ensure_apt(HOST_PACKAGES)?;
    run(Command::new("rustup").args(["target", "add", TARGET]))
}

/// cargo with the cross linker and C compiler for aarch64.
pub fn cross_cargo() -> Command {
    let mut command = cargo();
    command
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
            "aarch64-linux-gnu-gcc",
        )
        .env("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc");
    command
}

/// mmapwatch for the guest.
pub fn build() -> Result<()> {
    run(cross_cargo().args([
        "build",
        "--release",
        "--target",
        TARGET,
        "--package",
        "probe-user",
    ]))
}

pub fn mmapwatch() -> PathBuf {
    workspace_root().join(format!("target/{TARGET}/release/mmapwatch"))
}

/// The arm64 root (with the kernel under boot/ and lib/modules/),
/// unpacked once into `cache`.
pub fn guest_root(cache: &Path) -> Result<PathBuf> {
    let root = cache.join("arm64-bookworm-root");
    // The package list it was made with: another list makes it anew.
    let ready = cache.join("arm64-bookworm-root.ready");
    if fs::read_to_string(&ready).ok().as_deref() != Some(ROOT_PACKAGES) {
        let _ = fs::remove_dir_all(&root);
        run(Command::new("mmdebstrap")
            .args([
                "--variant=extract",
                "--arch=arm64",
                &format!("--include={ROOT_PACKAGES}"),
                "bookworm",
            ])
            .arg(&root)
            .arg("http://deb.debian.org/debian"))?;
        // Unconfigured packages: the links their scripts would make.
        for (link, to) in [("bin/sh", "dash"), ("usr/bin/python", "python3")] {
            let path = root.join(link);
            if fs::symlink_metadata(&path).is_err() {
                std::os::unix::fs::symlink(to, &path)
                    .with_context(|| format!("linking {}", path.display()))?;
            }
        }
        // And the users base-passwd's script would write: root is named.
        for (file, master) in [("passwd", "passwd.master"), ("group", "group.master")] {
            let from = root.join("usr/share/base-passwd").join(master);
            fs::copy(&from, root.join("etc").join(file))
                .with_context(|| format!("copying {}", from.display()))?;
        }
        fs::write(&ready, ROOT_PACKAGES)?;
    }
    Ok(root)
}

/// qemu-system-aarch64's machine: `virt` with every CPU feature, pointer
/// authentication emulated the cheap way (the architected algorithm
/// costs 6-10x under TCG).
pub fn qemu() -> Command {
    let mut qemu = Command::new("qemu-system-aarch64");
    qemu.args([
        "-M",
        "virt",
        "-cpu",
        "max,pauth-impdef=on",
        "-accel",
        "tcg,thread=single",
    ]);
    qemu
}
