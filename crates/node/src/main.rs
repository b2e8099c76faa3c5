//! `starling`: the node binary. It owns the command line and wires the crates
//! together; business logic lives in the library crates.

mod cluster;
mod config;
mod control;
mod demo;
mod forget;
mod invite;
mod lmtp;
mod membership;
mod metrics;
mod peers;
mod placement;
mod private;
mod serve;
mod status_page;
mod tasks;

use clap::{Parser, Subcommand};
use starling_net::{NodeId, NodeIdentity};
use starling_store::{maildir, Store, StoreOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "starling", version, about = "A multi-master mail store")]
struct Cli {
    /// Data directory (store, node identity, peers) [default: the config's
    /// `data_dir`, else starling-data].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node (embedded defaults when no config is given) until SIGINT/SIGTERM.
    Serve {
        /// TOML config file (docs/configuration.md); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// UDP address of the peer endpoint [default: 127.0.0.1:7431].
        #[arg(long)]
        peer_listen: Option<std::net::SocketAddr>,
        /// TCP address of the LMTP delivery listener [default: 127.0.0.1:2424].
        #[arg(long)]
        lmtp_listen: Option<std::net::SocketAddr>,
        /// TCP address of the IMAP listener, STARTTLS offered [default: 127.0.0.1:1143].
        #[arg(long)]
        imap_listen: Option<std::net::SocketAddr>,
        /// TCP address of the IMAP listener with implicit TLS [default: 127.0.0.1:1993].
        #[arg(long)]
        imaps_listen: Option<std::net::SocketAddr>,
        /// TCP address of the Prometheus metrics endpoint [default: off].
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
        /// TCP address of the status page, or `off` [default: 127.0.0.1:8431].
        #[arg(long, value_name = "ADDR|off")]
        status_listen: Option<config::OnOff>,
        /// Log lines as JSON instead of text.
        #[arg(long)]
        log_json: bool,
    },
    /// Write a commented config file with every key at its default, and
    /// create the node's identity.
    Init {
        /// Where to write it.
        #[arg(long, default_value = "starling.toml")]
        config: PathBuf,
    },
    /// Print this node's id (creating its identity on first use).
    Id,
    /// Invite a node: prints a one-line token for `starling join` there
    /// (one use, until it expires). The two nodes then pin each other for
    /// the token's accounts.
    Invite {
        /// Accounts the new node will sync, comma-separated [default: every
        /// account held here].
        #[arg(long, value_delimiter = ',')]
        accounts: Vec<String>,
        /// How long the token works, e.g. `3600`, `90m`, `24h`, `7d` (at most 30 days).
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        expires: u64,
        /// Address other nodes reach this node's peer endpoint at
        /// [default: where it listens]; repeat for several.
        #[arg(long = "address")]
        addrs: Vec<std::net::SocketAddr>,
    },
    /// Join a node with the token its `starling invite` printed (this node
    /// must be running): both pin each other and start syncing.
    Join {
        /// The token.
        token: String,
    },
    /// Manage pinned peers.
    Peer {
        #[command(subcommand)]
        action: PeerAction,
    },
    /// Manage accounts.
    Account {
        #[command(subcommand)]
        action: AccountAction,
    },
    /// Import mail into an account.
    Import {
        #[command(subcommand)]
        format: Format,
    },
    /// Export an account's mail.
    Export {
        #[command(subcommand)]
        format: Format,
    },
    /// Print an account's canonical dump (identical on converged replicas).
    Dump {
        /// The account.
        user: String,
        /// JSON (mailboxes, UIDs, message ids, keywords) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Add or remove keywords of messages, e.g. `flag alice INBOX 1:20,33 +\Flagged -\Seen`
    /// (through the running node if there is one, so peers get it at once).
    Flag {
        /// The account.
        user: String,
        /// The mailbox.
        mailbox: String,
        /// UIDs, an IMAP UID set such as `3` or `1:100,205`.
        uids: String,
        /// `+KEYWORD` to add, `-KEYWORD` to remove.
        #[arg(required = true, allow_hyphen_values = true)]
        changes: Vec<String>,
    },
    /// Show the running node: accounts, peers (connected, last contact, lag, bytes).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Three nodes on loopback: mail delivered, a link cut, changes on both
    /// sides, the link back, the converged result printed.
    Demo {
        /// Where to put the three data directories (a fresh temporary one by default).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run deterministic simulations (scenario files, seeds, reports, plots).
    Sim(starling_sim::cli::SimArgs),
    /// Check the store (with the node stopped): redb's integrity check,
    /// every body and part re-hashed against its id, the index of body
    /// references recounted. Prints what is damaged; exits non-zero if
    /// anything is.
    Verify,
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum AccountAction {
    /// Create an account.
    Add {
        /// Its name.
        user: String,
    },
    /// Set an account's IMAP password, read from standard input (one line).
    /// It replicates with the account to the peers that sync it.
    Passwd {
        /// The account.
        user: String,
        /// This node only: not replicated, and it wins here over the
        /// account's own password.
        #[arg(long)]
        local: bool,
    },
    /// Delete an account on every node it syncs to: from then on it logs
    /// nobody in and takes no mail, there and wherever the deletion
    /// reaches. Final: the name cannot be used again; each node purges its
    /// data once every pinned peer of the account has the deletion.
    Delete {
        /// The account.
        user: String,
    },
    /// Say which nodes replicate an account, for the whole cluster: a
    /// number of replicas the cluster places (it adds nodes where too few
    /// hold it; surplus nodes let go of their copies once the others hold
    /// everything), or a list of node ids. Needs gossip (`[cluster]`).
    Place {
        /// The account.
        user: String,
        /// This many nodes hold it (1 to 64).
        #[arg(long, conflicts_with_all = ["nodes", "clear"])]
        replicas: Option<usize>,
        /// These nodes hold it (node ids, comma-separated).
        #[arg(long, value_delimiter = ',', conflicts_with = "clear")]
        nodes: Vec<String>,
        /// No placement: every node that syncs it holds it (the default).
        #[arg(long)]
        clear: bool,
    },
    /// Set an account's quota (RFC 9208's STORAGE and MESSAGE), for every
    /// node it syncs to: APPEND, COPY and LMTP delivery past it are
    /// refused (`NO [OVERQUOTA]`, `452 4.2.2`). Each node checks it against
    /// its own copy when it accepts mail, so nodes that accept mail while
    /// cut off from each other can together exceed it.
    Quota {
        /// The account.
        user: String,
        /// At most this many KiB of messages.
        #[arg(long, conflicts_with = "clear")]
        storage_kb: Option<u64>,
        /// At most this many messages.
        #[arg(long, conflicts_with = "clear")]
        messages: Option<u64>,
        /// No quota (the default).
        #[arg(long)]
        clear: bool,
    },
    /// Forget an account on this node only: free its copy here (the
    /// account stays on every other node). Refused unless a pinned peer
    /// of the account holds everything of it that is here (its ops and
    /// the bodies of mail delivered here), or with --force.
    Forget {
        /// The account.
        user: String,
        /// Forget it even if this node may hold changes or bodies no
        /// peer has (they are lost).
        #[arg(long)]
        force: bool,
    },
    /// List accounts.
    List,
}

#[derive(Subcommand)]
enum PeerAction {
    /// Pin a peer and say which accounts it may sync.
    Add {
        /// Its node id (`starling id` on that node).
        node_id: String,
        /// Its peer endpoint, e.g. 192.0.2.7:7431.
        addr: String,
        /// Accounts synced with it, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        accounts: Vec<String>,
        /// Partial replica: fetch bodies larger than this (bytes) only on demand.
        #[arg(long)]
        body_cap: Option<u64>,
        /// Partial replica: fetch bodies eagerly only in these mailboxes (full
        /// names, LIST patterns such as `Work/*`, or special-use such as `\Sent`).
        #[arg(long, value_delimiter = ',')]
        mailboxes: Option<Vec<String>>,
        /// Partial replica: fetch bodies eagerly only of mail received since (Unix seconds).
        #[arg(long)]
        since: Option<i64>,
        /// Partial replica: fetch bodies eagerly only of these UIDs, `LO:HI` (HI may be `*`).
        #[arg(long, value_parser = |v: &str| peers::parse_uids(v).ok_or_else(|| format!("{v:?}: expected LO:HI, e.g. 1000:*")))]
        uids: Option<(u32, u32)>,
    },
    /// List pinned peers.
    List,
    /// Unpin a peer and refuse it from now on (its connection is closed;
    /// `peer add` pins it again).
    Remove {
        /// Its node id.
        node_id: String,
    },
}

#[derive(Subcommand)]
enum Format {
    /// A Maildir++ tree.
    Maildir {
        /// The account.
        user: String,
        /// The Maildir root.
        dir: PathBuf,
    },
}

fn identity(data_dir: &Path) -> Result<NodeIdentity, String> {
    NodeIdentity::load_or_create(data_dir).map_err(|e| e.to_string())
}

pub(crate) fn open_store(data_dir: &Path) -> Result<Store, String> {
    open_store_with(data_dir, StoreOptions::default())
}

fn open_store_with(data_dir: &Path, options: StoreOptions) -> Result<Store, String> {
    let node = identity(data_dir)?.id().replica();
    Store::open(&data_dir.join("store.redb"), node, options).map_err(|e| e.to_string())
}

/// `starling verify`: prints what is damaged; an error if anything is.
fn verify_store(data_dir: &Path) -> Result<(), String> {
    use starling_store::verify::{hex, verify_file, Integrity};
    let path = data_dir.join("store.redb");
    let node = identity(data_dir)?.id().replica();
    let report = verify_file(&path, node, StoreOptions::default()).map_err(|e| e.to_string())?;
    println!("store {}", path.display());
    match &report.integrity {
        Integrity::Ok => println!("redb integrity check: ok"),
        Integrity::Repaired => {
            println!("redb integrity check: damaged, repaired (rolled back to the last intact commit)")
        }
        Integrity::Damaged(e) => println!("redb integrity check: DAMAGED: {e}"),
    }
    println!(
        "{} bodies checked ({} bytes), {} parts; {} bodies lack parts left out by partial replication",
        report.bodies, report.body_bytes, report.parts, report.partial_bodies
    );
    for d in &report.damaged_bodies {
        let used: Vec<String> = d
            .used_by
            .iter()
            .map(|(a, mb, uid)| format!("{a} {} UID {uid}", mb.as_deref().unwrap_or("(no mailbox)")))
            .collect();
        println!("damaged body {}: {} (used by: {})", hex(&d.id), d.what, used.join(", "));
    }
    for d in &report.damaged_parts {
        println!("damaged part {}: {}", hex(&d.id), d.what);
    }
    for line in &report.index {
        println!("body index: {line}");
    }
    for line in &report.unreadable {
        println!("unreadable: {line}");
    }
    let file = std::fs::metadata(&path).map_or(0, |m| m.len());
    let in_tables: u64 = report.tables.iter().map(|t| t.bytes).sum();
    let free = file.saturating_sub(in_tables);
    println!(
        "file {file} B, {in_tables} B in tables, {free} B ({}%) free; tables, largest first:",
        (free * 100).checked_div(file).unwrap_or(0)
    );
    for t in report.tables.iter().filter(|t| t.rows > 0) {
        println!("  {:<28} {:>10} rows {:>14} B", t.name, t.rows, t.bytes);
    }
    if report.is_clean() {
        println!("clean");
        Ok(())
    } else {
        let n = report.damaged_bodies.len() + report.damaged_parts.len() + report.index.len() + report.unreadable.len();
        let redb = if report.integrity == Integrity::Ok { "" } else { " and redb's check failed" };
        Err(format!("damage found: {n} problems{redb}"))
    }
}

/// Answers a data request through the running node if there is one (it
/// holds the store), else from the store directly.
/// A running node's answer's text, or its error.
fn answer_text(answer: control::Answer) -> Result<String, String> {
    match answer.error {
        Some(e) => Err(e),
        None => Ok(answer.text.unwrap_or_default()),
    }
}

/// `90`, `90s`, `90m`, `24h`, `7d` as seconds.
fn parse_ttl(v: &str) -> Result<u64, String> {
    let (n, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: u64 = n.parse().map_err(|_| format!("{v:?}: expected a number with s, m, h or d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{v:?}: expected a number with s, m, h or d")),
    };
    n.checked_mul(unit).ok_or_else(|| format!("{v:?}: too long"))
}

fn via_node(data_dir: &Path, req: control::Request) -> Result<String, String> {
    match control::ask(data_dir, &req)? {
        Some(answer) => match answer.error {
            Some(e) => Err(e),
            None => Ok(answer.text.unwrap_or_default()),
        },
        None => control::answer_store(&open_store(data_dir)?, &req),
    }
}

/// A Unix time in milliseconds as its UTC day.
fn day(at_ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(at_ms as i64).map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_default()
}

fn print_status(st: &control::NodeStatus) {
    println!("node {}", st.node_id);
    let f = &st.file_compactions;
    println!(
        "store file: {} B; compacted online {} times ({} left for later), operations waited {} ms in all; free space counted {} times",
        st.store_file_bytes, f.runs, f.busy, f.pause_ms, f.walks
    );
    for a in &st.accounts {
        println!("account {}: {} ops, {} bodies missing", a.name, a.ops, a.bodies_missing);
        println!(
            "  {} messages, {} B live; {} bodies to collect; log holds {} ops above a floor of {}",
            a.messages, a.bytes, a.bodies_to_collect, a.log_ops, a.log_floor_ops
        );
        if let Some(o) = &a.oldest_peer {
            println!("  oldest peer {}: lacks {} ops, silent {} s", o.node_id, o.lacks, o.silent_secs);
        }
        if let Some(why) = &a.deleted {
            println!("  deleted, {why}");
        }
        for s in &a.snapshots_arriving {
            println!("  snapshot from {}: {} of {} B held", s.from, s.got, s.total);
        }
        if let Some(p) = &a.placement {
            let short = |v: &Vec<String>| v.iter().map(|i| i.get(..12).unwrap_or(i)).collect::<Vec<_>>().join(" ");
            println!("  placement {}: held by {}; should be {}", p.placement, short(&p.holders), short(&p.target));
        }
    }
    for p in &st.purged {
        println!("account {}: deleted, purged here {} (the name is kept to tell peers)", p.name, day(p.at_ms));
    }
    for p in &st.peers {
        let contact = p.last_contact_secs.map_or("never".to_string(), |s| format!("{s} s ago"));
        println!(
            "peer {} {}: {}, last contact {contact}, {} B in, {} B out",
            p.node_id,
            p.addr,
            if p.connected { "connected" } else { "not connected" },
            p.bytes_in,
            p.bytes_out
        );
        for l in &p.behind {
            println!("  {}: peer lacks {} ops, this node lacks {} ops", l.account, l.peer_lacks, l.we_lack);
        }
    }
    println!("cluster (by gossip): {} other members alive", st.cluster.len());
    for m in &st.cluster {
        println!("  member {} {}: {}", m.node_id, m.addr, m.accounts.join(","));
    }
}

/// On a store with no account, creates one with a random password (returned
/// to be printed once), so a first `starling serve` can be connected to.
fn first_start(store: &Store) -> Result<Option<(String, String)>, String> {
    // (A store whose accounts were all forgotten is not a new one.)
    if !store.accounts().is_empty() || store.has_forgotten().map_err(|e| e.to_string())? {
        return Ok(None);
    }
    let user = "user".to_string();
    let password = random_password();
    store.add_account(&user).map_err(|e| e.to_string())?;
    store.set_credential(&user, &starling_imap::auth::hash_password(&password)).map_err(|e| e.to_string())?;
    Ok(Some((user, password)))
}

fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let bytes: [u8; 16] = private::random_bytes().expect("/dev/urandom");
    bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// Logs go to standard error through tracing: text, or JSON lines.
fn init_logs(json: bool, filter: Option<&str>) -> Result<(), String> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter.unwrap_or("info")).map_err(|e| format!("log.level: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

/// The command line with the data directory resolved.
struct Resolved {
    data_dir: PathBuf,
    command: Command,
}

fn run(cli: Cli) -> Result<(), String> {
    let config = match &cli.command {
        Command::Serve { config: Some(path), .. } => config::Config::load(path)?,
        _ => config::Config::default(),
    };
    let data_dir = cli.data_dir.or(config.data_dir.clone()).unwrap_or_else(|| PathBuf::from("starling-data"));
    let cli = Resolved { data_dir, command: cli.command };
    if !matches!(cli.command, Command::Version | Command::Demo { .. } | Command::Sim(_)) {
        for line in private::tighten(&cli.data_dir)? {
            eprintln!("starling: warning: {line}");
        }
    }
    match cli.command {
        Command::Version => println!("starling {}", env!("CARGO_PKG_VERSION")),
        Command::Verify => verify_store(&cli.data_dir)?,
        Command::Demo { dir } => demo::run(dir)?,
        Command::Sim(args) => {
            if !starling_sim::cli::main(args)? {
                return Err("some seeds failed (see above for how to reproduce each)".into());
            }
        }
        Command::Serve {
            config: _,
            peer_listen,
            lmtp_listen,
            imap_listen,
            imaps_listen,
            metrics_listen,
            status_listen,
            log_json,
        } => {
            // Each login's Argon2 check takes 19 MiB. glibc's mmap threshold
            // grows after the first such free, and the memory then stays in
            // the heap; fixed at 1 MiB, big buffers go back to the OS at once.
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: mallopt only sets an allocator parameter.
            // Two arenas, not eight per core: with glibc's default, bodies
            // freed by one thread and allocated by another left the heap of a
            // node sending 10,000 messages at 200 MB (131 MB with one arena).
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            trim_heap_every(std::time::Duration::from_secs(1));
            let json = log_json || config.log.format == Some(config::LogFormat::Json);
            init_logs(json, config.log.level.as_deref())?;
            let id = identity(&cli.data_dir)?;
            let store = open_store_with(&cli.data_dir, config.store_options())?;
            let first_account = first_start(&store)?;
            let book = peers::PeerBook::open(&cli.data_dir, config.peers())?;
            println!("starling {}", env!("CARGO_PKG_VERSION"));
            let dir = std::fs::canonicalize(&cli.data_dir).unwrap_or(cli.data_dir.clone());
            println!("data directory: {}", dir.display());
            println!("node id: {}", id.id());
            println!("accounts: {}", store.accounts().len());
            if let Some((user, password)) = &first_account {
                println!("created account {user:?} with password {password:?} (shown once; change it with `starling account passwd {user}`)");
            }
            let addr = |flag: Option<std::net::SocketAddr>, file, default: &str| {
                flag.or(file).unwrap_or_else(|| default.parse().expect("default address"))
            };
            let l = &config.listen;
            let settings = serve::Settings {
                peers: addr(peer_listen, l.peers, "127.0.0.1:7431"),
                lmtp: addr(lmtp_listen, l.lmtp, "127.0.0.1:2424"),
                lmtp_config: config.lmtp_config(),
                imap: addr(imap_listen, l.imap, "127.0.0.1:1143"),
                imaps: addr(imaps_listen, l.imaps, "127.0.0.1:1993"),
                metrics: metrics_listen.or(l.metrics),
                status: match status_listen.or(l.status) {
                    Some(config::OnOff::Off) => None,
                    Some(config::OnOff::At(addr)) => Some(serve::StatusListen { addr, required: true }),
                    None => Some(serve::StatusListen {
                        addr: config::STATUS_DEFAULT.parse().expect("default address"),
                        required: false,
                    }),
                },
                imap_config: config.imap_config(),
                tls: match (&config.imap.tls_cert, &config.imap.tls_key) {
                    (Some(c), Some(k)) => (c.get_ref().clone(), k.get_ref().clone()),
                    _ => (cli.data_dir.join("imap-cert.pem"), cli.data_dir.join("imap-key.pem")),
                },
                housekeeping: config.housekeeping(),
                durability: config.durability(),
                cluster: config.cluster.clone(),
            };
            serve::run(&cli.data_dir, store, id, book, settings)?;
        }
        Command::Init { config: path } => {
            if path.exists() {
                return Err(format!("{} exists; not overwriting it", path.display()));
            }
            std::fs::write(&path, config::TEMPLATE).map_err(|e| format!("{}: {e}", path.display()))?;
            let id = identity(&cli.data_dir)?;
            println!("wrote {}", path.display());
            println!("node id: {}", id.id());
            println!("next: starling serve --config {}", path.display());
        }
        Command::Id => println!("{}", identity(&cli.data_dir)?.id()),
        Command::Peer { action: PeerAction::Add { node_id, addr, accounts, body_cap, mailboxes, since, uids } } => {
            let id = NodeId::parse(&node_id).map_err(|e| e.to_string())?;
            let addr = addr.parse().map_err(|e| format!("bad address {addr:?}: {e}"))?;
            identity(&cli.data_dir)?;
            let policy = starling_sync::BodyPolicy { mailboxes, received_since: since, size_max: body_cap, uids };
            let peer = peers::Peer { id, addr, accounts, policy };
            let line = format!("{} {} {}{}", peer.id, peer.addr, peer.accounts.join(","), peers::options(&peer.policy));
            match control::ask(&cli.data_dir, &control::Request::PeerAdd { line })? {
                Some(answer) => println!("{}", answer_text(answer)?),
                None => {
                    peers::PeerBook::open(&cli.data_dir, config.peers())?.pin(peer, false)?;
                    println!("peer {id} pinned");
                }
            }
        }
        Command::Invite { accounts, expires, addrs } => {
            let req = control::Request::Invite { accounts, ttl_secs: expires, addrs };
            match control::ask(&cli.data_dir, &req)? {
                Some(answer) => println!("{}", answer_text(answer)?),
                None => {
                    let control::Request::Invite { accounts, ttl_secs, mut addrs } = req else { unreachable!() };
                    if addrs.is_empty() {
                        addrs.push(config.listen.peers.unwrap_or_else(|| "127.0.0.1:7431".parse().expect("default")));
                    }
                    let me = identity(&cli.data_dir)?.id();
                    let store = open_store(&cli.data_dir)?;
                    let book = peers::PeerBook::open(&cli.data_dir, config.peers())?;
                    println!("{}", membership::invite(&store, &book, me, accounts, ttl_secs, addrs)?);
                }
            }
        }
        Command::Join { token } => match control::ask(&cli.data_dir, &control::Request::Join { token })? {
            Some(answer) => println!("{}", answer_text(answer)?),
            None => {
                return Err(format!(
                    "no node is running in {}: start it (`starling serve`), then join",
                    cli.data_dir.display()
                ))
            }
        },
        Command::Peer { action: PeerAction::List } => {
            for p in peers::load(&cli.data_dir)? {
                println!("{} {} {}{}", p.id, p.addr, p.accounts.join(","), peers::options(&p.policy));
            }
        }
        Command::Peer { action: PeerAction::Remove { node_id } } => {
            let id = NodeId::parse(&node_id).map_err(|e| e.to_string())?;
            match control::ask(&cli.data_dir, &control::Request::PeerRemove { node_id })? {
                Some(answer) => println!("{}", answer_text(answer)?),
                None => {
                    peers::PeerBook::open(&cli.data_dir, config.peers())?.revoke(&id)?;
                    println!("peer {id} removed and refused from now on");
                }
            }
        }
        Command::Account { action: AccountAction::Add { user } } => {
            open_store(&cli.data_dir)?.add_account(&user).map_err(|e| e.to_string())?;
            println!("account {user} created");
        }
        Command::Account { action: AccountAction::Passwd { user, local } } => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(|e| format!("reading the password: {e}"))?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                return Err("empty password (give it on standard input)".into());
            }
            let hash = starling_imap::auth::hash_password(password);
            println!("{}", via_node(&cli.data_dir, control::Request::Passwd { user, hash, local })?);
        }
        Command::Account { action: AccountAction::Delete { user } } => {
            println!("{}", via_node(&cli.data_dir, control::Request::DeleteAccount { user })?);
        }
        Command::Account { action: AccountAction::Place { user, replicas, nodes, clear } } => {
            let placement = match (replicas, nodes.is_empty(), clear) {
                (Some(n), true, false) => format!("replicas={n}"),
                (None, false, false) => format!("nodes={}", nodes.join(",")),
                (None, true, true) => String::new(),
                _ => return Err("give one of --replicas N, --nodes ID,ID or --clear".into()),
            };
            println!("{}", via_node(&cli.data_dir, control::Request::Place { user, placement })?);
        }
        Command::Account { action: AccountAction::Quota { user, storage_kb, messages, clear } } => {
            let quota = match (storage_kb, messages, clear) {
                (None, None, true) => starling_model::Quota::default(),
                (s, m, false) if s.is_some() || m.is_some() => starling_model::Quota { storage_kb: s, messages: m },
                _ => return Err("give --storage-kb N and/or --messages N, or --clear".into()),
            };
            let req = control::Request::Quota { user, quota: quota.encode() };
            println!("{}", via_node(&cli.data_dir, req)?);
        }
        Command::Account { action: AccountAction::Forget { user, force } } => {
            let req = control::Request::ForgetAccount { user: user.clone(), force };
            match control::ask(&cli.data_dir, &req)? {
                Some(answer) => match answer.error {
                    Some(e) => return Err(e),
                    None => println!("{}", answer.text.unwrap_or_default()),
                },
                None => {
                    let store = open_store(&cli.data_dir)?;
                    let peers = peers::load(&cli.data_dir)?;
                    let done = forget::forget_if_safe(&store, &user, &forget::pinned_for(&peers, &user), force)?;
                    // No peer syncs it with this node any more: a start
                    // does not make it again.
                    peers::PeerBook::open(&cli.data_dir, config.peers())?.drop_account(&user, None)?;
                    println!("{}", forget::describe(&user, &done));
                }
            }
        }
        Command::Account { action: AccountAction::List } => {
            let store = open_store(&cli.data_dir)?;
            for a in store.accounts() {
                let deleted = store.is_deleted(&a).map_err(|e| e.to_string())?;
                println!("{a}{}", if deleted { " (deleted)" } else { "" });
            }
            // Names kept only to tell peers (and never made again).
            for (a, at_ms) in store.purged_names().map_err(|e| e.to_string())? {
                println!("{a} (deleted, purged here {})", day(at_ms));
            }
        }
        Command::Import { format: Format::Maildir { user, dir } } => {
            let store = open_store(&cli.data_dir)?;
            let summary = maildir::import(&store, &user, &dir).map_err(|e| e.to_string())?;
            println!("imported {summary}");
            // Large parts written batch after batch leave freed pages behind
            // (a third of the file for a realistic 10,000-message tree): give
            // them back now, as the node would at its next start.
            let percent = config.housekeeping().file_compact_free_percent;
            if let Some(c) = store.compact_file(percent).map_err(|e| e.to_string())? {
                println!("store: file compacted from {} to {} bytes in {} ms", c.before, c.after, c.millis);
            }
        }
        Command::Export { format: Format::Maildir { user, dir } } => {
            let store = open_store(&cli.data_dir)?;
            let summary = maildir::export(&store, &user, &dir).map_err(|e| e.to_string())?;
            println!("exported {summary}");
        }
        Command::Dump { user, json } => print!("{}", via_node(&cli.data_dir, control::Request::Dump { user, json })?),
        Command::Flag { user, mailbox, uids, changes } => {
            let (mut add, mut remove) = (Vec::new(), Vec::new());
            for c in changes {
                match c.split_at_checked(1) {
                    Some(("+", k)) => add.push(k.to_string()),
                    Some(("-", k)) => remove.push(k.to_string()),
                    _ => return Err(format!("{c:?}: expected +KEYWORD or -KEYWORD")),
                }
            }
            println!("{}", via_node(&cli.data_dir, control::Request::Flag { user, mailbox, uids, add, remove })?);
        }
        Command::Status { json } => {
            let Some(answer) = control::ask(&cli.data_dir, &control::Request::Status)? else {
                return Err(format!("no node is running in {}", cli.data_dir.display()));
            };
            let st = answer.status.ok_or_else(|| answer.error.unwrap_or_else(|| "no status".into()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st).map_err(|e| e.to_string())?);
            } else {
                print_status(&st);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    private::umask();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("starling: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Hands the heap's free pages back to the OS every `period`. glibc gives
/// back on its own only the free memory at the top of a heap; bodies
/// freed between longer-lived allocations (redb's cache, the model) stay
/// resident, so a node's RSS grew with the size of what it synced (the
/// receiver of an initial sync peaked at 155 MB for 10,000 messages and
/// 193 MB for 50,000; with this, 129 and 150 MB, and 163 MB for 100,000:
/// `docs/benchmarks.md`). A call walks the two arenas' free lists: 0.12 %
/// of the receiver's CPU samples during a 10,000-message sync.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap_every(period: std::time::Duration) {
    let spawned = std::thread::Builder::new().name("heap-trim".into()).spawn(move || loop {
        std::thread::sleep(period);
        // SAFETY: malloc_trim only returns free pages to the OS.
        unsafe {
            libc::malloc_trim(0);
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("no heap trimming thread: {e}");
    }
}
