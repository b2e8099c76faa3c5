//! Where a replica keeps its per-message state.
//!
//! The merge rules in [`crate::replica`] read and write per-message state only
//! through [`Backend`], so the same code runs on [`MemBackend`] (tests,
//! simulator, benchmarks) and on the store's redb tables (the node). Small
//! per-replica state — version vector, replica and keyword tables, mailbox
//! counters, the account document — stays in [`crate::replica::Replica`] and is
//! saved by the store as one record.
//!
//! Ids are *packed*: a dot's replica interned to a 16-bit index (see
//! [`crate::replica::Replica`]) in the top 16 bits of a `u64`, the counter in
//! the low 48.

use crate::ids::BlobId;
use crate::snapshot::ClaimKind;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A dot with its replica interned: index << 48 | counter.
pub type Packed = u64;

/// A failure of the storage under a backend (I/O, corruption).
#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StorageError(pub Box<dyn std::error::Error + Send + Sync>);

/// Result of a backend call.
pub type StorageResult<T> = Result<T, StorageError>;

/// One live keyword add on a message: keyword index and packed dot. Three
/// `u32`s so that two fit inline in 24 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagEntry {
    /// Index in the replica's keyword table.
    pub kw: u32,
    dot_hi: u32,
    dot_lo: u32,
}

impl FlagEntry {
    /// An add of keyword `kw` at `dot`.
    pub fn new(kw: u32, dot: Packed) -> Self {
        FlagEntry { kw, dot_hi: (dot >> 32) as u32, dot_lo: dot as u32 }
    }
    /// The dot of the add.
    pub fn dot(&self) -> Packed {
        ((self.dot_hi as u64) << 32) | self.dot_lo as u64
    }
}

/// The live keyword adds of one message.
pub type FlagSet = SmallVec<[FlagEntry; 2]>;

/// A message in a mailbox: its displayed UID and replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// The message (packed id).
    pub id: Packed,
    /// Location version: move sequence << 16 | mover's replica index.
    pub loc: u64,
    /// Displayed UID (0 while not placed).
    pub uid: u32,
    /// Author of the claim that gives `uid`; other claims are side claims.
    pub claimant: u16,
    /// Live keyword adds.
    pub flags: FlagSet,
}

/// Where a message is: mailbox index and displayed UID (0 while unplaced).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgLoc {
    /// Index in the replica's mailbox table.
    pub mailbox: u32,
    /// Displayed UID, 0 while unplaced.
    pub uid: u32,
}

/// Immutable attributes of a message instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Content.
    pub blob: BlobId,
    /// RFC822.SIZE.
    pub size: u64,
    /// INTERNALDATE, Unix seconds.
    pub internal_date: i64,
}

/// A UID claim other than the one a placed message displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The message.
    pub message: Packed,
    /// Who claimed.
    pub claimant: u16,
}

/// Names one claim: for withdrawals and pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClaimKey {
    /// The UID.
    pub uid: u32,
    /// The message.
    pub message: Packed,
    /// Who claimed.
    pub claimant: u16,
}

/// What a snapshot export reads of a replica's per-message state
/// ([`crate::replica::ExportView`]): reads only, so that a read-only view of
/// the storage (a store's read transaction) can serve an export while the
/// replica goes on writing. `mailbox` arguments are indices in the
/// replica's mailbox table.
pub trait StateReads {
    /// Immutable attributes of a message, if kept.
    fn envelope(&self, m: Packed) -> StorageResult<Option<Envelope>>;
    /// Placed messages with UID ≥ `from`, by UID, at most `limit`.
    fn slots_from(&self, mailbox: u32, from: u32, limit: usize) -> StorageResult<Vec<Slot>>;
    /// The claims of one kind in a mailbox after `after` (from the first
    /// if none), in key order (UID, message, claimant), at most `limit`.
    fn claims_in(
        &self,
        mailbox: u32,
        kind: ClaimKind,
        after: Option<ClaimKey>,
        limit: usize,
    ) -> StorageResult<Vec<ClaimKey>>;
    /// A mailbox's spent UIDs as ranges `start..end`, ascending (for state
    /// snapshots).
    fn dead_in(&self, mailbox: u32) -> StorageResult<Vec<(u32, u32)>>;
}

