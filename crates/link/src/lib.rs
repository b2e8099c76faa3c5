//! One peer connection bound to this node's store: a [`PeerLink`] feeds the
//! peer's frames to a `starling-sync` [`Session`] and answers every event the
//! session raises by reading or writing the [`Store`] (ops out, ops in
//! through [`Store::write`], snapshots, bodies), so that the node, the
//! benchmarks and the simulator run one driver, not three.
//!
//! It must not open sockets, spawn tasks or read a clock: the caller moves
//! the frames ([`PeerLink::poll_transmit`], [`PeerLink::poll_transmit_blob`])
//! and passes the time ([`PeerLink::handle_timeout`]); the session's own
//! timers decide when to retry missing bodies.

#![deny(missing_docs)]

use starling_model::{BlobId, OpBody, ReplicaId};
use starling_store::{Store, StoreError};
use starling_sync::{BodyPolicy, Event, Session, SessionError, Shipped};
use std::collections::BTreeSet;
use std::time::Instant;

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The peer broke the protocol (the session queued a `Refused` frame:
    /// send it, then drop the connection).
    #[error(transparent)]
    Protocol(#[from] SessionError),
    /// The session must start over (reconnect); nothing is wrong with
    /// either side. The session queued a `Refused` frame for the peer.
    #[error("session restarts: {0}")]
    Restart(String),
    /// This node's store failed; nothing of the failed batch was kept.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// What a call changed in the store.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Accounts that committed ops or a snapshot from this peer: the caller
    /// tells its other links ([`PeerLink::local_changed`]) so changes relay.
    pub committed: Vec<String>,
    /// Bodies stored.
    pub bodies: usize,
    /// Their ids: the caller tells its other links
    /// ([`PeerLink::bodies_here`]), whose peers may have asked for them.
    pub stored: Vec<BlobId>,
    /// New messages arrived (appends, copies or a snapshot): the set of
    /// missing bodies may have grown.
    pub new_messages: bool,
    /// The peer lacked a body asked of it: the caller tells its other links
    /// ([`PeerLink::arm_retry`]), since a body one peer lacks is asked of
    /// every peer.
    pub bodies_lacking: bool,
    /// A body read here was damaged: the caller has every link sweep for
    /// missing bodies, which fetches a good copy.
    pub bodies_damaged: bool,
    /// Accounts the peer said it deleted and purged (its `Deleted`).
    pub peer_purged: Vec<String>,
    /// Snapshots installed: (into a replica that had applied nothing, into
    /// one that had: a state merge).
    pub snapshots: (usize, usize),
    /// Snapshots this side sends that go on from where the peer holds them
    /// (a transfer that broke off, resumed).
    pub snapshots_resumed: usize,
}

impl Progress {
    /// Both progresses as one (the later one's accounts after the earlier's).
    pub fn merge(mut self, later: Progress) -> Progress {
        for a in later.committed {
            self.note(a);
        }
        self.bodies += later.bodies;
        self.stored.extend(later.stored);
        self.new_messages |= later.new_messages;
        self.bodies_lacking |= later.bodies_lacking;
        self.bodies_damaged |= later.bodies_damaged;
        self.peer_purged.extend(later.peer_purged);
        self.snapshots = (self.snapshots.0 + later.snapshots.0, self.snapshots.1 + later.snapshots.1);
        self.snapshots_resumed += later.snapshots_resumed;
        self
    }

    fn note(&mut self, account: String) {
        if !self.committed.contains(&account) {
            self.committed.push(account);
        }
    }
}

/// One peer session driven against the store.
#[derive(Debug)]
pub struct PeerLink {
    session: Session,
    /// Bodies this node fetches from this peer as soon as their messages arrive.
    policy: BodyPolicy,
    accounts: Vec<String>,
    /// The session asked for a sweep of missing bodies (run after storing
    /// the bodies that arrived with it).
    sweep: bool,
    /// The peer's acknowledgements last told to the store, per account.
    noted: std::collections::BTreeMap<String, starling_model::VersionVector>,
    /// The store counts the peer connected while the link lives.
    _up: Option<starling_store::LinkUp>,
    /// Probe answers last told to the store, per account.
    answered: std::collections::BTreeMap<String, u64>,
    /// Where the next page of each account's missing bodies starts
    /// ([`WANT_PAGE`]); none: at the first.
    cursors: std::collections::BTreeMap<String, BlobId>,
    /// Missing bodies read from the store per account at a time.
    want_page: usize,
    /// Accounts authorized for the peer that this node deleted and purged.
    purged: Vec<String>,
    /// Snapshots being sent, per account: read a part at a time as the
    /// peer takes them. The store keeps each until the peer took it whole,
    /// for a later session to resume ([`Store::snapshot_to_send`]).
    outgoing: std::collections::BTreeMap<String, std::sync::Arc<starling_store::SnapshotCopy>>,
    /// What the peer said it holds of our snapshots, per account (id,
    /// length, bytes held).
    held: std::collections::BTreeMap<String, (u64, u64, u64)>,
    /// See [`PeerLink::offered`].
    offered: Vec<(String, u64, u64)>,
    /// See [`PeerLink::installed`].
    installed: Vec<(String, bool)>,
}

/// Installs the snapshot spooled whole from `spool`: whether the account
/// was empty before, or `None` if the snapshot lacks changes held here (it
/// is dropped, [`Store::install_spooled_snapshot`]).
fn install_spool(store: &Store, account: &str, spool: u64) -> Result<Option<bool>, StoreError> {
    let fresh = store.version(account)?.is_empty();
    match store.install_spooled_snapshot(account, spool) {
        Ok(()) => Ok(Some(fresh)),
        Err(StoreError::SnapshotOlder) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Missing bodies read from the store per account at a time: a link holds
/// at most this many of an account's missing list, plus the window of
/// bodies in flight, whatever the account's size (the session asks for the
/// next page once its queue has drained). Each page of a partial replica
/// scans the account's messages, so it is not small.
pub const WANT_PAGE: usize = 16_384;

impl PeerLink {
    /// A link as node `me` to `peer` (if pinned), sharing `accounts` (those
    /// the peer is authorized for; ones this store lacks are left out).
    pub fn new(
        store: &Store,
        me: ReplicaId,
        peer: Option<ReplicaId>,
        accounts: &[String],
        policy: BodyPolicy,
    ) -> Result<PeerLink, LinkError> {
        let existing = store.accounts();
        let (accounts, gone): (Vec<String>, Vec<String>) = accounts.iter().cloned().partition(|a| existing.contains(a));
        // A snapshot from this peer spooled whole, whose install did not
        // finish (the node stopped or was killed during it): installed now,
        // before this node says what it holds, so that the peer does not
        // send it again. One that lacks changes held here is dropped (the
        // peer's ops or its next snapshot bring them, as for a last part).
        let mut installed = Vec::new();
        if let Some(p) = peer {
            for a in &accounts {
                let Some((_, total, got)) = store.spool_held(a, p.0)? else { continue };
                if got < total {
                    continue;
                }
                if let Some(fresh) = install_spool(store, a, p.0)? {
                    installed.push((a.clone(), fresh));
                }
            }
        }
        let mut versions = Vec::with_capacity(accounts.len());
        for a in &accounts {
            versions.push((a.clone(), store.version(a)?));
        }
        let mut session = Session::new(me, peer, versions);
        // Part of a snapshot from this peer, kept from a session that broke
        // off: offered, so that the peer sends the rest.
        let mut offered = Vec::new();
        if let Some(p) = peer {
            for a in &accounts {
                if let Some((id, total, got)) = store.spool_held(a, p.0)? {
                    session.offer_snapshot(a, id, total, got);
                    offered.push((a.clone(), got, total));
                }
            }
        }
        // Accounts deleted and purged here: a peer still naming one is told.
        let mut purged = Vec::new();
        for a in gone {
            if store.was_purged(&a)? {
                purged.push(a);
            }
        }
        session.purged(purged.iter().cloned());
        Ok(PeerLink {
            session,
            purged,
            policy,
            accounts,
            sweep: false,
            noted: Default::default(),
            _up: peer.map(|p| store.link_up(p)),
            answered: Default::default(),
            cursors: Default::default(),
            want_page: WANT_PAGE,
            outgoing: Default::default(),
            held: Default::default(),
            offered,
            installed,
        })
    }

    /// Parts of the peer's snapshots this node held when the link began and
    /// offered it, so that it sends the rest: (account, bytes held, length).
    pub fn offered(&self) -> &[(String, u64, u64)] {
        &self.offered
    }

    /// Snapshots from the peer that this node held whole when the link
    /// began (spooled, their install cut off) and installed then:
    /// (account, whether it was empty before). The store's commit told
    /// the sessions; opening asks for the bodies they name.
    pub fn installed(&self) -> &[(String, bool)] {
        &self.installed
    }

    /// Reads `page` missing bodies at a time instead of [`WANT_PAGE`] (at
    /// least one).
    pub fn set_want_page(&mut self, page: usize) {
        self.want_page = page.max(1);
    }

    /// Sends snapshots in parts of `bytes` ([`Session::set_snapshot_part`]).
    pub fn set_snapshot_part(&mut self, bytes: usize) {
        self.session.set_snapshot_part(bytes);
    }

    /// The protocol state (bytes counted, peer id, acknowledgements).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Accounts this link shares (authorized and present here).
    pub fn accounts(&self) -> &[String] {
        &self.accounts
    }

    /// Accounts authorized for the peer that this node deleted and purged:
    /// the peer is told if it names one.
    pub fn purged(&self) -> &[String] {
        &self.purged
    }

    /// Whether the session ended.
    pub fn is_closed(&self) -> bool {
        self.session.is_closed()
    }

    /// Handles one frame from the peer and answers what it asks.
    pub fn handle_frame(&mut self, store: &Store, frame: &[u8]) -> Result<Progress, LinkError> {
        self.handle_frames(store, std::slice::from_ref(&frame))
    }

    /// Handles frames that arrived together, then answers them at once:
    /// bodies among them are stored in one transaction (one fsync).
    pub fn handle_frames(&mut self, store: &Store, frames: &[impl AsRef<[u8]>]) -> Result<Progress, LinkError> {
        self.handle_frames_sending_first(store, frames, |_| {})
    }

    /// [`PeerLink::handle_frames`], calling `send` once the session has
    /// taken the frames and before the store is touched: the requests for
    /// the next bodies, which the arrived ones made room for in the window,
    /// leave while those are written and committed, so the peer is not idle
    /// for every commit (a round trip and a commit per window of bodies).
    pub fn handle_frames_sending_first(
        &mut self,
        store: &Store,
        frames: &[impl AsRef<[u8]>],
        send: impl FnOnce(&mut Session),
    ) -> Result<Progress, LinkError> {
        let bad = frames.iter().find_map(|f| self.session.handle_frame(f.as_ref()).err());
        send(&mut self.session);
        // What came before a bad frame is still answered.
        let progress = self.answer(store)?;
        match bad {
            Some(e) => Err(e.into()),
            None => Ok(progress),
        }
    }

    /// This node committed changes to `account` (locally or from another
    /// peer): pushes what this peer lacks.
    pub fn local_changed(&mut self, store: &Store, account: &str) -> Result<Progress, LinkError> {
        if self.accounts.iter().any(|a| a == account) {
            self.session.local_changed(account, store.version(account)?);
        }
        self.answer(store)
    }

    /// Asks the peer for every body this node lacks and its policy wants,
    /// except those already asked of it; returns whether any is missing.
    /// The session calls for it ([`Event::RetryBodies`]) on its retry timer.
    pub fn retry_bodies(&mut self, store: &Store) -> Result<bool, LinkError> {
        Ok(self.want_all(store, false)? > 0)
    }

    /// Asks the peer for the next page of `account`'s missing bodies that
    /// the policy fetches eagerly (the first page if `from_start`); how
    /// many ids were new to the session.
    fn want_missing(&mut self, store: &Store, account: &str, from_start: bool) -> Result<usize, LinkError> {
        if from_start {
            self.cursors.remove(account);
        }
        let after = self.cursors.get(account).copied();
        let page = if self.policy == BodyPolicy::full() {
            store.missing_page(account, after, self.want_page)?
        } else {
            let policy = self.policy.resolved(&store.read(account)?.names().tree);
            store.missing_page_where(account, after, self.want_page, |m| {
                policy.wants_body(m.mailbox.as_deref(), m.uid, m.size, m.internal_date)
            })?
        };
        match page.bodies.last() {
            Some(&(last, _)) if page.more => {
                self.cursors.insert(account.to_string(), last);
                self.session.more_to_want();
            }
            // The end: the next sweep starts again at the first (bodies the
            // peer lacked, or that arrived since).
            _ => {
                self.cursors.remove(account);
            }
        }
        Ok(self.session.want_blobs(page.bodies))
    }

    /// [`PeerLink::want_missing`] of every account, and the bodies found
    /// damaged here (a read did not hash to the id) that belong to an
    /// account of this link: a good copy replaces the damaged one
    /// (self-healing).
    fn want_all(&mut self, store: &Store, from_start: bool) -> Result<usize, LinkError> {
        let mut added = 0;
        for a in self.accounts.clone() {
            added += self.want_missing(store, &a, from_start)?;
        }
        let mut damaged = Vec::new();
        for id in store.corrupt_blobs() {
            if store.blob_accounts(id)?.iter().any(|a| self.accounts.contains(a)) {
                damaged.push((id, 0));
            }
        }
        Ok(added + self.session.want_blobs(damaged))
    }

    /// Bodies just stored here (by another link): if this link's peer was
    /// told this node lacked any of them, it is told they came.
    pub fn bodies_here(&mut self, ids: &[BlobId]) {
        self.session.bodies_here(ids);
    }

    /// Another link's peer lacked a body: sweep for missing bodies on this
    /// link's retry timer too, counted from `now`.
    pub fn arm_retry(&mut self, now: Instant) {
        self.session.arm_retry(now);
    }

    /// Asks the peer for bodies a client needs now (on-demand fetch), with
    /// the sizes their messages declare.
    pub fn fetch_bodies(&mut self, ids: impl IntoIterator<Item = (BlobId, u64)>) {
        let _ = self.session.want_blobs(ids);
    }

    /// Sends the probes the store's catch-up waits want
    /// ([`Store::probe_wanted`]); call it when [`Store::probes`] changes.
    pub fn probe_due(&mut self, store: &Store) {
        send_probes(&mut self.session, store, &self.accounts);
    }

    /// When [`PeerLink::handle_timeout`] is due next, if a timer is set.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.session.poll_timeout()
    }

    /// Passes the driver's clock to the session (call it whenever the
    /// driver wakes, at least at [`PeerLink::poll_timeout`]) and answers
    /// what its timers set off.
    pub fn handle_timeout(&mut self, store: &Store, now: Instant) -> Result<Progress, LinkError> {
        self.session.handle_timeout(now);
        self.answer(store)
    }

    /// Answers what the session asks after the caller took frames: bodies
    /// the peer wants are read only as body frames leave.
    pub fn pump(&mut self, store: &Store) -> Result<Progress, LinkError> {
        self.answer(store)
    }

    /// Whether [`PeerLink::pump`] has work now (bodies to read once frames
    /// were taken).
    pub fn has_work(&self) -> bool {
        self.session.has_work()
    }

    /// Whether a body frame waits ([`PeerLink::poll_transmit_blob`]).
    pub fn has_blob_to_send(&self) -> bool {
        self.session.has_blob_to_send()
    }

    /// Next metadata frame to send, in order, on the link's stream.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.session.poll_transmit()
    }

    /// Next body frame, for a stream of its own.
    #[must_use]
    pub fn poll_transmit_blob(&mut self) -> Option<Vec<u8>> {
        self.session.poll_transmit_blob()
    }

    /// Answers every pending session event against the store.
    fn answer(&mut self, store: &Store) -> Result<Progress, LinkError> {
        let mut progress = Progress::default();
        // Bodies that arrived together are stored in one transaction.
        let mut bodies = Vec::new();
        let result = self.answer_events(store, &mut progress, &mut bodies);
        if !bodies.is_empty() {
            let n = bodies.len();
            let accounts: Vec<&str> = self.accounts.iter().map(String::as_str).collect();
            let ids: Vec<BlobId> = bodies.iter().map(|(id, _)| *id).collect();
            match store.put_shipped(&accounts, bodies) {
                Ok(()) => {
                    progress.bodies += n;
                    // Committed: the peer may count this node as holding them.
                    self.session.held(&ids);
                    progress.stored.extend_from_slice(&ids);
                }
                Err(StoreError::BadBody { blob, reason }) => {
                    return Err(self.session.malformed(format!("body {blob:?}: {reason}")).into())
                }
                Err(e) => return Err(e.into()),
            }
        }
        result?;
        self.note_acks(store);
        // A sweep runs once the bodies that came with it are stored, so it
        // does not ask for them again.
        if std::mem::take(&mut self.sweep) {
            let asked = self.retry_bodies(store)?;
            self.session.bodies_swept(asked);
            self.answer_events(store, &mut progress, &mut Vec::new())?;
        }
        Ok(progress)
    }

    /// Tells the store what the peer acknowledged since last time (what
    /// compaction and body collection wait for).
    fn note_acks(&mut self, store: &Store) {
        let Some(peer) = self.session.peer() else { return };
        for a in &self.accounts {
            if let Some(vv) = self.session.peer_has(a) {
                if self.noted.get(a) != Some(vv) {
                    store.note_ack(a, peer, vv);
                    self.noted.insert(a.clone(), vv.clone());
                }
            }
            let probe = self.session.probe_answered(a);
            if probe > 0 && self.answered.get(a) != Some(&probe) {
                store.note_probe_answer(a, peer, probe);
                self.answered.insert(a.clone(), probe);
            }
        }
    }

    fn answer_events(
        &mut self,
        store: &Store,
        progress: &mut Progress,
        bodies: &mut Vec<(BlobId, starling_store::Shipped)>,
    ) -> Result<(), LinkError> {
        loop {
            let mut events = Vec::new();
            while let Some(ev) = self.session.poll_event() {
                events.push(ev);
            }
            if events.is_empty() {
                return Ok(());
            }
            let mut events = events.into_iter().peekable();
            while let Some(ev) = events.next() {
                match ev {
                    Event::Ops { account, mut ops } => {
                        // Chunks of one account that arrived together commit together.
                        while let Some(Event::Ops { account: next, .. }) = events.peek() {
                            if *next != account {
                                break;
                            }
                            let Some(Event::Ops { ops: more, .. }) = events.next() else { unreachable!() };
                            ops.extend(more);
                        }
                        self.apply_ops(store, progress, account, ops)?;
                    }
                    ev => self.answer_event(store, progress, bodies, ev)?,
                }
            }
        }
    }

    /// Applies ops from the peer in one commit, asks for the bodies they
    /// bring, and acknowledges.
    fn apply_ops(
        &mut self,
        store: &Store,
        progress: &mut Progress,
        account: String,
        ops: Vec<starling_model::Op>,
    ) -> Result<(), LinkError> {
        store.write(&account, |b| b.apply(ops.iter().cloned()))?;
        // Bodies follow the metadata, as far as the policy says. A mailbox
        // renamed into a wanted one may bring any of its bodies: the
        // account's missing bodies are judged again (a scan of its
        // messages). A message moved into one brings its own: judged alone.
        let renamed = ops.iter().any(|o| matches!(o.body, OpBody::Account { .. }));
        if renamed && self.policy != BodyPolicy::full() {
            self.want_missing(store, &account, true)?;
        } else {
            let reader = store.read(&account)?;
            let tree = &reader.names().tree;
            let mut missing = Vec::new();
            for (id, size) in self.policy.eager_blobs(&ops, tree) {
                if store.lacks(&account, id)? {
                    missing.push((id, size));
                }
            }
            if self.policy != BodyPolicy::full() {
                let policy = self.policy.resolved(tree);
                let moved: BTreeSet<_> = ops
                    .iter()
                    .filter_map(|o| match o.body {
                        OpBody::Move { message, .. } => Some(message),
                        _ => None,
                    })
                    .collect();
                for m in moved {
                    let (Some(e), Some((mailbox, uid))) = (reader.envelope(m)?, reader.location(m)?) else {
                        continue; // expunged since
                    };
                    if policy.wants_body(tree.name_of(mailbox), uid, e.size, e.internal_date)
                        && store.lacks(&account, e.blob)?
                    {
                        missing.push((e.blob, e.size));
                    }
                }
            }
            let _ = self.session.want_blobs(missing);
        }
        let s = &mut self.session;
        s.applied(&account, store.version(&account)?);
        // Bodies these ops name that this node holds already (the same
        // message delivered to both, a copy): held, as if sent.
        let named = starling_sync::blobs_of(&ops);
        if !named.is_empty() {
            s.held(&store.holding(&account, &named)?);
        }
        progress.new_messages |= !named.is_empty();
        progress.note(account);
        Ok(())
    }

    fn answer_event(
        &mut self,
        store: &Store,
        progress: &mut Progress,
        bodies: &mut Vec<(BlobId, starling_store::Shipped)>,
        ev: Event,
    ) -> Result<(), LinkError> {
        let s = &mut self.session;
        match ev {
            Event::NeedOps { account, since, ops_max, bytes_max } => {
                match store.ops_chunk(&account, &since, ops_max, bytes_max) {
                    Ok(ops) => s.send_ops(&account, &ops),
                    // Behind our floor, or a gap in our log (damage): the
                    // peer catches up from our state instead.
                    Err(StoreError::Compacted | StoreError::LogGap { .. }) => {
                        let peer = s.peer().map_or(0, |p| p.0);
                        let out = store.snapshot_to_send(&account, peer, self.held.remove(&account))?;
                        s.send_snapshot(&account, out.id, out.copy.len(), out.copy.covers(), out.from);
                        progress.snapshots_resumed += usize::from(out.from > 0);
                        self.outgoing.insert(account, out.copy);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Event::Ops { account, ops } => self.apply_ops(store, progress, account, ops)?,
            Event::SnapshotRead { account, offset, len } => {
                let copy = self.outgoing.get(&account).expect("the session reads only a snapshot it was given");
                let part = copy.read_at(offset, len)?;
                if offset + len as u64 == copy.len() {
                    self.outgoing.remove(&account);
                }
                s.send_snapshot_part(&account, offset, part);
            }
            Event::SnapshotHeld { account, id, total, got } => {
                self.held.insert(account, (id, total, got));
            }
            Event::SnapshotSent { account } => store.snapshot_sent(&account, s.peer().map_or(0, |p| p.0)),
            Event::SnapshotPart { account, id, total, offset, bytes, last } => {
                // Parts wait in the store's file, not here, until the last.
                let spool = s.peer().map_or(0, |p| p.0);
                store.spool_snapshot_part(&account, spool, (id, total), offset, &bytes)?;
                s.snapshot_taken(&account, offset + bytes.len() as u64);
                if !last {
                    return Ok(());
                }
                // A snapshot that lacks changes this node holds (its own,
                // made before it caught up, or others' the peer has not
                // got yet) is refused. Those changes go to the peer in this
                // session (our log holds them); the session restarts, and
                // the peer's next snapshot, or its ops if we are now above
                // its floor, carries them. (Two peers may both find a new
                // node behind their logs; the second snapshot then holds
                // nothing new and installs as a no-op, or is refused.)
                let Some(fresh) = install_spool(store, &account, spool)? else {
                    let why = "a snapshot that lacks changes held here; reconnect once the peer has them";
                    s.abort(why);
                    return Err(LinkError::Restart(why.into()));
                };
                if fresh {
                    progress.snapshots.0 += 1;
                } else {
                    progress.snapshots.1 += 1;
                }
                self.want_missing(store, &account, true)?;
                self.session.applied(&account, store.version(&account)?);
                progress.new_messages = true;
                progress.note(account);
            }
            Event::BlobsWanted { ids } => {
                // Only bodies of the accounts this peer is pinned for; any
                // other id is answered as absent, so nothing leaks (not even
                // whether this node holds it).
                let accounts: Vec<&str> = self.accounts.iter().map(String::as_str).collect();
                let mut ids = ids.into_iter();
                while let Some(id) = ids.next() {
                    if !s.may_send_blob() {
                        s.unread_blobs(std::iter::once(id).chain(ids).collect());
                        break;
                    }
                    match store.shipped_for(&accounts, id) {
                        Ok(body) => s.send_blob(id, body.map(to_wire)),
                        // Damaged here: answered as absent (the peer asks
                        // another), and this node fetches a good copy too.
                        Err(e) if e.is_damage() => {
                            s.send_blob(id, None);
                            progress.bodies_damaged = true;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Event::Blob { id, body } => bodies.push((id, from_wire(body))),
            Event::BlobMissing { .. } => progress.bodies_lacking = true,
            Event::Probed { account, probe } => s.answer_probe(&account, store.version(&account)?, probe),
            Event::Held { ids } => {
                if let Some(peer) = s.peer() {
                    store.note_held(peer, &ids);
                }
            }
            Event::RetryBodies => self.sweep = true,
            // The peer deleted the account and purged it: the deletion is
            // taken here (an op the other links push on) and the peer
            // counts as holding it.
            Event::Deleted { account } => {
                if let Some(peer) = s.peer() {
                    if store.peer_purged(&account, peer)? {
                        progress.note(account.clone());
                    }
                    progress.peer_purged.push(account);
                }
            }
            // A new connection: bodies asked on an earlier one that broke
            // before they came are asked again.
            Event::Open { .. } => {
                self.want_all(store, true)?;
                // A catch-up wait that began before the link opened.
                send_probes(&mut self.session, store, &self.accounts);
            }
            Event::Closed { .. } => {}
        }
        Ok(())
    }
}

/// Sends each account's probe the store's catch-up waits want (a session
/// sends a given probe once).
fn send_probes(session: &mut Session, store: &Store, accounts: &[String]) {
    for a in accounts {
        session.probe(a, store.probe_wanted(a));
    }
}

/// A body in the protocol's form.
fn to_wire(body: starling_store::Shipped) -> Shipped {
    match body {
        starling_store::Shipped::Raw(b) => Shipped::Raw(b),
        starling_store::Shipped::Packed(b) => Shipped::Packed(b),
    }
}

fn from_wire(body: Shipped) -> starling_store::Shipped {
    match body {
        Shipped::Raw(b) => starling_store::Shipped::Raw(b),
        Shipped::Packed(b) => starling_store::Shipped::Packed(b),
    }
}
