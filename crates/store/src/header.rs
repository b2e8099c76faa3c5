//! Reading an RFC 5322 header from its raw bytes, without a full MIME
//! parse: the fields ([`scan_header`]), the header block, the Date, the
//! first mailbox of an address header, message IDs, decoded text.
//!
//! Shared by the store (it keeps each body's sort keys, [`crate::sortkeys`],
//! when the body is stored) and the IMAP server (ENVELOPE, SEARCH, and
//! SORT/THREAD on a body without stored keys), so both read a header the
//! same way: one code, one answer. mail-parser decodes dates and encoded
//! words; everything else is read here.

use std::borrow::Cow;
use std::ops::Range;

use mail_parser::parsers::MessageStream;
use mail_parser::HeaderValue;

/// Header block only (up to and including the blank line), found without a full MIME parse — the fast path for `BODY.PEEK[HEADER]` and `RFC822.HEADER`.
pub fn header_block(raw: &[u8]) -> &[u8] {
    let (len, _) = scan_header(raw, |_| {});
    raw.get(..len).unwrap_or(raw)
}

/// The first Date: header, parsed, if valid.
pub fn date_header(raw: &[u8]) -> Option<mail_parser::DateTime> {
    let mut date = None;
    scan_header(raw, |f| {
        if date.is_none() && raw[f.name].eq_ignore_ascii_case(b"date") {
            date = Some(f.value);
        }
    });
    let value = with_line_end(&raw[date?]);
    match MessageStream::new(&value).parse_date() {
        HeaderValue::DateTime(dt) if dt.is_valid() => Some(dt),
        _ => None,
    }
}

/// For SORT DATE and THREAD (RFC 5256 §2.2): the first Date: header as
/// Unix seconds in UTC, if parseable (the caller falls back to the
/// internal date).
pub fn sent_time(raw: &[u8]) -> Option<i64> {
    date_header(raw).map(|dt| dt.to_timestamp())
}

/// For SORT FROM/TO/CC (RFC 5256 §3): the mailbox (local part) of the first
/// address of the first header named `name`, as written; `None` when it
/// has none.
pub fn first_mailbox(raw: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut value = None;
    scan_header(raw, |f| {
        if value.is_none() && raw[f.name].eq_ignore_ascii_case(name.as_bytes()) {
            value = Some(f.value);
        }
    });
    parse_addresses(&raw[value?]).into_iter().find_map(|a| match a {
        Addr::Mailbox { mailbox, .. } if mailbox != b"MISSING_MAILBOX" => Some(mailbox),
        _ => None,
    })
}

/// The first header named `name`, unfolded into one line of text (RFC 2047
/// decoded), if present.
pub fn first_value(raw: &[u8], name: &str) -> Option<String> {
    let mut value = None;
    scan_header(raw, |f| {
        if value.is_none() && raw[f.name].eq_ignore_ascii_case(name.as_bytes()) {
            value = Some(f.value);
        }
    });
    Some(decode_value(&raw[value?]))
}

/// Longest message ID kept by [`message_ids`]; a longer one is not valid.
pub const MESSAGE_ID_BYTES_MAX: usize = 512;

/// For THREAD REFERENCES: the message IDs (`<id>`, without the brackets)
/// in the first header named `name`, at most the last `max` of them. Text
/// outside angle brackets (comments, phrases) is skipped; an ID that holds
/// white space or is longer than [`MESSAGE_ID_BYTES_MAX`] is not valid.
pub fn message_ids(raw: &[u8], name: &str, max: usize) -> Vec<String> {
    let mut value = None;
    scan_header(raw, |f| {
        if value.is_none() && raw[f.name].eq_ignore_ascii_case(name.as_bytes()) {
            value = Some(f.value);
        }
    });
    let Some(value) = value.filter(|_| max > 0) else { return Vec::new() };
    let text = clean(&raw[value]);
    let mut ids = std::collections::VecDeque::new();
    let mut rest = &text[..];
    while let Some(open) = rest.iter().position(|&b| b == b'<') {
        let after = &rest[open + 1..];
        let Some(close) = after.iter().position(|&b| b == b'>') else { break };
        let id = &after[..close];
        if !id.is_empty()
            && id.len() <= MESSAGE_ID_BYTES_MAX
            && !id.iter().any(|b| b.is_ascii_whitespace() || *b == b'<')
        {
            if ids.len() == max {
                ids.pop_front();
            }
            ids.push_back(String::from_utf8_lossy(id).into_owned());
        }
        rest = &after[close + 1..];
    }
    ids.into()
}