/// Per-message state of one replica. `mailbox` arguments are indices in the
/// replica's mailbox table.
pub trait Backend: StateReads {
    /// Where a message is, if it is live here.
    fn loc(&self, m: Packed) -> StorageResult<Option<MsgLoc>>;
    /// Records where a message is.
    fn set_loc(&mut self, m: Packed, loc: MsgLoc) -> StorageResult<()>;
    /// Forgets a message's location (expunged).
    fn remove_loc(&mut self, m: Packed) -> StorageResult<()>;
    /// Number of live messages.
    fn message_count(&self) -> StorageResult<u64>;

    /// Records a message's envelope.
    fn set_envelope(&mut self, m: Packed, e: Envelope) -> StorageResult<()>;
    /// Drops them.
    fn remove_envelope(&mut self, m: Packed) -> StorageResult<()>;

    /// The placed message at `uid`.
    fn slot(&self, mailbox: u32, uid: u32) -> StorageResult<Option<Slot>>;
    /// Places a message at `slot.uid`, which must be free.
    fn insert_slot(&mut self, mailbox: u32, slot: Slot) -> StorageResult<()>;
    /// Rewrites a placed message's record (same UID, same message; its
    /// keywords, claimant or location version changed).
    fn update_slot(&mut self, mailbox: u32, slot: &Slot) -> StorageResult<()>;
    /// Removes the message placed at `uid`.
    fn remove_slot(&mut self, mailbox: u32, uid: u32) -> StorageResult<Option<Slot>>;
    /// Number of placed messages in a mailbox.
    fn slot_count(&self, mailbox: u32) -> StorageResult<u64>;

    /// Side claims at a UID.
    fn side_at(&self, mailbox: u32, uid: u32) -> StorageResult<SmallVec<[Claim; 2]>>;
    /// UIDs where a message has side claims.
    fn side_uids_of(&self, mailbox: u32, m: Packed) -> StorageResult<SmallVec<[u32; 2]>>;
    /// UIDs in `from..to` that have side claims.
    fn side_uids_in(&self, mailbox: u32, from: u32, to: u32) -> StorageResult<Vec<u32>>;
    /// Records a side claim (idempotent).
    fn add_side(&mut self, mailbox: u32, uid: u32, claim: Claim) -> StorageResult<()>;
    /// Removes a side claim of `m` at `uid`, returning its claimant.
    fn take_side(&mut self, mailbox: u32, uid: u32, m: Packed) -> StorageResult<Option<u16>>;

    /// Whether a claim was withdrawn.
    fn is_retracted(&self, mailbox: u32, key: ClaimKey) -> StorageResult<bool>;
    /// Records a withdrawal.
    fn add_retracted(&mut self, mailbox: u32, key: ClaimKey) -> StorageResult<()>;
    /// Whether a claim was pinned by another replica's announcement.
    fn is_pinned(&self, mailbox: u32, key: ClaimKey) -> StorageResult<bool>;
    /// Records a pin.
    fn add_pinned(&mut self, mailbox: u32, key: ClaimKey) -> StorageResult<()>;
    /// Whether a claim was one U1 forced (`OpBody::Forced`).
    fn is_forced(&self, mailbox: u32, key: ClaimKey) -> StorageResult<bool>;
    /// Records a forced claim.
    fn add_forced(&mut self, mailbox: u32, key: ClaimKey) -> StorageResult<()>;

