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
    /// FETCH items imap-codec does not know, in the order asked.
    pub fetch_extra: Vec<FetchExtra>,
    /// PARTIAL's FETCH modifier (RFC 9394 §3.2): its range as written.
    pub fetch_partial: Option<String>,
    /// The FETCH asked for those only: `UID` stands in the command for the
    /// decoder, and is not answered unless the command is a UID FETCH.
    pub fetch_placeholder: bool,
    /// STATUS items imap-codec does not know, in the order asked.
    pub status_extra: Vec<StatusExtra>,
    /// The STATUS asked for those only: `MESSAGES` stands in the command
    /// for the decoder, and is not answered.
    pub status_placeholder: bool,
    /// SEARCH keys imap-codec does not know: the i-th stands in the command
    /// as `UID` [`EXTRA_KEY`] − i.
    pub search_extra: Vec<SearchExtra>,
    /// CREATE-SPECIAL-USE (RFC 6154): the attributes of `(USE (…))`, as
    /// the client wrote them.
    pub create_use: Option<Vec<String>>,
    /// MULTIAPPEND (RFC 3502): the messages after the first, each as a
    /// whole `tag APPEND mailbox [flags] [date] literal` command (the
    /// command keeps the first).
    pub appends: Vec<Vec<u8>>,
    /// CATENATE (RFC 4469): the APPEND's messages given as `CATENATE (…)`,
    /// each by its place among the messages (0 the first); in the command
    /// each stands as an empty literal.
    pub catenate: Vec<Catenate>,
    /// UTF8=ACCEPT (RFC 6855 §4): a message (or a CATENATE part) was
    /// given as `UTF8 (literal8)`; the literal8 stands in the command for it.
    pub utf8_append: bool,
}

/// One message of an APPEND given as `CATENATE (part …)` (RFC 4469 §5).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catenate {
    /// Its place among the APPEND's messages (0 the first).
    pub index: usize,
    /// Its parts, at most [`CATENATE_PARTS_MAX`].
    pub parts: Vec<CatPart>,
    /// It had more parts than that (they are not kept).
    pub too_many: bool,
}

/// A part of a CATENATE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatPart {
    /// `TEXT literal` (or literal8): the bytes, and whether a plain
    /// literal held a NUL.
    Text(Vec<u8>, bool),
    /// `URL astring`: an IMAP URL (RFC 5092), as the client wrote it.
    Url(String),
}

/// Parts in one CATENATE, at most (`NO [LIMIT]` past it).
pub const CATENATE_PARTS_MAX: usize = 100;

/// A FETCH item imap-codec does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchExtra {
    /// OBJECTID's `EMAILID` (RFC 8474).
    EmailId,
    /// OBJECTID's `THREADID` (RFC 8474).
    ThreadId,
    /// `PREVIEW` or `PREVIEW (LAZY)` (RFC 8970): computed either way.
    Preview,
    /// `SAVEDATE` (RFC 8514): NIL, no save date is stored.
    SaveDate,
}

/// A STATUS item imap-codec does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusExtra {
    /// OBJECTID's `MAILBOXID` (RFC 8474).
    MailboxId,
    /// `APPENDLIMIT` (RFC 7889).
    AppendLimit,
}

/// A SEARCH key imap-codec does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SearchExtra {
    /// `EMAILID objectid` (RFC 8474 §6).
    EmailId(String),
    /// `THREADID objectid` (RFC 8474 §6).
    ThreadId(String),
    /// `SAVEDATESUPPORTED` (RFC 8514 §4.3).
    SaveDateSupported,
}

/// What the i-th lifted SEARCH key becomes for the decoder: `UID`
/// `EXTRA_KEY − i`, a UID no message has (below [`SAVED`]), which the
/// search reads back as the key when [`Lifted::search_extra`] has it.
pub const EXTRA_KEY: u32 = u32::MAX - 1;

/// At most this many lifted SEARCH keys in one command (more is left to the
/// decoder, which refuses it).
pub const EXTRA_KEYS_MAX: usize = 64;

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
    // Arguments still owed to the key before: a `$` among them is a string,
    // number or date, not a set. SORT's criteria list is skipped, then its
    // charset is owed; THREAD owes its algorithm and charset.
    let mut owed: usize = match *verb {
        b"SORT " => {
            if message.get(i) == Some(&b'(') {
                i += message[i..].iter().position(|&c| c == b')').map_or(message.len() - i, |p| p + 1);
            }
            1
        }
        b"THREAD " => 2,
        _ => 0,
    };
    while let Some(&b) = message.get(i) {
        match b {
            b' ' | b'(' | b')' => i += 1,
            b'"' => {
                owed = owed.saturating_sub(1);
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
                owed = owed.saturating_sub(1);
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
            _ => {
                // An atom.
                let len = message[i..]
                    .iter()
                    .position(|&c| matches!(c, b' ' | b'(' | b')' | b'\r' | b'"' | b'{'))
                    .unwrap_or(message.len() - i);
                let atom = &message[i..i + len];
                if owed > 0 {
                    owed -= 1;
                } else if atom == b"$" && matches!(message[i - 1], b' ' | b'(') {
                    out.extend_from_slice(&message[copied..i]);
                    out.extend_from_slice(SAVED.to_string().as_bytes());
                    copied = i + 1;
                } else {
                    owed = key_arguments(atom);
                }
                i += len.max(1);
            }
        }
    }
    if copied == 0 {
        return None;
    }
    out.extend_from_slice(&message[copied..]);
    Some(out)
}