/// One header field, as ranges into the scanned bytes.
pub struct Field {
    /// The field name.
    pub name: Range<usize>,
    /// From after the colon through the field's line end, still folded.
    pub value: Range<usize>,
    /// The whole field, line end included.
    pub whole: Range<usize>,
}

/// Walks the header fields at the start of `buf` and returns the length of the header block,
/// blank line included (all of `buf` when there is no blank line), and whether it has one.
///
/// The rules are mail-parser's, so this split agrees with the part offsets it reports: white
/// space at the start of a line is skipped (so a line of only white space ends the header), a
/// line without a colon is ignored, and a field goes on while the next line starts with SP/HTAB.
pub fn scan_header(buf: &[u8], mut on_field: impl FnMut(Field)) -> (usize, bool) {
    let mut pos = 0;
    loop {
        let line = pos;
        while buf.get(pos).is_some_and(|&b| b != b'\n' && b.is_ascii_whitespace()) {
            pos += 1;
        }
        match buf.get(pos) {
            None => return (buf.len(), false),
            Some(b'\n') => return (pos + 1, true),
            Some(_) => {}
        }
        let mut name: Option<Range<usize>> = None;
        let colon = loop {
            match buf.get(pos) {
                None => return (buf.len(), false),
                Some(b'\n') => break None,
                Some(b':') if name.is_some() => break Some(pos),
                Some(&b) if b != b':' && !b.is_ascii_whitespace() => match &mut name {
                    Some(name) => name.end = pos + 1,
                    None => name = Some(pos..pos + 1),
                },
                Some(_) => {}
            }
            pos += 1;
        };
        let (Some(colon), Some(name)) = (colon, name) else {
            pos += 1;
            continue;
        };
        let mut from = colon + 1;
        let end = loop {
            match buf[from..].iter().position(|&b| b == b'\n') {
                None => break buf.len(),
                Some(i) if matches!(buf.get(from + i + 1), Some(b' ' | b'\t')) => from += i + 1,
                Some(i) => break from + i + 1,
            }
        };
        on_field(Field { name, value: colon + 1..end, whole: line..end });
        pos = end;
    }
}

/// A header value as IMAP shows it: unfolded (CR and LF dropped) and trimmed.
pub fn clean(value: &[u8]) -> Cow<'_, [u8]> {
    let value = value.trim_ascii();
    if value.iter().any(|&b| b == b'\r' || b == b'\n') {
        Cow::Owned(value.iter().copied().filter(|&b| b != b'\r' && b != b'\n').collect())
    } else {
        Cow::Borrowed(value)
    }
}

/// mail-parser's field parsers end a value at its line end; the last field of a header with
/// no body may not have one.
fn with_line_end(value: &[u8]) -> Cow<'_, [u8]> {
    if value.ends_with(b"\n") {
        Cow::Borrowed(value)
    } else {
        let mut owned = value.to_vec();
        owned.push(b'\n');
        Cow::Owned(owned)
    }
}

/// The RFC 2047-decoded, unfolded text of a raw header value.
pub fn decode_value(value: &[u8]) -> String {
    match MessageStream::new(&with_line_end(value)).parse_unstructured() {
        HeaderValue::Text(text) => text.into_owned(),
        _ => String::new(),
    }
}

/// One entry of an address list, as ENVELOPE shows it (RFC 3501 §7.4.2).
pub enum Addr {
    /// A mailbox: display name, source route, local part, domain (as written).
    Mailbox {
        /// Display name, if any.
        name: Option<Vec<u8>>,
        /// Obsolete source route, if any.
        adl: Option<Vec<u8>>,
        /// Local part (`MISSING_MAILBOX` when absent).
        mailbox: Vec<u8>,
        /// Domain (`MISSING_DOMAIN` when absent).
        host: Vec<u8>,
    },
    /// The start of a group, with its name.
    GroupStart(Vec<u8>),
    /// The end of a group.
    GroupEnd,
}

