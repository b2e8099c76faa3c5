//! Forgetting an account: this node frees its whole copy of one account
//! (every row of every table, and the bodies only it named go to the body
//! collector), leaving the account untouched on every other node.
//!
//! On disk, in steps, each its own durable transaction:
//!
//! 1. **The marker** ([`Store::forget_account`]): the `accounts` row and
//!    this node's own password of the account (`credentials`) go, a row
//!    `forgetting`: account number → (name, stage, cursor) is written, the
//!    name's count of forgotten copies (`forgotten_copies`) goes up, and
//!    `meta.account_number_max` keeps the number from ever being given
//!    again. From this commit on the account is in no read, no
//!    [`Store::accounts`], no housekeeping; the in-memory account is
//!    dropped (anyone still holding it finds it gone at its next lock or
//!    read).
//! 2. **Freeing**, at most [`FORGET_ROWS_PER_TXN`] rows per transaction
//!    (a constant, whatever the account's size), stage by stage: the
//!    envelopes first (each takes one off the body's count in
//!    `blob_refs`; at the account's last reference its missing-body row
//!    and got mark go, and a stored body no account names any more gets a
//!    candidate row under no account, so the collector deletes it at its
//!    next pass without waiting for any peer: no op of this account will
//!    be applied here again); then the account's candidate rows of the
//!    collector (a scan of `bodies_unreferenced` from a cursor kept in the
//!    marker, since that table is keyed by body), handed over likewise;
//!    then every table keyed by account number, in a fixed order; last, in
//!    one transaction, the account's single rows and the marker.
//!
//! A crash anywhere leaves either the whole account (before the marker
//! commits) or the marker with a stage: [`Store::open`] finishes every
//! marker it finds before it returns (so `starling verify`, which opens
//! the store, never sees a half-freed account), and
//! [`Store::resume_forgetting`] does the same on a running store. Every
//! stage is idempotent: a step that was cut is done again from where the
//! last commit left it.
//!
//! **A deleted account** (its document says so) leaves its name in
//! `purged_deleted`, written by the marker's transaction: the name is not
//! made again here ([`StoreError::AccountPurged`]), and a peer that names
//! it in a session is told it was deleted (`starling-sync`'s `Deleted`),
//! so a peer away when the account was deleted learns of it here.
//!
//! **Coming back.** A name this node forgot may be placed on it again and
//! re-synced. Its copy then numbers its changes as a *fresh replica*
//! ([`copy_replica`]: a hash of the node, the name and how many copies of
//! it this node forgot), with its own automerge actor and MODSEQ tag. So
//! no op id (dot) or automerge change it makes can collide with one the
//! forgotten copy made — those are ops of another replica to it, which it
//! takes from its peers like anyone else's — and a client's MODSEQ from
//! the forgotten copy is not misread as a point of the new one's sequence
//! (it gets a full answer, as from another replica).

use crate::acks::PEER_ACKS;
use crate::backend::*;
use crate::gc::{NO_ACCOUNT, PART_REFS, UNREFERENCED};
use crate::oplog::{SEGMENTS, SEGMENTS_BY_MAILBOX};
use crate::*;
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::ops::Bound;

/// account number → postcard [`Marker`]: the account is being forgotten.
pub(crate) const FORGETTING: TableDefinition<u32, &[u8]> = TableDefinition::new("forgetting");
/// account name → how many copies of it this node has forgotten (the
/// generation of its next copy's replica id, [`copy_replica`]).
pub(crate) const FORGOTTEN: TableDefinition<&str, u32> = TableDefinition::new("forgotten_copies");
/// account name → when this node purged it as deleted (Unix ms): the
/// name is not made again here, and a peer that names it is told
/// ([`Store::was_purged`]). One row per account ever deleted, kept for good.
pub(crate) const PURGED: TableDefinition<&str, u64> = TableDefinition::new("purged_deleted");
/// `meta` key: the highest account number ever given (big-endian `u32`).
const NUMBER_MAX_KEY: &str = "account_number_max";

/// Rows freed (or, in `bodies_unreferenced`, looked at) per transaction
/// while forgetting: a 1,000,000-op account never makes one huge
/// transaction. A constant, whatever the account holds.
pub const FORGET_ROWS_PER_TXN: usize = 4096;

