//! The status page: HTML served by the node (loopback by default) that shows
//! the cluster as this node sees it, updated live over server-sent events.
//!
//! Routes: `/` the page (one HTML file with its script and style, embedded in
//! the binary: no CDN, no other asset), `/status.json` the [`View`] now, and
//! `/events` a server-sent event stream of views, one every
//! [`PUSH_EVERY`] and one soon after a change (a link up or down, a commit).
//!
//! The view is built from what `starling status` shows ([`NodeStatus`]) and
//! from this node's [`LinkLog`]. Today a node knows only its own links, so
//! the graph is this node and its pinned peers; the JSON already has the
//! shape of a cluster graph (nodes, links between any two, who reported
//! each link), so links other nodes report can be added later.
//!
//! Bounds: connections ([`CONNECTIONS`], refused past it by closing them),
//! an idle connection closed after [`IDLE`], events kept ([`EVENTS_MAX`]),
//! accounts listed ([`ACCOUNTS_MAX`]) and the JSON's size
//! ([`JSON_BYTES_MAX`]); the view is computed at most once per push for all
//! open pages together.

use crate::control::NodeStatus;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use starling_net::listen::{ConnCounter, ConnGuard, ConnLimits};
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// The page: HTML, style and script in one file.
const PAGE: &str = include_str!("status_page.html");
/// Version of the JSON's shape (a field added keeps it; one changed bumps it).
pub const VIEW_VERSION: u32 = 1;
/// Link events kept (the oldest goes first).
pub const EVENTS_MAX: usize = 100;
/// Links between other nodes drawn at most (as the peers reported them).
pub const REMOTE_LINKS_MAX: usize = 512;
/// Accounts listed at most (those furthest behind first); `accounts_total`
/// says how many there are.
pub const ACCOUNTS_MAX: usize = 500;
/// The JSON of one view at most; accounts are left out until it fits.
pub const JSON_BYTES_MAX: usize = 1 << 20;
/// Open connections to the page (its event streams included).
pub const CONNECTIONS: ConnLimits = ConnLimits { total: 16, per_ip: 16 };
/// A connection with no byte either way for this long is closed (an open
/// page gets an event at least every [`PUSH_EVERY`]).
pub const IDLE: Duration = Duration::from_secs(30);
/// A view is pushed to open pages this often, and after a change.
pub const PUSH_EVERY: Duration = Duration::from_secs(1);
/// Two pushes are at least this far apart (a burst of commits makes one).
pub const PUSH_GAP_MIN: Duration = Duration::from_millis(200);

/// The cluster as one node sees it (`/status.json`, and each event of `/events`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// [`VIEW_VERSION`].
    pub version: u32,
    /// The node serving the page.
    pub node: String,
    /// When the view was made, Unix ms.
    pub generated_ms: u64,
    pub nodes: Vec<NodeView>,
    pub links: Vec<LinkView>,
    pub accounts: Vec<AccountView>,
    /// Accounts on the node (`accounts` may list fewer: [`ACCOUNTS_MAX`]).
    pub accounts_total: usize,
    /// Bodies referenced but not stored here, all accounts.
    pub bodies_missing: u64,
    /// Recent link ups and downs, oldest first (at most [`EVENTS_MAX`]).
    pub events: Vec<LinkEvent>,
}

/// A node of the graph.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// Node id (hex).
    pub id: String,
    /// A short name for the graph (the id's first 8 digits).
    pub name: String,
    /// Its peer address (UDP).
    pub addr: String,
    /// The node serving the page.
    #[serde(rename = "self")]
    pub is_self: bool,
    /// Reachable from the node serving the page (itself: always).
    pub up: bool,
}

/// A link between two nodes, as `reported_by` sees it. `a` is the reporter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkView {
    pub a: String,
    pub b: String,
    pub reported_by: String,
    /// A session runs over it now.
    pub up: bool,
    /// When it last went up or down, Unix ms (none: not since start).
    pub since_ms: Option<u64>,
    /// Ops of the shared accounts that `a` has and `b` lacks, and the other
    /// way (none: `b` has not said where it stands yet).
    pub b_lacks_ops: Option<u64>,
    pub a_lacks_ops: Option<u64>,
    /// Protocol bytes sent each way since start.
    pub bytes_a_to_b: u64,
    pub bytes_b_to_a: u64,
    /// Round trip of the current connection.
    pub rtt_ms: Option<f64>,
    /// Seconds since `a` last heard from `b` (none: never).
    pub last_contact_secs: Option<u64>,
}

