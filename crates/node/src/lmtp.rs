//! LMTP delivery (RFC 2033) into INBOX: what Postfix's `lmtp:` transport (or
//! any MTA) speaks to hand mail to the node. Each recipient gets its own
//! reply after DATA; `250` is sent only once that recipient's message is
//! committed (fsync) in the store. The recipient's account is the address's
//! local part, or the whole address if an account has that name.
//!
//! The protocol is `starling-lmtp` (a session without I/O); this module
//! drives it over TCP and owns what needs a socket or a clock:
//!
//! * **End of data**: only `<CRLF>.<CRLF>` ends DATA (Postfix's
//!   `smtpd_forbid_bare_newline = normalize`): content lines ended by a bare
//!   LF are stored ended by CRLF, and a `.` line ended by a bare LF or after a
//!   bare-LF line is content, so nothing can be smuggled behind a message
//!   (the `starling-lmtp` crate documentation has the details).
//! * **Bounded buffers**: a connection holds at most one command line
//!   (`line_max`) or one message (`message_max`) plus a 64 KiB read buffer;
//!   longer input is read and dropped, answered `500 5.5.2` or `552 5.3.4`.
//! * **Timeouts** (RFC 5321 §4.5.3.2, 5 minutes by default,
//!   `idle_timeout_secs`): a command line must be complete within it of the
//!   previous one (bytes dripped slowly do not keep a connection), and each
//!   read inside DATA must come within it. Then `421 4.4.2` and close.
//! * **Connection caps**: in total and per client address; a connection over
//!   either is answered `421 4.3.2 too many connections` and closed.
//! * **Accept errors** (out of file descriptors, …) never end the listener:
//!   it backs off and logs once per interval
//!   ([`starling_net::listen::accept_forever`]).

use starling_lmtp::{Backend, Limits, NotDelivered, Session};
use starling_model::{BlobId, MessageId, INBOX};
use starling_net::listen::{accept_forever, AcceptErrors, ConnCounter, ConnLimits};
use starling_store::{Exposed, ExposurePolicy, Store, StoreError, WhenShort};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Bytes read from the socket at a time.
const READ_BYTES: usize = 64 << 10;

/// How the LMTP server is limited (`[lmtp]` in the config file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Line and message sizes, recipients.
    pub limits: Limits,
    /// Silence allowed for a command line, and between reads inside DATA.
    pub idle_timeout: Duration,
    /// Longest one DATA may take from its start to its final dot, however
    /// steadily the bytes come (a byte every few minutes would otherwise
    /// hold a connection for ever).
    pub data_deadline: Duration,
    /// Open connections in total and per client address.
    pub connections: ConnLimits,
}

/// How many pinned peers must hold a delivery before `250` (`[durability]`).
pub type Durability = Arc<ExposurePolicy>;

/// Default of [`Config::idle_timeout`] (RFC 5321 §4.5.3.2: 5 minutes).
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(300);
/// Default of [`Config::data_deadline`]: an hour, so a maximal message
/// (64 MiB) still gets through at 18 KB/s.
pub const DATA_DEADLINE_DEFAULT: Duration = Duration::from_secs(3600);
/// Default of [`Config::connections`]: Postfix opens up to 20 connections
/// per destination by default; room for two such MTAs from one address.
pub const CONNECTIONS_DEFAULT: ConnLimits = ConnLimits { total: 64, per_ip: 32 };

impl Default for Config {
    fn default() -> Config {
        Config {
            limits: Limits::default(),
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            data_deadline: DATA_DEADLINE_DEFAULT,
            connections: CONNECTIONS_DEFAULT,
        }
    }
}

/// Accepts LMTP connections until the task is dropped. A committed delivery
/// tells IDLE sessions and peers through the store's commit hook.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    store: Arc<Store>,
    durability: Durability,
    tasks: crate::tasks::Tasks,
) {
    let counter = ConnCounter::new(config.connections);
    let mut errors = AcceptErrors::default();
    loop {
        let (stream, client) = accept_forever("lmtp", &mut errors, || listener.accept()).await;
        match counter.admit(client.ip()) {
            Ok(guard) => {
                let backend = StoreBackend { store: store.clone(), durability: durability.clone() };
                // Tracked: shutdown waits until no delivery is inside its commit.
                tasks.spawn(async move {
                    let _guard = guard;
                    let _ = session(stream, &config, backend).await;
                });
            }
            Err(why) => {
                // A fresh socket's send buffer is empty: the reply goes out
                // without waiting, and the descriptor is freed at once.
                tracing::debug!(%client, ?why, "LMTP connection refused");
                let _ = stream.try_write(b"421 4.3.2 too many connections\r\n");
            }
        }
    }
}

/// The store as the session's backend.
struct StoreBackend {
    store: Arc<Store>,
    durability: Durability,
}

