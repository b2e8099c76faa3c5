//! IMAP against a hostile client, with real `starling serve` processes
//! (issue 14, items 2, 3 and 6): pre-login literal floods, drip-fed
//! connections, connection caps, running out of file descriptors, password
//! guessing (penalties), account enumeration by timing, and the cache of
//! successful logins. Each test fails on the IMAP server before the
//! hardening (most simply because the node refused its `[imap]` keys, the
//! rest by what they measure; the comments say what the old server did).

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

fn imap_port(node: &Node) -> u16 {
    node.imap.lock().unwrap().expect("IMAP port printed")
}

/// A node whose account alice has the password `secret`, started with
/// `config` (TOML) and `nofile` as its descriptor limit, if given.
fn node(root: &Path, config: &str, nofile: Option<u64>) -> Node {
    let mut n = Node::new(root, "n");
    passwd(&n, "secret");
    let path = root.join("starling.toml");
    std::fs::write(&path, config).unwrap();
    n.start_with(&["--config", path.to_str().unwrap()], nofile);
    n
}

/// A raw IMAP connection.
struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    /// Connects (from `from`, a loopback address, if given) and returns the
    /// connection with its first line (empty if none came).
    fn open(port: u16, from: Option<&str>) -> (Conn, String) {
        let s = match from {
            None => TcpStream::connect(("127.0.0.1", port)).unwrap(),
            Some(ip) => connect_from(ip, port),
        };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Conn { r: BufReader::new(s.try_clone().unwrap()), w: s };
        let first = c.line();
        (c, first)
    }

    /// Connects and checks the greeting.
    fn greeted(port: u16, from: Option<&str>) -> Conn {
        let (c, greeting) = Conn::open(port, from);
        assert!(greeting.starts_with("* OK"), "greeting: {greeting:?}");
        c
    }

    /// One line; empty at EOF, on an error or a read timeout.
    fn line(&mut self) -> String {
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(_) => line,
            Err(_) => String::new(),
        }
    }

    fn send(&mut self, s: &str) {
        self.w.write_all(s.as_bytes()).unwrap();
    }

    /// Sends `tag command` and returns every line up to the tagged one
    /// (whatever came if the connection ended first).
    fn command(&mut self, tag: &str, command: &str) -> String {
        self.send(&format!("{tag} {command}\r\n"));
        self.until(tag)
    }

    fn until(&mut self, tag: &str) -> String {
        let mut out = String::new();
        loop {
            let l = self.line();
            out.push_str(&l);
            if l.is_empty() || l.starts_with(&format!("{tag} ")) {
                return out;
            }
        }
    }

    /// Whether the server closed the connection (EOF or reset).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        loop {
            match self.r.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue, // the rest of a last answer
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                    return false
                }
                Err(_) => return true,
            }
        }
    }
}

/// LOGIN on a fresh connection: whether it succeeded, and how long the
/// LOGIN alone took.
fn timed_login(port: u16, from: Option<&str>, user: &str, password: &str) -> (bool, Duration) {
    let mut c = Conn::greeted(port, from);
    let t = Instant::now();
    let out = c.command("l", &format!("LOGIN {user} {password}"));
    let took = t.elapsed();
    assert!(out.contains("l OK") || out.contains("l NO [AUTHENTICATIONFAILED]"), "{out}");
    (out.contains("l OK"), took)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// CPU time (user + system) the process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn pid(node: &Node) -> u32 {
    node.child.as_ref().expect("running").id()
}

