//! The store pool (issue 15): every session step that may touch the store
//! runs on a fixed pool of threads with a bounded queue, never on the async
//! workers. Over real TCP connections to the tokio shell, with a commit
//! made slow (or made to panic) by the store's commit hook, which runs on
//! the committing thread after the commit:
//! - a slow commit does not hold up another session's NOOP, even with one
//!   async thread for every connection;
//! - with one store thread and a queue of one, steps wait their turn in
//!   the order they came, and no more than thread + queue are ever taken;
//! - a session waiting for the pool still meets its deadline (BYE);
//! - a step that panics ends its own connection only (what it committed
//!   is kept), and the pool's thread goes on.

mod common;
use common::*;

use starling_imap::{Config, Listener};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the commit hook does to the next commit.
#[derive(Default)]
struct Hook {
    /// Sleep this long (milliseconds; 0: not).
    sleep_ms: AtomicU64,
    /// Panic.
    panic: AtomicBool,
    /// Told when a commit starts sleeping.
    entered: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// Accounts committed, in order.
    order: Mutex<Vec<String>>,
}

struct Running {
    server: Server,
    addr: SocketAddr,
    hook: Arc<Hook>,
}

/// A server (accounts alice, bob and carol, password pw) behind `serve` on
/// a loopback port, on a runtime with ONE thread for every connection.
fn start(config: Config) -> Running {
    let server = server_with(config);
    let store = &server.shared.store;
    for a in ["bob", "carol"] {
        store.add_account(a).unwrap();
        store.set_local_credential(a, Some(&starling_imap::auth::hash_password("pw"))).unwrap();
    }
    let hook = Arc::new(Hook::default());
    let h = hook.clone();
    store.on_commit(move |account| {
        h.order.lock().unwrap().push(account.to_string());
        let ms = h.sleep_ms.swap(0, Ordering::SeqCst);
        if ms > 0 {
            if let Some(tx) = h.entered.lock().unwrap().take() {
                let _ = tx.send(());
            }
            std::thread::sleep(Duration::from_millis(ms));
        }
        if h.panic.swap(false, Ordering::SeqCst) {
            panic!("a commit hook gone wrong (on purpose)");
        }
    });
    let dir = server._dir.path().to_path_buf();
    let shared = server.shared.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    // The runtime's one thread serves every connection, on a thread of its
    // own (ended with the test process).
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let tls = starling_imap::tls_acceptor(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(tcp.local_addr().unwrap()).unwrap();
            let (changes, _) = tokio::sync::broadcast::channel(16);
            starling_imap::serve(Listener { tcp, implicit_tls: false }, shared, tls, changes, |f| {
                tokio::spawn(f);
            })
            .await
        })
    });
    let addr = rx.recv().unwrap();
    Running { server, addr, hook }
}

struct Client {
    tcp: TcpStream,
    got: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut c = Client { tcp, got: Vec::new() };
        let greeting = c.line();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        c
    }

    /// The next response line (empty at the end of the stream).
    fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.got.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.got.drain(..end + 2).collect();
                return String::from_utf8(line).unwrap();
            }
            let mut buf = [0u8; 4096];
            let n = self.tcp.read(&mut buf).unwrap();
            if n == 0 {
                return String::new();
            }
            self.got.extend_from_slice(&buf[..n]);
        }
    }

    fn write(&mut self, bytes: &str) {
        self.tcp.write_all(bytes.as_bytes()).unwrap();
    }

    /// Reads to the tagged response of `tag`, every response checked to
    /// parse; returns them all.
    fn until(&mut self, tag: &str) -> String {
        let mut all = String::new();
        loop {
            let line = self.line();
            assert!(!line.is_empty(), "the connection ended before {tag}: {all}");
            all.push_str(&line);
            if line.starts_with(&format!("{tag} ")) {
                assert_responses(all.as_bytes());
                return all;
            }
        }
    }

    fn send(&mut self, tag: &str, command: &str) -> String {
        self.write(&format!("{tag} {command}\r\n"));
        self.until(tag)
    }

    fn login(addr: SocketAddr, user: &str) -> Client {
        let mut c = Client::connect(addr);
        let r = c.send("l", &format!("LOGIN {user} pw"));
        assert!(r.contains("l OK"), "{r}");
        c
    }

    /// A one-line APPEND in one write (LITERAL+): one step of the session.
    fn append(&mut self, tag: &str) {
        let body = format!("Subject: {tag}\r\n\r\nhello\r\n");
        self.write(&format!("{tag} APPEND INBOX {{{}+}}\r\n{body}\r\n", body.len()));
    }
}

/// Makes the next commit sleep `ms`; returns what tells it has begun.
fn slow_next_commit(hook: &Hook, ms: u64) -> std::sync::mpsc::Receiver<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    *hook.entered.lock().unwrap() = Some(tx);
    hook.sleep_ms.store(ms, Ordering::SeqCst);
    rx
}

