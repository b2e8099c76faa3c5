//! `starling verify`: redb's integrity check, then every body and part
//! read back and re-hashed against its id, and the index of body
//! references recounted, the IMAP change index checked against the
//! messages, and every body's sort keys against its header.
//!
//! A plain open trusts the file (redb does not check pages on reads); this
//! reads all of it. It needs the node stopped: redb's check takes the file
//! for itself, and repairs what it can in place (it rolls back to the last
//! commit whose pages are intact, as an open after a crash would).

use crate::backend::{decode_envelope, ENVELOPES, LOCS};
use crate::*;
use redb::{ReadableDatabase, ReadableTable};
use std::path::Path;

/// What redb's integrity check said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Integrity {
    /// Every page checks.
    Ok,
    /// Damaged, and repaired by redb (rolled back to the last intact commit).
    Repaired,
    /// Damaged beyond what redb repairs.
    Damaged(String),
}

/// A damaged body or part, and where it is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The body's (or part's) id.
    pub id: BlobId,
    /// What is wrong.
    pub what: String,
    /// Messages that use it: account, mailbox, UID.
    pub used_by: Vec<(String, Option<String>, u32)>,
}

/// What [`verify_file`] found.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// redb's integrity check.
    pub integrity: Integrity,
    /// Bodies read and hashed.
    pub bodies: u64,
    /// Their bytes.
    pub body_bytes: u64,
    /// Parts (large MIME parts stored apart) read and hashed.
    pub parts: u64,
    /// Bodies whose bytes do not hash to their id or do not decode.
    pub damaged_bodies: Vec<Damage>,
    /// Parts whose bytes do not hash to their id or do not decode.
    pub damaged_parts: Vec<Damage>,
    /// Bodies whose large parts are not stored here (a partial replica
    /// leaves them out: not damage; their other bytes are not checked).
    pub partial_bodies: u64,
    /// Where the index of body references disagrees with the envelopes.
    pub index: Vec<String>,
    /// Tables or records that could not be read at all.
    pub unreadable: Vec<String>,
    /// What each table holds ([`Store::table_sizes`]), largest first.
    pub tables: Vec<crate::TableSize>,
}

impl VerifyReport {
    /// Whether nothing is damaged.
    pub fn is_clean(&self) -> bool {
        self.integrity == Integrity::Ok
            && self.damaged_bodies.is_empty()
            && self.damaged_parts.is_empty()
            && self.index.is_empty()
            && self.unreadable.is_empty()
    }
}

/// Full hex of an id (its `Debug` form is shortened).
pub fn hex(id: &BlobId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs redb's integrity check on the store file at `path`, then opens it
/// for `node` and checks every body, part and the body-reference index.
/// The node must be stopped. Fails only if the store cannot be opened at
/// all (the report then has nothing to say).
pub fn verify_file(path: &Path, node: ReplicaId, options: StoreOptions) -> Result<VerifyReport, OpenError> {
    if !path.exists() {
        return Err(OpenError::Io(format!("{}: no such file", path.display())));
    }
    let integrity = match std::panic::catch_unwind(|| -> Result<bool, redb::DatabaseError> {
        let mut db = Database::builder().set_cache_size(options.cache_bytes).open(path)?;
        db.check_integrity()
    }) {
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
            return Err(OpenError::Io(format!(
                "{} is in use (a node is running on it): stop it first",
                path.display()
            )));
        }
        Ok(Ok(true)) => Integrity::Ok,
        Ok(Ok(false)) => Integrity::Repaired,
        Ok(Err(e)) => Integrity::Damaged(e.to_string()),
        Err(p) => Integrity::Damaged(format!("redb panicked: {}", error::panic_message(&*p))),
    };
    let store = Store::open(path, node, StoreOptions { verify: false, ..options })?;
    let mut report = store.verify_contents();
    report.integrity = integrity;
    match store.table_sizes() {
        Ok(t) => report.tables = t,
        Err(e) => report.unreadable.push(format!("table sizes: {e}")),
    }
    Ok(report)
}

