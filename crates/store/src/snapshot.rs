//! Catch-up by state: an account's replicated state plus the log tail above
//! the sender's floor, written and installed as a stream.
//!
//! A snapshot is a format byte, then one zstd stream of records, each a
//! little-endian `u32` length and that many bytes of postcard: the model's
//! head ([`starling_model::snapshot::SnapHead`]), its parts (per mailbox:
//! its fields, pages of messages by UID, pages of claims), the sender's log
//! floor, the log tail above it a segment at a time, and an end mark.
//! Writing reads the account a page at a time; installing applies each
//! record as it is read, in one transaction. Neither holds the account's
//! messages in memory: a record is about 1 MiB but the head, and at most
//! [`RECORD_BYTES_MAX`].

use crate::*;
use redb::ReadableDatabase;
use starling_model::snapshot::{InstallError, Pager, Part, SnapHead};
use starling_model::VersionVector;
use std::io::{Read, Write};

/// Format byte of a snapshot written by this code (1: one postcard value,
/// compressed whole, before the stream).
const SNAPSHOT_FORMAT: u8 = 2;

/// Messages or claims per part written.
const PART_PAGE: usize = 1024;

/// Largest record accepted. Parts and tail records are cut at about 1 MiB
/// ([`starling_model::snapshot::PART_BYTES`]); the head carries the whole
/// account document.
pub const RECORD_BYTES_MAX: usize = 64 << 20;

/// Largest decompressed snapshot accepted (counted as it is read).
pub const SNAPSHOT_BYTES_MAX: u64 = 64 << 30;

/// Largest zstd window a snapshot may use (8 MiB).
const WINDOW_LOG_MAX: u32 = 23;

/// Where an install reads the snapshot from.
pub(crate) enum Input<'i> {
    /// Any reader.
    Reader(Box<dyn Read + 'i>),
    /// The parts spooled from this peer ([`crate::spool`]).
    Spool(u64),
}

/// One record of the stream, in this order: `Head`, `Part`s, `Floor`,
/// `Tail`s, `End`.
#[derive(serde::Serialize, serde::Deserialize)]
enum Record {
    Head(SnapHead),
    Part(Part),
    Floor(VersionVector),
    Tail(Vec<oplog::Logged>),
    End,
}

fn bad(e: impl std::fmt::Display) -> StoreError {
    StoreError::Snapshot(e.to_string())
}

fn put(out: &mut impl Write, record: &Record) -> Result<(), StoreError> {
    let bytes = postcard::to_stdvec(record).map_err(bad)?;
    // The writer keeps to what the reader takes (only a head whose account
    // document alone passes the bound can fail here).
    if bytes.len() > RECORD_BYTES_MAX {
        return Err(bad(format_args!("a record of {} bytes to write (at most {RECORD_BYTES_MAX})", bytes.len())));
    }
    out.write_all(&(bytes.len() as u32).to_le_bytes()).map_err(|e| bad(format_args!("writing: {e}")))?;
    out.write_all(&bytes).map_err(|e| bad(format_args!("writing: {e}")))
}

/// Reads records one at a time into one buffer.
struct Records<R> {
    input: std::io::Take<R>,
    buf: Vec<u8>,
}

impl<R: Read> Records<R> {
    fn next(&mut self) -> Result<Record, StoreError> {
        let mut len = [0u8; 4];
        self.read(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > RECORD_BYTES_MAX {
            return Err(bad(format_args!("a record of {len} bytes (at most {RECORD_BYTES_MAX})")));
        }
        self.buf.resize(len, 0);
        let mut buf = std::mem::take(&mut self.buf);
        let read = self.read(&mut buf);
        self.buf = buf;
        read?;
        postcard::from_bytes(&self.buf).map_err(bad)
    }

    fn read(&mut self, into: &mut [u8]) -> Result<(), StoreError> {
        self.input.read_exact(into).map_err(|e| match self.input.limit() {
            0 => bad(format_args!("more than {SNAPSHOT_BYTES_MAX} bytes")),
            _ => bad(format_args!("truncated or damaged: {e}")),
        })
    }
}

/// A snapshot made to be sent a part at a time ([`Store::snapshot_copy`]):
/// in a file of its own beside the store's (unlinked from the start; or,
/// when [`Store::snapshot_to_send`] keeps it to resume a transfer, named,
/// [`crate::outgoing`]); in memory for a store on another backend (the
/// simulator's).
#[derive(Debug)]
pub struct SnapshotCopy {
    held: Held,
    len: u64,
    covers: VersionVector,
}

#[derive(Debug)]
enum Held {
    File(std::fs::File),
    Memory(Vec<u8>),
}

impl SnapshotCopy {
    /// The copy in `file`, of `len` bytes, covering `covers`.
    pub(crate) fn from_file(file: std::fs::File, len: u64, covers: VersionVector) -> SnapshotCopy {
        SnapshotCopy { held: Held::File(file), len, covers }
    }