#[test]
fn a_slow_commit_does_not_hold_up_another_sessions_noop() {
    // Two store threads; the async runtime has one thread for everything
    // (a step run on it would stop every connection: with
    // `block_in_place`, as before the pool, it panics there).
    let r = start(Config { store_threads: 2, ..Config::default() });
    let mut a = Client::login(r.addr, "alice");
    let mut b = Client::login(r.addr, "bob");
    let entered = slow_next_commit(&r.hook, 3000);
    let t0 = Instant::now();
    a.append("a1");
    entered.recv_timeout(Duration::from_secs(30)).expect("the APPEND commits");
    let t = Instant::now();
    let noop = b.send("b1", "NOOP");
    assert!(noop.contains("b1 OK"), "{noop}");
    assert!(t.elapsed() < Duration::from_millis(2000), "NOOP waited {:?} for another session's commit", t.elapsed());
    let appended = a.until("a1");
    assert!(appended.contains("a1 OK"), "{appended}");
    assert!(t0.elapsed() >= Duration::from_millis(3000), "the commit was slow");
}

#[test]
fn with_one_store_thread_steps_wait_their_turn_in_order_within_the_queue() {
    let r = start(Config { store_threads: 1, store_queue: 1, ..Config::default() });
    let pool = r.server.shared.store_pool();
    assert_eq!(pool.threads(), 1);
    let mut a = Client::login(r.addr, "alice");
    let mut b = Client::login(r.addr, "bob");
    let mut c = Client::login(r.addr, "carol");
    r.hook.order.lock().unwrap().clear();
    let entered = slow_next_commit(&r.hook, 2000);
    a.append("a1");
    entered.recv_timeout(Duration::from_secs(30)).expect("the APPEND commits");
    // Bob's step takes the queue's one place; Carol's waits for room.
    b.append("b1");
    std::thread::sleep(Duration::from_millis(200));
    c.append("c1");
    let mut most = 0;
    let until = Instant::now() + Duration::from_millis(1000);
    while Instant::now() < until {
        most = most.max(pool.in_flight());
        std::thread::sleep(Duration::from_millis(5));
    }
    // The thread and the queue are full, and never more than them.
    assert_eq!(most, 2, "one running and one queued at most");
    for (client, tag) in [(&mut a, "a1"), (&mut b, "b1"), (&mut c, "c1")] {
        let got = client.until(tag);
        assert!(got.contains(&format!("{tag} OK")), "{got}");
    }
    // First come, first served.
    assert_eq!(*r.hook.order.lock().unwrap(), ["alice", "bob", "carol"]);
}

#[test]
fn a_session_waiting_for_the_pool_still_meets_its_deadline() {
    let r = start(Config {
        store_threads: 1,
        store_queue: 1,
        preauth_deadline: Duration::from_secs(2),
        ..Config::default()
    });
    let mut a = Client::login(r.addr, "alice");
    let entered = slow_next_commit(&r.hook, 6000);
    let t0 = Instant::now();
    a.append("a1");
    entered.recv_timeout(Duration::from_secs(30)).expect("the APPEND commits");
    // Not logged in: each has 2 s. One waits in the queue, one for room in it.
    let mut waiting = Vec::new();
    for tag in ["q1", "r1"] {
        let mut c = Client::connect(r.addr);
        c.write(&format!("{tag} NOOP\r\n"));
        waiting.push((c, Instant::now()));
        std::thread::sleep(Duration::from_millis(100));
    }
    for (mut c, connected) in waiting {
        let bye = c.line();
        assert!(bye.starts_with("* BYE autologout"), "{bye}");
        assert_responses(bye.as_bytes());
        assert_eq!(c.line(), "", "closed after the BYE, the NOOP unanswered");
        let waited = connected.elapsed();
        assert!(waited < Duration::from_millis(4500), "BYE after {waited:?}, not at the deadline");
    }
    assert!(t0.elapsed() < Duration::from_millis(6000), "before the slow commit ended");
    let appended = a.until("a1");
    assert!(appended.contains("a1 OK"), "{appended}");
}

#[test]
fn a_panicking_step_ends_its_own_connection_only() {
    let r = start(Config { store_threads: 1, ..Config::default() });
    let mut a = Client::login(r.addr, "alice");
    let mut b = Client::login(r.addr, "alice");
    let before = r.server.shared.sessions();
    r.hook.panic.store(true, Ordering::SeqCst);
    a.append("a1");
    let bye = a.line();
    assert!(bye.starts_with("* BYE"), "{bye}");
    assert_responses(bye.as_bytes());
    assert_eq!(a.line(), "", "closed");
    // The other session, on the pool's one thread, goes on; what the
    // panicking step committed is kept.
    let noop = b.send("b1", "NOOP");
    assert!(noop.contains("b1 OK"), "{noop}");
    let select = b.send("b2", "SELECT INBOX");
    assert!(select.contains("* 1 EXISTS"), "{select}");
    let mut c = Client::login(r.addr, "bob");
    assert!(c.send("c1", "SELECT INBOX").contains("c1 OK"));
    assert_eq!(r.server.shared.sessions(), before, "the lost session was let go (a new one took its place)");
    // The thread counts its job done just after the answer went out.
    let until = Instant::now() + Duration::from_secs(10);
    while r.server.shared.store_pool().in_flight() > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(r.server.shared.store_pool().in_flight(), 0);
}
