//! Sort keys: what SORT and THREAD (RFC 5256) compare of a message that
//! its header gives — the Date, the base subject, the first From/To/Cc
//! mailbox, the Message-ID and the References — read once, when the body
//! is stored, and kept beside it (table `sort_keys`, body id → record), so
//! that a SORT or THREAD reads a small record per message instead of
//! decompressing and parsing its header on every call.
//!
//! One apply path: every body reaches the file through
//! [`crate::Prepared::write`] (IMAP APPEND, LMTP, maildir import, a body a
//! peer shipped raw or in stored form, the on-demand fetch of a partial
//! replica, an operator's `put_blobs`). The keys are read when the body is
//! prepared, before the transaction, and written in the same transaction
//! as the body (`put`). A
//! body collected by the garbage collector takes its keys with it in the
//! same transaction. A store of an older format gets the keys of every
//! body it holds at open, in transactions of at most [`SORT_KEYS_PER_TXN`]
//! bodies that a crash may cut and the next open resumes ([`resume_build`];
//! 3.7 s for the 105,424 bodies, 1.6 GB, of the benchmark's store, when it
//! was one transaction). Built at open rather
//! than lazily at the first SORT: a SORT only reads (a lazy fill would put
//! a write transaction and its fsync inside a read command, serialised
//! with every account's writes), and the invariant below then holds for
//! every store and can be checked. So every stored
//! body has keys and every keys row has its body; `starling verify`
//! checks both ways ([`Store::check_sort_keys`]). A message whose body is not here (a
//! partial replica) has no keys until the body arrives; the IMAP server
//! then does what it did before keys existed.
//!
//! The keys are computed by [`SortKeys::of`], the one function the IMAP
//! server also uses when it parses a header itself, so an answer from
//! stored keys is the answer from the header. Each key is bounded, so a
//! record is at most [`RECORD_BYTES_MAX`]: the subject is read from its
//! first [`SUBJECT_BYTES_MAX`] bytes, a mailbox keeps its first
//! [`MAILBOX_BYTES_MAX`] bytes (a valid local part has at most 64, RFC
//! 5321 §4.5.3.1.1; beyond that two mailboxes equal in their first 256
//! bytes sort as equal, ties by sequence number), References keeps its
//! last [`REFERENCES_MAX`] IDs, and a message ID is kept as the first 16
//! bytes of its BLAKE3 ([`IdHash`]; THREAD only asks whether two IDs are
//! equal, and two different IDs share a hash with probability 2⁻¹²⁸).

use crate::header;
use crate::*;
use blob::{BodyRecord, Piece};
use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};

/// Body id → [`SortKeys::encode`] of its keys.
pub(crate) const SORT_KEYS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("sort_keys");

/// Bytes of a Subject looked at for its base subject, at most: the rest
/// of a longer one is ignored (the extraction is linear in this).
pub const SUBJECT_BYTES_MAX: usize = 1024;

/// Bytes of a From/To/Cc mailbox (local part) kept, at most.
pub const MAILBOX_BYTES_MAX: usize = 256;

/// References of one message that THREAD REFERENCES links, at most: the
/// last ones, nearest the message (a References header is commonly
/// truncated at its start anyway, RFC 5256 §3).
pub const REFERENCES_MAX: usize = 64;

/// Bytes of a DISPLAYFROM / DISPLAYTO sort value (RFC 5957 §3) kept, at
/// most (cut at a character boundary).
pub const DISPLAY_BYTES_MAX: usize = 256;

/// Largest encoded record ([`SortKeys::encode`]) the caps allow.
pub const RECORD_BYTES_MAX: usize = 1
    + 11
    + (SUBJECT_BYTES_MAX + 2)
    + 1
    + 3 * (MAILBOX_BYTES_MAX + 2)
    + 17
    + 2
    + REFERENCES_MAX * 16
    + 2 * (DISPLAY_BYTES_MAX + 2);

/// Bodies asked for at once above which [`Reader::sort_keys`] may walk
/// the table in order rather than look each up.
const SCAN_MIN: usize = 1024;

/// The record's version byte (the first byte of every stored record).
/// Version 1 (store formats 8 and 9) had no display keys; such a record
/// is rebuilt when the store opens ([`build`]).
const RECORD_VERSION: u8 = 2;

