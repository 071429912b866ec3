//! `mmapwatch export`: Prometheus metrics over HTTP (OpenMetrics text).
//!
//! Label cardinality is bounded: never a pid; `comm` and `cgroup` are
//! capped (the rest is `other`); per-file series exist only for the top N
//! files by pages written and files under `--path-prefix`, and everything
//! else is summed into `path="other"`.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use probe_common::LATENCY_BUCKETS;
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::signal::unix::SignalKind;

use crate::{
    aggregate::Aggregate,
    cli::ExportArgs,
    cli::KernelPaths,
    error::UserError,
    events::FileId,
    loader::{KernelCounters, WriterLabel},
    paths::MountTable,
    session::{canonical_prefix, Activity, Session, SessionOptions},
};

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

/// Every metric mmapwatch exports.
pub struct Metrics {
    pub write_faults: Family<WriterLabels, Counter>,
    pub cow_faults: Family<WriterLabels, Counter>,
    pub pages_first_written: Family<WriterLabels, Counter>,
    pub folios_dirtied: Family<FsLabels, Counter>,
    pub pages_dirtied: Family<FsLabels, Counter>,
    pub pages_written_back: Family<FsLabels, Counter>,
    pub lost_events: Family<ReasonLabels, Counter>,
    pub file_pages_written: Family<FileLabels, Gauge>,
    pub file_write_faults: Family<FileLabels, Gauge>,
    pub file_writeback_pages: Family<FileLabels, Gauge>,
    pub writeback_latency: Histogram,
    pub events: Counter,
    pub files_tracked: Gauge,
    pub ring_size_bytes: Gauge,
    pub ring_peak_used_bytes: Gauge,
    pub bpf_run_seconds: Family<ProgramLabels, Counter<f64>>,
    pub bpf_runs: Family<ProgramLabels, Counter>,
    pub backend: Family<BackendLabels, Gauge>,
}

/// Histogram buckets matching the kernel's log2 buckets: upper bounds
/// 2^k ns, from about 1 ms to about 69 s.
fn latency_bounds() -> impl Iterator<Item = f64> {
    (20..=36).map(|k| (1u64 << k) as f64 / 1e9)
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            write_faults: Family::default(),
            cow_faults: Family::default(),
            pages_first_written: Family::default(),
            folios_dirtied: Family::default(),
            pages_dirtied: Family::default(),
            pages_written_back: Family::default(),
            lost_events: Family::default(),
            file_pages_written: Family::default(),
            file_write_faults: Family::default(),
            file_writeback_pages: Family::default(),
            writeback_latency: Histogram::new(latency_bounds()),
            events: Counter::default(),
            files_tracked: Gauge::default(),
            ring_size_bytes: Gauge::default(),
            ring_peak_used_bytes: Gauge::default(),
            bpf_run_seconds: Family::default(),
            bpf_runs: Family::default(),
            backend: Family::default(),
        };
        let r = registry;
        r.register(
            "mmapwatch_write_faults",
            "Write faults through shared file mappings",
            metrics.write_faults.clone(),
        );
        r.register(
            "mmapwatch_cow_faults",
            "Write faults through private file mappings (copy-on-write)",
            metrics.cow_faults.clone(),
        );
        r.register(
            "mmapwatch_pages_first_written",
            "File pages written through shared mappings for the first time since mmapwatch started",
            metrics.pages_first_written.clone(),
        );
        r.register(
            "mmapwatch_folios_dirtied",
            "Clean-to-dirty folio transitions of files written through mmap",
            metrics.folios_dirtied.clone(),
        );
        r.register(
            "mmapwatch_pages_dirtied",
            "Pages in those folios",
            metrics.pages_dirtied.clone(),
        );
        r.register(
            "mmapwatch_pages_written_back",
            "Pages of files written through mmap that were written back",
            metrics.pages_written_back.clone(),
        );
        r.register(
            "mmapwatch_lost_events",
            "Events the kernel side could not report, by reason",
            metrics.lost_events.clone(),
        );
        r.register("mmapwatch_file_pages_written", "Distinct pages written through shared mappings, per file (top N and --path-prefix; the rest in path=\"other\")", metrics.file_pages_written.clone());
        r.register(
            "mmapwatch_file_write_faults",
            "Shared write faults per file (same files as mmapwatch_file_pages_written)",
            metrics.file_write_faults.clone(),
        );
        r.register(
            "mmapwatch_file_writeback_pages",
            "Pages written back per file (same files as mmapwatch_file_pages_written)",
            metrics.file_writeback_pages.clone(),
        );
        r.register(
            "mmapwatch_dirty_to_writeback_seconds",
            "Time from a file's first dirtying to the completion of the writeback that cleaned it",
            metrics.writeback_latency.clone(),
        );
        r.register(
            "mmapwatch_events",
            "Ring-buffer records processed",
            metrics.events.clone(),
        );
        r.register(
            "mmapwatch_files_tracked",
            "Files written through mmap since start",
            metrics.files_tracked.clone(),
        );
        r.register(
            "mmapwatch_ringbuf_size_bytes",
            "Size of the event ring buffer",
            metrics.ring_size_bytes.clone(),
        );
        r.register(
            "mmapwatch_ringbuf_peak_used_bytes",
            "Highest ring-buffer fill seen",
            metrics.ring_peak_used_bytes.clone(),
        );
        r.register(
            "mmapwatch_bpf_program_run_seconds",
            "Time spent in each BPF program (kernel.bpf_stats_enabled=1)",
            metrics.bpf_run_seconds.clone(),
        );
        r.register(
            "mmapwatch_bpf_program_runs",
            "Runs of each BPF program (kernel.bpf_stats_enabled=1)",
            metrics.bpf_runs.clone(),
        );
        r.register(
            "mmapwatch_backend",
            "The probe backend in use (value 1)",
            metrics.backend.clone(),
        );
        metrics
    }
}

