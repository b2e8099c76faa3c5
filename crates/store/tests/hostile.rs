//! The store against a hostile world: damaged bytes in the file are errors
//! (never wrong bytes, never a panic), a full disk heals by itself once
//! space returns, and one account's write neither blocks other accounts'
//! reads nor, by panicking, breaks later calls.

use starling_model::{BlobId, ReplicaId, INBOX};
use starling_store::memdisk::MemDisk;
use starling_store::verify::{self, Integrity};
use starling_store::{Store, StoreError, StoreOptions};
use std::process::Command;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODE: ReplicaId = ReplicaId(0x5106);

fn open(path: &std::path::Path) -> Store {
    Store::open(path, NODE, StoreOptions::default()).unwrap()
}

fn message(n: usize) -> Vec<u8> {
    format!("From: a@example.org\r\nSubject: m{n}\r\n\r\nbody {n}\r\n").into_bytes()
}

use starling_model::testkit::incompressible as noise;

/// A message whose body is `payload`, kept inline (one piece).
fn with_payload(payload: &[u8]) -> Vec<u8> {
    let mut raw = b"From: a@example.org\r\nSubject: noise\r\n\r\n".to_vec();
    raw.extend_from_slice(payload);
    raw
}

/// A message with a binary attachment larger than the part threshold.
fn with_part(payload: &[u8]) -> Vec<u8> {
    let mut raw = b"From: a@example.org\r\nSubject: part\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
        --XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        .to_vec();
    raw.extend_from_slice(payload);
    raw.extend_from_slice(b"\r\n--XX--\r\n");
    raw
}

/// Flips one byte of the file where `needle` is stored (verbatim).
fn flip_in_file(path: &std::path::Path, needle: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("the bytes are stored verbatim");
    bytes[at + needle.len() / 2] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

/// A body whose stored bytes were changed outside the store: every whole
/// read says so with a typed error (never the changed bytes), it is
/// counted, `verify` names it and the message using it, other bodies read
/// on, and a good copy (from a peer) repairs it.
#[test]
fn a_damaged_body_is_an_error_not_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let payload = noise(100_000, 1);
    let raw = with_payload(&payload);
    let id = BlobId::of(&raw);
    {
        let store = open(&path);
        store.add_account("alice").unwrap();
        store.write("alice", |b| b.append(INBOX, &message(1), 0, vec![]).map(|_| ())).unwrap();
        store.write("alice", |b| b.append(INBOX, &raw, 0, vec![]).map(|_| ())).unwrap();
        store.write("alice", |b| b.append(INBOX, &message(3), 0, vec![]).map(|_| ())).unwrap();
        let report = store.verify_contents();
        assert!(report.is_clean(), "{report:?}");
    }
    flip_in_file(&path, &payload[40_000..40_064]);
    let store = open(&path);
    let r = store.read("alice").unwrap();
    let msgs = r.messages(INBOX, 1, 10).unwrap();
    let env = r.envelope(msgs[1].message).unwrap().unwrap();
    assert_eq!(env.blob, id);
    assert!(matches!(r.body(id), Err(StoreError::Corrupt { blob }) if blob == id));
    assert!(matches!(r.body_range(id, 0, u64::MAX), Err(StoreError::Corrupt { .. })));
    assert!(matches!(store.blob(id), Err(StoreError::Corrupt { .. })));
    assert!(matches!(store.blob_for(&["alice"], id), Err(StoreError::Corrupt { .. })));
    assert_eq!(store.corrupt_reads(), 4);
    assert_eq!(store.corrupt_blobs(), vec![id]);
    // The header alone is not verified (it would need the whole body), and is intact.
    assert_eq!(&r.body_prefix(id, 20).unwrap()[..], &raw[..20]);
    // The others read on.
    for m in [&msgs[0], &msgs[2]] {
        let e = r.envelope(m.message).unwrap().unwrap();
        assert_eq!(r.body(e.blob).unwrap().len() as u64, e.size);
    }
    let report = store.verify_contents();
    assert_eq!(report.damaged_bodies.len(), 1, "{report:?}");
    assert_eq!(report.damaged_bodies[0].id, id);
    assert_eq!(report.damaged_bodies[0].used_by, vec![("alice".to_string(), Some("INBOX".to_string()), 2)]);
    // A good copy, as a peer would send it, replaces the damaged one.
    store.put_blob(&raw).unwrap();
    assert!(store.corrupt_blobs().is_empty());
    assert_eq!(store.read("alice").unwrap().body(id).unwrap(), raw);
    drop(r);
    drop(store);
    let report = verify::verify_file(&path, NODE, StoreOptions::default()).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

/// A damaged large part: the whole body fails, a range over the part
/// fails, a range that does not touch it reads; `verify` finds the part.
#[test]
fn a_damaged_part_fails_the_reads_that_touch_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let payload = noise(300_000, 2);
    let raw = with_part(&payload);
    let id = BlobId::of(&raw);
    {
        let store = open(&path);
        store.add_account("alice").unwrap();
        store.write("alice", |b| b.append(INBOX, &raw, 0, vec![]).map(|_| ())).unwrap();
    }
    flip_in_file(&path, &payload[150_000..150_064]);
    let store = open(&path);
    let r = store.read("alice").unwrap();
    assert!(matches!(r.body(id), Err(StoreError::Corrupt { blob }) if blob == id));
    let start = raw.windows(64).position(|w| w == &payload[..64]).unwrap() as u64;
    assert!(matches!(r.body_range(id, start + 1000, 10), Err(StoreError::Corrupt { blob }) if blob == id));
    assert_eq!(r.body_range(id, 0, 40).unwrap(), raw[..40]);
    drop(r);
    let report = store.verify_contents();
    assert_eq!(report.damaged_parts.len(), 1, "{report:?}");
    assert_eq!(report.damaged_bodies.len(), 1, "{report:?}");
    drop(store);
    let report = verify::verify_file(&path, NODE, StoreOptions::default()).unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.damaged_parts.len(), 1, "{report:?}");
    // redb's branch pages carry checksums of the pages below, which its
    // integrity check (not a plain read) compares.
    assert!(matches!(report.integrity, Integrity::Damaged(_)), "{:?}", report.integrity);
}

