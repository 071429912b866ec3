//! Which files' kernel entries are handed over to userspace (and freed):
//! those idle long enough that no program is about to touch them. Pure:
//! the session reads the maps, asks here, and moves the counts.
//!
//! An entry also marks a file as seen, so that its dirtying and writeback
//! are counted; a handed-over file is counted again from its next write
//! fault. So a file with dirty pages waits until the kernel would have
//! written them back (dirty_expire_centisecs, 30 s, plus a flusher
//! period): past that, it was most likely deleted or truncated while dirty.
//! When the kernel map is half full, every file idle for a moment is handed
//! over, dirty or not: the map must not fill (dirty ones are counted, as
//! their writeback is then not seen), and a burst of new files (a build, an
//! unpacked archive) fills half of it within a second.

use std::collections::HashMap;

use probe_common::{FileKey, FileStats, PendingCounts};

/// Idle this long with nothing dirty: handed over.
pub const IDLE_CLEAN_NS: u64 = 2_000_000_000;
/// Idle this long with dirty pages: handed over all the same.
pub const IDLE_DIRTY_NS: u64 = 40_000_000_000;
/// Idle this long when the map is half full: long past any fault that
/// looked the entry up (microseconds), so none adds to it after it left.
pub const IDLE_UNDER_PRESSURE_NS: u64 = 200_000_000;

/// Files announced since the map was last read that make it worth reading
/// again before the next refresh: a quarter of the map.
pub fn worth_reading_again(files_announced_since: u64, capacity: u32) -> bool {
    files_announced_since >= u64::from(capacity / 4)
}

/// What to do with one file's entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Hand over; `dirty`: its dirty time is forgotten too, and its later
    /// writeback, if any, is not counted.
    HandOver {
        dirty: bool,
    },
}

/// How full the kernel's per-file map is, as a fraction.
pub fn under_pressure(entries: usize, capacity: u32) -> bool {
    entries >= capacity as usize / 2
}

/// The verdict for an entry read at `now_boot_ns`. `dirty_since` is when
/// the file was first dirtied, if it is now.
pub fn verdict(
    stats: &FileStats,
    now_boot_ns: u64,
    dirty_since: Option<u64>,
    has_open_run: bool,
    pressure: bool,
) -> Verdict {
    // Still counting in a CPU's open run: continuing faults would not put
    // the entry back, and its dirtying would go uncounted. At most one
    // file per CPU, until that CPU faults on another file.
    if has_open_run {
        return Verdict::Keep;
    }
    let last_activity = [
        stats.last_write_boot_ns,
        stats.last_writeback_start_boot_ns,
        stats.last_writeback_end_boot_ns,
    ]
    .into_iter()
    .chain(dirty_since)
    .max()
    .unwrap_or(0);
    let idle = now_boot_ns.saturating_sub(last_activity);
    let dirty = dirty_since.is_some();
    let limit = match (pressure, dirty) {
        (true, _) => IDLE_UNDER_PRESSURE_NS,
        (false, true) => IDLE_DIRTY_NS,
        (false, false) => IDLE_CLEAN_NS,
    };
    if idle >= limit {
        Verdict::HandOver { dirty }
    } else {
        Verdict::Keep
    }
}

/// A per-file kernel map as read: a vector sorted by key, looked up by
/// binary search. A hash table of a burst's hundreds of thousands of
/// entries, rebuilt at every read, cost twice the memory and its growth.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelEntries<V>(Vec<(FileKey, V)>);

fn order(key: &FileKey) -> (u32, u64, u32) {
    (key.dev, key.ino, key.generation)
}

impl<V> KernelEntries<V> {
    pub fn new(mut entries: Vec<(FileKey, V)>) -> Self {
        // Stable: of a key listed twice, the later read stays later.
        entries.sort_by_key(|(key, _)| order(key));
        // A key listed twice (an entry deleted and re-added between two
        // batches): the later read is kept.
        entries.dedup_by(|later, earlier| {
            let same = order(&later.0) == order(&earlier.0);
            if same {
                std::mem::swap(later, earlier);
            }
            same
        });
        Self(entries)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, key: &FileKey) -> Option<&V> {
        self.0
            .binary_search_by_key(&order(key), |(k, _)| order(k))
            .ok()
            .map(|at| &self.0[at].1)
    }

    pub fn contains_key(&self, key: &FileKey) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FileKey, &V)> {
        self.0.iter().map(|(key, value)| (key, value))
    }

    pub fn keys(&self) -> impl Iterator<Item = &FileKey> {
        self.0.iter().map(|(key, _)| key)
    }
}

impl<V> FromIterator<(FileKey, V)> for KernelEntries<V> {
    fn from_iter<I: IntoIterator<Item = (FileKey, V)>>(entries: I) -> Self {
        Self::new(entries.into_iter().collect())
    }
}

/// Dirty times of files with no entry left, older than a dirty file is
/// kept: a dirtying that raced with its file's hand-over left them, and
/// nothing else would remove them.
pub fn orphaned_dirty_times<'a>(
    dirty_since: &'a KernelEntries<u64>,
    entries: &'a KernelEntries<FileStats>,
    now_boot_ns: u64,
) -> impl Iterator<Item = &'a FileKey> {
    dirty_since.iter().filter_map(move |(key, since)| {
        (!entries.contains_key(key) && now_boot_ns.saturating_sub(*since) >= IDLE_DIRTY_NS)
            .then_some(key)
    })
}

