//! Large folios: a write fault that maps a large folio writable makes
//! all its pages writable, so the span is reported with the page.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns};
use probe_common::{
    counter, Credentials, EventHeader, FileKey, FolioRoom, PendingFault, RecordKind, PMD_PAGES,
    XA_CHUNK_MASK, XA_MAX_DEPTH,
};

use crate::{
    dedup::report_first_use,
    kernel::{current_credentials_into, folio_pages, read_kernel},
    maps::{bump, PENDING_FAULT},
    record::{header, header_file},
    stacks::CallSite,
    vma::VmaInfo,
};

/// How far a folio around the faulting page may reach and still be mapped
/// whole: inside the mapping and inside the page table (2 MiB of address
/// space) that holds the address.
#[inline(always)]
pub(crate) fn folio_room(info: &VmaInfo, address: u64) -> FolioRoom {
    info.mapped_range().folio_room(address, config!(page_shift))
}

/// Whether a file's page cache may hold large folios, for the last
/// mapping asked about on this CPU. Kept for one clock tick: the flag
/// changes without any change to the process's mappings (ext4 switches an
/// inode's data journalling, and with it large folios), and one
/// `bpf_probe_read_kernel` less per not-present shared fault is ~30 ns.
#[repr(C)]
pub(crate) struct LargeFolioCache {
    pub(crate) mapping: u64,
    pub(crate) tick: u64,
    pub(crate) large: u64,
}

/// Whether the page cache of `mapping` may hold large folios (true where
/// the kernel has no such flag, or it cannot be read: the walk decides).
#[inline(always)]
pub(crate) fn may_hold_large_folios(mapping: u64, tick: u64, cache: &mut LargeFolioCache) -> bool {
    let mask = offset!(large_folio_mask);
    if mask == 0 {
        return true;
    }
    if cache.mapping != mapping || cache.tick != tick {
        let Ok(flags) = read_kernel::<u64>(mapping, offset!(mapping_flags)) else {
            return true;
        };
        cache.mapping = mapping;
        cache.tick = tick;
        cache.large = u64::from(flags & mask != 0);
    }
    cache.large != 0
}

/// A shared write fault on a page not mapped yet, in a file whose page
/// cache may hold large folios (see [`may_hold_large_folios`]): the kernel
/// maps the whole large folio holding the page writable when it fits the
/// room, and later stores to its other pages never fault. A folio already
/// in the page cache is found now (returned as its first page and size,
/// when the fault maps it whole); a new one when the fault dirties it.
#[inline(never)]
pub(crate) fn note_folio_span(
    header: &EventHeader,
    mapping: u64,
    pending: &mut PendingFault,
) -> Option<(u64, u64)> {
    let (page, room) = (pending.page, pending.room);
    match page_cache_folio(mapping, page) {
        Some(folio) => {
            let pages = folio_pages(folio).ok()?;
            let first = read_kernel::<u64>(folio, offset!(folio_index)).ok()?;
            (pages > 1 && room.fits(page, first, pages)).then_some((first, pages))
        }
        None => {
            pending.pid_tgid = (u64::from(header.tgid) << 32) | u64::from(header.pid);
            pending.file = header_file(header);
            // An LRU map evicts an old entry rather than fail.
            let _ = PENDING_FAULT.insert(&header.pid, pending, 0);
            None
        }
    }
}

