//! NOTIFY (RFC 5465): the RFC's examples, changes made by another session
//! and by a peer (ops applied through sync), mailbox names and
//! subscriptions, the overflow limit, NOTIFY NONE.

mod common;
use common::*;

use starling_imap::{Config, NOTIFY_NAMES_MAX, NOTIFY_PENDING_MAX};
use starling_model::{ReplicaId, INBOX};

/// What the session wrote unasked (checked to parse).
fn pushed(c: &mut Client) -> String {
    c.output()
}

fn idle(c: &mut Client, tag: &str) {
    let out = c.send(&format!("{tag} IDLE"));
    assert!(out.starts_with("+ "), "{out}");
}

fn ship(from: &Server, to: &Server) {
    let have = to.shared.store.version("alice").unwrap();
    let ops = from.shared.store.ops_since("alice", &have).unwrap();
    to.shared.store.write("alice", |b| b.apply(ops)).unwrap();
}

fn status_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("* STATUS ")).collect()
}

fn validity(c: &mut Client, mailbox: &str) -> u32 {
    let out = c.ok(&format!("v STATUS {mailbox} (UIDVALIDITY)"));
    let at = out.find("UIDVALIDITY ").unwrap() + "UIDVALIDITY ".len();
    out[at..].split(')').next().unwrap().parse().unwrap()
}

/// RFC 5465 §3.1's first example (as corrected by its errata: each event
/// list in parentheses): the initial STATUS of the watched subtree, then a
/// new message in the selected mailbox as EXISTS and a FETCH of the
/// attributes asked for, and one in the subtree as a STATUS.
#[test]
fn rfc_example_selected_fetch_and_subtree_status() {
    let srv = server();
    let mut a = Client::login(&srv);
    let mut b = Client::login(&srv);
    b.ok("b1 CREATE Lists/Lemonade");
    b.append("Lists/Lemonade", "", PLAIN);
    a.append("INBOX", "\\Seen", PLAIN);
    a.ok("a1 SELECT INBOX");
    let v = validity(&mut a, "Lists/Lemonade");
    let out = a.ok("a2 NOTIFY SET STATUS (selected (MessageNew (uid body.peek[header.fields (from to subject)]) \
         MessageExpunge)) (subtree Lists (MessageNew MessageExpunge))");
    let statuses = status_lines(&out);
    assert_eq!(statuses.len(), 2, "{out}");
    assert!(
        statuses.contains(&&*format!("* STATUS Lists/Lemonade (MESSAGES 1 UIDNEXT 2 UIDVALIDITY {v} UNSEEN 1)")),
        "{out}"
    );
    assert!(out.contains("* STATUS Lists (MESSAGES 0 UIDNEXT 1 "), "{out}");
    // Another session's new messages: here and in the subtree.
    b.append("INBOX", "", MULTI);
    b.append("Lists/Lemonade", "\\Seen", PLAIN);
    a.s.account_changed();
    let out = pushed(&mut a);
    assert!(out.contains("* 2 EXISTS"), "{out}");
    let header = "From: carol@example.com\r\nTo: bob@example.com\r\nSubject: report\r\n\r\n";
    let fetch = format!("* 2 FETCH (UID 2 BODY[HEADER.FIELDS (from to subject)] {{{}}}\r\n{header})", header.len());
    assert!(out.contains(&fetch), "{out}");
    assert_eq!(
        status_lines(&out),
        vec![format!("* STATUS Lists/Lemonade (MESSAGES 2 UIDNEXT 3 UIDVALIDITY {v} UNSEEN 1)")],
        "{out}"
    );
    // The other examples parse and are taken.
    a.ok("a3 NOTIFY SET (selected (MessageNew (uid body.peek[header.fields (from to subject)]) MessageExpunge)) (subtree Lists (MessageNew MessageExpunge)) (mailboxes misc (MessageNew MessageExpunge))");
    a.ok("a4 notify set (mailboxes INBOX (Messagenew messageExpunge)) (personal (SubscriptionChange))");
    a.ok("a5 notify set (selected (Messagenew (uid flags) messageExpunge)) (personal (MessageNew FlagChange MessageExpunge))");
    a.ok("a6 NOTIFY SET (selected-delayed (MessageNew MessageExpunge FlagChange)) (inboxes NONE) (mailboxes (INBOX \"Lists/Lemonade\" {4+}\r\nmisc) (MessageNew MessageExpunge))");
}

