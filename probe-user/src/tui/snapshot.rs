//! What the dashboard shows at one tick, built from the aggregate.
//!
//! Owned and small: rows per file and per process, and the heatmap of one
//! file. Building it is linear in files and writers, never in pages: page
//! counts come from the page sets' cardinalities and heatmap buckets from
//! rank queries.

use std::collections::BTreeMap;

use crate::model::page_set::PageSet;

use crate::{
    model::{aggregate::Aggregate, events::FileId, page_marks::PageMarks},
    probe::maps::KernelCounters,
};

/// Heatmap resolution computed per tick; rendering folds it into the cells
/// it has, so its cost depends on the screen, not on the file.
pub const HEATMAP_BUCKETS: usize = 2048;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WritebackState {
    /// Written pages not yet written back.
    Dirty,
    /// Writeback started and not finished.
    Writing,
    /// Written back since the last write.
    Clean,
    /// tmpfs and other filesystems without writeback.
    NoWriteback,
}

impl WritebackState {
    pub fn label(self) -> &'static str {
        match self {
            WritebackState::Dirty => "dirty",
            WritebackState::Writing => "writing",
            WritebackState::Clean => "clean",
            WritebackState::NoWriteback => "-",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FileRow {
    pub id: FileId,
    pub path: String,
    pub pages: u64,
    /// `pages` with those only in spans, and the possibly written beside.
    pub marks: PageMarks,
    pub write_faults: u64,
    pub cow_pages: u64,
    pub writers: usize,
    pub writeback_pages: u64,
    pub writeback: WritebackState,
    pub last_write_boot_ns: u64,
    /// Processes that wrote it (the processes view opens their files).
    pub writer_tgids: Vec<u32>,
    /// msync/fsync/fdatasync/sync_file_range calls on it.
    pub syncs: u64,
}

/// The processes view's key for writers a file folded together (past
/// `MAX_WRITERS_PER_FILE`): their names are gone, their pages are not.
pub const FOLDED_WRITERS_TGID: u32 = 0;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessRow {
    /// [`FOLDED_WRITERS_TGID`] for the row of folded writers.
    pub tgid: u32,
    /// Its effective users' names (uids where the host has none), comma
    /// separated: one, unless its ids changed between writes.
    pub user: String,
    pub comm: String,
    pub files: usize,
    pub pages: u64,
    pub cow_pages: u64,
    /// The process has exited (the kernel said so; folded writers: never).
    pub exited: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterRow {
    pub tgid: u32,
    /// Its effective user's name, else its uid.
    pub user: String,
    pub comm: String,
    pub pages: u64,
    pub cow_pages: u64,
}

/// Written pages of one file in `buckets.len()` equal slices of its page range.
#[derive(Clone, Debug, PartialEq)]
pub struct Heatmap {
    /// Pages 0..pages_span are shown (the highest written page + 1).
    pub pages_span: u64,
    /// Written pages per bucket; bucket i covers pages [i*span/n, (i+1)*span/n).
    pub written: Vec<u64>,
    pub state: WritebackState,
}

impl Heatmap {
    /// Over the whole file (`file_pages`, when its size is known) or up
    /// to the last written page, whichever is more.
    pub fn build(pages: &PageSet, state: WritebackState, buckets: usize, file_pages: u64) -> Self {
        let span = pages.max().map_or(0, |max| max + 1).max(file_pages);
        let buckets = buckets.max(1).min(span.max(1) as usize);
        let bound = |i: usize| (span as u128 * i as u128 / buckets as u128) as u64;
        // rank(v) counts pages <= v: two ranks per bucket, whatever the size.
        let below = |page: u64| if page == 0 { 0 } else { pages.rank(page - 1) };
        let written = (0..buckets)
            .map(|i| below(bound(i + 1)) - below(bound(i)))
            .collect();
        Self {
            pages_span: span,
            written,
            state,
        }
    }

    /// Pages a bucket covers.
    pub fn bucket_pages(&self, index: usize) -> u64 {
        let n = self.written.len().max(1) as u128;
        let span = self.pages_span as u128;
        ((span * (index as u128 + 1) / n) - (span * index as u128 / n)) as u64
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Detail {
    pub row: FileRow,
    pub heatmap: Heatmap,
    pub writers: Vec<WriterRow>,
    pub huge_spans: u64,
    pub folios_dirtied: u64,
    pub pages_dirtied: u64,
    /// msync/fsync/fdatasync/sync_file_range calls on the file.
    pub syncs: crate::model::durability::Syncs,
    /// Written pages not on disk yet (the page cache's count); None when
    /// it cannot be told (tmpfs, Linux before 6.5, the file gone).
    pub not_on_disk: Option<u64>,
    /// `--stacks`: the code that wrote most of its pages.
    pub call_sites: Option<Vec<crate::model::call_sites::Site>>,
}

/// Everything one tick brings.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub files: Vec<FileRow>,
    pub processes: Vec<ProcessRow>,
    pub detail: Option<Detail>,
    pub counters: KernelCounters,
    pub lost_events: u64,
    pub events: u64,
    pub now_boot_ns: u64,
}

fn writeback_state(
    record: &crate::model::file_record::FileRecord,
    has_writeback: bool,
) -> WritebackState {
    let k = &record.kernel;
    let last_write = record.latest_write_boot_ns();
    if !has_writeback {
        WritebackState::NoWriteback
    } else if k.writeback_starts > k.writeback_ends {
        WritebackState::Writing
    } else if k.last_writeback_end_boot_ns > last_write && k.writeback_ends > 0 {
        WritebackState::Clean
    } else {
        WritebackState::Dirty
    }
}

impl Snapshot {
    /// `keep(record)`: whether the file is shown (filters); processes count
    /// shown files only. `has_writeback(file)`: whether the file's
    /// filesystem writes back (tmpfs does not).
    pub fn build(
        aggregate: &Aggregate,
        selected: Option<FileId>,
        counters: KernelCounters,
        now_boot_ns: u64,
        keep: &dyn Fn(&crate::model::file_record::FileRecord) -> bool,
        has_writeback: &dyn Fn(FileId) -> bool,
        file_pages: &dyn Fn(&crate::model::file_record::FileRecord) -> Option<u64>,
    ) -> Self {
        let mut files = Vec::with_capacity(aggregate.len());
        let mut processes: BTreeMap<u32, ProcessRow> = BTreeMap::new();
        for (id, record) in aggregate.files().filter(|(_, record)| keep(record)) {
            let row = FileRow {
                id: *id,
                // Control characters escaped here, once: a name never acts
                // on the terminal.
                path: crate::model::names::terminal_text(&record.display_path(id)).into_owned(),
                pages: record.pages_written.len(),
                marks: record.page_marks(),
                write_faults: record.write_faults(),
                cow_pages: record.details().cow_pages.len(),
                writers: record.writers.len(),
                writeback_pages: record.kernel.writeback_pages,
                writeback: writeback_state(record, has_writeback(*id)),
                last_write_boot_ns: record.latest_write_boot_ns(),
                writer_tgids: writer_tgids(record),
                syncs: record.details().syncs.calls(),
            };
            // One file more for the process, with its pages in it.
            let mut add = |file: ProcessRow| {
                let process = processes.entry(file.tgid).or_insert_with(|| ProcessRow {
                    files: 0,
                    pages: 0,
                    cow_pages: 0,
                    ..file.clone()
                });
                process.files += 1;
                process.pages += file.pages;
                process.cow_pages += file.cow_pages;
                process.exited |= file.exited;
                for user in file.user.split(',') {
                    if !process.user.split(',').any(|known| known == user) {
                        process.user = format!("{},{user}", process.user);
                    }
                }
            };
            // A process whose ids changed is several writers of the file.
            for writers in record
                .writers
                .values()
                .as_slice()
                .chunk_by(|a, b| a.tgid == b.tgid)
            {
                let mut users: Vec<String> =
                    writers.iter().map(|w| user_text(w.ids.euid)).collect();
                users.dedup();
                add(ProcessRow {
                    tgid: writers[0].tgid,
                    user: users.join(","),
                    comm: crate::model::names::terminal_text(&writers[0].comm).into_owned(),
                    files: 1,
                    pages: writers.iter().map(|w| w.pages).sum(),
                    cow_pages: writers.iter().map(|w| w.cow_pages).sum(),
                    exited: writers.iter().any(|w| w.exit.is_some()),
                });
            }
            let folded = &record.details().other_writers;
            if folded.processes > 0 {
                add(ProcessRow {
                    tgid: FOLDED_WRITERS_TGID,
                    user: "-".into(),
                    comm: "(folded writers)".into(),
                    files: 1,
                    pages: folded.pages,
                    cow_pages: folded.cow_pages,
                    exited: false,
                });
            }
            files.push(row);
        }
        let detail = selected.and_then(|id| {
            let record = aggregate.file(&id)?;
            let row = files.iter().find(|r| r.id == id)?.clone();
            let mut writers: Vec<WriterRow> = record
                .writers
                .values()
                .map(|w| WriterRow {
                    tgid: w.tgid,
                    user: user_text(w.ids.euid),
                    comm: crate::model::names::terminal_text(&w.comm).into_owned(),
                    pages: w.pages,
                    cow_pages: w.cow_pages,
                })
                .collect();
            writers.sort_by(|a, b| b.pages.cmp(&a.pages).then(a.tgid.cmp(&b.tgid)));
            Some(Detail {
                heatmap: Heatmap::build(
                    &record.pages_written,
                    row.writeback,
                    HEATMAP_BUCKETS,
                    file_pages(record).unwrap_or(0),
                ),
                writers,
                huge_spans: record.details().huge_spans,
                folios_dirtied: record.kernel.folios_dirtied,
                pages_dirtied: record.kernel.pages_dirtied,
                syncs: record.details().syncs.clone(),
                // Asked of the page cache by the session (a syscall).
                not_on_disk: None,
                // Named by the session's stacks, when it takes them.
                call_sites: None,
                row,
            })
        });
        Self {
            files,
            processes: processes.into_values().collect(),
            detail,
            lost_events: counters.lost(),
            counters,
            events: aggregate.events(),
            now_boot_ns,
        }
    }
}

/// A user as the dashboard shows it: its name (control characters
/// escaped), else its uid.
fn user_text(euid: u32) -> String {
    match crate::session::user_name(euid) {
        Some(name) => crate::model::names::terminal_text(&name).into_owned(),
        None => euid.to_string(),
    }
}

/// The processes that wrote a file, in order (a process with two sets of
/// ids is two writers but one process), and the folded writers.
fn writer_tgids(record: &crate::model::file_record::FileRecord) -> Vec<u32> {
    let mut tgids: Vec<u32> = record.writers.values().map(|writer| writer.tgid).collect();
    tgids.dedup();
    if record.details().other_writers.processes > 0 {
        tgids.push(FOLDED_WRITERS_TGID);
    }
    tgids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmap_buckets_count_pages_by_rank() {
        let pages: PageSet = [0u64, 1, 2, 3, 100, 1023].into_iter().collect();
        let map = Heatmap::build(&pages, WritebackState::Dirty, 4, 0);
        assert_eq!(map.pages_span, 1024);
        assert_eq!(map.written, vec![5, 0, 0, 1]);
        assert_eq!(map.bucket_pages(0), 256);
        assert_eq!(map.written.iter().sum::<u64>(), pages.len());
    }

    #[test]
    fn heatmap_of_a_million_pages_stays_bounded() {
        let mut pages = PageSet::new();
        pages.insert_range(0..1_000_000);
        let map = Heatmap::build(&pages, WritebackState::Clean, HEATMAP_BUCKETS, 0);
        assert_eq!(map.written.len(), HEATMAP_BUCKETS);
        assert_eq!(map.written.iter().sum::<u64>(), 1_000_000);
        let covered: u64 = (0..map.written.len()).map(|i| map.bucket_pages(i)).sum();
        assert_eq!(covered, 1_000_000);
    }

    #[test]
    fn writers_a_file_folded_are_one_process_row_with_their_pages() {
        use crate::model::{
            aggregate::Aggregate,
            events::{Event, EventBody, FileId, Task, WriteKind},
            file_record::MAX_WRITERS_PER_FILE,
        };
        let file = FileId {
            dev: 1,
            ino: 2,
            generation: 0,
        };
        let mut aggregate = Aggregate::new();
        let writers = MAX_WRITERS_PER_FILE as u32 + 10;
        for tgid in 1..=writers {
            aggregate.apply(&Event {
                file,
                task: Task {
                    pid: tgid,
                    tgid,
                    comm: "w".into(),
                    cgroup_id: 1,
                    ..Task::default()
                },
                boot_ns: u64::from(tgid),
                body: EventBody::FirstWrite {
                    page: u64::from(tgid),
                    kind: WriteKind::Shared,
                },
                stack_id: None,
            });
        }
        let snapshot = Snapshot::build(
            &aggregate,
            None,
            KernelCounters::default(),
            0,
            &|_| true,
            &|_| true,
            &|_| None,
        );
        let folded = snapshot
            .processes
            .iter()
            .find(|p| p.tgid == FOLDED_WRITERS_TGID)
            .expect("a row for the folded writers");
        assert_eq!((folded.files, folded.pages), (1, 10));
        let pages: u64 = snapshot.processes.iter().map(|p| p.pages).sum();
        assert_eq!(pages, u64::from(writers), "every page has its row");
        assert!(snapshot.files[0]
            .writer_tgids
            .contains(&FOLDED_WRITERS_TGID));
    }

    #[test]
    fn small_files_get_one_bucket_per_page() {
        let pages: PageSet = [1u64, 3].into_iter().collect();
        let map = Heatmap::build(&pages, WritebackState::Dirty, HEATMAP_BUCKETS, 0);
        assert_eq!(map.written, vec![0, 1, 0, 1]);
        assert!(Heatmap::build(&PageSet::new(), WritebackState::Dirty, 8, 0)
            .written
            .iter()
            .all(|&w| w == 0));
    }

    /// With the file's size known, the map covers the whole file, not
    /// only up to its last written page.
    #[test]
    fn the_heatmap_covers_the_whole_file_when_its_size_is_known() {
        let pages: PageSet = [1u64, 3].into_iter().collect();
        let map = Heatmap::build(&pages, WritebackState::Dirty, 4, 100);
        assert_eq!(map.pages_span, 100);
        assert_eq!(map.written, vec![2, 0, 0, 0]);
        // A file shorter than what was written (truncated since): the
        // written pages still show.
        assert_eq!(
            Heatmap::build(&pages, WritebackState::Dirty, 4, 1).pages_span,
            4
        );
    }
}
