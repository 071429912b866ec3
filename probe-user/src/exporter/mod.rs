//! `mmapwatch export`: Prometheus metrics over HTTP (OpenMetrics text, or
//! the Prometheus text format when the scraper does not ask for it).
//!
//! Label cardinality is bounded: never a pid; `comm` and `cgroup` values
//! are admitted by activity, shared and COW writers apart (the rest is
//! `other`); per-file series exist only for the top N
//! files by pages written and files under `--path-prefix`, and everything
//! else is summed into `path="other"`.
//!
//! `labels` (label sets), `kernel_histogram` (the writeback latency
//! histogram as the kernel totals it, real `_sum`), `admission` (which values get their own), `metrics` (families and rendering),
//! `collect` (aggregate and per-writer counts to values), `scrape` (the
//! kernel's and the session's totals, read at scrape time), `server` (HTTP and
//! the export loop), `health` (`/healthz` fails when that loop stalls),
//! `syncs` (msync/fsync calls tapped from the event stream),
//! `text_format` (the Prometheus text format for scrapers that do not ask
//! for OpenMetrics), `connections` (open connections capped, idle ones
//! closed), `web_config` (`--web.config.file`: the exporter toolkit's TLS
//! and basic auth), `tls` (handshakes off the accept path), `basic_auth`
//! (bcrypt users).

mod admission;
mod basic_auth;
mod collect;
mod connections;
mod health;
mod kernel_histogram;
mod labels;
mod metrics;
mod scrape;
mod server;
mod syncs;
#[cfg(test)]
mod tests;
mod text_format;
mod tls;
mod web_config;

pub use admission::LabelPins;
pub use collect::Exporter;
pub use labels::OTHER;
pub use metrics::{render, Metrics, OPENMETRICS};
pub use server::run;