/// Label resolution and the previous kernel totals, so that kernel
/// cumulative counts become counter increments.
pub struct Exporter {
    pub metrics: Metrics,
    per_file_top: usize,
    path_prefixes: Vec<PathBuf>,
    comms: LabelCap,
    cgroups_cap: LabelCap,
    cgroups: CgroupNames,
    mounts: MountTable,
    previous_writers: HashMap<WriterLabel, (u64, u64)>,
    previous_fs: HashMap<FsLabels, (u64, u64, u64)>,
    previous_lost: HashMap<&'static str, u64>,
    previous_latency: [u64; LATENCY_BUCKETS as usize],
    previous_programs: HashMap<String, (Duration, u64)>,
    previous_events: u64,
    file_series: HashSet<FileLabels>,
    /// Devices not in the mount table even after re-reading it (memfd files
    /// live on an internal mount mountinfo never lists): not re-read again.
    unmounted_devs: HashSet<u32>,
}

impl Exporter {
    pub fn new(
        metrics: Metrics,
        per_file_top: usize,
        path_prefixes: Vec<PathBuf>,
        mounts: MountTable,
    ) -> Self {
        Self {
            metrics,
            per_file_top,
            path_prefixes,
            comms: LabelCap::new(32),
            cgroups_cap: LabelCap::new(64),
            cgroups: CgroupNames::new(&mounts),
            mounts,
            previous_writers: HashMap::new(),
            previous_fs: HashMap::new(),
            previous_lost: HashMap::new(),
            previous_latency: [0; LATENCY_BUCKETS as usize],
            previous_programs: HashMap::new(),
            previous_events: 0,
            file_series: HashSet::new(),
            unmounted_devs: HashSet::new(),
        }
    }

