//! Body garbage collection: a body (and each large part only it names) is
//! deleted once no message of any account names it and the expunges that
//! released it are causally stable.
//!
//! When an account's last message naming a body goes (an expunge, a
//! mailbox deleted, a snapshot installed), the one apply path records a
//! candidate row, (body, account) → the account's version vector after
//! that commit ([`record_releases`]). A later reference by the account
//! (a copy, a peer's op bringing the message back, the same bytes
//! appended again) removes the row in the same transaction. A body stored
//! while nothing names it (it came from a peer after its message went) gets
//! a row under [`NO_ACCOUNT`].
//!
//! [`Store::collect_bodies`] is given, per account, the version vector
//! every known peer has acknowledged (see `crate::acks`). A body is
//! deleted when no account references it and every candidate row of it
//! is covered: each release happened-before something every peer holds,
//! so no op that could still name it by its message is in flight — a
//! concurrent copy made elsewhere before the expunge arrived there was
//! made by a replica that holds the body and names it live, so this node
//! fetches it again like any missing body. A peer asking for a collected
//! body is answered `NoBlob` (the store no longer serves it to anyone),
//! which never makes a live message unfetchable: a live message has a
//! reference, and a referenced body is never collected.
//!
//! Large parts are shared between bodies (a forwarded attachment): the
//! `part_refs` table counts the stored bodies naming each, and a part goes
//! with its last one.

use crate::backend::{BLOB_REFS, GOT};
use crate::*;
use redb::{ReadableTable, Table, WriteTransaction};

/// (body id, account number) → postcard of the account's version vector
/// when its last reference to the body went.
pub(crate) const UNREFERENCED: TableDefinition<([u8; 32], u32), &[u8]> = TableDefinition::new("bodies_unreferenced");
/// Part id → how many stored bodies name it.
pub(crate) const PART_REFS: TableDefinition<&[u8; 32], u64> = TableDefinition::new("part_refs");
/// The account of a candidate row for a body stored while no account named it.
pub(crate) const NO_ACCOUNT: u32 = u32::MAX;

/// What one collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Bodies deleted.
    pub bodies: u64,
    /// Large parts deleted with them.
    pub parts: u64,
    /// Stored bytes freed (records and parts, as stored).
    pub bytes: u64,
    /// Candidate rows dropped because the body is referenced again by
    /// another account and this account's release is stable.
    pub settled: u64,
    /// Whether collectable bodies remain (the call stopped at its bound).
    pub more: bool,
}

/// After a batch of account `number`: every body in `released` that the
/// account no longer names becomes a candidate, stamped with `version`.
pub(crate) fn record_releases(
    w: &WriteTransaction,
    number: u32,
    released: &[BlobId],
    version: &VersionVector,
) -> Result<(), StoreError> {
    if released.is_empty() {
        return Ok(());
    }
    let refs = w.open_table(BLOB_REFS).map_err(st)?;
    let mut unref = w.open_table(UNREFERENCED).map_err(st)?;
    let stamp = postcard::to_stdvec(version).map_err(|e| StoreError::Storage(e.to_string()))?;
    for id in released {
        if refs.get((id.0, number)).map_err(st)?.is_none() {
            unref.insert((id.0, number), stamp.as_slice()).map_err(st)?;
        }
    }
    Ok(())
}

/// Bodies just stored that no account names become candidates at once.
pub(crate) fn note_unowned(w: &WriteTransaction, ids: &[BlobId]) -> Result<(), StoreError> {
    let refs = w.open_table(BLOB_REFS).map_err(st)?;
    let blobs = w.open_table(BLOBS).map_err(st)?;
    let mut unref = w.open_table(UNREFERENCED).map_err(st)?;
    let empty = postcard::to_stdvec(&VersionVector::new()).map_err(|e| StoreError::Storage(e.to_string()))?;
    for id in ids {
        if blobs.get(&id.0).map_err(st)?.is_some()
            && refs.range((id.0, 0)..=(id.0, u32::MAX)).map_err(st)?.next().is_none()
        {
            unref.insert((id.0, NO_ACCOUNT), empty.as_slice()).map_err(st)?;
        }
    }
    Ok(())
}

