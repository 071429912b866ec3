//! Per-file and per-writer counts: runs of faults kept per CPU and added
//! to the stats maps when they end.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    maps::{HashMap, PerCpuHashMap},
};
use probe_common::{counter, EventHeader, FileKey, PendingCounts, WriterStatsKey};

use crate::{
    kernel::{comm_words, EEXIST},
    maps::{bump, EMPTY_FILE_STATS, EMPTY_WRITER_STATS, FILE_STATS, PENDING_COUNTS, WRITER_STATS},
    record::{header_file, header_writer},
};

/// Adds to this CPU's slot of a per-CPU stats entry (`add`), creating the
/// entry from zeroes first when it has none. The zeroes are a static: a
/// value built on the stack would lengthen the fault path's frame chain,
/// which Linux 6.1's verifier holds to 512 bytes (32-byte rounded frames).
/// Another CPU may create the entry between the lookup and the insert: the
/// additions then go to this CPU's slot of that entry. False when the map
/// is full.
#[inline(always)]
fn upsert<K, V>(map: &PerCpuHashMap<K, V>, key: &K, zeroes: &V, add: impl Fn(&mut V)) -> bool {
    if let Some(slot) = map.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of a per-CPU map value; programs on one
        // CPU do not interleave on it.
        add(unsafe { &mut *slot });
        return true;
    }
    match map.insert(key, zeroes, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(err) if err as i64 == -EEXIST => {}
        Err(_) => return false,
    }
    if let Some(slot) = map.get_ptr_mut(key) {
        // SAFETY: as above.
        add(unsafe { &mut *slot });
    }
    true
}

/// Adds faults to a (cgroup, filesystem, command) label set's counts.
pub(crate) fn add_writer_faults(key: &WriterStatsKey, shared: u64, cow: u64) {
    let added = upsert(&WRITER_STATS, key, &EMPTY_WRITER_STATS, |stats| {
        stats.shared_write_faults += shared;
        stats.cow_faults += cow;
    });
    if !added {
        bump(counter::WRITER_STATS_FULL);
    }
}

/// Counts a write fault, the one `header` describes, in this CPU's open
/// run of faults (no map update) when it continues that run. False when
/// it opens a new run: the run so far is then added to the maps.
#[inline(always)]
pub(crate) fn count_in_run(
    header: &EventHeader,
    shared: bool,
    closing: &mut PendingCounts,
) -> bool {
    let Some(run) = PENDING_COUNTS.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's slot of a one-entry per-CPU array; programs on
    // one CPU do not interleave on it (see FaultScratch).
    let run = unsafe { &mut *run };
    let continues = run.file == header_file(header)
        && run.writer.cgroup_id == header.cgroup_id
        && comm_words(&run.writer.comm) == comm_words(&header.comm);
    if !continues {
        // Closed before it is added to the maps: a reader (the maps first,
        // then the runs) may miss a run for an instant, never count it twice.
        *closing = *run;
        run.file = header_file(header);
        run.writer = header_writer(header);
        run.shared_write_faults = 0;
        run.cow_faults = 0;
    }
    if shared {
        run.shared_write_faults += 1;
    } else {
        run.cow_faults += 1;
    }
    run.last_write_boot_ns = header.boot_ns;
    if !continues {
        close_run(closing);
    }
    continues
}

/// Adds a closed run of faults to its file's and writer's stats.
#[inline(never)]
pub(crate) fn close_run(run: &PendingCounts) {
    if run.shared_write_faults == 0 && run.cow_faults == 0 {
        return;
    }
    // The file was announced when its run opened: its entry is missing
    // only when the map was full then.
    match shared_entry(&FILE_STATS, &run.file, &EMPTY_FILE_STATS) {
        // SAFETY: a value of the shared per-file map, written only through
        // these helpers.
        Some(stats) => unsafe {
            add_shared(
                &raw mut (*stats).shared_write_faults,
                run.shared_write_faults,
            );
            add_shared(&raw mut (*stats).cow_faults, run.cow_faults);
            keep_later(&raw mut (*stats).last_write_boot_ns, run.last_write_boot_ns);
        },
        None => bump(counter::FILE_STATS_FULL),
    }
    add_writer_faults(&run.writer, run.shared_write_faults, run.cow_faults);
}

/// The value of `key`, created from zeroes when it has none (another CPU
/// may create it between the lookup and the insert: then that one). None
/// when the map is full.
#[inline(always)]
fn shared_entry<K, V>(map: &HashMap<K, V>, key: &K, zeroes: &V) -> Option<*mut V> {
    if let Some(value) = map.get_ptr_mut(key) {
        return Some(value);
    }
    match map.insert(key, zeroes, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(err) if err as i64 == -EEXIST => {}
        Err(_) => return None,
    }
    map.get_ptr_mut(key)
}

pub(crate) fn add_written_back(key: &FileKey, pages: u64) {
    if pages == 0 {
        return;
    }
    if let Some(stats) = FILE_STATS.get_ptr_mut(key) {
        // SAFETY: a value of the shared per-file map.
        unsafe { add_shared(&raw mut (*stats).writeback_pages, pages) };
    }
}

/// Adds `amount` to a count of a map value that programs on other CPUs add
/// to at once. An atomic add whose result is unused: every kernel's BPF has
/// it (the one that returns the old value needs 5.12).
///
/// # Safety
/// `count` points at a u64 of a live map value.
#[inline(always)]
pub(crate) unsafe fn add_shared(count: *mut u64, amount: u64) {
    if amount != 0 {
        // SAFETY: the caller's pointer; map values are 8-byte aligned.
        let _ = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(count, amount) };
    }
}

/// Keeps the later of a map value's time and `time`. Not atomic: two CPUs
/// storing at once may keep the earlier of two times nanoseconds apart,
/// which no reader can tell from the order they ran in.
///
/// # Safety
/// `latest` points at a u64 of a live map value.
#[inline(always)]
pub(crate) unsafe fn keep_later(latest: *mut u64, time: u64) {
    // SAFETY: the caller's pointer.
    unsafe {
        if time > latest.read_volatile() {
            latest.write_volatile(time);
        }
    }
}
