//! Which accounts reference each body.
//!
//! Bodies are shared by every account (deduplicated by their BLAKE3), so
//! "is this body stored here" says nothing about who may read it. The
//! `blob_refs` table counts, per (body, account), the account's messages
//! whose envelope names the body. The backend keeps it in
//! `set_envelope`/`remove_envelope`, inside the write transaction that
//! changes the envelopes (the one apply path), so the index commits with
//! them or not at all; a copy adds one, an expunge of one copy removes one
//! and leaves the others. A store written before the index existed
//! (format 1) gets it built once at open. It answers "may this peer, which
//! sees these accounts, have this body" ([`Store::blob_for`]) and will
//! drive body garbage collection (a body no row names is unreferenced).

use crate::backend::{decode_envelope, Key2, BLOB_REFS, ENVELOPES};
use crate::*;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

/// Counts per (body, account) from the envelopes: what the index must hold.
fn recount(envelopes: &impl ReadableTable<Key2, &'static [u8]>) -> Result<BTreeMap<([u8; 32], u32), u64>, StoreError> {
    let mut counts = BTreeMap::new();
    for item in envelopes.iter().map_err(st)? {
        let (k, v) = item.map_err(st)?;
        let env = decode_envelope(v.value()).map_err(|e| damaged("envelope", e))?;
        *counts.entry((env.blob.0, k.value().0)).or_insert(0u64) += 1;
    }
    Ok(counts)
}

/// Builds the index from the envelopes (replacing whatever it held).
pub(crate) fn build(w: &WriteTransaction) -> Result<(), StoreError> {
    let counts = {
        let envelopes = w.open_table(ENVELOPES).map_err(st)?;
        recount(&envelopes)?
    };
    let mut refs = w.open_table(BLOB_REFS).map_err(st)?;
    refs.retain(|_, _| false).map_err(st)?;
    for (k, n) in counts {
        refs.insert(k, n).map_err(st)?;
    }
    Ok(())
}

/// Whether any of the accounts `numbers` references body `id`.
pub(crate) fn referenced_by(r: &ReadTransaction, id: BlobId, numbers: &[u32]) -> Result<bool, StoreError> {
    let refs = match r.open_table(BLOB_REFS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(st(e)),
    };
    for n in numbers {
        if refs.get((id.0, *n)).map_err(st)?.is_some_and(|g| g.value() > 0) {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Store {
    /// A body, if one of `accounts` references it (a message of one of
    /// them names it) and it is stored here; `None` otherwise — for a body
    /// of another account exactly as for one not stored, so that the
    /// answer tells nothing. What a peer that sees only `accounts` may be
    /// sent. Verified like [`Store::blob`].
    pub fn blob_for(&self, accounts: &[&str], id: BlobId) -> Result<Option<Vec<u8>>, StoreError> {
        let numbers: Vec<u32> = {
            let map = self.accounts.read().unwrap_or_else(PoisonError::into_inner);
            accounts.iter().filter_map(|a| map.get(*a).map(|acct| acct.number)).collect()
        };
        if numbers.is_empty() {
            return Ok(None);
        }
        let reader = self.run(|db| {
            let txn = redb::ReadableDatabase::begin_read(db).map_err(st)?;
            if referenced_by(&txn, id, &numbers)? {
                Ok(Some(self.bare_reader(txn)))
            } else {
                Ok(None)
            }
        })?;
        match reader.map(|r| r.body(id)).transpose() {
            Ok(b) => Ok(b),
            Err(StoreError::MissingBlob(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The accounts whose messages reference body `id`.
    pub fn blob_accounts(&self, id: BlobId) -> Result<Vec<String>, StoreError> {
        let numbers: BTreeSet<u32> = self.run(|db| {
            let txn = redb::ReadableDatabase::begin_read(db).map_err(st)?;
            let refs = match txn.open_table(BLOB_REFS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeSet::new()),
                Err(e) => return Err(st(e)),
            };
            let mut out = BTreeSet::new();
            for item in refs.range((id.0, 0)..=(id.0, u32::MAX)).map_err(st)? {
                out.insert(item.map_err(st)?.0.value().1);
            }
            Ok(out)
        })?;
        let map = self.accounts.read().unwrap_or_else(PoisonError::into_inner);
        Ok(map.iter().filter(|(_, a)| numbers.contains(&a.number)).map(|(n, _)| n.clone()).collect())
    }

    /// Compares the index of body references with a recount from the
    /// envelopes; returns every difference (empty: they agree).
    pub fn check_blob_refs(&self) -> Result<Vec<String>, StoreError> {
        self.run(|db| {
            let txn = redb::ReadableDatabase::begin_read(db).map_err(st)?;
            let want = match txn.open_table(ENVELOPES) {
                Ok(t) => recount(&t)?,
                Err(redb::TableError::TableDoesNotExist(_)) => BTreeMap::new(),
                Err(e) => return Err(st(e)),
            };
            let mut have = BTreeMap::new();
            match txn.open_table(BLOB_REFS) {
                Ok(t) => {
                    for item in t.iter().map_err(st)? {
                        let (k, v) = item.map_err(st)?;
                        have.insert(k.value(), v.value());
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(st(e)),
            }
            let mut out = Vec::new();
            for (k, n) in &want {
                if have.get(k) != Some(n) {
                    let found = have.get(k).copied().unwrap_or(0);
                    out.push(format!("body {:?} account {}: index {found}, envelopes {n}", BlobId(k.0), k.1));
                }
            }
            for (k, n) in &have {
                if !want.contains_key(k) {
                    out.push(format!("body {:?} account {}: index {n}, envelopes 0", BlobId(k.0), k.1));
                }
            }
            Ok(out)
        })
    }
}
