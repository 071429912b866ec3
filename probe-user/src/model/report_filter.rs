//! Which files a report or view keeps: modified ones, under the
//! `--path-prefix` directories.

use std::path::{Path, PathBuf};

use crate::model::file_record::FileRecord;

/// Which files the report keeps.
#[derive(Clone, Debug, Default)]
pub struct ReportFilter {
    pub include_cow: bool,
    pub path_prefixes: Vec<PathBuf>,
}

impl ReportFilter {
    /// Keeps modified files (and COW ones with `include_cow`) under any
    /// of `prefixes` (all if none).
    pub fn new(include_cow: bool, prefixes: &[PathBuf]) -> Self {
        Self {
            include_cow,
            path_prefixes: canonical_prefixes(prefixes),
        }
    }

    pub fn keeps(&self, record: &FileRecord) -> bool {
        let shown_cow = self.include_cow && !record.details().cow_pages.is_empty();
        let possibly = !record.details().possibly_written.is_empty();
        if !record.modified() && !shown_cow && !possibly {
            return false;
        }
        self.keeps_name(record)
    }

    /// Whether the file is under one of the `--path-prefix` directories
    /// (all files if none), by its name now, the one it was written under,
    /// or its overlayfs layer file's.
    pub fn keeps_name(&self, record: &FileRecord) -> bool {
        if self.path_prefixes.is_empty() {
            return true;
        }
        // The name now or the one it was written under: a linker's output
        // is found by either directory.
        let names = [
            record.path.as_deref(),
            record.details().renamed_from.as_deref(),
            record.details().backing_path.as_deref(),
        ];
        self.path_prefixes
            .iter()
            .any(|prefix| names.iter().flatten().any(|path| path.starts_with(prefix)))
    }
}

/// Reports carry canonical paths, so prefixes are made canonical too
/// (relative paths, `..` and symlinks); one that does not exist yet is made
/// absolute.
pub fn canonical_prefixes(prefixes: &[PathBuf]) -> Vec<PathBuf> {
    prefixes.iter().map(|p| canonical_prefix(p)).collect()
}

fn canonical_prefix(prefix: &Path) -> PathBuf {
    std::fs::canonicalize(prefix)
        .unwrap_or_else(|_| std::path::absolute(prefix).unwrap_or_else(|_| prefix.to_path_buf()))
}
