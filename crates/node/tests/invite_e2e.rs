//! Joining by invitation and removing a node, with real processes: no
//! `peer add`, no restart; one `invite` on a member and one `join` on the
//! newcomer.

mod common;

use common::{converge, messages, run, wait_for, Delivery, Node};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs the CLI expecting it to fail; returns its error.
fn run_fails(dir: &Path, args: &[&str]) -> String {
    let o = Command::new(common::BIN).arg("--data-dir").arg(dir).args(args).output().unwrap();
    assert!(!o.status.success(), "{args:?} succeeded: {}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn deliver(node: &Node, subject: &str) {
    let port = node.lmtp.lock().unwrap().expect("LMTP port");
    let mut d = Delivery::send(port, &format!("Subject: {subject}\r\nMessage-ID: <{subject}@test>\r\n\r\nhello\r\n"));
    let reply = d.reply().unwrap();
    assert!(reply.starts_with("250"), "{reply}");
}

fn invite(node: &Node, extra: &[&str]) -> String {
    let mut args = vec!["invite", "--accounts", "alice"];
    args.extend_from_slice(extra);
    let token = run(&node.dir, &args).trim().to_string();
    assert!(token.starts_with("starling-invite:"), "{token}");
    token
}

#[test]
fn nodes_join_by_invitation_relay_through_each_other_and_a_removed_node_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::new(root.path(), "a");
    a.import(root.path(), "a", 30);
    let (mut b, mut c) = (Node::bare(root.path(), "b"), Node::bare(root.path(), "c"));
    // Without gossip: only the invitations pin, so C reaches A only through B.
    let config = root.path().join("no-gossip.toml");
    std::fs::write(&config, "[cluster]\ngossip = false\n").unwrap();
    let config = config.to_str().unwrap();
    for n in [&mut a, &mut b, &mut c] {
        n.start_with(&["--config", config], None);
    }

    // B joins A with A's token: both pin each other, B fills.
    let token = invite(&a, &[]);
    let joined = run(&b.dir, &["join", &token]);
    assert!(joined.contains(&a.id) && joined.contains("alice"), "{joined}");
    converge(&[&a, &b]);
    assert_eq!(a.dump(), b.dump());
    assert_eq!(messages(&b.dump()), 30);
    let listed = run(&a.dir, &["peer", "list"]);
    assert!(listed.contains(&b.id) && listed.contains("alice"), "A pinned B: {listed}");

    // The token worked once.
    let again = run_fails(&c.dir, &["join", &token]);
    assert!(again.contains("used"), "{again}");

    // C joins B (not A): what A takes reaches C through B.
    let token_b = invite(&b, &[]);
    run(&c.dir, &["join", &token_b]);
    deliver(&a, "relayed");
    converge(&[&a, &b, &c]);
    assert_eq!(a.dump(), c.dump());
    assert_eq!(messages(&c.dump()), 31);
    assert!(!run(&c.dir, &["peer", "list"]).contains(&a.id), "C knows only B");

    // An expired token is refused.
    let short = invite(&a, &["--expires", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let late = run_fails(&c.dir, &["join", &short]);
    assert!(late.contains("expired"), "{late}");

    // A removes B: B's session ends and it cannot come back, by
    // reconnecting or with a new invitation; C, through B, is cut off too.
    let removed = run(&a.dir, &["peer", "remove", &b.id]);
    assert!(removed.contains("refused"), "{removed}");
    deliver(&a, "after-removal");
    let a_has = messages(&a.dump());
    assert_eq!(a_has, 32);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(messages(&b.dump()), 31, "a removed node still got A's mail");
    let token = invite(&a, &[]);
    let back = run_fails(&b.dir, &["join", &token]);
    assert!(back.contains("removed from the cluster"), "{back}");
    // After A restarts, still refused; and B's changes no longer reach A.
    a.stop();
    a.start_with(&["--config", config], None);
    deliver(&b, "from-removed");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(messages(&a.dump()), 32, "a removed node's mail reached A");
    assert!(!run(&a.dir, &["peer", "list"]).contains(&b.id));
    // B and C still sync with each other.
    wait_for("C gets B's mail", || messages(&c.dump()) == 32);
    assert!(!c.dump().contains("after-removal"));
}

/// `peer add` on running nodes takes effect at once (no restart), and an
/// invitation made while the node is stopped works once it runs.
#[test]
fn peers_added_while_running_sync_at_once_and_an_offline_invitation_works() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (Node::new(root.path(), "a"), Node::new(root.path(), "b"));
    a.import(root.path(), "a", 5);
    b.import(root.path(), "b", 7);
    a.start();
    b.start();
    a.pin(&b);
    b.pin(&a);
    converge(&[&a, &b]);
    assert_eq!(messages(&a.dump()), 12);

    // Made while C's host A is stopped; A listens on its peer port.
    let mut c = Node::bare(root.path(), "c");
    a.stop();
    let token = run(&a.dir, &["invite", "--accounts", "alice", "--address", &format!("127.0.0.1:{}", a.port)]);
    a.start();
    c.start();
    run(&c.dir, &["join", token.trim()]);
    converge(&[&a, &b, &c]);
    assert_eq!(a.dump(), c.dump());
    // An invitation for an account A does not hold is refused at once.
    let no = run_fails(&a.dir, &["invite", "--accounts", "bob"]);
    assert!(no.contains("no account"), "{no}");
}

/// Nodes that joined the same member learn each other by gossip and pin
/// each other — only for the accounts the introducer syncs with them — so
/// they keep syncing when the member that introduced them stops.
#[test]
fn joined_nodes_find_each_other_by_gossip_and_go_on_without_their_introducer() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::new(root.path(), "a");
    run(&a.dir, &["account", "add", "bob"]);
    a.import(root.path(), "a", 3);
    let (mut b, mut c) = (Node::bare(root.path(), "b"), Node::bare(root.path(), "c"));
    a.start();
    b.start();
    c.start();
    run(&b.dir, &["join", &invite(&a, &[])]);
    let both = run(&a.dir, &["invite", "--accounts", "alice,bob"]);
    run(&c.dir, &["join", both.trim()]);
    converge(&[&a, &b, &c]);
    // B and C pin each other, told by A: for alice only (A syncs only
    // alice with B, though C holds bob too).
    wait_for("B pins C", || run(&b.dir, &["peer", "list"]).contains(&c.id));
    wait_for("C pins B", || run(&c.dir, &["peer", "list"]).contains(&b.id));
    let b_peers = run(&b.dir, &["peer", "list"]);
    let c_line = b_peers.lines().find(|l| l.starts_with(&c.id)).unwrap();
    assert!(c_line.ends_with(" alice"), "B pinned C beyond what A may introduce: {c_line}");
    let status = run(&b.dir, &["status"]);
    assert!(status.contains("cluster (by gossip): 2 other members alive"), "{status}");
    // A stops: B and C still sync, directly.
    a.stop();
    deliver(&b, "without-a");
    wait_for("C gets B's mail without A", || messages(&c.dump()) == 4);
    // A comes back and removes C: B, which A introduced C to, removes it
    // too (A's news), and C's mail no longer reaches B.
    a.start();
    wait_for("A reconnects", || run(&a.dir, &["status"]).contains("connected, last contact"));
    run(&a.dir, &["peer", "remove", &c.id]);
    wait_for("B removes C", || !run(&b.dir, &["peer", "list"]).contains(&c.id));
    deliver(&c, "from-removed");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(messages(&b.dump()), 4, "a removed node's mail reached B");
    assert!(std::fs::read_to_string(b.dir.join("revoked")).unwrap().contains(&c.id));
}
