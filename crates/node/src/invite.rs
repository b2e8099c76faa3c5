//! Invitations: `starling invite` prints a one-line token (the node's id
//! and addresses, a one-time secret, an expiry, the accounts); `starling
//! join TOKEN` on a new node presents the secret over a QUIC connection
//! whose TLS already proved both node ids, and both nodes then pin each
//! other for those accounts.
//!
//! The inviting node keeps only a hash of each secret (`DATA_DIR/invites`,
//! one line per open invitation: `<blake3 of the secret> <expiry, Unix
//! seconds> <accounts>`); a secret works once, before its expiry, and only
//! with this node (the token names it, and the joining node checks it in
//! the handshake, so the secret goes to no other).

use serde::{Deserialize, Serialize};
use starling_net::NodeId;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// What every token starts with.
const PREFIX: &str = "starling-invite:";
/// Open invitations a node keeps at most; more are refused until some are
/// used or expire.
pub const OPEN_MAX: usize = 64;
/// Longest an invitation may stay open.
pub const TTL_MAX_SECS: u64 = 30 * 24 * 3600;
/// Largest join request or answer, bytes.
pub const MESSAGE_MAX: usize = 16 << 10;
/// Addresses and accounts one token carries at most.
const ADDRS_MAX: usize = 8;
const ACCOUNTS_MAX: usize = 256;

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The inviting node.
    pub node: [u8; 32],
    /// Where its peer endpoint listens.
    pub addrs: Vec<SocketAddr>,
    /// The one-time secret.
    pub secret: [u8; 16],
    /// Unix seconds after which it is refused.
    pub expires: u64,
    /// The accounts both nodes will sync.
    pub accounts: Vec<String>,
}

impl Token {
    /// The inviting node's id.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.node)
    }

    /// The one-line form: the prefix, then hex of the encoded token and of
    /// four bytes of its BLAKE3 (so a token cut or mistyped is told apart
    /// from one refused).
    pub fn encode(&self) -> String {
        let mut bytes = postcard::to_stdvec(self).expect("a token encodes");
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(&sum.as_bytes()[..4]);
        let mut out = String::with_capacity(PREFIX.len() + 2 * bytes.len());
        out.push_str(PREFIX);
        for b in bytes {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Parses [`Token::encode`]'s form.
    pub fn parse(s: &str) -> Result<Token, String> {
        let hex =
            s.trim().strip_prefix(PREFIX).ok_or_else(|| format!("not an invitation (it starts with {PREFIX:?})"))?;
        if hex.len() % 2 != 0 || hex.len() > 2 * MESSAGE_MAX || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("damaged invitation (not hex of the right length)".into());
        }
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect();
        let Some((body, sum)) = bytes.split_last_chunk::<4>() else {
            return Err("damaged invitation (too short)".into());
        };
        if blake3::hash(body).as_bytes()[..4] != sum[..] {
            return Err("damaged invitation (its checksum does not match: copied whole?)".into());
        }
        let t: Token = postcard::from_bytes(body).map_err(|e| format!("damaged invitation: {e}"))?;
        if t.addrs.is_empty() || t.addrs.len() > ADDRS_MAX || t.accounts.is_empty() || t.accounts.len() > ACCOUNTS_MAX {
            return Err("invitation with no address or no account, or too many".into());
        }
        for a in &t.accounts {
            check_account(a)?;
        }
        Ok(t)
    }
}

/// An account name as the peers file can hold it.
pub fn check_account(a: &str) -> Result<(), String> {
    if a.is_empty() || a.len() > 255 || a.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',') {
        return Err(format!("account name {a:?} cannot be pinned (empty, too long, or with a space or comma)"));
    }
    Ok(())
}

/// The joining node's request, on the join connection's one stream.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The token's secret.
    pub secret: [u8; 16],
}

/// The inviting node's answer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct JoinAnswer {
    /// Why the join was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The accounts the two nodes now sync.
    #[serde(default)]
    pub accounts: Vec<String>,
}

/// One open invitation: the hash of its secret, its expiry, its accounts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Open {
    hash: [u8; 32],
    expires: u64,
    accounts: Vec<String>,
}

/// Why a secret was not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not one of the open invitations (never made, or used already).
    #[error("no such invitation here (never made, used already, or withdrawn)")]
    Unknown,
    /// Past its expiry.
    #[error("the invitation expired")]
    Expired,
    /// This node revoked the joining node.
    #[error("this node was removed from the cluster and cannot join again")]
    Revoked,
    /// The invitations file could not be written.
    #[error("{0}")]
    Io(String),
}

/// The open invitations of a node, kept in `DATA_DIR/invites`.
#[derive(Debug)]
pub struct Invites {
    path: PathBuf,
    open: Vec<Open>,
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    NodeId::parse(s).ok().map(|n| n.0)
}

impl Invites {
    /// Reads the file (none if it does not exist).
    pub fn load(data_dir: &Path) -> Result<Invites, String> {
        let path = data_dir.join("invites");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut open = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || format!("{}: line {}: expected `<secret hash> <expiry> <accounts>`", path.display(), i + 1);
            let mut parts = line.split_whitespace();
            let (Some(hash), Some(expires), Some(accounts), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            open.push(Open {
                hash: hex32(hash).ok_or_else(bad)?,
                expires: expires.parse().map_err(|_| bad())?,
                accounts: accounts.split(',').map(str::to_string).collect(),
            });
        }
        Ok(Invites { path, open })
    }

    fn save(&self) -> Result<(), String> {
        let mut text = String::from("# open invitations: blake3 of the secret, expiry (Unix seconds), accounts\n");
        for o in &self.open {
            text.push_str(&format!("{} {} {}\n", NodeId(o.hash), o.expires, o.accounts.join(",")));
        }
        crate::private::replace_file(&self.path, &text)
    }

