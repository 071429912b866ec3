//! First writes only: which pages of each file were reported, and by
//! which process first, in 512-page chunk bitmaps.

use aya_ebpf::bindings::BPF_NOEXIST;
use probe_common::{
    arith::dedup_bit, counter, EventHeader, PageChunk, PageChunkKey, RecordKind, WriterKey,
};

use crate::{
    kernel::EEXIST,
    maps::{bump, EMPTY_CHUNK, PAGE_SEEN, WRITERS},
    record::{header_file, submit_page_event},
    stacks::CallSite,
};

/// This CPU's copy of the dedup entry it used last. Bits only ever get
/// set, so a bit set here was reported: a repeated fault on the page by
/// the chunk's first writer needs no map lookup.
#[repr(C)]
pub(crate) struct ChunkCache {
    pub(crate) key: PageChunkKey,
    pub(crate) chunk: PageChunk,
}

/// Whether this CPU's copy of the dedup entry shows page `page` of
/// `kind` reported, with nothing left to do for this writer.
#[inline(always)]
pub(crate) fn reported_here(
    cache: &ChunkCache,
    header: &EventHeader,
    kind: RecordKind,
    page: u64,
) -> bool {
    let key = &cache.key;
    let (chunk, word, bit) = dedup_bit(page);
    if key.chunk != chunk || key.kind != kind as u32 || key.file != header_file(header) {
        return false;
    }
    let Some(reported) = cache.chunk.reported.get(word) else {
        return false;
    };
    reported & bit != 0 && (cache.chunk.first_tgid == header.tgid || kind == RecordKind::CowWrite)
}

/// Copies the dedup entry of `page` into this CPU's cache.
#[inline(never)]
pub(crate) fn cache_chunk(
    cache: &mut ChunkCache,
    header: &EventHeader,
    kind: RecordKind,
    page: u64,
) {
    cache.key = PageChunkKey {
        file: header_file(header),
        chunk: dedup_bit(page).0,
        kind: kind as u32,
        _pad: 0,
    };
    // SAFETY: a plain value of the dedup map, copied out at once.
    match unsafe { PAGE_SEEN.get(&cache.key) } {
        Some(chunk) => cache.chunk = *chunk,
        // Not kept (the map refused it): nothing cached.
        None => cache.key.kind = 0,
    }
}

/// Reports `pages` pages from `page` (one page, a folio span or a
/// possibly-written window) unless this process reported them already.
/// Another process touching them is reported as a new writer. `site`
/// gives the record its stack.
pub(crate) fn report_first_use<const TAKE_STACKS: bool>(
    site: CallSite<TAKE_STACKS>,
    header: &EventHeader,
    kind: RecordKind,
    page: u64,
    pages: u64,
) {
    let tgid = header.tgid;
    let file = header_file(header);
    let (chunk, word, bit) = dedup_bit(page);
    let chunk_key = PageChunkKey {
        file,
        chunk,
        kind: kind as u32,
        _pad: 0,
    };
    let Some(chunk) = PAGE_SEEN.get_ptr_mut(&chunk_key) else {
        new_chunk(site, &chunk_key, header, kind, page, pages);
        return;
    };
    // SAFETY: a value of the shared dedup map. Other CPUs may update the
    // same word at once; a bit lost that way only makes its page be
    // reported again, which userspace deduplicates (no atomic OR in BPF
    // before cpu v3).
    let chunk = unsafe { &mut *chunk };
    let Some(reported) = chunk.reported.get_mut(word) else {
        return;
    };
    if *reported & bit == 0 {
        *reported |= bit;
        submit_page_event(header, kind, page, pages, site.stack_id());
        return;
    }
    match chunk.first_tgid {
        // The chunk's first writer already writes this file.
        first_writer if first_writer == tgid => {}
        // Another process copying the same page privately modifies nothing:
        // only writers of the file itself are attributed.
        _ if kind == RecordKind::CowWrite => {}
        _ => {
            let writer_key = WriterKey {
                file,
                tgid,
                _pad: 0,
            };
            // SAFETY: read-only lookup of a plain u8 value.
            if unsafe { WRITERS.get(&writer_key) }.is_none() {
                match WRITERS.insert(&writer_key, &1, BPF_NOEXIST as u64) {
                    // A span or window goes out again whole: its pages are
                    // this process's too.
                    Ok(()) if kind == RecordKind::SharedWrite => {
                        submit_page_event(header, RecordKind::NewWriter, page, 1, site.stack_id())
                    }
                    Ok(()) => submit_page_event(header, kind, page, pages, site.stack_id()),
                    Err(err) if err as i64 == -EEXIST => {}
                    Err(_) => bump(counter::WRITER_MAP_FULL),
                }
            }
        }
    }
}

/// The first page reported of a chunk: creates its dedup entry (evicting
/// the least recently used one when full) and reports the page.
#[inline(always)]
pub(crate) fn new_chunk<const TAKE_STACKS: bool>(
    site: CallSite<TAKE_STACKS>,
    key: &PageChunkKey,
    header: &EventHeader,
    kind: RecordKind,
    page: u64,
    pages: u64,
) {
    match PAGE_SEEN.insert(key, &EMPTY_CHUNK, BPF_NOEXIST as u64) {
        Ok(()) => bump(counter::DEDUP_INSERTS),
        // Another CPU created it an instant ago: mark the page there.
        Err(err) if err as i64 == -EEXIST => {}
        Err(_) => bump(counter::DEDUP_INSERT_FAILED),
    }
    if let Some(chunk) = PAGE_SEEN.get_ptr_mut(key) {
        // SAFETY: a value of the shared dedup map (see report_first_use).
        let chunk = unsafe { &mut *chunk };
        if chunk.first_tgid == 0 {
            chunk.first_tgid = header.tgid;
        }
        let (_, word, bit) = dedup_bit(page);
        if let Some(reported) = chunk.reported.get_mut(word) {
            *reported |= bit;
        }
    }
    // Reported even when the entry could not be made: userspace
    // deduplicates too.
    submit_page_event(header, kind, page, pages, site.stack_id());
}
