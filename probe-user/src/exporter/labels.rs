//! Label sets and their caps: never a pid; `comm` and `cgroup` capped,
//! the rest folded into `other`; cgroup ids named from cgroupfs.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use prometheus_client::encoding::EncodeLabelSet;

use crate::model::paths::MountTable;

pub const OTHER: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriterLabels {
    pub comm: String,
    pub cgroup: String,
    pub fs: String,
    pub mount: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FsLabels {
    pub fs: String,
    pub mount: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabels {
    pub path: String,
    pub fs: String,
    pub mount: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabels {
    pub program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

/// What `mmapwatch_build_info` says: which build runs, with which backend.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub revision: String,
    pub backend: String,
}

/// Admits the first `cap` distinct values; later ones map to `other`.
#[derive(Debug)]
pub struct LabelCap {
    admitted: HashSet<String>,
    cap: usize,
}

impl LabelCap {
    pub fn new(cap: usize) -> Self {
        Self {
            admitted: HashSet::new(),
            cap,
        }
    }

    pub fn label(&mut self, value: &str) -> String {
        if self.admitted.contains(value) {
            return value.to_string();
        }
        if self.admitted.len() < self.cap {
            self.admitted.insert(value.to_string());
            return value.to_string();
        }
        OTHER.to_string()
    }
}

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

    /// The cgroup's path, rescanning at most every 10 s for new cgroups.
    pub fn name(&mut self, id: u64) -> String {
        if let Some(name) = self.by_id.get(&id) {
            return name.clone();
        }
        if self
            .last_scan
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            self.scan();
        }
        self.by_id
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("id:{id}"))
    }
}
