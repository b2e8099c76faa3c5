//! `starling demo`: three real nodes on loopback (child processes of this
//! binary, each with its own data directory), mail delivered over LMTP to
//! two of them, one node cut off while both sides change things, the link
//! back, and the converged result printed.

use crate::control::{self, Request};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "alice";

struct Node {
    name: &'static str,
    dir: PathBuf,
    port: u16,
    lmtp: u16,
    child: Option<Child>,
}

fn cli(dir: &Path, args: &[&str]) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let o = Command::new(exe).arg("--data-dir").arg(dir).args(args).output().map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!("{args:?}: {}", String::from_utf8_lossy(&o.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

impl Node {
    fn start(&mut self) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["serve", "--peer-listen", &format!("127.0.0.1:{}", self.port), "--lmtp-listen", "127.0.0.1:0"])
            .args(["--imap-listen", "127.0.0.1:0", "--imaps-listen", "127.0.0.1:0", "--status-listen", "off"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("lmtp: listening on ").and_then(|a| a.rsplit(':').next()) {
                    let _ = tx.send(port.parse::<u16>().ok());
                }
            }
        });
        self.lmtp = rx.recv_timeout(Duration::from_secs(20)).ok().flatten().ok_or("node did not start")?;
        self.child = Some(child);
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    fn ask(&self, req: Request) -> Result<String, String> {
        match control::ask(&self.dir, &req)? {
            Some(a) => a.error.map_or(Ok(a.text.unwrap_or_default()), Err),
            None => Err(format!("{} is not running", self.name)),
        }
    }

    /// Delivers one message over LMTP, as an MTA would.
    fn deliver(&self, subject: &str) -> Result<(), String> {
        let s = std::net::TcpStream::connect(("127.0.0.1", self.lmtp)).map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        let mut w = s;
        let body = format!(
            "From: demo@example.net\r\nTo: {USER}@example.org\r\nSubject: {subject}\r\n\r\nDelivered to {}.\r\n",
            self.name
        );
        let cmd =
            format!("LHLO demo\r\nMAIL FROM:<demo@example.net>\r\nRCPT TO:<{USER}>\r\nDATA\r\n{body}.\r\nQUIT\r\n");
        w.write_all(cmd.as_bytes()).map_err(|e| e.to_string())?;
        let mut all = String::new();
        let mut line = String::new();
        while r.read_line(&mut line).map_err(|e| e.to_string())? > 0 {
            all.push_str(&line);
            line.clear();
        }
        if !all.contains("delivered") {
            return Err(format!("LMTP: {all}"));
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until the three dumps are identical (and not empty).
fn wait_same(nodes: &[&Node]) -> Result<Duration, String> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        let dumps: Vec<String> =
            nodes.iter().map(|n| n.ask(Request::Dump { user: USER.into(), json: false }).unwrap_or_default()).collect();
        if dumps.iter().all(|d| d.contains("  1 ") && *d == dumps[0]) {
            return Ok(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let dumps: Vec<String> =
        nodes.iter().map(|n| n.ask(Request::Dump { user: USER.into(), json: false }).unwrap_or_else(|e| e)).collect();
    Err(format!("the nodes did not converge within 30 s:\n{}", dumps.join("\n---\n")))
}

fn inbox(dump: &str) -> String {
    dump.lines().filter(|l| l.starts_with("mailbox") || l.starts_with("  ")).collect::<Vec<_>>().join("\n")
}

/// Runs the demo in `root` (a fresh temporary directory if none).
pub fn run(root: Option<PathBuf>) -> Result<(), String> {
    let t0 = Instant::now();
    let temporary = root.is_none();
    let root = root.unwrap_or_else(|| std::env::temp_dir().join(format!("starling-demo-{}", std::process::id())));
    let free = || -> Result<u16, String> {
        Ok(std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map_err(|e| e.to_string())?.port())
    };
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        let dir = root.join(name);
        cli(&dir, &["account", "add", USER])
            .or_else(|e| if e.contains("exists") { Ok(String::new()) } else { Err(e) })?;
        nodes.push(Node { name, dir, port: free()?, lmtp: 0, child: None });
    }
    let ids: Vec<String> = nodes.iter().map(|n| cli(&n.dir, &["id"])).collect::<Result<_, _>>()?;
    for (i, n) in nodes.iter().enumerate() {
        for (j, m) in nodes.iter().enumerate() {
            if i != j {
                let _ = cli(&n.dir, &["peer", "add", &ids[j], &format!("127.0.0.1:{}", m.port), "--accounts", USER]);
            }
        }
    }
    println!("Three nodes on loopback (data directories n1, n2, n3 in {}), all pinned to each other.", root.display());
    for n in nodes.iter_mut() {
        n.start()?;
    }
    println!("\n1. Mail arrives over LMTP: three messages at n1, two at n2.");
    for k in 1..=3 {
        nodes[0].deliver(&format!("Report {k}"))?;
    }
    for k in 1..=2 {
        nodes[1].deliver(&format!("Invoice {k}"))?;
    }
    let took = wait_same(&[&nodes[0], &nodes[1], &nodes[2]])?;
    println!("   All three hold all five after {:.0} ms.", took.as_secs_f64() * 1000.0);

    println!("\n2. n3's link goes down (n3 stops). Both sides keep working:");
    nodes[2].stop();
    nodes[0].ask(Request::Flag {
        user: USER.into(),
        mailbox: "INBOX".into(),
        uids: "1".into(),
        add: vec!["\\Flagged".into()],
        remove: vec![],
    })?;
    nodes[0].deliver("Late news")?;
    println!("   on n1: UID 1 gets \\Flagged, a sixth message arrives;");
    // n3 is offline: its own user works on its store directly (as a client
    // on n3 would), the same apply path the node uses.
    let n3_store = crate::open_store(&nodes[2].dir)?;
    control::answer_store(
        &n3_store,
        &Request::Flag {
            user: USER.into(),
            mailbox: "INBOX".into(),
            uids: "1:2".into(),
            add: vec!["\\Seen".into(), "$Important".into()],
            remove: vec![],
        },
    )?;
    n3_store
        .write(USER, |b| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            b.append(
                starling_model::INBOX,
                b"Subject: Draft on n3\r\n\r\nwritten while cut off\r\n",
                now as i64,
                vec![],
            )
            .map(|_| ())
        })
        .map_err(|e| e.to_string())?;
    drop(n3_store);
    println!("   on n3: UIDs 1-2 get \\Seen and $Important, a message is saved.");

    println!("\n3. The link comes back (n3 restarts).");
    nodes[2].start()?;
    let took = wait_same(&[&nodes[0], &nodes[1], &nodes[2]])?;
    println!("   Converged {:.0} ms after n3 came back.", took.as_secs_f64() * 1000.0);
    let dumps: Vec<String> =
        nodes.iter().map(|n| n.ask(Request::Dump { user: USER.into(), json: false })).collect::<Result<_, _>>()?;
    println!("\n4. The account on n1 (UID, message id, keywords):\n\n{}\n", inbox(&dumps[0]));
    let same = dumps.iter().all(|d| *d == dumps[0]);
    println!(
        "Dumps of n1, n2 and n3 are {}. UID 1 kept both sides' keywords (add-wins), no UID was reused, \
         nothing was lost. Took {:.1} s.",
        if same { "identical" } else { "DIFFERENT" },
        t0.elapsed().as_secs_f64()
    );
    for n in nodes.iter_mut() {
        n.stop();
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&root);
    }
    if same {
        Ok(())
    } else {
        Err("the replicas did not converge".into())
    }
}
