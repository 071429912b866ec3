//! mmapwatch: which memory-mapped files were modified through mmap, which
//! pages, by whom, and when they were written back.
//!
//! The data path: `probe` loads and attaches the eBPF programs and reads
//! their maps; `session` drains the ring into `model`'s pure aggregate;
//! each front end (`trace`, `tui`, `exporter`, `doctor`) reads the
//! session through its API only. `output_file` opens what mmapwatch
//! writes to (safe against links and files planted by other users).

pub mod bench_floor;
pub mod cli;
pub mod doctor;
pub mod error;
pub mod exporter;
pub mod man_pages;
pub mod model;
pub mod output_file;
pub mod probe;
pub mod session;
pub mod trace;
pub mod tui;