/// A new body record naming `parts` was stored: count them.
pub(crate) fn add_parts(w: &WriteTransaction, parts: &[BlobId]) -> Result<(), StoreError> {
    if parts.is_empty() {
        return Ok(());
    }
    let mut t = w.open_table(PART_REFS).map_err(st)?;
    for p in parts {
        let n = t.get(&p.0).map_err(st)?.map_or(0, |g| g.value());
        t.insert(&p.0, n + 1).map_err(st)?;
    }
    Ok(())
}

fn decode_stamp(bytes: &[u8]) -> Result<VersionVector, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| damaged("body release stamp", e))
}

/// Deletes one body's record, its sort keys and the parts only it named;
/// returns (parts deleted, bytes freed).
fn delete_body(
    blobs: &mut Table<&[u8; 32], &[u8]>,
    keys: &mut Table<&[u8; 32], &[u8]>,
    parts: &mut Table<&[u8; 32], &[u8]>,
    part_refs: &mut Table<&[u8; 32], u64>,
    id: BlobId,
) -> Result<(u64, u64), StoreError> {
    let Some(stored) = blobs.remove(&id.0).map_err(st)? else { return Ok((0, 0)) };
    keys.remove(&id.0).map_err(st)?;
    let mut bytes = stored.value().len() as u64;
    // A record that does not decode names parts nobody can read: they stay
    // (and `check_blob_refs` reports them as unreferenced).
    let Ok(record) = blob::unpack_record(stored.value(), BODY_BYTES_MAX) else { return Ok((0, bytes)) };
    drop(stored);
    let mut deleted = 0;
    for pid in blob::part_ids(&record) {
        let n = part_refs.get(&pid.0).map_err(st)?.map_or(0, |g| g.value());
        if n <= 1 {
            part_refs.remove(&pid.0).map_err(st)?;
            if let Some(p) = parts.remove(&pid.0).map_err(st)? {
                bytes += p.value().len() as u64;
                deleted += 1;
            }
        } else {
            part_refs.insert(&pid.0, n - 1).map_err(st)?;
        }
    }
    Ok((deleted, bytes))
}

/// A body's candidate rows: (account, whether its release is covered).
type Candidates = ([u8; 32], Vec<(u32, bool)>);

/// One pass over the candidates in `w`: at most `max` bodies deleted.
fn collect(w: &WriteTransaction, stable: &BTreeMap<u32, VersionVector>, max: usize) -> Result<Collected, StoreError> {
    let mut out = Collected::default();
    // The candidates, grouped by body (rows of one body are adjacent).
    let mut groups: Vec<Candidates> = Vec::new();
    {
        let unref = w.open_table(UNREFERENCED).map_err(st)?;
        for item in unref.iter().map_err(st)? {
            let (k, v) = item.map_err(st)?;
            let (blob, account) = k.value();
            let covered = account == NO_ACCOUNT
                || stable.get(&account).is_some_and(|s| decode_stamp(v.value()).is_ok_and(|r| s.dominates(&r)));
            match groups.last_mut() {
                Some((b, rows)) if *b == blob => rows.push((account, covered)),
                _ => groups.push((blob, vec![(account, covered)])),
            }
        }
    }
    let refs = w.open_table(BLOB_REFS).map_err(st)?;
    let mut unref = w.open_table(UNREFERENCED).map_err(st)?;
    let mut got = w.open_table(GOT).map_err(st)?;
    let mut blobs = w.open_table(BLOBS).map_err(st)?;
    let mut parts = w.open_table(PARTS).map_err(st)?;
    let mut part_refs = w.open_table(PART_REFS).map_err(st)?;
    let mut keys = w.open_table(crate::sortkeys::SORT_KEYS).map_err(st)?;
    for (blob, rows) in groups {
        let referenced = refs.range((blob, 0)..=(blob, u32::MAX)).map_err(st)?.next().is_some();
        if referenced {
            // Another account names it: this account's stable release is
            // done with, and so is its mark of having got the bytes (a
            // message of it coming back later fetches them like any
            // missing body; the bytes are still here for the other).
            for (account, covered) in rows {
                if covered {
                    unref.remove((blob, account)).map_err(st)?;
                    if account != NO_ACCOUNT {
                        got.remove((account, blob)).map_err(st)?;
                    }
                    out.settled += 1;
                }
            }
            continue;
        }
        if !rows.iter().all(|(_, covered)| *covered) {
            continue;
        }
        if out.bodies as usize >= max {
            out.more = true;
            break;
        }
        let (p, bytes) = delete_body(&mut blobs, &mut keys, &mut parts, &mut part_refs, BlobId(blob))?;
        for (account, _) in rows {
            unref.remove((blob, account)).map_err(st)?;
            if account != NO_ACCOUNT {
                got.remove((account, blob)).map_err(st)?;
            }
        }
        out.bodies += 1;
        out.parts += p;
        out.bytes += bytes;
    }
    Ok(out)
}

