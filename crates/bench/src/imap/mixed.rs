//! The mixed-load step: `clients` threads, each looping for a fixed time
//! over what a mail client does when it checks in (connect, LOGIN, SELECT,
//! FETCH of a few messages' flags and headers, STORE of a flag on and off,
//! APPEND of a small message, STORE `\Deleted` and UID EXPUNGE of it,
//! LOGOUT), every command timed to its tagged answer.
//!
//! Bounded: one thread per client, and per command one shared histogram of
//! fixed size (atomic counters), so memory does not grow with the run.

use super::{quote, untagged_number, Conn, Res, Row};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Commands timed, in the order of one loop.
#[derive(Clone, Copy)]
enum Cmd {
    /// TCP connect to the greeting.
    Connect,
    Login,
    Select,
    Fetch,
    /// Three a loop: `+FLAGS (\Flagged)`, `-FLAGS (\Flagged)` on a message
    /// of the mailbox, `UID STORE … +FLAGS.SILENT (\Deleted)` on the
    /// appended one.
    Store,
    Append,
    /// `UID EXPUNGE` of the appended message.
    Expunge,
    Logout,
}

const CMDS: [(Cmd, &str); 8] = [
    (Cmd::Connect, "connect"),
    (Cmd::Login, "LOGIN"),
    (Cmd::Select, "SELECT"),
    (Cmd::Fetch, "FETCH"),
    (Cmd::Store, "STORE"),
    (Cmd::Append, "APPEND"),
    (Cmd::Expunge, "UID EXPUNGE"),
    (Cmd::Logout, "LOGOUT"),
];

/// Messages of one FETCH.
const FETCH_MESSAGES: u64 = 5;

/// Distinct error messages kept per command, for the report.
const ERROR_SAMPLES_MAX: usize = 3;

/// A latency histogram of fixed size: exact below 128 µs, then 64
/// buckets per power of two (under 1.6 % relative error), up to 2^37 µs
/// (38 hours); atomic so that every client thread records into one.
pub(crate) struct Histogram {
    buckets: Vec<AtomicU64>,
}

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const OCTAVES_MAX: u64 = 32;

impl Histogram {
    pub(crate) fn new() -> Histogram {
        Histogram { buckets: (0..(2 * SUB + OCTAVES_MAX * SUB)).map(|_| AtomicU64::new(0)).collect() }
    }

    fn index(us: u64) -> usize {
        if us < 2 * SUB {
            return us as usize;
        }
        // us in [2^k, 2^(k+1)), k ≥ SUB_BITS + 1: the top SUB_BITS + 1 bits.
        let k = 63 - us.leading_zeros() as u64;
        let octave = (k - SUB_BITS as u64 - 1).min(OCTAVES_MAX - 1);
        let shift = octave + 1;
        let sub = ((us >> shift) - SUB).min(SUB - 1);
        (2 * SUB + octave * SUB + sub) as usize
    }

    /// The smallest value of bucket `i`.
    fn low(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * SUB {
            return i;
        }
        let (octave, sub) = ((i - 2 * SUB) / SUB, (i - 2 * SUB) % SUB);
        (SUB + sub) << (octave + 1)
    }

    pub(crate) fn record(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.buckets[Self::index(us)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The value at quantile `q` (0..=1), in ms: the middle of its bucket.
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        let n = self.count();
        if n == 0 {
            return f64::NAN;
        }
        let rank = ((n as f64 * q).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                let (lo, hi) = (Self::low(i), Self::low(i + 1));
                return (lo + hi) as f64 / 2.0 / 1e3;
            }
        }
        unreachable!("rank ≤ count")
    }
}

/// What the client threads share.
struct Shared {
    addr: String,
    user: String,
    password: String,
    mailbox: String,
    /// Messages of the mailbox before the step: FETCH and STORE stay below.
    base: u64,
    literal_plus: bool,
    until: Instant,
    hist: Vec<Histogram>,
    errors: Vec<AtomicU64>,
    samples: Mutex<Vec<Vec<String>>>,
    /// Loops that ran to the end.
    loops: AtomicU64,
    /// Appended messages left behind by a loop that failed after APPEND.
    left: AtomicU64,
}

impl Shared {
    fn error(&self, cmd: Cmd, e: String) {
        self.errors[cmd as usize].fetch_add(1, Ordering::Relaxed);
        let mut s = self.samples.lock().unwrap();
        let v = &mut s[cmd as usize];
        if v.len() < ERROR_SAMPLES_MAX && !v.contains(&e) {
            v.push(e);
        }
    }

