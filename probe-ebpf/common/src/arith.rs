//! The eBPF side's page arithmetic, pure and built for the host too, so
//! that it is unit- and property-tested there (the programs call these,
//! inlined, with values read from the kernel).

use crate::{FolioRoom, CHUNK_PAGES, PMD_PAGES};

/// Pages that hold `size` bytes (the last one partly), of `1 << shift`
/// bytes each.
#[inline(always)]
pub fn pages_of(size: u64, shift: u32) -> u64 {
    (size >> shift) + u64::from(size & ((1u64 << shift) - 1) != 0)
}

/// A mapping `[start, end)` of file pages from `pgoff`, as the fault path
/// sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedRange {
    pub start: u64,
    pub end: u64,
    pub pgoff: u64,
}

impl MappedRange {
    /// The file page `address` (inside the mapping) maps.
    #[inline(always)]
    pub fn page_at(&self, address: u64, shift: u32) -> u64 {
        self.pgoff + ((address - self.start) >> shift)
    }

    /// How far a folio around the page at `address` may reach and still
    /// be mapped whole by one fault: inside the mapping and inside the
    /// page table (2 MiB of address space) that holds the address.
    #[inline(always)]
    pub fn folio_room(&self, address: u64, shift: u32) -> FolioRoom {
        let vma_offset = (address - self.start) >> shift;
        let vma_pages = (self.end - self.start) >> shift;
        let table_offset = (address >> shift) & (PMD_PAGES - 1);
        FolioRoom {
            before: vma_offset.min(table_offset),
            from: (vma_pages - vma_offset).min(PMD_PAGES - table_offset),
        }
    }

    /// The file pages a read fault at `address` maps (mm/memory.c
    /// `do_fault_around`): the `window`-aligned block of page-table
    /// entries around it, clipped to the mapping, to its page table and to
    /// the file's `file_pages`. None when nothing of the file is there.
    #[inline(always)]
    pub fn fault_around(
        &self,
        address: u64,
        shift: u32,
        window: u64,
        file_pages: u64,
    ) -> Option<(u64, u64)> {
        let window = window.max(1);
        let page = self.page_at(address, shift);
        let table_offset = (address >> shift) & (PMD_PAGES - 1);
        let vma_offset = (address - self.start) >> shift;
        let vma_pages = (self.end - self.start) >> shift;
        // The window's first slot, but not before the mapping's first.
        let from = (table_offset & !(window - 1)).max(table_offset - table_offset.min(vma_offset));
        let to = (from + window)
            .min(PMD_PAGES)
            .min(table_offset + vma_pages - vma_offset)
            - 1;
        let first = page - (table_offset - from);
        let last = (page + (to - table_offset)).min(file_pages.saturating_sub(1));
        (file_pages > 0 && first <= last).then_some((first, last))
    }

    /// The file pages `[from, to)` of the mapping (addresses inside it)
    /// cover, clipped to the file's `file_pages`: None when none.
    #[inline(always)]
    pub fn file_pages_between(
        &self,
        from: u64,
        to: u64,
        shift: u32,
        file_pages: u64,
    ) -> Option<(u64, u64)> {
        if to <= from || file_pages == 0 {
            return None;
        }
        let first = self.page_at(from, shift);
        let last = self.page_at(to - 1, shift).min(file_pages - 1);
        (first <= last).then_some((first, last))
    }
}

/// Pages from byte `offset` for `bytes` bytes, as (first page, pages);
/// 0 bytes (sync_file_range's "to the end of the file") gives 0 pages.
#[inline(always)]
pub fn byte_range_pages(offset: u64, bytes: u64, shift: u32) -> (u64, u64) {
    let first = offset >> shift;
    if bytes == 0 {
        return (first, 0);
    }
    let last = (offset.saturating_add(bytes) - 1) >> shift;
    (first, last - first + 1)
}

/// Where a page's bit lies in the dedup map: (chunk, word of the chunk's
/// bitmap, bit in the word).
#[inline(always)]
pub fn dedup_bit(page: u64) -> (u64, usize, u64) {
    (
        page / CHUNK_PAGES,
        ((page % CHUNK_PAGES) / 64) as usize,
        1u64 << (page % 64),
    )
}

#[cfg(test)]
mod tests {
    extern crate std;

    use proptest::prelude::*;

    use super::*;

    const SHIFT: u32 = 12;
    const PAGE: u64 = 1 << SHIFT;

    #[test]
    fn pages_of_rounds_up() {
        assert_eq!(pages_of(0, SHIFT), 0);
        assert_eq!(pages_of(1, SHIFT), 1);
        assert_eq!(pages_of(PAGE, SHIFT), 1);
        assert_eq!(pages_of(PAGE + 1, SHIFT), 2);
        // No overflow at the top of the range.
        assert_eq!(pages_of(u64::MAX, SHIFT), 1 << (64 - SHIFT));
    }

