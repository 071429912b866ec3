//! Run-time configuration: the global set at load time and the bits of its fields.

use super::*;

/// Bits of the `HOOKS` map's one entry: which function hooks are attached,
/// so that each fault is recorded by exactly one of them. A map, not part
/// of the frozen config: it is known only once hooks attach.
pub mod hooks {
    /// `wp_page_copy` records copy-on-write of present pages; `do_wp_page`
    /// then records shared writes only.
    pub const COW_AT_WP_PAGE_COPY: u32 = 1;
}

/// Bits of [`ProbeConfig::filter_flags`].
pub mod filter {
    /// Only tasks whose tgid is in the `TRACED` map.
    pub const BY_TGID: u32 = 1;
    /// Only tasks whose comm matches one of [`super::ProbeConfig::comms`].
    pub const BY_COMM: u32 = 2;
    /// Only tasks whose effective uid is one of [`super::ProbeConfig::users`].
    pub const BY_USER: u32 = 4;
    /// Only tasks in one of [`super::ProbeConfig::cgroups`] or below it.
    pub const BY_CGROUP: u32 = 8;
}

/// A cgroup `--cgroup`/`--container` selects, with every cgroup below it:
/// a task is in it when its cgroup's ancestor at `level` (the root is 0)
/// has this id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct CgroupFilter {
    /// The cgroup's id: its directory's inode number in cgroup2.
    pub id: u64,
    pub level: u32,
    pub _pad: u32,
}

/// Value of a `TRACED` map entry.
pub mod traced {
    /// Trace this tgid only.
    pub const EXACT: u32 = 1;
    /// Trace this tgid and every process it forks, recursively.
    pub const FOLLOW_CHILDREN: u32 = 2;
}

/// Run-time configuration, a global set at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct ProbeConfig {
    /// Bits of [`filter`].
    pub filter_flags: u32,
    /// Non-zero: classify and report private (COW) writes too.
    pub include_cow: u32,
    /// Our own tgid, never traced.
    pub self_tgid: u32,
    /// log2 of the base page size.
    pub page_shift: u32,
    /// Entries used in `comms`.
    pub comm_count: u32,
    /// Pages a read fault maps around the faulting one (the kernel's
    /// fault_around_bytes / page size; 16 by default).
    pub fault_around_pages: u32,
    /// Non-zero: send [`RecordKind::ProcessExit`] records (`trace`, which
    /// reports each writer's unwritten pages at its exit).
    pub report_exits: u32,
    /// Unread ring bytes at which a record wakes the reader (see
    /// [`ring_commit_flags`]).
    pub ring_wakeup_bytes: u32,
    /// Entries used in `users`.
    pub user_count: u32,
    /// Entries used in `cgroups`.
    pub cgroup_count: u32,
    /// Non-zero with `--stacks` (the stack-taking twins of the write-fault
    /// programs are loaded): every record lets the kernel wake the reader
    /// as soon as it has caught up, so stacks are read while their writers
    /// live.
    pub user_stacks: u32,
    pub _pad: u32,
    pub comms: [[u8; TASK_COMM_LEN]; MAX_COMM_FILTERS],
    /// Effective uids of `--user`.
    pub users: [u32; MAX_USER_FILTERS],
    /// `--cgroup` and `--container`.
    pub cgroups: [CgroupFilter; MAX_CGROUP_FILTERS],
}

impl ProbeConfig {
    /// All zero: the value compiled into the object before userspace overrides it.
    pub const ZEROED: Self = Self {
        filter_flags: 0,
        include_cow: 0,
        self_tgid: 0,
        page_shift: 0,
        comm_count: 0,
        fault_around_pages: 0,
        report_exits: 0,
        ring_wakeup_bytes: 0,
        user_count: 0,
        cgroup_count: 0,
        user_stacks: 0,
        _pad: 0,
        comms: [[0; TASK_COMM_LEN]; MAX_COMM_FILTERS],
        users: [0; MAX_USER_FILTERS],
        cgroups: [CgroupFilter {
            id: 0,
            level: 0,
            _pad: 0,
        }; MAX_CGROUP_FILTERS],
    };
}