/// Everything a node reads, on a file overwritten at many places: each
/// call answers (Ok or an error), none panics — redb's panics on damaged
/// pages stay inside the store.
#[test]
fn a_damaged_file_gives_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean.redb");
    {
        let s = open(&clean);
        s.add_account("x").unwrap();
        s.add_account("y").unwrap();
        for n in 0..60 {
            let acct = if n % 3 == 0 { "y" } else { "x" };
            s.write(acct, |b| b.append(INBOX, &message(n), n as i64, vec![]).map(|_| ())).unwrap();
        }
        s.write("x", |b| b.append(INBOX, &with_part(&noise(300_000, 3)), 0, vec![]).map(|_| ())).unwrap();
    }
    let image = std::fs::read(&clean).unwrap();
    let pages = image.len() / 4096;
    let (mut opened, mut errors) = (0, 0);
    for k in 0..pages.min(48) {
        let page = 1 + k * (pages - 1) / pages.min(48);
        let path = dir.path().join(format!("d{k}.redb"));
        let mut bytes = image.clone();
        for b in &mut bytes[page * 4096..((page + 1) * 4096).min(image.len())] {
            *b ^= 0x5a;
        }
        std::fs::write(&path, bytes).unwrap();
        let outcome = std::panic::catch_unwind(|| {
            let mut errs = 0;
            let Ok(store) = Store::open(&path, NODE, StoreOptions::default()) else { return (false, 1) };
            let mut note = |r: Result<(), StoreError>| errs += r.is_err() as usize;
            for a in ["x", "y"] {
                note(store.missing_blobs(a).map(drop));
                note(store.version(a).map(drop));
                note(store.ops_since(a, &Default::default()).map(drop));
                note((|| {
                    let r = store.read(a)?;
                    r.status(INBOX)?;
                    r.uids(INBOX)?;
                    r.first_unseen(INBOX)?;
                    r.changed_since(INBOX, 0, 1000)?;
                    for m in r.messages(INBOX, 1, 1000)? {
                        if let Some(env) = r.envelope(m.message)? {
                            let _ = r.body_prefix(env.blob, 100);
                            let _ = r.body(env.blob);
                            let _ = store.blob_for(&[a], env.blob);
                        }
                    }
                    Ok(())
                })());
                note(store.write(a, |b| b.append(INBOX, &message(1000), 0, vec![]).map(drop)));
            }
            let _ = store.verify_contents();
            (true, errs)
        });
        let (was_opened, errs) = outcome.unwrap_or_else(|_| panic!("a store call panicked on damage at page {page}"));
        opened += was_opened as usize;
        errors += errs;
    }
    eprintln!("{opened} of {} damaged files opened; {errors} calls answered with an error", pages.min(48));
    assert!(opened > 0);
}

