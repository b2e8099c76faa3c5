//! CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 §4: RETURN (UPDATE), ADDTO,
//! REMOVEFROM, CANCELUPDATE, NOUPDATE), PARTIAL (RFC 9394, and RFC 5267
//! §4.4's older form) and SORT=DISPLAY (RFC 5957). Every ESEARCH line is
//! checked against its grammar by the harness (`check_esearch`).

mod common;
use common::*;

fn line_of<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in {out}")).trim_end()
}

/// The ESEARCH lines of `out` that carry `tag`.
fn esearch_lines<'a>(out: &'a str, tag: &str) -> Vec<&'a str> {
    let start = format!("* ESEARCH (TAG \"{tag}\")");
    out.lines().filter(|l| l.starts_with(&start)).map(|l| l.trim_end()).collect()
}

/// `1:3,7` for ascending numbers.
fn set(numbers: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < numbers.len() {
        let mut j = i;
        while j + 1 < numbers.len() && numbers[j + 1] == numbers[j] + 1 {
            j += 1;
        }
        out.push(if i == j { numbers[i].to_string() } else { format!("{}:{}", numbers[i], numbers[j]) });
        i = j + 1;
    }
    out.join(",")
}

/// A sequence set's numbers, in the order it lists them (`a:b` ascending).
fn expand(s: &str) -> Vec<u32> {
    s.split(',')
        .flat_map(|part| match part.split_once(':') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().unwrap(), b.parse().unwrap());
                (a.min(b)..=a.max(b)).collect::<Vec<_>>()
            }
            None => vec![part.parse().unwrap()],
        })
        .collect()
}

/// Applies an ESEARCH line's ADDTO and REMOVEFROM items to a client's copy
/// of the result, as RFC 5267 §4.3.3 and §4.3.4 say a client does: in
/// order; position 0 keeps mailbox order; a REMOVEFROM at a position must
/// find its numbers there.
fn apply(result: &mut Vec<u32>, line: &str) {
    let tokens: Vec<&str> = line.split(' ').collect();
    let mut i = 0;
    while i < tokens.len() {
        let add = match tokens[i] {
            "ADDTO" => true,
            "REMOVEFROM" => false,
            _ => {
                i += 1;
                continue;
            }
        };
        let mut j = i + 1;
        loop {
            let pos: usize = tokens[j].trim_start_matches('(').parse().unwrap();
            let last = tokens[j + 1].ends_with(')');
            let numbers = expand(tokens[j + 1].trim_end_matches(')'));
            match (add, pos) {
                (true, 0) => {
                    for n in numbers {
                        let at = result.partition_point(|&u| u < n);
                        assert!(result.get(at) != Some(&n), "{n} added twice: {line}");
                        result.insert(at, n);
                    }
                }
                (true, p) => {
                    assert!(p - 1 <= result.len(), "position {p} past the end: {line}");
                    for (k, n) in numbers.into_iter().enumerate() {
                        result.insert(p - 1 + k, n);
                    }
                }
                (false, 0) => {
                    for n in numbers {
                        let at = result.iter().position(|&u| u == n).unwrap_or_else(|| panic!("{n} not in: {line}"));
                        result.remove(at);
                    }
                }
                (false, p) => {
                    assert_eq!(result.get(p - 1..p - 1 + numbers.len()), Some(&numbers[..]), "{line}");
                    result.drain(p - 1..p - 1 + numbers.len());
                }
            }
            j += 2;
            if last {
                break;
            }
        }
        i = j;
    }
}

/// The numbers of an ESEARCH line's ALL item, in order (none: empty).
fn all_of(line: &str) -> Vec<u32> {
    let tokens: Vec<&str> = line.split(' ').collect();
    tokens.iter().position(|t| *t == "ALL").map_or(Vec::new(), |i| expand(tokens[i + 1]))
}

fn message(subject: &str, from: &str) -> String {
    format!(
        "From: {from}\r\nTo: bob@example.com\r\nSubject: {subject}\r\nDate: Mon, 7 Feb 2022 10:00:00 +0000\r\n\r\nbody\r\n"
    )
}

