//! The pinned peers of this node: `DATA_DIR/peers`, one line per peer,
//! `<node id> <address> <account>[,<account>…]|- [body-cap=<bytes>]
//! [mailboxes=<name>[,<name>…]] [since=<unix seconds>] [uids=<lo>:<hi|*>]`. Only the listed
//! accounts are synced with that peer (authorization per account); `-`: none
//! now (an account placed elsewhere left this node; gossip goes on). The
//! optional fields make this node a partial replica of what that peer sends:
//! all metadata, but only the bodies they select come eagerly.

use crate::invite::{check_account, unix_now, Invites, Refusal};
use starling_net::{NodeId, PeerSet};
use starling_sync::BodyPolicy;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One pinned peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub accounts: Vec<String>,
    pub policy: BodyPolicy,
}

/// One line of the peers file (`n` is its number, for errors).
pub fn parse_line(n: usize, line: &str) -> Result<Peer, String> {
    let mut parts = line.split_whitespace();
    let (Some(id), Some(addr), Some(accounts)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("line {n}: expected `<node id> <address> <accounts> [options]`"));
    };
    let id = NodeId::parse(id).map_err(|e| format!("line {n}: {e}"))?;
    let addr = addr.parse().map_err(|e| format!("line {n}: bad address {addr:?}: {e}"))?;
    let none = accounts == "-";
    let accounts: Vec<String> = accounts.split(',').filter(|a| !a.is_empty() && !none).map(str::to_string).collect();
    if accounts.is_empty() && !none {
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
        let accounts = if p.accounts.is_empty() { "-".to_string() } else { p.accounts.join(",") };
        text.push_str(&format!("{} {} {accounts}{}\n", p.id, p.addr, options(&p.policy)));
    }
    crate::private::replace_file(&data_dir.join("peers"), &text)
}

/// Node ids this node removed (`DATA_DIR/revoked`, one per line): refused
/// at the handshake and when they come to join, until pinned again by hand.
fn load_revoked(data_dir: &Path) -> Result<BTreeSet<NodeId>, String> {
    let path = data_dir.join("revoked");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| NodeId::parse(l).map_err(|e| format!("{}: {e}", path.display())))
        .collect()
}

fn save_revoked(data_dir: &Path, revoked: &BTreeSet<NodeId>) -> Result<(), String> {
    let mut text = String::from("# node ids removed from this node's peers; refused until pinned again\n");
    for id in revoked {
        text.push_str(&format!("{id}\n"));
    }
    crate::private::replace_file(&data_dir.join("revoked"), &text)
}

/// Peers pinned at most (by hand, by invitation or by introduction): a
/// peer introducing node ids without end cannot grow the peers file, the
/// dialers or the sessions past it.
pub const PEERS_MAX: usize = starling_gossip::MEMBERS_MAX;

/// The pinned peers of a node, changed while it runs (`peer add`, `peer
/// remove`, `join`, and a node joining with an invitation): the peers
/// file, the revocations and the open invitations on disk, and the set
/// the TLS handshake checks, kept in step. Peers from the config file are
/// fixed for the run.
pub struct PeerBook {
    data_dir: PathBuf,
    fixed: BTreeSet<NodeId>,
    state: Mutex<BookState>,
    pinned: Arc<PeerSet>,
    /// The peers of each account, as exposure after k peers counts them
    /// (kept in step with the list).
    exposure: starling_store::PinnedPeers,
}

/// The peers of each account, by replica id.
fn per_account(list: &[Peer]) -> std::collections::BTreeMap<String, Vec<starling_model::ReplicaId>> {
    let mut m = std::collections::BTreeMap::<String, Vec<_>>::new();
    for p in list {
        for a in &p.accounts {
            m.entry(a.clone()).or_default().push(p.id.replica());
        }
    }
    m
}

struct BookState {
    list: Arc<Vec<Peer>>,
    revoked: BTreeSet<NodeId>,
    invites: Invites,
}

