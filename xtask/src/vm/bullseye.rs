//! Debian 11's Linux 5.10, the oldest kernel mmapwatch supports, from
//! bullseye-security. This machine's apt (Debian 12) does not list it, so
//! the archive's package index is read over HTTPS and the package's
//! SHA-256 checked against it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{output, run};

const ARCHIVE: &str = "https://deb.debian.org/debian-security";
const INDEX: &str = "dists/bullseye-security/main/binary-amd64/Packages.xz";

/// A kernel package of the index: name, path in the archive, SHA-256.
#[derive(Debug, PartialEq, Eq)]
struct Package {
    name: String,
    filename: String,
    sha256: String,
}

/// The generic amd64 5.10 kernels of a Packages index (not cloud or rt),
/// in their `-unsigned` variant, newest ABI last.
fn kernels(index: &str) -> Vec<Package> {
    let mut found: Vec<(u64, Package)> = index
        .split("\n\n")
        .filter_map(|stanza| {
            let field = |key: &str| {
                stanza
                    .lines()
                    .find_map(|line| line.strip_prefix(key)?.strip_prefix(": "))
                    .map(str::to_string)
            };
            let name = field("Package")?;
            let abi: u64 = name
                .strip_prefix("linux-image-5.10.0-")?
                .strip_suffix("-amd64-unsigned")?
                .parse()
                .ok()?;
            Some((
                abi,
                Package {
                    name,
                    filename: field("Filename")?,
                    sha256: field("SHA256")?,
                },
            ))
        })
        .collect();
    found.sort_by_key(|(abi, _)| *abi);
    found.into_iter().map(|(_, package)| package).collect()
}

/// The newest 5.10 kernel package, downloaded into `cache` unless there;
/// offline, the newest one cached.
pub fn kernel_deb(cache: &Path) -> Result<PathBuf> {
    fs::create_dir_all(cache)?;
    let index = output(Command::new("sh").arg("-c").arg(format!(
        "curl -fsSL --max-time 120 {ARCHIVE}/{INDEX} | xz -dc"
    )));
    let Some(newest) = index.as_deref().map(kernels).and_then(|mut k| k.pop()) else {
        return cached(cache)
            .context("the bullseye-security index is unreachable and no 5.10 kernel is cached");
    };
    let file = newest
        .filename
        .rsplit('/')
        .next()
        .context("package file name")?;
    let deb = cache.join(file);
    if deb.exists() && sha256(&deb).as_deref() == Some(newest.sha256.as_str()) {
        return Ok(deb);
    }
    println!(
        "xtask: downloading {} (not installed, only unpacked)",
        newest.name
    );
    let partial = cache.join(format!("{file}.partial"));
    run(Command::new("curl")
        .args(["-fsSL", "--max-time", "600", "-o"])
        .arg(&partial)
        .arg(format!("{ARCHIVE}/{}", newest.filename)))?;
    if sha256(&partial).as_deref() != Some(newest.sha256.as_str()) {
        let _ = fs::remove_file(&partial);
        bail!("{}: SHA-256 differs from the archive's index", newest.name);
    }
    fs::rename(&partial, &deb)?;
    Ok(deb)
}

fn sha256(path: &Path) -> Option<String> {
    let out = output(Command::new("sha256sum").arg(path))?;
    out.split_whitespace().next().map(str::to_string)
}

fn cached(cache: &Path) -> Option<PathBuf> {
    let mut debs: Vec<PathBuf> = fs::read_dir(cache)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name().is_some_and(|name| {
                let name = name.to_string_lossy();
                name.starts_with("linux-image-5.10.0-") && name.ends_with("_amd64.deb")
            })
        })
        .collect();
    debs.sort();
    debs.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_generic_unsigned_kernel_comes_last() {
        let index =
            "Package: linux-image-5.10.0-9-amd64-unsigned\nFilename: pool/a_9.deb\nSHA256: 99\n\n\
Package: linux-image-5.10.0-46-cloud-amd64-unsigned\nFilename: pool/cloud.deb\nSHA256: cc\n\n\
Package: linux-image-5.10.0-46-amd64-unsigned\nFilename: pool/a_46.deb\nSHA256: 46\n\n\
Package: linux-image-5.10.0-46-amd64\nFilename: pool/signed.deb\nSHA256: ss\n";
        let found = kernels(index);
        assert_eq!(found.len(), 2);
        assert_eq!(
            found.last().unwrap(),
            &Package {
                name: "linux-image-5.10.0-46-amd64-unsigned".into(),
                filename: "pool/a_46.deb".into(),
                sha256: "46".into(),
            }
        );
    }
}
