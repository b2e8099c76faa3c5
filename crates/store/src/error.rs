//! Why opening the store or a store operation failed.

use starling_model::{BlobId, ReplicaId};

use crate::FORMAT_VERSION;

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
    #[error("store format {found} is not supported (this build reads 1 to {FORMAT_VERSION})")]
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
    /// The account was deleted and this node purged it: a deleted name is
    /// not made again (its peers would take the new account as deleted).
    #[error("account {0:?} was deleted and purged here; a deleted name is not used again")]
    AccountPurged(String),
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
    /// A snapshot lacks changes this replica made or took (its source has
    /// not got them yet): refused, nothing changed. The replica's log still
    /// holds them for the peer; a snapshot taken after it applied them
    /// installs.
    #[error("snapshot lacks changes this replica holds; refused until its source has them")]
    SnapshotOlder,
    /// A body (or a part of it) read back does not hash to its id, or its
    /// record does not decode: those bytes are damaged. Nothing else is
    /// affected; a good copy from a peer ([`crate::Store::put_blob`])
    /// replaces it.
    #[error("body {blob:?} is damaged (its bytes do not hash to its id)")]
    Corrupt {
        /// The body's id (or the part's, for a range read of a part).
        blob: BlobId,
    },
    /// A body a peer shipped in stored form does not decode, or does not
    /// hash to its id: the peer's fault; nothing was stored.
    #[error("body {blob:?} from the peer is not valid: {reason}")]
    BadBody {
        /// The id it was sent as.
        blob: BlobId,
        /// What is wrong with it.
        reason: String,
    },
    /// The file is damaged: redb reported a bad page or panicked reading
    /// one, or a stored record does not decode. `starling verify` says where.
    #[error("store file damaged: {0}")]
    Damaged(String),
    /// The disk is full. Nothing was committed; the store reopens its file
    /// by itself (with back-off) and works again once there is space.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// An I/O error (or one before it, which redb remembers until the file
    /// is reopened). Nothing was committed; the store reopens its file by
    /// itself, with back-off.
    #[error("I/O error: {0}")]
    Io(String),
    /// A panic inside the store (a damaged file or a bug), caught at its
    /// boundary; the account was reloaded from what was committed.
    #[error("internal error in the store: {0}")]
    Panicked(String),
    /// The change would take the account past its quota
    /// ([`starling_model::Quota`], checked by [`crate::Batch::within_quota`]):
    /// nothing was committed.
    #[error("over quota: {0}")]
    OverQuota(String),
    /// Anything else redb reported (a limit, a misuse: a bug rather than
    /// the disk).
    #[error("storage: {0}")]
    Storage(String),
}

impl From<starling_model::StorageError> for StoreError {
    /// A backend error the model passed up, told apart like the store's own.
    fn from(e: starling_model::StorageError) -> Self {
        StoreError::Apply(e.into()).lift()
    }
}

impl StoreError {
    /// Whether the error came from the disk (full or failing): redb then
    /// fails every call until the file is reopened, which the store does by
    /// itself.
    pub fn is_io(&self) -> bool {
        matches!(self, StoreError::DiskFull(_) | StoreError::Io(_))
    }

    /// Whether the file (or a body in it) is damaged.
    pub fn is_damage(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. } | StoreError::Damaged(_) | StoreError::Panicked(_))
    }

    /// An error the model passed up from the backend, told apart like one
    /// of the store's own: a disk or damage error inside `Apply`/`Local`
    /// becomes [`StoreError::Io`], [`StoreError::DiskFull`] or
    /// [`StoreError::Damaged`].
    pub(crate) fn lift(self) -> StoreError {
        use starling_model::{ApplyError, LocalError};
        let storage = match &self {
            StoreError::Apply(ApplyError::Storage(s))
            | StoreError::Local(LocalError::Apply(ApplyError::Storage(s))) => s,
            _ => return self,
        };
        match storage.0.downcast_ref::<redb::StorageError>() {
            Some(e) => classify_storage(e).unwrap_or(self),
            None => self,
        }
    }
}

/// ENOSPC and EDQUOT: no space (or quota) left.
fn is_full(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
        || matches!(e.raw_os_error(), Some(28) | Some(122))
}

/// An error of a file the store keeps beside redb's (a snapshot copy),
/// told apart as redb's are: the disk full, or another I/O error.
pub(crate) fn file_error(what: &str, e: std::io::Error) -> StoreError {
    if is_full(&e) {
        StoreError::DiskFull(format!("{what}: {e}"))
    } else {
        StoreError::Io(format!("{what}: {e}"))
    }
}

/// The typed error for a redb storage error that is the disk's or the
/// file's fault; `None` for others.
fn classify_storage(e: &redb::StorageError) -> Option<StoreError> {
    Some(match e {
        redb::StorageError::Io(io) if is_full(io) => StoreError::DiskFull(io.to_string()),
        redb::StorageError::Io(io) => StoreError::Io(io.to_string()),
        redb::StorageError::PreviousIo => StoreError::Io(e.to_string()),
        redb::StorageError::Corrupted(s) => StoreError::Damaged(s.clone()),
        _ => return None,
    })
}

/// A redb error as a typed store error: the disk (full or failing), a
/// damaged file, or anything else.
pub(crate) fn st(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    match e {
        redb::Error::Io(io) if is_full(&io) => StoreError::DiskFull(io.to_string()),
        redb::Error::Io(io) => StoreError::Io(io.to_string()),
        redb::Error::PreviousIo => StoreError::Io(e.to_string()),
        // A reader that outlived a reopen of the file after an I/O error:
        // the file works again, a new read will do (not a reason to reopen).
        redb::Error::DatabaseClosed => {
            StoreError::Storage("the file was reopened under this reader; read again".into())
        }
        redb::Error::Corrupted(s) => StoreError::Damaged(s),
        e => StoreError::Storage(e.to_string()),
    }
}

/// A stored record that does not decode: the file is damaged there.
pub(crate) fn damaged(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Damaged(format!("{what}: {e}"))
}

/// The message of a caught panic.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".into()
    }
}

/// Runs a read of the file, turning a panic into [`StoreError::Damaged`]:
/// redb trusts the file and may panic on a page damaged outside it (it
/// does not check pages on a plain read); a read must answer with an
/// error, not take the caller's thread down.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(StoreError::Damaged(format!("a read of the file panicked: {}", panic_message(&*p)))),
    }
}