    /// Runs `f`, timing it as `cmd` if it succeeds, counting an error if not.
    fn timed<T>(&self, cmd: Cmd, f: impl FnOnce() -> Res<T>) -> Option<T> {
        let t = Instant::now();
        match f() {
            Ok(v) => {
                self.hist[cmd as usize].record(t.elapsed());
                Some(v)
            }
            Err(e) => {
                self.error(cmd, e);
                None
            }
        }
    }
}

/// A small message, distinct per client and loop.
fn small_message(client: usize, n: u64) -> Vec<u8> {
    let mut m = format!(
        "From: Load Client {client} <client{client}@bench.example>\r\n\
         To: bench@bench.example\r\n\
         Subject: mixed load {client}.{n}\r\n\
         Date: Tue, 01 Dec 2026 03:00:00 +0000\r\n\
         Message-ID: <mixed.{client}.{n}.{}@bench.example>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n",
        std::process::id()
    )
    .into_bytes();
    for i in 0..12 {
        m.extend_from_slice(format!("line {i} of a short note from a client under load.\r\n").as_bytes());
    }
    m
}

/// One loop of one client; `None` when a command failed (the connection is
/// dropped and the next loop starts afresh).
fn one_loop(s: &Shared, client: usize, n: u64) -> Option<()> {
    let mut c = s.timed(Cmd::Connect, || Conn::connect(&s.addr, 16 << 10))?;
    s.timed(Cmd::Login, || c.login_command(&s.user, &s.password))?;
    let mut exists = 0;
    s.timed(Cmd::Select, || {
        c.run(&format!("SELECT {}", quote(&s.mailbox)), |l| exists = untagged_number(l, "EXISTS").unwrap_or(exists))
    })?;
    // A window that moves with the client and the loop, within the
    // messages that were there before the step (appends go after them).
    let first = 1 + (client as u64 * 97 + n * FETCH_MESSAGES) % (s.base - FETCH_MESSAGES + 1);
    let last = first + FETCH_MESSAGES - 1;
    s.timed(Cmd::Fetch, || c.run(&format!("FETCH {first}:{last} (UID FLAGS BODY.PEEK[HEADER])"), |_| {}))?;
    s.timed(Cmd::Store, || c.run(&format!("STORE {first} +FLAGS (\\Flagged)"), |_| {}))?;
    s.timed(Cmd::Store, || c.run(&format!("STORE {first} -FLAGS (\\Flagged)"), |_| {}))?;
    let msg = small_message(client, n);
    let uid = s.timed(Cmd::Append, || {
        c.append_raw(&s.mailbox, "", &msg, s.literal_plus)?;
        appenduid(&c.buf).ok_or_else(|| format!("APPEND: no APPENDUID in {}", super::shown(&c.buf)))
    })?;
    let expunged = s
        .timed(Cmd::Store, || c.run(&format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)"), |_| {}))
        .and_then(|_| s.timed(Cmd::Expunge, || c.run(&format!("UID EXPUNGE {uid}"), |_| {})));
    if expunged.is_none() {
        s.left.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    s.timed(Cmd::Logout, || c.logout_wait())?;
    Some(())
}

/// The UID of `[APPENDUID validity uid]` in a tagged OK.
fn appenduid(line: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(line).ok()?;
    let at = s.find("[APPENDUID ")? + "[APPENDUID ".len();
    s[at..].split(']').next()?.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the step once for each number of clients; rows keyed
/// `mixed-<clients>-<command>`, throughput as the value.
pub(super) fn mixed(args: &super::Args) -> Res<Vec<Row>> {
    let mut setup = Conn::login(&args.addr, &args.user, &args.password)?;
    if !setup.has("UIDPLUS") {
        return Err("the mixed step needs UIDPLUS (APPENDUID, UID EXPUNGE)".into());
    }
    let base = setup.messages(&args.mixed_mailbox)? as u64;
    if base < FETCH_MESSAGES {
        return Err(format!("{}: {base} messages, the mixed step needs {FETCH_MESSAGES}", args.mixed_mailbox));
    }
    let literal_plus = setup.literal_plus;
    setup.logout();
    let mut rows = Vec::new();
    for &clients in &args.mixed_clients {
        let load_before = loadavg();
        std::thread::sleep(Duration::from_secs(1));
        let start = Instant::now();
        let shared = Arc::new(Shared {
            addr: args.addr.clone(),
            user: args.user.clone(),
            password: args.password.clone(),
            mailbox: args.mixed_mailbox.clone(),
            base,
            literal_plus,
            until: start + Duration::from_secs_f64(args.mixed_secs),
            hist: CMDS.iter().map(|_| Histogram::new()).collect(),
            errors: CMDS.iter().map(|_| AtomicU64::new(0)).collect(),
            samples: Mutex::new(vec![Vec::new(); CMDS.len()]),
            loops: AtomicU64::new(0),
            left: AtomicU64::new(0),
        });
        let threads: Vec<_> = (0..clients)
            .map(|client| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .stack_size(256 << 10)
                    .spawn(move || {
                        let mut n = 0u64;
                        while Instant::now() < s.until {
                            if one_loop(&s, client, n).is_some() {
                                s.loops.fetch_add(1, Ordering::Relaxed);
                            } else {
                                // Do not spin on a server that refuses.
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            n += 1;
                        }
                    })
                    .map_err(|e| format!("starting client thread {client}: {e}"))
            })
            .collect::<Res<_>>()?;
        for t in threads {
            t.join().map_err(|_| "a mixed-load client thread panicked".to_string())?;
        }
        let secs = start.elapsed().as_secs_f64();
        let load_after = loadavg();
        let s = &shared;
        let samples = s.samples.lock().unwrap().clone();
        eprintln!(
            "mixed {clients} clients: {} loops in {secs:.1} s, load {load_before} → {load_after}",
            s.loops.load(Ordering::Relaxed)
        );
        for (i, (_, name)) in CMDS.iter().enumerate() {
            let h = &s.hist[i];
            let (count, errors) = (h.count(), s.errors[i].load(Ordering::Relaxed));
            let rate = count as f64 / secs;
            let (p50, p99) = (h.quantile_ms(0.5), h.quantile_ms(0.99));
            let mut detail = format!("{count} OK in {secs:.1} s, p50 {p50:.1} ms, p99 {p99:.1} ms, {errors} failed");
            if !samples[i].is_empty() {
                detail += &format!(" (e.g. {})", samples[i].join("; "));
            }
            rows.push(Row {
                key: format!("mixed-{clients}-{}", name.replace(' ', "-").to_ascii_lowercase()),
                what: format!("mixed load, {clients} clients, {name}"),
                value: rate,
                unit: "cmd/s",
                better: "higher",
                result: format!("{rate:.1}/s"),
                detail,
                extra: Some(json!({
                    "clients": clients, "command": name, "secs": secs, "count": count, "errors": errors,
                    "rate": rate, "p50_ms": p50, "p99_ms": p99,
                    "loops": s.loops.load(Ordering::Relaxed), "left_behind": s.left.load(Ordering::Relaxed),
                    "load_before": load_before, "load_after": load_after,
                })),
            });
        }
    }
    Ok(rows)
}

/// The 1-minute load average, as /proc/loadavg says it.
pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_ordered_and_close() {
        let mut prev = 0;
        for us in (0..200_000u64).chain([1 << 30, 1 << 36, u64::MAX]) {
            let i = Histogram::index(us);
            assert!(i >= prev, "{us}");
            prev = i;
            let (lo, hi) = (Histogram::low(i), Histogram::low(i + 1));
            if us < 1 << 37 {
                assert!(lo <= us && us < hi, "{us}: {lo}..{hi}");
                assert!((hi - lo) as f64 <= 1.0 + us as f64 / SUB as f64, "{us}: {lo}..{hi}");
            }
        }
        assert!(Histogram::index(u64::MAX) < Histogram::new().buckets.len());
    }

    #[test]
    fn quantiles() {
        let h = Histogram::new();
        assert!(h.quantile_ms(0.5).is_nan());
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 100);
        let near = |a: f64, b: f64| (a - b).abs() <= b * 0.02;
        assert!(near(h.quantile_ms(0.5), 50.0), "{}", h.quantile_ms(0.5));
        assert!(near(h.quantile_ms(0.99), 99.0), "{}", h.quantile_ms(0.99));
        assert!(near(h.quantile_ms(1.0), 100.0));
    }

    #[test]
    fn appenduid_is_read() {
        assert_eq!(appenduid(b"b5 OK [APPENDUID 1700000000 4242] Append completed.\r\n"), Some(4242));
        assert_eq!(appenduid(b"b5 OK done\r\n"), None);
    }
}
