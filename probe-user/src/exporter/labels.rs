//! Label sets: never a pid; `comm`, `cgroup` (and `user`) admitted by activity
//! (`admission`), the rest folded into `other`; cgroup ids named from
//! cgroupfs (`session::CgroupNames`).

use prometheus_client::encoding::EncodeLabelSet;

pub const OTHER: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriterLabels {
    pub comm: String,
    pub cgroup: String,
    pub fs: String,
    pub mount: String,
    #[prometheus(flatten)]
    pub user: UserLabel,
}

/// `user` (the writer's effective user: its name, else its uid), only with
/// `export --label-user`: a label per user multiplies the series, so it
/// is asked for, and admitted by activity like `comm`.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct UserLabel(pub Option<String>);

impl EncodeLabelSet for UserLabel {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        optional_label("user", self.0.as_deref(), encoder)
    }
}

/// One label, or none at all (not an empty value: a series without the
/// label is another series than one with it empty).
fn optional_label(
    name: &str,
    value: Option<&str>,
    encoder: &mut prometheus_client::encoding::LabelSetEncoder,
) -> Result<(), std::fmt::Error> {
    value.map(|value| (name, value)).as_slice().encode(encoder)
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
    #[prometheus(flatten)]
    pub path_bytes: PathBytesHex,
}

/// A path that is not UTF-8 has its invalid bytes as `\xNN` in `path`
/// (as the JSON's `path` has them) and its exact bytes in a
/// `path_bytes_hex` label, so it never shares a series with a path that
/// literally reads the same; a UTF-8 path has no such label.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct PathBytesHex(pub Option<String>);

impl EncodeLabelSet for PathBytesHex {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        optional_label("path_bytes_hex", self.0.as_deref(), encoder)
    }
}

/// A durability call on a file's filesystem.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    pub call: String,
    pub fs: String,
    pub mount: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub call: String,
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
