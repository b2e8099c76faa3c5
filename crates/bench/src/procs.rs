//! Real `starling` processes for the benchmarks that measure nodes from
//! outside (`join`, `heal`, `relay-sync`): data directories made with the
//! CLI, `starling serve` started and stopped, asked through its control
//! socket, its peak memory read from /proc.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The account every benchmark uses.
pub const USER: &str = "u";

/// The `starling` binary: the given one, else the one next to this binary.
pub fn starling_bin(given: Option<PathBuf>) -> PathBuf {
    let bin = given.unwrap_or_else(|| std::env::current_exe().unwrap().with_file_name("starling"));
    assert!(bin.exists(), "{} missing: cargo build --release -p starling", bin.display());
    bin
}

/// Runs a CLI command in a data directory; panics with its stderr if it fails.
pub fn cli(bin: &Path, dir: &Path, args: &[&str]) -> String {
    let o = Command::new(bin).arg("--data-dir").arg(dir).args(args).output().expect("run starling");
    assert!(o.status.success(), "starling {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Runs a CLI command with `input` on standard input.
pub fn cli_stdin(bin: &Path, dir: &Path, args: &[&str], input: &str) -> String {
    let mut c = Command::new(bin)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run starling");
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "starling {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The replica id a node uses in every account: the first 8 bytes of its
/// node id (as `starling_net::NodeId::replica`).
pub fn replica_of(node_id: &str) -> u64 {
    u64::from_str_radix(&node_id[..16], 16).expect("node id is hex")
}

/// A free UDP port on loopback (for `--peer-listen`).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What a running node printed that the benchmarks use.
#[derive(Default)]
struct Seen {
    lmtp: Option<String>,
    imap: Option<String>,
    metrics: Option<String>,
    ready: bool,
    /// The last lines (for reports when something goes wrong).
    tail: std::collections::VecDeque<String>,
}

/// One node: a data directory and, while it runs, its `serve` process.
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    /// Its node id (hex).
    pub id: String,
    /// UDP port of its peer endpoint.
    pub port: u16,
    /// More arguments for `serve` (e.g. `--config FILE`), empty by default.
    pub serve_args: Vec<String>,
    child: Option<Child>,
    seen: Arc<Mutex<Seen>>,
}

impl Node {
    /// Makes a data directory with an identity and the account.
    pub fn create(bin: &Path, name: &str, dir: PathBuf) -> Node {
        let _ = std::fs::remove_dir_all(&dir);
        let id = cli(bin, &dir, &["id"]);
        cli(bin, &dir, &["account", "add", USER]);
        Node::new(name, dir, id)
    }

    /// A node for an existing data directory (identity and account made).
    pub fn existing(bin: &Path, name: &str, dir: PathBuf) -> Node {
        let id = cli(bin, &dir, &["id"]);
        Node::new(name, dir, id)
    }

    fn new(name: &str, dir: PathBuf, id: String) -> Node {
        Node {
            name: name.into(),
            dir,
            id,
            port: free_udp_port(),
            serve_args: Vec::new(),
            child: None,
            seen: Arc::default(),
        }
    }

    /// The replica id of this node.
    pub fn replica(&self) -> u64 {
        replica_of(&self.id)
    }

    /// Pins `other` as a peer reachable at `addr`, sharing the account.
    pub fn pin(&self, bin: &Path, other: &Node, addr: &str) {
        cli(bin, &self.dir, &["peer", "add", &other.id, addr, "--accounts", USER]);
    }

    /// Starts `starling serve` (LMTP and IMAP on free ports, then
    /// [`Node::serve_args`]) and waits until its peer endpoint listens.
    /// Standard error (the log) goes to `DIR/serve.log`.
    pub fn start(&mut self, bin: &Path) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("serve.log")).unwrap();
        let mut child = Command::new(bin)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["serve", "--peer-listen", &format!("127.0.0.1:{}", self.port), "--lmtp-listen", "127.0.0.1:0"])
            .args(["--imap-listen", "127.0.0.1:0", "--imaps-listen", "127.0.0.1:0"])
            .args(&self.serve_args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start starling");
        let out = child.stdout.take().unwrap();
        self.seen = Arc::default();
        let seen = self.seen.clone();
        std::thread::spawn(move || {
            // Read every line, always: a node blocks once its stdout pipe is full.
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut s = seen.lock().unwrap();
                if let Some(a) = line.strip_prefix("lmtp: listening on ") {
                    s.lmtp = Some(a.trim().to_string());
                } else if let Some(a) = line.strip_prefix("imap: listening on ") {
                    s.imap = Some(a.trim().to_string());
                } else if let Some(a) = line.strip_prefix("metrics: listening on http://") {
                    s.metrics = Some(a.trim().trim_end_matches("/metrics").to_string());
                } else if line.starts_with("peers: listening") {
                    s.ready = true;
                }
                if s.tail.len() == 40 {
                    s.tail.pop_front();
                }
                s.tail.push_back(line);
            }
        });
        self.child = Some(child);
        let t = Instant::now();
        while !self.seen.lock().unwrap().ready {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited at start ({st}); log: {}", self.name, self.dir.join("serve.log").display());
            }
            assert!(t.elapsed() < Duration::from_secs(60), "{} did not come up", self.name);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process still runs (false if it exited on its own).
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// How it ended, if it exited on its own.
    pub fn exit_status(&mut self) -> Option<String> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()).map(|s| s.to_string())
    }

    /// SIGTERM, then waits for it to end.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    /// Its LMTP address (while running).
    pub fn lmtp(&self) -> String {
        self.seen.lock().unwrap().lmtp.clone().expect("lmtp address")
    }

    /// Its plain IMAP address (while running).
    pub fn imap(&self) -> String {
        self.seen.lock().unwrap().imap.clone().expect("imap address")
    }

    /// Its Prometheus metrics page (started with `--metrics-listen` in
    /// [`Node::serve_args`]).
    pub fn metrics(&self) -> String {
        let mut addr = None;
        wait_for(Duration::from_secs(10), Duration::from_millis(5), || {
            addr = self.seen.lock().unwrap().metrics.clone();
            addr.is_some()
        });
        let addr = addr.unwrap_or_else(|| panic!("{}: no metrics address (--metrics-listen?)", self.name));
        let mut s = std::net::TcpStream::connect(&addr).expect("metrics endpoint");
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
        let mut page = String::new();
        std::io::Read::read_to_string(&mut s, &mut page).unwrap();
        page.split_once("\r\n\r\n").map_or(page.clone(), |(_, body)| body.to_string())
    }

    /// The last lines it printed on standard output.
    pub fn tail(&self) -> Vec<String> {
        self.seen.lock().unwrap().tail.iter().cloned().collect()
    }

    /// One control-socket request (a JSON line), its answer.
    pub fn ask(&self, req: &str) -> Value {
        let mut s = UnixStream::connect(self.dir.join("control.sock")).expect("control socket");
        s.write_all(format!("{req}\n").as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{req}: {e}: {line:?}"));
        assert!(v.get("error").is_none(), "{req}: {v}");
        v
    }

    /// Ops the account holds (cheap).
    pub fn ops(&self) -> u64 {
        self.ask(&format!(r#"{{"op":"ops","user":"{USER}"}}"#))["text"].as_str().unwrap().parse().unwrap()
    }

    /// `starling status` as JSON (counts missing bodies: a scan).
    pub fn status(&self) -> Value {
        self.ask(r#"{"op":"status"}"#)["status"].clone()
    }

    /// Bodies of the account the node lacks (a scan).
    pub fn bodies_missing(&self) -> u64 {
        self.status()["accounts"].as_array().unwrap().iter().find(|a| a["name"] == USER).unwrap()["bodies_missing"]
            .as_u64()
            .unwrap()
    }

    /// The account's canonical dump, through the node if it runs, else
    /// from the store.
    pub fn dump(&self, bin: &Path) -> String {
        if self.child.is_some() {
            self.ask(&format!(r#"{{"op":"dump","user":"{USER}"}}"#))["text"].as_str().unwrap().to_string()
        } else {
            cli(bin, &self.dir, &["dump", USER])
        }
    }

    /// Peak resident memory of the running process (VmHWM), bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        proc_status_kib(self.pid()?, "VmHWM:").map(|k| k * 1024)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The value of an unlabelled metric on a Prometheus page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A `kB` field of /proc/PID/status.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until `f` holds, polling every `every`; `None` after `limit`.
pub fn wait_for(limit: Duration, every: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if f() {
            return Some(t.elapsed());
        }
        if t.elapsed() > limit {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Messages of a canonical dump: (mailbox, UID, message id, keywords).
pub fn dump_messages(dump: &str) -> Vec<(String, u32, String, String)> {
    let mut out = Vec::new();
    let mut mailbox = String::new();
    for line in dump.lines() {
        if let Some(rest) = line.strip_prefix("mailbox \"") {
            mailbox = rest.split('"').next().unwrap_or("").to_string();
        } else if let Some(rest) = line.strip_prefix("  ") {
            let mut w = rest.splitn(3, ' ');
            let (Some(uid), Some(id)) = (w.next(), w.next()) else { continue };
            let Ok(uid) = uid.parse() else { continue };
            out.push((mailbox.clone(), uid, id.to_string(), w.next().unwrap_or("").to_string()));
        }
    }
    out
}

/// Megabytes with one decimal.
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// A working directory: the given one, or a temporary one removed at the end.
pub fn workdir(dir: Option<PathBuf>) -> (Option<tempfile::TempDir>, PathBuf) {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(&d).expect("work dir");
            (None, d)
        }
        None => {
            let t = tempfile::tempdir().expect("tempdir");
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    }
}
