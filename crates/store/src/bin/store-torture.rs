//! Writes batches to a store forever, printing `committed N` after each
//! commit returns. The crash test kills it with SIGKILL at random moments
//! and checks what survived. Not part of the node.

use starling_model::{Keyword, ReplicaId, INBOX};
use starling_store::{Store, StoreOptions};
use std::io::Write;

/// Messages per batch.
const BATCH: usize = 20;

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
    if store.accounts().is_empty() {
        store.add_account("t").expect("account");
    }
    let mut out = std::io::stdout();
    for batch in first.. {
        store
            .write("t", |b| {
                for i in 0..BATCH {
                    let raw = format!("Subject: batch {batch} msg {i}\r\n\r\n{}\r\n", "x".repeat(200 + i * 50));
                    let m = b.append(INBOX, raw.as_bytes(), batch as i64, vec![])?;
                    if i % 3 == 0 {
                        b.replica().store_flags(m, &[Keyword::Seen], &[])?;
                    }
                }
                Ok(())
            })
            .expect("write");
        writeln!(out, "committed {batch}").expect("stdout");
        out.flush().expect("stdout");
    }
}
