//! Writes batches to a store forever, printing `committed N` after each
//! commit returns. The crash test kills it with SIGKILL at random moments
//! and checks what survived. Not part of the node.
//!
//! Each batch appends 20 messages to account `t`'s INBOX, copies two of
//! them to `Copies` and expunges older copies there, and a second commit
//! appends one of the same bodies to account `u`: the index of which
//! accounts reference a body is incremented and decremented under the
//! kills too.
//!
//! With `gc`, each batch (larger bodies) also expunges the INBOX batches
//! before the previous one and runs housekeeping (log compaction, body
//! collection), printing `committed N` once all of it returned. With
//! `open`, it only opens the store with file compaction on (the crash test
//! kills it while redb compacts), then prints `opened`. With `online`, it
//! opens the store without, then compacts the file while a thread reads
//! every body over and over (`Store::compact_file`), and prints `compacted`. With `install FILE`,
//! it installs the snapshot of account `t` in FILE (the crash test kills it
//! during the install), then prints `installed`. With `spool FILE`, it
//! spools the snapshot in FILE as if from peer 7 in parts of 16 KiB, from
//! where the spool already ends (`from N`), printing `spooled N` after
//! each part, then installs it and prints `installed` (the crash test
//! kills it, then runs it again to go on). With `copies`, it makes
//! snapshots of account `t` to send to peers 0 to 5 in turn, kept to
//! resume ([`Store::snapshot_to_send`]), printing `kept PEER ID` after
//! each, forever (the crash test kills it while copies are written,
//! renamed and deleted).

use starling_model::{Keyword, ReplicaId, INBOX};
use starling_store::{Store, StoreOptions};
use std::io::Write;

/// Messages per batch.
const BATCH: usize = 20;

fn raw(batch: u64, i: usize) -> String {
    format!("Subject: batch {batch} msg {i}\r\n\r\n{}\r\n", "x".repeat(200 + i * 50))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (path, first, mode): (&str, u64, &str) = match args.as_slice() {
        [_, p, f] => (p, f.parse().expect("first batch number"), ""),
        [_, p, f, m] | [_, p, f, m, _] => (p, f.parse().expect("first batch number"), m),
        _ => {
            eprintln!("usage: store-torture STORE FIRST_BATCH [gc|open|online|copies|install SNAPSHOT|spool SNAPSHOT]");
            std::process::exit(2);
        }
    };
    let path = std::path::Path::new(path);
    match mode {
        "" => plain(path, first),
        "gc" => collecting(path, first),
        "open" => {
            let options = StoreOptions { file_compact_free_percent: 1, ..Default::default() };
            Store::open(path, ReplicaId(42), options).expect("open");
            println!("opened");
        }
        "online" => online(path),
        "install" => {
            let snapshot = std::fs::read(&args[4]).expect("snapshot file");
            let store = Store::open(path, ReplicaId(42), StoreOptions::default()).expect("open");
            store.install_snapshot("t", &snapshot).expect("install");
            println!("installed");
        }
        "spool" => {
            let snapshot = std::fs::read(&args[4]).expect("snapshot file");
            let store = Store::open(path, ReplicaId(42), StoreOptions::default()).expect("open");
            let total = snapshot.len() as u64;
            let from = store.spool_held("t", 7).expect("spool head").map_or(0, |h| h.2);
            println!("from {from}");
            let mut at = from;
            for part in snapshot[from as usize..].chunks(16 << 10) {
                store.spool_snapshot_part("t", 7, (1, total), at, part).expect("spool");
                at += part.len() as u64;
                println!("spooled {at}");
                std::io::stdout().flush().unwrap();
            }
            store.install_spooled_snapshot("t", 7).expect("install");
            println!("installed");
        }
        "copies" => {
            let store = Store::open(path, ReplicaId(42), StoreOptions::default()).expect("open");
            for i in 0u64.. {
                let out = store.snapshot_to_send("t", i % 6, None).expect("a copy");
                println!("kept {} {}", i % 6, out.id);
                std::io::stdout().flush().unwrap();
            }
        }
        m => panic!("unknown mode {m}"),
    }
}

