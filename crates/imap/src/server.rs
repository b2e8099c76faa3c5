//! The tokio shell around [`Session`]: accepts TCP connections (plain with
//! STARTTLS, or implicit TLS) within the connection limits, moves bytes
//! between the socket and the session, starts TLS when asked, sleeps a
//! session's login penalty, closes it at its deadline, and wakes sessions
//! when the node's change broadcast names their account (IDLE).

use crate::session::{Session, Shared, Wants};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use starling_net::listen::{accept_forever, AcceptErrors};
use starling_store::Exposed;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_rustls::TlsAcceptor;

/// A bound IMAP listener.
pub struct Listener {
    /// The socket.
    pub tcp: TcpListener,
    /// TLS from the first byte (port 993 style) rather than STARTTLS.
    pub implicit_tls: bool,
}

/// Loads the TLS certificate and key (PEM) at `cert` and `key`, first making
/// a self-signed pair for `localhost` there if neither exists.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    if !cert.exists() && !key.exists() {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let made = rcgen::generate_simple_self_signed(names).map_err(|e| format!("making a certificate: {e}"))?;
        std::fs::write(cert, made.cert.pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
        write_private(key, made.signing_key.serialize_pem().as_bytes())?;
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Accepts connections until the task is dropped. `changes` carries the
/// names of accounts that changed (from any session, LMTP or a peer).
///
/// A failing `accept` (out of file descriptors, say) backs off instead of
/// spinning or ending ([`accept_forever`]). A connection past the limits in
/// total or per address ([`crate::Config::connections_max`],
/// [`crate::Config::connections_per_ip`]) is told `* BYE` (on the plain port)
/// and closed.
/// Each connection runs as a future handed to `spawn`: the caller decides
/// where it runs (the node tracks them so that shutdown can wait until none
/// is inside a store call).
pub async fn serve(
    listener: Listener,
    shared: Arc<Shared>,
    tls: TlsAcceptor,
    changes: broadcast::Sender<String>,
    spawn: impl Fn(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
) {
    let what = if listener.implicit_tls { "imaps" } else { "imap" };
    let mut errors = AcceptErrors::default();
    loop {
        let (stream, addr) = accept_forever(what, &mut errors, || listener.tcp.accept()).await;
        let place = match shared.connections.admit(connection_key(addr.ip())) {
            Ok(place) => place,
            Err(why) => {
                tracing::debug!(listener = what, client = %addr, "refused: {why:?}");
                if !listener.implicit_tls {
                    // Best effort, never waiting: the socket is fresh (its
                    // send buffer has room) and non-blocking.
                    if let Ok(mut s) = stream.into_std() {
                        let _ = std::io::Write::write(&mut s, b"* BYE too many connections\r\n");
                    }
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (shared, tls, changes) = (shared.clone(), tls.clone(), changes.clone());
        let implicit = listener.implicit_tls;
        spawn(Box::pin(async move {
            let _place = place;
            let _ = connection(stream, addr.ip(), implicit, shared, tls, changes).await;
        }));
    }
}

/// What the per-address limit counts by: an IPv4 address, or an IPv6 /64
/// (one subscriber's usual share, so one client cannot pass the limit by
/// hopping addresses within it).
fn connection_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

async fn connection(
    stream: TcpStream,
    peer: IpAddr,
    implicit_tls: bool,
    shared: Arc<Shared>,
    tls: TlsAcceptor,
    changes: broadcast::Sender<String>,
) -> std::io::Result<()> {
    let mut rx = changes.subscribe();
    let accepted = Instant::now();
    // The TLS handshake counts against the pre-login deadline too.
    let handshake_by = tokio::time::Instant::from_std(accepted + shared.config.preauth_deadline);
    if implicit_tls {
        let mut stream = tokio::time::timeout_at(handshake_by, tls.accept(stream)).await??;
        let mut session = Session::accepted(shared, accepted, peer, true, false);
        drive(&mut stream, &mut session, &mut rx).await?;
        return stream.shutdown().await;
    }
    let mut stream = stream;
    let mut session = Session::accepted(shared, accepted, peer, false, true);
    if drive(&mut stream, &mut session, &mut rx).await? == Wants::StartTls {
        let mut stream = tokio::time::timeout_at(handshake_by, tls.accept(stream)).await??;
        session.tls_started();
        drive(&mut stream, &mut session, &mut rx).await?;
        return stream.shutdown().await;
    }
    stream.shutdown().await
}

/// Writes `bytes` by `by`, or fails (a client that stops reading is not
/// waited for forever).
async fn write_by<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8], by: Instant) -> std::io::Result<()> {
    let by = tokio::time::Instant::from_std(by);
    match tokio::time::timeout_at(by, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Bytes inflated per call into the session: the same as one plain read,
/// so inflated input meets the session's limits exactly as plain input
/// does (a decompression bomb is framed and refused a read at a time,
/// never held).
const INFLATE_CHUNK_BYTES: usize = 4096;

/// Bytes deflated before they are written: the compressor's output buffer
/// is this size whatever the response.
const DEFLATE_CHUNK_BYTES: usize = 16 * 1024;

/// COMPRESS=DEFLATE (RFC 4978): raw DEFLATE (RFC 1951, no zlib header)
/// both ways.
struct Deflate {
    inflate: flate2::Decompress,
    deflate: flate2::Compress,
    /// Compressed bytes read and not yet inflated: at most one read, as no
    /// read is made while any are left.
    pending: Vec<u8>,
    /// The inflater may have more to give (stopped because the session
    /// stopped reading, not because the input ran out).
    more: bool,
    /// The inflater reached the end of the client's stream.
    ended: bool,
}

impl Deflate {
    fn new(early: Vec<u8>) -> Deflate {
        Deflate {
            inflate: flate2::Decompress::new(false),
            deflate: flate2::Compress::new(flate2::Compression::default(), false),
            more: !early.is_empty(),
            pending: early,
            ended: false,
        }
    }

    /// Inflates pending bytes into the session `INFLATE_CHUNK_BYTES` at a
    /// time while it reads; what it does not take waits in `pending`, so an
    /// inflated stream is held no more than a plain one is.
    fn inflate_into(&mut self, session: &mut Session) -> std::io::Result<()> {
        let mut chunk = [0u8; INFLATE_CHUNK_BYTES];
        self.more = false;
        while !self.ended {
            if session.wants() != Wants::Read {
                self.more = true;
                break;
            }
            let (before_in, before_out) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self
                .inflate
                .decompress(&self.pending, &mut chunk, flate2::FlushDecompress::None)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let used = (self.inflate.total_in() - before_in) as usize;
            let made = (self.inflate.total_out() - before_out) as usize;
            self.pending.drain(..used);
            self.ended = status == flate2::Status::StreamEnd;
            if made > 0 {
                session.receive_at(Instant::now(), &chunk[..made]);
            }
            if used == 0 && made == 0 {
                break;
            }
        }
        Ok(())
    }
}

/// Deflates `bytes`, ending with a sync flush (the client has every byte
/// of the batch without waiting for more), and writes it by `by` a chunk at
/// a time.
async fn write_deflated<S: AsyncWrite + Unpin>(
    stream: &mut S,
    z: &mut Deflate,
    mut bytes: &[u8],
    by: Instant,
) -> std::io::Result<()> {
    let mut chunk = Vec::with_capacity(DEFLATE_CHUNK_BYTES);
    loop {
        chunk.clear();
        let before_in = z.deflate.total_in();
        let flush = if bytes.is_empty() { flate2::FlushCompress::Sync } else { flate2::FlushCompress::None };
        z.deflate.compress_vec(bytes, &mut chunk, flush).map_err(std::io::Error::other)?;
        bytes = &bytes[(z.deflate.total_in() - before_in) as usize..];
        if !chunk.is_empty() {
            write_by(stream, &chunk, by).await?;
        }
        // A sync flush is done once it leaves room in the buffer.
        if bytes.is_empty() && flush == flate2::FlushCompress::Sync && chunk.len() < chunk.capacity() {
            return Ok(());
        }
    }
}

/// Ends the DEFLATE stream: a final (empty) block after everything
/// written, so the client's inflater sees the stream end rather than a
/// connection cut. Bounded: the compressor holds no input (every write
/// ended with a sync flush), so this is a few bytes, written by `by`.
async fn finish_deflated<S: AsyncWrite + Unpin>(stream: &mut S, z: &mut Deflate, by: Instant) -> std::io::Result<()> {
    let mut chunk = Vec::with_capacity(DEFLATE_CHUNK_BYTES);
    let status =
        z.deflate.compress_vec(&[], &mut chunk, flate2::FlushCompress::Finish).map_err(std::io::Error::other)?;
    if status != flate2::Status::StreamEnd {
        return Err(std::io::Error::other("the DEFLATE stream did not end in one buffer"));
    }
    write_by(stream, &chunk, by).await
}

/// Runs the session on `stream` until it wants to start TLS or close; a
/// compressed stream is ended with a final block before a close.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    rx: &mut broadcast::Receiver<String>,
) -> std::io::Result<Wants> {
    let mut z: Option<Deflate> = None;
    let wants = drive_with(stream, session, rx, &mut z).await?;
    if let (Some(z), Wants::Close) = (&mut z, wants) {
        let by = match session.account() {
            None => session.deadline(),
            Some(_) => Instant::now() + session.shared.config.idle_timeout,
        };
        finish_deflated(stream, z, by).await?;
    }
    Ok(wants)
}

async fn drive_with<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    rx: &mut broadcast::Receiver<String>,
    z: &mut Option<Deflate>,
) -> std::io::Result<Wants> {
    let mut buf = [0u8; 4096];
    // The client ended its DEFLATE stream: nothing more can come, but what
    // the session answers to what came before is still written (a LOGOUT's
    // BYE and OK) before the connection closes.
    let mut input_ended = false;
    loop {
        if let Some(e) = session.take_unexposed() {
            // The output reports a change: written once k peers hold it
            // (or the wait is over; then as with k = 0, counted and logged).
            let shared = session.shared.clone();
            if let Exposed::Short { peers } = shared.store.expose(&e, &shared.config.exposure).await {
                tracing::warn!(account = e.account, peers, "IMAP change reported short of the peers wanted");
            }
        }
        if session.has_output() {
            // Before login the deadline bounds writing too; after, a write
            // may take an idle timeout of its own (a large FETCH on a slow
            // link), counted from when it starts.
            let by = match session.account() {
                None => session.deadline(),
                Some(_) => Instant::now() + session.shared.config.idle_timeout,
            };
            match z {
                Some(z) => write_deflated(stream, z, &session.take_output(), by).await?,
                None => write_by(stream, &session.take_output(), by).await?,
            }
        }
        let deadline = tokio::time::Instant::from_std(session.deadline());
        match session.wants() {
            Wants::Read => {
                if let Some(z) = z.as_mut().filter(|z| z.more) {
                    tokio::task::block_in_place(|| z.inflate_into(session))?;
                    continue;
                }
                if input_ended {
                    // Its answers are written (above): close.
                    return Ok(Wants::Close);
                }
            }
            Wants::Compress => {
                // The OK went out plain; from here on both ways are DEFLATE
                // (what the client sent after COMPRESS is already).
                *z = Some(Deflate::new(session.compress_started()));
                continue;
            }
            // A login waiting out its penalty, or a SELECT catching up with
            // its peers (it checks again after a short while): only this
            // connection waits, and the deadline still holds.
            Wants::Pause(wait) | Wants::CatchUp(wait) => {
                let until = (tokio::time::Instant::now() + wait).min(deadline);
                tokio::time::sleep_until(until).await;
                let now = Instant::now();
                session.handle_timeout(now);
                // A SELECT reads the store: off the async workers' backs.
                tokio::task::block_in_place(|| session.resume(now));
                continue;
            }
            // Argon2 runs on the guard's own threads; this connection
            // waits for the answer without holding a worker (the deadline
            // still holds).
            Wants::Verify => {
                let valid = match session.verify_job() {
                    None => None,
                    Some((credential, password)) => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        match session.shared.guard.verify_then(credential, password, move |ok| {
                            let _ = tx.send(ok);
                        }) {
                            Err(crate::auth::Busy) => None,
                            Ok(()) => match tokio::time::timeout_at(deadline, rx).await {
                                Ok(answer) => Some(answer.expect("a pool thread answers every job")),
                                Err(_) => {
                                    session.handle_timeout(Instant::now());
                                    continue;
                                }
                            },
                        }
                    }
                };
                tokio::task::block_in_place(|| session.verified(Instant::now(), valid));
                continue;
            }
            // A FETCH answering in parts: the part just written, the next now.
            Wants::Write => {
                tokio::task::block_in_place(|| session.resume(Instant::now()));
                continue;
            }
            Wants::Bodies(wait) => {
                // A FETCH waits for bodies a peer has: ask, then run it
                // again when the account changes (a body stored) or the
                // wait is over. Only this connection waits.
                let account = session.account().unwrap_or_default().to_string();
                if !session.shared.want_bodies(&account, session.wanted_bodies()) {
                    tokio::task::block_in_place(|| session.nobody_to_ask(Instant::now()));
                    continue;
                }
                let until = (tokio::time::Instant::now() + wait).min(deadline);
                loop {
                    tokio::select! {
                        changed = rx.recv() => match changed {
                            Ok(a) if a == account => break,
                            Ok(_) => {}
                            Err(broadcast::error::RecvError::Lagged(_)) => break,
                            Err(broadcast::error::RecvError::Closed) => return Ok(Wants::Close),
                        },
                        _ = tokio::time::sleep_until(until) => break,
                    }
                }
                let now = Instant::now();
                session.handle_timeout(now);
                tokio::task::block_in_place(|| session.resume(now));
                continue;
            }
            other => return Ok(other),
        }
        tokio::select! {
            read = stream.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    return Ok(Wants::Close);
                }
                // Store calls block (a commit waits for fsync), and so does
                // verifying a password.
                match z {
                    Some(z) => {
                        z.pending.extend_from_slice(&buf[..n]);
                        tokio::task::block_in_place(|| z.inflate_into(session))?;
                        // The client ended its DEFLATE stream: its answers
                        // are written first (the top of the loop), then the
                        // connection closes.
                        input_ended = z.ended;
                    }
                    None => tokio::task::block_in_place(|| session.receive_at(Instant::now(), &buf[..n])),
                }
            }
            changed = rx.recv() => {
                let ours = match &changed {
                    Ok(account) => session.account() == Some(account.as_str()),
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => false,
                };
                if ours {
                    tokio::task::block_in_place(|| session.account_changed());
                } else if changed.is_err() {
                    // The node is stopping.
                    return Ok(Wants::Close);
                }
            }
            _ = tokio::time::sleep_until(deadline) => session.handle_timeout(Instant::now()),
        }
    }
}
