//! What the backends attach to: tracepoints, raw and BTF tracepoints, and
//! the kernel functions the fentry and kprobe backends hook.

use std::borrow::Cow;

use probe_common::mw_name;

/// Programs with a twin that takes call-site stacks, named with this
/// suffix, loaded in their place with `--stacks`: the others hold no call
/// to `bpf_get_stackid` at all (probe-ebpf's `stacks` says why).
pub const STACKS_TWIN_SUFFIX: &str = "_stacks";

/// The programs that have such a twin: the write-fault programs of each
/// backend, and the dirtying of a folio a write fault brought in (spans).
pub const WITH_STACKS_TWIN: [&str; 9] = [
    mw_name!("page_fault_user"),
    mw_name!("page_fault_user_5_10"),
    mw_name!("fentry_do_wp_page"),
    mw_name!("fentry_finish_fault"),
    mw_name!("fentry_wp_page_copy"),
    mw_name!("kprobe_do_wp_page"),
    mw_name!("kprobe_finish_fault"),
    mw_name!("kprobe_wp_page_copy"),
    mw_name!("writeback_dirty_folio"),
];

/// The object's program for the catalog's `program`: its stack-taking
/// twin when `stacks` is on and it has one.
pub fn program_for(program: &str, stacks: bool) -> Cow<'_, str> {
    if stacks && WITH_STACKS_TWIN.contains(&program) {
        Cow::Owned(format!("{program}{STACKS_TWIN_SUFFIX}"))
    } else {
        Cow::Borrowed(program)
    }
}

/// A classic tracepoint the backend attaches to.
#[derive(Clone, Copy, Debug)]
pub struct Tracepoint {
    pub program: &'static str,
    pub category: &'static str,
    pub name: &'static str,
    /// Without it, mmapwatch still works but sees less (said in `doctor`
    /// and in the report's warnings).
    pub required: bool,
    pub purpose: &'static str,
    /// Attached as a raw tracepoint: the fault programs run on every page
    /// fault of the host, and a raw one reads its arguments straight from
    /// the context instead of having the kernel copy a record first.
    pub raw: bool,
    /// The program's variant for Linux 5.10 to 5.16, loaded where the
    /// kernel refuses `program` (probe-ebpf's `compat`).
    pub before_5_17: Option<&'static str>,
    /// Raw: the arguments its program reads (classic syscall records are
    /// checked against their format files instead).
    pub reads: &'static [(usize, Reads)],
}

/// What a program takes a raw tracepoint's argument at a position to be:
/// checked against the kernel's BTF before loading (`platform`), so a
/// kernel that reorders them is refused, not misread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    /// A pointer to this struct.
    Pointer(&'static str),
    /// An integer of this many bytes.
    Integer(usize),
}

/// `exceptions:page_fault_{user,kernel}(address, regs, error_code)`.
const FAULT_ARGS: &[(usize, Reads)] = &[(0, Reads::Integer(8)), (2, Reads::Integer(8))];

impl Tracepoint {
    /// Whether only the tracepoint backend needs it: the user fault
    /// tracepoint (x86 only), where the function hooks see the faults.
    pub fn fault_backend_only(&self) -> bool {
        self.category == "exceptions"
    }
}

/// A durability call's entry or return: optional, classic (they fire only
/// for that call); its program is named after it.
macro_rules! sync {
    ($name:literal, $purpose:literal) => {
        Tracepoint {
            program: mw_name!($name),
            category: "syscalls",
            name: $name,
            required: false,
            purpose: $purpose,
            raw: false,
            before_5_17: None,
            reads: &[],
        }
    };
}

/// A sync call's exit: one program for all four (they read alike).
macro_rules! sync_exit {
    ($name:literal, $purpose:literal) => {
        Tracepoint {
            program: mw_name!("sys_exit_sync"),
            before_5_17: Some(mw_name!("sys_exit_sync_5_10")),
            ..sync!($name, $purpose)
        }
    };
}