/// The CPUs' open runs of faults as per-CPU counts, by file (a file
/// written on several CPUs has a run on each).
pub fn open_runs_by_file(runs: &[PendingCounts]) -> HashMap<FileKey, Vec<FileStats>> {
    let mut by_file: HashMap<FileKey, Vec<FileStats>> = HashMap::new();
    for run in runs {
        by_file.entry(run.file).or_default().push(FileStats {
            shared_write_faults: run.shared_write_faults,
            cow_faults: run.cow_faults,
            last_write_boot_ns: run.last_write_boot_ns,
            ..FileStats::default()
        });
    }
    by_file
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn key(ino: u64) -> FileKey {
        FileKey {
            dev: 1,
            generation: 0,
            ino,
        }
    }

    fn written_at(ns: u64) -> FileStats {
        FileStats {
            shared_write_faults: 1,
            last_write_boot_ns: ns,
            ..FileStats::default()
        }
    }

    #[test]
    fn a_clean_file_idle_two_seconds_is_handed_over() {
        let stats = written_at(11 * SECOND);
        assert_eq!(
            verdict(&stats, 12 * SECOND, None, false, false),
            Verdict::Keep
        );
        assert_eq!(
            verdict(&stats, 13 * SECOND, None, false, false),
            Verdict::HandOver { dirty: false }
        );
    }

    #[test]
    fn a_file_with_an_open_run_is_kept_however_old() {
        let stats = written_at(SECOND);
        assert_eq!(
            verdict(&stats, 1000 * SECOND, None, true, false),
            Verdict::Keep
        );
    }

    #[test]
    fn a_dirty_file_waits_for_writeback_then_is_handed_over() {
        let stats = written_at(10 * SECOND);
        let dirty = Some(10 * SECOND);
        assert_eq!(
            verdict(&stats, 30 * SECOND, dirty, false, false),
            Verdict::Keep
        );
        assert_eq!(
            verdict(&stats, 50 * SECOND, dirty, false, false),
            Verdict::HandOver { dirty: true }
        );
    }

    #[test]
    fn a_dirty_file_waits_no_longer_than_a_clean_one_when_the_map_is_half_full() {
        let stats = written_at(10 * SECOND);
        assert!(!under_pressure(32_767, 65_536));
        assert!(under_pressure(32_768, 65_536));
        assert_eq!(
            verdict(&stats, 13 * SECOND, Some(10 * SECOND), false, true),
            Verdict::HandOver { dirty: true }
        );
    }

    #[test]
    fn a_half_full_map_hands_over_any_file_idle_for_a_moment() {
        let stats = written_at(10 * SECOND);
        assert_eq!(
            verdict(&stats, 10 * SECOND + 100_000_000, None, false, true),
            Verdict::Keep
        );
        assert_eq!(
            verdict(&stats, 10 * SECOND + 200_000_000, None, false, true),
            Verdict::HandOver { dirty: false }
        );
        assert_eq!(
            verdict(
                &stats,
                10 * SECOND + 200_000_000,
                Some(10 * SECOND),
                false,
                true
            ),
            Verdict::HandOver { dirty: true }
        );
        // Still being written (an open run): kept, full or not.
        assert_eq!(
            verdict(&stats, 100 * SECOND, None, true, true),
            Verdict::Keep
        );
    }

    #[test]
    fn kernel_entries_are_found_by_key_and_a_key_read_twice_keeps_its_later_value() {
        let entries =
            KernelEntries::new(vec![(key(3), 30), (key(1), 10), (key(3), 31), (key(2), 20)]);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries.get(&key(3)), Some(&31));
        assert_eq!(entries.get(&key(1)), Some(&10));
        assert!(!entries.contains_key(&key(4)));
        let keys: Vec<u64> = entries.keys().map(|k| k.ino).collect();
        assert_eq!(keys, [1, 2, 3]);
    }

    #[test]
    fn a_burst_of_a_quarter_of_the_map_is_worth_reading_it_again() {
        assert!(!worth_reading_again(16_383, 65_536));
        assert!(worth_reading_again(16_384, 65_536));
    }

    #[test]
    fn writeback_activity_counts_as_activity() {
        let stats = FileStats {
            last_write_boot_ns: SECOND,
            last_writeback_end_boot_ns: 20 * SECOND,
            ..FileStats::default()
        };
        assert_eq!(
            verdict(&stats, 21 * SECOND, None, false, false),
            Verdict::Keep
        );
    }

    #[test]
    fn runs_of_one_file_on_two_cpus_are_both_kept() {
        let file = FileKey {
            dev: 1,
            generation: 0,
            ino: 7,
        };
        let run = |faults| PendingCounts {
            file,
            shared_write_faults: faults,
            ..PendingCounts::default()
        };
        let by_file = open_runs_by_file(&[run(2), run(3)]);
        let total: u64 = by_file[&file].iter().map(|s| s.shared_write_faults).sum();
        assert_eq!(total, 5);
    }

    #[test]
    fn only_old_dirty_times_without_an_entry_are_orphans() {
        let dirty =
            KernelEntries::from_iter([(key(2), SECOND), (key(1), SECOND), (key(3), 50 * SECOND)]);
        let entries = KernelEntries::from_iter([(key(1), written_at(SECOND))]);
        let orphans: Vec<_> = orphaned_dirty_times(&dirty, &entries, 60 * SECOND).collect();
        assert_eq!(orphans, vec![&key(2)]);
    }
}
