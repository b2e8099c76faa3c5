//! Four defects of issue 15 (IMAP completeness), each reproduced here:
//! COMPRESS=DEFLATE output pending when the client ends its stream,
//! an updating SORT when a missing body arrives, and NOTIFY's fetch
//! attributes checked at `NOTIFY SET`. (The store's bounded sort-key
//! upgrade is tested in the store crate, `tests/sortkeys.rs`.)

mod common;
use common::*;

mod deflate_end {
    use crate::common::serve_alice;
    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};

    /// Reads plain lines until one starts with `tag `.
    fn plain_until(tcp: &mut TcpStream, tag: &str) -> String {
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        loop {
            assert_eq!(tcp.read(&mut b).unwrap(), 1, "closed early: {}", String::from_utf8_lossy(&got));
            got.push(b[0]);
            let text = String::from_utf8_lossy(&got);
            if text.ends_with("\r\n") && text.lines().last().is_some_and(|l| l.starts_with(&format!("{tag} "))) {
                return text.into_owned();
            }
        }
    }

    /// Logs in, turns COMPRESS on, then sends `commands` compressed with
    /// the client's DEFLATE stream ended (a final block) and, if
    /// `half_close`, its sending side shut. Returns everything the server
    /// sent after the COMPRESS OK, inflated, and whether its DEFLATE stream
    /// ended with a final block.
    fn end_stream_after(commands: &str, half_close: bool) -> (String, bool) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut tcp = TcpStream::connect(serve_alice(&rt, dir.path())).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
        plain_until(&mut tcp, "*");
        tcp.write_all(b"a LOGIN alice pw\r\n").unwrap();
        assert!(plain_until(&mut tcp, "a").contains("a OK"));
        tcp.write_all(b"b COMPRESS DEFLATE\r\n").unwrap();
        assert!(plain_until(&mut tcp, "b").contains("b OK"));
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(64 * 1024);
        assert_eq!(c.compress_vec(commands.as_bytes(), &mut out, FlushCompress::Finish).unwrap(), Status::StreamEnd);
        tcp.write_all(&out).unwrap();
        if half_close {
            tcp.shutdown(Shutdown::Write).unwrap();
        }
        let mut wire = Vec::new();
        tcp.read_to_end(&mut wire).unwrap();
        let mut d = Decompress::new(false);
        let mut text = Vec::with_capacity(1 << 20);
        let status = d.decompress_vec(&wire, &mut text, FlushDecompress::Sync).unwrap();
        (String::from_utf8_lossy(&text).into_owned(), status == Status::StreamEnd)
    }

    /// LOGOUT, then the client ends its DEFLATE stream and shuts its
    /// sending side: the BYE and the tagged OK still arrive, inflated,
    /// and the server ends its own stream.
    #[test]
    fn logout_then_end_of_stream_gets_bye_and_ok() {
        for half_close in [false, true] {
            let (out, ended) = end_stream_after("z LOGOUT\r\n", half_close);
            assert!(out.contains("* BYE") && out.contains("z OK"), "half-close {half_close}: {out:?}");
            super::assert_responses(out.as_bytes());
            assert!(ended, "the server's DEFLATE stream ends with a final block");
        }
    }

    /// Commands whose stream ends without LOGOUT: their answers (untagged
    /// and tagged) are written before the connection closes.
    #[test]
    fn answers_pending_at_end_of_stream_are_written() {
        let (out, ended) = end_stream_after("n NOOP\r\ns SELECT INBOX\r\n", true);
        assert!(out.contains("n OK") && out.contains("* 0 EXISTS") && out.contains("s OK"), "{out:?}");
        super::assert_responses(out.as_bytes());
        assert!(ended);
    }
}

