//! The IMAP session driven in-process against a real store (redb in a
//! temporary directory): every byte the server writes must parse as IMAP
//! responses (imap-codec's decoder), commands do what RFC 9051 / 7162 say,
//! bad input gets BAD and the session survives, no input panics.

mod common;
use common::*;
use imap_codec::decode::Decoder;
use imap_codec::ResponseCodec;
use proptest::prelude::*;
use starling_imap::{Config, Session, Shared, Wants, FETCH_PART_BYTES};
use starling_model::ReplicaId;
use starling_store::{Store, StoreOptions};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn a_session_from_login_to_logout() {
    let srv = server();
    let mut c = Client::login(&srv);
    c.ok("c1 CREATE Work/2022");
    let out = c.ok("c2 LIST \"\" *");
    assert!(out.contains("* LIST (\\HasChildren) \"/\" Work\r\n"), "{out}");
    assert!(out.contains("Work/2022"), "{out}");
    c.append("INBOX", "\\Flagged", PLAIN);
    c.append("INBOX", "", MULTI);
    let out = c.ok("c3 SELECT INBOX (CONDSTORE)");
    assert!(out.contains("* 2 EXISTS") && out.contains("[UIDNEXT 3]") && out.contains("[READ-WRITE]"), "{out}");
    assert!(out.contains("[HIGHESTMODSEQ "), "{out}");
    let out = c.ok("c4 FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE)");
    assert!(out.contains(&format!("RFC822.SIZE {}", PLAIN.len())), "{out}");
    let out = c.ok("c5 UID FETCH 1 BODY.PEEK[]");
    assert!(out.contains(PLAIN), "byte-exact body: {out}");
    assert!(!out.contains("\\Seen"), "PEEK does not set \\Seen: {out}");
    let out = c.ok("c6 FETCH 1 BODY[TEXT]");
    assert!(out.contains("\\Seen"), "BODY[] sets \\Seen and reports it: {out}");
    let out = c.ok("c7 STORE 2 +FLAGS (\\Deleted $Work)");
    assert!(out.contains("* 2 FETCH (FLAGS (\\Deleted $work \\Recent) MODSEQ ("), "{out}");
    let out = c.ok("c8 UID SEARCH FLAGGED");
    assert!(out.contains("* SEARCH 1\r\n"), "{out}");
    let out = c.ok("c9 SEARCH RETURN (MIN MAX COUNT) ALL");
    assert!(out.contains("* ESEARCH (TAG \"c9\") MIN 1 MAX 2 COUNT 2"), "{out}");
    let out = c.ok("c10 UID COPY 1:2 Work");
    assert!(out.contains("[COPYUID "), "{out}");
    let out = c.ok("c11 EXPUNGE");
    assert!(out.contains("* 2 EXPUNGE"), "{out}");
    let out = c.ok("c12 STATUS Work (MESSAGES UIDNEXT UNSEEN)");
    assert!(out.contains("* STATUS Work (MESSAGES 2 UIDNEXT 3 UNSEEN 1)"), "{out}");
    let out = c.ok("c13 UID MOVE 1 Work/2022");
    assert!(out.contains("[COPYUID ") && out.contains("* 1 EXPUNGE"), "{out}");
    let out = c.send("c14 LOGOUT");
    assert!(out.contains("* BYE") && out.contains("c14 OK"));
    assert_eq!(c.s.wants(), Wants::Close);
    assert!(srv.notified.load(Ordering::Relaxed) > 0, "changes were announced to the node");
}

#[test]
fn authentication_rules() {
    let srv = server();
    let mut c = Client::connect(&srv, false);
    let out = c.send("a LOGIN alice pw");
    assert!(out.contains("a NO [PRIVACYREQUIRED]"), "no plaintext login off loopback: {out}");
    assert!(c.send("b CAPABILITY").contains("LOGINDISABLED"));
    let mut c = Client::connect(&srv, true);
    assert!(c.send("a LOGIN alice wrong").contains("a NO [AUTHENTICATIONFAILED]"));
    assert!(c.send("b SELECT INBOX").contains("b BAD"));
    // AUTHENTICATE PLAIN with SASL-IR, and with a continuation.
    assert!(c.send("c AUTHENTICATE PLAIN AGFsaWNlAHB3").contains("c OK"));
    let mut c = Client::connect(&srv, true);
    assert!(c.send("d AUTHENTICATE PLAIN").starts_with("+ "));
    assert!(c.send("AGFsaWNlAHB3").contains("d OK"));
    let out = c.send("e STARTTLS");
    assert!(out.contains("e BAD"), "no STARTTLS after login: {out}");
}

#[test]
fn connections_per_account_are_limited() {
    let srv = server_with(Config { connections_per_account: 2, ..Config::default() });
    let _a = Client::login(&srv);
    let b = Client::login(&srv);
    let mut c = Client::connect(&srv, true);
    assert!(c.send("x LOGIN alice pw").contains("x NO [LIMIT]"));
    drop(b);
    c.ok("y LOGIN alice pw");
}

#[test]
fn bad_input_gets_bad_and_the_session_survives() {
    let srv = server_with(Config { literal_max: 1000, line_max: 200, ..Config::default() });
    let mut c = Client::login(&srv);
    assert!(c.send("garbage").starts_with("* BAD"), "no tag");
    assert!(c.send("t1 FETCH").contains("t1 BAD"));
    assert!(c.send("t2 FROB x y").contains("t2 BAD"));
    assert!(c.send("t3 SELECT").contains("t3 BAD"));
    // A synchronising literal over the limit is refused before it is sent
    // (an APPEND's with NO: RFC 7889 §4, RFC 4469 §4; any other's BAD).
    let out = c.send("t4 APPEND INBOX {999999999}");
    assert!(out.contains("t4 NO [TOOBIG]") && !out.contains('+'), "{out}");
    let out = c.send("t4b LOGIN {999999999}");
    assert!(out.contains("t4b BAD [TOOBIG]") && !out.contains('+'), "{out}");
    // A non-synchronising one is read and dropped, then refused.
    let out = c.raw(format!("t5 APPEND INBOX {{2000+}}\r\n{}\r\n", "x".repeat(2000)).as_bytes());
    assert!(out.contains("t5 NO [TOOBIG]"), "{out}");
    let out = c.send(&format!("t6 NOOP {}", "y".repeat(500)));
    assert!(out.contains("t6 BAD [TOOBIG]"), "{out}");
    c.ok("t7 NOOP");
    // Too many errors in a row: BYE.
    let mut last = String::new();
    for i in 0..30 {
        last = c.send(&format!("e{i} BOGUS"));
        if c.s.wants() == Wants::Close {
            break;
        }
    }
    assert!(last.contains("* BYE"), "{last}");
}

#[test]
fn idle_sees_another_sessions_changes() {
    let srv = server();
    let mut a = Client::login(&srv);
    let mut b = Client::login(&srv);
    a.append("INBOX", "", PLAIN);
    a.ok("a1 SELECT INBOX");
    b.ok("b1 SELECT INBOX");
    assert!(b.send("b2 IDLE").starts_with("+ "));
    a.ok("a2 STORE 1 +FLAGS (\\Flagged)");
    a.append("INBOX", "", MULTI);
    // The node's change broadcast wakes b.
    b.s.account_changed();
    let out = String::from_utf8_lossy(&b.s.take_output()).into_owned();
    assert!(out.contains("* 1 FETCH (UID 1 FLAGS (\\Flagged))"), "{out}");
    assert!(out.contains("* 2 EXISTS"), "{out}");
    assert!(b.send("DONE").contains("b2 OK"));
}

#[test]
fn qresync_reports_exactly_the_changes() {
    let srv = server();
    let mut a = Client::login(&srv);
    for _ in 0..4 {
        a.append("INBOX", "", PLAIN);
    }
    let out = a.ok("a1 SELECT INBOX");
    let validity: u32 = out.split("[UIDVALIDITY ").nth(1).unwrap().split(']').next().unwrap().parse().unwrap();
    let modseq: u64 = out.split("[HIGHESTMODSEQ ").nth(1).unwrap().split(']').next().unwrap().parse().unwrap();
    a.ok("a2 STORE 2 +FLAGS (\\Seen)");
    a.ok("a3 STORE 3 +FLAGS (\\Deleted)");
    a.ok("a4 EXPUNGE");
    let mut b = Client::login(&srv);
    b.ok("b0 ENABLE QRESYNC");
    let out = b.ok(&format!("b1 SELECT INBOX (QRESYNC ({validity} {modseq}))"));
    assert!(out.contains("* VANISHED (EARLIER) 3\r\n"), "{out}");
    assert!(out.contains("FETCH (UID 2 FLAGS (\\Seen) MODSEQ ("), "{out}");
    assert!(!out.contains("UID 1 ") && !out.contains("UID 4 "), "unchanged messages not reported: {out}");
    // Another session expunges: a QRESYNC client hears VANISHED, not EXPUNGE.
    a.ok("a5 STORE 1 +FLAGS (\\Deleted)");
    a.ok("a6 EXPUNGE");
    let out = b.ok("b2 NOOP");
    assert!(out.contains("* VANISHED 1\r\n") && !out.contains("EXPUNGE"), "{out}");
    let out = b.ok(&format!("b3 UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)"));
    assert!(out.contains("* VANISHED (EARLIER) 1,3"), "{out}");
    // UNCHANGEDSINCE below the message's MODSEQ fails with MODIFIED.
    let out = b.ok("b4 UID STORE 2 (UNCHANGEDSINCE 1) +FLAGS (\\Answered)");
    assert!(out.contains("[MODIFIED 2]"), "{out}");
}

/// A keyword new to the account reaches a selected session by another
/// session's STORE or COPY: the session is told the new FLAGS (and
/// PERMANENTFLAGS) before any FETCH that shows it (RFC 9051 §7.3.5; it
/// got the FETCH alone).
#[test]
fn a_new_keyword_is_announced_in_flags_before_it_is_shown() {
    let srv = server();
    let mut a = Client::login(&srv);
    a.append("INBOX", "", PLAIN);
    a.ok("c CREATE Other");
    a.append("Other", "", PLAIN);
    let mut b = Client::login(&srv);
    let out = b.ok("b1 SELECT INBOX");
    assert!(!out.contains("$keyword1"), "{out}");
    a.ok("a1 SELECT INBOX");
    a.ok("a2 STORE 1 +FLAGS ($keyword1)");
    let out = b.ok("b2 NOOP");
    let flags = out.find("* FLAGS (").expect("FLAGS sent");
    let fetch = out.find("* 1 FETCH").expect("the change is shown");
    assert!(flags < fetch, "{out}");
    assert!(out[flags..].lines().next().unwrap().contains("$keyword1"), "{out}");
    let permanent = out.find("* OK [PERMANENTFLAGS (").expect("PERMANENTFLAGS sent");
    assert!(out[permanent..].lines().next().unwrap().contains("$keyword1"), "{out}");
    // Known now: not announced again.
    a.ok("a3 STORE 1 -FLAGS ($keyword1)");
    let out = b.ok("b3 NOOP");
    assert!(!out.contains("* FLAGS"), "{out}");
    // A COPY from a mailbox whose message has a keyword new to the account.
    a.ok("a4 SELECT Other");
    a.ok("a5 STORE 1 +FLAGS ($keyword2)");
    a.ok("a6 COPY 1 INBOX");
    let out = b.ok("b4 NOOP");
    let flags = out.find("* FLAGS (").expect("FLAGS sent");
    assert!(out[flags..].lines().next().unwrap().contains("$keyword2"), "{out}");
    let out = b.ok("b5 FETCH 2 FLAGS");
    assert!(out.contains("$keyword2"), "{out}");
    // The session's own STORE of a new keyword: FLAGS first too.
    let out = b.ok("b6 STORE 1 +FLAGS ($keyword3)");
    let flags = out.find("* FLAGS (").expect("FLAGS sent");
    assert!(flags < out.find("* 1 FETCH").expect("the change is shown"), "{out}");
}

/// A command that turns CONDSTORE on while a mailbox is selected tells
/// the client the mailbox's HIGHESTMODSEQ (RFC 7162 §3.1), once.
#[test]
fn the_first_condstore_command_while_selected_gives_highestmodseq() {
    let srv = server();
    let mut a = Client::login(&srv);
    a.append("INBOX", "", PLAIN);
    let out = a.ok("a1 SELECT INBOX");
    let highest = between(&out, "[HIGHESTMODSEQ ", "]").unwrap().to_string();
    let out = a.ok("a2 FETCH 1 MODSEQ");
    assert!(out.contains(&format!("* OK [HIGHESTMODSEQ {highest}]")), "{out}");
    let out = a.ok("a3 FETCH 1 MODSEQ");
    assert!(!out.contains("HIGHESTMODSEQ"), "only the first time: {out}");
}

/// ESEARCH with MODSEQ gives the highest MODSEQ of the messages it
/// returns: for MIN (or MAX) alone that message's, for ALL or COUNT every
/// match's (RFC 7162 §3.1.5 with RFC 4731); no MODSEQ when nothing matched.
#[test]
fn esearch_modseq_is_that_of_the_messages_returned() {
    let srv = server();
    let mut a = Client::login(&srv);
    for _ in 0..4 {
        a.append("INBOX", "", PLAIN);
    }
    a.ok("a1 SELECT INBOX (CONDSTORE)");
    let mut modseq = [0u64; 5];
    for seq in [1, 3, 2, 4] {
        let out = a.ok(&format!("s{seq} STORE {seq} +FLAGS (\\Seen)"));
        modseq[seq] = between(&out, "MODSEQ (", ")").unwrap().parse().unwrap();
    }
    let esearch = |a: &mut Client, cmd: &str| {
        let out = a.ok(cmd);
        out.lines().find(|l| l.starts_with("* ESEARCH")).unwrap().to_string()
    };
    let line = esearch(&mut a, "e1 SEARCH RETURN (MIN) 1:3 MODSEQ 1");
    assert!(line.ends_with(&format!("MIN 1 MODSEQ {}", modseq[1])), "{line}");
    let line = esearch(&mut a, "e2 SEARCH RETURN (MAX) 1:3 MODSEQ 1");
    assert!(line.ends_with(&format!("MAX 3 MODSEQ {}", modseq[3])), "{line}");
    let line = esearch(&mut a, "e3 SEARCH RETURN () 1:3 MODSEQ 1");
    assert!(line.ends_with(&format!("ALL 1:3 MODSEQ {}", modseq[2])), "{line}");
    let line = esearch(&mut a, "e4 SEARCH RETURN (MIN MAX) 2:3 MODSEQ 1");
    assert!(line.ends_with(&format!("MIN 2 MAX 3 MODSEQ {}", modseq[2])), "{line}");
    let line = esearch(&mut a, &format!("e5 SEARCH RETURN (ALL) 2:3 MODSEQ {}", modseq[2]));
    assert!(line.ends_with(&format!("ALL 2 MODSEQ {}", modseq[2])), "{line}");
    let line = esearch(&mut a, &format!("e6 SEARCH RETURN (ALL) 2:3 MODSEQ {}", modseq[4]));
    assert_eq!(line, "* ESEARCH (TAG \"e6\")");
}