    /// Its length in bytes (at least one).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds nothing (never: a snapshot has its format byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The version of the state it holds.
    pub fn covers(&self) -> &VersionVector {
        &self.covers
    }

    /// `len` bytes from `offset` (which must lie within the copy).
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        assert!(offset.checked_add(len as u64).is_some_and(|end| end <= self.len), "a read past the copy's end");
        match &self.held {
            Held::File(f) => {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0; len];
                f.read_exact_at(&mut buf, offset).map_err(io_error)?;
                Ok(buf)
            }
            Held::Memory(bytes) => Ok(bytes[offset as usize..offset as usize + len].to_vec()),
        }
    }
}

/// Snapshots kept for resuming ([`Store::snapshot_to_send`]), at most, over
/// every peer and account: each is a file the size of its snapshot, kept
/// over a restart ([`crate::outgoing`]).
pub const SNAPSHOTS_KEPT: usize = 4;

/// A snapshot to send to a peer ([`Store::snapshot_to_send`]).
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Its name on the wire: the same for the same copy in a later session.
    pub id: u64,
    /// The copy to read parts from.
    pub copy: Arc<SnapshotCopy>,
    /// Where to start: 0, or where the peer holds it up to.
    pub from: u64,
}

/// A snapshot being sent to `peer`, kept for a later session.
#[derive(Debug)]
pub(crate) struct Kept {
    pub(crate) peer: u64,
    pub(crate) account: String,
    pub(crate) id: u64,
    pub(crate) copy: Arc<SnapshotCopy>,
    /// Its file, for a store on a file ([`crate::outgoing`]).
    pub(crate) path: Option<std::path::PathBuf>,
}

impl Kept {
    /// Deletes its files (the copy stays readable while a session holds it).
    fn forget(&self) {
        if let Some(p) = &self.path {
            crate::outgoing::forget(p);
        }
    }
}

/// Takes the copies kept for `account` (for `peer` only, if given) out of
/// `kept`, their files with them.
fn drop_kept(kept: &mut std::collections::VecDeque<Kept>, peer: Option<u64>, account: &str) {
    kept.retain(|k| {
        let same = peer.is_none_or(|p| k.peer == p) && k.account == account;
        if same {
            k.forget();
        }
        !same
    });
}

fn io_error(e: std::io::Error) -> StoreError {
    crate::error::file_error("snapshot copy", e)
}

