//! What `mprotect` to writable makes writable without a later fault: tmpfs
//! pages already mapped (possibly written), and dirty large folios of
//! ext4/xfs mapped whole (spans).

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, generated::bpf_loop};
use probe_common::{
    counter, RecordKind, NO_STACK, RAMFS_MAGIC, TMPFS_MAGIC, VM_MAYWRITE, VM_SHARED,
};

use super::faults::announce_pages;
use crate::{
    filter::selected_current_task,
    folio::page_cache_folio,
    kernel::{folio_pages, pages_of, read_kernel},
    maps::{bump, FOLIO_WALK},
    record::submit_page_event,
    scratch::{fault_scratch, FaultScratch},
    vma::{find_mapping, find_vma_locked, Mapping},
};

/// What `mprotect(start, len, PROT_WRITE)` makes writable in a shared
/// mapping that may be written (`VM_MAYWRITE`): the file in
/// `scratch.info`, its pages `first..=last` in the mapping that holds
/// `start`, and whether its filesystem lacks write-notify (tmpfs, ramfs).
struct ProtectedRange {
    pid_tgid: u64,
    first: u64,
    last: u64,
    without_write_notify: bool,
}

/// Looks the mapping up as the call finds it (a call the kernel then
/// refuses over-reports only): None when no file page of a shared mapping
/// is made writable.
#[inline(always)]
fn protected_range<const SINCE_5_17: bool>(
    scratch: &mut FaultScratch,
    start: u64,
    len: u64,
) -> Result<Option<ProtectedRange>, i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !selected_current_task(pid_tgid, &mut scratch.fault.comm)? {
        return Ok(None);
    }
    // The lock-free walk first: bpf_find_vma only tries the mmap lock,
    // which another thread of a busy process often holds (glibc grows its
    // arenas with mprotect while other threads map).
    match find_mapping::<SINCE_5_17>(start, (pid_tgid >> 32) as u32, scratch) {
        Mapping::Anonymous => return Ok(None),
        Mapping::File => {}
        Mapping::Unknown => {
            if !find_vma_locked::<SINCE_5_17>(start, &mut scratch.info) {
                return Ok(None);
            }
        }
    }
    let info = &scratch.info;
    let wanted = VM_SHARED | VM_MAYWRITE;
    if info.file == 0 || info.flags & wanted != wanted || start < info.start || start >= info.end {
        return Ok(None);
    }
    let magic: u64 = read_kernel(info.superblock, offset!(sb_s_magic))?;
    let end = start.saturating_add(len).min(info.end);
    let size: u64 = read_kernel(info.inode, offset!(inode_i_size))?;
    let Some((first, last)) =
        info.mapped_range()
            .file_pages_between(start, end, config!(page_shift), pages_of(size))
    else {
        return Ok(None);
    };
    Ok(Some(ProtectedRange {
        pid_tgid,
        first,
        last,
        without_write_notify: magic == TMPFS_MAGIC || magic == RAMFS_MAGIC,
    }))
}

/// `mprotect(start, len, prot)` asking for PROT_WRITE, first of two
/// programs: announces the file (named while its writer lives: it may
/// exit at once), and on a filesystem without write-notify reports the
/// range as possibly written: mprotect upgrades the entries of the pages
/// already mapped, and stores to them take no fault (pages not mapped yet
/// fault when stored to, and are reported as written then). With
/// write-notify, it leaves the range to the second program.
#[inline(never)]
pub(crate) fn try_mprotect_writable<const SINCE_5_17: bool>(
    start: u64,
    len: u64,
) -> Result<(), i64> {
    let scratch = fault_scratch()?;
    let Some(range) = protected_range::<SINCE_5_17>(scratch, start, len)? else {
        return Ok(());
    };
    let kind = if range.without_write_notify {
        RecordKind::PossibleWrite
    } else {
        RecordKind::FolioSpan
    };
    announce_pages(scratch, range.pid_tgid, kind);
    if range.without_write_notify {
        bump(counter::POSSIBLE_WRITE_WINDOWS);
        submit_page_event(
            &scratch.header,
            kind,
            range.first,
            range.last - range.first + 1,
            // A window mprotect opens is not a store: no stack.
            NO_STACK,
        );
    } else if let Some(request) = FOLIO_WALK.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a one-entry per-CPU array; the two
        // programs run one after the other on this CPU.
        let request = unsafe { &mut *request };
        request.pid_tgid = range.pid_tgid;
        request.mapping = scratch.info.mapping;
        request.first = range.first;
        request.last = range.last;
        request.header = scratch.header;
    }
    Ok(())
}

