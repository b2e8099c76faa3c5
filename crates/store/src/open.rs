//! Opening a store: the file (or any redb backend), its meta record, and
//! every account's replica.

use crate::*;
use backend::Detached;
use redb::{Database, ReadableDatabase, ReadableTable};
use starling_model::{Replica, ReplicaId};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};

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
    /// [`Store::open`] compacts the file first (redb's `compact`, which
    /// gives back the pages copy-on-write and deletions freed) when at
    /// least this percentage of it, and `file_compact_min_free` bytes,
    /// are free; 100 or more (the default): never. `starling serve` sets
    /// it from its config (25 unless told otherwise).
    pub file_compact_free_percent: u8,
    /// ... and when at least this many bytes are free
    /// ([`FILE_COMPACT_MIN_FREE`] by default; the simulator's small
    /// stores use less).
    pub file_compact_min_free: u64,
    /// Expunges each mailbox remembers for QRESYNC (its newest
    /// `VANISHED` rows); older ones are forgotten as new ones come, and a
    /// client whose MODSEQ is older than what a mailbox remembers gets an
    /// over-report ([`crate::Reader::vanished_within`]). At least 1.
    pub vanished_per_mailbox: u32,
}

/// Default of [`StoreOptions::vanished_per_mailbox`]: a client that was
/// away while 10,000 messages of one mailbox were expunged gets an
/// over-report; the rows cost about 40 bytes each.
pub const VANISHED_PER_MAILBOX_DEFAULT: u32 = 10_000;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            part_threshold: PART_THRESHOLD_DEFAULT,
            verify: false,
            cache_bytes: CACHE_BYTES_DEFAULT,
            file_compact_free_percent: 100,
            file_compact_min_free: FILE_COMPACT_MIN_FREE,
            vanished_per_mailbox: VANISHED_PER_MAILBOX_DEFAULT,
        }
    }
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

/// What an open that panicked inside redb returns.
fn damaged_at_open(label: &str) -> OpenError {
    OpenError::NotAStore {
        path: label.into(),
        reason: "damaged (a page could not be read); run `starling verify` to locate the damage".into(),
    }
}

impl Store {
    /// Opens the store at `path` for node `node`, creating it if absent.
    /// After a disk failure the store reopens this file by itself.
    pub fn open(path: &Path, node: ReplicaId, options: StoreOptions) -> Result<Store, OpenError> {
        let label = path.display().to_string();
        let path = path.to_path_buf();
        // redb may panic on a page damaged outside it; an open must not.
        let mut db = std::panic::catch_unwind(|| open_db(&path, options.verify, options.cache_bytes))
            .unwrap_or_else(|_| Err(damaged_at_open(&label)))?;
        let file_compaction = file_compact::compact_at_open(&mut db, &path, &options)
            .map_err(|e| OpenError::Io(format!("{label}: compacting the file: {e}")))?;
        let size = path.clone();
        let dir =
            path.parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d }).map(Path::to_path_buf);
        let kept_dir = crate::outgoing::dir_of(&path);
        // Reopening opens the same file, never creates one: a file that is
        // gone stays an error rather than becoming an empty store.
        let reopen: db::Reopen = Box::new(move || {
            std::panic::catch_unwind(|| Database::builder().set_cache_size(options.cache_bytes).open(&path))
                .map_err(|_| "redb panicked opening the file".to_string())?
                .map_err(|e| e.to_string())
        });
        let mut store = Self::open_db_as(db, &label, node, options, Some(reopen))?;
        store.file_compaction = file_compaction;
        store.size_probe = Some(Box::new(move || std::fs::metadata(&size).ok().map(|m| m.len())));
        store.dir = dir;
        // Ids of new copies differ from those of copies made before a
        // restart (a store on another backend keeps none: the simulator's
        // ids stay a function of its seed).
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        store.snapshots_made = AtomicU64::new(now as u64);
        // Snapshots kept to resume transfers, from before the restart.
        store.kept = Mutex::new(crate::outgoing::load(&kept_dir, &store.accounts().into_iter().collect()));
        store.kept_dir = Some(kept_dir);
        Ok(store)
    }

    /// Opens (or creates) a store on any redb storage backend: the simulator
    /// runs real stores on [`memdisk::MemDisk`]. `label` names it in errors.
    /// The store cannot reopen such a backend by itself after a disk
    /// failure (see [`Store::open_on_with`]).
    pub fn open_on(
        backend: impl redb::StorageBackend,
        label: &str,
        node: ReplicaId,
        options: StoreOptions,
    ) -> Result<Store, OpenError> {
        let db = open_backend(backend, label, options.verify, options.cache_bytes)?;
        Self::open_db_as(db, label, node, options, None)
    }

    /// Like [`Store::open_on`], with a way to make a new backend for the
    /// same storage, so that the store can reopen it after a disk failure
    /// as [`Store::open`] reopens its file.
    pub fn open_on_with<B: redb::StorageBackend>(
        backend: impl Fn() -> B + Send + Sync + 'static,
        label: &str,
        node: ReplicaId,
        options: StoreOptions,
    ) -> Result<Store, OpenError> {
        let db = open_backend(backend(), label, options.verify, options.cache_bytes)?;
        let owned = label.to_string();
        let reopen: db::Reopen =
            Box::new(move || open_backend(backend(), &owned, false, options.cache_bytes).map_err(|e| e.to_string()));
        Self::open_db_as(db, label, node, options, Some(reopen))
    }

    fn open_db_as(
        db: Database,
        label: &str,
        node: ReplicaId,
        options: StoreOptions,
        reopen: Option<db::Reopen>,
    ) -> Result<Store, OpenError> {
        // A panic of redb on a damaged page, anywhere in here, is an error.
        let (accounts, sort_keys_build) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_and_load(&db, label, node, options.vanished_per_mailbox)
        }))
        .unwrap_or_else(|_| Err(damaged_at_open(label)))?;
        let accounts = accounts
            .into_iter()
            .map(|(name, (number, replica))| {
                let published = RwLock::new(Published::of(&replica));
                let acct = Account {
                    number,
                    name: Arc::from(name.as_str()),
                    me: replica.id(),
                    gone: AtomicBool::new(false),
                    state: Mutex::new(replica),
                    published,
                    loaded: AtomicU64::new(0),
                    changes: Default::default(),
                };
                (name, Arc::new(acct))
            })
            .collect();
        let core = Core {
            db: db::Db::new(db, reopen),
            corrupt_reads: AtomicU64::new(0),
            body_reads: AtomicU64::new(0),
            missing_scans: AtomicU64::new(0),
            corrupt: Default::default(),
            acks: Default::default(),
            purged_by: Default::default(),
            live: Default::default(),
            held_changed: tokio::sync::watch::Sender::new(0),
            live_changed: Default::default(),
            probes: tokio::sync::watch::Sender::new(0),
            exposure_stats: Default::default(),
        };
        Ok(Store {
            core: Arc::new(core),
            node,
            options,
            accounts: RwLock::new(accounts),
            adding: Mutex::new(()),
            file_compaction: None,
            sort_keys_build,
            size_probe: None,
            file_stats: Default::default(),
            free_watch: Default::default(),
            commit_hook: RwLock::new(None),
            dir: None,
            kept_dir: None,
            kept: Default::default(),
            snapshots_made: AtomicU64::new(0),
        })
    }
}

