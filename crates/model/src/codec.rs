//! Compact, versioned binary encoding of op batches.
//!
//! A frame is `[version][compression][payload]`. The payload is postcard (a
//! varint-based serde format) of the batch with every replica id replaced by
//! its index in a table sent once at the front, so a dot costs 2–4 bytes
//! instead of 10. Compression 1 is zstd; decompression is capped, and decoding
//! checks every length against what is left of the input, so a hostile length
//! field cannot make the decoder allocate more than a small multiple of the
//! frame itself.

use crate::ids::{Dot, ReplicaId};
use crate::keyword::{Keyword, KEYWORD_LEN_MAX};
use crate::op::{Op, OpBody, Pin};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Encoding version written by this code.
pub const VERSION: u8 = 1;
/// Largest decoded payload accepted (after decompression).
pub const PAYLOAD_BYTES_MAX: usize = 64 << 20;
/// Most ops in one batch.
pub const BATCH_OPS_MAX: usize = 1 << 20;
/// Most replicas named in one batch.
pub const BATCH_REPLICAS_MAX: usize = 1 << 16;
/// Largest automerge change carried by one op.
pub const ACCOUNT_CHANGE_BYTES_MAX: usize = 1 << 20;

const RAW: u8 = 0;
const ZSTD: u8 = 1;

/// Why a frame was refused. Decoding never panics and never yields a
/// partially decoded batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Empty or shorter than its header.
    #[error("frame truncated")]
    Truncated,
    /// Written by an unknown version of this encoding.
    #[error("unsupported encoding version {0}")]
    Version(u8),
    /// Unknown compression byte.
    #[error("unknown compression {0}")]
    Compression(u8),
    /// Decompression failed or exceeded [`PAYLOAD_BYTES_MAX`].
    #[error("bad compressed payload: {0}")]
    Decompress(String),
    /// The payload is not a batch.
    #[error("malformed batch: {0}")]
    Malformed(String),
    /// A count or size beyond the limits of this module.
    #[error("batch exceeds limit: {0}")]
    Limit(&'static str),
    /// Decoded, but not valid (bad replica index, non-canonical keyword, zero counter...).
    #[error("invalid op: {0}")]
    Invalid(String),
}

#[derive(Serialize, Deserialize)]
struct Batch {
    replicas: Vec<ReplicaId>,
    ops: Vec<Op>,
}

/// Rewrites every replica id in an op.
fn map_replicas(
    op: &mut Op,
    f: &mut impl FnMut(ReplicaId) -> Result<ReplicaId, DecodeError>,
) -> Result<(), DecodeError> {
    let dot =
        |d: &mut Dot, f: &mut dyn FnMut(ReplicaId) -> Result<ReplicaId, DecodeError>| -> Result<(), DecodeError> {
            d.replica = f(d.replica)?;
            Ok(())
        };
    dot(&mut op.dot, f)?;
    for d in &mut op.deps {
        dot(d, f)?;
    }
    match &mut op.body {
        OpBody::Append(a) => {
            dot(&mut a.mailbox.0, f)?;
        }
        OpBody::Flags { message, remove, .. } => {
            dot(&mut message.0, f)?;
            for (_, d) in remove {
                dot(d, f)?;
            }
        }
        OpBody::Move { message, to, .. } => {
            dot(&mut message.0, f)?;
            dot(&mut to.0, f)?;
        }
        OpBody::Copy { source, append } => {
            dot(&mut source.0, f)?;
            dot(&mut append.mailbox.0, f)?;
        }
        OpBody::Expunge { messages } => {
            for m in messages {
                dot(&mut m.0, f)?;
            }
        }
        OpBody::Claim { mailbox, message, .. } | OpBody::Forced { mailbox, message, .. } => {
            dot(&mut mailbox.0, f)?;
            dot(&mut message.0, f)?;
        }
        OpBody::Announce { mailbox, pins, .. } => {
            dot(&mut mailbox.0, f)?;
            for Pin { message, claimant, .. } in pins {
                dot(&mut message.0, f)?;
                *claimant = f(*claimant)?;
            }
        }
        OpBody::Account { .. } => {}
    }
    Ok(())
}

