//! The model's per-message state in redb tables, inside one write transaction.
//!
//! Every key starts with the account number. Besides what the model asks for,
//! placing, re-flagging and removing a message maintain the IMAP view: a
//! per-account MODSEQ counter, each placed message's MODSEQ, a change index
//! (MODSEQ → UID) for CHANGEDSINCE, a VANISHED index for QRESYNC, and per
//! mailbox HIGHESTMODSEQ and message count.

use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};
use smallvec::SmallVec;
use starling_model::backend::{Backend, Claim, ClaimKey, Envelope, MsgLoc, Packed, Slot, StateReads, StorageResult};
use starling_model::snapshot::ClaimKind;
use starling_model::{BlobId, ReplicaId, StorageError};

pub(crate) type Key2 = (u32, u64);
/// (account, mailbox, UID).
pub(crate) type Key3 = (u32, u32, u32);
pub(crate) type ClaimRow = (u32, u32, u32, u64, u16);

pub(crate) const LOCS: TableDefinition<Key2, (u32, u32)> = TableDefinition::new("locs");
/// A row per expunged message, in stores before format 11 (which drops
/// it at open: "expunged" is derived now, `docs/semantics.md`).
pub(crate) const TOMBSTONES: TableDefinition<Key2, ()> = TableDefinition::new("tombstones");
pub(crate) const ENVELOPES: TableDefinition<Key2, &[u8]> = TableDefinition::new("envelopes");
pub(crate) const SLOTS: TableDefinition<(u32, u32, u32), &[u8]> = TableDefinition::new("slots");
pub(crate) const SIDE: TableDefinition<ClaimRow, ()> = TableDefinition::new("side_claims");
pub(crate) const SIDE_BY_MSG: TableDefinition<(u32, u32, u64, u32), ()> = TableDefinition::new("side_by_message");
pub(crate) const RETRACTED: TableDefinition<ClaimRow, ()> = TableDefinition::new("retracted");
pub(crate) const PINNED: TableDefinition<ClaimRow, ()> = TableDefinition::new("pinned");
pub(crate) const FORCED: TableDefinition<ClaimRow, ()> = TableDefinition::new("forced");
/// (account, mailbox, first UID) → end (exclusive) of a range of spent
/// UIDs: a shown claim of an expunged message was there, and the claims
/// of expunged messages there were dropped (`Replica::bury`).
pub(crate) const DEAD: TableDefinition<(u32, u32, u32), u32> = TableDefinition::new("spent_uids");
/// (account, mailbox, MODSEQ) → uid changed then: one row per placed
/// message, at the MODSEQ its record carries (a change of the message
/// replaces its row; its removal removes it).
pub(crate) const CHANGES: TableDefinition<(u32, u32, u64), u32> = TableDefinition::new("changes");
/// (account, mailbox, MODSEQ) → uid that vanished then: the mailbox's
/// newest expunges, at most [`crate::StoreOptions::vanished_per_mailbox`]
/// of them ([`VANISHED_KEPT`]).
pub(crate) const VANISHED: TableDefinition<(u32, u32, u64), u32> = TableDefinition::new("vanished");
/// (account, mailbox) → (floor, rows): the mailbox's [`VANISHED`] rows
/// and the MODSEQ of the newest one it forgot (0: none). A client's
/// MODSEQ below the floor is answered with an over-report.
pub(crate) const VANISHED_KEPT: TableDefinition<(u32, u32), (u64, u64)> = TableDefinition::new("vanished_kept");
/// (account, mailbox) → (HIGHESTMODSEQ, messages).
pub(crate) const MAILBOX_COUNTS: TableDefinition<(u32, u32), (u64, u64)> = TableDefinition::new("mailbox_counts");
/// account → (MODSEQ counter, live messages).
pub(crate) const ACCOUNT_COUNTS: TableDefinition<u32, (u64, u64)> = TableDefinition::new("account_counts");
/// (body id, account) → how many of the account's messages (envelopes)
/// name the body; no row at zero. Kept by [`RedbBackend::set_envelope`]
/// and [`RedbBackend::remove_envelope`], so it commits with the envelopes.
pub(crate) const BLOB_REFS: TableDefinition<([u8; 32], u32), u64> = TableDefinition::new("blob_refs");
/// (account, body id) → size, for every body the account's messages name
/// whose bytes this store has not received *for that account*: what is
/// still to fetch, read in O(missing) rather than by scanning the
/// envelopes. A row appears with the account's first reference
/// ([`RedbBackend::set_envelope`]) and goes with its last; it also goes
/// when the bytes are stored for the account — by a local write of the
/// account, or from a peer pinned for it ([`crate::refs::settle`], in the
/// same transaction, which marks them [`GOT`]); a first reference to a
/// body the account has got adds no row. So a body stored here for another account does not
/// count as the account's until the bytes come: a message a peer makes
/// that names a body it does not have stays missing (see `crate::refs`).
pub(crate) const MISSING: TableDefinition<(u32, [u8; 32]), u64> = TableDefinition::new("missing_bodies");
/// (account, body id): the account has got the body's bytes (written for
/// it locally, or from a peer pinned for it) — kept when its last message
/// naming the body goes, so a message the model takes out and a peer's op
/// puts back (a move, a mailbox deleted concurrently) finds it still got.
/// Only for bodies stored here (body garbage collection will drop both).
pub(crate) const GOT: TableDefinition<(u32, [u8; 32]), ()> = TableDefinition::new("bodies_got");
/// account → bytes of its messages (the sizes their envelopes give; a copy
/// counts again): the live data `starling status` shows.
pub(crate) const ACCOUNT_BYTES: TableDefinition<u32, u64> = TableDefinition::new("account_bytes");

