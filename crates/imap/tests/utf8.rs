//! UTF8=ACCEPT (RFC 6855) and IMAP4rev2's UTF-8 mailbox names (RFC 9051
//! §5.1): names are stored in modified UTF-7 (RFC 3501 §5.1.3), and a
//! client that enabled either sees and writes them in UTF-8; APPEND's
//! `UTF8 (literal8)`; SEARCH, SORT and THREAD's CHARSET once enabled;
//! invalid encodings and the name bounds.

mod common;
use common::*;

/// RFC 3501 §5.1.3's example name, as a UTF-8 client writes it.
const PETER: &str = "~peter/mail/\u{53f0}\u{5317}/\u{65e5}\u{672c}\u{8a9e}";
/// The same in modified UTF-7 (RFC 3501 §5.1.3).
const PETER7: &str = "~peter/mail/&U,BTFw-/&ZeVnLIqe-";

fn utf8_client(srv: &Server) -> Client {
    let mut c = Client::login(srv);
    let out = c.ok("u0 ENABLE UTF8=ACCEPT");
    assert!(out.contains("* ENABLED UTF8=ACCEPT\r\n"), "{out}");
    c
}

/// The names a `LIST "" *` shows, in order, as written on the wire.
fn listed(c: &mut Client) -> Vec<String> {
    let out = c.ok("l LIST \"\" *");
    out.lines()
        .filter_map(|l| l.strip_prefix("* LIST "))
        .map(|l| l.splitn(3, ' ').nth(2).unwrap().to_string())
        .collect()
}

fn count(c: &mut Client, mailbox: &str) -> u64 {
    let out = c.ok(&format!("m STATUS {mailbox} (MESSAGES)"));
    let at = out.find("MESSAGES ").unwrap() + "MESSAGES ".len();
    out[at..].split(|ch: char| !ch.is_ascii_digit()).next().unwrap().parse().unwrap()
}

#[test]
fn utf8_accept_is_advertised_and_enabled() {
    let srv = server();
    let mut c = Client::login(&srv);
    let caps = c.ok("c CAPABILITY");
    assert!(caps.split_whitespace().any(|w| w == "UTF8=ACCEPT"), "{caps}");
    // RFC 5161 §3.1's form, with RFC 6855 §3's capability.
    let out = c.ok("t1 ENABLE UTF8=ACCEPT");
    assert_eq!(out, "* ENABLED UTF8=ACCEPT\r\nt1 OK ENABLE completed\r\n");
    // Before login it is not taken (RFC 6855 §3: authenticated state).
    let mut d = Client::connect(&srv, true);
    assert!(d.send("t2 ENABLE UTF8=ACCEPT").starts_with("t2 BAD"));
}

