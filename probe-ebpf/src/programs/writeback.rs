//! Dirtying and writeback of files already seen: folios dirtied,
//! pages written back, writeback start and end, dirty-to-clean latency.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_boot_ns,
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use probe_common::{counter, FileKey, EXT4_SUPER_MAGIC, LATENCY_SUM_SLOT};

use crate::{
    folio::report_new_folio_span,
    kernel::{inode_key, load_typed, read_kernel, typed_folio_pages, typed_inode_key, EEXIST},
    maps::{bump, count_failure, DIRTY_SINCE, FILE_STATS, WRITEBACK_LATENCY},
    stacks::CallSite,
    stats::{add_shared, add_written_back, keep_later},
};

pub(crate) fn try_dirty_folio<const TAKE_STACKS: bool>(
    ctx: &BtfTracePointContext,
) -> Result<(), i64> {
    let folio: *const u8 = ctx.arg(0);
    let mapping: *const u8 = ctx.arg(1);
    // The verifier allows no arithmetic on a pointer that may be null.
    if folio.is_null() || mapping.is_null() {
        return Ok(());
    }
    let host_at = offset!(mapping_host);
    // SAFETY: `address_space.host`, at its BTF offset.
    let host: *const u8 = unsafe { load_typed(mapping, host_at) };
    let Some(key) = typed_inode_key(host) else {
        return Ok(());
    };
    // Only files already seen through a write fault: write(2) traffic never
    // creates entries.
    let Some(stats) = FILE_STATS.get_ptr_mut(&key) else {
        return Ok(());
    };
    let pages = typed_folio_pages(folio);
    // SAFETY: a value of the shared per-file map.
    unsafe {
        add_shared(&raw mut (*stats).folios_dirtied, 1);
        add_shared(&raw mut (*stats).pages_dirtied, pages);
    }
    // The clock only where a time is kept (it costs ~100 ns here): the
    // first dirtying since the last completed writeback, which a lookup
    // finds first (a refused insert takes the bucket lock), and new spans.
    // SAFETY: read-only lookup of a plain u64 value.
    if unsafe { DIRTY_SINCE.get(&key) }.is_none() {
        // SAFETY: no arguments.
        let now = unsafe { bpf_ktime_get_boot_ns() };
        match DIRTY_SINCE.insert(&key, &now, BPF_NOEXIST as u64) {
            // Another CPU's folio of the file came first: its time stands.
            Ok(()) => {}
            Err(err) if err as i64 == -EEXIST => {}
            Err(_) => bump(counter::PROBE_ERRORS),
        }
    }
    if pages > 1 {
        let index_at = offset!(folio_index);
        // SAFETY: `folio.index`, at its BTF offset.
        let index: u64 = unsafe { load_typed(folio, index_at) };
        report_new_folio_span(CallSite::<TAKE_STACKS>::of(ctx), &key, index, pages);
    }
    Ok(())
}

/// A folio went clean to dirty (`folio_account_dirtied`), once per folio
/// an mmap or write(2) dirties. tp_btf, not a raw tracepoint: its typed
/// arguments allow direct loads, where a raw one needs a
/// `bpf_probe_read_kernel` call (~45 ns here) per field.
#[btf_tracepoint(function = "writeback_dirty_folio")]
pub fn mw_writeback_dirty_folio(ctx: BtfTracePointContext) -> i32 {
    count_failure(try_dirty_folio::<false>(&ctx));
    0
}

/// [`mw_writeback_dirty_folio`] taking call-site stacks (`--stacks`; see
/// `stacks`): a span a write fault brought in is reported here.
#[btf_tracepoint(function = "writeback_dirty_folio")]
pub fn mw_writeback_dirty_folio_stacks(ctx: BtfTracePointContext) -> i32 {
    count_failure(try_dirty_folio::<true>(&ctx));
    0
}

pub(crate) fn try_writeback_single_inode(ctx: &RawTracePointContext) -> Result<(), i64> {
    let inode: u64 = ctx.arg(0);
    let wbc: u64 = ctx.arg(1);
    let nr_to_write: i64 = ctx.arg(2);
    let (key, superblock) = inode_key(inode)?;
    // ext4 reports its pages itself (ext4_writepages_result), on every path
    // including fsync and msync; counting here too would count twice.
    let magic: u64 = read_kernel(superblock, offset!(sb_s_magic))?;
    if magic == EXT4_SUPER_MAGIC {
        return Ok(());
    }
    let left: i64 = read_kernel(wbc, offset!(wbc_nr_to_write))?;
    if nr_to_write > left {
        add_written_back(&key, (nr_to_write - left) as u64);
    }
    Ok(())
}

