//! The tokio shell around [`Session`]: accepts TCP connections (plain with
//! STARTTLS, or implicit TLS) within the connection limits, moves bytes
//! between the socket and the session (every call into the session that
//! may touch the store runs on the store pool, [`step`]), starts TLS when
//! asked, sleeps a session's login penalty, closes it at its deadline, and
//! wakes sessions when the node's change broadcast names their account
//! (IDLE).

use crate::pool::Panicked;
use crate::session::{Session, Shared, Wants};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use starling_net::listen::{accept_forever, AcceptErrors};
use starling_store::Exposed;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
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
        let conn = Conn::new(Session::accepted(shared, accepted, peer, true, false));
        drive(&mut stream, conn, &mut rx).await?;
        return stream.shutdown().await;
    }
    let mut stream = stream;
    let conn = Conn::new(Session::accepted(shared, accepted, peer, false, true));
    let (mut conn, wants) = drive(&mut stream, conn, &mut rx).await?;
    if wants == Wants::StartTls {
        let mut stream = tokio::time::timeout_at(handshake_by, tls.accept(stream)).await??;
        conn.session.tls_started();
        drive(&mut stream, conn, &mut rx).await?;
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

/// What a connection's steps take to the store pool: the session and,
/// once COMPRESS is on, its inflater (which feeds the session).
struct Conn {
    session: Session,
    z: Option<Deflate>,
}

impl Conn {
    fn new(session: Session) -> Box<Conn> {
        Box::new(Conn { session, z: None })
    }

    /// Inflates what is pending into the session.
    fn inflate(&mut self) -> std::io::Result<()> {
        match &mut self.z {
            Some(z) => z.inflate_into(&mut self.session),
            None => Ok(()),
        }
    }
}

/// A step of the session panicked: the session is gone, the connection
/// ends (the other sessions and the pool go on).
fn lost(_: Panicked) -> std::io::Error {
    std::io::Error::other("a session step panicked")
}

/// The deadline passed: the session says BYE (on this thread: it only
/// writes to its output). Whether it now wants to close (false only if the
/// clock disagrees with the timer; then the step runs after all).
fn timed_out(session: &mut Session) -> bool {
    session.handle_timeout(Instant::now());
    session.wants() == Wants::Close
}

/// Sleeps until `by`, or for ever if there is none.
async fn sleep_until(by: Option<tokio::time::Instant>) {
    match by {
        Some(by) => tokio::time::sleep_until(by).await,
        None => std::future::pending().await,
    }
}

/// Runs `f` on the store pool ([`Shared::store_pool`]) with the connection
/// moved there, and gives it back with `f`'s answer; this task waits
/// without holding an async worker.
///
/// A full queue makes the connection wait for room, in the order
/// connections began to wait, rather than refuse: the step is input the
/// client already sent (bytes part of a command, or a command whose answer
/// is owed), which cannot be refused without losing its place in the
/// stream; and while it waits the connection reads no more of its socket,
/// so TCP's flow control slows the client down. What waits is bounded by
/// the connection limits (one step per connection at a time).
///
/// The session's deadline still holds: if it passes while the step waits
/// for room or for a thread, the connection is taken back unrun and the
/// session says BYE (the answer is then `None`). A step a thread has begun
/// runs to its end (a commit is never cut in two).
async fn step<T, F>(mut conn: Box<Conn>, f: F) -> Result<(Box<Conn>, Option<T>), Panicked>
where
    T: Send + 'static,
    F: FnOnce(&mut Conn) -> T + Send + 'static,
{
    let shared = conn.session.shared.clone();
    let pool = shared.store_pool();
    let mut by = Some(tokio::time::Instant::from_std(conn.session.deadline()));
    let reserve = pool.reserve();
    tokio::pin!(reserve);
    // Twice at most: the second time without a deadline.
    let slot = loop {
        tokio::select! {
            biased;
            slot = &mut reserve => break slot,
            _ = sleep_until(by) => {
                if timed_out(&mut conn.session) {
                    return Ok((conn, None));
                }
                by = None;
            }
        }
    };
    // Whoever takes it first: a thread of the pool (to run the step), or
    // this task at the deadline (to say BYE instead).
    let held = Arc::new(Mutex::new(Some((conn, f))));
    let job = held.clone();
    let mut answer = std::pin::pin!(slot.run(move || {
        let taken = job.lock().unwrap_or_else(PoisonError::into_inner).take();
        taken.map(|(mut conn, f)| {
            let out = f(&mut conn);
            (conn, out)
        })
    }));
    if let Some(by) = by {
        tokio::select! {
            biased;
            done = &mut answer => return done.map(|r| r.map_or_else(|| unreachable!("taken back only below"), |(c, out)| (c, Some(out)))),
            _ = tokio::time::sleep_until(by) => {}
        }
        let back = held.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some((mut conn, f)) = back {
            if timed_out(&mut conn.session) {
                return Ok((conn, None));
            }
            // The timer fired early by the clock: run it after all.
            return pool
                .run(move || {
                    let out = f(&mut conn);
                    (conn, Some(out))
                })
                .await;
        }
    }
    // A thread has it: the step runs to its end.
    let (conn, out) = answer.await?.expect("the thread took it, not the deadline");
    Ok((conn, Some(out)))
}

/// When a write of the session's output must be done by: before login the
/// session's deadline bounds writing too; after, a write may take an idle
/// timeout of its own (a large FETCH on a slow link), counted from when it
/// starts.
fn write_deadline(session: &Session) -> Instant {
    match session.account() {
        None => session.deadline(),
        Some(_) => Instant::now() + session.shared.config.idle_timeout,
    }
}

/// Runs the session on `stream` until it wants to start TLS or close.
/// A session step that panicked ends the connection with `* BYE` (not
/// once COMPRESS is on: the inflater went with the session).
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    conn: Box<Conn>,
    rx: &mut broadcast::Receiver<String>,
) -> std::io::Result<(Box<Conn>, Wants)> {
    let mut compressed = false;
    let by = Instant::now() + std::time::Duration::from_secs(5);
    match drive_steps(stream, conn, rx, &mut compressed).await {
        Err(Panicked) => {
            if !compressed {
                let _ = write_by(stream, b"* BYE internal server error\r\n", by).await;
            }
            Err(lost(Panicked))
        }
        // A compressed stream is ended with a final block before a close.
        Ok(Ok((mut conn, Wants::Close))) if conn.z.is_some() => {
            let by = write_deadline(&conn.session);
            if let Some(z) = conn.z.as_mut() {
                finish_deflated(stream, z, by).await?;
            }
            Ok((conn, Wants::Close))
        }
        Ok(r) => r,
    }
}

