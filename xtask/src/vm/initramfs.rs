//! The guest's initramfs: busybox, the modules it needs to reach its
//! root, and the first-stage script, in a newc archive.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::*;
use crate::workspace_root;

/// Modules the guest loads before it can mount its root and scratch
/// filesystem (Debian builds them as modules); dependencies come from
/// modules.dep. crc32c is what ext4's and xfs's metadata checksums ask the
/// crypto API for: loaded first, as its soft dependants (6.12's libcrc32c)
/// expect.
pub(super) const GUEST_MODULES: &[&str] = &[
    "crc32c_generic",
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "loop",
    "ext4",
    "xfs",
    "overlay",
];

/// How the guest mounts its 9p shares: read-only, cached.
pub(super) const NINEP_OPTIONS: &str = "trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose";

/// The first stage, busybox's: load modules, mount the host root over 9p
/// with the guest's own proc, sys, dev and tmp on it, and switch to it.
/// The workspace (`@WORKSPACE@`) is bound back into place afterwards: a
/// clone under /tmp or /run would otherwise vanish under the guest's tmpfs.
const GUEST_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /host
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod /modules/$m || echo "guest: insmod $m failed"; done
if ! mount -t 9p -o @NINEP_OPTIONS@ hostroot /host; then
  echo "guest: cannot mount the host root"; echo MMAPWATCH-VM-DONE-FAILED; poweroff -f
fi
mkdir -p /workspace
@WORKSPACE_SOURCE@
mount -t tmpfs tmp /host/tmp
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs shm /host/dev/shm
mount -t tmpfs run /host/run
mkdir -p "/host@WORKSPACE@"
mount --move /workspace "/host@WORKSPACE@"
cp /stage2.sh /host/tmp/stage2.sh
exec switch_root /host /bin/sh /tmp/stage2.sh
"#;

pub(super) fn build_initramfs(kernel: &Kernel, script: &str, target: &Path) -> Result<()> {
    // The guest root's own busybox: static, of the guest's architecture.
    let busybox = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| kernel.guest_root.join(p))
        .find(|p| p.exists())
        .context("busybox is missing (busybox-static)")?;
    let workspace = workspace_root();
    let workspace_source = match kernel.arch {
        // Part of the host root.
        Arch::X86_64 => format!("mount --bind \"/host{}\" /workspace", workspace.display()),
        // A share of its own, and a mount point for it in the guest root.
        Arch::Arm64 => {
            let relative = workspace.strip_prefix("/").unwrap_or(&workspace);
            fs::create_dir_all(kernel.guest_root.join(relative))?;
            format!("mount -t 9p -o {NINEP_OPTIONS} workspace /workspace")
        }
    };
    let mut archive = Cpio::default();
    archive.directory("bin");
    archive.directory("modules");
    archive.file("bin/busybox", 0o755, &fs::read(busybox)?);
    let init = GUEST_INIT
        .replace("@WORKSPACE_SOURCE@", &workspace_source)
        .replace("@WORKSPACE@", &workspace.display().to_string())
        .replace("@NINEP_OPTIONS@", NINEP_OPTIONS);
    archive.file("init", 0o755, init.as_bytes());
    archive.file("stage2.sh", 0o755, script.as_bytes());
    let mut order = String::new();
    for module in module_load_order(&kernel.modules, GUEST_MODULES)? {
        let (name, bytes) = module_bytes(&kernel.modules.join(&module))?;
        archive.file(&format!("modules/{name}"), 0o644, &bytes);
        order.push_str(&format!("{name}\n"));
    }
    archive.file("modules/order", 0o644, order.as_bytes());
    fs::write(target, archive.finish())?;
    Ok(())
}

/// A module's file name as busybox's insmod loads it, and its bytes:
/// Debian's 6.12 ships `.ko.xz`, which insmod hands to init_module as they
/// are, so they are unpacked here (xz, as depmod's own packaging does).
fn module_bytes(path: &Path) -> Result<(String, Vec<u8>)> {
    let file = path
        .file_name()
        .context("module name")?
        .to_string_lossy()
        .into_owned();
    match file.strip_suffix(".xz") {
        Some(plain) => {
            let unpacked = Command::new("xz")
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("xz -dc {}", path.display()))?;
            if !unpacked.status.success() {
                bail!("xz -dc {} failed", path.display());
            }
            Ok((plain.to_string(), unpacked.stdout))
        }
        None => Ok((file, fs::read(path)?)),
    }
}

/// `wanted` and their dependencies, dependencies first, as paths relative
/// to the modules directory. A module the kernel has built in (6.12's
/// virtio_pci) needs no loading.
fn module_load_order(modules: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>> {
    let deps = fs::read_to_string(modules.join("modules.dep"))?;
    let builtin = fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let table: Vec<(&str, Vec<&str>)> = deps
        .lines()
        .filter_map(|line| {
            let (module, needs) = line.split_once(':')?;
            Some((module, needs.split_whitespace().collect()))
        })
        .collect();
    fn visit<'a>(module: &'a str, table: &[(&'a str, Vec<&'a str>)], order: &mut Vec<&'a str>) {
        if order.contains(&module) {
            return;
        }
        if let Some((_, needs)) = table.iter().find(|(m, _)| *m == module) {
            for need in needs {
                visit(need, table, order);
            }
        }
        order.push(module);
    }
    let mut order = Vec::new();
    let is_module = |path: &str, name: &str| {
        path.rsplit('/').next().is_some_and(|file| {
            file.strip_prefix(name)
                .is_some_and(|ext| ext.starts_with(".ko"))
        })
    };
    for name in wanted {
        if builtin.lines().any(|line| is_module(line, name)) {
            continue;
        }
        let module = table
            .iter()
            .map(|(m, _)| *m)
            .find(|m| is_module(m, name))
            .with_context(|| format!("module {name} is not in {}", modules.display()))?;
        visit(module, &table, &mut order);
    }
    Ok(order.into_iter().map(PathBuf::from).collect())
}

/// An uncompressed newc archive, the initramfs format the kernel unpacks
/// itself. Written here, not with cpio(1): three kinds of entry, and no
/// files need to be staged on disk.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    next_inode: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.next_inode += 1;
        let fields = [
            self.next_inode,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn directory(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, permissions: u32, data: &[u8]) {
        self.entry(name, 0o100000 | permissions, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.bytes
    }
}