/// RFC 5465 §5: the events' rules. Unsupported events (AnnotationChange,
/// the METADATA ones, any other) are NO [BADEVENT (what is supported)],
/// before the rules on how events go together, which are BAD.
#[test]
fn bad_events_and_wrong_compositions_are_refused() {
    let srv = server();
    let mut a = Client::login(&srv);
    let badevent = "NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)]";
    for (i, groups) in [
        "(selected (AnnotationChange))",
        "(personal (MessageNew MessageExpunge AnnotationChange))",
        "(personal (MailboxMetadataChange))",
        "(personal (ServerMetadataChange))",
        "(inboxes (XFutureEvent))",
    ]
    .iter()
    .enumerate()
    {
        let out = a.send(&format!("n{i} NOTIFY SET {groups}"));
        assert!(out.starts_with(&format!("n{i} {badevent}")), "{groups}: {out}");
    }
    for (i, groups) in [
        "(selected (MessageNew))",
        "(personal (MessageExpunge))",
        "(selected (FlagChange))",
        "(selected (MessageNew MessageExpunge MailboxName))",
        "(personal (MessageNew (uid) MessageExpunge))",
        "(selected NONE) (selected-delayed NONE)",
        "(personal MessageNew)",
        "(elsewhere (MessageNew MessageExpunge))",
        "(personal (MessageNew MessageExpunge)) ",
        "(selected (MessageNew (uid body[) MessageExpunge))",
        "(selected (MessageNew (nonsense) MessageExpunge))",
    ]
    .iter()
    .enumerate()
    {
        let out = a.send(&format!("b{i} NOTIFY SET {groups}"));
        assert!(out.starts_with(&format!("b{i} BAD ")), "{groups}: {out}");
    }
    assert!(a.send("c1 NOTIFY").starts_with("c1 BAD "));
    assert!(a.send("c2 NOTIFY SET").starts_with("c2 BAD "));
    // Bounds: mailbox names, event groups.
    let names: Vec<String> = (0..=NOTIFY_NAMES_MAX).map(|i| format!("m{i}")).collect();
    let out = a.send(&format!("c3 NOTIFY SET (mailboxes ({}) (MessageNew MessageExpunge))", names.join(" ")));
    assert!(out.starts_with("c3 NO [LIMIT]"), "{out}");
    a.ok(&format!("c4 NOTIFY SET (mailboxes ({}) (MessageNew MessageExpunge))", names[..NOTIFY_NAMES_MAX].join(" ")));
    let groups = vec!["(inboxes (MessageNew MessageExpunge))"; starling_imap::NOTIFY_GROUPS_MAX + 1].join(" ");
    assert!(a.send(&format!("c5 NOTIFY SET {groups}")).starts_with("c5 NO [LIMIT]"));
    // Before login: BAD, and the session goes on.
    let mut anon = Client::connect(&srv, true);
    assert!(anon.send("d1 NOTIFY NONE").starts_with("d1 BAD "));
    anon.ok("d2 LOGIN alice pw");
}

/// A change made by another session reaches a NOTIFY session during IDLE
/// and between commands, for the mailboxes watched only; changes the
/// session made itself are not echoed to it.
#[test]
fn another_sessions_changes_are_notified_and_own_are_not() {
    let srv = server();
    let mut a = Client::login(&srv);
    let mut b = Client::login(&srv);
    b.ok("b1 CREATE Work");
    b.ok("b2 CREATE Other");
    let v = validity(&mut a, "Work");
    a.ok("a1 ENABLE CONDSTORE");
    a.ok("a2 NOTIFY SET (mailboxes Work (MessageNew MessageExpunge FlagChange))");
    idle(&mut a, "a3");
    b.append("Work", "", PLAIN);
    b.append("Other", "", PLAIN);
    a.s.account_changed();
    let out = pushed(&mut a);
    let statuses = status_lines(&out);
    assert_eq!(statuses.len(), 1, "{out}");
    assert!(statuses[0]
        .starts_with(&format!("* STATUS Work (MESSAGES 1 UIDNEXT 2 UIDVALIDITY {v} UNSEEN 1 HIGHESTMODSEQ ")));
    // A flag change, still in IDLE.
    b.ok("b3 SELECT Work");
    b.ok("b4 STORE 1 +FLAGS (\\Seen)");
    a.s.account_changed();
    let out = pushed(&mut a);
    assert!(
        out.contains(&format!("* STATUS Work (MESSAGES 1 UIDNEXT 2 UIDVALIDITY {v} UNSEEN 0 HIGHESTMODSEQ ")),
        "{out}"
    );
    assert!(a.send("DONE").contains("a3 OK"));
    // Between commands: written at once.
    b.ok("b5 STORE 1 +FLAGS (\\Flagged)");
    a.s.account_changed();
    assert_eq!(status_lines(&pushed(&mut a)).len(), 1);
    // Without FlagChange a flag change is not told; an expunge is.
    a.ok("a4 NOTIFY SET (mailboxes Work (MessageNew MessageExpunge))");
    b.ok("b6 STORE 1 +FLAGS (\\Deleted)");
    a.s.account_changed();
    assert_eq!(pushed(&mut a), "");
    b.ok("b7 EXPUNGE");
    a.s.account_changed();
    assert!(pushed(&mut a).contains("* STATUS Work (MESSAGES 0 UIDNEXT 2 "));
    // This session's own APPEND is not echoed to it; another's is.
    let out = a.append("Work", "", PLAIN);
    assert!(!out.contains("* STATUS"), "{out}");
    let out = a.ok("a5 NOOP");
    assert!(!out.contains("* STATUS"), "{out}");
    b.append("Work", "", PLAIN);
    let out = a.ok("a6 NOOP");
    assert!(out.contains("* STATUS Work (MESSAGES 2 UIDNEXT 4 "), "{out}");
}

