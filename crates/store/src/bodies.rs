//! Bodies: content-addressed, shared by every account, large parts apart
//! ([`crate::blob`]).
//!
//! A body's id is the BLAKE3 of its bytes, so a read can tell damaged
//! bytes from good ones: a whole body ([`Reader::body`], [`Store::blob`],
//! [`Store::blob_for`]) is hashed as it is reassembled (BLAKE3 runs at
//! several GB/s, well above the zstd decompression it follows), and a
//! mismatch is [`StoreError::Corrupt`], counted
//! ([`Store::corrupt_reads`]) and remembered ([`Store::corrupt_blobs`]) so
//! that a good copy from a peer replaces it. Range reads verify the large
//! parts they touch; see [`Reader`] for which reads verify what.

use crate::*;
use backend::decode_envelope;
use blob::{BodyRecord, Piece};
use redb::ReadableDatabase;

/// A body as peers ship it (the same two forms as the sync protocol's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shipped {
    /// The raw message.
    Raw(Vec<u8>),
    /// A store's records of the message and of its large parts, as stored
    /// ([`crate::blob::encode_shipped`]): sent and kept as they are, so that
    /// neither side compresses them again. A receiving store decodes them
    /// and checks them against the id first.
    Packed(Vec<u8>),
}

/// One page of the bodies an account lacks ([`Store::missing_page`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MissingPage {
    /// Ids with the sizes their messages give, in id order.
    pub bodies: Vec<(BlobId, u64)>,
    /// Whether more lie beyond the page's last id.
    pub more: bool,
}

/// A body a message references that is not stored here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingBody {
    /// Its id.
    pub blob: BlobId,
    /// Full name of the mailbox the message is in, if visible.
    pub mailbox: Option<String>,
    /// Its UID there (0 while not placed).
    pub uid: u32,
    /// Its size.
    pub size: u64,
    /// Its internal date.
    pub internal_date: i64,
}

impl Store {
    /// A reader of bodies alone (no account: bodies are shared).
    pub(crate) fn bare_reader(&self, txn: redb::ReadTransaction) -> Reader {
        let names = starling_model::Names {
            replica_ids: Vec::new(),
            keywords: Vec::new(),
            mailboxes: Vec::new(),
            tree: Default::default(),
        };
        Reader::new(txn, 0, Arc::new(names), &self.core, self.node)
    }

    /// Whether a body is stored here.
    pub fn has_blob(&self, id: BlobId) -> Result<bool, StoreError> {
        self.run(|db| {
            let r = db.begin_read().map_err(st)?;
            match r.open_table(BLOBS) {
                Ok(t) => Ok(t.get(&id.0).map_err(st)?.is_some()),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
                Err(e) => Err(st(e)),
            }
        })
    }

