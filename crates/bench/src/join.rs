//! A new node joining a large account: W writer nodes build a history of N
//! ops for real (their redb stores, in their `starling` data directories,
//! exchanging ops through the real sessions in this process), then writer
//! 0 runs `starling serve` and a fresh node C starts and catches up over
//! QUIC. Measured: time until C holds every op (and every body), ops/s,
//! and the peak RSS (VmHWM) of both processes.
//!
//! The history: M messages appended on writer 0, then rounds in which one
//! writer after the other changes a flag on every message (`+\Flagged`,
//! then `-\Flagged` naming the adds it removes, and so on), each round
//! shipped to the other writers before the next, so the ops of the
//! writers are causally interleaved. The last round may touch only part of
//! the messages, to land on N.

use crate::procs::{self, mb, Node, USER};
use starling_link::PeerLink;
use starling_model::{Keyword, MessageId, ReplicaId, INBOX};
use starling_store::{Store, StoreOptions};
use starling_sync::BodyPolicy;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Ops in the account when C joins (about: the first round of flags
    /// starts after the appends and the account's own ops).
    #[arg(long, default_value_t = 1_000_000)]
    ops: u64,
    /// Writer nodes taking turns.
    #[arg(long, default_value_t = 3)]
    writers: usize,
    /// Messages appended on writer 0 [default: min(20,000, ops / 10)].
    #[arg(long)]
    messages: Option<usize>,
    /// The `starling` binary (default: next to this one).
    #[arg(long)]
    starling: Option<PathBuf>,
    /// Where to put the data directories (a fresh temporary one by default;
    /// kept when given).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Compact writer 0's log to all it holds before C joins, so that C
    /// catches up by snapshot rather than by ops.
    #[arg(long)]
    compact: bool,
}

/// A store and the session towards one peer.
struct Side<'a> {
    store: &'a Store,
    link: PeerLink,
}

/// Moves frames between two fresh sessions until both are quiet; returns
/// frame bytes (a→b, b→a).
pub(crate) fn sync_pair(a: &Store, ia: ReplicaId, b: &Store, ib: ReplicaId) -> (u64, u64) {
    let accounts = [USER.to_string()];
    let link = |s: &Store, me, peer| PeerLink::new(s, me, Some(peer), &accounts, BodyPolicy::full()).unwrap();
    let mut sides = [Side { store: a, link: link(a, ia, ib) }, Side { store: b, link: link(b, ib, ia) }];
    loop {
        let mut moved = false;
        for from in 0..2 {
            let to = 1 - from;
            // Bodies are read as their frames leave: let the sender fill up.
            sides[from].link.pump(sides[from].store).unwrap();
            let mut frames = Vec::new();
            while let Some(f) = sides[from].link.poll_transmit() {
                frames.push(f);
            }
            while let Some(f) = sides[from].link.poll_transmit_blob() {
                frames.push(f);
            }
            if !frames.is_empty() {
                moved = true;
                let s = &mut sides[to];
                s.link.handle_frames(s.store, &frames).unwrap();
            }
        }
        if !moved {
            break;
        }
    }
    (sides[0].link.session().bytes().0, sides[1].link.session().bytes().0)
}

fn ops_of(store: &Store) -> u64 {
    store.version(USER).unwrap().iter().map(|(_, c)| c).sum()
}

fn body(i: usize) -> Vec<u8> {
    format!("From: s{i}@example.org\r\nTo: u@example.org\r\nSubject: join {i}\r\nMessage-ID: <j{i}@example.org>\r\n\r\nhello {i}\r\n")
        .into_bytes()
}

