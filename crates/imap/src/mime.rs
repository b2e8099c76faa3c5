//! The IMAP view of a raw RFC 5322/MIME message: ENVELOPE, BODY/BODYSTRUCTURE, BODY[section]
//! slices, and the decoded text and dates that SEARCH looks at.
//!
//! mail-parser supplies the MIME tree (part offsets, boundaries, transfer and charset decoding).
//! Header fields, addresses and MIME parameters are read from the raw bytes here, because IMAP
//! hands them to clients undecoded (RFC 2047 and RFC 2231 are the client's business) while
//! mail-parser keeps only decoded values.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::OnceLock;

use imap_codec::imap_types::core::AString;
use imap_codec::imap_types::fetch::{Part, Section};
use mail_parser::decoders::html::html_to_text;
use mail_parser::{Encoding, Message, MessageParser, MessagePart, PartType};

use crate::wire::{nstring, string};

// Header fields, addresses, dates and message IDs are read by the store's
// header module, which also computes the sort keys it keeps per body: one
// reading of a header for SEARCH, ENVELOPE, SORT and THREAD.
use starling_store::header::{clean, date_header, decode_value, delimited, parse_addresses, scan_header, Addr};
pub use starling_store::header::{
    first_mailbox, first_value, header_block, message_ids, sent_time, MESSAGE_ID_BYTES_MAX,
};

/// Deepest nesting of multiparts and encapsulated messages that is walked; anything deeper is
/// shown as an opaque leaf. Bounds recursion, and re-parsing of encoded nested messages.
const MAX_DEPTH: usize = 32;

const EMPTY_ENVELOPE: &[u8] = b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)";

/// Stand-in for the body of a multipart without parts or of an encapsulated message that
/// could not be read: the grammar requires one, and this is what Dovecot sends.
fn write_empty_body(out: &mut Vec<u8>, extended: bool) {
    out.extend_from_slice(b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0");
    if extended {
        out.extend_from_slice(b" NIL NIL NIL NIL");
    }
    out.push(b')');
}

/// ENVELOPE (RFC 3501 7.4.2 / RFC 9051): "(date subject from sender reply-to to cc bcc in-reply-to message-id)".
/// sender and reply-to default to from when absent, as the RFC says. Header values are
/// the raw (still RFC 2047-encoded) header text, unfolded, as servers send them. Addresses
/// as ((name adl mailbox host) ...) with NIL for absent lists; groups per RFC 3501.
pub fn envelope(raw: &[u8], out: &mut Vec<u8>) {
    write_envelope(out, raw);
}

/// BODYSTRUCTURE (extended = true) or BODY (extended = false) of the whole message, per RFC 3501/9051:
/// single parts with type, subtype, params, id, description, encoding, size (octets of the
/// encoded body), text/* adds line count, message/rfc822 adds envelope, body structure and
/// lines; multiparts as (part part ... "subtype" [ext]). Extension data when extended:
/// singlepart md5 NIL, disposition, language, location; multipart params, disposition, language, location.
///
/// Details follow Dovecot: lines are line ends counted, parameters keep their raw values but
/// RFC 2231 continuations are joined, text gets charset us-ascii when it names none, and
/// missing parts are stood in for by an empty text/plain part.
pub fn body_structure(raw: &[u8], extended: bool, out: &mut Vec<u8>) {
    let tree = Tree::build(raw);
    tree.write_body(out, tree.top.root, extended);
}

/// The bytes of a FETCH BODY[section] (None = whole message), or None if the section
/// does not exist (the caller then answers an empty string, as servers do).
/// Covers HEADER, HEADER.FIELDS (..), HEADER.FIELDS.NOT (..), TEXT, MIME and part numbers
/// (1, 1.2, 2.HEADER for an encapsulated message/rfc822, etc.), byte-exact slices of raw.
/// A non-multipart message has part 1 = its body. HEADER.FIELDS output ends with the blank line CRLF
/// (except for a message that has no blank line at all, RFC 3501 6.4.5).
///
/// Parts inside a base64 or quoted-printable encoded message/rfc822 are slices of its decoded
/// form (owned); everything else borrows from `raw`.
pub fn section<'a>(raw: &'a [u8], section: Option<&Section<'_>>) -> Option<Cow<'a, [u8]>> {
    let Some(section) = section else { return Some(Cow::Borrowed(raw)) };
    match section {
        Section::Part(part) => {
            let tree = Tree::build(raw);
            let node = tree.locate(part)?;
            Some(tree.slice(node.buf, node.body.clone()))
        }
        Section::Mime(part) => {
            let tree = Tree::build(raw);
            let node = tree.locate(part)?;
            Some(tree.slice(node.buf, node.mime.clone()))
        }
        Section::Header(part) => message_at(raw, part.as_ref()).map(|(header, _)| header),
        Section::Text(part) => message_at(raw, part.as_ref()).map(|(_, body)| body),
        Section::HeaderFields(part, names) => {
            message_at(raw, part.as_ref()).map(|(header, _)| Cow::Owned(select_fields(&header, names.as_ref(), true)))
        }
        Section::HeaderFieldsNot(part, names) => {
            message_at(raw, part.as_ref()).map(|(header, _)| Cow::Owned(select_fields(&header, names.as_ref(), false)))
        }
    }
}

/// Why a BINARY section (RFC 3516) cannot be given.
#[derive(Debug, PartialEq, Eq)]
pub enum BinaryError {
    /// The part does not exist.
    NoSuchPart,
    /// A Content-Transfer-Encoding this server cannot undo (or data that
    /// does not decode as it says): `NO [UNKNOWN-CTE]`.
    UnknownCte,
}

/// A part's content with its Content-Transfer-Encoding undone (RFC 3516
/// BINARY): base64 and quoted-printable are decoded, 7bit/8bit/binary given
/// as they are. The empty section is the whole message, as it is.
pub fn binary<'a>(raw: &'a [u8], section: &[std::num::NonZeroU32]) -> Result<Cow<'a, [u8]>, BinaryError> {
    if section.is_empty() {
        return Ok(Cow::Borrowed(raw));
    }
    let tree = Tree::build(raw);
    let node = tree.locate_path(section).ok_or(BinaryError::NoSuchPart)?;
    let body = tree.slice(node.buf, node.body.clone());
    let enc = node.info.enc.as_deref().map(|e| e.trim_ascii().to_ascii_lowercase());
    use mail_parser::decoders::{base64::base64_decode, quoted_printable::quoted_printable_decode};
    match enc.as_deref() {
        None | Some(b"7bit" | b"8bit" | b"binary") => Ok(body),
        Some(b"base64") => base64_decode(&body).map(Cow::Owned).ok_or(BinaryError::UnknownCte),
        Some(b"quoted-printable") => quoted_printable_decode(&body).map(Cow::Owned).ok_or(BinaryError::UnknownCte),
        Some(_) => Err(BinaryError::UnknownCte),
    }
}

/// For SEARCH: decoded values (RFC 2047 decoded, unfolded) of every header named `name` (case-insensitive), top-level message.
pub fn header_values(raw: &[u8], name: &str) -> Vec<String> {
    let mut values = Vec::new();
    scan_header(raw, |f| {
        if raw[f.name].eq_ignore_ascii_case(name.as_bytes()) {
            values.push(decode_value(&raw[f.value]));
        }
    });
    values
}

/// For SEARCH FROM/TO/CC/BCC: every address of every header named `name`
/// as "Name <mailbox@host>" (the name decoded; a comment after a bare
/// address is its name), and each group's name, parsed as ENVELOPE parses
/// them: what a search matches besides the header's text, so that a
/// comment or folding inside an address does not hide it.
pub fn address_texts(raw: &[u8], name: &str) -> Vec<String> {
    let mut out = Vec::new();
    scan_header(raw, |f| {
        if raw[f.name].eq_ignore_ascii_case(name.as_bytes()) {
            for a in parse_addresses(&raw[f.value]) {
                match a {
                    Addr::Mailbox { name, mailbox, host, .. } => {
                        let name = name.map(|n| decode_value(&n)).unwrap_or_default();
                        let (mailbox, host) = (String::from_utf8_lossy(&mailbox), String::from_utf8_lossy(&host));
                        out.push(format!("{name} <{mailbox}@{host}>"));
                    }
                    Addr::GroupStart(group) => out.push(decode_value(&group)),
                    Addr::GroupEnd => {}
                }
            }
        }
    });
    out
}