/// NOTIFY's MessageNew fetch attributes are parsed once, at NOTIFY SET
/// (RFC 5465 §5.2: a list FETCH would not take is refused there, BAD, and
/// the session goes on); the notifications then FETCH with them, items
/// imap-codec does not parse (OBJECTID, PREVIEW) included, over several
/// new messages at once.
#[test]
fn notify_fetch_attributes_are_checked_at_set_and_used_typed() {
    let srv = server();
    let mut a = Client::login(&srv);
    let mut b = Client::login(&srv);
    a.ok("a1 SELECT INBOX");
    for (i, atts) in
        ["(uid emailid body[)", "(uid nonsense)", "(uid preview (lazy)", "(uid body[1.x])", "()"].iter().enumerate()
    {
        let out = a.send(&format!("s{i} NOTIFY SET (selected (MessageNew {atts} MessageExpunge))"));
        assert!(out.starts_with(&format!("s{i} BAD ")), "{atts}: {out}");
    }
    a.ok("a2 NOOP");
    a.ok("a3 NOTIFY SET (selected (MessageNew (uid emailid preview rfc822.size) MessageExpunge))");
    b.append("INBOX", "", PLAIN);
    b.append("INBOX", "", MULTI);
    b.append("INBOX", "", PLAIN);
    a.s.account_changed();
    let out = a.output();
    assert!(out.contains("* 3 EXISTS"), "{out}");
    for (n, raw) in [(1, PLAIN), (2, MULTI), (3, PLAIN)] {
        let line = out.lines().find(|l| l.starts_with(&format!("* {n} FETCH ("))).unwrap_or_else(|| panic!("{out}"));
        assert!(line.contains(&format!("UID {n}")), "{line}");
        assert!(line.contains("EMAILID ("), "{line}");
        assert!(line.contains("PREVIEW "), "{line}");
        assert!(line.contains(&format!("RFC822.SIZE {}", raw.len())), "{line}");
    }
    let mails = out.lines().filter(|l| l.contains(" FETCH (")).count();
    assert_eq!(mails, 3, "{out}");
}

mod sort_bodies {
    use super::*;
    use starling_imap::{Config, AWAITING_MAX};
    use starling_model::{BlobId, ReplicaId, INBOX};
    use starling_store::Shipped;

    fn message(subject: &str, n: usize) -> String {
        format!("From: a{n}@example.org\r\nSubject: {subject}\r\nMessage-ID: <{n}@x>\r\n\r\nbody {n}\r\n")
    }

    /// Ships `from`'s ops to `to`: the messages, not their bodies (as a
    /// partial replica has them).
    fn ship(from: &Server, to: &Server) {
        let have = to.shared.store.version("alice").unwrap();
        let ops = from.shared.store.ops_since("alice", &have).unwrap();
        to.shared.store.write("alice", |b| b.apply(ops)).unwrap();
    }

    fn arrive(to: &Server, raw: &str) {
        let shipped = vec![(BlobId::of(raw.as_bytes()), Shipped::Raw(raw.as_bytes().to_vec()))];
        to.shared.store.put_shipped(&["alice"], shipped).unwrap();
    }

    /// `* SORT` / `* ESEARCH … ALL` UIDs of a fresh UID SORT.
    fn fresh(c: &mut Client) -> Vec<u32> {
        let out = c.ok("f UID SORT (SUBJECT) UTF-8 ALL");
        let line = out.lines().find(|l| l.starts_with("* SORT")).unwrap();
        line.split(' ').skip(2).map(|n| n.trim().parse().unwrap()).collect()
    }

    /// A partial replica ("here") of a server that took one message per
    /// subject: the messages without their bodies, INBOX selected by `h`.
    fn partial(subjects: &[&str]) -> (Server, Server, Vec<String>, Client) {
        let there = server_on(ReplicaId(8), Config::default());
        let here = server_on(ReplicaId(7), Config::default());
        let mut t = Client::login(&there);
        let raws: Vec<String> = subjects.iter().enumerate().map(|(n, s)| message(s, n)).collect();
        for r in &raws {
            t.append("INBOX", "", r);
        }
        ship(&there, &here);
        let mut h = Client::login(&here);
        h.ok("s SELECT INBOX");
        (there, here, raws, h)
    }

    /// A partial replica ("here") of a server that took `n` messages in
    /// one commit (subject "s"): no bodies, INBOX selected by `h`.
    fn partial_bulk(n: usize) -> (Server, Server, Client) {
        let there = server_on(ReplicaId(8), Config::default());
        let here = server_on(ReplicaId(7), Config::default());
        Client::login(&there); // (the account's first op: its password)
        there
            .shared
            .store
            .write("alice", |b| {
                for i in 0..n {
                    b.append(INBOX, message("s", i).as_bytes(), i as i64, vec![])?;
                }
                Ok(())
            })
            .unwrap();
        ship(&there, &here);
        let mut h = Client::login(&here);
        h.ok("s SELECT INBOX");
        (there, here, h)
    }

