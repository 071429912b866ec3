//! A file's set of page indexes: the few pages most files have kept inline
//! (no allocation), a compressed bitmap (`RoaringTreemap`) beyond. A
//! one-page `RoaringTreemap` allocates ~500 bytes (a B-tree node for eleven
//! 2^32-page ranges, and a container); a build or an unpacked archive
//! makes hundreds of thousands of one-page files.

use roaring::RoaringTreemap;

/// Pages kept inline before the set moves to a bitmap.
const INLINE: usize = 2;

#[derive(Clone, Debug)]
pub enum PageSet {
    /// Sorted, `len` of them used.
    Few {
        pages: [u64; INLINE],
        len: u8,
    },
    Many(RoaringTreemap),
}

impl Default for PageSet {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl PartialEq for PageSet {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for PageSet {}

impl FromIterator<u64> for PageSet {
    fn from_iter<I: IntoIterator<Item = u64>>(pages: I) -> Self {
        let mut set = Self::new();
        for page in pages {
            set.insert(page);
        }
        set
    }
}

impl PageSet {
    pub const EMPTY: PageSet = PageSet::Few {
        pages: [0; INLINE],
        len: 0,
    };

    pub fn new() -> Self {
        Self::default()
    }

    fn few(&self) -> Option<&[u64]> {
        match self {
            Self::Few { pages, len } => Some(&pages[..usize::from(*len)]),
            Self::Many(_) => None,
        }
    }

    /// The bitmap, made from the inline pages if need be.
    fn bitmap(&mut self) -> &mut RoaringTreemap {
        if let Some(pages) = self.few() {
            *self = Self::Many(pages.iter().copied().collect());
        }
        match self {
            Self::Many(bitmap) => bitmap,
            Self::Few { .. } => unreachable!("made a bitmap above"),
        }
    }

    fn from_bitmap(bitmap: RoaringTreemap) -> Self {
        if bitmap.len() <= INLINE as u64 {
            bitmap.iter().collect()
        } else {
            Self::Many(bitmap)
        }
    }

    fn to_bitmap(&self) -> RoaringTreemap {
        match self {
            Self::Few { .. } => self.iter().collect(),
            Self::Many(bitmap) => bitmap.clone(),
        }
    }

    /// Adds `page`; false when it was there already.
    pub fn insert(&mut self, page: u64) -> bool {
        if let Self::Few { pages, len } = self {
            let used = usize::from(*len);
            match pages[..used].binary_search(&page) {
                Ok(_) => return false,
                Err(at) if used < INLINE => {
                    pages.copy_within(at..used, at + 1);
                    pages[at] = page;
                    *len += 1;
                    return true;
                }
                Err(_) => {}
            }
        }
        self.bitmap().insert(page)
    }

    /// Adds every page of `range`; returns how many were not there.
    pub fn insert_range(&mut self, range: std::ops::Range<u64>) -> u64 {
        if range.end.saturating_sub(range.start) <= INLINE as u64 {
            return range.filter(|&page| self.insert(page)).count() as u64;
        }
        self.bitmap().insert_range(range)
    }

    /// Removes `page`; false when it was not there.
    pub fn remove(&mut self, page: u64) -> bool {
        match self {
            Self::Few { pages, len } => {
                let used = usize::from(*len);
                let Ok(at) = pages[..used].binary_search(&page) else {
                    return false;
                };
                pages.copy_within(at + 1..used, at);
                *len -= 1;
                true
            }
            Self::Many(bitmap) => bitmap.remove(page),
        }
    }

    pub fn contains(&self, page: u64) -> bool {
        match self {
            Self::Few { .. } => self.few().is_some_and(|pages| pages.contains(&page)),
            Self::Many(bitmap) => bitmap.contains(page),
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            Self::Few { len, .. } => u64::from(*len),
            Self::Many(bitmap) => bitmap.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn min(&self) -> Option<u64> {
        self.iter().next()
    }

    pub fn max(&self) -> Option<u64> {
        match self {
            Self::Few { .. } => self.few().and_then(|pages| pages.last().copied()),
            Self::Many(bitmap) => bitmap.max(),
        }
    }

    /// Pages at or below `page`.
    pub fn rank(&self, page: u64) -> u64 {
        match self {
            Self::Few { .. } => self.iter().filter(|&p| p <= page).count() as u64,
            Self::Many(bitmap) => bitmap.rank(page),
        }
    }

    /// The pages, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let (few, many) = match self {
            Self::Few { .. } => (self.few(), None),
            Self::Many(bitmap) => (None, Some(bitmap.iter())),
        };
        few.into_iter()
            .flatten()
            .copied()
            .chain(many.into_iter().flatten())
    }