pub(crate) fn storage<E: std::error::Error + Send + Sync + 'static>(e: E) -> StorageError {
    StorageError(Box::new(e))
}

pub(crate) fn encode_envelope(e: &Envelope) -> [u8; 48] {
    let mut b = [0u8; 48];
    b[..32].copy_from_slice(&e.blob.0);
    b[32..40].copy_from_slice(&e.size.to_be_bytes());
    b[40..].copy_from_slice(&e.internal_date.to_be_bytes());
    b
}

pub(crate) fn decode_envelope(b: &[u8]) -> StorageResult<Envelope> {
    if b.len() != 48 {
        return Err(storage(std::io::Error::new(std::io::ErrorKind::InvalidData, "envelope record of wrong size")));
    }
    let mut blob = [0u8; 32];
    blob.copy_from_slice(&b[..32]);
    Ok(Envelope {
        blob: BlobId(blob),
        size: u64::from_be_bytes(b[32..40].try_into().expect("8 bytes")),
        internal_date: i64::from_be_bytes(b[40..].try_into().expect("8 bytes")),
    })
}

/// A placed message's record: its MODSEQ and the model's slot.
pub(crate) fn decode_slot(b: &[u8]) -> StorageResult<(u64, Slot)> {
    postcard::from_bytes(b).map_err(storage)
}

/// The tables of one write transaction, for one account.
pub struct RedbBackend<'txn> {
    account: u32,
    /// The tag of this replica's MODSEQ values ([`crate::modseq`]).
    tag: u64,
    locs: Table<'txn, Key2, (u32, u32)>,
    envelopes: Table<'txn, Key2, &'static [u8]>,
    slots: Table<'txn, (u32, u32, u32), &'static [u8]>,
    side: Table<'txn, ClaimRow, ()>,
    side_by_msg: Table<'txn, (u32, u32, u64, u32), ()>,
    retracted: Table<'txn, ClaimRow, ()>,
    pinned: Table<'txn, ClaimRow, ()>,
    forced: Table<'txn, ClaimRow, ()>,
    dead: Table<'txn, (u32, u32, u32), u32>,
    changes: Table<'txn, (u32, u32, u64), u32>,
    vanished: Table<'txn, (u32, u32, u64), u32>,
    vanished_kept: Table<'txn, (u32, u32), (u64, u64)>,
    /// [`crate::StoreOptions::vanished_per_mailbox`].
    vanished_max: u64,
    mailbox_counts: Table<'txn, (u32, u32), (u64, u64)>,
    account_counts: Table<'txn, u32, (u64, u64)>,
    blob_refs: Table<'txn, ([u8; 32], u32), u64>,
    missing: Table<'txn, (u32, [u8; 32]), u64>,
    got: Table<'txn, (u32, [u8; 32]), ()>,
    unreferenced: Table<'txn, ([u8; 32], u32), &'static [u8]>,
    account_bytes: Table<'txn, u32, u64>,
    /// Bodies whose last reference by the account went in this transaction
    /// (see [`crate::gc`]); one may have come back since.
    pub(crate) released: Vec<BlobId>,
    /// Change of the account's bytes in this transaction.
    bytes_delta: i128,
    /// Counters read once per transaction and written back by [`Self::flush`].
    cached_account: Option<(u64, u64)>,
    cached_mailboxes: std::collections::BTreeMap<u32, (u64, u64)>,
}