/// Leftover accounts `check` names per table before it stops looking.
const LEFTOVERS_REPORTED_MAX: usize = 16;

const MARKER_VERSION: u8 = 1;

/// What is left to do for an account being forgotten.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    version: u8,
    name: String,
    /// [`STAGE_ENVELOPES`], [`STAGE_CANDIDATES`], then the prefix tables.
    stage: u8,
    /// The last `bodies_unreferenced` key looked at.
    cursor: Option<([u8; 32], u32)>,
}

const STAGE_ENVELOPES: u8 = 0;
const STAGE_CANDIDATES: u8 = 1;
/// The first stage of [`drain_prefix`]'s tables.
const STAGE_PREFIX: u8 = 2;
/// Tables keyed by (account, …) freed after the two body stages.
const PREFIX_TABLES: u8 = 18;
const STAGE_SINGLES: u8 = STAGE_PREFIX + PREFIX_TABLES;

/// What forgetting an account did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forgot {
    /// Rows deleted (every table; candidate rows looked at and kept are
    /// not counted).
    pub rows: u64,
    /// Bodies no account names any more, handed to the body collector
    /// (deleted, with their parts only they named, at its next pass).
    pub bodies_released: u64,
    /// Transactions it took (the marker's included).
    pub transactions: u64,
}

impl Forgot {
    fn add(&mut self, other: Forgot) {
        self.rows += other.rows;
        self.bodies_released += other.bodies_released;
        self.transactions += other.transactions;
    }
}

/// Why [`Store::forget_account`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    /// No account of that name here (never was, or already forgotten).
    #[error("no account {0:?} here")]
    NoSuchAccount(String),
    /// The first step (the marker) did not commit: nothing changed, the
    /// account is still here whole.
    #[error("account {account:?} not forgotten, nothing changed: {source}")]
    NotStarted {
        /// The account.
        account: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The account is forgotten (in no read any more) but freeing its
    /// rows stopped: the rest is done at the next open of the store or
    /// [`Store::resume_forgetting`].
    #[error("account {account:?} is forgotten, but freeing its data stopped (resumed at the next open): {source}")]
    Unfinished {
        /// The account.
        account: String,
        /// Why.
        #[source]
        source: StoreError,
    },
}