/// SENTBEFORE, SENTON and SENTSINCE compare the Date header's date in its
/// own time zone (RFC 9051 §6.4.4): 00:30 +0200 on the 25th is the 25th,
/// though it is the 24th in UTC.
#[test]
fn sent_dates_are_compared_in_the_date_headers_own_zone() {
    let srv = server();
    let mut a = Client::login(&srv);
    let dates =
        ["Sat, 24 Mar 2007 23:00:00 +0200", "Sun, 25 Mar 2007 00:30:00 +0200", "Sun, 25 Mar 2007 23:30:00 -0500"];
    for d in dates {
        a.append("INBOX", "", &format!("From: a@example.org\r\nDate: {d}\r\nSubject: x\r\n\r\nbody\r\n"));
    }
    a.ok("s SELECT INBOX");
    assert_eq!(a.search_line("SENTON 24-Mar-2007"), "* SEARCH 1");
    assert_eq!(a.search_line("SENTON 25-Mar-2007"), "* SEARCH 2 3");
    assert_eq!(a.search_line("SENTBEFORE 25-Mar-2007"), "* SEARCH 1");
    assert_eq!(a.search_line("SENTSINCE 25-Mar-2007"), "* SEARCH 2 3");
    assert_eq!(a.search_line("SENTSINCE 26-Mar-2007"), "* SEARCH");
    assert_eq!(a.search_line("NOT SENTON 25-Mar-2007"), "* SEARCH 1");
}

/// FROM, TO, CC and BCC match the addresses as parsed, not only the
/// header's text: a comment inside an address does not hide it, and the
/// comment after an address counts as its name.
#[test]
fn address_searches_match_parsed_addresses() {
    let srv = server();
    let mut a = Client::login(&srv);
    let froms = [
        "user-from@domain.org",
        "RealFrom <user-from@domain.org>",
        "<user-from (comment)@ (comment) domain.org>",
        "user-from@domain.org (RealFrom)",
        "user-from1@domain.org, user-from2@domain.org",
        "=?utf-8?q?Encoded_Name?= <other@domain.org>",
    ];
    for f in froms {
        a.append(
            "INBOX",
            "",
            &format!("From: {f}\r\nTo: groupname: g1@domain.org, g2@domain.org;\r\nSubject: x\r\n\r\nbody\r\n"),
        );
    }
    a.ok("s SELECT INBOX");
    assert_eq!(a.search_line("FROM user-from@domain.org"), "* SEARCH 1 2 3 4");
    assert_eq!(a.search_line("FROM ser-fro"), "* SEARCH 1 2 3 4 5");
    assert_eq!(a.search_line("FROM realfrom"), "* SEARCH 2 4");
    assert_eq!(a.search_line("FROM user-from2"), "* SEARCH 5");
    assert_eq!(a.search_line("FROM \"encoded name\""), "* SEARCH 6");
    assert_eq!(a.search_line("TO groupname"), "* SEARCH 1 2 3 4 5 6");
    assert_eq!(a.search_line("TO g2@domain.org"), "* SEARCH 1 2 3 4 5 6");
}

/// LIST with several patterns (RFC 5258 §3) lists each match once;
/// unknown selection or return options, and RECURSIVEMATCH alone, are BAD;
/// LSUB with `%` lists the unsubscribed parent of a subscribed mailbox as
/// \Noselect (RFC 3501 §6.3.9). Each answered BAD or wrongly before.
#[test]
fn list_patterns_options_and_lsub_parents() {
    let srv = server();
    let mut c = Client::login(&srv);
    for m in ["a/test1", "a/test2/test1", "a/test3", "a/test4/test5", "a/test4/test52", "b/x/y"] {
        c.ok(&format!("c CREATE {m}"));
    }
    let out = c.ok("l1 LIST \"\" (a/*2 a/test3 \"a/test3\")");
    let names: Vec<&str> =
        out.lines().filter(|l| l.starts_with("* LIST")).map(|l| l.rsplit(' ').next().unwrap()).collect();
    assert_eq!(names, vec!["a/test2", "a/test3", "a/test4/test52"], "{out}");
    let out = c.ok("l2 LIST \"\" (a/test1)");
    assert_eq!(out.matches("* LIST").count(), 1, "{out}");
    for bad in
        ["b1 LIST (imaptest) \"\" \"\"", "b2 LIST (recursivematch) \"\" \"\"", "b3 LIST \"\" \"\" RETURN (imaptest)"]
    {
        let out = c.send(bad);
        assert!(out.contains(&format!("{} BAD", &bad[..2])), "{bad} → {out}");
    }
    c.ok("l3 LIST (remote) \"\" %");
    c.ok("s1 SUBSCRIBE a/test1");
    c.ok("s2 SUBSCRIBE a/test2/test1");
    c.ok("s3 SUBSCRIBE b/x/y");
    let out = c.ok("l4 LSUB \"\" a/%");
    assert!(out.contains("* LSUB (\\HasNoChildren) \"/\" a/test1\r\n"), "{out}");
    assert!(out.contains("* LSUB (\\Noselect) \"/\" a/test2\r\n"), "{out}");
    assert!(!out.contains("a/test2/test1") && !out.contains("a/test3"), "{out}");
    let out = c.ok("l5 LSUB \"\" %");
    assert!(
        out.contains("* LSUB (\\Noselect) \"/\" a\r\n") && out.contains("* LSUB (\\Noselect) \"/\" b\r\n"),
        "{out}"
    );
    let out = c.ok("l6 LSUB \"\" *");
    assert!(!out.contains("Noselect"), "every subscribed mailbox matches itself: {out}");
}

/// A mailbox remembers only its newest expunges (here 4). A session that
/// sat selected while 12 went, a QRESYNC SELECT and a FETCH VANISHED
/// from before them still hear every one: the selected session exactly
/// (EXPUNGE for each message it had), the others as VANISHED (EARLIER)
/// of every UID they may know that names no message now (an
/// over-report, never an under-report).
#[test]
fn expunges_older_than_the_mailbox_remembers_are_still_reported() {
    let options = StoreOptions { vanished_per_mailbox: 4, ..StoreOptions::default() };
    let srv = server_with_store(ReplicaId(7), Config::default(), options);
    let mut a = Client::login(&srv);
    for _ in 0..20 {
        a.append("INBOX", "", PLAIN);
    }
    let out = a.ok("a1 SELECT INBOX");
    let validity: u32 = out.split("[UIDVALIDITY ").nth(1).unwrap().split(']').next().unwrap().parse().unwrap();
    let modseq: u64 = out.split("[HIGHESTMODSEQ ").nth(1).unwrap().split(']').next().unwrap().parse().unwrap();
    let mut idle = Client::login(&srv);
    idle.ok("i1 SELECT INBOX");
    // Twelve expunges: the ten even UIDs, then 1 and 3.
    let gone: Vec<u32> = (2..=20).step_by(2).chain([1, 3]).collect();
    for u in &gone {
        a.ok(&format!("a2 UID STORE {u} +FLAGS (\\Deleted)"));
        a.ok("a3 EXPUNGE");
    }
    let out = idle.ok("i2 NOOP");
    assert_eq!(out.matches(" EXPUNGE\r\n").count(), gone.len(), "{out}");
    let out = idle.ok("i3 UID SEARCH ALL");
    let left: Vec<u32> = (1..=20).filter(|u| !gone.contains(u)).collect();
    let listed = left.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(" ");
    assert!(out.contains(&format!("* SEARCH {listed}\r\n")), "{out}");
    let mut b = Client::login(&srv);
    b.ok("b0 ENABLE QRESYNC");
    let out = b.ok(&format!("b1 SELECT INBOX (QRESYNC ({validity} {modseq}))"));
    let reported = uid_set(between(&out, "* VANISHED (EARLIER) ", "\r\n").expect("VANISHED (EARLIER)"));
    assert!(gone.iter().all(|u| reported.contains(u)), "{reported:?}");
    assert!(reported.iter().all(|u| !left.contains(u)), "a live UID reported gone: {reported:?}");
    let out = b.ok(&format!("b2 UID FETCH 1:40 (FLAGS) (CHANGEDSINCE {modseq} VANISHED)"));
    let reported = uid_set(between(&out, "* VANISHED (EARLIER) ", "\r\n").expect("VANISHED (EARLIER)"));
    assert!(gone.iter().all(|u| reported.contains(u)), "{reported:?}");
    assert!(reported.iter().all(|u| !left.contains(u)), "{reported:?}");
}

/// Before login the limits are small: a synchronising literal over them
/// gets BAD before it is sent, a non-synchronising one BYE without being
/// read, a long line BAD; after login the larger limits apply to the same
/// bytes (issue 14, item 2).
#[test]
fn limits_before_login_are_small_and_larger_after() {
    let srv = server();
    let big = 20_000;
    let mut c = Client::connect(&srv, true);
    let out = c.send(&format!("a LOGIN alice {{{big}}}"));
    assert!(out.contains("a BAD [TOOBIG]") && !out.contains('+'), "{out}");
    // Sent anyway: one over-long line, refused, and the session goes on.
    let out = c.raw(format!("{}\r\n", "x".repeat(big)).as_bytes());
    assert!(out.contains("BAD [TOOBIG]"), "{out}");
    let out = c.send(&format!("b NOOP {}", "y".repeat(9000)));
    assert!(out.contains("b BAD [TOOBIG]"), "{out}");
    c.ok("c NOOP");
    let out = c.send(&format!("d LOGIN alice {{{big}+}}"));
    assert!(out.contains("d BAD [TOOBIG]") && out.contains("* BYE"), "{out}");
    assert_eq!(c.s.wants(), Wants::Close);
    // A small literal before login is fine; after it the large ones are.
    let mut c = Client::connect(&srv, true);
    let out = c.send("e LOGIN alice {2}");
    assert!(out.starts_with("+ "), "{out}");
    assert!(c.send("pw").contains("e OK"));
    let msg = format!("Subject: big\r\n\r\n{}\r\n", "z".repeat(big));
    c.append("INBOX", "", &msg);
}

/// The framer never holds more than a message's limit before login, however
/// the bytes arrive (one call, or many small ones).
#[test]
fn a_flood_before_login_is_dropped_as_it_arrives() {
    let srv = server();
    let mut c = Client::connect(&srv, true);
    let flood = vec![b'x'; 8 << 20];
    c.s.receive(&flood);
    for chunk in flood.chunks(4096) {
        c.s.receive(chunk);
    }
    assert!(c.s.take_output().is_empty(), "no answer before the line ends");
    let out = c.send("");
    assert!(out.contains("BAD [TOOBIG]"), "{out}");
    c.ok("a LOGIN alice pw");
}

/// Before login the deadline is fixed from the connection's start; after,
/// it is the idle timeout from the last complete command, never moved by
/// single bytes (issue 14, item 2).
#[test]
fn deadlines_count_from_the_start_and_from_the_last_command() {
    let cfg = Config {
        preauth_deadline: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(1800),
        ..Config::default()
    };
    let srv = server_with(cfg);
    let t0 = Instant::now();
    let s = |secs: u64| t0 + Duration::from_secs(secs);
    let mut a = Session::accepted(srv.shared.clone(), t0, "192.0.2.1".parse().unwrap(), true, false);
    a.take_output();
    for t in 1..59 {
        a.receive_at(s(t), b"x");
    }
    a.receive_at(s(30), b"\r\nn NOOP\r\n");
    assert_eq!(a.deadline(), s(60), "not moved by bytes nor commands before login");
    a.handle_timeout(s(59));
    assert_eq!(a.wants(), Wants::Read);
    a.handle_timeout(s(60));
    assert_eq!(a.wants(), Wants::Close);
    assert!(String::from_utf8_lossy(&a.take_output()).contains("* BYE autologout"));

    let mut b = Session::accepted(srv.shared.clone(), t0, "192.0.2.2".parse().unwrap(), true, false);
    b.receive_at(s(10), b"l LOGIN alice pw\r\n");
    assert_eq!(b.wants(), Wants::Verify);
    b.verify_now();
    assert!(String::from_utf8_lossy(&b.take_output()).contains("l OK"));
    assert_eq!(b.deadline(), s(10 + 1800));
    b.receive_at(s(100), b"n NOOP\r\n");
    assert_eq!(b.deadline(), s(100 + 1800));
    b.receive_at(s(200), b"m NO");
    b.receive_at(s(300), b"O");
    assert_eq!(b.deadline(), s(100 + 1800), "a partial command does not move it");
    b.receive_at(s(400), b"P\r\n");
    assert_eq!(b.deadline(), s(400 + 1800));
    b.handle_timeout(s(400 + 1799));
    assert_eq!(b.wants(), Wants::Read);
    b.handle_timeout(s(400 + 1800));
    assert_eq!(b.wants(), Wants::Close);
}