    /// Forgets a claim's withdrawal, pin and forced marks (its claim was
    /// buried: see `Replica::bury`).
    fn forget_marks(&mut self, mailbox: u32, key: ClaimKey) -> StorageResult<()>;
    /// Whether a UID is spent for good: an expunged message's claim there
    /// was shown, so the UID never names a message again (see
    /// `Replica::bury`).
    fn is_dead(&self, mailbox: u32, uid: u32) -> StorageResult<bool>;
    /// Records the UIDs `start..end` as spent (idempotent; `start < end`).
    fn add_dead(&mut self, mailbox: u32, start: u32, end: u32) -> StorageResult<()>;
}

/// Adds `start..end` to a set of disjoint, non-adjacent ranges kept as
/// `start → end` (exclusive): `touching` are the ranges that overlap or
/// adjoin it (`s <= end && e >= start`). Returns the starts to remove and
/// the one range to insert in their place.
pub fn dead_union(start: u32, end: u32, touching: impl IntoIterator<Item = (u32, u32)>) -> (Vec<u32>, (u32, u32)) {
    let mut remove = Vec::new();
    let mut range = (start, end);
    for (s, e) in touching {
        remove.push(s);
        range = (range.0.min(s), range.1.max(e));
    }
    (remove, range)
}

#[derive(Debug, Default)]
struct MemMailbox {
    /// Placed messages sorted by UID: also IMAP sequence order.
    slots: Vec<Slot>,
    side: BTreeMap<u32, SmallVec<[Claim; 2]>>,
    side_by_msg: HashMap<Packed, SmallVec<[u32; 2]>>,
    retracted: BTreeSet<ClaimKey>,
    pinned: BTreeSet<ClaimKey>,
    forced: BTreeSet<ClaimKey>,
    /// Spent UIDs: start → end (exclusive).
    dead: BTreeMap<u32, u32>,
}

impl MemMailbox {
    fn position(&self, uid: u32) -> Result<usize, usize> {
        self.slots.binary_search_by_key(&uid, |s| s.uid)
    }
}

/// Per-message state in memory, packed for size.
#[derive(Debug, Default)]
pub struct MemBackend {
    messages: HashMap<Packed, MsgLoc>,
    envelopes: Option<HashMap<Packed, Envelope>>,
    boxes: Vec<MemMailbox>,
}

impl MemBackend {
    /// An empty backend; `keep_envelopes` keeps blob id, size and date (the
    /// memory benchmark turns it off to measure the CRDT state alone).
    pub fn new(keep_envelopes: bool) -> Self {
        MemBackend { envelopes: keep_envelopes.then(HashMap::new), ..Default::default() }
    }

    fn mb(&mut self, i: u32) -> &mut MemMailbox {
        let i = i as usize;
        if self.boxes.len() <= i {
            self.boxes.resize_with(i + 1, MemMailbox::default);
        }
        &mut self.boxes[i]
    }

    fn get(&self, i: u32) -> Option<&MemMailbox> {
        self.boxes.get(i as usize)
    }
}

/// Up to `limit` keys of `set` after `after`, in order.
fn page_of(set: &BTreeSet<ClaimKey>, after: Option<ClaimKey>, limit: usize) -> Vec<ClaimKey> {
    use std::ops::Bound::{Excluded, Unbounded};
    let from = after.map_or(Unbounded, Excluded);
    set.range((from, Unbounded)).take(limit).copied().collect()
}

