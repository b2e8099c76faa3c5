//! Gossip membership in the running node: one task drives the sans-IO
//! [`Gossip`] (as the simulator does) with QUIC datagrams on the peer
//! connections, its timers, and announces to each peer when a session
//! starts. A node that a pinned peer introduces is pinned too — for the
//! accounts that peer syncs with this node and the new node holds, never
//! more (a peer trusted for alice cannot bring in a node for bob) — unless
//! `[cluster] accept_introduced = false`; a removed node never is.

use crate::membership::Node;
use crate::peers::Peer;
use starling_gossip::{Event, Gossip, Member, Settings};
use starling_net::NodeId;
use starling_sync::BodyPolicy;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;

/// Gossip datagrams and announces waiting for the driver at most; past it
/// they are dropped (gossip tolerates loss).
const INBOX: usize = 256;

/// What the sessions tell the driver.
pub enum Input {
    /// A datagram from a connected peer.
    Datagram(NodeId, bytes::Bytes),
    /// A session with this peer started: introduce ourselves.
    Connected(Peer),
    /// The accounts this node holds now (advertised anew if they changed).
    Accounts(Vec<String>),
}

/// The membership as last seen, for `status`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct MemberStatus {
    pub node_id: String,
    pub addr: String,
    pub accounts: Vec<String>,
}

/// The node's handle on its membership.
#[derive(Clone)]
pub struct Cluster {
    inbox: mpsc::Sender<Input>,
    members: Arc<Mutex<Vec<MemberStatus>>>,
}

impl Cluster {
    /// Hands an input to the driver (dropped if it is behind).
    pub fn tell(&self, input: Input) {
        let _ = self.inbox.try_send(input);
    }

    /// The live members as last seen.
    pub fn members(&self) -> Vec<MemberStatus> {
        self.members.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// A cluster that gossips nothing (`[cluster] gossip = false`).
    pub fn off() -> Cluster {
        Cluster { inbox: mpsc::channel(1).0, members: Arc::default() }
    }
}

fn member_of(p: &Peer) -> Member {
    // The generation does not matter for an announce: it is taken by any
    // generation of that node.
    Member::new(p.id.0, p.addr, p.accounts.clone(), 0)
}

/// Starts the driver: `me` advertised, `accept` whether introduced nodes
/// are pinned.
pub fn start(node: &Node, me: Member, accept: bool) -> Cluster {
    let (inbox, mut rx) = mpsc::channel::<Input>(INBOX);
    let members: Arc<Mutex<Vec<MemberStatus>>> = Arc::default();
    let cluster = Cluster { inbox, members: members.clone() };
    let node = node.clone();
    let settings = Settings::default();
    let seed = u64::from_le_bytes(me.node[..8].try_into().expect("8 bytes")) ^ me.generation;
    node.tasks.clone().spawn(async move {
        let mut g = Gossip::new(me, &settings, seed, Instant::now());
        loop {
            let due = g.poll_timeout().map(tokio::time::Instant::from_std);
            let mut from = None;
            tokio::select! {
                _ = tokio::time::sleep_until(due.unwrap_or_else(|| tokio::time::Instant::now() + std::time::Duration::from_secs(1))) => {
                    g.handle_timeout(Instant::now());
                }
                input = rx.recv() => match input {
                    None => break,
                    Some(Input::Datagram(peer, bytes)) => {
                        if let Err(e) = g.handle_datagram(&bytes, Instant::now()) {
                            tracing::debug!(peer = %peer, "gossip: {e}");
                        }
                        from = Some(peer);
                    }
                    Some(Input::Connected(peer)) => g.announce(member_of(&peer), Instant::now()),
                    Some(Input::Accounts(accounts)) => {
                        let me = g.me().clone();
                        if Member::new(me.node, me.addr, accounts.clone(), 0).accounts != me.accounts {
                            g.change(accounts, me.addr, Instant::now());
                        }
                    }
                },
            }
            send(&node, &mut g);
            let mut changed = false;
            while let Some(e) = g.poll_event() {
                changed = true;
                match e {
                    Event::Up(m) => {
                        if let (Some(p), true) = (from, accept) {
                            introduced(&node, &m, p);
                        }
                    }
                    Event::Down(m) => tracing::info!(node = %NodeId(m.node), "gossip: member down"),
                    _ => {}
                }
            }
            if changed {
                let mut list: Vec<MemberStatus> = g
                    .members()
                    .map(|m| MemberStatus {
                        node_id: NodeId(m.node).to_string(),
                        addr: m.addr.to_string(),
                        accounts: m.accounts.clone(),
                    })
                    .collect();
                list.sort_by(|a, b| a.node_id.cmp(&b.node_id));
                *members.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = list;
            }
        }
    });
    cluster
}

/// Sends what the gossip wants sent, on the connection to each member; a
/// member with no connection now misses it (as a lost datagram).
fn send(node: &Node, g: &mut Gossip) {
    while let Some((to, bytes)) = g.poll_transmit() {
        let conn = node.hub.connection(&NodeId(to.node));
        if let Some(c) = conn {
            if c.max_datagram_size().is_some_and(|max| bytes.len() <= max) {
                let _ = c.send_datagram(bytes.into());
            }
        }
    }
}

/// A member that came up in what `peer` sent: pinned if new here, for the
/// accounts `peer` syncs with this node and the member holds.
fn introduced(node: &Node, m: &Member, peer: NodeId) {
    let id = NodeId(m.node);
    if id == node.me || node.book.get(&id).is_some() || node.book.is_revoked(&id) {
        return;
    }
    let Some(introducer) = node.book.get(&peer) else { return };
    let accounts: Vec<String> = m.accounts.iter().filter(|a| introducer.accounts.contains(a)).cloned().collect();
    if accounts.is_empty() || m.addr.ip().is_unspecified() {
        return;
    }
    let new = Peer { id, addr: m.addr, accounts, policy: BodyPolicy::full() };
    match node.pin_introduced(new) {
        Ok(p) => {
            tracing::info!(node = %id, introducer = %peer, "pinned a node a peer introduced: {}", p.accounts.join(","));
            println!("peer {id} introduced by {peer}: {}", p.accounts.join(","));
        }
        Err(e) => tracing::warn!(node = %id, "pinning an introduced node: {e}"),
    }
}
