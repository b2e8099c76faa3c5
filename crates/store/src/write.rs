//! The one apply path: a write transaction of one account running the
//! model, its op log and state saved, committed durably.

use crate::*;
use backend::{Detached, RedbBackend};
use redb::{ReadableDatabase, ReadableTable};
use starling_model::{Keyword, MailboxId, MessageId, Op};
use std::sync::atomic::AtomicBool;

/// Inside one write transaction of one account: the replica (all changes go
/// through it) and the blob store.
pub struct Batch<'a> {
    pub(crate) replica: Replica<RedbBackend<'a>>,
    pub(crate) txn: &'a redb::WriteTransaction,
    pub(crate) number: u32,
    pub(crate) part_threshold: usize,
    core: &'a Core,
    /// Damaged bodies this batch stored again.
    repaired: Vec<BlobId>,
    /// Bodies this batch stored (to take off the missing lists).
    stored: Vec<BlobId>,
    /// The batch may have changed any mailbox (a snapshot installed): its
    /// change log entry says so rather than naming mailboxes.
    pub(crate) any_mailbox: bool,
}

impl<'a> Batch<'a> {
    /// The account's replica, for local changes (`append`, `store_flags`, …).
    pub fn replica(&mut self) -> &mut Replica<RedbBackend<'a>> {
        &mut self.replica
    }

    /// Applies ops received from a peer.
    pub fn apply(&mut self, ops: impl IntoIterator<Item = Op>) -> Result<(), StoreError> {
        for op in ops {
            self.replica.apply(op)?;
        }
        Ok(())
    }

    /// Stores a body (deduplicated) and returns its id. A body stored
    /// already (one message delivered to many accounts) is not prepared
    /// again.
    pub fn put_body(&mut self, raw: &[u8]) -> Result<BlobId, StoreError> {
        let id = BlobId::of(raw);
        if prepare::stored_intact(self.txn, self.core, id)? {
            self.stored.push(id);
            return Ok(id);
        }
        self.put_prepared(&Prepared::of_checked_raw(id, raw, self.part_threshold))
    }

    /// Stores a body prepared before the transaction
    /// ([`crate::prepare_all`]) and returns its id.
    pub fn put_prepared(&mut self, body: &Prepared<'_>) -> Result<BlobId, StoreError> {
        body.write(self.txn, self.core, &mut self.repaired)?;
        self.stored.push(body.id());
        Ok(body.id())
    }

    /// Raises a mailbox's HIGHESTMODSEQ above a MODSEQ a client presented
    /// that this replica cannot place ([`crate::modseq`]).
    pub fn raise_modseq(&mut self, mailbox: MailboxId, token: u64) -> Result<(), StoreError> {
        let Some(i) = self.replica.mailbox_index(mailbox) else { return Ok(()) };
        self.replica.backend_mut().raise_modseq(i, token).map_err(|e| StoreError::Apply(e.into()).lift())
    }

    /// The account's live data as this transaction sees it: (messages,
    /// bytes), read from the counters every change keeps (no scan), the
    /// changes made so far in this batch included.
    pub fn usage(&mut self) -> Result<(u64, u64), StoreError> {
        self.replica.backend_mut().usage().map_err(|e| StoreError::Apply(e.into()).lift())
    }

    /// Refuses ([`StoreError::OverQuota`]) if adding `added` (messages,
    /// bytes) would take the account past its quota (the account
    /// document's, so every replica has the same). Checked against this
    /// replica's counters at the time of the change: replicas that accept
    /// mail while apart can each stay within it and together exceed it
    /// once they meet; nothing is taken back then.
    pub fn within_quota(&mut self, added: (u64, u64)) -> Result<(), StoreError> {
        if self.replica.tree().quota.is_unlimited() || added == (0, 0) {
            return Ok(());
        }
        let used = self.usage()?;
        self.quota_allows(used, added)
    }

    /// [`Batch::within_quota`] for what this batch added since the account
    /// used `before` ([`Batch::usage`]): for changes whose growth is known
    /// once made (COPY). A change that adds nothing (MOVE within the
    /// account) is never refused.
    pub fn within_quota_since(&mut self, before: (u64, u64)) -> Result<(), StoreError> {
        if self.replica.tree().quota.is_unlimited() {
            return Ok(());
        }
        let now = self.usage()?;
        self.quota_allows(before, (now.0.saturating_sub(before.0), now.1.saturating_sub(before.1)))
    }

    fn quota_allows(&self, used: (u64, u64), added: (u64, u64)) -> Result<(), StoreError> {
        let quota = self.replica.tree().quota;
        if quota.allows(used, added) {
            return Ok(());
        }
        Err(StoreError::OverQuota(format!(
            "{} messages of {} bytes more than the quota allows (using {} messages, {} bytes; limit {})",
            added.0,
            added.1,
            used.0,
            used.1,
            quota.encode()
        )))
    }

    /// Stores a body and appends it as a new message.
    pub fn append(
        &mut self,
        mailbox: MailboxId,
        raw: &[u8],
        internal_date: i64,
        flags: Vec<Keyword>,
    ) -> Result<MessageId, StoreError> {
        Ok(self.append_body(mailbox, raw, internal_date, flags)?.0)
    }

    /// [`Batch::append`], also giving the id of the body it stored.
    pub fn append_body(
        &mut self,
        mailbox: MailboxId,
        raw: &[u8],
        internal_date: i64,
        flags: Vec<Keyword>,
    ) -> Result<(MessageId, BlobId), StoreError> {
        let blob = self.put_body(raw)?;
        Ok((self.replica.append(mailbox, blob, raw.len() as u64, internal_date, flags)?, blob))
    }

    /// [`Batch::append`] of a body prepared before the transaction.
    pub fn append_prepared(
        &mut self,
        mailbox: MailboxId,
        body: &Prepared<'_>,
        internal_date: i64,
        flags: Vec<Keyword>,
    ) -> Result<MessageId, StoreError> {
        let blob = self.put_prepared(body)?;
        Ok(self.replica.append(mailbox, blob, body.size(), internal_date, flags)?)
    }
}