/// Item 2. Eight connections that have not logged in announce 60 MB
/// literals: four synchronising ones, which are refused before they are sent
/// (no `+`) and then sent anyway, and four non-synchronising ones, after
/// which the server says BYE and closes without reading. The node's peak
/// memory barely moves (before: `+ Ready for literal data`, each literal
/// buffered whole, 14 MB → 497 MB), and a client can still log in.
#[test]
fn a_preauth_literal_flood_is_refused_in_bounded_memory() {
    let root = tempfile::tempdir().unwrap();
    let n = node(root.path(), "[imap]\n", None);
    let port = imap_port(&n);
    let before = n.peak_rss();
    const SIZE: usize = 60_000_000;
    let threads: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Conn::greeted(port, None);
                if i % 2 == 0 {
                    let out = c.command("a", &format!("LOGIN alice {{{SIZE}}}"));
                    assert!(out.contains("a BAD [TOOBIG]") && !out.contains('+'), "synchronising: {out}");
                    // Sent anyway: read as (over-long) lines and dropped.
                    let chunk = vec![b'x'; 1 << 20];
                    for _ in 0..SIZE / chunk.len() {
                        if c.w.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                    let _ = c.w.write_all(b"\r\n");
                    let answer = c.line();
                    assert!(answer.contains(" BAD [TOOBIG]"), "the flood is one refused line: {answer:.200}");
                } else {
                    c.w.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
                    c.send(&format!("a LOGIN alice {{{SIZE}+}}\r\n"));
                    let out = format!("{}{}", c.line(), c.line());
                    assert!(out.contains("a BAD [TOOBIG]") && out.contains("* BYE"), "non-synchronising: {out}");
                    let chunk = vec![b'x'; 1 << 20];
                    let mut sent = 0;
                    while sent < SIZE && c.w.write_all(&chunk).is_ok() {
                        sent += chunk.len();
                    }
                    assert!(sent < SIZE, "the server read the whole literal it had refused");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let after = n.peak_rss();
    eprintln!("peak RSS before {} MB, after the flood {} MB", before >> 20, after >> 20);
    assert!(after < before + (32 << 20), "peak RSS grew from {} MB to {} MB", before >> 20, after >> 20);
    let (ok, _) = timed_login(port, None, "alice", "secret");
    assert!(ok, "a client logs in after the flood");
}

/// Item 2. A client that has not logged in is closed a fixed time after it
/// connected (3 s here), however it drips bytes (before: every byte
/// restarted the timer, so a byte every 40 s kept it open forever). One that
/// logs in in time is not.
#[test]
fn a_drip_fed_preauth_connection_is_closed_at_the_deadline() {
    let root = tempfile::tempdir().unwrap();
    let n = node(root.path(), "[imap]\npreauth_deadline_secs = 3\n", None);
    let port = imap_port(&n);
    let start = Instant::now();
    let mut drip = Conn::greeted(port, None);
    let mut silent = Conn::greeted(port, None);
    let mut user = Conn::greeted(port, None);
    assert!(user.command("u1", "LOGIN alice secret").contains("u1 OK"));
    drip.w.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut closed_at = None;
    for b in b"a LOGIN alice secret-but-very-slowly".iter().cycle().take(20) {
        if drip.w.write_all(&[*b]).is_err() {
            closed_at = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let closed_at = closed_at.expect("the drip-fed connection was closed");
    assert!(
        closed_at >= Duration::from_millis(2900) && closed_at < Duration::from_secs(6),
        "closed after {closed_at:?}"
    );
    let out = drip.until("*");
    assert!(out.contains("* BYE") || out.is_empty(), "{out}");
    assert!(silent.line().starts_with("* BYE"), "the silent one too");
    assert!(silent.closed());
    assert!(user.command("u2", "NOOP").contains("u2 OK"), "a logged-in client stays");
}

/// Item 2. Connections past the limits (3 per address, 6 in total here)
/// are told `* BYE too many connections` and closed; a freed place is
/// taken again (before: no limit at all).
#[test]
fn connections_over_the_caps_get_bye() {
    let root = tempfile::tempdir().unwrap();
    let n = node(root.path(), "[imap]\nconnections_max = 6\nconnections_per_ip = 3\n", None);
    let port = imap_port(&n);
    let mut a: Vec<Conn> = (0..3).map(|_| Conn::greeted(port, Some("127.0.0.1"))).collect();
    let (mut over, line) = Conn::open(port, Some("127.0.0.1"));
    assert_eq!(line, "* BYE too many connections\r\n", "a fourth from one address");
    assert!(over.closed());
    let _b: Vec<Conn> = (0..3).map(|_| Conn::greeted(port, Some("127.0.0.2"))).collect();
    let (mut over, line) = Conn::open(port, Some("127.0.0.3"));
    assert_eq!(line, "* BYE too many connections\r\n", "a seventh in total");
    assert!(over.closed());
    assert!(a.pop().unwrap().command("x", "LOGOUT").contains("x OK"));
    let mut back = None;
    wait_for("a freed place", || {
        let (c, line) = Conn::open(port, Some("127.0.0.3"));
        back = Some(c);
        line.starts_with("* OK")
    });
    assert!(back.unwrap().command("y", "LOGIN alice secret").contains("y OK"));
}

/// Item 3. The node runs with 64 file descriptors and 120 clients connect:
/// `accept` fails with EMFILE. The accept loop backs off (CPU stays low:
/// before it spun at 120%), and once the clients leave, IMAP serves again.
#[test]
fn running_out_of_descriptors_does_not_spin_and_imap_comes_back() {
    let root = tempfile::tempdir().unwrap();
    let n = node(root.path(), "[imap]\nconnections_max = 10000\nconnections_per_ip = 10000\n", Some(64));
    let port = imap_port(&n);
    // 120: past the descriptors, within the listen backlog (128), so every
    // connect completes at once.
    let conns: Vec<TcpStream> = (0..120).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = cpu_time(pid(&n));
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_time(pid(&n)) - cpu0;
    let wall = t0.elapsed();
    eprintln!("CPU while out of descriptors: {used:?} in {wall:?}");
    assert!(used < wall / 10, "the node used {used:?} of CPU in {wall:?} while out of descriptors");
    drop(conns);
    wait_for("IMAP serving again", || {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut c = Conn { r: BufReader::new(s.try_clone().unwrap()), w: s };
        c.line().starts_with("* OK")
    });
    let (ok, _) = timed_login(port, None, "alice", "secret");
    assert!(ok);
}

/// Item 6. Wrong passwords get slower, per address and per account, up to
/// the cap (200 ms doubling to 800 ms here; the defaults are 500 ms and
/// 15 s), while other connections are answered at once; a success clears
/// the penalty (before: 34 wrong logins/s on one connection, no delay).
#[test]
fn wrong_passwords_get_slower_without_holding_up_others() {
    let root = tempfile::tempdir().unwrap();
    let n = node(root.path(), "[imap]\nauth_failure_delay_ms = 200\nauth_failure_delay_max_ms = 800\n", None);
    let port = imap_port(&n);
    let mut c = Conn::greeted(port, Some("127.0.0.1"));
    let mut took = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        if i == 4 {
            // While this attempt waits out its penalty, another connection
            // is served.
            c.send(&format!("w{i} LOGIN alice wrong{i}\r\n"));
            std::thread::sleep(Duration::from_millis(100));
            let mut other = Conn::greeted(port, Some("127.0.0.5"));
            let t_other = Instant::now();
            assert!(other.command("o", "CAPABILITY").contains("o OK"));
            assert!(t_other.elapsed() < Duration::from_millis(300), "{:?}", t_other.elapsed());
            let out = c.until(&format!("w{i}"));
            assert!(out.contains("NO [AUTHENTICATIONFAILED]"), "{out}");
        } else {
            let out = c.command(&format!("w{i}"), &format!("LOGIN alice wrong{i}"));
            assert!(out.contains("NO [AUTHENTICATIONFAILED]"), "{out}");
        }
        took.push(t.elapsed());
    }
    eprintln!("wrong logins took {took:?}");
    let ms = |d: &Duration| d.as_millis() as u64;
    let floors = [0, 200, 400, 800, 800];
    for (i, (t, floor)) in took.iter().zip(floors).enumerate() {
        assert!(ms(t) >= floor, "attempt {i} took {t:?}, below its penalty of {floor} ms");
        assert!(ms(t) < floor + 700, "attempt {i} took {t:?}, past its penalty of {floor} ms (the cap)");
    }
    // The address is penalised for any account, the account from any address.
    let (_, t) = timed_login(port, Some("127.0.0.1"), "nobody", "x");
    assert!(t >= Duration::from_millis(800), "same address, other account: {t:?}");
    let (_, t) = timed_login(port, Some("127.0.0.2"), "alice", "x");
    assert!(t >= Duration::from_millis(800), "other address, same account: {t:?}");
    let (_, t) = timed_login(port, Some("127.0.0.3"), "carol", "x");
    assert!(t < Duration::from_millis(200), "fresh address and account: {t:?}");
    // The right password waits too (so its speed gives nothing away), then
    // clears the penalties.
    let (ok, t) = timed_login(port, Some("127.0.0.4"), "alice", "secret");
    assert!(ok && t >= Duration::from_millis(800), "{ok} {t:?}");
    let (_, t) = timed_login(port, Some("127.0.0.6"), "alice", "wrong");
    assert!(t < Duration::from_millis(200), "after a success: {t:?}");
}

/// Item 6. An unknown account name is answered in the same time as a known
/// account with a wrong password (before: 0.07 ms against 27.7 ms, Argon2
/// ran only for known accounts). Penalties are off here so only the
/// verification is timed. Both now run one Argon2id verification with the
/// same parameters (tens of ms); what is left is scheduling noise on a
/// shared machine, so the medians of seven tries must agree within a factor
/// of 1.5 (the oracle was a factor of ~400).
#[test]
fn unknown_and_known_accounts_take_the_same_time() {
    let root = tempfile::tempdir().unwrap();
    let n = node(root.path(), "[imap]\nauth_failure_delay_ms = 0\n", None);
    let port = imap_port(&n);
    let mut c = Conn::greeted(port, None);
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..7 {
        for (user, times) in [("alice", &mut known), ("nobody", &mut unknown)] {
            let t = Instant::now();
            let out = c.command(&format!("{user}{i}"), &format!("LOGIN {user} wrong"));
            times.push(t.elapsed());
            assert!(out.contains("NO [AUTHENTICATIONFAILED]"), "{out}");
        }
    }
    let (k, u) = (median(known), median(unknown));
    eprintln!("median wrong login: known account {k:?}, unknown {u:?}");
    assert!(k > Duration::from_millis(2), "Argon2 ran: {k:?}");
    assert!(u * 3 > k * 2 && k * 3 > u * 2, "known {k:?} against unknown {u:?}");
}

/// Item 6. After one Argon2 verification a correct login is served from the
/// cache, much faster (before: ~120 ms of Argon2 every time); `starling
/// account passwd` on the running node makes the old password fail at once.
#[test]
fn a_cached_login_is_cheap_until_the_password_changes() {
    let root = tempfile::tempdir().unwrap();
    let n = node(root.path(), "[imap]\n", None);
    let port = imap_port(&n);
    let (ok, first) = timed_login(port, None, "alice", "secret");
    assert!(ok);
    let cached = median((0..7).map(|_| timed_login(port, None, "alice", "secret").1).collect());
    eprintln!("login: first {first:?}, cached {cached:?}");
    assert!(cached * 4 < first, "first {first:?}, cached {cached:?}");
    passwd(&n, "changed");
    let (ok, _) = timed_login(port, None, "alice", "secret");
    assert!(!ok, "the old password is refused after `account passwd`");
    let (ok, _) = timed_login(port, None, "alice", "changed");
    assert!(ok, "the new one works");
}
