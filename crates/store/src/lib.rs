//! Starling's durable store, on redb: every change of every account lands here,
//! local or remote, through one path ([`Store::write`] running the model's
//! [`Replica::apply`]) inside one write transaction that appends the applied
//! ops to the op log, updates the materialized state and the IMAP view
//! (UIDs, keywords, MODSEQ, HIGHESTMODSEQ, VANISHED), saves the replica's
//! small state, and commits durably. Bodies are content-addressed blobs with
//! large MIME parts apart ([`blob`]). Maildir import and export live in
//! [`maildir`].
//!
//! It must not speak IMAP or touch the network: servers and sync call it.

#![deny(missing_docs)]

pub mod backend;
pub mod blob;
pub mod maildir;
pub mod memdisk;
pub mod oplog;

use backend::{decode_envelope, decode_slot, Detached, RedbBackend};
use blob::{BodyRecord, Piece};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use starling_model::backend::Envelope;
use starling_model::{BlobId, Keyword, MailboxId, MessageId, Names, Op, Replica, ReplicaId, VersionVector};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const ACCOUNTS: TableDefinition<&str, u32> = TableDefinition::new("accounts");
const HEADERS: TableDefinition<u32, &[u8]> = TableDefinition::new("replica_headers");
const DOCS: TableDefinition<u32, &[u8]> = TableDefinition::new("account_docs");
/// account → version vector of ops folded away (compacted) from the log.
const LOG_FLOOR: TableDefinition<u32, &[u8]> = TableDefinition::new("log_floor");
const BLOBS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blobs");
const PARTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("parts");
/// account → password hash (PHC string). Local to this node: not replicated.
const CREDENTIALS: TableDefinition<&str, &str> = TableDefinition::new("credentials");

const MAGIC: &[u8] = b"starling-store";
const FORMAT_VERSION: u8 = 1;

/// What [`Store::snapshot`] produces: the replicated state, and the log
/// above the sender's floor.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotFile {
    format: u8,
    state: starling_model::snapshot::StateSnapshot,
    floor: VersionVector,
    tail: Vec<oplog::Logged>,
}

const SNAPSHOT_FORMAT: u8 = 1;

/// Largest decompressed snapshot accepted.
pub const SNAPSHOT_BYTES_MAX: usize = 4 << 30;

/// Largest body or part the store reads back (bounds decompression).
pub const BODY_BYTES_MAX: usize = 1 << 30;

/// Default size above which a MIME part is stored as a blob of its own.
pub const PART_THRESHOLD_DEFAULT: usize = 256 * 1024;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file is not a redb database (or is damaged beyond repair).
    #[error("{path} is not a Starling store: {reason}")]
    NotAStore {
        /// The file.
        path: String,
        /// What redb said.
        reason: String,
    },
    /// A redb database, but not one of ours.
    #[error("{0} is a database of another program")]
    Foreign(String),
    /// Ours, but from a newer version.
    #[error("store format {found} is not supported (this build reads {FORMAT_VERSION})")]
    Version {
        /// Found in the file.
        found: u8,
    },
    /// The store belongs to another node.
    #[error("store belongs to node {found:?}, this node is {expected:?}")]
    WrongNode {
        /// This node.
        expected: ReplicaId,
        /// The store's.
        found: ReplicaId,
    },
    /// A saved account could not be loaded.
    #[error("account {account}: {reason}")]
    Account {
        /// Its name.
        account: String,
        /// Why.
        reason: String,
    },
    /// The file could not be read or written.
    #[error("{0}")]
    Io(String),
}

/// Why a store operation failed. Nothing is committed when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No account of that name.
    #[error("no such account {0:?}")]
    NoSuchAccount(String),
    /// The account exists already.
    #[error("account {0:?} exists")]
    AccountExists(String),
    /// The model refused the change.
    #[error(transparent)]
    Local(#[from] starling_model::LocalError),
    /// The model could not apply an op.
    #[error(transparent)]
    Apply(#[from] starling_model::ApplyError),
    /// A body or part is not here (left out by partial replication).
    #[error("blob {0:?} not stored here")]
    MissingBlob(BlobId),
    /// The peer asked for ops the log no longer holds.
    #[error("log compacted past what the peer has; catch up by state")]
    Compacted,
    /// The op log lacks an op it should hold (a gap above the floor): the
    /// log is damaged; the peer should catch up from another node.
    #[error("op log has no op {counter} of replica {replica:#x} above its floor")]
    LogGap {
        /// The replica.
        replica: u64,
        /// The missing counter.
        counter: u64,
    },
    /// A snapshot could not be read or installed.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A failed batch left the account unusable until the store is reopened.
    #[error("account {0:?} must be reopened after a storage failure")]
    Poisoned(String),
    /// redb failed (I/O, disk full, corruption).
    #[error("storage: {0}")]
    Storage(String),
}

pub(crate) fn st<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// Options of a store.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// MIME parts above this many bytes are stored apart.
    pub part_threshold: usize,
    /// Check every page of the file on open (reads the whole file). redb
    /// recovers by itself from crashes; this catches a file damaged by
    /// something else (disk, another program), which a plain open trusts
    /// and may only notice, with a panic, when it reads the damaged page.
    pub verify: bool,
    /// redb's page cache, bytes. redb's default (1 GiB) let a node's memory
    /// grow with every page it read (a 10,000-message initial sync peaked
    /// at 268 MB on the sending node); this bounds it.
    pub cache_bytes: usize,
}