impl<'txn> RedbBackend<'txn> {
    /// Opens the tables in `txn` for `account` of the replica `node`; each
    /// mailbox remembers its newest `vanished_max` expunges.
    pub fn new(
        txn: &'txn WriteTransaction,
        account: u32,
        node: ReplicaId,
        vanished_max: u32,
    ) -> Result<Self, redb::TableError> {
        Ok(RedbBackend {
            account,
            tag: crate::modseq::tag(node),
            locs: txn.open_table(LOCS)?,
            envelopes: txn.open_table(ENVELOPES)?,
            slots: txn.open_table(SLOTS)?,
            side: txn.open_table(SIDE)?,
            side_by_msg: txn.open_table(SIDE_BY_MSG)?,
            retracted: txn.open_table(RETRACTED)?,
            pinned: txn.open_table(PINNED)?,
            forced: txn.open_table(FORCED)?,
            dead: txn.open_table(DEAD)?,
            changes: txn.open_table(CHANGES)?,
            vanished: txn.open_table(VANISHED)?,
            vanished_kept: txn.open_table(VANISHED_KEPT)?,
            vanished_max: u64::from(vanished_max.max(1)),
            mailbox_counts: txn.open_table(MAILBOX_COUNTS)?,
            account_counts: txn.open_table(ACCOUNT_COUNTS)?,
            blob_refs: txn.open_table(BLOB_REFS)?,
            missing: txn.open_table(MISSING)?,
            got: txn.open_table(GOT)?,
            unreferenced: txn.open_table(crate::gc::UNREFERENCED)?,
            account_bytes: txn.open_table(ACCOUNT_BYTES)?,
            released: Vec::new(),
            bytes_delta: 0,
            cached_account: None,
            cached_mailboxes: std::collections::BTreeMap::new(),
        })
    }

    /// Indexes of the mailboxes whose counters (HIGHESTMODSEQ, messages)
    /// this transaction changed, at most `max + 1` (enough to tell "more
    /// than `max`"): the commit's entry in the change log.
    pub(crate) fn touched_mailboxes(&self, max: usize) -> Vec<u32> {
        self.cached_mailboxes.keys().take(max + 1).copied().collect()
    }

    /// Writes the cached counters back. Call before committing.
    pub fn flush(&mut self) -> StorageResult<()> {
        if let Some(c) = self.cached_account {
            self.account_counts.insert(self.account, c).map_err(storage)?;
        }
        for (mb, c) in &self.cached_mailboxes {
            self.mailbox_counts.insert((self.account, *mb), *c).map_err(storage)?;
        }
        if self.bytes_delta != 0 {
            let now = self.account_bytes.get(self.account).map_err(storage)?.map_or(0, |g| g.value());
            let next = (now as i128 + self.bytes_delta).clamp(0, u64::MAX as i128) as u64;
            self.account_bytes.insert(self.account, next).map_err(storage)?;
            self.bytes_delta = 0;
        }
        Ok(())
    }

    /// The account's live (messages, bytes), this transaction's changes
    /// so far included (cached counters, before [`RedbBackend::flush`]).
    pub fn usage(&self) -> StorageResult<(u64, u64)> {
        let messages = match self.cached_account {
            Some(c) => c.1,
            None => self.account_counts.get(self.account).map_err(storage)?.map_or(0, |g| g.value().1),
        };
        let stored = self.account_bytes.get(self.account).map_err(storage)?.map_or(0, |g| g.value());
        let bytes = (stored as i128 + self.bytes_delta).clamp(0, u64::MAX as i128) as u64;
        Ok((messages, bytes))
    }

    fn account_counts(&mut self) -> StorageResult<(u64, u64)> {
        if let Some(c) = self.cached_account {
            return Ok(c);
        }
        let c = self.account_counts.get(self.account).map_err(storage)?.map(|g| g.value()).unwrap_or((0, 0));
        self.cached_account = Some(c);
        Ok(c)
    }

    fn next_modseq(&mut self) -> StorageResult<u64> {
        let (last, n) = self.account_counts()?;
        let modseq = crate::modseq::next(last, 0, self.tag);
        self.cached_account = Some((modseq, n));
        Ok(modseq)
    }

    /// Raises a mailbox's HIGHESTMODSEQ (and the account's counter) above a
    /// value a client presented that this replica cannot place, so that the
    /// client never sees HIGHESTMODSEQ go down ([`crate::modseq`]). Values no
    /// replica issues raise nothing.
    pub(crate) fn raise_modseq(&mut self, mailbox: u32, token: u64) -> StorageResult<()> {
        let (highest, count) = self.mailbox_counts(mailbox)?;
        if highest > token || !crate::modseq::may_raise(token) {
            return Ok(());
        }
        let (last, n) = self.account_counts()?;
        let modseq = crate::modseq::next(last, token, self.tag);
        self.cached_account = Some((modseq, n));
        self.cached_mailboxes.insert(mailbox, (modseq, count));
        Ok(())
    }

    fn add_messages(&mut self, delta: i64) -> StorageResult<()> {
        let (modseq, n) = self.account_counts()?;
        self.cached_account = Some((modseq, n.saturating_add_signed(delta)));
        Ok(())
    }

    fn mailbox_counts(&self, mailbox: u32) -> StorageResult<(u64, u64)> {
        if let Some(c) = self.cached_mailboxes.get(&mailbox) {
            return Ok(*c);
        }
        Ok(self.mailbox_counts.get((self.account, mailbox)).map_err(storage)?.map(|g| g.value()).unwrap_or((0, 0)))
    }

