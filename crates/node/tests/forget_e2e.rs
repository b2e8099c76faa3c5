//! Forgetting accounts in real processes: two pinned `starling serve`
//! nodes; an account deleted on one is purged by both once each has the
//! deletion acknowledged by the other; `account forget` refuses while the
//! peer lacks a change made here, and forgets once the peer holds it all —
//! the account stays whole on the peer.

mod common;

use common::*;
use std::process::Command;

/// The names of the accounts the running node's `status --json` shows.
fn accounts(n: &Node) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&run(&n.dir, &["status", "--json"])).unwrap();
    v["accounts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap().to_string()).collect()
}

/// What `status --json` says holds `account`'s purge back, if deleted.
fn deleted(n: &Node, account: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(&run(&n.dir, &["status", "--json"])).unwrap();
    let a = v["accounts"].as_array().unwrap().iter().find(|a| a["name"] == account)?;
    a["deleted"].as_str().map(str::to_string)
}

/// The names `status --json` shows as deleted and purged here.
fn purged(n: &Node) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&run(&n.dir, &["status", "--json"])).unwrap();
    v["purged"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
}

fn ops(n: &Node, account: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(&run(&n.dir, &["status", "--json"])).unwrap();
    v["accounts"].as_array().unwrap().iter().find(|a| a["name"] == account).and_then(|a| a["ops"].as_u64())
}

/// `starling account forget alice` on a node: (succeeded, what it printed).
fn forget(n: &Node, account: &str) -> (bool, String) {
    let o = Command::new(BIN).arg("--data-dir").arg(&n.dir).args(["account", "forget", account]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o.status.success(), text)
}

