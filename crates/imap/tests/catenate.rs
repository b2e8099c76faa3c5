//! CATENATE (RFC 4469): APPEND's messages built from literals and IMAP
//! URLs (RFC 5092) of the user's own mail, the RFC's examples (Appendix A)
//! with this server's UIDs and UIDVALIDITYs, the errors (BADURL, TOOBIG,
//! the part limit) and MULTIAPPEND (RFC 4469 §5).

mod common;
use common::*;

use starling_imap::Config;

/// A draft as in the RFC's example: a multipart/mixed with a text part and
/// an attachment.
const DRAFT: &str = "From: Ann <ann@example.com>\r\nTo: bob@example.com\r\nSubject: draft with attachment\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"--------------030308070208000400050907\"\r\n\r\n----------------030308070208000400050907\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nHere is the picture.\r\n----------------030308070208000400050907\r\nContent-Type: image/gif; name=\"x.gif\"\r\nContent-Transfer-Encoding: base64\r\n\r\nR0lGODlhAQABAAAAACw=\r\n----------------030308070208000400050907--\r\n";

/// The 42-byte boundary literal of the RFC's example (CRLF, the
/// delimiter, CRLF) and the 44-byte closing one.
const DELIM: &str = "\r\n--------------030308070208000400050907\r\n";
const CLOSE: &str = "\r\n--------------030308070208000400050907--\r\n";

fn uid_validity(c: &mut Client, mailbox: &str) -> u32 {
    let out = c.ok(&format!("v STATUS {mailbox} (UIDVALIDITY)"));
    let at = out.find("UIDVALIDITY ").unwrap() + "UIDVALIDITY ".len();
    out[at..].split(|ch: char| !ch.is_ascii_digit()).next().unwrap().parse().unwrap()
}

