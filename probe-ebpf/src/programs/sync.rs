//! Durability calls: msync, fsync, fdatasync and sync_file_range, each
//! timed from entry to return and sent with its file, so a report can say
//! whether and when the writer asked for its pages to reach disk.
//!
//! Classic `syscalls:sys_{enter,exit}_*` tracepoints: they fire only for
//! these calls, and their arguments sit at fixed offsets (16 + 8 * n).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_boot_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use probe_common::{
    arith::byte_range_pages, counter, sync_call, syscall_arg_at, Credentials, FileKey, PendingSync,
    RecordKind, SyncEvent, TASK_COMM_LEN, VM_SHARED,
};

use crate::{
    filter::{selected_current_task, tgid_selected},
    kernel::{current_cgroup_id, current_credentials_into, inode_key, read_kernel},
    maps::{bump, count_failure, EVENTS, PENDING_SYNC},
    record::{commit_flags, count_submitted, fill_header, WriterIdentity},
    scratch::fault_scratch,
    vma::{find_mapping, try_find_vma, Mapping, VmaLookup},
};

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> Result<u64, i64> {
    // SAFETY: offsets from the tracepoints' format files.
    unsafe { ctx.read_at::<u64>(syscall_arg_at(n)) }.map_err(|err| err as i64)
}

/// The file open at `fd` in the current task: `task->files->fdt->fd[fd]`.
/// None for a closed or out-of-range fd (the call fails with EBADF).
#[inline(always)]
fn file_of_fd(fd: u64) -> Result<Option<FileKey>, i64> {
    if !has_offsets!(FD_TABLE) {
        return Ok(None);
    }
    let files_at = offset!(task_files);
    // SAFETY: no arguments; the current task, read through probe reads.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read_kernel(task, files_at)?;
    let fdt: u64 = read_kernel(files, offset!(files_fdt))?;
    let max_fds: u32 = read_kernel(fdt, offset!(fdtable_max_fds))?;
    if fd >= u64::from(max_fds) {
        return Ok(None);
    }
    let array: u64 = read_kernel(fdt, offset!(fdtable_fd))?;
    let file: u64 = read_kernel(array, fd * 8)?;
    if file == 0 {
        return Ok(None);
    }
    let inode: u64 = read_kernel(file, offset!(file_f_inode))?;
    Ok(Some(inode_key(inode)?.0))
}

/// The file and pages of `msync(start, len)`: the first mapping of the
/// range only (msync of several mappings is rare, and each has its own
/// file). Absent also when that mapping is not a shared file mapping.
fn msync_target<const SINCE_5_17: bool>(
    start: u64,
    len: u64,
    pending: &mut PendingSync,
) -> VmaLookup {
    let Ok(scratch) = fault_scratch() else {
        return VmaLookup::Busy;
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // The lock-free walk first, as for mprotect: bpf_find_vma only tries
    // the mmap lock.
    match find_mapping::<SINCE_5_17>(start, tgid, scratch) {
        Mapping::Anonymous => return VmaLookup::Absent,
        Mapping::File => {}
        Mapping::Unknown => match try_find_vma::<SINCE_5_17>(start, &mut scratch.info) {
            VmaLookup::Found => {}
            other => return other,
        },
    }
    let info = &scratch.info;
    if info.file == 0 || info.flags & VM_SHARED == 0 || start < info.start {
        return VmaLookup::Absent;
    }
    let shift = config!(page_shift);
    let end = if start.saturating_add(len) < info.end {
        start.saturating_add(len)
    } else {
        info.end
    };
    pending.file = info.file_key();
    pending.first_page = info.pgoff + ((start - info.start) >> shift);
    pending.pages = (end.saturating_sub(start) + (1 << shift) - 1) >> shift;
    pending.unresolved = 0;
    VmaLookup::Found
}

/// The call's file and pages; None when it names no file mapped or open.
#[inline(always)]
fn target<const CALL: u32, const SINCE_5_17: bool>(
    ctx: &TracePointContext,
) -> Result<Option<PendingSync>, i64> {
    let mut pending = PendingSync {
        call: CALL,
        ..PendingSync::default()
    };
    match CALL {
        sync_call::MSYNC => {
            let (start, len) = (arg(ctx, 0)?, arg(ctx, 1)?);
            match msync_target::<SINCE_5_17>(start, len, &mut pending) {
                VmaLookup::Found => {}
                VmaLookup::Absent => return Ok(None),
                // A thread mapping or unmapping holds the mmap lock: looked
                // up again on return, once the lock is likely free.
                VmaLookup::Busy => {
                    pending.unresolved = 1;
                    pending.first_page = start;
                    pending.pages = len;
                }
            }
        }
        sync_call::SYNC_FILE_RANGE => {
            let Some(file) = file_of_fd(arg(ctx, 0)?)? else {
                return Ok(None);
            };
            pending.file = file;
            let (first, pages) = byte_range_pages(arg(ctx, 1)?, arg(ctx, 2)?, config!(page_shift));
            pending.first_page = first;
            pending.pages = pages;
        }
        _ => {
            let Some(file) = file_of_fd(arg(ctx, 0)?)? else {
                return Ok(None);
            };
            pending.file = file;
        }
    }
    Ok(Some(pending))
}

/// A call's entry. `CALL` is a constant so that only msync's program
/// holds the VMA lookup (and its `SINCE_5_17` variants, see `compat`).
pub(crate) fn try_sync_enter<const CALL: u32, const SINCE_5_17: bool>(
    ctx: &TracePointContext,
) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // The command-name filter is applied on return, once per call.
    if !tgid_selected((pid_tgid >> 32) as u32) {
        return Ok(());
    }
    let Some(mut pending) = target::<CALL, SINCE_5_17>(ctx)? else {
        return Ok(());
    };
    // SAFETY: no arguments.
    pending.start_ns = unsafe { bpf_ktime_get_boot_ns() };
    PENDING_SYNC
        .insert(&(pid_tgid as u32), &pending, 0)
        .map_err(|err| err as i64)
}

