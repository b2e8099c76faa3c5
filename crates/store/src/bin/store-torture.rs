//! Writes batches to a store forever, printing `committed N` after each
//! commit returns. The crash test kills it with SIGKILL at random moments
//! and checks what survived. Not part of the node.
//!
//! Each batch appends 20 messages to account `t`'s INBOX, copies two of
//! them to `Copies` and expunges older copies there, and a second commit
//! appends one of the same bodies to account `u`: the index of which
//! accounts reference a body is incremented and decremented under the
//! kills too.

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
    let (path, first): (&str, u64) = match args.as_slice() {
        [_, p, f] => (p, f.parse().expect("first batch number")),
        _ => {
            eprintln!("usage: store-torture STORE FIRST_BATCH");
            std::process::exit(2);
        }
    };
    let store = Store::open(std::path::Path::new(path), ReplicaId(42), StoreOptions::default()).expect("open");
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
