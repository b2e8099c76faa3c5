//! Real QUIC sockets on loopback: pinned peers connect both ways and move
//! frames; an unknown certificate is refused; identities persist.

use starling_net::{read_frame, write_frame, NodeId, NodeIdentity, PeerEndpoint, PeerSet};
use std::sync::Arc;

fn identity(dir: &std::path::Path, name: &str) -> Arc<NodeIdentity> {
    Arc::new(NodeIdentity::load_or_create(&dir.join(name)).unwrap())
}

#[tokio::test]
async fn pinned_peers_talk_and_strangers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (identity(dir.path(), "a"), identity(dir.path(), "b"), identity(dir.path(), "c"));
    let any = "127.0.0.1:0".parse().unwrap();
    let ea = Arc::new(PeerEndpoint::bind(any, a.clone(), Arc::new(PeerSet::new([b.id()]))).unwrap());
    let eb = PeerEndpoint::bind(any, b.clone(), Arc::new(PeerSet::new([a.id()]))).unwrap();
    let ec = PeerEndpoint::bind(any, c.clone(), Arc::new(PeerSet::new([a.id()]))).unwrap();
    let addr_a = ea.local_addr().unwrap();

    // A serves: echoes one frame reversed per connection, reports who came.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = ea.accept().await {
            let (seen_tx, ea) = (seen_tx.clone(), ea.clone());
            tokio::spawn(async move {
                let Ok(conn) = ea.handshake(incoming).await else { return };
                let _ = seen_tx.send(conn.peer);
                let Ok((mut send, mut recv)) = conn.connection.accept_bi().await else { return };
                if let Ok(Some(got)) = read_frame(&mut recv, &budget()).await {
                    let _ = write_frame(&mut send, &got.0.iter().rev().copied().collect::<Vec<_>>()).await;
                    let _ = send.finish();
                }
                let _ = conn.connection.closed().await;
            });
        }
    });
    let conn = eb.connect(addr_a, a.id()).await.unwrap();
    assert_eq!(conn.peer, a.id());
    let (mut send, mut recv) = conn.connection.open_bi().await.unwrap();
    write_frame(&mut send, b"hello").await.unwrap();
    assert_eq!(read_frame(&mut recv, &budget()).await.unwrap().unwrap().0, b"olleh");
    conn.connection.close(0u32.into(), b"done");
    assert_eq!(seen_rx.recv().await.unwrap(), b.id(), "A saw B's pinned identity");

    // C pins A, but A does not pin C: the handshake fails or the connection dies.
    let refused = async {
        let conn = ec.connect(addr_a, a.id()).await?;
        let (mut s, mut r) =
            conn.connection.open_bi().await.map_err(|e| starling_net::NetError::Connection(e.to_string()))?;
        write_frame(&mut s, b"x").await?;
        read_frame(&mut r, &budget()).await
    };
    let out = tokio::time::timeout(std::time::Duration::from_secs(5), refused).await.expect("no hang");
    assert!(!matches!(out, Ok(Some(_))), "stranger got an answer");

    assert!(seen_rx.try_recv().is_err(), "A never accepted the stranger");
    // B expecting a different node than the one at that address is refused too.
    let wrong = eb.connect(addr_a, c.id()).await;
    assert!(wrong.is_err());
}

/// Serves echo connections on `ea` the way `starling serve` does: each
/// handshake in a task of its own.
fn serve_echo(ea: PeerEndpoint) {
    let ea = Arc::new(ea);
    tokio::spawn(async move {
        while let Some(incoming) = ea.accept().await {
            let ea = ea.clone();
            tokio::spawn(async move {
                let Ok(conn) = ea.handshake(incoming).await else { return };
                let Ok((mut send, mut recv)) = conn.connection.accept_bi().await else { return };
                if let Ok(Some(got)) = read_frame(&mut recv, &budget()).await {
                    let _ = write_frame(&mut send, &got.0).await;
                    let _ = send.finish();
                }
                let _ = conn.connection.closed().await;
            });
        }
    });
}

/// A peer whose handshake stalls (its first packet arrives, nothing after)
/// must not hold up another peer: handshakes run side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_does_not_block_other_peers() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (identity(dir.path(), "a"), identity(dir.path(), "b"), identity(dir.path(), "c"));
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let ea = PeerEndpoint::bind(any, a.clone(), Arc::new(PeerSet::new([b.id(), c.id()]))).unwrap();
    let eb = PeerEndpoint::bind(any, b.clone(), Arc::new(PeerSet::new([a.id()]))).unwrap();
    let ec = PeerEndpoint::bind(any, c.clone(), Arc::new(PeerSet::new([a.id()]))).unwrap();
    let addr_a = ea.local_addr().unwrap();
    serve_echo(ea);
    // A relay that passes C's first datagram to A and drops everything else.
    let relay = tokio::net::UdpSocket::bind(any).await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let mut first = Some(first_tx);
        loop {
            let Ok((n, _)) = relay.recv_from(&mut buf).await else { return };
            if let Some(tx) = first.take() {
                let _ = relay.send_to(&buf[..n], addr_a).await;
                let _ = tx.send(());
            }
        }
    });
    let a_id = a.id();
    let stalled = tokio::spawn(async move { ec.connect(relay_addr, a_id).await.map(|_| ()) });
    first_rx.await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // B meanwhile connects directly and is served at once.
    let started = std::time::Instant::now();
    let served = async {
        let conn = eb.connect(addr_a, a.id()).await?;
        let (mut s, mut r) =
            conn.connection.open_bi().await.map_err(|e| starling_net::NetError::Connection(e.to_string()))?;
        write_frame(&mut s, b"ping").await?;
        read_frame(&mut r, &budget()).await
    };
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), served).await;
    let got = got.expect("B was held up behind C's stalled handshake").unwrap().unwrap();
    assert_eq!(got.0, b"ping");
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "B took {:?}", started.elapsed());
    assert!(!stalled.is_finished(), "C's handshake was meant to stall");
    stalled.abort();
}

