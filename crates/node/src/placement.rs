//! Per-account placement: which nodes of the cluster replicate an account.
//!
//! A placement is part of the account (its document, so every replica
//! reads the same one): `replicas=N` (N nodes, chosen by the cluster) or
//! `nodes=ID,ID,…` (those nodes). None set: every node that syncs the
//! account, as pinned by hand, invitations and introductions.
//!
//! Every holder works out the same *target* from the placement and the
//! membership gossip shows it ([`Placement::target`]):
//! - `nodes=`: the listed nodes.
//! - `replicas=N`: the holders stay (a placement never moves data that is
//!   where it may be); if fewer than N hold it, the nodes ranked first for
//!   the account (rendezvous hashing: BLAKE3 of account and node id) are
//!   added; if more, the holders ranked last are surplus. A holder the
//!   cluster declared down still counts for `[cluster] replace_after_secs`,
//!   so a restart or a short cut moves nothing.
//!
//! One holder acts for the additions, the *coordinator* (the smallest node
//! id among the live holders): it pins each node to add for the account
//! and tells it (a `Place` datagram, repeated each round until that node
//! advertises the account); the node takes the account and pins the
//! holders named in the message. The coordinator also tells the holders it
//! syncs the account with (a `Placed` datagram), and a holder pins the new
//! node for the account only on the word of a peer it syncs the account
//! with: a node's own claim, by gossip, to hold an account never gets it
//! the account's data. A surplus node leaves on its own,
//! once every node of the target advertises the account and it is safe to
//! forget its copy ([`crate::forget`]).

use crate::cluster::Cluster;
use crate::membership::{held, Node};
use crate::peers::Peer;
use serde::{Deserialize, Serialize};
use starling_net::NodeId;
use starling_sync::BodyPolicy;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Replicas or listed nodes per account at most.
pub const NODES_MAX: usize = 64;
/// Holders named in one `Place` message at most (it fits a datagram; the
/// others are pinned as the gossip shows them).
pub const PLACE_HOLDERS_MAX: usize = 16;
/// How often placement is worked out again.
pub const PLACEMENT_EVERY: Duration = Duration::from_secs(2);

/// Which nodes replicate an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// This many nodes, chosen by the cluster.
    Replicas(usize),
    /// These nodes.
    Nodes(BTreeSet<NodeId>),
}

impl Placement {
    /// `replicas=N` or `nodes=ID,ID,…` (what the account stores and the
    /// CLI takes).
    pub fn parse(s: &str) -> Result<Placement, String> {
        match s.split_once('=') {
            Some(("replicas", n)) => match n.parse::<usize>() {
                Ok(n) if (1..=NODES_MAX).contains(&n) => Ok(Placement::Replicas(n)),
                _ => Err(format!("replicas={n}: give a number from 1 to {NODES_MAX}")),
            },
            Some(("nodes", list)) => {
                let ids: BTreeSet<NodeId> = list
                    .split(',')
                    .filter(|i| !i.is_empty())
                    .map(|i| NodeId::parse(i).map_err(|e| format!("nodes=: {i:?}: {e}")))
                    .collect::<Result<_, _>>()?;
                if ids.is_empty() || ids.len() > NODES_MAX {
                    return Err(format!("nodes=: list from 1 to {NODES_MAX} node ids"));
                }
                Ok(Placement::Nodes(ids))
            }
            _ => Err(format!("{s:?}: expected replicas=N or nodes=ID,ID,…")),
        }
    }

    /// The stored form (parsed back by [`Placement::parse`]).
    pub fn encode(&self) -> String {
        match self {
            Placement::Replicas(n) => format!("replicas={n}"),
            Placement::Nodes(ids) => {
                format!("nodes={}", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","))
            }
        }
    }

    /// The nodes that should hold `account`, given those that hold it
    /// (live, or down for less than the replacement delay) and the nodes it
    /// could be added to (live members). The same inputs give the same
    /// answer on every node.
    pub fn target(&self, account: &str, holders: &BTreeSet<NodeId>, candidates: &BTreeSet<NodeId>) -> BTreeSet<NodeId> {
        match self {
            Placement::Nodes(ids) => ids.clone(),
            Placement::Replicas(n) => {
                let mut kept: Vec<NodeId> = holders.iter().copied().collect();
                kept.sort_by_key(|id| rank(account, id));
                kept.truncate(*n);
                if kept.len() < *n {
                    let mut more: Vec<NodeId> = candidates.difference(holders).copied().collect();
                    more.sort_by_key(|id| rank(account, id));
                    kept.extend(more.into_iter().take(*n - kept.len()));
                }
                kept.into_iter().collect()
            }
        }
    }
}

/// Rendezvous rank of a node for an account (smaller first).
fn rank(account: &str, id: &NodeId) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(account.as_bytes());
    h.update(&[0]);
    h.update(&id.0);
    *h.finalize().as_bytes()
}

