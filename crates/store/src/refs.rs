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
//!
//! Beside it, the `missing_bodies` table lists per account the bodies its
//! messages name whose bytes it has not got, so "what is left to fetch"
//! costs O(missing), not a scan of every envelope (which, run after each
//! batch of a 10,000-message initial sync, made the sync quadratic).
//!
//! "Got" is per account, not per store. A peer pinned for alice can make a
//! message in alice's account that names any body id, say one of bob's it
//! learned somehow; had the store taken "stored here" for "alice's", alice
//! would read bob's mail and the peer could fetch it through alice. So a
//! body counts as an account's only once its bytes were written for that
//! account: by a local write of the account (a delivery, an APPEND, an
//! import) or from a peer pinned for it ([`settle`]), which proves it has
//! them. Until then the account's row stays, reads of the body through the
//! account fail as for a body not here, peers are not sent it on the
//! account's behalf, and the links ask for the bytes as for any missing
//! body. The cost: a body shared by two accounts and received over a link
//! pinned for one of them is fetched again for the other.

use crate::backend::{decode_envelope, Key2, ACCOUNT_BYTES, BLOB_REFS, ENVELOPES, GOT, MISSING};
use crate::*;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use std::ops::Bound;

/// Per (body, account) from the envelopes: how many of the account's
/// messages name the body, and the size they give it.
type Recount = BTreeMap<([u8; 32], u32), (u64, u64)>;

/// What the index must hold, from the envelopes.
fn recount(envelopes: &impl ReadableTable<Key2, &'static [u8]>) -> Result<Recount, StoreError> {
    let mut counts: Recount = BTreeMap::new();
    for item in envelopes.iter().map_err(st)? {
        let (k, v) = item.map_err(st)?;
        let env = decode_envelope(v.value()).map_err(|e| damaged("envelope", e))?;
        counts.entry((env.blob.0, k.value().0)).or_insert((0, env.size)).0 += 1;
    }
    Ok(counts)
}

/// The rows `missing_bodies` must hold: every counted (account, body) the
/// account has not got (`got`), or whose body is not stored.
fn expected_missing(
    counts: &Recount,
    stored: impl Fn(&[u8; 32]) -> Result<bool, StoreError>,
    got: impl Fn(u32, &[u8; 32]) -> Result<bool, StoreError>,
) -> Result<BTreeMap<(u32, [u8; 32]), u64>, StoreError> {
    let mut out = BTreeMap::new();
    for ((blob, account), (_, size)) in counts {
        if !stored(blob)? || !got(*account, blob)? {
            out.insert((*account, *blob), *size);
        }
    }
    Ok(out)
}

/// Builds the indexes from the envelopes and the bodies (replacing
/// whatever they held), for a store written before them: every body an
/// account names and that is stored counts as got (the older code had no
/// way to tell).
pub(crate) fn build(w: &WriteTransaction) -> Result<(), StoreError> {
    let counts = {
        let envelopes = w.open_table(ENVELOPES).map_err(st)?;
        recount(&envelopes)?
    };
    let missing = {
        let blobs = w.open_table(BLOBS).map_err(st)?;
        expected_missing(&counts, |b| Ok(blobs.get(b).map_err(st)?.is_some()), |_, _| Ok(true))?
    };
    let mut got = w.open_table(GOT).map_err(st)?;
    got.retain(|_, _| false).map_err(st)?;
    for (blob, account) in counts.keys() {
        if !missing.contains_key(&(*account, *blob)) {
            got.insert((*account, *blob), ()).map_err(st)?;
        }
    }
    let mut refs = w.open_table(BLOB_REFS).map_err(st)?;
    refs.retain(|_, _| false).map_err(st)?;
    for (k, (n, _)) in counts {
        refs.insert(k, n).map_err(st)?;
    }
    let mut table = w.open_table(MISSING).map_err(st)?;
    table.retain(|_, _| false).map_err(st)?;
    for (k, size) in missing {
        table.insert(k, size).map_err(st)?;
    }
    Ok(())
}

/// Per account, the bytes of its messages, from a recount.
fn account_bytes(counts: &Recount) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for ((_, account), (n, size)) in counts {
        *out.entry(*account).or_default() += n * size;
    }
    out
}

