//! Starling's durable store, on redb: every change of every account lands here,
//! local or remote, through one path ([`Store::write`] running the model's
//! [`Replica::apply`]) inside one write transaction that appends the applied
//! ops to the op log, updates the materialized state and the IMAP view
//! (UIDs, keywords, MODSEQ, HIGHESTMODSEQ, VANISHED), saves the replica's
//! small state, and commits durably. Bodies are content-addressed blobs with
//! large MIME parts apart ([`blob`]), indexed by the accounts that
//! reference them (`refs`: a peer is served only its accounts' bodies,
//! [`Store::blob_for`]), each with the sort keys SORT and THREAD compare,
//! read from its header when it is stored ([`sortkeys`], with the header
//! reading the IMAP server shares, [`header`]). Maildir import and export
//! live in [`maildir`].
//!
//! What it guarantees against a hostile world: a body read whole is
//! checked against its BLAKE3 ([`StoreError::Corrupt`], never wrong
//! bytes); a panic of redb on a damaged page, or inside a write, is an
//! error at the store's boundary, never a panic of the caller; after a
//! disk failure (full disk) the store reopens its file by itself, with
//! back-off ([`db`]); each account has its own lock, so one account's
//! write never delays another account or any reader ([`Store`]).
//! [`verify`] checks a whole file.
//!
//! It must not speak IMAP or touch the network: servers and sync call it.

#![deny(missing_docs)]

mod acks;
pub mod backend;
pub mod blob;
pub mod maildir;
pub mod memdisk;
pub mod oplog;

mod bodies;
mod change_index;
mod changes;
mod credentials;
pub mod db;
mod dump;
mod error;
mod exposure;
mod file_compact;
mod forget;
mod gc;
pub mod header;
mod log;
pub mod modseq;
mod open;
mod outgoing;
mod prepare;
pub mod ranges;
mod reads;
mod refs;
mod snapshot;
pub mod sortkeys;
mod spool;
pub mod verify;
mod write;

pub use acks::{AccountKept, Housekeeping, Housekept, PeerAck, COLLECT_ROUNDS_MAX};
pub use bodies::{MissingBody, MissingPage, Shipped};
pub use changes::{Changes, Commit, CHANGE_LOG_COMMITS, CHANGE_LOG_MAILBOXES};
pub use dump::{MailboxDump, MessageDump};
pub(crate) use error::{damaged, guarded, st};
pub use error::{OpenError, StoreError};
pub use exposure::{
    Exposed, Exposure, ExposurePolicy, ExposureStats, LinkUp, PinnedPeers, WhenShort, EXPOSURE_WAIT_MAX,
    HELD_BODIES_MAX,
};
pub use file_compact::{
    FileCompactError, FileCompactStats, FileCompaction, TableSize, FILE_COMPACT_MIN_FREE, FILE_COMPACT_WAIT,
};
pub use forget::{copy_replica, ForgetError, Forgot, FORGET_ROWS_PER_TXN};
pub use gc::Collected;
pub use modseq::Since;
pub use open::{StoreOptions, VANISHED_PER_MAILBOX_DEFAULT};
pub use prepare::{prepare_all, Prepared, PREPARE_THREADS_MAX};
pub use reads::{IndexRows, MailboxStatus, MessageInfo, Reader, Resync};
pub use snapshot::{Outgoing, SnapshotCopy, RECORD_BYTES_MAX, SNAPSHOTS_KEPT, SNAPSHOT_BYTES_MAX};
pub use sortkeys::{IdHash, SortKeys, SortKeysBuild, SORT_KEYS_PER_TXN};
pub use write::Batch;

use backend::Detached;
use redb::{Database, TableDefinition};
use starling_model::{BlobId, Names, Replica, ReplicaId, VersionVector};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const ACCOUNTS: TableDefinition<&str, u32> = TableDefinition::new("accounts");
const HEADERS: TableDefinition<u32, &[u8]> = TableDefinition::new("replica_headers");
const DOCS: TableDefinition<u32, &[u8]> = TableDefinition::new("account_docs");
/// account → the incarnation chosen at its creation, until the account's
/// first local change writes it (or a peer's brings another): see
/// [`Store::add_account_as`].
const PENDING_INCARNATION: TableDefinition<u32, u64> = TableDefinition::new("pending_incarnation");
/// account → version vector of ops folded away (compacted) from the log.
const LOG_FLOOR: TableDefinition<u32, &[u8]> = TableDefinition::new("log_floor");
const BLOBS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blobs");
const PARTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("parts");
/// account → password hash (PHC string). Local to this node: not replicated.
const CREDENTIALS: TableDefinition<&str, &str> = TableDefinition::new("credentials");

