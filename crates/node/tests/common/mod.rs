//! What the end-to-end tests share: real `starling` processes in temporary
//! data directories, driven through the CLI and their printed ports.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_starling");

pub struct Node {
    pub dir: PathBuf,
    pub port: u16,
    pub id: String,
    pub child: Option<Child>,
    /// Last "account alice: N ops" the node printed.
    pub ops: Arc<Mutex<Option<u64>>>,
    /// Last "bodies alice: N missing" the node printed.
    pub missing: Arc<Mutex<Option<u64>>>,
    /// The LMTP port it printed.
    pub lmtp: Arc<Mutex<Option<u16>>>,
    /// The IMAP port it printed.
    pub imap: Arc<Mutex<Option<u16>>>,
    /// The IMAP (implicit TLS) port it printed.
    pub imaps: Arc<Mutex<Option<u16>>>,
    /// The status page port it printed.
    pub status: Arc<Mutex<Option<u16>>>,
}

pub fn run(dir: &Path, args: &[&str]) -> String {
    let o = Command::new(BIN).arg("--data-dir").arg(dir).args(args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Node {
    pub fn new(root: &Path, name: &str) -> Node {
        let node = Node::bare(root, name);
        run(&node.dir, &["account", "add", "alice"]);
        node
    }

    /// A node with no account yet.
    pub fn bare(root: &Path, name: &str) -> Node {
        let dir = root.join(name);
        let id = run(&dir, &["id"]).trim().to_string();
        Node {
            dir,
            port: free_udp_port(),
            id,
            child: None,
            ops: Arc::new(Mutex::new(None)),
            missing: Arc::new(Mutex::new(None)),
            lmtp: Arc::new(Mutex::new(None)),
            imap: Arc::new(Mutex::new(None)),
            imaps: Arc::new(Mutex::new(None)),
            status: Arc::new(Mutex::new(None)),
        }
    }

    pub fn pin(&self, other: &Node) {
        run(&self.dir, &["peer", "add", &other.id, &format!("127.0.0.1:{}", other.port), "--accounts", "alice"]);
    }

    pub fn start(&mut self) {
        self.start_with(&[], None);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            c.wait().unwrap();
        }
    }

    pub fn dump(&self) -> String {
        run(&self.dir, &["dump", "alice"])
    }

    pub fn import(&self, root: &Path, tag: &str, n: usize) {
        let md = root.join(format!("maildir-{tag}"));
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(md.join(sub)).unwrap();
        }
        for i in 0..n {
            std::fs::write(md.join(format!("cur/{i}.{tag}.host:2,S")), format!("Subject: {tag} {i}\n\nbody\n"))
                .unwrap();
        }
        run(&self.dir, &["import", "maildir", "alice", md.to_str().unwrap()]);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until the running nodes report the same op count, and no missing
/// body, for a while.
pub fn converge(nodes: &[&Node]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stable_since: Option<(Instant, Vec<Option<u64>>)> = None;
    while Instant::now() < deadline {
        let now: Vec<Option<u64>> = nodes.iter().map(|n| *n.ops.lock().unwrap()).collect();
        let bodies_here = nodes.iter().all(|n| *n.missing.lock().unwrap() == Some(0));
        let same = bodies_here && now.iter().all(|o| o.is_some() && *o == now[0]);
        match &stable_since {
            Some((t, v)) if same && *v == now && t.elapsed() > Duration::from_millis(700) => return,
            Some((_, v)) if same && *v == now => {}
            _ => stable_since = same.then(|| (Instant::now(), now.clone())),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no convergence: {:?}", nodes.iter().map(|n| *n.ops.lock().unwrap()).collect::<Vec<_>>());
}

/// Nodes a, b and c under `root`, each pinning the other two.
pub fn three_pinned(root: &Path) -> [Node; 3] {
    let nodes = ["a", "b", "c"].map(|n| Node::new(root, n));
    for (i, x) in nodes.iter().enumerate() {
        for y in nodes.iter().skip(i + 1) {
            x.pin(y);
            y.pin(x);
        }
    }
    nodes
}

pub fn messages(dump: &str) -> usize {
    dump.lines().filter(|l| l.starts_with("  ")).count()
}

/// Waits until `f` holds, or fails with `what`.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// Sets alice's IMAP password on a node, for that node only (`account
/// passwd --local`, stdin): what most tests want, as it writes no op (the
/// nodes' accounts stay one incarnation when they meet).
pub fn passwd(node: &Node, password: &str) {
    set_password(node, "alice", password, true);
}

/// Sets `account`'s IMAP password on a node, for that node only.
pub fn passwd_of(node: &Node, account: &str, password: &str) {
    set_password(node, account, password, true);
}

/// Sets alice's IMAP password the replicated way (`account passwd`): it
/// reaches every node that syncs the account.
pub fn passwd_replicated(node: &Node, password: &str) {
    set_password(node, "alice", password, false);
}

fn set_password(node: &Node, account: &str, password: &str, local: bool) {
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(&node.dir)
        .args(["account", "passwd", account])
        .args(local.then_some("--local"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), format!("{password}\n").as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

impl Node {
    /// Like [`Node::start`], with `extra` arguments after `serve` (e.g.
    /// `--config FILE`) and, if given, a `nofile` limit (soft and hard) set
    /// on the node process before it runs.
    pub fn start_with(&mut self, extra: &[&str], nofile: Option<u64>) {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir")
            .arg(&self.dir)
            .args(["serve", "--peer-listen", &format!("127.0.0.1:{}", self.port), "--lmtp-listen", "127.0.0.1:0"])
            .args(["--imap-listen", "127.0.0.1:0", "--imaps-listen", "127.0.0.1:0", "--status-listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            // The log, beside the data directory (kept when it is deleted).
            .stderr(std::fs::File::options().create(true).append(true).open(self.dir.with_extension("log")).unwrap());
        if let Some(n) = nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in
            // the child between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        self.launch(cmd);
    }

    /// Starts the node in the network namespace `netns` (`ip netns exec`,
    /// which execs, so the child's pid is the node's), its peer endpoint on
    /// `peer_listen` (an address of that namespace), LMTP and IMAP on the
    /// namespace's loopback. `self.port` is not used.
    pub fn start_in_netns(&mut self, netns: &str, peer_listen: &str) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, BIN, "--data-dir"])
            .arg(&self.dir)
            .args(["serve", "--peer-listen", peer_listen, "--lmtp-listen", "127.0.0.1:0"])
            .args(["--imap-listen", "127.0.0.1:0", "--imaps-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::options().create(true).append(true).open(self.dir.with_extension("log")).unwrap());
        self.launch(cmd);
    }

    /// Spawns `cmd` (a `serve` with piped stdout) and follows what it
    /// prints, until it listens for peers.
    fn launch(&mut self, mut cmd: Command) {
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lmtp, imap, imaps, status) =
            (self.lmtp.clone(), self.imap.clone(), self.imaps.clone(), self.status.clone());
        let (ops, missing) = (self.ops.clone(), self.missing.clone());
        *ops.lock().unwrap() = None;
        *missing.lock().unwrap() = None;
        let (up_tx, up_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("account alice: ").and_then(|r| r.strip_suffix(" ops")) {
                    *ops.lock().unwrap() = n.parse().ok();
                }
                if let Some(n) = line.strip_prefix("bodies alice: ").and_then(|r| r.strip_suffix(" missing")) {
                    *missing.lock().unwrap() = n.parse().ok();
                }
                let port = |a: &str| a.rsplit(':').next().and_then(|p| p.parse().ok());
                if let Some(a) = line.strip_prefix("lmtp: listening on ") {
                    *lmtp.lock().unwrap() = port(a);
                }
                if let Some(a) = line.strip_prefix("imap: listening on ") {
                    *imap.lock().unwrap() = port(a);
                }
                if let Some(a) = line.strip_prefix("imaps: listening on ") {
                    *imaps.lock().unwrap() = port(a);
                }
                if let Some(a) = line.strip_prefix("status: listening on http://") {
                    *status.lock().unwrap() = port(a.trim_end_matches('/'));
                }
                if line.starts_with("peers: listening") {
                    let _ = up_tx.send(());
                }
            }
        });
        up_rx.recv_timeout(Duration::from_secs(20)).expect("node came up");
        self.child = Some(child);
    }

    /// The running node's peak resident memory (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.as_ref().expect("node running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).expect("VmHWM in /proc/PID/status");
        kb.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
    }
}

/// A TCP connection to loopback `port` from the loopback address `ip`
/// (127.0.0.2, …), so tests can stand for several clients.
pub fn connect_from(ip: &str, port: u16) -> std::net::TcpStream {
    use std::net::SocketAddr;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
        let s = s.connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap();
        let s = s.into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    })
}

/// A minimal IMAP client over TCP: enough to drive and observe the server.
pub struct Imap {
    pub r: BufReader<TcpStream>,
    pub w: TcpStream,
}

impl Imap {
    pub fn connect(port: u16) -> Imap {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Imap { r: BufReader::new(s.try_clone().unwrap()), w: s };
        let greeting = c.line().unwrap();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        c
    }

    /// One response line, with any literal it announces read into it.
    pub fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        if self.r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        while let Some(n) = line
            .trim_end()
            .strip_suffix('}')
            .and_then(|l| l.rsplit_once('{'))
            .and_then(|(_, n)| n.parse::<usize>().ok())
        {
            let mut lit = vec![0; n];
            self.r.read_exact(&mut lit).unwrap();
            line.push_str(&String::from_utf8_lossy(&lit));
            let mut more = String::new();
            self.r.read_line(&mut more).unwrap();
            line.push_str(&more);
        }
        Some(line)
    }

    /// Sends a command; returns every line up to its tagged answer, whatever it is.
    pub fn answer(&mut self, tag: &str, command: &str) -> String {
        write!(self.w, "{tag} {command}\r\n").unwrap();
        let mut out = String::new();
        loop {
            let l = self.line().expect("server answered");
            out.push_str(&l);
            if l.starts_with(&format!("{tag} ")) {
                return out;
            }
        }
    }

    /// Sends a command; returns every line up to its tagged answer, which must be OK.
    pub fn ok(&mut self, tag: &str, command: &str) -> String {
        let out = self.answer(tag, command);
        let last = out.lines().last().unwrap_or_default();
        assert!(last.starts_with(&format!("{tag} OK")), "{command} → {out}");
        out
    }

    pub fn append(&mut self, tag: &str, mailbox: &str, msg: &str) -> String {
        write!(self.w, "{tag} APPEND {mailbox} {{{}+}}\r\n{msg}\r\n", msg.len()).unwrap();
        let mut out = String::new();
        loop {
            let l = self.line().unwrap();
            out.push_str(&l);
            if l.starts_with(&format!("{tag} ")) {
                assert!(l.contains("OK"), "{out}");
                return out;
            }
        }
    }
}

