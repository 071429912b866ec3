//! Values read when `/metrics` is scraped, through prometheus-client's
//! collector API: the kernel's counters, latency histogram and per-program
//! run time straight from its maps, and the session's own totals (files
//! handed over, forgotten, tracked; records read) as the export loop last
//! set them. Nothing here is replayed as increments into registered
//! counters, so a scraped counter is the kernel's count at that moment.
//!
//! Per-writer and per-file series stay in `collect`: their labels are
//! admitted by activity and fold many values into `other`, which only the
//! export loop can decide.

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeCounterValue, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use super::{
    kernel_histogram::KernelHistogram,
    labels::{ProgramLabels, ReasonLabels},
};
use crate::probe::{
    maps::{KernelCounters, LatencyTotals},
    totals::{KernelTotalsReader, ProgramStats},
    LoadError,
};

/// What the session keeps in userspace, set by the export loop at each
/// refresh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionTotals {
    pub files_handed_over: u64,
    pub dirty_files_handed_over: u64,
    pub files_forgotten: u64,
    pub kernel_file_entries: u64,
    pub undecodable_records: u64,
    pub events: u64,
    pub files_tracked: u64,
}

/// Shared between the export loop (writer) and the scrape (reader).
pub type SharedSessionTotals = Arc<Mutex<SessionTotals>>;

/// Everything one scrape encodes.
#[derive(Clone, Debug)]
pub struct Totals {
    pub kernel: KernelCounters,
    pub session: SessionTotals,
    pub ring_bytes: u32,
    pub latency: LatencyTotals,
    pub programs: ProgramStats,
}

/// Where a scrape's totals come from: the kernel in `export`, fixed
/// values in unit tests.
pub trait TotalsSource: fmt::Debug + Send + Sync + 'static {
    fn read(&self) -> Result<Totals, LoadError>;
}

/// The running session's totals.
#[derive(Debug)]
pub struct LiveTotals {
    pub kernel: KernelTotalsReader,
    pub session: SharedSessionTotals,
    pub ring_bytes: u32,
}

impl TotalsSource for LiveTotals {
    fn read(&self) -> Result<Totals, LoadError> {
        Ok(Totals {
            kernel: self.kernel.counters()?,
            session: *self.session.lock().unwrap_or_else(PoisonError::into_inner),
            ring_bytes: self.ring_bytes,
            latency: self.kernel.writeback_latency()?,
            programs: self.kernel.program_stats(),
        })
    }
}

/// Registered with the registry; reads its source on every scrape.
#[derive(Debug)]
pub struct ScrapeCollector(pub Box<dyn TotalsSource>);

impl Collector for ScrapeCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // A map that cannot be read fails the scrape (HTTP 500): the
        // target shows as down rather than with stale numbers.
        let totals = self.0.read().map_err(|err| {
            log::warn!("reading the kernel's totals for a scrape: {err}");
            fmt::Error
        })?;
        encode_totals(&totals, encoder)
    }
}

/// The loss reasons, as `mmapwatch_lost_events_total{reason}` names them:
/// the kernel counters declared as metric reasons, and records userspace
/// could not decode.
fn losses(totals: &Totals) -> impl Iterator<Item = (&'static str, u64)> + '_ {
    totals
        .kernel
        .kernel
        .iter()
        .filter(|(counter, _)| counter.role.is_metric_reason())
        .map(|(counter, total)| (counter.name, total))
        .chain([("undecodable_records", totals.session.undecodable_records)])
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), fmt::Error> {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A counter family, one series per label set.
fn counter_family<L: EncodeLabelSet, N: EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, N)>,
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn encode_totals(totals: &Totals, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
    let session = &totals.session;
    counter_family(
        &mut encoder,
        "mmapwatch_lost_events",
        "Events the kernel side could not report, by reason",
        losses(totals).map(|(reason, total)| {
            let labels = ReasonLabels {
                reason: reason.into(),
            };
            (labels, total)
        }),
    )?;
    let histogram = KernelHistogram::from(&totals.latency);
    histogram.encode(encoder.encode_descriptor(
        "mmapwatch_dirty_to_writeback_seconds",
        "Time from a file's first dirtying to the completion of the writeback that cleaned it",
        None,
        histogram.metric_type(),
    )?)?;
    counter(
        &mut encoder,
        "mmapwatch_events",
        "Ring-buffer records processed",
        session.events,
    )?;
    gauge(
        &mut encoder,
        "mmapwatch_files_tracked",
        "Files written through mmap and not forgotten (--retain)",
        session.files_tracked,
    )?;
    counter(
        &mut encoder,
        "mmapwatch_kernel_files_handed_over",
        "Idle files whose kernel entry moved into userspace (the kernel's per-file map stays bounded)",
        session.files_handed_over,
    )?;
    counter(
        &mut encoder,
        "mmapwatch_kernel_dirty_files_handed_over",
        "Of those, files still dirty (deleted or truncated while dirty, or the map was half full): later writeback of theirs is not counted",
        session.dirty_files_handed_over,
    )?;
    counter(
        &mut encoder,
        "mmapwatch_files_forgotten",
        "Files dropped from the per-file series and mmapwatch_files_tracked after --retain without a write or writeback",
        session.files_forgotten,
    )?;
    gauge(
        &mut encoder,
        "mmapwatch_kernel_file_entries",
        "Entries in the kernel's per-file map (65536 at most; idle files are handed over before it fills)",
        session.kernel_file_entries,
    )?;
    gauge(
        &mut encoder,
        "mmapwatch_ringbuf_size_bytes",
        "Size of the event ring buffer",
        u64::from(totals.ring_bytes),
    )?;
    gauge(
        &mut encoder,
        "mmapwatch_ringbuf_peak_used_bytes",
        "Highest ring-buffer fill seen",
        totals.kernel.kernel.ring_peak_bytes(),
    )?;
    let program = |name: &String| ProgramLabels {
        program: name.clone(),
    };
    counter_family(
        &mut encoder,
        "mmapwatch_bpf_program_run_seconds",
        "Time spent in each BPF program (kernel.bpf_stats_enabled=1)",
        totals
            .programs
            .iter()
            .map(|(name, run_time, _)| (program(name), run_time.as_secs_f64())),
    )?;
    counter_family(
        &mut encoder,
        "mmapwatch_bpf_program_runs",
        "Runs of each BPF program (kernel.bpf_stats_enabled=1)",
        totals
            .programs
            .iter()
            .map(|(name, _, runs)| (program(name), *runs)),
    )?;
    Ok(())
}
