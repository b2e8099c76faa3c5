//! SORT and UID SORT (RFC 5256): the messages SEARCH matches
//! ([`Session::matching`]), ordered by ARRIVAL, CC, DATE, FROM, SIZE,
//! SUBJECT or TO, each possibly REVERSE, ties by sequence number. Also
//! what SORT and THREAD read of a message ([`Facts`]) and the base
//! subject (RFC 5256 §2.1).
//!
//! Strings are compared with i;ascii-casemap (RFC 5256 §2.3: ASCII letters
//! upper-cased, then octet by octet).

use crate::selected::{load_body, uses_modseq};
use crate::session::{Done, Fail, Session};
use imap_codec::imap_types::extensions::sort::{SortCriterion, SortKey};
use imap_codec::imap_types::search::SearchKey;
use starling_store::{MessageInfo, Reader};
use std::cmp::Ordering;

/// Sort criteria in one command, at most.
pub(crate) const SORT_CRITERIA_MAX: usize = 16;

/// Bytes of a Subject looked at for its base subject, at most: the rest
/// of a longer one is ignored (the extraction is linear in this).
pub(crate) const SUBJECT_BYTES_MAX: usize = 1024;

/// What SORT and THREAD compare of one message.
#[derive(Clone, Debug, Default)]
pub(crate) struct Facts {
    pub seq: u32,
    pub uid: u32,
    pub modseq: u64,
    /// INTERNALDATE, Unix seconds.
    pub arrival: i64,
    /// The Date header in UTC, or INTERNALDATE (RFC 5256 §2.2).
    pub sent: i64,
    pub size: u64,
    /// Base subject, upper-cased (i;ascii-casemap).
    pub subject: String,
    /// Whether the subject was a reply or forward (RFC 5256 §2.1: a
    /// `re:`/`fw:`/`fwd:` leader, a `(fwd)` trailer or a `[fwd: …]` wrapper
    /// was removed).
    pub reply: bool,
    /// Local part of the first From, To, Cc address, upper-cased.
    pub from: Vec<u8>,
    pub to: Vec<u8>,
    pub cc: Vec<u8>,
    /// Message-ID, References (or In-Reply-To) for THREAD REFERENCES.
    pub message_id: Option<String>,
    pub references: Vec<String>,
}

/// References of one message that THREAD REFERENCES links, at most: the
/// last ones, nearest the message (a References header is commonly
/// truncated at its start anyway, RFC 5256 §3).
pub(crate) const REFERENCES_MAX: usize = 64;

impl Facts {
    /// Reads a message's facts; `header` says whether its header is needed
    /// (anything but ARRIVAL and SIZE). A header that cannot be read (a
    /// body left out here) counts as empty.
    pub(crate) fn read(reader: &Reader, seq: u32, m: &MessageInfo, header: bool) -> Facts {
        let env = reader.envelope(m.message).ok().flatten();
        let arrival = env.map_or(0, |e| e.internal_date);
        let mut f = Facts {
            seq,
            uid: m.uid,
            modseq: m.modseq,
            arrival,
            sent: arrival,
            size: env.map_or(0, |e| e.size),
            ..Facts::default()
        };
        let Some(env) = env.filter(|_| header) else { return f };
        let raw = load_body(reader, &env, false).unwrap_or_default();
        let raw = crate::mime::header_block(&raw);
        f.sent = crate::mime::sent_time(raw).unwrap_or(arrival);
        let (subject, reply) = base_subject(&crate::mime::first_value(raw, "Subject").unwrap_or_default());
        (f.subject, f.reply) = (subject, reply);
        let local = |name| crate::mime::first_mailbox(raw, name).unwrap_or_default().to_ascii_uppercase();
        (f.from, f.to, f.cc) = (local("From"), local("To"), local("Cc"));
        f.message_id = crate::mime::message_ids(raw, "Message-ID", 1).pop();
        f.references = crate::mime::message_ids(raw, "References", REFERENCES_MAX);
        if f.references.is_empty() {
            f.references = crate::mime::message_ids(raw, "In-Reply-To", 1);
        }
        f
    }
}

fn starts_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// `subj-blob = "[" *BLOBCHAR "]" *WSP` at the start of `s`: its length.
fn blob(s: &[u8]) -> Option<usize> {
    if s.first() != Some(&b'[') {
        return None;
    }
    let close = 1 + s[1..].iter().position(|&b| b == b']' || b == b'[')?;
    if s[close] != b']' {
        return None;
    }
    let mut n = close + 1;
    while s.get(n) == Some(&b' ') {
        n += 1;
    }
    Some(n)
}

