//! Gossip membership in the running node: one task drives the sans-IO
//! [`Gossip`] (as the simulator does) with QUIC datagrams on the peer
//! connections, its timers, and announces to each peer when a session
//! starts. A node that a pinned peer introduces is pinned too — for the
//! accounts that peer syncs with this node and the new node holds, never
//! more (a peer trusted for alice cannot bring in a node for bob) — unless
//! `[cluster] accept_introduced = false`; a removed node never is.

use crate::membership::Node;
use crate::peers::Peer;
use crate::placement::{AccountPlacement, PlaceMessage};
use starling_gossip::{Event, Gossip, Member, Settings};
use starling_net::NodeId;
use starling_sync::BodyPolicy;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;

/// Gossip datagrams and announces waiting for the driver at most; past it
/// they are dropped (gossip tolerates loss).
const INBOX: usize = 256;
/// First byte of a datagram: membership (foca's bytes follow), or a
/// removal (a node id follows).
const TAG_GOSSIP: u8 = 0;
const TAG_REMOVED: u8 = 1;
/// An account placed on the receiver (postcard of a
/// [`crate::placement::PlaceMessage`] follows).
const TAG_PLACE: u8 = 2;
/// The sender's links (postcard of a `Vec<LinkBrief>` follows).
const TAG_LINKS: u8 = 3;
/// The sender placed a node on an account the receiver holds (postcard of
/// a [`crate::placement::PlaceMessage`] naming it follows).
const TAG_PLACED: u8 = 4;
/// How often a node tells its peers its links.
const LINKS_EVERY: std::time::Duration = std::time::Duration::from_secs(3);
/// Links told per report at most (those with a session first): one
/// datagram holds them.
pub const LINKS_TOLD_MAX: usize = 16;
/// A peer's report is shown this long after it arrived, at most.
const LINKS_SHOWN_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// One of a node's links, as it tells its peers (for their status pages).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinkBrief {
    /// The node at the other end.
    pub peer: String,
    /// A sync session runs over it now.
    pub up: bool,
    /// Ops of the shared accounts the peer lacks and the reporter lacks
    /// (none: not known yet).
    pub peer_lacks: Option<u64>,
    pub lacks: Option<u64>,
    /// Protocol bytes sent each way since the reporter started.
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// The wire form of a [`LinkBrief`] (the node id as bytes).
#[derive(serde::Serialize, serde::Deserialize)]
struct WireBrief {
    peer: [u8; 32],
    up: bool,
    peer_lacks: Option<u64>,
    lacks: Option<u64>,
    bytes_out: u64,
    bytes_in: u64,
}

/// Peers' links as they last reported them.
type Reports = BTreeMap<NodeId, (Instant, Vec<LinkBrief>)>;
/// Removals sent to a peer when its session starts, at most.
const REMOVALS_SENT: usize = 256;

/// What the sessions tell the driver.
pub enum Input {
    /// A datagram from a connected peer.
    Datagram(NodeId, bytes::Bytes),
    /// A session with this peer started: introduce ourselves.
    Connected(Peer),
    /// The accounts this node holds now (advertised anew if they changed).
    Accounts(Vec<String>),
    /// This node removed a node (`peer remove`): tell every peer.
    Removed(NodeId),
}

/// The membership as last seen, for `status`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct MemberStatus {
    pub node_id: String,
    pub addr: String,
    pub accounts: Vec<String>,
}

/// Members the cluster declared down: since when, and their accounts.
type Down = BTreeMap<NodeId, (Instant, Vec<String>)>;

/// The node's handle on its membership.
#[derive(Clone)]
pub struct Cluster {
    inbox: mpsc::Sender<Input>,
    members: Arc<Mutex<Vec<MemberStatus>>>,
    /// Members the cluster declared down (and not seen up since).
    down: Arc<Mutex<Down>>,
    /// The placement of each account that has one, as last worked out.
    placements: Arc<Mutex<BTreeMap<String, AccountPlacement>>>,
    /// Links of the peers, as they last reported them (one entry per
    /// pinned peer at most).
    reports: Arc<Mutex<Reports>>,
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

    /// Members the cluster declared down and not seen up since.
    pub fn down(&self) -> std::collections::BTreeSet<NodeId> {
        lock(&self.down).keys().copied().collect()
    }

    /// Members the cluster declared down: since when, and their accounts.
    pub fn down_since(&self) -> Down {
        lock(&self.down).clone()
    }

    /// The live members and the accounts each advertises.
    pub fn live(&self) -> BTreeMap<NodeId, Vec<String>> {
        lock(&self.members).iter().filter_map(|m| Some((NodeId::parse(&m.node_id).ok()?, m.accounts.clone()))).collect()
    }

    /// Each account's placement as last worked out (for `status`).
    pub fn placements(&self) -> BTreeMap<String, AccountPlacement> {
        lock(&self.placements).clone()
    }

