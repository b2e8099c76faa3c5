//! The command extensions imap-codec 2.0 (alpha) does not parse, lifted
//! off a complete command before it is decoded: ESEARCH's
//! `SEARCH RETURN (…)` (RFC 4731), LIST-EXTENDED's selection and return
//! options (RFC 5258, with LIST-STATUS, RFC 5819, and SPECIAL-USE) and
//! SEARCHRES's `$` (RFC 5182, replaced by [`SAVED`]). What is left is a
//! plain command that imap-codec decodes.

/// Options lifted off a command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lifted {
    /// The command without them.
    pub command: Vec<u8>,
    /// `SEARCH RETURN (…)` or ESORT's `SORT RETURN (…)` (RFC 5267): the
    /// options, upper-cased (empty = `ALL`).
    pub search_return: Option<Vec<String>>,
    /// LIST selection options, upper-cased (`SUBSCRIBED`, `RECURSIVEMATCH`, …).
    pub list_selection: Vec<String>,
    /// LIST return options.
    pub list_return: ListReturn,
    /// LIST's patterns when it was given a parenthesised list of them
    /// (RFC 5258 §3); the command keeps the first.
    pub list_patterns: Vec<String>,
    /// SEARCHRES (RFC 5182): the command named the saved search result
    /// `$`, which stands in the command as [`SAVED`].
    pub saved: bool,
}

/// What `$` (RFC 5182) becomes for the decoder: a number no message has as
/// a UID or sequence number, which the selected mailbox reads back as the
/// saved result when [`Lifted::saved`] is set.
pub const SAVED: u32 = u32::MAX;

/// Commands whose first argument may be `$`.
const SET_FIRST: [&[u8]; 5] = [b"FETCH ", b"STORE ", b"COPY ", b"MOVE ", b"EXPUNGE "];

/// Commands whose search keys may hold `$`.
const SEARCHING: [&[u8]; 3] = [b"SEARCH ", b"SORT ", b"THREAD "];

/// The command with each `$` that stands for a sequence set replaced by
/// [`SAVED`]; `None` if it has none. In FETCH, STORE, COPY, MOVE and UID
/// EXPUNGE only the set argument is looked at; in SEARCH, SORT and THREAD
/// every token outside quoted strings and literals (a keyword such as
/// `$Forwarded` is not `$`). One pass over the command.
fn replace_saved(message: &[u8]) -> Option<Vec<u8>> {
    let sp = message.iter().position(|&b| b == b' ')?;
    let mut at = sp + 1;
    if starts_with_ci(&message[at..], b"UID ") {
        at += 4;
    }
    let rest = &message[at..];
    let token_end = |i: usize| matches!(message.get(i), Some(b' ' | b')' | b'\r') | None);
    if let Some(verb) = SET_FIRST.iter().find(|v| starts_with_ci(rest, v)) {
        let i = at + verb.len();
        if message.get(i) == Some(&b'$') && token_end(i + 1) {
            let mut out = message[..i].to_vec();
            out.extend_from_slice(SAVED.to_string().as_bytes());
            out.extend_from_slice(&message[i + 1..]);
            return Some(out);
        }
        return None;
    }
    let verb = SEARCHING.iter().find(|v| starts_with_ci(rest, v))?;
    let mut out = Vec::new();
    let mut copied = 0;
    let mut i = at + verb.len();
    while let Some(&b) = message.get(i) {
        match b {
            b'"' => {
                // A quoted string, escapes included.
                i += 1;
                while let Some(&q) = message.get(i) {
                    i += if q == b'\\' { 2 } else { 1 };
                    if q == b'"' {
                        break;
                    }
                }
            }
            b'{' => {
                // A literal: `{n}` or `{n+}`, CRLF, n bytes.
                let close = message[i..].iter().position(|&c| c == b'}').map(|p| i + p);
                let len = close.and_then(|c| {
                    let digits = message[i + 1..c].strip_suffix(b"+").unwrap_or(&message[i + 1..c]);
                    std::str::from_utf8(digits).ok()?.parse::<usize>().ok()
                });
                match (close, len) {
                    (Some(c), Some(n)) => i = c.saturating_add(3).saturating_add(n),
                    _ => i += 1,
                }
            }
            b'$' if matches!(message[i - 1], b' ' | b'(') && token_end(i + 1) => {
                out.extend_from_slice(&message[copied..i]);
                out.extend_from_slice(SAVED.to_string().as_bytes());
                copied = i + 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    if copied == 0 {
        return None;
    }
    out.extend_from_slice(&message[copied..]);
    Some(out)
}

/// LIST `RETURN (…)` options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListReturn {
    /// `SUBSCRIBED`
    pub subscribed: bool,
    /// `CHILDREN`
    pub children: bool,
    /// `SPECIAL-USE`
    pub special_use: bool,
    /// `STATUS (…)`: the status items, upper-cased.
    pub status: Option<Vec<String>>,
    /// Options this server does not know (RFC 5258 §3: BAD).
    pub unknown: Vec<String>,
}

fn starts_with_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// `( … )` at the start of `s`: its atoms (one level of nesting kept as
/// `NAME(ITEMS)` tokens is not needed: STATUS is handled by the caller) and
/// the length consumed.
fn paren_list(s: &[u8]) -> Option<(Vec<String>, usize)> {
    if s.first() != Some(&b'(') {
        return None;
    }
    let mut depth = 0usize;
    for (i, &b) in s.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    let inner = std::str::from_utf8(&s[1..i]).ok()?;
                    let tokens = inner
                        .split([' ', '(', ')'])
                        .filter(|t| !t.is_empty())
                        .map(|t| t.to_ascii_uppercase())
                        .collect();
                    return Some((tokens, i + 1));
                }
            }
            b'\r' | b'\n' | b'"' | b'{' => return None,
            _ => {}
        }
    }
    None
}