const MAGIC: &[u8] = b"starling-store";
/// 2: the `blob_refs` index (which accounts reference a body); 3: the
/// `missing_bodies` list; 4: the `bodies_got` marks; 5: the garbage
/// collector's candidates and part counts, and each account's bytes; 6:
/// the change index bounded (one change row per message, the expunge rows
/// counted per mailbox); 7: spent UIDs (`spent_uids`), which an older
/// build would not read; 8: each body's sort keys (`sort_keys`, see
/// [`sortkeys`]), which an older build would not keep up to date; 9:
/// accounts can be forgotten (`forgetting`, `forgotten_copies`, a copy's
/// own replica id, account numbers never given twice: see [`forget`]),
/// which an older build would not honour; 10: the sort keys' records hold
/// the display values of SORT=DISPLAY (record version 2), which an older
/// build would refuse to decode. An older store gets them built once at
/// open; 11: no `tombstones` table (an expunged message is one within the
/// account's version that is not live, `docs/semantics.md`), which an
/// older build would read as "never expunged"; an older store's table is
/// dropped at open.
const FORMAT_VERSION: u8 = 11;

/// Largest body or part the store reads back (bounds decompression).
pub const BODY_BYTES_MAX: usize = 1 << 30;

/// Largest body a peer may ship ([`Store::put_shipped`]; the sync
/// protocol's own bound on a body): decompression of what a peer sends is
/// bounded by it, and each part by the length the body's record gives it.
pub const SHIPPED_BYTES_MAX: usize = 256 << 20;

/// Default size above which a MIME part is stored as a blob of its own.
pub const PART_THRESHOLD_DEFAULT: usize = 256 * 1024;

/// Default page cache: 64 MiB.
pub const CACHE_BYTES_DEFAULT: usize = 64 << 20;

/// `Account::loaded` of an account whose in-memory state must be reloaded
/// from the file before its next use.
const STALE: u64 = u64::MAX;

/// One account. Each has its own lock: a write of one account (its
/// closure, commit and fsync) holds only that account's `state`, so other
/// accounts' work and every reader go on (redb still runs one write
/// transaction at a time).
struct Account {
    number: u32,
    /// Its name (for errors once it is forgotten).
    name: Arc<str>,
    /// This node's replica id in the account: the node's own, or a fresh
    /// one for a copy made again after this node forgot the account
    /// ([`forget::copy_replica`]).
    me: ReplicaId,
    /// Set (before the commit) by [`Store::forget_account`]: whoever still
    /// holds this `Account` finds it gone at its next lock or view.
    gone: AtomicBool,
    /// The replica between transactions, held across a write of this account.
    state: Mutex<Replica<Detached>>,
    /// What readers see, as of the account's last commit. A writer holds it
    /// exclusively only from its commit to publishing the new state, so a
    /// reader's names always match its read transaction, and readers never
    /// wait for a write's closure.
    published: RwLock<Published>,
    /// The [`db::Db::epoch`] the in-memory state was loaded in, or
    /// [`STALE`]: reload before use (after a failed write that could not
    /// re-read the file, or after the file was reopened).
    loaded: AtomicU64,
    /// Which mailboxes its recent commits changed ([`changes`]).
    changes: Mutex<changes::ChangeLog>,
}

/// An account's small state as of its last commit, for readers.
#[derive(Clone)]
struct Published {
    names: Arc<Names>,
    version: Arc<VersionVector>,
}

impl Published {
    fn of(replica: &Replica<Detached>) -> Published {
        Published { names: Arc::new(replica.names()), version: Arc::new(replica.version().clone()) }
    }
}

/// A table of a read transaction; `None` if it was never created (nothing
/// of that kind yet). Any other failure is an error, not an empty answer.
pub(crate) fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(st(e)),
    }
}