/// A message ID (without its angle brackets) as THREAD compares it: the
/// first 16 bytes of its BLAKE3.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdHash(pub [u8; 16]);

impl IdHash {
    /// The hash of one message ID.
    pub fn of(id: &str) -> IdHash {
        let mut out = [0u8; 16];
        out.copy_from_slice(&blake3::hash(id.as_bytes()).as_bytes()[..16]);
        IdHash(out)
    }
}

/// What SORT and THREAD compare of one message that its header gives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SortKeys {
    /// The first valid Date header, Unix seconds in UTC (RFC 5256 §2.2);
    /// `None`: the caller uses the message's internal date.
    pub sent: Option<i64>,
    /// Base subject (RFC 5256 §2.1), upper-cased (i;ascii-casemap).
    pub subject: String,
    /// Whether the subject was a reply or forward (a `re:`/`fw:`/`fwd:`
    /// leader, a `(fwd)` trailer or a `[fwd: …]` wrapper was removed).
    pub reply: bool,
    /// Local part of the first From, To and Cc mailbox, upper-cased.
    #[serde(with = "serde_bytes")]
    pub from: Vec<u8>,
    /// See `from`.
    #[serde(with = "serde_bytes")]
    pub to: Vec<u8>,
    /// See `from`.
    #[serde(with = "serde_bytes")]
    pub cc: Vec<u8>,
    /// The Message-ID.
    pub message_id: Option<IdHash>,
    /// The last [`REFERENCES_MAX`] IDs of References, or In-Reply-To's
    /// first when References has none.
    pub references: Vec<IdHash>,
    /// SORT=DISPLAY (RFC 5957 §3): the sort value of the first From
    /// address, ASCII upper-cased (i;ascii-casemap), at most
    /// [`DISPLAY_BYTES_MAX`] bytes ([`display_value`]).
    pub display_from: String,
    /// See `display_from`, of the first To address.
    pub display_to: String,
}

impl SortKeys {
    /// The keys of a message, read from its header (`raw` is the message
    /// or a prefix of it that holds the whole header block).
    pub fn of(raw: &[u8]) -> SortKeys {
        let raw = header::header_block(raw);
        let (subject, reply) = base_subject(&header::first_value(raw, "Subject").unwrap_or_default());
        let mailbox = |name| {
            let mut m = header::first_mailbox(raw, name).unwrap_or_default();
            m.truncate(MAILBOX_BYTES_MAX);
            m.to_ascii_uppercase()
        };
        let ids = |name, max| header::message_ids(raw, name, max).iter().map(|id| IdHash::of(id)).collect::<Vec<_>>();
        let mut references = ids("References", REFERENCES_MAX);
        if references.is_empty() {
            references = ids("In-Reply-To", 1);
        }
        SortKeys {
            sent: header::sent_time(raw),
            subject,
            reply,
            from: mailbox("From"),
            to: mailbox("To"),
            cc: mailbox("Cc"),
            message_id: ids("Message-ID", 1).pop(),
            references,
            display_from: display_value(raw, "From"),
            display_to: display_value(raw, "To"),
        }
    }

    /// Whether every key is within its cap.
    fn check(&self) -> Result<(), String> {
        if self.subject.len() > SUBJECT_BYTES_MAX {
            return Err(format!("subject of {} bytes", self.subject.len()));
        }
        if [&self.from, &self.to, &self.cc].iter().any(|m| m.len() > MAILBOX_BYTES_MAX) {
            return Err("a mailbox over its cap".into());
        }
        if self.references.len() > REFERENCES_MAX {
            return Err(format!("{} references", self.references.len()));
        }
        if [&self.display_from, &self.display_to].iter().any(|d| d.len() > DISPLAY_BYTES_MAX) {
            return Err("a display value over its cap".into());
        }
        Ok(())
    }

