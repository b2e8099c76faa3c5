//! The control socket of a running node, `DATA_DIR/control.sock` (owner
//! only): the store has one writer, so CLI commands that read or change a
//! running node's data (`status`, `dump`, `flag`) ask the node through it.
//! One JSON request per line, one JSON answer per line.

use serde::{Deserialize, Serialize};
use starling_model::{Keyword, VersionVector};
use starling_store::Store;
use std::path::{Path, PathBuf};

/// The socket's path in a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// What the CLI asks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The node, its accounts and its peers.
    Status,
    /// An account's canonical dump.
    Dump {
        user: String,
        /// JSON instead of the text dump (same content, same order).
        #[serde(default)]
        json: bool,
    },
    /// How many ops an account holds (cheap: for scripts and benchmarks
    /// waiting for replicas to agree).
    Ops { user: String },
    /// Change keywords of messages (what a client's UID STORE does, same
    /// path, one transaction): `uids` is an IMAP UID set, e.g. `1:100,205`.
    Flag { user: String, mailbox: String, uids: String, add: Vec<String>, remove: Vec<String> },
    /// Set an account's password hash (the CLI hashes; the password never
    /// crosses the socket).
    /// `local`: this node's own, not replicated (it wins over the account's here).
    Passwd { user: String, hash: String, local: bool },
    /// Delete an account on every node it syncs to.
    DeleteAccount { user: String },
    /// Set which nodes replicate an account (`replicas=N`, `nodes=ID,…`;
    /// empty: every node that syncs it), on every node it syncs to.
    Place { user: String, placement: String },
    /// Set an account's quota (`starling_model::Quota::encode`'s form:
    /// `storage-kb=N,messages=N`; empty: none), on every node it syncs to.
    Quota { user: String, quota: String },
    /// Forget an account on this node only (`forget_if_safe`): answered by
    /// the node, which knows its pinned peers.
    ForgetAccount {
        user: String,
        #[serde(default)]
        force: bool,
    },
    /// Pin a peer: one line of the peers file.
    PeerAdd { line: String },
    /// Remove a peer and refuse it from now on.
    PeerRemove { node_id: String },
    /// Open an invitation; the answer is its token. `accounts` empty: all
    /// held here; `addrs` empty: where the peer endpoint listens.
    Invite { accounts: Vec<String>, ttl_secs: u64, addrs: Vec<std::net::SocketAddr> },
    /// Join the node that made an invitation.
    Join { token: String },
}

impl Request {
    /// Whether the running node answers it from its peers rather than its store.
    pub fn is_membership(&self) -> bool {
        matches!(
            self,
            Request::PeerAdd { .. } | Request::PeerRemove { .. } | Request::Invite { .. } | Request::Join { .. }
        )
    }
}

/// The node's answer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Answer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
}

/// `starling status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub accounts: Vec<AccountStatus>,
    pub peers: Vec<PeerStatus>,
    /// The store file's length, bytes.
    #[serde(default)]
    pub store_file_bytes: u64,
    /// Online compactions of the file since start.
    #[serde(default)]
    pub file_compactions: starling_store::FileCompactStats,
    /// The cluster's live members as gossip sees them (this node not included).
    #[serde(default)]
    pub cluster: Vec<crate::cluster::MemberStatus>,
    /// Links between other nodes, as each connected peer last reported its
    /// own (the status page draws the cluster beyond this node's links).
    #[serde(default)]
    pub remote_links: Vec<RemoteLinks>,
    /// Accounts deleted and purged here: only their names are kept, to
    /// tell a peer that comes back still holding one.
    #[serde(default)]
    pub purged: Vec<PurgedName>,
}

/// A deleted account's name kept after its purge.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PurgedName {
    pub name: String,
    /// When it was purged here, Unix milliseconds.
    pub at_ms: u64,
}

/// A peer's links, as it last reported them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RemoteLinks {
    pub node_id: String,
    /// Seconds since the report arrived.
    pub age_secs: u64,
    pub links: Vec<crate::cluster::LinkBrief>,
}

