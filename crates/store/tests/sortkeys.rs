//! Sort keys (`starling_store::sortkeys`): written with the body on every
//! path that stores one (a local append — IMAP APPEND and LMTP — maildir
//! import, an operator's put, a peer's body raw or in stored form — sync
//! and the on-demand fetch of a partial replica), gone with the body when
//! it is collected, built at open for a store of an older format in
//! bounded transactions (a power cut during the build leaves it resumable
//! at the next open), and checked by verify.

mod common;

use redb::{ReadableDatabase, ReadableTable};
use starling_model::{BlobId, ReplicaId, INBOX};
use starling_store::memdisk::MemDisk;
use starling_store::{SortKeys, Store, StoreOptions};
use std::path::Path;

const KEYS: redb::TableDefinition<&[u8; 32], &[u8]> = redb::TableDefinition::new("sort_keys");

fn open(path: &Path) -> Store {
    Store::open(path, ReplicaId(1), StoreOptions::default()).unwrap()
}

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: \"Sender {n}\" <sender{n}@example.org>\r\nTo: you@example.net\r\nSubject: Re: topic {}\r\n\
         Date: Mon, {} Feb 2022 10:00:00 +0100\r\nMessage-ID: <m{n}@x>\r\nReferences: <m{}@x>\r\n\r\nbody {n}\r\n",
        n % 3,
        1 + n % 27,
        n / 2
    )
    .into_bytes()
}

/// A message whose attachment is stored apart (over the part threshold).
fn with_attachment(n: usize, kb: usize) -> Vec<u8> {
    let payload: String = (0..kb * 1024 / 76).map(|i| format!("{:076}\r\n", i * 7 + n)).collect();
    format!(
        "From: a{n}@example.org\r\nSubject: attachment {n}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
         --XX\r\nContent-Type: application/octet-stream\r\n\r\n{payload}--XX--\r\n"
    )
    .into_bytes()
}

/// The keys account `account` reads for `raw`'s body.
fn keys_of(store: &Store, account: &str, raw: &[u8]) -> Option<SortKeys> {
    store
        .read(account)
        .unwrap()
        .sort_keys(&[BlobId::of(raw)], starling_store::sortkeys::Wanted::ALL)
        .unwrap()
        .pop()
        .unwrap()
}

fn assert_keys(store: &Store, account: &str, raw: &[u8], path: &str) {
    assert_eq!(keys_of(store, account, raw), Some(SortKeys::of(raw)), "{path}");
    assert_eq!(store.check_sort_keys().unwrap(), Vec::<String>::new(), "{path}");
}

#[test]
fn every_path_that_stores_a_body_writes_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.redb"));
    a.add_account("u").unwrap();
    // A local append (IMAP APPEND and LMTP both go through `append_body`).
    let local = message(1);
    a.write("u", |b| b.append_body(INBOX, &local, 1, vec![]).map(drop)).unwrap();
    assert_keys(&a, "u", &local, "append");
    let big = with_attachment(1, 400);
    a.write("u", |b| b.append(INBOX, &big, 2, vec![]).map(drop)).unwrap();
    assert_keys(&a, "u", &big, "append, a part stored apart");
    // Maildir import.
    let md = dir.path().join("Maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    let imported = message(2);
    std::fs::write(md.join("cur/1700000000.M1P1.host:2,S"), &imported).unwrap();
    starling_store::maildir::import(&a, "u", &md).unwrap();
    assert_keys(&a, "u", &imported, "maildir import");
    // An operator's put (no message names it yet: the bare check).
    let put = message(3);
    a.put_blobs(&[&put]).unwrap();
    assert_eq!(a.check_sort_keys().unwrap(), Vec::<String>::new(), "put_blobs");

    // A partial replica: B has the messages (A's ops) but not the bodies,
    // so no keys; they come with the bodies, raw or in stored form (sync
    // and the on-demand fetch both hand them to `put_shipped`).
    let b = Store::open(
        &dir.path().join("b.redb"),
        ReplicaId(2),
        StoreOptions { part_threshold: 4096, ..StoreOptions::default() },
    )
    .unwrap();
    b.add_account("u").unwrap();
    let ops = a.ops_since("u", &Default::default()).unwrap();
    b.write("u", |w| w.apply(ops)).unwrap();
    for raw in [&local, &big, &imported] {
        assert_eq!(keys_of(&b, "u", raw), None, "no body, no keys");
    }
    let ship = |raw: &[u8]| (BlobId::of(raw), a.shipped_for(&["u"], BlobId::of(raw)).unwrap().unwrap());
    b.put_shipped(&["u"], vec![ship(&local), ship(&big)]).unwrap();
    assert_keys(&b, "u", &local, "shipped in stored form");
    assert_keys(&b, "u", &big, "shipped in stored form, with its part");
    b.put_shipped(&["u"], vec![(BlobId::of(&imported), starling_store::Shipped::Raw(imported.clone()))]).unwrap();
    assert_keys(&b, "u", &imported, "shipped raw");
}

