//! The kernel's counters, declared once.
//!
//! Each row gives a counter's slot in the per-CPU `COUNTERS` array, the
//! name every report uses for it (JSON, metric reason, README), what it
//! means to a report (its [`CounterRole`]) and its help text (the row's
//! doc comment). The eBPF side uses the `counter` indices; userspace reads
//! the slots into [`CounterTotals`] and derives the losses, the JSON
//! `drops`, the exporter's reasons and the README check from [`KERNEL_COUNTERS`].
//! Adding a counter is one row here plus its use.

/// What a counter's total means to the reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterRole {
    /// Something the kernel side could not report: summed into
    /// `lost_events`, listed in the JSON `drops`, a reason of
    /// `mmapwatch_lost_events_total`.
    Loss,
    /// The part of a loss that was one kind of record: in `drops` beside
    /// the loss it details, not summed again.
    LossDetail,
    /// Lost from what only the exporter shows (its per-writer fault
    /// counts): a reason of `mmapwatch_lost_events_total` and in `drops`,
    /// but not in `lost_events`, since no page or file a report lists is
    /// missing because of it.
    MetricsLoss,
    /// How the probes worked, summed over CPUs.
    Tally,
    /// A high-water mark: the largest over CPUs, not their sum.
    Peak,
}

impl CounterRole {
    /// Listed in the JSON `drops`.
    pub const fn in_drops(self) -> bool {
        matches!(self, Self::Loss | Self::LossDetail | Self::MetricsLoss)
    }

    /// A reason of `mmapwatch_lost_events_total`.
    pub const fn is_metric_reason(self) -> bool {
        matches!(self, Self::Loss | Self::MetricsLoss)
    }
}

/// One kernel counter, as [`KERNEL_COUNTERS`] declares it.
#[derive(Clone, Copy, Debug)]
pub struct Counter {
    pub index: u32,
    /// The name reports give it (JSON key, metric reason).
    pub name: &'static str,
    pub role: CounterRole,
    /// What it counts, from the declaration's doc comment.
    pub help: &'static str,
}

impl Counter {
    /// The help text without the doc comment's leading space.
    pub fn help(&self) -> &'static str {
        self.help.trim()
    }
}

