//! What IMAP and status read: a consistent view of one account (a redb
//! read transaction) and the replica's small in-memory state.

use crate::*;
use backend::{decode_envelope, decode_slot};
use redb::{ReadOnlyTable, ReadTransaction, TableDefinition};

use starling_model::backend::Envelope;
use starling_model::{Keyword, MailboxId, MessageId, Names, ReplicaId, VersionVector};

/// QRESYNC's answer: see [`Reader::resync`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resync {
    /// UIDs the client may know that name no message now (inclusive ranges).
    pub vanished: Vec<(u32, u32)>,
    /// Messages changed since the client's point, by UID.
    pub changed: Vec<MessageInfo>,
}

/// Rows of a mailbox's change index ([`Reader::index_rows`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexRows {
    /// CONDSTORE's change rows: one per message.
    pub changes: u64,
    /// QRESYNC's expunge rows: the mailbox's newest expunges.
    pub vanished: u64,
    /// MODSEQ of the newest expunge row forgotten (0: none).
    pub vanished_floor: u64,
}

/// What STATUS and SELECT need of a mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailboxStatus {
    /// Messages.
    pub messages: u64,
    /// UIDNEXT.
    pub uid_next: u32,
    /// UIDVALIDITY.
    pub uid_validity: u32,
    /// HIGHESTMODSEQ (0 before any change).
    pub highest_modseq: u64,
}

/// One message as IMAP lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageInfo {
    /// Its UID.
    pub uid: u32,
    /// Its id.
    pub message: MessageId,
    /// Its keywords.
    pub flags: Vec<Keyword>,
    /// MODSEQ of its last change.
    pub modseq: u64,
}

/// A consistent read view of one account (a redb read transaction, and
/// the account's names as of the same commit).
///
/// Every read catches a panic of redb (a page damaged outside it) and
/// answers [`StoreError::Damaged`] instead. Which body reads are verified
/// against the body's BLAKE3: [`Reader::body`] (the whole body) always;
/// [`Reader::body_range`] verifies every large part it touches (a part is
/// decompressed whole anyway) but not the inline bytes around them, which
/// only the whole body's hash covers; [`Reader::body_prefix`],
/// [`Reader::body_header`] and [`Reader::body_len`] are not verified
/// (checking them would need the whole body).
pub struct Reader {
    pub(crate) txn: ReadTransaction,
    pub(crate) account: u32,
    pub(crate) names: Arc<Names>,
    pub(crate) core: Arc<Core>,
    /// This replica (whose MODSEQ values it can place).
    pub(crate) node: ReplicaId,
}

impl Reader {
    /// Counted as open until dropped (a compaction of the file waits for
    /// none to be open); made while the operation holds the database.
    pub(crate) fn new(
        txn: ReadTransaction,
        account: u32,
        names: Arc<Names>,
        core: &Arc<Core>,
        node: ReplicaId,
    ) -> Reader {
        core.db.view_opened();
        Reader { txn, account, names, core: core.clone(), node }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.core.db.view_closed();
    }
}

impl Store {
    /// A read view of an account. Takes no lock a writer holds across its
    /// work: a write of another account never delays it, one of this
    /// account only from its commit until the result is visible.
    pub fn read(&self, account: &str) -> Result<Reader, StoreError> {
        let acct = self.account(account)?;
        self.run(|db| {
            let (txn, published) = self.view(&acct, db)?;
            Ok(Reader::new(txn, acct.number, published.names, &self.core, acct.me))
        })
    }

    /// The account's state as of its last commit (reloading it first if
    /// it is stale).
    fn published(&self, acct: &Account) -> Result<Published, StoreError> {
        if acct.loaded.load(Ordering::Acquire) != self.core.db.epoch() || acct.published.is_poisoned() {
            self.run(|db| self.lock(acct, db).map(drop))?;
        }
        Ok(acct.published.read().unwrap_or_else(PoisonError::into_inner).clone())
    }

    /// Whether a mailbox's UIDNEXT moved since this replica last announced
    /// it to clients (so an announce op is due). In memory: no transaction
    /// (waits for a write of this account in progress).
    pub fn announce_due(&self, account: &str, mailbox: MailboxId) -> Result<bool, StoreError> {
        let acct = self.account(account)?;
        self.run(|db| {
            let r = self.lock(&acct, db)?;
            Ok(r.uid_next(mailbox).is_some_and(|next| next > r.announced_uid_next(mailbox)))
        })
    }