#[test]
fn collected_bodies_take_their_keys_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("s.redb"));
    s.add_account("t").unwrap();
    let (keep, go) = (message(1), message(2));
    let ids = s.write("t", |b| Ok(vec![b.append(INBOX, &keep, 1, vec![])?, b.append(INBOX, &go, 2, vec![])?])).unwrap();
    s.write("t", |b| Ok(b.replica().expunge(&[ids[1]])?)).unwrap();
    common::housekeep(&s);
    assert_eq!(s.blob(BlobId::of(&go)).unwrap(), None, "collected");
    assert_eq!(s.check_sort_keys().unwrap(), Vec::<String>::new(), "no keys left without their body");
    assert_eq!(keys_of(&s, "t", &keep), Some(SortKeys::of(&keep)));
    assert!(s.verify_contents().is_clean());
}

/// A store at `path` whose account "t" holds `raws` in its INBOX.
fn filled(path: &Path, raws: &[Vec<u8>]) -> Store {
    let s = open(path);
    s.add_account("t").unwrap();
    s.write("t", |b| {
        for (i, r) in raws.iter().enumerate() {
            b.append(INBOX, r, i as i64, vec![])?;
        }
        Ok(())
    })
    .unwrap();
    s
}

/// Turns a store back into format 7: no keys table.
fn to_format_7(db: &redb::Database) {
    let w = db.begin_write().unwrap();
    w.delete_table(KEYS).unwrap();
    w.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
        .unwrap()
        .insert("version", [7u8].as_slice())
        .unwrap();
    w.commit().unwrap();
}

#[test]
fn a_format_7_store_gets_its_keys_at_open_and_verify_sees_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let raws: Vec<Vec<u8>> = (0..30).map(message).chain([with_attachment(5, 400)]).collect();
    // Closed again before the file is changed under it.
    drop(filled(&path, &raws));
    to_format_7(&redb::Database::open(&path).unwrap());
    {
        let s = open(&path);
        assert_eq!(s.check_sort_keys().unwrap(), Vec::<String>::new());
        for r in &raws {
            assert_eq!(keys_of(&s, "t", r), Some(SortKeys::of(r)));
        }
    }
    let version = {
        let db = redb::Database::open(&path).unwrap();
        let r = db.begin_read().unwrap();
        let meta = r.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta")).unwrap();
        let v = meta.get("version").unwrap().unwrap().value()[0];
        v
    };
    assert_eq!(version, 11);
    // A keys row lost (format 11 kept, so nothing rebuilds it): verify says so.
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(KEYS).unwrap().remove(&BlobId::of(&raws[3]).0).unwrap();
        w.commit().unwrap();
    }
    let s = open(&path);
    let found = s.check_sort_keys().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("has no sort keys"), "{found:?}");
    assert!(!s.verify_contents().is_clean());
    // Without its keys the body reads as if it had none stored: `None`.
    assert_eq!(keys_of(&s, "t", &raws[3]), None);
}

