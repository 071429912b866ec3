//! The trace report: the JSON contract (the table is in `table`).
//!
//! Over 500 lines only with its unit tests (the code is ~435).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    model::{
        aggregate::{page_ranges, Aggregate},
        clock::Clock,
        events::{FileId, UserIds},
        file_record::{FileRecord, OtherWriters, PathSource},
        names,
        report_filter::ReportFilter,
    },
    probe::maps::KernelCounters,
    session::container_name,
    trace::call_sites_report::{CallSitesSummary, StackReport},
};
use probe_common::{Counter, CounterTotals};

/// A writer's ids as the host sees them (a container's users are the
/// host's numbers), its audit login uid (null when unset: kept across su
/// and sudo) and the name of its effective user in the host's passwd (null
/// when it has none). All null on records made on nobody's behalf
/// (writeback).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct WriterIds {
    pub uid: Option<u32>,
    pub euid: Option<u32>,
    pub gid: Option<u32>,
    pub egid: Option<u32>,
    pub loginuid: Option<u32>,
    pub user: Option<String>,
}

impl WriterIds {
    /// With the user named by the host's passwd now.
    pub fn of(ids: &UserIds) -> Self {
        Self::named(ids, &|uid| {
            crate::session::user_name(uid).map(|name| name.to_string())
        })
    }

