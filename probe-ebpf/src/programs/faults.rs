//! The page-fault tracepoints: write faults (tracepoint backend), read
//! faults that map tmpfs pages writable, and fault-around windows. What
//! mprotect makes writable is in `mprotect`.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use aya_log_ebpf::debug;
use probe_common::{
    counter, RecordKind, RAMFS_MAGIC, TMPFS_MAGIC, VM_SHARED, VM_WRITE, X86_PF_PROT, X86_PF_WRITE,
};

use crate::{
    compat::current_tgid,
    filter::{current_writer, selected_current_task, tgid_selected},
    kernel::{
        current_cgroup_id, current_credentials_into, inode_key, pages_of, read_kernel,
        USER_ADDRESS_LIMIT,
    },
    maps::{bump, count_failure, LAST_READ_FAULT, SHARED_MAPPERS},
    record::{announce_file, fill_header, record_write, submit_page_event, WriterIdentity},
    scratch::{fault_scratch, FaultScratch},
    stacks::{CallSite, NoStack},
    vma::{find_mapping, find_vma_locked, Mapping, VmaInfo},
};

/// Out of line, as are the paths below it: Linux 6.1's verifier adds the
/// frames of the deepest call chain against 512 bytes.
#[inline(never)]
pub(crate) fn try_write_fault<const SINCE_5_17: bool, const TAKE_STACKS: bool>(
    site: CallSite<TAKE_STACKS>,
    address: u64,
    error_code: u64,
) -> Result<(), i64> {
    if address >= USER_ADDRESS_LIMIT {
        return Ok(());
    }
    if error_code & X86_PF_WRITE == 0 {
        return read_fault::<SINCE_5_17, TAKE_STACKS>(site, address);
    }
    // Processes outside --pid / -- CMD: no lookup at all.
    let tgid = current_tgid::<SINCE_5_17>();
    if !tgid_selected(tgid) {
        return Ok(());
    }
    let scratch = fault_scratch()?;
    match find_mapping::<SINCE_5_17>(address, tgid, scratch) {
        // Anonymous memory (most faults on a host): done before any other
        // work.
        Mapping::Anonymous => return Ok(()),
        Mapping::File => {}
        Mapping::Unknown => {
            bump(counter::VMA_WALK_FALLBACKS);
            if !find_vma_locked::<SINCE_5_17>(address, &mut scratch.info) {
                return Ok(());
            }
        }
    }
    // Anonymous (from the slow path), or a store the kernel will refuse.
    if scratch.info.file == 0 || scratch.info.flags & VM_WRITE == 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(now) = current_writer::<SINCE_5_17>(pid_tgid, scratch.fault.mm, scratch)? else {
        return Ok(());
    };
    scratch.fault.pid_tgid = pid_tgid;
    scratch.fault.now = now;
    scratch.fault.address = address;
    scratch.fault.page =
        scratch.info.pgoff + ((address - scratch.info.start) >> config!(page_shift));
    // Not a protection fault: no page was mapped there. The kernel may map
    // the whole large folio around it.
    scratch.fault.not_present = u64::from(error_code & X86_PF_PROT == 0);
    record_write(site, scratch);
    Ok(())
}

/// A read fault of a process with a shared writable mapping: on a file
/// without write-notify (tmpfs, shmem, ramfs) the fault maps the page and
/// its fault-around window writable, and later stores take no fault. They
/// are reported as possibly written.
///
/// Out of line, and without the bpf_find_vma fallback: Linux 6.1's verifier
/// adds every frame of the deepest call chain against 512 bytes. A walk
/// that fails is counted (`VMA_WALK_FALLBACKS`) and the fault skipped.
#[inline(never)]
pub(crate) fn try_read_fault<const SINCE_5_17: bool, const TAKE_STACKS: bool>(
    site: CallSite<TAKE_STACKS>,
    address: u64,
) -> Result<(), i64> {
    let scratch = fault_scratch()?;
    let pid_tgid = bpf_get_current_pid_tgid();
    if !selected_current_task(pid_tgid, &mut scratch.fault.comm)? {
        return Ok(());
    }
    match find_mapping::<SINCE_5_17>(address, (pid_tgid >> 32) as u32, scratch) {
        Mapping::Anonymous => return Ok(()),
        Mapping::File => {}
        Mapping::Unknown => {
            bump(counter::VMA_WALK_FALLBACKS);
            return Ok(());
        }
    }
    let info = &scratch.info;
    if info.flags & (VM_SHARED | VM_WRITE) != VM_SHARED | VM_WRITE {
        return Ok(());
    }
    let magic: u64 = read_kernel(info.superblock, offset!(sb_s_magic))?;
    if magic != TMPFS_MAGIC && magic != RAMFS_MAGIC {
        return Ok(());
    }
    // Afresh: a cached mapping's size may be stale.
    let size: u64 = read_kernel(info.inode, offset!(inode_i_size))?;
    let Some((first, last)) = info.mapped_range().fault_around(
        address,
        config!(page_shift),
        u64::from(config!(fault_around_pages)),
        pages_of(size),
    ) else {
        return Ok(());
    };
    report_possible_write(site, scratch, pid_tgid, first, last);
    Ok(())
}

