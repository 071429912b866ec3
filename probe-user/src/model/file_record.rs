//! One file's record: what the aggregate keeps per file and the rules
//! that read it. The common part is kept inline; what most files never
//! have is boxed apart ([`FileDetails`]), since a host creating files at
//! full speed keeps hundreds of thousands of records.

use std::{collections::BTreeMap, path::PathBuf};

use compact_str::CompactString;
use probe_common::FileStats;

use super::{
    durability::Syncs,
    events::{FileId, Task, UserIds},
    page_marks::PageMarks,
    page_set::PageSet,
    writers::Writers,
};

/// Where a file's path came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathSource {
    /// The file opened by its handle when the report was made: its name
    /// now (after any rename).
    FileHandle,
    /// `/proc/<pid>/map_files` of a writer: the full path in its view.
    ProcMaps,
    /// Dentry names sent by the kernel, joined to the mount point.
    Dentry,
}

impl PathSource {
    /// Higher is better: a name read now beats one read at the first
    /// write, which beats one rebuilt from dentry names.
    pub(super) fn rank(self) -> u8 {
        match self {
            PathSource::FileHandle => 2,
            PathSource::ProcMaps => 1,
            PathSource::Dentry => 0,
        }
    }
}

/// A file's name when the report is made, from its handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CurrentName {
    Linked(PathBuf),
    /// Its last link is gone (it may still be open or mapped).
    Deleted,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Writer {
    pub tgid: u32,
    /// Its command name (escaped where not UTF-8), inline.
    pub comm: CompactString,
    pub cgroup_id: u64,
    /// Its ids when it wrote: a process whose ids change is one writer
    /// per set of ids.
    pub ids: UserIds,
    /// Pages this process wrote first (shared writes).
    pub pages: u64,
    /// Pages this process wrote first through a private mapping.
    pub cow_pages: u64,
    /// Pages this process got mapped writable by read faults on a file
    /// without write-notify: possibly written.
    pub possible_pages: u64,
    /// `trace` only: the process exited. Boxed: most writers of a
    /// long-running front end never carry it.
    pub exit: Option<Box<WriterExit>>,
}

/// When a writer exited, and how many of the file's written pages were not
/// on disk then, or why that is unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriterExit {
    pub boot_ns: u64,
    pub not_on_disk: Option<Result<u64, String>>,
}

/// Writers kept by name per file; beyond it the least significant are
/// summed into [`FileRecord::other_writers`], so long-running front ends do
/// not grow with every short-lived process that writes a file.
pub const MAX_WRITERS_PER_FILE: usize = 256;

/// Writers folded together once a file has more than
/// [`MAX_WRITERS_PER_FILE`]: totals stay exact, names are dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OtherWriters {
    pub processes: u64,
    pub pages: u64,
    pub cow_pages: u64,
}

#[derive(Clone, Debug, Default)]
pub struct FileRecord {
    /// Exact bytes: the name as it is now when that could be read, else
    /// as it was when the file was first written.
    pub path: Option<PathBuf>,
    pub path_source: Option<PathSource>,
    /// The file had no link left when last looked at.
    pub deleted: bool,
    /// Mount namespace of the first writer (the view the path is in), the
    /// first writer's cgroup and the filesystem's magic; 0 where unknown
    /// (none of them is ever 0), not Options: 8 bytes a file less each.
    pub(super) mount_ns: u64,
    pub(super) first_writer_cgroup_id: u64,
    pub(super) fs_magic: u64,
    /// Pages written through shared mappings: those with a write fault of
    /// their own ([`FileRecord::exact_pages`]) and the rest of the large
    /// folios such a fault mapped writable whole (kernel granularity).
    pub pages_written: PageSet,
    pub writers: Writers,
    /// First and latest write records' times (boot clock); 0: none yet.
    pub(super) first_write: u64,
    pub(super) last_write: u64,
    /// Kernel counters, summed over CPUs, as of the latest snapshot.
    pub kernel: FileStats,
    /// Counts of the file's kernel entries already handed over (freed in
    /// the kernel): later snapshots add to them.
    handed_over: HandedOver,
    /// First-write and new-writer records for shared writes: each stands
    /// for at least one fault.
    pub shared_fault_events: u64,
    /// Function-hook backends: the filesystem's `->page_mkwrite`, by name
    /// (every file has one there).
    pub page_mkwrite: Option<Box<str>>,
    /// What most files never have; allocated when first needed.
    details: Option<Box<FileDetails>>,
}