/// The selected mailbox: flag changes as FETCH (UID FLAGS) with
/// FlagChange, new messages with the attributes asked for; without a
/// `selected` group, IDLE pushes nothing of it (§3.1: as SELECTED NONE).
#[test]
fn selected_mailbox_events_follow_what_was_asked() {
    let srv = server();
    let mut a = Client::login(&srv);
    let mut b = Client::login(&srv);
    b.append("INBOX", "", PLAIN);
    a.ok("a1 SELECT INBOX");
    b.ok("b1 SELECT INBOX");
    a.ok("a2 NOTIFY SET (selected (MessageNew (uid flags) MessageExpunge FlagChange))");
    idle(&mut a, "a3");
    b.ok("b2 STORE 1 +FLAGS (\\Flagged)");
    b.append("INBOX", "\\Answered", PLAIN);
    a.s.account_changed();
    let out = pushed(&mut a);
    assert!(out.contains("* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))"), "{out}");
    assert!(out.contains("* 2 EXISTS"), "{out}");
    // (Not \Recent here: the session that appended it was told first.)
    assert!(out.contains("* 2 FETCH (UID 2 FLAGS (\\Answered))"), "{out}");
    assert!(a.send("DONE").contains("a3 OK"));
    // Only other mailboxes watched: IDLE says nothing of the selected one.
    a.ok("a4 NOTIFY SET (personal (MessageNew MessageExpunge))");
    idle(&mut a, "a5");
    b.append("INBOX", "", PLAIN);
    a.s.account_changed();
    assert_eq!(pushed(&mut a), "");
    // The base protocol's update still comes at the end of IDLE.
    assert!(a.send("DONE").contains("* 3 EXISTS"));
}

/// A change applied as a peer's ops (sync) is notified like a local one:
/// it goes through the store's commit and its change log.
#[test]
fn a_peers_change_is_notified() {
    let here = server_on(ReplicaId(7), Config::default());
    let there = server_on(ReplicaId(8), Config::default());
    let mut t = Client::login(&there);
    t.ok("t1 CREATE Work");
    ship(&there, &here);
    let mut a = Client::login(&here);
    let v = validity(&mut a, "Work");
    a.ok("a1 NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))");
    idle(&mut a, "a2");
    t.append("Work", "", PLAIN);
    t.ok("t2 CREATE Fresh");
    ship(&there, &here);
    a.s.account_changed();
    let out = pushed(&mut a);
    assert!(out.contains(&format!("* STATUS Work (MESSAGES 1 UIDNEXT 2 UIDVALIDITY {v} UNSEEN 1)")), "{out}");
    assert!(out.contains("* LIST (\\HasNoChildren) \"/\" Fresh"), "{out}");
    assert!(a.send("DONE").contains("a2 OK"));
}