macro_rules! kernel_counters {
    ($(
        $(#[doc = $doc:literal])*
        $index:literal => $slot:ident, $name:ident, $role:ident;
    )*) => {
        /// Indices into the per-CPU `COUNTERS` array.
        pub mod counter {
            $( $(#[doc = $doc])* pub const $slot: u32 = $index; )*
            pub const COUNT: u32 = [$($index),*].len() as u32;
        }

        /// Every kernel counter, in slot order.
        pub const KERNEL_COUNTERS: [Counter; counter::COUNT as usize] = [$(
            Counter {
                index: counter::$slot,
                name: stringify!($name),
                role: CounterRole::$role,
                help: concat!($($doc),*),
            },
        )*];

        impl CounterTotals {
            $(
                $(#[doc = $doc])*
                pub const fn $name(&self) -> u64 {
                    self.slots[counter::$slot as usize]
                }
            )*
        }
    };
}

kernel_counters! {
    /// `bpf_ringbuf_reserve` failed (the ring buffer was full): the record was lost.
    0 => RINGBUF_FULL, ringbuf_full, Loss;
    /// The part of `ringbuf_full` that were file announcements: the rest
    /// are page records, so pages reported plus those drops account for
    /// every first write.
    1 => RINGBUF_FULL_FILE_EVENTS, ringbuf_full_file_events, LossDetail;
    /// The part of `ringbuf_full` that were sync-call or process-exit
    /// records, not pages.
    2 => RINGBUF_FULL_OTHER_EVENTS, ringbuf_full_other_events, LossDetail;
    /// The faulting mapping could not be looked up (`bpf_find_vma` found
    /// the mmap lock contended): the fault was not classified.
    3 => VMA_LOOKUP_FAILED, vma_lookup_failed, Loss;
    /// The per-file stats map was full: a file's counters were not kept.
    4 => FILE_STATS_FULL, file_stats_full, Loss;
    /// The writer map refused an entry: a writer's first record was lost.
    5 => WRITER_MAP_FULL, writer_map_full, Loss;
    /// A probe's kernel read or map update failed (other than those counted
    /// above): the fault, followed child, shared-mapper note or writeback
    /// sample it concerned may be missing.
    6 => PROBE_ERRORS, probe_errors, Loss;
    /// Children of followed processes (`-- CMD`, `--pid`) the follow map
    /// refused: their writes are missing.
    7 => CHILDREN_NOT_FOLLOWED, children_not_followed, Loss;
    /// The per-writer stats map was full: a writer's fault counts were not
    /// kept (the exporter's `mmapwatch_write_faults_total` and
    /// `mmapwatch_cow_faults_total`; pages and files are reported all the same).
    8 => WRITER_STATS_FULL, writer_stats_full, MetricsLoss;
    /// Write faults on shared file mappings that passed the filters.
    9 => SHARED_WRITE_FAULTS, shared_write_faults, Tally;
    /// Write faults on private file mappings that passed the filters.
    10 => COW_FAULTS, cow_faults, Tally;
    /// Records submitted to the ring buffer.
    11 => RECORDS_SUBMITTED, records_submitted, Tally;
    /// Ring bytes the submitted records took (headers and padding
    /// included, as [`crate::ring_bytes`] counts them).
    12 => RING_BYTES_SUBMITTED, ring_bytes_submitted, Tally;
    /// Highest ring-buffer fill seen after a submit, in bytes.
    13 => RING_PEAK_BYTES, ring_peak_bytes, Peak;
    /// Write faults that mapped a whole large folio writable.
    14 => FOLIO_SPANS, folio_spans, Tally;
    /// Faults whose mapping the lock-free tree walk did not find, looked
    /// up with bpf_find_vma instead (slower with IRQs off; not a loss).
    15 => VMA_WALK_FALLBACKS, vma_walk_fallbacks, Tally;
    /// Write faults past the end of the file: they end in SIGBUS and write
    /// nothing, so they are not reported.
    16 => FAULTS_PAST_EOF, faults_past_eof, Tally;
    /// Read faults that mapped pages of a write-notify-less file (tmpfs,
    /// shmem) writable: each a possibly-written window reported.
    17 => POSSIBLE_WRITE_WINDOWS, possible_write_windows, Tally;
    /// Of those, windows whose mapping could not be checked (the fault did
    /// not come through the user page-fault tracepoint, e.g.
    /// get_user_pages): reported because the file has a shared writable
    /// mapping somewhere.
    18 => POSSIBLE_WRITE_UNVERIFIED, possible_write_unverified, Tally;
    /// Pages inserted into the first-write dedup LRU; beyond its capacity,
    /// entries are evicted (an evicted page written again is reported again).
    19 => DEDUP_INSERTS, dedup_inserts, Tally;
    /// The dedup LRU refused an insert: the page was still reported.
    20 => DEDUP_INSERT_FAILED, dedup_insert_failed, Tally;
    /// First-write records sent without the writer's stack (`--stacks`):
    /// the stack map was full or had another stack in the same slot, or
    /// the stack could not be read. The pages are reported all the same.
    21 => STACKS_NOT_TAKEN, stacks_not_taken, Tally;
}

// The rows are in slot order, with no slot skipped or repeated: the table
// can be indexed by slot.
const _: () = {
    let mut slot = 0;
    while slot < KERNEL_COUNTERS.len() {
        assert!(KERNEL_COUNTERS[slot].index as usize == slot);
        slot += 1;
    }
};

/// The kernel counters' totals over CPUs, by slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterTotals {
    slots: [u64; counter::COUNT as usize],
}

impl Default for CounterTotals {
    fn default() -> Self {
        Self {
            slots: [0; counter::COUNT as usize],
        }
    }
}

impl CounterTotals {
    /// The total of `slot` from its per-CPU values, as its role says.
    pub fn set_from_cpus(&mut self, slot: u32, per_cpu: impl IntoIterator<Item = u64>) {
        let Some(counter) = KERNEL_COUNTERS.get(slot as usize) else {
            return;
        };
        let values = per_cpu.into_iter();
        self.slots[slot as usize] = match counter.role {
            CounterRole::Peak => values.max().unwrap_or(0),
            _ => values.fold(0u64, u64::wrapping_add),
        };
    }

    /// Sets one total (tests, and totals read elsewhere).
    pub fn with(mut self, slot: u32, total: u64) -> Self {
        if let Some(value) = self.slots.get_mut(slot as usize) {
            *value = total;
        }
        self
    }

    pub fn get(&self, slot: u32) -> u64 {
        self.slots.get(slot as usize).copied().unwrap_or(0)
    }

    /// Every counter with its total, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static Counter, u64)> + '_ {
        KERNEL_COUNTERS.iter().zip(self.slots.iter().copied())
    }

    /// Everything the kernel side failed to report (the [`CounterRole::Loss`] counters).
    pub fn lost(&self) -> u64 {
        self.iter()
            .filter(|(counter, _)| counter.role == CounterRole::Loss)
            .map(|(_, total)| total)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_lower_snake_case() {
        for (i, a) in KERNEL_COUNTERS.iter().enumerate() {
            assert!(a
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            assert!(!a.help().is_empty(), "{} has no help", a.name);
            for b in &KERNEL_COUNTERS[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }

    #[test]
    fn totals_sum_cpus_except_the_peak_and_lost_sums_losses_only() {
        let mut totals = CounterTotals::default();
        totals.set_from_cpus(counter::RINGBUF_FULL, [2, 3]);
        totals.set_from_cpus(counter::RING_PEAK_BYTES, [4096, 8192, 100]);
        totals.set_from_cpus(counter::RINGBUF_FULL_FILE_EVENTS, [1, 1]);
        totals.set_from_cpus(counter::WRITER_STATS_FULL, [7]);
        totals.set_from_cpus(counter::CHILDREN_NOT_FOLLOWED, [0, 1]);
        assert_eq!(totals.ringbuf_full(), 5);
        assert_eq!(totals.ring_peak_bytes(), 8192);
        // Details and metric-only losses are not added to the loss.
        assert_eq!(totals.lost(), 6);
        assert_eq!(totals.with(counter::PROBE_ERRORS, 4).lost(), 10);
        // A slot past the table is ignored, not a panic.
        totals.set_from_cpus(counter::COUNT, [1]);
        assert_eq!(totals.get(counter::COUNT), 0);
    }
}