fn list_return(tokens: &[String]) -> ListReturn {
    let mut r = ListReturn::default();
    let mut it = tokens.iter().peekable();
    while let Some(t) = it.next() {
        match t.as_str() {
            "SUBSCRIBED" => r.subscribed = true,
            "CHILDREN" => r.children = true,
            "SPECIAL-USE" => r.special_use = true,
            "STATUS" => {
                let mut items = Vec::new();
                while let Some(n) = it.peek() {
                    if matches!(n.as_str(), "SUBSCRIBED" | "CHILDREN" | "SPECIAL-USE") {
                        break;
                    }
                    items.push(it.next().expect("peeked").clone());
                }
                r.status = Some(items);
            }
            other => r.unknown.push(other.to_string()),
        }
    }
    r
}

/// A quoted string or an atom at the start of `s`: its value and the
/// length it takes. `None` for a literal or an empty one.
fn string_at(s: &[u8]) -> Option<(String, usize)> {
    if s.first() == Some(&b'"') {
        let mut value = Vec::new();
        let mut i = 1;
        while let Some(&b) = s.get(i) {
            match b {
                b'\\' => {
                    value.push(*s.get(i + 1)?);
                    i += 2;
                }
                b'"' => return Some((String::from_utf8(value).ok()?, i + 1)),
                b'\r' | b'\n' => return None,
                _ => {
                    value.push(b);
                    i += 1;
                }
            }
        }
        return None;
    }
    let len = s.iter().position(|&b| matches!(b, b' ' | b'(' | b')' | b'\r' | b'\n' | b'{' | b'"')).unwrap_or(s.len());
    (len > 0).then(|| (String::from_utf8_lossy(&s[..len]).into_owned(), len))
}

