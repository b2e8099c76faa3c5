//! A snapshot is exported from a read view of the store: while its parts
//! are written, the store's writers — of other accounts and of the account
//! itself — go on, and the snapshot is the state as of its start.

use starling_model::{BlobId, Replica, ReplicaId, INBOX};
use starling_store::{Store, StoreOptions};
use std::io::Write;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

/// Long enough for a write on a loaded machine, short enough for a test.
const PATIENCE: Duration = Duration::from_secs(20);

/// Collects a snapshot, stopping at its second write (the first of the
/// compressed parts; the first is the format byte) until told to go on.
struct Gate {
    writes: usize,
    reached: Sender<()>,
    go: Receiver<()>,
    out: Vec<u8>,
}

impl Write for Gate {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.writes += 1;
        if self.writes == 2 {
            let _ = self.reached.send(());
            // Before the test's verdict, never after it: it sends in both cases.
            self.go.recv_timeout(PATIENCE * 3).map_err(|_| std::io::Error::other("never let go"))?;
        }
        self.out.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn writers_go_on_while_a_snapshot_is_exported_and_it_shows_the_state_at_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(Store::open(&dir.path().join("a.redb"), ReplicaId(0xa), StoreOptions::default()).unwrap());
    a.add_account("u").unwrap();
    a.add_account("v").unwrap();
    // Enough messages that the compressed parts are written in several
    // pieces (zstd writes a block of 128 KiB of input at a time).
    let mut peer = Replica::new(ReplicaId(0x77));
    for i in 0..20_000u64 {
        peer.append(INBOX, BlobId::of(&i.to_le_bytes()), 1000, i as i64, vec![]).unwrap();
    }
    a.write("u", |b| b.apply(peer.take_outbox())).unwrap();
    let at_start = (a.version("u").unwrap(), a.dump("u").unwrap());

    let (reached_tx, reached) = channel();
    let (go, go_rx) = channel();
    let exporting = {
        let a = a.clone();
        std::thread::spawn(move || {
            let mut gate = Gate { writes: 0, reached: reached_tx, go: go_rx, out: Vec::new() };
            let vv = a.write_snapshot("u", &mut gate).map_err(|e| e.to_string());
            (vv, gate.out)
        })
    };
    reached.recv_timeout(PATIENCE).expect("the snapshot's parts are being written");

    // Mid-export: a delivery to another account, then one to the account
    // itself, each in a transaction of its own.
    let (wrote_tx, wrote) = channel();
    let writer = {
        let a = a.clone();
        std::thread::spawn(move || {
            a.write("v", |b| b.append(INBOX, b"Subject: other\r\n\r\nx\r\n", 0, vec![])).unwrap();
            a.write("u", |b| b.append(INBOX, b"Subject: same\r\n\r\ny\r\n", 0, vec![])).unwrap();
            let _ = wrote_tx.send(());
        })
    };
    let went_on = wrote.recv_timeout(PATIENCE);
    go.send(()).unwrap();
    let (vv, bytes) = exporting.join().unwrap();
    writer.join().unwrap();
    assert!(went_on.is_ok(), "both writes waited for the snapshot's export");

    let vv = vv.expect("snapshot");
    assert_eq!(vv, at_start.0, "the snapshot is of the state when it began");
    assert_ne!(a.version("u").unwrap(), vv, "the write of the account came after it");
    let b = Store::open(&dir.path().join("b.redb"), ReplicaId(0xb), StoreOptions::default()).unwrap();
    b.add_account("u").unwrap();
    b.install_snapshot("u", &bytes).unwrap();
    assert_eq!(b.version("u").unwrap(), at_start.0);
    assert_eq!(b.dump("u").unwrap(), at_start.1, "installed, it is the state at its start");
}