    /// With the user named by `user_name` (a replay's recorded answers).
    pub fn named(ids: &UserIds, user_name: &dyn Fn(u32) -> Option<String>) -> Self {
        let known = |id: u32| (id != probe_common::UNSET_ID).then_some(id);
        Self {
            uid: known(ids.uid),
            euid: known(ids.euid),
            gid: known(ids.gid),
            egid: known(ids.egid),
            loginuid: ids.login(),
            user: known(ids.euid).and_then(user_name),
        }
    }
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct WriterReport {
    pub pid: u32,
    pub comm: String,
    /// Pages this process wrote first.
    pub pages: u64,
    pub cow_pages: u64,
    /// Pages this process got mapped writable by read faults (tmpfs).
    pub possible_pages: u64,
    pub cgroup_id: u64,
    /// The cgroup's path under the cgroup2 root (null when it is gone or
    /// cannot be read), and the container it shows, as the exporter's
    /// `cgroup` label names it (`container:ID12`, `pod:UID/container:ID12`;
    /// null for a cgroup that is no container's).
    pub cgroup: Option<String>,
    pub container: Option<String>,
    #[serde(flatten)]
    pub ids: WriterIds,
    /// When the process exited during the trace (if it had a shared
    /// writable mapping), and how many of the file's written pages were
    /// not on disk then (cachestat; null with the reason in
    /// `not_on_disk_at_exit_why` when that could not be told).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exited_unix_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pages_not_on_disk_at_exit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_on_disk_at_exit_why: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct FileReport {
    /// The name as it is now (or when first written, if that cannot be
    /// read): as is when UTF-8, else with each invalid byte as `\xNN` and
    /// the exact bytes in `path_bytes_hex`.
    pub path: Option<String>,
    /// The exact bytes of `path` in hex, only when they are not UTF-8.
    pub path_bytes_hex: Option<String>,
    pub path_source: Option<PathSource>,
    /// The name the file was written under, when it was renamed since.
    pub renamed_from: Option<String>,
    /// Written through overlayfs (`path` is the overlay's): the layer's
    /// own file behind it, as it is named now.
    pub backing_path: Option<String>,
    /// The file's last link is gone.
    pub deleted: bool,
    pub dev: String,
    pub ino: u64,
    /// The inode's generation: with `dev` and `ino`, the file's identity
    /// (an inode number reused after unlink is another file).
    pub generation: u32,
    /// The filesystem type: from the mount table, else from the
    /// superblock's magic (a mount in another namespace); never null.
    pub fs: String,
    /// The mount namespace (inode number of /proc/PID/ns/mnt) of the
    /// file's first writer: the view `path` is in. Files at one path in
    /// two containers differ here.
    pub mount_ns: Option<u64>,
    /// The cgroup id of the file's first writer.
    pub cgroup_id: Option<u64>,
    pub modified: bool,
    pub pages_written: Vec<[u64; 2]>,
    pub pages_written_count: u64,
    /// Pages of `pages_written` with a write fault of their own.
    pub exact_pages: Vec<[u64; 2]>,
    pub exact_pages_count: u64,
    /// Pages of `pages_written` without a fault of their own: the rest of
    /// a large folio that one write fault mapped writable whole (the
    /// kernel's granularity: stores to them never fault).
    pub span_pages: Vec<[u64; 2]>,
    pub span_pages_count: u64,
    /// Write faults that mapped a whole large folio writable.
    pub folio_spans: u64,
    /// Pages a read fault mapped writable into a shared writable mapping
    /// of a file without write-notify (tmpfs): possibly written, with no
    /// store-time signal. Not in `pages_written`.
    pub possibly_written_pages: Vec<[u64; 2]>,
    pub possibly_written_pages_count: u64,
    /// Why the file may have been modified beyond `pages_written`, or null.
    pub possibly_modified: Option<&'static str>,
    pub cow_pages: Vec<[u64; 2]>,
    pub cow_pages_count: u64,
    pub write_faults: u64,
    pub cow_faults: u64,
    /// Huge folios (2 MiB) that one write fault made writable whole: their
    /// pages are all in `pages_written`, as the kernel tracks them as one.
    pub huge_mapped_spans: u64,
    pub writers: Vec<WriterReport>,
    /// Writers beyond the per-file cap, summed.
    pub other_writers: OtherWriters,
    pub first_write_unix_ns: Option<u64>,
    pub last_write_unix_ns: Option<u64>,
    pub folios_dirtied: u64,
    pub pages_dirtied: u64,
    pub writeback_pages: u64,
    pub writeback_starts: u64,
    pub writeback_ends: u64,
    pub last_writeback_start_unix_ns: Option<u64>,
    pub last_writeback_end_unix_ns: Option<u64>,
    /// fentry and kprobe backends: the filesystem's `->page_mkwrite` that
    /// ran for this file (e.g. `ext4_page_mkwrite`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_mkwrite: Option<String>,
    /// fentry and kprobe backends: runs of written pages whose writeback
    /// completed, with when (the latest completion of each page).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_writeback: Option<Vec<PageWriteback>>,
    /// Runs left out of `page_writeback` (more than [`MAX_WRITEBACK_RUNS`]),
    /// and completions not tracked (a file of more folios than the cap).
    #[serde(skip_serializing_if = "is_zero")]
    pub page_writeback_omitted: u64,
    /// Durability: msync, fsync, fdatasync and sync_file_range calls on
    /// the file, by call (only calls made; `{}` when none).
    pub syncs: BTreeMap<&'static str, SyncReport>,
    /// Written pages still dirty or under writeback when the report was
    /// made (the page cache's own count, `cachestat(2)`, Linux 6.5+):
    /// not yet on disk. Null when it could not be read; see
    /// `not_yet_written_back_why`.
    pub not_yet_written_back_pages: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_yet_written_back_why: Option<String>,
    /// `--stacks`: the code that wrote the file, most pages first (see
    /// `call_sites_report`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stacks: Option<Vec<StackReport>>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SyncReport {
    pub calls: u64,
    /// Calls that failed (an `EIO` from fsync is a lost write), and the
    /// latest errno.
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_errno: Option<u32>,
    pub last_unix_ns: u64,
    pub total_latency_ns: u64,
    pub max_latency_ns: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct PageWriteback {
    /// Inclusive page range.
    pub pages: [u64; 2],
    pub written_back_unix_ns: u64,
}

/// Why pages are only possibly written.
pub const POSSIBLY_MODIFIED_WHY: &str = "mapped writable on a filesystem without write-notify (tmpfs/shmem), by a read fault or by mprotect to writable: stores to them take no fault";

/// `page_writeback` entries per file in a report.
pub const MAX_WRITEBACK_RUNS: usize = 4096;

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Report {
    pub version: u32,
    pub backend: String,
    pub backend_reason: String,
    pub duration_s: f64,
    /// Everything the kernel side failed to report (see `drops`).
    pub lost_events: u64,
    pub drops: Drops,
    /// How the probes worked (not losses).
    pub probe: ProbeStats,
    pub events: u64,
    pub warnings: Vec<String>,
    /// What this backend cannot see (see README, "Blind spots").
    pub blind_spots: Vec<&'static str>,
    /// `--stacks`: first writes whose call site is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_sites: Option<CallSitesSummary>,
    pub files: Vec<FileReport>,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct ProbeStats {
    /// Kernel functions hooked (fentry and kprobe backends), as
    /// `fentry/do_wp_page`.
    pub hooks: Vec<String>,
    /// Hooks replaced function by function, and why.
    pub fallbacks: Vec<String>,
    /// Shared write faults the kernel saw (after filters).
    pub shared_write_faults: u64,
    /// Records the kernel submitted to the ring buffer, and the ring bytes
    /// they took.
    pub records_submitted: u64,
    pub ring_bytes_submitted: u64,
    /// Faults whose mapping the lock-free maple-tree walk did not find,
    /// looked up with bpf_find_vma instead (slower with IRQs off).
    pub vma_walk_fallbacks: u64,
    /// Write faults that mapped a whole large folio writable.
    pub folio_spans: u64,
    /// Write faults past the end of the file: they end in SIGBUS, nothing
    /// is written, and they are not reported as writes.
    pub faults_past_eof: u64,
    /// Read faults that mapped tmpfs/shmem pages writable (possibly
    /// written), and those whose mapping could not be checked.
    pub possible_write_windows: u64,
    pub possible_write_unverified: u64,
    /// Idle files whose kernel entry was moved into userspace so the
    /// kernel map never fills; of those, files still dirty (deleted or
    /// truncated while dirty, most likely): later writeback of theirs is
    /// not counted.
    pub files_handed_over: u64,
    pub dirty_files_handed_over: u64,
    /// msync/fsync/fdatasync/sync_file_range calls on files not written
    /// through a mapping: not reported.
    pub syncs_of_other_files: u64,
}

/// What could not be reported, by reason: every kernel counter declared
/// for `drops` (probe-common's `counters`, under its declared name), then
/// what userspace counts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drops {
    pub kernel: CounterTotals,
    /// Entries the kernel's first-write dedup map evicted (inserts beyond
    /// its capacity). Not lost: an evicted page written again is reported
    /// again and deduplicated here (`dedup_repeats`).
    pub dedup_evictions: u64,
    /// First-write reports of pages already reported.
    pub dedup_repeats: u64,
    /// Records userspace could not decode.
    pub undecodable_records: u64,
}

impl Drops {
    /// The kernel's reasons in `drops`, with their totals.
    pub fn kernel_reasons(&self) -> impl Iterator<Item = (&'static Counter, u64)> + '_ {
        self.kernel
            .iter()
            .filter(|(counter, _)| counter.role.in_drops())
    }
}

impl Serialize for Drops {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(None)?;
        for (counter, total) in self.kernel_reasons() {
            map.serialize_entry(counter.name, &total)?;
        }
        map.serialize_entry("dedup_evictions", &self.dedup_evictions)?;
        map.serialize_entry("dedup_repeats", &self.dedup_repeats)?;
        map.serialize_entry("undecodable_records", &self.undecodable_records)?;
        map.end()
    }
}

/// Everything besides the aggregate that goes into a report.
pub struct ReportContext<'a> {
    pub backend: &'a str,
    pub backend_reason: &'a str,
    pub hooks: &'a [String],
    pub fallbacks: &'a [String],
    /// Per-page writeback times are recorded (folio_end_writeback hooked).
    pub page_writeback: bool,
    pub duration_s: f64,
    pub counters: KernelCounters,
    /// Capacity of the kernel's dedup map.
    pub dedup_capacity: u32,
    pub undecodable_records: u64,
    pub warnings: Vec<String>,
    pub clock: Clock,
    pub fs_type: &'a dyn Fn(FileId) -> Option<String>,
    /// A cgroup id's path (see `session::CgroupNames`).
    pub cgroup_path: &'a dyn Fn(u64) -> Option<String>,
    /// Written pages not on disk yet (the session asks the page cache),
    /// or why that cannot be told.
    pub not_on_disk: &'a dyn Fn(FileId, &FileRecord) -> Result<u64, String>,
    /// A uid's user name.
    pub user_name: &'a dyn Fn(u32) -> Option<String>,
}

fn some_ns(clock: &Clock, boot_ns: u64) -> Option<u64> {
    (boot_ns != 0).then(|| clock.unix_ns(boot_ns))
}

pub fn file_report(id: &FileId, record: &FileRecord, ctx: &ReportContext<'_>) -> FileReport {
    let mut writers: Vec<WriterReport> = record
        .writers
        .values()
        .map(|w| {
            let cgroup = (ctx.cgroup_path)(w.cgroup_id);
            WriterReport {
                pid: w.tgid,
                comm: w.comm.to_string(),
                pages: w.pages,
                cow_pages: w.cow_pages,
                possible_pages: w.possible_pages,
                cgroup_id: w.cgroup_id,
                container: cgroup.as_deref().and_then(container_name),
                cgroup,
                ids: WriterIds::named(&w.ids, ctx.user_name),
                exited_unix_ns: w.exit.as_ref().map(|exit| ctx.clock.unix_ns(exit.boot_ns)),
                pages_not_on_disk_at_exit: w
                    .exit
                    .as_ref()
                    .and_then(|exit| exit.not_on_disk.clone()?.ok()),
                not_on_disk_at_exit_why: w
                    .exit
                    .as_ref()
                    .and_then(|exit| exit.not_on_disk.clone()?.err()),
            }
        })
        .collect();
    writers.sort_by(|a, b| b.pages.cmp(&a.pages).then(a.pid.cmp(&b.pid)));
    // Only the function-hook backends see per-page writeback.
    let (page_writeback, page_writeback_omitted) = if ctx.page_writeback {
        let runs = record.writeback_runs();
        let omitted = runs.len().saturating_sub(MAX_WRITEBACK_RUNS) as u64
            + record.details().written_back_untracked;
        let kept = runs
            .into_iter()
            .take(MAX_WRITEBACK_RUNS)
            .map(|(first, last, boot_ns)| PageWriteback {
                pages: [first, last],
                written_back_unix_ns: ctx.clock.unix_ns(boot_ns),
            })
            .collect();
        (Some(kept), omitted)
    } else {
        (None, 0)
    };
    let kernel = &record.kernel;
    let last_write = record.latest_write_boot_ns();
    let span_pages = record.span_pages();
    let exact_pages = record.exact_pages();
    let possibly_written = record.only_possibly_written();
    let not_on_disk = (ctx.not_on_disk)(*id, record);
    FileReport {
        path: record
            .path
            .as_deref()
            .map(|p| names::json_text(p).into_owned()),
        path_bytes_hex: record.path.as_deref().and_then(names::hex_if_not_utf8),
        renamed_from: record
            .details()
            .renamed_from
            .as_deref()
            .map(|p| names::json_text(p).into_owned()),
        backing_path: record
            .details()
            .backing_path
            .as_deref()
            .map(|p| names::json_text(p).into_owned()),
        deleted: record.deleted,
        path_source: record.path_source,
        dev: id.dev_string(),
        ino: id.ino,
        generation: id.generation,
        fs: (ctx.fs_type)(*id)
            .or_else(|| record.fs_magic().map(crate::model::paths::fs_name_of_magic))
            .unwrap_or_else(|| "unknown".into()),
        mount_ns: record.mount_ns(),
        cgroup_id: record.first_writer_cgroup_id(),
        modified: record.modified(),
        pages_written: page_ranges(&record.pages_written),
        pages_written_count: record.pages_written.len(),
        exact_pages: page_ranges(&exact_pages),
        exact_pages_count: exact_pages.len(),
        span_pages: page_ranges(span_pages),
        span_pages_count: span_pages.len(),
        folio_spans: record.details().folio_spans,
        possibly_written_pages: page_ranges(&possibly_written),
        possibly_written_pages_count: possibly_written.len(),
        possibly_modified: (!possibly_written.is_empty()).then_some(POSSIBLY_MODIFIED_WHY),
        cow_pages: page_ranges(&record.details().cow_pages),
        cow_pages_count: record.details().cow_pages.len(),
        write_faults: record.write_faults(),
        cow_faults: record.cow_faults(),
        huge_mapped_spans: record.details().huge_spans,
        writers,
        other_writers: record.details().other_writers,
        first_write_unix_ns: record.first_write_boot_ns().map(|ns| ctx.clock.unix_ns(ns)),
        last_write_unix_ns: some_ns(&ctx.clock, last_write),
        folios_dirtied: kernel.folios_dirtied,
        pages_dirtied: kernel.pages_dirtied,
        writeback_pages: kernel.writeback_pages,
        writeback_starts: kernel.writeback_starts,
        writeback_ends: kernel.writeback_ends,
        last_writeback_start_unix_ns: some_ns(&ctx.clock, kernel.last_writeback_start_boot_ns),
        last_writeback_end_unix_ns: some_ns(&ctx.clock, kernel.last_writeback_end_boot_ns),
        page_mkwrite: record.page_mkwrite.as_deref().map(str::to_owned),
        page_writeback,
        page_writeback_omitted,
        syncs: record
            .details()
            .syncs
            .0
            .iter()
            .map(|(call, stats)| {
                let report = SyncReport {
                    calls: stats.calls,
                    errors: stats.errors,
                    last_errno: (stats.last_errno != 0).then_some(stats.last_errno),
                    last_unix_ns: ctx.clock.unix_ns(stats.last_boot_ns),
                    total_latency_ns: stats.total_latency_ns,
                    max_latency_ns: stats.max_latency_ns,
                };
                (call.name(), report)
            })
            .collect(),
        not_yet_written_back_pages: not_on_disk.as_ref().ok().copied(),
        not_yet_written_back_why: not_on_disk.err(),
        stacks: None,
    }
}

pub fn build(aggregate: &Aggregate, filter: &ReportFilter, ctx: ReportContext<'_>) -> Report {
    let mut files: Vec<FileReport> = aggregate
        .files()
        .filter(|(_, record)| filter.keeps(record))
        .map(|(id, record)| file_report(id, record, &ctx))
        .collect();
    files.sort_by(|a, b| {
        b.pages_written_count
            .cmp(&a.pages_written_count)
            .then(b.cow_pages_count.cmp(&a.cow_pages_count))
            .then_with(|| a.path.cmp(&b.path))
            .then(a.ino.cmp(&b.ino))
    });
    let dedup_repeats = aggregate
        .files()
        .map(|(_, r)| r.details().repeated_reports)
        .sum();
    let counters = ctx.counters;
    Report {
        version: 1,
        backend: ctx.backend.to_string(),
        backend_reason: ctx.backend_reason.to_string(),
        blind_spots: crate::model::blind_spots::blind_spots(ctx.backend),
        call_sites: None,
        duration_s: ctx.duration_s,
        lost_events: counters.lost() + ctx.undecodable_records,
        drops: Drops {
            kernel: counters.kernel,
            dedup_evictions: counters
                .kernel
                .dedup_inserts()
                .saturating_sub(u64::from(ctx.dedup_capacity)),
            dedup_repeats,
            undecodable_records: ctx.undecodable_records,
        },
        probe: ProbeStats {
            hooks: ctx.hooks.to_vec(),
            fallbacks: ctx.fallbacks.to_vec(),
            shared_write_faults: counters.kernel.shared_write_faults(),
            records_submitted: counters.kernel.records_submitted(),
            ring_bytes_submitted: counters.kernel.ring_bytes_submitted(),
            vma_walk_fallbacks: counters.kernel.vma_walk_fallbacks(),
            files_handed_over: counters.files_handed_over,
            dirty_files_handed_over: counters.dirty_files_handed_over,
            folio_spans: counters.kernel.folio_spans(),
            faults_past_eof: counters.kernel.faults_past_eof(),
            possible_write_windows: counters.kernel.possible_write_windows(),
            possible_write_unverified: counters.kernel.possible_write_unverified(),
            syncs_of_other_files: aggregate.syncs_of_other_files,
        },
        events: aggregate.events(),
        warnings: ctx.warnings,
        files,
    }
}

/// The report as printed: one JSON document, or the table.
pub fn render(report: &Report, json: bool) -> anyhow::Result<String> {
    if !json {
        return Ok(crate::trace::table::render_table(report));
    }
    let mut text = serde_json::to_string(report)?;
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::events::{Event, EventBody, Task, WriteKind};
    use probe_common::counter;
    use std::collections::BTreeSet;

    const FILE: FileId = FileId {
        dev: (7 << 20) | 2,
        ino: 12,
        generation: 0,
    };

    fn aggregate() -> Aggregate {
        let mut agg = Aggregate::new();
        for (page, kind) in [
            (1, WriteKind::Shared),
            (2, WriteKind::Shared),
            (8, WriteKind::Shared),
        ] {
            agg.apply(&Event {
                file: FILE,
                task: Task {
                    pid: 5,
                    tgid: 5,
                    comm: "py".into(),
                    cgroup_id: 3,
                    ..Task::default()
                },
                boot_ns: 1_000 + page,
                body: EventBody::FirstWrite { page, kind },
                stack_id: None,
            });
        }
        agg.set_path(FILE, "/mnt/f".into(), PathSource::ProcMaps);
        agg.apply(&Event {
            file: FileId {
                dev: 1,
                ino: 1,
                generation: 0,
            },
            task: Task {
                pid: 6,
                tgid: 6,
                comm: "c".into(),
                cgroup_id: 3,
                ..Task::default()
            },
            boot_ns: 5,
            body: EventBody::FirstWrite {
                page: 0,
                kind: WriteKind::Cow,
            },
            stack_id: None,
        });
        agg
    }

    fn ctx(fs: &dyn Fn(FileId) -> Option<String>) -> ReportContext<'_> {
        ReportContext {
            backend: "tracepoint",
            backend_reason: "test",
            hooks: &[],
            fallbacks: &[],
            page_writeback: false,
            duration_s: 1.5,
            counters: KernelCounters {
                kernel: CounterTotals::default()
                    .with(counter::RINGBUF_FULL, 2)
                    .with(counter::RINGBUF_FULL_FILE_EVENTS, 1)
                    .with(counter::VMA_LOOKUP_FAILED, 1)
                    .with(counter::WRITER_STATS_FULL, 5)
                    .with(counter::DEDUP_INSERTS, 10),
                ..KernelCounters::default()
            },
            dedup_capacity: 8,
            undecodable_records: 0,
            warnings: vec![],
            clock: Clock::with_offset(1_000_000),
            fs_type: fs,
            cgroup_path: &|id| {
                (id == 3).then(|| "/system.slice/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope".into())
            },
            not_on_disk: &|_, record| Ok(record.pages_written.len() / 2),
            user_name: &|uid| (uid == 0).then(|| "root".into()),
        }
    }

