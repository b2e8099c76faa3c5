//! Replication at the sizes real accounts reach, with real processes: a new
//! node joining a long two-writer history, and a heal after thousands of
//! messages shown on each side of a partition. Both failed before the
//! chunked, windowed protocol and the iterative settle (a new node never
//! caught up on 340,000 ops; both nodes died of a stack overflow on heal).

mod common;

use common::*;

use std::process::Command;
use std::time::{Duration, Instant};

/// Waits (up to `limit`) until every node reports `ops` ops and no missing body.
fn wait_ops(nodes: &[&Node], ops: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now: Vec<(Option<u64>, Option<u64>)> =
            nodes.iter().map(|n| (*n.ops.lock().unwrap(), *n.missing.lock().unwrap())).collect();
        if now.iter().all(|(o, m)| *o == Some(ops) && *m == Some(0)) {
            return;
        }
        assert!(Instant::now() < deadline, "not at {ops} ops with all bodies within {limit:?}: {now:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn alive(n: &mut Node) {
    let c = n.child.as_mut().expect("started");
    assert!(c.try_wait().unwrap().is_none(), "{} died", n.dir.display());
}

fn ops_of(n: &Node) -> u64 {
    n.ops.lock().unwrap().expect("op count printed")
}

/// Two writers take turns setting and clearing \Flagged on every message,
/// each after seeing the other's last round: 320,000 ops, each round
/// depending on the previous one. A new empty node pinned to one of them
/// then joins and must end with the same state.
#[test]
fn a_new_node_joins_a_long_two_writer_history() {
    const MESSAGES: usize = 20_000;
    const ROUNDS: usize = 15;
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::new(root.path(), "a");
    let mut b = Node::new(root.path(), "b");
    let mut c = Node::new(root.path(), "c");
    a.pin(&b);
    b.pin(&a);
    a.pin(&c);
    c.pin(&a);
    a.import(root.path(), "history", MESSAGES);
    a.start();
    b.start();
    let base = ops_of(&a);
    wait_ops(&[&a, &b], base, Duration::from_secs(120));
    for round in 0..ROUNDS {
        let (writer, sign) = if round % 2 == 0 { (&a, "+") } else { (&b, "-") };
        run(&writer.dir, &["flag", "alice", "INBOX", &format!("1:{MESSAGES}"), &format!("{sign}\\Flagged")]);
        let target = base + (round as u64 + 1) * MESSAGES as u64;
        wait_ops(&[&a, &b], target, Duration::from_secs(120));
    }
    let total = ops_of(&a);
    assert!(total >= 300_000, "history of {total} ops");
    let t = Instant::now();
    c.start();
    wait_ops(&[&a, &c], total, Duration::from_secs(600));
    eprintln!("joined {total} ops in {:.1} s", t.elapsed().as_secs_f64());
    for n in [&mut a, &mut b, &mut c] {
        alive(n);
    }
    let d = a.dump();
    assert_eq!(messages(&d), MESSAGES);
    assert_eq!(c.dump(), d, "the new node holds exactly A's state");
    assert_eq!(b.dump(), d);
}

/// Delivers `n` messages over LMTP, then a client logs in, selects INBOX
/// and fetches every UID (so the node shows them: announces UIDNEXT).
fn deliver_and_look(node: &Node, tag: &str, n: usize) {
    let lmtp = node.lmtp.lock().unwrap().expect("LMTP port");
    let imap = node.imap.lock().unwrap().expect("IMAP port");
    let script = format!(
        r#"
import smtplib, imaplib
s = smtplib.LMTP("127.0.0.1", {lmtp})
for i in range({n}):
    s.sendmail("x@example.net", ["alice"], "Subject: {tag} %d\r\nMessage-ID: <{tag}-%d@test>\r\n\r\nbody %d\r\n" % (i, i, i))
s.quit()
m = imaplib.IMAP4("127.0.0.1", {imap})
m.login("alice", "pw")
typ, data = m.select("INBOX")
assert typ == "OK" and int(data[0]) == {n}, data
typ, data = m.uid("FETCH", "1:*", "(FLAGS)")
assert typ == "OK" and len(data) == {n}, len(data)
m.logout()
"#
    );
    let o = Command::new("python3").arg("-c").arg(&script).output().unwrap();
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

fn inbox(n: &Node) -> serde_json::Value {
    let json: serde_json::Value = serde_json::from_str(&run(&n.dir, &["dump", "alice", "--json"])).unwrap();
    json["mailboxes"].as_array().unwrap().iter().find(|m| m["name"] == "INBOX").unwrap().clone()
}

/// Each side of a partition takes 5,000 deliveries and a client sees all of
/// them (UIDs 1..5,000 shown as different messages on each side). On heal
/// every one of them must move (U2: a UID shown for two messages names
/// neither), the nodes converge, and neither dies.
#[test]
fn heal_after_thousands_shown_on_each_side() {
    const N: usize = 5_000;
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::new(root.path(), "a");
    let mut b = Node::new(root.path(), "b");
    a.pin(&b);
    b.pin(&a);
    passwd(&a, "pw");
    passwd(&b, "pw");
    a.start();
    deliver_and_look(&a, "a", N);
    a.stop();
    b.start();
    deliver_and_look(&b, "b", N);
    let t = Instant::now();
    a.start();
    // Each side's deliveries, each side's announce and one claim per message moved.
    wait_for_equal_ops(&a, &b, Duration::from_secs(300));
    eprintln!("healed in {:.1} s", t.elapsed().as_secs_f64());
    alive(&mut a);
    alive(&mut b);
    assert_eq!(a.dump(), b.dump());
    let mb = inbox(&a);
    let msgs = mb["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2 * N);
    let uids: std::collections::BTreeSet<u64> = msgs.iter().map(|m| m["uid"].as_u64().unwrap()).collect();
    assert_eq!(uids.len(), 2 * N, "a UID names two messages");
    assert!(uids.iter().all(|u| *u > N as u64), "a UID shown on both sides still names a message (U2)");
    assert!(mb["uidnext"].as_u64().unwrap() > *uids.iter().last().unwrap(), "UIDNEXT above every UID");
    assert_eq!(inbox(&b), mb);
    // Both nodes keep serving after the heal.
    for n in [&a, &b] {
        let imap = n.imap.lock().unwrap().expect("IMAP port");
        let script = format!(
            "import imaplib\nm = imaplib.IMAP4('127.0.0.1', {imap})\nm.login('alice', 'pw')\n\
             typ, data = m.select('INBOX')\nassert int(data[0]) == {}, data\nm.logout()\n",
            2 * N
        );
        let o = Command::new("python3").arg("-c").arg(&script).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

/// Waits until both nodes report the same op count and no missing body,
/// stable for a second.
fn wait_for_equal_ops(a: &Node, b: &Node, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut since: Option<(Instant, u64)> = None;
    loop {
        let (oa, ob) = (*a.ops.lock().unwrap(), *b.ops.lock().unwrap());
        let bodies = *a.missing.lock().unwrap() == Some(0) && *b.missing.lock().unwrap() == Some(0);
        match (oa, ob, since) {
            (Some(x), Some(y), Some((t, v))) if x == y && bodies && v == x => {
                if t.elapsed() > Duration::from_secs(1) {
                    return;
                }
            }
            (Some(x), Some(y), _) if x == y && bodies => since = Some((Instant::now(), x)),
            _ => since = None,
        }
        assert!(Instant::now() < deadline, "no convergence within {limit:?}: {oa:?} {ob:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
