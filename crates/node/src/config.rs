//! The TOML config file (`docs/configuration.md`): parsed and validated
//! before anything starts, with errors that name the file, the line and the
//! key. Command-line flags override it; built-in defaults fill the rest.

use crate::peers::{parse_uids, Peer};
use serde::Deserialize;
use starling_net::NodeId;
use starling_sync::BodyPolicy;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The whole file. Every section and key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data directory (store, identity, peers, certificates).
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub imap: Imap,
    #[serde(default)]
    pub lmtp: Lmtp,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub durability: DurabilitySection,
    #[serde(default)]
    pub cluster: ClusterSection,
    /// Pinned peers, in addition to `DATA_DIR/peers`.
    #[serde(default)]
    pub peer: Vec<PeerEntry>,
}

/// `[cluster]`: membership by gossip.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Gossip membership over the peer connections.
    #[serde(default = "yes")]
    pub gossip: bool,
    /// Pin the nodes a pinned peer introduces (by gossip), for the accounts
    /// that peer syncs with this node and the new node holds.
    #[serde(default = "yes")]
    pub accept_introduced: bool,
    /// The peer address other nodes reach this node at (default: where the
    /// peer endpoint listens, unless that is 0.0.0.0 or [::]).
    pub advertise: Option<std::net::SocketAddr>,
    /// Sync sessions per node at most, per account (0: one with every
    /// pinned peer); the other pinned peers get a connection for gossip
    /// only, and changes reach them through the others.
    #[serde(default = "fanout")]
    pub fanout: usize,
    /// Take the accounts a pinned peer places on this node (per-account
    /// placement, `starling account place`).
    #[serde(default = "yes")]
    pub accept_placed: bool,
    /// A replica of a placed account that the cluster declared down is
    /// replaced on another node after this long.
    #[serde(default = "replace_after")]
    pub replace_after_secs: u64,
    /// A snapshot sent to a peer (one joining, or back from past the log's
    /// floor) goes in parts of this many KiB, 1 to 4,096: a broken
    /// transfer resends at most the parts in flight, and the receiver
    /// flushes its disk once per part.
    pub snapshot_part_kib: Option<Spanned<u64>>,
}

impl ClusterSection {
    /// Values out of range, with the line they are on.
    fn validate(&self, text: &str) -> Result<(), String> {
        check_bounds(
            "cluster",
            &[("snapshot_part_kib", &self.snapshot_part_kib, 1, SNAPSHOT_PART_KIB, "KiB per part of a snapshot sent")],
            text,
        )
    }

    /// Bytes per part of a snapshot this node sends.
    pub fn snapshot_part(&self) -> usize {
        self.snapshot_part_kib.as_ref().map_or(SNAPSHOT_PART_KIB, |v| *v.get_ref()) as usize * 1024
    }
}

/// Default (and most) of `[cluster] snapshot_part_kib`: the sync
/// session's part.
pub const SNAPSHOT_PART_KIB: u64 = (starling_sync::SNAPSHOT_SEND_PART / 1024) as u64;

/// Default of `[cluster] replace_after_secs`: a restart or a short cut
/// moves no account.
pub const REPLACE_AFTER_SECS: u64 = 600;

fn replace_after() -> u64 {
    REPLACE_AFTER_SECS
}

/// Default of `[cluster] fanout`.
pub const FANOUT: usize = 8;

fn fanout() -> usize {
    FANOUT
}

fn yes() -> bool {
    true
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            gossip: true,
            accept_introduced: true,
            advertise: None,
            fanout: FANOUT,
            accept_placed: true,
            replace_after_secs: REPLACE_AFTER_SECS,
            snapshot_part_kib: None,
        }
    }
}

/// `[listen]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub imap: Option<SocketAddr>,
    pub imaps: Option<SocketAddr>,
    pub lmtp: Option<SocketAddr>,
    pub peers: Option<SocketAddr>,
    /// Prometheus metrics (HTTP); off unless set.
    pub metrics: Option<SocketAddr>,
    /// The status page (HTTP): an address, or `"off"`; on by default at
    /// [`STATUS_DEFAULT`].
    pub status: Option<OnOff>,
}

/// Default address of the status page (loopback: the page is for the
/// operator on the machine, or through an SSH tunnel).
pub const STATUS_DEFAULT: &str = "127.0.0.1:8431";

/// A listener that can be turned off: an address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOff {
    Off,
    At(SocketAddr),
}

impl std::str::FromStr for OnOff {
    type Err = String;
    fn from_str(s: &str) -> Result<OnOff, String> {
        if s == "off" {
            return Ok(OnOff::Off);
        }
        s.parse().map(OnOff::At).map_err(|e| format!("{s:?} is neither a socket address nor \"off\": {e}"))
    }
}