impl Store {
    /// Reads back every body and part and hashes it against its id, and
    /// recounts the index of body references (a store in use can run this;
    /// it sees one consistent commit).
    pub fn verify_contents(&self) -> VerifyReport {
        let mut report = VerifyReport {
            integrity: Integrity::Ok,
            bodies: 0,
            body_bytes: 0,
            parts: 0,
            damaged_bodies: Vec::new(),
            damaged_parts: Vec::new(),
            partial_bodies: 0,
            index: Vec::new(),
            unreadable: Vec::new(),
            tables: Vec::new(),
        };
        let txn = match self.run(|db| db.begin_read().map_err(st)) {
            Ok(t) => t,
            Err(e) => {
                report.unreadable.push(format!("the file: {e}"));
                return report;
            }
        };
        // The ids first (a damaged page stops the scan, not the check).
        let mut blob_ids = Vec::new();
        let mut part_ids = Vec::new();
        for (name, def, ids) in [("blobs", BLOBS, &mut blob_ids), ("parts", PARTS, &mut part_ids)] {
            let scan = guarded(|| {
                if let Some(t) = table(&txn, def)? {
                    for item in t.iter().map_err(st)? {
                        ids.push(BlobId(*item.map_err(st)?.0.value()));
                    }
                }
                Ok(())
            });
            if let Err(e) = scan {
                report.unreadable.push(format!("table {name} (after {} rows): {e}", ids.len()));
            }
        }
        let reader = self.bare_reader(txn);
        for id in blob_ids {
            report.bodies += 1;
            match reader.body(id) {
                Ok(b) => report.body_bytes += b.len() as u64,
                Err(StoreError::MissingBlob(_)) => report.partial_bodies += 1,
                Err(e) => report.damaged_bodies.push(Damage { id, what: e.to_string(), used_by: Vec::new() }),
            }
        }
        for id in part_ids {
            report.parts += 1;
            let check = reader.guard(|| {
                let t = table(&reader.txn, PARTS)?.ok_or(StoreError::MissingBlob(id))?;
                let v = t.get(&id.0).map_err(st)?.ok_or(StoreError::MissingBlob(id))?;
                let bytes = blob::unpack(v.value(), BODY_BYTES_MAX).map_err(|e| damaged("part", e))?;
                Ok(BlobId::of(&bytes) == id)
            });
            match check {
                Ok(true) => {}
                Ok(false) => report.damaged_parts.push(Damage {
                    id,
                    what: "its bytes do not hash to its id".into(),
                    used_by: Vec::new(),
                }),
                Err(e) => report.damaged_parts.push(Damage { id, what: e.to_string(), used_by: Vec::new() }),
            }
        }
        if !report.damaged_bodies.is_empty() {
            if let Err(e) = self.where_used(&reader, &mut report.damaged_bodies) {
                report.unreadable.push(format!("envelopes: {e}"));
            }
        }
        match self.check_blob_refs() {
            Ok(diffs) => report.index = diffs,
            Err(e) => report.unreadable.push(format!("table blob_refs: {e}")),
        }
        match self.check_change_index() {
            Ok(diffs) => report.index.extend(diffs),
            Err(e) => report.unreadable.push(format!("the change index: {e}")),
        }
        match self.check_forgotten() {
            Ok(diffs) => report.index.extend(diffs),
            Err(e) => report.unreadable.push(format!("rows of forgotten accounts: {e}")),
        }
        match self.check_sort_keys() {
            Ok(diffs) => report.index.extend(diffs),
            Err(e) => report.unreadable.push(format!("table sort_keys: {e}")),
        }
        report
    }

    /// Fills in which messages use each damaged body.
    fn where_used(&self, reader: &Reader, damage: &mut [Damage]) -> Result<(), StoreError> {
        let accounts: Vec<(String, Arc<Account>)> = {
            let map = self.accounts.read().unwrap_or_else(PoisonError::into_inner);
            map.iter().map(|(n, a)| (n.clone(), a.clone())).collect()
        };
        reader.guard(|| {
            let (Some(envelopes), Some(locs)) = (table(&reader.txn, ENVELOPES)?, table(&reader.txn, LOCS)?) else {
                return Ok(());
            };
            for item in envelopes.iter().map_err(st)? {
                let (k, v) = item.map_err(st)?;
                let env = decode_envelope(v.value()).map_err(|e| damaged("envelope", e))?;
                let Some(d) = damage.iter_mut().find(|d| d.id == env.blob) else { continue };
                let (number, _) = k.value();
                let Some((name, acct)) = accounts.iter().find(|(_, a)| a.number == number) else { continue };
                let names = acct.published.read().unwrap_or_else(PoisonError::into_inner).names.clone();
                let loc = locs.get(k.value()).map_err(st)?.map(|l| l.value());
                let mailbox = loc
                    .and_then(|(mb, _)| names.mailboxes.get(mb as usize).map(|m| m.0))
                    .and_then(|id| names.tree.name_of(id).map(str::to_string));
                d.used_by.push((name.clone(), mailbox, loc.map_or(0, |l| l.1)));
            }
            Ok(())
        })
    }
}