/// The `Place` message: take `account`, and sync it with these holders.
#[derive(Debug, Serialize, Deserialize)]
pub struct PlaceMessage {
    pub account: String,
    pub holders: Vec<([u8; 32], SocketAddr)>,
}

/// One account's placement as this node sees it, for `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountPlacement {
    /// The placement (`replicas=N`, `nodes=…`).
    pub placement: String,
    /// Nodes that hold the account (this one included), by node id.
    pub holders: Vec<String>,
    /// Nodes that should.
    pub target: Vec<String>,
}

/// What one round decided for one account.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Nodes this node (the coordinator) adds.
    pub add: BTreeSet<NodeId>,
    /// Pinned peers synced the account with, live, that no longer advertise
    /// it and are not in the target: they let go of it.
    pub gone: BTreeSet<NodeId>,
    /// This node holds the account but is not in the target.
    pub surplus: bool,
    pub view: AccountPlacement,
}

/// The membership as one round sees it.
pub struct View {
    pub me: NodeId,
    /// Live members: their accounts.
    pub live: BTreeMap<NodeId, Vec<String>>,
    /// Members declared down: since when, their accounts.
    pub down: BTreeMap<NodeId, (Instant, Vec<String>)>,
    /// Nodes this node is pinned to (the only ones it can add), with the
    /// accounts synced with each.
    pub pinned: BTreeMap<NodeId, Vec<String>>,
    pub now: Instant,
    pub replace_after: Duration,
}

/// Decides one account's round (a pure function of the view).
pub fn decide(view: &View, account: &str, placement: &Placement) -> Decision {
    let live_holders: BTreeSet<NodeId> =
        view.live.iter().filter(|(_, a)| a.iter().any(|x| x == account)).map(|(id, _)| *id).chain([view.me]).collect();
    let mut holders = live_holders.clone();
    holders.extend(
        view.down
            .iter()
            .filter(|(_, (since, a))| {
                view.now.saturating_duration_since(*since) < view.replace_after && a.iter().any(|x| x == account)
            })
            .map(|(id, _)| *id),
    );
    let candidates: BTreeSet<NodeId> =
        view.live.keys().filter(|id| view.pinned.contains_key(id)).copied().chain([view.me]).collect();
    let target = placement.target(account, &holders, &candidates);
    let coordinator = live_holders.iter().next() == Some(&view.me);
    let add = if coordinator {
        target.iter().filter(|id| !holders.contains(id) && view.pinned.contains_key(id)).copied().collect()
    } else {
        BTreeSet::new()
    };
    let gone = view
        .pinned
        .iter()
        .filter(|(_, a)| a.iter().any(|x| x == account))
        .map(|(id, _)| *id)
        .filter(|id| !target.contains(id) && view.live.get(id).is_some_and(|a| !a.iter().any(|x| x == account)))
        .collect();
    let show = |s: &BTreeSet<NodeId>| s.iter().map(|i| i.to_string()).collect();
    Decision {
        add,
        gone,
        surplus: !target.contains(&view.me),
        view: AccountPlacement { placement: placement.encode(), holders: show(&holders), target: show(&target) },
    }
}

/// Whether every node of the target holds the account now (live and
/// advertising it): a surplus node may then leave.
pub fn target_holds(view: &View, account: &str, d: &Decision) -> bool {
    d.view
        .target
        .iter()
        .all(|t| NodeId::parse(t).is_ok_and(|id| view.live.get(&id).is_some_and(|a| a.iter().any(|x| x == account))))
}

/// Works placement out every [`PLACEMENT_EVERY`] and acts on it (see the
/// module doc). Runs only with gossip on: placement needs the membership.
pub fn keep(node: &Node, cluster: Cluster, replace_after: Duration) {
    let node = node.clone();
    node.tasks.clone().spawn(async move {
        loop {
            tokio::time::sleep(PLACEMENT_EVERY).await;
            round(&node, &cluster, replace_after);
        }
    });
}

/// One round over the accounts held here that have a placement.
fn round(node: &Node, cluster: &Cluster, replace_after: Duration) {
    let view = View {
        me: node.me,
        live: cluster.live(),
        down: cluster.down_since(),
        pinned: node.book.list().iter().map(|p| (p.id, p.accounts.clone())).collect(),
        now: Instant::now(),
        replace_after,
    };
    let mut shown = BTreeMap::new();
    for account in held(&node.store) {
        let Some(placement) = node.store.placement(&account).ok().flatten() else { continue };
        let placement = match Placement::parse(&placement) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(account = account.as_str(), "placement not understood here: {e}");
                continue;
            }
        };
        let d = decide(&view, &account, &placement);
        for id in &d.add {
            place(node, &account, *id);
        }
        for id in &d.gone {
            match node.book.drop_account(&account, Some(id)) {
                Ok(changed) if !changed.is_empty() => {
                    tracing::info!(peer = %id, account = account.as_str(), "the peer let go of the account");
                    node.hub.disconnect(id, "placement");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(peer = %id, "dropping the account from its line: {e}"),
            }
        }
        if d.surplus && target_holds(&view, &account, &d) {
            leave(node, &account);
        }
        shown.insert(account, d.view);
    }
    cluster.set_placements(shown);
}

