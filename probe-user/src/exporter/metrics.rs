//! The metric families the export loop updates, their registry and the
//! OpenMetrics rendering (`scrape` adds those read at scrape time).

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::labels::*;

/// Every metric mmapwatch exports.
pub struct Metrics {
    pub write_faults: Family<WriterLabels, Counter>,
    pub cow_faults: Family<WriterLabels, Counter>,
    pub pages_first_written: Family<WriterLabels, Counter>,
    pub folios_dirtied: Family<FsLabels, Counter>,
    pub pages_dirtied: Family<FsLabels, Counter>,
    pub pages_written_back: Family<FsLabels, Counter>,
    pub file_pages_written: Family<FileLabels, Gauge>,
    pub file_write_faults: Family<FileLabels, Counter>,
    pub file_writeback_pages: Family<FileLabels, Counter>,
    pub file_pages_not_on_disk: Family<FileLabels, Gauge>,
    pub backend: Family<BackendLabels, Gauge>,
    pub build_info: Family<BuildLabels, Gauge>,
    pub sync_calls: Family<SyncLabels, Counter>,
    pub sync_errors: Family<SyncLabels, Counter>,
    pub sync_seconds: Family<CallLabels, Histogram, fn() -> Histogram>,
}

/// msync/fsync latency buckets: 10 µs to about 10 s, by fours.
fn sync_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1e-5, 4.0, 11,
    ))
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
            file_pages_written: Family::default(),
            file_write_faults: Family::default(),
            file_writeback_pages: Family::default(),
            file_pages_not_on_disk: Family::default(),
            backend: Family::default(),
            build_info: Family::default(),
            sync_calls: Family::default(),
            sync_errors: Family::default(),
            sync_seconds: Family::new_with_constructor(sync_histogram),
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
        r.register("mmapwatch_file_pages_written", "Distinct pages written through shared mappings, per file (top N and --path-prefix; the rest in path=\"other\")", metrics.file_pages_written.clone());
        r.register(
            "mmapwatch_file_write_faults",
            "Shared write faults per file since it entered the top N (same files as mmapwatch_file_pages_written; the others' faults count under path=\"other\")",
            metrics.file_write_faults.clone(),
        );
        r.register(
            "mmapwatch_file_writeback_pages",
            "Pages written back per file since it entered the top N (as mmapwatch_file_write_faults_total)",
            metrics.file_writeback_pages.clone(),
        );
        r.register(
            "mmapwatch_file_pages_not_on_disk",
            "Pages written through mmap not on disk yet (dirty or under writeback), per shown file, as the page cache counts them (cachestat, Linux 6.5+; no series where it cannot tell)",
            metrics.file_pages_not_on_disk.clone(),
        );
        r.register(
            "mmapwatch_sync_calls",
            "msync, fsync, fdatasync and sync_file_range calls on files written through mmap",
            metrics.sync_calls.clone(),
        );
        r.register(
            "mmapwatch_sync_errors",
            "Of those, calls that failed (an EIO from fsync is a lost write)",
            metrics.sync_errors.clone(),
        );
        r.register(
            "mmapwatch_sync_seconds",
            "How long those calls took",
            metrics.sync_seconds.clone(),
        );
        r.register(
            "mmapwatch_backend",
            "The probe backend in use (value 1)",
            metrics.backend.clone(),
        );
        r.register(
            "mmapwatch_build_info",
            "The running build: version, git revision and probe backend (value 1)",
            metrics.build_info.clone(),
        );
        metrics
    }
}

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    encode(&mut body, registry)?;
    Ok(body)
}