/// Encodes a batch of ops; `compress` chooses zstd (level 3).
pub fn encode(ops: &[Op], compress: bool) -> Vec<u8> {
    let mut table: Vec<ReplicaId> = Vec::new();
    let mut index: HashMap<ReplicaId, u64> = HashMap::new();
    let mut relabeled = Vec::with_capacity(ops.len());
    for op in ops {
        let mut op = op.clone();
        map_replicas(&mut op, &mut |r| {
            let i = *index.entry(r).or_insert_with(|| {
                table.push(r);
                table.len() as u64 - 1
            });
            Ok(ReplicaId(i))
        })
        .expect("relabeling cannot fail");
        relabeled.push(op);
    }
    let payload = postcard::to_stdvec(&Batch { replicas: table, ops: relabeled }).expect("in-memory encoding");
    let mut out = vec![VERSION];
    if compress {
        out.push(ZSTD);
        out.extend(self::compress(&payload, 3));
    } else {
        out.push(RAW);
        out.extend(payload);
    }
    out
}

/// Decompresses a zstd frame of at most `len_max` bytes. The buffer is
/// sized from the frame header (not `len_max`, which may be hundreds of MB);
/// a frame without a size is streamed and cut off past the cap. One
/// decompression context per thread is reused.
pub fn decompress_capped(data: &[u8], len_max: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    thread_local! {
        static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
    }
    match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(n)) if n > len_max as u64 => Err(format!("{n} bytes decompressed exceed the limit of {len_max}")),
        Ok(Some(n)) => DECOMPRESSOR
            .with(|d| match d.borrow_mut().as_mut() {
                Some(d) => d.decompress(data, n as usize),
                None => zstd::bulk::decompress(data, n as usize),
            })
            .map_err(|e| e.to_string()),
        _ => {
            let mut out = Vec::new();
            let decoder = zstd::stream::read::Decoder::new(data).map_err(|e| e.to_string())?;
            decoder.take(len_max as u64 + 1).read_to_end(&mut out).map_err(|e| e.to_string())?;
            if out.len() > len_max {
                return Err(format!("decompressed data exceed the limit of {len_max}"));
            }
            Ok(out)
        }
    }
}

/// Compresses with zstd at `level`, reusing one context per thread and level.
pub fn compress(data: &[u8], level: i32) -> Vec<u8> {
    thread_local! {
        static COMPRESSORS: std::cell::RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    COMPRESSORS.with(|cs| {
        let mut cs = cs.borrow_mut();
        if !cs.iter().any(|(l, _)| *l == level) {
            if let Ok(c) = zstd::bulk::Compressor::new(level) {
                cs.push((level, c));
            }
        }
        match cs.iter_mut().find(|(l, _)| *l == level) {
            Some((_, c)) => c.compress(data),
            None => zstd::bulk::compress(data, level),
        }
        .expect("zstd compresses any input in memory")
    })
}

/// A sequence of at most `max` elements: the count is checked against the
/// length prefix before any element is decoded, and again while decoding.
struct BoundedVec<T> {
    max: usize,
    what: &'static str,
    _t: std::marker::PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> serde::de::DeserializeSeed<'de> for BoundedVec<T> {
    type Value = Vec<T>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for BoundedVec<T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "at most {} {}", self.max, self.what)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let too_many = || serde::de::Error::custom(format!("more than {} {}", self.max, self.what));
        if seq.size_hint().is_some_and(|n| n > self.max) {
            return Err(too_many());
        }
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(x) = seq.next_element()? {
            if out.len() == self.max {
                return Err(too_many());
            }
            out.push(x);
        }
        Ok(out)
    }
}