/// `*subj-blob subj-refwd` at the start of `s`, where
/// `subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"`: its length.
fn refwd_leader(s: &[u8]) -> Option<usize> {
    let mut n = 0;
    while let Some(b) = blob(&s[n..]) {
        n += b;
    }
    let rest = &s[n..];
    n += if starts_ci(rest, b"re") || starts_ci(rest, b"fw") {
        if starts_ci(rest, b"fwd") {
            3
        } else {
            2
        }
    } else {
        return None;
    };
    while s.get(n) == Some(&b' ') {
        n += 1;
    }
    if let Some(b) = blob(&s[n..]) {
        n += b;
    }
    (s.get(n) == Some(&b':')).then_some(n + 1)
}

/// The base subject of a decoded Subject (RFC 5256 §2.1), upper-cased, and
/// whether the subject was a reply or forward. Every loop shortens the
/// text, so the work is linear in [`SUBJECT_BYTES_MAX`].
pub(crate) fn base_subject(subject: &str) -> (String, bool) {
    // (1) White space (tabs, folding) as one space.
    let mut cut = subject.len().min(SUBJECT_BYTES_MAX);
    while !subject.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut s = Vec::with_capacity(cut);
    for &b in &subject.as_bytes()[..cut] {
        let b = if b.is_ascii_whitespace() { b' ' } else { b };
        if !(b == b' ' && s.last() == Some(&b' ')) {
            s.push(b);
        }
    }
    let mut reply = false;
    let (mut start, mut end) = (0, s.len());
    loop {
        // (2) Trailers: "(fwd)" and white space.
        loop {
            if s[start..end].ends_with(b" ") {
                end -= 1;
            } else if end - start >= 5 && s[end - 5..end].eq_ignore_ascii_case(b"(fwd)") {
                end -= 5;
                reply = true;
            } else {
                break;
            }
        }
        // (5) Leaders (3) and a leading blob (4) until none is left.
        loop {
            let before = start;
            // (3)
            loop {
                if s[start..end].starts_with(b" ") {
                    start += 1;
                } else if let Some(n) = refwd_leader(&s[start..end]) {
                    start += n;
                    reply = true;
                } else {
                    break;
                }
            }
            // (4) Only if something is left after it.
            if let Some(n) = blob(&s[start..end]) {
                if start + n < end {
                    start += n;
                }
            }
            if start == before {
                break;
            }
        }
        // (6) "[fwd: …]": unwrap and start again from (2).
        if end - start >= 6 && starts_ci(&s[start..end], b"[fwd:") && s[end - 1] == b']' {
            start += 5;
            end -= 1;
            reply = true;
            continue;
        }
        break;
    }
    s.truncate(end);
    s.drain(..start);
    // Cut at ASCII bytes only, so still UTF-8 where the input was.
    (String::from_utf8_lossy(&s).to_ascii_uppercase(), reply)
}

/// One criterion applied to two messages.
fn compare(key: &SortKey, a: &Facts, b: &Facts) -> Ordering {
    match key {
        SortKey::Arrival => a.arrival.cmp(&b.arrival),
        SortKey::Cc => a.cc.cmp(&b.cc),
        SortKey::Date => a.sent.cmp(&b.sent),
        SortKey::From => a.from.cmp(&b.from),
        SortKey::Size => a.size.cmp(&b.size),
        SortKey::Subject => a.subject.cmp(&b.subject),
        SortKey::To => a.to.cmp(&b.to),
        SortKey::DisplayFrom | SortKey::DisplayTo => Ordering::Equal,
    }
}

/// The charsets SEARCH, SORT and THREAD take.
pub(crate) fn charset_ok(charset: &str) -> Result<(), Fail> {
    if ["UTF-8", "US-ASCII"].iter().any(|k| k.eq_ignore_ascii_case(charset)) {
        Ok(())
    } else {
        Err(Fail::No("[BADCHARSET (UTF-8 US-ASCII)] unsupported charset".into()))
    }
}