/// Pins a pinned peer for one more account (a session restarts with it).
fn extend(node: &Node, id: NodeId, account: &str, why: &str) {
    let Some(p) = node.book.get(&id) else { return };
    let more = Peer { id, addr: p.addr, accounts: vec![account.to_string()], policy: BodyPolicy::full() };
    match node.pin_merged(more) {
        Ok(_) => tracing::info!(peer = %id, account, "syncing the account with {why}"),
        Err(e) => tracing::warn!(peer = %id, account, "pinning for the account: {e}"),
    }
}

/// As the coordinator: adds `id` to the account's replicas.
fn place(node: &Node, account: &str, id: NodeId) {
    if node.book.get(&id).is_some_and(|p| !p.accounts.iter().any(|a| a == account)) {
        extend(node, id, account, "the node placed there");
    }
    // Every peer this node syncs the account with, nodes added this round
    // before `id` included (they are pinned for it already): nodes placed
    // together learn each other.
    let holders: Vec<([u8; 32], SocketAddr)> = node
        .book
        .list()
        .iter()
        .filter(|p| p.id != id && p.accounts.iter().any(|a| a == account))
        .take(PLACE_HOLDERS_MAX)
        .map(|p| (p.id.0, p.addr))
        .collect();
    let Some(added) = node.book.get(&id) else { return };
    // The holders hear of the new node from a peer they sync the account
    // with (this one).
    let notice = PlaceMessage { account: account.to_string(), holders: vec![(id.0, added.addr)] };
    for (h, _) in &holders {
        crate::cluster::send_placed(node, NodeId(*h), &notice);
    }
    crate::cluster::send_place(node, id, &PlaceMessage { account: account.to_string(), holders });
}

/// `from` placed `msg.holders` (one node) on `msg.account`, which this node
/// holds: pinned for it if `from` syncs the account with this node (its
/// word counts only for accounts it is trusted with).
pub fn placed_elsewhere(node: &Node, from: NodeId, msg: PlaceMessage) {
    let trusted = node.book.get(&from).is_some_and(|p| p.accounts.contains(&msg.account));
    if !trusted || !held(&node.store).contains(&msg.account) {
        return;
    }
    pin_named(node, from, msg, "a node placed by a holder");
}

/// Pins the nodes `msg` names for its account, on the word of `from`: a
/// pinned one synced it too, a new one pinned for it (at most
/// [`PLACE_HOLDERS_MAX`]).
fn pin_named(node: &Node, from: NodeId, msg: PlaceMessage, why: &str) {
    for (id, addr) in msg.holders.into_iter().take(PLACE_HOLDERS_MAX) {
        let id = NodeId(id);
        if id == node.me || id == from || node.book.is_revoked(&id) {
            continue;
        }
        match node.book.get(&id) {
            Some(p) if p.accounts.contains(&msg.account) => {}
            Some(_) => extend(node, id, &msg.account, why),
            None => {
                let peer = Peer { id, addr, accounts: vec![msg.account.clone()], policy: BodyPolicy::full() };
                if let Err(e) = node.pin_introduced(peer) {
                    tracing::warn!(peer = %id, "pinning {why}: {e}");
                }
            }
        }
    }
}

/// `from` (a pinned peer) places `msg.account` here: pinned for it with
/// `from` and the holders it names (made here, it fills from them).
pub fn placed(node: &Node, from: NodeId, msg: PlaceMessage) {
    if let Err(e) = crate::invite::check_account(&msg.account) {
        tracing::warn!(peer = %from, "a placement for a bad account name: {e}");
        return;
    }
    if node.store.is_deleted(&msg.account).unwrap_or(true) {
        return;
    }
    let fresh = !held(&node.store).contains(&msg.account);
    if node.book.get(&from).is_some_and(|p| !p.accounts.contains(&msg.account)) {
        extend(node, from, &msg.account, "the node that placed it here");
    }
    let account = msg.account.clone();
    pin_named(node, from, msg, "a holder named by the placing node");
    if fresh && held(&node.store).contains(&account) {
        tracing::info!(account = account.as_str(), by = %from, "account placed here");
        println!("account {account} placed here by {from}");
    }
}