/// A power cut at any moment of the keys build of a format-7 store (no
/// keys at all) leaves a store that opens whole: the old format, or the
/// build under way, finished at the next open.
#[test]
fn a_power_cut_during_the_keys_build_of_a_format_7_store_opens_whole() {
    let node = ReplicaId(6);
    let disk = MemDisk::new();
    let raws: Vec<Vec<u8>> = (0..40).map(message).collect();
    {
        let store = Store::open_on(disk.backend(), "mem", node, StoreOptions::default()).unwrap();
        store.add_account("t").unwrap();
        store
            .write("t", |b| {
                for (i, r) in raws.iter().enumerate() {
                    b.append(INBOX, r, i as i64, vec![])?;
                }
                Ok(())
            })
            .unwrap();
    }
    to_format_7(&redb::Database::builder().create_with_backend(disk.backend()).unwrap());
    let image = disk.durable_copy();
    let opened_at = common::open_cut_at_each_disk_op(&image, node, 400, |store, n| {
        assert_eq!(store.check_sort_keys().unwrap(), Vec::<String>::new(), "cut at disk op {n}");
        assert_eq!(keys_of(store, "t", &raws[7]), Some(SortKeys::of(&raws[7])), "cut at disk op {n}");
    });
    assert!(opened_at.is_some_and(|n| n > 0), "the build was cut at least once ({opened_at:?})");
}

/// Many bodies asked for at once are read by one ordered walk of the
/// table: the same answers as one lookup each, in the order asked,
/// duplicates, bodies not stored and bodies the account lacks included.
#[test]
fn a_walk_of_the_table_answers_as_lookups_do() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.redb"));
    let b = Store::open(&dir.path().join("b.redb"), ReplicaId(2), StoreOptions::default()).unwrap();
    a.add_account("u").unwrap();
    b.add_account("u").unwrap();
    let raws: Vec<Vec<u8>> = (0..3000).map(message).collect();
    a.write("u", |w| {
        for (i, r) in raws.iter().enumerate() {
            w.append(INBOX, r, i as i64, vec![])?;
        }
        Ok(())
    })
    .unwrap();
    // B gets the messages and all but every tenth body.
    let ops = a.ops_since("u", &Default::default()).unwrap();
    b.write("u", |w| w.apply(ops)).unwrap();
    let shipped: Vec<_> = raws
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 != 0)
        .map(|(_, r)| (BlobId::of(r), starling_store::Shipped::Raw(r.clone())))
        .collect();
    b.put_shipped(&["u"], shipped).unwrap();
    // Stored for another account only: B's "u" still lacks it.
    b.add_account("other").unwrap();
    b.write("other", |w| w.put_body(&raws[20]).map(drop)).unwrap();
    let mut ids: Vec<BlobId> = raws.iter().rev().map(|r| BlobId::of(r)).collect();
    ids.extend([BlobId::of(&raws[5]), BlobId([7; 32]), BlobId::of(&raws[20])]);
    let all = starling_store::sortkeys::Wanted::ALL;
    for s in [&a, &b] {
        let r = s.read("u").unwrap();
        let walked = r.sort_keys(&ids, all).unwrap();
        let looked_up: Vec<_> = ids.iter().map(|id| r.sort_keys(&[*id], all).unwrap().pop().unwrap()).collect();
        assert_eq!(walked, looked_up);
    }
    let walked = b.read("u").unwrap().sort_keys(&ids, all).unwrap();
    assert_eq!(walked.iter().filter(|k| k.is_none()).count(), 300 + 1 + 1, "every tenth, the unknown id, raws[20]");
    assert_eq!(walked[0], Some(SortKeys::of(&raws[2999])));
}

/// Turns every keys record back into version 1 (formats 8 and 9: no
/// display values, which end the record) and the store into format 9.
fn to_format_9(db: &redb::Database) {
    let w = db.begin_write().unwrap();
    {
        let mut t = w.open_table(KEYS).unwrap();
        let rows: Vec<([u8; 32], Vec<u8>)> =
            t.iter().unwrap().map(|r| r.unwrap()).map(|(k, v)| (*k.value(), v.value().to_vec())).collect();
        for (k, v) in rows {
            let keys = SortKeys::decode(&v).unwrap();
            // Postcard: each display value is its length (one byte here) and its bytes.
            assert!(keys.display_from.len() < 128 && keys.display_to.len() < 128);
            let cut = v.len() - (2 + keys.display_from.len() + keys.display_to.len());
            let mut old = v[..cut].to_vec();
            old[0] = 1;
            assert!(SortKeys::decode(&old).is_err(), "a version 1 record is not read as the current one");
            t.insert(&k, old.as_slice()).unwrap();
        }
    }
    w.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
        .unwrap()
        .insert("version", [9u8].as_slice())
        .unwrap();
    w.commit().unwrap();
}

