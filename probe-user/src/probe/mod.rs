//! The kernel side seen from userspace: what this kernel offers (`env`),
//! what the backends attach to (`catalog`), loading the eBPF object
//! (`load`), choosing and attaching a backend (`backend`), and reading
//! its maps (`maps`; `totals` reads the running totals from
//! another thread). The session is the only user outside `doctor`.

pub mod backend;
pub mod btf;
pub mod catalog;
pub mod env;
pub mod error;
pub mod hand_over;
pub mod kallsyms;
pub mod load;
mod map_batch;
pub mod maps;
mod offsets;
mod platform;
pub mod totals;

pub use backend::{Attached, BackendChoice, Mechanism, Selection};
pub use error::LoadError;
pub use load::{ProbeOptions, Probes, DEFAULT_RING_BYTES};
pub use maps::{KernelCounters, WriterLabel};