/// The flusher (or sync(2)) wrote an inode's pages.
#[raw_tracepoint(tracepoint = "writeback_single_inode")]
pub fn mw_writeback_single_inode(ctx: RawTracePointContext) -> i32 {
    count_failure(try_writeback_single_inode(&ctx));
    0
}

/// Raw `ext4_writepages_result(inode, wbc, ret, pages_written)`: the inode
/// pointer gives the generation, which the classic format lacks.
pub(crate) fn try_ext4_writepages_result(ctx: &RawTracePointContext) -> Result<(), i64> {
    let (key, _) = inode_key(ctx.arg(0))?;
    let written: i64 = ctx.arg(3);
    let written = written as i32;
    if written > 0 {
        add_written_back(&key, written as u64);
    }
    Ok(())
}

#[raw_tracepoint(tracepoint = "ext4_writepages_result")]
pub fn mw_ext4_writepages_result(ctx: RawTracePointContext) -> i32 {
    count_failure(try_ext4_writepages_result(&ctx));
    0
}

/// Raw tracepoints `sb_{mark,clear}_inode_writeback(struct inode *)`: the
/// classic formats differ between kernels (6.1 has no device number).
pub(crate) fn try_inode_writeback(ctx: &RawTracePointContext, started: bool) -> Result<(), i64> {
    let (key, _) = inode_key(ctx.arg(0))?;
    let Some(stats) = FILE_STATS.get_ptr_mut(&key) else {
        return Ok(());
    };
    // SAFETY: a value of the shared per-file map.
    unsafe {
        let now = bpf_ktime_get_boot_ns();
        if started {
            add_shared(&raw mut (*stats).writeback_starts, 1);
            keep_later(&raw mut (*stats).last_writeback_start_boot_ns, now);
        } else {
            add_shared(&raw mut (*stats).writeback_ends, 1);
            keep_later(&raw mut (*stats).last_writeback_end_boot_ns, now);
            record_writeback_latency(&key, now);
        }
    }
    Ok(())
}

/// The file's writeback completed: how long since it was first dirtied?
pub(crate) fn record_writeback_latency(key: &FileKey, now: u64) {
    // SAFETY: read-only lookup of a plain u64, copied out at once.
    let Some(since) = (unsafe { DIRTY_SINCE.get(key) }).copied() else {
        return;
    };
    // Absent only if another CPU took it an instant ago: no error.
    let _ = DIRTY_SINCE.remove(key);
    let latency = now.saturating_sub(since);
    if let Some(slot) = WRITEBACK_LATENCY.get_ptr_mut(log2(latency)) {
        // SAFETY: per-CPU slot.
        unsafe { *slot += 1 };
    }
    if let Some(sum) = WRITEBACK_LATENCY.get_ptr_mut(LATENCY_SUM_SLOT) {
        // SAFETY: per-CPU slot.
        unsafe { *sum += latency };
    }
}

/// floor(log2(value)), 0 for 0: a branch-only binary search the verifier
/// follows easily.
#[inline(always)]
pub(crate) fn log2(mut value: u64) -> u32 {
    let mut result = 0;
    for shift in [32u32, 16, 8, 4, 2, 1] {
        if value >> shift != 0 {
            value >>= shift;
            result += shift;
        }
    }
    result
}

/// The inode's first folio went under writeback.
#[raw_tracepoint(tracepoint = "sb_mark_inode_writeback")]
pub fn mw_sb_mark_inode_writeback(ctx: RawTracePointContext) -> i32 {
    count_failure(try_inode_writeback(&ctx, true));
    0
}

/// The inode's last folio under writeback completed.
#[raw_tracepoint(tracepoint = "sb_clear_inode_writeback")]
pub fn mw_sb_clear_inode_writeback(ctx: RawTracePointContext) -> i32 {
    count_failure(try_inode_writeback(&ctx, false));
    0
}
