//! The pinned peers of this node: `DATA_DIR/peers`, one line per peer,
//! `<node id> <address> <account>[,<account>…]`. Only the listed accounts
//! are synced with that peer (authorization per account).

use starling_net::NodeId;
use std::net::SocketAddr;
use std::path::Path;

/// One pinned peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub accounts: Vec<String>,
}

fn parse_line(n: usize, line: &str) -> Result<Peer, String> {
    let mut parts = line.split_whitespace();
    let (Some(id), Some(addr), Some(accounts), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(format!("line {n}: expected `<node id> <address> <accounts>`"));
    };
    let id = NodeId::parse(id).map_err(|e| format!("line {n}: {e}"))?;
    let addr = addr.parse().map_err(|e| format!("line {n}: bad address {addr:?}: {e}"))?;
    let accounts: Vec<String> = accounts.split(',').filter(|a| !a.is_empty()).map(str::to_string).collect();
    if accounts.is_empty() {
        return Err(format!("line {n}: no accounts"));
    }
    Ok(Peer { id, addr, accounts })
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
        text.push_str(&format!("{} {} {}\n", p.id, p.addr, p.accounts.join(",")));
    }
    let path = data_dir.join("peers");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}