/// For SEARCH BODY / TEXT: whether the decoded text of the message (body parts decoded from
/// base64/QP and charset to UTF-8; TEXT also includes the headers) contains `needle`, case-insensitively.
///
/// Text and HTML parts (HTML as its text) are searched, other parts are not; the header of an
/// encapsulated message is part of the enclosing body, so it counts for BODY too.
pub fn text_contains(raw: &[u8], needle: &str, include_headers: bool) -> bool {
    let needle = needle.to_lowercase();
    if needle.is_empty() {
        return true;
    }
    let found = |text: &str| text.to_lowercase().contains(&needle);
    if include_headers && headers_contain(raw, &found) {
        return true;
    }
    let parsed = Parsed::new(raw);
    let Some(top) = parsed.0.as_ref() else { return false };
    let mut stack = vec![(top, 0)];
    while let Some((msg, depth)) = stack.pop() {
        for part in &msg.parts {
            let hit = match &part.body {
                PartType::Text(text) => found(text),
                PartType::Html(html) => found(&html_to_text(html)),
                PartType::Message(inner) if depth < MAX_DEPTH => {
                    stack.push((inner, depth + 1));
                    inner.parts.first().is_some_and(|root| {
                        let header = inner.raw_message.get(root.offset_header as usize..root.offset_body as usize);
                        headers_contain(header.unwrap_or_default(), &found)
                    })
                }
                _ => false,
            };
            if hit {
                return true;
            }
        }
    }
    false
}

/// For SEARCH SENTBEFORE/SENTON/SENTSINCE: the Date: header's calendar
/// date in its own time zone (RFC 9051 §6.4.4: time and zone are
/// disregarded), if parseable.
pub fn sent_date(raw: &[u8]) -> Option<chrono::NaiveDate> {
    let dt = date_header(raw)?;
    chrono::NaiveDate::from_ymd_opt(i32::from(dt.year), u32::from(dt.month), u32::from(dt.day))
}