/// A full disk (injected): the write fails with `DiskFull` and commits
/// nothing; the store reopens its file by itself, with back-off (no spin
/// while the disk stays full), and once space returns writes work again
/// on the same `Store`, without a restart.
#[test]
fn a_full_disk_heals_by_itself_on_an_injected_disk() {
    let disk = MemDisk::new();
    let d = disk.clone();
    let store = Store::open_on_with(move || d.backend(), "mem", NODE, StoreOptions::default()).unwrap();
    store.add_account("a").unwrap();
    store.write("a", |b| b.append(INBOX, &message(1), 0, vec![]).map(drop)).unwrap();
    disk.set_full(true);
    let big = with_payload(&noise(200_000, 4));
    let e = store.write("a", |b| b.append(INBOX, &big, 0, vec![]).map(drop)).unwrap_err();
    assert!(matches!(e, StoreError::DiskFull(_)), "{e}");
    // Still full: a second of retries (a delivery loop) costs a few
    // reopens, not one per call.
    let until = Instant::now() + Duration::from_secs(1);
    let mut calls = 0;
    while Instant::now() < until {
        let r = store.write("a", |b| b.append(INBOX, &big, 0, vec![]).map(drop));
        assert!(r.as_ref().is_err_and(|e| e.is_io()), "{r:?}");
        calls += 1;
    }
    let attempts = store.reopen_attempts();
    eprintln!("{calls} writes on a full disk in 1 s: {attempts} reopen attempts, {} reopened", store.reopens());
    assert!((1..=6).contains(&attempts), "back-off: {attempts} reopen attempts in 1 s");
    disk.set_full(false);
    let healed = retry_for(Duration::from_secs(15), || store.write("a", |b| b.append(INBOX, &message(2), 0, vec![])));
    assert!(healed.is_ok(), "{healed:?}");
    let r = store.read("a").unwrap();
    assert_eq!(r.status(INBOX).unwrap().messages, 2, "what failed is not there, what was acknowledged is");
    assert!(store.check_blob_refs().unwrap().is_empty());
}

/// Retries `f` every 50 ms until it succeeds or `limit` passes.
fn retry_for<T>(limit: Duration, mut f: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let until = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= until => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The same on a real filesystem that fills up (an 8 MB tmpfs; needs
/// root, as CI and the dev machines run): fill it, the write fails, free
/// space, the same `Store` writes again.
#[test]
fn a_full_disk_heals_by_itself_on_a_real_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("cannot mount a tmpfs here (not root?): checked on the injected disk only");
        return;
    }
    let result = std::panic::catch_unwind(|| {
        let store = open(&mnt.join("s.redb"));
        store.add_account("a").unwrap();
        store.write("a", |b| b.append(INBOX, &message(1), 0, vec![]).map(drop)).unwrap();
        // Fill what is left with another file.
        let filler = mnt.join("filler");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            let chunk = vec![0u8; 64 * 1024];
            while f.write_all(&chunk).is_ok() {}
            let _ = f.sync_all();
        }
        let big = with_payload(&noise(300_000, 5));
        let mut n = 0;
        let e = loop {
            match store.write("a", |b| b.append(INBOX, &big, n, vec![]).map(drop)) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
            assert!(n < 100, "the filesystem never filled");
        };
        assert!(matches!(e, StoreError::DiskFull(_)), "{e}");
        // Still full: the next writes fail too.
        assert!(store.write("a", |b| b.append(INBOX, &message(2), 0, vec![]).map(drop)).is_err());
        std::fs::remove_file(&filler).unwrap();
        let healed =
            retry_for(Duration::from_secs(15), || store.write("a", |b| b.append(INBOX, &message(3), 0, vec![])));
        assert!(healed.is_ok(), "{healed:?}");
        assert!(store.reopens() >= 1);
        let r = store.read("a").unwrap();
        assert_eq!(r.status(INBOX).unwrap().messages, 2 + n as u64);
        drop(r);
        drop(store);
        let store = open(&mnt.join("s.redb"));
        assert_eq!(store.read("a").unwrap().status(INBOX).unwrap().messages, 2 + n as u64);
    });
    let _ = Command::new("umount").arg(&mnt).status();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