pub fn run(args: Args) {
    let bin = procs::starling_bin(args.starling);
    let (_keep, dir) = procs::workdir(args.dir);
    let w = args.writers.max(1);
    let m = args.messages.unwrap_or_else(|| (args.ops as usize / 10).clamp(1, 20_000));

    // Data directories as the CLI makes them; C gets an id larger than
    // writer 0's so that C dials (no reconnect backoff in the measurement).
    let writers: Vec<Node> = (0..w).map(|k| Node::create(&bin, &format!("w{k}"), dir.join(format!("w{k}")))).collect();
    let mut c = Node::create(&bin, "c", dir.join("c"));
    while c.replica() <= writers[0].replica() {
        c = Node::create(&bin, "c", dir.join("c"));
    }

    // Build the history.
    let t_build = Instant::now();
    let ids: Vec<ReplicaId> = writers.iter().map(|n| ReplicaId(n.replica())).collect();
    let stores: Vec<Store> = writers
        .iter()
        .zip(&ids)
        .map(|(n, id)| Store::open(&n.dir.join("store.redb"), *id, StoreOptions::default()).unwrap())
        .collect();
    let mut messages: Vec<MessageId> = Vec::with_capacity(m);
    for start in (0..m).step_by(10_000) {
        let end = (start + 10_000).min(m);
        let got: Vec<MessageId> = stores[0]
            .write(USER, |b| {
                (start..end).map(|i| b.append(INBOX, &body(i), 1_700_000_000 + i as i64, vec![])).collect()
            })
            .unwrap();
        messages.extend(got);
    }
    for j in 1..w {
        sync_pair(&stores[0], ids[0], &stores[j], ids[j]);
    }
    let mut round = 0usize;
    let mut frame_bytes = 0u64;
    while ops_of(&stores[0]) < args.ops {
        let k = round % w;
        let left = (args.ops - ops_of(&stores[k])) as usize;
        let these = &messages[..left.min(m)];
        let (add, remove): (&[Keyword], &[Keyword]) =
            if round.is_multiple_of(2) { (&[Keyword::Flagged], &[]) } else { (&[], &[Keyword::Flagged]) };
        stores[k]
            .write(USER, |b| {
                for msg in these {
                    b.replica().store_flags(*msg, add, remove)?;
                }
                Ok(())
            })
            .unwrap();
        for j in (0..w).filter(|j| *j != k) {
            let (out, back) = sync_pair(&stores[k], ids[k], &stores[j], ids[j]);
            frame_bytes += out + back;
        }
        round += 1;
    }
    let total = ops_of(&stores[0]);
    for (j, s) in stores.iter().enumerate() {
        assert_eq!(ops_of(s), total, "writer {j} did not get every op");
    }
    let build_secs = t_build.elapsed().as_secs_f64();
    let per_writer: Vec<String> =
        stores[0].version(USER).unwrap().iter().map(|(r, c)| format!("{:016x}: {c}", r.0)).collect();
    if args.compact {
        let all = stores[0].version(USER).unwrap();
        let dropped = stores[0].compact(USER, &all).unwrap();
        println!("writer 0's log compacted: {dropped} ops dropped; C joins by snapshot");
    }
    drop(stores);
    println!(
        "history: {total} ops ({m} messages, {round} rounds of flags over {w} writers; per replica {}), built in {build_secs:.1} s ({:.0} ops/s authored and shipped, {} of frames between writers)",
        per_writer.join(", "),
        total as f64 / build_secs,
        mb(frame_bytes)
    );

    // Writer 0 serves; C joins.
    let mut a = writers.into_iter().next().unwrap();
    a.pin(&bin, &c, &format!("127.0.0.1:{}", c.port));
    c.pin(&bin, &a, &format!("127.0.0.1:{}", a.port));
    a.start(&bin);
    let want = a.ops();
    assert_eq!(want, total);
    let t = Instant::now();
    c.start(&bin);
    let up = t.elapsed();
    let mut last = (Instant::now(), 0u64);
    let ops_time = procs::wait_for(Duration::from_secs(3600), Duration::from_millis(10), || {
        let n = c.ops();
        if n != last.1 {
            last = (Instant::now(), n);
        }
        assert!(
            last.0.elapsed() < Duration::from_secs(120),
            "C stalled at {n} of {want} ops for 2 minutes; C's last lines: {:?}",
            c.tail()
        );
        n >= want
    })
    .unwrap();
    let bodies_time = procs::wait_for(Duration::from_secs(600), Duration::from_millis(100), || c.bodies_missing() == 0)
        .map(|d| ops_time + d);
    let (peak_a, peak_c) = (a.peak_rss().unwrap_or(0), c.peak_rss().unwrap_or(0));
    let alive = (a.running(), c.running());
    let (da, dc) = (a.dump(&bin), c.dump(&bin));
    let secs = ops_time.as_secs_f64();
    println!("\n## A new node joins an account of {total} ops from {w} writers\n");
    println!("| ops | messages | writers | C up | time until C holds every op | ops/s applied | every body too | peak RSS sender | peak RSS receiver |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {total} | {m} | {w} | {:.0} ms | {secs:.2} s | {:.0} | {} | {} | {} |",
        up.as_secs_f64() * 1000.0,
        total as f64 / secs,
        bodies_time.map_or("not within 10 min".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        mb(peak_a),
        mb(peak_c)
    );
    println!();
    println!("dumps equal: {}", if da == dc && !da.is_empty() { "yes" } else { "no" });
    println!("processes still running at the end: sender {}, receiver {}", yes(alive.0), yes(alive.1));
    if da != dc {
        let (ma, mc) = (procs::dump_messages(&da), procs::dump_messages(&dc));
        println!("sender shows {} messages, receiver {}", ma.len(), mc.len());
    }
    a.stop();
    c.stop();
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
