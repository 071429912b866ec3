//! Types shared by the eBPF programs and userspace.
//!
//! Every type is `#[repr(C)]` with explicit padding so that its layout is the
//! same on both sides and userspace can decode ring-buffer records from bytes
//! without guessing. Userspace decodes with length checks (zerocopy), never by
//! transmuting.
#![no_std]

#[cfg(feature = "user")]
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Prefixes `name` with the object's name prefix (`mw_`): every program
/// and map of the eBPF object is named so, and `bpftool prog show`,
/// `bpftool map show` and bpftop then say whose they are. The eBPF side's
/// attribute macros take only literals, so it spells the names out;
/// userspace's test `the_object_names_every_program_and_map_with_the_prefix`
/// checks the built object against these.
#[macro_export]
macro_rules! mw_name {
    ($name:literal) => {
        concat!("mw_", $name)
    };
}

pub const OBJECT_NAME_PREFIX: &str = mw_name!("");

pub mod arith;
mod counters;
pub use counters::{counter, Counter, CounterRole, CounterTotals, KERNEL_COUNTERS};
mod config;
mod kernel;
mod maps;
mod records;
pub use config::*;
pub use kernel::*;
pub use maps::*;
pub use records::*;

/// The object's maps, by the names userspace looks them up with.
pub mod map_name {
    pub const EVENTS: &str = mw_name!("events");
    pub const PAGE_SEEN: &str = mw_name!("page_seen");
    pub const WRITERS: &str = mw_name!("writers");
    pub const FILE_STATS: &str = mw_name!("file_stats");
    pub const PENDING_COUNTS: &str = mw_name!("pending_counts");
    pub const COUNTERS: &str = mw_name!("counters");
    pub const WRITER_STATS: &str = mw_name!("writer_stats");
    pub const DIRTY_SINCE: &str = mw_name!("dirty_since");
    pub const WRITEBACK_LATENCY: &str = mw_name!("writeback_latency");
    pub const PENDING_FAULT: &str = mw_name!("pending_fault");
    pub const PENDING_SYNC: &str = mw_name!("pending_sync");
    pub const SHARED_MAPPERS: &str = mw_name!("shared_mappers");
    pub const LAST_READ_FAULT: &str = mw_name!("last_read_fault");
    pub const PAGE_MKWRITE: &str = mw_name!("page_mkwrite");
    pub const HOOKS: &str = mw_name!("hooks");
    pub const TRACED: &str = mw_name!("traced");
    pub const SCRATCH: &str = mw_name!("scratch");
    pub const FILE_NAMES: &str = mw_name!("file_names");
    pub const IDENTITY_CHANGES: &str = mw_name!("identity_changes");
    pub const FOLIO_WALK: &str = mw_name!("folio_walk");
    pub const STACKS: &str = mw_name!("stacks");
    /// Every one of them, for the check against the object.
    pub const ALL: [&str; 21] = [
        EVENTS,
        PAGE_SEEN,
        WRITERS,
        FILE_STATS,
        PENDING_COUNTS,
        COUNTERS,
        WRITER_STATS,
        DIRTY_SINCE,
        WRITEBACK_LATENCY,
        PENDING_FAULT,
        PENDING_SYNC,
        SHARED_MAPPERS,
        LAST_READ_FAULT,
        PAGE_MKWRITE,
        HOOKS,
        TRACED,
        SCRATCH,
        FILE_NAMES,
        IDENTITY_CHANGES,
        FOLIO_WALK,
        STACKS,
    ];
}

pub const TASK_COMM_LEN: usize = 16;
/// Bytes kept of each path component the kernel sends for a newly seen
/// file: NAME_MAX (255) and the NUL, so no name is ever cut.
pub const PATH_COMPONENT_LEN: usize = 256;
/// Path components (dentries) walked towards the filesystem root. Deeper
/// files are named from /proc instead (and marked when that fails).
pub const PATH_MAX_DEPTH: usize = 32;
/// `--comm` filters evaluated in the kernel.
pub const MAX_COMM_FILTERS: usize = 8;
/// `--user` filters evaluated in the kernel.
pub const MAX_USER_FILTERS: usize = 8;
/// `--cgroup` and `--container` filters evaluated in the kernel.
pub const MAX_CGROUP_FILTERS: usize = 8;

#[cfg(feature = "user")]
mod pod {
    macro_rules! pod {
        ($($shared:ident),*) => {$(
            // SAFETY: repr(C), only integers and byte arrays, and no
            // implicit padding (zerocopy's IntoBytes derive checks that).
            unsafe impl aya::Pod for super::$shared {}
        )*};
    }
    pod!(
        FileKey,
        PageChunkKey,
        PageChunk,
        PendingCounts,
        WriterKey,
        FileStats,
        WriterStatsKey,
        WriterStats,
        KernelOffsets,
        ProbeConfig
    );
}
