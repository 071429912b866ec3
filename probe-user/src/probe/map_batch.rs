//! A whole hash map read in batches: one bpf(2) call per few thousand
//! entries (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6+), where aya's iterator makes
//! two per entry (the next key, then its value). With tens of thousands of
//! files in the per-file maps, read every second, that was most of the
//! tracer's syscalls. A raw call: aya 0.14 has no batch operations.

use std::os::fd::{AsRawFd as _, BorrowedFd};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's own ENOTSUPP (not a libc errno): a map type without
/// batch operations.
const KERNEL_ENOTSUPP: i32 = 524;

/// Entries asked for per call at first; doubled when one hash bucket
/// holds more (ENOSPC).
const FIRST_BATCH: u32 = 4096;

/// `union bpf_attr` as the BPF_MAP_*_BATCH commands read it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry's key and value bytes, `key_size` and `value_size` each
/// (per-CPU maps: each CPU's value rounded up to 8 bytes, one per
/// possible CPU), handed to `on_batch` a batch at a time (one buffer
/// reused, not the whole map at once). `meanwhile` runs between batches.
/// `Ok(false)` where this kernel has no batch lookup for the map: iterate
/// it instead.
pub fn read_all(
    map: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    mut on_batch: impl FnMut(&[u8], &[u8]),
    mut meanwhile: impl FnMut(),
) -> std::io::Result<bool> {
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    let mut batch = FIRST_BATCH;
    // Hash maps' batch position: a bucket index.
    let mut position: Option<u32> = None;
    loop {
        let want = batch as usize;
        keys.resize(want * key_size, 0);
        values.resize(want * value_size, 0);
        let mut next: u32 = 0;
        let mut attr = BatchAttr {
            in_batch: position
                .as_ref()
                .map_or(0, |p| std::ptr::from_ref(p) as u64),
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: batch,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is the kernel's batch layout; `keys` and `values`
        // have room for `count` entries of the map's key and value sizes,
        // and the batch positions are u32s, as hash maps use them. The
        // kernel writes back `count`.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::from_mut(&mut attr),
                size_of::<BatchAttr>(),
            )
        };
        let error = (result < 0).then(std::io::Error::last_os_error);
        let filled = attr.count.min(batch) as usize;
        let errno = error.as_ref().and_then(std::io::Error::raw_os_error);
        // Entries are only the kernel's on success or at the map's end.
        if matches!(errno, None | Some(libc::ENOENT)) {
            on_batch(&keys[..filled * key_size], &values[..filled * value_size]);
        }
        match errno {
            None => {}
            // The end of the map.
            Some(libc::ENOENT) => return Ok(true),
            // One bucket holds more than a batch: again, larger.
            Some(libc::ENOSPC) if filled == 0 && batch < 1 << 20 => {
                batch *= 2;
                continue;
            }
            // No batch lookup for this map on this kernel.
            Some(libc::EINVAL | libc::EOPNOTSUPP | KERNEL_ENOTSUPP) if position.is_none() => {
                return Ok(false)
            }
            Some(_) => return Err(error.unwrap_or_else(std::io::Error::last_os_error)),
        }
        position = Some(next);
        meanwhile();
    }
}
