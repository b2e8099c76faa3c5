//! SORT and THREAD on the 100,000-message mailbox: each command timed to
//! its tagged OK, the median of a few runs after warm-ups, in one session
//! that has EXAMINEd the mailbox (read-only: nothing changes between runs).

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
        let load_before = super::mixed::loadavg();
        let mut times = Vec::new();
        let (mut numbers, mut bytes) = (0usize, 0u64);
        for _ in 0..args.sort_warm_ups + args.sort_runs {
            let before = c.received;
            numbers = 0;
            let t = Instant::now();
            c.run(cmd, |l| numbers += l.split(|b| !b.is_ascii_digit()).filter(|w| !w.is_empty()).count())?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            bytes = c.received - before;
        }
        let (warm, timed) = times.split_at(args.sort_warm_ups);
        let mut sorted = timed.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let list = |t: &[f64]| t.iter().map(|ms| format!("{ms:.0} ms")).collect::<Vec<_>>().join(", ");
        rows.push(Row {
            key: key.to_string(),
            what: format!("{cmd} on {exists} messages"),
            value: median,
            unit: "ms",
            better: "lower",
            result: format!("{median:.0} ms median"),
            detail: format!(
                "runs: {}; warm-up before them: {}; answer {numbers} numbers, {:.2} MB",
                list(timed),
                if warm.is_empty() { "none".into() } else { list(warm) },
                super::mb(bytes)
            ),
            extra: Some(json!({"runs_ms": timed, "warm_ups_ms": warm, "numbers": numbers, "bytes": bytes,
                                "load_before": load_before, "load_after": super::mixed::loadavg()})),
        });
    }
    c.logout();
    Ok(rows)
}