/// Reports pages `first..=last` of the file in `scratch.info` as possibly
/// written by the current task.
pub(crate) fn report_possible_write<const TAKE_STACKS: bool>(
    site: CallSite<TAKE_STACKS>,
    scratch: &mut FaultScratch,
    pid_tgid: u64,
    first: u64,
    last: u64,
) {
    bump(counter::POSSIBLE_WRITE_WINDOWS);
    report_pages(
        site,
        scratch,
        pid_tgid,
        RecordKind::PossibleWrite,
        first,
        last,
    );
}

/// Reports pages `first..=last` of the file in `scratch.info`, of record
/// `kind` (possibly written, or a span), by the current task. Inline: a
/// frame more on the read-fault paths would pass Linux 6.1's 512-byte
/// call-chain limit.
#[inline(always)]
pub(crate) fn report_pages<const TAKE_STACKS: bool>(
    site: CallSite<TAKE_STACKS>,
    scratch: &mut FaultScratch,
    pid_tgid: u64,
    kind: RecordKind,
    first: u64,
    last: u64,
) {
    announce_pages(scratch, pid_tgid, kind);
    // Not through report_first_use: one frame less for Linux 6.1's
    // 512-byte call-chain limit. Userspace deduplicates the pages.
    submit_page_event(
        &scratch.header,
        kind,
        first,
        last - first + 1,
        site.stack_id(),
    );
}

/// Fills `scratch.header` for records of `kind` about the file in
/// `scratch.info` by the current task, and announces the file.
#[inline(always)]
pub(crate) fn announce_pages(scratch: &mut FaultScratch, pid_tgid: u64, kind: RecordKind) {
    let now = page_header(scratch, pid_tgid, kind);
    let FaultScratch { info, header, .. } = scratch;
    announce_file(&info.file_key(), now, header, info);
}

/// Fills `scratch.header` for records of `kind` about the file in
/// `scratch.info` by the current task; returns the time in it.
#[inline(always)]
fn page_header(scratch: &mut FaultScratch, pid_tgid: u64, kind: RecordKind) -> u64 {
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let FaultScratch {
        info,
        fault,
        header,
        ..
    } = scratch;
    // Not the write fault's cached writer: read faults and spans read them.
    current_credentials_into(&mut fault.creds);
    fill_header(
        header,
        kind,
        pid_tgid,
        &info.file_key(),
        now,
        WriterIdentity {
            comm: &fault.comm,
            cgroup_id: current_cgroup_id(),
            creds: &fault.creds,
        },
    );
    now
}

/// A read fault: only those of processes with a shared writable mapping
/// can map pages writable without a later write fault.
#[inline(always)]
pub(crate) fn read_fault<const SINCE_5_17: bool, const TAKE_STACKS: bool>(
    site: CallSite<TAKE_STACKS>,
    address: u64,
) -> Result<(), i64> {
    note_read_fault(address);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: read-only lookup of a plain u8 value.
    if unsafe { SHARED_MAPPERS.get(&tgid) }.is_some() {
        return try_read_fault::<SINCE_5_17, TAKE_STACKS>(site, address);
    }
    Ok(())
}

/// Remembers a user read fault for `mm_filemap_map_pages`.
#[inline(always)]
pub(crate) fn note_read_fault(address: u64) {
    if let Some(slot) = LAST_READ_FAULT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a one-entry per-CPU array.
        unsafe { *slot = [bpf_get_current_pid_tgid(), address] };
    }
}

/// `exceptions:page_fault_{user,kernel}` as raw tracepoints: (address,
/// regs, error_code), read straight from the context. The classic
/// tracepoint would first copy its record through the perf buffer.
#[inline(always)]
pub(crate) fn fault_args(ctx: &RawTracePointContext) -> (u64, u64) {
    (ctx.arg(0), ctx.arg(2))
}

/// Attached to both `page_fault_user` and `page_fault_kernel` (the same
/// arguments): kernel-mode faults on user addresses, read(2) or a
/// copy_to_user into a shared mapping, store into the file just as a user
/// store does. One program for both: the verifier checks it once, which is
/// most of mmapwatch's start-up.
#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn mw_page_fault_user(ctx: RawTracePointContext) -> i32 {
    write_fault::<true, false>(&ctx)
}

/// [`mw_page_fault_user`] taking call-site stacks (`--stacks`; see `stacks`).
#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn mw_page_fault_user_stacks(ctx: RawTracePointContext) -> i32 {
    write_fault::<true, true>(&ctx)
}