    pub(crate) fn set_placements(&self, p: BTreeMap<String, AccountPlacement>) {
        *lock(&self.placements) = p;
    }

    /// A cluster that gossips nothing (`[cluster] gossip = false`).
    pub fn off() -> Cluster {
        Cluster {
            inbox: mpsc::channel(1).0,
            members: Arc::default(),
            down: Arc::default(),
            placements: Arc::default(),
            reports: Arc::default(),
        }
    }

    /// Peers' links reported within the last [`LINKS_SHOWN_FOR`].
    pub fn remote_links(&self) -> Vec<crate::control::RemoteLinks> {
        lock(&self.reports)
            .iter()
            .filter(|(_, (at, _))| at.elapsed() < LINKS_SHOWN_FOR)
            .map(|(id, (at, links))| crate::control::RemoteLinks {
                node_id: id.to_string(),
                age_secs: at.elapsed().as_secs(),
                links: links.clone(),
            })
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn member_of(p: &Peer) -> Member {
    // The generation does not matter for an announce: it is taken by any
    // generation of that node.
    Member::new(p.id.0, p.addr, p.accounts.clone(), 0)
}

/// What the driver accepts from pinned peers.
#[derive(Clone, Copy, Debug)]
pub struct Accept {
    /// Pin the nodes they introduce.
    pub introduced: bool,
    /// Take the accounts they place here.
    pub placed: bool,
}

/// Starts the driver: `me` advertised.
pub fn start(node: &Node, me: Member, accept: Accept) -> Cluster {
    let (inbox, mut rx) = mpsc::channel::<Input>(INBOX);
    let members: Arc<Mutex<Vec<MemberStatus>>> = Arc::default();
    let down: Arc<Mutex<Down>> = Arc::default();
    let reports: Arc<Mutex<Reports>> = Arc::default();
    let cluster = Cluster {
        inbox,
        members: members.clone(),
        down: down.clone(),
        placements: Arc::default(),
        reports: reports.clone(),
    };
    let node = node.clone();
    let settings = Settings::default();
    let seed = u64::from_le_bytes(me.node[..8].try_into().expect("8 bytes")) ^ me.generation;
    node.tasks.clone().spawn(async move {
        let mut g = Gossip::new(me, &settings, seed, Instant::now());
        let mut tell_links = tokio::time::interval(LINKS_EVERY);
        loop {
            let due = g.poll_timeout().map(tokio::time::Instant::from_std);
            let mut from = None;
            tokio::select! {
                _ = tokio::time::sleep_until(due.unwrap_or_else(|| tokio::time::Instant::now() + std::time::Duration::from_secs(1))) => {
                    g.handle_timeout(Instant::now());
                }
                _ = tell_links.tick() => send_links(&node),
                input = rx.recv() => match input {
                    None => break,
                    Some(Input::Datagram(peer, bytes)) => match bytes.split_first() {
                        Some((&TAG_GOSSIP, rest)) => {
                            if let Err(e) = g.handle_datagram(rest, Instant::now()) {
                                tracing::debug!(peer = %peer, "gossip: {e}");
                            }
                            from = Some(peer);
                        }
                        Some((&TAG_REMOVED, rest)) => {
                            if let Ok(id) = <[u8; 32]>::try_from(rest) {
                                removed_by(&node, NodeId(id), peer);
                            }
                        }
                        Some((&TAG_PLACE, rest)) if accept.placed => {
                            match postcard::from_bytes::<PlaceMessage>(rest) {
                                Ok(msg) => crate::placement::placed(&node, peer, msg),
                                Err(e) => tracing::debug!(peer = %peer, "placement: {e}"),
                            }
                        }
                        Some((&TAG_LINKS, rest)) => match postcard::from_bytes::<Vec<WireBrief>>(rest) {
                            Ok(links) if links.len() <= LINKS_TOLD_MAX && node.book.get(&peer).is_some() => {
                                let links = links
                                    .into_iter()
                                    .map(|w| LinkBrief {
                                        peer: NodeId(w.peer).to_string(),
                                        up: w.up,
                                        peer_lacks: w.peer_lacks,
                                        lacks: w.lacks,
                                        bytes_out: w.bytes_out,
                                        bytes_in: w.bytes_in,
                                    })
                                    .collect();
                                let mut r = lock(&reports);
                                // Pinned peers only (bounded by the peers bound); the
                                // reports of peers no longer pinned go.
                                r.retain(|id, _| node.book.get(id).is_some());
                                r.insert(peer, (Instant::now(), links));
                            }
                            Ok(_) => tracing::debug!(peer = %peer, "links: too many, or not pinned"),
                            Err(e) => tracing::debug!(peer = %peer, "links: {e}"),
                        },
                        Some((&TAG_PLACED, rest)) => match postcard::from_bytes::<PlaceMessage>(rest) {
                            Ok(msg) => crate::placement::placed_elsewhere(&node, peer, msg),
                            Err(e) => tracing::debug!(peer = %peer, "placed: {e}"),
                        },
                        Some((&TAG_PLACE, _)) => {
                            tracing::debug!(peer = %peer, "placement refused: [cluster] accept_placed = false")
                        }
                        _ => tracing::debug!(peer = %peer, "gossip: a datagram of no known kind"),
                    },
                    Some(Input::Connected(peer)) => {
                        g.announce(member_of(&peer), Instant::now());
                        if let Some(c) = node.hub.connection(&peer.id) {
                            for id in node.book.revoked(REMOVALS_SENT) {
                                let _ = c.send_datagram(removal(id));
                            }
                        }
                    }
                    Some(Input::Removed(id)) => tell_all(&node, id),
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
                        lock(&down).remove(&NodeId(m.node));
                        if let (Some(p), true) = (from, accept.introduced) {
                            introduced(&node, &m, p);
                        }
                    }
                    Event::Down(m) => {
                        tracing::info!(node = %NodeId(m.node), "gossip: member down");
                        lock(&down).insert(NodeId(m.node), (Instant::now(), m.accounts.clone()));
                    }
                    _ => {}
                }
            }
            if changed {
                let mut list: Vec<MemberStatus> = g
                    .members()
                    .take(starling_gossip::MEMBERS_MAX)
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
            let mut d = Vec::with_capacity(bytes.len() + 1);
            d.push(TAG_GOSSIP);
            d.extend_from_slice(&bytes);
            if c.max_datagram_size().is_some_and(|max| d.len() <= max) {
                let _ = c.send_datagram(d.into());
            }
        }
    }
}

/// Tells `to` to take an account (a datagram; the coordinator repeats it
/// each round until `to` advertises the account).
pub(crate) fn send_place(node: &Node, to: NodeId, msg: &PlaceMessage) {
    send_placement(node, to, TAG_PLACE, msg)
}

/// Tells a holder `to` of a node placed on the account (repeated as
/// [`send_place`] is).
pub(crate) fn send_placed(node: &Node, to: NodeId, msg: &PlaceMessage) {
    send_placement(node, to, TAG_PLACED, msg)
}

fn send_placement(node: &Node, to: NodeId, tag: u8, msg: &PlaceMessage) {
    let Some(c) = node.hub.connection(&to) else { return };
    let mut d = vec![tag];
    d.extend_from_slice(&postcard::to_allocvec(msg).expect("a placement encodes"));
    if c.max_datagram_size().is_some_and(|max| d.len() <= max) {
        let _ = c.send_datagram(d.into());
    } else {
        tracing::warn!(peer = %to, "a placement message of {} bytes does not fit a datagram", d.len());
    }
}

/// Tells every connected peer this node's links (a datagram each; lost
/// ones are told again in [`LINKS_EVERY`]).
fn send_links(node: &Node) {
    let links: Vec<WireBrief> = node
        .hub
        .link_briefs(&node.store, LINKS_TOLD_MAX)
        .into_iter()
        .map(|(id, b)| WireBrief {
            peer: id.0,
            up: b.up,
            peer_lacks: b.peer_lacks,
            lacks: b.lacks,
            bytes_out: b.bytes_out,
            bytes_in: b.bytes_in,
        })
        .collect();
    let mut d = vec![TAG_LINKS];
    d.extend_from_slice(&postcard::to_allocvec(&links).expect("links encode"));
    for p in node.book.list().iter() {
        if let Some(c) = node.hub.connection(&p.id) {
            if c.max_datagram_size().is_some_and(|max| d.len() <= max) {
                let _ = c.send_datagram(d.clone().into());
            }
        }
    }
}

fn removal(id: NodeId) -> bytes::Bytes {
    let mut d = Vec::with_capacity(33);
    d.push(TAG_REMOVED);
    d.extend_from_slice(&id.0);
    d.into()
}

/// Tells every connected peer that `id` was removed (a datagram each; a
/// peer that misses it hears it again when its next session starts).
fn tell_all(node: &Node, id: NodeId) {
    for p in node.book.list().iter() {
        if let Some(c) = node.hub.connection(&p.id) {
            let _ = c.send_datagram(removal(id));
        }
    }
}

/// `peer` says it removed `id`: this node stops syncing with `id` the
/// accounts `peer` syncs here (a peer trusted for alice can end alice's
/// sync with a node, not bob's); with no account left, `id` is removed
/// here too and the news goes on to this node's peers.
fn removed_by(node: &Node, id: NodeId, peer: NodeId) {
    if id == node.me || id == peer {
        return;
    }
    let Some(p) = node.book.get(&peer) else { return };
    match node.book.revoke_for(&id, &p.accounts) {
        Ok(true) => {
            tracing::info!(node = %id, by = %peer, "removed: a peer removed it");
            println!("peer {id} removed, as {peer} did");
            node.removed(id);
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(node = %id, "passing on a removal: {e}"),
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
