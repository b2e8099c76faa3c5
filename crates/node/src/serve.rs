//! `starling serve`: the peer endpoint, one sync session per connected peer,
//! each driving `starling-sync` against the store. Dialing is one-sided (the
//! node with the larger id dials, with backoff) so a pair holds one connection.

use crate::peers::Peer;
use starling_net::{read_frame, write_frame, NodeIdentity, PeerConnection, PeerEndpoint, PeerSet};
use starling_store::{Store, StoreError};
use starling_sync::{Event, Session};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Runs until SIGINT or SIGTERM.
pub fn run(store: Store, identity: NodeIdentity, peers: Vec<Peer>, listen: SocketAddr) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let store = Arc::new(store);
        let identity = Arc::new(identity);
        let pinned = Arc::new(PeerSet::new(peers.iter().map(|p| p.id)));
        let endpoint = Arc::new(PeerEndpoint::bind(listen, identity.clone(), pinned).map_err(|e| e.to_string())?);
        let (changes, _) = broadcast::channel::<String>(1024);
        let peers = Arc::new(peers);
        for a in store.accounts() {
            report(&store, &a);
        }
        println!(
            "peers: listening on {} (UDP), {} pinned",
            endpoint.local_addr().map_err(|e| e.to_string())?,
            peers.len()
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();

        // Accept: any pinned peer (the handshake already refused the others).
        {
            let (endpoint, store, peers, changes, me) =
                (endpoint.clone(), store.clone(), peers.clone(), changes.clone(), identity.id());
            tokio::spawn(async move {
                while let Some(conn) = endpoint.accept().await {
                    let Some(peer) = peers.iter().find(|p| p.id == conn.peer).cloned() else { continue };
                    let (store, changes) = (store.clone(), changes.clone());
                    tokio::spawn(async move {
                        let end = session(conn, false, me.replica(), &peer, store, changes).await;
                        eprintln!("peer {:?}: session ended: {end}", peer.id);
                    });
                }
            });
        }
        // Dial the peers with a smaller id, forever, with backoff.
        for peer in peers.iter().filter(|p| p.id < identity.id()).cloned() {
            let (endpoint, store, changes, me) = (endpoint.clone(), store.clone(), changes.clone(), identity.id());
            tokio::spawn(async move {
                let mut backoff = Duration::from_millis(100);
                loop {
                    match endpoint.connect(peer.addr, peer.id).await {
                        Ok(conn) => {
                            backoff = Duration::from_millis(100);
                            let end = session(conn, true, me.replica(), &peer, store.clone(), changes.clone()).await;
                            eprintln!("peer {:?}: session ended: {end}", peer.id);
                        }
                        Err(e) => eprintln!("peer {:?}: {e}", peer.id),
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            });
        }
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        endpoint.close();
        Ok(())
    })
}

