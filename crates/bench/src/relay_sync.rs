//! The initial sync of a Maildir tree between two `starling serve`
//! processes whose QUIC connection runs through the delaying UDP relay
//! ([`crate::relay`]), one link setting per call (the script
//! `sync-over-relay.sh` calls it per setting, next to dsync through the
//! same kind of relay).
//!
//! A holds the tree (imported once into a template data directory under
//! `--work`, not timed, then copied for each run); B is empty, with an id
//! larger than A's, so B dials (`serve` dials from the larger id): B's
//! `peer add` address for A is the relay's. The time runs from starting A
//! until B holds every op and every body.

use crate::procs::{self, Node, USER};
use crate::relay;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// The Maildir tree (e.g. gen-maildir.py maildir DIR 10000 --seed 1).
    maildir: PathBuf,
    /// Delay added one way, each direction (ms): the RTT grows by twice this.
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Fraction of datagrams the relay drops, each direction.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Working directory: the imported template is kept there between
    /// calls (made on first use) [default: a fresh temporary one].
    #[arg(long)]
    work: Option<PathBuf>,
    /// The `starling` binary (default: next to this one).
    #[arg(long)]
    starling: Option<PathBuf>,
    /// Seed of the relay's loss draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print, every this many milliseconds, what A sent in the interval
    /// (MB/s), its congestion window and round trip, and B's op count: where
    /// a long link loses its time.
    #[arg(long)]
    timeline_ms: Option<u64>,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "control.sock" || name == "serve.log" {
            continue;
        }
        let ty = e.file_type().unwrap();
        if ty.is_dir() {
            copy_dir(&e.path(), &to.join(&name));
        } else if ty.is_file() {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

pub fn run(args: Args) {
    let bin = procs::starling_bin(args.starling);
    let (_keep, work) = procs::workdir(args.work);
    let template = work.join("template");
    let done = template.join("imported");
    if !done.exists() {
        let t = Node::create(&bin, "template", template.clone());
        let summary = procs::cli(&bin, &t.dir, &["import", "maildir", USER, args.maildir.to_str().unwrap()]);
        std::fs::write(&done, summary).unwrap();
    }
    let imported = std::fs::read_to_string(&done).unwrap();
    // "imported 7 mailboxes, 1000 messages (…" → "1000 messages"
    let messages = imported.split(", ").nth(1).and_then(|m| m.split(" (").next()).unwrap_or("").to_string();
    let run_dir = work.join("run");
    let _ = std::fs::remove_dir_all(&run_dir);
    copy_dir(&template, &run_dir.join("a"));
    let mut a = Node::existing(&bin, "a", run_dir.join("a"));
    let mut b = Node::create(&bin, "b", run_dir.join("b"));
    while b.id <= a.id {
        b = Node::create(&bin, "b", run_dir.join("b"));
    }
    let delay = Duration::from_secs_f64(args.delay_ms / 1000.0);
    let target = format!("127.0.0.1:{}", a.port).parse().unwrap();
    let r = relay::udp("127.0.0.1:0".parse().unwrap(), target, delay, args.loss, args.seed);
    a.pin(&bin, &b, &format!("127.0.0.1:{}", b.port));
    b.pin(&bin, &a, &r.addr.to_string());

    let t = Instant::now();
    a.start(&bin);
    b.start(&bin);
    let want = a.ops();
    let mut last = (Instant::now(), (0u64, u64::MAX));
    let mut missing = u64::MAX;
    let mut tick = (Instant::now(), 0u64);
    procs::wait_for(Duration::from_secs(3600), Duration::from_millis(2), || {
        let ops = b.ops();
        if let Some(every) = args.timeline_ms {
            if tick.0.elapsed() >= Duration::from_millis(every) {
                let st = a.status();
                let p = &st["peers"][0];
                let out = p["wire_out"].as_u64().unwrap_or(0);
                let secs = tick.0.elapsed().as_secs_f64();
                println!(
                    "t {:6.2} s | a→b {:6.1} MB/s | cwnd {:6.0} KB | RTT {:6.1} ms | lost {:8} B | B ops {ops}",
                    t.elapsed().as_secs_f64(),
                    out.saturating_sub(tick.1) as f64 / secs / 1e6,
                    p["cwnd"].as_u64().unwrap_or(0) as f64 / 1e3,
                    p["rtt_ms"].as_f64().unwrap_or(0.0),
                    p["wire_lost"].as_u64().unwrap_or(0),
                );
                tick = (Instant::now(), out);
            }
        }
        if ops == want {
            // Counting missing bodies scans B's account: not in a tight loop.
            std::thread::sleep(Duration::from_millis(20));
            missing = b.bodies_missing();
        }
        if (ops, missing) != last.1 {
            last = (Instant::now(), (ops, missing));
        }
        if last.0.elapsed() > Duration::from_secs(120) {
            panic!(
                "stalled for 2 minutes at {ops} of {want} ops, {missing} bodies missing; B's last lines: {:?}; logs in {}",
                b.tail(),
                run_dir.display()
            );
        }
        ops == want && missing == 0
    })
    .expect("initial sync within an hour");
    let secs = t.elapsed().as_secs_f64();
    let st = a.status();
    let p = &st["peers"][0];
    let g = |k: &str| p[k].as_u64().unwrap_or(0);
    let alive = a.running() && b.running();
    let equal = a.dump(&bin) == b.dump(&bin);
    println!(
        "| Starling, {messages}, RTT +{:.0} ms, loss {:.1}% | {secs:.2} s | wire a→b {}, b→a {} | frames a→b {} | {} B lost and resent (A's view), RTT {:.1} ms | relay: {} | dumps equal: {} | running: {} |",
        2.0 * args.delay_ms,
        args.loss * 100.0,
        procs::mb(g("wire_out")),
        procs::mb(g("wire_in")),
        procs::mb(g("bytes_out")),
        g("wire_lost"),
        p["rtt_ms"].as_f64().unwrap_or(0.0),
        r.stats.line(),
        if equal { "yes" } else { "no" },
        if alive { "yes" } else { "no" }
    );
    // For the script.
    println!("result secs={secs:.3} wire_ab={} wire_ba={} equal={equal} alive={alive}", g("wire_out"), g("wire_in"));
    a.stop();
    b.stop();
    let _ = std::fs::remove_dir_all(&run_dir);
}