    /// One more of the account's messages (of `size` bytes) names `blob`.
    fn add_ref(&mut self, blob: BlobId, size: u64) -> StorageResult<()> {
        let key = (blob.0, self.account);
        let n = self.blob_refs.get(key).map_err(storage)?.map_or(0, |g| g.value());
        self.blob_refs.insert(key, n + 1).map_err(storage)?;
        self.bytes_delta += size as i128;
        if n == 0 && !starling_model::mutation::active(starling_model::mutation::Mutation::KeepCandidate) {
            // Referenced again: no longer a candidate for collection.
            self.unreferenced.remove((blob.0, self.account)).map_err(storage)?;
        }
        if n == 0 && self.got.get((self.account, blob.0)).map_err(storage)?.is_none() {
            self.missing.insert((self.account, blob.0), size).map_err(storage)?;
        }
        Ok(())
    }

    /// One fewer of the account's messages (of `size` bytes) names `blob`.
    fn drop_ref(&mut self, blob: BlobId, size: u64) -> StorageResult<()> {
        let key = (blob.0, self.account);
        let n = self.blob_refs.get(key).map_err(storage)?.map_or(0, |g| g.value());
        // An envelope without its count: the index and the envelopes
        // disagree. Refuse the batch rather than commit a wrong index
        // (a wrong index could serve a body to the wrong account).
        if n == 0 {
            return Err(storage(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("blob_refs has no reference of account {} to {blob:?}", self.account),
            )));
        }
        self.bytes_delta -= size as i128;
        if n == 1 {
            self.blob_refs.remove(key).map_err(storage)?;
            self.missing.remove((self.account, blob.0)).map_err(storage)?;
            self.released.push(blob);
        } else {
            self.blob_refs.insert(key, n - 1).map_err(storage)?;
        }
        Ok(())
    }

    /// Counts a new [`VANISHED`] row of `mailbox` and forgets its oldest
    /// while it has more than it keeps: at most two per call, so a lowered
    /// bound is reached as expunges come, and a call's work does not
    /// depend on how many rows there are.
    fn count_vanished(&mut self, mailbox: u32) -> StorageResult<()> {
        let a = self.account;
        let (mut floor, mut rows) =
            self.vanished_kept.get((a, mailbox)).map_err(storage)?.map_or((0, 0), |g| g.value());
        rows += 1;
        for _ in 0..2 {
            if rows <= self.vanished_max {
                break;
            }
            let oldest = match self.vanished.range((a, mailbox, 0)..=(a, mailbox, u64::MAX)).map_err(storage)?.next() {
                Some(row) => Some(row.map_err(storage)?.0.value().2),
                None => None,
            };
            let Some(modseq) = oldest else {
                rows = 0;
                break;
            };
            self.vanished.remove((a, mailbox, modseq)).map_err(storage)?;
            if !starling_model::mutation::active(starling_model::mutation::Mutation::ForgetWithoutFloor) {
                floor = floor.max(modseq);
            }
            rows -= 1;
        }
        self.vanished_kept.insert((a, mailbox), (floor, rows)).map_err(storage)?;
        Ok(())
    }

    /// Writes a placed message's record with a fresh MODSEQ and indexes the change.
    fn put_slot(&mut self, mailbox: u32, slot: &Slot, count_delta: i64) -> StorageResult<()> {
        let a = self.account;
        let modseq = self.next_modseq()?;
        let bytes = postcard::to_stdvec(&(modseq, slot)).map_err(storage)?;
        let was = match self.slots.insert((a, mailbox, slot.uid), bytes.as_slice()).map_err(storage)? {
            Some(old) => Some(decode_slot(old.value())?.0),
            None => None,
        };
        if let Some(was) = was {
            self.changes.remove((a, mailbox, was)).map_err(storage)?;
        }
        self.changes.insert((a, mailbox, modseq), slot.uid).map_err(storage)?;
        let (_, n) = self.mailbox_counts(mailbox)?;
        self.cached_mailboxes.insert(mailbox, (modseq, n.saturating_add_signed(count_delta)));
        Ok(())
    }
}

// The reads a write transaction's tables ([`RedbBackend`]) and a read
// view's ([`RedbView`]) share: one copy of each, over either kind of table.

fn envelope_of(t: &impl ReadableTable<Key2, &'static [u8]>, a: u32, m: Packed) -> StorageResult<Option<Envelope>> {
    match t.get((a, m)).map_err(storage)? {
        Some(g) => Ok(Some(decode_envelope(g.value())?)),
        None => Ok(None),
    }
}

fn slots_of(
    t: &impl ReadableTable<Key3, &'static [u8]>,
    a: u32,
    mailbox: u32,
    from: u32,
    limit: usize,
) -> StorageResult<Vec<Slot>> {
    let mut out = Vec::new();
    for item in t.range((a, mailbox, from)..=(a, mailbox, u32::MAX)).map_err(storage)?.take(limit) {
        let (_, v) = item.map_err(storage)?;
        out.push(decode_slot(v.value())?.1);
    }
    Ok(out)
}