/// A failed login makes the next attempt (any account from this address,
/// or this account from anywhere) pause before it is verified, pipelined
/// commands included; the shell sleeps, then resumes (issue 14, item 6).
#[test]
fn a_penalised_login_pauses_and_resumes() {
    let srv = server();
    let t0 = Instant::now();
    let ip = "192.0.2.1".parse().unwrap();
    let mut a = Session::accepted(srv.shared.clone(), t0, ip, true, false);
    a.take_output();
    a.receive_at(t0, b"a LOGIN alice wrong\r\n");
    a.verify_now();
    assert!(String::from_utf8_lossy(&a.take_output()).contains("a NO [AUTHENTICATIONFAILED]"));
    a.receive_at(t0, b"b LOGIN alice pw\r\nc NOOP\r\n");
    assert_eq!(a.wants(), Wants::Pause(Duration::from_millis(500)));
    assert!(a.take_output().is_empty(), "nothing answered before the pause");
    a.resume(t0 + Duration::from_millis(500));
    assert_eq!(a.wants(), Wants::Verify, "verified after the pause, by the pool");
    assert!(a.take_output().is_empty());
    a.verify_now();
    let out = String::from_utf8_lossy(&a.take_output()).into_owned();
    assert!(out.contains("b OK") && out.contains("c OK"), "{out}");
    // Success cleared the penalty and cached the verification.
    let mut b = Session::accepted(srv.shared.clone(), t0, ip, true, false);
    b.receive_at(t0, b"d LOGIN alice pw\r\n");
    assert_eq!(b.wants(), Wants::Read);
    assert!(String::from_utf8_lossy(&b.take_output()).contains("d OK"));
    assert_eq!(srv.shared.auth_table_sizes(), (0, 0, 1));
}

/// A login the password pool had no room for (its queue full: `Busy`) is
/// refused with `NO [UNAVAILABLE]`, unverified and without a penalty, and
/// the session goes on with what was pipelined behind it; a login that
/// timed out while the pool had it is answered by nobody.
#[test]
fn a_login_past_the_verification_queue_is_refused_and_the_session_goes_on() {
    let srv = server();
    let t0 = Instant::now();
    let ip = "192.0.2.1".parse().unwrap();
    let mut a = Session::accepted(srv.shared.clone(), t0, ip, true, false);
    a.take_output();
    a.receive_at(t0, b"a LOGIN alice pw\r\nb NOOP\r\n");
    assert_eq!(a.wants(), Wants::Verify);
    assert!(a.take_output().is_empty(), "nothing answered before the verification");
    let (credential, password) = a.verify_job().unwrap();
    assert!(credential.unwrap().starts_with("$argon2id$") && password == b"pw");
    a.verified(t0, None);
    let out = String::from_utf8_lossy(&a.take_output()).into_owned();
    assert!(out.contains("a NO [UNAVAILABLE]") && out.contains("b OK"), "{out}");
    assert_eq!(a.wants(), Wants::Read);
    assert_eq!(srv.shared.auth_table_sizes(), (0, 0, 0), "no penalty, nothing cached");
    // Again, now with room: logged in.
    a.receive_at(t0, b"c LOGIN alice pw\r\n");
    a.verify_now();
    assert!(String::from_utf8_lossy(&a.take_output()).contains("c OK"));
    // A session past its deadline while the pool had its login: the late
    // answer does nothing.
    let mut b = Session::accepted(srv.shared.clone(), t0, ip, true, false);
    b.take_output();
    b.receive_at(t0, b"d LOGIN alice other\r\n");
    assert_eq!(b.wants(), Wants::Verify, "not in the cache");
    b.handle_timeout(b.deadline());
    assert_eq!(b.wants(), Wants::Close);
    assert!(b.verify_job().is_none());
    b.verified(t0, Some(true));
    assert!(!String::from_utf8_lossy(&b.take_output()).contains("d OK"));
    assert!(b.account().is_none());
}

/// The cache answers a correct login without Argon2, and a new password
/// makes every cached verification of the old one useless (issue 14, item 6).
#[test]
fn the_login_cache_follows_the_stored_credential() {
    let srv = server();
    let login = |pw: &str| {
        let mut c = Client::connect(&srv, true);
        let t = Instant::now();
        let out = c.send(&format!("a LOGIN alice {pw}"));
        (out.contains("a OK"), t.elapsed())
    };
    let (ok, first) = login("pw");
    assert!(ok);
    let (ok, cached) = login("pw");
    assert!(ok && cached * 4 < first, "first {first:?}, cached {cached:?}");
    srv.shared.store.set_local_credential("alice", Some(&starling_imap::auth::hash_password("new"))).unwrap();
    assert!(!login("pw").0, "the old password after a change");
    assert!(login("new").0);
}