/// One account on this node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AccountStatus {
    pub name: String,
    pub ops: u64,
    pub bodies_missing: usize,
    /// Live messages (a copy counts again) and their bytes.
    pub messages: u64,
    pub bytes: u64,
    /// Bodies it released that wait for every peer to hold the release.
    pub bodies_to_collect: u64,
    /// Ops compacted away from the log (the floor), and ops the log holds.
    pub log_floor_ops: u64,
    pub log_ops: u64,
    /// The pinned peer furthest behind by its last acknowledgement.
    pub oldest_peer: Option<OldestPeer>,
    /// Which nodes should and do hold it, if it has a placement (as the
    /// last placement round worked it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<crate::placement::AccountPlacement>,
    /// Deleted: what holds its purge back (as the last purge pass found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<String>,
    /// Snapshots of it coming in from peers, part by part (kept over a
    /// restart, so a join shows how far it got).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots_arriving: Vec<SnapshotArriving>,
}

/// A snapshot being received from a peer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SnapshotArriving {
    /// The peer's node id (its replica id in hex if it is not pinned).
    pub from: String,
    /// Bytes held of how many.
    pub got: u64,
    pub total: u64,
}

/// The peer holding an account's compaction back.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OldestPeer {
    pub node_id: String,
    /// Ops of this node's version it had not acknowledged.
    pub lacks: u64,
    /// Seconds since it was last heard from (as of the last housekeeping).
    pub silent_secs: u64,
}

/// One pinned peer as the running node sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node_id: String,
    pub addr: String,
    pub connected: bool,
    /// Seconds since the last frame from it (none yet: never heard from).
    pub last_contact_secs: Option<u64>,
    /// Protocol frame bytes.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// UDP bytes on the wire (QUIC, TLS and retransmissions included).
    pub wire_in: u64,
    pub wire_out: u64,
    /// Bytes the current connection lost and sent again, and its round trip.
    pub wire_lost: u64,
    pub rtt_ms: f64,
    /// The current connection's congestion window (bytes it may have in
    /// flight): with the round trip, the rate the link is allowed.
    #[serde(default)]
    pub cwnd: u64,
    /// Per shared account: ops this node has that the peer lacks, and ops
    /// the peer said it has that this node lacks.
    pub behind: Vec<Lag>,
}

/// How far apart this node and a peer are on one account.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Lag {
    pub account: String,
    pub peer_lacks: u64,
    pub we_lack: u64,
}

impl Lag {
    /// From this node's and the peer's version vectors.
    pub fn between(account: &str, ours: &VersionVector, theirs: &VersionVector) -> Lag {
        Lag { account: account.to_string(), peer_lacks: ours.lacking_in(theirs), we_lack: theirs.lacking_in(ours) }
    }
}

