//! What a whole snapshot costs: a store of N live messages (a peer's
//! appends, the log compacted, metadata only, one mailbox), then
//! a snapshot of it and its install into an empty store,
//! each step in a process of its own so that each peak RSS (VmHWM) is that
//! step's alone. The snapshot is written to a file and installed from it
//! as streams (`Store::write_snapshot`, `Store::install_snapshot_from`).
//! While the snapshot is built, another thread appends to a second account
//! of the same store, one message per commit: the longest of those writes
//! is how long the build held writers up.

use starling_model::{BlobId, Replica, ReplicaId, INBOX};
use starling_store::{Store, StoreOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Live messages, one run each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100000,300000,1000000")]
    messages: Vec<u64>,
    /// Working directory [default: a fresh temporary one].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// (internal) Run one step in this process: build, snapshot or install.
    #[arg(long, hide = true)]
    step: Option<String>,
}

const SOURCE: ReplicaId = ReplicaId(1);
const BATCH: u64 = 20_000;

fn peak_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("status");
    s.lines().find_map(|l| l.strip_prefix("VmHWM:")?.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// One step; prints "seconds peak_kib bytes", and for the snapshot step
/// "writes longest_ms" of the writer beside it.
fn step(step: &str, dir: &Path, n: u64) {
    let (src, dst, snap) = (dir.join("src.redb"), dir.join("dst.redb"), dir.join("snapshot.bin"));
    let t = Instant::now();
    let mut beside = None;
    let bytes = match step {
        "build" => {
            let _ = std::fs::remove_file(&src);
            let store = Store::open(&src, SOURCE, StoreOptions::default()).expect("open");
            store.add_account("u").expect("account");
            store.add_account("v").expect("account");
            let mut peer = Replica::new(ReplicaId(0x77));
            for i in 0..n {
                peer.append(INBOX, BlobId::of(&i.to_le_bytes()), 1000, i as i64, vec![]).expect("append");
                if (i + 1) % BATCH == 0 || i + 1 == n {
                    let ops = peer.take_outbox();
                    store.write("u", |b| b.apply(ops)).expect("apply");
                }
            }
            let v = store.version("u").expect("version");
            store.compact("u", &v).expect("compact");
            std::fs::metadata(&src).map(|m| m.len()).unwrap_or(0)
        }
        "snapshot" => {
            let store = Store::open(&src, SOURCE, StoreOptions::default()).expect("open");
            let store = std::sync::Arc::new(store);
            let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let writer = {
                let (store, done) = (store.clone(), done.clone());
                std::thread::spawn(move || {
                    let (mut writes, mut longest) = (0u64, 0f64);
                    while !done.load(std::sync::atomic::Ordering::Acquire) {
                        let t = Instant::now();
                        let body = format!("Subject: beside {writes}\r\n\r\nhello\r\n");
                        store.write("v", |b| b.append(INBOX, body.as_bytes(), 0, vec![])).expect("append");
                        longest = longest.max(t.elapsed().as_secs_f64());
                        writes += 1;
                    }
                    (writes, longest)
                })
            };
            let file = std::io::BufWriter::new(std::fs::File::create(&snap).expect("create"));
            store.write_snapshot("u", file).expect("snapshot");
            done.store(true, std::sync::atomic::Ordering::Release);
            let (writes, longest) = writer.join().expect("writer");
            beside = Some((writes, longest));
            std::fs::metadata(&snap).expect("snapshot file").len()
        }
        "install" => {
            let _ = std::fs::remove_file(&dst);
            let file = std::fs::File::open(&snap).expect("snapshot file");
            let bytes = file.metadata().expect("metadata").len();
            let store = Store::open(&dst, ReplicaId(2), StoreOptions::default()).expect("open");
            store.add_account("u").expect("account");
            store.install_snapshot_from("u", std::io::BufReader::new(file)).expect("install");
            let live = store.read("u").expect("read").status(INBOX).expect("status").messages;
            assert_eq!(live, n, "every message installed");
            bytes
        }
        other => panic!("unknown step {other}"),
    };
    print!("{:.2} {} {bytes}", t.elapsed().as_secs_f64(), peak_kib());
    match beside {
        Some((writes, longest)) => println!(" {writes} {:.1}", longest * 1e3),
        None => println!(),
    }
}

pub fn run(a: Args) {
    let tmp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().expect("tempdir");
            tmp.path().to_path_buf()
        }
    };
    if let Some(s) = &a.step {
        return step(s, &dir, a.messages[0]);
    }
    println!("| live messages | store built (s) | snapshot | build it: time / peak RSS | writes to another account meanwhile: count / longest | install into an empty store: time / peak RSS |");
    println!("|---|---|---|---|---|---|");
    for &n in &a.messages {
        let run = |s: &str| -> (f64, u64, u64, String) {
            let out = std::process::Command::new(std::env::current_exe().expect("exe"))
                .args(["snapshot", "--step", s, "--messages", &n.to_string(), "--dir"])
                .arg(&dir)
                .output()
                .expect("step");
            assert!(out.status.success(), "{s}: {}", String::from_utf8_lossy(&out.stderr));
            let line = String::from_utf8_lossy(&out.stdout);
            let mut f = line.split_whitespace();
            let secs = f.next().and_then(|x| x.parse().ok()).expect("secs");
            let kib = f.next().and_then(|x| x.parse().ok()).expect("kib");
            let bytes = f.next().and_then(|x| x.parse().ok()).expect("bytes");
            let beside = match (f.next(), f.next()) {
                (Some(writes), Some(ms)) => format!("{writes} / {ms} ms"),
                _ => String::new(),
            };
            (secs, kib, bytes, beside)
        };
        let (built, ..) = run("build");
        let (snap_s, snap_kib, bytes, beside) = run("snapshot");
        let (inst_s, inst_kib, ..) = run("install");
        let mb = |b: u64| b as f64 / 1e6;
        println!(
            "| {n} | {built:.1} | {:.1} MB ({} B per message) | {snap_s:.2} s / {:.0} MB | {beside} | {inst_s:.2} s / {:.0} MB |",
            mb(bytes),
            bytes / n.max(1),
            mb(snap_kib * 1024),
            mb(inst_kib * 1024)
        );
    }
}
