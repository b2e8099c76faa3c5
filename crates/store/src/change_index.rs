//! The IMAP change index's bounds: one `changes` row per placed message,
//! and per mailbox at most [`crate::StoreOptions::vanished_per_mailbox`]
//! `vanished` rows, counted in `vanished_kept` (the write path keeps them,
//! in `crate::backend`). Here: bringing an older store within them at
//! open, and checking a store against them (`starling verify`, the crash
//! tests).

use crate::backend::{decode_slot, CHANGES, SLOTS, VANISHED, VANISHED_KEPT};
use crate::{st, table, Store, StoreError};
use redb::{ReadableTable, WriteTransaction};
use std::collections::BTreeMap;

/// Brings a store written before format 6 within the change index's
/// bounds, in the caller's transaction: drops superseded change rows,
/// counts each mailbox's expunge rows and forgets the oldest beyond
/// `vanished_max`. Once, at open; its work follows the rows there are.
pub(crate) fn bound_change_index(txn: &WriteTransaction, vanished_max: u32) -> Result<(), redb::Error> {
    let mut changes = txn.open_table(CHANGES)?;
    let slots = txn.open_table(SLOTS)?;
    let mut stale = Vec::new();
    for item in changes.iter()? {
        let (k, uid) = item?;
        let (a, mb, modseq) = k.value();
        let current = match slots.get((a, mb, uid.value()))? {
            Some(v) => decode_slot(v.value()).ok().map(|(m, _)| m),
            None => None,
        };
        if current != Some(modseq) {
            stale.push((a, mb, modseq));
        }
    }
    for k in stale {
        changes.remove(k)?;
    }
    let mut vanished = txn.open_table(VANISHED)?;
    let mut rows: BTreeMap<(u32, u32), Vec<u64>> = BTreeMap::new();
    for item in vanished.iter()? {
        let (a, mb, modseq) = item?.0.value();
        rows.entry((a, mb)).or_default().push(modseq);
    }
    let mut kept = txn.open_table(VANISHED_KEPT)?;
    let max = vanished_max.max(1) as usize;
    for ((a, mb), modseqs) in rows {
        // In key order: oldest first.
        let forget = modseqs.len().saturating_sub(max);
        for &m in &modseqs[..forget] {
            vanished.remove((a, mb, m))?;
        }
        let floor = if forget > 0 { modseqs[forget - 1] } else { 0 };
        kept.insert((a, mb), (floor, (modseqs.len() - forget) as u64))?;
    }
    Ok(())
}

impl Store {
    /// Where the change index disagrees with the messages: a placed
    /// message without its change row at its MODSEQ, a change row of no
    /// such message, a mailbox whose count of expunge rows is wrong or
    /// that keeps one at or below its floor. Empty when consistent.
    pub fn check_change_index(&self) -> Result<Vec<String>, StoreError> {
        self.run(|db| {
            let txn = redb::ReadableDatabase::begin_read(db).map_err(st)?;
            let mut out = Vec::new();
            let mut want = BTreeMap::new();
            if let Some(slots) = table(&txn, SLOTS)? {
                for item in slots.iter().map_err(st)? {
                    let (k, v) = item.map_err(st)?;
                    let (a, mb, uid) = k.value();
                    let (modseq, _) = decode_slot(v.value()).map_err(|e| crate::damaged("message record", e))?;
                    want.insert((a, mb, modseq), uid);
                }
            }
            let mut have = BTreeMap::new();
            if let Some(changes) = table(&txn, CHANGES)? {
                for item in changes.iter().map_err(st)? {
                    let (k, v) = item.map_err(st)?;
                    have.insert(k.value(), v.value());
                }
            }
            for (k, uid) in &want {
                if have.get(k) != Some(uid) {
                    out.push(format!("account {} mailbox {} UID {uid}: no change row at MODSEQ {}", k.0, k.1, k.2));
                }
            }
            for (k, uid) in &have {
                if !want.contains_key(k) {
                    out.push(format!(
                        "account {} mailbox {}: change row of UID {uid} at MODSEQ {} names no message",
                        k.0, k.1, k.2
                    ));
                }
            }
            let mut rows: BTreeMap<(u32, u32), (u64, u64)> = BTreeMap::new();
            if let Some(vanished) = table(&txn, VANISHED)? {
                for item in vanished.iter().map_err(st)? {
                    let (a, mb, modseq) = item.map_err(st)?.0.value();
                    let r = rows.entry((a, mb)).or_insert((u64::MAX, 0));
                    r.0 = r.0.min(modseq);
                    r.1 += 1;
                }
            }
            let mut kept = BTreeMap::new();
            if let Some(t) = table(&txn, VANISHED_KEPT)? {
                for item in t.iter().map_err(st)? {
                    let (k, v) = item.map_err(st)?;
                    kept.insert(k.value(), v.value());
                }
            }
            for (k, (oldest, n)) in &rows {
                let (floor, counted) = kept.get(k).copied().unwrap_or((0, 0));
                if counted != *n {
                    out.push(format!("account {} mailbox {}: {n} expunge rows, counted {counted}", k.0, k.1));
                }
                if *oldest <= floor {
                    out.push(format!(
                        "account {} mailbox {}: an expunge row at {oldest}, at or below the floor {floor}",
                        k.0, k.1
                    ));
                }
            }
            for (k, (_, counted)) in &kept {
                if *counted != 0 && !rows.contains_key(k) {
                    out.push(format!("account {} mailbox {}: no expunge rows, counted {counted}", k.0, k.1));
                }
            }
            Ok(out)
        })
    }
}