/// One account and the replicas holding it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountView {
    pub name: String,
    /// Ops this node holds.
    pub ops: u64,
    pub messages: u64,
    pub bytes: u64,
    /// Bodies referenced but not stored here.
    pub bodies_missing: u64,
    /// This node first, then the pinned peers that sync the account.
    pub replicas: Vec<ReplicaView>,
    /// Its placement, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementView>,
}

/// An account's placement: how many of the nodes that should hold it do.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlacementView {
    /// `replicas=N` or `nodes=…`.
    pub placement: String,
    /// Nodes that should hold it, and those of them that do.
    pub wanted: usize,
    pub held: usize,
}

/// A replica of an account: how far behind the most up-to-date replica
/// this node knows of it is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaView {
    pub node: String,
    /// Ops it lacks (none: not known yet, the peer has not said).
    pub behind_ops: Option<u64>,
    /// Its link to this node is up (this node: always).
    pub up: bool,
}

/// A link going up or down.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkEvent {
    /// Unix ms.
    pub at_ms: u64,
    pub a: String,
    pub b: String,
    pub up: bool,
    /// Why a session ended ("connected" for an up).
    pub reason: String,
}

/// This node's link events: the last [`EVENTS_MAX`], and when each link
/// last changed (a peer's entry outlives its events in the ring).
#[derive(Debug, Default)]
pub struct LinkLog {
    events: VecDeque<LinkEvent>,
    since_ms: BTreeMap<String, u64>,
}

/// Reasons are cut to this many bytes (they come from errors).
const REASON_BYTES_MAX: usize = 200;

impl LinkLog {
    /// Records that the link from `a` to `b` went up or down.
    pub fn record(&mut self, at_ms: u64, a: &str, b: &str, up: bool, reason: &str) {
        let mut reason = reason.to_string();
        if reason.len() > REASON_BYTES_MAX {
            let mut cut = REASON_BYTES_MAX;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        if self.events.len() == EVENTS_MAX {
            self.events.pop_front();
        }
        self.events.push_back(LinkEvent { at_ms, a: a.to_string(), b: b.to_string(), up, reason });
        self.since_ms.insert(b.to_string(), at_ms);
        assert!(self.events.len() <= EVENTS_MAX);
    }

    /// The events kept, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &LinkEvent> {
        self.events.iter()
    }

    /// When the link to `peer` last changed.
    pub fn since_ms(&self, peer: &str) -> Option<u64> {
        self.since_ms.get(peer).copied()
    }
}

fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