/// Default page cache: 64 MiB.
pub const CACHE_BYTES_DEFAULT: usize = 64 << 20;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { part_threshold: PART_THRESHOLD_DEFAULT, verify: false, cache_bytes: CACHE_BYTES_DEFAULT }
    }
}

struct Account {
    number: u32,
    replica: Replica<Detached>,
    /// Set when a failed batch could not be rolled back in memory (the file
    /// could not be re-read): the account refuses work until reopened.
    poisoned: bool,
}

/// The store: one redb file holding every account of this node.
pub struct Store {
    db: Database,
    node: ReplicaId,
    options: StoreOptions,
    accounts: Mutex<BTreeMap<String, Account>>,
}

/// Inside one write transaction of one account: the replica (all changes go
/// through it) and the blob store.
pub struct Batch<'a> {
    replica: Replica<RedbBackend<'a>>,
    txn: &'a redb::WriteTransaction,
    number: u32,
    part_threshold: usize,
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

    /// Stores a body (deduplicated) and returns its id.
    pub fn put_body(&mut self, raw: &[u8]) -> Result<BlobId, StoreError> {
        put_body(self.txn, raw, self.part_threshold)
    }

    /// Stores a body and appends it as a new message.
    pub fn append(
        &mut self,
        mailbox: MailboxId,
        raw: &[u8],
        internal_date: i64,
        flags: Vec<Keyword>,
    ) -> Result<MessageId, StoreError> {
        let blob = self.put_body(raw)?;
        Ok(self.replica.append(mailbox, blob, raw.len() as u64, internal_date, flags)?)
    }
}

/// Stores a body in `txn` (deduplicated): large MIME parts apart, packed.
fn put_body(txn: &redb::WriteTransaction, raw: &[u8], part_threshold: usize) -> Result<BlobId, StoreError> {
    let id = BlobId::of(raw);
    let mut blobs = txn.open_table(BLOBS).map_err(st)?;
    if blobs.get(&id.0).map_err(st)?.is_some() {
        return Ok(id);
    }
    let (record, parts) = blob::split(raw, part_threshold);
    let mut part_table = txn.open_table(PARTS).map_err(st)?;
    for (pid, bytes) in &parts {
        if part_table.get(&pid.0).map_err(st)?.is_none() {
            part_table.insert(&pid.0, blob::pack(bytes).as_slice()).map_err(st)?;
        }
    }
    let serialized = postcard::to_stdvec(&record).map_err(st)?;
    blobs.insert(&id.0, blob::pack_record(&record, &serialized).as_slice()).map_err(st)?;
    Ok(id)
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

/// One mailbox in [`Store::dump_view`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct MailboxDump {
    /// Full name.
    pub name: String,
    /// UIDVALIDITY.
    pub uidvalidity: u32,
    /// UIDNEXT.
    pub uidnext: u32,
    /// Subscribed.
    pub subscribed: bool,
    /// Special-use attribute.
    pub special_use: Option<&'static str>,
    /// Its messages by UID.
    pub messages: Vec<MessageDump>,
}

/// One message in [`Store::dump_view`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct MessageDump {
    /// UID.
    pub uid: u32,
    /// Message id.
    pub id: String,
    /// Keywords, sorted.
    pub flags: Vec<String>,
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

/// A consistent read view of one account (a redb read transaction).
pub struct Reader {
    txn: ReadTransaction,
    account: u32,
    names: Names,
}

fn open_db(path: &Path, verify: bool, cache_bytes: usize) -> Result<Database, OpenError> {
    let not_a_store =
        |e: &dyn std::fmt::Display| OpenError::NotAStore { path: path.display().to_string(), reason: e.to_string() };
    if path.exists() {
        match Database::builder().set_check_integrity_on_open(verify).set_cache_size(cache_bytes).open(path) {
            Ok(db) => Ok(db),
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                if matches!(e.kind(), std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound) =>
            {
                Err(OpenError::Io(format!("{}: {e}", path.display())))
            }
            Err(e) => Err(not_a_store(&e)),
        }
    } else {
        Database::builder().set_cache_size(cache_bytes).create(path).map_err(|e| OpenError::Io(e.to_string()))
    }
}

impl Store {
    /// Opens the store at `path` for node `node`, creating it if absent.
    pub fn open(path: &Path, node: ReplicaId, options: StoreOptions) -> Result<Store, OpenError> {
        // redb may panic on a page damaged outside it; an open must not.
        match std::panic::catch_unwind(|| Self::open_inner(path, node, options)) {
            Ok(r) => r,
            Err(_) => Err(OpenError::NotAStore {
                path: path.display().to_string(),
                reason: "damaged (a page could not be read); open it with verification to locate the damage".into(),
            }),
        }
    }

