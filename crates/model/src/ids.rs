//! Identities: replicas, dots, version vectors, messages, mailboxes, blobs.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A replica (node). Derived from the node's public key, stable across restarts,
/// never reused: a wiped node gets a new one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaId(pub u64);

impl ReplicaId {
    /// The replica id of a node whose public key (or certificate) is `key`: the
    /// first 8 bytes of its BLAKE3 hash.
    pub fn from_public_key(key: &[u8]) -> Self {
        let hash = blake3::hash(key);
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        ReplicaId(u64::from_be_bytes(first))
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{:x}", self.0)
    }
}

/// Largest counter a dot may carry: 48 bits, so a dot packs into a `u64`
/// together with a 16-bit replica index (see [`crate::replica`]).
pub const COUNTER_MAX: u64 = (1 << 48) - 1;

/// One event: the `counter`-th op created by `replica` (counters start at 1).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// Who created the event.
    pub replica: ReplicaId,
    /// Its position in that replica's sequence of ops, from 1.
    pub counter: u64,
}

impl Dot {
    /// A dot.
    pub fn new(replica: ReplicaId, counter: u64) -> Self {
        Dot { replica, counter }
    }
}

impl fmt::Debug for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}.{}", self.replica, self.counter)
    }
}

/// A message instance: the dot of the append or copy that created it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct MessageId(pub Dot);

/// A mailbox: the dot of its creation. Its UIDVALIDITY derives from it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct MailboxId(pub Dot);

impl MailboxId {
    /// UIDVALIDITY every replica shows for this mailbox, without coordination:
    /// a non-zero 32-bit hash of the mailbox id and the account's
    /// incarnation, so that INBOX (the same id everywhere) and mailboxes of
    /// an account made again (a restore, an import into a fresh account)
    /// get new ones (RFC 9051 §2.3.1.1). Incarnation 0 (accounts made
    /// before there was one) hashes the id alone, as before.
    pub fn uid_validity(&self, incarnation: u64) -> u32 {
        let mut bytes = Vec::with_capacity(24);
        bytes.extend_from_slice(&self.0.replica.0.to_be_bytes());
        bytes.extend_from_slice(&self.0.counter.to_be_bytes());
        if incarnation != 0 {
            bytes.extend_from_slice(&incarnation.to_be_bytes());
        }
        let h = blake3::hash(&bytes);
        let v = u32::from_be_bytes([h.as_bytes()[0], h.as_bytes()[1], h.as_bytes()[2], h.as_bytes()[3]]);
        v.max(1)
    }

    /// Text form used as a key in the account document: `<replica hex>.<counter>`.
    pub fn to_key(&self) -> String {
        format!("{:016x}.{}", self.0.replica.0, self.0.counter)
    }

    /// Parses [`MailboxId::to_key`].
    pub fn from_key(key: &str) -> Option<Self> {
        let (r, c) = key.split_once('.')?;
        if r.len() != 16 {
            return None;
        }
        let replica = u64::from_str_radix(r, 16).ok()?;
        let counter = c.parse().ok()?;
        Some(MailboxId(Dot::new(ReplicaId(replica), counter)))
    }
}

/// Content address of a message body or a large MIME part: BLAKE3 of the bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        BlobId(*blake3::hash(bytes).as_bytes())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// For each replica, the highest counter whose op (and everything before it)
/// has been applied. Ops of one replica are applied in counter order, so one
/// number per replica describes everything seen.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<ReplicaId, u64>);

impl VersionVector {
    /// An empty vector: nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// Highest counter seen of `replica` (0 = none).
    pub fn get(&self, replica: ReplicaId) -> u64 {
        self.0.get(&replica).copied().unwrap_or(0)
    }

    /// Whether the op `dot` is covered.
    pub fn contains(&self, dot: Dot) -> bool {
        self.get(dot.replica) >= dot.counter
    }

    /// Raises the entry of `dot.replica` to at least `dot.counter`.
    pub fn observe(&mut self, dot: Dot) {
        let e = self.0.entry(dot.replica).or_insert(0);
        *e = (*e).max(dot.counter);
    }

    /// Pointwise maximum.
    pub fn join(&mut self, other: &VersionVector) {
        for (r, c) in &other.0 {
            self.observe(Dot::new(*r, *c));
        }
    }

    /// Pointwise minimum: what both hold (ops in it are causally stable
    /// between the two).
    pub fn meet(&self, other: &VersionVector) -> VersionVector {
        VersionVector(self.0.iter().map(|(r, c)| (*r, (*c).min(other.get(*r)))).filter(|(_, c)| *c > 0).collect())
    }

    /// Whether every entry of `other` is covered by `self`.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(r, c)| self.get(*r) >= *c)
    }

    /// How many of this vector's ops `other` lacks.
    pub fn lacking_in(&self, other: &VersionVector) -> u64 {
        self.0.iter().map(|(r, c)| c.saturating_sub(other.get(*r))).sum()
    }

    /// The entries, by replica.
    pub fn iter(&self) -> impl Iterator<Item = (ReplicaId, u64)> + '_ {
        self.0.iter().map(|(r, c)| (*r, *c))
    }

    /// Number of replicas with an entry.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meet_is_what_both_hold() {
        let vv = |e: &[(u64, u64)]| {
            let mut v = VersionVector::new();
            for (r, c) in e {
                v.observe(Dot::new(ReplicaId(*r), *c));
            }
            v
        };
        let (a, b) = (vv(&[(1, 5), (2, 3), (3, 7)]), vv(&[(1, 2), (2, 9)]));
        assert_eq!(a.meet(&b), vv(&[(1, 2), (2, 3)]));
        assert_eq!(a.meet(&b), b.meet(&a));
        assert!(a.dominates(&a.meet(&b)) && b.dominates(&a.meet(&b)));
    }
}