impl StateReads for MemBackend {
    fn envelope(&self, m: Packed) -> StorageResult<Option<Envelope>> {
        Ok(self.envelopes.as_ref().and_then(|e| e.get(&m).copied()))
    }
    fn slots_from(&self, mailbox: u32, from: u32, limit: usize) -> StorageResult<Vec<Slot>> {
        let Some(b) = self.get(mailbox) else {
            return Ok(Vec::new());
        };
        let start = b.position(from).unwrap_or_else(|p| p);
        Ok(b.slots[start..].iter().take(limit).cloned().collect())
    }
    fn claims_in(
        &self,
        mailbox: u32,
        kind: ClaimKind,
        after: Option<ClaimKey>,
        limit: usize,
    ) -> StorageResult<Vec<ClaimKey>> {
        let Some(b) = self.get(mailbox) else { return Ok(Vec::new()) };
        Ok(match kind {
            ClaimKind::Side => {
                use std::ops::Bound::{Included, Unbounded};
                let from = after.map_or(Unbounded, |k| Included(k.uid));
                let keys = b.side.range((from, Unbounded)).flat_map(|(uid, claims)| {
                    claims.iter().map(|c| ClaimKey { uid: *uid, message: c.message, claimant: c.claimant })
                });
                keys.filter(|k| after.is_none_or(|a| *k > a)).take(limit).collect()
            }
            ClaimKind::Retracted => page_of(&b.retracted, after, limit),
            ClaimKind::Pinned => page_of(&b.pinned, after, limit),
            ClaimKind::Forced => page_of(&b.forced, after, limit),
        })
    }
    fn dead_in(&self, mailbox: u32) -> StorageResult<Vec<(u32, u32)>> {
        Ok(self.get(mailbox).map(|b| b.dead.iter().map(|(s, e)| (*s, *e)).collect()).unwrap_or_default())
    }
}