    #[test]
    fn the_table_says_how_many_written_pages_are_not_on_disk() {
        let fs = |_| Some("ext4".to_string());
        let report = build(&aggregate(), &ReportFilter::default(), ctx(&fs));
        assert_eq!(report.files[0].not_yet_written_back_pages, Some(1));
        let table = crate::trace::table::render_table(&report);
        let row = table.lines().find(|l| l.contains("/mnt/f")).unwrap();
        let header = table.lines().find(|l| l.contains("NOT_ON_DISK")).unwrap();
        let column = header.find("NOT_ON_DISK").unwrap();
        let cell = row[column..].split_whitespace().next().unwrap_or_default();
        assert_eq!(cell, "1", "{table}");
    }

    #[test]
    fn json_has_exactly_the_contract_keys() {
        let fs = |_| Some("ext4".to_string());
        let report = build(&aggregate(), &ReportFilter::default(), ctx(&fs));
        let json = serde_json::to_value(&report).unwrap();
        for key in ["version", "backend", "duration_s", "lost_events", "files"] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["version"], 1);
        // Losses only: not the detail of one (file events) nor what only
        // the exporter's per-writer counts lack.
        assert_eq!(json["lost_events"], 3);
        assert_eq!(json["drops"]["ringbuf_full"], 2);
        assert_eq!(json["drops"]["ringbuf_full_file_events"], 1);
        assert_eq!(json["drops"]["writer_stats_full"], 5);
        assert_eq!(json["drops"]["dedup_evictions"], 2);
        let drops: BTreeSet<&str> = json["drops"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let declared = probe_common::KERNEL_COUNTERS
            .iter()
            .filter(|c| c.role.in_drops())
            .map(|c| c.name);
        let expected: BTreeSet<&str> = declared
            .chain(["dedup_evictions", "dedup_repeats", "undecodable_records"])
            .collect();
        assert_eq!(drops, expected);
        let files = json["files"].as_array().unwrap();
        assert_eq!(files.len(), 1, "the COW-only file is hidden by default");
        let file = &files[0];
        for key in [
            "path",
            "dev",
            "ino",
            "modified",
            "pages_written",
            "pages_written_count",
            "cow_pages",
            "write_faults",
            "writers",
            "first_write_unix_ns",
            "last_write_unix_ns",
            "writeback_pages",
            "generation",
            "exact_pages",
            "span_pages",
            "possibly_written_pages",
            "possibly_modified",
        ] {
            assert!(file.get(key).is_some(), "missing files[].{key}");
        }
        assert_eq!(file["path"], "/mnt/f");
        assert_eq!(file["dev"], "7:2");
        assert_eq!(file["modified"], true);
        assert_eq!(file["pages_written"], serde_json::json!([[1, 2], [8, 8]]));
        assert_eq!(file["pages_written_count"], 3);
        assert_eq!(
            file["writers"],
            serde_json::json!([{"pid": 5, "comm": "py", "pages": 3, "cow_pages": 0, "possible_pages": 0, "cgroup_id": 3, "cgroup": "/system.slice/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope", "container": "container:0123456789ab", "uid": 0, "euid": 0, "gid": 0, "egid": 0, "loginuid": 0, "user": "root"}])
        );
        assert_eq!(file["first_write_unix_ns"], 1_001_001);
        assert_eq!(file["last_write_unix_ns"], 1_001_008);
    }

