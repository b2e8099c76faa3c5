//! The op log, in segments: each row holds up to [`SEGMENT_OPS_MAX`]
//! consecutive ops of one replica, packed (zstd when smaller), keyed by the
//! counter of its first op. A batch of applied ops costs one row write per
//! replica and segment instead of one per op, and reading "ops of R after N"
//! reads the segment holding N+1 and those after it, so the cost stays
//! proportional to what is returned (plus at most one partial segment).
//!
//! A second table lists, per mailbox, the segments holding ops that touched
//! it (account-document ops under a pseudo-mailbox), for partial peers.

use crate::damaged;
use crate::{blob, st, StoreError};
use redb::{ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};
use starling_model::{AppliedOp, MailboxId, Op, VersionVector};
use std::collections::{BTreeMap, BTreeSet};

/// Ops per segment at most.
pub const SEGMENT_OPS_MAX: usize = 512;
/// Largest decoded segment accepted.
const SEGMENT_BYTES_MAX: usize = 256 << 20;

/// (account, replica, first counter) → packed `Vec<(Op, mailboxes)>`.
pub(crate) const SEGMENTS: TableDefinition<(u32, u64, u64), &[u8]> = TableDefinition::new("oplog_segments");
/// (account, mailbox replica, mailbox counter, replica, first counter) → ():
/// the segment holds at least one op that touched the mailbox.
pub(crate) const SEGMENTS_BY_MAILBOX: TableDefinition<(u32, u64, u64, u64, u64), ()> =
    TableDefinition::new("oplog_segments_by_mailbox");
/// Pseudo-mailbox under which account-document ops are indexed.
const ACCOUNT_OPS: (u64, u64) = (0, u64::MAX);

pub(crate) type Logged = (Op, Vec<MailboxId>);

fn decode(bytes: &[u8]) -> Result<Vec<Logged>, StoreError> {
    let raw = blob::unpack(bytes, SEGMENT_BYTES_MAX).map_err(|e| damaged("op log segment", e))?;
    postcard::from_bytes(&raw).map_err(|e| damaged("op log segment", e))
}

fn mailbox_keys(ops: &[Logged]) -> BTreeSet<(u64, u64)> {
    let mut keys = BTreeSet::new();
    for (_, mailboxes) in ops {
        if mailboxes.is_empty() {
            keys.insert(ACCOUNT_OPS);
        }
        keys.extend(mailboxes.iter().map(|m| (m.0.replica.0, m.0.counter)));
    }
    keys
}

/// Appends the ops applied in one transaction.
pub(crate) fn append(txn: &WriteTransaction, account: u32, applied: Vec<AppliedOp>) -> Result<(), StoreError> {
    let mut by_replica: BTreeMap<u64, Vec<Logged>> = BTreeMap::new();
    for a in applied {
        by_replica.entry(a.op.dot.replica.0).or_default().push((a.op, a.mailboxes.into_vec()));
    }
    let mut segments = txn.open_table(SEGMENTS).map_err(st)?;
    let mut index = txn.open_table(SEGMENTS_BY_MAILBOX).map_err(st)?;
    for (replica, ops) in by_replica {
        for chunk in ops.chunks(SEGMENT_OPS_MAX) {
            let first = chunk[0].0.dot.counter;
            let bytes = blob::pack(&postcard::to_stdvec(chunk).map_err(|e| StoreError::Storage(e.to_string()))?);
            segments.insert((account, replica, first), bytes.as_slice()).map_err(st)?;
            for (mr, mc) in mailbox_keys(chunk) {
                index.insert((account, mr, mc, replica, first), ()).map_err(st)?;
            }
        }
    }
    Ok(())
}

/// First counter of the segment that holds `counter` (or the first after it).
fn segment_start(
    t: &redb::ReadOnlyTable<(u32, u64, u64), &[u8]>,
    account: u32,
    replica: u64,
    counter: u64,
) -> Result<u64, StoreError> {
    let before = t.range((account, replica, 0)..=(account, replica, counter)).map_err(st)?.next_back();
    Ok(match before {
        Some(item) => item.map_err(st)?.0.value().2,
        None => counter,
    })
}

