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
//! for them a chunk at a time ([`Event::NeedOps`]: at most
//! [`CHUNK_OPS_MAX`] ops in causal order) and sends each as one compressed
//! `Ops` frame ([`starling_model::codec`]), at most [`OPS_WINDOW_CHUNKS`]
//! unacknowledged; the receiver's driver applies them and the receiver
//! acknowledges with a new `Have`. After a local commit the driver
//! calls [`Session::local_changed`], which pushes the new ops at once (no
//! timer). A peer behind the sender's compacted log gets a `Snapshot`.
//! A no-op exchange is the two `Hello`s and one `Have` per account each way.
//! A peer whose `Hello` names an account this node deleted and purged gets
//! `Deleted` for it ([`Session::purged`], [`Event::Deleted`]).
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
//!             Event::NeedOps { account, since, ops_max, .. } => {
//!                 // The log is in causal order, so its first ops the peer lacks are a chunk.
//!                 let ops: Vec<_> = log.iter().filter(|o| !since.contains(o.dot)).take(ops_max).cloned().collect();
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
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Version of this protocol (3: chunked, acknowledged, windowed ops; 4:
/// bodies may travel in the sender's stored form, [`Shipped::Packed`]; 5:
/// a snapshot travels in parts of [`SNAPSHOT_PART_BYTES`]; 6: `Held`, the
/// acknowledgement of bodies, and `Probe`, answered by a `Have` naming it;
/// 7: ops may be `OpBody::Forced`, snapshots carry forced claims; 10:
/// each side sends its `Have`s right behind its `Hello`, not in answer to
/// the peer's, saving a round trip before the first ops; 11: `Deleted`,
/// the answer to a peer naming an account this node purged as deleted;
/// 12: snapshots (state version 4) no longer list expunged messages; 13:
/// a snapshot is a stream of records, store snapshot format 2; 14: the
/// receiver acknowledges snapshot parts, `SnapshotGot`, and the sender
/// keeps at most [`SNAPSHOT_WINDOW_BYTES`] unacknowledged; 15: a snapshot
/// part names its snapshot (`id`) and offset, and a receiver holding part
/// of one says so, `SnapshotHeld`, so that a broken transfer resumes).
pub const PROTOCOL_VERSION: u16 = 15;
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
/// Largest part of a snapshot a receiver accepts in one `Snapshot` frame
/// (senders send [`SNAPSHOT_SEND_PART`]). A snapshot travels in parts: one
/// frame of [`FRAME_BYTES_MAX`] would cap the account it can carry.
pub const SNAPSHOT_PART_BYTES: usize = 16 << 20;
/// Largest snapshot (compressed, all parts) a receiver accepts.
pub const SNAPSHOT_WIRE_MAX: u64 = 2 << 30;
/// Bytes of a snapshot this side puts in each part it sends (at most
/// [`SNAPSHOT_PART_BYTES`], what a receiver accepts), unless set smaller
/// for a session ([`Session::set_snapshot_part`]).
pub const SNAPSHOT_SEND_PART: usize = 4 << 20;
/// The smallest part [`Session::set_snapshot_part`] sets.
pub const SNAPSHOT_SEND_PART_MIN: usize = 256;
/// Bytes of snapshot parts sent and not yet acknowledged (`SnapshotGot`),
/// at most, over every account of a session: the sender reads parts from
/// its copy only as the receiver takes them, so a snapshot of any size
/// costs the sender this much memory. 16 MiB fill an 80 MB/s link at
/// 200 ms round trip. The receiver refuses a part beyond it.
pub const SNAPSHOT_WINDOW_BYTES: u64 = 16 << 20;
/// Whole parts in the sender's window: its window is this many of its
/// parts, at most [`SNAPSHOT_WINDOW_BYTES`].
pub const SNAPSHOT_WINDOW_PARTS: usize = 4;
const _: () = assert!(SNAPSHOT_WINDOW_PARTS * SNAPSHOT_SEND_PART == SNAPSHOT_WINDOW_BYTES as usize);
const _: () = assert!(SNAPSHOT_SEND_PART <= SNAPSHOT_PART_BYTES && SNAPSHOT_SEND_PART_MIN <= SNAPSHOT_SEND_PART);
/// Most ops in one `Ops` frame (a chunk); the receiver refuses more.
pub const CHUNK_OPS_MAX: usize = 4096;
/// Bytes of ops (encoded, before compression) a sender puts in one chunk.
pub const CHUNK_BYTES: usize = 1 << 20;
/// `Ops` frames of one account sent and not yet acknowledged, at most: the
/// ops window. 16 chunks of up to 4,096 ops keep 65,536 ops in flight, so a
/// 200 ms round trip still allows over 300,000 ops/s. The receiver refuses
/// a frame beyond it.
pub const OPS_WINDOW_CHUNKS: u64 = 16;
/// Bodies asked of a peer and not yet answered, at most (count) ...
pub const BLOB_WINDOW_COUNT: usize = 4096;
/// ... and in bytes (by the sizes the messages declare; one body is always
/// allowed). 32 MiB in flight fill a 160 MB/s link at 200 ms round trip.
pub const BLOB_WINDOW_BYTES: u64 = 32 << 20;
/// Body ids waiting to be asked for, at most; beyond it the driver is asked
/// to scan again once the queue has drained ([`Event::RetryBodies`]).
pub const BLOB_QUEUE_MAX: usize = 65_536;
/// Body requests a peer may have outstanding with us; a peer that asks for
/// more broke the window and is refused.
pub const PEER_WANTS_MAX: usize = 4 * BLOB_WINDOW_COUNT;
/// Bytes of body frames queued for sending, at most (one body past it):
/// bodies are read from the store only as this queue drains.
pub const BLOB_SEND_BUFFER: usize = 8 << 20;
/// Bytes of body frames waiting to be sent below which the driver is
/// asked to read more bodies, in a run that fills [`BLOB_SEND_BUFFER`]:
/// bodies are read half a buffer at a time, not one per frame that leaves.
pub const BLOB_SEND_LOW: usize = BLOB_SEND_BUFFER / 2;
/// Bodies asked of the driver at once ([`Event::BlobsWanted`]).
pub const BLOB_READ_BATCH: usize = 64;
/// Metadata frames waiting to be sent past which no more bodies are read
/// (answers for bodies we lack, `NoBlob`, go out as metadata).
pub const METADATA_QUEUE_SOFT: usize = 64;
/// First delay before asking again for bodies no peer had; it doubles up
/// to [`RETRY_MAX`] while they stay missing.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Bodies a session remembers having answered `NoBlob` for, at most.
pub const SAID_NO_MAX: usize = PEER_WANTS_MAX;
/// Longest delay between two sweeps for missing bodies.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

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
        /// `Ops` frames of this account received on this connection and
        /// applied (committed) so far: acknowledges chunks, so the peer can
        /// send more within [`OPS_WINDOW_CHUNKS`].
        chunks: u64,
        /// The `Probe` this answers (0: none): `vv` is the sender's whole
        /// version as of when the probe arrived.
        probe: u64,
    },
    /// "Say what you have of this account now": answered by a `Have` with
    /// the same `probe` (a replica about to show clients new UIDs makes
    /// sure it holds what its peers hold).
    Probe {
        /// The account.
        account: String,
        /// Names the answer (above 0).
        probe: u64,
    },
    /// Ops the receiver lacks, as a [`codec`] frame.
    Ops {
        /// The account.
        account: String,
        /// Encoded, compressed batch. (Byte strings are (de)serialized in
        /// one copy, not byte by byte; the encoding is the same.)
        #[serde(with = "serde_bytes")]
        batch: Vec<u8>,
    },
    /// A part of the account's whole state, for a peer behind the
    /// compacted log. Parts come in order on the metadata stream, each of
    /// at most [`SNAPSHOT_PART_BYTES`] and none empty, within
    /// [`SNAPSHOT_WINDOW_BYTES`] of the receiver's last `SnapshotGot`; the
    /// receiver installs the snapshot once `total` bytes arrived.
    Snapshot {
        /// The account.
        account: String,
        /// The sender's name for this snapshot (the same in every part, and
        /// in a later session resuming it).
        id: u64,
        /// Bytes of the whole snapshot (at most [`SNAPSHOT_WIRE_MAX`]).
        total: u64,
        /// Where this part starts: 0 for the first, or where the
        /// receiver's `SnapshotHeld` said it holds up to.
        offset: u64,
        /// This part of it, as the store exports it.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Bodies the sender lacks (ids learned from ops it applied).
    WantBlobs {
        /// At most [`BLOB_IDS_MAX`].
        ids: Vec<BlobId>,
    },
    /// A body, which must hash to `id` (once decoded).
    Blob {
        /// Its id.
        id: BlobId,
        /// How `bytes` hold it.
        encoding: BlobEncoding,
        /// The message, in that encoding.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The sender does not hold that body (partial replica).
    NoBlob {
        /// Its id.
        id: BlobId,
    },
    /// The sender holds these bodies, committed: the ones it stored from
    /// the receiver, and those named by ops from the receiver that it held
    /// already. (What exposure after k peers waits for.)
    Held {
        /// At most [`BLOB_IDS_MAX`].
        ids: Vec<BlobId>,
    },
    /// The sender refuses the session; it closes after this.
    Refused {
        /// Why.
        reason: String,
    },
    /// Bodies the sender answered `NoBlob` for earlier have arrived there
    /// since (from another peer): the receiver sweeps for missing bodies at
    /// once rather than on its retry timer's longer and longer wait, so a
    /// body relayed through this node lags its op by a round trip, not by
    /// seconds. (Protocol 9; appended, so older frames keep their tags.)
    Arrived {
        /// At most [`BLOB_IDS_MAX`].
        ids: Vec<BlobId>,
    },
    /// The receiver named this account in its `Hello`; the sender deleted
    /// it and purged its copy (every peer it waited for held the
    /// deletion). The receiver takes the deletion and counts the sender as
    /// holding it, so a peer that was away when the account was deleted
    /// learns of it from a node that no longer has it. (Protocol 11;
    /// appended.)
    Deleted {
        /// The account.
        account: String,
    },
    /// The receiver of a snapshot has taken (spooled) its first `got`
    /// bytes: the sender may send up to [`SNAPSHOT_WINDOW_BYTES`] beyond.
    /// (Protocol 14; appended.)
    SnapshotGot {
        /// The account.
        account: String,
        /// Bytes of the snapshot taken so far (the whole at the last part).
        got: u64,
    },
    /// The sender of this frame holds the first `got` bytes of the peer's
    /// snapshot `id` of `total` bytes, from a session that broke off: the
    /// peer may send the rest (parts from `got`) instead of a new one. Sent
    /// right behind `Hello`, before the `Have`s. (Protocol 15; appended.)
    SnapshotHeld {
        /// The account.
        account: String,
        /// The snapshot, as its parts named it.
        id: u64,
        /// Its length.
        total: u64,
        /// Bytes held, from the start (fewer than `total`).
        got: u64,
    },
}

/// How a [`Frame::Blob`] holds its body. (Encoded as 0, 1, 2: the first
/// two as protocol 3's `zstd: bool` was.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobEncoding {
    /// The raw message.
    Raw,
    /// zstd-compressed (mail text shrinks about threefold).
    Zstd,
    /// The sending store's record of it, as stored ([`Shipped::Packed`]):
    /// compressed once when it was stored, not again for the wire. The
    /// receiving driver decodes and verifies it.
    Packed,
}