    /// The stored record: a version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        // Computed by `of`, which caps every key: a record over its caps is a bug.
        assert!(self.check().is_ok(), "sort keys over their caps: {:?}", self.check());
        let mut out = vec![RECORD_VERSION];
        out.extend_from_slice(&postcard::to_stdvec(self).expect("sort keys serialise"));
        assert!(out.len() <= RECORD_BYTES_MAX, "sort keys record of {} bytes", out.len());
        out
    }

    /// Reverses [`SortKeys::encode`], checking the version and the caps.
    pub fn decode(bytes: &[u8]) -> Result<SortKeys, String> {
        SortKeys::decode_wanted(bytes, Wanted::ALL)
    }

    /// [`SortKeys::decode`] of the keys `wanted` only (the others empty):
    /// the record is read in place and only those are copied out.
    pub fn decode_wanted(bytes: &[u8], wanted: Wanted) -> Result<SortKeys, String> {
        if bytes.len() > RECORD_BYTES_MAX {
            return Err(format!("{} bytes", bytes.len()));
        }
        match bytes.split_first() {
            Some((&RECORD_VERSION, rest)) => {
                let v: Stored<'_> = postcard::from_bytes(rest).map_err(|e| e.to_string())?;
                if v.subject.len() > SUBJECT_BYTES_MAX
                    || [v.from, v.to, v.cc].iter().any(|m| m.len() > MAILBOX_BYTES_MAX)
                    || v.references.len() > REFERENCES_MAX
                    || [v.display_from, v.display_to].iter().any(|d| d.len() > DISPLAY_BYTES_MAX)
                {
                    return Err("a key over its cap".into());
                }
                let (addresses, threading) = (wanted.addresses, wanted.threading);
                Ok(SortKeys {
                    sent: v.sent,
                    subject: if wanted.subject { v.subject.to_string() } else { String::new() },
                    reply: v.reply,
                    from: if addresses { v.from.to_vec() } else { Vec::new() },
                    to: if addresses { v.to.to_vec() } else { Vec::new() },
                    cc: if addresses { v.cc.to_vec() } else { Vec::new() },
                    message_id: v.message_id.filter(|_| threading),
                    references: if threading { v.references } else { Vec::new() },
                    display_from: if addresses { v.display_from.to_string() } else { String::new() },
                    display_to: if addresses { v.display_to.to_string() } else { String::new() },
                })
            }
            Some((v, _)) => Err(format!("unknown sort keys version {v}")),
            None => Err("empty sort keys record".into()),
        }
    }
}

/// A stored record read in place ([`SortKeys::decode_wanted`]): the same
/// postcard layout as [`SortKeys`], its strings borrowed.
#[derive(Deserialize)]
struct Stored<'a> {
    sent: Option<i64>,
    subject: &'a str,
    reply: bool,
    from: &'a [u8],
    to: &'a [u8],
    cc: &'a [u8],
    message_id: Option<IdHash>,
    references: Vec<IdHash>,
    display_from: &'a str,
    display_to: &'a str,
}

/// Which keys a caller wants decoded ([`Reader::sort_keys`]); the date
/// and the reply mark always come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// The base subject.
    pub subject: bool,
    /// The From, To and Cc mailboxes, and the display values.
    pub addresses: bool,
    /// The Message-ID and References.
    pub threading: bool,
}

impl Wanted {
    /// Every key.
    pub const ALL: Wanted = Wanted { subject: true, addresses: true, threading: true };
}

/// The DISPLAY sort value (RFC 5957 §3) of the first address of the first
/// header `name`, as the IMAP envelope gives that address: its display
/// name (RFC 2047 decoded) if not empty, else `mailbox@host`, else the
/// mailbox (a group's name), else empty. ASCII upper-cased, cut to
/// [`DISPLAY_BYTES_MAX`] bytes at a character boundary.
pub fn display_value(raw: &[u8], name: &str) -> String {
    let mut value = None;
    header::scan_header(raw, |f| {
        if value.is_none() && raw[f.name].eq_ignore_ascii_case(name.as_bytes()) {
            value = Some(f.value);
        }
    });
    let Some(value) = value else { return String::new() };
    let text = match header::parse_addresses(&raw[value]).into_iter().next() {
        Some(header::Addr::Mailbox { name, mailbox, host, .. }) => {
            let name = name.map(|n| header::decode_value(&n)).unwrap_or_default();
            let mailbox = (mailbox != b"MISSING_MAILBOX").then(|| String::from_utf8_lossy(&mailbox).into_owned());
            let host = (host != b"MISSING_DOMAIN").then(|| String::from_utf8_lossy(&host).into_owned());
            match (name.trim(), mailbox, host) {
                (n, _, _) if !n.is_empty() => n.to_string(),
                (_, Some(m), Some(h)) => format!("{m}@{h}"),
                (_, Some(m), None) => m,
                _ => String::new(),
            }
        }
        Some(header::Addr::GroupStart(group)) => header::decode_value(&group),
        _ => String::new(),
    };
    let mut cut = text.len().min(DISPLAY_BYTES_MAX);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_ascii_uppercase()
}