fn command_strategy() -> impl Strategy<Value = Vec<u8>> {
    let commands = [
        "a SELECT INBOX",
        "b FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODYSTRUCTURE ENVELOPE)",
        "c STORE 1 +FLAGS (\\Seen)",
        "d UID SEARCH OR SEEN TEXT noon",
        "e APPEND INBOX {5}\r\nhello",
        "f LIST (SUBSCRIBED) \"\" * RETURN (STATUS (MESSAGES))",
        "g EXPUNGE",
        "h IDLE",
        "DONE",
        "i UID MOVE 1:* Work",
        "j CREATE Work",
        "k SEARCH RETURN (ALL) 1:*",
        "l AUTHENTICATE PLAIN",
        "m FETCH 1:* (EMAILID THREADID PREVIEW (LAZY) UID)",
        "n STATUS INBOX (MAILBOXID APPENDLIMIT MESSAGES)",
        "o CREATE Sent (USE (\\Sent))",
        "p APPEND INBOX (\\Seen) {5}\r\nhello ~{3}\r\na\0b",
        "q UID SEARCH OR EMAILID E1 THREADID T1",
        "r SEARCH SAVEDON 1-Jan-2020 NOT SAVEDATESUPPORTED",
        "s FETCH 1:* (SAVEDATE EMAILID)",
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (prop::sample::select(commands.to_vec()), prop::collection::vec((any::<usize>(), any::<u8>()), 0..4)).prop_map(
            |(c, muts)| {
                let mut b = c.as_bytes().to_vec();
                for (at, byte) in muts {
                    if !b.is_empty() {
                        let i = at % b.len();
                        b[i] = byte;
                    }
                }
                b.extend_from_slice(b"\r\n");
                b
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random and mutated commands never panic, and everything the server
    /// writes is still valid IMAP.
    #[test]
    fn no_input_panics(inputs in prop::collection::vec(command_strategy(), 1..12)) {
        let srv = server();
        let mut c = Client::login(&srv);
        c.append("INBOX", "", MULTI);
        for input in inputs {
            c.s.receive(&input);
            let out = c.s.take_output();
            assert_responses(&out);
            if c.s.wants() != Wants::Read {
                break;
            }
        }
    }
}

/// RFC 3516 BINARY: a part with its transfer encoding undone, its decoded
/// size, a partial range; an encoding that cannot be undone is `NO
/// [UNKNOWN-CTE]`, and in every case the responses parse (the server used
/// to leave `* 1 FETCH (UID 1 ` open and glue the tagged BAD into it, which
/// hung clients).
#[test]
fn binary_fetch_decodes_parts_and_never_breaks_the_stream() {
    let srv = server();
    let mut c = Client::login(&srv);
    let qp = "From: a@example.com\r\nSubject: qp\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 =\r\nsoft\r\n";
    let odd = "From: a@example.com\r\nSubject: odd\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n";
    c.append("INBOX", "", MULTI);
    c.append("INBOX", "", qp);
    c.append("INBOX", "", odd);
    c.ok("s SELECT INBOX");
    // The PDF part of MULTI: "JVBERi0xLjQK" is base64 of "%PDF-1.4\n".
    let out = c.ok("b1 UID FETCH 1 (UID BINARY.PEEK[2])");
    assert!(out.contains("BINARY[2] {9}\r\n%PDF-1.4\n)"), "{out}");
    assert!(!out.contains("\\Seen"), "{out}");
    let out = c.ok("b2 FETCH 1 (BINARY.SIZE[2] BINARY.SIZE[1])");
    assert!(out.contains("BINARY.SIZE[2] 9") && out.contains("BINARY.SIZE[1] 30"), "{out}");
    let out = c.ok("b3 FETCH 1 BINARY.PEEK[2]<1.3>");
    assert!(out.contains("BINARY[2] {3}\r\nPDF)"), "{out}");
    let out = c.ok("b4 FETCH 2 BINARY[1]");
    assert!(out.contains("BINARY[1] {12}\r\ncafé soft\r\n"), "{out}");
    assert!(out.contains("\\Seen"), "BINARY without PEEK sets \\Seen: {out}");
    let out = c.send("b5 FETCH 3 (UID BINARY.PEEK[1])");
    assert!(out.contains("b5 NO [UNKNOWN-CTE]"), "{out}");
    assert!(!out.contains("* 3 FETCH"), "no half-written response: {out}");
    let out = c.ok("b6 FETCH 1:2 (UID BINARY.PEEK[])");
    assert!(out.contains(&format!("BINARY[] {{{}}}\r\n", MULTI.len())), "{out}");
}

/// MOVE into the mailbox the messages are in gives them new UIDs there and
/// expunges the old ones, with a well-formed COPYUID (it used to answer
/// `OK [COPYUID 2774462584 ] moved`, empty sets, which clients cannot parse).
#[test]
fn move_into_the_same_mailbox_renumbers_with_a_valid_copyuid() {
    let srv = server();
    let mut c = Client::login(&srv);
    c.append("INBOX", "\\Flagged", PLAIN);
    c.append("INBOX", "", MULTI);
    c.ok("s SELECT INBOX");
    let out = c.ok("m1 UID MOVE 1:2 INBOX");
    assert!(out.contains("* OK [COPYUID "), "{out}");
    assert!(out.contains(" 1,2 3,4] moved") || out.contains(" 1:2 3:4] moved"), "{out}");
    assert_eq!(out.matches(" EXPUNGE\r\n").count(), 2, "{out}");
    let out = c.ok("m2 UID FETCH 1:* (UID FLAGS)");
    assert!(out.contains("UID 3") && out.contains("UID 4") && !out.contains("UID 1 "), "{out}");
    assert!(out.contains("\\Flagged"), "flags go with the message: {out}");
}

/// STATUS SIZE (RFC 8438, part of IMAP4rev2): the mailbox's total message
/// size (it used to answer BAD).
#[test]
fn status_size_is_the_sum_of_message_sizes() {
    let srv = server();
    let mut c = Client::login(&srv);
    c.ok("c CREATE Empty");
    c.append("INBOX", "", PLAIN);
    c.append("INBOX", "", MULTI);
    let out = c.ok("s1 STATUS INBOX (MESSAGES SIZE)");
    assert!(out.contains(&format!("* STATUS INBOX (MESSAGES 2 SIZE {})", PLAIN.len() + MULTI.len())), "{out}");
    let out = c.ok("s2 STATUS Empty (SIZE)");
    assert!(out.contains("* STATUS Empty (SIZE 0)"), "{out}");
    // RFC 8438: a server that answers SIZE says so.
    let caps = c.ok("k CAPABILITY");
    assert!(caps.lines().any(|l| l.starts_with("* CAPABILITY") && l.split(' ').any(|w| w == "STATUS=SIZE")), "{caps}");
}

/// Four sessions on four threads mark the same messages \Deleted and
/// expunge them, round after round: a STORE or EXPUNGE on a message another
/// session expunged a moment before is not an error (it answered `NO
/// [CANNOT] no such message MessageId(…)` 11–12 times in 40 rounds,
/// leaking an internal id).
#[test]
fn store_and_expunge_race_with_other_sessions_expunges() {
    let srv = server();
    let mut feeder = Client::login(&srv);
    let mut failures = Vec::new();
    for round in 0..40 {
        for _ in 0..4 {
            feeder.append("INBOX", "", PLAIN);
        }
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (shared, barrier) = (srv.shared.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut s = Session::new(shared, false, true, true);
                    let mut say = |line: String| {
                        s.receive(format!("{line}\r\n").as_bytes());
                        while let Wants::Pause(_) = s.wants() {
                            s.resume(Instant::now());
                        }
                        String::from_utf8_lossy(&s.take_output()).into_owned()
                    };
                    say("a LOGIN alice pw".into());
                    say("s SELECT INBOX".into());
                    barrier.wait();
                    let mut out = say(format!("t{t} STORE 1:* +FLAGS.SILENT (\\Deleted)"));
                    out += &say(format!("e{t} EXPUNGE"));
                    out
                })
            })
            .collect();
        for t in threads {
            let out = t.join().unwrap();
            for line in out.lines().filter(|l| l.contains(" NO ") || l.contains(" BAD ")) {
                failures.push(format!("round {round}: {line}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} failed commands, first: {:?}", failures.len(), failures.first());
}

/// Sessions selecting one mailbox at the same moment: each new message is
/// \Recent in exactly one of them (it was in two for 50–95 of 100 UIDs
/// with 8 sessions).
#[test]
fn concurrent_selects_share_out_recent_once() {
    let srv = server();
    let mut feeder = Client::login(&srv);
    let mut duplicated = Vec::new();
    for round in 0..20 {
        for _ in 0..10 {
            feeder.append("INBOX", "", PLAIN);
        }
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (shared, barrier) = (srv.shared.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut s = Session::new(shared, false, true, true);
                    s.receive(b"a LOGIN alice pw\r\n");
                    while let Wants::Pause(_) = s.wants() {
                        s.resume(Instant::now());
                    }
                    s.take_output();
                    barrier.wait();
                    s.receive(b"s SELECT INBOX\r\n");
                    let out = String::from_utf8_lossy(&s.take_output()).into_owned();
                    let line = out.lines().find(|l| l.ends_with(" RECENT")).expect("RECENT");
                    line.trim_start_matches("* ").trim_end_matches(" RECENT").parse::<u32>().unwrap()
                })
            })
            .collect();
        let total: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        if total != 10 {
            duplicated.push((round, total));
        }
    }
    assert!(
        duplicated.is_empty(),
        "rounds where 10 new messages were \\Recent in all sessions together: {duplicated:?}"
    );
}

/// After another session copies messages into the selected mailbox, a NOOP
/// gives EXISTS and, to an IMAP4rev1 client, RECENT (it gave EXISTS alone).
#[test]
fn noop_after_another_sessions_copy_reports_recent() {
    let srv = server();
    let mut a = Client::login(&srv);
    let mut b = Client::login(&srv);
    a.ok("c CREATE Other");
    b.append("Other", "", PLAIN);
    b.append("Other", "", MULTI);
    let out = a.ok("s SELECT INBOX");
    assert!(out.contains("* 0 EXISTS") && out.contains("* 0 RECENT"), "{out}");
    b.ok("b1 SELECT Other");
    b.ok("b2 COPY 1:2 INBOX");
    let out = a.ok("n NOOP");
    assert!(out.contains("* 2 EXISTS\r\n* 2 RECENT\r\n"), "{out}");
    let out = a.ok("f FETCH 1:2 FLAGS");
    assert_eq!(out.matches("\\Recent").count(), 2, "{out}");
    // A client that enabled IMAP4rev2 gets no RECENT.
    let mut c = Client::login(&srv);
    c.ok("e ENABLE IMAP4rev2");
    c.ok("s SELECT INBOX");
    b.ok("b3 COPY 1 INBOX");
    let out = c.ok("n NOOP");
    assert!(out.contains("* 3 EXISTS") && !out.contains("RECENT"), "{out}");
}

/// Ships what `from` has and `to` lacks (ops only: flags and UIDs need no bodies).
fn ship(from: &Server, to: &Server) {
    let have = to.shared.store.version("alice").unwrap();
    let ops = from.shared.store.ops_since("alice", &have).unwrap();
    to.shared.store.write("alice", |b| b.apply(ops)).unwrap();
}

/// What a QRESYNC client keeps of a mailbox: UID → flags, and its HIGHESTMODSEQ.
#[derive(Debug, Default, PartialEq)]
struct Cache {
    flags: std::collections::BTreeMap<u32, String>,
    modseq: u64,
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    Some(&s[from..from + s[from..].find(end)?])
}

fn uid_set(set: &str) -> Vec<u32> {
    set.split(',')
        .flat_map(|r| match r.split_once(':') {
            Some((a, b)) => (a.parse::<u32>().unwrap()..=b.parse().unwrap()).collect::<Vec<_>>(),
            None => vec![r.parse().unwrap()],
        })
        .collect()
}

impl Cache {
    /// Applies a response: FETCH lines with UID and FLAGS, VANISHED, HIGHESTMODSEQ.
    fn apply(&mut self, out: &str) {
        for line in out.split("\r\n") {
            if let Some(set) = line.strip_prefix("* VANISHED (EARLIER) ").or_else(|| line.strip_prefix("* VANISHED ")) {
                for u in uid_set(set) {
                    self.flags.remove(&u);
                }
            } else if line.contains(" FETCH (") {
                let uid: u32 = between(line, "UID ", " ").unwrap().parse().unwrap();
                let flags = between(line, "FLAGS (", ")").unwrap().replace("\\Recent", "");
                let mut flags: Vec<&str> = flags.split_whitespace().collect();
                flags.sort();
                self.flags.insert(uid, flags.join(" "));
            }
            if let Some(m) = between(line, "[HIGHESTMODSEQ ", "]") {
                self.modseq = m.parse().unwrap();
            }
        }
    }

    /// A full sync: what the mailbox holds now.
    fn fresh(c: &mut Client) -> Cache {
        let mut cache = Cache::default();
        cache.apply(&c.ok("f1 SELECT INBOX"));
        cache.apply(&c.ok("f2 UID FETCH 1:* (FLAGS)"));
        cache
    }
}

/// Issue 16: a QRESYNC client that moves between replicas is never
/// under-reported, and HIGHESTMODSEQ never goes down from its point of
/// view. The client syncs on A, A and B both change (each unaware of the
/// other's latest), the client moves to B with A's MODSEQ, then back to A
/// with B's: after every switch its cache equals a fresh full sync.
#[test]
fn qresync_across_replicas_is_never_short_and_never_goes_down() {
    let a = server_on(ReplicaId(7), Config::default());
    let b = server_on(ReplicaId(8), Config::default());
    let mut ca = Client::login(&a);
    for _ in 0..8 {
        ca.append("INBOX", "", PLAIN);
    }
    ship(&a, &b);
    ca.ok("a0 ENABLE QRESYNC");
    let mut cache = Cache::default();
    let out = ca.ok("a1 SELECT INBOX");
    let validity: u32 = between(&out, "[UIDVALIDITY ", "]").unwrap().parse().unwrap();
    cache.apply(&out);
    cache.apply(&ca.ok("a2 UID FETCH 1:* (FLAGS)"));
    // Changes on A the client sees; B hears of them only later.
    ca.ok("a3 UID STORE 2 +FLAGS (\\Seen)");
    ca.ok("a4 UID STORE 3 +FLAGS (\\Deleted)");
    ca.ok("a5 EXPUNGE");
    cache.apply(&ca.ok("a6 NOOP"));
    cache.apply(&ca.ok(&format!("a7 UID FETCH 1:* (FLAGS) (CHANGEDSINCE {} VANISHED)", cache.modseq)));
    cache.apply(&ca.ok("a8 SELECT INBOX"));
    assert_eq!(cache, {
        let mut c = Client::login(&a);
        Cache::fresh(&mut c)
    });
    // B, cut off, changes on its own: flags, an expunge, new mail.
    let mut cb = Client::login(&b);
    cb.ok("b0 SELECT INBOX");
    cb.ok("b1 UID STORE 4 +FLAGS (\\Flagged)");
    cb.ok("b2 UID STORE 5 +FLAGS (\\Deleted)");
    cb.ok("b3 EXPUNGE");
    cb.append("INBOX", "", PLAIN);
    // The client moves to B with A's MODSEQ.
    let mut x = Client::login(&b);
    x.ok("x0 ENABLE QRESYNC");
    let before = cache.modseq;
    let out = x.ok(&format!("x1 SELECT INBOX (QRESYNC ({validity} {before} 1:8))"));
    cache.apply(&out);
    assert!(cache.modseq > before, "HIGHESTMODSEQ went down from {before} to {}: {out}", cache.modseq);
    // Everything B holds is reported; what A changed and B has not heard of
    // yet is a rollback the client sees later.
    let mut fresh_b = Cache::fresh(&mut Client::login(&b));
    assert_eq!(cache.flags, fresh_b.flags, "the switch to B under-reported: {out}");
    // B hears of A's changes; the client's next QRESYNC on B is B's own
    // MODSEQ, answered exactly (only what changed).
    ship(&a, &b);
    let before = cache.modseq;
    let out = x.ok(&format!("x2 SELECT INBOX (QRESYNC ({validity} {before}))"));
    cache.apply(&out);
    fresh_b = Cache::fresh(&mut Client::login(&b));
    assert_eq!(cache.flags, fresh_b.flags, "{out}");
    assert!(!out.contains("UID 1 "), "an unchanged message reported on B's own MODSEQ: {out}");
    assert!(cache.modseq >= before);
    // And back to A, which has not heard of B's changes, with B's MODSEQ.
    ship(&b, &a);
    let mut y = Client::login(&a);
    y.ok("y0 ENABLE QRESYNC");
    let before = cache.modseq;
    let out = y.ok(&format!("y1 SELECT INBOX (QRESYNC ({validity} {before}))"));
    cache.apply(&out);
    assert!(cache.modseq > before, "HIGHESTMODSEQ went down from {before} to {}", cache.modseq);
    assert_eq!(cache.flags, Cache::fresh(&mut Client::login(&a)).flags, "the switch back to A under-reported: {out}");
    // CHANGEDSINCE with another replica's MODSEQ reports every message in
    // the set, and VANISHED every UID in it that is gone.
    let out = y.ok(&format!("y2 UID FETCH 1:* (FLAGS) (CHANGEDSINCE {} VANISHED)", fresh_b.modseq));
    let reported = out.matches(" FETCH (").count();
    assert_eq!(reported, cache.flags.len(), "{out}");
    assert!(out.contains("* VANISHED (EARLIER) 3,5"), "{out}");
    // UNCHANGEDSINCE with another replica's MODSEQ: every message may have
    // changed since, so the conditional store changes nothing.
    let out = y.ok(&format!("y3 UID STORE 1 (UNCHANGEDSINCE {}) +FLAGS (\\Answered)", fresh_b.modseq));
    assert!(out.contains("[MODIFIED 1]"), "{out}");
}

/// Issue 16: a FETCH of a body this replica left out parks (no answer yet),
/// names the body for the shell to ask a peer for, and runs again on
/// resume: with the body it answers; past the wait without it, NO
/// [UNAVAILABLE]; with nobody to ask, NO at once. Commands sent meanwhile
/// wait their turn. (Asking the peer is the shell's: `imap_e2e`.)
#[test]
fn a_fetch_of_a_left_out_body_waits_for_a_peer() {
    let config = Config { body_wait: Duration::from_secs(5), ..Config::default() };
    let here = server_on(ReplicaId(7), config);
    let there = server_on(ReplicaId(8), Config::default());
    // Two messages from the other replica: ops only, no bodies.
    let mut t = Client::login(&there);
    t.append("INBOX", "", PLAIN);
    t.append("INBOX", "", MULTI);
    ship(&there, &here);
    let mut c = Client::login(&here);
    c.ok("s SELECT INBOX");
    let out = c.send("f1 FETCH 1:2 (BODY.PEEK[])\r\nn1 NOOP");
    assert!(!out.contains("f1 ") && !out.contains("n1 "), "nothing answered while waiting: {out}");
    assert!(matches!(c.s.wants(), Wants::Bodies(_)), "{:?}", c.s.wants());
    assert_eq!(c.s.wanted_bodies().len(), 2);
    // Both bodies arrive; the FETCH runs again and answers, then the NOOP.
    for raw in [PLAIN, MULTI] {
        here.shared.store.put_blob(raw.as_bytes()).unwrap();
    }
    c.s.resume(Instant::now());
    let out = c.output();
    assert!(out.contains("Shall we meet at noon?") && out.contains("quarterly numbers"), "{out}");
    assert!(out.find("f1 OK").unwrap() < out.find("n1 OK").unwrap(), "{out}");
    // A body that never comes: past the wait, NO [UNAVAILABLE].
    t.append("INBOX", "", "Subject: never\r\n\r\nlost\r\n");
    ship(&there, &here);
    c.ok("n2 NOOP");
    c.send("f2 FETCH 3 (BODY.PEEK[])");
    assert!(matches!(c.s.wants(), Wants::Bodies(_)));
    c.s.resume(Instant::now());
    assert!(matches!(c.s.wants(), Wants::Bodies(_)), "still within the wait: parked again");
    c.s.resume(Instant::now() + Duration::from_secs(6));
    let out = c.output();
    assert!(out.contains("f2 NO [UNAVAILABLE]"), "{out}");
    // Nobody to ask: NO at once.
    c.send("f3 FETCH 3 (BODY.PEEK[])");
    c.s.nobody_to_ask(Instant::now());
    let out = c.output();
    assert!(out.contains("f3 NO [UNAVAILABLE]"), "{out}");
    assert_eq!(c.s.wants(), Wants::Read);
}

/// With exposure after one peer, a SELECT first catches up with a connected
/// peer; while it cannot, the command parks ([`Wants::CatchUp`]) instead
/// of blocking a thread, and what was pipelined behind it waits its turn.
/// Once the peer answered the probe with nothing this replica lacks, it
/// answers; with no answer past the wait, it answers anyway (counted).
#[test]
fn a_select_parks_until_it_caught_up_with_a_peer() {
    let peer = ReplicaId(8);
    let exposure = starling_store::ExposurePolicy { peers: 1, wait: Duration::from_secs(5), ..Default::default() };
    exposure.pinned.insert("alice".into(), vec![peer]);
    let here = server_on(ReplicaId(7), Config { exposure, ..Config::default() });
    let store = here.shared.store.clone();
    let mut c = Client::login(&here);
    let out = c.send("s1 SELECT INBOX\r\nn1 NOOP");
    assert!(!out.contains("s1 ") && !out.contains("n1 "), "nothing answered while catching up: {out}");
    assert!(matches!(c.s.wants(), Wants::CatchUp(_)), "{:?}", c.s.wants());
    let probe = store.probe_wanted("alice");
    assert!(probe > 0, "the peers are asked what they have");
    // Still no peer: parked again, without a second probe.
    c.s.resume(Instant::now());
    assert!(matches!(c.s.wants(), Wants::CatchUp(_)));
    assert_eq!(store.probe_wanted("alice"), probe);
    // The peer connects and answers the probe: it has nothing this one lacks.
    let _up = store.link_up(peer);
    store.note_ack("alice", peer, &store.version("alice").unwrap());
    store.note_probe_answer("alice", peer, probe);
    c.s.resume(Instant::now());
    let out = c.output();
    assert!(out.find("s1 OK").unwrap() < out.find("n1 OK").unwrap(), "{out}");
    assert_eq!(c.s.wants(), Wants::Read);
    assert_eq!(store.exposure_stats().catch_up_short, 0);
    // Another SELECT: a new probe nobody answers; past the wait it answers.
    c.send("s2 EXAMINE INBOX");
    assert!(matches!(c.s.wants(), Wants::CatchUp(_)));
    c.s.resume(Instant::now() + Duration::from_secs(6));
    assert!(c.output().contains("s2 OK"));
    assert_eq!(store.exposure_stats().catch_up_short, 1);
}

/// Issue 14: a FETCH of every body of a large mailbox goes out in parts of
/// about [`FETCH_PART_BYTES`] ([`Wants::Write`]: each part is written before
/// the next is built), not as one answer held whole in memory (it was: a
/// 206 MB FETCH raised the node's peak RSS by about 200 MB). The parts add
/// up to every message once, in order, then the tagged OK, then the command
/// that was pipelined behind it.
#[test]
fn a_fetch_of_many_bodies_goes_out_in_bounded_parts() {
    let srv = server();
    let mut c = Client::login(&srv);
    let filler = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n".repeat(5_000);
    let n = 40;
    for i in 0..n {
        c.append("INBOX", "", &format!("Subject: big {i}\r\n\r\n{filler}"));
    }
    c.ok("s SELECT INBOX");
    c.s.receive(b"f FETCH 1:* (BODY.PEEK[])\r\nn NOOP\r\n");
    let mut parts = vec![c.s.take_output()];
    while c.s.wants() == Wants::Write {
        c.s.resume(Instant::now());
        parts.push(c.s.take_output());
    }
    assert_eq!(c.s.wants(), Wants::Read);
    let message = 330_000;
    for p in &parts {
        assert!(p.len() <= FETCH_PART_BYTES + message, "a part of {} bytes", p.len());
        assert_responses(p);
    }
    let total: usize = parts.iter().map(Vec::len).sum();
    assert!(parts.len() >= total / (FETCH_PART_BYTES + message), "{} parts for {total} bytes", parts.len());
    assert!(parts.len() >= 3, "{} parts for {total} bytes", parts.len());
    let all = String::from_utf8_lossy(&parts.concat()).into_owned();
    let seqs: Vec<usize> = all
        .lines()
        .filter_map(|l| l.strip_prefix("* ")?.strip_suffix("}")?.split_once(" FETCH ")?.0.parse().ok())
        .collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "every message once, in order");
    assert!(all.find("f OK").unwrap() < all.find("n OK").unwrap());
    assert_eq!(all.matches("f OK").count(), 1);
}