/// What a file's handed-over kernel entries counted. Most files are
/// handed over once and never written again: their counts are then
/// exactly `kernel`, and are not kept twice.
#[derive(Clone, Debug, Default)]
enum HandedOver {
    #[default]
    Nothing,
    /// Equal to the record's `kernel`: no entry counted since.
    AllOfKernel,
    /// A later entry counts on top of these.
    Apart(Box<FileStats>),
}

/// The parts of a file's record most files never have (a rename, an
/// overlay, private writes, large folios, writeback, syncs). Kept apart so
/// that a file written once costs ~270 bytes, not ~620: a burst of
/// 300,000 new files otherwise held ~100 MB more.
#[derive(Clone, Debug, Default)]
pub struct FileDetails {
    /// The name the file was written under, when it has since been renamed.
    pub renamed_from: Option<PathBuf>,
    /// overlayfs: `path` is the one the writer opened through the overlay
    /// mount, and this is the layer's own file behind it (upper, or lower
    /// until copied up), as it is named now.
    pub through_overlay: bool,
    pub backing_path: Option<PathBuf>,
    /// Pages of `pages_written` without a write fault of their own (yet).
    /// Kept instead of those with one: empty for most files.
    pub(crate) span_only: PageSet,
    /// Pages of a file without write-notify (tmpfs) mapped writable by
    /// read faults: the kernel gives no signal when they are stored to.
    pub possibly_written: PageSet,
    pub cow_pages: PageSet,
    pub other_writers: OtherWriters,
    /// First-write reports of a page already in the set: the kernel's dedup
    /// LRU evicted it. They are not counted twice.
    pub repeated_reports: u64,
    /// First-write and new-writer records for private writes.
    pub cow_fault_events: u64,
    /// Large folios mapped writable whole by one write fault; all their
    /// pages are in `pages_written`, since the kernel cannot tell which were
    /// stored to. `huge_spans` counts those of 2 MiB (one PMD).
    pub folio_spans: u64,
    pub huge_spans: u64,
    /// Function-hook backends: folio first page -> (pages, when its latest
    /// writeback completed), at most [`MAX_WRITEBACK_FOLIOS`] folios.
    pub written_back: BTreeMap<u64, (u64, u64)>,
    /// Writeback completions not kept: the file has more folios than that.
    pub written_back_untracked: u64,
    /// msync/fsync/fdatasync/sync_file_range calls on the file.
    pub syncs: Syncs,
}

impl FileDetails {
    /// What a file without details reads as.
    const NONE: FileDetails = FileDetails {
        renamed_from: None,
        through_overlay: false,
        backing_path: None,
        span_only: PageSet::EMPTY,
        possibly_written: PageSet::EMPTY,
        cow_pages: PageSet::EMPTY,
        other_writers: OtherWriters {
            processes: 0,
            pages: 0,
            cow_pages: 0,
        },
        repeated_reports: 0,
        cow_fault_events: 0,
        folio_spans: 0,
        huge_spans: 0,
        written_back: BTreeMap::new(),
        written_back_untracked: 0,
        syncs: Syncs::NONE,
    };
}

static NO_DETAILS: FileDetails = FileDetails::NONE;

pub const MAX_WRITEBACK_FOLIOS: usize = 1 << 16;

impl FileRecord {
    /// The rarer parts of the record (all empty for most files).
    pub fn details(&self) -> &FileDetails {
        self.details.as_deref().unwrap_or(&NO_DETAILS)
    }

    pub(crate) fn details_mut(&mut self) -> &mut FileDetails {
        self.details.get_or_insert_with(Box::default)
    }

    /// Counts of the file's kernel entries already handed over.
    pub fn handed_over(&self) -> FileStats {
        match &self.handed_over {
            HandedOver::Nothing => FileStats::default(),
            HandedOver::AllOfKernel => self.kernel,
            HandedOver::Apart(stats) => **stats,
        }
    }

    /// A snapshot of the file's live kernel counts (its entry and the
    /// CPUs' open runs): they add to what was handed over. They never go
    /// back: a snapshot taken while a CPU moves its open run of faults into
    /// the map can miss that run for an instant.
    pub(super) fn set_kernel_counts(&mut self, live: &[FileStats]) {
        let handed_over = self.handed_over();
        if !live.is_empty() && matches!(self.handed_over, HandedOver::AllOfKernel) {
            // Counted again in the kernel: what was handed over is apart.
            self.handed_over = HandedOver::Apart(Box::new(handed_over));
        }
        let summed = sum_stats(live.iter().chain([&handed_over]));
        self.kernel = max_stats(&self.kernel, &summed);
    }