/// MailboxName and SubscriptionChange (RFC 5465 §5.4, §5.5): created,
/// renamed (with OLDNAME), subscribed, unsubscribed and deleted mailboxes
/// as LIST responses, for the names watched only.
#[test]
fn mailbox_names_and_subscriptions_are_listed() {
    let srv = server();
    let mut a = Client::login(&srv);
    let mut b = Client::login(&srv);
    b.ok("b0 CREATE Keep");
    a.ok("a1 NOTIFY SET (subtree Projects (MailboxName SubscriptionChange))");
    b.ok("b1 CREATE Projects/Foo");
    b.ok("b2 CREATE Elsewhere");
    a.s.account_changed();
    let out = pushed(&mut a);
    assert!(out.contains("* LIST (\\HasChildren) \"/\" Projects\r\n"), "{out}");
    assert!(out.contains("* LIST (\\HasNoChildren) \"/\" Projects/Foo\r\n"), "{out}");
    assert!(!out.contains("Elsewhere"), "{out}");
    b.ok("b3 RENAME Projects/Foo Projects/Bar");
    a.s.account_changed();
    assert_eq!(pushed(&mut a), "* LIST (\\HasNoChildren) \"/\" Projects/Bar (\"OLDNAME\" (Projects/Foo))\r\n");
    b.ok("b4 SUBSCRIBE Projects/Bar");
    a.s.account_changed();
    assert_eq!(pushed(&mut a), "* LIST (\\HasNoChildren \\Subscribed) \"/\" Projects/Bar\r\n");
    b.ok("b5 UNSUBSCRIBE Projects/Bar");
    a.s.account_changed();
    assert_eq!(pushed(&mut a), "* LIST (\\HasNoChildren) \"/\" Projects/Bar\r\n");
    b.ok("b6 DELETE Projects/Bar");
    a.s.account_changed();
    assert_eq!(pushed(&mut a), "* LIST (\\NonExistent) \"/\" Projects/Bar\r\n");
    // A rename out of the subtree: the old name is gone from it.
    b.ok("b7 CREATE Projects/Old");
    a.s.account_changed();
    pushed(&mut a);
    b.ok("b8 RENAME Projects/Old Archive");
    a.s.account_changed();
    assert_eq!(pushed(&mut a), "* LIST (\\NonExistent) \"/\" Projects/Old\r\n");
    // This session's own CREATE is not echoed.
    let out = a.ok("a2 CREATE Projects/Mine");
    assert!(!out.contains("* LIST"), "{out}");
    assert!(!a.ok("a3 NOOP").contains("* LIST"));
}

/// The bound on pending notifications (RFC 5465 §5.8): up to
/// NOTIFY_PENDING_MAX new messages in one delivery are each FETCHed; one
/// more and the session says OK [NOTIFICATIONOVERFLOW] and stops
/// notifying (the base protocol's EXISTS still goes out). A NOTIFY SET
/// STATUS over more mailboxes than the bound is refused.
#[test]
fn the_overflow_limit_stops_notifying() {
    let srv = server();
    let mut a = Client::login(&srv);
    let mut b = Client::login(&srv);
    a.ok("a1 SELECT INBOX");
    a.ok("a2 NOTIFY SET (selected (MessageNew (uid) MessageExpunge))");
    let deliver = |n: usize| {
        srv.shared
            .store
            .write("alice", |w| {
                for _ in 0..n {
                    w.append(INBOX, PLAIN.as_bytes(), 0, vec![])?;
                }
                Ok(())
            })
            .unwrap();
    };
    deliver(NOTIFY_PENDING_MAX);
    a.s.account_changed();
    let out = pushed(&mut a);
    assert_eq!(out.matches(" FETCH (UID ").count(), NOTIFY_PENDING_MAX);
    assert!(!out.contains("NOTIFICATIONOVERFLOW"));
    deliver(NOTIFY_PENDING_MAX + 1);
    a.s.account_changed();
    let out = pushed(&mut a);
    assert!(out.contains(&format!("* {} EXISTS", 2 * NOTIFY_PENDING_MAX + 1)), "{}", &out[..200]);
    assert!(out.contains("* OK [NOTIFICATIONOVERFLOW]"), "{}", &out[..200]);
    assert!(!out.contains(" FETCH ("));
    // Off now: nothing between commands; the client re-syncs by commands.
    b.append("INBOX", "", PLAIN);
    a.s.account_changed();
    assert_eq!(pushed(&mut a), "");
    assert!(a.ok("a3 NOOP").contains(&format!("* {} EXISTS", 2 * NOTIFY_PENDING_MAX + 2)));
    // NOTIFY SET STATUS over more mailboxes than the bound: refused.
    srv.shared
        .store
        .write("alice", |w| {
            for i in 0..=NOTIFY_PENDING_MAX {
                w.replica().create_mailbox(&format!("box{i}"), None, None)?;
            }
            Ok(())
        })
        .unwrap();
    let out = a.send("a4 NOTIFY SET STATUS (personal (MessageNew MessageExpunge))");
    assert!(out.starts_with("a4 NO [NOTIFICATIONOVERFLOW]"), "{out}");
    // Without STATUS it is taken; one delivery over the bound overflows.
    a.ok("a5 NOTIFY SET (personal (MessageNew MessageExpunge))");
    srv.shared
        .store
        .write("alice", |w| {
            let tree = w.replica().names().tree;
            for i in 0..=NOTIFY_PENDING_MAX {
                w.append(tree.by_name[&format!("box{i}")], PLAIN.as_bytes(), 0, vec![])?;
            }
            Ok(())
        })
        .unwrap();
    a.s.account_changed();
    let out = pushed(&mut a);
    assert_eq!(out, "* OK [NOTIFICATIONOVERFLOW] too many notifications; NOTIFY is off, please re-sync\r\n");
}