impl StoreBackend {
    /// Stores the message in `account`'s INBOX (committed, fsync): the
    /// message and its body.
    /// Over the account's quota (checked against this node's copy, in
    /// the same transaction): [`NotDelivered::OverQuota`], nothing stored.
    fn store(&self, account: &str, message: &[u8]) -> Result<(MessageId, BlobId), NotDelivered> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let stored = self.store.write(account, |b| {
            b.within_quota((1, message.len() as u64))?;
            b.append_body(INBOX, message, now, vec![])
        });
        stored.map_err(|e| match e {
            StoreError::OverQuota(why) => NotDelivered::OverQuota(why),
            e => NotDelivered::Failed(e.to_string()),
        })
    }
}

impl Backend for StoreBackend {
    fn account(&mut self, rcpt: &str) -> Option<String> {
        // The account list shares the store's lock with commits.
        let accounts = tokio::task::block_in_place(|| self.store.accounts());
        let local = rcpt.split('@').next()?;
        let found = match accounts.iter().find(|a| *a == rcpt) {
            Some(a) => a.clone(),
            None => accounts.into_iter().find(|a| a == local)?,
        };
        // A deleted account takes no mail (`550`, as for an unknown user).
        match tokio::task::block_in_place(|| self.store.is_deleted(&found)) {
            Ok(false) => Some(found),
            _ => None,
        }
    }

    fn deliver(&mut self, account: &str, message: &[u8]) -> Result<(), NotDelivered> {
        self.deliver_all(&[account], message).pop().expect("one answer")
    }

    /// Stores the message for every recipient, then, with k > 0, waits once
    /// (one deadline for all) until k pinned peers hold each delivery and
    /// its body. Short of k by the deadline: `250` anyway (degrade), or
    /// withdraw the delivery and answer `451` so the MTA retries (refuse).
    fn deliver_all(&mut self, accounts: &[&str], message: &[u8]) -> Vec<Result<(), NotDelivered>> {
        let stored: Vec<Result<(MessageId, BlobId), NotDelivered>> =
            tokio::task::block_in_place(|| accounts.iter().map(|a| self.store(a, message)).collect());
        let policy = &*self.durability;
        if policy.peers == 0 {
            return stored.into_iter().map(|r| r.map(|_| ())).collect();
        }
        let deadline = tokio::time::Instant::now() + policy.wait;
        let store = &self.store;
        tokio::task::block_in_place(|| {
            let rt = tokio::runtime::Handle::current();
            accounts
                .iter()
                .zip(stored)
                .map(|(account, r)| {
                    let (message, blob) = r?;
                    let e = store.exposure(account, vec![blob]).map_err(|e| e.to_string())?;
                    match rt.block_on(store.expose_by(&e, policy, deadline)) {
                        Exposed::Short { peers } => {
                            let why = format!("held by {peers} of the {} peers wanted", policy.peers);
                            tracing::warn!(account, "delivery short of peers: {why}");
                            if policy.when_short == WhenShort::Refuse {
                                store
                                    .write(account, |b| Ok(b.replica().expunge(&[message])?))
                                    .map_err(|e| e.to_string())?;
                                return Err(why.into());
                            }
                            Ok(())
                        }
                        Exposed::Held { .. } | Exposed::Local => Ok(()),
                    }
                })
                .collect()
        })
    }
}

/// Serves one connection until QUIT, EOF, a timeout or an I/O error.
pub async fn session<S, B>(mut stream: S, config: &Config, backend: B) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: Backend,
{
    let idle = config.idle_timeout;
    let mut s = Session::new(backend, config.limits);
    let mut buf = vec![0u8; READ_BYTES];
    // When the next command line must be complete (or, inside DATA, when
    // the next read must come), and when the DATA under way must end.
    let mut deadline = Instant::now() + idle;
    let mut data_ends: Option<Instant> = None;
    loop {
        flush(&mut s, &mut stream, idle).await?;
        if s.is_closed() {
            let _ = tokio::time::timeout(idle, stream.shutdown()).await;
            return Ok(());
        }
        let due = data_ends.map_or(deadline, |d| d.min(deadline));
        let n = match tokio::time::timeout_at(due, stream.read(&mut buf)).await {
            Err(_) => {
                s.timed_out();
                continue;
            }
            Ok(n) => n?,
        };
        if n == 0 {
            return Ok(());
        }
        let (commands, in_data) = (s.commands(), s.in_data());
        let mut pos = 0;
        while pos < n && !s.is_closed() {
            pos += s.receive(&buf[pos..n]);
            flush(&mut s, &mut stream, idle).await?;
        }
        if in_data || s.in_data() || s.commands() != commands {
            deadline = Instant::now() + idle;
        }
        data_ends = match (data_ends, s.in_data()) {
            (None, true) => Some(Instant::now() + config.data_deadline),
            (d, true) => d,
            (_, false) => None,
        };
    }
}

