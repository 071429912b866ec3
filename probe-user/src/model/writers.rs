//! A file's writers by tgid: a sorted vector, not a map. Most files have
//! one writer, and a one-entry `BTreeMap<u32, Writer>` allocates a node for
//! eleven (~1.2 KB, the largest part of a new file's memory); this holds
//! exactly the writers it has, and at most `MAX_WRITERS_PER_FILE`.

use super::file_record::Writer;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Writers(Vec<Writer>);

impl Writers {
    fn position(&self, tgid: u32) -> Result<usize, usize> {
        self.0.binary_search_by_key(&tgid, |writer| writer.tgid)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains_key(&self, tgid: &u32) -> bool {
        self.position(*tgid).is_ok()
    }

    pub fn get(&self, tgid: &u32) -> Option<&Writer> {
        self.position(*tgid).ok().map(|at| &self.0[at])
    }

    pub fn get_mut(&mut self, tgid: &u32) -> Option<&mut Writer> {
        self.position(*tgid).ok().map(|at| &mut self.0[at])
    }

    /// The writer of `tgid`, made by `new` if there is none.
    pub fn get_or_insert_with(&mut self, tgid: u32, new: impl FnOnce() -> Writer) -> &mut Writer {
        let at = match self.position(tgid) {
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

    pub fn remove(&mut self, tgid: &u32) -> Option<Writer> {
        self.position(*tgid).ok().map(|at| self.0.remove(at))
    }

    /// The writers, by tgid.
    pub fn values(&self) -> std::slice::Iter<'_, Writer> {
        self.0.iter()
    }

    /// The writers' tgids, in order.
    pub fn keys(&self) -> impl Iterator<Item = &u32> {
        self.0.iter().map(|writer| &writer.tgid)
    }
}

impl std::ops::Index<&u32> for Writers {
    type Output = Writer;

    fn index(&self, tgid: &u32) -> &Writer {
        self.get(tgid).expect("no writer with this tgid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(tgid: u32, pages: u64) -> Writer {
        Writer {
            tgid,
            pages,
            ..Writer::default()
        }
    }

    #[test]
    fn writers_stay_in_tgid_order_and_are_found_by_it() {
        let mut writers = Writers::default();
        for tgid in [30, 10, 20] {
            writers.get_or_insert_with(tgid, || writer(tgid, 1)).pages += u64::from(tgid);
        }
        // Found, not made again.
        writers.get_or_insert_with(20, || writer(20, 999)).pages += 1;
        assert_eq!(writers.keys().copied().collect::<Vec<_>>(), [10, 20, 30]);
        assert_eq!(writers[&20].pages, 22);
        assert_eq!(writers.remove(&10).map(|w| w.pages), Some(11));
        assert!(!writers.contains_key(&10));
        assert_eq!(writers.get(&10), None);
        assert_eq!(writers.len(), 2);
    }

    #[test]
    fn one_writer_takes_one_slot() {
        let mut writers = Writers::default();
        writers.get_or_insert_with(7, || writer(7, 1));
        assert_eq!(writers.0.capacity(), 1);
    }
}