    /// The file's kernel entry, removed from the kernel map: its counts are
    /// kept here, and a new entry (from the file's next fault) adds to them.
    pub(super) fn take_kernel_counts(&mut self, taken: &[FileStats]) {
        let handed_over = sum_stats(taken.iter().chain([&self.handed_over()]));
        self.kernel = max_stats(&self.kernel, &handed_over);
        self.handed_over = if self.kernel == handed_over {
            HandedOver::AllOfKernel
        } else {
            HandedOver::Apart(Box::new(handed_over))
        };
    }

    /// The latest write seen, from records or the kernel's counts.
    pub fn latest_write_boot_ns(&self) -> u64 {
        self.last_write.max(self.kernel.last_write_boot_ns)
    }

    /// The first write record's time (boot clock).
    pub fn first_write_boot_ns(&self) -> Option<u64> {
        known(self.first_write)
    }

    /// The latest write record's time (boot clock).
    pub fn last_write_boot_ns(&self) -> Option<u64> {
        known(self.last_write)
    }

    /// The mount namespace the path is in (the first writer's).
    pub fn mount_ns(&self) -> Option<u64> {
        known(self.mount_ns)
    }

    pub fn first_writer_cgroup_id(&self) -> Option<u64> {
        known(self.first_writer_cgroup_id)
    }

    /// The filesystem's magic number, from the kernel's record.
    pub fn fs_magic(&self) -> Option<u64> {
        known(self.fs_magic)
    }

    /// The latest write or writeback seen.
    pub fn last_activity_boot_ns(&self) -> u64 {
        self.latest_write_boot_ns()
            .max(self.kernel.last_writeback_start_boot_ns)
            .max(self.kernel.last_writeback_end_boot_ns)
    }

    /// The path as text for labels and screens (invalid UTF-8 replaced),
    /// or `<dev D ino I>` when the file was never named.
    pub fn display_path(&self, id: &FileId) -> String {
        self.path.as_deref().map_or_else(
            || format!("<dev {} ino {}>", id.dev_string(), id.ino),
            |path| crate::model::names::json_text(path).into_owned(),
        )
    }

    /// Modified iff some page was written through a shared mapping.
    pub fn modified(&self) -> bool {
        !self.pages_written.is_empty()
    }

    /// Pages in `pages_written` only because a large folio was mapped
    /// writable whole around a page that faulted.
    pub fn span_pages(&self) -> &PageSet {
        &self.details().span_only
    }

    /// Pages with a write fault of their own.
    pub fn exact_pages(&self) -> PageSet {
        self.pages_written.difference(&self.details().span_only)
    }

    /// A page with a write fault of its own: written, and exactly.
    /// A page now known written by a fault of its own is no longer only
    /// in a span (without allocating details for the many files with none).
    pub(super) fn forget_span_page(&mut self, page: u64) {
        if let Some(details) = self.details.as_deref_mut() {
            details.span_only.remove(page);
        }
    }

    pub(super) fn note_exact_page(&mut self, page: u64) -> bool {
        self.forget_span_page(page);
        self.pages_written.insert(page)
    }

    /// The page counts the human views show (see [`PageMarks`]).
    pub fn page_marks(&self) -> PageMarks {
        PageMarks {
            written: self.pages_written.len(),
            span: self.details().span_only.len(),
            possible: self.only_possibly_written().len(),
        }
    }

    /// Possibly-written pages that are not known written.
    pub fn only_possibly_written(&self) -> PageSet {
        self.details()
            .possibly_written
            .difference(&self.pages_written)
    }

    pub(super) fn note_written_back(&mut self, first_page: u64, pages: u64, boot_ns: u64) {
        let details = self.details_mut();
        if details.written_back.len() >= MAX_WRITEBACK_FOLIOS
            && !details.written_back.contains_key(&first_page)
        {
            details.written_back_untracked += 1;
            return;
        }
        // A folio's pages can be split into smaller folios later (and
        // merged): drop older entries it now covers.
        let end = first_page.saturating_add(pages);
        let covered: Vec<u64> = details
            .written_back
            .range(first_page..end)
            .map(|(&page, _)| page)
            .collect();
        for page in covered {
            details.written_back.remove(&page);
        }
        details.written_back.insert(first_page, (pages, boot_ns));
    }