/// Builds the candidate rows and the part counts for a store written
/// before them: every stored body no account names is a candidate of each
/// account that had got it (stamped with the account's version now, in
/// `versions`), or of [`NO_ACCOUNT`].
pub(crate) fn build(w: &WriteTransaction, versions: &BTreeMap<u32, VersionVector>) -> Result<(), StoreError> {
    let mut had: BTreeMap<[u8; 32], Vec<u32>> = BTreeMap::new();
    for item in w.open_table(GOT).map_err(st)?.iter().map_err(st)? {
        let (account, blob) = item.map_err(st)?.0.value();
        had.entry(blob).or_default().push(account);
    }
    let refs = w.open_table(BLOB_REFS).map_err(st)?;
    let blobs = w.open_table(BLOBS).map_err(st)?;
    let mut unref = w.open_table(UNREFERENCED).map_err(st)?;
    unref.retain(|_, _| false).map_err(st)?;
    let mut counts: BTreeMap<[u8; 32], u64> = BTreeMap::new();
    let encode = |v: &VersionVector| postcard::to_stdvec(v).map_err(|e| StoreError::Storage(e.to_string()));
    for item in blobs.iter().map_err(st)? {
        let (k, v) = item.map_err(st)?;
        let blob = *k.value();
        if let Ok(record) = blob::unpack_record(v.value(), BODY_BYTES_MAX) {
            for p in blob::part_ids(&record) {
                *counts.entry(p.0).or_default() += 1;
            }
        }
        if refs.range((blob, 0)..=(blob, u32::MAX)).map_err(st)?.next().is_some() {
            continue;
        }
        match had.get(&blob) {
            Some(accounts) => {
                for a in accounts {
                    let stamp = encode(versions.get(a).unwrap_or(&VersionVector::new()))?;
                    unref.insert((blob, *a), stamp.as_slice()).map_err(st)?;
                }
            }
            None => {
                unref.insert((blob, NO_ACCOUNT), encode(&VersionVector::new())?.as_slice()).map_err(st)?;
            }
        }
    }
    let mut part_refs = w.open_table(PART_REFS).map_err(st)?;
    part_refs.retain(|_, _| false).map_err(st)?;
    for (p, n) in counts {
        part_refs.insert(&p, n).map_err(st)?;
    }
    Ok(())
}

