//! QUIC transport between Starling nodes: node identities, mutual TLS with
//! pinned peers, and length-prefixed frames on streams.
//!
//! Each node makes a key pair and a self-signed certificate on first start;
//! its [`NodeId`] is the BLAKE3 hash of the certificate. Peers are pinned by
//! node id: a TLS handshake with any other certificate fails, both ways. This
//! crate moves bytes; the protocol is `starling-sync`, driven by the node.

#![deny(missing_docs)]

pub mod listen;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use starling_model::ReplicaId;
use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// ALPN protocol name of the peer protocol.
pub const ALPN: &[u8] = b"starling/1";
/// ALPN protocol name of a join: a node not pinned yet presents an
/// invitation's secret, and nothing else (see [`PeerConnection::joining`]).
pub const JOIN_ALPN: &[u8] = b"starling-join/1";
/// Largest frame read from a stream.
pub const FRAME_BYTES_MAX: usize = 64 << 20;

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Identity files could not be read, made or written.
    #[error("node identity {path}: {reason}")]
    Identity {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A node id that is not 64 hex digits.
    #[error("invalid node id {0:?} (expected 64 hex digits)")]
    BadNodeId(String),
    /// TLS or QUIC configuration.
    #[error("transport setup: {0}")]
    Setup(String),
    /// Connecting or accepting.
    #[error("connection: {0}")]
    Connection(String),
    /// A stream broke, or a frame exceeded the limit.
    #[error("stream: {0}")]
    Stream(String),
    /// The peer's certificate is not pinned.
    #[error("unknown peer")]
    UnknownPeer,
}

/// A node's identity: BLAKE3 of its certificate.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The id of a certificate.
    pub fn of(cert: &[u8]) -> NodeId {
        NodeId(*blake3::hash(cert).as_bytes())
    }

    /// The replica id this node uses in every account (first 8 bytes).
    pub fn replica(&self) -> ReplicaId {
        ReplicaId(u64::from_be_bytes(self.0[..8].try_into().expect("8 bytes")))
    }

    /// Parses 64 hex digits.
    pub fn parse(s: &str) -> Result<NodeId, NetError> {
        let s = s.trim();
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NetError::BadNodeId(s.to_string()));
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| NetError::BadNodeId(s.to_string()))?;
        }
        Ok(NodeId(out))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_string()[..16])
    }
}

/// Creates `dir` (and its parents) readable by this user only.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Creates `path` (it must not exist) readable by this user only, with `bytes`.
fn private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// This node's certificate and key.
pub struct NodeIdentity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    id: NodeId,
}

impl NodeIdentity {
    /// Reads `node.crt` and `node.key` (DER) from `dir`, making them on first
    /// start. A wiped directory means a new node.
    pub fn load_or_create(dir: &Path) -> Result<NodeIdentity, NetError> {
        let (cert_path, key_path) = (dir.join("node.crt"), dir.join("node.key"));
        let err = |p: &Path, e: &dyn fmt::Display| NetError::Identity {
            path: p.display().to_string(),
            reason: e.to_string(),
        };
        if !cert_path.exists() && !key_path.exists() {
            private_dir(dir).map_err(|e| err(dir, &e))?;
            let ck =
                rcgen::generate_simple_self_signed(vec!["starling".to_string()]).map_err(|e| err(&cert_path, &e))?;
            private_file(&key_path, &ck.signing_key.serialize_der()).map_err(|e| err(&key_path, &e))?;
            std::fs::write(&cert_path, ck.cert.der().as_ref()).map_err(|e| err(&cert_path, &e))?;
        }
        let cert = std::fs::read(&cert_path).map_err(|e| err(&cert_path, &e))?;
        let key = std::fs::read(&key_path).map_err(|e| err(&key_path, &e))?;
        let identity = NodeIdentity {
            id: NodeId::of(&cert),
            cert: CertificateDer::from(cert),
            key: PrivatePkcs8KeyDer::from(key),
        };
        // A key that does not match its certificate (or is not a key) fails here, at start.
        identity.server_config(Arc::new(PeerSet::default())).map_err(|e| err(&key_path, &e))?;
        Ok(identity)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    fn server_config(&self, peers: Arc<PeerSet>) -> Result<quinn::ServerConfig, NetError> {
        let setup = |e: &dyn fmt::Display| NetError::Setup(e.to_string());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| setup(&e))?
            .with_client_cert_verifier(Arc::new(PinnedClients { peers }))
            .with_single_cert(vec![self.cert.clone()], self.key())
            .map_err(|e| setup(&e))?;
        tls.alpn_protocols = vec![ALPN.to_vec(), JOIN_ALPN.to_vec()];
        let quic = QuicServerConfig::try_from(tls).map_err(|e| setup(&e))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(transport());
        Ok(config)
    }