/// APPENDs `msg` to INBOX with an internal date.
fn append_dated(c: &mut Client, date: &str, msg: &str) {
    let first = c.send(&format!("ap APPEND INBOX () \"{date}\" {{{}}}", msg.len()));
    assert!(first.starts_with("+ "), "{first}");
    let out = c.raw(format!("{msg}\r\n").as_bytes());
    assert!(out.contains("ap OK [APPENDUID "), "{out}");
}

/// The untagged line starting with `prefix` in `out`.
fn line_of<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in {out}")).trim_end()
}

/// Five messages for SORT and THREAD: (internal date, message). Message 3
/// has no Date header (its internal date stands in), message 4's Date is
/// 8 Feb in its own zone but 9 Feb 04:00 UTC, message 5 has no From.
const SORTED: [(&str, &str); 5] = [
    (
        "05-Mar-2022 00:00:00 +0000",
        "From: Zed <zed@x.org>\r\nTo: bob@x.org\r\nSubject: Re: apples\r\nDate: Wed, 9 Feb 2022 10:00:00 +0000\r\nMessage-ID: <m1@x>\r\n\r\nhi\r\n",
    ),
    (
        "04-Mar-2022 00:00:00 +0000",
        "From: alice@x.org\r\nTo: Carl <carl@x.org>\r\nCc: amy@x.org\r\nSubject: bananas\r\nDate: Mon, 7 Feb 2022 10:00:00 +0000\r\nMessage-ID: <m2@x>\r\n\r\nthe longest body of all five, by some way, padded to be sure\r\n",
    ),
    (
        "03-Mar-2022 00:00:00 +0000",
        "From: Bob <BOB@x.org>\r\nSubject: [list] Fwd: Apples (fwd)\r\nMessage-ID: <m3@x>\r\n\r\nfwd\r\n",
    ),
    (
        "02-Mar-2022 00:00:00 +0000",
        "From: mike@x.org\r\nSubject: cherries\r\nDate: Tue, 8 Feb 2022 23:00:00 -0500\r\nMessage-ID: <m4@x>\r\n\r\na body\r\n",
    ),
    (
        "01-Mar-2022 00:00:00 +0000",
        "To: Dan <dan@x.org>\r\nSubject: re: [fwd: bananas]\r\nDate: Thu, 10 Feb 2022 10:00:00 +0000\r\nMessage-ID: <m5@x>\r\nIn-Reply-To: <m2@x>\r\n\r\nok\r\n",
    ),
];

/// A session with INBOX selected holding [`SORTED`]; UIDs are sequence
/// numbers plus one (a first message was expunged).
fn sorted_inbox(srv: &Server) -> Client {
    let mut c = Client::login(srv);
    c.append("INBOX", "\\Deleted", PLAIN);
    for (date, msg) in SORTED {
        append_dated(&mut c, date, msg);
    }
    c.ok("s0 SELECT INBOX");
    c.ok("s1 EXPUNGE");
    c
}

#[test]
fn sort_orders_by_every_rfc5256_key() {
    let srv = server();
    let mut c = sorted_inbox(&srv);
    assert!(line_of(&c.ok("k CAPABILITY"), "* CAPABILITY").split(' ').any(|w| w == "SORT"));
    let mut sort = |criteria: &str| line_of(&c.ok(&format!("s SORT ({criteria}) UTF-8 ALL")), "* SORT").to_string();
    // Base subjects: APPLES (1, 3), BANANAS (2, 5), CHERRIES (4); ties by sequence number.
    assert_eq!(sort("SUBJECT"), "* SORT 1 3 2 5 4");
    assert_eq!(sort("SUBJECT REVERSE DATE"), "* SORT 3 1 5 2 4");
    // The first From's local part, case-insensitively; none sorts first.
    assert_eq!(sort("FROM"), "* SORT 5 2 3 4 1");
    assert_eq!(sort("REVERSE FROM"), "* SORT 1 4 3 2 5");
    assert_eq!(sort("TO"), "* SORT 3 4 1 2 5");
    assert_eq!(sort("CC SUBJECT"), "* SORT 1 3 5 4 2");
    // Date headers compared in UTC; no Date header: the internal date.
    assert_eq!(sort("DATE"), "* SORT 2 4 1 5 3");
    assert_eq!(sort("ARRIVAL"), "* SORT 5 4 3 2 1");
    assert_eq!(sort("REVERSE ARRIVAL"), "* SORT 1 2 3 4 5");
    let mut by_size: Vec<(usize, usize)> = SORTED.iter().enumerate().map(|(i, (_, m))| (m.len(), i + 1)).collect();
    by_size.sort();
    let expected: Vec<String> = by_size.iter().map(|(_, s)| s.to_string()).collect();
    assert_eq!(sort("SIZE"), format!("* SORT {}", expected.join(" ")));
    // Any SEARCH key; UID SORT answers UIDs; no match: an empty SORT.
    let out = c.ok("s UID SORT (SUBJECT) US-ASCII NOT FROM zed");
    assert_eq!(line_of(&out, "* SORT"), "* SORT 4 3 6 5");
    assert!(out.contains("s OK UID SORT completed"), "{out}");
    assert_eq!(line_of(&c.ok("s SORT (DATE) UTF-8 SUBJECT nothing"), "* SORT"), "* SORT");
    assert_eq!(line_of(&c.ok("s SORT (DATE) UTF-8 OR 1 UID 6"), "* SORT"), "* SORT 1 5");
    let out = c.send("s SORT (SUBJECT) ISO-8859-1 ALL");
    assert!(out.contains("s NO [BADCHARSET"), "{out}");
}

#[test]
fn thread_orderedsubject_and_references() {
    let srv = server();
    let mut c = sorted_inbox(&srv);
    let caps = c.ok("k CAPABILITY");
    let caps: Vec<&str> = line_of(&caps, "* CAPABILITY").split(' ').collect();
    assert!(caps.contains(&"THREAD=ORDEREDSUBJECT") && caps.contains(&"THREAD=REFERENCES"), "{caps:?}");
    // By base subject, threads by their first message's date.
    assert_eq!(line_of(&c.ok("t THREAD ORDEREDSUBJECT UTF-8 ALL"), "* THREAD"), "* THREAD (2 5)(4)(1 3)");
    // 5 replies to 2; 1 and 3 share a base subject, both replies: a dummy over them.
    assert_eq!(line_of(&c.ok("t THREAD REFERENCES UTF-8 ALL"), "* THREAD"), "* THREAD (2 5)(4)((1)(3))");
    let out = c.ok("t UID THREAD REFERENCES US-ASCII ALL");
    assert_eq!(line_of(&out, "* THREAD"), "* THREAD (3 6)(5)((2)(4))");
    assert!(out.contains("t OK UID THREAD completed"), "{out}");
    assert_eq!(line_of(&c.ok("t THREAD REFERENCES UTF-8 NOT SUBJECT apples"), "* THREAD"), "* THREAD (2 5)(4)");
    assert_eq!(line_of(&c.ok("t THREAD REFERENCES UTF-8 SUBJECT nothing"), "* THREAD"), "* THREAD");
    assert!(c.send("t THREAD REFERENCES ISO-8859-1 ALL").contains("t NO [BADCHARSET"));
    assert!(c.send("t THREAD XYZZY UTF-8 ALL").contains("t BAD"));

    // Dummies, duplicate and self-referencing Message-IDs (RFC 5256 §3).
    c.ok("m CREATE T");
    let msgs = [
        "Message-ID: <a>\r\nSubject: topic\r\nDate: Mon, 7 Feb 2022 01:00:00 +0000",
        "Message-ID: <b>\r\nReferences: <a>\r\nSubject: Re: topic\r\nDate: Mon, 7 Feb 2022 02:00:00 +0000",
        "Message-ID: <c>\r\nReferences: <a> <b>\r\nSubject: Re: topic\r\nDate: Mon, 7 Feb 2022 03:00:00 +0000",
        // Two replies to a message not here: a dummy over them stays.
        "Message-ID: <d>\r\nReferences: <missing>\r\nSubject: other\r\nDate: Mon, 7 Feb 2022 04:00:00 +0000",
        "Message-ID: <e>\r\nReferences: <missing>\r\nSubject: Re: other\r\nDate: Mon, 7 Feb 2022 05:00:00 +0000",
        // A duplicate Message-ID: the first message keeps it.
        "Message-ID: <a>\r\nSubject: dup\r\nDate: Mon, 7 Feb 2022 06:00:00 +0000",
        // Refers to itself: no loop.
        "Message-ID: <g>\r\nReferences: <g>\r\nSubject: self\r\nDate: Mon, 7 Feb 2022 07:00:00 +0000",
        // Dated before its parent; still under it.
        "Message-ID: <h>\r\nIn-Reply-To: <c>\r\nSubject: Re: topic\r\nDate: Sun, 6 Feb 2022 00:00:00 +0000",
        // Its References make a missing message <a>'s parent: that dummy
        // has one child and goes; this one becomes <a>'s second child.
        "Message-ID: <i>\r\nReferences: <nothere> <a>\r\nSubject: Re: topic\r\nDate: Mon, 7 Feb 2022 09:00:00 +0000",
    ];
    for m in msgs {
        c.append("T", "", &format!("{m}\r\n\r\nx\r\n"));
    }
    c.ok("m SELECT T");
    assert_eq!(line_of(&c.ok("t THREAD REFERENCES UTF-8 ALL"), "* THREAD"), "* THREAD (1 (2 3 8)(9))((4)(5))(6)(7)");
}

/// Puts `messages` into a new mailbox in one write (an APPEND each would
/// take minutes) and selects it.
fn bulk_mailbox(srv: &Server, c: &mut Client, name: &str, messages: impl Iterator<Item = String>) {
    c.ok(&format!("b CREATE {name}"));
    let store = &srv.shared.store;
    let id = store.read("alice").unwrap().names().tree.by_name[name];
    store
        .write("alice", |b| {
            for (i, m) in messages.enumerate() {
                b.append_body(id, m.as_bytes(), 1_600_000_000 + i as i64, vec![])?;
            }
            Ok(())
        })
        .unwrap();
    c.ok(&format!("b SELECT {name}"));
}

/// THREAD's answer without the response parser (imap-codec's stops at a
/// nesting of 8).
fn thread_unparsed(c: &mut Client, command: &str) -> String {
    c.s.receive(format!("{command}\r\n").as_bytes());
    let out = String::from_utf8(c.s.take_output()).unwrap();
    assert!(out.ends_with(" OK THREAD completed\r\n"), "{}", &out[out.len().saturating_sub(200)..]);
    line_of(&out, "* THREAD").to_string()
}

#[test]
fn thread_references_survives_a_chain_of_100000_and_a_deep_tree() {
    const N: usize = 100_000;
    let srv = server();
    let mut c = Client::login(&srv);
    let reply = |id: usize, parent: Option<usize>| {
        let refs = parent.map_or(String::new(), |p| format!("In-Reply-To: <{p}@c>\r\n"));
        format!("Message-ID: <{id}@c>\r\n{refs}Subject: Re: chain\r\n\r\nx\r\n")
    };
    // A chain, oldest first: 1 2 3 … N.
    bulk_mailbox(&srv, &mut c, "Chain", (1..=N).map(|k| reply(k, (k > 1).then(|| k - 1))));
    let expected: Vec<String> = (1..=N).map(|k| k.to_string()).collect();
    let line = thread_unparsed(&mut c, "t THREAD REFERENCES UTF-8 ALL");
    assert!(line == format!("* THREAD ({})", expected.join(" ")), "{}", &line[..200]);
    // The same chain newest first: the root is the last message.
    bulk_mailbox(&srv, &mut c, "Reversed", (1..=N).rev().map(|k| reply(k, (k > 1).then(|| k - 1))));
    let expected: Vec<String> = (1..=N).rev().map(|k| k.to_string()).collect();
    let line = thread_unparsed(&mut c, "t THREAD REFERENCES UTF-8 ALL");
    assert!(line == format!("* THREAD ({})", expected.join(" ")), "{}", &line[..200]);
    // A comb: each message of a chain also has a leaf reply, so the
    // answer nests N/2 deep. c_k is 2k-1, its leaf 2k (dated before c_k+1).
    let m = N / 2;
    bulk_mailbox(
        &srv,
        &mut c,
        "Comb",
        (1..=m).flat_map(|k| [reply(2 * k - 1, (k > 1).then(|| 2 * k - 3)), reply(2 * k, Some(2 * k - 1))]),
    );
    let mut expected = String::from("* THREAD (");
    for k in 1..m {
        expected.push_str(&format!("{} ({})(", 2 * k - 1, 2 * k));
    }
    expected.push_str(&format!("{} {}", 2 * m - 1, 2 * m));
    expected.push_str(&")".repeat(m));
    let line = thread_unparsed(&mut c, "t THREAD REFERENCES UTF-8 ALL");
    assert!(line == expected, "{}", &line[..200]);
    // ORDEREDSUBJECT over the same: one thread, the first message the parent.
    let line = thread_unparsed(&mut c, "t THREAD ORDEREDSUBJECT UTF-8 ALL");
    assert!(line.starts_with("* THREAD (1 (2)(3)(4)") && line.ends_with(&format!("({N}))")), "{}", &line[..200]);
}