/// Up to `limit` claims of a mailbox after `after` (from the first if none).
fn claim_rows(
    t: &impl ReadableTable<ClaimRow, ()>,
    a: u32,
    mailbox: u32,
    after: Option<ClaimKey>,
    limit: usize,
) -> StorageResult<Vec<ClaimKey>> {
    use std::ops::Bound::{Excluded, Included};
    let from = after.map_or(Included((a, mailbox, 0, 0, 0)), |k| Excluded(row(a, mailbox, k)));
    let to = Included((a, mailbox, u32::MAX, u64::MAX, u16::MAX));
    let mut out = Vec::new();
    for item in t.range::<ClaimRow>((from, to)).map_err(storage)?.take(limit) {
        let (_, _, uid, message, claimant) = item.map_err(storage)?.0.value();
        out.push(ClaimKey { uid, message, claimant });
    }
    Ok(out)
}

fn dead_of(t: &impl ReadableTable<Key3, u32>, a: u32, mailbox: u32) -> StorageResult<Vec<(u32, u32)>> {
    let mut out = Vec::new();
    for item in t.range((a, mailbox, 0)..=(a, mailbox, u32::MAX)).map_err(storage)? {
        let (k, v) = item.map_err(storage)?;
        out.push((k.value().2, v.value()));
    }
    Ok(out)
}

fn row(account: u32, mailbox: u32, k: ClaimKey) -> ClaimRow {
    (account, mailbox, k.uid, k.message, k.claimant)
}

impl StateReads for RedbBackend<'_> {
    fn envelope(&self, m: Packed) -> StorageResult<Option<Envelope>> {
        envelope_of(&self.envelopes, self.account, m)
    }
    fn slots_from(&self, mailbox: u32, from: u32, limit: usize) -> StorageResult<Vec<Slot>> {
        slots_of(&self.slots, self.account, mailbox, from, limit)
    }
    fn claims_in(
        &self,
        mailbox: u32,
        kind: ClaimKind,
        after: Option<ClaimKey>,
        limit: usize,
    ) -> StorageResult<Vec<ClaimKey>> {
        let t = match kind {
            ClaimKind::Side => &self.side,
            ClaimKind::Retracted => &self.retracted,
            ClaimKind::Pinned => &self.pinned,
            ClaimKind::Forced => &self.forced,
        };
        claim_rows(t, self.account, mailbox, after, limit)
    }
    fn dead_in(&self, mailbox: u32) -> StorageResult<Vec<(u32, u32)>> {
        dead_of(&self.dead, self.account, mailbox)
    }
}

/// An account's per-message tables in a read transaction: what a snapshot
/// export reads ([`StateReads`]) while writers go on. A table never
/// created reads as empty.
pub(crate) struct RedbView {
    account: u32,
    envelopes: Option<ReadOnlyTable<Key2, &'static [u8]>>,
    slots: Option<ReadOnlyTable<Key3, &'static [u8]>>,
    side: Option<ReadOnlyTable<ClaimRow, ()>>,
    retracted: Option<ReadOnlyTable<ClaimRow, ()>>,
    pinned: Option<ReadOnlyTable<ClaimRow, ()>>,
    forced: Option<ReadOnlyTable<ClaimRow, ()>>,
    dead: Option<ReadOnlyTable<Key3, u32>>,
}

impl RedbView {
    pub(crate) fn new(txn: &ReadTransaction, account: u32) -> Result<Self, crate::StoreError> {
        Ok(RedbView {
            account,
            envelopes: crate::table(txn, ENVELOPES)?,
            slots: crate::table(txn, SLOTS)?,
            side: crate::table(txn, SIDE)?,
            retracted: crate::table(txn, RETRACTED)?,
            pinned: crate::table(txn, PINNED)?,
            forced: crate::table(txn, FORCED)?,
            dead: crate::table(txn, DEAD)?,
        })
    }
}

impl StateReads for RedbView {
    fn envelope(&self, m: Packed) -> StorageResult<Option<Envelope>> {
        self.envelopes.as_ref().map_or(Ok(None), |t| envelope_of(t, self.account, m))
    }
    fn slots_from(&self, mailbox: u32, from: u32, limit: usize) -> StorageResult<Vec<Slot>> {
        self.slots.as_ref().map_or(Ok(Vec::new()), |t| slots_of(t, self.account, mailbox, from, limit))
    }
    fn claims_in(
        &self,
        mailbox: u32,
        kind: ClaimKind,
        after: Option<ClaimKey>,
        limit: usize,
    ) -> StorageResult<Vec<ClaimKey>> {
        let t = match kind {
            ClaimKind::Side => &self.side,
            ClaimKind::Retracted => &self.retracted,
            ClaimKind::Pinned => &self.pinned,
            ClaimKind::Forced => &self.forced,
        };
        t.as_ref().map_or(Ok(Vec::new()), |t| claim_rows(t, self.account, mailbox, after, limit))
    }
    fn dead_in(&self, mailbox: u32) -> StorageResult<Vec<(u32, u32)>> {
        self.dead.as_ref().map_or(Ok(Vec::new()), |t| dead_of(t, self.account, mailbox))
    }
}

