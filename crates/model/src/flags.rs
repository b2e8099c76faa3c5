//! Add-wins observed-remove set of keywords, as a delta-state CRDT.
//!
//! `+kw` creates a fresh dot; `-kw` removes exactly the dots its author had
//! observed. A concurrent `+kw` carries a dot the remover never saw, so it
//! survives: add wins. Changes travel as [`FlagDelta`]s, never as final flag
//! lists, because a final list cannot tell `\Seen` from `+\Seen -\Flagged`.
//!
//! [`FlagState`] is the textbook form (a dot store plus its own causal
//! context) used as the reference model and in the algebra tests. The replica
//! stores a packed form whose causal context is the replica's version vector
//! (see [`crate::replica`]); both apply the same deltas.

use crate::ids::Dot;
use crate::keyword::Keyword;
use std::collections::{BTreeMap, BTreeSet};

/// A change to one message's keywords: the adds (each with the dot of the op
/// that made it) and the dots of the adds its author observed and removes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlagDelta {
    /// `+kw` at a fresh dot.
    pub add: Vec<(Keyword, Dot)>,
    /// Earlier adds (keyword and dot) that the author saw and removes.
    pub remove: Vec<(Keyword, Dot)>,
}

/// A keyword set with its causal context: a join-semilattice. An add event is
/// named by `(keyword, dot)` because one op may add several keywords.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlagState {
    entries: BTreeSet<(Keyword, Dot)>,
    context: BTreeSet<(Keyword, Dot)>,
}

impl FlagState {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The delta of `+kw` at `dot` (the delta alone; apply it with [`Self::join`]).
    pub fn add_delta(kw: Keyword, dot: Dot) -> FlagState {
        FlagState { entries: [(kw.clone(), dot)].into(), context: [(kw, dot)].into() }
    }

    /// The delta of `-kw` as seen by this state: removes every observed dot of `kw`.
    pub fn remove_delta(&self, kw: &Keyword) -> FlagState {
        let context = self.entries.iter().filter(|(k, _)| k == kw).cloned().collect();
        FlagState { entries: BTreeSet::new(), context }
    }

    /// The least upper bound of two states (or of a state and a delta).
    pub fn join(&self, other: &FlagState) -> FlagState {
        let entries = self
            .entries
            .iter()
            .filter(|e| other.entries.contains(e) || !other.context.contains(e))
            .chain(other.entries.iter().filter(|e| !self.context.contains(e)))
            .cloned()
            .collect();
        let context = self.context.union(&other.context).cloned().collect();
        FlagState { entries, context }
    }

    /// Converts a wire delta into the delta-state form.
    pub fn from_delta(delta: &FlagDelta) -> FlagState {
        let mut s = FlagState::new();
        for (kw, dot) in &delta.add {
            s.entries.insert((kw.clone(), *dot));
            s.context.insert((kw.clone(), *dot));
        }
        s.context.extend(delta.remove.iter().cloned());
        s
    }

    /// The keywords present.
    pub fn keywords(&self) -> BTreeSet<Keyword> {
        self.entries.iter().map(|(k, _)| k.clone()).collect()
    }

    /// Dots of the live adds, per keyword.
    pub fn dots(&self) -> BTreeMap<Keyword, Vec<Dot>> {
        let mut m: BTreeMap<Keyword, Vec<Dot>> = BTreeMap::new();
        for (k, d) in &self.entries {
            m.entry(k.clone()).or_default().push(*d);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ReplicaId;
    use proptest::prelude::*;

    fn d(r: u64, c: u64) -> Dot {
        Dot::new(ReplicaId(r), c)
    }

    #[test]
    fn concurrent_add_and_remove_keeps_keyword() {
        let base = FlagState::add_delta(Keyword::Seen, d(1, 1));
        // A removes \Seen having seen d(1,1); B concurrently re-adds it.
        let a = base.join(&base.remove_delta(&Keyword::Seen));
        let b = base.join(&FlagState::add_delta(Keyword::Seen, d(2, 1)));
        assert!(a.keywords().is_empty());
        assert!(a.join(&b).keywords().contains(&Keyword::Seen));
        assert_eq!(a.join(&b), b.join(&a));
    }

    /// Three replica states reached by one random history of adds and removes
    /// (each replica working from its own state, with occasional gossip), so
    /// that dots are unique across them as they are in a real system.
    fn arb_states() -> impl Strategy<Value = Vec<FlagState>> {
        let step = (0u64..3, any::<bool>(), 0usize..3);
        proptest::collection::vec(step, 0..12).prop_map(|steps| {
            let kws = [Keyword::Seen, Keyword::Flagged, Keyword::parse("work").unwrap()];
            let mut replicas = vec![FlagState::new(); 3];
            let mut counters = [0u64; 3];
            for (i, (r, add, k)) in steps.into_iter().enumerate() {
                let r = r as usize;
                let delta = if add {
                    counters[r] += 1;
                    FlagState::add_delta(kws[k].clone(), d(r as u64, counters[r]))
                } else {
                    replicas[r].remove_delta(&kws[k])
                };
                replicas[r] = replicas[r].join(&delta);
                // occasionally gossip one replica's state to the next
                if i % 4 == 3 {
                    let next = (r + 1) % 3;
                    replicas[next] = replicas[next].join(&replicas[r]);
                }
            }
            replicas
        })
    }

    proptest! {
        #[test]
        fn join_is_commutative(s in arb_states()) {
            let (a, b) = (&s[0], &s[1]);
            prop_assert_eq!(a.join(b), b.join(a));
        }

        #[test]
        fn join_is_associative(s in arb_states()) {
            let (a, b, c) = (&s[0], &s[1], &s[2]);
            prop_assert_eq!(a.join(b).join(c), a.join(&b.join(c)));
        }

        #[test]
        fn join_is_idempotent(s in arb_states()) {
            let (a, b) = (s[0].clone(), s[1].clone());
            prop_assert_eq!(a.join(&a), a.clone());
            let ab = a.join(&b);
            prop_assert_eq!(ab.join(&b), ab);
        }
    }
}
