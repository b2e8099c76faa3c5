//! LMTP delivery latency and throughput, with exposure after k peers.
//!
//! Per cell (k, added round trip, connections C): three fresh `starling
//! serve` nodes a, b and c, each pinning the other two, all three with
//! `[durability] peers = k` (`wait_ms`, `when_short = "degrade"`). With an
//! added round trip R, the links a–b and a–c run through the delaying UDP
//! relay ([`crate::relay`]), each datagram held R/2 each way: the dialing
//! node of the pair (the larger id) has the relay's address pinned for the
//! other. b–c is direct. Every node also has its metrics endpoint on, for
//! the exposure counters. With `--solo`, node a alone (k = 0, no peers)
//! first: the local delivery path without replication.
//!
//! The client opens C LMTP connections to a, delivers `--warmup` messages
//! on each (untimed), then the clock starts and the C connections deliver
//! the first N messages of the corpus between them, each taking the next
//! one when its last is answered. Latency per message: from writing its
//! final `.` line to reading the reply (the envelope's round trips are
//! outside it, inside the throughput). Throughput: N over the time from the
//! start until the last reply. CPU time of the server's processes (from
//! /proc) and the machine's busy share are taken over the same span, so a
//! run on a machine busy with something else shows it.
//!
//! With `--lmtp ADDR` the same client measures another LMTP server (e.g.
//! Dovecot's, `crates/bench/lmtp-vs-dovecot.sh`) for each C, no nodes
//! started.

use crate::lmtp::{self, Lmtp};
use crate::procs::{self, Node, USER};
use crate::relay;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// A directory of message files, taken in name order (e.g.
    /// `gen-maildir.py files DIR 2000 --seed 1`).
    corpus: PathBuf,
    /// Concurrent LMTP connections, one cell each.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8])]
    connections: Vec<usize>,
    /// Timed messages per cell, one per entry of --connections (the last
    /// one repeats).
    #[arg(long, value_delimiter = ',', default_values_t = [300usize, 2000])]
    messages: Vec<usize>,
    /// Values of k (`[durability] peers`).
    #[arg(long, value_delimiter = ',', default_values_t = [0usize, 1, 2])]
    k: Vec<usize>,
    /// Round trips added between node a and each of its peers (ms); the
    /// relay holds each datagram half of it, each way.
    #[arg(long, value_delimiter = ',', default_values_t = [0.0f64, 50.0])]
    rtt_ms: Vec<f64>,
    /// `[durability] wait_ms`: a delivery short of peers by then is
    /// answered anyway (degrade) and counted as short.
    #[arg(long, default_value_t = 10_000)]
    wait_ms: u64,
    /// Also measure one node alone (k = 0, no peers) for each connection
    /// count, first: the local delivery path without replication.
    #[arg(long)]
    solo: bool,
    /// Untimed deliveries on each connection before the clock starts
    /// (small messages of their own).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Measure this LMTP server instead of starting nodes (--k and
    /// --rtt-ms are then ignored).
    #[arg(long)]
    lmtp: Option<String>,
    /// With --lmtp: the server's process id; its CPU time and that of
    /// all its descendants is counted.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The recipient (with --lmtp; Starling's nodes have account `u`).
    #[arg(long, default_value = USER)]
    rcpt: String,
    /// Name of the server in the output.
    #[arg(long)]
    label: Option<String>,
    /// Append one JSON object per cell to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The `starling` binary (default: next to this one).
    #[arg(long)]
    starling: Option<PathBuf>,
    /// Where to put the nodes' data directories (a fresh temporary one by
    /// default; each cell's is removed after it).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// What one timed run measured from the client's side.
struct Run {
    secs: f64,
    /// Latencies of the messages answered 250, sorted.
    latencies: Vec<Duration>,
    /// The same, of the messages under [`SMALL`] bytes only.
    small: Vec<Duration>,
    /// Replies other than 250: how many, and the first one.
    failed: usize,
    first_failure: Option<String>,
    /// Busy share of the machine's CPUs during the run (0..1), and of
    /// iowait.
    busy: f64,
    iowait: f64,
    /// CPU seconds during the run: the server's processes (each group
    /// separately: Starling's a, then b and c), this process (client and
    /// relays).
    server_cpu: Vec<f64>,
    own_cpu: f64,
    /// CPU seconds of the machine's cores in the run's time.
    machine_cpu: f64,
}

/// Messages under this size (DATA bytes) are also counted apart: most
/// mail (95% of the generated corpus).
const SMALL: usize = 20_000;