impl Backend for RedbBackend<'_> {
    fn loc(&self, m: Packed) -> StorageResult<Option<MsgLoc>> {
        Ok(self.locs.get((self.account, m)).map_err(storage)?.map(|g| {
            let (mailbox, uid) = g.value();
            MsgLoc { mailbox, uid }
        }))
    }
    fn set_loc(&mut self, m: Packed, loc: MsgLoc) -> StorageResult<()> {
        let old = self.locs.insert((self.account, m), (loc.mailbox, loc.uid)).map_err(storage)?;
        if old.is_none() {
            drop(old);
            self.add_messages(1)?;
        }
        Ok(())
    }
    fn remove_loc(&mut self, m: Packed) -> StorageResult<()> {
        let old = self.locs.remove((self.account, m)).map_err(storage)?;
        if old.is_some() {
            drop(old);
            self.add_messages(-1)?;
        }
        Ok(())
    }
    fn message_count(&self) -> StorageResult<u64> {
        if let Some(c) = self.cached_account {
            return Ok(c.1);
        }
        Ok(self.account_counts.get(self.account).map_err(storage)?.map(|g| g.value().1).unwrap_or(0))
    }
    fn set_envelope(&mut self, m: Packed, e: Envelope) -> StorageResult<()> {
        let old = self
            .envelopes
            .insert((self.account, m), encode_envelope(&e).as_slice())
            .map_err(storage)?
            .map(|g| decode_envelope(g.value()))
            .transpose()?;
        match old {
            Some(old) if old.blob == e.blob => {
                self.bytes_delta += e.size as i128 - old.size as i128;
                Ok(())
            }
            Some(old) => {
                self.drop_ref(old.blob, old.size)?;
                self.add_ref(e.blob, e.size)
            }
            None => self.add_ref(e.blob, e.size),
        }
    }
    fn remove_envelope(&mut self, m: Packed) -> StorageResult<()> {
        let old = self
            .envelopes
            .remove((self.account, m))
            .map_err(storage)?
            .map(|g| decode_envelope(g.value()))
            .transpose()?;
        match old {
            Some(old) => self.drop_ref(old.blob, old.size),
            None => Ok(()),
        }
    }
    fn slot(&self, mailbox: u32, uid: u32) -> StorageResult<Option<Slot>> {
        match self.slots.get((self.account, mailbox, uid)).map_err(storage)? {
            Some(g) => Ok(Some(decode_slot(g.value())?.1)),
            None => Ok(None),
        }
    }
    fn insert_slot(&mut self, mailbox: u32, slot: Slot) -> StorageResult<()> {
        assert!(slot.uid != 0, "placed messages have a UID");
        self.put_slot(mailbox, &slot, 1)
    }
    fn update_slot(&mut self, mailbox: u32, slot: &Slot) -> StorageResult<()> {
        self.put_slot(mailbox, slot, 0)
    }
    fn remove_slot(&mut self, mailbox: u32, uid: u32) -> StorageResult<Option<Slot>> {
        let a = self.account;
        let removed = self.slots.remove((a, mailbox, uid)).map_err(storage)?.map(|g| decode_slot(g.value()));
        let Some((was, slot)) = removed.transpose()? else { return Ok(None) };
        self.changes.remove((a, mailbox, was)).map_err(storage)?;
        let modseq = self.next_modseq()?;
        self.vanished.insert((a, mailbox, modseq), uid).map_err(storage)?;
        self.count_vanished(mailbox)?;
        let (_, n) = self.mailbox_counts(mailbox)?;
        self.cached_mailboxes.insert(mailbox, (modseq, n.saturating_sub(1)));
        Ok(Some(slot))
    }
    fn slot_count(&self, mailbox: u32) -> StorageResult<u64> {
        Ok(self.mailbox_counts(mailbox)?.1)
    }
    fn side_at(&self, mailbox: u32, uid: u32) -> StorageResult<SmallVec<[Claim; 2]>> {
        let a = self.account;
        let mut out = SmallVec::new();
        for item in self.side.range((a, mailbox, uid, 0, 0)..=(a, mailbox, uid, u64::MAX, u16::MAX)).map_err(storage)? {
            let (k, _) = item.map_err(storage)?;
            let (_, _, _, message, claimant) = k.value();
            out.push(Claim { message, claimant });
        }
        Ok(out)
    }
    fn side_uids_of(&self, mailbox: u32, m: Packed) -> StorageResult<SmallVec<[u32; 2]>> {
        let a = self.account;
        let mut out = SmallVec::new();
        for item in self.side_by_msg.range((a, mailbox, m, 0)..=(a, mailbox, m, u32::MAX)).map_err(storage)? {
            out.push(item.map_err(storage)?.0.value().3);
        }
        Ok(out)
    }
    fn side_uids_in(&self, mailbox: u32, from: u32, to: u32) -> StorageResult<Vec<u32>> {
        let a = self.account;
        let mut out: Vec<u32> = Vec::new();
        if from >= to {
            return Ok(out);
        }
        for item in self.side.range((a, mailbox, from, 0, 0)..(a, mailbox, to, 0, 0)).map_err(storage)? {
            let uid = item.map_err(storage)?.0.value().2;
            if out.last() != Some(&uid) {
                out.push(uid);
            }
        }
        Ok(out)
    }
    fn add_side(&mut self, mailbox: u32, uid: u32, claim: Claim) -> StorageResult<()> {
        let a = self.account;
        self.side.insert((a, mailbox, uid, claim.message, claim.claimant), ()).map_err(storage)?;
        self.side_by_msg.insert((a, mailbox, claim.message, uid), ()).map_err(storage)?;
        Ok(())
    }
    fn take_side(&mut self, mailbox: u32, uid: u32, m: Packed) -> StorageResult<Option<u16>> {
        let a = self.account;
        let claims = self.side_at(mailbox, uid)?;
        let mine: SmallVec<[Claim; 2]> = claims.into_iter().filter(|c| c.message == m).collect();
        let Some(first) = mine.first() else {
            return Ok(None);
        };
        self.side.remove((a, mailbox, uid, m, first.claimant)).map_err(storage)?;
        if mine.len() == 1 {
            self.side_by_msg.remove((a, mailbox, m, uid)).map_err(storage)?;
        }
        Ok(Some(first.claimant))
    }
    fn is_retracted(&self, mailbox: u32, key: ClaimKey) -> StorageResult<bool> {
        Ok(self.retracted.get(row(self.account, mailbox, key)).map_err(storage)?.is_some())
    }
    fn add_retracted(&mut self, mailbox: u32, key: ClaimKey) -> StorageResult<()> {
        self.retracted.insert(row(self.account, mailbox, key), ()).map_err(storage)?;
        Ok(())
    }
    fn is_pinned(&self, mailbox: u32, key: ClaimKey) -> StorageResult<bool> {
        Ok(self.pinned.get(row(self.account, mailbox, key)).map_err(storage)?.is_some())
    }
    fn add_pinned(&mut self, mailbox: u32, key: ClaimKey) -> StorageResult<()> {
        self.pinned.insert(row(self.account, mailbox, key), ()).map_err(storage)?;
        Ok(())
    }
    fn is_forced(&self, mailbox: u32, key: ClaimKey) -> StorageResult<bool> {
        Ok(self.forced.get(row(self.account, mailbox, key)).map_err(storage)?.is_some())
    }
    fn add_forced(&mut self, mailbox: u32, key: ClaimKey) -> StorageResult<()> {
        self.forced.insert(row(self.account, mailbox, key), ()).map_err(storage)?;
        Ok(())
    }
    fn forget_marks(&mut self, mailbox: u32, key: ClaimKey) -> StorageResult<()> {
        let k = row(self.account, mailbox, key);
        self.retracted.remove(k).map_err(storage)?;
        self.pinned.remove(k).map_err(storage)?;
        self.forced.remove(k).map_err(storage)?;
        Ok(())
    }
    fn is_dead(&self, mailbox: u32, uid: u32) -> StorageResult<bool> {
        let a = self.account;
        let last = self.dead.range((a, mailbox, 0)..=(a, mailbox, uid)).map_err(storage)?.next_back();
        Ok(match last {
            Some(item) => uid < item.map_err(storage)?.1.value(),
            None => false,
        })
    }
    fn add_dead(&mut self, mailbox: u32, start: u32, end: u32) -> StorageResult<()> {
        let a = self.account;
        let mut touching = Vec::new();
        for item in self.dead.range((a, mailbox, 0)..=(a, mailbox, end)).map_err(storage)?.rev() {
            let (k, v) = item.map_err(storage)?;
            if v.value() < start {
                break;
            }
            touching.push((k.value().2, v.value()));
        }
        let (remove, (s, e)) = starling_model::backend::dead_union(start, end, touching);
        for r in remove {
            self.dead.remove((a, mailbox, r)).map_err(storage)?;
        }
        self.dead.insert((a, mailbox, s), e).map_err(storage)?;
        Ok(())
    }
}

