//! The replication protocol between two peers, as a pure state machine: bytes
//! and calls in, bytes and events out. No sockets, no tasks, no clock: the
//! node drives it over QUIC, the simulator over its own queues, with the same
//! code (the split of quinn-proto under quinn).
//!
//! It must not open sockets, spawn tasks or touch the store: where it needs
//! ops or applies them, it asks its driver with an [`Event`].
//!
//! # Protocol
//!
//! Each side sends `Hello` (protocol version, node id, the accounts it will
//! sync with this peer), then for every account both sides share, `Have`
//! (its version vector). A side that has ops the other lacks asks its driver
//! for them ([`Event::NeedOps`]) and sends them as one compressed `Ops` frame
//! ([`starling_model::codec`]); the receiver's driver applies them and the
//! receiver acknowledges with a new `Have`. After a local commit the driver
//! calls [`Session::local_changed`], which pushes the new ops at once (no
//! timer). A peer behind the sender's compacted log gets a `Snapshot`.
//! A no-op exchange is the two `Hello`s and one `Have` per account each way.
//!
//! # Calling contract
//!
//! Feed every received frame to [`Session::handle_frame`]; after any call,
//! drain [`Session::poll_transmit`] (metadata frames, in order, on one
//! stream), [`Session::poll_transmit_blob`] (bodies, on another stream) and
//! [`Session::poll_event`]. An error from `handle_frame` means the peer
//! misbehaved: the session is closed, nothing of the bad frame was acted on,
//! and the connection should be dropped with the logged reason.
//!
//! ```
//! use starling_model::{BlobId, Keyword, Replica, ReplicaId, INBOX};
//! use starling_sync::{Event, Session};
//!
//! // Two replicas of one account, each with a change the other lacks.
//! let (a_id, b_id) = (ReplicaId(1), ReplicaId(2));
//! let mut a = Replica::new(a_id);
//! let mut b = Replica::new(b_id);
//! let m = a.append(INBOX, BlobId::of(b"hi"), 2, 0, vec![]).unwrap();
//! b.append(INBOX, BlobId::of(b"yo"), 2, 0, vec![Keyword::Seen]).unwrap();
//! let mut log_a = a.take_outbox();
//! let mut log_b = b.take_outbox();
//!
//! let acct = "alice".to_string();
//! let mut sa = Session::new(a_id, Some(b_id), [(acct.clone(), a.version().clone())]);
//! let mut sb = Session::new(b_id, Some(a_id), [(acct.clone(), b.version().clone())]);
//!
//! // One side's turn: answer its events, hand its frames to the peer.
//! fn turn(s: &mut Session, peer: &mut Session, r: &mut Replica, log: &mut Vec<starling_model::Op>) -> bool {
//!     let mut busy = false;
//!     while let Some(ev) = s.poll_event() {
//!         busy = true;
//!         match ev {
//!             Event::NeedOps { account, since } => {
//!                 let ops: Vec<_> = log.iter().filter(|o| !since.contains(o.dot)).cloned().collect();
//!                 s.send_ops(&account, &ops);
//!             }
//!             Event::Ops { account, ops } => {
//!                 for op in ops {
//!                     log.push(op.clone());
//!                     r.apply(op).unwrap();
//!                 }
//!                 log.extend(r.take_outbox());
//!                 s.applied(&account, r.version().clone());
//!             }
//!             _ => {}
//!         }
//!     }
//!     while let Some(frame) = s.poll_transmit() {
//!         busy = true;
//!         peer.handle_frame(&frame).unwrap();
//!     }
//!     busy
//! }
//!
//! // The driver loop, until both are quiet.
//! while turn(&mut sa, &mut sb, &mut a, &mut log_a) | turn(&mut sb, &mut sa, &mut b, &mut log_b) {}
//! assert_eq!(a.dump(), b.dump());
//! assert!(b.flags(m).is_ok());
//! ```

#![deny(missing_docs)]

use serde::{Deserialize, Serialize};
use starling_model::{codec, BlobId, Op, OpBody, ReplicaId, VersionVector};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Version of this protocol.
pub const PROTOCOL_VERSION: u16 = 2;
/// Encoding version byte at the front of every frame.
pub const FRAME_VERSION: u8 = 1;
/// Largest frame accepted.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Most accounts one peer may name.
pub const ACCOUNTS_MAX: usize = 4096;
/// Longest account name.
pub const ACCOUNT_NAME_MAX: usize = 255;
/// Largest body accepted (decompressed).
pub const BODY_BYTES_MAX: usize = 256 << 20;
/// Most blob ids in one request.
pub const BLOB_IDS_MAX: usize = 10_000;
/// Most replicas in a version vector from a peer.
pub const VV_ENTRIES_MAX: usize = 65_535;