    fn fs_labels(&mut self, file: FileId) -> FsLabels {
        // A mount made since start-up: re-read the table, once per device,
        // not on every refresh of every such file.
        if self.mounts.fs_type(file).is_none() && !self.unmounted_devs.contains(&file.dev) {
            self.mounts = MountTable::read();
            if self.mounts.fs_type(file).is_none() {
                self.unmounted_devs.insert(file.dev);
            }
        }
        let (fs, mount) = self
            .mounts
            .mount_of(file)
            .map(|m| (m.fs_type.clone(), m.mount_point.clone()))
            .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
        FsLabels { fs, mount }
    }

    fn writer_labels(&mut self, comm: &str, cgroup_id: u64, file: FileId) -> WriterLabels {
        let cgroup = self.cgroups.name(cgroup_id);
        let FsLabels { fs, mount } = self.fs_labels(file);
        WriterLabels {
            comm: self.comms.label(comm),
            cgroup: self.cgroups_cap.label(&cgroup),
            fs,
            mount,
        }
    }

    /// Pages newly written, from the collector's counts.
    pub fn add_page_counts(&mut self, counts: HashMap<(String, u64, FileId), u64>) {
        for ((comm, cgroup_id, file), pages) in counts {
            let labels = self.writer_labels(&comm, cgroup_id, file);
            self.metrics
                .pages_first_written
                .get_or_create(&labels)
                .inc_by(pages);
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
            let file = FileId {
                dev: label.dev,
                ino: 0,
                generation: 0,
            };
            let labels = self.writer_labels(&label.comm, label.cgroup_id, file);
            let shared = current.0.saturating_sub(previous.0);
            let cow = current.1.saturating_sub(previous.1);
            if shared > 0 {
                self.metrics
                    .write_faults
                    .get_or_create(&labels)
                    .inc_by(shared);
            }
            if cow > 0 {
                self.metrics.cow_faults.get_or_create(&labels).inc_by(cow);
            }
        }
    }