pub const TRACEPOINTS: &[Tracepoint] = &[
    Tracepoint {
        program: mw_name!("page_fault_user"),
        category: "exceptions",
        name: "page_fault_user",
        required: true,
        purpose: "write faults from user space",
        raw: true,
        before_5_17: Some(mw_name!("page_fault_user_5_10")),
        reads: FAULT_ARGS,
    },
    // The same program as page_fault_user's, attached twice.
    Tracepoint {
        program: mw_name!("page_fault_user"),
        category: "exceptions",
        name: "page_fault_kernel",
        required: false,
        purpose: "kernel stores into user mappings (read(2) into a mapping)",
        raw: true,
        before_5_17: Some(mw_name!("page_fault_user_5_10")),
        reads: FAULT_ARGS,
    },
    Tracepoint {
        program: mw_name!("sys_enter_mmap"),
        category: "syscalls",
        name: "sys_enter_mmap",
        required: false,
        purpose: "processes with shared writable mappings (tmpfs possibly-written pages)",
        raw: false,
        before_5_17: None,
        reads: &[],
    },
    // Before sys_enter_mprotect: attached in reverse, it runs second, after
    // the program that announces the file.
    Tracepoint {
        program: mw_name!("sys_enter_mprotect_folios"),
        category: "syscalls",
        name: "sys_enter_mprotect",
        required: false,
        purpose: "dirty large folios mprotect makes writable whole (ext4, xfs)",
        raw: false,
        // bpf_loop (5.17+); before 5.18 no filesystem with write-notify
        // has large folios, so nothing is lost there.
        before_5_17: None,
        reads: &[],
    },
    Tracepoint {
        program: mw_name!("sys_enter_mprotect"),
        category: "syscalls",
        name: "sys_enter_mprotect",
        required: false,
        purpose: "mappings made writable later (tmpfs possibly-written pages)",
        raw: false,
        before_5_17: Some(mw_name!("sys_enter_mprotect_5_10")),
        reads: &[],
    },
    Tracepoint {
        before_5_17: Some(mw_name!("sys_enter_msync_5_10")),
        ..sync!("sys_enter_msync", "msync calls (durability)")
    },
    sync_exit!("sys_exit_msync", "msync calls (durability)"),
    sync!("sys_enter_fsync", "fsync calls (durability)"),
    sync_exit!("sys_exit_fsync", "fsync calls (durability)"),
    sync!("sys_enter_fdatasync", "fdatasync calls (durability)"),
    sync_exit!("sys_exit_fdatasync", "fdatasync calls (durability)"),
    sync!(
        "sys_enter_sync_file_range",
        "sync_file_range calls (durability)"
    ),
    sync_exit!(
        "sys_exit_sync_file_range",
        "sync_file_range calls (durability)"
    ),
];

/// The function-hook backends' own program on the user fault tracepoint:
/// read faults only (the hooks see every write), for tmpfs pages that a
/// read fault maps writable.
pub const READ_FAULTS: Tracepoint = Tracepoint {
    program: mw_name!("page_fault_user_reads"),
    category: "exceptions",
    name: "page_fault_user",
    required: false,
    purpose: "tmpfs/shmem pages mapped writable by read faults (possibly written)",
    raw: true,
    before_5_17: Some(mw_name!("page_fault_user_reads_5_10")),
    reads: FAULT_ARGS,
};

/// A raw tracepoint the backend attaches to: they give the folio and
/// inode pointers whose classic formats lack the device number or the
/// inode's generation.
#[derive(Clone, Copy, Debug)]
pub struct RawTracepoint {
    pub program: &'static str,
    pub name: &'static str,
    /// Without an optional one, mmapwatch still works but sees less (said
    /// in `doctor` and in the report's warnings).
    pub required: bool,
    pub purpose: &'static str,
    /// Loaded as tp_btf: its program reads fields through the typed
    /// arguments directly instead of one `bpf_probe_read_kernel` each
    /// (worth it on a hot one; the load needs aya's BTF parse).
    pub typed: bool,
    /// The same tracepoint's name before folios (5.16), where it passed
    /// a `struct page` (the first argument's `folio` then reads `page`).
    pub before_folios: Option<&'static str>,
    /// The arguments its program reads.
    pub reads: &'static [(usize, Reads)],
}

