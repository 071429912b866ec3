//! Per-file aggregation of probe events and kernel counters.
//!
//! Pure and synchronous: events go in, a report comes out. Nothing here
//! touches the kernel, the clock or /proc, so it is unit-tested directly and
//! shared by every front end.
//!
//! Over 500 lines (~450 of code, ~410 of tests): the rules that merge
//! events into a file's record (identity, names, first writers, page sets)
//! must agree, and are read together. The record itself is in
//! `file_record`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use super::page_set::PageSet;
use probe_common::FileStats;

use crate::model::{
    events::{Event, EventBody, FileId, WriteKind},
    file_record::{CurrentName, FileRecord, PathSource, WriterExit},
    names::NameBytes,
};

/// What applying an event changed, for the caller's side effects (such as
/// resolving a path while the writer is still alive, or counting metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The file was seen for the first time, through this tgid.
    pub new_file: Option<(FileId, u32)>,
    /// Pages newly added to the file's shared-write set.
    pub new_pages: u64,
    /// A process exited: the files it wrote (for a look at their pages).
    pub exited_writer_of: Vec<FileId>,
}

#[derive(Clone, Debug, Default)]
pub struct Aggregate {
    /// Boxed: the table keeps spare slots (up to half of them empty), and
    /// a slot of a pointer wastes less than one of a ~600-byte record.
    files: HashMap<FileId, Box<FileRecord>>,
    events: u64,
    /// Sync calls on files never written through a mapping: not kept.
    pub syncs_of_other_files: u64,
    /// Write faults and pages written back of the files forgotten, so that
    /// [`Aggregate::counts_ever`] never goes back.
    forgotten_counts: FileCounts,
}

/// A file's (or many files') write faults through shared mappings and
/// pages written back: both only grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileCounts {
    pub write_faults: u64,
    pub writeback_pages: u64,
}

impl FileCounts {
    pub fn of(record: &FileRecord) -> Self {
        Self {
            write_faults: record.write_faults(),
            writeback_pages: record.kernel.writeback_pages,
        }
    }

    pub fn add(&mut self, other: FileCounts) {
        self.write_faults += other.write_faults;
        self.writeback_pages += other.writeback_pages;
    }

    /// What `self` grew by since `before` (0 where it did not).
    pub fn since(self, before: FileCounts) -> FileCounts {
        FileCounts {
            write_faults: self.write_faults.saturating_sub(before.write_faults),
            writeback_pages: self.writeback_pages.saturating_sub(before.writeback_pages),
        }
    }
}