/// RFC 3501 §5.1.3's example, created by a modified UTF-7 client, is the
/// UTF-8 client's `~peter/mail/台北/日本語`, and back: one mailbox, each
/// client in its own encoding, through every command that names one.
#[test]
fn a_utf7_client_and_a_utf8_client_see_the_same_mailbox() {
    let srv = server();
    let mut old = Client::login(&srv);
    let mut new = utf8_client(&srv);
    old.ok(&format!("o1 CREATE {PETER7}"));
    let names = listed(&mut new);
    assert!(names.contains(&format!("\"{PETER}\"")), "{names:?}");
    assert!(names.contains(&"\"~peter/mail/\u{53f0}\u{5317}\"".to_string()), "{names:?}");
    assert!(listed(&mut old).contains(&PETER7.to_string()));
    // The UTF-8 client names it in UTF-8 (quoted, RFC 6855 §3) …
    let out = new.ok(&format!("n1 STATUS \"{PETER}\" (MESSAGES)"));
    assert!(out.starts_with(&format!("* STATUS \"{PETER}\" (MESSAGES 0)\r\n")), "{out}");
    new.ok(&format!("n2 SELECT \"{PETER}\""));
    new.ok("n3 UNSELECT");
    // … and creates one: the other client sees it in modified UTF-7.
    new.ok("n4 CREATE \"Entw\u{fc}rfe\"");
    assert!(listed(&mut old).contains(&"Entw&APw-rfe".to_string()));
    assert!(listed(&mut new).contains(&"\"Entw\u{fc}rfe\"".to_string()));
    assert!(new.send("n5 CREATE Entw&APw-rfe").starts_with("n5 OK"), "a UTF-8 client's `&` is an `&`");
    assert!(listed(&mut old).contains(&"Entw&-APw-rfe".to_string()));
    // APPEND, COPY and MOVE targets, in either encoding.
    new.append("\"Entw\u{fc}rfe\"", "", PLAIN);
    assert_eq!(count(&mut old, "Entw&APw-rfe"), 1);
    new.ok("n6 SELECT \"Entw\u{fc}rfe\"");
    new.ok(&format!("n7 COPY 1 \"{PETER}\""));
    new.ok("n8 MOVE 1 \"~peter/mail/\u{53f0}\u{5317}\"");
    assert_eq!(count(&mut old, PETER7), 1);
    assert_eq!(count(&mut old, "~peter/mail/&U,BTFw-"), 1);
    assert_eq!(count(&mut new, "\"Entw\u{fc}rfe\""), 0);
    new.ok("n9 UNSELECT");
    // SUBSCRIBE and LSUB; RENAME and DELETE.
    old.ok("o2 SUBSCRIBE Entw&APw-rfe");
    let out = new.ok("n10 LSUB \"\" *");
    assert!(out.starts_with("* LSUB (") && out.contains(") \"/\" \"Entw\u{fc}rfe\"\r\n"), "{out}");
    new.ok("n11 RENAME \"Entw\u{fc}rfe\" \"\u{00c9}bauches\"");
    let names = listed(&mut old);
    assert!(names.contains(&"&AMk-bauches".to_string()) && !names.contains(&"Entw&APw-rfe".to_string()), "{names:?}");
    old.ok("o3 DELETE &AMk-bauches");
    assert!(!listed(&mut new).iter().any(|n| n.contains("bauches")));
    // A client that enabled IMAP4rev2 (RFC 9051 §5.1) reads UTF-8 too.
    let mut rev2 = Client::login(&srv);
    rev2.ok("r1 ENABLE IMAP4rev2");
    assert!(listed(&mut rev2).contains(&format!("\"{PETER}\"")));
    let out = rev2.ok(&format!("r2 LIST \"\" \"{PETER}\" RETURN (STATUS (MESSAGES))"));
    assert!(out.contains(&format!("* STATUS \"{PETER}\" (MESSAGES 1)")), "{out}");
    // GETQUOTAROOT echoes the name as the client writes it.
    let out = new.ok(&format!("n12 GETQUOTAROOT \"{PETER}\""));
    assert!(out.starts_with(&format!("* QUOTAROOT \"{PETER}\"")), "{out}");
}

/// LIST patterns are matched against the names as the client sees them:
/// a UTF-8 `*` after a character whose base64 run goes on still matches.
#[test]
fn list_patterns_match_what_the_client_sees() {
    let srv = server();
    let mut new = utf8_client(&srv);
    let mut old = Client::login(&srv);
    new.ok("n1 CREATE \"\u{53f0}\u{5317}\"");
    new.ok("n2 CREATE \"\u{53f0}\u{5317}/\u{65e5}\u{672c}\"");
    let out = new.ok("n3 LIST \"\" \"\u{53f0}*\"");
    assert_eq!(out.matches("* LIST").count(), 2, "{out}");
    let out = new.ok("n4 LIST \"\u{53f0}\u{5317}/\" \"%\"");
    assert!(out.contains("* LIST (\\HasNoChildren) \"/\" \"\u{53f0}\u{5317}/\u{65e5}\u{672c}\"\r\n"), "{out}");
    // The modified UTF-7 client matches the stored form.
    let out = old.ok("o1 LIST \"\" \"&U,BTFw-/%\"");
    assert!(out.contains("* LIST (\\HasNoChildren) \"/\" &U,BTFw-/&ZeVnLA-\r\n"), "{out}");
    // NOTIFY's names too: a rename reported with OLDNAME, in UTF-8.
    new.ok("n5 NOTIFY SET (subtree \"\u{53f0}\u{5317}\" (MailboxName))");
    old.ok("o2 RENAME &U,BTFw-/&ZeVnLA- &U,BTFw-/x");
    new.s.account_changed();
    let out = new.output();
    assert_eq!(
        out,
        "* LIST (\\HasNoChildren) \"/\" \"\u{53f0}\u{5317}/x\" (\"OLDNAME\" (\"\u{53f0}\u{5317}/\u{65e5}\u{672c}\"))\r\n"
    );
}