/// What travels between peers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// First frame each way.
    Hello {
        /// [`PROTOCOL_VERSION`].
        version: u16,
        /// The sender's node id.
        node: ReplicaId,
        /// Accounts it syncs with this peer.
        accounts: Vec<String>,
    },
    /// What the sender has of an account (also the acknowledgement of ops).
    Have {
        /// The account.
        account: String,
        /// Its version vector.
        vv: VersionVector,
    },
    /// Ops the receiver lacks, as a [`codec`] frame.
    Ops {
        /// The account.
        account: String,
        /// Encoded, compressed batch.
        batch: Vec<u8>,
    },
    /// The account's whole state, for a peer behind the compacted log.
    Snapshot {
        /// The account.
        account: String,
        /// As the store exports it.
        bytes: Vec<u8>,
    },
    /// Bodies the sender lacks (ids learned from ops it applied).
    WantBlobs {
        /// At most [`BLOB_IDS_MAX`].
        ids: Vec<BlobId>,
    },
    /// A body, which must hash to `id` (once decompressed).
    Blob {
        /// Its id.
        id: BlobId,
        /// `bytes` are zstd-compressed (mail text shrinks about threefold).
        zstd: bool,
        /// The message, raw or compressed.
        bytes: Vec<u8>,
    },
    /// The sender does not hold that body (partial replica).
    NoBlob {
        /// Its id.
        id: BlobId,
    },
    /// The sender refuses the session; it closes after this.
    Refused {
        /// Why.
        reason: String,
    },
}

impl Frame {
    /// Encodes a frame: version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FRAME_VERSION];
        out.extend(postcard::to_stdvec(self).expect("in-memory encoding"));
        out
    }

    /// Decodes and checks a frame's bounds.
    pub fn decode(bytes: &[u8]) -> Result<Frame, SessionError> {
        if bytes.len() > FRAME_BYTES_MAX {
            return Err(SessionError::Malformed("frame too large".into()));
        }
        let [version, body @ ..] = bytes else { return Err(SessionError::Malformed("empty frame".into())) };
        if *version != FRAME_VERSION {
            return Err(SessionError::Malformed(format!("frame version {version}")));
        }
        let (frame, rest): (Frame, &[u8]) =
            postcard::take_from_bytes(body).map_err(|e| SessionError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(SessionError::Malformed("trailing bytes".into()));
        }
        let name_ok = |a: &String| !a.is_empty() && a.len() <= ACCOUNT_NAME_MAX;
        let ok = match &frame {
            Frame::Hello { accounts, .. } => accounts.len() <= ACCOUNTS_MAX && accounts.iter().all(name_ok),
            Frame::Have { account, vv } => name_ok(account) && vv.len() <= VV_ENTRIES_MAX,
            Frame::Ops { account, .. } | Frame::Snapshot { account, .. } => name_ok(account),
            Frame::WantBlobs { ids } => ids.len() <= BLOB_IDS_MAX,
            Frame::Blob { .. } | Frame::NoBlob { .. } | Frame::Refused { .. } => true,
        };
        if !ok {
            return Err(SessionError::Malformed("frame exceeds limits".into()));
        }
        Ok(frame)
    }
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Bytes that are not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A frame that is valid but not allowed now.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer is not the pinned node.
    #[error("unexpected peer {0:?}")]
    WrongPeer(ReplicaId),
    /// The peer sent something for an account it is not authorized for.
    #[error("peer not authorized for account {0:?}")]
    Unauthorized(String),
    /// Incompatible protocol version.
    #[error("protocol version {0} not supported")]
    Version(u16),
    /// The peer refused us.
    #[error("refused by peer: {0}")]
    Refused(String),
    /// The session is closed.
    #[error("session closed")]
    Closed,
}

