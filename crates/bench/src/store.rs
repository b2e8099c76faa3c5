//! Store benchmarks.

use starling_model::{Keyword, Op, Replica, ReplicaId, INBOX};
use starling_store::{maildir, Store, StoreOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

const NODE: ReplicaId = ReplicaId(0x5747);

fn workdir(dir: Option<PathBuf>) -> (Option<tempfile::TempDir>, PathBuf) {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(&d).expect("bench dir");
            (None, d)
        }
        None => {
            let t = tempfile::tempdir().expect("tempdir");
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    }
}

fn small_message(i: usize) -> Vec<u8> {
    format!("From: s{i}@example.org\r\nSubject: {i}\r\n\r\nhello {i}\r\n").into_bytes()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Builds a store of `n` small messages with 2 flags each, in batches.
fn build(path: &Path, n: usize) -> (f64, u64, u64) {
    let store = Store::open(path, NODE, StoreOptions::default()).expect("open");
    store.add_account("u").expect("account");
    let t = Instant::now();
    let mut body_bytes = 0u64;
    let batch = 10_000;
    for start in (0..n).step_by(batch) {
        store
            .write("u", |b| {
                for i in start..(start + batch).min(n) {
                    let raw = small_message(i);
                    body_bytes += raw.len() as u64;
                    b.append(INBOX, &raw, i as i64, vec![Keyword::Seen, Keyword::Flagged])?;
                }
                Ok(())
            })
            .expect("write");
    }
    let secs = t.elapsed().as_secs_f64();
    let (stored, _) = store.stats().expect("stats");
    (secs, body_bytes, stored)
}

pub fn run(messages: usize, dir: Option<PathBuf>) {
    let (_keep, dir) = workdir(dir);
    apply_throughput(&dir);
    println!("\n## Large stores\n");
    println!("| messages | build (batches of 10,000) | file size | data in file (redb stored bytes) | data bytes/message | of which metadata | open + first answer | RSS after open |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in [messages / 10, messages].into_iter().filter(|n| *n > 0) {
        let path = dir.join(format!("large-{n}.redb"));
        let _ = std::fs::remove_file(&path);
        let (secs, body_bytes, used) = build(&path, n);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .arg("open-probe")
            .arg(&path)
            .output()
            .expect("probe");
        let probe = String::from_utf8_lossy(&out.stdout);
        let mut fields = probe.split_whitespace();
        let open_ms: f64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        let rss: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        // Bodies are stored once each (tiny ones raw: compression does not pay).
        let metadata = used.saturating_sub(body_bytes);
        println!(
            "| {n} | {secs:.1} s ({:.0} msg/s) | {:.1} MB | {:.1} MB | {:.0} B | {:.0} B | {open_ms:.1} ms | {:.1} MB |",
            n as f64 / secs,
            size as f64 / 1e6,
            used as f64 / 1e6,
            used as f64 / n as f64,
            metadata as f64 / n as f64,
            rss as f64 / 1024.0
        );
        let _ = std::fs::remove_file(&path);
    }
}

/// Time from process start of the open to the first answer a client would
/// need (SELECT: status and the first page of messages), and RSS then.
pub fn open_probe(path: &Path) {
    let t = Instant::now();
    let store = Store::open(path, NODE, StoreOptions::default()).expect("open");
    let r = store.read("u").expect("read");
    let status = r.status(INBOX).expect("status");
    let first = r.messages(INBOX, 1, 50).expect("messages");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(status.messages > 0 && !first.is_empty());
    println!("{ms:.2} {}", rss_kib());
}

fn apply_throughput(dir: &Path) {
    const MESSAGES: usize = 10_000;
    const OPS: usize = 460_000;
    let path = dir.join("apply.redb");
    let _ = std::fs::remove_file(&path);
    let store = Store::open(&path, NODE, StoreOptions::default()).expect("open");
    store.add_account("u").expect("account");
    // A peer with the same messages makes the flag ops.
    let mut peer = Replica::new(ReplicaId(0x9eee));
    let mut setup: Vec<Op> = Vec::new();
    let mut ids = Vec::new();
    for i in 0..MESSAGES {
        let raw = small_message(i);
        ids.push(peer.append(INBOX, starling_model::BlobId::of(&raw), raw.len() as u64, 0, vec![]).expect("append"));
    }
    setup.extend(peer.take_outbox());
    store.write("u", |b| b.apply(setup)).expect("setup");
    let mut ops = Vec::with_capacity(OPS);
    for k in 0..OPS {
        let m = ids[k % MESSAGES];
        if (k / MESSAGES).is_multiple_of(2) {
            peer.store_flags(m, &[Keyword::Seen], &[]).expect("flag");
        } else {
            peer.store_flags(m, &[], &[Keyword::Seen]).expect("flag");
        }
        ops.extend(peer.take_outbox());
    }
    println!("\n## Applying flag ops to the store (durable commits, fsync)\n");
    println!("| mode | ops/s | range |");
    println!("|---|---|---|");
    let batch = 10_000;
    let mut done = 0;
    // Three runs of 50,000 ops per batch size; the median is reported.
    for per_commit in [1_000, 10_000, 50_000] {
        let mut rates = Vec::new();
        for _ in 0..3 {
            let chunk_ops = &ops[done..done + 50_000];
            done += 50_000;
            let t = Instant::now();
            for chunk in chunk_ops.chunks(per_commit) {
                store.write("u", |b| b.apply(chunk.iter().cloned())).expect("apply");
            }
            rates.push(50_000.0 / t.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "| remote ops, {per_commit} per commit (median of 3 × 50,000) | {:.0} | {:.0}–{:.0} |",
            rates[1], rates[0], rates[2]
        );
    }
    let single = 1_000;
    let t = Instant::now();
    for op in &ops[done..done + single] {
        store.write("u", |b| b.apply([op.clone()])).expect("apply");
    }
    let secs = t.elapsed().as_secs_f64();
    println!("| remote ops, 1 per commit ({single} commits) | {:.0} | |", single as f64 / secs);
    // Local STORE through the same path, batched.
    let t = Instant::now();
    let local = 50_000;
    let r = store.read("u").expect("read");
    let msgs: Vec<_> = r.messages(INBOX, 1, MESSAGES).expect("messages").into_iter().map(|m| m.message).collect();
    drop(r);
    for chunk in (0..local).collect::<Vec<_>>().chunks(batch) {
        store
            .write("u", |b| {
                for k in chunk {
                    let m = msgs[k % msgs.len()];
                    if (k / msgs.len()).is_multiple_of(2) {
                        b.replica().store_flags(m, &[Keyword::Answered], &[])?;
                    } else {
                        b.replica().store_flags(m, &[], &[Keyword::Answered])?;
                    }
                }
                Ok(())
            })
            .expect("store");
    }
    let secs = t.elapsed().as_secs_f64();
    println!("| local STORE +/-\\Answered, {batch} per commit ({local} ops) | {:.0} | |", local as f64 / secs);
}

pub fn import(maildir_root: &Path, dir: Option<PathBuf>) {
    let (_keep, dir) = workdir(dir);
    let path = dir.join("import.redb");
    let _ = std::fs::remove_file(&path);
    let store = Store::open(&path, NODE, StoreOptions::default()).expect("open");
    store.add_account("u").expect("account");
    let s = maildir::import(&store, "u", maildir_root).expect("import");
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!("starling import: {s}; store file {:.1} MB", size as f64 / 1e6);
}

/// What read-time verification costs: whole-body reads of text mail and of
/// incompressible bodies from a real store, timed, and the BLAKE3 of the same
/// bytes alone.
pub fn verify_cost(dir: Option<PathBuf>) {
    let (_keep, dir) = workdir(dir);
    let store = Store::open(&dir.join("verify.redb"), NODE, StoreOptions::default()).expect("open");
    store.add_account("u").expect("account");
    let text: Vec<u8> = (0..1_000_000 / 60)
        .flat_map(|i| format!("line {i:>8} of a plain text message body....\r\n").into_bytes())
        .collect();
    let short = b"Hello there, a short message.\r\n".repeat(130);
    println!("| body | whole read | of which BLAKE3 | BLAKE3 speed |\n|---|---|---|---|");
    for (name, payload) in [
        ("1 MB mail text (zstd-packed)", text),
        ("1 MB incompressible", starling_model::testkit::incompressible(1_000_000, 9)),
        ("4 KB", short),
    ] {
        let mut raw = b"From: a@example.org\r\nSubject: cost\r\n\r\n".to_vec();
        raw.extend_from_slice(&payload);
        let id = store.write("u", |b| b.put_body(&raw)).expect("write");
        let r = store.read("u").expect("read");
        let rounds = (200_000_000 / raw.len()).clamp(20, 20_000);
        let t = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(r.body(id).expect("body"));
        }
        let read = t.elapsed().as_secs_f64() / rounds as f64;
        let t = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(starling_model::BlobId::of(std::hint::black_box(&raw)));
        }
        let hash = t.elapsed().as_secs_f64() / rounds as f64;
        let mb = raw.len() as f64 / 1e6;
        println!(
            "| {name} | {:.1} µs | {:.1} µs ({:.0}%) | {:.1} GB/s |",
            read * 1e6,
            hash * 1e6,
            100.0 * hash / read,
            mb / hash / 1e3
        );
    }
}
