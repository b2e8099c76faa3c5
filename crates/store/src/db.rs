//! The redb handle, and reopening it after an I/O failure.
//!
//! After a failed write (a full disk, an I/O error), redb fails every later
//! call with "previous I/O error" until the database is closed and opened
//! again. The store does that by itself: an operation whose error came from
//! the disk marks the handle broken; the next operation (this one first)
//! closes the file once no operation holds it and opens it again, with a
//! back-off between attempts (100 ms doubling to 10 s, reset by the next
//! commit) so that a disk that is still full does not make every call pay a
//! reopen. Opening replays redb's recovery, so memory never runs ahead of
//! the file: every account reloads its in-memory state from disk before
//! its next use.

use crate::StoreError;
use redb::Database;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Opens the database again (same file, same options).
pub(crate) type Reopen = Box<dyn Fn() -> Result<Database, String> + Send + Sync>;

/// First wait between reopen attempts.
pub const REOPEN_DELAY_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between reopen attempts.
pub const REOPEN_DELAY_MAX: Duration = Duration::from_secs(10);

pub(crate) struct Db {
    /// `None` while closed after an I/O failure and not yet reopened.
    current: RwLock<Option<Arc<Database>>>,
    /// How to open it again; `None` for a store on a backend the store
    /// cannot reopen by itself ([`crate::Store::open_on`]).
    reopen: Option<Reopen>,
    /// An operation failed on the disk: reopen before the next one.
    broken: AtomicBool,
    /// The back-off runs (a reopen was tried since the last commit).
    backing_off: AtomicBool,
    retry: Mutex<Retry>,
    /// Bumped by every reopen: accounts loaded in an older epoch reload.
    epoch: AtomicU64,
    /// Read views ([`crate::Reader`]) open now: each holds a redb read
    /// transaction after its operation let go of the database.
    views: AtomicU64,
    reopens: AtomicU64,
    attempts: AtomicU64,
}

/// What [`Db::exclusive`] did.
pub(crate) enum Exclusive<T> {
    /// It ran; its result.
    Ran(T),
    /// Operations still held the database after the wait, or the file is
    /// closed: it did not run.
    Busy,
    /// It panicked; the file is closed and reopens on the next operation.
    Panicked,
}

struct Retry {
    next: Option<Instant>,
    delay: Duration,
}

impl Db {
    pub(crate) fn new(db: Database, reopen: Option<Reopen>) -> Db {
        Db {
            current: RwLock::new(Some(Arc::new(db))),
            reopen,
            broken: AtomicBool::new(false),
            backing_off: AtomicBool::new(false),
            retry: Mutex::new(Retry { next: None, delay: REOPEN_DELAY_FIRST }),
            epoch: AtomicU64::new(0),
            views: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
        }
    }

    /// The database for one operation (hold it no longer than that: a
    /// reopen waits until no operation holds the old one). After a disk
    /// failure, reopens it first if the back-off allows.
    pub(crate) fn get(&self) -> Result<Arc<Database>, StoreError> {
        if self.broken.load(Ordering::Acquire) {
            self.try_reopen();
        }
        match &*self.current.read().unwrap_or_else(PoisonError::into_inner) {
            Some(db) => Ok(db.clone()),
            None => {
                Err(StoreError::Io("the store file is closed after an I/O error; reopening it (with back-off)".into()))
            }
        }
    }

    /// A read view opened (call while holding the database, so that
    /// [`Db::exclusive`] sees it).
    pub(crate) fn view_opened(&self) {
        self.views.fetch_add(1, Ordering::AcqRel);
    }

    /// A read view was dropped.
    pub(crate) fn view_closed(&self) {
        self.views.fetch_sub(1, Ordering::AcqRel);
    }