/// The `* n FETCH (UID u)` answers in `out`, as (n, u).
fn fetched_uids(out: &str) -> Vec<(u32, u32)> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("* ")?;
            let (n, rest) = rest.split_once(" FETCH (UID ")?;
            let u = rest.split(|c: char| !c.is_ascii_digit()).next()?;
            Some((n.parse().ok()?, u.parse().ok()?))
        })
        .collect()
}

#[test]
fn searchres_saves_a_result_for_later_commands() {
    let srv = server();
    let mut c = sorted_inbox(&srv);
    assert!(line_of(&c.ok("k CAPABILITY"), "* CAPABILITY").split(' ').any(|w| w == "SEARCHRES"));
    // Nothing saved yet: `$` names no message.
    assert_eq!(fetched_uids(&c.ok("r1 FETCH $ (UID)")), vec![]);
    // SAVE alone answers nothing but OK (RFC 5182 §2.4).
    let out = c.ok("r2 SEARCH RETURN (SAVE) SUBJECT apples");
    assert!(!out.contains("* ESEARCH") && !out.contains("* SEARCH"), "{out}");
    assert_eq!(fetched_uids(&c.ok("r3 FETCH $ (UID)")), vec![(1, 2), (3, 4)]);
    assert_eq!(fetched_uids(&c.ok("r3 UID FETCH $ (UID)")), vec![(1, 2), (3, 4)]);
    c.ok("r4 UID STORE $ +FLAGS.SILENT (\\Flagged $Forwarded)");
    assert_eq!(c.search_line("FLAGGED KEYWORD $Forwarded"), "* SEARCH 1 3");
    // `$` as a search key, alone, in OR, and as UID's set.
    assert_eq!(line_of(&c.ok("r5 UID SEARCH $ FROM zed"), "* SEARCH"), "* SEARCH 2");
    assert_eq!(c.search_line("OR $ 5"), "* SEARCH 1 3 5");
    assert_eq!(c.search_line("UID $"), "* SEARCH 1 3");
    assert_eq!(line_of(&c.ok("r5 SORT (REVERSE ARRIVAL) UTF-8 $"), "* SORT"), "* SORT 1 3");
    // SAVE with MIN saves the first match only, and answers MIN.
    let out = c.ok("r6 SEARCH RETURN (SAVE MIN) SUBJECT bananas");
    assert!(out.contains("* ESEARCH (TAG \"r6\") MIN 2\r\n"), "{out}");
    assert_eq!(fetched_uids(&c.ok("r7 FETCH $ (UID)")), vec![(2, 3)]);
    // A SAVE that uses `$` reads the old result, then replaces it.
    c.ok("r8 SEARCH RETURN (SAVE) OR $ 4");
    assert_eq!(fetched_uids(&c.ok("r9 FETCH $ (UID)")), vec![(2, 3), (4, 5)]);
    c.ok("r10 CREATE Dest");
    assert!(c.ok("r11 COPY $ Dest").contains("[COPYUID "));
    assert!(c.ok("r12 STATUS Dest (MESSAGES)").contains("(MESSAGES 2)"));
    // Expunged messages drop out of it.
    c.ok("r13 SEARCH RETURN (SAVE) ALL");
    c.ok("r14 STORE 1 +FLAGS.SILENT (\\Deleted)");
    c.ok("r15 EXPUNGE");
    assert_eq!(fetched_uids(&c.ok("r16 FETCH $ (UID)")), vec![(1, 3), (2, 4), (3, 5), (4, 6)]);
    let out = c.ok("r17 UID MOVE $ Dest");
    assert!(out.contains("[COPYUID ") && out.contains("* 1 EXPUNGE"), "{out}");
    // A failed SAVE empties it.
    c.ok("r18 SELECT Dest");
    c.ok("r19 SEARCH RETURN (SAVE) ALL");
    assert!(c.send("r20 SEARCH RETURN (SAVE) CHARSET ISO-8859-1 ALL").contains("r20 NO [BADCHARSET"));
    assert_eq!(fetched_uids(&c.ok("r21 FETCH $ (UID)")), vec![]);
    // SELECT, EXAMINE, UNSELECT and CLOSE forget it.
    for (i, reset) in ["SELECT Dest", "EXAMINE Dest", "UNSELECT", "CLOSE"].iter().enumerate() {
        c.ok("s1 SELECT Dest");
        c.ok("s2 SEARCH RETURN (SAVE) ALL");
        assert_eq!(fetched_uids(&c.ok("s3 FETCH $ (UID)")).len(), 6);
        c.ok(&format!("s4 {reset}"));
        if i >= 2 {
            assert!(c.send("s5 FETCH $ (UID)").contains("s5 BAD"));
            c.ok("s6 SELECT Dest");
        }
        assert_eq!(fetched_uids(&c.ok("s7 FETCH $ (UID)")), vec![], "after {reset}");
    }
    // Quoted and literal `$` are strings, not the saved result.
    c.append("Dest", "", "Subject: costs $ 5\r\n\r\nx\r\n");
    assert_eq!(c.search_line("SUBJECT \"$\""), "* SEARCH 7");
    assert_eq!(c.search_line("SUBJECT {1+}\r\n$"), "* SEARCH 7");
    // An atom `$` where a search key takes a string, number or date is that
    // atom, not the saved result (RFC 5182 §2.1: `$` only as a sequence set).
    c.append("Dest", "", "Subject: code 4294967295\r\n\r\nx\r\n");
    c.ok("t1 SEARCH RETURN (SAVE) ALL");
    assert_eq!(c.search_line("SUBJECT $"), "* SEARCH 7");
    assert_eq!(c.search_line("HEADER Subject $"), "* SEARCH 7");
    assert_eq!(c.search_line("HEADER $ x"), "* SEARCH");
    assert_eq!(c.search_line("NOT SUBJECT $ SUBJECT costs"), "* SEARCH");
    assert_eq!(c.search_line("OR SUBJECT $ SUBJECT code"), "* SEARCH 7 8");
    assert_eq!(c.search_line("SUBJECT \"$\" $"), "* SEARCH 7");
    assert!(c.send("t2 SEARCH LARGER $").contains("t2 BAD"));
    assert_eq!(line_of(&c.ok("t3 SORT (SUBJECT) UTF-8 SUBJECT $"), "* SORT"), "* SORT 7");
    assert_eq!(line_of(&c.ok("t4 SORT (SUBJECT) UTF-8 $"), "* SORT").split(' ').count(), 2 + 8);
}

#[test]
fn list_childinfo_and_subscriptions_that_outlive_delete() {
    let srv = server();
    let mut c = Client::login(&srv);
    for m in ["Fruit/Apple", "Fruit/Pear", "Veg/Bean", "Tofu"] {
        c.ok(&format!("a CREATE {m}"));
    }
    for m in ["Fruit/Apple", "Veg", "Veg/Bean"] {
        c.ok(&format!("a SUBSCRIBE {m}"));
    }
    // RECURSIVEMATCH: a parent of a subscribed mailbox is listed with
    // CHILDINFO, subscribed or not (RFC 5258 §3.5).
    let out = c.ok("l LIST (SUBSCRIBED RECURSIVEMATCH) \"\" \"%\"");
    assert!(out.contains("* LIST (\\HasChildren) \"/\" Fruit (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n"), "{out}");
    assert!(
        out.contains("* LIST (\\HasChildren \\Subscribed) \"/\" Veg (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n"),
        "{out}"
    );
    assert!(!out.contains("Tofu") && !out.contains("Apple"), "{out}");
    let out = c.ok("l LIST (SUBSCRIBED) \"\" \"%\"");
    assert!(!out.contains("CHILDINFO") && !out.contains("Fruit"), "{out}");
    // DELETE keeps the subscription: the name is listed \NonExistent.
    c.ok("d DELETE Fruit/Apple");
    let out = c.ok("l LIST (SUBSCRIBED) \"\" \"*\"");
    assert!(out.contains("* LIST (\\NonExistent \\Subscribed) \"/\" Fruit/Apple\r\n"), "{out}");
    let out = c.ok("l LIST (SUBSCRIBED RECURSIVEMATCH) \"\" \"%\"");
    assert!(out.contains("* LIST (\\HasChildren) \"/\" Fruit (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n"), "{out}");
    assert!(c.ok("l LSUB \"\" \"*\"").contains("* LSUB (\\Noselect) \"/\" Fruit/Apple\r\n"));
    assert!(!c.ok("l LIST \"\" \"*\"").contains("Apple"));
    // Created again, the name is still subscribed.
    c.ok("c CREATE Fruit/Apple");
    let out = c.ok("l LIST (SUBSCRIBED) \"\" \"Fruit/*\"");
    assert!(out.contains("* LIST (\\HasNoChildren \\Subscribed) \"/\" Fruit/Apple\r\n"), "{out}");
    assert_eq!(out.matches("Apple").count(), 1, "{out}");
    // UNSUBSCRIBE takes a name without a mailbox.
    c.ok("d DELETE Fruit/Apple");
    c.ok("u UNSUBSCRIBE Fruit/Apple");
    assert!(!c.ok("l LIST (SUBSCRIBED) \"\" \"*\"").contains("Apple"));
    assert!(c.send("u UNSUBSCRIBE Fruit/Apple").contains("u NO [NONEXISTENT]"));
    // A subscribed name whose parent is gone too: the parent is listed
    // \NonExistent with CHILDINFO.
    c.ok("d DELETE Veg/Bean");
    c.ok("d DELETE Veg");
    let out = c.ok("l LIST (SUBSCRIBED RECURSIVEMATCH) \"\" \"%\"");
    assert!(
        out.contains("* LIST (\\NonExistent \\Subscribed) \"/\" Veg (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n"),
        "{out}"
    );
    c.ok("u UNSUBSCRIBE Veg");
    let out = c.ok("l LIST (SUBSCRIBED RECURSIVEMATCH) \"\" \"%\"");
    assert!(out.contains("* LIST (\\NonExistent) \"/\" Veg (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n"), "{out}");
}

#[test]
fn esort_answers_min_max_count_and_all_in_sort_order() {
    let srv = server();
    let mut c = sorted_inbox(&srv);
    assert!(line_of(&c.ok("k CAPABILITY"), "* CAPABILITY").split(' ').any(|w| w == "ESORT"));
    // MIN and MAX are the first and last in sort order; ALL keeps the order.
    let out = c.ok("e SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) UTF-8 ALL");
    assert_eq!(line_of(&out, "* ESEARCH"), "* ESEARCH (TAG \"e\") MIN 1 MAX 4 COUNT 5 ALL 1,3,2,5,4");
    let out = c.ok("e UID SORT RETURN () (DATE) UTF-8 ALL");
    assert_eq!(line_of(&out, "* ESEARCH"), "* ESEARCH (TAG \"e\") UID ALL 3,5,2,6,4");
    assert!(!out.contains("* SORT"), "{out}");
    let out = c.ok("e SORT RETURN (MIN COUNT) (DATE) UTF-8 SUBJECT nothing");
    assert_eq!(line_of(&out, "* ESEARCH"), "* ESEARCH (TAG \"e\") COUNT 0");
    // SAVE (RFC 5182): the messages, for `$`; alone it answers nothing.
    let out = c.ok("e SORT RETURN (SAVE) (DATE) UTF-8 NOT FROM zed");
    assert!(!out.contains("* ESEARCH") && !out.contains("* SORT"), "{out}");
    assert_eq!(fetched_uids(&c.ok("f FETCH $ (UID)")), vec![(2, 3), (3, 4), (4, 5), (5, 6)]);
    let out = c.ok("e SORT RETURN (SAVE MAX) (DATE) UTF-8 NOT FROM zed");
    assert_eq!(line_of(&out, "* ESEARCH"), "* ESEARCH (TAG \"e\") MAX 3");
    assert_eq!(fetched_uids(&c.ok("f FETCH $ (UID)")), vec![(3, 4)]);
}

/// SORT and THREAD answer from the sort keys the store kept when each body
/// was stored: no body is read (before the keys, every call read and
/// parsed every message's header: 2.2–2.8 s on 100,000 messages).
#[test]
fn sort_and_thread_read_no_body() {
    let srv = server();
    let mut c = sorted_inbox(&srv);
    let store = srv.shared.store.clone();
    let before = store.body_reads();
    for cmd in [
        "s SORT (SUBJECT) UTF-8 ALL",
        "s SORT (REVERSE DATE FROM) UTF-8 ALL",
        "s SORT (TO CC) UTF-8 ALL",
        "t THREAD REFERENCES UTF-8 ALL",
        "t THREAD ORDEREDSUBJECT UTF-8 ALL",
    ] {
        c.ok(cmd);
    }
    assert_eq!(store.body_reads() - before, 0, "SORT and THREAD read bodies");
    // A SEARCH on the header still reads them (the counter counts).
    c.ok("s SEARCH SUBJECT apples");
    assert!(store.body_reads() > before);
}

