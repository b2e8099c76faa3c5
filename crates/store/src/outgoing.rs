//! Snapshots being sent, kept on disk so that a transfer that broke off
//! resumes from where the peer holds it even after this node restarted.
//!
//! Beside the store's file, in `<file>.snapshots/`: per copy
//! `<peer>-<id>.snap` (the snapshot, hex names) and `<peer>-<id>.meta`
//! (postcard: the account, the version the copy covers, its length). A
//! copy is written under a temporary name, flushed to disk and renamed;
//! the meta is written to a temporary name, flushed and renamed last, then
//! the directory is flushed. So a meta names a whole
//! copy, and a copy without its meta (a crash between the two) or a
//! temporary file is deleted at open. At most [`SNAPSHOTS_KEPT`] copies
//! are loaded at open, the newest; the others are deleted.

use crate::snapshot::{Kept, SnapshotCopy, SNAPSHOTS_KEPT};
use crate::StoreError;
use starling_model::VersionVector;
use std::collections::{BTreeSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a `.meta` file holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    account: String,
    covers: VersionVector,
    len: u64,
}

/// Largest `.meta` file read at open (an account name and a version vector).
const META_BYTES_MAX: u64 = 1 << 20;

fn io_error(e: std::io::Error) -> StoreError {
    crate::error::file_error("kept snapshot copy", e)
}

/// The directory of the copies kept for the store file `path`.
pub(crate) fn dir_of(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".snapshots");
    path.with_file_name(name)
}

fn name(peer: u64, id: u64) -> String {
    format!("{peer:016x}-{id:016x}")
}

/// A new file in `dir` (made first) to write a copy into, under a
/// temporary name until [`persist`].
pub(crate) fn create(dir: &Path) -> Result<tempfile::NamedTempFile, StoreError> {
    std::fs::create_dir_all(dir).map_err(io_error)?;
    tempfile::NamedTempFile::new_in(dir).map_err(io_error)
}

/// Gives the copy written to `tmp` its name, for `peer` and `id`, with its
/// meta; returns the file and the path of the copy.
pub(crate) fn persist(
    dir: &Path,
    tmp: tempfile::NamedTempFile,
    peer: u64,
    id: u64,
    (account, covers, len): (&str, &VersionVector, u64),
) -> Result<(std::fs::File, PathBuf), StoreError> {
    tmp.as_file().sync_all().map_err(io_error)?;
    let snap = dir.join(format!("{}.snap", name(peer, id)));
    let file = tmp.persist(&snap).map_err(|e| io_error(e.error))?;
    let meta = postcard::to_stdvec(&Meta { account: account.to_string(), covers: covers.clone(), len })
        .map_err(|e| StoreError::Snapshot(e.to_string()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_error)?;
    tmp.write_all(&meta).map_err(io_error)?;
    tmp.as_file().sync_all().map_err(io_error)?;
    tmp.persist(snap.with_extension("meta")).map_err(|e| io_error(e.error))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_error)?;
    Ok((file, snap))
}

/// Deletes a kept copy's files (its meta first: a copy without one is
/// deleted at the next open anyway).
pub(crate) fn forget(snap: &Path) {
    let _ = std::fs::remove_file(snap.with_extension("meta"));
    let _ = std::fs::remove_file(snap);
}

/// The copies kept in `dir` for accounts still in `accounts`, oldest
/// first, at most [`SNAPSHOTS_KEPT`] and one per peer and account;
/// everything else in `dir` is deleted.
pub(crate) fn load(dir: &Path, accounts: &BTreeSet<String>) -> VecDeque<Kept> {
    let Ok(entries) = std::fs::read_dir(dir) else { return VecDeque::new() };
    let mut found = Vec::new();
    let mut files = Vec::new();
    for e in entries.flatten() {
        files.push(e.path());
    }
    for path in &files {
        if path.extension().is_some_and(|x| x == "meta") {
            if let Some(k) = read_one(path, accounts) {
                found.push(k);
            }
        }
    }
    // Newest last; one per (peer, account), the newest; at most the bound.
    found.sort_by_key(|(mtime, _)| *mtime);
    let mut seen = BTreeSet::new();
    let mut kept: Vec<Kept> = Vec::new();
    for (_, k) in found.into_iter().rev() {
        if kept.len() < SNAPSHOTS_KEPT && seen.insert((k.peer, k.account.clone())) {
            kept.push(k);
        }
    }
    kept.reverse();
    let keep: BTreeSet<PathBuf> = kept.iter().filter_map(|k| k.path.clone()).collect();
    for path in files {
        let snap = path.with_extension("snap");
        if !keep.contains(&snap) {
            let _ = std::fs::remove_file(&path);
        }
    }
    kept.into()
}

/// The copy a `.meta` file names, if it is whole and of an account here.
fn read_one(meta: &Path, accounts: &BTreeSet<String>) -> Option<(std::time::SystemTime, Kept)> {
    let stem = meta.file_stem()?.to_str()?;
    let (peer, id) = stem.split_once('-')?;
    let (peer, id) = (u64::from_str_radix(peer, 16).ok()?, u64::from_str_radix(id, 16).ok()?);
    if std::fs::metadata(meta).ok()?.len() > META_BYTES_MAX {
        return None;
    }
    let m: Meta = postcard::from_bytes(&std::fs::read(meta).ok()?).ok()?;
    if !accounts.contains(&m.account) {
        return None;
    }
    let snap = meta.with_extension("snap");
    let file = std::fs::File::open(&snap).ok()?;
    let md = file.metadata().ok()?;
    if md.len() != m.len || m.len == 0 {
        return None;
    }
    let copy = Arc::new(SnapshotCopy::from_file(file, m.len, m.covers));
    Some((md.modified().ok()?, Kept { peer, account: m.account, id, copy, path: Some(snap) }))
}
