//! Mailbox names at the session's edge. The store keeps every name in one
//! form, modified UTF-7 (RFC 3501 §5.1.3), as IMAP4rev1 clients have always
//! written them, so stores written before UTF-8 names keep working as they
//! are. A client that enabled `UTF8=ACCEPT` (RFC 6855) or `IMAP4rev2`
//! (RFC 9051 §5.1) writes and reads names in UTF-8: the session converts
//! them here, on their way in ([`encode`]) and out ([`shown`]), and nowhere
//! else.
//!
//! Modified UTF-7: printable US-ASCII but `&` stands for itself, `&` is
//! `&-`, and any run of other characters is `&`, their UTF-16 in base64
//! (with `,` for `/`, no padding), `-`. [`decode`] takes the canonical form
//! only (what [`encode`] writes), so each name has one spelling.

use std::borrow::Cow;

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/// Whether `c` stands for itself in modified UTF-7.
fn direct(c: char) -> bool {
    (' '..='~').contains(&c)
}

/// `s` in modified UTF-7.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut units: Vec<u16> = Vec::new();
    for c in s.chars() {
        if direct(c) {
            flush(&mut out, &mut units);
            match c {
                '&' => out.push_str("&-"),
                c => out.push(c),
            }
        } else {
            units.extend_from_slice(c.encode_utf16(&mut [0; 2]));
        }
    }
    flush(&mut out, &mut units);
    out
}

/// Writes a run of UTF-16 units as `&base64-` (nothing if there are none).
fn flush(out: &mut String, units: &mut Vec<u16>) {
    if units.is_empty() {
        return;
    }
    out.push('&');
    let (mut bits, mut n) = (0u32, 0u32);
    for u in units.drain(..) {
        bits = (bits << 16) | u32::from(u);
        n += 16;
        while n >= 6 {
            n -= 6;
            out.push(B64[((bits >> n) & 63) as usize] as char);
        }
        bits &= (1 << n) - 1;
    }
    if n > 0 {
        out.push(B64[((bits << (6 - n)) & 63) as usize] as char);
    }
    out.push('-');
}

/// The text a modified UTF-7 name stands for; `None` unless `s` is
/// modified UTF-7 in its canonical form (no byte outside printable
/// US-ASCII, every `&` closed by `-`, base64 that is whole UTF-16 with
/// zero padding bits, no character written in base64 that stands for
/// itself, no two runs side by side). One pass over `s`.
pub fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if !(0x20..=0x7e).contains(&c) {
            return None;
        }
        if c != b'&' {
            out.push(c as char);
            i += 1;
            continue;
        }
        let end = i + 1 + b[i + 1..].iter().position(|&x| x == b'-')?;
        let run = &b[i + 1..end];
        if run.is_empty() {
            out.push('&');
        } else {
            let mut units = Vec::with_capacity(run.len() * 6 / 16);
            let (mut bits, mut n) = (0u32, 0u32);
            for &x in run {
                bits = (bits << 6) | B64.iter().position(|&y| y == x)? as u32;
                n += 6;
                if n >= 16 {
                    n -= 16;
                    units.push((bits >> n) as u16);
                    bits &= (1 << n) - 1;
                }
            }
            if n >= 6 || bits != 0 {
                return None;
            }
            let text = String::from_utf16(&units).ok()?;
            if text.chars().any(direct) {
                return None;
            }
            out.push_str(&text);
            // Two runs side by side are one run in the canonical form.
            if b.get(end + 1) == Some(&b'&') && b.get(end + 2) != Some(&b'-') {
                return None;
            }
        }
        i = end + 1;
    }
    Some(out)
}

/// A stored name as a client sees it: for a UTF-8 client its text, for
/// another the stored form. A name stored before names were checked that
/// is not modified UTF-7 (`R&D`, or raw UTF-8 from a literal) is shown as
/// it is stored to both.
pub fn shown(utf8: bool, stored: &str) -> Cow<'_, str> {
    match utf8.then(|| decode(stored)).flatten() {
        Some(text) => Cow::Owned(text),
        None => Cow::Borrowed(stored),
    }
}

/// Why a UTF-8 name is refused (RFC 6855 §3: Net-Unicode, RFC 5198 §2,
/// without control characters, DEL, and the line and paragraph separators).
pub fn forbidden(s: &str) -> Option<char> {
    s.chars().find(|&c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3501_example() {
        // RFC 3501 §5.1.3: "~peter/mail/台北/日本語".
        let name = "~peter/mail/\u{53f0}\u{5317}/\u{65e5}\u{672c}\u{8a9e}";
        assert_eq!(encode(name), "~peter/mail/&U,BTFw-/&ZeVnLIqe-");
        assert_eq!(decode("~peter/mail/&U,BTFw-/&ZeVnLIqe-").as_deref(), Some(name));
        // Its counter-example: the run is not closed before the ASCII.
        assert_eq!(decode("&Jjo!"), None);
        assert_eq!(decode("&U,BTFw-&ZeVnLIqe-"), None, "two runs side by side");
        assert_eq!(decode("&U,BTF2XlZyyKng-").as_deref(), Some("\u{53f0}\u{5317}\u{65e5}\u{672c}\u{8a9e}"));
    }

    #[test]
    fn ampersand_and_ascii() {
        assert_eq!(encode("R&D"), "R&-D");
        assert_eq!(decode("R&-D").as_deref(), Some("R&D"));
        assert_eq!(decode("R&D"), None, "unclosed");
        assert_eq!(decode("&AGE-"), None, "`a` written in base64");
        assert_eq!(decode("caf\u{e9}"), None, "8-bit");
        assert_eq!(decode("&AOk"), None);
        assert_eq!(decode("&AOl-"), None, "non-zero padding bits");
        assert_eq!(decode("&2D3eAA-").as_deref(), Some("\u{1f600}"));
        assert_eq!(decode("&2D0-"), None, "a lone surrogate");
        assert_eq!(decode("&AOk-&-"), Some("\u{e9}&".into()));
        assert_eq!(decode("a\x7fb"), None);
    }

    #[test]
    fn round_trips() {
        for s in ["", "INBOX", "Entw\u{fc}rfe", "\u{1f600} x \u{1f600}\u{1f600}", "&&", "a&\u{e9}&", "\u{4e2d}\u{6587}"]
        {
            let e = encode(s);
            assert!(e.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{e}");
            assert_eq!(decode(&e).as_deref(), Some(s), "{e}");
        }
        assert_eq!(encode("\u{1f600}"), "&2D3eAA-");
    }

    #[test]
    fn shown_by_client() {
        assert_eq!(shown(true, "Entw&APw-rfe"), "Entw\u{fc}rfe");
        assert_eq!(shown(false, "Entw&APw-rfe"), "Entw&APw-rfe");
        assert_eq!(shown(true, "R&D"), "R&D");
        assert_eq!(forbidden("a\u{2028}b"), Some('\u{2028}'));
        assert_eq!(forbidden("a\u{85}b"), Some('\u{85}'));
        assert_eq!(forbidden("caf\u{e9}"), None);
    }
}