/// A body as it travels: what [`Session::send_blob`] takes and
/// [`Event::Blob`] gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shipped {
    /// The raw message. In an [`Event::Blob`], already checked against its id.
    Raw(Vec<u8>),
    /// The sending store's record of the message, as it keeps it (opaque
    /// here). In an [`Event::Blob`], *not* checked: the driver's store
    /// decodes it and checks it against its id before keeping it, and
    /// closes the session if it does not match.
    Packed(Vec<u8>),
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
            Frame::Have { account, vv, .. } => name_ok(account) && vv.len() <= VV_ENTRIES_MAX,
            Frame::Ops { account, .. }
            | Frame::Snapshot { account, .. }
            | Frame::Probe { account, .. }
            | Frame::SnapshotGot { account, .. }
            | Frame::SnapshotHeld { account, .. }
            | Frame::Deleted { account } => name_ok(account),
            Frame::WantBlobs { ids } | Frame::Held { ids } | Frame::Arrived { ids } => ids.len() <= BLOB_IDS_MAX,
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

    /// Bodies of `ops` this policy fetches eagerly, with their sizes; `tree`
    /// names the mailboxes.
    pub fn eager_blobs(&self, ops: &[Op], tree: &starling_model::MailboxTree) -> Vec<(BlobId, u64)> {
        let mut seen = BTreeSet::new();
        let policy = self.resolved(tree);
        appends(ops)
            .filter(|a| policy.wants(tree.name_of(a.mailbox), a))
            .map(|a| (a.blob, a.size))
            .filter(|(b, _)| seen.insert(*b))
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
    /// Send the peer the next chunk of ops of `account` not covered by
    /// `since`, in causal order, at most `ops_max` ops and about
    /// `bytes_max` bytes ([`Session::send_ops`], or
    /// [`Session::send_snapshot`] if the log no longer reaches back that far).
    NeedOps {
        /// The account.
        account: String,
        /// What the peer has or has been sent.
        since: VersionVector,
        /// Most ops in the chunk ([`CHUNK_OPS_MAX`]).
        ops_max: usize,
        /// Bytes the chunk should not go much beyond ([`CHUNK_BYTES`]).
        bytes_max: usize,
    },
    /// Ops from the peer: apply them, then call [`Session::applied`].
    Ops {
        /// The account.
        account: String,
        /// The ops, decoded and validated.
        ops: Vec<Op>,
    },
    /// A part of a state snapshot from the peer, in order from offset 0
    /// (a part at offset 0 begins a snapshot): keep it, then call
    /// [`Session::snapshot_taken`] (the peer sends more only as parts are
    /// taken); once `last`, install the whole, then [`Session::applied`].
    /// The session holds no part once it is handed over, so where the
    /// driver keeps them (the store spools them to disk) decides what a
    /// snapshot costs in memory.
    SnapshotPart {
        /// The account.
        account: String,
        /// The peer's name for the snapshot ([`Session::offer_snapshot`]
        /// offers it back in a later session).
        id: u64,
        /// Its length.
        total: u64,
        /// Where the part starts in the snapshot: 0 for a new snapshot
        /// (drop any part held of another), else where the parts held end.
        offset: u64,
        /// As the peer's store exported it.
        bytes: Vec<u8>,
        /// The snapshot is complete with this part.
        last: bool,
    },
    /// Read `len` bytes at `offset` of the snapshot of `account` being
    /// sent ([`Session::send_snapshot`]) and hand them to
    /// [`Session::send_snapshot_part`]. Asked only within
    /// [`SNAPSHOT_WINDOW_BYTES`] of what the peer has taken, one read at a
    /// time.
    SnapshotRead {
        /// The account.
        account: String,
        /// Where the part starts.
        offset: u64,
        /// Its length (at most [`SNAPSHOT_SEND_PART`]).
        len: usize,
    },
    /// The peer wants these bodies: answer each with [`Session::send_blob`].
    /// Asked only as fast as body frames leave ([`BLOB_SEND_BUFFER`]).
    BlobsWanted {
        /// Their ids.
        ids: Vec<BlobId>,
    },
    /// A body we asked for: store it (see [`Shipped`] for what is checked).
    Blob {
        /// Its id.
        id: BlobId,
        /// The message.
        body: Shipped,
    },
    /// The peer does not have a body we asked for: ask another peer.
    BlobMissing {
        /// Its id.
        id: BlobId,
    },
    /// The peer asks what we have of `account` now: answer with
    /// [`Session::answer_probe`] and our version as of now.
    Probed {
        /// The account.
        account: String,
        /// To name in the answer.
        probe: u64,
    },
    /// The peer holds these bodies (committed): tell the store
    /// (exposure after k peers).
    Held {
        /// Their ids.
        ids: Vec<BlobId>,
    },
    /// Ask again for every body still missing ([`Session::want_blobs`]),
    /// then report with [`Session::bodies_swept`]: the retry timer fired, or
    /// the request queue overflowed and has drained.
    RetryBodies,
    /// The peer deleted `account` and purged its copy ([`Frame::Deleted`]):
    /// take the deletion, and count the peer as holding it.
    Deleted {
        /// The account.
        account: String,
    },
    /// The peer holds the first `got` bytes of our snapshot `id` of
    /// `total` bytes: if the driver still has that copy, it may resume
    /// it, [`Session::send_snapshot`] from `got`, when the peer next needs
    /// a snapshot of the account.
    SnapshotHeld {
        /// The account.
        account: String,
        /// The snapshot.
        id: u64,
        /// Its length.
        total: u64,
        /// Bytes the peer holds.
        got: u64,
    },
    /// The peer took the last part of our snapshot of `account`: the
    /// driver may drop its copy.
    SnapshotSent {
        /// The account.
        account: String,
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
    /// What we have sent (peer_has joined with every chunk in flight).
    sent: VersionVector,
    /// A NeedOps is out and not yet answered.
    asked: bool,
    /// `Ops` frames sent on this connection, and acknowledged by the peer.
    chunks_sent: u64,
    chunks_acked: u64,
    /// `Ops` frames received, handed to the driver ([`Session::poll_event`]),
    /// and acknowledged in our last `Have`.
    chunks_received: u64,
    chunks_delivered: u64,
    chunks_acked_out: u64,
    /// The last probe we sent, and the highest the peer answered.
    probed: u64,
    probe_answered: u64,
    /// The highest probe the peer sent that we have not answered (0: none).
    probe_in: u64,
    /// The snapshot being received, until its last part is acknowledged.
    snapshot_in: Option<SnapshotIn>,
    /// The snapshot being sent, until the peer took its last part.
    snapshot_out: Option<SnapshotOut>,
}

/// A snapshot being received: its length, the bytes arrived, those the
/// driver took ([`Session::snapshot_taken`]) and those acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SnapshotIn {
    id: u64,
    total: u64,
    /// Offered to the peer from an earlier session
    /// ([`Session::offer_snapshot`]), and no part of it came in this one:
    /// the peer may go on from `got` or begin another.
    offered: bool,
    got: u64,
    taken: u64,
    acked: u64,
}

