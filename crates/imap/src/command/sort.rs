//! SORT and UID SORT (RFC 5256): the messages SEARCH matches
//! ([`Session::matching`]), ordered by ARRIVAL, CC, DATE, FROM, SIZE,
//! SUBJECT or TO, each possibly REVERSE, ties by sequence number. Also
//! what SORT and THREAD read of a message ([`Facts`]): the header's keys
//! (base subject, RFC 5256 §2.1, and the rest) are the store's
//! ([`starling_store::sortkeys`]), kept since each body was stored.
//!
//! Strings are compared with i;ascii-casemap (RFC 5256 §2.3: ASCII letters
//! upper-cased, then octet by octet).

use crate::selected::{load_body, uses_modseq};
use crate::session::{Done, Fail, Session};
use imap_codec::imap_types::extensions::sort::{SortCriterion, SortKey};
use imap_codec::imap_types::search::SearchKey;
use starling_store::sortkeys::Wanted;
use starling_store::{IdHash, MessageInfo, Reader, SortKeys};
use std::cmp::Ordering;
use std::fmt::Write;

/// Sort criteria in one command, at most.
pub(crate) const SORT_CRITERIA_MAX: usize = 16;

/// What SORT and THREAD compare of one message: where it is, its
/// envelope's date and size, and the keys its header gives
/// ([`SortKeys`], kept by the store since the body was stored).
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
    pub message_id: Option<IdHash>,
    pub references: Vec<IdHash>,
}

impl Facts {
    /// The header's part of the facts.
    pub(crate) fn with_keys(mut self, keys: SortKeys) -> Facts {
        self.sent = keys.sent.unwrap_or(self.arrival);
        (self.subject, self.reply) = (keys.subject, keys.reply);
        (self.from, self.to, self.cc) = (keys.from, keys.to, keys.cc);
        (self.message_id, self.references) = (keys.message_id, keys.references);
        self
    }

    /// The facts of the `matched` messages (sequence number, message), in
    /// that order; `header` says which of the header's keys are needed
    /// (none for ARRIVAL and SIZE; the others may be left empty). The keys are the store's
    /// ([`Reader::sort_keys`]): no body is read. A message whose body has
    /// no keys here (a partial replica has not got it) is read as before
    /// keys were kept: its header through [`load_body`], which for a body
    /// not here counts as empty (its date the internal date, every other
    /// key empty) — the same [`SortKeys::of`] either way.
    pub(crate) fn read_all(reader: &Reader, matched: &[(u32, MessageInfo)], header: Option<Wanted>) -> Vec<Facts> {
        let ids: Vec<_> = matched.iter().map(|(_, m)| m.message).collect();
        // A damaged envelope: each read alone, as SEARCH does (unreadable: none).
        let envelopes =
            reader.envelopes(&ids).unwrap_or_else(|_| ids.iter().map(|m| reader.envelope(*m).ok().flatten()).collect());
        let mut keys = if let Some(wanted) = header {
            let ids: Vec<_> = envelopes.iter().flatten().map(|e| e.blob).collect();
            // A damaged keys record: every message read from its header.
            reader.sort_keys(&ids, wanted).unwrap_or_else(|_| vec![None; ids.len()]).into_iter()
        } else {
            Vec::new().into_iter()
        };
        let mut out = Vec::with_capacity(matched.len());
        for ((seq, m), env) in matched.iter().zip(envelopes) {
            let arrival = env.map_or(0, |e| e.internal_date);
            let f = Facts {
                seq: *seq,
                uid: m.uid,
                modseq: m.modseq,
                arrival,
                sent: arrival,
                size: env.map_or(0, |e| e.size),
                ..Facts::default()
            };
            let Some(env) = env.filter(|_| header.is_some()) else {
                out.push(f);
                continue;
            };
            let stored = keys.next().flatten();
            out.push(f.with_keys(
                stored.unwrap_or_else(|| SortKeys::of(&load_body(reader, &env, false).unwrap_or_default())),
            ));
        }
        out
    }
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
            let mut line = String::with_capacity(5 + 7 * numbers.len());
            line.push_str("SORT");
            for n in &numbers {
                let _ = write!(line, " {n}");
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
                    line.push_str(" ALL ");
                    for (i, n) in numbers.iter().enumerate() {
                        let _ = write!(line, "{}{n}", if i == 0 { "" } else { "," });
                    }
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
        let any = |keys: &[SortKey]| criteria.iter().any(|c| keys.contains(&c.key));
        let header =
            any(&[SortKey::Subject, SortKey::From, SortKey::To, SortKey::Cc, SortKey::Date]).then_some(Wanted {
                subject: any(&[SortKey::Subject]),
                addresses: any(&[SortKey::From, SortKey::To, SortKey::Cc]),
                threading: false,
            });
        let reader = self.reader()?;
        let matched = self.matching(&reader, search)?;
        let facts = Facts::read_all(&reader, &matched, header);
        drop(reader);
        // Indices are sorted, not the (large) facts; ties by sequence
        // number make the order total, so an unstable sort gives the one answer.
        let mut order: Vec<u32> = (0..facts.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            let (a, b) = (&facts[a as usize], &facts[b as usize]);
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
        let mut slots: Vec<Option<Facts>> = facts.into_iter().map(Some).collect();
        Ok(order.iter().map(|&i| slots[i as usize].take().expect("each index once")).collect())
    }
}
