//! The causal buffer: ops that arrived before their causal past, each filed
//! under the one dot it waits for. Applying an op releases only the ops
//! filed under its dot; each is then applied or filed under its next missing
//! dot. An op is filed at most once per dependency it has (its predecessor
//! from the same replica, then each of its deps), so buffering and releasing
//! cost amortised O(deps) per op, however long the history.
//!
//! This relies on one property of delivery: a replica's ops are applied in
//! counter order, so "the version vector contains dot d" becomes true exactly
//! when the op d itself is applied (a snapshot install, which raises the
//! vector all at once, needs an empty buffer).

use crate::ids::{Dot, VersionVector};
use crate::op::Op;
use std::collections::{BTreeMap, HashMap};

/// Ops waiting for their causal past.
#[derive(Debug, Default)]
pub(crate) struct CausalBuffer {
    ops: BTreeMap<Dot, Op>,
    /// Missing dot → dots of the waiting ops filed under it.
    waiting_on: HashMap<Dot, Vec<Dot>>,
}

/// The first thing `op` lacks in `vv`, or `None` if it can be applied.
pub(crate) fn blocker(vv: &VersionVector, op: &Op) -> Option<Dot> {
    let have = vv.get(op.dot.replica);
    if have + 1 < op.dot.counter {
        return Some(Dot::new(op.dot.replica, op.dot.counter - 1));
    }
    op.deps.iter().find(|d| !vv.contains(**d)).copied()
}

impl CausalBuffer {
    /// Ops waiting.
    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub(crate) fn contains(&self, dot: Dot) -> bool {
        self.ops.contains_key(&dot)
    }

    /// The waiting ops, by dot (to save them).
    pub(crate) fn ops(&self) -> impl Iterator<Item = &Op> {
        self.ops.values()
    }

    /// Files an op that is not ready in `vv` (its blocker is `missing`).
    pub(crate) fn insert(&mut self, op: Op, missing: Dot) {
        assert!(missing != op.dot, "an op never waits for itself");
        self.waiting_on.entry(missing).or_default().push(op.dot);
        self.ops.insert(op.dot, op);
    }

    /// `applied` was just applied (and is in `vv`): the ops it released
    /// that are now ready, in dot order; the others are filed anew.
    pub(crate) fn release(&mut self, applied: Dot, vv: &VersionVector) -> Vec<Op> {
        let Some(mut waiters) = self.waiting_on.remove(&applied) else { return Vec::new() };
        waiters.sort_unstable();
        let mut ready = Vec::new();
        for d in waiters {
            let Some(op) = self.ops.remove(&d) else { continue };
            match blocker(vv, &op) {
                None => ready.push(op),
                Some(missing) => self.insert(op, missing),
            }
        }
        ready
    }

    /// Rebuilds the buffer from saved ops against the version vector.
    pub(crate) fn rebuild(ops: Vec<Op>, vv: &VersionVector) -> (CausalBuffer, Vec<Op>) {
        let mut buffer = CausalBuffer::default();
        let mut ready = Vec::new();
        for op in ops {
            if vv.contains(op.dot) {
                continue;
            }
            match blocker(vv, &op) {
                None => ready.push(op),
                Some(missing) => buffer.insert(op, missing),
            }
        }
        (buffer, ready)
    }
}