/// A snapshot being sent: its length, the bytes queued, and those the
/// peer acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SnapshotOut {
    id: u64,
    total: u64,
    sent: u64,
    taken: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    Open,
    Closed,
}

/// The sizes of a session's queues, for the driver's assertions and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueSizes {
    /// Metadata frames waiting to be sent, and their bytes.
    pub transmit: usize,
    /// Bytes of those.
    pub transmit_bytes: usize,
    /// Body frames waiting to be sent.
    pub transmit_blobs: usize,
    /// Bytes of those.
    pub transmit_blob_bytes: usize,
    /// Events not yet taken by the driver.
    pub events: usize,
    /// Body ids waiting to be asked for.
    pub blobs_queued: usize,
    /// Bodies asked for and not answered.
    pub blobs_in_flight: usize,
    /// Bodies the peer asked for that we have not read yet.
    pub peer_wants: usize,
    /// Most `Ops` chunks of one account in flight, either way.
    pub chunks_in_flight: u64,
    /// Bytes of snapshots sent and not acknowledged, over all accounts.
    pub snapshot_in_flight: u64,
}

/// Parts of snapshots this side sends that are in flight at once, at most:
/// the window's worth of whole parts, and a shorter last part per account
/// (whatever the part size: the window is counted in parts).
fn snapshot_parts_in_flight(accounts: usize) -> usize {
    SNAPSHOT_WINDOW_PARTS + accounts
}

/// Bytes a `Snapshot` frame adds to the part it carries, at most.
const SNAPSHOT_FRAME_OVERHEAD: usize = ACCOUNT_NAME_MAX + 32;

/// Parts of one received snapshot that one batch of frames may carry, at
/// most (the events they become are taken before the next batch).
const SNAPSHOT_PARTS_MAX: usize = (SNAPSHOT_WIRE_MAX as usize).div_ceil(SNAPSHOT_PART_BYTES);

/// The bounds every [`QueueSizes`] stays within (checked by the simulator
/// at every step). Metadata frames are bounded by the windows: per account
/// at most [`OPS_WINDOW_CHUNKS`] chunks plus acknowledgements and requests,
/// and the parts of snapshots within [`SNAPSHOT_WINDOW_BYTES`].
pub fn queue_bounds(accounts: usize) -> QueueSizes {
    QueueSizes {
        transmit: accounts * (OPS_WINDOW_CHUNKS as usize + 5)
            + snapshot_parts_in_flight(accounts)
            + BLOB_WINDOW_COUNT.div_ceil(BLOB_IDS_MAX)
            + METADATA_QUEUE_SOFT
            + BLOB_READ_BATCH
            + 8,
        transmit_bytes: accounts * (OPS_WINDOW_CHUNKS as usize + 5) * FRAME_BYTES_MAX
            + SNAPSHOT_WINDOW_BYTES as usize
            + snapshot_parts_in_flight(accounts) * SNAPSHOT_FRAME_OVERHEAD,
        transmit_blobs: BLOB_SEND_BUFFER / 64 + BLOB_READ_BATCH,
        transmit_blob_bytes: BLOB_SEND_BUFFER + BLOB_READ_BATCH * (FRAME_BYTES_MAX + 64),
        events: accounts * (OPS_WINDOW_CHUNKS as usize + 4 + SNAPSHOT_PARTS_MAX) + BLOB_WINDOW_COUNT + 8,
        blobs_queued: BLOB_QUEUE_MAX,
        blobs_in_flight: BLOB_WINDOW_COUNT,
        peer_wants: PEER_WANTS_MAX,
        chunks_in_flight: OPS_WINDOW_CHUNKS,
        snapshot_in_flight: SNAPSHOT_WINDOW_BYTES,
    }
}