/// Two sessions on INBOX: `a` watches, `b` changes.
fn two_sessions(srv: &Server) -> (Client, Client) {
    let mut a = Client::login(srv);
    let mut b = Client::login(srv);
    a.ok("s SELECT INBOX");
    b.ok("s SELECT INBOX");
    (a, b)
}

#[test]
fn capabilities_name_the_extensions() {
    let srv = server();
    let mut c = Client::login(&srv);
    let caps = line_of(&c.ok("k CAPABILITY"), "* CAPABILITY").to_string();
    for cap in ["CONTEXT=SEARCH", "CONTEXT=SORT", "PARTIAL", "SORT=DISPLAY", "ESORT", "ESEARCH"] {
        assert!(caps.split(' ').any(|w| w == cap), "{cap} missing: {caps}");
    }
}

/// RFC 9394 §3.1 and RFC 5267 §4.4: PARTIAL pages a result from its first
/// or (negative) its last message, for SEARCH, UID SEARCH, SORT, UID SORT.
#[test]
fn partial_pages_search_and_sort_results() {
    let srv = server();
    let mut c = Client::login(&srv);
    // Ten messages; 3 and 7 deleted, 5 junk.
    let flags = |i: u32| match i {
        3 | 7 => "\\Deleted",
        5 => "$Junk",
        _ => "",
    };
    for i in 1..=10u32 {
        c.append("INBOX", flags(i), &message(&format!("s{i:02}"), &format!("u{i}@x")));
    }
    c.ok("s SELECT INBOX");
    let wanted: Vec<u32> = (1..=10).filter(|&i| flags(i).is_empty()).collect();
    let n = wanted.len();
    // The RFC's own example: the newest 100 (here all seven).
    let out = c.ok("A01 UID SEARCH RETURN (PARTIAL -1:-100) UNDELETED UNKEYWORD $Junk");
    assert_eq!(esearch_lines(&out, "A01"), [format!("* ESEARCH (TAG \"A01\") UID PARTIAL (-1:-100 {})", set(&wanted))]);
    let cases = [
        ("1:3", wanted[..3].to_vec()),
        ("-1:-3", wanted[n - 3..].to_vec()),
        ("-3:-1", wanted[n - 3..].to_vec()),
        ("6:100", wanted[5..].to_vec()),
        ("-2:-5", wanted[n - 5..n - 1].to_vec()),
        ("50:60", vec![]),
        ("-50:-60", vec![]),
    ];
    for (i, (range, expect)) in cases.iter().enumerate() {
        let tag = format!("p{i}");
        let out = c.ok(&format!("{tag} UID SEARCH RETURN (PARTIAL {range}) UNDELETED UNKEYWORD $Junk"));
        let results = if expect.is_empty() { "NIL".to_string() } else { set(expect) };
        // A reversed range is answered in order (RFC 9394 §4: 500:400 is 400:500).
        let shown = match range.split_once(':') {
            Some((a, b))
                if a.trim_start_matches('-').parse::<u32>().unwrap() > b.trim_start_matches('-').parse().unwrap() =>
            {
                format!("{b}:{a}")
            }
            _ => range.to_string(),
        };
        assert_eq!(
            esearch_lines(&out, &tag),
            [format!("* ESEARCH (TAG \"{tag}\") UID PARTIAL ({shown} {results})")],
            "{range}"
        );
    }
    // Sequence numbers (here equal to UIDs), with the other options.
    let out = c.ok("q SEARCH RETURN (MIN COUNT PARTIAL 2:3) UNDELETED UNKEYWORD $Junk");
    assert_eq!(
        esearch_lines(&out, "q"),
        [format!("* ESEARCH (TAG \"q\") MIN {} COUNT {n} PARTIAL (2:3 {})", wanted[0], set(&wanted[1..3]))]
    );
    // SORT: pages of the sort order, each number on its own.
    let mut by_subject_desc: Vec<u32> = (1..=10).collect();
    by_subject_desc.reverse();
    let out = c.ok("r UID SORT RETURN (PARTIAL 1:3) (REVERSE SUBJECT) UTF-8 ALL");
    let first: Vec<String> = by_subject_desc[..3].iter().map(|u| u.to_string()).collect();
    assert_eq!(esearch_lines(&out, "r"), [format!("* ESEARCH (TAG \"r\") UID PARTIAL (1:3 {})", first.join(","))]);
    let out = c.ok("r SORT RETURN (COUNT PARTIAL -1:-2) (REVERSE SUBJECT) UTF-8 ALL");
    assert_eq!(esearch_lines(&out, "r"), ["* ESEARCH (TAG \"r\") COUNT 10 PARTIAL (-1:-2 2,1)"]);
    // SAVE keeps what PARTIAL returned.
    c.ok("v UID SEARCH RETURN (SAVE PARTIAL -1:-2) UNDELETED UNKEYWORD $Junk");
    let out = c.ok("f UID FETCH $ (UID)");
    let fetched: Vec<u32> =
        out.lines().filter_map(|l| l.split("(UID ").nth(1)?.split(')').next()?.parse().ok()).collect();
    assert_eq!(fetched, wanted[n - 2..]);
    // Bad ranges and combinations: BAD, and the session goes on.
    for bad in [
        "PARTIAL 1:5 ALL",
        "ALL PARTIAL 1:5",
        "PARTIAL 1:5 PARTIAL 6:9",
        "PARTIAL",
        "PARTIAL 0:5",
        "PARTIAL 1:*",
        "PARTIAL -1:5",
        "PARTIAL 5",
        "PARTIAL 1:4294967296",
    ] {
        let out = c.send(&format!("b UID SEARCH RETURN ({bad}) ALL"));
        assert!(out.contains("b BAD"), "{bad}: {out}");
        assert!(!out.contains("* ESEARCH"), "{bad}: {out}");
        let out = c.send(&format!("b UID SORT RETURN ({bad}) (ARRIVAL) UTF-8 ALL"));
        assert!(out.contains("b BAD"), "{bad}: {out}");
    }
    c.ok("n NOOP");
}

