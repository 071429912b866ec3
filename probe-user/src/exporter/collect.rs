//! From the session's aggregate and the kernel's per-writer counts to
//! metric values: label resolution, per-file series, and per-writer totals
//! turned into counter increments (a label can stand for many writers, or
//! move to `other`, so these cannot be read at scrape time as the totals
//! in `scrape` are).

use std::{
    cell::RefCell,
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
    path::PathBuf,
    rc::Rc,
    sync::PoisonError,
    time::Instant,
};

use super::{
    admission::{LabelPins, WriterLabeler},
    labels::*,
    metrics::*,
    scrape::{SessionTotals, SharedSessionTotals},
    syncs::{SyncSeen, SyncTap},
};
use crate::{
    model::{
        aggregate::{Aggregate, Applied, FileCounts},
        events::{Event, FileId, WriteKind},
        file_record::FileRecord,
        names::{hex_if_not_utf8, json_text},
        paths::MountTable,
    },
    probe::maps::{KernelCounters, WriterLabel},
    session::{user_name, CgroupNames, EventObserver, Session},
};

/// Label resolution and the previous kernel totals, so that kernel
/// cumulative counts become counter increments.
pub struct Exporter {
    pub metrics: Metrics,
    per_file_top: usize,
    path_prefixes: Vec<PathBuf>,
    /// Shared and COW writers are admitted to labels apart.
    shared_writers: WriterLabeler,
    cow_writers: WriterLabeler,
    cgroups: CgroupNames,
    mounts: MountTable,
    previous_writers: HashMap<WriterLabel, (u64, u64)>,
    previous_fs: HashMap<FsLabels, (u64, u64, u64)>,
    file_series: HashSet<FileLabels>,
    /// Each shown file's write faults and pages written back at the last
    /// refresh: its counters move by the difference.
    previous_file_counts: HashMap<FileId, FileCounts>,
    /// All files' counts at the last refresh: "other" moves by the growth.
    previous_counts_ever: FileCounts,
    /// Devices not in the mount table even after re-reading it (memfd files
    /// live on an internal mount mountinfo never lists): not re-read again.
    pub(super) unmounted_devs: HashSet<u32>,
    /// Pages newly written since the last refresh, tapped from the
    /// session's event stream.
    new_pages: NewPages,
    /// Sync calls since the last refresh, tapped likewise.
    syncs: SyncTap,
    /// The session's totals for the scrape-time collector.
    session_totals: SharedSessionTotals,
}

/// The `n` files with the most pages written (the lowest id on ties),
/// without sorting them all.
struct TopFiles {
    n: usize,
    /// A min-heap: the weakest kept file on top.
    heap: BinaryHeap<Reverse<(u64, Reverse<FileId>)>>,
}

impl TopFiles {
    fn new(n: usize) -> Self {
        Self {
            n,
            heap: BinaryHeap::with_capacity(n + 1),
        }
    }

    fn offer(&mut self, id: FileId, pages: u64) {
        if self.n == 0 {
            return;
        }
        self.heap.push(Reverse((pages, Reverse(id))));
        if self.heap.len() > self.n {
            self.heap.pop();
        }
    }

    /// The most pages first.
    fn into_files(self) -> Vec<FileId> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse((_, Reverse(id)))| id)
            .collect()
    }
}

/// Pages newly written per (comm, cgroup id, device, effective uid), summed as the session
/// applies events, until taken at a refresh. Keyed by device, not file: the
/// labels name only the filesystem, and a burst of new files between two
/// refreshes would otherwise hold an entry each.
#[derive(Clone, Default)]
pub struct NewPages(Rc<RefCell<PageCounts>>);

/// (comm, cgroup id, device, effective uid) -> pages.
pub type PageCounts = HashMap<(String, u64, u32, u32), u64>;

impl NewPages {
    fn take(&self) -> PageCounts {
        std::mem::take(&mut self.0.borrow_mut())
    }
}

impl EventObserver for NewPages {
    fn observe(&mut self, event: &Event, applied: &Applied, _file: Option<&FileRecord>) {
        let (Some(task), Some(file)) = (event.writer(), event.file()) else {
            return;
        };
        if applied.new_pages > 0 {
            *self
                .0
                .borrow_mut()
                .entry((task.comm.clone(), task.cgroup_id, file.dev, task.ids.euid))
                .or_default() += applied.new_pages;
        }
    }
}