#[test]
fn identity_is_stable_and_node_ids_parse() {
    let dir = tempfile::tempdir().unwrap();
    let a1 = NodeIdentity::load_or_create(dir.path()).unwrap();
    let a2 = NodeIdentity::load_or_create(dir.path()).unwrap();
    // Made private: another local user can read neither the key nor the directory.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let fresh = dir.path().join("new/node");
    NodeIdentity::load_or_create(&fresh).unwrap();
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(&fresh.join("node.key")), 0o600);
    assert_eq!(a1.id(), a2.id());
    assert_eq!(NodeId::parse(&a1.id().to_string()).unwrap(), a1.id());
    assert!(NodeId::parse("xyz").is_err());
    std::fs::write(dir.path().join("node.key"), b"not a key").unwrap();
    assert!(NodeIdentity::load_or_create(dir.path()).is_err());
}

fn budget() -> std::sync::Arc<tokio::sync::Semaphore> {
    std::sync::Arc::new(tokio::sync::Semaphore::new(starling_net::FRAME_BYTES_MAX))
}

/// A node that is not pinned gets through the handshake only while the
/// other admits strangers, and only asking to join; a pinned node's join
/// connection is marked as one too, and a stranger asking for a sync
/// session is refused even while strangers are admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_gets_in_only_to_join_and_only_while_invited() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (identity(dir.path(), "a"), identity(dir.path(), "b"), identity(dir.path(), "c"));
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let set_a = Arc::new(PeerSet::new([b.id()]));
    let ea = Arc::new(PeerEndpoint::bind(any, a.clone(), set_a.clone()).unwrap());
    let eb = PeerEndpoint::bind(any, b.clone(), Arc::new(PeerSet::new([a.id()]))).unwrap();
    let ec = PeerEndpoint::bind(any, c.clone(), Arc::new(PeerSet::default())).unwrap();
    let addr_a = ea.local_addr().unwrap();
    // A reports (who, joining) of every connection it accepted (the test
    // makes six connections).
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::channel(16);
    {
        let ea = ea.clone();
        tokio::spawn(async move {
            while let Some(incoming) = ea.accept().await {
                let (ea, seen_tx) = (ea.clone(), seen_tx.clone());
                tokio::spawn(async move {
                    if let Ok(conn) = ea.handshake(incoming).await {
                        let _ = seen_tx.send((conn.peer, conn.joining)).await;
                        let _ = conn.connection.closed().await;
                    }
                });
            }
        });
    }
    let t = std::time::Duration::from_secs(5);
    // No invitation open: C cannot even join.
    let out = tokio::time::timeout(t, ec.connect_to_join(addr_a, a.id())).await.expect("no hang");
    if let Ok(conn) = out {
        // The client side may finish before the server refuses it: the connection then dies.
        assert!(tokio::time::timeout(t, conn.connection.closed()).await.is_ok(), "a stranger's join was kept open");
    }
    assert_eq!(accepted(&mut seen_rx).await, None, "A accepted a stranger with no invitation open");

    set_a.admit_strangers(true);
    // Invitations open: C's sync session is still refused...
    if let Ok(Ok(conn)) = tokio::time::timeout(t, ec.connect(addr_a, a.id())).await {
        assert!(tokio::time::timeout(t, conn.connection.closed()).await.is_ok(), "a stranger's session was kept open");
    }
    assert_eq!(accepted(&mut seen_rx).await, None, "A accepted a stranger's sync session");
    // ...its join gets through, marked as one.
    let conn = tokio::time::timeout(t, ec.connect_to_join(addr_a, a.id())).await.unwrap().unwrap();
    assert!(conn.joining);
    assert_eq!(tokio::time::timeout(t, seen_rx.recv()).await.unwrap(), Some((c.id(), true)));
    conn.connection.close(0u32.into(), b"done");
    // A pinned peer's ordinary connection is not a join.
    let conn = tokio::time::timeout(t, eb.connect(addr_a, a.id())).await.unwrap().unwrap();
    assert!(!conn.joining);
    assert_eq!(tokio::time::timeout(t, seen_rx.recv()).await.unwrap(), Some((b.id(), false)));
    // The invitation for C is not bound to C's address: pinning works at once.
    set_a.admit_strangers(false);
    set_a.insert(c.id());
    let conn = tokio::time::timeout(t, ec.connect(addr_a, a.id())).await.unwrap().unwrap();
    assert_eq!(tokio::time::timeout(t, seen_rx.recv()).await.unwrap(), Some((c.id(), false)));
    conn.connection.close(0u32.into(), b"done");
    // Unpinned again: refused.
    set_a.remove(&c.id());
    if let Ok(Ok(conn)) = tokio::time::timeout(t, ec.connect(addr_a, a.id())).await {
        assert!(
            tokio::time::timeout(t, conn.connection.closed()).await.is_ok(),
            "an unpinned node's session was kept open"
        );
    }
    assert_eq!(accepted(&mut seen_rx).await, None, "A accepted an unpinned node");
}

/// What A accepted in the last moment, if anything.
async fn accepted(rx: &mut tokio::sync::mpsc::Receiver<(NodeId, bool)>) -> Option<(NodeId, bool)> {
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    rx.try_recv().ok()
}
