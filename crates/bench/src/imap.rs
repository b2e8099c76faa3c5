//! An IMAP server measured from outside, as a client sees it, so that Dovecot
//! and Starling are measured by the same code: APPEND throughput, FETCH of
//! 10,000 headers, STORE of 10,000 flags, SELECT of a 100,000-message mailbox
//! with CONDSTORE, and memory per idle connection (Pss of the server's
//! processes read from /proc); on request, logins per second, a mixed load
//! of many clients ([`mixed`]) and SORT/THREAD on 100,000 messages
//! ([`sort`]).
//!
//! Plain TCP and LOGIN (meant for loopback), `ENABLE CONDSTORE` when offered,
//! one command in flight at a time, synchronous std::net: the client stays
//! out of the way of what is measured. Any NO or BAD stops the bench with the
//! server's line.

use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

mod mixed;
mod sort;

type Res<T> = Result<T, String>;

/// Mailbox of the APPEND measurement, recreated on every run.
const APPEND_BOX: &str = "bench-append";
/// Mailbox of the FETCH and STORE measurements, filled once if short.
const FETCH_BOX: &str = "bench-10k";
/// Mailbox of the SELECT measurement; the caller fills it beforehand.
const SELECT_BOX: &str = "bench-100k";

#[derive(clap::Args)]
pub struct Args {
    /// The server, HOST:PORT (plain IMAP, no TLS).
    #[arg(long)]
    addr: String,
    #[arg(long)]
    user: String,
    #[arg(long)]
    password: String,
    /// A Maildir tree whose messages are appended (cycled if it has too few).
    #[arg(long)]
    maildir: PathBuf,
    /// Server processes for the memory measurement, with all their descendants
    /// (for Dovecot, the master's PID is enough).
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// Or: processes whose program name (argv[0]) contains this, with their
    /// descendants (this process excluded).
    #[arg(long)]
    server_pattern: Option<String>,
    /// Connections held in IDLE for the memory measurement.
    #[arg(long, default_value_t = 500)]
    idle_connections: usize,
    /// Messages appended in the timed APPEND.
    #[arg(long, default_value_t = 2_000)]
    append: usize,
    /// Messages in `bench-10k` for FETCH and STORE (appended first, untimed,
    /// if the mailbox has fewer).
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Timed SELECTs of `bench-100k`.
    #[arg(long, default_value_t = 5)]
    selects: usize,
    /// Untimed SELECTs of `bench-100k` before them.
    #[arg(long, default_value_t = 1)]
    select_warm_ups: usize,
    /// Clients of the logins step, each connecting, logging in and out in a loop.
    #[arg(long, default_value_t = 10)]
    login_clients: usize,
    /// Seconds the logins step runs.
    #[arg(long, default_value_t = 5.0)]
    login_secs: f64,
    /// Clients of the mixed-load step, one run for each number.
    #[arg(long, value_delimiter = ',', default_value = "10,50,200")]
    mixed_clients: Vec<usize>,
    /// Seconds each run of the mixed-load step lasts.
    #[arg(long, default_value_t = 20.0)]
    mixed_secs: f64,
    /// Mailbox the mixed-load clients select (FETCH and STORE stay within
    /// the messages it has at the start; APPEND adds to it and EXPUNGE takes
    /// the message out again).
    #[arg(long, default_value = "INBOX")]
    mixed_mailbox: String,
    /// Timed runs of each SORT/THREAD command on `bench-100k`.
    #[arg(long, default_value_t = 3)]
    sort_runs: usize,
    /// Untimed runs of each SORT/THREAD command before them.
    #[arg(long, default_value_t = 1)]
    sort_warm_ups: usize,
    /// Steps to run (`logins`, `mixed` and `sort` only when asked).
    #[arg(long, value_delimiter = ',', default_value = "append,fetch,fetch-bodies,store,select,idle")]
    steps: Vec<Step>,
    /// Name of the server in the output.
    #[arg(long)]
    label: Option<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Step {
    Append,
    Fetch,
    /// Whole messages (`BODY.PEEK[]`): every byte read from the store, and
    /// in Starling every body hashed again before it is sent.
    FetchBodies,
    Store,
    Select,
    Idle,
    Logins,
    /// Many clients, each looping over connect, LOGIN, SELECT, FETCH,
    /// STORE, APPEND, EXPUNGE, LOGOUT.
    Mixed,
    /// SORT and THREAD on `bench-100k`.
    Sort,
}

/// One measurement: a table row, and its headline number for comparisons.
struct Row {
    key: String,
    what: String,
    value: f64,
    unit: &'static str,
    /// "higher" or "lower": which way is better, for ratios.
    better: &'static str,
    result: String,
    detail: String,
    /// More fields for the JSON (the mixed step's per-command figures).
    extra: Option<Value>,
}

impl Row {
    fn print(&self) {
        println!("| {} | {} | {} |", self.what, self.result, self.detail);
        let _ = std::io::stdout().flush();
    }