impl<'de> Deserialize<'de> for OnOff {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<OnOff, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// How long a FETCH of a body this replica left out waits for a peer to
/// send it, unless `[imap] body_wait_ms` says otherwise.
pub const BODY_WAIT: Duration = Duration::from_secs(10);

/// `[imap]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Imap {
    pub plaintext_on_loopback: Option<bool>,
    pub line_max: Option<Spanned<u64>>,
    pub literal_max: Option<Spanned<u64>>,
    pub connections_per_account: Option<Spanned<u64>>,
    pub preauth_line_max: Option<Spanned<u64>>,
    pub preauth_literal_max: Option<Spanned<u64>>,
    pub preauth_deadline_secs: Option<Spanned<u64>>,
    pub idle_timeout_secs: Option<Spanned<u64>>,
    pub connections_max: Option<Spanned<u64>>,
    pub connections_per_ip: Option<Spanned<u64>>,
    pub auth_failure_delay_ms: Option<Spanned<u64>>,
    pub auth_failure_delay_max_ms: Option<Spanned<u64>>,
    pub auth_failure_forget_secs: Option<Spanned<u64>>,
    pub auth_penalty_entries: Option<Spanned<u64>>,
    pub auth_cache_size: Option<Spanned<u64>>,
    pub auth_cache_ttl_secs: Option<Spanned<u64>>,
    pub auth_verify_parallel: Option<Spanned<u64>>,
    pub auth_verify_queue: Option<Spanned<u64>>,
    pub store_threads: Option<Spanned<u64>>,
    pub store_queue: Option<Spanned<u64>>,
    pub sort_cache_bytes: Option<Spanned<u64>>,
    pub body_wait_ms: Option<Spanned<u64>>,
    pub tls_cert: Option<Spanned<PathBuf>>,
    pub tls_key: Option<Spanned<PathBuf>>,
}

impl Imap {
    /// Values that would break the server or the RFC, with the line they are on.
    fn validate(&self, text: &str) -> Result<(), String> {
        const U32: u64 = u32::MAX as u64;
        check_bounds(
            "imap",
            &[
                ("line_max", &self.line_max, 0, U32, "bytes"),
                ("literal_max", &self.literal_max, 0, U32, "bytes"),
                ("preauth_line_max", &self.preauth_line_max, 512, U32, "LOGIN must fit"),
                ("preauth_literal_max", &self.preauth_literal_max, 0, U32, "bytes"),
                ("preauth_deadline_secs", &self.preauth_deadline_secs, 1, u64::MAX, "a client needs time to log in"),
                ("idle_timeout_secs", &self.idle_timeout_secs, 1800, u64::MAX, "RFC 9051 asks at least 30 minutes"),
                ("connections_max", &self.connections_max, 1, U32, "or no client gets in"),
                ("connections_per_ip", &self.connections_per_ip, 1, U32, "or no client gets in"),
                ("connections_per_account", &self.connections_per_account, 1, U32, "or no login succeeds"),
                ("auth_verify_parallel", &self.auth_verify_parallel, 1, 1024, "or no login is verified"),
                ("auth_verify_queue", &self.auth_verify_queue, 1, 1 << 20, "or every login is refused"),
                ("store_threads", &self.store_threads, 1, 1024, "or no command is answered"),
                ("store_queue", &self.store_queue, 1, 1 << 20, "or no command is answered"),
                ("sort_cache_bytes", &self.sort_cache_bytes, 0, 1 << 40, "bytes (0: no sort cache)"),
                ("auth_failure_forget_secs", &self.auth_failure_forget_secs, 1, u64::MAX, "penalties must last"),
                (
                    "auth_cache_ttl_secs",
                    &self.auth_cache_ttl_secs,
                    1,
                    u64::MAX,
                    "set auth_cache_size = 0 to turn it off",
                ),
                ("auth_failure_delay_ms", &self.auth_failure_delay_ms, 0, 3_600_000, "at most an hour"),
                ("auth_failure_delay_max_ms", &self.auth_failure_delay_max_ms, 0, 3_600_000, "at most an hour"),
                ("auth_penalty_entries", &self.auth_penalty_entries, 0, U32, "entries"),
                ("auth_cache_size", &self.auth_cache_size, 0, U32, "entries"),
                ("body_wait_ms", &self.body_wait_ms, 0, 600_000, "at most ten minutes"),
            ],
            text,
        )
    }
}

