//! Giving back the file's free pages (redb's `compact`), at open and while
//! the node runs.
//!
//! Copy-on-write and deletions leave free pages in the file; redb reuses
//! them but never shrinks the file by itself. Compacting moves the pages
//! in use to the front and truncates the rest. It needs the database to
//! itself: at open nothing else holds it; online, [`Store::compact_file`]
//! makes every store operation that starts meanwhile wait (a pause, as
//! long as the compaction) and gives up, to try again later, when an
//! operation or a read view does not let go in time. A crash in the middle
//! leaves a file redb recovers at the next open: its compaction commits in
//! steps, each one durable.
//!
//! [`Store::table_sizes`] tells what the pages in use hold, table by
//! table.

use crate::db::Exclusive;
use crate::*;
use redb::Database;
use std::path::Path;
use std::time::{Duration, Instant};

/// Free bytes below which the file is not compacted (by default, see
/// [`StoreOptions::file_compact_min_free`]).
pub const FILE_COMPACT_MIN_FREE: u64 = 8 << 20;

/// How long an online compaction waits for the operations in flight to
/// let go of the database (new ones wait meanwhile) before giving up.
pub const FILE_COMPACT_WAIT: Duration = Duration::from_millis(500);

/// Most passes of redb's `compact` one compaction makes (each moves what
/// it can; one or two reach the end).
const COMPACT_ROUNDS_MAX: usize = 8;

/// Longest the free-share check is skipped on its bound alone (see
/// [`Store::compact_file`]): what the bound does not count (rows of
/// expunged messages' metadata, change rows, redb's own fragmentation) is
/// looked at within a day.
pub const FREE_CHECK_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// What the last free-share check found, and the bytes the store deleted
/// since it opened: the bound that lets [`Store::compact_file`] skip the
/// check.
#[derive(Debug, Default)]
pub(crate) struct FreeWatch {
    last: Option<Checked>,
    /// Bytes deleted since open, as stored (bodies and parts collected,
    /// log segments compacted); saturated when an unknown amount was (an
    /// account forgotten).
    freed: u64,
}

#[derive(Debug)]
struct Checked {
    /// The file's length and the bytes its tables used then.
    len: u64,
    used: u64,
    /// [`FreeWatch::freed`] then.
    freed: u64,
    at: Instant,
}

impl FreeWatch {
    /// Most bytes that can be free in a file of `len` now: what was free
    /// at the last check, plus what was deleted since, plus what the file
    /// grew by (`None`: never checked, or too long ago).
    fn free_bound(&self, len: u64) -> Option<u64> {
        let last = self.last.as_ref().filter(|c| c.at.elapsed() < FREE_CHECK_MAX_AGE)?;
        Some(
            last.len
                .saturating_sub(last.used)
                .saturating_add(self.freed.saturating_sub(last.freed))
                .saturating_add(len.saturating_sub(last.len)),
        )
    }

    fn checked(&mut self, len: u64, used: u64) {
        self.last = Some(Checked { len, used, freed: self.freed, at: Instant::now() });
    }
}

/// The file's length, bytes (a store on another backend is told how to
/// read it with [`Store::with_size_probe`]).
pub(crate) type SizeProbe = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// A compaction of the store file (redb's `compact`): its size before and
/// after, and how long it took (online: how long every store operation
/// waited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileCompaction {
    /// File bytes before.
    pub before: u64,
    /// File bytes after.
    pub after: u64,
    /// Milliseconds it took.
    pub millis: u64,
}

/// Online compactions since open (for status and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileCompactStats {
    /// Compactions that ran.
    pub runs: u64,
    /// Tries left for later because the store was in use.
    pub busy: u64,
    /// Free-share checks that read the tables (the others were skipped:
    /// not enough could have been freed since the last).
    #[serde(default)]
    pub walks: u64,
    /// Milliseconds store operations waited for them, in total.
    pub pause_ms: u64,
}

/// Why an online compaction did not run or did not finish. The store is
/// usable after each; nothing stored is lost.
#[derive(Debug, thiserror::Error)]
pub enum FileCompactError {
    /// An operation, a read view (an IMAP command's) or a transaction was
    /// still open after [`FILE_COMPACT_WAIT`]: try again later.
    #[error("the store is in use; compaction left for later")]
    Busy,
    /// The store does not know its file's length (a backend without a
    /// size probe): it cannot tell how much is free.
    #[error("the store's size is unknown")]
    NoSize,
    /// Reading or writing the file failed (the compaction stopped where it
    /// was; what it did is durable and consistent).
    #[error("compacting the file: {0}")]
    Io(String),
    /// redb panicked; the file is closed and reopens on the next operation.
    #[error("compacting the file: redb panicked; the file is reopened")]
    Panicked,
}

