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
//! * **Store work off the runtime**: the session says what it needs of the
//!   store ([`starling_lmtp::Wants`]: a recipient's account, a message to
//!   deliver) and waits without holding a runtime thread. The lookups and
//!   commits run on a pool of [`Config::store_threads`] threads of its own
//!   ([`starling_imap::pool::Pool`], queue [`Config::connections`]`.total`:
//!   one step per connection at a time), and the wait for k pinned peers
//!   (`[durability]`) is an await on the runtime, so however many
//!   deliveries wait for peers, IMAP and sync on the same runtime go on.

use starling_imap::pool::Pool;
use starling_lmtp::{Delivery, Limits, NotDelivered, Session, Wants};
use starling_model::{BlobId, MessageId, INBOX};
use starling_net::listen::{accept_forever, AcceptErrors, ConnCounter, ConnLimits};
use starling_store::{Exposed, Exposure, ExposurePolicy, Store, StoreError, WhenShort};
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
    /// Threads running the sessions' store steps (recipient lookups,
    /// commits, withdrawals); more steps wait their turn in a queue.
    pub store_threads: usize,
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
/// Default of [`Config::store_threads`]: commits share one write lock in
/// the store, so more threads than this add waiting, not throughput.
pub const STORE_THREADS_DEFAULT: usize = 4;

