//! UID sets as sorted inclusive ranges (`1:3,7` is `[(1, 3), (7, 7)]`): what
//! QRESYNC's known UIDs and VANISHED are written as.

/// The ranges of ascending UIDs (runs of consecutive ones joined).
pub fn of_sorted(uids: impl IntoIterator<Item = u32>) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for u in uids {
        match out.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(u) => *hi = u,
            _ => out.push((u, u)),
        }
    }
    out
}

/// `ranges` sorted, with overlapping and adjacent ones joined.
pub fn merged(ranges: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for (lo, hi) in sorted {
        match out.last_mut() {
            Some((_, h)) if lo <= h.saturating_add(1) => *h = (*h).max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// Whether `merged` (see [`merged`]) holds `u`: a binary search.
pub fn contains(merged: &[(u32, u32)], u: u32) -> bool {
    let i = merged.partition_point(|&(_, hi)| hi < u);
    merged.get(i).is_some_and(|&(lo, _)| lo <= u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_join_runs_and_answer_membership() {
        assert_eq!(of_sorted([1, 2, 3, 7, 9, 10, u32::MAX]), vec![(1, 3), (7, 7), (9, 10), (u32::MAX, u32::MAX)]);
        let m = merged(&[(7, 9), (1, 3), (2, 5), (10, 10)]);
        assert_eq!(m, vec![(1, 5), (7, 10)]);
        assert!(contains(&m, 1) && contains(&m, 5) && contains(&m, 8) && contains(&m, 10));
        assert!(!contains(&m, 6) && !contains(&m, 11) && !contains(&m, 0));
    }
}