// ---------------------------------------------------------------------------------------------
// Header fields
/// The fields of `header` whose names are (`keep`) or are not (`!keep`) in `names`, byte for
/// byte, followed by the blank line unless the header has none (RFC 3501 6.4.5: a message
/// with no body and no blank line).
fn select_fields(header: &[u8], names: &[AString<'_>], keep: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let (_, blank) = scan_header(header, |f| {
        let name = &header[f.name];
        if names.iter().any(|n| n.as_ref().eq_ignore_ascii_case(name)) == keep {
            out.extend_from_slice(&header[f.whole]);
            // Only the last field of a header-only message can lack its line end.
            if !out.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
    });
    if blank {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Whether some field of `header`, as "Name: decoded value", satisfies `found`.
fn headers_contain(header: &[u8], found: &impl Fn(&str) -> bool) -> bool {
    let mut hit = false;
    scan_header(header, |f| {
        if !hit {
            let name = String::from_utf8_lossy(&header[f.name]);
            hit = found(&format!("{name}: {}", decode_value(&header[f.value])));
        }
    });
    hit
}

// ---------------------------------------------------------------------------------------------
// IMAP output

/// Writes an IMAP string without NUL bytes, which neither quoted strings nor literals may carry.
fn put(out: &mut Vec<u8>, s: &[u8]) {
    if s.contains(&0) {
        string(out, &s.iter().copied().filter(|&b| b != 0).collect::<Vec<u8>>());
    } else {
        string(out, s);
    }
}

fn put_opt(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => put(out, s),
        None => nstring(out, None),
    }
}

fn put_number(out: &mut Vec<u8>, n: usize) {
    // body-fld-octets and body-fld-lines are 32-bit numbers.
    out.extend_from_slice(n.min(u32::MAX as usize).to_string().as_bytes());
}

/// Lines of a body, counted as its line ends like Dovecot does: a part's last line, whose line
/// end belongs to the boundary after it, does not count.
fn count_lines(body: &[u8]) -> usize {
    body.iter().filter(|&&b| b == b'\n').count()
}

// ---------------------------------------------------------------------------------------------
// ENVELOPE and addresses

const ENVELOPE_FIELDS: [&[u8]; 10] =
    [b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc", b"in-reply-to", b"message-id"];

fn write_envelope(out: &mut Vec<u8>, msg: &[u8]) {
    // The first occurrence of each field counts.
    let mut found: [Option<Range<usize>>; 10] = Default::default();
    scan_header(msg, |f| {
        if let Some(i) = ENVELOPE_FIELDS.iter().position(|n| n.eq_ignore_ascii_case(&msg[f.name.clone()])) {
            found[i].get_or_insert(f.value);
        }
    });
    let text = |i: usize| found[i].clone().map(|r| clean(&msg[r]));
    let addresses = |i: usize| found[i].clone().map(|r| parse_addresses(&msg[r])).unwrap_or_default();
    let from = addresses(2);
    out.push(b'(');
    put_opt(out, text(0).as_deref());
    out.push(b' ');
    put_opt(out, text(1).as_deref());
    out.push(b' ');
    write_addresses(out, &from);
    for i in [3, 4] {
        // Sender and Reply-To fall back to From when absent or empty (RFC 3501 7.4.2).
        let list = addresses(i);
        out.push(b' ');
        write_addresses(out, if list.is_empty() { &from } else { &list });
    }
    for i in [5, 6, 7] {
        out.push(b' ');
        write_addresses(out, &addresses(i));
    }
    for i in [8, 9] {
        out.push(b' ');
        put_opt(out, text(i).as_deref());
    }
    out.push(b')');
}

fn write_addresses(out: &mut Vec<u8>, list: &[Addr]) {
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for addr in list {
        match addr {
            Addr::Mailbox { name, adl, mailbox, host } => {
                out.push(b'(');
                put_opt(out, name.as_deref());
                out.push(b' ');
                put_opt(out, adl.as_deref());
                out.push(b' ');
                put(out, mailbox);
                out.push(b' ');
                put(out, host);
                out.push(b')');
            }
            Addr::GroupStart(name) => {
                out.extend_from_slice(b"(NIL NIL ");
                put(out, name);
                out.extend_from_slice(b" NIL)");
            }
            Addr::GroupEnd => out.extend_from_slice(b"(NIL NIL NIL NIL)"),
        }
    }
    out.push(b')');
}

// ---------------------------------------------------------------------------------------------
// MIME header fields

type Params = Vec<(Vec<u8>, Vec<u8>)>;

/// The content fields of one part, raw as IMAP reports them.
struct MimeInfo {
    ty: Vec<u8>,
    sub: Vec<u8>,
    params: Params,
    id: Option<Vec<u8>>,
    desc: Option<Vec<u8>>,
    enc: Option<Vec<u8>>,
    dsp: Option<(Vec<u8>, Params)>,
    lang: Vec<Vec<u8>>,
    loc: Option<Vec<u8>>,
}

const MIME_FIELDS: [&[u8]; 7] = [
    b"content-type",
    b"content-transfer-encoding",
    b"content-id",
    b"content-description",
    b"content-disposition",
    b"content-language",
    b"content-location",
];

impl MimeInfo {
    /// Reads the content fields of a part's header. Without a usable Content-Type a part is
    /// text/plain in US-ASCII, or message/rfc822 inside a multipart/digest (RFC 2045, 2046).
    fn parse(header: &[u8], in_digest: bool) -> MimeInfo {
        // The last occurrence wins, as in mail-parser, whose choice decides the structure.
        let mut found: [Option<Range<usize>>; 7] = Default::default();
        scan_header(header, |f| {
            if let Some(i) = MIME_FIELDS.iter().position(|n| n.eq_ignore_ascii_case(&header[f.name.clone()])) {
                found[i] = Some(f.value);
            }
        });
        let field = |i: usize| found[i].clone().map(|r| clean(&header[r]).into_owned());
        let non_empty = |v: Vec<u8>| (!v.is_empty()).then_some(v);
        let (ty, sub, mut params) = field(0).and_then(|v| content_type(&v)).unwrap_or_else(|| {
            let (ty, sub): (&[u8], &[u8]) = if in_digest { (b"message", b"rfc822") } else { (b"text", b"plain") };
            (ty.to_vec(), sub.to_vec(), Vec::new())
        });
        // Text without a charset is US-ASCII (RFC 2046 4.1.2); say so, as other servers do.
        if ty.eq_ignore_ascii_case(b"text") && !params.iter().any(|(name, _)| name.eq_ignore_ascii_case(b"charset")) {
            params.push((b"charset".to_vec(), b"us-ascii".to_vec()));
        }
        let enc = field(1).and_then(|v| {
            let v = strip_comments(&v);
            non_empty(v.trim_ascii().split(|b| b.is_ascii_whitespace()).next().unwrap_or_default().to_vec())
        });
        let dsp = field(4).and_then(|v| {
            let segs = split_outside(&v, b';');
            let kind = strip_comments(segs[0]).trim_ascii().to_vec();
            (!kind.is_empty()).then(|| (kind, parse_params(&segs[1..])))
        });
        let lang = field(5).map_or_else(Vec::new, |v| {
            split_outside(&v, b',')
                .iter()
                .map(|l| strip_comments(l).trim_ascii().to_vec())
                .filter(|l| !l.is_empty())
                .collect()
        });
        MimeInfo {
            ty,
            sub,
            params,
            id: field(2).and_then(non_empty),
            desc: field(3).and_then(non_empty),
            enc,
            dsp,
            lang,
            loc: field(6).and_then(non_empty),
        }
    }

    fn is_multipart(&self) -> bool {
        self.ty.eq_ignore_ascii_case(b"multipart")
    }

    /// The only message type with the envelope/body/lines form; message/global stays basic,
    /// which is what IMAP4rev1 clients can parse.
    fn is_message(&self) -> bool {
        self.ty.eq_ignore_ascii_case(b"message") && self.sub.eq_ignore_ascii_case(b"rfc822")
    }

    fn is_text(&self) -> bool {
        self.ty.eq_ignore_ascii_case(b"text")
    }

    /// Past the depth limit a container is shown as a plain leaf, under a type that promises
    /// no inner structure.
    fn make_opaque(&mut self) {
        self.ty = b"application".to_vec();
        self.sub = b"octet-stream".to_vec();
    }
}

/// Splits at `sep` where it is outside quoted strings and comments.
fn split_outside(v: &[u8], sep: u8) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let (mut quoted, mut depth, mut escaped) = (false, 0usize, false);
    let mut start = 0;
    for (i, &b) in v.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' => escaped = true,
            b'"' if depth == 0 => quoted = !quoted,
            b'(' if !quoted => depth += 1,
            b')' if !quoted => depth = depth.saturating_sub(1),
            _ if b == sep && !quoted && depth == 0 => {
                parts.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&v[start..]);
    parts
}

/// Drops comments outside quoted strings.
fn strip_comments(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let (mut quoted, mut depth, mut escaped) = (false, 0usize, false);
    for &b in v {
        let keep = if escaped {
            escaped = false;
            depth == 0
        } else {
            match b {
                b'\\' => {
                    escaped = true;
                    depth == 0
                }
                b'"' if depth == 0 => {
                    quoted = !quoted;
                    true
                }
                b'(' if !quoted => {
                    depth += 1;
                    false
                }
                b')' if !quoted && depth > 0 => {
                    depth -= 1;
                    false
                }
                _ => depth == 0,
            }
        };
        if keep {
            out.push(b);
        }
    }
    out
}

/// "type/subtype; attr=value; ..." (RFC 2045), leniently. None when type or subtype is missing.
pub(crate) fn content_type(v: &[u8]) -> Option<(Vec<u8>, Vec<u8>, Params)> {
    let segs = split_outside(v, b';');
    let main = strip_comments(segs[0]);
    let slash = main.iter().position(|&b| b == b'/')?;
    let ty = main[..slash].trim_ascii();
    // A missing ";" before the parameters should not spoil the subtype.
    let sub = main[slash + 1..].trim_ascii().split(|b| b.is_ascii_whitespace()).next().unwrap_or_default();
    if ty.is_empty() || sub.is_empty() || ty.iter().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    Some((ty.to_vec(), sub.to_vec(), parse_params(&segs[1..])))
}

/// Parameters as written, values unquoted; RFC 2231 continuations are joined but nothing is
/// decoded.
fn parse_params(segs: &[&[u8]]) -> Params {
    let mut params = Vec::new();
    for seg in segs {
        let Some(eq) = split_outside(seg, b'=').first().map(|attr| attr.len()).filter(|&n| n < seg.len()) else {
            continue;
        };
        let attr = strip_comments(&seg[..eq]).trim_ascii().to_vec();
        if attr.is_empty() {
            continue;
        }
        let value = seg[eq + 1..].trim_ascii_start();
        let value = match value.strip_prefix(b"\"") {
            Some(rest) => delimited(rest, b'"', false).0,
            None => strip_comments(value).trim_ascii().to_vec(),
        };
        params.push((attr, value));
    }
    join_continuations(params)
}

/// Joins RFC 2231 continuations ("name*0", "name*1*", ...) into one parameter, as Dovecot
/// does, so that clients see whole names: "name", or "name*" (still charset-encoded) when any
/// piece is encoded. A set with gaps in its numbering is left as it is.
fn join_continuations(params: Params) -> Params {
    struct Piece {
        base: Vec<u8>,
        idx: u32,
        encoded: bool,
        value: Vec<u8>,
    }
    let mut out = Vec::with_capacity(params.len());
    let mut pieces = Vec::new();
    for (name, value) in params {
        match continuation(&name) {
            Some((base, idx, encoded)) => pieces.push(Piece { base: base.to_vec(), idx, encoded, value }),
            None => out.push((name, value)),
        }
    }
    pieces.sort_by_cached_key(|p| (p.base.to_ascii_lowercase(), p.idx));
    for set in pieces.chunk_by(|a, b| a.base.eq_ignore_ascii_case(&b.base)) {
        if !set.iter().enumerate().all(|(i, p)| p.idx as usize == i) {
            for p in set {
                let mut name = p.base.clone();
                name.extend_from_slice(format!("*{}{}", p.idx, if p.encoded { "*" } else { "" }).as_bytes());
                out.push((name, p.value.clone()));
            }
            continue;
        }
        let encoded = set.iter().any(|p| p.encoded);
        let mut value = Vec::new();
        if encoded && !set[0].encoded {
            // The joined value needs the charset'language' prefix; leave both empty.
            value.extend_from_slice(b"''");
        }
        for p in set {
            if encoded && !p.encoded {
                // A plain piece inside an encoded value: its "%" must not read as an escape.
                for &b in &p.value {
                    match b {
                        b'%' => value.extend_from_slice(b"%25"),
                        _ => value.push(b),
                    }
                }
            } else {
                value.extend_from_slice(&p.value);
            }
        }
        let mut name = set[0].base.clone();
        if encoded {
            name.push(b'*');
        }
        out.push((name, value));
    }
    out
}

/// Splits an RFC 2231 parameter name: "base*N" → (base, N, false), "base*N*" → (base, N,
/// true), "base*" → (base, 0, true).
fn continuation(name: &[u8]) -> Option<(&[u8], u32, bool)> {
    let star = name.iter().position(|&b| b == b'*').filter(|&i| i > 0)?;
    let rest = &name[star + 1..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let idx = if digits == 0 { 0 } else { std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()? };
    match &rest[digits..] {
        b"" => Some((&name[..star], idx, digits == 0)),
        b"*" => Some((&name[..star], idx, true)),
        _ => None,
    }
}

fn write_params(out: &mut Vec<u8>, params: &Params) {
    if params.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (name, value)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        put(out, name);
        out.push(b' ');
        put(out, value);
    }
    out.push(b')');
}

/// " disposition language location", the extension fields both part kinds end with.
fn write_ext_tail(out: &mut Vec<u8>, info: &MimeInfo) {
    out.push(b' ');
    match &info.dsp {
        Some((kind, params)) => {
            out.push(b'(');
            put(out, kind);
            out.push(b' ');
            write_params(out, params);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    match info.lang.as_slice() {
        [] => out.extend_from_slice(b"NIL"),
        [one] => put(out, one),
        many => {
            out.push(b'(');
            for (i, lang) in many.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                put(out, lang);
            }
            out.push(b')');
        }
    }
    out.push(b' ');
    put_opt(out, info.loc.as_deref());
}

// ---------------------------------------------------------------------------------------------
// The part tree

/// mail-parser, parsing only the header fields that structure and decoding depend on.
fn parser() -> &'static MessageParser {
    static PARSER: OnceLock<MessageParser> = OnceLock::new();
    PARSER.get_or_init(|| MessageParser::new().with_mime_headers().default_header_ignore())
}

/// A parse result that is taken apart iteratively when dropped: mail-parser nests encapsulated
/// messages by value, so the default drop recurses once per level, and a message nested some
/// thousands of levels deep would overflow the stack.
struct Parsed<'x>(Option<Message<'x>>);