/// Invalid modified UTF-7 from one client, invalid UTF-8 or excluded
/// characters from the other: BAD, nothing created, the session goes on.
/// A UTF-8 name is taken in NFC (RFC 6855 §3, RFC 5198).
#[test]
fn invalid_names_are_refused_and_nothing_changes() {
    let srv = server();
    let mut old = Client::login(&srv);
    let mut new = utf8_client(&srv);
    let before = listed(&mut old);
    for (tag, name) in [("o1", "R&D"), ("o2", "&AGE-"), ("o3", "&U,BTFw-&ZeVnLIqe-"), ("o4", "&AOl-")] {
        let out = old.send(&format!("{tag} CREATE \"{name}\""));
        assert!(out.starts_with(&format!("{tag} BAD invalid modified UTF-7")), "{name}: {out}");
    }
    let out = old.send("o5 CREATE \"caf\u{e9}\"");
    assert!(out.starts_with("o5 BAD 8-bit mailbox name"), "{out}");
    let out = old.raw(b"o6 RENAME INBOX {5+}\r\ncaf\xc3\xa9\r\n");
    assert!(out.starts_with("o6 BAD 8-bit mailbox name"), "{out}");
    let out = new.raw(b"n1 CREATE {2+}\r\n\xff\xfe\r\n");
    assert!(out.starts_with("n1 BAD mailbox name is not valid UTF-8"), "{out}");
    for (tag, c) in [("n2", '\u{85}'), ("n3", '\u{2028}'), ("n4", '\u{2029}'), ("n5", '\u{7f}')] {
        let out = new.raw(format!("{tag} CREATE {{{}+}}\r\na{c}b\r\n", 2 + c.len_utf8()).as_bytes());
        assert!(out.starts_with(&format!("{tag} BAD mailbox name holds U+")), "{c:?}: {out}");
    }
    let out = new.raw(b"n6 LIST \"\" {2+}\r\n\xc3*\r\n");
    assert!(out.starts_with("n6 BAD mailbox pattern is not valid UTF-8"), "{out}");
    assert_eq!(listed(&mut old), before, "nothing created");
    assert!(old.ok("o7 NOOP").contains("o7 OK"));
    // NFD in, NFC stored: `e` + U+0301 is `é`, `&AOk-` to the other client.
    new.ok("n7 CREATE \"e\u{301}t\u{e9}\"");
    assert!(listed(&mut new).contains(&"\"\u{e9}t\u{e9}\"".to_string()));
    assert!(listed(&mut old).contains(&"&AOk-t&AOk-".to_string()));
    assert_eq!(count(&mut new, "\"e\u{301}t\u{e9}\""), 0);
    // NOTIFY's names are checked the same way.
    let out = old.send("o8 NOTIFY SET (mailboxes R&D (MailboxName))");
    assert!(out.starts_with("o8 BAD invalid modified UTF-7"), "{out}");
}