    fn json(&self) -> Value {
        let mut v = json!({"key": self.key, "what": self.what, "value": self.value, "unit": self.unit,
               "better": self.better, "result": self.result, "detail": self.detail});
        if let Some(extra) = &self.extra {
            v["extra"] = extra.clone();
        }
        v
    }
}

pub fn run(args: Args) {
    if let Err(e) = bench(&args) {
        eprintln!("starling-bench imap: {e}");
        std::process::exit(1);
    }
}

/// Refuses arguments the steps asked for cannot run with; a count only a
/// step left out uses may be 0.
fn check(args: &Args) -> Res<()> {
    use clap::ValueEnum as _;
    let want = |s| args.steps.contains(&s);
    if want(Step::Idle) && args.server_pids.is_empty() && args.server_pattern.is_none() {
        return Err("the idle step needs --server-pids or --server-pattern (or leave it out of --steps)".into());
    }
    let counts = [
        (args.append, "--append", [Step::Append; 3]),
        (args.messages, "--messages", [Step::Fetch, Step::FetchBodies, Step::Store]),
        (args.selects, "--selects", [Step::Select; 3]),
        (args.idle_connections, "--idle-connections", [Step::Idle; 3]),
        (args.sort_runs, "--sort-runs", [Step::Sort; 3]),
    ];
    for (n, flag, steps) in counts {
        if let Some(step) = steps.iter().find(|s| n == 0 && want(**s)) {
            let name = step.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
            return Err(format!("{flag} must be at least 1 for the {name} step (or leave the step out of --steps)"));
        }
    }
    if want(Step::Mixed) && (args.mixed_clients.contains(&0) || args.mixed_secs.is_nan() || args.mixed_secs <= 0.0) {
        return Err("--mixed-clients and --mixed-secs must be positive".into());
    }
    Ok(())
}

fn bench(args: &Args) -> Res<()> {
    let want = |s| args.steps.contains(&s);
    check(args)?;
    let files = message_files(&args.maildir)?;
    if files.is_empty() {
        return Err(format!("{}: no messages (expected a Maildir tree with cur/ or new/)", args.maildir.display()));
    }
    // First opens go first, on a connection of their own: Dovecot builds its
    // index of a Maildir then, and the mailbox has settled by the time of
    // the measurement.
    let first_open = Instant::now();
    let mut first = Conn::login(&args.addr, &args.user, &args.password)?;
    let mut first_select = 0.0;
    if want(Step::Idle) {
        select_once(&mut first, "SELECT INBOX", |_| {})?;
    }
    if want(Step::Select) {
        first_select = select_once(&mut first, &select_cmd(), |_| {})?;
    }
    first.logout();
    let mut c = Conn::login(&args.addr, &args.user, &args.password)?;
    let label = args.label.clone().unwrap_or_else(|| c.greeting.clone());
    println!("\n## IMAP: {label} ({})\n", args.addr);
    println!("| measurement | result | detail |\n|---|---|---|");
    let mut rows = Vec::new();
    let mut out = |r: Row| {
        r.print();
        rows.push(r);
    };
    if want(Step::Append) {
        out(append(&mut c, &files, args.append)?);
    }
    if want(Step::Fetch) || want(Step::FetchBodies) || want(Step::Store) {
        fill(&mut c, &files, args.messages)?;
        c.run(&format!("SELECT {}", quote(FETCH_BOX)), |_| {})?;
    }
    if want(Step::Fetch) {
        out(fetch(&mut c, "fetch", "UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER])")?);
    }
    if want(Step::FetchBodies) {
        out(fetch(&mut c, "fetch-bodies", "UID FETCH 1:* (UID BODY.PEEK[])")?);
    }
    if want(Step::Store) {
        for r in store(&mut c, args.messages)? {
            out(r);
        }
    }
    if want(Step::Select) {
        let busy = want(Step::Append) || want(Step::Fetch) || want(Step::Store);
        for r in select(&mut c, args, first_select, first_open, busy)? {
            out(r);
        }
    }
    if want(Step::Idle) {
        out(idle(args)?);
    }
    if want(Step::Logins) {
        out(logins(args)?);
    }
    if want(Step::Sort) {
        for r in sort::sort(args)? {
            out(r);
        }
    }
    if want(Step::Mixed) {
        for r in mixed::mixed(args)? {
            out(r);
        }
    }
    c.logout();
    if let Some(path) = &args.json {
        let doc = json!({"label": label, "addr": args.addr, "greeting": c.greeting,
                         "rows": rows.iter().map(Row::json).collect::<Vec<_>>()});
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap() + "\n")
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn append(c: &mut Conn, files: &[PathBuf], n: usize) -> Res<Row> {
    recreate(c, APPEND_BOX)?;
    // Read and convert beforehand so the timing is the server's, not the disk's.
    let msgs = files.iter().cycle().take(n).map(|f| Message::load(f)).collect::<Res<Vec<_>>>()?;
    let bytes: u64 = msgs.iter().map(|m| m.data.len() as u64).sum();
    let t = Instant::now();
    for m in &msgs {
        c.append(APPEND_BOX, m)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let mode = if c.literal_plus { "LITERAL+" } else { "synchronizing literals" };
    Ok(Row {
        key: "append".into(),
        what: format!("APPEND {n} messages one by one ({mode})"),
        value: n as f64 / secs,
        unit: "msg/s",
        better: "higher",
        result: format!("{:.0} msg/s, {:.1} MB/s", n as f64 / secs, mb(bytes) / secs),
        detail: format!("{secs:.2} s, {:.1} MB", mb(bytes)),
        extra: None,
    })
}

/// Makes `bench-10k` hold at least `n` messages (untimed).
fn fill(c: &mut Conn, files: &[PathBuf], n: usize) -> Res<()> {
    if c.exists(FETCH_BOX)? && c.messages(FETCH_BOX)? >= n {
        return Ok(());
    }
    recreate(c, FETCH_BOX)?;
    eprintln!("filling {FETCH_BOX} with {n} messages (untimed)");
    for f in files.iter().cycle().take(n) {
        c.append(FETCH_BOX, &Message::load(f)?)?;
    }
    Ok(())
}

fn fetch(c: &mut Conn, key: &'static str, cmd: &str) -> Res<Row> {
    let before = c.received;
    let mut n = 0usize;
    let t = Instant::now();
    c.run(cmd, |l| n += is_fetch(l) as usize)?;
    let secs = t.elapsed().as_secs_f64();
    let bytes = c.received - before;
    Ok(Row {
        key: key.into(),
        what: format!("{cmd}, {n} messages"),
        value: secs,
        unit: "s",
        better: "lower",
        result: format!("{secs:.3} s"),
        detail: format!("{:.1} MB received, {:.0} msg/s, {:.0} MB/s", mb(bytes), n as f64 / secs, mb(bytes) / secs),
        extra: None,
    })
}

fn store(c: &mut Conn, n: usize) -> Res<Vec<Row>> {
    let mut rows = Vec::new();
    for (key, op) in [("store", "+FLAGS"), ("store-restore", "-FLAGS")] {
        let cmd = format!("STORE 1:{n} {op} (\\Flagged)");
        let mut answers = 0usize;
        let t = Instant::now();
        c.run(&cmd, |l| answers += is_fetch(l) as usize)?;
        let secs = t.elapsed().as_secs_f64();
        rows.push(Row {
            key: key.into(),
            what: format!("{cmd} (non-silent)"),
            value: secs,
            unit: "s",
            better: "lower",
            result: format!("{secs:.3} s"),
            detail: format!("{answers} FETCH responses"),
            extra: None,
        });
    }
    Ok(rows)
}

fn select_cmd() -> String {
    format!("SELECT {} (CONDSTORE)", quote(SELECT_BOX))
}

/// Times SELECT of `bench-100k` after warm-ups, at least 10 s after its
/// first open (`first_ms` long): in a new session, and in `c`, the session
/// that ran the other steps. In Dovecot the two differ: a session that had
/// selected a mailbox filled by APPEND re-read the mailbox's whole
/// dovecot-uidlist (6 MB) at every SELECT.
fn select(c: &mut Conn, args: &Args, first_ms: f64, first_open: Instant, busy: bool) -> Res<Vec<Row>> {
    std::thread::sleep(Duration::from_secs(10).saturating_sub(first_open.elapsed()));
    let mut fresh = Conn::login(&args.addr, &args.user, &args.password)?;
    let mut rows = vec![select_row(&mut fresh, args, "select", "a new session")?];
    fresh.logout();
    if busy {
        rows.push(select_row(c, args, "select-busy", "the session of the steps above")?);
    }
    if let Some(r) = rows.first_mut() {
        r.detail += &format!("; first SELECT since the server started: {first_ms:.1} ms");
    }
    Ok(rows)
}

fn select_row(c: &mut Conn, args: &Args, key: &'static str, session: &str) -> Res<Row> {
    let cmd = select_cmd();
    let mut exists = 0u64;
    let mut modseq = None;
    let mut times = Vec::new();
    for _ in 0..args.select_warm_ups + args.selects {
        times.push(select_once(c, &cmd, |l| {
            if let Some(n) = untagged_number(l, "EXISTS") {
                exists = n;
            }
            modseq = modseq.or(code_number(l, "HIGHESTMODSEQ"));
        })?);
    }
    if modseq.is_none() {
        return Err(format!("{cmd}: no HIGHESTMODSEQ in the answer (CONDSTORE not enabled?)"));
    }
    let list = |t: &[f64]| t.iter().map(|ms| format!("{ms:.2} ms")).collect::<Vec<_>>().join(", ");
    let (warm_ups, timed) = times.split_at(args.select_warm_ups);
    let mut sorted = timed.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    Ok(Row {
        key: key.into(),
        what: format!("{cmd}, {exists} messages, in {session}"),
        value: median,
        unit: "ms",
        better: "lower",
        result: format!("{median:.2} ms median"),
        detail: format!(
            "runs in order: {}; before them, warm-up: {}",
            list(timed),
            if warm_ups.is_empty() { "none".into() } else { list(warm_ups) }
        ),
        extra: None,
    })
}

/// Times one SELECT on `c`, then leaves the mailbox so that the next one
/// opens it afresh.
fn select_once(c: &mut Conn, cmd: &str, untagged: impl FnMut(&[u8])) -> Res<f64> {
    let t = Instant::now();
    c.run(cmd, untagged)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if c.has("UNSELECT") {
        c.run("UNSELECT", |_| {})?;
    }
    Ok(ms)
}

fn idle(args: &Args) -> Res<Row> {
    let procs = || server_processes(&args.server_pids, args.server_pattern.as_deref());
    // Let the processes of connections closed by the steps before exit.
    std::thread::sleep(Duration::from_secs(1));
    let (before, nbefore) = pss_kib(&procs()?)?;
    let n = args.idle_connections;
    let mut conns = Vec::with_capacity(n);
    let mut inbox = 0;
    let t = Instant::now();
    for i in 0..n {
        let mut c = Conn::login(&args.addr, &args.user, &args.password)
            .map_err(|e| format!("idle connection {}: {e}", i + 1))?;
        c.run("SELECT INBOX", |l| inbox = untagged_number(l, "EXISTS").unwrap_or(inbox))?;
        c.idle()?;
        conns.push(c);
    }
    let setup = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let (after, nafter) = pss_kib(&procs()?)?;
    drop(conns);
    let per = (after as f64 - before as f64) / n as f64;
    let mib = |k: u64| k as f64 / 1024.0;
    Ok(Row {
        key: "idle".into(),
        what: format!("memory per idle connection ({n} × LOGIN, SELECT INBOX of {inbox} messages, IDLE)"),
        value: per,
        unit: "KiB",
        better: "lower",
        result: format!("{per:.0} KiB"),
        detail: format!(
            "server Pss {:.1} → {:.1} MiB, {nbefore} → {nafter} processes; connections set up in {setup:.1} s",
            mib(before),
            mib(after)
        ),
        extra: None,
    })
}

/// Logins per second: `login_clients` threads, each connecting, logging in
/// and logging out in a loop for `login_secs` (what a new session costs the
/// server; with Argon2 credentials, mostly the password check). The account
/// has logged in once before (the other steps' connection), as a user's
/// clients have.
fn logins(args: &Args) -> Res<Row> {
    let (clients, secs) = (args.login_clients.max(1), args.login_secs.max(0.1));
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, user, password) = (args.addr.clone(), args.user.clone(), args.password.clone());
            std::thread::spawn(move || -> Res<Vec<Duration>> {
                let mut took = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    login_logout(&addr, &user, &password)?;
                    took.push(t.elapsed());
                }
                Ok(took)
            })
        })
        .collect();
    let mut took = Vec::new();
    for t in threads {
        took.extend(t.join().map_err(|_| "a login thread panicked".to_string())??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    took.sort();
    let ms = |q: f64| took[((took.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    let rate = took.len() as f64 / elapsed;
    Ok(Row {
        key: "logins".into(),
        what: format!("logins/s ({clients} clients each connecting, LOGIN, LOGOUT in a loop for {secs} s)"),
        value: rate,
        unit: "logins/s",
        better: "higher",
        result: format!("{rate:.0} logins/s"),
        detail: format!("{} logins; per connection median {:.1} ms, p99 {:.1} ms", took.len(), ms(0.5), ms(0.99)),
        extra: None,
    })
}

/// One connection: greeting, LOGIN (must be OK), LOGOUT.
fn login_logout(addr: &str, user: &str, password: &str) -> Res<()> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let mut until_tagged = |r: &mut BufReader<TcpStream>, tag: &str| -> Res<String> {
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(|e| format!("reading from the server: {e}"))? == 0 {
                return Err(format!("the server closed the connection before {tag}"));
            }
            if tag == "*" || line.starts_with(&format!("{tag} ")) {
                return Ok(line.clone());
            }
        }
    };
    let greeting = until_tagged(&mut r, "*")?;
    if !greeting.starts_with("* OK") {
        return Err(format!("{addr}: greeting is not OK: {}", greeting.trim_end()));
    }
    let io = |e: std::io::Error| format!("writing to the server: {e}");
    w.write_all(format!("a LOGIN {} {}\r\n", quote(user), quote(password)).as_bytes()).map_err(io)?;
    let answer = until_tagged(&mut r, "a")?;
    if !answer.starts_with("a OK") {
        return Err(format!("LOGIN {}: {}", quote(user), answer.trim_end()));
    }
    w.write_all(b"b LOGOUT\r\n").map_err(io)?;
    until_tagged(&mut r, "b").map(|_| ())
}

/// Deletes the mailbox if it exists, then creates it.
fn recreate(c: &mut Conn, mailbox: &str) -> Res<()> {
    if c.exists(mailbox)? {
        c.run(&format!("DELETE {}", quote(mailbox)), |_| {})?;
    }
    c.run(&format!("CREATE {}", quote(mailbox)), |_| {})
}

/// A message ready for APPEND.
struct Message {
    /// CRLF line endings, as clients send them (the corpus has LF).
    data: Vec<u8>,
    /// Flags from the Maildir name, without \Flagged so that STORE
    /// +FLAGS (\Flagged) changes every message.
    flags: String,
    /// Internal date from the file's mtime, as a migrating client sets it.
    date: String,
}

impl Message {
    fn load(path: &Path) -> Res<Message> {
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        let raw = std::fs::read(path).map_err(err)?;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).map_err(err)?;
        let secs = mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        Ok(Message { data: crlf(&raw), flags: maildir_flags(&name), date: imap_date(secs) })
    }
}

fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    let mut prev = 0u8;
    for &b in raw {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// IMAP system flags of a Maildir file name (`...:2,RS`).
fn maildir_flags(name: &str) -> String {
    let letters = name.rsplit_once(":2,").map_or("", |(_, l)| l);
    let flags: Vec<&str> = [('D', "\\Draft"), ('R', "\\Answered"), ('S', "\\Seen")]
        .into_iter()
        .filter(|(c, _)| letters.contains(*c))
        .map(|(_, f)| f)
        .collect();
    flags.join(" ")
}

/// `date-time` of RFC 3501 for a Unix time, in UTC.
fn imap_date(secs: i64) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (days, s) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{d:02}-{}-{y:04} {:02}:{:02}:{:02} +0000", MONTHS[m as usize - 1], s / 3600, s / 60 % 60, s % 60)
}

/// Message files of a Maildir++ tree: the root's and each `.folder`'s cur/
/// and new/, in a stable order.
fn message_files(root: &Path) -> Res<Vec<PathBuf>> {
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let mut dirs = vec![root.to_path_buf()];
    let mut subs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| err(root, e))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with('.') && e.path().is_dir())
        .map(|e| e.path())
        .collect();
    subs.sort();
    dirs.extend(subs);
    let mut files = Vec::new();
    for dir in dirs {
        for sub in ["cur", "new"] {
            let d = dir.join(sub);
            let Ok(entries) = std::fs::read_dir(&d) else { continue };
            let mut here: Vec<PathBuf> =
                entries.filter_map(Result::ok).filter(|e| e.path().is_file()).map(|e| e.path()).collect();
            here.sort();
            files.extend(here);
        }
    }
    Ok(files)
}