/// RFC 5267 §4.3's examples: a UID SEARCH with UPDATE hears of messages
/// entering its result (a flag change: ADDTO after the FETCH; a new
/// message: after the EXISTS) and leaving it (REMOVEFROM before the
/// EXPUNGE), until CANCELUPDATE; reusing its tag is BAD.
#[test]
fn update_tells_of_messages_entering_and_leaving_a_search() {
    let srv = server();
    let (mut a, mut b) = two_sessions(&srv);
    for i in 1..=4 {
        b.append("INBOX", "", &message(&format!("m{i}"), "x@y"));
    }
    a.ok("n NOOP");
    let out = a.ok("B01 UID SEARCH RETURN (UPDATE COUNT) DELETED KEYWORD $Junk");
    assert_eq!(esearch_lines(&out, "B01"), ["* ESEARCH (TAG \"B01\") UID COUNT 0"]);
    assert!(out.contains("B01 OK"), "{out}");
    // Note that the following is rejected, and has no effect.
    let out = a.send("B01 UID SORT RETURN (UPDATE) (DATE) UTF-8 FLAGGED");
    assert!(out.contains("B01 BAD"), "{out}");
    assert!(esearch_lines(&out, "B01").is_empty(), "{out}");
    b.ok("t UID STORE 2:3 +FLAGS (\\Deleted $Junk)");
    b.ok("t UID STORE 4 +FLAGS (\\Deleted)");
    let out = a.ok("n NOOP");
    assert_eq!(esearch_lines(&out, "B01"), ["* ESEARCH (TAG \"B01\") UID ADDTO (0 2:3)"]);
    let fetch = out.find("* 3 FETCH").expect("the FETCH");
    assert!(out.find("* ESEARCH").unwrap() > fetch, "ADDTO after the FETCH: {out}");
    // Expunged: REMOVEFROM first, while the client still has the messages.
    b.ok("x EXPUNGE");
    let out = a.ok("n NOOP");
    assert_eq!(esearch_lines(&out, "B01"), ["* ESEARCH (TAG \"B01\") UID REMOVEFROM (0 2:3)"]);
    assert!(out.find("* ESEARCH").unwrap() < out.find(" EXPUNGE").expect("EXPUNGE"), "{out}");
    // A new message that matches: ADDTO after the EXISTS.
    b.append("INBOX", "\\Deleted $Junk", &message("new", "x@y"));
    let out = a.ok("n NOOP");
    assert_eq!(esearch_lines(&out, "B01"), ["* ESEARCH (TAG \"B01\") UID ADDTO (0 5)"]);
    assert!(out.find("* ESEARCH").unwrap() > out.find(" EXISTS").expect("EXISTS"), "{out}");
    // A change that leaves the result.
    b.ok("t UID STORE 5 -FLAGS ($Junk)");
    let out = a.ok("n NOOP");
    assert_eq!(esearch_lines(&out, "B01"), ["* ESEARCH (TAG \"B01\") UID REMOVEFROM (0 5)"]);
    // A change that does not touch the result says nothing of it.
    b.ok("t UID STORE 1 +FLAGS (\\Seen)");
    let out = a.ok("n NOOP");
    assert!(out.contains("* 1 FETCH") && esearch_lines(&out, "B01").is_empty(), "{out}");
    // CANCELUPDATE: no further updates.
    let out = a.send("B04 CANCELUPDATE \"B01\"");
    assert!(out.contains("B04 OK"), "{out}");
    b.ok("t UID STORE 5 +FLAGS ($Junk)");
    let out = a.ok("n NOOP");
    assert!(out.contains("FETCH") && !out.contains("ESEARCH"), "{out}");
    // The tag is free again.
    a.ok("B01 UID SEARCH RETURN (UPDATE) ALL");
}