/// Which bodies a (partial) replica fetches as soon as their messages arrive.
/// Metadata always flows in full — every op of a shared account — so causal
/// delivery stays exact; the policy only decides which bodies come eagerly.
/// The others are fetched on demand ([`Session::want_blobs`]) when a client
/// asks for them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BodyPolicy {
    /// Only messages in these mailboxes (full names; `None` = all).
    pub mailboxes: Option<Vec<String>>,
    /// Only messages received at or after this time (Unix seconds).
    pub received_since: Option<i64>,
    /// Only bodies of at most this many bytes.
    pub size_max: Option<u64>,
    /// Only messages whose UID is in this inclusive range (`u32::MAX` for
    /// `*`: the newest ones whatever they become).
    pub uids: Option<(u32, u32)>,
}

impl BodyPolicy {
    /// Every body, eagerly (a full replica).
    pub fn full() -> Self {
        Self::default()
    }

    /// Whether the body of a message appended to `mailbox` (its full name,
    /// if known) is fetched eagerly.
    pub fn wants(&self, mailbox: Option<&str>, append: &starling_model::Append) -> bool {
        self.wants_body(mailbox, append.uid, append.size, append.internal_date)
    }

    /// Whether the body of a message of `size` bytes received at
    /// `internal_date`, at `uid` in `mailbox` (its full name, if known; UID 0
    /// if not placed yet, which counts as the newest), is fetched eagerly.
    pub fn wants_body(&self, mailbox: Option<&str>, uid: u32, size: u64, internal_date: i64) -> bool {
        let in_mailboxes = match (&self.mailboxes, mailbox) {
            (None, _) => true,
            (Some(list), Some(name)) => list.iter().any(|m| mailbox_matches(m, name)),
            (Some(_), None) => false,
        };
        let uid = if uid == 0 { u32::MAX } else { uid };
        in_mailboxes
            && self.received_since.is_none_or(|t| internal_date >= t)
            && self.size_max.is_none_or(|m| size <= m)
            && self.uids.is_none_or(|(lo, hi)| (lo..=hi).contains(&uid))
    }

    /// The policy with its special-use entries (`\Sent`, `\Archive`, …)
    /// replaced by the names of the mailboxes that now have that use.
    pub fn resolved(&self, tree: &starling_model::MailboxTree) -> BodyPolicy {
        let Some(list) = &self.mailboxes else { return self.clone() };
        let mut names = Vec::new();
        for m in list {
            match m.strip_prefix('\\') {
                Some(use_) => names.extend(tree.by_name.iter().filter_map(|(name, id)| {
                    let special = tree.entries.get(id)?.special_use?;
                    format!("{special:?}").eq_ignore_ascii_case(use_).then(|| name.clone())
                })),
                None => names.push(m.clone()),
            }
        }
        BodyPolicy { mailboxes: Some(names), ..self.clone() }
    }

    /// Bodies of `ops` this policy fetches eagerly; `tree` names the mailboxes.
    pub fn eager_blobs(&self, ops: &[Op], tree: &starling_model::MailboxTree) -> Vec<BlobId> {
        let mut seen = BTreeSet::new();
        let policy = self.resolved(tree);
        appends(ops)
            .filter(|a| policy.wants(tree.name_of(a.mailbox), a))
            .map(|a| a.blob)
            .filter(|b| seen.insert(*b))
            .collect()
    }
}

/// Whether a policy entry names `mailbox`: a full name (INBOX in any case),
/// or an IMAP LIST pattern where `*` matches anything and `%` anything but
/// the hierarchy delimiter `/`.
pub fn mailbox_matches(pattern: &str, mailbox: &str) -> bool {
    fn glob(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|i| glob(rest, &n[i..])),
            Some((b'%', rest)) => {
                (0..=n.len()).take_while(|i| *i == 0 || n[i - 1] != b'/').any(|i| glob(rest, &n[i..]))
            }
            Some((c, rest)) => n.first() == Some(c) && glob(rest, &n[1..]),
        }
    }
    let inbox = |s: &str| s.eq_ignore_ascii_case("INBOX");
    if inbox(mailbox) {
        // INBOX is case-insensitive; patterns see it as "INBOX".
        return inbox(pattern) || glob(pattern.as_bytes(), b"INBOX");
    }
    glob(pattern.as_bytes(), mailbox.as_bytes())
}

/// Bodies referenced by ops (appends and copies), in order, without repeats.
pub fn blobs_of(ops: &[Op]) -> Vec<BlobId> {
    let mut seen = BTreeSet::new();
    appends(ops).map(|a| a.blob).filter(|b| seen.insert(*b)).collect()
}