    fn client_config(&self, expected: NodeId, alpn: &[u8]) -> Result<quinn::ClientConfig, NetError> {
        let setup = |e: &dyn fmt::Display| NetError::Setup(e.to_string());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| setup(&e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServer { expected }))
            .with_client_auth_cert(vec![self.cert.clone()], self.key())
            .map_err(|e| setup(&e))?;
        tls.alpn_protocols = vec![alpn.to_vec()];
        let quic = QuicClientConfig::try_from(tls).map_err(|e| setup(&e))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(transport());
        Ok(config)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The node ids allowed to connect. Changing it affects new handshakes.
///
/// While strangers are admitted (this node has open invitations), a node
/// that is not pinned completes the TLS handshake too, but only to present
/// an invitation: [`handshake`] refuses it unless it asked for
/// [`JOIN_ALPN`], and the node then reads one join request and nothing else.
#[derive(Debug, Default)]
pub struct PeerSet {
    pinned: RwLock<BTreeSet<NodeId>>,
    strangers: AtomicBool,
}

impl PeerSet {
    /// A set of pinned peers.
    pub fn new(peers: impl IntoIterator<Item = NodeId>) -> Self {
        PeerSet { pinned: RwLock::new(peers.into_iter().collect()), strangers: AtomicBool::new(false) }
    }
    /// Whether `id` is pinned.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.pinned.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(id)
    }
    /// Pins `id` (new handshakes only).
    pub fn insert(&self, id: NodeId) {
        self.pinned.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id);
    }
    /// Unpins `id`: its next handshake fails (close its connections too).
    pub fn remove(&self, id: &NodeId) {
        self.pinned.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }
    /// Whether nodes that are not pinned may complete a handshake to join.
    pub fn admit_strangers(&self, yes: bool) {
        self.strangers.store(yes, Ordering::SeqCst);
    }
    fn admits(&self, id: &NodeId) -> bool {
        self.contains(id) || self.strangers.load(Ordering::SeqCst)
    }
}

fn verify12(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
}

fn verify13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
}

fn schemes() -> Vec<SignatureScheme> {
    provider().signature_verification_algorithms.supported_schemes()
}