impl Backend for MemBackend {
    fn loc(&self, m: Packed) -> StorageResult<Option<MsgLoc>> {
        Ok(self.messages.get(&m).copied())
    }
    fn set_loc(&mut self, m: Packed, loc: MsgLoc) -> StorageResult<()> {
        self.messages.insert(m, loc);
        Ok(())
    }
    fn remove_loc(&mut self, m: Packed) -> StorageResult<()> {
        self.messages.remove(&m);
        Ok(())
    }
    fn message_count(&self) -> StorageResult<u64> {
        Ok(self.messages.len() as u64)
    }
    fn set_envelope(&mut self, m: Packed, e: Envelope) -> StorageResult<()> {
        if let Some(map) = self.envelopes.as_mut() {
            map.insert(m, e);
        }
        Ok(())
    }
    fn remove_envelope(&mut self, m: Packed) -> StorageResult<()> {
        if let Some(map) = self.envelopes.as_mut() {
            map.remove(&m);
        }
        Ok(())
    }
    fn slot(&self, mailbox: u32, uid: u32) -> StorageResult<Option<Slot>> {
        Ok(self.get(mailbox).and_then(|b| b.position(uid).ok().map(|p| b.slots[p].clone())))
    }
    fn insert_slot(&mut self, mailbox: u32, slot: Slot) -> StorageResult<()> {
        let b = self.mb(mailbox);
        let pos = b.position(slot.uid).expect_err("UID is free");
        b.slots.insert(pos, slot);
        Ok(())
    }
    fn update_slot(&mut self, mailbox: u32, slot: &Slot) -> StorageResult<()> {
        let b = self.mb(mailbox);
        if let Ok(p) = b.position(slot.uid) {
            debug_assert_eq!(b.slots[p].id, slot.id, "the same message");
            b.slots[p] = slot.clone();
        }
        Ok(())
    }
    fn remove_slot(&mut self, mailbox: u32, uid: u32) -> StorageResult<Option<Slot>> {
        let b = self.mb(mailbox);
        Ok(b.position(uid).ok().map(|p| b.slots.remove(p)))
    }
    fn slot_count(&self, mailbox: u32) -> StorageResult<u64> {
        Ok(self.get(mailbox).map_or(0, |b| b.slots.len() as u64))
    }
    fn side_at(&self, mailbox: u32, uid: u32) -> StorageResult<SmallVec<[Claim; 2]>> {
        Ok(self.get(mailbox).and_then(|b| b.side.get(&uid).cloned()).unwrap_or_default())
    }
    fn side_uids_of(&self, mailbox: u32, m: Packed) -> StorageResult<SmallVec<[u32; 2]>> {
        Ok(self.get(mailbox).and_then(|b| b.side_by_msg.get(&m).cloned()).unwrap_or_default())
    }
    fn side_uids_in(&self, mailbox: u32, from: u32, to: u32) -> StorageResult<Vec<u32>> {
        Ok(self.get(mailbox).map(|b| b.side.range(from..to).map(|(u, _)| *u).collect()).unwrap_or_default())
    }
    fn add_side(&mut self, mailbox: u32, uid: u32, claim: Claim) -> StorageResult<()> {
        let b = self.mb(mailbox);
        // Kept in the order the store's tables keep them (claims by message
        // then claimant, UIDs ascending), so that both backends list them,
        // and `take_side` takes, alike.
        let list = b.side.entry(uid).or_default();
        let key = |c: &Claim| (c.message, c.claimant);
        let Err(at) = list.binary_search_by_key(&key(&claim), key) else {
            return Ok(());
        };
        list.insert(at, claim);
        let uids = b.side_by_msg.entry(claim.message).or_default();
        if let Err(at) = uids.binary_search(&uid) {
            uids.insert(at, uid);
        }
        Ok(())
    }
    fn take_side(&mut self, mailbox: u32, uid: u32, m: Packed) -> StorageResult<Option<u16>> {
        let b = self.mb(mailbox);
        let Some(list) = b.side.get_mut(&uid) else {
            return Ok(None);
        };
        let Some(pos) = list.iter().position(|c| c.message == m) else {
            return Ok(None);
        };
        let claim = list.remove(pos);
        let more_of_m = list.iter().any(|c| c.message == m);
        if list.is_empty() {
            b.side.remove(&uid);
        }
        if !more_of_m {
            if let Some(uids) = b.side_by_msg.get_mut(&m) {
                uids.retain(|u| *u != uid);
                if uids.is_empty() {
                    b.side_by_msg.remove(&m);
                }
            }
        }
        Ok(Some(claim.claimant))
    }
    fn is_retracted(&self, mailbox: u32, key: ClaimKey) -> StorageResult<bool> {
        Ok(self.get(mailbox).is_some_and(|b| b.retracted.contains(&key)))
    }
    fn add_retracted(&mut self, mailbox: u32, key: ClaimKey) -> StorageResult<()> {
        self.mb(mailbox).retracted.insert(key);
        Ok(())
    }
    fn is_pinned(&self, mailbox: u32, key: ClaimKey) -> StorageResult<bool> {
        Ok(self.get(mailbox).is_some_and(|b| b.pinned.contains(&key)))
    }
    fn add_pinned(&mut self, mailbox: u32, key: ClaimKey) -> StorageResult<()> {
        self.mb(mailbox).pinned.insert(key);
        Ok(())
    }
    fn is_forced(&self, mailbox: u32, key: ClaimKey) -> StorageResult<bool> {
        Ok(self.get(mailbox).is_some_and(|b| b.forced.contains(&key)))
    }
    fn add_forced(&mut self, mailbox: u32, key: ClaimKey) -> StorageResult<()> {
        self.mb(mailbox).forced.insert(key);
        Ok(())
    }
    fn forget_marks(&mut self, mailbox: u32, key: ClaimKey) -> StorageResult<()> {
        let b = self.mb(mailbox);
        b.retracted.remove(&key);
        b.pinned.remove(&key);
        b.forced.remove(&key);
        Ok(())
    }
    fn is_dead(&self, mailbox: u32, uid: u32) -> StorageResult<bool> {
        Ok(self.get(mailbox).is_some_and(|b| b.dead.range(..=uid).next_back().is_some_and(|(_, e)| uid < *e)))
    }
    fn add_dead(&mut self, mailbox: u32, start: u32, end: u32) -> StorageResult<()> {
        let b = self.mb(mailbox);
        let touching: Vec<(u32, u32)> =
            b.dead.range(..=end).rev().take_while(|(_, e)| **e >= start).map(|(s, e)| (*s, *e)).collect();
        let (remove, (s, e)) = dead_union(start, end, touching);
        for r in remove {
            b.dead.remove(&r);
        }
        b.dead.insert(s, e);
        Ok(())
    }
}