/// Header lines that make sort keys tricky: encoded words, folding,
/// groups, routes, comments, bad dates, reply markers, duplicate and
/// missing message IDs.
fn tricky_message() -> impl Strategy<Value = String> {
    let subject = prop::collection::vec(
        prop::sample::select(vec![
            "Re: ",
            "RE :",
            "Fwd: ",
            "fw: ",
            "[list] ",
            "(fwd)",
            " ",
            "\t",
            "apples",
            "Apples",
            "=?utf-8?q?caf=C3=A9?= ",
            "[fwd: ",
            "]",
            "é",
            "\r\n ",
            "re[2]: ",
            "[]",
            "banana ",
        ]),
        0..6,
    )
    .prop_map(|parts| parts.concat());
    let address = prop::sample::select(vec![
        "\"Ann\" <ann@x>",
        "bob@x (Bob)",
        "<@route:carl@x>",
        "group: dan@x, eve@x;",
        "=?utf-8?b?w6k=?= <e@x>",
        "",
        "undisclosed-recipients:;",
        "MAILBOX@x",
        "\"quoted local\"@x",
        "Zed <zed@x>, amy@x",
        "bare",
    ]);
    let date = prop::sample::select(vec![
        "Mon, 7 Feb 2022 10:00:00 +0000",
        "7 Feb 2022 10:00 -0500",
        "Tue, 8 Feb 2022 23:59:59 +1400",
        "garbage",
        "Tue, 30 Feb 2022 10:00:00 +0000",
        "Sun, 6 Feb 2022 00:00:00 GMT",
    ]);
    let id = prop::sample::select(vec!["a@x", "b@x", "c@x", "d@x", "e@x", "f@x", "has space", ""]);
    (
        prop::option::of(subject),
        prop::option::of(address.clone()),
        prop::option::of(address.clone()),
        prop::option::of(address),
        prop::option::of(date),
        prop::option::of(id.clone()),
        prop::collection::vec(id.clone(), 0..4),
        prop::option::of(id),
        any::<bool>(),
    )
        .prop_map(|(subject, from, to, cc, date, mid, refs, reply_to, lf)| {
            let mut h = String::new();
            let mut line = |name: &str, v: Option<String>| {
                if let Some(v) = v {
                    h.push_str(&format!("{name}: {v}\r\n"));
                }
            };
            line("Subject", subject);
            line("From", from.map(str::to_string));
            line("To", to.map(str::to_string));
            line("Cc", cc.map(str::to_string));
            line("Date", date.map(str::to_string));
            line("Message-ID", mid.map(|m| format!("<{m}>")));
            line(
                "References",
                (!refs.is_empty()).then(|| refs.iter().map(|r| format!("<{r}>")).collect::<Vec<_>>().join(" ")),
            );
            line("In-Reply-To", reply_to.map(|r| format!("<{r}> (comment)")));
            let msg = format!("{h}\r\nbody\r\n");
            if lf {
                msg.replace("\r\n", "\n")
            } else {
                msg
            }
        })
}

/// A server on a copy of `srv`'s store file with the sort keys table
/// dropped (the format unchanged, so nothing builds them again): every
/// message is read as a body without keys, from its header.
fn without_keys(srv: &Server) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    std::fs::copy(srv._dir.path().join("store.redb"), &path).unwrap();
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        assert!(w.delete_table(redb::TableDefinition::<&[u8; 32], &[u8]>::new("sort_keys")).unwrap());
        w.commit().unwrap();
    }
    let store = Store::open(&path, ReplicaId(7), StoreOptions::default()).unwrap();
    Server { _dir: dir, shared: Shared::new(Arc::new(store), Config::default()), notified: Default::default() }
}

/// What a session answers to `commands` (unparsed: THREAD may nest deeper
/// than the response parser follows).
fn answers(srv: &Server, commands: &[&str]) -> Vec<String> {
    let mut c = Client::login(srv);
    c.ok("s SELECT INBOX");
    commands
        .iter()
        .map(|cmd| {
            c.s.receive(format!("{cmd}\r\n").as_bytes());
            String::from_utf8(c.s.take_output()).unwrap()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// SORT and THREAD answer the same from the stored keys as from the
    /// headers parsed at the call (what every call did before the keys).
    #[test]
    fn stored_keys_answer_as_the_headers_do(
        messages in prop::collection::vec((tricky_message(), 0..5i64), 1..40),
    ) {
        let srv = server();
        let store = srv.shared.store.clone();
        store
            .write("alice", |b| {
                for (m, day) in &messages {
                    b.append_body(starling_model::INBOX, m.as_bytes(), 1_644_000_000 + day * 86_400, vec![])?;
                }
                Ok(())
            })
            .unwrap();
        let commands = [
            "a SORT (SUBJECT) UTF-8 ALL",
            "a SORT (FROM) UTF-8 ALL",
            "a SORT (REVERSE TO) UTF-8 ALL",
            "a SORT (CC DATE) UTF-8 ALL",
            "a SORT (DATE) UTF-8 ALL",
            "a SORT (REVERSE ARRIVAL SIZE) UTF-8 ALL",
            "a UID SORT (SUBJECT REVERSE DATE) UTF-8 ALL",
            "a THREAD REFERENCES UTF-8 ALL",
            "a THREAD ORDEREDSUBJECT UTF-8 ALL",
        ];
        let before = store.body_reads();
        let with = answers(&srv, &commands);
        prop_assert_eq!(store.body_reads(), before, "answered from the keys");
        let bare = without_keys(&srv);
        let without = answers(&bare, &commands);
        prop_assert!(bare.shared.store.body_reads() > 0, "answered from the headers");
        for (a, b) in with.iter().zip(&without) {
            prop_assert!(a.contains("a OK"), "{}", a);
            prop_assert_eq!(a, b);
        }
    }
}

/// The value of `name (…)` in `out`: `MAILBOXID (x)` → `x`.
fn paren_value<'a>(out: &'a str, name: &str) -> &'a str {
    between(out, &format!("{name} ("), ")").unwrap_or_else(|| panic!("no {name} in {out}"))
}

fn capabilities(c: &mut Client) -> Vec<String> {
    let out = c.ok("k CAPABILITY");
    let line = out.lines().find(|l| l.starts_with("* CAPABILITY ")).expect("CAPABILITY line");
    line.split(' ').skip(2).map(|s| s.to_string()).collect()
}

/// OBJECTID (RFC 8474) with the RFC's examples: MAILBOXID from CREATE,
/// SELECT and STATUS, kept by RENAME; EMAILID kept by COPY, THREADID NIL
/// (no threads kept per message, §5.2), SEARCH EMAILID / THREADID (§6).
#[test]
fn objectid_identifies_mailboxes_and_messages() {
    let srv = server();
    let mut c = Client::login(&srv);
    assert!(capabilities(&mut c).iter().any(|k| k == "OBJECTID"));
    // §4.1: CREATE answers the new mailbox's id; another mailbox, another id.
    let foo = c.ok("3 create foo");
    let foo = paren_value(&foo, "3 OK [MAILBOXID").to_string();
    let bar = c.ok("4 create bar");
    let bar = paren_value(&bar, "4 OK [MAILBOXID").to_string();
    assert_ne!(foo, bar);
    assert!(c.send("5 create foo").contains("5 NO"));
    // §4.3: STATUS MAILBOXID, the same after RENAME.
    let out = c.ok("6 status foo (mailboxid)");
    assert!(out.contains(&format!("* STATUS foo (MAILBOXID ({foo}))")), "{out}");
    c.ok("7 rename foo renamed");
    let out = c.ok("8 status renamed (mailboxid)");
    assert!(out.contains(&format!("* STATUS renamed (MAILBOXID ({foo}))")), "{out}");
    let out = c.ok("9 status bar (MESSAGES mailboxid UIDNEXT)");
    assert!(out.contains(&format!("* STATUS bar (MESSAGES 0 UIDNEXT 1 MAILBOXID ({bar}))")), "{out}");
    // §4.2: SELECT and EXAMINE say it.
    let out = c.ok("27 select \"renamed\"");
    assert!(out.contains(&format!("* OK [MAILBOXID ({foo})]")), "{out}");
    let out = c.ok("28 examine bar");
    assert!(out.contains(&format!("* OK [MAILBOXID ({bar})]")), "{out}");
    let out = c.ok("l LIST \"\" \"*\" RETURN (STATUS (MAILBOXID))");
    assert!(out.contains(&format!("* STATUS bar (MAILBOXID ({bar}))")), "{out}");
    let inbox = paren_value(&c.ok("i STATUS INBOX (MAILBOXID)"), "MAILBOXID").to_string();
    assert!(![&foo, &bar].contains(&&inbox), "{inbox}");
    // §5.1: EMAILID; a COPY has the same, other content another.
    c.append("INBOX", "", PLAIN);
    c.append("INBOX", "", MULTI);
    c.ok("s select inbox");
    c.ok("11 copy 1 bar");
    let out = c.ok("12 fetch 1 (emailid threadid)");
    let line = line_of(&out, "* 1 FETCH");
    assert!(line.contains("THREADID NIL"), "{line}");
    let plain = paren_value(line, "EMAILID").to_string();
    let out = c.ok("12b fetch 2 emailid");
    let multi = paren_value(line_of(&out, "* 2 FETCH"), "EMAILID").to_string();
    assert!(!out.contains("UID"), "only what was asked: {out}");
    assert_ne!(plain, multi);
    let out = c.ok("12c uid fetch 2 (EMAILID FLAGS)");
    assert!(line_of(&out, "* 2 FETCH").contains("UID 2") && out.contains("FLAGS ("), "{out}");
    c.ok("13 select \"bar\"");
    let out = c.ok("14 fetch 1 (emailid threadid)");
    assert_eq!(paren_value(line_of(&out, "* 1 FETCH"), "EMAILID"), plain, "COPY keeps the EMAILID");
    // §6: SEARCH EMAILID matches the message, THREADID nothing.
    c.ok("15 select inbox");
    assert_eq!(c.search_line(&format!("EMAILID {multi}")), "* SEARCH 2");
    assert_eq!(c.search_line(&format!("NOT EMAILID {multi}")), "* SEARCH 1");
    assert_eq!(c.search_line(&format!("OR EMAILID {plain} (EMAILID {multi})")), "* SEARCH 1 2");
    assert_eq!(c.search_line("THREADID T1"), "* SEARCH");
    assert_eq!(c.search_line("SUBJECT \"EMAILID x\""), "* SEARCH");
    let out = c.ok(&format!("16 UID SORT (ARRIVAL) UTF-8 EMAILID {plain}"));
    assert!(out.contains("* SORT 1\r\n"), "{out}");
    // Bad input: BAD, and the session goes on.
    assert!(c.send("17 FETCH 1 (EMAILID BOGUS)").contains("17 BAD"));
    assert!(c.send("18 SEARCH EMAILID").contains("18 BAD"));
    assert!(c.send("19 STATUS INBOX (MAILBOXID BOGUS)").contains("19 BAD"));
    c.ok("20 NOOP");
}

/// APPENDLIMIT (RFC 7889): the limit APPEND enforces is advertised, given
/// by STATUS (§3.1, the RFC's example) and LIST-STATUS (§3.2); a larger
/// message gets a tagged NO [TOOBIG] (§4), before its literal is sent when
/// it is synchronising.
#[test]
fn appendlimit_is_the_limit_append_enforces() {
    let srv = server_with(Config { literal_max: 1000, ..Config::default() });
    let mut c = Client::login(&srv);
    assert!(capabilities(&mut c).iter().any(|k| k == "APPENDLIMIT=1000"));
    let out = c.ok("t1 STATUS INBOX (APPENDLIMIT)");
    assert!(out.contains("* STATUS INBOX (APPENDLIMIT 1000)"), "{out}");
    let out = c.ok("t2 LIST \"\" % RETURN (STATUS (APPENDLIMIT MESSAGES))");
    assert!(out.contains("* STATUS INBOX (MESSAGES 0 APPENDLIMIT 1000)"), "{out}");
    let big = format!("Subject: x\r\n\r\n{}", "y".repeat(1000 - 14));
    assert_eq!(big.len(), 1000);
    c.append("INBOX", "", &big);
    let out = c.send("a1 APPEND INBOX {1001}");
    assert!(out.contains("a1 NO [TOOBIG]") && !out.contains('+'), "refused before it is sent: {out}");
    let out = c.raw(format!("a2 APPEND INBOX {{1001+}}\r\n{big}y\r\na3 NOOP\r\n").as_bytes());
    assert!(out.contains("a2 NO [TOOBIG]") && out.contains("a3 OK"), "read, refused, in sync: {out}");
    let out = c.ok("s STATUS INBOX (MESSAGES)");
    assert!(out.contains("MESSAGES 1)"), "{out}");
}

/// CREATE-SPECIAL-USE (RFC 6154 §3): `CREATE name (USE (…))`; a use that
/// cannot be given is `NO [USEATTR]` and creates nothing.
#[test]
fn create_special_use_sets_the_use_or_creates_nothing() {
    let srv = server();
    let mut c = Client::login(&srv);
    assert!(capabilities(&mut c).iter().any(|k| k == "CREATE-SPECIAL-USE"));
    let out = c.ok("t1 CREATE MySent (USE (\\Sent))");
    assert!(out.contains("t1 OK [MAILBOXID ("), "{out}");
    c.ok("t2 CREATE \"Old/Drafts\" (USE (\\drafts))");
    c.ok("t3 CREATE Plain (USE ())");
    for (tag, command) in [
        ("n1", "CREATE Bogus (USE (\\Bogus))"),
        ("n2", "CREATE Two (USE (\\Sent \\Drafts))"),
        ("n3", "CREATE Everything (USE (\\All))"),
        ("n4", "CREATE Starred (USE (\\Flagged))"),
    ] {
        let out = c.send(&format!("{tag} {command}"));
        assert!(out.contains(&format!("{tag} NO [USEATTR]")), "{command}: {out}");
    }
    assert!(c.send("b1 CREATE Other (FOO)").contains("b1 BAD"));
    assert!(c.send("b2 CREATE Other (USE \\Sent)").contains("b2 BAD"));
    let out = c.ok("l LIST \"\" *");
    assert!(out.contains("* LIST (\\HasNoChildren \\Sent) \"/\" MySent\r\n"), "{out}");
    assert!(out.contains("* LIST (\\HasChildren) \"/\" Old\r\n"), "only the leaf gets it: {out}");
    assert!(out.contains("* LIST (\\HasNoChildren \\Drafts) \"/\" Old/Drafts\r\n"), "{out}");
    assert!(out.contains("* LIST (\\HasNoChildren) \"/\" Plain\r\n"), "{out}");
    for name in ["Bogus", "Two", "Everything", "Starred", "Other"] {
        assert!(!out.contains(&format!(" {name}\r\n")), "{name} was not created: {out}");
    }
}

