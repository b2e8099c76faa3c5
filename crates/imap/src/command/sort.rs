//! SORT and UID SORT (RFC 5256): the messages SEARCH matches
//! ([`Session::matching`]), ordered by ARRIVAL, CC, DATE, FROM, SIZE,
//! SUBJECT or TO, or SORT=DISPLAY's DISPLAYFROM and DISPLAYTO (RFC 5957:
//! the first address's display name, else its address), each possibly
//! REVERSE, ties by sequence number. Also
//! what SORT and THREAD read of a message ([`Facts`]): the header's keys
//! (base subject, RFC 5256 §2.1, and the rest) are the store's
//! ([`starling_store::sortkeys`]), kept since each body was stored.
//!
//! Strings are compared with i;ascii-casemap (RFC 5256 §2.3: ASCII letters
//! upper-cased, then octet by octet).

use crate::command::fetch::load_body;
use crate::command::search::uses_modseq;
use crate::returns::Returns;
use crate::selected::Selected;
use crate::session::{Done, Fail, Session};
use imap_codec::imap_types::extensions::sort::{SortCriterion, SortKey};
use imap_codec::imap_types::search::SearchKey;
use starling_model::BlobId;
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
    /// SORT=DISPLAY's values of the first From and To address (RFC 5957
    /// §3), upper-cased.
    pub display_from: String,
    pub display_to: String,
    /// Message-ID, References (or In-Reply-To) for THREAD REFERENCES.
    pub message_id: Option<IdHash>,
    pub references: Vec<IdHash>,
    /// The header was wanted and the body is not here (a partial
    /// replica): the message sorts as an empty header until this body
    /// arrives (an updating SORT then places it again,
    /// [`crate::context`]).
    pub awaiting: Option<starling_model::BlobId>,
}

impl Facts {
    /// The header's part of the facts.
    pub(crate) fn with_keys(mut self, keys: SortKeys) -> Facts {
        self.sent = keys.sent.unwrap_or(self.arrival);
        (self.subject, self.reply) = (keys.subject, keys.reply);
        (self.from, self.to, self.cc) = (keys.from, keys.to, keys.cc);
        (self.message_id, self.references) = (keys.message_id, keys.references);
        (self.display_from, self.display_to) = (keys.display_from, keys.display_to);
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
            let (keys, awaiting) = match stored {
                Some(k) => (k, None),
                None => match load_body(reader, &env, false) {
                    Ok(head) => (SortKeys::of(&head), None),
                    Err(starling_store::StoreError::MissingBlob(_)) => (SortKeys::default(), Some(env.blob)),
                    Err(_) => (SortKeys::default(), None),
                },
            };
            out.push(Facts { awaiting, ..f.with_keys(keys) });
        }
        out
    }
}

/// What SORT and THREAD compare of a message, whichever record holds it
/// ([`Facts`], or the sort cache's compact one).
pub(crate) trait SortFields {
    fn arrival(&self) -> i64;
    fn sent(&self) -> i64;
    fn size(&self) -> u64;
    fn subject(&self) -> &str;
    fn from(&self) -> &[u8];
    fn to(&self) -> &[u8];
    fn cc(&self) -> &[u8];
    fn display_from(&self) -> &str;
    fn display_to(&self) -> &str;
    /// THREAD's: whether the subject was a reply or forward, the
    /// Message-ID and the References.
    fn reply(&self) -> bool;
    fn message_id(&self) -> Option<IdHash>;
    fn references(&self) -> &[IdHash];
    /// The last tie-break: the sequence number, or the UID (which rises
    /// with it in every session's view).
    fn tie(&self) -> u32;
}