    /// The UIDNEXT this replica last announced to clients for a mailbox (1
    /// if never). Waits for a write of this account in progress.
    pub fn announced_uid_next(&self, account: &str, mailbox: MailboxId) -> Result<u32, StoreError> {
        let acct = self.account(account)?;
        self.run(|db| Ok(self.lock(&acct, db)?.announced_uid_next(mailbox)))
    }

    /// What the account has applied (as of its last commit).
    pub fn version(&self, account: &str) -> Result<VersionVector, StoreError> {
        let acct = self.account(account)?;
        Ok((*self.published(&acct)?.version).clone())
    }

    /// The account's live data: (messages, bytes) — every message (a copy
    /// counts again) and the sizes their envelopes give. Read from counters.
    pub fn usage(&self, account: &str) -> Result<(u64, u64), StoreError> {
        let number = self.account_number(account)?;
        self.run(|db| {
            let r = redb::ReadableDatabase::begin_read(db).map_err(st)?;
            let messages = match table(&r, crate::backend::ACCOUNT_COUNTS)? {
                Some(t) => t.get(number).map_err(st)?.map_or(0, |g| g.value().1),
                None => 0,
            };
            let bytes = match table(&r, crate::backend::ACCOUNT_BYTES)? {
                Some(t) => t.get(number).map_err(st)?.map_or(0, |g| g.value()),
                None => 0,
            };
            Ok((messages, bytes))
        })
    }

    /// UIDs the account has spent for good, over all its mailboxes: where a
    /// shown claim of an expunged message was buried (`Replica::bury`).
    /// Reads the account's ranges of them.
    pub fn spent_uids(&self, account: &str) -> Result<u64, StoreError> {
        let number = self.account_number(account)?;
        self.run(|db| {
            let r = redb::ReadableDatabase::begin_read(db).map_err(st)?;
            let Some(t) = table(&r, crate::backend::DEAD)? else { return Ok(0) };
            let mut n = 0u64;
            for item in t.range((number, 0, 0)..=(number, u32::MAX, u32::MAX)).map_err(st)? {
                let (k, v) = item.map_err(st)?;
                n += u64::from(v.value().saturating_sub(k.value().2));
            }
            Ok(n)
        })
    }

    /// Size of the database file's content as redb accounts it: (stored
    /// bytes, bytes used including metadata and fragmentation).
    pub fn stats(&self) -> Result<(u64, u64), StoreError> {
        self.run(|db| {
            let w = db.begin_write().map_err(st)?;
            let s = w.stats().map_err(st)?;
            let out = (s.stored_bytes(), s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes());
            w.abort().map_err(st)?;
            Ok(out)
        })
    }
}

