//! mmapwatch: which memory-mapped files were modified through mmap, which
//! pages, by whom, and when they were written back.

pub mod aggregate;
pub mod bench_floor;
pub mod blind_spots;
pub mod btf;
pub mod cli;
pub mod doctor;
pub mod error;
pub mod events;
pub mod exporter;
pub mod file_handle;
pub mod kallsyms;
pub mod loader;
pub mod names;
pub mod paths;
pub mod report;
pub mod session;
pub mod trace;
pub mod tui;