/// How many arguments the search key `atom` takes (RFC 9051 §6.4.4 and the
/// extensions': strings, numbers, dates); 0 for a key without any or one
/// whose argument is itself a key.
fn key_arguments(atom: &[u8]) -> usize {
    const ONE: [&[u8]; 26] = [
        b"BCC",
        b"BODY",
        b"CC",
        b"FROM",
        b"KEYWORD",
        b"UNKEYWORD",
        b"SUBJECT",
        b"TEXT",
        b"TO",
        b"BEFORE",
        b"ON",
        b"SINCE",
        b"SENTBEFORE",
        b"SENTON",
        b"SENTSINCE",
        b"LARGER",
        b"SMALLER",
        b"OLDER",
        b"YOUNGER",
        b"CHARSET",
        b"MODSEQ",
        b"EMAILID",
        b"THREADID",
        b"SAVEDBEFORE",
        b"SAVEDON",
        b"SAVEDSINCE",
    ];
    if atom.eq_ignore_ascii_case(b"HEADER") {
        2
    } else if atom.eq_ignore_ascii_case(b"ANNOTATION") {
        3
    } else {
        usize::from(ONE.iter().any(|k| atom.eq_ignore_ascii_case(k)) || atom.eq_ignore_ascii_case(b"FILTER"))
    }
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
    let saved = replaced.is_some();
    let mut extra = Lifted::default();
    // (Borrowed unless a stage rewrites it: an APPEND may be large.)
    let mut input = replaced.map_or(std::borrow::Cow::Borrowed(message), std::borrow::Cow::Owned);
    let stages: [Stage; 8] = [
        lift_utf8_append,
        lift_catenate,
        split_multiappend,
        lift_search_keys,
        lift_fetch_partial,
        lift_fetch_items,
        lift_status_items,
        lift_create_use,
    ];
    for stage in stages {
        if let Some(rewritten) = stage(&input, &mut extra) {
            input = std::borrow::Cow::Owned(rewritten);
        }
    }
    let mut lifted = match lift_options(&input) {
        Some(l) => l,
        None if matches!(input, std::borrow::Cow::Owned(_)) => {
            Lifted { command: input.into_owned(), ..Default::default() }
        }
        None => return None,
    };
    lifted.saved = saved;
    lifted.fetch_extra = extra.fetch_extra;
    lifted.fetch_partial = extra.fetch_partial;
    lifted.fetch_placeholder = extra.fetch_placeholder;
    lifted.status_extra = extra.status_extra;
    lifted.status_placeholder = extra.status_placeholder;
    lifted.search_extra = extra.search_extra;
    lifted.create_use = extra.create_use;
    lifted.appends = extra.appends;
    lifted.catenate = extra.catenate;
    lifted.utf8_append = extra.utf8_append;
    Some(lifted)
}

/// PARTIAL's FETCH modifier (RFC 9394 §3.2): `FETCH set items (… PARTIAL
/// range …)`: the modifier goes to [`Lifted::fetch_partial`], and the
/// modifier list with it if it held nothing else. Only the last
/// parenthesised list after the items is looked at.
fn lift_fetch_partial(message: &[u8], lifted: &mut Lifted) -> Option<Vec<u8>> {
    let at = verb_at(message)?;
    if !starts_with_ci(&message[at..], b"FETCH ") {
        return None;
    }
    let set_at = at + b"FETCH ".len();
    let items_at = set_at + message[set_at..].iter().position(|&b| b == b' ')? + 1;
    let end = body_end(message)?;
    if message[..end].last() != Some(&b')') || message[items_at..end].contains(&b'{') {
        return None;
    }
    // The list's opening parenthesis, from the end.
    let mut depth = 0usize;
    let mut open = None;
    for i in (items_at..end).rev() {
        match message[i] {
            b')' => depth += 1,
            b'(' => {
                depth -= 1;
                if depth == 0 {
                    open = Some(i);
                    break;
                }
            }
            _ => {}
        }
    }
    let open = open?;
    // Modifiers follow the items: a list at the items' place is the items.
    if open <= items_at || message[open - 1] != b' ' {
        return None;
    }
    let inner = std::str::from_utf8(&message[open + 1..end - 1]).ok()?;
    let tokens: Vec<&str> = inner.split(' ').collect();
    let p = tokens.iter().position(|t| t.eq_ignore_ascii_case("PARTIAL"))?;
    let range = tokens.get(p + 1)?;
    let kept: Vec<&str> = tokens.iter().enumerate().filter(|(i, _)| *i != p && *i != p + 1).map(|(_, t)| *t).collect();
    let mut out = message[..open - 1].to_vec();
    if !kept.is_empty() {
        out.extend_from_slice(format!(" ({})", kept.join(" ")).as_bytes());
    }
    out.extend_from_slice(&message[end..]);
    lifted.fetch_partial = Some(range.to_string());
    Some(out)
}

/// A lifting step: the command rewritten, or `None` if it does not apply.
type Stage = fn(&[u8], &mut Lifted) -> Option<Vec<u8>>;

/// Where the command's verb starts (after the tag and any `UID `).
fn verb_at(message: &[u8]) -> Option<usize> {
    let sp = message.iter().position(|&b| b == b' ')?;
    let at = sp + 1;
    Some(if starts_with_ci(&message[at..], b"UID ") { at + 4 } else { at })
}