/// Builds each account's byte count from the envelopes, for a store
/// written before it.
pub(crate) fn build_account_bytes(w: &WriteTransaction) -> Result<(), StoreError> {
    let counts = recount(&w.open_table(ENVELOPES).map_err(st)?)?;
    let mut t = w.open_table(ACCOUNT_BYTES).map_err(st)?;
    t.retain(|_, _| false).map_err(st)?;
    for (account, bytes) in account_bytes(&counts) {
        t.insert(account, bytes).map_err(st)?;
    }
    Ok(())
}

/// Marks bodies `ids`, just written, got by those of `accounts` (account
/// numbers; `None`: all — for a caller trusted with every account) whose
/// messages name them, and takes them off their missing lists. Runs in
/// the writing transaction, so the lists commit with the bodies.
pub(crate) fn settle(
    w: &WriteTransaction,
    ids: impl IntoIterator<Item = BlobId>,
    accounts: Option<&[u32]>,
) -> Result<(), StoreError> {
    let blobs = w.open_table(BLOBS).map_err(st)?;
    let refs = w.open_table(BLOB_REFS).map_err(st)?;
    let mut missing = w.open_table(MISSING).map_err(st)?;
    let mut got = w.open_table(GOT).map_err(st)?;
    let ids: Vec<BlobId> = ids.into_iter().collect();
    for &id in &ids {
        if blobs.get(&id.0).map_err(st)?.is_none() {
            continue;
        }
        for item in refs.range((id.0, 0)..=(id.0, u32::MAX)).map_err(st)? {
            let account = item.map_err(st)?.0.value().1;
            if accounts.is_none_or(|a| a.contains(&account)) {
                got.insert((account, id.0), ()).map_err(st)?;
                missing.remove((account, id.0)).map_err(st)?;
            }
        }
    }
    drop((blobs, refs, missing, got));
    crate::gc::note_unowned(w, &ids)
}

/// Whether account `number` names body `id` but has not got its bytes.
pub(crate) fn lacks(r: &ReadTransaction, number: u32, id: BlobId) -> Result<bool, StoreError> {
    match table(r, MISSING)? {
        Some(t) => Ok(t.get((number, id.0)).map_err(st)?.is_some()),
        None => Ok(false),
    }
}

/// The bodies account `number` lacks, with their sizes, from the index.
pub(crate) fn missing_of(r: &ReadTransaction, number: u32) -> Result<Vec<(BlobId, u64)>, StoreError> {
    let Some(t) = table(r, MISSING)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for item in t.range((number, [0u8; 32])..=(number, [0xff; 32])).map_err(st)? {
        let (k, v) = item.map_err(st)?;
        out.push((BlobId(k.value().1), v.value()));
    }
    Ok(out)
}

/// How many bodies account `number` lacks, counted without holding them.
pub(crate) fn missing_count(r: &ReadTransaction, number: u32) -> Result<u64, StoreError> {
    let Some(t) = table(r, MISSING)? else { return Ok(0) };
    let mut n = 0;
    for item in t.range((number, [0u8; 32])..=(number, [0xff; 32])).map_err(st)? {
        item.map_err(st)?;
        n += 1;
    }
    Ok(n)
}

/// At most `limit` of the bodies account `number` lacks, after `after`.
pub(crate) fn missing_range(
    r: &ReadTransaction,
    number: u32,
    after: Option<BlobId>,
    limit: usize,
) -> Result<crate::bodies::MissingPage, StoreError> {
    let mut page = crate::bodies::MissingPage::default();
    let Some(t) = table(r, MISSING)? else { return Ok(page) };
    let from = match after {
        Some(a) => Bound::Excluded((number, a.0)),
        None => Bound::Included((number, [0u8; 32])),
    };
    for item in t.range::<(u32, [u8; 32])>((from, Bound::Included((number, [0xff; 32])))).map_err(st)? {
        let (k, v) = item.map_err(st)?;
        if page.bodies.len() == limit {
            page.more = true;
            break;
        }
        page.bodies.push((BlobId(k.value().1), v.value()));
    }
    Ok(page)
}

