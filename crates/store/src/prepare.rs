//! Getting bodies ready to store, before the write transaction: hashing,
//! splitting out large parts and compressing a raw body; decoding a
//! shipped one and checking it against its id; reading the sort keys of
//! either. That is most of the CPU a stored body costs. Done here, it runs
//! on several threads at once ([`prepare_all`]) and not while the store's
//! writer is held, so the write transaction only inserts rows.
//!
//! [`Prepared::write`] is the one place a body's rows are written, for
//! every way a body arrives (a local append, an import, a peer's shipped
//! body, an operator's `put_blobs`).

use crate::*;
use redb::ReadableTable;
use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most threads [`prepare_all`] uses (the caller's included), whatever
/// the machine: the work is short and the writer is serial anyway.
pub const PREPARE_THREADS_MAX: usize = 4;

/// Bodies whose bytes add up to less than this are prepared on the
/// caller's thread alone: starting threads would cost more than it saves.
const PREPARE_ALONE_BYTES: usize = 256 << 10;

/// A body ready to be written: its stored record, its large parts' stored
/// records and its sort keys, checked against its id.
#[derive(Debug)]
pub struct Prepared<'a> {
    id: BlobId,
    /// The raw body's length.
    len: u64,
    /// The record as stored ([`blob::pack_record`]).
    record: Cow<'a, [u8]>,
    /// The large parts it names, in order, as stored ([`blob::pack`]).
    parts: Vec<(BlobId, Cow<'a, [u8]>)>,
    keys: sortkeys::SortKeys,
}

impl Prepared<'static> {
    /// A raw body: hashed, its large parts (above `part_threshold` bytes)
    /// split out, compressed where that pays, its sort keys read.
    pub fn of_raw(raw: &[u8], part_threshold: usize) -> Prepared<'static> {
        Self::of_checked_raw(BlobId::of(raw), raw, part_threshold)
    }

    /// [`Prepared::of_raw`] of a body already hashed to `id`.
    pub(crate) fn of_checked_raw(id: BlobId, raw: &[u8], part_threshold: usize) -> Prepared<'static> {
        let (record, parts) = blob::split(raw, part_threshold);
        let parts = parts.into_iter().map(|(pid, bytes)| (pid, Cow::Owned(blob::pack(&bytes)))).collect();
        // A record of byte vectors and integers always serializes.
        let serialized = postcard::to_stdvec(&record).expect("a body record serializes");
        let record_bytes = Cow::Owned(blob::pack_record(&record, &serialized));
        Prepared { id, len: raw.len() as u64, record: record_bytes, parts, keys: sortkeys::SortKeys::of(raw) }
    }
}

