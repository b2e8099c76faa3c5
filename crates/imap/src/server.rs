//! The tokio shell around [`Session`]: accepts TCP connections (plain with
//! STARTTLS, or implicit TLS), moves bytes between the socket and the
//! session, starts TLS when asked, and wakes sessions when the node's change
//! broadcast names their account (IDLE).

use crate::session::{Session, Shared, Wants};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
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

/// A client that sent nothing for this long is logged out (RFC 9051 asks at
/// least 30 minutes; IDLE clients re-issue within 29).
const AUTOLOGOUT: Duration = Duration::from_secs(31 * 60);
/// Before authentication, much less.
const AUTOLOGOUT_PREAUTH: Duration = Duration::from_secs(60);

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
pub async fn serve(listener: Listener, shared: Arc<Shared>, tls: TlsAcceptor, changes: broadcast::Sender<String>) {
    loop {
        let Ok((stream, addr)) = listener.tcp.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let (shared, tls, changes) = (shared.clone(), tls.clone(), changes.clone());
        let implicit = listener.implicit_tls;
        tokio::spawn(async move {
            let _ = connection(stream, addr.ip().is_loopback(), implicit, shared, tls, changes).await;
        });
    }
}

async fn connection(
    stream: TcpStream,
    loopback: bool,
    implicit_tls: bool,
    shared: Arc<Shared>,
    tls: TlsAcceptor,
    changes: broadcast::Sender<String>,
) -> std::io::Result<()> {
    let mut rx = changes.subscribe();
    if implicit_tls {
        let mut stream = tokio::time::timeout(AUTOLOGOUT_PREAUTH, tls.accept(stream)).await??;
        let mut session = Session::new(shared, true, loopback, false);
        drive(&mut stream, &mut session, &mut rx).await?;
        return stream.shutdown().await;
    }
    let mut stream = stream;
    let mut session = Session::new(shared, false, loopback, true);
    if drive(&mut stream, &mut session, &mut rx).await? == Wants::StartTls {
        let mut stream = tokio::time::timeout(AUTOLOGOUT_PREAUTH, tls.accept(stream)).await??;
        session.tls_started();
        drive(&mut stream, &mut session, &mut rx).await?;
        return stream.shutdown().await;
    }
    stream.shutdown().await
}

/// Runs the session on `stream` until it wants something other than reading.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    rx: &mut broadcast::Receiver<String>,
) -> std::io::Result<Wants> {
    let mut buf = [0u8; 4096];
    loop {
        if session.has_output() {
            stream.write_all(&session.take_output()).await?;
            stream.flush().await?;
        }
        if session.wants() != Wants::Read {
            return Ok(session.wants());
        }
        let limit = if session.account().is_some() { AUTOLOGOUT } else { AUTOLOGOUT_PREAUTH };
        tokio::select! {
            read = stream.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    return Ok(Wants::Close);
                }
                // Store calls block (a commit waits for fsync).
                tokio::task::block_in_place(|| session.receive(&buf[..n]));
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
            _ = tokio::time::sleep(limit) => {
                stream.write_all(b"* BYE autologout: idle for too long\r\n").await?;
                return Ok(Wants::Close);
            }
        }
    }
}