    /// Drops expired invitations; true if any are left.
    pub fn prune(&mut self, now: u64) -> bool {
        let before = self.open.len();
        self.open.retain(|o| o.expires > now);
        if self.open.len() != before {
            let _ = self.save();
        }
        !self.open.is_empty()
    }

    /// Opens an invitation for `accounts` until `now + ttl_secs`; returns
    /// its secret.
    pub fn create(&mut self, accounts: &[String], ttl_secs: u64, now: u64) -> Result<[u8; 16], String> {
        if ttl_secs == 0 || ttl_secs > TTL_MAX_SECS {
            return Err(format!("an invitation stays open between 1 s and {} days", TTL_MAX_SECS / 86400));
        }
        if accounts.is_empty() {
            return Err("an invitation needs an account".into());
        }
        for a in accounts {
            check_account(a)?;
        }
        self.prune(now);
        if self.open.len() >= OPEN_MAX {
            return Err(format!("{OPEN_MAX} invitations are open already; wait until some are used or expire"));
        }
        let secret: [u8; 16] = crate::private::random_bytes()?;
        self.open.push(Open {
            hash: *blake3::hash(&secret).as_bytes(),
            expires: now + ttl_secs,
            accounts: accounts.to_vec(),
        });
        self.save()?;
        Ok(secret)
    }

    /// Takes the invitation of `secret` (it works once): its accounts.
    /// Secrets are compared by their BLAKE3 hashes, so the time taken says
    /// nothing about how close a guess was.
    pub fn redeem(&mut self, secret: &[u8; 16], now: u64) -> Result<Vec<String>, Refusal> {
        let hash = blake3::hash(secret);
        let Some(i) = self.open.iter().position(|o| blake3::Hash::from(o.hash) == hash) else {
            return Err(Refusal::Unknown);
        };
        let o = self.open.remove(i);
        self.save().map_err(Refusal::Io)?;
        if o.expires <= now {
            return Err(Refusal::Expired);
        }
        Ok(o.accounts)
    }

    /// Open invitations.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.open.len()
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token {
            node: [7; 32],
            addrs: vec!["192.0.2.7:7431".parse().unwrap(), "[2001:db8::1]:7431".parse().unwrap()],
            secret: [9; 16],
            expires: 1_900_000_000,
            accounts: vec!["alice".into(), "bob@example.org".into()],
        }
    }

    #[test]
    fn a_token_reads_back_and_damage_is_told() {
        let t = token();
        let s = t.encode();
        assert!(s.starts_with(PREFIX) && !s.contains(char::is_whitespace), "{s}");
        assert_eq!(Token::parse(&s).unwrap(), t);
        assert_eq!(Token::parse(&format!("  {s}\n")).unwrap(), t, "pasted with spaces around");
        // Any changed digit is caught by the checksum, a cut token too.
        let mut chars: Vec<char> = s.chars().collect();
        let i = PREFIX.len() + 10;
        chars[i] = if chars[i] == '0' { '1' } else { '0' };
        let flipped: String = chars.into_iter().collect();
        assert!(Token::parse(&flipped).unwrap_err().contains("checksum"));
        assert!(Token::parse(&s[..s.len() - 2]).is_err());
        assert!(Token::parse("hello").unwrap_err().contains("not an invitation"));
        assert!(Token::parse(&format!("{PREFIX}zz")).is_err());
        let mut none = t.clone();
        none.accounts.clear();
        assert!(Token::parse(&none.encode()).is_err(), "a token with no account");
    }

    #[test]
    fn a_secret_works_once_before_its_expiry_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut inv = Invites::load(dir.path()).unwrap();
        let accounts = vec!["alice".to_string()];
        let s1 = inv.create(&accounts, 60, 1000).unwrap();
        let s2 = inv.create(&accounts, 60, 1000).unwrap();
        assert_ne!(s1, s2);
        // Only the hash is on disk.
        let file = std::fs::read_to_string(dir.path().join("invites")).unwrap();
        let s1_hex: String = s1.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!file.contains(&s1_hex) && file.lines().count() == 3, "{file}");
        let mut again = Invites::load(dir.path()).unwrap();
        assert_eq!(again.len(), 2);
        assert_eq!(again.redeem(&s1, 1010), Ok(accounts.clone()));
        assert_eq!(again.redeem(&s1, 1010), Err(Refusal::Unknown), "used once");
        assert_eq!(again.redeem(&[0; 16], 1010), Err(Refusal::Unknown));
        assert_eq!(Invites::load(dir.path()).unwrap().len(), 1, "the use is on disk");
        assert_eq!(again.redeem(&s2, 1060), Err(Refusal::Expired));
        assert_eq!(again.len(), 0);
    }

    #[test]
    fn open_invitations_are_bounded_and_expired_ones_make_room() {
        let dir = tempfile::tempdir().unwrap();
        let mut inv = Invites::load(dir.path()).unwrap();
        let a = vec!["alice".to_string()];
        for _ in 0..OPEN_MAX {
            inv.create(&a, 10, 0).unwrap();
        }
        assert!(inv.create(&a, 10, 5).unwrap_err().contains("open already"));
        assert!(inv.create(&a, 10, 10).is_ok(), "the expired ones were dropped");
        assert_eq!(inv.len(), 1);
        assert!(inv.create(&a, 0, 10).is_err());
        assert!(inv.create(&a, TTL_MAX_SECS + 1, 10).is_err());
        assert!(inv.create(&["a b".to_string()], 10, 10).is_err());
        assert!(!inv.prune(100));
    }
}
