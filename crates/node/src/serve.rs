//! `starling serve`: the peer endpoint, one sync session per connected peer,
//! each driving `starling-sync` against the store. Dialing is one-sided (the
//! node with the larger id dials, with backoff) so a pair holds one connection.

use crate::control;
use crate::peers::{Peer, PeerBook};
use crate::tasks::Tasks;
use starling_link::{LinkError, PeerLink, Progress};
use starling_net::listen::{accept_forever, AcceptErrors, ConnCounter, ConnLimits};
use starling_net::{read_frame, write_frame, NodeId, NodeIdentity, PeerConnection, PeerEndpoint};
use starling_store::Store;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;
use tokio::sync::{broadcast, mpsc, watch};

/// Frames handled in one go at most (bytes): bounds a batch's memory.
const BATCH_BYTES: usize = 32 << 20;
/// Connections to the metrics endpoint and to the control socket, each.
const LOCAL_CONNECTIONS: ConnLimits = ConnLimits { total: 16, per_ip: 16 };
/// A metrics request is read and answered within this.
const LOCAL_DEADLINE: Duration = Duration::from_secs(5);
/// How often the node checks whether a read found a damaged body.
const DAMAGE_POLL: Duration = Duration::from_secs(1);
/// Peer handshakes in progress at most; attempts past it are refused.
const HANDSHAKES_MAX: usize = 64;
/// Bodies deleted per housekeeping transaction.
const HOUSEKEEPING_BATCH: usize = 256;

/// Where the node listens, and how it serves IMAP.
pub struct Settings {
    /// Peer endpoint (UDP).
    pub peers: SocketAddr,
    /// LMTP.
    pub lmtp: SocketAddr,
    /// LMTP limits and timeouts.
    pub lmtp_config: crate::lmtp::Config,
    /// IMAP with STARTTLS.
    pub imap: SocketAddr,
    /// IMAP with implicit TLS.
    pub imaps: SocketAddr,
    /// Prometheus metrics over HTTP, if wanted.
    pub metrics: Option<SocketAddr>,
    /// The status page, if wanted.
    pub status: Option<StatusListen>,
    /// IMAP limits and policies.
    pub imap_config: starling_imap::Config,
    /// TLS certificate and key files (made self-signed if both are absent).
    pub tls: (std::path::PathBuf, std::path::PathBuf),
    /// Log compaction and body collection.
    pub housekeeping: crate::config::Housekeeping,
    /// Exposure after k peers (`run` adds the pinned peers of each account).
    pub durability: starling_store::ExposurePolicy,
    /// Gossip membership.
    pub cluster: crate::config::ClusterSection,
}

/// Where the status page listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusListen {
    pub addr: SocketAddr,
    /// Set by the operator (a flag or the config): failing to bind it stops
    /// the node. The default address, taken by something else, only warns
    /// (several nodes on one machine, a second one started by hand).
    pub required: bool,
}

/// The exposure policy with each account's pinned peers; warns of an
/// account that has fewer than k (its changes are short at once).
fn durability_of(
    mut policy: starling_store::ExposurePolicy,
    store: &Store,
    book: &PeerBook,
) -> starling_store::ExposurePolicy {
    policy.pinned = book.exposure_peers();
    if policy.peers > 0 {
        for a in store.accounts() {
            let n = policy.pinned.of(&a).len();
            if n < policy.peers {
                tracing::warn!(
                    account = a,
                    "durability.peers is {} but the account has {n} pinned peers: its changes cannot be held by enough",
                    policy.peers
                );
            }
        }
    }
    policy
}