/// A key of a section, its value, its bounds (inclusive) and why they are so.
type Bound<'a> = (&'a str, &'a Option<Spanned<u64>>, u64, u64, &'a str);

/// The first value out of its bounds, with the line it is on.
fn check_bounds(section: &str, keys: &[Bound], text: &str) -> Result<(), String> {
    for (key, value, min, max, why) in keys {
        let Some(v) = value else { continue };
        let n = *v.get_ref();
        if n < *min || n > *max {
            let line = line_of(text, v.span().start);
            let range = if *max == u64::MAX { format!("below {min}") } else { format!("not within {min}..={max}") };
            return Err(format!("line {line}: {section}.{key}: {n} is {range} ({why})"));
        }
    }
    Ok(())
}

/// `[lmtp]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lmtp {
    pub message_max: Option<Spanned<u64>>,
    pub line_max: Option<Spanned<u64>>,
    pub idle_timeout_secs: Option<Spanned<u64>>,
    pub data_deadline_secs: Option<Spanned<u64>>,
    pub connections_max: Option<Spanned<u64>>,
    pub connections_per_ip: Option<Spanned<u64>>,
    pub store_threads: Option<Spanned<u64>>,
}

impl Lmtp {
    /// Values out of range, with the line they are on.
    fn validate(&self, text: &str) -> Result<(), String> {
        check_bounds(
            "lmtp",
            &[
                ("line_max", &self.line_max, 512, 1 << 16, "an RFC 5321 command line must fit; a line is held whole"),
                ("message_max", &self.message_max, 1 << 10, 1 << 30, "a message is held whole while it arrives"),
                ("idle_timeout_secs", &self.idle_timeout_secs, 1, 86_400, "RFC 5321 asks 300"),
                ("data_deadline_secs", &self.data_deadline_secs, 1, 86_400, "a whole message must fit"),
                ("connections_max", &self.connections_max, 1, 100_000, "or no MTA gets in"),
                ("connections_per_ip", &self.connections_per_ip, 1, 100_000, "or no MTA gets in"),
                ("store_threads", &self.store_threads, 1, 256, "threads for lookups and commits"),
            ],
            text,
        )
    }
}

/// `[store]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// redb's page cache, MiB.
    pub cache_mib: Option<Spanned<u64>>,
    /// Seconds between two housekeeping passes (log compaction, body
    /// collection).
    pub housekeeping_secs: Option<Spanned<u64>>,
    /// Days after which a silent peer no longer holds housekeeping back.
    pub peer_horizon_days: Option<Spanned<u64>>,
    /// Compact the op log (on by default).
    pub compact_log: Option<bool>,
    /// Delete the bodies of expunged mail (on by default).
    pub collect_bodies: Option<bool>,
    /// Compact the file (at the first housekeeping pass after start, then
    /// at most once per `file_compact_online_secs`) when this share of it
    /// (percent) is free pages; 100: never.
    pub file_compact_free_percent: Option<Spanned<u64>>,
    /// Shortest time between two online compactions of the file (each
    /// makes store operations wait while it runs); 0: only at the first
    /// housekeeping pass after start.
    pub file_compact_online_secs: Option<Spanned<u64>>,
    /// Expunges each mailbox remembers for QRESYNC; a client away longer
    /// gets an over-report.
    pub vanished_per_mailbox: Option<Spanned<u64>>,
}

impl StoreSection {
    /// Values out of range, with the line they are on.
    fn validate(&self, text: &str) -> Result<(), String> {
        check_bounds(
            "store",
            &[
                ("cache_mib", &self.cache_mib, 4, 65_536, "MiB of redb page cache"),
                ("housekeeping_secs", &self.housekeeping_secs, 1, 86_400, "at least daily"),
                ("peer_horizon_days", &self.peer_horizon_days, 1, 3_650, "a peer away longer catches up by snapshot"),
                ("file_compact_free_percent", &self.file_compact_free_percent, 1, 100, "100 turns it off"),
                (
                    "file_compact_online_secs",
                    &self.file_compact_online_secs,
                    0,
                    30 * 86_400,
                    "0: only once after start",
                ),
                ("vanished_per_mailbox", &self.vanished_per_mailbox, 1, 10_000_000, "expunges a mailbox remembers"),
            ],
            text,
        )
    }
}

/// `[durability]`: exposure after k peers (`docs/semantics.md`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurabilitySection {
    /// k: pinned peers that must hold a change before a client is told.
    pub peers: Option<Spanned<u64>>,
    /// Longest wait for them, ms.
    pub wait_ms: Option<Spanned<u64>>,
    /// Then what.
    pub when_short: Option<WhenShortKey>,
}

