//! The entry points the loader attaches, one file per family.

mod faults;
mod floor;
mod functions;
mod mprotect;
mod process;
mod sync;
mod writeback;