/// The end of the command before its CRLF.
fn body_end(message: &[u8]) -> Option<usize> {
    message.len().checked_sub(2).filter(|&e| &message[e..] == b"\r\n")
}

/// `{n}` or `{n+}` then CRLF at `at`: the literal's data range.
fn literal_at(message: &[u8], at: usize) -> Option<std::ops::Range<usize>> {
    if message.get(at) != Some(&b'{') {
        return None;
    }
    let close = at + message[at..].iter().position(|&b| b == b'}')?;
    let digits = &message[at + 1..close];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
    if message.get(close + 1..close + 3) != Some(&b"\r\n"[..]) {
        return None;
    }
    let start = close + 3;
    let end = start.checked_add(n)?;
    (end <= message.len()).then_some(start..end)
}

/// The end of an astring (atom, quoted string or literal) at `at`.
fn astring_end(message: &[u8], at: usize) -> Option<usize> {
    match message.get(at)? {
        b'{' => Some(literal_at(message, at)?.end),
        b'"' => {
            let mut i = at + 1;
            loop {
                match message.get(i)? {
                    b'\\' => i += 2,
                    b'"' => return Some(i + 1),
                    b'\r' | b'\n' => return None,
                    _ => i += 1,
                }
            }
        }
        _ => {
            let len = message[at..]
                .iter()
                .position(|&b| matches!(b, b' ' | b'(' | b')' | b'\r' | b'\n' | b'{' | b'"'))
                .unwrap_or(message.len() - at);
            (len > 0).then_some(at + len)
        }
    }
}

