//! Content-addressed bodies. A message body is keyed by the BLAKE3 of its raw
//! bytes. MIME leaf parts larger than a threshold are stored as blobs of their
//! own (keyed by the BLAKE3 of their raw, still-encoded bytes) and the body
//! keeps a reference, so a partial replica can hold the message without them
//! and fetch them later. Reassembly is byte-exact: pieces are raw slices of
//! the original, checked before anything is written.

use serde::{Deserialize, Serialize};
use starling_model::BlobId;

/// One stretch of a body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Piece {
    /// Bytes kept in the body record. As serde bytes: the same postcard
    /// encoding as a `Vec<u8>` (length, then the bytes), decoded in one copy
    /// instead of element by element.
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A large part stored apart.
    Part {
        /// Its id.
        id: BlobId,
        /// Its length in bytes.
        len: u64,
    },
}

/// A stored body record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyRecord {
    /// Total length of the reassembled body.
    pub len: u64,
    /// Its pieces, in order.
    pub pieces: Vec<Piece>,
}

/// Stored form of a body record or a part: a format byte, then the bytes —
/// raw (0) or zstd-compressed (1), whichever is smaller. Mail text shrinks
/// about threefold; already-compressed attachments stay raw.
pub fn pack(bytes: &[u8]) -> Vec<u8> {
    let z = starling_model::codec::compress(bytes, 1);
    if z.len() + 8 < bytes.len() {
        let mut out = Vec::with_capacity(z.len() + 1);
        out.push(1);
        out.extend_from_slice(&z);
        return out;
    }
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(0);
    out.extend_from_slice(bytes);
    out
}

/// Stored form of a body record whose message header is compressed apart
/// (format 2: the first frame holds the record up to the end of the header,
/// the second the rest), so reading a header decompresses only the header.
/// Falls back to [`pack`] when the record does not start with the header.
pub fn pack_record(record: &BodyRecord, serialized: &[u8]) -> Vec<u8> {
    let Some(Piece::Inline(first)) = record.pieces.first() else { return pack(serialized) };
    let Some(header) = header_len(first) else { return pack(serialized) };
    let lead = varint_len(record.len) + varint_len(record.pieces.len() as u64) + 1 + varint_len(first.len() as u64);
    let (a, b) = serialized.split_at((lead + header).min(serialized.len()));
    let (za, zb) = (starling_model::codec::compress(a, 1), starling_model::codec::compress(b, 1));
    if za.len() + zb.len() + 16 >= serialized.len() {
        return pack(serialized);
    }
    let mut out = Vec::with_capacity(za.len() + zb.len() + 11);
    out.push(2);
    put_varint(&mut out, za.len() as u64);
    out.extend_from_slice(&za);
    out.extend_from_slice(&zb);
    out
}

/// Length of a message's header block (through the blank line), if it has one.
fn header_len(raw: &[u8]) -> Option<usize> {
    let crlf = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = raw.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(r: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = r.split_first()?;
        *r = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Format 2's two frames.
fn split_frames(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut r = rest;
    let len = usize::try_from(take_varint(&mut r)?).ok()?;
    (len <= r.len()).then(|| r.split_at(len))
}

/// The message header a format-2 record keeps in its first frame (only
/// that frame is decompressed); `None` for other formats.
pub fn record_header(stored: &[u8]) -> Option<Vec<u8>> {
    let (2, rest) = stored.split_first()? else { return None };
    let (head, _) = split_frames(rest)?;
    let head = starling_model::codec::decompress_capped(head, 1 << 20).ok()?;
    let mut r: &[u8] = &head;
    let (_total, count, tag, len) =
        (take_varint(&mut r)?, take_varint(&mut r)?, take_varint(&mut r)?, take_varint(&mut r)?);
    if count == 0 || tag != 0 || (r.len() as u64) > len {
        return None;
    }
    Some(r.to_vec())
}

/// A packed body record ([`pack_record`]), decoded and checked: its
/// pieces add up to its length. `len_max` bounds decompression.
pub fn unpack_record(stored: &[u8], len_max: usize) -> Result<BodyRecord, String> {
    let bytes = unpack(stored, len_max)?;
    let record: BodyRecord = postcard::from_bytes(&bytes).map_err(|e| format!("record: {e}"))?;
    let sum = record.pieces.iter().try_fold(0u64, |n, p| {
        n.checked_add(match p {
            Piece::Inline(b) => b.len() as u64,
            Piece::Part { len, .. } => *len,
        })
    });
    if sum != Some(record.len) {
        return Err("pieces do not add up to the body's length".into());
    }
    Ok(record)
}

/// Most large parts one shipped body may carry.
pub const SHIPPED_PARTS_MAX: usize = 4096;

/// A body as one store ships it to another, in stored form: the stored
/// records of its large parts, in the order its record names them (each
/// with its length), then its own stored record. Nothing is decompressed
/// or compressed again on either side.
pub fn encode_shipped(record: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.len() + parts.iter().map(|p| p.len() + 10).sum::<usize>() + 10);
    put_varint(&mut out, parts.len() as u64);
    for p in parts {
        put_varint(&mut out, p.len() as u64);
        out.extend_from_slice(p);
    }
    out.extend_from_slice(record);
    out
}

/// Reverses [`encode_shipped`]: the parts' stored records and the body's.
pub fn decode_shipped(bytes: &[u8]) -> Result<(Vec<&[u8]>, &[u8]), String> {
    let mut r = bytes;
    let n = take_varint(&mut r).ok_or("truncated")?;
    if n > SHIPPED_PARTS_MAX as u64 {
        return Err(format!("{n} parts (at most {SHIPPED_PARTS_MAX})"));
    }
    let mut parts = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = take_varint(&mut r).and_then(|l| usize::try_from(l).ok()).ok_or("truncated")?;
        if len > r.len() {
            return Err("truncated part".into());
        }
        let (part, rest) = r.split_at(len);
        parts.push(part);
        r = rest;
    }
    Ok((parts, r))
}