impl<'a> Prepared<'a> {
    /// A body a peer shipped in stored form ([`blob::encode_shipped`]):
    /// decoded, checked against `id` and kept as it came, unless it came
    /// whole and is larger than `part_threshold`, when this store splits
    /// its parts out. The error says why it is garbage.
    pub fn of_shipped(id: BlobId, shipped: &'a [u8], part_threshold: usize) -> Result<Prepared<'a>, String> {
        let (parts, stored) = blob::decode_shipped(shipped)?;
        let record = blob::unpack_record(stored, SHIPPED_BYTES_MAX)?;
        if record.len > SHIPPED_BYTES_MAX as u64 {
            return Err(format!("{} bytes, over {SHIPPED_BYTES_MAX}", record.len));
        }
        blob::check_whole(id, &record, &parts)?;
        if record.len > part_threshold as u64 {
            if let Some(raw) = blob::inline_bytes(&record) {
                return Ok(Prepared::of_checked_raw(id, &raw, part_threshold));
            }
        }
        let named = blob::part_ids(&record);
        let keys = sortkeys::of_record(&record, |pid, len| {
            let Some(i) = named.iter().position(|n| *n == pid) else { return Ok(None) };
            let cap = usize::try_from(len).unwrap_or(usize::MAX).min(BODY_BYTES_MAX);
            Ok(parts.get(i).and_then(|p| blob::unpack(p, cap).ok()).map(|b| b.into_owned()))
        })
        .map_err(|e| e.to_string())?;
        let parts = named.into_iter().zip(parts).map(|(pid, p)| (pid, Cow::Borrowed(p))).collect();
        Ok(Prepared { id, len: record.len, record: Cow::Borrowed(stored), parts, keys })
    }

    /// The body's id.
    pub fn id(&self) -> BlobId {
        self.id
    }

    /// The raw body's size, bytes.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// Writes the body in `txn`, deduplicated: nothing if it is stored
    /// already, unless the stored copy was found damaged since open, when
    /// it is written again, parts and all (its id is pushed on `repaired`).
    pub(crate) fn write(
        &self,
        txn: &redb::WriteTransaction,
        core: &Core,
        repaired: &mut Vec<BlobId>,
    ) -> Result<(), StoreError> {
        if stored_intact(txn, core, self.id)? {
            return Ok(());
        }
        let repair = core.is_corrupt(self.id);
        let mut blobs = txn.open_table(BLOBS).map_err(st)?;
        if !self.parts.is_empty() {
            let mut part_table = txn.open_table(PARTS).map_err(st)?;
            for (pid, part) in &self.parts {
                if repair || part_table.get(&pid.0).map_err(st)?.is_none() {
                    part_table.insert(&pid.0, part.as_ref()).map_err(st)?;
                }
            }
        }
        let existed = blobs.insert(&self.id.0, self.record.as_ref()).map_err(st)?.is_some();
        drop(blobs);
        sortkeys::put(txn, self.id, &self.keys)?;
        if !existed {
            gc::add_parts(txn, &self.parts.iter().map(|(pid, _)| *pid).collect::<Vec<_>>())?;
        }
        if repair {
            repaired.push(self.id);
        }
        Ok(())
    }
}

/// Whether body `id` is stored in `txn` and not found damaged since open:
/// then storing it again writes nothing.
pub(crate) fn stored_intact(txn: &redb::WriteTransaction, core: &Core, id: BlobId) -> Result<bool, StoreError> {
    Ok(!core.is_corrupt(id) && txn.open_table(BLOBS).map_err(st)?.get(&id.0).map_err(st)?.is_some())
}

/// `f` of every item, in order, on up to [`PREPARE_THREADS_MAX`] threads
/// (as many as the machine has cores): each takes the next item left, so a
/// large body does not hold up the rest. `bytes` tells an item's size;
/// items adding up to less than [`PREPARE_ALONE_BYTES`] are done on the
/// caller's thread alone.
pub fn prepare_all<'a, T: Sync, R: Send>(
    items: &'a [T],
    bytes: impl Fn(&T) -> usize,
    f: impl Fn(&'a T) -> R + Sync,
) -> Vec<R> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.min(PREPARE_THREADS_MAX).min(items.len());
    if threads <= 1 || items.iter().map(&bytes).sum::<usize>() < PREPARE_ALONE_BYTES {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else { return done };
            done.push((i, f(item)));
        }
    };
    let mut all: Vec<(usize, R)> = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut all = work();
        for h in helpers {
            // A panic in `f` is the caller's, as if it ran here.
            all.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        all
    });
    all.sort_unstable_by_key(|(i, _)| *i);
    assert_eq!(all.len(), items.len(), "every item prepared once");
    all.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_all_keeps_the_order_on_several_threads() {
        let items: Vec<Vec<u8>> = (0..300u32).map(|i| vec![(i % 251) as u8; 4096 + i as usize]).collect();
        let got = prepare_all(&items, Vec::len, |b| (b[0], b.len()));
        let want: Vec<(u8, usize)> = items.iter().map(|b| (b[0], b.len())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_shipped_body_prepares_as_its_raw_form_does() {
        // Large enough that a 64-byte threshold splits a part out.
        let raw = format!(
            "Subject: Re: hello\r\nMessage-ID: <a@b>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\n{}\r\n--x--\r\n",
            "word ".repeat(200)
        );
        let from_raw = Prepared::of_raw(raw.as_bytes(), 64);
        assert_eq!(from_raw.parts.len(), 1);
        let parts: Vec<&[u8]> = from_raw.parts.iter().map(|(_, p)| p.as_ref()).collect();
        let shipped = blob::encode_shipped(&from_raw.record, &parts);
        let from_shipped = Prepared::of_shipped(from_raw.id, &shipped, 64).unwrap();
        assert_eq!(from_shipped.record, from_raw.record);
        assert_eq!(from_shipped.parts, from_raw.parts);
        assert_eq!(from_shipped.keys, from_raw.keys);
        let mut wrong = from_raw.id;
        wrong.0[0] ^= 1;
        assert!(Prepared::of_shipped(wrong, &shipped, 64).unwrap_err().contains("hash"));
    }
}