impl Store {
    /// Compacts the file now if at least `percent` of it (and
    /// [`StoreOptions::file_compact_min_free`] bytes) is free pages: `Ok(None)` when it
    /// is not, or `percent` is 100 or more. Every store operation that
    /// starts meanwhile waits for it; see [`FileCompactError`] for when it
    /// does not run.
    ///
    /// Counting the free pages reads every table's pages (O(file)), so it
    /// is skipped while not enough can be free: at most what was free at
    /// the last count, plus the bytes deleted since (bodies collected, log
    /// segments compacted; anything once an account is forgotten), plus
    /// what the file grew by. At least once per [`FREE_CHECK_MAX_AGE`] it
    /// counts anyway.
    pub fn compact_file(&self, percent: u8) -> Result<Option<FileCompaction>, FileCompactError> {
        if percent >= 100 {
            return Ok(None);
        }
        let size = self.size_probe.as_ref().ok_or(FileCompactError::NoSize)?;
        let before = size().ok_or(FileCompactError::NoSize)?;
        let min_free = self.options.file_compact_min_free;
        let bound = self.free_watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner).free_bound(before);
        if bound.is_some_and(|free| !enough_free(before, free, percent, min_free)) {
            return Ok(None);
        }
        let used =
            self.run(|db| used_bytes(db).map_err(StoreError::Io)).map_err(|e| FileCompactError::Io(e.to_string()))?;
        self.free_watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner).checked(before, used);
        self.file_stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).walks += 1;
        if !enough_free(before, before.saturating_sub(used), percent, min_free) {
            return Ok(None);
        }
        let started = Instant::now();
        let outcome = self.core.db.exclusive(FILE_COMPACT_WAIT, compact);
        let millis = started.elapsed().as_millis() as u64;
        let mut stats = self.file_stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        stats.pause_ms += millis;
        match outcome {
            Exclusive::Ran(Ok(())) => {
                stats.runs += 1;
                // The tables hold what they held; the file is that now.
                let after = size().unwrap_or(before);
                self.free_watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner).checked(after, used);
            }
            Exclusive::Ran(Err(redb::CompactionError::TransactionInProgress)) | Exclusive::Busy => {
                stats.busy += 1;
                return Err(FileCompactError::Busy);
            }
            Exclusive::Ran(Err(e)) => return Err(FileCompactError::Io(e.to_string())),
            Exclusive::Panicked => return Err(FileCompactError::Panicked),
        }
        Ok(Some(FileCompaction { before, after: size().unwrap_or(before), millis }))
    }

    /// Online compactions since open.
    pub fn file_compact_stats(&self) -> FileCompactStats {
        *self.file_stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts `bytes` deleted from the file's tables (`u64::MAX`: an
    /// unknown amount), for [`Store::compact_file`]'s bound.
    pub(crate) fn note_freed(&self, bytes: u64) {
        let mut watch = self.free_watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        watch.freed = watch.freed.saturating_add(bytes);
    }

    /// The file's length, bytes (`None` for a backend without a size
    /// probe).
    pub fn file_bytes(&self) -> Option<u64> {
        self.size_probe.as_ref().and_then(|f| f())
    }

    /// Tells a store on a backend other than a file ([`Store::open_on`])
    /// how to read its length, so that [`Store::compact_file`] can run.
    pub fn with_size_probe(mut self, probe: impl Fn() -> u64 + Send + Sync + 'static) -> Store {
        self.size_probe = Some(Box::new(move || Some(probe())));
        self
    }
}

/// One table of the file: its rows and the bytes they take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSize {
    /// The table's name (`docs/design.md` lists them).
    pub name: String,
    /// Rows.
    pub rows: u64,
    /// Bytes of keys and values.
    pub stored: u64,
    /// With redb's overhead: branch pages and fragmentation.
    pub bytes: u64,
}

impl Store {
    /// Every table's rows and bytes, largest first (`starling verify`
    /// prints them). Reads each table's tree, not its rows.
    pub fn table_sizes(&self) -> Result<Vec<TableSize>, StoreError> {
        let mut out = self.run(|db| tables(db).map_err(StoreError::Io))?;
        out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
        Ok(out)
    }
}

/// Every table's rows and bytes, under a read view (writers go on).
fn tables(db: &Database) -> Result<Vec<TableSize>, String> {
    use redb::{ReadableDatabase, ReadableTableMetadata, TableHandle};
    let r = db.begin_read().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for handle in r.list_tables().map_err(|e| e.to_string())? {
        let name = handle.name().to_string();
        let t = r.open_untyped_table(handle).map_err(|e| e.to_string())?;
        let s = t.stats().map_err(|e| e.to_string())?;
        let bytes = s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes();
        out.push(TableSize { name, rows: t.len().map_err(|e| e.to_string())?, stored: s.stored_bytes(), bytes });
    }
    Ok(out)
}

/// Bytes of the file the tables use (their pages, with redb's overhead in
/// them), under a read view: writers go on meanwhile. redb's database
/// statistics (a write transaction's) count the allocated pages exactly,
/// but held up every writer while they walked the file, which takes as
/// long either way: 4.6–4.9 s for a 1.7 GB file with the page cache
/// dropped, 1.7 s warm. What the tables' count leaves out (redb's own
/// trees: 57–430 KB on the files measured) is taken as free, so the free
/// share is at most that much over.
fn used_bytes(db: &Database) -> Result<u64, String> {
    Ok(tables(db)?.iter().map(|t| t.bytes).sum())
}

fn enough_free(len: u64, free: u64, percent: u8, min_free: u64) -> bool {
    free >= min_free && free.saturating_mul(100) >= len.saturating_mul(u64::from(percent))
}

fn compact(db: &mut Database) -> Result<(), redb::CompactionError> {
    for _ in 0..COMPACT_ROUNDS_MAX {
        if !db.compact()? {
            break;
        }
    }
    Ok(())
}

/// At open: compacts the file when sparse enough (see
/// [`StoreOptions::file_compact_free_percent`]).
pub(crate) fn compact_at_open(
    db: &mut Database,
    path: &Path,
    options: &StoreOptions,
) -> Result<Option<FileCompaction>, String> {
    let percent = options.file_compact_free_percent;
    if percent >= 100 {
        return Ok(None);
    }
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).map_err(|e| e.to_string());
    let before = len(path)?;
    let free = before.saturating_sub(used_bytes(db)?);
    if !enough_free(before, free, percent, options.file_compact_min_free) {
        return Ok(None);
    }
    let started = Instant::now();
    compact(db).map_err(|e| e.to_string())?;
    Ok(Some(FileCompaction { before, after: len(path)?, millis: started.elapsed().as_millis() as u64 }))
}