impl SortFields for Facts {
    fn arrival(&self) -> i64 {
        self.arrival
    }
    fn sent(&self) -> i64 {
        self.sent
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn subject(&self) -> &str {
        &self.subject
    }
    fn from(&self) -> &[u8] {
        &self.from
    }
    fn to(&self) -> &[u8] {
        &self.to
    }
    fn cc(&self) -> &[u8] {
        &self.cc
    }
    fn display_from(&self) -> &str {
        &self.display_from
    }
    fn display_to(&self) -> &str {
        &self.display_to
    }
    fn reply(&self) -> bool {
        self.reply
    }
    fn message_id(&self) -> Option<IdHash> {
        self.message_id
    }
    fn references(&self) -> &[IdHash] {
        &self.references
    }
    fn tie(&self) -> u32 {
        self.seq
    }
}

/// One criterion applied to two messages.
fn compare<F: SortFields>(key: &SortKey, a: &F, b: &F) -> Ordering {
    match key {
        SortKey::Arrival => a.arrival().cmp(&b.arrival()),
        SortKey::Cc => a.cc().cmp(b.cc()),
        SortKey::Date => a.sent().cmp(&b.sent()),
        SortKey::From => a.from().cmp(b.from()),
        SortKey::Size => a.size().cmp(&b.size()),
        SortKey::Subject => a.subject().cmp(b.subject()),
        SortKey::To => a.to().cmp(b.to()),
        SortKey::DisplayFrom => a.display_from().cmp(b.display_from()),
        SortKey::DisplayTo => a.display_to().cmp(b.display_to()),
    }
}

/// The order SORT gives two messages: the criteria in turn, each maybe
/// reversed, ties by sequence number (so the order is total).
pub(crate) fn sort_order<F: SortFields>(criteria: &[SortCriterion], a: &F, b: &F) -> Ordering {
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
        .then(a.tie().cmp(&b.tie()))
}

/// The header's keys the criteria compare (`None`: none, ARRIVAL and SIZE only).
pub(crate) fn wanted(criteria: &[SortCriterion]) -> Option<Wanted> {
    let any = |keys: &[SortKey]| criteria.iter().any(|c| keys.contains(&c.key));
    let addresses = [SortKey::From, SortKey::To, SortKey::Cc, SortKey::DisplayFrom, SortKey::DisplayTo];
    (any(&addresses) || any(&[SortKey::Subject, SortKey::Date])).then_some(Wanted {
        subject: any(&[SortKey::Subject]),
        addresses: any(&addresses),
        threading: false,
    })
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
        let returns = returns.map(|r| Returns::parse(&r)).transpose()?;
        if returns.as_ref().is_some_and(|r| r.update) {
            self.update_tag_free(tag)?;
        }
        let update = returns.as_ref().is_some_and(|r| r.update);
        // Bodies the search needed and did not find (an updating SORT
        // tests those messages again when they arrive).
        let mut absent = Vec::new();
        let sorted = self.sorted(criteria, charset, search, update.then_some(&mut absent));
        if let Some(r) = returns.as_ref().filter(|r| r.save) {
            let uids: Option<Vec<u32>> =
                sorted.as_ref().ok().map(|f| r.saved(f.len()).into_iter().map(|i| f[i].uid).collect());
            self.save_result(uids.as_deref());
        }
        let facts = sorted?;
        let uses_modseq = search.iter().any(uses_modseq);
        if uses_modseq {
            self.condstore_on();
        }
        let modseq = facts.iter().map(|f| f.modseq).max().filter(|_| uses_modseq);
        let numbers: Vec<u32> = facts.iter().map(|f| if uid { f.uid } else { f.seq }).collect();
        let done = format!("{}SORT completed", if uid { "UID " } else { "" });
        let Some(returns) = returns else {
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
        if returns.update {
            let uids: Vec<u32> = facts.iter().map(|f| f.uid).collect();
            let mut awaiting: Vec<(u32, BlobId)> =
                facts.iter().filter_map(|f| f.awaiting.map(|b| (f.uid, b))).collect();
            awaiting.extend(absent);
            awaiting.sort_unstable();
            awaiting.dedup_by_key(|(u, _)| *u);
            self.start_update(tag, uid, Some(criteria), search, uids, awaiting);
        }
        if returns.save && returns.items.is_empty() && !returns.update {
            return Ok(done); // SAVE alone answers nothing (RFC 5182 §2.4).
        }
        // ESORT: MIN and MAX are the first and last in sort order, ALL and
        // PARTIAL in sort order, each number on its own (no ranges).
        let mut line = format!("ESEARCH (TAG \"{tag}\"){}", if uid { " UID" } else { "" });
        returns.write_items(&mut line, &numbers, false);
        if let (Some(max), false) = (modseq, numbers.is_empty()) {
            line.push_str(&format!(" MODSEQ {max}"));
        }
        self.untagged(&line);
        Ok(done)
    }

    /// The messages SORT answers, in order: from the shared sort cache
    /// when it can answer ([`crate::sortcache`]), else read here. Into
    /// `absent`, the messages the search tested without their body
    /// (bounded as [`Session::matching_awaiting`] bounds them).
    fn sorted(
        &self,
        criteria: &[SortCriterion],
        charset: &str,
        search: &[SearchKey<'_>],
        absent: Option<&mut Vec<(u32, BlobId)>>,
    ) -> Result<Vec<Hit>, Fail> {
        if criteria.len() > SORT_CRITERIA_MAX {
            return Err(Fail::Bad(format!("at most {SORT_CRITERIA_MAX} sort criteria")));
        }
        charset_ok(charset)?;
        let reader = self.reader()?;
        // `ALL` reads nothing of the messages: the cache answers from its
        // order and the session's view alone.
        let matched = match search {
            [SearchKey::All] => None,
            _ => Some(self.matching_awaiting(&reader, search, absent)?),
        };
        if let Some(hits) = self.sorted_cached(&reader, criteria, matched.as_deref())? {
            return Ok(hits);
        }
        let matched = match matched {
            Some(m) => m,
            None => self.matching(&reader, search)?,
        };
        let header = wanted(criteria);
        let facts = Facts::read_all(&reader, &matched, header);
        drop(reader);
        // Indices are sorted, not the (large) facts; ties by sequence
        // number make the order total, so an unstable sort gives the one answer.
        let mut order: Vec<u32> = (0..facts.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| sort_order(criteria, &facts[a as usize], &facts[b as usize]));
        Ok(order.iter().map(|&i| Hit::of(&facts[i as usize])).collect())
    }

    /// [`Session::sorted`] from the sort cache: the mailbox's order kept
    /// for `criteria`, of which the messages in this session's view that
    /// the search matches (`ALL`: every one, nothing searched). `None` when
    /// the cache cannot answer.
    fn sorted_cached(
        &self,
        reader: &Reader,
        criteria: &[SortCriterion],
        matched: Option<&[(u32, MessageInfo)]>,
    ) -> Result<Option<Vec<Hit>>, Fail> {
        let sel = self.selected.as_ref().expect("selected");
        // Bodies awaited matter only where the header is compared.
        let header = wanted(criteria).is_some();
        let cache = &self.shared.sort_cache;
        let answer = cache.with_order(self.account_name(), sel.id, reader, criteria, |order, awaited| {
            let awaiting = |uid: u32| {
                if !header || awaited.is_empty() {
                    return None;
                }
                awaited.binary_search_by_key(&uid, |&(u, _)| u).ok().map(|i| awaited[i].1)
            };
            let mut hits = Vec::with_capacity(matched.map_or(order.len(), |m| m.len()));
            for &uid in order {
                if let Some((seq, modseq)) = answered(sel, matched, uid) {
                    hits.push(Hit { seq, uid, modseq, awaiting: awaiting(uid) });
                }
            }
            hits
        });
        // A store error: read without the cache, which says what failed.
        Ok(answer.unwrap_or(None))
    }
}

/// Whether a cached SORT or THREAD answers `uid`, and with what sequence
/// number and MODSEQ: among the search's `matched` messages, or (`None`,
/// a search of ALL) every message of the session's view (MODSEQ 0: not read).
pub(crate) fn answered(sel: &Selected, matched: Option<&[(u32, MessageInfo)]>, uid: u32) -> Option<(u32, u64)> {
    match matched {
        None => sel.seq_of(uid).map(|i| (i as u32 + 1, 0)),
        Some(m) => m.binary_search_by_key(&uid, |(_, m)| m.uid).ok().map(|i| (m[i].0, m[i].1.modseq)),
    }
}

/// One message of SORT's answer.
pub(crate) struct Hit {
    pub seq: u32,
    pub uid: u32,
    /// Its MODSEQ (read only when the search reads it: else 0).
    pub modseq: u64,
    /// Its body was not here: sorted as an empty header.
    pub awaiting: Option<starling_model::BlobId>,
}

impl Hit {
    fn of(f: &Facts) -> Hit {
        Hit { seq: f.seq, uid: f.uid, modseq: f.modseq, awaiting: f.awaiting }
    }
}