/// The `q` quantile of sorted durations, in ms.
fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

impl Run {
    fn quantile_ms(&self, q: f64) -> f64 {
        quantile(&self.latencies, q)
    }
    fn mean_ms(&self) -> f64 {
        self.latencies.iter().map(|d| d.as_secs_f64()).sum::<f64>() * 1000.0 / self.latencies.len().max(1) as f64
    }
}

/// (busy, iowait, total) jiffies of all CPUs, from /proc/stat.
fn cpu_jiffies() -> (u64, u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> =
        s.lines().next().unwrap_or("").split_whitespace().skip(1).take(8).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 5 {
        return (0, 0, 1);
    }
    let total: u64 = v.iter().sum();
    (total - v[3] - v[4], v[4], total)
}

/// Clock ticks per second of /proc's CPU times.
const TICKS: f64 = 100.0;

/// (pid, parent pid, CPU ticks: own and of reaped children) of every process.
fn processes() -> Vec<(u32, u32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // After the command's closing parenthesis: state, ppid, … utime
            // is the 14th field of the line, cstime the 17th.
            let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ppid = f.get(1)?.parse().ok()?;
            let ticks: u64 = f.get(11..15)?.iter().filter_map(|x| x.parse::<u64>().ok()).sum();
            Some((pid, ppid, ticks))
        })
        .collect()
}

/// CPU seconds of each group of processes with all their descendants
/// (reaped ones included, through their parents).
fn tree_cpu(groups: &[Vec<u32>]) -> Vec<f64> {
    let all = processes();
    let parent: std::collections::HashMap<u32, u32> = all.iter().map(|&(p, pp, _)| (p, pp)).collect();
    let in_group = |g: &[u32], mut p: u32| loop {
        if g.contains(&p) {
            return true;
        }
        match parent.get(&p) {
            Some(&pp) if pp != 0 && pp != p => p = pp,
            _ => return false,
        }
    };
    groups.iter().map(|g| all.iter().filter(|x| in_group(g, x.0)).map(|x| x.2).sum::<u64>() as f64 / TICKS).collect()
}

/// CPU seconds of this process (all its threads).
fn own_cpu() -> f64 {
    let me = std::process::id();
    processes().iter().find(|x| x.0 == me).map_or(0.0, |x| x.2 as f64 / TICKS)
}

/// The corpus's first `n` messages as DATA sends them.
fn corpus(dir: &Path, n: usize) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= n, "{}: {} messages, {n} wanted (without repeats)", dir.display(), files.len());
    files[..n].iter().map(|p| lmtp::data(&std::fs::read(p).unwrap())).collect()
}

fn warmup_message(c: usize, i: usize) -> Vec<u8> {
    let body = "warm up the connection before the clock starts\r\n".repeat(40);
    lmtp::data(
        format!(
            "From: warmup@example.org\r\nTo: u@example.org\r\nSubject: warm-up {c}.{i}\r\nMessage-ID: <warmup-{c}-{i}-{}@example.org>\r\n\r\n{body}",
            std::process::id()
        )
        .as_bytes(),
    )
}

