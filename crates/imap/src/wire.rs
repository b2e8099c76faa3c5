//! Writing IMAP response syntax: strings as atoms, quoted strings or
//! literals, whichever the bytes allow. Every response the server writes goes
//! through these, and the tests decode what they produce with imap-codec's
//! response parser.

/// Appends `s` as an IMAP string: quoted when it can be, else a literal.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    let quotable = s.len() <= 1024 && s.iter().all(|&b| b.is_ascii() && b != 0 && b != b'\r' && b != b'\n');
    if quotable {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

/// Appends `s` as a literal (`{n}` CRLF bytes). A literal may not hold a
/// NUL (RFC 9051 §4.3): a message stored with binary content (APPEND of a
/// literal8, RFC 3516) has each NUL shown as 0x80 here, as Dovecot does, so
/// that sizes stay those of the message; `BINARY[…]` gives the bytes as
/// they are ([`literal8`]).
pub fn literal(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    let at = out.len();
    out.extend_from_slice(s);
    if s.contains(&0) {
        for b in &mut out[at..] {
            if *b == 0 {
                *b = 0x80;
            }
        }
    }
}

/// Appends a literal that may hold any byte: `~{n}` (RFC 3516 literal8)
/// when it contains a NUL, else an ordinary literal.
pub fn literal8(out: &mut Vec<u8>, s: &[u8]) {
    if s.contains(&0) {
        out.extend_from_slice(format!("~{{{}}}\r\n", s.len()).as_bytes());
        out.extend_from_slice(s);
    } else {
        literal(out, s);
    }
}

/// Appends an nstring: `NIL` for `None`.
pub fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// Appends `s` as an astring: a bare atom when it is one, else a string.
pub fn astring(out: &mut Vec<u8>, s: &[u8]) {
    let atom = !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_graphic() && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']'));
    if atom {
        out.extend_from_slice(s);
    } else {
        string(out, s);
    }
}

/// Appends `s` as an astring to a client that takes UTF-8 in quoted
/// strings (RFC 6855 §3, RFC 9051): like [`astring`], but quoted also when
/// it holds UTF-8.
pub fn astring_utf8(out: &mut Vec<u8>, s: &str) {
    if s.is_ascii() {
        return astring(out, s.as_bytes());
    }
    if s.len() <= 1024 && !s.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n')) {
        out.push(b'"');
        for &b in s.as_bytes() {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_pick_the_form_the_bytes_allow() {
        let mut o = Vec::new();
        string(&mut o, b"a \"b\" \\c");
        assert_eq!(o, b"\"a \\\"b\\\" \\\\c\"");
        o.clear();
        string(&mut o, "é\r\n".as_bytes());
        assert_eq!(o, b"{4}\r\n\xc3\xa9\r\n");
        o.clear();
        astring(&mut o, b"INBOX");
        nstring(&mut o, None);
        astring(&mut o, b"a b");
        assert_eq!(o, b"INBOXNIL\"a b\"");
        o.clear();
        literal(&mut o, b"a\0b");
        assert_eq!(o, b"{3}\r\na\x80b", "a literal never holds a NUL");
        o.clear();
        literal8(&mut o, b"a\0b");
        assert_eq!(o, b"~{3}\r\na\0b");
        o.clear();
        astring_utf8(&mut o, "Entw\u{fc}rfe \"x\"");
        astring_utf8(&mut o, "INBOX");
        assert_eq!(o, "\"Entw\u{fc}rfe \\\"x\\\"\"INBOX".as_bytes());
    }
}