    /// Per-file series, per-filesystem sums and losses from the aggregate.
    pub fn update_files(&mut self, aggregate: &Aggregate) {
        let mut by_fs: HashMap<FsLabels, (u64, u64, u64)> = HashMap::new();
        let mut ranked: Vec<(FileId, u64)> = Vec::new();
        for (id, record) in aggregate.files() {
            let labels = self.fs_labels(*id);
            let sums = by_fs.entry(labels).or_default();
            sums.0 += record.kernel.folios_dirtied;
            sums.1 += record.kernel.pages_dirtied;
            sums.2 += record.kernel.writeback_pages;
            if record.modified() {
                ranked.push((*id, record.pages_written.len()));
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

        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut shown: HashSet<FileLabels> = HashSet::new();
        let mut other = (0i64, 0i64, 0i64);
        for (rank, (id, _)) in ranked.iter().enumerate() {
            let Some(record) = aggregate.file(id) else {
                continue;
            };
            let path = record.path.as_deref().map_or_else(
                || format!("<dev {} ino {}>", id.dev_string(), id.ino),
                |path| crate::names::json_text(path).into_owned(),
            );
            let under_prefix = self
                .path_prefixes
                .iter()
                .any(|p| Path::new(&path).starts_with(p));
            let values = (
                record.pages_written.len() as i64,
                record.write_faults() as i64,
                record.kernel.writeback_pages as i64,
            );
            if rank < self.per_file_top || under_prefix {
                let FsLabels { fs, mount } = self.fs_labels(*id);
                let labels = FileLabels { path, fs, mount };
                self.metrics
                    .file_pages_written
                    .get_or_create(&labels)
                    .set(values.0);
                self.metrics
                    .file_write_faults
                    .get_or_create(&labels)
                    .set(values.1);
                self.metrics
                    .file_writeback_pages
                    .get_or_create(&labels)
                    .set(values.2);
                shown.insert(labels);
            } else {
                other.0 += values.0;
                other.1 += values.1;
                other.2 += values.2;
            }
        }
        let other_labels = FileLabels {
            path: OTHER.into(),
            fs: OTHER.into(),
            mount: OTHER.into(),
        };
        self.metrics
            .file_pages_written
            .get_or_create(&other_labels)
            .set(other.0);
        self.metrics
            .file_write_faults
            .get_or_create(&other_labels)
            .set(other.1);
        self.metrics
            .file_writeback_pages
            .get_or_create(&other_labels)
            .set(other.2);
        shown.insert(other_labels);
        // Files that left the top N lose their series.
        for stale in self.file_series.difference(&shown) {
            self.metrics.file_pages_written.remove(stale);
            self.metrics.file_write_faults.remove(stale);
            self.metrics.file_writeback_pages.remove(stale);
        }
        self.file_series = shown;
        self.metrics.files_tracked.set(aggregate.len() as i64);
        let events = aggregate.events();
        self.metrics
            .events
            .inc_by(events.saturating_sub(self.previous_events));
        self.previous_events = events;
    }

    pub fn update_counters(
        &mut self,
        counters: &KernelCounters,
        undecodable: u64,
        ring_bytes: u32,
    ) {
        for (reason, total) in [
            ("ringbuf_full", counters.ringbuf_drops),
            ("vma_lookup_failed", counters.vma_lookup_failed),
            ("file_stats_full", counters.file_stats_full),
            ("writer_map_full", counters.writer_insert_failed),
            ("writer_stats_full", counters.writer_stats_full),
            ("undecodable_records", undecodable),
        ] {
            let previous = self.previous_lost.insert(reason, total).unwrap_or(0);
            self.metrics
                .lost_events
                .get_or_create(&ReasonLabels {
                    reason: reason.into(),
                })
                .inc_by(total.saturating_sub(previous));
        }
        self.metrics.ring_size_bytes.set(i64::from(ring_bytes));
        self.metrics
            .ring_peak_used_bytes
            .set(counters.ring_peak_bytes as i64);
    }

    /// Kernel log2 buckets into the histogram: a latency in [2^k, 2^(k+1))
    /// ns is observed just under 2^(k+1), so it lands in the bucket whose
    /// bound is 2^(k+1).
    pub fn update_latency(&mut self, buckets: &[u64; LATENCY_BUCKETS as usize]) {
        for (k, (&now, previous)) in buckets
            .iter()
            .zip(self.previous_latency.iter_mut())
            .enumerate()
        {
            let delta = now.saturating_sub(*previous);
            *previous = now;
            let upper_ns = if k + 1 >= 64 {
                u64::MAX
            } else {
                (1u64 << (k + 1)) - 1
            };
            for _ in 0..delta {
                self.metrics
                    .writeback_latency
                    .observe(upper_ns as f64 / 1e9);
            }
        }
    }

    pub fn update_programs(&mut self, stats: Vec<(String, Duration, u64)>) {
        for (program, run_time, runs) in stats {
            let (previous_time, previous_runs) = self
                .previous_programs
                .insert(program.clone(), (run_time, runs))
                .unwrap_or_default();
            let labels = ProgramLabels { program };
            self.metrics
                .bpf_run_seconds
                .get_or_create(&labels)
                .inc_by(run_time.saturating_sub(previous_time).as_secs_f64());
            self.metrics
                .bpf_runs
                .get_or_create(&labels)
                .inc_by(runs.saturating_sub(previous_runs));
        }
    }

    /// Everything that comes from the kernel maps, once per interval.
    pub fn refresh(&mut self, session: &mut Session) -> anyhow::Result<()> {
        let counters = session.refresh()?;
        if let Some(counts) = session.collector.page_counts.as_mut() {
            let counts = std::mem::take(counts);
            self.add_page_counts(counts);
        }
        self.add_writer_stats(session.probes().writer_stats()?);
        self.update_files(&session.collector.aggregate);
        self.update_counters(
            &counters,
            session.collector.undecodable,
            session.probes().ring_bytes,
        );
        self.update_latency(&session.probes().writeback_latency()?);
        if bpf_stats_enabled() {
            self.update_programs(session.probes().program_stats());
        }
        Ok(())
    }
}

fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1")
}

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    encode(&mut body, registry)?;
    Ok(body)
}