    /// Opens (or creates) a store on any redb storage backend: the simulator
    /// runs real stores on [`memdisk::MemDisk`]. `label` names it in errors.
    pub fn open_on(
        backend: impl redb::StorageBackend,
        label: &str,
        node: ReplicaId,
        options: StoreOptions,
    ) -> Result<Store, OpenError> {
        let db = Database::builder()
            .set_check_integrity_on_open(options.verify)
            .set_cache_size(options.cache_bytes)
            .create_with_backend(backend)
            .map_err(|e| OpenError::NotAStore { path: label.into(), reason: e.to_string() })?;
        Self::open_db_as(db, Path::new(label), node, options)
    }

    fn open_inner(path: &Path, node: ReplicaId, options: StoreOptions) -> Result<Store, OpenError> {
        let db = open_db(path, options.verify, options.cache_bytes)?;
        Self::open_db_as(db, path, node, options)
    }

    fn open_db_as(db: Database, path: &Path, node: ReplicaId, options: StoreOptions) -> Result<Store, OpenError> {
        let io = |e: &dyn std::fmt::Display| OpenError::Io(e.to_string());
        // A brand-new file gets our meta; an existing one must already have it.
        let fresh = {
            let r = db.begin_read().map_err(|e| io(&e))?;
            match r.open_table(META) {
                Ok(t) => {
                    t.get("magic").map_err(|e| io(&e))?.is_none() && r.list_tables().map_err(|e| io(&e))?.count() == 1
                }
                Err(redb::TableError::TableDoesNotExist(_)) => r.list_tables().map_err(|e| io(&e))?.count() == 0,
                Err(e) => return Err(io(&e)),
            }
        };
        if fresh {
            let w = db.begin_write().map_err(|e| io(&e))?;
            {
                let mut meta = w.open_table(META).map_err(|e| io(&e))?;
                meta.insert("magic", MAGIC).map_err(|e| io(&e))?;
                meta.insert("version", [FORMAT_VERSION].as_slice()).map_err(|e| io(&e))?;
                meta.insert("node", node.0.to_be_bytes().as_slice()).map_err(|e| io(&e))?;
            }
            w.commit().map_err(|e| io(&e))?;
        }
        let r = db.begin_read().map_err(|e| io(&e))?;
        let meta = r.open_table(META).map_err(|_| OpenError::Foreign(path.display().to_string()))?;
        let get = |k: &str| -> Result<Option<Vec<u8>>, OpenError> {
            Ok(meta.get(k).map_err(|e| io(&e))?.map(|g| g.value().to_vec()))
        };
        if get("magic")?.as_deref() != Some(MAGIC) {
            return Err(OpenError::Foreign(path.display().to_string()));
        }
        let version = get("version")?.and_then(|v| v.first().copied()).unwrap_or(0);
        if version != FORMAT_VERSION {
            return Err(OpenError::Version { found: version });
        }
        let found = get("node")?.and_then(|v| v.try_into().ok()).map(|b: [u8; 8]| ReplicaId(u64::from_be_bytes(b)));
        if found != Some(node) {
            return Err(OpenError::WrongNode { expected: node, found: found.unwrap_or(ReplicaId(0)) });
        }
        let mut accounts = BTreeMap::new();
        if let Ok(table) = r.open_table(ACCOUNTS) {
            let headers = r.open_table(HEADERS).map_err(|e| io(&e))?;
            let docs = r.open_table(DOCS).map_err(|e| io(&e))?;
            for item in table.iter().map_err(|e| io(&e))? {
                let (name, number) = item.map_err(|e| io(&e))?;
                let (name, number) = (name.value().to_string(), number.value());
                let fail = |reason: String| OpenError::Account { account: name.clone(), reason };
                let header = headers.get(number).map_err(|e| io(&e))?.ok_or_else(|| fail("header missing".into()))?;
                let doc = docs.get(number).map_err(|e| io(&e))?.ok_or_else(|| fail("document missing".into()))?;
                let mut replica =
                    Replica::open(node, Detached, header.value(), doc.value()).map_err(|e| fail(e.to_string()))?;
                replica.record_applied();
                accounts.insert(name, Account { number, replica, poisoned: false });
            }
        }
        drop(meta);
        drop(r);
        Ok(Store { db, node, options, accounts: Mutex::new(accounts) })
    }

    /// This node's replica id.
    pub fn node(&self) -> ReplicaId {
        self.node
    }

    /// Names of the accounts.
    pub fn accounts(&self) -> Vec<String> {
        self.accounts.lock().expect("accounts lock").keys().cloned().collect()
    }

    /// Creates an account with an empty replica (INBOX only).
    pub fn add_account(&self, name: &str) -> Result<(), StoreError> {
        let mut accounts = self.accounts.lock().expect("accounts lock");
        if accounts.contains_key(name) {
            return Err(StoreError::AccountExists(name.into()));
        }
        let number = accounts.values().map(|a| a.number + 1).max().unwrap_or(1);
        let mut replica = Replica::create(self.node, Detached);
        replica.record_applied();
        let w = self.db.begin_write().map_err(st)?;
        {
            w.open_table(ACCOUNTS).map_err(st)?.insert(name, number).map_err(st)?;
            w.open_table(HEADERS).map_err(st)?.insert(number, replica.header().as_slice()).map_err(st)?;
            w.open_table(DOCS).map_err(st)?.insert(number, replica.save_account().as_slice()).map_err(st)?;
        }
        w.commit().map_err(st)?;
        accounts.insert(name.into(), Account { number, replica, poisoned: false });
        Ok(())
    }