#[derive(Debug)]
struct PinnedClients {
    peers: Arc<PeerSet>,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.peers.admits(&NodeId::of(end_entity)) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::General("unknown peer".into()))
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify12(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify13(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

#[derive(Debug)]
struct PinnedServer {
    expected: NodeId,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if NodeId::of(end_entity) == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("peer is not the pinned node".into()))
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify12(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify13(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

/// A peer that vanished without closing (power cut, network gone) is given
/// up after this long without a packet; keep-alives every third of it keep a
/// quiet but healthy connection open. The dialing side then dials again,
/// which a restarted peer waits for.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(9);

/// Flow-control windows: what one stream, and one connection, may have in
/// flight. quinn's defaults (1.25 MB a stream) cap a stream at 6 MB/s over
/// a 200 ms round trip; these allow 80 MB/s a stream and 160 MB/s a
/// connection there, and bound what a peer can make us buffer.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;

/// RTT assumed before the first sample. quinn's default (RFC 9002's
/// 333 ms) resends a lost first packet only after about a second: a node
/// that dialed a peer still starting (the packet dropped) sat idle that
/// long, a fifth of a 10,000-message initial sync on loopback. Peers are
/// mostly closer than 100 ms; on a longer path this costs one spurious
/// resend of the first packet.
const INITIAL_RTT: std::time::Duration = std::time::Duration::from_millis(100);

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.initial_rtt(INITIAL_RTT);
    // BBR rather than quinn's default (Cubic): the 10,000-message initial
    // sync through the delaying relay took 5.29 s instead of 6.49 s at
    // 200 ms round trip, 3.64 s instead of 3.89 s at 50 ms and 3.12 s
    // instead of 4.06 s with 1% loss each way, the same at 0 ms
    // (docs/benchmarks.md). Loss-based Cubic backs off on every random loss
    // and ramps up slowly over long round trips; BBR paces at the
    // bandwidth it measures. (BBRv1 can take more than its share from
    // Cubic flows on a shared bottleneck: peers move mail in bulk, and the
    // windows bound what one connection keeps in flight.)
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    t.stream_receive_window(STREAM_WINDOW.into());
    t.receive_window(CONNECTION_WINDOW.into());
    t.send_window(CONNECTION_WINDOW.into());
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("9 s fits a QUIC varint")));
    t.keep_alive_interval(Some(IDLE_TIMEOUT / 3));
    Arc::new(t)
}

/// UDP socket buffer size asked for (the kernel may cap it).
const UDP_BUFFER_BYTES: usize = 4 << 20;

/// A QUIC endpoint that accepts pinned peers and dials them.
pub struct PeerEndpoint {
    endpoint: quinn::Endpoint,
    identity: Arc<NodeIdentity>,
    peers: Arc<PeerSet>,
}

/// An authenticated connection to a pinned peer, or from a node that came
/// to join.
pub struct PeerConnection {
    /// The peer's node id, proven by the TLS handshake.
    pub peer: NodeId,
    /// The QUIC connection.
    pub connection: quinn::Connection,
    /// The peer asked for [`JOIN_ALPN`]: the connection carries one join
    /// request and its answer, no sync session. Only such a connection may
    /// come from a node that is not pinned.
    pub joining: bool,
}

fn peer_of(conn: &quinn::Connection) -> Result<NodeId, NetError> {
    let identity = conn.peer_identity().ok_or(NetError::UnknownPeer)?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| NetError::UnknownPeer)?;
    certs.first().map(|c| NodeId::of(c)).ok_or(NetError::UnknownPeer)
}