    /// Applies the ESEARCH updates of `tag` in `out` to `result` as a
    /// client does (RFC 5267 §4.3.3, §4.3.4): a REMOVEFROM must find each
    /// UID at its position; an ADDTO inserts at its position. Returns the
    /// number of update lines.
    fn apply(result: &mut Vec<u32>, out: &str, tag: &str) -> usize {
        let prefix = format!("* ESEARCH (TAG \"{tag}\") UID ");
        let mut lines = 0;
        for line in out.lines().filter_map(|l| l.trim_end().strip_prefix(&prefix)) {
            lines += 1;
            let mut rest = line;
            while !rest.is_empty() {
                let (verb, tail) = rest.split_once(" (").unwrap();
                let (inner, after) = tail.split_once(')').unwrap();
                rest = after.trim_start();
                let words: Vec<&str> = inner.split(' ').collect();
                for pair in words.chunks(2) {
                    let pos: usize = pair[0].parse().unwrap();
                    let uids: Vec<u32> = pair[1].split(',').map(|u| u.parse().unwrap()).collect();
                    for (k, u) in uids.iter().enumerate() {
                        match verb {
                            "REMOVEFROM" => {
                                assert_eq!(result.get(pos - 1), Some(u), "{line} on {result:?}");
                                result.remove(pos - 1);
                            }
                            "ADDTO" => result.insert(pos - 1 + k, *u),
                            other => panic!("{other} in {line}"),
                        }
                    }
                }
            }
        }
        lines
    }

    /// A partial replica: messages whose bodies are not here sort as an
    /// empty header; as each body arrives, an updating SORT moves the
    /// message to where its subject puts it (REMOVEFROM, then ADDTO), and
    /// the client's copy equals a fresh SORT each time.
    #[test]
    fn an_updating_sort_places_a_message_again_when_its_body_arrives() {
        let (_there, here, raws, mut h) = partial(&["delta", "alpha", "charlie", "bravo"]);
        let out = h.ok("u1 UID SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 ALL");
        assert!(out.contains("* ESEARCH (TAG \"u1\") UID ALL 1,2,3,4"), "every header empty: UID order {out}");
        let mut result = vec![1, 2, 3, 4];
        for (i, step) in [&[0usize][..], &[1, 2], &[3]].iter().enumerate() {
            for &k in *step {
                arrive(&here, &raws[k]);
            }
            let out = h.ok(&format!("n{i} NOOP"));
            assert_eq!(apply(&mut result, &out, "u1"), 1, "one line of updates: {out}");
            assert!(out.contains("REMOVEFROM (") && out.contains("ADDTO ("), "{out}");
            assert_eq!(result, fresh(&mut h), "after bodies {step:?}: {out}");
        }
        assert_eq!(result, vec![2, 4, 3, 1], "alpha, bravo, charlie, delta");
        // Nothing more to say.
        assert_eq!(apply(&mut result, &h.ok("z NOOP"), "u1"), 0);
    }

