//! Who this node syncs with, changed while it runs: `peer add`, `peer
//! remove` (a revocation), `invite` and `join` through the control socket,
//! and nodes that come to join with an invitation. Every change goes
//! through the [`PeerBook`] (files and the handshake's set in step), then
//! the node acts on it here: accounts made, a dialer started, a connection
//! closed.

use crate::control::Request;
use crate::invite::{unix_now, JoinAnswer, JoinRequest, Token, MESSAGE_MAX};
use crate::peers::{Peer, PeerBook};
use crate::serve::{session, Hub};
use crate::tasks::Tasks;
use starling_net::{NodeId, PeerConnection, PeerEndpoint};
use starling_store::Store;
use starling_sync::BodyPolicy;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the fan-out is worked out again.
const TOPOLOGY_EVERY: Duration = Duration::from_secs(2);

/// A session that lasted this long resets the dialer's backoff.
const SESSION_HELD: Duration = Duration::from_secs(10);

/// A join's request and answer each arrive within this.
const JOIN_DEADLINE: Duration = Duration::from_secs(10);

/// What acting on membership needs of the running node.
#[derive(Clone)]
pub struct Node {
    pub endpoint: Arc<PeerEndpoint>,
    pub store: Arc<Store>,
    pub(crate) hub: Hub,
    pub book: Arc<PeerBook>,
    pub me: NodeId,
    pub tasks: Tasks,
    /// Peers a dialer runs for (one each).
    dialing: Arc<Mutex<BTreeSet<NodeId>>>,
    /// Sessions per node at most (`[cluster] fanout`; 0: every pinned peer).
    fanout: usize,
    /// The peers this node holds sync sessions with now (its fan-out,
    /// recomputed by [`Node::keep_topology`]); the others get a connection
    /// for gossip only.
    chosen: Arc<std::sync::RwLock<BTreeSet<NodeId>>>,
}

/// The accounts this node holds and has not deleted.
pub fn held(store: &Store) -> Vec<String> {
    store.accounts().into_iter().filter(|a| store.is_deleted(a).ok() == Some(false)).collect()
}

/// Makes the accounts `peer` syncs that this node lacks: they fill from the
/// peers (their incarnation and password come with them).
pub fn accounts_for(store: &Store, peer: &Peer) -> Result<(), String> {
    for a in &peer.accounts {
        if !store.accounts().contains(a) {
            // A peer still naming an account deleted and purged here is
            // told so when it connects; the name is not made again.
            if store.was_purged(a).map_err(|e| format!("account {a}: {e}"))? {
                tracing::info!(account = a.as_str(), "not made here: deleted and purged");
                continue;
            }
            store.add_account(a).map_err(|e| format!("account {a}: {e}"))?;
            tracing::info!(account = a.as_str(), "account created here: a pinned peer syncs it");
        }
    }
    Ok(())
}

impl Node {
    pub(crate) fn new(
        endpoint: Arc<PeerEndpoint>,
        store: Arc<Store>,
        hub: Hub,
        book: Arc<PeerBook>,
        me: NodeId,
        tasks: Tasks,
        fanout: usize,
    ) -> Node {
        let node =
            Node { endpoint, store, hub, book, me, tasks, dialing: Arc::default(), fanout, chosen: Arc::default() };
        node.choose();
        node
    }

    /// The peers whose acknowledgements housekeeping waits for: every
    /// pinned peer with a full mesh; with a fan-out, the neighbours only.
    /// Every op and body then stays with some neighbour of each node that
    /// lacks it (each neighbour waits for its own neighbours), and a node
    /// whose neighbours changed and compacted past it catches up by
    /// snapshot. Waiting for every pinned peer would never compact: the
    /// others never acknowledge anything to this node.
    pub fn housekeeping_peers(&self) -> Vec<Peer> {
        let all = self.book.list();
        all.iter().filter(|p| self.wants_session(&p.id)).cloned().collect()
    }

    /// Whether this node wants a sync session with `id` now.
    pub fn wants_session(&self, id: &NodeId) -> bool {
        self.fanout == 0 || self.chosen.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(id)
    }