/// SEARCH (not UID SEARCH) with UPDATE speaks in sequence numbers: a
/// REMOVEFROM before the EXPUNGE, numbered as the client still numbers
/// them; message numbers in the program are read once (RFC 5267 §4.3).
#[test]
fn update_in_sequence_numbers_and_numbers_read_once() {
    let srv = server();
    let (mut a, mut b) = two_sessions(&srv);
    for i in 1..=5 {
        b.append("INBOX", "", &message(&format!("m{i}"), "x@y"));
    }
    a.ok("n NOOP");
    let out = a.ok("C01 SEARCH RETURN (UPDATE ALL) FLAGGED");
    assert_eq!(esearch_lines(&out, "C01"), ["* ESEARCH (TAG \"C01\")"]);
    // `2:3` names UIDs 2 and 3 from now on, whatever their numbers become.
    a.ok("D01 SEARCH RETURN (UPDATE) 2:3 SEEN");
    b.ok("t UID STORE 1,4 +FLAGS (\\Flagged)");
    let out = a.ok("n NOOP");
    assert_eq!(esearch_lines(&out, "C01"), ["* ESEARCH (TAG \"C01\") ADDTO (0 1,4)"]);
    b.ok("t UID STORE 1 +FLAGS (\\Deleted)");
    b.ok("x EXPUNGE");
    let out = a.ok("n NOOP");
    assert_eq!(esearch_lines(&out, "C01"), ["* ESEARCH (TAG \"C01\") REMOVEFROM (0 1)"]);
    assert!(out.find("* ESEARCH").unwrap() < out.find("* 1 EXPUNGE").expect("EXPUNGE"), "{out}");
    // UID 4 is message 3 now; UIDs 2 and 3 are messages 1 and 2.
    b.ok("t UID STORE 4 +FLAGS (\\Seen)");
    let out = a.ok("n NOOP");
    assert!(esearch_lines(&out, "D01").is_empty(), "message 3 now is not the message 3 asked for: {out}");
    b.ok("t UID STORE 3 +FLAGS (\\Seen)");
    let out = a.ok("n NOOP");
    assert_eq!(esearch_lines(&out, "D01"), ["* ESEARCH (TAG \"D01\") ADDTO (0 2)"]);
    // A new flagged message: numbered after the EXISTS.
    b.append("INBOX", "\\Flagged", &message("new", "x@y"));
    let out = a.ok("n NOOP");
    assert!(out.contains("* 5 EXISTS"), "{out}");
    assert_eq!(esearch_lines(&out, "C01"), ["* ESEARCH (TAG \"C01\") ADDTO (0 5)"]);
}

