//! Healing a split between two real nodes: A takes N deliveries over LMTP
//! while B is stopped, and an IMAP client on A looks at them (SELECT INBOX,
//! `UID FETCH 1:* (FLAGS)`: every UID is shown); then A stops and B takes
//! N deliveries of its own, its own client looking; then both run again.
//! Measured: time from both up until they hold the same ops and no body is
//! missing (and it stays so); checked: the dumps are equal and hold 2N
//! messages with distinct UIDs, and both processes still run.

use crate::imap::{is_fetch, Conn};
use crate::lmtp::Lmtp;
use crate::procs::{self, Node, USER};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Deliveries per side, each shown to that side's IMAP client.
    #[arg(long, default_value_t = 1_000)]
    per_side: usize,
    /// The `starling` binary (default: next to this one).
    #[arg(long)]
    starling: Option<PathBuf>,
    /// Where to put the data directories (a fresh temporary one by default;
    /// kept when given).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Stop once both sides took their mail (both nodes stopped, data
    /// directories kept in `--dir`): to heal by hand, e.g. under a profiler.
    #[arg(long, requires = "dir")]
    split_only: bool,
}

const PASSWORD: &str = "heal-bench-password";

fn message(side: &str, i: usize) -> String {
    format!(
        "From: sender{i}@example.org\r\nTo: u@example.org\r\nSubject: heal {side} {i}\r\nMessage-ID: <heal-{side}-{i}@example.org>\r\nDate: Sun, 29 Nov 2026 12:00:00 +0000\r\n\r\nbody of {side} {i}\r\n.a line that starts with a dot\r\n"
    )
}

/// Starts `n`, delivers `count` messages to it, lets a client look at
/// INBOX, returns (deliveries/s, messages the client saw, UID of each
/// message id), and stops it.
fn split_side(bin: &Path, n: &mut Node, side: &str, count: usize) -> (f64, usize, Vec<(String, u32)>) {
    n.start(bin);
    let t = Instant::now();
    let mut l = Lmtp::connect(&n.lmtp());
    for i in 0..count {
        l.deliver(USER, message(side, i).as_bytes());
    }
    l.quit();
    let rate = count as f64 / t.elapsed().as_secs_f64();
    let mut c = Conn::login(&n.imap(), USER, PASSWORD).expect("IMAP login");
    c.run("SELECT INBOX", |_| {}).expect("SELECT");
    let mut seen = 0;
    c.run("UID FETCH 1:* (FLAGS)", |l| seen += is_fetch(l) as usize).expect("UID FETCH");
    c.logout();
    let shown = procs::dump_messages(&n.dump(bin)).into_iter().map(|(_, uid, id, _)| (id, uid)).collect();
    let died = n.exit_status();
    assert!(died.is_none(), "{} died: {died:?}", n.name);
    n.stop();
    (rate, seen, shown)
}