/// The new message instances (appends and copies) among `ops`.
fn appends(ops: &[Op]) -> impl Iterator<Item = &starling_model::Append> {
    ops.iter().filter_map(|o| match &o.body {
        OpBody::Append(a) | OpBody::Copy { append: a, .. } => Some(a),
        _ => None,
    })
}

/// What the session asks of its driver, or tells it.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Handshake done with this peer; these accounts are shared.
    Open {
        /// The peer.
        peer: ReplicaId,
        /// Accounts both sides sync.
        accounts: Vec<String>,
    },
    /// Send the peer the ops of `account` not covered by `since`
    /// ([`Session::send_ops`], or [`Session::send_snapshot`] if the log no
    /// longer reaches back that far).
    NeedOps {
        /// The account.
        account: String,
        /// What the peer has or has been sent.
        since: VersionVector,
    },
    /// Ops from the peer: apply them, then call [`Session::applied`].
    Ops {
        /// The account.
        account: String,
        /// The ops, decoded and validated.
        ops: Vec<Op>,
    },
    /// A state snapshot from the peer: install it, then [`Session::applied`].
    Snapshot {
        /// The account.
        account: String,
        /// As the peer's store exported it.
        bytes: Vec<u8>,
    },
    /// The peer wants these bodies: answer each with [`Session::send_blob`].
    BlobsWanted {
        /// Their ids.
        ids: Vec<BlobId>,
    },
    /// A body we asked for, already checked against its id: store it.
    Blob {
        /// Its id.
        id: BlobId,
        /// The raw message.
        bytes: Vec<u8>,
    },
    /// The peer does not have a body we asked for: ask another peer.
    BlobMissing {
        /// Its id.
        id: BlobId,
    },
    /// The session ended.
    Closed {
        /// Why.
        reason: String,
    },
}

#[derive(Clone, Debug, Default)]
struct AccountState {
    /// Ours, as last told by the driver.
    local: VersionVector,
    /// What the peer said it has.
    peer_has: Option<VersionVector>,
    /// What we have sent (peer_has joined with every batch in flight).
    sent: VersionVector,
    /// A NeedOps is out and not yet answered.
    asked: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    Open,
    Closed,
}

/// One peer connection's protocol state.
#[derive(Debug)]
pub struct Session {
    me: ReplicaId,
    pinned: Option<ReplicaId>,
    phase: Phase,
    peer: Option<ReplicaId>,
    /// Accounts we sync with this peer (authorization), with their state.
    accounts: BTreeMap<String, AccountState>,
    /// Accounts shared after the handshake.
    shared: BTreeSet<String>,
    transmit: VecDeque<Vec<u8>>,
    /// `Blob` frames, sent apart so a large body never holds up metadata.
    transmit_blobs: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    /// Bodies asked of the peer and not yet received.
    blobs_wanted: BTreeSet<BlobId>,
    /// Bytes sent and received, for status and benchmarks.
    bytes_out: u64,
    bytes_in: u64,
}

impl Session {
    /// A session as node `me`, expecting peer `pinned` (if known), syncing the
    /// given accounts (those this peer is authorized for) with our version
    /// vector of each. Queues our `Hello`.
    pub fn new(
        me: ReplicaId,
        pinned: Option<ReplicaId>,
        accounts: impl IntoIterator<Item = (String, VersionVector)>,
    ) -> Self {
        let accounts: BTreeMap<String, AccountState> =
            accounts.into_iter().map(|(a, vv)| (a, AccountState { local: vv, ..Default::default() })).collect();
        let mut s = Session {
            me,
            pinned,
            phase: Phase::AwaitHello,
            peer: None,
            accounts,
            shared: BTreeSet::new(),
            transmit: VecDeque::new(),
            transmit_blobs: VecDeque::new(),
            events: VecDeque::new(),
            blobs_wanted: BTreeSet::new(),
            bytes_out: 0,
            bytes_in: 0,
        };
        let hello =
            Frame::Hello { version: PROTOCOL_VERSION, node: me, accounts: s.accounts.keys().cloned().collect() };
        s.queue(&hello);
        s
    }

    fn queue(&mut self, f: &Frame) {
        let bytes = f.encode();
        self.bytes_out += bytes.len() as u64;
        self.transmit.push_back(bytes);
    }