/// `LIST reference (p1 p2 …)` at `at` (the reference's start): the
/// patterns, and the byte range of the list and of its first pattern.
fn pattern_list(command: &[u8], at: usize) -> Option<(Vec<String>, std::ops::Range<usize>, std::ops::Range<usize>)> {
    let (_, reference_len) = string_at(&command[at..])?;
    let open = at + reference_len + 1;
    if command.get(open - 1) != Some(&b' ') || command.get(open) != Some(&b'(') {
        return None;
    }
    let mut patterns = Vec::new();
    let mut first = None;
    let mut i = open + 1;
    loop {
        match command.get(i)? {
            b' ' => i += 1,
            b')' => break,
            _ => {
                let (p, len) = string_at(&command[i..])?;
                first.get_or_insert(i..i + len);
                patterns.push(p);
                i += len;
            }
        }
    }
    Some((patterns, open..i + 1, first?))
}

/// Lifts the extensions off `message` (a whole command, CRLF-terminated,
/// literals included). `None` when there is nothing to lift.
pub fn lift(message: &[u8]) -> Option<Lifted> {
    let replaced = replace_saved(message);
    let input = replaced.as_deref().unwrap_or(message);
    let mut lifted = match lift_options(input) {
        Some(l) => l,
        None if replaced.is_some() => Lifted { command: input.to_vec(), ..Default::default() },
        None => return None,
    };
    lifted.saved = replaced.is_some();
    Some(lifted)
}