/// Writes the incarnation kept aside at account creation once the replica
/// makes its first local change, or drops it if the account document has
/// one already (from a peer). See [`Store::add_account_as`].
fn settle_incarnation(
    txn: &redb::WriteTransaction,
    number: u32,
    replica: &mut Replica<RedbBackend<'_>>,
) -> Result<(), StoreError> {
    let mut pending = txn.open_table(PENDING_INCARNATION).map_err(st)?;
    let Some(incarnation) = pending.get(number).map_err(st)?.map(|g| g.value()) else { return Ok(()) };
    let me = replica.id();
    let heard = replica.version().iter().any(|(r, n)| r != me && n > 0);
    if replica.incarnation() != 0 || heard {
        // The account exists elsewhere: keep what it has (an account made
        // before incarnations keeps its UIDVALIDITYs).
        pending.remove(number).map_err(st)?;
    } else if replica.has_outbox() {
        replica.set_incarnation(incarnation)?;
        pending.remove(number).map_err(st)?;
    }
    Ok(())
}

impl Store {
    /// Creates an account with an empty replica (INBOX only) and a random
    /// incarnation ([`Self::add_account_as`]).
    pub fn add_account(&self, name: &str) -> Result<(), StoreError> {
        let mut seed = Vec::new();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        seed.extend_from_slice(&now.as_nanos().to_le_bytes());
        seed.extend_from_slice(&std::process::id().to_le_bytes());
        seed.extend_from_slice(&self.node.0.to_le_bytes());
        seed.extend_from_slice(name.as_bytes());
        let h = blake3::hash(&seed);
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.as_bytes()[..8]);
        self.add_account_as(name, u64::from_le_bytes(b).max(1))
    }

    /// Creates an account with an empty replica (INBOX only) as
    /// `incarnation` (not 0), which is part of every UIDVALIDITY: an account
    /// made again gets new UIDVALIDITYs.
    ///
    /// The incarnation is kept aside (`PENDING_INCARNATION`) and written to
    /// the account document, as an op every replica of the account takes,
    /// by the first transaction that makes a local change; if a peer's ops
    /// or snapshot bring the account's incarnation first, this one is
    /// dropped. So an account made on a node that then joins the others
    /// holds no op of its own and can take a snapshot.
    pub fn add_account_as(&self, name: &str, incarnation: u64) -> Result<(), StoreError> {
        assert_ne!(incarnation, 0, "incarnation 0 means none");
        let _adding = self.adding.lock().unwrap_or_else(PoisonError::into_inner);
        let in_memory_max = {
            let accounts = self.accounts.read().unwrap_or_else(PoisonError::into_inner);
            if accounts.contains_key(name) {
                return Err(StoreError::AccountExists(name.into()));
            }
            accounts.values().map(|a| a.number).max().unwrap_or(0)
        };
        // A number is never given twice: not one of an account being
        // forgotten (its rows are still there), nor one forgotten before
        // (an acknowledgement of the old account noted in memory must not
        // land on the new one). A name this node forgot before gets a
        // fresh replica id ([`forget::copy_replica`]).
        let (used_max, generation) = self.run(|db| {
            let r = db.begin_read().map_err(st)?;
            if forget::purged(&r, name)? {
                return Err(StoreError::AccountPurged(name.into()));
            }
            Ok((forget::numbers_used_max(&r)?, forget::generation(&r, name)?))
        })?;
        let number = in_memory_max
            .max(used_max)
            .checked_add(1)
            .ok_or_else(|| StoreError::Storage("account numbers used up".into()))?;
        let me = forget::copy_replica(self.node, name, generation);
        let mut replica = Replica::create(me, Detached);
        replica.record_applied();
        self.run(|db| {
            let w = db.begin_write().map_err(st)?;
            {
                w.open_table(ACCOUNTS).map_err(st)?.insert(name, number).map_err(st)?;
                w.open_table(HEADERS).map_err(st)?.insert(number, replica.header().as_slice()).map_err(st)?;
                w.open_table(DOCS).map_err(st)?.insert(number, replica.save_account().as_slice()).map_err(st)?;
                w.open_table(PENDING_INCARNATION).map_err(st)?.insert(number, incarnation).map_err(st)?;
            }
            w.commit().map_err(st)
        })?;
        self.core.db.committed();
        let published = RwLock::new(Published::of(&replica));
        let loaded = AtomicU64::new(self.core.db.epoch());
        let acct = Account {
            number,
            name: Arc::from(name),
            me,
            gone: AtomicBool::new(false),
            state: Mutex::new(replica),
            published,
            loaded,
            changes: Default::default(),
        };
        self.accounts.write().unwrap_or_else(PoisonError::into_inner).insert(name.into(), Arc::new(acct));
        Ok(())
    }

    /// The account's replica as the file holds it.
    pub(crate) fn reload(&self, db: &Database, acct: &Account) -> Result<Replica<Detached>, StoreError> {
        let number = acct.number;
        guarded(|| {
            let r = db.begin_read().map_err(st)?;
            let header = r
                .open_table(HEADERS)
                .map_err(st)?
                .get(number)
                .map_err(st)?
                .ok_or_else(|| StoreError::Damaged(format!("account {number}: replica header missing")))?
                .value()
                .to_vec();
            let doc = r
                .open_table(DOCS)
                .map_err(st)?
                .get(number)
                .map_err(st)?
                .ok_or_else(|| StoreError::Damaged(format!("account {number}: account document missing")))?
                .value()
                .to_vec();
            let mut replica =
                Replica::open(acct.me, Detached, &header, &doc).map_err(|e| damaged("replica header", e))?;
            replica.record_applied();
            Ok(replica)
        })
    }

    /// Runs `f` in one write transaction of `account` and commits it durably
    /// (fsync) if `f` succeeds. Everything `f` changes — ops applied, op log,
    /// state, bodies — commits together or not at all; on any error the
    /// account is reloaded from what was committed.
    ///
    /// Holds only this account's lock (other accounts and every reader go
    /// on; redb runs one write transaction at a time). A panic inside (in
    /// `f`, the model or redb) is caught: nothing is committed, the account
    /// is reloaded, and the write returns [`StoreError::Panicked`]. After a
    /// disk failure the store reopens its file (see [`db`]).
    pub fn write<T>(
        &self,
        account: &str,
        f: impl FnOnce(&mut Batch<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let acct = self.account(account)?;
        let result = match self.core.db.get() {
            Ok(db) => self.write_locked(&acct, &db, f),
            Err(e) => Err(e),
        };
        // With the database let go of, so that a reopen can close it.
        match &result {
            Err(e) => self.core.db.note(e),
            // The commit itself tells (IDLE sessions, peers): no caller
            // has to remember to.
            Ok(_) => self.committed(account),
        }
        result
    }

    /// A MODSEQ a client presented for `mailbox`, as a point of this
    /// replica's sequence; `None` when this replica cannot place it (another
    /// replica's, or never issued), after raising the mailbox's
    /// HIGHESTMODSEQ above it so the client never sees it go down: the
    /// caller then answers as if the client knew nothing ([`crate::modseq`]).
    pub fn place_modseq(&self, account: &str, mailbox: MailboxId, token: u64) -> Result<Option<u64>, StoreError> {
        match self.read(account)?.place_modseq(token)? {
            crate::Since::Here(m) => Ok(Some(m)),
            crate::Since::Unknown => {
                self.write(account, |b| b.raise_modseq(mailbox, token))?;
                Ok(None)
            }
        }
    }

    /// Calls the commit hook ([`Self::on_commit`]).
    pub(crate) fn committed(&self, account: &str) {
        // A catch-up wait (`exposure`) may be over.
        self.core.live_changed.notify_all();
        let hook = self.commit_hook.read().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(hook) = hook {
            hook(account);
        }
    }

    /// Sets what every commit of [`Self::write`] calls, with the account's
    /// name, after the commit (no lock held): the node wakes IDLE sessions
    /// and pushes to peers from here. It must not block. One hook; a new
    /// one replaces the old.
    pub fn on_commit(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        *self.commit_hook.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(hook));
    }

    fn write_locked<T>(
        &self,
        acct: &Account,
        db: &Database,
        f: impl FnOnce(&mut Batch<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut state = self.lock(acct, db)?;
        let detached = std::mem::replace(&mut *state, Replica::create(self.node, Detached));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.write_txn(db, acct, detached, f)));
        let e = match outcome {
            Ok(Ok((value, replica))) => {
                *state = replica;
                return Ok(value);
            }
            Ok(Err(e)) => e.lift(),
            Err(p) => StoreError::Panicked(error::panic_message(&*p)),
        };
        // The in-memory part may be ahead of the file: take it back from
        // disk (or, if the file cannot be read now, before the next use).
        match self.reload(db, acct) {
            Ok(r) => {
                *state = r;
                self.publish(acct, &state);
            }
            Err(_) => acct.loaded.store(STALE, Ordering::Release),
        }
        Err(e)
    }

    fn write_txn<T>(
        &self,
        db: &Database,
        acct: &Account,
        detached: Replica<Detached>,
        f: impl FnOnce(&mut Batch<'_>) -> Result<T, StoreError>,
    ) -> Result<(T, Replica<Detached>), StoreError> {
        let number = acct.number;
        let txn = db.begin_write().map_err(st)?;
        let (value, replica, repaired, touched, tree_changed) = {
            let backend = RedbBackend::new(&txn, number, acct.me, self.options.vanished_per_mailbox).map_err(st)?;
            let (replica, _) = detached.swap_backend(backend);
            let mut batch = Batch {
                replica,
                txn: &txn,
                number,
                part_threshold: self.options.part_threshold,
                core: &self.core,
                repaired: Vec::new(),
                stored: Vec::new(),
                any_mailbox: false,
            };
            let value = f(&mut batch)?;
            let any_mailbox = batch.any_mailbox;
            let mut replica = batch.replica;
            settle_incarnation(&txn, number, &mut replica)?;
            let applied = replica.take_applied();
            // The local ops are in `applied` (and so in the log, where
            // peers read them): the replica keeps no other copy.
            drop(replica.take_outbox());
            oplog::append(&txn, number, applied)?;
            txn.open_table(HEADERS).map_err(st)?.insert(number, replica.header().as_slice()).map_err(st)?;
            let tree_changed = replica.account_changed();
            if replica.account_changed() {
                txn.open_table(DOCS).map_err(st)?.insert(number, replica.save_account().as_slice()).map_err(st)?;
            }
            let (replica, mut backend) = replica.swap_backend(Detached);
            let touched = backend.touched_mailboxes(changes::CHANGE_LOG_MAILBOXES);
            backend.flush().map_err(|e| StoreError::Apply(e.into()).lift())?;
            let released = std::mem::take(&mut backend.released);
            drop(backend);
            gc::record_releases(&txn, number, &released, replica.version())?;
            // Bodies written here by the account itself are its own.
            refs::settle(&txn, batch.stored, Some(&[number]))?;
            let touched: Option<Vec<MailboxId>> = match any_mailbox {
                true => None,
                false => touched.iter().map(|&i| replica.mailbox_at(i)).collect(),
            };
            (value, replica, batch.repaired, touched, tree_changed)
        };
        // Readers of this account wait from the commit until they can see
        // its result (never for the work above); other accounts' never.
        let published = Published::of(&replica);
        let mut guard = acct.published.write().unwrap_or_else(PoisonError::into_inner);
        // A deleted mailbox is shown while it holds messages: a change to
        // one may show or hide it.
        let tree_changed = tree_changed
            || touched
                .as_ref()
                .is_none_or(|t| t.iter().any(|id| published.names.tree.entries.get(id).is_some_and(|e| e.deleted)));
        txn.commit().map_err(st)?;
        // Numbered in commit order: the account's lock is still held.
        acct.changes.lock().unwrap_or_else(PoisonError::into_inner).record(touched, tree_changed);
        *guard = published;
        drop(guard);
        acct.published.clear_poison();
        self.core.db.committed();
        self.core.repaired(&repaired);
        Ok((value, replica))
    }

    /// Runs `f` on the account's replica in a write transaction that is then
    /// aborted: for reads that need the model (dump, snapshot, the
    /// simulator's checker). Nothing `f` changes is kept.
    pub fn inspect<T>(
        &self,
        account: &str,
        f: impl FnOnce(&mut Replica<RedbBackend<'_>>) -> T,
    ) -> Result<T, StoreError> {
        let acct = self.account(account)?;
        self.run(|db| {
            let mut state = self.lock(&acct, db)?;
            let txn = db.begin_write().map_err(st)?;
            let detached = std::mem::replace(&mut *state, Replica::create(self.node, Detached));
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                match RedbBackend::new(&txn, acct.number, acct.me, self.options.vanished_per_mailbox) {
                    Ok(backend) => {
                        let (mut replica, _) = detached.swap_backend(backend);
                        let out = f(&mut replica);
                        let (replica, backend) = replica.swap_backend(Detached);
                        drop(backend);
                        (replica, Ok(out))
                    }
                    Err(e) => (detached, Err(st(e))),
                }
            }));
            let _ = txn.abort();
            match outcome {
                Ok((replica, out)) => {
                    *state = replica;
                    out
                }
                Err(p) => {
                    // The replica went down with the panic: take it back from disk.
                    match self.reload(db, &acct) {
                        Ok(r) => *state = r,
                        Err(_) => acct.loaded.store(STALE, Ordering::Release),
                    }
                    Err(StoreError::Panicked(error::panic_message(&*p)))
                }
            }
        })
    }
}
