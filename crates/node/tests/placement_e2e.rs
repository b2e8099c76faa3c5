//! Per-account placement with real processes: four nodes in one cluster
//! (joined by invitation for a shared account), one account placed on
//! three of them, a replica stopped past the replacement delay and
//! replaced, the surplus copy let go when it comes back, then a list of
//! nodes that moves the account.

mod common;

use common::{messages, run, wait_for, Node};
use std::collections::BTreeSet;
use std::time::Duration;

/// Whether the running node holds alice (its status lists the account).
fn holds(n: &Node) -> bool {
    run(&n.dir, &["status"]).lines().any(|l| l.starts_with("account alice:"))
}

/// Alice's messages on a node, if it holds her now (a node may let go
/// between two looks).
fn messages_now(n: &Node) -> Option<usize> {
    let o =
        std::process::Command::new(common::BIN).arg("--data-dir").arg(&n.dir).args(["dump", "alice"]).output().ok()?;
    o.status.success().then(|| messages(&String::from_utf8_lossy(&o.stdout)))
}

fn holders<'a>(nodes: &[&'a Node]) -> BTreeSet<&'a str> {
    nodes.iter().filter(|n| n.child.is_some() && holds(n)).map(|n| n.id.as_str()).collect()
}

/// Waits until exactly `want` of the running nodes hold alice and each of
/// them has every message.
fn wait_placed(nodes: &[&Node], want: usize, messages_in: usize) -> BTreeSet<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let h = holders(nodes);
        let full = h.len() == want
            && nodes.iter().filter(|n| h.contains(n.id.as_str())).all(|n| messages_now(n) == Some(messages_in));
        if full {
            return h.into_iter().map(str::to_string).collect();
        }
        if std::time::Instant::now() >= deadline {
            for n in nodes {
                let log = std::fs::read_to_string(n.dir.with_extension("log")).unwrap_or_default();
                let said: Vec<&str> =
                    log.lines().filter(|l| l.contains("letting go") || l.contains("placed")).collect();
                eprintln!("{} holds: {}; {:?}", n.id, holds(n), &said[said.len().saturating_sub(4)..]);
            }
            panic!("not placed on {want}: held by {h:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_account_is_placed_on_n_nodes_replaced_when_one_is_gone_and_moved_by_a_list() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::new(root.path(), "a");
    run(&a.dir, &["account", "add", "team"]);
    a.import(root.path(), "a", 12);
    let mut others: Vec<Node> = ["b", "c", "d"].iter().map(|n| Node::bare(root.path(), n)).collect();
    let config = root.path().join("placement.toml");
    std::fs::write(&config, "[cluster]\nreplace_after_secs = 3\n[store]\nhousekeeping_secs = 1\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    a.start_with(&["--config", &config], None);
    for n in others.iter_mut() {
        n.start_with(&["--config", &config], None);
        let token = run(&a.dir, &["invite", "--accounts", "team"]);
        run(&n.dir, &["join", token.trim()]);
    }
    {
        let nodes: Vec<&Node> = std::iter::once(&a).chain(others.iter()).collect();
        wait_for("every node sees the three others", || {
            nodes.iter().all(|n| run(&n.dir, &["status"]).contains("3 other members alive"))
        });
        assert_eq!(holders(&nodes), BTreeSet::from([a.id.as_str()]), "only A holds alice before the placement");

        // Three replicas: A keeps its copy and two more nodes take it.
        let said = run(&a.dir, &["account", "place", "alice", "--replicas", "3"]);
        assert!(said.contains("replicas=3"), "{said}");
        let placed = wait_placed(&nodes, 3, 12);
        assert!(placed.contains(&a.id), "the holder stays: {placed:?}");
        let status = run(&a.dir, &["status"]);
        assert!(status.contains("placement replicas=3"), "{status}");
        for n in &nodes {
            if placed.contains(&n.id) {
                assert_eq!(n.dump(), a.dump(), "a placed replica equals A");
            }
        }
    }

    // A placed replica other than A stops for longer than the delay: the
    // fourth node takes its place.
    let gone = others.iter().position(holds).unwrap();
    others[gone].stop();
    {
        let nodes: Vec<&Node> = std::iter::once(&a).chain(others.iter()).collect();
        let now = wait_placed(&nodes, 3, 12);
        assert!(!now.contains(&others[gone].id));
    }

    // It comes back: four copies for three replicas, and one lets go of its
    // copy (the one ranked last), once the three others hold everything.
    others[gone].start_with(&["--config", &config], None);
    {
        let nodes: Vec<&Node> = std::iter::once(&a).chain(others.iter()).collect();
        wait_for("the returning node is seen", || {
            nodes.iter().all(|n| run(&n.dir, &["status"]).contains("3 other members alive"))
        });
        let three = wait_placed(&nodes, 3, 12);
        let left: Vec<&&Node> = nodes.iter().filter(|n| !three.contains(&n.id)).collect();
        assert_eq!(left.len(), 1);
        let list = run(&left[0].dir, &["peer", "list"]);
        assert!(!list.contains("alice"), "the node that let go syncs alice with nobody: {list}");
    }

    // A list of two nodes, A not among them, set on a node that holds
    // alice now (A may have been the one to let go): the account moves to
    // them and the others let go, A too if it held it.
    let (b, c) = (&others[0], &others[1]);
    {
        let nodes: Vec<&Node> = std::iter::once(&a).chain(others.iter()).collect();
        let holder = nodes.iter().find(|n| holds(n)).expect("someone holds alice");
        run(&holder.dir, &["account", "place", "alice", "--nodes", &format!("{},{}", b.id, c.id)]);
        let two = wait_placed(&nodes, 2, 12);
        assert_eq!(two, BTreeSet::from([b.id.clone(), c.id.clone()]));
        assert_eq!(b.dump(), c.dump());
        assert!(!holds(&a), "A let go");
    }
}