impl Reader {
    /// The small tables (mailbox tree, keyword and replica tables) as of this view.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Runs one read: a panic of redb becomes [`StoreError::Damaged`], and
    /// a disk error lets the store reopen its file.
    pub(crate) fn guard<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let r = guarded(f);
        if let Err(e) = &r {
            self.core.db.note(e);
        }
        r
    }

    /// A table of this view; `None` if it was never created (nothing of
    /// that kind yet). Any other failure is an error, not an empty answer.
    pub(crate) fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<Option<ReadOnlyTable<K, V>>, StoreError> {
        table(&self.txn, def)
    }

    fn mailbox(&self, id: MailboxId) -> Option<u32> {
        self.names.mailbox_index(id)
    }

    /// STATUS / SELECT counters of a mailbox.
    pub fn status(&self, id: MailboxId) -> Result<MailboxStatus, StoreError> {
        self.guard(|| {
            let uid_next = self.names.mailbox_index(id).map(|i| self.names.mailboxes[i as usize].1).unwrap_or(1);
            let (highest_modseq, messages) = match (self.mailbox(id), self.table(backend::MAILBOX_COUNTS)?) {
                (Some(i), Some(t)) => t.get((self.account, i)).map_err(st)?.map(|g| g.value()).unwrap_or((0, 0)),
                _ => (0, 0),
            };
            let incarnation = match self.names.tree.incarnation {
                0 => match self.table(crate::PENDING_INCARNATION)? {
                    Some(t) => t.get(self.account).map_err(st)?.map_or(0, |g| g.value()),
                    None => 0,
                },
                n => n,
            };
            let uid_validity = id.uid_validity(incarnation);
            Ok(MailboxStatus { messages, uid_next, uid_validity, highest_modseq })
        })
    }

    fn info(&self, slot: starling_model::backend::Slot, modseq: u64) -> Result<MessageInfo, StoreError> {
        let unknown = || StoreError::Damaged(format!("UID {}: record names an unknown keyword or replica", slot.uid));
        let mut flags = Vec::with_capacity(slot.flags.len());
        for e in slot.flags.iter() {
            flags.push(self.names.keywords.get(e.kw as usize).ok_or_else(unknown)?.clone());
        }
        flags.sort();
        flags.dedup();
        let author = (slot.id >> 48) as usize;
        if author >= self.names.replica_ids.len() {
            return Err(unknown());
        }
        Ok(MessageInfo { uid: slot.uid, message: self.names.message(slot.id), flags, modseq })
    }

    /// Messages with UID ≥ `from`, by UID, at most `limit`: reads only those rows.
    pub fn messages(&self, id: MailboxId, from: u32, limit: usize) -> Result<Vec<MessageInfo>, StoreError> {
        self.guard(|| {
            let Some(i) = self.mailbox(id) else { return Ok(Vec::new()) };
            let Some(slots) = self.table(backend::SLOTS)? else { return Ok(Vec::new()) };
            let a = self.account;
            let mut out = Vec::new();
            for item in slots.range((a, i, from)..=(a, i, u32::MAX)).map_err(st)?.take(limit) {
                let (_, v) = item.map_err(st)?;
                let (modseq, slot) = decode_slot(v.value()).map_err(|e| damaged("message record", e))?;
                out.push(self.info(slot, modseq)?);
            }
            Ok(out)
        })
    }

    /// The UIDs of a mailbox, ascending: keys only, no row decoded.
    pub fn uids(&self, id: MailboxId) -> Result<Vec<u32>, StoreError> {
        self.guard(|| {
            let Some(i) = self.mailbox(id) else { return Ok(Vec::new()) };
            let Some(slots) = self.table(backend::SLOTS)? else { return Ok(Vec::new()) };
            let a = self.account;
            let mut out = Vec::new();
            for item in slots.range((a, i, 0)..=(a, i, u32::MAX)).map_err(st)? {
                out.push(item.map_err(st)?.0.value().2);
            }
            Ok(out)
        })
    }

    /// The lowest UID without `\Seen`, reading rows only up to it.
    pub fn first_unseen(&self, id: MailboxId) -> Result<Option<u32>, StoreError> {
        self.guard(|| {
            let Some(i) = self.mailbox(id) else { return Ok(None) };
            let Some(slots) = self.table(backend::SLOTS)? else { return Ok(None) };
            let seen = self.names.keywords.iter().position(|k| *k == Keyword::Seen).map(|p| p as u32);
            let a = self.account;
            for item in slots.range((a, i, 0)..=(a, i, u32::MAX)).map_err(st)? {
                let (k, v) = item.map_err(st)?;
                let (_, slot) = decode_slot(v.value()).map_err(|e| damaged("message record", e))?;
                if !seen.is_some_and(|s| slot.flags.iter().any(|e| e.kw == s)) {
                    return Ok(Some(k.value().2));
                }
            }
            Ok(None)
        })
    }

    /// Messages whose UIDs lie in `ranges` (inclusive, as a UID set names
    /// them), by range: reads only those rows.
    pub fn messages_in(&self, id: MailboxId, ranges: &[(u32, u32)]) -> Result<Vec<MessageInfo>, StoreError> {
        let mut out = Vec::new();
        for &(lo, hi) in ranges {
            // At most one message per UID, so the range's width bounds the rows.
            let limit = (hi - lo).saturating_add(1) as usize;
            out.extend(self.messages(id, lo, limit)?.into_iter().take_while(|m| m.uid <= hi));
        }
        Ok(out)
    }

    /// Messages changed after `modseq` (CONDSTORE CHANGEDSINCE), by MODSEQ.
    pub fn changed_since(&self, id: MailboxId, modseq: u64, limit: usize) -> Result<Vec<MessageInfo>, StoreError> {
        self.guard(|| {
            let Some(i) = self.mailbox(id) else { return Ok(Vec::new()) };
            let (Some(changes), Some(slots)) = (self.table(backend::CHANGES)?, self.table(backend::SLOTS)?) else {
                return Ok(Vec::new());
            };
            let a = self.account;
            let mut out = Vec::new();
            for item in changes.range((a, i, modseq + 1)..=(a, i, u64::MAX)).map_err(st)? {
                if out.len() >= limit {
                    break;
                }
                let (k, uid) = item.map_err(st)?;
                if let Some(v) = slots.get((a, i, uid.value())).map_err(st)? {
                    let (current, slot) = decode_slot(v.value()).map_err(|e| damaged("message record", e))?;
                    // A row superseded by a later change of the same message is skipped.
                    if current == k.value().2 {
                        out.push(self.info(slot, current)?);
                    }
                }
            }
            Ok(out)
        })
    }

    /// What a MODSEQ a client presented means here ([`crate::modseq`]).
    pub fn place_modseq(&self, token: u64) -> Result<Since, StoreError> {
        self.guard(|| {
            let last = match self.table(backend::ACCOUNT_COUNTS)? {
                Some(t) => t.get(self.account).map_err(st)?.map_or(0, |g| g.value().0),
                None => 0,
            };
            Ok(crate::modseq::place(token, self.node, last, &self.names.replica_ids))
        })
    }

    /// The UIDs in `ranges` that name no message now, as ranges: what a
    /// client may know that is gone, when this replica cannot tell since
    /// when (a VANISHED (EARLIER) over-report). UIDs at or above UIDNEXT
    /// count too: another replica may have shown them to the client, and
    /// this one does not hold them (yet). Reads the mailbox's keys once; the
    /// answer has at most one range more than the mailbox has messages in
    /// `ranges`.
    pub fn absent_in(&self, id: MailboxId, ranges: &[(u32, u32)]) -> Result<Vec<(u32, u32)>, StoreError> {
        let present = self.uids(id)?;
        let mut out: Vec<(u32, u32)> = Vec::new();
        // Merged, so that no UID is reported twice.
        for (lo, hi) in crate::ranges::merged(ranges) {
            // u64: the UID after u32::MAX does not wrap.
            let mut next = lo.max(1) as u64;
            let start = present.partition_point(|&u| (u as u64) < next);
            for &u in present[start..].iter().take_while(|&&u| u <= hi) {
                if u as u64 > next {
                    out.push((next as u32, u - 1));
                }
                next = u as u64 + 1;
            }
            if next <= hi as u64 {
                out.push((next as u32, hi));
            }
        }
        Ok(out)
    }

    /// QRESYNC's answer (RFC 7162 §3.2.5) for a client that knew the
    /// mailbox as of `since`, a point of this replica's sequence (`None`:
    /// unknown here, see [`Self::place_modseq`]): the UIDs in `known` that
    /// are gone, and the messages changed since, by UID (every message when
    /// `since` is unknown). The IMAP server and the simulator's roaming
    /// client both take it from here.
    pub fn resync(&self, id: MailboxId, since: Option<u64>, known: &[(u32, u32)]) -> Result<Resync, StoreError> {
        let vanished = self.vanished_within(id, since, known)?;
        let mut changed = match since {
            Some(since) => self.changed_since(id, since, usize::MAX)?,
            None => self.messages(id, 1, usize::MAX)?,
        };
        changed.sort_by_key(|m| m.uid);
        Ok(Resync { vanished, changed })
    }

    /// QRESYNC's VANISHED (EARLIER) within `ranges`, as ranges: the UIDs
    /// gone since `since` (a point of this replica's sequence), or, when the
    /// client's point is unknown here (`None`) or older than the expunges
    /// the mailbox remembers, every UID below UIDNEXT that names no message
    /// now.
    pub fn vanished_within(
        &self,
        id: MailboxId,
        since: Option<u64>,
        ranges: &[(u32, u32)],
    ) -> Result<Vec<(u32, u32)>, StoreError> {
        let Some(gone) = since.map(|since| self.vanished_since(id, since)).transpose()?.flatten() else {
            return self.absent_in(id, ranges);
        };
        let within = crate::ranges::merged(ranges);
        Ok(crate::ranges::of_sorted(gone.into_iter().filter(|&u| crate::ranges::contains(&within, u))))
    }

    /// UIDs expunged (or moved away) after `modseq` (QRESYNC VANISHED),
    /// sorted; `None` when the mailbox no longer remembers every expunge
    /// since (it keeps its newest [`crate::StoreOptions::vanished_per_mailbox`]):
    /// the caller then compares what it knows with [`Self::uids`].
    pub fn vanished_since(&self, id: MailboxId, modseq: u64) -> Result<Option<Vec<u32>>, StoreError> {
        self.guard(|| {
            let Some(i) = self.mailbox(id) else { return Ok(Some(Vec::new())) };
            let a = self.account;
            if let Some(kept) = self.table(backend::VANISHED_KEPT)? {
                let floor = kept.get((a, i)).map_err(st)?.map_or(0, |g| g.value().0);
                if modseq < floor {
                    return Ok(None);
                }
            }
            let Some(t) = self.table(backend::VANISHED)? else { return Ok(Some(Vec::new())) };
            let mut out = Vec::new();
            for item in t.range((a, i, modseq + 1)..=(a, i, u64::MAX)).map_err(st)? {
                out.push(item.map_err(st)?.1.value());
            }
            out.sort_unstable();
            out.dedup();
            Ok(Some(out))
        })
    }

    /// How many rows a mailbox's change index holds (the bounds' tests
    /// check it). Reads every row of the mailbox in the index.
    pub fn index_rows(&self, id: MailboxId) -> Result<IndexRows, StoreError> {
        self.guard(|| {
            let Some(i) = self.mailbox(id) else { return Ok(IndexRows::default()) };
            let a = self.account;
            let mut rows = IndexRows::default();
            if let Some(t) = self.table(backend::CHANGES)? {
                rows.changes = t.range((a, i, 0)..=(a, i, u64::MAX)).map_err(st)?.count() as u64;
            }
            if let Some(t) = self.table(backend::VANISHED)? {
                rows.vanished = t.range((a, i, 0)..=(a, i, u64::MAX)).map_err(st)?.count() as u64;
            }
            if let Some(t) = self.table(backend::VANISHED_KEPT)? {
                rows.vanished_floor = t.get((a, i)).map_err(st)?.map_or(0, |g| g.value().0);
            }
            Ok(rows)
        })
    }

    /// [`Reader::envelope`] of each of `messages`, in order, opening the
    /// table once (SORT and THREAD read every message's).
    pub fn envelopes(&self, messages: &[MessageId]) -> Result<Vec<Option<Envelope>>, StoreError> {
        self.guard(|| {
            let Some(t) = self.table(backend::ENVELOPES)? else { return Ok(vec![None; messages.len()]) };
            let mut out = Vec::with_capacity(messages.len());
            for m in messages {
                let Some(p) = self.names.packed(*m) else {
                    out.push(None);
                    continue;
                };
                out.push(match t.get((self.account, p)).map_err(st)? {
                    Some(g) => Some(decode_envelope(g.value()).map_err(|e| damaged("envelope", e))?),
                    None => None,
                });
            }
            Ok(out)
        })
    }

    /// Where a live message is: its mailbox and UID (0 while it waits
    /// for one); `None` if it is not live here.
    pub fn location(&self, message: MessageId) -> Result<Option<(MailboxId, u32)>, StoreError> {
        self.guard(|| {
            let Some(p) = self.names.packed(message) else { return Ok(None) };
            let Some(t) = self.table(backend::LOCS)? else { return Ok(None) };
            let Some((mailbox, uid)) = t.get((self.account, p)).map_err(st)?.map(|g| g.value()) else {
                return Ok(None);
            };
            Ok(self.names.mailboxes.get(mailbox as usize).map(|m| (m.0, uid)))
        })
    }

    /// Blob id, size and internal date of a live message.
    pub fn envelope(&self, message: MessageId) -> Result<Option<Envelope>, StoreError> {
        self.guard(|| {
            let Some(p) = self.names.packed(message) else { return Ok(None) };
            let Some(t) = self.table(backend::ENVELOPES)? else { return Ok(None) };
            match t.get((self.account, p)).map_err(st)? {
                Some(g) => Ok(Some(decode_envelope(g.value()).map_err(|e| damaged("envelope", e))?)),
                None => Ok(None),
            }
        })
    }
}