/// Answers a request that needs only the store (status is the node's).
pub fn answer_store(store: &Store, req: &Request) -> Result<String, String> {
    match req {
        Request::Dump { user, json: false } => store.dump(user).map_err(|e| e.to_string()),
        Request::Dump { user, json: true } => dump_json(store, user).map_err(|e| e.to_string()),
        Request::Ops { user } => {
            let vv = store.version(user).map_err(|e| e.to_string())?;
            Ok(vv.iter().map(|(_, c)| c).sum::<u64>().to_string())
        }
        Request::Flag { user, mailbox, uids, add, remove } => {
            let parse = |v: &Vec<String>| -> Result<Vec<Keyword>, String> {
                v.iter().map(|k| Keyword::parse(k).map_err(|e| e.to_string())).collect()
            };
            let (add, remove) = (parse(add)?, parse(remove)?);
            let ranges = parse_uid_set(uids)?;
            let reader = store.read(user).map_err(|e| e.to_string())?;
            let mb = *reader.names().tree.by_name.get(mailbox).ok_or_else(|| format!("no mailbox {mailbox:?}"))?;
            let messages: Vec<_> =
                reader.messages_in(mb, &ranges).map_err(|e| e.to_string())?.into_iter().map(|m| m.message).collect();
            drop(reader);
            if messages.is_empty() {
                return Err(format!("no message with UID {uids} in {mailbox}"));
            }
            store
                .write(user, |b| {
                    for m in &messages {
                        b.replica().store_flags(*m, &add, &remove)?;
                    }
                    Ok(())
                })
                .map_err(|e| e.to_string())?;
            Ok(format!("{} messages in {mailbox}: keywords changed", messages.len()))
        }
        Request::Passwd { user, hash, local: false } => {
            store.set_credential(user, hash).map_err(|e| e.to_string())?;
            Ok(format!("password of {user} set (on every node the account syncs to)"))
        }
        Request::Passwd { user, hash, local: true } => {
            store.set_local_credential(user, Some(hash)).map_err(|e| e.to_string())?;
            Ok(format!("password of {user} set on this node only"))
        }
        Request::DeleteAccount { user } => {
            store.delete_account(user).map_err(|e| e.to_string())?;
            Ok(format!(
                "account {user} deleted on every node it syncs to: no login, no delivery; purged on each node once every pinned peer has the deletion"
            ))
        }
        Request::Place { user, placement } => {
            let shown = if placement.is_empty() {
                "none: every node that syncs it".to_string()
            } else {
                crate::placement::Placement::parse(placement)?.encode()
            };
            if store.is_deleted(user).map_err(|e| e.to_string())? {
                return Err(format!("account {user} was deleted"));
            }
            let stored = if placement.is_empty() { String::new() } else { shown.clone() };
            store.set_placement(user, &stored).map_err(|e| e.to_string())?;
            Ok(format!("placement of {user}: {shown} (on every node it syncs to)"))
        }
        Request::Quota { user, quota } => {
            let q = starling_model::Quota::parse(quota).ok_or_else(|| format!("{quota:?} is not a quota"))?;
            if store.is_deleted(user).map_err(|e| e.to_string())? {
                return Err(format!("account {user} was deleted"));
            }
            store.set_quota(user, &q).map_err(|e| e.to_string())?;
            let (messages, bytes) = store.usage(user).map_err(|e| e.to_string())?;
            let shown = if q.is_unlimited() { "none".to_string() } else { q.encode() };
            Ok(format!(
                "quota of {user}: {shown} (on every node it syncs to; here it uses {messages} messages, {} KiB)",
                bytes.div_ceil(1024)
            ))
        }
        Request::Status => Err("status comes from the node".into()),
        Request::ForgetAccount { .. } => Err("forgetting is answered by the node (it knows the pinned peers)".into()),
        Request::PeerAdd { .. } | Request::PeerRemove { .. } | Request::Invite { .. } | Request::Join { .. } => {
            Err("peers are changed by the running node, or in the files when it is stopped".into())
        }
    }
}

/// The canonical dump as JSON (identical on converged replicas).
fn dump_json(store: &Store, user: &str) -> Result<String, starling_store::StoreError> {
    let mailboxes = store.dump_view(user)?;
    let doc = serde_json::json!({ "account": user, "mailboxes": mailboxes });
    Ok(serde_json::to_string_pretty(&doc).expect("JSON") + "\n")
}

/// Parses an IMAP UID set (`1:5,9,20:*`) into inclusive ranges.
pub fn parse_uid_set(s: &str) -> Result<Vec<(u32, u32)>, String> {
    let bad = || format!("{s:?} is not a UID set (e.g. 1:100,205)");
    let num = |t: &str| -> Result<u32, String> {
        if t == "*" {
            Ok(u32::MAX)
        } else {
            t.parse().ok().filter(|n| *n > 0).ok_or_else(bad)
        }
    };
    s.split(',')
        .map(|part| match part.split_once(':') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                Ok((a.min(b), a.max(b)))
            }
            None => num(part).map(|n| (n, n)),
        })
        .collect()
}

/// Asks a running node; `Ok(None)` when none is listening in `data_dir`.
pub fn ask(data_dir: &Path, req: &Request) -> Result<Option<Answer>, String> {
    use std::io::{BufRead, BufReader, Write};
    let path = socket_path(data_dir);
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&answer).map(Some).map_err(|e| format!("bad answer from the node: {e}"))
}