/// NOTIFY NONE: nothing more is sent, between commands or after them.
#[test]
fn notify_none_stops_notifications() {
    let srv = server();
    let mut a = Client::login(&srv);
    let mut b = Client::login(&srv);
    b.ok("b1 CREATE Work");
    a.ok("a1 NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))");
    b.append("Work", "", PLAIN);
    a.s.account_changed();
    assert_eq!(status_lines(&pushed(&mut a)).len(), 1);
    a.ok("a2 NOTIFY NONE");
    b.append("Work", "", PLAIN);
    b.ok("b2 CREATE More");
    a.s.account_changed();
    assert_eq!(pushed(&mut a), "");
    let out = a.ok("a3 NOOP");
    assert!(!out.contains("* STATUS") && !out.contains("* LIST"), "{out}");
}

/// A session further behind than the store's change log reaches
/// (CHANGE_LOG_COMMITS) reads every watched mailbox once and still
/// reports exactly what changed.
#[test]
fn a_session_behind_the_change_log_still_sees_the_changes() {
    let srv = server();
    let mut a = Client::login(&srv);
    let mut b = Client::login(&srv);
    b.ok("b1 CREATE Work");
    b.ok("b2 CREATE Quiet");
    b.append("Work", "", PLAIN);
    a.ok("a1 NOTIFY SET (personal (MessageNew MessageExpunge FlagChange))");
    b.ok("b3 SELECT Work");
    for i in 0..starling_store::CHANGE_LOG_COMMITS + 2 {
        let sign = if i % 2 == 0 { '+' } else { '-' };
        b.ok(&format!("s{i} STORE 1 {sign}FLAGS (\\Flagged)"));
    }
    let out = a.ok("a2 NOOP");
    assert_eq!(
        status_lines(&out),
        vec![
            "* STATUS Work (MESSAGES 1 UIDNEXT 2 UIDVALIDITY ".to_string()
                + &validity(&mut b, "Work").to_string()
                + " UNSEEN 1)"
        ],
        "{out}"
    );
}

/// `selected` against `selected-delayed` (RFC 5465 §6.1): with the first,
/// another session's expunge is told even after a FETCH by sequence
/// number (which otherwise holds expunges back); with the second it waits
/// for a command that allows it. A NOTIFY SET is also a NOOP (§3.1).
#[test]
fn selected_tells_expunges_at_once_and_selected_delayed_waits() {
    let srv = server();
    let mut a = Client::login(&srv);
    let mut b = Client::login(&srv);
    for _ in 0..4 {
        b.append("INBOX", "", PLAIN);
    }
    a.ok("a1 SELECT INBOX");
    b.ok("b1 SELECT INBOX");
    b.append("INBOX", "", PLAIN);
    let out = a.ok("a2 NOTIFY SET (selected-delayed (MessageNew MessageExpunge))");
    assert!(out.contains("* 5 EXISTS"), "the implied NOOP: {out}");
    b.ok("b2 STORE 1 +FLAGS (\\Deleted)");
    b.ok("b3 EXPUNGE");
    let out = a.ok("a3 FETCH 2 (FLAGS)");
    assert!(!out.contains("EXPUNGE"), "{out}");
    assert!(a.ok("a4 NOOP").contains("* 1 EXPUNGE"));
    a.ok("a5 NOTIFY SET (selected (MessageNew MessageExpunge))");
    b.ok("b4 STORE 1 +FLAGS (\\Deleted)");
    b.ok("b5 EXPUNGE");
    let out = a.ok("a6 FETCH 2 (FLAGS)");
    assert!(out.contains("* 1 EXPUNGE"), "{out}");
}