/// Runs until SIGINT or SIGTERM.
pub fn run(
    data_dir: &Path,
    store: Store,
    identity: NodeIdentity,
    book: PeerBook,
    listen: Settings,
) -> Result<(), String> {
    let tls = starling_imap::tls_acceptor(&listen.tls.0, &listen.tls.1)?;
    let lmtp_listen = listen.lmtp;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let store = Arc::new(store);
        for p in book.list().iter() {
            // An account this node forgot (or purged as deleted) is not
            // made again because a peer's line still names it.
            let mut p = p.clone();
            p.accounts.retain(|a| !store.was_forgotten(a).unwrap_or(false));
            crate::membership::accounts_for(&store, &p)?;
        }
        let identity = Arc::new(identity);
        let book = Arc::new(book);
        let endpoint =
            Arc::new(PeerEndpoint::bind(listen.peers, identity.clone(), book.pinned()).map_err(|e| e.to_string())?);
        let hub =
            Hub {
            changes: broadcast::channel::<String>(1024).0,
            bodies_lacking: Arc::new(watch::channel(0).0),
            live: Arc::default(),
            wanted: broadcast::channel(WANTED_QUEUED).0,
            arrived: broadcast::channel(ARRIVED_QUEUED).0,
            cluster: Arc::default(),
            conns: Arc::default(),
            me: identity.id(),
            links: Arc::default(),
            status_changed: Arc::new(watch::channel(0).0),
            purge_waits: Default::default(),
            snapshot_part: listen.cluster.snapshot_part(),
        };
        let tasks = Tasks::default();
        let node = crate::membership::Node::new(
            endpoint.clone(),
            store.clone(),
            hub.clone(),
            book.clone(),
            identity.id(),
            tasks.clone(),
            listen.cluster.fanout,
        );
        let control = control_socket(data_dir, node.clone())?;
        let cluster = if listen.cluster.gossip {
            let addr = listen.cluster.advertise.unwrap_or(endpoint.local_addr().map_err(|e| e.to_string())?);
            if addr.ip().is_unspecified() {
                tracing::warn!("the peer endpoint listens on {addr}: set [cluster] advertise so gossip can tell others where this node is");
            }
            let me = starling_gossip::Member::new(identity.id().0, addr, crate::membership::held(&store), unix_ms());
            let accept = crate::cluster::Accept {
                introduced: listen.cluster.accept_introduced,
                placed: listen.cluster.accept_placed,
            };
            let cluster = crate::cluster::start(&node, me, accept);
            let replace_after = std::time::Duration::from_secs(listen.cluster.replace_after_secs);
            crate::placement::keep(&node, cluster.clone(), replace_after);
            cluster
        } else {
            crate::cluster::Cluster::off()
        };
        let _ = hub.cluster.set(cluster);
        let peers = book.list();
        let lmtp = tokio::net::TcpListener::bind(lmtp_listen).await.map_err(|e| format!("LMTP {lmtp_listen}: {e}"))?;
        println!("lmtp: listening on {}", lmtp.local_addr().map_err(|e| e.to_string())?);
        let durability = Arc::new(durability_of(listen.durability.clone(), &store, &book));
        let lmtp = tokio::spawn(crate::lmtp::serve(
            lmtp,
            listen.lmtp_config,
            store.clone(),
            durability.clone(),
            tasks.clone(),
        ));
        // Every commit (IMAP, LMTP, a peer's ops, the control socket) tells
        // IDLE sessions and the peer links from the store itself.
        let (changes, status_changed) = (hub.changes.clone(), hub.status_changed.clone());
        store.on_commit(move |account| {
            let _ = changes.send(account.to_string());
            status_changed.send_modify(|g| *g += 1);
        });
        let (imap, imap_shared) = {
            let config = starling_imap::Config { exposure: (*durability).clone(), ..listen.imap_config.clone() };
            let shared = starling_imap::Shared::new(store.clone(), config);
            // A FETCH of a body left out here asks the account's connected peers.
            let (wanted, live, book) = (hub.wanted.clone(), hub.live.clone(), book.clone());
            shared.on_want_bodies(move |account, ids| {
                let live = live.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let reachable = book
                    .list()
                    .iter()
                    .any(|p| p.accounts.iter().any(|a| a == account) && live.get(&p.id).is_some_and(|l| l.connected));
                reachable && wanted.send((account.to_string(), Arc::new(ids.to_vec()))).is_ok()
            });
            let mut listeners = Vec::new();
            for (addr, implicit_tls) in [(listen.imap, false), (listen.imaps, true)] {
                let tcp = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("IMAP {addr}: {e}"))?;
                let local = tcp.local_addr().map_err(|e| e.to_string())?;
                println!("{}: listening on {local}", if implicit_tls { "imaps" } else { "imap" });
                let l = starling_imap::Listener { tcp, implicit_tls };
                let t = tasks.clone();
                let spawn = move |f| t.spawn(f);
                listeners.push(tokio::spawn(starling_imap::serve(l, shared.clone(), tls.clone(), hub.changes.clone(), spawn)));
            }
            (listeners, shared)
        };
        let store_pool_of = imap_shared.clone();
        if let Some(addr) = listen.metrics {
            let tcp = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("metrics {addr}: {e}"))?;
            println!("metrics: listening on http://{}/metrics", tcp.local_addr().map_err(|e| e.to_string())?);
            let (store, book, hub, me) = (store.clone(), book.clone(), hub.clone(), identity.id());
            let open = ConnCounter::new(LOCAL_CONNECTIONS);
            let tasks = tasks.clone();
            tokio::spawn(async move {
                let mut errors = AcceptErrors::default();
                loop {
                    let (mut stream, addr) = accept_forever("metrics", &mut errors, || tcp.accept()).await;
                    let Ok(place) = open.admit(addr.ip()) else { continue };
                    let (store, book, hub, imap) = (store.clone(), book.clone(), hub.clone(), imap_shared.clone());
                    tasks.spawn(async move {
                        let _place = place;
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        // One request per connection; its content does not matter.
                        let mut buf = [0u8; 4096];
                        let _ = tokio::time::timeout(LOCAL_DEADLINE, stream.read(&mut buf)).await;
                        let body = tokio::task::block_in_place(|| {
                            let st = status(&store, me, &book.list(), &hub);
                            let extra = crate::metrics::Extra { imap_sessions: imap.sessions(), sort_cache: imap.sort_cache.stats() };
                            crate::metrics::render(&store, me.replica(), &st, &extra)
                        });
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = tokio::time::timeout(LOCAL_DEADLINE, async {
                            stream.write_all(head.as_bytes()).await?;
                            stream.write_all(body.as_bytes()).await
                        })
                        .await;
                    });
                }
            });
        }
        if let Some(listen) = listen.status {
            let self_addr = endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default();
            status_page(listen, self_addr, store.clone(), identity.id(), book.clone(), hub.clone(), &tasks).await?;
        }
        for a in store.accounts() {
            report(&store, &a, true);
        }
        // Housekeeping, first one period after start (peers have said
        // where they stand by then).
        {
            let (store, node, hub, config) = (store.clone(), node.clone(), hub.clone(), listen.housekeeping.clone());
            tasks.spawn(async move {
                // The file is checked at the first pass (not at open:
                // that reads all of it), then once per period.
                let mut compacted: Option<std::time::Instant> = None;
                loop {
                    tokio::time::sleep(config.every).await;
                    tokio::task::block_in_place(|| {
                        housekeep(&store, &node.housekeeping_peers(), &hub, &config);
                        // Deleted accounts every pinned peer knows deleted: purged.
                        let horizon = config.horizon.as_millis() as u64;
                        // The peers housekeeping waited for (with a fan-out,
                        // the neighbours: only they acknowledge to this node).
                        let peers = node.housekeeping_peers();
                        let pass = crate::forget::purge_deleted(&store, &peers, unix_ms(), horizon);
                        for account in &pass.purged {
                            node.let_go(account);
                        }
                        *hub.purge_waits.lock().unwrap_or_else(|p| p.into_inner()) = pass.waiting;
                        let due = match compacted {
                            None => true,
                            Some(at) => !config.file_compact_every.is_zero() && at.elapsed() >= config.file_compact_every,
                        };
                        if due {
                            compact_file(&store, &config, &mut compacted);
                        }
                    });
                }
            });
        }
        // A body found damaged by any reader (an IMAP FETCH, a peer's
        // request): every link sweeps, which asks a peer for a good copy.
        {
            let (store, hub) = (store.clone(), hub.clone());
            tasks.spawn(async move {
                let mut seen = store.corrupt_reads();
                loop {
                    tokio::time::sleep(DAMAGE_POLL).await;
                    let now = store.corrupt_reads();
                    if now > seen {
                        tracing::warn!("{} damaged body reads; asking peers for good copies", now - seen);
                        hub.bodies_lacking.send_modify(|g| *g += 1);
                        seen = now;
                    }
                }
            });
        }
        println!(
            "peers: listening on {} (UDP), {} pinned",
            endpoint.local_addr().map_err(|e| e.to_string())?,
            peers.len()
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();

        // Accept: any pinned peer, and nodes that come to join (the
        // handshake already refused the others).
        {
            let node = node.clone();
            // Each handshake runs in its own task with a deadline, so a
            // stalled one never holds up the others; at most
            // HANDSHAKES_MAX at a time (attempts past it are refused).
            let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
            tokio::spawn(async move {
                while let Some(incoming) = node.endpoint.accept().await {
                    let Ok(slot) = handshakes.clone().try_acquire_owned() else {
                        incoming.refuse();
                        continue;
                    };
                    let node2 = node.clone();
                    node.tasks.spawn(async move {
                        let node = node2;
                        let conn = match node.endpoint.handshake(incoming).await {
                            Ok(c) => c,
                            Err(e) => return tracing::debug!("peer handshake: {e}"),
                        };
                        if conn.joining {
                            // The join holds its slot: a join is short and bounded by deadlines.
                            crate::membership::welcome(&node, conn).await;
                            drop(slot);
                            return;
                        }
                        drop(slot);
                        let Some(peer) = node.book.get(&conn.peer) else { return };
                        // The dialer opens the session's stream when it wants
                        // one (its fan-out); until then the connection
                        // carries gossip only.
                        let _attached = node.hub.attach(&conn.connection, &peer);
                        let end = session(conn, false, node.me.replica(), &peer, node.store.clone(), node.hub.clone()).await;
                        tracing::info!(peer = %peer.id, "session ended: {end}");
                    });
                }
            });
        }
        // Dial the peers with a smaller id, forever, with backoff.
        for peer in peers.iter() {
            node.dial(peer.id);
        }
        node.keep_topology();
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        // Stop taking work; a delivery already inside its commit finishes it
        // (it is acknowledged only after), so no acknowledged message is lost.
        lmtp.abort();
        for t in imap {
            t.abort();
        }
        control.abort();
        // Every session ends at its next await point, never inside a store
        // call; the runtime goes only once they have.
        let left = tasks.stop().await;
        if left > 0 {
            tracing::warn!("{left} tasks still running {:?} after the stop signal", crate::tasks::STOP_DEADLINE);
        }
        // An IMAP session's step already on the store pool (its task stopped
        // at the await for it) runs to its end before the runtime goes.
        let by = tokio::time::Instant::now() + crate::tasks::STOP_DEADLINE;
        if !store_pool_of.store_pool().idle_by(by, Duration::from_millis(10)).await {
            let n = store_pool_of.store_pool().in_flight();
            tracing::warn!("{n} IMAP steps still running {:?} after the stop signal", crate::tasks::STOP_DEADLINE);
        }
        endpoint.shutdown(Duration::from_secs(1)).await;
        let _ = std::fs::remove_file(control::socket_path(data_dir));
        Ok(())
    })
}