/// What the store and its readers share.
struct Core {
    db: db::Db,
    /// Body reads that found damaged bytes.
    corrupt_reads: AtomicU64,
    /// Body records read by readers (for metrics, and tests that show a
    /// command reads none).
    body_reads: AtomicU64,
    /// Scans of an account's messages for bodies it lacks
    /// ([`Store::missing_page_where`]).
    missing_scans: AtomicU64,
    /// Bodies found damaged since open: a good copy from a peer replaces them.
    corrupt: Mutex<BTreeSet<BlobId>>,
    /// Peers' acknowledgements heard since the last housekeeping (`acks`).
    acks: Mutex<BTreeMap<(u32, ReplicaId), VersionVector>>,
    /// Peers that said they purged an account as deleted (`acks`): they
    /// hold the deletion for good.
    purged_by: Mutex<BTreeSet<(u32, ReplicaId)>>,
    /// What the peers hold now, for exposure after k peers (`exposure`).
    live: Mutex<exposure::Live>,
    /// Bumped whenever `live` grows: exposures waiting look again.
    held_changed: tokio::sync::watch::Sender<u64>,
    /// Bumped when a catch-up wait wants the links to probe their peers.
    probes: tokio::sync::watch::Sender<u64>,
    /// Notified when `live` changes or a commit lands (catch-up waits).
    live_changed: std::sync::Condvar,
    exposure_stats: Mutex<ExposureStats>,
}

impl Core {
    fn is_corrupt(&self, id: BlobId) -> bool {
        let set = self.corrupt.lock().unwrap_or_else(PoisonError::into_inner);
        !set.is_empty() && set.contains(&id)
    }

    fn repaired(&self, ids: &[BlobId]) {
        if !ids.is_empty() {
            let mut set = self.corrupt.lock().unwrap_or_else(PoisonError::into_inner);
            for id in ids {
                set.remove(id);
            }
        }
    }

    fn found_corrupt(&self, id: BlobId) -> StoreError {
        self.corrupt_reads.fetch_add(1, Ordering::Relaxed);
        self.corrupt.lock().unwrap_or_else(PoisonError::into_inner).insert(id);
        StoreError::Corrupt { blob: id }
    }
}

/// The store: one redb file holding every account of this node.
///
/// Locking: the map of accounts is read-locked briefly by every call and
/// write-locked only to add an account. Each account has its own lock,
/// held by a write of that account (and by [`Store::inspect`]); reads take
/// none of them — they read on a redb read transaction and the account's
/// state as of its last commit. A panic inside a write is caught: the
/// account is reloaded from the file and the write returns
/// [`StoreError::Panicked`]; nothing poisons the store.
pub struct Store {
    core: Arc<Core>,
    node: ReplicaId,
    options: StoreOptions,
    accounts: RwLock<BTreeMap<String, Arc<Account>>>,
    /// Serialises account creation (account numbers).
    adding: Mutex<()>,
    /// What compacting the file at open did, if it ran.
    file_compaction: Option<FileCompaction>,
    /// What the sort keys build at open did, if one ran.
    sort_keys_build: Option<sortkeys::SortKeysBuild>,
    /// The file's length (for [`Store::compact_file`]).
    size_probe: Option<file_compact::SizeProbe>,
    /// Online compactions since open.
    file_stats: Mutex<FileCompactStats>,
    /// The free-share check's last count and the bytes deleted since.
    free_watch: Mutex<file_compact::FreeWatch>,
    /// Told of every commit of [`Store::write`] (see [`Store::on_commit`]).
    commit_hook: RwLock<Option<CommitHook>>,
    /// The directory of the store's file, where snapshots to send are
    /// written ([`Store::snapshot_copy`]); none for a store on another
    /// backend.
    dir: Option<std::path::PathBuf>,
    /// Where the snapshots kept to resume transfers live
    /// ([`crate::outgoing`]); none for a store on another backend.
    kept_dir: Option<std::path::PathBuf>,
    /// Snapshots being sent, kept so that a transfer that broke off can
    /// resume ([`Store::snapshot_to_send`]).
    kept: Mutex<std::collections::VecDeque<snapshot::Kept>>,
    /// Snapshots made to send, for their ids.
    snapshots_made: AtomicU64,
}

/// What a commit tells: the account changed.
pub type CommitHook = Arc<dyn Fn(&str) + Send + Sync>;

impl Store {
    /// What compacting the file at open did, if the file was sparse enough
    /// for it to run ([`StoreOptions::file_compact_free_percent`]).
    pub fn file_compaction(&self) -> Option<FileCompaction> {
        self.file_compaction
    }

    /// What the sort keys build at open did, if the store needed one (an
    /// older format, or a build a crash cut short).
    pub fn sort_keys_build(&self) -> Option<sortkeys::SortKeysBuild> {
        self.sort_keys_build
    }

    /// This node's replica id.
    pub fn node(&self) -> ReplicaId {
        self.node
    }

    /// This node's replica id in `account`: [`Store::node`], unless this
    /// node forgot the account before and holds a copy made again since
    /// (which numbers its changes as a fresh replica, [`copy_replica`]).
    pub fn replica_id(&self, account: &str) -> Result<ReplicaId, StoreError> {
        Ok(self.account(account)?.me)
    }