/// Updates reach a client in IDLE, as its EXISTS and FETCH do.
#[test]
fn update_reaches_an_idling_client() {
    let srv = server();
    let (mut a, mut b) = two_sessions(&srv);
    b.append("INBOX", "", &message("m", "x@y"));
    a.ok("n NOOP");
    a.ok("I01 UID SEARCH RETURN (UPDATE) UNSEEN");
    assert!(a.send("i IDLE").starts_with("+ "));
    b.ok("t UID STORE 1 +FLAGS (\\Seen)");
    a.s.account_changed();
    let out = a.output();
    assert_eq!(esearch_lines(&out, "I01"), ["* ESEARCH (TAG \"I01\") UID REMOVEFROM (0 1)"]);
    let out = a.raw(b"DONE\r\n");
    assert!(out.contains("i OK"), "{out}");
}

/// A deterministic stream of changes from another session: after each,
/// the client's copy of each updating result, kept by applying ADDTO and
/// REMOVEFROM, equals the result asked afresh — for SEARCH (position 0)
/// and for SORT (positions in sort order), forward and reverse.
#[test]
fn updated_results_equal_fresh_ones_through_many_changes() {
    let srv = server();
    let (mut a, mut b) = two_sessions(&srv);
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let append = |b: &mut Client, r: u64, r2: u64| {
        let from = if r2.is_multiple_of(2) { format!("\"N{}\" <z@x>", r2 % 5) } else { format!("a{}@x", r2 % 7) };
        b.append(
            "INBOX",
            if r.is_multiple_of(3) { "\\Seen" } else { "" },
            &message(&format!("topic {}", r % 6), &from),
        );
    };
    for i in 0..8 {
        append(&mut b, i, i * 3);
    }
    a.ok("n NOOP");
    let programs = [
        ("S1", "UID SEARCH RETURN (UPDATE ALL) UNSEEN"),
        ("S2", "UID SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 UNSEEN"),
        ("S3", "UID SORT RETURN (UPDATE ALL) (REVERSE DISPLAYFROM SIZE) UTF-8 OR FLAGGED UNSEEN"),
        ("S4", "UID SORT RETURN (UPDATE ALL) (REVERSE ARRIVAL) UTF-8 NOT DELETED"),
    ];
    let mut kept: Vec<Vec<u32>> = Vec::new();
    for (tag, p) in programs {
        let out = a.ok(&format!("{tag} {p}"));
        kept.push(all_of(esearch_lines(&out, tag)[0]));
    }
    for step in 0..40 {
        let uids = all_of(esearch_lines(&b.ok("u UID SEARCH RETURN (ALL) ALL"), "u").first().copied().unwrap_or(""));
        let pick = |r: u64| uids.get(r as usize % uids.len().max(1)).copied();
        let r = next(100);
        let r2 = next(100);
        match (next(6), pick(r)) {
            (0, Some(u)) => {
                b.ok(&format!("t UID STORE {u} +FLAGS (\\Seen)"));
            }
            (1, Some(u)) => {
                b.ok(&format!("t UID STORE {u} -FLAGS (\\Seen)"));
            }
            (2, Some(u)) => {
                b.ok(&format!("t UID STORE {u} +FLAGS (\\Flagged \\Deleted)"));
            }
            (3, Some(u)) => {
                b.ok(&format!("t UID STORE {u} +FLAGS (\\Deleted)"));
                b.ok(&format!("x UID EXPUNGE {u}"));
            }
            (4, Some(u)) => {
                b.ok(&format!("t UID STORE {u} -FLAGS (\\Flagged \\Deleted)"));
            }
            _ => append(&mut b, r, r2),
        }
        let out = a.ok("n NOOP");
        for (k, (tag, p)) in programs.iter().enumerate() {
            for l in esearch_lines(&out, tag) {
                apply(&mut kept[k], l);
            }
            let fresh_out = a.ok(&format!("f{k} {}", p.replace("UPDATE ", "")));
            let fresh = all_of(esearch_lines(&fresh_out, &format!("f{k}"))[0]);
            assert_eq!(kept[k], fresh, "step {step}, {tag}: {out}");
        }
    }
}

