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
    let ea = PeerEndpoint::bind(any, a.clone(), Arc::new(PeerSet::new([b.id()]))).unwrap();
    let eb = PeerEndpoint::bind(any, b.clone(), Arc::new(PeerSet::new([a.id()]))).unwrap();
    let ec = PeerEndpoint::bind(any, c.clone(), Arc::new(PeerSet::new([a.id()]))).unwrap();
    let addr_a = ea.local_addr().unwrap();

    // A serves: echoes one frame reversed per connection, reports who came.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(conn) = ea.accept().await {
            let _ = seen_tx.send(conn.peer);
            tokio::spawn(async move {
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

#[test]
fn identity_is_stable_and_node_ids_parse() {
    let dir = tempfile::tempdir().unwrap();
    let a1 = NodeIdentity::load_or_create(dir.path()).unwrap();
    let a2 = NodeIdentity::load_or_create(dir.path()).unwrap();
    assert_eq!(a1.id(), a2.id());
    assert_eq!(NodeId::parse(&a1.id().to_string()).unwrap(), a1.id());
    assert!(NodeId::parse("xyz").is_err());
    std::fs::write(dir.path().join("node.key"), b"not a key").unwrap();
    assert!(NodeIdentity::load_or_create(dir.path()).is_err());
}

fn budget() -> std::sync::Arc<tokio::sync::Semaphore> {
    std::sync::Arc::new(tokio::sync::Semaphore::new(starling_net::FRAME_BYTES_MAX))
}