impl Exporter {
    pub fn new(
        metrics: Metrics,
        per_file_top: usize,
        path_prefixes: Vec<PathBuf>,
        mounts: MountTable,
        pins: &LabelPins,
    ) -> Self {
        Self {
            metrics,
            per_file_top,
            path_prefixes,
            shared_writers: pins.labeler(),
            cow_writers: pins.labeler(),
            cgroups: CgroupNames::new(&mounts),
            mounts,
            previous_writers: HashMap::new(),
            previous_fs: HashMap::new(),
            file_series: HashSet::new(),
            previous_file_counts: HashMap::new(),
            previous_counts_ever: FileCounts::default(),
            unmounted_devs: HashSet::new(),
            new_pages: NewPages::default(),
            syncs: SyncTap::default(),
            session_totals: SharedSessionTotals::default(),
        }
    }

    /// What the export loop sets for the scrape-time collector.
    pub fn session_totals(&self) -> SharedSessionTotals {
        self.session_totals.clone()
    }

    /// Counts the session's newly written pages from now on.
    pub fn watch(&self, session: &mut Session) {
        session.collector.observe(Box::new(self.new_pages.clone()));
        session.collector.observe(Box::new(self.syncs.clone()));
    }

    fn fs_labels(&mut self, dev: u32) -> FsLabels {
        // A mount made since start-up: re-read the table, once per device,
        // not on every refresh of every such file.
        if self.mounts.fs_type_of_device(dev).is_none() && !self.unmounted_devs.contains(&dev) {
            self.mounts = MountTable::read();
            if self.mounts.fs_type_of_device(dev).is_none() {
                self.unmounted_devs.insert(dev);
            }
        }
        let (fs, mount) = self
            .mounts
            .mount_of_device(dev)
            .map(|m| (m.fs_type.clone(), json_text(&m.mount_point).into_owned()))
            .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
        FsLabels { fs, mount }
    }

    /// Labels for a writer active now; an idle value it displaced loses
    /// its series.
    fn writer_labels(
        &mut self,
        kind: WriteKind,
        comm: &str,
        cgroup_id: u64,
        dev: u32,
        euid: u32,
    ) -> WriterLabels {
        let cgroup = self.cgroups.name(cgroup_id);
        let FsLabels { fs, mount } = self.fs_labels(dev);
        let user = user_name(euid).map_or_else(|| euid.to_string(), |name| name.to_string());
        let labeler = match kind {
            WriteKind::Shared => &mut self.shared_writers,
            WriteKind::Cow => &mut self.cow_writers,
        };
        let labelled = labeler.label((comm, &cgroup, &user), fs, mount, Instant::now());
        for stale in &labelled.stale {
            match kind {
                WriteKind::Shared => {
                    self.metrics.write_faults.remove(stale);
                    self.metrics.pages_first_written.remove(stale);
                }
                WriteKind::Cow => {
                    self.metrics.cow_faults.remove(stale);
                }
            }
        }
        labelled.labels
    }

    /// Pages newly written, from the collector's counts.
    pub fn add_page_counts(&mut self, counts: PageCounts) {
        for ((comm, cgroup_id, dev, euid), pages) in counts {
            let labels = self.writer_labels(WriteKind::Shared, &comm, cgroup_id, dev, euid);
            self.metrics
                .pages_first_written
                .get_or_create(&labels)
                .inc_by(pages);
        }
    }

    /// Sync calls into counters and the latency histogram.
    pub fn add_syncs(&mut self, syncs: Vec<SyncSeen>) {
        for sync in syncs {
            let FsLabels { fs, mount } = self.fs_labels(sync.file.dev);
            let labels = SyncLabels {
                call: sync.call.name().into(),
                fs,
                mount,
            };
            self.metrics.sync_calls.get_or_create(&labels).inc();
            if sync.failed {
                self.metrics.sync_errors.get_or_create(&labels).inc();
            }
            self.metrics
                .sync_seconds
                .get_or_create(&CallLabels {
                    call: sync.call.name().into(),
                })
                .observe(sync.latency_ns as f64 / 1e9);
        }
    }