/// RFC 5267 §4.3.1: past its limit of updating searches the server still
/// answers, with `* NO [NOUPDATE "tag"]` and no updates; CANCELUPDATE
/// frees a place; a SELECT ends them all.
#[test]
fn updating_searches_are_bounded() {
    let max = starling_imap::context::CONTEXTS_MAX;
    let srv = server();
    let (mut a, mut b) = two_sessions(&srv);
    b.append("INBOX", "", &message("m", "x@y"));
    a.ok("n NOOP");
    for i in 1..=max {
        let out = a.ok(&format!("t{i} SEARCH RETURN (UPDATE COUNT) ALL"));
        assert!(!out.contains("NOUPDATE"), "{out}");
    }
    let over = format!("t{}", max + 1);
    let out = a.ok(&format!("{over} UID SORT RETURN (UPDATE COUNT) (DATE) UTF-8 ALL"));
    assert!(out.contains(&format!("* NO [NOUPDATE \"{over}\"]")), "{out}");
    assert_eq!(esearch_lines(&out, &over), [format!("* ESEARCH (TAG \"{over}\") UID COUNT 1")], "still answered");
    b.append("INBOX", "", &message("m2", "x@y"));
    let out = a.ok("n NOOP");
    assert_eq!(out.lines().filter(|l| l.contains("ADDTO (0 2)")).count(), max, "{out}");
    assert!(esearch_lines(&out, &over).is_empty(), "{out}");
    // CANCELUPDATE frees places; several tags at once, an unknown one too.
    a.ok("c CANCELUPDATE \"t1\" \"t2\" \"nosuch\"");
    let out = a.ok("u1 SEARCH RETURN (UPDATE) ALL");
    assert!(!out.contains("NOUPDATE"), "{out}");
    let out = a.ok("u2 SEARCH RETURN (UPDATE) ALL");
    assert!(!out.contains("NOUPDATE"), "{out}");
    let out = a.ok("u3 SEARCH RETURN (UPDATE) ALL");
    assert!(out.contains("* NO [NOUPDATE \"u3\"]"), "{out}");
    for bad in ["c CANCELUPDATE", "c CANCELUPDATE t3", "c CANCELUPDATE \"t3", "c CANCELUPDATE  \"t3\""] {
        let out = a.send(bad);
        assert!(out.contains("c BAD"), "{bad}: {out}");
    }
    // A new SELECT ends every update.
    a.ok("s SELECT INBOX");
    b.append("INBOX", "", &message("m3", "x@y"));
    let out = a.ok("n NOOP");
    assert!(out.contains("EXISTS") && !out.contains("ESEARCH"), "{out}");
    a.ok("c CLOSE");
    assert!(a.send("c CANCELUPDATE \"t3\"").contains("c BAD"));
    let mut fresh = Client::connect(&srv, true);
    assert!(fresh.send("c CANCELUPDATE \"t3\"").contains("c BAD"));
}