/// Delivers `msgs` to `addr` over `c` connections (after the warm-up) and
/// measures.
/// `servers`: the server's processes, in groups counted apart.
fn deliver(addr: &str, rcpt: &str, c: usize, warmup: usize, msgs: &[Vec<u8>], servers: &[Vec<u32>]) -> Run {
    let mut conns: Vec<Lmtp> = (0..c).map(|_| Lmtp::connect(addr)).collect();
    for (ci, l) in conns.iter_mut().enumerate() {
        for i in 0..warmup {
            l.deliver(rcpt, &warmup_message(ci, i));
        }
    }
    let next = AtomicUsize::new(0);
    let start = Barrier::new(c + 1);
    let failures = Mutex::new((0usize, None::<String>));
    let (latencies, secs, cpu0, cpu1, srv0, srv1, own0, own1) = std::thread::scope(|s| {
        let workers: Vec<_> = conns
            .into_iter()
            .map(|mut l| {
                let (next, start, failures) = (&next, &start, &failures);
                s.spawn(move || {
                    let mut lat = Vec::new();
                    start.wait();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(m) = msgs.get(i) else { break };
                        l.envelope(rcpt);
                        let (code, text, took) = l.message(m);
                        if code == 250 {
                            lat.push((m.len(), took));
                        } else {
                            let mut f = failures.lock().unwrap();
                            f.0 += 1;
                            f.1.get_or_insert(text);
                        }
                    }
                    let end = Instant::now();
                    l.quit();
                    (lat, end)
                })
            })
            .collect();
        let (srv0, own0) = (tree_cpu(servers), own_cpu());
        let cpu0 = cpu_jiffies();
        start.wait();
        let t0 = Instant::now();
        let mut all = Vec::new();
        let mut end = t0;
        for w in workers {
            let (lat, e) = w.join().unwrap();
            all.extend(lat);
            end = end.max(e);
        }
        let cpu1 = cpu_jiffies();
        (all, (end - t0).as_secs_f64(), cpu0, cpu1, srv0, tree_cpu(servers), own0, own_cpu())
    });
    let mut small: Vec<Duration> = latencies.iter().filter(|(n, _)| *n < SMALL).map(|(_, d)| *d).collect();
    let mut latencies: Vec<Duration> = latencies.into_iter().map(|(_, d)| d).collect();
    latencies.sort_unstable();
    small.sort_unstable();
    let total = (cpu1.2 - cpu0.2).max(1) as f64;
    let (failed, first_failure) = failures.into_inner().unwrap();
    Run {
        secs,
        latencies,
        small,
        failed,
        first_failure,
        busy: (cpu1.0 - cpu0.0) as f64 / total,
        iowait: (cpu1.1 - cpu0.1) as f64 / total,
        server_cpu: srv1.iter().zip(&srv0).map(|(b, a)| b - a).collect(),
        own_cpu: own1 - own0,
        machine_cpu: total / TICKS,
    }
}

/// Pins `x` and `y` to each other. With a delay, the dialer of the pair
/// (the larger id) has a relay's address for the other, the relay holding
/// each datagram `delay` each way.
fn link(bin: &Path, x: &Node, y: &Node, delay: Option<Duration>) -> Option<relay::UdpRelay> {
    let (dialer, dialed) = if x.id > y.id { (x, y) } else { (y, x) };
    dialed.pin(bin, dialer, &format!("127.0.0.1:{}", dialer.port));
    let direct = format!("127.0.0.1:{}", dialed.port);
    match delay {
        None => {
            dialer.pin(bin, dialed, &direct);
            None
        }
        Some(d) => {
            let r = relay::udp("127.0.0.1:0".parse().unwrap(), direct.parse().unwrap(), d, 0.0, 1);
            dialer.pin(bin, dialed, &r.addr.to_string());
            Some(r)
        }
    }
}

/// The exposure counters of a node's metrics: (waits, short, wait ms in total).
fn exposure(n: &Node) -> (f64, f64, f64) {
    let page = n.metrics();
    let g = |name| procs::metric(&page, name).unwrap_or(f64::NAN);
    (
        g("starling_exposure_waits_total"),
        g("starling_exposure_short_total"),
        g("starling_exposure_wait_milliseconds_total"),
    )
}

/// One JSON line and one table row for a cell.
#[allow(clippy::too_many_arguments)]
fn report(
    args: &Args,
    label: &str,
    k: Option<usize>,
    rtt_ms: Option<f64>,
    c: usize,
    msgs: &[Vec<u8>],
    run: &Run,
    extra: serde_json::Value,
    notes: &str,
) {
    let n = msgs.len();
    let bytes: usize = msgs.iter().map(Vec::len).sum();
    let rate = run.latencies.len() as f64 / run.secs;
    let row = json!({
        "label": label, "k": k, "rtt_ms": rtt_ms, "connections": c, "messages": n, "bytes": bytes,
        "secs": run.secs, "per_s": rate, "mb_per_s": bytes as f64 / 1e6 / run.secs,
        "p50_ms": run.quantile_ms(0.5), "p90_ms": run.quantile_ms(0.9), "p99_ms": run.quantile_ms(0.99),
        "max_ms": run.quantile_ms(1.0), "mean_ms": run.mean_ms(),
        "small": run.small.len(), "p50_small_ms": quantile(&run.small, 0.5), "p99_small_ms": quantile(&run.small, 0.99),
        "failed": run.failed, "first_failure": run.first_failure,
        "cpu_busy": run.busy, "cpu_iowait": run.iowait, "server_cpu_s": run.server_cpu,
        "client_cpu_s": run.own_cpu, "machine_cpu_s": run.machine_cpu, "server": extra,
    });
    if let Some(path) = &args.json {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("json file");
        writeln!(f, "{row}").unwrap();
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "—".into());
    let per_msg: Vec<String> =
        run.server_cpu.iter().map(|s| format!("{:.2}", s * 1000.0 / run.latencies.len().max(1) as f64)).collect();
    let others = run.busy * run.machine_cpu - run.server_cpu.iter().sum::<f64>() - run.own_cpu;
    println!(
        "| {label} | {} | {} | {c} | {n} ({:.1} MB) | {rate:.0} msg/s ({:.2} s) | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} ({}) | {} | {:.0}% ({:.0}% iowait; others {:.0}%) | {}{notes} |",
        opt(k.map(|k| k.to_string())),
        opt(rtt_ms.map(|r| format!("+{r:.0} ms"))),
        bytes as f64 / 1e6,
        run.secs,
        run.quantile_ms(0.5),
        run.quantile_ms(0.9),
        run.quantile_ms(0.99),
        run.quantile_ms(1.0),
        quantile(&run.small, 0.5),
        quantile(&run.small, 0.99),
        run.small.len(),
        if per_msg.is_empty() { "—".to_string() } else { per_msg.join(" + ") },
        run.busy * 100.0,
        run.iowait * 100.0,
        (others / run.machine_cpu * 100.0).max(0.0),
        if run.failed > 0 {
            format!("**{} failed** ({}); ", run.failed, run.first_failure.as_deref().unwrap_or("").trim())
        } else {
            String::new()
        }
    );
}