pub(crate) fn try_sync_exit<const SINCE_5_17: bool>(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: a plain value copied out at once.
    let Some(mut pending) = (unsafe { PENDING_SYNC.get(&tid) }).copied() else {
        return Ok(());
    };
    // Gone either way; an entry another thread reused would only be
    // overwritten at its own entry.
    let _removed = PENDING_SYNC.remove(&tid);
    if pending.unresolved != 0 {
        let (start, len) = (pending.first_page, pending.pages);
        // Busy again, or unmapped during the call: the record is lost,
        // and counted so.
        if msync_target::<SINCE_5_17>(start, len, &mut pending) != VmaLookup::Found {
            bump(counter::VMA_LOOKUP_FAILED);
            return Ok(());
        }
    }
    let ret = arg(ctx, 0)? as i64;
    let mut comm = [0u8; TASK_COMM_LEN];
    if !selected_current_task(pid_tgid, &mut comm)? {
        return Ok(());
    }
    let mut creds = Credentials::default();
    current_credentials_into(&mut creds);
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let flags = commit_flags(size_of::<SyncEvent>());
    let Some(mut entry) = EVENTS.reserve::<SyncEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        bump(counter::RINGBUF_FULL_OTHER_EVENTS);
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    // SAFETY: reserved ring-buffer memory of the right size, filled in place.
    unsafe {
        fill_header(
            &mut (*event).header,
            RecordKind::Sync,
            pid_tgid,
            &pending.file,
            now,
            WriterIdentity {
                comm: &comm,
                cgroup_id: current_cgroup_id(),
                creds: &creds,
            },
        );
        (*event).call = pending.call;
        (*event)._pad = 0;
        (*event).ret = ret;
        (*event).latency_ns = now.saturating_sub(pending.start_ns);
        (*event).first_page = pending.first_page;
        (*event).pages = pending.pages;
    }
    entry.submit(flags);
    count_submitted(size_of::<SyncEvent>());
    Ok(())
}

#[tracepoint]
pub fn mw_sys_enter_msync(ctx: TracePointContext) -> u32 {
    count_failure(try_sync_enter::<{ sync_call::MSYNC }, true>(&ctx));
    0
}

/// [`mw_sys_enter_msync`] for Linux 5.10 to 5.16 (see `compat`).
#[tracepoint]
pub fn mw_sys_enter_msync_5_10(ctx: TracePointContext) -> u32 {
    count_failure(try_sync_enter::<{ sync_call::MSYNC }, false>(&ctx));
    0
}

#[tracepoint]
pub fn mw_sys_enter_fsync(ctx: TracePointContext) -> u32 {
    count_failure(try_sync_enter::<{ sync_call::FSYNC }, true>(&ctx));
    0
}

#[tracepoint]
pub fn mw_sys_enter_fdatasync(ctx: TracePointContext) -> u32 {
    count_failure(try_sync_enter::<{ sync_call::FDATASYNC }, true>(&ctx));
    0
}

#[tracepoint]
pub fn mw_sys_enter_sync_file_range(ctx: TracePointContext) -> u32 {
    count_failure(try_sync_enter::<{ sync_call::SYNC_FILE_RANGE }, true>(&ctx));
    0
}

/// The four calls' exits: one program attached to each exit tracepoint
/// (their returns read alike), verified once at start-up, not four times.
#[tracepoint]
pub fn mw_sys_exit_sync(ctx: TracePointContext) -> u32 {
    count_failure(try_sync_exit::<true>(&ctx));
    0
}

/// [`mw_sys_exit_sync`] for Linux 5.10 to 5.16 (see `compat`).
#[tracepoint]
pub fn mw_sys_exit_sync_5_10(ctx: TracePointContext) -> u32 {
    count_failure(try_sync_exit::<false>(&ctx));
    0
}