/// Serves the control socket (`starling status`, `dump`, `flag` while the
/// node runs).
fn control_socket(data_dir: &Path, node: crate::membership::Node) -> Result<tokio::task::JoinHandle<()>, String> {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let path = control::socket_path(data_dir);
    // A socket left by a node that did not stop cleanly (the store's lock
    // already proved no other node runs here).
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    let open = Arc::new(tokio::sync::Semaphore::new(LOCAL_CONNECTIONS.total));
    Ok(tokio::spawn(async move {
        let mut errors = AcceptErrors::default();
        loop {
            let (stream, _) = accept_forever("control", &mut errors, || listener.accept()).await;
            let Ok(place) = open.clone().try_acquire_owned() else { continue };
            let node2 = node.clone();
            node.tasks.spawn(async move {
                let node = node2;
                let _place = place;
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let answer = match serde_json::from_str::<control::Request>(&line) {
                        Err(e) => control::Answer { error: Some(format!("bad request: {e}")), ..Default::default() },
                        Ok(control::Request::Status) => control::Answer {
                            status: Some(tokio::task::block_in_place(|| {
                                status(&node.store, node.me, &node.book.list(), &node.hub)
                            })),
                            ..Default::default()
                        },
                        Ok(control::Request::ForgetAccount { user, force }) => {
                            let done = tokio::task::block_in_place(|| node.forget(&user, force));
                            match done {
                                Ok(d) => control::Answer {
                                    text: Some(crate::forget::describe(&user, &d)),
                                    ..Default::default()
                                },
                                Err(e) => control::Answer { error: Some(e), ..Default::default() },
                            }
                        }
                        Ok(req) if req.is_membership() => match node.answer(req).await {
                            Ok(text) => control::Answer { text: Some(text), ..Default::default() },
                            Err(e) => control::Answer { error: Some(e), ..Default::default() },
                        },
                        Ok(req) => match tokio::task::block_in_place(|| control::answer_store(&node.store, &req)) {
                            Ok(text) => control::Answer { text: Some(text), ..Default::default() },
                            Err(e) => control::Answer { error: Some(e), ..Default::default() },
                        },
                    };
                    let mut out = serde_json::to_string(&answer).unwrap_or_default();
                    out.push('\n');
                    if w.write_all(out.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    }))
}

/// Serves the status page (`status_page`) if its address can be bound;
/// the default address taken only warns.
async fn status_page(
    listen: StatusListen,
    self_addr: String,
    store: Arc<Store>,
    me: NodeId,
    book: Arc<PeerBook>,
    hub: Hub,
    tasks: &Tasks,
) -> Result<(), String> {
    let addr = listen.addr;
    let tcp = match tokio::net::TcpListener::bind(addr).await {
        Ok(t) => t,
        Err(e) if !listen.required => {
            println!("status: not served: {addr}: {e} (choose another address: [listen] status, --status-listen)");
            tracing::warn!("status page not served: {addr}: {e}");
            return Ok(());
        }
        Err(e) => return Err(format!("status {addr}: {e}")),
    };
    println!("status: listening on http://{}/", tcp.local_addr().map_err(|e| e.to_string())?);
    let changed = hub.status_changed.subscribe();
    // The peers as they are now (joins, introductions and removals change them).
    let snapshot = Arc::new(move || {
        let peers = book.list();
        let peer_accounts: BTreeMap<String, Vec<String>> =
            peers.iter().map(|p| (p.id.to_string(), p.accounts.clone())).collect();
        let st = status(&store, me, &peers, &hub);
        let log = hub.links.lock().unwrap_or_else(|p| p.into_inner());
        crate::status_page::to_json(crate::status_page::view(&st, &self_addr, &peer_accounts, &log, unix_ms()))
    });
    tasks.spawn(crate::status_page::serve(tcp, crate::status_page::Source { snapshot, changed }));
    Ok(())
}

fn status(store: &Store, me: NodeId, peers: &[Peer], hub: &Hub) -> control::NodeStatus {
    let mut out = control::NodeStatus {
        node_id: me.to_string(),
        store_file_bytes: store.file_bytes().unwrap_or(0),
        file_compactions: store.file_compact_stats(),
        ..Default::default()
    };
    let mut versions = BTreeMap::new();
    let to_collect = store.bodies_to_collect().unwrap_or_default();
    let now_ms = unix_ms();
    let mut placements = hub.cluster.get().map(|c| c.placements()).unwrap_or_default();
    let purge_waits = hub.purge_waits.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for a in store.accounts() {
        let deleted = store.is_deleted(&a).unwrap_or(false).then(|| {
            purge_waits.get(&a).cloned().unwrap_or_else(|| "not purged yet: the next housekeeping pass decides".into())
        });
        let vv = store.version(&a).unwrap_or_default();
        let ops: u64 = vv.iter().map(|(_, c)| c).sum();
        let (messages, bytes) = store.usage(&a).unwrap_or_default();
        let log_floor_ops: u64 = store.floor(&a).map(|f| f.iter().map(|(_, c)| c).sum()).unwrap_or(0);
        let oldest_peer = store
            .peer_acks(&a)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(rid, ack)| {
                let p = peers.iter().find(|p| p.id.replica() == rid)?;
                Some(control::OldestPeer {
                    node_id: p.id.to_string(),
                    lacks: vv.lacking_in(&ack.vv),
                    silent_secs: now_ms.saturating_sub(ack.seen_ms) / 1000,
                })
            })
            .max_by_key(|o| o.lacks);
        let snapshots_arriving = store
            .spools(&a)
            .unwrap_or_default()
            .into_iter()
            .map(|(from, _, total, got)| control::SnapshotArriving {
                from: peers
                    .iter()
                    .find(|p| p.id.replica().0 == from)
                    .map_or_else(|| format!("{from:016x}"), |p| p.id.to_string()),
                got,
                total,
            })
            .collect();
        out.accounts.push(control::AccountStatus {
            name: a.clone(),
            ops,
            bodies_missing: store.missing_count(&a).unwrap_or(0) as usize,
            messages,
            bytes,
            bodies_to_collect: to_collect.get(&a).copied().unwrap_or(0),
            log_floor_ops,
            log_ops: ops.saturating_sub(log_floor_ops),
            oldest_peer,
            placement: placements.remove(&a),
            deleted,
            snapshots_arriving,
        });
        versions.insert(a, vv);
    }
    out.purged = store
        .purged_names()
        .unwrap_or_default()
        .into_iter()
        .map(|(name, at_ms)| control::PurgedName { name, at_ms })
        .collect();
    out.cluster = hub.cluster.get().map(|c| c.members()).unwrap_or_default();
    out.remote_links = hub.cluster.get().map(|c| c.remote_links()).unwrap_or_default();
    let live = hub.live();
    for p in peers {
        let l = live.get(&p.id);
        let stats = l.and_then(|l| l.connection.as_ref()).map(|c| c.stats());
        let wire_now = stats.as_ref().map_or((0, 0), |st| (st.udp_tx.bytes, st.udp_rx.bytes));
        let behind = p
            .accounts
            .iter()
            .filter_map(|a| {
                let ours = versions.get(a)?;
                let theirs = l.and_then(|l| l.peer_has.get(a))?;
                Some(control::Lag::between(a, ours, theirs))
            })
            .collect();
        out.peers.push(control::PeerStatus {
            node_id: p.id.to_string(),
            addr: p.addr.to_string(),
            connected: l.is_some_and(|l| l.connected),
            last_contact_secs: l.and_then(|l| l.last_contact).map(|t| t.elapsed().as_secs()),
            bytes_in: l.map_or(0, |l| l.bytes_done.1 + l.bytes_now.1),
            bytes_out: l.map_or(0, |l| l.bytes_done.0 + l.bytes_now.0),
            wire_in: l.map_or(0, |l| l.wire_done.1 + wire_now.1),
            wire_out: l.map_or(0, |l| l.wire_done.0 + wire_now.0),
            wire_lost: stats.as_ref().map_or(0, |st| st.path.lost_bytes),
            rtt_ms: stats.as_ref().map_or(0.0, |st| st.path.rtt.as_secs_f64() * 1000.0),
            cwnd: stats.as_ref().map_or(0, |st| st.path.cwnd),
            behind,
        });
    }
    out
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One housekeeping pass: the peers' acknowledgements written down, the
/// op log compacted and bodies collected up to what every pinned peer
/// holds (see `Store::housekeep`).
fn housekeep(store: &Store, peers: &[Peer], hub: &Hub, config: &crate::config::Housekeeping) {
    let pinned: Vec<(starling_model::ReplicaId, Vec<String>)> =
        peers.iter().map(|p| (p.id.replica(), p.accounts.clone())).collect();
    let alive: Vec<starling_model::ReplicaId> =
        hub.live().iter().filter(|(_, l)| l.connected).map(|(id, _)| id.replica()).collect();
    let plan = starling_store::Housekeeping {
        now_ms: unix_ms(),
        horizon_ms: config.horizon.as_millis() as u64,
        peers: &pinned,
        alive: &alive,
        compact_log: config.compact_log,
        collect_bodies: config.collect_bodies,
        batch: HOUSEKEEPING_BATCH,
    };
    match store.housekeep(&plan) {
        Ok(done) => {
            for a in &done.accounts {
                if a.ops_dropped > 0 {
                    tracing::info!(account = %a.account, "log compacted: {} ops dropped", a.ops_dropped);
                }
                if !a.past_horizon.is_empty() {
                    tracing::warn!(
                        account = %a.account,
                        "{} peers silent past the horizon no longer hold compaction back",
                        a.past_horizon.len()
                    );
                }
            }
            let c = done.collected;
            if c.bodies > 0 {
                tracing::info!("bodies collected: {} ({} parts), {} bytes freed", c.bodies, c.parts, c.bytes);
            }
            println!(
                "housekeeping: {} ops dropped, {} bodies collected",
                done.accounts.iter().map(|a| a.ops_dropped).sum::<u64>(),
                c.bodies
            );
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
        Err(e) => tracing::warn!("housekeeping: {e}"),
    }
}

/// Compacts the store file if enough of it is free (every store operation
/// waits meanwhile); `last` is set when it ran or found nothing to do, so
/// that one left for later (the store was in use) is tried at the next
/// housekeeping.
fn compact_file(store: &Store, config: &crate::config::Housekeeping, last: &mut Option<std::time::Instant>) {
    match store.compact_file(config.file_compact_free_percent) {
        Ok(done) => {
            *last = Some(std::time::Instant::now());
            if let Some(c) = done {
                tracing::info!(
                    "store file compacted from {} to {} bytes; operations waited {} ms",
                    c.before,
                    c.after,
                    c.millis
                );
                println!("store: file compacted online from {} to {} bytes in {} ms", c.before, c.after, c.millis);
            }
        }
        Err(starling_store::FileCompactError::Busy) => tracing::debug!("store file compaction left for later: in use"),
        Err(e) => {
            *last = Some(std::time::Instant::now());
            tracing::warn!("store file compaction: {e}");
        }
    }
}

/// Reports the account's version (a line the tests and operators can follow).
/// Counting missing bodies walks the store's list of them (O(missing)), so
/// only when it may have changed (`bodies`).
fn report(store: &Store, account: &str, bodies: bool) {
    if let Ok(vv) = store.version(account) {
        let ops: u64 = vv.iter().map(|(_, c)| c).sum();
        println!("account {account}: {ops} ops");
    }
    if bodies {
        if let Ok(missing) = store.missing_count(account) {
            println!("bodies {account}: {missing} missing");
        }
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Batches of stored bodies queued for the peer links; a link that falls
/// behind misses some (its peer then sweeps on its own retry timer).
const ARRIVED_QUEUED: usize = 64;

/// On-demand body requests queued for the peer links; a link that falls
/// behind skips requests (the client's wait then ends with NO [UNAVAILABLE]).
const WANTED_QUEUED: usize = 64;

/// What the sessions of one node share.
#[derive(Clone)]
pub(crate) struct Hub {
    /// Accounts just committed (locally or from a peer): every link pushes.
    changes: broadcast::Sender<String>,
    /// Bumped when some peer lacked a body: every link then sweeps for
    /// missing bodies on its own retry timer.
    bodies_lacking: Arc<watch::Sender<u64>>,
    /// What `starling status` shows of each peer.
    live: Arc<Mutex<BTreeMap<NodeId, PeerLive>>>,
    /// Bodies an IMAP FETCH waits for (account, (id, size)): every link of
    /// the account asks its peer ([`starling_imap::ondemand`]).
    wanted: broadcast::Sender<WantedBodies>,
    /// Bodies a link just stored: every link tells its peer if it had
    /// answered "not here" for one of them.
    arrived: broadcast::Sender<Arc<Vec<starling_model::BlobId>>>,
    /// Gossip membership, once started.
    pub(crate) cluster: Arc<std::sync::OnceLock<crate::cluster::Cluster>>,
    /// Every open connection to a peer, with a sync session or only
    /// gossip (what membership datagrams travel on).
    conns: Arc<Mutex<BTreeMap<NodeId, quinn::Connection>>>,
    /// This node.
    me: NodeId,
    /// Links going up and down, for the status page.
    links: Arc<Mutex<crate::status_page::LinkLog>>,
    /// Bumped when a link goes up or down or an account changes: the status
    /// page pushes a new view.
    status_changed: Arc<watch::Sender<u64>>,
    /// Deleted accounts the last purge pass left, with what holds each back.
    purge_waits: Arc<Mutex<BTreeMap<String, String>>>,
    /// Bytes per part of a snapshot this node sends (`[cluster]
    /// snapshot_part_kib`).
    snapshot_part: usize,
}

/// A connection to a peer registered for gossip while it lives: its
/// datagrams go to the membership, and the membership's to it.
pub(crate) struct Attached {
    hub: Hub,
    peer: NodeId,
    stable_id: usize,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Hub {
    /// Registers `conn` to `peer` (see [`Attached`]).
    pub(crate) fn attach(&self, conn: &quinn::Connection, peer: &Peer) -> Attached {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).insert(peer.id, conn.clone());
        let reader = self.cluster.get().cloned().map(|cluster| {
            cluster.tell(crate::cluster::Input::Connected(peer.clone()));
            let (c, id) = (conn.clone(), peer.id);
            tokio::spawn(async move {
                while let Ok(d) = c.read_datagram().await {
                    cluster.tell(crate::cluster::Input::Datagram(id, d));
                }
            })
        });
        Attached { hub: self.clone(), peer: peer.id, stable_id: conn.stable_id(), reader }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
        let mut conns = self.hub.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.get(&self.peer).is_some_and(|c| c.stable_id() == self.stable_id) {
            conns.remove(&self.peer);
        }
    }
}

/// An account's bodies a client waits for: (id, size).
type WantedBodies = (String, Arc<Vec<(starling_model::BlobId, u64)>>);

impl Hub {
    /// This node's links that have carried a session, those up first (at
    /// most `max`), as its peers are told them for their status pages.
    pub(crate) fn link_briefs(&self, store: &Store, max: usize) -> Vec<(NodeId, crate::cluster::LinkBrief)> {
        let live = self.live();
        let mut out: Vec<(NodeId, crate::cluster::LinkBrief)> = live
            .iter()
            .filter(|(_, l)| l.generation > 0)
            .map(|(id, l)| {
                let lags: Vec<control::Lag> = l
                    .peer_has
                    .iter()
                    .filter_map(|(a, theirs)| Some(control::Lag::between(a, &store.version(a).ok()?, theirs)))
                    .collect();
                let known = !lags.is_empty();
                let brief = crate::cluster::LinkBrief {
                    peer: id.to_string(),
                    up: l.connected,
                    peer_lacks: known.then(|| lags.iter().map(|g| g.peer_lacks).sum()),
                    lacks: known.then(|| lags.iter().map(|g| g.we_lack).sum()),
                    bytes_out: l.bytes_done.0 + l.bytes_now.0,
                    bytes_in: l.bytes_done.1 + l.bytes_now.1,
                };
                (*id, brief)
            })
            .collect();
        out.sort_by_key(|(_, b)| !b.up);
        out.truncate(max);
        out
    }

    /// Peers with a sync session now.
    pub(crate) fn sessions(&self) -> Vec<NodeId> {
        self.live().iter().filter(|(_, l)| l.connected).map(|(id, _)| *id).collect()
    }

    /// Closes the connection to `id`, if any: its session ends (a peer
    /// removed, or pinned with other accounts, which a new session takes).
    pub(crate) fn disconnect(&self, id: &NodeId, why: &'static str) {
        if let Some(c) = self.connection(id) {
            c.close(2u32.into(), why.as_bytes());
        }
    }

    /// The open connection to `id`, if any (a sync session or only gossip).
    pub(crate) fn connection(&self, id: &NodeId) -> Option<quinn::Connection> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// The peer table. A session that panicked while holding it left
    /// nothing half-written that matters (counters and flags), so a
    /// poisoned lock is taken as it is rather than failing every session.
    fn live(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, PeerLive>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a link to `peer` going up or down (the status page's events).
    fn link_event(&self, peer: NodeId, up: bool, reason: &str) {
        let mut log = self.links.lock().unwrap_or_else(|p| p.into_inner());
        log.record(unix_ms(), &self.me.to_string(), &peer.to_string(), up, reason);
        drop(log);
        self.status_changed.send_modify(|g| *g += 1);
    }
}

/// A peer as the sessions last saw it.
#[derive(Default)]
struct PeerLive {
    /// Connections to it so far; the newest one owns the fields below.
    generation: u64,
    connected: bool,
    last_contact: Option<Instant>,
    /// Bytes of sessions that ended, and of the current one.
    bytes_done: (u64, u64),
    bytes_now: (u64, u64),
    /// UDP bytes (QUIC and TLS included) of connections that ended: (out, in).
    wire_done: (u64, u64),
    /// The current connection (its counters are read live).
    connection: Option<quinn::Connection>,
    /// What the peer last said it has, per account.
    peer_has: BTreeMap<String, starling_model::VersionVector>,
}

/// Bytes of received frames held in memory per connection at most, from
/// the length prefix to the end of their handling (one whole frame of
/// [`starling_net::FRAME_BYTES_MAX`] always fits): reading stops, and QUIC
/// flow control holds the peer back, while it is used up.
const INBOUND_BYTES: usize = starling_net::FRAME_BYTES_MAX + (32 << 20);
/// Received frames queued between the stream readers and the session, at
/// most (their bytes are bounded by [`INBOUND_BYTES`]). With 64, a node
/// receiving 12 KB bodies held 0.8 MB while it committed the last batch,
/// and the sender stood still for every fsync: an initial sync ran at the
/// pace of the receiver's commits, not of its disk or the link.
const INBOUND_FRAMES: usize = 1024;
/// Body frames handed to the writer task and not yet written, at most.
const BLOB_FRAMES_QUEUED: usize = 4;

/// A received frame and its share of the connection's inbound budget.
type Inbound = (Vec<u8>, tokio::sync::OwnedSemaphorePermit);

/// Reads frames from a stream into `tx`, each within the inbound budget.
async fn read_frames(mut recv: quinn::RecvStream, budget: Arc<tokio::sync::Semaphore>, tx: mpsc::Sender<Inbound>) {
    while let Ok(Some(f)) = read_frame(&mut recv, &budget).await {
        if tx.send(f).await.is_err() {
            break;
        }
    }
}

/// Hands the session's metadata frames to the writer; false if its queue
/// was full (a frame was dropped: the session must end).
fn queue_metadata(out: &mpsc::Sender<Vec<u8>>, mut next: impl FnMut() -> Option<Vec<u8>>) -> bool {
    let mut fits = true;
    while let Some(f) = next() {
        fits &= !matches!(out.try_send(f), Err(mpsc::error::TrySendError::Full(_)));
    }
    fits
}

/// One sync session over one connection; returns why it ended.
pub(crate) async fn session(
    conn: PeerConnection,
    dialer: bool,
    me: starling_model::ReplicaId,
    peer: &Peer,
    store: Arc<Store>,
    hub: Hub,
) -> String {
    let streams = if dialer { conn.connection.open_bi().await } else { conn.connection.accept_bi().await };
    let (send, recv) = match streams {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    // Off the reactor: a snapshot held whole from a stop is installed here.
    let link = tokio::task::block_in_place(|| {
        PeerLink::new(&store, me, Some(peer.id.replica()), &peer.accounts, peer.policy.clone())
    });
    let mut link = match link {
        Ok(l) => l,
        Err(e) => return e.to_string(),
    };
    link.set_snapshot_part(hub.snapshot_part);
    if !link.purged().is_empty() {
        tracing::debug!(peer = %peer.id, purged = ?link.purged(), "accounts deleted and purged here: told if the peer names them");
    }
    for (account, into_empty) in link.installed() {
        tracing::info!(peer = %peer.id, account, into_empty, "a snapshot from this peer was held whole, its install cut off by a stop: installed");
    }
    for (account, got, total) in link.offered() {
        tracing::info!(peer = %peer.id, account, got, total, "part of a snapshot from this peer is held: offered, for the peer to send the rest");
    }
    // Reader tasks: frames arrive on a channel, so waiting is cancel-safe;
    // together they hold at most INBOUND_BYTES of frames. Bodies come on
    // unidirectional streams the peer opens (see the body writer below).
    let budget = Arc::new(tokio::sync::Semaphore::new(INBOUND_BYTES));
    let (frames_tx, mut frames) = mpsc::channel::<Inbound>(INBOUND_FRAMES);
    let reader = tokio::spawn(read_frames(recv, budget.clone(), frames_tx.clone()));
    let blob_conn = conn.connection.clone();
    let blob_reader = tokio::spawn(async move {
        while let Ok(uni) = blob_conn.accept_uni().await {
            tokio::spawn(read_frames(uni, budget.clone(), frames_tx.clone()));
        }
    });
    // Writer tasks, so that this loop never waits on the network. Metadata
    // frames are few by construction (the session's windows bound them);
    // bodies go through a short bounded queue, filled only as it drains,
    // on their own stream so a 5 MB attachment never delays metadata.
    // Bounded by what the session's windows let it queue: chunks in flight
    // and acknowledgements per account, requests, and answers for bodies the
    // peer asked for (at most PEER_WANTS_MAX). More would be a bug: the
    // session then ends rather than grow.
    let meta_max = starling_sync::queue_bounds(link.accounts().len().max(1)).transmit + starling_sync::PEER_WANTS_MAX;
    let (meta_out, mut meta_rx) = mpsc::channel::<Vec<u8>>(meta_max);
    let mut meta_writer = tokio::spawn(async move {
        let mut send = send;
        while let Some(f) = meta_rx.recv().await {
            if let Err(e) = write_frame(&mut send, &f).await {
                return e.to_string();
            }
        }
        let _ = send.finish();
        "stream closed".to_string()
    });
    let (blobs_out, mut blobs_rx) = mpsc::channel::<Vec<u8>>(BLOB_FRAMES_QUEUED);
    let blob_conn = conn.connection.clone();
    let blob_writer = tokio::spawn(async move {
        let mut stream = None;
        while let Some(f) = blobs_rx.recv().await {
            if stream.is_none() {
                stream = blob_conn.open_uni().await.ok();
            }
            let Some(st) = stream.as_mut() else { break };
            if write_frame(st, &f).await.is_err() {
                break;
            }
        }
    });
    let mut local = hub.changes.subscribe();
    let mut lacking = hub.bodies_lacking.subscribe();
    let mut wanted = hub.wanted.subscribe();
    let mut arrived = hub.arrived.subscribe();
    let mut probes = store.probes();
    // This connection's generation: a connection that ends after a newer
    // one to the same peer began (a peer restarted before the old one timed
    // out) must not overwrite the newer one's state.
    let generation = {
        let mut live = hub.live();
        let l = live.entry(peer.id).or_default();
        l.generation += 1;
        l.connected = true;
        l.connection = Some(conn.connection.clone());
        l.bytes_now = (0, 0);
        l.generation
    };
    hub.link_event(peer.id, true, "connected");
    let mut in_flight_before = 0;
    // What the link last committed (relayed to the other links), or why it failed.
    let mut outcome: Result<Progress, LinkError> = Ok(Progress::default());
    let end = loop {
        {
            let mut live = hub.live();
            let l = live.entry(peer.id).or_default();
            if l.generation == generation {
                l.bytes_now = link.session().bytes();
            }
            for a in link.accounts() {
                if let Some(vv) = link.session().peer_has(a) {
                    l.peer_has.insert(a.clone(), vv.clone());
                }
            }
        }
        match std::mem::replace(&mut outcome, Ok(Progress::default())) {
            Ok(progress) => {
                if progress.snapshots_resumed > 0 {
                    tracing::info!(peer = %peer.id, "the peer holds part of a snapshot sent before: sending the rest");
                }
                if progress.snapshots != (0, 0) {
                    tracing::info!(peer = %peer.id, into_empty = progress.snapshots.0, into_non_empty = progress.snapshots.1, "snapshot installed");
                }
                for account in &progress.peer_purged {
                    tracing::info!(peer = %peer.id, account, "the peer deleted and purged the account: deletion taken here");
                }
                for account in progress.committed {
                    report(&store, &account, progress.new_messages);
                }
                if progress.bodies_damaged {
                    tracing::warn!(peer = %peer.id, "a body asked for was damaged here: fetching a good copy");
                }
                if progress.bodies_lacking || progress.bodies_damaged {
                    hub.bodies_lacking.send_modify(|g| *g += 1);
                }
                if !progress.stored.is_empty() {
                    let _ = hub.arrived.send(Arc::new(progress.stored));
                }
                // Counting what is still missing scans the account: only when
                // this link's requests have all been answered (bodies or
                // "not here"), not after every batch.
                let in_flight = link.session().blobs_in_flight();
                if in_flight == 0 && (in_flight_before > 0 || progress.bodies > 0) {
                    for a in link.accounts() {
                        report(&store, a, true);
                    }
                }
                in_flight_before = in_flight;
            }
            Err(e) => {
                // A protocol error leaves a `Refused` frame to send first.
                while let Some(f) = link.poll_transmit() {
                    let _ = meta_out.try_send(f);
                }
                drop(meta_out);
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut meta_writer).await;
                break e.to_string();
            }
        }
        if !queue_metadata(&meta_out, || link.poll_transmit()) {
            break format!("metadata queue over its bound of {meta_max} frames");
        }
        // Taking frames made room: read more of what the peer asked for.
        if link.has_work() {
            outcome = tokio::task::block_in_place(|| link.pump(&store));
            continue;
        }
        if meta_writer.is_finished() {
            break "peer stream failed".into();
        }
        if link.is_closed() {
            break "closed by protocol".into();
        }
        // The session's timers (the retry sweep for missing bodies).
        let due = link.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                outcome = tokio::task::block_in_place(|| link.handle_timeout(&store, Instant::now()));
            }
            // Room for body frames: send what fits. More bodies are read
            // (the loop's `has_work`) once the session's buffer is half gone,
            // not after every frame: each read leaves the reactor thread.
            permit = blobs_out.reserve(), if link.has_blob_to_send() => {
                let Ok(permit) = permit else { break "body stream closed".into() };
                if let Some(f) = link.poll_transmit_blob() {
                    permit.send(f);
                }
                while link.has_blob_to_send() {
                    let Ok(permit) = blobs_out.try_reserve() else { break };
                    if let Some(f) = link.poll_transmit_blob() {
                        permit.send(f);
                    }
                }
            }
            // A client waits for bodies left out here: ask this peer too.
            w = wanted.recv() => match w {
                Ok((account, ids)) => {
                    if link.accounts().contains(&account) {
                        link.fetch_bodies(ids.iter().copied());
                        outcome = tokio::task::block_in_place(|| link.pump(&store));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break "shutting down".into(),
            },
            // Bodies stored by some link: this peer may have asked for them.
            a = arrived.recv() => match a {
                Ok(ids) => link.bodies_here(&ids),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break "shutting down".into(),
            },
            // A replica about to show new UIDs asks what this peer has now.
            changed = probes.changed() => {
                if changed.is_err() {
                    break "shutting down".into();
                }
                link.probe_due(&store);
            }
            // Some peer lacked a body: this link sweeps too.
            changed = lacking.changed() => {
                if changed.is_err() {
                    break "shutting down".into();
                }
                link.arm_retry(Instant::now());
            }
            f = frames.recv() => match f {
                Some(f) => {
                    hub.live().entry(peer.id).or_default().last_contact = Some(Instant::now());
                    // Frames already waiting are handled together (bodies in one commit).
                    let mut batch = vec![f];
                    let mut size = batch[0].0.len();
                    while size < BATCH_BYTES {
                        match frames.try_recv() {
                            Ok(f) => {
                                size += f.0.len();
                                batch.push(f);
                            }
                            Err(_) => break,
                        }
                    }
                    let bytes: Vec<&[u8]> = batch.iter().map(|(f, _)| f.as_slice()).collect();
                    let mut fits = true;
                    outcome = tokio::task::block_in_place(|| {
                        link.handle_timeout(&store, Instant::now())?;
                        // What the frames free (the next body requests) goes
                        // out before their bodies are committed.
                        link.handle_frames_sending_first(&store, &bytes, |s| {
                            fits = queue_metadata(&meta_out, || s.poll_transmit());
                        })
                    });
                    if !fits {
                        break format!("metadata queue over its bound of {meta_max} frames");
                    }
                    // The frames' budget is released once they are handled.
                    drop(batch);
                }
                None => break "peer closed the stream".into(),
            },
            c = local.recv() => match c {
                Ok(account) => outcome = tokio::task::block_in_place(|| link.local_changed(&store, &account)),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    outcome = tokio::task::block_in_place(|| {
                        let mut all = Progress::default();
                        for a in link.accounts().to_vec() {
                            all.bodies += link.local_changed(&store, &a)?.bodies;
                        }
                        Ok(all)
                    });
                }
                Err(broadcast::error::RecvError::Closed) => break "shutting down".into(),
            },
        }
    };
    {
        let mut live = hub.live();
        let l = live.entry(peer.id).or_default();
        let (o, i) = link.session().bytes();
        l.bytes_done = (l.bytes_done.0 + o, l.bytes_done.1 + i);
        let st = conn.connection.stats();
        l.wire_done = (l.wire_done.0 + st.udp_tx.bytes, l.wire_done.1 + st.udp_rx.bytes);
        if l.generation == generation {
            l.connected = false;
            l.bytes_now = (0, 0);
            l.connection = None;
            drop(live);
            hub.link_event(peer.id, false, &end);
        }
    }
    reader.abort();
    blob_reader.abort();
    blob_writer.abort();
    meta_writer.abort();
    conn.connection.close(0u32.into(), b"bye");
    end
}
