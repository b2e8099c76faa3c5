//! Sync benchmarks: two real stores (redb files) exchanging frames through
//! `starling-sync` sessions in one process. Bytes are the frames' bytes as
//! the sessions count them (QUIC and TLS framing are not included).

use starling_link::PeerLink;
use starling_model::{Keyword, ReplicaId};
use starling_store::{maildir, Store, StoreOptions};
use starling_sync::BodyPolicy;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ACCOUNT: &str = "u";

struct Side {
    store: Store,
    link: PeerLink,
}

fn link(store: &Store, me: ReplicaId, peer: ReplicaId) -> PeerLink {
    PeerLink::new(store, me, Some(peer), &[ACCOUNT.to_string()], BodyPolicy::full()).unwrap()
}

/// Moves every frame `from` has queued to `to`, which answers at once.
fn carry(from: &mut Side, to: &mut Side) -> bool {
    let mut busy = false;
    while let Some(f) = from.link.poll_transmit().or_else(|| from.link.poll_transmit_blob()) {
        busy = true;
        to.link.handle_frame(&to.store, &f).unwrap();
    }
    busy
}

/// Moves frames until both sides are quiet.
fn exchange(a: &mut Side, b: &mut Side) {
    while carry(a, b) | carry(b, a) {}
}

fn fresh_links(a: &mut Side, b: &mut Side, ia: ReplicaId, ib: ReplicaId) {
    a.link = link(&a.store, ia, ib);
    b.link = link(&b.store, ib, ia);
}

fn kb(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.1} MB", n as f64 / 1e6)
    } else {
        format!("{:.2} KB", n as f64 / 1e3)
    }
}

pub fn run(root: &Path, dir: Option<PathBuf>) {
    let (_keep, dir) = match dir {
        Some(d) => (None, d),
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    std::fs::create_dir_all(&dir).unwrap();
    // Ids as large as real ones (8 bytes of a certificate hash).
    let (ia, ib) = (ReplicaId(0x9e37_79b9_7f4a_7c15), ReplicaId(0xc2b2_ae3d_27d4_eb4f));
    let pa = dir.join("sync-a.redb");
    let pb = dir.join("sync-b.redb");
    let _ = std::fs::remove_file(&pa);
    let _ = std::fs::remove_file(&pb);
    let sa = Store::open(&pa, ia, StoreOptions::default()).unwrap();
    let sb = Store::open(&pb, ib, StoreOptions::default()).unwrap();
    sa.add_account(ACCOUNT).unwrap();
    sb.add_account(ACCOUNT).unwrap();
    let imported = maildir::import(&sa, ACCOUNT, root).unwrap();
    let n = imported.messages;
    let mut a = Side { link: link(&sa, ia, ib), store: sa };
    let mut b = Side { link: link(&sb, ib, ia), store: sb };

    println!("\n## Sync between two stores ({n} messages, {:.1} MB)\n", imported.bytes as f64 / 1e6);
    println!("| step | time | bytes a→b | bytes b→a |");
    println!("|---|---|---|---|");
    let t = Instant::now();
    exchange(&mut a, &mut b);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(a.store.dump(ACCOUNT).unwrap(), b.store.dump(ACCOUNT).unwrap());
    assert!(b.store.missing_blobs(ACCOUNT).unwrap().is_empty());
    let (ao, bo) = (a.link.session().bytes().0, b.link.session().bytes().0);
    println!("| initial sync (ops and bodies) | {secs:.2} s | {} | {} |", kb(ao), kb(bo));

    // 1% flag change on A, pushed live over the open sessions.
    let (ao0, bo0) = (a.link.session().bytes().0, b.link.session().bytes().0);
    let r = a.store.read(ACCOUNT).unwrap();
    let mut targets = Vec::new();
    for mb in r.names().tree.by_name.values() {
        targets.extend(r.messages(*mb, 1, usize::MAX).unwrap().into_iter().map(|m| m.message));
    }
    drop(r);
    let step = (targets.len() / (n as usize / 100).max(1)).max(1);
    let chosen: Vec<_> = targets.iter().step_by(step).take((n as usize / 100).max(1)).copied().collect();
    let t = Instant::now();
    a.store
        .write(ACCOUNT, |w| {
            for m in &chosen {
                w.replica().store_flags(*m, &[Keyword::Flagged], &[])?;
            }
            Ok(())
        })
        .unwrap();
    a.link.local_changed(&a.store, ACCOUNT).unwrap();
    exchange(&mut a, &mut b);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(a.store.dump(ACCOUNT).unwrap(), b.store.dump(ACCOUNT).unwrap());
    println!(
        "| 1% flag change ({} messages, commit included) | {:.1} ms | {} | {} |",
        chosen.len(),
        secs * 1000.0,
        kb(a.link.session().bytes().0 - ao0),
        kb(b.link.session().bytes().0 - bo0)
    );

    // No-op: a new session between replicas that agree.
    fresh_links(&mut a, &mut b, ia, ib);
    let t = Instant::now();
    exchange(&mut a, &mut b);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "| no-op (new session, handshake and version vectors) | {:.2} ms | {} B | {} B |",
        secs * 1000.0,
        a.link.session().bytes().0,
        b.link.session().bytes().0
    );

    // Latency: one flag change committed on A until applied on B.
    let mut lat: Vec<Duration> = Vec::new();
    for (k, m) in targets.iter().take(500).enumerate() {
        let t = Instant::now();
        let kw = if k % 2 == 0 { Keyword::Answered } else { Keyword::Draft };
        a.store.write(ACCOUNT, |w| Ok(w.replica().store_flags(*m, &[kw], &[])?)).unwrap();
        a.link.local_changed(&a.store, ACCOUNT).unwrap();
        exchange(&mut a, &mut b);
        lat.push(t.elapsed());
    }
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| change latency, commit on A → applied on B (500 changes) | median {:.2} ms, p99 {:.2} ms | | |",
        ms(lat[lat.len() / 2]),
        ms(lat[lat.len() * 99 / 100])
    );
}