    /// At most AWAITING_MAX messages sorted without their body per
    /// updating SORT: that many is kept; one more, at the SORT or by a new
    /// message later, is `NO [NOUPDATE]` (the search is no longer updated,
    /// rather than left stale), and the session goes on.
    #[test]
    fn an_updating_sort_awaits_a_bounded_number_of_bodies() {
        let (there, here, mut h) = partial_bulk(AWAITING_MAX);
        let out = h.ok("u1 UID SORT RETURN (UPDATE) (SUBJECT) UTF-8 ALL");
        assert!(!out.contains("NOUPDATE"), "exactly the bound: kept");
        let out = h.ok("u2 UID SORT RETURN (UPDATE) (SUBJECT) UTF-8 UID 2:*");
        assert!(!out.contains("NOUPDATE"), "{out}");
        // One more message without its body: u1 (all) passes the bound.
        there
            .shared
            .store
            .write("alice", |b| b.append(INBOX, message("t", 5000).as_bytes(), 1, vec![]).map(drop))
            .unwrap();
        ship(&there, &here);
        let out = h.ok("n1 NOOP");
        assert!(out.contains("* NO [NOUPDATE \"u1\"]"), "{out}");
        assert!(!out.contains("NOUPDATE \"u2\""), "{out}");
        assert!(out.contains("* ESEARCH (TAG \"u2\") UID ADDTO ("), "{out}");
        let out = h.ok("u3 UID SORT RETURN (UPDATE) (SUBJECT) UTF-8 ALL");
        assert!(out.contains("* NO [NOUPDATE \"u3\"]"), "{out}");
        // u2 still follows: a body's arrival moves its message.
        let raw = message("s", 7);
        arrive(&here, &raw);
        let out = h.ok("n2 NOOP");
        assert!(out.contains("* ESEARCH (TAG \"u2\") UID REMOVEFROM (") && out.contains("ADDTO ("), "{out}");
        assert!(!out.contains("\"u1\"") && !out.contains("\"u3\""), "{out}");
    }

    /// Applies an updating SEARCH's `ADDTO (0 uids)` / `REMOVEFROM (0
    /// uids)` lines of `tag` to `result` (ascending UIDs): a REMOVEFROM
    /// must name UIDs in it, an ADDTO UIDs not in it.
    fn apply_search(result: &mut Vec<u32>, out: &str, tag: &str) {
        let prefix = format!("* ESEARCH (TAG \"{tag}\") UID ");
        for line in out.lines().filter_map(|l| l.trim_end().strip_prefix(&prefix)) {
            for item in line.split(')').map(str::trim).filter(|i| !i.is_empty()) {
                let (verb, set) = item.split_once(" (0 ").unwrap_or_else(|| panic!("{line}"));
                for u in set.split(',').map(|u| u.parse::<u32>().unwrap()) {
                    let at = result.binary_search(&u);
                    match (verb, at) {
                        ("ADDTO", Err(i)) => result.insert(i, u),
                        ("REMOVEFROM", Ok(i)) => {
                            result.remove(i);
                        }
                        _ => panic!("{verb} {u} on {result:?}: {line}"),
                    }
                }
            }
        }
    }

    /// `* ESEARCH … UID ALL` UIDs of a fresh UID SEARCH (none: empty).
    fn fresh_search(c: &mut Client, keys: &str) -> Vec<u32> {
        let out = c.ok(&format!("f UID SEARCH RETURN (ALL) {keys}"));
        let line = out.lines().find(|l| l.starts_with("* ESEARCH")).unwrap();
        let Some((_, set)) = line.trim_end().split_once(" ALL ") else { return Vec::new() };
        let mut uids = Vec::new();
        for part in set.split(',') {
            match part.split_once(':') {
                Some((a, b)) => uids.extend(a.parse::<u32>().unwrap()..=b.parse().unwrap()),
                None => uids.push(part.parse().unwrap()),
            }
        }
        uids
    }

    /// A partial replica: an updating SEARCH with a header key tests a
    /// message whose body is not here as an empty one; when the body
    /// arrives the message is tested again: ADDTO if it matches now,
    /// REMOVEFROM if it no longer does, and the client's copy equals a
    /// fresh SEARCH each time.
    #[test]
    fn an_updating_search_tests_a_message_again_when_its_body_arrives() {
        let (_there, here, raws, mut h) = partial(&["delta", "alpha", "charlie", "alpha two"]);
        let out = h.ok("u1 UID SEARCH RETURN (UPDATE) SUBJECT alpha");
        assert!(!out.contains("NOUPDATE"), "{out}");
        let out = h.ok("u2 UID SEARCH RETURN (UPDATE ALL) NOT SUBJECT alpha");
        assert!(out.contains("* ESEARCH (TAG \"u2\") UID ALL 1:4"), "every header empty: {out}");
        let (mut with, mut without) = (Vec::new(), vec![1, 2, 3, 4]);
        for (i, k) in [1usize, 0, 3, 2].into_iter().enumerate() {
            arrive(&here, &raws[k]);
            let out = h.ok(&format!("n{i} NOOP"));
            apply_search(&mut with, &out, "u1");
            apply_search(&mut without, &out, "u2");
            assert_eq!(with, fresh_search(&mut h, "SUBJECT alpha"), "after body {k}: {out}");
            assert_eq!(without, fresh_search(&mut h, "NOT SUBJECT alpha"), "after body {k}: {out}");
        }
        assert_eq!((with, without), (vec![2, 4], vec![1, 3]));
        assert!(!h.ok("z NOOP").contains("ESEARCH"), "nothing more to say");
    }