/// The view of a node's status: `self_addr` is its peer address, `peer_accounts`
/// the accounts each pinned peer syncs (by node id).
pub fn view(
    st: &NodeStatus,
    self_addr: &str,
    peer_accounts: &BTreeMap<String, Vec<String>>,
    log: &LinkLog,
    now_ms: u64,
) -> View {
    let me = st.node_id.clone();
    let mut v = View {
        version: VIEW_VERSION,
        node: me.clone(),
        generated_ms: now_ms,
        accounts_total: st.accounts.len(),
        events: log.events().cloned().collect(),
        ..Default::default()
    };
    v.nodes.push(NodeView { id: me.clone(), name: short(&me), addr: self_addr.to_string(), is_self: true, up: true });
    for p in &st.peers {
        v.nodes.push(NodeView {
            id: p.node_id.clone(),
            name: short(&p.node_id),
            addr: p.addr.clone(),
            is_self: false,
            up: p.connected,
        });
        let sum =
            |f: fn(&crate::control::Lag) -> u64| (!p.behind.is_empty()).then(|| p.behind.iter().map(f).sum::<u64>());
        v.links.push(LinkView {
            a: me.clone(),
            b: p.node_id.clone(),
            reported_by: me.clone(),
            up: p.connected,
            since_ms: log.since_ms(&p.node_id),
            b_lacks_ops: sum(|l| l.peer_lacks),
            a_lacks_ops: sum(|l| l.we_lack),
            bytes_a_to_b: p.bytes_out,
            bytes_b_to_a: p.bytes_in,
            rtt_ms: p.connected.then_some(p.rtt_ms),
            last_contact_secs: p.last_contact_secs,
        });
    }
    // Links between other nodes, as each end reported them to this one
    // (links to this node are its own), at most REMOTE_LINKS_MAX.
    let mut pairs: std::collections::BTreeSet<(String, String)> = std::collections::BTreeSet::new();
    let pair = |x: &str, y: &str| if x < y { (x.to_string(), y.to_string()) } else { (y.to_string(), x.to_string()) };
    let mut reports: Vec<&crate::control::RemoteLinks> = st.remote_links.iter().filter(|r| r.node_id != me).collect();
    // The freshest report of a pair wins (a stopped node's last report
    // says its links were up).
    reports.sort_by_key(|r| r.age_secs);
    for r in reports {
        for l in r.links.iter().filter(|l| l.peer != me) {
            if pairs.len() >= REMOTE_LINKS_MAX || !pairs.insert(pair(&r.node_id, &l.peer)) {
                continue;
            }
            v.links.push(LinkView {
                a: r.node_id.clone(),
                b: l.peer.clone(),
                reported_by: r.node_id.clone(),
                up: l.up,
                since_ms: None,
                b_lacks_ops: l.peer_lacks,
                a_lacks_ops: l.lacks,
                bytes_a_to_b: l.bytes_out,
                bytes_b_to_a: l.bytes_in,
                rtt_ms: None,
                last_contact_secs: Some(r.age_secs),
            });
        }
    }
    // Members gossip knows that are not pinned here: nodes without a link
    // from this one (the cluster beyond its peers).
    for m in &st.cluster {
        if !v.nodes.iter().any(|n| n.id == m.node_id) {
            v.nodes.push(NodeView {
                id: m.node_id.clone(),
                name: short(&m.node_id),
                addr: m.addr.clone(),
                is_self: false,
                up: true,
            });
        }
    }
    // Nodes only a peer's links name (not pinned here, not seen by gossip).
    let mut known: std::collections::BTreeSet<String> = v.nodes.iter().map(|n| n.id.clone()).collect();
    let named: Vec<String> = v.links.iter().flat_map(|l| [l.a.clone(), l.b.clone()]).collect();
    for id in named {
        if known.insert(id.clone()) {
            v.nodes.push(NodeView { name: short(&id), id, addr: String::new(), is_self: false, up: false });
        }
    }
    for a in &st.accounts {
        v.bodies_missing += a.bodies_missing as u64;
        let mut replicas = Vec::new();
        // This node lacks what any peer said it has beyond this node.
        let lags: Vec<(&crate::control::PeerStatus, Option<&crate::control::Lag>)> = st
            .peers
            .iter()
            .filter(|p| peer_accounts.get(&p.node_id).is_some_and(|accts| accts.contains(&a.name)))
            .map(|p| (p, p.behind.iter().find(|l| l.account == a.name)))
            .collect();
        let we_lack = lags.iter().filter_map(|(_, l)| l.map(|l| l.we_lack)).max().unwrap_or(0);
        replicas.push(ReplicaView { node: me.clone(), behind_ops: Some(we_lack), up: true });
        for (p, l) in lags {
            replicas.push(ReplicaView {
                node: p.node_id.clone(),
                behind_ops: l.map(|l| l.peer_lacks),
                up: p.connected,
            });
        }
        v.accounts.push(AccountView {
            name: a.name.clone(),
            ops: a.ops,
            messages: a.messages,
            bytes: a.bytes,
            bodies_missing: a.bodies_missing as u64,
            replicas,
            placement: a.placement.as_ref().map(|p| PlacementView {
                placement: p.placement.clone(),
                wanted: p.target.len(),
                held: p.target.iter().filter(|t| p.holders.contains(t)).count(),
            }),
        });
    }
    // Furthest behind first (the ones to look at), then by name.
    let worst = |a: &AccountView| a.replicas.iter().filter_map(|r| r.behind_ops).max().unwrap_or(0) + a.bodies_missing;
    v.accounts.sort_by(|x, y| worst(y).cmp(&worst(x)).then_with(|| x.name.cmp(&y.name)));
    v.accounts.truncate(ACCOUNTS_MAX);
    v
}

/// The view as JSON of at most [`JSON_BYTES_MAX`]: accounts (the last
/// listed, least behind, first) are left out until it fits.
pub fn to_json(mut v: View) -> String {
    loop {
        let json = serde_json::to_string(&v).expect("a view serializes");
        if json.len() <= JSON_BYTES_MAX {
            return json;
        }
        if v.accounts.is_empty() {
            // Nodes, links and events are bounded by the pinned peers and
            // EVENTS_MAX; without accounts a view is far below the bound.
            v.events.clear();
            v.nodes.truncate(1);
            v.links.clear();
            continue;
        }
        let keep = v.accounts.len() / 2;
        v.accounts.truncate(keep);
    }
}