    /// Per-writer kernel fault counts (cumulative) into counter increments.
    pub fn add_writer_stats(&mut self, stats: Vec<(WriterLabel, probe_common::WriterStats)>) {
        for (label, totals) in stats {
            // Never back: a read can miss a CPU's run of faults for an
            // instant (see Probes::writer_stats).
            let previous = self.previous_writers.get(&label).copied().unwrap_or((0, 0));
            let current = (
                totals.shared_write_faults.max(previous.0),
                totals.cow_faults.max(previous.1),
            );
            self.previous_writers.insert(label.clone(), current);
            // Labelled only when active: an idle writer's cumulative
            // totals must not keep its label slot.
            let shared = current.0.saturating_sub(previous.0);
            let cow = current.1.saturating_sub(previous.1);
            if shared > 0 {
                let labels = self.writer_labels(
                    WriteKind::Shared,
                    &label.comm,
                    label.cgroup_id,
                    label.dev,
                    label.euid,
                );
                self.metrics
                    .write_faults
                    .get_or_create(&labels)
                    .inc_by(shared);
            }
            if cow > 0 {
                let labels = self.writer_labels(
                    WriteKind::Cow,
                    &label.comm,
                    label.cgroup_id,
                    label.dev,
                    label.euid,
                );
                self.metrics.cow_faults.get_or_create(&labels).inc_by(cow);
            }
        }
    }

    /// A per-file series (or path="other"): its pages written now, and its
    /// counters moved by what happened since the last refresh.
    fn add_file_series(&self, labels: &FileLabels, pages: i64, deltas: FileCounts) {
        self.metrics
            .file_pages_written
            .get_or_create(labels)
            .set(pages);
        self.metrics
            .file_write_faults
            .get_or_create(labels)
            .inc_by(deltas.write_faults);
        self.metrics
            .file_writeback_pages
            .get_or_create(labels)
            .inc_by(deltas.writeback_pages);
    }

    /// Whether a file is under one of the `--path-prefix` paths (its name's
    /// exact bytes).
    fn under_prefix(&self, record: &FileRecord) -> bool {
        record
            .path
            .as_deref()
            .is_some_and(|path| self.path_prefixes.iter().any(|p| path.starts_with(p)))
    }