/// Runs `f` on another thread and waits at most 10 s for it.
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("finished while the other account's write was blocked")
}

/// While a write of account A is stopped inside its closure, reads of B —
/// and of A itself, as of A's last commit — complete.
#[test]
fn reads_do_not_wait_for_another_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir.path().join("s.redb")));
    store.add_account("a").unwrap();
    store.add_account("b").unwrap();
    store.write("a", |b| b.append(INBOX, &message(1), 0, vec![]).map(drop)).unwrap();
    let mb = store.write("b", |b| b.append(INBOX, &message(2), 0, vec![])).unwrap();
    let (inside_tx, inside) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            store.write("a", |b| {
                b.append(INBOX, &message(3), 0, vec![])?;
                inside_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok(())
            })
        })
    };
    inside.recv().unwrap();
    let s = store.clone();
    let (messages_b, body_b, version_b) = within(move || {
        let r = s.read("b").unwrap();
        let msgs = r.messages(INBOX, 1, 10).unwrap();
        let env = r.envelope(mb).unwrap().unwrap();
        (msgs.len(), r.body(env.blob).unwrap(), s.version("b").unwrap())
    });
    assert_eq!((messages_b, body_b), (1, message(2)));
    assert!(!version_b.is_empty());
    let s = store.clone();
    let a_before = within(move || {
        let _ = s.missing_blobs("a").unwrap();
        let _ = s.blob_for(&["b"], BlobId::of(&message(2))).unwrap();
        s.read("a").unwrap().status(INBOX).unwrap().messages
    });
    assert_eq!(a_before, 1, "A as of its last commit");
    release.send(()).unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(store.read("a").unwrap().status(INBOX).unwrap().messages, 2);
}

/// A panic inside a write (a bug in a caller, or redb on a damaged page)
/// is caught: nothing of that batch is committed, the call returns an
/// error, and every later call works — on that account and the others.
#[test]
fn a_panic_inside_a_write_breaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.redb"));
    store.add_account("a").unwrap();
    store.add_account("b").unwrap();
    store.write("a", |b| b.append(INBOX, &message(1), 0, vec![]).map(drop)).unwrap();
    let before = store.dump("a").unwrap();
    let version = store.version("a").unwrap();
    let r = store.write("a", |b| -> Result<(), StoreError> {
        b.append(INBOX, &message(2), 0, vec![])?;
        panic!("a bug inside a write");
    });
    assert!(matches!(r, Err(StoreError::Panicked(ref m)) if m.contains("a bug inside a write")), "{r:?}");
    assert_eq!(store.dump("a").unwrap(), before, "nothing of the batch committed");
    assert_eq!(store.version("a").unwrap(), version);
    store.write("a", |b| b.append(INBOX, &message(3), 0, vec![]).map(drop)).unwrap();
    store.write("b", |b| b.append(INBOX, &message(4), 0, vec![]).map(drop)).unwrap();
    assert_eq!(store.read("a").unwrap().status(INBOX).unwrap().messages, 2);
    let r = store.inspect("a", |_| panic!("a bug inside an inspection"));
    assert!(matches!(r, Err(StoreError::Panicked(_))));
    assert_eq!(store.read("a").unwrap().status(INBOX).unwrap().messages, 2);
    assert!(store.check_blob_refs().unwrap().is_empty());
}