    #[test]
    fn a_folio_fits_only_inside_the_mapping_and_the_page_table() {
        // A 64-page mapping starting 8 pages before a 2 MiB boundary.
        let start = (1 << 21) - 8 * PAGE;
        let map = MappedRange {
            start,
            end: start + 64 * PAGE,
            pgoff: 0,
        };
        // Fault on the mapping's page 2: 2 pages before it in the
        // mapping, 6 to the boundary from it.
        let room = map.folio_room(start + 2 * PAGE, SHIFT);
        assert_eq!(room, FolioRoom { before: 2, from: 6 });
        assert!(room.fits(2, 0, 8));
        // A 16-page folio would cross the page table.
        assert!(!room.fits(2, 0, 16));
        // Past the boundary the room is the next page table's.
        let room = map.folio_room(start + 8 * PAGE, SHIFT);
        assert_eq!(
            room,
            FolioRoom {
                before: 0,
                from: 56
            }
        );
        assert!(room.fits(8, 8, 16));
        assert!(!room.fits(9, 8, 16));
    }

    #[test]
    fn fault_around_is_the_aligned_window_clipped_to_mapping_and_file() {
        // Mapped from file page 100 at a 2 MiB boundary: 16 pages.
        let map = MappedRange {
            start: 1 << 21,
            end: (1 << 21) + 16 * PAGE,
            pgoff: 100,
        };
        assert_eq!(
            map.fault_around((1 << 21) + 5 * PAGE, SHIFT, 16, 1000),
            Some((100, 115))
        );
        // The file ends at page 103.
        assert_eq!(
            map.fault_around((1 << 21) + 2 * PAGE, SHIFT, 16, 104),
            Some((100, 103))
        );
        // Past the file's end: nothing.
        assert_eq!(map.fault_around((1 << 21) + 9 * PAGE, SHIFT, 4, 104), None);
        // A window of one page is the page.
        assert_eq!(
            map.fault_around((1 << 21) + 7 * PAGE, SHIFT, 1, 1000),
            Some((107, 107))
        );
    }

    #[test]
    fn byte_ranges_and_dedup_bits() {
        assert_eq!(byte_range_pages(0, 0, SHIFT), (0, 0));
        assert_eq!(byte_range_pages(PAGE - 1, 2, SHIFT), (0, 2));
        assert_eq!(byte_range_pages(3 * PAGE, PAGE, SHIFT), (3, 1));
        assert_eq!(byte_range_pages(u64::MAX - 1, 10, SHIFT).1, 1);
        assert_eq!(dedup_bit(0), (0, 0, 1));
        assert_eq!(dedup_bit(CHUNK_PAGES + 65), (1, 1, 2));
    }

    /// A mapping of 1 to 1024 pages anywhere, with an address in it.
    fn mapping() -> impl Strategy<Value = (MappedRange, u64)> {
        (0u64..1 << 20, 1u64..1024, 0u64..1 << 20, 0u64..1024).prop_map(
            |(start_page, pages, pgoff, at)| {
                let start = start_page * PAGE;
                let map = MappedRange {
                    start,
                    end: start + pages * PAGE,
                    pgoff,
                };
                (map, start + (at % pages) * PAGE + at % PAGE)
            },
        )
    }

    proptest! {
        /// A folio that fits lies inside the mapping and inside one page
        /// table, and holds the faulting page.
        #[test]
        fn what_fits_is_inside_the_mapping_and_the_table(
            (map, address) in mapping(),
            folio_order in 0u32..10,
            offset in 0u64..512,
        ) {
            let pages = 1u64 << folio_order;
            let page = map.page_at(address, SHIFT);
            let first = page.saturating_sub(offset % pages);
            let room = map.folio_room(address, SHIFT);
            if room.fits(page, first, pages) {
                let first_address = address - (page - first) * PAGE;
                let last_address = first_address + (pages - 1) * PAGE;
                prop_assert!(first_address >= map.start & !(PAGE - 1));
                prop_assert!(last_address < map.end);
                prop_assert_eq!(first_address >> 21, last_address >> 21);
                prop_assert!(first <= page && page < first + pages);
            }
        }

        /// The fault-around window holds the faulting page (if the file
        /// does), stays inside the mapping, the page table, the window and
        /// the file.
        #[test]
        fn fault_around_stays_inside_every_limit(
            (map, address) in mapping(),
            window_order in 0u32..10,
            file_pages in 0u64..1 << 21,
        ) {
            let window = 1u64 << window_order;
            let page = map.page_at(address, SHIFT);
            match map.fault_around(address, SHIFT, window, file_pages) {
                None => prop_assert!(page >= file_pages),
                Some((first, last)) => {
                    prop_assert!(first <= page && (page <= last || page >= file_pages));
                    prop_assert!(last < file_pages);
                    prop_assert!(first >= map.pgoff);
                    prop_assert!(last < map.pgoff + ((map.end - map.start) >> SHIFT));
                    prop_assert!(last - first < window);
                    let first_address = map.start + (first - map.pgoff) * PAGE;
                    let last_address = map.start + (last - map.pgoff) * PAGE;
                    prop_assert_eq!(first_address >> 21, last_address >> 21);
                }
            }
        }
    }
}