    #[test]
    fn include_cow_and_path_prefix_filters() {
        let fs = |_| None;
        let with_cow = ReportFilter {
            include_cow: true,
            ..ReportFilter::default()
        };
        let report = build(&aggregate(), &with_cow, ctx(&fs));
        assert_eq!(report.files.len(), 2);
        let cow = report.files.iter().find(|f| !f.modified).unwrap();
        assert_eq!(cow.cow_pages, vec![[0, 0]]);
        assert_eq!(cow.path, None);

        let under_mnt = ReportFilter {
            include_cow: true,
            path_prefixes: vec!["/mnt".into()],
        };
        assert_eq!(build(&aggregate(), &under_mnt, ctx(&fs)).files.len(), 1);
        // A prefix matches whole components only.
        let partial = ReportFilter {
            path_prefixes: vec!["/mn".into()],
            ..ReportFilter::default()
        };
        assert!(build(&aggregate(), &partial, ctx(&fs)).files.is_empty());
    }

    #[test]
    fn table_lists_files_and_losses() {
        let fs = |_| None;
        let text = crate::trace::table::render_table(&build(
            &aggregate(),
            &ReportFilter::default(),
            ctx(&fs),
        ));
        assert!(text.contains("/mnt/f"), "{text}");
        assert!(text.contains("1-2,8"), "{text}");
        assert!(text.contains("py[5](root)@ctr:0123456789ab:3"), "{text}");
        assert!(text.contains("lost events 3"), "{text}");
    }
}