fn router(registry: Arc<Registry>) -> axum::Router {
    use axum::{http::header, response::IntoResponse, routing::get};
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    match render(&registry) {
                        Ok(body) => ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
                        Err(_) => (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            "encoding failed",
                        )
                            .into_response(),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Runs `export` until SIGINT or SIGTERM.
pub async fn run(kernel: &KernelPaths, args: ExportArgs) -> anyhow::Result<u8> {
    // Bind first: a port in use fails before anything is loaded.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::AddrInUse => {
                anyhow::Error::new(UserError::AddressInUse(args.listen))
            }
            _ => anyhow::Error::new(err).context(format!("listening on {}", args.listen)),
        })?;
    let local: SocketAddr = listener.local_addr()?;
    let options = SessionOptions {
        kernel: kernel.clone(),
        filter: args.filter.clone(),
        // COW faults are counted per writer in the kernel; their pages need
        // not cross the ring buffer.
        include_cow: false,
        command: Vec::new(),
    };
    let mut session = Session::start(&options)?;
    session.collector.page_counts = Some(HashMap::new());

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    metrics
        .backend
        .get_or_create(&BackendLabels {
            backend: session.backend().into(),
        })
        .set(1);
    let prefixes = args
        .filter
        .path_prefixes
        .iter()
        .map(|p| canonical_prefix(p))
        .collect();
    let mut exporter = Exporter::new(
        metrics,
        args.per_file_top,
        prefixes,
        session.collector.mounts().clone(),
    );
    exporter.refresh(&mut session)?;
    let registry = Arc::new(registry);
    // The server runs on its own task; it ends only with the process.
    let mut server = tokio::spawn(async move { axum::serve(listener, router(registry)).await });
    eprintln!(
        "mmapwatch: serving metrics on http://{local}/metrics ({} programs attached in {} ms)",
        session.attached_programs(),
        session.attach_time().as_millis()
    );

    let mut sigint =
        tokio::signal::unix::signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm =
        tokio::signal::unix::signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            activity = session.next_activity() => { let _: Activity = activity.context("tracing")?; }
            _ = tick.tick() => exporter.refresh(&mut session)?,
            served = &mut server => {
                served.context("metrics server task")?.context("metrics server")?;
                break;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    Ok(0)
}

