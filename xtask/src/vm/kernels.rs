//! The guests' kernels: Debian's, downloaded (not installed) and cached,
//! or a package or directory given.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::*;
use crate::run;

/// A kernel image with its modules, unpacked under the cache directory.
pub(super) struct Kernel {
    pub(super) release: String,
    pub(super) vmlinuz: PathBuf,
    /// `lib/modules/<release>` with a modules.dep.
    pub(super) modules: PathBuf,
    pub(super) arch: Arch,
    /// What the guest mounts as its root: the host's own, or the arm64 one.
    pub(super) guest_root: PathBuf,
}

impl Kernel {
    /// `debian-6.1` or `debian-6.12`: the newest kernel of that series
    /// Debian 12 offers, downloaded (not installed) and cached; or a path
    /// to a kernel .deb, or to a directory holding `boot/vmlinuz-*` and
    /// `lib/modules/*`.
    pub(super) fn resolve(spec: &str, arch: Arch) -> Result<Self> {
        let root = if arch == Arch::Arm64 {
            if spec != "debian-6.1" {
                bail!("--arch arm64: the guest kernel is debian-6.1 (Debian 12's arm64 kernel), not {spec}");
            }
            super::arm64::guest_root(&cache_dir())?
        } else if spec == BULLSEYE_KERNEL {
            unpack_deb(&super::bullseye::kernel_deb(&cache_dir())?)?
        } else if let Some(series) = spec.strip_prefix("debian-") {
            if !DEBIAN_SERIES.contains(&series) {
                bail!(
                    "--kernel {spec}: Debian kernels here are {BULLSEYE_KERNEL}, {}",
                    DEBIAN_SERIES.map(|s| format!("debian-{s}")).join(", ")
                );
            }
            debian_kernel(series)?
        } else {
            let path = PathBuf::from(spec);
            if path.extension().is_some_and(|ext| ext == "deb") {
                unpack_deb(&path)?
            } else if path.is_dir() {
                path
            } else {
                bail!("--kernel {spec}: expected debian-5.10, debian-6.1, debian-6.12, a kernel .deb, or an unpacked package directory");
            }
        };
        let vmlinuz = fs::read_dir(root.join("boot"))
            .with_context(|| format!("{}/boot", root.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .with_context(|| format!("no boot/vmlinuz-* under {}", root.display()))?;
        let release = vmlinuz
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .context("vmlinuz name")?
            .to_string();
        let modules = root.join("lib/modules").join(&release);
        if !modules.join("modules.dep").exists() {
            run(Command::new("depmod").args(["-b"]).arg(&root).arg(&release))?;
        }
        let guest_root = match arch {
            Arch::X86_64 => PathBuf::from("/"),
            Arch::Arm64 => root.clone(),
        };
        Ok(Self {
            release,
            vmlinuz,
            modules,
            arch,
            guest_root,
        })
    }
}

/// Debian 11's 5.10 (bullseye-security), the oldest kernel supported.
pub const BULLSEYE_KERNEL: &str = "debian-5.10";

/// The Debian 12 kernel series `--kernel debian-SERIES` accepts: its own
/// 6.1 and the 6.12 it also carries (large folios on more filesystems,
/// other fault-around and folio behaviour).
pub const DEBIAN_SERIES: [&str; 2] = ["6.1", "6.12"];

/// The generic amd64 kernel packages of `series` (not cloud, not rt), in
/// their `-unsigned` variant (the same kernel without the signed-image
/// indirection), oldest first.
pub(super) fn debian_packages(series: &str, names: &str) -> Vec<String> {
    let prefix = format!("linux-image-{series}.");
    let mut found: Vec<(Vec<u64>, String)> = names
        .lines()
        .map(str::trim)
        .filter_map(|name| {
            let rest = name.strip_prefix(&prefix)?;
            let version = rest.strip_suffix("-amd64-unsigned")?;
            // 6.1.0-56 or 6.12.117+deb12: nothing but the version before
            // the flavour (so not 6.12's -cloud or -rt, nor 6.1 matching 6.12).
            let numbers: Vec<u64> = version
                .split(|c: char| !c.is_ascii_digit())
                .filter(|part| !part.is_empty())
                .filter_map(|part| part.parse().ok())
                .collect();
            let plain = version
                .trim_end_matches("+deb12")
                .chars()
                .all(|c| c.is_ascii_digit() || c == '-' || c == '.');
            (plain && rest.starts_with(|c: char| c.is_ascii_digit()))
                .then(|| (numbers, name.to_string()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, name)| name).collect()
}

/// Downloads the newest generic kernel of `series` unless a cached copy is
/// there. Debian drops old ABI versions from the archive, so the name is
/// resolved every time and any cached .deb of the series is the fallback.
pub(super) fn debian_kernel(series: &str) -> Result<PathBuf> {
    let cache = cache_dir();
    fs::create_dir_all(&cache)?;
    let wanted = output(Command::new("apt-cache").args(["pkgnames", "linux-image-"]))
        .and_then(|names| debian_packages(series, &names).pop());
    let cached = |name: Option<&str>| -> Option<PathBuf> {
        let mut debs: Vec<(Vec<u64>, PathBuf)> = fs::read_dir(&cache)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .filter_map(|p| {
                let file = p.file_name()?.to_string_lossy().into_owned();
                let package = file.split('_').next()?.to_string();
                let ours = match name {
                    Some(name) => package == name,
                    None => debian_packages(series, &package).len() == 1,
                };
                ours.then(|| {
                    let numbers = file
                        .split(|c: char| !c.is_ascii_digit())
                        .filter_map(|n| n.parse().ok())
                        .collect();
                    (numbers, p)
                })
            })
            .collect();
        debs.sort();
        debs.pop().map(|(_, p)| p)
    };
    let deb = match &wanted {
        Some(name) => match cached(Some(name)) {
            Some(deb) => deb,
            None => {
                println!("xtask: downloading {name} (not installed, only unpacked)");
                let downloaded = Command::new("apt-get")
                    .args(["download", "-q", name])
                    .current_dir(&cache)
                    .status()
                    .is_ok_and(|s| s.success());
                match cached(Some(name)) {
                    Some(deb) if downloaded => deb,
                    _ => cached(None).with_context(|| {
                        format!("apt-get download {name} failed and no {series} kernel is cached")
                    })?,
                }
            }
        },
        None => cached(None).with_context(|| {
            format!("apt-cache knows no linux-image-{series}.*-amd64-unsigned (is this Debian 12?) and none is cached")
        })?,
    };
    unpack_deb(&deb)
}

pub(super) fn unpack_deb(deb: &Path) -> Result<PathBuf> {
    let stem = deb
        .file_stem()
        .context("package name")?
        .to_string_lossy()
        .into_owned();
    let target = cache_dir().join(stem);
    if !target.join(".unpacked").exists() {
        fs::create_dir_all(&target)?;
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&target))?;
        fs::write(target.join(".unpacked"), "")?;
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::debian_packages;

    const NAMES: &str = "linux-image-6.1.0-55-amd64-unsigned
linux-image-6.1.0-56-amd64-unsigned
linux-image-6.1.0-56-cloud-amd64-unsigned
linux-image-6.1.0-56-rt-amd64-unsigned
linux-image-6.1.0-56-amd64
linux-image-6.12.9+deb12-amd64-unsigned
linux-image-6.12.117+deb12-amd64-unsigned
linux-image-6.12.117+deb12-cloud-amd64-unsigned
linux-image-6.12.117+deb12-rt-amd64-unsigned
linux-image-amd64";

    #[test]
    fn each_series_finds_its_own_generic_kernels_newest_last() {
        assert_eq!(
            debian_packages("6.1", NAMES),
            [
                "linux-image-6.1.0-55-amd64-unsigned",
                "linux-image-6.1.0-56-amd64-unsigned"
            ]
        );
        assert_eq!(
            debian_packages("6.12", NAMES),
            [
                "linux-image-6.12.9+deb12-amd64-unsigned",
                "linux-image-6.12.117+deb12-amd64-unsigned"
            ]
        );
    }
}