/// Checks a body given as its record and its parts' stored records (in
/// the order the record names them) against `id`: each part decodes to
/// the length and id the record gives it, and the whole hashes to `id`.
pub fn check_whole(id: BlobId, record: &BodyRecord, parts: &[&[u8]]) -> Result<(), String> {
    let mut h = blake3::Hasher::new();
    let mut stored = parts.iter();
    for p in &record.pieces {
        match p {
            Piece::Inline(b) => {
                h.update(b);
            }
            Piece::Part { id: pid, len } => {
                let part = stored.next().ok_or("fewer parts than the record names")?;
                let cap = usize::try_from(*len).map_err(|_| "part too large")?;
                let bytes = unpack(part, cap)?;
                if bytes.len() as u64 != *len || BlobId::of(&bytes) != *pid {
                    return Err("a part does not match its id".into());
                }
                h.update(&bytes);
            }
        }
    }
    if stored.next().is_some() {
        return Err("more parts than the record names".into());
    }
    if BlobId(*h.finalize().as_bytes()) != id {
        return Err("does not hash to its id".into());
    }
    Ok(())
}

/// The ids of the large parts a record names, in order.
pub fn part_ids(record: &BodyRecord) -> Vec<BlobId> {
    record
        .pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Part { id, .. } => Some(*id),
            Piece::Inline(_) => None,
        })
        .collect()
}

/// The body a record holds whole (every piece inline).
pub fn inline_bytes(record: &BodyRecord) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(usize::try_from(record.len).ok()?);
    for p in &record.pieces {
        match p {
            Piece::Inline(b) => out.extend_from_slice(b),
            Piece::Part { .. } => return None,
        }
    }
    Some(out)
}

/// Reverses [`pack`] and [`pack_record`]; `len_max` bounds decompression.
pub fn unpack(stored: &[u8], len_max: usize) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    match stored.split_first() {
        Some((0, rest)) => Ok(std::borrow::Cow::Borrowed(rest)),
        Some((2, rest)) => {
            let (a, b) = split_frames(rest).ok_or("truncated record")?;
            let mut out = starling_model::codec::decompress_capped(a, len_max)?;
            out.extend_from_slice(&starling_model::codec::decompress_capped(b, len_max.saturating_sub(out.len()))?);
            Ok(std::borrow::Cow::Owned(out))
        }
        Some((1, rest)) => starling_model::codec::decompress_capped(rest, len_max).map(std::borrow::Cow::Owned),
        Some((f, _)) => Err(format!("unknown blob format {f}")),
        None => Err("empty blob record".into()),
    }
}