fn header() {
    println!("| server | k | RTT added (a–b, a–c) | connections | messages | throughput | p50 ms | p90 ms | p99 ms | max ms | under 20 KB: p50 / p99 ms (count) | server CPU ms/msg | machine CPU busy | notes |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
}

/// Messages for the cell of the `i`th connection count.
fn count(args: &Args, i: usize) -> usize {
    *args.messages.get(i).or(args.messages.last()).expect("--messages")
}

pub fn run(args: Args) {
    let most = (0..args.connections.len()).map(|i| count(&args, i)).max().unwrap_or(0);
    let msgs = corpus(&args.corpus, most);
    header();
    if let Some(addr) = &args.lmtp {
        let label = args.label.clone().unwrap_or_else(|| format!("LMTP {addr}"));
        for (i, &c) in args.connections.iter().enumerate() {
            let m = &msgs[..count(&args, i)];
            let servers: Vec<Vec<u32>> = args.server_pid.map(|p| vec![p]).into_iter().collect();
            let run = deliver(addr, &args.rcpt, c, args.warmup, m, &servers);
            report(&args, &label, None, None, c, m, &run, json!(null), "");
        }
        return;
    }
    let bin = procs::starling_bin(args.starling.clone());
    let (_keep, dir) = procs::workdir(args.dir.clone());
    let label = args.label.clone().unwrap_or_else(|| "Starling".into());
    if args.solo {
        for (i, &c) in args.connections.iter().enumerate() {
            cell(&args, &bin, &dir, &format!("{label}, one node"), 0, None, c, &msgs[..count(&args, i)]);
        }
    }
    for &rtt in &args.rtt_ms {
        for &k in &args.k {
            for (i, &c) in args.connections.iter().enumerate() {
                let m = &msgs[..count(&args, i)];
                cell(&args, &bin, &dir, &label, k, Some(rtt), c, m);
            }
        }
    }
}

/// One cell on three fresh nodes (`rtt` given), or on node a alone.
#[allow(clippy::too_many_arguments)]
fn cell(args: &Args, bin: &Path, dir: &Path, label: &str, k: usize, rtt: Option<f64>, c: usize, msgs: &[Vec<u8>]) {
    let names: &[&str] = if rtt.is_some() { &["a", "b", "c"] } else { &["a"] };
    let cell_dir = dir.join(format!("k{k}-rtt{}-c{c}", rtt.map_or("-solo".into(), |r| r.to_string())));
    let _ = std::fs::remove_dir_all(&cell_dir);
    std::fs::create_dir_all(&cell_dir).unwrap();
    let config = cell_dir.join("starling.toml");
    std::fs::write(
        &config,
        format!("[durability]\npeers = {k}\nwait_ms = {}\nwhen_short = \"degrade\"\n", args.wait_ms),
    )
    .unwrap();
    let mut nodes: Vec<Node> = names.iter().map(|n| Node::create(bin, n, cell_dir.join(n))).collect();
    let relays: Vec<relay::UdpRelay> = match rtt {
        Some(rtt) => {
            let delay = (rtt > 0.0).then(|| Duration::from_secs_f64(rtt / 2000.0));
            [
                link(bin, &nodes[0], &nodes[1], delay),
                link(bin, &nodes[0], &nodes[2], delay),
                link(bin, &nodes[1], &nodes[2], None),
            ]
            .into_iter()
            .flatten()
            .collect()
        }
        None => Vec::new(),
    };
    for n in &mut nodes {
        n.serve_args =
            vec!["--config".into(), config.to_str().unwrap().into(), "--metrics-listen".into(), "127.0.0.1:0".into()];
        n.start(bin);
    }
    let connected = |n: &Node| n.status()["peers"].as_array().is_some_and(|p| p.iter().all(|p| p["connected"] == true));
    procs::wait_for(Duration::from_secs(60), Duration::from_millis(20), || nodes.iter().all(connected))
        .unwrap_or_else(|| panic!("peers not all connected within 60 s; logs in {}", cell_dir.display()));
    let a = &nodes[0];
    let lmtp = a.lmtp();
    let before = exposure(a);
    let pid = |n: &Node| n.pid().expect("running");
    let mut servers = vec![vec![pid(a)]];
    if nodes.len() > 1 {
        servers.push(nodes[1..].iter().map(pid).collect());
    }
    let run = deliver(&lmtp, USER, c, args.warmup, msgs, &servers);
    let after = exposure(a);
    let last_reply = Instant::now();
    // How long after the last reply b and c hold every op and body a has
    // (counting missing bodies is a scan: not in a tight loop).
    let want = a.ops();
    let caught_up = procs::wait_for(Duration::from_secs(120), Duration::from_millis(2), || {
        nodes[1..].iter().all(|n| n.ops() >= want) && {
            let done = nodes[1..].iter().all(|n| n.bodies_missing() == 0);
            if !done {
                std::thread::sleep(Duration::from_millis(10));
            }
            done
        }
    })
    .map(|_| last_reply.elapsed());
    let missing: u64 = nodes[1..].iter().map(|n| n.bodies_missing()).sum();
    let status = a.status();
    let peer_rtt: Vec<String> = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{:.1}", p["rtt_ms"].as_f64().unwrap_or(f64::NAN)))
        .collect();
    let held = procs::dump_messages(&a.dump(bin)).len();
    let expected = msgs.len() + c * args.warmup;
    let alive = nodes.iter_mut().all(|n| n.running());
    let late: Vec<String> = relays
        .iter()
        .map(|r| {
            let g = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed) as f64 / 1000.0;
            format!("{:.1}/{:.1}", g(&r.stats.up_late_max_us), g(&r.stats.down_late_max_us))
        })
        .collect();
    let waits = after.0 - before.0;
    let short = after.1 - before.1;
    let wait_mean = if waits > 0.0 { (after.2 - before.2) / waits } else { 0.0 };
    let extra = json!({
        "exposure_waits": waits, "exposure_short": short, "exposure_wait_mean_ms": wait_mean,
        "peers_caught_up_ms": caught_up.map(|d| d.as_secs_f64() * 1000.0),
        "peer_bodies_missing": missing, "peer_rtt_ms": peer_rtt, "messages_held": held,
        "messages_expected": expected, "alive": alive, "relay_late_max_ms": late,
    });
    let mut notes = vec![];
    if k > 0 {
        notes.push(format!("server's wait for peers {wait_mean:.1} ms mean, {short:.0} short"));
    }
    if nodes.len() > 1 {
        notes.push(match caught_up {
            Some(d) => format!("b, c hold all ops and bodies {:.0} ms after the last reply", d.as_secs_f64() * 1000.0),
            None => "**b, c not caught up within 120 s**".into(),
        });
        notes.push(format!("a's peer RTT {} ms", peer_rtt.join(", ")));
    }
    if !late.is_empty() {
        notes.push(format!("relays late ≤ {} ms", late.join(", ")));
    }
    if held != expected || missing > 0 || !alive {
        notes.push(format!(
            "**a holds {held} of {expected} messages, peers miss {missing} bodies, all running: {alive}**"
        ));
    }
    report(args, label, Some(k), rtt, c, msgs, &run, extra, &notes.join("; "));
    for n in &mut nodes {
        n.stop();
    }
    drop(relays);
    if args.dir.is_none() || (held == expected && missing == 0 && alive && run.failed == 0) {
        let _ = std::fs::remove_dir_all(&cell_dir);
    }
}
