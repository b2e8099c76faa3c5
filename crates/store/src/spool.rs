//! Snapshots arriving from a peer, kept in the file part by part until the
//! last part came, then installed from there: a snapshot's size costs disk,
//! not memory. Each part is committed durably with the spool's head (the
//! snapshot's id, length and bytes held), so a session that broke off, or
//! a node that was stopped or killed, offers the peer what it holds and
//! gets the rest ([`Store::spool_held`]). The install deletes a spool's
//! rows in its own transaction; a failed install drops them; a new first
//! part drops the spools of peers with no link open; forgetting an account
//! drops its spools, and an open drops spools of accounts no longer here.

use crate::*;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use std::io::Read;

/// (account, spool, offset) → that part's bytes. A spool is one peer's
/// snapshot of one account (its id is the caller's: the peer's).
pub(crate) const SPOOL: TableDefinition<(&str, u64, u64), &[u8]> = TableDefinition::new("snapshot_spool");

/// (account, spool) → (the snapshot's id, its length, bytes spooled): what
/// the spool holds, so that a later session can resume it.
pub(crate) const SPOOL_HEAD: TableDefinition<(&str, u64), (u64, u64, u64)> =
    TableDefinition::new("snapshot_spool_head");

/// Deletes a spool's rows.
pub(crate) fn drop_rows(txn: &WriteTransaction, account: &str, spool: u64) -> Result<(), StoreError> {
    let mut t = txn.open_table(SPOOL).map_err(st)?;
    t.retain_in((account, spool, 0)..=(account, spool, u64::MAX), |_, _| false).map_err(st)?;
    txn.open_table(SPOOL_HEAD).map_err(st)?.remove((account, spool)).map_err(st)?;
    Ok(())
}

/// Deletes every spool of `account` (the account is being forgotten).
pub(crate) fn drop_account(txn: &WriteTransaction, account: &str) -> Result<(), StoreError> {
    let mut t = txn.open_table(SPOOL).map_err(st)?;
    t.retain_in((account, 0, 0)..=(account, u64::MAX, u64::MAX), |_, _| false).map_err(st)?;
    let mut h = txn.open_table(SPOOL_HEAD).map_err(st)?;
    h.retain_in((account, 0)..=(account, u64::MAX), |_, _| false).map_err(st)?;
    Ok(())
}

/// Drops the spools of accounts that are not in `accounts` (at open: one
/// left by an account forgotten before spools were dropped with it). The
/// others stay, for their peers to resume.
pub(crate) fn drop_strays(db: &redb::Database, accounts: &BTreeSet<String>) -> Result<(), redb::Error> {
    let r = db.begin_read()?;
    let heads = match r.open_table(SPOOL_HEAD) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut strays = BTreeSet::new();
    for item in heads.iter()? {
        let (k, _) = item?;
        let (account, _) = k.value();
        if !accounts.contains(account) {
            strays.insert(account.to_string());
        }
    }
    drop((heads, r));
    if !strays.is_empty() {
        let w = db.begin_write()?;
        {
            let mut t = w.open_table(SPOOL)?;
            t.retain(|k, _| !strays.contains(k.0))?;
            let mut h = w.open_table(SPOOL_HEAD)?;
            h.retain(|k, _| !strays.contains(k.0))?;
        }
        w.commit()?;
    }
    Ok(())
}

/// Reads a spool's parts in order, one at a time, inside the transaction
/// that installs it.
pub(crate) fn reader<'t>(txn: &'t WriteTransaction, account: &str, spool: u64) -> SpoolReader<'t> {
    SpoolReader { txn, account: account.to_string(), spool, offset: 0, part: Vec::new(), at: 0 }
}

/// See [`reader`].
pub(crate) struct SpoolReader<'t> {
    txn: &'t WriteTransaction,
    account: String,
    spool: u64,
    offset: u64,
    part: Vec<u8>,
    at: usize,
}

