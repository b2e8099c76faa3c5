//! SORT and THREAD on the 100,000-message mailbox: each command timed to
//! its tagged OK, the median of a few runs after warm-ups, in one session
//! that has EXAMINEd the mailbox (read-only: nothing changes between runs).
//! Then each command again after a change: before each timed run a second
//! session APPENDs one reply to the mailbox and the first sees it (NOOP),
//! so what a server keeps of the last answer must be brought up to date.

use super::{quote, Conn, Res, Row, SELECT_BOX};
use serde_json::json;
use std::time::Instant;

const COMMANDS: [(&str, &str); 5] = [
    ("sort-date", "SORT (DATE) UTF-8 ALL"),
    ("sort-subject", "SORT (SUBJECT) UTF-8 ALL"),
    ("sort-from", "SORT (FROM) UTF-8 ALL"),
    ("thread-references", "THREAD REFERENCES UTF-8 ALL"),
    ("thread-orderedsubject", "THREAD ORDEREDSUBJECT UTF-8 ALL"),
];

pub(super) fn sort(args: &super::Args) -> Res<Vec<Row>> {
    let mut c = Conn::login(&args.addr, &args.user, &args.password)?;
    for cap in ["SORT", "THREAD=REFERENCES", "THREAD=ORDEREDSUBJECT"] {
        if !c.has(cap) {
            return Err(format!("the sort step needs {cap}, not advertised"));
        }
    }
    let mut exists = 0;
    c.run(&format!("EXAMINE {}", quote(SELECT_BOX)), |l| {
        exists = super::untagged_number(l, "EXISTS").unwrap_or(exists)
    })?;
    let mut rows = Vec::new();
    for (key, cmd) in COMMANDS {
        let runs = timed_runs(&mut c, cmd, args.sort_warm_ups, args.sort_runs, |_| Ok(()))?;
        rows.push(runs.row(key.to_string(), format!("{cmd} on {exists} messages")));
    }
    // After a change: one new message before each run (none untimed first:
    // the rows above warmed every command up).
    let mut w = Conn::login(&args.addr, &args.user, &args.password)?;
    let mut n = 0usize;
    for (key, cmd) in COMMANDS {
        let runs = timed_runs(&mut c, cmd, 0, args.sort_runs, |c| {
            n += 1;
            let reply = format!(
                "From: bench@example.org\r\nSubject: Re: change {n}\r\nMessage-ID: <change-{n}@bench>\r\n\
                 In-Reply-To: <change-{}@bench>\r\nDate: Mon, 7 Feb 2022 10:00:00 +0000\r\n\r\nreply {n}\r\n",
                n - 1
            );
            w.append_raw(SELECT_BOX, "", reply.as_bytes(), w.literal_plus)?;
            c.run("NOOP", |_| {})
        })?;
        rows.push(
            runs.row(format!("{key}-after-append"), format!("{cmd} on {exists}+ messages, each run after an APPEND")),
        );
    }
    w.logout();
    c.logout();
    Ok(rows)
}

/// The times of one command's runs and what its last answer held.
struct Runs {
    warm: Vec<f64>,
    timed: Vec<f64>,
    numbers: usize,
    bytes: u64,
    load_before: String,
}

/// `warm_ups` untimed then `runs` timed runs of `cmd`, each after `before`.
fn timed_runs(
    c: &mut Conn,
    cmd: &str,
    warm_ups: usize,
    runs: usize,
    mut before: impl FnMut(&mut Conn) -> Res<()>,
) -> Res<Runs> {
    let load_before = super::mixed::loadavg();
    let mut times = Vec::new();
    let (mut numbers, mut bytes) = (0usize, 0u64);
    for _ in 0..warm_ups + runs {
        before(c)?;
        let received = c.received;
        numbers = 0;
        let t = Instant::now();
        c.run(cmd, |l| numbers += l.split(|b| !b.is_ascii_digit()).filter(|w| !w.is_empty()).count())?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        bytes = c.received - received;
    }
    let timed = times.split_off(warm_ups);
    Ok(Runs { warm: times, timed, numbers, bytes, load_before })
}

impl Runs {
    fn row(&self, key: String, what: String) -> Row {
        let mut sorted = self.timed.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let list = |t: &[f64]| t.iter().map(|ms| format!("{ms:.0} ms")).collect::<Vec<_>>().join(", ");
        Row {
            key,
            what,
            value: median,
            unit: "ms",
            better: "lower",
            result: format!("{median:.0} ms median"),
            detail: format!(
                "runs: {}; warm-up before them: {}; answer {} numbers, {:.2} MB",
                list(&self.timed),
                if self.warm.is_empty() { "none".into() } else { list(&self.warm) },
                self.numbers,
                super::mb(self.bytes)
            ),
            extra: Some(json!({"runs_ms": self.timed, "warm_ups_ms": self.warm, "numbers": self.numbers,
                                "bytes": self.bytes, "load_before": self.load_before,
                                "load_after": super::mixed::loadavg()})),
        }
    }
}