fn starts_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// `subj-blob = "[" *BLOBCHAR "]" *WSP` at the start of `s`: its length.
fn blob_len(s: &[u8]) -> Option<usize> {
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
    while let Some(b) = blob_len(&s[n..]) {
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
    if let Some(b) = blob_len(&s[n..]) {
        n += b;
    }
    (s.get(n) == Some(&b':')).then_some(n + 1)
}

/// The base subject of a decoded Subject (RFC 5256 §2.1), upper-cased, and
/// whether the subject was a reply or forward. Every loop shortens the
/// text, so the work is linear in [`SUBJECT_BYTES_MAX`].
pub fn base_subject(subject: &str) -> (String, bool) {
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
            if let Some(n) = blob_len(&s[start..end]) {
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

/// The header of the body `record` describes: its pieces from the start
/// until the header block ends (a message split by [`blob::split`] has its
/// whole header in its first piece; a large part is read with `part` only
/// if the header runs into it). `None` if a part it needs is not here.
fn record_header(
    record: &BodyRecord,
    mut part: impl FnMut(BlobId, u64) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<Option<Vec<u8>>, StoreError> {
    let mut head = Vec::new();
    for piece in &record.pieces {
        match piece {
            Piece::Inline(b) => head.extend_from_slice(b),
            Piece::Part { id, len } => match part(*id, *len)? {
                Some(bytes) => head.extend_from_slice(&bytes),
                None => return Ok(None),
            },
        }
        let (len, blank) = header::scan_header(&head, |_| {});
        if blank {
            head.truncate(len);
            return Ok(Some(head));
        }
    }
    Ok(Some(head))
}

/// The keys of a body stored as `record`, its parts read with `part`. A
/// header that runs into a part that is not here counts as empty, as the
/// IMAP server reads a header it cannot load.
pub(crate) fn of_record(
    record: &BodyRecord,
    part: impl FnMut(BlobId, u64) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<SortKeys, StoreError> {
    Ok(SortKeys::of(&record_header(record, part)?.unwrap_or_default()))
}

/// Writes the keys of body `id` in `txn` (replacing any).
pub(crate) fn put(txn: &WriteTransaction, id: BlobId, keys: &SortKeys) -> Result<(), StoreError> {
    txn.open_table(SORT_KEYS).map_err(st)?.insert(&id.0, keys.encode().as_slice()).map_err(st)?;
    Ok(())
}

/// A stored body's part, unpacked, from the parts table (`None`: not here).
fn stored_part(
    parts: Option<&impl ReadableTable<&'static [u8; 32], &'static [u8]>>,
    id: BlobId,
    len: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(g) = parts.map(|t| t.get(&id.0)).transpose().map_err(st)?.flatten() else { return Ok(None) };
    let cap = usize::try_from(len).unwrap_or(usize::MAX).min(BODY_BYTES_MAX);
    Ok(blob::unpack(g.value(), cap).ok().map(|b| b.into_owned()))
}

/// The keys of the body stored in `blobs` as `stored` (a record that does
/// not decode: `None`).
fn of_stored(
    stored: &[u8],
    parts: Option<&impl ReadableTable<&'static [u8; 32], &'static [u8]>>,
) -> Result<Option<SortKeys>, StoreError> {
    let Ok(record) = blob::unpack_record(stored, BODY_BYTES_MAX) else { return Ok(None) };
    of_record(&record, |id, len| stored_part(parts, id, len)).map(Some)
}

/// Bodies one transaction of the keys build ([`resume_build`]) looks
/// at, at most: each transaction's size is bounded whatever the store's.
pub const SORT_KEYS_PER_TXN: usize = 10_000;

/// Meta key present while the keys build is under way: its value is the
/// id of the last body done (empty: none yet). Written with the format
/// mark at open and with each batch, removed with the last.
pub(crate) const BUILD_CURSOR: &str = "sort_keys_build_after";

/// What the keys build at open did (a store of format 9 or older, or one
/// whose build a crash cut short).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SortKeysBuild {
    /// Records written (bodies without keys, or with an older record).
    pub built: u64,
    /// Write transactions it took (each at most [`SORT_KEYS_PER_TXN`]
    /// bodies).
    pub transactions: u64,
}

/// Gives the next bodies after `after` (in id order) their keys, at most
/// [`SORT_KEYS_PER_TXN`] of them (a store written before keys, or before
/// the record's current version: an older record is replaced; one of this
/// version is kept). Returns the records written and the last body looked
/// at if more may follow (`None`: the table's end). A record that does not
/// decode gets none (`starling verify` reports the body as damaged).
fn build_batch(w: &WriteTransaction, after: Option<&[u8; 32]>) -> Result<(u64, Option<[u8; 32]>), StoreError> {
    use std::ops::Bound;
    let blobs = w.open_table(BLOBS).map_err(st)?;
    let parts = w.open_table(PARTS).map_err(st)?;
    let mut keys = w.open_table(SORT_KEYS).map_err(st)?;
    let (mut built, mut seen, mut last) = (0, 0, None);
    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
    for item in blobs.range::<&[u8; 32]>((from, Bound::Unbounded)).map_err(st)? {
        if seen == SORT_KEYS_PER_TXN {
            return Ok((built, last));
        }
        let (k, v) = item.map_err(st)?;
        seen += 1;
        last = Some(*k.value());
        if keys.get(k.value()).map_err(st)?.is_some_and(|g| g.value().first() == Some(&RECORD_VERSION)) {
            continue;
        }
        if let Some(found) = of_stored(v.value(), Some(&parts))? {
            keys.insert(k.value(), found.encode().as_slice()).map_err(st)?;
            built += 1;
        }
    }
    Ok((built, None))
}

/// Marks the keys build as under way from the first body, in `w` (with
/// the format mark: see `open`).
pub(crate) fn start_build(w: &WriteTransaction) -> Result<(), StoreError> {
    w.open_table(META).map_err(st)?.insert(BUILD_CURSOR, [0u8; 0].as_slice()).map_err(st)?;
    Ok(())
}

/// Runs the keys build marked under way ([`start_build`]) to its end: one
/// transaction per [`SORT_KEYS_PER_TXN`] bodies, each writing its records
/// and the cursor past them together, the last removing the cursor. A
/// crash between two leaves records of both versions and the cursor, and
/// the next open goes on from the cursor (a record already of this
/// version is kept, so nothing is half-built or built twice). `None`:
/// no build was under way.
pub(crate) fn resume_build(db: &redb::Database) -> Result<Option<SortKeysBuild>, StoreError> {
    // The common case, nothing under way: a read, no write transaction.
    let r = redb::ReadableDatabase::begin_read(db).map_err(st)?;
    if table(&r, META)?.map(|t| t.get(BUILD_CURSOR).map(|g| g.is_some())).transpose().map_err(st)? != Some(true) {
        return Ok(None);
    }
    drop(r);
    let mut done = SortKeysBuild::default();
    loop {
        let w = db.begin_write().map_err(st)?;
        let cursor = w.open_table(META).map_err(st)?.get(BUILD_CURSOR).map_err(st)?.map(|g| g.value().to_vec());
        let Some(cursor) = cursor else {
            w.abort().map_err(st)?;
            return Ok((done.transactions > 0).then_some(done));
        };
        let after: Option<[u8; 32]> = match cursor.len() {
            0 => None,
            _ => Some(cursor.try_into().map_err(|_| damaged("sort keys build cursor", "not a body id"))?),
        };
        let (built, next) = build_batch(&w, after.as_ref())?;
        {
            let mut meta = w.open_table(META).map_err(st)?;
            match &next {
                Some(k) => meta.insert(BUILD_CURSOR, k.as_slice()).map_err(st)?,
                None => meta.remove(BUILD_CURSOR).map_err(st)?,
            };
        }
        w.commit().map_err(st)?;
        done.built += built;
        done.transactions += 1;
        if next.is_none() {
            return Ok(Some(done));
        }
    }
}

/// Where the keys disagree with the bodies: a body without keys, keys
/// without a body, a record that does not decode or differs from the keys
/// its body gives now (in words; empty: they agree).
pub(crate) fn check(r: &redb::ReadTransaction) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let hex = |k: &[u8; 32]| crate::verify::hex(&BlobId(*k));
    let blobs = table(r, BLOBS)?;
    let parts = table(r, PARTS)?;
    let keys = table(r, SORT_KEYS)?;
    if let Some(blobs) = &blobs {
        for item in blobs.iter().map_err(st)? {
            let (k, v) = item.map_err(st)?;
            let Some(expected) = of_stored(v.value(), parts.as_ref())? else { continue };
            let stored = match &keys {
                Some(t) => t.get(k.value()).map_err(st)?.map(|g| SortKeys::decode(g.value())),
                None => None,
            };
            match stored {
                None => out.push(format!("body {} has no sort keys", hex(k.value()))),
                Some(Err(e)) => out.push(format!("sort keys of body {} do not decode: {e}", hex(k.value()))),
                Some(Ok(found)) if found != expected => {
                    out.push(format!("sort keys of body {} differ from its header's", hex(k.value())))
                }
                Some(Ok(_)) => {}
            }
        }
    }
    if let Some(keys) = &keys {
        for item in keys.iter().map_err(st)? {
            let k = *item.map_err(st)?.0.value();
            let present = match &blobs {
                Some(b) => b.get(&k).map_err(st)?.is_some(),
                None => false,
            };
            if !present {
                out.push(format!("sort keys of body {} whose body is not stored", hex(&k)));
            }
        }
    }
    Ok(out)
}

impl Reader {
    /// The stored sort keys of the bodies `ids`, in order (those `wanted`;
    /// the others empty); `None` for a
    /// body not stored here, or one this reader's account has not got (as
    /// [`Reader::body`] treats it: see `crate::refs`). One pass over the
    /// tables, not one opening per body.
    pub fn sort_keys(&self, ids: &[BlobId], wanted: Wanted) -> Result<Vec<Option<SortKeys>>, StoreError> {
        self.guard(|| {
            let Some(keys) = self.table(SORT_KEYS)? else { return Ok(vec![None; ids.len()]) };
            let missing = match self.table(crate::backend::MISSING)? {
                // An account that lacks no body (the common case, a full
                // replica): no lookup per body.
                Some(t) if self.account != 0 => {
                    let range = (self.account, [0u8; 32])..=(self.account, [0xff; 32]);
                    let lacks_some = t.range(range).map_err(st)?.next().is_some();
                    lacks_some.then_some(t)
                }
                _ => None,
            };
            let lacks = |id: &BlobId| -> Result<bool, StoreError> {
                match &missing {
                    Some(t) => Ok(t.get((self.account, id.0)).map_err(st)?.is_some()),
                    None => Ok(false),
                }
            };
            let decode = |bytes: &[u8]| SortKeys::decode_wanted(bytes, wanted).map_err(|e| damaged("sort keys", e));
            let mut out = vec![None; ids.len()];
            // Asked for a good share of the table (a SORT of a large
            // mailbox): one ordered walk of it, in id order, instead of a
            // lookup from the root per body — the same rows, read in the
            // order they lie.
            if ids.len() >= SCAN_MIN && ids.len() as u64 * 4 >= keys.len().map_err(st)? {
                let mut order: Vec<usize> = (0..ids.len()).collect();
                order.sort_unstable_by_key(|&i| ids[i].0);
                let (first, last) = (&ids[order[0]].0, &ids[order[order.len() - 1]].0);
                let mut rows = keys.range::<&[u8; 32]>(first..=last).map_err(st)?;
                let mut row = rows.next().transpose().map_err(st)?;
                for i in order {
                    while row.as_ref().is_some_and(|(k, _)| k.value() < &ids[i].0) {
                        row = rows.next().transpose().map_err(st)?;
                    }
                    if let Some((k, v)) = &row {
                        if k.value() == &ids[i].0 && !lacks(&ids[i])? {
                            out[i] = Some(decode(v.value())?);
                        }
                    }
                }
                return Ok(out);
            }
            for (id, slot) in ids.iter().zip(&mut out) {
                if lacks(id)? {
                    continue;
                }
                if let Some(g) = keys.get(&id.0).map_err(st)? {
                    *slot = Some(decode(g.value())?);
                }
            }
            Ok(out)
        })
    }
}

impl Store {
    /// Where the sort keys disagree with the stored bodies (see
    /// `check`); empty when they agree. Reads every body's header.
    pub fn check_sort_keys(&self) -> Result<Vec<String>, StoreError> {
        self.run(|db| check(&redb::ReadableDatabase::begin_read(db).map_err(st)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(base_subject(&long).0.len() <= SUBJECT_BYTES_MAX);
    }

    #[test]
    fn records_round_trip_and_stay_within_their_caps() {
        let many: String = (0..500).map(|i| format!("<{}@x{i}>", "r".repeat(400))).collect();
        let raw = format!(
            "Subject: {}\r\nFrom: {}@a\r\nTo: \"T\" <to@b>\r\nMessage-ID: <m@x>\r\nReferences: {many}\r\n\
             Date: Mon, 1 Jan 2024 10:00:00 +0200\r\n\r\nbody\r\n",
            "s".repeat(5000),
            "f".repeat(5000)
        );
        let keys = SortKeys::of(raw.as_bytes());
        assert_eq!(keys.subject.len(), SUBJECT_BYTES_MAX);
        assert_eq!(keys.from.len(), MAILBOX_BYTES_MAX);
        assert_eq!(keys.to, b"TO");
        assert_eq!(keys.references.len(), REFERENCES_MAX);
        assert_eq!(keys.references.last(), Some(&IdHash::of(&format!("{}@x499", "r".repeat(400)))));
        assert_eq!(keys.message_id, Some(IdHash::of("m@x")));
        assert_eq!(keys.sent, Some(1_704_096_000));
        let bytes = keys.encode();
        assert!(bytes.len() <= RECORD_BYTES_MAX);
        assert_eq!(SortKeys::decode(&bytes).unwrap(), keys);
        let date_only = Wanted { subject: false, addresses: false, threading: false };
        let some = SortKeys::decode_wanted(&bytes, date_only).unwrap();
        assert_eq!((some.sent, some.reply), (keys.sent, keys.reply));
        assert!(some.subject.is_empty() && some.from.is_empty() && some.references.is_empty());
        let subject = SortKeys::decode_wanted(&bytes, Wanted { subject: true, ..date_only }).unwrap();
        assert_eq!(subject.subject, keys.subject);
        assert!(SortKeys::decode(&[9, 0]).is_err());
        assert!(SortKeys::decode(&[]).is_err());
        // In-Reply-To stands in for an empty References.
        let reply = SortKeys::of(b"In-Reply-To: <a@b> <c@d>\r\n\r\n");
        assert_eq!(reply.references, vec![IdHash::of("c@d")]);
        assert_eq!(SortKeys::of(b""), SortKeys::default());
    }

    #[test]
    fn the_header_is_read_across_pieces_only_when_needed() {
        let record = |pieces| BodyRecord { len: 0, pieces };
        let no_part = |_: BlobId, _: u64| -> Result<Option<Vec<u8>>, StoreError> { panic!("no part needed") };
        let r =
            record(vec![Piece::Inline(b"Subject: a\r\n\r\nx".to_vec()), Piece::Part { id: BlobId([1; 32]), len: 3 }]);
        assert_eq!(record_header(&r, no_part).unwrap().unwrap(), b"Subject: a\r\n\r\n");
        let r = record(vec![Piece::Inline(b"Subject: a\r\n".to_vec()), Piece::Part { id: BlobId([1; 32]), len: 3 }]);
        assert_eq!(record_header(&r, |_, _| Ok(None)).unwrap(), None);
        let got = record_header(&r, |_, _| Ok(Some(b"To: b\r\n\r\nrest".to_vec()))).unwrap().unwrap();
        assert_eq!(got, b"Subject: a\r\nTo: b\r\n\r\n");
        assert_eq!(of_record(&r, |_, _| Ok(None)).unwrap(), SortKeys::default());
    }
}