/// Splits `s` at spaces outside brackets and parentheses: its tokens.
/// `None` if it holds a quoted string or a literal (left to the decoder).
fn top_tokens(s: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        match b {
            b'"' | b'{' | b'\r' | b'\n' => return None,
            b'[' | b'(' => depth += 1,
            b']' | b')' => depth = depth.checked_sub(1)?,
            b' ' if depth == 0 => {
                if i > start {
                    out.push(start..i);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if s.len() > start {
        out.push(start..s.len());
    }
    (depth == 0).then_some(out)
}

/// The index of the parenthesis that closes the one at `s[0]`.
fn closing_paren(s: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    for (i, &b) in s.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            b'"' | b'{' | b'\r' | b'\n' => return None,
            _ => {}
        }
    }
    None
}

/// OBJECTID's FETCH items (RFC 8474 §5.3) and PREVIEW (RFC 8970) off `FETCH set (…)` or
/// `FETCH set ITEM`.
fn lift_fetch_items(message: &[u8], lifted: &mut Lifted) -> Option<Vec<u8>> {
    let at = verb_at(message)?;
    if !starts_with_ci(&message[at..], b"FETCH ") {
        return None;
    }
    let set_at = at + b"FETCH ".len();
    let items_at = set_at + message[set_at..].iter().position(|&b| b == b' ')? + 1;
    let end = body_end(message)?;
    let (list, after) = if message.get(items_at) == Some(&b'(') {
        let close = items_at + closing_paren(&message[items_at..end])?;
        (items_at + 1..close, close + 1)
    } else {
        let len = message[items_at..end].iter().position(|&b| b == b' ').unwrap_or(end - items_at);
        let mut after = items_at + len;
        // `FETCH 1 PREVIEW (LAZY)`: the one item with its modifier.
        let lazy = b" (LAZY)";
        if message[items_at..after].eq_ignore_ascii_case(b"PREVIEW")
            && message.len() >= after + lazy.len()
            && message[after..after + lazy.len()].eq_ignore_ascii_case(lazy)
        {
            after += lazy.len();
        }
        (items_at..after, after)
    };
    let inner = &message[list];
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut extra = Vec::new();
    let tokens = top_tokens(inner)?;
    let mut i = 0;
    while i < tokens.len() {
        let token = &inner[tokens[i].clone()];
        if token.eq_ignore_ascii_case(b"EMAILID") {
            extra.push(FetchExtra::EmailId);
        } else if token.eq_ignore_ascii_case(b"THREADID") {
            extra.push(FetchExtra::ThreadId);
        } else if token.eq_ignore_ascii_case(b"SAVEDATE") {
            extra.push(FetchExtra::SaveDate);
        } else if token.eq_ignore_ascii_case(b"PREVIEW") {
            // RFC 8970 §3: `PREVIEW [SP "(" preview-mod *(SP preview-mod) ")"]`,
            // `preview-mod = "LAZY"`; another modifier is left to the decoder (BAD).
            if let Some(next) = tokens.get(i + 1).map(|t| &inner[t.clone()]) {
                if next.starts_with(b"(") {
                    let mods = &next[1..next.len() - 1];
                    if mods.is_empty() || !mods.split(|&b| b == b' ').all(|m| m.eq_ignore_ascii_case(b"LAZY")) {
                        return None;
                    }
                    i += 1;
                }
            }
            extra.push(FetchExtra::Preview);
        } else {
            kept.push(token);
        }
        i += 1;
    }
    if extra.is_empty() {
        return None;
    }
    let mut out = message[..items_at].to_vec();
    if kept.is_empty() {
        out.extend_from_slice(b"UID");
        lifted.fetch_placeholder = true;
    } else {
        out.push(b'(');
        out.extend_from_slice(&kept.join(&b' '));
        out.push(b')');
    }
    out.extend_from_slice(&message[after..]);
    lifted.fetch_extra = extra;
    Some(out)
}

/// MAILBOXID (RFC 8474 §4.3) and APPENDLIMIT (RFC 7889 §3.1) off
/// `STATUS mailbox (…)`: the list is the command's last parenthesis.
fn lift_status_items(message: &[u8], lifted: &mut Lifted) -> Option<Vec<u8>> {
    let at = verb_at(message)?;
    if !starts_with_ci(&message[at..], b"STATUS ") || at != message.iter().position(|&b| b == b' ')? + 1 {
        return None;
    }
    let mailbox_end = astring_end(message, at + b"STATUS ".len())?;
    let end = body_end(message)?;
    if message.get(mailbox_end..mailbox_end + 2) != Some(&b" ("[..]) || message[..end].last() != Some(&b')') {
        return None;
    }
    let inner = &message[mailbox_end + 2..end - 1];
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut extra = Vec::new();
    for t in top_tokens(inner)? {
        let token = &inner[t];
        if token.eq_ignore_ascii_case(b"MAILBOXID") {
            extra.push(StatusExtra::MailboxId);
        } else if token.eq_ignore_ascii_case(b"APPENDLIMIT") {
            extra.push(StatusExtra::AppendLimit);
        } else {
            kept.push(token);
        }
    }
    if extra.is_empty() {
        return None;
    }
    let mut out = message[..mailbox_end + 2].to_vec();
    if kept.is_empty() {
        out.extend_from_slice(b"MESSAGES");
        lifted.status_placeholder = true;
    } else {
        out.extend_from_slice(&kept.join(&b' '));
    }
    out.extend_from_slice(b")\r\n");
    lifted.status_extra = extra;
    Some(out)
}

/// CREATE-SPECIAL-USE (RFC 6154 §3): `CREATE mailbox (USE (…))`.
fn lift_create_use(message: &[u8], lifted: &mut Lifted) -> Option<Vec<u8>> {
    let sp = message.iter().position(|&b| b == b' ')?;
    if !starts_with_ci(&message[sp + 1..], b"CREATE ") {
        return None;
    }
    let mailbox_end = astring_end(message, sp + 1 + b"CREATE ".len())?;
    let end = body_end(message)?;
    if message.get(mailbox_end) != Some(&b' ') || message.get(mailbox_end + 1) != Some(&b'(') {
        return None;
    }
    let params = &message[mailbox_end + 1..end];
    if closing_paren(params)? + 1 != params.len() {
        return None;
    }
    let inner = &params[1..params.len() - 1];
    if !starts_with_ci(inner, b"USE (") || inner.last() != Some(&b')') {
        return None;
    }
    let attrs = &inner[b"USE (".len()..inner.len() - 1];
    let tokens = top_tokens(attrs)?;
    lifted.create_use = Some(tokens.into_iter().map(|t| String::from_utf8_lossy(&attrs[t]).into_owned()).collect());
    let mut out = message[..mailbox_end].to_vec();
    out.extend_from_slice(b"\r\n");
    Some(out)
}

/// OBJECTID's SEARCH keys (RFC 8474 §6), `EMAILID x` and `THREADID x`,
/// in SEARCH, SORT and THREAD: each becomes `UID n` with n from
/// [`EXTRA_KEY`] down. Tokens inside quoted strings and literals are not
/// looked at.
fn lift_search_keys(message: &[u8], lifted: &mut Lifted) -> Option<Vec<u8>> {
    let at = verb_at(message)?;
    let verb = SEARCHING.iter().find(|v| starts_with_ci(&message[at..], v))?;
    let mut out = Vec::new();
    let mut copied = 0;
    let mut i = at + verb.len();
    let mut keys = Vec::new();
    let mut renamed = false;
    // Arguments still to come of the last key: a token there is a value
    // (`SUBJECT EMAILID` searches for the word), not a key.
    let mut args = 0usize;
    while let Some(&b) = message.get(i) {
        if matches!(b, b' ' | b'(' | b')' | b'\r' | b'\n') {
            i += 1;
            continue;
        }
        let end = astring_end(message, i).unwrap_or(i + 1);
        let token = &message[i..end];
        if args > 0 {
            args -= 1;
            i = end;
            continue;
        }
        let upper = token.to_ascii_uppercase();
        args = match &upper[..] {
            b"BCC" | b"BODY" | b"CC" | b"FROM" | b"SUBJECT" | b"TEXT" | b"TO" | b"KEYWORD" | b"UNKEYWORD"
            | b"BEFORE" | b"ON" | b"SINCE" | b"SENTBEFORE" | b"SENTON" | b"SENTSINCE" | b"LARGER" | b"SMALLER"
            | b"UID" | b"CHARSET" => 1,
            b"HEADER" => 2,
            // RFC 7162: `MODSEQ [entry-name entry-type-req] mod-sequence-valzer`.
            b"MODSEQ" if message.get(end + 1) == Some(&b'"') => 3,
            b"MODSEQ" => 1,
            _ => 0,
        };
        // RFC 8514 §4.3: without a stored save date, SAVEDBEFORE, SAVEDON
        // and SAVEDSINCE use the internal date: BEFORE, ON and SINCE.
        let internal: Option<&[u8]> = match &upper[..] {
            b"SAVEDBEFORE" => Some(b"BEFORE"),
            b"SAVEDON" => Some(b"ON"),
            b"SAVEDSINCE" => Some(b"SINCE"),
            _ => None,
        };
        if let Some(plain) = internal {
            out.extend_from_slice(&message[copied..i]);
            out.extend_from_slice(plain);
            copied = end;
            args = 1;
            renamed = true;
            i = end;
            continue;
        }
        if upper == b"SAVEDATESUPPORTED" {
            if keys.len() == EXTRA_KEYS_MAX {
                return None;
            }
            out.extend_from_slice(&message[copied..i]);
            out.extend_from_slice(format!("UID {}", EXTRA_KEY - keys.len() as u32).as_bytes());
            keys.push(SearchExtra::SaveDateSupported);
            copied = end;
            i = end;
            continue;
        }
        let email = upper == b"EMAILID";
        if !(email || upper == b"THREADID") || message.get(end) != Some(&b' ') {
            i = end;
            continue;
        }
        let value_end = astring_end(message, end + 1)?;
        let value = &message[end + 1..value_end];
        let value = String::from_utf8_lossy(value.strip_prefix(b"\"").unwrap_or(value));
        let value = value.strip_suffix('"').unwrap_or(&value).to_string();
        if keys.len() == EXTRA_KEYS_MAX {
            return None;
        }
        out.extend_from_slice(&message[copied..i]);
        out.extend_from_slice(format!("UID {}", EXTRA_KEY - keys.len() as u32).as_bytes());
        keys.push(if email { SearchExtra::EmailId(value) } else { SearchExtra::ThreadId(value) });
        copied = value_end;
        i = value_end;
    }
    if keys.is_empty() && !renamed {
        return None;
    }
    out.extend_from_slice(&message[copied..]);
    lifted.search_extra = keys;
    Some(out)
}

/// In `tag APPEND mailbox …`: where the mailbox name ends and where the
/// command's body ends; `None` for any other command.
fn append_bounds(message: &[u8]) -> Option<(usize, usize)> {
    let sp = message.iter().position(|&b| b == b' ')?;
    if !starts_with_ci(&message[sp + 1..], b"APPEND ") {
        return None;
    }
    Some((astring_end(message, sp + 1 + b"APPEND ".len())?, body_end(message)?))
}

/// MULTIAPPEND (RFC 3502): `tag APPEND mailbox m1 m2 …`, each message
/// `[flags] [date] literal` (or literal8): the command keeps the first, the
/// others go to [`Lifted::appends`] as whole APPEND commands of their own.
/// Nothing happens to an APPEND of one message.
fn split_multiappend(message: &[u8], lifted: &mut Lifted) -> Option<Vec<u8>> {
    let (mailbox_end, end) = append_bounds(message)?;
    let mut messages = Vec::new();
    let mut i = mailbox_end;
    while i < end {
        if message[i] != b' ' {
            return None;
        }
        // Flags and a date-time hold no `{`: the next one opens the literal.
        let open = i + message[i..].iter().position(|&b| b == b'{')?;
        let data = literal_at(message, open)?;
        messages.push(i..data.end);
        i = data.end;
    }
    if messages.len() < 2 || i != end {
        return None;
    }
    let one = |range: std::ops::Range<usize>| {
        let mut c = message[..mailbox_end].to_vec();
        c.extend_from_slice(&message[range]);
        c.extend_from_slice(b"\r\n");
        c
    };
    let mut all = messages.into_iter().map(one);
    let first = all.next()?;
    lifted.appends = all.collect();
    Some(first)
}

/// UTF8=ACCEPT's APPEND data extension (RFC 6855 §4): in an APPEND,
/// `append-data =/ "UTF8" SP "(" literal8 ")"`, also as a CATENATE part.
/// Each becomes its literal8 (in a CATENATE, `TEXT literal8`), which the
/// later stages and the decoder take as usual. Literals and quoted strings
/// are stepped over whole; one pass to find one, a second to rewrite.
fn lift_utf8_append(message: &[u8], lifted: &mut Lifted) -> Option<Vec<u8>> {
    let (mailbox_end, end) = append_bounds(message)?;
    if !utf8_parts(message, mailbox_end, end, None)? {
        return None;
    }
    let mut out = message[..mailbox_end].to_vec();
    utf8_parts(message, mailbox_end, end, Some(&mut out))?;
    out.extend_from_slice(&message[end..]);
    lifted.utf8_append = true;
    Some(out)
}

/// Whether `message[at..end]` holds a `UTF8 (literal8)`, writing the
/// rewritten bytes to `out` if given; `None` if it is malformed.
fn utf8_parts(message: &[u8], mut at: usize, end: usize, mut out: Option<&mut Vec<u8>>) -> Option<bool> {
    const OPEN: &[u8] = b"UTF8 (";
    let mut found = false;
    let mut depth = 0usize;
    while at < end {
        let c = message[at];
        let next = if c == b'{' || (c == b'~' && message.get(at + 1) == Some(&b'{')) {
            literal_at(message, at + usize::from(c == b'~'))?.end
        } else if c == b'"' {
            astring_end(message, at)?
        } else if message[at - 1] == b' ' && starts_with_ci(&message[at..end], OPEN) {
            let data = literal_at(message, at + OPEN.len() + 1).filter(|_| message[at + OPEN.len()] == b'~')?;
            if message.get(data.end) != Some(&b')') || data.end >= end {
                return None;
            }
            found = true;
            if let Some(out) = out.as_deref_mut() {
                if depth > 0 {
                    out.extend_from_slice(b"TEXT ");
                }
                out.extend_from_slice(&message[at + OPEN.len()..data.end]);
            }
            at = data.end + 1;
            continue;
        } else {
            match c {
                b'(' => depth += 1,
                b')' => depth = depth.checked_sub(1)?,
                _ => {}
            }
            at + 1
        };
        if let Some(out) = out.as_deref_mut() {
            out.extend_from_slice(&message[at..next]);
        }
        at = next;
    }
    Some(found)
}

/// CATENATE (RFC 4469 §5): in `tag APPEND mailbox m1 m2 …` each message is
/// `[flags] [date]` and a literal (literal8) or `CATENATE (cat-part …)`,
/// `cat-part = "TEXT" SP literal / "URL" SP astring`. The parts of each
/// CATENATE go to [`Lifted::catenate`] and an empty literal stands in the
/// command for it (which [`split_multiappend`] then splits as usual).
fn lift_catenate(message: &[u8], lifted: &mut Lifted) -> Option<Vec<u8>> {
    let (mailbox_end, end) = append_bounds(message)?;
    let mut out = message[..mailbox_end].to_vec();
    let mut found = Vec::new();
    let mut i = mailbox_end;
    let mut index = 0;
    while i < end {
        if message[i] != b' ' {
            return None;
        }
        let opts = i;
        i += 1;
        // Flags: a parenthesised list of flags (no nesting, no strings).
        if message.get(i) == Some(&b'(') {
            let close = i + message[i..end].iter().position(|&b| b == b')')?;
            if message[i + 1..close].iter().any(|&b| matches!(b, b'(' | b'{' | b'"')) {
                return None;
            }
            i = close + 1;
            if message.get(i) != Some(&b' ') {
                return None;
            }
            i += 1;
        }
        // A date-time: a quoted string.
        if message.get(i) == Some(&b'"') {
            i = astring_end(message, i)?;
            if message.get(i) != Some(&b' ') {
                return None;
            }
            i += 1;
        }
        out.extend_from_slice(&message[opts..i]);
        if starts_with_ci(&message[i..end], b"CATENATE (") {
            let (cat, after) = catenate_parts(message, i + b"CATENATE (".len(), end)?;
            found.push(Catenate { index, ..cat });
            out.extend_from_slice(b"{0}\r\n");
            i = after;
        } else {
            let open = if message.get(i) == Some(&b'~') { i + 1 } else { i };
            let data = literal_at(message, open)?;
            out.extend_from_slice(&message[i..data.end]);
            i = data.end;
        }
        index += 1;
    }
    if found.is_empty() || i != end {
        return None;
    }
    out.extend_from_slice(b"\r\n");
    lifted.catenate = found;
    Some(out)
}

/// The parts of a `CATENATE (` whose first part starts at `at`, up to its
/// `)`: them and where the `)` ends.
fn catenate_parts(message: &[u8], mut at: usize, end: usize) -> Option<(Catenate, usize)> {
    let mut cat = Catenate::default();
    let mut first = true;
    loop {
        match message.get(at)? {
            b')' if !first && at < end => return Some((cat, at + 1)),
            b' ' if !first => at += 1,
            _ if !first => return None,
            _ => {}
        }
        first = false;
        let part = if starts_with_ci(&message[at..], b"TEXT ") {
            at += b"TEXT ".len();
            let eight = message.get(at) == Some(&b'~');
            let data = literal_at(message, at + usize::from(eight))?;
            let nul = !eight && message[data.clone()].contains(&0);
            let part = CatPart::Text(message[data.clone()].to_vec(), nul);
            at = data.end;
            part
        } else if starts_with_ci(&message[at..], b"URL ") {
            at += b"URL ".len();
            let url_end = astring_end(message, at)?;
            let raw = &message[at..url_end];
            let url = match raw.first() {
                Some(b'"') => string_at(raw)?.0,
                Some(b'{') => String::from_utf8(message[literal_at(message, at)?].to_vec()).ok()?,
                _ => String::from_utf8(raw.to_vec()).ok()?,
            };
            at = url_end;
            CatPart::Url(url)
        } else {
            return None;
        };
        if cat.parts.len() < CATENATE_PARTS_MAX {
            cat.parts.push(part);
        } else {
            cat.too_many = true;
        }
        if at >= end {
            return None;
        }
    }
}

/// Whether the command holds a literal (not a literal8) with a NUL in it:
/// what a client sends binary data in without BINARY's `~{n}`.
pub fn nul_in_literal(message: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = message[i..].iter().position(|&b| b == b'{') {
        let open = i + p;
        match literal_at(message, open) {
            Some(data) => {
                if (open == 0 || message[open - 1] != b'~') && message[data.clone()].contains(&0) {
                    return true;
                }
                i = data.end;
            }
            None => i = open + 1,
        }
    }
    false
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
    fn objectid_items_and_keys_are_lifted() {
        let l = lift(b"12 fetch 1 (emailid UID BODY[HEADER.FIELDS (A B)] threadid) (CHANGEDSINCE 5)\r\n").unwrap();
        assert_eq!(l.command, b"12 fetch 1 (UID BODY[HEADER.FIELDS (A B)]) (CHANGEDSINCE 5)\r\n");
        assert_eq!(l.fetch_extra, vec![FetchExtra::EmailId, FetchExtra::ThreadId]);
        assert!(!l.fetch_placeholder);
        let l = lift(b"p FETCH 1 (UID PREVIEW (lazy) FLAGS PREVIEW)\r\n").unwrap();
        assert_eq!(l.command, b"p FETCH 1 (UID FLAGS)\r\n");
        assert_eq!(l.fetch_extra, vec![FetchExtra::Preview, FetchExtra::Preview]);
        assert!(lift(b"p FETCH 1 (PREVIEW (FOO))\r\n").is_none());
        let l = lift(b"p UID FETCH 1 PREVIEW (LAZY) (CHANGEDSINCE 3)\r\n").unwrap();
        assert_eq!((l.command.as_slice(), l.fetch_placeholder), (&b"p UID FETCH 1 UID (CHANGEDSINCE 3)\r\n"[..], true));
        assert!(lift(b"p FETCH 1 (PREVIEW ())\r\n").is_none());
        let l = lift(b"a UID FETCH 1:* EMAILID\r\n").unwrap();
        assert_eq!((l.command.as_slice(), l.fetch_placeholder), (&b"a UID FETCH 1:* UID\r\n"[..], true));
        assert!(lift(b"a FETCH 1 (UID BODY[])\r\n").is_none());
        let l = lift(b"6 status {3}\r\nfoo (mailboxid MESSAGES appendlimit)\r\n").unwrap();
        assert_eq!(l.command, b"6 status {3}\r\nfoo (MESSAGES)\r\n");
        assert_eq!(l.status_extra, vec![StatusExtra::MailboxId, StatusExtra::AppendLimit]);
        let l = lift(b"6 STATUS \"a (b)\" (MAILBOXID)\r\n").unwrap();
        assert_eq!((l.command.as_slice(), l.status_placeholder), (&b"6 STATUS \"a (b)\" (MESSAGES)\r\n"[..], true));
        let l = lift(b"s UID SEARCH OR EMAILID M1 (THREADID T2) SUBJECT \"EMAILID x\" {7}\r\nEMAILID\r\n").unwrap();
        let want = format!(
            "s UID SEARCH OR UID {} (UID {}) SUBJECT \"EMAILID x\" {{7}}\r\nEMAILID\r\n",
            EXTRA_KEY,
            EXTRA_KEY - 1
        );
        assert_eq!(l.command, want.as_bytes());
        assert_eq!(l.search_extra, vec![SearchExtra::EmailId("M1".into()), SearchExtra::ThreadId("T2".into())]);
        assert!(lift(b"s SEARCH KEYWORD EMAILIDX\r\n").is_none());
        // A key's value is not a key.
        assert!(lift(b"s SEARCH SUBJECT EMAILID x\r\n").is_none());
        assert!(lift(b"s SEARCH HEADER EMAILID x\r\n").is_none());
        assert!(lift(b"s SEARCH HEADER X-Id EMAILID\r\n").is_none());
        let l = lift(b"s SEARCH SAVEDON 28-Dec-2014 OR SAVEDSINCE 1-Jan-2015 SAVEDATESUPPORTED SUBJECT savedon\r\n")
            .unwrap();
        let want = format!("s SEARCH ON 28-Dec-2014 OR SINCE 1-Jan-2015 UID {EXTRA_KEY} SUBJECT savedon\r\n");
        assert_eq!(l.command, want.as_bytes());
        assert_eq!(l.search_extra, vec![SearchExtra::SaveDateSupported]);
        let l = lift(b"f FETCH 998 (SAVEDATE)\r\n").unwrap();
        assert_eq!((l.fetch_extra, l.fetch_placeholder), (vec![FetchExtra::SaveDate], true));
        let l = lift(b"s SEARCH MODSEQ \"/flags/x\" all 5 (TO EMAILID) THREADID T\r\n").unwrap();
        assert_eq!(l.search_extra, vec![SearchExtra::ThreadId("T".into())]);
    }

    #[test]
    fn fetch_partial_is_lifted() {
        let l = lift(b"a UID FETCH 1:* (FLAGS) (PARTIAL -1:-30)\r\n").unwrap();
        assert_eq!(
            (l.command.as_slice(), l.fetch_partial.as_deref()),
            (&b"a UID FETCH 1:* (FLAGS)\r\n"[..], Some("-1:-30"))
        );
        let l = lift(b"a UID FETCH 1:* FLAGS (CHANGEDSINCE 5 partial 1:10)\r\n").unwrap();
        assert_eq!(l.command, b"a UID FETCH 1:* FLAGS (CHANGEDSINCE 5)\r\n");
        assert_eq!(l.fetch_partial.as_deref(), Some("1:10"));
        // The items' list is not the modifiers'.
        assert!(lift(b"a UID FETCH 1:* (PARTIAL 1:2)\r\n").is_none());
        assert!(lift(b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 5)\r\n").is_none());
        let l = lift(b"a UID FETCH 1:* (FLAGS EMAILID) (PARTIAL 1:2)\r\n").unwrap();
        assert_eq!(l.command, b"a UID FETCH 1:* (FLAGS)\r\n");
        assert_eq!((l.fetch_partial.as_deref(), l.fetch_extra), (Some("1:2"), vec![FetchExtra::EmailId]));
        let _ = lift(b"a FETCH 1 (F) (PARTIAL\r\n");
        let _ = lift(b"a FETCH 1 F)\r\n");
        let _ = lift(b"a FETCH ))\r\n");
    }

    #[test]
    fn create_use_and_multiappend_are_lifted() {
        let l = lift(b"t1 CREATE \"My (Sent)\" (USE (\\Sent \\Drafts))\r\n").unwrap();
        assert_eq!(l.command, b"t1 CREATE \"My (Sent)\"\r\n");
        assert_eq!(l.create_use, Some(vec!["\\Sent".to_string(), "\\Drafts".to_string()]));
        assert!(lift(b"t1 CREATE foo\r\n").is_none());
        assert!(lift(b"t1 CREATE foo (BAR)\r\n").is_none());
        let m = b"a APPEND {1}\r\nx (\\Seen) {2}\r\nab \"7-Feb-1994 22:43:04 -0800\" ~{3+}\r\n{}}\r\n";
        let l = lift(m).unwrap();
        assert_eq!(l.command, b"a APPEND {1}\r\nx (\\Seen) {2}\r\nab\r\n");
        assert_eq!(l.appends, vec![b"a APPEND {1}\r\nx \"7-Feb-1994 22:43:04 -0800\" ~{3+}\r\n{}}\r\n".to_vec()]);
        assert!(lift(b"a APPEND INBOX {2}\r\nab\r\n").is_none());
        assert!(nul_in_literal(b"a APPEND INBOX {3}\r\na\0b\r\n"));
        assert!(!nul_in_literal(b"a APPEND INBOX ~{3}\r\na\0b\r\n"));
        assert!(!nul_in_literal(b"a APPEND INBOX {3}\r\nabc\r\n"));
    }

    #[test]
    fn utf8_append_is_lifted() {
        let l = lift(b"a APPEND D (\\Seen) utf8 (~{2}\r\n\xc3\xa9)\r\n").unwrap();
        assert!(l.utf8_append);
        assert_eq!(l.command, b"a APPEND D (\\Seen) ~{2}\r\n\xc3\xa9\r\n");
        let l = lift(b"a APPEND D UTF8 (~{1+}\r\nx) CATENATE (TEXT {1}\r\ny UTF8 (~{1}\r\nz))\r\n").unwrap();
        assert!(l.utf8_append);
        assert_eq!(l.appends, vec![b"a APPEND D {0}\r\n\r\n".to_vec()]);
        assert_eq!(l.catenate[0].parts, vec![CatPart::Text(b"y".to_vec(), false), CatPart::Text(b"z".to_vec(), false)]);
        // A literal's bytes are not looked at; a malformed one is left to the decoder.
        let l = lift(b"a APPEND D {9}\r\n UTF8 (x\r\n");
        assert!(l.is_none_or(|l| !l.utf8_append));
        for bad in [
            &b"a APPEND D UTF8 ({1}\r\nx)\r\n"[..],
            b"a APPEND D UTF8 (~{1}\r\nx\r\n",
            b"a APPEND D UTF8 (~{1}\r\nx))\r\n",
        ] {
            assert!(lift(bad).is_none_or(|l| !l.utf8_append), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn catenate_is_lifted() {
        let m = b"a APPEND D (\\Seen) CATENATE (URL \"/D/;UID=2\" TEXT {2}\r\nab URL /X/;UID=1) ~{1}\r\nz CATENATE (TEXT ~{1+}\r\n\0)\r\n";
        let l = lift(m).unwrap();
        assert_eq!(l.command, b"a APPEND D (\\Seen) {0}\r\n\r\n");
        assert_eq!(l.appends, vec![b"a APPEND D ~{1}\r\nz\r\n".to_vec(), b"a APPEND D {0}\r\n\r\n".to_vec()]);
        let want = vec![
            CatPart::Url("/D/;UID=2".into()),
            CatPart::Text(b"ab".to_vec(), false),
            CatPart::Url("/X/;UID=1".into()),
        ];
        assert_eq!(
            l.catenate,
            vec![
                Catenate { index: 0, parts: want, too_many: false },
                Catenate { index: 2, parts: vec![CatPart::Text(vec![0], false)], too_many: false },
            ]
        );
        let l = lift(b"a APPEND D CATENATE (TEXT {1}\r\n\0)\r\n").unwrap();
        assert_eq!(l.catenate[0].parts, vec![CatPart::Text(vec![0], true)]);
        for bad in
            [&b"a APPEND D CATENATE ()\r\n"[..], b"a APPEND D CATENATE (TEXT x)\r\n", b"a APPEND D CATENATE (URL x\r\n"]
        {
            assert!(lift(bad).is_none_or(|l| l.catenate.is_empty()));
        }
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
            b"a SEARCH EMAILID",
            b"a SEARCH EMAILID {",
            b"a FETCH 1 (EMAILID",
            b"a FETCH 1 (EMAILID))\r\n",
            b"a FETCH 1 EMAILID]\r\n",
            b"a STATUS x (MAILBOXID\r\n",
            b"a STATUS {9}\r\n",
            b"a CREATE x (USE (\r\n",
            b"a CREATE {99}\r\nx\r\n",
            b"a APPEND x {2}\r\nab {99999999999}\r\n",
            b"a APPEND x {2}\r\nab {1}\r\n",
            b"a APPEND \"x {2}\r\nab\r\n",
            b"a APPEND x CATENATE (",
            b"a APPEND x CATENATE (TEXT {5}\r\nab",
            b"a APPEND x CATENATE (URL {9}\r\n",
            b"a APPEND x CATENATE (URL \"abc",
            b"a APPEND x ( CATENATE (TEXT {1}\r\na)\r\n",
            b"a APPEND x (\\Seen) \"date CATENATE (URL a)\r\n",
        ] {
            let _ = nul_in_literal(m);
            let _ = lift(m);
        }
    }
}
