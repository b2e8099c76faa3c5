//! The free-share check behind online file compaction reads every table's
//! pages (O(file): 1.7 GB read for a 1.7 GB store). It runs again only when
//! enough may have been freed since it last ran for the file to pass the
//! threshold: bodies collected and log segments compacted count as freed,
//! and so does the file's growth. Its own test binary: it reads the
//! process's I/O counter, which other tests' threads would move.

mod common;

use common::*;
use starling_model::{ReplicaId, INBOX};
use starling_store::{Store, StoreOptions};

/// Bytes this process has read through system calls (page cache or not).
fn rchar() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).unwrap().trim().parse().unwrap()
}

fn read_by(f: impl FnOnce()) -> u64 {
    let before = rchar();
    f();
    rchar() - before
}

#[test]
fn the_file_is_walked_again_only_when_enough_may_have_been_freed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.redb");
    // A small page cache, so that a walk reads the file.
    let options = StoreOptions { cache_bytes: 256 << 10, file_compact_min_free: 1 << 20, ..Default::default() };
    let store = Store::open(&path, ReplicaId(42), options).unwrap();
    store.add_account("t").unwrap();
    fill(&store, 100);
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 16 << 20, "{len}");

    let first = read_by(|| assert_eq!(store.compact_file(25).unwrap(), None));
    assert!(first > len / 2, "the first check walks the file: {first} bytes read of {len}");
    let again = read_by(|| assert_eq!(store.compact_file(25).unwrap(), None));
    assert!(again < 64 << 10, "nothing freed since: no walk ({again} bytes read)");

    // New mail grows the file by less than a quarter of it: still no walk.
    fill(&store, 5);
    let grown = read_by(|| assert_eq!(store.compact_file(25).unwrap(), None));
    assert!(grown < 64 << 10, "the file grew by a little: no walk ({grown} bytes read)");

    // Nine in ten expunged and their bodies collected: the check walks and
    // the file is compacted.
    let all: Vec<_> =
        store.read("t").unwrap().messages(INBOX, 1, usize::MAX).unwrap().into_iter().map(|m| m.message).collect();
    let gone: Vec<_> = all.iter().enumerate().filter(|(i, _)| i % 10 != 0).map(|(_, m)| *m).collect();
    store.write("t", |b| Ok(b.replica().expunge(&gone)?)).unwrap();
    housekeep(&store);
    let done = store.compact_file(25).unwrap().expect("a walk, then a compaction");
    assert!(done.after < done.before / 3, "{done:?}");
    let stats = store.file_compact_stats();
    assert_eq!((stats.walks, stats.runs), (2, 1), "{stats:?}");
}