impl Aggregate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Write faults and pages written back of every file ever seen,
    /// forgotten ones included: it never goes back.
    pub fn counts_ever(&self) -> FileCounts {
        let mut total = self.forgotten_counts;
        for record in self.files.values() {
            total.add(FileCounts::of(record));
        }
        total
    }

    /// Events applied so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn files(&self) -> impl Iterator<Item = (&FileId, &FileRecord)> {
        self.files.iter().map(|(id, record)| (id, &**record))
    }

    pub fn file(&self, id: &FileId) -> Option<&FileRecord> {
        self.files.get(id).map(|record| &**record)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Forgets files with no write or writeback since `cutoff_boot_ns`,
    /// except those `live` holds (the kernel still counts for them).
    /// Returns the files forgotten.
    pub fn forget_idle(
        &mut self,
        cutoff_boot_ns: u64,
        live: impl Fn(&FileId) -> bool,
    ) -> Vec<FileId> {
        let forgotten: Vec<FileId> = self
            .files
            .iter()
            .filter(|(id, record)| !live(id) && record.last_activity_boot_ns() < cutoff_boot_ns)
            .map(|(id, _)| *id)
            .collect();
        for id in &forgotten {
            if let Some(record) = self.files.remove(id) {
                self.forgotten_counts.add(FileCounts::of(&record));
            }
        }
        // A burst forgotten leaves a table sized for it: give it back.
        if self.files.capacity() > 2 * self.files.len() + 1024 {
            self.files.shrink_to_fit();
        }
        forgotten
    }

    pub(super) fn record(&mut self, file: FileId) -> (&mut FileRecord, bool) {
        let mut created = false;
        let record = self.files.entry(file).or_insert_with(|| {
            created = true;
            Box::default()
        });
        (record, created)
    }

    pub fn apply(&mut self, event: &Event) -> Applied {
        self.events += 1;
        let mut new_pages = 0;
        let Event {
            file,
            task,
            boot_ns,
            body,
            stack_id: _,
        } = event;
        let (file, boot_ns) = (*file, *boot_ns);

        let created = match body {
            EventBody::FirstWrite { page, kind } => {
                let (record, created) = self.record(file);
                let set = match kind {
                    WriteKind::Shared => {
                        record.shared_fault_events += 1;
                        record.forget_span_page(*page);
                        &mut record.pages_written
                    }
                    WriteKind::Cow => {
                        let details = record.details_mut();
                        details.cow_fault_events += 1;
                        &mut details.cow_pages
                    }
                };
                if set.insert(*page) {
                    let writer = record.writer(task);
                    match kind {
                        WriteKind::Shared => {
                            writer.pages += 1;
                            new_pages = 1;
                        }
                        WriteKind::Cow => writer.cow_pages += 1,
                    }
                } else {
                    record.details_mut().repeated_reports += 1;
                    record.writer(task);
                }
                record.note_write_time(boot_ns);
                created
            }
            EventBody::NewWriter { page } => {
                let (record, created) = self.record(file);
                // The page was reported by its first writer; if that report
                // was lost, this one still proves the page was written.
                new_pages = u64::from(record.note_exact_page(*page));
                record.shared_fault_events += 1;
                record.writer(task);
                record.note_write_time(boot_ns);
                created
            }
            EventBody::FolioSpan { first_page, pages } => {
                let (record, created) = self.record(file);
                let end = first_page.saturating_add(*pages);
                let mut span = PageSet::new();
                span.insert_range(*first_page..end);
                let fresh = span.difference(&record.pages_written);
                let added = fresh.len();
                record.pages_written.union_with(&fresh);
                record.writer(task).pages += added;
                new_pages = added;
                let details = record.details_mut();
                details.span_only.union_with(&fresh);
                details.folio_spans += 1;
                if *pages == probe_common::PMD_PAGES {
                    details.huge_spans += 1;
                }
                record.note_write_time(boot_ns);
                created
            }
            EventBody::PossibleWrite { first_page, pages } => {
                let (record, created) = self.record(file);
                let end = first_page.saturating_add(*pages);
                let added = record
                    .details_mut()
                    .possibly_written
                    .insert_range(*first_page..end);
                record.writer(task).possible_pages += added;
                created
            }
            EventBody::WrittenBack { first_page, pages } => {
                // The kernel only reports files it has seen written; one not
                // here yet still gets a record, named by its first write.
                let (record, _) = self.record(file);
                record.note_written_back(*first_page, *pages, boot_ns);
                return Applied::default();
            }
            // Only for files written through a mapping: a database's fsync
            // of its write(2) log is not this tool's business.
            EventBody::Sync {
                call,
                latency_ns,
                result,
                ..
            } => {
                match self.files.get_mut(&file) {
                    Some(record) => {
                        record
                            .details_mut()
                            .syncs
                            .note(*call, *latency_ns, *result, boot_ns)
                    }
                    None => self.syncs_of_other_files += 1,
                }
                return Applied::default();
            }
            EventBody::ProcessExit => {
                let mut exited_writer_of = Vec::new();
                for (id, record) in &mut self.files {
                    let writers = record.writers.of_process_mut(task.tgid);
                    for writer in writers.iter_mut() {
                        writer.exit = Some(Box::new(WriterExit {
                            boot_ns,
                            not_on_disk: None,
                        }));
                    }
                    if !writers.is_empty() {
                        exited_writer_of.push(*id);
                    }
                }
                exited_writer_of.sort_unstable();
                return Applied {
                    exited_writer_of,
                    ..Applied::default()
                };
            }
            // Its names become a path where the mounts are known (the
            // session's `set_path`).
            EventBody::FileSeen { fs_magic, .. } => {
                let (record, created) = self.record(file);
                record.fs_magic = *fs_magic;
                if record.first_writer_cgroup_id == 0 {
                    record.first_writer_cgroup_id = task.cgroup_id;
                }
                created
            }
        };
        Applied {
            new_file: created.then_some((file, task.tgid)),
            new_pages,
            exited_writer_of: Vec::new(),
        }
    }

    /// What of `file`'s written pages was not on disk when writer `tgid`
    /// exited.
    pub fn set_not_on_disk_at_exit(&mut self, file: FileId, tgid: u32, pages: Result<u64, String>) {
        if let Some(record) = self.files.get_mut(&file) {
            for writer in record.writers.of_process_mut(tgid) {
                writer.exit.get_or_insert_default().not_on_disk = Some(pages.clone());
            }
        }
    }

    /// Whether the file's `->page_mkwrite` is named already (files not
    /// seen count as named: nothing to do for them).
    pub fn has_page_mkwrite(&self, file: FileId) -> bool {
        self.files
            .get(&file)
            .is_none_or(|record| record.page_mkwrite.is_some())
    }

    /// Names the filesystem hook that ran for a file already seen.
    pub fn set_page_mkwrite(&mut self, file: FileId, function: String) {
        if let Some(record) = self.files.get_mut(&file) {
            record.page_mkwrite = Some(function.into_boxed_str());
        }
    }

    /// Sets a file's path from the first-write sources; a
    /// `/proc/<pid>/map_files` path beats a dentry one.
    pub fn set_path(&mut self, file: FileId, mut path: PathBuf, source: PathSource) {
        let (record, _) = self.record(file);
        let better = record
            .path_source
            .is_none_or(|current| source.rank() >= current.rank());
        if better {
            // Built by pushing components: its spare capacity, kept for
            // each of hundreds of thousands of files, is given back.
            path.shrink_to_fit();
            record.path = Some(path);
            record.path_source = Some(source);
        }
    }

    /// Records the mount namespace the file's path is seen in.
    pub fn set_mount_ns(&mut self, file: FileId, mount_ns: u64) {
        if let Some(record) = self.files.get_mut(&file) {
            if record.mount_ns == 0 {
                record.mount_ns = mount_ns;
            }
        }
    }

    /// Marks a file deleted (its writer's mapping says so).
    pub fn set_deleted(&mut self, file: FileId) {
        if let Some(record) = self.files.get_mut(&file) {
            record.deleted = true;
        }
    }

    /// Marks a file written through overlayfs: its path is the overlay's.
    pub fn set_through_overlay(&mut self, file: FileId) {
        if let Some(record) = self.files.get_mut(&file) {
            record.details_mut().through_overlay = true;
        }
    }

    /// Records what the file is called now. A new name keeps the one it
    /// was written under as `renamed_from`; for a file written through
    /// overlayfs the name is its layer file's, `backing_path`.
    pub fn set_current_name(&mut self, file: FileId, name: CurrentName) {
        let Some(record) = self.files.get_mut(&file) else {
            return;
        };
        if record.details().through_overlay {
            match name {
                CurrentName::Deleted => record.deleted = true,
                CurrentName::Linked(path) => record.details_mut().backing_path = Some(path),
            }
            return;
        }
        match name {
            CurrentName::Deleted => record.deleted = true,
            CurrentName::Linked(path) => {
                record.deleted = false;
                if record.path.as_deref() == Some(path.as_path()) {
                    return;
                }
                let previous = record.path.take();
                let details = record.details_mut();
                if details.renamed_from.is_none() {
                    details.renamed_from = previous;
                }
                // Renamed back: no rename left to tell.
                if details.renamed_from.as_deref() == Some(path.as_path()) {
                    details.renamed_from = None;
                }
                let mut path = path;
                path.shrink_to_fit();
                record.path = Some(path);
                record.path_source = Some(PathSource::FileHandle);
            }
        }
    }

    /// Takes a file's kernel counters from a fresh snapshot: its entry and
    /// the CPUs' open runs of faults on it (`parts`, summed). They never go
    /// back: a snapshot taken while a CPU moves its open run of faults into
    /// the map can miss that run for an instant.
    pub fn set_kernel_stats<'a>(
        &mut self,
        file: FileId,
        parts: impl IntoIterator<Item = &'a FileStats>,
    ) {
        // Counters for files with no reported page (their first-write record
        // was dropped) still show up: nothing is lost silently.
        let (record, _) = self.record(file);
        let live: Vec<FileStats> = parts.into_iter().copied().collect();
        record.set_kernel_counts(&live);
    }

    /// Takes a file's kernel entry, removed from the kernel map: its counts
    /// are kept here, and a new entry (from the file's next fault) adds to
    /// them.
    pub fn take_kernel_stats<'a>(
        &mut self,
        file: FileId,
        parts: impl IntoIterator<Item = &'a FileStats>,
    ) {
        let (record, _) = self.record(file);
        let taken: Vec<FileStats> = parts.into_iter().copied().collect();
        record.take_kernel_counts(&taken);
    }
}

