//! PREVIEW (RFC 8970): a short plain-text preview of a message for the
//! FETCH item `PREVIEW`.
//!
//! Bounded work per message: at most [`PREVIEW_BYTES`] of the body are read
//! (`Reader::body_prefix`), multiparts are followed at most
//! [`PREVIEW_DEPTH`] levels down in a loop (no recursion), each level a
//! linear scan of that prefix. The text is the first `text/plain` part that
//! is not an attachment (else the first `text/html`, as text), transfer
//! and charset decoded, without quoted lines (`>`) and from a signature
//! (`-- `) on, white space collapsed, at most [`PREVIEW_CHARS`] characters
//! (RFC 8970 §3: at most 256). A message with no such text has the empty
//! preview.

use crate::mime::{content_type, first_value, header_block};
use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::decoders::html::html_to_text;
use mail_parser::decoders::quoted_printable::quoted_printable_decode;

/// Bytes of a body read for its preview, at most.
pub const PREVIEW_BYTES: usize = 16 * 1024;

/// Characters of a preview, at most.
pub const PREVIEW_CHARS: usize = 200;

/// Multipart levels followed, at most.
pub const PREVIEW_DEPTH: usize = 8;

/// Parts of one multipart looked at, at most.
const PARTS_MAX: usize = 64;

/// The preview of a message from a prefix of its bytes.
pub fn preview(prefix: &[u8]) -> String {
    let mut entity = prefix;
    for _ in 0..PREVIEW_DEPTH {
        let header = header_block(entity);
        let body = &entity[header.len()..];
        let ct = first_value(header, "Content-Type").unwrap_or_else(|| "text/plain".into());
        let Some((ty, sub, params)) = content_type(ct.as_bytes()) else { return text(header, body, false) };
        let param = |name: &[u8]| params.iter().find(|(a, _)| a.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        match (ty.to_ascii_lowercase().as_slice(), sub.to_ascii_lowercase().as_slice()) {
            (b"text", b"plain") => return text(header, body, false),
            (b"text", b"html") => return text(header, body, true),
            (b"multipart", _) => {
                let Some(boundary) = param(b"boundary") else { return String::new() };
                match pick(body, &boundary) {
                    Some(part) => entity = part,
                    None => return String::new(),
                }
            }
            _ => return String::new(),
        }
    }
    String::new()
}

/// The parts of a multipart body (the last may be cut short).
fn parts<'a>(body: &'a [u8], boundary: &[u8]) -> Vec<&'a [u8]> {
    let mut delimiter = b"--".to_vec();
    delimiter.extend_from_slice(boundary);
    // Starts of delimiter lines: at the body's start or after a LF.
    let mut starts = Vec::new();
    let mut at = 0;
    while let Some(p) = body[at..].windows(delimiter.len()).position(|w| w == delimiter) {
        let i = at + p;
        if i == 0 || body[i - 1] == b'\n' {
            starts.push(i);
            if body[i + delimiter.len()..].starts_with(b"--") || starts.len() > PARTS_MAX {
                break; // the close delimiter
            }
        }
        at = i + delimiter.len();
    }
    let mut out = Vec::new();
    for (n, &s) in starts.iter().enumerate() {
        let line_end = body[s..].iter().position(|&b| b == b'\n').map_or(body.len(), |e| s + e + 1);
        if body[s + delimiter.len()..].starts_with(b"--") {
            break;
        }
        let end = starts.get(n + 1).map_or(body.len(), |&e| e);
        out.push(&body[line_end.min(end)..end]);
    }
    out
}

/// The part a preview comes from: the first inline text/plain, else the
/// first text/html, else the first multipart.
fn pick<'a>(body: &'a [u8], boundary: &[u8]) -> Option<&'a [u8]> {
    let parts = parts(body, boundary);
    let kind = |part: &[u8]| -> (Vec<u8>, Vec<u8>, bool) {
        let header = header_block(part);
        let attachment = first_value(header, "Content-Disposition")
            .is_some_and(|d| d.trim_start().to_ascii_lowercase().starts_with("attachment"));
        let ct = first_value(header, "Content-Type").unwrap_or_else(|| "text/plain".into());
        match content_type(ct.as_bytes()) {
            Some((t, s, _)) => (t.to_ascii_lowercase(), s.to_ascii_lowercase(), attachment),
            None => (b"text".to_vec(), b"plain".to_vec(), attachment),
        }
    };
    let kinds: Vec<_> = parts.iter().map(|p| kind(p)).collect();
    let find = |ty: &[u8], sub: Option<&[u8]>| {
        kinds.iter().position(|(t, s, attachment)| !attachment && t == ty && sub.is_none_or(|sub| s == sub))
    };
    let i =
        find(b"text", Some(b"plain")).or_else(|| find(b"text", Some(b"html"))).or_else(|| find(b"multipart", None))?;
    Some(parts[i])
}