/// What the page shows and when it changed: `snapshot` makes the view's
/// JSON now (it reads the store: called on a blocking-capable thread),
/// `changed` moves when a link went up or down or an account changed.
pub struct Source {
    pub snapshot: Arc<dyn Fn() -> String + Send + Sync>,
    pub changed: watch::Receiver<u64>,
}

#[derive(Clone)]
struct AppState {
    snapshot: Arc<dyn Fn() -> String + Send + Sync>,
    /// The latest pushed view; each open event stream holds a receiver.
    pushed: Arc<watch::Sender<Arc<String>>>,
}

/// Serves the page on `tcp` until the task is dropped.
pub async fn serve(tcp: tokio::net::TcpListener, source: Source) {
    let pushed = Arc::new(watch::channel(Arc::new(String::new())).0);
    tokio::spawn(push(source.snapshot.clone(), source.changed, pushed.clone()));
    let state = AppState { snapshot: source.snapshot, pushed };
    let app = axum::Router::new()
        .route("/", axum::routing::get(page))
        .route("/status.json", axum::routing::get(json))
        .route("/events", axum::routing::get(events))
        .with_state(state);
    let listener = Bounded { tcp, open: ConnCounter::new(CONNECTIONS), errors: Default::default() };
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!("status page: {e}");
    }
}

/// Makes a view for the open event streams every [`PUSH_EVERY`] and after
/// a change, none while no page is open.
async fn push(
    snapshot: Arc<dyn Fn() -> String + Send + Sync>,
    mut changed: watch::Receiver<u64>,
    pushed: Arc<watch::Sender<Arc<String>>>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PUSH_EVERY) => {}
            c = changed.changed() => if c.is_err() { return },
        }
        if pushed.receiver_count() == 0 {
            continue;
        }
        let json = tokio::task::block_in_place(|| snapshot());
        pushed.send_replace(Arc::new(json));
        tokio::time::sleep(PUSH_GAP_MIN).await;
    }
}

/// A request that names another host is refused: a web page elsewhere
/// could otherwise read this one through a name it points at 127.0.0.1
/// (DNS rebinding). An IP address or `localhost` is accepted.
fn host_ok(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return true };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn misdirected() -> Response {
    (StatusCode::MISDIRECTED_REQUEST, "use the node's address (an IP address or localhost)\n").into_response()
}

async fn page(headers: HeaderMap) -> Response {
    if !host_ok(&headers) {
        return misdirected();
    }
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], PAGE).into_response()
}

async fn json(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if !host_ok(&headers) {
        return misdirected();
    }
    let body = tokio::task::block_in_place(|| (s.snapshot)());
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response()
}