/// Compacts the file while it serves reads (the crash test kills it
/// during the compaction).
fn online(path: &std::path::Path) {
    let store = std::sync::Arc::new(Store::open(path, ReplicaId(42), StoreOptions::default()).expect("open"));
    let reader = store.clone();
    std::thread::spawn(move || loop {
        let r = reader.read("t").expect("read");
        for m in r.messages(INBOX, 1, usize::MAX).expect("messages") {
            let env = r.envelope(m.message).expect("envelope").expect("live");
            r.body(env.blob).expect("body");
        }
    });
    loop {
        match store.compact_file(1) {
            Ok(Some(_)) => break,
            Ok(None) => panic!("nothing to compact"),
            Err(starling_store::FileCompactError::Busy) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    println!("compacted");
}

/// A body of about 8 KB that compresses poorly, tagged with its batch.
fn large(batch: u64, i: usize) -> String {
    let mut x = batch * 1000 + i as u64 + 1;
    let noise: String = (0..1000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:08x}", x as u32)
        })
        .collect();
    format!("Subject: batch {batch} msg {i}\r\n\r\n{noise}\r\n")
}

fn collecting(path: &std::path::Path, first: u64) {
    let store = Store::open(path, ReplicaId(42), StoreOptions::default()).expect("open");
    if !store.accounts().iter().any(|x| x == "t") {
        store.add_account("t").expect("account");
    }
    let mut out = std::io::stdout();
    for batch in first.. {
        // Expunge every message of the batches before the previous one.
        let r = store.read("t").expect("read");
        let live = r.messages(INBOX, 1, usize::MAX).expect("messages");
        let old: Vec<_> = live
            .iter()
            .filter(|m| {
                let d = r.envelope(m.message).ok().flatten().map_or(0, |e| e.internal_date as u64);
                d + 1 < batch
            })
            .map(|m| m.message)
            .collect();
        drop(r);
        store
            .write("t", |b| {
                if !old.is_empty() {
                    b.replica().expunge(&old)?;
                }
                for i in 0..BATCH {
                    b.append(INBOX, large(batch, i).as_bytes(), batch as i64, vec![])?;
                }
                Ok(())
            })
            .expect("write");
        store
            .housekeep(&starling_store::Housekeeping {
                now_ms: 0,
                horizon_ms: u64::MAX,
                peers: &[],
                alive: &[],
                compact_log: true,
                collect_bodies: true,
                batch: 8,
            })
            .expect("housekeep");
        writeln!(out, "committed {batch}").expect("stdout");
        out.flush().expect("stdout");
    }
}

fn plain(path: &std::path::Path, first: u64) {
    let store = Store::open(path, ReplicaId(42), StoreOptions::default()).expect("open");
    for a in ["t", "u"] {
        if !store.accounts().iter().any(|x| x == a) {
            store.add_account(a).expect("account");
        }
    }
    let copies = store
        .write("t", |b| {
            let r = b.replica();
            match r.mailbox_by_name("Copies") {
                Some(id) => Ok(id),
                None => Ok(r.create_mailbox("Copies", None, None)?),
            }
        })
        .expect("mailbox");
    let mut out = std::io::stdout();
    for batch in first.. {
        store
            .write("t", |b| {
                let old: Vec<_> = b.replica().view(copies).into_iter().map(|(_, m, _)| m).collect();
                if old.len() > 4 {
                    b.replica().expunge(&old[..old.len() - 4])?;
                }
                for i in 0..BATCH {
                    let m = b.append(INBOX, raw(batch, i).as_bytes(), batch as i64, vec![])?;
                    if i % 3 == 0 {
                        b.replica().store_flags(m, &[Keyword::Seen], &[])?;
                    }
                    if i % 10 == 0 {
                        b.replica().copy_message(m, copies)?;
                    }
                }
                Ok(())
            })
            .expect("write");
        store.write("u", |b| b.append(INBOX, raw(batch, 0).as_bytes(), batch as i64, vec![]).map(drop)).expect("write");
        writeln!(out, "committed {batch}").expect("stdout");
        out.flush().expect("stdout");
    }
}