/// A first write fault on a page already mapped read-only (a protection
/// fault): if the page lies in a 2 MiB folio mapped whole by a PMD, the
/// kernel cannot make one page of a PMD writable. It drops the PMD
/// (`wp_huge_pmd` splits a file PMD by unmapping it) and the retried fault
/// maps the folio again whole and writable (`finish_fault` ->
/// `do_set_pmd`): the other 511 pages take stores without a fault. Returns
/// the folio's first page and size then.
///
/// Whether this mapping is the PMD one is read from the folio's count of
/// PMD mappings (the page tables are not walked): a folio mapped by a PMD
/// elsewhere and by page-table entries here is reported as a span too,
/// which over-reports (labelled) rather than misses.
#[inline(never)]
pub(crate) fn pmd_mapped_folio(mapping: u64, page: u64, room: FolioRoom) -> Option<(u64, u64)> {
    if !has_offsets!(PMD_MAPCOUNT) {
        return None;
    }
    let mapcount_offset = offset!(folio_entire_mapcount);
    let folio = page_cache_folio(mapping, page)?;
    let pages = folio_pages(folio).ok()?;
    if pages != PMD_PAGES {
        return None;
    }
    let first = read_kernel::<u64>(folio, offset!(folio_index)).ok()?;
    if !room.fits(page, first, pages) {
        return None;
    }
    // Starts at -1: 0 or more is at least one PMD mapping.
    let pmd_mappings = read_kernel::<i32>(folio, mapcount_offset).ok()?;
    (pmd_mappings >= 0).then_some((first, pages))
}

/// The folio caching `index` of a file, from its page-cache xarray
/// (lib/xarray.c's encoding), or None when the page is not cached. Nodes
/// and folios are freed by RCU, under which BPF programs run; the folio is
/// checked to still belong to the mapping.
#[inline(never)]
pub(crate) fn page_cache_folio(mapping: u64, index: u64) -> Option<u64> {
    let mut entry: u64 = read_kernel(mapping, offset!(mapping_xa_head)).ok()?;
    let mut depth = 0;
    // An internal entry (low bits 0b10) above 4096 is a node.
    while entry & 3 == 2 && entry > 4096 && depth < XA_MAX_DEPTH {
        depth += 1;
        let node = entry - 2;
        let shift: u8 = read_kernel(node, offset!(xa_node_shift)).ok()?;
        let shift = u64::from(shift);
        if shift < 64 && depth == 1 && (index >> shift) > XA_CHUNK_MASK {
            return None;
        }
        let slot = (index >> (shift & 63)) & XA_CHUNK_MASK;
        let slots = offset!(xa_node_slots);
        entry = read_kernel(node, slots + slot * 8).ok()?;
        // A sibling entry points at the slot holding a multi-slot folio.
        if entry & 3 == 2 && entry < (XA_CHUNK_MASK << 2) + 2 {
            entry = read_kernel(node, slots + ((entry >> 2) & XA_CHUNK_MASK) * 8).ok()?;
        }
        if shift == 0 {
            break;
        }
    }
    // A head that is no node holds index 0 only.
    if depth == 0 && index != 0 {
        return None;
    }
    // Empty, a value (shadow) entry or another internal entry.
    if entry < 4096 || entry & 3 != 0 {
        return None;
    }
    let owner: u64 = read_kernel(entry, offset!(folio_mapping)).ok()?;
    (owner == mapping).then_some(entry)
}

/// A shared write fault of this thread on a page not yet cached brought
/// in this large folio, and dirties it now: if the folio fits the fault's
/// room, the kernel maps it writable whole, so later stores to any of its
/// pages never fault. Report the whole span.
pub(crate) fn report_new_folio_span<const TAKE_STACKS: bool>(
    site: CallSite<TAKE_STACKS>,
    key: &FileKey,
    index: u64,
    pages: u64,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let thread = pid_tgid as u32;
    // SAFETY: read-only lookup of a plain value, copied out at once.
    let Some(pending) = (unsafe { PENDING_FAULT.get(&thread) }).copied() else {
        return;
    };
    if pending.pid_tgid != pid_tgid || pending.file != *key {
        return;
    }
    let _ = PENDING_FAULT.remove(&thread);
    if !pending.room.fits(pending.page, index, pages) {
        return;
    }
    bump(counter::FOLIO_SPANS);
    let Ok(comm) = bpf_get_current_comm() else {
        return;
    };
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let mut creds = Credentials::default();
    current_credentials_into(&mut creds);
    let header = header(RecordKind::FolioSpan, pid_tgid, key, now, &comm, &creds);
    report_first_use(site, &header, RecordKind::FolioSpan, index, pages);
}