impl PeerEndpoint {
    /// Binds `addr` (UDP) and accepts the peers in `peers`.
    pub fn bind(addr: SocketAddr, identity: Arc<NodeIdentity>, peers: Arc<PeerSet>) -> Result<PeerEndpoint, NetError> {
        let config = identity.server_config(peers.clone())?;
        let setup = |e: std::io::Error| NetError::Setup(format!("{addr}: {e}"));
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .map_err(setup)?;
        // Bodies arrive in bursts while the receiver is busy committing the
        // previous ones; the default buffer (~200 KB) dropped 8% of a 10k
        // message sync on loopback, and each loss slows the sender down.
        // Larger buffers (as far as the kernel allows) absorb the bursts.
        let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
        let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
        socket.bind(&addr.into()).map_err(setup)?;
        let runtime = quinn::default_runtime().ok_or_else(|| NetError::Setup("no async runtime".into()))?;
        let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(config), socket.into(), runtime)
            .map_err(setup)?;
        Ok(PeerEndpoint { endpoint, identity, peers })
    }

    /// Closes every connection and waits (at most `limit`) until the peers
    /// were told, so they reconnect at once instead of waiting for the idle
    /// timeout.
    pub async fn shutdown(&self, limit: std::time::Duration) {
        self.endpoint.close(0u32.into(), b"shutting down");
        let _ = tokio::time::timeout(limit, self.endpoint.wait_idle()).await;
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        self.endpoint.local_addr().map_err(|e| NetError::Setup(e.to_string()))
    }

    /// Waits for the next connection attempt (`None` once the endpoint is
    /// closed). Its handshake is not done yet: run [`handshake`] on it, in
    /// a task of its own, so that one slow or stalled peer never holds up
    /// the others.
    pub async fn accept(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// Connects to pinned peer `expected` at `addr`.
    pub async fn connect(&self, addr: SocketAddr, expected: NodeId) -> Result<PeerConnection, NetError> {
        self.connect_as(addr, expected, ALPN).await
    }

    /// Connects to `expected` at `addr` to join it with an invitation: the
    /// node is checked as always (the invitation's secret goes to no other
    /// node), while this node need not be pinned there yet.
    pub async fn connect_to_join(&self, addr: SocketAddr, expected: NodeId) -> Result<PeerConnection, NetError> {
        self.connect_as(addr, expected, JOIN_ALPN).await
    }

    async fn connect_as(&self, addr: SocketAddr, expected: NodeId, alpn: &[u8]) -> Result<PeerConnection, NetError> {
        let config = self.identity.client_config(expected, alpn)?;
        let connecting =
            self.endpoint.connect_with(config, addr, "starling").map_err(|e| NetError::Connection(e.to_string()))?;
        let connection = tokio::time::timeout(HANDSHAKE_DEADLINE, connecting)
            .await
            .map_err(|_| NetError::Connection(format!("handshake took over {HANDSHAKE_DEADLINE:?}")))?
            .map_err(|e| NetError::Connection(e.to_string()))?;
        let peer = peer_of(&connection)?;
        if peer != expected {
            connection.close(1u32.into(), b"not the pinned node");
            return Err(NetError::UnknownPeer);
        }
        Ok(PeerConnection { peer, connection, joining: alpn == JOIN_ALPN })
    }

    /// Completes an accepted connection's handshake within
    /// [`HANDSHAKE_DEADLINE`]. Only pinned peers, and while strangers are
    /// admitted nodes that came to join, get this far (the TLS verifier
    /// refuses every other certificate); a node that is not pinned is
    /// refused here unless it asked to join.
    pub async fn handshake(&self, incoming: quinn::Incoming) -> Result<PeerConnection, NetError> {
        let connection = match tokio::time::timeout(HANDSHAKE_DEADLINE, incoming).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(NetError::Connection(e.to_string())),
            Err(_) => return Err(NetError::Connection(format!("handshake took over {HANDSHAKE_DEADLINE:?}"))),
        };
        let joining = connection
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol)
            .is_some_and(|p| p == JOIN_ALPN);
        match peer_of(&connection) {
            Ok(peer) if joining || self.peers.contains(&peer) => Ok(PeerConnection { peer, connection, joining }),
            Ok(_) | Err(_) => {
                connection.close(1u32.into(), b"unknown peer");
                Err(NetError::UnknownPeer)
            }
        }
    }
}

/// Longest a peer's handshake may take: past it the attempt is dropped.
pub const HANDSHAKE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes one frame: u32 big-endian length, then the bytes.
pub async fn write_frame(send: &mut quinn::SendStream, frame: &[u8]) -> Result<(), NetError> {
    let len = u32::try_from(frame.len()).map_err(|_| NetError::Stream("frame too large".into()))?;
    send.write_all(&len.to_be_bytes()).await.map_err(|e| NetError::Stream(e.to_string()))?;
    send.write_all(frame).await.map_err(|e| NetError::Stream(e.to_string()))
}

/// Reads one frame; `None` at a clean end of stream. A length above
/// [`FRAME_BYTES_MAX`] is refused before anything is allocated, and the
/// frame's bytes are first taken from `budget` (waiting while it is used
/// up): the caller releases them by dropping the permit once the frame is
/// handled, so the frames a connection holds in memory stay within it.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    budget: &Arc<tokio::sync::Semaphore>,
) -> Result<Option<(Vec<u8>, tokio::sync::OwnedSemaphorePermit)>, NetError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(NetError::Stream(e.to_string())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(NetError::Stream(format!("frame of {len} bytes exceeds the limit")));
    }
    let permit = budget
        .clone()
        .acquire_many_owned(len.max(1) as u32)
        .await
        .map_err(|_| NetError::Stream("connection closing".into()))?;
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await.map_err(|e| NetError::Stream(e.to_string()))?;
    Ok(Some((buf, permit)))
}