/// A raw tracepoint whose program is named after it.
macro_rules! raw {
    ($name:literal, $required:literal, $purpose:literal, $reads:expr $(,)?) => {
        RawTracepoint {
            program: mw_name!($name),
            name: $name,
            required: $required,
            purpose: $purpose,
            typed: false,
            before_folios: None,
            reads: $reads,
        }
    };
}

/// The same, loaded as tp_btf.
macro_rules! typed {
    ($name:literal, $required:literal, $purpose:literal, $reads:expr $(,)?) => {
        RawTracepoint {
            typed: true,
            ..raw!($name, $required, $purpose, $reads)
        }
    };
}

const TASK: Reads = Reads::Pointer("task_struct");
const INODE: Reads = Reads::Pointer("inode");

pub const RAW_TRACEPOINTS: &[RawTracepoint] = &[
    // (parent, child)
    raw!(
        "sched_process_fork",
        true,
        "following -- CMD's descendants",
        &[(1, TASK)]
    ),
    // (task, group_dead)
    raw!(
        "sched_process_exit",
        true,
        "forgetting exited processes",
        &[(0, TASK)]
    ),
    raw!(
        "task_rename",
        false,
        "writers named as they are at the store (prctl, exec, /proc/PID/comm)",
        &[]
    ),
    raw!(
        "cgroup_attach_task",
        false,
        "writers' cgroup as it is at the store (cgroup moves)",
        &[]
    ),
    raw!(
        "sb_mark_inode_writeback",
        true,
        "writeback start times",
        &[(0, INODE)]
    ),
    raw!(
        "sb_clear_inode_writeback",
        true,
        "writeback completion times",
        &[(0, INODE)]
    ),
    // (folio, mapping)
    RawTracepoint {
        before_folios: Some("writeback_dirty_page"),
        ..typed!(
            "writeback_dirty_folio",
            true,
            "folios and pages dirtied",
            &[
                (0, Reads::Pointer("folio")),
                (1, Reads::Pointer("address_space"))
            ]
        )
    },
    // (inode, wbc, nr_to_write)
    raw!(
        "writeback_single_inode",
        true,
        "pages written back by the flusher",
        &[
            (0, INODE),
            (1, Reads::Pointer("writeback_control")),
            (2, Reads::Integer(8))
        ]
    ),
    // (inode, wbc, ret, pages_written)
    raw!(
        "ext4_writepages_result",
        false,
        "pages ext4 wrote back (fsync, msync and flusher)",
        &[(0, INODE), (3, Reads::Integer(4))]
    ),
    // (mapping, start, last)
    raw!(
        "mm_filemap_map_pages",
        false,
        "tmpfs/shmem pages mapped writable by read faults (possibly written)",
        &[
            (0, Reads::Pointer("address_space")),
            (1, Reads::Integer(8)),
            (2, Reads::Integer(8))
        ]
    ),
];

/// Filesystem `->page_mkwrite` implementations, hooked one by one where
/// `do_page_mkwrite` is inlined. ext4, xfs, btrfs and fuse are usually
/// modules, whose functions kprobes reach (kallsyms) and fentry here does
/// not (aya resolves fentry targets in vmlinux BTF only).
pub const FS_MKWRITE_HOOKS: &[&str] = &[
    "filemap_page_mkwrite",
    "ext4_page_mkwrite",
    "iomap_page_mkwrite",
    "xfs_write_fault",
    "xfs_filemap_page_mkwrite",
    "btrfs_page_mkwrite",
    "fuse_page_mkwrite",
    "nfs_vm_page_mkwrite",
    "f2fs_vm_page_mkwrite",
    "ceph_page_mkwrite",
];
/// fentry programs available for filesystem hooks (one per target).
pub(crate) const FENTRY_FS_MKWRITE_SLOTS: usize = 4;