#[test]
fn a_deleted_account_is_purged_on_both_nodes_and_forget_waits_for_the_peer() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (Node::new(root.path(), "a"), Node::new(root.path(), "b"));
    for (x, y) in [(&a, &b), (&b, &a)] {
        run(&x.dir, &["account", "add", "bob"]);
        run(&x.dir, &["peer", "add", &y.id, &format!("127.0.0.1:{}", y.port), "--accounts", "alice,bob"]);
    }
    a.import(root.path(), "x", 20);
    let config = root.path().join("fast.toml");
    std::fs::write(&config, "[store]\nhousekeeping_secs = 1\n").unwrap();
    let cfg = config.to_str().unwrap();
    a.start_with(&["--config", cfg], None);
    b.start_with(&["--config", cfg], None);
    wait_for("b has every op of a", || ops(&a, "alice").is_some() && ops(&a, "alice") == ops(&b, "alice"));
    wait_for("b holds every body", || b.dump().lines().filter(|l| l.starts_with("  ")).count() == 20);

    // Deleted on a: both purge it once the other has acknowledged it.
    run(&a.dir, &["account", "delete", "bob"]);
    for n in [&a, &b] {
        wait_for("the deleted account purged", || !accounts(n).contains(&"bob".to_string()));
        assert!(accounts(n).contains(&"alice".to_string()));
    }

    // A change b has not got: forgetting alice on a is refused.
    b.stop();
    run(&a.dir, &["flag", "alice", "INBOX", "1", "+\\Flagged"]);
    let (ok, said) = forget(&a, "alice");
    assert!(!ok, "forgetting with the peer behind: {said}");
    assert!(said.contains("not forgetting alice") && said.contains("--force"), "{said}");
    assert!(accounts(&a).contains(&"alice".to_string()));
    // Once b holds it (and a's housekeeping has written that down), it goes.
    b.start_with(&["--config", cfg], None);
    let mut last = String::new();
    wait_for("forget succeeds once b holds everything", || {
        let (ok, said) = forget(&a, "alice");
        last = said;
        ok
    });
    assert!(last.contains("forgotten on this node"), "{last}");
    assert!(!accounts(&a).contains(&"alice".to_string()));
    // b still has all of alice, the flag included.
    let dump = b.dump();
    assert_eq!(dump.lines().filter(|l| l.starts_with("  ")).count(), 20, "{dump}");
    assert!(dump.contains("\\Flagged"), "{dump}");
    assert!(accounts(&b).contains(&"alice".to_string()));
    a.stop();
    b.stop();
    // Nothing is left of either on a, and the store checks clean.
    for n in [&a, &b] {
        let out = Command::new(BIN).arg("--data-dir").arg(&n.dir).arg("verify").output().unwrap();
        assert!(
            out.status.success(),
            "verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // bob is listed only as a name kept to tell peers.
    let listed = run(&a.dir, &["account", "list"]);
    assert!(
        !listed.contains("alice") && listed.lines().any(|l| l.starts_with("bob (deleted, purged here 20")),
        "{listed}"
    );
    let listed = run(&b.dir, &["account", "list"]);
    assert!(
        listed.contains("alice") && listed.lines().all(|l| !l.starts_with("bob") || l.contains("purged here")),
        "{listed}"
    );
    // A restart does not make them again from the peers' lines.
    a.start_with(&["--config", cfg], None);
    b.start_with(&["--config", cfg], None);
    wait_for("b has every op of a", || ops(&b, "alice").is_some());
    assert_eq!(accounts(&a), Vec::<String>::new());
    assert_eq!(accounts(&b), vec!["alice".to_string()]);
}

/// A node away while its account was deleted and purged elsewhere learns
/// of it when it comes back: `c` is stopped, `alice` deleted on `a`, whose
/// status names `c` as what holds the purge back; `c` is removed from
/// `a`'s peers (as an operator does with a peer that seems gone for good)
/// and `alice` purged by `a` and `b`; `c` is added back and started:
/// `a` tells it, and `c` takes the deletion and purges `alice` too. The name
/// is not made again on `a`.
#[test]
fn a_node_back_after_the_purge_is_told_and_purges_too() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (Node::new(root.path(), "a"), Node::new(root.path(), "b"));
    // a's id above c's: a dials c, so the session runs only because a,
    // which holds no account once it purged, still wants one with a peer
    // listing a name it purged (the fan-out counts such names).
    let mut c = Node::new(root.path(), "c");
    for n in 0.. {
        if c.id < a.id {
            break;
        }
        c = Node::new(root.path(), &format!("c{n}"));
    }
    let pin = |x: &Node, y: &Node| {
        run(&x.dir, &["peer", "add", &y.id, &format!("127.0.0.1:{}", y.port), "--accounts", "alice"]);
    };
    a.import(root.path(), "x", 5);
    for (x, y) in [(&a, &b), (&b, &a), (&a, &c), (&c, &a)] {
        pin(x, y);
    }
    // No introductions: c's pinned peer for alice stays a alone (an
    // introduced b, which never heard of c, would hold c's purge back).
    let config = root.path().join("fast.toml");
    std::fs::write(&config, "[store]\nhousekeeping_secs = 1\n[cluster]\naccept_introduced = false\n").unwrap();
    let cfg = config.to_str().unwrap();
    for n in [&mut a, &mut b, &mut c] {
        n.start_with(&["--config", cfg], None);
    }
    wait_for("b and c have alice", || {
        ops(&a, "alice").is_some() && ops(&a, "alice") == ops(&b, "alice") && ops(&a, "alice") == ops(&c, "alice")
    });
    c.stop();
    // Deleted while c is away: a's status says c holds the purge back.
    run(&a.dir, &["account", "delete", "alice"]);
    wait_for("a's status names c as what holds the purge back", || {
        deleted(&a, "alice").is_some_and(|why| why.contains(&c.id[..8]) && why.contains("not acknowledged"))
    });
    assert!(accounts(&a).contains(&"alice".to_string()), "still held on a");
    let shown = run(&a.dir, &["status"]);
    assert!(shown.contains("  deleted, not purged yet: peer"), "{shown}");
    // The operator, taking c for gone, removes it.
    run(&a.dir, &["peer", "remove", &c.id]);
    for n in [&a, &b] {
        wait_for("a and b purge alice", || !accounts(n).contains(&"alice".to_string()));
        assert_eq!(purged(n), vec!["alice".to_string()], "the name shown as purged");
    }
    let shown = run(&a.dir, &["status"]);
    assert!(shown.contains("account alice: deleted, purged here 20"), "{shown}");
    // Back: pinned again on a (the account listed), and started.
    pin(&a, &c);
    assert!(!accounts(&a).contains(&"alice".to_string()), "pinning c does not make alice again on a");
    c.start_with(&["--config", cfg], None);
    wait_for("c is told, takes the deletion and purges alice", || !accounts(&c).contains(&"alice".to_string()));
    for n in [&mut a, &mut b, &mut c] {
        n.stop();
    }
    let o = Command::new(BIN).arg("--data-dir").arg(&a.dir).args(["account", "add", "alice"]).output().unwrap();
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && said.contains("deleted and purged"), "{said}");
    let listed = run(&c.dir, &["account", "list"]);
    assert!(listed.lines().all(|l| !l.starts_with("alice") || l.contains("(deleted, purged here")), "{listed}");
}