/// [`Batch`] with its counts bounded while decoding.
struct BatchSeed {
    ops_max: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for BatchSeed {
    type Value = Batch;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Batch, D::Error> {
        d.deserialize_struct("Batch", &["replicas", "ops"], self)
    }
}

impl<'de> serde::de::Visitor<'de> for BatchSeed {
    type Value = Batch;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a batch of ops")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Batch, A::Error> {
        let missing = || serde::de::Error::custom("batch truncated");
        let replicas = seq
            .next_element_seed(BoundedVec { max: BATCH_REPLICAS_MAX, what: "replicas", _t: Default::default() })?
            .ok_or_else(missing)?;
        let ops = seq
            .next_element_seed(BoundedVec { max: self.ops_max, what: "ops", _t: Default::default() })?
            .ok_or_else(missing)?;
        Ok(Batch { replicas, ops })
    }
}

/// Decodes and validates a frame made by [`encode`].
pub fn decode(frame: &[u8]) -> Result<Vec<Op>, DecodeError> {
    decode_limited(frame, BATCH_OPS_MAX)
}

/// [`decode`] of a frame of at most `ops_max` ops (checked against the
/// count before any op is decoded).
pub fn decode_limited(frame: &[u8], ops_max: usize) -> Result<Vec<Op>, DecodeError> {
    let [version, compression, body @ ..] = frame else {
        return Err(DecodeError::Truncated);
    };
    if *version != VERSION {
        return Err(DecodeError::Version(*version));
    }
    let decompressed;
    let payload: &[u8] = match *compression {
        RAW => body,
        ZSTD => {
            decompressed = decompress_capped(body, PAYLOAD_BYTES_MAX).map_err(DecodeError::Decompress)?;
            &decompressed
        }
        c => return Err(DecodeError::Compression(c)),
    };
    if payload.len() > PAYLOAD_BYTES_MAX {
        return Err(DecodeError::Limit("payload size"));
    }
    let mut de = postcard::Deserializer::from_bytes(payload);
    let batch = serde::de::DeserializeSeed::deserialize(BatchSeed { ops_max: ops_max.min(BATCH_OPS_MAX) }, &mut de)
        // postcard drops a custom error's text: a count over its bound shows as this one.
        .map_err(|e| match e {
            postcard::Error::SerdeDeCustom => DecodeError::Limit("ops or replicas"),
            e => DecodeError::Malformed(e.to_string()),
        })?;
    if !de.finalize().map_err(|e| DecodeError::Malformed(e.to_string()))?.is_empty() {
        return Err(DecodeError::Malformed("trailing bytes".into()));
    }
    let mut ops = batch.ops;
    for op in &mut ops {
        map_replicas(op, &mut |r| {
            batch
                .replicas
                .get(r.0 as usize)
                .copied()
                .ok_or_else(|| DecodeError::Invalid(format!("replica index {}", r.0)))
        })?;
        validate(op)?;
    }
    Ok(ops)
}