impl Default for Config {
    fn default() -> Config {
        Config {
            limits: Limits::default(),
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            data_deadline: DATA_DEADLINE_DEFAULT,
            connections: CONNECTIONS_DEFAULT,
            store_threads: STORE_THREADS_DEFAULT,
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
    let deliverer = Deliverer::new(store, durability, &config, tasks.clone());
    loop {
        let (stream, client) = accept_forever("lmtp", &mut errors, || listener.accept()).await;
        match counter.admit(client.ip()) {
            Ok(guard) => {
                let deliverer = deliverer.clone();
                // Tracked: shutdown waits until no delivery is inside its commit.
                tasks.spawn(async move {
                    let _guard = guard;
                    let _ = session(stream, &config, &deliverer).await;
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

/// What the sessions' store steps run with: the store, the durability
/// policy, and the pool their blocking parts run on.
#[derive(Clone)]
pub struct Deliverer {
    store: Arc<Store>,
    durability: Durability,
    pool: Arc<Pool>,
    tasks: crate::tasks::Tasks,
}

/// One recipient's delivery once stored: its message and, with k > 0, what
/// the peers must hold.
type Stored = Result<(MessageId, Option<Exposure>), NotDelivered>;

impl Deliverer {
    /// A pool of `config.store_threads` threads, with a queue of one step
    /// per connection (`config.connections.total`).
    pub fn new(store: Arc<Store>, durability: Durability, config: &Config, tasks: crate::tasks::Tasks) -> Deliverer {
        let pool = Pool::new("lmtp-store", config.store_threads, config.connections.total, 0);
        Deliverer { store, durability, pool: Arc::new(pool), tasks }
    }

    /// Answers what the session waits for, if anything.
    async fn answer(&self, s: &mut Session) -> std::io::Result<()> {
        match s.wants() {
            Wants::Read => {}
            Wants::Account => {
                let rcpt = s.recipient().unwrap_or_default().to_string();
                let store = self.store.clone();
                let found = self.pool.run(move || account_of(&store, &rcpt)).await;
                // A lookup gone wrong ends the connection: the MTA retries.
                s.found(found.map_err(|_| std::io::Error::other("a recipient lookup panicked"))?);
            }
            Wants::Deliver => {
                let Some(delivery) = s.take_delivery() else { return Ok(()) };
                let n = delivery.accounts.len();
                let this = self.clone();
                // A task of its own, never cancelled: stopped between its
                // commit and its answer, a refused delivery would stay.
                let results = self.tasks.spawn_whole(async move { this.deliver_all(delivery).await }).await;
                s.delivered(results.unwrap_or_else(|_| vec![Err("the delivery failed".into()); n]));
            }
        }
        Ok(())
    }

    /// Stores the message for every recipient (on the pool), then, with
    /// k > 0, waits on the runtime (one deadline for all) until k pinned
    /// peers hold each delivery and its body. Short of k by the deadline:
    /// `250` anyway (degrade), or withdraw the delivery and answer `451` so
    /// the MTA retries (refuse).
    async fn deliver_all(&self, delivery: Delivery) -> Vec<Result<(), NotDelivered>> {
        let n = delivery.accounts.len();
        let (store, k) = (self.store.clone(), self.durability.peers);
        let accounts = delivery.accounts.clone();
        let stored = self.pool.run(move || {
            let Delivery { accounts, message } = delivery;
            accounts.iter().map(|a| store_one(&store, a, &message, k > 0)).collect::<Vec<Stored>>()
        });
        let Ok(stored) = stored.await else { return vec![Err("the delivery failed".into()); n] };
        let policy = &*self.durability;
        let deadline = Instant::now() + policy.wait;
        let mut results = Vec::with_capacity(n);
        for (account, r) in accounts.into_iter().zip(stored) {
            let result = match r {
                Err(e) => Err(e),
                Ok((_, None)) => Ok(()),
                Ok((message, Some(e))) => match self.store.expose_by(&e, policy, deadline).await {
                    Exposed::Held { .. } | Exposed::Local => Ok(()),
                    Exposed::Short { peers } => {
                        let why = format!("held by {peers} of the {} peers wanted", policy.peers);
                        tracing::warn!(%account, "delivery short of peers: {why}");
                        if policy.when_short == WhenShort::Refuse {
                            let store = self.store.clone();
                            let withdrawn = self
                                .pool
                                .run(move || store.write(&account, |b| Ok(b.replica().expunge(&[message])?)))
                                .await;
                            match withdrawn {
                                Ok(Ok(_)) => Err(why.into()),
                                Ok(Err(e)) => Err(e.to_string().into()),
                                Err(_) => Err("the withdrawal failed".into()),
                            }
                        } else {
                            Ok(())
                        }
                    }
                },
            };
            results.push(result);
        }
        results
    }
}

/// The account receiving mail for `rcpt` (a `RCPT TO` path): the account
/// of that name, else the one named by its local part; none if deleted.
fn account_of(store: &Store, rcpt: &str) -> Option<String> {
    let accounts = store.accounts();
    let local = rcpt.split('@').next()?;
    let found = match accounts.iter().find(|a| *a == rcpt) {
        Some(a) => a.clone(),
        None => accounts.into_iter().find(|a| a == local)?,
    };
    // A deleted account takes no mail (`550`, as for an unknown user).
    match store.is_deleted(&found) {
        Ok(false) => Some(found),
        _ => None,
    }
}

/// Stores the message in `account`'s INBOX (committed, fsync): the message
/// and its body, and (if `exposed`) what peers must hold of it. Over the
/// account's quota (checked against this node's copy, in the same
/// transaction): [`NotDelivered::OverQuota`], nothing stored.
fn store_one(store: &Store, account: &str, message: &[u8], exposed: bool) -> Stored {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let stored: Result<(MessageId, BlobId), StoreError> = store.write(account, |b| {
        b.within_quota((1, message.len() as u64))?;
        b.append_body(INBOX, message, now, vec![])
    });
    let (id, blob) = stored.map_err(|e| match e {
        StoreError::OverQuota(why) => NotDelivered::OverQuota(why),
        e => NotDelivered::Failed(e.to_string()),
    })?;
    if !exposed {
        return Ok((id, None));
    }
    let e = store.exposure(account, vec![blob]).map_err(|e| NotDelivered::Failed(e.to_string()))?;
    Ok((id, Some(e)))
}

/// Serves one connection until QUIT, EOF, a timeout or an I/O error.
pub async fn session<S>(mut stream: S, config: &Config, deliverer: &Deliverer) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let idle = config.idle_timeout;
    let mut s = Session::new(config.limits);
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
            // The replies so far go out before a store step (pipelined
            // commands are answered as they complete). The store's time is
            // not the client's: the timers below start again after it.
            flush(&mut s, &mut stream, idle).await?;
            deliverer.answer(&mut s).await?;
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
async fn flush<S: AsyncWrite + Unpin>(s: &mut Session, w: &mut S, idle: Duration) -> std::io::Result<()> {
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

    /// A store in `dir` with alice, and a deliverer on it.
    fn deliverer(dir: &std::path::Path, policy: ExposurePolicy, config: &Config) -> (Arc<Store>, Deliverer) {
        let options = starling_store::StoreOptions::default();
        let store = Arc::new(Store::open(&dir.join("s.redb"), starling_model::ReplicaId(1), options).unwrap());
        store.add_account("alice").unwrap();
        let d = Deliverer::new(store.clone(), Arc::new(policy), config, crate::tasks::Tasks::default());
        (store, d)
    }

    /// Past the account's quota a delivery is a temporary `452 4.2.2`
    /// and stores nothing; once room is made it is taken again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_delivery_over_quota_is_452_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::default();
        let (store, backend) = deliverer(dir.path(), ExposurePolicy::default(), &config);
        store.set_quota("alice", &starling_model::Quota { storage_kb: None, messages: Some(1) }).unwrap();
        let (client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move { session(server, &config, &backend).await });
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
        let dir = tempfile::tempdir().unwrap();
        let (_, d) = deliverer(dir.path(), ExposurePolicy::default(), &config);
        let (client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move { session(server, &config, &d).await });
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
        let dir = tempfile::tempdir().unwrap();
        let (store, d) = deliverer(dir.path(), ExposurePolicy::default(), &config);
        let (client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move { session(server, &config, &d).await });
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
        assert_eq!(store.usage("alice").unwrap().0, 0, "a cut DATA is not delivered");
    }

    /// One full transaction for alice from a plain thread (not on the
    /// runtime): the reply to DATA and when it came.
    fn deliver_from_a_thread(port: u16) -> (String, std::time::Instant) {
        use std::io::{BufRead, Write};
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut w = s.try_clone().unwrap();
        w.write_all(b"LHLO x\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\nSubject: hi\r\n\r\nhi\r\n.\r\n").unwrap();
        let mut r = std::io::BufReader::new(s);
        let mut after_354 = false;
        loop {
            let mut line = String::new();
            assert!(r.read_line(&mut line).unwrap() > 0, "closed before the reply to DATA");
            if after_354 {
                return (line, std::time::Instant::now());
            }
            after_354 = line.starts_with("354");
        }
    }

    /// Issue 15. With k = 1 and the pinned peer never coming, each delivery
    /// waits for it (4 s) before its answer. More deliveries wait than the
    /// runtime has workers, and the runtime's blocking pool is small (2
    /// threads; tokio's default is 512, reached the same way by 512 such
    /// deliveries): another task on the same runtime is still served at
    /// once, long before any delivery's wait ends. (When the store steps
    /// ran in `block_in_place` and the wait was a `block_on` there, each
    /// waiting delivery held a thread and its worker's core waited for a
    /// blocking thread: the runtime wedged, its timers stopped, and the
    /// task was not run within 60 s, though each wait was 4 s.)
    #[test]
    fn deliveries_waiting_for_peers_leave_the_runtime_free() {
        const WAIT: Duration = Duration::from_secs(4);
        const DELIVERIES: usize = 8;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // Not dropped if the test fails: dropping a runtime waits for its
        // blocking threads, which a wedged runtime never frees.
        let rt = std::mem::ManuallyDrop::new(rt);
        let dir = tempfile::tempdir().unwrap();
        let options = starling_store::StoreOptions::default();
        let store = Arc::new(Store::open(&dir.path().join("s.redb"), starling_model::ReplicaId(1), options).unwrap());
        store.add_account("alice").unwrap();
        let pinned = std::collections::BTreeMap::from([("alice".to_string(), vec![starling_model::ReplicaId(2)])]);
        let policy = ExposurePolicy { peers: 1, wait: WAIT, when_short: WhenShort::Degrade, pinned: pinned.into() };
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks = crate::tasks::Tasks::default();
        rt.spawn(serve(listener, Config::default(), store.clone(), Arc::new(policy), tasks));
        let clients: Vec<_> =
            (0..DELIVERIES).map(|_| std::thread::spawn(move || deliver_from_a_thread(port))).collect();
        // Deliveries are committed and waiting for the peer.
        let started = std::time::Instant::now();
        while store.usage("alice").unwrap().0 == 0 {
            assert!(started.elapsed() < Duration::from_secs(60), "no delivery committed");
            std::thread::sleep(Duration::from_millis(5));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move { tx.send(std::time::Instant::now()).unwrap() });
        let probe = rx.recv_timeout(Duration::from_secs(60)).expect("the probe task ran");
        let replies: Vec<(String, std::time::Instant)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        for (reply, _) in &replies {
            assert!(reply.starts_with("250 2.0.0 <alice> delivered"), "degrade: {reply}");
        }
        assert_eq!(store.usage("alice").unwrap().0, DELIVERIES as u64);
        let first = replies.iter().map(|(_, at)| *at).min().unwrap();
        // Each answer comes WAIT after its commit, and the probe ran after
        // the first commit: served at once, it leads by nearly WAIT.
        assert!(
            first > probe && first.duration_since(probe) >= WAIT / 2,
            "the probe ran {:?} after the first answer",
            probe.saturating_duration_since(first)
        );
        std::mem::ManuallyDrop::into_inner(rt).shutdown_timeout(Duration::from_secs(10));
    }

    /// The store pool's bound: with its one thread busy and its queue full,
    /// a session's RCPT waits for room (no reply, nothing run) while the
    /// runtime, of one worker, goes on; once room is made it is answered
    /// and the delivery goes through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_full_store_pool_makes_sessions_wait_without_holding_the_runtime() {
        let config = Config { store_threads: 1, connections: ConnLimits { total: 1, per_ip: 1 }, ..Config::default() };
        let dir = tempfile::tempdir().unwrap();
        let (store, d) = deliverer(dir.path(), ExposurePolicy::default(), &config);
        assert_eq!(d.pool.threads(), 1);
        // One job holds the thread, one fills the queue: the bound.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel();
        d.pool
            .try_spawn(move || {
                started.send(()).unwrap();
                let _ = held.recv();
            })
            .unwrap();
        running.recv().unwrap();
        d.pool.try_spawn(|| ()).unwrap();
        assert_eq!(d.pool.try_spawn(|| ()), Err(starling_imap::pool::Busy), "the queue is full");
        let (client, server) = tokio::io::duplex(64 * 1024);
        let pool = d.pool.clone();
        let task = tokio::spawn(async move { session(server, &config, &d).await });
        let (r, mut w) = tokio::io::split(client);
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"LHLO x\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\n").await.unwrap();
        while !lines.next_line().await.unwrap().unwrap().starts_with("250 2.1.0") {}
        // The runtime's only worker is free: this timer fires, and no
        // reply to RCPT came.
        let rcpt = tokio::time::timeout(Duration::from_millis(300), lines.next_line()).await;
        assert!(rcpt.is_err(), "answered past the pool's bound: {rcpt:?}");
        assert_eq!(pool.in_flight(), 2, "the lookup waits for room, not in the queue");
        release.send(()).unwrap();
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "250 2.1.5 OK");
        w.write_all(b"DATA\r\nhi\r\n.\r\nQUIT\r\n").await.unwrap();
        assert!(lines.next_line().await.unwrap().unwrap().starts_with("354"));
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "250 2.0.0 <alice> delivered");
        assert_eq!(store.usage("alice").unwrap().0, 1);
        assert!(lines.next_line().await.unwrap().unwrap().starts_with("221"));
        task.await.unwrap().unwrap();
    }
}
