//! Helpers shared by the store's test files.

#![allow(dead_code)]

use starling_model::{ReplicaId, INBOX};
use starling_store::{Store, StoreOptions};
use std::path::Path;

/// 8,000 hex characters from `seed` that compress poorly.
pub fn noise(seed: u64) -> String {
    let mut x = seed + 1;
    (0..1000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:08x}", x as u32)
        })
        .collect()
}

/// A message of about 8 KB that compresses poorly, tagged with its batch
/// (whose number is also its internal date).
pub fn body(batch: u64, i: u64) -> String {
    format!("Subject: batch {batch} msg {i}\r\n\r\n{}\r\n", noise(batch * 1000 + i))
}

/// Appends `batches` × 20 such messages to account `t`'s INBOX.
pub fn fill(store: &Store, batches: u64) {
    for batch in 0..batches {
        store
            .write("t", |b| {
                for i in 0..20 {
                    b.append(INBOX, body(batch, i).as_bytes(), batch as i64, vec![])?;
                }
                Ok(())
            })
            .unwrap();
    }
}

/// Log compaction and body collection with no peers to wait for; every
/// released body is gone after it.
pub fn housekeep(store: &Store) {
    let plan = starling_store::Housekeeping {
        now_ms: 0,
        horizon_ms: u64::MAX,
        peers: &[],
        alive: &[],
        compact_log: true,
        collect_bodies: true,
        batch: 10_000,
    };
    store.housekeep(&plan).unwrap();
    assert!(store.bodies_to_collect().unwrap().is_empty());
}

/// A store (node 42, account `t`) with `batches` × 20 messages of ~8 KB
/// written, nine in ten of them expunged and their bodies collected: most
/// of the file is free.
pub fn sparse_store(path: &Path, batches: u64) -> Store {
    let store = Store::open(path, ReplicaId(42), StoreOptions::default()).unwrap();
    store.add_account("t").unwrap();
    fill(&store, batches);
    let r = store.read("t").unwrap();
    let doomed: Vec<_> =
        r.messages(INBOX, 1, usize::MAX).unwrap().into_iter().filter(|m| m.uid % 10 != 0).map(|m| m.message).collect();
    drop(r);
    store.write("t", |b| Ok(b.replica().expunge(&doomed)?)).unwrap();
    housekeep(&store);
    store
}

/// Opens copies of `image` (an older store) cut by a power failure at each
/// disk operation in turn, up to `max`, until one open runs to its end;
/// after each cut the store opens again and `check` looks at it. Returns
/// the first operation count at which the open completed. An upgrade step
/// at open must leave a store that opens whole at every cut.
pub fn open_cut_at_each_disk_op(
    image: &starling_store::memdisk::MemDisk,
    node: ReplicaId,
    max: u64,
    check: impl Fn(&Store, u64),
) -> Option<u64> {
    for n in 0..max {
        let d = image.durable_copy();
        d.fail_after(Some(n));
        let first = Store::open_on(d.backend(), "mem", node, StoreOptions::default());
        let done = first.is_ok();
        drop(first);
        d.crash();
        d.fail_after(None);
        let store = Store::open_on(d.backend(), "mem", node, StoreOptions::default()).unwrap();
        check(&store, n);
        if done {
            return Some(n);
        }
    }
    None
}
