//! What peers ask of the op log: the ops they lack, and compaction.

use crate::*;
use redb::{ReadTransaction, ReadableDatabase};
use starling_model::{MailboxId, Op, VersionVector};

impl Store {
    /// Ops of `account` that a peer holding `have` lacks, in causal order
    /// (per replica by counter, replicas one after another: the receiver's
    /// causal buffer reorders across replicas). Fails with
    /// [`StoreError::Compacted`] if the log no longer reaches back to `have`.
    pub fn ops_since(&self, account: &str, have: &VersionVector) -> Result<Vec<Op>, StoreError> {
        let (number, r, ranges) = self.log_ranges(account, have)?;
        guarded(|| oplog::read(&r, number, &ranges, None))
    }

    /// The next chunk of ops a peer holding `since` lacks, in causal order
    /// across replicas (every op's causal past is in `since` or earlier in
    /// the chunk), at most `ops_max` ops and about `bytes_max` bytes. Reads
    /// one log segment per replica plus the chunk, however far behind the
    /// peer is. [`StoreError::Compacted`] if the log no longer reaches back
    /// to `since`.
    pub fn ops_chunk(
        &self,
        account: &str,
        since: &VersionVector,
        ops_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Op>, StoreError> {
        let (number, r, ranges) = self.log_ranges(account, since)?;
        guarded(|| oplog::read_chunk(&r, number, &ranges, since, ops_max, bytes_max))
    }

    /// Like [`Store::ops_since`], restricted to ops that touched `mailboxes`
    /// (plus every account-document op): what a partial peer subscribed to
    /// them is sent.
    pub fn ops_since_in(
        &self,
        account: &str,
        have: &VersionVector,
        mailboxes: &[MailboxId],
    ) -> Result<Vec<Op>, StoreError> {
        let (number, r, ranges) = self.log_ranges(account, have)?;
        guarded(|| oplog::read(&r, number, &ranges, Some(mailboxes)))
    }

    /// The account's number, a read transaction, and per replica the counter
    /// range (inclusive) a peer holding `have` lacks; [`StoreError::Compacted`]
    /// if part of a range is no longer in the log.
    #[allow(clippy::type_complexity)]
    fn log_ranges(
        &self,
        account: &str,
        have: &VersionVector,
    ) -> Result<(u32, ReadTransaction, Vec<(u64, u64, u64)>), StoreError> {
        let acct = self.account(account)?;
        let number = acct.number;
        // The version and the transaction as of the same commit: every op
        // up to the version is in the log this transaction sees.
        let (r, published) = self.run(|db| self.view(&acct, db))?;
        let mine = &published.version;
        let floor = guarded(|| self.log_floor(&r, number))?;
        let mut ranges = Vec::new();
        for (replica, last) in mine.iter() {
            let from = have.get(replica);
            if from >= last {
                continue;
            }
            if from < floor.get(replica) {
                return Err(StoreError::Compacted);
            }
            ranges.push((replica.0, from + 1, last));
        }
        Ok((number, r, ranges))
    }

    pub(crate) fn log_floor(&self, r: &ReadTransaction, number: u32) -> Result<VersionVector, StoreError> {
        match r.open_table(LOG_FLOOR) {
            Ok(t) => floor_in(&t, number),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(VersionVector::new()),
            Err(e) => Err(st(e)),
        }
    }

    /// [`Store::log_floor`] inside a write transaction.
    pub(crate) fn log_floor_in(w: &redb::WriteTransaction, number: u32) -> Result<VersionVector, StoreError> {
        floor_in(&w.open_table(LOG_FLOOR).map_err(st)?, number)
    }

    /// Drops from the log every op that all known peers hold (`held_by_all`):
    /// their effect is already in the materialized state. Returns how many
    /// ops were dropped.
    pub fn compact(&self, account: &str, held_by_all: &VersionVector) -> Result<u64, StoreError> {
        let number = self.account_number(account)?;
        self.run(|db| {
            let mut floor = self.log_floor(&db.begin_read().map_err(st)?, number)?;
            let w = db.begin_write().map_err(st)?;
            let dropped = oplog::compact(&w, number, held_by_all, &mut floor)?;
            let floor = postcard::to_stdvec(&floor).map_err(|e| StoreError::Storage(e.to_string()))?;
            w.open_table(LOG_FLOOR).map_err(st)?.insert(number, floor.as_slice()).map_err(st)?;
            w.commit().map_err(st)?;
            self.note_freed(dropped.bytes);
            Ok(dropped.ops)
        })
    }
}

/// An account's log floor, from the floor table of either transaction.
fn floor_in(t: &impl redb::ReadableTable<u32, &'static [u8]>, number: u32) -> Result<VersionVector, StoreError> {
    match t.get(number).map_err(st)? {
        Some(v) => postcard::from_bytes(v.value()).map_err(|e| damaged("log floor", e)),
        None => Ok(VersionVector::new()),
    }
}