/// This node is surplus for `account` and the target holds it: forgets its
/// copy if nothing would be lost (else tries again next round).
fn leave(node: &Node, account: &str) {
    match node.forget(account, false) {
        Ok(done) => {
            tracing::info!(account, "account moved off this node: {}", crate::forget::describe(account, &done));
            println!("account {account} left this node (placement)");
        }
        Err(e) => {
            // Once per reason (it is tried every round).
            static SAID: std::sync::Mutex<BTreeMap<String, String>> = std::sync::Mutex::new(BTreeMap::new());
            let mut said = SAID.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if said.get(account) != Some(&e) {
                tracing::info!(account, "surplus here by placement, not letting go yet: {e}");
                said.insert(account.to_string(), e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    fn view(me: u8, live: &[(u8, &[&str])], pinned: &[u8]) -> View {
        View {
            me: id(me),
            live: live.iter().map(|(n, a)| (id(*n), a.iter().map(|s| s.to_string()).collect())).collect(),
            down: BTreeMap::new(),
            pinned: pinned.iter().map(|n| (id(*n), vec!["alice".to_string()])).collect(),
            now: Instant::now(),
            replace_after: Duration::from_secs(600),
        }
    }

    #[test]
    fn placements_parse_and_print_back_and_bad_ones_are_refused() {
        for p in ["replicas=3", &format!("nodes={},{}", id(1), id(2))] {
            assert_eq!(Placement::parse(p).unwrap().encode(), p);
        }
        for bad in ["replicas=0", "replicas=65", "replicas=x", "nodes=", "nodes=zz", "three", ""] {
            assert!(Placement::parse(bad).is_err(), "{bad:?} taken");
        }
    }

    #[test]
    fn replicas_keep_the_holders_and_add_the_best_ranked_nodes() {
        let all: BTreeSet<NodeId> = (1..=10).map(id).collect();
        let one: BTreeSet<NodeId> = [id(7)].into();
        let t = Placement::Replicas(3).target("alice", &one, &all);
        assert_eq!(t.len(), 3);
        assert!(t.contains(&id(7)), "the holder stays");
        // Deterministic, and another account spreads elsewhere (rendezvous).
        assert_eq!(t, Placement::Replicas(3).target("alice", &one, &all));
        let spread: BTreeSet<NodeId> =
            (0..20).flat_map(|i| Placement::Replicas(2).target(&format!("user{i}"), &BTreeSet::new(), &all)).collect();
        assert!(spread.len() >= 6, "20 accounts on {} nodes of 10", spread.len());
        // More holders than replicas: the same ones are surplus everywhere.
        let t = Placement::Replicas(2).target("alice", &all, &all);
        assert_eq!(t.len(), 2);
        assert!(t.is_subset(&all));
    }

    #[test]
    fn only_the_coordinator_adds_and_only_pinned_nodes() {
        // 1 and 3 hold alice; 2, 4 and 5 are live; 1 is pinned to 2 and 4.
        let live: &[(u8, &[&str])] = &[(2, &[]), (3, &["alice"]), (4, &[]), (5, &[])];
        let p = Placement::Replicas(3);
        let d = decide(&view(1, live, &[2, 3, 4]), "alice", &p);
        assert_eq!(d.add.len(), 1, "{d:?}");
        assert!(d.add.iter().all(|n| [id(2), id(4)].contains(n)), "{d:?}");
        assert!(!d.surplus);
        // 3 sees the same target but is not the coordinator.
        let live3: &[(u8, &[&str])] = &[(1, &["alice"]), (2, &[]), (4, &[]), (5, &[])];
        let d3 = decide(&view(3, live3, &[1]), "alice", &p);
        assert!(d3.add.is_empty());
    }

    #[test]
    fn a_down_holder_counts_until_the_replacement_delay() {
        let mut v = view(1, &[(2, &[]), (3, &[])], &[2, 3]);
        v.down.insert(id(9), (v.now, vec!["alice".into()]));
        let p = Placement::Replicas(2);
        assert!(decide(&v, "alice", &p).add.is_empty(), "9 is down for a moment only");
        v.now += Duration::from_secs(601);
        assert_eq!(decide(&v, "alice", &p).add.len(), 1, "9 is replaced");
    }

    #[test]
    fn a_node_off_the_list_is_surplus_and_leaves_only_once_the_list_holds_it() {
        let p = Placement::Nodes([id(2), id(3)].into());
        let v = view(1, &[(2, &["alice"]), (3, &[])], &[2, 3]);
        let d = decide(&v, "alice", &p);
        assert!(d.surplus);
        assert_eq!(d.add, [id(3)].into(), "1 holds it and is the coordinator: it places 3");
        assert!(!target_holds(&v, "alice", &d), "3 does not hold it yet");
        let v = view(1, &[(2, &["alice"]), (3, &["alice"])], &[2, 3]);
        let d = decide(&v, "alice", &p);
        assert!(d.surplus && target_holds(&v, "alice", &d));
    }
}
