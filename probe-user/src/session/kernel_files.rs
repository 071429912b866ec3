//! Pulling the kernel's per-file counters into the aggregate, and handing
//! idle files' entries over so the kernel maps stay bounded (policy:
//! `model::hand_over`).

use std::collections::HashSet;

use super::Session;
use crate::model::{
    clock::boot_ns,
    events::FileId,
    hand_over::{open_runs_by_file, orphaned_dirty_times, under_pressure, verdict, Verdict},
};
use crate::probe::hand_over::READS_BETWEEN_BREAKS;
use probe_common::FILE_STATS_ENTRIES;

/// Files forgotten at once past which freed memory is given back to the
/// system.
const RETURN_MEMORY_AFTER_FORGETTING: u64 = 10_000;

/// Gives the heap's free memory back to the system. glibc keeps what a
/// burst of small allocations freed (100,000 forgotten files: ~100 MB) for
/// reuse, and a daemon's RSS would stay at its peak; musl's allocator
/// returns it by itself.
fn return_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: no arguments but the padding to keep; glibc's own lock.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What the hand-over did over the session.
#[derive(Clone, Copy, Debug, Default)]
pub struct HandOverCounts {
    pub files: u64,
    /// Of those, files still dirty (most likely deleted or truncated while
    /// dirty): a writeback of theirs after it is not counted.
    pub dirty_files: u64,
    /// Idle files forgotten (`--retain`).
    pub forgotten: u64,
    /// `forgotten` when freed memory was last given back.
    forgotten_at_last_return: u64,
    /// Entries in the kernel's per-file map at the last read.
    pub live_entries: u64,
    /// True once the kernel refused (lookup-and-delete needs Linux 5.14):
    /// entries then stay, as before, until the map is full.
    pub disabled: bool,
}

impl Session {
    /// Reads every file's kernel counters into the aggregate; entries idle
    /// long enough are removed from the kernel and kept here.
    pub(super) fn pull_file_stats(&mut self) -> anyhow::Result<()> {
        self.files_announced_at_last_pull = self.collector.files_announced;
        // The ring is read while the maps are: records keep coming.
        let (probes, collector, ring) = (&self.probes, &mut self.collector, &mut self.ring);
        let snapshot = probes.file_stats_snapshot(|| {
            collector.drain(ring.get_mut());
        })?;
        let dirty_since = probes.dirty_since(|| {
            collector.drain(ring.get_mut());
        })?;
        self.drain_ring();
        let now = boot_ns();
        let mut runs_by_file = open_runs_by_file(&snapshot.open_runs);
        let pressure = under_pressure(snapshot.entries.len(), FILE_STATS_ENTRIES);
        let mut live_entries = snapshot.entries.len() as u64;
        for (handled, (key, stats)) in snapshot.entries.iter().enumerate() {
            if handled % READS_BETWEEN_BREAKS == READS_BETWEEN_BREAKS - 1 {
                self.drain_ring();
            }
            let aggregate = &mut self.collector.aggregate;
            let file = FileId::from_key(key);
            let runs = runs_by_file.remove(key).unwrap_or_default();
            let dirty = dirty_since.get(key).copied();
            let verdict = if self.hand_over.disabled {
                Verdict::Keep
            } else {
                verdict(stats, now, dirty, !runs.is_empty(), pressure)
            };
            if let Verdict::HandOver { dirty } = verdict {
                match self.probes.take_file_stats(key) {
                    Ok(Some(taken)) => {
                        aggregate.take_kernel_stats(file, [&taken]);
                        self.hand_over.files += 1;
                        live_entries -= 1;
                        if dirty {
                            self.probes.forget_dirty(key)?;
                            self.hand_over.dirty_files += 1;
                        }
                        continue;
                    }
                    Ok(None) => continue,
                    Err(err) => {
                        log::warn!("kernel maps are not emptied while tracing: {err}");
                        self.hand_over.disabled = true;
                    }
                }
            }
            aggregate.set_kernel_stats(file, std::iter::once(stats).chain(&runs));
        }
        // Runs of files whose entry is not in the map (yet, or any more).
        let aggregate = &mut self.collector.aggregate;
        for (key, runs) in &runs_by_file {
            aggregate.set_kernel_stats(FileId::from_key(key), runs);
        }
        if let Some(retain) = self.retain {
            // Files the kernel still counts for stay, however old.
            let live: HashSet<FileId> = snapshot
                .entries
                .keys()
                .chain(runs_by_file.keys())
                .map(FileId::from_key)
                .collect();
            let cutoff = now.saturating_sub(u64::try_from(retain.as_nanos()).unwrap_or(u64::MAX));
            let forgotten: HashSet<FileId> = aggregate
                .forget_idle(cutoff, |id| live.contains(id))
                .into_iter()
                .collect();
            if !forgotten.is_empty() {
                self.hand_over.forgotten += forgotten.len() as u64;
                self.probes.forget_pages_of(&forgotten)?;
            }
            // Counted across refreshes: a burst is forgotten over several.
            let since = self.hand_over.forgotten - self.hand_over.forgotten_at_last_return;
            if since >= RETURN_MEMORY_AFTER_FORGETTING {
                return_freed_memory();
                self.hand_over.forgotten_at_last_return = self.hand_over.forgotten;
            }
        }
        self.hand_over.live_entries = live_entries;
        let orphans: Vec<_> = orphaned_dirty_times(&dirty_since, &snapshot.entries, now)
            .copied()
            .collect();
        for key in orphans {
            self.probes.forget_dirty(&key)?;
        }
        Ok(())
    }
}
