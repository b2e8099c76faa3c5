//! The TOML config file (`docs/configuration.md`): parsed and validated
//! before anything starts, with errors that name the file, the line and the
//! key. Command-line flags override it; built-in defaults fill the rest.

use crate::peers::{parse_uids, Peer};
use serde::Deserialize;
use starling_net::NodeId;
use starling_sync::BodyPolicy;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    pub log: Log,
    /// Pinned peers, in addition to `DATA_DIR/peers`.
    #[serde(default)]
    pub peer: Vec<PeerEntry>,
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
}

/// `[imap]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Imap {
    pub plaintext_on_loopback: Option<bool>,
    pub line_max: Option<u32>,
    pub literal_max: Option<u32>,
    pub connections_per_account: Option<usize>,
    pub tls_cert: Option<Spanned<PathBuf>>,
    pub tls_key: Option<Spanned<PathBuf>>,
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
        let d = starling_imap::Config::default();
        starling_imap::Config {
            line_max: self.imap.line_max.unwrap_or(d.line_max),
            literal_max: self.imap.literal_max.unwrap_or(d.literal_max),
            connections_per_account: self.imap.connections_per_account.unwrap_or(d.connections_per_account),
            plaintext_on_loopback: self.imap.plaintext_on_loopback.unwrap_or(d.plaintext_on_loopback),
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

[imap]
# plaintext_on_loopback = true # LOGIN without TLS from 127.0.0.1/::1
# line_max = 65536             # longest command line, bytes
# literal_max = 67108864       # largest literal (APPENDed message), bytes
# connections_per_account = 64
# tls_cert = "/etc/ssl/mail.pem"   # default: self-signed, made in data_dir
# tls_key = "/etc/ssl/mail.key"

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
        let e = Config::parse("[log]\nformat = \"xml\"\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }
}