async fn events(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if !host_ok(&headers) {
        return misdirected();
    }
    // The first event is made now; then each pushed view.
    let first = tokio::task::block_in_place(|| (s.snapshot)());
    let rx = s.pushed.subscribe();
    let stream = futures_util::stream::unfold((Some(first), rx), |(first, mut rx)| async move {
        let data = match first {
            Some(f) => f,
            None => {
                rx.changed().await.ok()?;
                let j = rx.borrow_and_update().clone();
                j.as_str().to_string()
            }
        };
        Some((Ok::<_, Infallible>(Event::default().event("status").data(data)), (None, rx)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// The TCP listener with the page's connection limits: a connection past
/// them is closed at once (no answer: answering would take a place too).
struct Bounded {
    tcp: tokio::net::TcpListener,
    open: Arc<ConnCounter>,
    errors: starling_net::listen::AcceptErrors,
}

impl axum::serve::Listener for Bounded {
    type Io = Admitted;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Admitted, std::net::SocketAddr) {
        loop {
            let tcp = &self.tcp;
            let (stream, addr) =
                starling_net::listen::accept_forever("status", &mut self.errors, || tcp.accept()).await;
            match self.open.admit(addr.ip()) {
                Ok(place) => {
                    let idle = Box::pin(tokio::time::sleep(IDLE));
                    return (Admitted { stream, _place: place, idle }, addr);
                }
                Err(why) => tracing::debug!("status page: connection from {addr} refused: {why:?}"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.tcp.local_addr()
    }
}

/// An admitted connection: holds its place, and fails once idle for [`IDLE`].
struct Admitted {
    stream: tokio::net::TcpStream,
    _place: ConnGuard,
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl Admitted {
    fn active(&mut self) {
        self.idle.as_mut().reset(tokio::time::Instant::now() + IDLE);
    }

    /// While waiting: the error that ends an idle connection.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        self.idle
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "status page connection idle"))
    }
}

impl AsyncRead for Admitted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.check_idle(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.check_idle(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{AccountStatus, Lag, PeerStatus};
    use std::io::{Read, Write};

    fn id(c: char) -> String {
        c.to_string().repeat(64)
    }

    /// Node a with peers b (connected, syncing alice and bob) and c (down,
    /// syncing alice).
    fn status() -> (NodeStatus, BTreeMap<String, Vec<String>>) {
        let account = |name: &str, ops, missing| AccountStatus {
            name: name.into(),
            ops,
            bodies_missing: missing,
            messages: 3,
            bytes: 300,
            ..Default::default()
        };
        let st = NodeStatus {
            node_id: id('a'),
            accounts: vec![account("alice", 10, 2), account("bob", 4, 0)],
            peers: vec![
                PeerStatus {
                    node_id: id('b'),
                    addr: "127.0.0.1:7432".into(),
                    connected: true,
                    bytes_in: 100,
                    bytes_out: 200,
                    rtt_ms: 1.5,
                    last_contact_secs: Some(0),
                    behind: vec![
                        Lag { account: "alice".into(), peer_lacks: 3, we_lack: 1 },
                        Lag { account: "bob".into(), peer_lacks: 0, we_lack: 0 },
                    ],
                    ..Default::default()
                },
                PeerStatus { node_id: id('c'), addr: "127.0.0.1:7433".into(), ..Default::default() },
            ],
            ..Default::default()
        };
        let accounts = BTreeMap::from([
            (id('b'), vec!["alice".to_string(), "bob".to_string()]),
            (id('c'), vec!["alice".to_string()]),
        ]);
        (st, accounts)
    }

    #[test]
    fn the_view_has_the_nodes_links_and_accounts() {
        let (st, accounts) = status();
        let mut log = LinkLog::default();
        log.record(1_000, &id('a'), &id('c'), true, "connected");
        log.record(2_000, &id('a'), &id('c'), false, "peer closed the stream");
        let v = view(&st, "127.0.0.1:7431", &accounts, &log, 5_000);
        assert_eq!(v.nodes.len(), 3);
        assert!(v.nodes[0].is_self && v.nodes[0].up && v.nodes[0].name == "aaaaaaaa");
        assert_eq!((v.nodes[1].up, v.nodes[2].up), (true, false));
        assert_eq!(v.links.len(), 2);
        let (ab, ac) = (&v.links[0], &v.links[1]);
        assert_eq!((ab.a.as_str(), ab.b.as_str(), ab.up), (id('a').as_str(), id('b').as_str(), true));
        assert_eq!((ab.b_lacks_ops, ab.a_lacks_ops, ab.bytes_a_to_b, ab.bytes_b_to_a), (Some(3), Some(1), 200, 100));
        assert_eq!((ac.up, ac.since_ms, ac.b_lacks_ops, ac.rtt_ms), (false, Some(2_000), None, None));
        assert_eq!((v.accounts_total, v.bodies_missing), (2, 2));
        let alice = &v.accounts[0];
        assert_eq!(alice.name, "alice", "furthest behind first");
        let replicas: Vec<_> = alice.replicas.iter().map(|r| (r.node.clone(), r.behind_ops, r.up)).collect();
        assert_eq!(replicas, vec![(id('a'), Some(1), true), (id('b'), Some(3), true), (id('c'), None, false)]);
        assert_eq!(v.accounts[1].replicas.len(), 2, "bob: this node and b");
        assert_eq!(v.events.len(), 2);
        assert!(!v.events[1].up && v.events[1].reason == "peer closed the stream");
        // The JSON has the documented names.
        let j: serde_json::Value = serde_json::from_str(&to_json(v)).unwrap();
        assert_eq!(j["nodes"][0]["self"], true);
        assert_eq!(j["links"][1]["up"], false);
        assert_eq!(j["accounts"][0]["replicas"][2]["behind_ops"], serde_json::Value::Null);
    }

    #[test]
    fn a_placed_account_shows_how_many_of_its_nodes_hold_it() {
        let (mut st, accounts) = status();
        st.accounts[0].placement = Some(crate::placement::AccountPlacement {
            placement: "replicas=3".into(),
            holders: vec![id('a'), id('b'), id('d')],
            target: vec![id('a'), id('b'), id('c')],
        });
        let v = view(&st, "x", &accounts, &LinkLog::default(), 0);
        let alice = v.accounts.iter().find(|a| a.name == "alice").unwrap();
        assert_eq!(alice.placement, Some(PlacementView { placement: "replicas=3".into(), wanted: 3, held: 2 }));
        assert!(v.accounts.iter().find(|a| a.name == "bob").unwrap().placement.is_none());
        let j: serde_json::Value = serde_json::from_str(&to_json(v)).unwrap();
        assert_eq!(j["accounts"][0]["placement"]["held"], 2);
    }

    #[test]
    fn members_known_by_gossip_are_nodes_without_a_link_from_here() {
        let (mut st, accounts) = status();
        let member = |c: char| crate::cluster::MemberStatus {
            node_id: id(c),
            addr: "10.0.0.9:7431".into(),
            accounts: vec!["alice".into()],
        };
        // b is pinned (already a node); d is known only by gossip.
        st.cluster = vec![member('b'), member('d')];
        let v = view(&st, "127.0.0.1:7431", &accounts, &LinkLog::default(), 5_000);
        assert_eq!(v.nodes.len(), 4);
        let d = v.nodes.iter().find(|n| n.id == id('d')).expect("the gossip member");
        assert!(d.up && !d.is_self && d.addr == "10.0.0.9:7431");
        assert_eq!(v.links.len(), 2, "no link drawn to a node this one holds no session with");
    }

    #[test]
    fn links_between_other_nodes_come_from_their_reports_once_per_pair_and_bounded() {
        use crate::cluster::LinkBrief;
        use crate::control::RemoteLinks;
        let (mut st, accounts) = status();
        let brief = |peer: String, up| LinkBrief { peer, up, peer_lacks: Some(4), bytes_out: 10, ..Default::default() };
        // b reports b–c (down) and b–a (this node's own link: not drawn
        // again); c, in an older report, c–b up (the fresher report of the
        // pair wins: drawn once, down) and c–e (e unknown here).
        st.remote_links = vec![
            RemoteLinks { node_id: id('c'), age_secs: 5, links: vec![brief(id('b'), true), brief(id('e'), true)] },
            RemoteLinks { node_id: id('b'), age_secs: 2, links: vec![brief(id('c'), false), brief(id('a'), true)] },
        ];
        let v = view(&st, "x", &accounts, &LinkLog::default(), 0);
        let others: Vec<_> = v.links.iter().filter(|l| l.reported_by != id('a')).collect();
        assert_eq!(others.len(), 2, "{others:?}");
        let bc = others.iter().find(|l| l.a == id('b')).unwrap();
        assert_eq!(
            (bc.b.as_str(), bc.up, bc.b_lacks_ops, bc.last_contact_secs),
            (id('c').as_str(), false, Some(4), Some(2))
        );
        assert!(v.nodes.iter().any(|n| n.id == id('e') && !n.up), "a node only a report names is drawn");
        // Past the bound, no more.
        st.remote_links = (0..100)
            .map(|i| RemoteLinks {
                node_id: format!("{i:064}"),
                age_secs: 0,
                links: (0..16).map(|j| brief(format!("{:064}", 1000 + j), true)).collect(),
            })
            .collect();
        let v = view(&st, "x", &accounts, &LinkLog::default(), 0);
        assert_eq!(v.links.iter().filter(|l| l.reported_by != id('a')).count(), REMOTE_LINKS_MAX);
    }

    #[test]
    fn the_event_ring_and_the_json_are_bounded() {
        let mut log = LinkLog::default();
        for i in 0..(EVENTS_MAX as u64 * 3) {
            log.record(i, "a", "b", i % 2 == 0, &"x".repeat(1000));
        }
        assert_eq!(log.events().count(), EVENTS_MAX);
        assert_eq!(log.events().next().unwrap().at_ms, EVENTS_MAX as u64 * 2, "the oldest went first");
        assert!(log.events().all(|e| e.reason.len() == REASON_BYTES_MAX));
        assert_eq!(log.since_ms("b"), Some(EVENTS_MAX as u64 * 3 - 1));

        let (mut st, accounts) = status();
        let n = 20_000;
        st.accounts =
            (0..n).map(|i| AccountStatus { name: format!("{i:0>200}"), ops: i, ..Default::default() }).collect();
        let v = view(&st, "x", &accounts, &log, 0);
        assert_eq!((v.accounts.len(), v.accounts_total), (ACCOUNTS_MAX, n as usize));
        let mut big = v.clone();
        big.accounts =
            (0..10_000).map(|i| AccountView { name: "y".repeat(500 + i % 7), ..Default::default() }).collect();
        let json = to_json(big);
        assert!(json.len() <= JSON_BYTES_MAX, "{}", json.len());
        let back: View = serde_json::from_str(&json).unwrap();
        assert!(!back.accounts.is_empty() && back.nodes.len() == 3 && back.events.len() == EVENTS_MAX);
    }

    #[test]
    fn only_ip_addresses_and_localhost_are_served() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, v.parse().unwrap());
            host_ok(&m)
        };
        assert!(h("127.0.0.1:8431") && h("localhost:8431") && h("[::1]:8431") && h("10.1.2.3"));
        assert!(!h("evil.example:8431") && !h("example.com"));
    }

    fn get(port: u16, path: &str) -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    #[test]
    fn the_server_answers_and_refuses_connections_past_its_limit() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (st, accounts) = status();
        let snapshot: Arc<dyn Fn() -> String + Send + Sync> =
            Arc::new(move || to_json(view(&st, "127.0.0.1:7431", &accounts, &LinkLog::default(), 1)));
        let (bump, changed) = watch::channel(0u64);
        let port = rt.block_on(async {
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = tcp.local_addr().unwrap().port();
            tokio::spawn(serve(tcp, Source { snapshot, changed }));
            port
        });
        let page = get(port, "/").unwrap();
        assert!(page.starts_with("HTTP/1.1 200") && page.contains("text/html") && page.contains("<svg"), "{page}");
        let json = get(port, "/status.json").unwrap();
        let body = json.split("\r\n\r\n").nth(1).unwrap();
        let v: View = serde_json::from_str(body).unwrap();
        assert_eq!((v.nodes.len(), v.links.len(), v.accounts.len()), (3, 2, 2));
        let mut other = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        other.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(other, "GET / HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n").unwrap();
        let mut refused = String::new();
        other.read_to_string(&mut refused).unwrap();
        assert!(refused.starts_with("HTTP/1.1 421"), "{refused}");

        // Event streams take every place; each gets the view at once, and
        // another after a change.
        let read_event = |s: &mut std::net::TcpStream| -> std::io::Result<String> {
            let mut got = Vec::new();
            let mut buf = [0u8; 65536];
            // Up to the end of the first event (the body is chunked: the
            // event's blank line is followed by the chunk's CRLF).
            let done = |g: &[u8]| {
                let t = String::from_utf8_lossy(g);
                t.find("event: status").is_some_and(|at| t[at..].contains("\n\n"))
            };
            while !done(&got) {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                got.extend_from_slice(&buf[..n]);
            }
            Ok(String::from_utf8(got).unwrap())
        };
        // The connections of the requests above may hold their places a
        // moment longer: a stream refused meanwhile is opened again.
        let mut streams = Vec::new();
        let mut refused = 0;
        while streams.len() < CONNECTIONS.total {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(s, "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
            match read_event(&mut s) {
                Ok(first) => {
                    assert!(first.contains("text/event-stream") && first.contains("\"nodes\""), "{first}");
                    streams.push(s);
                }
                Err(_) => {
                    refused += 1;
                    assert!(refused < 100, "event streams refused below the limit");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        bump.send_modify(|g| *g += 1);
        let next = read_event(&mut streams[0]).unwrap();
        assert!(next.contains("data: {\"version\":1"), "{next}");
        // The next connection is closed unanswered.
        let answer = get(port, "/status.json");
        assert!(!matches!(&answer, Ok(a) if !a.is_empty()), "answered past the limit: {answer:?}");
        // A place freed is taken again.
        drop(streams.pop());
        let mut again = Err(std::io::Error::other("not yet"));
        for _ in 0..50 {
            again = get(port, "/status.json");
            if matches!(&again, Ok(a) if a.starts_with("HTTP/1.1 200")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(again.unwrap().starts_with("HTTP/1.1 200"));
        drop(streams);
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}