impl Session {
    /// SORT / UID SORT; `returns` are ESORT's `RETURN (…)` options (RFC
    /// 5267), upper-cased.
    pub(crate) fn sort(
        &mut self,
        criteria: &[SortCriterion],
        charset: &str,
        search: &[SearchKey<'_>],
        uid: bool,
        tag: &str,
        returns: Option<Vec<String>>,
    ) -> Done {
        let (save, returns) = crate::selected::split_save(returns);
        let sorted = self.sorted(criteria, charset, search);
        if save {
            let uids: Option<Vec<u32>> = sorted.as_ref().ok().map(|f| f.iter().map(|f| f.uid).collect());
            self.save_result(uids.as_deref(), returns.as_deref().unwrap_or_default());
        }
        let facts = sorted?;
        let uses_modseq = search.iter().any(uses_modseq);
        if uses_modseq {
            self.condstore_on();
        }
        let modseq = facts.iter().map(|f| f.modseq).max().filter(|_| uses_modseq);
        let numbers: Vec<u32> = facts.iter().map(|f| if uid { f.uid } else { f.seq }).collect();
        let done = format!("{}SORT completed", if uid { "UID " } else { "" });
        let Some(opts) = returns else {
            let mut line = String::from("SORT");
            for n in &numbers {
                line.push_str(&format!(" {n}"));
            }
            if let Some(max) = modseq {
                line.push_str(&format!(" (MODSEQ {max})"));
            }
            self.untagged(&line);
            return Ok(done);
        };
        if save && opts.is_empty() {
            return Ok(done); // SAVE alone answers nothing (RFC 5182 §2.4).
        }
        // ESORT: MIN and MAX are the first and last in sort order, ALL is
        // in sort order, each number on its own (no ranges).
        let opts = if opts.is_empty() { vec!["ALL".to_string()] } else { opts };
        let mut line = format!("ESEARCH (TAG \"{tag}\"){}", if uid { " UID" } else { "" });
        for o in &opts {
            match (o.as_str(), numbers.first(), numbers.last()) {
                ("MIN", Some(first), _) => line.push_str(&format!(" MIN {first}")),
                ("MAX", _, Some(last)) => line.push_str(&format!(" MAX {last}")),
                ("COUNT", _, _) => line.push_str(&format!(" COUNT {}", numbers.len())),
                ("ALL", Some(_), _) => {
                    let all: Vec<String> = numbers.iter().map(|n| n.to_string()).collect();
                    line.push_str(&format!(" ALL {}", all.join(",")));
                }
                _ => {}
            }
        }
        if let (Some(max), false) = (modseq, numbers.is_empty()) {
            line.push_str(&format!(" MODSEQ {max}"));
        }
        self.untagged(&line);
        Ok(done)
    }

    /// The messages SORT answers, in order.
    fn sorted(&self, criteria: &[SortCriterion], charset: &str, search: &[SearchKey<'_>]) -> Result<Vec<Facts>, Fail> {
        if criteria.len() > SORT_CRITERIA_MAX {
            return Err(Fail::Bad(format!("at most {SORT_CRITERIA_MAX} sort criteria")));
        }
        if criteria.iter().any(|c| matches!(c.key, SortKey::DisplayFrom | SortKey::DisplayTo)) {
            return Err(Fail::Bad("SORT=DISPLAY is not supported".into()));
        }
        charset_ok(charset)?;
        let header = criteria.iter().any(|c| !matches!(c.key, SortKey::Arrival | SortKey::Size));
        let reader = self.reader()?;
        let matched = self.matching(&reader, search)?;
        let mut facts: Vec<Facts> = matched.iter().map(|(seq, m)| Facts::read(&reader, *seq, m, header)).collect();
        drop(reader);
        facts.sort_by(|a, b| {
            criteria
                .iter()
                .map(|c| {
                    let o = compare(&c.key, a, b);
                    if c.reverse {
                        o.reverse()
                    } else {
                        o
                    }
                })
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
                .then(a.seq.cmp(&b.seq))
        });
        Ok(facts)
    }
}

#[cfg(test)]
mod tests {
    use super::base_subject;

    #[test]
    fn base_subjects() {
        let base = |s: &str| base_subject(s);
        assert_eq!(base("Re: apples"), ("APPLES".into(), true));
        assert_eq!(base("[list] Fwd: Apples (fwd)"), ("APPLES".into(), true));
        assert_eq!(base("re: [fwd: bananas]"), ("BANANAS".into(), true));
        assert_eq!(base("  plain\t\ttext  "), ("PLAIN TEXT".into(), false));
        assert_eq!(base("[only a blob]"), ("[ONLY A BLOB]".into(), false));
        assert_eq!(base("[a] [b] topic"), ("TOPIC".into(), false));
        assert_eq!(base("Re: Re[2]: RE [x]: fw: FWD: x"), ("X".into(), true));
        assert_eq!(base("Re:"), ("".into(), true));
        assert_eq!(base("[fwd: [fwd: re: y (fwd)]]"), ("Y".into(), true));
        assert_eq!(base("Réponse: é"), ("RéPONSE: é".into(), false));
        assert_eq!(base(""), ("".into(), false));
        // Long input: bounded work, no panic at a cut inside a character.
        let long = "Re: ".repeat(10_000) + &"é".repeat(10_000);
        assert!(base_subject(&long).0.len() <= super::SUBJECT_BYTES_MAX);
    }
}