/// An RFC 5322 lexical token of an address header.
enum Tok {
    /// An atom or domain literal.
    Word(Vec<u8>),
    /// A quoted string's content, unescaped.
    Quoted(Vec<u8>),
    /// A comment's content.
    Comment(Vec<u8>),
    Special(u8),
}

struct Token {
    tok: Tok,
    /// White space came before it; kept so that display names keep their spacing.
    space: bool,
}

fn is_special(t: &Token, c: u8) -> bool {
    matches!(t.tok, Tok::Special(s) if s == c)
}

/// Reads a quoted string or comment body after its opening character: returns the content
/// with escapes and line breaks removed, and the number of bytes consumed (closing character
/// included). Comments nest.
pub fn delimited(v: &[u8], close: u8, nests: bool) -> (Vec<u8>, usize) {
    let mut content = Vec::new();
    let mut depth = 1usize;
    let mut i = 0;
    while let Some(&b) = v.get(i) {
        i += 1;
        match b {
            b'\\' => {
                if let Some(&next) = v.get(i) {
                    i += 1;
                    if next != b'\r' && next != b'\n' {
                        content.push(next);
                    }
                }
            }
            b'\r' | b'\n' => {}
            b'(' if nests => {
                depth += 1;
                content.push(b);
            }
            _ if b == close => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
                content.push(b);
            }
            _ => content.push(b),
        }
    }
    (content, i)
}

fn tokenize(v: &[u8]) -> Vec<Token> {
    const STOP: &[u8] = b"\"(<>,:;@.[";
    let mut toks = Vec::new();
    let mut space = false;
    let mut i = 0;
    while let Some(&c) = v.get(i) {
        let tok = match c {
            b'"' => {
                let (s, n) = delimited(&v[i + 1..], b'"', false);
                i += 1 + n;
                Tok::Quoted(s)
            }
            b'(' => {
                let (s, n) = delimited(&v[i + 1..], b')', true);
                i += 1 + n;
                Tok::Comment(s)
            }
            b'[' => {
                let n = v[i..].iter().position(|&b| b == b']').map_or(v.len() - i, |p| p + 1);
                let lit = v[i..i + n].iter().copied().filter(|&b| b != b'\r' && b != b'\n').collect();
                i += n;
                Tok::Word(lit)
            }
            b'<' | b'>' | b',' | b':' | b';' | b'@' | b'.' => {
                i += 1;
                Tok::Special(c)
            }
            _ if c.is_ascii_whitespace() || c == 0 => {
                i += 1;
                space = true;
                continue;
            }
            _ => {
                let n = v[i..]
                    .iter()
                    .position(|&b| b.is_ascii_whitespace() || b == 0 || STOP.contains(&b))
                    .unwrap_or(v.len() - i);
                let word = v[i..i + n].to_vec();
                i += n;
                Tok::Word(word)
            }
        };
        toks.push(Token { tok, space });
        space = false;
    }
    toks
}

/// Display-name text: words as written (quoted ones unquoted) with single spaces where the
/// header had white space; comments dropped.
fn phrase<'t>(toks: impl IntoIterator<Item = &'t Token>) -> Vec<u8> {
    let mut out = Vec::new();
    for t in toks {
        let text: &[u8] = match &t.tok {
            Tok::Word(w) | Tok::Quoted(w) => w,
            Tok::Special(c) => std::slice::from_ref(c),
            Tok::Comment(_) => continue,
        };
        if t.space && !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(text);
    }
    out
}

/// Local part or domain text: tokens joined without spaces, quoted strings unquoted (as
/// Dovecot does; IMAP has no way to say the local part was quoted).
fn join(toks: &[&Token]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in toks {
        match &t.tok {
            Tok::Word(w) | Tok::Quoted(w) => out.extend_from_slice(w),
            Tok::Special(c) => out.push(*c),
            Tok::Comment(_) => {}
        }
    }
    out
}

