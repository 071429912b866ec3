//! A file's writers by (tgid, ids): a sorted vector, not a map. Most files
//! have one writer, and a one-entry `BTreeMap` allocates a node for eleven
//! (~1.2 KB, the largest part of a new file's memory); this holds exactly
//! the writers it has, and at most `MAX_WRITERS_PER_FILE`. A process whose
//! ids change between writes (setresuid) is one writer per set of ids.

use super::{events::UserIds, file_record::Writer};

/// What tells two writers apart.
pub type WriterKey = (u32, UserIds);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Writers(Vec<Writer>);

impl Writers {
    fn position(&self, key: &WriterKey) -> Result<usize, usize> {
        self.0
            .binary_search_by(|writer| (writer.tgid, writer.ids).cmp(key))
    }

    /// Where the writers of process `tgid` are.
    fn of_process_range(&self, tgid: u32) -> std::ops::Range<usize> {
        let start = self.0.partition_point(|writer| writer.tgid < tgid);
        let end = self.0.partition_point(|writer| writer.tgid <= tgid);
        start..end
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains_key(&self, key: &WriterKey) -> bool {
        self.position(key).is_ok()
    }

    /// The writers of process `tgid` (one per set of ids it wrote with).
    pub fn of_process(&self, tgid: u32) -> &[Writer] {
        &self.0[self.of_process_range(tgid)]
    }

    pub fn of_process_mut(&mut self, tgid: u32) -> &mut [Writer] {
        let range = self.of_process_range(tgid);
        &mut self.0[range]
    }

    /// The writer of `key`, made by `new` if there is none.
    pub fn get_or_insert_with(
        &mut self,
        key: WriterKey,
        new: impl FnOnce() -> Writer,
    ) -> &mut Writer {
        let at = match self.position(&key) {
            Ok(at) => at,
            Err(at) => {
                // One more slot, not doubled: a second writer is rare.
                self.0.reserve_exact(1);
                self.0.insert(at, new());
                at
            }
        };
        &mut self.0[at]
    }

    pub fn remove(&mut self, key: &WriterKey) -> Option<Writer> {
        self.position(key).ok().map(|at| self.0.remove(at))
    }

    /// The writers, by tgid and ids.
    pub fn values(&self) -> std::slice::Iter<'_, Writer> {
        self.0.iter()
    }
}

impl std::ops::Index<&u32> for Writers {
    type Output = Writer;

    /// The first writer of process `tgid`.
    fn index(&self, tgid: &u32) -> &Writer {
        self.of_process(*tgid)
            .first()
            .expect("no writer with this tgid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(tgid: u32, uid: u32, pages: u64) -> Writer {
        Writer {
            tgid,
            ids: ids(uid),
            pages,
            ..Writer::default()
        }
    }

    fn ids(uid: u32) -> UserIds {
        UserIds {
            uid,
            euid: uid,
            ..UserIds::default()
        }
    }

    #[test]
    fn writers_stay_in_order_and_are_found_by_process_and_ids() {
        let mut writers = Writers::default();
        for (tgid, uid) in [(30, 0), (10, 5), (20, 0), (10, 1)] {
            writers
                .get_or_insert_with((tgid, ids(uid)), || writer(tgid, uid, 1))
                .pages += u64::from(tgid);
        }
        // Found, not made again.
        writers
            .get_or_insert_with((20, ids(0)), || writer(20, 0, 999))
            .pages += 1;
        let keys: Vec<_> = writers.values().map(|w| (w.tgid, w.ids.uid)).collect();
        assert_eq!(keys, [(10, 1), (10, 5), (20, 0), (30, 0)]);
        assert_eq!(writers[&20].pages, 22);
        assert_eq!(writers.of_process(10).len(), 2, "one writer per set of ids");
        assert_eq!(writers.of_process(15).len(), 0);
        assert_eq!(writers.remove(&(10, ids(1))).map(|w| w.pages), Some(11));
        assert!(!writers.contains_key(&(10, ids(1))));
        assert!(writers.contains_key(&(10, ids(5))));
        assert_eq!(writers.len(), 3);
    }

    #[test]
    fn one_writer_takes_one_slot() {
        let mut writers = Writers::default();
        writers.get_or_insert_with((7, ids(0)), || writer(7, 0, 1));
        assert_eq!(writers.0.capacity(), 1);
    }
}