/// The second program on the same call, attached after the first: with
/// write-notify, the range's dirty large folios (see
/// [`report_dirty_large_folios`]), from the range the first left in
/// [`FOLIO_WALK`]. Apart from it because the verifier's work on the folio
/// walk and on the file's announcement multiply when they share one
/// program (~330 ms at start-up), and add when they do not.
#[inline(never)]
pub(crate) fn try_mprotect_folios() -> Result<(), i64> {
    let Some(request) = FOLIO_WALK.get_ptr_mut(0) else {
        return Ok(());
    };
    // SAFETY: as in try_mprotect_writable.
    let request = unsafe { &mut *request };
    if request.pid_tgid != bpf_get_current_pid_tgid() || request.mapping == 0 {
        return Ok(());
    }
    request.pid_tgid = 0;
    report_dirty_large_folios(request.mapping, request.first, request.last);
    Ok(())
}

/// Folios (or holes) looked at per mprotect: a bounded walk, in `bpf_loop`
/// so that the verifier checks one step, not every step unrolled.
const MPROTECT_FOLIOS: u32 = 256;

/// With write-notify (ext4, xfs, ...), mprotect to writable upgrades the
/// page-table entries of a large folio together when one of them is dirty
/// (Linux 6.18 batches them): its other mapped pages take stores without a
/// fault. Each dirty large folio of pages `first..=last` (among the first
/// [`MPROTECT_FOLIOS`] folios or holes) is reported as a span: written at
/// kernel granularity, as a fault that maps a folio whole is. A folio
/// dirtied by another process is reported too: labelled, an over-report,
/// not a miss.
#[inline(never)]
fn report_dirty_large_folios(mapping: u64, first: u64, last: u64) {
    let mut walk = FolioWalk {
        mapping,
        index: first,
        last,
    };
    // SAFETY: the callback is a subprogram with the signature bpf_loop
    // expects; its context lives on this stack across the call.
    unsafe {
        bpf_loop(
            MPROTECT_FOLIOS,
            folio_walk_step as *mut c_void,
            &mut walk as *mut FolioWalk as *mut c_void,
            0,
        )
    };
}

/// [`report_dirty_large_folios`]'s walk, on its stack.
#[repr(C)]
struct FolioWalk {
    mapping: u64,
    /// The next page to look at.
    index: u64,
    last: u64,
}

/// One folio or hole of the walk; 1 ends it.
#[inline(never)]
extern "C" fn folio_walk_step(_step: u64, data: *mut c_void) -> i64 {
    // SAFETY: `data` is the FolioWalk passed to bpf_loop.
    let walk = unsafe { &mut *(data as *mut FolioWalk) };
    if walk.index > walk.last {
        return 1;
    }
    let Some(folio) = page_cache_folio(walk.mapping, walk.index) else {
        walk.index += 1;
        return 0;
    };
    let (Ok(pages), Ok(folio_first), Ok(flags)) = (
        folio_pages(folio),
        read_kernel::<u64>(folio, offset!(folio_index)),
        read_kernel::<u64>(folio, offset!(folio_flags)),
    ) else {
        return 1;
    };
    let folio_last = folio_first.saturating_add(pages).saturating_sub(1);
    let dirty = flags & (1u64 << (offset!(pg_dirty_bit) & 63)) != 0;
    if pages > 1 && dirty && folio_last >= walk.index {
        let (from, to) = (folio_first.max(walk.index), folio_last.min(walk.last));
        // The header the first program filled when it announced the file.
        let Some(request) = FOLIO_WALK.get(0) else {
            return 1;
        };
        submit_page_event(
            &request.header,
            RecordKind::FolioSpan,
            from,
            to - from + 1,
            NO_STACK,
        );
    }
    // A folio that does not hold `index` (raced away): one page on.
    walk.index = folio_last.max(walk.index) + 1;
    0
}