/// Names stored before they were checked (not modified UTF-7: `R&D`, raw
/// UTF-8 from a literal) are listed as they are to both clients and stay
/// reachable by that name.
#[test]
fn names_stored_before_checks_stay_reachable() {
    let srv = server();
    srv.shared
        .store
        .write("alice", |w| {
            w.replica().create_mailbox("R&D", None, None)?;
            w.replica().create_mailbox("Caf\u{e9}", None, None)?;
            Ok(())
        })
        .unwrap();
    let mut old = Client::login(&srv);
    let mut new = utf8_client(&srv);
    assert!(listed(&mut new).contains(&"R&D".to_string()));
    assert!(listed(&mut new).contains(&"\"Caf\u{e9}\"".to_string()));
    assert!(listed(&mut old).contains(&"R&D".to_string()));
    old.ok("o1 SELECT R&D");
    new.ok("n1 SELECT R&D");
    new.ok("n2 STATUS \"Caf\u{e9}\" (MESSAGES)");
    let out = old.raw(b"o2 STATUS {5+}\r\nCaf\xc3\xa9 (MESSAGES)\r\n");
    assert!(out.contains("o2 OK"), "{out}");
    // A new name of that form is refused still.
    assert!(old.send("o3 CREATE R&E").starts_with("o3 BAD"));
    new.ok("n3 RENAME R&D R&E");
    assert!(listed(&mut old).contains(&"R&-E".to_string()));
}

/// Names are bounded: 1024 bytes as written, and each level at most the
/// model's 255 bytes once stored in modified UTF-7 (which a UTF-8 name can
/// pass while its UTF-8 does not).
#[test]
fn name_bounds() {
    let srv = server();
    let mut old = Client::login(&srv);
    let mut new = utf8_client(&srv);
    let long = format!("a/{}", "b/".repeat(511));
    assert_eq!(long.len(), 1024);
    let out = old.send(&format!("o1 CREATE {}x", long));
    assert!(out.starts_with("o1 NO [LIMIT]"), "{out}");
    // 90 × é: 180 bytes, 242 stored. 100 × é: 200 bytes, 269 stored.
    let fits = "\u{e9}".repeat(90);
    let over = "\u{e9}".repeat(100);
    new.ok(&format!("n1 CREATE \"{fits}\""));
    let out = new.send(&format!("n2 CREATE \"{over}\""));
    assert!(out.starts_with("n2 NO [LIMIT]"), "{out}");
    let out = old.send(&format!("o2 CREATE {}", "a".repeat(256)));
    assert!(out.starts_with("o2 NO [LIMIT]"), "{out}");
    old.ok(&format!("o3 CREATE {}", "a".repeat(255)));
    let out = new.send(&format!("n3 LIST \"\" \"{}\"", "*".repeat(1025)));
    assert!(out.starts_with("n3 NO [LIMIT]"), "{out}");
    assert!(listed(&mut old).iter().any(|n| n.len() == 242));
}