/// Ops in `ranges` (replica, first counter, last counter, inclusive), each
/// replica's in counter order; with `mailboxes`, only ops that touched one
/// of them or the account document.
pub(crate) fn read(
    r: &ReadTransaction,
    account: u32,
    ranges: &[(u64, u64, u64)],
    mailboxes: Option<&[MailboxId]>,
) -> Result<Vec<Op>, StoreError> {
    let segments = r.open_table(SEGMENTS).map_err(st)?;
    let mut out = Vec::new();
    for &(replica, from, last) in ranges {
        let start = segment_start(&segments, account, replica, from)?;
        let firsts: Vec<u64> = match mailboxes {
            None => {
                let mut v = Vec::new();
                for item in segments.range((account, replica, start)..=(account, replica, last)).map_err(st)? {
                    v.push(item.map_err(st)?.0.value().2);
                }
                v
            }
            Some(mbs) => {
                let index = r.open_table(SEGMENTS_BY_MAILBOX).map_err(st)?;
                let mut set = BTreeSet::new();
                for (mr, mc) in mbs.iter().map(|m| (m.0.replica.0, m.0.counter)).chain([ACCOUNT_OPS]) {
                    for item in
                        index.range((account, mr, mc, replica, start)..=(account, mr, mc, replica, last)).map_err(st)?
                    {
                        set.insert(item.map_err(st)?.0.value().4);
                    }
                }
                set.into_iter().collect()
            }
        };
        for first in firsts {
            let Some(v) = segments.get((account, replica, first)).map_err(st)? else { continue };
            for (op, touched) in decode(v.value())? {
                let c = op.dot.counter;
                let wanted = match mailboxes {
                    None => true,
                    Some(mbs) => touched.is_empty() || touched.iter().any(|t| mbs.contains(t)),
                };
                if c >= from && c <= last && wanted {
                    out.push(op);
                }
            }
        }
    }
    Ok(out)
}

/// Every logged entry (op and the mailboxes it touched) of `ranges`, for a
/// snapshot's log tail, handed to `f` a segment at a time (at most
/// [`SEGMENT_OPS_MAX`] entries), each replica's in counter order.
pub(crate) fn for_each_logged(
    r: &ReadTransaction,
    account: u32,
    ranges: &[(u64, u64, u64)],
    mut f: impl FnMut(Vec<Logged>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let segments = r.open_table(SEGMENTS).map_err(st)?;
    for &(replica, from, last) in ranges {
        let start = segment_start(&segments, account, replica, from)?;
        for item in segments.range((account, replica, start)..=(account, replica, last)).map_err(st)? {
            let (_, v) = item.map_err(st)?;
            let chunk: Vec<Logged> =
                decode(v.value())?.into_iter().filter(|(op, _)| (from..=last).contains(&op.dot.counter)).collect();
            if !chunk.is_empty() {
                f(chunk)?;
            }
        }
    }
    Ok(())
}

/// Segments [`compact`] reads before deleting them: it holds at most this
/// many segments' keys at once, however long the log below the floor.
pub(crate) const COMPACT_PAGE: usize = 256;

/// Drops whole segments whose ops all lie within `held_by_all`; returns
/// what it dropped and raises `floor` to the last counter dropped. Reads
/// and deletes [`COMPACT_PAGE`] segments at a time.
pub(crate) fn compact(
    w: &WriteTransaction,
    account: u32,
    held_by_all: &VersionVector,
    floor: &mut VersionVector,
) -> Result<Compacted, StoreError> {
    let mut segments: Table<(u32, u64, u64), &[u8]> = w.open_table(SEGMENTS).map_err(st)?;
    let mut index = w.open_table(SEGMENTS_BY_MAILBOX).map_err(st)?;
    let mut dropped = Compacted::default();
    for (replica, upto) in held_by_all.iter() {
        loop {
            let mut doomed = Vec::with_capacity(COMPACT_PAGE);
            let mut reached = false;
            for item in segments.range((account, replica.0, 0)..=(account, replica.0, upto)).map_err(st)? {
                if doomed.len() == COMPACT_PAGE {
                    break;
                }
                let (k, v) = item.map_err(st)?;
                let ops = decode(v.value())?;
                let last = ops.last().map(|o| o.0.dot.counter).unwrap_or(0);
                if last > upto {
                    reached = true;
                    break;
                }
                doomed.push((k.value().2, last, mailbox_keys(&ops), ops.len()));
                dropped.bytes += v.value().len() as u64;
            }
            let full = doomed.len() == COMPACT_PAGE;
            for (first, last, keys, n) in doomed {
                segments.remove((account, replica.0, first)).map_err(st)?;
                for (mr, mc) in keys {
                    index.remove((account, mr, mc, replica.0, first)).map_err(st)?;
                }
                dropped.ops += n as u64;
                floor.observe(starling_model::Dot::new(replica, last));
            }
            // The deleted segments are gone: the next page starts where
            // this one ended.
            if reached || !full {
                break;
            }
        }
    }
    Ok(dropped)
}

/// What [`compact`] dropped.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Compacted {
    /// Ops.
    pub ops: u64,
    /// Their segments' bytes, as stored.
    pub bytes: u64,
}