    /// `* SORT` UIDs of a fresh `UID SORT` (criteria and search keys).
    fn fresh_sort(c: &mut Client, sort: &str) -> Vec<u32> {
        let out = c.ok(&format!("f UID SORT {sort}"));
        let line = out.lines().find(|l| l.starts_with("* SORT")).unwrap();
        line.split(' ').skip(2).map(|n| n.trim().parse().unwrap()).collect()
    }

    /// A partial replica: an updating SORT whose search keys read the
    /// header tests each message again when its body arrives, as an
    /// updating SEARCH does (ADDTO where it matches now, REMOVEFROM where
    /// it no longer does, a move where it still does), whether or not its
    /// sort criteria read the header; the client's copy equals a fresh
    /// SORT each time.
    #[test]
    fn an_updating_sort_tests_a_message_again_when_its_body_arrives() {
        let (_there, here, raws, mut h) = partial(&["delta", "alpha", "charlie", "alpha two", "bravo"]);
        let sorts = [
            ("u1", "(SUBJECT) UTF-8 SUBJECT alpha"),
            ("u2", "(ARRIVAL) UTF-8 NOT SUBJECT alpha"),
            ("u3", "(REVERSE SUBJECT) UTF-8 NOT SUBJECT alpha"),
        ];
        let mut results = Vec::new();
        for (tag, sort) in sorts {
            let out = h.ok(&format!("{tag} UID SORT RETURN (UPDATE) {sort}"));
            assert!(!out.contains("NOUPDATE"), "{out}");
            results.push(fresh_sort(&mut h, sort));
        }
        assert_eq!(results[0], Vec::<u32>::new(), "every header empty");
        assert_eq!(results[1], vec![1, 2, 3, 4, 5], "every header empty");
        for (i, k) in [1usize, 0, 4, 3, 2].into_iter().enumerate() {
            arrive(&here, &raws[k]);
            let out = h.ok(&format!("n{i} NOOP"));
            for ((tag, sort), result) in sorts.iter().zip(&mut results) {
                apply(result, &out, tag);
                assert_eq!(*result, fresh_sort(&mut h, sort), "{tag} after body {k}: {out}");
            }
        }
        assert_eq!(results, vec![vec![2, 4], vec![1, 3, 5], vec![1, 3, 5]]);
        assert!(!h.ok("z NOOP").contains("ESEARCH"), "nothing more to say");
    }

    /// At most AWAITING_MAX messages tested without their body per
    /// updating SEARCH: one more is `NO [NOUPDATE]`; a search that needs
    /// no body awaits nothing, whatever the number of bodies missing.
    #[test]
    fn an_updating_search_awaits_a_bounded_number_of_bodies() {
        let (_there, here, mut h) = partial_bulk(AWAITING_MAX + 1);
        let out = h.ok("u1 UID SEARCH RETURN (UPDATE) SUBJECT s");
        assert!(out.contains("* NO [NOUPDATE \"u1\"]"), "one over the bound: {out}");
        let out = h.ok("u2 UID SEARCH RETURN (UPDATE) UID 2:* SUBJECT s");
        assert!(!out.contains("NOUPDATE"), "exactly the bound: {out}");
        let out = h.ok("u3 UID SEARCH RETURN (UPDATE) UNSEEN");
        assert!(!out.contains("NOUPDATE"), "no body needed: {out}");
        // u2 follows: a body's arrival adds its message.
        arrive(&here, &message("s", 7));
        let out = h.ok("n NOOP");
        assert!(out.contains("* ESEARCH (TAG \"u2\") UID ADDTO (0 8)"), "{out}");
        assert!(!out.contains("\"u1\"") && !out.contains("\"u3\""), "{out}");
    }
}