    /// Which opening of the file this is (0 for the first).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// How many times the file was reopened after an I/O failure.
    pub(crate) fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::Relaxed)
    }

    /// How many times a reopen was tried (each failed one waits longer).
    pub(crate) fn reopen_attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Looks at an operation's error (the operation must have let go of
    /// its database): one from the disk makes the handle broken and tries
    /// a reopen now if the back-off allows.
    pub(crate) fn note(&self, e: &StoreError) {
        if e.is_io() {
            self.broken.store(true, Ordering::Release);
            self.try_reopen();
        }
    }

    /// A write committed: the disk works; the next failure starts the
    /// back-off over.
    pub(crate) fn committed(&self) {
        if self.backing_off.load(Ordering::Relaxed) {
            let mut retry = self.retry.lock().unwrap_or_else(PoisonError::into_inner);
            *retry = Retry { next: None, delay: REOPEN_DELAY_FIRST };
            self.backing_off.store(false, Ordering::Relaxed);
        }
    }

    /// Runs `f` with the database to itself: operations that start
    /// meanwhile wait, and `f` runs once those in flight let go of it and
    /// every read view is closed, waiting at most `wait` for them. [`Exclusive::Busy`] if they did
    /// not (or the file is closed after an I/O error). A panic in `f`
    /// closes the file for a reopen, as an I/O error does.
    pub(crate) fn exclusive<T>(&self, wait: Duration, f: impl FnOnce(&mut Database) -> T) -> Exclusive<T> {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let Some(mut db) = current.take() else { return Exclusive::Busy };
        let deadline = Instant::now() + wait;
        let mut owned = loop {
            let idle = self.views.load(Ordering::Acquire) == 0;
            match if idle { Arc::try_unwrap(db) } else { Err(db) } {
                Ok(owned) => break owned,
                Err(held) if Instant::now() >= deadline => {
                    *current = Some(held);
                    return Exclusive::Busy;
                }
                Err(held) => {
                    db = held;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut owned))) {
            Ok(out) => {
                *current = Some(Arc::new(owned));
                Exclusive::Ran(out)
            }
            Err(_) => {
                drop(owned);
                self.broken.store(true, Ordering::Release);
                Exclusive::Panicked
            }
        }
    }

    fn try_reopen(&self) {
        let Some(reopen) = &self.reopen else { return };
        // One thread reopens; the others go on (and fail fast) meanwhile.
        let mut retry = match self.retry.try_lock() {
            Ok(r) => r,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if !self.broken.load(Ordering::Acquire) {
            return; // another thread did it
        }
        let now = Instant::now();
        if retry.next.is_some_and(|t| now < t) {
            return;
        }
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(db) = current.take() {
            match Arc::try_unwrap(db) {
                // Closes the file; redb leaves it for the next open to recover.
                Ok(db) => drop(db),
                Err(db) => {
                    // An operation in flight still holds it: it will fail
                    // and come back here when it is done.
                    *current = Some(db);
                    return;
                }
            }
        }
        retry.next = Some(now + retry.delay);
        retry.delay = (retry.delay * 2).min(REOPEN_DELAY_MAX);
        self.backing_off.store(true, Ordering::Relaxed);
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if let Ok(db) = reopen() {
            *current = Some(Arc::new(db));
            self.epoch.fetch_add(1, Ordering::AcqRel);
            self.reopens.fetch_add(1, Ordering::Relaxed);
            self.broken.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Db {
        let disk = crate::memdisk::MemDisk::new();
        Db::new(Database::builder().create_with_backend(disk.backend()).unwrap(), None)
    }

    #[test]
    fn exclusive_waits_for_operations_in_flight_at_most_the_wait() {
        let db = db();
        let held = db.get().unwrap();
        let started = Instant::now();
        assert!(matches!(db.exclusive(Duration::from_millis(50), |_| ()), Exclusive::Busy));
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(held);
        assert!(matches!(db.exclusive(Duration::from_millis(50), |_| 7), Exclusive::Ran(7)));
        db.get().expect("given back");
    }

    #[test]
    fn exclusive_waits_for_open_views() {
        let db = db();
        db.view_opened();
        assert!(matches!(db.exclusive(Duration::from_millis(10), |_| ()), Exclusive::Busy));
        db.view_closed();
        assert!(matches!(db.exclusive(Duration::from_millis(10), |_| ()), Exclusive::Ran(())));
    }

    #[test]
    fn a_panic_while_exclusive_closes_the_file_for_a_reopen() {
        let db = db();
        let out = db.exclusive(Duration::from_millis(10), |_| panic!("inside"));
        assert!(matches!(out, Exclusive::<()>::Panicked));
        assert!(db.broken.load(Ordering::Acquire));
        assert!(db.get().is_err(), "closed (this one has no way to reopen)");
    }
}