/// [`lift`] but for `$`.
fn lift_options(message: &[u8]) -> Option<Lifted> {
    let sp = message.iter().position(|&b| b == b' ')?;
    let mut at = sp + 1;
    if starts_with_ci(&message[at..], b"UID ") {
        at += 4;
    }
    let rest = &message[at..];
    if let Some(verb) =
        [&b"SEARCH "[..], b"SORT "].into_iter().find(|v| starts_with_ci(rest, &[v, &b"RETURN "[..]].concat()))
    {
        let opts_at = at + verb.len() + b"RETURN ".len();
        let (opts, len) = paren_list(&message[opts_at..])?;
        let mut end = opts_at + len;
        if message.get(end) == Some(&b' ') {
            end += 1;
        }
        let mut command = message[..at + verb.len()].to_vec();
        command.extend_from_slice(&message[end..]);
        return Some(Lifted { command, search_return: Some(opts), ..Default::default() });
    }
    if !starts_with_ci(rest, b"LIST ") {
        return None;
    }
    let mut lifted = Lifted::default();
    let mut command = message.to_vec();
    let sel_at = at + b"LIST ".len();
    if let Some((opts, len)) = paren_list(&command[sel_at..]) {
        lifted.list_selection = opts;
        let end = if command.get(sel_at + len) == Some(&b' ') { sel_at + len + 1 } else { sel_at + len };
        command.drain(sel_at..end);
    }
    // Several patterns: the command keeps the first, for the decoder.
    if let Some((patterns, list, first)) = pattern_list(&command, sel_at) {
        let first = command[first].to_vec();
        command.splice(list, first);
        lifted.list_patterns = patterns;
    }
    // `RETURN (…)` ends the command: find its opening parenthesis from the end.
    let body_end = command.len().checked_sub(2).filter(|&e| &command[e..] == b"\r\n")?;
    if command[..body_end].ends_with(b")") {
        let mut depth = 0usize;
        let mut open = None;
        for i in (0..body_end).rev() {
            match command[i] {
                b')' => depth += 1,
                b'(' => {
                    if depth == 0 {
                        break;
                    }
                    depth -= 1;
                    if depth == 0 {
                        open = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        if let Some(open) = open {
            if open >= 8 && command[open - 8..open].eq_ignore_ascii_case(b" RETURN ") {
                if let Some((opts, _)) = paren_list(&command[open..body_end]) {
                    lifted.list_return = list_return(&opts);
                    command.drain(open - 8..body_end);
                }
            }
        }
    }
    if lifted.list_selection.is_empty() && lifted.list_return == ListReturn::default() && command == message {
        return None;
    }
    lifted.command = command;
    Some(lifted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_return_is_lifted() {
        let l = lift(b"a1 UID SEARCH RETURN (MIN COUNT) FLAGGED\r\n").unwrap();
        assert_eq!(l.command, b"a1 UID SEARCH FLAGGED\r\n");
        assert_eq!(l.search_return, Some(vec!["MIN".into(), "COUNT".into()]));
        let l = lift(b"a2 search return () ALL\r\n").unwrap();
        assert_eq!(l.command, b"a2 search ALL\r\n");
        assert_eq!(l.search_return, Some(vec![]));
        assert!(lift(b"a3 SEARCH ALL\r\n").is_none());
        let l = lift(b"a4 UID SORT RETURN (MIN ALL) (DATE) UTF-8 ALL\r\n").unwrap();
        assert_eq!(l.command, b"a4 UID SORT (DATE) UTF-8 ALL\r\n");
        assert_eq!(l.search_return, Some(vec!["MIN".into(), "ALL".into()]));
    }

    #[test]
    fn list_options_are_lifted() {
        let l = lift(b"a LIST (SUBSCRIBED) \"\" \"*\" RETURN (SPECIAL-USE STATUS (MESSAGES UIDNEXT))\r\n").unwrap();
        assert_eq!(l.command, b"a LIST \"\" \"*\"\r\n");
        assert_eq!(l.list_selection, vec!["SUBSCRIBED".to_string()]);
        assert!(l.list_return.special_use);
        assert_eq!(l.list_return.status, Some(vec!["MESSAGES".into(), "UIDNEXT".into()]));
        let l = lift(b"a LIST \"\" % RETURN (CHILDREN)\r\n").unwrap();
        assert_eq!(l.command, b"a LIST \"\" %\r\n");
        assert!(l.list_return.children);
        assert!(lift(b"a LIST \"\" \"(x)\"\r\n").is_none());
        let l = lift(b"a LIST \"\" (a/*2 \"a/test 3\") RETURN (IMAPTEST)\r\n").unwrap();
        assert_eq!(l.command, b"a LIST \"\" a/*2\r\n");
        assert_eq!(l.list_patterns, vec!["a/*2".to_string(), "a/test 3".to_string()]);
        assert_eq!(l.list_return.unknown, vec!["IMAPTEST".to_string()]);
        let l = lift(b"a LIST \"\" (probe3)\r\n").unwrap();
        assert_eq!((l.command.as_slice(), l.list_patterns.len()), (&b"a LIST \"\" probe3\r\n"[..], 1));
        assert!(lift(b"a LIST \"\" *\r\n").is_none());
    }

    #[test]
    fn saved_result_is_lifted() {
        let l = lift(b"a UID FETCH $ (UID)\r\n").unwrap();
        assert_eq!((l.command.as_slice(), l.saved), (&b"a UID FETCH 4294967295 (UID)\r\n"[..], true));
        let l = lift(b"a SEARCH RETURN (SAVE) OR $ (UID $) SUBJECT \"$\" {1}\r\n$ KEYWORD $Forwarded\r\n").unwrap();
        assert_eq!(l.command, b"a SEARCH OR 4294967295 (UID 4294967295) SUBJECT \"$\" {1}\r\n$ KEYWORD $Forwarded\r\n");
        assert_eq!((l.search_return, l.saved), (Some(vec!["SAVE".to_string()]), true));
        assert!(lift(b"a STORE 1 +FLAGS ($)\r\n").is_none());
        assert!(lift(b"a SEARCH KEYWORD $Label1\r\n").is_none());
    }

    #[test]
    fn garbage_never_panics() {
        for m in [
            &b"a LIST ("[..],
            b"a LIST ((((\r\n",
            b"a UID ",
            b"x SEARCH RETURN (\r\n",
            b") RETURN ()\r\n",
            b" ",
            b"a SEARCH {99999999999999999999}\r\n$",
            b"a SEARCH {5}\r\n",
            b"a SEARCH \"\\",
            b"a FETCH $",
            b"a SEARCH $",
        ] {
            let _ = lift(m);
        }
    }
}