/// Splits an addr-spec into mailbox and host; without an "@" it is all mailbox.
fn addr_spec(toks: &[&Token]) -> (Vec<u8>, Vec<u8>) {
    match toks.iter().position(|t| is_special(t, b'@')) {
        Some(at) => (join(&toks[..at]), join(&toks[at + 1..])),
        None => (phrase(toks.iter().copied()), Vec::new()),
    }
}

/// Adds a mailbox. Missing parts get Dovecot's placeholders: a NIL host would mark group
/// syntax, and an empty mailbox or host is no better than saying what is missing.
fn push_mailbox(out: &mut Vec<Addr>, name: Option<Vec<u8>>, adl: Option<Vec<u8>>, mailbox: Vec<u8>, host: Vec<u8>) {
    let or = |v: Vec<u8>, missing: &[u8]| if v.is_empty() { missing.to_vec() } else { v };
    out.push(Addr::Mailbox { name, adl, mailbox: or(mailbox, b"MISSING_MAILBOX"), host: or(host, b"MISSING_DOMAIN") });
}

/// An address without angle brackets: "user@host", optionally with a "(Name)" comment, the
/// only name such an address has.
fn push_bare(acc: &[Token], out: &mut Vec<Addr>) {
    let core: Vec<&Token> = acc.iter().filter(|t| !matches!(t.tok, Tok::Comment(_))).collect();
    if core.is_empty() {
        return;
    }
    let name = acc.iter().rev().find_map(|t| match &t.tok {
        Tok::Comment(c) if !c.trim_ascii().is_empty() => Some(c.trim_ascii().to_vec()),
        _ => None,
    });
    let (mailbox, host) = addr_spec(&core);
    push_mailbox(out, name, None, mailbox, host);
}

/// Parses an address-list header leniently, the way servers must for real mail: mailboxes
/// (name-addr or addr-spec), groups, obsolete routes; junk after an address is skipped.
pub fn parse_addresses(v: &[u8]) -> Vec<Addr> {
    let toks = tokenize(v);
    let mut out = Vec::new();
    let mut in_group = false;
    let mut start = 0;
    let mut i = 0;
    while let Some(t) = toks.get(i) {
        match t.tok {
            Tok::Special(b'<') => {
                let close = toks[i + 1..].iter().position(|t| is_special(t, b'>')).map_or(toks.len(), |p| i + 1 + p);
                let name = phrase(&toks[start..i]);
                let inner: Vec<&Token> =
                    toks[i + 1..close].iter().filter(|t| !matches!(t.tok, Tok::Comment(_))).collect();
                // Obsolete source route: "<@a,@b:user@host>".
                let route = match inner.first() {
                    Some(first) if is_special(first, b'@') => inner.iter().position(|t| is_special(t, b':')),
                    _ => None,
                };
                let (adl, spec) = match route {
                    Some(colon) => (Some(join(&inner[..colon])), &inner[colon + 1..]),
                    None => (None, &inner[..]),
                };
                let (mailbox, host) = addr_spec(spec);
                push_mailbox(&mut out, (!name.is_empty()).then_some(name), adl, mailbox, host);
                i = toks[close..]
                    .iter()
                    .position(|t| is_special(t, b',') || is_special(t, b';'))
                    .map_or(toks.len(), |p| close + p);
                start = i;
                continue;
            }
            Tok::Special(b':') if !in_group => {
                out.push(Addr::GroupStart(phrase(&toks[start..i])));
                in_group = true;
                start = i + 1;
            }
            Tok::Special(b',') => {
                push_bare(&toks[start..i], &mut out);
                start = i + 1;
            }
            Tok::Special(b';') => {
                push_bare(&toks[start..i], &mut out);
                if in_group {
                    out.push(Addr::GroupEnd);
                    in_group = false;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    push_bare(toks.get(start..).unwrap_or_default(), &mut out);
    if in_group {
        out.push(Addr::GroupEnd);
    }
    out
}