    /// Sets the password hash (a PHC string made by the caller) of an
    /// account, durably. Credentials are this node's own, never replicated.
    pub fn set_credential(&self, account: &str, hash: &str) -> Result<(), StoreError> {
        if !self.accounts.lock().expect("accounts lock").contains_key(account) {
            return Err(StoreError::NoSuchAccount(account.into()));
        }
        let w = self.db.begin_write().map_err(st)?;
        w.open_table(CREDENTIALS).map_err(st)?.insert(account, hash).map_err(st)?;
        w.commit().map_err(st)
    }

    /// The password hash of an account, if one was set.
    pub fn credential(&self, account: &str) -> Result<Option<String>, StoreError> {
        let r = self.db.begin_read().map_err(st)?;
        match r.open_table(CREDENTIALS) {
            Ok(t) => Ok(t.get(account).map_err(st)?.map(|g| g.value().to_string())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(st(e)),
        }
    }

    fn reload(&self, number: u32) -> Result<Replica<Detached>, StoreError> {
        let r = self.db.begin_read().map_err(st)?;
        let header = r
            .open_table(HEADERS)
            .map_err(st)?
            .get(number)
            .map_err(st)?
            .ok_or_else(|| st("header missing"))?
            .value()
            .to_vec();
        let doc = r
            .open_table(DOCS)
            .map_err(st)?
            .get(number)
            .map_err(st)?
            .ok_or_else(|| st("document missing"))?
            .value()
            .to_vec();
        let mut replica = Replica::open(self.node, Detached, &header, &doc).map_err(st)?;
        replica.record_applied();
        Ok(replica)
    }

    /// Runs `f` in one write transaction of `account` and commits it durably
    /// (fsync) if `f` succeeds. Everything `f` changes — ops applied, op log,
    /// state, bodies — commits together or not at all; on any error the
    /// account is reloaded from what was committed.
    pub fn write<T>(
        &self,
        account: &str,
        f: impl FnOnce(&mut Batch<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut accounts = self.accounts.lock().expect("accounts lock");
        let acct = accounts.get_mut(account).ok_or_else(|| StoreError::NoSuchAccount(account.into()))?;
        if acct.poisoned {
            return Err(StoreError::Poisoned(account.into()));
        }
        let number = acct.number;
        let detached = std::mem::replace(&mut acct.replica, Replica::create(self.node, Detached));
        match self.write_txn(number, detached, f) {
            Ok((value, replica)) => {
                acct.replica = replica;
                Ok(value)
            }
            Err(e) => {
                // The in-memory part may be ahead of the file: take it back from disk.
                match self.reload(number) {
                    Ok(r) => acct.replica = r,
                    Err(_) => acct.poisoned = true,
                }
                Err(e)
            }
        }
    }

    fn write_txn<T>(
        &self,
        number: u32,
        detached: Replica<Detached>,
        f: impl FnOnce(&mut Batch<'_>) -> Result<T, StoreError>,
    ) -> Result<(T, Replica<Detached>), StoreError> {
        let txn = self.db.begin_write().map_err(st)?;
        let (value, replica) = {
            let backend = RedbBackend::new(&txn, number).map_err(st)?;
            let (replica, _) = detached.swap_backend(backend);
            let mut batch = Batch { replica, txn: &txn, number, part_threshold: self.options.part_threshold };
            let value = f(&mut batch)?;
            let mut replica = batch.replica;
            let applied = replica.take_applied();
            oplog::append(&txn, number, applied)?;
            txn.open_table(HEADERS).map_err(st)?.insert(number, replica.header().as_slice()).map_err(st)?;
            if replica.account_changed() {
                txn.open_table(DOCS).map_err(st)?.insert(number, replica.save_account().as_slice()).map_err(st)?;
            }
            let (replica, mut backend) = replica.swap_backend(Detached);
            backend.flush().map_err(st)?;
            drop(backend);
            (value, replica)
        };
        txn.commit().map_err(st)?;
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
        let mut accounts = self.accounts.lock().expect("accounts lock");
        let acct = accounts.get_mut(account).ok_or_else(|| StoreError::NoSuchAccount(account.into()))?;
        let number = acct.number;
        let txn = self.db.begin_write().map_err(st)?;
        let detached = std::mem::replace(&mut acct.replica, Replica::create(self.node, Detached));
        let (replica, out) = match RedbBackend::new(&txn, number) {
            Ok(backend) => {
                let (mut replica, _) = detached.swap_backend(backend);
                let out = f(&mut replica);
                let (replica, backend) = replica.swap_backend(Detached);
                drop(backend);
                (replica, Ok(out))
            }
            Err(e) => (detached, Err(st(e))),
        };
        acct.replica = replica;
        let _ = txn.abort();
        out
    }

    /// The canonical dump of an account (see [`Replica::dump`]).
    pub fn dump(&self, account: &str) -> Result<String, StoreError> {
        self.inspect(account, |r| r.dump())
    }

    /// The same canonical content as [`Store::dump`], as data (for `dump
    /// --json`): mailboxes by name, messages by UID, keywords sorted.
    pub fn dump_view(&self, account: &str) -> Result<Vec<MailboxDump>, StoreError> {
        let reader = self.read(account)?;
        let tree = &reader.names().tree;
        let mut out = Vec::new();
        for (name, id) in &tree.by_name {
            let st = reader.status(*id)?;
            let entry = tree.entries.get(id);
            let messages = reader
                .messages(*id, 1, usize::MAX)?
                .into_iter()
                .map(|m| MessageDump {
                    uid: m.uid,
                    id: format!("{:?}", m.message),
                    flags: m.flags.iter().map(|k| k.to_string()).collect(),
                })
                .collect();
            out.push(MailboxDump {
                name: name.clone(),
                uidvalidity: st.uid_validity,
                uidnext: st.uid_next,
                subscribed: entry.is_some_and(|e| e.subscribed),
                special_use: entry.and_then(|e| e.special_use).map(|u| u.as_str()),
                messages,
            });
        }
        Ok(out)
    }

    /// The account's whole replicated state, for a peer that is new or
    /// behind the compacted log ([`starling_model::snapshot`]); compressed.
    pub fn snapshot(&self, account: &str) -> Result<Vec<u8>, StoreError> {
        let state = self.inspect(account, |r| r.export_state())?.map_err(st)?;
        // The log tail from this node's floor up to the state, so that the
        // receiver can serve every peer this node can (its floor is ours).
        let number = self.account_number(account)?;
        let r = self.db.begin_read().map_err(st)?;
        let floor = self.log_floor(&r, number)?;
        let ranges: Vec<(u64, u64, u64)> = state
            .vv
            .iter()
            .filter(|(replica, last)| floor.get(*replica) < *last)
            .map(|(replica, last)| (replica.0, floor.get(replica) + 1, last))
            .collect();
        let tail = oplog::read_logged(&r, number, &ranges)?;
        let file = SnapshotFile { format: SNAPSHOT_FORMAT, state, floor, tail };
        Ok(blob::pack(&postcard::to_stdvec(&file).map_err(st)?))
    }

    fn account_number(&self, account: &str) -> Result<u32, StoreError> {
        let accounts = self.accounts.lock().expect("accounts lock");
        Ok(accounts.get(account).ok_or_else(|| StoreError::NoSuchAccount(account.into()))?.number)
    }

    /// Installs a snapshot made by [`Store::snapshot`] into an account that
    /// has applied nothing: its state, and the sender's log tail above the
    /// sender's floor, which becomes this node's floor.
    pub fn install_snapshot(&self, account: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let bad = |e: &dyn std::fmt::Display| StoreError::Snapshot(e.to_string());
        let raw = blob::unpack(bytes, SNAPSHOT_BYTES_MAX).map_err(|e| bad(&e))?;
        let file: SnapshotFile = postcard::from_bytes(&raw).map_err(|e| bad(&e))?;
        if file.format != SNAPSHOT_FORMAT {
            return Err(bad(&format!("snapshot format {}", file.format)));
        }
        // The tail must be the state's own ops above the floor, nothing else.
        if file.tail.iter().any(|(op, _)| !file.state.vv.contains(op.dot) || file.floor.contains(op.dot)) {
            return Err(bad(&"log tail outside the snapshot"));
        }
        self.write(account, |b| {
            let floor = postcard::to_stdvec(&file.floor).map_err(st)?;
            b.replica.import_state(file.state).map_err(|e| StoreError::Snapshot(e.to_string()))?;
            let tail = file.tail.into_iter().map(|(op, mbs)| starling_model::AppliedOp { op, mailboxes: mbs.into() });
            oplog::append(b.txn, b.number, tail.collect())?;
            b.txn.open_table(LOG_FLOOR).map_err(st)?.insert(b.number, floor.as_slice()).map_err(st)?;
            Ok(())
        })
    }

    /// Whether a body is stored here.
    pub fn has_blob(&self, id: BlobId) -> Result<bool, StoreError> {
        let r = self.db.begin_read().map_err(st)?;
        match r.open_table(BLOBS) {
            Ok(t) => Ok(t.get(&id.0).map_err(st)?.is_some()),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(st(e)),
        }
    }

    /// A body, reassembled (`None` if not stored here or a part is missing).
    pub fn blob(&self, id: BlobId) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(st)?;
        // Bodies are not per account: no tables of names are needed.
        let names =
            Names { replica_ids: Vec::new(), keywords: Vec::new(), mailboxes: Vec::new(), tree: Default::default() };
        let reader = Reader { txn, account: 0, names };
        match reader.body(id) {
            Ok(b) => Ok(Some(b)),
            Err(StoreError::MissingBlob(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Bodies that messages of `account` reference but this store lacks
    /// (after a snapshot, or ops whose bodies have not arrived).
    pub fn missing_blobs(&self, account: &str) -> Result<Vec<BlobId>, StoreError> {
        let mut ids: Vec<BlobId> = self.missing_bodies(account)?.into_iter().map(|m| m.blob).collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Like [`Store::missing_blobs`], with where each message is and its
    /// size and date, so a partial replica can apply its body policy.
    pub fn missing_bodies(&self, account: &str) -> Result<Vec<MissingBody>, StoreError> {
        let (number, names) = {
            let accounts = self.accounts.lock().expect("accounts lock");
            let acct = accounts.get(account).ok_or_else(|| StoreError::NoSuchAccount(account.into()))?;
            (acct.number, acct.replica.names())
        };
        let r = self.db.begin_read().map_err(st)?;
        // No envelope table: no message. No blob table: no body yet, so
        // every message's body is missing (not none of them).
        let (Ok(envelopes), Ok(locs)) = (r.open_table(backend::ENVELOPES), r.open_table(backend::LOCS)) else {
            return Ok(Vec::new());
        };
        let blobs = match r.open_table(BLOBS) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(st(e)),
        };
        let mut out = Vec::new();
        for item in envelopes.range((number, 0)..=(number, u64::MAX)).map_err(st)? {
            let (k, v) = item.map_err(st)?;
            let env = decode_envelope(v.value()).map_err(st)?;
            if let Some(blobs) = &blobs {
                if blobs.get(&env.blob.0).map_err(st)?.is_some() {
                    continue;
                }
            }
            let loc = locs.get(k.value()).map_err(st)?.map(|l| l.value());
            let mailbox = loc
                .and_then(|(mb, _)| names.mailboxes.get(mb as usize).map(|m| m.0))
                .and_then(|id| names.tree.name_of(id).map(str::to_string));
            let uid = loc.map_or(0, |(_, uid)| uid);
            out.push(MissingBody { blob: env.blob, mailbox, uid, size: env.size, internal_date: env.internal_date });
        }
        Ok(out)
    }

    /// Stores a body received from a peer (checked by the caller against its
    /// id), in its own durable transaction.
    pub fn put_blob(&self, raw: &[u8]) -> Result<BlobId, StoreError> {
        Ok(self.put_blobs(&[raw])?[0])
    }

    /// Stores several bodies in one durable transaction (one fsync).
    pub fn put_blobs(&self, raws: &[&[u8]]) -> Result<Vec<BlobId>, StoreError> {
        let w = self.db.begin_write().map_err(st)?;
        let ids =
            raws.iter().map(|raw| put_body(&w, raw, self.options.part_threshold)).collect::<Result<Vec<_>, _>>()?;
        w.commit().map_err(st)?;
        Ok(ids)
    }

    /// A read view of an account.
    pub fn read(&self, account: &str) -> Result<Reader, StoreError> {
        let accounts = self.accounts.lock().expect("accounts lock");
        let acct = accounts.get(account).ok_or_else(|| StoreError::NoSuchAccount(account.into()))?;
        let names = acct.replica.names();
        let txn = self.db.begin_read().map_err(st)?;
        Ok(Reader { txn, account: acct.number, names })
    }

    /// Whether a mailbox's UIDNEXT moved since this replica last announced
    /// it to clients (so an announce op is due). In memory: no transaction.
    pub fn announce_due(&self, account: &str, mailbox: MailboxId) -> Result<bool, StoreError> {
        let accounts = self.accounts.lock().expect("accounts lock");
        let r = &accounts.get(account).ok_or_else(|| StoreError::NoSuchAccount(account.into()))?.replica;
        Ok(r.uid_next(mailbox).is_some_and(|next| next > r.announced_uid_next(mailbox)))
    }

    /// The UIDNEXT this replica last announced to clients for a mailbox (1 if never).
    pub fn announced_uid_next(&self, account: &str, mailbox: MailboxId) -> Result<u32, StoreError> {
        let accounts = self.accounts.lock().expect("accounts lock");
        let acct = accounts.get(account).ok_or_else(|| StoreError::NoSuchAccount(account.into()))?;
        Ok(acct.replica.announced_uid_next(mailbox))
    }

    /// What the account has applied.
    pub fn version(&self, account: &str) -> Result<VersionVector, StoreError> {
        let accounts = self.accounts.lock().expect("accounts lock");
        let acct = accounts.get(account).ok_or_else(|| StoreError::NoSuchAccount(account.into()))?;
        Ok(acct.replica.version().clone())
    }

    /// Ops of `account` that a peer holding `have` lacks, in causal order
    /// (per replica by counter, replicas one after another: the receiver's
    /// causal buffer reorders across replicas). Fails with
    /// [`StoreError::Compacted`] if the log no longer reaches back to `have`.
    pub fn ops_since(&self, account: &str, have: &VersionVector) -> Result<Vec<Op>, StoreError> {
        let (number, r, ranges) = self.log_ranges(account, have)?;
        oplog::read(&r, number, &ranges, None)
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
        oplog::read_chunk(&r, number, &ranges, since, ops_max, bytes_max)
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
        oplog::read(&r, number, &ranges, Some(mailboxes))
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
        let (number, mine) = {
            let accounts = self.accounts.lock().expect("accounts lock");
            let acct = accounts.get(account).ok_or_else(|| StoreError::NoSuchAccount(account.into()))?;
            (acct.number, acct.replica.version().clone())
        };
        let r = self.db.begin_read().map_err(st)?;
        let floor = self.log_floor(&r, number)?;
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

    fn log_floor(&self, r: &ReadTransaction, number: u32) -> Result<VersionVector, StoreError> {
        match r.open_table(LOG_FLOOR) {
            Ok(t) => match t.get(number).map_err(st)? {
                Some(v) => postcard::from_bytes(v.value()).map_err(st),
                None => Ok(VersionVector::new()),
            },
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(VersionVector::new()),
            Err(e) => Err(st(e)),
        }
    }

    /// Drops from the log every op that all known peers hold (`held_by_all`):
    /// their effect is already in the materialized state. Returns how many
    /// ops were dropped.
    pub fn compact(&self, account: &str, held_by_all: &VersionVector) -> Result<u64, StoreError> {
        let number = self.account_number(account)?;
        let mut floor = self.log_floor(&self.db.begin_read().map_err(st)?, number)?;
        let w = self.db.begin_write().map_err(st)?;
        let dropped = oplog::compact(&w, number, held_by_all, &mut floor)?;
        w.open_table(LOG_FLOOR)
            .map_err(st)?
            .insert(number, postcard::to_stdvec(&floor).map_err(st)?.as_slice())
            .map_err(st)?;
        w.commit().map_err(st)?;
        Ok(dropped)
    }

    /// Size of the database file's content as redb accounts it: (stored
    /// bytes, bytes used including metadata and fragmentation).
    pub fn stats(&self) -> Result<(u64, u64), StoreError> {
        let w = self.db.begin_write().map_err(st)?;
        let s = w.stats().map_err(st)?;
        let out = (s.stored_bytes(), s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes());
        w.abort().map_err(st)?;
        Ok(out)
    }
}

impl Reader {
    /// The small tables (mailbox tree, keyword and replica tables) as of this view.
    pub fn names(&self) -> &Names {
        &self.names
    }

    fn mailbox(&self, id: MailboxId) -> Option<u32> {
        self.names.mailbox_index(id)
    }

    /// STATUS / SELECT counters of a mailbox.
    pub fn status(&self, id: MailboxId) -> Result<MailboxStatus, StoreError> {
        let uid_next = self.names.mailbox_index(id).map(|i| self.names.mailboxes[i as usize].1).unwrap_or(1);
        let (highest_modseq, messages) = match (self.mailbox(id), self.txn.open_table(backend::MAILBOX_COUNTS)) {
            (Some(i), Ok(t)) => t.get((self.account, i)).map_err(st)?.map(|g| g.value()).unwrap_or((0, 0)),
            _ => (0, 0),
        };
        Ok(MailboxStatus { messages, uid_next, uid_validity: id.uid_validity(), highest_modseq })
    }

    fn info(&self, slot: starling_model::backend::Slot, modseq: u64) -> MessageInfo {
        let mut flags: Vec<Keyword> = slot.flags.iter().map(|e| self.names.keywords[e.kw as usize].clone()).collect();
        flags.sort();
        flags.dedup();
        MessageInfo { uid: slot.uid, message: self.names.message(slot.id), flags, modseq }
    }

    /// Messages with UID ≥ `from`, by UID, at most `limit`: reads only those rows.
    pub fn messages(&self, id: MailboxId, from: u32, limit: usize) -> Result<Vec<MessageInfo>, StoreError> {
        let Some(i) = self.mailbox(id) else { return Ok(Vec::new()) };
        let Ok(slots) = self.txn.open_table(backend::SLOTS) else { return Ok(Vec::new()) };
        let a = self.account;
        let mut out = Vec::new();
        for item in slots.range((a, i, from)..=(a, i, u32::MAX)).map_err(st)?.take(limit) {
            let (_, v) = item.map_err(st)?;
            let (modseq, slot) = decode_slot(v.value()).map_err(st)?;
            out.push(self.info(slot, modseq));
        }
        Ok(out)
    }

    /// The UIDs of a mailbox, ascending: keys only, no row decoded.
    pub fn uids(&self, id: MailboxId) -> Result<Vec<u32>, StoreError> {
        let Some(i) = self.mailbox(id) else { return Ok(Vec::new()) };
        let Ok(slots) = self.txn.open_table(backend::SLOTS) else { return Ok(Vec::new()) };
        let a = self.account;
        let mut out = Vec::new();
        for item in slots.range((a, i, 0)..=(a, i, u32::MAX)).map_err(st)? {
            out.push(item.map_err(st)?.0.value().2);
        }
        Ok(out)
    }

    /// The lowest UID without `\Seen`, reading rows only up to it.
    pub fn first_unseen(&self, id: MailboxId) -> Result<Option<u32>, StoreError> {
        let Some(i) = self.mailbox(id) else { return Ok(None) };
        let Ok(slots) = self.txn.open_table(backend::SLOTS) else { return Ok(None) };
        let seen = self.names.keywords.iter().position(|k| *k == Keyword::Seen).map(|p| p as u32);
        let a = self.account;
        for item in slots.range((a, i, 0)..=(a, i, u32::MAX)).map_err(st)? {
            let (k, v) = item.map_err(st)?;
            let (_, slot) = decode_slot(v.value()).map_err(st)?;
            if !seen.is_some_and(|s| slot.flags.iter().any(|e| e.kw == s)) {
                return Ok(Some(k.value().2));
            }
        }
        Ok(None)
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
        let Some(i) = self.mailbox(id) else { return Ok(Vec::new()) };
        let (Ok(changes), Ok(slots)) = (self.txn.open_table(backend::CHANGES), self.txn.open_table(backend::SLOTS))
        else {
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
                let (current, slot) = decode_slot(v.value()).map_err(st)?;
                // A row superseded by a later change of the same message is skipped.
                if current == k.value().2 {
                    out.push(self.info(slot, current));
                }
            }
        }
        Ok(out)
    }

    /// UIDs expunged (or moved away) after `modseq` (QRESYNC VANISHED).
    pub fn vanished_since(&self, id: MailboxId, modseq: u64) -> Result<Vec<u32>, StoreError> {
        let Some(i) = self.mailbox(id) else {
            return Ok(Vec::new());
        };
        let Ok(t) = self.txn.open_table(backend::VANISHED) else {
            return Ok(Vec::new());
        };
        let a = self.account;
        let mut out = Vec::new();
        for item in t.range((a, i, modseq + 1)..=(a, i, u64::MAX)).map_err(st)? {
            out.push(item.map_err(st)?.1.value());
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Blob id, size and internal date of a live message.
    pub fn envelope(&self, message: MessageId) -> Result<Option<Envelope>, StoreError> {
        let Some(p) = self.names.packed(message) else {
            return Ok(None);
        };
        let Ok(t) = self.txn.open_table(backend::ENVELOPES) else {
            return Ok(None);
        };
        match t.get((self.account, p)).map_err(st)? {
            Some(g) => Ok(Some(decode_envelope(g.value()).map_err(st)?)),
            None => Ok(None),
        }
    }

    fn record(&self, id: BlobId) -> Result<BodyRecord, StoreError> {
        let t = self.txn.open_table(BLOBS).map_err(|_| StoreError::MissingBlob(id))?;
        let v = t.get(&id.0).map_err(st)?.ok_or(StoreError::MissingBlob(id))?;
        let bytes = blob::unpack(v.value(), BODY_BYTES_MAX).map_err(st)?;
        postcard::from_bytes(&bytes).map_err(st)
    }

    /// Length of a stored body.
    pub fn body_len(&self, id: BlobId) -> Result<u64, StoreError> {
        Ok(self.record(id)?.len)
    }

    /// The first `n` bytes of a body (all of it if shorter), decompressing
    /// only what they need when they can (the header of a message).
    pub fn body_prefix(&self, id: BlobId, n: usize) -> Result<Vec<u8>, StoreError> {
        let t = self.txn.open_table(BLOBS).map_err(|_| StoreError::MissingBlob(id))?;
        let v = t.get(&id.0).map_err(st)?.ok_or(StoreError::MissingBlob(id))?;
        match blob::inline_prefix(v.value(), n) {
            Some(bytes) => Ok(bytes),
            None => self.body_range(id, 0, n as u64),
        }
    }

    /// A message's header block, when its record keeps it apart (bodies
    /// stored since format 2): only the header is decompressed.
    pub fn body_header(&self, id: BlobId) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.txn.open_table(BLOBS).map_err(|_| StoreError::MissingBlob(id))?;
        let v = t.get(&id.0).map_err(st)?.ok_or(StoreError::MissingBlob(id))?;
        Ok(blob::record_header(v.value()))
    }

    /// A whole body, reassembled byte-exact.
    pub fn body(&self, id: BlobId) -> Result<Vec<u8>, StoreError> {
        let len = self.body_len(id)?;
        self.body_range(id, 0, len)
    }

    /// `len` bytes of a body from `offset` (clamped to its end). Reads only
    /// the pieces the range touches; a large part left out by partial
    /// replication fails with [`StoreError::MissingBlob`] only if touched.
    pub fn body_range(&self, id: BlobId, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let record = self.record(id)?;
        let end = offset.saturating_add(len).min(record.len);
        let mut out = Vec::new();
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
                        let t = self.txn.open_table(PARTS).map_err(|_| StoreError::MissingBlob(*pid))?;
                        let v = t.get(&pid.0).map_err(st)?.ok_or(StoreError::MissingBlob(*pid))?;
                        let bytes = blob::unpack(v.value(), BODY_BYTES_MAX).map_err(st)?;
                        // Pair the write-time check: the part is what the record says.
                        assert_eq!(bytes.len() as u64, piece_len, "stored part length matches its record");
                        out.extend_from_slice(&bytes[from..to]);
                    }
                }
            }
            at += piece_len;
        }
        Ok(out)
    }
}