impl<'x> Parsed<'x> {
    fn new(raw: &'x [u8]) -> Self {
        // Malformed input can trip mail-parser's debug assertions (and, with overflow checks,
        // its offset arithmetic); such input is treated as having no MIME structure.
        Parsed(std::panic::catch_unwind(|| parser().parse(raw)).ok().flatten())
    }
}

impl Drop for Parsed<'_> {
    fn drop(&mut self) {
        let mut stack: Vec<Message<'_>> = self.0.take().into_iter().collect();
        while let Some(mut msg) = stack.pop() {
            for part in &mut msg.parts {
                if let PartType::Message(inner) = std::mem::replace(&mut part.body, PartType::Multipart(Vec::new())) {
                    stack.push(inner);
                }
            }
        }
    }
}

/// A message: header block and body as ranges into `Tree::bufs[buf]`, and its root part.
struct Msg {
    buf: usize,
    header: Range<usize>,
    body: Range<usize>,
    root: usize,
}

/// A body part: its MIME header and body as ranges into `Tree::bufs[buf]`. The root part of a
/// message has the message's header as its MIME header.
struct Node {
    buf: usize,
    mime: Range<usize>,
    body: Range<usize>,
    info: MimeInfo,
    kind: Kind,
}

enum Kind {
    Leaf,
    Multipart(Vec<usize>),
    /// message/rfc822; None only if its parse never ran, which `Tree::build` rules out.
    Message(Option<Msg>),
}

/// The part tree that BODYSTRUCTURE prints and part numbers address; one structure serves
/// both so they always agree.
///
/// Ranges index `bufs`: buffer 0 is the raw message, later ones hold encapsulated messages
/// that were base64/quoted-printable encoded, decoded. A message's header/body split is always
/// `scan_header`'s, so part numbers agree with HEADER/TEXT and `header_block`.
struct Tree<'a> {
    bufs: Vec<Cow<'a, [u8]>>,
    nodes: Vec<Node>,
    top: Msg,
}

/// An encapsulated message that mail-parser did not parse in place (encoded, or given up on),
/// to be parsed on its own; and the node it belongs to.
struct Job {
    src: Src,
    node: usize,
    depth: usize,
}

enum Src {
    Slice(usize, Range<usize>),
    Decoded(Vec<u8>),
}

impl<'a> Tree<'a> {
    fn build(raw: &'a [u8]) -> Tree<'a> {
        let mut bufs = vec![Cow::Borrowed(raw)];
        let mut nodes = Vec::new();
        let mut jobs = Vec::new();
        let top = add_message(&bufs, 0, 0..raw.len(), 0, &mut nodes, &mut jobs);
        // A work list rather than recursion: a message's bytes stay borrowed while it is parsed,
        // and decoded ones can only join `bufs` afterwards.
        while let Some(job) = jobs.pop() {
            let (buf, range) = match job.src {
                Src::Slice(buf, range) => (buf, range),
                Src::Decoded(bytes) => {
                    let len = bytes.len();
                    bufs.push(Cow::Owned(bytes));
                    (bufs.len() - 1, 0..len)
                }
            };
            let msg = add_message(&bufs, buf, range, job.depth, &mut nodes, &mut jobs);
            nodes[job.node].kind = Kind::Message(Some(msg));
        }
        Tree { bufs, nodes, top }
    }

    fn bytes(&self, buf: usize, range: &Range<usize>) -> &[u8] {
        self.bufs.get(buf).and_then(|b| b.get(range.clone())).unwrap_or_default()
    }

    /// A range of a buffer, borrowed from the raw message where it lies in it.
    fn slice(&self, buf: usize, range: Range<usize>) -> Cow<'a, [u8]> {
        match self.bufs.get(buf) {
            Some(&Cow::Borrowed(b)) => Cow::Borrowed(b.get(range).unwrap_or_default()),
            Some(Cow::Owned(v)) => Cow::Owned(v.get(range).unwrap_or_default().to_vec()),
            None => Cow::Borrowed(&[]),
        }
    }

    /// The numbered parts of a message: a multipart root's parts, else the root alone.
    fn children<'t>(&'t self, msg: &'t Msg) -> &'t [usize] {
        match &self.nodes[msg.root].kind {
            Kind::Multipart(kids) => kids,
            _ => std::slice::from_ref(&msg.root),
        }
    }

    fn locate(&self, part: &Part) -> Option<&Node> {
        self.locate_path(part.0.as_ref())
    }

    /// The node at a part path (1, 1.2, …); `None` for an empty path.
    fn locate_path(&self, path: &[std::num::NonZeroU32]) -> Option<&Node> {
        let mut node: Option<&Node> = None;
        for n in path {
            let kids = match node.map(|n| &n.kind) {
                None => self.children(&self.top),
                Some(Kind::Multipart(kids)) => kids,
                Some(Kind::Message(Some(msg))) => self.children(msg),
                Some(_) => return None,
            };
            node = Some(&self.nodes[*kids.get(n.get() as usize - 1)?]);
        }
        node
    }

    fn write_body(&self, out: &mut Vec<u8>, idx: usize, extended: bool) {
        let node = &self.nodes[idx];
        let info = &node.info;
        out.push(b'(');
        if let Kind::Multipart(kids) = &node.kind {
            if kids.is_empty() {
                write_empty_body(out, extended);
            }
            for &kid in kids {
                self.write_body(out, kid, extended);
            }
            out.push(b' ');
            put(out, &info.sub);
            if extended {
                out.push(b' ');
                write_params(out, &info.params);
                write_ext_tail(out, info);
            }
        } else {
            let body = self.bytes(node.buf, &node.body);
            put(out, &info.ty);
            out.push(b' ');
            put(out, &info.sub);
            out.push(b' ');
            write_params(out, &info.params);
            out.push(b' ');
            put_opt(out, info.id.as_deref());
            out.push(b' ');
            put_opt(out, info.desc.as_deref());
            out.push(b' ');
            put(out, info.enc.as_deref().unwrap_or(b"7bit"));
            out.push(b' ');
            put_number(out, body.len());
            if let Kind::Message(msg) = &node.kind {
                out.push(b' ');
                match msg {
                    Some(msg) => {
                        write_envelope(out, self.bytes(msg.buf, &msg.header));
                        out.push(b' ');
                        self.write_body(out, msg.root, extended);
                    }
                    None => {
                        out.extend_from_slice(EMPTY_ENVELOPE);
                        out.push(b' ');
                        write_empty_body(out, extended);
                    }
                }
                out.push(b' ');
                put_number(out, count_lines(body));
            } else if info.is_text() {
                out.push(b' ');
                put_number(out, count_lines(body));
            }
            if extended {
                out.extend_from_slice(b" NIL");
                write_ext_tail(out, info);
            }
        }
        out.push(b')');
    }
}