    /// Works out the fan-out: for each account held here, its replicas
    /// (this node and the pinned peers of the account the cluster has not
    /// declared down) in node-id order on a ring, and this node's
    /// neighbours on it ([`starling_gossip::topology`]); the union over
    /// the accounts. Every node of an account computes the same ring from
    /// the same membership, so both ends of a link agree.
    fn choose(&self) {
        if self.fanout == 0 {
            return;
        }
        let down = self.hub.cluster.get().map(|c| c.down()).unwrap_or_default();
        let peers = self.book.list();
        let mut chosen = BTreeSet::new();
        let mut accounts = held(&self.store);
        // An account deleted and purged here that a pinned peer still
        // lists: that peer is told in a session (`Deleted`), so it needs one.
        for p in peers.iter() {
            for a in &p.accounts {
                if !accounts.contains(a) && self.store.was_purged(a).unwrap_or(false) {
                    accounts.push(a.clone());
                }
            }
        }
        for account in accounts {
            let mut ring: Vec<NodeId> =
                peers.iter().filter(|p| p.accounts.contains(&account) && !down.contains(&p.id)).map(|p| p.id).collect();
            ring.push(self.me);
            ring.sort();
            ring.dedup();
            let me = ring.binary_search(&self.me).expect("this node is on its ring");
            chosen.extend(starling_gossip::topology::neighbours(self.fanout, ring.len(), me).map(|i| ring[i]));
        }
        *self.chosen.write().unwrap_or_else(std::sync::PoisonError::into_inner) = chosen;
    }

    /// Keeps the fan-out up to date (membership changes, peers pinned and
    /// removed): every [`TOPOLOGY_EVERY`], recomputes it and ends the
    /// sessions this node dialed that it no longer wants (their
    /// connections come back for gossip only). Sessions the other end
    /// dialed are its to end.
    pub fn keep_topology(&self) {
        if self.fanout == 0 {
            return;
        }
        let node = self.clone();
        self.tasks.spawn(async move {
            loop {
                tokio::time::sleep(TOPOLOGY_EVERY).await;
                node.choose();
                let sessions: Vec<NodeId> = node.hub.sessions();
                for id in sessions {
                    if id < node.me && !node.wants_session(&id) {
                        tracing::info!(peer = %id, "no longer a neighbour: session ended, gossip goes on");
                        node.hub.disconnect(&id, "fan-out");
                    }
                }
            }
        });
    }

