//! Process lifetime: following `-- CMD`'s descendants, forgetting exited
//! processes, and noting which processes map files shared and writable.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use probe_common::{
    counter, filter, syscall_arg_at, traced, Credentials, EventHeader, FileKey, RecordKind,
    TASK_COMM_LEN,
};

use crate::{
    filter::{note_identity_change, task_selected},
    kernel::{
        current_cgroup_id, current_comm_into, current_credentials_into, current_euid, read_kernel,
    },
    maps::{bump, count_failure, EVENTS, SHARED_MAPPERS, TRACED},
    programs::mprotect::{try_mprotect_folios, try_mprotect_writable},
    record::{commit_flags, count_submitted, fill_header, WriterIdentity},
};

const MAP_SHARED: u64 = 0x01;
const PROT_WRITE: u64 = 0x2;

/// Offsets in the `syscalls:sys_enter_{mmap,mprotect}` formats: prot for
/// both, mmap's flags.
const PROT_AT: usize = syscall_arg_at(2);
const MMAP_FLAGS_AT: usize = syscall_arg_at(3);

/// `syscalls:sys_enter_{mmap,mprotect}`: a process that may now have a
/// shared writable mapping. mprotect has no flags (`flags_at` None): it
/// can make a shared mapping writable, and whether it is shared is checked
/// at the fault.
pub(crate) fn try_note_shared_mapper(
    ctx: &TracePointContext,
    flags_at: Option<usize>,
) -> Result<(), i64> {
    // SAFETY: offsets from the tracepoints' format files.
    let prot: u64 = unsafe { ctx.read_at(PROT_AT) }.map_err(|err| err as i64)?;
    if prot & PROT_WRITE == 0 {
        return Ok(());
    }
    if let Some(flags_at) = flags_at {
        // SAFETY: as above.
        let flags: u64 = unsafe { ctx.read_at(flags_at) }.map_err(|err| err as i64)?;
        if flags & MAP_SHARED == 0 {
            return Ok(());
        }
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    SHARED_MAPPERS
        .insert(&tgid, &1, 0)
        .map_err(|err| err as i64)
}

#[tracepoint]
pub fn mw_sys_enter_mmap(ctx: TracePointContext) -> u32 {
    count_failure(try_note_shared_mapper(&ctx, Some(MMAP_FLAGS_AT)));
    0
}

/// Offsets in `syscalls:sys_enter_mprotect`'s format: start and len.
const MPROTECT_START_AT: usize = syscall_arg_at(0);
const MPROTECT_LEN_AT: usize = syscall_arg_at(1);

#[tracepoint]
pub fn mw_sys_enter_mprotect(ctx: TracePointContext) -> u32 {
    count_failure(try_note_shared_mapper(&ctx, None));
    count_failure(try_mprotect::<true>(&ctx));
    0
}

/// [`mw_sys_enter_mprotect`] for Linux 5.10 to 5.16 (see `compat`).
#[tracepoint]
pub fn mw_sys_enter_mprotect_5_10(ctx: TracePointContext) -> u32 {
    count_failure(try_note_shared_mapper(&ctx, None));
    count_failure(try_mprotect::<false>(&ctx));
    0
}

/// The same call, for the dirty large folios it makes writable whole
/// (ext4, xfs): a program of its own (see `try_mprotect_folios`).
#[tracepoint]
pub fn mw_sys_enter_mprotect_folios(_ctx: TracePointContext) -> u32 {
    count_failure(try_mprotect_folios());
    0
}

/// mprotect's (start, len, prot).
fn mprotect_args(ctx: &TracePointContext) -> Result<(u64, u64, u64), i64> {
    // SAFETY: offsets from the tracepoint's format file.
    unsafe {
        Ok((
            ctx.read_at(MPROTECT_START_AT).map_err(|err| err as i64)?,
            ctx.read_at(MPROTECT_LEN_AT).map_err(|err| err as i64)?,
            ctx.read_at(PROT_AT).map_err(|err| err as i64)?,
        ))
    }
}

/// A mapping made writable: tmpfs pages it holds are possibly written.
fn try_mprotect<const SINCE_5_17: bool>(ctx: &TracePointContext) -> Result<(), i64> {
    let (start, len, prot) = mprotect_args(ctx)?;
    if prot & PROT_WRITE == 0 {
        return Ok(());
    }
    try_mprotect_writable::<SINCE_5_17>(start, len)
}

/// Raw `sched_process_fork(parent, child)`: the classic format moved its
/// fields between kernels (comm arrays became dynamic strings).
pub(crate) fn try_process_fork(ctx: &RawTracePointContext) -> Result<(), i64> {
    // The tracepoint runs in the parent.
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: read-only lookup of a plain u8 value.
    if unsafe { SHARED_MAPPERS.get(&parent_tgid) }.is_some() {
        // The child inherits the parent's shared mappings.
        let child_pid: u32 = read_kernel(ctx.arg::<u64>(1), offset!(task_pid))?;
        count_failure(
            SHARED_MAPPERS
                .insert(&child_pid, &1, 0)
                .map_err(|err| err as i64),
        );
    }
    if config!(filter_flags) & filter::BY_TGID == 0 {
        return Ok(());
    }
    // SAFETY: read-only lookup of a plain u32 value.
    match unsafe { TRACED.get(&parent_tgid) } {
        Some(&traced::FOLLOW_CHILDREN) => {}
        _ => return Ok(()),
    }
    let child: u64 = ctx.arg(1);
    let child_pid: u32 = read_kernel(child, offset!(task_pid))?;
    let child_tgid: u32 = read_kernel(child, offset!(task_tgid))?;
    // A new thread of a followed process is followed already (the filter
    // looks processes up by tgid): no entry, so a process with tens of
    // thousands of threads cannot fill the map.
    if child_pid != child_tgid {
        return Ok(());
    }
    if TRACED
        .insert(&child_pid, &traced::FOLLOW_CHILDREN, 0)
        .is_err()
    {
        // Said at the top of the report: this child's writes are missing.
        bump(counter::CHILDREN_NOT_FOLLOWED);
    }
    Ok(())
}

/// Raw `task_rename(task, comm)`: prctl(PR_SET_NAME), exec, or a write
/// to /proc/PID/comm. Writes after it are named with the new name.
#[raw_tracepoint(tracepoint = "task_rename")]
pub fn mw_task_rename(_ctx: RawTracePointContext) -> i32 {
    note_identity_change();
    0
}

/// Raw `cgroup_attach_task(dst_cgrp, path, task, threadgroup)`: a task
/// moved to another cgroup. Writes after it carry the new cgroup.
#[raw_tracepoint(tracepoint = "cgroup_attach_task")]
pub fn mw_cgroup_attach_task(_ctx: RawTracePointContext) -> i32 {
    note_identity_change();
    0
}

/// Follows `-- CMD`'s descendants.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn mw_sched_process_fork(ctx: RawTracePointContext) -> i32 {
    count_failure(try_process_fork(&ctx));
    0
}