/// Sends what the session has queued; a client that does not read its
/// replies for the idle timeout is dropped.
async fn flush<S: AsyncWrite + Unpin, B: Backend>(
    s: &mut Session<B>,
    w: &mut S,
    idle: Duration,
) -> std::io::Result<()> {
    let out = s.take_output();
    if out.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(idle, w.write_all(&out)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    struct Nobody;

    impl Backend for Nobody {
        fn account(&mut self, _: &str) -> Option<String> {
            None
        }
        fn deliver(&mut self, _: &str, _: &[u8]) -> Result<(), NotDelivered> {
            Err("nobody".into())
        }
    }

    /// Past the account's quota a delivery is a temporary `452 4.2.2`
    /// and stores nothing; once room is made it is taken again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_delivery_over_quota_is_452_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let options = starling_store::StoreOptions::default();
        let store = Arc::new(Store::open(&dir.path().join("s.redb"), starling_model::ReplicaId(1), options).unwrap());
        store.add_account("alice").unwrap();
        store.set_quota("alice", &starling_model::Quota { storage_kb: None, messages: Some(1) }).unwrap();
        let backend = StoreBackend { store: store.clone(), durability: Arc::new(ExposurePolicy::default()) };
        let (client, server) = tokio::io::duplex(64 * 1024);
        let config = Config::default();
        let task = tokio::spawn(async move { session(server, &config, backend).await });
        let (r, mut w) = tokio::io::split(client);
        let mut lines = BufReader::new(r).lines();
        async fn deliver<W: AsyncWrite + Unpin, R: tokio::io::AsyncBufRead + Unpin>(
            w: &mut W,
            lines: &mut tokio::io::Lines<R>,
        ) -> String {
            w.write_all(b"MAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\nSubject: hi\r\n\r\nhi\r\n.\r\n").await.unwrap();
            loop {
                let line = lines.next_line().await.unwrap().unwrap();
                if !line.starts_with("250 2.1") && !line.starts_with("354") {
                    return line;
                }
            }
        }
        w.write_all(b"LHLO x\r\n").await.unwrap();
        while !lines.next_line().await.unwrap().unwrap().starts_with("250 ") {}
        let first = deliver(&mut w, &mut lines).await;
        assert!(first.starts_with("250 2.0.0"), "{first}");
        let second = deliver(&mut w, &mut lines).await;
        assert!(second.starts_with("452 4.2.2 <alice> over quota"), "{second}");
        assert_eq!(store.usage("alice").unwrap().0, 1, "nothing stored past the quota");
        store.set_quota("alice", &starling_model::Quota::default()).unwrap();
        let third = deliver(&mut w, &mut lines).await;
        assert!(third.starts_with("250 2.0.0"), "{third}");
        assert_eq!(store.usage("alice").unwrap().0, 2);
        drop(lines);
        task.abort();
    }

    #[tokio::test]
    async fn a_session_over_any_stream_answers_and_times_out() {
        let config = Config { idle_timeout: Duration::from_millis(200), ..Config::default() };
        let (client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move { session(server, &config, Nobody).await });
        let (r, mut w) = tokio::io::split(client);
        let mut r = BufReader::new(r);
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("220 "), "{line}");
        w.write_all(b"NOOP\r\n").await.unwrap();
        line.clear();
        r.read_line(&mut line).await.unwrap();
        assert_eq!(line, "250 2.0.0 OK\r\n");
        let t = std::time::Instant::now();
        line.clear();
        r.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("421 4.4.2"), "{line}");
        assert!(t.elapsed() >= Duration::from_millis(150));
        task.await.unwrap().unwrap();
    }

    /// A DATA whose bytes keep coming, each well within the idle timeout,
    /// is cut at the DATA deadline: 421, and nothing is delivered.
    #[tokio::test]
    async fn a_dripped_data_is_cut_at_its_deadline() {
        let config = Config {
            idle_timeout: Duration::from_millis(400),
            data_deadline: Duration::from_millis(600),
            ..Config::default()
        };
        let (client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move { session(server, &config, Anybody).await });
        let (r, mut w) = tokio::io::split(client);
        let mut r = BufReader::new(r);
        let mut line = String::new();
        for command in ["LHLO x\r\n", "MAIL FROM:<a@b>\r\n", "RCPT TO:<alice>\r\n", "DATA\r\n"] {
            w.write_all(command.as_bytes()).await.unwrap();
        }
        loop {
            line.clear();
            r.read_line(&mut line).await.unwrap();
            if line.starts_with("354") {
                break;
            }
        }
        let t = std::time::Instant::now();
        let dripping = tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if w.write_all(b"x").await.is_err() {
                    break;
                }
            }
            w
        });
        line.clear();
        r.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("421 4.4.2"), "{line}");
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(550) && took < Duration::from_millis(1900), "{took:?}");
        task.await.unwrap().unwrap();
        drop(dripping.await);
    }

    struct Anybody;

    impl Backend for Anybody {
        fn account(&mut self, a: &str) -> Option<String> {
            Some(a.to_string())
        }
        fn deliver(&mut self, _: &str, _: &[u8]) -> Result<(), NotDelivered> {
            panic!("a cut DATA is not delivered")
        }
    }
}