/// BINARY's APPEND side (RFC 3516 §4.4): a literal8 stores any bytes, which
/// BINARY[] gives back exactly; BODY[] shows each NUL as 0x80 (a literal may
/// hold none); a NUL in an ordinary literal is BAD and stores nothing.
#[test]
fn binary_append_round_trips_and_a_nul_needs_a_literal8() {
    let srv = server();
    let mut c = Client::login(&srv);
    assert!(capabilities(&mut c).iter().any(|k| k == "BINARY"));
    let mut msg = b"From: a@example.com\r\nSubject: bin\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n".to_vec();
    let header_len = msg.len();
    msg.extend((0..=255u8).cycle().take(1000));
    let out = c.send(&format!("a1 APPEND INBOX ~{{{}}}", msg.len()));
    assert!(out.starts_with("+ "), "{out}");
    let mut rest = msg.clone();
    rest.extend_from_slice(b"\r\n");
    let out = c.raw(&rest);
    assert!(out.contains("a1 OK [APPENDUID "), "{out}");
    // Non-synchronising too (LITERAL+ with BINARY, RFC 3516 §4.4).
    let mut plus = format!("a2 APPEND INBOX ~{{{}+}}\r\n", msg.len()).into_bytes();
    plus.extend_from_slice(&msg);
    plus.extend_from_slice(b"\r\n");
    assert!(c.raw(&plus).contains("a2 OK [APPENDUID "));
    c.ok("s SELECT INBOX");
    let fetch = |c: &mut Client, command: &str| -> Vec<u8> {
        c.s.receive(format!("{command}\r\n").as_bytes());
        let out = c.s.take_output();
        assert_responses(&out);
        out
    };
    let body_of = |out: &[u8], item: &str| -> Vec<u8> {
        let (_, r) = ResponseCodec::default().decode(out).expect("a response");
        let imap_codec::imap_types::response::Response::Data(imap_codec::imap_types::response::Data::Fetch {
            items,
            ..
        }) = r
        else {
            panic!("not FETCH: {r:?}")
        };
        use imap_codec::imap_types::fetch::MessageDataItem;
        items
            .as_ref()
            .iter()
            .find_map(|i| match (i, item) {
                (MessageDataItem::Binary { value, .. }, "BINARY") => Some(match value {
                    imap_codec::imap_types::core::NString8::Literal8(l) => l.data.to_vec(),
                    imap_codec::imap_types::core::NString8::NString(n) => {
                        n.0.as_ref().map(|s| s.as_ref().to_vec()).unwrap_or_default()
                    }
                }),
                (MessageDataItem::BodyExt { data, .. }, "BODY") => {
                    Some(data.0.as_ref().expect("data").as_ref().to_vec())
                }
                _ => None,
            })
            .expect("the item")
    };
    for n in 1..=2 {
        let out = fetch(&mut c, &format!("f{n} FETCH {n} BINARY.PEEK[]"));
        assert!(out.windows(2).any(|w| w == b"~{"), "literal8 for binary data");
        assert_eq!(body_of(&out, "BINARY"), msg, "message {n} round-trips byte for byte");
        let out = fetch(&mut c, &format!("g{n} FETCH {n} BINARY.PEEK[1]"));
        assert_eq!(body_of(&out, "BINARY"), msg[header_len..]);
        let out = fetch(&mut c, &format!("h{n} FETCH {n} BINARY.SIZE[1]"));
        assert!(String::from_utf8_lossy(&out).contains(&format!("BINARY.SIZE[1] {}", msg.len() - header_len)));
        let out = fetch(&mut c, &format!("i{n} FETCH {n} BODY.PEEK[]"));
        let shown = body_of(&out, "BODY");
        let expected: Vec<u8> = msg.iter().map(|&b| if b == 0 { 0x80 } else { b }).collect();
        assert_eq!(shown, expected, "BODY[] shows NUL as 0x80, every other byte as it is");
    }
    let out = c.ok("r FETCH 1 RFC822.SIZE");
    assert!(out.contains(&format!("RFC822.SIZE {}", msg.len())), "{out}");
    // A NUL in an ordinary literal (synchronising or not): BAD, nothing stored.
    let mut bad = format!("b1 APPEND INBOX {{{}+}}\r\n", msg.len()).into_bytes();
    bad.extend_from_slice(&msg);
    bad.extend_from_slice(b"\r\nb2 NOOP\r\n");
    let out = c.raw(&bad);
    assert!(out.contains("b1 BAD") && out.contains("literal8") && out.contains("b2 OK"), "{out}");
    let out = c.send(&format!("b3 APPEND INBOX {{{}}}", msg.len()));
    assert!(out.starts_with("+ "), "{out}");
    let out = c.raw(&rest);
    assert!(out.contains("b3 BAD") && out.contains("literal8"), "{out}");
    let out = c.ok("u UNSELECT");
    assert!(!out.contains("EXISTS"), "{out}");
    let out = c.ok("st STATUS INBOX (MESSAGES)");
    assert!(out.contains("MESSAGES 2)"), "{out}");
}

/// MULTIAPPEND (RFC 3502), its example: several messages in one APPEND,
/// one transaction, APPENDUID with every UID in order; a failure in any
/// message stores none of them.
#[test]
fn multiappend_stores_every_message_or_none() {
    let srv = server();
    let mut c = Client::login(&srv);
    assert!(capabilities(&mut c).iter().any(|k| k == "MULTIAPPEND"));
    c.ok("c CREATE saved-messages");
    let m1 = "Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\nFrom: Fred Foobar <foobar@Blurdybloop.example.COM>\r\nSubject: afternoon meeting\r\nTo: mooch@owatagu.example.net\r\nMessage-Id: <B27397-0100000@Blurdybloop.example.COM>\r\nMIME-Version: 1.0\r\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\nHello Joe, do you think we can meet at 3:30 tomorrow?\r\n";
    let m2 = "Date: Mon, 7 Feb 1994 22:43:04 -0800 (PST)\r\nFrom: Joe Mooch <mooch@OWaTaGu.example.net>\r\nSubject: Re: afternoon meeting\r\nTo: foobar@blurdybloop.example.com\r\nMessage-Id: <a0434793874930@OWaTaGu.example.net>\r\nMIME-Version: 1.0\r\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\n3:30 is fine with me.\r\n";
    let out = c.send(&format!("A003 APPEND saved-messages (\\Seen) {{{}}}", m1.len()));
    assert!(out.starts_with("+ "), "{out}");
    let out = c.raw(format!("{m1} (\\Seen) \" 7-Feb-1994 22:43:04 -0800\" {{{}}}\r\n", m2.len()).as_bytes());
    assert!(out.starts_with("+ "), "a continuation for each synchronising literal: {out}");
    let out = c.raw(format!("{m2} () {{{}+}}\r\n{m1}\r\n", m1.len()).as_bytes());
    assert!(out.contains("A003 OK [APPENDUID "), "{out}");
    assert!(out.contains(" 1:3] "), "three UIDs in order: {out}");
    c.ok("s SELECT saved-messages");
    let out = c.ok("f FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE)");
    assert!(line_of(&out, "* 1 FETCH").contains(&format!("RFC822.SIZE {}", m1.len())), "{out}");
    assert!(line_of(&out, "* 1 FETCH").contains("\\Seen"), "{out}");
    let two = line_of(&out, "* 2 FETCH");
    assert!(two.contains("\\Seen") && two.contains("INTERNALDATE \"08-Feb-1994 06:43:04 +0000\""), "{two}");
    assert!(!line_of(&out, "* 3 FETCH").contains("\\Seen"), "{out}");
    c.ok("u UNSELECT");
    // All or none: a bad second message, a missing mailbox, a NUL.
    let out = c.raw(
        format!(
            "b1 APPEND saved-messages {{{}+}}\r\n{m1} (\\Seen) \"bogus date\" {{{}+}}\r\n{m2}\r\n",
            m1.len(),
            m2.len()
        )
        .as_bytes(),
    );
    assert!(out.contains("b1 BAD"), "{out}");
    let out = c.raw(format!("b2 APPEND nowhere {{{}+}}\r\n{m1} {{{}+}}\r\n{m2}\r\n", m1.len(), m2.len()).as_bytes());
    assert!(out.contains("b2 NO [TRYCREATE]"), "{out}");
    let out = c.raw(format!("b3 APPEND saved-messages {{{}+}}\r\n{m1} {{3+}}\r\na\0b\r\n", m1.len()).as_bytes());
    assert!(out.contains("b3 BAD") && out.contains("literal8"), "{out}");
    // RFC 3502 §6.3.11: a zero-length message is an error (NO), which is
    // how a client cancels a MULTIAPPEND it started.
    let out = c.send(&format!("b4 APPEND saved-messages {{{}}}", m1.len()));
    assert!(out.starts_with("+ "), "{out}");
    let out = c.raw(format!("{m1} {{0}}\r\n").as_bytes());
    assert!(out.starts_with("+ "), "{out}");
    let out = c.raw(b"\r\n");
    assert!(out.contains("b4 NO "), "{out}");
    let out = c.raw(b"b5 APPEND saved-messages {0+}\r\n\r\n");
    assert!(out.contains("b5 NO "), "{out}");
    let out = c.ok("st STATUS saved-messages (MESSAGES)");
    assert!(out.contains("MESSAGES 3)"), "nothing of a failed MULTIAPPEND is stored: {out}");
}

/// PREVIEW (RFC 8970), its example and more: the first inline text part,
/// decoded, without quotes and signature, at most 200 characters; LAZY
/// answers the same; no text, the empty string; a body that is not here,
/// NIL; bad modifiers BAD.
#[test]
fn preview_is_the_start_of_the_text() {
    let srv = server();
    let mut c = Client::login(&srv);
    assert!(capabilities(&mut c).iter().any(|k| k == "PREVIEW"));
    c.append("INBOX", "", "Subject: a\r\n\r\nPreview text!\r\n");
    c.append("INBOX", "", MULTI);
    let html = "Subject: h\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<html><body><p>Caf=C3=A9 <b>au</b> lait</p></body></html>\r\n";
    c.append("INBOX", "", html);
    c.append("INBOX", "", "Subject: q\r\n\r\n> old words\r\nnew   words\r\n-- \r\nsig\r\n");
    c.append(
        "INBOX",
        "",
        "Subject: i\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0K\r\n",
    );
    let long = format!("Subject: l\r\n\r\n{}\r\n", "abcdefghi ".repeat(5000));
    c.append("INBOX", "", &long);
    c.ok("s SELECT INBOX");
    let out = c.ok("B FETCH 1 (PREVIEW)");
    assert!(out.contains("* 1 FETCH (PREVIEW \"Preview text!\")"), "{out}");
    let out = c.ok("C FETCH 1 (PREVIEW (LAZY))");
    assert!(out.contains("* 1 FETCH (PREVIEW \"Preview text!\")"), "{out}");
    let out = c.ok("D UID FETCH 1:* (PREVIEW UID)");
    assert!(line_of(&out, "* 2 FETCH").contains("PREVIEW \"see attached quarterly numbers\""), "{out}");
    assert!(line_of(&out, "* 3 FETCH").contains("PREVIEW {13}"), "UTF-8 as a literal: {out}");
    assert!(out.contains("Café au lait"), "{out}");
    assert!(line_of(&out, "* 4 FETCH").contains("PREVIEW \"new words\""), "{out}");
    assert!(line_of(&out, "* 5 FETCH").contains("PREVIEW \"\""), "{out}");
    let six = line_of(&out, "* 6 FETCH");
    let text = between(six, "PREVIEW \"", "\"").expect("quoted");
    let n = text.chars().count();
    assert!(text.starts_with("abcdefghi abcdefghi") && (190..=200).contains(&n), "{n}: {text}");
    assert!(!out.contains("\\Seen"), "PREVIEW does not set \\Seen: {out}");
    let out = c.ok("E FETCH 1 PREVIEW (LAZY)");
    assert!(out.contains("* 1 FETCH (PREVIEW \"Preview text!\")"), "{out}");
    assert!(c.send("F FETCH 1 (PREVIEW (FOO))").contains("F BAD"));
    assert!(c.send("G FETCH 1 (PREVIEW ())").contains("G BAD"));
    c.ok("H NOOP");
    // A body this replica left out: NIL at once (no wait for a peer).
    let there = server_on(ReplicaId(8), Config::default());
    let mut t = Client::login(&there);
    let here = server_on(ReplicaId(7), Config { body_wait: Duration::from_secs(5), ..Config::default() });
    t.append("INBOX", "", PLAIN);
    ship(&there, &here);
    let mut h = Client::login(&here);
    h.ok("s SELECT INBOX");
    let out = h.ok("p FETCH 1 (PREVIEW EMAILID)");
    assert!(line_of(&out, "* 1 FETCH").contains("PREVIEW NIL"), "{out}");
    here.shared.store.put_blob(PLAIN.as_bytes()).unwrap();
    let out = h.ok("q FETCH 1 PREVIEW");
    assert!(out.contains("PREVIEW \"Shall we meet at noon?\""), "{out}");
}

/// SAVEDATE (RFC 8514) where no save date is stored, as §4.2 and §4.3
/// allow: FETCH SAVEDATE is NIL, SAVEDATESUPPORTED matches nothing, and
/// SAVEDBEFORE / SAVEDON / SAVEDSINCE use the internal date.
#[test]
fn savedate_is_nil_and_saved_searches_use_the_internal_date() {
    let srv = server();
    let mut c = Client::login(&srv);
    assert!(capabilities(&mut c).iter().any(|k| k == "SAVEDATE"));
    append_dated(&mut c, "28-Dec-2014 18:50:53 +0000", PLAIN);
    append_dated(&mut c, "02-Jan-2015 10:00:00 +0000", MULTI);
    c.ok("s SELECT INBOX");
    let out = c.ok("A101 FETCH 2 (SAVEDATE)");
    assert!(out.contains("* 2 FETCH (SAVEDATE NIL)"), "{out}");
    let out = c.ok("A102 UID FETCH 1 (SAVEDATE FLAGS)");
    assert!(line_of(&out, "* 1 FETCH").contains("SAVEDATE NIL"), "{out}");
    assert_eq!(c.search_line("SAVEDON 28-Dec-2014"), "* SEARCH 1");
    assert_eq!(c.search_line("SAVEDSINCE 28-Dec-2014"), "* SEARCH 1 2");
    assert_eq!(c.search_line("SAVEDSINCE 29-Dec-2014"), "* SEARCH 2");
    assert_eq!(c.search_line("SAVEDBEFORE 2-Jan-2015"), "* SEARCH 1");
    assert_eq!(c.search_line("SAVEDATESUPPORTED"), "* SEARCH");
    assert_eq!(c.search_line("NOT SAVEDATESUPPORTED"), "* SEARCH 1 2");
    assert!(c.send("b SEARCH SAVEDON").contains("b BAD"));
    assert!(c.send("c SEARCH SAVEDON yesterday").contains("c BAD"));
}