/// One replica's ops still to ship, read a segment at a time.
struct Cursor {
    replica: u64,
    /// Next counter to read.
    next: u64,
    last: u64,
    buf: std::collections::VecDeque<Op>,
}

/// The next chunk of ops a peer holding `since` lacks, in causal order: each
/// op's predecessor and deps are in `since` or earlier in the chunk, so the
/// receiver applies the chunk as it comes and never buffers. At most
/// `ops_max` ops and, past the first op, about `bytes_max` bytes (encoded
/// size before compression). `ranges` are what `since` lacks of this log
/// (replica, first counter, last counter). Memory: one segment per replica
/// plus the chunk, whatever the log's length.
pub(crate) fn read_chunk(
    r: &ReadTransaction,
    account: u32,
    ranges: &[(u64, u64, u64)],
    since: &VersionVector,
    ops_max: usize,
    bytes_max: usize,
) -> Result<Vec<Op>, StoreError> {
    let segments = r.open_table(SEGMENTS).map_err(st)?;
    let mut cursors: Vec<Cursor> = ranges
        .iter()
        .map(|&(replica, from, last)| Cursor { replica, next: from, last, buf: Default::default() })
        .collect();
    let fill = |c: &mut Cursor| -> Result<(), StoreError> {
        // Segments hold consecutive counters: the one holding `next`, then
        // the following ones until an op at or after `next` turns up.
        let mut start = segment_start(&segments, account, c.replica, c.next)?;
        while c.buf.is_empty() && c.next <= c.last {
            let Some(item) =
                segments.range((account, c.replica, start)..=(account, c.replica, c.last)).map_err(st)?.next()
            else {
                return Err(StoreError::LogGap { replica: c.replica, counter: c.next });
            };
            let (k, v) = item.map_err(st)?;
            let first = k.value().2;
            let ops = decode(v.value())?;
            let end = ops.last().map_or(first, |o| o.0.dot.counter);
            c.buf.extend(ops.into_iter().map(|(op, _)| op).filter(|op| (c.next..=c.last).contains(&op.dot.counter)));
            start = end + 1;
            if c.buf.is_empty() && start > c.last {
                return Err(StoreError::LogGap { replica: c.replica, counter: c.next });
            }
        }
        Ok(())
    };
    let mut frontier = since.clone();
    let mut out = Vec::new();
    let mut bytes = 0usize;
    loop {
        let mut progressed = false;
        for c in cursors.iter_mut() {
            loop {
                if out.len() >= ops_max || (bytes >= bytes_max && !out.is_empty()) {
                    return Ok(out);
                }
                if c.buf.is_empty() {
                    fill(c)?;
                }
                let Some(op) = c.buf.front() else { break };
                let ready =
                    frontier.get(op.dot.replica) + 1 == op.dot.counter && op.deps.iter().all(|d| frontier.contains(*d));
                if !ready {
                    break;
                }
                let op = c.buf.pop_front().expect("front exists");
                c.next = op.dot.counter + 1;
                frontier.observe(op.dot);
                bytes +=
                    postcard::experimental::serialized_size(&op).map_err(|e| StoreError::Storage(e.to_string()))?;
                out.push(op);
                progressed = true;
            }
        }
        if !progressed {
            if cursors.iter().any(|c| !c.buf.is_empty()) {
                // Every head waits for an op this log does not hold above
                // `since`: the log is not causally closed.
                let c = cursors.iter().find(|c| !c.buf.is_empty()).expect("one waits");
                return Err(StoreError::LogGap { replica: c.replica, counter: c.next });
            }
            return Ok(out);
        }
    }
}