/// [`mw_page_fault_user`] for Linux 5.10 to 5.16 (see `compat`).
#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn mw_page_fault_user_5_10(ctx: RawTracePointContext) -> i32 {
    write_fault::<false, false>(&ctx)
}

/// [`mw_page_fault_user_5_10`] taking call-site stacks.
#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn mw_page_fault_user_5_10_stacks(ctx: RawTracePointContext) -> i32 {
    write_fault::<false, true>(&ctx)
}

#[inline(always)]
fn write_fault<const SINCE_5_17: bool, const TAKE_STACKS: bool>(ctx: &RawTracePointContext) -> i32 {
    let (address, error_code) = fault_args(ctx);
    let site = CallSite::<TAKE_STACKS>::of(ctx);
    if let Err(err) = try_write_fault::<SINCE_5_17, TAKE_STACKS>(site, address, error_code) {
        log_failed_read(ctx, err);
    }
    0
}

/// Counted, and logged at debug level. Out of line: the log record's
/// frame stays off the fault path's call chain, whose frames Linux 6.1's
/// verifier adds against 512 bytes.
#[inline(never)]
fn log_failed_read(ctx: &RawTracePointContext, err: i64) {
    bump(counter::PROBE_ERRORS);
    debug!(ctx, "page_fault_user: kernel read failed: {}", err);
}

/// The function-hook backends' read faults (their hooks see the writes):
/// tmpfs pages a read fault maps writable are possibly written.
#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn mw_page_fault_user_reads(ctx: RawTracePointContext) -> i32 {
    let (address, error_code) = fault_args(&ctx);
    if address < USER_ADDRESS_LIMIT && error_code & X86_PF_WRITE == 0 {
        count_failure(read_fault::<true, false>(NoStack::of(&ctx), address));
    }
    0
}

/// [`mw_page_fault_user_reads`] for Linux 5.10 to 5.16 (see `compat`).
#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn mw_page_fault_user_reads_5_10(ctx: RawTracePointContext) -> i32 {
    let (address, error_code) = fault_args(&ctx);
    if address < USER_ADDRESS_LIMIT && error_code & X86_PF_WRITE == 0 {
        count_failure(read_fault::<false, false>(NoStack::of(&ctx), address));
    }
    0
}

/// Raw `mm_filemap_map_pages(mapping, index, last_index)`: fault-around
/// mapped cached pages `index..=last_index` of a file. On a filesystem
/// without write-notify (tmpfs, shmem, ramfs) a shared writable mapping
/// gets them writable at once, so stores to them never fault: they are
/// reported as possibly written. Most calls end at the first check: files
/// nobody maps shared and writable.
pub(crate) fn try_filemap_map_pages(ctx: &RawTracePointContext) -> Result<(), i64> {
    let mapping: u64 = ctx.arg(0);
    let writable_mappings: i32 = read_kernel(mapping, offset!(mapping_i_mmap_writable))?;
    if writable_mappings <= 0 {
        return Ok(());
    }
    let host: u64 = read_kernel(mapping, offset!(mapping_host))?;
    let (key, superblock) = inode_key(host)?;
    let magic: u64 = read_kernel(superblock, offset!(sb_s_magic))?;
    if magic != TMPFS_MAGIC && magic != RAMFS_MAGIC {
        return Ok(());
    }
    let scratch = fault_scratch()?;
    let pid_tgid = bpf_get_current_pid_tgid();
    if !selected_current_task(pid_tgid, &mut scratch.fault.comm)? {
        return Ok(());
    }
    // A fault-around inside a user read fault of this thread was handled
    // at the fault tracepoint, which knows the mapping. Any other (from
    // get_user_pages, or after the task moved CPU) cannot tell which
    // mapping it fills: the file's shared writable mapping is taken to be
    // the one, and the window is reported as unverified.
    let last_fault = LAST_READ_FAULT.get(0).copied().unwrap_or([0, 0]);
    if last_fault[0] == pid_tgid {
        return Ok(());
    }
    bump(counter::POSSIBLE_WRITE_UNVERIFIED);
    let (first, last): (u64, u64) = (ctx.arg(1), ctx.arg(2));
    scratch.info = VmaInfo::default();
    scratch.info.superblock = superblock;
    scratch.info.dev = key.dev;
    scratch.info.generation = key.generation;
    scratch.info.ino = key.ino;
    scratch.info.size = read_kernel(host, offset!(inode_i_size))?;
    let pages = pages_of(scratch.info.size);
    if first >= pages || last < first {
        return Ok(());
    }
    report_possible_write(
        NoStack::of(ctx),
        scratch,
        pid_tgid,
        first,
        last.min(pages - 1),
    );
    Ok(())
}

#[raw_tracepoint(tracepoint = "mm_filemap_map_pages")]
pub fn mw_mm_filemap_map_pages(ctx: RawTracePointContext) -> i32 {
    count_failure(try_filemap_map_pages(&ctx));
    0
}