/// Reports the account's version (a line the tests and operators can follow).
fn report(store: &Store, account: &str) {
    if let Ok(vv) = store.version(account) {
        let ops: u64 = vv.iter().map(|(_, c)| c).sum();
        println!("account {account}: {ops} ops");
    }
    if let Ok(missing) = store.missing_blobs(account) {
        println!("bodies {account}: {} missing", missing.len());
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Bodies of `account` this node lacks and its policy for `peer` wants.
fn wanted_missing(store: &Store, account: &str, policy: &starling_sync::BodyPolicy) -> Vec<starling_model::BlobId> {
    let mut ids: Vec<_> = store
        .missing_bodies(account)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| policy.wants_body(m.mailbox.as_deref(), m.size, m.internal_date))
        .map(|m| m.blob)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// One sync session over one connection; returns why it ended.
async fn session(
    conn: PeerConnection,
    dialer: bool,
    me: starling_model::ReplicaId,
    peer: &Peer,
    store: Arc<Store>,
    changes: broadcast::Sender<String>,
) -> String {
    let streams = if dialer { conn.connection.open_bi().await } else { conn.connection.accept_bi().await };
    let (mut send, mut recv) = match streams {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    let existing = store.accounts();
    let accounts: Vec<(String, starling_model::VersionVector)> = peer
        .accounts
        .iter()
        .filter(|a| existing.contains(a))
        .filter_map(|a| store.version(a).ok().map(|v| (a.clone(), v)))
        .collect();
    let mut s = Session::new(me, Some(peer.id.replica()), accounts);
    // Reader tasks: frames arrive on a channel, so waiting is cancel-safe.
    // Bodies come on unidirectional streams the peer opens (see `blob_writer`).
    let (frames_tx, mut frames) = mpsc::channel::<Vec<u8>>(64);
    let meta_tx = frames_tx.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(f)) = read_frame(&mut recv).await {
            if meta_tx.send(f).await.is_err() {
                break;
            }
        }
    });
    let blob_conn = conn.connection.clone();
    let blob_reader = tokio::spawn(async move {
        while let Ok(mut uni) = blob_conn.accept_uni().await {
            let tx = frames_tx.clone();
            tokio::spawn(async move {
                while let Ok(Some(f)) = read_frame(&mut uni).await {
                    if tx.send(f).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    // Bodies go out through their own task and stream: a 5 MB attachment
    // never delays the metadata frames written below.
    let (blobs_out, mut blobs_rx) = mpsc::unbounded_channel::<Vec<u8>>();
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
    let mut local = changes.subscribe();
    let shared: Vec<String> = peer.accounts.iter().filter(|a| existing.contains(a)).cloned().collect();
    let mut retry_bodies = false;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let end = loop {
        let mut failed = None;
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::Blob { bytes, .. } => {
                    bodies.push(bytes);
                    continue;
                }
                // The peer lacks it (yet): sweep again later, here and on other peers.
                Event::BlobMissing { .. } => {
                    retry_bodies = true;
                    continue;
                }
                _ => {}
            }
            if let Err(e) = tokio::task::block_in_place(|| answer(&mut s, ev, &store, &changes, &peer.policy)) {
                failed = Some(e);
                break;
            }
        }
        // Bodies that arrived together are stored in one transaction.
        if !bodies.is_empty() {
            let refs: Vec<&[u8]> = bodies.iter().map(|b| b.as_slice()).collect();
            if let Err(e) = tokio::task::block_in_place(|| store.put_blobs(&refs)) {
                failed = Some(e.to_string());
            }
            for a in &shared {
                report(&store, a);
            }
        }
        if let Some(e) = failed {
            break e;
        }
        while let Some(f) = s.poll_transmit_blob() {
            let _ = blobs_out.send(f);
        }
        let mut failed = None;
        while let Some(f) = s.poll_transmit() {
            if let Err(e) = write_frame(&mut send, &f).await {
                failed = Some(e.to_string());
                break;
            }
        }
        if let Some(e) = failed {
            break e;
        }
        if s.is_closed() {
            break "closed by protocol".into();
        }
        tokio::select! {
            _ = tick.tick(), if retry_bodies => {
                if s.blobs_in_flight() == 0 {
                    let missing: Vec<_> = tokio::task::block_in_place(|| {
                        shared.iter().flat_map(|a| wanted_missing(&store, a, &peer.policy)).collect()
                    });
                    retry_bodies = !missing.is_empty();
                    s.want_blobs(missing);
                }
            }
            f = frames.recv() => match f {
                Some(f) => {
                    if let Err(e) = s.handle_frame(&f) {
                        while let Some(f) = s.poll_transmit() {
                            let _ = write_frame(&mut send, &f).await;
                        }
                        break e.to_string();
                    }
                }
                None => break "peer closed the stream".into(),
            },
            c = local.recv() => match c {
                Ok(account) => {
                    if let Ok(vv) = store.version(&account) {
                        s.local_changed(&account, vv);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    for a in store.accounts() {
                        if let Ok(vv) = store.version(&a) {
                            s.local_changed(&a, vv);
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break "shutting down".into(),
            },
        }
    };
    reader.abort();
    blob_reader.abort();
    blob_writer.abort();
    conn.connection.close(0u32.into(), b"bye");
    end
}

/// Answers one session event against the store.
fn answer(
    s: &mut Session,
    ev: Event,
    store: &Store,
    changes: &broadcast::Sender<String>,
    policy: &starling_sync::BodyPolicy,
) -> Result<(), String> {
    match ev {
        Event::NeedOps { account, since } => match store.ops_since(&account, &since) {
            Ok(ops) => s.send_ops(&account, &ops),
            Err(StoreError::Compacted) => {
                let snap = store.snapshot(&account).map_err(|e| e.to_string())?;
                let vv = store.version(&account).map_err(|e| e.to_string())?;
                s.send_snapshot(&account, snap, &vv);
            }
            Err(e) => return Err(e.to_string()),
        },
        Event::Ops { account, ops } => {
            store.write(&account, |b| b.apply(ops.iter().cloned())).map_err(|e| e.to_string())?;
            // Bodies follow the metadata, as far as this peer's policy says.
            let reader = store.read(&account).map_err(|e| e.to_string())?;
            let mut missing = Vec::new();
            for id in policy.eager_blobs(&ops, &reader.names().tree) {
                if !store.has_blob(id).map_err(|e| e.to_string())? {
                    missing.push(id);
                }
            }
            s.want_blobs(missing);
            let vv = store.version(&account).map_err(|e| e.to_string())?;
            s.applied(&account, vv);
            let _ = changes.send(account.clone());
            report(store, &account);
        }
        Event::Snapshot { account, bytes } => {
            store.install_snapshot(&account, &bytes).map_err(|e| e.to_string())?;
            s.want_blobs(store.missing_blobs(&account).map_err(|e| e.to_string())?);
            let vv = store.version(&account).map_err(|e| e.to_string())?;
            s.applied(&account, vv);
            let _ = changes.send(account.clone());
            report(store, &account);
        }
        Event::BlobsWanted { ids } => {
            for id in ids {
                let bytes = store.blob(id).map_err(|e| e.to_string())?;
                s.send_blob(id, bytes);
            }
        }
        Event::Blob { bytes, .. } => {
            store.put_blob(&bytes).map_err(|e| e.to_string())?;
        }
        Event::BlobMissing { .. } => {}
        Event::Open { peer, accounts } => eprintln!("peer {peer:?}: open, accounts {accounts:?}"),
        Event::Closed { reason } => eprintln!("session closed: {reason}"),
    }
    Ok(())
}