/// `durability.when_short`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenShortKey {
    Degrade,
    Refuse,
}

/// Default of `durability.wait_ms`.
pub const DURABILITY_WAIT: Duration = Duration::from_secs(10);

impl DurabilitySection {
    fn validate(&self, text: &str) -> Result<(), String> {
        let wait_max = starling_store::EXPOSURE_WAIT_MAX.as_millis() as u64;
        check_bounds(
            "durability",
            &[
                ("peers", &self.peers, 0, 64, "pinned peers"),
                ("wait_ms", &self.wait_ms, 1, wait_max, "at most ten minutes"),
            ],
            text,
        )
    }
}

/// Default of `store.file_compact_free_percent`.
const FILE_COMPACT_FREE_PERCENT: u8 = 25;

/// What `serve` does to keep the store from growing without end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Housekeeping {
    pub every: Duration,
    pub horizon: Duration,
    pub compact_log: bool,
    pub collect_bodies: bool,
    /// Online file compaction: the free share that starts one (100: never)
    /// and the shortest time between two (zero: never).
    pub file_compact_free_percent: u8,
    pub file_compact_every: Duration,
}

/// Default of `store.file_compact_online_secs`.
const FILE_COMPACT_ONLINE: Duration = Duration::from_secs(3_600);

impl Default for Housekeeping {
    fn default() -> Self {
        Housekeeping {
            every: Duration::from_secs(300),
            horizon: Duration::from_secs(30 * 86_400),
            compact_log: true,
            collect_bodies: true,
            file_compact_free_percent: FILE_COMPACT_FREE_PERCENT,
            file_compact_every: FILE_COMPACT_ONLINE,
        }
    }
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub format: Option<LogFormat>,
    /// A tracing filter, e.g. `info` or `starling_imap=debug,info`.
    pub level: Option<String>,
}

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `[[peer]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    pub id: Spanned<String>,
    pub addr: SocketAddr,
    pub accounts: Vec<String>,
    pub body_cap: Option<u64>,
    pub mailboxes: Option<Vec<String>>,
    pub since: Option<i64>,
    pub uids: Option<String>,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| format!("line {}: ", line_of(text, s.start))).unwrap_or_default();
            format!("{line}{}", e.message())
        })?;
        for (key, file) in [("imap.tls_cert", &config.imap.tls_cert), ("imap.tls_key", &config.imap.tls_key)] {
            if let Some(f) = file {
                if let Err(e) = std::fs::File::open(f.get_ref()) {
                    let line = line_of(text, f.span().start);
                    return Err(format!("line {line}: {key}: cannot read {}: {e}", f.get_ref().display()));
                }
            }
        }
        if config.imap.tls_cert.is_some() != config.imap.tls_key.is_some() {
            return Err("imap.tls_cert and imap.tls_key go together: set both or neither".into());
        }
        config.imap.validate(text)?;
        config.lmtp.validate(text)?;
        config.store.validate(text)?;
        config.durability.validate(text)?;
        config.cluster.validate(text)?;
        let mut seen = Vec::new();
        for p in &config.peer {
            let line = line_of(text, p.id.span().start);
            let id = NodeId::parse(p.id.get_ref()).map_err(|e| format!("line {line}: peer.id: {e}"))?;
            if seen.contains(&id) {
                return Err(format!("line {line}: peer.id: peer {id} is listed twice"));
            }
            if p.accounts.is_empty() {
                return Err(format!("line {line}: peer.accounts: no accounts"));
            }
            if let Some(u) = &p.uids {
                parse_uids(u).ok_or_else(|| format!("line {line}: peer.uids: {u:?} is not LO:HI"))?;
            }
            seen.push(id);
        }
        Ok(config)
    }

    /// The peers it lists.
    pub fn peers(&self) -> Vec<Peer> {
        self.peer
            .iter()
            .map(|p| Peer {
                id: NodeId::parse(p.id.get_ref()).expect("validated"),
                addr: p.addr,
                accounts: p.accounts.clone(),
                policy: BodyPolicy {
                    mailboxes: p.mailboxes.clone(),
                    received_since: p.since,
                    size_max: p.body_cap,
                    uids: p.uids.as_deref().and_then(parse_uids),
                },
            })
            .collect()
    }

    /// IMAP limits and policies.
    pub fn imap_config(&self) -> starling_imap::Config {
        let (i, d) = (&self.imap, starling_imap::Config::default());
        // Every value was checked against its bounds, which fit the types.
        let v = |k: &Option<Spanned<u64>>| k.as_ref().map(|v| *v.get_ref());
        let secs = |k: &Option<Spanned<u64>>, d: Duration| v(k).map_or(d, Duration::from_secs);
        let ms = |k: &Option<Spanned<u64>>, d: Duration| v(k).map_or(d, Duration::from_millis);
        let n32 = |k: &Option<Spanned<u64>>, d: u32| v(k).map_or(d, |n| n as u32);
        let n = |k: &Option<Spanned<u64>>, d: usize| v(k).map_or(d, |n| n as usize);
        let a = d.auth;
        starling_imap::Config {
            line_max: n32(&i.line_max, d.line_max),
            literal_max: n32(&i.literal_max, d.literal_max),
            preauth_line_max: n32(&i.preauth_line_max, d.preauth_line_max),
            preauth_literal_max: n32(&i.preauth_literal_max, d.preauth_literal_max),
            preauth_deadline: secs(&i.preauth_deadline_secs, d.preauth_deadline),
            idle_timeout: secs(&i.idle_timeout_secs, d.idle_timeout),
            connections_max: n(&i.connections_max, d.connections_max),
            connections_per_ip: n(&i.connections_per_ip, d.connections_per_ip),
            connections_per_account: n(&i.connections_per_account, d.connections_per_account),
            plaintext_on_loopback: i.plaintext_on_loopback.unwrap_or(d.plaintext_on_loopback),
            body_wait: ms(&i.body_wait_ms, BODY_WAIT),
            // `serve` sets it from `durability()` with the pinned peers.
            exposure: Default::default(),
            store_threads: n(&i.store_threads, d.store_threads),
            store_queue: n(&i.store_queue, d.store_queue),
            sort_cache_bytes: n(&i.sort_cache_bytes, d.sort_cache_bytes),
            auth: starling_imap::auth::GuardLimits {
                delay: ms(&i.auth_failure_delay_ms, a.delay),
                delay_max: ms(&i.auth_failure_delay_max_ms, a.delay_max),
                forget: secs(&i.auth_failure_forget_secs, a.forget),
                penalty_entries: n(&i.auth_penalty_entries, a.penalty_entries),
                cache_entries: n(&i.auth_cache_size, a.cache_entries),
                cache_ttl: secs(&i.auth_cache_ttl_secs, a.cache_ttl),
                verify_parallel: n(&i.auth_verify_parallel, a.verify_parallel),
                verify_queue: n(&i.auth_verify_queue, a.verify_queue),
            },
        }
    }
}

impl Config {
    /// How `serve` opens the store.
    pub fn store_options(&self) -> starling_store::StoreOptions {
        let d = starling_store::StoreOptions::default();
        let cache_bytes = self.store.cache_mib.as_ref().map_or(d.cache_bytes, |v| (*v.get_ref() as usize) << 20);
        let vanished_per_mailbox =
            self.store.vanished_per_mailbox.as_ref().map_or(d.vanished_per_mailbox, |v| *v.get_ref() as u32);
        // Not compacted at open: learning how much of the file is free
        // reads its tables' pages, which made a start as slow as the file
        // is large. `serve` checks at its first housekeeping pass, in the
        // background.
        starling_store::StoreOptions { cache_bytes, vanished_per_mailbox, ..d }
    }

    /// Exposure after k peers, without the pinned peers (`serve` adds them).
    pub fn durability(&self) -> starling_store::ExposurePolicy {
        let d = &self.durability;
        starling_store::ExposurePolicy {
            peers: d.peers.as_ref().map_or(0, |v| *v.get_ref() as usize),
            wait: d.wait_ms.as_ref().map_or(DURABILITY_WAIT, |v| Duration::from_millis(*v.get_ref())),
            when_short: match d.when_short {
                Some(WhenShortKey::Refuse) => starling_store::WhenShort::Refuse,
                Some(WhenShortKey::Degrade) | None => starling_store::WhenShort::Degrade,
            },
            pinned: Default::default(),
        }
    }

    /// Log compaction and body collection.
    pub fn housekeeping(&self) -> Housekeeping {
        let (s, d) = (&self.store, Housekeeping::default());
        Housekeeping {
            every: s.housekeeping_secs.as_ref().map_or(d.every, |v| Duration::from_secs(*v.get_ref())),
            horizon: s.peer_horizon_days.as_ref().map_or(d.horizon, |v| Duration::from_secs(*v.get_ref() * 86_400)),
            compact_log: s.compact_log.unwrap_or(d.compact_log),
            collect_bodies: s.collect_bodies.unwrap_or(d.collect_bodies),
            file_compact_free_percent: s
                .file_compact_free_percent
                .as_ref()
                .map_or(d.file_compact_free_percent, |v| *v.get_ref() as u8),
            file_compact_every: s
                .file_compact_online_secs
                .as_ref()
                .map_or(d.file_compact_every, |v| Duration::from_secs(*v.get_ref())),
        }
    }

    /// LMTP limits.
    pub fn lmtp_config(&self) -> crate::lmtp::Config {
        let (l, d) = (&self.lmtp, crate::lmtp::Config::default());
        let n = |v: &Option<Spanned<u64>>, d: usize| v.as_ref().map_or(d, |v| *v.get_ref() as usize);
        crate::lmtp::Config {
            limits: starling_lmtp::Limits {
                line_max: n(&l.line_max, d.limits.line_max),
                message_max: n(&l.message_max, d.limits.message_max),
                ..d.limits
            },
            idle_timeout: l.idle_timeout_secs.as_ref().map_or(d.idle_timeout, |v| Duration::from_secs(*v.get_ref())),
            data_deadline: l.data_deadline_secs.as_ref().map_or(d.data_deadline, |v| Duration::from_secs(*v.get_ref())),
            connections: starling_net::listen::ConnLimits {
                total: n(&l.connections_max, d.connections.total),
                per_ip: n(&l.connections_per_ip, d.connections.per_ip),
            },
            store_threads: n(&l.store_threads, d.store_threads),
        }
    }
}

/// What `starling init` writes: every key, commented out at its default.
pub const TEMPLATE: &str = r#"# Starling node configuration (docs/configuration.md). Every key is optional;
# command-line flags override this file.

# data_dir = "starling-data"

[listen]
# imap = "127.0.0.1:1143"      # IMAP with STARTTLS
# imaps = "127.0.0.1:1993"     # IMAP with implicit TLS
# lmtp = "127.0.0.1:2424"      # LMTP delivery (Postfix: lmtp:inet:127.0.0.1:2424)
# peers = "127.0.0.1:7431"     # peer endpoint (UDP, QUIC)
# metrics = "127.0.0.1:9431"   # Prometheus metrics over HTTP (off unless set)
# status = "127.0.0.1:8431"    # status page over HTTP (live cluster graph); "off" to turn it off

[imap]
# plaintext_on_loopback = true # LOGIN without TLS from 127.0.0.1/::1
# line_max = 65536             # longest command line, bytes
# literal_max = 67108864       # largest literal (APPENDed message), bytes
# connections_per_account = 64  # authenticated connections of one account
# preauth_line_max = 8192      # before login: longest command line, bytes
# preauth_literal_max = 8192   # before login: largest literal, bytes
# preauth_deadline_secs = 60   # before login: closed this long after connecting
# idle_timeout_secs = 1860     # after login: closed this long after the last command
# body_wait_ms = 10000         # a FETCH of a body left out here waits this long for a peer
# connections_max = 1000       # open connections in total (both ports)
# connections_per_ip = 100     # open connections from one address (IPv6: /64)
# auth_failure_delay_ms = 500  # login penalty after a failure, doubling (0: off)
# auth_failure_delay_max_ms = 15000  # login penalty at most
# auth_failure_forget_secs = 900     # penalty forgotten this long after the last failure
# auth_penalty_entries = 10000 # addresses and account names with a penalty, each
# auth_cache_size = 10000      # cached successful logins (0: off)
# auth_cache_ttl_secs = 3600   # a cached login is trusted this long
# auth_verify_parallel = 2     # Argon2 threads (default: cores, at most 4; ~19 MiB each)
# auth_verify_queue = 1024     # logins waiting for one; more are refused (NO [UNAVAILABLE])
# store_threads = 16           # threads running session steps that touch the store (default: 64)
# store_queue = 1024           # steps waiting for one; more wait for room (not read meanwhile)
# sort_cache_bytes = 67108864  # SORT's per-mailbox orders, all mailboxes together, bytes (0: none)
# tls_cert = "/etc/ssl/mail.pem"   # default: self-signed, made in data_dir
# tls_key = "/etc/ssl/mail.key"

[lmtp]
# message_max = 67108864       # largest message, bytes (advertised as SIZE; 552 above)
# line_max = 1000              # longest command line, bytes (500 above)
# idle_timeout_secs = 300      # silence allowed for a command line, or between reads in DATA
# data_deadline_secs = 3600    # one DATA, from its start to its final dot, at most
# connections_max = 64         # open connections in total (421 above)
# connections_per_ip = 32      # open connections from one address (421 above)
# store_threads = 4            # threads for recipient lookups and commits (the rest wait their turn)

[store]
# cache_mib = 64               # redb's page cache (redb's own default is 1 GiB)
# housekeeping_secs = 300      # between log compactions and body collections
# peer_horizon_days = 30       # a peer silent longer no longer holds them back
# compact_log = true           # drop ops every pinned peer holds
# collect_bodies = true        # delete expunged mail's bodies once every peer holds the expunge
# file_compact_free_percent = 25  # compact the file when this much of it is free (100: never)
# file_compact_online_secs = 3600  # while running, at most one compaction per this (0: only at start)
# vanished_per_mailbox = 10000 # expunges a mailbox remembers for QRESYNC (older: an over-report)

[durability]
# peers = 0                    # k: pinned peers that hold a change before a client is told of it
# wait_ms = 10000              # longest wait for them
# when_short = "degrade"       # then: answer anyway (degrade), or LMTP 451 and withdraw (refuse)

[cluster]
# gossip = true                # membership by gossip (SWIM) over the peer connections
# accept_introduced = true     # pin nodes a pinned peer introduces, within that peer's accounts
# advertise = "192.0.2.7:7431" # the peer address others reach this node at (default: the listen address)
# fanout = 8                   # sync sessions per node and account at most (0: every pinned peer)
# accept_placed = true         # take the accounts a pinned peer places here (`account place`)
# replace_after_secs = 600     # a placed account's replica down this long is replaced elsewhere
# snapshot_part_kib = 4096     # a snapshot sent to a peer goes in parts this large (1..=4096; less resent after a break)

[log]
# format = "human"             # or "json"
# level = "info"               # a tracing filter, e.g. "starling_imap=debug,info"

# [[peer]]
# id = "<node id printed by `starling id` on that node>"
# addr = "192.0.2.7:7431"
# accounts = ["alice"]
# body_cap = 1048576           # partial replica: larger bodies on demand only
# mailboxes = ["INBOX", "Work/*", "\\Sent"]
# since = 1700000000           # partial replica: bodies of mail received since
# uids = "1000:*"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_part_is_set_in_kib_within_its_bounds() {
        assert_eq!(Config::parse("").unwrap().cluster.snapshot_part(), starling_sync::SNAPSHOT_SEND_PART);
        assert_eq!(Config::parse("[cluster]\nsnapshot_part_kib = 64\n").unwrap().cluster.snapshot_part(), 65_536);
        for bad in [0, SNAPSHOT_PART_KIB + 1] {
            let e = Config::parse(&format!("[cluster]\n\nsnapshot_part_kib = {bad}\n")).unwrap_err();
            assert!(e.contains("line 3") && e.contains("cluster.snapshot_part_kib"), "{e}");
        }
    }

    #[test]
    fn the_template_parses_and_errors_name_line_and_key() {
        Config::parse(TEMPLATE).unwrap();
        let e = Config::parse("[listen]\nimap = \"127.0.0.1:1143\"\nfrob = 1\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("frob"), "{e}");
        let e = Config::parse("[listen]\n\nimap = \"nowhere\"\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("socket address"), "{e}");
        let id = "ab".repeat(32);
        let peer = format!("[[peer]]\nid = \"{id}\"\naddr = \"127.0.0.1:1\"\naccounts = [\"a\"]\n");
        let e = Config::parse(&format!("{peer}{peer}")).unwrap_err();
        assert!(e.contains("line 6") && e.contains("listed twice"), "{e}");
        let e =
            Config::parse("[imap]\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("imap.tls_cert") && e.contains("cannot read"), "{e}");
        let c = Config::parse("[listen]\nstatus = \"off\"\n").unwrap();
        assert_eq!(c.listen.status, Some(OnOff::Off));
        let c = Config::parse("[listen]\nstatus = \"127.0.0.1:9\"\n").unwrap();
        assert_eq!(c.listen.status, Some(OnOff::At("127.0.0.1:9".parse().unwrap())));
        assert_eq!(Config::parse(TEMPLATE).unwrap().listen.status, None);
        let e = Config::parse("[listen]\n\nstatus = \"on\"\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("neither"), "{e}");
        let e = Config::parse("[log]\nformat = \"xml\"\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = Config::parse("[imap]\n\nidle_timeout_secs = 60\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("imap.idle_timeout_secs") && e.contains("RFC 9051"), "{e}");
        let e = Config::parse("[imap]\nline_max = 1\nliteral_max = 5000000000\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("imap.literal_max"), "{e}");
        let e = Config::parse("[imap]\nauth_verify_parallel = 0\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("imap.auth_verify_parallel"), "{e}");
        let e = Config::parse("[imap]\nstore_threads = 0\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("imap.store_threads"), "{e}");
        let e = Config::parse("[imap]\nstore_queue = 0\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("imap.store_queue"), "{e}");
    }

    #[test]
    fn imap_keys_reach_the_server_config_and_default_to_its_defaults() {
        let d = starling_imap::Config::default();
        let c = Config::parse(TEMPLATE).unwrap().imap_config();
        assert_eq!((c.preauth_line_max, c.preauth_literal_max), (d.preauth_line_max, d.preauth_literal_max));
        assert_eq!((c.preauth_deadline, c.idle_timeout, c.auth), (d.preauth_deadline, d.idle_timeout, d.auth));
        let c = Config::parse(
            "[imap]\npreauth_deadline_secs = 3\nconnections_per_ip = 7\nauth_failure_delay_ms = 0\nauth_cache_size = 0\n",
        )
        .unwrap()
        .imap_config();
        assert_eq!(c.preauth_deadline, Duration::from_secs(3));
        assert_eq!((c.connections_per_ip, c.connections_max), (7, d.connections_max));
        assert_eq!((c.auth.delay, c.auth.cache_entries), (Duration::ZERO, 0));
        assert_eq!((c.store_threads, c.store_queue), (d.store_threads, d.store_queue));
        let c = Config::parse("[imap]\nstore_threads = 3\nstore_queue = 9\n").unwrap().imap_config();
        assert_eq!((c.store_threads, c.store_queue), (3, 9));
    }

    #[test]
    fn lmtp_keys_are_checked_and_reach_the_server_config() {
        let d = crate::lmtp::Config::default();
        assert_eq!(Config::parse(TEMPLATE).unwrap().lmtp_config(), d);
        let c = Config::parse(
            "[lmtp]\nmessage_max = 2048\nline_max = 600\nidle_timeout_secs = 7\nconnections_max = 5\nconnections_per_ip = 2\n",
        )
        .unwrap()
        .lmtp_config();
        let limits = (c.limits.message_max, c.limits.line_max, c.limits.recipients_max);
        assert_eq!(limits, (2048, 600, d.limits.recipients_max));
        assert_eq!((c.idle_timeout, c.connections.total, c.connections.per_ip), (Duration::from_secs(7), 5, 2));
        assert_eq!(c.store_threads, d.store_threads);
        assert_eq!(Config::parse("[lmtp]\nstore_threads = 2\n").unwrap().lmtp_config().store_threads, 2);
        let e = Config::parse("[lmtp]\nstore_threads = 0\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("lmtp.store_threads"), "{e}");
        let e = Config::parse("[lmtp]\nmessage_max = 2048\n\nline_max = 100\n").unwrap_err();
        assert!(e.contains("line 4") && e.contains("lmtp.line_max") && e.contains("512"), "{e}");
        let e = Config::parse("[lmtp]\nidle_timeout_secs = 0\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("lmtp.idle_timeout_secs"), "{e}");
        let e = Config::parse("[lmtp]\nconnections_per_ip = 0\n").unwrap_err();
        assert!(e.contains("lmtp.connections_per_ip"), "{e}");
        let e = Config::parse("[store]\n\ncache_mib = 2\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("store.cache_mib"), "{e}");
        let c = Config::parse("[store]\ncache_mib = 16\n").unwrap();
        assert_eq!(c.store_options().cache_bytes, 16 << 20);
        assert_eq!(Config::default().store_options().cache_bytes, starling_store::CACHE_BYTES_DEFAULT);
        let c = Config::parse("[store]\nvanished_per_mailbox = 500\n").unwrap();
        assert_eq!(c.store_options().vanished_per_mailbox, 500);
        let e = Config::parse("[store]\nvanished_per_mailbox = 0\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("store.vanished_per_mailbox"), "{e}");
        assert_eq!(
            Config::default().store_options().vanished_per_mailbox,
            starling_store::VANISHED_PER_MAILBOX_DEFAULT
        );
        let e = Config::parse("[durability]\npeers = 1\nwait_ms = 0\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("durability.wait_ms"), "{e}");
        let c = Config::parse("[durability]\npeers = 2\nwait_ms = 1500\nwhen_short = \"refuse\"\n").unwrap();
        let d = c.durability();
        assert_eq!(
            (d.peers, d.wait, d.when_short),
            (2, Duration::from_millis(1500), starling_store::WhenShort::Refuse)
        );
        assert_eq!(Config::parse(TEMPLATE).unwrap().durability(), Config::default().durability());
        assert_eq!(Config::default().durability().peers, 0);
        let e = Config::parse("[lmtp]\nmessage_maxx = 1\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("message_maxx"), "{e}");
    }
}