fn validate(op: &Op) -> Result<(), DecodeError> {
    let bad = |what: &str| Err(DecodeError::Invalid(format!("{what} in {:?}", op.dot)));
    let dot_ok = |d: &Dot| d.counter >= 1 && d.counter <= crate::ids::COUNTER_MAX;
    if !dot_ok(&op.dot) || !op.deps.iter().all(dot_ok) {
        return bad("counter out of range");
    }
    let kw_ok = |k: &Keyword| k.is_canonical() && k.to_string().len() <= KEYWORD_LEN_MAX;
    match &op.body {
        OpBody::Append(a) | OpBody::Copy { append: a, .. } => {
            if a.uid == 0 || !a.flags.iter().all(kw_ok) {
                return bad("append");
            }
        }
        OpBody::Flags { add, remove, .. } => {
            if !add.iter().all(kw_ok) || !remove.iter().all(|(k, d)| kw_ok(k) && dot_ok(d)) {
                return bad("keyword");
            }
        }
        OpBody::Move { uid, .. } => {
            if *uid == 0 {
                return bad("uid 0");
            }
        }
        OpBody::Claim { uid, retract, .. } => {
            if *uid == Some(0) || *retract == Some(0) || (uid.is_none() && retract.is_none()) {
                return bad("claim");
            }
        }
        OpBody::Forced { uid, retract, .. } => {
            if *uid == 0 || *retract == Some(0) {
                return bad("forced claim");
            }
        }
        OpBody::Announce { uid_next, .. } => {
            if *uid_next == 0 {
                return bad("announce");
            }
        }
        OpBody::Account { change } => {
            if change.len() > ACCOUNT_CHANGE_BYTES_MAX {
                return bad("account change size");
            }
        }
        OpBody::Expunge { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{BlobId, MailboxId, MessageId};
    use crate::op::Append;
    use proptest::prelude::*;

    fn sample() -> Vec<Op> {
        let a = ReplicaId(0x1234_5678_9abc_def0);
        let b = ReplicaId(0xfeed_face_cafe_beef);
        vec![
            Op {
                dot: Dot::new(a, 1),
                deps: vec![],
                body: OpBody::Append(Append {
                    mailbox: MailboxId(Dot::new(ReplicaId(0), 0)),
                    blob: BlobId::of(b"hello"),
                    size: 5,
                    internal_date: 1_700_000_000,
                    uid: 1,
                    flags: vec![Keyword::Seen],
                }),
            },
            Op {
                dot: Dot::new(b, 7),
                deps: vec![Dot::new(a, 1)],
                body: OpBody::Flags {
                    message: MessageId(Dot::new(a, 1)),
                    add: vec![Keyword::Flagged],
                    remove: vec![(Keyword::Seen, Dot::new(a, 1))],
                },
            },
            Op {
                dot: Dot::new(b, 8),
                deps: vec![],
                body: OpBody::Forced {
                    mailbox: MailboxId(Dot::new(ReplicaId(0), 0)),
                    message: MessageId(Dot::new(a, 1)),
                    uid: 9,
                    retract: Some(1),
                },
            },
        ]
    }

    #[test]
    fn round_trip_raw_and_compressed() {
        let ops = sample();
        assert_eq!(decode(&encode(&ops, false)).unwrap(), ops);
        assert_eq!(decode(&encode(&ops, true)).unwrap(), ops);
    }

    #[test]
    fn refuses_bad_headers_and_indices() {
        let mut f = encode(&sample(), false);
        assert_eq!(decode(&[]), Err(DecodeError::Truncated));
        f[0] = 9;
        assert_eq!(decode(&f), Err(DecodeError::Version(9)));
        f[0] = VERSION;
        f[1] = 7;
        assert_eq!(decode(&f), Err(DecodeError::Compression(7)));
        // A batch naming replica index 5 with a 1-entry table.
        let mut op = sample().remove(0);
        op.dot.replica = ReplicaId(5);
        let payload = postcard::to_stdvec(&Batch { replicas: vec![ReplicaId(1)], ops: vec![op] }).unwrap();
        let mut frame = vec![VERSION, RAW];
        frame.extend(payload);
        assert!(matches!(decode(&frame), Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn hostile_length_does_not_allocate() {
        // Table length claims 2^63 entries; the decoder must fail on the input, not allocate.
        let mut frame = vec![VERSION, RAW];
        frame.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(decode(&frame).is_err());
        // A compressed bomb: 1 GiB of zeros is refused by the decompression cap.
        let bomb = zstd::bulk::compress(&vec![0u8; PAYLOAD_BYTES_MAX + 1], 19).unwrap();
        let mut frame = vec![VERSION, ZSTD];
        frame.extend(bomb);
        assert!(matches!(decode(&frame), Err(DecodeError::Decompress(_))));
    }

    proptest! {
        #[test]
        fn random_and_mutated_frames_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            compress in any::<bool>(),
        ) {
            let _ = decode(&bytes);
            let mut f = encode(&sample(), compress);
            for (i, b) in flips {
                let n = f.len();
                f[i % n] ^= b;
            }
            let _ = decode(&f);
        }
    }
}
