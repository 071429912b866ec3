//! A histogram whose totals the kernel keeps: the dirty-to-writeback
//! latency's log2 buckets and the latencies' real sum. prometheus-client's
//! own `Histogram` only observes values one by one and sums what it was
//! given, so replaying bucket counts into it made `_sum` out of bucket
//! bounds (up to 2x high); this metric encodes the kernel's totals as they
//! are read at scrape time.

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};

use crate::probe::maps::LatencyTotals;

/// Upper bounds are 2^k ns for k in `FIRST_BOUND_LOG2..=LAST_BOUND_LOG2`
/// (about 1 ms to 69 s), then +Inf. A kernel bucket [2^k, 2^(k+1)) lies
/// wholly under the bound 2^(k+1), so every count lands exactly.
const FIRST_BOUND_LOG2: usize = 20;
const LAST_BOUND_LOG2: usize = 36;

/// The bounds in seconds, without +Inf.
pub(crate) fn latency_bounds() -> impl Iterator<Item = f64> {
    (FIRST_BOUND_LOG2..=LAST_BOUND_LOG2).map(|k| (1u64 << k) as f64 / 1e9)
}

/// The kernel's totals as histogram buckets: per-bound counts (not
/// cumulative, +Inf last), their total and the sum in seconds.
#[derive(Debug)]
pub struct KernelHistogram {
    buckets: Vec<(f64, u64)>,
    count: u64,
    sum_seconds: f64,
}

impl From<&LatencyTotals> for KernelHistogram {
    fn from(totals: &LatencyTotals) -> Self {
        let mut buckets: Vec<(f64, u64)> = latency_bounds()
            .chain(std::iter::once(f64::INFINITY))
            .map(|bound| (bound, 0))
            .collect();
        let last = buckets.len() - 1;
        for (k, &count) in totals.buckets.iter().enumerate() {
            // Bucket k holds values below 2^(k+1) ns.
            let index = (k + 1).saturating_sub(FIRST_BOUND_LOG2).min(last);
            buckets[index].1 += count;
        }
        Self {
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            sum_seconds: totals.sum_ns as f64 / 1e9,
        }
    }
}

impl TypedMetric for KernelHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for KernelHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum_seconds, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
