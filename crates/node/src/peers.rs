//! The pinned peers of this node: `DATA_DIR/peers`, one line per peer,
//! `<node id> <address> <account>[,<account>…] [body-cap=<bytes>]
//! [mailboxes=<name>[,<name>…]] [since=<unix seconds>] [uids=<lo>:<hi|*>]`. Only the listed
//! accounts are synced with that peer (authorization per account). The
//! optional fields make this node a partial replica of what that peer sends:
//! all metadata, but only the bodies they select come eagerly.

use starling_net::NodeId;
use starling_sync::BodyPolicy;
use std::net::SocketAddr;
use std::path::Path;

/// One pinned peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub accounts: Vec<String>,
    pub policy: BodyPolicy,
}

fn parse_line(n: usize, line: &str) -> Result<Peer, String> {
    let mut parts = line.split_whitespace();
    let (Some(id), Some(addr), Some(accounts)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("line {n}: expected `<node id> <address> <accounts> [options]`"));
    };
    let id = NodeId::parse(id).map_err(|e| format!("line {n}: {e}"))?;
    let addr = addr.parse().map_err(|e| format!("line {n}: bad address {addr:?}: {e}"))?;
    let accounts: Vec<String> = accounts.split(',').filter(|a| !a.is_empty()).map(str::to_string).collect();
    if accounts.is_empty() {
        return Err(format!("line {n}: no accounts"));
    }
    let mut policy = BodyPolicy::full();
    for opt in parts {
        let bad = || format!("line {n}: bad option {opt:?}");
        match opt.split_once('=') {
            Some(("body-cap", v)) => policy.size_max = Some(v.parse().map_err(|_| bad())?),
            Some(("since", v)) => policy.received_since = Some(v.parse().map_err(|_| bad())?),
            Some(("mailboxes", v)) => policy.mailboxes = Some(v.split(',').map(str::to_string).collect()),
            Some(("uids", v)) => policy.uids = Some(parse_uids(v).ok_or_else(bad)?),
            _ => return Err(format!("line {n}: unknown option {opt:?} (body-cap=, mailboxes=, since=, uids=)")),
        }
    }
    Ok(Peer { id, addr, accounts, policy })
}

/// The options part of a peer line.
pub fn options(p: &BodyPolicy) -> String {
    let mut out = String::new();
    if let Some(c) = p.size_max {
        out.push_str(&format!(" body-cap={c}"));
    }
    if let Some(m) = &p.mailboxes {
        out.push_str(&format!(" mailboxes={}", m.join(",")));
    }
    if let Some(t) = p.received_since {
        out.push_str(&format!(" since={t}"));
    }
    if let Some((lo, hi)) = p.uids {
        let hi = if hi == u32::MAX { "*".to_string() } else { hi.to_string() };
        out.push_str(&format!(" uids={lo}:{hi}"));
    }
    out
}

/// `LO:HI` (HI may be `*`) as an inclusive UID range.
pub fn parse_uids(v: &str) -> Option<(u32, u32)> {
    let (lo, hi) = v.split_once(':')?;
    let lo: u32 = lo.parse().ok()?;
    let hi: u32 = if hi == "*" { u32::MAX } else { hi.parse().ok()? };
    (lo <= hi).then_some((lo, hi))
}

/// Reads the peers file (none if it does not exist).
pub fn load(data_dir: &Path) -> Result<Vec<Peer>, String> {
    let path = data_dir.join("peers");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut peers: Vec<Peer> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let p = parse_line(i + 1, line).map_err(|e| format!("{}: {e}", path.display()))?;
        if peers.iter().any(|q| q.id == p.id) {
            return Err(format!("{}: line {}: duplicate peer {}", path.display(), i + 1, p.id));
        }
        peers.push(p);
    }
    Ok(peers)
}

/// Writes the peers file.
pub fn save(data_dir: &Path, peers: &[Peer]) -> Result<(), String> {
    let mut text = String::from("# node id, address, accounts synced with it\n");
    for p in peers {
        text.push_str(&format!("{} {} {}{}\n", p.id, p.addr, p.accounts.join(","), options(&p.policy)));
    }
    let path = data_dir.join("peers");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}
