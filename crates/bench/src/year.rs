//! "A year of mail": three nodes take deliveries, flag changes and
//! expunges day after day (one node cut off now and then), sync through the
//! real sessions and run the real housekeeping; measured every tenth day:
//! each store file against its live data, the op log's length, the
//! process's RSS. Then a fresh node joins from node 0: time and bytes.
//! Run twice — housekeeping on and off — to compare.
//!
//! In one process: the three stores are real redb files, the links are
//! `PeerLink`s whose frames are handed over in memory (no QUIC), so RSS is
//! the three nodes' together.

use crate::join::sync_pair;
use crate::procs::{mb, USER};
use starling_model::{Keyword, MessageId, ReplicaId, INBOX};
use starling_store::{Housekeeping, Store, StoreOptions};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Days simulated.
    #[arg(long, default_value_t = 100)]
    days: u64,
    /// Messages delivered per day (spread over the three nodes).
    #[arg(long, default_value_t = 3_000)]
    per_day: usize,
    /// Flag changes per day (spread over the three nodes).
    #[arg(long, default_value_t = 10_000)]
    flags_per_day: usize,
    /// Days a message lives before it is expunged.
    #[arg(long, default_value_t = 10)]
    keep_days: u64,
    /// Leave housekeeping off (the comparison run).
    #[arg(long)]
    no_housekeeping: bool,
    /// No client looks at the mail (by default a client on each reachable
    /// node looks at INBOX once a day, after the day's sync: the announces
    /// that show UIDs, so that shown expunged messages' claims are buried).
    #[arg(long)]
    no_looks: bool,
    /// Where to put the stores (a fresh temporary directory by default).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const NODES: usize = 3;
const DAY_MS: u64 = 86_400_000;

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// A message of a few KB of text (compressible like mail), one in fifty
/// with a 40 KB attachment (incompressible, hex).
fn message(day: u64, i: usize) -> Vec<u8> {
    let mut x = day * 1_000_003 + i as u64 + 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const WORDS: [&str; 16] = [
        "meeting",
        "report",
        "quarterly",
        "please",
        "review",
        "attached",
        "thanks",
        "regards",
        "schedule",
        "project",
        "budget",
        "update",
        "tomorrow",
        "morning",
        "team",
        "deadline",
    ];
    let words = 200 + (next() % 600) as usize;
    let mut text = String::with_capacity(words * 8);
    for w in 0..words {
        text.push_str(WORDS[(next() % 16) as usize]);
        text.push(if w % 12 == 11 { '\n' } else { ' ' });
    }
    let mut raw = format!(
        "From: sender{}@example.org\r\nTo: u@example.org\r\nSubject: day {day} message {i}\r\n\
         Message-ID: <d{day}.{i}@example.org>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n",
        next() % 500
    );
    if i.is_multiple_of(50) {
        let hex: String = (0..5_000).map(|_| format!("{:08x}", next() as u32)).collect();
        raw.push_str(&format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
             Content-Type: text/plain\r\n\r\n{text}\r\n--b\r\nContent-Type: text/plain\r\n\r\n{hex}\r\n--b--\r\n"
        ));
    } else {
        raw.push_str(&format!("\r\n{text}\r\n"));
    }
    raw.into_bytes()
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn log_ops(s: &Store) -> u64 {
    let total: u64 = s.version(USER).unwrap().iter().map(|(_, c)| c).sum();
    let floor: u64 = s.floor(USER).unwrap().iter().map(|(_, c)| c).sum();
    total - floor
}