/// SORT=DISPLAY (RFC 5957): DISPLAYFROM and DISPLAYTO sort by the first
/// address's display name (RFC 2047 decoded), or its address when it has
/// none, compared as i;ascii-casemap; FROM and TO still sort by mailbox.
#[test]
fn sort_display_uses_display_names() {
    let srv = server();
    let mut c = Client::login(&srv);
    let msgs = [
        ("\"Zoe Able\" <aaa@x>", "\"bob\" <zzz@y>"),
        ("mmm@x", "ccc@y"),
        ("\"adam Young\" <zzz@x>", "Yan <aaa@y>"),
        ("=?UTF-8?Q?=C3=89mile?= <bbb@x>", "Undisclosed recipients:;"),
        ("\"\" <abc@x>", "\"Zed\" <b@y>, \"Al\" <c@y>"),
    ];
    for (from, to) in msgs {
        let m = format!("From: {from}\r\nTo: {to}\r\nSubject: s\r\nDate: Mon, 7 Feb 2022 10:00:00 +0000\r\n\r\nb\r\n");
        c.append("INBOX", "", &m);
    }
    c.ok("s SELECT INBOX");
    let sort = |c: &mut Client, criteria: &str| -> String {
        line_of(&c.ok(&format!("q SORT ({criteria}) UTF-8 ALL")), "* SORT").to_string()
    };
    // Display values: ZOE ABLE, MMM@X, ADAM YOUNG, ÉMILE (non-ASCII sorts last), ABC@X.
    assert_eq!(sort(&mut c, "DISPLAYFROM"), "* SORT 5 3 2 1 4");
    assert_eq!(sort(&mut c, "FROM"), "* SORT 1 5 4 2 3", "FROM is the mailbox");
    // BOB, CCC@Y, YAN, UNDISCLOSED RECIPIENTS (the group's name), ZED.
    assert_eq!(sort(&mut c, "DISPLAYTO"), "* SORT 1 2 4 3 5");
    assert_eq!(sort(&mut c, "REVERSE DISPLAYTO"), "* SORT 5 3 4 2 1");
    let out = c.ok("e UID SORT RETURN (ALL) (DISPLAYFROM) UTF-8 NOT FROM mmm");
    assert_eq!(esearch_lines(&out, "e"), ["* ESEARCH (TAG \"e\") UID ALL 5,3,1,4"]);
}

/// RFC 9394 §3.2: UID FETCH's PARTIAL modifier fetches only the messages
/// of the set (after CHANGEDSINCE) its range names, counted in UID order
/// from the first or, negative, from the last.
#[test]
fn uid_fetch_partial_pages_the_set() {
    let srv = server();
    let mut c = Client::login(&srv);
    for i in 1..=6 {
        c.append("INBOX", "", &message(&format!("m{i}"), "x@y"));
    }
    c.ok("s SELECT INBOX");
    let uids = |out: &str| -> Vec<u32> {
        out.lines().filter_map(|l| l.split("UID ").nth(1)?.split([' ', ')']).next()?.parse().ok()).collect()
    };
    // The RFC's example: the last 30 (here all six), then pages.
    assert_eq!(uids(&c.ok("a UID FETCH 1:* (FLAGS) (PARTIAL -1:-30)")), (1..=6).collect::<Vec<u32>>());
    assert_eq!(uids(&c.ok("a UID FETCH 1:* (FLAGS) (PARTIAL -1:-2)")), [5, 6]);
    assert_eq!(uids(&c.ok("a UID FETCH 2:* (FLAGS) (PARTIAL 2:3)")), [3, 4]);
    assert_eq!(uids(&c.ok("a UID FETCH 1:* FLAGS (PARTIAL 5:4)")), [4, 5]);
    assert!(uids(&c.ok("a UID FETCH 1:* (FLAGS) (PARTIAL 7:9)")).is_empty());
    // After CHANGEDSINCE: of the changed messages only.
    let out = c.ok("t UID FETCH 6 (MODSEQ)");
    let modseq: u64 = out.lines().find_map(|l| l.split("MODSEQ (").nth(1)?.split(')').next()?.parse().ok()).unwrap();
    c.ok("t UID STORE 2,4,6 +FLAGS (\\Flagged)");
    assert_eq!(uids(&c.ok(&format!("a UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} PARTIAL -1:-2)"))), [4, 6]);
    for bad in [
        "a FETCH 1:* (FLAGS) (PARTIAL 1:2)",
        "a UID FETCH 1:* (FLAGS) (PARTIAL 0:2)",
        "a UID FETCH 1:* (FLAGS) (PARTIAL -1:2)",
    ] {
        let out = c.send(bad);
        assert!(out.contains("a BAD") && !out.contains("FETCH ("), "{bad}: {out}");
    }
    c.ok("n NOOP");
}