/// Whether any of the accounts `numbers` references body `id` and has
/// got its bytes.
pub(crate) fn referenced_by(r: &ReadTransaction, id: BlobId, numbers: &[u32]) -> Result<bool, StoreError> {
    let refs = match r.open_table(BLOB_REFS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(st(e)),
    };
    for n in numbers {
        if refs.get((id.0, *n)).map_err(st)?.is_some_and(|g| g.value() > 0) && !lacks(r, *n, id)? {
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
        self.read_for(accounts, id, |r| r.body(id))
    }

    /// Whether `account` names body `id` without having got its bytes (a
    /// link then asks its peers for them).
    pub fn lacks(&self, account: &str, id: BlobId) -> Result<bool, StoreError> {
        let number = self.account(account)?.number;
        self.run(|db| lacks(&redb::ReadableDatabase::begin_read(db).map_err(st)?, number, id))
    }

    /// Those of `ids` whose bytes `account` holds (named, and not lacking),
    /// in one read.
    pub fn holding(&self, account: &str, ids: &[BlobId]) -> Result<Vec<BlobId>, StoreError> {
        let number = self.account(account)?.number;
        self.run(|db| {
            let r = redb::ReadableDatabase::begin_read(db).map_err(st)?;
            let mut out = Vec::new();
            for id in ids {
                if referenced_by(&r, *id, &[number])? {
                    out.push(*id);
                }
            }
            Ok(out)
        })
    }

    /// [`Store::blob_for`] in the form to ship to the peer
    /// ([`Reader::body_shipped`]).
    pub fn shipped_for(&self, accounts: &[&str], id: BlobId) -> Result<Option<Shipped>, StoreError> {
        self.read_for(accounts, id, |r| r.body_shipped(id))
    }

    /// `read` of body `id` if one of `accounts` references it and it is
    /// stored here; `None` otherwise, the same either way.
    fn read_for<T>(
        &self,
        accounts: &[&str],
        id: BlobId,
        read: impl FnOnce(&Reader) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
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
        match reader.as_ref().map(read).transpose() {
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
    /// envelopes, the lists of missing bodies with what they must hold
    /// (every named body not stored or not got), and the garbage
    /// collector's rows with the bodies ([`crate::gc`]: every stored body
    /// is named or a candidate, part counts match the records); returns
    /// every difference (empty: they agree).
    pub fn check_blob_refs(&self) -> Result<Vec<String>, StoreError> {
        self.run(|db| {
            let txn = redb::ReadableDatabase::begin_read(db).map_err(st)?;
            let counts = match table(&txn, ENVELOPES)? {
                Some(t) => recount(&t)?,
                None => BTreeMap::new(),
            };
            let blobs = table(&txn, BLOBS)?;
            let got = table(&txn, GOT)?;
            let want_missing = expected_missing(
                &counts,
                |b| match &blobs {
                    Some(t) => Ok(t.get(b).map_err(st)?.is_some()),
                    None => Ok(false),
                },
                |a, b| match &got {
                    Some(t) => Ok(t.get((a, *b)).map_err(st)?.is_some()),
                    None => Ok(false),
                },
            )?;
            let want: BTreeMap<_, u64> = counts.iter().map(|(k, (n, _))| (*k, *n)).collect();
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
            let mut listed = BTreeMap::new();
            if let Some(t) = table(&txn, MISSING)? {
                for item in t.iter().map_err(st)? {
                    let (k, v) = item.map_err(st)?;
                    listed.insert(k.value(), v.value());
                }
            }
            for k in want_missing.keys() {
                if !listed.contains_key(k) {
                    out.push(format!("body {:?} account {}: not got, not listed as missing", BlobId(k.1), k.0));
                }
            }
            for k in listed.keys() {
                if !want_missing.contains_key(k) {
                    out.push(format!("body {:?} account {}: listed as missing, got or unreferenced", BlobId(k.1), k.0));
                }
            }
            let mut bytes = BTreeMap::new();
            if let Some(t) = table(&txn, ACCOUNT_BYTES)? {
                for item in t.iter().map_err(st)? {
                    let (k, v) = item.map_err(st)?;
                    if v.value() > 0 {
                        bytes.insert(k.value(), v.value());
                    }
                }
            }
            let want_bytes = account_bytes(&counts);
            if bytes != want_bytes {
                out.push(format!("account bytes {bytes:?}, envelopes give {want_bytes:?}"));
            }
            out.extend(crate::gc::check(&txn)?);
            Ok(out)
        })
    }
}