/// APPEND's `UTF8 (literal8)` (RFC 6855 §4), in MULTIAPPEND and as a
/// CATENATE part too; BAD before ENABLE UTF8=ACCEPT, as a plain APPEND of
/// 8-bit header fields is NO.
#[test]
fn append_utf8() {
    let srv = server();
    let msg = "From: J\u{f6}rg <j\u{f6}rg@example.com>\r\nSubject: Gr\u{fc}\u{df}e\r\n\r\nHallo\r\n";
    let n = msg.len();
    let mut old = Client::login(&srv);
    let out = old.send(&format!("o1 APPEND INBOX UTF8 (~{{{n}+}}\r\n{msg})"));
    assert!(out.starts_with("o1 BAD APPEND's UTF8 needs ENABLE UTF8=ACCEPT"), "{out}");
    // IMAP4rev2 alone does not take it either (RFC 9051 has no UTF8 item).
    old.ok("o2 ENABLE IMAP4rev2");
    assert!(old.send(&format!("o3 APPEND INBOX UTF8 (~{{{n}+}}\r\n{msg})")).starts_with("o3 BAD"));
    assert_eq!(count(&mut old, "INBOX"), 0);
    // RFC 6855 §4: 8-bit header fields in a plain APPEND, from a client
    // that did not enable UTF-8: NO, nothing stored (8-bit in the body is
    // fine).
    let mut plain = Client::login(&srv);
    let out = plain.send(&format!("p1 APPEND INBOX {{{n}+}}\r\n{msg}"));
    assert!(out.starts_with("p1 NO 8-bit characters in the message's header"), "{out}");
    let body8 = "Subject: x\r\n\r\nGr\u{fc}\u{df}e\r\n";
    plain.ok(&format!("p2 APPEND INBOX {{{}+}}\r\n{body8}", body8.len()));
    assert_eq!(count(&mut plain, "INBOX"), 1);
    plain.ok("p3 SELECT INBOX");
    plain.ok("p4 STORE 1 +FLAGS.SILENT (\\Deleted)");
    plain.ok("p5 CLOSE");
    let mut new = utf8_client(&srv);
    let first = new.send(&format!("n1 APPEND INBOX (\\Seen) UTF8 (~{{{n}}}"));
    assert!(first.starts_with("+ "), "{first}");
    let out = new.raw(format!("{msg})\r\n").as_bytes());
    assert!(out.starts_with("n1 OK [APPENDUID "), "{out}");
    // MULTIAPPEND: two messages, both UTF8, non-synchronising.
    let out = new.send(&format!("n2 APPEND INBOX UTF8 (~{{{n}+}}\r\n{msg}) utf8 (~{{{n}+}}\r\n{msg})"));
    assert!(out.starts_with("n2 OK [APPENDUID ") && out.contains(":"), "{out}");
    // CATENATE with a UTF8 part after a TEXT part.
    let out = new.send(&format!("n3 APPEND INBOX CATENATE (TEXT {{{n}+}}\r\n{msg} UTF8 (~{{5+}}\r\nmore\n))"));
    assert!(out.starts_with("n3 OK [APPENDUID "), "{out}");
    // UTF8 takes a literal8 only, and its parenthesis closed.
    let out = new.send(&format!("n4 APPEND INBOX UTF8 ({{{n}+}}\r\n{msg})"));
    assert!(out.starts_with("n4 BAD"), "{out}");
    let out = new.send(&format!("n5 APPEND INBOX UTF8 (~{{{n}+}}\r\n{msg}"));
    assert!(out.starts_with("n5 BAD"), "{out}");
    assert_eq!(count(&mut new, "INBOX"), 4);
    new.ok("n6 SELECT INBOX");
    let out = new.ok("n7 FETCH 1 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])");
    assert!(out.contains("\\Seen") && out.contains("Subject: Gr\u{fc}\u{df}e\r\n"), "{out}");
    let out = new.ok("n8 FETCH 4 BODY.PEEK[TEXT]");
    assert!(out.contains("Hallo\r\nmore\n"), "{out}");
    // Quoted UTF-8 in SEARCH (RFC 6855 §3) finds it.
    assert_eq!(new.search_line("SUBJECT \"gr\u{fc}\u{df}e\""), "* SEARCH 1 2 3 4");
}

/// RFC 6855 §3 (and its erratum 4029): once UTF8=ACCEPT is on, a SEARCH
/// with a CHARSET is BAD, and SORT and THREAD take UTF-8 only.
#[test]
fn charset_after_utf8_accept() {
    let srv = server();
    let mut c = Client::login(&srv);
    c.append("INBOX", "", PLAIN);
    c.ok("s1 SELECT INBOX");
    assert_eq!(c.search_line("CHARSET US-ASCII SUBJECT lunch"), "* SEARCH 1");
    let mut c = utf8_client(&srv);
    c.ok("s1 SELECT INBOX");
    let out = c.send("s2 SEARCH CHARSET UTF-8 SUBJECT lunch");
    assert!(out.starts_with("s2 BAD no CHARSET in SEARCH"), "{out}");
    assert_eq!(c.search_line("SUBJECT lunch"), "* SEARCH 1");
    let out = c.send("s3 SORT (SUBJECT) US-ASCII ALL");
    assert!(out.starts_with("s3 BAD the CHARSET is UTF-8"), "{out}");
    assert!(c.ok("s4 SORT (SUBJECT) utf-8 ALL").contains("* SORT 1\r\n"));
    let out = c.send("s5 THREAD REFERENCES ISO-8859-1 ALL");
    assert!(out.starts_with("s5 BAD the CHARSET is UTF-8"), "{out}");
    assert!(c.ok("s6 THREAD REFERENCES UTF-8 ALL").contains("* THREAD (1)\r\n"));
    assert!(c.ok("s7 NOOP").contains("s7 OK"));
}