/// An LMTP delivery to alice, sent up to its final dot: the reply is read
/// apart ([`Delivery::reply`]), so a test can see it is not there yet.
pub struct Delivery {
    r: BufReader<TcpStream>,
}

impl Delivery {
    pub fn send(port: u16, message: &str) -> Delivery {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut d = Delivery { r: BufReader::new(s) };
        d.reply().unwrap();
        for cmd in ["LHLO test", "MAIL FROM:<t@example.org>", "RCPT TO:<alice>", "DATA"] {
            write!(w, "{cmd}\r\n").unwrap();
            let got = d.reply().unwrap();
            assert!(got.starts_with('2') || got.starts_with('3'), "{cmd}: {got}");
        }
        write!(w, "{message}.\r\n").unwrap();
        d
    }

    /// The next reply (all its lines), or `None` if none came within the
    /// read timeout.
    pub fn reply(&mut self) -> Option<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            match self.r.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    assert!(all.is_empty() && line.is_empty(), "a reply cut short: {all}{line}");
                    return None;
                }
                Err(e) => panic!("{e}"),
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Some(all);
            }
        }
    }

    /// Waits this long at most for the next reply.
    pub fn timeout(&mut self, t: Duration) {
        self.r.get_ref().set_read_timeout(Some(t)).unwrap();
    }
}

/// Runs the imaplib QRESYNC client (tests/imap/qresync_client.py) against a
/// node with the cache in `state`; it checks itself (no under-report,
/// HIGHESTMODSEQ not down). Returns (UIDs reported by FETCH, messages).
pub fn qresync_client(node: &Node, state: &Path) -> (u64, u64) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/imap/qresync_client.py");
    let port = node.imap.lock().unwrap().expect("IMAP port printed").to_string();
    let o = Command::new("python3")
        .arg(&script)
        .args([port.as_str(), "alice", "pw"])
        .arg(state)
        .output()
        .expect("python3 runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "QRESYNC client at {}: {out}\n{}",
        node.dir.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let field = |k: &str| -> u64 {
        out.split(&format!("\"{k}\": ")).nth(1).unwrap().split([',', '}']).next().unwrap().parse().unwrap()
    };
    (field("fetched"), field("messages"))
}
