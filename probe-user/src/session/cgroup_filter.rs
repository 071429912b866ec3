//! `--cgroup` and `--container` as the kernel filters them: the cgroups
//! they name, by id and depth. A task is in one when its cgroup's ancestor
//! at that depth is it, so the cgroups made below it later (a container's
//! own children, a service's new scopes) are followed without a lookup.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use probe_common::{CgroupFilter, MAX_CGROUP_FILTERS};

use super::cgroups::container_name;
use crate::{error::UserError, model::paths::MountTable};

/// Directories walked looking for a container's cgroup: a host has
/// thousands of cgroups, not millions.
const WALK_BUDGET: usize = 100_000;

/// The cgroups `--cgroup PATH` (a path under the cgroup2 root, as the
/// report's `cgroup` gives it, or the directory itself) and `--container
/// ID` (a container's id or a unique prefix of it, by the exporter's rule)
/// select.
pub fn cgroup_filters(
    cgroups: &[PathBuf],
    containers: &[String],
) -> Result<Vec<CgroupFilter>, UserError> {
    if cgroups.is_empty() && containers.is_empty() {
        return Ok(Vec::new());
    }
    let mounts = MountTable::read();
    let Some(root) = mounts.mount_point_of_type("cgroup2") else {
        return Err(UserError::Usage(
            "--cgroup and --container need cgroup2 mounted (mount -t cgroup2 none /sys/fs/cgroup)"
                .into(),
        ));
    };
    let mut filters = Vec::new();
    for path in cgroups {
        filters.push(named_cgroup(root, path)?);
    }
    for id in containers {
        filters.extend(container_cgroups(root, id)?);
    }
    if filters.len() > MAX_CGROUP_FILTERS {
        return Err(UserError::Usage(format!(
            "at most {MAX_CGROUP_FILTERS} cgroups for --cgroup and --container ({} given)",
            filters.len()
        )));
    }
    Ok(filters)
}

/// The cgroup at `dir` (below `root`).
fn filter_of(root: &Path, dir: &Path) -> Option<CgroupFilter> {
    let below = dir.strip_prefix(root).ok()?;
    let metadata = std::fs::metadata(dir).ok()?;
    (metadata.is_dir() && dir.join("cgroup.procs").is_file()).then(|| CgroupFilter {
        id: metadata.ino(),
        level: below.components().count() as u32,
        _pad: 0,
    })
}

fn named_cgroup(root: &Path, path: &Path) -> Result<CgroupFilter, UserError> {
    let dir = if path.starts_with(root) {
        path.to_path_buf()
    } else {
        root.join(path.strip_prefix("/").unwrap_or(path))
    };
    // `..` would leave the hierarchy the ids are of.
    let escapes = dir
        .components()
        .any(|c| c == std::path::Component::ParentDir);
    match filter_of(root, &dir).filter(|_| !escapes) {
        Some(filter) => Ok(filter),
        None => Err(UserError::Usage(format!(
            "--cgroup {}: not a cgroup under {}",
            path.display(),
            root.display()
        ))),
    }
}

/// Whether `wanted` (an id or a prefix of one) names the container whose
/// short id is `short` (12 hex digits).
fn names_container(wanted: &str, short: &str) -> bool {
    let wanted = wanted.to_ascii_lowercase();
    match wanted.get(..short.len()) {
        Some(head) => head == short,
        None => short.starts_with(&wanted),
    }
}

/// The top-most cgroups of the container `id` (its cgroups below them are
/// in the filter already).
fn container_cgroups(root: &Path, id: &str) -> Result<Vec<CgroupFilter>, UserError> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(UserError::Usage(format!(
            "--container {id}: a container id is hexadecimal"
        )));
    }
    let mut found: Vec<(String, CgroupFilter)> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    let mut budget = WALK_BUDGET;
    while let Some(dir) = stack.pop() {
        budget = budget.saturating_sub(1);
        if budget == 0 {
            break;
        }
        let below = format!("/{}", dir.strip_prefix(root).unwrap_or(&dir).display());
        let short = container_name(&below)
            .and_then(|name| Some(name.rsplit_once("container:")?.1.to_string()));
        if let Some(short) = short.filter(|short| names_container(id, short)) {
            if let Some(filter) = filter_of(root, &dir) {
                found.push((short, filter));
            }
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    let mut containers: Vec<&str> = found.iter().map(|(short, _)| short.as_str()).collect();
    containers.sort_unstable();
    containers.dedup();
    match containers.len() {
        0 => Err(UserError::Usage(format!(
            "--container {id}: no cgroup of a running container has that id"
        ))),
        1 => Ok(found.into_iter().map(|(_, filter)| filter).collect()),
        _ => Err(UserError::Usage(format!(
            "--container {id}: more than one container has an id starting so ({})",
            containers.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_or_a_prefix_names_a_container() {
        let short = "4f1c2a7e9b3d";
        assert!(names_container("4f1c2a7e9b3d5f60718293a4", short));
        assert!(names_container("4F1C", short), "any case");
        assert!(names_container(short, short));
        assert!(!names_container("4f1d", short));
        assert!(!names_container("4f1c2a7e9b3e00", short));
    }

    #[test]
    fn a_cgroup_is_named_under_the_root_and_never_above_it() {
        let root = std::env::temp_dir();
        let err = named_cgroup(&root, Path::new("/../etc")).unwrap_err();
        assert!(err.to_string().contains("not a cgroup"), "{err}");
        let err = named_cgroup(&root, Path::new("/no-such-cgroup-mmapwatch")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--cgroup /no-such-cgroup-mmapwatch: "),
            "{err}"
        );
    }
}