fn open_backend(
    backend: impl redb::StorageBackend,
    label: &str,
    verify: bool,
    cache_bytes: usize,
) -> Result<Database, OpenError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Database::builder()
            .set_check_integrity_on_open(verify)
            .set_cache_size(cache_bytes)
            .create_with_backend(backend)
            .map_err(|e| OpenError::NotAStore { path: label.into(), reason: e.to_string() })
    }))
    .unwrap_or_else(|_| Err(damaged_at_open(label)))
}

type Loaded = BTreeMap<String, (u32, Replica<Detached>)>;

/// Checks the meta record (writing it into a brand-new file), brings an
/// older store up to date, and loads every account's replica. Also what
/// the sort keys build did, if one ran.
fn check_and_load(
    db: &Database,
    label: &str,
    node: ReplicaId,
    vanished_max: u32,
) -> Result<(Loaded, Option<sortkeys::SortKeysBuild>), OpenError> {
    let io = |e: &dyn std::fmt::Display| OpenError::Io(e.to_string());
    // A brand-new file gets our meta; an existing one must already have it.
    let fresh = {
        let r = db.begin_read().map_err(|e| io(&e))?;
        match r.open_table(META) {
            Ok(t) => t.get("magic").map_err(|e| io(&e))?.is_none() && r.list_tables().map_err(|e| io(&e))?.count() == 1,
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
    let version = {
        let r = db.begin_read().map_err(|e| io(&e))?;
        let meta = r.open_table(META).map_err(|_| OpenError::Foreign(label.to_string()))?;
        let get = |k: &str| -> Result<Option<Vec<u8>>, OpenError> {
            Ok(meta.get(k).map_err(|e| io(&e))?.map(|g| g.value().to_vec()))
        };
        if get("magic")?.as_deref() != Some(MAGIC) {
            return Err(OpenError::Foreign(label.to_string()));
        }
        let version = get("version")?.and_then(|v| v.first().copied()).unwrap_or(0);
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(OpenError::Version { found: version });
        }
        let found = get("node")?.and_then(|v| v.try_into().ok()).map(|b: [u8; 8]| ReplicaId(u64::from_be_bytes(b)));
        if found != Some(node) {
            return Err(OpenError::WrongNode { expected: node, found: found.unwrap_or(ReplicaId(0)) });
        }
        version
    };
    if version < 4 {
        // Written before format 4: build the index of which accounts
        // reference each body and the list of missing bodies, and mark the
        // file as having them, in one transaction (a crash leaves the old
        // format, built again next open).
        let w = db.begin_write().map_err(|e| io(&e))?;
        refs::build(&w).map_err(|e| io(&e))?;
        w.open_table(META).map_err(|e| io(&e))?.insert("version", [4u8].as_slice()).map_err(|e| io(&e))?;
        w.commit().map_err(|e| io(&e))?;
    }
    let r = db.begin_read().map_err(|e| io(&e))?;
    let mut accounts = BTreeMap::new();
    if let Ok(table) = r.open_table(ACCOUNTS) {
        let headers = r.open_table(HEADERS).map_err(|e| io(&e))?;
        let forgotten = r.open_table(forget::FORGOTTEN).ok();
        let docs = r.open_table(DOCS).map_err(|e| io(&e))?;
        for item in table.iter().map_err(|e| io(&e))? {
            let (name, number) = item.map_err(|e| io(&e))?;
            let (name, number) = (name.value().to_string(), number.value());
            let fail = |reason: String| OpenError::Account { account: name.clone(), reason };
            let header = headers.get(number).map_err(|e| io(&e))?.ok_or_else(|| fail("header missing".into()))?;
            let doc = docs.get(number).map_err(|e| io(&e))?.ok_or_else(|| fail("document missing".into()))?;
            // The copy's replica id: the node's, or a fresh one if this node
            // forgot the account before ([`forget::copy_replica`]).
            let generation = match &forgotten {
                Some(t) => t.get(name.as_str()).map_err(|e| io(&e))?.map_or(0, |g| g.value()),
                None => 0,
            };
            let me = forget::copy_replica(node, &name, generation);
            let mut replica =
                Replica::open(me, Detached, header.value(), doc.value()).map_err(|e| fail(e.to_string()))?;
            replica.record_applied();
            accounts.insert(name, (number, replica));
        }
    }
    drop(r);
    // Snapshot parts a stopped node or a broken session left stay for their
    // peer to send the rest; those of accounts no longer here go.
    crate::spool::drop_strays(db, &accounts.keys().cloned().collect()).map_err(|e| io(&e))?;
    if version < 5 {
        // Before format 5: the garbage collector's rows (stamped with each
        // account's version now) and each account's bytes, likewise in one
        // transaction.
        let versions = accounts.values().map(|(n, r)| (*n, r.version().clone())).collect();
        let w = db.begin_write().map_err(|e| io(&e))?;
        gc::build(&w, &versions).map_err(|e| io(&e))?;
        refs::build_account_bytes(&w).map_err(|e| io(&e))?;
        w.open_table(META).map_err(|e| io(&e))?.insert("version", [5u8].as_slice()).map_err(|e| io(&e))?;
        w.commit().map_err(|e| io(&e))?;
    }
    if version < 6 {
        // Before format 6: the change index kept every row it was given.
        let w = db.begin_write().map_err(|e| io(&e))?;
        crate::change_index::bound_change_index(&w, vanished_max).map_err(|e| io(&e))?;
        w.open_table(META).map_err(|e| io(&e))?.insert("version", [6u8].as_slice()).map_err(|e| io(&e))?;
        w.commit().map_err(|e| io(&e))?;
    }
    if version < 7 {
        // Before format 7 nothing was buried: there is nothing to build
        // (claims already kept stay until the next event that buries
        // them), only the mark that an older build must not open the file.
        let w = db.begin_write().map_err(|e| io(&e))?;
        w.open_table(META).map_err(|e| io(&e))?.insert("version", [7u8].as_slice()).map_err(|e| io(&e))?;
        w.commit().map_err(|e| io(&e))?;
    }
    if version < 10 {
        // Before format 8 there were no sort keys; formats 8 and 9 kept
        // them without the display values (SORT=DISPLAY); before format 9
        // nothing was forgotten (only the mark matters: an older build
        // would give a forgotten account's number again). One transaction
        // marks the file as format 10 and the keys build as under
        // way (an older build then refuses the file, and nothing reads
        // the keys before the build below ends); the build itself runs in
        // bounded transactions, resumed at the next open if a crash cuts
        // it (`sortkeys::resume_build`).
        let w = db.begin_write().map_err(|e| io(&e))?;
        w.open_table(META).map_err(|e| io(&e))?.insert("version", [10u8].as_slice()).map_err(|e| io(&e))?;
        sortkeys::start_build(&w).map_err(|e| io(&e))?;
        w.commit().map_err(|e| io(&e))?;
    }
    if version < 11 {
        // Before format 11 every expunged message had a row in
        // `tombstones`; what they said follows from the version and the
        // live messages, so the table goes, in the transaction that marks
        // the file.
        let w = db.begin_write().map_err(|e| io(&e))?;
        w.delete_table(crate::backend::TOMBSTONES).map_err(|e| io(&e))?;
        w.open_table(META).map_err(|e| io(&e))?.insert("version", [11u8].as_slice()).map_err(|e| io(&e))?;
        w.commit().map_err(|e| io(&e))?;
    }
    let sort_keys_build =
        sortkeys::resume_build(db).map_err(|e| OpenError::Io(format!("{label}: building the sort keys: {e}")))?;
    // Accounts whose forgetting a crash cut short are finished now, before
    // anything reads the file (bounded transactions, see `forget`).
    forget::resume(db).map_err(|e| OpenError::Io(format!("{label}: finishing forgetting an account: {e}")))?;
    Ok((accounts, sort_keys_build))
}