/// Joins dentry names (leaf first) into a path under `mount_point`. A walk
/// that stopped short of the filesystem root is marked with a leading `…`.
pub fn dentry_path(
    components: &[NameBytes],
    reached_root: bool,
    mount_point: Option<&Path>,
) -> PathBuf {
    let mut path = match (reached_root, mount_point) {
        (false, _) => PathBuf::from("…"),
        (true, Some(mount)) => mount.to_path_buf(),
        (true, None) => PathBuf::from("/"),
    };
    for component in components.iter().rev() {
        path.push(component.as_os_str());
    }
    path
}

/// Inclusive `[first, last]` runs of consecutive pages, in order.
pub fn page_ranges(pages: &PageSet) -> Vec<[u64; 2]> {
    let mut ranges: Vec<[u64; 2]> = Vec::new();
    for page in pages.iter() {
        match ranges.last_mut() {
            Some(last) if last[1] + 1 == page => last[1] = page,
            _ => ranges.push([page, page]),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{events::Task, file_record::MAX_WRITERS_PER_FILE};

    const FILE: FileId = FileId {
        dev: 1 << 20,
        ino: 12,
        generation: 0,
    };

    fn task(tgid: u32, comm: &str) -> Task {
        Task {
            pid: tgid,
            tgid,
            comm: comm.into(),
            cgroup_id: 1,
            ..Task::default()
        }
    }

    fn write(page: u64, tgid: u32, at: u64) -> Event {
        Event {
            file: FILE,
            task: task(tgid, "w"),
            boot_ns: at,
            body: EventBody::FirstWrite {
                page,
                kind: WriteKind::Shared,
            },
            stack_id: None,
        }
    }

    #[test]
    fn an_exiting_writer_is_marked_in_each_file_it_wrote() {
        let mut agg = Aggregate::new();
        agg.apply(&write(0, 7, 10));
        agg.apply(&write(1, 8, 11));
        let applied = agg.apply(&Event {
            file: FileId::default(),
            task: task(7, "w"),
            boot_ns: 50,
            body: EventBody::ProcessExit,
            stack_id: None,
        });
        assert_eq!(applied.exited_writer_of, [FILE]);
        agg.set_not_on_disk_at_exit(FILE, 7, Ok(1));
        let record = agg.file(&FILE).expect("the file");
        assert_eq!(
            record.writers[&7].exit.as_deref(),
            Some(&WriterExit {
                boot_ns: 50,
                not_on_disk: Some(Ok(1))
            })
        );
        assert_eq!(record.writers[&8].exit, None, "still running");
        let unknown = agg.apply(&Event {
            file: FileId::default(),
            task: task(99, "never-wrote"),
            boot_ns: 60,
            body: EventBody::ProcessExit,
            stack_id: None,
        });
        assert!(unknown.exited_writer_of.is_empty());
    }

    #[test]
    fn collects_pages_writers_and_times() {
        let mut agg = Aggregate::new();
        assert_eq!(
            agg.apply(&write(5, 100, 30)),
            Applied {
                new_file: Some((FILE, 100)),
                new_pages: 1,
                ..Applied::default()
            }
        );
        assert_eq!(
            agg.apply(&write(6, 100, 10)),
            Applied {
                new_file: None,
                new_pages: 1,
                ..Applied::default()
            }
        );
        agg.apply(&write(9, 200, 50));
        let rec = agg.file(&FILE).unwrap();
        assert!(rec.modified());
        assert_eq!(page_ranges(&rec.pages_written), vec![[5, 6], [9, 9]]);
        assert_eq!(rec.writers[&100].pages, 2);
        assert_eq!(rec.writers[&200].pages, 1);
        assert_eq!(rec.first_write_boot_ns(), Some(10));
        assert_eq!(rec.last_write_boot_ns(), Some(50));
        assert_eq!(agg.events(), 3);
    }

    #[test]
    fn a_repeated_first_write_is_not_counted_twice() {
        let mut agg = Aggregate::new();
        agg.apply(&write(5, 100, 1));
        assert_eq!(agg.apply(&write(5, 100, 2)).new_pages, 0);
        let rec = agg.file(&FILE).unwrap();
        assert_eq!(rec.pages_written.len(), 1);
        assert_eq!(rec.writers[&100].pages, 1);
        assert_eq!(rec.details().repeated_reports, 1);
    }

    #[test]
    fn huge_spans_add_every_page_once() {
        let mut agg = Aggregate::new();
        agg.apply(&write(7, 100, 1));
        let applied = agg.apply(&Event {
            file: FILE,
            task: task(100, "w"),
            boot_ns: 2,
            body: EventBody::FolioSpan {
                first_page: 0,
                pages: 512,
            },
            stack_id: None,
        });
        assert_eq!(applied.new_pages, 511);
        let rec = agg.file(&FILE).unwrap();
        assert_eq!(page_ranges(&rec.pages_written), vec![[0, 511]]);
        // Page 7 was already counted: 511 more, 512 in all.
        assert_eq!(rec.writers[&100].pages, 512);
        assert_eq!(rec.details().huge_spans, 1);
        assert_eq!(rec.details().folio_spans, 1);
        // Only page 7 had a fault of its own.
        assert_eq!(page_ranges(&rec.exact_pages()), vec![[7, 7]]);
        assert_eq!(rec.span_pages().len(), 511);
        // A span is not a fault.
        assert_eq!(rec.write_faults(), 1);
    }

    #[test]
    fn small_folio_spans_are_pages_written_but_not_exact() {
        let mut agg = Aggregate::new();
        agg.apply(&write(16, 100, 1));
        agg.apply(&Event {
            file: FILE,
            task: task(100, "w"),
            boot_ns: 2,
            body: EventBody::FolioSpan {
                first_page: 16,
                pages: 16,
            },
            stack_id: None,
        });
        let rec = agg.file(&FILE).unwrap();
        assert_eq!(page_ranges(&rec.pages_written), vec![[16, 31]]);
        assert_eq!(page_ranges(&rec.exact_pages()), vec![[16, 16]]);
        assert_eq!(page_ranges(rec.span_pages()), vec![[17, 31]]);
        assert_eq!(
            (rec.details().folio_spans, rec.details().huge_spans),
            (1, 0)
        );
    }

    #[test]
    fn possibly_written_pages_do_not_make_a_file_modified() {
        let mut agg = Aggregate::new();
        let applied = agg.apply(&Event {
            file: FILE,
            task: task(7, "reader"),
            boot_ns: 1,
            body: EventBody::PossibleWrite {
                first_page: 0,
                pages: 16,
            },
            stack_id: None,
        });
        assert_eq!(applied.new_file, Some((FILE, 7)));
        assert_eq!(applied.new_pages, 0);
        let rec = agg.file(&FILE).unwrap();
        assert!(!rec.modified());
        assert_eq!(rec.details().possibly_written.len(), 16);
        assert_eq!(rec.writers[&7].possible_pages, 16);
        agg.apply(&write(3, 8, 2));
        let rec = agg.file(&FILE).unwrap();
        assert!(rec.modified());
        assert_eq!(rec.only_possibly_written().len(), 15);
    }

    #[test]
    fn a_reused_inode_number_is_another_file() {
        let mut agg = Aggregate::new();
        agg.apply(&write(1, 1, 1));
        let reused = FileId {
            generation: FILE.generation + 1,
            ..FILE
        };
        agg.apply(&Event {
            file: reused,
            task: task(2, "new"),
            boot_ns: 2,
            body: EventBody::FirstWrite {
                page: 2,
                kind: WriteKind::Shared,
            },
            stack_id: None,
        });
        assert_eq!(agg.len(), 2);
        assert_eq!(
            page_ranges(&agg.file(&FILE).unwrap().pages_written),
            vec![[1, 1]]
        );
        assert_eq!(
            page_ranges(&agg.file(&reused).unwrap().pages_written),
            vec![[2, 2]]
        );
    }

    #[test]
    fn writers_beyond_the_cap_are_folded_with_exact_totals() {
        let mut agg = Aggregate::new();
        let cap = MAX_WRITERS_PER_FILE as u32;
        // One big writer, then many one-page writers.
        for page in 0..10 {
            agg.apply(&write(page, 1, 1));
        }
        for tgid in 2..=cap + 50 {
            agg.apply(&write(1000 + u64::from(tgid), tgid, 2));
        }
        let rec = agg.file(&FILE).unwrap();
        assert_eq!(rec.writers.len(), MAX_WRITERS_PER_FILE);
        assert_eq!(rec.writers[&1].pages, 10, "the big writer is kept");
        assert_eq!(rec.details().other_writers.processes, 50);
        let named: u64 = rec.writers.values().map(|w| w.pages).sum();
        assert_eq!(
            named + rec.details().other_writers.pages,
            rec.pages_written.len()
        );
    }

    #[test]
    fn cow_only_files_are_not_modified() {
        let mut agg = Aggregate::new();
        agg.apply(&Event {
            file: FILE,
            task: task(1, "c"),
            boot_ns: 1,
            body: EventBody::FirstWrite {
                page: 2,
                kind: WriteKind::Cow,
            },
            stack_id: None,
        });
        let rec = agg.file(&FILE).unwrap();
        assert!(!rec.modified());
        assert_eq!(page_ranges(&rec.details().cow_pages), vec![[2, 2]]);
        assert_eq!(rec.writers[&1].cow_pages, 1);
    }

    #[test]
    fn new_writers_are_attributed_without_pages() {
        let mut agg = Aggregate::new();
        agg.apply(&write(5, 100, 1));
        agg.apply(&Event {
            file: FILE,
            task: task(300, "late"),
            boot_ns: 4,
            body: EventBody::NewWriter { page: 5 },
            stack_id: None,
        });
        let rec = agg.file(&FILE).unwrap();
        assert_eq!(rec.writers[&300].pages, 0);
        assert_eq!(rec.writers[&300].comm, "late");
        assert_eq!(rec.pages_written.len(), 1);
        assert_eq!(rec.last_write_boot_ns(), Some(4));
    }

    #[test]
    fn proc_maps_paths_beat_dentry_paths() {
        let mut agg = Aggregate::new();
        agg.apply(&Event {
            file: FILE,
            task: task(1, "x"),
            boot_ns: 0,
            body: EventBody::FileSeen {
                fs_magic: 0xEF53,
                components: vec!["f".into(), "d".into()],
                walk: crate::model::events::WalkEnd::FsRoot,
                through_overlay: false,
                mount_ns: None,
            },
            stack_id: None,
        });
        agg.set_path(FILE, "/d/f".into(), PathSource::Dentry);
        assert_eq!(
            agg.file(&FILE).unwrap().path.as_deref(),
            Some(Path::new("/d/f"))
        );
        agg.set_path(FILE, "/mnt/d/f".into(), PathSource::ProcMaps);
        agg.set_path(FILE, "/other".into(), PathSource::Dentry);
        let rec = agg.file(&FILE).unwrap();
        assert_eq!(rec.path.as_deref(), Some(Path::new("/mnt/d/f")));
        assert_eq!(rec.path_source, Some(PathSource::ProcMaps));
    }

    #[test]
    fn a_renamed_file_keeps_the_name_it_was_written_under() {
        let mut agg = Aggregate::new();
        agg.apply(&write(1, 1, 1));
        agg.set_path(FILE, "/out/prog.tmp1".into(), PathSource::ProcMaps);
        // Unchanged: nothing to tell, the source stays.
        agg.set_current_name(FILE, CurrentName::Linked("/out/prog.tmp1".into()));
        let rec = agg.file(&FILE).unwrap();
        assert_eq!(rec.details().renamed_from, None);
        assert_eq!(rec.path_source, Some(PathSource::ProcMaps));
        agg.set_current_name(FILE, CurrentName::Linked("/out/prog".into()));
        agg.set_current_name(FILE, CurrentName::Linked("/out/prog2".into()));
        let rec = agg.file(&FILE).unwrap();
        assert_eq!(rec.path.as_deref(), Some(Path::new("/out/prog2")));
        assert_eq!(
            rec.details().renamed_from.as_deref(),
            Some(Path::new("/out/prog.tmp1"))
        );
        assert_eq!(rec.path_source, Some(PathSource::FileHandle));
        // Renamed back: no rename left.
        agg.set_current_name(FILE, CurrentName::Linked("/out/prog.tmp1".into()));
        assert_eq!(agg.file(&FILE).unwrap().details().renamed_from, None);
        agg.set_current_name(FILE, CurrentName::Deleted);
        let rec = agg.file(&FILE).unwrap();
        assert!(rec.deleted);
        assert_eq!(rec.path.as_deref(), Some(Path::new("/out/prog.tmp1")));
    }

    #[test]
    fn kernel_stats_are_summed_and_timestamps_maxed() {
        let mut agg = Aggregate::new();
        agg.apply(&write(1, 1, 1));
        let cpus = [
            FileStats {
                shared_write_faults: 3,
                writeback_pages: 2,
                last_writeback_end_boot_ns: 50,
                ..FileStats::default()
            },
            FileStats {
                shared_write_faults: 4,
                writeback_pages: 1,
                last_writeback_end_boot_ns: 70,
                ..FileStats::default()
            },
        ];
        agg.set_kernel_stats(FILE, &cpus);
        let rec = agg.file(&FILE).unwrap();
        assert_eq!(rec.write_faults(), 7);
        assert_eq!(rec.kernel.writeback_pages, 3);
        assert_eq!(rec.kernel.last_writeback_end_boot_ns, 70);
    }

    #[test]
    fn idle_files_are_forgotten_unless_the_kernel_still_counts_them() {
        let mut agg = Aggregate::new();
        let old = FileId { ino: 100, ..FILE };
        let live = FileId { ino: 101, ..FILE };
        for file in [FILE, old, live] {
            agg.set_kernel_stats(
                file,
                &[FileStats {
                    shared_write_faults: 1,
                    last_write_boot_ns: if file == FILE { 500 } else { 10 },
                    ..FileStats::default()
                }],
            );
        }
        // `old` wrote at 10 and then was written back at 450: still active.
        agg.set_kernel_stats(
            old,
            &[FileStats {
                last_writeback_end_boot_ns: 450,
                ..FileStats::default()
            }],
        );
        assert!(agg.forget_idle(400, |id| *id == live).is_empty());
        assert_eq!(agg.forget_idle(460, |id| *id == live), vec![old]);
        assert!(agg.file(&old).is_none());
        assert!(agg.file(&live).is_some() && agg.file(&FILE).is_some());
    }

    #[test]
    fn handed_over_counts_stay_and_later_entries_add_to_them() {
        let mut agg = Aggregate::new();
        agg.apply(&write(1, 1, 1));
        let first = [FileStats {
            shared_write_faults: 5,
            writeback_pages: 2,
            last_write_boot_ns: 40,
            ..FileStats::default()
        }];
        agg.set_kernel_stats(FILE, &first);
        agg.take_kernel_stats(FILE, &first);
        assert_eq!(agg.file(&FILE).unwrap().write_faults(), 5);
        // The kernel's entry is gone: a snapshot without it changes nothing.
        agg.set_kernel_stats(FILE, &[]);
        assert_eq!(agg.file(&FILE).unwrap().write_faults(), 5);
        // A new entry from the next fault counts from zero.
        let second = [FileStats {
            shared_write_faults: 3,
            last_write_boot_ns: 90,
            ..FileStats::default()
        }];
        agg.set_kernel_stats(FILE, &second);
        let rec = agg.file(&FILE).unwrap();
        assert_eq!(rec.write_faults(), 8);
        assert_eq!(rec.kernel.writeback_pages, 2);
        assert_eq!(rec.kernel.last_write_boot_ns, 90);
        agg.take_kernel_stats(FILE, &second);
        assert_eq!(agg.file(&FILE).unwrap().write_faults(), 8);
    }

    #[test]
    fn write_faults_never_fewer_than_fault_records() {
        let mut agg = Aggregate::new();
        agg.apply(&write(1, 1, 1));
        agg.apply(&write(2, 1, 1));
        assert_eq!(agg.file(&FILE).unwrap().write_faults(), 2);
    }

    #[test]
    fn ranges_merge_consecutive_pages_only() {
        let pages: PageSet = [0u64, 1, 2, 4, 10, 11, u64::from(u32::MAX) + 1]
            .into_iter()
            .collect();
        assert_eq!(
            page_ranges(&pages),
            vec![[0, 2], [4, 4], [10, 11], [4_294_967_296, 4_294_967_296]]
        );
        assert!(page_ranges(&PageSet::new()).is_empty());
    }

    #[test]
    fn dentry_paths() {
        let comps = vec![NameBytes::from("f.db"), NameBytes::from("data")];
        assert_eq!(dentry_path(&comps, true, None), Path::new("/data/f.db"));
        assert_eq!(
            dentry_path(&comps, true, Some(Path::new("/mnt/x/"))),
            Path::new("/mnt/x/data/f.db")
        );
        assert_eq!(
            dentry_path(&comps, true, Some(Path::new("/"))),
            Path::new("/data/f.db")
        );
        assert_eq!(
            dentry_path(&comps, false, Some(Path::new("/mnt"))),
            Path::new("…/data/f.db")
        );
        // Names are bytes: a newline or an invalid byte is kept exactly.
        let odd = vec![NameBytes(b"a\n\xff".to_vec())];
        assert_eq!(
            dentry_path(&odd, true, None),
            crate::model::names::path_from_bytes(b"/a\n\xff")
        );
    }
}
