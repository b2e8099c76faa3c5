//! Four defects of issue 15 (IMAP completeness), each reproduced here:
//! COMPRESS=DEFLATE output pending when the client ends its stream,
//! an updating SORT when a missing body arrives, and NOTIFY's fetch
//! attributes checked at `NOTIFY SET`. (The store's bounded sort-key
//! upgrade is tested in the store crate, `tests/sortkeys.rs`.)

mod common;
use common::*;

mod deflate_end {
    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
    use starling_imap::{Config, Listener, Shared};
    use starling_model::ReplicaId;
    use starling_store::{Store, StoreOptions};
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};
    use std::sync::Arc;

    /// A store with alice/pw behind `serve` on a loopback port.
    fn start(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> std::net::SocketAddr {
        let store = Store::open(&dir.join("store.redb"), ReplicaId(7), StoreOptions::default()).unwrap();
        store.add_account("alice").unwrap();
        store.set_local_credential("alice", Some(&starling_imap::auth::hash_password("pw"))).unwrap();
        let shared = Shared::new(Arc::new(store), Config::default());
        let tls = starling_imap::tls_acceptor(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
        let tcp = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = tcp.local_addr().unwrap();
        let (changes, _) = tokio::sync::broadcast::channel(16);
        let handle = rt.handle().clone();
        rt.spawn(starling_imap::serve(Listener { tcp, implicit_tls: false }, shared, tls, changes, move |f| {
            handle.spawn(f);
        }));
        addr
    }

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
        let mut tcp = TcpStream::connect(start(&rt, dir.path())).unwrap();
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
