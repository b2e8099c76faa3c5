//! Sequence numbers ↔ UIDs of a selected mailbox, as runs of consecutive
//! UIDs: memory grows with the number of gaps, not of messages (a mailbox of
//! 100,000 imported messages is one run), so an idle session stays small.

/// The UIDs a session has shown, in sequence order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UidMap {
    /// (first UID, sequence number of it, 0-based), ascending in both.
    runs: Vec<(u32, u32)>,
    len: u32,
}

impl UidMap {
    /// From ascending UIDs.
    pub fn from_sorted(uids: impl IntoIterator<Item = u32>) -> UidMap {
        let mut m = UidMap::default();
        for u in uids {
            m.push(u);
        }
        m
    }

    /// Messages.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn run_len(&self, i: usize) -> u32 {
        self.runs.get(i + 1).map_or(self.len, |r| r.1) - self.runs[i].1
    }

    /// The highest UID (0 if none).
    pub fn last(&self) -> u32 {
        self.runs.last().map_or(0, |&(u, s)| u + (self.len - s) - 1)
    }

    /// Appends a UID above every other.
    pub fn push(&mut self, uid: u32) {
        debug_assert!(self.is_empty() || uid > self.last());
        if self.is_empty() || uid != self.last() + 1 {
            self.runs.push((uid, self.len));
        }
        self.len += 1;
    }

    /// 0-based sequence index of a UID.
    pub fn seq_of(&self, uid: u32) -> Option<usize> {
        let i = self.runs.partition_point(|r| r.0 <= uid).checked_sub(1)?;
        let off = uid - self.runs[i].0;
        (off < self.run_len(i)).then(|| (self.runs[i].1 + off) as usize)
    }

    /// UID at a 0-based sequence index.
    pub fn uid(&self, seq: usize) -> Option<u32> {
        let seq = u32::try_from(seq).ok().filter(|&s| s < self.len)?;
        let i = self.runs.partition_point(|r| r.1 <= seq) - 1;
        Some(self.runs[i].0 + (seq - self.runs[i].1))
    }

    /// Removes a UID (an expunge); later messages move down by one.
    pub fn remove(&mut self, uid: u32) -> Option<usize> {
        let seq = self.seq_of(uid)?;
        let i = self.runs.partition_point(|r| r.0 <= uid) - 1;
        let (first, start) = self.runs[i];
        let (off, len) = (uid - first, self.run_len(i));
        let mut shift_from = i + 1;
        if len == 1 {
            self.runs.remove(i);
            shift_from = i;
        } else if off == 0 {
            self.runs[i].0 += 1;
        } else if off < len - 1 {
            // Split: the rest starts where the removed one was.
            self.runs.insert(i + 1, (uid + 1, start + off));
            shift_from = i + 2;
        }
        for r in &mut self.runs[shift_from..] {
            r.1 -= 1;
        }
        self.len -= 1;
        Some(seq)
    }

    /// Brings the map forward by what changed in the mailbox: `vanished`
    /// UIDs go, `changed` UIDs (ascending) above every shown one come.
    /// Returns the removed (UID, 0-based sequence index), highest first, so
    /// each index is right when read in order, and the added UIDs. A changed
    /// UID below the highest shown is an existing message (or, which U1 rules
    /// out at a replica that announced, one that cannot be numbered).
    pub fn advance(
        &mut self,
        vanished: &[u32],
        changed: impl IntoIterator<Item = u32>,
    ) -> (Vec<(u32, usize)>, Vec<u32>) {
        let mut gone: Vec<u32> = vanished.iter().copied().filter(|&u| self.seq_of(u).is_some()).collect();
        gone.sort_unstable_by(|a, b| b.cmp(a));
        let removed = gone.into_iter().filter_map(|u| self.remove(u).map(|i| (u, i))).collect();
        let mut added = Vec::new();
        for u in changed {
            if u > self.last() {
                self.push(u);
                added.push(u);
            }
        }
        (removed, added)
    }

    /// Messages with a UID at or above `uid`.
    pub fn count_from(&self, uid: u32) -> usize {
        let i = self.runs.partition_point(|r| r.0 <= uid);
        let start = match i.checked_sub(1) {
            None => 0,
            Some(j) => {
                let off = uid - self.runs[j].0;
                if off < self.run_len(j) {
                    self.runs[j].1 + off
                } else {
                    self.runs.get(i).map_or(self.len, |r| r.1)
                }
            }
        };
        (self.len - start) as usize
    }

    /// Every UID, as ascending inclusive ranges.
    pub fn ranges(&self) -> Vec<(u32, u32)> {
        (0..self.runs.len()).map(|i| (self.runs[i].0, self.runs[i].0 + self.run_len(i) - 1)).collect()
    }

    /// UID ranges covering 0-based sequence indexes `lo..=hi`.
    pub fn uid_ranges(&self, lo: usize, hi: usize, out: &mut Vec<(u32, u32)>) {
        let mut seq = lo;
        while seq <= hi && seq < self.len() {
            let i = self.runs.partition_point(|r| r.1 as usize <= seq) - 1;
            let end = (self.runs[i].1 + self.run_len(i)) as usize - 1;
            let stop = end.min(hi);
            let a = self.runs[i].0 + (seq as u32 - self.runs[i].1);
            out.push((a, a + (stop - seq) as u32));
            seq = stop + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_are_the_runs() {
        let m = UidMap::from_sorted([1, 2, 3, 7, 9, 10]);
        assert_eq!(m.ranges(), vec![(1, 3), (7, 7), (9, 10)]);
        assert_eq!(UidMap::default().ranges(), vec![]);
    }

    #[test]
    fn advance_removes_highest_first_and_adds_above() {
        let mut m = UidMap::from_sorted([1, 2, 3, 5, 8]);
        let (removed, added) = m.advance(&[2, 8, 40], [3, 5, 9, 12]);
        assert_eq!(removed, vec![(8, 4), (2, 1)]);
        assert_eq!(added, vec![9, 12]);
        assert_eq!(m, UidMap::from_sorted([1, 3, 5, 9, 12]));
    }

    proptest! {
        /// The map agrees with a plain vector through pushes and removals.
        #[test]
        fn agrees_with_a_vector(gaps in prop::collection::vec(1u32..4, 0..60), removals in prop::collection::vec(any::<prop::sample::Index>(), 0..40)) {
            let mut uids = Vec::new();
            let mut u = 0;
            for g in gaps {
                u += g;
                uids.push(u);
            }
            let mut m = UidMap::from_sorted(uids.clone());
            for r in removals {
                if uids.is_empty() {
                    break;
                }
                let uid = uids.remove(r.index(uids.len()));
                prop_assert!(m.remove(uid).is_some());
                prop_assert!(m.remove(uid).is_none());
            }
            prop_assert_eq!(m.len(), uids.len());
            prop_assert_eq!(m.last(), uids.last().copied().unwrap_or(0));
            for (i, &u) in uids.iter().enumerate() {
                prop_assert_eq!(m.uid(i), Some(u));
                prop_assert_eq!(m.seq_of(u), Some(i));
            }
            prop_assert_eq!(m.uid(uids.len()), None);
            for probe in 0..u + 2 {
                prop_assert_eq!(m.count_from(probe), uids.iter().filter(|&&x| x >= probe).count());
            }
            if !uids.is_empty() {
                let (lo, hi) = (uids.len() / 3, uids.len() - 1);
                let mut ranges = Vec::new();
                m.uid_ranges(lo, hi, &mut ranges);
                let covered: Vec<u32> = ranges.iter().flat_map(|&(a, b)| a..=b).collect();
                prop_assert_eq!(&covered[..], &uids[lo..=hi]);
            }
        }
    }
}