/// A deterministic snapshot for tests and docs: no kernel involved.
pub fn sorted_series(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, Task, WriteKind};

    const MOUNTINFO: &str =
        "22 1 254:1 / / rw - ext4 /dev/vda1 rw\n30 22 0:25 / /dev/shm rw - tmpfs tmpfs rw\n";

    fn exporter(top: usize, prefixes: Vec<PathBuf>) -> (Registry, Exporter) {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let exporter = Exporter::new(metrics, top, prefixes, MountTable::parse(MOUNTINFO));
        (registry, exporter)
    }

    fn write(agg: &mut Aggregate, dev: u32, ino: u64, page: u64, path: &str) {
        let file = FileId {
            dev,
            ino,
            generation: 0,
        };
        agg.apply(&Event::FirstWrite {
            file,
            page,
            kind: WriteKind::Shared,
            task: Task {
                pid: 1,
                tgid: 1,
                comm: "db".into(),
                cgroup_id: 1,
            },
            boot_ns: 1,
        });
        agg.set_path(file, path.into(), crate::aggregate::PathSource::ProcMaps);
    }

    /// The shipped Grafana dashboard queries only metrics that exist.
    #[test]
    fn dashboard_queries_only_exported_metrics() {
        let (registry, mut exporter) = exporter(1, vec![]);
        // Families without series print nothing: give each one.
        let mut buckets = [0u64; LATENCY_BUCKETS as usize];
        buckets[25] = 1;
        exporter.update_latency(&buckets);
        exporter.update_programs(vec![(
            "page_fault_user".into(),
            Duration::from_millis(3),
            10,
        )]);
        exporter.update_counters(&KernelCounters::default(), 0, 1 << 20);
        exporter
            .metrics
            .backend
            .get_or_create(&BackendLabels {
                backend: "tracepoint".into(),
            })
            .set(1);
        let label = WriterLabel {
            cgroup_id: 1,
            dev: 25,
            comm: "db".into(),
        };
        exporter.add_writer_stats(vec![(
            label,
            probe_common::WriterStats {
                shared_write_faults: 1,
                cow_faults: 1,
            },
        )]);
        let mut counts = HashMap::new();
        counts.insert(
            (
                "db".to_string(),
                1,
                FileId {
                    dev: 25,
                    ino: 1,
                    generation: 0,
                },
            ),
            1,
        );
        exporter.add_page_counts(counts);
        let mut agg = Aggregate::new();
        write(&mut agg, 25, 1, 0, "/dev/shm/x");
        exporter.update_files(&agg);
        let body = render(&registry).unwrap();
        let exported: HashSet<&str> = body
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let dashboard = include_str!("../../deploy/grafana-dashboard.json");
        let mut referenced = 0;
        for (start, _) in dashboard.match_indices("mmapwatch_") {
            let name: String = dashboard[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Series suffixes of counters and histograms.
            let family = ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            if family == "mmapwatch_" {
                continue;
            }
            assert!(
                exported.contains(family),
                "dashboard uses {name}, not exported"
            );
            referenced += 1;
        }
        assert!(referenced >= 9, "{referenced}");
    }

    #[test]
    fn unmounted_devices_are_labelled_unknown() {
        let (registry, mut exporter) = exporter(10, vec![]);
        let mut counts = HashMap::new();
        // Device 0:1 (an internal mount, as memfd's) is in no mountinfo.
        counts.insert(
            (
                "db".to_string(),
                1,
                FileId {
                    dev: 1,
                    ino: 9,
                    generation: 0,
                },
            ),
            3,
        );
        exporter.add_page_counts(counts.clone());
        exporter.add_page_counts(counts);
        assert!(exporter.unmounted_devs.contains(&1));
        let series = sorted_series(&render(&registry).unwrap());
        assert_eq!(
            series[r#"mmapwatch_pages_first_written_total{comm="db",cgroup="id:1",fs="unknown",mount="unknown"}"#],
            6.0
        );
    }

    #[test]
    fn label_cap_admits_then_folds_into_other() {
        let mut cap = LabelCap::new(2);
        assert_eq!(cap.label("a"), "a");
        assert_eq!(cap.label("b"), "b");
        assert_eq!(cap.label("c"), OTHER);
        assert_eq!(cap.label("a"), "a");
    }

    #[test]
    fn page_counts_become_labelled_counters() {
        let (registry, mut exporter) = exporter(10, vec![]);
        let mut counts = HashMap::new();
        counts.insert(
            (
                "postgres".to_string(),
                999_999_999,
                FileId {
                    dev: (254 << 20) | 1,
                    ino: 5,
                    generation: 0,
                },
            ),
            7,
        );
        counts.insert(
            (
                "redis".to_string(),
                999_999_999,
                FileId {
                    dev: 25,
                    ino: 6,
                    generation: 0,
                },
            ),
            2,
        );
        exporter.add_page_counts(counts);
        let series = sorted_series(&render(&registry).unwrap());
        assert_eq!(
            series[r#"mmapwatch_pages_first_written_total{comm="postgres",cgroup="id:999999999",fs="ext4",mount="/"}"#],
            7.0
        );
        assert_eq!(
            series[r#"mmapwatch_pages_first_written_total{comm="redis",cgroup="id:999999999",fs="tmpfs",mount="/dev/shm"}"#],
            2.0
        );
    }

    #[test]
    fn kernel_totals_become_increments() {
        let (registry, mut exporter) = exporter(10, vec![]);
        let label = WriterLabel {
            cgroup_id: 424_242,
            dev: 25,
            comm: "db".into(),
        };
        let stats = |shared, cow| probe_common::WriterStats {
            shared_write_faults: shared,
            cow_faults: cow,
        };
        exporter.add_writer_stats(vec![(label.clone(), stats(5, 1))]);
        exporter.add_writer_stats(vec![(label, stats(8, 1))]);
        let series = sorted_series(&render(&registry).unwrap());
        let key = r#"{comm="db",cgroup="id:424242",fs="tmpfs",mount="/dev/shm"}"#;
        assert_eq!(series[&format!("mmapwatch_write_faults_total{key}")], 8.0);
        assert_eq!(series[&format!("mmapwatch_cow_faults_total{key}")], 1.0);
    }

    #[test]
    fn per_file_series_are_bounded_to_top_n_and_prefixes() {
        let (registry, mut exporter) = exporter(1, vec![PathBuf::from("/srv")]);
        let mut agg = Aggregate::new();
        for page in 0..5 {
            write(&mut agg, (254 << 20) | 1, 1, page, "/big");
        }
        write(&mut agg, (254 << 20) | 1, 2, 0, "/srv/watched");
        write(&mut agg, (254 << 20) | 1, 3, 0, "/small-a");
        write(&mut agg, (254 << 20) | 1, 3, 1, "/small-a");
        write(&mut agg, (254 << 20) | 1, 4, 0, "/small-b");
        exporter.update_files(&agg);
        let series = sorted_series(&render(&registry).unwrap());
        let pages: BTreeMap<_, _> = series
            .iter()
            .filter(|(k, _)| k.starts_with("mmapwatch_file_pages_written{"))
            .collect();
        assert_eq!(pages.len(), 3, "{pages:?}");
        assert_eq!(
            series[r#"mmapwatch_file_pages_written{path="/big",fs="ext4",mount="/"}"#],
            5.0
        );
        assert_eq!(
            series[r#"mmapwatch_file_pages_written{path="/srv/watched",fs="ext4",mount="/"}"#],
            1.0
        );
        assert_eq!(
            series[r#"mmapwatch_file_pages_written{path="other",fs="other",mount="other"}"#],
            3.0
        );
        assert_eq!(series["mmapwatch_files_tracked"], 4.0);
    }

    #[test]
    fn latency_buckets_map_onto_histogram_bounds() {
        let (registry, mut exporter) = exporter(1, vec![]);
        let mut buckets = [0u64; LATENCY_BUCKETS as usize];
        buckets[20] = 2; // [1.05 ms, 2.1 ms)
        buckets[30] = 1; // [1.07 s, 2.1 s)
        exporter.update_latency(&buckets);
        exporter.update_latency(&buckets); // no change: no new observation
        let series = sorted_series(&render(&registry).unwrap());
        assert_eq!(series["mmapwatch_dirty_to_writeback_seconds_count"], 3.0);
        assert_eq!(
            series[r#"mmapwatch_dirty_to_writeback_seconds_bucket{le="0.001048576"}"#],
            0.0
        );
        assert_eq!(
            series[r#"mmapwatch_dirty_to_writeback_seconds_bucket{le="0.002097152"}"#],
            2.0
        );
        assert_eq!(
            series[r#"mmapwatch_dirty_to_writeback_seconds_bucket{le="2.147483648"}"#],
            3.0
        );
    }

    #[test]
    fn losses_are_counted_by_reason() {
        let (registry, mut exporter) = exporter(1, vec![]);
        let counters = KernelCounters {
            ringbuf_drops: 4,
            ring_peak_bytes: 4096,
            ..KernelCounters::default()
        };
        exporter.update_counters(&counters, 1, 1 << 20);
        let body = render(&registry).unwrap();
        let series = sorted_series(&body);
        assert_eq!(
            series[r#"mmapwatch_lost_events_total{reason="ringbuf_full"}"#],
            4.0
        );
        assert_eq!(
            series[r#"mmapwatch_lost_events_total{reason="undecodable_records"}"#],
            1.0
        );
        assert_eq!(series["mmapwatch_ringbuf_peak_used_bytes"], 4096.0);
        assert!(body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    }
}