fn messages(c: &mut Client, mailbox: &str) -> u32 {
    let out = c.ok(&format!("m STATUS {mailbox} (MESSAGES)"));
    let at = out.find("MESSAGES ").unwrap() + "MESSAGES ".len();
    out[at..].split(|ch: char| !ch.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// The last UID of an APPENDUID in `out`.
fn appended_uid(out: &str) -> u32 {
    let at = out.find("[APPENDUID ").expect(out);
    let code = &out[at..];
    let uids = code.split(' ').nth(2).unwrap().trim_end_matches(']');
    uids.rsplit([',', ':']).next().unwrap().parse().unwrap()
}

/// A FETCH's literal data: the bytes of `BODY[...]` for one message.
fn body_of(c: &mut Client, mailbox: &str, uid: u32, section: &str) -> String {
    c.ok(&format!("s SELECT {mailbox}"));
    let out = c.ok(&format!("f UID FETCH {uid} BODY.PEEK[{section}]"));
    c.ok("u UNSELECT");
    let open = out.find('{').expect(&out);
    let close = open + out[open..].find('}').unwrap();
    let n: usize = out[open + 1..close].parse().unwrap();
    out[close + 3..close + 3 + n].to_string()
}

fn setup() -> (Server, Client, u32, u32, u32) {
    let srv = server();
    let mut c = Client::login(&srv);
    c.ok("c CREATE Drafts");
    let draft = appended_uid(&c.append("Drafts", "\\Draft", DRAFT));
    let forwarded = appended_uid(&c.append("INBOX", "", PLAIN));
    let v = uid_validity(&mut c, "Drafts");
    (srv, c, v, draft, forwarded)
}

#[test]
fn rfc_example_builds_a_message_from_urls_and_literals() {
    let (_srv, mut c, v, draft, fwd) = setup();
    let vi = uid_validity(&mut c, "INBOX");
    // RFC 4469 Appendix A, first example (message 30 here is in INBOX).
    let d = format!("/Drafts;UIDVALIDITY={v}/;UID={draft}");
    let command = format!(
        "A003 APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE (URL \"{d}/;section=HEADER\" TEXT {{42}}\r\n{DELIM} URL \"{d}/;section=1.MIME\" URL \"{d}/;section=1\" TEXT {{42}}\r\n{DELIM} URL \"/INBOX;UIDVALIDITY={vi}/;UID={fwd}\" TEXT {{44}}\r\n{CLOSE})\r\n"
    );
    let out = c.raw(command.as_bytes());
    assert_eq!(out.matches("+ ").count(), 3, "{out}");
    assert!(out.contains("A003 OK [APPENDUID "), "{out}");
    let new = appended_uid(&out);
    // What it must be, each piece fetched on its own.
    let want = [
        body_of(&mut c, "Drafts", draft, "HEADER"),
        DELIM.to_string(),
        body_of(&mut c, "Drafts", draft, "1.MIME"),
        body_of(&mut c, "Drafts", draft, "1"),
        DELIM.to_string(),
        body_of(&mut c, "INBOX", fwd, ""),
        CLOSE.to_string(),
    ]
    .concat();
    assert!(want.contains("Here is the picture.") && want.contains("lunch plans"));
    assert_eq!(body_of(&mut c, "Drafts", new, ""), want);
    c.ok("s SELECT Drafts");
    let flags = c.ok(&format!("f UID FETCH {new} FLAGS"));
    assert!(flags.contains("\\Seen") && flags.contains("$MDNSent"), "{flags}");
}

#[test]
fn rfc_example_badurl_stores_nothing() {
    let (_srv, mut c, v, draft, _) = setup();
    let before = messages(&mut c, "Drafts");
    // RFC 4469 Appendix A: a URL whose message is gone (here: never was,
    // or the UIDVALIDITY is another's) fails the whole APPEND.
    let gone = format!("/INBOX;UIDVALIDITY={}/;UID=113330;section=1.5.9", uid_validity(&mut c, "INBOX"));
    let command = format!(
        "A004 APPEND Drafts CATENATE (URL \"/Drafts;UIDVALIDITY={v}/;UID={draft}/;section=HEADER\" TEXT {{42}}\r\n{DELIM} URL \"{gone}\")\r\n"
    );
    let out = c.raw(command.as_bytes());
    assert!(out.contains(&format!("A004 NO [BADURL {gone}]")), "{out}");
    for bad in [
        format!("/Drafts;UIDVALIDITY={}/;UID={draft}", v.wrapping_add(1).max(1)),
        format!("/Drafts;UIDVALIDITY={v}/;UID={draft}/;SECTION=7"),
        format!("/Drafts;UIDVALIDITY={v}/;UID={draft}/;SECTION=BOGUS"),
        format!("imap://mallory@example.com/Drafts/;UID={draft}"),
        format!("/Drafts/;UID={draft}/;URLAUTH=anonymous:internal:0123"),
        "/Nope/;UID=1".to_string(),
        "Drafts".to_string(),
    ] {
        let out = c.raw(format!("b APPEND Drafts CATENATE (URL \"{bad}\")\r\n").as_bytes());
        assert!(out.starts_with("b NO [BADURL "), "{bad}: {out}");
    }
    // The session goes on, and nothing was stored.
    assert_eq!(messages(&mut c, "Drafts"), before);
    // The same URLs that name something work (also in the imap:// form).
    let out =
        c.raw(format!("g APPEND Drafts CATENATE (URL imap://alice@example.com/Drafts/;UID={draft})\r\n").as_bytes());
    assert!(out.contains("g OK [APPENDUID "), "{out}");
    let new = appended_uid(&out);
    assert_eq!(body_of(&mut c, "Drafts", new, ""), DRAFT);
}

#[test]
fn partial_and_header_fields_urls() {
    let (_srv, mut c, v, draft, _) = setup();
    let d = format!("/Drafts;UIDVALIDITY={v}/;UID={draft}");
    let out = c.raw(
        format!(
            "p APPEND Drafts CATENATE (URL \"{d}/;SECTION=HEADER.FIELDS%20(Subject)\" URL \"{d}/;PARTIAL=6.3\" TEXT {{2}}\r\n\r\n)\r\n"
        )
        .as_bytes(),
    );
    assert!(out.contains("p OK [APPENDUID "), "{out}");
    let new = appended_uid(&out);
    assert_eq!(
        body_of(&mut c, "Drafts", new, ""),
        format!("Subject: draft with attachment\r\n\r\n{}\r\n", &DRAFT[6..9])
    );
}

#[test]
fn the_total_is_bounded_by_appendlimit_and_the_parts_by_a_count() {
    let srv = server_with(Config { literal_max: 800, ..Config::default() });
    let mut c = Client::login(&srv);
    let uid = appended_uid(&c.append("INBOX", "", DRAFT));
    assert!(DRAFT.len() > 400 && DRAFT.len() <= 800);
    let url = format!("/INBOX/;UID={uid}");
    // Each part fits; together they do not.
    let out = c.raw(format!("t APPEND INBOX CATENATE (URL {url} URL {url})\r\n").as_bytes());
    assert!(out.starts_with("t NO [TOOBIG]"), "{out}");
    let text = "x".repeat(400);
    let out = c.raw(format!("t APPEND INBOX CATENATE (URL {url} TEXT {{400+}}\r\n{text})\r\n").as_bytes());
    assert!(out.starts_with("t NO [TOOBIG]"), "{out}");
    // A literal past the limit is refused before it is sent (RFC 4469 §5).
    let out = c.raw(b"t APPEND INBOX CATENATE (TEXT {801}\r\n");
    assert!(out.starts_with("t NO [TOOBIG]"), "{out}");
    assert_eq!(messages(&mut c, "INBOX"), 1);
    // At most CATENATE_PARTS_MAX parts.
    let parts = |n: usize| vec!["TEXT {1+}\r\nz"; n].join(" ");
    let max = starling_imap::extended::CATENATE_PARTS_MAX;
    let out = c.raw(format!("l APPEND INBOX CATENATE ({})\r\n", parts(max + 1)).as_bytes());
    assert!(out.starts_with("l NO [LIMIT]"), "{out}");
    let out = c.raw(format!("l APPEND INBOX CATENATE ({})\r\n", parts(max)).as_bytes());
    assert!(out.contains("l OK [APPENDUID "), "{out}");
    assert_eq!(body_of(&mut c, "INBOX", appended_uid(&out), ""), "z".repeat(max));
    // Bad syntax is a BAD, and the session survives.
    for bad in
        ["CATENATE ()", "CATENATE (TEXT)", "CATENATE (FOO x)", "CATENATE (URL)", "CATENATE (TEXT {1+}\r\nzURL x)"]
    {
        let out = c.raw(format!("s APPEND INBOX {bad}\r\n").as_bytes());
        assert!(out.starts_with("s BAD"), "{bad}: {out}");
    }
    let out = c.raw(b"n APPEND INBOX CATENATE (TEXT {3+}\r\na\0b)\r\n");
    assert!(out.starts_with("n BAD"), "{out}");
    let out = c.raw(b"n APPEND INBOX CATENATE (TEXT ~{3+}\r\na\0b)\r\n");
    assert!(out.contains("n OK [APPENDUID "), "{out}");
    c.ok("x NOOP");
}

#[test]
fn catenate_combines_with_multiappend_in_one_transaction() {
    let (_srv, mut c, v, draft, _) = setup();
    let before = messages(&mut c, "Drafts");
    let d = format!("/Drafts;UIDVALIDITY={v}/;UID={draft}");
    // RFC 4469 §5: each message of a MULTIAPPEND may be a CATENATE.
    let command = format!(
        "m APPEND Drafts (\\Seen) CATENATE (URL \"{d}/;SECTION=HEADER\" TEXT {{6}}\r\nhello!) {{{}}}\r\n{PLAIN} \"07-Feb-1994 22:43:04 -0800\" CATENATE (TEXT {{4}}\r\nab\r\n)\r\n",
        PLAIN.len()
    );
    let out = c.raw(command.as_bytes());
    assert!(out.contains("m OK [APPENDUID "), "{out}");
    assert_eq!(messages(&mut c, "Drafts"), before + 3);
    let last = appended_uid(&out);
    assert_eq!(body_of(&mut c, "Drafts", last, ""), "ab\r\n");
    assert_eq!(body_of(&mut c, "Drafts", last - 1, ""), PLAIN);
    assert_eq!(
        body_of(&mut c, "Drafts", last - 2, ""),
        format!("{}hello!", body_of(&mut c, "Drafts", draft, "HEADER"))
    );
    // One bad URL anywhere: none of them is stored.
    let command = format!("m APPEND Drafts {{{}}}\r\n{PLAIN} CATENATE (URL \"{d}/;SECTION=9\")\r\n", PLAIN.len());
    let out = c.raw(command.as_bytes());
    assert!(out.contains("m NO [BADURL "), "{out}");
    assert_eq!(messages(&mut c, "Drafts"), before + 3);
}

#[test]
fn catenate_is_advertised() {
    let srv = server();
    let mut c = Client::login(&srv);
    let caps = c.ok("c CAPABILITY");
    assert!(caps.split_whitespace().any(|w| w == "CATENATE"), "{caps}");
}