    fn close(&mut self, e: SessionError) -> Result<(), SessionError> {
        if self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            if !matches!(e, SessionError::Refused(_)) {
                self.queue(&Frame::Refused { reason: e.to_string() });
            }
            self.events.push_back(Event::Closed { reason: e.to_string() });
        }
        Err(e)
    }

    /// Ends the session from this side for a reason that is nobody's fault
    /// (the driver must start over): queues `Refused` for the peer.
    pub fn abort(&mut self, reason: &str) {
        let _ = self.close(SessionError::Protocol(reason.to_string()));
    }

    /// The peer's node id, once it said hello.
    pub fn peer(&self) -> Option<ReplicaId> {
        self.peer
    }

    /// Whether the session ended.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Bytes (sent, received) so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes_out, self.bytes_in)
    }

    /// What the peer has acknowledged of an account.
    pub fn peer_has(&self, account: &str) -> Option<&VersionVector> {
        self.accounts.get(account).and_then(|a| a.peer_has.as_ref())
    }

    /// Handles one frame from the peer.
    pub fn handle_frame(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        if self.phase == Phase::Closed {
            return Err(SessionError::Closed);
        }
        self.bytes_in += bytes.len() as u64;
        let frame = match Frame::decode(bytes) {
            Ok(f) => f,
            Err(e) => return self.close(e),
        };
        match (self.phase, frame) {
            (_, Frame::Refused { reason }) => self.close(SessionError::Refused(reason)),
            (Phase::AwaitHello, Frame::Hello { version, node, accounts }) => {
                if version != PROTOCOL_VERSION {
                    return self.close(SessionError::Version(version));
                }
                if self.pinned.is_some_and(|p| p != node) || node == self.me {
                    return self.close(SessionError::WrongPeer(node));
                }
                self.peer = Some(node);
                self.phase = Phase::Open;
                let theirs: BTreeSet<String> = accounts.into_iter().collect();
                self.shared = self.accounts.keys().filter(|a| theirs.contains(*a)).cloned().collect();
                self.events.push_back(Event::Open { peer: node, accounts: self.shared.iter().cloned().collect() });
                for a in self.shared.clone() {
                    let vv = self.accounts[&a].local.clone();
                    self.queue(&Frame::Have { account: a, vv });
                }
                Ok(())
            }
            (Phase::AwaitHello, _) => self.close(SessionError::Protocol("frame before hello".into())),
            (Phase::Open, Frame::Hello { .. }) => self.close(SessionError::Protocol("second hello".into())),
            (Phase::Open, Frame::Have { account, vv }) => {
                if !self.shared.contains(&account) {
                    return self.close(SessionError::Unauthorized(account));
                }
                let st = self.accounts.get_mut(&account).expect("shared account");
                st.sent.join(&vv);
                st.peer_has = Some(vv);
                self.maybe_need(&account);
                Ok(())
            }
            (Phase::Open, Frame::Ops { account, batch }) => {
                if !self.shared.contains(&account) {
                    return self.close(SessionError::Unauthorized(account));
                }
                match codec::decode(&batch) {
                    Ok(ops) => {
                        self.events.push_back(Event::Ops { account, ops });
                        Ok(())
                    }
                    Err(e) => self.close(SessionError::Malformed(e.to_string())),
                }
            }
            (Phase::Open, Frame::Snapshot { account, bytes }) => {
                if !self.shared.contains(&account) {
                    return self.close(SessionError::Unauthorized(account));
                }
                self.events.push_back(Event::Snapshot { account, bytes });
                Ok(())
            }
            (Phase::Open, Frame::WantBlobs { ids }) => {
                self.events.push_back(Event::BlobsWanted { ids });
                Ok(())
            }
            (Phase::Open, Frame::Blob { id, zstd, bytes }) => {
                if !self.blobs_wanted.contains(&id) {
                    return self.close(SessionError::Protocol("a body that was not asked for".into()));
                }
                let bytes = if zstd {
                    match codec::decompress_capped(&bytes, BODY_BYTES_MAX) {
                        Ok(b) => b,
                        Err(e) => return self.close(SessionError::Malformed(format!("body: {e}"))),
                    }
                } else {
                    bytes
                };
                if BlobId::of(&bytes) != id {
                    return self.close(SessionError::Malformed("body does not match its id".into()));
                }
                self.blobs_wanted.remove(&id);
                self.events.push_back(Event::Blob { id, bytes });
                Ok(())
            }
            (Phase::Open, Frame::NoBlob { id }) => {
                if self.blobs_wanted.remove(&id) {
                    self.events.push_back(Event::BlobMissing { id });
                }
                Ok(())
            }
            (Phase::Closed, _) => Err(SessionError::Closed),
        }
    }

    /// Asks the peer for bodies (those not already asked for).
    pub fn want_blobs(&mut self, ids: impl IntoIterator<Item = BlobId>) {
        if self.phase != Phase::Open {
            return;
        }
        let new: Vec<BlobId> = ids.into_iter().filter(|id| self.blobs_wanted.insert(*id)).collect();
        for chunk in new.chunks(BLOB_IDS_MAX) {
            self.queue(&Frame::WantBlobs { ids: chunk.to_vec() });
        }
    }

    /// Bodies asked of the peer and not answered yet.
    pub fn blobs_in_flight(&self) -> usize {
        self.blobs_wanted.len()
    }

    /// Answers [`Event::BlobsWanted`] for one id: the raw body, or `None` if
    /// this node does not hold it.
    pub fn send_blob(&mut self, id: BlobId, bytes: Option<Vec<u8>>) {
        if self.phase != Phase::Open {
            return;
        }
        match bytes {
            Some(bytes) => {
                // Level 1: cheap, and most of the gain on mail text.
                let z = codec::compress(&bytes, 1);
                let frame = if z.len() + 64 < bytes.len() {
                    Frame::Blob { id, zstd: true, bytes: z }
                } else {
                    Frame::Blob { id, zstd: false, bytes }
                }
                .encode();
                self.bytes_out += frame.len() as u64;
                self.transmit_blobs.push_back(frame);
            }
            None => self.queue(&Frame::NoBlob { id }),
        }
    }

    /// Asks the driver for ops if the peer lacks some and none are asked for.
    fn maybe_need(&mut self, account: &str) {
        let Some(st) = self.accounts.get_mut(account) else { return };
        if st.peer_has.is_none() || st.asked || st.sent.dominates(&st.local) {
            return;
        }
        st.asked = true;
        self.events.push_back(Event::NeedOps { account: account.to_string(), since: st.sent.clone() });
    }

    /// The driver committed local or remote changes: pushes what the peer lacks.
    pub fn local_changed(&mut self, account: &str, vv: VersionVector) {
        if let Some(st) = self.accounts.get_mut(account) {
            st.local = vv;
        }
        if self.phase == Phase::Open && self.shared.contains(account) {
            self.maybe_need(account);
        }
    }

    /// Answers [`Event::NeedOps`]: sends `ops` (those after `since`, in
    /// causal order) as one compressed frame. An empty list sends nothing.
    pub fn send_ops(&mut self, account: &str, ops: &[Op]) {
        let Some(st) = self.accounts.get_mut(account) else { return };
        st.asked = false;
        if self.phase != Phase::Open || ops.is_empty() {
            return;
        }
        for op in ops {
            st.sent.observe(op.dot);
        }
        let batch = codec::encode(ops, true);
        self.queue(&Frame::Ops { account: account.to_string(), batch });
        // Changes committed since the driver read its log go out next.
        self.maybe_need(account);
    }

    /// Answers [`Event::NeedOps`] for a peer behind the compacted log.
    pub fn send_snapshot(&mut self, account: &str, bytes: Vec<u8>, covers: &VersionVector) {
        let Some(st) = self.accounts.get_mut(account) else { return };
        st.asked = false;
        if self.phase != Phase::Open {
            return;
        }
        st.sent.join(covers);
        self.queue(&Frame::Snapshot { account: account.to_string(), bytes });
        self.maybe_need(account);
    }

    /// The driver applied what the peer sent: acknowledges with our new state.
    pub fn applied(&mut self, account: &str, vv: VersionVector) {
        if let Some(st) = self.accounts.get_mut(account) {
            st.local = vv.clone();
        }
        if self.phase == Phase::Open && self.shared.contains(account) {
            self.queue(&Frame::Have { account: account.to_string(), vv });
            self.maybe_need(account);
        }
    }

    /// Next metadata frame to send (in order, on the session's stream).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// Next body frame to send: on a stream of its own, so that bodies, however
    /// large, never delay metadata. Bodies may arrive in any order relative
    /// to metadata frames.
    #[must_use]
    pub fn poll_transmit_blob(&mut self) -> Option<Vec<u8>> {
        self.transmit_blobs.pop_front()
    }

    /// Next event for the driver.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}