type HeaderAndBody<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// The header and body of the message that HEADER/TEXT address: the top-level one (found
/// without a MIME parse), or the message/rfc822 part named.
fn message_at<'a>(raw: &'a [u8], part: Option<&Part>) -> Option<HeaderAndBody<'a>> {
    let Some(part) = part else {
        let (header, body) = raw.split_at(header_block(raw).len());
        return Some((Cow::Borrowed(header), Cow::Borrowed(body)));
    };
    let tree = Tree::build(raw);
    let Kind::Message(Some(msg)) = &tree.locate(part)?.kind else { return None };
    Some((tree.slice(msg.buf, msg.header.clone()), tree.slice(msg.buf, msg.body.clone())))
}

/// Parses the message at `bufs[buf][range]` into nodes; encapsulated messages that mail-parser
/// did not parse in place become jobs.
fn add_message(
    bufs: &[Cow<'_, [u8]>],
    buf: usize,
    range: Range<usize>,
    depth: usize,
    nodes: &mut Vec<Node>,
    jobs: &mut Vec<Job>,
) -> Msg {
    let bytes = bufs.get(buf).and_then(|b| b.get(range.clone())).unwrap_or_default();
    let parsed = Parsed::new(bytes);
    let parts = parsed.0.as_ref().map_or(&[][..], |m| &m.parts[..]);
    let mut builder = Builder { bytes, base: range.start, buf, nodes, jobs };
    builder.add_message(parts, range, depth)
}

struct Builder<'b> {
    /// The bytes mail-parser parsed, and where they start in their buffer.
    bytes: &'b [u8],
    base: usize,
    buf: usize,
    nodes: &'b mut Vec<Node>,
    jobs: &'b mut Vec<Job>,
}