/// The backend of a replica between transactions: every call fails. The
/// store never calls the model without a transaction; this makes a mistake
/// loud instead of silent.
pub struct Detached;

fn detached<T>() -> StorageResult<T> {
    Err(storage(std::io::Error::other("replica used outside a transaction")))
}

impl StateReads for Detached {
    fn envelope(&self, _: Packed) -> StorageResult<Option<Envelope>> {
        detached()
    }
    fn slots_from(&self, _: u32, _: u32, _: usize) -> StorageResult<Vec<Slot>> {
        detached()
    }
    fn claims_in(&self, _: u32, _: ClaimKind, _: Option<ClaimKey>, _: usize) -> StorageResult<Vec<ClaimKey>> {
        detached()
    }
    fn dead_in(&self, _: u32) -> StorageResult<Vec<(u32, u32)>> {
        detached()
    }
}

impl Backend for Detached {
    fn loc(&self, _: Packed) -> StorageResult<Option<MsgLoc>> {
        detached()
    }
    fn set_loc(&mut self, _: Packed, _: MsgLoc) -> StorageResult<()> {
        detached()
    }
    fn remove_loc(&mut self, _: Packed) -> StorageResult<()> {
        detached()
    }
    fn message_count(&self) -> StorageResult<u64> {
        detached()
    }
    fn set_envelope(&mut self, _: Packed, _: Envelope) -> StorageResult<()> {
        detached()
    }
    fn remove_envelope(&mut self, _: Packed) -> StorageResult<()> {
        detached()
    }
    fn slot(&self, _: u32, _: u32) -> StorageResult<Option<Slot>> {
        detached()
    }
    fn insert_slot(&mut self, _: u32, _: Slot) -> StorageResult<()> {
        detached()
    }
    fn update_slot(&mut self, _: u32, _: &Slot) -> StorageResult<()> {
        detached()
    }
    fn remove_slot(&mut self, _: u32, _: u32) -> StorageResult<Option<Slot>> {
        detached()
    }
    fn slot_count(&self, _: u32) -> StorageResult<u64> {
        detached()
    }
    fn side_at(&self, _: u32, _: u32) -> StorageResult<SmallVec<[Claim; 2]>> {
        detached()
    }
    fn side_uids_of(&self, _: u32, _: Packed) -> StorageResult<SmallVec<[u32; 2]>> {
        detached()
    }
    fn side_uids_in(&self, _: u32, _: u32, _: u32) -> StorageResult<Vec<u32>> {
        detached()
    }
    fn add_side(&mut self, _: u32, _: u32, _: Claim) -> StorageResult<()> {
        detached()
    }
    fn take_side(&mut self, _: u32, _: u32, _: Packed) -> StorageResult<Option<u16>> {
        detached()
    }
    fn is_retracted(&self, _: u32, _: ClaimKey) -> StorageResult<bool> {
        detached()
    }
    fn add_retracted(&mut self, _: u32, _: ClaimKey) -> StorageResult<()> {
        detached()
    }
    fn is_pinned(&self, _: u32, _: ClaimKey) -> StorageResult<bool> {
        detached()
    }
    fn add_pinned(&mut self, _: u32, _: ClaimKey) -> StorageResult<()> {
        detached()
    }
    fn is_forced(&self, _: u32, _: ClaimKey) -> StorageResult<bool> {
        detached()
    }
    fn add_forced(&mut self, _: u32, _: ClaimKey) -> StorageResult<()> {
        detached()
    }
    fn forget_marks(&mut self, _: u32, _: ClaimKey) -> StorageResult<()> {
        detached()
    }
    fn is_dead(&self, _: u32, _: u32) -> StorageResult<bool> {
        detached()
    }
    fn add_dead(&mut self, _: u32, _: u32, _: u32) -> StorageResult<()> {
        detached()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_model::MemBackend;

    /// The side claims of both backends, fed the same adds and takes, are
    /// alike at every step: the same claims in the same order at a UID, the
    /// same UIDs per message, and a take returns the same claimant. (The
    /// model asks for "a claim of m at u" and keeps what the backend
    /// returns as the slot's claimant: backends that picked differently
    /// would let the simulator's in-memory nodes decide otherwise than
    /// real ones.)
    #[test]
    fn side_claims_are_taken_alike_by_both_backends() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("b.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let mut redb = RedbBackend::new(&txn, 1, ReplicaId(1), 100).unwrap();
        let mut mem = MemBackend::default();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut taken = 0;
        for step in 0..4_000 {
            let (uid, m) = (1 + next(4) as u32, next(3));
            if next(3) > 0 {
                let claim = Claim { message: m, claimant: next(5) as u16 };
                redb.add_side(0, uid, claim).unwrap();
                mem.add_side(0, uid, claim).unwrap();
            } else {
                let (a, b) = (redb.take_side(0, uid, m).unwrap(), mem.take_side(0, uid, m).unwrap());
                assert_eq!(a, b, "step {step}: take of message {m} at UID {uid}");
                taken += a.is_some() as usize;
            }
            assert_eq!(redb.side_at(0, uid).unwrap(), mem.side_at(0, uid).unwrap(), "step {step}: UID {uid}");
            assert_eq!(redb.side_uids_of(0, m).unwrap(), mem.side_uids_of(0, m).unwrap(), "step {step}: message {m}");
        }
        assert!(taken > 500, "{taken}");
    }
}
