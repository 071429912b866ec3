//! Writers' cgroups named from their ids (cgroup v2 ids are the inode
//! numbers of the cgroup directories), and the container a cgroup path
//! shows: what the exporter labels and the trace report's writers carry.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::model::paths::MountTable;

/// Cgroup names kept before the cache starts over.
const MAX_CGROUP_NAMES: usize = 100_000;

/// cgroup v2 ids are the inode numbers of the cgroup directories.
#[derive(Debug, Default)]
pub struct CgroupNames {
    root: Option<PathBuf>,
    by_id: HashMap<u64, String>,
    last_scan: Option<Instant>,
}

impl CgroupNames {
    pub fn new(mounts: &MountTable) -> Self {
        Self {
            root: mounts.mount_point_of_type("cgroup2").map(PathBuf::from),
            ..Self::default()
        }
    }

    fn scan(&mut self) {
        use std::os::unix::fs::MetadataExt as _;
        let Some(root) = self.root.clone() else {
            return;
        };
        self.last_scan = Some(Instant::now());
        let mut stack = vec![root.clone()];
        // Bounded: a host has thousands of cgroups, not millions.
        let mut budget = 100_000;
        while let Some(dir) = stack.pop() {
            budget -= 1;
            if budget == 0 {
                break;
            }
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let name = match dir.strip_prefix(&root) {
                Ok(rel) if rel.as_os_str().is_empty() => "/".to_string(),
                Ok(rel) => format!("/{}", rel.display()),
                Err(_) => continue,
            };
            self.by_id.insert(meta.ino(), name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
    }

    /// The cgroup's container (see [`container_name`]) or its path, or
    /// `id:ID` when it cannot be found (gone since).
    pub fn name(&mut self, id: u64) -> String {
        match self.path(id) {
            Some(path) => container_name(&path).unwrap_or(path),
            None => format!("id:{id}"),
        }
    }

    /// The cgroup's path under the cgroup2 root: opened by its id (a file
    /// handle: no walk), or, where that is refused (no
    /// CAP_DAC_READ_SEARCH), found by a walk of the hierarchy at most
    /// every 10 s.
    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(path) = self.by_id.get(&id) {
            return Some(path.clone());
        }
        if let Some(path) = self
            .root
            .as_deref()
            .and_then(|root| crate::model::file_handle::cgroup_path(root, id))
        {
            // Containers come and go: the names of gone ones are dropped
            // now and then rather than kept for months.
            if self.by_id.len() >= MAX_CGROUP_NAMES {
                self.by_id.clear();
            }
            self.by_id.insert(id, path.clone());
            return Some(path);
        }
        if self
            .last_scan
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            self.scan();
        }
        self.by_id.get(&id).cloned()
    }
}

/// `pod:UID/container:ID12` or `container:ID12` for a cgroup path that
/// shows a container (Kubernetes with the systemd or cgroupfs driver;
/// containerd, CRI-O, Docker, Podman scopes), so series are per container
/// rather than per long path; None for any other cgroup.
pub fn container_name(path: &str) -> Option<String> {
    let mut pod = None;
    let mut container = None;
    for part in path.split('/') {
        let part = part.strip_suffix(".slice").unwrap_or(part);
        if let Some(at) = part
            .rfind("-pod")
            .map(|i| i + 4)
            .or_else(|| part.starts_with("pod").then_some(3))
        {
            let uid = &part[at..];
            if uid.len() >= 32
                && uid
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == '_' || c == '-')
            {
                pod = Some(uid.replace('_', "-"));
                continue;
            }
        }
        let id = part.strip_suffix(".scope").unwrap_or(part);
        let id = [
            "cri-containerd-",
            "crio-",
            "docker-",
            "libpod-",
            "containerd-",
        ]
        .iter()
        .find_map(|prefix| id.strip_prefix(prefix))
        .unwrap_or(id);
        if id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()) {
            container = Some(id[..12].to_string());
        }
    }
    match (pod, container) {
        (Some(pod), Some(id)) => Some(format!("pod:{pod}/container:{id}")),
        (Some(pod), None) => Some(format!("pod:{pod}")),
        (None, Some(id)) => Some(format!("container:{id}")),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::container_name;

    const ID: &str = "4f1c2a7e9b3d5f60718293a4b5c6d7e8f9012345678901234567890abcdef123";

    #[test]
    fn kubernetes_systemd_driver() {
        let path = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6f0d4c1e_2a3b_4c5d_8e9f_0a1b2c3d4e5f.slice/cri-containerd-{ID}.scope");
        assert_eq!(
            container_name(&path).as_deref(),
            Some("pod:6f0d4c1e-2a3b-4c5d-8e9f-0a1b2c3d4e5f/container:4f1c2a7e9b3d")
        );
    }

    #[test]
    fn kubernetes_cgroupfs_driver_and_plain_containers() {
        let path = format!("/kubepods/besteffort/pod6f0d4c1e-2a3b-4c5d-8e9f-0a1b2c3d4e5f/{ID}");
        assert_eq!(
            container_name(&path).as_deref(),
            Some("pod:6f0d4c1e-2a3b-4c5d-8e9f-0a1b2c3d4e5f/container:4f1c2a7e9b3d")
        );
        assert_eq!(
            container_name(&format!("/system.slice/docker-{ID}.scope")).as_deref(),
            Some("container:4f1c2a7e9b3d")
        );
        assert_eq!(
            container_name(&format!("/machine.slice/libpod-{ID}.scope/container")).as_deref(),
            Some("container:4f1c2a7e9b3d")
        );
    }

    #[test]
    fn other_cgroups_keep_their_path() {
        for path in [
            "/",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/postgresql.service",
            "/podman-pause.scope",
        ] {
            assert_eq!(container_name(path), None, "{path}");
        }
    }
}