impl Builder<'_> {
    /// Adds the message at `range` (in the buffer) whose parts mail-parser reported as `parts`
    /// (none if it found no header at all). The header/body split is `scan_header`'s, as for
    /// HEADER and TEXT.
    fn add_message(&mut self, parts: &[MessagePart<'_>], range: Range<usize>, depth: usize) -> Msg {
        let bytes = self.bytes.get(range.start - self.base..range.end - self.base).unwrap_or_default();
        let (header_len, _) = scan_header(bytes, |_| {});
        let header = range.start..range.start + header_len;
        let body = range.start + header_len..range.end;
        let info = MimeInfo::parse(&bytes[..header_len], false);
        let root = self.add(parts, 0, header.clone(), body.clone(), info, depth);
        Msg { buf: self.buf, header, body, root }
    }

    /// Adds the node for part `id` of `parts` (which may be absent) and, below the depth limit,
    /// what it contains; returns its index.
    fn add(
        &mut self,
        parts: &[MessagePart<'_>],
        id: usize,
        mime: Range<usize>,
        body: Range<usize>,
        mut info: MimeInfo,
        depth: usize,
    ) -> usize {
        let part = parts.get(id);
        let at_limit = depth >= MAX_DEPTH;
        if at_limit && (info.is_multipart() || info.is_message()) {
            info.make_opaque();
        }
        // Boundaries found by mail-parser decide multipart-ness; child ids only go forward,
        // so a malformed tree cannot loop.
        let kids: Vec<usize> = match part.map(|p| &p.body) {
            Some(PartType::Multipart(ids)) if !at_limit => {
                ids.iter().map(|&k| k as usize).filter(|&k| k > id && k < parts.len()).collect()
            }
            _ => Vec::new(),
        };
        let kind = if !kids.is_empty() {
            if !info.is_multipart() {
                // mail-parser read a Content-Type that we could not; keep the form consistent.
                info.ty = b"multipart".to_vec();
                info.sub = b"mixed".to_vec();
            }
            Kind::Multipart(Vec::new())
        } else if !at_limit && info.is_message() {
            Kind::Message(None)
        } else if !at_limit && info.is_multipart() {
            Kind::Multipart(Vec::new())
        } else {
            Kind::Leaf
        };
        let is_message = matches!(kind, Kind::Message(_));
        let in_digest = info.sub.eq_ignore_ascii_case(b"digest");
        let idx = self.nodes.len();
        self.nodes.push(Node { buf: self.buf, mime, body: body.clone(), info, kind });
        if is_message {
            match part.map(|p| (&p.body, p.encoding)) {
                // Parsed in place: its offsets index these same bytes.
                Some((PartType::Message(inner), _)) if std::ptr::eq(inner.raw_message.as_ref(), self.bytes) => {
                    let msg = self.add_message(&inner.parts, body, depth + 1);
                    self.nodes[idx].kind = Kind::Message(Some(msg));
                }
                // Encoded (against RFC 2046, but it happens): mail-parser has decoded it.
                Some((decoded, encoding)) if encoding != Encoding::None => {
                    let job = Job { src: Src::Decoded(decoded_body(decoded)), node: idx, depth: depth + 1 };
                    self.jobs.push(job);
                }
                // mail-parser gave up on it; parse it on its own.
                _ => self.jobs.push(Job { src: Src::Slice(self.buf, body), node: idx, depth: depth + 1 }),
            }
        } else if !kids.is_empty() {
            let mut added = Vec::with_capacity(kids.len());
            for kid in kids {
                let p = &parts[kid];
                let len = self.bytes.len();
                let end = (p.offset_end as usize).min(len);
                let start = (p.offset_body as usize).min(end);
                let head = (p.offset_header as usize).min(start);
                let info = MimeInfo::parse(&self.bytes[head..start], in_digest);
                let (mime, body) = (self.base + head..self.base + start, self.base + start..self.base + end);
                added.push(self.add(parts, kid, mime, body, info, depth + 1));
            }
            self.nodes[idx].kind = Kind::Multipart(added);
        }
        idx
    }
}

fn decoded_body(body: &PartType<'_>) -> Vec<u8> {
    match body {
        PartType::Message(msg) => msg.raw_message.to_vec(),
        PartType::Binary(b) | PartType::InlineBinary(b) => b.to_vec(),
        PartType::Text(t) | PartType::Html(t) => t.as_bytes().to_vec(),
        PartType::Multipart(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::decode::Decoder;
    use imap_codec::imap_types::body::{BodyStructure, SpecificFields};
    use imap_codec::imap_types::command::CommandBody;
    use imap_codec::imap_types::core::NString;
    use imap_codec::imap_types::envelope::{Address, Envelope};
    use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName};
    use imap_codec::imap_types::response::{Data, Response};
    use imap_codec::{CommandCodec, ResponseCodec};
    use proptest::prelude::*;

    const PLAIN: &[u8] = b"From: \"Jane Doe\" <jane@example.com>\r\n\
To: bob@example.org, =?utf-8?q?J=C3=B6rg?= <joerg@example.net>\r\n\
Subject: Hello\r\n world\r\n\
Date: Tue, 1 Jul 2003 10:52:37 +0200\r\n\
Message-ID: <1234@local.machine.example>\r\n\
\r\n\
Line one\r\n\
Line two\r\n";

    const ALTERNATIVE: &[u8] = b"From: a@example.com\r\n\
Subject: alt\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/alternative; boundary=\"XX\"\r\n\
\r\n\
preamble\r\n\
--XX\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
Caf=C3=A9 au lait\r\n\
--XX\r\n\
Content-Type: text/html; charset=\"utf-8\"\r\n\
\r\n\
<p>Caf&eacute; <b>noir</b></p>\r\n\
--XX--\r\n\
epilogue\r\n";

    const MIXED: &[u8] = b"From: a@example.com\r\n\
To: undisclosed-recipients:;\r\n\
Cc: Friends: c@example.com, \"Dee, D.\" <d@example.com>;, e@example.com (Eve)\r\n\
Subject: report\r\n\
Content-Type: multipart/mixed; boundary=outer\r\n\
\r\n\
--outer\r\n\
\r\n\
See attached.\r\n\
--outer\r\n\
Content-Type: application/pdf; name=\"r.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"r.pdf\"\r\n\
Content-ID: <part2@example.com>\r\n\
Content-Description: The report\r\n\
Content-Language: en, de\r\n\
Content-Location: http://example.com/r.pdf\r\n\
\r\n\
JVBERi0xLjQK\r\n\
--outer--\r\n";

    const NESTED: &[u8] = b"From: outer@example.com\r\n\
Subject: fwd\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain\r\n\
\r\n\
See below.\r\n\
--b1\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
From: inner@example.com\r\n\
Subject: inner subject\r\n\
Content-Type: multipart/alternative; boundary=\"b2\"\r\n\
\r\n\
--b2\r\n\
Content-Type: text/plain\r\n\
\r\n\
inner text\r\n\
--b2\r\n\
Content-Type: text/html\r\n\
\r\n\
<b>inner html</b>\r\n\
--b2--\r\n\
\r\n\
--b1--\r\n";

    /// A base64-encoded message/rfc822 as the whole body: its parts are only in decoded form.
    const ENCODED: &[u8] = b"Subject: outer\r\n\
Content-Type: message/rfc822\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
U3ViamVjdDogZW5jDQoNCmhpZGRlbiBib2R5DQo=\r\n";

    const SAMPLES: [&[u8]; 5] = [PLAIN, ALTERNATIVE, MIXED, NESTED, ENCODED];

    /// Decodes `* 1 FETCH (<item> <value>)` with imap-codec, insisting that all of it is consumed.
    fn decode_item(item: &str, value: &[u8]) -> MessageDataItem<'static> {
        let mut line = format!("* 1 FETCH ({item} ").into_bytes();
        line.extend_from_slice(value);
        line.extend_from_slice(b")\r\n");
        let (rest, response) = ResponseCodec::default()
            .decode_static(&line)
            .unwrap_or_else(|e| panic!("{e:?} decoding {:?}", String::from_utf8_lossy(&line)));
        assert!(rest.is_empty(), "left over: {rest:?}");
        let Response::Data(Data::Fetch { items, .. }) = response else { panic!("not a FETCH: {response:?}") };
        items.into_iter().next().unwrap()
    }

    fn decoded_envelope(raw: &[u8]) -> Envelope<'static> {
        let mut out = Vec::new();
        envelope(raw, &mut out);
        match decode_item("ENVELOPE", &out) {
            MessageDataItem::Envelope(env) => env,
            other => panic!("{other:?}"),
        }
    }

    fn decoded_structure(raw: &[u8], extended: bool) -> BodyStructure<'static> {
        let mut out = Vec::new();
        body_structure(raw, extended, &mut out);
        match decode_item(if extended { "BODYSTRUCTURE" } else { "BODY" }, &out) {
            MessageDataItem::BodyStructure(b) if extended => b,
            MessageDataItem::Body(b) if !extended => b,
            other => panic!("{other:?}"),
        }
    }

    fn text(n: &NString<'_>) -> Option<String> {
        n.0.as_ref().map(|s| String::from_utf8_lossy(s.as_ref()).into_owned())
    }

    fn addr(a: &Address<'_>) -> [Option<String>; 4] {
        [text(&a.name), text(&a.adl), text(&a.mailbox), text(&a.host)]
    }

    /// BODY.PEEK[<spec>] of `raw`, the section parsed by imap-codec's command parser.
    fn fetch(raw: &[u8], spec: &str) -> Option<Vec<u8>> {
        let line = format!("a FETCH 1 BODY.PEEK[{spec}]\r\n");
        let (_, cmd) = CommandCodec::default().decode(line.as_bytes()).expect("section syntax");
        let CommandBody::Fetch {
            macro_or_item_names: MacroOrMessageDataItemNames::MessageDataItemNames(items), ..
        } = cmd.body
        else {
            panic!("not a FETCH")
        };
        let MessageDataItemName::BodyExt { section: s, .. } = &items[0] else { panic!("not BODY[]") };
        section(raw, s.as_ref()).map(Cow::into_owned)
    }

    fn all_functions(raw: &[u8]) {
        let mut out = Vec::new();
        envelope(raw, &mut out);
        body_structure(raw, true, &mut out);
        body_structure(raw, false, &mut out);
        for spec in ["", "HEADER", "TEXT", "1", "1.MIME", "2", "2.HEADER", "2.TEXT", "2.1", "2.2.MIME", "3.1.2"] {
            fetch(raw, spec);
        }
        fetch(raw, "HEADER.FIELDS (SUBJECT FROM)");
        fetch(raw, "2.HEADER.FIELDS.NOT (SUBJECT)");
        header_block(raw);
        header_values(raw, "subject");
        text_contains(raw, "é x", true);
        text_contains(raw, "a", false);
        sent_date(raw);
    }

    #[test]
    fn plain_text_message() {
        let mut out = Vec::new();
        envelope(PLAIN, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "(\"Tue, 1 Jul 2003 10:52:37 +0200\" \"Hello world\" ((\"Jane Doe\" NIL \"jane\" \"example.com\")) \
             ((\"Jane Doe\" NIL \"jane\" \"example.com\")) ((\"Jane Doe\" NIL \"jane\" \"example.com\")) \
             ((NIL NIL \"bob\" \"example.org\")(\"=?utf-8?q?J=C3=B6rg?=\" NIL \"joerg\" \"example.net\")) \
             NIL NIL NIL \"<1234@local.machine.example>\")"
        );
        let env = decoded_envelope(PLAIN);
        assert_eq!(text(&env.subject).as_deref(), Some("Hello world"));
        assert_eq!(env.sender, env.from);
        assert_eq!(addr(&env.to[1])[0].as_deref(), Some("=?utf-8?q?J=C3=B6rg?="));

        let mut out = Vec::new();
        body_structure(PLAIN, true, &mut out);
        assert_eq!(out, b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 20 2 NIL NIL NIL NIL)");
        let mut out = Vec::new();
        body_structure(PLAIN, false, &mut out);
        assert_eq!(out, b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 20 2)");
        decoded_structure(PLAIN, true);
        decoded_structure(PLAIN, false);

        let header = header_block(PLAIN);
        assert!(header.ends_with(b"example>\r\n\r\n"));
        assert_eq!(fetch(PLAIN, "").unwrap(), PLAIN);
        assert_eq!(fetch(PLAIN, "HEADER").unwrap(), header);
        assert_eq!(fetch(PLAIN, "TEXT").unwrap(), b"Line one\r\nLine two\r\n");
        assert_eq!(fetch(PLAIN, "1").unwrap(), b"Line one\r\nLine two\r\n");
        assert_eq!(fetch(PLAIN, "1.MIME").unwrap(), header);
        assert_eq!(sent_date(PLAIN), chrono::NaiveDate::from_ymd_opt(2003, 7, 1));
        assert!(text_contains(PLAIN, "LINE TWO", false));
        assert!(!text_contains(PLAIN, "hello", false));
        assert!(text_contains(PLAIN, "hello world", true));
    }

    #[test]
    fn multipart_alternative() {
        let mut out = Vec::new();
        body_structure(ALTERNATIVE, true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"quoted-printable\" 17 0 NIL NIL NIL NIL)\
             (\"text\" \"html\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 30 0 NIL NIL NIL NIL) \
             \"alternative\" (\"boundary\" \"XX\") NIL NIL NIL)"
        );
        let BodyStructure::Multi { bodies, subtype, .. } = decoded_structure(ALTERNATIVE, true) else { panic!() };
        assert_eq!(subtype.as_ref(), b"alternative");
        assert_eq!(bodies.as_ref().len(), 2);
        let BodyStructure::Multi { extension_data, .. } = decoded_structure(ALTERNATIVE, false) else { panic!() };
        assert!(extension_data.is_none());

        assert_eq!(fetch(ALTERNATIVE, "1").unwrap(), b"Caf=C3=A9 au lait");
        assert_eq!(fetch(ALTERNATIVE, "2").unwrap(), b"<p>Caf&eacute; <b>noir</b></p>");
        assert_eq!(fetch(ALTERNATIVE, "2.MIME").unwrap(), b"Content-Type: text/html; charset=\"utf-8\"\r\n\r\n");
        assert!(fetch(ALTERNATIVE, "TEXT").unwrap().starts_with(b"preamble\r\n--XX\r\n"));
        assert!(text_contains(ALTERNATIVE, "CAFÉ AU", false));
        assert!(text_contains(ALTERNATIVE, "café noir", false));
        assert!(!text_contains(ALTERNATIVE, "eacute", false));
        assert!(!text_contains(ALTERNATIVE, "preamble", false));
        assert!(!text_contains(ALTERNATIVE, "alt", false));
        assert!(text_contains(ALTERNATIVE, "alt", true));
    }

    #[test]
    fn multipart_mixed_with_attachment_and_groups() {
        let mut out = Vec::new();
        body_structure(MIXED, true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 13 0 NIL NIL NIL NIL)\
             (\"application\" \"pdf\" (\"name\" \"r.pdf\") \"<part2@example.com>\" \"The report\" \"base64\" 12 \
             NIL (\"attachment\" (\"filename\" \"r.pdf\")) (\"en\" \"de\") \"http://example.com/r.pdf\") \
             \"mixed\" (\"boundary\" \"outer\") NIL NIL NIL)"
        );
        decoded_structure(MIXED, true);
        assert_eq!(fetch(MIXED, "1").unwrap(), b"See attached.");
        assert_eq!(fetch(MIXED, "1.MIME").unwrap(), b"\r\n");
        assert_eq!(fetch(MIXED, "2").unwrap(), b"JVBERi0xLjQK");

        let env = decoded_envelope(MIXED);
        let to: Vec<_> = env.to.iter().map(addr).collect();
        assert_eq!(to, [[None, None, Some("undisclosed-recipients".into()), None], [None, None, None, None]]);
        let cc: Vec<_> = env.cc.iter().map(addr).collect();
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            cc,
            [
                [None, None, s("Friends"), None],
                [None, None, s("c"), s("example.com")],
                [s("Dee, D."), None, s("d"), s("example.com")],
                [None, None, None, None],
                [s("Eve"), None, s("e"), s("example.com")],
            ]
        );
        assert!(env.bcc.is_empty() && env.in_reply_to.0.is_none());
    }

    #[test]
    fn nested_message() {
        let BodyStructure::Multi { bodies, .. } = decoded_structure(NESTED, true) else { panic!() };
        let BodyStructure::Single { body, .. } = &bodies.as_ref()[1] else { panic!() };
        let SpecificFields::Message { envelope, body_structure, number_of_lines } = &body.specific else { panic!() };
        assert_eq!(text(&envelope.subject).as_deref(), Some("inner subject"));
        assert_eq!(addr(&envelope.from[0])[2].as_deref(), Some("inner"));
        let BodyStructure::Multi { subtype, bodies: inner, .. } = body_structure.as_ref() else { panic!() };
        assert_eq!(subtype.as_ref(), b"alternative");
        assert_eq!(inner.as_ref().len(), 2);
        let part2 = fetch(NESTED, "2").unwrap();
        assert_eq!(body.basic.size as usize, part2.len());
        assert_eq!(*number_of_lines as usize, count_lines(&part2));
        decoded_structure(NESTED, false);

        assert!(part2.starts_with(b"From: inner@example.com\r\n") && part2.ends_with(b"--b2--\r\n"));
        let header = fetch(NESTED, "2.HEADER").unwrap();
        assert!(header.starts_with(b"From: inner") && header.ends_with(b"\"b2\"\r\n\r\n"));
        let body = fetch(NESTED, "2.TEXT").unwrap();
        assert_eq!([header, body].concat(), part2);
        assert_eq!(fetch(NESTED, "2.1").unwrap(), b"inner text");
        assert_eq!(fetch(NESTED, "2.2").unwrap(), b"<b>inner html</b>");
        assert_eq!(fetch(NESTED, "2.2.MIME").unwrap(), b"Content-Type: text/html\r\n\r\n");
        assert_eq!(fetch(NESTED, "2.MIME").unwrap(), b"Content-Type: message/rfc822\r\n\r\n");
        assert_eq!(fetch(NESTED, "2.HEADER.FIELDS (subject)").unwrap(), b"Subject: inner subject\r\n\r\n");
        assert!(text_contains(NESTED, "INNER HTML", false));
        assert!(text_contains(NESTED, "inner subject", false), "an encapsulated header is body text");
    }

    #[test]
    fn encoded_message_rfc822() {
        let BodyStructure::Single { body, .. } = decoded_structure(ENCODED, true) else { panic!() };
        let SpecificFields::Message { envelope, .. } = &body.specific else { panic!() };
        assert_eq!(text(&envelope.subject).as_deref(), Some("enc"));
        assert_eq!(fetch(ENCODED, "1").unwrap(), b"U3ViamVjdDogZW5jDQoNCmhpZGRlbiBib2R5DQo=\r\n");
        assert_eq!(fetch(ENCODED, "1.HEADER").unwrap(), b"Subject: enc\r\n\r\n");
        assert_eq!(fetch(ENCODED, "1.1").unwrap(), b"hidden body\r\n");
        assert_eq!(fetch(ENCODED, "1.TEXT").unwrap(), b"hidden body\r\n");
        assert!(text_contains(ENCODED, "hidden", false));
    }

    #[test]
    fn header_fields_selection() {
        assert_eq!(
            fetch(PLAIN, "HEADER.FIELDS (subject FROM)").unwrap(),
            b"From: \"Jane Doe\" <jane@example.com>\r\nSubject: Hello\r\n world\r\n\r\n"
        );
        assert_eq!(
            fetch(PLAIN, "HEADER.FIELDS.NOT (To Subject Date Message-ID)").unwrap(),
            b"From: \"Jane Doe\" <jane@example.com>\r\n\r\n"
        );
        assert_eq!(fetch(PLAIN, "HEADER.FIELDS (X-Absent)").unwrap(), b"\r\n");
        // A header-only message without a final line end still yields whole lines, and no blank
        // line since it has none (RFC 3501 6.4.5).
        assert_eq!(fetch(b"To: a@b\r\nSubject: x", "HEADER.FIELDS (SUBJECT)").unwrap(), b"Subject: x\r\n");
        assert_eq!(fetch(b"To: a@b\r\nSubject: x", "HEADER").unwrap(), b"To: a@b\r\nSubject: x");
        assert_eq!(fetch(b"To: a@b\r\nSubject: x", "TEXT").unwrap(), b"");
    }

    #[test]
    fn missing_sections() {
        for spec in ["2", "1.1", "1.HEADER", "1.TEXT", "2.MIME", "1.HEADER.FIELDS (A)"] {
            assert_eq!(fetch(PLAIN, spec), None, "{spec}");
        }
        for spec in ["3", "1.1", "2.3", "2.1.1", "1.HEADER", "4.MIME", "2.2.1"] {
            assert_eq!(fetch(NESTED, spec), None, "{spec}");
        }
        // A multipart without parts shows one empty placeholder part, which cannot be fetched.
        let empty = b"Content-Type: multipart/mixed; boundary=zz\r\n\r\nno boundary here\r\n";
        let BodyStructure::Multi { bodies, .. } = decoded_structure(empty, true) else { panic!() };
        assert_eq!(bodies.as_ref().len(), 1);
        assert_eq!(fetch(empty, "1"), None);
    }

    #[test]
    fn header_values_decode_rfc2047() {
        let raw = b"Subject: =?iso-8859-1?q?caf=E9?=\r\n =?utf-8?b?IQ==?=\r\nsubject: second\r\n\r\nbody";
        assert_eq!(header_values(raw, "SUBJECT"), ["café!", "second"]);
        assert_eq!(header_values(PLAIN, "to"), ["bob@example.org, Jörg <joerg@example.net>"]);
        assert!(header_values(PLAIN, "cc").is_empty());
        assert!(text_contains(raw, "CAFÉ", true));
    }

    #[test]
    fn odd_addresses() {
        let raw = b"From: Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>\r\n\
Sender: <@route.a,@route.b:user@host>\r\n\
To: \"john doe\"@example.com, bare, <>\r\n\
Cc: unterminated: a@b\r\n\r\n";
        let env = decoded_envelope(raw);
        let s = |v: &str| Some(v.to_string());
        assert_eq!(addr(&env.from[0]), [s("Pete"), None, s("pete"), s("silly.test")]);
        assert_eq!(addr(&env.sender[0]), [None, s("@route.a,@route.b"), s("user"), s("host")]);
        assert_eq!(addr(&env.reply_to[0]), addr(&env.from[0]));
        let to: Vec<_> = env.to.iter().map(addr).collect();
        assert_eq!(
            to,
            [
                [None, None, s("john doe"), s("example.com")],
                [None, None, s("bare"), s("MISSING_DOMAIN")],
                [None, None, s("MISSING_MAILBOX"), s("MISSING_DOMAIN")],
            ]
        );
        assert_eq!(env.cc.len(), 3);
        assert_eq!(addr(&env.cc[2]), [None, None, None, None]);
        // No header at all: every field NIL.
        assert_eq!(decoded_envelope(b""), decoded_envelope(b"no colon\r\n"));
    }

    #[test]
    fn samples_are_consistent() {
        for raw in SAMPLES {
            check_invariants(raw);
        }
    }

    #[test]
    fn rfc2231_continuations_are_joined() {
        let raw = b"Content-Type: application/octet-stream;\r\n name*1=\"name.txt\";\r\n name*0=\"long\"\r\n\
Content-Disposition: attachment; filename*0*=utf-8''%E2%82%AC; filename*1=\"100%.txt\"; x*0=a; x*2=c\r\n\r\nxx\r\n";
        let mut out = Vec::new();
        body_structure(raw, true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "(\"application\" \"octet-stream\" (\"name\" \"longname.txt\") NIL NIL \"7bit\" 4 NIL \
             (\"attachment\" (\"filename*\" \"utf-8''%E2%82%AC100%25.txt\" \"x*0\" \"a\" \"x*2\" \"c\")) NIL NIL)"
        );
    }

    #[test]
    fn deep_nesting_is_bounded() {
        // 10,000 levels overflow a 2 MiB test thread in mail-parser's own recursive drop.
        let mut messages = Vec::new();
        for _ in 0..10_000 {
            messages.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
        }
        messages.extend_from_slice(b"Subject: bottom\r\n\r\nbottom text\r\n");
        let mut multiparts = Vec::new();
        for i in 0..10_000 {
            multiparts.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n").as_bytes(),
            );
        }
        multiparts.extend_from_slice(b"\r\nbottom text\r\n");
        for raw in [&messages, &multiparts] {
            let mut out = Vec::new();
            envelope(raw, &mut out);
            body_structure(raw, true, &mut out);
            assert!(String::from_utf8_lossy(&out).contains("\"application\" \"octet-stream\""));
            let deep = vec!["1"; 40].join(".");
            assert_eq!(fetch(raw, &deep), None);
        }
        // Encapsulated messages are searched down to the depth limit; mail-parser lists nested
        // multiparts flat, so their text is reached without recursion.
        assert!(!text_contains(&messages, "bottom text", false));
        assert!(text_contains(&multiparts, "bottom text", false));
    }

    /// Edits that tend to break MIME structure rather than just text.
    fn mutation() -> impl Strategy<Value = (usize, usize, Vec<u8>)> {
        let pieces = prop_oneof![
            Just(b"\r\n".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"--".to_vec()),
            Just(b"--XX".to_vec()),
            Just(b"--b1--".to_vec()),
            Just(b":".to_vec()),
            Just(b";".to_vec()),
            Just(b"\"".to_vec()),
            Just(b"(".to_vec()),
            Just(b"<".to_vec()),
            Just(b" ".to_vec()),
            Just(b"=?".to_vec()),
            Just(b"\0".to_vec()),
            Just(b"Content-Type: message/rfc822\r\n\r\n".to_vec()),
            Just(b"Content-Type: multipart/mixed; boundary=b1\r\n".to_vec()),
            Just(b"Content-Transfer-Encoding: base64\r\n".to_vec()),
            prop::collection::vec(any::<u8>(), 1..4),
        ];
        (any::<usize>(), 0usize..8, pieces)
    }

    /// Walks the parts of a message's structure: a multipart's parts are numbered below
    /// `path`, a single part is `path`.1.
    fn check_message(raw: &[u8], structure: &BodyStructure<'_>, path: &mut Vec<usize>) {
        match structure {
            BodyStructure::Multi { bodies, .. } => check_parts(raw, bodies.as_ref(), path),
            single => check_parts(raw, std::slice::from_ref(single), path),
        }
    }

    /// Every part BODYSTRUCTURE lists can be fetched, and its size is the fetched length.
    fn check_parts(raw: &[u8], parts: &[BodyStructure<'_>], path: &mut Vec<usize>) {
        for (i, part) in parts.iter().enumerate() {
            path.push(i + 1);
            let spec = path.iter().map(usize::to_string).collect::<Vec<_>>().join(".");
            match part {
                BodyStructure::Multi { bodies, .. } => check_parts(raw, bodies.as_ref(), path),
                BodyStructure::Single { body, .. } => {
                    // Placeholders for missing parts have size 0 and cannot be fetched.
                    let fetched = fetch(raw, &spec).map_or(0, |b| b.len());
                    assert_eq!(body.basic.size as usize, fetched, "size of part {spec}");
                    if let SpecificFields::Message { body_structure, .. } = &body.specific {
                        check_message(raw, body_structure, path);
                    }
                }
            }
            path.pop();
        }
    }

    fn check_invariants(raw: &[u8]) {
        all_functions(raw);
        decoded_envelope(raw);
        check_message(raw, &decoded_structure(raw, true), &mut Vec::new());
        decoded_structure(raw, false);
        let header = fetch(raw, "HEADER").unwrap();
        let body = fetch(raw, "TEXT").unwrap();
        assert_eq!([header, body].concat(), raw);
    }

    proptest! {
        // No failure persistence: the shrunk input is in the failure message, and this file is
        // also compiled from outside its crate.
        #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..600)) {
            check_invariants(&raw);
        }

        #[test]
        fn mutated_messages_never_panic(
            sample in 0..SAMPLES.len(),
            edits in prop::collection::vec(mutation(), 1..6),
            cut in any::<usize>(),
        ) {
            let mut raw = SAMPLES[sample].to_vec();
            for (at, delete, insert) in edits {
                let at = at % (raw.len() + 1);
                let end = (at + delete).min(raw.len());
                raw.splice(at..end, insert);
            }
            check_invariants(&raw);
            check_invariants(&raw[..cut % (raw.len() + 1)]);
        }
    }
}