impl Read for SpoolReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.part.len() {
            let t = self.txn.open_table(SPOOL).map_err(std::io::Error::other)?;
            let Some(v) = t.get((self.account.as_str(), self.spool, self.offset)).map_err(std::io::Error::other)?
            else {
                return Ok(0);
            };
            self.part = v.value().to_vec();
            self.offset += self.part.len() as u64;
            self.at = 0;
            if self.part.is_empty() {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.part.len() - self.at);
        buf[..n].copy_from_slice(&self.part[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Store {
    /// Keeps the part of the snapshot `id` (of `total` bytes) of `account`
    /// from `spool` (a peer's id) that starts at `offset`. A part at offset
    /// 0 begins the spool again, and drops the spools of peers with no link
    /// open here (a session that broke off mid-snapshot), so what is
    /// spooled is bounded by the open links; any other part must go on
    /// where the spool of that same snapshot ends. Each part is committed
    /// durably: once this returns, a restart still holds it (a sender's
    /// part is 4 MiB, so one disk flush per 4 MiB received).
    pub fn spool_snapshot_part(
        &self,
        account: &str,
        spool: u64,
        (id, total): (u64, u64),
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.account(account)?;
        self.run(|db| {
            let w = db.begin_write().map_err(st)?;
            if offset == 0 {
                drop_rows(&w, account, spool)?;
                let mut t = w.open_table(SPOOL).map_err(st)?;
                t.retain(|k, _| k.1 == spool || self.is_up(ReplicaId(k.1))).map_err(st)?;
                let mut h = w.open_table(SPOOL_HEAD).map_err(st)?;
                h.retain(|k, _| k.1 == spool || self.is_up(ReplicaId(k.1))).map_err(st)?;
            }
            let mut h = w.open_table(SPOOL_HEAD).map_err(st)?;
            let held = h.get((account, spool)).map_err(st)?.map(|g| g.value()).unwrap_or((id, total, 0));
            if held != (id, total, offset) {
                return Err(StoreError::Snapshot(format!(
                    "a part at {offset} of snapshot {id:x} ({total} bytes); the spool holds {} bytes of {:x}",
                    held.2, held.0
                )));
            }
            h.insert((account, spool), (id, total, offset + bytes.len() as u64)).map_err(st)?;
            drop(h);
            w.open_table(SPOOL).map_err(st)?.insert((account, spool, offset), bytes).map_err(st)?;
            w.commit().map_err(st)
        })
    }

    /// The snapshot `spool` holds part of for `account`: its id, length
    /// and the bytes spooled (to offer the peer in a later session, so
    /// that it sends the rest); none if it holds nothing.
    pub fn spool_held(&self, account: &str, spool: u64) -> Result<Option<(u64, u64, u64)>, StoreError> {
        self.run(|db| {
            let r = db.begin_read().map_err(st)?;
            let Some(h) = table(&r, SPOOL_HEAD)? else { return Ok(None) };
            Ok(h.get((account, spool)).map_err(st)?.map(|g| g.value()).filter(|held| held.2 > 0))
        })
    }

    /// Every spool of `account`, for status: (peer, snapshot id, its
    /// length, bytes spooled).
    pub fn spools(&self, account: &str) -> Result<Vec<(u64, u64, u64, u64)>, StoreError> {
        self.run(|db| {
            let r = db.begin_read().map_err(st)?;
            let Some(h) = table(&r, SPOOL_HEAD)? else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            for item in h.range((account, 0)..=(account, u64::MAX)).map_err(st)? {
                let (k, v) = item.map_err(st)?;
                let (id, total, got) = v.value();
                out.push((k.value().1, id, total, got));
            }
            Ok(out)
        })
    }

    /// Installs the snapshot spooled from `spool` ([`Store::install_snapshot_from`])
    /// and deletes the spool in the same transaction. A failed install
    /// drops the spool too (the session that sent it starts over).
    pub fn install_spooled_snapshot(&self, account: &str, spool: u64) -> Result<(), StoreError> {
        let spooled = self.spooled_bytes(account, spool)?;
        let result = self.install_with(account, crate::snapshot::Input::Spool(spool));
        // The spool's pages are free now, whichever way it went.
        self.note_freed(spooled);
        if result.is_err() {
            let _ = self.run(|db| {
                let w = db.begin_write().map_err(st)?;
                drop_rows(&w, account, spool)?;
                w.commit().map_err(st)
            });
        }
        result
    }

    /// Bytes spooled for `account` from `spool` so far.
    pub fn spooled_bytes(&self, account: &str, spool: u64) -> Result<u64, StoreError> {
        self.run(|db| {
            let r = db.begin_read().map_err(st)?;
            let t = match r.open_table(SPOOL) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(st(e)),
            };
            let mut n = 0;
            for item in t.range((account, spool, 0)..=(account, spool, u64::MAX)).map_err(st)? {
                n += item.map_err(st)?.1.value().len() as u64;
            }
            Ok(n)
        })
    }
}