impl Store {
    /// The account's whole replicated state, for a peer that is new or
    /// behind the compacted log ([`starling_model::snapshot`]), in memory.
    pub fn snapshot(&self, account: &str) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        self.write_snapshot(account, &mut out)?;
        Ok(out)
    }

    /// [`Store::snapshot`], written beside the store's file (see
    /// [`SnapshotCopy`]), to be read back a part at a time: what a snapshot
    /// costs the sender in memory does not grow with the account.
    pub fn snapshot_copy(&self, account: &str) -> Result<SnapshotCopy, StoreError> {
        let Some(dir) = &self.dir else {
            let mut bytes = Vec::new();
            let covers = self.write_snapshot(account, &mut bytes)?;
            return Ok(SnapshotCopy { len: bytes.len() as u64, held: Held::Memory(bytes), covers });
        };
        let file = tempfile::tempfile_in(dir).map_err(io_error)?;
        let (covers, len) = self.write_snapshot_into(account, &file)?;
        Ok(SnapshotCopy::from_file(file, len, covers))
    }

    /// [`Store::write_snapshot`] into `file` through a 1 MiB buffer: the
    /// version it covers and the file's length.
    fn write_snapshot_into(&self, account: &str, file: &std::fs::File) -> Result<(VersionVector, u64), StoreError> {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let covers = self.write_snapshot(account, &mut out)?;
        out.flush().map_err(io_error)?;
        drop(out);
        Ok((covers, file.metadata().map_err(io_error)?.len()))
    }

    /// The snapshot of `account` to send to `peer` (its replica id): the
    /// one kept for it from a session that broke off (in this process or
    /// before a restart), from where the peer holds it, if `held` (the id,
    /// length and bytes held that the peer said) names that one; else a new
    /// copy, from the start. It is kept until the peer took it whole
    /// ([`Store::snapshot_sent`]) or [`SNAPSHOTS_KEPT`] newer ones pushed it
    /// out.
    pub fn snapshot_to_send(
        &self,
        account: &str,
        peer: u64,
        held: Option<(u64, u64, u64)>,
    ) -> Result<Outgoing, StoreError> {
        {
            let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(i) = kept.iter().position(|k| k.peer == peer && k.account == account) {
                let k = &kept[i];
                if let Some((id, _, got)) = held.filter(|h| h.0 == k.id && h.1 == k.copy.len() && h.2 < h.1) {
                    return Ok(Outgoing { id, copy: k.copy.clone(), from: got });
                }
                kept.remove(i).expect("found").forget();
            }
        }
        let made = self.snapshots_made.fetch_add(1, Ordering::Relaxed);
        let mut h = blake3::Hasher::new();
        h.update(&self.node.0.to_le_bytes()).update(&made.to_le_bytes()).update(account.as_bytes());
        let id = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
        // Made without the lock: it takes seconds at a million messages.
        let (copy, path) = match &self.kept_dir {
            None => (self.snapshot_copy(account)?, None),
            Some(dir) => {
                let tmp = crate::outgoing::create(dir)?;
                let (covers, len) = self.write_snapshot_into(account, tmp.as_file())?;
                let (file, path) = crate::outgoing::persist(dir, tmp, peer, id, (account, &covers, len))?;
                (SnapshotCopy::from_file(file, len, covers), Some(path))
            }
        };
        let copy = Arc::new(copy);
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        drop_kept(&mut kept, Some(peer), account);
        kept.push_back(Kept { peer, account: account.to_string(), id, copy: copy.clone(), path });
        while kept.len() > SNAPSHOTS_KEPT {
            kept.pop_front().expect("over the bound").forget();
        }
        Ok(Outgoing { id, copy, from: 0 })
    }

    /// `peer` took the whole of the snapshot of `account` it was sent: its
    /// copy goes.
    pub fn snapshot_sent(&self, account: &str, peer: u64) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        drop_kept(&mut kept, Some(peer), account);
    }

    /// `account` was forgotten: every copy kept of it goes, files too (a
    /// session sending one reads on from the open file).
    pub(crate) fn forget_kept(&self, account: &str) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        drop_kept(&mut kept, None, account);
    }

    /// The snapshots kept to resume transfers: (peer, account, id, length),
    /// oldest first.
    pub fn snapshots_kept(&self) -> Vec<(u64, String, u64, u64)> {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.iter().map(|k| (k.peer, k.account.clone(), k.id, k.copy.len())).collect()
    }

    /// [`Store::snapshot`], written to `out` as it is made; returns the
    /// version of the state written.
    pub fn write_snapshot(&self, account: &str, mut out: impl Write) -> Result<VersionVector, StoreError> {
        out.write_all(&[SNAPSHOT_FORMAT]).map_err(|e| bad(format_args!("writing: {e}")))?;
        let mut z = zstd::stream::write::Encoder::new(out, 1).map_err(bad)?;
        let acct = self.account(account)?;
        let vv = self.run(|db| {
            // The state as of the account's last commit: its small part
            // copied and a read transaction begun under the account's lock,
            // which goes before a single part is written. The parts and the
            // log tail come from that transaction while writers go on, of
            // this account as of any other.
            let (view, txn) = {
                let mut state = self.lock(&acct, db)?;
                (state.export_view(), db.begin_read().map_err(st)?)
            };
            // As for any read view: `gone` is set before the forgetting
            // commit, so not set now means the transaction sees it whole.
            if acct.gone.load(Ordering::SeqCst) {
                return Err(StoreError::NoSuchAccount(acct.name.to_string()));
            }
            let vv = view.head().vv.clone();
            put(&mut z, &Record::Head(view.head().clone()))?;
            view.parts(&backend::RedbView::new(&txn, acct.number)?, PART_PAGE, |p| put(&mut z, &Record::Part(p)))?;
            // The log tail from this node's floor up to the state, so that
            // the receiver can serve every peer this node can (its floor is
            // ours).
            let floor = self.log_floor(&txn, acct.number)?;
            let ranges: Vec<(u64, u64, u64)> = vv
                .iter()
                .filter(|(replica, last)| floor.get(*replica) < *last)
                .map(|(replica, last)| (replica.0, floor.get(replica) + 1, last))
                .collect();
            put(&mut z, &Record::Floor(floor))?;
            // A segment is cut where its ops pass PART_BYTES (an account
            // op may carry a change of up to 1 MiB).
            oplog::for_each_logged(&txn, acct.number, &ranges, |chunk| {
                let mut tail = Pager::new(usize::MAX);
                for logged in chunk {
                    if let Some(part) = tail.push(logged) {
                        put(&mut z, &Record::Tail(part))?;
                    }
                }
                match tail.take() {
                    Some(part) => put(&mut z, &Record::Tail(part)),
                    None => Ok(()),
                }
            })?;
            Ok(vv)
        })?;
        put(&mut z, &Record::End)?;
        z.finish().map_err(|e| bad(format_args!("writing: {e}")))?;
        Ok(vv)
    }

    /// Installs a snapshot made by [`Store::snapshot`] from memory.
    pub fn install_snapshot(&self, account: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.install_snapshot_from(account, bytes)
    }

    /// Installs a snapshot made by [`Store::write_snapshot`], read from
    /// `input` a record at a time, in one transaction: its state (see
    /// [`starling_model::Replica::import_begin`]: it must hold every op this
    /// account applied, or [`StoreError::SnapshotOlder`] and nothing
    /// changes), and the sender's log tail above the sender's floor. The log
    /// stays able to serve every op above the new floor: per replica, this
    /// node's own log goes on into the tail where they meet (the floor stays
    /// ours, lower); where the tail starts above what this node held, the
    /// sender's floor is taken and this node's older ops of that replica
    /// leave the log (their effect is in the state). A snapshot that is
    /// truncated, damaged or contradicts itself changes nothing.
    pub fn install_snapshot_from(&self, account: &str, input: impl Read) -> Result<(), StoreError> {
        self.install_with(account, Input::Reader(Box::new(input)))
    }

    /// The install of [`Store::install_snapshot_from`], from a reader or
    /// from a spool (deleted in the same transaction).
    pub(crate) fn install_with(&self, account: &str, input: Input<'_>) -> Result<(), StoreError> {
        let installed = |e: InstallError| match e {
            InstallError::Older => StoreError::SnapshotOlder,
            InstallError::Storage(e) => e.into(),
            e => StoreError::Snapshot(e.to_string()),
        };
        self.write(account, |b| {
            let (mut input, spool): (Box<dyn Read + '_>, _) = match input {
                Input::Reader(r) => (r, None),
                Input::Spool(spool) => (Box::new(spool::reader(b.txn, account, spool)), Some(spool)),
            };
            let mut format = [0u8; 1];
            input.read_exact(&mut format).map_err(|e| bad(format_args!("truncated: {e}")))?;
            if format[0] != SNAPSHOT_FORMAT {
                return Err(bad(format_args!("snapshot format {}", format[0])));
            }
            let mut z = zstd::stream::read::Decoder::new(input).map_err(bad)?;
            // The sender compresses at level 1 (a window of 512 KiB); a larger
            // window a hostile stream asks for is refused, not allocated.
            z.window_log_max(WINDOW_LOG_MAX).map_err(bad)?;
            let mut records = Records { input: z.take(SNAPSHOT_BYTES_MAX), buf: Vec::new() };
            b.any_mailbox = true;
            let held = b.replica.version().clone();
            let Record::Head(head) = records.next()? else { return Err(bad("no head")) };
            let vv = head.vv.clone();
            let mut import = b.replica.import_begin(head).map_err(installed)?;
            let theirs = loop {
                match records.next()? {
                    Record::Part(p) => b.replica.import_part(&mut import, p).map_err(installed)?,
                    Record::Floor(floor) => break floor,
                    _ => return Err(bad("a record out of order")),
                }
            };
            b.replica.import_end(import).map_err(installed)?;
            let mut floor = Store::log_floor_in(b.txn, b.number)?;
            let mut gone = VersionVector::new();
            for (replica, last) in theirs.iter() {
                if held.get(replica) < last {
                    gone.observe(starling_model::Dot::new(replica, held.get(replica)));
                    floor.observe(starling_model::Dot::new(replica, last));
                }
            }
            // This node's ops of those replicas end below the tail: out.
            let mut dropped_to = VersionVector::new();
            oplog::compact(b.txn, b.number, &gone, &mut dropped_to)?;
            loop {
                match records.next()? {
                    Record::Tail(chunk) => {
                        // The tail must be the state's own ops above the floor, nothing else.
                        if chunk.iter().any(|(op, _)| !vv.contains(op.dot) || theirs.contains(op.dot)) {
                            return Err(bad("log tail outside the snapshot"));
                        }
                        let new = chunk
                            .into_iter()
                            .filter(|(op, _)| !held.contains(op.dot))
                            .map(|(op, mbs)| starling_model::AppliedOp { op, mailboxes: mbs.into() });
                        oplog::append(b.txn, b.number, new.collect())?;
                    }
                    Record::End => break,
                    _ => return Err(bad("a record out of order")),
                }
            }
            let floor = postcard::to_stdvec(&floor).map_err(|e| StoreError::Storage(e.to_string()))?;
            b.txn.open_table(LOG_FLOOR).map_err(st)?.insert(b.number, floor.as_slice()).map_err(st)?;
            match spool {
                Some(spool) => spool::drop_rows(b.txn, account, spool),
                None => Ok(()),
            }
        })
    }
}