    /// Per-file series, per-filesystem sums and losses from the aggregate;
    /// `not_on_disk` asks the page cache about a shown file.
    pub fn update_files(
        &mut self,
        aggregate: &Aggregate,
        not_on_disk: &dyn Fn(FileId, &FileRecord) -> Option<u64>,
    ) {
        let mut by_fs: HashMap<FsLabels, (u64, u64, u64)> = HashMap::new();
        // The top N by pages written, then every file under a prefix: only
        // these are visited again, so a host with many files costs one pass.
        let mut top = TopFiles::new(self.per_file_top);
        let mut prefixed: Vec<FileId> = Vec::new();
        let mut pages_written = 0u64;
        for (id, record) in aggregate.files() {
            let labels = self.fs_labels(id.dev);
            let sums = by_fs.entry(labels).or_default();
            sums.0 += record.kernel.folios_dirtied;
            sums.1 += record.kernel.pages_dirtied;
            sums.2 += record.kernel.writeback_pages;
            if !record.modified() {
                continue;
            }
            pages_written += record.pages_written.len();
            if self.under_prefix(record) {
                prefixed.push(*id);
            } else {
                top.offer(*id, record.pages_written.len());
            }
        }
        for (labels, current) in by_fs {
            let previous = self
                .previous_fs
                .insert(labels.clone(), current)
                .unwrap_or_default();
            let deltas = [
                (
                    &self.metrics.folios_dirtied,
                    current.0.saturating_sub(previous.0),
                ),
                (
                    &self.metrics.pages_dirtied,
                    current.1.saturating_sub(previous.1),
                ),
                (
                    &self.metrics.pages_written_back,
                    current.2.saturating_sub(previous.2),
                ),
            ];
            for (family, delta) in deltas {
                // Create the series even at zero, so rate() sees its start.
                family.get_or_create(&labels).inc_by(delta);
            }
        }

        let other_labels = FileLabels {
            path: OTHER.into(),
            fs: OTHER.into(),
            mount: OTHER.into(),
            path_bytes: PathBytesHex::default(),
        };
        // Counters move by what a file did since the last refresh: in its
        // own series while it is shown (from the refresh that first shows
        // it), in path="other" otherwise, so sum(rate(...)) is exact whoever
        // is in the top N. Only shown files' counts are remembered: "other"
        // moves by all files' growth (forgotten ones included) less theirs.
        let counts_ever = aggregate.counts_ever();
        let mut other_counts = counts_ever.since(self.previous_counts_ever);
        self.previous_counts_ever = counts_ever;
        let mut shown: HashSet<FileLabels> = HashSet::new();
        let mut shown_counts: HashMap<FileId, FileCounts> = HashMap::new();
        let mut other_pages = pages_written;
        for id in top.into_files().into_iter().chain(prefixed) {
            let Some(record) = aggregate.file(&id) else {
                continue;
            };
            let counts = FileCounts::of(record);
            let before = self
                .previous_file_counts
                .get(&id)
                .copied()
                .unwrap_or(counts);
            let deltas = counts.since(before);
            other_counts = other_counts.since(deltas);
            other_pages -= record.pages_written.len();
            shown_counts.insert(id, counts);
            let FsLabels { fs, mount } = self.fs_labels(id.dev);
            let path_bytes = PathBytesHex(record.path.as_deref().and_then(hex_if_not_utf8));
            let labels = FileLabels {
                path: record.display_path(&id),
                fs,
                mount,
                path_bytes,
            };
            self.add_file_series(&labels, record.pages_written.len() as i64, deltas);
            match not_on_disk(id, record) {
                Some(pages) => {
                    self.metrics
                        .file_pages_not_on_disk
                        .get_or_create(&labels)
                        .set(pages as i64);
                }
                None => {
                    self.metrics.file_pages_not_on_disk.remove(&labels);
                }
            }
            shown.insert(labels);
        }
        self.previous_file_counts = shown_counts;
        let other_pages = i64::try_from(other_pages).unwrap_or(i64::MAX);
        self.add_file_series(&other_labels, other_pages, other_counts);
        shown.insert(other_labels);
        // Files that left the top N lose their series.
        for stale in self.file_series.difference(&shown) {
            self.metrics.file_pages_written.remove(stale);
            self.metrics.file_write_faults.remove(stale);
            self.metrics.file_writeback_pages.remove(stale);
            self.metrics.file_pages_not_on_disk.remove(stale);
        }
        self.file_series = shown;
    }

    /// The session's totals, for the next scrapes.
    pub fn set_session_totals(
        &self,
        counters: &KernelCounters,
        aggregate: &Aggregate,
        undecodable: u64,
    ) {
        let totals = SessionTotals {
            files_handed_over: counters.files_handed_over,
            dirty_files_handed_over: counters.dirty_files_handed_over,
            files_forgotten: counters.files_forgotten,
            kernel_file_entries: counters.file_entries,
            undecodable_records: undecodable,
            events: aggregate.events(),
            files_tracked: aggregate.len() as u64,
        };
        *self
            .session_totals
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = totals;
    }

    /// Everything that comes from the kernel maps, once per interval.
    pub fn refresh(&mut self, session: &mut Session) -> anyhow::Result<()> {
        let counters = session.refresh()?;
        let counts = self.new_pages.take();
        self.add_page_counts(counts);
        let syncs = self.syncs.take();
        self.add_syncs(syncs);
        self.add_writer_stats(session.writer_stats()?);
        // The ring fills while the steps run; reading it between them keeps
        // records from finding it full.
        session.drain_now();
        let collector = &session.collector;
        self.update_files(&collector.aggregate, &|id, record| {
            collector.pages_not_on_disk(id, record).ok()
        });
        session.drain_now();
        self.set_session_totals(
            &counters,
            &session.collector.aggregate,
            session.collector.undecodable,
        );
        Ok(())
    }
}