    /// The pages of `self` not in `other`.
    pub fn difference(&self, other: &Self) -> Self {
        match self {
            Self::Few { .. } => self.iter().filter(|&page| !other.contains(page)).collect(),
            Self::Many(bitmap) => Self::from_bitmap(bitmap - &other.to_bitmap()),
        }
    }

    /// Adds the pages of `other`.
    pub fn union_with(&mut self, other: &Self) {
        match other {
            Self::Few { .. } => {
                for page in other.iter() {
                    self.insert(page);
                }
            }
            Self::Many(bitmap) => *self.bitmap() |= bitmap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_few_pages_stay_inline_and_more_move_to_a_bitmap() {
        let mut set = PageSet::new();
        assert!(set.insert(9));
        assert!(set.insert(3));
        assert!(!set.insert(9));
        assert!(matches!(set, PageSet::Few { len: 2, .. }));
        assert_eq!(set.iter().collect::<Vec<_>>(), [3, 9]);
        assert!(set.insert(u64::MAX));
        assert!(matches!(set, PageSet::Many(_)));
        assert_eq!(set.iter().collect::<Vec<_>>(), [3, 9, u64::MAX]);
        assert_eq!(set.insert_range(8..12), 3);
        assert_eq!(
            (set.min(), set.max(), set.len()),
            (Some(3), Some(u64::MAX), 6)
        );
    }

    /// One operation on a page set, and the same on a plain bitmap.
    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64),
        InsertRange(u64, u64),
        Remove(u64),
        Difference(Vec<u64>),
        Union(Vec<u64>),
    }

    fn page() -> impl Strategy<Value = u64> {
        prop_oneof![0..16u64, any::<u64>()]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            page().prop_map(Op::Insert),
            (0..16u64, 0..8u64).prop_map(|(start, len)| Op::InsertRange(start, len)),
            page().prop_map(Op::Remove),
            prop::collection::vec(page(), 0..5).prop_map(Op::Difference),
            prop::collection::vec(page(), 0..5).prop_map(Op::Union),
        ]
    }

    proptest! {
        /// Whatever is done to it, a page set holds what a bitmap would,
        /// and says so through every accessor.
        #[test]
        fn a_page_set_behaves_as_a_bitmap(ops in prop::collection::vec(op(), 0..40)) {
            let mut set = PageSet::new();
            let mut model = RoaringTreemap::new();
            for op in ops {
                match op {
                    Op::Insert(page) => prop_assert_eq!(set.insert(page), model.insert(page)),
                    Op::InsertRange(start, len) => prop_assert_eq!(
                        set.insert_range(start..start + len),
                        model.insert_range(start..start + len)
                    ),
                    Op::Remove(page) => prop_assert_eq!(set.remove(page), model.remove(page)),
                    Op::Difference(pages) => {
                        let other: PageSet = pages.iter().copied().collect();
                        set = set.difference(&other);
                        model -= pages.into_iter().collect::<RoaringTreemap>();
                    }
                    Op::Union(pages) => {
                        let other: PageSet = pages.iter().copied().collect();
                        set.union_with(&other);
                        model |= pages.into_iter().collect::<RoaringTreemap>();
                    }
                }
                prop_assert_eq!(set.iter().collect::<Vec<_>>(), model.iter().collect::<Vec<_>>());
                prop_assert_eq!(set.len(), model.len());
                prop_assert_eq!((set.min(), set.max()), (model.min(), model.max()));
                for probe in [0, 1, 5, 15, u64::MAX] {
                    prop_assert_eq!(set.contains(probe), model.contains(probe));
                    prop_assert_eq!(set.rank(probe), model.rank(probe));
                }
            }
        }
    }
}