/// [`drive`], with a panicked step set apart from I/O errors.
async fn drive_steps<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mut conn: Box<Conn>,
    rx: &mut broadcast::Receiver<String>,
    compressed: &mut bool,
) -> Result<std::io::Result<(Box<Conn>, Wants)>, Panicked> {
    macro_rules! io {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            }
        };
    }
    let mut buf = [0u8; 4096];
    conn.z = None;
    // The client ended its DEFLATE stream: nothing more can come, but what
    // the session answers to what came before is still written (a LOGOUT's
    // BYE and OK) before the connection closes.
    let mut input_ended = false;
    loop {
        if let Some(e) = conn.session.take_unexposed() {
            // The output reports a change: written once k peers hold it
            // (or the wait is over; then as with k = 0, counted and logged).
            let shared = conn.session.shared.clone();
            if let Exposed::Short { peers } = shared.store.expose(&e, &shared.config.exposure).await {
                tracing::warn!(account = e.account, peers, "IMAP change reported short of the peers wanted");
            }
        }
        if conn.session.has_output() {
            let by = write_deadline(&conn.session);
            let out = conn.session.take_output();
            match &mut conn.z {
                Some(z) => io!(write_deflated(stream, z, &out, by).await),
                None => io!(write_by(stream, &out, by).await),
            }
        }
        let deadline = tokio::time::Instant::from_std(conn.session.deadline());
        // Every call into the session that may touch the store runs on the
        // store pool ([`step`]); what stays here only moves bytes or reads
        // the session's state.
        let inflated: Option<std::io::Result<()>>;
        match conn.session.wants() {
            Wants::Read => {
                if conn.z.as_ref().is_some_and(|z| z.more) {
                    (conn, inflated) = step(conn, Conn::inflate).await?;
                    io!(inflated.transpose());
                    continue;
                }
                if input_ended {
                    // Its answers are written (above): close.
                    return Ok(Ok((conn, Wants::Close)));
                }
            }
            Wants::Compress => {
                // The OK went out plain; from here on both ways are DEFLATE
                // (what the client sent after COMPRESS is already).
                conn.z = Some(Deflate::new(conn.session.compress_started()));
                *compressed = true;
                continue;
            }
            // A login waiting out its penalty, or a SELECT catching up with
            // its peers (it checks again after a short while): only this
            // connection waits, and the deadline still holds.
            Wants::Pause(wait) | Wants::CatchUp(wait) => {
                let until = (tokio::time::Instant::now() + wait).min(deadline);
                tokio::time::sleep_until(until).await;
                let now = Instant::now();
                conn.session.handle_timeout(now);
                // A SELECT reads the store.
                (conn, _) = step(conn, move |c| c.session.resume(now)).await?;
                continue;
            }
            // Argon2 runs on the guard's own threads; this connection
            // waits for the answer without holding a worker (the deadline
            // still holds). Reading the credential, and logging in, are
            // store steps.
            Wants::Verify => {
                let job;
                (conn, job) = step(conn, |c| c.session.verify_job()).await?;
                let Some(job) = job else { continue };
                let valid = match job {
                    None => None,
                    Some((credential, password)) => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        match conn.session.shared.guard.verify_then(credential, password, move |ok| {
                            let _ = tx.send(ok);
                        }) {
                            Err(crate::auth::Busy) => None,
                            Ok(()) => match tokio::time::timeout_at(deadline, rx).await {
                                // No answer: the verification panicked.
                                Ok(answer) => Some(answer.unwrap_or(false)),
                                Err(_) => {
                                    conn.session.handle_timeout(Instant::now());
                                    continue;
                                }
                            },
                        }
                    }
                };
                (conn, _) = step(conn, move |c| c.session.verified(Instant::now(), valid)).await?;
                continue;
            }
            // A FETCH answering in parts: the part just written, the next now.
            Wants::Write => {
                (conn, _) = step(conn, |c| c.session.resume(Instant::now())).await?;
                continue;
            }
            Wants::Bodies(wait) => {
                // A FETCH waits for bodies a peer has: ask, then run it
                // again when the account changes (a body stored) or the
                // wait is over. Only this connection waits.
                let account = conn.session.account().unwrap_or_default().to_string();
                if !conn.session.shared.want_bodies(&account, conn.session.wanted_bodies()) {
                    (conn, _) = step(conn, |c| c.session.nobody_to_ask(Instant::now())).await?;
                    continue;
                }
                let until = (tokio::time::Instant::now() + wait).min(deadline);
                loop {
                    tokio::select! {
                        changed = rx.recv() => match changed {
                            Ok(a) if a == account => break,
                            Ok(_) => {}
                            Err(broadcast::error::RecvError::Lagged(_)) => break,
                            Err(broadcast::error::RecvError::Closed) => return Ok(Ok((conn, Wants::Close))),
                        },
                        _ = tokio::time::sleep_until(until) => break,
                    }
                }
                let now = Instant::now();
                conn.session.handle_timeout(now);
                (conn, _) = step(conn, move |c| c.session.resume(now)).await?;
                continue;
            }
            other => return Ok(Ok((conn, other))),
        }
        tokio::select! {
            read = stream.read(&mut buf) => {
                let n = io!(read);
                if n == 0 {
                    return Ok(Ok((conn, Wants::Close)));
                }
                if let Some(z) = conn.z.as_mut() {
                    z.pending.extend_from_slice(&buf[..n]);
                    (conn, inflated) = step(conn, Conn::inflate).await?;
                    io!(inflated.transpose());
                    // The client ended its DEFLATE stream: its answers are
                    // written first (the top of the loop), then the
                    // connection closes.
                    input_ended = conn.z.as_ref().is_some_and(|z| z.ended);
                } else {
                    let bytes = buf[..n].to_vec();
                    (conn, _) = step(conn, move |c| c.session.receive_at(Instant::now(), &bytes)).await?;
                }
            }
            changed = rx.recv() => {
                let ours = match &changed {
                    Ok(account) => conn.session.account() == Some(account.as_str()),
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => false,
                };
                if ours {
                    (conn, _) = step(conn, |c| c.session.account_changed()).await?;
                } else if changed.is_err() {
                    // The node is stopping.
                    return Ok(Ok((conn, Wants::Close)));
                }
            }
            _ = tokio::time::sleep_until(deadline) => conn.session.handle_timeout(Instant::now()),
        }
    }
}