/// A text part's preview text.
fn text(header: &[u8], body: &[u8], html: bool) -> String {
    let cte = first_value(header, "Content-Transfer-Encoding").map(|e| e.trim().to_ascii_lowercase());
    let decoded = match cte.as_deref() {
        Some("base64") => {
            // Cut to whole quanta: the prefix may end inside one.
            let mut clean: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
            clean.truncate(clean.len() / 4 * 4);
            base64_decode(&clean).unwrap_or_default()
        }
        Some("quoted-printable") => {
            // The prefix may end inside an escape: drop a cut one.
            let mut end = body.len();
            if let Some(eq) = body[body.len().saturating_sub(2)..].iter().position(|&b| b == b'=') {
                end = body.len().saturating_sub(2) + eq;
            }
            quoted_printable_decode(&body[..end]).unwrap_or_else(|| body[..end].to_vec())
        }
        _ => body.to_vec(),
    };
    let charset = first_value(header, "Content-Type")
        .and_then(|ct| content_type(ct.as_bytes()))
        .and_then(|(_, _, params)| params.into_iter().find(|(a, _)| a.eq_ignore_ascii_case(b"charset")))
        .map(|(_, v)| v);
    let mut s = match charset.as_deref().and_then(charset_decoder) {
        Some(decode) => decode(&decoded),
        None => String::from_utf8_lossy(&decoded).into_owned(),
    };
    // A prefix cut inside a character.
    while s.ends_with('\u{FFFD}') {
        s.pop();
    }
    if html {
        s = html_to_text(&s);
    }
    normalize(&s)
}

/// Quoted lines left out, the signature cut, white space collapsed, cut
/// to [`PREVIEW_CHARS`].
fn normalize(s: &str) -> String {
    let mut out = String::new();
    let mut chars = 0;
    for line in s.lines() {
        if line == "-- " || line == "--" {
            break;
        }
        if line.trim_start().starts_with('>') {
            continue;
        }
        for word in line.split(|c: char| c.is_whitespace() || c.is_control()).filter(|w| !w.is_empty()) {
            let sep = usize::from(!out.is_empty());
            let n = word.chars().count();
            if chars + sep + n > PREVIEW_CHARS {
                if chars + sep < PREVIEW_CHARS {
                    if sep == 1 {
                        out.push(' ');
                    }
                    out.extend(word.chars().take(PREVIEW_CHARS - chars - sep));
                }
                return out;
            }
            if sep == 1 {
                out.push(' ');
            }
            out.push_str(word);
            chars += sep + n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_cleaned_and_cut() {
        let m = b"Subject: x\r\n\r\nHello  Joe,\r\n\r\n> quoted\r\nsee you\tat 3.\r\n-- \r\nFred\r\n";
        assert_eq!(preview(m), "Hello Joe, see you at 3.");
        let long = format!("Subject: x\r\n\r\n{}\r\n", "word ".repeat(100));
        let p = preview(long.as_bytes());
        assert!(p.chars().count() <= PREVIEW_CHARS && p.starts_with("word word"), "{p}");
        assert_eq!(preview(b"Subject: x\r\nContent-Type: image/png\r\n\r\n\x89PNG"), "");
    }

    #[test]
    fn the_first_inline_text_part_is_taken_and_decoded() {
        let m = "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\nnot this\r\n--b1\r\nContent-Type: multipart/alternative; boundary=b2\r\n\r\n--b2\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--b2\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9 ol=\r\n=E9\r\n--b2--\r\n--b1--\r\n";
        assert_eq!(preview(m.as_bytes()), "café olé");
        let html = "Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\nPHA+SGVsbG8gPGI+d29ybGQ8L2I+PC9wPg==\r\n--b--\r\n";
        assert_eq!(preview(html.as_bytes()), "Hello world");
    }

    #[test]
    fn a_cut_prefix_and_deep_nesting_are_harmless() {
        let mut deep = String::new();
        for i in 0..10_000 {
            deep.push_str(&format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"));
        }
        deep.push_str("Content-Type: text/plain\r\n\r\nbottom\r\n");
        assert_eq!(preview(&deep.as_bytes()[..PREVIEW_BYTES]), "", "past PREVIEW_DEPTH: nothing");
        let b64 =
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nY2Fmw6kgY2Fmw6k=";
        for cut in 80..b64.len() {
            let p = preview(&b64.as_bytes()[..cut]);
            assert!("café café".starts_with(&p), "{cut}: {p:?}");
        }
        let qp = "Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9";
        for cut in 40..qp.len() {
            let _ = preview(&qp.as_bytes()[..cut]);
        }
    }
}