/// This node's replica id in copy number `generation` of account `name`:
/// the node's own id for the first copy (0: the name was never forgotten
/// here), else a fresh id from a hash of the node, the name and the
/// generation, never 0 and never the node's own.
pub fn copy_replica(node: ReplicaId, name: &str, generation: u32) -> ReplicaId {
    if generation == 0 {
        return node;
    }
    let mut h = blake3::Hasher::new();
    h.update(b"starling: a copy of an account made again after this node forgot it\0");
    h.update(&node.0.to_be_bytes());
    h.update(&generation.to_be_bytes());
    h.update(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    let id = u64::from_be_bytes(b);
    ReplicaId(if id == 0 || id == node.0 { id ^ 0x5a5a_5a5a_5a5a_5a5a } else { id })
}

fn encode(m: &Marker) -> Result<Vec<u8>, StoreError> {
    assert_eq!(m.version, MARKER_VERSION);
    assert!(m.stage <= STAGE_SINGLES, "forget stage {} out of range", m.stage);
    postcard::to_stdvec(m).map_err(|e| StoreError::Storage(e.to_string()))
}

fn decode(bytes: &[u8]) -> Result<Marker, StoreError> {
    let m: Marker = postcard::from_bytes(bytes).map_err(|e| damaged("forgetting marker", e))?;
    if m.version != MARKER_VERSION || m.stage > STAGE_SINGLES {
        return Err(damaged("forgetting marker", format!("version {} stage {}", m.version, m.stage)));
    }
    Ok(m)
}

/// The highest account number given so far, counting accounts being
/// forgotten and forgotten ones (0: none).
pub(crate) fn numbers_used_max(r: &redb::ReadTransaction) -> Result<u32, StoreError> {
    let mut max = 0;
    if let Some(t) = table(r, FORGETTING)? {
        if let Some(last) = t.last().map_err(st)? {
            max = last.0.value();
        }
    }
    if let Some(t) = table(r, META)? {
        if let Some(v) = t.get(NUMBER_MAX_KEY).map_err(st)? {
            let b: [u8; 4] = v.value().try_into().map_err(|_| damaged("meta account_number_max", "not 4 bytes"))?;
            max = max.max(u32::from_be_bytes(b));
        }
    }
    Ok(max)
}

/// How many copies of `name` this node has forgotten.
pub(crate) fn generation(r: &redb::ReadTransaction, name: &str) -> Result<u32, StoreError> {
    Ok(match table(r, FORGOTTEN)? {
        Some(t) => t.get(name).map_err(st)?.map_or(0, |g| g.value()),
        None => 0,
    })
}

/// Step 1: the marker, in `w`. `deleted`: the account was deleted, and is
/// purged at that time (Unix ms); its name is recorded as such.
fn mark(w: &WriteTransaction, name: &str, number: u32, deleted: Option<u64>) -> Result<(), StoreError> {
    let removed = w.open_table(ACCOUNTS).map_err(st)?.remove(name).map_err(st)?.map(|g| g.value());
    // The in-memory map and the file agree on the number (both written by
    // one transaction of `add_account_as`): forgetting another account's
    // rows would be silent data loss.
    assert_eq!(removed, Some(number), "account {name:?}: the file and memory disagree on its number");
    w.open_table(CREDENTIALS).map_err(st)?.remove(name).map_err(st)?;
    // Parts of a snapshot of it from a peer (a few rows, at most 2 GiB).
    crate::spool::drop_account(w, name)?;
    let mut forgotten = w.open_table(FORGOTTEN).map_err(st)?;
    let generation = forgotten.get(name).map_err(st)?.map_or(0, |g| g.value());
    forgotten.insert(name, generation.checked_add(1).expect("forgotten copies of one name fit in u32")).map_err(st)?;
    drop(forgotten);
    if let Some(at) = deleted {
        w.open_table(PURGED).map_err(st)?.insert(name, at).map_err(st)?;
    }
    let mut meta = w.open_table(META).map_err(st)?;
    let max = match meta.get(NUMBER_MAX_KEY).map_err(st)? {
        Some(v) => {
            u32::from_be_bytes(v.value().try_into().map_err(|_| damaged("meta account_number_max", "not 4 bytes"))?)
        }
        None => 0,
    };
    meta.insert(NUMBER_MAX_KEY, max.max(number).to_be_bytes().as_slice()).map_err(st)?;
    drop(meta);
    let marker = Marker { version: MARKER_VERSION, name: name.to_string(), stage: STAGE_ENVELOPES, cursor: None };
    w.open_table(FORGETTING).map_err(st)?.insert(number, encode(&marker)?.as_slice()).map_err(st)?;
    Ok(())
}

/// Whether `name` is recorded as purged as deleted.
pub(crate) fn purged(r: &redb::ReadTransaction, name: &str) -> Result<bool, StoreError> {
    Ok(match table(r, PURGED)? {
        Some(t) => t.get(name).map_err(st)?.is_some(),
        None => false,
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A stored body that no account names any more becomes a candidate of
/// no account: the collector deletes it at its next pass (nothing of the
/// forgotten account will name it here again). Returns whether it did.
fn release_if_unowned(w: &WriteTransaction, blob: [u8; 32]) -> Result<bool, StoreError> {
    let stored = w.open_table(BLOBS).map_err(st)?.get(&blob).map_err(st)?.is_some();
    if !stored || w.open_table(BLOB_REFS).map_err(st)?.range((blob, 0)..=(blob, u32::MAX)).map_err(st)?.next().is_some()
    {
        return Ok(false);
    }
    let empty = postcard::to_stdvec(&VersionVector::new()).map_err(|e| StoreError::Storage(e.to_string()))?;
    w.open_table(UNREFERENCED).map_err(st)?.insert((blob, NO_ACCOUNT), empty.as_slice()).map_err(st)?;
    Ok(true)
}

/// Up to `budget` envelopes of the account, with their body references.
fn drop_envelopes(w: &WriteTransaction, number: u32, budget: usize, out: &mut Forgot) -> Result<usize, StoreError> {
    let mut blobs: Vec<[u8; 32]> = Vec::with_capacity(budget.min(FORGET_ROWS_PER_TXN));
    {
        let mut t = w.open_table(ENVELOPES).map_err(st)?;
        let mut it = t.extract_from_if((number, 0u64)..=(number, u64::MAX), |_, _| true).map_err(st)?;
        while blobs.len() < budget {
            let Some(item) = it.next() else { break };
            let (_, v) = item.map_err(st)?;
            blobs.push(decode_envelope(v.value()).map_err(|e| damaged("envelope", e))?.blob.0);
        }
    }
    let n = blobs.len();
    for blob in blobs {
        let mut refs = w.open_table(BLOB_REFS).map_err(st)?;
        let count = refs.get((blob, number)).map_err(st)?.map_or(0, |g| g.value());
        if count > 1 {
            refs.insert((blob, number), count - 1).map_err(st)?;
            continue;
        }
        refs.remove((blob, number)).map_err(st)?;
        drop(refs);
        // The account's last reference: its own marks of the body go.
        w.open_table(MISSING).map_err(st)?.remove((number, blob)).map_err(st)?;
        w.open_table(GOT).map_err(st)?.remove((number, blob)).map_err(st)?;
        w.open_table(UNREFERENCED).map_err(st)?.remove((blob, number)).map_err(st)?;
        out.bodies_released += u64::from(release_if_unowned(w, blob)?);
    }
    out.rows += n as u64;
    Ok(n)
}

/// Looks at up to `budget` candidate rows after the cursor; the
/// account's are handed over. Returns how many it looked at.
fn drop_candidates(
    w: &WriteTransaction,
    number: u32,
    budget: usize,
    cursor: &mut Option<([u8; 32], u32)>,
    out: &mut Forgot,
) -> Result<usize, StoreError> {
    let mut mine = Vec::new();
    let mut looked = 0;
    {
        let t = w.open_table(UNREFERENCED).map_err(st)?;
        let from = match *cursor {
            Some(c) => Bound::Excluded(c),
            None => Bound::Unbounded,
        };
        for item in t.range::<([u8; 32], u32)>((from, Bound::Unbounded)).map_err(st)? {
            if looked >= budget {
                break;
            }
            let key = item.map_err(st)?.0.value();
            looked += 1;
            *cursor = Some(key);
            if key.1 == number {
                mine.push(key.0);
            }
        }
    }
    for blob in mine {
        w.open_table(UNREFERENCED).map_err(st)?.remove((blob, number)).map_err(st)?;
        w.open_table(GOT).map_err(st)?.remove((number, blob)).map_err(st)?;
        out.rows += 1;
        out.bodies_released += u64::from(release_if_unowned(w, blob)?);
    }
    Ok(looked)
}

/// Deletes up to `$budget` rows of `$def` in `$range`; evaluates to how many.
macro_rules! drain {
    ($w:expr, $def:expr, $range:expr, $budget:expr) => {{
        let mut t = $w.open_table($def).map_err(st)?;
        let mut it = t.extract_from_if($range, |_, _| true).map_err(st)?;
        let mut n = 0usize;
        while n < $budget {
            let Some(item) = it.next() else { break };
            item.map_err(st)?;
            n += 1;
        }
        n
    }};
}

/// Deletes up to `budget` of the account's rows of prefix table `i`.
fn drain_prefix(w: &WriteTransaction, i: u8, a: u32, budget: usize) -> Result<usize, StoreError> {
    const H: [u8; 32] = [0xff; 32];
    const L: [u8; 32] = [0; 32];
    const M: u64 = u64::MAX;
    const N: u32 = u32::MAX;
    Ok(match i {
        0 => drain!(w, GOT, (a, L)..=(a, H), budget),
        1 => drain!(w, MISSING, (a, L)..=(a, H), budget),
        2 => drain!(w, SEGMENTS, (a, 0u64, 0u64)..=(a, M, M), budget),
        3 => drain!(w, SEGMENTS_BY_MAILBOX, (a, 0u64, 0u64, 0u64, 0u64)..=(a, M, M, M, M), budget),
        4 => drain!(w, LOCS, (a, 0u64)..=(a, M), budget),
        // Was `tombstones`, dropped whole since format 11.
        5 => 0,
        6 => drain!(w, SLOTS, (a, 0u32, 0u32)..=(a, N, N), budget),
        7 => drain!(w, SIDE, (a, 0u32, 0u32, 0u64, 0u16)..=(a, N, N, M, u16::MAX), budget),
        8 => drain!(w, SIDE_BY_MSG, (a, 0u32, 0u64, 0u32)..=(a, N, M, N), budget),
        9 => drain!(w, RETRACTED, (a, 0u32, 0u32, 0u64, 0u16)..=(a, N, N, M, u16::MAX), budget),
        10 => drain!(w, PINNED, (a, 0u32, 0u32, 0u64, 0u16)..=(a, N, N, M, u16::MAX), budget),
        11 => drain!(w, FORCED, (a, 0u32, 0u32, 0u64, 0u16)..=(a, N, N, M, u16::MAX), budget),
        12 => drain!(w, DEAD, (a, 0u32, 0u32)..=(a, N, N), budget),
        13 => drain!(w, CHANGES, (a, 0u32, 0u64)..=(a, N, M), budget),
        14 => drain!(w, VANISHED, (a, 0u32, 0u64)..=(a, N, M), budget),
        15 => drain!(w, VANISHED_KEPT, (a, 0u32)..=(a, N), budget),
        16 => drain!(w, MAILBOX_COUNTS, (a, 0u32)..=(a, N), budget),
        17 => drain!(w, PEER_ACKS, (a, 0u64)..=(a, M), budget),
        _ => unreachable!("prefix table {i}"),
    })
}

/// The last step: the account's single rows and the marker.
fn drop_singles(w: &WriteTransaction, a: u32, out: &mut Forgot) -> Result<(), StoreError> {
    let mut n = 0u64;
    for def in [HEADERS, DOCS, LOG_FLOOR] {
        n += u64::from(w.open_table(def).map_err(st)?.remove(a).map_err(st)?.is_some());
    }
    n += u64::from(w.open_table(PENDING_INCARNATION).map_err(st)?.remove(a).map_err(st)?.is_some());
    n += u64::from(w.open_table(ACCOUNT_COUNTS).map_err(st)?.remove(a).map_err(st)?.is_some());
    n += u64::from(w.open_table(ACCOUNT_BYTES).map_err(st)?.remove(a).map_err(st)?.is_some());
    let marker = w.open_table(FORGETTING).map_err(st)?.remove(a).map_err(st)?.is_some();
    assert!(marker, "account {a}: the last forgetting step without its marker");
    out.rows += n;
    Ok(())
}

/// One transaction of step 2 for account `number`: at most
/// [`FORGET_ROWS_PER_TXN`] rows. Returns whether the account is gone
/// (the marker with it), and what the step did; `None` if there is no
/// marker (nothing to do).
pub(crate) fn step(db: &Database, number: u32) -> Result<Option<(bool, Forgot)>, StoreError> {
    let w = db.begin_write().map_err(st)?;
    let Some(mut m) =
        w.open_table(FORGETTING).map_err(st)?.get(number).map_err(st)?.map(|g| decode(g.value())).transpose()?
    else {
        return Ok(None);
    };
    let mut out = Forgot { transactions: 1, ..Forgot::default() };
    let mut budget = FORGET_ROWS_PER_TXN;
    let mut done = false;
    // Each round either uses up budget or moves to the next stage: at most
    // `budget` + stages rounds.
    while budget > 0 {
        let n = match m.stage {
            STAGE_ENVELOPES => drop_envelopes(&w, number, budget, &mut out)?,
            STAGE_CANDIDATES => drop_candidates(&w, number, budget, &mut m.cursor, &mut out)?,
            s if s < STAGE_SINGLES => {
                let n = drain_prefix(&w, s - STAGE_PREFIX, number, budget)?;
                out.rows += n as u64;
                n
            }
            _ => {
                drop_singles(&w, number, &mut out)?;
                done = true;
                break;
            }
        };
        assert!(n <= budget, "a stage did more than its budget");
        if n < budget {
            m.stage += 1;
        }
        budget -= n;
    }
    if !done {
        w.open_table(FORGETTING).map_err(st)?.insert(number, encode(&m)?.as_slice()).map_err(st)?;
    }
    w.commit().map_err(st)?;
    Ok(Some((done, out)))
}

/// The accounts being forgotten: (number, name).
pub(crate) fn pending(r: &redb::ReadTransaction) -> Result<Vec<(u32, String)>, StoreError> {
    let mut out = Vec::new();
    if let Some(t) = table(r, FORGETTING)? {
        for item in t.iter().map_err(st)? {
            let (k, v) = item.map_err(st)?;
            out.push((k.value(), decode(v.value())?.name));
        }
    }
    Ok(out)
}

/// Finishes every account being forgotten (at open).
pub(crate) fn resume(db: &Database) -> Result<Forgot, StoreError> {
    let mut total = Forgot::default();
    let numbers = pending(&db.begin_read().map_err(st)?)?;
    for (number, _) in numbers {
        while let Some((done, out)) = step(db, number)? {
            total.add(out);
            if done {
                break;
            }
        }
    }
    Ok(total)
}

/// Rows of account numbers that are neither an account nor being
/// forgotten (leftovers of a forgotten account), and markers of accounts
/// still being forgotten: every one, in words (empty: none).
pub(crate) fn check(r: &redb::ReadTransaction) -> Result<Vec<String>, StoreError> {
    let mut live = BTreeSet::new();
    if let Some(t) = table(r, ACCOUNTS)? {
        for item in t.iter().map_err(st)? {
            live.insert(item.map_err(st)?.1.value());
        }
    }
    let mut out = Vec::new();
    for (number, name) in pending(r)? {
        out.push(format!("account {name:?} (number {number}): being forgotten, not finished"));
    }
    // The first number at or after each account, by skipping from one
    // number to the next: O(accounts) lookups per table.
    macro_rules! leftovers {
        ($name:expr, $def:expr, $lo:expr) => {{
            if let Some(t) = table(r, $def)? {
                let mut from = 0u32;
                let mut reported = 0;
                for _ in 0..=live.len() + LEFTOVERS_REPORTED_MAX {
                    let Some(item) = t.range($lo(from)..).map_err(st)?.next() else { break };
                    let number = item.map_err(st)?.0.value().0;
                    if !live.contains(&number) {
                        out.push(format!("table {}: rows of account number {number}, which is no account", $name));
                        reported += 1;
                        if reported >= LEFTOVERS_REPORTED_MAX {
                            break;
                        }
                    }
                    let Some(next) = number.checked_add(1) else { break };
                    from = next;
                }
            }
        }};
    }
    leftovers!("envelopes", ENVELOPES, |a| (a, 0u64));
    leftovers!("bodies_got", GOT, |a| (a, [0u8; 32]));
    leftovers!("missing_bodies", MISSING, |a| (a, [0u8; 32]));
    leftovers!("oplog_segments", SEGMENTS, |a| (a, 0u64, 0u64));
    leftovers!("oplog_segments_by_mailbox", SEGMENTS_BY_MAILBOX, |a| (a, 0u64, 0u64, 0u64, 0u64));
    leftovers!("locs", LOCS, |a| (a, 0u64));
    leftovers!("slots", SLOTS, |a| (a, 0u32, 0u32));
    leftovers!("side_claims", SIDE, |a| (a, 0u32, 0u32, 0u64, 0u16));
    leftovers!("side_by_message", SIDE_BY_MSG, |a| (a, 0u32, 0u64, 0u32));
    leftovers!("retracted", RETRACTED, |a| (a, 0u32, 0u32, 0u64, 0u16));
    leftovers!("pinned", PINNED, |a| (a, 0u32, 0u32, 0u64, 0u16));
    leftovers!("forced", FORCED, |a| (a, 0u32, 0u32, 0u64, 0u16));
    leftovers!("spent_uids", DEAD, |a| (a, 0u32, 0u32));
    leftovers!("changes", CHANGES, |a| (a, 0u32, 0u64));
    leftovers!("vanished", VANISHED, |a| (a, 0u32, 0u64));
    leftovers!("vanished_kept", VANISHED_KEPT, |a| (a, 0u32));
    leftovers!("mailbox_counts", MAILBOX_COUNTS, |a| (a, 0u32));
    leftovers!("peer_acks", PEER_ACKS, |a| (a, 0u64));
    // Tables with one row per account.
    macro_rules! singles {
        ($name:expr, $def:expr) => {{
            if let Some(t) = table(r, $def)? {
                for item in t.iter().map_err(st)? {
                    let number = item.map_err(st)?.0.value();
                    if !live.contains(&number) {
                        out.push(format!("table {}: a row of account number {number}, which is no account", $name));
                    }
                }
            }
        }};
    }
    singles!("replica_headers", HEADERS);
    singles!("account_docs", DOCS);
    singles!("log_floor", LOG_FLOOR);
    singles!("pending_incarnation", PENDING_INCARNATION);
    singles!("account_counts", ACCOUNT_COUNTS);
    singles!("account_bytes", ACCOUNT_BYTES);
    // Keyed by body: every row.
    if let Some(t) = table(r, BLOB_REFS)? {
        for item in t.iter().map_err(st)? {
            let (blob, number) = item.map_err(st)?.0.value();
            if !live.contains(&number) {
                out.push(format!(
                    "table blob_refs: body {:?} named by account number {number}, which is no account",
                    BlobId(blob)
                ));
            }
        }
    }
    if let Some(t) = table(r, UNREFERENCED)? {
        for item in t.iter().map_err(st)? {
            let (blob, number) = item.map_err(st)?.0.value();
            if number != NO_ACCOUNT && !live.contains(&number) {
                out.push(format!(
                    "table bodies_unreferenced: body {:?} released by account number {number}, which is no account",
                    BlobId(blob)
                ));
            }
        }
    }
    let _ = PART_REFS; // counted by `gc::check` from the body records
    Ok(out)
}

impl Store {
    /// Forgets `name` on this node: frees every row of its copy and hands
    /// the bodies only it named to the body collector, leaving the account
    /// untouched on every other node (see the module notes for the steps
    /// and the crash story). The account leaves [`Store::accounts`] and
    /// every read at the first transaction; the rest runs here in
    /// transactions of at most [`FORGET_ROWS_PER_TXN`] rows, other
    /// accounts' writes going on between them. Nothing checks that peers
    /// hold what this copy holds: the caller decides that (the node's
    /// `forget_if_safe`).
    pub fn forget_account(&self, name: &str) -> Result<Forgot, ForgetError> {
        // Serialised with account creation: the number stays unused.
        let adding = self.adding.lock().unwrap_or_else(PoisonError::into_inner);
        let acct = self.account(name).map_err(|_| ForgetError::NoSuchAccount(name.into()))?;
        let number = acct.number;
        let marked = self.run(|db| {
            // Waits for a write of the account in flight; a later one finds
            // it gone.
            let state = self.lock(&acct, db)?;
            let published = acct.published.write().unwrap_or_else(PoisonError::into_inner);
            let deleted = published.names.tree.deleted.then(unix_ms);
            acct.gone.store(true, Ordering::SeqCst);
            let result = (|| {
                let w = db.begin_write().map_err(st)?;
                mark(&w, name, number, deleted)?;
                w.commit().map_err(st)
            })();
            if result.is_err() {
                acct.gone.store(false, Ordering::SeqCst);
            }
            drop(published);
            drop(state);
            result
        });
        if let Err(source) = marked {
            return Err(match source {
                StoreError::NoSuchAccount(_) => ForgetError::NoSuchAccount(name.into()),
                source => ForgetError::NotStarted { account: name.into(), source },
            });
        }
        self.core.db.committed();
        {
            let mut map = self.accounts.write().unwrap_or_else(PoisonError::into_inner);
            if map.get(name).is_some_and(|a| Arc::ptr_eq(a, &acct)) {
                map.remove(name);
            }
        }
        drop(adding);
        self.core.acks.lock().unwrap_or_else(PoisonError::into_inner).retain(|(n, _), _| *n != number);
        self.core.purged_by.lock().unwrap_or_else(PoisonError::into_inner).retain(|(n, _)| *n != number);
        self.forget_live(number);
        self.forget_kept(name);
        let mut out = Forgot { transactions: 1, ..Forgot::default() };
        out.add(
            self.finish_forgetting(number)
                .map_err(|source| ForgetError::Unfinished { account: name.into(), source })?,
        );
        Ok(out)
    }

    /// Runs step 2 for `number` to its end.
    fn finish_forgetting(&self, number: u32) -> Result<Forgot, StoreError> {
        let mut total = Forgot::default();
        while let Some((done, out)) = self.run(|db| step(db, number))? {
            self.core.db.committed();
            // Rows of every kind, not counted in bytes.
            self.note_freed(u64::MAX);
            total.add(out);
            if done {
                break;
            }
        }
        Ok(total)
    }

    /// Finishes forgetting every account whose forgetting was cut short
    /// (a disk error, a crash: [`Store::open`] does this too).
    pub fn resume_forgetting(&self) -> Result<Forgot, StoreError> {
        let pending = self.run(|db| pending(&redb::ReadableDatabase::begin_read(db).map_err(st)?))?;
        let mut total = Forgot::default();
        for (number, _) in pending {
            total.add(self.finish_forgetting(number)?);
        }
        Ok(total)
    }

    /// Whether this node forgot `name` and holds no copy of it now: a
    /// pinned peer's list of accounts should not make it again by itself
    /// (the node's start leaves it out); `add_account` still does.
    pub fn was_forgotten(&self, name: &str) -> Result<bool, StoreError> {
        if self.accounts.read().unwrap_or_else(PoisonError::into_inner).contains_key(name) {
            return Ok(false);
        }
        self.run(|db| Ok(generation(&redb::ReadableDatabase::begin_read(db).map_err(st)?, name)? > 0))
    }

    /// Whether this node purged `name` as a deleted account (and holds no
    /// copy of it): the name is not made again here, and a peer naming it
    /// is told it was deleted.
    pub fn was_purged(&self, name: &str) -> Result<bool, StoreError> {
        if self.accounts.read().unwrap_or_else(PoisonError::into_inner).contains_key(name) {
            return Ok(false);
        }
        self.run(|db| purged(&redb::ReadableDatabase::begin_read(db).map_err(st)?, name))
    }

    /// The accounts this node purged as deleted, with when (Unix ms), in
    /// name order: one row per account ever deleted here.
    pub fn purged_names(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.run(|db| {
            let r = redb::ReadableDatabase::begin_read(db).map_err(st)?;
            let Some(t) = table(&r, PURGED)? else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            for item in t.iter().map_err(st)? {
                let (k, v) = item.map_err(st)?;
                out.push((k.value().to_string(), v.value()));
            }
            Ok(out)
        })
    }

    /// Whether this node has ever forgotten an account (a store whose
    /// accounts were all forgotten is not a fresh one).
    pub fn has_forgotten(&self) -> Result<bool, StoreError> {
        self.run(|db| {
            let r = redb::ReadableDatabase::begin_read(db).map_err(st)?;
            Ok(match table(&r, FORGOTTEN)? {
                Some(t) => t.first().map_err(st)?.is_some(),
                None => false,
            })
        })
    }

    /// Names of the accounts being forgotten (normally none: see
    /// [`Store::resume_forgetting`]).
    pub fn forgetting(&self) -> Result<Vec<String>, StoreError> {
        let pending = self.run(|db| pending(&redb::ReadableDatabase::begin_read(db).map_err(st)?))?;
        Ok(pending.into_iter().map(|(_, name)| name).collect())
    }

    /// Rows left of accounts that are no account (leftovers of forgetting)
    /// and forgetting not finished, in words (empty: none). Part of
    /// `starling verify`.
    pub fn check_forgotten(&self) -> Result<Vec<String>, StoreError> {
        self.run(|db| check(&redb::ReadableDatabase::begin_read(db).map_err(st)?))
    }
}