#[test]
fn a_format_9_store_gets_its_display_values_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let raws: Vec<Vec<u8>> = (0..10).map(message).chain([with_attachment(2, 400)]).collect();
    {
        let s = filled(&path, &raws);
        let keys = keys_of(&s, "t", &raws[4]).unwrap();
        assert_eq!((keys.display_from.as_str(), keys.display_to.as_str()), ("SENDER 4", "YOU@EXAMPLE.NET"));
    }
    to_format_9(&redb::Database::open(&path).unwrap());
    let s = open(&path);
    assert_eq!(s.check_sort_keys().unwrap(), Vec::<String>::new());
    for r in &raws {
        assert_eq!(keys_of(&s, "t", r), Some(SortKeys::of(r)));
    }
    assert_eq!(keys_of(&s, "t", &raws[10]).unwrap().display_from, "A2@EXAMPLE.ORG");
}

#[test]
fn display_values_follow_rfc_5957() {
    let d = |from: &str| starling_store::sortkeys::display_value(format!("From: {from}\r\n\r\n").as_bytes(), "From");
    assert_eq!(d("\"Zed Q\" <a@b>, Other <c@d>"), "ZED Q");
    assert_eq!(d("=?UTF-8?Q?=C3=A9mile?= <e@x>"), "éMILE");
    assert_eq!(d("\"\" <plain@host>"), "PLAIN@HOST");
    assert_eq!(d("bare@host"), "BARE@HOST");
    assert_eq!(d("Undisclosed recipients:;"), "UNDISCLOSED RECIPIENTS");
    assert_eq!(d("<local>"), "LOCAL");
    assert_eq!(starling_store::sortkeys::display_value(b"Subject: x\r\n\r\n", "From"), "");
    let long = d(&format!("\"{}\" <a@b>", "é".repeat(400)));
    assert!(long.len() <= starling_store::sortkeys::DISPLAY_BYTES_MAX && long.starts_with("éé"));
}

const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");

/// What a keys build left in a file: its format, the build's cursor (if
/// under way), and the version byte of every keys record by body id.
type BuildState = (u8, Option<Vec<u8>>, Vec<([u8; 32], u8)>);

fn build_state(db: &redb::Database) -> BuildState {
    let r = db.begin_read().unwrap();
    let meta = r.open_table(META).unwrap();
    let version = meta.get("version").unwrap().unwrap().value()[0];
    let cursor = meta.get("sort_keys_build_after").unwrap().map(|g| g.value().to_vec());
    let records = r
        .open_table(KEYS)
        .unwrap()
        .iter()
        .unwrap()
        .map(|i| i.unwrap())
        .map(|(k, v)| (*k.value(), v.value()[0]))
        .collect();
    (version, cursor, records)
}

/// A store of format 9 with more bodies than one transaction of the
/// build takes: the build runs in bounded transactions (the bound
/// reached: two), and leaves every record current and no cursor.
#[test]
fn the_keys_build_runs_in_bounded_transactions() {
    use starling_store::{SortKeysBuild, SORT_KEYS_PER_TXN};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let n = SORT_KEYS_PER_TXN + 500;
    let raws: Vec<Vec<u8>> = (0..n).map(message).collect();
    drop(filled(&path, &raws));
    to_format_9(&redb::Database::open(&path).unwrap());
    {
        let s = open(&path);
        assert_eq!(s.sort_keys_build(), Some(SortKeysBuild { built: n as u64, transactions: 2 }));
        assert_eq!(s.check_sort_keys().unwrap(), Vec::<String>::new());
        assert_eq!(keys_of(&s, "t", &raws[n - 1]), Some(SortKeys::of(&raws[n - 1])));
    }
    let (version, cursor, records) = build_state(&redb::Database::open(&path).unwrap());
    assert_eq!((version, cursor), (11, None));
    assert_eq!(records.len(), n);
    assert!(records.iter().all(|&(_, v)| v == 2));
    // Opened again: nothing to build.
    assert_eq!(open(&path).sort_keys_build(), None);
}