/// Raw `sched_process_exit(task, ...)`, in the exiting task. Whether the
/// whole group is dead comes from `signal->live` (already decremented
/// here), not a `group_dead` field that older kernels lack.
pub(crate) fn try_process_exit(ctx: &RawTracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let task: u64 = ctx.arg(0);
    let signal: u64 = read_kernel(task, offset!(task_signal))?;
    let live: i32 = read_kernel(signal, offset!(signal_live))?;
    // Removals below: an entry already absent is no error (most exiting
    // processes have none).
    if live == 0 {
        // Ok: the process had a shared writable mapping.
        let was_mapper = SHARED_MAPPERS.remove(&tgid).is_ok();
        if was_mapper && config!(report_exits) != 0 {
            report_exit(pid_tgid);
        }
    }
    if config!(filter_flags) & filter::BY_TGID == 0 {
        return Ok(());
    }
    // Once the whole group is gone, the process's entry: ids are reused.
    if live == 0 {
        let _ = TRACED.remove(&tgid);
    }
    Ok(())
}

/// Tells userspace that a process which may have written through a
/// shared mapping exited, so it can look at what of its writes is on disk.
fn report_exit(pid_tgid: u64) {
    let mut comm = [0u8; TASK_COMM_LEN];
    // An unreadable name is sent empty rather than losing the exit.
    let _unnamed = current_comm_into(&mut comm);
    if !task_selected((pid_tgid >> 32) as u32, &comm, current_euid) {
        return;
    }
    let mut creds = Credentials::default();
    current_credentials_into(&mut creds);
    let flags = commit_flags(size_of::<EventHeader>());
    let Some(mut entry) = EVENTS.reserve::<EventHeader>(0) else {
        bump(counter::RINGBUF_FULL);
        bump(counter::RINGBUF_FULL_OTHER_EVENTS);
        return;
    };
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let event = entry.as_mut_ptr();
    // SAFETY: reserved ring-buffer memory of the right size, filled in place.
    unsafe {
        fill_header(
            &mut *event,
            RecordKind::ProcessExit,
            pid_tgid,
            &FileKey::default(),
            now,
            WriterIdentity {
                comm: &comm,
                cgroup_id: current_cgroup_id(),
                creds: &creds,
            },
        );
    }
    entry.submit(flags);
    count_submitted(size_of::<EventHeader>());
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn mw_sched_process_exit(ctx: RawTracePointContext) -> i32 {
    count_failure(try_process_exit(&ctx));
    0
}