pub fn run(args: Args) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("dir");
    let ids: Vec<ReplicaId> = (1..=NODES as u64 + 1).map(|i| ReplicaId(i * 0x1000 + 7)).collect();
    let paths: Vec<PathBuf> = (0..NODES).map(|i| dir.join(format!("node{i}.redb"))).collect();
    let stores: Vec<Store> = paths
        .iter()
        .zip(&ids)
        .map(|(p, id)| {
            let _ = std::fs::remove_file(p);
            let s = Store::open(p, *id, StoreOptions::default()).expect("open");
            s.add_account(USER).expect("account");
            s
        })
        .collect();
    // The account starts on node 0 and reaches the others by sync.
    for j in 1..NODES {
        sync_pair(&stores[0], ids[0], &stores[j], ids[j]);
    }
    let housekeeping = !args.no_housekeeping;
    println!(
        "year of mail: {} days, {} messages/day, {} flag changes/day, kept {} days, housekeeping {}, looks {}",
        args.days,
        args.per_day,
        args.flags_per_day,
        args.keep_days,
        if housekeeping { "on" } else { "off" },
        if args.no_looks { "none" } else { "daily" }
    );
    println!("| day | delivered | expunged | live messages | live data | store files (3 nodes) | file / live | op log (ops, node 0) | ops in all | RSS | wall | online file compactions (3 nodes): runs / longest pause |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    // Messages delivered each day (ids), oldest first, for expunging.
    let mut by_day: VecDeque<(u64, Vec<MessageId>)> = VecDeque::new();
    let (mut delivered, mut expunged, mut flag_ops) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    let mut rng = 0x5eedu64;
    let mut rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut rss_max: f64 = 0.0;
    let (mut compactions, mut pause_max) = (0u64, 0u64);
    for day in 0..args.days {
        // Deliveries, each node a share, in batches of 50 per commit.
        let mut today = Vec::new();
        for (n, store) in stores.iter().enumerate() {
            let share: Vec<usize> = (0..args.per_day).filter(|i| i % NODES == n).collect();
            for chunk in share.chunks(50) {
                let ids = store
                    .write(USER, |b| {
                        chunk
                            .iter()
                            .map(|i| b.append(INBOX, &message(day, *i), (day * 86_400) as i64, vec![]))
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .expect("deliver");
                today.extend(ids);
            }
        }
        delivered += today.len() as u64;
        by_day.push_back((day, today));
        // Node 2 is cut off one day in ten.
        let cut = day % 10 == 5;
        let reach = |a: usize, b: usize| !cut || (a != 2 && b != 2);
        for a in 0..NODES {
            for b in a + 1..NODES {
                if reach(a, b) {
                    sync_pair(&stores[a], ids[a], &stores[b], ids[b]);
                }
            }
        }
        // A client on each reachable node looks at its INBOX.
        if !args.no_looks {
            for (n, store) in stores.iter().enumerate() {
                if !(cut && n == 2) {
                    store.write(USER, |b| Ok(b.replica().announce(INBOX)?)).expect("look");
                }
            }
        }
        // Flag changes on each node, on live messages it holds.
        for (n, store) in stores.iter().enumerate() {
            if cut && n == 2 {
                continue;
            }
            let live: Vec<MessageId> = by_day.iter().flat_map(|(_, v)| v.iter().copied()).collect();
            let k = args.flags_per_day / NODES;
            for chunk in (0..k).collect::<Vec<_>>().chunks(500) {
                store
                    .write(USER, |b| {
                        for _ in chunk {
                            let m = live[(rand() as usize) % live.len()];
                            let kw = if rand() % 2 == 0 { Keyword::Seen } else { Keyword::Flagged };
                            let r = b.replica();
                            let set = rand() % 2 == 0;
                            // A message another node expunged is skipped.
                            let _ = if set { r.store_flags(m, &[kw], &[]) } else { r.store_flags(m, &[], &[kw]) };
                        }
                        Ok(())
                    })
                    .expect("flags");
                flag_ops += chunk.len() as u64;
            }
        }
        // Expunge the day that has aged out (on the node of the day).
        while by_day.front().is_some_and(|(d, _)| d + args.keep_days <= day) {
            let (_, old) = by_day.pop_front().expect("front");
            let node = (day % NODES as u64) as usize;
            let node = if cut && node == 2 { 0 } else { node };
            for chunk in old.chunks(1000) {
                stores[node].write(USER, |b| Ok(b.replica().expunge(chunk)?)).expect("expunge");
            }
            expunged += old.len() as u64;
        }
        for a in 0..NODES {
            for b in a + 1..NODES {
                if reach(a, b) {
                    sync_pair(&stores[a], ids[a], &stores[b], ids[b]);
                }
            }
        }
        if housekeeping {
            for (n, store) in stores.iter().enumerate() {
                let peers: Vec<(ReplicaId, Vec<String>)> =
                    (0..NODES).filter(|j| *j != n).map(|j| (ids[j], vec![USER.to_string()])).collect();
                store
                    .housekeep(&Housekeeping {
                        now_ms: day * DAY_MS,
                        horizon_ms: 30 * DAY_MS,
                        peers: &peers,
                        alive: &[],
                        compact_log: true,
                        collect_bodies: true,
                        batch: 256,
                    })
                    .expect("housekeep");
                // As `serve` does (there at most once an hour, here once a
                // day), at its default threshold.
                if let Some(c) = store.compact_file(25).expect("compact the file") {
                    compactions += 1;
                    pause_max = pause_max.max(c.millis);
                }
            }
        }
        rss_max = rss_max.max(rss_mb());
        if (day + 1) % 10 == 0 || day + 1 == args.days {
            let (messages, live) = stores[0].usage(USER).expect("usage");
            let files: u64 = paths.iter().map(|p| file_len(p)).sum();
            let total: u64 = stores[0].version(USER).unwrap().iter().map(|(_, c)| c).sum();
            println!(
                "| {} | {delivered} | {expunged} | {messages} | {} | {} | {:.2} | {} | {total} | {:.0} MB | {:.0} s | {compactions} / {pause_max} ms |",
                day + 1,
                mb(live),
                mb(files),
                files as f64 / (NODES as f64 * live.max(1) as f64),
                log_ops(&stores[0]),
                rss_mb(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!("flag changes: {flag_ops}; peak RSS seen {rss_max:.0} MB");
    let (_, live) = stores[0].usage(USER).expect("usage");
    // File compaction, as `serve` runs it at start (25%), then forced (1%)
    // to show what the file holds once its free pages are gone.
    drop(stores);
    for (i, p) in paths.iter().enumerate() {
        for percent in [25u8, 1] {
            let t = Instant::now();
            let options = StoreOptions { file_compact_free_percent: percent, ..Default::default() };
            let s = Store::open(p, ids[i], options).expect("reopen");
            match s.file_compaction() {
                Some(c) => println!(
                    "node {i} file compaction at open (threshold {percent}%): {} -> {} in {:.1} s ({:.2}× live data)",
                    mb(c.before),
                    mb(c.after),
                    t.elapsed().as_secs_f64(),
                    c.after as f64 / live.max(1) as f64
                ),
                None => println!("node {i} ({}): under the {percent}% threshold, not compacted", mb(file_len(p))),
            }
        }
    }
    let node0 = Store::open(&paths[0], ids[0], StoreOptions::default()).expect("reopen");
    println!("node 0's tables (rows, bytes with redb's overhead):");
    for t in node0.table_sizes().expect("table sizes").iter().filter(|t| t.rows > 0) {
        println!("| {} | {} | {} |", t.name, t.rows, mb(t.bytes));
    }
    let snapshot = node0.snapshot(USER).expect("snapshot").len() as u64;
    let (live_messages, _) = node0.usage(USER).expect("usage");
    println!(
        "snapshot of node 0's account: {} ({} bytes per live message)",
        mb(snapshot),
        snapshot / live_messages.max(1)
    );
    // A new node joins from node 0.
    let new_path = dir.join("joiner.redb");
    let _ = std::fs::remove_file(&new_path);
    let joiner = Store::open(&new_path, ids[NODES], StoreOptions::default()).expect("open");
    joiner.add_account(USER).expect("account");
    let t = Instant::now();
    let (sent, back) = sync_pair(&node0, ids[0], &joiner, ids[NODES]);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(joiner.version(USER).unwrap(), node0.version(USER).unwrap(), "the new node caught up");
    assert!(joiner.missing_blobs(USER).unwrap().is_empty(), "with every body");
    println!(
        "new node joins: {secs:.1} s, {} sent to it, {} back; its file {} for {} of live data",
        mb(sent),
        mb(back),
        mb(file_len(&new_path)),
        mb(live)
    );
}