impl PeerBook {
    /// Reads the peers file, the revocations and the open invitations,
    /// with `fixed` (the config file's peers) added.
    pub fn open(data_dir: &Path, fixed: Vec<Peer>) -> Result<PeerBook, String> {
        let mut list = load(data_dir)?;
        let fixed_ids = fixed.iter().map(|p| p.id).collect();
        for p in fixed {
            if list.iter().any(|q| q.id == p.id) {
                return Err(format!("peer {} is both in the config and in the peers file", p.id));
            }
            list.push(p);
        }
        let mut invites = Invites::load(data_dir)?;
        let pinned = Arc::new(PeerSet::new(list.iter().map(|p| p.id)));
        pinned.admit_strangers(invites.prune(unix_now()));
        let exposure = per_account(&list).into();
        Ok(PeerBook {
            data_dir: data_dir.to_path_buf(),
            fixed: fixed_ids,
            state: Mutex::new(BookState { list: Arc::new(list), revoked: load_revoked(data_dir)?, invites }),
            pinned,
            exposure,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BookState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The peers now.
    pub fn list(&self) -> Arc<Vec<Peer>> {
        self.state().list.clone()
    }

    /// One peer, if pinned.
    pub fn get(&self, id: &NodeId) -> Option<Peer> {
        self.state().list.iter().find(|p| p.id == *id).cloned()
    }

    /// The peers of each account as exposure after k peers counts them,
    /// changed with the list.
    pub fn exposure_peers(&self) -> starling_store::PinnedPeers {
        self.exposure.clone()
    }

    /// The set the handshake checks.
    pub fn pinned(&self) -> Arc<PeerSet> {
        self.pinned.clone()
    }

    /// Whether `id` was removed.
    pub fn is_revoked(&self, id: &NodeId) -> bool {
        self.state().revoked.contains(id)
    }

    /// Writes the list down and tells exposure (every change of the list
    /// goes through here, before it is taken).
    fn save_list(&self, list: &[Peer]) -> Result<(), String> {
        let own: Vec<Peer> = list.iter().filter(|p| !self.fixed.contains(&p.id)).cloned().collect();
        save(&self.data_dir, &own)?;
        self.exposure.set(per_account(list));
        Ok(())
    }

    /// Pins `peer` (or, if it is pinned already and `merge`, adds its
    /// accounts and takes its address); lifts a revocation. Returns the
    /// peer as pinned now.
    pub fn pin(&self, peer: Peer, merge: bool) -> Result<Peer, String> {
        for a in &peer.accounts {
            check_account(a)?;
        }
        if self.fixed.contains(&peer.id) {
            return Err(format!("peer {} is pinned in the config file; change it there", peer.id));
        }
        let mut st = self.state();
        let mut list = (*st.list).clone();
        if list.len() >= PEERS_MAX && !list.iter().any(|p| p.id == peer.id) {
            return Err(format!("{PEERS_MAX} peers are pinned already; remove one first"));
        }
        let now = match list.iter_mut().find(|p| p.id == peer.id) {
            Some(_) if !merge => return Err(format!("peer {} is already pinned", peer.id)),
            Some(p) => {
                p.addr = peer.addr;
                for a in peer.accounts {
                    if !p.accounts.contains(&a) {
                        p.accounts.push(a);
                    }
                }
                p.clone()
            }
            None => {
                list.push(peer.clone());
                peer
            }
        };
        self.save_list(&list)?;
        if st.revoked.remove(&now.id) {
            save_revoked(&self.data_dir, &st.revoked)?;
        }
        st.list = Arc::new(list);
        self.pinned.insert(now.id);
        Ok(now)
    }

    /// Removes `id` and refuses it from now on (its connections must be
    /// closed by the caller).
    pub fn revoke(&self, id: &NodeId) -> Result<(), String> {
        if self.fixed.contains(id) {
            return Err(format!("peer {id} is pinned in the config file; remove it there"));
        }
        let mut st = self.state();
        if !st.list.iter().any(|p| p.id == *id) {
            return Err(format!("peer {id} is not pinned"));
        }
        let list: Vec<Peer> = st.list.iter().filter(|p| p.id != *id).cloned().collect();
        self.pinned.remove(id);
        st.revoked.insert(*id);
        save_revoked(&self.data_dir, &st.revoked)?;
        self.save_list(&list)?;
        st.list = Arc::new(list);
        Ok(())
    }

    /// Node ids removed here (in id order, at most `max`).
    pub fn revoked(&self, max: usize) -> Vec<NodeId> {
        self.state().revoked.iter().take(max).copied().collect()
    }

    /// A removal of `id` passed on by a peer trusted for `accounts`: those
    /// accounts are no longer synced with `id`; with none left, `id` is
    /// removed and refused as by [`PeerBook::revoke`]. True if it was
    /// removed by this call.
    /// A node not pinned here is marked removed (so no peer introduces it
    /// later); true if it was not yet.
    pub fn revoke_for(&self, id: &NodeId, accounts: &[String]) -> Result<bool, String> {
        let Some(p) = self.get(id) else {
            let mut st = self.state();
            if !st.revoked.insert(*id) {
                return Ok(false);
            }
            save_revoked(&self.data_dir, &st.revoked)?;
            return Ok(true);
        };
        if self.fixed.contains(id) {
            return Ok(false);
        }
        let left: Vec<String> = p.accounts.iter().filter(|a| !accounts.contains(a)).cloned().collect();
        if left.is_empty() {
            self.revoke(id)?;
            return Ok(true);
        }
        if left.len() < p.accounts.len() {
            let mut st = self.state();
            let list: Vec<Peer> = st
                .list
                .iter()
                .map(|q| if q.id == *id { Peer { accounts: left.clone(), ..q.clone() } } else { q.clone() })
                .collect();
            self.save_list(&list)?;
            st.list = Arc::new(list);
        }
        Ok(false)
    }

    /// `account` is no longer synced with `only`, or with any peer if
    /// `None` (this node let go of it by placement, or the peer did). A
    /// peer left with no account stays pinned (gossip, and accounts placed
    /// later). Returns the peers changed.
    pub fn drop_account(&self, account: &str, only: Option<&NodeId>) -> Result<Vec<NodeId>, String> {
        let mut st = self.state();
        let mut changed = Vec::new();
        let list: Vec<Peer> = st
            .list
            .iter()
            .map(|p| {
                let mut p = p.clone();
                let chosen = only.is_none_or(|o| *o == p.id);
                if chosen && !self.fixed.contains(&p.id) && p.accounts.iter().any(|a| a == account) {
                    p.accounts.retain(|a| a != account);
                    changed.push(p.id);
                }
                p
            })
            .collect();
        if !changed.is_empty() {
            self.save_list(&list)?;
            st.list = Arc::new(list);
        }
        Ok(changed)
    }

    /// Opens an invitation for `accounts`; returns its secret and expiry.
    pub fn invite(&self, accounts: &[String], ttl_secs: u64) -> Result<([u8; 16], u64), String> {
        let now = unix_now();
        let mut st = self.state();
        let secret = st.invites.create(accounts, ttl_secs, now)?;
        self.pinned.admit_strangers(true);
        Ok((secret, now + ttl_secs))
    }

    /// Takes the invitation of `secret` for node `id`: its accounts.
    pub fn redeem(&self, id: &NodeId, secret: &[u8; 16]) -> Result<Vec<String>, Refusal> {
        let now = unix_now();
        let mut st = self.state();
        if st.revoked.contains(id) {
            return Err(Refusal::Revoked);
        }
        let out = st.invites.redeem(secret, now);
        self.pinned.admit_strangers(st.invites.prune(now));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: usize) -> Peer {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        Peer {
            id: NodeId(id),
            addr: "127.0.0.1:7431".parse().unwrap(),
            accounts: vec!["alice".into()],
            policy: BodyPolicy::full(),
        }
    }

    #[test]
    fn pinned_peers_are_bounded_and_a_removal_makes_room() {
        let dir = tempfile::tempdir().unwrap();
        let book = PeerBook::open(dir.path(), Vec::new()).unwrap();
        for i in 0..PEERS_MAX {
            book.pin(peer(i), false).unwrap();
        }
        assert!(book.pin(peer(PEERS_MAX), false).unwrap_err().contains("pinned already"));
        // One already pinned may still be pinned again with more.
        assert!(book.pin(peer(0), true).is_ok());
        book.revoke(&peer(1).id).unwrap();
        assert!(book.pin(peer(PEERS_MAX), false).is_ok());
        assert_eq!(load(dir.path()).unwrap().len(), PEERS_MAX, "on disk too");
        assert!(book.is_revoked(&peer(1).id));
        assert!(PeerBook::open(dir.path(), Vec::new()).unwrap().is_revoked(&peer(1).id), "the removal is kept");
    }

    #[test]
    fn exposure_counts_the_peers_pinned_now_not_those_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let book = PeerBook::open(dir.path(), Vec::new()).unwrap();
        let exposure = book.exposure_peers();
        let policy = starling_store::ExposurePolicy { peers: 1, pinned: book.exposure_peers(), ..Default::default() };
        assert!(exposure.of("alice").is_empty());
        book.pin(peer(1), false).unwrap();
        assert_eq!(policy.pinned.of("alice"), vec![peer(1).id.replica()], "a peer pinned while running counts");
        book.drop_account("alice", Some(&peer(1).id)).unwrap();
        assert!(policy.pinned.of("alice").is_empty(), "a peer that let go no longer counts");
        book.pin(peer(2), false).unwrap();
        book.revoke(&peer(2).id).unwrap();
        assert!(exposure.of("alice").is_empty(), "nor a removed one");
    }

    #[test]
    fn an_account_that_left_is_dropped_from_every_line_and_the_peers_stay() {
        let dir = tempfile::tempdir().unwrap();
        let book = PeerBook::open(dir.path(), Vec::new()).unwrap();
        let mut two = peer(2);
        two.accounts.push("bob".into());
        book.pin(peer(1), false).unwrap();
        book.pin(two, false).unwrap();
        assert!(book.drop_account("bob", Some(&peer(1).id)).unwrap().is_empty(), "1 does not sync bob");
        assert_eq!(book.drop_account("alice", None).unwrap(), vec![peer(1).id, peer(2).id]);
        let again = load(dir.path()).unwrap();
        assert_eq!(again.len(), 2, "both still pinned");
        assert!(again[0].accounts.is_empty(), "written as `-` and read back as none");
        assert_eq!(again[1].accounts, vec!["bob".to_string()]);
        assert!(book.drop_account("alice", None).unwrap().is_empty());
        assert_eq!(book.drop_account("bob", Some(&peer(2).id)).unwrap(), vec![peer(2).id]);
        assert!(load(dir.path()).unwrap()[1].accounts.is_empty());
        assert!(parse_line(1, &format!("{} 127.0.0.1:1 ", peer(3).id)).is_err(), "no accounts field");
    }
}