    /// A body, reassembled and verified against its id (`None` if not
    /// stored here or a part is missing; [`StoreError::Corrupt`] if its
    /// bytes are damaged). Any account's: a peer must be answered with
    /// [`Store::blob_for`], which serves only its accounts' bodies.
    pub fn blob(&self, id: BlobId) -> Result<Option<Vec<u8>>, StoreError> {
        let reader = self.run(|db| Ok(self.bare_reader(db.begin_read().map_err(st)?)))?;
        match reader.body(id) {
            Ok(b) => Ok(Some(b)),
            Err(StoreError::MissingBlob(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Bodies that messages of `account` reference and whose bytes the
    /// account has not got (not stored here, or stored only for another
    /// account: see `crate::refs`) — after a snapshot, or ops whose bodies
    /// have not arrived. Read from the list the store keeps (O(missing), in
    /// id order).
    pub fn missing_blobs(&self, account: &str) -> Result<Vec<BlobId>, StoreError> {
        Ok(self.missing_sizes(account)?.into_iter().map(|(id, _)| id).collect())
    }

    /// [`Store::missing_blobs`] with the size the messages give each body.
    pub fn missing_sizes(&self, account: &str) -> Result<Vec<(BlobId, u64)>, StoreError> {
        let number = self.account(account)?.number;
        self.run(|db| refs::missing_of(&db.begin_read().map_err(st)?, number))
    }

    /// How many bodies `account` lacks ([`Store::missing_blobs`]), counted
    /// in the list the store keeps without holding it (O(missing) time,
    /// constant memory).
    pub fn missing_count(&self, account: &str) -> Result<u64, StoreError> {
        let number = self.account(account)?.number;
        self.run(|db| refs::missing_count(&db.begin_read().map_err(st)?, number))
    }

    /// At most `limit` of the bodies `account` lacks, with their sizes, in
    /// id order after `after`: what a sync asks for a page at a time, so
    /// its memory does not grow with the account. O(`limit`).
    pub fn missing_page(&self, account: &str, after: Option<BlobId>, limit: usize) -> Result<MissingPage, StoreError> {
        let number = self.account(account)?.number;
        self.run(|db| refs::missing_range(&db.begin_read().map_err(st)?, number, after, limit))
    }

    /// [`Store::missing_page`] of the bodies `keep` wants, judged by where
    /// each message is, its size and date (a partial replica's body
    /// policy). There is no index from body to message, so this scans the
    /// account's messages (O(messages) time), keeping the `limit` lowest
    /// ids after `after` (O(`limit`) memory).
    pub fn missing_page_where(
        &self,
        account: &str,
        after: Option<BlobId>,
        limit: usize,
        mut keep: impl FnMut(&MissingBody) -> bool,
    ) -> Result<MissingPage, StoreError> {
        let mut page = BTreeMap::new();
        let mut more = false;
        self.missing_each(account, |m| {
            if after.is_some_and(|a| m.blob <= a) || !keep(&m) {
                return;
            }
            page.insert(m.blob, m.size);
            if page.len() > limit {
                page.pop_last();
                more = true;
            }
        })?;
        Ok(MissingPage { bodies: page.into_iter().collect(), more })
    }

    /// Like [`Store::missing_blobs`], with where each message is and its
    /// size and date, so a partial replica can apply its body policy.
    /// Scans the account's messages, unless none lacks its body. Holds
    /// every missing body: for tests and tools; a sync asks
    /// [`Store::missing_page_where`].
    pub fn missing_bodies(&self, account: &str) -> Result<Vec<MissingBody>, StoreError> {
        let mut out = Vec::new();
        self.missing_each(account, |m| out.push(m))?;
        Ok(out)
    }

    /// Calls `f` with each of `account`'s messages whose body it lacks.
    fn missing_each(&self, account: &str, mut f: impl FnMut(MissingBody)) -> Result<(), StoreError> {
        if self.missing_count(account)? == 0 {
            return Ok(());
        }
        let acct = self.account(account)?;
        let number = acct.number;
        self.core.missing_scans.fetch_add(1, Ordering::Relaxed);
        self.run(|db| {
            let (r, published) = self.view(&acct, db)?;
            let names = &published.names;
            // No envelope table: no message. No blob table: no body yet, so
            // every message's body is missing (not none of them).
            let (Some(envelopes), Some(locs)) = (table(&r, backend::ENVELOPES)?, table(&r, backend::LOCS)?) else {
                return Ok(());
            };
            for item in envelopes.range((number, 0)..=(number, u64::MAX)).map_err(st)? {
                let (k, v) = item.map_err(st)?;
                let env = decode_envelope(v.value()).map_err(|e| damaged("envelope", e))?;
                if !refs::lacks(&r, number, env.blob)? {
                    continue;
                }
                let loc = locs.get(k.value()).map_err(st)?.map(|l| l.value());
                let mailbox = loc
                    .and_then(|(mb, _)| names.mailboxes.get(mb as usize).map(|m| m.0))
                    .and_then(|id| names.tree.name_of(id).map(str::to_string));
                let uid = loc.map_or(0, |(_, uid)| uid);
                f(MissingBody { blob: env.blob, mailbox, uid, size: env.size, internal_date: env.internal_date });
            }
            Ok(())
        })
    }

    /// Stores a body, in its own durable transaction, as got for every
    /// account that names it: for a caller trusted with every account (an
    /// operator's tool, tests); bodies from a peer go through
    /// [`Store::put_shipped`]. A copy found damaged since open
    /// ([`Store::corrupt_blobs`]) is replaced.
    pub fn put_blob(&self, raw: &[u8]) -> Result<BlobId, StoreError> {
        Ok(self.put_blobs(&[raw])?[0])
    }

    /// Stores bodies received from a peer in one durable transaction (one
    /// fsync). A raw body must have been checked against its id (the
    /// session does); a body in stored form is decoded and checked here,
    /// before the transaction, and one that does not decode or match its id
    /// fails the whole call with [`StoreError::BadBody`] (nothing is
    /// stored: the peer sent garbage). A body in stored form is kept as it
    /// came (its record and its parts' records), unless it came whole and
    /// is large enough that this store would split parts out of it.
    ///
    /// The bodies count as got (see `crate::refs`) for `accounts` only:
    /// those the sending peer is pinned for.
    pub fn put_shipped(&self, accounts: &[&str], bodies: Vec<(BlobId, Shipped)>) -> Result<(), StoreError> {
        let numbers: Vec<u32> = {
            let map = self.accounts.read().unwrap_or_else(PoisonError::into_inner);
            accounts.iter().filter_map(|a| map.get(*a).map(|acct| acct.number)).collect()
        };
        let threshold = self.options.part_threshold;
        let size = |(_, b): &(BlobId, Shipped)| match b {
            Shipped::Raw(b) | Shipped::Packed(b) => b.len(),
        };
        let prepared = prepare_all(&bodies, size, |(id, body)| match body {
            Shipped::Raw(raw) => Ok(Prepared::of_raw(raw, threshold)),
            Shipped::Packed(shipped) => Prepared::of_shipped(*id, shipped, threshold)
                .map_err(|reason| StoreError::BadBody { blob: *id, reason }),
        })
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
        let mut repaired = Vec::new();
        self.run(|db| {
            let w = db.begin_write().map_err(st)?;
            for body in &prepared {
                body.write(&w, &self.core, &mut repaired)?;
            }
            refs::settle(&w, prepared.iter().map(Prepared::id), Some(&numbers))?;
            w.commit().map_err(st)
        })?;
        self.core.db.committed();
        self.core.repaired(&repaired);
        // Bodies arrived: a FETCH waiting for one runs again.
        for a in accounts {
            self.committed(a);
        }
        Ok(())
    }

    /// Raw bodies made ready to store ([`Batch::put_prepared`],
    /// [`Batch::append_prepared`]) before the write transaction, on several
    /// threads: the transaction then only writes rows.
    pub fn prepare_bodies(&self, raws: &[&[u8]]) -> Vec<Prepared<'static>> {
        let threshold = self.options.part_threshold;
        prepare_all(raws, |raw| raw.len(), |raw| Prepared::of_raw(raw, threshold))
    }

    /// Stores several bodies in one durable transaction (one fsync), as
    /// [`Store::put_blob`].
    pub fn put_blobs(&self, raws: &[&[u8]]) -> Result<Vec<BlobId>, StoreError> {
        let prepared = self.prepare_bodies(raws);
        let ids: Vec<BlobId> = prepared.iter().map(Prepared::id).collect();
        let mut repaired = Vec::new();
        self.run(|db| {
            let w = db.begin_write().map_err(st)?;
            for body in &prepared {
                body.write(&w, &self.core, &mut repaired)?;
            }
            refs::settle(&w, ids.iter().copied(), None)?;
            w.commit().map_err(st)
        })?;
        self.core.db.committed();
        self.core.repaired(&repaired);
        Ok(ids)
    }
}

impl Reader {
    /// The stored record of a body, as stored (packed).
    /// Through an account's reader, a body the account has not got (see
    /// `crate::refs`) is missing even if stored here for another account.
    fn stored_record(&self, id: BlobId) -> Result<redb::AccessGuard<'static, &'static [u8]>, StoreError> {
        self.core.body_reads.fetch_add(1, Ordering::Relaxed);
        if self.account != 0 && refs::lacks(&self.txn, self.account, id)? {
            return Err(StoreError::MissingBlob(id));
        }
        let t = self.table(BLOBS)?.ok_or(StoreError::MissingBlob(id))?;
        t.get(&id.0).map_err(st)?.ok_or(StoreError::MissingBlob(id))
    }

    /// A body's record, checked: it decodes and its pieces add up to its length.
    fn record(&self, id: BlobId) -> Result<BodyRecord, StoreError> {
        let v = self.stored_record(id)?;
        blob::unpack_record(v.value(), BODY_BYTES_MAX).map_err(|_| self.core.found_corrupt(id))
    }

    /// A body in the form to ship to a peer ([`Shipped::Packed`]): its
    /// record and its large parts' records as stored, so nothing is
    /// compressed again, here or at the peer. Verified against its id
    /// first, as [`Reader::body`]; [`StoreError::MissingBlob`] if a part
    /// is not here (partial replication).
    pub fn body_shipped(&self, id: BlobId) -> Result<Shipped, StoreError> {
        self.guard(|| {
            let stored = self.stored_record(id)?;
            let record =
                blob::unpack_record(stored.value(), BODY_BYTES_MAX).map_err(|_| self.core.found_corrupt(id))?;
            let pids = blob::part_ids(&record);
            let mut parts = Vec::with_capacity(pids.len());
            if !pids.is_empty() {
                let t = self.table(PARTS)?.ok_or(StoreError::MissingBlob(pids[0]))?;
                for pid in pids {
                    parts.push(t.get(&pid.0).map_err(st)?.ok_or(StoreError::MissingBlob(pid))?);
                }
            }
            let slices: Vec<&[u8]> = parts.iter().map(|g| g.value()).collect();
            blob::check_whole(id, &record, &slices).map_err(|_| self.core.found_corrupt(id))?;
            Ok(Shipped::Packed(blob::encode_shipped(stored.value(), &slices)))
        })
    }

    /// Length of a stored body (not verified).
    pub fn body_len(&self, id: BlobId) -> Result<u64, StoreError> {
        self.guard(|| Ok(self.record(id)?.len))
    }

    /// The first `n` bytes of a body (all of it if shorter), decompressing
    /// only what they need when they can (the header of a message). Not
    /// verified when answered from the record's start; otherwise as
    /// [`Reader::body_range`].
    pub fn body_prefix(&self, id: BlobId, n: usize) -> Result<Vec<u8>, StoreError> {
        let prefix = self.guard(|| Ok(blob::inline_prefix(self.stored_record(id)?.value(), n)))?;
        match prefix {
            Some(bytes) => Ok(bytes),
            None => self.body_range(id, 0, n as u64),
        }
    }

    /// A message's header block, when its record keeps it apart (bodies
    /// stored since format 2): only the header is decompressed. Not verified.
    pub fn body_header(&self, id: BlobId) -> Result<Option<Vec<u8>>, StoreError> {
        self.guard(|| Ok(blob::record_header(self.stored_record(id)?.value())))
    }

    /// A whole body, reassembled byte-exact and verified: its BLAKE3 must
    /// be its id, else [`StoreError::Corrupt`].
    pub fn body(&self, id: BlobId) -> Result<Vec<u8>, StoreError> {
        self.guard(|| {
            let record = self.record(id)?;
            let out = self.assemble(id, &record, 0, record.len, false)?;
            if BlobId::of(&out) != id {
                return Err(self.core.found_corrupt(id));
            }
            Ok(out)
        })
    }

    /// `len` bytes of a body from `offset` (clamped to its end). Reads only
    /// the pieces the range touches; a large part left out by partial
    /// replication fails with [`StoreError::MissingBlob`] only if touched.
    /// A range that covers the whole body is verified as [`Reader::body`];
    /// otherwise each large part it touches is verified against its own id
    /// (the inline bytes around them are not).
    pub fn body_range(&self, id: BlobId, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.guard(|| {
            let record = self.record(id)?;
            if offset == 0 && len >= record.len {
                drop(record);
                return self.body(id);
            }
            self.assemble(id, &record, offset, len, true)
        })
    }

    /// The bytes of body `id` (described by `record`) from `offset`, at
    /// most `len`; with `check_parts`, each part read is hashed against its id.
    fn assemble(
        &self,
        id: BlobId,
        record: &BodyRecord,
        offset: u64,
        len: u64,
        check_parts: bool,
    ) -> Result<Vec<u8>, StoreError> {
        let end = offset.saturating_add(len).min(record.len);
        let mut out = Vec::with_capacity(end.saturating_sub(offset).min(BODY_BYTES_MAX as u64) as usize);
        let mut at = 0u64;
        for piece in &record.pieces {
            let piece_len = match piece {
                Piece::Inline(b) => b.len() as u64,
                Piece::Part { len, .. } => *len,
            };
            let (s, e) = (at.max(offset), (at + piece_len).min(end));
            if s < e {
                let (from, to) = ((s - at) as usize, (e - at) as usize);
                match piece {
                    Piece::Inline(b) => out.extend_from_slice(&b[from..to]),
                    Piece::Part { id: pid, .. } => {
                        let t = self.table(PARTS)?.ok_or(StoreError::MissingBlob(*pid))?;
                        let v = t.get(&pid.0).map_err(st)?.ok_or(StoreError::MissingBlob(*pid))?;
                        let bytes = blob::unpack(v.value(), BODY_BYTES_MAX).map_err(|_| self.core.found_corrupt(id))?;
                        // Pair the write-time check: the part is what the
                        // record says (a damaged one is the body's damage).
                        if bytes.len() as u64 != piece_len || check_parts && BlobId::of(&bytes) != *pid {
                            return Err(self.core.found_corrupt(id));
                        }
                        out.extend_from_slice(&bytes[from..to]);
                    }
                }
            }
            at += piece_len;
        }
        Ok(out)
    }
}
