//! A bounded fan-out with real processes: five nodes, each pinned to all
//! others, hold sync sessions only with their two neighbours on the ring
//! (`[cluster] fanout = 2`); changes reach the rest by relaying, and when
//! both neighbours of a node stop, gossip declares them down and the node
//! links to the next ones.

mod common;

use common::{messages, run, wait_for, Delivery, Node};

fn deliver(node: &Node, subject: &str) {
    let port = node.lmtp.lock().unwrap().expect("LMTP port");
    let mut d = Delivery::send(port, &format!("Subject: {subject}\r\nMessage-ID: <{subject}@test>\r\n\r\nhi\r\n"));
    assert!(d.reply().unwrap().starts_with("250"));
}

/// Peers with a sync session, from `status`.
fn sessions(node: &Node) -> usize {
    run(&node.dir, &["status"]).lines().filter(|l| l.starts_with("peer ") && l.contains(": connected,")).count()
}

#[test]
fn five_nodes_with_a_fanout_of_two_relay_and_relink_when_neighbours_stop() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..5).map(|i| Node::new(root.path(), &format!("n{i}"))).collect();
    // Ring order is node-id order.
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    for i in 0..5 {
        for j in 0..5 {
            if i != j {
                nodes[i].pin(&nodes[j]);
            }
        }
    }
    let config = root.path().join("fanout.toml");
    std::fs::write(&config, "[cluster]\nfanout = 2\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    for n in nodes.iter_mut() {
        n.start_with(&["--config", &config], None);
    }
    deliver(&nodes[0], "first");
    wait_for("every node has the first message", || nodes.iter().all(|n| messages(&n.dump()) == 1));
    // Each holds sessions with its two ring neighbours only (all five are pinned to each other).
    wait_for("two sessions each", || nodes.iter().all(|n| sessions(n) == 2));
    std::thread::sleep(std::time::Duration::from_secs(3));
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(sessions(n), 2, "node {i} of the ring");
    }
    // Both neighbours of node 0 stop (places 1 and 4): node 0 links to 2 and 3.
    nodes[1].stop();
    nodes[4].stop();
    deliver(&nodes[0], "after");
    wait_for("node 2 gets node 0's mail around the stopped ones", || {
        messages(&nodes[2].dump()) == 2 && messages(&nodes[3].dump()) == 2
    });
    assert!(sessions(&nodes[0]) >= 1);
}