/// What the candidate rows and part counts must be, against what they
/// are: every difference, in words (empty: they agree).
pub(crate) fn check(r: &redb::ReadTransaction) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let (Some(blobs), refs) = (table(r, BLOBS)?, table(r, BLOB_REFS)?) else { return Ok(out) };
    let referenced = |b: &[u8; 32]| -> Result<bool, StoreError> {
        Ok(match &refs {
            Some(t) => t.range((*b, 0)..=(*b, u32::MAX)).map_err(st)?.next().is_some(),
            None => false,
        })
    };
    let mut rows: BTreeMap<[u8; 32], Vec<u32>> = BTreeMap::new();
    if let Some(t) = table(r, UNREFERENCED)? {
        for item in t.iter().map_err(st)? {
            let (blob, account) = item.map_err(st)?.0.value();
            rows.entry(blob).or_default().push(account);
            if account != NO_ACCOUNT
                && refs.as_ref().map(|t| t.get((blob, account)).map(|g| g.is_some())).transpose().map_err(st)?
                    == Some(true)
            {
                out.push(format!("body {:?}: candidate of account {account}, which names it", BlobId(blob)));
            }
        }
    }
    let mut counts: BTreeMap<[u8; 32], u64> = BTreeMap::new();
    for item in blobs.iter().map_err(st)? {
        let (k, v) = item.map_err(st)?;
        let blob = *k.value();
        if let Ok(record) = blob::unpack_record(v.value(), BODY_BYTES_MAX) {
            for p in blob::part_ids(&record) {
                *counts.entry(p.0).or_default() += 1;
            }
        }
        if !referenced(&blob)? && !rows.contains_key(&blob) {
            out.push(format!("body {:?}: stored, named by no account, not a candidate (a leak)", BlobId(blob)));
        }
    }
    if let Some(t) = table(r, GOT)? {
        for item in t.iter().map_err(st)? {
            let (account, blob) = item.map_err(st)?.0.value();
            let named = refs.as_ref().map(|t| t.get((blob, account)).map(|g| g.is_some())).transpose().map_err(st)?;
            if named != Some(true) && !rows.get(&blob).is_some_and(|a| a.contains(&account)) {
                out.push(format!("body {:?}: got by account {account}, neither named nor a candidate", BlobId(blob)));
            }
        }
    }
    let mut have: BTreeMap<[u8; 32], u64> = BTreeMap::new();
    if let Some(t) = table(r, PART_REFS)? {
        for item in t.iter().map_err(st)? {
            let (k, v) = item.map_err(st)?;
            have.insert(*k.value(), v.value());
        }
    }
    if have != counts {
        for (p, n) in &counts {
            if have.get(p) != Some(n) {
                out.push(format!("part {:?}: counted {:?}, named by {n} bodies", BlobId(*p), have.get(p)));
            }
        }
        for (p, n) in &have {
            if !counts.contains_key(p) {
                out.push(format!("part {:?}: counted {n}, named by no body", BlobId(*p)));
            }
        }
    }
    if let Some(t) = table(r, PARTS)? {
        for item in t.iter().map_err(st)? {
            let p = *item.map_err(st)?.0.value();
            if !counts.contains_key(&p) {
                out.push(format!("part {:?}: stored, named by no body", BlobId(p)));
            }
        }
    }
    Ok(out)
}

impl Store {
    /// Deletes up to `max` bodies that no account names and whose releases
    /// `stable` covers (per account: what every known peer has
    /// acknowledged), with the large parts only they named, in one durable
    /// transaction. Call again while [`Collected::more`].
    pub fn collect_bodies(
        &self,
        stable: &BTreeMap<String, VersionVector>,
        max: usize,
    ) -> Result<Collected, StoreError> {
        let numbers: BTreeMap<u32, VersionVector> = {
            let map = self.accounts.read().unwrap_or_else(PoisonError::into_inner);
            stable.iter().filter_map(|(a, v)| map.get(a).map(|acct| (acct.number, v.clone()))).collect()
        };
        let out = self.run(|db| {
            let w = redb::Database::begin_write(db).map_err(st)?;
            let out = collect(&w, &numbers, max)?;
            w.commit().map_err(st)?;
            Ok(out)
        })?;
        self.core.db.committed();
        self.note_freed(out.bytes);
        Ok(out)
    }

    /// Per account, the bodies it released that are not yet collected
    /// (bodies stored while no account named them under `""`).
    pub fn bodies_to_collect(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let numbers: BTreeMap<u32, String> = {
            let map = self.accounts.read().unwrap_or_else(PoisonError::into_inner);
            map.iter().map(|(n, a)| (a.number, n.clone())).collect()
        };
        self.run(|db| {
            let r = redb::ReadableDatabase::begin_read(db).map_err(st)?;
            let mut out = BTreeMap::new();
            if let Some(t) = table(&r, UNREFERENCED)? {
                for item in t.iter().map_err(st)? {
                    let (_, account) = item.map_err(st)?.0.value();
                    let name = numbers.get(&account).cloned().unwrap_or_default();
                    *out.entry(name).or_default() += 1;
                }
            }
            Ok(out)
        })
    }
}