    /// Pages written (shared) and then written back, with the latest
    /// writeback completion of each run of them, in page order.
    pub fn writeback_runs(&self) -> Vec<(u64, u64, u64)> {
        let mut runs: Vec<(u64, u64, u64)> = Vec::new();
        for (&first, &(pages, boot_ns)) in &self.details().written_back {
            for page in first..first.saturating_add(pages) {
                if !self.pages_written.contains(page) {
                    continue;
                }
                match runs.last_mut() {
                    Some((_, last, at)) if *last + 1 == page && *at == boot_ns => *last = page,
                    _ => runs.push((page, page, boot_ns)),
                }
            }
        }
        runs
    }

    pub(super) fn note_write_time(&mut self, boot_ns: u64) {
        self.first_write = match self.first_write {
            0 => boot_ns,
            first => first.min(boot_ns),
        };
        self.last_write = self.last_write.max(boot_ns);
    }

    pub(super) fn writer(&mut self, task: &Task) -> &mut Writer {
        let key = (task.tgid, task.ids);
        if !self.writers.contains_key(&key) && self.writers.len() >= MAX_WRITERS_PER_FILE {
            self.fold_least_writer();
        }
        let writer = self.writers.get_or_insert_with(key, || Writer {
            tgid: task.tgid,
            comm: CompactString::new(&task.comm),
            cgroup_id: task.cgroup_id,
            ids: task.ids,
            ..Writer::default()
        });
        // Keep the latest name: exec changes it.
        if writer.comm != task.comm.as_str() {
            writer.comm = CompactString::new(&task.comm);
        }
        writer
    }

    /// Moves the writer with the fewest pages (the lowest pid on ties) into
    /// `other_writers`.
    pub(super) fn fold_least_writer(&mut self) {
        let least = self
            .writers
            .values()
            .min_by_key(|w| (w.pages + w.cow_pages, w.tgid))
            .map(|w| (w.tgid, w.ids));
        if let Some(writer) = least.and_then(|key| self.writers.remove(&key)) {
            let folded = &mut self.details_mut().other_writers;
            folded.processes += 1;
            folded.pages += writer.pages;
            folded.cow_pages += writer.cow_pages;
        }
    }

    /// Write faults through shared mappings: the kernel's count, which
    /// includes rewrites after writeback; never fewer than the fault records
    /// seen (the kernel's count is missing if its stats map was full).
    pub fn write_faults(&self) -> u64 {
        self.kernel
            .shared_write_faults
            .max(self.shared_fault_events)
    }

    pub fn cow_faults(&self) -> u64 {
        self.kernel.cow_faults.max(self.details().cow_fault_events)
    }
}

/// Sums counters and takes the latest timestamps across parts (a file's
/// entry, the CPUs' open runs on it, what was handed over).
fn sum_stats<'a>(parts: impl IntoIterator<Item = &'a FileStats>) -> FileStats {
    let mut total = FileStats::default();
    for s in parts {
        total.shared_write_faults += s.shared_write_faults;
        total.cow_faults += s.cow_faults;
        total.folios_dirtied += s.folios_dirtied;
        total.pages_dirtied += s.pages_dirtied;
        total.writeback_pages += s.writeback_pages;
        total.writeback_starts += s.writeback_starts;
        total.writeback_ends += s.writeback_ends;
        total.last_write_boot_ns = total.last_write_boot_ns.max(s.last_write_boot_ns);
        total.last_writeback_start_boot_ns = total
            .last_writeback_start_boot_ns
            .max(s.last_writeback_start_boot_ns);
        total.last_writeback_end_boot_ns = total
            .last_writeback_end_boot_ns
            .max(s.last_writeback_end_boot_ns);
    }
    total
}

/// Each counter and timestamp at the larger of the two.
fn max_stats(a: &FileStats, b: &FileStats) -> FileStats {
    FileStats {
        shared_write_faults: a.shared_write_faults.max(b.shared_write_faults),
        cow_faults: a.cow_faults.max(b.cow_faults),
        folios_dirtied: a.folios_dirtied.max(b.folios_dirtied),
        pages_dirtied: a.pages_dirtied.max(b.pages_dirtied),
        writeback_pages: a.writeback_pages.max(b.writeback_pages),
        writeback_starts: a.writeback_starts.max(b.writeback_starts),
        writeback_ends: a.writeback_ends.max(b.writeback_ends),
        last_write_boot_ns: a.last_write_boot_ns.max(b.last_write_boot_ns),
        last_writeback_start_boot_ns: a
            .last_writeback_start_boot_ns
            .max(b.last_writeback_start_boot_ns),
        last_writeback_end_boot_ns: a
            .last_writeback_end_boot_ns
            .max(b.last_writeback_end_boot_ns),
    }
}

/// A value of which 0 means unknown.
fn known(value: u64) -> Option<u64> {
    (value != 0).then_some(value)
}