    /// Dials `id` forever, with backoff, while it stays pinned, if this node
    /// is the one that dials it (the larger id dials, so a pair holds one
    /// connection). At most one dialer per peer.
    pub fn dial(&self, id: NodeId) {
        if id >= self.me {
            return;
        }
        if !self.dialing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id) {
            return;
        }
        let node = self.clone();
        self.tasks.spawn(async move {
            let mut backoff = Duration::from_millis(100);
            while let Some(peer) = node.book.get(&id) {
                match node.endpoint.connect(peer.addr, peer.id).await {
                    Ok(conn) => {
                        let started = std::time::Instant::now();
                        let _attached = node.hub.attach(&conn.connection, &peer);
                        // Gossip only until this node wants a session with
                        // the peer (its fan-out), then the session on the
                        // same connection.
                        while !node.wants_session(&id) && conn.connection.close_reason().is_none() {
                            tokio::time::sleep(TOPOLOGY_EVERY).await;
                        }
                        let end = match conn.connection.close_reason() {
                            Some(why) => why.to_string(),
                            None => {
                                session(conn, true, node.me.replica(), &peer, node.store.clone(), node.hub.clone())
                                    .await
                            }
                        };
                        tracing::info!(peer = %peer.id, "session ended: {end}");
                        // A session that ended at once (the peer removed
                        // this node and closes every connection) backs off
                        // like a failed dial rather than redialing at once.
                        if started.elapsed() >= SESSION_HELD {
                            backoff = Duration::from_millis(100);
                        }
                    }
                    Err(e) => tracing::warn!(peer = %peer.id, "connect: {e}"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            node.dialing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&id);
            tracing::info!(peer = %id, "no longer pinned: not dialing it");
        });
    }

    /// Pins `peer` and acts on it: its accounts made here, a dialer started,
    /// a session with other accounts restarted.
    fn pin(&self, peer: Peer, merge: bool) -> Result<Peer, String> {
        let before = self.book.get(&peer.id);
        if before.is_some() && !merge {
            return Err(format!("peer {} is already pinned", peer.id));
        }
        // The accounts first: the peer may connect as soon as it is pinned,
        // and a session starts with the accounts held then.
        accounts_for(&self.store, &peer)?;
        if let Some(c) = self.hub.cluster.get() {
            c.tell(crate::cluster::Input::Accounts(held(&self.store)));
        }
        let now = self.book.pin(peer, merge)?;
        // Into the fan-out at once, not at the next recount: a node that
        // just joined (or was introduced) would wait for its session.
        self.choose();
        if before.is_some_and(|b| b.accounts != now.accounts || b.addr != now.addr) {
            self.hub.disconnect(&now.id, "pinned again");
        }
        self.dial(now.id);
        Ok(now)
    }

    /// Forgets this node's copy of `account` if nothing would be lost (or
    /// anyway with `force`, see [`crate::forget`]), then lets go of it.
    pub(crate) fn forget(&self, account: &str, force: bool) -> Result<starling_store::Forgot, String> {
        let pinned = crate::forget::pinned_for(&self.book.list(), account);
        let done = crate::forget::forget_if_safe(&self.store, account, &pinned, force)?;
        self.let_go(account);
        Ok(done)
    }

    /// This node no longer holds `account` (forgotten by hand, purged as
    /// deleted, or let go by placement): no peer syncs it with this node
    /// any more — in the peers file too, so a restart does not make it
    /// again — the sessions that synced it restart without it, and gossip
    /// advertises the accounts left.
    pub(crate) fn let_go(&self, account: &str) {
        match self.book.drop_account(account, None) {
            Ok(changed) => {
                for id in changed {
                    self.hub.disconnect(&id, "account let go");
                }
            }
            Err(e) => tracing::warn!(account, "dropping the account from the peers file: {e}"),
        }
        self.choose();
        if let Some(c) = self.hub.cluster.get() {
            c.tell(crate::cluster::Input::Accounts(held(&self.store)));
        }
    }

    /// Pins a pinned peer for more accounts (see [`crate::placement`]); a
    /// session with it restarts with them.
    pub(crate) fn pin_merged(&self, peer: Peer) -> Result<Peer, String> {
        self.pin(peer, true)
    }

    /// Pins a node a peer introduced (see [`crate::cluster`]).
    pub(crate) fn pin_introduced(&self, peer: Peer) -> Result<Peer, String> {
        self.pin(peer, false)
    }

    /// `id` was removed here (`peer remove`, or a peer's news of it): out of
    /// the fan-out, its connection closed, and every peer told.
    pub(crate) fn removed(&self, id: NodeId) {
        self.choose();
        self.hub.disconnect(&id, "removed");
        if let Some(c) = self.hub.cluster.get() {
            c.tell(crate::cluster::Input::Removed(id));
        }
    }

    /// Answers a membership request of the control socket.
    pub async fn answer(&self, req: Request) -> Result<String, String> {
        match req {
            Request::PeerAdd { line } => {
                let peer = crate::peers::parse_line(1, &line)?;
                let p = self.pin(peer, false)?;
                Ok(format!("peer {} pinned", p.id))
            }
            Request::PeerRemove { node_id } => {
                let id = NodeId::parse(&node_id).map_err(|e| e.to_string())?;
                self.book.revoke(&id)?;
                self.removed(id);
                Ok(format!("peer {id} removed and refused from now on"))
            }
            Request::Invite { accounts, ttl_secs, addrs } => {
                let addrs =
                    if addrs.is_empty() { vec![self.endpoint.local_addr().map_err(|e| e.to_string())?] } else { addrs };
                invite(&self.store, &self.book, self.me, accounts, ttl_secs, addrs)
            }
            Request::Join { token } => self.join(&token).await,
            other => Err(format!("not a membership request: {other:?}")),
        }
    }

    /// Joins the node that made `token`: presents its secret, then pins it
    /// for the accounts it answers with.
    async fn join(&self, token: &str) -> Result<String, String> {
        let t = Token::parse(token)?;
        let host = t.node_id();
        if host == self.me {
            return Err("this invitation was made by this node".into());
        }
        if t.expires <= unix_now() {
            return Err("the invitation expired".into());
        }
        let mut tried = Vec::new();
        for addr in &t.addrs {
            match self.ask_to_join(*addr, host, &t.secret).await {
                Ok(accounts) => {
                    let peer = Peer { id: host, addr: *addr, accounts, policy: BodyPolicy::full() };
                    let p = self.pin(peer, true)?;
                    return Ok(format!("joined {} at {addr}; syncing {}", p.id, p.accounts.join(",")));
                }
                Err(e) => tried.push(format!("{addr}: {e}")),
            }
        }
        Err(format!("join refused or failed: {}", tried.join("; ")))
    }

    async fn ask_to_join(&self, addr: SocketAddr, host: NodeId, secret: &[u8; 16]) -> Result<Vec<String>, String> {
        let conn = self.endpoint.connect_to_join(addr, host).await.map_err(|e| e.to_string())?;
        let exchange = async {
            let (mut send, mut recv) = conn.connection.open_bi().await.map_err(|e| e.to_string())?;
            let req = serde_json::to_vec(&JoinRequest { secret: *secret }).expect("a request encodes");
            send.write_all(&req).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            let bytes = recv.read_to_end(MESSAGE_MAX).await.map_err(|e| e.to_string())?;
            serde_json::from_slice::<JoinAnswer>(&bytes).map_err(|e| format!("bad answer: {e}"))
        };
        let answer = tokio::time::timeout(JOIN_DEADLINE, exchange).await;
        conn.connection.close(0u32.into(), b"joined");
        // A node with no open invitation takes no unknown node's connection:
        // it drops it as soon as the handshake shows who came.
        let answer = answer.map_err(|_| "no answer in time".to_string())?.map_err(|e| {
            format!(
                "the node dropped the connection ({e}): it has no open invitation (this one was used, \
                 expired or withdrawn), or it removed this node"
            )
        })?;
        if let Some(why) = answer.refused {
            return Err(format!("refused: {why}"));
        }
        if answer.accounts.is_empty() {
            return Err("the answer names no account".into());
        }
        for a in &answer.accounts {
            crate::invite::check_account(a)?;
        }
        Ok(answer.accounts)
    }
}

/// Opens an invitation and returns its token (running node and stopped
/// node alike). `accounts` empty: every account held here.
pub fn invite(
    store: &Store,
    book: &PeerBook,
    me: NodeId,
    accounts: Vec<String>,
    ttl_secs: u64,
    addrs: Vec<SocketAddr>,
) -> Result<String, String> {
    if let Some(a) = addrs.iter().find(|a| a.ip().is_unspecified() || a.port() == 0) {
        return Err(format!(
            "the peer endpoint is {a}: give the address other nodes reach it at with --address IP:PORT"
        ));
    }
    let held = held(store);
    let accounts = if accounts.is_empty() {
        held
    } else {
        for a in &accounts {
            if !held.contains(a) {
                return Err(format!("no account {a:?} here"));
            }
        }
        accounts
    };
    if accounts.is_empty() {
        return Err("this node holds no account to invite to".into());
    }
    let (secret, expires) = book.invite(&accounts, ttl_secs)?;
    Ok(Token { node: me.0, addrs, secret, expires, accounts }.encode())
}

/// Answers a node that came to join: takes its invitation's secret, pins it
/// at the address it came from, and tells it the accounts.
pub async fn welcome(node: &Node, conn: PeerConnection) {
    let stranger = conn.peer;
    let from = conn.connection.remote_address();
    let exchange = async {
        let (mut send, mut recv) = conn.connection.accept_bi().await.map_err(|e| e.to_string())?;
        let bytes = recv.read_to_end(MESSAGE_MAX).await.map_err(|e| e.to_string())?;
        let req: JoinRequest = serde_json::from_slice(&bytes).map_err(|e| format!("bad join request: {e}"))?;
        let answer = match node.book.redeem(&stranger, &req.secret) {
            Err(refusal) => {
                tracing::warn!(node = %stranger, %from, "join refused: {refusal}");
                JoinAnswer { refused: Some(refusal.to_string()), ..Default::default() }
            }
            Ok(accounts) => {
                let peer = Peer { id: stranger, addr: from, accounts, policy: BodyPolicy::full() };
                match node.pin(peer, true) {
                    Ok(p) => {
                        tracing::info!(node = %stranger, %from, "joined with an invitation: {}", p.accounts.join(","));
                        println!("peer {} joined from {from}: {}", p.id, p.accounts.join(","));
                        JoinAnswer { refused: None, accounts: p.accounts }
                    }
                    Err(e) => JoinAnswer { refused: Some(e), ..Default::default() },
                }
            }
        };
        let out = serde_json::to_vec(&answer).expect("an answer encodes");
        send.write_all(&out).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        // The joining node closes once it has the answer.
        let _ = conn.connection.closed().await;
        Ok::<(), String>(())
    };
    match tokio::time::timeout(JOIN_DEADLINE, exchange).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::info!(node = %stranger, %from, "join: {e}"),
        Err(_) => tracing::info!(node = %stranger, %from, "join: no request in time"),
    }
    conn.connection.close(0u32.into(), b"done");
}