pub fn run(args: Args) {
    let bin = procs::starling_bin(args.starling);
    let (_keep, dir) = procs::workdir(args.dir);
    let n = args.per_side;
    let mut a = Node::create(&bin, "a", dir.join("a"));
    let mut b = Node::create(&bin, "b", dir.join("b"));
    a.pin(&bin, &b, &format!("127.0.0.1:{}", b.port));
    b.pin(&bin, &a, &format!("127.0.0.1:{}", a.port));
    for x in [&a, &b] {
        procs::cli_stdin(&bin, &x.dir, &["account", "passwd", USER], &format!("{PASSWORD}\n"));
    }

    let (rate_a, seen_a, shown_a) = split_side(&bin, &mut a, "a", n);
    let (rate_b, seen_b, shown_b) = split_side(&bin, &mut b, "b", n);
    assert!(seen_a >= n && seen_b >= n, "clients saw {seen_a} and {seen_b} messages, expected {n} each");
    if args.split_only {
        println!(
            "split state in {} and {} (the node with the smaller id listens: start it first)",
            a.dir.display(),
            b.dir.display()
        );
        println!("a: starling --data-dir {} serve --peer-listen 127.0.0.1:{}", a.dir.display(), a.port);
        println!("b: starling --data-dir {} serve --peer-listen 127.0.0.1:{}", b.dir.display(), b.port);
        return;
    }

    // Both again: the node with the smaller id listens, start it first so
    // the other's first dial finds it.
    let t0 = Instant::now();
    let (first, second) = if a.id < b.id { (&mut a, &mut b) } else { (&mut b, &mut a) };
    first.start(&bin);
    second.start(&bin);
    let up = Instant::now();
    let mut last = (Instant::now(), (0u64, 0u64));
    let mut stable_since: Option<Instant> = None;
    let mut converged_at: Option<Duration> = None;
    // (seconds since both up, ops of A, ops of B) at every change.
    let mut trace: Vec<(f64, u64, u64)> = Vec::new();
    let ok = procs::wait_for(Duration::from_secs(3600), Duration::from_millis(10), || {
        let ops = (a.ops(), b.ops());
        if ops != last.1 {
            trace.push((up.elapsed().as_secs_f64(), ops.0, ops.1));
            last = (Instant::now(), ops);
            stable_since = None;
            converged_at = None;
        }
        if last.0.elapsed() > Duration::from_secs(120) {
            return true; // stalled: reported below
        }
        if ops.0 != ops.1 {
            return false;
        }
        // Same ops: are the bodies there too (a scan each: not too often)?
        if stable_since.is_none() {
            if a.bodies_missing() == 0 && b.bodies_missing() == 0 {
                stable_since = Some(Instant::now());
                converged_at = Some(up.elapsed());
            } else {
                std::thread::sleep(Duration::from_millis(40));
            }
            return false;
        }
        // Stays so for a second (nothing more arrives, nothing goes missing).
        stable_since.is_some_and(|s| s.elapsed() > Duration::from_secs(1))
            && a.bodies_missing() == 0
            && b.bodies_missing() == 0
    });
    let alive = (a.running(), b.running());
    let (ops_a, ops_b) = (a.ops(), b.ops());
    let Some(converged) = converged_at.filter(|_| ok.is_some() && ops_a == ops_b) else {
        println!("did not converge: ops {ops_a} / {ops_b}, stalled since {:?}", last.0.elapsed());
        for x in [&a, &b] {
            println!("{} last lines: {:#?}", x.name, x.tail());
            println!("{} log: {}", x.name, x.dir.join("serve.log").display());
        }
        std::process::exit(1);
    };
    let (da, db) = (a.dump(&bin), b.dump(&bin));
    let msgs = procs::dump_messages(&da);
    let inbox: Vec<_> = msgs.iter().filter(|m| m.0 == "INBOX").collect();
    let mut uids: Vec<u32> = inbox.iter().map(|m| m.1).collect();
    uids.sort_unstable();
    uids.dedup();
    let final_uid: std::collections::HashMap<&str, u32> = inbox.iter().map(|m| (m.2.as_str(), m.1)).collect();
    let kept =
        |shown: &[(String, u32)]| shown.iter().filter(|(id, uid)| final_uid.get(id.as_str()) == Some(uid)).count();
    let (kept_a, kept_b) = (kept(&shown_a), kept(&shown_b));
    println!("\n## Heal after {n} shown deliveries per side\n");
    println!("| shown deliveries per side | time to converge, from both up | from the first start | ops | messages | distinct UIDs | UIDs kept (A's shown, B's shown) | deliveries/s (A, B) |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {:.2} s | {:.2} s | {ops_a} | {} | {} | {kept_a} of {}, {kept_b} of {} | {rate_a:.0}, {rate_b:.0} |",
        converged.as_secs_f64(),
        converged.as_secs_f64() + (up - t0).as_secs_f64(),
        inbox.len(),
        uids.len(),
        shown_a.len(),
        shown_b.len()
    );
    println!();
    // Where the time went: ops counts as they changed (at most ~12 samples).
    let step = trace.len().div_ceil(12).max(1);
    let before_last = &trace[..trace.len().saturating_sub(1)];
    let mut shown: Vec<String> =
        before_last.iter().step_by(step).map(|(t, x, y)| format!("{t:.2} s: {x}/{y}")).collect();
    if let Some((t, x, y)) = trace.last() {
        shown.push(format!("{t:.2} s: {x}/{y} (ops equal)"));
    }
    println!("ops of A/B after both up: {}", shown.join(", "));
    println!("bodies complete and ops equal at {:.2} s", converged.as_secs_f64());
    println!("dumps equal: {}", if da == db { "yes" } else { "no" });
    println!(
        "INBOX holds 2N = {} messages with distinct UIDs: {}",
        2 * n,
        if inbox.len() == 2 * n && uids.len() == inbox.len() { "yes" } else { "no" }
    );
    println!(
        "processes still running at the end: {}",
        if alive.0 && alive.1 { "yes".to_string() } else { format!("no (a: {alive:?})") }
    );
    a.stop();
    b.stop();
}
