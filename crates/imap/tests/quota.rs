//! QUOTA (RFC 9208): one quota root `""` per account with the STORAGE and
//! MESSAGE resources, the limits set by the operator (here through the
//! store, as `starling account quota` does), the usage from the store's
//! counters; APPEND, MULTIAPPEND, CATENATE and COPY past it `NO
//! [OVERQUOTA]` with nothing stored; STATUS DELETED and DELETED-STORAGE.

mod common;
use common::*;

use starling_model::Quota;

fn set_quota(srv: &Server, storage_kb: Option<u64>, messages: Option<u64>) {
    srv.shared.store.set_quota("alice", &Quota { storage_kb, messages }).unwrap();
}

fn count(c: &mut Client, mailbox: &str) -> u64 {
    let out = c.ok(&format!("m STATUS {mailbox} (MESSAGES)"));
    let at = out.find("MESSAGES ").unwrap() + "MESSAGES ".len();
    out[at..].split(|ch: char| !ch.is_ascii_digit()).next().unwrap().parse().unwrap()
}

#[test]
fn quota_is_advertised_and_setquota_is_the_operators() {
    let srv = server();
    let mut c = Client::login(&srv);
    let caps = c.ok("c CAPABILITY");
    for cap in ["QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE"] {
        assert!(caps.split_whitespace().any(|w| w == cap), "{cap}: {caps}");
    }
    // RFC 9208 §4.1.3's example: a user may not set limits here.
    let out = c.send("A001 SETQUOTA \"\" (STORAGE 512)");
    assert!(out.starts_with("A001 NO [NOPERM]"), "{out}");
    // No limits: no quota root.
    let out = c.ok("G0001 GETQUOTAROOT INBOX");
    assert!(out.contains("* QUOTAROOT INBOX\r\n") && !out.contains("* QUOTA "), "{out}");
    let out = c.send("G0002 GETQUOTA \"\"");
    assert!(out.starts_with("G0002 NO"), "{out}");
    let out = c.send("G0003 GETQUOTAROOT Nope");
    assert!(out.starts_with("G0003 NO [NONEXISTENT]"), "{out}");
}

#[test]
fn rfc_examples_getquotaroot_and_getquota_give_usage_and_limits() {
    let srv = server();
    let mut c = Client::login(&srv);
    c.append("INBOX", "", PLAIN);
    c.append("INBOX", "", MULTI);
    set_quota(&srv, Some(512), None);
    let (messages, bytes) = srv.shared.store.usage("alice").unwrap();
    assert_eq!((messages, bytes), (2, (PLAIN.len() + MULTI.len()) as u64));
    let kb = bytes.div_ceil(1024);
    // RFC 9208 §4.1.2's example.
    let out = c.ok("G0001 GETQUOTAROOT INBOX");
    assert!(out.contains("* QUOTAROOT INBOX \"\"\r\n"), "{out}");
    assert!(out.contains(&format!("* QUOTA \"\" (STORAGE {kb} 512)\r\n")), "{out}");
    // §4.1.1's.
    let out = c.ok("G0002 GETQUOTA \"\"");
    assert!(out.contains(&format!("* QUOTA \"\" (STORAGE {kb} 512)\r\n")), "{out}");
    let out = c.send("G0003 GETQUOTA \"other\"");
    assert!(out.starts_with("G0003 NO"), "{out}");
    // Both resources.
    set_quota(&srv, Some(512), Some(10));
    let out = c.ok("G0004 GETQUOTA \"\"");
    assert!(out.contains(&format!("* QUOTA \"\" (STORAGE {kb} 512 MESSAGE 2 10)\r\n")), "{out}");
}

#[test]
fn append_copy_and_catenate_past_the_quota_are_refused_whole() {
    let srv = server();
    let mut c = Client::login(&srv);
    c.ok("c CREATE Archive");
    set_quota(&srv, None, Some(3));
    c.append("INBOX", "", PLAIN);
    c.append("INBOX", "", PLAIN);
    // A MULTIAPPEND of two with one place left stores neither.
    let n = PLAIN.len();
    let out = c.raw(format!("m APPEND INBOX {{{n}+}}\r\n{PLAIN} {{{n}+}}\r\n{PLAIN}\r\n").as_bytes());
    assert!(out.starts_with("m NO [OVERQUOTA]"), "{out}");
    assert_eq!(count(&mut c, "INBOX"), 2);
    c.append("INBOX", "", PLAIN);
    // Full: APPEND, CATENATE and COPY are refused, nothing stored.
    let out = c.raw(format!("a APPEND INBOX {{{n}+}}\r\n{PLAIN}\r\n").as_bytes());
    assert!(out.starts_with("a NO [OVERQUOTA]"), "{out}");
    let out = c.raw(b"a APPEND INBOX CATENATE (URL /INBOX/;UID=1)\r\n");
    assert!(out.starts_with("a NO [OVERQUOTA]"), "{out}");
    c.ok("s SELECT INBOX");
    let out = c.send("k COPY 1 Archive");
    assert!(out.contains("k NO [OVERQUOTA]"), "{out}");
    assert_eq!(count(&mut c, "Archive"), 0);
    // MOVE adds nothing to the account: allowed.
    c.ok("v MOVE 1 Archive");
    assert_eq!((count(&mut c, "INBOX"), count(&mut c, "Archive")), (2, 1));
    // Expunging frees room.
    c.ok("d STORE 1 +FLAGS (\\Deleted)");
    c.ok("e EXPUNGE");
    c.append("INBOX", "", PLAIN);
    // The storage resource too (KiB): 3 messages of PLAIN use under 1 KiB.
    set_quota(&srv, Some(1), None);
    let big = "x".repeat(1024);
    let out = c.raw(format!("b APPEND INBOX {{1024+}}\r\n{big}\r\n").as_bytes());
    assert!(out.starts_with("b NO [OVERQUOTA]"), "{out}");
    set_quota(&srv, None, None);
    let out = c.raw(format!("b APPEND INBOX {{1024+}}\r\n{big}\r\n").as_bytes());
    assert!(out.contains("b OK [APPENDUID "), "{out}");
}

#[test]
fn status_deleted_and_deleted_storage() {
    let srv = server();
    let mut c = Client::login(&srv);
    c.append("INBOX", "\\Deleted", MULTI);
    c.append("INBOX", "", PLAIN);
    c.append("INBOX", "\\Deleted", PLAIN);
    // RFC 9208 §4.3's example, with this mailbox's numbers.
    let out = c.ok("S0003 STATUS INBOX (MESSAGES DELETED DELETED-STORAGE)");
    let kb = (MULTI.len() + PLAIN.len()).div_ceil(1024);
    assert!(out.contains(&format!("* STATUS INBOX (MESSAGES 3 DELETED 2 DELETED-STORAGE {kb})")), "{out}");
    c.ok("s SELECT INBOX");
    c.ok("x STORE 1:3 -FLAGS (\\Deleted)");
    let out = c.ok("S0004 STATUS INBOX (DELETED DELETED-STORAGE)");
    assert!(out.contains("(DELETED 0 DELETED-STORAGE 0)"), "{out}");
}