/// The first `n` bytes of the body a stored record describes, when the body
/// starts with an inline piece: only that much of the record is
/// decompressed. `None` when the record cannot answer from its start (a
/// large part first, or too short a prefix): read the body instead.
pub fn inline_prefix(stored: &[u8], n: usize) -> Option<Vec<u8>> {
    // A postcard record starts with: body length, piece count, piece
    // variant (0 = Inline), bytes length (all varints), then the bytes.
    const HEAD_MAX: usize = 4 * 10;
    let head: std::borrow::Cow<'_, [u8]> = match stored.split_first()? {
        (0, rest) => std::borrow::Cow::Borrowed(rest),
        (1, rest) => std::borrow::Cow::Owned(decompress_prefix(rest, n + HEAD_MAX)?),
        (2, _) => unpack(stored, usize::MAX).ok()?,
        _ => return None,
    };
    let mut r: &[u8] = &head;
    let mut varint = || take_varint(&mut r);
    let _total = varint()?;
    if varint()? == 0 {
        return Some(Vec::new());
    }
    if varint()? != 0 {
        return None;
    }
    let len = usize::try_from(varint()?).ok()?;
    let want = n.min(len);
    (r.len() >= want).then(|| r[..want].to_vec())
}

/// At most the first `n` decompressed bytes of a zstd frame, with this
/// thread's decompression context (making one costs more than a header).
fn decompress_prefix(frame: &[u8], n: usize) -> Option<Vec<u8>> {
    use zstd::zstd_safe::{DCtx, InBuffer, OutBuffer, ResetDirective};
    thread_local!(static DCTX: std::cell::RefCell<DCtx<'static>> = std::cell::RefCell::new(DCtx::create()));
    DCTX.with(|c| {
        let mut c = c.borrow_mut();
        c.reset(ResetDirective::SessionOnly).ok()?;
        let mut out = vec![0u8; n];
        let mut input = InBuffer::around(frame);
        let mut output = OutBuffer::around(&mut out[..]);
        loop {
            let before = (input.pos(), output.pos());
            let left = c.decompress_stream(&mut output, &mut input).ok()?;
            if left == 0 || output.pos() == n || before == (input.pos(), output.pos()) {
                break;
            }
        }
        let got = output.pos();
        out.truncate(got);
        Some(out)
    })
}

/// Splits `raw` into inline pieces and large parts (above `threshold`
/// bytes). Anything mail-parser cannot make sense of — a truncated or
/// malformed message — is kept whole: stored byte-exact, never refused.
pub fn split(raw: &[u8], threshold: usize) -> (BodyRecord, Vec<(BlobId, Vec<u8>)>) {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    // The MIME parser recurses with the nesting of the message: a message
    // that may nest deeper than this is kept whole (splitting only saves
    // space; a 60,000-level message overflowed the stack and crashed the node).
    if raw.len() > threshold && containers_at_most(raw, MIME_CONTAINERS_MAX) {
        if let Some(msg) = mail_parser::MessageParser::default().parse(raw) {
            for part in &msg.parts {
                let leaf =
                    !matches!(part.body, mail_parser::PartType::Multipart(_) | mail_parser::PartType::Message(_));
                let (start, end) = (part.offset_body as usize, part.offset_end as usize);
                if leaf && end <= raw.len() && start < end && end - start > threshold {
                    ranges.push((start, end));
                }
            }
        }
    }
    ranges.sort_unstable();
    // Overlapping ranges would mean the parser's offsets are not what we think: keep whole.
    if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
        ranges.clear();
    }
    let mut pieces = Vec::new();
    let mut parts = Vec::new();
    let mut at = 0;
    for (start, end) in ranges {
        if start > at {
            pieces.push(Piece::Inline(raw[at..start].to_vec()));
        }
        let bytes = raw[start..end].to_vec();
        let id = BlobId::of(&bytes);
        pieces.push(Piece::Part { id, len: bytes.len() as u64 });
        parts.push((id, bytes));
        at = end;
    }
    if at < raw.len() || pieces.is_empty() {
        pieces.push(Piece::Inline(raw[at..].to_vec()));
    }
    let record = BodyRecord { len: raw.len() as u64, pieces };
    (record, parts)
}

/// Most MIME containers (`multipart/…`, `message/…` mentions) in a message
/// the store hands to the MIME parser to split out large parts.
pub const MIME_CONTAINERS_MAX: usize = 256;