/// Power cuts spread over the bounded build of a format-9 store (more
/// bodies than one transaction takes): after each, the file holds either
/// the old format untouched, or the current format with the cursor and
/// every record up to the cursor current (a batch is whole or absent), or
/// the finished build; the next open finishes it from the cursor, and the
/// keys are exact. Some cut lands between two batches.
#[test]
fn a_power_cut_during_the_bounded_keys_build_resumes_at_the_next_open() {
    use starling_store::SORT_KEYS_PER_TXN;
    let node = ReplicaId(6);
    let disk = MemDisk::new();
    let n = SORT_KEYS_PER_TXN * 2 + 300;
    let raws: Vec<Vec<u8>> = (0..n).map(message).collect();
    {
        let store = Store::open_on(disk.backend(), "mem", node, StoreOptions::default()).unwrap();
        store.add_account("t").unwrap();
        store
            .write("t", |b| {
                for (i, r) in raws.iter().enumerate() {
                    b.append(INBOX, r, i as i64, vec![])?;
                }
                Ok(())
            })
            .unwrap();
    }
    to_format_9(&redb::Database::builder().create_with_backend(disk.backend()).unwrap());
    let image = disk.durable_copy();
    // The disk operations of a whole open, to spread the cuts over.
    let whole = {
        let d = image.durable_copy();
        let s = Store::open_on(d.backend(), "mem", node, StoreOptions::default()).unwrap();
        assert_eq!(s.sort_keys_build().map(|b| b.transactions), Some(3));
        drop(s);
        d.ops()
    };
    let mut between = 0;
    for k in 1..=16u64 {
        let cut = whole * k / 17;
        let d = image.durable_copy();
        d.fail_after(Some(cut));
        assert!(Store::open_on(d.backend(), "mem", node, StoreOptions::default()).is_err(), "cut at {cut} of {whole}");
        d.crash();
        d.fail_after(None);
        let (version, cursor, records) =
            build_state(&redb::Database::builder().create_with_backend(d.backend()).unwrap());
        match (version, &cursor) {
            (9, None) => assert!(records.iter().all(|&(_, v)| v == 1), "format 9 untouched (cut {cut})"),
            // Format 10 marks the build under way; format 11 follows it in
            // a transaction of its own, before the build's.
            (10 | 11, Some(c)) => {
                let done: Option<[u8; 32]> = (!c.is_empty()).then(|| c.as_slice().try_into().unwrap());
                between += u64::from(done.is_some());
                for &(id, v) in &records {
                    let expect = if done.is_some_and(|d| id <= d) { 2 } else { 1 };
                    assert_eq!(v, expect, "a record up to the cursor is current, one after it old (cut {cut})");
                }
            }
            (11, None) => assert!(records.iter().all(|&(_, v)| v == 2), "format 11 only when built (cut {cut})"),
            other => panic!("cut {cut}: {other:?}"),
        }
        let store = Store::open_on(d.backend(), "mem", node, StoreOptions::default()).unwrap();
        assert_eq!(store.check_sort_keys().unwrap(), Vec::<String>::new(), "cut {cut}");
        for i in [0, n / 2, n - 1] {
            assert_eq!(keys_of(&store, "t", &raws[i]), Some(SortKeys::of(&raws[i])), "cut {cut}");
        }
        drop(store);
        let (version, cursor, records) =
            build_state(&redb::Database::builder().create_with_backend(d.backend()).unwrap());
        assert_eq!((version, cursor, records.len()), (11, None, n), "cut {cut}");
    }
    assert!(between >= 2, "cuts landed between batches ({between} of 16)");
}
