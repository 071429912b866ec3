//! How many of a file's written pages are not on disk yet: the page
//! cache's own count of dirty and under-writeback pages over the written
//! ranges, from `cachestat(2)` (Linux 6.5+).

use std::{os::fd::AsRawFd as _, path::Path};

use crate::model::page_set::PageSet;

use crate::model::{
    aggregate::page_ranges, events::FileId, file_handle::open_for_reading, file_record::FileRecord,
};

/// Ranges asked one by one; past this, the whole written span is asked
/// (which may count pages dirtied by write(2) too, and says so).
const MAX_RANGES: usize = 4096;

/// `struct cachestat_range` and `struct cachestat` (uapi/linux/mman.h).
#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// The syscall's number (the same on every architecture: it is newer than
/// the unified table). Called directly: neither libc nor rustix wraps it.
const SYS_CACHESTAT: libc::c_long = 451;

/// Pages in [first, last] that are dirty or under writeback.
fn not_on_disk(fd: i32, first: u64, last: u64, page_size: u64) -> std::io::Result<u64> {
    let range = CachestatRange {
        off: first * page_size,
        len: (last - first + 1) * page_size,
    };
    let mut stat = Cachestat::default();
    // SAFETY: both pointers are to live, properly laid out structs the
    // kernel reads and fills; flags must be 0.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd,
            &raw const range,
            &raw mut stat,
            0 as libc::c_uint,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.nr_dirty + stat.nr_writeback)
}

/// Written pages not yet written back, or why that cannot be told.
pub fn written_pages_not_on_disk(
    file: FileId,
    record: &FileRecord,
    mount_point: Option<&Path>,
    has_writeback: bool,
) -> Result<u64, String> {
    if !has_writeback {
        return Err("no writeback on this filesystem (tmpfs/shmem pages live in memory)".into());
    }
    if record.pages_written.is_empty() {
        return Ok(0);
    }
    let opened = open_for_reading(file, record.fs_magic(), record.path.as_deref(), mount_point)
        .map_err(|err| format!("the file could not be opened: {err}"))?;
    let page_size = rustix::param::page_size() as u64;
    let fd = opened.as_raw_fd();
    let count = |ranges: &[[u64; 2]]| -> std::io::Result<u64> {
        ranges.iter().try_fold(0, |sum, [first, last]| {
            Ok(sum + not_on_disk(fd, *first, *last, page_size)?)
        })
    };
    let ranges = page_ranges(&record.pages_written);
    let counted = if ranges.len() <= MAX_RANGES {
        count(&ranges)
    } else {
        let span = span_of(&record.pages_written);
        count(&[span])
    };
    counted.map_err(|err| match err.raw_os_error() {
        Some(libc::ENOSYS) => "cachestat(2) needs Linux 6.5 or later".to_string(),
        _ => format!("cachestat(2) failed: {err}"),
    })
}

fn span_of(pages: &PageSet) -> [u64; 2] {
    [pages.min().unwrap_or(0), pages.max().unwrap_or(0)]
}