/// Whether `raw` mentions `multipart/` or `message/` (any case) at most
/// `max` times: an upper bound on how deep its MIME structure can nest.
fn containers_at_most(raw: &[u8], max: usize) -> bool {
    let mut n = 0;
    for (i, b) in raw.iter().enumerate() {
        let rest = &raw[i..];
        let hit = match b | 0x20 {
            b'm' => {
                rest.len() >= 8 && rest[..8].eq_ignore_ascii_case(b"message/")
                    || rest.len() >= 10 && rest[..10].eq_ignore_ascii_case(b"multipart/")
            }
            _ => false,
        };
        if hit {
            n += 1;
            if n > max {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reassemble(r: &BodyRecord, parts: &[(BlobId, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &r.pieces {
            match p {
                Piece::Inline(b) => out.extend(b),
                Piece::Part { id, .. } => out.extend(&parts.iter().find(|(i, _)| i == id).unwrap().1),
            }
        }
        out
    }

    fn with_attachment(kb: usize) -> Vec<u8> {
        let payload: String = (0..kb * 1024 / 76).map(|i| format!("{:076}\r\n", i)).collect();
        format!(
            "From: a@example.org\r\nTo: b@example.org\r\nSubject: att\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
             --XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n{payload}--XX--\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn large_part_split_and_reassembled_exactly() {
        let raw = with_attachment(600);
        let (rec, parts) = split(&raw, 256 * 1024);
        assert_eq!(parts.len(), 1);
        assert!(parts[0].1.len() > 256 * 1024);
        assert_eq!(reassemble(&rec, &parts), raw);
        assert_eq!(rec.len, raw.len() as u64);
    }

    #[test]
    fn small_or_malformed_kept_whole() {
        let raw = with_attachment(10);
        let (rec, parts) = split(&raw, 256 * 1024);
        assert!(parts.is_empty());
        assert_eq!(rec.pieces, vec![Piece::Inline(raw.clone())]);
        let truncated = &with_attachment(600)[..300 * 1024];
        let (rec, parts) = split(truncated, 256 * 1024);
        assert_eq!(reassemble(&rec, &parts), truncated);
        let garbage: Vec<u8> = (0..400_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let (rec, parts) = split(&garbage, 256 * 1024);
        assert_eq!(reassemble(&rec, &parts), garbage);
    }
}

#[cfg(test)]
mod encoding_tests {
    use super::*;

    /// Records written before `Inline` was serde bytes read the same.
    #[test]
    fn inline_bytes_keep_the_postcard_encoding_of_a_vec() {
        #[derive(Serialize)]
        enum Old {
            Inline(Vec<u8>),
        }
        let bytes = vec![0u8, 1, 200, 255, 7];
        let old = postcard::to_stdvec(&Old::Inline(bytes.clone())).unwrap();
        assert_eq!(postcard::to_stdvec(&Piece::Inline(bytes.clone())).unwrap(), old);
        assert_eq!(postcard::from_bytes::<Piece>(&old).unwrap(), Piece::Inline(bytes));
    }

    /// A prefix read from the start of a record equals the body's prefix.
    #[test]
    fn inline_prefix_matches_the_body() {
        let body: Vec<u8> = (0..50_000u32).flat_map(|i| format!("line {i}\r\n").into_bytes()).collect();
        let (record, _) = split(&body, usize::MAX);
        let stored = pack(&postcard::to_stdvec(&record).unwrap());
        assert_eq!(stored[0], 1, "compressed");
        for n in [0, 1, 100, 16 * 1024, body.len(), body.len() + 10] {
            assert_eq!(inline_prefix(&stored, n).unwrap(), &body[..n.min(body.len())]);
        }
        let raw = [vec![0u8], postcard::to_stdvec(&record).unwrap()].concat();
        assert_eq!(inline_prefix(&raw, 10).unwrap(), &body[..10]);
        let part_first = BodyRecord { len: 5, pieces: vec![Piece::Part { id: BlobId([0; 32]), len: 5 }] };
        assert_eq!(inline_prefix(&pack(&postcard::to_stdvec(&part_first).unwrap()), 3), None);
        assert_eq!(inline_prefix(&[], 3), None);
        // Format 2: the header decompresses alone; everything reads the same.
        let mail: Vec<u8> = [b"Subject: x\r\nFrom: a@b\r\n\r\n".to_vec(), body.clone()].concat();
        let (record, _) = split(&mail, usize::MAX);
        let serialized = postcard::to_stdvec(&record).unwrap();
        let stored = pack_record(&record, &serialized);
        assert_eq!(stored[0], 2);
        assert_eq!(unpack(&stored, usize::MAX).unwrap(), &serialized[..]);
        assert_eq!(record_header(&stored).unwrap(), b"Subject: x\r\nFrom: a@b\r\n\r\n");
        assert_eq!(inline_prefix(&stored, 40).unwrap(), &mail[..40]);
        assert_eq!(record_header(&pack(&serialized)), None);
        assert_eq!(inline_prefix(&[1, 2, 3], 3), None);
    }
}