/// A kernel function and the programs that hook it either way.
pub(crate) struct Hook<'a> {
    pub(crate) function: &'a str,
    /// The function's name before folios (5.16), if it had another.
    pub(crate) before_folios: Option<&'a str>,
    pub(crate) fentry: &'a str,
    pub(crate) kprobe: &'a str,
}

/// Fault hooks. `do_wp_page` and `finish_fault` must both attach for a
/// function-hook backend; `wp_page_copy` is optional (without it
/// `do_wp_page` records private copies too).
pub(crate) const WP_PAGE: Hook = Hook {
    function: "do_wp_page",
    before_folios: None,
    fentry: mw_name!("fentry_do_wp_page"),
    kprobe: mw_name!("kprobe_do_wp_page"),
};
pub(crate) const FINISH_FAULT: Hook = Hook {
    function: "finish_fault",
    before_folios: None,
    fentry: mw_name!("fentry_finish_fault"),
    kprobe: mw_name!("kprobe_finish_fault"),
};
pub(crate) const WP_PAGE_COPY: Hook = Hook {
    function: "wp_page_copy",
    before_folios: None,
    fentry: mw_name!("fentry_wp_page_copy"),
    kprobe: mw_name!("kprobe_wp_page_copy"),
};
pub(crate) const DO_PAGE_MKWRITE: Hook = Hook {
    function: "do_page_mkwrite",
    before_folios: None,
    fentry: mw_name!("fentry_do_page_mkwrite"),
    kprobe: mw_name!("kprobe_do_page_mkwrite"),
};
pub(crate) const FOLIO_END_WRITEBACK: Hook = Hook {
    function: "folio_end_writeback",
    before_folios: Some("end_page_writeback"),
    fentry: mw_name!("fentry_folio_end_writeback"),
    kprobe: mw_name!("kprobe_folio_end_writeback"),
};

#[cfg(test)]
mod tests {
    use probe_common::{map_name, OBJECT_NAME_PREFIX};

    use super::*;
    use crate::probe::load::PROBES_OBJECT;

    /// The object's names are what probe-common declares: every program
    /// and map carries the prefix (aya-log's map and the data sections,
    /// named by aya, aside), every map userspace looks up exists, and so
    /// does every program the catalog attaches.
    #[test]
    fn the_object_names_every_program_and_map_with_the_prefix() {
        let object = aya_obj::Object::parse(PROBES_OBJECT).expect("the built eBPF object");
        for name in object.programs.keys() {
            assert!(name.starts_with(OBJECT_NAME_PREFIX), "program {name}");
        }
        let mut maps: Vec<&str> = object
            .maps
            .keys()
            .map(String::as_str)
            .filter(|name| !name.starts_with('.') && *name != "AYA_LOGS")
            .collect();
        maps.sort_unstable();
        let mut declared = map_name::ALL.to_vec();
        declared.sort_unstable();
        assert_eq!(maps, declared);
        let catalogued = TRACEPOINTS
            .iter()
            .chain([&READ_FAULTS])
            .flat_map(|tp| [Some(tp.program), tp.before_5_17])
            .flatten()
            .chain(RAW_TRACEPOINTS.iter().map(|tp| tp.program))
            .chain(
                [
                    WP_PAGE,
                    FINISH_FAULT,
                    WP_PAGE_COPY,
                    DO_PAGE_MKWRITE,
                    FOLIO_END_WRITEBACK,
                ]
                .iter()
                .flat_map(|hook| [hook.fentry, hook.kprobe]),
            );
        for program in catalogued {
            assert!(
                object.programs.contains_key(program),
                "{program} is not in the object"
            );
        }
        for program in WITH_STACKS_TWIN {
            let twin = program_for(program, true);
            assert!(object.programs.contains_key(program), "{program}");
            assert!(object.programs.contains_key(twin.as_ref()), "{twin}");
            assert_eq!(program_for(program, false), program);
        }
        // Twins are loaded only for what has one.
        assert_eq!(
            program_for(mw_name!("sys_enter_mmap"), true),
            mw_name!("sys_enter_mmap")
        );
    }
}