    /// Names of the accounts.
    pub fn accounts(&self) -> Vec<String> {
        self.accounts.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    /// How many times a reader read a body's stored record (any body read:
    /// whole, range, prefix, header, length, shipped form) since open.
    pub fn body_reads(&self) -> u64 {
        self.core.body_reads.load(Ordering::Relaxed)
    }

    /// How many times a partial replica's page of missing bodies scanned an
    /// account's messages since open (each scan is O(messages)).
    pub fn missing_scans(&self) -> u64 {
        self.core.missing_scans.load(Ordering::Relaxed)
    }

    /// How many body reads found damaged bytes since open (for metrics).
    pub fn corrupt_reads(&self) -> u64 {
        self.core.corrupt_reads.load(Ordering::Relaxed)
    }

    /// Bodies found damaged since open: fetch them from a peer and store
    /// them again with [`Store::put_blobs`], which replaces the damaged copy.
    pub fn corrupt_blobs(&self) -> Vec<BlobId> {
        self.core.corrupt.lock().unwrap_or_else(PoisonError::into_inner).iter().copied().collect()
    }

    /// How many times the file was reopened after a disk failure (for metrics).
    pub fn reopens(&self) -> u64 {
        self.core.db.reopens()
    }

    /// How many times a reopen of the file was tried after a disk failure
    /// (attempts back off: 100 ms doubling to 10 s while they keep failing).
    pub fn reopen_attempts(&self) -> u64 {
        self.core.db.reopen_attempts()
    }

    fn account(&self, name: &str) -> Result<Arc<Account>, StoreError> {
        let accounts = self.accounts.read().unwrap_or_else(PoisonError::into_inner);
        accounts.get(name).cloned().ok_or_else(|| StoreError::NoSuchAccount(name.into()))
    }

    fn account_number(&self, account: &str) -> Result<u32, StoreError> {
        Ok(self.account(account)?.number)
    }

    /// Runs `f` on the database, catching a panic (redb on a damaged page)
    /// and letting the handle see a disk error (to reopen the file).
    fn run<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let result = match self.core.db.get() {
            Ok(db) => guarded(|| f(&db)),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            self.core.db.note(e);
        }
        result
    }

    /// Locks an account's in-memory state, reloading it from `db` first if
    /// it is stale (a failed write, a reopened file) or a panic left the
    /// lock poisoned.
    fn lock<'a>(&self, acct: &'a Account, db: &Database) -> Result<MutexGuard<'a, Replica<Detached>>, StoreError> {
        let mut guard = match acct.state.lock() {
            Ok(g) => g,
            Err(poisoned) => {
                acct.state.clear_poison();
                acct.loaded.store(STALE, Ordering::Release);
                poisoned.into_inner()
            }
        };
        if acct.gone.load(Ordering::SeqCst) {
            return Err(StoreError::NoSuchAccount(acct.name.to_string()));
        }
        let epoch = self.core.db.epoch();
        if acct.loaded.load(Ordering::Acquire) != epoch || acct.published.is_poisoned() {
            *guard = self.reload(db, acct)?;
            self.publish(acct, &guard);
            acct.loaded.store(epoch, Ordering::Release);
        }
        Ok(guard)
    }

    /// Makes `replica` what readers of the account see.
    fn publish(&self, acct: &Account, replica: &Replica<Detached>) {
        let p = Published::of(replica);
        let mut guard = acct.published.write().unwrap_or_else(PoisonError::into_inner);
        *guard = p;
        drop(guard);
        acct.published.clear_poison();
    }

    /// A read transaction of `db` and the account's state as of the same
    /// commit (reloading a stale account first).
    fn view(&self, acct: &Account, db: &Database) -> Result<(redb::ReadTransaction, Published), StoreError> {
        if acct.loaded.load(Ordering::Acquire) != self.core.db.epoch() || acct.published.is_poisoned() {
            drop(self.lock(acct, db)?);
        }
        let p = acct.published.read().unwrap_or_else(PoisonError::into_inner);
        let txn = redb::ReadableDatabase::begin_read(db).map_err(st)?;
        // `gone` is set before the forgetting commit: not set now means
        // this read transaction began before it, and sees the account whole.
        if acct.gone.load(Ordering::SeqCst) {
            return Err(StoreError::NoSuchAccount(acct.name.to_string()));
        }
        Ok((txn, p.clone()))
    }
}