/// Bodies this side asks of the peer: a queue, and a window in flight.
#[derive(Debug, Default)]
struct Wants {
    /// Waiting to be asked for, with their declared sizes.
    queue: VecDeque<(BlobId, u64)>,
    /// Asked for and not answered: id → declared size.
    in_flight: HashMap<BlobId, u64>,
    in_flight_bytes: u64,
    /// Ids dropped because the queue was full: scan again once it drains.
    overflowed: bool,
    /// Every id in `queue` or `in_flight` (to ask once).
    known: BTreeSet<BlobId>,
}

/// The retry timer for bodies no peer had.
#[derive(Debug)]
struct Retry {
    due: Option<Instant>,
    backoff: Duration,
    /// Armed before the driver ever gave a clock reading: set at the next.
    armed_unread: bool,
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
    /// Accounts the peer named that we do not sync with it: its opening
    /// `Have` for one of them is ignored, anything else about it refused.
    theirs_only: BTreeSet<String>,
    /// Accounts this node purged as deleted that the peer may name
    /// ([`Session::purged`]): a peer naming one is told ([`Frame::Deleted`]).
    purged: BTreeSet<String>,
    /// Accounts the peer said it purged (each at most once).
    peer_purged: BTreeSet<String>,
    transmit: VecDeque<Vec<u8>>,
    transmit_bytes: usize,
    /// `Blob` frames, sent apart so a large body never holds up metadata.
    transmit_blobs: VecDeque<Vec<u8>>,
    transmit_blob_bytes: usize,
    events: VecDeque<Event>,
    /// Bodies we ask of the peer.
    wants: Wants,
    /// Bodies the peer asked of us, not read yet.
    peer_wants: VecDeque<BlobId>,
    /// Bodies the driver was asked to read and has not answered yet.
    reading: usize,
    /// Accounts whose snapshot we send, bytes of those in flight, and
    /// whether the driver was asked for a part it has not handed over yet.
    snapshots_out: BTreeSet<String>,
    snapshot_in_flight: u64,
    snapshot_reading: bool,
    /// Bytes per part of the snapshots we send ([`Session::set_snapshot_part`]).
    snapshot_part: usize,
    /// Accounts with a snapshot part taken and not yet acknowledged: one
    /// `SnapshotGot` each goes out with the next frames.
    snapshot_acks: BTreeSet<String>,
    /// A run of body reads is on: the send buffer fell below
    /// [`BLOB_SEND_LOW`] and has not been filled to [`BLOB_SEND_BUFFER`].
    refilling: bool,
    /// Bodies answered `NoBlob` to the peer (at most [`SAID_NO_MAX`]; past
    /// it any one is forgotten): when one arrives here, the peer is told
    /// ([`Frame::Arrived`]).
    said_no: BTreeSet<BlobId>,
    /// Of those, the ones that arrived and the peer is not told yet: one
    /// `Arrived` frame at a time goes out, when the metadata queue is empty.
    arrived: BTreeSet<BlobId>,
    retry: Retry,
    /// The driver's clock, as of its last [`Session::handle_timeout`].
    now: Option<Instant>,
    /// Bytes sent and received, for status and benchmarks.
    bytes_out: u64,
    bytes_in: u64,
    /// A frame went out ([`Session::poll_transmit`]).
    transmitted: bool,
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
            theirs_only: BTreeSet::new(),
            purged: BTreeSet::new(),
            peer_purged: BTreeSet::new(),
            transmit: VecDeque::new(),
            transmit_bytes: 0,
            transmit_blobs: VecDeque::new(),
            transmit_blob_bytes: 0,
            events: VecDeque::new(),
            wants: Wants::default(),
            peer_wants: VecDeque::new(),
            reading: 0,
            snapshots_out: BTreeSet::new(),
            snapshot_in_flight: 0,
            snapshot_reading: false,
            snapshot_part: SNAPSHOT_SEND_PART,
            snapshot_acks: BTreeSet::new(),
            refilling: false,
            said_no: BTreeSet::new(),
            arrived: BTreeSet::new(),
            retry: Retry { due: None, backoff: RETRY_FIRST, armed_unread: false },
            now: None,
            bytes_out: 0,
            bytes_in: 0,
            transmitted: false,
        };
        let hello =
            Frame::Hello { version: PROTOCOL_VERSION, node: me, accounts: s.accounts.keys().cloned().collect() };
        s.queue(&hello);
        // Our `Have`s go right behind, before we know which accounts the
        // peer shares: a peer holding what we lack can send its first chunk
        // as soon as our opening arrives, a round trip sooner than if it
        // waited for a `Have` answering its `Hello`. (The accounts named
        // are the ones authorized for this peer, so their vectors may go
        // to it; it ignores those it does not share.)
        let haves: Vec<Frame> = s
            .accounts
            .iter()
            .map(|(a, st)| Frame::Have { account: a.clone(), vv: st.local.clone(), chunks: 0, probe: 0 })
            .collect();
        for f in &haves {
            s.queue(f);
        }
        s
    }

    /// Accounts this node deleted and purged, among those the peer is
    /// authorized for: a peer whose `Hello` names one gets
    /// [`Frame::Deleted`] for it. Call before the peer's `Hello` arrives.
    pub fn purged(&mut self, accounts: impl IntoIterator<Item = String>) {
        for a in accounts {
            if self.purged.len() >= ACCOUNTS_MAX {
                break;
            }
            if !self.accounts.contains_key(&a) {
                self.purged.insert(a);
            }
        }
    }

    fn queue(&mut self, f: &Frame) {
        let bytes = f.encode();
        self.bytes_out += bytes.len() as u64;
        self.transmit_bytes += bytes.len();
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

    /// Ends the session because something the peer sent turned out bad
    /// only when the driver looked at it (a [`Shipped::Packed`] body that
    /// does not match its id): queues `Refused` for the peer and returns
    /// the error to end the connection with.
    pub fn malformed(&mut self, what: String) -> SessionError {
        let e = SessionError::Malformed(what);
        let _ = self.close(e.clone());
        e
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

    /// The sizes of this session's queues.
    pub fn queue_sizes(&self) -> QueueSizes {
        QueueSizes {
            transmit: self.transmit.len(),
            transmit_bytes: self.transmit_bytes,
            transmit_blobs: self.transmit_blobs.len(),
            transmit_blob_bytes: self.transmit_blob_bytes,
            events: self.events.len(),
            blobs_queued: self.wants.queue.len(),
            blobs_in_flight: self.wants.in_flight.len(),
            peer_wants: self.peer_wants.len(),
            chunks_in_flight: self
                .accounts
                .values()
                .map(|a| (a.chunks_sent - a.chunks_acked).max(a.chunks_received - a.chunks_acked_out))
                .max()
                .unwrap_or(0),
            snapshot_in_flight: self.snapshot_in_flight,
        }
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
                let (shared, theirs_only) = accounts.into_iter().partition(|a| self.accounts.contains_key(a));
                (self.shared, self.theirs_only) = (shared, theirs_only);
                let told: Vec<Frame> = self
                    .theirs_only
                    .intersection(&self.purged)
                    .map(|a| Frame::Deleted { account: a.clone() })
                    .collect();
                for f in &told {
                    self.queue(f);
                }
                self.events.push_back(Event::Open { peer: node, accounts: self.shared.iter().cloned().collect() });
                Ok(())
            }
            (Phase::AwaitHello, _) => self.close(SessionError::Protocol("frame before hello".into())),
            (Phase::Open, Frame::Hello { .. }) => self.close(SessionError::Protocol("second hello".into())),
            (Phase::Open, Frame::Have { account, vv, chunks, probe }) => {
                if !self.shared.contains(&account) {
                    // Its opening `Have` of an account only it named.
                    if chunks == 0 && probe == 0 && self.theirs_only.remove(&account) {
                        return Ok(());
                    }
                    return self.close(SessionError::Unauthorized(account));
                }
                let st = self.accounts.get_mut(&account).expect("shared account");
                if chunks < st.chunks_acked || chunks > st.chunks_sent {
                    let why = format!(
                        "acknowledged {chunks} chunks of {account:?}; {} were sent, {} acknowledged before",
                        st.chunks_sent, st.chunks_acked
                    );
                    return self.close(SessionError::Protocol(why));
                }
                if probe > st.probed {
                    let why = format!("answered probe {probe} of {account:?}; {} was asked", st.probed);
                    return self.close(SessionError::Protocol(why));
                }
                st.chunks_acked = chunks;
                st.probe_answered = st.probe_answered.max(probe);
                st.sent.join(&vv);
                st.peer_has = Some(vv);
                self.maybe_need(&account);
                Ok(())
            }
            (Phase::Open, Frame::Ops { account, batch }) => {
                if !self.shared.contains(&account) {
                    return self.close(SessionError::Unauthorized(account));
                }
                let st = self.accounts.get_mut(&account).expect("shared account");
                // The peer sends only within the window, counted from our
                // last acknowledgement: more means it ignored it.
                if st.chunks_received - st.chunks_acked_out >= OPS_WINDOW_CHUNKS {
                    let why = format!("ops beyond the window ({OPS_WINDOW_CHUNKS} chunks unacknowledged)");
                    return self.close(SessionError::Protocol(why));
                }
                match codec::decode_limited(&batch, CHUNK_OPS_MAX) {
                    Ok(ops) => {
                        self.accounts.get_mut(&account).expect("shared account").chunks_received += 1;
                        self.events.push_back(Event::Ops { account, ops });
                        Ok(())
                    }
                    Err(e) => self.close(SessionError::Malformed(e.to_string())),
                }
            }
            (Phase::Open, Frame::Snapshot { account, id, total, offset, bytes }) => {
                if !self.shared.contains(&account) {
                    return self.close(SessionError::Unauthorized(account));
                }
                let st = self.accounts.get_mut(&account).expect("shared account");
                // A new snapshot begins at 0, unless one is being received
                // in this session; an offered one goes on where it was held.
                let fresh = SnapshotIn { id, total, ..Default::default() };
                let inbound = match st.snapshot_in {
                    None if offset == 0 => st.snapshot_in.insert(fresh),
                    Some(held) if held.offered && offset == 0 => st.snapshot_in.insert(fresh),
                    Some(ref mut held) if held.id == id => held,
                    _ => {
                        let why = format!("snapshot part at {offset} of a snapshot not begun or not held");
                        return self.close(SessionError::Malformed(why));
                    }
                };
                inbound.offered = false;
                let end = offset.saturating_add(bytes.len() as u64);
                let bad = if total > SNAPSHOT_WIRE_MAX {
                    Some(format!("snapshot of {total} bytes (at most {SNAPSHOT_WIRE_MAX})"))
                } else if total != inbound.total {
                    Some(format!("snapshot part says {total} bytes, the first said {}", inbound.total))
                } else if bytes.is_empty() {
                    Some("empty snapshot part".to_string())
                } else if inbound.got == total {
                    Some("a snapshot part before the last one was acknowledged".to_string())
                } else if offset != inbound.got {
                    Some(format!("snapshot part at {offset}, where {} bytes arrived", inbound.got))
                } else if bytes.len() > SNAPSHOT_PART_BYTES || end > total {
                    Some("snapshot part too long".to_string())
                } else {
                    None
                };
                if let Some(why) = bad {
                    return self.close(SessionError::Malformed(why));
                }
                // Parts come only within the window of our last acknowledgement.
                if end > inbound.acked + SNAPSHOT_WINDOW_BYTES {
                    let why =
                        format!("snapshot parts beyond the window ({SNAPSHOT_WINDOW_BYTES} bytes unacknowledged)");
                    return self.close(SessionError::Protocol(why));
                }
                inbound.got = end;
                let last = end == total;
                self.events.push_back(Event::SnapshotPart { account, id, total, offset, bytes, last });
                Ok(())
            }
            (Phase::Open, Frame::SnapshotHeld { account, id, total, got }) => {
                if !self.shared.contains(&account) {
                    return self.close(SessionError::Unauthorized(account));
                }
                if total > SNAPSHOT_WIRE_MAX || got == 0 || got >= total {
                    let why = format!("holding {got} bytes of a snapshot of {total}");
                    return self.close(SessionError::Malformed(why));
                }
                self.events.push_back(Event::SnapshotHeld { account, id, total, got });
                Ok(())
            }
            (Phase::Open, Frame::SnapshotGot { account, got }) => {
                if !self.shared.contains(&account) {
                    return self.close(SessionError::Unauthorized(account));
                }
                let st = self.accounts.get_mut(&account).expect("shared account");
                let Some(out) = st.snapshot_out.as_mut().filter(|o| got > o.taken && got <= o.sent) else {
                    return self.close(SessionError::Protocol("acknowledged snapshot bytes not sent".into()));
                };
                self.snapshot_in_flight -= got - out.taken;
                out.taken = got;
                if got == out.total {
                    st.snapshot_out = None;
                    self.snapshots_out.remove(&account);
                    self.events.push_back(Event::SnapshotSent { account: account.clone() });
                    // Ops above the snapshot follow it.
                    self.maybe_need(&account);
                }
                Ok(())
            }
            (Phase::Open, Frame::WantBlobs { ids }) => {
                if self.peer_wants.len() + ids.len() > PEER_WANTS_MAX {
                    return self
                        .close(SessionError::Protocol(format!("more than {PEER_WANTS_MAX} bodies asked for at once")));
                }
                self.peer_wants.extend(ids);
                Ok(())
            }
            (Phase::Open, Frame::Blob { id, encoding, bytes }) => {
                if !self.wants.in_flight.contains_key(&id) {
                    return self.close(SessionError::Protocol("a body that was not asked for".into()));
                }
                let body = match encoding {
                    BlobEncoding::Raw => Shipped::Raw(bytes),
                    BlobEncoding::Zstd => match codec::decompress_capped(&bytes, BODY_BYTES_MAX) {
                        Ok(b) => Shipped::Raw(b),
                        Err(e) => return self.close(SessionError::Malformed(format!("body: {e}"))),
                    },
                    BlobEncoding::Packed => Shipped::Packed(bytes),
                };
                if let Shipped::Raw(raw) = &body {
                    if BlobId::of(raw) != id {
                        return self.close(SessionError::Malformed("body does not match its id".into()));
                    }
                }
                self.events.push_back(Event::Blob { id, body });
                self.answered(id);
                Ok(())
            }
            (Phase::Open, Frame::NoBlob { id }) => {
                if self.wants.in_flight.contains_key(&id) {
                    self.answered(id);
                    self.events.push_back(Event::BlobMissing { id });
                    self.arm_retry_from_last();
                }
                Ok(())
            }
            (Phase::Open, Frame::Probe { account, probe }) => {
                if !self.shared.contains(&account) {
                    return self.close(SessionError::Unauthorized(account));
                }
                // Probes that arrive before the answer share it: one
                // `Have`, naming the latest, whatever a peer sends.
                let st = self.accounts.get_mut(&account).expect("shared account");
                if st.probe_in == 0 {
                    self.events.push_back(Event::Probed { account, probe });
                }
                st.probe_in = st.probe_in.max(probe);
                Ok(())
            }
            (Phase::Open, Frame::Arrived { .. }) => {
                // Sweep for missing bodies now, and from the shortest wait.
                self.retry.backoff = RETRY_FIRST;
                match self.now {
                    Some(now) => self.retry.due = Some(now),
                    None => self.retry.armed_unread = true,
                }
                Ok(())
            }
            (Phase::Open, Frame::Held { ids }) => {
                self.events.push_back(Event::Held { ids });
                Ok(())
            }
            (Phase::Open, Frame::Deleted { account }) => {
                // Only of an account we named and the peer did not, once.
                if !self.accounts.contains_key(&account)
                    || self.shared.contains(&account)
                    || !self.peer_purged.insert(account.clone())
                {
                    return self.close(SessionError::Unauthorized(account));
                }
                self.events.push_back(Event::Deleted { account });
                Ok(())
            }
            (Phase::Closed, _) => Err(SessionError::Closed),
        }
    }

    /// Tells the peer this node holds these bodies, committed (after
    /// storing bodies it sent, or applying its ops naming bodies held
    /// already). Nothing before the handshake or after the end.
    pub fn held(&mut self, ids: &[BlobId]) {
        if self.phase != Phase::Open {
            return;
        }
        for chunk in ids.chunks(BLOB_IDS_MAX) {
            self.queue(&Frame::Held { ids: chunk.to_vec() });
        }
    }

    /// A body asked for was answered: frees its room in the window.
    fn answered(&mut self, id: BlobId) {
        if let Some(size) = self.wants.in_flight.remove(&id) {
            self.wants.in_flight_bytes -= size;
            self.wants.known.remove(&id);
        }
        self.flush_wants();
    }

    /// Asks the peer for bodies (those not already asked for or queued),
    /// with the sizes their messages declare. They are requested as the
    /// window allows ([`BLOB_WINDOW_COUNT`], [`BLOB_WINDOW_BYTES`]); past
    /// [`BLOB_QUEUE_MAX`] waiting ids the rest are dropped and asked again
    /// by an [`Event::RetryBodies`] once the queue has drained.
    /// Returns how many ids were newly queued.
    pub fn want_blobs(&mut self, ids: impl IntoIterator<Item = (BlobId, u64)>) -> usize {
        if self.phase != Phase::Open {
            return 0;
        }
        let mut added = 0;
        for (id, size) in ids {
            if self.wants.known.contains(&id) {
                continue;
            }
            if self.wants.queue.len() >= BLOB_QUEUE_MAX {
                self.wants.overflowed = true;
                break;
            }
            self.wants.known.insert(id);
            // A size from a peer's op: never more than a body can be.
            self.wants.queue.push_back((id, size.min(BODY_BYTES_MAX as u64)));
            added += 1;
        }
        self.flush_wants();
        added
    }

    /// The driver holds more missing bodies than it gave
    /// ([`Session::want_blobs`] takes them a page at a time): an
    /// [`Event::RetryBodies`] asks for the next page once the queue has
    /// drained.
    pub fn more_to_want(&mut self) {
        self.wants.overflowed = true;
    }

    /// Moves queued body ids into the window, as `WantBlobs` frames.
    fn flush_wants(&mut self) {
        if self.phase != Phase::Open {
            return;
        }
        let mut ids = Vec::new();
        while let Some(&(id, size)) = self.wants.queue.front() {
            let w = &self.wants;
            let room = w.in_flight.len() < BLOB_WINDOW_COUNT
                && (w.in_flight.is_empty() || w.in_flight_bytes + size <= BLOB_WINDOW_BYTES);
            if !room {
                break;
            }
            self.wants.queue.pop_front();
            self.wants.in_flight.insert(id, size);
            self.wants.in_flight_bytes += size;
            ids.push(id);
            if ids.len() == BLOB_IDS_MAX {
                self.queue(&Frame::WantBlobs { ids: std::mem::take(&mut ids) });
            }
        }
        if !ids.is_empty() {
            self.queue(&Frame::WantBlobs { ids });
        }
        if self.wants.queue.is_empty() && self.wants.overflowed {
            self.wants.overflowed = false;
            self.events.push_back(Event::RetryBodies);
        }
    }

    /// Bodies asked of the peer and not answered yet, plus those waiting to be asked.
    pub fn blobs_in_flight(&self) -> usize {
        self.wants.in_flight.len() + self.wants.queue.len()
    }

    /// Whether another body may be read now for [`Event::BlobsWanted`]
    /// (fewer than [`BLOB_SEND_BUFFER`] bytes of body frames wait); if not,
    /// the driver hands the rest back with [`Session::unread_blobs`].
    pub fn may_send_blob(&self) -> bool {
        self.transmit_blob_bytes < BLOB_SEND_BUFFER
    }

    /// Ids of [`Event::BlobsWanted`] the driver did not read (the send
    /// queue filled): asked again later, first.
    pub fn unread_blobs(&mut self, ids: Vec<BlobId>) {
        self.reading = self.reading.saturating_sub(ids.len());
        for id in ids.into_iter().rev() {
            self.peer_wants.push_front(id);
        }
    }

    /// Answers one id of [`Event::BlobsWanted`]: the body, or `None` if
    /// this node does not hold it.
    pub fn send_blob(&mut self, id: BlobId, body: Option<Shipped>) {
        self.reading = self.reading.saturating_sub(1);
        if self.phase != Phase::Open {
            return;
        }
        match body {
            Some(body) => {
                let frame = match body {
                    Shipped::Packed(bytes) => Frame::Blob { id, encoding: BlobEncoding::Packed, bytes },
                    Shipped::Raw(bytes) => {
                        // Level 1: cheap, and most of the gain on mail text.
                        let z = codec::compress(&bytes, 1);
                        if z.len() + 64 < bytes.len() {
                            Frame::Blob { id, encoding: BlobEncoding::Zstd, bytes: z }
                        } else {
                            Frame::Blob { id, encoding: BlobEncoding::Raw, bytes }
                        }
                    }
                }
                .encode();
                self.bytes_out += frame.len() as u64;
                self.transmit_blob_bytes += frame.len();
                self.transmit_blobs.push_back(frame);
                if self.transmit_blob_bytes >= BLOB_SEND_BUFFER {
                    self.refilling = false;
                }
            }
            None => {
                if self.said_no.len() >= SAID_NO_MAX {
                    self.said_no.pop_first();
                }
                self.said_no.insert(id);
                self.queue(&Frame::NoBlob { id })
            }
        }
    }

    /// These bodies are stored here now (from another peer, or written
    /// locally): those this session answered `NoBlob` for are announced to
    /// the peer ([`Frame::Arrived`]), which then asks again at once.
    pub fn bodies_here(&mut self, ids: &[BlobId]) {
        if self.phase != Phase::Open {
            return;
        }
        for id in ids {
            if self.said_no.remove(id) {
                self.arrived.insert(*id);
            }
        }
    }

    /// Asks the driver for ops if the peer lacks some, none are asked for,
    /// and the window has room.
    fn maybe_need(&mut self, account: &str) {
        let Some(st) = self.accounts.get_mut(account) else { return };
        if st.peer_has.is_none()
            || st.asked
            || st.snapshot_out.is_some()
            || st.sent.dominates(&st.local)
            || st.chunks_sent - st.chunks_acked >= OPS_WINDOW_CHUNKS
        {
            return;
        }
        st.asked = true;
        self.events.push_back(Event::NeedOps {
            account: account.to_string(),
            since: st.sent.clone(),
            ops_max: CHUNK_OPS_MAX,
            bytes_max: CHUNK_BYTES,
        });
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

    /// Answers [`Event::NeedOps`]: sends `ops` (the next chunk after
    /// `since`, in causal order, at most `ops_max`) as one compressed
    /// frame. An empty list sends nothing.
    pub fn send_ops(&mut self, account: &str, ops: &[Op]) {
        assert!(ops.len() <= CHUNK_OPS_MAX, "a chunk of {} ops exceeds {CHUNK_OPS_MAX}", ops.len());
        let Some(st) = self.accounts.get_mut(account) else { return };
        st.asked = false;
        if self.phase != Phase::Open || ops.is_empty() {
            return;
        }
        for op in ops {
            st.sent.observe(op.dot);
        }
        st.chunks_sent += 1;
        let batch = codec::encode(ops, true);
        self.queue(&Frame::Ops { account: account.to_string(), batch });
        // The next chunk, or changes committed since the driver read its log.
        self.maybe_need(account);
    }

    /// Answers [`Event::NeedOps`] for a peer behind the compacted log: a
    /// snapshot of `total` bytes (at least one), covering `covers`, named
    /// `id` (the driver's, unique among its snapshots), which the driver
    /// keeps and hands over a part at a time as the session asks
    /// ([`Event::SnapshotRead`]), from `from`: 0, or the bytes the peer
    /// said it holds of that same snapshot ([`Event::SnapshotHeld`]). Ops of
    /// the account wait until the peer took the last part. A snapshot over
    /// [`SNAPSHOT_WIRE_MAX`] cannot be sent: the session ends with the
    /// reason.
    pub fn send_snapshot(&mut self, account: &str, id: u64, total: u64, covers: &VersionVector, from: u64) {
        assert!(total > 0, "a snapshot holds at least its format byte");
        assert!(from < total, "a snapshot resumes before its end");
        let Some(st) = self.accounts.get_mut(account) else { return };
        assert!(st.snapshot_out.is_none(), "one snapshot of an account at a time");
        st.asked = false;
        if self.phase != Phase::Open {
            return;
        }
        if total > SNAPSHOT_WIRE_MAX {
            self.abort(&format!(
                "the snapshot of {account} is {total} bytes, over the {SNAPSHOT_WIRE_MAX} a peer takes"
            ));
            return;
        }
        st.sent.join(covers);
        st.snapshot_out = Some(SnapshotOut { id, total, sent: from, taken: from });
        self.snapshots_out.insert(account.to_string());
    }

    /// Sends the snapshots of this session in parts of `bytes` (clamped to
    /// [`SNAPSHOT_SEND_PART_MIN`]..=[`SNAPSHOT_SEND_PART`]), with a window
    /// of [`SNAPSHOT_WINDOW_PARTS`] of them. Smaller parts cost more frames
    /// and round trips; the simulator draws them so that its small
    /// snapshots travel in several parts and a transfer can break off
    /// between two.
    pub fn set_snapshot_part(&mut self, bytes: usize) {
        self.snapshot_part = bytes.clamp(SNAPSHOT_SEND_PART_MIN, SNAPSHOT_SEND_PART);
    }

    /// The next part of a snapshot being sent, if the window has room for
    /// it and no read is out: (account, offset, length).
    fn snapshot_to_read(&self) -> Option<(&String, u64, usize)> {
        if self.phase != Phase::Open || self.snapshot_reading {
            return None;
        }
        let window = (self.snapshot_part * SNAPSHOT_WINDOW_PARTS) as u64;
        self.snapshots_out.iter().find_map(|a| {
            let out = self.accounts.get(a)?.snapshot_out?;
            let len = (out.total - out.sent).min(self.snapshot_part as u64);
            (len > 0 && self.snapshot_in_flight + len <= window).then_some((a, out.sent, len as usize))
        })
    }

    /// Answers [`Event::SnapshotRead`]: `bytes` are the part asked for, at
    /// `offset`, of the length asked.
    pub fn send_snapshot_part(&mut self, account: &str, offset: u64, bytes: Vec<u8>) {
        self.snapshot_reading = false;
        if self.phase != Phase::Open {
            return;
        }
        let Some(out) = self.accounts.get_mut(account).and_then(|st| st.snapshot_out.as_mut()) else { return };
        let len = bytes.len() as u64;
        assert!(
            offset == out.sent && len > 0 && len == (out.total - out.sent).min(self.snapshot_part as u64),
            "the part asked for: at {}, not {offset} ({len} bytes)",
            out.sent
        );
        out.sent += len;
        let (id, total) = (out.id, out.total);
        self.snapshot_in_flight += len;
        self.queue(&Frame::Snapshot { account: account.to_string(), id, total, offset, bytes });
    }

    /// The driver holds the first `got` bytes of the peer's snapshot `id`
    /// of `total` bytes of `account`, kept from a session that broke off:
    /// the peer is told (right behind our `Hello`, before the `Have`s that
    /// make it send), and may send the rest instead of a new snapshot.
    /// Call right after [`Session::new`], before the first frame goes out.
    pub fn offer_snapshot(&mut self, account: &str, id: u64, total: u64, got: u64) {
        assert!(self.phase == Phase::AwaitHello && !self.transmitted, "offered before anything went out");
        let Some(st) = self.accounts.get_mut(account) else { return };
        if got == 0 || got >= total || total > SNAPSHOT_WIRE_MAX {
            return;
        }
        st.snapshot_in = Some(SnapshotIn { id, total, offered: true, got, taken: got, acked: got });
        let bytes = Frame::SnapshotHeld { account: account.to_string(), id, total, got }.encode();
        self.bytes_out += bytes.len() as u64;
        self.transmit_bytes += bytes.len();
        // Behind the `Hello`, the first frame queued.
        self.transmit.insert(1, bytes);
    }

    /// The driver took (spooled) the part of [`Event::SnapshotPart`] that
    /// ends at `got`: the peer is told with the next frames, and may send
    /// more.
    pub fn snapshot_taken(&mut self, account: &str, got: u64) {
        let Some(inbound) = self.accounts.get_mut(account).and_then(|st| st.snapshot_in.as_mut()) else { return };
        assert!(got <= inbound.got, "took {got} bytes of a snapshot of which {} arrived", inbound.got);
        if got > inbound.taken {
            inbound.taken = got;
            self.snapshot_acks.insert(account.to_string());
        }
    }

    /// Queues a `SnapshotGot` for each account with parts taken since its last.
    fn acknowledge_snapshots(&mut self) {
        if self.phase != Phase::Open {
            return;
        }
        while let Some(account) = self.snapshot_acks.pop_first() {
            let Some(st) = self.accounts.get_mut(&account) else { continue };
            let Some(inbound) = st.snapshot_in.as_mut() else { continue };
            inbound.acked = inbound.taken;
            let got = inbound.taken;
            if got == inbound.total {
                st.snapshot_in = None;
            }
            self.queue(&Frame::SnapshotGot { account, got });
        }
    }

    /// The driver applied what the peer sent of `account` (every
    /// [`Event::Ops`] of it taken so far): acknowledges with our new state.
    pub fn applied(&mut self, account: &str, vv: VersionVector) {
        let Some(st) = self.accounts.get_mut(account) else { return };
        st.local = vv.clone();
        let chunks = st.chunks_delivered;
        st.chunks_acked_out = chunks;
        if self.phase == Phase::Open && self.shared.contains(account) {
            self.queue(&Frame::Have { account: account.to_string(), vv, chunks, probe: 0 });
            self.maybe_need(account);
        }
    }

    /// Asks the peer what it has of `account` now ([`Frame::Probe`]); its
    /// answer shows in [`Session::probe_answered`]. `probe` must grow from
    /// one call to the next (a lower one is not sent).
    pub fn probe(&mut self, account: &str, probe: u64) {
        let Some(st) = self.accounts.get_mut(account) else { return };
        if self.phase != Phase::Open || !self.shared.contains(account) || probe <= st.probed {
            return;
        }
        st.probed = probe;
        self.queue(&Frame::Probe { account: account.to_string(), probe });
    }

    /// The highest probe of `account` the peer has answered (0: none).
    pub fn probe_answered(&self, account: &str) -> u64 {
        self.accounts.get(account).map_or(0, |a| a.probe_answered)
    }

    /// Answers [`Event::Probed`] with our version now (which the driver
    /// read after the probe arrived); pushes what the peer lacks of it.
    pub fn answer_probe(&mut self, account: &str, vv: VersionVector, probe: u64) {
        let Some(st) = self.accounts.get_mut(account) else { return };
        let probe = std::mem::take(&mut st.probe_in).max(probe);
        st.local = vv.clone();
        let chunks = st.chunks_acked_out;
        if self.phase == Phase::Open && self.shared.contains(account) {
            self.queue(&Frame::Have { account: account.to_string(), vv, chunks, probe });
            self.maybe_need(account);
        }
    }

    /// A sweep for missing bodies ([`Event::RetryBodies`]) is done: if it
    /// asked again for bodies (not already asked for), the next sweep comes
    /// after a longer wait; if it found nothing to ask, the wait starts
    /// short again.
    pub fn bodies_swept(&mut self, asked_again: bool) {
        if asked_again {
            self.retry.backoff = (self.retry.backoff * 2).min(RETRY_MAX);
            self.arm_retry_from_last();
        } else {
            self.retry.backoff = RETRY_FIRST;
        }
    }

    /// Some peer lacked a body: sweep for missing bodies after the current
    /// wait from `now` (unless a sweep is already due).
    pub fn arm_retry(&mut self, now: Instant) {
        self.now = Some(now);
        self.arm_retry_from_last();
    }

    /// [`Session::arm_retry`] from the driver's last clock reading (a
    /// session that was never given one arms at its next one).
    fn arm_retry_from_last(&mut self) {
        match self.now {
            Some(now) if self.retry.due.is_none() => self.retry.due = Some(now + self.retry.backoff),
            Some(_) => {}
            None => self.retry.armed_unread = true,
        }
    }

    /// When the driver must call [`Session::handle_timeout`] next, if a timer is set.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.retry.due.filter(|_| self.phase != Phase::Closed)
    }

    /// The driver's clock: fires what is due at `now`. Call it whenever the
    /// driver wakes up (at least at [`Session::poll_timeout`]); timers are
    /// set relative to the last `now` given.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        if std::mem::take(&mut self.retry.armed_unread) {
            self.arm_retry_from_last();
        }
        if self.retry.due.is_some_and(|d| d <= now) {
            self.retry.due = None;
            // Before the handshake there is nothing to sweep: opening asks
            // for every missing body anyway.
            if self.phase == Phase::Open {
                self.events.push_back(Event::RetryBodies);
            }
        }
    }

    /// Next metadata frame to send (in order, on the session's stream).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.acknowledge_snapshots();
        if self.transmit.is_empty() && !self.arrived.is_empty() && self.phase == Phase::Open {
            let mut ids = Vec::new();
            while ids.len() < BLOB_IDS_MAX {
                let Some(id) = self.arrived.pop_first() else { break };
                ids.push(id);
            }
            self.queue(&Frame::Arrived { ids });
        }
        let f = self.transmit.pop_front()?;
        self.transmit_bytes -= f.len();
        self.transmitted = true;
        Some(f)
    }

    /// Whether a body frame is waiting ([`Session::poll_transmit_blob`]).
    pub fn has_blob_to_send(&self) -> bool {
        !self.transmit_blobs.is_empty()
    }

    /// Next body frame to send: on a stream of its own, so that bodies, however
    /// large, never delay metadata. Bodies may arrive in any order relative
    /// to metadata frames.
    #[must_use]
    pub fn poll_transmit_blob(&mut self) -> Option<Vec<u8>> {
        let f = self.transmit_blobs.pop_front()?;
        self.transmit_blob_bytes -= f.len();
        Some(f)
    }

    /// Whether the peer waits for bodies and the send queues have room for them.
    fn may_read_bodies(&self) -> bool {
        self.phase == Phase::Open
            && self.reading == 0
            && !self.peer_wants.is_empty()
            && (self.transmit_blob_bytes < BLOB_SEND_LOW
                || self.refilling && self.transmit_blob_bytes < BLOB_SEND_BUFFER)
            && self.transmit.len() < METADATA_QUEUE_SOFT
    }

    /// Whether [`Session::poll_event`] has something for the driver now
    /// (after the driver took frames, more bodies may be read).
    pub fn has_work(&self) -> bool {
        !self.events.is_empty() || self.snapshot_to_read().is_some() || self.may_read_bodies()
    }

    /// Next event for the driver. Bodies the peer asked for are handed out
    /// ([`Event::BlobsWanted`]) only while fewer than [`BLOB_SEND_LOW`]
    /// bytes of body frames and [`METADATA_QUEUE_SOFT`] metadata frames
    /// wait to be sent.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(ev) = self.events.pop_front() {
            if let Event::Ops { account, .. } = &ev {
                if let Some(st) = self.accounts.get_mut(account) {
                    st.chunks_delivered += 1;
                }
            }
            return Some(ev);
        }
        if let Some((account, offset, len)) = self.snapshot_to_read() {
            let account = account.clone();
            self.snapshot_reading = true;
            return Some(Event::SnapshotRead { account, offset, len });
        }
        if self.may_read_bodies() {
            self.refilling = true;
            let n = self.peer_wants.len().min(BLOB_READ_BATCH);
            let ids: Vec<BlobId> = self.peer_wants.drain(..n).collect();
            self.reading = ids.len();
            return Some(Event::BlobsWanted { ids });
        }
        None
    }
}