/// `astring` as a quoted string.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub(crate) fn is_fetch(line: &[u8]) -> bool {
    line.starts_with(b"* ") && line.split(|&b| b == b' ').nth(2).is_some_and(|w| w.eq_ignore_ascii_case(b"FETCH"))
}

/// N of `* N WORD`.
fn untagged_number(line: &[u8], word: &str) -> Option<u64> {
    let s = std::str::from_utf8(line).ok()?;
    let mut w = s.strip_prefix("* ")?.split_whitespace();
    let n = w.next()?.parse().ok()?;
    w.next().filter(|x| x.eq_ignore_ascii_case(word)).map(|_| n)
}

/// N of a response code `[WORD N]`.
fn code_number(line: &[u8], word: &str) -> Option<u64> {
    let s = std::str::from_utf8(line).ok()?;
    let at = s.find(&format!("[{word} "))? + word.len() + 2;
    s[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Length of the literal announced at the end of a response line (`{N}`).
fn literal_len(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line).strip_suffix(b"}")?;
    let open = line.iter().rposition(|&b| b == b'{')?;
    let digits = &line[open + 1..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A line of the server for error messages: no CRLF, literals cut short.
fn shown(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(line);
    let s = s.trim_end();
    if s.len() > 300 {
        format!("{}…", &s[..s.floor_char_boundary(300)])
    } else {
        s.to_string()
    }
}

/// One IMAP connection.
pub(crate) struct Conn {
    r: BufReader<TcpStream>,
    w: BufWriter<TcpStream>,
    /// The last response read: one line with the literals it announced.
    buf: Vec<u8>,
    tag: u32,
    /// Bytes read from the server so far.
    received: u64,
    greeting: String,
    caps: HashSet<String>,
    literal_plus: bool,
}

impl Conn {
    /// Connects, reads the greeting, logs in and asks for the capabilities.
    pub(crate) fn login(addr: &str, user: &str, password: &str) -> Res<Conn> {
        let mut c = Conn::connect(addr, 256 << 10)?;
        c.login_command(user, password)?;
        let mut caps = HashSet::new();
        c.run("CAPABILITY", |l| {
            if let Some(rest) = std::str::from_utf8(l).ok().and_then(|s| s.strip_prefix("* CAPABILITY ")) {
                caps.extend(rest.split_whitespace().map(str::to_ascii_uppercase));
            }
        })?;
        c.literal_plus = caps.contains("LITERAL+");
        c.caps = caps;
        // As CONDSTORE clients do at the start of a session.
        if c.has("ENABLE") && c.has("CONDSTORE") {
            c.run("ENABLE CONDSTORE", |_| {})?;
        }
        Ok(c)
    }

    /// Connects and reads the greeting, with buffers of `buf_bytes` each way.
    fn connect(addr: &str, buf_bytes: usize) -> Res<Conn> {
        let s = TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let s2 = s.try_clone().map_err(|e| e.to_string())?;
        let mut c = Conn {
            r: BufReader::with_capacity(buf_bytes, s),
            w: BufWriter::with_capacity(buf_bytes, s2),
            buf: Vec::new(),
            tag: 0,
            received: 0,
            greeting: String::new(),
            caps: HashSet::new(),
            literal_plus: false,
        };
        c.read_response()?;
        if !c.buf.starts_with(b"* OK") {
            return Err(format!("{addr}: greeting is not OK: {}", shown(&c.buf)));
        }
        c.greeting = shown(&c.buf);
        Ok(c)
    }

    /// LOGIN, to its tagged OK (the password is not shown in errors).
    fn login_command(&mut self, user: &str, password: &str) -> Res<()> {
        let tag = self.next_tag();
        self.send(format!("{tag} LOGIN {} {}\r\n", quote(user), quote(password)).as_bytes())?;
        self.finish(&tag, &format!("LOGIN {} (password)", quote(user)), |_| {})
    }

    fn has(&self, cap: &str) -> bool {
        self.caps.contains(cap)
    }

    /// Reads one response, with its literals, into `buf`.
    fn read_response(&mut self) -> Res<()> {
        let io = |e: std::io::Error| format!("reading from the server: {e}");
        self.buf.clear();
        loop {
            let start = self.buf.len();
            let n = self.r.read_until(b'\n', &mut self.buf).map_err(io)?;
            if n == 0 {
                return Err(format!("the server closed the connection (last: {})", shown(&self.buf)));
            }
            self.received += n as u64;
            let Some(len) = literal_len(&self.buf[start..]) else { return Ok(()) };
            let got = (&mut self.r).take(len as u64).read_to_end(&mut self.buf).map_err(io)?;
            self.received += got as u64;
            if got < len {
                return Err("the server closed the connection inside a literal".into());
            }
        }
    }

    fn next_tag(&mut self) -> String {
        self.tag += 1;
        format!("b{}", self.tag)
    }

    fn send(&mut self, bytes: &[u8]) -> Res<()> {
        self.w.write_all(bytes).and_then(|_| self.w.flush()).map_err(|e| format!("writing to the server: {e}"))
    }

    /// Sends a command and reads up to its tagged answer, handing each
    /// untagged response to `untagged`.
    pub(crate) fn run(&mut self, cmd: &str, untagged: impl FnMut(&[u8])) -> Res<()> {
        let tag = self.next_tag();
        self.send(format!("{tag} {cmd}\r\n").as_bytes())?;
        self.finish(&tag, cmd, untagged)
    }

    fn finish(&mut self, tag: &str, cmd: &str, mut untagged: impl FnMut(&[u8])) -> Res<()> {
        loop {
            self.read_response()?;
            let line = &self.buf;
            if line.starts_with(b"* BYE") {
                return Err(format!("{cmd}: server said {}", shown(line)));
            } else if line.starts_with(b"* ") {
                untagged(line);
            } else if let Some(rest) = line.strip_prefix(tag.as_bytes()).and_then(|r| r.strip_prefix(b" ")) {
                if rest.len() >= 2 && rest[..2].eq_ignore_ascii_case(b"OK") {
                    return Ok(());
                }
                return Err(format!("{cmd}: server answered {}", shown(line)));
            } else {
                return Err(format!("{cmd}: unexpected line {}", shown(line)));
            }
        }
    }

    fn exists(&mut self, mailbox: &str) -> Res<bool> {
        let mut found = false;
        self.run(&format!("LIST \"\" {}", quote(mailbox)), |l| found |= l.starts_with(b"* LIST "))?;
        Ok(found)
    }

    fn messages(&mut self, mailbox: &str) -> Res<usize> {
        let mut n = None;
        self.run(&format!("STATUS {} (MESSAGES)", quote(mailbox)), |l| {
            let s = String::from_utf8_lossy(l);
            if let Some(at) = s.find("MESSAGES ") {
                n = s[at + 9..].split(|c: char| !c.is_ascii_digit()).next().and_then(|d| d.parse().ok());
            }
        })?;
        n.ok_or_else(|| format!("STATUS {mailbox}: no MESSAGES in the answer"))
    }

    /// APPEND with a LITERAL+ literal if the server has it, else a
    /// synchronizing one (wait for the continuation).
    fn append(&mut self, mailbox: &str, m: &Message) -> Res<()> {
        let head = format!("({}) \"{}\" ", m.flags, m.date);
        self.append_raw(mailbox, &head, &m.data, self.literal_plus)
    }

    /// APPEND of `data` with `head` (flags and date, each followed by a
    /// space, or empty) before the literal; the tagged OK stays in `buf`.
    fn append_raw(&mut self, mailbox: &str, head: &str, data: &[u8], literal_plus: bool) -> Res<()> {
        let tag = self.next_tag();
        let plus = if literal_plus { "+" } else { "" };
        let cmd = format!("APPEND {} {head}{{{}{plus}}}", quote(mailbox), data.len());
        let mut out = format!("{tag} {cmd}\r\n").into_bytes();
        if !literal_plus {
            self.send(&out)?;
            out.clear();
            self.read_response()?;
            if !self.buf.starts_with(b"+") {
                return Err(format!("{cmd}: server answered {}", shown(&self.buf)));
            }
        }
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
        self.send(&out)?;
        self.finish(&tag, &cmd, |_| {})
    }

    /// Enters IDLE and waits for the server's continuation.
    fn idle(&mut self) -> Res<()> {
        let tag = self.next_tag();
        self.send(format!("{tag} IDLE\r\n").as_bytes())?;
        loop {
            self.read_response()?;
            if self.buf.starts_with(b"+") {
                return Ok(());
            }
            if !self.buf.starts_with(b"* ") || self.buf.starts_with(b"* BYE") {
                return Err(format!("IDLE: server answered {}", shown(&self.buf)));
            }
        }
    }

    /// LOGOUT, to its tagged OK (after the untagged BYE it brings).
    fn logout_wait(&mut self) -> Res<()> {
        let tag = self.next_tag();
        self.send(format!("{tag} LOGOUT\r\n").as_bytes())?;
        loop {
            self.read_response()?;
            if let Some(rest) = self.buf.strip_prefix(tag.as_bytes()).and_then(|r| r.strip_prefix(b" ")) {
                if rest.len() >= 2 && rest[..2].eq_ignore_ascii_case(b"OK") {
                    return Ok(());
                }
                return Err(format!("LOGOUT: server answered {}", shown(&self.buf)));
            }
            if !self.buf.starts_with(b"* ") {
                return Err(format!("LOGOUT: unexpected line {}", shown(&self.buf)));
            }
        }
    }

    /// Says goodbye without waiting: the measurements are over.
    pub(crate) fn logout(&mut self) {
        let tag = self.next_tag();
        let _ = self.send(format!("{tag} LOGOUT\r\n").as_bytes());
    }
}

/// PIDs of the server: `pids` and the processes whose argv[0] contains
/// `pattern`, each with all its descendants (Dovecot forks one process per
/// connection).
fn server_processes(pids: &[u32], pattern: Option<&str>) -> Res<Vec<u32>> {
    let me = std::process::id();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut roots: Vec<u32> = pids.to_vec();
    for entry in std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?.filter_map(Result::ok) {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        // Processes may exit while we look: skip what is gone.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The name in parentheses may contain spaces: the fields follow the last ')'.
        if let Some(ppid) = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok()) {
            children.entry(ppid).or_default().push(pid);
        }
        if let Some(p) = pattern.filter(|_| pid != me) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
            if String::from_utf8_lossy(argv0).contains(p) {
                roots.push(pid);
            }
        }
    }
    let mut seen = HashSet::new();
    while let Some(pid) = roots.pop() {
        if seen.insert(pid) {
            roots.extend(children.get(&pid).into_iter().flatten());
        }
    }
    if seen.is_empty() {
        return Err(format!("no server processes (pids {pids:?}, pattern {pattern:?})"));
    }
    Ok(seen.into_iter().collect())
}

/// Sum of Pss over the processes (KiB) and how many were read; the ones
/// that exited meanwhile are left out.
fn pss_kib(pids: &[u32]) -> Res<(u64, usize)> {
    let (mut total, mut n) = (0, 0);
    for pid in pids {
        let path = format!("/proc/{pid}/smaps_rollup");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{path}: {e} (the memory step must run as root or as the server's user)")),
        };
        let pss = text.lines().find_map(|l| l.strip_prefix("Pss:")?.split_whitespace().next()?.parse::<u64>().ok());
        total += pss.ok_or_else(|| format!("{path}: no Pss line"))?;
        n += 1;
    }
    Ok((total, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn literals_are_found_at_line_ends_only() {
        assert_eq!(literal_len(b"* 1 FETCH (BODY[HEADER] {123}\r\n"), Some(123));
        assert_eq!(literal_len(b"* 1 FETCH (BODY[HEADER] {0}\r\n"), Some(0));
        assert_eq!(literal_len(b"* OK [ALERT] {x}\r\n"), None);
        assert_eq!(literal_len(b"* OK {12} done\r\n"), None);
        assert_eq!(literal_len(b"* OK {}\r\n"), None);
    }

    #[test]
    fn dates_flags_and_line_ends() {
        assert_eq!(imap_date(0), "01-Jan-1970 00:00:00 +0000");
        assert_eq!(imap_date(1_709_210_096), "29-Feb-2024 12:34:56 +0000");
        assert_eq!(imap_date(-1), "31-Dec-1969 23:59:59 +0000");
        assert_eq!(maildir_flags("1.M1P2Q3.host,S=10:2,FRS"), "\\Answered \\Seen");
        assert_eq!(maildir_flags("1.M1P2Q3.host,S=10"), "");
        assert_eq!(crlf(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
    }

    #[test]
    fn a_count_is_checked_only_for_the_steps_that_use_it() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let parse = |extra: &[&str]| {
            let base = ["bench", "--addr", "a:1", "--user", "u", "--password", "p", "--maildir", "m"];
            <Cli as clap::Parser>::try_parse_from(base.iter().chain(extra)).unwrap().args
        };
        // The mixed step alone holds no idle connections: 0 is fine.
        assert_eq!(check(&parse(&["--steps", "mixed", "--idle-connections", "0"])), Ok(()));
        assert_eq!(check(&parse(&["--steps", "logins", "--append", "0", "--sort-runs", "0"])), Ok(()));
        let e = check(&parse(&["--steps", "idle", "--server-pattern", "x", "--idle-connections", "0"])).unwrap_err();
        assert_eq!(e, "--idle-connections must be at least 1 for the idle step (or leave the step out of --steps)");
        let e = check(&parse(&["--steps", "store", "--messages", "0"])).unwrap_err();
        assert!(e.starts_with("--messages must be at least 1 for the store step"), "{e}");
        let e = check(&parse(&["--steps", "mixed", "--mixed-clients", "10,0"])).unwrap_err();
        assert_eq!(e, "--mixed-clients and --mixed-secs must be positive");
        assert_eq!(check(&parse(&["--steps", "fetch", "--mixed-clients", "0"])), Ok(()));
    }

    #[test]
    fn response_parsing() {
        assert!(is_fetch(b"* 12 FETCH (FLAGS (\\Seen))\r\n"));
        assert!(!is_fetch(b"* 12 EXISTS\r\n"));
        assert_eq!(untagged_number(b"* 100000 EXISTS\r\n", "EXISTS"), Some(100_000));
        assert_eq!(untagged_number(b"* 3 RECENT\r\n", "EXISTS"), None);
        assert_eq!(code_number(b"* OK [HIGHESTMODSEQ 42] Highest\r\n", "HIGHESTMODSEQ"), Some(42));
    }

    /// A scripted server: answers each command line the client sends with
    /// the next canned reply (tags are `b1`, `b2`, ...).
    fn fake_server(replies: Vec<String>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            w.write_all(b"* OK fake ready\r\n").unwrap();
            for reply in replies {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    return;
                }
                w.write_all(reply.as_bytes()).unwrap();
            }
        });
        addr
    }

    #[test]
    fn reads_literals_and_stops_on_no() {
        // A literal that itself holds a tagged-looking line and a brace at a line end.
        let header = "b3 OK fake\r\nSubject: {3}\r\n";
        let addr = fake_server(vec![
            "b1 OK logged in\r\n".into(),
            "* CAPABILITY IMAP4rev1 LITERAL+ IDLE\r\nb2 OK done\r\n".into(),
            format!(
                "* 1 FETCH (UID 7 BODY[HEADER] {{{}}}\r\n{header})\r\n* 2 FETCH (UID 8 FLAGS ())\r\nb3 OK fetched\r\n",
                header.len()
            ),
            "b4 NO [TRYCREATE] no such mailbox\r\n".into(),
        ]);
        let mut c = Conn::login(&addr, "u", "p").unwrap();
        assert!(c.literal_plus && c.has("IDLE"));
        let mut n = 0;
        c.run("UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER])", |l| n += is_fetch(l) as usize).unwrap();
        assert_eq!(n, 2);
        let e = c.run("SELECT nothing", |_| {}).unwrap_err();
        assert_eq!(e, "SELECT nothing: server answered b4 NO [TRYCREATE] no such mailbox");
    }
}
